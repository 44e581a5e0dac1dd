//! W3C trace context (SPEC §11): parsing the envelope's `trace`, continuing it into ganglion's
//! own spans, and the context that frames caused by those spans carry.
//!
//! Propagation is always on and needs no exporter: the context a frame carries has the
//! inbound trace id and flags, `tracestate` copied, and a span id of ganglion's as parent id.
//! Which span id that is, and whether a trace is started when the frame had none, is up to
//! the installed [`Tracer`]. The gateway installs one backed by OpenTelemetry when spans are
//! exported; without it, each span of ganglion's gets a fresh random id and no trace is
//! started. Core itself knows nothing of OpenTelemetry.
//!
//! Per-message spans use the target [`SPAN_TARGET`], so a subscriber can give them to its
//! span exporter only: with export off no layer enables them, and each costs one cached
//! callsite check.

use std::sync::OnceLock;

use tracing::Span;
use tracing::field::Empty;

use crate::envelope::Envelope;
use crate::frame::TraceContext;
use crate::session::ConnId;
use crate::telemetry::event_label;
use crate::value::Value;

/// The `tracing` target of every per-message span (dispatches, queue operations, proxied
/// requests). Logs at `info` never show them; the span exporter enables them.
pub const SPAN_TARGET: &str = "ganglion::trace";

