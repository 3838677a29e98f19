//! Workspace history over the real server (issue #18): a job's exact outputs and its unified diff
//! come from the snapshots taken before and after it, and the diff is what git says of the same
//! two trees.

mod common;

use agentd::pb;
use common::*;
use std::path::Path;
use std::process::Command;
use tonic::Code;

async fn diff_text(c: &mut Clients, job: &str, paths: &[&str], max: u64) -> (String, bool) {
    let mut s = c
        .files
        .get_job_diff(pb::GetJobDiffRequest {
            job_id: job.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            context_lines: None,
            max_bytes: max,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut out, mut cut) = (Vec::new(), false);
    while let Some(m) = s.message().await.unwrap() {
        out.extend_from_slice(&m.chunk);
        cut |= m.truncated;
    }
    (String::from_utf8(out).unwrap(), cut)
}

fn write_tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (p, c) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
}

const START: &[(&str, &[u8])] = &[
    ("a.txt", b"one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\n"),
    ("gone.txt", b"bye\n"),
    ("old/name.txt", b"moved without change\n"),
    ("bin.dat", b"\x00\x01\x02binary"),
    ("run.sh", b"#!/bin/sh\necho hi\n"),
];

/// What the job does, in the workspace and (for the reference) in a plain copy.
const SCRIPT: &str = "printf 'one\\nTWO\\nthree\\nfour\\nfive\\nsix\\nseven\\neight\\nnine\\n' > a.txt \
    && rm gone.txt && mkdir -p new && mv old/name.txt new/name.txt && rmdir old && printf 'added\\n' > added.txt \
    && printf '\\000\\377other' > bin.dat && chmod 755 run.sh && ln -s a.txt link";

#[tokio::test]
async fn a_jobs_outputs_and_diff_are_exact_and_match_git() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(START).await;
    let job = c.submit(&s.session_id, &format!("bash {SCRIPT}")).await;
    let job = c.wait(&job.job_id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{}", job.result);

    let outputs = c
        .files
        .get_job_outputs(pb::GetJobOutputsRequest {
            session_id: s.session_id.clone(),
            job_id: job.job_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(String, i32, String)> = outputs
        .changes
        .iter()
        .map(|c| (c.path.clone(), c.kind, c.from_path.clone()))
        .collect();
    use pb::ChangeKind as K;
    let want = |p: &str, k: K, f: &str| (p.to_string(), k as i32, f.to_string());
    assert_eq!(
        got,
        vec![
            want("a.txt", K::Modified, ""),
            want("added.txt", K::Added, ""),
            want("bin.dat", K::Modified, ""),
            want("gone.txt", K::Deleted, ""),
            want("link", K::Added, ""),
            want("new/name.txt", K::Renamed, "old/name.txt"),
            want("run.sh", K::Modified, ""),
        ]
    );
    let run = outputs.changes.iter().find(|c| c.path == "run.sh").unwrap();
    assert_eq!(
        (
            run.before.as_ref().unwrap().mode,
            run.file.as_ref().unwrap().mode
        ),
        (0o644, 0o755)
    );
    let link = outputs.changes.iter().find(|c| c.path == "link").unwrap();
    assert_eq!(link.file.as_ref().unwrap().symlink_target, "a.txt");

    // The same two trees, materialized beside each other, diffed by git.
    let root = tempfile::tempdir().unwrap();
    let (before, after) = (root.path().join("before"), root.path().join("after"));
    write_tree(&before, START);
    write_tree(&after, START);
    sh(&before, "chmod 644 run.sh");
    sh(&after, &format!("chmod 644 run.sh && {SCRIPT}"));
    let (ours, cut) = diff_text(&mut c, &job.job_id, &[], 0).await;
    assert!(!cut);
    assert!(
        ours.contains("Binary files a/bin.dat and b/bin.dat differ"),
        "{ours}"
    );
    assert_eq!(ours, git_diff(root.path()));

    // Applied to the before tree, our diff gives the after tree.
    let patch = root.path().join("job.patch");
    // git cannot apply a binary change without its full index line: that file is copied instead.
    let text: String = ours
        .split("diff --git ")
        .filter(|sec| !sec.is_empty() && !sec.contains("Binary files"))
        .map(|sec| format!("diff --git {sec}"))
        .collect();
    std::fs::write(&patch, text).unwrap();
    let applied = root.path().join("applied");
    write_tree(&applied, START);
    sh(
        &applied,
        &format!(
            "chmod 644 run.sh && git apply {} && cp ../after/bin.dat bin.dat",
            patch.display()
        ),
    );
    let st = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&applied)
        .arg(&after)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "applying the diff did not give the job's tree"
    );

    // Paths select; a small cap cuts with the marker.
    let (only, _) = diff_text(&mut c, &job.job_id, &["new"], 0).await;
    assert!(
        only.starts_with("diff --git a/old/name.txt b/new/name.txt\n"),
        "{only}"
    );
    assert_eq!(only.matches("diff --git").count(), 1);
    let (small, cut) = diff_text(&mut c, &job.job_id, &[], 200).await;
    assert!(
        cut && small.ends_with("# agentd: diff truncated at the byte cap\n"),
        "{small}"
    );
    assert!(small.len() < 300);
}

