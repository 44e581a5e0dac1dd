//! Names and bounded label values for the metrics core records through the `metrics` facade
//! (a no-op until the gateway installs a recorder).
//!
//! Every label value comes from a closed set, so a client can never create new series: event
//! names a client makes up are counted as `unknown`.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

use crate::frame::op;

/// Every event label, in a fixed order (index = position).
const EVENTS: [&str; 9] = [
    "UPDATE_METADATA",
    "SEND",
    "BROADCAST",
    "QUERY_NODES",
    "QUEUE",
    "QUEUE_REQUEST",
    "QUEUE_REQUEST_CANCEL",
    "QUEUE_ACK",
    "unknown",
];

/// Every dispatch outcome label.
const OUTCOMES: [&str; 4] = ["delivered", "dropped", "no_route", "error"];

/// Every op label, `0`…`8` then `unknown`.
const OPS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "unknown"];

/// The `t` label: a known event name, or `unknown`.
pub fn event_label(t: &str) -> &'static str {
    match t {
        "UPDATE_METADATA" => "UPDATE_METADATA",
        "SEND" => "SEND",
        "BROADCAST" => "BROADCAST",
        "QUERY_NODES" => "QUERY_NODES",
        "QUEUE" => "QUEUE",
        "QUEUE_REQUEST" => "QUEUE_REQUEST",
        "QUEUE_REQUEST_CANCEL" => "QUEUE_REQUEST_CANCEL",
        "QUEUE_ACK" => "QUEUE_ACK",
        _ => "unknown",
    }
}

/// The `op` label: `0`…`8`, or `unknown`.
pub fn op_label(opcode: Option<u8>) -> &'static str {
    match opcode {
        Some(op::HELLO) => "0",
        Some(op::IDENTIFY) => "1",
        Some(op::READY) => "2",
        Some(op::INVALID) => "3",
        Some(op::DISPATCH) => "4",
        Some(op::HEARTBEAT) => "5",
        Some(op::HEARTBEAT_ACK) => "6",
        Some(op::GOODBYE) => "7",
        Some(op::ERROR) => "8",
        _ => "unknown",
    }
}

// === series handles ===
//
// Looking a labelled series up costs a label array and a hash lookup per call. These handles are
// resolved once, on first use — after the gateway has installed its recorder, which it does
// before any traffic — and reused for every message.

fn index_of(labels: &[&str], value: &str) -> usize {
    labels
        .iter()
        .position(|l| *l == value)
        .unwrap_or(labels.len() - 1)
}

/// `ganglion_frames_received_total{op}`.
pub fn frames_received(opcode: Option<u8>) -> &'static Counter {
    static HANDLES: OnceLock<Vec<Counter>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        OPS.iter()
            .map(|op| metrics::counter!("ganglion_frames_received_total", "op" => *op))
            .collect()
    });
    &handles[index_of(&OPS, op_label(opcode))]
}

/// `ganglion_frames_sent_total{op}`.
pub fn frames_sent(opcode: u8) -> &'static Counter {
    static HANDLES: OnceLock<Vec<Counter>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        OPS.iter()
            .map(|op| metrics::counter!("ganglion_frames_sent_total", "op" => *op))
            .collect()
    });
    &handles[index_of(&OPS, op_label(Some(opcode)))]
}

/// `ganglion_dispatch_total{t, outcome}`; `t` is an [`event_label`].
pub fn dispatch(t: &str, outcome: &str) -> &'static Counter {
    static HANDLES: OnceLock<Vec<Counter>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        EVENTS
            .iter()
            .flat_map(|t| {
                OUTCOMES.iter().map(move |outcome| {
                    metrics::counter!("ganglion_dispatch_total", "t" => *t, "outcome" => *outcome)
                })
            })
            .collect()
    });
    &handles[index_of(&EVENTS, t) * OUTCOMES.len() + index_of(&OUTCOMES, outcome)]
}

/// `ganglion_routing_matches{t}` and `ganglion_routing_seconds{t}`, for SEND and BROADCAST.
pub fn routing(t: &str) -> &'static (Histogram, Histogram) {
    static HANDLES: OnceLock<Vec<(Histogram, Histogram)>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        EVENTS
            .iter()
            .map(|t| {
                (
                    metrics::histogram!("ganglion_routing_matches", "t" => *t),
                    metrics::histogram!("ganglion_routing_seconds", "t" => *t),
                )
            })
            .collect()
    });
    &handles[index_of(&EVENTS, t)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_a_closed_set() {
        assert_eq!(event_label("SEND"), "SEND");
        assert_eq!(event_label("made-up-by-a-client"), "unknown");
        assert_eq!(op_label(Some(4)), "4");
        assert_eq!(op_label(Some(9)), "unknown");
        assert_eq!(op_label(None), "unknown");
    }
}
