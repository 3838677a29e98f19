//! Reads fields of agentd's messages by their proto NAME, from the raw bytes on the wire, using
//! the descriptor set compiled into the library (`pb::FILE_DESCRIPTOR_SET`).
//!
//! Why: the escape suite asserts on parts of the API that issue #15 adds (the `limit_exceeded`
//! event, `Job.reason`). Looked up by name at run time, they need no generated Rust field, so the
//! suite compiles before the proto changes, fails until they exist, and does not care which field
//! numbers they get.

use agentd::pb;
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// A protobuf value as it appears on the wire.
#[derive(Debug, Clone)]
pub enum Value {
    Varint(u64),
    Bytes(Vec<u8>),
    /// A fixed32 or fixed64 (skipped: no field read here has one).
    Fixed,
}

/// Splits a message into (field number, value), in wire order.
pub fn fields(mut b: &[u8]) -> Vec<(u32, Value)> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else { break };
        let (num, wt) = ((key >> 3) as u32, key & 7);
        let value = match wt {
            0 => varint(&mut b).map(Value::Varint),
            1 if b.len() >= 8 => {
                b = &b[8..];
                Some(Value::Fixed)
            }
            2 => varint(&mut b).and_then(|n| {
                let n = n as usize;
                (b.len() >= n).then(|| {
                    let (x, rest) = b.split_at(n);
                    b = rest;
                    Value::Bytes(x.to_vec())
                })
            }),
            5 if b.len() >= 4 => {
                b = &b[4..];
                Some(Value::Fixed)
            }
            _ => None,
        };
        match value {
            Some(v) => out.push((num, v)),
            None => break,
        }
    }
    out
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set")
}

/// The message `agentd.v1.<name>`.
fn message(name: &str) -> Option<DescriptorProto> {
    descriptors()
        .file
        .into_iter()
        .filter(|f| f.package() == "agentd.v1")
        .flat_map(|f| f.message_type)
        .find(|m| m.name() == name)
}

/// The field `name` of message `agentd.v1.<msg>`, if the proto has it.
pub fn field(msg: &str, name: &str) -> Option<FieldDescriptorProto> {
    message(msg)?.field.into_iter().find(|f| f.name() == name)
}

/// The name of value `n` of enum `.agentd.v1.<E>` (nested enums included).
fn enum_value_name(type_name: &str, n: i32) -> Option<String> {
    let short = type_name.rsplit('.').next()?;
    let files = descriptors().file;
    let top = files.iter().flat_map(|f| f.enum_type.iter());
    let nested = files
        .iter()
        .flat_map(|f| f.message_type.iter())
        .flat_map(|m| m.enum_type.iter());
    top.chain(nested)
        .find(|e| e.name() == short)?
        .value
        .iter()
        .find(|v| v.number() == n)
        .map(|v| v.name().to_owned())
}

/// A string or enum field (enum as its value's name) of an encoded `agentd.v1.<msg>`; `None`
/// when the proto has no such field, `Some("")` when it is unset.
pub fn text_field(msg: &str, name: &str, bytes: &[u8]) -> Option<String> {
    let f = field(msg, name)?;
    let last = fields(bytes)
        .into_iter()
        .rfind(|(n, _)| *n as i32 == f.number());
    Some(match (f.r#type(), last) {
        (Type::Enum, Some((_, Value::Varint(v)))) => {
            enum_value_name(f.type_name(), v as i32).unwrap_or_else(|| v.to_string())
        }
        (Type::Enum, _) => enum_value_name(f.type_name(), 0).unwrap_or_default(),
        (_, Some((_, Value::Bytes(b)))) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    })
}

/// The embedded messages in field `name` of an encoded `agentd.v1.<msg>` (every occurrence).
pub fn message_fields(msg: &str, name: &str, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let f = field(msg, name)?;
    Some(
        fields(bytes)
            .into_iter()
            .filter(|(n, _)| *n as i32 == f.number())
            .filter_map(|(_, v)| match v {
                Value::Bytes(b) => Some(b),
                _ => None,
            })
            .collect(),
    )
}

/// Passes messages through as bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

fn request<T: Message>(msg: &T, key: &str) -> tonic::Request<Vec<u8>> {
    let mut req = tonic::Request::new(msg.encode_to_vec());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii key"),
    );
    req
}

/// GetJob, answered as the encoded `agentd.v1.Job`.
pub async fn get_job(ch: Channel, key: &str, job: &str) -> Vec<u8> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.expect("channel ready");
    let resp = g
        .unary(
            request(&pb::GetJobRequest { job_id: job.into() }, key),
            http::uri::PathAndQuery::from_static("/agentd.v1.JobService/GetJob"),
            Raw,
        )
        .await
        .expect("GetJob")
        .into_inner();
    message_fields("GetJobResponse", "job", &resp)
        .and_then(|j| j.into_iter().next())
        .unwrap_or_default()
}

/// Every event of a job (after its end), each as the encoded `agentd.v1.JobEvent`.
pub async fn events(ch: Channel, key: &str, job: &str) -> Vec<Vec<u8>> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.expect("channel ready");
    let req = pb::StreamJobEventsRequest {
        job_id: job.into(),
        after_seq: 0,
    };
    let mut s = g
        .server_streaming(
            request(&req, key),
            http::uri::PathAndQuery::from_static("/agentd.v1.JobService/StreamJobEvents"),
            Raw,
        )
        .await
        .expect("StreamJobEvents")
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = s.message().await.expect("stream message") {
        out.extend(message_fields("StreamJobEventsResponse", "events", &msg).unwrap_or_default());
    }
    out
}

/// The `limit_exceeded` events of a job as (limit, message); `None` when the proto has no such
/// event yet.
pub fn limit_events(events: &[Vec<u8>]) -> Option<Vec<(String, String)>> {
    field("JobEvent", "limit_exceeded")?;
    field("LimitExceeded", "limit")?;
    let mut out = Vec::new();
    for e in events {
        for le in message_fields("JobEvent", "limit_exceeded", e)? {
            out.push((
                text_field("LimitExceeded", "limit", &le)?,
                text_field("LimitExceeded", "message", &le)?,
            ));
        }
    }
    Some(out)
}
