//! Running containers straight on the wasm runtime, as the `wasm` and `node` benchmarks do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use flotilla_wasm::{ContainerSpec, Exit, OutputSink, Program, Runtime, Stream};

/// Output is dropped: what is measured is the runtime, not a log writer.
struct Discard;

impl OutputSink for Discard {
    fn write(&self, _: Stream, _: &[u8]) {}
}

/// One container of `program` (the `hello` example), instantiation to exit.
pub async fn run(runtime: &Runtime, program: &Program) -> Result<Duration> {
    let spec = ContainerSpec {
        argv: vec!["hello".into()],
        env: Vec::new(),
        working_dir: None,
        dirs: Vec::new(),
        memory: flotilla_wasm::MemoryPool::new(None),
        cpu_time: flotilla_wasm::CpuTime::new(),
        requests: flotilla_wasm::Requests::new(),
        terminate: flotilla_wasm::Terminate::new(),
        cpu_limit: None,
        network: None,
        http_concurrency: None,
        output: Arc::new(Discard),
    };
    let started = Instant::now();
    let exit = runtime.run(program, spec).await;
    let took = started.elapsed();
    ensure!(exit == Exit::Exited(0), "hello ended {exit:?}");
    Ok(took)
}

/// Counts the lines a guest prints.
#[derive(Default)]
struct Lines(std::sync::atomic::AtomicU64);

impl OutputSink for Lines {
    fn write(&self, _: Stream, bytes: &[u8]) {
        let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        self.0.fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How many rounds of its busy loop `program` (the `spin` example) computes in `running`
/// under `cpu_limit` cores, counted in units of `report_every` rounds.
pub async fn spin_rounds(
    runtime: &Runtime,
    program: &Program,
    cpu_limit: Option<f64>,
    running: Duration,
    report_every: u64,
) -> Result<u64> {
    let lines = Arc::new(Lines::default());
    let spec = ContainerSpec {
        argv: vec!["spin".into()],
        env: vec![("REPORT_EVERY".into(), report_every.to_string())],
        working_dir: None,
        dirs: Vec::new(),
        memory: flotilla_wasm::MemoryPool::new(None),
        cpu_time: flotilla_wasm::CpuTime::new(),
        requests: flotilla_wasm::Requests::new(),
        terminate: flotilla_wasm::Terminate::new(),
        cpu_limit,
        network: None,
        http_concurrency: None,
        output: lines.clone(),
    };
    let ended = tokio::time::timeout(running, runtime.run(program, spec)).await;
    ensure!(ended.is_err(), "spin ended by itself: {ended:?}");
    Ok(lines.0.load(std::sync::atomic::Ordering::Relaxed) * report_every)
}
