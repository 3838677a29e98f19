//! Writing agentd's own files (the agents' configuration) into a session's private HOME, and
//! renaming files of an agent's own state there ([`Rename`]).
//!
//! The jailed agent owns that HOME between jobs: it can leave `~/.claude/settings.json` (or a
//! whole `~/.codex`) as a symlink to a host path. A plain `fs::write` would then write agentd's
//! bytes wherever the link points, with agentd's rights. So every path is resolved beneath an fd
//! of HOME without following symlinks, and the file is replaced by a rename of a fresh temp file,
//! which replaces a planted link itself rather than its target.

use super::fsops::{self, mkdir_beneath};
use super::owner;
use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::Mode;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

/// Writes each `(path, content)` with mode 0600, where every path lies under `home`, durably.
pub(super) fn write_files(home: &Path, files: &[(std::path::PathBuf, Vec<u8>)]) -> Result<()> {
    let root = open_home(home)?;
    for (path, content) in files {
        let rel = relative(home, path)?;
        write_one(root.as_fd(), &rel, content, true)?;
    }
    Ok(())
}

/// Writes `content` as `name` in HOME's top directory (mode 0600), not durably: a job's input,
/// which matters only while the job runs.
pub(super) fn write_top_file(home: &Path, name: &str, content: &[u8]) -> Result<()> {
    let root = open_home(home)?;
    write_one(root.as_fd(), name, content, false)
}

/// Makes a FIFO named `name` in HOME's top directory (replacing whatever an earlier job left
/// there, links included) and opens it read-write, non-blocking.
pub(super) fn make_fifo(home: &Path, name: &str) -> Result<OwnedFd> {
    let root = open_home(home)?;
    let made = owner::in_dir(root.as_fd(), |dir| {
        match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        nix::unistd::mkfifoat(dir, name, Mode::from_bits_truncate(0o600))
    });
    made.map_err(|e| Error::internal(format!("cannot create {name:?} in HOME: {e}")))?;
    owner::openat_owned(
        root.as_fd(),
        name,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
    )
    .map_err(|e| Error::internal(format!("cannot open {name:?} in HOME: {e}")))
}

/// The session's HOME, open; a job may have closed it (agentd owns it).
fn open_home(home: &Path) -> Result<OwnedFd> {
    fsops::open_root(home)?
        .ok_or_else(|| Error::internal("the session's home directory is missing".to_owned()))
}

/// Replaces `rel` beneath `root` by a fresh file holding `content`, through a temp file renamed
/// over it (a link planted there is replaced, never written through).
fn write_one(root: BorrowedFd<'_>, rel: &str, content: &[u8], durable: bool) -> Result<()> {
    let (parent_rel, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    let parent = mkdir_beneath(root, parent_rel, rel)?;
    // The agent may have left a directory here read-only: agentd, its owner, still writes.
    let (temp, mut file) = fsops::create_temp(parent.as_fd())
        .map_err(|e| Error::internal(format!("cannot create {rel:?} in HOME: {e}")))?;
    let written = file
        .write_all(content)
        .and_then(|()| if durable { file.sync_data() } else { Ok(()) });
    let renamed = written.map_err(|e| e.to_string()).and_then(|()| {
        owner::in_dir(parent.as_fd(), |dir| {
            renameat(dir, temp.as_str(), dir, name)
        })
        .map_err(|e| e.to_string())
    });
    if let Err(e) = renamed {
        let _ = owner::in_dir(parent.as_fd(), |dir| {
            nix::unistd::unlinkat(dir, temp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
        });
        return Err(Error::internal(format!(
            "cannot write {rel:?} in HOME: {e}"
        )));
    }
    Ok(())
}

/// A rename of an agent's own state files in HOME, made before its job starts: in every directory
/// `<HOME>/<parent>/<any name>/<child>/`, each regular file named `<prefix><middle><suffix>`
/// whose middle does not already end with `mark` becomes `<prefix><middle><mark><suffix>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rename {
    pub parent: String,
    pub child: String,
    pub prefix: String,
    pub suffix: String,
    pub mark: String,
}

impl Rename {
    /// The new name of `name`, when it is one this rename applies to.
    pub fn new_name(&self, name: &str) -> Option<String> {
        let middle = name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (!middle.ends_with(self.mark.as_str()))
            .then(|| format!("{}{middle}{}{}", self.prefix, self.mark, self.suffix))
    }
}

/// Applies `rename` beneath `home`. Nothing is followed through a symlink (the agent owns these
/// directories) and no existing entry is replaced. Returns how many files were renamed.
pub(super) fn rename_files(home: &Path, rename: &Rename) -> Result<usize> {
    let Some(root) = fsops::open_root(home)? else {
        return Ok(0);
    };
    let parent = match fsops::open_beneath(root.as_fd(), &rename.parent, fsops::DIR_FLAGS) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Ok(0),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot open {:?}: {e}",
                rename.parent
            )));
        }
    };
    let mut renamed = 0;
    for project in names(parent.as_fd())? {
        let dir = match openat(
            parent.as_fd(),
            project.as_str(),
            fsops::DIR_FLAGS,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => continue,
        };
        let dir = match openat(
            dir.as_fd(),
            rename.child.as_str(),
            fsops::DIR_FLAGS,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => continue,
        };
        for name in names(dir.as_fd())? {
            let Some(new) = rename.new_name(&name) else {
                continue;
            };
            let regular = fsops::stat_at(dir.as_fd(), &name)?.and_then(|st| fsops::kind_of(&st))
                == Some(crate::domain::FileKind::Regular);
            if !regular {
                continue;
            }
            match renameat2(
                dir.as_fd(),
                name.as_str(),
                dir.as_fd(),
                new.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => renamed += 1,
                // Gone meanwhile, or the new name is taken (by a file an earlier rename made).
                Err(Errno::ENOENT | Errno::EEXIST) => {}
                Err(e) => return Err(Error::internal(format!("cannot rename {name:?}: {e}"))),
            }
        }
    }
    Ok(renamed)
}

