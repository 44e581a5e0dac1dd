//! Queue endpoints (SPEC §9.9): statistics, and the parked messages that exhausted
//! `queue.max_deliveries` — list, replay, delete.

use axum::Router as AxumRouter;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ganglion_core::Value;
use ganglion_core::queue::{MessageState, QueueStats, StoredMessage, validate_name};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, errors, json_response};

/// Largest `limit` on the parked-message list (fixed by SPEC §12).
const MAX_LIMIT: usize = 1000;

pub fn routes() -> AxumRouter<AppState> {
    AxumRouter::new()
        .route("/api/v1/queues", get(list))
        .route("/api/v1/queues/{queue}", get(one))
        .route("/api/v1/queues/{queue}/dead", get(parked).delete(remove))
        .route("/api/v1/queues/{queue}/dead/replay", post(replay))
        .route("/api/v1/queues/{queue}/dead/{id}/replay", post(replay))
        .route("/api/v1/queues/{queue}/dead/{id}", delete(remove))
}

fn stats_json(s: &QueueStats) -> serde_json::Value {
    json!({
        "name": s.name,
        "ready": s.ready,
        "in_flight": s.in_flight,
        "dead_lettered": s.dead_lettered,
        "parked": s.parked,
        "waiting_consumers": s.waiting_consumers,
    })
}

fn value_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn message_json(m: &StoredMessage) -> serde_json::Value {
    let parked_at = match m.state {
        MessageState::Parked { parked_at } => json!(parked_at),
        _ => serde_json::Value::Null,
    };
    json!({
        "id": m.id,
        "nonce": value_json(&m.nonce),
        "target": value_json(&m.target),
        "payload": value_json(&m.payload),
        "deliveries": m.deliveries,
        "enqueued_at": m.enqueued_at,
        "parked_at": parked_at,
    })
}

/// What axum's `Path` extractor gives, or why it could not.
type RawParams = Result<Path<Vec<(String, String)>>, PathRejection>;

/// Why the parameters of a queue route are refused.
enum Refused {
    /// 400 with a SPEC §8.1 reason.
    Name(&'static str),
    /// 404 `unknown message id`.
    UnknownMessage,
    /// Anything else axum reports (not expected for string parameters).
    Path(StatusCode, String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Name(reason) => errors(StatusCode::BAD_REQUEST, reason),
            Refused::UnknownMessage => unknown_message(),
            Refused::Path(status, text) => errors(status, &text),
        }
    }
}

/// The 400 for a queue name in the path that no queue could have.
fn check_name(queue: &str) -> Result<(), Refused> {
    validate_name(&Value::from(queue))
        .map(drop)
        .map_err(Refused::Name)
}

/// The percent-decoded `{queue}` and `{id}` of a queue route, the name already validated.
///
/// axum answers a parameter that is not UTF-8 once decoded with a plain-text 400, and then
/// keeps none of the parameters. Here such a name is refused with SPEC §8.1's reason, and such
/// an id is one no message has (after the name is checked, read from the path itself), both in
/// JSON like every other answer (SPEC §9.1).
fn read_params(params: RawParams, uri: &Uri) -> Result<(String, Option<String>), Refused> {
    let params = match params {
        Ok(Path(params)) => params,
        Err(PathRejection::FailedToDeserializePathParams(e)) => {
            return Err(match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } if key == "id" => {
                    check_name(&queue_in_path(uri))
                        .err()
                        .unwrap_or(Refused::UnknownMessage)
                }
                ErrorKind::InvalidUtf8InPathParam { .. } => {
                    Refused::Name("queue: must be a string")
                }
                _ => Refused::Path(e.status(), e.body_text()),
            });
        }
        Err(other) => return Err(Refused::Path(other.status(), other.body_text())),
    };
    let mut queue = String::new();
    let mut id = None;
    for (key, value) in params {
        match key.as_str() {
            "queue" => queue = value,
            "id" => id = Some(value),
            _ => {}
        }
    }
    check_name(&queue)?;
    Ok((queue, id))
}

