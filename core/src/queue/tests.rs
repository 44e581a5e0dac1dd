//! The queue rules of SPEC §8, with time passed in.

use std::collections::BTreeMap;

use super::*;
use crate::query::{AppFilter, Document, QueryLimits};

/// Clients known to the dispatch pass: connection → (identity, metadata).
#[derive(Default)]
struct Clients(BTreeMap<ConnId, (ConsumerIdentity, BTreeMap<String, Value>)>);

struct Doc<'a>(&'a BTreeMap<String, Value>);

impl Document for Doc<'_> {
    fn top(&self, key: &str) -> Option<(&Value, bool)> {
        self.0.get(key).map(|v| (v, false))
    }
}

impl Clients {
    fn add(&mut self, conn: ConnId, app: &str, client: &str, meta: &[(&str, Value)]) -> Waiter {
        self.0.insert(
            conn,
            (
                ConsumerIdentity {
                    application_id: app.into(),
                    client_id: client.into(),
                },
                meta.iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            ),
        );
        Waiter {
            conn,
            slot: conn as Slot,
        }
    }

    fn matches(&self, conn: ConnId, query: &Query) -> bool {
        self.0.get(&conn).is_some_and(|(id, meta)| {
            let app_ok = match &query.application {
                AppFilter::Any => true,
                AppFilter::Exact(app) => *app == id.application_id,
                AppFilter::Nothing => false,
            };
            app_ok && query.matches(&Doc(meta))
        })
    }
}

impl Matcher for Clients {
    fn waiter_matches(&self, waiter: Waiter, query: &Query) -> bool {
        self.matches(waiter.conn, query)
    }

    fn any_match(&self, query: &Query) -> bool {
        self.0.keys().any(|conn| self.matches(*conn, query))
    }

    fn identity(&self, waiter: Waiter) -> Option<ConsumerIdentity> {
        self.0.get(&waiter.conn).map(|(id, _)| id.clone())
    }
}

fn target(json: &str) -> (Value, Query) {
    let value: Value = serde_json::from_str(json).unwrap();
    let query = Query::parse(&value, QueryLimits::default()).unwrap();
    (value, query)
}

fn new(queue: &str, target: Value, payload: Value) -> NewMessage {
    NewMessage {
        queue: queue.into(),
        nonce: Value::Null,
        target,
        payload,
        trace: None,
    }
}

fn push(
    queues: &mut Queues,
    clients: &Clients,
    queue: &str,
    app: &str,
    now: u64,
) -> (String, Effects) {
    let (value, query) = target(&format!(r#"{{"application":"{app}"}}"#));
    let id = format!("m{}", queues.next_seq);
    let msg = queues.prepare(new(queue, value, Value::from("p")), id.clone(), now);
    let effects = queues.insert(msg, query, clients, now);
    (id, effects)
}

fn delivered_ids(effects: &Effects) -> Vec<(ConnId, String)> {
    effects
        .deliveries
        .iter()
        .map(|d| {
            let Out::Map(d_fields) = &d.frame.d else {
                panic!()
            };
            let Out::Map(payload) = &d_fields[2].1 else {
                panic!()
            };
            let Out::Str(id) = &payload[1].1 else {
                panic!()
            };
            (d.waiter.conn, id.to_string())
        })
        .collect()
}

fn config() -> QueueConfig {
    QueueConfig {
        ack_timeout_ms: 100,
        dlq_time_ms: 100,
        max_deliveries: 0,
        sweep_interval_ms: 10,
    }
}

#[test]
fn a_waiting_consumer_gets_a_pushed_message_and_the_delivery_is_persisted() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w1", &[]);
    let mut queues = Queues::new(config());
    assert!(queues.request("jobs", w, &clients, 0).deliveries.is_empty());
    let (id, effects) = push(&mut queues, &clients, "jobs", "worker", 0);
    assert_eq!(delivered_ids(&effects), vec![(1, id.clone())]);
    let StoreOp::Put(stored) = &effects.store[0] else {
        panic!("a delivery is persisted")
    };
    assert_eq!(stored.state, MessageState::InFlight { delivered_at: 0 });
    assert_eq!(stored.deliveries, 1);
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight, stats.waiting_consumers),
        (0, 1, 0)
    );
}

