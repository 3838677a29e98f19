//! The escape suite of issue #15: attempts to get out of a job's jail, made from inside a job,
//! each asserting it fails while the job's own work in the same job still succeeds.
//!
//! Tenant A owns a session holding `secret.txt`; tenant B's job runs a bash script of attempts
//! (built in `sandbox/attacks.rs`) through the stand-in agent's Bash tool, or through the genuine
//! Claude Code CLI's, and the test holds the report the script leaves in B's workspace to each
//! attempt's expectation. Tests are grouped per boundary (filesystem, identity, syscalls, agentd's
//! process, network, each resource limit), and some run again with agentd itself unprivileged.
//! Then kill -9 and a cancel storm must leave no process, mount or cgroup behind.
//!
//! Baseline mode, `AGENTD_ESCAPE_BASELINE=1`: the same attempts against a server without the jail
//! (no `[sandbox]` tables, `AGENTD_NO_SANDBOX=1`), asserting that each one GETS THROUGH. It proves
//! that every attempt is real, so that a regression of the jail fails the suite. It never runs
//! unless asked for; the suite itself never skips.

#[path = "sandbox/attacks.rs"]
mod attacks;
mod common;
#[path = "sandbox/wire.rs"]
mod wire;

use agentd::pb;
use attacks::{Attempt, Outcome, Target};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The unprivileged user agentd runs as in the non-root tests (no such account is needed).
const UNPRIVILEGED: RunAs = RunAs {
    uid: 2345,
    gid: 2345,
};

