//! Authentication and the failed-auth limit (SPEC §4.4, §9.1).
//!
//! One shared password decides whether a client is restricted. Failed attempts are counted per
//! source key (IPv4 address, IPv6 /64, or `nats`) over a sliding 60-second window, shared by
//! the gateway and the HTTP API, so guessing through either door is slowed down alike.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::value::Value;

/// The failed-auth window (fixed by SPEC §12).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Distinct source keys tracked at once. Past this, keys with no failure inside the window are
/// forgotten first; a flood of fresh keys cannot grow the table without bound.
const MAX_TRACKED_KEYS: usize = 65_536;

/// Who a failed attempt is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(std::net::Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
    /// Every NATS bridge session shares one key.
    Nats,
}

impl SourceKey {
    pub fn from_ip(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4),
                None => SourceKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// How an identify's `auth` was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unrestricted,
    Restricted {
        /// The attempt counts as a failure (a wrong or non-string credential).
        failed: bool,
    },
}

/// Why an HTTP request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpAuthError {
    /// 401 `not authorized`.
    #[error("not authorized")]
    NotAuthorized,
    /// 429 `too many failed auth attempts`.
    #[error("too many failed auth attempts")]
    TooManyFailures,
}

/// The password and the failure counters.
#[derive(Debug)]
pub struct Auth {
    password: Option<String>,
    max_failures: usize,
    /// Failure instants per key, oldest first, at most `max_failures` kept.
    failures: Mutex<HashMap<SourceKey, VecDeque<Instant>>>,
}

// === impl Auth ===

