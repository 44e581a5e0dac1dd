//! Configuration (SPEC §12): embedded defaults, then a TOML file, then the environment, then
//! command-line flags; each layer overrides the one before.
//!
//! The environment is handed in as a map rather than read here, so loading is a pure function
//! that tests can call without touching the process environment. Names:
//!
//! - `GANGLION_<SECTION>__<KEY>` for any setting, e.g. `GANGLION_GATEWAY__HEARTBEAT_INTERVAL_MS`,
//!   `GANGLION_AUTH__PASSWORD`, `GANGLION_LISTEN`;
//! - `PORT` and `AUTH`, the original 신경 server's names for the listener port and password;
//! - `GANGLION_CONFIG`, the TOML file to read (also `--config`);
//! - the standard OpenTelemetry variables for span export, mapped onto `tracing.*`
//!   ([`OTEL_VARIABLES`]); within the environment, `GANGLION_TRACING__*` beats them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map as FigMap, Value as FigValue};
use figment::{Figment, Metadata, Profile, Provider};
use ganglion_core::metadata::{MetadataLimits, UpdateStrategy};
use ganglion_core::query::QueryLimits;
use ganglion_core::queue::QueueConfig;
use ganglion_transports::SessionConfig;
use serde::{Deserialize, Serialize};

/// Environment variable prefix for every setting.
pub const ENV_PREFIX: &str = "GANGLION_";

/// Settings whose values are always text, even when they look like numbers (`AUTH=1234`).
const STRING_KEYS: &[&str] = &[
    "listen",
    "tcp.listen",
    "nats.url",
    "nats.prefix",
    "tls.cert",
    "tls.key",
    "queue.data_dir",
    "auth.password",
    "node.id",
    "log.format",
    "log.level",
    "metadata.update_strategy",
    "tracing.otlp_endpoint",
    "tracing.otlp_traces_endpoint",
    "tracing.otlp_protocol",
    "tracing.service_name",
    "tracing.sampler",
];

/// The standard OpenTelemetry variables ganglion reads, and the setting each one sets. They
/// are part of the environment layer, below `GANGLION_*`; a signal-specific variable beats
/// the generic one.
pub const OTEL_VARIABLES: &[(&str, &str)] = &[
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "tracing.otlp_endpoint"),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "tracing.otlp_traces_endpoint",
    ),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "tracing.otlp_protocol"),
    (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "tracing.otlp_protocol",
    ),
    ("OTEL_SERVICE_NAME", "tracing.service_name"),
    ("OTEL_TRACES_SAMPLER", "tracing.sampler"),
    ("OTEL_TRACES_SAMPLER_ARG", "tracing.sampler_arg"),
];

/// The whole configuration. Unknown keys are rejected so that typos are caught at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP + websocket listener.
    pub listen: String,
    /// TLS for the HTTP/websocket listener (and the TCP listener when `tcp.tls`).
    pub tls: TlsSection,
    pub tcp: TcpSection,
    pub nats: NatsSection,
    pub ws: WsConfig,
    pub auth: AuthConfig,
    pub gateway: GatewayConfig,
    pub metadata: MetadataConfig,
    pub query: QueryConfig,
    pub queue: QueueSection,
    pub proxy: ProxySection,
    pub http: HttpConfig,
    pub metrics: MetricsSection,
    pub node: NodeConfig,
    pub log: LogConfig,
    pub tracing: TracingSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    pub ack_timeout_ms: u64,
    pub dlq_time_ms: u64,
    /// Deliveries after which a missed ack parks a message; 0 is unlimited.
    pub max_deliveries: u32,
    pub sweep_interval_ms: u64,
    /// Where the durable store lives (created if missing).
    pub data_dir: PathBuf,
    /// `redb` (durable, the default) or `memory` (lost on restart; for tests and throwaway nodes).
    pub store: StoreKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Redb,
    Memory,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain; TLS is on when both `cert` and `key` are set.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TcpSection {
    /// Raw TCP listener (SPEC §2.2); empty turns it off.
    pub listen: String,
    /// TLS on the TCP listener, with `tls.cert` / `tls.key`.
    pub tls: bool,
}

