//! Queries (SPEC §6), built in the v2 form.
//!
//! ```
//! use ganglion_client::{Condition, Query};
//! let query = Query::application("api")
//!     .eq("region", "eu-west")
//!     .gte("version", "1.2.0")
//!     .or([Condition::lt("load", 10), Condition::eq("/flags/priority", true)])
//!     .select_min("load");
//! assert_eq!(
//!     query.to_json()["ops"][0],
//!     serde_json::json!({"path": "/region", "op": "$eq", "to": {"value": "eu-west"}})
//! );
//! ```
//!
//! Paths: a path starting with `/` is a JSON Pointer into the metadata (`/limits/max_load`);
//! anything else names a top-level key literally (`a/b` becomes `/a~1b`).

use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    Contains,
    NContains,
}

impl Op {
    /// The operator's name on the wire (`$eq`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "$eq",
            Op::Ne => "$ne",
            Op::Gt => "$gt",
            Op::Gte => "$gte",
            Op::Lt => "$lt",
            Op::Lte => "$lte",
            Op::In => "$in",
            Op::Nin => "$nin",
            Op::Contains => "$contains",
            Op::NContains => "$ncontains",
        }
    }

    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "$eq" => Op::Eq,
            "$ne" => Op::Ne,
            "$gt" => Op::Gt,
            "$gte" => Op::Gte,
            "$lt" => Op::Lt,
            "$lte" => Op::Lte,
            "$in" => Op::In,
            "$nin" => Op::Nin,
            "$contains" => Op::Contains,
            "$ncontains" => Op::NContains,
            _ => return None,
        })
    }
}

/// What a path is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A literal value (`{"value": ...}`).
    Value(Value),
    /// Another path of the same client's metadata, with a default for when it is missing
    /// (`{"path": ..., "default": ...}`).
    Path { path: String, default: Value },
}

/// One element of `ops` (or of a logical operator's `with`).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Compare { path: String, op: Op, to: Operand },
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Nor(Vec<Condition>),
}

/// A top-level key becomes a pointer; a pointer stays as it is.
pub fn to_pointer(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{}", path.replace('~', "~0").replace('/', "~1"))
    }
}

impl Condition {
    /// `path <op> value`.
    pub fn compare(path: impl AsRef<str>, op: Op, value: impl Into<Value>) -> Condition {
        Condition::Compare {
            path: to_pointer(path.as_ref()),
            op,
            to: Operand::Value(value.into()),
        }
    }

    /// `path <op> other_path` on the same client; `default` stands in when `other_path` is
    /// missing.
    pub fn compare_path(
        path: impl AsRef<str>,
        op: Op,
        other_path: impl AsRef<str>,
        default: impl Into<Value>,
    ) -> Condition {
        Condition::Compare {
            path: to_pointer(path.as_ref()),
            op,
            to: Operand::Path {
                path: to_pointer(other_path.as_ref()),
                default: default.into(),
            },
        }
    }

