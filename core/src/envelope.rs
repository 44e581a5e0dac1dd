//! Inbound envelopes (SPEC §3.1): the decoded top-level object split into its keys.

use crate::error::Fatal;
use crate::frame::RawValue;
use crate::value::Value;

/// One inbound frame, after decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The opcode when `op` is an integer 0–8; `None` is the *unknown* opcode (SPEC §3.3).
    pub op: Option<u8>,
    /// `d`; absent is null.
    pub d: Value,
    /// `t` exactly as received (only meaningful on op 4); null when `fast` holds it.
    pub t: Value,
    /// `ts` and `trace` ([`Envelope::ts`], [`Envelope::trace`]), which most frames do not
    /// carry: boxed, and absent when both are null, so an envelope is cheap to move.
    extras: Option<Box<Extras>>,
    /// For a SEND or BROADCAST whose codec kept `d` in its wire form: `d` and `t` are then
    /// null and this holds its members and its event name. The router reads it instead.
    pub fast: Option<Box<FastDispatch>>,
}

/// The top-level members of an [`Envelope`] that most frames do not carry.
#[derive(Debug, Clone, PartialEq)]
struct Extras {
    ts: Value,
    trace: Value,
}

/// The members of a SEND or BROADCAST `d`, still encoded: checked to be valid when the frame
/// was decoded, decoded only if and when they are needed.
///
/// Routing a message then needs no tree for its target (a repeated target is recognised by its
/// bytes) or its payload (copied as is to recipients of the same encoding).
#[derive(Debug, Clone, PartialEq)]
pub struct FastDispatch {
    /// `t`: `SEND` or `BROADCAST` (a label, so decoding it allocates nothing).
    pub t: &'static str,
    pub target: RawValue,
    pub payload: RawValue,
    pub nonce: Option<RawValue>,
}

impl Envelope {
    /// The `nonce` member of `d` (null when absent), whichever form `d` is in.
    pub fn dispatch_nonce(&self) -> Value {
        match (&self.fast, &self.d) {
            (Some(fast), _) => fast.nonce.as_ref().map_or(Value::Null, RawValue::value),
            (None, Value::Object(d)) => d.get("nonce").cloned().unwrap_or(Value::Null),
            (None, _) => Value::Null,
        }
    }

    /// Splits a decoded frame. A top level that is not an object is undecodable.
    pub fn from_value(value: Value) -> Result<Envelope, Fatal> {
        let Value::Object(mut map) = value else {
            return Err(Fatal::Decode(Some("the frame is not an object".into())));
        };
        let op = map.get("op").cloned().unwrap_or(Value::Null);
        let mut take = |key: &str| map.remove(key).unwrap_or(Value::Null);
        Ok(Envelope::from_parts(
            &op,
            take("d"),
            take("t"),
            take("ts"),
            take("trace"),
        ))
    }

    /// An envelope from the top-level members a decoder found (absent members are null), so
    /// codecs can fill it without building a map for the top level.
    pub fn from_parts(op: &Value, d: Value, t: Value, ts: Value, trace: Value) -> Envelope {
        let op = match op {
            Value::Int(n) => u8::try_from(*n).ok().filter(|op| *op <= 8),
            _ => None,
        };
        Envelope::new(op, d, t, ts, trace)
    }

    /// An envelope with this opcode (`None`: the unknown opcode) and top-level members.
    pub fn new(op: Option<u8>, d: Value, t: Value, ts: Value, trace: Value) -> Envelope {
        let extras = (!ts.is_null() || !trace.is_null()).then(|| Box::new(Extras { ts, trace }));
        Envelope {
            op,
            d,
            t,
            extras,
            fast: None,
        }
    }

    /// `ts` as received, echoed only inside `invalid dispatch payload`; null when absent.
    pub fn ts(&self) -> &Value {
        self.extras
            .as_ref()
            .map_or(&Value::Null, |extras| &extras.ts)
    }

    /// The optional `trace` key (SPEC §11), as received; null when absent.
    pub fn trace(&self) -> &Value {
        self.extras
            .as_ref()
            .map_or(&Value::Null, |extras| &extras.trace)
    }

    /// Takes `ts` out, for an answer that echoes it.
    pub fn take_ts(&mut self) -> Value {
        self.extras.as_mut().map_or(Value::Null, |extras| {
            std::mem::replace(&mut extras.ts, Value::Null)
        })
    }

    /// `t` when it is a string.
    pub fn event_name(&self) -> Option<&str> {
        match &self.fast {
            Some(fast) => Some(fast.t),
            None => self.t.as_str(),
        }
    }

    /// Whether this frame may be handled while an earlier frame's effects are still pending.
    /// SPEC §3.3 allows pipelining as long as the observable order is kept: every answer to a
    /// QUEUE — confirm or error — is emitted in order by the queue journal, so consecutive
    /// QUEUE frames can wait for their durable writes together.
    pub fn is_pipelinable(&self) -> bool {
        self.op == Some(crate::frame::op::DISPATCH) && self.event_name() == Some("QUEUE")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Map;

    fn env(op: Value) -> Envelope {
        Envelope::from_value(Value::Object(Map::from([("op".to_owned(), op)]))).unwrap()
    }

    /// An envelope is moved by value from the codec through the session and the service stack
    /// to the router; above 128 bytes every such move is a call to `memcpy` (three of them per
    /// routed message when it was 144), at or below it a few register moves.
    #[test]
    fn an_envelope_is_small_enough_to_move_without_memcpy() {
        assert!(
            std::mem::size_of::<Envelope>() <= 96,
            "{} bytes",
            std::mem::size_of::<Envelope>()
        );
    }

    #[test]
    fn ts_and_trace_are_kept_and_taken() {
        let ts = Value::Int(1_700_000_000_000);
        let mut envelope =
            Envelope::new(Some(4), Value::Null, Value::Null, ts.clone(), Value::Null);
        assert_eq!((envelope.ts(), envelope.trace()), (&ts, &Value::Null));
        assert_eq!(envelope.take_ts(), ts);
        assert_eq!(envelope.ts(), &Value::Null);
        let bare = Envelope::new(None, Value::Null, Value::Null, Value::Null, Value::Null);
        assert_eq!((bare.ts(), bare.trace()), (&Value::Null, &Value::Null));
    }

    #[test]
    fn only_integers_zero_to_eight_are_known_opcodes() {
        assert_eq!(env(Value::Int(4)).op, Some(4));
        assert_eq!(env(Value::Int(0)).op, Some(0));
        assert_eq!(env(Value::Int(9)).op, None);
        assert_eq!(env(Value::Int(-1)).op, None);
        assert_eq!(env(Value::Float(4.0)).op, None);
        assert_eq!(env(Value::String("4".into())).op, None);
    }

    #[test]
    fn a_non_object_frame_is_undecodable() {
        let err = Envelope::from_value(Value::Array(vec![])).unwrap_err();
        assert_eq!(err.to_string(), "decode: payload: unrecoverable");
    }
}
