//! The scheduler's view of the cluster: every schedulable node with the pods bound or assumed
//! on it, summed the way the filters and scores read them. Pods the scheduler has just placed
//! count at once ("assumed"), before the watch confirms the binding, so the next decision
//! already sees them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_api::selector::LabelSelector;
use flotilla_client::{ObjectKey, controller_of};
use k8s_openapi::api::core::v1::{Affinity, Node, Pod, PodAffinityTerm, PodSpec, Taint, Toleration};

use crate::resources::{Resources, allocatable, pod_requests};

/// What scheduling needs to know of a pod, read once.
#[derive(Debug)]
pub struct PodInfo {
    pub key: ObjectKey,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    /// Requests with upstream's non-zero defaults, for scoring.
    pub score_requests: Resources,
    /// `(protocol, hostIP, hostPort)` of the ports it takes on its node.
    pub host_ports: Vec<(String, String, i32)>,
    /// The uid of its controller (ReplicaSet, Job, …), to spread its siblings.
    pub owner: Option<String>,
    pub priority: i32,
    pub node_name: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    /// The runtime class it asks for (`runtimeClassName`, or the default).
    pub runtime_class: String,
    /// The node label that says a node offers its runtime class.
    pub runtime_label: String,
}

impl PodInfo {
    pub fn of(pod: &Pod) -> PodInfo {
        let none = PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&none);
        let (requests, score_requests) = pod_requests(spec);
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((protocol, p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()), port))
            })
            .collect();
        PodInfo {
            key: ObjectKey::new(pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref().unwrap_or_default()),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests,
            score_requests,
            host_ports,
            owner: controller_of(pod).map(|r| r.uid.clone()),
            priority: spec.priority.unwrap_or(0),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            affinity: spec.affinity.clone(),
            runtime_class: flotilla_api::runtime_class(spec).to_string(),
            runtime_label: flotilla_api::runtime_label(flotilla_api::runtime_class(spec)),
        }
    }

    pub fn namespace(&self) -> &str {
        self.key.namespace.as_deref().unwrap_or_default()
    }

    /// Required anti-affinity terms (which existing pods keep it away from a topology).
    pub fn required_anti_affinity(&self) -> &[PodAffinityTerm] {
        self.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default()
    }

    pub fn required_affinity(&self) -> &[PodAffinityTerm] {
        self.affinity
            .as_ref()
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default()
    }
}

/// Whether `term` (written by a pod in `namespace`) selects `pod`.
pub fn affinity_term_matches(term: &PodAffinityTerm, namespace: &str, pod: &PodInfo) -> bool {
    let in_namespace = match term.namespaces.as_deref() {
        Some(namespaces) if !namespaces.is_empty() => namespaces.iter().any(|n| n == pod.namespace()),
        // An empty namespace selector selects every namespace; none means the pod's own.
        _ if term
            .namespace_selector
            .as_ref()
            .is_some_and(|s| s.match_labels.is_none() && s.match_expressions.is_none()) =>
        {
            true
        }
        _ => pod.namespace() == namespace,
    };
    in_namespace
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| LabelSelector::from_api(s).is_ok_and(|s| s.matches(&pod.labels)))
}

/// A node as the filters and scores see it.
#[derive(Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    /// Its taints, plus those its conditions imply (`not-ready`, `unreachable`), as upstream's
    /// TaintNodesByCondition adds them.
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Whether a Node object exists (pods may outlive theirs).
    pub present: bool,
    pub requested: Resources,
    pub score_requested: Resources,
    pub pods: HashMap<ObjectKey, Arc<PodInfo>>,
    /// Pods on it per controller uid.
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    fn set_node(&mut self, node: &Node) {
        let spec = node.spec.clone().unwrap_or_default();
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        self.allocatable = allocatable(node);
        self.unschedulable = spec.unschedulable.unwrap_or(false);
        self.taints = spec.taints.unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        let implied = match ready {
            Some("True") => None,
            Some("Unknown") => Some("node.kubernetes.io/unreachable"),
            _ => Some("node.kubernetes.io/not-ready"),
        };
        if let Some(key) = implied
            && !self.taints.iter().any(|t| t.key == key && t.effect == "NoSchedule")
        {
            self.taints.push(Taint { key: key.into(), effect: "NoSchedule".into(), ..Default::default() });
        }
        self.present = true;
    }

    fn add(&mut self, pod: Arc<PodInfo>) {
        self.requested = self.requested + pod.requests;
        self.score_requested = self.score_requested + pod.score_requests;
        if let Some(owner) = &pod.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
        self.pods.insert(pod.key.clone(), pod);
    }

    fn remove(&mut self, key: &ObjectKey) {
        let Some(pod) = self.pods.remove(key) else { return };
        self.requested = self.requested - pod.requests;
        self.score_requested = self.score_requested - pod.score_requests;
        if let Some(owner) = &pod.owner
            && let Some(count) = self.owners.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.owners.remove(owner);
            }
        }
    }

    /// Whether a pod's port is taken on this node.
    pub fn port_taken(&self, (protocol, ip, port): &(String, String, i32)) -> bool {
        let wildcard = |ip: &str| ip == "0.0.0.0" || ip == "::" || ip.is_empty();
        self.pods
            .values()
            .flat_map(|p| &p.host_ports)
            .any(|(p, i, n)| p == protocol && n == port && (i == ip || wildcard(i) || wildcard(ip)))
    }
}

