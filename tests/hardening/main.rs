//! Hardening under stress, crashes and hostile input, against the real binary: random stream
//! disconnects, repeated `kill -9`, a cancel storm, a consumer that reads nothing while its agent
//! floods, SIGTERM with a client still submitting, and a table of bad inputs for every RPC.
//! Each test is bounded in time; together they stay within a few minutes on two cores.

#[path = "../common/mod.rs"]
mod common;

pub(crate) mod bad_input;
pub(crate) mod crash;
pub(crate) mod reaper;
pub(crate) mod shutdown;
pub(crate) mod storm;
pub(crate) mod streams;

use agentd::pb;
use common::*;
use std::path::PathBuf;

/// xorshift64*: enough randomness for disconnect patterns, and the seed is printed so a failing
/// run can be replayed with `HARDENING_SEED`.
pub(crate) struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("HARDENING_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("{test}: HARDENING_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

pub(crate) fn finished(events: &[pb::JobEvent]) -> pb::JobFinished {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(pb::job_event::Kind::Finished(f)) => f,
        other => panic!("last event is not finished: {other:?}"),
    }
}

pub(crate) fn assert_gapless(events: &[pb::JobEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seq gap or duplicate at index {i}");
    }
}

pub(crate) fn stream_req(job: &str, after: u64) -> pb::StreamJobEventsRequest {
    pb::StreamJobEventsRequest {
        job_id: job.into(),
        after_seq: after,
    }
}

pub(crate) fn workspace(server: &TestServer, session: &str) -> PathBuf {
    server
        .data_dir
        .join("sessions")
        .join(session)
        .join("workspace")
}

#[allow(unused_imports)]
use {bad_input::*, crash::*, reaper::*, shutdown::*, storm::*, streams::*};
