//! Memory and CPU limits of one container.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, UpdateDeadline};

use crate::EPOCH_TICK;

/// The memory a container's instances hold together, against `resources.limits.memory`: one
/// instance for a module or a command; for a `wasi:http` component, every request's instance
/// at once, as a container's processes share its limit upstream. Without it, a burst of
/// requests would each take the whole limit, and together the node.
///
/// A pool may sit within a larger one, as a container's cgroup sits within its node's
/// `kubepods` cgroup: the node's pool bounds what all its guests hold together, whatever
/// their own limits say.
#[derive(Debug)]
pub struct MemoryPool {
    limit: Option<usize>,
    used: AtomicUsize,
    parent: Option<Arc<MemoryPool>>,
}

impl MemoryPool {
    /// A pool of `limit` bytes (`None`: unbounded but for the instances' slots).
    pub fn new(limit: Option<u64>) -> Arc<MemoryPool> {
        MemoryPool::build(limit, None)
    }

    /// A pool of `limit` bytes whose every byte is also taken from `parent`.
    pub fn within(parent: &Arc<MemoryPool>, limit: Option<u64>) -> Arc<MemoryPool> {
        MemoryPool::build(limit, Some(parent.clone()))
    }

    fn build(limit: Option<u64>, parent: Option<Arc<MemoryPool>>) -> Arc<MemoryPool> {
        Arc::new(MemoryPool {
            limit: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            used: AtomicUsize::new(0),
            parent,
        })
    }

    /// Takes `bytes` more for an instance, if this pool and those it sits within allow them;
    /// otherwise the pool that refused.
    fn take(&self, bytes: usize) -> Result<(), &MemoryPool> {
        let limit = self.limit.unwrap_or(usize::MAX);
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok();
        if !taken {
            return Err(self);
        }
        if let Some(parent) = &self.parent
            && let Err(refused) = parent.take(bytes)
        {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return Err(refused);
        }
        Ok(())
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.give_back(bytes);
        }
    }

    /// Bytes the container's instances hold now: its working set, as far as guests go.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The container's limit, in bytes.
    pub fn limit(&self) -> Option<u64> {
        self.limit.map(|l| l as u64)
    }
}

/// The CPU time a container's instances have used, which the node reports (`kubectl top`, the
/// HPA): the thread time of every poll of their futures. Time a guest waits (a sleep, a read
/// not yet ready) does not count; time the host spends on its behalf within a call does, as it
/// would count against the container's cgroup upstream.
#[derive(Debug, Default)]
pub struct CpuTime {
    nanos: AtomicU64,
}

impl CpuTime {
    pub fn new() -> Arc<CpuTime> {
        Arc::default()
    }

    /// What the container's instances have used since it started.
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// `future`, the thread time of each of its polls added to `cpu`.
pub(crate) async fn metered<F: Future>(cpu: &CpuTime, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let before = thread_time();
        let polled = future.as_mut().poll(cx);
        let spent = thread_time().saturating_sub(before);
        cpu.nanos.fetch_add(u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        polled
    })
    .await
}

/// This thread's CPU time so far.
fn thread_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(now.tv_sec).unwrap_or_default(), u32::try_from(now.tv_nsec).unwrap_or_default())
}

/// One instance's share of its container's [`MemoryPool`]; it remembers that the guest hit the
/// limit so that its end is reported as `OOMKilled`, as a container killed by the kernel's OOM
/// killer is upstream. Guards the node against a guest that allocates without end. What the
/// instance held goes back to the pool when it is dropped.
#[derive(Debug)]
pub(crate) struct MemoryLimit {
    pool: Arc<MemoryPool>,
    /// Linear memory this instance took from the pool.
    held: usize,
    pub(crate) exceeded: Option<usize>,
}

