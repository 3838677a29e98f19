//! The edge of `JobService/WatchJobs` and `JobService/WaitJob` (issue #19): requests into the
//! core's watch filter, the core's changes into `WatchJobsResponse`s.

use super::convert;
use crate::core::{JobView, WatchFilter, WatchItem, WatchedChange};
use crate::error::{Error, Reason};
use crate::pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// Most filter entries (agents, states, labels) a watch may name.
const MAX_FILTER_ENTRIES: usize = 64;

pub(super) fn filter(r: &pb::WatchJobsRequest) -> Result<WatchFilter, Status> {
    let too_many = [
        ("agents", r.agents.len()),
        ("states", r.states.len()),
        ("labels", r.labels.len()),
    ];
    if let Some((field, _)) = too_many.iter().find(|(_, n)| *n > MAX_FILTER_ENTRIES) {
        return Err(Error::invalid(
            Reason::InvalidField,
            *field,
            format!("{field}: at most {MAX_FILTER_ENTRIES} entries"),
        )
        .into());
    }
    if let Some(a) = r.agents.iter().find(|a| a.is_empty()) {
        return Err(Error::invalid(
            Reason::InvalidField,
            "agents",
            format!("agents: {a:?} is not an agent name"),
        )
        .into());
    }
    Ok(WatchFilter {
        session_id: r.session_id.clone(),
        labels: r.labels.clone().into_iter().collect(),
        agents: r.agents.clone(),
        states: r
            .states
            .iter()
            .map(|s| convert::state_name(*s))
            .collect::<Result<_, _>>()?,
        include_events: r.include_events,
    })
}

fn change(w: WatchedChange) -> pb::JobChange {
    let c = &w.change;
    let events = w.events.unwrap_or_default();
    pb::JobChange {
        cursor: c.seq,
        time: Some(convert::ts(c.time)),
        job: Some(convert::job(JobView {
            job: c.job.clone(),
            queue_position: None,
            rewound_past: false,
        })),
        events: events.events.into_iter().map(convert::event).collect(),
        events_after_seq: events.after_seq,
        events_truncated: events.truncated,
    }
}

/// The core's watch items as responses; every response carries the cursor read up to.
pub(super) fn responses(
    rx: tokio::sync::mpsc::Receiver<crate::error::Result<WatchItem>>,
) -> impl Stream<Item = Result<pb::WatchJobsResponse, Status>> {
    ReceiverStream::new(rx).map(|item| match item {
        Ok(WatchItem::Changes(cs)) => Ok(pb::WatchJobsResponse {
            cursor: cs.last().map_or(0, |c| c.change.seq),
            changes: cs.into_iter().map(change).collect(),
            keepalive: false,
        }),
        Ok(WatchItem::Keepalive { cursor }) => Ok(pb::WatchJobsResponse {
            changes: Vec::new(),
            keepalive: true,
            cursor,
        }),
        Err(e) => Err(e.into()),
    })
}
