//! The Rust client (`ganglion-client`) against a real node, over websocket and raw TCP, in
//! JSON and MessagePack, plain and TLS: identify with typed metadata, the query and `--where`
//! builders, send/broadcast/query round trips, confirmed sends, request/reply, queues, client
//! updates, reconnects (after a drain onto a fresh node, and after the network drops the
//! connection, including the reconnect racing the old registration), heartbeats, and close.
//!
//! Network faults are made by a TCP forwarder the test controls: it can cut every connection
//! through it and refuse new ones until it is opened again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use ganglion_client::{
    Client, ClientUpdate, Condition, Dispatch, Error, Event, Metadata, Query, Reconnect, State,
    where_clause,
};
use ganglion_tests::{Enc, TestGateway, patience, temp_dir};
use hyper::Method;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// === helpers ===

/// A transport and an encoding, as a DSN names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    WsJson,
    WsMsgpack,
    TcpJson,
    TcpMsgpack,
}

impl Via {
    const ALL: [Via; 4] = [Via::WsJson, Via::WsMsgpack, Via::TcpJson, Via::TcpMsgpack];

    fn encoding(self) -> &'static str {
        match self {
            Via::WsJson | Via::TcpJson => "json",
            Via::WsMsgpack | Via::TcpMsgpack => "msgpack",
        }
    }

    fn is_tcp(self) -> bool {
        matches!(self, Via::TcpJson | Via::TcpMsgpack)
    }

    /// The DSN of `app` on a node listening at `ws` (HTTP) and `tcp`.
    fn dsn(self, app: &str, ws: SocketAddr, tcp: SocketAddr) -> String {
        if self.is_tcp() {
            format!("ganglion+tcp://{app}@{tcp}?encoding={}", self.encoding())
        } else {
            format!("singyeong://{app}@{ws}?encoding={}", self.encoding())
        }
    }
}

fn dsn(gw: &TestGateway, via: Via, app: &str) -> String {
    via.dsn(
        app,
        gw.addr,
        gw.tcp_addr.expect("the test node listens on TCP"),
    )
}

/// Reconnects quickly: tests wait for them.
fn fast_reconnect() -> Reconnect {
    Reconnect {
        enabled: true,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_attempts: None,
    }
}