fn baseline() -> bool {
    std::env::var("AGENTD_ESCAPE_BASELINE").as_deref() == Ok("1")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn toml_str(s: impl AsRef<str>) -> String {
    // TOML basic strings share JSON's escapes for everything that can occur here.
    serde_json::to_string(s.as_ref()).expect("string")
}

/// One `[agents.<name>]` profile with its `[agents.<name>.sandbox]` overrides.
struct Profile {
    name: &'static str,
    command: PathBuf,
    env: Vec<(&'static str, String)>,
    /// TOML lines of the profile's sandbox table (dropped in baseline mode).
    sandbox: String,
}

impl Profile {
    fn stand_in(name: &'static str, sandbox: &str) -> Profile {
        Profile {
            name,
            command: fake_claude(),
            env: Vec::new(),
            sandbox: sandbox.to_owned(),
        }
    }
}

/// The profiles every test's server has: the defaults, no network, small limits (/tmp smaller
/// than the largest file, which the workspace cap bounds, so that filling /tmp meets ENOSPC).
fn stand_in_profiles() -> Vec<Profile> {
    vec![
        Profile::stand_in("jailed", ""),
        Profile::stand_in("offline", "network = \"none\"\n"),
        Profile::stand_in(
            "tight",
            "memory_mb = 64\nmax_pids = 64\ntmp_mb = 8\nworkspace_mb = 16\nworkspace_files = 2000\n",
        ),
    ]
}

fn config(cg: &CgroupParent, profiles: &[Profile]) -> String {
    let jail = !baseline();
    let mut s = String::new();
    if jail {
        s.push_str(&format!(
            "[sandbox]\ncgroup_parent = {}\n\n",
            toml_str(&cg.name)
        ));
    }
    for p in profiles {
        s.push_str(&format!(
            "[agents.{}]\nkind = \"claude\"\ncommand = {}\n",
            p.name,
            toml_str(p.command.to_string_lossy())
        ));
        if !p.env.is_empty() {
            s.push_str(&format!("[agents.{}.env]\n", p.name));
            for (k, v) in &p.env {
                s.push_str(&format!("{k} = {}\n", toml_str(v)));
            }
        }
        if jail && !p.sandbox.is_empty() {
            s.push_str(&format!("[agents.{}.sandbox]\n{}", p.name, p.sandbox));
        }
        s.push('\n');
    }
    s
}

/// A unique run marker.
fn token() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "esc{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A file the test puts on the host, removed when dropped.
struct HostFile(PathBuf);

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A server with the suite's profiles, tenant A's session with a secret, and tenant B's client.
struct World {
    attacker: Clients,
    target: Target,
    server: TestServer,
    cg: CgroupParent,
    _marker: HostFile,
}

/// One finished attack job.
struct Run {
    session: String,
    job: pb::Job,
    events: Vec<pb::JobEvent>,
    raw_events: Vec<Vec<u8>>,
    outcomes: BTreeMap<String, Outcome>,
    report: String,
}

/// What an API attempt downloads from the attacker's workspace.
const DOWNLOADS: &[(&str, &str)] = &[
    ("download_symlink_passwd", "link-passwd"),
    ("download_symlink_other_session", "link-secret"),
    ("download_symlink_store", "link-store"),
    ("download_hardlink_other_session", "hard-secret"),
    ("download_hardlink_shadow", "hard-shadow"),
];

impl World {
    async fn start(run_as: Option<RunAs>, profiles: Vec<Profile>) -> World {
        World::start_env(run_as, profiles, Vec::new()).await
    }

    /// Like [`World::start`], with more environment for agentd.
    async fn start_env(
        run_as: Option<RunAs>,
        profiles: Vec<Profile>,
        env: Vec<(String, String)>,
    ) -> World {
        let cg = match run_as {
            Some(user) => CgroupParent::delegate(user),
            None => CgroupParent::create(),
        };
        let mut opts = Options {
            config: Some(config(&cg, &profiles)),
            env,
            ..Default::default()
        };
        if baseline() {
            opts.env.push(("AGENTD_NO_SANDBOX".into(), "1".into()));
        }
        if let Some(user) = run_as {
            opts = opts.run_as(user.uid, user.gid);
        }
        let server = TestServer::start_with(opts);
        let mut victim = server.clients(KEY_A).await;
        let attacker = server.clients(KEY_B).await;
        let token = token();
        let secret = format!("secret-of-tenant-a-{token}");
        let victim_session = victim
            .create_session(&[("secret.txt", secret.as_bytes())])
            .await
            .session_id;
        let marker = HostFile(std::env::temp_dir().join(format!("agentd-escape-marker-{token}")));
        std::fs::write(&marker.0, &secret).expect("write the host /tmp marker");
        let ws_root = server.data_dir.join("sessions");
        let target = Target {
            other_ws: ws_root.join(&victim_session).join("workspace"),
            other_session: victim_session,
            secret,
            data_dir: server.data_dir.clone(),
            ws_root,
            agentd_pid: server.pid(),
            agentd_bin: PathBuf::from(env!("CARGO_BIN_EXE_agentd")),
            config: server.config_path.clone().expect("config file"),
            host_tmp_marker: marker.0.clone(),
            api_key: KEY_A.to_owned(),
            token,
        };
        assert!(
            target.other_ws.join("secret.txt").is_file(),
            "the victim's secret is not where the attempts look for it"
        );
        World {
            attacker,
            target,
            server,
            cg,
            _marker: marker,
        }
    }

    /// Runs `attempts` in one job of tenant B on `profile` through the stand-in agent; then the
    /// agent writes `legit-note.txt` with its Write tool.
    async fn attack(&mut self, profile: &str, attempts: &[Attempt]) -> Run {
        let prompt = format!(
            "bash bash attack.sh ; write legit-note.txt legit-{}",
            self.target.token
        );
        self.run_script(profile, attempts, &prompt, 0).await
    }

    async fn run_script(
        &mut self,
        profile: &str,
        attempts: &[Attempt],
        prompt: &str,
        timeout_seconds: u32,
    ) -> Run {
        let script = attacks::script(attempts);
        let session = self
            .attacker
            .create_session(&[("attack.sh", script.as_bytes())])
            .await
            .session_id;
        let job = self
            .attacker
            .submit_request(pb::SubmitJobRequest {
                session_id: session.clone(),
                agent: profile.into(),
                prompt: prompt.into(),
                timeout_seconds,
                ..Default::default()
            })
            .await;
        let events = self.attacker.events(&job.job_id, 0).await;
        let job = self.attacker.get_job(&job.job_id).await;
        let raw_events = wire::events(self.server.channel().await, KEY_B, &job.job_id).await;
        let report = self
            .attacker
            .download(&session, attacks::REPORT)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|st| format!("(no report: {st:?})"));
        let mut outcomes = attacks::parse(&report);
        for (name, path) in DOWNLOADS {
            if attempts.iter().any(|a| a.name == *name) {
                let o = match self.attacker.download(&session, path).await {
                    Ok(b) => Outcome {
                        rc: 0,
                        out: String::from_utf8_lossy(&b).into_owned(),
                    },
                    Err(st) => Outcome {
                        rc: 1,
                        out: format!("{:?}: {}", st.code(), st.message()),
                    },
                };
                outcomes.insert((*name).to_owned(), o);
            }
        }
        Run {
            session,
            job,
            events,
            raw_events,
            outcomes,
            report,
        }
    }

    /// Holds every attempt of `run` to its expectation (see `attacks::judge`).
    fn judge(&self, attempts: &[Attempt], run: &Run) {
        let (table, failed) = attacks::judge(attempts, &run.outcomes, baseline());
        let mode = if baseline() {
            "baseline (no jail): every attempt must get through"
        } else {
            "jailed: every attempt must fail"
        };
        eprintln!("{mode}\n{table}");
        assert!(
            failed.is_empty(),
            "{mode}; failed: {failed:?}\n{table}\n{}",
            explain(run)
        );
    }

    /// The job's own work: it succeeded, and what it wrote downloads.
    async fn assert_legit_work(&mut self, run: &Run) {
        assert_eq!(
            run.job.state,
            pb::JobState::Succeeded as i32,
            "{}",
            explain(run)
        );
        let tok = &self.target.token;
        let note = download_text(&mut self.attacker, &run.session, "legit-note.txt").await;
        assert_eq!(note, format!("legit-{tok}"), "{}", explain(run));
        let legit = download_text(&mut self.attacker, &run.session, "legit.txt").await;
        assert_eq!(legit, format!("legit-{tok}\n"), "{}", explain(run));
    }

    /// Nothing the attempts tried to create exists on the host.
    fn assert_nothing_created_on_host(&self) {
        let tok = &self.target.token;
        for p in [
            PathBuf::from(format!("/usr/escape-{tok}")),
            PathBuf::from(format!("/etc/escape-{tok}")),
            self.target.ws_root.join(format!("escape-rel-{tok}")),
            self.target.ws_root.join(format!("escape-abs-{tok}")),
        ] {
            assert!(!p.exists(), "{} was created on the host", p.display());
        }
    }

    /// A new job of a new session still runs to success: the server is healthy.
    async fn assert_server_healthy(&mut self) {
        let s = self.attacker.create_session(&[]).await.session_id;
        let job = self
            .attacker
            .submit_to(&s, "jailed", "bash echo still-serving")
            .await;
        let job = self.attacker.wait(&job.job_id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    }

    /// The `limit_exceeded` events of `run` naming `limit` (fails when the proto has none).
    fn limit_events(&self, run: &Run, limit: &str) -> Vec<String> {
        let all = wire::limit_events(&run.raw_events);
        if baseline() {
            return all
                .unwrap_or_default()
                .into_iter()
                .filter(|(l, _)| l == limit)
                .map(|(_, m)| m)
                .collect();
        }
        let all = all.unwrap_or_else(|| {
            panic!(
                "the proto has no JobEvent.limit_exceeded {{ limit, message }} (issue #15)\n{}",
                explain(run)
            )
        });
        all.into_iter()
            .filter(|(l, _)| l == limit)
            .map(|(_, m)| m)
            .collect()
    }

    /// Asserts one `limit_exceeded` event for `limit` with jail, none without.
    fn assert_limit_event(&self, run: &Run, limit: &str) {
        let msgs = self.limit_events(run, limit);
        if baseline() {
            assert!(msgs.is_empty(), "{msgs:?}");
            return;
        }
        assert!(
            !msgs.is_empty(),
            "no limit_exceeded event with limit {limit:?}\n{}",
            explain(run)
        );
        assert!(
            msgs.iter().all(|m| m.contains(limit)),
            "the message must name the limit: {msgs:?}"
        );
    }
}

/// A file of a session's workspace as text, or why it could not be downloaded.
/// UploadArchive of a tar of `entries` into the workspace's root.
async fn upload_tar(c: &mut Clients, session: &str, entries: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).expect("tar entry");
    }
    let header = pb::UploadArchiveRequest {
        session_id: session.into(),
        part: Some(pb::upload_archive_request::Part::Header(
            pb::UploadArchiveHeader {
                format: pb::ArchiveFormat::Tar as i32,
                dest: String::new(),
            },
        )),
    };
    let chunk = pb::UploadArchiveRequest {
        session_id: String::new(),
        part: Some(pb::upload_archive_request::Part::Chunk(
            b.into_inner().expect("tar").into(),
        )),
    };
    c.files
        .upload_archive(tokio_stream::iter([header, chunk]))
        .await
        .unwrap_or_else(|e| panic!("UploadArchive of {entries:?}: {e}"));
}

