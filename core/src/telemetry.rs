//! Names and bounded label values for the metrics core records through the `metrics` facade
//! (a no-op until the gateway installs a recorder).
//!
//! Every label value comes from a closed set, so a client can never create new series: event
//! names a client makes up are counted as `unknown`.

use crate::frame::op;

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