#[test]
fn each_request_buys_at_most_one_message() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w1", &[]);
    let mut queues = Queues::new(config());
    push(&mut queues, &clients, "jobs", "worker", 0);
    push(&mut queues, &clients, "jobs", "worker", 0);
    let first = queues.request("jobs", w, &clients, 0);
    assert_eq!(first.deliveries.len(), 1);
    // A repeated request while not waiting buys one more; while waiting, nothing changes.
    let second = queues.request("jobs", w, &clients, 0);
    assert_eq!(second.deliveries.len(), 1);
    let third = queues.request("jobs", w, &clients, 0);
    assert!(third.deliveries.is_empty());
    let fourth = queues.request("jobs", w, &clients, 0);
    assert!(fourth.deliveries.is_empty());
    assert_eq!(queues.stats_of("jobs").unwrap().waiting_consumers, 1);
}

#[test]
fn an_unmatched_message_does_not_block_later_ones() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w1", &[]);
    let mut queues = Queues::new(config());
    let (billing, _) = push(&mut queues, &clients, "jobs", "billing", 0);
    let (work, _) = push(&mut queues, &clients, "jobs", "worker", 0);
    let effects = queues.request("jobs", w, &clients, 0);
    assert_eq!(delivered_ids(&effects), vec![(1, work)]);
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!((stats.ready, stats.dead_lettered), (1, 0));
    // The billing message waits, in place, for a billing consumer.
    let b = clients.add(2, "billing", "b1", &[]);
    let effects = queues.request("jobs", b, &clients, 0);
    assert_eq!(delivered_ids(&effects), vec![(2, billing)]);
}

#[test]
fn the_longest_waiting_matching_consumer_wins() {
    let mut clients = Clients::default();
    let x = clients.add(1, "worker", "x", &[]);
    let y = clients.add(2, "worker", "y", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", x, &clients, 0);
    queues.request("jobs", y, &clients, 1_000);
    let (id, effects) = push(&mut queues, &clients, "jobs", "worker", 2_000);
    assert_eq!(delivered_ids(&effects), vec![(1, id)]);
}

#[test]
fn a_metadata_change_can_make_a_waiting_consumer_eligible() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[("gpu", Value::Bool(false))]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let (value, query) = target(
        r#"{"application":"worker","ops":[{"path":"/gpu","op":"$eq","to":{"value":true}}]}"#,
    );
    let msg = queues.prepare(new("jobs", value, Value::Null), "g".into(), 0);
    assert!(queues.insert(msg, query, &clients, 0).deliveries.is_empty());
    clients.add(1, "worker", "w", &[("gpu", Value::Bool(true))]);
    assert_eq!(
        delivered_ids(&queues.dispatch_all(&clients, 0)),
        vec![(1, "g".into())]
    );
}

#[test]
fn optional_targets_fall_back_to_the_application() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let (value, query) = target(
        r#"{"application":"worker","optional":true,"ops":[{"path":"/gpu","op":"$eq","to":{"value":true}}]}"#,
    );
    let msg = queues.prepare(new("jobs", value, Value::Null), "o".into(), 0);
    assert_eq!(
        delivered_ids(&queues.insert(msg, query, &clients, 0)),
        vec![(1, "o".into())]
    );
}

#[test]
fn cancel_stops_waiting_and_leaves_in_flight_messages_alone() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    push(&mut queues, &clients, "jobs", "worker", 0);
    queues.request("jobs", w, &clients, 0);
    queues.request("jobs", w, &clients, 0);
    assert_eq!(queues.waiting_on(1), ["jobs".to_owned()]);
    queues.cancel("jobs", 1);
    assert!(queues.waiting_on(1).is_empty());
    assert!(
        push(&mut queues, &clients, "jobs", "worker", 0)
            .1
            .deliveries
            .is_empty()
    );
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight, stats.waiting_consumers),
        (1, 1, 0)
    );
}

