//! The wasm runtime alone, without a node around it: how long a container of a module already
//! loaded (compiled, cached, pre-linked) takes from instantiation to exit, for the `hello`
//! example as a WASI p1 module and as a p2 component, one after another and with many at once;
//! and how much of a core a busy loop gets under a 500m CPU limit.
//!
//! The peers' figures are published ones (BENCHMARKS.md): wasmtime's own ~27 µs for a WASI
//! hello with pooling and `InstancePre`, Spin's 0.5 ms cold start.
//!
//! `cargo bench -p flotilla-benches --bench wasm -- [--runs N] [--concurrency 64]`

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use flotilla_benches::wasm::run;
use flotilla_benches::{Report, Samples};
use flotilla_wasm::{Runtime, RuntimeConfig};

#[derive(Debug, Parser)]
struct Args {
    /// Containers run per scenario.
    #[arg(long, default_value_t = 5000)]
    runs: usize,
    /// Containers in flight at once in the concurrent scenario.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Every scenario at a tiny size: that the benchmark still runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.runs, args.concurrency) = (20, 4);
    }
    let dir = tempfile::tempdir()?;
    let runtime = Arc::new(Runtime::new(RuntimeConfig::new(dir.path().join("cache")))?);
    let mut report = Report::solo("wasm").smoke(args.smoke);
    for (target, wasm) in [("p1 module", flotilla_examples::P1_HELLO), ("p2 component", flotilla_examples::P2_HELLO)] {
        let bytes = std::fs::read(wasm)?;
        let started = Instant::now();
        Runtime::new(RuntimeConfig::new(dir.path().join(format!("cold-{}", target.len()))))?.load(&bytes)?;
        report.add(format!("hello {target}: compile and cache"), "ms", started.elapsed().as_secs_f64() * 1e3, None);
        let program = runtime.load(&bytes)?;

        let mut one_by_one = Samples::default();
        let started = Instant::now();
        for _ in 0..args.runs {
            one_by_one.extend(vec![run(&runtime, &program).await?]);
        }
        one_by_one.elapsed = started.elapsed();
        report.add(format!("hello {target}, one at a time: p50"), "µs", one_by_one.quantile_ms(0.50) * 1e3, None);
        report.add(format!("hello {target}, one at a time: p99"), "µs", one_by_one.quantile_ms(0.99) * 1e3, None);

        let mut together = Samples::default();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..args.concurrency {
            let (runtime, program) = (runtime.clone(), program.clone());
            let share = args.runs / args.concurrency + usize::from(worker < args.runs % args.concurrency);
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(share);
                for _ in 0..share {
                    latencies.push(run(&runtime, &program).await?);
                }
                anyhow::Ok(latencies)
            });
        }
        while let Some(latencies) = tasks.join_next().await {
            together.extend(latencies??);
        }
        together.elapsed = started.elapsed();
        let label = format!("hello {target}, {} at a time", args.concurrency);
        report.add(format!("{label}: containers/s"), "containers/s", together.per_second(), None);
        report.add(format!("{label}: p99"), "µs", together.quantile_ms(0.99) * 1e3, None);
    }
    // A busy loop that never calls the host, alone, then under a 500m limit: the share of a
    // core the limit leaves it.
    let spin = runtime.load(&std::fs::read(flotilla_examples::P1_SPIN)?)?;
    let window = std::time::Duration::from_secs(3);
    let free = flotilla_benches::wasm::spin_rounds(&runtime, &spin, None, window, 1_000_000).await?;
    let limited = flotilla_benches::wasm::spin_rounds(&runtime, &spin, Some(0.5), window, 1_000_000).await?;
    report.add("busy loop under a 500m limit: share of a core", "cores", limited as f64 / free as f64, None);
    report.publish()?;
    Ok(())
}
