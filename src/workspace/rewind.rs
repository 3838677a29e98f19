//! Putting a session's workspace back to a snapshot (RewindSession, ForkSession; issue #18) and
//! copying a conversation's files between two sessions' HOMEs (ForkSession).
//!
//! The snapshot is materialized into a fresh directory beside the workspace (`restore_into`, so
//! nothing in it was made by an agent), then swapped with the workspace in one
//! `renameat2(RENAME_EXCHANGE)`: a reader sees the old tree or the new one, never a mix, and a
//! failure before the swap leaves the workspace as it was. The core calls this only while the
//! store holds the session for the rewind (no job queued or running, none admitted), so no agent
//! holds the old directory open as its working directory.

use super::fsops;
use super::history::History;
use super::{Workspaces, blocking, remove_session_dir};
use crate::domain::SessionId;
use crate::error::{Error, Result};
use nix::fcntl::{OFlag, RenameFlags, renameat2};
use nix::sys::stat::SFlag;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Largest conversation file a fork copies (Claude's transcripts of long sessions are MBs).
const MAX_CONVERSATION_FILE: u64 = 256 << 20;

impl Workspaces {
    /// Replaces the session's workspace with snapshot `tree_id` of the history. A WatchFiles
    /// watch of the session follows the new directory and reports the reset (see `watch`).
    pub async fn restore_snapshot(&self, session: &SessionId, tree_id: String) -> Result<()> {
        let this = self.clone();
        let s = session.clone();
        self.inner.watches.suspend(session);
        let swapped = blocking(move || {
            let h = this.history()?;
            let ws = this.workspace_dir(&s);
            if !ws.is_dir() {
                return Err(Error::session_not_found(s.as_str()));
            }
            swap_in(&h, &tree_id, &ws, &this.session_dir(&s))?;
            this.open_ws(&s)
        })
        .await?;
        let ws = match swapped {
            Ok(ws) => ws,
            Err(e) => {
                // Nothing was swapped, but the watch was suspended: resume it where it was.
                let this = self.clone();
                let s = session.clone();
                if let Ok(Ok(ws)) = blocking(move || this.open_ws(&s)).await {
                    self.rearm_watch(session, ws).await;
                }
                return Err(e);
            }
        };
        self.rearm_watch(session, ws).await;
        Ok(())
    }

    async fn rearm_watch(&self, session: &SessionId, ws: std::os::fd::OwnedFd) {
        self.inner.watches.rearm(session, ws).await;
    }

    /// Copies the files `rels` (relative to HOME) of `from`'s HOME into `to`'s HOME at
    /// `to_rels`. Read without following any symlink (the agent owns its HOME between jobs and
    /// could plant one pointing at a host file); a file that is missing is skipped.
    pub async fn copy_home_files(
        &self,
        from: &SessionId,
        to: &SessionId,
        pairs: Vec<(PathBuf, PathBuf)>,
    ) -> Result<u32> {
        let src_home = self.home_dir(from);
        let files = blocking(move || read_home_files(&src_home, &pairs)).await??;
        let n = u32::try_from(files.len()).unwrap_or(u32::MAX);
        let dst = self.home_dir(to);
        let files = files
            .into_iter()
            .map(|(rel, content)| (dst.join(rel), content))
            .collect();
        self.write_home_files(to, files).await?;
        Ok(n)
    }
}

fn swap_in(h: &History, tree_id: &str, ws: &Path, session_dir: &Path) -> Result<()> {
    let tree = h.tree(tree_id)?;
    let staging = session_dir.join(format!(
        "{}rewind-{}",
        super::TEMP_PREFIX,
        uuid::Uuid::new_v4().simple()
    ));
    let staged = h.restore_into(&tree, &staging).and_then(|()| {
        // `restore_into` made it 0700; a workspace is 0755 (see `populate`).
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::internal(format!("cannot set the restored workspace's mode: {e}")))
    });
    let swapped = staged.and_then(|()| {
        renameat2(
            nix::fcntl::AT_FDCWD,
            &staging,
            nix::fcntl::AT_FDCWD,
            ws,
            RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| Error::internal(format!("cannot swap the restored workspace in: {e}")))
    });
    // Whether or not the swap happened, `staging` now holds what is not the workspace.
    if let Err(e) = remove_session_dir(&staging) {
        tracing::warn!(dir = %staging.display(), error = %e, "could not remove a rewind's leftovers");
    }
    swapped
}

fn read_home_files(home: &Path, pairs: &[(PathBuf, PathBuf)]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let Some(root) = fsops::open_root(home)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (from, to) in pairs {
        let rel = from.to_string_lossy();
        let fd = match fsops::open_beneath(root.as_fd(), &rel, OFlag::O_RDONLY) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot open {rel:?} in the parent's HOME: {e}"
                )));
            }
        };
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| Error::internal(format!("cannot stat {rel:?}: {e}")))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            continue;
        }
        let mut content = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_CONVERSATION_FILE + 1)
            .read_to_end(&mut content)
            .map_err(|e| Error::internal(format!("cannot read {rel:?}: {e}")))?;
        if content.len() as u64 > MAX_CONVERSATION_FILE {
            return Err(Error::internal(format!(
                "{rel:?} is larger than {MAX_CONVERSATION_FILE} bytes; not copied"
            )));
        }
        out.push((to.clone(), content));
    }
    Ok(out)
}
