//! What every scenario needs: the real `agentd` started in a temp data dir with the stand-in agent
//! as its default profile, the bare tonic server started from this same binary, generated
//! clients, the monotonic clock the stand-in agent stamps its lines with, and /proc readings.

use agentd::pb;
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

/// What the whole run shares.
pub struct Env {
    /// The `agentd` executable under test.
    pub agentd: PathBuf,
    /// This executable: the stand-in agent and the bare servers.
    pub me: PathBuf,
    /// The repository (for the SDK consumers under `clients/`).
    pub repo: PathBuf,
    pub quick: bool,
    /// Agent kinds the `genuine` scenario runs (`claude`, `codex`, `opencode`, `gemini`).
    pub agents: Vec<String>,
}

impl Env {
    /// `quick` when `--quick`, else `full`.
    pub fn size<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// Nanoseconds of CLOCK_MONOTONIC: one clock for every process of the machine, so the stand-in
/// agent's stamp and the client's arrival time compare directly.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; CLOCK_MONOTONIC exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The `p`-th percentile (0–100) of `v`, which it sorts.
pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<TempDir> {
        TempDir::new_in(&std::env::temp_dir(), what)
    }

    /// A fresh directory under `parent`.
    pub fn new_in(parent: &Path, what: &str) -> Result<TempDir> {
        let p = parent.join(format!(
            "agentd-bench-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process (agentd or the bare server) that announced `<prefix> listening on ADDR`;
/// killed when dropped.
pub struct Proc {
    child: Child,
    pub addr: String,
    /// Where agentd's model gateway listens, when it announced one (`--gateway-listen`, port 0
    /// included) before its gRPC address.
    pub gateway_addr: Option<String>,
}

impl Proc {
    /// Starts `cmd`; its stderr goes to `log` (the report stays readable), which is quoted when
    /// the server exits before listening.
    fn spawn(mut cmd: Command, prefix: &str, log: &Path) -> Result<Proc> {
        let err =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        let mut child = cmd.spawn().with_context(|| format!("start {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let want = format!("{prefix} listening on ");
        let gateway = format!("{prefix} gateway listening on ");
        let mut gateway_addr = None;
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.strip_prefix(&gateway) {
                        gateway_addr = Some(a.trim().to_owned());
                    }
                    if let Some(a) = l.strip_prefix(&want) {
                        break a.trim().to_owned();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    bail!(
                        "{prefix} exited before listening ({cmd:?}); its stderr ends with:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Proc {
            child,
            addr,
            gateway_addr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn channel(&self) -> Result<Channel> {
        Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await
            .with_context(|| format!("connect to {}", self.addr))
    }

    pub async fn clients(&self) -> Result<Clients> {
        Ok(Clients::new(self.channel().await?))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running agentd with its temp data dir.
pub struct Agentd {
    pub proc: Proc,
    dir: TempDir,
}

/// A killed agentd leaves its running jobs' supervisors waiting for a successor to adopt them
/// (issue #23, up to the adopt timeout, 10 minutes by default); here none will come, since the
/// data dir goes with the bench. They are told to end their trees (SIGUSR1, what agentd's cancel
/// sends), so that they still remove their cgroups, and killed if they have not gone within 2 s.
impl Drop for Agentd {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let needle = format!("{}/", self.dir.path().display());
        for (signal, pause) in [(libc::SIGUSR1, 2_000), (libc::SIGKILL, 0)] {
            let left = processes_naming(&needle);
            for pid in &left {
                // SAFETY: kill takes a pid and a signal number.
                unsafe { libc::kill(*pid, signal) };
            }
            let deadline = std::time::Instant::now() + Duration::from_millis(pause);
            while !processes_naming(&needle).is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Processes whose command line names `needle` (a supervisor names its run dir, and the
/// processes it forks share its command line).
fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

impl Agentd {
    /// Starts agentd on port 0, embedded SQLite in a temp data dir, no API keys (loopback), the
    /// stand-in agent as the default profile `bench`; `extra` are more `serve` flags.
    pub fn start(env: &Env, extra: &[&str]) -> Result<Agentd> {
        Agentd::start_with(env, "", extra)
    }

    /// Like [`Agentd::start`], with `toml` added to the configuration file (e.g. a `[sandbox]`
    /// table).
    pub fn start_with(env: &Env, toml: &str, extra: &[&str]) -> Result<Agentd> {
        let config = format!(
            "default_agent = \"bench\"\n{toml}\n[agents.bench]\nkind = \"command\"\n\
             command = {:?}\nargs = [\"__agent\"]\n",
            env.me.display().to_string()
        );
        Agentd::start_in(&std::env::temp_dir(), env, &config, extra)
    }

    /// As [`Agentd::start`] with `config` as the whole configuration file, its temp dir (the
    /// data dir's parent) under `parent`.
    pub fn start_in(parent: &Path, env: &Env, config: &str, extra: &[&str]) -> Result<Agentd> {
        let dir = TempDir::new_in(parent, "agentd")?;
        std::fs::write(dir.path().join("agentd.toml"), config)?;
        let cmd = Agentd::command(env, dir.path(), extra);
        let proc = Proc::spawn(cmd, "agentd", &dir.path().join("agentd.log"))?;
        Ok(Agentd { proc, dir })
    }

    /// `kill -9` this agentd and start it again on the same data dir and configuration (the
    /// `restart` scenario, issue #23).
    pub fn restart_after_kill9(&mut self, env: &Env, extra: &[&str]) -> Result<()> {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let cmd = Agentd::command(env, self.dir.path(), extra);
        self.proc = Proc::spawn(cmd, "agentd", &self.dir.path().join("agentd-2.log"))?;
        Ok(())
    }

    fn command(env: &Env, dir: &Path, extra: &[&str]) -> Command {
        let config = dir.join("agentd.toml");
        let mut cmd = Command::new(&env.agentd);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&config)
            .args(extra)
            .env_remove("AGENTD_API_KEYS")
            .env_remove("AGENTD_CONFIG")
            .env_remove("AGENTD_DATABASE_URL")
            .env("AGENTD_LOG", "warn")
            .env("AGENTD_KILL_GRACE_SECONDS", "5");
        cmd
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The temp dir holding the data dir and the configuration.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub async fn clients(&self) -> Result<Clients> {
        self.proc.clients().await
    }
}

/// The bare tonic server (`agentd-bench __bare`) with its temp dir.
pub struct Bare {
    pub proc: Proc,
    _dir: TempDir,
}

impl Bare {
    pub fn start(env: &Env) -> Result<Bare> {
        let dir = TempDir::new("bare")?;
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files)?;
        let mut cmd = Command::new(&env.me);
        cmd.arg("__bare").arg(&files);
        let proc = Proc::spawn(cmd, "bare", &dir.path().join("bare.log"))?;
        Ok(Bare { proc, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub async fn clients(&self) -> Result<Clients> {
        self.proc.clients().await
    }
}

/// Generated clients over one connection.
#[derive(Clone)]
pub struct Clients {
    pub sessions: pb::session_service_client::SessionServiceClient<Channel>,
    pub jobs: pb::job_service_client::JobServiceClient<Channel>,
    pub files: pb::file_service_client::FileServiceClient<Channel>,
    pub info: pb::server_info_service_client::ServerInfoServiceClient<Channel>,
}

impl Clients {
    pub fn new(ch: Channel) -> Clients {
        // Event batches and chunks stay far below this; the default 4 MiB is only a safety net.
        let max = 64 << 20;
        Clients {
            sessions: pb::session_service_client::SessionServiceClient::new(ch.clone()),
            jobs: pb::job_service_client::JobServiceClient::new(ch.clone())
                .max_decoding_message_size(max),
            files: pb::file_service_client::FileServiceClient::new(ch.clone())
                .max_decoding_message_size(max),
            info: pb::server_info_service_client::ServerInfoServiceClient::new(ch),
        }
    }

    pub async fn session(&mut self) -> Result<String> {
        let s = self
            .sessions
            .create_session(pb::CreateSessionRequest::default())
            .await?
            .into_inner()
            .session
            .context("no session in the answer")?;
        Ok(s.session_id)
    }

    pub async fn submit(&mut self, session: &str, prompt: &str) -> Result<String> {
        self.submit_to(session, "", prompt).await
    }

    /// SubmitJob to the agent profile `agent` (the default one when empty).
    pub async fn submit_to(&mut self, session: &str, agent: &str, prompt: &str) -> Result<String> {
        let job = self
            .jobs
            .submit_job(pb::SubmitJobRequest {
                session_id: session.into(),
                agent: agent.into(),
                prompt: prompt.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .context("no job in the answer")?;
        Ok(job.job_id)
    }

    /// Waits until the job is final, polling (so the wait itself reads no events).
    pub async fn wait_final(&mut self, job: &str, within: Duration) -> Result<pb::Job> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let j = self
                .jobs
                .get_job(pb::GetJobRequest { job_id: job.into() })
                .await?
                .into_inner()
                .job
                .context("no job in the answer")?;
            if j.end_time.is_some() {
                return Ok(j);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("job {job} not final after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// StreamJobEvents of `job` from its first event.
    pub async fn stream(
        &mut self,
        job: &str,
    ) -> Result<tonic::Streaming<pb::StreamJobEventsResponse>> {
        Ok(self
            .jobs
            .stream_job_events(pb::StreamJobEventsRequest {
                job_id: job.into(),
                after_seq: 0,
            })
            .await?
            .into_inner())
    }

    /// Streams `job` to its `finished` event, calling `each` with every message's arrival time
    /// and events.
    pub async fn follow(
        &mut self,
        job: &str,
        each: impl FnMut(u64, &[pb::JobEvent]),
    ) -> Result<pb::JobFinished> {
        let s = self.stream(job).await?;
        until_finished(
            s,
            |m| m.events.as_slice(),
            each,
            &format!("the stream of {job}"),
        )
        .await
    }

    /// SubmitJob → the stand-in agent's `hello` stamp (ns), following the job to its end.
    pub async fn submit_to_agent(&mut self, session: &str) -> Result<u64> {
        let t0 = mono_ns();
        let job = self.submit(session, "hello").await?;
        let mut agent = None;
        succeeded(
            &self
                .follow(&job, |_, evs| {
                    for e in evs {
                        if let Some(t) = text(e).and_then(|l| stamp(l, "h")) {
                            agent = Some(t);
                        }
                    }
                })
                .await?,
        )?;
        Ok(agent.context("no hello line")? - t0)
    }

    /// RunJob: calls `each` like [`Clients::follow`].
    pub async fn run(
        &mut self,
        session: &str,
        prompt: &str,
        each: impl FnMut(u64, &[pb::JobEvent]),
    ) -> Result<pb::JobFinished> {
        let s = self
            .jobs
            .run_job(pb::RunJobRequest {
                job: Some(pb::SubmitJobRequest {
                    session_id: session.into(),
                    prompt: prompt.into(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        until_finished(s, |m| m.events.as_slice(), each, "the RunJob stream").await
    }
}

/// Reads `s` until a message holds the `finished` event, calling `each` with every message's
/// arrival time and events (`events` picks them out of a message).
async fn until_finished<M>(
    mut s: tonic::Streaming<M>,
    events: impl Fn(&M) -> &[pb::JobEvent],
    mut each: impl FnMut(u64, &[pb::JobEvent]),
    what: &str,
) -> Result<pb::JobFinished> {
    while let Some(msg) = s.message().await? {
        let now = mono_ns();
        each(now, events(&msg));
        if let Some(f) = finished(events(&msg)) {
            return Ok(f);
        }
    }
    Err(anyhow!("{what} ended before its finished event"))
}

fn finished(events: &[pb::JobEvent]) -> Option<pb::JobFinished> {
    events.iter().find_map(|e| match &e.kind {
        Some(pb::job_event::Kind::Finished(f)) => Some(f.clone()),
        _ => None,
    })
}

/// The text of a text event.
pub fn text(e: &pb::JobEvent) -> Option<&str> {
    match &e.kind {
        Some(pb::job_event::Kind::Text(t)) => Some(&t.text),
        _ => None,
    }
}

/// The stamp of a stand-in agent line `<tag> <mono_ns> …`.
pub fn stamp(line: &str, tag: &str) -> Option<u64> {
    let mut w = line.split(' ');
    (w.next() == Some(tag))
        .then(|| w.next().and_then(|n| n.parse().ok()))
        .flatten()
}

/// Fails unless the job succeeded.
pub fn succeeded(f: &pb::JobFinished) -> Result<()> {
    if f.state == pb::JobState::Succeeded as i32 {
        Ok(())
    } else {
        Err(anyhow!(
            "job ended {:?}: {}",
            pb::JobState::try_from(f.state),
            f.error_message
        ))
    }
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size in KiB since the last [`reset_peak`].
pub fn peak_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resets the process's peak RSS to its current RSS (Linux ≥ 4.0).
pub fn reset_peak(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("reset the peak RSS of {pid}"))
}

/// Whether `pid` is a live process (a zombie has already died).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// `root` and every process descended from it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some((_, rest)) = s.rsplit_once(") ")
                && let Some(ppid) = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok())
            {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}
