//! The jail's filesystem: a root assembled from bind mounts on a tmpfs, the way bubblewrap does
//! it. Runs in ns-init, inside the job's user and mount namespaces (so every mount here is
//! private to the job and vanishes with it), in two steps:
//! - [`prepare`] (ahead of the job, in a standby): the tmpfs root, the system directories
//!   read-only, `/etc` without host secrets, a minimal `/dev`, the namespace's own `/proc`, and,
//!   where the kernel can clone mounts from a detached tree (6.15+), already the `pivot_root`
//!   into it: the host's tree stays reachable only through a detached copy of it
//!   ([`Root`]'s `host`, an `open_tree` descriptor) from which the job's paths are cloned;
//! - [`enter`] (once the job is known): its workspace and HOME read-write at their host paths,
//!   the agent's installation and the profile's paths, a size-capped `/tmp`, then (when not done
//!   ahead) `pivot_root` into the new root, and a read-only remount of it.
//!
//! Pivoting ahead takes the detach of the host's root off the job's start: that unmount waits
//! for an RCU grace period, ~0.1 ms on a quiet machine of this kind but up to several ms when
//! the other vCPU is busy (measured: 64 µs–3.8 ms over 30 tries at load 3).

use super::JailSpec;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::{FsFlags, statvfs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

/// The jail's root while ns-init builds it.
pub struct Root {
    /// Where the root is as ns-init sees it: the host directory it is mounted on, or `/` once
    /// ns-init pivoted into it ahead of the job.
    at: PathBuf,
    /// Set when ns-init pivoted ahead: a detached copy of the host's mount tree (private to
    /// ns-init's mount namespace, close-on-exec), the only way left to the job's host paths.
    /// It holds the host's mounts as they were when the standby started: files and directories
    /// created since are there (same filesystems), a filesystem mounted on the host since is
    /// not (the job then sees the directory under it).
    host: Option<OwnedFd>,
}

impl Root {
    /// Opens host directory `path` (for the gateway bridge, which reaches agentd's socket
    /// through it).
    pub fn open_host_dir(&self, path: &Path) -> Result<OwnedFd> {
        let opened = match &self.host {
            None => std::fs::File::open(path)
                .map(OwnedFd::from)
                .map_err(|e| e.to_string()),
            Some(host) => {
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                open_in(host, path, flags).map_err(|e| e.to_string())
            }
        };
        opened.map_err(|e| err("cannot open", path, e))
    }

    /// The host tree's descriptor, for the caller to close once nothing needs it (closing it
    /// unmounts the copy, another RCU grace period: best done off the job's path).
    pub fn take_host(&mut self) -> Option<OwnedFd> {
        self.host.take()
    }

    /// What host `path` is (`follow`: through a final symlink), and how to bind it; `None`
    /// when it does not exist.
    fn find(&self, path: &Path, follow: bool) -> Result<Option<(Kind, Source)>> {
        let Some(host) = &self.host else {
            let meta = if follow {
                std::fs::metadata(path)
            } else {
                std::fs::symlink_metadata(path)
            };
            let Ok(meta) = meta else { return Ok(None) };
            let kind = if meta.file_type().is_symlink() {
                Kind::Link(std::fs::read_link(path).map_err(|e| err("cannot read link", path, e))?)
            } else if meta.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            return Ok(Some((kind, Source::Path(path.to_path_buf()))));
        };
        let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let fd = match open_in(host, path, flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
            Err(e) => return Err(err("cannot look up", path, e)),
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|e| err("cannot inspect", path, e))?;
        let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFLNK => Kind::Link(PathBuf::from(
                nix::fcntl::readlinkat(&fd, "").map_err(|e| err("cannot read link", path, e))?,
            )),
            SFlag::S_IFDIR => Kind::Dir,
            _ => Kind::File,
        };
        Ok(Some((kind, Source::Host(fd))))
    }
}

/// What a host path is.
enum Kind {
    Link(PathBuf),
    Dir,
    File,
}

/// A host path to bind, by name (before the pivot) or by a descriptor into the host tree's copy.
enum Source {
    Path(PathBuf),
    Host(OwnedFd),
}

/// Opens host `path` beneath the host tree's copy, resolving every symlink inside that copy
/// (as the host would), never through `/proc` magic links.
fn open_in(host: &OwnedFd, path: &Path, flags: OFlag) -> std::result::Result<OwnedFd, Errno> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(host, rel, how)
}

/// Binds `source` (with everything mounted beneath it) on `target`.
fn bind(source: &Source, target: &Path) -> Result<()> {
    match source {
        Source::Path(path) => mount(
            Some(path.as_path()),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| err("cannot bind", path, e)),
        Source::Host(fd) => {
            let flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
            let tree = open_tree(fd, c"", flags | libc::AT_RECURSIVE as u32)
                .map_err(|e| err("cannot copy the mounts of", target, e))?;
            move_mount(&tree, target).map_err(|e| err("cannot bind onto", target, e))
        }
    }
}

const OPEN_TREE_CLONE: u32 = 1;
const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