/// A parsed `traceparent`: `00-<trace-id>-<parent-id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// Never zero.
    pub trace_id: u128,
    /// Never zero.
    pub parent_id: u64,
    /// Bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` of version `00`: exactly 55 characters, lowercase hex, ids not
    /// all zero. Anything else is `None` (SPEC §11: ignored without error).
    pub fn parse(text: &str) -> Option<TraceParent> {
        let b = text.as_bytes();
        if b.len() != 55 || !b.starts_with(b"00-") || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let (trace_id, parent_id, flags) = (&b[3..35], &b[36..52], &b[53..55]);
        let lower_hex = |field: &[u8]| {
            field
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        };
        if !(lower_hex(trace_id) && lower_hex(parent_id) && lower_hex(flags)) {
            return None;
        }
        let parsed = TraceParent {
            trace_id: u128::from_str_radix(&text[3..35], 16).ok()?,
            parent_id: u64::from_str_radix(&text[36..52], 16).ok()?,
            flags: u8::from_str_radix(&text[53..55], 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

// === impl TraceContext ===

impl TraceContext {
    /// The context of an envelope's `trace` value (SPEC §11): an object whose `traceparent`
    /// is valid. A `tracestate` that is not a string is left out; anything else invalid makes
    /// the whole value `None`.
    pub fn from_value(trace: &Value) -> Option<TraceContext> {
        let Value::Object(map) = trace else {
            return None;
        };
        let traceparent = map.get("traceparent")?.as_str()?;
        TraceParent::parse(traceparent)?;
        Some(TraceContext {
            traceparent: traceparent.to_owned(),
            tracestate: map
                .get("tracestate")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// A context from parts; `traceparent` must come from [`TraceParent`]'s formatting.
    pub fn new(parent: TraceParent, tracestate: Option<String>) -> TraceContext {
        TraceContext {
            traceparent: parent.to_string(),
            tracestate,
        }
    }

    /// The parsed `traceparent`. Contexts are only built from valid ones, so `None` means
    /// one was built by hand from an invalid string.
    pub fn parent(&self) -> Option<TraceParent> {
        TraceParent::parse(&self.traceparent)
    }

    /// The context a frame caused by span `span_id` carries: same trace id and flags, the
    /// span as parent id, `tracestate` copied unchanged.
    pub fn child(&self, span_id: u64) -> TraceContext {
        let traceparent = match self.parent() {
            Some(parent) => TraceParent {
                parent_id: span_id,
                ..parent
            }
            .to_string(),
            None => self.traceparent.clone(),
        };
        TraceContext {
            traceparent,
            tracestate: self.tracestate.clone(),
        }
    }
}

// === the tracer ===

/// Continues traces into ganglion's spans. The gateway installs one backed by OpenTelemetry
/// when it exports spans ([`install`]).
pub trait Tracer: Send + Sync + 'static {
    /// Whether a span continuing `parent` (or starting a trace, without one) is recorded: the
    /// sampling decision, taken before the span exists, so that a span nobody records is
    /// never built. Frames continue `parent` either way.
    fn records(&self, parent: Option<&TraceContext>) -> bool;

    /// Makes `span` a child of `parent` (or the root of a new trace, if the tracer starts
    /// one) and returns the context that frames caused within `span` carry: `parent`'s
    /// [`child`](TraceContext::child) with the span's id, or, without a parent, the new
    /// trace's context, or `None` when no trace is recorded.
    fn continue_trace(&self, span: &Span, parent: Option<&TraceContext>) -> Option<TraceContext>;
}

static TRACER: OnceLock<Box<dyn Tracer>> = OnceLock::new();

/// Installs the process-wide tracer; `false` when one was installed before (the first stays).
pub fn install(tracer: impl Tracer) -> bool {
    TRACER.set(Box::new(tracer)).is_ok()
}

/// Continues `parent` into `span` with the installed tracer. Without one: a child with a
/// fresh random span id, and no trace started when there is no parent.
pub fn continue_trace(span: &Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
    match TRACER.get() {
        Some(tracer) => tracer.continue_trace(span, parent),
        None => parent.map(|parent| parent.child(random_span_id())),
    }
}

/// Opens one of ganglion's spans with `open` — only when it would be recorded — continued
/// from `parent`, and returns it with the context the frames caused within it carry. A span
/// the installed tracer would not record is never built ([`Span::none`]); frames then carry a
/// child of `parent` with a random span id, or nothing. Without a tracer the span is built
/// (its filter decides, at the cost of a cached check) and frames get the same random child.
pub fn traced_span(
    parent: Option<&TraceContext>,
    open: impl FnOnce() -> Span,
) -> (Span, Option<TraceContext>) {
    match TRACER.get() {
        Some(tracer) if tracer.records(parent) => {
            let span = open();
            let trace = tracer.continue_trace(&span, parent);
            (span, trace)
        }
        Some(_) => (
            Span::none(),
            parent.map(|parent| parent.child(random_span_id())),
        ),
        None => (open(), parent.map(|parent| parent.child(random_span_id()))),
    }
}

/// Opens `open` as a child of the current span when that is one of ganglion's per-message
/// spans, and [`Span::none`] otherwise: a child of a span that is not recorded would become
/// an orphan root. One cached check when per-message spans are off.
pub fn child_span(open: impl FnOnce() -> Span) -> Span {
    if tracing::enabled!(target: SPAN_TARGET, tracing::Level::INFO)
        && Span::current()
            .metadata()
            .is_some_and(|meta| meta.target() == SPAN_TARGET)
    {
        open()
    } else {
        Span::none()
    }
}

/// Opens the span of one inbound op 4 — the root of ganglion's part of its trace, continued
/// from the envelope's `trace` — and returns it with the context the frames it causes carry
/// ([`Inbound::trace`](crate::Inbound::trace)). `conn` is the connection it came from, `None`
/// for an injection. The router records `app`, `client`, `outcome`, `matches`, `recipients`,
/// `queue`, `id` and `error` on it while it is entered.
pub fn dispatch_span(
    envelope: &Envelope,
    transport: &'static str,
    conn: Option<ConnId>,
) -> (Span, Option<TraceContext>) {
    let t = event_label(envelope.event_name().unwrap_or_default());
    let parent = TraceContext::from_value(envelope.trace());
    traced_span(parent.as_ref(), || {
        tracing::info_span!(
            target: SPAN_TARGET,
            parent: None,
            "dispatch",
            otel.name = t,
            t,
            transport,
            conn,
            app = Empty,
            client = Empty,
            outcome = Empty,
            matches = Empty,
            recipients = Empty,
            queue = Empty,
            id = Empty,
            error = Empty,
        )
    })
}

/// Runs `record` on the current span when per-message spans are on; otherwise costs one
/// cached callsite check. For fields the router learns while handling a frame (matches,
/// recipients, outcome) on the span the gateway opened for it.
#[inline]
pub fn record_current(record: impl FnOnce(&Span)) {
    if tracing::enabled!(target: SPAN_TARGET, tracing::Level::INFO) {
        record(&Span::current());
    }
}

/// A random, non-zero span id.
pub fn random_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Map;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn trace(pairs: &[(&str, Value)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<Map>(),
        )
    }

    #[test]
    fn a_valid_traceparent_parses_into_its_fields_and_formats_back() {
        let parsed = TraceParent::parse(VALID).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parsed.flags, 1);
        assert!(parsed.is_sampled());
        assert_eq!(parsed.to_string(), VALID);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for invalid in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0G",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn the_envelope_trace_needs_an_object_with_a_valid_traceparent() {
        let context = TraceContext::from_value(&trace(&[
            ("traceparent", Value::from(VALID)),
            ("tracestate", Value::from("congo=t61rcWkgMzE")),
        ]))
        .unwrap();
        assert_eq!(context.traceparent, VALID);
        assert_eq!(context.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        for invalid in [
            Value::Null,
            Value::from(VALID),
            Value::Array(vec![Value::from(VALID)]),
            trace(&[]),
            trace(&[("traceparent", Value::Int(1))]),
            trace(&[("traceparent", Value::from("00-zz"))]),
            trace(&[("tracestate", Value::from("a=b"))]),
        ] {
            assert_eq!(TraceContext::from_value(&invalid), None, "{invalid:?}");
        }
        let odd_state = TraceContext::from_value(&trace(&[
            ("traceparent", Value::from(VALID)),
            ("tracestate", Value::Int(5)),
        ]))
        .unwrap();
        assert_eq!(odd_state.tracestate, None);
    }

    #[test]
    fn a_child_keeps_trace_id_flags_and_tracestate_and_takes_the_span_as_parent() {
        let parent = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
            tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
        };
        let child = parent.child(0xabcdef);
        assert_eq!(
            child.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000abcdef-00"
        );
        assert_eq!(child.tracestate, parent.tracestate);
    }

    #[test]
    fn without_a_tracer_a_parent_gets_a_random_child_and_no_trace_is_started() {
        let parent = TraceContext::from_value(&trace(&[("traceparent", Value::from(VALID))]));
        let span = Span::none();
        let child = continue_trace(&span, parent.as_ref()).unwrap();
        let parsed = child.parent().unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(parsed.parent_id, 0x00f067aa0ba902b7);
        assert_ne!(parsed.parent_id, 0);
        assert_eq!(continue_trace(&span, None), None);
    }
}
