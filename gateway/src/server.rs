//! Assembles a node from its configuration and runs it: binds the listener, builds the router
//! and the session stack, serves HTTP and websockets, and drains gracefully.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use ganglion_core::auth::Auth;
use ganglion_core::queue::{MemoryStore, QueueStore, StoreError};
use ganglion_core::{Router, RouterConfig};
use ganglion_transports::{SessionContext, tcp};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, StoreKind};
use crate::http::{AppState, Health, app};
use crate::queue_store::{OpenError, RedbStore};
use crate::service::{SessionStack, session_stack};
use crate::tls::{TlsError, TlsListener};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot recover the queues: {0}")]
    Queues(#[from] StoreError),
    #[error(
        "invalid listen address `{addr}`: expected HOST:PORT, e.g. [::]:4000 or 127.0.0.1:4000"
    )]
    Address { addr: String },
    #[error(
        "cannot listen on {addr}: {source} (is another process using the port? set `listen` or PORT)"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] ganglion_transports::nats::BridgeError),
    #[cfg(not(feature = "nats"))]
    #[error(
        "nats.url is set, but this build has no NATS bridge (built without the `nats` feature)"
    )]
    NatsNotBuilt,
}

/// A running node.
pub struct Gateway {
    http_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    /// Accepts raw TCP connections until the node drains.
    tcp_acceptor: Option<JoinHandle<()>>,
    /// The NATS bridge, when `nats.url` is set; it stops accepting when the node drains.
    #[cfg(feature = "nats")]
    nats: Option<ganglion_transports::nats::Bridge>,
    router: Arc<Router>,
    health: Arc<Health>,
    /// Cancelled to drain: every session says goodbye.
    sessions_shutdown: CancellationToken,
    /// Cancelled to stop the HTTP server once sessions are gone.
    http_shutdown: CancellationToken,
    sessions: TaskTracker,
    close_timeout: Duration,
    server: JoinHandle<io::Result<()>>,
    sweeper: JoinHandle<()>,
}

