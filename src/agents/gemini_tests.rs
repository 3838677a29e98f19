//! Tests of the gemini adapter: argv/env/settings for launch, validation, and the parser against
//! real stream-json output of Gemini CLI 0.61 (copied into `testdata/`; the error capture was
//! taken with the test suite's mock model answering HTTP 500).

use super::super::tests::{ctx, kinds, parse_with, profile, spec};
use super::super::{AgentKind, launch, validate};
use super::super::{OutputParser, Parsed};
use super::*;
use crate::error::{Error, Reason};
use std::path::PathBuf;

const STREAM: &str = include_str!("testdata/gemini-stream-sample.jsonl");
const ERROR_500: &str = include_str!("testdata/gemini-error-500-sample.jsonl");
const SESSION: &str = "36ce3bf1-6df0-404a-a308-35f31a293243";

fn gemini(args: &[&str]) -> AgentProfile {
    profile(AgentKind::Gemini, "gemini", args)
}

fn parse_all(text: &str) -> (Vec<Parsed>, Summary) {
    parse_with(&gemini(&[]), text)
}

#[test]
fn launch_default_is_headless_yolo_with_default_settings() {
    let l = launch(&gemini(&[]), &spec("fix the bug"), &ctx(None)).unwrap();
    assert_eq!(l.program, "gemini");
    assert_eq!(
        l.args,
        [
            "--output-format",
            "stream-json",
            "--yolo",
            "--allowed-mcp-server-names",
            "agentd:none"
        ]
    );
    assert_eq!(l.stdin.as_deref(), Some("fix the bug"));
    assert_eq!(
        l.env,
        [("GEMINI_CLI_NO_RELAUNCH".to_owned(), "1".to_owned())]
    );
    assert_eq!(l.files.len(), 2);
    assert_eq!(
        l.files[0].0,
        PathBuf::from("/home/s1/.gemini/settings.json")
    );
    let settings: Value = serde_json::from_slice(&l.files[0].1).unwrap();
    assert_eq!(
        settings["security"]["auth"]["selectedType"],
        "gemini-api-key"
    );
    assert_eq!(settings["security"]["folderTrust"]["enabled"], false);
    // No appended prompt: the memory file is emptied, not left from an earlier job.
    assert_eq!(
        l.files[1],
        (PathBuf::from("/home/s1/.gemini/GEMINI.md"), Vec::new())
    );
    assert!(!format!("{l:?}").contains("sk-secret-value"));
}