#[test]
fn only_the_last_consumer_can_ack() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    clients.add(2, "worker", "other", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let (id, _) = push(&mut queues, &clients, "jobs", "worker", 0);
    let other = ConsumerIdentity {
        application_id: "worker".into(),
        client_id: "other".into(),
    };
    let me = ConsumerIdentity {
        application_id: "worker".into(),
        client_id: "w".into(),
    };
    assert_eq!(queues.ack("jobs", &id, &other), Err(UnknownMessage));
    assert_eq!(queues.ack("other-queue", &id, &me), Err(UnknownMessage));
    assert_eq!(
        queues.ack("jobs", &id, &me),
        Ok(StoreOp::Delete { record: 0 })
    );
    assert_eq!(
        queues.ack("jobs", &id, &me),
        Err(UnknownMessage),
        "acked twice"
    );
    assert!(
        queues.stats_of("jobs").is_none(),
        "an empty idle queue is forgotten"
    );
}

#[test]
fn a_missed_ack_dead_letters_then_requeues_at_the_back() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let (first, _) = push(&mut queues, &clients, "jobs", "worker", 0);
    let (second, _) = push(&mut queues, &clients, "jobs", "worker", 0);

    assert!(
        queues.sweep(&clients, 99).store.is_empty(),
        "not before the ack timeout"
    );
    assert_eq!(queues.sweep(&clients, 100).store.len(), 1);
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!(
        (stats.in_flight, stats.dead_lettered, stats.ready),
        (0, 1, 1)
    );

    assert!(
        queues.sweep(&clients, 199).store.is_empty(),
        "not before the dead-letter time"
    );
    queues.sweep(&clients, 200);
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!((stats.dead_lettered, stats.ready), (0, 2));

    // Re-queued at the back: the message pushed after it now comes first.
    let effects = queues.request("jobs", w, &clients, 200);
    assert_eq!(delivered_ids(&effects), vec![(1, second)]);
    let effects = queues.request("jobs", w, &clients, 200);
    assert_eq!(delivered_ids(&effects), vec![(1, first)]);
}

#[test]
fn one_sweep_never_moves_a_message_twice() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    push(&mut queues, &clients, "jobs", "worker", 0);
    // Both timers long past: still only in flight -> dead-lettered.
    queues.sweep(&clients, 10_000);
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!((stats.dead_lettered, stats.ready), (1, 0));
}

#[test]
fn redelivery_keeps_the_id_and_counts_deliveries() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let (id, _) = push(&mut queues, &clients, "jobs", "worker", 0);
    queues.sweep(&clients, 100);
    queues.request("jobs", w, &clients, 150);
    let effects = queues.sweep(&clients, 200);
    assert_eq!(delivered_ids(&effects), vec![(1, id.clone())]);
    let delivered = effects.store.iter().find_map(|op| match op {
        StoreOp::Put(m) if matches!(m.state, MessageState::InFlight { .. }) => Some(m),
        _ => None,
    });
    assert_eq!(delivered.unwrap().deliveries, 2);
}

#[test]
fn max_deliveries_parks_and_replay_resets_the_count() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(QueueConfig {
        max_deliveries: 2,
        ..config()
    });
    queues.request("jobs", w, &clients, 0);
    let (id, _) = push(&mut queues, &clients, "jobs", "worker", 0);
    queues.sweep(&clients, 100);
    queues.request("jobs", w, &clients, 100);
    queues.sweep(&clients, 200);
    assert_eq!(
        queues.stats_of("jobs").unwrap().in_flight,
        1,
        "second delivery"
    );
    queues.sweep(&clients, 300);
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!(
        (stats.parked, stats.dead_lettered, stats.in_flight),
        (1, 0, 0)
    );
    let parked = queues.parked("jobs", 100);
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].deliveries, 2);
    assert_eq!(parked[0].state, MessageState::Parked { parked_at: 300 });

    assert!(
        queues
            .replay("jobs", Some(&["nope".into()]), &clients, 400)
            .is_none()
    );
    let (replayed, effects) = queues.replay("jobs", None, &clients, 400).unwrap();
    assert_eq!(replayed, vec![id.clone()]);
    assert!(effects.deliveries.is_empty(), "nobody is waiting");
    let stats = queues.stats_of("jobs").unwrap();
    assert_eq!((stats.parked, stats.ready), (0, 1));
    let effects = queues.request("jobs", w, &clients, 400);
    let StoreOp::Put(m) = &effects.store[0] else {
        panic!()
    };
    assert_eq!(m.deliveries, 1, "replay starts the count again");
}

