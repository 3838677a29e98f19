//! Tests of the claude adapter: argv/env for launch, validation, and the parser against real
//! captured stream-json from Claude Code 2.1 (copied from the shared samples into `testdata/`).

use super::super::tests::{ctx, profile, spec};
use super::super::{AgentKind, launch, parser, validate};
use super::super::{OutputParser, Parsed};
use super::*;
use crate::domain::PlanItem;
use crate::error::{Error, Reason};

const STREAM: &str = include_str!("testdata/claude-stream-sample.jsonl");
const ERROR_529: &str = include_str!("testdata/claude-error-529-sample.jsonl");
const MAX_TURNS: &str = include_str!("testdata/claude-max-turns-sample.jsonl");
const SIGINT: &str = include_str!("testdata/claude-sigint-sample.jsonl");

fn parse_all(text: &str) -> (Vec<Parsed>, Summary) {
    let mut p = parser(&profile(AgentKind::Claude, "claude", &[]));
    let events = text.lines().flat_map(|l| p.parse_line(l, false)).collect();
    (events, p.summary())
}

fn kinds(events: &[Parsed]) -> Vec<&EventKind> {
    events.iter().map(|e| &e.kind).collect()
}

fn env_of<'a>(l: &'a Launch, name: &str) -> Option<&'a str> {
    l.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn launch_default_is_unattended_stream_json() {
    let l = launch(
        &profile(AgentKind::Claude, "/opt/claude", &[]),
        &spec("fix the bug"),
        &ctx(None),
    )
    .unwrap();
    assert_eq!(l.program, "/opt/claude");
    assert_eq!(
        l.args,
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
            "--strict-mcp-config"
        ]
    );
    for (k, v) in QUIET_ENV.iter().chain(&TODO_ENV) {
        assert_eq!(env_of(&l, k), Some(*v), "{k}");
    }
    assert_eq!(env_of(&l, "IS_SANDBOX"), Some("1"));
    assert!(l.files.is_empty());
    assert_eq!(l.stdin.as_deref(), Some("fix the bug"));
    // The operator's secrets travel in the profile env, never in the agent env or argv.
    assert!(!format!("{l:?}").contains("sk-secret-value"));
}

#[test]
fn launch_passes_every_job_option_after_profile_args() {
    let p = profile(AgentKind::Claude, "claude", &["--add-dir", "/data"]);
    let mut s = spec("-rf is a flag; explain it");
    s.model = Some("sonnet".into());
    s.max_turns = Some(7);
    s.append_system_prompt = Some("--be brief".into());
    s.permission_mode = Some("acceptEdits".into());
    s.allowed_tools = vec!["Read".into(), "Bash(git commit:*)".into()];
    let l = launch(&p, &s, &ctx(Some("6d06c9ff-2dd7-4f8f-b925-5cce1a2c3cf9"))).unwrap();
    assert_eq!(
        l.args,
        [
            "--add-dir",
            "/data",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--resume",
            "6d06c9ff-2dd7-4f8f-b925-5cce1a2c3cf9",
            "--fork-session",
            "--model",
            "sonnet",
            "--max-turns",
            "7",
            "--append-system-prompt",
            "--be brief",
            "--permission-mode",
            "acceptEdits",
            "--strict-mcp-config",
            "--allowedTools",
            "Read",
            "Bash(git commit:*)",
        ]
    );
    // On stdin, a prompt that looks like an option stays the prompt, unchanged.
    assert_eq!(l.stdin.as_deref(), Some("-rf is a flag; explain it"));
    // A chosen mode that is not bypass needs no sandbox declaration.
    assert_eq!(env_of(&l, "IS_SANDBOX"), None);
}

#[test]
fn launch_respects_a_permission_mode_set_by_the_profile() {
    for args in [
        &["--permission-mode", "plan"][..],
        &["--permission-mode=plan"][..],
    ] {
        let l = launch(
            &profile(AgentKind::Claude, "claude", args),
            &spec("hi"),
            &ctx(None),
        )
        .unwrap();
        assert!(!l.args.iter().any(|a| a == SKIP_PERMISSIONS), "{args:?}");
        // The profile's choice stands alone: no job-level mode is added after it.
        assert_eq!(&l.args[..args.len()], args);
        assert!(
            !l.args[args.len()..]
                .iter()
                .any(|a| a.starts_with("--permission-mode"))
        );
        assert_eq!(env_of(&l, "IS_SANDBOX"), None);
    }
    let l = launch(
        &profile(AgentKind::Claude, "claude", &[SKIP_PERMISSIONS]),
        &spec("hi"),
        &ctx(None),
    )
    .unwrap();
    assert_eq!(l.args.iter().filter(|a| *a == SKIP_PERMISSIONS).count(), 1);
    assert_eq!(env_of(&l, "IS_SANDBOX"), Some("1"));

    let mut s = spec("hi");
    s.permission_mode = Some(BYPASS_MODE.into());
    let l = launch(&profile(AgentKind::Claude, "claude", &[]), &s, &ctx(None)).unwrap();
    assert!(!l.args.iter().any(|a| a == SKIP_PERMISSIONS));
    assert_eq!(env_of(&l, "IS_SANDBOX"), Some("1"));
}

