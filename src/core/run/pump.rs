//! The event pump: turns a running agent's output into numbered events, written in batches
//! through the event log while the next batch is read and parsed; applies the output caps and
//! keeps what the verdict needs (the agent's summary, the stderr tail, a jail limit that ended
//! the job, the gateway's metering).

use super::gateway::Metered;
use super::sink::{InFlight, Sink};
use crate::agents::OutputParser;
use crate::domain::{EventKind, JobEvent, JobState};
use crate::error::Result;
use crate::runner::Output;
use crate::runner::jail::Notice;
use crate::store::JobUpdate;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Output lines taken from the runner at a time.
const MAX_BATCH: usize = 512;
/// Events parsed ahead while a batch commits; beyond this the pump waits for the store.
const MAX_PARSED: usize = 4 * MAX_BATCH;
/// Delta text a job stores (`stream_deltas`); beyond it, deltas are dropped.
pub(super) const DELTA_MAX_BYTES: u64 = 1 << 20;
/// How the `truncated` event that ends a job's deltas begins (an adoption tells it apart from
/// the output caps' by it).
const DELTA_LIMIT: &str = "delta limit reached";

/// Whether `kind` is the marker that the job's delta budget ran out.
pub(super) fn is_delta_limit(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Truncated { reason } if reason.starts_with(DELTA_LIMIT))
}
/// Stderr lines kept to explain a failure when the agent gave no error of its own.
const STDERR_TAIL: usize = 5;

/// What the event pump waits for.
enum Next {
    /// This many outputs were received (0: the agent's output has ended).
    Batch(usize),
    /// The batch in flight was committed, or failed.
    Committed(Result<()>),
}

/// One running job's pump and what it learnt from the output.
pub(super) struct Pump {
    pub(super) parser: Box<dyn OutputParser>,
    /// The job's state while it runs, repeated in the row updates the pump makes.
    state: JobState,
    pub(super) stderr_tail: VecDeque<String>,
    cap: OutputCap,
    /// The agent's conversation id as last reported, and as last written to the job row.
    pub(super) conversation: Option<String>,
    recorded: Option<String>,
    /// A limit of the jail that ended the job, as its supervisor reported it.
    pub(super) limit_hit: Option<Notice>,
    /// The running total of the job's model calls through the gateway.
    pub(super) metered: Metered,
    /// Parsed events not yet handed to the event log.
    events: Vec<JobEvent>,
    /// The job's controller, which reads the agent's requests in its output (issue #17).
    pub(super) control: Option<Controlled>,
    /// Delta bytes taken so far; an adopted job starts from what its stored events hold.
    pub(super) delta_bytes: u64,
    /// Events made from output that a previous agentd stored already: an adopted job's journal
    /// replays them, and they are dropped here, after the caps saw them (issue #23).
    pub(super) skip: u64,
    /// The same for the jail's notices (journaled on their own channel, so counted apart).
    pub(super) skip_notices: u64,
    /// Adoption: the stored log ends with deltas, which were merged as they were stored and so
    /// cannot be counted against the journal; the replay drops deltas until its first complete
    /// event not stored yet. A preview lost in a restart is harmless; one stored twice is not.
    pub(super) drop_deltas: bool,
}

/// A controlled job's controller and the protocol its output is read with.
pub(super) struct Controlled {
    pub(super) handle: crate::core::control::ControlHandle,
    pub(super) protocol: std::sync::Arc<dyn crate::agents::interactive::Interactive>,
    /// Ends the controller with the run, on every path.
    pub(super) _task: AbortOnDrop,
}

