//! Tests of the codex adapter: argv/env/config for launch, validation, and the parser against real
//! `codex exec --json` output of Codex 0.169 (copied from the shared samples into `testdata/`).

use super::super::tests::{ctx, kinds, parse_with, profile, spec};
use super::super::{AgentKind, launch, validate};
use super::super::{OutputParser, Parsed};
use super::*;
use crate::error::{Error, Reason};
use std::path::PathBuf;

const STREAM: &str = include_str!("testdata/codex-stream-sample.jsonl");
const ERROR_500: &str = include_str!("testdata/codex-error-500-sample.jsonl");
const THREAD: &str = "01a2010b-e3cf-7352-bec5-58a3c7a93e68";

fn codex(args: &[&str]) -> AgentProfile {
    profile(AgentKind::Codex, "codex", args)
}

fn parse_all(text: &str) -> (Vec<Parsed>, Summary) {
    parse_with(&codex(&[]), text)
}

#[test]
fn launch_default_is_exec_json_in_a_workspace_write_sandbox() {
    let l = launch(&codex(&[]), &spec("fix the bug"), &ctx(None)).unwrap();
    assert_eq!(l.program, "codex");
    assert_eq!(
        l.args,
        [
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "workspace-write",
            "--",
            "-"
        ]
    );
    assert_eq!(
        l.env,
        [("CODEX_HOME".to_owned(), "/home/s1/.codex".to_owned())]
    );
    // No config in the profile: an empty one, so Codex uses its defaults and nothing the agent
    // left in CODEX_HOME.
    assert_eq!(
        l.files,
        [(PathBuf::from("/home/s1/.codex/config.toml"), Vec::new())]
    );
    assert!(!format!("{l:?}").contains("sk-secret-value"));
}

#[test]
fn launch_puts_every_option_before_resume_and_the_prompt_after_a_double_dash() {
    let mut p = codex(&["-c", "model_reasoning_effort=\"low\""]);
    p.config = Some("model = \"m\"\nmodel_provider = \"mock\"\n".into());
    let mut s = spec("-rf is a flag; explain it");
    s.model = Some("gpt-5".into());
    s.permission_mode = Some("read-only".into());
    s.append_system_prompt = Some("Say \"hi\"\nthen stop \\ ok".into());
    let l = launch(&p, &s, &ctx(Some(THREAD))).unwrap();
    assert_eq!(
        l.args,
        [
            "exec",
            "-c",
            "model_reasoning_effort=\"low\"",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "read-only",
            "--model",
            "gpt-5",
            "-c",
            r#"developer_instructions="Say \"hi\"\nthen stop \\ ok""#,
            "resume",
            THREAD,
            "--",
            "-",
        ]
    );
    assert_eq!(l.stdin.as_deref(), Some("-rf is a flag; explain it"));
    assert_eq!(
        l.files,
        [(
            PathBuf::from("/home/s1/.codex/config.toml"),
            b"model = \"m\"\nmodel_provider = \"mock\"\n".to_vec()
        )]
    );
}

#[test]
fn launch_leaves_flags_the_profile_already_gives() {
    for args in [
        &["--dangerously-bypass-approvals-and-sandbox"][..],
        &["-s", "danger-full-access"][..],
        &["--sandbox=read-only"][..],
    ] {
        let l = launch(&codex(args), &spec("hi"), &ctx(None)).unwrap();
        assert_eq!(&l.args[1..1 + args.len()], args);
        assert!(
            !l.args[1 + args.len()..]
                .iter()
                .any(|a| a == "--sandbox" || a == "-s"),
            "{:?}",
            l.args
        );
    }
    let l = launch(
        &codex(&["--json", "--skip-git-repo-check"]),
        &spec("hi"),
        &ctx(None),
    )
    .unwrap();
    assert_eq!(l.args.iter().filter(|a| *a == "--json").count(), 1);
    assert_eq!(
        l.args
            .iter()
            .filter(|a| *a == "--skip-git-repo-check")
            .count(),
        1
    );
}

