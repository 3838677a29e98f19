//! Observability: the process-wide Prometheus metrics and their HTTP listener (`metrics`), the
//! per-RPC tower layer that opens the request span, assigns request ids and counts calls by method
//! and status (`rpc`), W3C trace context parsing (`trace`), and log subscriber set-up.
//!
//! Spans nest RPC → job → agent process; every log line inside them carries their fields
//! (`request_id`, `job`, `trace_id`), so a job's lines can be found from the caller's trace.

pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod rpc;
pub mod trace;

pub use metrics::{Metrics, metrics};
pub use trace::TraceParent;

use crate::config::LogFormat;

/// Installs the global log subscriber on stderr. The filter comes from `AGENTD_LOG`, else
/// `default_filter` (e.g. `info`). Call once, before the runtime starts.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_span_list(true)
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    #[cfg(feature = "otlp")]
    let subscriber = subscriber.with(otlp::layer());
    // A second init (tests, embedding) keeps the first subscriber; that is not an error here.
    let _ = subscriber.try_init();
}

/// Flushes telemetry still buffered (OTLP spans when built with `otlp`); call before exiting.
pub fn flush() {
    #[cfg(feature = "otlp")]
    otlp::shutdown();
}
