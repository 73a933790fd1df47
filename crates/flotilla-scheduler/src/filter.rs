//! Filters: whether a pod may run on a node, and if not, why — in upstream's words, since
//! `FailedScheduling` events and `kubectl describe` show them to users who know those words.
//! Pure functions of the pod and the cluster as observed.

use std::collections::HashSet;

pub use flotilla_api::scheduling::{node_matches, term_matches, tolerates, untolerated};
use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::cluster::{Cluster, NodeInfo, PodInfo, affinity_term_matches};

/// Why a node was filtered out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    NodeName,
    Taint { key: String, value: String },
    NodeAffinity,
    RuntimeClass(String),
    Ports,
    Insufficient(&'static str),
    TooManyPods,
    AffinityRules,
    AntiAffinityRules,
    ExistingAntiAffinity,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::Taint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Reason::NodeAffinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::RuntimeClass(class) => write!(f, "node(s) didn't offer runtime class {class:?}"),
            Reason::Ports => f.write_str("node(s) didn't have free ports for the requested pod ports"),
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::AffinityRules => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::AntiAffinityRules => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => f.write_str("node(s) didn't satisfy existing pods anti-affinity rules"),
        }
    }
}

/// Where the pod's inter-pod (anti-)affinity terms allow it, computed once per attempt: the
/// topology domains (`key=value`) each term finds matching pods in.
#[derive(Debug, Default)]
pub struct Topology {
    /// Per required affinity term; `None` when no pod matches anywhere and the pod matches its
    /// own term (the first of a group may go anywhere, as upstream allows).
    affinity: Vec<Option<HashSet<String>>>,
    anti_affinity: Vec<HashSet<String>>,
    /// Domains where an existing pod's required anti-affinity excludes this pod.
    excluded: HashSet<(String, String)>,
}

impl Topology {
    pub fn of(pod: &PodInfo, cluster: &Cluster) -> Topology {
        let mut topology = Topology::default();
        let (affinity, anti) = (pod.required_affinity(), pod.required_anti_affinity());
        if !affinity.is_empty() || !anti.is_empty() {
            let domains = |term: &k8s_openapi::api::core::v1::PodAffinityTerm| -> HashSet<String> {
                cluster
                    .pods()
                    .filter(|(_, other)| other.key != pod.key && affinity_term_matches(term, pod.namespace(), other))
                    .filter_map(|(node, _)| node.labels.get(&term.topology_key).cloned())
                    .collect()
            };
            for term in affinity {
                let found = domains(term);
                let anywhere = found.is_empty() && affinity_term_matches(term, pod.namespace(), pod);
                topology.affinity.push((!anywhere).then_some(found));
            }
            topology.anti_affinity = anti.iter().map(domains).collect();
        }
        for (node, existing) in cluster.pods_with_anti_affinity() {
            for term in existing.required_anti_affinity() {
                if existing.key != pod.key
                    && affinity_term_matches(term, existing.namespace(), pod)
                    && let Some(value) = node.labels.get(&term.topology_key)
                {
                    topology.excluded.insert((term.topology_key.clone(), value.clone()));
                }
            }
        }
        topology
    }
}

/// Whether `pod` fits `node`; the reasons of the first filter that fails if not.
pub fn fits(pod: &PodInfo, node: &NodeInfo, topology: &Topology) -> Result<(), Vec<Reason>> {
    if node.unschedulable && !tolerates_unschedulable(&pod.tolerations) {
        return Err(vec![Reason::Unschedulable]);
    }
    if pod.node_name.as_ref().is_some_and(|n| *n != node.name) {
        return Err(vec![Reason::NodeName]);
    }
    if let Some(taint) =
        untolerated(&node.taints, &pod.tolerations, |t| t.effect == "NoSchedule" || t.effect == "NoExecute")
    {
        return Err(vec![Reason::Taint { key: taint.key.clone(), value: taint.value.clone().unwrap_or_default() }]);
    }
    if !node_matches(&pod.node_selector, pod.affinity.as_ref(), &node.labels, &node.name) {
        return Err(vec![Reason::NodeAffinity]);
    }
    if !node.labels.contains_key(&pod.runtime_label) {
        return Err(vec![Reason::RuntimeClass(pod.runtime_class.clone())]);
    }
    if pod.host_ports.iter().any(|port| node.port_taken(port)) {
        return Err(vec![Reason::Ports]);
    }
    let mut insufficient = Vec::new();
    let (free, asked) = (node.allocatable - node.requested, pod.requests);
    if node.requested.pods + 1 > node.allocatable.pods {
        insufficient.push(Reason::TooManyPods);
    }
    if asked.milli_cpu > 0 && asked.milli_cpu > free.milli_cpu {
        insufficient.push(Reason::Insufficient("cpu"));
    }
    if asked.memory > 0 && asked.memory > free.memory {
        insufficient.push(Reason::Insufficient("memory"));
    }
    if !insufficient.is_empty() {
        return Err(insufficient);
    }
    check_inter_pod(pod, node, topology)
}

fn check_inter_pod(pod: &PodInfo, node: &NodeInfo, topology: &Topology) -> Result<(), Vec<Reason>> {
    let domain = |key: &str| node.labels.get(key);
    // In upstream's order: the pod's affinity, its anti-affinity, then the existing pods'.
    for (term, found) in pod.required_affinity().iter().zip(&topology.affinity) {
        if let Some(found) = found
            && !domain(&term.topology_key).is_some_and(|v| found.contains(v))
        {
            return Err(vec![Reason::AffinityRules]);
        }
    }
    for (term, found) in pod.required_anti_affinity().iter().zip(&topology.anti_affinity) {
        if domain(&term.topology_key).is_some_and(|v| found.contains(v)) {
            return Err(vec![Reason::AntiAffinityRules]);
        }
    }
    if topology.excluded.iter().any(|(key, value)| domain(key) == Some(value)) {
        return Err(vec![Reason::ExistingAntiAffinity]);
    }
    Ok(())
}

fn tolerates_unschedulable(tolerations: &[Toleration]) -> bool {
    let taint =
        Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
    tolerations.iter().any(|t| tolerates(t, &taint))
}

/// `0/3 nodes are available: 1 Insufficient memory, 2 node(s) were unschedulable.` — upstream's
/// FailedScheduling message: how many nodes each reason ruled out, sorted.
pub fn diagnosis(nodes: usize, reasons: &std::collections::HashMap<Reason, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{nodes} nodes are available.")
    } else {
        format!("0/{nodes} nodes are available: {}.", parts.join(", "))
    }
}
