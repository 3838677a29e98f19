//! agentd's side of adoption (issue #23; the supervisor's side is [`super::supervise::spool`]).
//!
//! With adoption on ([`enable`], `--on-shutdown keep`), every supervisor outlives agentd and
//! journals its agent's output. agentd writes a *claim* next to each job's run record
//! (`<run dir>/<token>.job`: the job and the replica that runs it), so a restarted agentd knows
//! which job a surviving supervisor runs. [`attach`] re-checks the supervisor's identity (pid and
//! start time of its run record, as the start-up sweep does), speaks the versioned handshake on its
//! socket, and [`Attached::run`] then replays the journal from its start as the [`Output`]s the
//! live runner would have produced, tailing it (woken by the supervisor's bell) until the journal's
//! end record, with cancel and timeout escalating as for a live job.
//!
//! Everything here is either async or small blocking file work called through `spawn_blocking`.

use super::journal::Replay;
use super::records::{self, Record};
use super::sockpath;
use super::supervise::Adoption;
use super::supervise::spool::{PROTOCOL, journal_path, socket_path};
use super::{Output, RunControl, RunOutcome, StopCause};
use crate::domain::ExitStatus;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The journal bound and the adopt timeout every supervisor gets, once adoption is on.
static SETTING: OnceLock<(u64, u64)> = OnceLock::new();

/// How long the handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// How often the journal is read when no bell rang (a bell can be lost while nobody listens).
const TAIL_TICK: Duration = Duration::from_millis(250);
/// How long the supervisor gets to kill the tree after `K` before its group is SIGKILLed.
const TREE_KILL_WAIT: Duration = Duration::from_secs(2);

const CLAIM_EXT: &str = "job";

/// Turns adoption on for every supervisor started from now on: journals bounded to
/// `max_journal_bytes`, trees killed by their supervisor after `timeout` without an agentd.
pub fn enable(max_journal_bytes: u64, timeout: Duration) {
    let _ = SETTING.set((max_journal_bytes, timeout.as_secs().max(1)));
}

/// Whether supervisors outlive agentd.
pub fn enabled() -> bool {
    SETTING.get().is_some()
}

/// The supervisor setting that makes it adoptable, when adoption is on.
pub(super) fn setting() -> Option<Adoption> {
    SETTING
        .get()
        .map(|&(max_journal_bytes, timeout_secs)| Adoption {
            max_journal_bytes,
            timeout_secs,
        })
}

/// Which job a token runs, as agentd recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub token: String,
    pub job: String,
    /// The replica id of the agentd that started it.
    pub replica: String,
    /// The job's model gateway token, which its agent holds (granted again on adoption).
    pub gateway: Option<String>,
}

fn claim_path(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("{token}.{CLAIM_EXT}"))
}

/// Records which job runs under `token` (blocking).
pub fn write_claim(dir: &Path, claim: &Claim) -> std::io::Result<()> {
    let path = claim_path(dir, &claim.token);
    let tmp = dir.join(format!("{}.{CLAIM_EXT}.tmp", claim.token));
    let mut text = format!("job={}\nreplica={}\n", claim.job, claim.replica);
    if let Some(token) = &claim.gateway {
        text.push_str(&format!("gateway={token}\n"));
    }
    // Owner-only: the gateway token is a secret the job's agent holds, nobody else.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    drop(file);
    std::fs::rename(tmp, path)
}

/// Every claim in `dir` (blocking).
pub fn claims(dir: &Path) -> Vec<Claim> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(token) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(&format!(".{CLAIM_EXT}")))
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if let (Some(job), Some(replica)) = (field("job"), field("replica")) {
            out.push(Claim {
                token: token.to_owned(),
                job,
                replica,
                gateway: field("gateway"),
            });
        }
    }
    out
}

/// Tokens of supervisors waiting for adoption (they listen) that no claim names: agentd died
/// between starting them and recording their job, so nobody can adopt them (blocking).
pub fn unclaimed(dir: &Path, claimed: &[Claim]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let token = name.strip_suffix(".sock")?.to_owned();
            (!claimed.iter().any(|c| c.token == token)).then_some(token)
        })
        .collect()
}

