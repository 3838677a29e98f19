//! The agent's environment, built once with one precedence: the job's `env` over the profile's
//! `env` over the adapter's variables over the base (allowlisted variables of agentd's own
//! environment and the per-session `HOME`). Each name appears once: a list with duplicates reaches
//! `execve` as is on the standby path, where shells read the last value and glibc, Node and Python
//! the first, so an override would work or not depending on whether a standby was ready.

use std::collections::BTreeMap;
use std::path::Path;

/// Variables passed through from the server's own environment; everything else is dropped.
pub const ENV_ALLOWLIST: &[&str] = &["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "TMPDIR"];

/// The complete environment of a job's agent.
pub(super) fn agent_env(
    home: &Path,
    adapter: &[(String, String)],
    profile: &BTreeMap<String, String>,
    job: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let base = ENV_ALLOWLIST
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .chain([("HOME".to_owned(), home.to_string_lossy().into_owned())]);
    merge([base.collect(), adapter.to_vec(), pairs(profile), pairs(job)])
}

/// Points a gateway profile's agent at the gateway: the profile's provider keys and endpoints are
/// dropped, so is any variable holding the real `key` (a profile may carry it under another name),
/// and the gateway's `overrides` win over everything.
pub(super) fn route_through_gateway(
    env: &mut Vec<(String, String)>,
    overrides: &[(String, String)],
    key: &str,
) {
    env.retain(|(k, v)| {
        !crate::agents::gateway::is_provider_env(k)
            && (key.is_empty() || !v.contains(key))
            && !overrides.iter().any(|(o, _)| o == k)
    });
    env.extend(overrides.iter().cloned());
    env.sort();
}

/// Layers from lowest to highest precedence; a later layer's value replaces an earlier one's.
fn merge<const N: usize>(layers: [Vec<(String, String)>; N]) -> Vec<(String, String)> {
    let merged: BTreeMap<String, String> = layers.into_iter().flatten().collect();
    merged.into_iter().collect()
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv(pairs).into_iter().collect()
    }

    #[test]
    fn later_layers_win_and_each_name_appears_once() {
        let got = merge([
            kv(&[("A", "base"), ("B", "base")]),
            kv(&[("B", "adapter"), ("C", "adapter"), ("C", "adapter2")]),
            kv(&[("C", "profile"), ("D", "profile")]),
            kv(&[("D", "job")]),
        ]);
        assert_eq!(
            got,
            kv(&[
                ("A", "base"),
                ("B", "adapter"),
                ("C", "profile"),
                ("D", "job")
            ])
        );
    }

    #[test]
    fn job_over_profile_over_adapter_over_base() {
        let env = agent_env(
            Path::new("/ws/home"),
            &kv(&[("FOO", "adapter"), ("HOME", "/adapter"), ("BAR", "adapter")]),
            &map(&[("FOO", "profile"), ("BAZ", "profile")]),
            &map(&[("FOO", "job")]),
        );
        let get = |name: &str| {
            let values: Vec<&str> = env
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            assert!(values.len() <= 1, "{name} appears {} times", values.len());
            values.first().map(|v| (*v).to_owned())
        };
        assert_eq!(get("FOO").as_deref(), Some("job"));
        assert_eq!(get("BAZ").as_deref(), Some("profile"));
        assert_eq!(get("BAR").as_deref(), Some("adapter"));
        assert_eq!(get("HOME").as_deref(), Some("/adapter"));
        assert_eq!(get("PATH"), std::env::var("PATH").ok());
        // Nothing outside the allowlist leaks from agentd's own environment.
        assert!(
            env.iter().all(|(k, _)| ENV_ALLOWLIST.contains(&k.as_str())
                || ["HOME", "FOO", "BAR", "BAZ"].contains(&k.as_str())),
            "{env:?}"
        );
    }
}
