//! Arguments shared by the client subcommands: how to connect, who to be, whom to address,
//! and what to send.

use std::path::PathBuf;
use std::time::Duration;

use ganglion_client::{ClientBuilder, Dsn, Metadata, Query, Reconnect, Selector, where_clause};
use serde_json::Value;

use super::Failure;

/// How to connect and who to be.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Where the node is: singyeong://[APP[:PASSWORD]@]HOST[:PORT][?encoding=json|msgpack]
    /// (websocket), ssingyeong:// (websocket over TLS), ganglion+tcp:// or ganglion+tls:// (raw
    /// TCP).
    #[arg(
        long,
        env = "GANGLION_DSN",
        default_value = "singyeong://localhost:4000",
        value_name = "DSN"
    )]
    pub dsn: String,
    /// This client's application id (default: the DSN's user, else `ganglion-cli`).
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// This client's id (default: APP-<8 random hex digits>).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// The password (identify `auth`), if the DSN has none.
    #[arg(
        long,
        env = "GANGLION_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
    /// Metadata to identify with, as KEY=TYPE:VALUE; TYPE is string, integer, float, version,
    /// boolean, list or map (JSON for the last two). Repeatable.
    #[arg(long = "meta", value_name = "KEY=TYPE:VALUE")]
    pub meta: Vec<String>,
    /// Also trust this CA certificate (PEM) for TLS DSNs.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up connecting after this long (e.g. 500ms, 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
}

impl ConnectArgs {
    /// A client builder from these arguments.
    pub fn builder(&self) -> Result<ClientBuilder, Failure> {
        let dsn = Dsn::parse(&self.dsn).map_err(|e| Failure::usage(e.to_string()))?;
        let app = self
            .app
            .clone()
            .or_else(|| dsn.application_id.clone())
            .unwrap_or_else(|| "ganglion-cli".to_owned());
        let mut metadata = Metadata::new();
        for entry in &self.meta {
            metadata
                .insert_parsed(entry)
                .map_err(|e| Failure::usage(format!("invalid --meta {entry:?}: {e}")))?;
        }
        metadata
            .validate()
            .map_err(|e| Failure::usage(format!("invalid --meta: {}: {}", e.key, e.reason)))?;
        let mut builder = ClientBuilder::from_dsn(dsn)
            .application_id(app)
            .metadata(metadata)
            .connect_timeout(self.connect_timeout)
            // A command-line client that loses its node keeps trying, but not forever.
            .reconnect(Reconnect {
                max_delay: Duration::from_secs(5),
                ..Reconnect::default()
            });
        if let Some(id) = &self.client_id {
            builder = builder.client_id(id);
        }
        if let Some(password) = &self.password {
            builder = builder.auth(password);
        }
        if let Some(path) = &self.ca {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject as _;
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Failure::usage(format!("cannot read --ca {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Failure::usage(format!(
                    "--ca {}: no certificate in it",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder)
    }
}

/// Which clients to address.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Only clients of this application (default: every application).
    #[arg(long, value_name = "APP")]
    pub to: Option<String>,
    /// Conditions on metadata, e.g. 'version >= 1.2.0 and region == "eu"'. See docs/cli.md.
    #[arg(long = "where", value_name = "EXPR")]
    pub where_: Option<String>,
    /// Consistent-hashing key: the same key picks the same client while the matches stay.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Pick by a numeric key: min:KEY, max:KEY or avg:KEY.
    #[arg(long, value_name = "min|max|avg:KEY")]
    pub select: Option<String>,
    /// With no match, fall back to the application alone.
    #[arg(long)]
    pub optional: bool,
    /// With no match, drop silently instead of failing with no_route.
    #[arg(long)]
    pub droppable: bool,
    /// Include restricted clients.
    #[arg(long)]
    pub restricted: bool,
    /// A whole query as JSON (v2 form), instead of the options above.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["to", "where_", "key", "select", "optional", "droppable", "restricted"])]
    pub target: Option<String>,
}

impl TargetArgs {
    pub fn query(&self) -> Result<Query, Failure> {
        if let Some(json) = &self.target {
            let value: Value = serde_json::from_str(json)
                .map_err(|e| Failure::usage(format!("--target is not JSON: {e}")))?;
            return Query::from_json(&value)
                .map_err(|e| Failure::usage(format!("invalid --target: {e}")));
        }
        let mut query = match &self.to {
            Some(app) => Query::application(app),
            None => Query::any(),
        };
        if let Some(expr) = &self.where_ {
            let conditions = where_clause::parse(expr)
                .map_err(|e| Failure::usage(format!("invalid --where: {e}")))?;
            query = query.filters(conditions);
        }
        if let Some(key) = &self.key {
            query = query.key(key);
        }
        if let Some(select) = &self.select {
            query = query.select(
                Selector::parse(select)
                    .map_err(|e| Failure::usage(format!("invalid --select: {e}")))?,
            );
        }
        query.optional = self.optional;
        query.droppable = self.droppable;
        query.restricted = self.restricted;
        Ok(query)
    }
}

/// A payload from the command line: JSON when it parses as JSON, else the text as a string
/// (or always a string with `as_string`).
pub fn payload(text: &str, as_string: bool) -> Value {
    if as_string {
        return Value::String(text.to_owned());
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// `250ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 1m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_take_ms_s_m_or_bare_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn payloads_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(payload(r#"{"a":1}"#, false), json!({"a": 1}));
        assert_eq!(payload("42", false), json!(42));
        assert_eq!(payload("hello world", false), json!("hello world"));
        assert_eq!(payload("42", true), json!("42"));
    }

    fn target(args: &[&str]) -> Result<Query, Failure> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            target: TargetArgs,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv).expect("parses").target.query()
    }

    #[test]
    fn target_options_build_one_query() {
        let query = target(&[
            "--to",
            "api",
            "--where",
            "load < 10 and region == 'eu'",
            "--key",
            "k",
            "--select",
            "min:load",
            "--optional",
            "--droppable",
        ])
        .unwrap();
        assert_eq!(
            query.to_json(),
            json!({"application": "api", "key": "k", "droppable": true, "optional": true,
                   "ops": [{"path": "/load", "op": "$lt", "to": {"value": 10}},
                           {"path": "/region", "op": "$eq", "to": {"value": "eu"}}],
                   "selector": {"$min": "load"}})
        );
        let raw = target(&["--target", r#"{"application":"x","ops":[]}"#]).unwrap();
        assert_eq!(raw, Query::application("x"));
    }

    #[test]
    fn a_bad_where_is_a_usage_error_that_points_at_the_column() {
        let error = target(&["--where", "region == eu"]).unwrap_err();
        assert_eq!(error.code, 2);
        assert!(
            error
                .message
                .starts_with("invalid --where: expected a value, found the bare word `eu`"),
            "{}",
            error.message
        );
        assert!(
            error.message.ends_with("region == eu\n            ^"),
            "{}",
            error.message
        );
    }
}
