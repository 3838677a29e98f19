use super::*;

fn preset() -> Preset {
    Preset {
        agent: Some("claude".into()),
        model: Some("opus".into()),
        timeout_seconds: Some(60),
        mcp_servers: vec!["echo".into()],
        prompt_template: Some("Review {{file}}".into()),
        overridable: vec!["model".into()],
        ..Preset::default()
    }
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_preset_fills_the_job_and_allows_listed_overrides_only() {
    let mut job = JobFields {
        model: "haiku".into(),
        ..JobFields::default()
    };
    apply(&preset(), &vars(&[("file", "a.rs")]), &mut job).unwrap();
    assert_eq!(job.agent, "claude");
    assert_eq!(
        job.model, "haiku",
        "an overridable field keeps the job's value"
    );
    assert_eq!(job.timeout_seconds, 60);
    assert_eq!(job.mcp_servers, vec!["echo"]);
    assert_eq!(job.prompt, "Review a.rs");

    for (field, mut job) in [
        (
            "agent",
            JobFields {
                agent: "codex".into(),
                ..JobFields::default()
            },
        ),
        (
            "prompt",
            JobFields {
                prompt: "other".into(),
                ..JobFields::default()
            },
        ),
        (
            "mcp_servers",
            JobFields {
                mcp_servers: vec!["x".into()],
                ..JobFields::default()
            },
        ),
        (
            "env",
            JobFields {
                env: vars(&[("A", "1")]),
                ..JobFields::default()
            },
        ),
        (
            "max_cost_usd",
            JobFields {
                max_cost_usd: 1.0,
                ..JobFields::default()
            },
        ),
    ] {
        let err = apply(&preset(), &vars(&[("file", "x")]), &mut job).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { reason: Reason::PresetOverrideDenied, field: f, .. } if f == field),
            "{field}: {err:?}"
        );
    }
}

#[test]
fn variables_need_a_template() {
    let p = Preset::default();
    let mut job = JobFields {
        prompt: "hi".into(),
        ..JobFields::default()
    };
    let err = apply(&p, &vars(&[("a", "1")]), &mut job).unwrap_err();
    assert_eq!(err.reason(), Reason::UnknownVariable);
    apply(&p, &vars(&[]), &mut job).unwrap();
    assert_eq!(job.prompt, "hi");
}

#[test]
fn validation_refuses_unknown_overridable_and_bad_templates() {
    let p = Preset {
        overridable: vec!["prompt_template".into()],
        ..Preset::default()
    };
    assert_eq!(p.validate().unwrap_err().reason(), Reason::InvalidField);
    let p = Preset {
        prompt_template: Some("{{".into()),
        ..Preset::default()
    };
    assert_eq!(p.validate().unwrap_err().reason(), Reason::InvalidField);
    let catalog = Catalog::default();
    assert_eq!(
        catalog.check_preset(&preset()).unwrap_err().reason(),
        Reason::UnknownMcpServer
    );
    for bad in ["", "a b", "x/y", &"n".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    check_name("review-1.v2").unwrap();
}

#[test]
fn catalog_refuses_unknown_and_repeated_names() {
    let mut c = Catalog::default();
    c.mcp.insert(
        "echo".into(),
        McpServer {
            command: Some("x".into()),
            args: vec![],
            env: BTreeMap::new(),
            url: None,
        },
    );
    c.check_selection(&["echo".into()], &[], &[]).unwrap();
    let err = c
        .check_selection(&["echo".into(), "echo".into()], &[], &[])
        .unwrap_err();
    assert_eq!(err.reason(), Reason::InvalidField);
    let err = c.check_selection(&[], &["nope".into()], &[]).unwrap_err();
    assert_eq!(err.reason(), Reason::UnknownSubagent);
    let err = c.check_selection(&[], &[], &["nope".into()]).unwrap_err();
    assert_eq!(err.reason(), Reason::UnknownSkill);
}