    pub fn eq(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::Eq, value)
    }
    pub fn ne(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::Ne, value)
    }
    pub fn gt(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::Gt, value)
    }
    pub fn gte(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::Gte, value)
    }
    pub fn lt(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::Lt, value)
    }
    pub fn lte(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::Lte, value)
    }
    /// `path` equals one of `values`.
    pub fn is_in<V: Into<Value>>(
        path: impl AsRef<str>,
        values: impl IntoIterator<Item = V>,
    ) -> Condition {
        Condition::compare(path, Op::In, list(values))
    }
    /// `path` equals none of `values` (or is missing).
    pub fn not_in<V: Into<Value>>(
        path: impl AsRef<str>,
        values: impl IntoIterator<Item = V>,
    ) -> Condition {
        Condition::compare(path, Op::Nin, list(values))
    }
    /// The list at `path` has an element equal to `value`.
    pub fn contains(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::Contains, value)
    }
    pub fn not_contains(path: impl AsRef<str>, value: impl Into<Value>) -> Condition {
        Condition::compare(path, Op::NContains, value)
    }
    pub fn and(with: impl IntoIterator<Item = Condition>) -> Condition {
        Condition::And(with.into_iter().collect())
    }
    pub fn or(with: impl IntoIterator<Item = Condition>) -> Condition {
        Condition::Or(with.into_iter().collect())
    }
    pub fn nor(with: impl IntoIterator<Item = Condition>) -> Condition {
        Condition::Nor(with.into_iter().collect())
    }
    /// The negation of `condition`: `$nor` of it alone.
    #[allow(clippy::should_implement_trait)]
    pub fn not(condition: Condition) -> Condition {
        Condition::Nor(vec![condition])
    }

    /// The condition as its JSON element.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn from_json(value: &Value) -> Result<Condition, String> {
        let object = value.as_object().ok_or("op: must be an object")?;
        let op = object
            .get("op")
            .and_then(Value::as_str)
            .ok_or("op: only the v2 form ({\"path\", \"op\", \"to\"}) is supported here")?;
        let logical = |make: fn(Vec<Condition>) -> Condition| -> Result<Condition, String> {
            let with = object
                .get("with")
                .and_then(Value::as_array)
                .ok_or("with: must be a list")?;
            Ok(make(
                with.iter()
                    .map(Condition::from_json)
                    .collect::<Result<_, _>>()?,
            ))
        };
        match op {
            "$and" => return logical(Condition::And),
            "$or" => return logical(Condition::Or),
            "$nor" => return logical(Condition::Nor),
            _ => {}
        }
        let op = Op::parse(op).ok_or_else(|| format!("op: unknown operator '{op}'"))?;
        let path = object
            .get("path")
            .and_then(Value::as_str)
            .ok_or("path: must be a string")?;
        let to = object
            .get("to")
            .and_then(Value::as_object)
            .ok_or("to: must be an object")?;
        let to = match (to.get("value"), to.get("path")) {
            (Some(value), _) => Operand::Value(value.clone()),
            (None, Some(Value::String(other))) => Operand::Path {
                path: other.clone(),
                default: to.get("default").cloned().unwrap_or(Value::Null),
            },
            _ => return Err("to: must contain 'value' or 'path'".to_owned()),
        };
        Ok(Condition::Compare {
            path: path.to_owned(),
            op,
            to,
        })
    }
}

fn list<V: Into<Value>>(values: impl IntoIterator<Item = V>) -> Value {
    Value::Array(values.into_iter().map(Into::into).collect())
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Condition::Compare { path, op, to } => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("path", path)?;
                map.serialize_entry("op", op.as_str())?;
                map.serialize_entry("to", to)?;
                map.end()
            }
            Condition::And(with) | Condition::Or(with) | Condition::Nor(with) => {
                let op = match self {
                    Condition::And(_) => "$and",
                    Condition::Or(_) => "$or",
                    _ => "$nor",
                };
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("op", op)?;
                map.serialize_entry("with", with)?;
                map.end()
            }
        }
    }
}

impl Serialize for Operand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Operand::Value(value) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("value", value)?;
                map.end()
            }
            Operand::Path { path, default } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("path", path)?;
                map.serialize_entry("default", default)?;
                map.end()
            }
        }
    }
}

/// Chooses among matches by a numeric metadata value (SPEC §6.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Min(String),
    Max(String),
    Avg(String),
}

impl Selector {
    /// Parses `min:KEY`, `max:KEY` or `avg:KEY` (the CLI's `--select`).
    pub fn parse(input: &str) -> Result<Selector, String> {
        let (kind, key) = input
            .split_once(':')
            .ok_or_else(|| format!("expected min:KEY, max:KEY or avg:KEY, got {input:?}"))?;
        if key.is_empty() {
            return Err("the selector key must not be empty".to_owned());
        }
        match kind {
            "min" => Ok(Selector::Min(key.to_owned())),
            "max" => Ok(Selector::Max(key.to_owned())),
            "avg" => Ok(Selector::Avg(key.to_owned())),
            other => Err(format!(
                "unknown selector {other:?} (expected min, max or avg)"
            )),
        }
    }
}

/// A query: which clients a SEND, BROADCAST, QUEUE or QUERY_NODES addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// `None` matches every application.
    pub application: Option<String>,
    pub restricted: bool,
    pub key: Option<String>,
    pub droppable: bool,
    pub optional: bool,
    pub ops: Vec<Condition>,
    pub selector: Option<Selector>,
}

impl Query {
    /// Clients of every application.
    pub fn any() -> Query {
        Query::default()
    }

    /// Clients of `application`.
    pub fn application(application: impl Into<String>) -> Query {
        Query {
            application: Some(application.into()),
            ..Query::default()
        }
    }

    /// Adds a condition (all conditions must hold).
    pub fn filter(mut self, condition: Condition) -> Query {
        self.ops.push(condition);
        self
    }

    /// Adds several conditions.
    pub fn filters(mut self, conditions: impl IntoIterator<Item = Condition>) -> Query {
        self.ops.extend(conditions);
        self
    }

