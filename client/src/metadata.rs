//! Typed metadata (SPEC §5) and its builder.
//!
//! ```
//! use ganglion_client::Metadata;
//! let metadata = Metadata::new()
//!     .string("region", "eu")
//!     .integer("load", 3)
//!     .version("v", "1.2.0")
//!     .boolean("gpu", true);
//! assert!(metadata.validate().is_ok());
//! ```
//!
//! The builder never fails: [`Metadata::validate`] applies the server's rules (reserved keys,
//! SemVer, finite floats, nesting depth) before anything is sent, so a bad value is reported
//! by the call that uses it instead of by an op 3 later.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};

/// One metadata value with its declared type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    String(String),
    Integer(i64),
    Float(f64),
    /// A SemVer 2.0.0 version, compared by precedence in queries.
    Version(String),
    List(Vec<Value>),
    Boolean(bool),
    Map(Map<String, Value>),
}

impl MetadataValue {
    /// The type name on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetadataValue::String(_) => "string",
            MetadataValue::Integer(_) => "integer",
            MetadataValue::Float(_) => "float",
            MetadataValue::Version(_) => "version",
            MetadataValue::List(_) => "list",
            MetadataValue::Boolean(_) => "boolean",
            MetadataValue::Map(_) => "map",
        }
    }

    /// The value as plain JSON.
    pub fn to_value(&self) -> Value {
        match self {
            MetadataValue::String(s) | MetadataValue::Version(s) => Value::String(s.clone()),
            MetadataValue::Integer(i) => Value::from(*i),
            MetadataValue::Float(f) => Value::from(*f),
            MetadataValue::List(l) => Value::Array(l.clone()),
            MetadataValue::Boolean(b) => Value::Bool(*b),
            MetadataValue::Map(m) => Value::Object(m.clone()),
        }
    }

    /// Parses `TYPE:VALUE`, the form of the CLI's `--meta key=TYPE:VALUE`. Types are
    /// `string` (`str`), `integer` (`int`), `float`, `version`, `boolean` (`bool`), and
    /// `list` / `map` with a JSON value.
    pub fn parse_typed(input: &str) -> Result<MetadataValue, String> {
        let (ty, value) = input
            .split_once(':')
            .ok_or_else(|| format!("expected TYPE:VALUE, got {input:?}"))?;
        Ok(match ty {
            "string" | "str" => MetadataValue::String(value.to_owned()),
            "integer" | "int" => MetadataValue::Integer(
                value
                    .parse()
                    .map_err(|_| format!("{value:?} is not an integer"))?,
            ),
            "float" => MetadataValue::Float(
                value
                    .parse()
                    .map_err(|_| format!("{value:?} is not a float"))?,
            ),
            "version" => MetadataValue::Version(value.to_owned()),
            "boolean" | "bool" => MetadataValue::Boolean(match value {
                "true" => true,
                "false" => false,
                _ => return Err(format!("{value:?} is not true or false")),
            }),
            "list" => match serde_json::from_str(value) {
                Ok(Value::Array(items)) => MetadataValue::List(items),
                _ => return Err(format!("{value:?} is not a JSON array")),
            },
            "map" => match serde_json::from_str(value) {
                Ok(Value::Object(map)) => MetadataValue::Map(map),
                _ => return Err(format!("{value:?} is not a JSON object")),
            },
            other => {
                return Err(format!(
                    "unknown type {other:?} (expected string, integer, float, version, boolean, list or map)"
                ));
            }
        })
    }
}

/// A metadata document: keys with typed values. Serializes to the wire format
/// `{"key": {"type": ..., "value": ...}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: BTreeMap<String, MetadataValue>,
}

/// Keys ganglion maintains itself (SPEC §5.3); clients may not write them.
pub const RESERVED_KEYS: [&str; 6] = [
    "last_heartbeat_time",
    "restricted",
    "encoding",
    "ip",
    "namespace",
    "receive_client_updates",
];

/// The server's default `metadata.max_depth`.
const MAX_DEPTH: usize = 32;

