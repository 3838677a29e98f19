//! Pointing each CLI at agentd's model gateway instead of its provider: the base URL and the job
//! token go where the CLI gives them the highest precedence, above anything a project config in
//! the workspace may say (Claude Code: `--settings` env and user settings only; Codex: `-c`
//! overrides; OpenCode: `OPENCODE_CONFIG_CONTENT`; Gemini CLI: its env, which its `.env` files
//! never override).

use super::{AgentKind, AgentProfile, Launch};
use serde_json::{Value, json};

/// Env names through which the CLIs take a provider key or endpoint; the profile's values are
/// dropped for a gateway profile (the key is the gateway's to add).
const PROVIDER_ENV: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
];

/// The env a gateway profile's agent must not inherit from the profile.
pub fn is_provider_env(name: &str) -> bool {
    PROVIDER_ENV.contains(&name)
}

/// Rewrites `launch` so the agent talks to `base_url` (the gateway, `…/gw/<profile>`) with
/// `token`. Returns the env the agent must have, applied last by the caller.
pub fn via_gateway(
    profile: &AgentProfile,
    launch: &mut Launch,
    base_url: &str,
    token: &str,
) -> Vec<(String, String)> {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    match profile.kind {
        AgentKind::Claude => {
            let settings = json!({
                "env": { "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": token }
            });
            launch.args.extend([
                "--setting-sources".into(),
                "user".into(),
                "--settings".into(),
                settings.to_string(),
            ]);
            env(&[
                ("ANTHROPIC_BASE_URL", base_url),
                ("ANTHROPIC_API_KEY", token),
            ])
        }
        AgentKind::Codex => {
            let provider = [
                "model_provider=\"agentd\"".to_owned(),
                "model_providers.agentd.name=\"agentd\"".to_owned(),
                format!(
                    "model_providers.agentd.base_url={}",
                    Value::from(format!("{base_url}/v1"))
                ),
                "model_providers.agentd.env_key=\"OPENAI_API_KEY\"".to_owned(),
                "model_providers.agentd.wire_api=\"responses\"".to_owned(),
            ];
            // After `exec`, before everything else (options must precede `resume`).
            let at = 1.min(launch.args.len());
            let flags = provider.into_iter().flat_map(|p| ["-c".to_owned(), p]);
            launch.args.splice(at..at, flags);
            env(&[("OPENAI_API_KEY", token)])
        }
        AgentKind::Opencode => {
            let content = opencode_overrides(profile.config.as_deref(), base_url, token);
            env(&[
                ("OPENCODE_CONFIG_CONTENT", content.as_str()),
                ("OPENCODE_DISABLE_PROJECT_CONFIG", "1"),
            ])
        }
        AgentKind::Gemini => env(&[
            ("GOOGLE_GEMINI_BASE_URL", base_url),
            ("GEMINI_API_KEY", token),
        ]),
        AgentKind::Command => env(&[
            ("AGENTD_GATEWAY_URL", base_url),
            ("AGENTD_GATEWAY_TOKEN", token),
        ]),
    }
}

/// OpenCode's inline config (its highest-precedence layer): every provider of the operator's
/// config and the chosen model keep their settings, with the gateway as base URL and the token
/// as key.
fn opencode_overrides(config: Option<&str>, base_url: &str, token: &str) -> String {
    let operator: Value = config
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or(Value::Null);
    let mut providers = serde_json::Map::new();
    if let Some(map) = operator.get("provider").and_then(Value::as_object) {
        for (name, p) in map {
            let npm = p.get("npm").and_then(Value::as_str).unwrap_or("");
            let path = if npm.contains("google") {
                "/v1beta"
            } else {
                "/v1"
            };
            providers.insert(
                name.clone(),
                json!({ "options": { "baseURL": format!("{base_url}{path}"), "apiKey": token } }),
            );
        }
    }
    let mut out = json!({ "provider": providers });
    if let Some(model) = operator.get("model") {
        out["model"] = model.clone();
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::tests::profile;

    fn launch(args: &[&str]) -> Launch {
        Launch {
            program: "x".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            files: Vec::new(),
            stdin: None,
        }
    }

    #[test]
    fn each_kind_gets_the_gateway_and_the_token_never_a_key() {
        let mut p = profile(AgentKind::Codex, "codex", &[]);
        let mut l = launch(&["exec", "--json", "--", "prompt"]);
        let env = via_gateway(&p, &mut l, "http://127.0.0.1:9/gw/codex", "agj_t");
        assert_eq!(l.args[1], "-c");
        assert!(
            l.args
                .iter()
                .any(|a| a.contains("http://127.0.0.1:9/gw/codex/v1"))
        );
        assert_eq!(l.args[l.args.len() - 2..], ["--", "prompt"]);
        assert_eq!(env, vec![("OPENAI_API_KEY".into(), "agj_t".into())]);

        p.kind = AgentKind::Opencode;
        p.config = Some(
            r#"{"provider":{"mock":{"npm":"@ai-sdk/openai-compatible","options":{"baseURL":"http://real","apiKey":"sk-real"}}},"model":"mock/m"}"#
                .into(),
        );
        let env = via_gateway(&p, &mut launch(&["run"]), "http://g/gw/o", "agj_t");
        let content: Value = serde_json::from_str(&env[0].1).unwrap();
        assert_eq!(
            content["provider"]["mock"]["options"]["baseURL"],
            "http://g/gw/o/v1"
        );
        assert_eq!(content["provider"]["mock"]["options"]["apiKey"], "agj_t");
        assert_eq!(content["model"], "mock/m");
        assert!(!env[0].1.contains("sk-real"));

        p.kind = AgentKind::Claude;
        let mut l = launch(&["-p", "hi"]);
        via_gateway(&p, &mut l, "http://g/gw/c", "agj_t");
        assert!(
            l.args
                .windows(2)
                .any(|w| w == ["--setting-sources", "user"])
        );
        assert!(is_provider_env("ANTHROPIC_API_KEY") && !is_provider_env("PATH"));
    }
}