/// Stops a task when its owner goes.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Pump {
    pub(super) fn new(
        parser: Box<dyn OutputParser>,
        state: JobState,
        conversation: Option<String>,
        caps: (u64, u64),
    ) -> Self {
        Self {
            parser,
            state,
            stderr_tail: VecDeque::with_capacity(STDERR_TAIL),
            cap: OutputCap::new(caps.0, caps.1),
            recorded: conversation.clone(),
            conversation,
            limit_hit: None,
            metered: Metered::default(),
            events: Vec::new(),
            control: None,
            delta_bytes: 0,
            skip: 0,
            skip_notices: 0,
            drop_deltas: false,
        }
    }

    /// Runs until the agent's output has ended and every event is committed. One batch commits
    /// while the next is read and parsed; that one is queued as soon as the commit ends, with
    /// everything that arrived meanwhile. Batches grow while the store is busy (fewer commits and
    /// reader wake-ups than one batch per arrival) and at most one is in flight, so seqs reach
    /// the event log in order.
    pub(super) async fn run(
        &mut self,
        sink: &mut Sink<'_>,
        rx: &mut mpsc::Receiver<Output>,
        mut in_flight: Option<InFlight>,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(MAX_BATCH);
        let mut ended = false;
        loop {
            if in_flight.is_none() {
                let update = self.row_update();
                in_flight = sink
                    .submit(std::mem::take(&mut self.events), update)
                    .await?;
            }
            let next = match &mut in_flight {
                // A commit that ends before more output arrives is settled right away, so its
                // outcome and timing are not held back by a quiet agent.
                Some(w) if !ended && self.events.len() < MAX_PARSED => tokio::select! {
                    biased;
                    written = &mut w.pending => Next::Committed(written),
                    n = rx.recv_many(&mut buf, MAX_BATCH) => Next::Batch(n),
                },
                // Output ended, or enough is parsed: wait for the store (backpressure).
                Some(w) => Next::Committed((&mut w.pending).await),
                None if ended => return Ok(()),
                None => Next::Batch(rx.recv_many(&mut buf, MAX_BATCH).await),
            };
            match next {
                Next::Committed(written) => {
                    if let Some(w) = in_flight.take() {
                        w.settle(written)?;
                    }
                }
                Next::Batch(0) => ended = true,
                Next::Batch(_) => {
                    for out in buf.drain(..) {
                        self.take(sink, out);
                    }
                }
            }
        }
    }

    /// The job row's update to go with the next batch: the conversation id as soon as the agent
    /// reports it (so a job interrupted by a crash still lets the session's next job resume it)
    /// and the metered usage.
    fn row_update(&mut self) -> Option<JobUpdate> {
        if self.conversation == self.recorded && !self.metered.dirty {
            return None;
        }
        self.recorded.clone_from(&self.conversation);
        self.metered.dirty = false;
        Some(JobUpdate {
            state: self.state.clone(),
            result: String::new(),
            usage: self.metered.total.clone(),
            conversation_id: self.conversation.clone(),
        })
    }

    /// An event made from an output line, unless it is one already stored ([`Pump::skip`]).
    fn output_event(&mut self, sink: &mut Sink<'_>, kind: EventKind, raw: Option<String>) {
        if self.skip > 0 {
            self.skip -= 1;
        } else {
            self.drop_deltas = false;
            self.events.push(sink.event(kind, raw));
        }
    }

    fn take(&mut self, sink: &mut Sink<'_>, out: Output) {
        match out {
            Output::Stdout(line) => {
                // The parser sees every line, kept or not, so the summary (conversation, result,
                // usage) stays right after truncation.
                if let Some(c) = &self.control {
                    c.handle.observe(c.protocol.as_ref(), &line.text);
                }
                let parsed = self.parser.parse_line(&line.text, line.truncated);
                for p in &parsed {
                    if let EventKind::Init {
                        conversation_id, ..
                    } = &p.kind
                        && !conversation_id.is_empty()
                    {
                        self.conversation = Some(conversation_id.clone());
                    }
                }
                if !parsed.is_empty() && parsed.iter().all(|p| p.kind.is_delta()) {
                    // Deltas among the events an adoption skips were stored already.
                    if self.skip == 0 && !self.drop_deltas {
                        self.take_deltas(sink, parsed);
                    }
                    return;
                }
                match self.cap.admit(line.text.len(), parsed.len()) {
                    Admit::Keep => {
                        for p in parsed {
                            self.output_event(sink, p.kind, p.raw);
                        }
                    }
                    Admit::Truncate(reason) => {
                        self.output_event(sink, EventKind::Truncated { reason }, None)
                    }
                    Admit::Drop => {}
                }
            }
            Output::Stderr(line) => {
                if self.stderr_tail.len() == STDERR_TAIL {
                    self.stderr_tail.pop_front();
                }
                self.stderr_tail.push_back(line.text.clone());
                let kind = match self.cap.admit(line.text.len(), 1) {
                    Admit::Keep => EventKind::Stderr {
                        line: line.text,
                        truncated: line.truncated,
                    },
                    Admit::Truncate(reason) => EventKind::Truncated { reason },
                    Admit::Drop => return,
                };
                self.output_event(sink, kind, None);
            }
            Output::Event(kind) => {
                // Few, and what the tenant is charged for or must know: never dropped by the caps.
                if let EventKind::ModelCall(call) = &kind {
                    self.metered.add(call);
                }
                self.events.push(sink.event(kind, None));
            }
            Output::Notice(notice) => {
                // Few and important: never dropped by the output caps.
                if notice.fatal {
                    self.limit_hit = Some(notice.clone());
                }
                if self.skip_notices > 0 {
                    // Stored by the previous agentd; it still decides the verdict above.
                    self.skip_notices -= 1;
                    return;
                }
                let kind = EventKind::LimitExceeded {
                    limit: notice.limit,
                    message: notice.message,
                };
                self.events.push(sink.event(kind, None));
            }
        }
    }
}

