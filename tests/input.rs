//! The agent's stdin through the runner ([`Stdin`]): a file given as stdin reaches the agent whole
//! in every containment mode (PID namespace, subreaper fallback, from a standby), stays out of
//! its environment, and a symlink in its place is refused rather than followed. The agentd binary
//! is the supervisor, `sh` the agent.

use agentd::domain::ExitStatus;
use agentd::runner::supervise::STDIN_FILE_ENV;
use agentd::runner::{
    Containment, Launcher, Output, Process, ProcessSpec, RunControl, Stdin, Supervisor,
};
use sha2::Digest;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_agentd");

/// The agentd binary as supervisor, in the subreaper fallback when `fallback` is set.
fn supervisor(fallback: bool) -> Supervisor {
    let mut supervisor = Supervisor::new(SUPERVISOR);
    if fallback {
        supervisor.containment = Containment::Subreaper;
    }
    supervisor
}

/// Spawns `spec` under a supervisor of its own in the PID-namespace containment.
fn spawn(spec: ProcessSpec) -> Process {
    Process::spawn(&supervisor(false), spec).expect("spawn")
}

/// `sh` printing the sha256 and size of what it reads on stdin, then whether the supervisor's
/// variable leaked into its environment.
fn digest_spec(stdin: Stdin) -> ProcessSpec {
    let env = vec![("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())];
    ProcessSpec {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("sha256sum | cut -d' ' -f1; echo \"env=${{{STDIN_FILE_ENV}:-unset}}\""),
        ],
        env,
        cwd: std::env::temp_dir(),
        max_line_bytes: 1 << 20,
        jail: None,
        stdin,
    }
}

/// Runs to the end: (exit code, stdout lines, stderr lines).
async fn run(process: Process) -> (Option<i32>, Vec<String>, Vec<String>) {
    let (tx, mut rx) = mpsc::channel(16);
    let control = RunControl {
        cancel: CancellationToken::new(),
        timeout: Duration::from_secs(60),
        grace: Duration::from_secs(5),
    };
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(o) = rx.recv().await {
            match o {
                Output::Stdout(l) => out.push(l.text),
                Output::Stderr(l) => err.push(l.text),
                Output::Notice(n) => panic!("unexpected notice {n:?}"),
                Output::Event(e) => panic!("a bare process has no gateway: {e:?}"),
            }
        }
        (out, err)
    });
    let outcome = process.run(tx, control).await;
    let (out, err) = collect.await.expect("collector");
    let code = match outcome.exit {
        ExitStatus::Code(c) => Some(c),
        ExitStatus::Signal(_) => None,
    };
    (code, out, err)
}

/// 900 KiB of numbered lines, written to `dir/input`; returns its path and sha256.
fn big_input(dir: &Path) -> (std::path::PathBuf, String) {
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 900 * 1024 {
        text.push_str(&format!("line {i} of the prompt\n"));
        i += 1;
    }
    let path = dir.join("input");
    std::fs::write(&path, &text).expect("write input");
    (path, hex::encode(sha2::Sha256::digest(text.as_bytes())))
}

async fn expect_delivered(process: Process, want: &str) {
    let (code, out, err) = run(process).await;
    assert_eq!(code, Some(0), "stdout {out:?} stderr {err:?}");
    assert_eq!(out, [want.to_owned(), "env=unset".to_owned()], "{err:?}");
}

#[tokio::test]
async fn a_stdin_file_reaches_the_agent_whole_in_every_containment_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, want) = big_input(dir.path());
    for fallback in [false, true] {
        let spec = digest_spec(Stdin::File(path.clone()));
        let process = Process::spawn(&supervisor(fallback), spec).expect("spawn");
        expect_delivered(process, &want).await;

        let spec = digest_spec(Stdin::File(path.clone()));
        let launcher = Launcher::new(supervisor(fallback), 1, None);
        launcher.warm();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while launcher.ready() == 0 {
            assert!(std::time::Instant::now() < deadline, "no standby ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let process = launcher.spawn(spec).await.expect("spawn from standby");
        assert!(process.from_standby());
        expect_delivered(process, &want).await;
        launcher.close();
    }
}

#[tokio::test]
async fn without_a_file_stdin_is_empty() {
    let empty = hex::encode(sha2::Sha256::digest(b""));
    let process = spawn(digest_spec(Stdin::Null));
    expect_delivered(process, &empty).await;
}

/// The stdin file lives in the agent's own HOME: a symlink the agent left there pointing at a
/// file of the host must not make the supervisor (privileged before the exec) read it.
#[tokio::test]
async fn a_symlink_in_place_of_the_stdin_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "host secret\n").expect("write secret");
    let link = dir.path().join("input");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let process = spawn(digest_spec(Stdin::File(link)));
    let (code, out, err) = run(process).await;
    assert_eq!(code, Some(126), "stdout {out:?} stderr {err:?}");
    assert!(out.is_empty(), "{out:?}");
    assert!(
        err.iter()
            .any(|l| l.contains("cannot open the agent's input")),
        "{err:?}"
    );
}

/// The supervisor's variable in the job's own environment is ignored: only `ProcessSpec.stdin`
/// decides, so a spec's env cannot point the supervisor at another file.
#[tokio::test]
async fn the_variable_in_the_env_does_not_choose_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "host secret\n").expect("write secret");
    let mut spec = digest_spec(Stdin::Null);
    spec.env
        .push((STDIN_FILE_ENV.into(), secret.to_string_lossy().into_owned()));
    let empty = hex::encode(sha2::Sha256::digest(b""));
    expect_delivered(spawn(spec), &empty).await;
}

mod common;

/// The server's prompt bound is configured (`--max-prompt-bytes`), and a prompt at the bound
/// reaches the (stand-in) agent on stdin, jailed, whole.
#[tokio::test]
async fn the_configured_prompt_bound_is_enforced_and_a_prompt_at_it_arrives() {
    let server = common::TestServer::start_with(common::Options {
        args: vec!["--max-prompt-bytes".into(), "4096".into()],
        ..Default::default()
    });
    let mut c = server.clients(common::KEY_A).await;
    let session = c.create_session(&[]).await.session_id;
    // One directive of 4096 bytes: the fake answers `turn 1: <directive>`.
    let prompt = format!("{}end", "x".repeat(4096 - 3));
    let job = c.submit(&session, &prompt).await;
    let job = c.wait(&job.job_id).await;
    assert_eq!(
        job.state,
        agentd::pb::JobState::Succeeded as i32,
        "{}",
        job.error_message
    );
    assert_eq!(job.result, format!("turn 1: {prompt}"));

    let err = c
        .jobs
        .submit_job(agentd::pb::SubmitJobRequest {
            session_id: session.clone(),
            prompt: format!("{prompt}!"),
            ..Default::default()
        })
        .await
        .expect_err("a prompt over the bound");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(common::reason(&err), "INVALID_FIELD");
    assert!(err.message().contains("4096"), "{}", err.message());
}