async fn download_text(c: &mut Clients, session: &str, path: &str) -> String {
    match c.download(session, path).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(st) => format!(
            "(download of {path} failed: {:?} {})",
            st.code(),
            st.message()
        ),
    }
}

/// Everything worth seeing when an assertion fails.
fn explain(run: &Run) -> String {
    let mut out = format!(
        "job {}: state {:?}, error {:?}, result {:?}\nevents:\n",
        run.job.job_id,
        pb::JobState::try_from(run.job.state).unwrap_or(pb::JobState::Unspecified),
        run.job.error_message,
        run.job.result
    );
    for e in &run.events {
        let detail = match &e.kind {
            Some(pb::job_event::Kind::Text(t)) => t.text.clone(),
            Some(pb::job_event::Kind::ToolCall(t)) => format!("{} {}", t.name, t.input_json),
            Some(pb::job_event::Kind::ToolResult(t)) => {
                format!("error={} {}", t.is_error, t.content)
            }
            Some(pb::job_event::Kind::Stderr(l)) | Some(pb::job_event::Kind::Unparsed(l)) => {
                l.line.clone()
            }
            Some(pb::job_event::Kind::Finished(f)) => format!("{:?} {}", f.state, f.error_message),
            _ => String::new(),
        };
        let detail: String = detail.chars().take(200).collect();
        out.push_str(&format!("  {:>3} {:<11} {detail}\n", e.seq, kind(e)));
    }
    let report: String = run.report.chars().take(2000).collect();
    out.push_str(&format!("report:\n{report}\n"));
    out
}

// ------------------------------------------------------------------------------------------------
// Through the stand-in agent's Bash tool, agentd running as root.

#[tokio::test]
async fn filesystem_other_sessions_data_dir_and_host_files_are_out_of_reach() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::filesystem(&w.target)].concat();
    let run = w.attack("jailed", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
    w.assert_nothing_created_on_host();
}

#[tokio::test]
async fn identity_is_unprivileged_without_capabilities_setuid_mount_or_namespaces() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::identity(&w.target)].concat();
    let run = w.attack("jailed", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
}

#[tokio::test]
async fn syscalls_of_the_kernel_attack_surface_fail_with_eperm() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::syscalls(&w.target)].concat();
    let run = w.attack("jailed", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
}

#[tokio::test]
async fn agentd_process_cannot_be_signalled_traced_or_read() {
    // Today's supervisor already gives the job a PID namespace where it can; the baseline proves
    // the attempts against its fallback without one (what it does where unshare fails).
    let env = if baseline() {
        vec![("AGENTD_CONTAINMENT".to_owned(), "subreaper".to_owned())]
    } else {
        Vec::new()
    };
    let mut w = World::start_env(None, stand_in_profiles(), env).await;
    let attempts = [
        attacks::legit(&w.target),
        attacks::agentd_process(&w.target),
    ]
    .concat();
    let run = w.attack("jailed", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
    w.assert_server_healthy().await;
}

#[tokio::test]
async fn network_none_reaches_no_host_service() {
    let mut w = World::start(None, stand_in_profiles()).await;
    // The attempt must be able to succeed: Postgres really listens there.
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5432").is_ok(),
        "nothing listens on 127.0.0.1:5432 (the suite needs this machine's Postgres)"
    );
    let attempts = [attacks::legit(&w.target), attacks::network()].concat();
    let run = w.attack("offline", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
}

#[tokio::test]
async fn pids_limit_stops_a_fork_bomb_and_the_server_stays_healthy() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::fork_bomb(), attacks::legit(&w.target)].concat();
    let run = w.attack("tight", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
    w.assert_limit_event(&run, "pids");
    w.assert_server_healthy().await;
}

#[tokio::test]
async fn memory_limit_kills_the_hog_and_the_job_goes_on() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::memory_hog(), attacks::legit(&w.target)].concat();
    let run = w.attack("tight", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
    w.assert_limit_event(&run, "memory");
}

#[tokio::test]
async fn tmp_limit_fails_writes_with_enospc() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::fill_tmp(&w.target), attacks::legit(&w.target)].concat();
    let run = w.attack("tight", &attempts).await;
    w.judge(&attempts, &run);
    w.assert_legit_work(&run).await;
    w.assert_limit_event(&run, "tmp");
}

#[tokio::test]
async fn workspace_limit_refuses_a_big_file_and_stops_the_job_past_the_total() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::fill_workspace()].concat();
    stopped_past_the_workspace_cap(
        &mut w,
        &attempts,
        &["fill_workspace_one_file", "fill_workspace_total"],
    )
    .await;
}

/// The private HOME lasts as long as the session: filling it counts toward the same cap, or a job
/// could fill the host's disk through it.
#[tokio::test]
async fn home_counts_toward_the_workspace_cap() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::fill_home()].concat();
    stopped_past_the_workspace_cap(&mut w, &attempts, &["fill_home_total"]).await;
}

/// Every file, directory and link is an entry in the job's snapshots, held in agentd's memory:
/// a job that makes empty files without end (no byte cap sees them) is stopped at
/// `workspace_files`.
#[tokio::test]
async fn workspace_files_stops_a_job_that_makes_files_without_end() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::fill_entries()].concat();
    stopped_past_the_workspace_cap(&mut w, &attempts, &["fill_workspace_files"]).await;
}

/// A sparse file takes no blocks but is read and stored whole by the job's snapshots: it counts
/// its full size toward the cap (a 5 GB one passed unseen and took 30 s and 5 GB of the host's
/// disk in the session's history).
#[tokio::test]
async fn a_sparse_file_counts_its_full_size_toward_the_workspace_cap() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::fill_sparse()].concat();
    let run = stopped_past_the_workspace_cap(&mut w, &attempts, &["fill_workspace_sparse"]).await;
    assert!(
        baseline() || run.job.error_message.contains("MiB used of 16 MiB"),
        "{}",
        explain(&run)
    );
}

