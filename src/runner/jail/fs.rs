//! The jail's filesystem: a root assembled from bind mounts on a tmpfs, the way bubblewrap does
//! it. Runs in ns-init, inside the job's user and mount namespaces (so every mount here is
//! private to the job and vanishes with it), in two steps:
//! - [`prepare`] (ahead of the job, in a standby): the tmpfs root, the system directories
//!   read-only, `/etc` without host secrets, a minimal `/dev`, the namespace's own `/proc`;
//! - [`enter`] (once the job is known): its workspace and HOME read-write at their host paths,
//!   the agent's installation and the profile's paths, a size-capped `/tmp`, then `pivot_root`
//!   into the new root and a read-only remount of it.

use super::JailSpec;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};
use std::path::{Path, PathBuf};

/// System directories visible read-only (those that exist; symlinks are copied as symlinks,
/// as on merged-/usr systems).
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];

/// Host secrets under `/etc` replaced by an empty file.
const ETC_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
];

/// Devices bound from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Parts of `/proc` that are read-only in the jail even for a root inside it.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus"];

/// An empty file in the new root, bound over whatever must look empty.
const EMPTY: &str = ".empty";

type Result<T> = std::result::Result<T, String>;

fn at(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("jail: {what} {}: {e}", path.display())
}

/// Builds the job-independent part of the root on a tmpfs mounted at `root` (an empty directory
/// of the host). The caller is ns-init with every capability of the job's user namespace.
pub fn prepare(root: &Path) -> Result<()> {
    // Nothing mounted from here on may reach the host's mount table.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("cannot make private", Path::new("/"), e))?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| err("cannot mount the root tmpfs on", root, e))?;
    let empty = root.join(EMPTY);
    std::fs::write(&empty, b"").map_err(|e| err("cannot create", &empty, e))?;
    for dir in SYSTEM {
        expose(root, Path::new(dir), false)?;
    }
    for secret in ETC_SECRETS {
        cover(root, Path::new(secret))?;
    }
    if let Ok(keys) = std::fs::read_dir("/etc/ssh") {
        for key in keys.flatten() {
            if key.file_name().to_string_lossy().starts_with("ssh_host_") {
                cover(root, &key.path())?;
            }
        }
    }
    dev(root)?;
    proc(root)?;
    mkdir(&root.join("tmp"))
}

/// Adds the job's paths and enters the new root. Afterwards the process's root and working
/// directory are the jail's `/`.
pub fn enter(root: &Path, spec: &JailSpec) -> Result<()> {
    // First: a job path under the host's /tmp (tests, small set-ups) lands on the job's /tmp.
    let size = format!("mode=1777,size={}", spec.limits.tmp_bytes.max(4096));
    let tmp = root.join("tmp");
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(size.as_str()),
    )
    .map_err(|e| err("cannot mount", &tmp, e))?;
    for path in &spec.read_only {
        expose(root, path, false)?;
    }
    for path in spec.read_write.iter().chain([&spec.workspace, &spec.home]) {
        expose(root, path, true)?;
    }
    for i in &spec.installs {
        install(root, &spec.home, i)?;
    }
    let keep = |p: &Path| {
        [&spec.workspace, &spec.home]
            .into_iter()
            .chain(&spec.read_write)
            .any(|k| k.starts_with(p))
    };
    for path in spec.hide.iter().filter(|p| !keep(p)) {
        cover(root, path)?;
    }
    pivot(root)
}

/// `pivot_root` into `root` and detach the host's tree, then make the root itself read-only
/// (the mounts on it keep their own modes).
fn pivot(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(|e| err("cannot enter", root, e))?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the new.
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root into", root, e))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| err("cannot detach the host root at", root, e))?;
    nix::unistd::chdir("/").map_err(|e| err("cannot enter", Path::new("/"), e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| err("cannot make read-only", Path::new("/"), e))
}

/// Makes host `path` visible at the same path under `root`: a symlink as a symlink, anything
/// else as a recursive bind mount, read-only unless `writable`. A path that does not exist is
/// left out (nothing to see).
fn expose(root: &Path, path: &Path, writable: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let target = at(root, path);
    if let Some(parent) = target.parent() {
        mkdir(parent)?;
    }
    if meta.file_type().is_symlink() {
        let link = std::fs::read_link(path).map_err(|e| err("cannot read link", path, e))?;
        return match std::os::unix::fs::symlink(&link, &target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(err("cannot create link", &target, e))
            }
            _ => Ok(()),
        };
    }
    mount_point(&target, meta.is_dir())?;
    mount(
        Some(path),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| err("cannot bind", path, e))?;
    if !writable {
        read_only_tree(&target)?;
    }
    Ok(())
}

