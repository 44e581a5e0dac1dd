//! The proxy routes (SPEC §9.5, §9.6): the JSON form `POST /api/v1/proxy` and the transparent
//! form `ANY /api/v1/proxy/{application}/{*path}`. Both validate the request, choose a client
//! by query (`Router::proxy_target`), derive the target URL and hand the request to
//! [`Proxy::forward`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router as AxumRouter;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use ganglion_core::frame::TraceContext;
use ganglion_core::query::Query;
use ganglion_core::registry::MatchCache;
use ganglion_core::trace::{SPAN_TARGET, traced_span};
use ganglion_core::{Map, Value};
use serde_json::json;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{AppState, errors, json_response, read_json};
use crate::proxy::headers::{
    append_forwarded_for, set_trace_context, strip_hop_by_hop, trace_from_headers,
};
use crate::proxy::target::target_url;
use crate::proxy::{Proxy, ProxyError};

/// The query of a transparent request (SPEC §9.6).
pub static X_GANGLION_QUERY: HeaderName = HeaderName::from_static("x-ganglion-query");
/// The ganglion credential of a transparent request, when `Authorization` is meant for the
/// upstream (SPEC §9.6).
pub static X_GANGLION_AUTH: HeaderName = HeaderName::from_static("x-ganglion-auth");

/// Where transparent requests start.
pub(super) const PREFIX: &str = "/api/v1/proxy/";

/// `POST /api/v1/proxy`, behind the API's usual authentication.
pub fn json_route(proxy: Arc<Proxy>) -> AxumRouter<AppState> {
    AxumRouter::new().route(
        "/api/v1/proxy",
        post(move |state, peer, headers, body| json_form(proxy, state, peer, headers, body)),
    )
}

/// `ANY /api/v1/proxy/{application}[/{*path}]`, behind authentication that also accepts
/// `X-Ganglion-Auth` (`super::require_proxy_auth`).
pub fn transparent_routes(proxy: Arc<Proxy>) -> AxumRouter<AppState> {
    let handler = any(move |state, peer, request| transparent_form(proxy, state, peer, request));
    AxumRouter::new()
        .route("/api/v1/proxy/{application}", handler.clone())
        .route("/api/v1/proxy/{application}/", handler.clone())
        .route("/api/v1/proxy/{application}/{*path}", handler)
}

// === validation ===

/// The reason of a 400 `{"errors":[<reason>]}`.
type Reason = String;

fn missing(field: &str, message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({ field: [message] }))
}

fn bad_request(reason: &str) -> Response {
    errors(StatusCode::BAD_REQUEST, reason)
}

/// Rows 5 and 6 of SPEC §9.5: the method, by its exact (case-sensitive) name.
fn check_method(name: &str) -> Result<Method, Reason> {
    const VALID: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if !VALID.contains(&name) {
        return Err(format!(
            "{name} is not a valid method! (valid methods: [\"GET\", \"HEAD\", \"POST\", \"PUT\", \"DELETE\", \"CONNECT\", \"OPTIONS\", \"TRACE\", \"PATCH\"])"
        ));
    }
    if matches!(name, "CONNECT" | "OPTIONS" | "TRACE") {
        return Err(format!(
            "{name} is not a supported method! (not supported: [\"CONNECT\", \"OPTIONS\", \"TRACE\"])"
        ));
    }
    Method::from_bytes(name.as_bytes()).map_err(|_| format!("{name} is not a valid method!"))
}

/// Rows 9 and 10 of SPEC §9.5: `headers` as a header map, arrays becoming repeated lines.
fn supplied_headers(value: Option<&Value>) -> Result<HeaderMap, Reason> {
    const SHAPE: &str = "headers must map names to strings";
    let map = match value {
        None | Some(Value::Null) => return Ok(HeaderMap::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(SHAPE.to_owned()),
    };
    let mut lines: Vec<(&String, &String)> = Vec::new();
    for (name, value) in map {
        match value {
            Value::String(line) => lines.push((name, line)),
            Value::Array(items) => {
                for item in items {
                    let Value::String(line) = item else {
                        return Err(SHAPE.to_owned());
                    };
                    lines.push((name, line));
                }
            }
            _ => return Err(SHAPE.to_owned()),
        }
    }
    let mut headers = HeaderMap::with_capacity(lines.len());
    for (name, line) in lines {
        // CR, LF and NUL are what the SPEC names; other control characters cannot be sent
        // either, and are refused the same way.
        let parsed = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(line.as_bytes()),
        );
        let (Ok(name), Ok(line)) = parsed else {
            return Err(format!("invalid header: {name}"));
        };
        headers.append(name, line);
    }
    Ok(headers)
}

