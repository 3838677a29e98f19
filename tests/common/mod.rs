//! The test harness: starts the real `agentd` binary on port 0 with a temp data dir and the
//! stand-in Claude, and hands out generated clients that send an API key, as a user would.
#![allow(dead_code)]

pub mod mock_model;
pub mod pg;
pub mod receiver;

use agentd::pb;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const KEY_A: &str = "tenant-a-secret-key";
pub const KEY_B: &str = "tenant-b-secret-key";

/// Path of the stand-in Claude executable.
pub fn fake_claude() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude")
}

/// A running agentd process.
pub struct TestServer {
    child: Option<Child>,
    pub addr: String,
    /// The model gateway's address, when it is on (`--gateway-listen`, port 0 is fine).
    pub gateway_addr: Option<String>,
    pub data_dir: PathBuf,
    /// The `--config` file, when the options had one.
    pub config_path: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    run_as: Option<RunAs>,
    /// The running server's stderr (its log).
    stderr: Option<Stderr>,
}

#[derive(Default, Clone)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A TOML configuration, written next to the data dir and passed with `--config`.
    pub config: Option<String>,
    /// Runs the server as this unprivileged user (see [`Options::run_as`]).
    pub run_as: Option<RunAs>,
    /// The data dir's name inside the temp dir (`data` when unset).
    pub data_dir_name: Option<String>,
}

/// An unprivileged uid/gid the server runs as, the way the shipped deployments run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// `--on-shutdown cancel`, for tests about that mode: jobs end with agentd (cancelled on
/// SIGTERM, failed as interrupted after a kill -9) instead of being adopted by the next one.
pub fn cancel_on_shutdown() -> (String, String) {
    ("AGENTD_ON_SHUTDOWN".into(), "cancel".into())
}

impl Options {
    /// With [`cancel_on_shutdown`].
    pub fn cancelling(mut self) -> Options {
        self.env.push(cancel_on_shutdown());
        self
    }

    /// Starts the server through `setpriv --reuid U --regid G --clear-groups` (util-linux), with a
    /// data dir owned by that user. The test must run as root to do this, and this machine's test
    /// runs do.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Options {
        self.run_as = Some(RunAs { uid, gid });
        self
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp
            .path()
            .join(opts.data_dir_name.as_deref().unwrap_or("data"));
        let mut extra_args = opts.args;
        let mut config_path = None;
        if let Some(toml) = &opts.config {
            let path = tmp.path().join("agentd.toml");
            std::fs::write(&path, toml).expect("write config");
            extra_args.extend(["--config".to_owned(), path.to_string_lossy().into_owned()]);
            config_path = Some(path);
        }
        if let Some(user) = opts.run_as {
            hand_over(tmp.path(), &data_dir, user);
        }
        let mut s = TestServer {
            child: None,
            addr: String::new(),
            gateway_addr: None,
            data_dir,
            config_path,
            _tmp: Some(tmp),
            extra_args,
            extra_env: opts.env,
            run_as: opts.run_as,
            stderr: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        self.spawn_exe(Path::new(env!("CARGO_BIN_EXE_agentd")));
    }

