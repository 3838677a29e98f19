//! Workspace history with the genuine Claude Code CLI (issue #18): the CLI edits, adds, deletes
//! and renames files over three jobs through its own Bash tool, driven by the scripted model
//! server `tests/fixtures/mock-model` (see tests/agents_e2e.rs). Each job's GetJobDiff is what
//! `git diff --no-index` says of the same two trees, built beside the test by the same commands;
//! a rewind to before job 2 restores job 1's bytes and the next job continues job 1's
//! conversation (the model server's recorded request holds job 1's prompt and not job 2's); a
//! fork from job 2 diverges while its parent is untouched.

mod common;

use agentd::pb;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const JOB_TIMEOUT_SECONDS: u32 = 180;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

use common::mock_model::{MockModel as Mock, claude_profile};

/// What the scripted model server saw of the CLI's conversations.
trait Conversations {
    fn conversations_of(&self, prompt: &str) -> Vec<Vec<String>>;
}

impl Conversations for Mock {
    /// The user prompts of every conversation the CLI sent for `prompt` with tools offered
    /// (the job's own turns, not its side requests for titles).
    fn conversations_of(&self, prompt: &str) -> Vec<Vec<String>> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r["prompt"] == prompt && r["tools"].as_array().is_some_and(|t| !t.is_empty())
            })
            .map(|r| {
                r["user_prompts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

const START: &[(&str, &[u8])] = &[
    ("edit.txt", b"one\ntwo\nthree\n"),
    ("gone.txt", b"bye\n"),
    ("old.txt", b"rename me, unchanged\n"),
    ("run.sh", b"#!/bin/sh\necho hi\n"),
];

/// What each job has the CLI run: edits, additions, deletions, a rename, a mode change, a link.
const SCRIPTS: [&str; 3] = [
    "printf 'one\\nTWO\\nthree\\n' > edit.txt && printf 'added\\n' > added.txt && rm gone.txt",
    "mv old.txt renamed.txt && printf 'four\\n' >> edit.txt && chmod 755 run.sh",
    "rm added.txt && ln -s edit.txt link && printf 'third\\n' > third.txt",
];

fn write_tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (p, c) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    sh(dir, "chmod 644 *");
}

/// `git diff --no-index -M` of `before` and `after` under `root`, normalised to workspace paths
/// and without the `index` lines (abbreviated blob ids agentd does not print).
async fn job_diff(c: &mut Clients, job: &str) -> String {
    let mut s = c
        .files
        .get_job_diff(pb::GetJobDiffRequest {
            job_id: job.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        assert!(!m.truncated);
        out.extend_from_slice(&m.chunk);
    }
    String::from_utf8(out).unwrap()
}

/// Every file of a directory tree: content, or `-> target` for a symlink.
fn dir_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", t.display()).into_bytes());
            } else if meta.is_dir() {
                todo.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

struct World {
    c: Clients,
    mock: Mock,
    _server: TestServer,
    _dir: tempfile::TempDir,
}

impl World {
    async fn run(&mut self, session: &str, prompt: &str) -> pb::Job {
        let job = self
            .c
            .submit_request(pb::SubmitJobRequest {
                session_id: session.into(),
                agent: "claude".into(),
                prompt: prompt.into(),
                timeout_seconds: JOB_TIMEOUT_SECONDS,
                ..Default::default()
            })
            .await;
        let job = self.c.wait(&job.job_id).await;
        assert_eq!(
            job.state,
            pb::JobState::Succeeded as i32,
            "{prompt}: {} {}\nmock requests:\n{}",
            job.error_message,
            job.result,
            std::fs::read_to_string(&self.mock.log).unwrap_or_default()
        );
        job
    }

    /// The user prompts of the conversation the CLI sent for `prompt`'s first turn.
    fn sent_with(&self, prompt: &str) -> Vec<String> {
        self.mock
            .conversations_of(prompt)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("the model server never saw {prompt:?}"))
    }
}

#[tokio::test]
async fn history3_genuine_claude_diffs_match_git_and_rewind_and_fork_continue_the_right_turns() {
    let cli = root().join(".cache/agents/node_modules/.bin/claude");
    assert!(
        cli.exists(),
        "{} is missing: run scripts/install-agents first",
        cli.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let server = TestServer::start_with(Options {
        config: Some(claude_profile(&cli, &mock.base)),
        ..Default::default()
    });
    let c = server.clients(KEY_A).await;
    let mut w = World {
        c,
        mock,
        _server: server,
        _dir: dir,
    };
    tokio::time::timeout(Duration::from_secs(600), scenario(&mut w))
        .await
        .expect("the scenario took longer than 10 minutes");
}

async fn rewind(c: &mut Clients, session: &str, job: &str, point: pb::SnapshotPoint) {
    c.sessions
        .rewind_session(pb::RewindSessionRequest {
            session_id: session.into(),
            job_id: job.into(),
            point: point as i32,
        })
        .await
        .unwrap();
}

async fn fork(c: &mut Clients, job: &str, point: pb::SnapshotPoint) -> String {
    c.sessions
        .fork_session(pb::ForkSessionRequest {
            job_id: job.into(),
            point: point as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .session_id
}

async fn scenario(w: &mut World) {
    let sid = w.c.create_session(START).await.session_id;
    // t0 is the tree before job 1, tN the tree after job N: built by the same commands.
    let refs = tempfile::tempdir().unwrap();
    let tree = |i: usize| refs.path().join(format!("t{i}"));
    write_tree(&tree(0), START);
    for (i, script) in SCRIPTS.iter().enumerate() {
        sh(refs.path(), &format!("cp -a t{i} t{}", i + 1));
        sh(&tree(i + 1), script);
    }
    let prompts: Vec<String> = SCRIPTS.iter().map(|s| format!("bash {s}")).collect();
    let mut jobs = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let job = w.run(&sid, prompt).await;
        let cmp = tempfile::tempdir().unwrap();
        sh(
            cmp.path(),
            &format!(
                "cp -a {} before && cp -a {} after",
                tree(i).display(),
                tree(i + 1).display()
            ),
        );
        let ours = job_diff(&mut w.c, &job.job_id).await;
        assert!(!ours.is_empty(), "job {} changed nothing", i + 1);
        assert_eq!(ours, git_diff(cmp.path()), "job {}'s diff", i + 1);
        jobs.push(job);
    }
    assert_eq!(w.c.workspace_archive(&sid).await, dir_tree(&tree(3)));
    // Each Claude job ends with its own conversation (resumed with --fork-session).
    assert_ne!(jobs[0].conversation_id, jobs[1].conversation_id);
    assert_ne!(jobs[1].conversation_id, jobs[2].conversation_id);

    // Back to before job 2: job 1's bytes, and job 1's conversation continues.
    rewind(&mut w.c, &sid, &jobs[1].job_id, pb::SnapshotPoint::Before).await;
    assert_eq!(w.c.workspace_archive(&sid).await, dir_tree(&tree(1)));
    let p4 = "bash printf 'after the rewind\\n' > four.txt";
    w.run(&sid, p4).await;
    let sent = w.sent_with(p4);
    assert!(
        sent.contains(&prompts[0]),
        "job 1's turn is missing: {sent:#?}"
    );
    for later in &prompts[1..] {
        assert!(!sent.contains(later), "a rewound turn was sent: {sent:#?}");
    }
    let mut want = dir_tree(&tree(1));
    want.insert("four.txt".into(), b"after the rewind\n".to_vec());
    assert_eq!(w.c.workspace_archive(&sid).await, want);

    // A fork from after job 2 (rewound past, its snapshot kept): job 2's tree and conversation.
    let child = fork(&mut w.c, &jobs[1].job_id, pb::SnapshotPoint::After).await;
    assert_eq!(w.c.workspace_archive(&child).await, dir_tree(&tree(2)));
    let p5 = "bash printf 'forked\\n' > edit.txt";
    w.run(&child, p5).await;
    let sent = w.sent_with(p5);
    assert!(
        sent.contains(&prompts[0]) && sent.contains(&prompts[1]),
        "{sent:#?}"
    );
    assert!(
        !sent.contains(&prompts[2]) && !sent.iter().any(|p| p == p4),
        "{sent:#?}"
    );
    let mut forked = dir_tree(&tree(2));
    forked.insert("edit.txt".into(), b"forked\n".to_vec());
    assert_eq!(w.c.workspace_archive(&child).await, forked);
    // The parent is untouched by its fork.
    assert_eq!(w.c.workspace_archive(&sid).await, want);
}
