//! Logs and traces: the process-wide `tracing` subscriber, and — when an OTLP endpoint is
//! configured (`tracing.*`, `OTEL_*`) — the OpenTelemetry pipeline that exports ganglion's spans.
//!
//! Two layers with filters of their own:
//!
//! - **logs** to stderr as text or JSON (`log.format`), filtered by `RUST_LOG` or `log.level`.
//!   Per-message spans ([`SPAN_TARGET`]) are left out unless the filter names that target, so
//!   `info` logs carry no per-message noise and disabled spans cost nothing;
//! - **spans** to OTLP over gRPC or HTTP/protobuf: only the per-message spans (dispatches,
//!   identify, queue operations, proxied requests), through the runtime-driven batch
//!   processor (STACK.md: the default one panics with the HTTP exporter).
//!
//! Trace context propagation in frames does not depend on any of this (SPEC §11): with export
//! off, ganglion's spans get random ids. With export on, [`OtelTracer`] makes them real
//! OpenTelemetry spans, so the ids in frames are the ids of exported spans.

use std::io::IsTerminal;
use std::time::Duration;

use ganglion_core::frame::TraceContext;
use ganglion_core::trace::{SPAN_TARGET, TraceParent, Tracer, random_span_id};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat, OtlpProtocol, SamplerKind, TracingSection};

/// Why span export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to {endpoint}: {detail}")]
pub struct TelemetryError {
    endpoint: String,
    detail: String,
}

/// Keeps the span pipeline alive; [`shutdown`](TelemetryGuard::shutdown) exports what is
/// still buffered.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every span ended so far and waits for the collector's answer.
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            // The SDK blocks the calling thread until the exporter task, which runs on this
            // runtime, has answered.
            let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "cannot flush spans");
            }
        }
    }

    /// Exports every span still buffered and stops the exporter (after draining).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = stopped {
                tracing::warn!(%error, "cannot flush spans at shutdown");
            }
        }
    }
}

/// Installs the global subscriber, and the span exporter when an endpoint is configured.
/// Must run inside a Tokio runtime (the exporter is a task on it). A second call in the same
/// process keeps the first subscriber and exports nothing new.
pub fn init(config: &Config) -> Result<TelemetryGuard, TelemetryError> {
    let provider = match config.tracing.traces_endpoint() {
        Some(endpoint) => Some(provider(
            &config.tracing,
            &endpoint,
            config.node.id.as_deref(),
        )?),
        None => None,
    };
    let logs = log_layer(config);
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("ganglion"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(SPAN_TARGET, LevelFilter::INFO))
    });
    // Not `.with(spans)` with an `Option`: a `None` layer answers every callsite "always
    // interested", which makes the registry build every span (per-frame debug spans included)
    // only for the log filter to ignore them; that cost a fifth of a routing core.
    let registry = tracing_subscriber::registry().with(logs);
    let installed = match spans {
        Some(spans) => registry.with(spans).try_init(),
        None => registry.try_init(),
    }
    .is_ok();
    if installed && provider.is_some() {
        ganglion_core::trace::install(OtelTracer {
            sampler: config.tracing.sampler,
            ratio: config.tracing.ratio(),
        });
    }
    if let (Some(endpoint), true) = (config.tracing.traces_endpoint(), installed) {
        tracing::info!(
            %endpoint,
            protocol = config.tracing.otlp_protocol.as_str(),
            sampler = config.tracing.sampler.as_str(),
            ratio = config.tracing.ratio(),
            "exporting spans over OTLP"
        );
    }
    Ok(TelemetryGuard { provider })
}

/// The log layer: text or JSON on stderr.
fn log_layer<S>(config: &Config) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| config.log.level.clone());
    let mut filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    if !directives.contains(SPAN_TARGET) {
        filter = filter.add_directive(
            format!("{SPAN_TARGET}=off")
                .parse()
                .expect("a valid directive"),
        );
    }
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
        LogFormat::Text => layer.with_filter(filter).boxed(),
    }
}

/// The tracer provider: OTLP exporter, runtime-driven batch processor, sampler, resource.
fn provider(
    section: &TracingSection,
    endpoint: &str,
    node_id: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let timeout = Duration::from_secs(10);
    let exporter = match section.otlp_protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .build(),
    }
    .map_err(|error| TelemetryError {
        endpoint: endpoint.to_owned(),
        detail: error.to_string(),
    })?;
    let mut resource = Resource::builder()
        .with_service_name(section.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(node) = node_id {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", node.to_owned()));
    }
    // `OtelTracer::records` samples before a span is built; every span built is recorded.
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build())
        .build())
}

// === OtelTracer ===

/// Continues traces into OpenTelemetry spans (installed into core while exporting): the
/// remote context becomes the span's parent, and frames carry the span's own id.
///
/// It samples itself, before a span is built, with the rules of the OpenTelemetry samplers
/// (`traceidratio` keeps a trace when the low 63 bits of its id fall under the ratio, as every
/// OpenTelemetry SDK does): a span that is not sampled costs nothing beyond propagation, where
/// the SDK's own sampler would only decide after the span had been built.
#[derive(Debug)]
pub struct OtelTracer {
    pub sampler: SamplerKind,
    /// The ratio of the `…traceidratio` samplers.
    pub ratio: f64,
}