/// `open_tree(2)`, which nix does not wrap.
#[allow(unsafe_code)]
fn open_tree(
    dir: &OwnedFd,
    path: &std::ffi::CStr,
    flags: u32,
) -> std::result::Result<OwnedFd, Errno> {
    // SAFETY: open_tree reads the NUL-terminated path; the descriptor is borrowed and alive.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), path.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: on success open_tree returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `move_mount(2)` of the detached tree `tree` onto `target`.
#[allow(unsafe_code)]
fn move_mount(tree: &OwnedFd, target: &Path) -> std::result::Result<(), Errno> {
    let to = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: move_mount reads the two NUL-terminated paths; the descriptor is borrowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// A detached copy of this mount namespace's whole tree, when the kernel lets the job's paths be
/// cloned out of it later (it must allow cloning from a detached tree, 6.15+: tried once here).
/// `None` on older kernels: then the job's paths are bound by name before the pivot.
fn host_tree() -> Option<OwnedFd> {
    let root = std::fs::File::open("/").ok().map(OwnedFd::from)?;
    let flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    let host = open_tree(&root, c".", flags).ok()?;
    let probe = open_tree(&host, c"", flags | libc::AT_EMPTY_PATH as u32).ok()?;
    drop(probe);
    Some(host)
}

/// Builds the job-independent part of the root on a tmpfs mounted at `root` (an empty directory
/// of the host), and pivots into it where the kernel allows binding the job's paths afterwards.
/// The caller is ns-init with every capability of the job's user namespace.
pub fn prepare(root: &Path) -> Result<Root> {
    // Nothing mounted from here on may reach the host's mount table.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("cannot make private", Path::new("/"), e))?;
    // Taken before the jail's own mounts exist, so it holds the host's tree only.
    let host = host_tree();
    build(root)?;
    match host {
        Some(host) => {
            pivot(root)?;
            Ok(Root {
                at: PathBuf::from("/"),
                host: Some(host),
            })
        }
        None => Ok(Root {
            at: root.to_path_buf(),
            host: None,
        }),
    }
}

/// The job-independent part of the root.
fn build(root: &Path) -> Result<()> {
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
    // Before any pivot: the host's paths are bound by name.
    let by_name = Root {
        at: root.to_path_buf(),
        host: None,
    };
    for dir in SYSTEM {
        expose(&by_name, Path::new(dir), false)?;
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
pub fn enter(jail: &Root, spec: &JailSpec) -> Result<()> {
    let root = jail.at.as_path();
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
        expose(jail, path, false)?;
    }
    for path in spec.read_write.iter().chain([&spec.workspace, &spec.home]) {
        expose(jail, path, true)?;
    }
    for i in &spec.installs {
        install(jail, &spec.home, i)?;
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
    if jail.host.is_none() {
        pivot(root)?;
    }
    seal()
}

/// `pivot_root` into `root` and detach the host's tree.
fn pivot(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(|e| err("cannot enter", root, e))?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the new.
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root into", root, e))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| err("cannot detach the host root at", root, e))?;
    nix::unistd::chdir("/").map_err(|e| err("cannot enter", Path::new("/"), e))
}

/// Makes the root itself read-only, once every mount point of the job is made (the mounts on
/// it keep their own modes).
fn seal() -> Result<()> {
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
fn expose(jail: &Root, path: &Path, writable: bool) -> Result<()> {
    let Some((kind, source)) = jail.find(path, false)? else {
        return Ok(());
    };
    let target = at(&jail.at, path);
    if let Some(parent) = target.parent() {
        mkdir(parent)?;
    }
    let is_dir = match kind {
        Kind::Link(link) => {
            return match std::os::unix::fs::symlink(&link, &target) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    Err(err("cannot create link", &target, e))
                }
                _ => Ok(()),
            };
        }
        Kind::Dir => true,
        Kind::File => false,
    };
    mount_point(&target, is_dir)?;
    bind(&source, &target)?;
    if !writable {
        read_only_tree(&target)?;
    }
    Ok(())
}

/// Shows `i.entries` (and nothing else) read-only in `i.dir`: a tmpfs over the directory, each
/// entry bound onto it read-only, then the tmpfs itself made read-only.
fn install(jail: &Root, home: &Path, i: &super::Install) -> Result<()> {
    let root = jail.at.as_path();
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
        let (kind, from) = jail
            .find(source, true)?
            .ok_or_else(|| err("cannot inspect", source, "not found"))?;
        let target = at_dir.join(name);
        mount_point(&target, matches!(kind, Kind::Dir))?;
        bind(&from, &target)?;
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

/// Makes `target` and every mount beneath it read-only. One `mount_setattr(AT_RECURSIVE)` call
/// where the kernel has it (5.12+), which sets only the read-only bit; otherwise remounts each
/// mount found in mountinfo (a read of the whole table each time, ~0.1 ms per job path).
fn read_only_tree(target: &Path) -> Result<()> {
    match set_read_only_recursive(target) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOSYS) => remount_read_only_tree(target),
        Err(e) => Err(err("cannot make read-only", target, e)),
    }
}

/// `struct mount_attr` of `<linux/mount.h>` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[allow(unsafe_code)]
fn set_read_only_recursive(target: &Path) -> std::result::Result<(), nix::errno::Errno> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads the NUL-terminated path and `attr` (of the size passed), both
    // alive across the call, and writes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// [`read_only_tree`] for kernels without `mount_setattr`: remounts each mount, keeping the
/// flags the kernel locks in a user namespace (nosuid, nodev, noexec, atime), which a remount
/// may not clear.
fn remount_read_only_tree(target: &Path) -> Result<()> {
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