#[test]
fn validate_accepts_all_options_and_refuses_nonsense_values() {
    let p = profile(AgentKind::Claude, "claude", &[]);
    let mut s = spec("hi");
    s.model = Some("opus".into());
    s.max_turns = Some(1);
    s.append_system_prompt = Some(String::new());
    s.permission_mode = Some("plan".into());
    s.allowed_tools = vec!["Read".into()];
    assert!(validate(&p, &s).is_ok());

    let field_of = |s: &JobSpec| match validate(&p, s) {
        Err(Error::InvalidArgument {
            reason: Reason::InvalidField,
            field,
            ..
        }) => field,
        other => panic!("expected INVALID_FIELD, got {other:?}"),
    };
    let mut bad = s.clone();
    bad.max_turns = Some(0);
    assert_eq!(field_of(&bad), "max_turns");
    let mut bad = s.clone();
    bad.model = Some(" ".into());
    assert_eq!(field_of(&bad), "model");
    let mut bad = s.clone();
    bad.permission_mode = Some(String::new());
    assert_eq!(field_of(&bad), "permission_mode");
    let mut bad = s.clone();
    bad.allowed_tools.push(String::new());
    assert_eq!(field_of(&bad), "allowed_tools");
}

#[test]
fn parses_a_successful_run() {
    let (events, summary) = parse_all(STREAM);
    assert!(events.iter().all(|e| e.raw.is_some()));
    let k = kinds(&events);
    assert_eq!(k.len(), 6, "{k:#?}");
    match k[0] {
        EventKind::Init {
            conversation_id,
            model,
            tools,
            agent_version,
        } => {
            assert_eq!(conversation_id, "6d06c9ff-2dd7-4f8f-b925-5cce1a2c3cf9");
            assert_eq!(model, "claude-opus-4-8[1m]");
            assert_eq!(tools.len(), 24);
            assert!(tools.iter().any(|t| t == "Bash"));
            assert_eq!(agent_version, "2.1.197");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        k[1],
        &EventKind::Text {
            text: "I'll create hello.py.".into()
        }
    );
    match k[2] {
        EventKind::ToolCall {
            id,
            name,
            input_json,
        } => {
            assert_eq!(id, "toolu_2e0a997962b9494a80ca5116");
            assert_eq!(name, "Write");
            let input: Value = serde_json::from_str(input_json).unwrap();
            assert_eq!(input["file_path"], "hello.py");
            assert_eq!(input["content"], "print('hello from mock')\n");
        }
        other => panic!("{other:?}"),
    }
    match k[3] {
        EventKind::ToolResult {
            id,
            is_error,
            content,
        } => {
            assert_eq!(id, "toolu_2e0a997962b9494a80ca5116");
            assert!(!is_error);
            assert!(content.starts_with("File created successfully at: hello.py"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        k[4],
        &EventKind::Text {
            text: "Done.".into()
        }
    );
    let usage = Usage {
        input_tokens: 200,
        output_tokens: 40,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
        cost_usd: Some(0.002),
        num_turns: 2,
        duration_ms: 361,
    };
    assert_eq!(k[5], &EventKind::Usage(usage.clone()));
    assert_eq!(
        summary,
        Summary {
            conversation_id: Some("6d06c9ff-2dd7-4f8f-b925-5cce1a2c3cf9".into()),
            result: Some("Done.".into()),
            error: None,
            usage,
            structured: None,
        }
    );
    // Each event keeps the exact line it came from.
    assert_eq!(events[5].raw.as_deref(), STREAM.lines().nth(5));
}

#[test]
fn parses_an_overloaded_api_error() {
    let (events, summary) = parse_all(ERROR_529);
    let k = kinds(&events);
    assert_eq!(k.len(), 4, "{k:#?}");
    assert!(matches!(k[0], EventKind::Init { .. }));
    assert_eq!(
        k[1],
        &EventKind::Other {
            r#type: "system/api_retry".into()
        }
    );
    let text = "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try \
                again in a moment. If it persists, check your inference gateway (127.0.0.1:44509).";
    assert_eq!(k[2], &EventKind::Text { text: text.into() });
    assert!(
        matches!(k[3], EventKind::Usage(u) if u.cost_usd == Some(0.0) && u.num_turns == 1 && u.duration_ms == 761)
    );
    assert_eq!(summary.error.as_deref(), Some(text));
    assert_eq!(summary.result, None);
    assert_eq!(
        summary.conversation_id.as_deref(),
        Some("c37b20b8-4108-450a-b300-8ed02a1b0e2a")
    );
}

#[test]
fn parses_max_turns() {
    let (events, summary) = parse_all(MAX_TURNS);
    let k = kinds(&events);
    assert_eq!(k.len(), 5, "{k:#?}");
    assert!(matches!(k[2], EventKind::ToolCall { name, .. } if name == "Write"));
    assert!(matches!(
        k[3],
        EventKind::ToolResult {
            is_error: false,
            ..
        }
    ));
    assert!(matches!(k[4], EventKind::Usage(u) if u.num_turns == 2 && u.output_tokens == 20));
    assert_eq!(
        summary.error.as_deref(),
        Some("error_max_turns: Reached maximum number of turns (1)")
    );
    assert_eq!(summary.result, None);
    assert_eq!(summary.usage.cost_usd, Some(0.001));
}

#[test]
fn parses_an_interrupted_tool() {
    let (events, summary) = parse_all(SIGINT);
    let k = kinds(&events);
    assert_eq!(k.len(), 5, "{k:#?}");
    match k[1] {
        EventKind::ToolCall {
            name, input_json, ..
        } => {
            assert_eq!(name, "Bash");
            assert!(input_json.contains("sleep 30; echo late > late.txt"));
        }
        other => panic!("{other:?}"),
    }
    match k[2] {
        EventKind::ToolResult {
            id,
            is_error,
            content,
        } => {
            assert_eq!(id, "toolu_6510c038899b4c6aa7bd4ee7");
            assert!(is_error);
            assert!(content.starts_with("The user doesn't want to proceed"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        k[3],
        &EventKind::Other {
            r#type: "user/text".into()
        }
    );
    assert!(matches!(k[4], EventKind::Usage(u) if u.num_turns == 3 && u.duration_ms == 2540));
    let error = summary.error.unwrap();
    assert!(error.starts_with("error_during_execution: "), "{error}");
}

#[test]
fn a_killed_run_has_no_result_but_keeps_its_api_error() {
    let (_, summary) = parse_all(&STREAM.lines().take(3).collect::<Vec<_>>().join("\n"));
    assert_eq!(summary.result, None);
    assert_eq!(summary.error, None);
    assert_eq!(summary.usage, Usage::default());
    assert_eq!(
        summary.conversation_id.as_deref(),
        Some("6d06c9ff-2dd7-4f8f-b925-5cce1a2c3cf9")
    );

    let api_error_line = ERROR_529.lines().nth(2).unwrap();
    let (_, summary) = parse_all(api_error_line);
    assert!(summary.error.unwrap().starts_with("API Error: 529"));
}

#[test]
fn odd_lines_become_unparsed_or_other() {
    // Lines outside the protocol, cut or blank: the shared suite, jsonl_tests.rs.
    let mut p = ClaudeParser::default();
    // Partial-message events other than text and thinking pieces carry nothing new: dropped.
    let out = p.parse_line(r#"{"type":"stream_event","event":{}}"#, false);
    assert!(out.is_empty(), "{out:?}");
    let out = p.parse_line(
        r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"a"},{"type":"tool_use","id":"t1","name":"Read"}]}}"#,
        false,
    );
    assert_eq!(
        kinds(&out),
        [
            &EventKind::Thinking { text: "hm".into() },
            &EventKind::Text { text: "a".into() },
            &EventKind::ToolCall {
                id: "t1".into(),
                name: "Read".into(),
                input_json: "{}".into()
            },
        ]
    );
    let out = p.parse_line(
        r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"x"}]}]}}"#,
        false,
    );
    assert_eq!(
        out[0].kind,
        EventKind::ToolResult {
            id: "t1".into(),
            is_error: false,
            // serde_json orders object keys; the content is the same JSON.
            content: r#"[{"text":"x","type":"text"}]"#.into()
        }
    );
    // Wrongly typed fields degrade to defaults rather than failing.
    let out = p.parse_line(
        r#"{"type":"result","subtype":"success","is_error":"no","num_turns":-1,"usage":[1],"total_cost_usd":"1"}"#,
        false,
    );
    assert_eq!(out[0].kind, EventKind::Usage(Usage::default()));
    assert_eq!(p.summary().result.as_deref(), Some(""));
}

