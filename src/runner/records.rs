//! Run records: what lets a restarted agentd kill what a dead one left running, and keeps two
//! agentd processes off one data dir.
//!
//! Every contained agent's supervisor carries a fresh token in [`RUN_TOKEN_ENV`], which the agent
//! and everything it starts inherit (jobs cannot set `AGENTD_*` names, so they cannot forge or
//! clear it). Before it starts the agent, the supervisor writes `<data_dir>/run/<token>.run` with
//! its pid (also its process group) and start time, and removes it once the whole tree is gone.
//! A record that is still there belongs to a tree that may still be alive: when the PID-namespace
//! mode is not available, a SIGKILLed agentd takes down only the supervisor and the agent, and
//! processes that left the agent's process group (`setsid`, daemons) survive.
//!
//! At start-up, before the store opens, [`claim`] takes `<data_dir>/run/.lock` (an `flock`, so a
//! second agentd on the same data dir is refused and a crashed one never leaves it stale) and
//! sweeps: it SIGKILLs each recorded process group whose leader is still the recorded process
//! (same start time, so a recycled pid is left alone) and every process whose environment
//! (`/proc/<pid>/environ`) carries a recorded token, until none is left, then removes the records.
//! A process that wiped its own environment and left the recorded group escapes the sweep.
//!
//! Everything here is blocking file and /proc work: call it from `spawn_blocking` or from the
//! synchronous supervisor.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The marker every process of a contained job inherits.
pub const RUN_TOKEN_ENV: &str = "AGENTD_RUN_TOKEN";

const LOCK_FILE: &str = ".lock";
const RECORD_EXT: &str = "run";
/// How long a sweep keeps killing marked processes (ones that fork while being killed) before it
/// gives up (a process in uninterruptible sleep cannot die).
const SWEEP_LIMIT: Duration = Duration::from_secs(10);
/// How long a start waits for a lock held past its holder's death (see [`lock_file`]).
const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(3);

/// The directory of run records and the lock, under a data dir.
pub fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

fn record_path(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("{token}.{RECORD_EXT}"))
}

/// A new token: it names a record file and marks environments, so only `[0-9a-f]`.
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The data dir's lock, held for as long as the server runs (released when dropped or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct RunLock {
    _lock: Flock<File>,
}

/// What a start-up sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Records left by a previous run.
    pub records: usize,
    /// Processes killed.
    pub killed: usize,
}

/// The record of `token` in `dir` when its process is still the recorded one.
pub fn live_record(dir: &Path, token: &str) -> Option<Record> {
    std::fs::read_to_string(record_path(dir, token))
        .ok()
        .and_then(|s| Record::parse(&s))
        .filter(Record::still_running)
}

/// Takes the data dir's lock, then kills whatever a previous run of agentd left behind.
pub fn claim(data_dir: &Path, cgroup_parent: Option<&str>) -> Result<(RunLock, Swept)> {
    claim_keeping(data_dir, cgroup_parent, false)
}

