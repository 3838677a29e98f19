//! The scenarios of issue #8, each a function that starts what it needs (a fresh agentd, the bare
//! server) and returns its metrics.

mod archive;
mod control;
mod deltas;
mod files;
mod gateway;
pub mod genuine;
mod jobs;
mod replicas;
mod restart;
mod rss;
mod sandbox;
mod sdk;
mod snapshot;
mod stream;
mod watch;

use crate::harness::Env;
use crate::report::Metric;
use std::future::Future;
use std::pin::Pin;

type Run = for<'a> fn(&'a Env) -> Pin<Box<dyn Future<Output = anyhow::Result<Vec<Metric>>> + 'a>>;

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: Run,
}

macro_rules! scenario {
    ($name:literal, $f:path, $about:literal) => {
        Scenario {
            name: $name,
            about: $about,
            run: |env| Box::pin($f(env)),
        }
    };
}

pub const ALL: &[Scenario] = &[
    scenario!(
        "restart",
        restart::restart,
        "kill -9 agentd with N streaming jobs (1, 100): new process start → all adopted and streaming again vs a restart with none; events lost"
    ),
    scenario!(
        "latency",
        stream::latency,
        "agent line every 10 ms → RunJob subscriber, p50/p99, vs a bare tonic relay of the same child"
    ),
    scenario!(
        "throughput",
        stream::throughput,
        "events/s of one job flooding lines, vs the bare relay"
    ),
    scenario!(
        "startup",
        jobs::startup,
        "SubmitJob → agent running; RunJob → first agent event; vs tokio spawn + first line"
    ),
    scenario!(
        "job",
        jobs::whole_job,
        "whole RunJob until the stream ends vs running the agent directly, p50"
    ),
    scenario!(
        "sandbox",
        sandbox::sandbox,
        "SubmitJob → agent running with the jail, without it, and bwrap with an equivalent jail, p50/p99; leftovers"
    ),
    scenario!(
        "cancel",
        jobs::cancel,
        "CancelJob → no process of the job's tree left, p50/p99"
    ),
    scenario!(
        "files",
        files::transfer,
        "upload and download of 1 GiB with sha256 and peak RSS growth, vs a bare tonic chunk stream"
    ),
    scenario!(
        "archive",
        archive::archive,
        "DownloadArchive (tar) of a 20,000-file, 300 MB workspace vs DownloadFile of the same bytes in one file, same server, best of 3"
    ),
    scenario!(
        "fanout",
        stream::fanout,
        "1,000 subscribers on one job at 1k events/s: delivery latency p99"
    ),
    scenario!(
        "replay",
        stream::replay,
        "events/s replaying a finished 1 M-event job"
    ),
    scenario!(
        "rss",
        rss::rss,
        "idle RSS, and RSS per idle session with 10k sessions"
    ),
    scenario!(
        "sdk",
        sdk::sdk,
        "Python and TypeScript SDKs consuming a 200k-event job vs a bare one-event-per-message stream"
    ),
    scenario!(
        "gateway",
        gateway::gateway,
        "a streamed model call through the model gateway vs straight to the same mock upstream, interleaved: first byte and whole stream p50; RSS growth under 100 concurrent streams"
    ),
    scenario!(
        "genuine",
        genuine::genuine,
        "the genuine Claude Code CLI (--agents all: and the other three) against the scripted model server, through agentd vs spawned directly, interleaved"
    ),
    scenario!(
        "replicas",
        replicas::replicas,
        "jobs/s of 200 jobs over 50 sessions on 1, 2, 3 replicas on Postgres, vs one server on SQLite"
    ),
    scenario!(
        "watch",
        watch::watch,
        "1,000 jobs finishing while 100 WatchJobs streams follow the tenant, submitted at AGENTD_BENCH_WATCH_RATE jobs/s (default 40) and as fast as possible: change → watcher p50/p99; webhook delivery"
    ),
    scenario!(
        "deltas",
        deltas::deltas,
        "stream_deltas: a Claude stream-json agent's text events with a delta before each vs without (same run), and delta → subscriber p50"
    ),
    scenario!(
        "snapshot",
        snapshot::snapshot,
        "workspace history: snapshot of a 20,000-file, 300 MB tree after a job changed 10 files, vs git add -A && git commit of it; bytes stored vs bytes changed"
    ),
    scenario!(
        "control",
        control::control,
        "permission_request seen → RespondToPermission → the tool's result seen, p50/p99, vs the same stand-in Claude's stream-json control exchange driven directly"
    ),
];