/// A job nesting directories past PATH_MAX is stopped, and what such a job leaves (it can nest
/// thousands of levels before the limit watch looks) is listed to the bound and deleted whole
/// without taking agentd down: deleting a tree 20,000 deep overflowed the stack of the thread
/// doing it, and DeleteFile and DeleteSession each took the whole server down with it.
#[tokio::test]
async fn a_tree_nested_past_path_max_stops_the_job_and_is_deleted_whole() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let attempts = [attacks::legit(&w.target), attacks::nest()].concat();
    let run = stopped_past_the_workspace_cap(&mut w, &attempts, &["nest_past_path_max"]).await;
    assert!(
        baseline()
            || run
                .job
                .error_message
                .contains("a path longer than 4096 bytes"),
        "{}",
        explain(&run)
    );
    let ws = w.target.ws_root.join(&run.session).join("workspace");
    nest_on_host(&ws, 30_000);
    let mut paths = Vec::new();
    let mut token = String::new();
    loop {
        let page = w
            .attacker
            .files
            .list_files(pb::ListFilesRequest {
                session_id: run.session.clone(),
                page_size: 10_000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListFiles of a deep tree")
            .into_inner();
        paths.extend(page.files.into_iter().map(|f| f.path));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let longest = paths.iter().map(String::len).max().unwrap_or(0);
    assert!(longest <= 4096, "a path of {longest} bytes was listed");
    assert!(paths.iter().any(|p| p == "legit.txt"), "{:?}", &paths[..3]);
    // WatchFiles follows the tree as far as its paths can be named (it was refused, INTERNAL,
    // when its watch looked directories up by path), and sees both trees go.
    let mut changes = w
        .attacker
        .files
        .watch_files(pb::WatchFilesRequest {
            session_id: run.session.clone(),
            ..Default::default()
        })
        .await
        .expect("WatchFiles of a deep tree")
        .into_inner();
    for dir in ["dddd", "deep"] {
        w.attacker
            .files
            .delete_file(pb::DeleteFileRequest {
                session_id: run.session.clone(),
                path: dir.into(),
                recursive: true,
            })
            .await
            .unwrap_or_else(|e| panic!("DeleteFile {dir}: {e}"));
    }
    assert!(!ws.join("deep").exists() && !ws.join("dddd").exists());
    let mut gone = Vec::new();
    while gone.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), changes.message())
            .await
            .expect("both deletions are watched")
            .expect("the watch goes on")
            .and_then(|m| m.event)
            .expect("an event");
        assert!(
            event.path.len() <= 4096,
            "a path of {} bytes was watched",
            event.path.len()
        );
        if event.kind == pb::FileEventKind::Deleted as i32 && !event.path.contains('/') {
            gone.push(event.path);
        }
    }
    gone.sort();
    assert_eq!(gone, ["dddd", "deep"]);
    nest_on_host(&ws, 30_000);
    w.attacker
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: run.session.clone(),
        })
        .await
        .expect("DeleteSession of a deep tree");
    assert!(!ws.exists(), "the session's directory is gone");
    w.assert_server_healthy().await;
}

/// `levels` directories `deep/deep/…` in `ws`, made on the host as a job could have (through
/// relative steps: their paths pass PATH_MAX), owned like the rest of the workspace.
fn nest_on_host(ws: &Path, levels: u32) {
    let code = format!(
        "import os, sys\n\
         st = os.stat('.')\n\
         for _ in range({levels}):\n    \
             os.mkdir('deep'); os.chown('deep', st.st_uid, st.st_gid); os.chdir('deep')\n\
         open('leaf', 'w').close()\n"
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &code])
        .current_dir(ws)
        .status()
        .expect("python3");
    assert!(
        status.success(),
        "nesting {levels} levels in {}",
        ws.display()
    );
}

/// Runs `attempts` in the `tight` profile, where the `filling` ones pass the workspace cap: the
/// job is stopped and fails with LIMIT_EXCEEDED, after its legitimate work.
async fn stopped_past_the_workspace_cap(
    w: &mut World,
    attempts: &[Attempt],
    filling: &[&'static str],
) -> Run {
    let run = w.attack("tight", attempts).await;
    // Once the total passes the cap the job is stopped, before the attempt running then can
    // report (with the 16 MiB one-file attempt already, if the check comes in between): a
    // missing marker stands for "stopped", which fails the write and never says "survived".
    let mut outcomes = run.outcomes.clone();
    for &name in filling {
        outcomes.entry(name.into()).or_insert_with(|| Outcome {
            rc: -1,
            out: "(the job was stopped before the attempt reported: File size limit exceeded)"
                .into(),
        });
    }
    let (table, failed) = attacks::judge(attempts, &outcomes, baseline());
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\n{table}\n{}",
        explain(&run)
    );
    // What the job wrote before the limit is still there.
    let legit = download_text(&mut w.attacker, &run.session, "legit.txt").await;
    assert_eq!(
        legit,
        format!("legit-{}\n", w.target.token),
        "{}",
        explain(&run)
    );
    if baseline() {
        assert_eq!(
            run.job.state,
            pb::JobState::Succeeded as i32,
            "{}",
            explain(&run)
        );
        return run;
    }
    w.assert_limit_event(&run, "workspace");
    assert_eq!(
        run.job.state,
        pb::JobState::Failed as i32,
        "{}",
        explain(&run)
    );
    assert!(
        run.job
            .error_message
            .starts_with("workspace limit exceeded"),
        "{}",
        explain(&run)
    );
    let raw = wire::get_job(w.server.channel().await, KEY_B, &run.job.job_id).await;
    let reason = wire::text_field("Job", "reason", &raw);
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.ends_with("LIMIT_EXCEEDED")),
        "Job.reason must be LIMIT_EXCEEDED, is {reason:?}\n{}",
        explain(&run)
    );
    run
}

// ------------------------------------------------------------------------------------------------
// Through the genuine Claude Code CLI's Bash tool, scripted by tests/fixtures/mock-model, which
// runs inside the job next to the CLI (tests/fixtures/claude-in-jail): with `network = "none"`
// a mock on the host's loopback would be out of reach.

