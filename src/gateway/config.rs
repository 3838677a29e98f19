//! The gateway's settings: each profile's upstream (`[agents.<name>.gateway]`), model prices
//! (`[prices."<model>"]`) and tenant budgets (`[budgets]`), resolved once. The provider key is
//! held as a [`Secret`] whose `Debug` never shows it.

use crate::agents::AgentKind;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[agents.<name>.gateway]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGateway {
    pub upstream_url: String,
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    /// Which provider API the upstream speaks; defaults from the agent kind.
    pub api: Option<Api>,
}

/// `[prices."<model>"]`: USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    #[serde(default)]
    pub cache_read_per_mtok: f64,
    #[serde(default)]
    pub cache_write_per_mtok: f64,
}

/// `[budgets]`: per tenant and period; 0 or unset means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default)]
    pub tenant_daily_usd: f64,
    #[serde(default)]
    pub tenant_monthly_usd: f64,
    #[serde(default)]
    pub tenant_daily_tokens: u64,
    #[serde(default)]
    pub tenant_monthly_tokens: u64,
    /// Over a session's whole life.
    #[serde(default)]
    pub session_usd: f64,
    #[serde(default)]
    pub session_tokens: u64,
}

/// The model API family an upstream speaks; decides how the key is sent and usage is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Anthropic,
    Openai,
    Gemini,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::Openai => "openai",
            Api::Gemini => "gemini",
        }
    }

    fn of_kind(kind: AgentKind) -> Option<Api> {
        match kind {
            AgentKind::Claude => Some(Api::Anthropic),
            AgentKind::Codex | AgentKind::Opencode => Some(Api::Openai),
            AgentKind::Gemini => Some(Api::Gemini),
            AgentKind::Command => None,
        }
    }
}

/// A provider key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One profile's resolved upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    pub url: String,
    pub api: Api,
    pub key: Secret,
}

/// Everything the gateway needs from the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayConfig {
    /// Profiles routed through the gateway, by name.
    pub upstreams: BTreeMap<String, Upstream>,
    pub prices: BTreeMap<String, Price>,
    pub budgets: Budgets,
}

impl GatewayConfig {
    pub fn enabled(&self) -> bool {
        !self.upstreams.is_empty()
    }
}

/// The provider a profile without a `[gateway]` names in its `env`, as the gateway it gets by
/// default: the kind's key variable (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `GEMINI_API_KEY` or
/// `GOOGLE_API_KEY`) becomes the upstream's key and the kind's base-URL variable, else the
/// provider's public endpoint, its URL. `None` when the env holds no key (a provider configured
/// otherwise, e.g. a custom `env_key`, keeps its direct route).
pub fn from_provider_env(kind: AgentKind, env: &BTreeMap<String, String>) -> Option<FileGateway> {
    let (keys, url_var, public): (&[&str], &str, &str) = match kind {
        AgentKind::Claude => (
            &["ANTHROPIC_API_KEY"],
            "ANTHROPIC_BASE_URL",
            "https://api.anthropic.com",
        ),
        AgentKind::Codex | AgentKind::Opencode => (
            &["OPENAI_API_KEY"],
            "OPENAI_BASE_URL",
            "https://api.openai.com",
        ),
        AgentKind::Gemini => (
            &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            "GOOGLE_GEMINI_BASE_URL",
            "https://generativelanguage.googleapis.com",
        ),
        AgentKind::Command => return None,
    };
    let key = keys
        .iter()
        .find_map(|k| env.get(*k).filter(|v| !v.is_empty()))?;
    let url = env.get(url_var).map_or(public, |u| u.trim_end_matches('/'));
    // OpenAI's clients take a base URL ending in `/v1`; the gateway appends the CLI's own path,
    // which has it already.
    let url = match kind {
        AgentKind::Codex | AgentKind::Opencode => url.strip_suffix("/v1").unwrap_or(url),
        _ => url,
    };
    Some(FileGateway {
        upstream_url: url.to_owned(),
        api_key: Some(key.clone()),
        api_key_env: None,
        api: None,
    })
}

