//! The MCP servers a job selected from the operator's catalog, in each agent's own configuration
//! format. Agents start these servers themselves, so they run inside the job's sandbox and die
//! with it. Each adapter also shuts out MCP servers from anywhere else (the agent's own files in
//! its HOME or workspace, which the jailed agent controls): see each function.

use crate::presets::McpServer;
use serde_json::{Map, Value, json};

/// The selected servers, by catalog name.
pub type Servers<'a> = &'a [(String, McpServer)];

/// A name no catalog entry can have (catalog names are `[A-Za-z0-9_-]`), for an allow-list that
/// must allow nothing.
pub(super) const NONE_ALLOWED: &str = "agentd:none";

/// `{"mcpServers": {...}}` for Claude's `--mcp-config` (used with `--strict-mcp-config`, which
/// ignores every other MCP configuration: ~/.claude.json, the workspace's .mcp.json, settings).
pub(super) fn claude(servers: Servers) -> Value {
    let mut out = Map::new();
    for (name, s) in servers {
        let v = match &s.url {
            Some(url) => json!({ "type": "http", "url": url }),
            None => json!({
                "type": "stdio",
                "command": s.command,
                "args": s.args,
                "env": s.env,
            }),
        };
        out.insert(name.clone(), v);
    }
    json!({ "mcpServers": out })
}

/// Gemini CLI's `mcpServers` settings object.
pub(super) fn gemini(servers: Servers) -> Value {
    let mut out = Map::new();
    for (name, s) in servers {
        let v = match &s.url {
            Some(url) => json!({ "httpUrl": url }),
            None => json!({ "command": s.command, "args": s.args, "env": s.env }),
        };
        out.insert(name.clone(), v);
    }
    Value::Object(out)
}

/// OpenCode's `mcp` config object.
pub(super) fn opencode(servers: Servers) -> Value {
    let mut out = Map::new();
    for (name, s) in servers {
        let v = match &s.url {
            Some(url) => json!({ "type": "remote", "url": url, "enabled": true }),
            None => {
                let mut cmd = vec![s.command.clone().unwrap_or_default()];
                cmd.extend(s.args.iter().cloned());
                json!({ "type": "local", "command": cmd, "environment": s.env, "enabled": true })
            }
        };
        out.insert(name.clone(), v);
    }
    Value::Object(out)
}

/// Codex's `[mcp_servers]` table.
pub(super) fn codex(servers: Servers) -> toml::Table {
    let mut out = toml::Table::new();
    for (name, s) in servers {
        let mut t = toml::Table::new();
        match &s.url {
            Some(url) => {
                t.insert("url".into(), url.clone().into());
            }
            None => {
                t.insert(
                    "command".into(),
                    s.command.clone().unwrap_or_default().into(),
                );
                t.insert(
                    "args".into(),
                    toml::Value::Array(s.args.iter().cloned().map(Into::into).collect()),
                );
                let env: toml::Table = s
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                t.insert("env".into(), toml::Value::Table(env));
            }
        }
        out.insert(name.clone(), toml::Value::Table(t));
    }
    out
}

/// A JSON config text (the operator's, or `{}`) with `key` set to `value`; a text that is not a
/// JSON object is kept as the base only if it parses, else replaced (the operator's config was
/// validated as JSON by the agent itself on every earlier job, so this is a corner case).
pub(super) fn json_with(base: Option<&str>, key: &str, value: Value) -> String {
    let mut obj = base
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
        .and_then(|v| match v {
            Value::Object(o) => Some(o),
            _ => None,
        })
        .unwrap_or_default();
    obj.insert(key.to_owned(), value);
    Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ctx, profile, spec};
    use super::super::{AgentKind, launch};
    use crate::presets::McpServer;
    use serde_json::Value;
    use std::collections::BTreeMap;

    fn servers() -> Vec<(String, McpServer)> {
        vec![
            (
                "echo".into(),
                McpServer {
                    command: Some("python3".into()),
                    args: vec!["/srv/echo.py".into()],
                    env: BTreeMap::from([("TOKEN".into(), "t0k".into())]),
                    url: None,
                },
            ),
            (
                "web".into(),
                McpServer {
                    command: None,
                    args: vec![],
                    env: BTreeMap::new(),
                    url: Some("https://mcp.example/mcp".into()),
                },
            ),
        ]
    }

    fn file<'a>(l: &'a super::super::Launch, suffix: &str) -> &'a [u8] {
        &l.files
            .iter()
            .find(|(p, _)| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no {suffix} in {:?}", l.files))
            .1
    }

    #[test]
    fn every_agent_gets_exactly_the_selected_servers_in_its_own_format() {
        let s = servers();
        let mut c = ctx(None);
        c.mcp = &s;

        let l = launch(&profile(AgentKind::Claude, "claude", &[]), &spec("x"), &c).unwrap();
        let at = l.args.iter().position(|a| a == "--mcp-config").unwrap();
        assert_eq!(l.args[at + 1], "/home/s1/.claude/agentd-mcp.json");
        assert!(l.args.contains(&"--strict-mcp-config".to_owned()));
        let v: Value = serde_json::from_slice(file(&l, "agentd-mcp.json")).unwrap();
        assert_eq!(v["mcpServers"]["echo"]["command"], "python3");
        assert_eq!(v["mcpServers"]["echo"]["env"]["TOKEN"], "t0k");
        assert_eq!(v["mcpServers"]["web"]["url"], "https://mcp.example/mcp");
        assert!(
            !l.args.iter().any(|a| a.contains("t0k")),
            "secrets stay out of argv"
        );

        let mut p = profile(AgentKind::Codex, "codex", &[]);
        p.config = Some("model = \"m\"\n[mcp_servers.rogue]\ncommand = \"x\"\n".into());
        let l = launch(&p, &spec("x"), &c).unwrap();
        let t: toml::Table = std::str::from_utf8(file(&l, "config.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(t["model"].as_str(), Some("m"));
        let m = t["mcp_servers"].as_table().unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), ["echo", "web"]);
        assert_eq!(m["echo"]["args"][0].as_str(), Some("/srv/echo.py"));

        let l = launch(
            &profile(AgentKind::Opencode, "opencode", &[]),
            &spec("x"),
            &c,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(file(&l, "opencode.json")).unwrap();
        assert_eq!(v["mcp"]["echo"]["command"][1], "/srv/echo.py");
        assert_eq!(v["mcp"]["web"]["type"], "remote");
        assert!(
            l.env
                .iter()
                .any(|(k, v)| k == "OPENCODE_DISABLE_PROJECT_CONFIG" && v == "1")
        );

        let l = launch(&profile(AgentKind::Gemini, "gemini", &[]), &spec("x"), &c).unwrap();
        let at = l
            .args
            .iter()
            .position(|a| a == "--allowed-mcp-server-names")
            .unwrap();
        assert_eq!(l.args[at + 1..at + 3], ["echo", "web"]);
        let v: Value = serde_json::from_slice(file(&l, "settings.json")).unwrap();
        assert_eq!(v["mcpServers"]["web"]["httpUrl"], "https://mcp.example/mcp");
        assert_eq!(
            v["security"]["folderTrust"]["enabled"], false,
            "the defaults stay"
        );
    }
}
