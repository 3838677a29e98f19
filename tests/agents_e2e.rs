//! End-to-end tests with the genuine agent CLIs: the real agentd binary runs Claude Code, Codex,
//! OpenCode and Gemini CLI, installed by `scripts/install-agents` into `.cache/agents`, each CLI
//! talking to `tests/fixtures/mock-model`, a scripted model server on 127.0.0.1. The CLIs really
//! run their own tools in the session workspace; the mock only decides what the "model" says (see
//! the prompt language at the top of that script). Nothing here reaches the internet except what
//! a CLI itself does on a fresh HOME (OpenCode asks the npm registry for plugin metadata).
//!
//! Every scenario is one test per agent: a file written through the agent's own tool shows up in
//! GetJobOutputs, a shell command really runs, the second job of a session continues the first
//! one's conversation, an HTTP 500 fails the job with the agent's message (in seconds: retries are
//! off in the profiles), a cancel during a long tool call leaves no process behind, and max turns
//! is honoured or refused as an unsupported option. At most `AGENTS_E2E_PARALLEL` (default 2)
//! scenarios run at once: each starts a heavyweight CLI.

mod common;

use agentd::pb;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest a single scenario may take before it fails instead of hanging the suite.
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);
/// Job timeout asked of agentd: generous, the CLIs start slowly on a loaded machine.
const JOB_TIMEOUT_SECONDS: u32 = 180;

static SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let n = std::env::var("AGENTS_E2E_PARALLEL")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2);
    Arc::new(Semaphore::new(n))
});

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The installed CLI, or a failure that says how to install it.
fn cli(bin: &str) -> PathBuf {
    let path = root().join(".cache/agents/node_modules/.bin").join(bin);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-agents first (scripts/test runs it) to install the \
         genuine agent CLIs into .cache/agents",
        path.display()
    );
    path
}

/// One agent under test: how its profile is written and what it can do.
struct Agent {
    /// Profile name and kind.
    name: &'static str,
    bin: &'static str,
    /// The `[agents.<name>]` table pointing the CLI at the mock at `base` (`http://127.0.0.1:P`).
    profile: fn(cli: &Path, base: &str) -> String,
    /// Text the failed job's error must contain after an HTTP 500 (`None`: any, the CLI words it
    /// its own way).
    error_500_text: Option<&'static str>,
    /// The `sleep <n>` argument of this agent's cancel test, unique across the test suites so
    /// that `common::sleepers` sees only this test's tool process.
    sleep_secs: &'static str,
    /// Whether the agent honours `max_turns` (otherwise submit must refuse it).
    max_turns: bool,
    /// The tool its permission requests name for the mock's `write <path> <text>` (a file tool,
    /// or the shell tool for agents that write files with `printf`).
    write_tool: &'static str,
    /// Whether a turn interrupted while the model answers stays in the conversation (Gemini CLI
    /// rolls its history back to before that turn's prompt).
    keeps_interrupted_turn: bool,
}

/// The permission rule of `agent`'s write tool for paths matching `path_glob`: a file tool's
/// pattern is the path; the shell tool's is the command, which ends with `> <path>`.
fn write_rule(agent: &Agent, path_glob: &str) -> String {
    match agent.write_tool {
        "Bash" => format!("Bash(*{path_glob})"),
        tool => format!("{tool}({path_glob})"),
    }
}

fn toml_str(s: &str) -> String {
    // TOML basic strings share JSON's escapes for everything that can occur here.
    serde_json::to_string(s).expect("string")
}

static CLAUDE: Agent = Agent {
    name: "claude",
    bin: "claude",
    profile: common::mock_model::claude_profile,
    error_500_text: Some("mock model failure 500"),
    sleep_secs: "3601",
    write_tool: "Write",
    max_turns: true,
    keeps_interrupted_turn: true,
};

static CODEX: Agent = Agent {
    name: "codex",
    bin: "codex",
    profile: |cli, base| {
        // Codex reads its provider from its own config.toml (written into the session's
        // CODEX_HOME by the adapter); `env_key` names the variable holding the key.
        let config = format!(
            "model = \"mock-model\"\n\
             model_provider = \"mock\"\n\
             [model_providers.mock]\n\
             name = \"mock\"\n\
             base_url = \"{base}/v1\"\n\
             env_key = \"MOCK_API_KEY\"\n\
             wire_api = \"responses\"\n\
             request_max_retries = 0\n\
             stream_max_retries = 0\n"
        );
        format!(
            "[agents.codex]\nkind = \"codex\"\ncommand = {}\nconfig = {}\n\
             [agents.codex.env]\nMOCK_API_KEY = \"sk-codex-e2e-mock-key\"\n",
            toml_str(&cli.to_string_lossy()),
            toml_str(&config)
        )
    },
    // Codex words every HTTP 500 its own way ("We're currently experiencing high demand…").
    error_500_text: None,
    sleep_secs: "3602",
    write_tool: "Bash",
    max_turns: false,
    keeps_interrupted_turn: true,
};

static OPENCODE: Agent = Agent {
    name: "opencode",
    bin: "opencode",
    profile: |cli, base| {
        let config = serde_json::json!({
            "$schema": "https://opencode.ai/config.json",
            "provider": {
                "mock": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "Mock",
                    "options": { "baseURL": format!("{base}/v1"), "apiKey": "{env:MOCK_API_KEY}" },
                    "models": { "mock-model": { "name": "Mock", "tool_call": true, "attachment": true,
                        "modalities": { "input": ["text", "image"], "output": ["text"] } } }
                }
            },
            "model": "mock/mock-model",
            "permission": { "edit": "allow", "bash": "allow" },
            "autoupdate": false,
            "share": "disabled"
        });
        format!(
            "[agents.opencode]\nkind = \"opencode\"\ncommand = {}\nconfig = {}\n\
             [agents.opencode.env]\nMOCK_API_KEY = \"sk-opencode-e2e-mock-key\"\n",
            toml_str(&cli.to_string_lossy()),
            toml_str(&config.to_string())
        )
    },
    error_500_text: Some("mock model failure 500"),
    sleep_secs: "3603",
    write_tool: "Write",
    max_turns: false,
    keeps_interrupted_turn: true,
};

static GEMINI: Agent = Agent {
    name: "gemini",
    bin: "gemini",
    profile: |cli, base| {
        // `general.maxAttempts = 1` turns Gemini CLI's retries off.
        let settings = serde_json::json!({
            "security": {
                "auth": { "selectedType": "gemini-api-key" },
                "folderTrust": { "enabled": false }
            },
            "general": {
                "maxAttempts": 1,
                "enableAutoUpdate": false,
                "enableAutoUpdateNotification": false
            },
            "privacy": { "usageStatisticsEnabled": false }
        });
        format!(
            "[agents.gemini]\nkind = \"gemini\"\ncommand = {}\n\
             args = [\"--model\", \"mock-model\"]\nconfig = {}\n\
             [agents.gemini.env]\nGEMINI_API_KEY = \"gemini-e2e-mock-key\"\n\
             GOOGLE_GEMINI_BASE_URL = {}\n",
            toml_str(&cli.to_string_lossy()),
            toml_str(&settings.to_string()),
            toml_str(base)
        )
    },
    error_500_text: Some("mock model failure 500"),
    sleep_secs: "3604",
    write_tool: "Write",
    max_turns: false,
    keeps_interrupted_turn: false,
};

use common::mock_model::MockModel as Mock;

/// One scenario's world: a mock, an agentd configured for the agent, a client and a session.
struct World {
    agent: &'static Agent,
    c: Clients,
    session: String,
    server: TestServer,
    mock: Mock,
    _dir: tempfile::TempDir,
    _slot: OwnedSemaphorePermit,
}

impl World {
    async fn new(agent: &'static Agent) -> World {
        Self::with_config(agent, |_| String::new()).await
    }

    /// A world whose config adds `extra(dir)` (TOML, given the scenario's temp dir) to the
    /// agent's profile.
    async fn with_config(agent: &'static Agent, extra: impl FnOnce(&Path) -> String) -> World {
        let cli = cli(agent.bin);
        let slot = SLOTS.clone().acquire_owned().await.expect("semaphore");
        let dir = tempfile::tempdir().expect("temp dir");
        let mock = Mock::start(dir.path(), &[]);
        let config = format!("{}{}", (agent.profile)(&cli, &mock.base), extra(dir.path()));
        let server = TestServer::start_with(Options {
            config: Some(config),
            ..Default::default()
        });
        let mut c = server.clients(KEY_A).await;
        let session = c
            .create_session(&[("README.md", b"# e2e\n")])
            .await
            .session_id;
        World {
            agent,
            c,
            session,
            server,
            mock,
            _dir: dir,
            _slot: slot,
        }
    }

