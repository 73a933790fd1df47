//! metrics.k8s.io/v1beta1: the resource metrics API (`kubectl top`, the HPA's `Resource`
//! metrics), as metrics-server serves it. Its objects are not stored: the API server computes
//! them from what the nodes measure, and serves `get` and `list` alone.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Kind;
use crate::table::{self, Column};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// What the resource metrics API answers.
pub const VERBS: &[&str] = &["get", "list"];

/// A node's usage: CPU over `window` ending at `timestamp`, memory (its working set) at
/// `timestamp`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    #[serde(default = "node_api_version")]
    pub api_version: String,
    #[serde(default = "node_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub timestamp: Time,
    /// A Go duration (`15.018s`, [`crate::go::duration`]), as upstream writes `metav1.Duration`.
    pub window: String,
    pub usage: BTreeMap<String, Quantity>,
}

/// A pod's usage, by container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    #[serde(default = "pod_api_version")]
    pub api_version: String,
    #[serde(default = "pod_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub timestamp: Time,
    pub window: String,
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerMetrics {
    pub name: String,
    pub usage: BTreeMap<String, Quantity>,
}

fn node_api_version() -> String {
    format!("{GROUP}/{VERSION}")
}
fn node_kind() -> String {
    "NodeMetrics".into()
}
fn pod_api_version() -> String {
    format!("{GROUP}/{VERSION}")
}
fn pod_kind() -> String {
    "PodMetrics".into()
}

macro_rules! metrics_resource {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = VERSION;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

metrics_resource!(NodeMetrics, "NodeMetrics", "nodes", k8s_openapi::ClusterResourceScope);
metrics_resource!(PodMetrics, "PodMetrics", "pods", k8s_openapi::NamespaceResourceScope);

/// metrics-server's columns: `kubectl get nodes.metrics.k8s.io` shows the usage.
fn usage_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::string("CPU", "CPU usage"),
        Column::string("Memory", "Memory usage"),
        Column::string("Window", "Time window of the usage"),
    ]
}

impl Kind for NodeMetrics {
    fn columns() -> Vec<Column> {
        usage_columns()
    }

    fn cells(&self, _now: Timestamp) -> Vec<Value> {
        let usage = |name: &str| self.usage.get(name).map_or(String::new(), |q| q.0.clone());
        vec![table::name(&self.metadata), usage("cpu").into(), usage("memory").into(), self.window.clone().into()]
    }
}

impl Kind for PodMetrics {
    fn columns() -> Vec<Column> {
        usage_columns()
    }

    fn cells(&self, _now: Timestamp) -> Vec<Value> {
        let sum = |name: &str| -> i128 {
            let quantities = self.containers.iter().filter_map(|c| c.usage.get(name));
            quantities.filter_map(|q| crate::quantity::parse(&q.0).ok()).sum()
        };
        let cpu = crate::quantity::nanocores(u64::try_from(sum("cpu")).unwrap_or_default());
        let memory = crate::quantity::bytes(u64::try_from(sum("memory") / 1_000_000_000).unwrap_or_default());
        vec![table::name(&self.metadata), cpu.into(), memory.into(), self.window.clone().into()]
    }
}
