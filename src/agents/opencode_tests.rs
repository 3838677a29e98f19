//! Tests of the opencode adapter: argv/env/config for launch, validation, and the parser against
//! real `opencode run --format json` output of OpenCode 1.18 (copied into `testdata/`).

use super::super::tests::{ctx, kinds, parse_with, profile, refuses_each_option, spec};
use super::super::{AgentKind, launch, validate};
use super::super::{OutputParser, Parsed};
use super::*;
use crate::error::{Error, Reason};
use std::path::PathBuf;

const STREAM: &str = include_str!("testdata/opencode-stream-sample.jsonl");
const ERROR_500: &str = include_str!("testdata/opencode-error-500-sample.jsonl");
const SESSION: &str = "ses_dfef30a3bffeVSewjb1hxYBdG3";

fn opencode(args: &[&str]) -> AgentProfile {
    profile(AgentKind::Opencode, "opencode", args)
}

fn parse_all(text: &str) -> (Vec<Parsed>, Summary) {
    parse_with(&opencode(&[]), text)
}

fn env_of<'a>(l: &'a Launch, name: &str) -> Option<&'a str> {
    l.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn launch_default_is_run_json_auto_approved_and_quiet() {
    let l = launch(&opencode(&[]), &spec("fix the bug"), &ctx(None)).unwrap();
    assert_eq!(l.program, "opencode");
    assert_eq!(l.args, ["run", "--format", "json", "--auto", "--thinking"]);
    assert_eq!(l.stdin.as_deref(), Some("fix the bug"));
    for (k, v) in QUIET_ENV {
        assert_eq!(env_of(&l, k), Some(v), "{k}");
    }
    // Without a profile config: empty configs, so nothing the agent left in ~/.config/opencode
    // (an MCP server, a provider) counts.
    assert_eq!(
        env_of(&l, "OPENCODE_CONFIG"),
        Some("/home/s1/.config/opencode/opencode.json")
    );
    let names: Vec<String> = l
        .files
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "/home/s1/.config/opencode/opencode.json",
            "/home/s1/.config/opencode/config.json",
            "/home/s1/.config/opencode/opencode.jsonc"
        ]
    );
    assert!(l.files.iter().all(|(_, c)| c == b"{}"));
    assert!(!format!("{l:?}").contains("sk-secret-value"));
}

#[test]
fn launch_writes_the_profile_config_and_resumes_the_session() {
    let mut p = opencode(&["--agent", "build", "--auto"]);
    let config = r#"{"model":"mock/mock-model","autoupdate":false}"#;
    p.config = Some(config.into());
    let mut s = spec("-x starts with a dash");
    s.model = Some("mock/other".into());
    let l = launch(&p, &s, &ctx(Some(SESSION))).unwrap();
    assert_eq!(
        l.args,
        [
            "run",
            "--agent",
            "build",
            "--auto",
            "--format",
            "json",
            "--thinking",
            "--model",
            "mock/other",
            "--session",
            SESSION,
        ]
    );
    assert_eq!(l.stdin.as_deref(), Some("-x starts with a dash"));
    assert_eq!(
        env_of(&l, "OPENCODE_CONFIG"),
        Some("/home/s1/.config/opencode/opencode.json")
    );
    assert_eq!(
        l.files[0],
        (
            PathBuf::from("/home/s1/.config/opencode/opencode.json"),
            config.as_bytes().to_vec()
        )
    );
}

#[test]
fn validate_accepts_a_model_and_refuses_the_rest_naming_it() {
    let p = opencode(&[]);
    let mut s = spec("hi");
    s.model = Some("mock/mock-model".into());
    assert!(validate(&p, &s).is_ok());
    refuses_each_option(
        &p,
        "agent \"opencode\" (kind opencode)",
        &[
            "allowed_tools",
            "max_turns",
            "append_system_prompt",
            "permission_mode",
        ],
    );
    let mut s = spec("hi");
    s.model = Some(String::new());
    assert!(matches!(
        validate(&p, &s),
        Err(Error::InvalidArgument { reason: Reason::InvalidField, field, .. }) if field == "model"
    ));
}