    fn request(&self, prompt: &str) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            session_id: self.session.clone(),
            agent: self.agent.name.into(),
            prompt: prompt.into(),
            timeout_seconds: JOB_TIMEOUT_SECONDS,
            ..Default::default()
        }
    }

    async fn submit(&mut self, req: pb::SubmitJobRequest) -> Result<pb::Job, tonic::Status> {
        self.c
            .jobs
            .submit_job(req)
            .await
            .map(|r| r.into_inner().job.expect("job"))
    }

    /// Submits, waits for the final event and returns the finished job with its events.
    async fn run(&mut self, prompt: &str) -> (pb::Job, Vec<pb::JobEvent>) {
        let job = self
            .submit(self.request(prompt))
            .await
            .unwrap_or_else(|st| panic!("submit {prompt:?} to {}: {st:?}", self.agent.name));
        self.finish(&job.job_id).await
    }

    async fn finish(&mut self, job_id: &str) -> (pb::Job, Vec<pb::JobEvent>) {
        let events = self.c.events(job_id, 0).await;
        (self.c.get_job(job_id).await, events)
    }

    /// Everything worth seeing when an assertion fails.
    fn explain(&self, job: &pb::Job, events: &[pb::JobEvent]) -> String {
        let mut out = format!(
            "agent {}: state {:?}, error {:?}, result {:?}\nevents:\n",
            self.agent.name,
            pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified),
            job.error_message,
            job.result
        );
        for e in events {
            let detail = match &e.kind {
                Some(pb::job_event::Kind::Text(t)) => t.text.clone(),
                Some(pb::job_event::Kind::ToolCall(t)) => format!("{} {}", t.name, t.input_json),
                Some(pb::job_event::Kind::ToolResult(t)) => {
                    format!("error={} {}", t.is_error, t.content)
                }
                Some(pb::job_event::Kind::Stderr(l)) | Some(pb::job_event::Kind::Unparsed(l)) => {
                    l.line.clone()
                }
                Some(pb::job_event::Kind::Other(o)) => o.r#type.clone(),
                Some(pb::job_event::Kind::Finished(f)) => {
                    format!("{:?} {}", f.state, f.error_message)
                }
                _ => String::new(),
            };
            let detail: String = detail.chars().take(300).collect();
            out.push_str(&format!("  {:>3} {:<11} {detail}\n", e.seq, kind(e)));
        }
        out.push_str("mock requests:\n");
        for line in self.mock.requests_text().lines() {
            let line: String = line.chars().take(400).collect();
            out.push_str(&format!("  {line}\n"));
        }
        out
    }

    fn expect_state(&self, job: &pb::Job, events: &[pb::JobEvent], state: pb::JobState) {
        assert_eq!(
            job.state,
            state as i32,
            "expected {state:?}\n{}",
            self.explain(job, events)
        );
        assert_eq!(
            events.last().map(kind),
            Some("finished"),
            "{}",
            self.explain(job, events)
        );
    }
}

/// Runs a scenario within [`SCENARIO_LIMIT`] (the wait for a slot in [`World::new`] is not
/// counted).
async fn scenario<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(SCENARIO_LIMIT, f)
        .await
        .expect("scenario took longer than its limit");
}

fn tool_calls(events: &[pb::JobEvent]) -> Vec<pb::ToolCall> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ToolCall(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn tool_results(events: &[pb::JobEvent]) -> Vec<pb::ToolResult> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ToolResult(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// Live processes whose working directory is under `dir` (zombies have none, so are not listed).
fn processes_in(dir: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(dir) {
            let cmd = std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            out.push((pid, cmd));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Scenarios, written once for every agent.

async fn writes_a_file_seen_in_job_outputs(mut w: World) {
    let agent = w.agent;
    let text = format!("written by {} through its own tool", agent.name);
    let (job, events) = w.run(&format!("write e2e-note.txt {text}")).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    // Whichever agent runs, the stream has the same shape.
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(kinds.first(), Some(&"started"), "{why}");
    for k in ["init", "text", "tool_call", "tool_result", "usage"] {
        assert!(kinds.contains(&k), "no {k} event\n{why}");
    }
    let usage = job.usage.unwrap_or_default();
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0, "{why}");
    assert!(
        tool_calls(&events)
            .iter()
            .any(|t| t.input_json.contains("e2e-note.txt")),
        "no tool call names the file\n{why}"
    );
    assert!(!tool_results(&events).is_empty(), "no tool result\n{why}");
    assert!(job.result.starts_with("Done."), "{why}");
    assert!(!job.conversation_id.is_empty(), "{why}");

    let content =
        w.c.download(&w.session, "e2e-note.txt")
            .await
            .expect("download");
    assert_eq!(String::from_utf8_lossy(&content), format!("{text}\n"));
    let outputs =
        w.c.files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: w.session.clone(),
                job_id: job.job_id.clone(),
                ..Default::default()
            })
            .await
            .expect("outputs")
            .into_inner();
    let paths: Vec<(&str, i32)> = outputs
        .changes
        .iter()
        .map(|c| (c.path.as_str(), c.kind))
        .collect();
    assert!(
        paths.contains(&("e2e-note.txt", pb::ChangeKind::Added as i32)),
        "{paths:?}\n{why}"
    );
}

async fn runs_a_shell_command(mut w: World) {
    // The output appears only if a shell really ran printf (the command text never contains it).
    // No `$(…)`: Gemini CLI refuses substitutions.
    let (job, events) = w.run("bash printf 'shell-says-%d\\n' 42").await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    assert!(
        tool_calls(&events)
            .iter()
            .any(|t| t.input_json.contains("shell-says-")),
        "no tool call carries the command\n{why}"
    );
    // Some CLIs report the output in their tool result event, all of them send it to the model,
    // which quotes it in its final answer.
    let seen = tool_results(&events)
        .iter()
        .any(|r| r.content.contains("shell-says-42"))
        || job.result.contains("shell-says-42");
    assert!(seen, "the command's output never came back\n{why}");
}

async fn second_job_continues_the_conversation(mut w: World) {
    let agent = w.agent;
    let word = format!("pineapple-{}", agent.name);
    let (first, events) = w.run(&format!("remember {word}")).await;
    w.expect_state(&first, &events, pb::JobState::Succeeded);
    assert_eq!(first.result, format!("I will remember {word}."));
    assert!(
        !first.conversation_id.is_empty(),
        "{}",
        w.explain(&first, &events)
    );

    let (second, events) = w.run("recall").await;
    w.expect_state(&second, &events, pb::JobState::Succeeded);
    let why = w.explain(&second, &events);
    let started = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Started(s)) => Some(s.clone()),
            _ => None,
        })
        .expect("started event");
    assert_eq!(
        started.resumed_conversation_id, first.conversation_id,
        "{why}"
    );
    // The mock answers from the request alone: the word is only there if the CLI resent the
    // first turn.
    assert_eq!(
        second.result,
        format!("You asked me to remember {word}."),
        "{why}"
    );
}

async fn model_error_fails_the_job_with_the_agents_message(mut w: World) {
    let agent = w.agent;
    let t0 = Instant::now();
    let (job, events) = w.run("error 500").await;
    w.expect_state(&job, &events, pb::JobState::Failed);
    let why = w.explain(&job, &events);
    assert!(!job.error_message.is_empty(), "{why}");
    if let Some(text) = agent.error_500_text {
        assert!(job.error_message.contains(text), "{why}");
    }
    // Retries are off: a failing model must not keep the job for minutes.
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}\n{why}",
        t0.elapsed()
    );
}

async fn cancel_during_a_long_tool_call_leaves_no_process(mut w: World) {
    let agent = w.agent;
    let job = w
        .submit(w.request(&format!("sleep-tool {}", agent.sleep_secs)))
        .await
        .expect("submit");
    // Wait for the tool's process, but stop waiting as soon as the job ends without it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sleepers(agent.sleep_secs).is_empty() {
        let now = w.c.get_job(&job.job_id).await;
        let finished =
            ![pb::JobState::Queued as i32, pb::JobState::Running as i32].contains(&now.state);
        if finished || Instant::now() > deadline {
            let events = w.c.events(&job.job_id, 0).await;
            let now = w.c.get_job(&job.job_id).await;
            panic!(
                "the tool never started `sleep {}`\n{}",
                agent.sleep_secs,
                w.explain(&now, &events)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.c.jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .expect("cancel");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Cancelled);
    let data_dir = w.server.data_dir.clone();
    let gone = eventually(Duration::from_secs(10), || {
        sleepers(agent.sleep_secs).is_empty() && processes_in(&data_dir).is_empty()
    })
    .await;
    assert!(
        gone,
        "left behind: sleepers {:?}, processes in the data dir {:?}",
        sleepers(agent.sleep_secs),
        processes_in(&data_dir)
    );
}

/// A prompt far over Linux's 128 KiB cap on one argv string: delivered on stdin, it must reach the
/// model byte for byte (the mock answers with its digest and length).
async fn a_900_kib_prompt_reaches_the_model_intact(mut w: World) {
    use sha2::Digest;
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let mut payload = String::with_capacity(920 * 1024);
    let mut i = 0usize;
    while payload.len() < 900 * 1024 {
        // Lines of varied words and a counter, so a lost, repeated or reordered piece shows.
        payload.push_str(words[i % words.len()]);
        payload.push(' ');
        payload.push_str(&i.to_string());
        payload.push(if i % 12 == 11 { '\n' } else { ' ' });
        i += 1;
    }
    let payload = payload.trim().to_owned();
    assert!(payload.len() > 900 * 1024);
    let want = format!(
        "digest {} {}",
        hex::encode(sha2::Sha256::digest(payload.as_bytes())),
        payload.len()
    );
    let (job, events) = w.run(&format!("digest {payload}")).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    assert_eq!(job.result.trim(), want, "{}", w.explain(&job, &events));
}

async fn max_turns_is_honoured_or_refused_as_unsupported(mut w: World) {
    let agent = w.agent;
    // A tool call ends the first turn; the answer to its result would be the second.
    let req = pb::SubmitJobRequest {
        max_turns: 1,
        ..w.request("bash echo first-turn")
    };
    let submitted = w.submit(req).await;
    if !agent.max_turns {
        let st =
            submitted.expect_err("max_turns must be refused by an agent that cannot honour it");
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        assert_eq!(reason(&st), "UNSUPPORTED_OPTION", "{st:?}");
        assert!(
            st.message().contains("max_turns") && st.message().contains(agent.name),
            "{st:?}"
        );
        return;
    }
    let job = submitted.expect("submit with max_turns");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Failed);
    let why = w.explain(&job, &events);
    assert!(
        job.error_message.to_lowercase().contains("turns"),
        "the error should say the turn limit was reached\n{why}"
    );
    // The tool of the first turn ran; the model was not asked a second time.
    assert_eq!(tool_calls(&events).len(), 1, "{why}");
    assert!(!job.result.starts_with("Done."), "{why}");
}

