//! The outbound side of the HTTP proxy (SPEC §9.7): a pooled keep-alive client that connects
//! only to addresses the SSRF guard allows, with connect and total timeouts, and relays the
//! upstream response with its hop-by-hop headers removed and its body streamed.
//!
//! - [`guard`]: `proxy.allowed_cidrs` and the link-local / cloud-metadata rule;
//! - [`connect`]: the resolver and connector that enforce the guard, and TLS;
//! - [`target`]: a client address and a route → the target URL;
//! - [`headers`]: hop-by-hop headers, `X-Forwarded-For`, trace context;
//! - [`h1`] and [`pool`]: HTTP/1.1 framing and the plain-HTTP upstream connections of the
//!   relay that serves most transparent requests in the connection's own task
//!   (`crate::http::relay`).
//!
//! The inbound side (validation, the JSON and transparent forms) is in `crate::http::proxy`.

pub mod connect;
pub mod guard;
pub mod h1;
pub mod headers;
pub mod pool;
pub mod target;

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Version};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Sleep;

use self::connect::{GuardedConnector, TargetNotAllowed, tls_config};
use self::guard::{Guard, InvalidCidr};
use self::headers::strip_hop_by_hop;
use crate::config::ProxySection;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a proxied request got no upstream response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The SSRF guard refused every address of the target: 403.
    NotAllowed,
    /// The upstream could not be reached or answered unusably: 502 with this detail.
    Unreachable(String),
    /// A timeout fired before the response head arrived: 504 with this detail.
    Timeout(String),
}

impl ProxyError {
    /// The status and the reason of the `{"errors":[reason]}` answer (SPEC §9.7).
    pub fn status_and_reason(&self) -> (http::StatusCode, String) {
        use http::StatusCode;
        match self {
            ProxyError::NotAllowed => {
                (StatusCode::FORBIDDEN, "proxy target not allowed".to_owned())
            }
            ProxyError::Unreachable(detail) => (
                StatusCode::BAD_GATEWAY,
                format!("upstream unreachable: {detail}"),
            ),
            ProxyError::Timeout(detail) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("upstream timeout: {detail}"),
            ),
        }
    }
}

/// The proxy's HTTP client. Cheap to share: one per node.
pub struct Proxy {
    client: Client<HttpsConnector<GuardedConnector>, Body>,
    /// The relay's own plain-HTTP connections (`crate::http::relay`).
    pub upstreams: self::pool::Upstreams,
    total_timeout: Duration,
}

impl Proxy {
    /// A proxy for `proxy.*`; fails on an entry of `allowed_cidrs` that is not a CIDR.
    pub fn new(config: &ProxySection) -> Result<Proxy, InvalidCidr> {
        Ok(Proxy::with_guard(
            config,
            Guard::new(&config.allowed_cidrs)?,
        ))
    }

    /// A proxy for `proxy.*`, refusing every target when `allowed_cidrs` is unreadable.
    /// Configuration loading refuses such a file at start-up; this covers a `Config` built
    /// in code, which must not end up with a wider allowlist than it asked for.
    pub fn new_or_refusing(config: &ProxySection) -> Proxy {
        let guard = Guard::new(&config.allowed_cidrs).unwrap_or_else(|error| {
            tracing::error!(%error, "every proxy target will be refused");
            Guard::refuse_all()
        });
        Proxy::with_guard(config, guard)
    }

    fn with_guard(config: &ProxySection, guard: Guard) -> Proxy {
        let tcp = GuardedConnector::new(
            Arc::new(guard),
            Duration::from_millis(config.connect_timeout_ms),
        );
        let upstreams = self::pool::Upstreams::new(tcp.clone(), POOL_IDLE_TIMEOUT);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Proxy {
            client,
            upstreams,
            total_timeout: Duration::from_millis(config.total_timeout_ms),
        }
    }

    /// `proxy.total_timeout_ms`: from sending the request until the response is complete.
    pub fn total_timeout(&self) -> Duration {
        self.total_timeout
    }

    /// Sends `request` (an absolute URL; headers already cleaned) upstream and returns the
    /// response to relay: upstream status and headers minus hop-by-hop ones, the body streamed
    /// until the total timeout, after which it is cut off.
    pub async fn forward(&self, mut request: Request<Body>) -> Result<Response<Body>, ProxyError> {
        *request.version_mut() = Version::HTTP_11;
        // One timer for the whole exchange: it bounds the wait for the response head, then
        // travels with the body.
        let mut deadline = Box::pin(tokio::time::sleep(self.total_timeout));
        let response = tokio::select! {
            biased;
            response = self.client.request(request) => match response {
                Ok(response) => response,
                Err(error) => return Err(classify(&error)),
            },
            () = deadline.as_mut() => {
                return Err(ProxyError::Timeout(format!(
                    "no response within {} ms",
                    self.total_timeout.as_millis()
                )));
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::default();
        parts.extensions = http::Extensions::new();
        let body = Body::new(DeadlineBody {
            inner: body,
            deadline,
        });
        Ok(Response::from_parts(parts, body))
    }
}

/// Maps a client error to 403, 504 or 502, with the chain of causes as the detail.
fn classify(error: &hyper_util::client::legacy::Error) -> ProxyError {
    classify_causes(error.source(), || error.to_string())
}

/// Maps a failure to open an upstream connection (the connector's error) like [`classify`].
pub(crate) fn classify_connect(error: &(dyn StdError + Send + Sync + 'static)) -> ProxyError {
    classify_causes(Some(error), || error.to_string())
}

/// 403 when the guard refused the target, 504 when a cause is a timeout, 502 otherwise; the
/// detail is the distinct texts of the causes from `first` on, or `fallback` without any.
fn classify_causes(
    first: Option<&(dyn StdError + 'static)>,
    fallback: impl FnOnce() -> String,
) -> ProxyError {
    let mut causes: Vec<String> = Vec::new();
    let mut timed_out = false;
    let mut source = first;
    while let Some(cause) = source {
        if cause.is::<TargetNotAllowed>() {
            return ProxyError::NotAllowed;
        }
        if cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            timed_out = true;
        }
        let text = cause.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    let detail = if causes.is_empty() {
        fallback()
    } else {
        causes.join(": ")
    };
    if timed_out {
        ProxyError::Timeout(detail)
    } else {
        ProxyError::Unreachable(detail)
    }
}

/// The upstream body, cut off with an error when the total timeout fires (SPEC §9.7: the
/// timeout runs until the response has been completely received). The error aborts the
/// downstream response, which is left truncated.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

/// The total timeout fired while the response body was still arriving.
#[derive(Debug, thiserror::Error)]
#[error("upstream timeout: the response body did not complete in time")]
struct BodyTimeout;

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("proxied response body cut off by the total timeout");
                Poll::Ready(Some(Err(BodyTimeout.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
