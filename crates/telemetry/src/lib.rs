//! Logs, traces and metrics for every role, and the admin HTTP endpoint
//! (`/metrics`, `/livez`, `/readyz`) that answers "is it healthy?".

mod admin;
mod metrics;

pub use admin::{Readiness, serve_admin};
pub use metrics::Metrics;

use std::collections::HashMap;

use anyhow::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes pending spans when dropped; `main` keeps it until the very end.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: flushing traces failed: {error}");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filtering (default `default_level`),
/// text or JSON (`BROADSIDE_LOG_FORMAT=json`) on stderr, and OTLP trace
/// export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service_name: &str, default_level: &str) -> anyhow::Result<TelemetryGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("BROADSIDE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter()).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter()).boxed()
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|v| !v.is_empty());
    let (otel, provider) = match endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .with_context(|| format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: cannot build the OTLP exporter"))?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
            let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
            let tracer = provider.tracer("broadside");
            opentelemetry::global::set_tracer_provider(provider.clone());
            (Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter()).boxed()), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(TelemetryGuard { provider })
}

/// Installs a quiet subscriber for tests: silent unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("debug,h2=info,hyper=info,tower=info"))
            .with_test_writer()
            .try_init();
    }
}

/// The W3C `traceparent` of the current span, for bus headers.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace a bus record came from.
pub fn follow_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}
