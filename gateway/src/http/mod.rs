//! The HTTP side of the listener (SPEC §9): the websocket handshake, the REST API, health and
//! readiness. Every body ganglion generates is JSON; unknown routes and methods get a JSON 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router as AxumRouter;
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use ganglion_core::auth::{HttpAuthError, SourceKey};
use ganglion_core::query::Query;
use ganglion_core::{Encoding, Out, Router, Value};
use ganglion_transports::SessionContext;
use ganglion_transports::websocket;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::service::SessionStack;

mod proxy;
mod queues;
mod relay;
pub(crate) mod serve;

/// The version of the original 신경 protocol ganglion is compatible with.
pub const SINGYEONG_VERSION: &str = "0.0.1";

/// Readiness of the node (SPEC §9.8).
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Health {
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire) == DRAINING
    }

    fn status(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            READY => "ready",
            DRAINING => "draining",
            _ => "starting",
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub router: Arc<Router>,
    pub session: SessionContext<SessionStack>,
    pub config: Arc<Config>,
    pub health: Arc<Health>,
    /// Every websocket session, so a drain can wait for them.
    pub sessions: TaskTracker,
    /// The HTTP proxy's upstream side, shared by the proxy routes and the relay.
    pub proxy: Arc<crate::proxy::Proxy>,
}

/// The HTTP application.
pub fn app(state: AppState) -> AxumRouter {
    let upstream = state.proxy.clone();
    let api = AxumRouter::new()
        .route("/api/v1/query", post(query))
        .merge(queues::routes())
        .merge(proxy::json_route(upstream.clone()))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    let transparent_proxy = proxy::transparent_routes(upstream).route_layer(
        middleware::from_fn_with_state(state.clone(), require_proxy_auth),
    );
    // `/metrics` needs the password only when `metrics.require_auth` says so (SPEC §9.8).
    let metrics_route = AxumRouter::new().route("/metrics", get(metrics));
    let metrics_route = if state.config.metrics.require_auth {
        metrics_route.route_layer(middleware::from_fn_with_state(state.clone(), require_auth))
    } else {
        metrics_route
    };
    AxumRouter::new()
        .route("/", get(root))
        .route("/gateway/websocket", any(websocket_handshake))
        .route("/api/version", get(version))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .merge(transparent_proxy)
        .merge(metrics_route)
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(state)
}

// === errors ===

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `{"errors": [<reason>]}`, the API's error shape.
fn errors(status: StatusCode, reason: &str) -> Response {
    json_response(status, &json!({ "errors": [reason] }))
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"code": 404, "error": "not found"}),
    )
}

// === handlers ===

async fn root() -> Response {
    (
        StatusCode::FOUND,
        [(
            header::LOCATION,
            HeaderValue::from_static("/gateway/websocket"),
        )],
    )
        .into_response()
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "api": "v1",
            "singyeong": SINGYEONG_VERSION,
            "ganglion": env!("CARGO_PKG_VERSION"),
        }),
    )
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Prometheus text exposition format 0.0.4.
async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::render(&state.router),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let status = state.health.status();
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, &json!({ "status": status }))
}

/// `GET /gateway/websocket` (SPEC §2.1).
async fn websocket_handshake(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if state.health.is_draining() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining"}),
        );
    }
    let Some(encoding) = requested_encoding(query.as_deref()) else {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"code": 403, "error": "invalid encoding"}),
        );
    };
    if !origin_allowed(&headers, &state.config.ws.allowed_origins) {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"code": 403, "error": "origin not allowed"}),
        );
    }
    let Ok(upgrade) = upgrade else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"code": 400, "error": "websocket upgrade required"}),
        );
    };
    let ctx = state.session.clone();
    let sessions = state.sessions.clone();
    websocket::configure(upgrade, &ctx.config)
        .on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            sessions.track_future(websocket::serve(socket, encoding, peer.ip(), ctx))
        })
}

/// The `encoding` parameter: form-decoded, last occurrence wins, exact match (SPEC §2.1).
fn requested_encoding(query: Option<&str>) -> Option<Encoding> {
    let requested = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "encoding")
        .last()
        .map(|(_, v)| v.into_owned());
    match requested.as_deref() {
        None => Some(Encoding::Json),
        Some(name) => Encoding::from_name(name),
    }
}

fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()),
    }
}