/// As [`claim`]; with `adoptable`, a live supervisor that listens for adoption (issue #23) is
/// left running, with its record, for agentd to adopt once the store is open.
pub fn claim_keeping(
    data_dir: &Path,
    cgroup_parent: Option<&str>,
    adoptable: bool,
) -> Result<(RunLock, Swept)> {
    let dir = run_dir(data_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    let lock_path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", lock_path.display())))?;
    let mut lock = lock_file(file, &lock_path, data_dir)?;
    // For the message a second agentd shows; the lock itself is the flock.
    let _ = lock.set_len(0);
    let _ = lock.rewind();
    let _ = write!(lock, "{}", std::process::id());
    let swept = sweep(&dir, cgroup_parent, adoptable);
    Ok((RunLock { _lock: lock }, swept))
}

/// Takes the lock on `file`. A lock whose recorded holder is alive belongs to another agentd and
/// is refused at once; one whose holder is dead is waited for (up to [`DEAD_HOLDER_GRACE`]): a
/// child the dead agentd was starting shares its open lock file until its `execve` closes it, so
/// a restart right after a kill -9 could otherwise be refused.
fn lock_file(mut file: File, lock_path: &Path, data_dir: &Path) -> Result<Flock<File>> {
    let waited_since = Instant::now();
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((held, Errno::EWOULDBLOCK)) => {
                file = held;
                let holder = holder_of(&mut file);
                let dead = holder.is_some_and(|pid| {
                    pid != std::process::id() as i32
                        && kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
                });
                if dead && waited_since.elapsed() < DEAD_HOLDER_GRACE {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                return Err(Error::internal(format!(
                    "another agentd (pid {}) is using the data dir {}: {} is locked",
                    holder.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                    data_dir.display(),
                    lock_path.display()
                )));
            }
            Err((_, e)) => {
                return Err(Error::internal(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
    }
}

/// The pid the lock's holder wrote into it.
fn holder_of(file: &mut File) -> Option<i32> {
    let mut holder = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut holder).ok()?;
    holder.trim().parse().ok().filter(|pid| *pid > 0)
}

/// Kills what the records in `dir` describe and removes them; with `adoptable`, leaves alone
/// the live supervisors that wait for adoption.
fn sweep(dir: &Path, cgroup_parent: Option<&str>, adoptable: bool) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return swept;
    };
    let mut tokens = HashSet::new();
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(token) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(&format!(".{RECORD_EXT}")))
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            continue;
        };
        let rec = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| Record::parse(&s))
            .filter(Record::still_running);
        if adoptable && rec.is_some() && super::supervise::spool::socket_path(dir, token).exists() {
            continue;
        }
        tokens.insert(token.to_owned());
        if let Some(rec) = rec {
            let _ = killpg(Pid::from_raw(rec.pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(rec.pid), Signal::SIGKILL);
            swept.killed += 1;
        }
        files.push(path);
    }
    swept.records = files.len();
    if !tokens.is_empty() {
        swept.killed += kill_marked(&tokens);
    }
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    for token in &tokens {
        remove_jail_leftovers(dir, token, cgroup_parent);
    }
    swept
}

/// What a jailed job's supervisor removes itself unless it was killed: the empty directory its
/// jail's root was mounted on (the mount died with the job's mount namespace) and its cgroup.
fn remove_jail_leftovers(dir: &Path, token: &str, cgroup_parent: Option<&str>) {
    let _ = std::fs::remove_dir(dir.join(format!("{token}.root")));
    if let Some(parent) = cgroup_parent {
        super::jail::cgroup::remove_stale(parent, token);
    }
}

/// After a job's supervisor died without cleaning up (it was SIGKILLed): kills what still carries
/// its token and removes its record. A no-op when the supervisor removed the record itself.
pub fn sweep_one(dir: &Path, token: &str, cgroup_parent: Option<&str>) -> usize {
    let path = record_path(dir, token);
    if !path.exists() {
        return 0;
    }
    let killed = kill_marked(&HashSet::from([token.to_owned()]));
    let _ = std::fs::remove_file(path);
    remove_jail_leftovers(dir, token, cgroup_parent);
    // Its output journal and adoption socket: this agentd ran the job (or never gave it one, a
    // standby), so no later one adopts it.
    let _ = std::fs::remove_file(super::supervise::spool::journal_path(dir, token));
    let _ = std::fs::remove_file(super::supervise::spool::socket_path(dir, token));
    killed
}

