//! Per-job cgroups: the memory, pids and CPU limits of one job, the processes in it, and the
//! counters that say a limit was hit.
//!
//! Works on both layouts the kernel offers: cgroup v1 (one hierarchy per controller, found from
//! `/proc/self/mountinfo`, e.g. `/sys/fs/cgroup/memory`) and the unified v2 hierarchy. A host that
//! mounts both ("hybrid": v1 controllers plus an empty `cgroup2` at `/sys/fs/cgroup/unified`) is
//! treated as v1, because a controller bound to v1 cannot appear in v2.
//!
//! A job's cgroup lives at `<controller root>/<parent>/<name>`: one directory per controller on v1,
//! one directory on v2. [`probe`] prepares `<parent>` (creates it and, on v2, enables the controllers
//! for its children) where this uid may; an unprivileged agentd needs the operator to have
//! delegated that subtree to it (README, "Running without root").
//!
//! Hand-written rather than `cgroups-rs`: that crate (0.5) depends on `zbus`, which brings an async
//! executor and ~40 crates into the synchronous supervisor, and it looks for hierarchies only at
//! `/sys/fs/cgroup`; the few files needed here are simpler to write directly.
//!
//! This runs inside the supervisor: blocking std I/O, no async runtime, errors as `String`s naming
//! the file and the errno.

use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The controllers a job cgroup uses.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// CFS period written with a CPU quota (the kernel default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;
/// Smallest quota the kernel accepts (1 ms).
const CPU_MIN_QUOTA_US: u64 = 1_000;
/// How long [`JobCgroup::remove`] keeps retrying while the kernel finishes the exits.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

/// Resource limits of one job; `None` leaves the resource unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub max_pids: Option<u64>,
    /// CPU time per wall-clock second, in milliseconds (1000 = one core).
    pub cpu_millis: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What this process can use under `<root>/<parent>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// `None`: no cgroup hierarchy is mounted.
    pub version: Option<Version>,
    /// Controllers of [`CONTROLLERS`] that job cgroups under the parent get (mounted, enabled for
    /// the parent's children on v2, and the parent writable by this uid), in [`CONTROLLERS`] order.
    pub controllers: Vec<String>,
    /// Why a controller is missing, one sentence each (for the start-up refusal and logs).
    pub problems: Vec<String>,
}

impl Probe {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// What the kernel counted for a job; 0 where the controller or file is missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Processes the OOM killer killed in the cgroup (v1 `memory.oom_control` `oom_kill`,
    /// v2 `memory.events` `oom_kill`).
    pub oom_kills: u64,
    /// Forks refused because of `pids.max` (`pids.events` `max`).
    pub pids_hits: u64,
    /// Memory charged now (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub memory_bytes: u64,
    /// Highest memory charged (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`, kernel ≥ 5.19).
    pub memory_peak_bytes: Option<u64>,
    /// CFS periods in which the quota stopped the job (`cpu.stat` `nr_throttled`).
    pub cpu_throttled_periods: u64,
}

/// Where the cgroup hierarchies are mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Mount point of each v1 controller of [`CONTROLLERS`] that is mounted (a co-mounted
    /// `cpu,cpuacct` gives `cpu` that mount).
    V1(Vec<(String, PathBuf)>),
    /// Mount point of the unified hierarchy.
    V2(PathBuf),
}

impl Layout {
    /// The layout of this host, read once per process from `/proc/self/mountinfo`.
    pub fn detect() -> Option<&'static Layout> {
        static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();
        LAYOUT
            .get_or_init(|| {
                fs::read_to_string("/proc/self/mountinfo")
                    .ok()
                    .and_then(|text| Layout::from_mountinfo(&text))
            })
            .as_ref()
    }

    /// V1 as soon as one of [`CONTROLLERS`] is bound to a v1 hierarchy (then it cannot be in v2);
    /// else V2 when a `cgroup2` is mounted, preferring `/sys/fs/cgroup`.
    pub fn from_mountinfo(text: &str) -> Option<Layout> {
        let mut v1 = Vec::new();
        let mut v2 = Vec::new();
        for line in text.lines() {
            let Some((mount_point, fs_type, super_options)) = parse_mountinfo_line(line) else {
                continue;
            };
            match fs_type {
                "cgroup" => {
                    for option in super_options.split(',') {
                        if CONTROLLERS.contains(&option) {
                            v1.push((option.to_string(), mount_point.clone()));
                        }
                    }
                }
                "cgroup2" => v2.push(mount_point),
                _ => {}
            }
        }
        if !v1.is_empty() {
            v1.sort_by_key(|(c, _)| CONTROLLERS.iter().position(|k| k == c));
            v1.dedup_by(|a, b| a.0 == b.0);
            return Some(Layout::V1(v1));
        }
        let unified = v2
            .iter()
            .position(|p| p == Path::new("/sys/fs/cgroup"))
            .unwrap_or(0);
        (!v2.is_empty()).then(|| Layout::V2(v2.swap_remove(unified)))
    }

    pub fn version(&self) -> Version {
        match self {
            Layout::V1(_) => Version::V1,
            Layout::V2(_) => Version::V2,
        }
    }

    /// `<mount>/<rel>` for each hierarchy, with the controllers it carries; a v1 mount shared by
    /// several controllers appears once.
    fn dirs(&self, rel: &Path) -> Vec<(PathBuf, Vec<String>)> {
        match self {
            Layout::V2(root) => vec![(root.join(rel), Vec::new())],
            Layout::V1(mounts) => {
                let mut dirs: Vec<(PathBuf, Vec<String>)> = Vec::new();
                for (controller, mount) in mounts {
                    let dir = mount.join(rel);
                    match dirs.iter_mut().find(|(d, _)| *d == dir) {
                        Some((_, cs)) => cs.push(controller.clone()),
                        None => dirs.push((dir, vec![controller.clone()])),
                    }
                }
                dirs
            }
        }
    }
}

