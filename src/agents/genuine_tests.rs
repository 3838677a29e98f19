//! Runs the genuine Codex, OpenCode and Gemini CLIs (installed by `scripts/install-agents` into
//! `.cache/agents`) with exactly the argv, env and config files their adapters build, against the
//! scripted model server `tests/fixtures/mock-model`, and feeds their stdout through the adapters'
//! parsers. Ignored by default (they need the installed CLIs and take seconds each):
//! `cargo test --lib agents::genuine_tests -- --ignored --test-threads 1`.
//!
//! The profiles here are the ones the README documents for pointing each CLI at a local server.

use super::tests::{spec, stdin_of};
use super::{AgentKind, AgentProfile, LaunchContext, Parsed, Summary, launch, parser};
use crate::domain::{EventKind, JobSpec};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The scripted model server; it exits when its stdin closes (when this is dropped).
struct Mock {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
}

impl Mock {
    fn start() -> Mock {
        let mut child = Command::new(root().join("tests/fixtures/mock-model"))
            .args(["--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        Mock {
            child,
            _stdin: stdin,
            port,
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn profile(kind: AgentKind, port: u16) -> AgentProfile {
    let bin = root()
        .join(".cache/agents/node_modules/.bin")
        .join(kind.as_str());
    let base = format!("http://127.0.0.1:{port}");
    let (env, config): (Vec<(&str, String)>, String) = match kind {
        AgentKind::Codex => (
            vec![("MOCK_API_KEY", "test-key".into())],
            format!(
                r#"model = "mock-model"
model_provider = "mock"

[model_providers.mock]
name = "mock"
base_url = "{base}/v1"
env_key = "MOCK_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"#
            ),
        ),
        AgentKind::Opencode => (
            vec![("MOCK_API_KEY", "test-key".into())],
            format!(
                r#"{{
  "$schema": "https://opencode.ai/config.json",
  "provider": {{
    "mock": {{
      "npm": "@ai-sdk/openai-compatible",
      "name": "Mock",
      "options": {{ "baseURL": "{base}/v1", "apiKey": "{{env:MOCK_API_KEY}}" }},
      "models": {{ "mock-model": {{ "name": "Mock", "tool_call": true }} }}
    }}
  }},
  "model": "mock/mock-model",
  "permission": {{ "edit": "allow", "bash": "allow" }},
  "autoupdate": false,
  "share": "disabled"
}}
"#
            ),
        ),
        AgentKind::Gemini => (
            vec![
                ("GEMINI_API_KEY", "test-key".into()),
                ("GOOGLE_GEMINI_BASE_URL", base.clone()),
            ],
            r#"{
  "security": { "auth": { "selectedType": "gemini-api-key" }, "folderTrust": { "enabled": false } },
  "general": { "maxAttempts": 1, "enableAutoUpdate": false, "enableAutoUpdateNotification": false },
  "privacy": { "usageStatisticsEnabled": false }
}
"#
            .into(),
        ),
        AgentKind::Claude | AgentKind::Command => unreachable!(),
    };
    AgentProfile {
        name: kind.as_str().into(),
        kind,
        command: bin.to_string_lossy().into_owned(),
        args: match kind {
            AgentKind::Gemini => vec!["--model".into(), "mock-model".into()],
            _ => Vec::new(),
        },
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        config: Some(config),
    }
}

struct Run {
    events: Vec<Parsed>,
    summary: Summary,
    code: Option<i32>,
    stderr: String,
}

/// One job the way the runner runs it: files written, a scrubbed env with HOME, cwd = workspace.
fn run(p: &AgentProfile, spec: &JobSpec, dir: &Path, resume: Option<&str>) -> Run {
    let (workspace, home) = (dir.join("ws"), dir.join("home"));
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let ctx = LaunchContext {
        workspace: &workspace,
        home: &home,
        resume_conversation: resume,
        jailed: false,
        mcp: &[],
        images: &[],
    };
    let l = launch(p, spec, &ctx).unwrap();
    for (path, content) in &l.files {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let env: BTreeMap<&str, &str> = [("PATH", "/usr/local/bin:/usr/bin:/bin")]
        .into_iter()
        .chain([("HOME", home.to_str().unwrap())])
        .chain(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .chain(p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    let out = Command::new("timeout")
        .arg("120")
        .arg(&l.program)
        .args(&l.args)
        .env_clear()
        .envs(env)
        .current_dir(&workspace)
        .stdin(stdin_of(&l, &home))
        .output()
        .unwrap();
    let mut parser = parser(p);
    let stdout = String::from_utf8_lossy(&out.stdout);
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

/// A tool-using job, then a second job of the same session that must see the first turn.
fn writes_a_file_and_continues_the_conversation(kind: AgentKind) {
    let mock = Mock::start();
    let p = profile(kind, mock.port);
    let dir = tempfile::tempdir().unwrap();

    let first = run(&p, &spec("write hello.txt hi there"), dir.path(), None);
    assert_eq!(first.code, Some(0), "{}\n{:#?}", first.stderr, first.events);
    let content = std::fs::read_to_string(dir.path().join("ws/hello.txt")).unwrap();
    assert_eq!(content.trim_end(), "hi there");
    let kinds: Vec<&EventKind> = first.events.iter().map(|e| &e.kind).collect();
    assert!(matches!(kinds[0], EventKind::Init { .. }), "{kinds:#?}");
    let call_id = kinds
        .iter()
        .find_map(|k| match k {
            EventKind::ToolCall { id, .. } => Some(id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool call: {kinds:#?}"));
    assert!(
        kinds.iter().any(
            |k| matches!(k, EventKind::ToolResult { id, is_error: false, .. } if *id == call_id)
        ),
        "{kinds:#?}"
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::Usage(u) if u.input_tokens > 0))
    );
    assert!(
        !kinds
            .iter()
            .any(|k| matches!(k, EventKind::Unparsed { .. })),
        "{kinds:#?}"
    );
    let s = &first.summary;
    assert_eq!(s.error, None);
    assert!(
        s.result
            .as_deref()
            .is_some_and(|r| r.starts_with("Done. Tool said:")),
        "{s:?}"
    );
    let conversation = s.conversation_id.clone().unwrap();

    let r = run(&p, &spec("remember kiwi"), dir.path(), Some(&conversation));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Claude forks a new id on every resume (issue #18); the others continue the same one.
    let remembered = r.summary.conversation_id.clone().unwrap();
    assert_eq!(kind == AgentKind::Claude, remembered != conversation);
    let r = run(&p, &spec("recall"), dir.path(), Some(&remembered));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let recalled = r.summary.conversation_id.clone().unwrap();
    assert_eq!(kind == AgentKind::Claude, recalled != remembered);
    // The mock recalls only what an earlier message of the same request said.
    assert_eq!(
        r.summary.result.as_deref(),
        Some("You asked me to remember kiwi."),
        "{:#?}",
        r.events
    );
    // A prompt starting with `-` reaches the CLI as the prompt, not as options.
    let r = run(&p, &spec("-x --y"), dir.path(), Some(&conversation));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.summary.result.as_deref(), Some("mock reply: -x --y"));
}

#[test]
#[ignore = "needs scripts/install-agents; run with --ignored"]
fn codex_genuine() {
    writes_a_file_and_continues_the_conversation(AgentKind::Codex);
}

#[test]
#[ignore = "needs scripts/install-agents; run with --ignored"]
fn opencode_genuine() {
    writes_a_file_and_continues_the_conversation(AgentKind::Opencode);
}

#[test]
#[ignore = "needs scripts/install-agents; run with --ignored"]
fn gemini_genuine() {
    writes_a_file_and_continues_the_conversation(AgentKind::Gemini);
}
