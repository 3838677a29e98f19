//! The one mapping from the core's [`Error`] to a gRPC `Status`: the code comes from the variant,
//! and every status carries `google.rpc.ErrorInfo` (reason + domain `agentd`), plus
//! `BadRequest` naming the field for INVALID_ARGUMENT and `RetryInfo` when waiting helps.

use crate::error::Error;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every agentd error.
pub const ERROR_DOMAIN: &str = "agentd";

/// tonic refuses a request over the server's size limit before any handler runs, with an
/// OUT_OF_RANGE status and no ErrorInfo (every status of agentd's carries one, so the missing
/// details, not the message text, tell them apart). It is the caller's mistake, and gRPC's code
/// for it is RESOURCE_EXHAUSTED: the trailers-only response's headers are rewritten into agentd's
/// own status for it, reason MESSAGE_TOO_LARGE.
pub fn reclassify_transport(headers: &mut http::HeaderMap) {
    let from_transport = headers
        .get("grpc-status")
        .is_some_and(|c| c.as_bytes() == b"11")
        && !headers.contains_key("grpc-status-details-bin");
    if !from_transport {
        return;
    }
    let status = to_status(Error::exhausted(
        crate::error::Reason::MessageTooLarge,
        "the request message is larger than this server accepts",
    ));
    headers.remove("grpc-message");
    if let Err(e) = status.add_header(headers) {
        tracing::warn!(error = %e, "cannot rewrite a transport status");
    }
}

/// Converts a core error into the status a client sees.
pub fn to_status(err: Error) -> Status {
    let reason = err.reason().as_str();
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new());
    let code = match &err {
        Error::InvalidArgument { field, message, .. } => {
            details.add_bad_request_violation(field.clone(), message.clone());
            Code::InvalidArgument
        }
        Error::NotFound { .. } => Code::NotFound,
        Error::FailedPrecondition { .. } => Code::FailedPrecondition,
        Error::ResourceExhausted { retry_after, .. } => {
            if retry_after.is_some() {
                details.set_retry_info(*retry_after);
            }
            Code::ResourceExhausted
        }
        Error::OutOfRange { .. } => Code::OutOfRange,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::Unauthenticated { .. } => Code::Unauthenticated,
        Error::Unavailable { retry_after, .. } => {
            if retry_after.is_some() {
                details.set_retry_info(*retry_after);
            }
            Code::Unavailable
        }
        Error::Internal { message } => {
            // The details stay in our log; the caller gets a stable, secret-free message.
            tracing::error!(error = %message, "internal error");
            return Status::with_error_details(Code::Internal, "internal server error", details);
        }
    };
    Status::with_error_details(code, err.to_string(), details)
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        to_status(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason;

    #[test]
    fn only_the_transports_out_of_range_becomes_message_too_large() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("anything at all"),
        );
        reclassify_transport(&mut h);
        assert_eq!(h["grpc-status"], "8");
        let status = Status::from_header_map(&h).expect("a status");
        assert_eq!(
            status.get_details_error_info().map(|i| i.reason),
            Some("MESSAGE_TOO_LARGE".to_owned())
        );
        // agentd's own OUT_OF_RANGE carries ErrorInfo and stays as it is.
        let ours = to_status(Error::out_of_range(Reason::CursorExpired, "old"));
        let mut h = http::HeaderMap::new();
        ours.add_header(&mut h).unwrap();
        reclassify_transport(&mut h);
        assert_eq!(h["grpc-status"], "11");
    }

    #[test]
    fn carries_reason_and_field() {
        let st = to_status(Error::invalid(
            Reason::InvalidPath,
            "path",
            "bad path \"../x\"",
        ));
        assert_eq!(st.code(), Code::InvalidArgument);
        let d = st.get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "INVALID_PATH");
        assert_eq!(d.bad_request().unwrap().field_violations[0].field, "path");
    }

    #[test]
    fn internal_hides_message() {
        let st = to_status(Error::internal("disk on fire at /secret/place"));
        assert_eq!(st.code(), Code::Internal);
        assert!(!st.message().contains("secret"));
    }
}
