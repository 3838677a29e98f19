//! The spool journal of an adoptable supervisor (issue #23; not wired into any run yet): the
//! on-disk format in which a supervisor that outlives agentd keeps its agent's output until an
//! agentd adopts it, and the replay that turns a journal back into the exact [`Output`] sequence
//! the runner would have produced live; [`spool`] is the supervisor side that fills it.
//!
//! Why a journal of raw chunks rather than of lines: the supervisor does not split lines; agentd
//! replays the chunks of each stream through the same [`LineSplitter`] it uses live, so the lines
//! (and so the events an adapter parses from them) are the same whatever the chunking was. That
//! makes the resume point after a restart a plain event count: agentd re-parses the journal from
//! its start and stores only the events past the job's last stored seq — no gap, no duplicate.
//!
//! Format: a sequence of records `[tag: u8][len: u32 LE][payload: len bytes]`. A record cut short
//! at the end of the file (the supervisor is still writing it, or was killed mid-write) is not
//! returned until it is complete. The journal is bounded: past `max_output` payload bytes of
//! output, one [`Tag::Overflow`] record is written and further output is dropped (the agent is
//! never blocked); control records ([`Tag::End`], [`Tag::AdoptTimeout`]) are always written.

use super::lines::LineSplitter;
use super::{Line, Output};
use std::io::Write;

/// Format tag written first in every journal, bumped on any change to the record format.
pub const MAGIC: &[u8; 16] = b"agentd-spool-1\0\0";

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A chunk of the agent's stdout.
    Stdout,
    /// A chunk of the agent's stderr.
    Stderr,
    /// One jail notice as JSON.
    Notice,
    /// Output past the bound was dropped from here on.
    Overflow,
    /// No agentd adopted the job in time: the supervisor killed its tree.
    AdoptTimeout,
    /// The tree is gone; the payload is the supervisor's encoding of how the agent ended.
    End,
}

impl Tag {
    fn byte(self) -> u8 {
        match self {
            Tag::Stdout => b'O',
            Tag::Stderr => b'E',
            Tag::Notice => b'N',
            Tag::Overflow => b'T',
            Tag::AdoptTimeout => b'A',
            Tag::End => b'X',
        }
    }

    fn from_byte(b: u8) -> Option<Tag> {
        Some(match b {
            b'O' => Tag::Stdout,
            b'E' => Tag::Stderr,
            b'N' => Tag::Notice,
            b'T' => Tag::Overflow,
            b'A' => Tag::AdoptTimeout,
            b'X' => Tag::End,
            _ => return None,
        })
    }

    fn is_output(self) -> bool {
        matches!(self, Tag::Stdout | Tag::Stderr | Tag::Notice)
    }
}

const HEADER: usize = 5;

/// Appends records to a journal, bounded (see the module comment). Blocking I/O: for the
/// synchronous supervisor.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    max_output: u64,
    output: u64,
    overflowed: bool,
}

impl<W: Write> Writer<W> {
    /// Starts a journal on `out` (writes [`MAGIC`]).
    pub fn new(mut out: W, max_output: u64) -> std::io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(Writer {
            out,
            max_output,
            output: 0,
            overflowed: false,
        })
    }

    /// Appends one record; output past the bound is dropped (one [`Tag::Overflow`] instead).
    /// Returns whether the record was written.
    pub fn append(&mut self, tag: Tag, payload: &[u8]) -> std::io::Result<bool> {
        if tag.is_output() {
            if self.overflowed {
                return Ok(false);
            }
            if self.output + payload.len() as u64 > self.max_output {
                self.overflowed = true;
                self.record(Tag::Overflow, &[])?;
                return Ok(false);
            }
            self.output += payload.len() as u64;
        }
        self.record(tag, payload)?;
        Ok(true)
    }

    fn record(&mut self, tag: Tag, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::other("journal record over 4 GiB"))?;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.push(tag.byte());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(payload);
        // One write per record, so a reader never sees a header without the writer having tried
        // to write its payload with it.
        self.out.write_all(&rec)
    }
}

/// A malformed journal (not a cut-short tail, which is only incomplete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

/// Turns journal bytes, fed in any pieces, back into records and then into the [`Output`]s the
/// runner produces live.
#[derive(Debug)]
pub struct Replay {
    pending: Vec<u8>,
    magic_seen: bool,
    stdout: LineSplitter,
    stderr: LineSplitter,
    /// The payload of the [`Tag::End`] record, once read.
    pub end: Option<Vec<u8>>,
    pub overflowed: bool,
    pub adopt_timed_out: bool,
}