// ------------------------------------------------------------------------------------------------
// Presets and the operator's catalogs (#20).

/// The catalog of the #20 scenarios: the stdio MCP server of `tests/fixtures/mcp-echo` (made
/// visible read-only in the jail, as an operator would), a Claude subagent and a preset.
fn catalog(agent: &Agent, dir: &Path) -> String {
    let fixtures = root().join("tests/fixtures");
    let subagent = dir.join("e2e-reviewer.md");
    std::fs::write(
        &subagent,
        "---\nname: e2e-reviewer\ndescription: Reviews diffs for the e2e-subagent-marker team.\n         ---\nYou review diffs.\n",
    )
    .expect("write subagent");
    format!(
        "[agents.{name}.sandbox]\nread_only = [{fixtures}]\n         [mcp.echo]\ncommand = \"python3\"\nargs = [{script}]\n         [mcp.echo.env]\nMCP_ECHO_MARKER = \"marker-{name}\"\n         [subagents.e2e-reviewer]\npath = {subagent}\n         [presets.recall]\nagent = \"{name}\"\nprompt_template = \"remember {{{{word}}}}\"\n\
         timeout_seconds = {JOB_TIMEOUT_SECONDS}\n",
        name = agent.name,
        fixtures = toml_str(&fixtures.to_string_lossy()),
        script = toml_str(&fixtures.join("mcp-echo").to_string_lossy()),
        subagent = toml_str(&subagent.to_string_lossy()),
    )
}

async fn catalog_world(agent: &'static Agent) -> World {
    World::with_config(agent, |dir| catalog(agent, dir)).await
}

/// The agent calls the catalog's MCP server (the mock asks for its tool), which the agent started
/// inside the job's jail with the catalog's env; the tool's answer is in the stream.
async fn an_mcp_server_from_the_catalog_is_called(mut w: World) {
    let agent = w.agent;
    let req = pb::SubmitJobRequest {
        mcp_servers: vec!["echo".into()],
        ..w.request("mcp echo_secret hello-from-the-model")
    };
    let job = w.submit(req).await.expect("submit");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    let said = format!(
        "mcp-echo says: hello-from-the-model (marker marker-{},",
        agent.name
    );
    let in_stream = tool_results(&events)
        .iter()
        .any(|r| r.content.contains(&said))
        || job.result.contains(&said);
    assert!(
        in_stream,
        "the MCP tool's answer is not in the stream\n{why}"
    );
    assert!(
        tool_calls(&events)
            .iter()
            .any(|t| t.name.contains("echo_secret")),
        "no tool call of the MCP tool\n{why}"
    );
    // Started by the agent inside the job's jail: another PID namespace than this test's.
    let ours = std::fs::read_link("/proc/self/ns/pid").expect("own pid ns");
    assert!(
        !why.contains(&format!("pidns {}", ours.display())),
        "the MCP server ran outside the jail\n{why}"
    );
}

/// Without selecting it, the same server is not offered: the agent's tools have no MCP tool.
async fn an_unselected_mcp_server_is_not_offered(mut w: World) {
    let (job, events) = w.run("mcp echo_secret should-not-run").await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    assert!(
        job.result.starts_with("no tool *echo_secret"),
        "{}",
        w.explain(&job, &events)
    );
}

/// A preset with a variable: the model sees the rendered prompt.
async fn a_preset_renders_for_the_model(mut w: World) {
    let req = pb::SubmitJobRequest {
        preset: "recall".into(),
        variables: [("word".to_owned(), "kiwi-preset".to_owned())].into(),
        prompt: String::new(),
        agent: String::new(),
        timeout_seconds: 0,
        ..w.request("")
    };
    let job = w.submit(req).await.expect("submit");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    assert_eq!(
        job.result,
        "I will remember kiwi-preset.",
        "{}",
        w.explain(&job, &events)
    );
}

