//! The connection to a server (target URL, API key on every call) and the client's error type,
//! which decides the exit code of every failure.

use super::exit;
use crate::pb;
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The ErrorInfo domain the server puts on every error it answers with.
const SERVER_DOMAIN: &str = "agentd";

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Auth(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Svc = InterceptedService<Channel, Auth>;

/// A lazily connected channel plus credentials. Tonic reconnects the channel by itself after a
/// broken connection, which is what lets `logs -f` reattach.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    auth: Auth,
}

impl Conn {
    pub fn new(server: &str, api_key: Option<&str>) -> Result<Conn, CliError> {
        let server = server_url(server)?;
        let endpoint = Endpoint::from_shared(server.clone())
            .map_err(|e| CliError::Usage(format!("--server {server:?} is not a valid URL: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        let auth = match api_key.filter(|k| !k.is_empty()) {
            None => Auth(None),
            // The key itself never goes into the message.
            Some(k) => Auth(Some(format!("Bearer {k}").try_into().map_err(|_| {
                CliError::Usage(
                    "--api-key / AGENTD_API_KEY contains characters not allowed in a header".into(),
                )
            })?)),
        };
        Ok(Conn {
            channel: endpoint.connect_lazy(),
            auth,
        })
    }

    pub fn sessions(&self) -> pb::session_service_client::SessionServiceClient<Svc> {
        pb::session_service_client::SessionServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn jobs(&self) -> pb::job_service_client::JobServiceClient<Svc> {
        pb::job_service_client::JobServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn files(&self) -> pb::file_service_client::FileServiceClient<Svc> {
        pb::file_service_client::FileServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn usage(&self) -> pb::usage_service_client::UsageServiceClient<Svc> {
        pb::usage_service_client::UsageServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn webhooks(&self) -> pb::webhook_service_client::WebhookServiceClient<Svc> {
        pb::webhook_service_client::WebhookServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn presets(&self) -> pb::preset_service_client::PresetServiceClient<Svc> {
        pb::preset_service_client::PresetServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    pub fn info(&self) -> pb::server_info_service_client::ServerInfoServiceClient<Svc> {
        pb::server_info_service_client::ServerInfoServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }
}

/// The URL to dial for `--server`: an `http://` URL as given, or `host:port` as every gRPC tool
/// takes it (grpcurl, grpc_health_probe), meaning `http://host:port` since the client speaks h2c
/// only.
fn server_url(server: &str) -> Result<String, CliError> {
    let lower = server.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "--server {server:?}: this build of the client speaks plaintext h2c only; use an http:// URL or host:port"
        )));
    }
    if lower.starts_with("http://") {
        return Ok(server.to_owned());
    }
    let expected = || {
        CliError::Usage(format!(
            "--server {server:?}: expected host:port or a URL like http://127.0.0.1:50051"
        ))
    };
    if server.contains("://") {
        return Err(expected());
    }
    let url = format!("http://{server}");
    // A bare host would silently mean port 80; `host:port` must name its port.
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.port().is_some() && uri.path() == "/" => Ok(url),
        _ => Err(expected()),
    }
}

/// Everything a client subcommand can fail with. [`CliError::exit_code`] is the documented exit
/// code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad local arguments (a missing directory, a bad URL, …).
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error, or the transport failed. `what` says which call.
    #[error("{what}: {}", describe(.status))]
    Rpc { what: String, status: Status },
    /// A local file could not be read or written.
    #[error("{0}")]
    Local(String),
    /// The user pressed Ctrl-C twice.
    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    pub fn rpc(what: impl Into<String>) -> impl FnOnce(Status) -> CliError {
        let what = what.into();
        move |status| CliError::Rpc { what, status }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Local(_) => exit::OTHER,
            CliError::Interrupted => exit::INTERRUPTED,
            CliError::Rpc { status, .. } => status_exit_code(status),
        }
    }

    /// The error as one JSON object, for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let (code, reason) = match self {
            CliError::Rpc { status, .. } => (
                format!("{:?}", status.code()),
                server_reason(status).unwrap_or_default(),
            ),
            _ => (String::new(), String::new()),
        };
        serde_json::json!({
            "type": "error",
            "exit_code": self.exit_code(),
            "grpc_code": code,
            "reason": reason,
            "message": self.to_string(),
        })
    }
}

