//! W3C Trace Context (`traceparent`): parsed from incoming metadata, recorded on the RPC and job
//! spans, and handed to the agent as the `TRACEPARENT` environment variable so its own telemetry
//! joins the caller's trace.

/// Environment variable the agent receives the trace context in (the OpenTelemetry convention).
pub const ENV: &str = "TRACEPARENT";
/// Metadata key of the incoming trace context.
pub const HEADER: &str = "traceparent";

/// A validated `traceparent` value (version 00 layout: `00-<trace id>-<parent id>-<flags>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// Parses a header value; anything malformed is ignored (as the spec asks), giving `None`.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.trim();
        // Later versions may append fields; the first 55 characters keep the 00 layout.
        let head = v.get(..55)?;
        if v.len() > 55 && (head.starts_with("00") || v.as_bytes()[55] != b'-') {
            return None;
        }
        let mut parts = head.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        let ok = hex(version, 2)
            && version != "ff"
            && hex(trace, 32)
            && !zero(trace)
            && hex(parent, 16)
            && !zero(parent)
            && hex(flags, 2);
        ok.then(|| TraceParent(head.to_owned()))
    }

    /// From gRPC metadata, when present and valid.
    pub fn from_metadata(md: &tonic::metadata::MetadataMap) -> Option<TraceParent> {
        md.get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The caller's span id (16 hex digits).
    pub fn parent_id(&self) -> &str {
        &self.0[36..52]
    }

    /// Records the trace on `span` (`trace_id` field, which the span must declare) and, with OTLP
    /// export, makes the span a child of the caller's span.
    pub fn adopt(&self, span: &tracing::Span) {
        span.record("trace_id", self.trace_id());
        #[cfg(feature = "otlp")]
        super::otlp::set_remote_parent(span, self.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_malformed() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(v).unwrap();
        assert_eq!(tp.as_str(), v);
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id(), "00f067aa0ba902b7");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A future version with an extra field keeps its 00-layout prefix.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc";
        assert_eq!(TraceParent::parse(future).unwrap().as_str(), &future[..55]);
    }
}
