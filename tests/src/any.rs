//! One client type over every transport, for suites that run the same scenario on each.

use serde_json::{Value, json};

use crate::nats::NatsClient;
use crate::tcp::TcpClient;
use crate::{Client, Enc, TestGateway};

/// A transport and an encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WsJson,
    WsMsgpack,
    TcpJson,
    TcpMsgpack,
    /// A NATS bridge session (the node must be started with NATS).
    NatsJson,
    NatsMsgpack,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::WsJson,
        Kind::WsMsgpack,
        Kind::TcpJson,
        Kind::TcpMsgpack,
        Kind::NatsJson,
        Kind::NatsMsgpack,
    ];

    pub fn encoding(self) -> Enc {
        match self {
            Kind::WsJson | Kind::TcpJson | Kind::NatsJson => Enc::Json,
            Kind::WsMsgpack | Kind::TcpMsgpack | Kind::NatsMsgpack => Enc::Msgpack,
        }
    }

    /// The `ip` a client of this kind gets when it does not advertise one (SPEC §4.3): its
    /// loopback peer address, or null for a NATS session, which has none (SPEC §2.3).
    pub fn default_ip(self) -> Value {
        match self {
            Kind::NatsJson | Kind::NatsMsgpack => Value::Null,
            _ => json!("127.0.0.1"),
        }
    }

    /// A short name, usable in ids: `ws-json`, `tcp-msgpack`, ...
    pub fn name(self) -> &'static str {
        match self {
            Kind::WsJson => "ws-json",
            Kind::WsMsgpack => "ws-msgpack",
            Kind::TcpJson => "tcp-json",
            Kind::TcpMsgpack => "tcp-msgpack",
            Kind::NatsJson => "nats-json",
            Kind::NatsMsgpack => "nats-msgpack",
        }
    }
}

/// A connected client of any kind.
pub enum AnyClient {
    Ws(Box<Client>),
    Tcp(TcpClient),
    Nats(Box<NatsClient>),
}

impl AnyClient {
    pub async fn send(&mut self, frame: Value) {
        match self {
            AnyClient::Ws(c) => c.send(frame).await,
            AnyClient::Tcp(c) => c.send(frame).await,
            AnyClient::Nats(c) => c.send(frame).await,
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self {
            AnyClient::Ws(c) => c.recv().await,
            AnyClient::Tcp(c) => c.recv().await,
            AnyClient::Nats(c) => c.recv().await,
        }
    }

    pub async fn dispatch(&mut self, t: &str, d: Value) {
        self.send(json!({"op": 4, "t": t, "d": d})).await;
    }

    pub async fn sync(&mut self) -> Vec<Value> {
        match self {
            AnyClient::Ws(c) => c.sync().await,
            AnyClient::Tcp(c) => c.sync().await,
            AnyClient::Nats(c) => c.sync().await,
        }
    }

    pub async fn expect_nothing(&mut self) {
        let pending = self.sync().await;
        assert!(pending.is_empty(), "expected nothing, got {pending:?}");
    }

    /// Sends UPDATE_METADATA and waits until it is applied.
    pub async fn update_metadata(&mut self, metadata: Value) {
        self.dispatch("UPDATE_METADATA", metadata).await;
        let replies = self.sync().await;
        assert!(replies.is_empty(), "UPDATE_METADATA refused: {replies:?}");
    }

    /// Expects op 8 `error` and the end of the connection (with close `ws_code` on a
    /// websocket; TCP and NATS have no codes, a NATS session's end is the bridge no longer
    /// listening on its subject). Returns the op 8 `d`.
    pub async fn expect_fatal(&mut self, error: &str, ws_code: u16) -> Value {
        match self {
            AnyClient::Ws(c) => c.expect_fatal(error, ws_code).await,
            AnyClient::Tcp(c) => c.expect_fatal(error).await,
            AnyClient::Nats(c) => c.expect_fatal(error).await,
        }
    }

    pub async fn close(self) {
        match self {
            AnyClient::Ws(c) => (*c).close().await,
            AnyClient::Tcp(c) => c.close().await,
            AnyClient::Nats(c) => c.close().await,
        }
    }
}

impl TestGateway {
    /// Connects a client of `kind` and reads the hello.
    pub async fn connect_any(&self, kind: Kind) -> (AnyClient, Value) {
        match kind {
            Kind::WsJson | Kind::WsMsgpack => {
                let (client, hello) = self.connect(kind.encoding()).await;
                (AnyClient::Ws(Box::new(client)), hello)
            }
            Kind::TcpJson | Kind::TcpMsgpack => {
                let addr = self.tcp_addr.expect("the TCP listener is on");
                let (client, hello) = TcpClient::connect(addr, kind.encoding()).await;
                (AnyClient::Tcp(client), hello)
            }
            Kind::NatsJson | Kind::NatsMsgpack => {
                let (client, hello) = self.connect_nats(kind.encoding()).await;
                (AnyClient::Nats(Box::new(client)), hello)
            }
        }
    }

    /// Connects a client of `kind` and identifies with `d`, returning after ready.
    pub async fn identify_any_with(&self, kind: Kind, d: Value) -> AnyClient {
        let (mut client, _) = self.connect_any(kind).await;
        client.send(json!({"op": 1, "d": d})).await;
        let ready = client.recv().await;
        assert_eq!(ready["op"], 2, "identify answered with ready: {ready}");
        client
    }

    /// Connects a client of `kind` and identifies `application_id/client_id`.
    pub async fn identify_any(
        &self,
        kind: Kind,
        application_id: &str,
        client_id: &str,
    ) -> AnyClient {
        self.identify_any_with(
            kind,
            json!({"application_id": application_id, "client_id": client_id}),
        )
        .await
    }
}
