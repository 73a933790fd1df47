//! Memory and CPU limits of one container.

use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, UpdateDeadline};

use crate::EPOCH_TICK;

/// Caps a guest's linear memory at `resources.limits.memory`, and remembers that the guest hit
/// the cap so that its end is reported as `OOMKilled`, as a container killed by the kernel's
/// OOM killer is upstream. Guards the node against a guest that allocates without end.
#[derive(Debug)]
pub(crate) struct MemoryLimit {
    limit: Option<usize>,
    pub(crate) exceeded: Option<usize>,
}

impl MemoryLimit {
    pub(crate) fn new(limit: Option<u64>) -> MemoryLimit {
        MemoryLimit { limit: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)), exceeded: None }
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // The pool's slot size is a cap too: past it the guest is out of memory just the same.
        let cap = match (self.limit, maximum) {
            (Some(limit), Some(max)) => Some(limit.min(max)),
            (limit, max) => limit.or(max),
        };
        match cap {
            Some(cap) if desired > cap => {
                self.exceeded = Some(desired);
                wasmtime::bail!("memory limit exceeded: the guest asked for {desired} bytes, its limit is {cap}")
            }
            _ => Ok(true),
        }
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
}
