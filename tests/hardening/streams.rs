//! Streams under stress: random reattaches on a live job, and a consumer that reads nothing while its agent floods.

use super::*;
use crate::common::*;
use agentd::pb;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 1. Streams: 1,000 random disconnect / reattach cycles on a live job.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_thousand_random_reattaches_on_a_live_job_lose_and_repeat_nothing() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    // 5,000 lines in bursts of 10 over several seconds, then the job waits for a `stop` file the
    // test drops into the workspace after the last cycle, then 100 more lines: every cycle
    // happens on a live job, however fast or slow this machine is.
    let mut directives = vec!["lines 10 ; sleep 0.02"; 500];
    directives.push("bash while [ ! -e stop ]; do sleep 0.05; done");
    directives.push("lines 100");
    let job = c.submit(&s.session_id, &directives.join(" ; ")).await;
    let mut rng = Rng::seeded("reattach");
    let mut seen: Vec<pb::JobEvent> = Vec::new();
    let t0 = Instant::now();
    for cycle in 0..1000 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "1,000 cycles took over 120 s"
        );
        if cycle % 100 == 99 {
            // Now and then a fresh connection, not only a fresh stream on the same one.
            c = server.clients(KEY_A).await;
        }
        let last = seen.last().map_or(0, |e| e.seq);
        let mut st = c
            .jobs
            .stream_job_events(stream_req(&job.job_id, last))
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: reattach after {last}: {e:?}"))
            .into_inner();
        // 0 = attach and drop at once; otherwise read a few messages (each may be a batch), and
        // give up after 10 ms without one, as an impatient client would (and so sometimes drop
        // a stream the server has already written to).
        let reads = rng.below(5);
        for _ in 0..reads {
            let Ok(msg) = tokio::time::timeout(Duration::from_millis(10), st.message()).await
            else {
                break;
            };
            let Some(msg) = msg.unwrap_or_else(|e| panic!("cycle {cycle}: {e:?}")) else {
                panic!("cycle {cycle}: the stream ended while the job was still waiting");
            };
            for e in msg.events {
                let want = seen.last().map_or(0, |e| e.seq) + 1;
                assert_eq!(e.seq, want, "cycle {cycle}: gap or duplicate");
                seen.push(e);
            }
        }
        drop(st);
    }
    let cycles_time = t0.elapsed();
    let during = seen.len();
    assert!(
        seen.iter().all(|e| kind(e) != "finished"),
        "the job ended before the cycles did"
    );
    std::fs::write(workspace(&server, &s.session_id).join("stop"), b"").unwrap();
    let last = seen.last().map_or(0, |e| e.seq);
    seen.extend(c.events(&job.job_id, last).await);
    assert_gapless(&seen);
    assert_eq!(finished(&seen).state, pb::JobState::Succeeded as i32);
    let lines: Vec<String> = texts(&seen)
        .into_iter()
        .filter(|t| t.starts_with("line "))
        .collect();
    let want: Vec<String> = (0..5000)
        .map(|i| format!("line {}", i % 10 + 1))
        .chain((1..=100).map(|i| format!("line {i}")))
        .collect();
    assert_eq!(lines, want, "every agent line arrived once, in order");
    assert_eq!(
        c.events(&job.job_id, 0).await,
        seen,
        "the reassembled stream equals a full replay"
    );
    assert_eq!(c.get_job(&job.job_id).await.last_seq, seen.len() as u64);
    eprintln!(
        "reattach: 1000 cycles on the live job in {cycles_time:?}, {during} events read during \
         the cycles, {} in all",
        seen.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A consumer that reads nothing while its agent writes ~1 GB.

/// Length of the flood agent's lines (`yes` of a 1,000-character line, cut by `head -c`).
pub(crate) const FLOOD_LINE: usize = 1000;

pub(crate) fn flood_line() -> String {
    "0123456789".repeat(FLOOD_LINE / 10)
}

/// 100 MB in the default run (the debug server stores ~5-10 k events/s on two shared cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn slow_consumer_of_100_mb_never_blocks_the_agent_and_memory_stays_bounded() {
    slow_consumer(100_000_000, Duration::from_secs(100)).await;
}

/// The full 1 GB of the issue takes ~3 minutes with a debug server: run by `scripts/soak`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes minutes; run by scripts/soak"]
pub(crate) async fn slow_consumer_of_1_gb_never_blocks_the_agent_and_memory_stays_bounded() {
    slow_consumer(1_000_000_000, Duration::from_secs(900)).await;
}

