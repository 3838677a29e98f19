//! `agentd.v1.StreamJobEventsResponse`, written by hand so that an event can be encoded once for
//! all the readers of a job.
//!
//! With many readers on one job (1,000 in the fan-out benchmark), cloning, converting and
//! encoding the same event again for every reader was most of the server's work per delivery.
//! The server now fills [`StreamJobEventsResponse::encoded`] with the events' encodings, made once
//! per event and shared (see `events::SharedEvent`); on the wire they are exactly the repeated
//! `events` field, so clients, which decode into `events`, cannot tell the difference. The rest is
//! what prost would generate (`build.rs` maps the message here with `extern_path`; `pb`
//! re-exports it under its usual name).

use crate::pb;
use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, bool as pbool, encode_key, encode_varint, encoded_len_varint, key_len,
    message, skip_field,
};

/// Response for JobService.StreamJobEvents.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct StreamJobEventsResponse {
    /// One or more consecutive events: one when the client keeps up, a batch when it lags.
    pub events: Vec<pb::JobEvent>,
    /// True on a keepalive message sent on a quiet stream; such a message carries no events.
    pub keepalive: bool,
    /// Events already encoded as `JobEvent` messages, sent after `events` as more of that same
    /// field (so a batch puts all its events in one of the two). Server side only: decoding
    /// fills `events`.
    pub encoded: Vec<Bytes>,
}

const EVENTS: u32 = 1;
const KEEPALIVE: u32 = 2;

impl prost::Message for StreamJobEventsResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        message::encode_repeated(EVENTS, &self.events, buf);
        for e in &self.encoded {
            encode_key(EVENTS, WireType::LengthDelimited, buf);
            encode_varint(e.len() as u64, buf);
            buf.put_slice(e);
        }
        if self.keepalive {
            pbool::encode(KEEPALIVE, &self.keepalive, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            EVENTS => {
                message::merge_repeated(wire_type, &mut self.events, buf, ctx).map_err(|mut e| {
                    e.push("StreamJobEventsResponse", "events");
                    e
                })
            }
            KEEPALIVE => pbool::merge(wire_type, &mut self.keepalive, buf, ctx).map_err(|mut e| {
                e.push("StreamJobEventsResponse", "keepalive");
                e
            }),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(EVENTS, &self.events)
            + self
                .encoded
                .iter()
                .map(|e| key_len(EVENTS) + encoded_len_varint(e.len() as u64) + e.len())
                .sum::<usize>()
            + if self.keepalive {
                pbool::encoded_len(KEEPALIVE, &self.keepalive)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        self.events.clear();
        self.keepalive = false;
        self.encoded.clear();
    }
}

/// The encoding of one event, as [`StreamJobEventsResponse::encoded`] takes it.
pub fn encode_event(event: &pb::JobEvent) -> Bytes {
    Bytes::from(prost::Message::encode_to_vec(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn event(seq: u64, text: &str) -> pb::JobEvent {
        pb::JobEvent {
            seq,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            raw: format!("{{\"n\":{seq}}}"),
            kind: Some(pb::job_event::Kind::Text(pb::TextEvent {
                text: text.to_owned(),
            })),
        }
    }

    /// Pre-encoded events are the same bytes as decoded ones, and decode back to them.
    #[test]
    fn encoded_events_are_indistinguishable_on_the_wire() {
        let events = vec![event(1, "one"), event(2, "twö"), event(3, "")];
        let plain = StreamJobEventsResponse {
            events: events.clone(),
            keepalive: false,
            encoded: vec![],
        };
        let pre = StreamJobEventsResponse {
            events: vec![],
            keepalive: false,
            encoded: events.iter().map(encode_event).collect(),
        };
        assert_eq!(plain.encode_to_vec(), pre.encode_to_vec());
        assert_eq!(pre.encoded_len(), pre.encode_to_vec().len());
        let back = StreamJobEventsResponse::decode(&pre.encode_to_vec()[..]).unwrap();
        assert_eq!(back.events, events);
        assert!(back.encoded.is_empty());

        // Keepalives, and an unknown field from a newer server, which is skipped.
        let ka = StreamJobEventsResponse {
            keepalive: true,
            ..Default::default()
        };
        let mut bytes = ka.encode_to_vec();
        assert_eq!(bytes, [0x10, 0x01]);
        bytes.extend_from_slice(&[0x18, 0x07]);
        let back = StreamJobEventsResponse::decode(&bytes[..]).unwrap();
        assert!(back.keepalive && back.events.is_empty());
    }
}
