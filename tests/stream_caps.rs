//! Every stream that carries a job's events keeps each message under what clients accept: a
//! batch of large events (tool results) is cut into messages of about 1 MiB, so a client with
//! tonic's default 4 MiB decode limit (the generated Python and TypeScript SDKs have the same
//! default) reads every event once, in order, whether it replays a finished job or follows a
//! running one, over StreamJobEvents or RunJob.

mod common;

use agentd::pb;
use common::*;
use prost::Message;

/// About how many bytes of events the server puts in one message (`events::MESSAGE_BYTES`).
const MESSAGE_BYTES: usize = 1 << 20;
/// tonic's default decode limit for a client.
const CLIENT_LIMIT: usize = 4 << 20;

/// Five tool results of 300,000 bytes each: a few events, together more than a client accepts
/// in one message.
fn prompt() -> String {
    ["bash printf '%0300000d' 0"; 5].join(" ; ")
}

/// Events and the size of each message carrying them, read until the job's `finished` event.
async fn read_all<S: Message + Default + 'static>(
    mut s: tonic::Streaming<S>,
    events: impl Fn(&S) -> &[pb::JobEvent],
) -> Read {
    let mut out = Read::default();
    while let Some(msg) = s
        .message()
        .await
        .expect("every message within the client's limit")
    {
        let evs = events(&msg);
        if evs.is_empty() {
            continue;
        }
        out.messages.push((evs.len(), msg.encoded_len()));
        out.events.extend_from_slice(evs);
        if out
            .events
            .last()
            .is_some_and(|e| matches!(e.kind, Some(pb::job_event::Kind::Finished(_))))
        {
            break;
        }
    }
    out
}

#[derive(Default)]
struct Read {
    events: Vec<pb::JobEvent>,
    /// (events, encoded bytes) of each message.
    messages: Vec<(usize, usize)>,
}

impl Read {
    /// Every event of `log` once, in order, in messages of at most the cap (or of one event).
    fn check(&self, log: &[pb::JobEvent], what: &str) {
        let seqs: Vec<u64> = self.events.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = log.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, want, "{what}: each event once, in order");
        assert_eq!(self.events, log, "{what}: the same events");
        for &(n, bytes) in &self.messages {
            assert!(
                n == 1 || bytes <= MESSAGE_BYTES,
                "{what}: a message of {n} events has {bytes} bytes: {:?}",
                self.messages
            );
        }
    }
}

async fn stream(c: &mut Clients, job: &str) -> tonic::Streaming<pb::StreamJobEventsResponse> {
    c.jobs
        .stream_job_events(pb::StreamJobEventsRequest {
            job_id: job.into(),
            after_seq: 0,
        })
        .await
        .expect("stream")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_events_are_streamed_in_messages_a_default_client_accepts() {
    let server = TestServer::start();
    // The reference reader accepts anything; the others keep tonic's default limit.
    let mut big = server.clients(KEY_A).await;
    big.jobs = big.jobs.max_decoding_message_size(usize::MAX);
    let mut live = server.clients(KEY_A).await;
    let mut late = server.clients(KEY_A).await;
    let session = big.create_session(&[]).await;

    let job = big.submit(&session.session_id, &prompt()).await.job_id;
    // Follows the job while it runs (its events come from the in-memory window, or the store
    // while it catches up).
    let following = stream(&mut live, &job).await;
    let live_read = tokio::spawn(async move {
        read_all(following, |m: &pb::StreamJobEventsResponse| &m.events).await
    });
    let log = read_all(stream(&mut big, &job).await, |m| &m.events)
        .await
        .events;
    let total: usize = log.iter().map(Message::encoded_len).sum();
    assert!(
        total > CLIENT_LIMIT && log.len() < 50,
        "the test needs a few events larger together than a client's limit: {} events, \
         {total} bytes",
        log.len()
    );
    live_read.await.expect("live reader").check(&log, "live");
    // Replays the finished job (from the store).
    read_all(stream(&mut late, &job).await, |m| &m.events)
        .await
        .check(&log, "replay");

    // RunJob streams the same way; its first message names the job.
    let mut run = late
        .jobs
        .run_job(pb::RunJobRequest {
            job: Some(pb::SubmitJobRequest {
                session_id: session.session_id.clone(),
                prompt: prompt(),
                ..Default::default()
            }),
        })
        .await
        .expect("run job")
        .into_inner();
    let first = run.message().await.expect("first message").expect("a job");
    let job = first.job.expect("the first message carries the job").job_id;
    let ran = read_all(run, |m: &pb::RunJobResponse| &m.events).await;
    let log = read_all(stream(&mut big, &job).await, |m| &m.events)
        .await
        .events;
    ran.check(&log, "RunJob");
}
