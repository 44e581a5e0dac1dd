//! Wall-clock time for frame timestamps and metadata (`ts`, `last_heartbeat_time`).
//!
//! Deadlines never use this: they use `tokio::time`, so tests can pause time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

/// Milliseconds from the Unix epoch to `time` (0 before it).
pub fn ms_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
