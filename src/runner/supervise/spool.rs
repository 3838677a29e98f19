//! The adoptable supervisor's side of issue #23: with [`Settings::adopt`] set (agentd runs with
//! `--on-shutdown keep`), the supervisor does not die with agentd. It puts itself between the
//! agent's output and agentd: the agent writes into pipes the supervisor reads, and every chunk
//! goes into the job's journal (`<run dir>/<token>.journal`, [`journal`]) and, while agentd is
//! still the supervisor's parent reading its pipes, on to agentd exactly as before.
//!
//! Once agentd is gone (its end of the pipes closes), the supervisor keeps spooling, bounded, and
//! listens on `<run dir>/<token>.sock` for a new agentd to adopt it ([`PROTOCOL`]). An adopted
//! supervisor rings a bell byte on that connection after each chunk it journals; the adopter
//! replays the journal from its start ([`journal::Replay`]) and skips what it had already stored.
//! Commands on the connection: `T` forwards SIGTERM to the agent (graceful stop), `K` kills the
//! tree now. A supervisor nobody adopts within its timeout journals [`journal::Tag::AdoptTimeout`]
//! and kills its tree itself, so nothing runs unowned for ever.
//!
//! The jail's limit notices ([`notice`]) are journaled too, in their order among themselves: an
//! adopter replays them like the output, so a limit hit while no agentd was attached still
//! reaches the job's events and verdict.
//!
//! The spool runs on a thread of the supervisor, started only after the supervisor's last fork
//! ([`start`]), so the single-threaded fork rules of the supervisor still hold.

use super::{Settings, write_all};
use crate::runner::journal::{Tag, Writer};
use crate::runner::records::RUN_TOKEN_ENV;
use crate::runner::sockpath;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The adoption protocol's version, the first line both sides send. A supervisor refuses any other
/// (`<PROTOCOL> refused`), and an agentd that is refused cancels the job rather than half-attach.
pub const PROTOCOL: &str = "agentd-adopt/1";

/// The file names next to a job's run record.
pub fn journal_path(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("{token}.journal"))
}

pub fn socket_path(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("{token}.sock"))
}

/// How long the spool keeps reading after the tree is gone, for a writer that escaped it.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// The write end of the pipe on which the supervisor's main thread hands notices to the spool
/// (non-blocking: a notice is never worth stalling the watch over).
static NOTICES: OnceLock<OwnedFd> = OnceLock::new();

/// Journals one notice line (JSON and a newline, as the jail's watch writes it to agentd). A
/// no-op unless this supervisor spools.
pub fn notice(line: &[u8]) {
    if let Some(fd) = NOTICES.get() {
        let _ = write_all(fd.as_fd(), line);
    }
}

/// What the supervisor holds between [`prepare`] and [`start`].
struct Prepared {
    out_r: OwnedFd,
    err_r: OwnedFd,
    notice_r: OwnedFd,
    /// agentd's own ends, the supervisor's original stdout and stderr.
    agentd_out: OwnedFd,
    agentd_err: OwnedFd,
    journal: Writer<File>,
    journal_path: PathBuf,
    listener: UnixListener,
    socket_path: PathBuf,
    timeout: Duration,
}

struct Running {
    thread: std::thread::JoinHandle<Spooled>,
    done_w: OwnedFd,
    socket_path: PathBuf,
}

/// What the spool thread hands back.
struct Spooled {
    journal: Writer<File>,
    notices: Notices,
}

enum State {
    Idle,
    Prepared(Box<Prepared>),
    Running(Box<Running>),
}

static STATE: Mutex<State> = Mutex::new(State::Idle);