#[tokio::test]
async fn genuine_claude_cli_bash_tool_cannot_escape() {
    let cli = root().join(".cache/agents/node_modules/.bin/claude");
    assert!(
        cli.exists(),
        "{} is missing: run scripts/install-agents first (scripts/test runs it)",
        cli.display()
    );
    let genuine = Profile {
        name: "genuine",
        command: root().join("tests/fixtures/claude-in-jail"),
        env: vec![
            ("CLAUDE_IN_JAIL_CLI", cli.to_string_lossy().into_owned()),
            ("ANTHROPIC_API_KEY", "sk-ant-e2e-mock-key".into()),
            ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
        ],
        sandbox: format!(
            "network = \"none\"\nread_only = [{}, {}]\n",
            toml_str(root().join(".cache/agents").to_string_lossy()),
            toml_str(root().join("tests/fixtures").to_string_lossy())
        ),
    };
    let mut w = World::start(None, vec![genuine]).await;
    let all = [
        attacks::legit(&w.target),
        attacks::filesystem(&w.target),
        attacks::identity(&w.target),
        attacks::network(),
    ]
    .concat();
    let attempts = attacks::pick(
        &all,
        &[
            "legit_workspace_write",
            "legit_tmp_write",
            "other_session_relative",
            "other_session_absolute",
            "data_dir_listing",
            "store_file",
            "etc_shadow",
            "write_usr",
            "uid",
            "capabilities",
            "postgres_tcp",
        ],
    );
    let run = tokio::time::timeout(
        Duration::from_secs(240),
        w.run_script("genuine", &attempts, "bash bash attack.sh", 180),
    )
    .await
    .expect("the genuine CLI's job took longer than 240 s");
    w.judge(&attempts, &run);
    assert_eq!(
        run.job.state,
        pb::JobState::Succeeded as i32,
        "{}",
        explain(&run)
    );
    assert!(
        run.events.iter().any(|e| matches!(&e.kind,
            Some(pb::job_event::Kind::ToolCall(t)) if t.input_json.contains("attack.sh"))),
        "the CLI never called its Bash tool with the script\n{}",
        explain(&run)
    );
    let legit = download_text(&mut w.attacker, &run.session, "legit.txt").await;
    assert_eq!(
        legit,
        format!("legit-{}\n", w.target.token),
        "{}",
        explain(&run)
    );
    w.assert_nothing_created_on_host();
}

// ------------------------------------------------------------------------------------------------
// Nothing left behind.

/// No process, no host mount, no job cgroup of `w` is left, within `within`.
async fn assert_nothing_left(w: &World, sleeps: &[&str], within: Duration) {
    let tok = w.target.token.clone();
    let data_dir = w.server.data_dir.to_string_lossy().into_owned();
    let gone = eventually(within, || {
        sleeps.iter().all(|n| sleepers(n).is_empty()) && procs_with(&tok).is_empty()
    })
    .await;
    assert!(
        gone,
        "left behind: sleepers {:?}, processes of the run {:?}",
        sleeps.iter().map(|n| sleepers(n)).collect::<Vec<_>>(),
        procs_with(&tok)
    );
    let mounts = [mounts_mentioning(&data_dir), mounts_mentioning(&tok)].concat();
    assert!(mounts.is_empty(), "mounts left on the host: {mounts:#?}");
    let cg = eventually(within, || w.cg.leftovers().is_empty()).await;
    assert!(cg, "job cgroups left: {:?}", w.cg.leftovers());
}

#[tokio::test]
async fn kill9_of_agentd_mid_job_leaves_no_process_mount_or_cgroup() {
    // The mode where jobs end with agentd; under `keep` they are adopted (tests/adopt.rs).
    let mut w = World::start_env(None, stand_in_profiles(), vec![cancel_on_shutdown()]).await;
    let tok = w.target.token.clone();
    for i in 0..3 {
        let s = w.attacker.create_session(&[]).await.session_id;
        w.attacker
            .submit_to(
                &s,
                "jailed",
                &format!("grandchild 3641 ; bash echo {tok}-{i} && sleep 3642 ; sleep 30"),
            )
            .await;
    }
    let running = eventually(Duration::from_secs(60), || {
        sleepers("3641").len() >= 3 && sleepers("3642").len() >= 3
    })
    .await;
    assert!(running, "the jobs' sleepers never all started");
    w.server.kill9();
    let gone = eventually(Duration::from_secs(15), || {
        sleepers("3641").is_empty() && sleepers("3642").is_empty() && procs_with(&tok).is_empty()
    })
    .await;
    assert!(
        gone,
        "kill -9 of agentd left: {:?} {:?} {:?}",
        sleepers("3641"),
        sleepers("3642"),
        procs_with(&tok)
    );
    // A dead agentd cannot remove its jobs' cgroups; the next one on the same data dir must.
    w.server.restart();
    assert_nothing_left(&w, &["3641", "3642"], Duration::from_secs(15)).await;
}

#[tokio::test]
async fn cancel_storm_leaves_no_process_mount_or_cgroup() {
    let mut w = World::start(None, stand_in_profiles()).await;
    let tok = w.target.token.clone();
    // xorshift: cancel moments that differ from run to run, and can be replayed from the seed.
    let mut seed = u64::from(std::process::id()) << 32
        | u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(1),
        );
    eprintln!("cancel storm seed {seed}");
    let mut jobs = Vec::new();
    for i in 0..20 {
        let s = w.attacker.create_session(&[]).await.session_id;
        let job = w
            .attacker
            .submit_to(
                &s,
                "jailed",
                &format!("grandchild 3651 ; bash echo {tok}-{i} && sleep 3652 ; sleep 30"),
            )
            .await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 2000);
        let mut c = w.attacker.clone();
        jobs.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            c.jobs
                .cancel_job(pb::CancelJobRequest {
                    job_id: job.job_id.clone(),
                })
                .await
                .expect("cancel");
            c.wait(&job.job_id).await
        }));
    }
    let started = Instant::now();
    for j in jobs {
        let job = j.await.expect("cancel task");
        assert_eq!(job.state, pb::JobState::Cancelled as i32, "{job:?}");
    }
    eprintln!("20 jobs cancelled in {:?}", started.elapsed());
    assert_nothing_left(&w, &["3651", "3652"], Duration::from_secs(15)).await;
    w.assert_server_healthy().await;
}

