//! SemVer 2.0.0 versions (SPEC §5.2) and their precedence (SPEC §6.5).
//!
//! Two entry points:
//!
//! - [`Version`]: an owned, validated version. Its `Eq`, `Ord` and `Hash` are **precedence**
//!   (SemVer §11, build metadata ignored), so it can key a `BTreeMap` or `HashMap` of
//!   version-typed metadata directly: `1.0.0+a` and `1.0.0+b` are the same key, exactly as the
//!   query language considers them equal.
//! - [`compare`]: precedence of two strings without allocating, for query evaluation, which
//!   compares version-typed strings on every candidate.
//!
//! The grammar is strict on purpose: `version` metadata that fails it is rejected at write time
//! (SPEC §5.4), and a query operand that fails it falls back to byte comparison (SPEC §6.5).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// A valid SemVer 2.0.0 version.
///
/// Equality, ordering and hashing follow SemVer precedence and ignore build metadata; use
/// [`Version::build`] (or compare [`Version::to_string`]) when the exact text matters.
#[derive(Debug, Clone)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    /// Dot-separated pre-release identifiers, already validated; empty for a release.
    pre: String,
    /// Dot-separated build identifiers, already validated; empty when absent.
    build: String,
}

/// A version borrowed from its text: what parsing produces before anything is copied.
#[derive(Debug, Clone, Copy)]
struct Parts<'a> {
    major: u64,
    minor: u64,
    patch: u64,
    pre: &'a str,
    build: &'a str,
}

/// SemVer precedence of two strings, or `None` when either is not a valid SemVer 2.0.0 version.
///
/// Allocation-free; `compare(a, b)` equals `Version::parse(a)?.cmp(&Version::parse(b)?)`.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(Parts::parse(a)?.cmp_precedence(&Parts::parse(b)?))
}

/// Whether `s` is a valid SemVer 2.0.0 version (SPEC §5.2), without allocating.
pub fn is_valid(s: &str) -> bool {
    Parts::parse(s).is_some()
}

// === impl Version ===

impl Version {
    /// Parses exactly the SemVer 2.0.0 grammar of SPEC §5.2; anything else is `None`.
    pub fn parse(s: &str) -> Option<Version> {
        let p = Parts::parse(s)?;
        Some(Version {
            major: p.major,
            minor: p.minor,
            patch: p.patch,
            pre: p.pre.to_owned(),
            build: p.build.to_owned(),
        })
    }

    pub fn major(&self) -> u64 {
        self.major
    }

    pub fn minor(&self) -> u64 {
        self.minor
    }

    pub fn patch(&self) -> u64 {
        self.patch
    }

    /// The pre-release identifiers as written (without the `-`), or `""` for a release.
    pub fn pre(&self) -> &str {
        &self.pre
    }

    /// The build identifiers as written (without the `+`), or `""` when absent.
    pub fn build(&self) -> &str {
        &self.build
    }

    /// SemVer §11 precedence; the same as [`Ord::cmp`] on `Version`.
    pub fn cmp_precedence(&self, other: &Version) -> Ordering {
        self.parts().cmp_precedence(&other.parts())
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            major: self.major,
            minor: self.minor,
            patch: self.patch,
            pre: &self.pre,
            build: &self.build,
        }
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_precedence(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_precedence(other)
    }
}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Precedence-equal versions have identical core numbers and identical pre-release text
        // (numeric identifiers have no leading zeros, so equal numbers are written alike).
        self.major.hash(state);
        self.minor.hash(state);
        self.patch.hash(state);
        self.pre.hash(state);
    }
}

impl fmt::Display for Version {
    /// The version as written: `Version::parse(&v.to_string())` gives `v` back, build included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        if !self.build.is_empty() {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

// === impl Parts ===

impl<'a> Parts<'a> {
    fn parse(s: &'a str) -> Option<Parts<'a>> {
        // Every version starts with its major number: most strings that are not versions
        // (`"eu-west"`, an id) are refused here, without looking for `+` and `-` first. (The
        // index tries every `$eq` string operand as a version, on every routed message.)
        if !s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            return None;
        }
        // `+` cannot occur before the build, and `-` cannot occur in the core, so the first `+`
        // ends the pre-release and the first `-` ends the core.
        let (rest, build) = match s.split_once('+') {
            Some((rest, build)) => {
                if !build.split('.').all(is_identifier) {
                    return None;
                }
                (rest, build)
            }
            None => (s, ""),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => {
                if !pre.split('.').all(is_pre_identifier) {
                    return None;
                }
                (core, pre)
            }
            None => (rest, ""),
        };
        let mut numbers = core.split('.');
        let major = parse_numeric(numbers.next()?)?;
        let minor = parse_numeric(numbers.next()?)?;
        let patch = parse_numeric(numbers.next()?)?;
        if numbers.next().is_some() {
            return None;
        }
        Some(Parts {
            major,
            minor,
            patch,
            pre,
            build,
        })
    }

    fn cmp_precedence(&self, other: &Parts<'_>) -> Ordering {
        let core =
            (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch));
        if core != Ordering::Equal {
            return core;
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            // A release ranks above any of its pre-releases.
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => cmp_pre_release(self.pre, other.pre),
        }
    }
}