    pub fn eq(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::eq(path, value))
    }
    pub fn ne(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::ne(path, value))
    }
    pub fn gt(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::gt(path, value))
    }
    pub fn gte(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::gte(path, value))
    }
    pub fn lt(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::lt(path, value))
    }
    pub fn lte(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::lte(path, value))
    }
    pub fn is_in<V: Into<Value>>(
        self,
        path: impl AsRef<str>,
        values: impl IntoIterator<Item = V>,
    ) -> Query {
        self.filter(Condition::is_in(path, values))
    }
    pub fn not_in<V: Into<Value>>(
        self,
        path: impl AsRef<str>,
        values: impl IntoIterator<Item = V>,
    ) -> Query {
        self.filter(Condition::not_in(path, values))
    }
    pub fn contains(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::contains(path, value))
    }
    pub fn not_contains(self, path: impl AsRef<str>, value: impl Into<Value>) -> Query {
        self.filter(Condition::not_contains(path, value))
    }
    pub fn and(self, with: impl IntoIterator<Item = Condition>) -> Query {
        self.filter(Condition::and(with))
    }
    pub fn or(self, with: impl IntoIterator<Item = Condition>) -> Query {
        self.filter(Condition::or(with))
    }
    pub fn nor(self, with: impl IntoIterator<Item = Condition>) -> Query {
        self.filter(Condition::nor(with))
    }

    /// Picks the recipient among several matches by rendezvous hashing of `key`.
    pub fn key(mut self, key: impl Into<String>) -> Query {
        self.key = Some(key.into());
        self
    }
    /// With no match, drop the message silently instead of answering `no_route`.
    pub fn droppable(mut self) -> Query {
        self.droppable = true;
        self
    }
    /// With no match, fall back to the application alone.
    pub fn optional(mut self) -> Query {
        self.optional = true;
        self
    }
    /// Include restricted clients.
    pub fn restricted(mut self) -> Query {
        self.restricted = true;
        self
    }
    pub fn select(mut self, selector: Selector) -> Query {
        self.selector = Some(selector);
        self
    }
    pub fn select_min(self, key: impl Into<String>) -> Query {
        self.select(Selector::Min(key.into()))
    }
    pub fn select_max(self, key: impl Into<String>) -> Query {
        self.select(Selector::Max(key.into()))
    }
    pub fn select_avg(self, key: impl Into<String>) -> Query {
        self.select(Selector::Avg(key.into()))
    }

    /// The query as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads a query in the v2 form (what [`Query::to_json`] writes). The legacy v1 operator
    /// form is not read here.
    pub fn from_json(value: &Value) -> Result<Query, String> {
        let object = value.as_object().ok_or("query: must be an object")?;
        let truthy = |key: &str| {
            matches!(object.get(key), Some(Value::Bool(true)))
                || object.get(key).and_then(Value::as_str) == Some("true")
        };
        let application = match object.get("application") {
            None | Some(Value::Null) => None,
            Some(Value::String(app)) => Some(app.clone()),
            Some(_) => return Err("application: must be a string or null".to_owned()),
        };
        let ops = match object.get("ops") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ops)) => ops
                .iter()
                .map(Condition::from_json)
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("ops: must be a list".to_owned()),
        };
        let selector = match object.get("selector") {
            None | Some(Value::Null) => None,
            Some(Value::Object(selector)) if selector.len() == 1 => {
                let (kind, key) = selector.iter().next().ok_or("selector: empty")?;
                let key = key
                    .as_str()
                    .filter(|k| !k.is_empty())
                    .ok_or("selector: key must be a non-empty string")?
                    .to_owned();
                Some(match kind.as_str() {
                    "$min" => Selector::Min(key),
                    "$max" => Selector::Max(key),
                    "$avg" => Selector::Avg(key),
                    _ => {
                        return Err(
                            "selector: must be an object with exactly one of $min, $max, $avg"
                                .to_owned(),
                        );
                    }
                })
            }
            Some(_) => {
                return Err(
                    "selector: must be an object with exactly one of $min, $max, $avg".to_owned(),
                );
            }
        };
        Ok(Query {
            application,
            restricted: truthy("restricted"),
            key: object.get("key").and_then(Value::as_str).map(str::to_owned),
            droppable: truthy("droppable"),
            optional: truthy("optional"),
            ops,
            selector,
        })
    }
}

