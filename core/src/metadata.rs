//! Client metadata (SPEC §5): typed entries, the six reserved keys, validation with the exact
//! per-key messages, size and depth limits, and the merge/replace update strategies.

use std::collections::BTreeMap;

use crate::error::KeyErrors;
use crate::frame::Encoding;
use crate::query::Document;
use crate::value::{Map, Value};

/// The declared type of a metadata entry (SPEC §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaType {
    String,
    Integer,
    Float,
    Version,
    List,
    Boolean,
    Map,
}

impl MetaType {
    pub fn name(self) -> &'static str {
        match self {
            MetaType::String => "string",
            MetaType::Integer => "integer",
            MetaType::Float => "float",
            MetaType::Version => "version",
            MetaType::List => "list",
            MetaType::Boolean => "boolean",
            MetaType::Map => "map",
        }
    }

    pub fn from_name(name: &str) -> Option<MetaType> {
        Some(match name {
            "string" => MetaType::String,
            "integer" => MetaType::Integer,
            "float" => MetaType::Float,
            "version" => MetaType::Version,
            "list" => MetaType::List,
            "boolean" => MetaType::Boolean,
            "map" => MetaType::Map,
            _ => return None,
        })
    }

    /// Checks `value` against the type and returns the stored form (an integer given for a
    /// `float` becomes a float).
    fn admit(self, value: &Value) -> Option<Value> {
        match (self, value) {
            (MetaType::String, Value::String(_))
            | (MetaType::Integer, Value::Int(_) | Value::UInt(_))
            | (MetaType::Float, Value::Float(_))
            | (MetaType::List, Value::Array(_))
            | (MetaType::Boolean, Value::Bool(_))
            | (MetaType::Map, Value::Object(_)) => Some(value.clone()),
            (MetaType::Float, Value::Int(_) | Value::UInt(_)) => value.as_f64().map(Value::Float),
            (MetaType::Version, Value::String(s)) => {
                crate::semver::Version::parse(s).map(|_| value.clone())
            }
            _ => None,
        }
    }

    /// The type `namespace` is declared with: derived from its value (SPEC §5.3).
    fn of_namespace(value: &Value) -> MetaType {
        match value {
            Value::Int(_) | Value::UInt(_) => MetaType::Integer,
            Value::Float(_) => MetaType::Float,
            Value::Bool(_) => MetaType::Boolean,
            Value::Array(_) => MetaType::List,
            Value::Object(_) => MetaType::Map,
            Value::Null | Value::String(_) => MetaType::String,
        }
    }
}

/// The keys ganglion maintains itself (SPEC §5.3).
pub mod reserved {
    pub const LAST_HEARTBEAT_TIME: &str = "last_heartbeat_time";
    pub const RESTRICTED: &str = "restricted";
    pub const ENCODING: &str = "encoding";
    pub const IP: &str = "ip";
    pub const NAMESPACE: &str = "namespace";
    pub const RECEIVE_CLIENT_UPDATES: &str = "receive_client_updates";

    pub const ALL: [&str; 6] = [
        LAST_HEARTBEAT_TIME,
        RESTRICTED,
        ENCODING,
        IP,
        NAMESPACE,
        RECEIVE_CLIENT_UPDATES,
    ];

    pub fn contains(key: &str) -> bool {
        ALL.contains(&key)
    }
}

/// How `UPDATE_METADATA` combines with what is stored (SPEC §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateStrategy {
    #[default]
    Merge,
    Replace,
}

/// The metadata limits (SPEC §5.6) and the strategy.
#[derive(Debug, Clone, Copy)]
pub struct MetadataLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub strategy: UpdateStrategy,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        MetadataLimits {
            max_bytes: 65_536,
            max_depth: 32,
            strategy: UpdateStrategy::Merge,
        }
    }
}

/// One typed entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub ty: MetaType,
    pub value: Value,
}