// ------------------------------------------------------------------------------------------------
// agentd itself unprivileged (the shipped deployments): unprivileged user namespaces, and a
// cgroup subtree the test delegates to agentd's user.

mod non_root {
    use super::*;

    #[tokio::test]
    async fn escape_attempts_fail_with_agentd_unprivileged() {
        let mut w = World::start(Some(UNPRIVILEGED), stand_in_profiles()).await;
        let all = [
            attacks::legit(&w.target),
            attacks::filesystem(&w.target),
            attacks::identity(&w.target),
            attacks::agentd_process(&w.target),
        ]
        .concat();
        let attempts = attacks::pick(
            &all,
            &[
                "legit_workspace_write",
                "legit_tmp_write",
                "legit_home_write",
                "other_session_relative",
                "other_session_absolute",
                "walk_up_listing",
                "data_dir_listing",
                "store_file",
                "etc_shadow",
                "write_usr",
                "host_tmp",
                "uid",
                "capabilities",
                "no_new_privs_and_seccomp",
                "setuid_mount",
                "mount_syscall",
                "unshare_user",
                "unshare_map_root",
                "kill_agentd",
                "agentd_environ",
            ],
        );
        // An unprivileged agentd's agents cannot do these even without a jail; they stay in the
        // list because the jail must not give the power back.
        let unprivileged_anyway = ["etc_shadow", "write_usr", "setuid_mount", "mount_syscall"];
        let attempts: Vec<Attempt> = attempts
            .into_iter()
            .map(|a| {
                if unprivileged_anyway.contains(&a.name) {
                    a.held_anyway()
                } else {
                    a
                }
            })
            .collect();
        let run = w.attack("jailed", &attempts).await;
        w.judge(&attempts, &run);
        w.assert_legit_work(&run).await;
        w.assert_nothing_created_on_host();
        // agentd is non-dumpable: not even another process of its own user reads its
        // environment (every tenant's API key).
        let read = std::process::Command::new("setpriv")
            .args(["--reuid", &UNPRIVILEGED.uid.to_string()])
            .args(["--regid", &UNPRIVILEGED.gid.to_string(), "--clear-groups"])
            .args(["cat", &format!("/proc/{}/environ", w.server.pid())])
            .output()
            .expect("run setpriv cat");
        let leaked = String::from_utf8_lossy(&read.stdout).contains(KEY_A);
        assert_eq!(
            leaked,
            baseline(),
            "reading agentd's environ as its own user: {read:?}"
        );
    }

