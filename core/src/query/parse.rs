//! Parsing queries (SPEC §6.1–§6.3, §6.12).
//!
//! The v2 forms and the legacy v1 form are mapped into one [`Cond`] tree, so evaluation and the
//! registry's planner never see which form a client used. A v1 element with a single condition
//! becomes that condition itself, which makes `{"k": {"$eq": 1}}` and
//! `{"path": "/k", "op": "$eq", "to": {"value": 1}}` parse to the same tree.
//!
//! Recursion follows the nesting of the input value, which the decoders bound at
//! [`crate::value::MAX_DECODE_DEPTH`]; logical operators are further bounded by
//! [`QueryLimits::max_depth`].

use super::{
    AppFilter, CmpOp, Cond, Operand, Path, Query, QueryError, QueryLimits, Selector, SelectorKind,
};
use crate::value::{Map, Value};

/// Parses a query value. Every rule and error reason is that of SPEC §6.2, §6.3 and §6.12; when a
/// query has several errors, the first met in field order (`ops`, then `selector`) and then in
/// element and key order is reported.
pub fn parse_query(value: &Value, limits: QueryLimits) -> Result<Query, QueryError> {
    let Value::Object(query) = value else {
        return Err(QueryError::new("query: must be an object"));
    };
    let application = match query.get("application") {
        None | Some(Value::Null) => AppFilter::Any,
        Some(Value::String(app)) => AppFilter::Exact(app.clone()),
        Some(_) => AppFilter::Nothing,
    };
    let key = match query.get("key") {
        Some(Value::String(key)) => Some(key.clone()),
        _ => None,
    };
    let parser = Parser { limits };
    let ops = match query.get("ops") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(elements)) => elements
            .iter()
            .map(|e| parser.element(e, 0))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(QueryError::new("ops: must be a list")),
    };
    Ok(Query {
        application,
        restricted: flag(query.get("restricted")),
        droppable: flag(query.get("droppable")),
        optional: flag(query.get("optional")),
        key,
        ops,
        selector: selector(query.get("selector"))?,
    })
}

/// `true` or `"true"`; anything else, absence included, is false (SPEC §6.2).
fn flag(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

fn selector(value: Option<&Value>) -> Result<Option<Selector>, QueryError> {
    const SHAPE: &str = "selector: must be an object with exactly one of $min, $max, $avg";
    let map = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(QueryError::new(SHAPE)),
    };
    let mut members = map.iter();
    let (Some((name, key)), None) = (members.next(), members.next()) else {
        return Err(QueryError::new(SHAPE));
    };
    let kind = match name.as_str() {
        "$min" => SelectorKind::Min,
        "$max" => SelectorKind::Max,
        "$avg" => SelectorKind::Avg,
        _ => return Err(QueryError::new(SHAPE)),
    };
    let key = match key {
        Value::String(key) if !key.is_empty() => key,
        _ => return Err(QueryError::new("selector: key must be a non-empty string")),
    };
    let path = if key.starts_with('/') {
        // The key is non-empty and starts with `/`, so a bad escape is the only possible error.
        Path::from_pointer(key).map_err(|_| {
            QueryError::new(format!("selector: invalid escape sequence, got: '{key}'"))
        })?
    } else {
        Path::literal_key(key)
    };
    Ok(Some(Selector { kind, path }))
}

/// A logical operator's name, shared by the v2 and v1 forms.
#[derive(Clone, Copy)]
enum Logical {
    And,
    Or,
    Nor,
}

impl Logical {
    fn from_name(name: &str) -> Option<Logical> {
        match name {
            "$and" => Some(Logical::And),
            "$or" => Some(Logical::Or),
            "$nor" => Some(Logical::Nor),
            _ => None,
        }
    }

    fn build(self, conds: Vec<Cond>) -> Cond {
        match self {
            Logical::And => Cond::And(conds),
            Logical::Or => Cond::Or(conds),
            Logical::Nor => Cond::Nor(conds),
        }
    }
}

