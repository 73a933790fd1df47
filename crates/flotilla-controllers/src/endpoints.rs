//! The Endpoints and EndpointSlice controllers: for every Service with a selector, the
//! addresses of the pods it selects — ready ones as `addresses`, the others as
//! `notReadyAddresses` — with the Service's ports resolved against each pod (a named
//! `targetPort` is looked up among the pod's container ports), as upstream writes them.
//!
//! As upstream: an Endpoints object holds at most 1,000 addresses (the rest are cut, and it is
//! annotated `endpoints.kubernetes.io/over-capacity: truncated`); EndpointSlices hold at most
//! 100 endpoints each, one set of ports per slice, and a change touches as few slices as it can
//! (an endpoint stays in the slice it is in, new ones fill the slices with room first).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_api::selector::LabelSelector;
use flotilla_client::{Change, EventType, ObjectKey, WorkQueue, resource_version};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use tokio::task::JoinHandle;

use crate::pods::{controller_reference, is_ready};
use crate::{Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, spawn_workers, unless_gone};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// The node label an endpoint's `zone` comes from.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named("endpoint_slice", &context.queues);
    let q = queue.clone();
    informers.services.on_change(move |change| {
        let (Change::Applied { new: service, .. } | Change::Deleted(service)) = change;
        q.add(ObjectKey::of(&**service));
    });
    // A pod change concerns every Service in its namespace that selects it, before or after.
    let (q, services) = (queue.clone(), context.services.clone());
    informers.pods.on_change(move |change| {
        let (old, pod) = match change {
            Change::Applied { old, new } => (old, new),
            Change::Deleted(pod) => (None, pod),
        };
        if let Some(old) = old
            && old.metadata.labels == pod.metadata.labels
            && old.status.as_ref().map(|s| (&s.pod_ip, &s.conditions, &s.phase))
                == pod.status.as_ref().map(|s| (&s.pod_ip, &s.conditions, &s.phase))
            && old.metadata.deletion_timestamp == pod.metadata.deletion_timestamp
        {
            return;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        for service in services.in_namespace(namespace) {
            let selects = |p: &Pod| selector(&service).is_some_and(|s| s.matches(p.labels()));
            if selects(pod) || old.is_some_and(|o| selects(o)) {
                q.add(ObjectKey::of(&*service));
            }
        }
    });
    let (services, pods, endpoints, slices) =
        (context.services.clone(), context.pods.clone(), context.endpoints.clone(), context.endpointslices.clone());
    spawn_workers(Arc::new(EndpointsController { context: context.clone() }), queue, 2, async move {
        services.synced().await;
        pods.synced().await;
        endpoints.synced().await;
        slices.synced().await;
    })
}

/// The Service's selector; `None` for a Service without one (its endpoints are the user's).
fn selector(service: &Service) -> Option<LabelSelector> {
    let labels = service.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())?;
    LabelSelector::from_api(&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    })
    .ok()
}

/// The pod's port for a Service port: a number as it is, a name looked up among the pod's
/// container ports (`None` if the pod has no such port).
fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// Why pods the Service selects are left out of a port's endpoints: a `targetPort` name that
/// none of their containers declares (a message per such port). Upstream leaves them out
/// silently; a user who named the wrong port sees it said here.
fn unresolved_ports(service: &Service, pods: &[Arc<Pod>]) -> Vec<String> {
    let mut messages = Vec::new();
    for port in service_ports(service) {
        let Some(IntOrString::String(name)) = &port.target_port else { continue };
        let lacking: Vec<&str> = pods
            .iter()
            .filter(|pod| pod_ip(pod).is_some() && target_port(&port, pod).is_none())
            .map(|pod| pod.metadata.name.as_deref().unwrap_or_default())
            .collect();
        let Some(first) = lacking.first() else { continue };
        let more = match lacking.len() - 1 {
            0 => String::new(),
            n => format!(" and {n} more of its pods"),
        };
        messages.push(format!(
            "port {}: no container of pod {first}{more} declares a port named {name:?}, so they are not its endpoints",
            port.port
        ));
    }
    messages
}

