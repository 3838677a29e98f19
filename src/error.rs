//! The crate's one error type. Every fallible core operation returns [`Error`]; the API edge maps
//! it to a `tonic::Status` in exactly one place (`api::status`). Each error carries a stable
//! [`Reason`] that clients can switch on (it becomes `google.rpc.ErrorInfo.reason`), so message
//! wording can change without breaking anyone.
//!
//! Messages must never contain secrets: they are shown to callers and written to logs.

use std::time::Duration;

/// A stable, machine-readable cause. Rendered in SCREAMING_SNAKE_CASE as the ErrorInfo reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // INVALID_ARGUMENT
    MissingField,
    InvalidField,
    InvalidPath,
    ForbiddenEnv,
    UnknownAgent,
    UnsupportedOption,
    InvalidPageToken,
    ChecksumMismatch,
    SizeMismatch,
    // NOT_FOUND
    SessionNotFound,
    JobNotFound,
    FileNotFound,
    NoSucceededJob,
    // FAILED_PRECONDITION
    JobFinished,
    JobNotFinished,
    NotARegularFile,
    NotADirectory,
    DirectoryNotEmpty,
    SymlinkEscape,
    SessionBusy,
    // RESOURCE_EXHAUSTED
    TooManyFiles,
    SessionTooLarge,
    FileTooLarge,
    QueueFull,
    TooManyJobs,
    RateLimited,
    // OUT_OF_RANGE
    CursorExpired,
    OffsetOutOfRange,
    // UNAUTHENTICATED
    MissingCredentials,
    InvalidCredentials,
    // UNAVAILABLE
    ShuttingDown,
    SandboxUnavailable,
    // ALREADY_EXISTS
    RequestIdConflict,
    // INTERNAL
    Internal,
    // A job's final reason (not an RPC error): a model budget was spent.
    BudgetExceeded,
    // NOT_FOUND: an UploadFileChunk upload id that is not (or no longer) staged.
    UploadNotFound,
    // RESOURCE_EXHAUSTED: too many UploadFileChunk uploads staged at once by one tenant.
    TooManyUploads,
    // UNAVAILABLE: the store cannot be reached or cannot write now (retry later).
    StoreUnavailable,
    // INVALID_ARGUMENT: the request message is not valid protobuf for its method.
    MalformedRequest,
    // RESOURCE_EXHAUSTED: the request message is larger than the server accepts.
    MessageTooLarge,
    // INVALID_ARGUMENT: an uploaded archive is truncated, corrupt or not of its declared format.
    InvalidArchive,
    // RESOURCE_EXHAUSTED: an uploaded archive expands more than the configured ratio (a bomb).
    CompressionRatioTooHigh,
    // RESOURCE_EXHAUSTED: the host's inotify watches or instances are used up.
    WatchLimitReached,
    // NOT_FOUND: a job's snapshot is not (or no longer) in the workspace history.
    SnapshotNotFound,
    // NOT_FOUND: a webhook endpoint id the tenant does not have.
    WebhookNotFound,
    // INVALID_ARGUMENT: a webhook URL resolves to an address receivers may not have (SSRF guard).
    WebhookUrlRefused,
    // INVALID_ARGUMENT: a job's webhook_url outside the operator's allowed prefixes.
    WebhookUrlNotAllowed,
    // NOT_FOUND: a permission request id the job never made (issue #17).
    PermissionRequestNotFound,
    // FAILED_PRECONDITION: the permission request was already answered, by a rule or timed out.
    PermissionDecided,
    // FAILED_PRECONDITION: the job cannot be controlled (not `ask`, not running here yet).
    JobNotControllable,
    // A job's final reason (not an RPC error): InterruptJob ended its turn.
    Interrupted,
    // RESOURCE_EXHAUSTED: one Attach stream follows as many unfinished jobs as it may.
    AttachLimit,
    // A job's final reason (not an RPC error): agentd restarted while a permission request of
    // the job was pending.
    PermissionPendingAtRestart,
    // A job's final reason (not an RPC error): its answer did not satisfy its output_schema,
    // even after the corrective turn.
    OutputSchema,
    // A job's final reason (not an RPC error): its supervisor outlived agentd (issue #23) but no
    // agentd adopted it within the adopt timeout, so it ended the job's tree itself.
    AdoptionTimeout,
    // INVALID_ARGUMENT (presets, #20): no preset of that name for the caller; a job sets a field
    // its preset does not list as overridable; a template variable without a value, or a value
    // the template does not use; a catalog name the operator did not configure.
    UnknownPreset,
    PresetOverrideDenied,
    MissingVariable,
    UnknownVariable,
    UnknownMcpServer,
    UnknownSubagent,
    UnknownSkill,
    // NOT_FOUND / ALREADY_EXISTS / FAILED_PRECONDITION of PresetService.
    PresetNotFound,
    PresetExists,
    PresetReadOnly,
    // RESOURCE_EXHAUSTED: a tenant keeps too many presets.
    TooManyPresets,
}

