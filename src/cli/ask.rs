//! `agentd run --ask`: answers the job's permission requests from the terminal. Owns the asking
//! task: each request is shown (tool and input) on stderr and answered by one line of stdin —
//! `y`/`yes` allows; anything else denies, the text after `n:` telling the agent why — so a
//! script can pipe its answers in line by line. Requests are asked one at a time, in order,
//! while the event stream goes on printing.

use super::conn::Conn;
use crate::pb;
use std::io::{BufRead, Write};
use tokio::sync::mpsc;

/// Requests waiting for the person at the terminal.
const QUEUE: usize = 64;

/// The handle `follow` offers each permission request to.
pub struct Asker {
    tx: mpsc::Sender<pb::PermissionRequest>,
}

impl Asker {
    /// Starts asking for the job's requests; ends when the handle is dropped.
    pub fn start(conn: Conn, job_id: String) -> Asker {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(ask_all(conn, job_id, rx));
        Asker { tx }
    }

    /// Queues a request; one that cannot be queued is left to the job's timeout (fail-closed).
    pub fn offer(&self, r: &pb::PermissionRequest) {
        if self.tx.try_send(r.clone()).is_err() {
            note(format!(
                "agentd: too many open permission requests; {} is left to its timeout",
                r.request_id
            ));
        }
    }
}

/// An answer typed at the terminal.
#[derive(Debug, PartialEq)]
struct Answer {
    allow: bool,
    message: String,
}

/// `y`/`yes` allows; `n`, `no`, an empty line or end of input denies; `n: why` (or any other
/// text) denies with that text as the reason told to the agent.
fn parse(line: Option<&str>) -> Answer {
    let Some(line) = line.map(str::trim) else {
        return Answer {
            allow: false,
            message: "no answer: the terminal's input ended".into(),
        };
    };
    if line.eq_ignore_ascii_case("y") || line.eq_ignore_ascii_case("yes") {
        return Answer {
            allow: true,
            message: String::new(),
        };
    }
    let lower = line.to_ascii_lowercase();
    let why = if lower == "n" || lower == "no" {
        ""
    } else if lower.starts_with("no:") {
        &line[3..]
    } else if lower.starts_with("n:") {
        &line[2..]
    } else {
        line
    };
    Answer {
        allow: false,
        message: why.trim().to_owned(),
    }
}

/// What the person is shown: the tool, its input (pretty JSON) and how long they have.
fn question(r: &pb::PermissionRequest) -> String {
    let input = serde_json::from_str::<serde_json::Value>(&r.input_json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| r.input_json.clone());
    let mut q = format!("\n? the agent asks to run {}\n", r.tool);
    for line in input.lines() {
        q.push_str(&format!("    {line}\n"));
    }
    if r.timeout_seconds > 0 {
        q.push_str(&format!(
            "  (denied if not answered within {}s)\n",
            r.timeout_seconds
        ));
    }
    q.push_str("  allow? [y/n, or n: reason] ");
    q
}

async fn ask_all(conn: Conn, job_id: String, mut rx: mpsc::Receiver<pb::PermissionRequest>) {
    let mut jobs = conn.jobs();
    while let Some(r) = rx.recv().await {
        let q = question(&r);
        // The terminal is blocking I/O: one blocking thread per question.
        let answer = tokio::task::spawn_blocking(move || ask(&q))
            .await
            .unwrap_or_else(|_| parse(None));
        let sent = jobs
            .respond_to_permission(pb::RespondToPermissionRequest {
                job_id: job_id.clone(),
                request_id: r.request_id.clone(),
                allow: answer.allow,
                message: answer.message,
            })
            .await;
        if let Err(st) = sent {
            // Typically the timeout or another watcher decided first; the event stream shows
            // who did.
            note(format!(
                "agentd: the answer to {} was not taken: {}",
                r.request_id,
                st.message()
            ));
        }
    }
}

fn ask(question: &str) -> Answer {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(question.as_bytes());
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => parse(None),
        Ok(_) => parse(Some(&line)),
    }
}

fn note(text: String) {
    tokio::task::spawn_blocking(move || {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let allow = |m: &str| Answer {
            allow: true,
            message: m.into(),
        };
        let deny = |m: &str| Answer {
            allow: false,
            message: m.into(),
        };
        assert_eq!(parse(Some("y\n")), allow(""));
        assert_eq!(parse(Some(" YES ")), allow(""));
        assert_eq!(parse(Some("n")), deny(""));
        assert_eq!(parse(Some("")), deny(""));
        assert_eq!(
            parse(Some("n: use notes/ instead\n")),
            deny("use notes/ instead")
        );
        assert_eq!(parse(Some("No: not now")), deny("not now"));
        assert_eq!(parse(Some("never on main")), deny("never on main"));
        assert!(!parse(None).allow);
        assert!(!parse(Some("yes please")).allow, "only a plain yes allows");
    }
}
