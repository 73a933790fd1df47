//! The kubelet's Summary API (`/stats/summary`, `k8s.io/kubelet/pkg/apis/stats/v1alpha1`), as
//! far as the resource metrics go: what a node measured of itself and of each pod's containers.
//! A node serves it; the API server reads it for `metrics.k8s.io`. Fields a node does not
//! measure are left out, as the kubelet leaves them out. Times carry fractions of a second
//! (Go's RFC 3339 parser reads them), so that a rate over a short window is exact.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::{Deserialize, Serialize};

/// A `wasi:http` container's requests being served: the name of its gauge among the
/// container's `userDefinedMetrics`, and of the custom metric served from it (the average in
/// flight between two readings, from [`REQUESTS_IN_FLIGHT_SECONDS`]).
pub const REQUESTS_IN_FLIGHT: &str = "requests_in_flight";
/// The custom metric of the requests a pod or a Service serves per second, from
/// [`REQUESTS_TOTAL`].
pub const REQUESTS_PER_SECOND: &str = "requests_per_second";
/// The time its requests have spent in flight, in all: cumulative, in seconds. Its change over
/// a window is the average number in flight over that window.
pub const REQUESTS_IN_FLIGHT_SECONDS: &str = "requests_in_flight_seconds";
/// Its requests received since it started: the cumulative count the request rate
/// (`requests_per_second`) is computed from.
pub const REQUESTS_TOTAL: &str = "requests_total";
/// The reason of the Event a node writes on a Service when it holds requests for it while it
/// has no endpoint (its workload is at zero): the HPA that scales the workload from zero wakes
/// on it rather than at its next sync.
pub const ACTIVATING: &str = "Activating";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    /// Since when `cpu.usageCoreNanoSeconds` counts: the machine's boot.
    pub start_time: MicroTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// A metric of a container's own (the kubelet's `UserDefinedMetric`, its descriptor inline).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDefinedMetric {
    pub name: String,
    /// `gauge`, `cumulative` or `delta`.
    #[serde(rename = "type")]
    pub type_: String,
    pub units: String,
    pub time: MicroTime,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub start_time: MicroTime,
    pub containers: Vec<ContainerStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    /// When the container's current run started: its CPU time counts from there.
    pub start_time: MicroTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// Metrics the container's workload defines: on Flotilla, a `wasi:http` component's
    /// request counts (`requests_in_flight`, a gauge; `requests_total` and
    /// `requests_in_flight_seconds`, cumulative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_defined_metrics: Vec<UserDefinedMetric>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: MicroTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// CPU time used since `startTime`, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: MicroTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// The memory that cannot be reclaimed under pressure: what `kubectl top` shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// A node's connections held for Services that scale up from zero (`/stats/held`, Flotilla's
/// own: the Summary knows no Services). The API server counts them among the Service's
/// requests in flight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub services: Vec<HeldService>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldService {
    pub namespace: String,
    pub name: String,
    pub requests: u64,
}
