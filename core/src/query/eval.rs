//! Evaluating conditions (SPEC §6.5–§6.7).
//!
//! Values arrive as `(&Value, bool)`: the value and whether it is *version-typed* (a top-level
//! key declared `version`). The flag is what lets `"1.10.0" > "1.9.0"` hold for version metadata
//! while ordinary strings keep byte order. MISSING never reaches [`eq`] or [`cmp`]; the
//! operator table in [`holds`] decides what it means for each operator.
//!
//! Evaluation cannot fail once a query has parsed, so every function here is total and the
//! results do not depend on element order or short-circuiting.

use std::cmp::Ordering;

use super::{CmpOp, Cond, Document, Operand};
use crate::semver;
use crate::value::Value;

/// Whether `cond` holds for the metadata `doc`.
pub fn holds<D: Document + ?Sized>(cond: &Cond, doc: &D) -> bool {
    match cond {
        Cond::Cmp { path, op, operand } => {
            let left = path.resolve(doc);
            let right = match operand {
                // A literal operand is never version-typed; the metadata side decides.
                Operand::Value(v) => (v, false),
                Operand::Path { path, default } => path.resolve(doc).unwrap_or((default, false)),
            };
            compare(*op, left, right)
        }
        Cond::And(conds) => conds.iter().all(|c| holds(c, doc)),
        Cond::Or(conds) => conds.iter().any(|c| holds(c, doc)),
        Cond::Nor(conds) => !conds.iter().any(|c| holds(c, doc)),
    }
}

/// One row of the operator table (SPEC §6.6): `left` is the value at `path` (`None` for
/// MISSING), `right` the operand.
pub fn compare(op: CmpOp, left: Option<(&Value, bool)>, right: (&Value, bool)) -> bool {
    // The negated operators are defined as exact negations, MISSING included, so they are
    // computed that way rather than given their own (easily diverging) rules.
    match op {
        CmpOp::Ne => !compare(CmpOp::Eq, left, right),
        CmpOp::Nin => !compare(CmpOp::In, left, right),
        CmpOp::Ncontains => !compare(CmpOp::Contains, left, right),
        _ => {
            let Some(left) = left else {
                return false;
            };
            match op {
                CmpOp::Eq => eq(left, right),
                CmpOp::Gt => cmp(left, right) == Some(Ordering::Greater),
                CmpOp::Gte => matches!(cmp(left, right), Some(Ordering::Greater | Ordering::Equal)),
                CmpOp::Lt => cmp(left, right) == Some(Ordering::Less),
                CmpOp::Lte => matches!(cmp(left, right), Some(Ordering::Less | Ordering::Equal)),
                CmpOp::In => match right.0 {
                    Value::Array(items) => items.iter().any(|e| eq(left, (e, false))),
                    _ => false,
                },
                CmpOp::Contains => match left.0 {
                    Value::Array(items) => items.iter().any(|e| eq((e, false), right)),
                    _ => false,
                },
                CmpOp::Ne | CmpOp::Nin | CmpOp::Ncontains => false,
            }
        }
    }
}

