//! `genuine`: the genuine agent CLIs (installed by `scripts/install-agents` into `.cache/agents`)
//! against the tests' scripted model server (`tests/fixtures/mock-model`), each job run through
//! agentd and, interleaved with it, the same CLI spawned directly with the same arguments and
//! environment (built by agentd's own adapter, checked against what agentd's agent really got),
//! a fresh HOME and workspace on both sides. agentd's data dir is where it is for anyone who runs
//! agentd from a checkout (`./agentd-data`): inside the repository's work tree (`target/`); the
//! direct side's directories are in the system's temp dir. An agent must not take that repository
//! for its job's (issue #22: Claude Code read its refs and ran `git status` and `rg` over it).
//!
//! The agent's own start and exit are the kernel's exec and exit events of its process
//! ([`procwatch`]), on both sides: one clock, no instrumentation in either path. Its first stdout
//! line is the time agentd stamped the first event parsed from stdout (wall clock, converted to
//! CLOCK_MONOTONIC), and on the direct side the time the bench read it. CPU per job: agentd's own
//! (utime + stime) and its reaped children's (supervisors with everything under them), against
//! the direct child's `wait4` usage.

use crate::harness::{Agentd, Clients, Env, TempDir, mono_ns, ms, percentile};
use crate::procwatch::Watch;
use crate::report::{Goal, Metric};
use agentd::agents::{AgentKind, AgentProfile, LaunchContext};
use agentd::domain::JobSpec;
use agentd::pb;
use anyhow::{Context, Result, anyhow, bail, ensure};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What every job asks: one model round trip answered with text.
const PROMPT: &str = "hello";
/// A job that takes longer than this fails the scenario.
const JOB_LIMIT: Duration = Duration::from_secs(120);
const KINDS: [&str; 4] = ["claude", "codex", "opencode", "gemini"];

/// Extra `[sandbox]` keys for agentd's side (see [`genuine`]).
const SANDBOX_ENV: &str = "AGENTD_BENCH_GENUINE_SANDBOX";

/// `--agents`: the kinds named, or all four for `all`.
pub fn agents(names: &[String]) -> Result<Vec<String>> {
    if names.iter().any(|n| n == "all") {
        return Ok(KINDS.map(String::from).to_vec());
    }
    for n in names {
        if !KINDS.contains(&n.as_str()) {
            bail!(
                "unknown agent {n:?} for --agents (one of {}, or all)",
                KINDS.join(", ")
            );
        }
    }
    Ok(names.to_vec())
}

pub async fn genuine(env: &Env) -> Result<Vec<Metric>> {
    let watch = Watch::start().context("the genuine scenario times agents by process events")?;
    let dir = TempDir::new("genuine")?;
    let mock = Mock::start(env, dir.path())?;
    let profiles = env
        .agents
        .iter()
        .map(|name| profile(env, name, &mock.base))
        .collect::<Result<Vec<_>>>()?;
    // The direct side calls the model server itself, so agentd's side must too: naming the
    // network keeps a profile that carries a provider key off the default gateway route.
    // `AGENTD_BENCH_GENUINE_SANDBOX`: more `[sandbox]` keys (one per line), to tell what a part
    // of the jail costs the agent against the same run (`cpu_millis = 0`: no CPU quota).
    // `enabled = false` cannot be told this way: an unjailed job keeps the host's `TMPDIR`, and
    // the two sides' environments must match.
    let extra = std::env::var(SANDBOX_ENV).unwrap_or_default();
    let config: String = std::iter::once(format!("[sandbox]\nnetwork = \"host\"\n{extra}\n"))
        .chain(profiles.iter().map(toml_of))
        .collect();
    // Where someone who runs agentd from a checkout has its data dir (`./agentd-data`): inside
    // the repository's work tree. The direct side works in the system's temp dir, as a user's
    // `mktemp -d` would (see the module doc).
    let inside = env.repo.join("target");
    std::fs::create_dir_all(&inside)?;
    let a = Agentd::start_in(&inside, env, &config, &[])?;
    let mut c = a.clients().await?;
    let mut out = Vec::new();
    for p in &profiles {
        out.extend(one_agent(env, &watch, &a, &mut c, p, dir.path()).await?);
    }
    Ok(out)
}