/// A consumer attached from the start reads nothing while the agent writes `flood_bytes`; the
/// job must finish within `deadline` with bounded server memory, then the consumer reads it all.
pub(crate) async fn slow_consumer(flood_bytes: u64, deadline: Duration) {
    let server = TestServer::start_with(Options {
        args: vec![
            "--job-output-max-bytes".into(),
            "2000000000".into(),
            "--job-output-max-events".into(),
            "5000000".into(),
        ],
        config: Some(format!(
            "[agents.flood]\nkind = \"command\"\ncommand = \"/bin/sh\"\n\
             args = [\"-c\", \"yes {} | head -c {flood_bytes}\", \"flood\"]\n",
            flood_line()
        )),
        ..Default::default()
    });
    let pid = server.pid();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c.submit_to(&s.session_id, "flood", "go").await;
    // The slow consumer: attached from the start, reads nothing until the job is over.
    let mut slow = Clients::new(server.channel().await, KEY_A);
    let mut stream = slow
        .jobs
        .stream_job_events(stream_req(&job.job_id, 0))
        .await
        .unwrap()
        .into_inner();

    let t0 = Instant::now();
    let mut peak_rss = 0;
    let mut progress = 0;
    let state = loop {
        let j = c.get_job(&job.job_id).await;
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS").unwrap_or(0));
        if j.end_time.is_some() {
            break j;
        }
        if t0.elapsed().as_secs() / 10 != progress {
            progress = t0.elapsed().as_secs() / 10;
            eprintln!(
                "slow consumer: {:?}: {} events stored, server VmRSS {} MiB",
                t0.elapsed(),
                j.last_seq,
                status_kib(pid, "VmRSS").unwrap_or(0) / 1024
            );
        }
        assert!(
            t0.elapsed() < deadline,
            "the flood job did not finish within {deadline:?}: the agent is blocked or the server \
             is slow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run_time = t0.elapsed();
    assert_eq!(state.state, pb::JobState::Succeeded as i32, "{state:?}");
    let hwm = status_kib(pid, "VmHWM").unwrap_or(0);
    eprintln!(
        "slow consumer: {flood_bytes} B job finished in {run_time:?}; server VmRSS peak {} MiB, \
         VmHWM {} MiB",
        peak_rss / 1024,
        hwm / 1024
    );
    assert!(
        hwm < 300 * 1024,
        "server memory grew to {} MiB with a stalled consumer",
        hwm / 1024
    );

    // Now the consumer reads everything: every line, in order, nothing lost.
    let line = flood_line();
    let (mut next_seq, mut text_bytes, mut lines, mut last_kind) = (1u64, 0u64, 0u64, "");
    let mut partial = None;
    while let Some(m) = stream.message().await.expect("stream message") {
        for e in m.events {
            assert_eq!(e.seq, next_seq, "gap or duplicate");
            next_seq += 1;
            last_kind = kind(&e);
            match &e.kind {
                Some(pb::job_event::Kind::Text(t)) => {
                    assert!(partial.is_none(), "text after the final partial line");
                    if t.text != line {
                        assert!(line.starts_with(&t.text), "corrupt line at seq {}", e.seq);
                        partial = Some(t.text.len());
                    }
                    text_bytes += t.text.len() as u64 + 1;
                    lines += 1;
                }
                Some(pb::job_event::Kind::Truncated(t)) => panic!("truncated: {t:?}"),
                _ => {}
            }
        }
    }
    assert_eq!(last_kind, "finished");
    // The last line has no newline, so it counted one byte too many.
    assert_eq!(
        text_bytes - 1,
        flood_bytes,
        "bytes of agent output received"
    );
    assert_eq!(lines, flood_bytes.div_ceil(FLOOD_LINE as u64 + 1));
    eprintln!(
        "slow consumer: read {lines} lines, {} events in {:?}",
        next_seq - 1,
        t0.elapsed() - run_time
    );
    let hwm = status_kib(pid, "VmHWM").unwrap_or(0);
    eprintln!("slow consumer: VmHWM after the catch-up {} MiB", hwm / 1024);
    assert!(hwm < 300 * 1024, "server memory {} MiB", hwm / 1024);
}

// ---------------------------------------------------------------------------------------------
// 3. A client stream of thousands of tiny messages, each in its own HTTP/2 DATA frame, sent
//    faster than the server writes them: h2 charges every small unread frame against a budget
//    and closes the whole connection when it runs out (ENHANCE_YOUR_CALM), so agentd's windows
//    must keep one stream's unread frames within it. Found as `agentd run --dir` of 5,000 small
//    files failing with a transport error.

/// Yields each message after one `Pending`, so that tonic's encoder (which gathers the messages
/// that are ready into one frame) sends every message in a DATA frame of its own.
struct OneFrameEach(std::collections::VecDeque<pb::UploadFilesRequest>, bool);

impl tokio_stream::Stream for OneFrameEach {
    type Item = pb::UploadFilesRequest;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if !std::mem::replace(&mut self.1, true) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.1 = false;
        std::task::Poll::Ready(self.0.pop_front())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn an_upload_of_many_tiny_files_in_tiny_frames_is_not_cut_off() {
    const FILES: usize = 10_000;
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let mut msgs = std::collections::VecDeque::new();
    for i in 0..FILES {
        msgs.push_back(pb::UploadFilesRequest {
            session_id: if i == 0 {
                s.session_id.clone()
            } else {
                String::new()
            },
            part: Some(pb::upload_files_request::Part::Header(
                pb::UploadFileHeader {
                    path: format!("d{}/f{i}", i % 50),
                    ..Default::default()
                },
            )),
        });
        msgs.push_back(pb::UploadFilesRequest {
            session_id: String::new(),
            part: Some(pb::upload_files_request::Part::Chunk(
                format!("{i}").into_bytes().into(),
            )),
        });
    }
    let uploaded = c
        .files
        .upload_files(OneFrameEach(msgs, false))
        .await
        .expect("upload of 10,000 tiny files")
        .into_inner();
    assert_eq!(uploaded.files.len(), FILES);
    let listed = c
        .files
        .list_files(pb::ListFilesRequest {
            session_id: s.session_id.clone(),
            path: "d7".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.files.len(), FILES / 50, "files of one directory");
}
