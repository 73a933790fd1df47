//! The wasm runtime alone, without a node around it: how long a container of a module already
//! loaded (compiled, cached, pre-linked) takes from instantiation to exit, for the `hello`
//! example as a WASI p1 module and as a p2 component, one after another and with many at once.
//!
//! The peers' figures are published ones (BENCHMARKS.md): wasmtime's own ~27 µs for a WASI
//! hello with pooling and `InstancePre`, Spin's 0.5 ms cold start.
//!
//! `cargo bench -p flotilla-benches --bench wasm -- [--runs N] [--concurrency 64]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Parser;
use flotilla_benches::{Report, Samples};
use flotilla_wasm::{ContainerSpec, Exit, OutputSink, Runtime, RuntimeConfig, Stream};

#[derive(Debug, Parser)]
struct Args {
    /// Containers run per scenario.
    #[arg(long, default_value_t = 5000)]
    runs: usize,
    /// Containers in flight at once in the concurrent scenario.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Output is dropped: the benchmark measures the runtime, not a log writer.
struct Discard;

impl OutputSink for Discard {
    fn write(&self, _: Stream, _: &[u8]) {}
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let runtime = Arc::new(Runtime::new(RuntimeConfig::new(dir.path().join("cache")))?);
    let mut report = Report::solo("wasm");
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
    report.publish()?;
    Ok(())
}

/// One container of `program`, instantiation to exit.
async fn run(runtime: &Runtime, program: &flotilla_wasm::Program) -> Result<Duration> {
    let spec = ContainerSpec {
        argv: vec!["hello".into()],
        env: Vec::new(),
        working_dir: None,
        dirs: Vec::new(),
        memory_limit: None,
        cpu_limit: None,
        network: None,
        output: Arc::new(Discard),
    };
    let started = Instant::now();
    let exit = runtime.run(program, spec).await;
    let took = started.elapsed();
    ensure!(exit == Exit::Exited(0), "hello ended {exit:?}");
    Ok(took)
}