/// Shows `i.entries` (and nothing else) read-only in `i.dir`: a tmpfs over the directory, each
/// entry bound onto it read-only, then the tmpfs itself made read-only.
fn install(root: &Path, home: &Path, i: &super::Install) -> Result<()> {
    let rel = i
        .dir
        .strip_prefix(home)
        .map_err(|_| err("not under HOME:", &i.dir, "refused"))?;
    // The agent owned HOME before this job: no component below it may be a link (one would
    // move the mount to wherever it points).
    let mut at_dir = at(root, home);
    for c in rel.components() {
        at_dir.push(c);
        match std::fs::symlink_metadata(&at_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err("not a directory:", &i.dir, "refused")),
            Err(e) => return Err(err("cannot inspect", &i.dir, e)),
        }
    }
    mount(
        Some("tmpfs"),
        &at_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| err("cannot mount a tmpfs on", &i.dir, e))?;
    for (name, source) in &i.entries {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(err("bad install name in", &i.dir, name));
        }
        let meta = std::fs::metadata(source).map_err(|e| err("cannot inspect", source, e))?;
        let target = at_dir.join(name);
        mount_point(&target, meta.is_dir())?;
        mount(
            Some(source.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| err("cannot bind", source, e))?;
    }
    read_only_tree(&at_dir)
}

/// Creates what a mount needs to land on: a directory, or an empty file for a file.
fn mount_point(target: &Path, dir: bool) -> Result<()> {
    if dir {
        return mkdir(target);
    }
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    std::fs::write(target, b"").map_err(|e| err("cannot create", target, e))
}

fn mkdir(path: &Path) -> Result<()> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        // Inside a read-only bind the directory exists already.
        Err(_) if path.is_dir() => Ok(()),
        Err(e) => Err(err("cannot create", path, e)),
    }
}

/// Hides `path` (as seen from inside `root`) behind an empty file or an empty read-only tmpfs.
fn cover(root: &Path, path: &Path) -> Result<()> {
    let target = at(root, path);
    let Ok(meta) = std::fs::symlink_metadata(&target) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let (source, fstype, flags) = if meta.is_dir() {
        (
            None,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )
    } else {
        (Some(root.join(EMPTY)), None, MsFlags::MS_BIND)
    };
    mount(
        source.as_deref(),
        &target,
        fstype,
        flags,
        Some("mode=0555,size=4k"),
    )
    .map_err(|e| err("cannot hide", path, e))?;
    if !meta.is_dir() {
        read_only_tree(&target)?;
    }
    Ok(())
}

/// Remounts `target` and every mount beneath it read-only, keeping the flags the kernel locks
/// in a user namespace (nosuid, nodev, noexec, atime), which a remount may not clear.
fn read_only_tree(target: &Path) -> Result<()> {
    for point in mounts_under(target)? {
        let kept = statvfs(&point)
            .map(|s| locked_flags(s.flags()))
            .unwrap_or(MsFlags::empty());
        mount(
            None::<&str>,
            &point,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | kept,
            None::<&str>,
        )
        .map_err(|e| err("cannot make read-only", &point, e))?;
    }
    Ok(())
}

fn locked_flags(f: FsFlags) -> MsFlags {
    let mut m = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    m
}

/// Mount points at or beneath `target`, from this mount namespace's mountinfo, parents first.
fn mounts_under(target: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| err("cannot read", Path::new("/proc/self/mountinfo"), e))?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(target))
        .collect();
    points.sort_by_key(|p| p.components().count());
    points.dedup();
    Ok(points)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal `/dev`: the harmless devices bound from the host, a private devpts, `/dev/shm`.
fn dev(root: &Path) -> Result<()> {
    let dev = root.join("dev");
    mkdir(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| err("cannot mount", &dev, e))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if std::fs::symlink_metadata(&host).is_err() {
            continue;
        }
        let target = dev.join(name);
        mount_point(&target, false)?;
        mount(
            Some(&host),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("cannot bind", &host, e))?;
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    // Best effort: without it only programs that need a pseudo-terminal fail.
    if mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .is_ok()
    {
        symlink("pts/ptmx", &dev.join("ptmx"))?;
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=64m"),
    )
    .map_err(|e| err("cannot mount", &shm, e))?;
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, &dev.join(link))?;
    }
    Ok(())
}

fn symlink(to: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(to, link).map_err(|e| err("cannot create link", link, e))
}

/// The PID namespace's own `/proc`, with the kernel-wide knobs read-only.
fn proc(root: &Path) -> Result<()> {
    let proc = root.join("proc");
    mkdir(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("cannot mount", &proc, e))?;
    for name in PROC_READ_ONLY {
        let target = proc.join(name);
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        mount(
            Some(&target),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| err("cannot bind", &target, e))?;
        read_only_tree(&target)?;
    }
    Ok(())
}

/// Brings `lo` up in a fresh network namespace (it starts down).
#[allow(unsafe_code)]
pub fn loopback_up() -> Result<()> {
    // SAFETY: a plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "jail: cannot open a socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: ifreq is plain data; the name is NUL-terminated within IFNAMSIZ; the ioctls read
    // and write only the struct.
    let result = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if rc == 0 { Ok(()) } else { Err(e) }
    };
    result.map_err(|e| format!("jail: cannot bring up lo: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_handles_mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trail\04"), r"/trail\04");
    }

    #[test]
    fn at_joins_absolute_paths_under_the_root() {
        assert_eq!(
            at(Path::new("/r"), Path::new("/usr/bin")),
            PathBuf::from("/r/usr/bin")
        );
    }
}