/// `(mount point, fs type, super options)` of one mountinfo line (proc(5)).
fn parse_mountinfo_line(line: &str) -> Option<(PathBuf, &str, &str)> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fs_type = right.next()?;
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("");
    Some((
        PathBuf::from(unescape_octal(mount_point)),
        fs_type,
        super_options,
    ))
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What job cgroups under `<root>/<parent>` can use, creating `<parent>` (and on v2 enabling
/// [`CONTROLLERS`] down to it) where this uid is allowed to.
pub fn probe(parent: &str) -> Probe {
    match Layout::detect() {
        Some(layout) => probe_in(layout, parent),
        None => Probe {
            problems: vec!["no cgroup hierarchy is mounted (/proc/self/mountinfo)".to_string()],
            ..Probe::default()
        },
    }
}

/// [`probe`] on a given layout.
pub fn probe_in(layout: &Layout, parent: &str) -> Probe {
    let mut probe = Probe {
        version: Some(layout.version()),
        ..Probe::default()
    };
    let rel = match relative_parent(parent) {
        Ok(rel) => rel,
        Err(e) => {
            probe.problems.push(e);
            return probe;
        }
    };
    match layout {
        Layout::V1(_) => {
            for (dir, controllers) in layout.dirs(&rel) {
                match fs::create_dir_all(&dir)
                    .map_err(|e| io_error("create", &dir, &e))
                    .and_then(|()| writable(&dir))
                {
                    Ok(()) => probe.controllers.extend(controllers),
                    Err(e) => probe
                        .problems
                        .push(format!("{}: {e}", controllers.join(","))),
                }
            }
            for c in CONTROLLERS {
                if !layout_has_v1(layout, c) {
                    probe.problems.push(format!(
                        "{c}: the {c} controller is not mounted (cgroup v1)"
                    ));
                }
            }
        }
        Layout::V2(root) => probe_v2(root, &rel, &mut probe),
    }
    probe
        .controllers
        .sort_by_key(|c| CONTROLLERS.iter().position(|k| k == c));
    probe
}

fn layout_has_v1(layout: &Layout, controller: &str) -> bool {
    matches!(layout, Layout::V1(mounts) if mounts.iter().any(|(c, _)| c == controller))
}

/// Walks from the root down to the parent, enabling the controllers in each level's
/// `cgroup.subtree_control` (only where missing, so a delegated parent needs no write above it).
fn probe_v2(root: &Path, rel: &Path, probe: &mut Probe) {
    let available = read_words(&root.join("cgroup.controllers"));
    for c in CONTROLLERS {
        if !available.iter().any(|a| a == c) {
            probe.problems.push(format!(
                "{c}: the {c} controller is not available in cgroup v2 ({})",
                root.join("cgroup.controllers").display()
            ));
        }
    }
    let mut dir = root.to_path_buf();
    let mut levels = rel.components();
    loop {
        enable_controllers(&dir, probe);
        let Some(next) = levels.next() else { break };
        dir.push(next);
        if let Err(e) = fs::create_dir(&dir)
            && e.kind() != ErrorKind::AlreadyExists
        {
            probe.problems.push(io_error("create", &dir, &e));
            return;
        }
    }
    if let Err(e) = writable(&dir) {
        probe.problems.push(e);
        return;
    }
    let enabled = read_words(&dir.join("cgroup.subtree_control"));
    probe.controllers = CONTROLLERS
        .iter()
        .filter(|c| enabled.iter().any(|e| e == *c))
        .map(|c| c.to_string())
        .collect();
}

/// Enables in `dir/cgroup.subtree_control` each controller `dir` has but does not pass down.
fn enable_controllers(dir: &Path, probe: &mut Probe) {
    let have = read_words(&dir.join("cgroup.controllers"));
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_words(&control);
    for c in CONTROLLERS {
        if !have.iter().any(|h| h == c) || enabled.iter().any(|e| e == c) {
            continue;
        }
        if let Err(e) = write_file(&control, &format!("+{c}")) {
            let hint = if e.contains("EBUSY") {
                " (the cgroup has processes of its own; a cgroup that passes controllers down must \
                 hold none, e.g. systemd DelegateSubgroup=)"
            } else {
                ""
            };
            probe.problems.push(format!("{c}: {e}{hint}"));
        }
    }
}

/// A job's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug)]
pub struct JobCgroup {
    version: Version,
    /// Each directory with the controllers it carries (v2: those enabled for it).
    dirs: Vec<(PathBuf, Vec<String>)>,
    removed: bool,
    /// The process that created it; a forked copy (ns-init, a child that unwinds instead of
    /// exec'ing) must not kill the job and remove the cgroup when it drops its copy.
    owner: u32,
}

impl JobCgroup {
    /// Creates `<root>/<parent>/<name>` and writes `limits`. Fails (and leaves nothing behind)
    /// when a limit is asked for whose controller is not usable under `parent` (see [`probe`]).
    pub fn create(parent: &str, name: &str, limits: &Limits) -> Result<JobCgroup, String> {
        let layout =
            Layout::detect().ok_or("no cgroup hierarchy is mounted (/proc/self/mountinfo)")?;
        JobCgroup::create_in(layout, parent, name, limits)
    }

    /// [`JobCgroup::create`] on a given layout.
    pub fn create_in(
        layout: &Layout,
        parent: &str,
        name: &str,
        limits: &Limits,
    ) -> Result<JobCgroup, String> {
        check_name(name)?;
        let parent = relative_parent(parent)?;
        let mut dirs = layout.dirs(&parent);
        if let Layout::V2(_) = layout {
            let enabled = read_words(&dirs[0].0.join("cgroup.subtree_control"));
            dirs[0].1 = CONTROLLERS
                .iter()
                .filter(|c| enabled.iter().any(|e| e == *c))
                .map(|c| c.to_string())
                .collect();
        }
        let needed = needed_controllers(limits);
        for (controller, limit) in &needed {
            if !dirs
                .iter()
                .any(|(_, cs)| cs.iter().any(|c| c == controller))
            {
                return Err(missing_controller(layout, &dirs, controller, limit));
            }
        }
        let mut cgroup = JobCgroup {
            version: layout.version(),
            dirs: Vec::new(),
            removed: false,
            owner: std::process::id(),
        };
        let mut skipped = None;
        for (parent_dir, controllers) in dirs {
            let dir = parent_dir.join(name);
            let error = match fs::create_dir(&dir) {
                Ok(()) => {
                    cgroup.dirs.push((dir, controllers));
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => format!(
                    "cgroup parent {} does not exist (probe creates it)",
                    parent_dir.display()
                ),
                Err(e) => io_error("create", &dir, &e),
            };
            // A v1 hierarchy no limit needs only gives counters: an operator may have delegated
            // just the controllers the limits use.
            let optional = layout.version() == Version::V1
                && !controllers
                    .iter()
                    .any(|c| needed.iter().any(|(n, _)| n == c));
            if !optional {
                return Err(error);
            }
            skipped.get_or_insert(error);
        }
        if cgroup.dirs.is_empty() {
            return Err(skipped.unwrap_or_else(|| format!("no cgroup hierarchy for {name:?}")));
        }
        cgroup.write_limits(limits)?;
        Ok(cgroup)
    }

    /// Sets `limits` on a cgroup created earlier (a standby's, made before its job was known);
    /// fails when a limit's controller is not part of it.
    pub fn apply(&self, limits: &Limits) -> Result<(), String> {
        for (controller, limit) in needed_controllers(limits) {
            if self.dir_of(controller).is_none() {
                return Err(format!(
                    "the job's cgroup has no {controller} controller for its {limit} limit"
                ));
            }
        }
        self.write_limits(limits)
    }

    fn write_limits(&self, limits: &Limits) -> Result<(), String> {
        for setting in limit_files(self.version, limits) {
            let Some(dir) = self.dir_of(setting.controller) else {
                continue;
            };
            let path = dir.join(setting.file);
            if setting.optional && !path.exists() {
                continue;
            }
            write_file(&path, &setting.value)?;
        }
        Ok(())
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The directories of this cgroup (one per v1 hierarchy, one on v2).
    pub fn dirs(&self) -> Vec<&Path> {
        self.dirs.iter().map(|(d, _)| d.as_path()).collect()
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(_, cs)| cs.iter().any(|c| c == controller))
            .map(|(d, _)| d.as_path())
    }

    /// Moves process `pid` (host numbering; all its threads) in; children it forks afterwards are
    /// born inside, children it already has stay where they are.
    pub fn attach(&self, pid: i32) -> Result<(), String> {
        if pid <= 0 {
            return Err(format!("cannot attach pid {pid} to a cgroup"));
        }
        self.attach_raw(&pid.to_string())
    }

    /// Moves the calling process in. Use this in a child that is already in a new PID namespace,
    /// where `getpid()` is not the pid the cgroup files speak (the kernel reads `0` as "me").
    pub fn attach_self(&self) -> Result<(), String> {
        self.attach_raw("0")
    }

    fn attach_raw(&self, pid: &str) -> Result<(), String> {
        for (dir, _) in &self.dirs {
            write_file(&dir.join("cgroup.procs"), pid)?;
        }
        Ok(())
    }

    pub fn counters(&self) -> Counters {
        let mut counters = Counters::default();
        if let Some(dir) = self.dir_of("memory") {
            let (events, current, peak) = match self.version {
                Version::V1 => (
                    "memory.oom_control",
                    "memory.usage_in_bytes",
                    "memory.max_usage_in_bytes",
                ),
                Version::V2 => ("memory.events", "memory.current", "memory.peak"),
            };
            counters.oom_kills = read_key(&dir.join(events), "oom_kill").unwrap_or(0);
            counters.memory_bytes = read_u64(&dir.join(current)).unwrap_or(0);
            counters.memory_peak_bytes = read_u64(&dir.join(peak));
        }
        if let Some(dir) = self.dir_of("pids") {
            counters.pids_hits = read_key(&dir.join("pids.events"), "max").unwrap_or(0);
        }
        if let Some(dir) = self.dir_of("cpu") {
            counters.cpu_throttled_periods =
                read_key(&dir.join("cpu.stat"), "nr_throttled").unwrap_or(0);
        }
        counters
    }

    /// The processes in the cgroup, in this process's PID namespace numbering, sorted.
    pub fn procs(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .flat_map(|(dir, _)| {
                fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in the cgroup, including ones forked while this runs. Returns once
    /// the cgroup is empty or after [`REMOVE_PATIENCE`].
    pub fn kill_all(&self) {
        let deadline = Instant::now() + REMOVE_PATIENCE;
        let kill_file = match self.version {
            Version::V2 => Some(self.dirs[0].0.join("cgroup.kill")).filter(|p| p.exists()),
            Version::V1 => None,
        };
        let mut pause = Duration::from_micros(200);
        loop {
            let pids = self.procs();
            if pids.is_empty() || Instant::now() >= deadline {
                return;
            }
            // cgroup.kill (v2, Linux 5.14) kills the whole tree atomically, forks included; v1 has
            // no such file, so kill what is listed and look again until nothing is left.
            let killed_by_kernel = kill_file
                .as_ref()
                .is_some_and(|f| write_file(f, "1").is_ok());
            if !killed_by_kernel {
                for pid in pids {
                    self.kill_member(pid);
                }
            }
            sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// SIGKILLs `pid` through a pidfd after checking it is still a member, so a pid that was
    /// recycled between reading `cgroup.procs` and the kill is never signalled.
    #[allow(unsafe_code)]
    fn kill_member(&self, pid: i32) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
                && self.is_member(pid)
            {
                // SAFETY: plain kill(2); only reached on kernels without pidfds (< 5.3).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            return;
        }
        // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if self.is_member(pid) {
            // SAFETY: pidfd_send_signal on an fd we own; no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }

    /// Whether `/proc/<pid>/cgroup` places `pid` in this cgroup (or below it).
    fn is_member(&self, pid: i32) -> bool {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        let name = self.dirs[0]
            .0
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let parent = self.dirs[0]
            .0
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let tail = format!("/{parent}/{name}");
        text.lines().any(|line| {
            let path = line.splitn(3, ':').nth(2).unwrap_or("");
            path.ends_with(&tail) || path.contains(&format!("{tail}/"))
        })
    }

    /// Kills what is left, then removes every directory (sub-cgroups first), retrying while the
    /// kernel finishes the exits.
    pub fn remove(mut self) -> Result<(), String> {
        self.remove_dirs()
    }

    fn remove_dirs(&mut self) -> Result<(), String> {
        if self.removed {
            return Ok(());
        }
        self.kill_all();
        let deadline = Instant::now() + REMOVE_PATIENCE;
        for (dir, _) in &self.dirs {
            remove_tree(dir, deadline)?;
        }
        self.removed = true;
        Ok(())
    }
}

/// Removes the cgroup `name` under `parent` that a killed supervisor left behind (killing what
/// may still be in it); true when there was one.
pub fn remove_stale(parent: &str, name: &str) -> bool {
    let (Some(layout), Ok(()), Ok(rel)) =
        (Layout::detect(), check_name(name), relative_parent(parent))
    else {
        return false;
    };
    let dirs: Vec<(PathBuf, Vec<String>)> = layout
        .dirs(&rel)
        .into_iter()
        .map(|(d, cs)| (d.join(name), cs))
        .filter(|(d, _)| d.is_dir())
        .collect();
    if dirs.is_empty() {
        return false;
    }
    let stale = JobCgroup {
        version: layout.version(),
        dirs,
        removed: false,
        owner: std::process::id(),
    };
    let _ = stale.remove();
    true
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        if std::process::id() == self.owner {
            let _ = self.remove_dirs();
        }
    }
}

/// Removes a cgroup directory and the cgroups below it; a cgroup's interface files go with
/// its rmdir, so only directories are walked.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), String> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path(), deadline)?;
            }
        }
    }
    let mut pause = Duration::from_micros(500);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            // EBUSY while exiting processes still count as members.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(io_error("remove", dir, &e)),
        }
    }
}

