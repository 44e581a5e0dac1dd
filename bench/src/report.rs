//! Rows of results, their medians and ratios, the targets of issue 8, the machine, and the
//! markdown and JSON outputs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::Settings;

/// Which server a value was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ganglion,
    Nats,
}

/// A target of issue 8 for one row.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// ganglion/NATS at least this.
    RatioAtLeast(f64),
    /// ganglion/NATS at most this.
    RatioAtMost(f64),
    /// ganglion's value (in the row's unit) at most this.
    AtMost(f64),
}

impl Target {
    fn text(self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥ {r}× NATS"),
            Target::RatioAtMost(r) => format!("≤ {r}× NATS"),
            Target::AtMost(v) => format!("≤ {} {unit}", fmt_value(v)),
        }
    }

    fn met(self, ganglion: Option<f64>, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Target::RatioAtMost(r) => ratio.map(|x| x <= r),
            Target::AtMost(v) => ganglion.map(|g| g <= v),
        }
    }
}

/// One measured quantity, with a value per run on each side.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: u8,
    /// Stable id, e.g. `1.raw.tcp-msgpack.128`.
    pub id: String,
    /// What it is, for people.
    pub what: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub ganglion: Vec<f64>,
    pub nats: Vec<f64>,
    /// What the NATS column measures, when a row has one.
    pub nats_what: Option<String>,
    pub target: Option<Target>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(scenario: u8, id: &str, what: &str, unit: &str, higher_is_better: bool) -> Row {
        Row {
            scenario,
            id: id.to_owned(),
            what: what.to_owned(),
            unit: unit.to_owned(),
            higher_is_better,
            ganglion: Vec::new(),
            nats: Vec::new(),
            nats_what: None,
            target: None,
            note: None,
        }
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: &str) -> Row {
        self.note = Some(note.to_owned());
        self
    }

    pub fn versus(mut self, nats: &str) -> Row {
        self.nats_what = Some(nats.to_owned());
        self
    }

    pub fn median(&self, side: Side) -> Option<f64> {
        median(match side {
            Side::Ganglion => &self.ganglion,
            Side::Nats => &self.nats,
        })
    }

    pub fn ratio(&self) -> Option<f64> {
        let (g, n) = (self.median(Side::Ganglion)?, self.median(Side::Nats)?);
        (n != 0.0).then_some(g / n)
    }
}

/// The rows of one scenario, filled run by run.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

impl Table {
    pub fn add_row(&mut self, row: Row) {
        if !self.rows.iter().any(|r| r.id == row.id) {
            self.rows.push(row);
        }
    }

