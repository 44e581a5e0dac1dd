//! A client for ganglion (and other 신경 servers).
//!
//! ```no_run
//! use std::time::Duration;
//! use ganglion_client::{Client, Metadata, Query};
//!
//! # async fn demo() -> ganglion_client::Result<()> {
//! let client = Client::builder("singyeong://workers:s3cret@localhost:4000?encoding=msgpack")?
//!     .client_id("worker-1")
//!     .metadata(Metadata::new().string("region", "eu").integer("load", 3).version("v", "1.2.0"))
//!     .connect()
//!     .await?;
//! let mut messages = client.messages()?;
//! client.send(&Query::application("workers").eq("region", "eu"), &"hello").await?;
//! let reply = client
//!     .request(&Query::application("echo"), &serde_json::json!({"n": 1}), Duration::from_secs(5))
//!     .await?;
//! # let _ = (messages.recv().await, reply);
//! client.close().await
//! # }
//! ```
//!
//! The client identifies, heartbeats at the server's interval, and reconnects with jittered
//! exponential backoff, identifying again with its latest metadata and asking again for queue
//! messages. See `README.md` in this crate for the request/reply convention and the reconnect
//! rules.
//!
//! - [`dsn`]: connection strings (`singyeong://`, `ssingyeong://`, `ganglion+tcp://`,
//!   `ganglion+tls://`);
//! - [`metadata`]: the typed metadata builder;
//! - [`query`]: the query builder (v2 form);
//! - [`where_clause`]: a compact text syntax for conditions (the CLI's `--where`);
//! - [`Client`] / [`ClientBuilder`]: connecting, sending, requests, queues, updates;
//! - internals: `codec` (frames ⇄ bytes), `transport` (sockets), `session` (hello, identify,
//!   ready), `driver` (the connection task).

#![forbid(unsafe_code)]

mod client;
mod codec;
mod driver;
pub mod dsn;
mod error;
pub mod metadata;
pub mod query;
mod session;
mod streams;
mod transport;
mod types;
pub mod where_clause;

pub use client::{Client, ClientBuilder, Dispatch, Reconnect, check_queue_name};
pub use dsn::{Dsn, Encoding, Transport};
pub use error::{Error, Result};
pub use metadata::{Metadata, MetadataValue};
pub use query::{Condition, Op, Operand, Query, Selector};
pub use session::INBOX_KEY;
pub use streams::{ClientUpdates, Consumer, Messages, QueueMessage};
pub use types::{ClientInfo, ClientUpdate, Event, Message, QueueConfirm, State};

/// Re-exported so callers can name certificates and TLS configurations without depending on
/// rustls themselves.
pub use rustls;