impl Gateway {
    /// Binds the listener and starts serving. `env` is the process environment (for the node
    /// id's host-name default).
    pub async fn start(
        config: Config,
        env: &HashMap<String, String>,
    ) -> Result<Gateway, StartError> {
        let node_id = config.node_id(env);
        // The recorder is process-wide; installing it first means nothing is missed.
        crate::metrics::handle();
        // Now rather than while the first client waits.
        ganglion_core::clock::calibrate();
        let store: Arc<dyn QueueStore> = match config.queue.store {
            StoreKind::Redb => {
                let store = RedbStore::open(&config.queue.data_dir)?;
                tracing::info!(path = %store.path().display(), "queue store opened");
                Arc::new(store)
            }
            StoreKind::Memory => {
                tracing::warn!("queue.store = memory: queued messages are lost on restart");
                Arc::new(MemoryStore::default())
            }
        };
        let router = Arc::new(Router::new(
            RouterConfig {
                node_id: Arc::from(node_id.as_str()),
                heartbeat_interval_ms: config.gateway.heartbeat_interval_ms,
                metadata: config.metadata_limits(),
                query: config.query_limits(),
                queue: config.queue_config(),
            },
            Auth::new(
                config.auth.password.clone(),
                config.auth.max_failures_per_minute,
            ),
            store,
        )?);
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key, &[b"http/1.1"])?),
            (None, None) => None,
            _ => return Err(TlsError::Incomplete.into()),
        };
        let tcp_tls = match (&tls, config.tcp.tls) {
            (_, false) => None,
            (Some(_), true) => {
                let (cert, key) = (config.tls.cert.as_ref(), config.tls.key.as_ref());
                match (cert, key) {
                    (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                        crate::tls::server_config(cert, key, &[])?,
                    )),
                    _ => None,
                }
            }
            (None, true) => return Err(TlsError::TcpWithoutCertificate.into()),
        };
        let listener = bind(&config.listen)?;
        let http_addr = local_addr(&listener, &config.listen)?;
        // The raw TCP transport (SPEC §2.2); an empty `tcp.listen` turns it off.
        let tcp_listener = match config.tcp.listen.trim() {
            "" => None,
            addr => Some(bind(addr)?),
        };
        let tcp_addr = match &tcp_listener {
            Some(listener) => Some(local_addr(listener, &config.tcp.listen)?),
            None => None,
        };

        let health = Arc::new(Health::default());
        let sessions_shutdown = CancellationToken::new();
        let http_shutdown = CancellationToken::new();
        let sessions = TaskTracker::new();
        let close_timeout = Duration::from_millis(config.gateway.close_timeout_ms);
        let sweeper = spawn_sweeper(
            router.clone(),
            Duration::from_millis(config.queue.sweep_interval_ms),
            http_shutdown.clone(),
        );
        let session = SessionContext {
            router: router.clone(),
            service: session_stack(router.clone()),
            config: Arc::new(config.session()),
            shutdown: sessions_shutdown.clone(),
        };
        // The NATS bridge (SPEC §2.3) starts before anything accepts connections, so a NATS
        // that cannot be reached stops the start-up with nothing left running.
        #[cfg(feature = "nats")]
        let nats = match config.nats.url() {
            None => None,
            Some(url) => {
                let bridge = ganglion_transports::nats::Bridge::start(
                    ganglion_transports::nats::BridgeConfig {
                        url: url.to_owned(),
                        prefix: config.nats.prefix.clone(),
                        name: format!("ganglion {node_id}"),
                    },
                    session.clone(),
                    sessions.clone(),
                )
                .await;
                match bridge {
                    Ok(bridge) => Some(bridge),
                    Err(error) => {
                        http_shutdown.cancel();
                        return Err(error.into());
                    }
                }
            }
        };
        #[cfg(not(feature = "nats"))]
        if config.nats.url().is_some() {
            http_shutdown.cancel();
            return Err(StartError::NatsNotBuilt);
        }
        let tcp_acceptor = tcp_listener.map(|listener| {
            spawn_tcp_acceptor(listener, tcp_tls, session.clone(), sessions.clone())
        });
        let handshake_timeout = session.config.identify_timeout;
        let state = AppState {
            router: router.clone(),
            session,
            proxy: Arc::new(crate::proxy::Proxy::new_or_refusing(&config.proxy)),
            config: Arc::new(config),
            health: health.clone(),
            sessions: sessions.clone(),
        };
        let service = app(state.clone());
        let stop = http_shutdown.clone();
        let server = match tls {
            None => {
                let listener = listener.tap_io(|tcp| {
                    // Frames are small and latency matters more than packet count.
                    let _ = tcp.set_nodelay(true);
                });
                tokio::spawn(crate::http::serve::serve(listener, service, state, stop))
            }
            Some(tls) => {
                let listener = TlsListener::new(
                    listener,
                    tokio_rustls::TlsAcceptor::from(tls),
                    handshake_timeout,
                    http_shutdown.clone(),
                )
                .map_err(|source| StartError::Bind {
                    addr: http_addr,
                    source,
                })?
                // A no-op tap gives the TLS listener the same `ConnectInfo<SocketAddr>`.
                .tap_io(|_| {});
                tokio::spawn(crate::http::serve::serve(listener, service, state, stop))
            }
        };
        health.set_ready();
        match tcp_addr {
            Some(tcp_addr) => {
                tracing::info!(%http_addr, %tcp_addr, node = %node_id, "ganglion is listening")
            }
            None => tracing::info!(%http_addr, node = %node_id, "ganglion is listening"),
        }
        Ok(Gateway {
            http_addr,
            tcp_addr,
            tcp_acceptor,
            #[cfg(feature = "nats")]
            nats,
            router,
            health,
            sessions_shutdown,
            http_shutdown,
            sessions,
            close_timeout,
            server,
            sweeper,
        })
    }

    /// The bound HTTP/websocket address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound raw TCP address, when the TCP transport is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Whether the NATS bridge's connection is up; `None` when the bridge is off.
    #[cfg(feature = "nats")]
    pub fn nats_connected(&self) -> Option<bool> {
        self.nats.as_ref().map(|bridge| bridge.is_connected())
    }

    /// Whether the NATS bridge's connection is up; `None` when the bridge is off.
    #[cfg(not(feature = "nats"))]
    pub fn nats_connected(&self) -> Option<bool> {
        None
    }

    /// Drains the node (SPEC §10.8): readiness turns 503, new websockets are refused, every
    /// client gets op 7 `draining` and close 1001, then the HTTP server stops.
    pub async fn drain(mut self) {
        tracing::info!("draining: saying goodbye to every client");
        self.health.set_draining();
        // No new TCP sessions from here on; the websocket handshake answers 503.
        self.sessions_shutdown.cancel();
        if let Some(acceptor) = self.tcp_acceptor.take() {
            let _ = acceptor.await;
        }
        // Nor bridge sessions: the bridge leaves the NATS queue group, so the other nodes
        // answer connect requests and injections.
        #[cfg(feature = "nats")]
        if let Some(bridge) = self.nats.as_mut() {
            bridge.stopped().await;
        }
        self.sessions.close();
        // Each session flushes its goodbye and waits at most `close_timeout` for the peer.
        let bound = self.close_timeout * 2 + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time; exiting anyway");
        }
        // The goodbyes published to NATS inboxes reach the NATS server.
        #[cfg(feature = "nats")]
        if let Some(bridge) = self.nats.take() {
            bridge.close(self.close_timeout).await;
        }
        // Every queue change made so far reaches the disk before the process goes.
        self.router.queues().flush().await;
        self.http_shutdown.cancel();
        let _ = self.sweeper.await;
        match tokio::time::timeout(self.close_timeout, self.server).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "HTTP server ended with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "HTTP server task failed"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
        tracing::info!("drained");
    }
}