    /// Starts the server from `exe` (a copy of the binary stands for an upgraded one).
    pub fn spawn_exe(&mut self, exe: &Path) {
        let mut cmd = match self.run_as {
            None => Command::new(exe),
            Some(user) => {
                // setpriv execs agentd in place, so the child's pid is agentd's.
                let mut c = Command::new(setpriv());
                c.arg("--reuid")
                    .arg(user.uid.to_string())
                    .arg("--regid")
                    .arg(user.gid.to_string())
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(exe)
                    .env("HOME", self.data_dir.parent().expect("temp dir"));
                c
            }
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("AGENTD_API_KEYS", format!("a:{KEY_A},b:{KEY_B}"))
            .env("AGENTD_CLAUDE_BIN", fake_claude())
            .env("AGENTD_KILL_GRACE_SECONDS", "2")
            .env("AGENTD_SHUTDOWN_GRACE_SECONDS", "2")
            // The product's default `--on-shutdown keep` (issue #23): supervisors outlive a killed
            // agentd. Bounded here, so that a tree a test leaves behind ends on its own even if
            // the sweep at drop misses it; tests about cancel pass `cancel` in `Options::env`.
            .env("AGENTD_ADOPT_TIMEOUT", "120")
            .env("AGENTD_LOG", "warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start agentd");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = Stderr::follow(child.stderr.take().expect("stderr"));
        let mut lines = BufReader::new(stdout).lines();
        self.gateway_addr = None;
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.strip_prefix("agentd gateway listening on ") {
                        self.gateway_addr = Some(a.trim().to_owned());
                    }
                    if let Some(a) = l.strip_prefix("agentd listening on ") {
                        break a.trim().to_owned();
                    }
                }
                _ => {
                    let status = child.wait();
                    panic!(
                        "agentd exited before listening ({status:?}); its stderr:\n{}",
                        stderr.tail()
                    )
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.addr = addr;
        self.child = Some(child);
        self.stderr = Some(stderr);
    }

    /// The last lines the running server logged (at `warn` and above).
    pub fn log_tail(&self) -> String {
        self.stderr.as_ref().map(Stderr::tail).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `kill -9` the server and wait for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Ends the trees of supervisors that outlived the server (`--on-shutdown keep`), so that
    /// nothing a test started runs on after it: each is told to kill its tree, by its run record.
    pub fn end_surviving_trees(&self) {
        let run = self.data_dir.join("run");
        let Ok(entries) = std::fs::read_dir(&run) else {
            return;
        };
        let tokens: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".run").map(str::to_owned)
            })
            .collect();
        for token in tokens {
            agentd::runner::adopt::kill_tree(&run, &token, None);
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agentd did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a new server process on the same data dir (new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn clients(&self, key: &str) -> Clients {
        Clients::new(self.channel().await, key)
    }

    /// GetServerInfo as tenant A sees it.
    pub async fn server_info(&self) -> pb::GetServerInfoResponse {
        let mut info = pb::server_info_service_client::ServerInfoServiceClient::with_interceptor(
            self.channel().await,
            ApiKey::bearer(KEY_A),
        );
        info.get_server_info(pb::GetServerInfoRequest {})
            .await
            .expect("server info")
            .into_inner()
    }
}

/// The setpriv executable (util-linux), or a failure that says what to install.
fn setpriv() -> PathBuf {
    let path = PathBuf::from("/usr/bin/setpriv");
    assert!(
        path.exists(),
        "{} is missing: install util-linux (`apt-get install -y util-linux`) to run agentd as \
         an unprivileged user",
        path.display()
    );
    path
}

/// Lets `user` reach the temp dir and own the data dir (and so everything agentd creates in it).
fn hand_over(tmp: &Path, data_dir: &Path, user: RunAs) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    std::fs::create_dir_all(data_dir).expect("create data dir");
    std::os::unix::fs::chown(data_dir, Some(user.uid), Some(user.gid)).expect("chown data dir");
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        self.end_surviving_trees();
    }
}

