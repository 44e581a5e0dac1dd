//! The ganglion gateway: configuration, the HTTP API and websocket handshake, the session
//! middleware stack, and the node that ties them together. The `ganglion` binary is a thin
//! `main` over [`Gateway`].
//!
//! - [`config`]: layered configuration (defaults < file < environment < flags);
//! - [`http`]: routes of SPEC §9;
//! - [`proxy`]: the proxy's upstream client, SSRF guard and header hygiene (SPEC §9.7);
//! - [`service`]: the tower stack every session runs;
//! - [`telemetry`]: logs, and span export over OTLP;
//! - [`server`]: binding, serving, draining.

pub mod config;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod queue_store;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;

pub use config::{Config, ConfigError, Overrides};
pub use server::{Gateway, StartError};