/// Cleans the headers that go upstream: hop-by-hop, `Host` and `Content-Length` out (hyper
/// sets the last two), the trace context, `X-Forwarded-For`.
fn finish_headers(headers: &mut HeaderMap, trace: Option<&TraceContext>, caller: SocketAddr) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    set_trace_context(headers, trace);
    append_forwarded_for(headers, caller.ip());
}

/// The span of one proxied request, continued from the caller's context, and the context
/// the upstream request carries: the span's own (SPEC §9.7, §11). It ends when the response
/// head is relayed; the body streams on after it.
pub(super) fn proxy_span(
    form: &'static str,
    method: &Method,
    url: &Uri,
    parent: Option<&TraceContext>,
) -> (Span, Option<TraceContext>) {
    let name = match *method {
        Method::GET => "proxy GET",
        Method::HEAD => "proxy HEAD",
        Method::POST => "proxy POST",
        Method::PUT => "proxy PUT",
        Method::DELETE => "proxy DELETE",
        Method::PATCH => "proxy PATCH",
        _ => "proxy",
    };
    traced_span(parent, || {
        tracing::info_span!(
            target: SPAN_TARGET,
            parent: None,
            "proxy",
            otel.name = name,
            otel.kind = "client",
            form,
            method = %method,
            host = url.host().unwrap_or_default(),
            status = Empty,
            error = Empty,
        )
    })
}

/// Sends the request and turns a failure into its answer (SPEC §9.7).
async fn forward(proxy: &Proxy, request: http::Request<Body>, span: Span) -> Response {
    let started = Instant::now();
    let response = match proxy.forward(request).instrument(span.clone()).await {
        Ok(response) => response,
        Err(error) => {
            span.record("error", tracing::field::debug(&error));
            error.into_response()
        }
    };
    Outcomes::default().record(&span, response.status(), started);
    response
}

/// The proxy's metric handles for a run of forwarded requests, the counter of the last status
/// kept: the requests of one connection mostly end with the same status.
#[derive(Default)]
pub(super) struct Outcomes {
    last: Option<(StatusCode, metrics::Counter)>,
    seconds: Option<metrics::Histogram>,
}

impl Outcomes {
    /// Records a forwarded request's status on its span and in the proxy metrics, once its
    /// response head is known (or it failed).
    pub(super) fn record(&mut self, span: &Span, status: StatusCode, started: Instant) {
        span.record("status", i64::from(status.as_u16()));
        let counter = match &self.last {
            Some((last, counter)) if *last == status => counter,
            _ => {
                // Status codes are a bounded label: at most a few hundred values.
                let counter = metrics::counter!(
                    "ganglion_proxy_requests_total",
                    "status" => status.as_str().to_owned()
                );
                &self.last.insert((status, counter)).1
            }
        };
        counter.increment(1);
        self.seconds
            .get_or_insert_with(|| metrics::histogram!("ganglion_proxy_request_seconds"))
            .record(started.elapsed().as_secs_f64());
    }
}

const INVALID_TARGET: &str = "upstream unreachable: invalid target URL";

fn invalid_target() -> Response {
    errors(StatusCode::BAD_GATEWAY, INVALID_TARGET)
}

// === the JSON form ===

