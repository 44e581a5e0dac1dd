//! Parsing queries (SPEC §6.1–§6.3, §6.12). Placeholder until implemented.
use super::{Query, QueryError, QueryLimits};
use crate::value::Value;

pub(crate) fn parse_query(_value: &Value, _limits: QueryLimits) -> Result<Query, QueryError> {
    Err(QueryError::new("query: not implemented"))
}
