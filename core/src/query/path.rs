//! JSON Pointer paths into a client's metadata (SPEC §6.4).
//!
//! A [`Path`] is stored decoded, as a list of segments, so evaluation never re-parses escapes.
//! Two ways in: [`Path::parse`] for the `path` / `to.path` fields of a query, with the exact
//! error reasons of SPEC §6.12, and [`Path::literal_key`] for names that address one top-level
//! key verbatim (the legacy v1 form and selector keys without a leading `/`).

use std::fmt;

use super::{Document, QueryError};
use crate::value::Value;

/// A parsed path: one or more decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Never empty: the shortest pointer, `/`, has the single segment `""`.
    segments: Vec<String>,
}

/// Why a pointer string is malformed, before any field-specific wording is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerError {
    /// `""`.
    Empty,
    /// Does not start with `/`.
    NoLeadingSlash,
    /// A `~` not followed by `0` or `1`.
    InvalidEscape,
}

// === impl Path ===

impl Path {
    /// Parses the value of a path field. `field` is the name used in error reasons: `"path"` for
    /// a comparison's own path, `"to.path"` for form (b). `None` means the field is absent.
    pub fn parse(value: Option<&Value>, field: &str) -> Result<Path, QueryError> {
        let s = match value {
            None | Some(Value::Null) => {
                return Err(QueryError::new(format!("{field}: must not be nil")));
            }
            Some(Value::String(s)) => s,
            Some(_) => return Err(QueryError::new(format!("{field}: must be a string"))),
        };
        Path::from_pointer(s).map_err(|e| {
            QueryError::new(match e {
                PointerError::Empty => format!("{field}: must not be empty"),
                PointerError::NoLeadingSlash => format!("{field}: must start with `/`, got: '{s}'"),
                PointerError::InvalidEscape => {
                    format!("{field}: invalid escape sequence, got: '{s}'")
                }
            })
        })
    }

    /// Parses an RFC 6901 pointer. Within each segment `~1` decodes to `/` and `~0` to `~`; since
    /// every `~` must start one of the two, a single left-to-right pass gives the same result as
    /// the RFC's "`~1` first, then `~0`".
    pub fn from_pointer(pointer: &str) -> Result<Path, PointerError> {
        if pointer.is_empty() {
            return Err(PointerError::Empty);
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            return Err(PointerError::NoLeadingSlash);
        };
        let segments = rest
            .split('/')
            .map(decode_segment)
            .collect::<Option<Vec<String>>>()
            .ok_or(PointerError::InvalidEscape)?;
        Ok(Path { segments })
    }

    /// The path addressing exactly the top-level key `name`, taken literally: `a/b` is the key
    /// `a/b`, not a nested path (SPEC §6.3 (d), §6.9).
    pub fn literal_key(name: &str) -> Path {
        Path {
            segments: vec![name.to_owned()],
        }
    }

    /// The decoded segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The top-level key when the path has exactly one segment. Only such paths can reach a
    /// version-typed value, and they are what the registry can index.
    pub fn top_key(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// Evaluates the path against `doc` (SPEC §6.4): the value, and whether it is version-typed,
    /// or `None` for MISSING.
    ///
    /// Digits index only arrays, which is what makes `/m/0` a map member and `/key2` a plain
    /// key. Only the value of a one-segment path can be version-typed.
    pub fn resolve<'a, D: Document + ?Sized>(&self, doc: &'a D) -> Option<(&'a Value, bool)> {
        let (first, rest) = self.segments.split_first()?;
        let (top, versioned) = doc.top(first)?;
        if rest.is_empty() {
            return Some((top, versioned));
        }
        let mut cur = top;
        for segment in rest {
            cur = match cur {
                Value::Object(map) => map.get(segment)?,
                Value::Array(items) => items.get(array_index(segment)?)?,
                _ => return None,
            };
        }
        Some((cur, false))
    }

    /// The path written back as a pointer, escaping `~` and `/`.
    pub fn to_pointer(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.segments {
            f.write_str("/")?;
            for c in segment.chars() {
                match c {
                    '~' => f.write_str("~0")?,
                    '/' => f.write_str("~1")?,
                    c => fmt::Write::write_char(f, c)?,
                }
            }
        }
        Ok(())
    }
}