impl Serialize for Query {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = 1
            + usize::from(self.application.is_some())
            + usize::from(self.restricted)
            + usize::from(self.key.is_some())
            + usize::from(self.droppable)
            + usize::from(self.optional)
            + usize::from(self.selector.is_some());
        let mut map = serializer.serialize_map(Some(len))?;
        if let Some(application) = &self.application {
            map.serialize_entry("application", application)?;
        }
        if self.restricted {
            map.serialize_entry("restricted", &true)?;
        }
        if let Some(key) = &self.key {
            map.serialize_entry("key", key)?;
        }
        if self.droppable {
            map.serialize_entry("droppable", &true)?;
        }
        if self.optional {
            map.serialize_entry("optional", &true)?;
        }
        map.serialize_entry("ops", &self.ops)?;
        if let Some(selector) = &self.selector {
            let mut inner = Map::new();
            let (name, key) = match selector {
                Selector::Min(k) => ("$min", k),
                Selector::Max(k) => ("$max", k),
                Selector::Avg(k) => ("$avg", k),
            };
            inner.insert(name.to_owned(), Value::String(key.clone()));
            map.serialize_entry("selector", &inner)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_builder_method_writes_the_v2_form() {
        let query = Query::application("api")
            .eq("region", "eu")
            .ne("a/b", 1)
            .gt("/load", 1.5)
            .gte("v", "1.2.0")
            .lt("n", -1)
            .lte("n", 9)
            .is_in("zone", ["a", "b"])
            .not_in("zone", ["c"])
            .contains("tags", "gpu")
            .not_contains("tags", "old")
            .or([
                Condition::eq("x", true),
                Condition::not(Condition::eq("y", json!(null))),
            ])
            .filter(Condition::compare_path("load", Op::Lt, "/limits/max", 100))
            .key("user-42")
            .droppable()
            .optional()
            .restricted()
            .select_max("load");
        let pointer = |path: &str, op: &str, value: Value| json!({"path": path, "op": op, "to": {"value": value}});
        assert_eq!(
            query.to_json(),
            json!({
                "application": "api", "restricted": true, "key": "user-42",
                "droppable": true, "optional": true,
                "ops": [
                    pointer("/region", "$eq", json!("eu")),
                    pointer("/a~1b", "$ne", json!(1)),
                    pointer("/load", "$gt", json!(1.5)),
                    pointer("/v", "$gte", json!("1.2.0")),
                    pointer("/n", "$lt", json!(-1)),
                    pointer("/n", "$lte", json!(9)),
                    pointer("/zone", "$in", json!(["a", "b"])),
                    pointer("/zone", "$nin", json!(["c"])),
                    pointer("/tags", "$contains", json!("gpu")),
                    pointer("/tags", "$ncontains", json!("old")),
                    {"op": "$or", "with": [
                        pointer("/x", "$eq", json!(true)),
                        {"op": "$nor", "with": [pointer("/y", "$eq", json!(null))]},
                    ]},
                    {"path": "/load", "op": "$lt", "to": {"path": "/limits/max", "default": 100}},
                ],
                "selector": {"$max": "load"},
            })
        );
        assert_eq!(Query::from_json(&query.to_json()), Ok(query));
    }

    #[test]
    fn an_empty_query_matches_every_application() {
        assert_eq!(Query::any().to_json(), json!({"ops": []}));
    }

    #[test]
    fn from_json_refuses_what_it_cannot_read() {
        for (input, error) in [
            (json!([]), "query: must be an object"),
            (json!({"ops": {}}), "ops: must be a list"),
            (json!({"ops": [{"load": {"$gt": 1}}]}), "v2 form"),
            (
                json!({"ops": [{"path": "/a", "op": "$foo", "to": {"value": 1}}]}),
                "unknown operator '$foo'",
            ),
            (
                json!({"ops": [{"path": "/a", "op": "$eq", "to": {}}]}),
                "must contain 'value' or 'path'",
            ),
            (json!({"selector": {"$min": ""}}), "non-empty"),
        ] {
            let got = Query::from_json(&input).unwrap_err();
            assert!(got.contains(error), "{input}: {got}");
        }
    }

    #[test]
    fn selectors_parse_from_the_cli_form() {
        assert_eq!(
            Selector::parse("min:load"),
            Ok(Selector::Min("load".into()))
        );
        assert_eq!(
            Selector::parse("avg:/a/b"),
            Ok(Selector::Avg("/a/b".into()))
        );
        assert!(Selector::parse("median:load").is_err());
        assert!(Selector::parse("min:").is_err());
    }
}
