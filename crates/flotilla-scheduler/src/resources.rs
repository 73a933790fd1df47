//! What a pod asks for and what a node offers, in the units the scheduler compares: millicores,
//! bytes and pod slots.

use std::collections::BTreeMap;
use std::ops::{Add, Sub};

use k8s_openapi::api::core::v1::{Node, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What upstream's scorers count for a container that requests nothing, so that pods without
/// requests still spread (`DefaultMilliCPURequest`, `DefaultMemoryRequest`).
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu + other.milli_cpu,
            memory: self.memory + other.memory,
            pods: self.pods + other.pods,
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu - other.milli_cpu,
            memory: self.memory - other.memory,
            pods: self.pods - other.pods,
        }
    }
}

/// `(requests, requests with upstream's non-zero defaults for scoring)` of a pod, plus its
/// overhead, as upstream computes `PodRequests`: the larger of what runs once it is initialized
/// (its containers and its sidecars) and the most that runs while it initializes (an init
/// container beside the sidecars before it).
pub fn pod_requests(spec: &PodSpec) -> (Resources, Resources) {
    let of = |requests: Option<&BTreeMap<String, Quantity>>, non_zero: bool| {
        let value = |name: &str, scale: i128| {
            requests.and_then(|r| r.get(name)).and_then(|q| flotilla_api::quantity::parse(&q.0).ok()).map(|nanos| {
                // Rounded up, as upstream's `MilliValue`/`Value` do.
                ((nanos + scale - 1) / scale) as i64
            })
        };
        let cpu = value("cpu", 1_000_000);
        let memory = value("memory", 1_000_000_000);
        // A request left out is scored as upstream's default; one of 0 is 0, as upstream's
        // `GetNonzeroRequestForResource` overrides only what is unset.
        if non_zero {
            Resources { milli_cpu: cpu.unwrap_or(DEFAULT_MILLI_CPU), memory: memory.unwrap_or(DEFAULT_MEMORY), pods: 0 }
        } else {
            Resources { milli_cpu: cpu.unwrap_or(0), memory: memory.unwrap_or(0), pods: 0 }
        }
    };
    let mut totals = [Resources::default(); 2];
    for (total, non_zero) in totals.iter_mut().zip([false, true]) {
        let sum = spec
            .containers
            .iter()
            .map(|c| of(c.resources.as_ref().and_then(|r| r.requests.as_ref()), non_zero))
            .fold(Resources::default(), Add::add);
        let (mut sidecars, mut init) = (Resources::default(), Resources::default());
        for container in spec.init_containers.iter().flatten() {
            let r = of(container.resources.as_ref().and_then(|r| r.requests.as_ref()), non_zero);
            // A sidecar runs on beside all that follows it.
            let sidecar = container.restart_policy.as_deref() == Some("Always");
            if sidecar {
                sidecars = sidecars + r;
            }
            let running = if sidecar { sidecars } else { sidecars + r };
            init = Resources {
                milli_cpu: init.milli_cpu.max(running.milli_cpu),
                memory: init.memory.max(running.memory),
                pods: 0,
            };
        }
        let sum = sum + sidecars;
        let overhead = of(spec.overhead.as_ref(), false);
        *total = Resources {
            milli_cpu: sum.milli_cpu.max(init.milli_cpu) + overhead.milli_cpu,
            memory: sum.memory.max(init.memory) + overhead.memory,
            pods: 1,
        };
    }
    (totals[0], totals[1])
}

/// A node's `status.allocatable` (its capacity when allocatable is missing).
pub fn allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    let map = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    let value = |name: &str, scale: i128| {
        map.and_then(|m| m.get(name))
            .and_then(|q| flotilla_api::quantity::parse(&q.0).ok())
            .map_or(0, |nanos| (nanos / scale) as i64)
    };
    Resources {
        milli_cpu: value("cpu", 1_000_000),
        memory: value("memory", 1_000_000_000),
        pods: value("pods", 1_000_000_000),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "10Mi"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m"}}},
            ],
        }}))
        .unwrap();
        let (requests, non_zero) = pod_requests(pod.spec.as_ref().unwrap());
        assert_eq!(requests, Resources { milli_cpu: 2000, memory: 64 << 20, pods: 1 });
        // `b` asks for no memory: scored as 200Mi.
        assert_eq!(non_zero, Resources { milli_cpu: 2000, memory: (64 << 20) + (200 << 20), pods: 1 });
    }

    #[test]
    fn sidecars_count_beside_what_follows_them() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "1", "memory": "100Mi"}}},
                {"name": "migrate", "resources": {"requests": {"cpu": "2", "memory": "10Mi"}}},
            ],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}],
        }}))
        .unwrap();
        // While `migrate` runs, 3 CPUs; then 1.5 CPUs and 164Mi.
        let (requests, _) = pod_requests(pod.spec.as_ref().unwrap());
        assert_eq!(requests, Resources { milli_cpu: 3000, memory: 164 << 20, pods: 1 });
    }

    #[test]
    fn a_request_of_zero_is_scored_as_zero_and_one_left_out_as_the_default() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "0"}}}],
        }}))
        .unwrap();
        let (_, non_zero) = pod_requests(pod.spec.as_ref().unwrap());
        assert_eq!(non_zero, Resources { milli_cpu: 0, memory: DEFAULT_MEMORY, pods: 1 });
    }
}