/// Compares two non-empty, validated pre-release strings identifier by identifier.
fn cmp_pre_release(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            // All compared identifiers are equal: the longer list ranks higher.
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = cmp_identifier(x, y);
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn cmp_identifier(x: &str, y: &str) -> Ordering {
    match (is_digits(x), is_digits(y)) {
        // Numeric identifiers may exceed u64; without leading zeros, a longer one is larger and
        // equal lengths compare bytewise.
        (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => x.as_bytes().cmp(y.as_bytes()),
    }
}

/// `0` or `[1-9][0-9]*`, at most `u64::MAX`.
fn parse_numeric(s: &str) -> Option<u64> {
    if !is_digits(s) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    // Only digits remain, so the sole failure is overflow.
    s.parse().ok()
}

/// `[0-9A-Za-z-]+`.
fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A pre-release identifier: `[0-9A-Za-z-]+`, and no leading zero when purely numeric.
fn is_pre_identifier(s: &str) -> bool {
    is_identifier(s) && !(is_digits(s) && s.len() > 1 && s.starts_with('0'))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn precedence_follows_the_semver_example_chain() {
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.9.0",
            "1.10.0",
            "2.0.0",
        ];
        for pair in chain.windows(2) {
            assert_eq!(v(pair[0]).cmp(&v(pair[1])), Ordering::Less, "{pair:?}");
            assert_eq!(
                compare(pair[1], pair[0]),
                Some(Ordering::Greater),
                "{pair:?}"
            );
        }
    }

    #[test]
    fn build_metadata_is_ignored_by_precedence_equality_and_hash() {
        let (a, b) = (v("1.0.0+a"), v("1.0.0+b.1"));
        assert_eq!(a, b);
        assert_eq!(hash_of(&a), hash_of(&b));
        assert_eq!(a.build(), "a");
        assert_eq!(a.to_string(), "1.0.0+a");
    }

    #[test]
    fn the_grammar_rejects_everything_outside_semver() {
        for bad in [
            "",
            "1",
            "1.0",
            "v1.0.0",
            " 1.0.0",
            "1.0.0 ",
            "01.0.0",
            "1.00.0",
            "1.0.01",
            "1.0.0-01",
            "1.0.0-",
            "1.0.0+",
            "1.0.0-a..b",
            "1.0.0+a..b",
            "1.0.0-a_b",
            "1.0.0.0",
            "+1.0.0",
            "1.+0.0",
            "1.0.0-é",
            "18446744073709551616.0.0",
            "1..0",
            "-1.0.0",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad:?} should be invalid");
            assert!(!is_valid(bad));
        }
    }

    #[test]
    fn the_grammar_accepts_edge_cases_of_semver() {
        for good in [
            "0.0.0",
            "1.0.0+01",
            "1.0.0-0",
            "1.0.0-0a",
            "1.0.0-01a",
            "1.0.0--",
            "1.0.0-x-y.z+b-1.0",
            "18446744073709551615.0.0",
            "1.0.0-99999999999999999999999",
        ] {
            assert!(Version::parse(good).is_some(), "{good:?} should be valid");
        }
    }

    #[test]
    fn numeric_pre_release_identifiers_compare_beyond_u64() {
        assert!(v("1.0.0-99999999999999999999") > v("1.0.0-18446744073709551616"));
        assert!(v("1.0.0-9") < v("1.0.0-10"));
        assert!(v("1.0.0-999999999999999999999") < v("1.0.0-a"));
    }

    #[test]
    fn compare_needs_both_sides_valid() {
        assert_eq!(compare("1.0.0", "1.0"), None);
        assert_eq!(compare("1.0.0+x", "1.0.0"), Some(Ordering::Equal));
    }

    fn hash_of(x: &Version) -> u64 {
        use std::collections::hash_map::DefaultHasher;
        let mut h = DefaultHasher::new();
        x.hash(&mut h);
        h.finish()
    }

    const VERSION: &str = "(0|[1-9][0-9]{0,2})\\.(0|[1-9])\\.(0|1)\
        (-(0|[1-9][0-9]{0,21}|[a-z-]{1,2})(\\.(0|[1-9][0-9]{0,21}|[a-zA-Z-]{1,2})){0,2})?\
        (\\+[a-z0-9]{1,2})?";

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,24}") {
            let parsed = Version::parse(&s);
            proptest::prop_assert_eq!(parsed.is_some(), is_valid(&s));
            if let Some(v) = parsed {
                proptest::prop_assert_eq!(v.to_string(), s);
            }
        }

        #[test]
        fn precedence_is_a_total_order_consistent_with_hash(
            a in VERSION, b in VERSION, c in VERSION,
        ) {
            let (va, vb, vc) = (v(&a), v(&b), v(&c));
            proptest::prop_assert_eq!(va.to_string(), a.clone());
            proptest::prop_assert_eq!(va.cmp(&vb), vb.cmp(&va).reverse());
            proptest::prop_assert_eq!(compare(&a, &b), Some(va.cmp(&vb)));
            if va <= vb && vb <= vc {
                proptest::prop_assert!(va <= vc);
            }
            if va == vb {
                proptest::prop_assert_eq!(hash_of(&va), hash_of(&vb));
            }
        }
    }
}