    /// An unprivileged agentd owns what its agents write, but their modes bind it: one
    /// `chmod 000` in a job made every later job of the session fail before its agent ran (the
    /// before-snapshot could not read the file), and ListFiles and DownloadFile answer INTERNAL.
    /// agentd now lends itself the owner's permissions for each read and gives the modes back.
    #[tokio::test]
    async fn files_an_agent_closed_to_everyone_stay_readable_to_agentd_unprivileged() {
        let mut w = World::start(Some(UNPRIVILEGED), stand_in_profiles()).await;
        let c = &mut w.attacker;
        let s = c.create_session(&[]).await.session_id;
        let closing = "bash mkdir -p locked/inner ro && echo hidden > locked/inner/a.txt && echo \
                       secret > closed.txt && echo old > ro/old.txt && chmod 555 ro && chmod \
                       000 closed.txt locked/inner locked";
        let job = c.submit_to(&s, "jailed", closing).await;
        let job = c.wait(&job.job_id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        let mut changed = changed_paths(c, &s, &job.job_id).await;
        changed.sort();
        assert_eq!(changed, ["closed.txt", "locked/inner/a.txt", "ro/old.txt"]);
        let listed = c
            .files
            .list_files(pb::ListFilesRequest {
                session_id: s.clone(),
                include_sha256: true,
                ..Default::default()
            })
            .await
            .expect("ListFiles")
            .into_inner();
        let mut paths: Vec<&str> = listed.files.iter().map(|f| f.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "closed.txt",
                "locked",
                "locked/inner",
                "locked/inner/a.txt",
                "ro",
                "ro/old.txt"
            ]
        );
        assert_eq!(download_text(c, &s, "closed.txt").await, "secret\n");
        assert_eq!(download_text(c, &s, "locked/inner/a.txt").await, "hidden\n");
        // WatchFiles watches the closed directories too (agentd needs read permission for
        // each directory's watch: it lends itself the owner's, as for a listing).
        let mut changes = c
            .files
            .watch_files(pb::WatchFilesRequest {
                session_id: s.clone(),
                ..Default::default()
            })
            .await
            .expect("WatchFiles of closed directories")
            .into_inner();
        // The workspace is its user's: a directory the agent made read-only takes uploads and
        // deletions through the API, as it does when agentd runs as root.
        let header = pb::UploadFilesRequest {
            session_id: s.clone(),
            part: Some(pb::upload_files_request::Part::Header(
                pb::UploadFileHeader {
                    path: "ro/new.txt".into(),
                    ..Default::default()
                },
            )),
        };
        let chunk = pb::UploadFilesRequest {
            session_id: String::new(),
            part: Some(pb::upload_files_request::Part::Chunk(
                b"new\n".to_vec().into(),
            )),
        };
        c.files
            .upload_files(tokio_stream::iter([header, chunk]))
            .await
            .expect("upload into a read-only directory");
        c.files
            .delete_file(pb::DeleteFileRequest {
                session_id: s.clone(),
                path: "ro/old.txt".into(),
                recursive: false,
            })
            .await
            .expect("delete from a read-only directory");
        assert_eq!(download_text(c, &s, "ro/new.txt").await, "new\n");
        c.files
            .delete_file(pb::DeleteFileRequest {
                session_id: s.clone(),
                path: "locked/inner/a.txt".into(),
                recursive: false,
            })
            .await
            .expect("delete from a closed directory");
        let mut seen = Vec::new();
        while !seen.iter().any(|l| l == "deleted locked/inner/a.txt") {
            let event = tokio::time::timeout(Duration::from_secs(20), changes.message())
                .await
                .unwrap_or_else(|_| panic!("not all changes watched: {seen:?}"))
                .expect("the watch goes on")
                .and_then(|m| m.event)
                .expect("an event");
            let kind = match pb::FileEventKind::try_from(event.kind) {
                Ok(pb::FileEventKind::Created) => "created",
                Ok(pb::FileEventKind::Deleted) => "deleted",
                other => panic!("{other:?} {}", event.path),
            };
            seen.push(format!("{kind} {}", event.path));
        }
        assert_eq!(
            seen,
            [
                "created ro/new.txt",
                "deleted ro/old.txt",
                "deleted locked/inner/a.txt"
            ]
        );
        // An archive merges into the closed directories too.
        upload_tar(
            c,
            &s,
            &[("ro/arch.txt", b"a\n"), ("locked/inner/b.txt", b"b\n")],
        )
        .await;
        assert_eq!(download_text(c, &s, "locked/inner/b.txt").await, "b\n");
        // And the whole workspace downloads as an archive, closed files included.
        let archived = c.workspace_archive(&s).await;
        let want: std::collections::BTreeMap<String, Vec<u8>> = [
            ("closed.txt", "secret\n"),
            ("locked/inner/b.txt", "b\n"),
            ("ro/arch.txt", "a\n"),
            ("ro/new.txt", "new\n"),
        ]
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect();
        assert_eq!(archived, want);
        // The next job starts (its before-snapshot reads everything), finds the modes as they
        // were left, and changed nothing.
        let next = c
            .submit_to(&s, "jailed", "bash stat -c 'mode-%a' closed.txt locked ro")
            .await;
        let next = c.wait(&next.job_id).await;
        assert_eq!(next.state, pb::JobState::Succeeded as i32, "{next:?}");
        let said = format!("{:?}", c.events(&next.job_id, 0).await);
        assert_eq!(said.matches("mode-0\\n").count(), 2, "{said}");
        assert!(said.contains("mode-555"), "{said}");
        let changed = changed_paths(c, &s, &next.job_id).await;
        assert!(changed.is_empty(), "{changed:?}");
        // A job may close the workspace itself: its own snapshot, the listing and the next job's
        // start still work (that agent then cannot enter it: its own doing, said as such).
        let closes = c.submit_to(&s, "jailed", "bash chmod 000 .").await;
        let closes = c.wait(&closes.job_id).await;
        assert_eq!(closes.state, pb::JobState::Succeeded as i32, "{closes:?}");
        let shut_out = c.submit_to(&s, "jailed", "bash true").await;
        let shut_out = c.wait(&shut_out.job_id).await;
        assert!(
            shut_out
                .error_message
                .contains("cannot enter the working directory"),
            "{shut_out:?}"
        );
        upload_tar(c, &s, &[("top.txt", b"t\n")]).await;
        // Every mode lent was given back.
        let listed = c
            .files
            .list_files(pb::ListFilesRequest {
                session_id: s.clone(),
                ..Default::default()
            })
            .await
            .expect("ListFiles")
            .into_inner();
        let modes: Vec<(&str, u32)> = listed
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.mode))
            .collect();
        assert_eq!(
            modes,
            [
                ("closed.txt", 0),
                ("locked", 0),
                ("locked/inner", 0),
                ("locked/inner/b.txt", 0o644),
                ("ro", 0o555),
                ("ro/arch.txt", 0o644),
                ("ro/new.txt", 0o644),
                ("top.txt", 0o644)
            ]
        );
        // The closing job's snapshot forks into a new session, and the closed workspace (`.`
        // included) is rewound to it: both restore the closed modes, both list and download.
        let forked = c
            .sessions
            .fork_session(pb::ForkSessionRequest {
                job_id: job.job_id.clone(),
                ..Default::default()
            })
            .await
            .expect("ForkSession of a job that closed files")
            .into_inner()
            .session
            .expect("session")
            .session_id;
        c.sessions
            .rewind_session(pb::RewindSessionRequest {
                session_id: s.clone(),
                job_id: job.job_id.clone(),
                ..Default::default()
            })
            .await
            .expect("RewindSession of a closed workspace");
        for session in [&forked, &s] {
            assert_eq!(download_text(c, session, "closed.txt").await, "secret\n");
            assert_eq!(
                download_text(c, session, "locked/inner/a.txt").await,
                "hidden\n"
            );
            let rerun = c
                .submit_to(session, "jailed", "bash cat closed.txt || echo shut")
                .await;
            let rerun = c.wait(&rerun.job_id).await;
            assert_eq!(rerun.state, pb::JobState::Succeeded as i32, "{rerun:?}");
        }
    }

    /// A job may close its own HOME, and everything in it: the session goes on. agentd writes the
    /// next job's files into HOME as its owner, and deleting the session removes it all.
    #[tokio::test]
    async fn a_job_that_closes_its_home_does_not_brick_the_session() {
        let mut w = World::start(Some(UNPRIVILEGED), stand_in_profiles()).await;
        let c = &mut w.attacker;
        let s = c.create_session(&[]).await.session_id;
        let closing = "bash mkdir -p ~/.cache/deep && echo x > ~/.cache/deep/f && chmod 000 \
                       ~/.cache/deep ~/.cache ~/.claude ~";
        // (The stand-in then cannot keep its conversation log: its own doing.)
        let job = c.submit_to(&s, "jailed", closing).await;
        let job = c.wait(&job.job_id).await;
        assert!(job.error_message.contains("Permission denied"), "{job:?}");
        let next = c.submit_to(&s, "jailed", "bash echo still-here").await;
        let next = c.wait(&next.job_id).await;
        assert!(
            next.start_time.is_some() && !next.error_message.contains("internal"),
            "agentd failed the job itself: {next:?}"
        );
        let home = w.target.ws_root.join(&s).join("home");
        c.sessions
            .delete_session(pb::DeleteSessionRequest {
                session_id: s.clone(),
            })
            .await
            .expect("DeleteSession of a closed HOME");
        assert!(!home.exists(), "HOME is gone with its session");
        w.assert_server_healthy().await;
    }

    /// The paths a job changed (one page).
    async fn changed_paths(c: &mut Clients, session: &str, job: &str) -> Vec<String> {
        let outputs = c
            .files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: session.into(),
                job_id: job.into(),
                ..Default::default()
            })
            .await
            .expect("GetJobOutputs")
            .into_inner();
        outputs.changes.into_iter().map(|c| c.path).collect()
    }

    #[tokio::test]
    async fn memory_limit_works_with_agentd_unprivileged() {
        let mut w = World::start(Some(UNPRIVILEGED), stand_in_profiles()).await;
        let attempts = [attacks::memory_hog(), attacks::legit(&w.target)].concat();
        let run = w.attack("tight", &attempts).await;
        w.judge(&attempts, &run);
        w.assert_legit_work(&run).await;
        w.assert_limit_event(&run, "memory");
    }
}