#[test]
fn validate_maps_what_codex_honours_and_refuses_the_rest() {
    let p = codex(&[]);
    let mut s = spec("hi");
    s.model = Some("gpt-5".into());
    s.append_system_prompt = Some("be brief".into());
    for mode in SANDBOX_MODES {
        s.permission_mode = Some(mode.into());
        assert!(validate(&p, &s).is_ok(), "{mode}");
    }

    let refusal = |s: &JobSpec, p: &AgentProfile| match validate(p, s) {
        Err(Error::InvalidArgument {
            reason,
            field,
            message,
        }) => (reason, field, message),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let mut bad = spec("hi");
    bad.allowed_tools = vec!["shell".into()];
    assert_eq!(
        refusal(&bad, &p),
        (
            Reason::UnsupportedOption,
            "allowed_tools".into(),
            "agent \"codex\" (kind codex) does not support allowed_tools".into()
        )
    );
    let mut bad = spec("hi");
    bad.max_turns = Some(3);
    assert_eq!(
        refusal(&bad, &p),
        (
            Reason::UnsupportedOption,
            "max_turns".into(),
            "agent \"codex\" (kind codex) does not support max_turns".into()
        )
    );
    let mut bad = spec("hi");
    bad.permission_mode = Some("bypassPermissions".into());
    let (reason, field, message) = refusal(&bad, &p);
    assert_eq!(
        (reason, field.as_str()),
        (Reason::InvalidField, "permission_mode")
    );
    assert!(message.contains("read-only, workspace-write, danger-full-access"));

    // Given twice, Codex would exit 2: a job cannot override what the profile fixes.
    let fixed = codex(&["-s", "read-only", "--model=o3"]);
    let mut s = spec("hi");
    s.permission_mode = Some("workspace-write".into());
    let (reason, field, _) = refusal(&s, &fixed);
    assert_eq!(
        (reason, field.as_str()),
        (Reason::UnsupportedOption, "permission_mode")
    );
    let mut s = spec("hi");
    s.model = Some("gpt-5".into());
    let (reason, field, _) = refusal(&s, &fixed);
    assert_eq!(
        (reason, field.as_str()),
        (Reason::UnsupportedOption, "model")
    );

    let mut bad = spec("hi");
    bad.model = Some("  ".into());
    assert_eq!(refusal(&bad, &p).1, "model");
}

#[test]
fn parses_a_successful_run() {
    let (events, summary) = parse_all(STREAM);
    assert!(events.iter().all(|e| e.raw.is_some()));
    let k = kinds(&events);
    assert_eq!(k.len(), 8, "{k:#?}");
    assert_eq!(
        k[0],
        &EventKind::Init {
            conversation_id: THREAD.into(),
            model: String::new(),
            tools: Vec::new(),
            agent_version: String::new(),
        }
    );
    // The missing-metadata warning is an error *item*, not a failure.
    assert_eq!(
        k[1],
        &EventKind::Other {
            r#type: "item.completed/error".into()
        }
    );
    assert_eq!(
        k[2],
        &EventKind::Other {
            r#type: "turn.started".into()
        }
    );
    assert_eq!(
        k[3],
        &EventKind::Text {
            text: "Creating hello.py.".into()
        }
    );
    let command = "/bin/bash -lc \"printf \\\"print('hello from mock')\\\\n\\\" > hello.py && ls\"";
    match k[4] {
        EventKind::ToolCall {
            id,
            name,
            input_json,
        } => {
            assert_eq!(id, "item_2");
            assert_eq!(name, "command_execution");
            let input: Value = serde_json::from_str(input_json).unwrap();
            assert_eq!(input, json!({ "command": command }));
        }
        other => panic!("{other:?}"),
    }
    // The completion of an announced command adds only its result.
    assert_eq!(
        k[5],
        &EventKind::ToolResult {
            id: "item_2".into(),
            is_error: false,
            content: "hello.py\n".into()
        }
    );
    assert_eq!(
        k[6],
        &EventKind::Text {
            text: "Done.".into()
        }
    );
    let usage = Usage {
        input_tokens: 200,
        output_tokens: 40,
        num_turns: 1,
        ..Usage::default()
    };
    assert_eq!(k[7], &EventKind::Usage(usage.clone()));
    assert_eq!(events[7].raw.as_deref(), STREAM.lines().nth(7));
    assert_eq!(
        summary,
        Summary {
            conversation_id: Some(THREAD.into()),
            result: Some("Done.".into()),
            error: None,
            usage,
            structured: None,
        }
    );
}

#[test]
fn parses_a_failed_turn_in_codex_words() {
    let (events, summary) = parse_all(ERROR_500);
    let k = kinds(&events);
    assert_eq!(k.len(), 5, "{k:#?}");
    assert!(
        matches!(k[0], EventKind::Init { conversation_id, .. } if conversation_id == "01a2010c-7baf-7ef3-a8c7-96c752efe0e1")
    );
    assert_eq!(
        k[3],
        &EventKind::Other {
            r#type: "error".into()
        }
    );
    assert_eq!(
        k[4],
        &EventKind::Other {
            r#type: "turn.failed".into()
        }
    );
    assert_eq!(
        summary.error.as_deref(),
        Some("We’re currently experiencing high demand, which may cause temporary errors.")
    );
    assert_eq!(summary.result, None);
    assert_eq!(summary.usage, Usage::default());
}

#[test]
fn a_recovered_error_is_not_a_failure_but_an_unrecovered_one_is() {
    let mut p = CodexParser::default();
    p.parse_line(r#"{"type":"error","message":"Reconnecting... 1/5"}"#, false);
    p.parse_line(
        r#"{"type":"item.completed","item":{"id":"i","type":"agent_message","text":"ok"}}"#,
        false,
    );
    assert_eq!(p.summary().error.as_deref(), Some("Reconnecting... 1/5"));
    assert_eq!(p.summary().result, None);
    p.parse_line(
        r#"{"type":"turn.completed","usage":{"input_tokens":5}}"#,
        false,
    );
    let s = p.summary();
    assert_eq!(s.error, None);
    assert_eq!(s.result.as_deref(), Some("ok"));
    assert_eq!(s.usage.input_tokens, 5);
}

#[test]
fn tool_items_become_call_and_result_pairs() {
    let mut p = CodexParser::default();
    // A failing command: exit code decides the error flag.
    p.parse_line(
        r#"{"type":"item.started","item":{"id":"c1","type":"command_execution","command":"false","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#,
        false,
    );
    let out = p.parse_line(
        r#"{"type":"item.completed","item":{"id":"c1","type":"command_execution","command":"false","aggregated_output":"boom\n","exit_code":1,"status":"failed"}}"#,
        false,
    );
    assert_eq!(
        kinds(&out),
        [&EventKind::ToolResult {
            id: "c1".into(),
            is_error: true,
            content: "boom\n".into()
        }]
    );
    // A file change reported only on completion: both events at once.
    let out = p.parse_line(
        r#"{"type":"item.completed","item":{"id":"f1","type":"file_change","changes":[{"path":"a.txt","kind":"add"}],"status":"completed"}}"#,
        false,
    );
    assert_eq!(
        kinds(&out),
        [
            &EventKind::ToolCall {
                id: "f1".into(),
                name: "file_change".into(),
                input_json: r#"{"changes":[{"kind":"add","path":"a.txt"}]}"#.into()
            },
            &EventKind::ToolResult {
                id: "f1".into(),
                is_error: false,
                content: r#"[{"kind":"add","path":"a.txt"}]"#.into()
            }
        ]
    );
    let out = p.parse_line(
        r#"{"type":"item.completed","item":{"id":"m1","type":"mcp_tool_call","server":"docs","tool":"search","arguments":{"q":"x"},"result":null,"error":{"message":"no such tool"},"status":"failed"}}"#,
        false,
    );
    assert_eq!(
        kinds(&out),
        [
            &EventKind::ToolCall {
                id: "m1".into(),
                name: "docs.search".into(),
                input_json: r#"{"q":"x"}"#.into()
            },
            &EventKind::ToolResult {
                id: "m1".into(),
                is_error: true,
                content: "no such tool".into()
            }
        ]
    );
    let out = p.parse_line(
        r#"{"type":"item.completed","item":{"id":"r1","type":"reasoning","text":"hm"}}"#,
        false,
    );
    assert_eq!(kinds(&out), [&EventKind::Thinking { text: "hm".into() }]);
}

#[test]
fn odd_lines_become_unparsed_or_other() {
    let mut p = CodexParser::default();
    for line in [
        "Reading additional input from stdin...",
        "[]",
        "{}",
        r#"{"type":1}"#,
    ] {
        assert!(
            matches!(&p.parse_line(line, false)[..], [Parsed { kind: EventKind::Unparsed { line: l, .. }, raw: None }] if l == line),
            "{line}"
        );
    }
    assert!(p.parse_line("", false).is_empty());
    assert_eq!(
        kinds(&p.parse_line(r#"{"type":"item.updated","item":{}}"#, false)),
        [&EventKind::Other {
            r#type: "item.updated".into()
        }]
    );
    assert_eq!(
        kinds(&p.parse_line(r#"{"type":"item.completed"}"#, false)),
        [&EventKind::Other {
            r#type: "item.completed".into()
        }]
    );
    // Wrongly typed fields degrade to defaults.
    let out = p.parse_line(
        r#"{"type":"turn.completed","usage":{"input_tokens":"9"}}"#,
        false,
    );
    assert!(
        matches!(out[0].kind, EventKind::Usage(ref u) if u.input_tokens == 0 && u.num_turns == 1)
    );
    let out = p.parse_line(r#"{"type":"turn.failed","error":7}"#, false);
    assert_eq!(out.len(), 1);
    assert_eq!(p.summary().error.as_deref(), Some("turn failed"));
}

proptest::proptest! {
    #[test]
    fn never_panics_on_json_shaped_lines(
        ty in "(thread.started|item.started|item.completed|turn.completed|turn.failed|error|x)",
        item_ty in "(agent_message|command_execution|file_change|mcp_tool_call|web_search|error|)",
        val in "(null|1|\"s\"|\\{\\}|\\[\\])",
    ) {
        let line = format!(
            r#"{{"type":"{ty}","thread_id":{val},"usage":{val},"error":{val},"message":{val},"item":{{"id":{val},"type":"{item_ty}","text":{val},"command":{val},"exit_code":{val},"aggregated_output":{val},"status":{val},"error":{val},"arguments":{val}}}}}"#
        );
        let mut p = CodexParser::default();
        let _ = p.parse_line(&line, false);
        let _ = p.parse_line(&line, false);
        let _ = p.summary();
    }
}

#[test]
fn reasoning_is_thinking_and_todo_lists_are_plans() {
    let lines = [
        r#"{"type":"item.completed","item":{"id":"r1","type":"reasoning","text":"**Weighing** options"}}"#,
        r#"{"type":"item.started","item":{"id":"t1","type":"todo_list","items":[{"text":"read","completed":true},{"text":"write","completed":false}]}}"#,
    ];
    let (events, _) = parse_all(&lines.join("\n"));
    assert_eq!(
        events[0].kind,
        EventKind::Thinking {
            text: "**Weighing** options".into()
        }
    );
    let EventKind::Plan { items } = &events[1].kind else {
        panic!("{:?}", events[1].kind);
    };
    let got: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.content.as_str(), i.status.as_str()))
        .collect();
    assert_eq!(got, [("read", "completed"), ("write", "pending")]);
}

#[test]
fn an_output_schema_is_a_file_under_codex_home_given_before_resume() {
    let mut s = spec("p");
    s.caps.output_schema = Some(r#"{"type":"object"}"#.into());
    let l = launch(&codex(&[]), &s, &ctx(Some("thread-1"))).unwrap();
    let at = l.args.iter().position(|a| a == "--output-schema").unwrap();
    let resume = l.args.iter().position(|a| a == "resume").unwrap();
    assert!(at < resume, "{:?}", l.args);
    let path = PathBuf::from(&l.args[at + 1]);
    assert!(path.starts_with("/home/s1/.codex"), "{path:?}");
    assert!(
        l.files
            .iter()
            .any(|(p, c)| p == &path && c == br#"{"type":"object"}"#)
    );
}
