//! The heart of ganglion: protocol types, metadata, the query language, the client registry and
//! the router. Nothing here touches a socket, an HTTP type or a wire encoding.
//!
//! - [`value`]: the data model every frame is decoded into (SPEC §2.4);
//! - [`frame`]: outbound frames and the encode-once cache for fan-out;
//! - [`envelope`]: inbound frames split into `op`, `d`, `t`, `ts`, `trace`;
//! - [`error`]: op 8 and op 3 errors with their exact strings and close codes;
//! - [`metadata`]: typed metadata, reserved keys, validation and limits (SPEC §5);
//! - [`semver`]: SemVer 2.0.0 parsing and precedence for `version` metadata;
//! - [`query`]: the query language (SPEC §6);
//! - [`queue`]: the queue state machine, its store trait and the group-commit journal (SPEC §8);
//! - [`registry`]: registered clients and the indexes that make queries cheap;
//! - [`router`]: identify, heartbeats and dispatch, as a `tower::Service`;
//! - [`session`]: a connection as the router sees it, and the `Outbox` it pushes into;
//! - [`auth`]: the shared password and the failed-auth limit;
//! - [`telemetry`]: bounded label values for metrics;
//! - [`trace`]: W3C trace context and ganglion's per-message spans (SPEC §11);
//! - [`clock`]: wall-clock timestamps.

pub mod auth;
pub mod clock;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod metadata;
pub mod query;
pub mod queue;
pub mod registry;
pub mod router;
pub mod semver;
pub mod session;
pub mod telemetry;
pub mod trace;
pub mod value;

pub use envelope::{Envelope, FastDispatch};
pub use error::{Fatal, Invalid};
pub use frame::{Encoding, Out, OutFrame, Outgoing, RawValue};
pub use router::{Inbound, Outcome, Router, RouterConfig, RouterService};
pub use session::{Conn, Outbox, Transport};
pub use value::{Map, Num, Value};
