//! `ganglion-bench`: ganglion and nats-server side by side, on the same machine, driven by the
//! same load generator.
//!
//! Each scenario starts its own servers (a `ganglion` release process and a `nats-server`),
//! pinned to one core with `taskset`, while this process — the load — runs pinned to the other
//! core on a single-threaded tokio runtime. Every measurement is repeated (`--runs`, default 5)
//! with fresh servers, ganglion and NATS interleaved run by run, and the medians and the ratio
//! ganglion/NATS of every row go to a markdown table and a JSON file.
//!
//! - [`procs`]: the servers and worker processes (spawned pinned, killed on drop, on panic and on
//!   ctrl-c), their temporary directories, their resident memory;
//! - [`wire`]: minimal clients for the load's hot path (pre-encoded TCP and websocket frames for
//!   ganglion, protocol lines for NATS) and frame counters that skip bodies without copying;
//! - [`scenarios`]: the six scenarios of issue 8;
//! - [`report`]: rows, medians, ratios, targets, the machine, markdown and JSON.

#![forbid(unsafe_code)]

mod procs;
mod report;
mod scenarios;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;

/// The load allocates as the gateway does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load tool: ganglion against nats-server, side by side (docs/performance.md).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// One run per measurement, short durations and fewer connections: a smoke test.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (1-6), repeatable or comma-separated; all by default.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<u8>,
    /// Only the variants whose id contains this text (e.g. `tcp-msgpack-128`).
    #[arg(long)]
    only: Option<String>,
    /// Runs per measurement (default 5, or 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds measured per throughput or latency run (default 3, or 0.5 with --quick).
    #[arg(long)]
    secs: Option<f64>,
    /// Where the JSON and markdown results go (file names carry the date and the commit).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The ganglion binary (default: `ganglion` beside this binary, i.e. the same target dir).
    #[arg(long, env = "GANGLION_BIN")]
    ganglion: Option<PathBuf>,
    /// The nats-server binary (default: the newest `nats-server` on PATH or /usr/sbin).
    #[arg(long, env = "NATS_SERVER_BIN")]
    nats_server: Option<PathBuf>,
    /// The core the servers run on.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// The core the load runs on.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Do not pin (servers and load share every core).
    #[arg(long)]
    no_pin: bool,
    /// Internal: run as a worker process holding idle connections (scenario 4).
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// Internal: the worker's server address.
    #[arg(long, hide = true)]
    addr: Option<String>,
    /// Internal: the worker's connection count.
    #[arg(long, hide = true)]
    count: Option<usize>,
    /// Internal: the worker's first client index.
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
}

/// What every scenario needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub runs: usize,
    /// Measured time of a throughput or latency run.
    pub measure: Duration,
    /// Time before measuring, on every run (connections warm, caches and queues settled).
    pub warmup: Duration,
    pub only: Option<String>,
    pub ganglion: PathBuf,
    pub nats: PathBuf,
    pub nats_version: String,
    /// `Some(cpu)`: servers are started under `taskset -c cpu`.
    pub server_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
}

impl Settings {
    /// Whether the variant `id` is selected by `--only`.
    pub fn wants(&self, id: &str) -> bool {
        self.only.as_ref().is_none_or(|only| id.contains(only))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    procs::raise_open_files_limit();
    if let Some(kind) = &args.worker {
        // Workers inherit the parent's pinning.
        let addr = args.addr.as_deref().context("--addr")?;
        let count = args.count.context("--count")?;
        return runtime()?.block_on(scenarios::idle::worker(kind, addr, count, args.first));
    }
    let pinned = !args.no_pin && procs::pin_self(args.load_cpu, args.server_cpu);
    let ganglion = match &args.ganglion {
        Some(path) => path.clone(),
        None => procs::ganglion_beside_self()?,
    };
    let (nats, nats_version) = procs::find_nats_server(args.nats_server.as_deref())?;
    let settings = Settings {
        quick: args.quick,
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 5 }),
        measure: Duration::from_secs_f64(args.secs.unwrap_or(if args.quick { 0.5 } else { 3.0 })),
        warmup: Duration::from_millis(if args.quick { 200 } else { 500 }),
        only: args.only.clone(),
        ganglion,
        nats,
        nats_version,
        server_cpu: pinned.then_some(args.server_cpu),
        load_cpu: pinned.then_some(args.load_cpu),
    };
    let scenarios = if args.scenario.is_empty() {
        vec![1, 2, 3, 4, 5, 6]
    } else {
        args.scenario.clone()
    };
    if let Some(bad) = scenarios.iter().find(|s| !(1..=6).contains(*s)) {
        bail!("no scenario {bad}: they are numbered 1 to 6");
    }
    procs::handle_signals();
    eprintln!(
        "ganglion-bench: {} against nats-server {} ({}), runs {}, {:.1} s per run, {}",
        settings.ganglion.display(),
        settings.nats_version,
        settings.nats.display(),
        settings.runs,
        settings.measure.as_secs_f64(),
        match (settings.server_cpu, settings.load_cpu) {
            (Some(s), Some(l)) => format!("servers on cpu {s}, load on cpu {l}"),
            _ => "not pinned".to_owned(),
        }
    );
    let mut report = report::Report::new(&settings, &scenarios);
    let rt = runtime()?;
    for scenario in scenarios {
        report.sample_load();
        let started = std::time::Instant::now();
        let rows = rt
            .block_on(scenarios::run(scenario, &settings))
            .with_context(|| format!("scenario {scenario}"))?;
        eprintln!(
            "scenario {scenario}: {} rows in {:.0} s",
            rows.len(),
            started.elapsed().as_secs_f64()
        );
        report.add(rows);
    }
    report.sample_load();
    let (json, markdown) = report.write(&args.out)?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", json.display(), markdown.display());
    Ok(())
}

/// The load's runtime: one thread, on the load's core.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}
