//! Queue endpoints (SPEC §9.9): statistics, and the parked messages that exhausted
//! `queue.max_deliveries` — list, replay, delete.

use axum::Router as AxumRouter;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
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
        .route("/api/v1/queues/{queue}/dead", get(parked).delete(purge))
        .route("/api/v1/queues/{queue}/dead/replay", post(replay_all))
        .route("/api/v1/queues/{queue}/dead/{id}/replay", post(replay_one))
        .route("/api/v1/queues/{queue}/dead/{id}", delete(delete_one))
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

/// The 400 for a queue name in the path that no queue could have.
fn refuse_bad_name(queue: &str) -> Option<Response> {
    validate_name(&Value::from(queue))
        .err()
        .map(|reason| errors(StatusCode::BAD_REQUEST, reason))
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
async fn one(State(state): State<AppState>, Path(queue): Path<String>) -> Response {
    if let Some(response) = refuse_bad_name(&queue) {
        return response;
    }
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
    Path(queue): Path<String>,
    Query(limit): Query<Limit>,
) -> Response {
    if let Some(response) = refuse_bad_name(&queue) {
        return response;
    }
    let limit = match limit.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) => n.min(MAX_LIMIT),
        Some(Err(_)) => {
            return errors(
                StatusCode::BAD_REQUEST,
                "limit: must be a non-negative integer",
            );
        }
    };
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

async fn replay_all(State(state): State<AppState>, Path(queue): Path<String>) -> Response {
    replay(&state, &queue, None)
}

async fn replay_one(
    State(state): State<AppState>,
    Path((queue, id)): Path<(String, String)>,
) -> Response {
    replay(&state, &queue, Some(&[id]))
}

fn replay(state: &AppState, queue: &str, ids: Option<&[String]>) -> Response {
    if let Some(response) = refuse_bad_name(queue) {
        return response;
    }
    match state.router.queues().replay(queue, ids) {
        Some(replayed) => json_response(StatusCode::OK, &json!({ "replayed": replayed })),
        None if ids.is_none() => json_response(StatusCode::OK, &json!({ "replayed": [] })),
        None => unknown_message(),
    }
}

async fn delete_one(
    State(state): State<AppState>,
    Path((queue, id)): Path<(String, String)>,
) -> Response {
    remove(&state, &queue, Some(&[id]))
}

/// `DELETE /api/v1/queues/{queue}/dead`: deletes every parked message (an extension).
async fn purge(State(state): State<AppState>, Path(queue): Path<String>) -> Response {
    remove(&state, &queue, None)
}

fn remove(state: &AppState, queue: &str, ids: Option<&[String]>) -> Response {
    if let Some(response) = refuse_bad_name(queue) {
        return response;
    }
    match state.router.queues().delete_parked(queue, ids) {
        Some(deleted) => json_response(StatusCode::OK, &json!({ "deleted": deleted })),
        None if ids.is_none() => json_response(StatusCode::OK, &json!({ "deleted": [] })),
        None => unknown_message(),
    }
}
