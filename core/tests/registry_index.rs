//! The registry's indexes may only change the cost of a query, never its result: for random
//! clients, metadata updates, heartbeats, removals and queries, the indexed match set equals a
//! full scan — and so does a connection's cached match set after every change.

use std::sync::Arc;

use ganglion_core::frame::Encoding;
use ganglion_core::metadata::{Metadata, MetadataLimits, ReservedValues};
use ganglion_core::query::{Query, QueryLimits};
use ganglion_core::registry::{ClientRecord, MatchCache, Registry, Slot};
use ganglion_core::session::Discard;
use ganglion_core::{Map, Value};
use proptest::prelude::*;
use serde_json::json;

fn to_value(json: serde_json::Value) -> Value {
    serde_json::from_value(json).expect("data model value")
}

fn record(app: &str, id: usize, metadata: &serde_json::Value, restricted: bool) -> ClientRecord {
    let metadata = Metadata::initial(
        &to_value(metadata.clone()),
        ReservedValues {
            last_heartbeat_time: 1,
            restricted,
            encoding: Encoding::Json,
            ip: None,
            namespace: Value::Null,
            receive_client_updates: false,
        },
        &MetadataLimits::default(),
    )
    .expect("valid generated metadata");
    ClientRecord {
        application_id: app.to_owned(),
        client_id: format!("c{id}"),
        node: Arc::from("n"),
        restricted,
        receive_client_updates: false,
        socket_ip: None,
        // Every other client has an address, for the proxy's match sets.
        proxy_address: id
            .is_multiple_of(2)
            .then(|| format!("http://10.0.0.{}", id % 250)),
        metadata,
        outbox: Arc::new(Discard),
        conn_id: id as u64,
    }
}

fn scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (-3i64..4).prop_map(|n| json!(n)),
        prop_oneof![Just(0.5), Just(1.0), Just(-2.0), Just(2.5)].prop_map(|f| json!(f)),
        prop_oneof![
            Just("eu"),
            Just("us"),
            Just("1.2.0"),
            Just("1.10.0"),
            Just("")
        ]
        .prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
    ]
}

/// One metadata entry over a small domain of keys, so queries and clients collide often.
fn entry() -> impl Strategy<Value = (String, serde_json::Value)> {
    let key = prop_oneof![Just("a"), Just("b"), Just("v"), Just("tags")];
    let value = prop_oneof![
        (-3i64..4).prop_map(|n| json!({"type": "integer", "value": n})),
        prop_oneof![Just(0.5), Just(1.0), Just(2.5)]
            .prop_map(|f| json!({"type": "float", "value": f})),
        prop_oneof![Just("eu"), Just("us"), Just("1.2.0")]
            .prop_map(|s| json!({"type": "string", "value": s})),
        prop_oneof![
            Just("1.2.0"),
            Just("1.10.0"),
            Just("2.0.0-rc.1"),
            Just("1.2.0+b")
        ]
        .prop_map(|s| json!({"type": "version", "value": s})),
        prop::collection::vec(scalar(), 0..4).prop_map(|l| json!({"type": "list", "value": l})),
        any::<bool>().prop_map(|b| json!({"type": "boolean", "value": b})),
    ];
    (key.prop_map(str::to_owned), value)
}

fn metadata() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec(entry(), 0..4)
        .prop_map(|entries| serde_json::Value::Object(entries.into_iter().collect()))
}

fn comparison() -> impl Strategy<Value = serde_json::Value> {
    let path = prop_oneof![
        Just("/a"),
        Just("/b"),
        Just("/v"),
        Just("/tags"),
        Just("/tags/0"),
        Just("/restricted"),
        Just("/last_heartbeat_time")
    ];
    let op = prop_oneof![
        Just("$eq"),
        Just("$ne"),
        Just("$gt"),
        Just("$gte"),
        Just("$lt"),
        Just("$lte"),
        Just("$contains"),
        Just("$ncontains")
    ];
    prop_oneof![
        (path.clone(), op, scalar())
            .prop_map(|(p, o, x)| json!({"path": p, "op": o, "to": {"value": x}})),
        (
            path.clone(),
            prop_oneof![Just("$in"), Just("$nin")],
            prop::collection::vec(scalar(), 0..3)
        )
            .prop_map(|(p, o, x)| json!({"path": p, "op": o, "to": {"value": x}})),
        (path.clone(), path)
            .prop_map(|(p, q)| json!({"path": p, "op": "$lt", "to": {"path": q, "default": 1}})),
    ]
}

fn condition() -> impl Strategy<Value = serde_json::Value> {
    comparison().prop_recursive(2, 8, 3, |inner| {
        (
            prop_oneof![Just("$and"), Just("$or"), Just("$nor")],
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(op, with)| json!({"op": op, "with": with}))
    })
}

fn query() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof![Just(json!(null)), Just(json!("x")), Just(json!("y"))],
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
        prop_oneof![
            // Mostly a lone comparison, so the plan of each operator is the one that runs.
            3 => prop::collection::vec(comparison(), 1..2),
            2 => prop::collection::vec(condition(), 0..3),
        ],
        prop_oneof![
            6 => Just(json!(null)),
            1 => Just(json!({"$min": "a"})),
            1 => Just(json!({"$max": "b"})),
            1 => Just(json!({"$avg": "a"}))
        ],
    )
        .prop_map(|(application, restricted, optional, ops, selector)| {
            json!({"application": application, "restricted": restricted,
                   "optional": optional, "ops": ops, "selector": selector})
        })
}

