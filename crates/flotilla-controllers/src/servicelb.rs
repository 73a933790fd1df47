//! The ServiceLB controller, as K3s's gives one host a load balancer: a `LoadBalancer` Service's
//! `status.loadBalancer.ingress` is the address of every Ready node, where each node's proxy
//! answers on the Service's ports (`flotilla-net`), so `kubectl get svc` shows its external IPs
//! and clients reach it there. A Service that stops being a `LoadBalancer` loses them.

use std::collections::BTreeSet;
use std::sync::Arc;

use flotilla_client::{Change, ObjectKey, WorkQueue};
use k8s_openapi::api::core::v1::{Node, Service};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{Context, Error, Informers, Next, Reconciler, spawn_workers};

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named("service-lb-controller", &context.queues);
    let q = queue.clone();
    informers.services.on_change(move |change| {
        let (Change::Applied { new: service, .. } | Change::Deleted(service)) = change;
        q.add(ObjectKey::of(&**service));
    });
    // A node's address or readiness changes every load balancer's ingress.
    let (q, services) = (queue.clone(), context.services.clone());
    informers.nodes.on_change(move |change| {
        let (old, node) = match change {
            Change::Applied { old, new } => (old.map(|o| &**o), &**new),
            Change::Deleted(node) => (None, &**node),
        };
        if old.is_some_and(|old| ingress_of(old) == ingress_of(node)) {
            return;
        }
        for service in services.list().iter().filter(|s| is_load_balancer(s)) {
            q.add(ObjectKey::of(&**service));
        }
    });
    let (services, nodes) = (context.services.clone(), context.nodes.clone());
    spawn_workers(Arc::new(ServiceLb { context: context.clone() }), queue, 1, async move {
        services.synced().await;
        nodes.synced().await;
    })
}

fn is_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// The address a node offers a load balancer: its InternalIP, while it is Ready.
fn ingress_of(node: &Node) -> Option<String> {
    let status = node.status.as_ref()?;
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let address = status.addresses.iter().flatten().find(|a| a.type_ == "InternalIP")?;
    ready.then(|| address.address.clone())
}

struct ServiceLb {
    context: Context,
}

impl Reconciler for ServiceLb {
    const NAME: &'static str = "servicelb";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(service) = self.context.services.get(key) else { return Ok(Next::Done) };
        let ips: BTreeSet<String> = if is_load_balancer(&service) {
            self.context.nodes.list().iter().filter_map(|n| ingress_of(n)).collect()
        } else {
            BTreeSet::new()
        };
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect();
        let status = json!({"loadBalancer": {"ingress": if ingress.is_empty() { serde_json::Value::Null } else { json!(ingress) }}});
        self.context.write_status(&*service, &self.context.services, status).await?;
        Ok(Next::Done)
    }
}
