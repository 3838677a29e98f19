//! The supervisor's watch over a jailed job's limits: on every tick it reads the job's cgroup
//! counters, the free space of its `/tmp` and (less often) the size of its workspace, and writes
//! a [`Notice`] for each limit that was hit. Memory and process limits are enforced by the
//! kernel (the OOM killer, a refused fork); `/tmp` by its tmpfs size; the workspace cap by a
//! per-file size limit and, for the total of the workspace and the private HOME (bytes, and
//! entries: each is held in memory by the job's snapshots), by stopping the job here, as for a
//! path longer than `MAX_PATH_BYTES` (which no client can name, and which costs agentd's walks
//! memory for each level at each level below it).

use super::cgroup::JobCgroup;
use super::{JailSpec, Notice, TreeEnd, Word};
use crate::domain::FileKind;
use crate::workspace::MAX_PATH_BYTES;
use crate::workspace::fsops;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the supervisor looks (its SIGALRM interval).
pub const TICK: Duration = Duration::from_millis(250);
/// The workspace is measured this often (a walk of the tree)...
const WORKSPACE_EVERY: Duration = Duration::from_secs(1);
/// ...or, for a tree whose walk takes long, so that walking takes at most a tenth of the time:
/// 200,000 entries take a few hundred ms to walk, and the supervisor's CPU is outside the job's
/// quota.
const WORKSPACE_SHARE: u32 = 10;
/// A limit hit again within this long is not reported again.
const REPEAT_AFTER: Duration = Duration::from_secs(5);

const MIB: u64 = 1 << 20;

/// What the supervisor should do after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// A limit ended the job: kill the tree.
    Stop,
}

pub struct Watch {
    cgroup: Option<JobCgroup>,
    spec: JailSpec,
    /// The jail's `/tmp`, opened through ns-init's root.
    tmp: Option<std::fs::File>,
    out: Option<std::fs::File>,
    /// When the workspace is measured next.
    next_walk: Instant,
    oom_kills: u64,
    pids_hits: u64,
    last_pids_notice: Option<Instant>,
    tmp_full: bool,
    /// Processes of the job seen at the last tick (host pid → job pid and name), to name what the
    /// OOM killer took.
    seen: HashMap<i32, (i32, String)>,
    stopped: bool,
}

impl Watch {
    pub fn new(
        cgroup: Option<JobCgroup>,
        spec: JailSpec,
        tmp: Option<std::fs::File>,
        out: Option<std::fs::File>,
    ) -> Watch {
        Watch {
            cgroup,
            spec,
            tmp,
            out,
            next_walk: Instant::now() + WORKSPACE_EVERY,
            oom_kills: 0,
            pids_hits: 0,
            last_pids_notice: None,
            tmp_full: false,
            seen: HashMap::new(),
            stopped: false,
        }
    }

    pub fn tick(&mut self) -> Verdict {
        self.memory_and_pids();
        self.tmp();
        if !self.stopped && Instant::now() >= self.next_walk && self.workspace_over() {
            self.stopped = true;
            return Verdict::Stop;
        }
        Verdict::Continue
    }

    /// After the agent ended: a last look, and whether the memory limit is what ended it (the
    /// agent itself was killed while the OOM killer was at work).
    pub fn finish(&mut self, agent_killed: bool) {
        self.memory_and_pids();
        self.tmp();
        if agent_killed && self.oom_kills > 0 && !self.stopped {
            let limit = self.spec.limits.memory_bytes.unwrap_or(0) / MIB;
            self.notify(Notice::new(
                "memory",
                format!(
                    "memory limit exceeded: the agent was killed by the kernel's OOM killer \
                     (limit {limit} MiB)"
                ),
                true,
            ));
        }
    }

