//! Store signals over LISTEN/NOTIFY. Writers send a NOTIFY in the same transaction as the write
//! (so it is delivered only if the write committed); one listener task per store holds its own
//! connection, turns notifications into [`StoreSignal`]s and broadcasts them. When that
//! connection breaks it reconnects with backoff and then sends [`StoreSignal::Resync`], since
//! whatever was committed meanwhile was not heard.
//!
//! Payloads carry ids only (and a cancel's short reason): readers fetch the data from the store.

use super::migrate::quote_ident;
use crate::domain::JobId;
use crate::store::StoreSignal;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// Payload of "jobs were queued, released or finished".
pub(super) const JOBS_CHANGED: &str = "j";

/// Payload of "some tenant's change sequence grew".
pub(super) const JOB_CHANGES: &str = "w";

/// Payload of "events of `job` up to `seq` are committed".
pub(super) fn events_payload(job: &str, seq: u64) -> String {
    format!("e {job} {seq}")
}

/// The SQL expression building a cancel payload from the job id `$1` and the kept reason (see
/// `parse`); the reason is cut short because NOTIFY payloads must stay under 8000 bytes.
pub(super) const CANCEL_PAYLOAD_SQL: &str = "'c ' || $1 || ' ' || left(u.cancel_reason, 200)";

/// The SQL expression building a control message's payload from the job id `$1`.
pub(super) const CONTROL_PAYLOAD_SQL: &str = "'k ' || $1";

/// Reads a payload written by this module. Anything else (another version's format) is a Resync:
/// the reader looks at everything, which is always correct.
pub(super) fn parse(payload: &str) -> StoreSignal {
    let mut parts = payload.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("j"), None, None) => StoreSignal::JobsChanged,
        (Some("w"), None, None) => StoreSignal::JobChanges,
        (Some("e"), Some(job), Some(seq)) => match seq.parse() {
            Ok(seq) => StoreSignal::Events {
                job: JobId::from_trusted(job.to_owned()),
                seq,
            },
            Err(_) => StoreSignal::Resync,
        },
        (Some("k"), Some(job), None) => StoreSignal::Control {
            job: JobId::from_trusted(job.to_owned()),
        },
        (Some("c"), Some(job), reason) => StoreSignal::CancelRequested {
            job: JobId::from_trusted(job.to_owned()),
            reason: reason.unwrap_or_default().to_owned(),
        },
        _ => StoreSignal::Resync,
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Listens on `channel` until `stop`, reconnecting whenever the connection ends.
pub(super) async fn run(
    config: tokio_postgres::Config,
    channel: String,
    tx: broadcast::Sender<StoreSignal>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let heard = tokio::select! {
            r = listen_once(&config, &channel, &tx) => r,
            () = stop.cancelled() => return,
        };
        match heard {
            // It was up: start the backoff again.
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => tracing::warn!(error = %e, "store signal listener: cannot listen"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: connect, LISTEN, Resync, then forward notifications until it ends.
/// `Ok` when the connection was established and later closed.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    tx: &broadcast::Sender<StoreSignal>,
) -> Result<(), String> {
    let (client, mut conn) = config.connect(NoTls).await.map_err(|e| super::msg(&e))?;
    // The connection only makes progress while polled: drive it beside the LISTEN request.
    let sql = format!("LISTEN {}", quote_ident(channel));
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(|e| super::msg(&e))?;
                listening = true;
                // Anything committed before this point was not heard.
                let _ = tx.send(StoreSignal::Resync);
            }
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(parse(n.payload()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %super::msg(&e), "store signal listener: connection lost");
                    return if listening { Ok(()) } else { Err(super::msg(&e)) };
                }
                None => {
                    tracing::warn!("store signal listener: connection closed");
                    return if listening { Ok(()) } else { Err("connection closed".into()) };
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(parse(JOBS_CHANGED), StoreSignal::JobsChanged);
        assert_eq!(
            parse(&events_payload("job_1", 42)),
            StoreSignal::Events {
                job: JobId::from_trusted("job_1".into()),
                seq: 42
            }
        );
        assert_eq!(
            parse("c job_2 cancelled by request"),
            StoreSignal::CancelRequested {
                job: JobId::from_trusted("job_2".into()),
                reason: "cancelled by request".into()
            }
        );
        assert_eq!(
            parse("k job_3"),
            StoreSignal::Control {
                job: JobId::from_trusted("job_3".into())
            }
        );
        for junk in [
            "",
            "x",
            "e job",
            "e job notanumber",
            "j extra",
            "k",
            "k job extra",
        ] {
            assert_eq!(parse(junk), StoreSignal::Resync, "{junk:?}");
        }
    }
}