/// The UTF-8 names in an open directory (other names are no agent's state agentd knows).
fn names(dir: std::os::fd::BorrowedFd<'_>) -> Result<Vec<String>> {
    let fd = dir
        .try_clone_to_owned()
        .map_err(|e| Error::internal(format!("cannot duplicate a directory fd: {e}")))?;
    let mut d = nix::dir::Dir::from_fd(fd)
        .map_err(|e| Error::internal(format!("cannot read a directory: {e}")))?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| Error::internal(format!("cannot read a directory: {e}")))?;
        if let Ok(n) = entry.file_name().to_str()
            && n != "."
            && n != ".."
        {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}

/// `path` relative to `home`, with plain components only (the adapters build these paths; a
/// `..` would be a bug in one, refused rather than followed).
fn relative(home: &Path, path: &Path) -> Result<String> {
    let rel = path
        .strip_prefix(home)
        .map_err(|_| Error::internal(format!("{} is not under HOME", path.display())))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| Error::internal("a HOME path is not UTF-8".to_owned()))?,
            ),
            _ => return Err(Error::internal(format!("bad HOME path {}", path.display()))),
        }
    }
    if parts.is_empty() {
        return Err(Error::internal("an empty HOME path".to_owned()));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"host file").unwrap();
        // The agent links a config file to a host file, and a config dir to a host dir.
        std::os::unix::fs::symlink(outside.join("victim"), home.join("settings.json")).unwrap();
        std::os::unix::fs::symlink(&outside, home.join(".codex")).unwrap();

        write_files(&home, &[(home.join("settings.json"), b"ours".to_vec())]).unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"host file");
        let meta = std::fs::symlink_metadata(home.join("settings.json")).unwrap();
        assert!(
            meta.is_file(),
            "the link itself was replaced by a regular file"
        );
        assert_eq!(std::fs::read(home.join("settings.json")).unwrap(), b"ours");

        let err = write_files(&home, &[(home.join(".codex/config.toml"), b"x".to_vec())]);
        assert!(
            err.is_err(),
            "a symlinked directory is refused, not entered"
        );
        assert!(!outside.join("config.toml").exists());
    }

    #[test]
    fn renames_apply_beneath_home_only_once_and_never_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let outside = dir.path().join("outside");
        let chats = home.join(".gemini/tmp/ws/chats");
        std::fs::create_dir_all(&chats).unwrap();
        std::fs::create_dir_all(outside.join("chats")).unwrap();
        std::fs::write(chats.join("session-T1-abcd1234.jsonl"), b"a").unwrap();
        std::fs::write(chats.join("session-T2-ffff0000.jsonl"), b"other").unwrap();
        // Taken: the file an earlier rename made stays, the one that would replace it too.
        std::fs::write(chats.join("session-T3-abcd1234.jsonl"), b"stray").unwrap();
        std::fs::write(chats.join("session-T3-x-abcd1234.jsonl"), b"kept").unwrap();
        std::fs::create_dir(chats.join("session-T4-abcd1234.jsonl")).unwrap();
        let victim = outside.join("chats/session-T5-abcd1234.jsonl");
        std::fs::write(&victim, b"host").unwrap();
        std::os::unix::fs::symlink(&outside, home.join(".gemini/tmp/linked")).unwrap();
        let rename = Rename {
            parent: ".gemini/tmp".into(),
            child: "chats".into(),
            prefix: "session-".into(),
            suffix: "-abcd1234.jsonl".into(),
            mark: "-x".into(),
        };
        assert_eq!(rename_files(&home, &rename).unwrap(), 1);
        assert_eq!(
            std::fs::read(chats.join("session-T1-x-abcd1234.jsonl")).unwrap(),
            b"a"
        );
        assert!(chats.join("session-T2-ffff0000.jsonl").exists());
        assert_eq!(
            std::fs::read(chats.join("session-T3-x-abcd1234.jsonl")).unwrap(),
            b"kept"
        );
        assert!(chats.join("session-T3-abcd1234.jsonl").exists());
        assert!(chats.join("session-T4-abcd1234.jsonl").is_dir());
        assert!(
            victim.exists(),
            "a symlinked project directory is not entered"
        );
        assert_eq!(rename_files(&home, &rename).unwrap(), 0, "already renamed");
        assert_eq!(rename.new_name("session-T-x-abcd1234.jsonl"), None);
        assert_eq!(rename_files(&dir.path().join("none"), &rename).unwrap(), 0);
    }

    #[test]
    fn paths_outside_home_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        assert!(write_files(&home, &[(dir.path().join("x"), vec![])]).is_err());
        assert!(write_files(&home, &[(home.join("../x"), vec![])]).is_err());
        write_files(&home, &[(home.join("a/b/c.json"), b"{}".to_vec())]).unwrap();
        assert_eq!(std::fs::read(home.join("a/b/c.json")).unwrap(), b"{}");
    }
}
