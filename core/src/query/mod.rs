//! The query language (SPEC §6): parse a query value into a [`Query`], evaluate it against a
//! client's metadata [`Document`], pick among matches with selectors and rendezvous hashing.
//!
//! - [`parse`]: v2 and legacy v1 forms into one condition tree, with the exact error reasons
//!   of SPEC §6.12;
//! - [`path`]: RFC 6901 pointers with the numeric-segment rule (§6.4);
//! - [`eval`]: typed equality and ordering (§6.5) and the operator table (§6.6–§6.7);
//! - [`select`]: `$min`/`$max`/`$avg` (§6.9);
//! - [`rendezvous`]: XXH3 highest-random-weight hashing for `key` (§6.10).
//!
//! Selecting the match set from the registry (§6.8) lives in `crate::registry`, which uses the
//! public AST here to plan index lookups.

pub mod cache;
pub mod eval;
pub mod parse;
pub mod path;
pub mod rendezvous;
pub mod select;

use crate::value::Value;

pub use path::Path;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub application: AppFilter,
    /// Include restricted clients too.
    pub restricted: bool,
    /// SEND/BROADCAST with no match are dropped silently instead of answered with `no_route`.
    pub droppable: bool,
    /// With no match, fall back to every client that passes `application` and `restricted`.
    pub optional: bool,
    /// Consistent-hashing key choosing one recipient among several.
    pub key: Option<String>,
    /// Conditions that must all hold (implicit AND).
    pub ops: Vec<Cond>,
    pub selector: Option<Selector>,
}

/// The `application` field (SPEC §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppFilter {
    /// Null or absent: every application.
    Any,
    /// A string: exactly this application id.
    Exact(String),
    /// Any other type: accepted, matches no client.
    Nothing,
}

/// One condition: a comparison or a logical operator over conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Cmp {
        path: Path,
        op: CmpOp,
        operand: Operand,
    },
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Nor(Vec<Cond>),
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `to.value`, form (a).
    Value(Value),
    /// `to.path` in the same client's metadata, or `default` when it is MISSING, form (b).
    Path { path: Path, default: Value },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    Contains,
    Ncontains,
}

impl CmpOp {
    pub fn from_name(name: &str) -> Option<CmpOp> {
        Some(match name {
            "$eq" => CmpOp::Eq,
            "$ne" => CmpOp::Ne,
            "$gt" => CmpOp::Gt,
            "$gte" => CmpOp::Gte,
            "$lt" => CmpOp::Lt,
            "$lte" => CmpOp::Lte,
            "$in" => CmpOp::In,
            "$nin" => CmpOp::Nin,
            "$contains" => CmpOp::Contains,
            "$ncontains" => CmpOp::Ncontains,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "$eq",
            CmpOp::Ne => "$ne",
            CmpOp::Gt => "$gt",
            CmpOp::Gte => "$gte",
            CmpOp::Lt => "$lt",
            CmpOp::Lte => "$lte",
            CmpOp::In => "$in",
            CmpOp::Nin => "$nin",
            CmpOp::Contains => "$contains",
            CmpOp::Ncontains => "$ncontains",
        }
    }
}

/// `{"$min": K}`, `{"$max": K}` or `{"$avg": K}` (SPEC §6.9).
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub kind: SelectorKind,
    pub path: Path,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorKind {
    Min,
    Max,
    Avg,
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Deepest allowed nesting of logical operators (`query.max_depth`).
    pub max_depth: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { max_depth: 32 }
    }
}

/// An invalid query. `reason` is one of the exact strings of SPEC §6.12.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct QueryError {
    pub reason: String,
}

impl QueryError {
    pub fn new(reason: impl Into<String>) -> QueryError {
        QueryError {
            reason: reason.into(),
        }
    }
}

/// A client's metadata as queries see it: user keys plus the reserved keys (SPEC §6.4).
pub trait Document {
    /// The value of top-level key `key`, and whether its declared type is `version`.
    fn top(&self, key: &str) -> Option<(&Value, bool)>;
}

impl Query {
    /// Parses a query value (SPEC §6.1–§6.3).
    pub fn parse(value: &Value, limits: QueryLimits) -> Result<Query, QueryError> {
        parse::parse_query(value, limits)
    }

    /// Whether every element of `ops` holds for `doc` (SPEC §6.8 step 4). `application` and
    /// `restricted` are checked by the caller, which knows the client's identity.
    pub fn matches(&self, doc: &impl Document) -> bool {
        self.ops.iter().all(|c| eval::holds(c, doc))
    }
}
