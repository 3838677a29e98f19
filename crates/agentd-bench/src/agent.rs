//! The stand-in agent (`agentd-bench __agent <script>`): agentd runs it as a `command` profile,
//! whose prompt is the script, and the bare relay runs the very same executable directly. Lines
//! that matter carry a CLOCK_MONOTONIC stamp so the reader can tell how long each took to arrive.
//!
//! Scripts:
//! - `hello`: prints `h <ns>` once and exits;
//! - `ticks <interval_us> <count> <delay_ms>`: after `delay_ms`, prints `t <ns>` every
//!   `interval_us` (on a fixed schedule, so a late line does not delay the next ones);
//! - `flood <count>`: prints `count` lines of 100 bytes as fast as it can;
//! - `claude <interval_us> <count> <0|1>`: Claude stream-json, an assistant text `t <ns>` every
//!   `interval_us`, each after a partial-message text delta `d <ns> ` when the last word is 1
//!   (run as a `claude` profile, which reads this script on stdin);
//! - `tree`: starts a child in its own process group (as agents' tools do), prints
//!   `ready <child pid>` and sleeps; exits on SIGTERM (the default action);
//! - `sleep`: sleeps until killed;
//! - `mark <token>`: appends `<token>` as a line to `runs.txt` in its working directory (the
//!   session's workspace) and prints `m <token>`, so a job that ran twice leaves two lines.

use crate::harness::mono_ns;
use std::io::Write;
use std::time::Duration;

/// A flood line is this prefix, a 9-digit counter and this padding: 100 bytes with the newline.
pub const FLOOD_PAD: &str =
    ".................................................................................... end";

pub fn flood_line(i: u64) -> String {
    format!("x{i:09} {FLOOD_PAD}")
}

pub fn main(args: &[String]) -> i32 {
    // As a `claude` profile (the `deltas` scenario), the script is the prompt on stdin.
    let script = if args.first().is_some_and(|a| a == "-p") {
        let mut s = String::new();
        if std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).is_err() {
            return usage("<unreadable stdin>");
        }
        s
    } else {
        args.join(" ")
    };
    let words: Vec<&str> = script.split_whitespace().collect();
    let out = std::io::stdout();
    let result = match words.as_slice() {
        ["hello"] => {
            let mut o = out.lock();
            writeln!(o, "h {}", mono_ns()).and_then(|_| o.flush())
        }
        ["ticks", interval_us, count, delay_ms] => {
            match (interval_us.parse(), count.parse(), delay_ms.parse()) {
                (Ok(i), Ok(n), Ok(d)) => ticks(i, n, d),
                _ => return usage(&script),
            }
        }
        ["flood", count] => match count.parse() {
            Ok(n) => flood(n),
            Err(_) => return usage(&script),
        },
        ["claude", interval_us, count, deltas] => match (interval_us.parse(), count.parse()) {
            (Ok(i), Ok(n)) => claude(i, n, *deltas == "1"),
            _ => return usage(&script),
        },
        ["tree"] => tree(),
        ["mark", token] => mark(token),
        ["sleep"] => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => return usage(&script),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stand-in agent: {e}");
            1
        }
    }
}

fn usage(script: &str) -> i32 {
    eprintln!("stand-in agent: unknown script {script:?}");
    2
}

/// Sleeps until tick `i` is due, `interval_us` apart from `start` (drift does not add up).
fn pace(start: u64, i: u64, interval_us: u64) {
    let due = start + i * interval_us * 1000;
    let now = mono_ns();
    if due > now {
        std::thread::sleep(Duration::from_nanos(due - now));
    }
}

fn ticks(interval_us: u64, count: u64, delay_ms: u64) -> std::io::Result<()> {
    std::thread::sleep(Duration::from_millis(delay_ms));
    let start = mono_ns();
    let mut o = std::io::stdout().lock();
    for i in 0..count {
        pace(start, i, interval_us);
        writeln!(o, "t {}", mono_ns())?;
        o.flush()?;
    }
    Ok(())
}

/// Claude stream-json: per tick, with `deltas`, a partial-message line `d <ns> ` (as
/// `--include-partial-messages` prints them), then an assistant text `t <ns>`; a result at the end.
fn claude(interval_us: u64, count: u64, deltas: bool) -> std::io::Result<()> {
    let start = mono_ns();
    let mut o = std::io::stdout().lock();
    for i in 0..count {
        pace(start, i, interval_us);
        if deltas {
            let delta = format!("d {} ", mono_ns());
            writeln!(
                o,
                r#"{{"type":"stream_event","event":{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{delta}"}}}},"session_id":"bench"}}"#
            )?;
        }
        let text = format!("t {}", mono_ns());
        writeln!(
            o,
            r#"{{"type":"assistant","message":{{"content":[{{"type":"text","text":"{text}"}}]}},"session_id":"bench"}}"#
        )?;
        o.flush()?;
    }
    writeln!(
        o,
        r#"{{"type":"result","subtype":"success","is_error":false,"result":"done","session_id":"bench"}}"#
    )?;
    o.flush()
}

fn flood(count: u64) -> std::io::Result<()> {
    let mut o = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    for i in 0..count {
        writeln!(o, "{}", flood_line(i))?;
    }
    o.flush()
}

fn mark(token: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("runs.txt")?;
    writeln!(f, "{token}")?;
    let mut o = std::io::stdout().lock();
    writeln!(o, "m {token}")?;
    o.flush()
}

fn tree() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["__agent", "sleep"])
        .process_group(0)
        .spawn()?;
    let mut o = std::io::stdout().lock();
    writeln!(o, "ready {}", child.id())?;
    o.flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
