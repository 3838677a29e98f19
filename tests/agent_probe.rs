//! The `--version` probe agentd runs at start for every profile (GetServerInfo's `version`). It
//! runs the operator's command outside any jail, so it must get nothing of the server's: not its
//! environment (every tenant's API key, the providers' keys) and not its working directory.

mod common;

use common::*;

/// Records what it was given, then answers like a CLI's `--version`.
const SPY: &str = r#"#!/bin/sh
{ echo "cwd=$(pwd)"; env; } > "$(dirname "$0")/seen.txt"
echo "spy-agent 9.9.9"
"#;

#[tokio::test]
async fn version_probe_gets_no_secret_and_a_private_directory() {
    let dir = tempfile::tempdir().unwrap();
    let spy = dir.path().join("spy.sh");
    std::fs::write(&spy, SPY).unwrap();
    std::fs::set_permissions(&spy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let provider_key = "sk-ant-probe-must-not-leak";
    let s = TestServer::start_with(Options {
        config: Some(format!(
            "[agents.spy]\nkind = \"claude\"\ncommand = {:?}\n[agents.spy.env]\nSPY_SETTING = \"kept\"\n",
            spy.to_string_lossy()
        )),
        env: vec![("ANTHROPIC_API_KEY".into(), provider_key.into())],
        ..Default::default()
    });

    let seen = std::fs::read_to_string(dir.path().join("seen.txt")).expect("the probe ran");
    for secret in [
        KEY_A,
        KEY_B,
        provider_key,
        "AGENTD_API_KEYS",
        "ANTHROPIC_API_KEY",
    ] {
        assert!(!seen.contains(secret), "the probe saw {secret}:\n{seen}");
    }
    assert!(seen.contains("SPY_SETTING=kept"), "{seen}");
    assert!(seen.lines().any(|l| l.starts_with("PATH=")), "{seen}");
    let cwd = seen
        .lines()
        .find_map(|l| l.strip_prefix("cwd="))
        .expect("cwd line");
    assert!(
        seen.lines().any(|l| l == format!("HOME={cwd}")),
        "HOME is the private dir:\n{seen}"
    );
    let here = std::env::current_dir().unwrap();
    assert_ne!(std::path::Path::new(cwd), here, "ran in the server's cwd");
    assert!(
        !std::path::Path::new(cwd).exists(),
        "the probe's directory {cwd} is left behind"
    );

    let got = s.server_info().await;
    let spy = got.agents.iter().find(|a| a.name == "spy").expect("spy");
    assert!(spy.available, "{spy:?}");
    assert_eq!(spy.version, "spy-agent 9.9.9");
}
