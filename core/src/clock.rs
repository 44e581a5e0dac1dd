//! Wall-clock time for frame timestamps and metadata (`ts`, `last_heartbeat_time`), and the
//! arrival time of inbound frames.
//!
//! Deadlines never use this: they use `tokio::time`, so tests can pause time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

/// Milliseconds from the Unix epoch to `time` (0 before it).
pub fn ms_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Calibrates the CPU-counter clock [`Arrival`] reads (about 0.6 ms, once per process), so
/// that the first frame does not wait for it.
pub fn calibrate() {
    let _ = quanta::Instant::now();
}

/// When a frame arrived: the wall clock (the `ts` of what it causes) and a reading of the
/// CPU's counter to time its handling from. Transports take one for every batch of frames they
/// read together.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    wall: SystemTime,
    tick: quanta::Instant,
}

impl Arrival {
    pub fn now() -> Arrival {
        Arrival {
            wall: SystemTime::now(),
            tick: quanta::Instant::now(),
        }
    }

    /// Milliseconds from the Unix epoch to the arrival (0 before it).
    pub fn ms_since_epoch(&self) -> u64 {
        ms_since_epoch(self.wall)
    }

    /// Time since the arrival, read from the CPU's counter: about 10 ns where a wall-clock
    /// reading takes 35 in a VM, and never negative.
    pub fn elapsed(&self) -> Duration {
        quanta::Instant::now().saturating_duration_since(self.tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arrival_is_now_and_its_elapsed_time_grows() {
        let before = now_ms();
        let arrival = Arrival::now();
        let after = now_ms();
        assert!((before..=after).contains(&arrival.ms_since_epoch()));
        let first = arrival.elapsed();
        std::thread::sleep(Duration::from_millis(2));
        let second = arrival.elapsed();
        assert!(
            second >= first + Duration::from_millis(2),
            "{first:?} then {second:?}"
        );
    }
}
