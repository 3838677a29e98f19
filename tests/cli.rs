//! The CLI half of the binary, run as a user would: the real `agentd` executable's client
//! subcommands against a real server (and the stand-in Claude), checking what they print, what
//! they upload and download, and their exit codes.

mod common;

use agentd::pb;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `agentd ARGS…` pointed at `server` with `key`, through the environment like a user would.
fn cli(server: &str, key: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args(args)
        .env("AGENTD_URL", server)
        .env("AGENTD_API_KEY", key)
        .env_remove("AGENTD_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run agentd cli")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every stdout line as JSON (each must parse).
fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn url(s: &TestServer) -> String {
    format!("http://{}", s.addr)
}

fn project(dir: &Path) {
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(dir.join("README.md"), "# project\n").unwrap();
    std::fs::write(dir.join("lib/a.py"), "x = 1\n").unwrap();
    std::fs::set_permissions(dir.join("lib/a.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A file larger than one upload chunk, so the upload really streams.
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("lib/big.bin"), big).unwrap();
}

#[tokio::test]
async fn run_uploads_a_directory_prints_the_stream_and_downloads_the_outputs() {
    let server = TestServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    project(&src);

    let o = cli(
        &url(&server),
        KEY_A,
        &[
            "run",
            "--dir",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "write gen/out.txt hello ; bash cat lib/a.py ; bash wc -c < lib/big.bin ; bash false",
        ],
    );
    let text = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{text}\nstderr:\n{}",
        stderr(&o)
    );
    // The stream, rendered for a person: tool calls one line each, a failed tool marked, the
    // agent's text, and the summary with cost and duration.
    assert!(text.contains("uploaded 3 files (700016 bytes)"), "{text}");
    assert!(text.contains("→ Write gen/out.txt\n"), "{text}");
    assert!(text.contains("→ Bash cat lib/a.py\n"), "{text}");
    assert!(text.contains("→ Bash false\n"), "{text}");
    assert!(text.contains("  ✗ Exit code 1"), "{text}");
    assert!(text.contains("turn 1: done\n"), "{text}");
    let summary = text
        .lines()
        .find(|l| l.starts_with("✓ succeeded · "))
        .unwrap_or_else(|| panic!("no summary in {text}"));
    assert!(
        summary.contains("s · $0.0050 · 5 turns"),
        "duration and cost in {summary:?}"
    );
    // No spinner or colour when stdout is not a terminal.
    assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");

    // The outputs came back; the inputs did not (they were not changed).
    assert_eq!(
        std::fs::read_to_string(out.join("gen/out.txt")).unwrap(),
        "hello"
    );
    assert!(!out.join("README.md").exists());
    assert!(text.contains("added    gen/out.txt → "), "{text}");

    // What the agent saw is exactly what was uploaded, modes included.
    let session = text
        .lines()
        .find_map(|l| l.strip_prefix("session "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let mut c = server.clients(KEY_A).await;
    assert_eq!(
        c.download(&session, "lib/big.bin").await.unwrap(),
        std::fs::read(src.join("lib/big.bin")).unwrap()
    );
    let files = c
        .files
        .list_files(pb::ListFilesRequest {
            session_id: session.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    let a = files.iter().find(|f| f.path == "lib/a.py").unwrap();
    assert_eq!(a.mode & 0o777, 0o755);
    let jobs = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            session_id: session.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let events = c.events(&jobs[0].job_id, 0).await;
    let results: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ToolResult(r)) => Some(r.content.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(results[1], "x = 1");
    assert_eq!(results[2].trim(), "700000");
}

#[tokio::test]
async fn run_json_prints_one_object_per_line_and_exits_1_when_the_job_fails() {
    let server = TestServer::start();
    let o = cli(&url(&server), KEY_A, &["run", "--json", "fail 500 boom"]);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines[0]["type"], "session");
    assert_eq!(lines[1]["type"], "job");
    let events: Vec<&Value> = lines.iter().filter(|l| l["type"] == "event").collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(events[0]["kind"], "started");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "text" && e["text"] == "API Error: 500 boom")
    );
    let fin = events.last().unwrap();
    assert_eq!(fin["kind"], "finished");
    assert_eq!(fin["state"], "failed");
    assert_eq!(fin["exit_status"]["code"], 1);
}

#[tokio::test]
async fn exit_codes_tell_usage_connection_and_not_found_apart() {
    let server = TestServer::start();
    let s = url(&server);

    let o = cli("http://127.0.0.1:1", KEY_A, &["agents"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach the server"),
        "{}",
        stderr(&o)
    );

    let o = cli(&s, "wrong-key-wrong-key", &["sessions", "ls"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(!stderr(&o).contains("wrong-key"), "the key is never echoed");

    let o = cli(&s, KEY_A, &["jobs", "get", "job_nope"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("JOB_NOT_FOUND"), "{}", stderr(&o));

    let o = cli(&s, KEY_A, &["sessions", "--json", "get", "ses_nope"]);
    assert_eq!(o.status.code(), Some(4));
    let err: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(err["reason"], "SESSION_NOT_FOUND");
    assert_eq!(err["exit_code"], 4);

    let o = cli(&s, KEY_A, &["run", "--no-such-flag", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli(&s, KEY_A, &["run", "--dir", "/definitely/not/here", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Rejected by the server as invalid: a usage error too, and the session made for it is gone.
    let o = cli(&s, KEY_A, &["run", "--agent", "nope", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("UNKNOWN_AGENT"), "{}", stderr(&o));
    let o = cli(&s, KEY_A, &["sessions", "--json", "ls"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(json_lines(&o).is_empty(), "{}", stdout(&o));
    // host:port, as grpcurl takes it, through AGENTD_URL and through --url.
    let o = cli(&server.addr, KEY_A, &["sessions", "ls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cli("", KEY_A, &["sessions", "ls", "--url", &server.addr]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let help = cli(&s, KEY_A, &["run", "--help"]);
    assert!(stdout(&help).contains("Exit codes:"), "{}", stdout(&help));
}

#[tokio::test]
async fn sessions_files_jobs_and_agents_subcommands() {
    let server = TestServer::start();
    let s = url(&server);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    project(&src);

    let o = cli(&s, KEY_A, &["agents"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("claude (default)  claude  yes"),
        "{}",
        stdout(&o)
    );

    let o = cli(
        &s,
        KEY_A,
        &[
            "sessions",
            "create",
            "--dir",
            src.to_str().unwrap(),
            "--label",
            "team=x",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let session = stdout(&o).lines().last().unwrap().to_owned();
    assert!(session.starts_with("ses_"), "{}", stdout(&o));

    let o = cli(
        &s,
        KEY_A,
        &["sessions", "--json", "ls", "--label", "team=x"],
    );
    let ls = json_lines(&o);
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["session_id"], session.as_str());
    assert_eq!(ls[0]["file_count"], 3);

    // files put (one file, renamed) / ls / get
    let note = tmp.path().join("note.txt");
    std::fs::write(&note, "remember").unwrap();
    let o = cli(
        &s,
        KEY_A,
        &[
            "files",
            "put",
            &session,
            note.to_str().unwrap(),
            "docs/n.txt",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cli(
        &s,
        KEY_A,
        &["files", "ls", "--json", &session, "docs", "--sha256"],
    );
    let files = json_lines(&o);
    let n = files.iter().find(|f| f["path"] == "docs/n.txt").unwrap();
    assert_eq!(n["size"], 8);
    assert_eq!(n["sha256"].as_str().unwrap().len(), 64);
    let dest = tmp.path().join("got.txt");
    let o = cli(
        &s,
        KEY_A,
        &[
            "files",
            "get",
            &session,
            "docs/n.txt",
            "-o",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "remember");
    let o = cli(
        &s,
        KEY_A,
        &["files", "get", &session, "lib/a.py", "-o", "-"],
    );
    assert_eq!(stdout(&o), "x = 1\n");
    let o = cli(
        &s,
        KEY_A,
        &["files", "get", &session, "missing.txt", "-o", "-"],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let o = cli(&s, KEY_A, &["files", "rm", &session, "docs", "-r"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // A job in the existing session, detached; then jobs get / ls / cancel / logs.
    let o = cli(
        &s,
        KEY_A,
        &["run", "--session", &session, "--detach", "sleep 30"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let job = stdout(&o).lines().last().unwrap().to_owned();
    assert!(job.starts_with("job_"), "{}", stdout(&o));
    let mut c = server.clients(KEY_A).await;
    let started = eventually(Duration::from_secs(10), || is_running(&server, &job)).await;
    assert!(started, "job never ran");
    let o = cli(&s, KEY_A, &["jobs", "ls", &session, "--state", "running"]);
    assert!(stdout(&o).contains(&job), "{}", stdout(&o));
    let o = cli(&s, KEY_A, &["jobs", "cancel", &job]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cli(&s, KEY_A, &["jobs", "logs", "-f", &job]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a cancelled job is exit 1: {}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("sleeping 30s"), "{}", stdout(&o));
    assert!(stdout(&o).contains("✗ cancelled"), "{}", stdout(&o));
    let j = c.get_job(&job).await;
    let o = cli(
        &s,
        KEY_A,
        &["jobs", "--json", "logs", &job, "--after-seq", "2"],
    );
    assert_eq!(o.status.code(), Some(0));
    let seqs: Vec<u64> = json_lines(&o)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (3..=j.last_seq).collect::<Vec<_>>());
    let o = cli(&s, KEY_A, &["jobs", "--json", "get", &job]);
    assert_eq!(json_lines(&o)[0]["state"], "cancelled");

    // Another tenant sees nothing; rm works once.
    let o = cli(&s, KEY_B, &["sessions", "get", &session]);
    assert_eq!(o.status.code(), Some(4));
    let o = cli(&s, KEY_A, &["sessions", "rm", &session]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cli(&s, KEY_A, &["sessions", "get", &session]);
    assert_eq!(o.status.code(), Some(4));
}

/// Whether the job is running, asked through the CLI itself.
fn is_running(server: &TestServer, job: &str) -> bool {
    let o = cli(&url(server), KEY_A, &["jobs", "--json", "get", job]);
    json_lines(&o)
        .first()
        .is_some_and(|j| j["state"] == "running" && j["last_seq"].as_u64() >= Some(3))
}

/// A TCP proxy whose connections can all be cut at once, to break a stream mid-flight.
struct Proxy {
    addr: String,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let (target, list, count) = (target.to_owned(), conns.clone(), accepted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut guard = list.lock().unwrap();
                guard.push(client.try_clone().unwrap());
                guard.push(upstream.try_clone().unwrap());
                drop(guard);
                pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pipe(upstream, client);
            }
        });
        Proxy {
            addr,
            conns,
            accepted,
        }
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[tokio::test]
async fn logs_follow_reattaches_after_the_connection_breaks() {
    let server = TestServer::start();
    let proxy = Proxy::start(&server.addr);
    let mut c = server.clients(KEY_A).await;
    let session = c.create_session(&[]).await;
    let job = c
        .submit(
            &session.session_id,
            "sleep 1.5 ; lines 3 ; sleep 1.5 ; lines 2",
        )
        .await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args(["jobs", "logs", "-f", "--json", &job.job_id])
        .env("AGENTD_URL", format!("http://{}", proxy.addr))
        .env("AGENTD_API_KEY", KEY_A)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![];
    // Cut every connection once the first text arrived, while the agent sleeps.
    for l in lines.by_ref() {
        let v: Value = serde_json::from_str(&l.unwrap()).unwrap();
        let is_text = v["kind"] == "text";
        seen.push(v);
        if is_text {
            break;
        }
    }
    proxy.cut();
    for l in lines {
        seen.push(serde_json::from_str(&l.unwrap()).unwrap());
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "the client reconnected after the cut"
    );
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate across the reattach"
    );
    assert_eq!(seen.last().unwrap()["state"], "succeeded");
    let texts: Vec<&str> = seen.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(
        texts,
        [
            "sleeping 1.5s",
            "line 1",
            "line 2",
            "line 3",
            "sleeping 1.5s",
            "line 1",
            "line 2",
            "turn 1: done"
        ]
    );
}

/// `agentd serve` refusing its configuration prints the one line that says what to fix and exits
/// with the usage code, also with backtraces asked for.
#[test]
fn a_configuration_mistake_is_one_line_and_exit_code_2() {
    let data = tempfile::tempdir().expect("data dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("AGENTD_API_KEYS", "acme:short")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("AGENTD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentd serve");
    // A server that accepted the configuration would serve forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("agentd serve accepted a 5-character API key");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().expect("output");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, no backtrace:\n{err}");
    assert!(
        err.contains("AGENTD_API_KEYS") && err.contains("at least 8 characters"),
        "{err}"
    );
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

#[tokio::test]
async fn files_archive_saves_the_workspace_in_the_format_its_name_asks_for() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c
        .create_session(&[("a.txt", b"alpha"), ("lib/b.txt", b"beta")])
        .await;
    let tmp = tempfile::tempdir().unwrap();
    for name in ["ws.tar.gz", "ws.tar", "ws.zip"] {
        let dest = tmp.path().join(name);
        let o = cli(
            &url(&server),
            KEY_A,
            &[
                "files",
                "archive",
                &s.session_id,
                "-o",
                dest.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let bytes = std::fs::read(&dest).unwrap();
        let mut names: Vec<String> = if name.ends_with(".zip") {
            let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
            (0..z.len())
                .map(|i| {
                    z.by_index(i)
                        .unwrap()
                        .name()
                        .unwrap()
                        .trim_end_matches('/')
                        .to_owned()
                })
                .collect()
        } else {
            let raw: Box<dyn Read> = if name.ends_with(".gz") {
                Box::new(flate2::read::GzDecoder::new(&bytes[..]))
            } else {
                Box::new(&bytes[..])
            };
            tar::Archive::new(raw)
                .entries()
                .unwrap()
                .map(|e| {
                    let p = e.unwrap().path().unwrap().to_string_lossy().into_owned();
                    p.trim_end_matches('/').to_owned()
                })
                .collect()
        };
        names.sort();
        assert_eq!(names, ["a.txt", "lib", "lib/b.txt"], "{name}");
        assert!(!tmp.path().join(format!(".{name}.agentd-part")).exists());
    }
    // Only the paths asked for; another tenant's session fails and leaves no file.
    let only = tmp.path().join("only.tar");
    let o = cli(
        &url(&server),
        KEY_A,
        &[
            "files",
            "archive",
            &s.session_id,
            "lib",
            "-o",
            only.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&only).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["lib/", "lib/b.txt"]);
    let o = cli(
        &url(&server),
        KEY_B,
        &[
            "files",
            "archive",
            &s.session_id,
            "-o",
            tmp.path().join("b.zip").to_str().unwrap(),
        ],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(!tmp.path().join("b.zip").exists());
}

/// A job that changed 30,000 files (an `npm install` changes as many) with long paths: its
/// outputs are more than the 4 MiB a gRPC client accepts in one message, so GetJobOutputs answers
/// them in pages (each within that size, in path order, none twice), a token is tied to its
/// listing, and `agentd run --out` follows the pages and downloads every file (in several
/// archive requests, each within what the server accepts), and its diff streams whole.
#[tokio::test]
async fn a_job_that_changed_thirty_thousand_files_is_listed_in_pages_and_downloaded_whole() {
    const FILES: usize = 30_000;
    let server = TestServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let make = format!("bash mkdir many && seq -f 'many/%0100g' 1 {FILES} | xargs touch");
    let o = cli(
        &url(&server),
        KEY_A,
        &["run", "--json", "--out", out.to_str().unwrap(), &make],
    );
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    let lines = json_lines(&o);
    let downloaded = lines
        .iter()
        .filter(|l| l["type"] == "output" && l["downloaded"] == true)
        .count();
    assert_eq!(downloaded, FILES);
    let on_disk = std::fs::read_dir(out.join("many")).unwrap().count();
    assert_eq!(on_disk, FILES);
    let session = lines
        .iter()
        .find_map(|l| l["session_id"].as_str())
        .unwrap()
        .to_owned();
    let job = lines
        .iter()
        .find_map(|l| l["job_id"].as_str())
        .unwrap()
        .to_owned();

    // The diff names every file. It copied both listings once per file before (minutes of CPU
    // for 60,000 files); the bound is forty times what it takes now, to end a hang, not to time.
    let diff = Command::new("timeout")
        .args(["120", env!("CARGO_BIN_EXE_agentd"), "diff", &job])
        .env("AGENTD_URL", url(&server))
        .env("AGENTD_API_KEY", KEY_A)
        .output()
        .unwrap();
    assert_eq!(diff.status.code(), Some(0), "{}", stderr(&diff));
    assert_eq!(
        stdout(&diff).matches("diff --git a/many/").count(),
        FILES,
        "{}",
        stderr(&diff)
    );

    let mut c = server.clients(KEY_A).await;
    let mut paths: Vec<String> = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: session.clone(),
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(
            prost::Message::encoded_len(&page) < 4 << 20,
            "page {pages} is over 4 MiB"
        );
        paths.extend(page.changes.into_iter().map(|c| c.path));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages > 3, "{pages} pages");
    let mut expected: Vec<String> = (1..=FILES).map(|i| format!("many/{i:0100}")).collect();
    expected.sort();
    assert_eq!(paths, expected);

    // A small page, then the next from its token.
    let first = c
        .files
        .get_job_outputs(pb::GetJobOutputsRequest {
            session_id: session.clone(),
            page_size: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<&str> = first.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(got, expected[..7]);
    let second = c
        .files
        .get_job_outputs(pb::GetJobOutputsRequest {
            session_id: session.clone(),
            page_size: 7,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.changes[0].path, expected[7]);

    // A token of ListFiles, a made-up token and a negative size are refused, precisely.
    let files_token = c
        .files
        .list_files(pb::ListFilesRequest {
            session_id: session.clone(),
            path: "many".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    for (size, token, want) in [
        (0, files_token.as_str(), "INVALID_PAGE_TOKEN"),
        (0, "not-a-token", "INVALID_PAGE_TOKEN"),
        (-1, "", "INVALID_FIELD"),
    ] {
        let err = c
            .files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: session.clone(),
                page_size: size,
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert_eq!(reason(&err), want, "{err:?}");
    }
}

/// Paths may be 4 KiB long: 2,200 files with paths of about 2.2 KB are more than 4 MiB, so a
/// ListFiles page of the maximum size is also cut at about 2 MiB and every page stays within
/// what a gRPC client accepts, in path order, none twice.
#[tokio::test]
async fn a_listing_of_long_paths_comes_in_pages_a_client_accepts() {
    const FILES: usize = 2_200;
    let server = TestServer::start();
    let make = format!(
        "bash d=$(printf 'a%.0s' $(seq 250)) && p=$d/$d/$d/$d/$d/$d/$d/$d && mkdir -p $p && \
         cd $p && seq -f '%0200g' 1 {FILES} | xargs touch"
    );
    let o = cli(&url(&server), KEY_A, &["run", "--json", &make]);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    let session = json_lines(&o)
        .iter()
        .find_map(|l| l["session_id"].as_str().map(str::to_owned))
        .unwrap();
    let mut c = server.clients(KEY_A).await;
    let (mut paths, mut token, mut pages) = (Vec::<String>::new(), String::new(), 0);
    loop {
        let page = c
            .files
            .list_files(pb::ListFilesRequest {
                session_id: session.clone(),
                page_size: 10_000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(prost::Message::encoded_len(&page) < 4 << 20, "page {pages}");
        paths.extend(page.files.into_iter().map(|f| f.path));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages >= 3, "{pages} pages");
    let files: Vec<&String> = paths.iter().filter(|p| p.len() > 2_000).collect();
    assert_eq!(
        files.len(),
        FILES + 1,
        "the files and the deepest directory"
    );
    let mut sorted = paths.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(paths, sorted, "path order, none twice");
}