/// The values of the reserved keys a client gets at identify.
#[derive(Debug, Clone)]
pub struct ReservedValues {
    pub last_heartbeat_time: u64,
    pub restricted: bool,
    pub encoding: Encoding,
    pub ip: Option<String>,
    pub namespace: Value,
    pub receive_client_updates: bool,
}

/// A client's whole metadata document: user-defined and reserved entries in one map, so that
/// queries see a single document.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    entries: BTreeMap<String, Entry>,
    /// The SPEC §5.6 size of the user-defined keys plus `namespace`, kept up to date.
    size: usize,
}

/// A validated update, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    entries: Vec<(String, Entry)>,
    strategy: UpdateStrategy,
}

impl Update {
    /// The keys this update writes.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn strategy(&self) -> UpdateStrategy {
        self.strategy
    }
}

fn entry_size(key: &str, value: &Value) -> usize {
    key.len() + value.json_len()
}

// === impl Metadata ===

impl Metadata {
    /// Builds a client's metadata at identify (SPEC §4.3 check 13, §5.4): the initial metadata
    /// (an object or null) and `namespace` are validated atomically.
    pub fn initial(
        metadata: &Value,
        reserved: ReservedValues,
        limits: &MetadataLimits,
    ) -> Result<Metadata, KeyErrors> {
        let update = match metadata {
            Value::Null => Map::new(),
            Value::Object(map) => map.clone(),
            _ => {
                return Err(KeyErrors::from([(
                    "metadata".to_owned(),
                    "metadata: must be an object".to_owned(),
                )]));
            }
        };
        let mut errors = KeyErrors::new();
        let mut entries = validate_entries(&update, limits, &mut errors);
        if reserved.namespace.deeper_than(limits.max_depth) {
            errors.insert(
                reserved::NAMESPACE.to_owned(),
                depth_message(reserved::NAMESPACE, limits),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let size = entries
            .iter()
            .map(|(k, e)| entry_size(k, &e.value))
            .sum::<usize>()
            + entry_size(reserved::NAMESPACE, &reserved.namespace);
        if size > limits.max_bytes {
            // A given namespace is part of what identify writes, so it is named too; alone,
            // it would otherwise leave the error without a single message.
            let namespace = reserved::NAMESPACE.to_owned();
            let given = (!reserved.namespace.is_null()).then_some(&namespace);
            return Err(size_errors(update.keys().chain(given), limits));
        }
        let namespace_type = MetaType::of_namespace(&reserved.namespace);
        entries.extend([
            (
                reserved::LAST_HEARTBEAT_TIME.to_owned(),
                Entry {
                    ty: MetaType::Integer,
                    value: Value::from(reserved.last_heartbeat_time),
                },
            ),
            (
                reserved::RESTRICTED.to_owned(),
                Entry {
                    ty: MetaType::Boolean,
                    value: Value::Bool(reserved.restricted),
                },
            ),
            (
                reserved::ENCODING.to_owned(),
                Entry {
                    ty: MetaType::String,
                    value: Value::from(reserved.encoding.as_str()),
                },
            ),
            (
                reserved::IP.to_owned(),
                Entry {
                    ty: MetaType::String,
                    value: Value::from(reserved.ip),
                },
            ),
            (
                reserved::NAMESPACE.to_owned(),
                Entry {
                    ty: namespace_type,
                    value: reserved.namespace,
                },
            ),
            (
                reserved::RECEIVE_CLIENT_UPDATES.to_owned(),
                Entry {
                    ty: MetaType::Boolean,
                    value: Value::Bool(reserved.receive_client_updates),
                },
            ),
        ]);
        Ok(Metadata {
            entries: entries.into_iter().collect(),
            size,
        })
    }

    /// Validates an `UPDATE_METADATA` against the current document (SPEC §5.4). Nothing is
    /// applied on error.
    pub fn prepare(&self, update: &Map, limits: &MetadataLimits) -> Result<Update, KeyErrors> {
        let mut errors = KeyErrors::new();
        let entries = validate_entries(update, limits, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let added: usize = entries.iter().map(|(k, e)| entry_size(k, &e.value)).sum();
        let new_size = match limits.strategy {
            UpdateStrategy::Merge => {
                let replaced: usize = entries
                    .iter()
                    .filter_map(|(k, _)| self.entries.get(k).map(|old| entry_size(k, &old.value)))
                    .sum();
                self.size - replaced + added
            }
            UpdateStrategy::Replace => added + self.namespace_size(),
        };
        if new_size > limits.max_bytes {
            return Err(size_errors(update.keys(), limits));
        }
        Ok(Update {
            entries,
            strategy: limits.strategy,
        })
    }

    /// Applies a prepared update. Returns the user keys whose entry changed or disappeared, so
    /// indexes can be maintained.
    pub fn apply(&mut self, update: Update) -> Vec<String> {
        let mut touched: Vec<String> = Vec::new();
        if update.strategy == UpdateStrategy::Replace {
            let keep_size = self.namespace_size();
            self.entries.retain(|k, _| {
                let keep = reserved::contains(k);
                if !keep {
                    touched.push(k.clone());
                }
                keep
            });
            self.size = keep_size;
        }
        for (key, entry) in update.entries {
            let new_size = entry_size(&key, &entry.value);
            if let Some(old) = self.entries.insert(key.clone(), entry) {
                self.size -= entry_size(&key, &old.value);
            }
            self.size += new_size;
            touched.push(key);
        }
        touched.sort_unstable();
        touched.dedup();
        touched
    }

    fn namespace_size(&self) -> usize {
        self.entries
            .get(reserved::NAMESPACE)
            .map_or(0, |e| entry_size(reserved::NAMESPACE, &e.value))
    }

    /// Sets a reserved value that ganglion maintains (`last_heartbeat_time`).
    pub fn set_reserved(&mut self, key: &'static str, value: Value) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.value = value;
        }
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e))
    }

