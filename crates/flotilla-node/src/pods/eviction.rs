//! The kubelet's eviction manager, for memory: every second it measures what is available,
//! and below the hard threshold (`memory.available<100Mi`) it evicts one pod, chosen as
//! upstream's `rankMemoryPressure` chooses, so that the node and its other pods live.
//!
//! Two measures of what is available, the smaller counting: the host's `MemAvailable` (the
//! whole machine, whatever else runs on it), and what the node's pods may still take before
//! they together reach capacity less what is reserved (which their memory pool also enforces,
//! as the `kubepods` cgroup does upstream, with an out-of-memory kill). Evicting at the
//! threshold keeps pods out of that kill, and a pod that overran its request pays first.

use std::cmp::Reverse;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_api::quantity;

use super::PodEntry;
use super::worker::RunEvent;
use crate::Node;

/// How often memory is measured (the kubelet's housekeeping is every 10 s; a guest can grow
/// by hundreds of MiB in that time, so this is quicker).
const MONITORING_INTERVAL: Duration = Duration::from_secs(1);

/// Upstream's `SystemCriticalPriority`: pods at or above it are never evicted.
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// A pod that could be evicted, as the ranking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    priority: i32,
    /// Bytes its containers hold now, and what each requests, by container.
    containers: Vec<ContainerMemory>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerMemory {
    name: String,
    usage: u64,
    request: u64,
}

impl Candidate {
    fn of(entry: &PodEntry) -> Candidate {
        let usage = entry.usage.lock().expect("pod entry lock");
        let containers = entry
            .memory_requests
            .iter()
            .map(|(name, request)| ContainerMemory {
                name: name.clone(),
                usage: usage.get(name).map_or(0, |usage| usage.meter.memory()),
                request: *request,
            })
            .collect();
        Candidate { priority: entry.priority, containers }
    }

    fn usage(&self) -> u64 {
        self.containers.iter().map(|c| c.usage).sum()
    }

    fn request(&self) -> u64 {
        self.containers.iter().map(|c| c.request).sum()
    }
}

/// The pod to evict first, as `rankMemoryPressure` orders them: pods using more than they
/// request before those within it, then lower priority first, then the largest overrun. A
/// pod that holds nothing frees nothing and is passed over, as is a critical one.
fn choose(candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.usage() > 0 && c.priority < SYSTEM_CRITICAL_PRIORITY)
        .min_by_key(|(_, c)| {
            let overrun = i128::from(c.usage()) - i128::from(c.request());
            (overrun <= 0, c.priority, Reverse(overrun))
        })
        .map(|(i, _)| i)
}

/// Upstream's eviction message (`evictionMessage`), naming each container that used more
/// than it requested.
fn message(threshold: u64, available: u64, victim: &Candidate) -> String {
    let mut message = format!(
        "The node was low on resource: memory. Threshold quantity: {}, available: {}. ",
        quantity::bytes(threshold),
        quantity::bytes(available)
    );
    for container in victim.containers.iter().filter(|c| c.usage > c.request) {
        message += &format!(
            "Container {} was using {}, request is {}, has larger consumption of memory. ",
            container.name,
            quantity::bytes(container.usage),
            quantity::bytes(container.request)
        );
    }
    message
}

/// Memory available now: the smaller of the host's and what the pods' pool has left.
fn available(node: &Node) -> u64 {
    let host = crate::node::meminfo("MemAvailable:").unwrap_or(u64::MAX);
    let pool = node.memory.limit().unwrap_or(u64::MAX).saturating_sub(node.memory.used() as u64);
    host.min(pool)
}

/// Measures memory every second until the agent stops; sets the node's `MemoryPressure` while
/// the threshold was met within the transition period, and evicts one pod each time it is met.
pub(crate) async fn run(node: Arc<Node>) {
    let threshold = node.config.eviction_memory_available;
    let mut last_met: Option<Instant> = None;
    let mut ticks = tokio::time::interval(MONITORING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let available = available(&node);
        let met = available < threshold;
        if met {
            last_met = Some(Instant::now());
        }
        // The condition stays a while after the threshold is last met, so that it does not
        // flap (`--eviction-pressure-transition-period`).
        let pressure = last_met.is_some_and(|at| at.elapsed() < node.config.eviction_pressure_transition_period);
        if node.memory_pressure.swap(pressure, Ordering::Relaxed) != pressure {
            tracing::warn!(pressure, available, threshold, "the node's memory pressure changed");
        }
        if !met {
            continue;
        }
        let entries = node.pods.all();
        let candidates: Vec<Candidate> = entries.iter().map(|e| Candidate::of(e)).collect();
        let Some(chosen) = choose(&candidates) else {
            tracing::warn!(available, threshold, "the node is low on memory and no pod can be evicted to free some");
            continue;
        };
        let message = message(threshold, available, &candidates[chosen]);
        tracing::warn!(pod = entries[chosen].uid, %message, "evicting a pod");
        let _ = entries[chosen].worker.send(RunEvent::Evict { message });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(priority: i32, containers: &[(u64, u64)]) -> Candidate {
        let containers = containers
            .iter()
            .enumerate()
            .map(|(i, (usage, request))| ContainerMemory { name: format!("c{i}"), usage: *usage, request: *request })
            .collect();
        Candidate { priority, containers }
    }

    #[test]
    fn pods_over_their_requests_go_first_then_low_priority_then_the_largest_overrun() {
        const MI: u64 = 1 << 20;
        let within = pod(0, &[(100 * MI, 200 * MI)]);
        let over_small = pod(0, &[(60 * MI, 50 * MI)]);
        let over_large = pod(0, &[(300 * MI, 0)]);
        let over_important = pod(1000, &[(900 * MI, 0)]);
        assert_eq!(choose(&[within.clone(), over_small.clone(), over_large.clone()]), Some(2));
        assert_eq!(choose(&[within.clone(), over_small.clone()]), Some(1), "within its request: last");
        assert_eq!(choose(&[over_important.clone(), over_small.clone()]), Some(1), "lower priority first");
        assert_eq!(choose(&[over_important.clone(), within.clone()]), Some(0), "over its request before priority");
        let idle = pod(-5, &[(0, 0)]);
        let critical = pod(SYSTEM_CRITICAL_PRIORITY, &[(900 * MI, 0)]);
        assert_eq!(choose(&[idle, critical]), None, "nothing to free, or a critical pod");
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn the_message_is_upstreams() {
        let victim = Candidate {
            priority: 0,
            containers: vec![
                ContainerMemory { name: "hog".into(), usage: 230 << 20, request: 0 },
                ContainerMemory { name: "quiet".into(), usage: 1 << 20, request: 16 << 20 },
            ],
        };
        assert_eq!(
            message(100 << 20, 81_908 << 10, &victim),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 81908Ki. \
             Container hog was using 230Mi, request is 0, has larger consumption of memory. "
        );
    }
}
