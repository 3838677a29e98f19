//! Removing a tree of any depth: a directory an agent nested 20,000 levels deep, or one it left
//! without write permission, goes like any other, through descriptors only, never following a
//! symlink.
//!
//! Recursion would take a stack frame and a descriptor per level (std's `remove_dir_all` does):
//! a deep enough tree overflowed the stack of the thread deleting it and took agentd down with
//! it. Here a loop holds at most [`OPEN_LEVELS`] directories open; a directory met below that is
//! renamed up into the tree's top directory, under a name of agentd's own, and removed from there.
//! Nothing is ever reached through `..`: an agent still running could move a directory being
//! removed, and climbing from it could then leave the workspace.

use super::fsops::{DIR_FLAGS, kind_of, read_names};
use super::path::TEMP_PREFIX;
use crate::domain::FileKind;
use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, RenameFlags, renameat2};
use nix::sys::stat::{Mode, fchmod, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Directories held open at once while removing one tree.
const OPEN_LEVELS: usize = 32;

/// An open directory being emptied, and what is left in it.
struct Level {
    fd: OwnedFd,
    /// Its name in the directory one level up.
    name: OsString,
    left: Vec<OsString>,
}

/// Removes the entry `name` of `dir`: a directory with everything beneath it, however deep.
/// Returns how many non-directory entries were removed.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> Result<u64> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(0),
        Err(e) => return Err(Error::internal(format!("cannot stat entry: {e}"))),
    };
    if kind_of(&st) != Some(FileKind::Directory) {
        return unlink(dir, name, UnlinkatFlags::NoRemoveDir).map(u64::from);
    }
    let Some(top) = open_level(dir, name)? else {
        return Ok(0);
    };
    let mut removed = 0;
    let mut spilled = 0u64;
    let mut levels = vec![top];
    while let Some(last) = levels.len().checked_sub(1) {
        let Some(child) = levels[last].left.pop() else {
            // Emptied: remove it from the level above (or from `dir`).
            let Some(done) = levels.pop() else { break };
            let parent = levels.last().map_or(dir, |l| l.fd.as_fd());
            drop(done.fd);
            unlink(parent, &done.name, UnlinkatFlags::RemoveDir)?;
            continue;
        };
        let at = levels[last].fd.as_fd();
        let st = match fstatat(at, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::internal(format!("cannot stat entry: {e}"))),
        };
        if kind_of(&st) != Some(FileKind::Directory) {
            removed += u64::from(unlink(at, &child, UnlinkatFlags::NoRemoveDir)?);
        } else if levels.len() < OPEN_LEVELS {
            if let Some(next) = open_level(at, &child)? {
                levels.push(next);
            }
        } else {
            let moved = spill(at, &child, levels[0].fd.as_fd(), &mut spilled)?;
            levels[0].left.extend(moved);
        }
    }
    Ok(removed)
}

/// Removes a directory of agentd's own (a session's) and everything in it; absent is fine.
pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::internal(format!(
            "cannot remove {}: not a directory's path",
            path.display()
        )));
    };
    let parent = match nix::fcntl::open(parent, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot open {}: {e}",
                parent.display()
            )));
        }
    };
    remove_tree(parent.as_fd(), name).map(drop)
}

/// Opens directory `name` of `dir` to empty it, and reads what is in it. An agent may have left
/// it without permissions for its owner: the open lends them (`owner`), and the directory keeps
/// them, since it goes. `None` when it is gone.
fn open_level(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Level>> {
    let fd = match super::owner::openat_owned(dir, name, DIR_FLAGS) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
        Err(e) => return Err(Error::internal(format!("cannot open directory: {e}"))),
    };
    // Without write and search permission nothing in it could be removed.
    if let Ok(st) = nix::sys::stat::fstat(&fd)
        && st.st_mode & 0o700 != 0o700
    {
        let _ = fchmod(&fd, Mode::from_bits_truncate(0o700));
    }
    let left = read_names(fd.as_fd(), None)?;
    Ok(Some(Level {
        fd,
        name: name.to_owned(),
        left,
    }))
}

/// Moves directory `name` of `from` into `top` under a fresh name of agentd's own (which
/// listings skip), to be removed from there. Returns the name it now has.
fn spill(
    from: BorrowedFd<'_>,
    name: &OsStr,
    top: BorrowedFd<'_>,
    spilled: &mut u64,
) -> Result<Option<OsString>> {
    loop {
        *spilled += 1;
        let to = OsString::from(format!("{TEMP_PREFIX}rm-{spilled}"));
        match renameat2(
            from,
            name,
            top,
            to.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => return Ok(Some(to)),
            Err(Errno::EEXIST) => continue,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::internal(format!("cannot move a directory up: {e}"))),
        }
    }
}

