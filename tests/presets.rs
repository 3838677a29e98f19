//! Presets and the operator's catalogs (#20) through the real server and the stand-in Claude
//! (jailed): a preset fills and renders a job, bad input is refused with its reason, tenants see
//! only their own presets, SIGHUP reloads the catalog (and keeps it when the file is bad), and
//! subagents and skills are visible to the agent but read-only, even against a planted link.

mod common;

use agentd::pb;
use common::*;
use pb::preset_service_client::PresetServiceClient;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// A catalog in a temp dir: one subagent file, one skill folder, an MCP server that is never
/// started here (the stand-in has no MCP client), and two presets.
struct Catalog {
    dir: tempfile::TempDir,
}

impl Catalog {
    fn new() -> Catalog {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("reviewer.md"),
            "---\nname: reviewer\ndescription: reviews code\n---\nYou review.\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("greeter")).unwrap();
        std::fs::write(
            dir.path().join("greeter/SKILL.md"),
            "---\nname: greeter\ndescription: greets\n---\nSay hi.\n",
        )
        .unwrap();
        Catalog { dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_string_lossy().into_owned()
    }

    fn toml(&self, extra: &str) -> String {
        format!(
            "[mcp.echo]\ncommand = \"python3\"\nargs = [\"/nonexistent/echo.py\"]\n\
             [subagents.reviewer]\npath = {:?}\n\
             [skills.greeter]\npath = {:?}\n\
             [presets.review]\nagent = \"claude\"\n\
             prompt_template = \"Review {{{{file}}}} for {{{{ concern }}}}\"\n\
             overridable = [\"model\"]\ntimeout_seconds = 120\n\
             [presets.open]\noverridable = [\"prompt\", \"mcp_servers\", \"subagents\", \"skills\"]\n\
             {extra}",
            self.path("reviewer.md"),
            self.path("greeter"),
        )
    }
}

fn presets(server_ch: tonic::transport::Channel, key: &str) -> PresetServiceClient<Svc> {
    let k = ApiKey::bearer(key);
    PresetServiceClient::with_interceptor(server_ch, k)
}

async fn start(cat: &Catalog, extra: &str) -> (TestServer, Clients, String) {
    let server = TestServer::start_with(Options {
        config: Some(cat.toml(extra)),
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let session = c
        .create_session(&[("a.rs", b"fn main() {}\n")])
        .await
        .session_id;
    (server, c, session)
}

fn req(session: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        session_id: session.into(),
        ..Default::default()
    }
}

fn vars(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn run(c: &mut Clients, r: pb::SubmitJobRequest) -> (pb::Job, Vec<pb::JobEvent>) {
    let job = c.submit_request(r).await;
    let events = c.events(&job.job_id, 0).await;
    (c.get_job(&job.job_id).await, events)
}

#[tokio::test]
async fn a_preset_fills_the_job_and_renders_its_template() {
    let cat = Catalog::new();
    let (_server, mut c, session) = start(&cat, "").await;
    let (job, _) = run(
        &mut c,
        pb::SubmitJobRequest {
            preset: "review".into(),
            variables: vars(&[("file", "a.rs"), ("concern", "{{file}} injection")]),
            model: "custom-model".into(),
            ..req(&session)
        },
    )
    .await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    // One pass: a value holding `{{file}}` is not expanded again.
    assert_eq!(job.prompt, "Review a.rs for {{file}} injection");
    assert_eq!(job.model, "custom-model", "model is overridable");
    assert_eq!(job.timeout_seconds, 120, "the preset's timeout");
    // The agent received the rendered prompt (the stand-in answers with it).
    assert_eq!(job.result, "turn 1: Review a.rs for {{file}} injection");
}

#[tokio::test]
async fn bad_inputs_are_refused_with_their_reasons() {
    let cat = Catalog::new();
    let (server, mut c, session) = start(&cat, "").await;
    let review = |v: &[(&str, &str)]| pb::SubmitJobRequest {
        preset: "review".into(),
        variables: vars(v),
        ..req(&session)
    };
    let ok_vars = [("file", "a"), ("concern", "b")];
    let cases: Vec<(&str, pb::SubmitJobRequest, &str)> = vec![
        (
            "unknown preset",
            pb::SubmitJobRequest {
                preset: "nope".into(),
                ..req(&session)
            },
            "UNKNOWN_PRESET",
        ),
        (
            "missing variable",
            review(&[("file", "a")]),
            "MISSING_VARIABLE",
        ),
        (
            "unused variable",
            review(&[("file", "a"), ("concern", "b"), ("x", "c")]),
            "UNKNOWN_VARIABLE",
        ),
        (
            "variables without a preset",
            pb::SubmitJobRequest {
                prompt: "hi".into(),
                variables: vars(&[("a", "b")]),
                ..req(&session)
            },
            "UNKNOWN_VARIABLE",
        ),
        (
            "prompt over a template",
            pb::SubmitJobRequest {
                prompt: "other".into(),
                ..review(&ok_vars)
            },
            "PRESET_OVERRIDE_DENIED",
        ),
        (
            "agent not overridable",
            pb::SubmitJobRequest {
                agent: "claude".into(),
                ..review(&ok_vars)
            },
            "PRESET_OVERRIDE_DENIED",
        ),
        (
            "env not overridable",
            pb::SubmitJobRequest {
                env: vars(&[("A", "1")]),
                ..review(&ok_vars)
            },
            "PRESET_OVERRIDE_DENIED",
        ),
        (
            "unknown mcp server",
            pb::SubmitJobRequest {
                prompt: "hi".into(),
                mcp_servers: vec!["rogue".into()],
                ..req(&session)
            },
            "UNKNOWN_MCP_SERVER",
        ),
        (
            "unknown subagent",
            pb::SubmitJobRequest {
                prompt: "hi".into(),
                subagents: vec!["x".into()],
                ..req(&session)
            },
            "UNKNOWN_SUBAGENT",
        ),
        (
            "unknown skill",
            pb::SubmitJobRequest {
                prompt: "hi".into(),
                skills: vec!["../greeter".into()],
                ..req(&session)
            },
            "UNKNOWN_SKILL",
        ),
        (
            "a server twice",
            pb::SubmitJobRequest {
                prompt: "hi".into(),
                mcp_servers: vec!["echo".into(), "echo".into()],
                ..req(&session)
            },
            "INVALID_FIELD",
        ),
        (
            "unknown server through an open preset",
            pb::SubmitJobRequest {
                preset: "open".into(),
                prompt: "hi".into(),
                mcp_servers: vec!["rogue".into()],
                ..req(&session)
            },
            "UNKNOWN_MCP_SERVER",
        ),
    ];
    for (what, r, want) in cases {
        let st = c.jobs.submit_job(r).await.expect_err(what);
        assert_eq!(st.code(), Code::InvalidArgument, "{what}: {st:?}");
        assert_eq!(reason(&st), want, "{what}: {st:?}");
    }

    let mut p = presets(server.channel().await, KEY_A);
    let preset = |name: &str| pb::Preset {
        name: name.into(),
        ..Default::default()
    };
    let bad: Vec<(&str, pb::Preset, Code, &str)> = vec![
        (
            "bad name",
            preset("a b"),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            "empty name",
            preset(""),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            "unclosed template",
            pb::Preset {
                prompt_template: "{{file".into(),
                ..preset("t")
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            "unknown overridable",
            pb::Preset {
                overridable: vec!["prompt_template".into()],
                ..preset("t")
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            "unknown agent",
            pb::Preset {
                agent: "ghost".into(),
                ..preset("t")
            },
            Code::InvalidArgument,
            "UNKNOWN_AGENT",
        ),
        (
            "unknown server",
            pb::Preset {
                mcp_servers: vec!["rogue".into()],
                ..preset("t")
            },
            Code::InvalidArgument,
            "UNKNOWN_MCP_SERVER",
        ),
        (
            "forbidden env",
            pb::Preset {
                env: vars(&[("LD_PRELOAD", "/x.so")]),
                ..preset("t")
            },
            Code::InvalidArgument,
            "FORBIDDEN_ENV",
        ),
        (
            "negative budget",
            pb::Preset {
                max_cost_usd: -1.0,
                ..preset("t")
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
    ];
    for (what, preset, code, want) in bad {
        let st = p
            .create_preset(pb::CreatePresetRequest {
                preset: Some(preset),
            })
            .await
            .expect_err(what);
        assert_eq!(
            (st.code(), reason(&st).as_str()),
            (code, want),
            "{what}: {st:?}"
        );
    }
    let st = p
        .create_preset(pb::CreatePresetRequest { preset: None })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "MISSING_FIELD");
    // The operator's presets are read-only over the API.
    let st = p
        .update_preset(pb::UpdatePresetRequest {
            preset: Some(preset("review")),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::FailedPrecondition, "PRESET_READ_ONLY")
    );
    let st = p
        .delete_preset(pb::DeletePresetRequest {
            name: "review".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "PRESET_READ_ONLY");
}

#[tokio::test]
async fn a_tenant_sees_and_uses_only_its_own_presets() {
    let cat = Catalog::new();
    let (server, mut c, session) = start(&cat, "").await;
    let mut a = presets(server.channel().await, KEY_A);
    let mut b = presets(server.channel().await, KEY_B);
    let mine = pb::Preset {
        name: "mine".into(),
        prompt_template: "secret plan of A: {{x}}".into(),
        ..Default::default()
    };
    let created = a
        .create_preset(pb::CreatePresetRequest {
            preset: Some(mine.clone()),
        })
        .await
        .expect("create")
        .into_inner()
        .preset
        .expect("preset");
    assert!(!created.read_only && created.create_time.is_some());
    let st = a
        .create_preset(pb::CreatePresetRequest {
            preset: Some(mine.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::AlreadyExists, "PRESET_EXISTS")
    );

    // B cannot read, change, delete or use A's preset; it looks like no preset at all.
    let st = b
        .get_preset(pb::GetPresetRequest {
            name: "mine".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::NotFound, "PRESET_NOT_FOUND")
    );
    let st = b
        .update_preset(pb::UpdatePresetRequest {
            preset: Some(mine.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "PRESET_NOT_FOUND");
    let st = b
        .delete_preset(pb::DeletePresetRequest {
            name: "mine".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "PRESET_NOT_FOUND");
    let listed = b
        .list_presets(pb::ListPresetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .presets;
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["open", "review"], "B sees only the operator's");
    assert!(listed.iter().all(|p| p.read_only));
    let mut cb = server.clients(KEY_B).await;
    let session_b = cb.create_session(&[]).await.session_id;
    let st = cb
        .jobs
        .submit_job(pb::SubmitJobRequest {
            preset: "mine".into(),
            variables: vars(&[("x", "1")]),
            ..req(&session_b)
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "UNKNOWN_PRESET");
    // B's own preset of the same name is another one; A's stays as it was.
    b.create_preset(pb::CreatePresetRequest {
        preset: Some(pb::Preset {
            prompt_template: "B: {{x}}".into(),
            ..mine.clone()
        }),
    })
    .await
    .expect("B's own");
    let (job, _) = run(
        &mut c,
        pb::SubmitJobRequest {
            preset: "mine".into(),
            variables: vars(&[("x", "go")]),
            ..req(&session)
        },
    )
    .await;
    assert_eq!(job.prompt, "secret plan of A: go");

    // A changes and deletes its own.
    let updated = a
        .update_preset(pb::UpdatePresetRequest {
            preset: Some(pb::Preset {
                description: "v2".into(),
                ..mine.clone()
            }),
        })
        .await
        .expect("update")
        .into_inner()
        .preset
        .expect("preset");
    assert_eq!(updated.description, "v2");
    assert_eq!(updated.create_time, created.create_time);
    a.delete_preset(pb::DeletePresetRequest {
        name: "mine".into(),
    })
    .await
    .expect("delete");
    let got = b
        .get_preset(pb::GetPresetRequest {
            name: "mine".into(),
        })
        .await
        .expect("B's");
    assert_eq!(
        got.into_inner().preset.expect("p").prompt_template,
        "B: {{x}}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_catalog_and_a_bad_file_keeps_the_old_one() {
    let cat = Catalog::new();
    let (server, _c, _session) = start(&cat, "").await;
    let mut p = presets(server.channel().await, KEY_A);
    let get = |p: &mut PresetServiceClient<Svc>, name: &'static str| {
        let mut p = p.clone();
        async move {
            p.get_preset(pb::GetPresetRequest { name: name.into() })
                .await
        }
    };
    assert!(get(&mut p, "later").await.is_err());
    let path = server.config_path.clone().expect("config path");
    std::fs::write(
        &path,
        cat.toml("[presets.later]\nprompt_template = \"hi {{who}}\"\n"),
    )
    .unwrap();
    hangup(&server);
    let mut seen = false;
    for _ in 0..100 {
        if get(&mut p, "later").await.is_ok() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the new preset never appeared after SIGHUP");

    // A file that does not parse, and one that parses but names an unknown MCP server: both
    // refused, the running catalog stays, the server keeps serving.
    for bad in [
        "[presets.broken\n".to_owned(),
        cat.toml("[presets.later]\nmcp_servers = [\"rogue\"]\n"),
    ] {
        std::fs::write(&path, bad).unwrap();
        hangup(&server);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let later = get(&mut p, "later").await.expect("the old catalog stays");
        assert_eq!(
            later.into_inner().preset.expect("p").prompt_template,
            "hi {{who}}"
        );
        assert!(get(&mut p, "review").await.is_ok());
    }
}

fn hangup(server: &TestServer) {
    let st = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(server.pid().to_string())
        .status()
        .expect("kill -HUP");
    assert!(st.success());
}

#[tokio::test]
async fn subagents_and_skills_are_visible_but_read_only() {
    let cat = Catalog::new();
    let (server, mut c, session) = start(&cat, "").await;
    // Through a standby that is ready: it builds the jail, installs included, while agentd
    // still makes the job's files (a race once lost there: the installs' directories must
    // exist before the standby gets the job). A first job has the server start one.
    let (warm, _) = run(
        &mut c,
        pb::SubmitJobRequest {
            prompt: "bash true".into(),
            ..req(&session)
        },
    )
    .await;
    assert_eq!(warm.state, pb::JobState::Succeeded as i32, "{warm:?}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let script = "cat ~/.claude/agents/reviewer.md ~/.claude/skills/greeter/SKILL.md; \
                  echo pwned > ~/.claude/agents/reviewer.md || echo write-refused; \
                  touch ~/.claude/agents/extra.md || echo add-refused; \
                  rm -rf ~/.claude/skills/greeter || echo rm-refused; \
                  echo LISTING $(ls -A ~/.claude/agents) END";
    let (job, events) = run(
        &mut c,
        pb::SubmitJobRequest {
            prompt: format!("bash {script}"),
            subagents: vec!["reviewer".into()],
            skills: vec!["greeter".into()],
            ..req(&session)
        },
    )
    .await;
    let out: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ToolResult(r)) => Some(r.content.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?} {out}");
    assert!(
        out.contains("You review.") && out.contains("Say hi."),
        "{out}"
    );
    for refused in ["write-refused", "add-refused", "rm-refused"] {
        assert!(out.contains(refused), "{refused} missing: {out}");
    }
    // Exactly the selected definition: nothing added, nothing of agentd's or the agent's own.
    let listing = out.split("LISTING").nth(1).unwrap_or_default();
    let listing = listing.split("END").next().unwrap_or_default().trim();
    assert_eq!(listing, "reviewer.md", "{out}");
    assert_eq!(
        std::fs::read_to_string(cat.dir.path().join("reviewer.md")).unwrap(),
        "---\nname: reviewer\ndescription: reviews code\n---\nYou review.\n"
    );
    assert!(cat.dir.path().join("greeter/SKILL.md").exists());
    // Had the standby failed on the installs, agentd would have started the job afresh.
    let log = server.log_tail();
    assert!(!log.contains("standby supervisor unusable"), "{log}");
}

#[tokio::test]
async fn a_linked_claude_dir_planted_by_the_agent_is_not_followed() {
    let cat = Catalog::new();
    let (server, mut c, session) = start(&cat, "").await;
    let victim = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(victim.path().join("agents")).unwrap();
    // Job 1 (the agent) replaces ~/.claude with a link to a host directory it cannot see.
    // (The stand-in then fails to keep its conversation under the dangling link: no matter.)
    run(
        &mut c,
        pb::SubmitJobRequest {
            prompt: format!(
                "bash rm -rf ~/.claude && ln -s {} ~/.claude && echo linked",
                victim.path().display()
            ),
            ..req(&session)
        },
    )
    .await;
    let home = server.data_dir.join("sessions").join(&session).join("home");
    let link = std::fs::symlink_metadata(home.join(".claude")).expect("the planted link");
    assert!(link.file_type().is_symlink());
    // Job 2 asks for a subagent: agentd must not create or mount anything through that link.
    let (job, _) = run(
        &mut c,
        pb::SubmitJobRequest {
            prompt: "hello".into(),
            subagents: vec!["reviewer".into()],
            mcp_servers: vec!["echo".into()],
            ..req(&session)
        },
    )
    .await;
    assert_ne!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let planted: Vec<_> = walk(victim.path());
    assert_eq!(
        planted,
        vec![victim.path().join("agents")],
        "nothing written through the link"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out.sort();
    out
}

fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args(args)
        .env("AGENTD_URL", format!("http://{}", server.addr))
        .env("AGENTD_API_KEY", KEY_A)
        .env_remove("AGENTD_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run agentd cli")
}

#[tokio::test]
async fn the_cli_manages_presets_and_runs_one_with_variables() {
    let cat = Catalog::new();
    let (server, _c, _session) = start(&cat, "").await;
    let o = cli(
        &server,
        &[
            "presets",
            "create",
            "greet",
            "--template",
            "say hi to {{who}}",
            "--overridable",
            "model",
            "--system-prompt",
            "You greet.",
            "--disallowed-tool",
            "WebFetch",
            "--stream-deltas",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let o = cli(&server, &["presets", "get", "greet", "--json"]);
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (
            &got["system_prompt"],
            &got["disallowed_tools"],
            &got["stream_deltas"]
        ),
        (
            &serde_json::json!("You greet."),
            &serde_json::json!(["WebFetch"]),
            &serde_json::json!(true)
        ),
        "{got}"
    );
    let o = cli(&server, &["presets", "ls", "--json"]);
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let names: Vec<(&str, bool)> = listed
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or(""),
                v["read_only"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(names, [("greet", false), ("open", true), ("review", true)]);
    let o = cli(
        &server,
        &["run", "--preset", "greet", "--var", "who=the cli", "--json"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(out.contains("turn 1: say hi to the cli"), "{out}");
    // A missing variable is a usage error with the server's reason.
    let o = cli(&server, &["run", "--preset", "greet", "--json"]);
    assert_eq!(o.status.code(), Some(agentd::cli::exit::USAGE), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("MISSING_VARIABLE"),
        "{o:?}"
    );
    let o = cli(&server, &["presets", "rm", "greet"]);
    assert!(o.status.success(), "{o:?}");
    let o = cli(&server, &["presets", "get", "greet"]);
    assert!(!o.status.success(), "{o:?}");
}

#[tokio::test]
async fn a_linked_mcp_config_file_is_replaced_not_written_through() {
    let cat = Catalog::new();
    let (server, mut c, session) = start(&cat, "").await;
    let victim = tempfile::tempdir().unwrap();
    let target = victim.path().join("host-file");
    std::fs::write(&target, "host content").unwrap();
    // The agent links the file agentd writes the MCP config to onto a host file.
    run(
        &mut c,
        pb::SubmitJobRequest {
            prompt: format!(
                "bash ln -sf {} ~/.claude/agentd-mcp.json && echo linked",
                target.display()
            ),
            ..req(&session)
        },
    )
    .await;
    let home = server.data_dir.join("sessions").join(&session).join("home");
    let planted = home.join(".claude/agentd-mcp.json");
    assert!(
        std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let (job, _) = run(
        &mut c,
        pb::SubmitJobRequest {
            prompt: "hello".into(),
            mcp_servers: vec!["echo".into()],
            ..req(&session)
        },
    )
    .await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "host content");
    let meta = std::fs::symlink_metadata(&planted).unwrap();
    assert!(
        meta.is_file(),
        "the link itself was replaced by agentd's file"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&planted).unwrap()).unwrap();
    assert_eq!(written["mcpServers"]["echo"]["command"], "python3");
}

/// The argv the stand-in printed for its `echo-args` directive.
fn argv_of(events: &[pb::JobEvent]) -> Vec<String> {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Text(t)) => t.text.strip_prefix("argv ").map(str::to_owned),
            _ => None,
        })
        .map(|a| serde_json::from_str(&a).expect("argv JSON"))
        .unwrap_or_default()
}

/// The capability and control fields of SubmitJobRequest live in presets too: a config preset's
/// reach the agent's argv, a tenant's come back from PresetService as stored, a job cannot set
/// one its preset does not list as overridable, and a preset that could never run is refused
/// when it is stored.
#[tokio::test]
async fn presets_carry_the_capability_fields_and_guard_them() {
    let cat = Catalog::new();
    let terse = "[presets.terse]\nsystem_prompt = \"You are the terse agent.\"\n\
                 disallowed_tools = [\"WebFetch\"]\nstream_deltas = true\n\
                 overridable = [\"prompt\"]\n";
    let (server, mut c, session) = start(&cat, terse).await;
    let (job, events) = run(
        &mut c,
        pb::SubmitJobRequest {
            preset: "terse".into(),
            prompt: "echo-args".into(),
            ..req(&session)
        },
    )
    .await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let argv = argv_of(&events);
    let at = argv.iter().position(|a| a == "--system-prompt");
    assert_eq!(
        at.map(|i| argv[i + 1].as_str()),
        Some("You are the terse agent."),
        "{argv:?}"
    );
    assert!(
        argv.contains(&"--disallowedTools=WebFetch".into()),
        "{argv:?}"
    );
    assert!(
        argv.contains(&"--include-partial-messages".into()),
        "{argv:?}"
    );
    // Without the preset the same job carries none of them.
    let (_, events) = run(
        &mut c,
        pb::SubmitJobRequest {
            prompt: "echo-args".into(),
            ..req(&session)
        },
    )
    .await;
    let plain = argv_of(&events);
    assert!(!plain.is_empty(), "the stand-in printed no argv");
    assert!(
        !plain
            .iter()
            .any(|a| a == "--system-prompt" || a.starts_with("--disallowedTools")),
        "{plain:?}"
    );

    // A job may not set what its preset does not let it.
    let denied: Vec<(&str, pb::SubmitJobRequest)> = vec![
        (
            "system_prompt",
            pb::SubmitJobRequest {
                system_prompt: "You are someone else.".into(),
                ..req(&session)
            },
        ),
        (
            "output_schema",
            pb::SubmitJobRequest {
                output_schema: r#"{"type":"object"}"#.into(),
                ..req(&session)
            },
        ),
        (
            "attachments",
            pb::SubmitJobRequest {
                attachments: vec!["a.rs".into()],
                ..req(&session)
            },
        ),
        (
            "deny_rules",
            pb::SubmitJobRequest {
                deny_rules: vec!["Bash".into()],
                ..req(&session)
            },
        ),
    ];
    for (field, r) in denied {
        let st = c
            .jobs
            .submit_job(pb::SubmitJobRequest {
                preset: "terse".into(),
                prompt: "hi".into(),
                ..r
            })
            .await
            .expect_err(field);
        assert_eq!(
            (st.code(), reason(&st).as_str()),
            (Code::InvalidArgument, "PRESET_OVERRIDE_DENIED"),
            "{field}: {st:?}"
        );
        assert!(st.message().contains(field), "{field}: {st:?}");
    }

    // A tenant's preset holds them and gives them back as stored.
    let mut p = presets(server.channel().await, KEY_A);
    let full = pb::Preset {
        name: "full".into(),
        system_prompt: "You review.".into(),
        disallowed_tools: vec!["Bash".into()],
        output_schema: r#"{"type":"object"}"#.into(),
        stream_deltas: true,
        attachments: vec!["a.rs".into()],
        allow_rules: vec!["Read".into()],
        deny_rules: vec!["Bash(rm *)".into()],
        permission_timeout_seconds: 30,
        permission_mode: "ask".into(),
        overridable: vec!["output_schema".into()],
        ..Default::default()
    };
    p.create_preset(pb::CreatePresetRequest {
        preset: Some(full.clone()),
    })
    .await
    .expect("create");
    let got = p
        .get_preset(pb::GetPresetRequest {
            name: "full".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .preset
        .expect("preset");
    assert_eq!(
        pb::Preset {
            create_time: None,
            update_time: None,
            ..got
        },
        full
    );

    let preset = |p: pb::Preset| pb::Preset {
        name: "bad".into(),
        ..p
    };
    let bad: Vec<(&str, pb::Preset)> = vec![
        (
            "output_schema",
            preset(pb::Preset {
                output_schema: r#"{"type": 5}"#.into(),
                ..Default::default()
            }),
        ),
        (
            "allow_rules",
            preset(pb::Preset {
                allow_rules: vec!["Bash(ls".into()],
                ..Default::default()
            }),
        ),
        (
            "attachments",
            preset(pb::Preset {
                attachments: vec!["../etc/passwd".into()],
                ..Default::default()
            }),
        ),
        (
            "overridable",
            preset(pb::Preset {
                overridable: vec!["session_id".into()],
                ..Default::default()
            }),
        ),
    ];
    for (what, preset) in bad {
        let st = p
            .create_preset(pb::CreatePresetRequest {
                preset: Some(preset),
            })
            .await
            .expect_err(what);
        assert_eq!(
            (st.code(), reason(&st).as_str()),
            (Code::InvalidArgument, "INVALID_FIELD"),
            "{what}: {st:?}"
        );
    }
}