/// A Service's ports as one pod resolves them: `(name, port, protocol)`, those it lacks left out.
type Ports = Vec<(String, i32, String)>;

fn resolve_ports(service_ports: &[ServicePort], pod: &Pod) -> Ports {
    service_ports
        .iter()
        .filter_map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            Some((p.name.clone().unwrap_or_default(), target_port(p, pod)?, protocol))
        })
        .collect()
}

fn service_ports(service: &Service) -> Vec<ServicePort> {
    service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default()
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty())
}

/// Whether a pod is among a Service's endpoints at all (upstream's `ShouldPodBeInEndpoints`):
/// it has an address, it has not finished for good (a pod that will not restart and has
/// exited cannot serve again), and it is not being deleted unless terminating ones count.
fn belongs(pod: &Pod, include_terminating: bool) -> bool {
    if pod_ip(pod).is_none() || (!include_terminating && pod.metadata.deletion_timestamp.is_some()) {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => !matches!(phase, Some("Succeeded" | "Failed")),
        Some("OnFailure") => phase != Some("Succeeded"),
        _ => true,
    }
}

/// `spec.publishNotReadyAddresses`: every address counts as ready.
fn publishes_not_ready(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false)
}

/// The pod's DNS name under the Service: its `hostname`, when it names the Service as its
/// `subdomain` (a StatefulSet's pods do).
fn hostname(service: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let named = spec.subdomain.is_some() && spec.subdomain == service.metadata.name;
    spec.hostname.clone().filter(|h| named && !h.is_empty())
}

fn reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Upstream's `Endpoints` subsets: pods grouped by the ports they resolve to.
pub(crate) fn subsets(service: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let ports = service_ports(service);
    let publish = publishes_not_ready(service);
    let mut groups: BTreeMap<Ports, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| belongs(p, publish)) {
        let Some(ip) = pod_ip(pod) else { continue };
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(reference(pod)),
            hostname: hostname(service, pod),
        };
        let group = groups.entry(resolve_ports(&ports, pod)).or_default();
        if publish || is_ready(pod) { group.0.push(address) } else { group.1.push(address) }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

/// Most addresses one Endpoints object holds (upstream's `maxCapacity`).
const MAX_ENDPOINTS_ADDRESSES: usize = 1000;
/// The annotation upstream sets on an Endpoints object cut down to that.
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// Cuts `subsets` down to `max` addresses, as upstream's `truncateEndpoints` does: ready ones
/// first (if they alone are too many, every not-ready one goes), each subset keeping its
/// share of the room. Whether anything was cut.
fn truncate(subsets: &mut [EndpointSubset], max: usize) -> bool {
    let count = |list: &Option<Vec<EndpointAddress>>| list.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= max {
        return false;
    }
    let cut_ready = ready > max;
    let (room, total) = if cut_ready { (max, ready) } else { (max - ready, not_ready) };
    let mut left = room;
    for subset in subsets {
        if cut_ready {
            subset.not_ready_addresses = None;
        }
        let list = if cut_ready { &mut subset.addresses } else { &mut subset.not_ready_addresses };
        let share = (count(list) * room).div_ceil(total).min(left);
        if let Some(addresses) = list {
            addresses.truncate(share);
            left -= addresses.len();
        }
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    true
}

/// Most endpoints in one EndpointSlice (upstream's `--max-endpoints-per-slice` default).
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The endpoints the Service's slices should hold, by the ports they resolve to, in address
/// order. Unlike Endpoints, slices list terminating pods too, as not ready (upstream's
/// `podToEndpoint`), so that a proxy can drain them.
fn slice_groups(
    service: &Service,
    pods: &[Arc<Pod>],
    zone_of: impl Fn(&str) -> Option<String>,
) -> BTreeMap<Ports, Vec<Endpoint>> {
    let ports = service_ports(service);
    let publish = publishes_not_ready(service);
    let mut groups: BTreeMap<Ports, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| belongs(p, true)) {
        let Some(ip) = pod_ip(pod) else { continue };
        let serving = is_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        groups.entry(resolve_ports(&ports, pod)).or_default().push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: hostname(service, pod),
            zone: node_name.as_deref().and_then(&zone_of),
            node_name,
            target_ref: Some(reference(pod)),
            ..Default::default()
        });
    }
    for endpoints in groups.values_mut() {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }
    groups
}