/// One interface file written for a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Setting {
    controller: &'static str,
    file: &'static str,
    value: String,
    /// Written only when the kernel offers the file (swap accounting may be off).
    optional: bool,
}

/// The files that set `limits`, in the order they must be written (v1 refuses a
/// `memsw` limit below the memory limit, and a quota is read against the period).
fn limit_files(version: Version, limits: &Limits) -> Vec<Setting> {
    let set = |controller, file, value: String, optional| Setting {
        controller,
        file,
        value,
        optional,
    };
    let mut files = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        match version {
            Version::V1 => {
                files.push(set(
                    "memory",
                    "memory.limit_in_bytes",
                    bytes.to_string(),
                    false,
                ));
                files.push(set(
                    "memory",
                    "memory.memsw.limit_in_bytes",
                    bytes.to_string(),
                    true,
                ));
            }
            Version::V2 => {
                files.push(set("memory", "memory.max", bytes.to_string(), false));
                files.push(set("memory", "memory.swap.max", "0".to_string(), true));
            }
        }
    }
    if let Some(pids) = limits.max_pids {
        files.push(set("pids", "pids.max", pids.to_string(), false));
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(CPU_MIN_QUOTA_US);
        match version {
            Version::V1 => {
                files.push(set(
                    "cpu",
                    "cpu.cfs_period_us",
                    CPU_PERIOD_US.to_string(),
                    false,
                ));
                files.push(set("cpu", "cpu.cfs_quota_us", quota.to_string(), false));
            }
            Version::V2 => files.push(set(
                "cpu",
                "cpu.max",
                format!("{quota} {CPU_PERIOD_US}"),
                false,
            )),
        }
    }
    files
}

