//! Keeping every Service's routes current: informers on Services and EndpointSlices mark the
//! Services they touch, and one task recomputes the routes of those Services alone and hands
//! them to the data path. A change costs the work of its own Service, whatever the cluster
//! holds.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use flotilla_client::{Cache, Change, Informer, ObjectKey};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::DataPath;
use crate::activator::{Activator, scaled_from_zero};
use crate::dns::{self, DnsServer, Zone};
use crate::routes::{SERVICE_NAME_LABEL, routes};

/// Where the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The node's name: `Local` traffic policies keep to endpoints on it.
    pub node_name: String,
    /// The node's address, where node ports listen.
    pub node_ip: Ipv4Addr,
    /// Where names outside the cluster domain are resolved: the node's own resolver.
    pub upstream_dns: Option<SocketAddr>,
}

/// How long a data path that failed to commit waits before it tries again, at first and at
/// most.
const COMMIT_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
const COMMIT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The Service whose cluster IP the cluster DNS answers on, on every node (as NodeLocal
/// DNSCache binds its address on each): `kube-system/kube-dns`, which the API server creates.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The running proxy. Dropping it stops it; the data path it owns goes with it.
#[derive(Debug)]
pub struct ServiceProxy {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Services whose routes need recomputing, and the wake-up of the task that does it.
#[derive(Default)]
struct Dirty {
    services: Mutex<BTreeSet<ObjectKey>>,
    notify: Notify,
}

impl Dirty {
    fn mark(&self, service: ObjectKey) {
        self.services.lock().expect("dirty services lock").insert(service);
        self.notify.notify_one();
    }

    fn take(&self) -> BTreeSet<ObjectKey> {
        std::mem::take(&mut *self.services.lock().expect("dirty services lock"))
    }
}

impl ServiceProxy {
    /// Watches Services and EndpointSlices through `client` and keeps `path` carrying out
    /// their routes, and `zone` holding their names; with an `activator`, watches the HPAs too
    /// and keeps it knowing which Services scale from zero.
    pub fn start(
        client: kube::Client,
        config: ProxyConfig,
        zone: Arc<Zone>,
        path: impl DataPath,
        activator: Option<Arc<Activator>>,
    ) -> ServiceProxy {
        let dirty = Arc::new(Dirty::default());
        let mut tasks = Vec::new();
        if let Some(activator) = activator {
            let mut hpas = Informer::<HorizontalPodAutoscaler>::all(client.clone());
            let (cache, marks) = (hpas.cache(), dirty.clone());
            // A Service that comes to scale from zero, or no longer does, is routed again: its
            // frontend then holds connections while it has no endpoint, or refuses them.
            hpas.on_change(move |change| {
                if let Change::Applied { old: Some(old), new } = change
                    && old.metadata.generation == new.metadata.generation
                {
                    return;
                }
                for service in activator.set_services(scaled_from_zero(cache.list().iter().map(|h| &**h))) {
                    marks.mark(service);
                }
            });
            tasks.push(tokio::spawn(hpas.run()));
        }
        let mut services = Informer::<Service>::all(client.clone());
        let mut slices = Informer::<EndpointSlice>::all(client);
        let marks = dirty.clone();
        services.on_change(move |change| {
            let (Change::Applied { new: service, .. } | Change::Deleted(service)) = change;
            marks.mark(ObjectKey::of(&**service));
        });
        let marks = dirty.clone();
        let index = Arc::new(SliceIndex::default());
        let indexed = index.clone();
        slices.on_change(move |change| {
            let (old, new, deleted) = match change {
                Change::Applied { old, new } => (old, new, false),
                Change::Deleted(slice) => (None, slice, true),
            };
            // A slice relabelled to another Service changes both.
            let changed: Vec<(&Arc<EndpointSlice>, ObjectKey)> =
                old.into_iter().chain([new]).filter_map(|slice| Some((slice, service_of(slice)?))).collect();
            for (slice, service) in &changed {
                indexed.remove(service, slice);
            }
            if !deleted && let Some(service) = service_of(new) {
                indexed.insert(service, new);
            }
            // Marked once the index holds the change: the sync that takes a mark (on another
            // thread, at any moment) reads it, rather than the index as it was.
            for (_, service) in changed {
                marks.mark(service);
            }
        });
        let (service_cache, slice_cache) = (services.cache(), slices.cache());
        tasks.extend([
            tokio::spawn(services.run()),
            tokio::spawn(slices.run()),
            tokio::spawn(sync(service_cache, slice_cache, index, dirty, config, zone, path)),
        ]);
        ServiceProxy { tasks }
    }
}

/// Each Service's EndpointSlices, kept from the slices' changes: a Service's routes are
/// computed from its own slices, not by filtering its namespace's (a change costs its own
/// Service's work with 10,000 Services in one namespace).
#[derive(Default)]
struct SliceIndex(Mutex<std::collections::HashMap<ObjectKey, BTreeSet<ObjectKey>>>);

impl SliceIndex {
    fn insert(&self, service: ObjectKey, slice: &EndpointSlice) {
        self.0.lock().expect("slice index lock").entry(service).or_default().insert(ObjectKey::of(slice));
    }

    fn remove(&self, service: &ObjectKey, slice: &EndpointSlice) {
        let mut index = self.0.lock().expect("slice index lock");
        if let Some(slices) = index.get_mut(service) {
            slices.remove(&ObjectKey::of(slice));
            if slices.is_empty() {
                index.remove(service);
            }
        }
    }

    fn of(&self, service: &ObjectKey) -> Vec<ObjectKey> {
        self.0.lock().expect("slice index lock").get(service).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

/// The Service an EndpointSlice belongs to, by its label.
fn service_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(slice.metadata.namespace.as_deref(), name))
}

async fn sync(
    services: Cache<Service>,
    slices: Cache<EndpointSlice>,
    index: Arc<SliceIndex>,
    dirty: Arc<Dirty>,
    config: ProxyConfig,
    zone: Arc<Zone>,
    mut path: impl DataPath,
) {
    let dns_service = ObjectKey::new(Some(DNS_SERVICE.0), DNS_SERVICE.1);
    let mut dns_server: Option<DnsServer> = None;
    services.synced().await;
    slices.synced().await;
    // Everything once, from the complete caches: no Service is programmed from half a list.
    for service in services.keys() {
        dirty.mark(service);
    }
    // After a failed commit, how long until it is tried again: doubled at each failure (a
    // table that cannot be written is not rebuilt whole every two seconds for ever).
    let mut retry: Option<std::time::Duration> = None;
    loop {
        // A data path that failed to commit is tried again a while later, changes or not.
        tokio::select! {
            () = dirty.notify.notified() => {}
            () = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
        }
        for key in dirty.take() {
            let Some(service) = services.get(&key) else {
                path.sync(&key, Vec::new());
                zone.replace(&key, Vec::new());
                if key == dns_service {
                    // Its address is free again: the cluster DNS no longer answers there.
                    dns_server = None;
                }
                continue;
            };
            // The index is only a hint of which slices to read; the cache says what they hold.
            let own: Vec<Arc<EndpointSlice>> = index.of(&key).iter().filter_map(|slice| slices.get(slice)).collect();
            let own: Vec<&EndpointSlice> =
                own.iter().filter(|s| service_of(s).as_ref() == Some(&key)).map(|s| &**s).collect();
            path.sync(&key, routes(&service, &own, &config.node_name, config.node_ip));
            zone.replace(&key, dns::records(&service, &own, zone.domain()));
            if key == dns_service {
                serve_dns(&mut dns_server, &service, &zone, config.upstream_dns);
            }
        }
        // A commit may run a program (nft) and wait for it: off the runtime's other tasks.
        let committed = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| path.commit()),
            _ => path.commit(),
        };
        retry = match committed {
            Ok(()) => None,
            Err(e) => {
                let next = retry.map_or(COMMIT_RETRY, |last| (last * 2).min(COMMIT_RETRY_MAX));
                tracing::error!(error = %e, retry_in = ?next, "the data path to Services is not current");
                Some(next)
            }
        };
    }
}

/// Keeps the DNS server on the DNS Service's cluster IP, port 53.
fn serve_dns(server: &mut Option<DnsServer>, service: &Service, zone: &Arc<Zone>, upstream: Option<SocketAddr>) {
    let ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let at = ip.map(|ip| SocketAddr::new(ip.into(), 53));
    if server.as_ref().map(|s| s.at) == at {
        return;
    }
    *server = None;
    let Some(at) = at else { return };
    match DnsServer::start(at, zone.clone(), upstream) {
        Ok(started) => {
            tracing::info!(%at, "serving cluster DNS");
            *server = Some(started);
        }
        Err(e) => tracing::warn!(%at, error = %e, "cannot serve cluster DNS"),
    }
}
