//! agentd reads what its agents write, whatever modes they gave it. Run as a user other than
//! root (the shipped deployments), agentd owns every file a jailed agent writes (the jail maps the
//! agent's id to agentd's), but the modes bind it: one `chmod 000 secret.txt` in a job made every
//! later job of the session fail before its agent ran (its before-snapshot could not read the
//! file), and ListFiles answered INTERNAL. As the owner, agentd may change those modes: it lends
//! itself the owner's permissions for as long as one open or one directory's walk needs them,
//! then gives the mode back. Root's permissions are never checked, so it never lends.
//!
//! A mode is changed through a descriptor, never through a name a symlink could take over
//! meanwhile: the directory's own descriptor, or an `O_PATH` one reopened through
//! `/proc/thread-self/fd`.

use nix::NixPath;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, fchmod, fchmodat, fstat};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Whether modes bind agentd at all: this thread's own credentials (one system call, no file
/// access), which is what the kernel checks.
fn bound() -> bool {
    !nix::unistd::geteuid().is_root()
}

/// What the owner is lent: read and write, and search for a directory.
fn lent_mode(st: &FileStat) -> Mode {
    let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let extra = if dir { 0o700 } else { 0o600 };
    Mode::from_bits_truncate((st.st_mode & 0o7777) | extra)
}

/// The mode to give back later, when `st` is agentd's and lacks what it needs.
fn needs_lending(st: &FileStat) -> Option<Mode> {
    let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
    (bound() && st.st_uid == nix::unistd::geteuid().as_raw() && lent_mode(st) != mode)
        .then_some(mode)
}

/// An open directory whose owner's permissions may be lent for as long as it is held (a walk
/// reads it and looks its entries up through it).
pub(crate) struct LentDir {
    fd: OwnedFd,
    give_back: Option<Mode>,
}

impl LentDir {
    pub(crate) fn new(fd: OwnedFd) -> LentDir {
        if !bound() {
            return LentDir {
                fd,
                give_back: None,
            };
        }
        let give_back = fstat(&fd).ok().as_ref().and_then(needs_lending);
        if let Some(mode) = give_back {
            let lent = Mode::from_bits_truncate(mode.bits() | 0o700);
            if fchmod(&fd, lent).is_err() {
                return LentDir {
                    fd,
                    give_back: None,
                };
            }
        }
        LentDir { fd, give_back }
    }
}

impl AsFd for LentDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for LentDir {
    fn drop(&mut self) {
        if let Some(mode) = self.give_back {
            let _ = fchmod(&self.fd, mode);
        }
    }
}

/// Runs `op` in `dir`; when it fails with EACCES and agentd owns `dir`, once more with the
/// owner's permissions on `dir` lent for that call.
pub(crate) fn in_dir<T>(
    dir: BorrowedFd<'_>,
    mut op: impl FnMut(BorrowedFd<'_>) -> nix::Result<T>,
) -> nix::Result<T> {
    match op(dir) {
        Err(Errno::EACCES) if bound() => {
            let Some(mode) = fstat(dir).ok().as_ref().and_then(needs_lending) else {
                return Err(Errno::EACCES);
            };
            fchmod(dir, Mode::from_bits_truncate(mode.bits() | 0o700))?;
            let again = op(dir);
            let _ = fchmod(dir, mode);
            again
        }
        other => other,
    }
}

/// `openat(dir, name, flags)`, where neither `dir`'s mode nor `name`'s stops agentd when it owns
/// them. What is opened stays usable once its mode is given back.
pub(crate) fn openat_owned<P: ?Sized + NixPath>(
    dir: BorrowedFd<'_>,
    name: &P,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    in_dir(dir, |dir| match openat(dir, name, flags, Mode::empty()) {
        Err(Errno::EACCES) if bound() => reopen_lent(dir, name, flags),
        other => other,
    })
}

/// Opens `name` (never through a symlink) by lending its owner's permissions for the open.
fn reopen_lent<P: ?Sized + NixPath>(
    dir: BorrowedFd<'_>,
    name: &P,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let path_only = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let handle = openat(dir, name, path_only, Mode::empty())?;
    let st = fstat(&handle)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Errno::ELOOP);
    }
    let Some(mode) = needs_lending(&st) else {
        return Err(Errno::EACCES);
    };
    // This thread's own view: a blocking thread may hold other credentials than the process.
    let magic = format!("/proc/thread-self/fd/{}", handle.as_raw_fd());
    fchmodat(
        nix::fcntl::AT_FDCWD,
        magic.as_str(),
        lent_mode(&st),
        FchmodatFlags::FollowSymlink,
    )?;
    // The magic link is the inode itself: following it is what is meant.
    let opened = nix::fcntl::open(
        magic.as_str(),
        flags.difference(OFlag::O_NOFOLLOW) | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    let _ = fchmodat(
        nix::fcntl::AT_FDCWD,
        magic.as_str(),
        mode,
        FchmodatFlags::FollowSymlink,
    );
    opened
}