/// The `{queue}` segment of `/api/v1/queues/{queue}/...`, percent-decoded.
fn queue_in_path(uri: &Uri) -> String {
    let segment = uri
        .path()
        .strip_prefix("/api/v1/queues/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    String::from_utf8_lossy(&percent_decode(segment)).into_owned()
}

/// `%XX` escapes to bytes; anything else, malformed escapes included, stays as it is (axum's
/// own decoding of path parameters).
pub(super) fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    decoded
}

fn unknown_message() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"code": 404, "error": "unknown message id"}),
    )
}

/// `GET /api/v1/queues`.
async fn list(State(state): State<AppState>) -> Response {
    let queues: Vec<_> = state
        .router
        .queues()
        .stats()
        .iter()
        .map(stats_json)
        .collect();
    json_response(StatusCode::OK, &json!({ "queues": queues }))
}

/// `GET /api/v1/queues/{queue}`: one queue's counts; a queue nobody has used is all zeros.
async fn one(State(state): State<AppState>, params: RawParams, uri: Uri) -> Response {
    let queue = match read_params(params, &uri) {
        Ok((queue, _)) => queue,
        Err(refused) => return refused.into_response(),
    };
    let stats = state
        .router
        .queues()
        .stats_of(&queue)
        .unwrap_or(QueueStats {
            name: queue,
            ..QueueStats::default()
        });
    json_response(StatusCode::OK, &stats_json(&stats))
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<String>,
}

/// `GET /api/v1/queues/{queue}/dead?limit=N`.
async fn parked(
    State(state): State<AppState>,
    params: RawParams,
    uri: Uri,
    limit: Result<Query<Limit>, QueryRejection>,
) -> Response {
    let queue = match read_params(params, &uri) {
        Ok((queue, _)) => queue,
        Err(refused) => return refused.into_response(),
    };
    // A query string that does not parse (a repeated `limit`, bytes that are not UTF-8) has
    // no usable limit either.
    let limit = match limit.map(|Query(l)| l.limit.map(|l| l.parse::<usize>())) {
        Ok(None) => 100,
        Ok(Some(Ok(n))) => n.min(MAX_LIMIT),
        Ok(Some(Err(_))) | Err(_) => {
            return errors(
                StatusCode::BAD_REQUEST,
                "limit: must be a non-negative integer",
            );
        }
    };
    // SPEC §9.9: an unknown queue is a 404. A queue is known while it holds messages in any
    // state or has consumers waiting.
    if state.router.queues().stats_of(&queue).is_none() {
        return unknown_message();
    }
    let messages: Vec<_> = state
        .router
        .queues()
        .parked(&queue, limit)
        .iter()
        .map(message_json)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "queue": queue, "messages": messages }),
    )
}

/// `POST .../dead/replay` (every parked message) and `POST .../dead/{id}/replay`.
async fn replay(State(state): State<AppState>, params: RawParams, uri: Uri) -> Response {
    let (queue, id) = match read_params(params, &uri) {
        Ok(params) => params,
        Err(refused) => return refused.into_response(),
    };
    let ids = id.map(|id| vec![id]);
    match state.router.queues().replay(&queue, ids.as_deref()) {
        Some(replayed) => json_response(StatusCode::OK, &json!({ "replayed": replayed })),
        // An unknown queue, or an id that is unknown or not parked (SPEC §9.9).
        None => unknown_message(),
    }
}

/// `DELETE .../dead/{id}`, and `DELETE .../dead`, which deletes every parked message (an
/// extension).
async fn remove(State(state): State<AppState>, params: RawParams, uri: Uri) -> Response {
    let (queue, id) = match read_params(params, &uri) {
        Ok(params) => params,
        Err(refused) => return refused.into_response(),
    };
    let ids = id.map(|id| vec![id]);
    match state.router.queues().delete_parked(&queue, ids.as_deref()) {
        Some(deleted) => json_response(StatusCode::OK, &json!({ "deleted": deleted })),
        None => unknown_message(),
    }
}