impl Auth {
    pub fn new(password: Option<String>, max_failures_per_minute: u32) -> Auth {
        Auth {
            password: password.filter(|p| !p.is_empty()),
            max_failures: max_failures_per_minute as usize,
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn password_required(&self) -> bool {
        self.password.is_some()
    }

    /// Judges an identify `auth` (SPEC §4.4's table). Does not count the failure: the caller
    /// records it once the identify has gone through.
    pub fn verify_identify(&self, auth: &Value) -> Verdict {
        let Some(password) = &self.password else {
            return Verdict::Unrestricted;
        };
        match auth {
            Value::Null => Verdict::Restricted { failed: false },
            Value::String(given) if constant_time_eq(given.as_bytes(), password.as_bytes()) => {
                Verdict::Unrestricted
            }
            _ => Verdict::Restricted { failed: true },
        }
    }

    /// Whether `key` has reached the limit within the last minute.
    pub fn over_limit(&self, key: SourceKey) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let now = Instant::now();
        let mut failures = self.failures.lock();
        let Some(times) = failures.get_mut(&key) else {
            return false;
        };
        prune(times, now);
        let over = times.len() >= self.max_failures;
        if times.is_empty() {
            failures.remove(&key);
        }
        over
    }

    /// Counts one failed attempt against `key`.
    pub fn record_failure(&self, key: SourceKey) {
        if self.max_failures == 0 {
            return;
        }
        let now = Instant::now();
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_TRACKED_KEYS && !failures.contains_key(&key) {
            failures.retain(|_, times| {
                prune(times, now);
                !times.is_empty()
            });
            if failures.len() >= MAX_TRACKED_KEYS {
                // Every tracked key failed within the minute: forget the one whose newest
                // failure is oldest, so the newest attacker is still counted.
                if let Some(stalest) = failures
                    .iter()
                    .min_by_key(|(_, t)| t.back().copied())
                    .map(|(k, _)| *k)
                {
                    failures.remove(&stalest);
                }
            }
        }
        let times = failures.entry(key).or_default();
        prune(times, now);
        if times.len() >= self.max_failures {
            times.pop_front();
        }
        times.push_back(now);
    }

    /// Checks an HTTP request's credential (SPEC §9.1). `authorization` is the first
    /// `Authorization` header (or `X-Ganglion-Auth`), raw or `Bearer <password>`.
    pub fn check_http(
        &self,
        authorization: Option<&[u8]>,
        key: SourceKey,
    ) -> Result<(), HttpAuthError> {
        let Some(password) = &self.password else {
            return Ok(());
        };
        let Some(given) = authorization else {
            return Err(HttpAuthError::NotAuthorized);
        };
        if self.over_limit(key) {
            return Err(HttpAuthError::TooManyFailures);
        }
        if credential_matches(given, password.as_bytes()) {
            Ok(())
        } else {
            self.record_failure(key);
            Err(HttpAuthError::NotAuthorized)
        }
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    while let Some(&oldest) = times.front() {
        if now.saturating_duration_since(oldest) >= FAILURE_WINDOW {
            times.pop_front();
        } else {
            break;
        }
    }
}

/// The raw value, or the part after a case-insensitive `Bearer `, equals the password.
fn credential_matches(given: &[u8], password: &[u8]) -> bool {
    let raw = constant_time_eq(given, password);
    let bearer = given.len() > 7
        && given[..7].eq_ignore_ascii_case(b"bearer ")
        && constant_time_eq(&given[7..], password);
    raw | bearer
}

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SourceKey {
        SourceKey::V4("10.0.0.1".parse().unwrap())
    }

    #[test]
    fn no_password_admits_everyone_unrestricted() {
        let auth = Auth::new(None, 10);
        assert_eq!(
            auth.verify_identify(&Value::from("anything")),
            Verdict::Unrestricted
        );
        assert_eq!(auth.verify_identify(&Value::Int(5)), Verdict::Unrestricted);
        assert_eq!(auth.check_http(None, key()), Ok(()));
    }

    #[test]
    fn the_identify_table_of_the_spec() {
        let auth = Auth::new(Some("s3cret".into()), 10);
        assert_eq!(
            auth.verify_identify(&Value::from("s3cret")),
            Verdict::Unrestricted
        );
        assert_eq!(
            auth.verify_identify(&Value::Null),
            Verdict::Restricted { failed: false }
        );
        assert_eq!(
            auth.verify_identify(&Value::from("nope")),
            Verdict::Restricted { failed: true }
        );
        assert_eq!(
            auth.verify_identify(&Value::Int(123)),
            Verdict::Restricted { failed: true }
        );
    }

    #[test]
    fn http_accepts_raw_and_bearer_in_any_case() {
        let auth = Auth::new(Some("s3cret".into()), 10);
        assert_eq!(auth.check_http(Some(b"s3cret"), key()), Ok(()));
        assert_eq!(auth.check_http(Some(b"Bearer s3cret"), key()), Ok(()));
        assert_eq!(auth.check_http(Some(b"bEaReR s3cret"), key()), Ok(()));
        assert_eq!(
            auth.check_http(Some(b"Bearer nope"), key()),
            Err(HttpAuthError::NotAuthorized)
        );
        assert_eq!(
            auth.check_http(None, key()),
            Err(HttpAuthError::NotAuthorized)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_expire_after_the_window() {
        let auth = Auth::new(Some("s3cret".into()), 3);
        for _ in 0..3 {
            assert!(!auth.over_limit(key()));
            auth.record_failure(key());
        }
        assert!(auth.over_limit(key()));
        assert_eq!(
            auth.check_http(Some(b"s3cret"), key()),
            Err(HttpAuthError::TooManyFailures)
        );
        let other = SourceKey::V4("10.0.0.2".parse().unwrap());
        assert!(!auth.over_limit(other));
        tokio::time::advance(FAILURE_WINDOW - Duration::from_millis(1)).await;
        assert!(auth.over_limit(key()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!auth.over_limit(key()));
    }

    #[test]
    fn ipv6_peers_share_their_slash_64() {
        let a = SourceKey::from_ip("2001:db8:1:2::1".parse().unwrap());
        let b = SourceKey::from_ip("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = SourceKey::from_ip("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            SourceKey::from_ip("::ffff:10.0.0.1".parse().unwrap()),
            SourceKey::V4("10.0.0.1".parse().unwrap())
        );
    }
}
