//! What the node measures of itself and of its pods' containers, served as the kubelet's
//! Summary API (`/stats/summary`), which the API server reads for the resource metrics
//! (`kubectl top`, the HPA). A container's CPU time is what the runtime counted of its
//! instances' polls, its working set the linear memory they hold; the node's are the
//! machine's, from `/proc` (CPU time since boot, memory in use less what the kernel can
//! reclaim), as the kubelet reports its root cgroup.

use flotilla_api::stats::{
    ContainerStats, CpuStats, MemoryStats, NodeStats, PodReference, PodStats, Summary, UserDefinedMetric,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::Node;

/// What a Summary holds: everything, or only the request counts of the containers that count
/// them (`?only_requests=true`, Flotilla's, as the kubelet has `?only_cpu_and_memory=true`),
/// which the API server reads every second for request-driven scaling: cheap to take, and small
/// on a node of thousands of pods that serve no HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Only {
    Everything,
    Requests,
}

/// The node's and its pods' usage now. Reads `/proc` (not for [`Only::Requests`]): call it off
/// the async threads.
pub(crate) fn summary(node: &Node, only: Only) -> Summary {
    let now = Timestamp::now();
    let everything = only == Only::Everything;
    let machine = if everything { Machine::read() } else { Machine { booted: None, cpu_nanos: None, memory: None } };
    let pods = node
        .pods
        .all()
        .iter()
        .filter_map(|pod| {
            let usage = pod.usage.lock().expect("pod entry lock");
            let containers: Vec<ContainerStats> = usage
                .iter()
                .filter(|(_, usage)| everything || usage.requests.counted())
                .map(|(name, usage)| ContainerStats {
                    name: name.clone(),
                    start_time: MicroTime(usage.started),
                    cpu: everything.then(|| cpu(now, usage.meter.cpu().as_nanos())),
                    memory: everything.then(|| memory(now, usage.meter.memory())),
                    user_defined_metrics: requests(now, &usage.requests),
                })
                .collect();
            if containers.is_empty() && !everything {
                return None;
            }
            let total_cpu = containers.iter().filter_map(|c| c.cpu.as_ref()?.usage_core_nano_seconds).sum::<u64>();
            let total_memory = containers.iter().filter_map(|c| c.memory.as_ref()?.working_set_bytes).sum::<u64>();
            Some(PodStats {
                pod_ref: PodReference {
                    name: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    uid: pod.uid.clone(),
                },
                start_time: MicroTime(pod.started),
                containers,
                cpu: everything.then(|| cpu(now, u128::from(total_cpu))),
                memory: everything.then(|| memory(now, total_memory)),
            })
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

/// A container's request counts, if it serves HTTP here.
fn requests(now: Timestamp, requests: &flotilla_wasm::Requests) -> Vec<UserDefinedMetric> {
    if !requests.counted() {
        return Vec::new();
    }
    let (in_flight, total, busy) = requests.read();
    let metric = |name: &str, type_: &str, units: &str, value: f64| UserDefinedMetric {
        name: name.into(),
        type_: type_.into(),
        units: units.into(),
        time: MicroTime(now),
        value,
    };
    use flotilla_api::stats::{REQUESTS_IN_FLIGHT, REQUESTS_IN_FLIGHT_SECONDS, REQUESTS_TOTAL};
    vec![
        metric(REQUESTS_IN_FLIGHT, "gauge", "requests", in_flight as f64),
        metric(REQUESTS_TOTAL, "cumulative", "requests", total as f64),
        metric(REQUESTS_IN_FLIGHT_SECONDS, "cumulative", "seconds", busy.as_secs_f64()),
    ]
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

/// The summary as the kubelet's `/metrics/resource` writes it (Prometheus text 0.0.4): what
/// metrics-server, or Prometheus, scrapes from a node. The same names and labels as upstream's;
/// no sample carries a timestamp (a scraper takes its own time).
pub(crate) fn resource_metrics(summary: &Summary) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ResourceMetrics(summary.clone())));
    let mut text = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

#[derive(Debug)]
struct ResourceMetrics(Summary);

impl Collector for ResourceMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let seconds =
            |cpu: &Option<CpuStats>| cpu.as_ref().and_then(|c| c.usage_core_nano_seconds).map(|n| n as f64 / 1e9);
        let bytes = |memory: &Option<MemoryStats>| memory.as_ref().and_then(|m| m.working_set_bytes).map(|b| b as i64);
        let node = &self.0.node;
        if let Some(cpu) = seconds(&node.cpu) {
            let help = "[STABLE] Cumulative cpu time consumed by the node in core-seconds";
            let family = encoder.encode_descriptor("node_cpu_usage_seconds", help, None, MetricType::Counter)?;
            ConstCounter::new(cpu).encode(family)?;
        }
        if let Some(memory) = bytes(&node.memory) {
            let help = "[STABLE] Current working set of the node in bytes";
            let family = encoder.encode_descriptor("node_memory_working_set_bytes", help, None, MetricType::Gauge)?;
            ConstGauge::new(memory).encode(family)?;
        }
        let pods = &self.0.pods;
        let pod = |p: &PodStats| [("namespace", p.pod_ref.namespace.clone()), ("pod", p.pod_ref.name.clone())];
        let container = |p: &PodStats, c: &ContainerStats| {
            [("container", c.name.clone()), ("namespace", p.pod_ref.namespace.clone()), ("pod", p.pod_ref.name.clone())]
        };
        let help = "[STABLE] Cumulative cpu time consumed by the container in core-seconds";
        let mut family = encoder.encode_descriptor("container_cpu_usage_seconds", help, None, MetricType::Counter)?;
        for (p, c) in pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c))) {
            if let Some(cpu) = seconds(&c.cpu) {
                ConstCounter::new(cpu).encode(family.encode_family(&container(p, c))?)?;
            }
        }
        let help = "[STABLE] Current working set of the container in bytes";
        let mut family =
            encoder.encode_descriptor("container_memory_working_set_bytes", help, None, MetricType::Gauge)?;
        for (p, c) in pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c))) {
            if let Some(memory) = bytes(&c.memory) {
                ConstGauge::new(memory).encode(family.encode_family(&container(p, c))?)?;
            }
        }
        let help = "[STABLE] Start time of the container since unix epoch in seconds";
        let mut family = encoder.encode_descriptor("container_start_time_seconds", help, None, MetricType::Gauge)?;
        for (p, c) in pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c))) {
            let started = c.start_time.0.as_nanosecond() as f64 / 1e9;
            ConstGauge::new(started).encode(family.encode_family(&container(p, c))?)?;
        }
        let help = "[STABLE] Cumulative cpu time consumed by the pod in core-seconds";
        let mut family = encoder.encode_descriptor("pod_cpu_usage_seconds", help, None, MetricType::Counter)?;
        for p in pods {
            if let Some(cpu) = seconds(&p.cpu) {
                ConstCounter::new(cpu).encode(family.encode_family(&pod(p))?)?;
            }
        }
        let help = "[STABLE] Current working set of the pod in bytes";
        let mut family = encoder.encode_descriptor("pod_memory_working_set_bytes", help, None, MetricType::Gauge)?;
        for p in pods {
            if let Some(memory) = bytes(&p.memory) {
                ConstGauge::new(memory).encode(family.encode_family(&pod(p))?)?;
            }
        }
        let help = "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise";
        let family = encoder.encode_descriptor("resource_scrape_error", help, None, MetricType::Gauge)?;
        ConstGauge::new(0i64).encode(family)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_metrics_are_written_as_the_kubelet_writes_them() {
        let at = |secs: i64| MicroTime(Timestamp::from_second(secs).unwrap());
        let cpu =
            |nanos: u64| Some(CpuStats { time: at(100), usage_nano_cores: None, usage_core_nano_seconds: Some(nanos) });
        let memory = |bytes: u64| Some(memory(at(100).0, bytes));
        let summary = Summary {
            node: NodeStats {
                node_name: "n1".into(),
                start_time: at(0),
                cpu: cpu(2_500_000_000),
                memory: memory(4096),
            },
            pods: vec![PodStats {
                pod_ref: PodReference { name: "web".into(), namespace: "default".into(), uid: "u".into() },
                start_time: at(10),
                containers: vec![ContainerStats {
                    name: "app".into(),
                    start_time: at(20),
                    cpu: cpu(500_000_000),
                    memory: memory(1024),
                    user_defined_metrics: Vec::new(),
                }],
                cpu: cpu(500_000_000),
                memory: memory(1024),
            }],
        };
        let text = resource_metrics(&summary);
        for line in [
            "# TYPE node_cpu_usage_seconds_total counter",
            "node_cpu_usage_seconds_total 2.5",
            "node_memory_working_set_bytes 4096",
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 0.5",
            "container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 1024",
            "container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 20.0",
            "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 0.5",
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 1024",
            "resource_scrape_error 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }

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