/// Creates the journal, the socket and the agent's output pipes, and makes the pipes this
/// process's stdout and stderr, so that whatever is forked next writes into them. A no-op without
/// [`Settings::adopt`].
pub fn prepare(settings: &Settings) -> Result<(), String> {
    let Some(adopt) = settings.adopt else {
        return Ok(());
    };
    let (max, timeout) = (adopt.max_journal_bytes, adopt.timeout_secs);
    let (Some(dir), Ok(token)) = (&settings.run_dir, std::env::var(RUN_TOKEN_ENV)) else {
        return Err(format!("adoption needs a run dir and {RUN_TOKEN_ENV}"));
    };
    let journal_path = journal_path(dir, &token);
    let file = private_file(&journal_path)?;
    let journal = Writer::new(file, max)
        .map_err(|e| format!("cannot write {}: {e}", journal_path.display()))?;
    let socket_path = socket_path(dir, &token);
    let name = format!("{token}.sock");
    let listener = sockpath::open_dir(dir)
        .and_then(|fd| UnixListener::bind(sockpath::via(&fd, &name)))
        .map_err(|e| format!("cannot listen on {}: {e}", socket_path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen: {e}"))?;
    // Close-on-exec copies numbered 3 and up.
    let keep = |fd: i32| {
        fd_of(fd)
            .try_clone_to_owned()
            .map_err(|e| format!("cannot keep agentd's pipe: {e}"))
    };
    let (agentd_out, agentd_err) = (keep(1)?, keep(2)?);
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (notice_r, notice_w) = pipe()?;
    let _ = fcntl(&notice_w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let _ = fcntl(&notice_r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let _ = NOTICES.set(notice_w);
    widen(&out_w);
    nix::unistd::dup2_stdout(&out_w).map_err(|e| format!("cannot redirect stdout: {e}"))?;
    nix::unistd::dup2_stderr(&err_w).map_err(|e| format!("cannot redirect stderr: {e}"))?;
    *lock() = State::Prepared(Box::new(Prepared {
        out_r,
        err_r,
        notice_r,
        agentd_out,
        agentd_err,
        journal,
        journal_path,
        listener,
        socket_path,
        timeout: Duration::from_secs(timeout),
    }));
    Ok(())
}

/// After the supervisor's last fork: gives stdout and stderr back to agentd's pipes (so only the
/// tree holds the agent's pipes, and their EOF means the tree is gone) and starts spooling.
pub fn start() {
    let mut state = lock();
    let State::Prepared(p) = std::mem::replace(&mut *state, State::Idle) else {
        return;
    };
    let _ = nix::unistd::dup2_stdout(&p.agentd_out);
    let _ = nix::unistd::dup2_stderr(&p.agentd_err);
    let Ok((done_r, done_w)) = pipe() else {
        return;
    };
    let socket_path = p.socket_path.clone();
    let thread = std::thread::spawn(move || spool(*p, done_r));
    *state = State::Running(Box::new(Running {
        thread,
        done_w,
        socket_path,
    }));
}

/// Once the tree is gone: the rest of the output, then how the agent ended (`end`, the
/// supervisor's 8-byte encoding). The journal stays even when agentd read everything live: until
/// agentd has stored the job's end it removes the journal itself (with its claim,
/// `runner::adopt::forget`), an agentd killed in between leaves the job RUNNING, and the next one
/// replays this journal to end it as it really ended.
pub fn finish(end: [u8; 8]) {
    let state = std::mem::replace(&mut *lock(), State::Idle);
    let running = match state {
        State::Running(r) => r,
        State::Prepared(p) => {
            // Nothing was started.
            let _ = std::fs::remove_file(&p.journal_path);
            let _ = std::fs::remove_file(&p.socket_path);
            return;
        }
        State::Idle => return,
    };
    let _ = nix::unistd::write(&running.done_w, &[1]);
    let Ok(mut spooled) = running.thread.join() else {
        return;
    };
    let _ = std::fs::remove_file(&running.socket_path);
    // The watch's last look comes after the tree is gone.
    spooled.notices.drain(&mut spooled.journal);
    let _ = spooled.journal.append(Tag::End, &end);
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn fd_of(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: 1 and 2 are open for the whole life of the supervisor (its stdout and stderr).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create a pipe: {e}"))
}

fn private_file(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// As the runner widens agentd's pipe ([`crate::runner`]): room for a large echo.
fn widen(fd: &OwnedFd) {
    for size in [4 << 20, 1 << 20] {
        if fcntl(fd, FcntlArg::F_SETPIPE_SZ(size)).is_ok() {
            return;
        }
    }
}

/// Who is attached and since when nobody is.
struct Attach {
    /// agentd's pipes, while its read ends are open.
    piped: Option<(OwnedFd, OwnedFd)>,
    /// An adopter's connection.
    conn: Option<UnixStream>,
    /// When the adopt timeout runs out (set while nobody is attached).
    deadline: Option<Instant>,
    timeout: Duration,
    timed_out: bool,
}

impl Attach {
    fn detach_pipes(&mut self) {
        if self.piped.take().is_some() {
            self.arm();
        }
    }

    fn arm(&mut self) {
        if self.piped.is_none() && self.conn.is_none() {
            self.deadline = Some(Instant::now() + self.timeout);
        }
    }

    fn poll_timeout(&self, draining: bool) -> i32 {
        if draining {
            return DRAIN_IDLE.as_millis() as i32;
        }
        match self.deadline {
            Some(at) if !self.timed_out => {
                let left = at.saturating_duration_since(Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32 + 1
            }
            _ => -1,
        }
    }
}

/// The spool thread: see the module comment.
fn spool(p: Prepared, done_r: OwnedFd) -> Spooled {
    let Prepared {
        out_r,
        err_r,
        notice_r,
        agentd_out,
        agentd_err,
        mut journal,
        listener,
        timeout,
        ..
    } = p;
    let mut streams = [Some((out_r, Tag::Stdout)), Some((err_r, Tag::Stderr))];
    let mut at = Attach {
        piped: Some((agentd_out, agentd_err)),
        conn: None,
        deadline: None,
        timeout,
        timed_out: false,
    };
    let mut notices = Notices {
        fd: notice_r,
        partial: Vec::new(),
    };
    let mut draining = false;
    let mut buf = vec![0u8; 64 * 1024];
    while streams.iter().any(Option::is_some) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(6);
        let mut add = |fd: i32, events: i16| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        };
        for (fd, _) in streams.iter().flatten() {
            add(fd.as_raw_fd(), libc::POLLIN);
        }
        add(listener.as_raw_fd(), libc::POLLIN);
        add(notices.fd.as_raw_fd(), libc::POLLIN);
        if let Some(conn) = &at.conn {
            add(conn.as_raw_fd(), libc::POLLIN);
        }
        if let Some((out, _)) = &at.piped {
            // A pipe's write end reports POLLERR once its reader is gone.
            add(out.as_raw_fd(), 0);
        }
        if !draining {
            add(done_r.as_raw_fd(), libc::POLLIN);
        }
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                at.poll_timeout(draining),
            )
        };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            break;
        }
        if n == 0 {
            if draining {
                break;
            }
            if at.deadline.is_some_and(|d| Instant::now() >= d) && !at.timed_out {
                at.timed_out = true;
                let _ = journal.append(Tag::AdoptTimeout, &[]);
                // The main thread kills the tree (as on agentd's SIGUSR1).
                signal_self(nix::sys::signal::Signal::SIGUSR1);
            }
            continue;
        }
        let ready = |fd: i32| fds.iter().any(|p| p.fd == fd && p.revents != 0);
        if !draining && ready(done_r.as_raw_fd()) {
            draining = true;
        }
        if let Some((out, _)) = &at.piped
            && ready(out.as_raw_fd())
        {
            at.detach_pipes();
        }
        for slot in streams.iter_mut() {
            let Some((fd, tag)) = slot else { continue };
            if !ready(fd.as_raw_fd()) {
                continue;
            }
            match nix::unistd::read(&*fd, &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => {
                    let tag = *tag;
                    pass_on(&buf[..n], tag, &mut journal, &mut at);
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => *slot = None,
            }
        }
        if ready(notices.fd.as_raw_fd()) && notices.drain(&mut journal) {
            ring(&mut at);
        }
        if ready(listener.as_raw_fd()) {
            accept(&listener, &mut at);
        }
        if let Some(conn) = &at.conn
            && ready(conn.as_raw_fd())
        {
            command(&mut at);
        }
    }
    Spooled { journal, notices }
}

/// The read end of the notice pipe, and a line not yet complete.
struct Notices {
    fd: OwnedFd,
    partial: Vec<u8>,
}

impl Notices {
    /// Journals every complete notice line waiting in the pipe, one record each; returns whether
    /// there was any.
    fn drain(&mut self, journal: &mut Writer<File>) -> bool {
        let mut any = false;
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let _ = journal.append(Tag::Notice, &line[..end]);
            any = true;
        }
        any
    }
}

/// One chunk of output: into the journal, then to whoever is attached.
fn pass_on(chunk: &[u8], tag: Tag, journal: &mut Writer<File>, at: &mut Attach) {
    let _ = journal.append(tag, chunk);
    if let Some((out, err)) = &at.piped {
        let fd = if tag == Tag::Stdout { out } else { err };
        if write_all(fd.as_fd(), chunk).is_err() {
            at.detach_pipes();
        }
    }
    ring(at);
}

/// Tells an attached adopter that the journal grew.
fn ring(at: &mut Attach) {
    if let Some(conn) = &mut at.conn
        && let Err(e) = conn.write(b".")
        && e.kind() != std::io::ErrorKind::WouldBlock
    {
        at.conn = None;
        at.arm();
    }
}

/// A would-be adopter: it must speak [`PROTOCOL`] first; only one is attached at a time.
fn accept(listener: &UnixListener, at: &mut Attach) {
    let Ok((mut conn, _)) = listener.accept() else {
        return;
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let hello = read_line(&mut conn);
    let answer = if at.conn.is_some() || at.piped.is_some() {
        "busy"
    } else if hello.as_deref() == Some(PROTOCOL) {
        "ok"
    } else {
        "refused"
    };
    if writeln!(conn, "{PROTOCOL} {answer}").is_err() || answer != "ok" {
        return;
    }
    let _ = conn.set_nonblocking(true);
    at.conn = Some(conn);
    at.deadline = None;
}

/// At most one short line, byte by byte (nothing after it is consumed).
fn read_line(conn: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match conn.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    None
}

/// To the process, not this thread (which blocks them): the main thread takes it with `sigwait`.
fn signal_self(sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), sig);
}

/// The adopter's commands (see the module comment); EOF detaches it.
fn command(at: &mut Attach) {
    let Some(conn) = &mut at.conn else { return };
    let mut cmds = [0u8; 16];
    match conn.read(&mut cmds) {
        Ok(0) => {
            at.conn = None;
            at.arm();
        }
        Ok(n) => {
            use nix::sys::signal::Signal;
            for c in &cmds[..n] {
                match c {
                    b'T' => signal_self(Signal::SIGTERM),
                    b'K' => signal_self(Signal::SIGUSR1),
                    _ => {}
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => {
            at.conn = None;
            at.arm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unattached_spool_arms_its_deadline_and_an_attached_one_does_not() {
        let mut at = Attach {
            piped: None,
            conn: None,
            deadline: None,
            timeout: Duration::from_secs(60),
            timed_out: false,
        };
        assert_eq!(at.poll_timeout(false), -1);
        at.arm();
        assert!(at.poll_timeout(false) > 59_000);
        assert_eq!(at.poll_timeout(true), DRAIN_IDLE.as_millis() as i32);
    }
}
