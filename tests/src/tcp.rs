//! A raw TCP protocol client (SPEC §2.2): preamble, then 4-byte big-endian length-prefixed
//! frames in JSON or MessagePack.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Closed, Enc, patience};

/// The preamble for an encoding.
pub fn preamble(enc: Enc) -> [u8; 6] {
    let code = match enc {
        Enc::Json => 0,
        Enc::Msgpack => 1,
    };
    [0x47, 0x4E, 0x47, 0x4C, 0x01, code]
}

/// One length-prefixed frame.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A TCP protocol client.
pub struct TcpClient {
    pub stream: TcpStream,
    pub encoding: Enc,
    buf: BytesMut,
}

impl TcpClient {
    /// Connects, sends the preamble and reads the hello.
    pub async fn connect(addr: SocketAddr, encoding: Enc) -> (TcpClient, Value) {
        let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .write_all(&preamble(encoding))
            .await
            .expect("preamble");
        let mut client = TcpClient {
            stream,
            encoding,
            buf: BytesMut::with_capacity(4096),
        };
        let hello = client.recv().await;
        assert_eq!(hello["op"], 0, "the first frame is hello: {hello}");
        (client, hello)
    }

    /// Connects and identifies, returning after ready.
    pub async fn identify_with(addr: SocketAddr, encoding: Enc, d: Value) -> TcpClient {
        let (mut client, _) = TcpClient::connect(addr, encoding).await;
        client.send(json!({"op": 1, "d": d})).await;
        let ready = client.recv().await;
        assert_eq!(ready["op"], 2, "identify answered with ready: {ready}");
        client
    }

    fn encode(&self, frame: &Value) -> Vec<u8> {
        match self.encoding {
            Enc::Json => frame.to_string().into_bytes(),
            Enc::Msgpack => rmp_serde::to_vec_named(frame).expect("msgpack"),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        let body = self.encode(&frame);
        self.send_bytes(&framed(&body)).await;
    }

    /// Writes raw bytes (a header, a partial frame, garbage).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next frame's body, or `None` at EOF.
    pub async fn next_body(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Some(self.buf.split_to(len).to_vec());
                }
            }
            let read = tokio::time::timeout(patience(), self.stream.read_buf(&mut self.buf))
                .await
                .expect("a frame in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn decode(&self, body: &[u8]) -> Value {
        match self.encoding {
            Enc::Json => serde_json::from_slice(body).expect("JSON frame"),
            Enc::Msgpack => rmp_serde::from_slice(body).expect("msgpack frame"),
        }
    }

    /// The next frame, decoded. Panics at EOF or timeout.
    pub async fn recv(&mut self) -> Value {
        let body = self.next_body().await.expect("a frame, not EOF");
        self.decode(&body)
    }

    /// Reads until EOF, collecting frames. TCP has no close codes.
    pub async fn closed(&mut self) -> Closed {
        let mut frames = Vec::new();
        while let Some(body) = self.next_body().await {
            frames.push(self.decode(&body));
        }
        // Answer the server's close with ours, so it does not wait out its close timeout.
        let _ = self.stream.shutdown().await;
        Closed { frames, code: None }
    }

    /// Expects op 8 with `error` as the last frame before EOF; returns its `d`.
    pub async fn expect_fatal(&mut self, error: &str) -> Value {
        let closed = self.closed().await;
        let last = closed
            .frames
            .last()
            .unwrap_or_else(|| panic!("expected op 8 `{error}` before EOF, got nothing"));
        assert_eq!(last["op"], 8, "expected op 8, got {last}");
        assert_eq!(last["d"]["error"], error, "op 8 error: {last}");
        last["d"].clone()
    }

    /// Every frame queued before a heartbeat's ack (see `Client::sync`).
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({"op": 5, "d": {}})).await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["op"] == 6 {
                return before;
            }
            before.push(frame);
        }
    }

    pub async fn expect_nothing(&mut self) {
        let pending = self.sync().await;
        assert!(pending.is_empty(), "expected nothing, got {pending:?}");
    }

    pub async fn dispatch(&mut self, t: &str, d: Value) {
        self.send(json!({"op": 4, "t": t, "d": d})).await;
    }

    /// Closes the write side and waits for the server to close too.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
        let _ = self.closed().await;
    }
}
