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

/// Template variables from pairs.
pub(crate) fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
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

/// Each capability and control field a preset holds fills an unset job field, and a job setting
/// one itself is refused unless the preset lists it: none slips past the preset.
#[test]
fn the_newer_job_fields_follow_the_preset_and_its_overridable_list() {
    let full = Preset {
        system_prompt: Some("You are terse.".into()),
        disallowed_tools: vec!["Bash".into()],
        output_schema: Some(r#"{"type":"object"}"#.into()),
        stream_deltas: true,
        attachments: vec!["spec.md".into()],
        allow_rules: vec!["Read(*)".into()],
        deny_rules: vec!["Bash(*)".into()],
        permission_timeout_seconds: Some(30),
        webhook_url: Some("https://hooks.example/x".into()),
        ..Preset::default()
    };
    let mut job = JobFields {
        prompt: "go".into(),
        ..JobFields::default()
    };
    apply(&full, &vars(&[]), &mut job).unwrap();
    assert_eq!(job.system_prompt, "You are terse.");
    assert_eq!(job.disallowed_tools, vec!["Bash"]);
    assert_eq!(job.output_schema, r#"{"type":"object"}"#);
    assert!(job.stream_deltas);
    assert_eq!(job.attachments, vec!["spec.md"]);
    assert_eq!(job.allow_rules, vec!["Read(*)"]);
    assert_eq!(job.deny_rules, vec!["Bash(*)"]);
    assert_eq!(job.permission_timeout_seconds, 30);
    assert_eq!(job.webhook_url, "https://hooks.example/x");

    type Set = fn(&mut JobFields);
    let cases: [(&str, Set); 9] = [
        ("system_prompt", |j| j.system_prompt = "x".into()),
        ("disallowed_tools", |j| {
            j.disallowed_tools = vec!["x".into()]
        }),
        ("output_schema", |j| j.output_schema = "{}".into()),
        ("stream_deltas", |j| j.stream_deltas = true),
        ("attachments", |j| j.attachments = vec!["a".into()]),
        ("allow_rules", |j| j.allow_rules = vec!["Edit(*)".into()]),
        ("deny_rules", |j| j.deny_rules = vec!["Edit(*)".into()]),
        ("permission_timeout_seconds", |j| {
            j.permission_timeout_seconds = 5
        }),
        ("webhook_url", |j| {
            j.webhook_url = "https://h.example".into()
        }),
    ];
    for (field, set) in cases {
        // Nothing overridable: the job's value is refused, naming the field.
        let mut job = JobFields::default();
        set(&mut job);
        let err = apply(&full, &vars(&[]), &mut job).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { reason: Reason::PresetOverrideDenied, field: f, .. } if f == field),
            "{field}: {err:?}"
        );
        // Listed: the job's own value wins, the preset fills the rest.
        let open = Preset {
            overridable: vec![field.to_owned()],
            ..full.clone()
        };
        let mut mine = JobFields::default();
        set(&mut mine);
        apply(&open, &vars(&[]), &mut mine).unwrap();
        let mut want = JobFields::default();
        apply(&full, &vars(&[]), &mut want).unwrap();
        set(&mut want);
        assert_eq!(mine, want, "{field}");
    }
}

#[test]
fn a_preset_with_a_bad_schema_or_rule_is_refused() {
    for p in [
        Preset {
            output_schema: Some(r#"{"type": 5}"#.into()),
            ..Preset::default()
        },
        Preset {
            allow_rules: vec!["Bash(ls".into()],
            ..Preset::default()
        },
        Preset {
            system_prompt: Some("a\0b".into()),
            ..Preset::default()
        },
    ] {
        assert_eq!(
            p.validate().unwrap_err().reason(),
            Reason::InvalidField,
            "{p:?}"
        );
    }
}
