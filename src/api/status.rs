//! The one mapping from the core's [`Error`] to a gRPC `Status`: the code comes from the variant,
//! and every status carries `google.rpc.ErrorInfo` (reason + domain `agentd`), plus
//! `BadRequest` naming the field for INVALID_ARGUMENT and `RetryInfo` when waiting helps.

use crate::error::Error;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every agentd error.
pub const ERROR_DOMAIN: &str = "agentd";

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
