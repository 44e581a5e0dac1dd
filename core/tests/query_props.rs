//! Properties of the query language that must hold for every input (SPEC §6.5–§6.7, §6.10).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ganglion_core::query::eval::{self, cmp, eq};
use ganglion_core::query::{CmpOp, Cond, Document, Operand, Path, Query, QueryLimits, rendezvous};
use ganglion_core::{Map, Value};
use proptest::prelude::*;

// === generators ===

/// Keys the generated documents and conditions draw from, so lookups often hit and sometimes
/// miss (`z` is never in a document).
const KEYS: [&str; 5] = ["a", "b", "v", "list", "z"];

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{0,3}",
        // Valid and near-valid SemVer, so version typing is exercised on both sides.
        "(0|1|10|9)\\.(0|9|10)\\.(0|1)(-(alpha|beta|1|01|rc\\.1|alpha\\.1))?(\\+(b|01))?",
        "1\\.(0|10)",
    ]
}

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..=3).prop_map(Value::Int),
        any::<i64>().prop_map(Value::Int),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
        // Integral floats collide with the integers above; others do not.
        (-3i32..=3).prop_map(|i| Value::Float(f64::from(i))),
        (-1e6f64..1e6).prop_map(Value::Float),
        arb_string().prop_map(Value::String),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..3).prop_map(Value::Object),
        ]
    })
}

/// A value and whether it is version-typed.
fn arb_typed() -> impl Strategy<Value = (Value, bool)> {
    (arb_value(), any::<bool>())
}

#[derive(Debug, Clone)]
struct Doc(BTreeMap<String, (Value, bool)>);

impl Document for Doc {
    fn top(&self, key: &str) -> Option<(&Value, bool)> {
        self.0.get(key).map(|(v, versioned)| (v, *versioned))
    }
}

fn arb_doc() -> impl Strategy<Value = Doc> {
    prop::collection::btree_map(prop::sample::select(&KEYS[..4]), arb_typed(), 0..4).prop_map(|m| {
        Doc(m
            .into_iter()
            .map(|(k, (v, versioned))| {
                // Only strings can carry the `version` type in real metadata.
                let versioned = versioned && matches!(v, Value::String(_));
                (k.to_owned(), (v, versioned))
            })
            .collect())
    })
}

fn arb_path() -> impl Strategy<Value = Path> {
    prop_oneof![
        3 => prop::sample::select(&KEYS[..]).prop_map(Path::literal_key),
        1 => prop::sample::select(&["/list/0", "/a/b", "/b/1", "/z/a"][..])
            .prop_map(|p| Path::from_pointer(p).expect("valid pointer")),
    ]
}

fn arb_operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        arb_value().prop_map(Operand::Value),
        (arb_path(), arb_value()).prop_map(|(path, default)| Operand::Path { path, default }),
    ]
}

fn arb_op() -> impl Strategy<Value = CmpOp> {
    prop::sample::select(
        &[
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Gt,
            CmpOp::Gte,
            CmpOp::Lt,
            CmpOp::Lte,
            CmpOp::In,
            CmpOp::Nin,
            CmpOp::Contains,
            CmpOp::Ncontains,
        ][..],
    )
}

fn arb_cmp() -> impl Strategy<Value = Cond> {
    (arb_path(), arb_op(), arb_operand()).prop_map(|(path, op, operand)| Cond::Cmp {
        path,
        op,
        operand,
    })
}

fn arb_cond() -> impl Strategy<Value = Cond> {
    arb_cmp().prop_recursive(3, 12, 4, |inner| {
        let list = prop::collection::vec(inner, 0..4);
        prop_oneof![
            list.clone().prop_map(Cond::And),
            list.clone().prop_map(Cond::Or),
            list.prop_map(Cond::Nor),
        ]
    })
}

fn holds(cond: &Cond, doc: &Doc) -> bool {
    eval::holds(cond, doc)
}

fn with_op(cond: &Cond, op: CmpOp) -> Cond {
    match cond {
        Cond::Cmp { path, operand, .. } => Cond::Cmp {
            path: path.clone(),
            op,
            operand: operand.clone(),
        },
        other => other.clone(),
    }
}

/// Arbitrary values built from the query vocabulary, so that most shapes the parser
/// distinguishes (v2, v1, logical, malformed) come up.
fn arb_query_like() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(
        &[
            "application",
            "ops",
            "op",
            "path",
            "to",
            "value",
            "default",
            "with",
            "selector",
            "$eq",
            "$in",
            "$nin",
            "$and",
            "$or",
            "$nor",
            "$min",
            "$avg",
            "$foo",
            "/a",
            "a",
            "",
            "/a~",
            "~",
        ][..],
    );
    let leaf = prop_oneof![arb_scalar(), word.clone().prop_map(Value::from),];
    leaf.prop_recursive(6, 48, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(word.clone().prop_map(str::to_owned), inner, 0..4)
                .prop_map(Value::Object),
        ]
    })
}

// === properties ===