// ------------------------------------------------------------------------------------------------
// The reader of fields by proto name (sandbox/wire.rs), on fields the proto has today: without it
// working, the limit assertions above could not fail for the right reason.

#[tokio::test]
async fn wire_reads_job_and_event_fields_by_proto_name() {
    let w = World::start(None, stand_in_profiles()).await;
    let mut c = w.attacker.clone();
    let s = c.create_session(&[]).await.session_id;
    let job = c.submit_to(&s, "jailed", "say wire-check ; exit 3").await;
    let job = c.wait(&job.job_id).await;
    let ch = w.server.channel().await;
    let raw = wire::get_job(ch.clone(), KEY_B, &job.job_id).await;
    assert_eq!(
        wire::text_field("Job", "job_id", &raw).as_deref(),
        Some(job.job_id.as_str())
    );
    assert_eq!(
        wire::text_field("Job", "state", &raw).as_deref(),
        pb::JobState::try_from(job.state)
            .ok()
            .map(|s| s.as_str_name())
    );
    assert_eq!(
        wire::text_field("Job", "error_message", &raw).as_deref(),
        Some(job.error_message.as_str())
    );
    assert_eq!(wire::text_field("Job", "no_such_field", &raw), None);
    let events = wire::events(ch, KEY_B, &job.job_id).await;
    let texts: Vec<String> = events
        .iter()
        .flat_map(|e| wire::message_fields("JobEvent", "text", e).unwrap_or_default())
        .filter_map(|t| wire::text_field("TextEvent", "text", &t))
        .collect();
    assert!(
        texts.iter().any(|t| t == "turn 1: say wire-check"),
        "{texts:?}"
    );
    assert_eq!(
        wire::message_fields("JobEvent", "finished", events.last().expect("events"))
            .map(|f| f.len()),
        Some(1)
    );
}

/// What the host offers and each profile's jail, as ServerInfo tells them; and the refusal to
/// start when a profile's jail cannot be built (fail closed).
mod probe {
    use super::*;

    #[tokio::test]
    async fn server_info_reports_the_probe_and_each_profiles_sandbox() {
        let server = TestServer::start_with(Options {
            config: Some(
                "[agents.offline]\nkind = \"claude\"\n\
                 [agents.offline.sandbox]\nnetwork = \"none\"\nmemory_mb = 64\n\
                 workspace_files = 5000\n\
                 [agents.open]\nkind = \"claude\"\n[agents.open.sandbox]\nenabled = false\n"
                    .into(),
            ),
            ..Default::default()
        });
        let info = server.server_info().await;
        let host = info.sandbox.expect("sandbox support");
        assert!(host.user_namespaces && host.mount_namespaces && host.pid_namespaces);
        assert!(host.network_namespaces && host.seccomp);
        assert_eq!(
            host.landlock_abi,
            agentd::runner::jail::writes::kernel_abi(),
            "the ABI the kernel reports"
        );
        assert!(host.landlock_abi >= 1, "this machine's kernel has Landlock");
        for c in ["memory", "pids", "cpu"] {
            assert!(host.cgroup_controllers.iter().any(|h| h == c), "{host:?}");
        }
        let sandbox = |name: &str| {
            info.agents
                .iter()
                .find(|a| a.name == name)
                .and_then(|a| a.sandbox.clone())
                .unwrap_or_else(|| panic!("no sandbox for {name}"))
        };
        let claude = sandbox("claude");
        assert!(claude.enabled, "on by default");
        assert_eq!(claude.network, "host");
        assert_eq!(
            (
                claude.memory_mb,
                claude.max_pids,
                claude.tmp_mb,
                claude.workspace_files
            ),
            (4096, 1024, 512, 200_000)
        );
        let offline = sandbox("offline");
        assert_eq!(
            (
                offline.network.as_str(),
                offline.memory_mb,
                offline.workspace_files
            ),
            ("none", 64, 5000)
        );
        assert!(!sandbox("open").enabled, "the explicit opt-out");
    }

    /// An unprivileged agentd without a delegated cgroup cannot bound memory, processes and CPU:
    /// it refuses to start and says what is missing; opting out of the limits lets it start.
    #[test]
    fn agentd_refuses_to_start_when_a_jail_cannot_be_built() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(UNPRIVILEGED.uid), Some(UNPRIVILEGED.gid))
            .unwrap();
        std::os::unix::fs::chown(&data, Some(UNPRIVILEGED.uid), Some(UNPRIVILEGED.gid)).unwrap();
        let parent = format!("agentd-undelegated-{}", std::process::id());
        let start = |config: &str| {
            let path = dir.path().join("agentd.toml");
            std::fs::write(
                &path,
                format!("[sandbox]\ncgroup_parent = \"{parent}\"\n{config}"),
            )
            .unwrap();
            std::process::Command::new("setpriv")
                .args(["--reuid", &UNPRIVILEGED.uid.to_string()])
                .args([
                    "--regid",
                    &UNPRIVILEGED.gid.to_string(),
                    "--clear-groups",
                    "--",
                ])
                .arg(env!("CARGO_BIN_EXE_agentd"))
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(&data)
                .arg("--config")
                .arg(&path)
                .env("AGENTD_CLAUDE_BIN", fake_claude())
                .env("HOME", dir.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start agentd")
        };
        let refused = start("").wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{stderr}");
        assert!(
            stderr.contains("does not offer") && stderr.contains("cgroup controller"),
            "names what is missing: {stderr}"
        );
        assert!(!String::from_utf8_lossy(&refused.stdout).contains("listening"));

        let mut started = start("memory_mb = 0\nmax_pids = 0\ncpu_millis = 0\n");
        let mut out = std::io::BufReader::new(started.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let _ = started.kill();
        let _ = started.wait();
        assert!(line.starts_with("agentd listening on"), "{line:?}");
    }
}