/// The NATS bridge (SPEC §2.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSection {
    /// The NATS server (or comma-separated servers); unset or empty turns the bridge off.
    pub url: Option<String>,
    /// The first subject token(s): `<prefix>.connect`, `<prefix>.dispatch`,
    /// `<prefix>.session.<id>`.
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySection {
    pub connect_timeout_ms: u64,
    pub total_timeout_ms: u64,
    /// CIDRs proxy targets must lie in; empty allows every address except link-local and
    /// cloud-metadata ranges (SPEC §9.7).
    pub allowed_cidrs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Origins allowed to open a websocket; empty allows any (SPEC §2.1).
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The shared password; unset means no authentication (SPEC §4.4).
    pub password: Option<String>,
    pub max_failures_per_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub heartbeat_interval_ms: u64,
    /// Defaults to 1.5 × `heartbeat_interval_ms`.
    pub heartbeat_timeout_ms: Option<u64>,
    pub identify_timeout_ms: u64,
    pub max_frame_bytes: usize,
    pub outbound_buffer_bytes: usize,
    pub close_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    pub update_strategy: UpdateStrategy,
    pub max_bytes: usize,
    pub max_depth: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    pub max_depth: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
    /// How long a request may take to arrive, from its first byte to the end of its head (and,
    /// for requests the proxy relay takes, of its body); the connection is closed when it
    /// runs out. Idle keep-alive connections are not affected.
    pub header_read_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Protect `GET /metrics` with the password.
    pub require_auth: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique node id; defaults to the host name.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `ganglion=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Span export over OTLP (SPEC §11 "Export"). Off until an endpoint is set; trace context
/// propagation in frames is on either way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSection {
    /// The collector's base URL, e.g. `http://localhost:4317` (gRPC) or
    /// `http://localhost:4318` (HTTP, where `/v1/traces` is appended). Unset or empty: no export.
    pub otlp_endpoint: Option<String>,
    /// The full URL traces go to, used as is; beats `otlp_endpoint`.
    pub otlp_traces_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    pub service_name: String,
    pub sampler: SamplerKind,
    /// The ratio of `traceidratio` and `parentbased_traceidratio`, 0 to 1 (default 1).
    pub sampler_arg: Option<f64>,
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`'s values that ganglion speaks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// The OpenTelemetry specification's default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// `OTEL_TRACES_SAMPLER`'s values that ganglion supports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum SamplerKind {
    #[serde(rename = "always_on")]
    AlwaysOn,
    #[serde(rename = "always_off")]
    AlwaysOff,
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    /// The OpenTelemetry specification's default.
    #[default]
    #[serde(rename = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[serde(rename = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[serde(rename = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

impl OtlpProtocol {
    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

impl SamplerKind {
    /// The name `OTEL_TRACES_SAMPLER` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SamplerKind::AlwaysOn => "always_on",
            SamplerKind::AlwaysOff => "always_off",
            SamplerKind::TraceIdRatio => "traceidratio",
            SamplerKind::ParentBasedAlwaysOn => "parentbased_always_on",
            SamplerKind::ParentBasedAlwaysOff => "parentbased_always_off",
            SamplerKind::ParentBasedTraceIdRatio => "parentbased_traceidratio",
        }
    }
}

impl Default for TracingSection {
    fn default() -> Self {
        TracingSection {
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            service_name: "ganglion".to_owned(),
            sampler: SamplerKind::default(),
            sampler_arg: None,
        }
    }
}

impl TracingSection {
    /// Where spans go, when export is on: `otlp_traces_endpoint` as is, else
    /// `otlp_endpoint`, with `/v1/traces` appended for HTTP.
    pub fn traces_endpoint(&self) -> Option<String> {
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if let Some(url) = set(&self.otlp_traces_endpoint) {
            return Some(url);
        }
        let base = set(&self.otlp_endpoint)?;
        Some(match self.otlp_protocol {
            OtlpProtocol::Grpc => base,
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        })
    }

    /// The sampling ratio: `sampler_arg`, default 1.
    pub fn ratio(&self) -> f64 {
        self.sampler_arg.unwrap_or(1.0)
    }
}

// === defaults (SPEC §12) ===

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "[::]:4000".to_owned(),
            tls: TlsSection::default(),
            tcp: TcpSection::default(),
            nats: NatsSection::default(),
            ws: WsConfig::default(),
            auth: AuthConfig::default(),
            gateway: GatewayConfig::default(),
            metadata: MetadataConfig::default(),
            query: QueryConfig::default(),
            queue: QueueSection::default(),
            proxy: ProxySection::default(),
            http: HttpConfig::default(),
            metrics: MetricsSection::default(),
            node: NodeConfig::default(),
            log: LogConfig::default(),
            tracing: TracingSection::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password: None,
            max_failures_per_minute: 10,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_interval_ms: 45_000,
            heartbeat_timeout_ms: None,
            identify_timeout_ms: 10_000,
            max_frame_bytes: 1_048_576,
            outbound_buffer_bytes: 1_048_576,
            close_timeout_ms: 5_000,
        }
    }
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            update_strategy: UpdateStrategy::Merge,
            max_bytes: 65_536,
            max_depth: 32,
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig { max_depth: 32 }
    }
}

impl Default for TcpSection {
    fn default() -> Self {
        TcpSection {
            listen: "[::]:4001".to_owned(),
            tls: false,
        }
    }
}

impl Default for NatsSection {
    fn default() -> Self {
        NatsSection {
            url: None,
            prefix: "ganglion".to_owned(),
        }
    }
}

impl NatsSection {
    /// The configured URL, when the bridge is on.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            connect_timeout_ms: 5_000,
            total_timeout_ms: 30_000,
            allowed_cidrs: Vec::new(),
        }
    }
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            ack_timeout_ms: 15_000,
            dlq_time_ms: 15_000,
            max_deliveries: 0,
            sweep_interval_ms: 1_000,
            data_dir: PathBuf::from("./data"),
            store: StoreKind::Redb,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 8_388_608,
            header_read_timeout_ms: 30_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid setting `{0}`: expected KEY=VALUE, e.g. gateway.heartbeat_interval_ms=30000")]
    Setting(String),
    #[error("invalid configuration: {0}")]
    Value(String),
}

/// Overrides from the command line, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub node_id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    /// `key=value` pairs with dotted keys, e.g. `auth.password=s3cret`.
    pub settings: Vec<String>,
}

// === impl Config ===

impl Config {
    /// Loads the layered configuration.
    pub fn load(
        env: &HashMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = overrides
            .config_file
            .clone()
            .or_else(|| env.get("GANGLION_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            figment = figment.merge(Toml::string(&read_file(&path)?));
        }
        figment = figment.merge(EnvProvider::from_env(env));
        let mut flags = Dict::new();
        for setting in &overrides.settings {
            let (key, value) = setting
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| ConfigError::Setting(setting.clone()))?;
            merge_setting(&mut flags, key.trim(), value);
        }
        if let Some(listen) = &overrides.listen {
            merge_setting(&mut flags, "listen", listen);
        }
        if let Some(id) = &overrides.node_id {
            merge_setting(&mut flags, "node.id", id);
        }
        if let Some(dir) = &overrides.data_dir {
            merge_setting(&mut flags, "queue.data_dir", &dir.to_string_lossy());
        }
        if let Some(format) = overrides.log_format {
            let name = match format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            };
            merge_setting(&mut flags, "log.format", name);
        }
        figment = figment.merge(DictProvider {
            name: "command-line flags",
            dict: flags,
        });
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "gateway.heartbeat_interval_ms",
                self.gateway.heartbeat_interval_ms,
            ),
            (
                "gateway.identify_timeout_ms",
                self.gateway.identify_timeout_ms,
            ),
            (
                "gateway.max_frame_bytes",
                self.gateway.max_frame_bytes as u64,
            ),
            (
                "gateway.outbound_buffer_bytes",
                self.gateway.outbound_buffer_bytes as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Value(format!("{name} must be greater than 0")));
            }
        }
        if self.gateway.heartbeat_timeout_ms == Some(0) {
            return Err(ConfigError::Value(
                "gateway.heartbeat_timeout_ms must be greater than 0".into(),
            ));
        }
        crate::proxy::guard::Guard::new(&self.proxy.allowed_cidrs)
            .map_err(|e| ConfigError::Value(e.to_string()))?;
        if let Some(ratio) = self.tracing.sampler_arg
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(ConfigError::Value(format!(
                "tracing.sampler_arg must be between 0 and 1, got {ratio}"
            )));
        }
        if let Some(endpoint) = self.tracing.traces_endpoint()
            && !endpoint.starts_with("http://")
        {
            return Err(ConfigError::Value(format!(
                "the OTLP endpoint must be a plain http:// URL (export to a collector nearby, \
                 which can forward over TLS), got `{endpoint}`"
            )));
        }
        Ok(())
    }

    /// The liveness deadline: configured, or 1.5 × the interval (SPEC §4.6).
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(
            self.gateway
                .heartbeat_timeout_ms
                .unwrap_or(self.gateway.heartbeat_interval_ms.saturating_mul(3) / 2),
        )
    }

    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            identify_timeout: Duration::from_millis(self.gateway.identify_timeout_ms),
            heartbeat_timeout: self.heartbeat_timeout(),
            close_timeout: Duration::from_millis(self.gateway.close_timeout_ms),
            max_frame_bytes: self.gateway.max_frame_bytes,
            outbound_buffer_bytes: self.gateway.outbound_buffer_bytes,
        }
    }

    pub fn metadata_limits(&self) -> MetadataLimits {
        MetadataLimits {
            max_bytes: self.metadata.max_bytes,
            max_depth: self.metadata.max_depth,
            strategy: self.metadata.update_strategy,
        }
    }

    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            ack_timeout_ms: self.queue.ack_timeout_ms,
            dlq_time_ms: self.queue.dlq_time_ms,
            max_deliveries: self.queue.max_deliveries,
            sweep_interval_ms: self.queue.sweep_interval_ms,
        }
    }

    pub fn query_limits(&self) -> QueryLimits {
        QueryLimits {
            max_depth: self.query.max_depth,
        }
    }

    /// The node id: configured, else the host name, else `ganglion`.
    pub fn node_id(&self, env: &HashMap<String, String>) -> String {
        self.node
            .id
            .clone()
            .filter(|id| !id.is_empty())
            .or_else(|| env.get("HOSTNAME").cloned().filter(|h| !h.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "ganglion".to_owned())
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: path.to_owned(),
        source,
    })
}

/// Sets a dotted key in a dict, parsing the value as figment parses environment values
/// (numbers, booleans, arrays) unless the key always holds text.
fn merge_setting(dict: &mut Dict, key: &str, raw: &str) {
    let key = key.to_ascii_lowercase();
    let value: FigValue = if STRING_KEYS.contains(&key.as_str()) {
        FigValue::from(raw.to_owned())
    } else {
        raw.parse().unwrap_or_else(|never| match never {})
    };
    if let Some(nested) = figment::util::nest(&key, value).into_dict() {
        merge_dicts(dict, nested);
    }
}

/// Merges `from` into `into`, recursing into dicts, later values winning.
fn merge_dicts(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(FigValue::Dict(_, existing)), FigValue::Dict(_, nested)) => {
                merge_dicts(existing, nested);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// The environment layer, from a map.
struct EnvProvider;

impl EnvProvider {
    fn from_env(env: &HashMap<String, String>) -> DictProvider {
        let mut dict = Dict::new();
        if let Some(port) = env.get("PORT").filter(|p| !p.is_empty()) {
            merge_setting(&mut dict, "listen", &format!("[::]:{port}"));
        }
        if let Some(password) = env.get("AUTH").filter(|p| !p.is_empty()) {
            merge_setting(&mut dict, "auth.password", password);
        }
        // In table order: the signal-specific variables come after the generic ones.
        for (name, key) in OTEL_VARIABLES {
            if let Some(value) = env.get(*name) {
                merge_setting(&mut dict, key, value.trim());
            }
        }
        let mut names: Vec<&String> = env.keys().collect();
        names.sort();
        for name in names {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest.is_empty() || rest == "CONFIG" {
                continue;
            }
            let key = rest.split("__").collect::<Vec<_>>().join(".");
            merge_setting(&mut dict, &key, &env[name]);
        }
        DictProvider {
            name: "environment",
            dict,
        }
    }
}

/// A ready-made layer of settings.
struct DictProvider {
    name: &'static str,
    dict: Dict,
}

impl Provider for DictProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<FigMap<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_embedded_defaults_are_the_specs() {
        let config = Config::load(&HashMap::new(), &Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen, "[::]:4000");
        assert_eq!(config.heartbeat_timeout(), Duration::from_millis(67_500));
        assert_eq!(config.session().identify_timeout, Duration::from_secs(10));
    }

    #[test]
    fn port_and_auth_are_honoured() {
        let config = Config::load(
            &env(&[("PORT", "5000"), ("AUTH", "1234")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.listen, "[::]:5000");
        assert_eq!(config.auth.password.as_deref(), Some("1234"));
    }

    #[test]
    fn each_layer_overrides_the_one_before() {
        let file =
            std::env::temp_dir().join(format!("ganglion-config-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[gateway]\nheartbeat_interval_ms = 1000\nidentify_timeout_ms = 7\n",
        )
        .unwrap();
        let vars = env(&[
            ("GANGLION_CONFIG", file.to_str().unwrap()),
            ("GANGLION_GATEWAY__HEARTBEAT_INTERVAL_MS", "2000"),
            ("GANGLION_LISTEN", "127.0.0.1:2"),
        ]);
        let overrides = Overrides {
            listen: Some("127.0.0.1:3".into()),
            ..Overrides::default()
        };
        let loaded = Config::load(&vars, &overrides);
        let _ = std::fs::remove_file(&file);
        let config = loaded.unwrap();
        assert_eq!(config.listen, "127.0.0.1:3", "flags beat the environment");
        assert_eq!(
            config.gateway.heartbeat_interval_ms, 2000,
            "the environment beats the file"
        );
        assert_eq!(
            config.gateway.identify_timeout_ms, 7,
            "the file beats the defaults"
        );
        assert_eq!(config.heartbeat_timeout(), Duration::from_millis(3000));
    }

    #[test]
    fn a_missing_config_file_is_named_in_the_error() {
        let vars = env(&[("GANGLION_CONFIG", "/nonexistent/ganglion.toml")]);
        let err = Config::load(&vars, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ganglion.toml"), "{err}");
    }

    #[test]
    fn settings_flags_take_dotted_keys() {
        let overrides = Overrides {
            settings: vec![
                "metadata.update_strategy=replace".into(),
                "auth.password=42".into(),
                "ws.allowed_origins=[\"https://a.example\"]".into(),
            ],
            ..Overrides::default()
        };
        let config = Config::load(&HashMap::new(), &overrides).unwrap();
        assert_eq!(config.metadata.update_strategy, UpdateStrategy::Replace);
        assert_eq!(config.auth.password.as_deref(), Some("42"));
        assert_eq!(
            config.ws.allowed_origins,
            vec!["https://a.example".to_owned()]
        );
    }

    #[test]
    fn the_nats_bridge_is_off_until_a_url_is_set() {
        let config = Config::load(&HashMap::new(), &Overrides::default()).unwrap();
        assert_eq!(config.nats.url(), None);
        assert_eq!(config.nats.prefix, "ganglion");
        let config = Config::load(
            &env(&[
                ("GANGLION_NATS__URL", "nats://a:4222,nats://b:4222"),
                ("GANGLION_NATS__PREFIX", "prod.ganglion"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.nats.url(), Some("nats://a:4222,nats://b:4222"));
        assert_eq!(config.nats.prefix, "prod.ganglion");
        let blank = Overrides {
            settings: vec!["nats.url=".into()],
            ..Overrides::default()
        };
        assert_eq!(
            Config::load(&HashMap::new(), &blank).unwrap().nats.url(),
            None
        );
    }

    #[test]
    fn span_export_is_off_until_an_endpoint_is_set() {
        let config = Config::load(&HashMap::new(), &Overrides::default()).unwrap();
        assert_eq!(config.tracing.traces_endpoint(), None);
        assert_eq!(config.tracing.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.tracing.sampler, SamplerKind::ParentBasedAlwaysOn);
        assert_eq!(config.tracing.service_name, "ganglion");
        let blank = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]);
        let config = Config::load(&blank, &Overrides::default()).unwrap();
        assert_eq!(config.tracing.traces_endpoint(), None);
    }

    #[test]
    fn the_standard_otel_variables_set_the_tracing_section() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "edge-gateway"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        let config = Config::load(&vars, &Overrides::default()).unwrap();
        assert_eq!(
            config.tracing.otlp_protocol,
            OtlpProtocol::HttpProtobuf,
            "the signal-specific protocol beats the generic one"
        );
        assert_eq!(
            config.tracing.traces_endpoint().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(config.tracing.service_name, "edge-gateway");
        assert_eq!(config.tracing.sampler, SamplerKind::ParentBasedTraceIdRatio);
        assert_eq!(config.tracing.ratio(), 0.25);

        let grpc = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ]);
        let config = Config::load(&grpc, &Overrides::default()).unwrap();
        assert_eq!(
            config.tracing.traces_endpoint().as_deref(),
            Some("http://collector:4317"),
            "gRPC has no path to append"
        );
        assert_eq!(config.tracing.sampler, SamplerKind::AlwaysOff);
        assert_eq!(config.tracing.ratio(), 1.0);

        let specific = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom/path",
            ),
        ]);
        let config = Config::load(&specific, &Overrides::default()).unwrap();
        assert_eq!(
            config.tracing.traces_endpoint().as_deref(),
            Some("http://traces:9999/custom/path"),
            "the traces endpoint is used as is and beats the generic one"
        );
    }

    #[test]
    fn ganglion_settings_beat_the_otel_variables_and_the_environment_beats_the_file() {
        let file =
            std::env::temp_dir().join(format!("ganglion-tracing-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "[tracing]\notlp_endpoint = \"http://from-file:4318\"\nservice_name = \"file\"\nsampler = \"always_on\"\n",
        )
        .unwrap();
        let vars = env(&[
            ("GANGLION_CONFIG", file.to_str().unwrap()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-otel:4318"),
            ("OTEL_SERVICE_NAME", "otel"),
            ("GANGLION_TRACING__SERVICE_NAME", "ganglion-env"),
        ]);
        let overrides = Overrides {
            settings: vec!["tracing.sampler=traceidratio".into()],
            ..Overrides::default()
        };
        let loaded = Config::load(&vars, &overrides);
        let _ = std::fs::remove_file(&file);
        let config = loaded.unwrap();
        assert_eq!(
            config.tracing.otlp_endpoint.as_deref(),
            Some("http://from-otel:4318"),
            "OTEL_* beats the file"
        );
        assert_eq!(
            config.tracing.service_name, "ganglion-env",
            "GANGLION_TRACING__* beats OTEL_*"
        );
        assert_eq!(
            config.tracing.sampler,
            SamplerKind::TraceIdRatio,
            "flags beat everything"
        );
    }

    #[test]
    fn every_sampler_and_protocol_is_read_by_the_name_it_is_shown_with() {
        for sampler in [
            SamplerKind::AlwaysOn,
            SamplerKind::AlwaysOff,
            SamplerKind::TraceIdRatio,
            SamplerKind::ParentBasedAlwaysOn,
            SamplerKind::ParentBasedAlwaysOff,
            SamplerKind::ParentBasedTraceIdRatio,
        ] {
            let vars = env(&[("OTEL_TRACES_SAMPLER", sampler.as_str())]);
            let config = Config::load(&vars, &Overrides::default()).unwrap();
            assert_eq!(config.tracing.sampler, sampler);
        }
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let vars = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.as_str())]);
            let config = Config::load(&vars, &Overrides::default()).unwrap();
            assert_eq!(config.tracing.otlp_protocol, protocol);
        }
    }

    #[test]
    fn bad_tracing_values_are_refused_with_their_name() {
        for (name, value, expected) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/json"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote", "jaeger_remote"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5", "tracing.sampler_arg"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector:4318",
                "plain http://",
            ),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "collector:4317",
                "plain http://",
            ),
        ] {
            let err = Config::load(&env(&[(name, value)]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{name}={value}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        let err = Config::load(
            &env(&[("GANGLION_GATEWAY__NOPE", "1")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = Config::load(
            &env(&[("GANGLION_GATEWAY__HEARTBEAT_INTERVAL_MS", "0")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("heartbeat_interval_ms"), "{err}");
        let bad = Overrides {
            settings: vec!["novalue".into()],
            ..Overrides::default()
        };
        assert!(matches!(
            Config::load(&HashMap::new(), &bad),
            Err(ConfigError::Setting(_))
        ));
    }
}
