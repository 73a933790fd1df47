//! The Endpoints and EndpointSlice controllers: for every Service with a selector, the
//! addresses of the pods it selects — ready ones as `addresses`, the others as
//! `notReadyAddresses` — with the Service's ports resolved against each pod (a named
//! `targetPort` is looked up among the pod's container ports), as upstream writes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_api::selector::LabelSelector;
use flotilla_client::{Change, ObjectKey, WorkQueue};
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
use crate::{Context, Error, Informers, Next, Reconciler, spawn_workers};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::new();
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
            && old.status.as_ref().map(|s| (&s.pod_ip, &s.conditions))
                == pod.status.as_ref().map(|s| (&s.pod_ip, &s.conditions))
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
    let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    // Pods by the ports they resolve to: `(name, port, protocol)` → (ready, not ready).
    type Ports = Vec<(String, i32, String)>;
    let mut groups: BTreeMap<Ports, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else { continue };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let resolved: Vec<(String, i32, String)> = ports
            .iter()
            .filter_map(|p| {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((p.name.clone().unwrap_or_default(), target_port(p, pod)?, protocol))
            })
            .collect();
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(reference(pod)),
            hostname: None,
        };
        let group = groups.entry(resolved).or_default();
        if is_ready(pod) { group.0.push(address) } else { group.1.push(address) }
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

/// The same addresses as one EndpointSlice's endpoints.
pub(crate) fn slice_endpoints(subsets: &[EndpointSubset]) -> (Vec<Endpoint>, Vec<SlicePort>) {
    let mut endpoints = Vec::new();
    let mut ports = Vec::new();
    for subset in subsets {
        for (addresses, ready) in [(&subset.addresses, true), (&subset.not_ready_addresses, false)] {
            for address in addresses.iter().flatten() {
                endpoints.push(Endpoint {
                    addresses: vec![address.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    node_name: address.node_name.clone(),
                    target_ref: address.target_ref.clone(),
                    ..Default::default()
                });
            }
        }
        for port in subset.ports.iter().flatten() {
            let port = SlicePort {
                name: port.name.clone(),
                port: Some(port.port),
                protocol: port.protocol.clone(),
                app_protocol: None,
            };
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
    }
    (endpoints, ports)
}

struct EndpointsController {
    context: Context,
}

impl Reconciler for EndpointsController {
    const NAME: &'static str = "endpoints";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let endpoints_api: Api<Endpoints> = Api::namespaced(self.context.client.clone(), namespace);
        let slices_api: Api<EndpointSlice> = Api::namespaced(self.context.client.clone(), namespace);
        let service = self.context.services.get(key);
        let Some(service) = service.clone().filter(|s| selector(s).is_some()) else {
            // A Service without a selector has the endpoints its user writes. One that is gone
            // takes its Endpoints along (its slices go with it as their owner).
            if service.is_none() && self.context.endpoints.get(key).is_some() {
                match endpoints_api.delete(&key.name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(err)) if err.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
            }
            return Ok(Next::Done);
        };
        let selector = selector(&service).expect("checked above");
        let pods: Vec<Arc<Pod>> =
            self.context.pods.in_namespace(namespace).into_iter().filter(|p| selector.matches(p.labels())).collect();
        let subsets = subsets(&service, &pods);

        let current = self.context.endpoints.get(key);
        let labels = service.metadata.labels.clone();
        if current
            .as_ref()
            .is_none_or(|c| c.subsets.clone().unwrap_or_default() != subsets || c.metadata.labels != labels)
        {
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(key.name.clone()),
                    namespace: Some(namespace.into()),
                    labels: labels.clone(),
                    resource_version: current.as_ref().and_then(|c| c.metadata.resource_version.clone()),
                    ..Default::default()
                },
                subsets: (!subsets.is_empty()).then(|| subsets.clone()),
            };
            match &current {
                Some(_) => endpoints_api.replace(&key.name, &PostParams::default(), &endpoints).await?,
                None => endpoints_api.create(&PostParams::default(), &endpoints).await?,
            };
        }

        let (endpoints, ports) = slice_endpoints(&subsets);
        let mut slices: Vec<Arc<EndpointSlice>> = self
            .context
            .endpointslices
            .in_namespace(namespace)
            .into_iter()
            .filter(|s| {
                s.labels().get(SERVICE_NAME_LABEL) == Some(&key.name)
                    && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            })
            .collect();
        let mut slice_labels = labels.unwrap_or_default();
        slice_labels.insert(SERVICE_NAME_LABEL.into(), key.name.clone());
        slice_labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let desired = EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", key.name)),
                namespace: Some(namespace.into()),
                labels: Some(slice_labels),
                owner_references: Some(vec![controller_reference(&*service)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
        };
        match slices.pop() {
            None => {
                slices_api.create(&PostParams::default(), &desired).await?;
            }
            Some(slice) => {
                if slice.endpoints != desired.endpoints
                    || slice.ports != desired.ports
                    || slice.metadata.labels != desired.metadata.labels
                {
                    let mut updated = desired.clone();
                    updated.metadata.name = slice.metadata.name.clone();
                    updated.metadata.generate_name = None;
                    updated.metadata.resource_version = slice.metadata.resource_version.clone();
                    slices_api.replace(&slice.name_any(), &PostParams::default(), &updated).await?;
                }
            }
        }
        // One slice per Service is enough at this scale; extras (from a race) go.
        for extra in slices {
            match slices_api.delete(&extra.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(err)) if err.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(Next::Done)
    }
}