fn slice_ports(ports: &Ports) -> Option<Vec<SlicePort>> {
    let ports: Vec<SlicePort> = ports
        .iter()
        .map(|(name, port, protocol)| SlicePort {
            name: (!name.is_empty()).then(|| name.clone()),
            port: Some(*port),
            protocol: Some(protocol.clone()),
            app_protocol: None,
        })
        .collect();
    (!ports.is_empty()).then_some(ports)
}

fn ports_of(slice: &EndpointSlice) -> Ports {
    let ports = slice.ports.iter().flatten();
    ports
        .map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            (p.name.clone().unwrap_or_default(), p.port.unwrap_or_default(), protocol)
        })
        .collect()
}

/// Which endpoint an entry stands for: its pod, else its addresses.
fn identity(endpoint: &Endpoint) -> String {
    match endpoint.target_ref.as_ref().and_then(|r| r.uid.as_deref()) {
        Some(uid) => uid.to_string(),
        None => endpoint.addresses.join(","),
    }
}

/// What to do to a Service's slices.
#[derive(Debug, Clone, Default, PartialEq)]
struct SlicePlan {
    /// New slices, by their ports and endpoints.
    create: Vec<(Ports, Vec<Endpoint>)>,
    /// Slices to rewrite, by name, with their ports and endpoints.
    update: Vec<(String, Ports, Vec<Endpoint>)>,
    delete: Vec<String>,
}

impl SlicePlan {
    /// Turns creates into rewrites of slices the plan would delete, where `reusable` allows
    /// (upstream's `finalize`): one write instead of two, and a data path that watches sees the
    /// slice change rather than go and another come. The placeholder of a Service at zero
    /// becomes the slice of its first pod so.
    fn reuse_deleted(&mut self, reusable: impl Fn(&str) -> bool) {
        let mut i = 0;
        while i < self.delete.len() && !self.create.is_empty() {
            if reusable(&self.delete[i]) {
                let name = self.delete.remove(i);
                let (ports, endpoints) = self.create.pop().expect("checked above");
                self.update.push((name, ports, endpoints));
            } else {
                i += 1;
            }
        }
    }
}