    /// Kills what is left in the cgroup and removes it.
    pub fn clean_up(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all();
            if let Err(e) = cg.remove() {
                let _ = writeln!(std::io::stderr(), "agentd: supervisor: {e}");
            }
        }
    }

    fn memory_and_pids(&mut self) {
        let Some(cg) = &self.cgroup else { return };
        let c = cg.counters();
        let alive: Vec<i32> = cg.procs();
        if c.oom_kills > self.oom_kills {
            let gone: Vec<String> = self
                .seen
                .iter()
                .filter(|(pid, _)| !alive.contains(pid))
                .map(|(_, (inner, name))| format!("process {inner} ({name})"))
                .collect();
            let limit = self.spec.limits.memory_bytes.unwrap_or(0) / MIB;
            let who = if gone.is_empty() {
                "a process".to_owned()
            } else {
                gone.join(", ")
            };
            self.oom_kills = c.oom_kills;
            self.notify(Notice::new(
                "memory",
                format!("memory: limit {limit} MiB reached; the kernel killed {who}"),
                false,
            ));
        }
        if c.pids_hits > self.pids_hits {
            let due = self
                .last_pids_notice
                .is_none_or(|at| at.elapsed() >= REPEAT_AFTER);
            if due {
                let limit = self.spec.limits.max_pids.unwrap_or(0);
                self.notify(Notice::new(
                    "pids",
                    format!(
                        "pids: limit {limit} reached; fork refused {} time(s)",
                        c.pids_hits
                    ),
                    false,
                ));
                self.last_pids_notice = Some(Instant::now());
                self.pids_hits = c.pids_hits;
            }
        }
        // Only worth naming processes when the OOM killer may come.
        let near = self
            .spec
            .limits
            .memory_bytes
            .is_some_and(|max| c.memory_bytes * 2 >= max);
        if near {
            self.seen = alive
                .into_iter()
                .filter_map(|pid| Some((pid, describe(pid)?)))
                .collect();
        }
    }

    /// Something wrote to the job's `/tmp`.
    pub fn tmp_written(&mut self) {
        self.tmp();
    }

    fn tmp(&mut self) {
        let Some(st) = self
            .tmp
            .as_ref()
            .and_then(|f| nix::sys::statvfs::fstatvfs(f).ok())
        else {
            return;
        };
        let total = st.blocks();
        let free = st.blocks_available();
        if total == 0 {
            return;
        }
        if free == 0 && !self.tmp_full {
            self.tmp_full = true;
            let size = self.spec.limits.tmp_bytes / MIB;
            self.notify(Notice::new(
                "tmp",
                format!("tmp: /tmp is full ({size} MiB); writes fail with ENOSPC"),
                false,
            ));
        } else if free * 10 > total {
            self.tmp_full = false;
        }
    }

    fn workspace_over(&mut self) -> bool {
        let limits = self.spec.limits;
        // The private HOME lasts as long as the session, like the workspace: left out, it would
        // let a job fill the host's disk (and the store's) past any cap.
        let began = Instant::now();
        let used = disk_usage(&self.spec.workspace).plus(disk_usage(&self.spec.home));
        self.next_walk = Instant::now() + WORKSPACE_EVERY.max(began.elapsed() * WORKSPACE_SHARE);
        let over = if let Some(cap) = limits.workspace_bytes.filter(|&cap| used.bytes > cap) {
            format!(
                "{} MiB used of {} MiB (workspace and HOME)",
                used.bytes.div_ceil(MIB),
                cap / MIB
            )
        } else if let Some(cap) = limits.workspace_files.filter(|&cap| used.entries > cap) {
            format!(
                "{} files, directories and links of {cap} (workspace and HOME)",
                used.entries
            )
        } else if used.too_deep {
            // Nested this deep, no client could name it, and every walk of agentd's would pay
            // for each level again at every level below it.
            format!("a path longer than {MAX_PATH_BYTES} bytes (workspace and HOME)")
        } else {
            return false;
        };
        self.notify(Notice::new(
            "workspace",
            format!("workspace limit exceeded: {over}; the job was stopped"),
            true,
        ));
        true
    }

    /// Tells agentd how the tree ended and closes the channel: its end is the last word. Not
    /// journaled: an adopter learns the end from the spool.
    pub fn ended(&mut self, ended: TreeEnd) {
        if let Ok(mut line) = serde_json::to_vec(&Word::Ended { ended }) {
            line.push(b'\n');
            self.send(&line);
        }
        self.out = None;
    }

    fn notify(&mut self, notice: Notice) {
        let Ok(mut line) = serde_json::to_vec(&Word::Notice(notice)) else {
            return;
        };
        line.push(b'\n');
        // Kept for an adopter too, should agentd be gone (issue #23).
        crate::runner::supervise::spool::notice(&line);
        self.send(&line);
    }

    fn send(&mut self, line: &[u8]) {
        let Some(out) = &mut self.out else { return };
        // agentd may be gone; the job goes on regardless.
        if out.write_all(line).is_err() {
            self.out = None;
        }
    }
}

