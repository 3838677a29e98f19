//! Runs the stand-in Claude (`tests/fixtures/fake-claude`) with the argv and env the claude adapter
//! builds, and feeds its stdout through the claude parser: if the fake and the parser drift apart
//! (or the adapter's argv stops being acceptable), these fail.

use super::tests::{profile, spec};
use super::{AgentKind, LaunchContext, Parsed, Summary, launch, parser};
use crate::domain::{EventKind, JobSpec};
use std::path::Path;
use std::process::Command;

fn fake() -> String {
    format!("{}/tests/fixtures/fake-claude", env!("CARGO_MANIFEST_DIR"))
}

struct Run {
    events: Vec<Parsed>,
    summary: Summary,
    code: Option<i32>,
    stderr: String,
}

/// Runs one job the way the runner will: argv from `launch`, a scrubbed env, cwd = workspace.
fn run(spec: &JobSpec, workspace: &Path, home: &Path, resume: Option<&str>) -> Run {
    let p = profile(AgentKind::Claude, &fake(), &[]);
    let ctx = LaunchContext {
        workspace,
        home,
        resume_conversation: resume,
        jailed: false,
        mcp: &[],
        images: &[],
    };
    let l = launch(&p, spec, &ctx).unwrap();
    let out = Command::new(&l.program)
        .args(&l.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .current_dir(workspace)
        .stdin(super::tests::stdin_of(&l, home))
        .output()
        .unwrap();
    let mut parser = parser(&p);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let events = stdout
        .lines()
        .flat_map(|l| parser.parse_line(l, false))
        .collect();
    Run {
        events,
        summary: parser.summary(),
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn kinds(r: &Run) -> Vec<&EventKind> {
    r.events.iter().map(|e| &e.kind).collect()
}

#[test]
fn write_directive_really_writes_and_parses_like_the_real_cli() {
    let ws = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let r = run(
        &spec("write notes/a.txt hello world"),
        ws.path(),
        home.path(),
        None,
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(r.events.iter().all(|e| e.raw.is_some()));
    let k = kinds(&r);
    assert_eq!(k.len(), 5, "{k:#?}");
    let conversation = r.summary.conversation_id.clone().unwrap();
    match k[0] {
        EventKind::Init {
            conversation_id,
            tools,
            agent_version,
            ..
        } => {
            assert_eq!(conversation_id, &conversation);
            assert!(tools.iter().any(|t| t == "Write"));
            assert_eq!(agent_version, "2.1.197");
        }
        other => panic!("{other:?}"),
    }
    let call_id = match k[1] {
        EventKind::ToolCall {
            id,
            name,
            input_json,
        } => {
            assert_eq!(name, "Write");
            let input: serde_json::Value = serde_json::from_str(input_json).unwrap();
            assert_eq!(input["file_path"], "notes/a.txt");
            assert_eq!(input["content"], "hello world");
            id.clone()
        }
        other => panic!("{other:?}"),
    };
    match k[2] {
        EventKind::ToolResult {
            id,
            is_error,
            content,
        } => {
            assert_eq!(id, &call_id);
            assert!(!is_error);
            assert!(content.starts_with("File created successfully at: notes/a.txt"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        k[3],
        &EventKind::Text {
            text: "turn 1: done".into()
        }
    );
    match k[4] {
        EventKind::Usage(u) => {
            assert_eq!(u.num_turns, 2);
            assert_eq!(u.cost_usd, Some(0.002));
            assert_eq!((u.input_tokens, u.output_tokens), (200, 40));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.summary.result.as_deref(), Some("turn 1: done"));
    assert_eq!(r.summary.error, None);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/a.txt")).unwrap(),
        "hello world"
    );
}

#[test]
fn resume_continues_the_conversation_only_from_the_same_workspace_and_home() {
    let ws = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let first = run(&spec("hello"), ws.path(), home.path(), None);
    assert_eq!(first.summary.result.as_deref(), Some("turn 1: hello"));
    let id = first.summary.conversation_id.unwrap();

    let second = run(&spec("hello again"), ws.path(), home.path(), Some(&id));
    assert_eq!(second.code, Some(0), "stderr: {}", second.stderr);
    // `--fork-session`: the continuation has its own id, the first transcript stays as it was.
    let forked = second.summary.conversation_id.clone().unwrap();
    assert_ne!(forked, id);
    let again = run(&spec("hello again"), ws.path(), home.path(), Some(&id));
    assert_eq!(again.summary.result.as_deref(), Some("turn 2: hello again"));
    assert_eq!(
        second.summary.result.as_deref(),
        Some("turn 2: hello again")
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let lost = run(&spec("hello?"), elsewhere.path(), home.path(), Some(&id));
    assert_eq!(lost.code, Some(1));
    assert!(lost.events.is_empty());
    assert_eq!(
        lost.stderr.trim(),
        format!("No conversation found with session ID: {id}")
    );
}

#[test]
fn every_job_option_is_accepted_and_failures_are_reported_in_the_agents_words() {
    let ws = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut s = spec("bash echo hi ; write b.txt x");
    s.model = Some("sonnet".into());
    s.max_turns = Some(1);
    s.append_system_prompt = Some("-be terse".into());
    s.permission_mode = Some("acceptEdits".into());
    s.allowed_tools = vec!["Bash(echo:*)".into(), "Write".into()];
    let r = run(&s, ws.path(), home.path(), None);
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    assert!(matches!(kinds(&r)[0], EventKind::Init { model, .. } if model == "sonnet"));
    assert!(matches!(
        kinds(&r)[2],
        EventKind::ToolResult { is_error: false, content, .. } if content == "hi"
    ));
    assert_eq!(
        r.summary.error.as_deref(),
        Some("error_max_turns: Reached maximum number of turns (1)")
    );
    // The turn limit stopped the run before the second tool.
    assert!(!ws.path().join("b.txt").exists());

    let r = run(&spec("fail 529 Overloaded"), ws.path(), home.path(), None);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.summary.error.as_deref(),
        Some("API Error: 529 Overloaded")
    );
    assert_eq!(r.summary.result, None);

    let r = run(&spec("-dash first"), ws.path(), home.path(), None);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.summary.result.as_deref(), Some("turn 1: -dash first"));
}
