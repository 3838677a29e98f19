//! Tool permission rules in the agent-independent form `Tool(pattern)` (`Bash(git status*)`,
//! `Write(src/**)`, `WebFetch`): parsing, and the decision for one tool call, where the
//! operator's deny rules win over everything a job says.

use crate::error::{Error, Reason, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest rule accepted.
const MAX_RULE: usize = 512;
/// Most rules per list.
pub const MAX_RULES: usize = 64;

/// One side's allow and deny rules (a job's, or an operator's profile).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// How a rule decided a tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecision {
    pub allow: bool,
    /// The rule that decided, as written.
    pub rule: String,
}

/// Checks a list of rules; `field` names it in the error.
pub fn validate_rules(field: &str, rules: &[String]) -> Result<()> {
    if rules.len() > MAX_RULES {
        return Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} holds more than {MAX_RULES} rules"),
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        if parse(r).is_none() {
            return Err(Error::invalid(
                Reason::InvalidField,
                format!("{field}[{i}]"),
                format!(
                    "{field}[{i}] must be Tool or Tool(pattern), at most {MAX_RULE} printable \
                     characters, with a tool name of letters, digits, `_`, `-`, `.` or `:`"
                ),
            ));
        }
    }
    Ok(())
}

/// `Tool(pattern)` → (tool, Some(pattern)); `Tool` → (tool, None).
fn parse(rule: &str) -> Option<(&str, Option<&str>)> {
    if rule.is_empty() || rule.len() > MAX_RULE || rule.chars().any(char::is_control) {
        return None;
    }
    let (tool, pattern) = match rule.find('(') {
        Some(i) => (&rule[..i], Some(rule[i + 1..].strip_suffix(')')?)),
        None => (rule, None),
    };
    let name_ok = !tool.is_empty()
        && tool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    name_ok.then_some((tool, pattern))
}

/// What a pattern of a tool is matched against: the command of a shell tool, the path (relative
/// to the workspace when under it) of a file tool, the URL of a fetch; else the input as JSON.
fn subject(tool: &str, input: &Value, workspace: &str) -> String {
    let field = |k: &str| input.get(k).and_then(Value::as_str).map(str::to_owned);
    let found = match tool {
        "Bash" => field("command"),
        "WebFetch" => field("url"),
        _ => field("file_path")
            .or_else(|| field("notebook_path"))
            .or_else(|| field("path"))
            .map(|p| relative(&p, workspace)),
    };
    found.unwrap_or_else(|| input.to_string())
}

fn relative(path: &str, workspace: &str) -> String {
    let ws = workspace.trim_end_matches('/');
    match path.strip_prefix(ws).and_then(|r| r.strip_prefix('/')) {
        Some(rest) if !ws.is_empty() => rest.to_owned(),
        _ => path.to_owned(),
    }
}

/// Glob where `*` (and `**`) matches any run of characters, `/` included.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return text.is_empty(),
    };
    let Some(mut tail) = text.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return tail.is_empty();
    };
    for part in middle.iter().filter(|p| !p.is_empty()) {
        match tail.find(part) {
            Some(i) => tail = &tail[i + part.len()..],
            None => return false,
        }
    }
    tail.ends_with(last)
}

fn matches(rule: &str, tool: &str, input: &Value, workspace: &str) -> bool {
    match parse(rule) {
        Some((t, _)) if t != tool => false,
        Some((_, None)) => true,
        Some((_, Some(p))) => glob(p, &subject(tool, input, workspace)),
        None => false,
    }
}

/// The decision of the rules for one tool call, `None` when none applies (ask the caller). The
/// operator's deny wins over everything, then the job's deny, then either side's allow.
pub fn decide(
    operator: &PermissionRules,
    job: &PermissionRules,
    tool: &str,
    input: &Value,
    workspace: &str,
) -> Option<RuleDecision> {
    let hit = |rules: &[String], allow: bool| {
        rules
            .iter()
            .find(|r| matches(r, tool, input, workspace))
            .map(|r| RuleDecision {
                allow,
                rule: r.clone(),
            })
    };
    hit(&operator.deny, false)
        .or_else(|| hit(&job.deny, false))
        .or_else(|| hit(&operator.allow, true))
        .or_else(|| hit(&job.allow, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(allow: &[&str], deny: &[&str]) -> PermissionRules {
        PermissionRules {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn patterns_match_the_tools_own_subject() {
        let bash = json!({"command": "git status --short"});
        let write = json!({"file_path": "/ws/src/a/b.rs", "content": "x"});
        let none = PermissionRules::default();
        let job = rules(&["Bash(git status*)", "Write(src/**)"], &[]);
        assert!(decide(&none, &job, "Bash", &bash, "/ws").is_some_and(|d| d.allow));
        assert!(decide(&none, &job, "Write", &write, "/ws/").is_some_and(|d| d.allow));
        let other = json!({"command": "git push"});
        assert_eq!(decide(&none, &job, "Bash", &other, "/ws"), None);
        let outside = json!({"file_path": "/etc/src/x"});
        assert_eq!(decide(&none, &job, "Write", &outside, "/ws"), None);
        let bare = rules(&["WebFetch"], &[]);
        assert!(decide(&none, &bare, "WebFetch", &json!({"url": "u"}), "/ws").is_some());
    }

    #[test]
    fn the_operators_deny_wins_over_the_jobs_allow() {
        let op = rules(&[], &["Bash(*push*)"]);
        let job = rules(&["Bash"], &[]);
        let d = decide(&op, &job, "Bash", &json!({"command": "git push"}), "/ws").unwrap();
        assert_eq!((d.allow, d.rule.as_str()), (false, "Bash(*push*)"));
        let job_deny = rules(&["Bash"], &["Bash(rm *)"]);
        let op_allow = rules(&["Bash"], &[]);
        let d = decide(
            &op_allow,
            &job_deny,
            "Bash",
            &json!({"command": "rm -rf x"}),
            "/",
        );
        assert!(d.is_some_and(|d| !d.allow));
    }

    #[test]
    fn malformed_rules_are_refused_naming_the_entry() {
        for bad in ["", "Bash(", "(x)", "Ba sh", "Bash(a\nb)", &"B".repeat(600)] {
            let err = validate_rules("allow_rules", &[bad.to_string()]).unwrap_err();
            assert!(err.to_string().contains("allow_rules[0]"), "{bad:?}: {err}");
        }
        validate_rules("deny_rules", &["Bash(git *)".into(), "mcp__x:y".into()]).unwrap();
    }

    #[test]
    fn glob_edges() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abd"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("*b*", "abc"));
    }
}