proptest::proptest! {
    #[test]
    fn never_panics_on_json_shaped_lines(
        ty in "(system|assistant|user|result|x)",
        sub in "(init|success|error_max_turns|)",
        body in "(\\{\"content\":\\[\\{\"type\":\"(text|tool_use|tool_result)\"[^]]{0,20}\\]\\}|null|1|\"s\")",
    ) {
        let line = format!(r#"{{"type":"{ty}","subtype":"{sub}","message":{body},"session_id":{body},"usage":{body}}}"#);
        let mut p = ClaudeParser::default();
        let _ = p.parse_line(&line, false);
        let _ = p.summary();
    }
}

#[test]
fn capability_flags_deltas_system_prompt_schema_and_disallowed_tools() {
    let mut s = spec("p");
    s.caps.stream_deltas = true;
    s.caps.system_prompt = Some("be terse".into());
    s.caps.output_schema = Some(r#"{"type":"object"}"#.into());
    s.caps.disallowed_tools = vec!["Bash".into(), "WebFetch".into()];
    s.allowed_tools = vec!["Read".into()];
    let l = launch(&profile(AgentKind::Claude, "claude", &[]), &s, &ctx(None)).unwrap();
    let at = |flag: &str| l.args.iter().position(|a| a == flag);
    assert!(at("--include-partial-messages").is_some(), "{:?}", l.args);
    assert_eq!(l.args[at("--system-prompt").unwrap() + 1], "be terse");
    assert_eq!(
        l.args[at("--json-schema").unwrap() + 1],
        r#"{"type":"object"}"#
    );
    assert!(
        l.args
            .contains(&"--disallowedTools=Bash,WebFetch".to_owned())
    );
    // The variadic allow list still comes last.
    assert_eq!(&l.args[l.args.len() - 2..], ["--allowedTools", "Read"]);
}

#[test]
fn partial_messages_become_deltas_and_the_rest_of_the_stream_is_dropped() {
    let lines = [
        r#"{"type":"stream_event","event":{"type":"message_start","message":{}},"session_id":"s"}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}},"session_id":"s"}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hel"}},"session_id":"s"}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{"}},"session_id":"s"}"#,
        r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hmm","signature":"x"},{"type":"text","text":"Hello"}]},"session_id":"s"}"#,
    ];
    let (events, _) = parse_all(&lines.join("\n"));
    assert_eq!(
        kinds(&events),
        [
            &EventKind::ThinkingDelta { text: "hmm".into() },
            &EventKind::TextDelta { text: "Hel".into() },
            &EventKind::Thinking { text: "hmm".into() },
            &EventKind::Text {
                text: "Hello".into()
            },
        ]
    );
}

#[test]
fn todo_write_is_a_plan_beside_its_tool_call_and_structured_output_is_kept() {
    let lines = [
        r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"TodoWrite","input":{"todos":[{"content":"a","status":"completed","activeForm":"A"},{"content":"b","status":"pending","activeForm":"B"}]}}]},"session_id":"s"}"#,
        r#"{"type":"result","subtype":"success","is_error":false,"result":"","structured_output":{"n":1},"session_id":"s"}"#,
    ];
    let (events, summary) = parse_all(&lines.join("\n"));
    assert_eq!(
        events[0].kind,
        EventKind::Plan {
            items: vec![
                PlanItem {
                    content: "a".into(),
                    status: "completed".into()
                },
                PlanItem {
                    content: "b".into(),
                    status: "pending".into()
                },
            ]
        }
    );
    assert!(matches!(&events[1].kind, EventKind::ToolCall { name, .. } if name == "TodoWrite"));
    assert_eq!(summary.structured.as_deref(), Some(r#"{"n":1}"#));
}

#[test]
fn capability_options_other_kinds_lack_are_refused_naming_the_agent() {
    let mut s = spec("p");
    s.caps.disallowed_tools = vec!["Bash".into()];
    for kind in [AgentKind::Codex, AgentKind::Gemini, AgentKind::Opencode] {
        let err = validate(&profile(kind, kind.as_str(), &[]), &s).unwrap_err();
        assert_eq!(err.reason(), crate::error::Reason::UnsupportedOption);
        assert!(err.to_string().contains(kind.as_str()), "{err}");
    }
    assert!(validate(&profile(AgentKind::Claude, "claude", &[]), &s).is_ok());
}