proptest! {
    #[test]
    fn negated_operators_are_exact_negations(doc in arb_doc(), cond in arb_cmp()) {
        for (positive, negative) in [
            (CmpOp::Eq, CmpOp::Ne),
            (CmpOp::In, CmpOp::Nin),
            (CmpOp::Contains, CmpOp::Ncontains),
        ] {
            prop_assert_eq!(
                holds(&with_op(&cond, negative), &doc),
                !holds(&with_op(&cond, positive), &doc)
            );
        }
    }

    #[test]
    fn missing_keys_make_only_the_negated_operators_true(op in arb_op(), operand in arb_operand()) {
        let cond = Cond::Cmp { path: Path::literal_key("z"), op, operand };
        let expected = matches!(op, CmpOp::Ne | CmpOp::Nin | CmpOp::Ncontains);
        prop_assert_eq!(holds(&cond, &Doc(BTreeMap::new())), expected);
    }

    #[test]
    fn nor_is_not_or(doc in arb_doc(), conds in prop::collection::vec(arb_cond(), 0..5)) {
        prop_assert_eq!(
            holds(&Cond::Nor(conds.clone()), &doc),
            !holds(&Cond::Or(conds), &doc)
        );
    }

    #[test]
    fn permuting_with_never_changes_a_logical_operator(
        doc in arb_doc(),
        (conds, shuffled) in prop::collection::vec(arb_cond(), 0..6)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
    ) {
        for build in [Cond::And, Cond::Or, Cond::Nor] {
            prop_assert_eq!(
                holds(&build(conds.clone()), &doc),
                holds(&build(shuffled.clone()), &doc)
            );
        }
    }

    #[test]
    fn the_v1_form_is_the_v2_form_on_a_literal_key(
        doc in arb_doc(),
        key in prop_oneof![prop::sample::select(&KEYS[..]).prop_map(str::to_owned), "[a-z/~0-9]{0,4}"],
        op in arb_op(),
        x in arb_value(),
    ) {
        let x = match op {
            CmpOp::In | CmpOp::Nin if !matches!(x, Value::Array(_)) => Value::Array(vec![x]),
            _ => x,
        };
        let v1 = Value::Object(Map::from([(
            key.clone(),
            Value::Object(Map::from([(op.name().to_owned(), x.clone())])),
        )]));
        let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
        let v2 = Value::Object(Map::from([
            ("path".to_owned(), Value::String(pointer)),
            ("op".to_owned(), Value::from(op.name())),
            ("to".to_owned(), Value::Object(Map::from([("value".to_owned(), x)]))),
        ]));
        let parse = |element: Value| {
            let query = Value::Object(Map::from([("ops".to_owned(), Value::Array(vec![element]))]));
            Query::parse(&query, QueryLimits::default())
        };
        let (q1, q2) = (parse(v1), parse(v2));
        prop_assert!(q1.is_ok() && q2.is_ok(), "{:?} / {:?}", q1, q2);
        let (q1, q2) = (q1.expect("checked"), q2.expect("checked"));
        prop_assert_eq!(&q1.ops, &q2.ops);
        prop_assert_eq!(q1.matches(&doc), q2.matches(&doc));
    }

    #[test]
    fn parsing_never_panics_and_parsed_queries_evaluate(
        value in arb_query_like(),
        doc in arb_doc(),
        max_depth in 0usize..4,
    ) {
        let wrapped = Value::Object(Map::from([("ops".to_owned(), Value::Array(vec![value.clone()]))]));
        for query in [value, wrapped] {
            if let Ok(q) = Query::parse(&query, QueryLimits { max_depth }) {
                let _ = q.matches(&doc);
            }
        }
    }

    #[test]
    fn eq_is_reflexive_and_symmetric(a in arb_typed(), b in arb_typed()) {
        prop_assert!(eq((&a.0, a.1), (&a.0, a.1)));
        prop_assert!(eq((&a.0, false), (&a.0.clone(), false)));
        prop_assert_eq!(eq((&a.0, a.1), (&b.0, b.1)), eq((&b.0, b.1), (&a.0, a.1)));
    }

    #[test]
    fn cmp_is_antisymmetric_and_agrees_with_eq(a in arb_typed(), b in arb_typed()) {
        let ab = cmp((&a.0, a.1), (&b.0, b.1));
        let ba = cmp((&b.0, b.1), (&a.0, a.1));
        prop_assert_eq!(ab, ba.map(Ordering::reverse));
        if ab == Some(Ordering::Equal) {
            prop_assert!(eq((&a.0, a.1), (&b.0, b.1)));
        }
    }

    #[test]
    fn the_rendezvous_winner_ignores_candidate_order(
        key in ".{0,8}",
        (clients, shuffled) in prop::collection::btree_set("[a-e]{1,3}", 1..8)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>())
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
    ) {
        prop_assert_eq!(pick(&key, &clients), pick(&key, &shuffled));
    }

    #[test]
    fn removing_a_candidate_moves_only_the_keys_it_won(
        key in ".{0,8}",
        clients in prop::collection::btree_set("[a-e]{1,3}", 2..8)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
    ) {
        let ranked = ranking(&key, &clients);
        let winner = pick(&key, &clients);
        prop_assert_eq!(winner.as_deref(), ranked.first().map(String::as_str));
        for gone in &clients {
            let rest: Vec<String> = clients.iter().filter(|c| *c != gone).cloned().collect();
            let expected = if Some(gone) == winner.as_ref() {
                // The previous runner-up inherits the key.
                ranked.get(1).cloned()
            } else {
                winner.clone()
            };
            prop_assert_eq!(pick(&key, &rest), expected);
        }
    }
}

/// The rendezvous winner among clients of application `svc`.
fn pick(key: &str, clients: &[String]) -> Option<String> {
    rendezvous::winner(key, clients.iter().map(|c| (c.clone(), "svc", c.as_str())))
}

/// Every client, best first, ranked independently of [`rendezvous::winner`].
fn ranking(key: &str, clients: &[String]) -> Vec<String> {
    let mut ranked: Vec<(u64, Vec<u8>, String)> = clients
        .iter()
        .map(|c| {
            let identity = [b"svc\0".as_slice(), c.as_bytes()].concat();
            (rendezvous::weight(key, "svc", c), identity, c.clone())
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, c)| c).collect()
}