impl Replay {
    pub fn new(max_line_bytes: usize) -> Self {
        Replay {
            pending: Vec::new(),
            magic_seen: false,
            stdout: LineSplitter::new(max_line_bytes),
            stderr: LineSplitter::new(max_line_bytes),
            end: None,
            overflowed: false,
            adopt_timed_out: false,
        }
    }

    /// Feeds the next bytes of the journal; complete lines go to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Output>) -> Result<(), Corrupt> {
        self.pending.extend_from_slice(bytes);
        if !self.magic_seen {
            if self.pending.len() < MAGIC.len() {
                return Ok(());
            }
            if !self.pending.starts_with(MAGIC) {
                return Err(Corrupt("not an agentd-spool-1 journal".into()));
            }
            self.pending.drain(..MAGIC.len());
            self.magic_seen = true;
        }
        let mut at = 0;
        while self.pending.len() - at >= HEADER {
            let head = &self.pending[at..at + HEADER];
            let tag = Tag::from_byte(head[0])
                .ok_or_else(|| Corrupt(format!("unknown record tag {:#04x}", head[0])))?;
            let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if self.pending.len() - at - HEADER < len {
                break;
            }
            let payload = self.pending[at + HEADER..at + HEADER + len].to_vec();
            at += HEADER + len;
            self.record(tag, payload, out)?;
        }
        self.pending.drain(..at);
        Ok(())
    }

    fn record(&mut self, tag: Tag, payload: Vec<u8>, out: &mut Vec<Output>) -> Result<(), Corrupt> {
        let mut lines = Vec::new();
        match tag {
            Tag::Stdout => {
                self.stdout.push(&payload, &mut lines);
                out.extend(lines.into_iter().map(Output::Stdout));
            }
            Tag::Stderr => {
                self.stderr.push(&payload, &mut lines);
                out.extend(lines.into_iter().map(Output::Stderr));
            }
            Tag::Notice => {
                let notice = serde_json::from_slice(&payload)
                    .map_err(|e| Corrupt(format!("unreadable notice: {e}")))?;
                out.push(Output::Notice(notice));
            }
            Tag::Overflow => self.overflowed = true,
            Tag::AdoptTimeout => self.adopt_timed_out = true,
            Tag::End => self.end = Some(payload),
        }
        Ok(())
    }

    /// At the end of the journal (the tree is gone): the unterminated last lines, stdout first
    /// as the live pumps would have flushed them on EOF.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        let last = |s: &mut LineSplitter| s.finish();
        out.extend(last(&mut self.stdout).map(Output::Stdout));
        out.extend(last(&mut self.stderr).map(Output::Stderr));
    }
}

