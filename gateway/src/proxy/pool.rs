//! The relay's upstream connections (`crate::http::relay`): plain-HTTP keep-alive connections
//! per authority, each used by one request at a time and put back when its response has been
//! read to the end. Connections are opened by the same [`GuardedConnector`] as the pooled
//! client's, so the SSRF guard and the connect timeout apply alike.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::Uri;
use tokio::net::TcpStream;
use tower::Service;

use super::connect::GuardedConnector;
use super::{ProxyError, classify_connect};

/// Idle connections kept per authority; more are closed when they come back.
const MAX_IDLE_PER_AUTHORITY: usize = 1024;
/// How often connections idle for longer than the idle timeout are closed, whatever their
/// authority (an authority nobody asks for again would otherwise keep its connections).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Idle upstream connections by authority (`host:port` as the target URL writes it).
pub struct Upstreams {
    idle: Mutex<Idles>,
    connector: GuardedConnector,
    idle_timeout: Duration,
}

struct Idles {
    /// foldhash: SipHash cost more than the rest of a checkout.
    by_authority: HashMap<String, Vec<Idle>, foldhash::quality::RandomState>,
    swept: Instant,
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

impl Upstreams {
    pub fn new(connector: GuardedConnector, idle_timeout: Duration) -> Upstreams {
        Upstreams {
            idle: Mutex::new(Idles {
                by_authority: HashMap::default(),
                swept: Instant::now(),
            }),
            connector,
            idle_timeout,
        }
    }

    /// The most recently used idle connection to `authority` that has not been idle too long
    /// and is quiet: one on which anything arrived while it was idle (the upstream closed it,
    /// or sent bytes nobody asked for, such as a `408`) is closed instead. That is known from
    /// the readiness the runtime already tracks; with `probe` (for requests that must not be
    /// sent twice) each connection is also checked with a non-blocking read. `now` is the
    /// time of the request (its start, read once for all its uses).
    pub fn checkout(&self, authority: &str, probe: bool, now: Instant) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_authority.get_mut(authority)?;
        while let Some(Idle { stream, since }) = list.pop() {
            if now.saturating_duration_since(since) > self.idle_timeout {
                // The rest of the list is older still.
                list.clear();
                return None;
            }
            let stirred = stream.readable().now_or_never().is_some();
            if !(probe || stirred) || still_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Puts a connection whose last response was read to the end back for reuse.
    pub fn checkin(&self, authority: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(idle.swept) > SWEEP_INTERVAL {
            let timeout = self.idle_timeout;
            idle.by_authority.retain(|_, list| {
                list.retain(|entry| now.duration_since(entry.since) <= timeout);
                !list.is_empty()
            });
            idle.swept = now;
        }
        let entry = Idle { stream, since: now };
        match idle.by_authority.get_mut(authority) {
            Some(list) if list.len() >= MAX_IDLE_PER_AUTHORITY => {}
            Some(list) => list.push(entry),
            None => {
                idle.by_authority.insert(authority.to_owned(), vec![entry]);
            }
        }
    }

    /// Opens a new connection to `target`'s authority: 403 when the guard refuses it, 504 on
    /// the connect timeout, 502 on any other failure.
    pub async fn connect(&self, target: &Uri) -> Result<TcpStream, ProxyError> {
        let mut connector = self.connector.clone();
        match connector.call(target.clone()).await {
            Ok(io) => Ok(io.into_inner()),
            Err(error) => Err(classify_connect(error.as_ref())),
        }
    }
}

/// Whether an idle connection is still open and quiet: nothing to read, no end of stream.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