impl OtelTracer {
    /// `traceidratio` for a trace id (for a new trace, a random one).
    fn ratio_keeps(&self, trace_id: Option<u128>) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        let low = match trace_id {
            Some(id) => id as u64,
            None => random_span_id(),
        };
        let bound = (self.ratio.max(0.0) * (1u64 << 63) as f64) as u64;
        (low >> 1) < bound
    }
}

impl Tracer for OtelTracer {
    fn records(&self, parent: Option<&TraceContext>) -> bool {
        let parent = parent.and_then(TraceContext::parent);
        match (self.sampler, parent) {
            (SamplerKind::AlwaysOn, _) => true,
            (SamplerKind::AlwaysOff, _) => false,
            (SamplerKind::TraceIdRatio, _) => self.ratio_keeps(parent.map(|p| p.trace_id)),
            (
                SamplerKind::ParentBasedAlwaysOn
                | SamplerKind::ParentBasedAlwaysOff
                | SamplerKind::ParentBasedTraceIdRatio,
                Some(parent),
            ) => parent.is_sampled(),
            (SamplerKind::ParentBasedAlwaysOn, None) => true,
            (SamplerKind::ParentBasedAlwaysOff, None) => false,
            (SamplerKind::ParentBasedTraceIdRatio, None) => self.ratio_keeps(None),
        }
    }

    fn continue_trace(&self, span: &Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
        let remote = parent.and_then(|context| Some((context, context.parent()?)));
        if let Some((context, parsed)) = remote {
            let _ = span.set_parent(remote_context(context, parsed));
        }
        let otel = span.context();
        let own = otel.span().span_context().clone();
        match remote {
            Some((context, parsed)) => {
                let id = if own.is_valid() && own.trace_id() == TraceId::from(parsed.trace_id) {
                    u64::from_be_bytes(own.span_id().to_bytes())
                } else {
                    // The span is not exported (filtered out): still a span of ganglion's.
                    random_span_id()
                };
                Some(context.child(id))
            }
            None if own.is_valid() && own.is_sampled() => Some(TraceContext::new(
                TraceParent {
                    trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
                    parent_id: u64::from_be_bytes(own.span_id().to_bytes()),
                    flags: own.trace_flags().to_u8(),
                },
                None,
            )),
            None => None,
        }
    }
}

/// The OpenTelemetry form of an inbound context. A `tracestate` the SDK cannot parse still
/// travels in frames unchanged; only the exported parent lacks it.
fn remote_context(context: &TraceContext, parsed: TraceParent) -> OtelContext {
    let state = context
        .tracestate
        .as_deref()
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    OtelContext::new().with_remote_span_context(SpanContext::new(
        TraceId::from(parsed.trace_id),
        SpanId::from(parsed.parent_id),
        TraceFlags::new(parsed.flags),
        true,
        state,
    ))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanKind;
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    use super::*;

    fn tracer(sampler: SamplerKind, ratio: f64) -> OtelTracer {
        OtelTracer { sampler, ratio }
    }

    fn context(trace_id: u128, flags: u8) -> TraceContext {
        TraceContext::new(
            TraceParent {
                trace_id,
                parent_id: 1,
                flags,
            },
            None,
        )
    }

    #[test]
    fn parent_based_samplers_follow_the_inbound_flag_and_their_root_rule_otherwise() {
        let (sampled, unsampled) = (context(7, 1), context(7, 0));
        for kind in [
            SamplerKind::ParentBasedAlwaysOn,
            SamplerKind::ParentBasedAlwaysOff,
            SamplerKind::ParentBasedTraceIdRatio,
        ] {
            let tracer = tracer(kind, 0.0);
            assert!(tracer.records(Some(&sampled)), "{kind:?}");
            assert!(!tracer.records(Some(&unsampled)), "{kind:?}");
        }
        assert!(tracer(SamplerKind::ParentBasedAlwaysOn, 0.0).records(None));
        assert!(!tracer(SamplerKind::ParentBasedAlwaysOff, 1.0).records(None));
        assert!(!tracer(SamplerKind::ParentBasedTraceIdRatio, 0.0).records(None));
        assert!(tracer(SamplerKind::ParentBasedTraceIdRatio, 1.0).records(None));
        assert!(tracer(SamplerKind::AlwaysOn, 0.0).records(Some(&unsampled)));
        assert!(!tracer(SamplerKind::AlwaysOff, 1.0).records(Some(&sampled)));
    }

    #[test]
    fn traceidratio_decides_like_the_opentelemetry_sdk() {
        for ratio in [0.0, 0.1, 0.5, 0.9] {
            let ours = tracer(SamplerKind::TraceIdRatio, ratio);
            let sdk = Sampler::TraceIdRatioBased(ratio);
            let mut kept = 0;
            for _ in 0..2_000 {
                let trace_id = (u128::from(random_span_id()) << 64) | u128::from(random_span_id());
                let expected = sdk
                    .should_sample(
                        None,
                        TraceId::from(trace_id),
                        "SEND",
                        &SpanKind::Internal,
                        &[],
                        &[],
                    )
                    .decision
                    == SamplingDecision::RecordAndSample;
                let decided = ours.records(Some(&context(trace_id, 0)));
                assert_eq!(decided, expected, "ratio {ratio}, trace {trace_id:032x}");
                kept += usize::from(decided);
            }
            let share = kept as f64 / 2_000.0;
            assert!((share - ratio).abs() < 0.05, "ratio {ratio}: kept {share}");
        }
    }
}