/// One job's figures (ns); `cpu` is the agent's (direct) or agentd's children's.
#[derive(Default)]
struct Sample {
    spawn_to_start: u64,
    start_to_first_line: u64,
    start_to_exit: u64,
    /// SubmitJob → finished event at the client; spawn → exit reaped (direct).
    whole: u64,
    /// The agent's exit → its supervisor's exit (agentd side: the jail's teardown).
    exit_to_supervisor_exit: u64,
    /// The agent's exit → finished event at the client; → reaped (direct).
    exit_to_finished: u64,
    cpu: u64,
    /// agentd's own CPU during the job (agentd side only).
    own_cpu: u64,
}

async fn one_agent(
    env: &Env,
    watch: &Watch,
    a: &Agentd,
    c: &mut Clients,
    p: &AgentProfile,
    dir: &Path,
) -> Result<Vec<Metric>> {
    let n = env.size(2, 20);
    // Full runs start with one unmeasured job each, so first-use costs (page cache) count for
    // neither side.
    let warm = env.size(0, 1);
    let mut ours: Vec<Sample> = Vec::new();
    let mut base: Vec<Sample> = Vec::new();
    for i in 0..warm + n {
        // Alternate which side goes first, so neither always follows the other's leftovers.
        let (g, d) = if i % 2 == 0 {
            let g = through_agentd(watch, a, c, p).await?;
            (g, direct(watch, p, dir).await?)
        } else {
            let d = direct(watch, p, dir).await?;
            (through_agentd(watch, a, c, p).await?, d)
        };
        check_same_launch(&g.1, &d.1)?;
        if i >= warm {
            ours.push(g.0);
            base.push(d.0);
        }
    }
    let p50 = |v: &[Sample], f: fn(&Sample) -> u64| {
        let mut x: Vec<u64> = v.iter().map(f).collect();
        ms(percentile(&mut x, 50.0))
    };
    let mean = |v: &[Sample], f: fn(&Sample) -> u64| {
        ms(v.iter().map(f).sum::<u64>()) / v.len().max(1) as f64
    };
    // Each pair ran back to back, so their difference cancels most of what the machine's load
    // does to both: steadier than the difference of the two p50s.
    let mut paired: Vec<i64> = ours
        .iter()
        .zip(&base)
        .map(|(o, b)| o.start_to_exit as i64 - b.start_to_exit as i64)
        .collect();
    paired.sort_unstable();
    let paired = paired.get(paired.len() / 2).copied().unwrap_or(0) as f64 / 1e6;
    let goal = |g: Goal| if env.quick { Goal::None } else { g };
    let name = |m: &str| format!("genuine.{}.{m}", p.name);
    Ok(vec![
        Metric::new(
            &name("spawn_to_start.p50"),
            p50(&ours, |s| s.spawn_to_start),
            "ms",
        )
        .baseline(p50(&base, |s| s.spawn_to_start)),
        Metric::new(
            &name("start_to_first_line.p50"),
            p50(&ours, |s| s.start_to_first_line),
            "ms",
        )
        .baseline(p50(&base, |s| s.start_to_first_line)),
        Metric::new(
            &name("start_to_exit.p50"),
            p50(&ours, |s| s.start_to_exit),
            "ms",
        )
        .baseline(p50(&base, |s| s.start_to_exit))
        .goal(goal(Goal::OverheadAtMost(10.0))),
        Metric::new(&name("start_to_exit.paired_diff.p50"), paired, "ms"),
        Metric::new(
            &name("submit_to_finished.p50"),
            p50(&ours, |s| s.whole),
            "ms",
        )
        .baseline(p50(&base, |s| s.whole))
        .goal(goal(Goal::OverheadAtMost(15.0))),
        Metric::new(
            &name("exit_to_finished.p50"),
            p50(&ours, |s| s.exit_to_finished),
            "ms",
        )
        .baseline(p50(&base, |s| s.exit_to_finished)),
        Metric::new(
            &name("exit_to_supervisor_exit.p50"),
            p50(&ours, |s| s.exit_to_supervisor_exit),
            "ms",
        ),
        Metric::new(&name("cpu.agent_per_job"), mean(&ours, |s| s.cpu), "ms")
            .baseline(mean(&base, |s| s.cpu)),
        Metric::new(
            &name("cpu.agentd_per_job"),
            mean(&ours, |s| s.own_cpu),
            "ms",
        ),
    ])
}