macro_rules! catalog_tests {
    ($module:ident, $agent:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn an_mcp_server_from_the_catalog_is_called() {
                scenario(super::an_mcp_server_from_the_catalog_is_called(
                    catalog_world(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn an_unselected_mcp_server_is_not_offered() {
                scenario(super::an_unselected_mcp_server_is_not_offered(
                    catalog_world(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn a_preset_renders_for_the_model() {
                scenario(super::a_preset_renders_for_the_model(
                    catalog_world(&$agent).await,
                ))
                .await;
            }
        }
    };
}

catalog_tests!(claude_catalog, CLAUDE);
catalog_tests!(codex_catalog, CODEX);
catalog_tests!(opencode_catalog, OPENCODE);
catalog_tests!(gemini_catalog, GEMINI);

/// A subagent definition of the catalog reaches Claude: its request to the model offers it.
#[tokio::test]
async fn claude_sees_a_subagent_of_the_catalog() {
    scenario(async {
        let mut w = catalog_world(&CLAUDE).await;
        let req = pb::SubmitJobRequest {
            subagents: vec!["e2e-reviewer".into()],
            ..w.request("agents-visible e2e-reviewer")
        };
        let job = w.submit(req).await.expect("submit");
        let (job, events) = w.finish(&job.job_id).await;
        w.expect_state(&job, &events, pb::JobState::Succeeded);
        assert_eq!(
            job.result,
            "agent e2e-reviewer visible",
            "{}",
            w.explain(&job, &events)
        );
        // Not selected, not there (in a new session: the first one's conversation holds the list).
        w.session = w.c.create_session(&[]).await.session_id;
        let (job, events) = w.run("agents-visible e2e-reviewer").await;
        assert_eq!(
            job.result,
            "agent e2e-reviewer not visible",
            "{}",
            w.explain(&job, &events)
        );
    })
    .await;
}

macro_rules! agent_tests {
    ($module:ident, $agent:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn writes_a_file_seen_in_job_outputs() {
                scenario(super::writes_a_file_seen_in_job_outputs(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn runs_a_shell_command() {
                scenario(super::runs_a_shell_command(World::new(&$agent).await)).await;
            }

            #[tokio::test]
            async fn second_job_continues_the_conversation() {
                scenario(super::second_job_continues_the_conversation(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn model_error_fails_the_job_with_the_agents_message() {
                scenario(super::model_error_fails_the_job_with_the_agents_message(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn cancel_during_a_long_tool_call_leaves_no_process() {
                scenario(super::cancel_during_a_long_tool_call_leaves_no_process(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn a_900_kib_prompt_reaches_the_model_intact() {
                scenario(super::a_900_kib_prompt_reaches_the_model_intact(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn max_turns_is_honoured_or_refused_as_unsupported() {
                scenario(super::max_turns_is_honoured_or_refused_as_unsupported(
                    World::new(&$agent).await,
                ))
                .await;
            }
        }
    };
}

agent_tests!(claude, CLAUDE);
agent_tests!(codex, CODEX);
agent_tests!(opencode, OPENCODE);
agent_tests!(gemini, GEMINI);

// ------------------------------------------------------------------------------------------------
// Two-way control (issue #17), with the agents that support it (ServerInfo `controls`): Claude
// Code's stream-json control protocol, Codex's app server, OpenCode's and Gemini CLI's ACP. A
// configured command refuses `ask` as an unsupported option.

impl World {
    fn ask(&self, prompt: &str) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            permission_mode: "ask".into(),
            ..self.request(prompt)
        }
    }

    /// Follows a job's events from `after` until one satisfies `pick`; returns it.
    async fn wait_for(
        &mut self,
        job_id: &str,
        pick: impl Fn(&pb::JobEvent) -> bool,
    ) -> pb::JobEvent {
        let mut s = self.c.stream(job_id, 0).await;
        while let Some(msg) = s.message().await.expect("stream message") {
            if let Some(e) = msg.events.into_iter().find(|e| pick(e)) {
                return e;
            }
        }
        let (job, events) = self.finish(job_id).await;
        panic!(
            "the job ended without the awaited event\n{}",
            self.explain(&job, &events)
        );
    }

    async fn permission_request(&mut self, job_id: &str) -> pb::PermissionRequest {
        match self
            .wait_for(job_id, |e| kind(e) == "permission_request")
            .await
            .kind
        {
            Some(pb::job_event::Kind::PermissionRequest(r)) => r,
            _ => unreachable!("picked a permission_request"),
        }
    }

    async fn respond(
        &mut self,
        job_id: &str,
        request_id: &str,
        allow: bool,
        message: &str,
    ) -> Result<(), tonic::Status> {
        self.c
            .jobs
            .respond_to_permission(pb::RespondToPermissionRequest {
                job_id: job_id.into(),
                request_id: request_id.into(),
                allow,
                message: message.into(),
            })
            .await
            .map(|_| ())
    }
}

fn resolutions(events: &[pb::JobEvent]) -> Vec<pb::PermissionResolved> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::PermissionResolved(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

async fn ask_allow_runs_the_tool_once_answered(mut w: World) {
    let job = w
        .submit(w.ask("write asked-note.txt allowed by the caller"))
        .await
        .expect("submit");
    let req = w.permission_request(&job.job_id).await;
    assert_eq!(req.tool, w.agent.write_tool);
    assert!(req.input_json.contains("asked-note.txt"), "{req:?}");
    // Nothing runs before the answer.
    assert!(w.c.download(&w.session, "asked-note.txt").await.is_err());
    // A second watcher sees the same request.
    let mut other_watcher = w.server.clients(KEY_A).await;
    let id = job.job_id.clone();
    let watched = tokio::spawn(async move { other_watcher.events(&id, 0).await });
    // Another tenant cannot answer, nor learn that the job exists.
    let mut b = w.server.clients(KEY_B).await;
    let st = b
        .jobs
        .respond_to_permission(pb::RespondToPermissionRequest {
            job_id: job.job_id.clone(),
            request_id: req.request_id.clone(),
            allow: true,
            message: String::new(),
        })
        .await
        .expect_err("tenant B answered tenant A's job");
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
    let st = w
        .respond(&job.job_id, "no-such-request", true, "")
        .await
        .expect_err("an unknown request id was accepted");
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");

    w.respond(&job.job_id, &req.request_id, true, "")
        .await
        .expect("answer");
    let st = w
        .respond(&job.job_id, &req.request_id, false, "too late")
        .await
        .expect_err("a second answer was accepted");
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
    assert_eq!(reason(&st), "PERMISSION_DECIDED");

    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    let r = resolutions(&events);
    assert_eq!(r.len(), 1, "{why}");
    assert_eq!((r[0].who.as_str(), r[0].allow), ("caller", true), "{why}");
    let content =
        w.c.download(&w.session, "asked-note.txt")
            .await
            .expect("the tool ran");
    assert_eq!(String::from_utf8_lossy(&content), "allowed by the caller\n");
    // Both watchers saw one and the same request.
    let ids = |evs: &[pb::JobEvent]| -> Vec<String> {
        evs.iter()
            .filter_map(|e| match &e.kind {
                Some(pb::job_event::Kind::PermissionRequest(r)) => Some(r.request_id.clone()),
                _ => None,
            })
            .collect()
    };
    let watched = watched.await.expect("second watcher");
    assert_eq!(ids(&events), vec![req.request_id.clone()], "{why}");
    assert_eq!(ids(&watched), ids(&events), "{why}");
}

async fn ask_deny_tells_the_model_why(mut w: World) {
    let job = w
        .submit(w.ask("write denied-note.txt never written"))
        .await
        .expect("submit");
    let req = w.permission_request(&job.job_id).await;
    w.respond(
        &job.job_id,
        &req.request_id,
        false,
        "not there: use notes/ instead",
    )
    .await
    .expect("answer");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    assert!(
        w.c.download(&w.session, "denied-note.txt").await.is_err(),
        "{why}"
    );
    // The mock quotes the tool result of its next request: the denial reached the model.
    assert!(
        job.result.contains("not there: use notes/ instead"),
        "{why}"
    );
    assert!(
        w.mock
            .requests_text()
            .contains("not there: use notes/ instead"),
        "{why}"
    );
    let r = resolutions(&events);
    assert_eq!((r[0].who.as_str(), r[0].allow), ("caller", false), "{why}");
}

async fn ask_unanswered_is_denied_at_the_timeout(mut w: World) {
    let req = pb::SubmitJobRequest {
        permission_timeout_seconds: 2,
        ..w.ask("write timed-note.txt never written")
    };
    let job = w.submit(req).await.expect("submit");
    let asked = w.permission_request(&job.job_id).await;
    assert_eq!(asked.timeout_seconds, 2);
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    let r = resolutions(&events);
    assert_eq!((r[0].who.as_str(), r[0].allow), ("timeout", false), "{why}");
    assert!(
        w.c.download(&w.session, "timed-note.txt").await.is_err(),
        "{why}"
    );
    let st = w
        .respond(&job.job_id, &asked.request_id, true, "")
        .await
        .expect_err("an answer after the job ended was accepted");
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
}

async fn rules_decide_without_asking(mut w: World) {
    let rule = write_rule(w.agent, "rule-*.txt");
    let req = pb::SubmitJobRequest {
        allow_rules: vec![rule.clone()],
        ..w.ask("write rule-ok.txt allowed by a rule")
    };
    let (job, events) = {
        let job = w.submit(req).await.expect("submit");
        w.finish(&job.job_id).await
    };
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    assert!(
        !events.iter().any(|e| kind(e) == "permission_request"),
        "{why}"
    );
    let r = resolutions(&events);
    assert_eq!((r[0].who.as_str(), r[0].allow), ("rule", true), "{why}");
    assert!(r[0].message.contains(&rule), "{why}");
    w.c.download(&w.session, "rule-ok.txt")
        .await
        .expect("written");

    // The job allows every Write, the operator's profile denies this path: the operator wins.
    let req = pb::SubmitJobRequest {
        allow_rules: vec![w.agent.write_tool.into()],
        ..w.ask("write operator-denied.txt never written")
    };
    let job = w.submit(req).await.expect("submit");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    let r = resolutions(&events);
    assert_eq!((r[0].who.as_str(), r[0].allow), ("rule", false), "{why}");
    assert!(r[0].message.contains("operator-denied"), "{why}");
    assert!(
        w.c.download(&w.session, "operator-denied.txt")
            .await
            .is_err(),
        "{why}"
    );
}

async fn send_input_reaches_the_models_next_request(mut w: World) {
    let job = w
        .submit(w.ask("delay 6 remember kiwi"))
        .await
        .expect("submit");
    w.wait_for(&job.job_id, |e| kind(e) == "init").await;
    w.c.jobs
        .send_input(pb::SendInputRequest {
            job_id: job.job_id.clone(),
            text: "remember mango".into(),
        })
        .await
        .expect("send input");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    assert!(events.iter().any(|e| kind(e) == "input"), "{why}");
    assert!(
        w.mock
            .requests_text()
            .contains("\"prompt\": \"remember mango\"")
            || w.mock
                .requests_text()
                .contains("\"prompt\":\"remember mango\""),
        "{why}"
    );
    assert_eq!(job.result, "I will remember mango.", "{why}");
}

async fn interrupt_keeps_the_conversation(mut w: World) {
    // What the next job recalls: the interrupted turn, or for an agent that drops it, a turn of
    // an earlier job (whose conversation the interrupted job continued).
    let recalled = if w.agent.keeps_interrupted_turn {
        "papaya"
    } else {
        let job = w.submit(w.ask("remember kiwi")).await.expect("submit");
        let (job, events) = w.finish(&job.job_id).await;
        w.expect_state(&job, &events, pb::JobState::Succeeded);
        "kiwi"
    };
    let job = w
        .submit(w.ask("delay 60 remember papaya"))
        .await
        .expect("submit");
    w.wait_for(&job.job_id, |e| kind(e) == "init").await;
    w.c.jobs
        .interrupt_job(pb::InterruptJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .expect("interrupt");
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Cancelled);
    assert_eq!(job.reason, "INTERRUPTED", "{}", w.explain(&job, &events));
    let (next, events) = w.run("recall").await;
    w.expect_state(&next, &events, pb::JobState::Succeeded);
    assert_eq!(
        next.result,
        format!("You asked me to remember {recalled}."),
        "{}",
        w.explain(&next, &events)
    );
}

/// kill -9 of agentd while a request waits for its answer. The job is adopted (`--on-shutdown
/// keep`), but the agent's input ended with the old agentd, so no answer can reach it: the request
/// is resolved denied by the restart, visibly, and the job fails saying so.
async fn restart_with_a_pending_request_fails_the_job(mut w: World) {
    let job = w
        .submit(w.ask("write pending-note.txt never written"))
        .await
        .expect("submit");
    let req = w.permission_request(&job.job_id).await;
    w.server.restart();
    w.c = w.server.clients(KEY_A).await;
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Failed);
    let why = w.explain(&job, &events);
    assert_eq!(job.reason, "PERMISSION_PENDING_AT_RESTART", "{why}");
    assert!(job.error_message.contains(&req.request_id), "{why}");
    let r = resolutions(&events);
    assert_eq!(r.len(), 1, "{why}");
    assert_eq!(
        (r[0].request_id.as_str(), r[0].who.as_str(), r[0].allow),
        (req.request_id.as_str(), "restart", false),
        "{why}"
    );
    assert!(
        w.c.download(&w.session, "pending-note.txt").await.is_err(),
        "{why}"
    );
}

/// One Attach stream of a client: its message sender and the server's answers.
struct AttachStream {
    /// None once the client is done sending.
    tx: Option<tokio::sync::mpsc::Sender<pb::AttachRequest>>,
    rx: tonic::Streaming<pb::AttachResponse>,
    next_id: u64,
}

impl AttachStream {
    async fn open(c: &mut Clients) -> Self {
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let rx = c
            .jobs
            .attach(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .expect("attach")
            .into_inner();
        Self {
            tx: Some(tx),
            rx,
            next_id: 0,
        }
    }

    /// Sends one client message; returns its message_id.
    async fn send(&mut self, action: pb::attach_request::Action) -> u64 {
        self.next_id += 1;
        let msg = pb::AttachRequest {
            message_id: self.next_id,
            action: Some(action),
        };
        let tx = self.tx.as_ref().expect("the client is still sending");
        tx.send(msg).await.expect("send on the attach stream");
        self.next_id
    }

    /// Reads server messages, keeping the events seen, until the answer to `id`.
    async fn answer(
        &mut self,
        id: u64,
        seen: &mut Vec<pb::JobEvent>,
    ) -> Result<Option<pb::Job>, pb::AttachError> {
        use pb::attach_response::Kind;
        while let Some(msg) = self.rx.message().await.expect("attach message") {
            match msg.kind {
                Some(Kind::Ack(a)) if a.message_id == id => return Ok(a.job),
                Some(Kind::Error(e)) if e.message_id == id => return Err(e),
                Some(Kind::Events(evs)) => seen.extend(evs.events),
                other => panic!("unexpected attach message {other:?}"),
            }
        }
        panic!("the attach stream ended before answering message {id}");
    }

    /// Reads server messages until an event satisfies `pick` (or the stream ends: None).
    async fn until(
        &mut self,
        seen: &mut Vec<pb::JobEvent>,
        pick: impl Fn(&pb::JobEvent) -> bool,
    ) -> Option<pb::JobEvent> {
        if let Some(e) = seen.iter().find(|e| pick(e)) {
            return Some(e.clone());
        }
        while let Some(msg) = self.rx.message().await.expect("attach message") {
            if let Some(pb::attach_response::Kind::Events(evs)) = msg.kind {
                for e in evs.events {
                    seen.push(e.clone());
                    if pick(&e) {
                        return Some(e);
                    }
                }
            }
        }
        None
    }
}

/// Attach: one stream submits an `ask` job, sees its permission request, answers it (without
/// naming the job), and follows the job to its end; a failed message answers an error with its
/// message_id and the stream goes on; a second stream resumes by after_seq; another tenant's
/// attach is NOT_FOUND.
async fn attach_drives_a_job_on_one_stream(mut w: World) {
    use pb::attach_request::Action;
    let mut a = AttachStream::open(&mut w.c).await;
    let mut seen = Vec::new();
    let id = a
        .send(Action::Submit(Box::new(
            w.ask("write attached-note.txt answered on the stream"),
        )))
        .await;
    let job = a.answer(id, &mut seen).await.expect("submit").expect("job");
    let req = match a
        .until(&mut seen, |e| kind(e) == "permission_request")
        .await
        .and_then(|e| e.kind)
    {
        Some(pb::job_event::Kind::PermissionRequest(r)) => r,
        other => panic!("no permission request on the stream: {other:?}"),
    };

    // Another tenant cannot attach to the job, nor learn that it exists.
    let mut b = AttachStream::open(&mut w.server.clients(KEY_B).await).await;
    let id = b
        .send(Action::Attach(pb::AttachJob {
            job_id: job.job_id.clone(),
            after_seq: 0,
        }))
        .await;
    let e = b.answer(id, &mut Vec::new()).await.expect_err("B attached");
    assert_eq!(e.code, tonic::Code::NotFound as i32, "{e:?}");
    assert_eq!(e.reason, "JOB_NOT_FOUND", "{e:?}");
    // Nor answer it.
    let id = b
        .send(Action::Respond(pb::RespondToPermissionRequest {
            job_id: job.job_id.clone(),
            request_id: req.request_id.clone(),
            allow: true,
            message: String::new(),
        }))
        .await;
    let e = b.answer(id, &mut Vec::new()).await.expect_err("B answered");
    assert_eq!(e.code, tonic::Code::NotFound as i32, "{e:?}");

    // A second stream of the tenant resumes after the request's seq: it sees what follows.
    let mut second = AttachStream::open(&mut w.c).await;
    let id = second
        .send(Action::Attach(pb::AttachJob {
            job_id: job.job_id.clone(),
            after_seq: seen.last().map_or(0, |e| e.seq),
        }))
        .await;
    let mut resumed = Vec::new();
    second.answer(id, &mut resumed).await.expect("attach");

    let id = a
        .send(Action::Respond(pb::RespondToPermissionRequest {
            job_id: String::new(),
            request_id: req.request_id.clone(),
            allow: true,
            message: String::new(),
        }))
        .await;
    a.answer(id, &mut seen).await.expect("answer");
    // A second answer is an error of that message only; the stream goes on.
    let id = a
        .send(Action::Respond(pb::RespondToPermissionRequest {
            job_id: String::new(),
            request_id: req.request_id.clone(),
            allow: false,
            message: String::new(),
        }))
        .await;
    let e = a.answer(id, &mut seen).await.expect_err("second answer");
    assert_eq!(e.code, tonic::Code::FailedPrecondition as i32, "{e:?}");
    assert_eq!(e.reason, "PERMISSION_DECIDED", "{e:?}");

    // Done sending: the server ends the stream after the job's finished event.
    a.tx = None;
    assert!(a.until(&mut seen, |_| false).await.is_none());
    let (job, events) = w.finish(&job.job_id).await;
    w.expect_state(&job, &events, pb::JobState::Succeeded);
    let why = w.explain(&job, &events);
    let seqs = |evs: &[pb::JobEvent]| evs.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&seen), seqs(&events), "{why}");
    let after = seen
        .iter()
        .position(|e| kind(e) == "permission_request")
        .expect("request seen");
    second.until(&mut resumed, |e| kind(e) == "finished").await;
    assert_eq!(seqs(&resumed), seqs(&events[after + 1..]), "{why}");
    let content =
        w.c.download(&w.session, "attached-note.txt")
            .await
            .expect("the tool ran");
    assert_eq!(
        String::from_utf8_lossy(&content),
        "answered on the stream\n"
    );
}

/// `agentd run --ask` with its answers piped into stdin (no terminal): line by line, `y` allows,
/// `n: why` denies and the reason reaches the model.
async fn cli_ask_reads_answers_line_by_line(w: World) {
    let run = |prompt: &'static str, answers: &'static str| {
        let (url, session, agent) = (
            format!("http://{}", w.server.addr),
            w.session.clone(),
            w.agent.name,
        );
        async move {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
                .args([
                    "run",
                    "--ask",
                    "--session",
                    &session,
                    "--agent",
                    agent,
                    prompt,
                ])
                .env("AGENTD_URL", url)
                .env("AGENTD_API_KEY", KEY_A)
                .env_remove("AGENTD_LOG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run the cli");
            let mut stdin = child.stdin.take().expect("stdin");
            tokio::io::AsyncWriteExt::write_all(&mut stdin, answers.as_bytes())
                .await
                .expect("answers");
            drop(stdin);
            let out = child.wait_with_output().await.expect("cli output");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, stderr) = run("write cli-allowed.txt allowed at the terminal", "y\n").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the agent asks to run Write"), "{stderr}");
    assert!(stderr.contains("cli-allowed.txt"), "{stderr}");
    let content = w.c.clone().download(&w.session, "cli-allowed.txt").await;
    assert_eq!(
        content
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .ok(),
        Some("allowed at the terminal\n".to_owned()),
        "{stderr}"
    );

    let (code, stderr) = run(
        "write cli-denied.txt never written",
        "n: not from the terminal\n",
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        w.c.clone()
            .download(&w.session, "cli-denied.txt")
            .await
            .is_err(),
        "{stderr}"
    );
    assert!(
        w.mock.requests_text().contains("not from the terminal"),
        "{stderr}"
    );
}

/// A tenant's endpoint subscribed to every job event type hears of a job's start, of the
/// request its agent asks the caller (issue #19: the permission hook), and of its end; each
/// message signed with the endpoint's secret.
async fn ask_request_reaches_the_tenants_webhooks(
    mut w: World,
    rx: common::receiver::Receiver,
    port: u16,
) {
    let hook =
        w.c.webhooks
            .create_webhook(pb::CreateWebhookRequest {
                url: format!("http://127.0.0.1:{port}/hook"),
                events: vec![
                    "job.started".into(),
                    "job.permission_requested".into(),
                    "job.finished".into(),
                ],
            })
            .await
            .expect("create webhook")
            .into_inner();
    let job = w
        .submit(w.ask("write hooked-note.txt allowed by the caller"))
        .await
        .expect("submit");
    let req = w.permission_request(&job.job_id).await;
    w.respond(&job.job_id, &req.request_id, true, "")
        .await
        .expect("answer");
    let (done, events) = w.finish(&job.job_id).await;
    w.expect_state(&done, &events, pb::JobState::Succeeded);

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let bodies = loop {
        let got = rx.received();
        let bodies: Vec<serde_json::Value> = got
            .iter()
            .map(|r| serde_json::from_slice(&r.body).expect("json body"))
            .collect();
        if bodies.len() >= 3 || tokio::time::Instant::now() > deadline {
            for r in &got {
                let ts: i64 = r.headers["webhook-timestamp"].parse().expect("timestamp");
                let want = agentd::webhooks::sign::signature(
                    &hook.secret,
                    &r.headers["webhook-id"],
                    ts,
                    &r.body,
                )
                .expect("signature");
                assert!(r.headers["webhook-signature"].split(' ').any(|s| s == want));
            }
            break bodies;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut kinds: Vec<&str> = bodies.iter().filter_map(|b| b["type"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["job.finished", "job.permission_requested", "job.started"],
        "{bodies:#?}"
    );
    let perm = bodies
        .iter()
        .find(|b| b["type"] == "job.permission_requested")
        .expect("permission message");
    assert_eq!(perm["data"]["job_id"], job.job_id.as_str());
    assert_eq!(perm["data"]["request_id"], req.request_id.as_str());
    assert_eq!(perm["data"]["permission"]["tool"], "Write");
    // The tool's input is not in the message (the event log redacts it; the message does not).
    assert!(perm["data"]["permission"].get("input").is_none(), "{perm}");
}

mod control_claude_api {
    use super::*;

    #[tokio::test]
    async fn attach_drives_a_job_on_one_stream() {
        scenario(super::attach_drives_a_job_on_one_stream(
            World::new(&CLAUDE).await,
        ))
        .await;
    }

    #[tokio::test]
    async fn cli_ask_reads_answers_line_by_line() {
        scenario(super::cli_ask_reads_answers_line_by_line(
            World::new(&CLAUDE).await,
        ))
        .await;
    }

    #[tokio::test]
    async fn ask_request_reaches_the_tenants_webhooks() {
        let (rx, port) = common::receiver::Receiver::start().await;
        let w = World::with_config(&CLAUDE, |_| {
            "[webhooks]\nallow_cidrs = [\"127.0.0.1/32\"]\nretry_base_ms = 50\n".into()
        })
        .await;
        scenario(super::ask_request_reaches_the_tenants_webhooks(w, rx, port)).await;
    }
}

/// `agent`'s profile with an operator rule that denies one path whatever a job allows.
fn ruled(agent: &Agent, cli: &Path, base: &str) -> String {
    format!(
        "{}[agents.{}.permissions]\ndeny = [{}]\n",
        (agent.profile)(cli, base),
        agent.name,
        toml_str(&write_rule(agent, "operator-denied*"))
    )
}

macro_rules! control_tests {
    ($module:ident, $agent:expr) => {
        mod $module {
            use super::*;

            static RULED: Agent = Agent {
                profile: |cli, base| ruled(&$agent, cli, base),
                ..$agent
            };

            #[tokio::test]
            async fn ask_allow_runs_the_tool_once_answered() {
                scenario(super::ask_allow_runs_the_tool_once_answered(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn ask_deny_tells_the_model_why() {
                scenario(super::ask_deny_tells_the_model_why(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn ask_unanswered_is_denied_at_the_timeout() {
                scenario(super::ask_unanswered_is_denied_at_the_timeout(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn rules_decide_without_asking() {
                scenario(super::rules_decide_without_asking(World::new(&RULED).await)).await;
            }

            #[tokio::test]
            async fn send_input_reaches_the_models_next_request() {
                scenario(super::send_input_reaches_the_models_next_request(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn interrupt_keeps_the_conversation() {
                scenario(super::interrupt_keeps_the_conversation(
                    World::new(&$agent).await,
                ))
                .await;
            }

            #[tokio::test]
            async fn restart_with_a_pending_request_fails_the_job() {
                scenario(super::restart_with_a_pending_request_fails_the_job(
                    World::new(&$agent).await,
                ))
                .await;
            }
        }
    };
}

control_tests!(control_claude, CLAUDE);
control_tests!(control_codex, CODEX);
control_tests!(control_opencode, OPENCODE);
control_tests!(control_gemini, GEMINI);

/// Gemini CLI keeps no conversation whose only turn was interrupted (it drops a turn cancelled
/// while the model answers): the session's next job that asks cannot load it and starts a new
/// conversation, saying so, instead of failing; the job after that continues the new one.
#[tokio::test]
async fn gemini_after_an_interrupted_first_turn_starts_a_new_conversation() {
    scenario(async {
        let mut w = World::new(&GEMINI).await;
        let job = w
            .submit(w.ask("delay 60 remember papaya"))
            .await
            .expect("submit");
        w.wait_for(&job.job_id, |e| kind(e) == "init").await;
        w.c.jobs
            .interrupt_job(pb::InterruptJobRequest {
                job_id: job.job_id.clone(),
            })
            .await
            .expect("interrupt");
        let (job, events) = w.finish(&job.job_id).await;
        w.expect_state(&job, &events, pb::JobState::Cancelled);

        let next = w.submit(w.ask("remember kiwi")).await.expect("submit");
        let (next, events) = w.finish(&next.job_id).await;
        w.expect_state(&next, &events, pb::JobState::Succeeded);
        let why = w.explain(&next, &events);
        let said = events.iter().any(|e| {
            matches!(&e.kind, Some(pb::job_event::Kind::Other(o)) if o.r#type == "conversation_not_loaded")
        });
        assert!(said, "{why}");
        assert_ne!(next.conversation_id, job.conversation_id, "{why}");
        let (last, events) = w.run("recall").await;
        w.expect_state(&last, &events, pb::JobState::Succeeded);
        assert_eq!(
            last.result,
            "You asked me to remember kiwi.",
            "{}",
            w.explain(&last, &events)
        );
    })
    .await;
}

/// A configured command speaks no protocol agentd knows: `ask` is refused naming it, and
/// ServerInfo lists no controls for it while it lists all three for an agent that has them
/// (Gemini CLI, through ACP).
#[tokio::test]
async fn agents_without_the_protocol_refuse_ask_naming_the_agent() {
    let mut w = World::with_config(&GEMINI, |_| {
        "[agents.plain-script]\nkind = \"command\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"cat\"]\n".into()
    })
    .await;
    let st = w
        .submit(pb::SubmitJobRequest {
            agent: "plain-script".into(),
            ..w.ask("write x.txt y")
        })
        .await
        .expect_err("a command took ask");
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert_eq!(reason(&st), "UNSUPPORTED_OPTION");
    assert!(st.message().contains("plain-script"), "{st:?}");

    let got = w.server.server_info().await;
    let controls = |name: &str| {
        let agent = got.agents.iter().find(|a| a.name == name).expect(name);
        agent.controls.clone()
    };
    assert!(controls("plain-script").is_empty());
    assert_eq!(controls("gemini"), ["ask", "input", "interrupt"]);
}
// ------------------------------------------------------------------------------------------------
// Agent capabilities (issue #20): deltas, thinking and plans, structured output, prompts and
// tools, attachments, one conversation per agent in a session.

const SCHEMA: &str = r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}"#;

fn deltas(events: &[pb::JobEvent], thinking: bool) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| match (&e.kind, thinking) {
            (Some(pb::job_event::Kind::TextDelta(t)), false)
            | (Some(pb::job_event::Kind::ThinkingDelta(t)), true) => Some((e.seq, t.text.clone())),
            _ => None,
        })
        .collect()
}

impl World {
    /// A world with the profiles of several agents against one mock (the first one is
    /// `self.agent`).
    async fn multi(agents: &[&'static Agent]) -> World {
        let mut w = World::new(agents[0]).await;
        let mut config = String::new();
        for a in agents {
            config.push_str(&(a.profile)(&cli(a.bin), &w.mock.base));
        }
        w.server = TestServer::start_with(Options {
            config: Some(config),
            ..Default::default()
        });
        w.c = w.server.clients(KEY_A).await;
        w.session =
            w.c.create_session(&[("README.md", b"# e2e\n")])
                .await
                .session_id;
        w
    }

    async fn run_req(&mut self, req: pb::SubmitJobRequest) -> (pb::Job, Vec<pb::JobEvent>) {
        let job = self
            .submit(req)
            .await
            .unwrap_or_else(|st| panic!("submit to {}: {st:?}", self.agent.name));
        self.finish(&job.job_id).await
    }
}

mod capabilities {
    use super::*;

    #[tokio::test]
    async fn claude_deltas_arrive_before_the_full_text_and_concatenate_to_it() {
        scenario(async {
            let mut w = World::new(&CLAUDE).await;
            let req = pb::SubmitJobRequest {
                stream_deltas: true,
                ..w.request("remember a-long-enough-word-to-stream-in-several-pieces")
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            let why = w.explain(&job, &events);
            let pieces = deltas(&events, false);
            assert!(pieces.len() >= 2, "expected several text deltas\n{why}");
            let (text_seq, text) = events
                .iter()
                .find_map(|e| match &e.kind {
                    Some(pb::job_event::Kind::Text(t)) => Some((e.seq, t.text.clone())),
                    _ => None,
                })
                .expect("a text event");
            assert!(pieces.iter().all(|(seq, _)| *seq < text_seq), "{why}");
            let joined: String = pieces.iter().map(|(_, t)| t.as_str()).collect();
            assert_eq!(joined, text, "{why}");
            assert_eq!(job.result, text);
            // Replayable: a late reader sees the same deltas.
            let again = w.c.events(&job.job_id, 0).await;
            assert_eq!(deltas(&again, false), pieces);
            // Without the option, the same answer comes without deltas.
            let (job, events) = w.run("remember plain").await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert!(
                deltas(&events, false).is_empty(),
                "{}",
                w.explain(&job, &events)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn claude_thinking_is_typed_events_and_deltas() {
        scenario(async {
            let mut w = World::new(&CLAUDE).await;
            let req = pb::SubmitJobRequest {
                stream_deltas: true,
                ..w.request("think about the deep structure of the problem")
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            let why = w.explain(&job, &events);
            let thinking: Vec<String> = events
                .iter()
                .filter_map(|e| match &e.kind {
                    Some(pb::job_event::Kind::Thinking(t)) => Some(t.text.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(
                thinking,
                vec!["about the deep structure of the problem".to_owned()],
                "{why}"
            );
            let streamed: String = deltas(&events, true).into_iter().map(|(_, t)| t).collect();
            assert_eq!(streamed, thinking[0], "{why}");
        })
        .await;
    }

    /// Claude's TodoWrite calls (the tool agentd's environment makes Claude Code 2.1 offer in
    /// place of its Task* tools) are plan events.
    #[tokio::test]
    async fn claude_todo_plans_are_typed_events() {
        scenario(async {
            let mut w = World::new(&CLAUDE).await;

            let (job, events) = w.run("todo write the tests; ship it").await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            let why = w.explain(&job, &events);
            let plan = events
                .iter()
                .find_map(|e| match &e.kind {
                    Some(pb::job_event::Kind::Plan(p)) => Some(p.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no plan event\n{why}"));
            let items: Vec<(&str, &str)> = plan
                .items
                .iter()
                .map(|i| (i.content.as_str(), i.status.as_str()))
                .collect();
            assert_eq!(
                items,
                vec![("write the tests", "in_progress"), ("ship it", "pending")],
                "{why}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn claude_schema_job_returns_valid_json() {
        scenario(async {
            let mut w = World::new(&CLAUDE).await;
            let req = pb::SubmitJobRequest {
                output_schema: SCHEMA.into(),
                ..w.request(r#"json {"n": 7}"#)
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert_eq!(
                job.structured_result,
                r#"{"n":7}"#,
                "{}",
                w.explain(&job, &events)
            );
            // A schema that is not one is the caller's error.
            let bad = pb::SubmitJobRequest {
                output_schema: r#"{"type": 5}"#.into(),
                ..w.request("json 1")
            };
            let st = w.submit(bad).await.unwrap_err();
            assert_eq!(st.code(), tonic::Code::InvalidArgument);
        })
        .await;
    }

    /// An agent without native structured output: the schema goes into the prompt, agentd
    /// checks the answer, and a wrong one gets one corrective turn.
    #[tokio::test]
    async fn gemini_invalid_answer_is_corrected_once_or_fails_output_schema() {
        scenario(async {
            let mut w = World::new(&GEMINI).await;
            let req = pb::SubmitJobRequest {
                output_schema: SCHEMA.into(),
                ..w.request(r#"json {"n": 3}"#)
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert_eq!(
                job.structured_result,
                r#"{"n":3}"#,
                "{}",
                w.explain(&job, &events)
            );

            let req = pb::SubmitJobRequest {
                output_schema: SCHEMA.into(),
                ..w.request(r#"json {"n":"three"}"#)
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Failed);
            let why = w.explain(&job, &events);
            assert_eq!(job.reason, "OUTPUT_SCHEMA", "{why}");
            assert!(job.structured_result.is_empty(), "{why}");
            // Two runs of the agent: the answer and the one corrective turn.
            let starts = events.iter().filter(|e| kind(e) == "started").count();
            assert_eq!(starts, 2, "{why}");

            // Wrong first, right once told why: corrected in the same conversation.
            let req = pb::SubmitJobRequest {
                output_schema: SCHEMA.into(),
                ..w.request(r#"json-fix {"n":"x"} {"n":5}"#)
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert_eq!(
                job.structured_result,
                r#"{"n":5}"#,
                "{}",
                w.explain(&job, &events)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn claude_disallowed_tool_is_refused_visibly() {
        scenario(async {
            let mut w = World::new(&CLAUDE).await;
            let req = pb::SubmitJobRequest {
                disallowed_tools: vec!["Bash".into()],
                ..w.request("force-bash touch pwned-by-a-disallowed-tool")
            };
            let (job, events) = w.run_req(req).await;
            let why = w.explain(&job, &events);
            let results = tool_results(&events);
            assert!(
                !results.is_empty() && results.iter().all(|r| r.is_error),
                "the call was not refused\n{why}"
            );
            let file = w.c.download(&w.session, "pwned-by-a-disallowed-tool").await;
            assert!(file.is_err(), "the disallowed tool ran\n{why}");
            // Control: allowed, the same call runs.
            let (job, events) = w.run("force-bash touch ran-when-allowed").await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            let file = w.c.download(&w.session, "ran-when-allowed").await;
            assert!(file.is_ok(), "{}", w.explain(&job, &events));
        })
        .await;
    }

    #[tokio::test]
    async fn claude_system_prompt_replaces_and_attachments_are_named() {
        scenario(async {
            let mut w = World::new(&CLAUDE).await;
            let req = pb::SubmitJobRequest {
                system_prompt: "You are the zebra-77 agent.".into(),
                ..w.request("agents-visible zebra-77")
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert_eq!(
                job.result,
                "agent zebra-77 visible",
                "{}",
                w.explain(&job, &events)
            );

            let req = pb::SubmitJobRequest {
                attachments: vec!["README.md".into()],
                ..w.request("describe the attachment")
            };
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert!(
                job.result.contains("- README.md"),
                "{}",
                w.explain(&job, &events)
            );
            let missing = pb::SubmitJobRequest {
                attachments: vec!["no-such-file.png".into()],
                ..w.request("x")
            };
            let st = w.submit(missing).await.unwrap_err();
            assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        })
        .await;
    }

    /// A 1×1 PNG: a real image, so a CLI that decodes or checks what it sends accepts it.
    const PIXEL_PNG: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90,
        0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8,
        0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0xc9, 0xfe, 0x92, 0xef, 0x00, 0x00, 0x00,
        0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];

    /// What the mock answers to `image-digest` when the request carries exactly `bytes`.
    fn image_digest(bytes: &[u8]) -> String {
        use sha2::Digest as _;
        format!(
            "image {} {}",
            hex::encode(sha2::Sha256::digest(bytes)),
            bytes.len()
        )
    }

    /// An image attachment reaches the model as image bytes equal to the uploaded file (Claude:
    /// a base64 block of its stream-json input; Codex: `--image`; OpenCode: `--file`; Gemini:
    /// an `@path` it reads itself; and under `ask`, each protocol's image content in the first
    /// message); a file that only looks like one by name does not.
    async fn an_image_attachment_reaches_the_model(agent: &'static Agent, ask: bool) {
        let mut w = World::new(agent).await;
        let caps = capabilities_of(&w, agent.name).await;
        assert!(caps.iter().any(|c| c == "images"), "{caps:?}");
        let request = |w: &World| match ask {
            true => w.ask("image-digest"),
            false => w.request("image-digest"),
        };
        w.session =
            w.c.create_session(&[("pixel.png", PIXEL_PNG), ("fake.png", b"not an image")])
                .await
                .session_id;
        let req = pb::SubmitJobRequest {
            attachments: vec!["pixel.png".into()],
            ..request(&w)
        };
        let (job, events) = w.run_req(req).await;
        w.expect_state(&job, &events, pb::JobState::Succeeded);
        let why = w.explain(&job, &events);
        assert_eq!(job.result, image_digest(PIXEL_PNG), "{why}");

        // In a new session: the first one's conversation holds the image.
        w.session =
            w.c.create_session(&[("fake.png", b"not an image")])
                .await
                .session_id;
        let req = pb::SubmitJobRequest {
            attachments: vec!["fake.png".into()],
            ..request(&w)
        };
        let (job, events) = w.run_req(req).await;
        w.expect_state(&job, &events, pb::JobState::Succeeded);
        assert_eq!(job.result, "no image", "{}", w.explain(&job, &events));
    }

    #[tokio::test]
    async fn claude_gets_an_image_attachment_as_an_image() {
        scenario(an_image_attachment_reaches_the_model(&CLAUDE, false)).await;
    }

    #[tokio::test]
    async fn codex_gets_an_image_attachment_as_an_image() {
        scenario(an_image_attachment_reaches_the_model(&CODEX, false)).await;
    }

    #[tokio::test]
    async fn opencode_gets_an_image_attachment_as_an_image() {
        scenario(an_image_attachment_reaches_the_model(&OPENCODE, false)).await;
    }

    #[tokio::test]
    async fn gemini_gets_an_image_attachment_as_an_image() {
        scenario(an_image_attachment_reaches_the_model(&GEMINI, false)).await;
    }

    #[tokio::test]
    async fn claude_gets_an_image_attachment_as_an_image_when_it_asks() {
        scenario(an_image_attachment_reaches_the_model(&CLAUDE, true)).await;
    }

    #[tokio::test]
    async fn codex_gets_an_image_attachment_as_an_image_when_it_asks() {
        scenario(an_image_attachment_reaches_the_model(&CODEX, true)).await;
    }

    #[tokio::test]
    async fn opencode_gets_an_image_attachment_as_an_image_when_it_asks() {
        scenario(an_image_attachment_reaches_the_model(&OPENCODE, true)).await;
    }

    #[tokio::test]
    async fn gemini_gets_an_image_attachment_as_an_image_when_it_asks() {
        scenario(an_image_attachment_reaches_the_model(&GEMINI, true)).await;
    }

    /// The newer job fields come from a preset: its system prompt replaces Claude's, its deltas
    /// stream, its attachment reaches the model as an image, and a job cannot set what the
    /// preset does not let it.
    #[tokio::test]
    async fn claude_preset_carries_system_prompt_deltas_and_images() {
        scenario(async {
            let mut w = World::with_config(&CLAUDE, |_| {
                "[presets.caps]\nsystem_prompt = \"You are the zebra-88 agent.\"\n\
                 stream_deltas = true\noverridable = [\"prompt\"]\n\
                 [presets.look]\nattachments = [\"pixel.png\"]\n\
                 prompt_template = \"image-digest\"\n"
                    .to_owned()
            })
            .await;
            w.session =
                w.c.create_session(&[("pixel.png", PIXEL_PNG)])
                    .await
                    .session_id;
            // Agent and timeout come from the server's defaults: the presets do not let a job
            // set them.
            let from_preset = |w: &World, preset: &str, prompt: &str| pb::SubmitJobRequest {
                session_id: w.session.clone(),
                preset: preset.into(),
                prompt: prompt.into(),
                ..Default::default()
            };
            let req = from_preset(&w, "caps", "agents-visible zebra-88");
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            let why = w.explain(&job, &events);
            assert_eq!(job.result, "agent zebra-88 visible", "{why}");
            let streamed: String = deltas(&events, false).into_iter().map(|(_, t)| t).collect();
            assert_eq!(streamed, job.result, "{why}");

            let req = from_preset(&w, "look", "");
            let (job, events) = w.run_req(req).await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert_eq!(
                job.result,
                image_digest(PIXEL_PNG),
                "{}",
                w.explain(&job, &events)
            );

            let req = pb::SubmitJobRequest {
                system_prompt: "You are someone else.".into(),
                ..from_preset(&w, "look", "")
            };
            let st = w.submit(req).await.unwrap_err();
            assert_eq!(common::reason(&st), "PRESET_OVERRIDE_DENIED", "{st:?}");
        })
        .await;
    }

    fn thinking_of(events: &[pb::JobEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(pb::job_event::Kind::Thinking(t)) => Some(t.text.clone()),
                _ => None,
            })
            .collect()
    }

    fn plan_of(events: &[pb::JobEvent]) -> Option<Vec<(String, String)>> {
        events.iter().find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Plan(p)) => Some(
                p.items
                    .iter()
                    .map(|i| (i.content.clone(), i.status.clone()))
                    .collect(),
            ),
            _ => None,
        })
    }

    fn planned() -> Option<Vec<(String, String)>> {
        Some(vec![
            ("write the tests".into(), "in_progress".into()),
            ("ship it".into(), "pending".into()),
        ])
    }

    /// What GetServerInfo says the agent `name` can do.
    async fn capabilities_of(w: &World, name: &str) -> Vec<String> {
        let got = w.server.server_info().await;
        let agent = got.agents.into_iter().find(|a| a.name == name);
        agent.expect("the agent").capabilities
    }

    /// OpenCode's reasoning (`--thinking`) and its todowrite calls are typed events, as its
    /// capabilities say.
    #[tokio::test]
    async fn opencode_thinking_and_plans_are_typed_events() {
        scenario(async {
            let mut w = World::new(&OPENCODE).await;
            let caps = capabilities_of(&w, "opencode").await;
            assert!(
                caps.iter().any(|c| c == "thinking") && caps.iter().any(|c| c == "plan"),
                "{caps:?}"
            );
            let (job, events) = w.run("think about the deep structure").await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            let why = w.explain(&job, &events);
            assert_eq!(thinking_of(&events), ["about the deep structure"], "{why}");
            assert_eq!(job.result, "Thought it over.", "{why}");

            let (job, events) = w.run("todo write the tests; ship it").await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert_eq!(plan_of(&events), planned(), "{}", w.explain(&job, &events));
        })
        .await;
    }

    /// Gemini CLI's write_todos calls (offered to Gemini 2 models) are plan events; its
    /// stream-json prints no thoughts, so its capabilities do not claim `thinking` and a model
    /// that thinks yields none.
    #[tokio::test]
    async fn gemini_plans_are_typed_events_and_thinking_is_not_claimed() {
        scenario(async {
            let mut w = World::new(&GEMINI).await;
            let caps = capabilities_of(&w, "gemini").await;
            assert!(caps.iter().any(|c| c == "plan"), "{caps:?}");
            assert!(!caps.iter().any(|c| c == "thinking"), "{caps:?}");
            let gemini2 = |w: &World, prompt: &str| pb::SubmitJobRequest {
                model: "gemini-2.5-flash".into(),
                ..w.request(prompt)
            };
            let (job, events) = w
                .run_req(gemini2(&w, "todo write the tests; ship it"))
                .await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            assert_eq!(plan_of(&events), planned(), "{}", w.explain(&job, &events));

            let (job, events) = w
                .run_req(gemini2(&w, "think about the deep structure"))
                .await;
            w.expect_state(&job, &events, pb::JobState::Succeeded);
            let why = w.explain(&job, &events);
            assert_eq!(job.result, "Thought it over.", "{why}");
            assert!(thinking_of(&events).is_empty(), "{why}");
        })
        .await;
    }

    /// claude → codex → claude in one session: each agent continues its own conversation and
    /// is never handed the other's id.
    #[tokio::test]
    async fn switching_agents_resumes_each_agents_own_conversation() {
        scenario(async {
            let mut w = World::multi(&[&CLAUDE, &CODEX]).await;
            let (c1, events) = w.run("remember claude-kiwi").await;
            w.expect_state(&c1, &events, pb::JobState::Succeeded);

            let req = pb::SubmitJobRequest {
                agent: "codex".into(),
                ..w.request("remember codex-mango")
            };
            let (x1, events) = w.run_req(req).await;
            let why = w.explain(&x1, &events);
            assert_eq!(x1.state, pb::JobState::Succeeded as i32, "{why}");
            assert_eq!(
                resumed(&events),
                "",
                "codex was handed a conversation\n{why}"
            );

            let (c2, events) = w.run("recall").await;
            w.expect_state(&c2, &events, pb::JobState::Succeeded);
            let why = w.explain(&c2, &events);
            assert_eq!(resumed(&events), c1.conversation_id, "{why}");
            assert_eq!(c2.result, "You asked me to remember claude-kiwi.", "{why}");

            let req = pb::SubmitJobRequest {
                agent: "codex".into(),
                ..w.request("recall")
            };
            let (x2, events) = w.run_req(req).await;
            let why = w.explain(&x2, &events);
            assert_eq!(resumed(&events), x1.conversation_id, "{why}");
            assert_eq!(x2.result, "You asked me to remember codex-mango.", "{why}");
        })
        .await;
    }

    fn resumed(events: &[pb::JobEvent]) -> String {
        events
            .iter()
            .find_map(|e| match &e.kind {
                Some(pb::job_event::Kind::Started(s)) => Some(s.resumed_conversation_id.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Codex under `ask` runs the app server: every turn agentd starts carries the job's
/// `output_schema` (`turn/start`'s `outputSchema`), so the model is asked for JSON fitting it,
/// as `codex exec --output-schema` asks for a job that does not ask.
#[tokio::test]
async fn codex_ask_honours_the_output_schema() {
    scenario(async {
        let mut w = World::new(&CODEX).await;
        let req = pb::SubmitJobRequest {
            output_schema: SCHEMA.into(),
            ..w.ask(r#"json {"n": 7}"#)
        };
        let (job, events) = w.run_req(req).await;
        w.expect_state(&job, &events, pb::JobState::Succeeded);
        let got: serde_json::Value =
            serde_json::from_str(&job.structured_result).unwrap_or_default();
        assert_eq!(
            got,
            serde_json::json!({"n": 7}),
            "{}",
            w.explain(&job, &events)
        );
        let turns: Vec<serde_json::Value> = w
            .mock
            .requests_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["api"] == "responses" && !r["tools"].as_array().is_none_or(Vec::is_empty))
            .collect();
        assert!(!turns.is_empty(), "{}", w.explain(&job, &events));
        assert!(
            turns.iter().all(|r| r["json_schema"] == true),
            "{}",
            w.explain(&job, &events)
        );
    })
    .await;
}