/// Parsing state shared by every level. `depth` arguments count the logical operators that
/// enclose the element being parsed; top-level `ops` is depth 0 and is not itself a level.
struct Parser {
    limits: QueryLimits,
}

// === impl Parser ===

impl Parser {
    /// One element of `ops` or of a `with` list: v2 when it has a string `op`, else v1.
    fn element(&self, value: &Value, depth: usize) -> Result<Cond, QueryError> {
        let Value::Object(obj) = value else {
            return Err(QueryError::new("op: must be an object"));
        };
        match obj.get("op") {
            Some(Value::String(op)) => self.v2(obj, op, depth),
            _ => self.v1_element(obj, depth),
        }
    }

    /// The level a logical operator found at `depth` occupies, or the depth error.
    fn enter(&self, depth: usize) -> Result<usize, QueryError> {
        let level = depth.saturating_add(1);
        if level > self.limits.max_depth {
            return Err(QueryError::new(format!(
                "query: nested too deeply (max depth {})",
                self.limits.max_depth
            )));
        }
        Ok(level)
    }

    // --- v2 forms (a), (b), (c) ---

    fn v2(&self, obj: &Map, op: &str, depth: usize) -> Result<Cond, QueryError> {
        if let Some(logical) = Logical::from_name(op) {
            let level = self.enter(depth)?;
            let Some(Value::Array(with)) = obj.get("with") else {
                return Err(QueryError::new("with: must be a list"));
            };
            let conds = with
                .iter()
                .map(|e| self.element(e, level))
                .collect::<Result<_, _>>()?;
            return Ok(logical.build(conds));
        }
        let Some(cmp) = CmpOp::from_name(op) else {
            return Err(unknown_operator(op));
        };
        let path = Path::parse(obj.get("path"), "path")?;
        let Some(Value::Object(to)) = obj.get("to") else {
            return Err(QueryError::new("to: must be an object"));
        };
        // `value` wins over `path` when both are present (form (a), SPEC §6.3).
        let operand = if let Some(value) = to.get("value") {
            literal_operand(cmp, value)?
        } else if to.contains_key("path") {
            Operand::Path {
                path: Path::parse(to.get("path"), "to.path")?,
                default: to.get("default").cloned().unwrap_or(Value::Null),
            }
        } else {
            return Err(QueryError::new("to: must contain 'value' or 'path'"));
        };
        Ok(Cond::Cmp {
            path,
            op: cmp,
            operand,
        })
    }

    // --- legacy v1 form (d) ---

    /// `{ member, ... }`: every member must hold.
    fn v1_element(&self, obj: &Map, depth: usize) -> Result<Cond, QueryError> {
        if obj.is_empty() {
            return Err(QueryError::new("op: empty operator object"));
        }
        let conds = obj
            .iter()
            .map(|(name, value)| self.v1_member(name, value, depth))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(conjunction(conds))
    }

    /// `<name>: field-cond`, or `$and`/`$or`/`$nor` over whole elements.
    fn v1_member(&self, name: &str, value: &Value, depth: usize) -> Result<Cond, QueryError> {
        if !name.starts_with('$') {
            return self.field_cond(name, value, depth);
        }
        let Some(logical) = Logical::from_name(name) else {
            // `$eq` directly in an element is misplaced, `$foo` unknown: the same reason.
            return Err(unknown_operator(name));
        };
        let level = self.enter(depth)?;
        let Value::Array(elements) = value else {
            return Err(QueryError::new("with: must be a list"));
        };
        let conds = elements
            .iter()
            .map(|e| self.element(e, level))
            .collect::<Result<_, _>>()?;
        Ok(logical.build(conds))
    }

