//! The CPU work of one routed message, single-threaded: decode a SEND frame, route it, encode
//! the delivery for the recipient. No sockets and no scheduling, so it isolates what the node
//! spends per message from how it moves bytes.
//!
//! Wall time: `cargo bench -p ganglion-gateway --bench hotpath`.
//! Instructions (repeatable on a busy machine): build with `cargo bench --no-run`, then
//! `HOTPATH_ITERS=100000 valgrind --tool=callgrind <bench binary> --callgrind` and divide the
//! total by the iterations (MessagePack frames; `HOTPATH_ENCODING=json` for JSON ones).

use std::sync::Arc;

use bytes::Bytes;
use ganglion_codecs::Codec;
use ganglion_core::auth::Auth;
use ganglion_core::frame::{Encoding, Outgoing};
use ganglion_core::queue::MemoryStore;
use ganglion_core::session::{Conn, Outbox, Transport};
use ganglion_core::{Envelope, Router, RouterConfig};
use serde_json::json;

/// The same allocator as the `ganglion` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Encodes every frame it is given, as the mailbox does, and keeps nothing.
struct Encoder(&'static dyn Codec);

impl Outbox for Encoder {
    fn encoding(&self) -> Encoding {
        self.0.encoding()
    }

    fn push(&self, frame: &Outgoing) -> bool {
        std::hint::black_box(self.0.encode_once(frame));
        true
    }
}

struct Setup {
    router: Router,
    sender: Conn,
    frame: Bytes,
    codec: &'static dyn Codec,
}

fn setup(encoding: Encoding) -> Setup {
    // The node's recorder, so metrics cost what they cost in production.
    ganglion_gateway::metrics::handle();
    let router = Router::new(
        RouterConfig::default(),
        Auth::new(None, 10),
        Arc::new(MemoryStore::default()),
    )
    .expect("router");
    let codec = ganglion_codecs::codec(encoding).expect("codec");
    let identify = |conn: &Conn, client: &str| {
        let frame = json!({"op": 1, "d": {"application_id": "bench", "client_id": client,
            "metadata": {"role": {"type": "string", "value": client}}}});
        let bytes = match encoding {
            Encoding::Msgpack => rmp_serde::to_vec_named(&frame).expect("msgpack"),
            _ => frame.to_string().into_bytes(),
        };
        let value = codec.decode(&bytes).expect("decode");
        router.handle(conn, Envelope::from_value(value).expect("envelope"), None);
    };
    let sender = Conn::new(Transport::Tcp, encoding, None, Arc::new(Encoder(codec)));
    let receiver = Conn::new(Transport::Tcp, encoding, None, Arc::new(Encoder(codec)));
    identify(&sender, "sender");
    identify(&receiver, "receiver");
    let send = json!({"op": 4, "t": "SEND", "d": {
        "target": {"application": "bench", "ops": [{"path": "/role", "op": "$eq", "to": {"value": "receiver"}}]},
        "payload": "x".repeat(128)}});
    let frame = match encoding {
        Encoding::Msgpack => rmp_serde::to_vec_named(&send).expect("msgpack"),
        _ => send.to_string().into_bytes(),
    };
    Setup {
        router,
        sender,
        frame: Bytes::from(frame),
        codec,
    }
}

fn route_one(s: &Setup) {
    let envelope = s
        .codec
        .decode_envelope_bytes(&s.frame, 1 << 20)
        .expect("decode");
    std::hint::black_box(s.router.handle(&s.sender, envelope, None));
}

fn main() {
    if std::env::args().any(|a| a == "--callgrind") {
        let iters: usize = std::env::var("HOTPATH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let encoding = match std::env::var("HOTPATH_ENCODING").as_deref() {
            Ok("json") => Encoding::Json,
            _ => Encoding::Msgpack,
        };
        let s = setup(encoding);
        for _ in 0..iters {
            route_one(&s);
        }
        return;
    }
    divan::main();
}

#[divan::bench(args = [Encoding::Msgpack, Encoding::Json])]
fn send_decode_route_encode(bencher: divan::Bencher, encoding: Encoding) {
    let s = setup(encoding);
    bencher.bench_local(|| route_one(&s));
}