/// SIGKILLs every live process whose environment carries one of `tokens`, rescanning until none
/// is left (a process may fork while the scan runs). Returns how many were killed.
fn kill_marked(tokens: &HashSet<String>) -> usize {
    let me = std::process::id() as i32;
    let started = Instant::now();
    let mut killed = HashSet::new();
    loop {
        let marked = marked_processes(tokens, me);
        if marked.is_empty() || started.elapsed() > SWEEP_LIMIT {
            return killed.len();
        }
        for pid in marked {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pids `/proc` lists (none when it cannot be read); each may be gone by the time it is read.
pub(crate) fn proc_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Live processes (not zombies, whose environ reads empty) carrying one of `tokens`.
fn marked_processes(tokens: &HashSet<String>, skip: i32) -> Vec<i32> {
    let prefix = format!("{RUN_TOKEN_ENV}=");
    let mut out = Vec::new();
    for pid in proc_pids() {
        if pid == skip {
            continue;
        }
        // Gone already, or not ours to read: skip it.
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let carries = environ.split(|b| *b == 0).any(|var| {
            var.strip_prefix(prefix.as_bytes())
                .and_then(|t| std::str::from_utf8(t).ok())
                .is_some_and(|t| tokens.contains(t))
        });
        if carries {
            out.push(pid);
        }
    }
    out
}

/// What the supervisor records about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The supervisor's pid, which is also its process group.
    pub pid: i32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

impl Record {
    fn render(&self) -> String {
        format!(
            "pid={}\npgid={}\nstart={}\n",
            self.pid, self.pid, self.start
        )
    }

    fn parse(s: &str) -> Option<Record> {
        let mut pid = None;
        let mut start = None;
        for line in s.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => pid = v.parse().ok(),
                Some(("start", v)) => start = v.parse().ok(),
                _ => {}
            }
        }
        Some(Record {
            pid: pid.filter(|p| *p > 0)?,
            start: start?,
        })
    }

    /// Whether the recorded process still exists and is the one recorded (not a recycled pid).
    pub fn still_running(&self) -> bool {
        start_time(self.pid).is_some_and(|s| s == self.start)
    }
}

/// A process's start time from `/proc/<pid>/stat` ("pid (comm) state ppid ..."; comm may contain
/// spaces and parentheses, so fields are counted after the last ')').
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 22)?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/<pid>/stat` line.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields 1 and 2 (pid, comm) end at the ')'.
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// The supervisor's side: writes its record when the environment asks for one.
pub struct OwnRecord {
    path: PathBuf,
}

impl OwnRecord {
    /// Writes `<dir>/<RUN_TOKEN_ENV>.run` for this process. `Ok(None)` without a run dir or a
    /// marker (the runner's own tests run supervisors without records).
    pub fn write(dir: Option<&Path>) -> std::result::Result<Option<OwnRecord>, String> {
        let (Some(dir), Some(token)) = (dir, std::env::var(RUN_TOKEN_ENV).ok()) else {
            return Ok(None);
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{RUN_TOKEN_ENV} must be hex digits"));
        }
        let pid = std::process::id() as i32;
        let start = start_time(pid).ok_or("cannot read this process's start time")?;
        let path = record_path(dir, &token);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot write the run record {}: {e}", path.display()))?;
        f.write_all(Record { pid, start }.render().as_bytes())
            .map_err(|e| format!("cannot write the run record {}: {e}", path.display()))?;
        Ok(Some(OwnRecord { path }))
    }

    /// Called once the whole tree is gone.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a) b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 2";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 4), Some("7"));
        assert_eq!(stat_field(stat, 22), Some("98765"));
        assert_eq!(stat_field("garbage", 4), None);
        assert!(start_time(std::process::id() as i32).is_some());
    }

    /// What a SIGKILLed supervisor (a standby, or a job's) leaves in the run dir: its record,
    /// jail root, output journal and adoption socket. Its own agentd's sweep removes them all.
    #[test]
    fn sweeping_a_dead_supervisor_leaves_nothing_in_the_run_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = "00112233445566778899aabbccddeeff";
        let dead = Record {
            pid: i32::MAX - 1,
            start: 1,
        };
        std::fs::write(record_path(dir.path(), token), dead.render()).expect("record");
        std::fs::create_dir(dir.path().join(format!("{token}.root"))).expect("root");
        std::fs::write(
            super::super::supervise::spool::journal_path(dir.path(), token),
            b"j",
        )
        .expect("journal");
        let _socket = std::os::unix::net::UnixListener::bind(
            super::super::supervise::spool::socket_path(dir.path(), token),
        )
        .expect("socket");
        sweep_one(dir.path(), token, None);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = Record {
            pid: 12,
            start: 345,
        };
        assert_eq!(Record::parse(&r.render()), Some(r));
        assert_eq!(Record::parse("pid=0\nstart=1\n"), None);
        assert_eq!(Record::parse("start=1\n"), None);
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn a_recycled_pid_is_not_the_recorded_process() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(Record { pid: me, start }.still_running());
        assert!(
            !Record {
                pid: me,
                start: start + 1
            }
            .still_running()
        );
    }

    #[test]
    fn a_second_claim_on_the_same_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, swept) = claim(dir.path(), None).unwrap();
        assert_eq!(swept, Swept::default());
        let err = claim(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("another agentd"), "{err}");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(lock);
        claim(dir.path(), None).expect("free again once the holder is gone");
    }

    /// A restart right after a kill -9 finds the lock held for a moment by a child the dead
    /// agentd was starting (between fork and exec it shares the lock file): it waits for it
    /// instead of refusing to start.
    #[test]
    fn a_lock_outliving_its_dead_holder_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        drop(claim(dir.path(), None).unwrap());
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        let dead = exited.id();
        exited.wait().unwrap();
        let path = run_dir(dir.path()).join(LOCK_FILE);
        std::fs::write(&path, dead.to_string()).unwrap();
        let child_copy = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(child_copy);
        });
        let (lock, _) = claim(dir.path(), None).expect("waited for the dead holder's lock");
        release.join().unwrap();
        drop(lock);
    }
}