/// Every node and where each pod is.
#[derive(Debug, Default)]
pub struct Cluster {
    /// Every node known: those that exist, and those gone that still have pods counted.
    nodes: Vec<NodeInfo>,
    /// Where each node is in `nodes`.
    index: HashMap<String, usize>,
    /// Positions in `nodes` of the nodes that exist, by name: what sampling walks, a few hundred
    /// times per decision, so without hashing a name each step.
    order: Vec<usize>,
    /// The node of every pod counted, and whether it is only assumed.
    placed: HashMap<ObjectKey, (String, bool)>,
    /// Pods with required anti-affinity, which every placement must respect; few, so kept
    /// apart rather than found among all pods each time.
    anti_affinity: HashMap<ObjectKey, Arc<PodInfo>>,
}

impl Cluster {
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.order.iter().map(|&i| &self.nodes[i])
    }

    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    pub fn node_at(&self, index: usize) -> &NodeInfo {
        &self.nodes[self.order[index]]
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i]).filter(|n| n.present)
    }

    pub fn set_node(&mut self, node: &Node) {
        let i = self.slot(node.metadata.name.as_deref().unwrap_or_default());
        let new = !self.nodes[i].present;
        self.nodes[i].set_node(node);
        if new {
            self.reorder();
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else { return };
        self.nodes[i].present = false;
        self.release(i);
        self.reorder();
    }

    /// The position of the node called `name`, added (as not existing) if unknown.
    fn slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.nodes.push(NodeInfo { name: name.to_string(), ..Default::default() });
        self.index.insert(name.to_string(), self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// Drops the node at `i` if it no longer exists and no pod is counted on it.
    fn release(&mut self, i: usize) {
        if self.nodes[i].present || !self.nodes[i].pods.is_empty() {
            return;
        }
        let gone = self.nodes.swap_remove(i);
        self.index.remove(&gone.name);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        self.reorder();
    }

    fn reorder(&mut self) {
        self.order = (0..self.nodes.len()).filter(|&i| self.nodes[i].present).collect();
        self.order.sort_by(|&a, &b| self.nodes[a].name.cmp(&self.nodes[b].name));
    }

    /// Counts `pod` on `node`: bound (the watch says so) or assumed (the scheduler placed it).
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        self.forget(&pod.key);
        self.placed.insert(pod.key.clone(), (node.to_string(), assumed));
        if !pod.required_anti_affinity().is_empty() {
            self.anti_affinity.insert(pod.key.clone(), pod.clone());
        }
        let i = self.slot(node);
        self.nodes[i].add(pod);
    }

    /// Stops counting a pod (deleted, finished, or its binding failed).
    pub fn forget(&mut self, key: &ObjectKey) {
        let Some((node, _)) = self.placed.remove(key) else { return };
        self.anti_affinity.remove(key);
        if let Some(&i) = self.index.get(&node) {
            self.nodes[i].remove(key);
            self.release(i);
        }
    }

    /// Pods with required anti-affinity, with the node each is on.
    pub fn pods_with_anti_affinity(&self) -> impl Iterator<Item = (&NodeInfo, &Arc<PodInfo>)> {
        self.anti_affinity.iter().filter_map(|(key, pod)| Some((self.node(&self.placed.get(key)?.0)?, pod)))
    }

    /// Every counted pod with the node it is on.
    pub fn pods(&self) -> impl Iterator<Item = (&NodeInfo, &Arc<PodInfo>)> {
        self.nodes().flat_map(|n| n.pods.values().map(move |p| (n, p)))
    }
}