/// `(pid in the job's namespace, command name)` of a host pid.
fn describe(pid: i32) -> Option<(i32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut name = String::new();
    let mut inner = pid;
    for line in status.lines() {
        if let Some(n) = line.strip_prefix("Name:") {
            name = n.trim().to_owned();
        } else if let Some(ns) = line.strip_prefix("NSpid:") {
            inner = ns
                .split_whitespace()
                .last()
                .and_then(|p| p.parse().ok())
                .unwrap_or(pid);
        }
    }
    Some((inner, name))
}

/// What the entries under a directory take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes they take, or will when agentd copies them: a sparse file counts its full size,
    /// since the job's snapshots and downloads read and store every byte of it.
    pub bytes: u64,
    /// Files, directories and links, the directory itself left out.
    pub entries: u64,
    /// Some path is longer than [`MAX_PATH_BYTES`] (not walked below it).
    pub too_deep: bool,
}

impl Usage {
    fn plus(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes + other.bytes,
            entries: self.entries + other.entries,
            too_deep: self.too_deep || other.too_deep,
        }
    }
}

/// What the entries under `dir` take (not following symlinks). Walked through descriptors, as
/// agentd's own walks do: a path-based walk cannot reach past PATH_MAX, where a job could hide
/// what it writes. Like them, a non-root supervisor lends itself the owner's permissions on a
/// directory the job closed (`chmod 000`), which must not hide bytes either: the job can see that
/// mode changed for the moment the walk is inside it.
pub fn disk_usage(dir: &Path) -> Usage {
    let mut u = Usage::default();
    let Ok(Some(root)) = fsops::open_root(dir) else {
        return u;
    };
    let _ = fsops::walk_all(root, &mut |v| {
        let st = v.stat;
        let allocated = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
        let bytes = match fsops::kind_of(st) {
            Some(FileKind::Regular) => allocated.max(u64::try_from(st.st_size).unwrap_or(0)),
            _ => allocated,
        };
        u.bytes = u.bytes.saturating_add(bytes);
        u.entries += 1;
        u.too_deep |= v.too_deep;
        Ok(())
    });
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_counts_its_full_size_and_no_name_hides_a_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sparse = std::fs::File::create(tmp.path().join("sparse.bin")).expect("create");
        sparse.set_len(64 * MIB).expect("truncate");
        let hidden = format!("{}x", crate::workspace::TEMP_PREFIX);
        std::fs::create_dir(tmp.path().join("sub")).expect("mkdir");
        std::fs::write(tmp.path().join("sub").join(hidden), vec![1u8; 8192]).expect("write");
        let u = disk_usage(tmp.path());
        assert_eq!(u.entries, 3);
        assert!(u.bytes >= 64 * MIB + 8192, "{u:?}");
        assert!(!u.too_deep);
    }

    #[test]
    fn a_path_past_the_bound_is_found_through_descriptors() {
        let tmp = tempfile::tempdir().expect("tmp");
        // `aaaa/` × 1,000: 5,000 bytes, past PATH_MAX too (a path-based walk could not see it).
        let mut dir = nix::fcntl::open(tmp.path(), fsops::DIR_FLAGS, nix::sys::stat::Mode::empty())
            .expect("open");
        for _ in 0..1000 {
            nix::sys::stat::mkdirat(
                &dir,
                "aaaa",
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            )
            .expect("mkdir");
            dir = nix::fcntl::openat(
                &dir,
                "aaaa",
                fsops::DIR_FLAGS,
                nix::sys::stat::Mode::empty(),
            )
            .expect("open");
        }
        let u = disk_usage(tmp.path());
        assert!(u.too_deep, "{u:?}");
        // Not walked below the bound: 4096 / 5 levels, and the one past it.
        assert_eq!(u.entries, 820, "{u:?}");
    }
}