impl MemoryLimit {
    /// An instance drawing on `pool` with the other instances of its container.
    pub(crate) fn sharing(pool: Arc<MemoryPool>) -> MemoryLimit {
        MemoryLimit { pool, held: 0, exceeded: None }
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        self.pool.give_back(self.held);
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // The pool's slot size is a cap too: past it the guest is out of memory just the same.
        let over_slot = maximum.is_some_and(|max| desired > max);
        let more = desired.saturating_sub(current);
        let refused = if over_slot { Some(self.pool.as_ref()) } else { self.pool.take(more).err() };
        if let Some(refused) = refused {
            self.exceeded = Some(desired);
            let limit = refused.limit.map_or("none".into(), |l| l.to_string());
            let used = refused.used();
            if std::ptr::eq(refused, self.pool.as_ref()) {
                wasmtime::bail!(
                    "memory limit exceeded: the guest asked for {desired} bytes, its container's limit is {limit} and its instances hold {used} already"
                )
            }
            wasmtime::bail!(
                "memory limit exceeded: the guest asked for {desired} bytes, the node's pods may hold {limit} together and hold {used} already"
            )
        }
        self.held += more;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

/// Decides, at every epoch tick, how long a guest that has been computing must pause so that
/// it gets no more than `resources.limits.cpu` of a core. A guest without a limit still yields
/// at every tick, so that it never holds a thread the agent and other pods need.
///
/// The accounting is by wall-clock time between resumptions, capped at one tick so that time
/// a guest spent blocked in a host call (a sleep, a read) never counts as computing.
#[derive(Debug)]
pub(crate) struct CpuLimit {
    /// Cores, e.g. 0.5 for `500m`; `None` for no limit.
    share: Option<f64>,
    resumed: Instant,
}

impl CpuLimit {
    pub(crate) fn new(share: Option<f64>) -> CpuLimit {
        CpuLimit { share: share.filter(|s| *s > 0.0 && *s < 1.0), resumed: Instant::now() }
    }

    pub(crate) fn on_tick(&mut self) -> UpdateDeadline {
        match self.pause(Instant::now()) {
            Some(pause) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause))),
            None => UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())),
        }
    }

    /// How long to pause at a tick at `now`; `None` when the guest has no limit.
    fn pause(&mut self, now: Instant) -> Option<Duration> {
        let Some(share) = self.share else {
            self.resumed = now;
            return None;
        };
        let ran = now.saturating_duration_since(self.resumed).min(EPOCH_TICK);
        let pause = ran.mul_f64((1.0 - share) / share);
        self.resumed = now + pause;
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_guest_pauses_in_proportion_to_its_share() {
        let start = Instant::now();
        let mut half = CpuLimit { share: Some(0.5), resumed: start };
        // Computing for a whole tick earns an equal pause at 500m …
        assert_eq!(half.pause(start + EPOCH_TICK), Some(EPOCH_TICK));
        // … and the next tick counts from the end of that pause.
        assert_eq!(half.pause(start + 3 * EPOCH_TICK), Some(EPOCH_TICK));
        let mut tenth = CpuLimit { share: Some(0.1), resumed: start };
        assert_eq!(tenth.pause(start + EPOCH_TICK), Some(9 * EPOCH_TICK));
        // Time blocked in a host call counts as one tick at most.
        let mut blocked = CpuLimit { share: Some(0.5), resumed: start };
        assert_eq!(blocked.pause(start + Duration::from_secs(5)), Some(EPOCH_TICK));
    }

    #[test]
    fn no_limit_or_a_whole_core_never_pauses() {
        for share in [None, Some(1.0), Some(2.5), Some(0.0)] {
            let start = Instant::now();
            assert_eq!(CpuLimit::new(share).pause(start + EPOCH_TICK), None, "{share:?}");
        }
    }

    #[test]
    fn a_containers_instances_share_its_memory_limit() {
        let pool = MemoryPool::new(Some(10 << 20));
        let mut first = MemoryLimit::sharing(pool.clone());
        let mut second = MemoryLimit::sharing(pool.clone());
        assert!(first.memory_growing(0, 6 << 20, None).unwrap());
        assert!(second.memory_growing(0, 6 << 20, None).is_err(), "together they would hold 12 MiB of 10");
        assert_eq!(second.exceeded, Some(6 << 20));
        assert!(second.memory_growing(0, 4 << 20, None).unwrap());
        drop(first);
        assert_eq!(pool.used(), 4 << 20, "what an instance held goes back when it goes");
        let mut third = MemoryLimit::sharing(pool.clone());
        assert!(third.memory_growing(0, 6 << 20, None).unwrap());
        // The instance's slot is a cap of its own.
        assert!(MemoryLimit::sharing(MemoryPool::new(None)).memory_growing(0, 2 << 20, Some(1 << 20)).is_err());
    }

    #[test]
    fn the_node_bounds_its_containers_together() {
        let node = MemoryPool::new(Some(10 << 20));
        let (a, b) = (MemoryPool::within(&node, Some(8 << 20)), MemoryPool::within(&node, None));
        let mut first = MemoryLimit::sharing(a.clone());
        assert!(first.memory_growing(0, 6 << 20, None).unwrap());
        let mut second = MemoryLimit::sharing(b.clone());
        let err = second.memory_growing(0, 6 << 20, None).unwrap_err().to_string();
        assert!(err.contains("the node's pods may hold 10485760 together"), "{err}");
        assert_eq!((b.used(), node.used()), (0, 6 << 20), "a refused growth takes nothing anywhere");
        assert!(first.memory_growing(6 << 20, 9 << 20, None).is_err(), "past the container's own limit");
        assert!(second.memory_growing(0, 4 << 20, None).unwrap());
        drop(first);
        assert_eq!((a.used(), node.used()), (0, 4 << 20));
    }
}
