//! What the node measures of itself and of its pods' containers, served as the kubelet's
//! Summary API (`/stats/summary`), which the API server reads for the resource metrics
//! (`kubectl top`, the HPA). A container's CPU time is what the runtime counted of its
//! instances' polls, its working set the linear memory they hold; the node's are the
//! machine's, from `/proc` (CPU time since boot, memory in use less what the kernel can
//! reclaim), as the kubelet reports its root cgroup.

use std::sync::Arc;

use flotilla_api::stats::{ContainerStats, CpuStats, MemoryStats, NodeStats, PodReference, PodStats, Summary};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use crate::Node;

/// The node's and its pods' usage now. Reads `/proc`: call it off the async threads.
pub(crate) fn summary(node: &Node) -> Summary {
    let now = Timestamp::now();
    let machine = Machine::read();
    let pods = node
        .pods
        .all()
        .iter()
        .map(|pod| {
            let usage = pod.usage.lock().expect("pod entry lock");
            let containers: Vec<ContainerStats> = usage
                .iter()
                .map(|(name, usage)| ContainerStats {
                    name: name.clone(),
                    start_time: MicroTime(usage.started),
                    cpu: Some(cpu(now, usage.cpu_time.used().as_nanos())),
                    memory: Some(memory(now, usage.memory.used() as u64)),
                })
                .collect();
            let total_cpu = containers.iter().filter_map(|c| c.cpu.as_ref()?.usage_core_nano_seconds).sum::<u64>();
            let total_memory = containers.iter().filter_map(|c| c.memory.as_ref()?.working_set_bytes).sum::<u64>();
            PodStats {
                pod_ref: PodReference {
                    name: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    uid: pod.uid.clone(),
                },
                start_time: MicroTime(pod.started),
                containers,
                cpu: Some(cpu(now, u128::from(total_cpu))),
                memory: Some(memory(now, total_memory)),
            }
        })
        .collect();
    Summary {
        node: NodeStats {
            node_name: node.config.name.clone(),
            start_time: MicroTime(machine.booted.unwrap_or(Timestamp::UNIX_EPOCH)),
            cpu: machine.cpu_nanos.map(|used| cpu(now, u128::from(used))),
            memory: machine.memory.map(|(total, available)| MemoryStats {
                available_bytes: Some(available),
                usage_bytes: Some(total.saturating_sub(available)),
                ..memory(now, total.saturating_sub(available))
            }),
        },
        pods,
    }
}

fn cpu(now: Timestamp, nanos: u128) -> CpuStats {
    CpuStats {
        time: MicroTime(now),
        usage_nano_cores: None,
        usage_core_nano_seconds: Some(u64::try_from(nanos).unwrap_or(u64::MAX)),
    }
}

fn memory(now: Timestamp, working_set: u64) -> MemoryStats {
    MemoryStats {
        time: MicroTime(now),
        available_bytes: None,
        usage_bytes: Some(working_set),
        working_set_bytes: Some(working_set),
        rss_bytes: Some(working_set),
    }
}

/// The machine's own usage, from `/proc`; what cannot be read is `None`.
struct Machine {
    booted: Option<Timestamp>,
    /// CPU time of every core since boot, idle and I/O wait left out.
    cpu_nanos: Option<u64>,
    /// Total and available memory, in bytes.
    memory: Option<(u64, u64)>,
}

/// The kernel's clock ticks in `/proc/stat` (`USER_HZ`), 100 on every Linux architecture's ABI.
const USER_HZ: u64 = 100;

impl Machine {
    fn read() -> Machine {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine::parse(&stat, &meminfo)
    }

    fn parse(stat: &str, meminfo: &str) -> Machine {
        // The numbers after `key` on its line.
        let field = |text: &str, key: &str| -> Option<Vec<u64>> {
            let line = text.lines().find(|l| l.split_whitespace().next() == Some(key))?;
            Some(line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
        };
        // user nice system idle iowait irq softirq steal …
        let cpu_nanos = field(stat, "cpu").filter(|t| t.len() >= 8).map(|t| {
            let busy = t[0] + t[1] + t[2] + t[5] + t[6] + t[7];
            busy * (1_000_000_000 / USER_HZ)
        });
        let booted = field(stat, "btime")
            .and_then(|t| t.first().copied())
            .and_then(|secs| Timestamp::from_second(i64::try_from(secs).ok()?).ok());
        let kib = |key: &str| field(meminfo, key).and_then(|v| v.first().copied()).map(|k| k * 1024);
        let memory = kib("MemTotal:").zip(kib("MemAvailable:"));
        Machine { booted, cpu_nanos, memory }
    }
}

/// What one container's current run uses: the runtime's accounts of it.
#[derive(Debug, Clone)]
pub(crate) struct ContainerUsage {
    pub memory: Arc<flotilla_wasm::MemoryPool>,
    pub cpu_time: Arc<flotilla_wasm::CpuTime>,
    /// When the run started: its CPU time counts from here.
    pub started: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_read_from_proc_as_the_kernel_writes_it() {
        let stat = "cpu  100 20 30 4000 50 6 7 8 0 0\ncpu0 50 10 15 2000 25 3 3 4 0 0\nbtime 1764900000\n";
        let meminfo = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n";
        let machine = Machine::parse(stat, meminfo);
        // user, nice, system, irq, softirq, steal: 171 ticks of 10 ms.
        assert_eq!(machine.cpu_nanos, Some(1_710_000_000));
        assert_eq!(machine.booted, Timestamp::from_second(1_764_900_000).ok());
        assert_eq!(machine.memory, Some((16_000_000 * 1024, 8_000_000 * 1024)));
        let nothing = Machine::parse("", "");
        assert!(nothing.cpu_nanos.is_none() && nothing.booted.is_none() && nothing.memory.is_none());
    }
}