/// Decodes `~0` and `~1`; `None` for any other use of `~`.
fn decode_segment(raw: &str) -> Option<String> {
    if !raw.contains('~') {
        return Some(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// A canonical array index, `0` or `[1-9][0-9]*`; `-`, leading zeros, signs and indexes too large
/// for `usize` are not (they make the path MISSING).
fn array_index(segment: &str) -> Option<usize> {
    let canonical = !segment.is_empty()
        && segment.bytes().all(|b| b.is_ascii_digit())
        && (segment == "0" || !segment.starts_with('0'));
    if canonical {
        segment.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Doc(BTreeMap<String, (Value, bool)>);

    impl Document for Doc {
        fn top(&self, key: &str) -> Option<(&Value, bool)> {
            self.0.get(key).map(|(v, t)| (v, *t))
        }
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).expect("test JSON")
    }

    fn doc() -> Doc {
        let mut m = BTreeMap::new();
        m.insert(
            "list".to_owned(),
            (json(r#"[10, [20, 21], {"k": 30}]"#), false),
        );
        m.insert(
            "m".to_owned(),
            (json(r#"{"0": "zero", "a/b": 1, "~": 2}"#), false),
        );
        m.insert("key2".to_owned(), (json("7"), false));
        m.insert("version".to_owned(), (json(r#""1.10.0""#), true));
        m.insert("vs".to_owned(), (json(r#"["1.0.0"]"#), true));
        m.insert(String::new(), (json(r#""empty""#), false));
        m.insert("a/b".to_owned(), (json(r#""slash""#), false));
        m.insert("~x".to_owned(), (json(r#""tilde""#), false));
        Doc(m)
    }

    fn get(p: &str) -> Option<(Value, bool)> {
        let path = Path::from_pointer(p).expect("valid pointer");
        path.resolve(&doc()).map(|(v, t)| (v.clone(), t))
    }

    fn reason(v: Option<Value>, field: &str) -> String {
        match Path::parse(v.as_ref(), field) {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn malformed_paths_give_the_exact_reasons() {
        assert_eq!(reason(None, "path"), "path: must not be nil");
        assert_eq!(
            reason(Some(Value::Null), "to.path"),
            "to.path: must not be nil"
        );
        assert_eq!(
            reason(Some(Value::Int(1)), "path"),
            "path: must be a string"
        );
        assert_eq!(reason(Some("".into()), "path"), "path: must not be empty");
        assert_eq!(
            reason(Some("x".into()), "path"),
            "path: must start with `/`, got: 'x'"
        );
        assert_eq!(
            reason(Some("/a~2".into()), "to.path"),
            "to.path: invalid escape sequence, got: '/a~2'"
        );
        assert_eq!(
            reason(Some("/a~".into()), "path"),
            "path: invalid escape sequence, got: '/a~'"
        );
    }

    #[test]
    fn escapes_decode_tilde_one_then_tilde_zero() {
        let p = Path::from_pointer("/a~1b/~0x/~01").expect("valid");
        assert_eq!(p.segments(), ["a/b", "~x", "~1"]);
        assert_eq!(p.to_pointer(), "/a~1b/~0x/~01");
    }

    #[test]
    fn digits_index_arrays_only() {
        assert_eq!(get("/list/0"), Some((json("10"), false)));
        assert_eq!(get("/list/1/1"), Some((json("21"), false)));
        assert_eq!(get("/list/2/k"), Some((json("30"), false)));
        assert_eq!(get("/m/0"), Some((json(r#""zero""#), false)));
        assert_eq!(get("/key2"), Some((json("7"), false)));
        for missing in [
            "/list/3", "/list/-", "/list/01", "/list/+1", "/list/", "/key2/0",
        ] {
            assert_eq!(get(missing), None, "{missing}");
        }
        assert_eq!(get("/list/99999999999999999999999"), None);
    }

    #[test]
    fn slash_alone_addresses_the_empty_key() {
        assert_eq!(get("/"), Some((json(r#""empty""#), false)));
        assert_eq!(get("/a~1b"), Some((json(r#""slash""#), false)));
        assert_eq!(get("/~0x"), Some((json(r#""tilde""#), false)));
        assert_eq!(get("/m/a~1b"), Some((json("1"), false)));
    }

    #[test]
    fn only_top_level_values_are_version_typed() {
        assert_eq!(get("/version"), Some((json(r#""1.10.0""#), true)));
        assert_eq!(get("/vs/0"), Some((json(r#""1.0.0""#), false)));
    }

    #[test]
    fn literal_keys_are_not_pointers() {
        let p = Path::literal_key("a/b");
        assert_eq!(p.top_key(), Some("a/b"));
        assert_eq!(
            p.resolve(&doc()).map(|(v, _)| v.clone()),
            Some(json(r#""slash""#))
        );
        assert_eq!(
            Path::from_pointer("/x/y").map(|p| p.top_key().is_none()),
            Ok(true)
        );
    }
}
