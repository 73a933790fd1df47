//! What every benchmark shares: latency statistics, the side-by-side table and its JSON file,
//! and starting the processes being measured.

pub mod kube_api;
pub mod process;
pub mod wasm;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Latencies of one run, and how long it took.
#[derive(Debug, Default)]
pub struct Samples {
    latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Samples {
    pub fn extend(&mut self, latencies: Vec<Duration>) {
        self.latencies.extend(latencies);
    }

    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

/// One line of a comparison.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub ours: f64,
    pub peer: Option<f64>,
    pub unit: String,
    /// ours / peer.
    pub ratio: Option<f64>,
}

/// A benchmark's results: printed as a table, written as `target/bench-results/<name>.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub peer: String,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn new(name: &str, peer: &str) -> Self {
        Report { name: name.into(), peer: peer.into(), rows: Vec::new() }
    }

    /// The report of a smoke run (`--smoke`): written as `<name>-smoke.json`, so that it never
    /// takes the place of a measured one.
    pub fn smoke(mut self, smoke: bool) -> Self {
        if smoke {
            self.name.push_str("-smoke");
        }
        self
    }

    /// A report with no peer measured beside us.
    pub fn solo(name: &str) -> Self {
        Report::new(name, "")
    }

    pub fn add(&mut self, scenario: impl Into<String>, unit: &str, ours: f64, peer: Option<f64>) {
        let ratio = peer.map(|peer| ours / peer);
        self.rows.push(Row { scenario: scenario.into(), ours, peer, unit: unit.into(), ratio });
    }

    /// Prints the table to stdout and writes the JSON file; returns its path.
    pub fn publish(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if self.peer.is_empty() {
            writeln!(out, "\n{:<48} {:>10} {:>12}", self.name, "unit", "flotilla")?;
        } else {
            writeln!(
                out,
                "\n{:<48} {:>10} {:>12} {:>12} {:>10}",
                self.name, "unit", "flotilla", self.peer, "ours/peer"
            )?;
        }
        for row in &self.rows {
            let peer = row.peer.map_or("-".into(), |p| format!("{p:.2}"));
            let ratio = row.ratio.map_or("-".into(), |r| format!("{r:.2}x"));
            if self.peer.is_empty() {
                writeln!(out, "{:<48} {:>10} {:>12.2}", row.scenario, row.unit, row.ours)?;
            } else {
                writeln!(out, "{:<48} {:>10} {:>12.2} {:>12} {:>10}", row.scenario, row.unit, row.ours, peer, ratio)?;
            }
        }
        let dir = results_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", self.name));
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        writeln!(out, "\nwritten to {}", path.display())?;
        Ok(path)
    }
}

/// `target/bench-results` of this workspace.
pub fn results_dir() -> PathBuf {
    let workspace =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ is in the workspace").to_path_buf();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from).join("bench-results")
}

/// `wrk` against `url` with `connections` connections for `seconds`: requests per second and
/// the p99 latency in ms.
pub fn wrk(url: &str, seconds: u64, connections: usize) -> anyhow::Result<(f64, f64)> {
    use anyhow::Context;
    let out = std::process::Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", url])
        .output()
        .context("run wrk")?;
    anyhow::ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // Failed answers are no throughput.
    if let Some(failed) = text.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        anyhow::bail!("{url}: {}", failed.trim());
    }
    let per_second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("wrk printed no Requests/sec")?
        .trim()
        .parse()?;
    let p99 = text.lines().find_map(|l| l.trim().strip_prefix("99%")).context("wrk printed no 99%")?.trim();
    Ok((per_second, milliseconds(p99)?))
}

/// wrk's durations: `1.23ms`, `456.00us`, `1.02s`.
fn milliseconds(text: &str) -> anyhow::Result<f64> {
    for (suffix, scale) in [("us", 1e-3), ("ms", 1.0), ("s", 1e3)] {
        if let Some(number) = text.strip_suffix(suffix) {
            return Ok(number.parse::<f64>()? * scale);
        }
    }
    anyhow::bail!("unreadable wrk duration {text:?}")
}
