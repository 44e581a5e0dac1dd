//! Opening upstream connections that the SSRF guard has vetted (SPEC §9.7).
//!
//! Names are resolved once, by [`GuardedResolver`], which hands hyper-util's `HttpConnector`
//! only the addresses that pass the guard, so the connection goes to exactly a vetted address
//! (no second lookup that DNS rebinding could answer differently). `HttpConnector` skips the
//! resolver for IP-literal hosts, so [`GuardedConnector`] checks those itself. TLS wraps the
//! vetted TCP stream, with the certificate checked against the URL's host name.
//!
//! Connections are pooled by the client per scheme and authority; a pooled connection was
//! vetted when it was opened, and the guard's rules do not change while the node runs.

use std::error::Error as StdError;
use std::future::{Future, ready};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::guard::Guard;

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The guard refused every address of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("proxy target not allowed")]
pub struct TargetNotAllowed;

/// Resolves a host name once and keeps only the addresses the guard allows.
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if resolved.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name} has no addresses"),
                )
                .into());
            }
            let vetted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| guard.allows(addr.ip()))
                .collect();
            if vetted.is_empty() {
                return Err(TargetNotAllowed.into());
            }
            Ok(vetted.into_iter())
        })
    }
}

/// A TCP connector to vetted addresses only, with the connect timeout.
#[derive(Clone)]
pub struct GuardedConnector {
    http: HttpConnector<GuardedResolver>,
    guard: Arc<Guard>,
}

impl GuardedConnector {
    pub fn new(guard: Arc<Guard>, connect_timeout: Duration) -> GuardedConnector {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            guard: guard.clone(),
        });
        // The TLS layer above hands https URLs down too.
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        // Requests are small and latency matters more than packet count.
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        GuardedConnector { http, guard }
    }
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(ip) = uri.host().and_then(ip_literal)
            && !self.guard.allows(ip)
        {
            return Box::pin(ready(Err(TargetNotAllowed.into())));
        }
        let connecting = self.http.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The address of an IP-literal host (`127.0.0.1`, `[::1]`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// The TLS client configuration: the system trust store on the ring provider. Loaded once per
/// process (reading the store takes a while and it does not change).
pub fn tls_config() -> rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "reading the system trust store");
            }
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(
                    "the system trust store has no usable certificates: https proxy targets will fail"
                );
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            // ring implements every default protocol version.
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literal_hosts_are_recognised_with_or_without_brackets() {
        assert_eq!(ip_literal("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("example.com"), None);
        assert_eq!(ip_literal("2130706433"), None);
    }
}