/// The controllers `limits` needs, with the limit's name for messages.
fn needed_controllers(limits: &Limits) -> Vec<(&'static str, &'static str)> {
    [
        (limits.memory_bytes.is_some(), ("memory", "memory limit")),
        (limits.max_pids.is_some(), ("pids", "pids limit")),
        (limits.cpu_millis.is_some(), ("cpu", "CPU quota")),
    ]
    .into_iter()
    .filter_map(|(needed, c)| needed.then_some(c))
    .collect()
}

fn missing_controller(
    layout: &Layout,
    dirs: &[(PathBuf, Vec<String>)],
    controller: &str,
    limit: &str,
) -> String {
    match layout {
        Layout::V1(_) => {
            format!("cgroup v1: the {controller} controller (for the {limit}) is not mounted")
        }
        Layout::V2(_) => format!(
            "cgroup v2: the {controller} controller (for the {limit}) is not enabled in {} \
             (probe enables it where allowed)",
            dirs[0].0.join("cgroup.subtree_control").display()
        ),
    }
}

/// A job name is one path component.
fn check_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.len() > 255;
    if bad {
        return Err(format!(
            "invalid cgroup name {name:?}: must be one path component"
        ));
    }
    Ok(())
}

/// The parent as a path relative to a controller root: leading `/` allowed, `..` refused.
fn relative_parent(parent: &str) -> Result<PathBuf, String> {
    let trimmed = parent.trim_start_matches('/');
    let path = Path::new(trimmed);
    let plain =
        !trimmed.contains('\0') && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "invalid cgroup parent {parent:?}: must be a plain relative path without '..'"
        ));
    }
    Ok(path.to_path_buf())
}

/// `<action> <path>: <ERRNO> (<description>)`.
fn io_error(action: &str, path: &Path, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let errno = nix::errno::Errno::from_raw(code);
            format!("{action} {}: {errno:?} ({})", path.display(), errno.desc())
        }
        None => format!("{action} {}: {e}", path.display()),
    }
}

/// Writes `value` in a single write(2): cgroup files act on each write, and must not be created.
fn write_file(path: &Path, value: &str) -> Result<(), String> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error("open", path, &e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| io_error(&format!("write {value:?} to"), path, &e))
}