    /// The SPEC §5.6 size of the document.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Plain values of every key, as client objects show them (SPEC §5.7).
    pub fn values(&self) -> Map {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    /// The declared type of every key.
    pub fn types(&self) -> Map {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), Value::from(e.ty.name())))
            .collect()
    }
}

impl Document for Metadata {
    fn top(&self, key: &str) -> Option<(&Value, bool)> {
        self.entries
            .get(key)
            .map(|e| (&e.value, e.ty == MetaType::Version))
    }
}

/// Rules 1–5 of SPEC §5.4 for every entry; the first failing rule per key wins.
fn validate_entries(
    update: &Map,
    limits: &MetadataLimits,
    errors: &mut KeyErrors,
) -> Vec<(String, Entry)> {
    let mut entries = Vec::with_capacity(update.len());
    for (key, raw) in update {
        match validate_entry(key, raw, limits) {
            Ok(entry) => entries.push((key.clone(), entry)),
            Err(message) => {
                errors.insert(key.clone(), message);
            }
        }
    }
    entries
}

fn validate_entry(key: &str, raw: &Value, limits: &MetadataLimits) -> Result<Entry, String> {
    let (Some(ty), Some(value)) = (
        raw.as_object().and_then(|m| m.get("type")),
        raw.as_object().and_then(|m| m.get("value")),
    ) else {
        return Err(format!(
            "{key}: malformed entry (expected an object with 'type' and 'value')"
        ));
    };
    let Some(ty) = ty.as_str().and_then(MetaType::from_name) else {
        let rendered = match ty {
            Value::String(s) => s.clone(),
            other => other.to_json(),
        };
        return Err(format!("{key}: type '{rendered}' doesn't exist"));
    };
    if reserved::contains(key) {
        return Err(format!("{key}: forbidden metadata key"));
    }
    let Some(value) = ty.admit(value) else {
        return Err(format!("{key}: value fails validation for '{}'", ty.name()));
    };
    if value.deeper_than(limits.max_depth) {
        return Err(depth_message(key, limits));
    }
    Ok(Entry { ty, value })
}