/// Resolves one profile's `[agents.<name>.gateway]`; errors are worded for the operator and never
/// hold the key.
pub fn resolve_upstream(name: &str, kind: AgentKind, g: FileGateway) -> Result<Upstream, String> {
    let url = g.upstream_url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(['?', '#']) {
        return Err(format!(
            "agents.{name}.gateway.upstream_url must be an http:// or https:// URL without a query"
        ));
    }
    let api = g.api.or(Api::of_kind(kind)).ok_or_else(|| {
        format!("agents.{name}.gateway.api is required for an agent of kind {kind}")
    })?;
    let key = match (g.api_key, g.api_key_env) {
        (Some(k), None) => k,
        (None, Some(var)) => std::env::var(&var)
            .map_err(|_| format!("agents.{name}.gateway.api_key_env: {var} is not set"))?,
        _ => {
            return Err(format!(
                "agents.{name}.gateway needs exactly one of api_key and api_key_env"
            ));
        }
    };
    if key.len() < 4 || key.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("agents.{name}.gateway: the API key is malformed"));
    }
    Ok(Upstream {
        url,
        api,
        key: Secret(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_key_in_the_profile_env_becomes_its_default_gateway() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let g =
            from_provider_env(AgentKind::Claude, &env(&[("ANTHROPIC_API_KEY", "sk-a")])).unwrap();
        assert_eq!(
            (g.upstream_url.as_str(), g.api_key.as_deref()),
            ("https://api.anthropic.com", Some("sk-a"))
        );
        let g = from_provider_env(
            AgentKind::Codex,
            &env(&[
                ("OPENAI_API_KEY", "sk-o"),
                ("OPENAI_BASE_URL", "http://h:1/v1/"),
            ]),
        )
        .unwrap();
        assert_eq!(g.upstream_url, "http://h:1");
        let g = from_provider_env(AgentKind::Gemini, &env(&[("GOOGLE_API_KEY", "g")])).unwrap();
        assert_eq!(g.upstream_url, "https://generativelanguage.googleapis.com");
        // No key of the kind's own: no gateway.
        assert!(from_provider_env(AgentKind::Claude, &env(&[("OPENAI_API_KEY", "x")])).is_none());
        assert!(from_provider_env(AgentKind::Codex, &env(&[("MOCK_API_KEY", "x")])).is_none());
        assert!(from_provider_env(AgentKind::Command, &env(&[("OPENAI_API_KEY", "x")])).is_none());
    }

    #[test]
    fn resolves_key_and_api_and_never_prints_the_key() {
        let g: FileGateway =
            toml::from_str("upstream_url = \"http://h:1/\"\napi_key = \"sk-real-123\"").unwrap();
        let up = resolve_upstream("c", AgentKind::Claude, g).unwrap();
        assert_eq!(up.url, "http://h:1");
        assert_eq!(up.api, Api::Anthropic);
        assert!(!format!("{up:?}").contains("sk-real-123"));
        for bad in [
            "upstream_url = \"ftp://h\"\napi_key = \"abcd\"",
            "upstream_url = \"http://h\"",
            "upstream_url = \"http://h\"\napi_key = \"abcd\"\napi_key_env = \"X\"",
            "upstream_url = \"http://h\"\napi_key_env = \"AGENTD_TEST_SURELY_UNSET_VAR\"",
        ] {
            let g: FileGateway = toml::from_str(bad).unwrap();
            assert!(
                resolve_upstream("c", AgentKind::Claude, g).is_err(),
                "{bad}"
            );
        }
        let g: FileGateway =
            toml::from_str("upstream_url = \"http://h\"\napi_key = \"abcd\"").unwrap();
        assert!(resolve_upstream("c", AgentKind::Command, g).is_err());
    }
}
