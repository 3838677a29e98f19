//! The scripted model server (`tests/fixtures/mock-model`) that agent CLIs run against: started on
//! a free port, its log of the requests it answered read back. Killed on drop (it also exits when
//! its stdin closes).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct MockModel {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// `http://` and the address.
    pub base: String,
    /// Its request log, one JSON object per line.
    pub log: PathBuf,
}

impl MockModel {
    /// Starts it with `args` besides the port and the log (e.g. `--expect-key <key>`), logging
    /// into `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> MockModel {
        let log = dir.join("mock-model.log");
        let mut child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mock-model"))
            .args(["--port", "0", "--log"])
            .arg(&log)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/fixtures/mock-model with python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("mock stdout"))
            .read_line(&mut line)
            .expect("read mock banner");
        let addr = line
            .trim()
            .strip_prefix("mock-model listening on ")
            .unwrap_or_else(|| panic!("unexpected mock banner {line:?}"))
            .to_owned();
        MockModel {
            child,
            base: format!("http://{addr}"),
            addr,
            log,
        }
    }

    /// The requests it answered, as logged (for failure messages and text searches).
    pub fn requests_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The requests it answered.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.requests_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The genuine Claude Code CLI that `scripts/install-agents` puts in `.cache/agents`.
pub fn genuine_claude() -> PathBuf {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/agents/node_modules/.bin/claude");
    assert!(
        cli.exists(),
        "{} is missing: run scripts/install-agents",
        cli.display()
    );
    cli
}

/// The `claude` profile (TOML) that runs Claude Code `cli` against the mock at `base`: no retries
/// (a failure shows at once) and no tool search (its extra model calls would not be scripted).
pub fn claude_profile(cli: &Path, base: &str) -> String {
    // TOML basic strings share JSON's escapes for everything that can occur here.
    let s = |v: &str| serde_json::to_string(v).expect("string");
    format!(
        "[agents.claude]\nkind = \"claude\"\ncommand = {}\n\
         [agents.claude.env]\n\
         ANTHROPIC_BASE_URL = {}\n\
         ANTHROPIC_API_KEY = \"sk-ant-e2e-mock-key\"\n\
         CLAUDE_CODE_MAX_RETRIES = \"0\"\n\
         ENABLE_TOOL_SEARCH = \"false\"\n",
        s(&cli.to_string_lossy()),
        s(base)
    )
}

impl Drop for MockModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