#[test]
fn parses_a_successful_run() {
    let (events, summary) = parse_all(STREAM);
    assert!(events.iter().all(|e| e.raw.is_some()));
    let k = kinds(&events);
    assert_eq!(k.len(), 9, "{k:#?}");
    assert_eq!(
        k[0],
        &EventKind::Init {
            conversation_id: SESSION.into(),
            model: String::new(),
            tools: Vec::new(),
            agent_version: String::new(),
        }
    );
    // The stand-in init comes from the first line, which is also a step start.
    assert_eq!(events[0].raw, events[1].raw);
    assert_eq!(
        k[1],
        &EventKind::Other {
            r#type: "step_start".into()
        }
    );
    assert_eq!(
        k[2],
        &EventKind::Text {
            text: "Creating hello.py.".into()
        }
    );
    match k[3] {
        EventKind::ToolCall {
            id,
            name,
            input_json,
        } => {
            assert_eq!(id, "call_ad58b6ee699142fdaccf2f3e");
            assert_eq!(name, "write");
            let input: Value = serde_json::from_str(input_json).unwrap();
            assert_eq!(input["filePath"], "/var/lib/agentd/ws/s4/hello.py");
            assert_eq!(input["content"], "print('hello from mock')\n");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        k[4],
        &EventKind::ToolResult {
            id: "call_ad58b6ee699142fdaccf2f3e".into(),
            is_error: false,
            content: "Wrote file successfully.".into()
        }
    );
    let step = Usage {
        input_tokens: 100,
        output_tokens: 20,
        cost_usd: Some(0.0),
        num_turns: 1,
        ..Usage::default()
    };
    assert_eq!(k[5], &EventKind::Usage(step));
    assert_eq!(
        k[6],
        &EventKind::Other {
            r#type: "step_start".into()
        }
    );
    assert_eq!(
        k[7],
        &EventKind::Text {
            text: "Done.".into()
        }
    );
    // Usage events carry the totals so far.
    let total = Usage {
        input_tokens: 200,
        output_tokens: 40,
        cost_usd: Some(0.0),
        num_turns: 2,
        ..Usage::default()
    };
    assert_eq!(k[8], &EventKind::Usage(total.clone()));
    assert_eq!(
        summary,
        Summary {
            conversation_id: Some(SESSION.into()),
            result: Some("Done.".into()),
            error: None,
            usage: total,
            structured: None,
        }
    );
}

#[test]
fn parses_a_model_error_in_opencode_words() {
    let (events, summary) = parse_all(ERROR_500);
    let k = kinds(&events);
    assert_eq!(k.len(), 2, "{k:#?}");
    assert!(
        matches!(k[0], EventKind::Init { conversation_id, .. } if conversation_id == "ses_dfef2285dffefwZxA6lobdoBDJ")
    );
    assert_eq!(
        k[1],
        &EventKind::Other {
            r#type: "error".into()
        }
    );
    assert_eq!(summary.error.as_deref(), Some("mock internal error"));
    assert_eq!(summary.result, None);
    assert_eq!(
        summary.conversation_id.as_deref(),
        Some("ses_dfef2285dffefwZxA6lobdoBDJ")
    );
}

#[test]
fn a_failed_tool_is_an_error_result_with_its_message() {
    let mut p = OpencodeParser::default();
    let out = p.parse_line(
        r#"{"type":"tool_use","sessionID":"ses_1","part":{"type":"tool","tool":"bash","callID":"c9","state":{"status":"error","input":{"command":"false"},"error":"Command failed with exit code 1"}}}"#,
        false,
    );
    assert_eq!(
        kinds(&out),
        [
            &EventKind::Init {
                conversation_id: "ses_1".into(),
                model: String::new(),
                tools: Vec::new(),
                agent_version: String::new(),
            },
            &EventKind::ToolCall {
                id: "c9".into(),
                name: "bash".into(),
                input_json: r#"{"command":"false"}"#.into()
            },
            &EventKind::ToolResult {
                id: "c9".into(),
                is_error: true,
                content: "Command failed with exit code 1".into()
            }
        ]
    );
    // Init only once per run.
    let out = p.parse_line(
        r#"{"type":"snapshot","sessionID":"ses_1","part":{}}"#,
        false,
    );
    assert_eq!(
        kinds(&out),
        [&EventKind::Other {
            r#type: "snapshot".into()
        }]
    );
    // An error without data falls back to its name.
    p.parse_line(r#"{"type":"error","error":{"name":"UnknownError"}}"#, false);
    assert_eq!(p.summary().error.as_deref(), Some("UnknownError"));
}

#[test]
fn odd_lines_become_unparsed_or_other() {
    let mut p = OpencodeParser::default();
    for line in ["INFO  service=bus", "1", "{}", r#"{"type":null}"#] {
        assert!(
            matches!(&p.parse_line(line, false)[..], [Parsed { kind: EventKind::Unparsed { line: l, .. }, raw: None }] if l == line),
            "{line}"
        );
    }
    assert!(p.parse_line(" ", false).is_empty());
    // Fields of the wrong type degrade to defaults; a missing cost stays unreported.
    let out = p.parse_line(
        r#"{"type":"step_finish","part":{"tokens":{"input":"5","cache":3}}}"#,
        false,
    );
    assert_eq!(
        out[0].kind,
        EventKind::Usage(Usage {
            num_turns: 1,
            ..Usage::default()
        })
    );
    let out = p.parse_line(r#"{"type":"text","part":null}"#, false);
    assert_eq!(
        out[0].kind,
        EventKind::Text {
            text: String::new()
        }
    );
    assert_eq!(p.summary().conversation_id, None);
}

proptest::proptest! {
    #[test]
    fn never_panics_on_json_shaped_lines(
        ty in "(step_start|text|tool_use|step_finish|error|reasoning|x)",
        val in "(null|1|\"s\"|\\{\\}|\\[\\]|-1.5)",
    ) {
        let line = format!(
            r#"{{"type":"{ty}","sessionID":{val},"error":{val},"part":{{"text":{val},"callID":{val},"tool":{val},"state":{{"status":{val},"input":{val},"output":{val},"error":{val}}},"tokens":{{"input":{val},"cache":{val}}},"cost":{val}}}}}"#
        );
        let mut p = OpencodeParser::default();
        let _ = p.parse_line(&line, false);
        let _ = p.summary();
    }
}

/// Captured from `opencode run --format json --thinking` against the test suite's mock model:
/// a `think` answer (reasoning, then text) and a `todo` answer (a todowrite call).
const THINKING_TODO: &str = include_str!("testdata/opencode-thinking-todo-sample.jsonl");

#[test]
fn reasoning_is_thinking_and_todowrite_is_a_plan_before_its_call() {
    let (events, _) = parse_all(THINKING_TODO);
    let thinking: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Thinking { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(thinking, ["about the deep structure"]);
    let at = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::Plan { .. }))
        .expect("a plan event");
    let EventKind::Plan { items } = &events[at].kind else {
        unreachable!()
    };
    let items: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.content.as_str(), i.status.as_str()))
        .collect();
    assert_eq!(
        items,
        [("write the tests", "in_progress"), ("ship it", "pending")]
    );
    assert!(
        matches!(&events[at + 1].kind, EventKind::ToolCall { name, .. } if name == "todowrite"),
        "{:?}",
        events[at + 1]
    );
}