/// Removes what a finished job left next to its run record: the claim, the journal, the socket
/// (blocking).
pub fn forget(dir: &Path, token: &str) {
    let _ = std::fs::remove_file(claim_path(dir, token));
    let _ = std::fs::remove_file(journal_path(dir, token));
    let _ = std::fs::remove_file(socket_path(dir, token));
}

/// Why a supervisor could not be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its run record is gone or names another process, and it left no complete journal.
    Gone,
    /// Another agentd (or the one that started it) is attached.
    Busy,
    /// It speaks another version of the protocol, or garbage.
    Incompatible(String),
}

/// A supervisor to take over, or the journal of one that ended while nobody was attached.
#[derive(Debug)]
pub struct Attached {
    dir: PathBuf,
    token: String,
    record: Option<Record>,
    conn: Option<tokio::net::UnixStream>,
    max_line_bytes: usize,
}

/// How an adopted run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub outcome: RunOutcome,
    /// Nobody adopted it in time: its supervisor killed the tree.
    pub adopt_timed_out: bool,
}

/// Attaches to the supervisor of `token` in `dir`: its identity first, then the handshake. A
/// supervisor that is gone but journaled its end is attached without a connection (its journal
/// is all there is to read).
pub async fn attach(dir: &Path, token: &str, max_line_bytes: usize) -> Result<Attached, Refusal> {
    let record = {
        let (dir, token) = (dir.to_path_buf(), token.to_owned());
        tokio::task::spawn_blocking(move || records::live_record(&dir, &token))
            .await
            .ok()
            .flatten()
    };
    let mut attached = Attached {
        dir: dir.to_path_buf(),
        token: token.to_owned(),
        record,
        conn: None,
        max_line_bytes,
    };
    if record.is_none() {
        return if journal_ended(&journal_path(dir, token)).await {
            Ok(attached)
        } else {
            Err(Refusal::Gone)
        };
    }
    let conn = tokio::time::timeout(HANDSHAKE, handshake(dir, token)).await;
    match conn {
        Ok(Ok(conn)) => {
            attached.conn = Some(conn);
            Ok(attached)
        }
        Ok(Err(_)) if !socket_path(dir, token).exists() => {
            // Past its tree's end a supervisor stops listening, then tears the jail down before
            // it exits and drops its record: once it is gone, its journal is all there is.
            if let Some(rec) = record {
                wait_gone(rec).await;
            }
            attached.record = None;
            if journal_ended(&journal_path(dir, token)).await {
                Ok(attached)
            } else {
                Err(Refusal::Gone)
            }
        }
        Ok(Err(refusal)) => Err(refusal),
        Err(_) => Err(Refusal::Incompatible("no answer to the handshake".into())),
    }
}

/// Waits (bounded: a jail's teardown takes well under a second) until `rec`'s process is gone.
async fn wait_gone(rec: Record) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let running = tokio::task::spawn_blocking(move || rec.still_running()).await;
        if !running.unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn handshake(dir: &Path, token: &str) -> Result<tokio::net::UnixStream, Refusal> {
    let cannot = |e: std::io::Error| Refusal::Incompatible(format!("cannot connect: {e}"));
    let owned = dir.to_path_buf();
    let dir_fd = tokio::task::spawn_blocking(move || sockpath::open_dir(&owned))
        .await
        .map_err(|e| cannot(std::io::Error::other(e)))?
        .map_err(cannot)?;
    let mut conn =
        tokio::net::UnixStream::connect(sockpath::via(&dir_fd, &format!("{token}.sock")))
            .await
            .map_err(cannot)?;
    drop(dir_fd);
    conn.write_all(format!("{PROTOCOL}\n").as_bytes())
        .await
        .map_err(|e| Refusal::Incompatible(format!("cannot greet: {e}")))?;
    // Byte by byte: the bell bytes that follow the answer must stay unread.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 128 {
        match conn.read(&mut byte).await {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return Err(Refusal::Incompatible("the supervisor hung up".into())),
        }
    }
    let answer = String::from_utf8_lossy(&line).into_owned();
    match answer.strip_prefix(PROTOCOL).map(str::trim) {
        Some("ok") => Ok(conn),
        Some("busy") => Err(Refusal::Busy),
        _ => Err(Refusal::Incompatible(answer)),
    }
}

