//! TLS on the HTTP/websocket listener and the raw TCP listener (SPEC §2.2, §2.8), with a
//! certificate the test makes itself.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use ganglion_gateway::{Config, Gateway, StartError};
use ganglion_tests::tcp::{framed, preamble};
use ganglion_tests::{Enc, TestGateway, patience, temp_dir};
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for `localhost`, written as PEM files.
struct Certificate {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Certificate {
    fn generate() -> Certificate {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        let dir = temp_dir("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        Certificate {
            dir,
            cert,
            key,
            der: certified.cert.der().clone(),
        }
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        self.connector()
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake")
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_gateway(cert: &Certificate) -> TestGateway {
    let (c, k) = (cert.cert.clone(), cert.key.clone());
    TestGateway::start_with(move |config| {
        config.tls.cert = Some(c);
        config.tls.key = Some(k);
        config.tcp.tls = true;
    })
    .await
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let message = tokio::time::timeout(patience(), ws.next())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("no error");
    match message {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_tls_identifies_and_exchanges_messages() {
    let cert = Certificate::generate();
    let gw = tls_gateway(&cert).await;
    let stream = cert.connect(gw.addr).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async("wss://localhost/gateway/websocket?encoding=json", stream)
            .await
            .expect("websocket over TLS");
    assert_eq!(next_json(&mut ws).await["op"], 0);
    ws.send(Message::text(
        json!({"op": 1, "d": {"application_id": "tls", "client_id": "ws"}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut ws).await["d"],
        json!({"client_id": "ws", "restricted": false})
    );
    ws.send(Message::text(
        json!({"op": 4, "t": "SEND", "d": {"target": {"application": "tls"}, "payload": "over tls"}})
            .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["d"]["payload"], "over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_over_tls_and_only_over_tls() {
    let cert = Certificate::generate();
    let gw = tls_gateway(&cert).await;
    let stream = cert.connect(gw.addr).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/api/version")
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let version: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(version["api"], "v1");

    // Plain HTTP on the TLS listener gets no HTTP answer.
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(patience(), plain.read_to_end(&mut reply)).await;
    assert!(!String::from_utf8_lossy(&reply).contains("HTTP/1.1 200"));
}

async fn read_frame(stream: &mut TlsStream<TcpStream>) -> Value {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).await.unwrap();
    serde_json::from_slice::<Value>(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_transport_speaks_tls_from_the_first_byte() {
    let cert = Certificate::generate();
    let gw = tls_gateway(&cert).await;
    let tcp_addr = gw.tcp_addr.unwrap();
    let mut stream = cert.connect(tcp_addr).await;
    stream.write_all(&preamble(Enc::Json)).await.unwrap();
    assert_eq!(read_frame(&mut stream).await["op"], 0);
    let identify = json!({"op": 1, "d": {"application_id": "tls", "client_id": "tcp"}});
    stream
        .write_all(&framed(identify.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut stream).await["op"], 2);

    // A plaintext preamble on the TLS port is not a TLS handshake: closed without a frame.
    let mut plain = TcpStream::connect(tcp_addr).await.unwrap();
    plain.write_all(&preamble(Enc::Json)).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(patience(), plain.read_to_end(&mut reply)).await;
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "only a TLS alert, if anything: {reply:x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_configured_certificate_is_refused_at_start_up() {
    let cert = Certificate::generate();
    let start = |adjust: &dyn Fn(&mut Config)| {
        let mut config = Config {
            listen: "127.0.0.1:0".to_owned(),
            ..Config::default()
        };
        config.tcp.listen = "127.0.0.1:0".to_owned();
        config.queue.data_dir = temp_dir("tls-config");
        adjust(&mut config);
        async move { Gateway::start(config, &HashMap::new()).await }
    };
    let only_cert = start(&|c: &mut Config| c.tls.cert = Some(cert.cert.clone())).await;
    assert!(matches!(only_cert, Err(StartError::Tls(_))));
    let tcp_without = start(&|c: &mut Config| c.tcp.tls = true).await;
    let message = tcp_without.err().expect("refused").to_string();
    assert!(message.contains("tcp.tls"), "{message}");
    let missing = start(&|c: &mut Config| {
        c.tls.cert = Some("/nonexistent/cert.pem".into());
        c.tls.key = Some(cert.key.clone());
    })
    .await;
    let message = missing.err().expect("refused").to_string();
    assert!(message.contains("/nonexistent/cert.pem"), "{message}");
}