/// Copies the agent's stdout and stderr pipes into the journal as they arrive, until both are at
/// EOF (every writer, the whole tree, is gone). After each append one byte goes to `bell`
/// (non-blocking: when it is full a byte is pending already, which wakes the reader just as well;
/// when nobody reads it any more, appends go on: that is the spooling while agentd is away).
/// Blocking: for the synchronous supervisor.
pub fn spool<W: Write>(
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    journal: &mut Writer<W>,
    bell: Option<&std::os::fd::OwnedFd>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut open = [Some((stdout, Tag::Stdout)), Some((stderr, Tag::Stderr))];
    let mut buf = vec![0u8; 64 * 1024];
    while open.iter().any(Option::is_some) {
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .flatten()
            .map(|(fd, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for slot in open.iter_mut() {
            let Some((fd, tag)) = slot else { continue };
            let ready = fds.iter().any(|p| p.fd == fd.as_raw_fd() && p.revents != 0);
            if !ready {
                continue;
            }
            match nix::unistd::read(&*fd, &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => {
                    journal.append(*tag, &buf[..n])?;
                    journal.out.flush()?;
                    if let Some(bell) = bell {
                        let _ = nix::unistd::write(bell, &[1]);
                    }
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The lines of `outputs` as (stream, line) pairs; for tests and diagnostics.
pub fn lines_of(outputs: &[Output]) -> Vec<(&'static str, &Line)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Stdout(l) => Some(("stdout", l)),
            Output::Stderr(l) => Some(("stderr", l)),
            Output::Notice(_) | Output::Event(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(max_output: u64, records: &[(Tag, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), max_output).unwrap();
        for (tag, payload) in records {
            w.append(*tag, payload).unwrap();
        }
        w.out
    }

    fn replay_in_pieces(bytes: &[u8], piece: usize) -> (Vec<Output>, Replay) {
        let mut r = Replay::new(8);
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            r.push(chunk, &mut out).unwrap();
        }
        r.finish(&mut out);
        (out, r)
    }

    #[test]
    fn replay_is_the_same_however_the_journal_is_read() {
        let bytes = journal(
            1 << 20,
            &[
                (Tag::Stdout, b"one\ntw"),
                (Tag::Stderr, b"warn\n"),
                (Tag::Stdout, b"o\r\nmuch too long a line\nlast"),
                (Tag::End, &[0, 0, 0, 0, 0, 0, 0, 0]),
            ],
        );
        let (whole, r) = replay_in_pieces(&bytes, bytes.len());
        let got: Vec<(&str, String, bool)> = lines_of(&whole)
            .into_iter()
            .map(|(s, l)| (s, l.text.clone(), l.truncated))
            .collect();
        let want = [
            ("stdout", "one", false),
            ("stderr", "warn", false),
            ("stdout", "two", false),
            ("stdout", "much too", true),
            ("stdout", "last", false),
        ]
        .map(|(s, t, tr)| (s, t.to_owned(), tr));
        assert_eq!(got, want);
        assert_eq!(r.end.as_deref(), Some(&[0u8; 8][..]));
        for piece in [1, 2, 3, 5, 7, 13] {
            assert_eq!(
                replay_in_pieces(&bytes, piece).0,
                whole,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_cut_short_record_waits_for_its_rest() {
        let bytes = journal(1 << 20, &[(Tag::Stdout, b"hello\n")]);
        let mut r = Replay::new(64);
        let mut out = Vec::new();
        r.push(&bytes[..bytes.len() - 2], &mut out).unwrap();
        assert!(out.is_empty());
        r.push(&bytes[bytes.len() - 2..], &mut out).unwrap();
        assert_eq!(lines_of(&out)[0].1.text, "hello");
    }

    #[test]
    fn output_past_the_bound_is_dropped_once_and_the_end_still_written() {
        let bytes = journal(
            10,
            &[
                (Tag::Stdout, b"12345\n"),
                (Tag::Stdout, b"67890\n"),
                (Tag::Stderr, b"x\n"),
                (Tag::End, b"endendee"),
            ],
        );
        let (out, r) = replay_in_pieces(&bytes, 4);
        assert_eq!(lines_of(&out).len(), 1);
        assert!(r.overflowed);
        assert_eq!(r.end.as_deref(), Some(&b"endendee"[..]));
    }

    #[test]
    fn foreign_bytes_are_refused() {
        let mut r = Replay::new(64);
        let err = r.push(b"definitely not a journal", &mut Vec::new());
        assert!(err.is_err());
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&[b'?', 0, 0, 0, 0]);
        assert!(Replay::new(64).push(&bad, &mut Vec::new()).is_err());
    }
    #[test]
    fn spool_copies_both_pipes_in_full_and_rings_the_bell() {
        use nix::fcntl::OFlag;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (bell_r, bell_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        // More than a pipe holds, so the writer blocks until the spool reads.
        let big: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let sent = big.clone();
        let writer = std::thread::spawn(move || {
            let mut out = std::fs::File::from(out_w);
            let mut err = std::fs::File::from(err_w);
            out.write_all(&sent).unwrap();
            err.write_all(b"oops\nno newline").unwrap();
        });
        let mut journal = Writer::new(Vec::new(), 1 << 30).unwrap();
        spool(out_r, err_r, &mut journal, Some(&bell_w)).unwrap();
        writer.join().unwrap();
        assert!(nix::unistd::read(&bell_r, &mut [0u8; 1]).is_ok_and(|n| n == 1));
        let mut r = Replay::new(64);
        let mut out = Vec::new();
        r.push(&journal.out, &mut out).unwrap();
        r.finish(&mut out);
        let lines = lines_of(&out);
        let stdout: Vec<&str> = lines
            .iter()
            .filter(|(s, _)| *s == "stdout")
            .map(|(_, l)| l.text.as_str())
            .collect();
        let want: Vec<String> = (0..20_000).map(|i| format!("line {i}")).collect();
        assert_eq!(stdout, want);
        let stderr: Vec<&str> = lines
            .iter()
            .filter(|(s, _)| *s == "stderr")
            .map(|(_, l)| l.text.as_str())
            .collect();
        assert_eq!(stderr, ["oops", "no newline"]);
    }
}
