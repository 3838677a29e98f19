//! Unix socket paths that fit. `sun_path` holds 108 bytes and a data dir may be longer than that
//! leaves room for, so the side that binds and the side that connects both name the socket through
//! an open descriptor of its directory (`/proc/self/fd/N/name`); the socket still lives in that
//! directory, where the runner's records and the start-up sweep find it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Opens `dir` for [`via`]: a path-only, close-on-exec descriptor.
pub fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(std::io::Error::from)
}

/// The short name of `name` inside the directory `dir` was opened on; valid while `dir` is open.
pub fn via(dir: &impl AsRawFd, name: &str) -> String {
    format!("/proc/self/fd/{}/{name}", dir.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_connects_under_a_directory_too_long_for_sun_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d".repeat(150));
        std::fs::create_dir(&dir).unwrap();
        assert!(std::os::unix::net::UnixListener::bind(dir.join("s.sock")).is_err());
        let fd = open_dir(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(via(&fd, "s.sock")).unwrap();
        assert!(
            dir.join("s.sock").exists(),
            "the socket lives in the long directory"
        );
        let other = open_dir(&dir).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(via(&other, "s.sock")).unwrap();
        assert!(listener.accept().is_ok());
    }
}
