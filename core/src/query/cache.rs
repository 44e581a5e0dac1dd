//! The last query a connection routed, parsed once.
//!
//! Senders almost always address the same target again and again. Comparing the received target
//! with the last one costs far less than parsing it (and dropping the parsed query afterwards),
//! so each connection keeps its last parsed target.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{Query, QueryError, QueryLimits};
use crate::value::Value;

/// One connection's last parsed target. Only that connection's frames use it, one at a time,
/// so the lock is never contended.
#[derive(Debug, Default)]
pub struct QueryCache {
    last: Mutex<Option<(Value, Arc<Query>)>>,
}

impl QueryCache {
    /// The parsed form of `target`: the cached one when `target` equals the last target, else
    /// freshly parsed (and cached when valid).
    pub fn parse(&self, target: &Value, limits: QueryLimits) -> Result<Arc<Query>, QueryError> {
        let mut last = self.last.lock();
        if let Some((cached, query)) = last.as_ref()
            && cached == target
        {
            return Ok(query.clone());
        }
        let query = Arc::new(Query::parse(target, limits)?);
        *last = Some((target.clone(), query.clone()));
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Map;

    fn target(app: &str) -> Value {
        Value::Object(Map::from([("application".to_owned(), Value::from(app))]))
    }

    #[test]
    fn a_repeated_target_is_parsed_once_and_a_new_one_replaces_it() {
        let cache = QueryCache::default();
        let first = cache.parse(&target("a"), QueryLimits::default()).unwrap();
        let again = cache.parse(&target("a"), QueryLimits::default()).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = cache.parse(&target("b"), QueryLimits::default()).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(
            other.application,
            crate::query::AppFilter::Exact("b".into())
        );
    }

    #[test]
    fn an_invalid_target_is_reported_every_time_and_not_cached() {
        let cache = QueryCache::default();
        let bad = Value::Int(5);
        assert!(cache.parse(&bad, QueryLimits::default()).is_err());
        assert!(cache.parse(&bad, QueryLimits::default()).is_err());
    }
}
