//! JSON Pointer paths (SPEC §6.4). Placeholder until implemented.

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    segments: Vec<String>,
}