/// The password check of the API routes (SPEC §9.1).
async fn require_auth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let credential = request.headers().get(header::AUTHORIZATION).cloned();
    authorize(&state, peer, credential, request, next).await
}

/// The password check of the transparent proxy (SPEC §9.6): the credential may be given in
/// `X-Ganglion-Auth` instead, leaving `Authorization` to the upstream.
async fn require_proxy_auth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let credential = headers
        .get(&proxy::X_GANGLION_AUTH)
        .or_else(|| headers.get(header::AUTHORIZATION))
        .cloned();
    authorize(&state, peer, credential, request, next).await
}

async fn authorize(
    state: &AppState,
    peer: SocketAddr,
    credential: Option<HeaderValue>,
    request: Request,
    next: Next,
) -> Response {
    match state.router.auth().check_http(
        credential.as_ref().map(HeaderValue::as_bytes),
        SourceKey::from_ip(peer.ip()),
    ) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let (status, body) = auth_refusal(state, credential.is_some(), error);
            json_response(status, &body)
        }
    }
}

/// The answer to a request the password check refused, counted as a failure when a wrong
/// credential was given.
fn auth_refusal(
    state: &AppState,
    credential_given: bool,
    error: HttpAuthError,
) -> (StatusCode, serde_json::Value) {
    match error {
        HttpAuthError::NotAuthorized => {
            if state.router.auth().password_required() && credential_given {
                metrics::counter!("ganglion_auth_failures_total", "transport" => "http")
                    .increment(1);
            }
            (
                StatusCode::UNAUTHORIZED,
                json!({"status": "error", "error": "not authorized"}),
            )
        }
        HttpAuthError::TooManyFailures => (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"status": "error", "error": "too many failed auth attempts"}),
        ),
    }
}

/// Reads a request body as JSON whatever its content type; empty is `{}` (SPEC §9.1).
async fn read_json(body: Body, limit: usize) -> Result<Value, Response> {
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(err) => {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            return Err(if too_large {
                errors(StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
            } else {
                errors(StatusCode::BAD_REQUEST, "invalid JSON body")
            });
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes).map_err(|_| errors(StatusCode::BAD_REQUEST, "invalid JSON body"))
}

/// `POST /api/v1/query` (SPEC §9.4).
async fn query(State(state): State<AppState>, body: Body) -> Response {
    let value = match read_json(body, state.config.http.max_body_bytes).await {
        Ok(value) => value,
        Err(response) => return response,
    };
    let query = match Query::parse(&value, state.config.query_limits()) {
        Ok(query) => query,
        Err(e) => return errors(StatusCode::BAD_REQUEST, &e.reason),
    };
    let clients = Out::List(state.router.query_clients(&query));
    let body = ganglion_codecs::Json::to_text(&clients);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Bytes::from(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_parameter_rules() {
        assert_eq!(requested_encoding(None), Some(Encoding::Json));
        assert_eq!(requested_encoding(Some("vsn=1")), Some(Encoding::Json));
        assert_eq!(
            requested_encoding(Some("encoding=msgpack")),
            Some(Encoding::Msgpack)
        );
        assert_eq!(
            requested_encoding(Some("encoding=xml&encoding=msgpack")),
            Some(Encoding::Msgpack)
        );
        assert_eq!(
            requested_encoding(Some("encoding=msgpack&encoding=x")),
            None
        );
        assert_eq!(requested_encoding(Some("encoding=JSON")), None);
        assert_eq!(requested_encoding(Some("encoding=")), None);
        assert_eq!(
            requested_encoding(Some("encoding=%6Ason")),
            Some(Encoding::Json)
        );
        assert_eq!(requested_encoding(Some("encoding=json+")), None);
        assert_eq!(
            requested_encoding(Some("encoding=etf")),
            Some(Encoding::Etf)
        );
        assert_eq!(requested_encoding(Some("encoding=ETF")), None);
    }

    #[test]
    fn origins_are_checked_only_when_configured() {
        let mut headers = HeaderMap::new();
        assert!(origin_allowed(&headers, &[]));
        assert!(origin_allowed(&headers, &["https://a.example".into()]));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://b.example"),
        );
        assert!(origin_allowed(&headers, &[]));
        assert!(!origin_allowed(&headers, &["https://a.example".into()]));
        assert!(origin_allowed(&headers, &["https://b.example".into()]));
    }
}