/// A metadata entry the server would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid metadata: {key}: {reason}")]
pub struct MetadataError {
    pub key: String,
    pub reason: String,
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata::default()
    }

    pub fn string(self, key: impl Into<String>, value: impl Into<String>) -> Metadata {
        self.with(key, MetadataValue::String(value.into()))
    }

    pub fn integer(self, key: impl Into<String>, value: i64) -> Metadata {
        self.with(key, MetadataValue::Integer(value))
    }

    pub fn float(self, key: impl Into<String>, value: f64) -> Metadata {
        self.with(key, MetadataValue::Float(value))
    }

    pub fn version(self, key: impl Into<String>, value: impl Into<String>) -> Metadata {
        self.with(key, MetadataValue::Version(value.into()))
    }

    pub fn boolean(self, key: impl Into<String>, value: bool) -> Metadata {
        self.with(key, MetadataValue::Boolean(value))
    }

    pub fn list(self, key: impl Into<String>, value: Vec<Value>) -> Metadata {
        self.with(key, MetadataValue::List(value))
    }

    pub fn map(self, key: impl Into<String>, value: Map<String, Value>) -> Metadata {
        self.with(key, MetadataValue::Map(value))
    }

    /// Sets `key` to `value`, replacing any previous value and type.
    pub fn with(mut self, key: impl Into<String>, value: MetadataValue) -> Metadata {
        self.insert(key, value);
        self
    }

    pub fn insert(&mut self, key: impl Into<String>, value: MetadataValue) {
        self.entries.insert(key.into(), value);
    }

    /// Parses `KEY=TYPE:VALUE` (the CLI's `--meta`) into this document.
    pub fn insert_parsed(&mut self, entry: &str) -> Result<(), String> {
        let (key, typed) = entry
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=TYPE:VALUE, got {entry:?}"))?;
        let value = MetadataValue::parse_typed(typed).map_err(|e| format!("{key}: {e}"))?;
        self.insert(key, value);
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.entries.get(key)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Applies `update` as the server's default `merge` strategy does (SPEC §5.5): each key of
    /// the update replaces that key wholesale; other keys stay.
    pub fn merge(&mut self, update: &Metadata) {
        for (key, value) in &update.entries {
            self.entries.insert(key.clone(), value.clone());
        }
    }

    /// Checks every entry against the rules the server applies (SPEC §5.2–§5.6, with the
    /// default depth limit); the first failing key (in key order) is reported.
    pub fn validate(&self) -> Result<(), MetadataError> {
        for (key, value) in &self.entries {
            let fail = |reason: &str| MetadataError {
                key: key.clone(),
                reason: reason.to_owned(),
            };
            if RESERVED_KEYS.contains(&key.as_str()) {
                return Err(fail("forbidden metadata key (ganglion maintains it)"));
            }
            match value {
                MetadataValue::Float(f) if !f.is_finite() => {
                    return Err(fail("a float must be finite"));
                }
                MetadataValue::Version(v) if !is_semver(v) => {
                    return Err(fail(&format!(
                        "{v:?} is not a SemVer 2.0.0 version (MAJOR.MINOR.PATCH[-pre][+build])"
                    )));
                }
                MetadataValue::List(_) | MetadataValue::Map(_)
                    if depth(&value.to_value()) > MAX_DEPTH =>
                {
                    return Err(fail(&format!(
                        "value nested too deeply (max depth {MAX_DEPTH})"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The wire format as a JSON value.
    pub fn to_wire(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a, T: Serialize> {
            #[serde(rename = "type")]
            ty: &'static str,
            value: &'a T,
        }
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            let ty = value.type_name();
            match value {
                MetadataValue::String(s) | MetadataValue::Version(s) => {
                    map.serialize_entry(key, &Entry { ty, value: s })?
                }
                MetadataValue::Integer(i) => map.serialize_entry(key, &Entry { ty, value: i })?,
                MetadataValue::Float(f) => map.serialize_entry(key, &Entry { ty, value: f })?,
                MetadataValue::List(l) => map.serialize_entry(key, &Entry { ty, value: l })?,
                MetadataValue::Boolean(b) => map.serialize_entry(key, &Entry { ty, value: b })?,
                MetadataValue::Map(m) => map.serialize_entry(key, &Entry { ty, value: m })?,
            }
        }
        map.end()
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// SemVer 2.0.0 (SPEC §5.2): numeric MAJOR.MINOR.PATCH without leading zeros, optional
/// pre-release (numeric identifiers without leading zeros) and build metadata.
pub fn is_semver(v: &str) -> bool {
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numeric = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'))
            && s.parse::<u64>().is_ok()
    };
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return false;
    }
    if let Some(pre) = pre
        && !pre.split('.').all(|id| {
            ident(id)
                && (!id.bytes().all(|b| b.is_ascii_digit()) || id == "0" || !id.starts_with('0'))
        })
    {
        return false;
    }
    if let Some(build) = build
        && !build.split('.').all(ident)
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_builder_serializes_to_the_wire_format() {
        let metadata = Metadata::new()
            .string("region", "eu")
            .integer("load", 3)
            .float("cpu", 0.5)
            .version("v", "1.2.0")
            .boolean("gpu", true)
            .list("tags", vec![json!("a"), json!(1)])
            .map("limits", json!({"rps": 100}).as_object().unwrap().clone());
        assert_eq!(
            metadata.to_wire(),
            json!({
                "region": {"type": "string", "value": "eu"},
                "load": {"type": "integer", "value": 3},
                "cpu": {"type": "float", "value": 0.5},
                "v": {"type": "version", "value": "1.2.0"},
                "gpu": {"type": "boolean", "value": true},
                "tags": {"type": "list", "value": ["a", 1]},
                "limits": {"type": "map", "value": {"rps": 100}},
            })
        );
        assert_eq!(metadata.validate(), Ok(()));
    }

    #[test]
    fn merge_replaces_the_keys_of_the_update_and_keeps_the_rest() {
        let mut metadata = Metadata::new().integer("load", 1).string("region", "eu");
        metadata.merge(&Metadata::new().string("load", "high").boolean("new", true));
        assert_eq!(
            metadata.to_wire(),
            json!({"load": {"type": "string", "value": "high"},
                   "region": {"type": "string", "value": "eu"},
                   "new": {"type": "boolean", "value": true}})
        );
    }

    #[test]
    fn reserved_keys_bad_versions_and_non_finite_floats_are_refused_by_key() {
        let cases = [
            (Metadata::new().string("ip", "x"), "ip"),
            (Metadata::new().version("v", "1.0"), "v"),
            (Metadata::new().version("v", "v1.0.0"), "v"),
            (Metadata::new().version("v", "01.0.0"), "v"),
            (Metadata::new().float("f", f64::NAN), "f"),
        ];
        for (metadata, key) in cases {
            assert_eq!(metadata.validate().unwrap_err().key, key, "{metadata:?}");
        }
    }

    #[test]
    fn semver_follows_the_spec_grammar() {
        for ok in [
            "0.0.0",
            "1.10.0",
            "1.0.0-alpha.1",
            "1.0.0-0.3.7",
            "1.0.0+build.5",
            "1.0.0-rc-1+x",
        ] {
            assert!(is_semver(ok), "{ok}");
        }
        for bad in [
            "1",
            "1.0",
            "1.0.0.0",
            "1.0.0-",
            "1.0.0-01",
            "1.0.0+",
            "1.0.0-a..b",
            " 1.0.0",
            "1.0.0 ",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn typed_entries_parse_from_the_cli_form() {
        let mut metadata = Metadata::new();
        for entry in [
            "region=string:eu-west",
            "load=int:3",
            "cpu=float:0.25",
            "v=version:1.2.0",
            "gpu=bool:true",
            "tags=list:[\"a\",2]",
            "limits=map:{\"rps\":5}",
            "url=string:http://x:1",
        ] {
            metadata.insert_parsed(entry).unwrap();
        }
        assert_eq!(
            metadata.to_wire(),
            json!({"region": {"type": "string", "value": "eu-west"},
                   "load": {"type": "integer", "value": 3},
                   "cpu": {"type": "float", "value": 0.25},
                   "v": {"type": "version", "value": "1.2.0"},
                   "gpu": {"type": "boolean", "value": true},
                   "tags": {"type": "list", "value": ["a", 2]},
                   "limits": {"type": "map", "value": {"rps": 5}},
                   "url": {"type": "string", "value": "http://x:1"}})
        );
        for (bad, message) in [
            ("load", "expected KEY=TYPE:VALUE"),
            ("load=3", "load: expected TYPE:VALUE"),
            ("load=integer:x", "load: \"x\" is not an integer"),
            ("x=colour:red", "unknown type \"colour\""),
            ("t=list:{}", "is not a JSON array"),
        ] {
            let error = Metadata::new().insert_parsed(bad).unwrap_err();
            assert!(error.contains(message), "{bad}: {error}");
        }
    }
}