/// Whether this uid may create cgroups in `dir` and move processes into them.
fn writable(dir: &Path) -> Result<(), String> {
    use nix::unistd::{AccessFlags, access};
    for path in [dir.to_path_buf(), dir.join("cgroup.procs")] {
        access(&path, AccessFlags::W_OK).map_err(|errno| {
            format!(
                "{}: {errno:?} ({}): not writable by this user",
                path.display(),
                errno.desc()
            )
        })?;
    }
    Ok(())
}

fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` per line).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    parse_key(&fs::read_to_string(path).ok()?, key)
}

fn parse_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
#[allow(unsafe_code)] // the tests fork to act as another user or a copy of the process
mod tests {
    //! The kernel tests use this host's real hierarchies (as root: v1 memory/pids/cpu here, and the
    //! `cgroup2` mounted beside them for the v2 path); each test works under its own parent.
    use super::*;
    use std::io::Read;
    use std::process::{Child, Command, ExitStatus, Stdio};

    const MIB: u64 = 1 << 20;

    /// A per-test parent, removed (with anything left in it) when dropped.
    struct Parent {
        layout: Layout,
        name: String,
    }

    impl Parent {
        /// Prepared by [`probe_in`], as agentd does at start-up.
        fn new(layout: &Layout, test: &str) -> Parent {
            let name = format!("agentd-unit-{}-{test}", std::process::id());
            probe_in(layout, &name);
            Parent {
                layout: layout.clone(),
                name,
            }
        }
    }

    impl Drop for Parent {
        fn drop(&mut self) {
            for (dir, _) in self.layout.dirs(Path::new(&self.name)) {
                let _ = remove_tree(&dir, Instant::now() + REMOVE_PATIENCE);
            }
        }
    }

    fn host() -> &'static Layout {
        Layout::detect().expect("a cgroup hierarchy is mounted")
    }

    /// The host's `cgroup2` mount; in a hybrid layout it sits beside the v1 hierarchies.
    fn v2_root() -> PathBuf {
        let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        text.lines()
            .filter_map(parse_mountinfo_line)
            .find(|(_, fs_type, _)| *fs_type == "cgroup2")
            .map(|(mount, _, _)| mount)
            .expect("a cgroup2 hierarchy is mounted on this host")
    }

    /// Starts `sh -c script` held at a gate, attaches it, then opens the gate, so everything the
    /// script does happens inside the cgroup.
    fn run_inside(cgroup: &JobCgroup, script: &str) -> Child {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _gate; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        cgroup.attach(child.id() as i32).expect("attach");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("open the gate");
        child
    }

    fn wait(mut child: Child, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .expect("stderr")
                    .read_to_string(&mut stderr)
                    .expect("read stderr");
                return (status, stderr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("child still running after {limit:?}");
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn hog(cgroup: &JobCgroup) -> ExitStatus {
        // tail keeps a whole "line" of 100 MiB of zeros in memory.
        wait(
            run_inside(cgroup, "head -c 100M /dev/zero | tail > /dev/null"),
            Duration::from_secs(30),
        )
        .0
    }

    #[test]
    fn memory_limit_gets_the_hog_oom_killed_and_counted() {
        let layout = host();
        let parent = Parent::new(layout, "oom");
        let probe = probe_in(layout, &parent.name);
        assert!(probe.has("memory"), "{probe:?}");

        let roomy = Limits {
            memory_bytes: Some(256 * MIB),
            ..Limits::default()
        };
        let control = JobCgroup::create_in(layout, &parent.name, "roomy", &roomy).expect("create");
        assert!(hog(&control).success(), "100 MiB must fit in 256 MiB");
        assert_eq!(control.counters().oom_kills, 0);
        assert!(
            control.counters().memory_peak_bytes.unwrap_or(0) >= 100 * MIB,
            "{:?}",
            control.counters()
        );
        control.remove().expect("remove");

        let tight = Limits {
            memory_bytes: Some(32 * MIB),
            ..Limits::default()
        };
        let cgroup = JobCgroup::create_in(layout, &parent.name, "tight", &tight).expect("create");
        let limit_file = match layout.version() {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        let memory_dir = cgroup.dir_of("memory").expect("memory dir").to_path_buf();
        assert_eq!(read_u64(&memory_dir.join(limit_file)), Some(32 * MIB));
        let status = hog(&cgroup);
        assert!(
            !status.success(),
            "the hog survived a 32 MiB limit: {status:?}"
        );
        let counters = cgroup.counters();
        assert!(counters.oom_kills >= 1, "{counters:?}");
        assert!(
            counters.memory_peak_bytes.unwrap_or(u64::MAX) <= 32 * MIB,
            "{counters:?}"
        );
        cgroup.remove().expect("remove");
        assert!(!memory_dir.exists());
    }

    #[test]
    fn pids_limit_refuses_forks_and_kill_all_then_remove_leaves_nothing() {
        let layout = host();
        let parent = Parent::new(layout, "pids");
        let limits = Limits {
            max_pids: Some(8),
            ..Limits::default()
        };
        let cgroup = JobCgroup::create_in(layout, &parent.name, "job", &limits).expect("create");
        let pids_dir = cgroup.dir_of("pids").expect("pids dir").to_path_buf();
        assert_eq!(
            fs::read_to_string(pids_dir.join("pids.max"))
                .expect("pids.max")
                .trim(),
            "8"
        );

        let script = "i=0; while [ $i -lt 30 ]; do sleep 60 >/dev/null 2>&1 & i=$((i+1)); done; echo all forked";
        let (status, stderr) = wait(run_inside(&cgroup, script), Duration::from_secs(10));
        assert!(
            !status.success(),
            "30 forks succeeded under pids.max 8 ({stderr})"
        );
        assert!(stderr.to_lowercase().contains("fork"), "{stderr}");
        assert!(cgroup.counters().pids_hits >= 1, "{:?}", cgroup.counters());

        // The shell is gone; the sleeps it left behind are still found through the cgroup.
        let left = cgroup.procs();
        assert!(!left.is_empty() && left.len() <= 8, "{left:?}");
        cgroup.kill_all();
        assert_eq!(cgroup.procs(), Vec::<i32>::new());
        for pid in &left {
            assert!(
                !Path::new(&format!("/proc/{pid}/cgroup")).exists() || !cgroup.is_member(*pid),
                "{pid} survived"
            );
        }

        let dirs: Vec<PathBuf> = cgroup.dirs().into_iter().map(Path::to_path_buf).collect();
        assert_eq!(
            dirs.len(),
            if layout.version() == Version::V1 {
                3
            } else {
                1
            }
        );
        cgroup.remove().expect("remove");
        for dir in dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }

    #[test]
    fn remove_and_drop_kill_what_is_left() {
        let layout = host();
        let parent = Parent::new(layout, "drop");
        let cgroup =
            JobCgroup::create_in(layout, &parent.name, "job", &Limits::default()).expect("create");
        let child = run_inside(&cgroup, "sleep 60 & sleep 60");
        sleep(Duration::from_millis(100));
        assert_eq!(cgroup.procs().len(), 3, "{:?}", cgroup.procs());
        let dirs: Vec<PathBuf> = cgroup.dirs().into_iter().map(Path::to_path_buf).collect();
        drop(cgroup);
        let (status, _) = wait(child, Duration::from_secs(5));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        for dir in dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }

    /// ns-init is forked from the supervisor holding the JobCgroup; its copy must not tear the
    /// job down if it ever drops it.
    #[test]
    fn a_forked_copy_dropping_the_cgroup_leaves_it_alone() {
        let layout = host();
        let parent = Parent::new(layout, "fork");
        let cgroup =
            JobCgroup::create_in(layout, &parent.name, "job", &Limits::default()).expect("create");
        let sleeper = run_inside(&cgroup, "sleep 60");
        // SAFETY: the child only drops its bitwise copy (getpid, then frees memory) and _exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                // SAFETY: the child's copy is the only one in its address space.
                drop(unsafe { std::ptr::read(&cgroup) });
                // SAFETY: _exit skips the parent's atexit handlers and destructors.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).expect("waitpid");
            }
        }
        for dir in cgroup.dirs() {
            assert!(dir.is_dir(), "{} removed by the fork's copy", dir.display());
        }
        assert!(
            cgroup.procs().contains(&(sleeper.id() as i32)),
            "the job was killed"
        );
        cgroup.remove().expect("remove");
        let (status, _) = wait(sleeper, Duration::from_secs(5));
        assert!(!status.success());
    }

    #[test]
    fn cpu_quota_is_written_and_throttles() {
        let layout = host();
        let parent = Parent::new(layout, "cpu");
        let limits = Limits {
            cpu_millis: Some(100),
            ..Limits::default()
        };
        let cgroup = JobCgroup::create_in(layout, &parent.name, "job", &limits).expect("create");
        let dir = cgroup.dir_of("cpu").expect("cpu dir");
        match layout.version() {
            Version::V1 => {
                assert_eq!(read_u64(&dir.join("cpu.cfs_period_us")), Some(100_000));
                assert_eq!(read_u64(&dir.join("cpu.cfs_quota_us")), Some(10_000));
            }
            Version::V2 => assert_eq!(
                fs::read_to_string(dir.join("cpu.max"))
                    .expect("cpu.max")
                    .trim(),
                "10000 100000"
            ),
        }
        let spin = run_inside(
            &cgroup,
            // ~0.1 s of CPU in one process: far more than one 10 ms quota of a 100 ms period.
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
        );
        wait(spin, Duration::from_secs(10));
        assert!(
            cgroup.counters().cpu_throttled_periods >= 1,
            "{:?}",
            cgroup.counters()
        );
        cgroup.remove().expect("remove");
    }

    #[test]
    fn probe_creates_the_parent_and_reports_the_controllers() {
        let layout = host();
        let parent = Parent::new(layout, "probe");
        let nested = format!("{}/inner", parent.name);
        let probe = probe_in(layout, &nested);
        assert_eq!(probe.version, Some(layout.version()));
        assert_eq!(probe.controllers, CONTROLLERS.to_vec(), "{probe:?}");
        for (dir, _) in layout.dirs(Path::new(&nested)) {
            assert!(dir.is_dir(), "{}", dir.display());
        }
        assert!(probe_in(layout, "../escape").problems[0].contains("'..'"));
    }

    const DELEGATED_PARENT_ENV: &str = "AGENTD_TEST_DELEGATED_CGROUP_PARENT";
    const NOBODY: u32 = 65534;

    /// What an operator does for a non-root agentd (README, "Running without root"): a parent
    /// owned by agentd's user. Then the whole life of a job cgroup as that user, in a child.
    #[test]
    fn an_unprivileged_user_works_in_a_delegated_parent() {
        use std::os::unix::process::CommandExt;
        let layout = host();
        let parent = Parent::new(layout, "delegated");
        for (dir, _) in layout.dirs(Path::new(&parent.name)) {
            for file in [
                "",
                "cgroup.procs",
                "tasks",
                "cgroup.subtree_control",
                "cgroup.threads",
            ] {
                let path = dir.join(file);
                if path.exists() {
                    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
                }
            }
        }
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "runner::jail::cgroup::tests::delegated_user_side",
                "--include-ignored",
                "--nocapture",
            ])
            .env(DELEGATED_PARENT_ENV, &parent.name)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("run the test binary as nobody");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{stderr}"
        );
    }

    /// The unprivileged half of [`an_unprivileged_user_works_in_a_delegated_parent`].
    #[test]
    #[ignore = "run as uid 65534 by an_unprivileged_user_works_in_a_delegated_parent"]
    fn delegated_user_side() {
        let parent = std::env::var(DELEGATED_PARENT_ENV)
            .expect("started by an_unprivileged_user_works_in_a_delegated_parent");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, NOBODY);
        let probe = probe(&parent);
        assert_eq!(probe.controllers, CONTROLLERS.to_vec(), "{probe:?}");

        let outside = JobCgroup::create("", "agentd-unit-not-delegated", &Limits::default())
            .expect_err("refused");
        assert!(outside.contains("EACCES"), "{outside}");

        let limits = Limits {
            memory_bytes: Some(32 * MIB),
            max_pids: Some(8),
            cpu_millis: Some(500),
        };
        let cgroup = JobCgroup::create(&parent, "job", &limits).expect("create as nobody");
        assert!(!hog(&cgroup).success());
        assert!(cgroup.counters().oom_kills >= 1, "{:?}", cgroup.counters());
        let child = run_inside(&cgroup, "sleep 60 >/dev/null 2>&1 & sleep 60");
        sleep(Duration::from_millis(100));
        assert_eq!(cgroup.procs().len(), 3);
        let dirs: Vec<PathBuf> = cgroup.dirs().into_iter().map(Path::to_path_buf).collect();
        cgroup.remove().expect("remove as nobody");
        wait(child, Duration::from_secs(5));
        for dir in dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }

    const V2_DELEGATED_ENV: &str = "AGENTD_TEST_V2_DELEGATED_SUBTREE";

    /// The v2 delegation of README "Running without root" on the real cgroup2: a subtree
    /// `<d>/` handed to uid 65534, which runs in `<d>/main` and puts jobs in `<d>/jobs`; a parent
    /// outside that subtree is refused when a process is moved (the common-ancestor rule).
    #[test]
    fn v2_delegated_subtree_works_for_an_unprivileged_user() {
        let root = v2_root();
        let layout = Layout::V2(root.clone());
        let subtree = Parent::new(&layout, "v2-delegated");
        let outside = Parent::new(&layout, "v2-outside");
        let main = root.join(&subtree.name).join("main");
        fs::create_dir(&main).expect("mkdir main");
        for dir in [
            root.join(&subtree.name),
            main.clone(),
            root.join(&outside.name),
        ] {
            for file in [
                "",
                "cgroup.procs",
                "cgroup.subtree_control",
                "cgroup.threads",
            ] {
                std::os::unix::fs::chown(dir.join(file), Some(NOBODY), Some(NOBODY))
                    .expect("chown");
            }
        }
        // Into <d>/main as root, then nobody for the rest, as an operator's start script does.
        let test_binary = std::env::current_exe().expect("test binary");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec setpriv --reuid={NOBODY} --regid={NOBODY} \
                 --clear-groups \"$0\" --exact runner::jail::cgroup::tests::v2_delegated_side \
                 --include-ignored --nocapture",
                main.display()
            ))
            .arg(&test_binary)
            .env(
                V2_DELEGATED_ENV,
                format!("{}\n{}", subtree.name, outside.name),
            )
            .output()
            .expect("run the test binary as nobody");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{stderr}"
        );
        let _ = fs::remove_dir(&main);
    }

    /// The unprivileged half of [`v2_delegated_subtree_works_for_an_unprivileged_user`].
    #[test]
    #[ignore = "run as uid 65534 by v2_delegated_subtree_works_for_an_unprivileged_user"]
    fn v2_delegated_side() {
        let names = std::env::var(V2_DELEGATED_ENV)
            .expect("started by v2_delegated_subtree_works_for_an_unprivileged_user");
        let (subtree, outside) = names.split_once('\n').expect("two names");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, NOBODY);
        let layout = Layout::V2(v2_root());
        let jobs = format!("{subtree}/jobs");
        let probe = probe_in(&layout, &jobs);
        assert_eq!(probe.version, Some(Version::V2));
        assert!(v2_root().join(&jobs).is_dir(), "{probe:?}");

        let cgroup = JobCgroup::create_in(&layout, &jobs, "job", &Limits::default())
            .expect("create as nobody");
        let child = run_inside(&cgroup, "sleep 60");
        assert_eq!(cgroup.procs(), vec![child.id() as i32]);
        cgroup.kill_all();
        wait(child, Duration::from_secs(5));
        cgroup.remove().expect("remove as nobody");

        probe_in(&layout, &format!("{outside}/jobs"));
        let elsewhere = JobCgroup::create_in(
            &layout,
            &format!("{outside}/jobs"),
            "job",
            &Limits::default(),
        )
        .expect("creating is allowed: the directory is nobody's");
        let mut sleeper = Command::new("sleep").arg("60").spawn().expect("spawn");
        let refused = elsewhere
            .attach(sleeper.id() as i32)
            .expect_err("moving is not");
        assert!(refused.contains("EACCES"), "{refused}");
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        elsewhere.remove().expect("remove");
    }

    /// The v2 path against the real kernel: this host's cgroup2 carries no memory/pids/cpu (they
    /// are bound to v1), but directories, cgroup.procs, cgroup.kill and rmdir are the real thing.
    #[test]
    fn v2_hierarchy_creates_attaches_kills_and_removes() {
        let layout = Layout::V2(v2_root());
        let parent = Parent::new(&layout, "v2");
        let probe = probe_in(&layout, &parent.name);
        assert_eq!(probe.version, Some(Version::V2));
        let parent_dir = v2_root().join(&parent.name);
        let enabled = read_words(&parent_dir.join("cgroup.subtree_control"));
        for c in &probe.controllers {
            assert!(
                enabled.contains(c),
                "{c} reported but not enabled: {probe:?}"
            );
        }

        let want_memory = Limits {
            memory_bytes: Some(32 * MIB),
            ..Limits::default()
        };
        match JobCgroup::create_in(&layout, &parent.name, "limited", &want_memory) {
            Ok(cgroup) => {
                assert!(probe.has("memory"));
                let dir = cgroup.dir_of("memory").expect("memory dir");
                assert_eq!(read_u64(&dir.join("memory.max")), Some(32 * MIB));
            }
            Err(e) => {
                assert!(!probe.has("memory"), "{e}");
                assert!(
                    e.contains("memory") && e.contains("cgroup.subtree_control"),
                    "{e}"
                );
                assert!(
                    !parent_dir.join("limited").exists(),
                    "a refused create left its directory"
                );
            }
        }

        let cgroup =
            JobCgroup::create_in(&layout, &parent.name, "job", &Limits::default()).expect("create");
        assert_eq!(cgroup.dirs(), vec![parent_dir.join("job").as_path()]);
        let child = run_inside(&cgroup, "sleep 60 & sleep 60");
        sleep(Duration::from_millis(100));
        let procs = cgroup.procs();
        assert_eq!(procs.len(), 3, "{procs:?}");
        assert!(procs.contains(&(child.id() as i32)));
        assert!(cgroup.is_member(child.id() as i32));
        cgroup.kill_all();
        assert_eq!(cgroup.procs(), Vec::<i32>::new());
        let (status, _) = wait(child, Duration::from_secs(5));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        cgroup.remove().expect("remove");
        assert!(!parent_dir.join("job").exists());
    }

    /// v2 file selection on a plain directory tree standing in for a cgroup.
    #[test]
    fn v2_counters_read_the_v2_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("job");
        fs::create_dir(&dir).expect("mkdir");
        let files = [
            (
                "memory.events",
                "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n",
            ),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("pids.events", "max 5\n"),
            (
                "cpu.stat",
                "usage_usec 100\nnr_periods 10\nnr_throttled 4\nthrottled_usec 9\n",
            ),
            // v1 names, which a v2 group must not read.
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 99\n",
            ),
            ("memory.usage_in_bytes", "1\n"),
        ];
        for (name, text) in files {
            fs::write(dir.join(name), text).expect("write");
        }
        let all = CONTROLLERS.iter().map(|c| c.to_string()).collect();
        let mut cgroup = JobCgroup {
            version: Version::V2,
            dirs: vec![(dir.clone(), all)],
            removed: false,
            owner: std::process::id(),
        };
        assert_eq!(
            cgroup.counters(),
            Counters {
                oom_kills: 2,
                pids_hits: 5,
                memory_bytes: 4096,
                memory_peak_bytes: Some(8192),
                cpu_throttled_periods: 4,
            }
        );
        cgroup.removed = true;
    }

    #[test]
    fn limit_files_per_version() {
        let limits = Limits {
            memory_bytes: Some(64 * MIB),
            max_pids: Some(100),
            cpu_millis: Some(1500),
        };
        let v1: Vec<(&str, &str, bool)> = limit_files(Version::V1, &limits)
            .iter()
            .map(|s| (s.file, leak(&s.value), s.optional))
            .collect();
        assert_eq!(
            v1,
            vec![
                ("memory.limit_in_bytes", "67108864", false),
                ("memory.memsw.limit_in_bytes", "67108864", true),
                ("pids.max", "100", false),
                ("cpu.cfs_period_us", "100000", false),
                ("cpu.cfs_quota_us", "150000", false),
            ]
        );
        let v2: Vec<(&str, &str, bool)> = limit_files(Version::V2, &limits)
            .iter()
            .map(|s| (s.file, leak(&s.value), s.optional))
            .collect();
        assert_eq!(
            v2,
            vec![
                ("memory.max", "67108864", false),
                ("memory.swap.max", "0", true),
                ("pids.max", "100", false),
                ("cpu.max", "150000 100000", false),
            ]
        );
        let tiny = Limits {
            cpu_millis: Some(1),
            ..Limits::default()
        };
        assert_eq!(limit_files(Version::V2, &tiny)[0].value, "1000 100000");
        assert!(limit_files(Version::V1, &Limits::default()).is_empty());
    }

    fn leak(s: &str) -> &'static str {
        Box::leak(s.to_string().into_boxed_str())
    }

    #[test]
    fn layouts_from_mountinfo() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let layout = Layout::from_mountinfo(hybrid).expect("layout");
        assert_eq!(
            layout,
            Layout::V1(vec![
                ("memory".into(), "/sys/fs/cgroup/memory".into()),
                ("pids".into(), "/sys/fs/cgroup/pids".into()),
                ("cpu".into(), "/sys/fs/cgroup/cpu,cpuacct".into()),
            ])
        );
        assert_eq!(layout.dirs(Path::new("agentd")).len(), 3);

        let unified = "\
25 1 0:23 / /run/other rw - cgroup2 cgroup2 rw
26 1 0:24 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        let layout = Layout::from_mountinfo(unified).expect("layout");
        assert_eq!(layout, Layout::V2("/sys/fs/cgroup".into()));
        assert_eq!(
            layout.dirs(Path::new("a/b")),
            vec![(PathBuf::from("/sys/fs/cgroup/a/b"), vec![])]
        );

        let escaped = "26 1 0:24 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            Layout::from_mountinfo(escaped),
            Some(Layout::V2("/mnt/my cgroups".into()))
        );
        assert_eq!(
            Layout::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
    }

    #[test]
    fn names_and_parents_stay_inside_the_hierarchy() {
        for bad in ["", ".", "..", "a/b", "../x", "x\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("run-0192-abc").expect("plain name");
        for bad in ["..", "a/../b", "x\0"] {
            assert!(relative_parent(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            relative_parent("/system.slice/agentd.service/jobs"),
            Ok(PathBuf::from("system.slice/agentd.service/jobs"))
        );
        let layout = host();
        let err = JobCgroup::create_in(layout, "agentd", "../../etc", &Limits::default())
            .expect_err("refused");
        assert!(err.contains("one path component"), "{err}");
    }

    #[test]
    fn flat_keyed_files_parse() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_key(oom_control, "oom_kill"), Some(7));
        assert_eq!(parse_key(oom_control, "oom"), None);
        assert_eq!(parse_key("max 3\n", "max"), Some(3));
    }

    #[test]
    fn errors_name_the_file_and_the_errno() {
        let err =
            write_file(Path::new("/nonexistent-dir/cgroup.procs"), "1").expect_err("no such file");
        assert_eq!(
            err,
            "open /nonexistent-dir/cgroup.procs: ENOENT (No such file or directory)"
        );
    }
}