#[derive(Debug, Clone)]
enum Step {
    Add {
        app: bool,
        metadata: serde_json::Value,
        restricted: bool,
    },
    Update {
        which: usize,
        metadata: serde_json::Value,
    },
    Remove {
        which: usize,
    },
    Heartbeat {
        which: usize,
        now: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<bool>(), metadata(), prop::bool::weighted(0.2))
            .prop_map(|(app, metadata, restricted)| Step::Add { app, metadata, restricted }),
        2 => (any::<usize>(), metadata()).prop_map(|(which, metadata)| Step::Update { which, metadata }),
        1 => any::<usize>().prop_map(|which| Step::Remove { which }),
        1 => (any::<usize>(), 0u64..4).prop_map(|(which, now)| Step::Heartbeat { which, now }),
    ]
}

/// Applies one step; `live` holds the registered clients' slots and connection ids.
fn apply(registry: &mut Registry, live: &mut Vec<(Slot, u64)>, id: usize, step: Step) {
    match step {
        Step::Add {
            app,
            metadata,
            restricted,
        } => {
            let app = if app { "x" } else { "y" };
            let slot = registry
                .register(record(app, id, &metadata, restricted), |_| {})
                .unwrap();
            live.push((slot, id as u64));
        }
        Step::Update { which, metadata } if !live.is_empty() => {
            let (slot, _) = live[which % live.len()];
            let Value::Object(update) = to_value(metadata) else {
                unreachable!()
            };
            let limits = MetadataLimits::default();
            registry
                .update_metadata(slot, |md| md.prepare(&update, &limits))
                .unwrap();
        }
        Step::Remove { which } if !live.is_empty() => {
            let (slot, conn) = live.remove(which % live.len());
            assert!(registry.unregister(slot, conn).is_some());
        }
        Step::Heartbeat { which, now } if !live.is_empty() => {
            let (slot, _) = live[which % live.len()];
            registry.heartbeat(slot, now);
        }
        _ => {}
    }
}

fn parse(q: &serde_json::Value) -> Query {
    Query::parse(&to_value(q.clone()), QueryLimits::default()).unwrap()
}

fn sorted(mut slots: Vec<Slot>) -> Vec<Slot> {
    slots.sort_unstable();
    slots
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn indexed_match_sets_equal_a_full_scan(
        steps in prop::collection::vec(step(), 1..60),
        queries in prop::collection::vec(query(), 1..24),
    ) {
        let mut registry = Registry::new("n");
        let mut live: Vec<(Slot, u64)> = Vec::new();
        for (id, step) in steps.into_iter().enumerate() {
            apply(&mut registry, &mut live, id, step);
        }
        for q in queries {
            let query = parse(&q);
            prop_assert_eq!(
                sorted(registry.match_set(&query)),
                sorted(registry.match_set_scan(&query)),
                "query {}", q
            );
        }
    }

    /// A connection's cached match set is the fresh one after any change to the registry:
    /// one cache per query (hit unless something changed) and one shared by all queries (the
    /// query switching under it).
    #[test]
    fn cached_match_sets_follow_every_registry_change(
        steps in prop::collection::vec(step(), 1..40),
        queries in prop::collection::vec(query(), 1..6),
    ) {
        let mut registry = Registry::new("n");
        let mut live: Vec<(Slot, u64)> = Vec::new();
        let parsed: Vec<Arc<Query>> = queries.iter().map(|q| Arc::new(parse(q))).collect();
        let own: Vec<MatchCache> = parsed.iter().map(|_| MatchCache::default()).collect();
        let shared = MatchCache::default();
        // The proxy's: the same, over the clients with an address only.
        let own_proxy: Vec<MatchCache> = parsed.iter().map(|_| MatchCache::default()).collect();
        let shared_proxy = MatchCache::default();
        let reachable = |r: &ClientRecord| r.proxy_address.is_some();
        let check = |registry: &Registry| -> Result<(), TestCaseError> {
            for (((query, cache), proxy_cache), q) in
                parsed.iter().zip(&own).zip(&own_proxy).zip(&queries)
            {
                let fresh = registry.match_set(query);
                for cache in [cache, &shared] {
                    let cached = registry.match_set_cached(query, cache, <[Slot]>::to_vec);
                    prop_assert_eq!(&cached, &fresh, "query {}", q);
                }
                let fresh_proxy = registry.match_set_where(query, reachable);
                for cache in [proxy_cache, &shared_proxy] {
                    let cached =
                        registry.match_set_cached_where(query, cache, reachable, <[Slot]>::to_vec);
                    prop_assert_eq!(&cached, &fresh_proxy, "proxy query {}", q);
                }
                prop_assert_eq!(sorted(fresh), sorted(registry.match_set_scan(query)));
            }
            Ok(())
        };
        check(&registry)?;
        for (id, step) in steps.into_iter().enumerate() {
            apply(&mut registry, &mut live, id, step);
            check(&registry)?;
            // Asked again with nothing changed: the kept answer.
            check(&registry)?;
        }
    }
}

#[test]
fn replace_updates_drop_stale_index_entries() {
    let mut registry = Registry::new("n");
    let slot = registry
        .register(
            record(
                "x",
                1,
                &json!({"a": {"type": "integer", "value": 1}}),
                false,
            ),
            |_| {},
        )
        .unwrap();
    let q = Query::parse(
        &to_value(json!({"ops": [{"path": "/a", "op": "$eq", "to": {"value": 1}}]})),
        QueryLimits::default(),
    )
    .unwrap();
    assert_eq!(registry.match_set(&q), vec![slot]);
    let replace = MetadataLimits {
        strategy: ganglion_core::metadata::UpdateStrategy::Replace,
        ..MetadataLimits::default()
    };
    registry
        .update_metadata(slot, |md| md.prepare(&Map::new(), &replace))
        .unwrap();
    assert!(registry.match_set(&q).is_empty());
    assert!(registry.match_set_scan(&q).is_empty());
}