/// The fewest writes that take the Service's slices (`existing`) to hold `desired`, at most
/// `max` endpoints each, as upstream's slice reconciler does: an endpoint stays in the slice it
/// is in (rewritten if it changed); new ones fill slices being rewritten anyway, then others
/// with room, then new slices; a slice left empty goes. A Service with no endpoints keeps one
/// empty slice, without ports (upstream's placeholder). Slices whose labels are not `labels`
/// are rewritten.
fn plan_slices(
    existing: &[Arc<EndpointSlice>],
    desired: BTreeMap<Ports, Vec<Endpoint>>,
    labels: &BTreeMap<String, String>,
    max: usize,
) -> SlicePlan {
    struct Slice {
        name: String,
        ports: Ports,
        endpoints: Vec<Endpoint>,
        changed: bool,
    }
    let placeholder = desired.values().all(Vec::is_empty);
    let desired = if placeholder { BTreeMap::from([(Vec::new(), Vec::new())]) } else { desired };
    // The desired endpoints of each port set (taken out as slices claim them), and where each
    // is among them by identity.
    type Pending = (Vec<Option<Endpoint>>, HashMap<String, usize>);
    let mut pending: BTreeMap<Ports, Pending> = desired
        .into_iter()
        .map(|(ports, endpoints)| {
            let at = endpoints.iter().enumerate().map(|(i, e)| (identity(e), i)).collect();
            (ports, (endpoints.into_iter().map(Some).collect(), at))
        })
        .collect();
    let mut plan = SlicePlan::default();
    let mut slices = Vec::new();
    for slice in existing {
        let ports = ports_of(slice);
        let Some((endpoints, at)) = pending.get_mut(&ports) else {
            plan.delete.push(slice.name_any());
            continue;
        };
        let kept: Vec<Endpoint> =
            slice.endpoints.iter().filter_map(|old| endpoints[*at.get(&identity(old))?].take()).collect();
        let changed = kept != slice.endpoints || slice.metadata.labels.as_ref() != Some(labels);
        slices.push(Slice { name: slice.name_any(), ports, endpoints: kept, changed });
    }
    for (ports, (endpoints, _)) in pending {
        let mut fresh = endpoints.into_iter().flatten().peekable();
        let mut with_room: Vec<&mut Slice> = slices.iter_mut().filter(|s| s.ports == ports).collect();
        with_room.sort_by_key(|s| !s.changed);
        for slice in with_room {
            while slice.endpoints.len() < max
                && let Some(endpoint) = fresh.next()
            {
                slice.endpoints.push(endpoint);
                slice.changed = true;
            }
        }
        let rest: Vec<Endpoint> = fresh.collect();
        plan.create.extend(rest.chunks(max).map(|chunk| (ports.clone(), chunk.to_vec())));
    }
    let mut placeholder_wanted = placeholder;
    for slice in slices {
        if slice.endpoints.is_empty() {
            if !placeholder_wanted {
                plan.delete.push(slice.name);
                continue;
            }
            placeholder_wanted = false;
        }
        if slice.changed {
            plan.update.push((slice.name, slice.ports, slice.endpoints));
        }
    }
    if placeholder_wanted {
        plan.create.push((Vec::new(), Vec::new()));
    }
    plan
}

struct EndpointsController {
    context: Context,
}