/// How the agent was started, as seen from outside: argv and environment, with its HOME and
/// working directory replaced by placeholders.
struct Launched {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

/// One job through agentd: a new session (fresh HOME and workspace), SubmitJob, the events
/// followed until `finished`.
async fn through_agentd(
    watch: &Watch,
    a: &Agentd,
    c: &mut Clients,
    p: &AgentProfile,
) -> Result<(Sample, Launched)> {
    let session = c.session().await?;
    let offset = realtime_offset();
    let cpu0 = proc_cpu(a.pid())?;
    let t0 = mono_ns();
    let job = c.submit_to(&session, &p.name, PROMPT).await?;
    let mut supervisor = None;
    let mut first_line = None;
    let mut agent: Option<(u32, u64)> = None;
    let mut launched = None;
    let mut finished_at = 0;
    let followed = tokio::time::timeout(
        JOB_LIMIT,
        c.follow(&job, |now, evs| {
            for e in evs {
                match &e.kind {
                    Some(pb::job_event::Kind::Started(s)) => supervisor = Some(s.pid as u32),
                    Some(pb::job_event::Kind::Stderr(_))
                    | Some(pb::job_event::Kind::Finished(_)) => {}
                    Some(_) if first_line.is_none() => {
                        first_line = e.time.map(|t| {
                            (t.seconds as i128 * 1_000_000_000 + t.nanos as i128 - offset) as u64
                        });
                        // The agent is surely running now: see how it was started.
                        agent = supervisor.and_then(|s| watch.first_exec(s, false, t0));
                        launched = agent.map(|(pid, _)| observe(pid));
                    }
                    _ => {}
                }
                if matches!(e.kind, Some(pb::job_event::Kind::Finished(_))) {
                    finished_at = now;
                }
            }
        }),
    )
    .await
    .map_err(|_| anyhow!("{} job {job} not finished after {JOB_LIMIT:?}", p.name))??;
    crate::harness::succeeded(&followed).with_context(|| format!("{} job {job}", p.name))?;
    let (pid, start) = agent.with_context(|| {
        format!(
            "no exec under supervisor {supervisor:?} seen for {} job {job}",
            p.name
        )
    })?;
    let exit = watch.wait_exit(pid, start, Duration::from_secs(5))?;
    let supervisor_exit = match supervisor {
        Some(s) => watch.wait_exit(s, t0, Duration::from_secs(5))?,
        None => exit,
    };
    // A child's CPU time joins its parent's only once the parent reaped it, and agentd reaps
    // the supervisor after the job's `finished` (its teardown follows the agent's end).
    if let Some(s) = supervisor {
        wait_reaped(s, Duration::from_secs(5)).await?;
    }
    let cpu1 = proc_cpu(a.pid())?;
    let first_line = first_line.context("no stdout event")?;
    Ok((
        Sample {
            spawn_to_start: start.saturating_sub(t0),
            start_to_first_line: first_line.saturating_sub(start),
            start_to_exit: exit - start,
            whole: finished_at - t0,
            exit_to_supervisor_exit: supervisor_exit.saturating_sub(exit),
            exit_to_finished: finished_at.saturating_sub(exit),
            cpu: cpu1.children - cpu0.children,
            own_cpu: cpu1.own - cpu0.own,
        },
        launched.context("agent gone before it could be observed")??,
    ))
}

/// The same job's agent spawned directly, as agentd would: same adapter, same environment
/// (agentd's allowlist from this process's environment, which agentd inherited), a fresh HOME
/// and workspace next to agentd's, stdin `/dev/null`, its own process group, output on pipes.
async fn direct(watch: &Watch, p: &AgentProfile, dir: &Path) -> Result<(Sample, Launched)> {
    let base = dir
        .join("direct")
        .join(uuid::Uuid::new_v4().simple().to_string());
    let (home, workspace) = (base.join("home"), base.join("workspace"));
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all(&workspace)?;
    let spec = JobSpec {
        agent: p.name.clone(),
        prompt: PROMPT.into(),
        model: None,
        timeout: JOB_LIMIT,
        env: BTreeMap::new(),
        allowed_tools: Vec::new(),
        max_turns: None,
        append_system_prompt: None,
        permission_mode: None,
        budget: Default::default(),
        webhook_url: None,
        control: Default::default(),
        catalog: Default::default(),
        caps: Default::default(),
    };
    let launch = agentd::agents::launch(
        p,
        &spec,
        &LaunchContext {
            workspace: &workspace,
            home: &home,
            resume_conversation: None,
            // agentd jails its jobs (the default, as users run it): the same adapter choices.
            jailed: true,
            mcp: &[],
            images: &[],
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    for (path, content) in &launch.files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)?;
    }
    let mut vars: Vec<(String, String)> = agentd::core::ENV_ALLOWLIST
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    vars.push(("HOME".into(), home.to_string_lossy().into_owned()));
    vars.extend(launch.env.iter().cloned());
    vars.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // A jailed agent's temp dir is its private /tmp.
    vars.retain(|(k, _)| k != "TMPDIR");
    vars.push(("TMPDIR".into(), "/tmp".into()));
    // agentd's run marker, which its agents carry; nothing reads it.
    vars.push((
        agentd::runner::records::RUN_TOKEN_ENV.into(),
        uuid::Uuid::new_v4().simple().to_string(),
    ));
    // As agentd gives it: the prompt on stdin, from a file.
    let stdin = match &launch.stdin {
        Some(text) => {
            let path = home.join(".agentd-stdin");
            std::fs::write(&path, text)?;
            Stdio::from(std::fs::File::open(&path)?)
        }
        None => Stdio::null(),
    };
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .envs(vars)
        .current_dir(&workspace)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let run = tokio::task::spawn_blocking(move || run_direct(cmd));
    let r = run.await??;
    let (pid, start) = watch
        .first_exec(r.pid, true, r.t0)
        .with_context(|| format!("no exec event of the direct {} (pid {})", p.name, r.pid))?;
    ensure!(r.status == 0, "direct {} exited with {}", p.name, r.status);
    let exit = watch.wait_exit(pid, start, Duration::from_secs(5))?;
    let launched = r.launched?;
    let _ = std::fs::remove_dir_all(&base);
    Ok((
        Sample {
            spawn_to_start: start.saturating_sub(r.t0),
            start_to_first_line: r.first_line.saturating_sub(start),
            start_to_exit: exit - start,
            whole: r.reaped - r.t0,
            exit_to_supervisor_exit: 0,
            exit_to_finished: r.reaped.saturating_sub(exit),
            cpu: r.cpu,
            own_cpu: 0,
        },
        launched,
    ))
}

struct DirectRun {
    pid: u32,
    t0: u64,
    first_line: u64,
    reaped: u64,
    status: i32,
    cpu: u64,
    launched: Result<Launched>,
}

/// Spawns, reads stdout to its end (stderr drained alongside), reaps with `wait4` for the
/// child's CPU time. Blocking.
fn run_direct(mut cmd: Command) -> Result<DirectRun> {
    let t0 = mono_ns();
    let mut child: Child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink);
    });
    let mut lines = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut first_line = 0;
    let mut launched = Err(anyhow!("the direct agent printed nothing"));
    while lines.read_until(b'\n', &mut line)? > 0 {
        if first_line == 0 {
            first_line = mono_ns();
            launched = observe(pid);
        }
        line.clear();
    }
    let _ = drain.join();
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 writes it and the status for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    let reaped = mono_ns();
    ensure!(
        r == pid as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok(DirectRun {
        pid,
        t0,
        first_line,
        reaped,
        status: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        launched,
    })
}