#[tokio::test]
async fn diff_bad_input_has_stable_reasons() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[("a", b"1")]).await;
    let job = c.submit(&s.session_id, "bash echo 2 > a").await;
    c.wait(&job.job_id).await;
    let cases: Vec<(pb::GetJobDiffRequest, Code, &str)> = vec![
        (
            pb::GetJobDiffRequest {
                job_id: "job_nope".into(),
                ..Default::default()
            },
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            pb::GetJobDiffRequest {
                job_id: "".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            pb::GetJobDiffRequest {
                job_id: job.job_id.clone(),
                paths: vec!["../etc".into()],
                ..Default::default()
            },
            Code::InvalidArgument,
            "INVALID_PATH",
        ),
        (
            pb::GetJobDiffRequest {
                job_id: job.job_id.clone(),
                paths: vec!["/abs".into()],
                ..Default::default()
            },
            Code::InvalidArgument,
            "INVALID_PATH",
        ),
    ];
    for (req, code, why) in cases {
        let e = c
            .files
            .get_job_diff(req.clone())
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{req:?}");
    }
    // A job still running has no diff yet.
    let running = c.submit(&s.session_id, "bash sleep 30").await;
    let e = c
        .files
        .get_job_diff(pb::GetJobDiffRequest {
            job_id: running.job_id.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "JOB_NOT_FINISHED")
    );
}

#[tokio::test]
async fn history_survives_a_restart_and_deleting_the_session_frees_it() {
    let mut server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let big = vec![b'x'; 300_000];
    let s = c.create_session(&[("big", &big), ("small", b"1\n")]).await;
    let job = c.submit(&s.session_id, "bash echo 2 > small").await;
    c.wait(&job.job_id).await;
    server.restart();
    let mut c = server.clients(KEY_A).await;
    let (text, _) = diff_text(&mut c, &job.job_id, &[], 0).await;
    assert_eq!(
        text,
        "diff --git a/small b/small\n--- a/small\n+++ b/small\n@@ -1 +1 @@\n-1\n+2\n"
    );
    let objects = server.data_dir.join("sessions/.history/objects");
    let stored = dir_bytes(&objects);
    assert!(stored >= 300_000, "the big file is stored once: {stored}");
    assert!(stored < 600_000, "…and only once: {stored}");
    c.sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap();
    // Objects written within the collector's grace period stay; the snapshot rows are gone.
    let e = c
        .files
        .get_job_diff(pb::GetJobDiffRequest {
            job_id: job.job_id.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// The job's changes as (path, kind) pairs.
async fn outputs(c: &mut Clients, session: &str, job: &str) -> Vec<(String, i32)> {
    c.files
        .get_job_outputs(pb::GetJobOutputsRequest {
            session_id: session.into(),
            job_id: job.into(),
            ..Default::default()
        })
        .await
        .expect("outputs")
        .into_inner()
        .changes
        .into_iter()
        .map(|ch| (ch.path, ch.kind))
        .collect()
}

/// A jailed agent runs as ids of its own (agentd as root: unprivileged host ids). What agentd
/// wrote into the workspace, a session's files and a rewind's restore, is handed to them by the
/// job's before-snapshot walk: the agent can change it, and the host sees it owned like what the
/// agent made. A job that changes nothing has no outputs, its two snapshots being one listing.
#[tokio::test]
async fn a_jailed_agent_changes_what_agentd_wrote_and_owns_it() {
    use std::os::unix::fs::MetadataExt;
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[("d/e/up.txt", b"up\n")]).await;
    let ws = server
        .data_dir
        .join("sessions")
        .join(&s.session_id)
        .join("workspace");
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(ws.join(p)).expect("stat");
        (m.uid(), m.gid())
    };
    let append = "bash echo more >> d/e/up.txt && mkdir d/e/made && echo new > d/e/made/new.txt";
    let first = c.submit(&s.session_id, append).await;
    let done = c.wait(&first.job_id).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    assert_eq!(
        c.download(&s.session_id, "d/e/up.txt").await.unwrap(),
        b"up\nmore\n"
    );
    let agent = owner("d/e/made/new.txt");
    for p in ["", "d", "d/e", "d/e/up.txt"] {
        assert_eq!(owner(p), agent, "{p:?} is the agent's");
    }

    c.sessions
        .rewind_session(pb::RewindSessionRequest {
            session_id: s.session_id.clone(),
            job_id: first.job_id.clone(),
            point: pb::SnapshotPoint::Before as i32,
        })
        .await
        .expect("rewind");
    let again = c.submit(&s.session_id, append).await;
    let done = c.wait(&again.job_id).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "after a rewind: {done:?}"
    );
    assert_eq!(
        c.download(&s.session_id, "d/e/up.txt").await.unwrap(),
        b"up\nmore\n"
    );
    assert_eq!(owner("d/e/up.txt"), agent);

    let idle = c.submit(&s.session_id, "bash true").await;
    c.wait(&idle.job_id).await;
    assert_eq!(outputs(&mut c, &s.session_id, &idle.job_id).await, vec![]);
    let edit = c.submit(&s.session_id, "bash echo x >> d/e/up.txt").await;
    c.wait(&edit.job_id).await;
    assert_eq!(
        outputs(&mut c, &s.session_id, &edit.job_id).await,
        vec![("d/e/up.txt".to_owned(), pb::ChangeKind::Modified as i32)]
    );
}
