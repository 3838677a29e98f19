//! The `command` kind: an operator-defined program run as `command args… <prompt>`. It speaks no
//! protocol, so every stdout line is plain text and the job's result is that text.

use super::{AgentProfile, Launch, OutputParser, Parsed, Summary, unsupported};
use crate::domain::{EventKind, JobSpec};
use crate::error::{Error, Reason, Result};

/// How much of the output the result keeps: its tail, since that is where a command's answer is.
const RESULT_LIMIT: usize = 64 * 1024;

/// Longest single argument Linux passes to exec (`MAX_ARG_STRLEN`, 32 pages, less the NUL).
const MAX_ARG_BYTES: usize = 128 * 1024 - 1;

pub(super) fn validate(profile: &AgentProfile, spec: &JobSpec) -> Result<()> {
    let set = [
        ("model", spec.model.is_some()),
        ("allowed_tools", !spec.allowed_tools.is_empty()),
        ("max_turns", spec.max_turns.is_some()),
        ("append_system_prompt", spec.append_system_prompt.is_some()),
        ("permission_mode", spec.permission_mode.is_some()),
    ];
    if let Some((field, _)) = set.into_iter().find(|(_, is_set)| *is_set) {
        return Err(unsupported(profile, field));
    }
    // The prompt is an argument here (the command's contract), and Linux caps one at 128 KiB
    // including its NUL: refused now rather than failing at exec.
    if spec.prompt.len() > MAX_ARG_BYTES {
        return Err(Error::invalid(
            Reason::InvalidField,
            "prompt",
            format!(
                "agent {:?} (kind command) takes the prompt as an argument: at most {MAX_ARG_BYTES} bytes",
                profile.name
            ),
        ));
    }
    Ok(())
}

pub(super) fn launch(profile: &AgentProfile, spec: &JobSpec) -> Launch {
    let mut args = profile.args.clone();
    args.push(spec.prompt.clone());
    Launch {
        program: profile.command.clone(),
        args,
        env: Vec::new(),
        files: Vec::new(),
        stdin: None,
    }
}

/// Every line is text; the result is the joined text, bounded to its last [`RESULT_LIMIT`] bytes.
#[derive(Debug, Default)]
pub(super) struct CommandParser {
    /// Joined output. Allowed to grow to twice the limit before trimming, so trimming (a copy of
    /// the tail) happens once per limit's worth of output rather than on every line.
    text: String,
    any_line: bool,
}

impl OutputParser for CommandParser {
    fn parse_line(&mut self, line: &str, _truncated: bool) -> Vec<Parsed> {
        if self.any_line {
            self.text.push('\n');
        }
        self.any_line = true;
        self.text.push_str(line);
        if self.text.len() > 2 * RESULT_LIMIT {
            let start = tail_start(&self.text, RESULT_LIMIT);
            self.text.drain(..start);
        }
        vec![Parsed {
            kind: EventKind::Text {
                text: line.to_owned(),
            },
            raw: None,
        }]
    }

    fn summary(&self) -> Summary {
        let start = tail_start(&self.text, RESULT_LIMIT);
        Summary {
            result: self.any_line.then(|| self.text[start..].to_owned()),
            ..Summary::default()
        }
    }
}

/// The byte index where the last at most `limit` bytes of `s` begin, on a char boundary.
fn tail_start(s: &str, limit: usize) -> usize {
    let mut start = s.len().saturating_sub(limit);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    start
}

#[cfg(test)]
mod tests {
    use super::super::tests::{profile, refuses_each_option, spec};
    use super::super::{AgentKind, parser, validate};
    use super::*;
    use crate::error::{Error, Reason};
    use std::path::Path;

    #[test]
    fn a_prompt_too_long_for_one_argument_is_refused_at_submit() {
        let p = profile(AgentKind::Command, "/usr/bin/my-agent", &[]);
        assert!(super::super::validate(&p, &spec(&"x".repeat(MAX_ARG_BYTES))).is_ok());
        let err = super::super::validate(&p, &spec(&"x".repeat(MAX_ARG_BYTES + 1))).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { field, reason: Reason::InvalidField, .. } if field == "prompt"),
            "{err:?}"
        );
    }

    #[test]
    fn launch_puts_the_prompt_last_as_one_argument() {
        let p = profile(AgentKind::Command, "/usr/bin/my-agent", &["--fast", "-x"]);
        let ctx = super::super::LaunchContext {
            workspace: Path::new("/ws"),
            home: Path::new("/home"),
            resume_conversation: Some("ignored"),
            jailed: false,
            mcp: &[],
            images: &[],
        };
        let l = super::super::launch(&p, &spec("do it; rm -rf /"), &ctx).unwrap();
        assert_eq!(l.program, "/usr/bin/my-agent");
        assert_eq!(l.args, ["--fast", "-x", "do it; rm -rf /"]);
        assert!(l.env.is_empty());
        assert!(l.files.is_empty());
    }

    #[test]
    fn validate_refuses_each_agent_option_naming_it() {
        let p = profile(AgentKind::Command, "echo", &[]);
        assert!(validate(&p, &spec("hi")).is_ok());
        refuses_each_option(
            &p,
            "agent \"command\" (kind command)",
            &[
                "model",
                "allowed_tools",
                "max_turns",
                "append_system_prompt",
                "permission_mode",
            ],
        );
    }

    #[test]
    fn each_line_is_text_and_the_result_joins_them() {
        let mut p = parser(&profile(AgentKind::Command, "echo", &[]));
        assert_eq!(p.summary().result, None);
        let ev = p.parse_line("{\"type\":\"system\"}", false);
        assert_eq!(
            ev,
            vec![Parsed {
                kind: EventKind::Text {
                    text: "{\"type\":\"system\"}".into()
                },
                raw: None
            }]
        );
        p.parse_line("", false);
        p.parse_line("last", true);
        let s = p.summary();
        assert_eq!(s.result.as_deref(), Some("{\"type\":\"system\"}\n\nlast"));
        assert_eq!(s.error, None);
        assert_eq!(s.conversation_id, None);
    }

    #[test]
    fn result_keeps_only_the_last_64_kib_on_char_boundaries() {
        let mut p = CommandParser::default();
        // Multi-byte chars so that the cut point falls inside one unless handled.
        let line = "é".repeat(1000);
        for _ in 0..200 {
            p.parse_line(&line, false);
        }
        p.parse_line("THE END", false);
        let result = p.summary().result.unwrap();
        assert!(result.len() <= RESULT_LIMIT, "{}", result.len());
        assert!(result.len() > RESULT_LIMIT - 4);
        assert!(result.ends_with("\nTHE END"));
        assert!(p.text.len() <= 2 * RESULT_LIMIT + line.len() + 1);
    }
}