/// Whether a journal holds its end record (the supervisor finished while nobody was attached).
async fn journal_ended(path: &Path) -> bool {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return false;
    };
    let mut replay = Replay::new(1024);
    let mut sink = Vec::new();
    replay.push(&bytes, &mut sink).is_ok() && replay.end.is_some()
}

/// Kills the tree of a supervisor that must not be adopted (its job is gone, or it is
/// incompatible), by its recorded identity; then sweeps what carries its token (blocking).
pub fn kill_tree(dir: &Path, token: &str, cgroup_parent: Option<&str>) -> usize {
    if let Some(rec) = records::live_record(dir, token) {
        let _ = kill(Pid::from_raw(rec.pid), Signal::SIGUSR1);
        let until = std::time::Instant::now() + TREE_KILL_WAIT;
        while rec.still_running() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if rec.still_running() {
            let _ = killpg(Pid::from_raw(rec.pid), Signal::SIGKILL);
        }
    }
    records::sweep_one(dir, token, cgroup_parent)
}

impl Attached {
    /// The supervisor's pid, when it is alive.
    pub fn pid(&self) -> Option<i32> {
        self.record.map(|r| r.pid)
    }

    /// Ends the tree at once (the job was cancelled, deleted or finished meanwhile).
    pub async fn kill(mut self) {
        if let Some(conn) = &mut self.conn {
            let _ = conn.write_all(b"K").await;
        }
        let (dir, token) = (self.dir.clone(), self.token.clone());
        let _ = tokio::task::spawn_blocking(move || kill_tree(&dir, &token, None)).await;
    }

    /// Replays the journal into `out` from its start and follows it to its end, enforcing the
    /// cancel token and the timeout (counted from now: the caller passes what is left).
    pub async fn run(mut self, out: mpsc::Sender<Output>, control: RunControl) -> Adopted {
        let path = journal_path(&self.dir, &self.token);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open an adopted job's journal");
                None
            }
        };
        let mut replay = Replay::new(self.max_line_bytes);
        let mut buf = vec![0u8; 64 * 1024];
        let mut outs = Vec::new();
        let deadline = Instant::now() + control.timeout;
        let mut stop: Option<(StopCause, u8)> = None;
        let mut escalate_at = Instant::now();
        loop {
            // Everything journaled so far.
            while let Some(f) = &mut file {
                match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = replay.push(&buf[..n], &mut outs) {
                            tracing::warn!(error = %e.0, "an adopted job's journal is corrupt");
                            file = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read an adopted job's journal");
                        file = None;
                    }
                }
                for o in outs.drain(..) {
                    let _ = out.send(o).await;
                }
            }
            let gone = self.conn.is_none() && !self.record.is_some_and(|r| r.still_running());
            if replay.end.is_some() || gone || file.is_none() {
                replay.finish(&mut outs);
                for o in outs.drain(..) {
                    let _ = out.send(o).await;
                }
                break;
            }
            let mut bell = [0u8; 256];
            tokio::select! {
                r = read_bell(&mut self.conn, &mut bell) => if r { self.conn = None },
                () = tokio::time::sleep(TAIL_TICK) => {}
                () = control.cancel.cancelled(), if stop.is_none() => {
                    stop = Some((StopCause::Cancelled, 0));
                }
                () = tokio::time::sleep_until(deadline), if stop.is_none() => {
                    stop = Some((StopCause::TimedOut, 0));
                }
                () = tokio::time::sleep_until(escalate_at), if stop.is_some() => {}
            }
            if let Some((cause, step)) = stop
                && Instant::now() >= escalate_at
            {
                escalate_at = Instant::now() + self.escalate(step, control.grace).await;
                stop = Some((cause, step.saturating_add(1)));
            }
        }
        let exit = replay
            .end
            .as_deref()
            .and_then(decode_end)
            .unwrap_or(ExitStatus::Signal(Signal::SIGKILL as i32));
        Adopted {
            outcome: RunOutcome {
                exit,
                stop: stop.map(|(cause, _)| cause),
            },
            adopt_timed_out: replay.adopt_timed_out,
        }
    }

    /// Step `step` of cancel or timeout: SIGTERM to the agent, then the supervisor's tree kill,
    /// then SIGKILL to its group. Returns how long to wait before the next step.
    async fn escalate(&mut self, step: u8, grace: Duration) -> Duration {
        let live = self.record.filter(|r| r.still_running());
        match step {
            0 => {
                self.command(b'T', live, Signal::SIGTERM).await;
                grace
            }
            1 => {
                self.command(b'K', live, Signal::SIGUSR1).await;
                TREE_KILL_WAIT
            }
            _ => {
                if let Some(r) = live {
                    let _ = killpg(Pid::from_raw(r.pid), Signal::SIGKILL);
                }
                TAIL_TICK
            }
        }
    }

    async fn command(&mut self, cmd: u8, live: Option<Record>, sig: Signal) {
        let sent = match &mut self.conn {
            Some(conn) => conn.write_all(&[cmd]).await.is_ok(),
            None => false,
        };
        if !sent && let Some(r) = live {
            let _ = kill(Pid::from_raw(r.pid), sig);
        }
    }
}

