//! The one adapter suite every JSON-lines agent passes ([`JsonLines`]), run against each agent's
//! captured samples in `testdata/`: what a line becomes does not depend on which agent printed it,
//! only what its objects mean does (each agent's own tests).

use super::acp::AcpParser;
use super::claude::ClaudeParser;
use super::codex::CodexParser;
use super::codex_app::CodexAppParser;
use super::gemini::GeminiParser;
use super::opencode::OpencodeParser;
use super::{JsonLines, OutputParser, Parsed, Summary};
use crate::domain::EventKind;

/// One JSON-lines adapter, how it reads objects, and what it was captured printing.
struct Adapter {
    name: &'static str,
    new: fn() -> Box<dyn OutputParser>,
    /// [`JsonLines::ANY_OBJECT`].
    any_object: bool,
    samples: &'static [(&'static str, &'static str)],
}

fn adapter<A: JsonLines + Default + 'static>(
    name: &'static str,
    samples: &'static [(&'static str, &'static str)],
) -> Adapter {
    Adapter {
        name,
        new: || Box::new(A::default()),
        any_object: A::ANY_OBJECT,
        samples,
    }
}

macro_rules! samples {
    ($($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("testdata/", $file)))),+]
    };
}

fn adapters() -> Vec<Adapter> {
    vec![
        adapter::<ClaudeParser>(
            "claude",
            samples!(
                "claude-stream-sample.jsonl",
                "claude-error-529-sample.jsonl",
                "claude-max-turns-sample.jsonl",
                "claude-sigint-sample.jsonl",
            ),
        ),
        adapter::<CodexParser>(
            "codex",
            samples!("codex-stream-sample.jsonl", "codex-error-500-sample.jsonl"),
        ),
        adapter::<CodexAppParser>(
            "codex app-server",
            samples!("codex-app-server-sample.jsonl"),
        ),
        adapter::<GeminiParser>(
            "gemini",
            samples!(
                "gemini-stream-sample.jsonl",
                "gemini-error-500-sample.jsonl",
                "gemini-todo-sample.jsonl",
            ),
        ),
        adapter::<OpencodeParser>(
            "opencode",
            samples!(
                "opencode-stream-sample.jsonl",
                "opencode-error-500-sample.jsonl",
                "opencode-thinking-todo-sample.jsonl",
            ),
        ),
        adapter::<AcpParser>("acp (opencode)", samples!("opencode-acp-sample.jsonl")),
    ]
}

/// Each line's events through a fresh parser, and the summary at the end.
fn parse(a: &Adapter, text: &str) -> (Vec<(String, Vec<Parsed>)>, Summary) {
    let mut p = (a.new)();
    let lines = text
        .lines()
        .map(|l| (l.to_owned(), p.parse_line(l, false)))
        .collect();
    (lines, p.summary())
}

fn is_unparsed(events: &[Parsed], line: &str, truncated: bool) -> bool {
    matches!(events, [Parsed { kind: EventKind::Unparsed { line: l, truncated: t }, raw: None }]
        if l == line && *t == truncated)
}

#[test]
fn every_sample_line_is_understood_and_its_events_keep_it() {
    for a in adapters() {
        for (file, text) in a.samples {
            let (lines, summary) = parse(&a, text);
            let mut understood = 0;
            for (line, events) in &lines {
                if line.trim().is_empty() {
                    assert!(events.is_empty(), "{file}: a blank line made {events:?}");
                    continue;
                }
                assert!(
                    !is_unparsed(events, line, false),
                    "{}: {file}: a captured line was not read: {line}",
                    a.name
                );
                for e in events {
                    assert_eq!(e.raw.as_deref(), Some(line.as_str()), "{file}: {e:?}");
                    understood += usize::from(!matches!(e.kind, EventKind::Other { .. }));
                }
            }
            assert!(understood > 0, "{}: {file}: no event", a.name);
            assert!(
                summary.conversation_id.is_some()
                    || summary.result.is_some()
                    || summary.error.is_some(),
                "{}: {file}: the summary says nothing: {summary:?}",
                a.name
            );
        }
    }
}

#[test]
fn a_cut_line_is_kept_verbatim_and_marked_truncated() {
    for a in adapters() {
        for (file, text) in a.samples {
            let first = text.lines().find(|l| l.len() > 20).expect("a line");
            let cut = &first[..first.floor_char_boundary(first.len() / 2)];
            let events = (a.new)().parse_line(cut, true);
            assert!(
                is_unparsed(&events, cut, true),
                "{}: {file}: {events:?}",
                a.name
            );
        }
    }
}

#[test]
fn lines_outside_the_protocol_are_kept_verbatim_and_blank_ones_are_nothing() {
    for a in adapters() {
        let mut p = (a.new)();
        for line in [
            "not json",
            "42",
            "[]",
            "null",
            "\"s\"",
            "{\"type\":\"x\"",
            "INFO x=1",
        ] {
            let events = p.parse_line(line, false);
            assert!(
                is_unparsed(&events, line, false),
                "{}: {line}: {events:?}",
                a.name
            );
        }
        // Objects without a string `type` are the protocol's only for JSON-RPC adapters.
        for line in ["{}", "{\"type\":7}", "{\"id\":1,\"result\":{}}"] {
            let events = p.parse_line(line, false);
            assert_eq!(
                is_unparsed(&events, line, false),
                !a.any_object,
                "{}: {line}: {events:?}",
                a.name
            );
        }
        for line in ["", "   ", "\t"] {
            assert!(p.parse_line(line, false).is_empty(), "{}: {line:?}", a.name);
        }
    }
}

/// Cut off after any line (a killed agent), a sample still summarizes, never as both an answer
/// and a failure; and the summary is the same however often it is asked for.
#[test]
fn a_run_cut_short_anywhere_summarizes_as_either_a_result_or_an_error() {
    for a in adapters() {
        for (file, text) in a.samples {
            let mut p = (a.new)();
            for (n, line) in text.lines().enumerate() {
                p.parse_line(line, false);
                let summary = p.summary();
                assert!(
                    summary.result.is_none() || summary.error.is_none(),
                    "{}: {file} after line {n}: {summary:?}",
                    a.name
                );
                assert_eq!(p.summary(), summary, "{}: {file}", a.name);
            }
        }
    }
}

proptest::proptest! {
    #[test]
    fn no_adapter_panics_on_any_line(line in "\\PC*", truncated: bool) {
        for a in adapters() {
            let mut p = (a.new)();
            let events = p.parse_line(&line, truncated);
            if line.trim().is_empty() {
                proptest::prop_assert!(events.is_empty(), "{}: {:?}", a.name, events);
            } else if !is_unparsed(&events, &line, truncated) {
                let raw = Some(line.as_str());
                proptest::prop_assert!(events.iter().all(|e| e.raw.as_deref() == raw), "{}", a.name);
            }
            let _ = p.summary();
        }
    }
}
