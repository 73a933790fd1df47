//! The wasm PodRuntime: runs WASI p1 core modules (`_start`, from `wasm32-wasip1`) and WASI p2
//! components (`wasi:cli/run`, from `wasm32-wasip2`) as the containers of pods.
//!
//! One [`Runtime`] per node holds one `wasmtime::Engine` with the pooling allocator and
//! copy-on-write memory images, so that an instance of a loaded module starts in microseconds.
//! [`Runtime::load`] compiles a module once (or reads its compiled form from the on-disk cache,
//! keyed by the module's SHA-256 digest and the engine's fingerprint) and keeps one
//! `InstancePre` per module; [`Runtime::run`] instantiates it for one container with exactly the
//! args, env, directories and output the pod spec grants (deny by default), under its memory and
//! CPU limits, and reports how it ended as an [`Exit`].

mod cluster;
mod egress;
mod http;
mod limits;
mod output;
mod program;
mod run;
mod sockets;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use crate::egress::Egress;
pub use crate::http::{DEFAULT_HTTP_CONCURRENCY, Requests};
pub use crate::limits::{CpuTime, MemoryPool};
pub use crate::output::{OutputSink, Stream};
pub use crate::program::{LoadError, Program, ProgramKind, digest, validate};
pub use crate::run::{ContainerSpec, Exit, Frontends, Names, Network, Pick, PodNetwork, Preopen, Protocol, Terminate};

/// How often the engine's epoch advances: the CPU time slice. A guest that computes without
/// calling the host is interrupted at the next tick, yields to the other tasks of the node
/// (and, under a CPU limit, sleeps off its excess), so no guest can hold a thread longer.
/// `wasmtime serve` uses 50 ms; 10 ms keeps a busy pod from delaying its neighbours noticeably.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a node's runtime is sized for.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances that may exist at once (the pool's slots): one per running container.
    /// Each slot reserves `memory_reservation` of virtual address space, never of RAM.
    pub instance_slots: u32,
    /// Virtual address space reserved per linear memory, and so the largest memory a guest can
    /// have. At 4 GiB the compiled code needs no bounds checks on 32-bit memories.
    pub memory_reservation: u64,
    /// Where compiled modules are kept across restarts.
    pub cache_dir: PathBuf,
}

impl RuntimeConfig {
    /// The defaults of a node: 10,000 slots of 4 GiB (40 TiB of the 128 TiB address space).
    pub fn new(cache_dir: PathBuf) -> RuntimeConfig {
        RuntimeConfig { instance_slots: 10_000, memory_reservation: 4 << 30, cache_dir }
    }
}

/// Why a runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(String);

/// A node's wasm runtime. Cheap to share behind an `Arc`; dropping it stops the epoch clock.
#[derive(Debug)]
pub struct Runtime {
    engine: Engine,
    programs: program::Programs,
    /// An empty directory, preopened read-only to reserve descriptor numbers (see `sockets`).
    empty_dir: PathBuf,
    /// Held for its `Drop`, which stops the clock.
    _clock: EpochClock,
}

impl Runtime {
    /// Builds the engine and starts its epoch clock. Fails where the pool cannot be reserved
    /// (too little address space for the slots asked for) or the cache directory is unusable.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_memories(config.instance_slots)
            .total_tables(config.instance_slots)
            .total_stacks(config.instance_slots)
            .total_core_instances(config.instance_slots)
            .total_component_instances(config.instance_slots)
            .max_memory_size(usize::try_from(config.memory_reservation).unwrap_or(usize::MAX));
        let mut wasm = Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(true)
            .memory_reservation(config.memory_reservation)
            .epoch_interruption(true)
            .wasm_component_model(true);
        let engine = Engine::new(&wasm).map_err(|err| RuntimeError(format!("creating the wasm engine: {err:#}")))?;
        std::fs::create_dir_all(&config.cache_dir)
            .map_err(|err| RuntimeError(format!("creating {}: {err}", config.cache_dir.display())))?;
        let empty_dir = config.cache_dir.join("empty");
        std::fs::create_dir_all(&empty_dir)
            .map_err(|err| RuntimeError(format!("creating {}: {err}", empty_dir.display())))?;
        let programs = program::Programs::new(&engine, config.cache_dir)
            .map_err(|err| RuntimeError(format!("linking WASI: {err:#}")))?;
        let clock = EpochClock::start(engine.clone());
        Ok(Runtime { engine, programs, empty_dir, _clock: clock })
    }

    /// The program for a module's bytes: from memory if loaded before, else from the compiled
    /// cache on disk, else compiled now (and cached). Fails with what is wrong with the module.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<Program>, LoadError> {
        self.programs.load(&self.engine, wasm)
    }

    /// The program already loaded from the module with `digest` (`sha256:<hex>`), if any: a
    /// node that knows a module's digest starts its containers without reading it again.
    pub fn loaded(&self, digest: &str) -> Option<Arc<Program>> {
        self.programs.loaded(digest)
    }

    /// Runs one container of `program` to its end. Dropping the future kills the guest at its
    /// next host call or epoch tick.
    pub async fn run(&self, program: &Program, spec: ContainerSpec) -> Exit {
        run::run(&self.engine, program, spec, &self.empty_dir).await
    }

    /// The wasmtime version this runtime embeds, as a node reports it (`wasmtime://<version>`).
    /// Kept equal to the exact pin of `wasmtime` in the workspace's `Cargo.toml`.
    pub const VERSION: &'static str = "48.0.8";
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
#[derive(Debug)]
struct EpochClock {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochClock {
    fn start(engine: Engine) -> EpochClock {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochClock { stop, thread: Some(thread) }
    }
}

impl Drop for EpochClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
