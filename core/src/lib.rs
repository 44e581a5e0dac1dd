//! The heart of ganglion: protocol types, metadata, the query language, the client registry and
//! the router. Nothing here touches a socket, an HTTP type or a wire encoding.
//!
//! - [`value`]: the data model every frame is decoded into (SPEC §2.4);
//! - [`frame`]: outbound frames and the encode-once cache for fan-out;
//! - [`semver`]: SemVer 2.0.0 parsing and precedence for `version` metadata;
//! - [`query`]: the query language (SPEC §6);
//! - [`clock`]: wall-clock timestamps.

pub mod clock;
pub mod frame;
pub mod query;
pub mod semver;
pub mod value;

pub use frame::{Encoding, Out, OutFrame, Outgoing};
pub use value::{Map, Num, Value};
