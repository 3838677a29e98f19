//! Shared driver of the adapter line-parser targets: one profile per agent kind, fed the input
//! as stdout lines. The exhaustive match makes a new `AgentKind` fail to compile here until it
//! gets its own target.

use agentd::agents::{AgentKind, AgentProfile, OutputParser};

/// A secret value in the profile env, so any redaction path in a parser is exercised too.
const SECRET: &str = "sk-fuzz-secret-value-0123456789";

/// The fuzz target of each kind. Exhaustive on purpose: a new kind fails to compile here until
/// it has a `parse_<kind>` target in Cargo.toml.
pub const fn target(kind: AgentKind) -> &'static str {
    match kind {
        AgentKind::Claude => "parse_claude",
        AgentKind::Command => "parse_command",
        AgentKind::Codex => "parse_codex",
        AgentKind::Opencode => "parse_opencode",
        AgentKind::Gemini => "parse_gemini",
    }
}

pub fn profile(kind: AgentKind) -> AgentProfile {
    AgentProfile {
        name: target(kind).trim_start_matches("parse_").to_owned(),
        kind,
        command: kind.default_command().unwrap_or("/bin/echo").to_owned(),
        args: Vec::new(),
        env: [("ANTHROPIC_API_KEY".to_owned(), SECRET.to_owned())].into(),
        config: None,
    }
}

/// The first byte chooses which lines are marked as cut (as the runner does for over-long
/// lines); the rest is split into lines, invalid UTF-8 replaced as the runner does.
pub fn run(kind: AgentKind, data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parser: Box<dyn OutputParser> = agentd::agents::parser(&profile(kind));
    for (i, line) in rest.split(|b| *b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(line);
        let truncated = flags & (1 << (i % 8)) != 0;
        let events = parser.parse_line(&text, truncated);
        for e in &events {
            if let Some(raw) = &e.raw {
                // Raw lines are the agent's own text; they must never grow beyond the input.
                assert!(
                    raw.len() <= text.len() + 64,
                    "raw grew: {} > {}",
                    raw.len(),
                    text.len()
                );
            }
        }
    }
    let _ = parser.summary();
}
