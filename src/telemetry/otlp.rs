//! OTLP trace export (cargo feature `otlp`, off by default). Enabled at run time by
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (the standard OpenTelemetry variables configure the rest); spans
//! go to the collector over OTLP/gRPC, and spans carrying a caller's `traceparent` become children
//! of the caller's span.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use std::sync::OnceLock;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

/// The exporter's own small runtime: logging starts before the server's runtime exists, and the
/// batch processor's thread needs a reactor driving the gRPC connection.
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The export layer, or `None` when no endpoint is configured or the exporter cannot be built
/// (reported on stderr: logging is not up yet).
pub fn layer<S>() -> Option<OpenTelemetryLayer<S, Tracer>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("agentd-otlp")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentd: OTLP export disabled: cannot start its runtime: {e}");
            return None;
        }
    };
    let exporter = {
        let _in_runtime = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
    };
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("agentd: OTLP export disabled: {e}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("agentd")
                .build(),
        )
        .build();
    let tracer = provider.tracer("agentd");
    let _ = RUNTIME.set(rt);
    let _ = PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Flushes buffered spans; call before the process exits.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown();
    }
}

/// Makes `span` a child of the remote span named by `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = std::collections::HashMap::from([(
        super::trace::HEADER.to_owned(),
        traceparent.to_owned(),
    )]);
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}