/// Waits for bell bytes; true when the connection closed.
async fn read_bell(conn: &mut Option<tokio::net::UnixStream>, buf: &mut [u8]) -> bool {
    match conn {
        Some(c) => !matches!(c.read(buf).await, Ok(n) if n > 0),
        None => std::future::pending().await,
    }
}

/// The supervisor's encoding of how the agent ended (see `supervise::End`).
fn decode_end(buf: &[u8]) -> Option<ExitStatus> {
    let buf: [u8; 8] = buf.try_into().ok()?;
    let kind = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let value = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    match kind {
        0 => Some(ExitStatus::Code(value)),
        1 => Some(ExitStatus::Signal(value)),
        _ => None,
    }
}

/// Reads a line from an async reader, for tests of the protocol.
#[cfg(test)]
async fn line_of(r: impl tokio::io::AsyncRead + Unpin) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut s = String::new();
    let _ = tokio::io::BufReader::new(r).read_line(&mut s).await;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_ignore_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let claim = Claim {
            token: "abc123".into(),
            job: "job_1".into(),
            replica: "r1".into(),
            gateway: Some("agj_x".into()),
        };
        write_claim(dir.path(), &claim).unwrap();
        std::fs::write(dir.path().join("nothex!.job"), "job=x\nreplica=y\n").unwrap();
        std::fs::write(dir.path().join("abcd.job"), "garbage").unwrap();
        assert_eq!(claims(dir.path()), vec![claim]);
        forget(dir.path(), "abc123");
        assert!(claims(dir.path()).is_empty());
    }

    #[test]
    fn end_records_decode_like_the_supervisor_encodes_them() {
        let mut code = 3i32.to_le_bytes().to_vec();
        code.splice(0..0, 0i32.to_le_bytes());
        assert_eq!(decode_end(&code), Some(ExitStatus::Code(3)));
        let mut sig = 9i32.to_le_bytes().to_vec();
        sig.splice(0..0, 1i32.to_le_bytes());
        assert_eq!(decode_end(&sig), Some(ExitStatus::Signal(9)));
        assert_eq!(decode_end(&[1, 2]), None);
    }

    #[tokio::test]
    async fn a_supervisor_speaking_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("t.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let hello = line_of(&mut c).await;
            c.write_all(b"agentd-adopt/9 ok\n").await.unwrap();
            hello
        });
        let got = handshake(dir.path(), "t").await.unwrap_err();
        assert!(matches!(got, Refusal::Incompatible(_)), "{got:?}");
        assert_eq!(server.await.unwrap(), format!("{PROTOCOL}\n"));
    }
}
