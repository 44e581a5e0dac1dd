//! Evaluating conditions (SPEC §6.5–§6.7). Placeholder until implemented.
use super::{Cond, Document};

pub(crate) fn holds(_cond: &Cond, _doc: &impl Document) -> bool {
    false
}
