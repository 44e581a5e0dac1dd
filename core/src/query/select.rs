//! Selectors: `$min`, `$max`, `$avg` (SPEC §6.9).
//!
//! Two layers, so the registry can use whichever fits its data:
//!
//! - [`apply`] takes candidates with their metadata [`Document`]s and resolves the selector's
//!   path itself;
//! - [`best`] takes candidates already paired with their numeric value, for a caller that read
//!   the values some other way (an index, say).
//!
//! Both return **every** tied best candidate, in input order: picking one among ties is step 7
//! of SPEC §6.8 (rendezvous by `key`, else random), not the selector's job. An empty result
//! means no match.

use super::{Document, Selector, SelectorKind};
use crate::value::Num;

/// Reduces `cands` to the selector's best candidates. Candidates whose value at the selector's
/// path is MISSING or not a number take no part and are dropped.
pub fn apply<'a, C, D>(sel: &Selector, cands: impl IntoIterator<Item = (C, &'a D)>) -> Vec<C>
where
    D: Document + ?Sized + 'a,
{
    let scored = cands.into_iter().filter_map(|(c, doc)| {
        let (value, _) = sel.path.resolve(doc)?;
        Some((c, value.as_num()?))
    });
    best(sel.kind, scored)
}

/// The candidates with the best value for `kind`: all those tied for the smallest (`$min`) or
/// largest (`$max`) value, or those whose value is nearest the mean (`$avg`).
///
/// Integers compare exactly for `$min`/`$max`. `$avg` works in binary64 as the spec says; the
/// mean is summed in sorted order, so it does not depend on the order of `scored`.
pub fn best<C>(kind: SelectorKind, scored: impl IntoIterator<Item = (C, Num)>) -> Vec<C> {
    let scored: Vec<(C, Num)> = scored.into_iter().collect();
    match kind {
        SelectorKind::Min => keep_extreme(scored, std::cmp::Ordering::Less),
        SelectorKind::Max => keep_extreme(scored, std::cmp::Ordering::Greater),
        SelectorKind::Avg => keep_nearest_mean(scored),
    }
}

/// Keeps the candidates whose value is `better` than or equal to every other.
fn keep_extreme<C>(scored: Vec<(C, Num)>, better: std::cmp::Ordering) -> Vec<C> {
    let Some(extreme) = scored
        .iter()
        .map(|(_, n)| *n)
        .reduce(|a, b| if b.cmp_exact(a) == better { b } else { a })
    else {
        return Vec::new();
    };
    scored
        .into_iter()
        .filter(|(_, n)| *n == extreme)
        .map(|(c, _)| c)
        .collect()
}

fn keep_nearest_mean<C>(scored: Vec<(C, Num)>) -> Vec<C> {
    let floats: Vec<f64> = scored.iter().map(|(_, n)| to_f64(*n)).collect();
    let Some(mu) = mean(&floats) else {
        return Vec::new();
    };
    let distance = |x: f64| (x - mu).abs();
    let nearest = floats
        .iter()
        .map(|x| distance(*x))
        .fold(f64::INFINITY, f64::min);
    scored
        .into_iter()
        .zip(floats)
        .filter(|(_, x)| distance(*x) <= nearest)
        .map(|((c, _), _)| c)
        .collect()
}

/// The binary64 mean, `None` when there are no values.
fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let sum: f64 = sorted.iter().sum();
    if sum.is_finite() {
        return Some(sum / n);
    }
    // The sum of huge values overflowed; dividing first keeps every partial sum in range.
    Some(sorted.iter().map(|x| x / n).sum())
}

fn to_f64(n: Num) -> f64 {
    match n {
        Num::I(i) => i as f64,
        Num::U(u) => u as f64,
        Num::F(f) => f,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::query::Path;
    use crate::value::Value;

    struct Doc(BTreeMap<String, Value>);

    impl Document for Doc {
        fn top(&self, key: &str) -> Option<(&Value, bool)> {
            self.0.get(key).map(|v| (v, false))
        }
    }

    fn doc(load: Option<Value>) -> Doc {
        Doc(load.into_iter().map(|v| ("load".to_owned(), v)).collect())
    }

    fn run(kind: SelectorKind, docs: &[(&'static str, Doc)]) -> Vec<&'static str> {
        let sel = Selector {
            kind,
            path: Path::literal_key("load"),
        };
        apply(&sel, docs.iter().map(|(name, d)| (*name, d)))
    }

    fn spec_example() -> Vec<(&'static str, Doc)> {
        vec![
            ("a", doc(Some(Value::Int(10)))),
            ("b", doc(Some(Value::Int(20)))),
            ("c", doc(Some(Value::Float(60.0)))),
            ("d", doc(None)),
            ("e", doc(Some(Value::from("70")))),
        ]
    }

    #[test]
    fn the_spec_example_picks_a_c_and_b() {
        let docs = spec_example();
        assert_eq!(run(SelectorKind::Min, &docs), ["a"]);
        assert_eq!(run(SelectorKind::Max, &docs), ["c"]);
        assert_eq!(run(SelectorKind::Avg, &docs), ["b"]);
    }

    #[test]
    fn ties_are_all_kept() {
        let docs = vec![
            ("a", doc(Some(Value::Int(10)))),
            ("b", doc(Some(Value::Float(10.0)))),
            ("c", doc(Some(Value::Int(20)))),
            ("d", doc(Some(Value::Int(30)))),
        ];
        assert_eq!(run(SelectorKind::Min, &docs), ["a", "b"]);
        // μ = 17.5: b and a at 7.5, c at 2.5.
        assert_eq!(run(SelectorKind::Avg, &docs), ["c"]);
        let even = vec![
            ("x", doc(Some(Value::Int(0)))),
            ("y", doc(Some(Value::Int(2)))),
        ];
        assert_eq!(run(SelectorKind::Avg, &even), ["x", "y"]);
    }

    #[test]
    fn no_numeric_value_means_no_match() {
        let docs = vec![("d", doc(None)), ("e", doc(Some(Value::from("1"))))];
        for kind in [SelectorKind::Min, SelectorKind::Max, SelectorKind::Avg] {
            assert!(run(kind, &docs).is_empty());
        }
    }

    #[test]
    fn large_integers_compare_exactly_and_huge_floats_average() {
        let big = 9_007_199_254_740_993_i64;
        let docs = vec![
            ("a", doc(Some(Value::Int(big)))),
            ("b", doc(Some(Value::Float(9_007_199_254_740_992.0)))),
        ];
        assert_eq!(run(SelectorKind::Max, &docs), ["a"]);
        let huge = vec![
            ("a", doc(Some(Value::Float(f64::MAX)))),
            ("b", doc(Some(Value::Float(f64::MAX)))),
            ("c", doc(Some(Value::Float(0.0)))),
        ];
        assert_eq!(run(SelectorKind::Avg, &huge), ["a", "b"]);
    }
}