fn depth_message(key: &str, limits: &MetadataLimits) -> String {
    format!(
        "{key}: value nested too deeply (max depth {})",
        limits.max_depth
    )
}

fn size_errors<'a>(keys: impl Iterator<Item = &'a String>, limits: &MetadataLimits) -> KeyErrors {
    keys.map(|k| {
        (
            k.clone(),
            format!(
                "{k}: metadata size limit exceeded (max {} bytes)",
                limits.max_bytes
            ),
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ty: &str, value: Value) -> Value {
        Value::Object(Map::from([
            ("type".to_owned(), Value::from(ty)),
            ("value".to_owned(), value),
        ]))
    }

    fn reserved() -> ReservedValues {
        ReservedValues {
            last_heartbeat_time: 1,
            restricted: false,
            encoding: Encoding::Json,
            ip: Some("127.0.0.1".into()),
            namespace: Value::Null,
            receive_client_updates: false,
        }
    }

    fn doc() -> Metadata {
        Metadata::initial(&Value::Null, reserved(), &MetadataLimits::default()).unwrap()
    }

    #[test]
    fn the_spec_example_reports_each_failing_key_once() {
        let update = Map::from([
            ("a".to_owned(), entry("nope", Value::Int(1))),
            ("ip".to_owned(), entry("string", Value::from("x"))),
            ("n".to_owned(), entry("integer", Value::Float(1.5))),
            ("ok".to_owned(), entry("string", Value::from("fine"))),
        ]);
        let errors = doc()
            .prepare(&update, &MetadataLimits::default())
            .unwrap_err();
        assert_eq!(
            errors,
            KeyErrors::from([
                ("a".into(), "a: type 'nope' doesn't exist".into()),
                ("ip".into(), "ip: forbidden metadata key".into()),
                ("n".into(), "n: value fails validation for 'integer'".into()),
            ])
        );
    }

    #[test]
    fn rule_precedence_and_messages() {
        let limits = MetadataLimits::default();
        let check = |raw: Value| validate_entry("k", &raw, &limits).unwrap_err();
        assert_eq!(
            check(Value::Int(5)),
            "k: malformed entry (expected an object with 'type' and 'value')"
        );
        assert_eq!(
            check(Value::Object(Map::from([(
                "type".into(),
                Value::from("string")
            )]))),
            "k: malformed entry (expected an object with 'type' and 'value')"
        );
        assert_eq!(
            check(entry("", Value::Int(1))).as_str(),
            "k: type '' doesn't exist"
        );
        let numeric_type = Value::Object(Map::from([
            ("type".into(), Value::Int(5)),
            ("value".into(), Value::Int(1)),
        ]));
        assert_eq!(check(numeric_type), "k: type '5' doesn't exist");
        assert_eq!(
            check(entry("integer", Value::Bool(true))),
            "k: value fails validation for 'integer'"
        );
        assert_eq!(
            check(entry("version", Value::from("1.0"))),
            "k: value fails validation for 'version'"
        );
        let mut deep = Value::Int(0);
        for _ in 0..33 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(
            check(entry("list", deep)),
            "k: value nested too deeply (max depth 32)"
        );
        // A forbidden key with an unknown type reports the type first, as the original did.
        assert_eq!(
            validate_entry("ip", &entry("nope", Value::Int(1)), &limits).unwrap_err(),
            "ip: type 'nope' doesn't exist"
        );
    }

    #[test]
    fn integers_are_accepted_as_floats() {
        let mut md = doc();
        let update = Map::from([("x".to_owned(), entry("float", Value::Int(1)))]);
        let prepared = md.prepare(&update, &MetadataLimits::default()).unwrap();
        md.apply(prepared);
        assert_eq!(
            md.get("x"),
            Some(&Entry {
                ty: MetaType::Float,
                value: Value::Float(1.0)
            })
        );
    }

    #[test]
    fn merge_keeps_other_keys_and_replace_drops_them() {
        let limits = MetadataLimits::default();
        let mut md = doc();
        let a = Map::from([("a".to_owned(), entry("integer", Value::Int(1)))]);
        let b = Map::from([("b".to_owned(), entry("integer", Value::Int(2)))]);
        let u = md.prepare(&a, &limits).unwrap();
        md.apply(u);
        let u = md.prepare(&b, &limits).unwrap();
        md.apply(u);
        assert!(md.get("a").is_some() && md.get("b").is_some());

        let replace = MetadataLimits {
            strategy: UpdateStrategy::Replace,
            ..limits
        };
        let u = md.prepare(&b, &replace).unwrap();
        let touched = md.apply(u);
        assert_eq!(touched, vec!["a".to_owned(), "b".to_owned()]);
        assert!(md.get("a").is_none() && md.get("b").is_some());
        assert!(md.get(reserved::ENCODING).is_some());
        let u = md.prepare(&Map::new(), &replace).unwrap();
        md.apply(u);
        assert!(md.get("b").is_none());
        assert_eq!(md.iter().count(), 6);
    }

    #[test]
    fn the_size_limit_names_every_key_of_the_update() {
        let limits = MetadataLimits::default();
        let md = doc();
        let update = Map::from([
            (
                "big".to_owned(),
                entry("string", Value::from("x".repeat(70_000))),
            ),
            ("small".to_owned(), entry("integer", Value::Int(1))),
        ]);
        let errors = md.prepare(&update, &limits).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(
            errors["small"],
            "small: metadata size limit exceeded (max 65536 bytes)"
        );
    }

    #[test]
    fn size_accounting_follows_merges() {
        let limits = MetadataLimits::default();
        let mut md = doc();
        let base = md.size();
        let u = md
            .prepare(
                &Map::from([("k".to_owned(), entry("string", Value::from("abc")))]),
                &limits,
            )
            .unwrap();
        md.apply(u);
        assert_eq!(md.size(), base + 1 + 5);
        let u = md
            .prepare(
                &Map::from([("k".to_owned(), entry("integer", Value::Int(7)))]),
                &limits,
            )
            .unwrap();
        md.apply(u);
        assert_eq!(md.size(), base + 1 + 1);
    }

    #[test]
    fn identify_metadata_must_be_an_object() {
        let errors =
            Metadata::initial(&Value::Int(1), reserved(), &MetadataLimits::default()).unwrap_err();
        assert_eq!(errors["metadata"], "metadata: must be an object");
    }

    #[test]
    fn an_oversize_identify_names_the_namespace_when_one_was_given() {
        let limits = MetadataLimits {
            max_bytes: 20,
            ..MetadataLimits::default()
        };
        let message = |k: &str| format!("{k}: metadata size limit exceeded (max 20 bytes)");
        let mut r = reserved();
        r.namespace = Value::from("x".repeat(20));
        let errors = Metadata::initial(&Value::Null, r.clone(), &limits).unwrap_err();
        assert_eq!(
            errors,
            KeyErrors::from([("namespace".into(), message("namespace"))])
        );
        let metadata = Value::Object(Map::from([(
            "k".to_owned(),
            entry("integer", Value::Int(1)),
        )]));
        let errors = Metadata::initial(&metadata, r, &limits).unwrap_err();
        assert_eq!(errors.len(), 2);
        let big = Value::Object(Map::from([(
            "k".to_owned(),
            entry("string", Value::from("x".repeat(20))),
        )]));
        let errors = Metadata::initial(&big, reserved(), &limits).unwrap_err();
        assert_eq!(errors, KeyErrors::from([("k".into(), message("k"))]));
    }

    #[test]
    fn namespace_type_follows_its_value() {
        let mut r = reserved();
        r.namespace = Value::Int(3);
        let md = Metadata::initial(&Value::Null, r, &MetadataLimits::default()).unwrap();
        assert_eq!(md.get("namespace").unwrap().ty, MetaType::Integer);
        assert_eq!(doc().get("namespace").unwrap().ty, MetaType::String);
    }
}
