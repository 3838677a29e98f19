//! Writing agentd's own files (the agents' configuration) into a session's private HOME.
//!
//! The jailed agent owns that HOME between jobs: it can leave `~/.claude/settings.json` (or a
//! whole `~/.codex`) as a symlink to a host path. A plain `fs::write` would then write agentd's
//! bytes wherever the link points, with agentd's rights. So every path is resolved beneath an fd
//! of HOME without following symlinks, and the file is replaced by a rename of a fresh temp file,
//! which replaces a planted link itself rather than its target.

use super::fsops::{self, mkdir_beneath};
use crate::error::{Error, Result};
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Component, Path};

/// Writes each `(path, content)` with mode 0600, where every path lies under `home`.
pub(super) fn write_files(home: &Path, files: &[(std::path::PathBuf, Vec<u8>)]) -> Result<()> {
    let root = fsops::open_root(home)?
        .ok_or_else(|| Error::internal("the session's home directory is missing".to_owned()))?;
    for (path, content) in files {
        let rel = relative(home, path)?;
        let (parent_rel, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel.as_str()),
        };
        let parent = mkdir_beneath(root.as_fd(), parent_rel, &rel)?;
        let temp = format!("{}{}", super::TEMP_PREFIX, uuid::Uuid::new_v4().simple());
        let fd = openat(
            parent.as_fd(),
            temp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::internal(format!("cannot create {rel:?} in HOME: {e}")))?;
        let mut file = std::fs::File::from(fd);
        let written = file.write_all(content).and_then(|()| file.sync_data());
        let renamed = written.map_err(|e| e.to_string()).and_then(|()| {
            renameat(parent.as_fd(), temp.as_str(), parent.as_fd(), name).map_err(|e| e.to_string())
        });
        if let Err(e) = renamed {
            let _ = nix::unistd::unlinkat(
                parent.as_fd(),
                temp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(Error::internal(format!(
                "cannot write {rel:?} in HOME: {e}"
            )));
        }
    }
    Ok(())
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