    /// `{ cond-member, ... }` applied to the top-level key `name`, taken literally.
    fn field_cond(&self, name: &str, value: &Value, depth: usize) -> Result<Cond, QueryError> {
        let ops = match value {
            Value::Object(ops) if !ops.is_empty() => ops,
            _ => {
                return Err(QueryError::new(format!(
                    "op: value for '{name}' must be an object of operators"
                )));
            }
        };
        let conds = ops
            .iter()
            .map(|(op, operand)| self.cond_member(name, op, operand, depth))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(conjunction(conds))
    }

    fn cond_member(
        &self,
        name: &str,
        op: &str,
        operand: &Value,
        depth: usize,
    ) -> Result<Cond, QueryError> {
        if let Some(cmp) = CmpOp::from_name(op) {
            return Ok(Cond::Cmp {
                path: Path::literal_key(name),
                op: cmp,
                operand: literal_operand(cmp, operand)?,
            });
        }
        let Some(logical) = Logical::from_name(op) else {
            return Err(unknown_operator(op));
        };
        let level = self.enter(depth)?;
        let Value::Array(field_conds) = operand else {
            return Err(QueryError::new("with: must be a list"));
        };
        let conds = field_conds
            .iter()
            .map(|fc| self.field_cond(name, fc, level))
            .collect::<Result<_, _>>()?;
        Ok(logical.build(conds))
    }
}

/// A `to.value` operand (v1 operands follow the same rules): `$in`/`$nin` need a list.
fn literal_operand(op: CmpOp, value: &Value) -> Result<Operand, QueryError> {
    if matches!(op, CmpOp::In | CmpOp::Nin) && !matches!(value, Value::Array(_)) {
        return Err(QueryError::new(format!(
            "{}: operand must be a list",
            op.name()
        )));
    }
    Ok(Operand::Value(value.clone()))
}

/// Several conditions that must all hold; a single one stands for itself, so the implicit AND
/// of a v1 element adds no node (and no depth).
fn conjunction(mut conds: Vec<Cond>) -> Cond {
    match conds.pop() {
        Some(only) if conds.is_empty() => only,
        last => {
            conds.extend(last);
            Cond::And(conds)
        }
    }
}

