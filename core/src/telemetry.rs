//! Names and bounded label values for the metrics core records through the `metrics` facade
//! (a no-op until the gateway installs a recorder).
//!
//! Every label value comes from a closed set, so a client can never create new series: event
//! names a client makes up are counted as `unknown`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

// === per-message counters ===
//
// The counters that move with every frame are kept here, one relaxed atomic add each, rather
// than in the `metrics` recorder (whose counters also track a generation per series for idle
// expiry, through a trait object: two atomic adds and an indirect call). `GET /metrics` renders
// them from [`counter_snapshots`]; every series is shown, zero or not.

fn index_of(labels: &[&str], value: &str) -> usize {
    labels
        .iter()
        .position(|l| *l == value)
        .unwrap_or(labels.len() - 1)
}

/// A monotonic counter in one atomic.
#[derive(Debug, Default)]
pub struct FastCounter(AtomicU64);

impl FastCounter {
    pub const fn new() -> FastCounter {
        FastCounter(AtomicU64::new(0))
    }

    pub fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

static FRAMES_RECEIVED: [FastCounter; OPS.len()] = [const { FastCounter::new() }; OPS.len()];
static FRAMES_SENT: [FastCounter; OPS.len()] = [const { FastCounter::new() }; OPS.len()];
static DISPATCHES: [FastCounter; EVENTS.len() * OUTCOMES.len()] =
    [const { FastCounter::new() }; EVENTS.len() * OUTCOMES.len()];

/// `ganglion_frames_received_total{op}`.
pub fn frames_received(opcode: Option<u8>) -> &'static FastCounter {
    &FRAMES_RECEIVED[op_index(opcode)]
}

/// `ganglion_frames_sent_total{op}`.
pub fn frames_sent(opcode: u8) -> &'static FastCounter {
    &FRAMES_SENT[op_index(Some(opcode))]
}

/// The position of an opcode's label in [`OPS`].
fn op_index(opcode: Option<u8>) -> usize {
    match opcode {
        Some(op @ 0..=8) => usize::from(op),
        _ => OPS.len() - 1,
    }
}

/// `ganglion_dispatch_total{t, outcome}`; `t` is an [`event_label`].
pub fn dispatch(t: &str, outcome: &str) -> &'static FastCounter {
    &DISPATCHES[index_of(&EVENTS, t) * OUTCOMES.len() + index_of(&OUTCOMES, outcome)]
}

/// One series of a counter kept here: its name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterSeries {
    pub name: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
    pub value: u64,
}

/// Every series of the counters kept here, in a fixed order (grouped by name).
pub fn counter_snapshots() -> Vec<CounterSeries> {
    let mut out = Vec::new();
    for (name, counters) in [
        ("ganglion_frames_received_total", &FRAMES_RECEIVED),
        ("ganglion_frames_sent_total", &FRAMES_SENT),
    ] {
        out.extend(OPS.iter().zip(counters).map(|(op, c)| CounterSeries {
            name,
            labels: vec![("op", *op)],
            value: c.get(),
        }));
    }
    for (i, t) in EVENTS.iter().enumerate() {
        for (j, outcome) in OUTCOMES.iter().enumerate() {
            out.push(CounterSeries {
                name: "ganglion_dispatch_total",
                labels: vec![("t", *t), ("outcome", *outcome)],
                value: DISPATCHES[i * OUTCOMES.len() + j].get(),
            });
        }
    }
    out
}

// === routing histograms ===
//
// The two histograms recorded for every routed message are kept here rather than in the
// `metrics` recorder: its histograms buffer every sample until a fold (an atomic push of 16 bytes
// through an epoch-managed bucket list), which cost 8 % of a routing core in the profile. These
// are fixed buckets in atomics: recording is a bucket search and two relaxed adds. `GET /metrics`
// renders them from [`routing_snapshots`].

/// Bucket bounds of `ganglion_routing_seconds`, in seconds: 50 µs to 10 s (the gateway gives its
/// other latency histograms the same).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of `ganglion_routing_matches`: how many clients a query selected.
pub const MATCH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 10_000.0, 100_000.0,
];

/// A histogram with fixed bucket bounds, recorded in whole units (nanoseconds, clients).
#[derive(Debug)]
pub struct FixedHistogram {
    /// What one recorded unit is in the exposed unit (1e-9 for nanoseconds shown as seconds).
    unit: f64,
    /// The bucket bounds as exposed, and in recorded units.
    bounds: &'static [f64],
    limits: Box<[u64]>,
    /// One count per bound, then the `+Inf` bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// The sum of recorded values, in recorded units.
    sum: AtomicU64,
}