/// The server's stable reason code, when the status came from an agentd server.
pub fn server_reason(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .filter(|i| i.domain == SERVER_DOMAIN)
        .map(|i| i.reason.clone())
}

/// Whether retrying the same call later may succeed: the server is unreachable, going away, or
/// the connection broke. A status carrying the server's ErrorInfo is an answer, not a transport
/// failure (except UNAVAILABLE, which the server sends while shutting down).
pub fn is_transport(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => server_reason(status).is_none(),
        _ => false,
    }
}

fn status_exit_code(status: &Status) -> i32 {
    if is_transport(status) {
        return exit::UNAVAILABLE;
    }
    match status.code() {
        Code::InvalidArgument => exit::USAGE,
        Code::NotFound | Code::PermissionDenied | Code::Unauthenticated => exit::NOT_FOUND,
        _ => exit::OTHER,
    }
}

fn describe(status: &Status) -> String {
    let mut s = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    match server_reason(status) {
        Some(r) => s.push_str(&format!(" ({r})")),
        None if is_transport(status) => s = format!("cannot reach the server: {s}"),
        None => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, Reason};

    fn rpc(status: Status) -> CliError {
        CliError::Rpc {
            what: "call".into(),
            status,
        }
    }

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        let server = |e: Error| rpc(crate::api::status::to_status(e));
        assert_eq!(
            server(Error::session_not_found("ses_x")).exit_code(),
            exit::NOT_FOUND
        );
        assert_eq!(
            server(Error::invalid(Reason::UnknownAgent, "agent", "no agent")).exit_code(),
            exit::USAGE
        );
        assert_eq!(
            server(Error::exhausted(Reason::QueueFull, "full")).exit_code(),
            exit::OTHER
        );
        assert_eq!(
            server(Error::unavailable(Reason::ShuttingDown, "bye")).exit_code(),
            exit::UNAVAILABLE
        );
        // A server's internal error is an answer; a bare INTERNAL (h2 reset) is the transport.
        assert_eq!(server(Error::internal("db")).exit_code(), exit::OTHER);
        assert_eq!(
            rpc(Status::internal("h2 protocol error")).exit_code(),
            exit::UNAVAILABLE
        );
        assert_eq!(
            rpc(Status::unauthenticated("no key")).exit_code(),
            exit::NOT_FOUND
        );
        assert_eq!(CliError::Usage("x".into()).exit_code(), exit::USAGE);
    }

    #[test]
    fn messages_name_the_reason_and_never_the_key() {
        let e = rpc(crate::api::status::to_status(Error::job_not_found("job_1")));
        assert_eq!(
            e.to_string(),
            "call: job \"job_1\" not found (JOB_NOT_FOUND)"
        );
        assert_eq!(e.to_json()["reason"], "JOB_NOT_FOUND");
        let Err(e) = Conn::new("http://127.0.0.1:1", Some("sec\nret")) else {
            panic!("a key with a newline is refused");
        };
        assert!(!e.to_string().contains("sec"), "{e}");
        assert!(Conn::new("https://x:1", None).is_err());
    }

    #[test]
    fn host_port_means_plaintext_http() {
        let ok = |s: &str| server_url(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(ok("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(ok("localhost:7"), "http://localhost:7");
        assert_eq!(ok("[::1]:50051"), "http://[::1]:50051");
        assert_eq!(ok("http://127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(ok("HTTP://h:1"), "HTTP://h:1");
        for bad in [
            "https://h:1",
            "localhost",
            "grpc://h:1",
            "h:1/path",
            "h:port",
            "",
        ] {
            let Err(e) = server_url(bad) else {
                panic!("{bad:?} must be refused")
            };
            assert_eq!(e.exit_code(), exit::USAGE, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_exit_code_3() {
        // Port 1 on loopback refuses connections.
        let conn = Conn::new("http://127.0.0.1:1", Some("k")).unwrap();
        let st = conn
            .info()
            .get_server_info(pb::GetServerInfoRequest {})
            .await
            .unwrap_err();
        let e = rpc(st);
        assert_eq!(e.exit_code(), exit::UNAVAILABLE, "{e}");
        assert!(e.to_string().contains("cannot reach the server"), "{e}");
    }
}