/// Applies the queue timers every `interval` until `stop`.
fn spawn_sweeper(
    router: Arc<Router>,
    interval: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => router.queues().sweep(),
            }
        }
    })
}

/// Accepts raw TCP connections until the node starts draining; each one becomes a session.
fn spawn_tcp_acceptor(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: SessionContext<SessionStack>,
    sessions: TaskTracker,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let accepted = tokio::time::Instant::now();
                        let ctx = ctx.clone();
                        match tls.clone() {
                            None => {
                                sessions.spawn(tcp::serve(stream, peer.ip(), accepted, ctx));
                            }
                            // The handshake shares the identify deadline (SPEC §2.2: the
                            // preamble is sent inside TLS).
                            Some(acceptor) => {
                                sessions.spawn(async move {
                                    let timeout = ctx.config.identify_timeout;
                                    let handshaken =
                                        crate::tls::handshake(&acceptor, stream, timeout).await;
                                    if let Some(tls) = handshaken {
                                        tcp::serve(tls, peer.ip(), accepted, ctx).await;
                                    }
                                });
                            }
                        }
                    }
                    Err(error) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tracing::warn!(%error, "cannot accept a TCP connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    })
}

fn local_addr(listener: &TcpListener, configured: &str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        addr: parse_addr(configured).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        source,
    })
}

fn parse_addr(addr: &str) -> Option<SocketAddr> {
    addr.parse().ok()
}

/// Binds a listener. `[::]` listens on IPv6 and IPv4 alike (dual-stack); where IPv6 is not
/// available at all, the wildcard falls back to `0.0.0.0`.
fn bind(addr: &str) -> Result<TcpListener, StartError> {
    let parsed = parse_addr(addr).ok_or_else(|| StartError::Address {
        addr: addr.to_owned(),
    })?;
    match bind_socket(parsed) {
        Ok(listener) => Ok(listener),
        Err(err) if parsed.ip().is_unspecified() && parsed.is_ipv6() && ipv6_missing(&err) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], parsed.port()));
            tracing::warn!(%err, "IPv6 is not available; listening on {v4} instead");
            bind_socket(v4).map_err(|source| StartError::Bind { addr: v4, source })
        }
        Err(source) => Err(StartError::Bind {
            addr: parsed,
            source,
        }),
    }
}

/// `EAFNOSUPPORT` or `EADDRNOTAVAIL` (Linux numbering): the host has no usable IPv6.
fn ipv6_missing(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(97 | 99))
}

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Dual-stack on every platform, whatever the system default.
        let _ = socket.set_only_v6(false);
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
