//! The last query a connection routed, parsed once, and its match set.
//!
//! Senders almost always address the same target again and again. Comparing the received target
//! with the last one costs far less than parsing it (and dropping the parsed query afterwards),
//! so each connection keeps its last parsed target; and while the registry has not changed,
//! the clients that target matched (see [`MatchCache`]).

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Query, QueryError, QueryLimits};
use crate::frame::RawValue;
use crate::registry::MatchCache;
use crate::value::Value;

/// One connection's last parsed target. Only that connection's frames use it, one at a time,
/// so the lock is never contended.
#[derive(Debug, Default)]
pub struct QueryCache {
    last: Mutex<Option<(Value, Arc<Query>)>>,
    /// The last target that arrived in wire form, by its bytes.
    last_raw: Mutex<Option<(Bytes, Arc<Query>)>>,
    /// The match set of the last query routed.
    pub matches: MatchCache,
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

    /// The parsed form of a target still in wire form: a repeated target is recognised by its
    /// bytes, without decoding it.
    pub fn parse_raw(
        &self,
        target: &RawValue,
        limits: QueryLimits,
    ) -> Result<Arc<Query>, QueryError> {
        let mut last = self.last_raw.lock();
        if let Some((bytes, query)) = last.as_ref()
            && *bytes == target.bytes
        {
            return Ok(query.clone());
        }
        let query = Arc::new(Query::parse(&target.value(), limits)?);
        // A copy: keeping a slice would keep the whole frame it came in alive.
        *last = Some((Bytes::copy_from_slice(&target.bytes), query.clone()));
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

    /// A stand-in wire form: the bytes are the application id (`!` for a target that is not
    /// an object), so tests need no codec.
    fn raw(app: &str) -> RawValue {
        fn decode(bytes: &[u8]) -> Option<Value> {
            match bytes {
                b"!" => Some(Value::Int(5)),
                _ => Some(target(std::str::from_utf8(bytes).ok()?)),
            }
        }
        RawValue {
            encoding: crate::frame::Encoding::Msgpack,
            bytes: Bytes::copy_from_slice(app.as_bytes()),
            normal: true,
            decode,
        }
    }

    #[test]
    fn a_target_in_wire_form_is_recognised_by_its_bytes() {
        let cache = QueryCache::default();
        let first = cache.parse_raw(&raw("a"), QueryLimits::default()).unwrap();
        let again = cache.parse_raw(&raw("a"), QueryLimits::default()).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = cache.parse_raw(&raw("b"), QueryLimits::default()).unwrap();
        assert_eq!(
            other.application,
            crate::query::AppFilter::Exact("b".into())
        );
        let back = cache.parse_raw(&raw("a"), QueryLimits::default()).unwrap();
        assert_eq!(back.application, crate::query::AppFilter::Exact("a".into()));
        assert!(cache.parse_raw(&raw("!"), QueryLimits::default()).is_err());
        // A failed parse leaves the last good one in place.
        let after = cache.parse_raw(&raw("a"), QueryLimits::default()).unwrap();
        assert!(Arc::ptr_eq(&back, &after));
    }
}