/// agentd's stderr, passed on to the test's own and its last lines kept, so that a server that
/// exits before it listens says why in the test's failure.
#[derive(Clone)]
struct Stderr(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl Stderr {
    const KEEP: usize = 200;

    fn follow(pipe: std::process::ChildStderr) -> Stderr {
        let kept = Stderr(std::sync::Arc::default());
        let tail = kept.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let mut q = tail.0.lock().unwrap_or_else(|e| e.into_inner());
                if q.len() == Self::KEEP {
                    q.pop_front();
                }
                q.push_back(line);
            }
        });
        kept
    }

    /// The last lines, once the reader had a moment to take in what the exit left in the pipe.
    fn tail(&self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Adds the API key to every call.
#[derive(Clone)]
pub struct ApiKey(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl ApiKey {
    /// `authorization: Bearer <key>` on every call (none for an empty key).
    pub fn bearer(key: &str) -> ApiKey {
        ApiKey(if key.is_empty() {
            None
        } else {
            Some(MetadataValue::try_from(format!("Bearer {key}")).expect("ascii key"))
        })
    }
}

pub type Svc = InterceptedService<Channel, ApiKey>;

#[derive(Clone)]
pub struct Clients {
    pub sessions: pb::session_service_client::SessionServiceClient<Svc>,
    pub jobs: pb::job_service_client::JobServiceClient<Svc>,
    pub files: pb::file_service_client::FileServiceClient<Svc>,
    pub webhooks: pb::webhook_service_client::WebhookServiceClient<Svc>,
}

impl Clients {
    /// The session's workspace as DownloadArchive (tar) streams it: each regular file's content
    /// and each symlink as `-> target`, by path (directories left out).
    pub async fn workspace_archive(
        &mut self,
        session: &str,
    ) -> std::collections::BTreeMap<String, Vec<u8>> {
        use std::io::Read;
        let mut s = self
            .files
            .download_archive(pb::DownloadArchiveRequest {
                session_id: session.into(),
                format: pb::ArchiveFormat::Tar as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            bytes.extend_from_slice(&m.chunk);
        }
        let mut out = std::collections::BTreeMap::new();
        let mut a = tar::Archive::new(&bytes[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned();
            match e.header().entry_type() {
                tar::EntryType::Directory => {}
                tar::EntryType::Symlink => {
                    let t = e.link_name().unwrap().unwrap().display().to_string();
                    out.insert(path, format!("-> {t}").into_bytes());
                }
                _ => {
                    let mut content = Vec::new();
                    e.read_to_end(&mut content).unwrap();
                    out.insert(path, content);
                }
            }
        }
        out
    }

    pub fn new(ch: Channel, key: &str) -> Clients {
        let k = ApiKey(if key.is_empty() {
            None
        } else {
            Some(MetadataValue::try_from(format!("Bearer {key}")).expect("ascii key"))
        });
        Clients {
            sessions: pb::session_service_client::SessionServiceClient::with_interceptor(
                ch.clone(),
                k.clone(),
            ),
            jobs: pb::job_service_client::JobServiceClient::with_interceptor(ch.clone(), k.clone()),
            files: pb::file_service_client::FileServiceClient::with_interceptor(
                ch.clone(),
                k.clone(),
            ),
            webhooks: pb::webhook_service_client::WebhookServiceClient::with_interceptor(ch, k),
        }
    }

    pub async fn create_session(&mut self, files: &[(&str, &[u8])]) -> pb::Session {
        self.sessions
            .create_session(pb::CreateSessionRequest {
                files: files
                    .iter()
                    .map(|(p, c)| pb::FileContent {
                        path: (*p).into(),
                        content: c.to_vec().into(),
                        mode: None,
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .expect("create session")
            .into_inner()
            .session
            .expect("session")
    }

    pub async fn submit(&mut self, session: &str, prompt: &str) -> pb::Job {
        self.submit_to(session, "", prompt).await
    }

    /// Submits to the named agent profile ("" for the server's default).
    pub async fn submit_to(&mut self, session: &str, agent: &str, prompt: &str) -> pb::Job {
        self.submit_request(pb::SubmitJobRequest {
            session_id: session.into(),
            agent: agent.into(),
            prompt: prompt.into(),
            ..Default::default()
        })
        .await
    }

    /// Submits `request` as it is (with its metadata, if a `tonic::Request`), expecting it to be
    /// taken.
    pub async fn submit_request(
        &mut self,
        request: impl tonic::IntoRequest<pb::SubmitJobRequest>,
    ) -> pb::Job {
        self.jobs
            .submit_job(request)
            .await
            .expect("submit")
            .into_inner()
            .job
            .expect("job")
    }

    /// Follows `job` from its first event until `pick` takes one, within `within`; panics with
    /// `what` when the time runs out or the job ends first.
    pub async fn follow_until<T>(
        &mut self,
        job: &str,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&pb::JobEvent) -> Option<T>,
    ) -> T {
        let mut s = self.stream(job, 0).await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, s.message())
                .await
                .unwrap_or_else(|_| panic!("{what}: not within {within:?}"))
                .expect("stream message")
                .unwrap_or_else(|| panic!("{what}: the job ended first"));
            if let Some(t) = msg.events.iter().find_map(&mut pick) {
                return t;
            }
        }
    }

    /// StreamJobEvents of `job` after seq `after`.
    pub async fn stream(
        &mut self,
        job: &str,
        after: u64,
    ) -> tonic::Streaming<pb::StreamJobEventsResponse> {
        self.jobs
            .stream_job_events(pb::StreamJobEventsRequest {
                job_id: job.into(),
                after_seq: after,
            })
            .await
            .expect("stream")
            .into_inner()
    }

    /// Streams a job's events after `after` until its `finished` event.
    pub async fn events(&mut self, job: &str, after: u64) -> Vec<pb::JobEvent> {
        let mut s = self.stream(job, after).await;
        let mut out = Vec::new();
        while let Some(msg) = s.message().await.expect("stream message") {
            out.extend(msg.events);
        }
        out
    }

    pub async fn wait(&mut self, job: &str) -> pb::Job {
        let _ = self.events(job, 0).await;
        self.get_job(job).await
    }

    /// CancelJob, expecting it to be taken; the job as the answer gives it.
    pub async fn cancel(&mut self, job: &str) -> pb::Job {
        self.jobs
            .cancel_job(pb::CancelJobRequest { job_id: job.into() })
            .await
            .expect("cancel")
            .into_inner()
            .job
            .expect("job")
    }

    /// Polls `job` until it is in `state`; panics after `within`.
    pub async fn wait_state(
        &mut self,
        job: &str,
        state: pb::JobState,
        within: Duration,
    ) -> pb::Job {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let j = self.get_job(job).await;
            if j.state == state as i32 {
                return j;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job} still {:?} after {within:?}, wanted {state:?}",
                pb::JobState::try_from(j.state)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get_job(&mut self, job: &str) -> pb::Job {
        self.jobs
            .get_job(pb::GetJobRequest { job_id: job.into() })
            .await
            .expect("get job")
            .into_inner()
            .job
            .expect("job")
    }

    pub async fn download(&mut self, session: &str, path: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut s = self
            .files
            .download_file(pb::DownloadFileRequest {
                session_id: session.into(),
                path: path.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await? {
            if let Some(pb::download_file_response::Part::Chunk(c)) = m.part {
                out.extend_from_slice(&c);
            }
        }
        Ok(out)
    }
}

/// A job for the stand-in agent that streams for about `rounds` × 0.2 s: each round three texts
/// and a sleep.
pub fn streaming(rounds: usize) -> String {
    vec!["lines 3 ; sleep 0.2"; rounds].join(" ; ")
}

/// The texts `streaming(rounds)` reports, in order (the stand-in ends its turn with one more).
pub fn streamed(rounds: usize) -> Vec<String> {
    (0..rounds)
        .flat_map(|_| ["line 1", "line 2", "line 3", "sleeping 0.2s"])
        .chain(["turn 1: done"])
        .map(str::to_owned)
        .collect()
}

/// The ErrorInfo reason of a status.
pub fn reason(st: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    st.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Processes whose command line is exactly `sleep <n>` (the stand-in's grandchildren).
pub fn sleepers(n: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let parts: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
                if parts.len() == 2 && parts[0].ends_with(b"sleep") && parts[1] == n.as_bytes() {
                    // Zombies have an empty cmdline, so anything listed here is alive.
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// Polls until `f` holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

pub fn kind(e: &pb::JobEvent) -> &'static str {
    use pb::job_event::Kind;
    match &e.kind {
        Some(Kind::Started(_)) => "started",
        Some(Kind::Init(_)) => "init",
        Some(Kind::Text(_)) => "text",
        Some(Kind::ToolCall(_)) => "tool_call",
        Some(Kind::ToolResult(_)) => "tool_result",
        Some(Kind::Usage(_)) => "usage",
        Some(Kind::Stderr(_)) => "stderr",
        Some(Kind::Unparsed(_)) => "unparsed",
        Some(Kind::Other(_)) => "other",
        Some(Kind::Truncated(_)) => "truncated",
        Some(Kind::LimitExceeded(_)) => "limit_exceeded",
        Some(Kind::ModelCall(_)) => "model_call",
        Some(Kind::EgressDenied(_)) => "egress_denied",
        Some(Kind::PermissionRequest(_)) => "permission_request",
        Some(Kind::PermissionResolved(_)) => "permission_resolved",
        Some(Kind::Input(_)) => "input",
        Some(Kind::TextDelta(_)) => "text_delta",
        Some(Kind::ThinkingDelta(_)) => "thinking_delta",
        Some(Kind::Thinking(_)) => "thinking",
        Some(Kind::Plan(_)) => "plan",
        Some(Kind::Finished(_)) => "finished",
        None => "none",
    }
}

pub fn texts(events: &[pb::JobEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Text(t)) => Some(t.text.clone()),
            _ => None,
        })
        .collect()
}

/// Every process of the host as (pid, its /proc dir, its command line with spaces for NULs).
fn procs() -> Vec<(u32, PathBuf, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            Some((pid, e.path(), cmd.trim().to_owned()))
        })
        .collect()
}

/// Live (non-zombie) processes whose working directory is `dir` or below it, as (pid, cmdline):
/// agents run in their workspace, and so do whatever they spawn unless it moves away.
pub fn procs_under(dir: &Path) -> Vec<(u32, String)> {
    procs()
        .into_iter()
        .filter(|(_, proc_dir, _)| {
            let inside =
                std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
            let zombie = std::fs::read_to_string(proc_dir.join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            inside && !zombie
        })
        .map(|(pid, _, cmd)| (pid, cmd))
        .collect()
}

/// A `kB` field of /proc/<pid>/status, e.g. `VmRSS` or `VmHWM`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Number of open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes used by the regular files under `dir` (links not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends raw bytes, returns everything the server sent until it closed (or reset) the connection.
pub async fn raw_http(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, request)
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("response within 20s");
        match n {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

pub async fn scrape(addr: &str) -> String {
    // The metrics listener starts with the server, just after the gRPC one is announced.
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok())
        .await,
        "metrics listener on {addr} never came up"
    );
    let resp = raw_http(addr, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let text = String::from_utf8(resp).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    text
}

/// The value of the sample line starting with `series ` (0 when absent).
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Cgroup controllers (v1) a job's limits live under on this machine.
pub const CGROUP_V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// A `[sandbox] cgroup_parent` of one test: unique (`agentd-test-<pid>-<n>`), so a test sees only
/// its own jobs' cgroups, and removed with whatever job cgroups are left under it when dropped.
pub struct CgroupParent {
    pub name: String,
}

impl CgroupParent {
    /// A fresh name, not created.
    pub fn unique() -> CgroupParent {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CgroupParent {
            name: format!("agentd-test-{}-{n}", std::process::id()),
        }
    }

    /// The parent as an operator creates it for agentd (which refuses to start without it): the
    /// directory under each v1 controller, created by the test (as root).
    pub fn create() -> CgroupParent {
        let cg = CgroupParent::unique();
        for c in CGROUP_V1_CONTROLLERS {
            let dir = Path::new("/sys/fs/cgroup").join(c).join(&cg.name);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        }
        cg
    }

    /// A delegated subtree for a non-root agentd: [`CgroupParent::create`], then chowned to
    /// `user`, files included.
    pub fn delegate(user: RunAs) -> CgroupParent {
        let cg = CgroupParent::create();
        for c in CGROUP_V1_CONTROLLERS {
            let dir = Path::new("/sys/fs/cgroup").join(c).join(&cg.name);
            let files = std::fs::read_dir(&dir).expect("list cgroup").flatten();
            for p in std::iter::once(dir.clone()).chain(files.map(|e| e.path())) {
                std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
            }
        }
        cg
    }

    /// This parent's directory in every mounted hierarchy that has it.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        roots
            .flatten()
            .map(|r| r.path().join(&self.name))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Cgroup directories below the parent (jobs' cgroups and anything under them) except the
    /// one a ready standby supervisor made for its next job (only the standby is in it).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in self.dirs() {
            out.extend(
                walkdir::WalkDir::new(&d)
                    .min_depth(1)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.file_type().is_dir())
                    .map(|e| e.into_path())
                    .filter(|d| !is_standbys(d)),
            );
        }
        out
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        // A killed job's processes may take a moment to leave their cgroup.
        for _ in 0..20 {
            self.remove_all();
            if self.dirs().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl CgroupParent {
    fn remove_all(&self) {
        for d in self.dirs() {
            // Deepest first: a cgroup directory can only be removed once it has no children.
            let mut all: Vec<PathBuf> = walkdir::WalkDir::new(&d)
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_dir())
                .map(|e| e.into_path())
                .collect();
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in all {
                let _ = std::fs::remove_dir(&p);
            }
        }
    }
}

/// Lines of this process's mountinfo (the host's mount namespace) that mention `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Live (non-zombie) processes whose command line contains `token`, as (pid, cmdline): a run
/// marker put in a prompt or a shell command finds the agent and every tool process it started.
pub fn procs_with(token: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    procs()
        .into_iter()
        // Zombies have an empty cmdline, so anything matching here is alive.
        .filter(|(pid, _, cmd)| *pid != me && cmd.contains(token))
        .map(|(pid, _, cmd)| (pid, cmd))
        .collect()
}

/// Whether the processes in cgroup `dir` are all a waiting standby supervisor's (its ns-init keeps
/// the standby's command line).
pub fn is_standbys(dir: &Path) -> bool {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<&str> = procs.split_whitespace().collect();
    !pids.is_empty()
        && pids.iter().all(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__supervise-standby"))
        })
}

/// `git diff --no-index` of two directories, with git's paths made workspace-relative and the
/// `index` lines (abbreviated blob ids agentd does not print) left out.
/// (`root` holds the two: `before` and `after`.)
pub fn git_diff(root: &Path) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "core.quotepath=off",
            "diff",
            "--no-index",
            "-M",
            "--no-color",
            "before",
            "after",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .replace("a/before/", "a/")
        .replace("b/after/", "b/")
        // git names both sides from the existing file for additions and deletions.
        .replace("a/after/", "a/")
        .replace("b/before/", "b/")
        .replace("rename from before/", "rename from ")
        .replace("rename to after/", "rename to ")
        .lines()
        .filter(|l| !l.starts_with("index "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs `script` with `sh -c` in `dir`, expecting it to succeed.
pub fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

/// The jail of a runner-level test (no server): the job's workspace and HOME made under `dir`,
/// the agent as host id 65534 (these tests run as root), an 8 MiB `/tmp`, no cgroup.
pub fn minimal_jail(dir: &Path) -> agentd::runner::jail::Jail {
    use agentd::runner::jail::{Jail, JailSpec, Limits, Network, Shape};
    let (workspace, home) = (dir.join("workspace"), dir.join("home"));
    std::fs::create_dir(&workspace).unwrap();
    std::fs::create_dir(&home).unwrap();
    Jail {
        shape: Shape {
            network: Network::Host,
            host_ids: Some((65534, 65534)),
            cgroup_parent: None,
        },
        spec: JailSpec {
            workspace: workspace.canonicalize().unwrap(),
            home: home.canonicalize().unwrap(),
            read_only: Vec::new(),
            read_write: Vec::new(),
            hide: Vec::new(),
            limits: Limits {
                tmp_bytes: 8 << 20,
                ..Limits::default()
            },
            bridges: Vec::new(),
            installs: Vec::new(),
            workspace_handed: false,
        },
    }
}