impl EndpointsController {
    /// The Endpoints object: created, or replaced when its addresses or labels changed; the
    /// revision written goes to `written`.
    async fn write_endpoints(
        &self,
        key: &ObjectKey,
        service: &Service,
        pods: &[Arc<Pod>],
        written: &mut u64,
    ) -> Result<(), Error> {
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let api: Api<Endpoints> = Api::namespaced(self.context.client.clone(), namespace);
        let mut subsets = subsets(service, pods);
        let annotations = truncate(&mut subsets, MAX_ENDPOINTS_ADDRESSES)
            .then(|| BTreeMap::from([(OVER_CAPACITY.into(), "truncated".into())]));
        let labels = service.metadata.labels.clone();
        let current = self.context.endpoints.get(key);
        if current.as_ref().is_some_and(|c| {
            c.subsets.clone().unwrap_or_default() == subsets
                && c.metadata.labels == labels
                && c.metadata.annotations.as_ref().and_then(|a| a.get(OVER_CAPACITY))
                    == annotations.as_ref().and_then(|a| a.get(OVER_CAPACITY))
        }) {
            return Ok(());
        }
        let endpoints = Endpoints {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(namespace.into()),
                labels,
                annotations,
                resource_version: current.as_ref().and_then(|c| c.metadata.resource_version.clone()),
                ..Default::default()
            },
            subsets: (!subsets.is_empty()).then_some(subsets),
        };
        let stored = match &current {
            Some(_) => api.replace(&key.name, &PostParams::default(), &endpoints).await?,
            None => api.create(&PostParams::default(), &endpoints).await?,
        };
        *written = resource_version(&stored);
        Ok(())
    }

    /// The Service's EndpointSlices, by [`plan_slices`]; the newest revision written goes to
    /// `written`, also when a later write fails.
    async fn write_slices(
        &self,
        key: &ObjectKey,
        service: &Service,
        pods: &[Arc<Pod>],
        written: &mut u64,
    ) -> Result<(), Error> {
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let api: Api<EndpointSlice> = Api::namespaced(self.context.client.clone(), namespace);
        let zone_of = |node: &str| {
            let node = self.context.nodes.get(&ObjectKey::new(None, node))?;
            node.labels().get(ZONE_LABEL).cloned()
        };
        let desired = slice_groups(service, pods, zone_of);
        let existing: Vec<Arc<EndpointSlice>> = self
            .context
            .endpointslices
            .in_namespace(namespace)
            .into_iter()
            .filter(|s| {
                s.labels().get(SERVICE_NAME_LABEL) == Some(&key.name)
                    && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            })
            .collect();
        let mut labels = service.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME_LABEL.into(), key.name.clone());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let mut plan = plan_slices(&existing, desired, &labels, MAX_ENDPOINTS_PER_SLICE);
        // Not a slice left by an older Service of the same name, which the collector removes,
        // nor one of another address type, which cannot change.
        plan.reuse_deleted(|name| {
            existing.iter().any(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.address_type == "IPv4"
                    && s.owner_references().iter().any(|o| Some(&o.uid) == service.metadata.uid.as_ref())
            })
        });
        let slice = |name: Option<String>, ports: &Ports, endpoints: Vec<Endpoint>| EndpointSlice {
            metadata: ObjectMeta {
                resource_version: name
                    .as_ref()
                    .and_then(|n| existing.iter().find(|s| s.metadata.name.as_ref() == Some(n)))
                    .and_then(|s| s.metadata.resource_version.clone()),
                generate_name: name.is_none().then(|| format!("{}-", key.name)),
                name,
                namespace: Some(namespace.into()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![controller_reference(service)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: slice_ports(ports),
        };
        for (name, ports, endpoints) in plan.update {
            let slice = slice(Some(name.clone()), &ports, endpoints);
            *written = resource_version(&api.replace(&name, &PostParams::default(), &slice).await?);
        }
        for (ports, endpoints) in plan.create {
            let slice = slice(None, &ports, endpoints);
            *written = resource_version(&api.create(&PostParams::default(), &slice).await?);
        }
        if !plan.delete.is_empty() {
            for name in plan.delete {
                unless_gone(api.delete(&name, &DeleteParams::default()).await)?;
            }
            // A deletion's revision is the store's, not the object's.
            *written = crate::current_revision(&api).await?;
        }
        Ok(())
    }
}

impl Reconciler for EndpointsController {
    const NAME: &'static str = "endpoints";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let service = self.context.services.get(key);
        let Some(service) = service.clone().filter(|s| selector(s).is_some()) else {
            // A Service without a selector has the endpoints its user writes. One that is gone
            // takes its Endpoints along (its slices go with it as their owner).
            if service.is_none() && self.context.endpoints.get(key).is_some() {
                let namespace = key.namespace.as_deref().unwrap_or("default");
                let api: Api<Endpoints> = Api::namespaced(self.context.client.clone(), namespace);
                unless_gone(api.delete(&key.name, &DeleteParams::default()).await)?;
            }
            return Ok(Next::Done);
        };
        let selector = selector(&service).expect("checked above");
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let pods: Vec<Arc<Pod>> =
            self.context.pods.in_namespace(namespace).into_iter().filter(|p| selector.matches(p.labels())).collect();
        // Upstream's two controllers, independent there too: a data path that reads slices
        // does not wait for the Endpoints write.
        let (mut endpoints, mut slices) = (0, 0);
        let (wrote_endpoints, wrote_slices) = tokio::join!(
            self.write_endpoints(key, &service, &pods, &mut endpoints),
            self.write_slices(key, &service, &pods, &mut slices)
        );
        // The next reconcile of this Service starts from its own writes, even those of a
        // reconcile that failed half-way, not from versions they replaced (a conflict, and a
        // retry after a back-off, while a pod turns ready) or slices they created.
        if (endpoints > 0 && !self.context.endpoints.observed(endpoints, OBSERVE_TIMEOUT).await)
            || (slices > 0 && !self.context.endpointslices.observed(slices, OBSERVE_TIMEOUT).await)
        {
            return Err(Error::Lagging);
        }
        wrote_endpoints?;
        wrote_slices?;
        for message in unresolved_ports(&service, &pods) {
            self.context.events.object(&*service, EventType::Warning, "TargetPortNotFound", message);
        }
        Ok(Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": ports}}),
        )
        .unwrap()
    }

    /// A running pod `name` at `ip`, ready or not, whose container has port 8080 named `http`.
    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_target_port_name_no_container_declares_is_said() {
        let named = service(
            json!([{"name": "a", "port": 80, "targetPort": "http"}, {"name": "b", "port": 81, "targetPort": "nope"}]),
        );
        let pods = [pod("p1", "127.1.0.1", true), pod("p2", "127.1.0.2", false)];
        assert_eq!(
            unresolved_ports(&named, &pods),
            [
                "port 81: no container of pod p1 and 1 more of its pods declares a port named \"nope\", so they are not its endpoints"
            ]
        );
    }

    fn pods(n: usize) -> Vec<Arc<Pod>> {
        (0..n).map(|i| pod(&format!("p{i:04}"), &format!("127.1.{}.{}", i / 250, i % 250 + 1), true)).collect()
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), "web".to_string())])
    }

    /// The slices a plan leaves, as existing slices named `s0`, `s1`, … in creation order.
    fn carry_out(existing: Vec<Arc<EndpointSlice>>, plan: SlicePlan) -> Vec<Arc<EndpointSlice>> {
        let mut slices: Vec<Arc<EndpointSlice>> =
            existing.into_iter().filter(|s| !plan.delete.contains(&s.name_any())).collect();
        for (name, ports, endpoints) in plan.update {
            let at = slices.iter().position(|s| s.name_any() == name).unwrap();
            slices[at] = Arc::new(slice(&name, &ports, endpoints));
        }
        let first = slices.len() + plan.delete.len();
        for ((ports, endpoints), n) in plan.create.into_iter().zip(first..) {
            slices.push(Arc::new(slice(&format!("s{n}"), &ports, endpoints)));
        }
        slices
    }

    fn slice(name: &str, ports: &Ports, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels()), ..Default::default() },
            address_type: "IPv4".into(),
            endpoints,
            ports: slice_ports(ports),
        }
    }

    fn sizes(slices: &[Arc<EndpointSlice>]) -> Vec<usize> {
        slices.iter().map(|s| s.endpoints.len()).collect()
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_not_ready_pods_are_listed_apart() {
        let service = service(json!([{"name": "web", "port": 80, "targetPort": "http"}]));
        let mut other: Pod = (*pod("b", "127.1.0.2", false)).clone();
        other.spec.as_mut().unwrap().containers[0].ports.as_mut().unwrap()[0].container_port = 9090;
        let subsets = subsets(&service, &[pod("a", "127.1.0.1", true), Arc::new(other), pod("c", "127.1.0.3", false)]);
        assert_eq!(subsets.len(), 2, "two port sets: {subsets:?}");
        let ports: Vec<i32> = subsets.iter().map(|s| s.ports.as_ref().unwrap()[0].port).collect();
        assert_eq!(ports, [8080, 9090]);
        let ips = |list: &Option<Vec<EndpointAddress>>| -> Vec<String> {
            list.iter().flatten().map(|a| a.ip.clone()).collect()
        };
        assert_eq!(ips(&subsets[0].addresses), ["127.1.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["127.1.0.3"]);
        assert_eq!(ips(&subsets[1].not_ready_addresses), ["127.1.0.2"]);
    }

    #[test]
    fn finished_and_terminating_pods_are_left_out_of_endpoints_but_slices_keep_terminating_ones() {
        let service = service(json!([{"port": 80}]));
        let mut done: Pod = (*pod("done", "127.1.0.1", false)).clone();
        done.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut leaving: Pod = (*pod("leaving", "127.1.0.2", true)).clone();
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        let all = [Arc::new(done), Arc::new(leaving), pod("up", "127.1.0.3", true)];
        let subsets = subsets(&service, &all);
        let addresses: Vec<&str> = subsets[0].addresses.iter().flatten().map(|a| a.ip.as_str()).collect();
        assert_eq!(addresses, ["127.1.0.3"]);
        assert!(subsets[0].not_ready_addresses.is_none());

        let groups = slice_groups(&service, &all, |_| Some("edge-a".into()));
        let endpoints = &groups[&vec![(String::new(), 80, "TCP".to_string())]];
        let conditions: Vec<_> = endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (e.addresses[0].as_str(), c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect();
        assert_eq!(conditions, [("127.1.0.2", false, true, true), ("127.1.0.3", true, true, false)]);
        assert_eq!(endpoints[0].zone.as_deref(), Some("edge-a"));
    }

    #[test]
    fn published_not_ready_addresses_count_as_ready() {
        let mut service = service(json!([{"port": 80}]));
        service.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let subsets = subsets(&service, &[pod("a", "127.1.0.1", false)]);
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(1));
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn endpoints_over_a_thousand_addresses_are_cut_ready_ones_kept_first() {
        let address = |i: usize| EndpointAddress { ip: format!("127.2.{}.{}", i / 250, i % 250), ..Default::default() };
        let subset = |ready: usize, not_ready: usize| EndpointSubset {
            addresses: Some((0..ready).map(address).collect()),
            not_ready_addresses: Some((0..not_ready).map(address).collect()),
            ports: None,
        };
        let mut small = vec![subset(10, 10)];
        assert!(!truncate(&mut small, 1000));

        // Ready ones fit: the not-ready ones share what is left, in proportion.
        let mut some = vec![subset(600, 300), subset(200, 100)];
        assert!(truncate(&mut some, 1000));
        let kept: Vec<(usize, usize)> = some
            .iter()
            .map(|s| (s.addresses.as_ref().map_or(0, Vec::len), s.not_ready_addresses.as_ref().map_or(0, Vec::len)))
            .collect();
        assert_eq!(kept, [(600, 150), (200, 50)]);

        // Too many ready ones: they share the room, and no not-ready one is kept.
        let mut many = vec![subset(1500, 10), subset(500, 0)];
        assert!(truncate(&mut many, 1000));
        let kept: Vec<(usize, bool)> =
            many.iter().map(|s| (s.addresses.as_ref().map_or(0, Vec::len), s.not_ready_addresses.is_none())).collect();
        assert_eq!(kept, [(750, true), (250, true)]);
    }

    #[test]
    fn slices_hold_at_most_a_hundred_endpoints_and_changes_touch_few_of_them() {
        let service = service(json!([{"port": 80}]));
        let groups = |pods: &[Arc<Pod>]| slice_groups(&service, pods, |_| None);
        let all = pods(250);

        let plan = plan_slices(&[], groups(&all), &labels(), MAX_ENDPOINTS_PER_SLICE);
        assert!(plan.update.is_empty() && plan.delete.is_empty());
        let slices = carry_out(vec![], plan);
        assert_eq!(sizes(&slices), [100, 100, 50]);

        // Nothing changed: nothing to write.
        let plan = plan_slices(&slices, groups(&all), &labels(), MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(plan, SlicePlan::default());

        // One more pod goes to the slice with room; the full ones are not touched.
        let more = pods(251);
        let plan = plan_slices(&slices, groups(&more), &labels(), MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(plan.update.iter().map(|u| u.0.as_str()).collect::<Vec<_>>(), ["s2"]);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        let slices = carry_out(slices, plan);
        assert_eq!(sizes(&slices), [100, 100, 51]);

        // A pod that goes is taken out of its own slice only, and one that becomes not ready
        // is rewritten where it is.
        let name_in = |slice: &EndpointSlice| slice.endpoints[0].target_ref.clone().unwrap().name.unwrap();
        let (gone, unready) = (name_in(&slices[0]), name_in(&slices[1]));
        let mut fewer: Vec<Arc<Pod>> = more.iter().filter(|p| p.name_any() != gone).cloned().collect();
        let at = fewer.iter().position(|p| p.name_any() == unready).unwrap();
        fewer[at] = pod(&unready, &pod_ip(&fewer[at]).unwrap(), false);
        let plan = plan_slices(&slices, groups(&fewer), &labels(), MAX_ENDPOINTS_PER_SLICE);
        let mut updated: Vec<&str> = plan.update.iter().map(|u| u.0.as_str()).collect();
        updated.sort();
        assert_eq!(updated, ["s0", "s1"]);
        let slices = carry_out(slices, plan);
        assert_eq!(sizes(&slices), [99, 100, 51]);

        // Scaled to a few: emptied slices go, none is created.
        let first: Vec<String> =
            slices[0].endpoints[..3].iter().map(|e| e.target_ref.clone().unwrap().name.unwrap()).collect();
        let few: Vec<Arc<Pod>> = fewer.iter().filter(|p| first.contains(&p.name_any())).cloned().collect();
        let plan = plan_slices(&slices, groups(&few), &labels(), MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(plan.delete, ["s1", "s2"]);
        assert!(plan.create.is_empty());
        assert_eq!(sizes(&carry_out(slices, plan)), [3]);
    }

    #[test]
    fn a_service_without_endpoints_keeps_one_empty_slice_and_ports_split_slices() {
        let service = service(json!([{"name": "web", "port": 80, "targetPort": "http"}]));
        let plan = plan_slices(&[], BTreeMap::new(), &labels(), MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(plan.create, [(Vec::new(), Vec::new())]);
        let empty = carry_out(vec![], plan);
        assert_eq!(plan_slices(&empty, BTreeMap::new(), &labels(), MAX_ENDPOINTS_PER_SLICE), SlicePlan::default());

        // Pods whose named port resolves differently land in different slices; the placeholder
        // (no ports) goes.
        let mut other: Pod = (*pod("b", "127.1.0.2", true)).clone();
        other.spec.as_mut().unwrap().containers[0].ports.as_mut().unwrap()[0].container_port = 9090;
        let groups = slice_groups(&service, &[pod("a", "127.1.0.1", true), Arc::new(other)], |_| None);
        let mut plan = plan_slices(&empty, groups, &labels(), MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(plan.delete, ["s0"]);
        let ports: Vec<i32> = plan.create.iter().map(|(ports, _)| ports[0].1).collect();
        assert_eq!(ports, [8080, 9090]);
        // ... rather, it becomes one of them, where it may: one write, not a create and a delete.
        let mut kept = plan.clone();
        kept.reuse_deleted(|_| false);
        assert_eq!(kept, plan, "a slice that may not be reused is deleted");
        plan.reuse_deleted(|name| name == "s0");
        assert!(plan.delete.is_empty());
        assert_eq!((plan.create.len(), plan.update[0].0.as_str(), plan.update[0].1[0].1), (1, "s0", 9090));

        // A slice whose labels drifted is rewritten.
        let slices = carry_out(empty, plan);
        assert_eq!(sizes(&slices), [1, 1]);
        let a = slices.iter().find(|s| s.ports.as_ref().is_some_and(|p| p[0].port == Some(8080))).unwrap();
        let mut drifted = (**a).clone();
        drifted.metadata.labels = None;
        let groups = slice_groups(&service, &[pod("a", "127.1.0.1", true)], |_| None);
        let plan = plan_slices(&[Arc::new(drifted)], groups, &labels(), MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(plan.update.len(), 1);
    }
}
