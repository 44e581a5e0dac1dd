//! The same conformance scenarios on every transport and encoding, and messages crossing
//! between them: a TCP client sends, websocket clients and NATS services receive, and every
//! other pairing. Every node here runs the NATS bridge, against a `nats-server` of its own.

use ganglion_tests::{AnyClient, Kind, TestGateway, meta};
use serde_json::{Value, json};

/// A node with every transport on: websocket, raw TCP and the NATS bridge.
async fn start() -> TestGateway {
    TestGateway::start_with_nats(|_| {}).await
}

/// One identified client of every kind, all in application `app`, each with metadata
/// `kind = <kind name>`.
async fn one_of_each(gw: &TestGateway, app: &str) -> Vec<(Kind, AnyClient)> {
    let mut clients = Vec::new();
    for kind in Kind::ALL {
        let client = gw
            .identify_any_with(
                kind,
                json!({"application_id": app, "client_id": kind.name(),
                       "metadata": {"kind": meta("string", kind.name())}}),
            )
            .await;
        clients.push((kind, client));
    }
    clients
}

fn to_kind(app: &str, kind: Kind) -> Value {
    json!({"application": app, "ops": [{"path": "/kind", "op": "$eq", "to": {"value": kind.name()}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_identifies_and_reports_its_encoding_and_peer_address() {
    // A NATS session has no peer address: its `ip` is null unless identify names one.
    let gw = start().await;
    let _clients = one_of_each(&gw, "enc").await;
    for kind in Kind::ALL {
        let found = gw
            .query(json!({"application": "enc", "ops": [{"path": "/kind", "op": "$eq", "to": {"value": kind.name()}}]}))
            .await;
        assert_eq!(found.len(), 1, "{kind:?}");
        assert_eq!(found[0]["metadata"]["encoding"], kind.encoding().name());
        assert_eq!(found[0]["metadata"]["ip"], kind.default_ip(), "{kind:?}");
        assert_eq!(found[0]["socket_ip"], kind.default_ip(), "{kind:?}");
        assert_eq!(found[0]["client_id"], kind.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_from_every_transport_reaches_every_transport() {
    let gw = start().await;
    let mut clients = one_of_each(&gw, "mesh").await;
    for from in 0..clients.len() {
        for to_index in 0..clients.len() {
            let to = clients[to_index].0;
            let from_name = clients[from].0.name();
            let nonce = format!("{from_name}->{}", to.name());
            clients[from]
                .1
                .dispatch(
                    "SEND",
                    json!({"target": to_kind("mesh", to), "nonce": nonce,
                           "payload": {"from": from_name, "n": 1.5, "list": [1, "two", null]}}),
                )
                .await;
            let got = clients[to_index].1.recv().await;
            assert_eq!(got["op"], 4);
            assert_eq!(got["t"], "SEND");
            assert_eq!(
                got["d"],
                json!({"target": null, "nonce": nonce,
                       "payload": {"from": from_name, "n": 1.5, "list": [1, "two", null]}}),
                "{nonce}"
            );
        }
    }
    for (_, client) in &mut clients {
        client.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_from_any_transport_reaches_each_transport_once() {
    let gw = start().await;
    let mut clients = one_of_each(&gw, "bcast").await;
    for from in 0..clients.len() {
        let nonce = clients[from].0.name();
        clients[from]
            .1
            .dispatch(
                "BROADCAST",
                json!({"target": {"application": "bcast"}, "nonce": nonce, "payload": {"x": true}}),
            )
            .await;
        for (kind, client) in &mut clients {
            let got = client.recv().await;
            assert_eq!(got["t"], "BROADCAST", "{kind:?}");
            assert_eq!(got["d"]["nonce"], nonce);
            assert_eq!(
                client.sync().await,
                Vec::<Value>::new(),
                "{kind:?} got it once"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_update_on_one_transport_routes_the_next_send_from_another() {
    let gw = start().await;
    let mut clients = one_of_each(&gw, "meta").await;
    for target in 0..clients.len() {
        let marker = format!("m{target}");
        clients[target]
            .1
            .update_metadata(json!({"marker": meta("string", marker.clone())}))
            .await;
        let sender = (target + 1) % clients.len();
        clients[sender]
            .1
            .dispatch(
                "SEND",
                json!({"target": {"application": "meta",
                                  "ops": [{"path": "/marker", "op": "$eq", "to": {"value": marker}}]},
                       "payload": "found"}),
            )
            .await;
        assert_eq!(clients[target].1.recv().await["d"]["payload"], "found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_nodes_from_every_transport_lists_clients_of_every_transport() {
    let gw = start().await;
    let mut clients = one_of_each(&gw, "qn").await;
    for (kind, client) in &mut clients {
        client
            .dispatch(
                "QUERY_NODES",
                json!({"application": "qn", "nonce": kind.name()}),
            )
            .await;
        let reply = client.recv().await;
        assert_eq!(reply["t"], "QUERY_NODES");
        assert_eq!(reply["d"]["nonce"], kind.name());
        let mut ids: Vec<&str> = reply["d"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["client_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let mut expected: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        expected.sort_unstable();
        assert_eq!(ids, expected, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_same_on_every_transport() {
    let gw = start().await;
    for kind in Kind::ALL {
        let app = format!("err-{}", kind.name());
        let mut client = gw.identify_any(kind, &app, "c").await;
        // op 3: an invalid query, with the reason and the nonce.
        client
            .dispatch(
                "SEND",
                json!({"target": {"ops": [{"path": "x", "op": "$eq", "to": {"value": 1}}]},
                       "nonce": 7, "payload": null}),
            )
            .await;
        let invalid = client.recv().await;
        assert_eq!(
            invalid["d"],
            json!({"error": "invalid query",
                   "extra_info": {"reason": "path: must start with `/`, got: 'x'", "nonce": 7}}),
            "{kind:?}"
        );
        // op 3: no route, target echoed.
        client
            .dispatch(
                "SEND",
                json!({"target": {"application": "nobody"}, "nonce": "n", "payload": 1}),
            )
            .await;
        let no_route = client.recv().await;
        assert_eq!(
            no_route["d"],
            json!({"error": "no_route",
                   "extra_info": {"t": "SEND", "nonce": "n", "target": {"application": "nobody"}}}),
            "{kind:?}"
        );
        // op 3: an unknown event.
        client.dispatch("FOO", json!({"a": 1})).await;
        let unknown = client.recv().await;
        assert_eq!(
            unknown["d"]["error"], "invalid dispatch payload",
            "{kind:?}"
        );
        assert_eq!(unknown["d"]["extra_info"]["t"], "FOO");
        // op 8: an opcode a client may not send.
        client.send(json!({"op": 9})).await;
        client.expect_fatal("invalid client op nil", 1008).await;
        // And before identify.
        let (mut fresh, _) = gw.connect_any(kind).await;
        fresh.send(json!({"op": 4, "t": "SEND", "d": {}})).await;
        fresh
            .expect_fatal(
                "sent payload with non-identify opcode without identifying first",
                1008,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_crosses_transports() {
    let gw = start().await;
    let mut clients = one_of_each(&gw, "q").await;
    // Each kind produces one message for the next kind.
    for from in 0..clients.len() {
        let to = clients[(from + 1) % clients.len()].0;
        clients[from]
            .1
            .dispatch(
                "QUEUE",
                json!({"queue": "x", "target": to_kind("q", to), "nonce": from, "payload": to.name()}),
            )
            .await;
        let confirm = clients[from].1.recv().await;
        assert_eq!(confirm["t"], "QUEUE_CONFIRM");
    }
    for (kind, client) in &mut clients {
        client
            .dispatch("QUEUE_REQUEST", json!({"queue": "x"}))
            .await;
        let delivery = client.recv().await;
        assert_eq!(delivery["t"], "QUEUE", "{kind:?}");
        assert_eq!(delivery["d"]["payload"]["payload"], kind.name());
        let id = delivery["d"]["payload"]["id"].clone();
        client
            .dispatch("QUEUE_ACK", json!({"queue": "x", "id": id}))
            .await;
        client.expect_nothing().await;
    }
}