#[test]
fn a_late_ack_from_the_last_consumer_is_accepted_after_dead_lettering() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let (id, _) = push(&mut queues, &clients, "jobs", "worker", 0);
    queues.sweep(&clients, 100);
    let me = ConsumerIdentity {
        application_id: "worker".into(),
        client_id: "w".into(),
    };
    assert!(queues.ack("jobs", &id, &me).is_ok());
    assert!(queues.sweep(&clients, 1_000).deliveries.is_empty());
}

#[test]
fn a_disconnect_returns_in_flight_messages_to_their_place_at_once() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let (first, _) = push(&mut queues, &clients, "jobs", "worker", 0);
    let (_second, _) = push(&mut queues, &clients, "jobs", "worker", 5);
    clients.0.remove(&1);
    let effects = queues.disconnect(1, &clients, 10);
    assert_eq!(effects.store.len(), 1);
    let StoreOp::Put(m) = &effects.store[0] else {
        panic!()
    };
    assert_eq!(
        (m.state, m.deliveries, m.enqueued_at),
        (MessageState::Ready, 1, 0)
    );
    assert!(queues.waiting_on(1).is_empty());
    // Back in front of the message pushed after it.
    let v = clients.add(2, "worker", "v", &[]);
    let effects = queues.request("jobs", v, &clients, 20);
    assert_eq!(delivered_ids(&effects), vec![(2, first.clone())]);
    // Its former consumer can still ack it until someone else got it — here someone did.
    let me = ConsumerIdentity {
        application_id: "worker".into(),
        client_id: "w".into(),
    };
    assert_eq!(queues.ack("jobs", &first, &me), Err(UnknownMessage));
}

#[test]
fn recovery_restores_states_and_the_fifo_position_counter() {
    let mut clients = Clients::default();
    let w = clients.add(1, "worker", "w", &[]);
    let mut queues = Queues::new(config());
    queues.request("jobs", w, &clients, 0);
    let mut stored = BTreeMap::new();
    for _ in 0..3 {
        let (_, effects) = push(&mut queues, &clients, "jobs", "worker", 0);
        for op in effects.store {
            if let StoreOp::Put(m) = op {
                stored.insert(m.id.clone(), *m);
            }
        }
    }
    for m in queues.queues["jobs"].entries.values() {
        stored.insert(m.msg.id.clone(), m.msg.clone());
    }
    let mut restored = Queues::new(config());
    let skipped = restored.recover(stored.into_values().collect(), |t| {
        Query::parse(t, QueryLimits::default()).ok()
    });
    assert!(skipped.is_empty());
    let stats = restored.stats_of("jobs").unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight, stats.waiting_consumers),
        (2, 1, 0)
    );
    assert_eq!(restored.next_seq, queues.next_seq);
    // In-flight messages from before the restart time out normally.
    restored.sweep(&clients, 100);
    assert_eq!(restored.stats_of("jobs").unwrap().dead_lettered, 1);
}

#[test]
fn queue_names_are_validated_with_the_spec_reasons() {
    assert_eq!(validate_name(&Value::Null), Err("queue: is required"));
    assert_eq!(
        validate_name(&Value::Int(1)),
        Err("queue: must be a string")
    );
    assert_eq!(
        validate_name(&Value::from("")),
        Err("queue: must not be empty")
    );
    assert_eq!(
        validate_name(&Value::from("a".repeat(256))),
        Err("queue: must be at most 255 bytes")
    );
    assert_eq!(
        validate_name(&Value::from("a b")),
        Err("queue: must not contain whitespace or control characters")
    );
    assert_eq!(validate_name(&Value::from("jobs")), Ok("jobs"));
}