fn unknown_operator(op: &str) -> QueryError {
    QueryError::new(format!("op: unknown operator '{op}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).expect("test JSON")
    }

    fn parse(s: &str) -> Query {
        parse_query(&json(s), QueryLimits::default()).expect("valid query")
    }

    fn ops(elements: &str) -> Vec<Cond> {
        parse(&format!(r#"{{"ops": {elements}}}"#)).ops
    }

    fn cmp(pointer: &str, op: CmpOp, value: &str) -> Cond {
        Cond::Cmp {
            path: Path::from_pointer(pointer).expect("valid pointer"),
            op,
            operand: Operand::Value(json(value)),
        }
    }

    #[test]
    fn fields_default_when_absent() {
        let q = parse("{}");
        assert_eq!(q.application, AppFilter::Any);
        assert!(!q.restricted && !q.droppable && !q.optional);
        assert_eq!((q.key, q.ops, q.selector), (None, vec![], None));
    }

    #[test]
    fn fields_accept_their_documented_shapes() {
        let q = parse(
            r#"{"application": "api", "restricted": "true", "droppable": true, "optional": "yes",
                "key": "user-42", "ops": null, "selector": {"$avg": "a/b"}, "nonce": 1}"#,
        );
        assert_eq!(q.application, AppFilter::Exact("api".into()));
        assert!(q.restricted && q.droppable && !q.optional);
        assert_eq!(q.key.as_deref(), Some("user-42"));
        let sel = q.selector.expect("selector");
        assert_eq!(sel.kind, SelectorKind::Avg);
        assert_eq!(sel.path.top_key(), Some("a/b"));
        assert_eq!(
            parse(r#"{"application": ["api"]}"#).application,
            AppFilter::Nothing
        );
        assert_eq!(
            parse(r#"{"application": null}"#).application,
            AppFilter::Any
        );
        assert_eq!(parse(r#"{"key": 5}"#).key, None);
        assert!(!parse(r#"{"restricted": "True"}"#).restricted);
        let pointer = parse(r#"{"selector": {"$min": "/limits/rps"}}"#).selector;
        assert_eq!(
            pointer.map(|s| s.path.segments().to_vec()),
            Some(vec!["limits".to_owned(), "rps".to_owned()])
        );
    }

    #[test]
    fn v2_forms_build_comparisons_and_logical_nodes() {
        assert_eq!(
            ops(
                r#"[{"path": "/a", "op": "$lt", "to": {"type": "integer", "value": 1, "path": "/x"}}]"#
            ),
            vec![cmp("/a", CmpOp::Lt, "1")]
        );
        assert_eq!(
            ops(r#"[{"path": "/a", "op": "$eq", "to": {"path": "/b"}}]"#),
            vec![Cond::Cmp {
                path: Path::literal_key("a"),
                op: CmpOp::Eq,
                operand: Operand::Path {
                    path: Path::literal_key("b"),
                    default: Value::Null
                },
            }]
        );
        assert_eq!(
            ops(r#"[{"op": "$nor", "with": [{"op": "$or", "with": []}]}]"#),
            vec![Cond::Nor(vec![Cond::Or(vec![])])]
        );
    }

    #[test]
    fn v1_forms_map_into_the_same_tree() {
        assert_eq!(
            ops(r#"[{"load": {"$eq": 1}}]"#),
            ops(r#"[{"path": "/load", "op": "$eq", "to": {"value": 1}}]"#)
        );
        assert_eq!(
            ops(r#"[{"load": {"$gte": 40, "$lt": 50}}]"#),
            vec![Cond::And(vec![
                cmp("/load", CmpOp::Gte, "40"),
                cmp("/load", CmpOp::Lt, "50")
            ])]
        );
        assert_eq!(
            ops(r#"[{"load": {"$and": [{"$gt": 10}, {"$lt": 20}]}}]"#),
            vec![Cond::And(vec![
                cmp("/load", CmpOp::Gt, "10"),
                cmp("/load", CmpOp::Lt, "20")
            ])]
        );
        assert_eq!(
            ops(
                r#"[{"$or": [{"region": {"$eq": "eu"}}, {"path": "/beta", "op": "$eq", "to": {"value": true}}]}]"#
            ),
            vec![Cond::Or(vec![
                cmp("/region", CmpOp::Eq, r#""eu""#),
                cmp("/beta", CmpOp::Eq, "true")
            ])]
        );
        // A v1 name is a literal key, and `op` that is not a string makes the element v1.
        assert_eq!(
            ops(r#"[{"a/b": {"$eq": 1}}]"#),
            vec![cmp("/a~1b", CmpOp::Eq, "1")]
        );
        assert_eq!(
            ops(r#"[{"op": {"$eq": 1}}]"#),
            vec![cmp("/op", CmpOp::Eq, "1")]
        );
    }

    #[test]
    fn depth_counts_every_logical_operator() {
        let limits = QueryLimits { max_depth: 2 };
        let ok = json(r#"{"ops": [{"op": "$and", "with": [{"x": {"$or": [{"$eq": 1}]}}]}]}"#);
        assert!(parse_query(&ok, limits).is_ok());
        let deep = json(
            r#"{"ops": [{"op": "$and", "with": [{"x": {"$or": [{"$and": [{"$eq": 1}]}]}}]}]}"#,
        );
        assert_eq!(
            parse_query(&deep, limits).map_err(|e| e.reason),
            Err("query: nested too deeply (max depth 2)".to_owned())
        );
        let none = json(r#"{"ops": [{"$nor": []}]}"#);
        assert!(parse_query(&none, QueryLimits { max_depth: 0 }).is_err());
        assert!(
            parse_query(
                &json(r#"{"ops": [{"x": {"$eq": 1}}]}"#),
                QueryLimits { max_depth: 0 }
            )
            .is_ok()
        );
    }
}