/// Equality (SPEC §6.5): numbers exactly across integer and float, version-typed strings by
/// SemVer precedence, containers deeply, and no coercion between kinds.
pub fn eq(a: (&Value, bool), b: (&Value, bool)) -> bool {
    match (a.0, b.0) {
        (Value::String(x), Value::String(y)) => match version_order(a, b) {
            Some(o) => o == Ordering::Equal,
            None => x == y,
        },
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        // Members of lists and maps are never version-typed.
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| eq((x, false), (y, false)))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            // Both maps iterate in key order, so equal key sets pair up member by member.
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys)
                    .all(|((kx, x), (ky, y))| kx == ky && eq((x, false), (y, false)))
        }
        (x, y) => match (x.as_num(), y.as_num()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// Ordering (SPEC §6.5): numbers numerically, strings by SemVer precedence when version-typed
/// and valid, else bytewise; `None` (undefined) for any other combination.
pub fn cmp(a: (&Value, bool), b: (&Value, bool)) -> Option<Ordering> {
    match (a.0, b.0) {
        (Value::String(x), Value::String(y)) => {
            Some(version_order(a, b).unwrap_or_else(|| x.as_bytes().cmp(y.as_bytes())))
        }
        (x, y) => Some(x.as_num()?.cmp_exact(y.as_num()?)),
    }
}

/// SemVer precedence when at least one side is version-typed and both parse; `None` means
/// "compare as plain strings".
fn version_order(a: (&Value, bool), b: (&Value, bool)) -> Option<Ordering> {
    if !(a.1 || b.1) {
        return None;
    }
    semver::compare(a.0.as_str()?, b.0.as_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).expect("test JSON")
    }

    #[test]
    fn numbers_compare_exactly_across_kinds() {
        assert!(eq((&Value::Int(10), false), (&Value::Float(10.0), false)));
        assert!(!eq(
            (&Value::Int(9_007_199_254_740_993), false),
            (&Value::Float(9_007_199_254_740_992.0), false)
        ));
        assert_eq!(
            cmp((&Value::UInt(u64::MAX), false), (&Value::Int(-1), false)),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn strings_use_semver_only_when_version_typed_and_both_valid() {
        let (a, b) = (json(r#""1.10.0""#), json(r#""1.9.0""#));
        assert_eq!(cmp((&a, true), (&b, false)), Some(Ordering::Greater));
        assert_eq!(cmp((&a, false), (&b, true)), Some(Ordering::Greater));
        assert_eq!(cmp((&a, false), (&b, false)), Some(Ordering::Less));
        let (c, d) = (json(r#""1.0.0+x""#), json(r#""1.0.0""#));
        assert!(eq((&c, true), (&d, false)));
        assert!(!eq((&c, false), (&d, false)));
        // `1.9` is not SemVer, so even a version-typed side falls back to bytes.
        let bad = json(r#""1.9""#);
        assert_eq!(cmp((&a, true), (&bad, false)), Some(Ordering::Less));
    }

    #[test]
    fn there_is_no_cross_kind_order_or_coercion() {
        let (s, n, t) = (json(r#""10""#), json("10"), json("true"));
        assert_eq!(cmp((&s, false), (&n, false)), None);
        assert!(!eq((&s, false), (&n, false)));
        assert!(!eq((&json(r#""true""#), false), (&t, false)));
        assert_eq!(cmp((&t, false), (&t, false)), None);
        assert_eq!(cmp((&Value::Null, false), (&Value::Null, false)), None);
        assert!(eq((&Value::Null, false), (&Value::Null, false)));
    }

    #[test]
    fn containers_compare_deeply_and_members_are_never_version_typed() {
        let a = json(r#"{"a": [1, 2.0, {"b": null}], "c": "1.0.0"}"#);
        let b = json(r#"{"a": [1.0, 2, {"b": null}], "c": "1.0.0"}"#);
        assert!(eq((&a, false), (&b, false)));
        let c = json(r#"["1.0.0+a"]"#);
        let d = json(r#"["1.0.0+b"]"#);
        assert!(!eq((&c, true), (&d, true)));
        assert!(!eq(
            (&json(r#"{"a": 1}"#), false),
            (&json(r#"{"b": 1}"#), false)
        ));
        assert!(!eq((&json("[1]"), false), (&json("[1, 2]"), false)));
    }

    #[test]
    fn missing_makes_only_the_negated_operators_true() {
        let x = Value::Int(1);
        for op in [
            CmpOp::Eq,
            CmpOp::Gt,
            CmpOp::Gte,
            CmpOp::Lt,
            CmpOp::Lte,
            CmpOp::In,
            CmpOp::Contains,
        ] {
            assert!(!compare(op, None, (&x, false)), "{op:?}");
        }
        for op in [CmpOp::Ne, CmpOp::Nin, CmpOp::Ncontains] {
            assert!(compare(op, None, (&x, false)), "{op:?}");
        }
    }

    #[test]
    fn in_needs_an_array_operand_and_contains_an_array_value() {
        let v = json(r#""a""#);
        assert!(!compare(
            CmpOp::In,
            Some((&v, false)),
            (&json(r#""a""#), false)
        ));
        assert!(compare(
            CmpOp::Nin,
            Some((&v, false)),
            (&json(r#""a""#), false)
        ));
        assert!(compare(
            CmpOp::In,
            Some((&v, false)),
            (&json(r#"["b", "a"]"#), false)
        ));
        assert!(!compare(
            CmpOp::Contains,
            Some((&json(r#""abc""#), false)),
            (&v, false)
        ));
        assert!(!compare(
            CmpOp::Contains,
            Some((&json(r#"{"a": 1}"#), false)),
            (&v, false)
        ));
        assert!(compare(
            CmpOp::Contains,
            Some((&json(r#"[1, "a"]"#), false)),
            (&v, false)
        ));
    }

    #[test]
    fn version_typing_carries_into_in_and_contains_from_the_operand_side() {
        let v = json(r#""1.0.0""#);
        let list = json(r#"["1.0.0+build"]"#);
        // `$in`: the metadata value is version-typed, the list elements are not.
        assert!(compare(CmpOp::In, Some((&v, true)), (&list, false)));
        assert!(!compare(CmpOp::In, Some((&v, false)), (&list, false)));
    }
}