async fn connect(dsn: &str, client_id: &str, metadata: Metadata) -> Client {
    Client::builder(dsn)
        .expect("a valid DSN")
        .client_id(client_id)
        .metadata(metadata)
        .reconnect(fast_reconnect())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{client_id} connects to {dsn}: {e}"))
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(patience(), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until the client's state satisfies `check`.
async fn wait_state(client: &Client, what: &str, check: impl FnMut(&State) -> bool) -> State {
    let mut changes = client.state_changes();
    within(what, changes.wait_for(check))
        .await
        .expect("the client is alive")
        .clone()
}

/// The client objects of `app`, by client id.
async fn clients_of(gw: &TestGateway, app: &str) -> Vec<Value> {
    let mut found = gw.query(json!({"application": app})).await;
    found.sort_by(|a, b| a["client_id"].as_str().cmp(&b["client_id"].as_str()));
    found
}

async fn queue_stats(gw: &TestGateway, queue: &str) -> Value {
    let response = gw
        .http(Method::GET, &format!("/api/v1/queues/{queue}"), &[], "")
        .await;
    response.json()
}

/// Receives the next message or fails the test.
async fn next_message(messages: &mut ganglion_client::Messages) -> ganglion_client::Message {
    within("a message", messages.recv())
        .await
        .expect("the stream is open")
}

// === identify, metadata ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_identifies_with_typed_metadata_over_every_transport_and_encoding() {
    let gw = TestGateway::start().await;
    for via in Via::ALL {
        let client = connect(
            &dsn(&gw, via, "typed"),
            "c1",
            Metadata::new()
                .string("region", "eu")
                .integer("load", 3)
                .float("cpu", 0.5)
                .version("v", "1.2.0")
                .boolean("gpu", true)
                .list("tags", vec![json!("ssd"), json!(2)])
                .map("limits", json!({"rps": 100}).as_object().unwrap().clone()),
        )
        .await;
        assert_eq!(
            client.state(),
            State {
                connected: true,
                restricted: false,
                sessions: 1,
                reconnect_attempts: 0,
                last_disconnect: None,
                last_reconnect_error: None,
                closed: false,
            }
        );
        let found = clients_of(&gw, "typed").await;
        assert_eq!(found.len(), 1, "{via:?}");
        let metadata = &found[0]["metadata"];
        assert_eq!(
            (
                &metadata["region"],
                &metadata["load"],
                &metadata["cpu"],
                &metadata["v"]
            ),
            (&json!("eu"), &json!(3), &json!(0.5), &json!("1.2.0")),
            "{via:?}"
        );
        assert_eq!(metadata["gpu"], json!(true));
        assert_eq!(metadata["tags"], json!(["ssd", 2]));
        assert_eq!(metadata["limits"], json!({"rps": 100}));
        assert_eq!(metadata["ganglion_inbox"], json!(client.inbox()));
        assert_eq!(metadata["encoding"], json!(via.encoding()), "{via:?}");
        let types = &found[0]["metadata_types"];
        for (key, ty) in [
            ("region", "string"),
            ("load", "integer"),
            ("cpu", "float"),
            ("v", "version"),
            ("gpu", "boolean"),
            ("tags", "list"),
            ("limits", "map"),
        ] {
            assert_eq!(types[key], ty, "{via:?} {key}");
        }
        client.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_metadata_is_applied_when_it_returns_and_a_refused_update_is_an_error() {
    let gw = TestGateway::start_with(|config| config.metadata.max_bytes = 200).await;
    let client = connect(
        &dsn(&gw, Via::WsMsgpack, "upd"),
        "c1",
        Metadata::new().integer("load", 1).string("region", "eu"),
    )
    .await;
    client
        .update_metadata(Metadata::new().integer("load", 7))
        .await
        .unwrap();
    let metadata = &clients_of(&gw, "upd").await[0]["metadata"];
    assert_eq!(
        (&metadata["load"], &metadata["region"]),
        (&json!(7), &json!("eu"))
    );
    // Over the node's size limit: refused as a whole, by the server.
    let refused = client
        .update_metadata(Metadata::new().string("big", "x".repeat(300)))
        .await;
    match refused {
        Err(Error::Server { error, extra_info }) => {
            assert_eq!(error, "invalid metadata");
            assert_eq!(
                extra_info,
                json!({"big": "big: metadata size limit exceeded (max 200 bytes)"})
            );
        }
        other => panic!("expected the server's refusal, got {other:?}"),
    }
    // Refused by the client before anything is sent.
    let reserved = client
        .update_metadata(Metadata::new().string("ip", "10.0.0.1"))
        .await;
    assert!(
        matches!(&reserved, Err(Error::Metadata(e)) if e.key == "ip"),
        "{reserved:?}"
    );
    let metadata = &clients_of(&gw, "upd").await[0]["metadata"];
    assert_eq!(metadata.get("big"), None);
    assert_eq!(metadata["load"], json!(7));
}

// === send, broadcast, query ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_broadcast_and_query_nodes_reach_exactly_what_the_builders_select() {
    let gw = TestGateway::start().await;
    for via in Via::ALL {
        let app = format!("route-{}", via.encoding());
        let dsn = dsn(&gw, via, &app);
        let eu = connect(
            &dsn,
            "eu",
            Metadata::new()
                .string("region", "eu")
                .integer("load", 3)
                .version("v", "1.10.0"),
        )
        .await;
        let us = connect(
            &dsn,
            "us",
            Metadata::new()
                .string("region", "us")
                .integer("load", 9)
                .version("v", "1.9.0"),
        )
        .await;
        let sender = connect(&dsn, "sender", Metadata::new()).await;
        let (mut eu_in, mut us_in) = (eu.messages().unwrap(), us.messages().unwrap());
        let mut sender_in = sender.messages().unwrap();

        // SEND by the query builder: only eu matches.
        let to_eu = Query::application(&app).eq("region", "eu");
        sender.send(&to_eu, &json!({"n": 1})).await.unwrap();
        let got = next_message(&mut eu_in).await;
        assert_eq!(
            (got.event, &got.nonce, &got.payload),
            (Event::Send, &Value::Null, &json!({"n": 1}))
        );

        // SEND by the --where syntax, confirmed: versions compare by SemVer precedence, so
        // 1.10.0 qualifies and 1.9.0 does not.
        let newer = Query::application(&app)
            .filters(where_clause::parse("v >= 1.10.0 and load < 5").unwrap());
        sender
            .dispatch(Dispatch {
                event: Event::Send,
                target: &newer,
                payload: &"versioned",
                nonce: Some(&json!("n-7")),
                confirm: true,
            })
            .await
            .unwrap();
        let got = next_message(&mut eu_in).await;
        assert_eq!(
            (&got.nonce, &got.payload),
            (&json!("n-7"), &json!("versioned"))
        );

        // BROADCAST to everyone with a region: eu and us, not the sender.
        let regional = Query::application(&app).filter(Condition::is_in("region", ["eu", "us"]));
        sender.broadcast(&regional, &[1, 2, 3]).await.unwrap();
        for inbox in [&mut eu_in, &mut us_in] {
            let got = next_message(inbox).await;
            assert_eq!(
                (got.event, &got.payload),
                (Event::Broadcast, &json!([1, 2, 3]))
            );
        }
        // Nothing else arrived anywhere: the sender's frames were processed before its sync,
        // each receiver's deliveries before its own.
        sender.sync().await.unwrap();
        for (client, inbox) in [
            (&eu, &mut eu_in),
            (&us, &mut us_in),
            (&sender, &mut sender_in),
        ] {
            client.sync().await.unwrap();
            assert_eq!(inbox.try_recv(), None, "{via:?} {}", client.client_id());
        }

        // QUERY_NODES: both regional clients, with their metadata; a selector picks one.
        let mut nodes = sender.query_nodes(&regional).await.unwrap();
        nodes.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let ids: Vec<_> = nodes.iter().map(|n| n.client_id.as_str()).collect();
        assert_eq!(ids, ["eu", "us"], "{via:?}");
        assert_eq!(nodes[1].metadata["load"], json!(9));
        assert_eq!(nodes[1].metadata_types["v"], json!("version"));
        assert_eq!(nodes[0].app_id, app);
        let busiest = sender
            .query_nodes(&regional.clone().select_max("load"))
            .await
            .unwrap();
        assert_eq!(busiest.len(), 1);
        assert_eq!(busiest[0].client_id, "us");
        let none = sender
            .query_nodes(&Query::application(&app).eq("region", "mars"))
            .await
            .unwrap();
        assert_eq!(none, []);
        for client in [eu, us, sender] {
            client.close().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_send_that_matches_nobody_is_no_route_unless_droppable_and_a_bad_query_is_invalid()
 {
    let gw = TestGateway::start().await;
    let sender = connect(&dsn(&gw, Via::TcpJson, "nr"), "s", Metadata::new()).await;
    let nobody = Query::application("nobody");
    fn confirmed(target: &Query) -> Dispatch<'_, Value> {
        Dispatch {
            event: Event::Broadcast,
            target,
            payload: &Value::Null,
            nonce: None,
            confirm: true,
        }
    }
    assert!(matches!(
        sender.dispatch(confirmed(&nobody)).await,
        Err(Error::NoRoute)
    ));
    assert!(matches!(
        sender
            .dispatch(confirmed(&Query::application("nobody").droppable()))
            .await,
        Ok(())
    ));
    let bad = Query::application("nr")
        .is_in("x", Vec::<Value>::new())
        .filter(Condition::compare(
            "/y",
            ganglion_client::Op::In,
            "not a list",
        ));
    match sender.dispatch(confirmed(&bad)).await {
        Err(Error::InvalidQuery(reason)) => assert_eq!(reason, "$in: operand must be a list"),
        other => panic!("expected invalid query, got {other:?}"),
    }
    match sender.query_nodes(&bad).await {
        Err(Error::InvalidQuery(reason)) => assert_eq!(reason, "$in: operand must be a list"),
        other => panic!("expected invalid query, got {other:?}"),
    }
    // The connection is still fine.
    assert_eq!(sender.state().sessions, 1);
    assert!(
        sender
            .query_nodes(&Query::application("nr"))
            .await
            .unwrap()
            .len()
            == 1
    );
}

// === request / reply ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_its_reply_and_times_out_when_nobody_answers() {
    let gw = TestGateway::start().await;
    for via in [Via::WsJson, Via::TcpMsgpack] {
        let responder = connect(&dsn(&gw, via, "echo"), "r1", Metadata::new()).await;
        let silent = connect(&dsn(&gw, via, "silent"), "s1", Metadata::new()).await;
        let requester = connect(&dsn(&gw, via, "caller"), "c1", Metadata::new()).await;
        let mut requests = responder.messages().unwrap();
        let echo = responder.clone();
        let serve = tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                assert!(request.is_request(), "{request:?}");
                let payload = json!({"echo": request.payload});
                echo.reply(&request, &payload).await.unwrap();
            }
        });
        let reply = requester
            .request(&Query::application("echo"), &json!({"n": 1}), patience())
            .await
            .unwrap();
        assert_eq!(reply.payload, json!({"echo": {"n": 1}}));
        assert_eq!(reply.event, Event::Send);
        // Many at once: each reply finds its own request.
        let replies = join_all((0..20).map(|n| {
            let requester = requester.clone();
            async move {
                requester
                    .request(&Query::application("echo"), &n, patience())
                    .await
                    .unwrap()
                    .payload
            }
        }))
        .await;
        assert_eq!(
            replies,
            (0..20).map(|n| json!({"echo": n})).collect::<Vec<_>>()
        );

        let timeout = Duration::from_millis(300);
        match requester
            .request(&Query::application("silent"), &1, timeout)
            .await
        {
            Err(Error::Timeout(after)) => assert_eq!(after, timeout),
            other => panic!("expected a timeout, got {other:?}"),
        }
        match requester
            .request(&Query::application("nobody"), &1, patience())
            .await
        {
            Err(Error::NoRoute) => {}
            other => panic!("expected no route, got {other:?}"),
        }
        // The silent client did get the request, with a reply address.
        let mut silent_in = silent.messages().unwrap();
        let unanswered = next_message(&mut silent_in).await;
        assert_eq!(unanswered.nonce["reply_to"]["application"], "caller");
        assert_eq!(
            unanswered.nonce["reply_to"]["ops"][0],
            json!({"path": "/ganglion_inbox", "op": "$eq", "to": {"value": requester.inbox()}})
        );
        // A message that is not a request cannot be replied to.
        let plain = ganglion_client::Message {
            event: Event::Send,
            nonce: json!("n"),
            payload: Value::Null,
            ts: None,
        };
        assert!(matches!(
            silent.reply(&plain, &1).await,
            Err(Error::NotARequest)
        ));
        responder.close().await.unwrap();
        serve.await.unwrap();
        silent.close().await.unwrap();
        requester.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_matches_its_own_target_gets_its_request_as_a_message_not_as_the_reply() {
    let gw = TestGateway::start().await;
    let client = connect(&dsn(&gw, Via::WsMsgpack, "self"), "c1", Metadata::new()).await;
    let mut inbox = client.messages().unwrap();
    let responder = client.clone();
    let serve = tokio::spawn(async move {
        let request = next_message(&mut inbox).await;
        assert_eq!(request.payload, json!("ping"));
        responder.reply(&request, &"pong").await.unwrap();
    });
    let reply = client
        .request(&Query::application("self"), &"ping", patience())
        .await
        .unwrap();
    assert_eq!(reply.payload, json!("pong"));
    serve.await.unwrap();
}

// === queues ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_are_each_confirmed_and_a_consumer_acks_every_message() {
    let gw = TestGateway::start().await;
    for via in [Via::WsMsgpack, Via::TcpJson] {
        let queue = format!("jobs-{}", if via.is_tcp() { "tcp" } else { "ws" });
        let producer = connect(&dsn(&gw, via, "producer"), "p", Metadata::new()).await;
        let worker = connect(
            &dsn(&gw, via, "worker"),
            "w",
            Metadata::new().boolean("gpu", true),
        )
        .await;
        let target = Query::application("worker").eq("gpu", true);
        let confirms = join_all((0..50).map(|n| {
            let (producer, queue, target) = (&producer, &queue, &target);
            async move { producer.publish(queue, target, &json!({"job": n})).await }
        }))
        .await;
        let ids: Vec<String> = confirms
            .into_iter()
            .map(|c| {
                let c = c.unwrap();
                assert_eq!(c.queue, queue);
                c.id
            })
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 50);

        let mut consumer = worker.consume_with(&queue, 4).await.unwrap();
        assert!(matches!(
            worker.consume(&queue).await,
            Err(Error::AlreadyTaken(_))
        ));
        for (n, id) in ids.iter().enumerate() {
            let message = within("a queue message", consumer.recv()).await.unwrap();
            // One producer, one consumer, no redelivery: push order (SPEC §8.8).
            assert_eq!((&message.id, &message.payload), (id, &json!({"job": n})));
            assert_eq!(message.queue, queue);
            message.ack().await.unwrap();
        }
        worker.sync().await.unwrap();
        let stats = queue_stats(&gw, &queue).await;
        assert_eq!(
            (&stats["ready"], &stats["in_flight"]),
            (&json!(0), &json!(0)),
            "{stats}"
        );
        producer.close().await.unwrap();
        worker.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_queue_name_is_refused_before_anything_is_sent() {
    let gw = TestGateway::start().await;
    let client = connect(&dsn(&gw, Via::WsJson, "q"), "c", Metadata::new()).await;
    match client.publish("has space", &Query::any(), &1).await {
        Err(Error::QueueName { name, reason }) => {
            assert_eq!(
                (name.as_str(), reason),
                (
                    "has space",
                    "must not contain whitespace or control characters"
                )
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.consume("").await,
        Err(Error::QueueName { .. })
    ));
}

// === client updates ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_updates_report_connects_and_disconnects_of_every_application() {
    let gw = TestGateway::start().await;
    let watcher = Client::builder(&dsn(&gw, Via::TcpMsgpack, "watch"))
        .unwrap()
        .client_id("w")
        .receive_client_updates(true)
        .connect()
        .await
        .unwrap();
    let mut updates = watcher.client_updates().unwrap();
    assert!(matches!(
        watcher.client_updates(),
        Err(Error::AlreadyTaken(_))
    ));
    // Its own connect comes first.
    assert_eq!(
        within("an update", updates.recv()).await,
        Some(ClientUpdate::ClientConnected {
            application_id: "watch".into(),
            client_id: "w".into()
        })
    );
    let other = connect(&dsn(&gw, Via::WsJson, "svc"), "s1", Metadata::new()).await;
    assert_eq!(
        within("an update", updates.recv()).await,
        Some(ClientUpdate::ClientConnected {
            application_id: "svc".into(),
            client_id: "s1".into()
        })
    );
    other.close().await.unwrap();
    assert_eq!(
        within("an update", updates.recv()).await,
        Some(ClientUpdate::ClientDisconnected {
            application_id: "svc".into(),
            client_id: "s1".into()
        })
    );
    let plain = connect(&dsn(&gw, Via::WsJson, "svc"), "s2", Metadata::new()).await;
    assert!(matches!(
        plain.client_updates(),
        Err(Error::NoClientUpdates)
    ));
}

// === reconnects ===

/// A TCP forwarder between a client and the node: [`Forwarder::cut`] drops every connection
/// through it and refuses new ones until [`Forwarder::open`].
struct Forwarder {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    generation: Arc<watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, open_rx) = watch::channel(true);
        let generation = Arc::new(watch::channel(0u64).0);
        let cuts = Arc::clone(&generation);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*open_rx.borrow() {
                    continue; // dropped: the client sees the connection end at once
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Forwarder {
            addr,
            open,
            generation,
            task,
        }
    }

    fn cut(&self) {
        self.open.send_replace(false);
        self.generation.send_modify(|g| *g += 1);
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for CLIENT_DISCONNECTED of `app/client_id`: the node has cleaned the client up.
async fn disconnected(updates: &mut ganglion_client::ClientUpdates, app: &str, client_id: &str) {
    loop {
        let update = within("CLIENT_DISCONNECTED", updates.recv())
            .await
            .expect("open");
        if update
            == (ClientUpdate::ClientDisconnected {
                application_id: app.to_owned(),
                client_id: client_id.to_owned(),
            })
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_drain_the_client_moves_to_a_fresh_node_on_the_same_address_with_its_metadata_and_consumer()
 {
    for via in [Via::WsMsgpack, Via::TcpMsgpack] {
        let gw = TestGateway::start().await;
        let (ws, tcp) = (gw.addr, gw.tcp_addr.unwrap());
        let worker = connect(
            &via.dsn("movers", ws, tcp),
            "w1",
            Metadata::new().string("region", "eu").integer("load", 1),
        )
        .await;
        worker
            .update_metadata(Metadata::new().integer("load", 5).boolean("ready", true))
            .await
            .unwrap();
        let mut consumer = worker.consume("moves").await.unwrap();
        let mut messages = worker.messages().unwrap();
        // The consumer is waiting on the first node.
        worker.sync().await.unwrap();
        assert_eq!(
            clients_of(&gw, "movers").await[0]["queues"],
            json!(["moves"])
        );

        gw.drain().await;
        let state = wait_state(&worker, "the goodbye", |s| !s.connected).await;
        assert_eq!(
            state.last_disconnect.as_deref(),
            Some("goodbye: draining"),
            "{via:?}"
        );
        let fresh = TestGateway::start_with(|config| {
            config.listen = ws.to_string();
            config.tcp.listen = tcp.to_string();
        })
        .await;
        wait_state(&worker, "the reconnect", |s| s.connected && s.sessions == 2).await;

        // Metadata: the initial document plus the update, and the inbox.
        let found = clients_of(&fresh, "movers").await;
        assert_eq!(found.len(), 1, "{via:?}");
        let metadata = &found[0]["metadata"];
        assert_eq!(
            (&metadata["region"], &metadata["load"], &metadata["ready"]),
            (&json!("eu"), &json!(5), &json!(true)),
            "{via:?}"
        );
        assert_eq!(metadata["ganglion_inbox"], json!(worker.inbox()));
        // The queue request was made again: work pushed to the fresh node reaches it.
        let producer = connect(&via.dsn("producer", ws, tcp), "p", Metadata::new()).await;
        let confirm = producer
            .publish(
                "moves",
                &Query::application("movers").eq("load", 5),
                &"after the move",
            )
            .await
            .unwrap();
        let message = within("the queued message", consumer.recv()).await.unwrap();
        assert_eq!(
            (&message.id, &message.payload),
            (&confirm.id, &json!("after the move"))
        );
        message.ack().await.unwrap();
        // And messages route to it by its restored metadata.
        producer
            .send(
                &Query::application("movers").eq("ready", true),
                &"hello again",
            )
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut messages).await.payload,
            json!("hello again")
        );
        worker.sync().await.unwrap();
        let stats = queue_stats(&fresh, "moves").await;
        assert_eq!(
            (&stats["ready"], &stats["in_flight"]),
            (&json!(0), &json!(0))
        );
        worker.close().await.unwrap();
        producer.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_redialled_and_the_unacked_message_comes_back() {
    let gw = TestGateway::start().await;
    let watcher = Client::builder(&dsn(&gw, Via::WsJson, "watch"))
        .unwrap()
        .receive_client_updates(true)
        .connect()
        .await
        .unwrap();
    let mut updates = watcher.client_updates().unwrap();
    let producer = connect(&dsn(&gw, Via::WsJson, "producer"), "p", Metadata::new()).await;
    for via in [Via::WsJson, Via::TcpMsgpack] {
        let target = if via.is_tcp() {
            gw.tcp_addr.unwrap()
        } else {
            gw.addr
        };
        let forwarder = Forwarder::start(target).await;
        let queue = format!("work-{}", via.encoding());
        let id = format!("w-{}", via.encoding());
        let worker = connect(
            &via.dsn("cut", forwarder.addr, forwarder.addr),
            &id,
            Metadata::new().integer("shard", 7),
        )
        .await;
        let mut consumer = worker.consume(&queue).await.unwrap();
        let confirm = producer
            .publish(&queue, &Query::application("cut").eq("shard", 7), &"job")
            .await
            .unwrap();
        let first = within("the first delivery", consumer.recv()).await.unwrap();
        assert_eq!(first.id, confirm.id);

        // The network drops the connection before the ack. The node cleans up and puts the
        // message back (SPEC §8.7).
        forwarder.cut();
        disconnected(&mut updates, "cut", &id).await;
        let stats = queue_stats(&gw, &queue).await;
        assert_eq!(
            (&stats["ready"], &stats["in_flight"]),
            (&json!(1), &json!(0)),
            "{stats}"
        );
        forwarder.open();
        wait_state(&worker, "the reconnect", |s| s.connected && s.sessions == 2).await;

        let again = within("the redelivery", consumer.recv()).await.unwrap();
        assert_eq!((&again.id, &again.payload), (&confirm.id, &json!("job")));
        again.ack().await.unwrap();
        worker.sync().await.unwrap();
        let stats = queue_stats(&gw, &queue).await;
        assert_eq!(
            (&stats["ready"], &stats["in_flight"]),
            (&json!(0), &json!(0)),
            "{stats}"
        );
        let found = clients_of(&gw, "cut").await;
        assert_eq!(
            (&found[0]["client_id"], &found[0]["metadata"]["shard"]),
            (&json!(id), &json!(7))
        );
        worker.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_that_finds_its_identity_still_registered_retries_until_it_is_free() {
    let gw = TestGateway::start().await;
    let forwarder = Forwarder::start(gw.addr).await;
    let watcher = Client::builder(&dsn(&gw, Via::WsJson, "watch"))
        .unwrap()
        .receive_client_updates(true)
        .connect()
        .await
        .unwrap();
    let mut updates = watcher.client_updates().unwrap();
    let client = connect(
        &format!("singyeong://race@{}", forwarder.addr),
        "c1",
        Metadata::new().string("role", "primary"),
    )
    .await;
    forwarder.cut();
    disconnected(&mut updates, "race", "c1").await;
    // Someone else holds the identity when the client comes back (as a dead node's clients
    // do until they are unregistered, SPEC §10.7).
    let holder = gw.identify(Enc::Json, "race", "c1").await;
    forwarder.open();
    let state = wait_state(&client, "an already-registered refusal", |s| {
        s.last_reconnect_error
            .as_deref()
            .is_some_and(|d| d.contains("c1: already registered for app race"))
    })
    .await;
    assert!(!state.connected && !state.closed, "{state:?}");
    holder.close().await;
    wait_state(&client, "the reconnect", |s| s.connected && s.sessions == 2).await;
    let found = clients_of(&gw, "race").await;
    assert_eq!(found[0]["metadata"]["role"], json!("primary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnects_a_lost_connection_closes_the_client_and_ends_its_streams() {
    let gw = TestGateway::start().await;
    let client = Client::builder(&dsn(&gw, Via::TcpJson, "once"))
        .unwrap()
        .reconnect(Reconnect::disabled())
        .connect()
        .await
        .unwrap();
    let mut messages = client.messages().unwrap();
    gw.drain().await;
    assert_eq!(within("the end of the stream", messages.recv()).await, None);
    let state = client.state();
    assert!(state.closed && !state.connected, "{state:?}");
    assert_eq!(state.last_disconnect.as_deref(), Some("goodbye: draining"));
    assert!(matches!(
        client.send(&Query::any(), &1).await,
        Err(Error::Closed)
    ));
}

// === heartbeats, auth, close ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_heartbeats_at_the_interval_the_server_asks_for() {
    let gw = TestGateway::start_with(|config| {
        config.gateway.heartbeat_interval_ms = 100;
        config.gateway.heartbeat_timeout_ms = Some(250);
    })
    .await;
    let client = connect(&dsn(&gw, Via::WsMsgpack, "hb"), "c", Metadata::new()).await;
    let first = clients_of(&gw, "hb").await[0]["metadata"]["last_heartbeat_time"].clone();
    // Ten timeouts' worth: without heartbeats the node would have closed it (op 8).
    let mut changes = client.state_changes();
    let dropped = tokio::time::timeout(
        Duration::from_millis(2500),
        changes.wait_for(|s| !s.connected),
    )
    .await
    .is_ok();
    assert!(!dropped, "the connection stayed up: {:?}", client.state());
    assert_eq!(client.state().sessions, 1);
    let later = clients_of(&gw, "hb").await[0]["metadata"]["last_heartbeat_time"].clone();
    assert!(later.as_i64() > first.as_i64(), "{first} then {later}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_a_refused_identity_fails_the_connect_without_retrying() {
    let gw = TestGateway::start_with(|config| config.auth.password = Some("s3cret".into())).await;
    let at = |userinfo: &str| format!("singyeong://{userinfo}@{}", gw.addr);
    assert!(matches!(
        Client::connect(&at("app:wrong")).await,
        Err(Error::AuthFailed)
    ));
    let good = Client::connect(&at("app:s3cret")).await.unwrap();
    assert!(!good.state().restricted);
    let restricted = Client::connect(&at("app")).await.unwrap();
    assert!(restricted.state().restricted);
    assert!(matches!(
        restricted.send(&Query::any(), &1).await,
        Err(Error::Restricted(_))
    ));
    restricted
        .update_metadata(Metadata::new().integer("load", 1))
        .await
        .unwrap();
    match Client::builder(&at("app:s3cret"))
        .unwrap()
        .client_id("has space")
        .connect()
        .await
    {
        Err(Error::Rejected { error, .. }) => {
            assert_eq!(
                error,
                "client_id: must not contain whitespace or control characters"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Client::connect(&format!("singyeong://{}", gw.addr)).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sends_what_was_queued_waits_for_owed_answers_and_ends_the_streams() {
    let gw = TestGateway::start().await;
    let receiver = connect(&dsn(&gw, Via::TcpMsgpack, "rx"), "r", Metadata::new()).await;
    let mut received = receiver.messages().unwrap();
    let sender = connect(&dsn(&gw, Via::WsJson, "tx"), "s", Metadata::new()).await;
    let mut own = sender.messages().unwrap();
    for n in 0..100 {
        sender.send(&Query::application("rx"), &n).await.unwrap();
    }
    // The publish is queued first (join! polls in order), then the close: the close sends it
    // and waits for its confirm.
    let to_rx = Query::application("rx");
    let (published, closed) = tokio::join!(sender.publish("closing", &to_rx, &1), sender.close());
    closed.unwrap();
    assert_eq!(published.unwrap().queue, "closing");
    for n in 0..100 {
        assert_eq!(next_message(&mut received).await.payload, json!(n));
    }
    assert_eq!(within("the end of the stream", own.recv()).await, None);
    assert!(sender.state().closed);
    assert!(matches!(
        sender.send(&Query::any(), &1).await,
        Err(Error::Closed)
    ));
}

// === TLS ===

struct Certificate {
    dir: std::path::PathBuf,
    der: ganglion_client::rustls::pki_types::CertificateDer<'static>,
}

impl Certificate {
    fn generate() -> (Certificate, std::path::PathBuf, std::path::PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = temp_dir("client-tls");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        let der = certified.cert.der().clone();
        (Certificate { dir, der }, cert, key)
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_dsns_connect_over_websocket_and_tcp_with_a_trusted_root() {
    let (cert, cert_path, key_path) = Certificate::generate();
    let gw = TestGateway::start_with(move |config| {
        config.tls.cert = Some(cert_path);
        config.tls.key = Some(key_path);
        config.tcp.tls = true;
    })
    .await;
    let wss = format!(
        "ssingyeong://secure@localhost:{}?encoding=msgpack",
        gw.addr.port()
    );
    let tls = format!(
        "ganglion+tls://secure@localhost:{}",
        gw.tcp_addr.unwrap().port()
    );
    let trusted = |dsn: &str, id: &str| {
        Client::builder(dsn)
            .unwrap()
            .client_id(id)
            .add_root_certificate(cert.der.clone())
            .connect()
    };
    let ws_client = trusted(&wss, "ws").await.unwrap();
    let tcp_client = trusted(&tls, "tcp").await.unwrap();
    let mut tcp_in = tcp_client.messages().unwrap();
    let mut ws_in = ws_client.messages().unwrap();
    let to = |id: &str| Query::application("secure").eq("/ganglion_inbox", json!(id));
    ws_client
        .send(&to(tcp_client.inbox()), &"over wss")
        .await
        .unwrap();
    assert_eq!(next_message(&mut tcp_in).await.payload, json!("over wss"));
    tcp_client
        .send(&to(ws_client.inbox()), &"over tls")
        .await
        .unwrap();
    assert_eq!(next_message(&mut ws_in).await.payload, json!("over tls"));
    // Without the root, the system's trust store does not know the certificate.
    match Client::builder(&wss)
        .unwrap()
        .client_id("untrusted")
        .connect()
        .await
    {
        Err(Error::Connect { reason, .. }) => assert!(reason.contains("TLS handshake"), "{reason}"),
        other => panic!("{other:?}"),
    }
}