/// `POST /api/v1/proxy` (SPEC §9.5): validation in the order of the table, first failure
/// answered.
async fn json_form(
    proxy: Arc<Proxy>,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    incoming: HeaderMap,
    body: Body,
) -> Response {
    let request = match read_json(body, state.config.http.max_body_bytes).await {
        Ok(Value::Object(map)) => map,
        Ok(_) => Map::new(),
        Err(response) => return response,
    };
    let present = |key: &str| request.get(key).filter(|v| !v.is_null());
    let Some(method) = present("method") else {
        return missing("method", "no method provided");
    };
    let Some(route) = present("route") else {
        return missing("route", "no route provided");
    };
    let Some(query) = present("query") else {
        return missing("query", "no query provided");
    };
    let method = match method {
        Value::String(name) => check_method(name),
        other => check_method(&other.to_json()),
    };
    let method = match method {
        Ok(method) => method,
        Err(reason) => return bad_request(&reason),
    };
    let Value::String(route) = route else {
        return bad_request("route must be a string");
    };
    let body = request.get("body").filter(|b| !is_no_body(b));
    if body.is_some() && (method == Method::GET || method == Method::HEAD) {
        return bad_request("no body required but one given (you probably wanted to send nil)");
    }
    let mut headers = match supplied_headers(request.get("headers")) {
        Ok(headers) => headers,
        Err(reason) => return bad_request(&reason),
    };
    let query = match Query::parse(query, state.config.query_limits()) {
        Ok(query) => query,
        Err(e) => return bad_request(&e.reason),
    };
    let Some(address) = state.router.proxy_target(&query) else {
        return bad_request("no matches");
    };
    let Ok(url) = target_url(&address, route) else {
        return invalid_target();
    };

    let parent = trace_from_headers(&incoming).or_else(|| trace_from_headers(&headers));
    let (span, upstream) = proxy_span("json", &method, &url, parent.as_ref());
    finish_headers(&mut headers, upstream.as_ref(), peer);
    let body = match body {
        None => Body::empty(),
        Some(Value::String(text)) => Body::from(text.clone()),
        Some(json) => {
            if !headers.contains_key(header::CONTENT_TYPE) {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Body::from(json.to_json())
        }
    };
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = method;
    *outgoing.uri_mut() = url;
    *outgoing.headers_mut() = headers;
    forward(&proxy, outgoing, span).await
}

/// Absent, null and `""` all mean "no body".
fn is_no_body(body: &Value) -> bool {
    match body {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

// === the transparent form ===

/// `ANY /api/v1/proxy/{application}/{*path}` (SPEC §9.6). Most of these requests never get
/// here: the relay (`super::relay`) serves them on the connection's own task, and hands
/// the connection to this route only for what it leaves to hyper (chunked or large request
/// bodies, `https` targets, upgrades, `Expect`, HTTP/1.0 and HTTP/2).
async fn transparent_form(
    proxy: Arc<Proxy>,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let url = match transparent_target(
        &state,
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        parts
            .headers
            .get(&X_GANGLION_QUERY)
            .map(HeaderValue::as_bytes),
        // Hyper serves a connection's requests one route call at a time, with nothing kept.
        &mut TargetCache::default(),
    ) {
        Ok(url) => url,
        Err(Refusal::NotFound) => return super::not_found().await,
        Err(Refusal::Answer(status, reason)) => return errors(status, &reason),
    };

    let mut headers = std::mem::take(&mut parts.headers);
    // The credential is not the upstream's business: `X-Ganglion-Auth` never goes on, and
    // `Authorization` does not when it is what authenticated the caller.
    if authenticated_by_authorization(&state, headers.contains_key(&X_GANGLION_AUTH)) {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(&X_GANGLION_AUTH);
    headers.remove(&X_GANGLION_QUERY);
    let parent = trace_from_headers(&headers);
    let (span, upstream) = proxy_span("transparent", &parts.method, &url, parent.as_ref());
    finish_headers(&mut headers, upstream.as_ref(), peer);
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = url;
    *outgoing.headers_mut() = headers;
    forward(&proxy, outgoing, span).await
}

/// Whether `Authorization` is the credential that let a transparent request in, and so stays
/// with ganglion: a password is set and `X-Ganglion-Auth` was not given.
pub(super) fn authenticated_by_authorization(state: &AppState, x_ganglion_auth: bool) -> bool {
    state.router.auth().password_required() && !x_ganglion_auth
}

/// Why ganglion answers a transparent request itself.
pub(super) enum Refusal {
    /// Not a transparent proxy path at all: the API's 404.
    NotFound,
    /// `{"errors":[reason]}` with this status.
    Answer(StatusCode, String),
}

/// The target URL of a transparent request (SPEC §9.6): the method checked, the client
/// chosen by the path's application and `X-Ganglion-Query`, the route joined to its address.
/// `cache` is the connection's: what its last request resolved to (see [`TargetCache`]).
pub(super) fn transparent_target(
    state: &AppState,
    method: &str,
    path: &str,
    raw_query: Option<&str>,
    query_header: Option<&[u8]>,
    cache: &mut TargetCache,
) -> Result<Uri, Refusal> {
    let refuse = |status, reason: String| Err(Refusal::Answer(status, reason));
    if let Err(reason) = check_method(method) {
        return refuse(StatusCode::BAD_REQUEST, reason);
    }
    let Some((segment, path)) = split_path(path) else {
        return Err(Refusal::NotFound);
    };
    let query = match cache.query(segment, query_header, state) {
        Ok(query) => query,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let TargetCache { matches, url, .. } = cache;
    let joined = state.router.proxy_target_with(&query, matches, |address| {
        if let Some((a, r, uri)) = url.as_ref()
            && a == address
            && same_route(r, path, raw_query)
        {
            return Ok(uri.clone());
        }
        let route = route(path, raw_query);
        let uri = target_url(address, &route)?;
        *url = Some((address.to_owned(), route, uri.clone()));
        Ok(uri)
    });
    match joined {
        None => refuse(StatusCode::SERVICE_UNAVAILABLE, "no matches".to_owned()),
        Some(Ok(uri)) => Ok(uri),
        Some(Err(crate::proxy::target::InvalidTarget)) => {
            refuse(StatusCode::BAD_GATEWAY, INVALID_TARGET.to_owned())
        }
    }
}

/// What a connection's last transparent request resolved to. A connection usually asks for
/// the same application, query and route again and again: parsing the query, finding its
/// match set and joining the route to the chosen address are then done once, not per
/// request. Each part is kept by exactly what it is computed from (the raw application
/// segment and `X-Ganglion-Query` bytes; the query and the registry's generation; the address
/// and the route), so a request resolves as if nothing were kept; the client is still chosen
/// per request.
#[derive(Default)]
pub(super) struct TargetCache {
    query: Option<CachedQuery>,
    /// The clients with an address the query matched.
    matches: MatchCache,
    /// The last address and route, and the URL they joined to.
    url: Option<(String, String, Uri)>,
}

struct CachedQuery {
    segment: Box<str>,
    header: Option<Box<[u8]>>,
    query: Arc<Query>,
}

impl TargetCache {
    /// The query for the raw `{application}` segment and `X-Ganglion-Query`, or the 400 reason.
    fn query(
        &mut self,
        segment: &str,
        header: Option<&[u8]>,
        state: &AppState,
    ) -> Result<Arc<Query>, Reason> {
        if let Some(cached) = &self.query
            && *cached.segment == *segment
            && cached.header.as_deref() == header
        {
            return Ok(cached.query.clone());
        }
        let query = transparent_query(header, application(segment))?;
        let query = Query::parse(&query, state.config.query_limits()).map_err(|e| e.reason)?;
        let query = Arc::new(query);
        self.query = Some(CachedQuery {
            segment: segment.into(),
            header: header.map(Into::into),
            query: query.clone(),
        });
        Ok(query)
    }
}

/// The raw `{application}` segment and the rest of the path (empty, or from its `/` on).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    Some(match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    })
}

/// The application a raw `{application}` segment names, percent-decoded.
fn application(segment: &str) -> Value {
    match String::from_utf8(super::queues::percent_decode(segment)) {
        Ok(application) => Value::String(application),
        // No application id can be this: a non-string `application` matches nobody.
        Err(_) => Value::Bool(false),
    }
}

/// The route: the rest of the path exactly as received (`/` when empty), with `?` and the raw
/// query string if there is one.
fn route(path: &str, raw_query: Option<&str>) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let mut route = String::with_capacity(path.len() + raw_query.map_or(0, |q| q.len() + 1));
    route.push_str(path);
    if let Some(query) = raw_query {
        route.push('?');
        route.push_str(query);
    }
    route
}

/// Whether `route` is what [`route`] makes of `path` and `raw_query`, without making it.
fn same_route(route: &str, path: &str, raw_query: Option<&str>) -> bool {
    let path = if path.is_empty() { "/" } else { path };
    let Some(rest) = route.strip_prefix(path) else {
        return false;
    };
    match raw_query {
        None => rest.is_empty(),
        Some(query) => rest.strip_prefix('?') == Some(query),
    }
}

/// The query of a transparent request: `X-Ganglion-Query` (JSON) with `application` set to
/// the path's, or just `{"application": <segment>}`.
fn transparent_query(header: Option<&[u8]>, application: Value) -> Result<Value, String> {
    let mut query = match header {
        None => Value::Object(Map::new()),
        Some(text) => serde_json::from_slice::<Value>(text)
            .map_err(|_| "X-Ganglion-Query: invalid JSON".to_owned())?,
    };
    // A query that is not an object is left as it is, for the parser to refuse.
    if let Value::Object(map) = &mut query {
        map.insert("application".to_owned(), application);
    }
    Ok(query)
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, reason) = self.status_and_reason();
        errors(status, &reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn the_route_is_the_raw_rest_of_the_path_and_query() {
        let split = |s: &str| {
            let uri = uri(s);
            let (segment, path) = split_path(uri.path()).unwrap();
            let route = route(path, uri.query());
            assert!(same_route(&route, path, uri.query()), "{s}");
            (application(segment), route)
        };
        assert_eq!(
            split("/api/v1/proxy/svc/users/1?x=2"),
            (Value::from("svc"), "/users/1?x=2".to_owned())
        );
        assert_eq!(
            split("/api/v1/proxy/svc"),
            (Value::from("svc"), "/".to_owned())
        );
        assert_eq!(
            split("/api/v1/proxy/svc/"),
            (Value::from("svc"), "/".to_owned())
        );
        assert_eq!(
            split("/api/v1/proxy/svc?a=b"),
            (Value::from("svc"), "/?a=b".to_owned())
        );
        assert_eq!(
            split("/api/v1/proxy/my%20svc/a%2Fb/c%20d"),
            (Value::from("my svc"), "/a%2Fb/c%20d".to_owned())
        );
        assert_eq!(split("/api/v1/proxy/%FF/x").0, Value::Bool(false));
        assert_eq!(split_path("/api/v1/other"), None);
    }

    /// A kept URL is reused only for the very route it was joined with.
    #[test]
    fn a_route_is_the_same_only_when_path_and_query_are() {
        assert!(same_route("/", "", None));
        assert!(same_route("/", "/", None));
        assert!(same_route("/a?b=c", "/a", Some("b=c")));
        assert!(same_route("/a?", "/a", Some("")));
        assert!(!same_route("/a?", "/a", None));
        assert!(!same_route("/a", "/a", Some("")));
        assert!(!same_route("/ab", "/a", None));
        assert!(!same_route("/a?b=c", "/a", Some("b=d")));
        assert!(!same_route("/?x", "", None));
    }

    #[test]
    fn the_path_segment_sets_the_application_of_the_header_query() {
        let header = br#"{"application":"other","key":"k"}"#;
        let query = transparent_query(Some(header), Value::from("svc")).unwrap();
        assert_eq!(query.to_json(), r#"{"application":"svc","key":"k"}"#);
        assert_eq!(
            transparent_query(None, Value::from("svc"))
                .unwrap()
                .to_json(),
            r#"{"application":"svc"}"#
        );
        assert_eq!(
            transparent_query(Some(b"{nope"), Value::from("svc")),
            Err("X-Ganglion-Query: invalid JSON".to_owned())
        );
        assert_eq!(
            transparent_query(Some(b"5"), Value::from("svc"))
                .unwrap()
                .to_json(),
            "5"
        );
    }
}
