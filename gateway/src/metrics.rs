//! Prometheus metrics (SPEC §9.8).
//!
//! Counters and histograms are recorded where things happen, through the `metrics` facade
//! (a no-op until a recorder is installed, like `tracing` without a subscriber). `GET /metrics`
//! renders them, plus the gauges that are cheaper to read at scrape time than to keep up to date
//! (registered clients, queue depths), straight from the router.
//!
//! Labels are bounded: transports, encodings, opcodes, known event names, outcomes, error
//! classes, HTTP status codes. Client ids never appear; queue names do, as the SPEC asks.

use std::fmt::Write as _;
use std::sync::OnceLock;

use ganglion_core::{Router, telemetry};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: 50 µs to 10 s, as core's routing histogram has.
const LATENCY_BUCKETS: &[f64] = telemetry::LATENCY_BUCKETS;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets. The recorder keeps every sample
/// until then (or until a scrape), so without this a node nobody scrapes grows by 16 bytes per
/// routed message.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Installs the process-wide recorder once and returns its handle. If another recorder was
/// installed first (an embedding application), ganglion renders only its scrape-time gauges.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is non-empty")
        };
        match builder().install_recorder() {
            Ok(handle) => {
                describe();
                spawn_upkeep(handle.clone());
                handle
            }
            Err(error) => {
                tracing::warn!(%error, "a metrics recorder is already installed; /metrics shows gauges only");
                builder().build_recorder().handle()
            }
        }
    })
}

/// Folds histogram samples into their buckets every [`UPKEEP_INTERVAL`], for the life of the
/// process (the recorder is process-wide too). A thread, not a task: the recorder may be
/// installed outside any runtime, and the work is a few atomic swaps a second.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms are folded only when /metrics is scraped");
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "ganglion_connections",
        "Open connections, by transport and encoding."
    );
    describe_counter!(
        "ganglion_identify_total",
        "Identifies, by outcome (ok, restricted, rejected) and reason."
    );
    describe_counter!(
        "ganglion_closes_total",
        "Connections closed, by reason (client, goodbye, or the op 8 error class)."
    );
    describe_counter!(
        "ganglion_auth_failures_total",
        "Failed authentications, by transport (ws, tcp, nats, http)."
    );
    describe_counter!(
        "ganglion_proxy_requests_total",
        "Proxied HTTP requests, by status."
    );
    describe_histogram!(
        "ganglion_proxy_request_seconds",
        Unit::Seconds,
        "Proxied requests, from the request to the upstream's response head."
    );
}

/// The exposition text for `GET /metrics`: recorded series, then scrape-time gauges.
pub fn render(router: &Router) -> String {
    let mut out = handle().render();
    render_counters(&mut out);
    render_routing(&mut out);
    let registered = router.registry().len();
    let _ = writeln!(
        out,
        "# HELP ganglion_clients_registered Clients registered on this node.\n\
         # TYPE ganglion_clients_registered gauge\n\
         ganglion_clients_registered {registered}"
    );
    let stats = router.queues().stats();
    out.push_str(
        "# HELP ganglion_queue_messages Queued messages, by queue and state.\n\
         # TYPE ganglion_queue_messages gauge\n",
    );
    for q in &stats {
        let name = escape_label(&q.name);
        for (state, count) in [
            ("ready", q.ready),
            ("in_flight", q.in_flight),
            ("dead_lettered", q.dead_lettered),
            ("parked", q.parked),
        ] {
            let _ = writeln!(
                out,
                "ganglion_queue_messages{{queue=\"{name}\",state=\"{state}\"}} {count}"
            );
        }
    }
    out.push_str(
        "# HELP ganglion_queue_waiting_consumers Consumers waiting, by queue.\n\
         # TYPE ganglion_queue_waiting_consumers gauge\n",
    );
    for q in &stats {
        let _ = writeln!(
            out,
            "ganglion_queue_waiting_consumers{{queue=\"{}\"}} {}",
            escape_label(&q.name),
            q.waiting_consumers
        );
    }
    out
}

/// Label values escape `\`, `"` and newlines (text exposition format 0.0.4).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Core's per-message counters (`ganglion_core::telemetry::frames_received` and the like).
fn render_counters(out: &mut String) {
    let help = |name: &str| match name {
        "ganglion_frames_received_total" => "Frames received, by opcode.",
        "ganglion_frames_sent_total" => "Frames queued for clients, by opcode.",
        "ganglion_dispatch_total" => {
            "Dispatches handled, by event type and outcome (delivered, dropped, no_route, error)."
        }
        _ => "",
    };
    let mut last = "";
    for series in telemetry::counter_snapshots() {
        if series.name != last {
            last = series.name;
            let _ = writeln!(out, "# HELP {last} {}\n# TYPE {last} counter", help(last));
        }
        let labels: Vec<String> = series
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let _ = writeln!(out, "{last}{{{}}} {}", labels.join(","), series.value);
    }
}

/// Core's routing histograms (`ganglion_core::telemetry::routing`), kept outside the recorder.
fn render_routing(out: &mut String) {
    let snapshots = telemetry::routing_snapshots();
    let mut matches = String::new();
    let mut seconds = String::new();
    for (t, m, s) in &snapshots {
        write_histogram(&mut matches, "ganglion_routing_matches", t, m);
        write_histogram(&mut seconds, "ganglion_routing_seconds", t, s);
    }
    let _ = write!(
        out,
        "# HELP ganglion_routing_seconds Time to route one SEND or BROADCAST: query, selection and enqueueing.\n\
         # TYPE ganglion_routing_seconds histogram\n{seconds}\
         # HELP ganglion_routing_matches Clients a routed query selected.\n\
         # TYPE ganglion_routing_matches histogram\n{matches}"
    );
}

fn write_histogram(out: &mut String, name: &str, t: &str, h: &telemetry::HistogramSnapshot) {
    for (bound, count) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{t=\"{t}\",le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{t=\"{t}\",le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{t=\"{t}\"}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{t=\"{t}\"}} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