/// Unlinks `name` of `dir`; true when it was there.
fn unlink(dir: BorrowedFd<'_>, name: &OsStr, how: UnlinkatFlags) -> Result<bool> {
    // `dir` may be one the agent left read-only above the tree (the tree's own levels were
    // given their permissions back when opened).
    match super::owner::in_dir(dir, |dir| unlinkat(dir, name, how)) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::internal(format!("cannot remove entry: {e}"))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use nix::fcntl::{OFlag, openat};
    use std::os::unix::fs::PermissionsExt;

    /// A chain of `depth` directories named `d` under `root`, made through descriptors (its
    /// paths are far past PATH_MAX), with a file `f` at every 1,000th level, from the first,
    /// and `leaf` at the bottom.
    pub(in crate::workspace) fn chain(root: &Path, depth: usize) {
        let touch = |dir: &OwnedFd, name: &str| {
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
            drop(openat(dir, name, flags, Mode::from_bits_truncate(0o644)).expect("create file"));
        };
        let mut fd = nix::fcntl::open(root, DIR_FLAGS, Mode::empty()).expect("open root");
        for i in 0..depth {
            nix::sys::stat::mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).expect("mkdir");
            fd = openat(&fd, "d", DIR_FLAGS, Mode::empty()).expect("open level");
            if i % 1000 == 0 {
                touch(&fd, "f");
            }
        }
        touch(&fd, "leaf");
    }

    /// 30,000 levels on a thread with a 128 KiB stack: one frame per level would overflow it
    /// (std's `remove_dir_all` did, at 20,000 on a 2 MiB stack) and a descriptor per level would
    /// pass the usual open-file limits.
    #[test]
    fn removes_a_tree_far_deeper_than_recursion_could() {
        let tmp = tempfile::tempdir().expect("tmp");
        let top = tmp.path().join("deep");
        std::fs::create_dir(&top).expect("mkdir");
        chain(&top, 30_000);
        let dir = tmp.path().to_path_buf();
        let removed = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || {
                let parent = nix::fcntl::open(&dir, DIR_FLAGS, Mode::empty()).expect("open");
                remove_tree(parent.as_fd(), OsStr::new("deep"))
            })
            .expect("thread")
            .join()
            .expect("no overflow")
            .expect("removed");
        assert_eq!(removed, 31, "30 files along the chain and its leaf");
        assert!(!top.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
    }

    /// As an unprivileged owner, which permissions bind (root's are not checked): as root, the
    /// tree is given to `nobody` and the removal runs on a thread that switched to it alone.
    #[test]
    fn removes_directories_left_without_permissions() {
        const NOBODY: u32 = 65534;
        let tmp = tempfile::tempdir().expect("tmp");
        let session = tmp.path().join("ses");
        let locked = session.join("workspace/a/locked");
        std::fs::create_dir_all(locked.join("inner")).expect("mkdir");
        std::fs::write(locked.join("inner/f.txt"), "x").expect("write");
        let root = nix::unistd::geteuid().is_root();
        if root {
            for e in walkdir::WalkDir::new(tmp.path()) {
                let e = e.expect("walk");
                std::os::unix::fs::lchown(e.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
            }
        }
        for (dir, mode) in [
            (locked.join("inner"), 0o000),
            (locked.clone(), 0o500),
            (session.join("workspace/a"), 0o100),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let target = session.clone();
        let outcome = std::thread::spawn(move || {
            if root {
                // SAFETY: the raw system call changes this thread's credentials only (glibc's
                // wrapper would change every thread's); the thread ends right after.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY) };
                assert_eq!(rc, 0, "setresuid");
                assert!(
                    std::fs::read_dir(target.join("workspace/a")).is_err(),
                    "the permissions bind this thread"
                );
            }
            remove_dir(&target)
        })
        .join()
        .expect("thread");
        outcome.expect("removed");
        assert!(!session.exists());
        remove_dir(&session).expect("absent is fine");
    }

    #[test]
    fn a_file_or_a_link_is_removed_itself_and_a_link_is_never_followed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("keep.txt"), "keep").expect("write");
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(ws.join("d")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, ws.join("d/link")).expect("symlink");
        std::os::unix::fs::symlink(&outside, ws.join("top-link")).expect("symlink");
        std::fs::write(ws.join("f.txt"), "x").expect("write");
        let fd = nix::fcntl::open(&ws, DIR_FLAGS, Mode::empty()).expect("open");
        assert_eq!(
            remove_tree(fd.as_fd(), OsStr::new("f.txt")).expect("file"),
            1
        );
        assert_eq!(
            remove_tree(fd.as_fd(), OsStr::new("top-link")).expect("link"),
            1
        );
        assert_eq!(remove_tree(fd.as_fd(), OsStr::new("d")).expect("dir"), 1);
        assert_eq!(
            remove_tree(fd.as_fd(), OsStr::new("gone")).expect("absent"),
            0
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("keep.txt")).expect("kept"),
            "keep"
        );
        assert_eq!(std::fs::read_dir(&ws).expect("ls").count(), 0);
    }
}