#[test]
fn launch_maps_every_supported_option_and_resumes() {
    let mut p = gemini(&["--include-directories", "/data"]);
    p.config = Some(r#"{"general":{"maxAttempts":1}}"#.into());
    let mut s = spec("-rf is a flag; explain it");
    s.model = Some("gemini-2.5-flash".into());
    s.permission_mode = Some("auto_edit".into());
    s.append_system_prompt = Some("Answer in French.".into());
    let l = launch(&p, &s, &ctx(Some(SESSION))).unwrap();
    assert_eq!(
        l.args,
        [
            "--include-directories",
            "/data",
            "--model",
            "gemini-2.5-flash",
            "--output-format",
            "stream-json",
            "--approval-mode",
            "auto_edit",
            "--resume",
            SESSION,
            "--allowed-mcp-server-names",
            "agentd:none",
        ]
    );
    assert_eq!(l.stdin.as_deref(), Some("-rf is a flag; explain it"));
    assert_eq!(
        l.files,
        [
            (
                PathBuf::from("/home/s1/.gemini/settings.json"),
                br#"{"general":{"maxAttempts":1}}"#.to_vec()
            ),
            (
                PathBuf::from("/home/s1/.gemini/GEMINI.md"),
                b"Answer in French.".to_vec()
            ),
        ]
    );
    // A profile that chooses approvals itself gets no --yolo added.
    let l = launch(&gemini(&["--approval-mode=plan"]), &spec("hi"), &ctx(None)).unwrap();
    assert!(
        !l.args
            .iter()
            .any(|a| a == "--yolo" || a == "--approval-mode")
    );
}

#[test]
fn validate_maps_what_gemini_honours_and_refuses_the_rest() {
    let p = gemini(&[]);
    let mut s = spec("hi");
    s.model = Some("gemini-2.5-pro".into());
    s.append_system_prompt = Some("be brief".into());
    for mode in APPROVAL_MODES {
        s.permission_mode = Some(mode.into());
        assert!(validate(&p, &s).is_ok(), "{mode}");
    }
    let refusal = |p: &AgentProfile, s: &JobSpec| match validate(p, s) {
        Err(Error::InvalidArgument {
            reason,
            field,
            message,
        }) => (reason, field, message),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    for (name, set) in [
        (
            "allowed_tools",
            (|s: &mut JobSpec| s.allowed_tools = vec!["x".into()]) as fn(&mut JobSpec),
        ),
        ("max_turns", |s: &mut JobSpec| s.max_turns = Some(2)),
    ] {
        let mut s = spec("hi");
        set(&mut s);
        assert_eq!(
            refusal(&p, &s),
            (
                Reason::UnsupportedOption,
                name.to_owned(),
                format!("agent \"gemini\" (kind gemini) does not support {name}")
            )
        );
    }
    let mut s = spec("hi");
    s.permission_mode = Some("acceptEdits".into());
    let (reason, field, message) = refusal(&p, &s);
    assert_eq!(
        (reason, field.as_str()),
        (Reason::InvalidField, "permission_mode")
    );
    assert_eq!(
        message,
        "permission_mode must be one of default, auto_edit, yolo, plan"
    );
    let fixed = gemini(&["-y", "-m", "gemini-2.5-pro"]);
    let mut s = spec("hi");
    s.permission_mode = Some("plan".into());
    assert_eq!(refusal(&fixed, &s).1, "permission_mode");
    let mut s = spec("hi");
    s.model = Some("other".into());
    assert!(validate(&fixed, &s).is_ok());
}

#[test]
fn parses_a_successful_run() {
    let (events, summary) = parse_all(STREAM);
    assert!(events.iter().all(|e| e.raw.is_some()));
    let k = kinds(&events);
    assert_eq!(k.len(), 6, "{k:#?}");
    assert_eq!(
        k[0],
        &EventKind::Init {
            conversation_id: SESSION.into(),
            model: "gemini-2.5-pro".into(),
            tools: Vec::new(),
            agent_version: String::new(),
        }
    );
    assert_eq!(
        k[1],
        &EventKind::Other {
            r#type: "message/user".into()
        }
    );
    match k[2] {
        EventKind::ToolCall {
            id,
            name,
            input_json,
        } => {
            assert_eq!(id, "write_file__write_file_1795314136589_0");
            assert_eq!(name, "write_file");
            let input: Value = serde_json::from_str(input_json).unwrap();
            assert_eq!(input["file_path"], "/var/lib/agentd/ws/s3/hello.py");
            assert_eq!(input["content"], "print('hello from mock')\n");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        k[3],
        &EventKind::ToolResult {
            id: "write_file__write_file_1795314136589_0".into(),
            is_error: false,
            content: String::new()
        }
    );
    assert_eq!(
        k[4],
        &EventKind::Text {
            text: "Done.".into()
        }
    );
    let usage = Usage {
        input_tokens: 200,
        output_tokens: 40,
        duration_ms: 290,
        ..Usage::default()
    };
    assert_eq!(k[5], &EventKind::Usage(usage.clone()));
    assert_eq!(
        summary,
        Summary {
            conversation_id: Some(SESSION.into()),
            result: Some("Done.".into()),
            error: None,
            usage,
            structured: None,
        }
    );
}

#[test]
fn parses_a_model_error_in_gemini_words() {
    let (events, summary) = parse_all(ERROR_500);
    let k = kinds(&events);
    assert_eq!(k.len(), 3, "{k:#?}");
    assert!(
        matches!(k[0], EventKind::Init { conversation_id, .. } if conversation_id == "617a688b-6d37-4c6a-88e3-81966038ef52")
    );
    assert_eq!(k[2], &EventKind::Usage(Usage::default()));
    assert_eq!(
        summary.error.as_deref(),
        Some(
            r#"[API Error: {"error":{"code":500,"message":"mock model failure 500","status":"INTERNAL"}}]"#
        )
    );
    assert_eq!(summary.result, None);
}

#[test]
fn streamed_chunks_form_one_message_and_the_result_is_the_last_one() {
    let mut p = GeminiParser::default();
    let lines = [
        r#"{"type":"message","role":"assistant","content":"I'll create ","delta":true}"#,
        r#"{"type":"message","role":"assistant","content":"hello.py.","delta":true}"#,
        r#"{"type":"tool_use","tool_name":"run_shell_command","tool_id":"t1","parameters":{"command":"false"}}"#,
        r#"{"type":"tool_result","tool_id":"t1","status":"error","output":"","error":{"type":"TOOL_EXECUTION_ERROR","message":"exit 1"}}"#,
        r#"{"type":"message","role":"assistant","content":"It ","delta":true}"#,
        r#"{"type":"message","role":"assistant","content":"failed.","delta":true}"#,
    ];
    let events: Vec<Parsed> = lines.iter().flat_map(|l| p.parse_line(l, false)).collect();
    assert_eq!(
        events[0].kind,
        EventKind::Text {
            text: "I'll create ".into()
        }
    );
    assert_eq!(
        events[3].kind,
        EventKind::ToolResult {
            id: "t1".into(),
            is_error: true,
            content: "exit 1".into()
        }
    );
    // No result event yet (e.g. killed): the message so far, no error.
    assert_eq!(p.summary().result.as_deref(), Some("It failed."));
    assert_eq!(p.summary().error, None);
    // A warning is not a failure; an error-severity event is one when no result follows.
    p.parse_line(
        r#"{"type":"error","severity":"warning","message":"Loop detected, stopping execution"}"#,
        false,
    );
    assert_eq!(p.summary().error, None);
    p.parse_line(
        r#"{"type":"error","severity":"error","message":"Maximum session turns exceeded"}"#,
        false,
    );
    assert_eq!(
        p.summary().error.as_deref(),
        Some("Maximum session turns exceeded")
    );
    assert_eq!(p.summary().result, None);
    // A non-delta message replaces rather than continues.
    let mut p = GeminiParser::default();
    p.parse_line(
        r#"{"type":"message","role":"assistant","content":"a"}"#,
        false,
    );
    p.parse_line(
        r#"{"type":"message","role":"assistant","content":"b"}"#,
        false,
    );
    p.parse_line(r#"{"type":"result","status":"success","stats":{}}"#, false);
    assert_eq!(p.summary().result.as_deref(), Some("b"));
    // A result without a message is a success with no text.
    let mut p = GeminiParser::default();
    p.parse_line(r#"{"type":"result","status":"error"}"#, false);
    assert_eq!(
        p.summary().error.as_deref(),
        Some("gemini reported status \"error\"")
    );
}

#[test]
fn odd_lines_become_unparsed_or_other() {
    let mut p = GeminiParser::default();
    for line in [
        "YOLO mode is enabled. All tool calls will be automatically approved.",
        "\"x\"",
        "{}",
    ] {
        assert!(
            matches!(&p.parse_line(line, false)[..], [Parsed { kind: EventKind::Unparsed { line: l, .. }, raw: None }] if l == line),
            "{line}"
        );
    }
    assert_eq!(
        kinds(&p.parse_line(r#"{"type":"thought","subject":"x"}"#, false)),
        [&EventKind::Other {
            r#type: "thought".into()
        }]
    );
    assert_eq!(
        kinds(&p.parse_line(r#"{"type":"message","content":"x"}"#, false)),
        [&EventKind::Other {
            r#type: "message/unknown".into()
        }]
    );
    let out = p.parse_line(
        r#"{"type":"result","status":"success","stats":{"input_tokens":-3}}"#,
        false,
    );
    assert_eq!(out[0].kind, EventKind::Usage(Usage::default()));
    assert_eq!(p.summary().result, None);
    assert_eq!(p.summary().error, None);
}

proptest::proptest! {
    #[test]
    fn never_panics_on_json_shaped_lines(
        ty in "(init|message|tool_use|tool_result|error|result|x)",
        role in "(assistant|user|)",
        val in "(null|1|\"s\"|\\{\\}|\\[\\]|true)",
    ) {
        let line = format!(
            r#"{{"type":"{ty}","role":"{role}","session_id":{val},"content":{val},"delta":{val},"tool_id":{val},"parameters":{val},"status":{val},"error":{val},"output":{val},"severity":{val},"message":{val},"stats":{val}}}"#
        );
        let mut p = GeminiParser::default();
        let _ = p.parse_line(&line, false);
        let _ = p.parse_line(&line, false);
        let _ = p.summary();
    }
}

#[test]
fn a_job_that_asks_runs_gemini_acp_without_the_profiles_approval_flags() {
    let p = gemini(&["--yolo", "--approval-mode", "plan", "--model", "m1", "-y"]);
    let s = JobSpec {
        permission_mode: Some("ask".into()),
        ..spec("write x.txt y")
    };
    let l = launch(&p, &s, &ctx(Some(SESSION))).unwrap();
    assert_eq!(l.stdin, None);
    assert!(l.args.contains(&"--acp".to_owned()), "{:?}", l.args);
    assert!(
        !l.args.iter().any(|a| [
            "--yolo",
            "-y",
            "--approval-mode",
            "plan",
            "--resume",
            "--output-format"
        ]
        .contains(&a.as_str())),
        "{:?}",
        l.args
    );
    assert!(l.args.windows(2).any(|w| w == ["--model", "m1"]));
}

#[test]
fn a_job_that_asks_to_continue_sets_the_conversations_chat_files_aside() {
    let asks = JobSpec {
        permission_mode: Some("ask".into()),
        ..spec("recall")
    };
    let p = gemini(&[]);
    let rename = super::super::home_renames(&p, &asks, &ctx(Some(SESSION))).expect("a rename");
    assert_eq!(
        (rename.parent.as_str(), rename.child.as_str()),
        (".gemini/tmp", "chats")
    );
    // Gemini's own name for the conversation's recording, and the one it can never make.
    assert_eq!(
        rename
            .new_name("session-2026-12-06T09-21-36ce3bf1.jsonl")
            .as_deref(),
        Some("session-2026-12-06T09-21-agentd-36ce3bf1.jsonl")
    );
    assert_eq!(
        rename.new_name("session-2026-12-06T09-21-aaaaaaaa.jsonl"),
        None
    );
    // A new conversation, or headless `--resume`, needs none.
    assert!(super::super::home_renames(&p, &asks, &ctx(None)).is_none());
    assert!(super::super::home_renames(&p, &spec("recall"), &ctx(Some(SESSION))).is_none());
}

/// Captured from `gemini --output-format stream-json` (model gemini-2.5-flash, which is offered
/// write_todos) against the test suite's mock model: a `think` answer, whose thought part the
/// CLI does not print, and a `todo` answer.
const TODO: &str = include_str!("testdata/gemini-todo-sample.jsonl");

#[test]
fn write_todos_is_a_plan_before_its_call_and_thoughts_are_not_printed() {
    let (events, _) = parse_all(TODO);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Thinking { .. })),
        "stream-json carries no thought"
    );
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
        matches!(&events[at + 1].kind, EventKind::ToolCall { name, .. } if name == "write_todos"),
        "{:?}",
        events[at + 1]
    );
}

#[test]
fn an_image_attachment_is_an_escaped_at_path_gemini_reads_itself() {
    assert_eq!(at_path("pixel.png").as_deref(), Some("@pixel.png"));
    assert_eq!(
        at_path("shots/a b (1).JPG").as_deref(),
        Some(r"@shots/a\ b\ \(1\).JPG")
    );
    assert_eq!(at_path("x,y@z.webp").as_deref(), Some(r"@x\,y\@z.webp"));
    assert_eq!(at_path("café.gif").as_deref(), Some("@café.gif"));
    // Gemini tells images by extension, and a backslash is its path separator.
    for path in ["photo", "notes.txt", "a.png.txt", r"a\b.png", "a\nb.png"] {
        assert_eq!(at_path(path), None, "{path:?}");
    }
}