    /// Records one run's value for row `id`.
    pub fn record(&mut self, id: &str, side: Side, value: f64) {
        let row = self
            .rows
            .iter_mut()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no row {id}"));
        match side {
            Side::Ganglion => row.ganglion.push(value),
            Side::Nats => row.nats.push(value),
        }
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        // thousands separated by a thin space
        let digits = format!("{:.0}", v);
        let (sign, digits) = digits
            .strip_prefix('-')
            .map_or(("", digits.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push('\u{2009}');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Everything one invocation measured, with where and how.
pub struct Report {
    meta: Value,
    load_samples: Vec<[f64; 3]>,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(s: &Settings, scenarios: &[u8]) -> Report {
        let (commit, dirty) = git_commit();
        let meta = json!({
            "tool": "ganglion-bench",
            "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default(),
            "ganglion_commit": commit,
            "ganglion_worktree_dirty": dirty,
            "ganglion_binary": s.ganglion.display().to_string(),
            "nats_server": {"version": s.nats_version, "path": s.nats.display().to_string()},
            "machine": machine(),
            "pinning": match (s.server_cpu, s.load_cpu) {
                (Some(server), Some(load)) => json!({"server_cpu": server, "load_cpu": load}),
                _ => Value::Null,
            },
            "settings": {
                "quick": s.quick,
                "runs": s.runs,
                "measure_secs": s.measure.as_secs_f64(),
                "warmup_secs": s.warmup.as_secs_f64(),
                "only": s.only,
                "scenarios": scenarios,
            },
        });
        Report {
            meta,
            load_samples: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Records the load average now (the machine may be shared).
    pub fn sample_load(&mut self) {
        if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
            let v: Vec<f64> = text
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() == 3 {
                self.load_samples.push([v[0], v[1], v[2]]);
            }
        }
    }

    pub fn add(&mut self, rows: Vec<Row>) {
        self.rows.extend(rows);
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let ratio = r.ratio();
                let g = r.median(Side::Ganglion);
                json!({
                    "scenario": r.scenario,
                    "id": r.id,
                    "what": r.what,
                    "unit": r.unit,
                    "higher_is_better": r.higher_is_better,
                    "ganglion": {"median": g, "runs": r.ganglion},
                    "nats": if r.nats.is_empty() { Value::Null } else {
                        json!({"median": r.median(Side::Nats), "runs": r.nats, "what": r.nats_what})
                    },
                    "ratio": ratio,
                    "target": r.target.map(|t| json!({
                        "text": t.text(&r.unit),
                        "met": t.met(g, ratio),
                    })),
                    "note": r.note,
                })
            })
            .collect();
        let mut out = self.meta.clone();
        out["load_average"] = json!(self.load_samples);
        out["rows"] = json!(rows);
        out
    }

    pub fn markdown(&self) -> String {
        let m = &self.meta;
        let mut out = String::new();
        let loads: Vec<String> = self
            .load_samples
            .iter()
            .map(|l| format!("{:.2}", l[0]))
            .collect();
        let _ = writeln!(
            out,
            "ganglion `{}`{} vs nats-server {} — {} — {} — runs: {}, {} s measured per run — \
             1-min load average at scenario boundaries: {}\n",
            m["ganglion_commit"].as_str().unwrap_or("?"),
            if m["ganglion_worktree_dirty"] == true {
                " (modified work tree)"
            } else {
                ""
            },
            m["nats_server"]["version"].as_str().unwrap_or("?"),
            m["date"].as_str().unwrap_or("?"),
            m["machine"]["cpu"].as_str().unwrap_or("?"),
            m["settings"]["runs"],
            m["settings"]["measure_secs"],
            loads.join(", ")
        );
        out.push_str(
            "| # | measurement | unit | ganglion | NATS | ganglion/NATS | target | met |\n\
             |---|---|---|---:|---:|---:|---|---|\n",
        );
        for r in &self.rows {
            let g = r.median(Side::Ganglion);
            let n = r.median(Side::Nats);
            let ratio = r.ratio();
            let what = match &r.nats_what {
                Some(nats) => format!("{} (NATS: {nats})", r.what),
                None => r.what.clone(),
            };
            let _ = writeln!(
                out,
                "| {} | {}{} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                what,
                if r.higher_is_better {
                    ""
                } else {
                    " (lower is better)"
                },
                r.unit,
                g.map(fmt_value).unwrap_or_else(|| "—".into()),
                n.map(fmt_value).unwrap_or_else(|| "—".into()),
                ratio
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "—".into()),
                r.target.map(|t| t.text(&r.unit)).unwrap_or_default(),
                match r.target.and_then(|t| t.met(g, ratio)) {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                },
            );
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| r.note.as_ref().map(|n| format!("- `{}`: {n}", r.id)))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        out
    }

    /// Writes `<date>-<commit>.json` and `.md` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let date = self.meta["date"]
            .as_str()
            .unwrap_or("undated")
            .replace(':', "");
        let commit = self.meta["ganglion_commit"].as_str().unwrap_or("unknown");
        let short: String = commit.chars().take(8).collect();
        let stem = format!("{date}-{short}");
        let json_path = dir.join(format!("{stem}.json"));
        let md_path = dir.join(format!("{stem}.md"));
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&self.json())? + "\n",
        )
        .with_context(|| format!("cannot write {}", json_path.display()))?;
        std::fs::write(&md_path, self.markdown())
            .with_context(|| format!("cannot write {}", md_path.display()))?;
        Ok((json_path, md_path))
    }
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit checked out where the tool runs, and whether tracked files differ from it.
fn git_commit() -> (String, bool) {
    let commit = command_line("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = command_line("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    (commit, dirty)
}

fn machine() -> Value {
    let lscpu = command_line("lscpu", &[]).unwrap_or_default();
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    });
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        });
    json!({
        "cpu": field("Model name:"),
        "cpus": field("CPU(s):"),
        "threads_per_core": field("Thread(s) per core:"),
        "hypervisor": field("Hypervisor vendor:"),
        "memory_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "os": os,
        "open_files_limit": crate::procs::open_files_limit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratio_is_ganglion_over_nats_and_targets_are_judged_on_medians() {
        let mut row = Row::new(1, "x", "x", "msg/s", true).target(Target::RatioAtLeast(0.5));
        row.ganglion = vec![100.0, 300.0, 200.0];
        row.nats = vec![400.0];
        assert_eq!(row.ratio(), Some(0.5));
        assert_eq!(
            row.target
                .unwrap()
                .met(row.median(Side::Ganglion), row.ratio()),
            Some(true)
        );
    }

    #[test]
    fn large_values_get_thin_space_separators() {
        assert_eq!(fmt_value(1_234_567.0), "1\u{2009}234\u{2009}567");
        assert_eq!(fmt_value(12.345), "12.3");
    }
}