impl Pump {
    /// Streamed pieces (`stream_deltas`): bounded by their own budget, not the output caps, so
    /// that many small pieces can never crowd out the complete events that follow them. Kept
    /// without the raw line (the text is all there is), and merged into the previous piece
    /// while that one still waits for the store: merging then costs no latency.
    fn take_deltas(&mut self, sink: &mut Sink<'_>, parsed: Vec<crate::agents::Parsed>) {
        for p in parsed {
            let (EventKind::TextDelta { text } | EventKind::ThinkingDelta { text }) = &p.kind
            else {
                continue;
            };
            if self.delta_bytes >= DELTA_MAX_BYTES {
                continue;
            }
            self.delta_bytes += text.len() as u64;
            if self.delta_bytes >= DELTA_MAX_BYTES {
                let reason = format!(
                    "{DELTA_LIMIT} ({DELTA_MAX_BYTES} bytes); further deltas were dropped \
                     (complete text events are kept)"
                );
                self.events
                    .push(sink.event(EventKind::Truncated { reason }, None));
                continue;
            }
            if let Some(last) = self.events.last_mut() {
                match (&mut last.kind, &p.kind) {
                    (EventKind::TextDelta { text: a }, EventKind::TextDelta { text: b })
                    | (
                        EventKind::ThinkingDelta { text: a },
                        EventKind::ThinkingDelta { text: b },
                    ) => {
                        a.push_str(b);
                        super::sink::redact(a, &sink.secrets);
                        continue;
                    }
                    _ => {}
                }
            }
            self.events.push(sink.event(p.kind, None));
        }
    }
}

/// Per-job output limits: once either is reached, one `Truncated` event is stored and further
/// output is dropped (the agent keeps running and is never blocked).
struct OutputCap {
    max_bytes: u64,
    max_events: u64,
    bytes: u64,
    events: u64,
    tripped: bool,
}

enum Admit {
    Keep,
    Truncate(String),
    Drop,
}

impl OutputCap {
    fn new(max_bytes: u64, max_events: u64) -> Self {
        Self {
            max_bytes,
            max_events,
            bytes: 0,
            events: 0,
            tripped: false,
        }
    }

    /// Decides about one output line of `bytes` that produced `events` events.
    fn admit(&mut self, bytes: usize, events: usize) -> Admit {
        if self.tripped {
            return Admit::Drop;
        }
        let bytes = self.bytes + bytes as u64;
        let events = self.events + events as u64;
        if bytes > self.max_bytes || events > self.max_events {
            self.tripped = true;
            return Admit::Truncate(format!(
                "job output limit reached ({} bytes / {} events); further output was dropped",
                self.max_bytes, self.max_events
            ));
        }
        self.bytes = bytes;
        self.events = events;
        Admit::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_cap_truncates_once_then_drops() {
        let mut cap = OutputCap::new(10, 3);
        assert!(matches!(cap.admit(4, 1), Admit::Keep));
        assert!(matches!(cap.admit(6, 1), Admit::Keep));
        assert!(matches!(cap.admit(1, 1), Admit::Truncate(_)));
        assert!(matches!(cap.admit(0, 1), Admit::Drop));
        let mut by_events = OutputCap::new(1000, 2);
        assert!(matches!(by_events.admit(1, 2), Admit::Keep));
        assert!(matches!(by_events.admit(1, 1), Admit::Truncate(_)));
    }
}