impl Reason {
    /// The stable wire form of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingField => "MISSING_FIELD",
            Reason::InvalidField => "INVALID_FIELD",
            Reason::InvalidPath => "INVALID_PATH",
            Reason::ForbiddenEnv => "FORBIDDEN_ENV",
            Reason::UnknownAgent => "UNKNOWN_AGENT",
            Reason::UnsupportedOption => "UNSUPPORTED_OPTION",
            Reason::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Reason::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Reason::SizeMismatch => "SIZE_MISMATCH",
            Reason::SessionNotFound => "SESSION_NOT_FOUND",
            Reason::JobNotFound => "JOB_NOT_FOUND",
            Reason::FileNotFound => "FILE_NOT_FOUND",
            Reason::NoSucceededJob => "NO_SUCCEEDED_JOB",
            Reason::JobFinished => "JOB_FINISHED",
            Reason::JobNotFinished => "JOB_NOT_FINISHED",
            Reason::NotARegularFile => "NOT_A_REGULAR_FILE",
            Reason::NotADirectory => "NOT_A_DIRECTORY",
            Reason::DirectoryNotEmpty => "DIRECTORY_NOT_EMPTY",
            Reason::SymlinkEscape => "SYMLINK_ESCAPE",
            Reason::SessionBusy => "SESSION_BUSY",
            Reason::TooManyFiles => "TOO_MANY_FILES",
            Reason::SessionTooLarge => "SESSION_TOO_LARGE",
            Reason::FileTooLarge => "FILE_TOO_LARGE",
            Reason::QueueFull => "QUEUE_FULL",
            Reason::TooManyJobs => "TOO_MANY_JOBS",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::CursorExpired => "CURSOR_EXPIRED",
            Reason::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            Reason::MissingCredentials => "MISSING_CREDENTIALS",
            Reason::InvalidCredentials => "INVALID_CREDENTIALS",
            Reason::ShuttingDown => "SHUTTING_DOWN",
            Reason::SandboxUnavailable => "SANDBOX_UNAVAILABLE",
            Reason::RequestIdConflict => "REQUEST_ID_CONFLICT",
            Reason::Internal => "INTERNAL",
            Reason::BudgetExceeded => "BUDGET_EXCEEDED",
            Reason::UploadNotFound => "UPLOAD_NOT_FOUND",
            Reason::TooManyUploads => "TOO_MANY_UPLOADS",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
            Reason::MalformedRequest => "MALFORMED_REQUEST",
            Reason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Reason::InvalidArchive => "INVALID_ARCHIVE",
            Reason::CompressionRatioTooHigh => "COMPRESSION_RATIO_TOO_HIGH",
            Reason::WatchLimitReached => "WATCH_LIMIT_REACHED",
            Reason::SnapshotNotFound => "SNAPSHOT_NOT_FOUND",
            Reason::WebhookNotFound => "WEBHOOK_NOT_FOUND",
            Reason::WebhookUrlRefused => "WEBHOOK_URL_REFUSED",
            Reason::WebhookUrlNotAllowed => "WEBHOOK_URL_NOT_ALLOWED",
            Reason::PermissionRequestNotFound => "PERMISSION_REQUEST_NOT_FOUND",
            Reason::PermissionDecided => "PERMISSION_DECIDED",
            Reason::JobNotControllable => "JOB_NOT_CONTROLLABLE",
            Reason::Interrupted => "INTERRUPTED",
            Reason::AttachLimit => "ATTACH_LIMIT",
            Reason::PermissionPendingAtRestart => "PERMISSION_PENDING_AT_RESTART",
            Reason::OutputSchema => "OUTPUT_SCHEMA",
            Reason::AdoptionTimeout => "ADOPTION_TIMEOUT",
            Reason::UnknownPreset => "UNKNOWN_PRESET",
            Reason::PresetOverrideDenied => "PRESET_OVERRIDE_DENIED",
            Reason::MissingVariable => "MISSING_VARIABLE",
            Reason::UnknownVariable => "UNKNOWN_VARIABLE",
            Reason::UnknownMcpServer => "UNKNOWN_MCP_SERVER",
            Reason::UnknownSubagent => "UNKNOWN_SUBAGENT",
            Reason::UnknownSkill => "UNKNOWN_SKILL",
            Reason::PresetNotFound => "PRESET_NOT_FOUND",
            Reason::PresetExists => "PRESET_EXISTS",
            Reason::PresetReadOnly => "PRESET_READ_ONLY",
            Reason::TooManyPresets => "TOO_MANY_PRESETS",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every way a core operation can fail. The variant decides the gRPC code; the reason refines it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; `field` names the offending request field (or path).
    #[error("{message}")]
    InvalidArgument {
        reason: Reason,
        field: String,
        message: String,
    },
    /// The thing named does not exist for this caller (also used for other tenants' ids).
    #[error("{message}")]
    NotFound { reason: Reason, message: String },
    /// The thing exists but is in a state that does not allow the operation.
    #[error("{message}")]
    FailedPrecondition { reason: Reason, message: String },
    /// A limit was hit. `retry_after` is set when waiting helps.
    #[error("{message}")]
    ResourceExhausted {
        reason: Reason,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A cursor or offset outside what exists.
    #[error("{message}")]
    OutOfRange { reason: Reason, message: String },
    /// A request id was reused with different parameters.
    #[error("{message}")]
    AlreadyExists { reason: Reason, message: String },
    /// Missing or wrong credentials.
    #[error("{message}")]
    Unauthenticated { reason: Reason, message: String },
    /// The server cannot take the work now (shutting down, the store unreachable). `retry_after`
    /// is set when the same call is expected to work after a wait.
    #[error("{message}")]
    Unavailable {
        reason: Reason,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A bug or an environment failure (disk, database). The message is safe to show.
    #[error("{message}")]
    Internal { message: String },
}

/// What a caller is told to wait after a store outage: a restarting database or a broken
/// connection's replacement is typically back within a second or two.
pub const STORE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The crate-wide result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(reason: Reason, message: impl Into<String>) -> Self {
        Error::NotFound {
            reason,
            message: message.into(),
        }
    }

    pub fn precondition(reason: Reason, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    pub fn exhausted(reason: Reason, message: impl Into<String>) -> Self {
        Error::ResourceExhausted {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn out_of_range(reason: Reason, message: impl Into<String>) -> Self {
        Error::OutOfRange {
            reason,
            message: message.into(),
        }
    }

    pub fn unavailable(reason: Reason, message: impl Into<String>) -> Self {
        Error::Unavailable {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The store failed for a reason outside the request (connection lost or refused, database
    /// shutting down, disk full or read-only): the caller should retry after a wait. The message
    /// is logged, never shown: it may name hosts and files.
    pub fn store_unavailable(message: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %message, "store unavailable");
        Error::Unavailable {
            reason: Reason::StoreUnavailable,
            message: "the store is unavailable; retry later".into(),
            retry_after: Some(STORE_RETRY_AFTER),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
        }
    }

    /// The stable reason code of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument { reason, .. }
            | Error::NotFound { reason, .. }
            | Error::FailedPrecondition { reason, .. }
            | Error::ResourceExhausted { reason, .. }
            | Error::OutOfRange { reason, .. }
            | Error::AlreadyExists { reason, .. }
            | Error::Unauthenticated { reason, .. }
            | Error::Unavailable { reason, .. } => *reason,
            Error::Internal { .. } => Reason::Internal,
        }
    }

    pub fn session_not_found(id: &str) -> Self {
        Error::not_found(Reason::SessionNotFound, format!("session {id:?} not found"))
    }

    pub fn job_not_found(id: &str) -> Self {
        Error::not_found(Reason::JobNotFound, format!("job {id:?} not found"))
    }
}

impl From<std::io::Error> for Error {
    /// I/O failures that reach here unclassified are the server's problem, not the caller's.
    fn from(e: std::io::Error) -> Self {
        Error::internal(format!("i/o error: {e}"))
    }
}