/// A histogram read at one moment, in the exposed unit.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, rising; the `+Inf` bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl FixedHistogram {
    /// `bounds` rising, in the exposed unit; `unit` is what one recorded unit is in it.
    pub fn new(bounds: &'static [f64], unit: f64) -> FixedHistogram {
        FixedHistogram {
            unit,
            bounds,
            limits: bounds.iter().map(|b| (b / unit).round() as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` recorded units.
    pub fn record(&self, value: u64) {
        // A linear scan: what is recorded is almost always in the first buckets (a routing
        // takes microseconds and selects a few clients), where it stops after a comparison or
        // two that the branch predictor learns, unlike a binary search's.
        let bucket = self
            .limits
            .iter()
            .position(|limit| value <= *limit)
            .unwrap_or(self.limits.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, n) in self.bounds.iter().zip(self.counts.iter()) {
            count += n.load(Ordering::Relaxed);
            buckets.push((*bound, count));
        }
        count += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.unit,
            count,
        }
    }
}

/// `ganglion_routing_matches{t}` and `ganglion_routing_seconds{t}` of one event type.
#[derive(Debug)]
pub struct Routing {
    /// Clients a routed query selected.
    pub matches: FixedHistogram,
    /// Time to route one message, recorded in nanoseconds.
    pub seconds: FixedHistogram,
}

impl Routing {
    pub fn record_matches(&self, matches: usize) {
        self.matches
            .record(u64::try_from(matches).unwrap_or(u64::MAX));
    }

    pub fn record_elapsed(&self, elapsed: std::time::Duration) {
        self.seconds
            .record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }
}

fn routing_handles() -> &'static [Routing] {
    static HANDLES: OnceLock<Vec<Routing>> = OnceLock::new();
    HANDLES.get_or_init(|| {
        EVENTS
            .iter()
            .map(|_| Routing {
                matches: FixedHistogram::new(MATCH_BUCKETS, 1.0),
                seconds: FixedHistogram::new(LATENCY_BUCKETS, 1e-9),
            })
            .collect()
    })
}

/// The routing histograms of `t` (an [`event_label`]; SEND and BROADCAST record).
pub fn routing(t: &str) -> &'static Routing {
    &routing_handles()[index_of(&EVENTS, t)]
}

/// Every event type that recorded a routing, with its `(matches, seconds)` histograms.
pub fn routing_snapshots() -> Vec<(&'static str, HistogramSnapshot, HistogramSnapshot)> {
    EVENTS
        .iter()
        .zip(routing_handles())
        .map(|(t, r)| (*t, r.matches.snapshot(), r.seconds.snapshot()))
        .filter(|(_, matches, seconds)| matches.count > 0 || seconds.count > 0)
        .collect()
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

    #[test]
    fn every_opcode_counts_under_its_own_label() {
        for op in 0..=9u8 {
            let before = frames_received(Some(op)).get();
            frames_received(Some(op)).increment(2);
            let series = counter_snapshots();
            let label = op_label(Some(op));
            let found = series
                .iter()
                .find(|s| s.name == "ganglion_frames_received_total" && s.labels == [("op", label)])
                .expect("a series per label");
            assert_eq!(found.value, before + 2, "op {op}");
        }
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = FixedHistogram::new(&[0.0, 1.0, 5.0], 1.0);
        for value in [0, 1, 2, 5, 6, 1_000] {
            h.record(value);
        }
        let snapshot = h.snapshot();
        assert_eq!(snapshot.buckets, vec![(0.0, 1), (1.0, 2), (5.0, 4)]);
        assert_eq!(snapshot.count, 6);
        assert_eq!(snapshot.sum, 1_014.0);
    }

    #[test]
    fn nanoseconds_are_shown_as_seconds() {
        let h = FixedHistogram::new(LATENCY_BUCKETS, 1e-9);
        h.record(50_000); // exactly 50 µs: the first bucket, inclusive
        h.record(50_001);
        h.record(20_000_000_000); // 20 s: only +Inf
        let snapshot = h.snapshot();
        assert_eq!(snapshot.buckets[0], (0.000_05, 1));
        assert_eq!(snapshot.buckets[1], (0.000_1, 2));
        assert_eq!(snapshot.buckets.last(), Some(&(10.0, 2)));
        assert_eq!(snapshot.count, 3);
        assert!((snapshot.sum - 20.000_100_001).abs() < 1e-9);
    }
}