/// argv and environment of a running process, its HOME and working directory replaced.
fn observe(pid: u32) -> Result<Launched> {
    let read = |what: &str| {
        std::fs::read(format!("/proc/{pid}/{what}")).with_context(|| format!("/proc/{pid}/{what}"))
    };
    let split = |b: Vec<u8>| -> Vec<String> {
        b.split(|c| *c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?
        .to_string_lossy()
        .into_owned();
    let mut env: BTreeMap<String, String> = split(read("environ")?)
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let home = env.get("HOME").cloned().unwrap_or_default();
    let neutral = |s: &str| {
        let s = s.replace(&cwd, "<workspace>");
        if home.is_empty() {
            s
        } else {
            s.replace(&home, "<home>")
        }
    };
    for v in env.values_mut() {
        *v = neutral(v);
    }
    if let Some(t) = env.get_mut(agentd::runner::records::RUN_TOKEN_ENV) {
        *t = "<token>".into();
    }
    let argv = split(read("cmdline")?).iter().map(|a| neutral(a)).collect();
    Ok(Launched { argv, env })
}

/// Fails unless both sides ran the agent with the same argv and environment.
fn check_same_launch(ours: &Launched, base: &Launched) -> Result<()> {
    ensure!(
        ours.argv == base.argv,
        "agentd ran {:?}, the direct side {:?}",
        ours.argv,
        base.argv
    );
    if ours.env != base.env {
        let keys: Vec<&String> = ours
            .env
            .keys()
            .chain(base.env.keys())
            .filter(|k| ours.env.get(*k) != base.env.get(*k))
            .collect();
        bail!("the agent's environment differs between agentd and the direct side in {keys:?}");
    }
    Ok(())
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now (ns), to put agentd's event times on the monotonic clock.
fn realtime_offset() -> i128 {
    let m0 = mono_ns();
    let r = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let m1 = mono_ns();
    r - (m0 as i128 + m1 as i128) / 2
}

struct Cpu {
    own: u64,
    children: u64,
}

/// Waits until `pid` is reaped (its `/proc` entry gone, zombie included).
async fn wait_reaped(pid: u32, limit: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if std::time::Instant::now() > deadline {
            bail!("supervisor {pid} not reaped after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// A process's CPU time (ns): its own, and its reaped children's.
fn proc_cpu(pid: u32) -> Result<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").context("bad stat")?.1;
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    ensure!(f.len() == 4, "bad stat of {pid}");
    // SAFETY: sysconf has no preconditions.
    let tick = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Cpu {
        own: (f[0] + f[1]) * tick,
        children: (f[2] + f[3]) * tick,
    })
}

/// The installed CLI of `kind` and its profile pointing at the mock at `base`, as
/// tests/agents_e2e.rs writes them.
fn profile(env: &Env, kind: &str, base: &str) -> Result<AgentProfile> {
    let bin = env.repo.join(".cache/agents/node_modules/.bin").join(kind);
    if !bin.exists() {
        bail!(
            "{} is missing: run scripts/install-agents (scripts/test and scripts/bench do)",
            bin.display()
        );
    }
    let s = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (kind_enum, args, vars, config) = match kind {
        "claude" => (
            AgentKind::Claude,
            vec![],
            s(&[
                ("ANTHROPIC_BASE_URL", base),
                ("ANTHROPIC_API_KEY", "sk-ant-bench-mock-key"),
                ("CLAUDE_CODE_MAX_RETRIES", "0"),
            ]),
            None,
        ),
        "codex" => (
            AgentKind::Codex,
            vec![],
            s(&[("MOCK_API_KEY", "sk-codex-bench-mock-key")]),
            Some(format!(
                "model = \"mock-model\"\nmodel_provider = \"mock\"\n[model_providers.mock]\n\
                 name = \"mock\"\nbase_url = \"{base}/v1\"\nenv_key = \"MOCK_API_KEY\"\n\
                 wire_api = \"responses\"\nrequest_max_retries = 0\nstream_max_retries = 0\n"
            )),
        ),
        "opencode" => (
            AgentKind::Opencode,
            vec![],
            s(&[("MOCK_API_KEY", "sk-opencode-bench-mock-key")]),
            Some(
                serde_json::json!({
                    "$schema": "https://opencode.ai/config.json",
                    "provider": { "mock": {
                        "npm": "@ai-sdk/openai-compatible",
                        "name": "Mock",
                        "options": { "baseURL": format!("{base}/v1"), "apiKey": "{env:MOCK_API_KEY}" },
                        "models": { "mock-model": { "name": "Mock", "tool_call": true } }
                    }},
                    "model": "mock/mock-model",
                    "permission": { "edit": "allow", "bash": "allow" },
                    "autoupdate": false,
                    "share": "disabled"
                })
                .to_string(),
            ),
        ),
        "gemini" => (
            AgentKind::Gemini,
            vec!["--model".to_owned(), "mock-model".to_owned()],
            s(&[
                ("GEMINI_API_KEY", "gemini-bench-mock-key"),
                ("GOOGLE_GEMINI_BASE_URL", base),
            ]),
            Some(
                serde_json::json!({
                    "security": {
                        "auth": { "selectedType": "gemini-api-key" },
                        "folderTrust": { "enabled": false }
                    },
                    "general": {
                        "maxAttempts": 1,
                        "enableAutoUpdate": false,
                        "enableAutoUpdateNotification": false
                    },
                    "privacy": { "usageStatisticsEnabled": false }
                })
                .to_string(),
            ),
        ),
        other => bail!("unknown agent {other:?}"),
    };
    Ok(AgentProfile {
        name: kind.into(),
        kind: kind_enum,
        command: bin.to_string_lossy().into_owned(),
        args,
        env: vars,
        config,
    })
}

/// The `[agents.<name>]` table of a profile.
fn toml_of(p: &AgentProfile) -> String {
    // TOML basic strings share JSON's escapes for everything that occurs here.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = format!(
        "[agents.{}]\nkind = {}\ncommand = {}\nargs = [{}]\n",
        p.name,
        q(p.kind.as_str()),
        q(&p.command),
        p.args.iter().map(|a| q(a)).collect::<Vec<_>>().join(", ")
    );
    if let Some(c) = &p.config {
        out.push_str(&format!("config = {}\n", q(c)));
    }
    out.push_str(&format!("[agents.{}.env]\n", p.name));
    for (k, v) in &p.env {
        out.push_str(&format!("{k} = {}\n", q(v)));
    }
    out
}

/// The scripted model server; exits when its stdin closes (dropped with it).
struct Mock {
    child: Child,
    base: String,
}

impl Mock {
    fn start(env: &Env, dir: &Path) -> Result<Mock> {
        let script: PathBuf = env.repo.join("tests/fixtures/mock-model");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--log"])
            .arg(dir.join("mock-model.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {} with python3", script.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("mock stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("mock-model listening on ")
            .with_context(|| format!("unexpected mock banner {line:?}"))?
            .to_owned();
        Ok(Mock {
            child,
            base: format!("http://{addr}"),
        })
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
