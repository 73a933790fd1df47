//! Scale from zero: the Knative activator's part, in the node's data path. A Service scales
//! from zero when an HPA with `minReplicas: 0` (the HPAScaleToZero rule) names it as the
//! object of an `Object` metric: that HPA scales its workload on the Service's requests, down
//! to none when they stop. A connection to such a Service while it has no endpoint is not
//! refused but held: the node tells of the demand ([`Activation::Held`], which the agent
//! writes as an Event the HPA wakes on, and [`Activator::held`], which the metrics count as
//! requests in flight), and the connection goes on to the first endpoint that comes into
//! rotation. One that waits longer than the activator's timeout is answered `503` with a body
//! that says why ([`Activation::TimedOut`]), never left hanging.
//!
//! [`Activating`] puts it in front of every data path, as Knative puts its activator in the
//! path of a revision at zero: each TCP frontend of a Service that scales from zero gets a
//! holding listener on the node's address, and while the Service has no endpoint the paths
//! behind are handed that listener as its one endpoint. The kernel DNATs to it, the relay
//! relays to it and a guest connects to it, alike; with endpoints, they go straight to them
//! and the activator is out of the way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_client::ObjectKey;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::frontends::Rotation;
use crate::userspace::Frontend;
use crate::{DataPath, PodNetwork, Protocol, Route};

/// While connections stay held, the demand is told again this often: an Event lost, or an
/// HPA that could not scale at the time, is asked again. Connections that time out are told
/// of no more often.
const RETELL: Duration = Duration::from_secs(5);
/// Connections held at once on this node, for all Services: each holds a descriptor.
const MAX_HELD: usize = 4096;
/// Connections held at once for one Service: one Service's flood leaves room for the others'.
const MAX_HELD_PER_SERVICE: usize = MAX_HELD / 4;

/// What the activator tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// A connection to this Service is held until it has an endpoint: the first of a wake-up,
    /// or one still waiting [`RETELL`] later.
    Held(ObjectKey),
    /// A held connection to this Service waited in vain and was answered `503`.
    TimedOut(ObjectKey, Duration),
}

/// The Services that scale from zero, and the connections held for them.
#[derive(Debug)]
pub struct Activator {
    services: RwLock<HashSet<ObjectKey>>,
    held: Mutex<HashMap<ObjectKey, Held>>,
    total: std::sync::atomic::AtomicUsize,
    tell: mpsc::UnboundedSender<Activation>,
    timeout: Duration,
    outcomes: Mutex<Outcomes>,
}

/// What became of the connections held so far (for the node's `/metrics`): how many went on to
/// an endpoint, and how long they waited in all; and how many were let go, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub passed: u64,
    pub waited: Duration,
    pub timed_out: u64,
    pub full: u64,
    pub left: u64,
    pub closed: u64,
}

#[derive(Debug, Default)]
struct Held {
    count: usize,
    /// When the demand, and a connection's timing out, were last told.
    told: Option<Instant>,
    failure_told: Option<Instant>,
}

/// Why a connection is no longer held, with no endpoint to go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unheld {
    /// No endpoint came within the activator's timeout.
    TimedOut(Duration),
    /// This node holds as many connections, for the Service or for all, as it may.
    Full,
    /// The Service no longer scales from zero (or is gone), and has no endpoint.
    Closed,
    /// The client went away.
    Left,
}

impl Activator {
    /// An activator whose held connections wait `timeout` at most; what it tells comes out of
    /// the receiver.
    pub fn new(timeout: Duration) -> (Arc<Activator>, mpsc::UnboundedReceiver<Activation>) {
        let (tell, told) = mpsc::unbounded_channel();
        let activator = Activator {
            services: RwLock::default(),
            held: Mutex::default(),
            total: Default::default(),
            tell,
            timeout,
            outcomes: Mutex::default(),
        };
        (Arc::new(activator), told)
    }

    /// Whether connections to `service` are held while it has no endpoint.
    pub fn scales_from_zero(&self, service: &ObjectKey) -> bool {
        self.services.read().expect("activator lock").contains(service)
    }

    /// Makes `services` those that scale from zero; returns those whose standing changed.
    pub(crate) fn set_services(&self, services: HashSet<ObjectKey>) -> Vec<ObjectKey> {
        let mut current = self.services.write().expect("activator lock");
        let changed = current.symmetric_difference(&services).cloned().collect();
        *current = services;
        changed
    }

    /// The connections held now, by Service.
    pub fn held(&self) -> Vec<(ObjectKey, usize)> {
        let held = self.held.lock().expect("activator lock");
        held.iter().map(|(service, held)| (service.clone(), held.count)).collect()
    }

    /// Holds a connection to `service` until `rotation` has an endpoint, and returns that
    /// rotation; or returns why it is let go: `left` ended (the client went away), the timeout,
    /// or, without waiting, this node holds as many as it may (the demand is told all the same).
    pub(crate) async fn hold(
        &self,
        service: &ObjectKey,
        rotation: &mut watch::Receiver<Arc<Rotation>>,
        left: impl Future<Output = ()>,
    ) -> Result<Arc<Rotation>, Unheld> {
        let since = Instant::now();
        let outcome = self.wait(service, rotation, left, since).await;
        let mut outcomes = self.outcomes.lock().expect("activator lock");
        match outcome {
            Ok(_) => {
                outcomes.passed += 1;
                outcomes.waited += since.elapsed();
            }
            Err(Unheld::TimedOut(_)) => outcomes.timed_out += 1,
            Err(Unheld::Full) => outcomes.full += 1,
            Err(Unheld::Left) => outcomes.left += 1,
            Err(Unheld::Closed) => outcomes.closed += 1,
        }
        outcome
    }

    /// What became of the connections held so far.
    pub fn outcomes(&self) -> Outcomes {
        *self.outcomes.lock().expect("activator lock")
    }

    async fn wait(
        &self,
        service: &ObjectKey,
        rotation: &mut watch::Receiver<Arc<Rotation>>,
        left: impl Future<Output = ()>,
        since: Instant,
    ) -> Result<Arc<Rotation>, Unheld> {
        use std::sync::atomic::Ordering;
        {
            let mut held = self.held.lock().expect("activator lock");
            let entry = held.entry(service.clone()).or_default();
            self.retell(service, entry, since);
            if entry.count >= MAX_HELD_PER_SERVICE || self.total.load(Ordering::Acquire) >= MAX_HELD {
                if entry.count == 0 {
                    held.remove(service);
                }
                return Err(Unheld::Full);
            }
            entry.count += 1;
            self.total.fetch_add(1, Ordering::AcqRel);
        }
        let _held = HeldGuard { activator: self, service };
        let mut retell = tokio::time::interval_at(since + RETELL, RETELL);
        let ready = async {
            let mut left = std::pin::pin!(left);
            loop {
                tokio::select! {
                    changed = rotation.wait_for(|r| !r.route.endpoints.is_empty()) => {
                        return changed.map(|r| r.clone()).map_err(|_| Unheld::Closed);
                    }
                    () = &mut left => return Err(Unheld::Left),
                    _ = retell.tick() => {
                        let mut held = self.held.lock().expect("activator lock");
                        if let Some(entry) = held.get_mut(service) {
                            self.retell(service, entry, Instant::now());
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(self.timeout, ready).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let mut held = self.held.lock().expect("activator lock");
                if let Some(entry) = held.get_mut(service)
                    && entry.failure_told.is_none_or(|told| told.elapsed() >= RETELL)
                {
                    entry.failure_told = Some(Instant::now());
                    let _ = self.tell.send(Activation::TimedOut(service.clone(), self.timeout));
                }
                Err(Unheld::TimedOut(self.timeout))
            }
        }
    }

    fn retell(&self, service: &ObjectKey, held: &mut Held, now: Instant) {
        if held.told.is_none_or(|told| now.duration_since(told) >= RETELL) {
            held.told = Some(now);
            let _ = self.tell.send(Activation::Held(service.clone()));
        }
    }
}

/// One held connection, counted until dropped.
struct HeldGuard<'a> {
    activator: &'a Activator,
    service: &'a ObjectKey,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.activator.total.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let mut held = self.activator.held.lock().expect("activator lock");
        if let Some(entry) = held.get_mut(self.service) {
            entry.count -= 1;
            if entry.count == 0 {
                held.remove(self.service);
            }
        }
    }
}

/// A data path with the activator in front: routes of Services that scale from zero and have no
/// endpoint lead to a holding listener.
pub struct Activating<P> {
    path: P,
    activator: Arc<Activator>,
    /// Where holding listeners listen: the node's address.
    node_ip: std::net::IpAddr,
    pods: Option<Arc<PodNetwork>>,
    /// Connections held or relayed by the holding listeners at once.
    relays: Arc<tokio::sync::Semaphore>,
    holders: HashMap<ObjectKey, Vec<Holder>>,
}

impl<P: std::fmt::Debug> std::fmt::Debug for Activating<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activating").field("path", &self.path).field("holders", &self.holders.len()).finish()
    }
}

/// The holding listener of one frontend of a Service that scales from zero: kept as long as it
/// does, so that a connection held is never cut by the endpoints' coming.
#[derive(Debug)]
struct Holder {
    frontend: (Protocol, std::net::SocketAddr),
    listener: Frontend,
}

impl<P: DataPath> Activating<P> {
    /// `path`, with `activator` holding connections on listeners at `node_ip`, and reaching
    /// other nodes' pods through `pods`.
    pub fn new(
        activator: Arc<Activator>,
        node_ip: std::net::IpAddr,
        pods: Option<Arc<PodNetwork>>,
        path: P,
    ) -> Activating<P> {
        let relays = Arc::new(tokio::sync::Semaphore::new(MAX_HELD));
        Activating { path, activator, node_ip, pods, relays, holders: HashMap::new() }
    }

    /// The holder of `route`'s frontend, kept from `old` or opened, its rotation `route`.
    fn holder(&self, service: &ObjectKey, route: &Route, old: &mut Vec<Holder>) -> std::io::Result<Holder> {
        let frontend = (route.protocol, route.frontend);
        if let Some(i) = old.iter().position(|h| h.frontend == frontend) {
            let holder = old.swap_remove(i);
            holder.listener.follow(route.clone());
            return Ok(holder);
        }
        let at = std::net::SocketAddr::new(self.node_ip, 0);
        let held = Some((self.activator.clone(), service.clone()));
        let listener = Frontend::open(at, route.clone(), self.relays.clone(), self.pods.clone(), held)?;
        Ok(Holder { frontend, listener })
    }
}

impl<P: DataPath> DataPath for Activating<P> {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        let mut old = self.holders.remove(service).unwrap_or_default();
        let mut kept = Vec::new();
        let scales = self.activator.scales_from_zero(service);
        let routes = routes
            .into_iter()
            .map(|mut route| {
                // Held connections are relayed: TCP alone.
                if !scales || route.protocol != Protocol::Tcp {
                    return route;
                }
                match self.holder(service, &route, &mut old) {
                    Ok(holder) => {
                        if route.endpoints.is_empty() {
                            route.endpoints = vec![holder.listener.at];
                        }
                        kept.push(holder);
                    }
                    Err(e) => tracing::warn!(%service, error = %e, "cannot listen to hold connections"),
                }
                route
            })
            .collect();
        // What is left of `old` closes: its Service no longer scales from zero, or is gone.
        drop(old);
        if !kept.is_empty() {
            self.holders.insert(service.clone(), kept);
        }
        self.path.sync(service, routes);
    }

    fn commit(&mut self) -> Result<(), String> {
        self.path.commit()
    }
}

/// The `503` a connection let go without an endpoint gets (what waits on a Service that
/// scales from zero is a request to a function).
pub(crate) fn unavailable(service: &ObjectKey, why: Unheld) -> Vec<u8> {
    let body = match why {
        Unheld::TimedOut(waited) => format!(
            "Service {service} has no ready endpoint after {}s: its workload could not be scaled up from zero in time (see the Service's and its HPA's Events)\n",
            waited.as_secs()
        ),
        Unheld::Full => format!(
            "Service {service} is scaling up from zero, and this node holds as many requests as it may: retry later\n"
        ),
        Unheld::Closed | Unheld::Left => {
            format!("Service {service} no longer scales from zero, and has no endpoint\n")
        }
    };
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The Services the HPAs `hpas` scale from zero.
pub(crate) fn scaled_from_zero<'a>(
    hpas: impl IntoIterator<Item = &'a k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>,
) -> HashSet<ObjectKey> {
    let mut services = HashSet::new();
    for hpa in hpas {
        for name in flotilla_api::kinds::scaled_from_zero(hpa) {
            services.insert(ObjectKey::new(hpa.metadata.namespace.as_deref(), name));
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protocol, Route};

    fn route(endpoints: Vec<std::net::SocketAddr>) -> Route {
        let frontend = "127.43.0.9:80".parse().unwrap();
        Route { protocol: Protocol::Tcp, frontend, endpoints, affinity: None, keep_source: true }
    }

    #[tokio::test]
    async fn a_held_connection_goes_on_when_an_endpoint_comes_and_the_demand_is_told_once() {
        let (activator, mut told) = Activator::new(Duration::from_secs(5));
        let service = ObjectKey::new(Some("default"), "fn");
        let (rotation, rotations) = watch::channel(Arc::new(Rotation::new(route(vec![]))));
        let holds: Vec<_> = (0..3)
            .map(|_| {
                let (activator, service, mut rotations) = (activator.clone(), service.clone(), rotations.clone());
                tokio::spawn(async move { activator.hold(&service, &mut rotations, std::future::pending()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(activator.held(), [(service.clone(), 3)]);
        assert_eq!(told.recv().await, Some(Activation::Held(service.clone())));
        let endpoint = "127.0.0.1:8080".parse().unwrap();
        rotation.send_replace(Arc::new(Rotation::new(route(vec![endpoint]))));
        for hold in holds {
            assert_eq!(hold.await.unwrap().unwrap().route.endpoints, [endpoint]);
        }
        assert!(activator.held().is_empty());
        assert!(told.try_recv().is_err(), "told more than once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_held_in_vain_times_out_and_is_told() {
        let (activator, mut told) = Activator::new(Duration::from_secs(28));
        let service = ObjectKey::new(Some("default"), "fn");
        let (_rotation, mut rotations) = watch::channel(Arc::new(Rotation::new(route(vec![]))));
        let waited = activator.hold(&service, &mut rotations, std::future::pending()).await.unwrap_err();
        assert_eq!(waited, Unheld::TimedOut(Duration::from_secs(28)));
        let mut all = Vec::new();
        while let Ok(activation) = told.try_recv() {
            all.push(activation);
        }
        // Told at once, again every five seconds while it waited, then its end.
        assert_eq!(all.iter().filter(|a| matches!(a, Activation::Held(..))).count(), 6, "{all:?}");
        assert_eq!(all.last(), Some(&Activation::TimedOut(service.clone(), Duration::from_secs(28))));
        assert!(activator.held().is_empty());
        let response = String::from_utf8(unavailable(&service, waited)).unwrap();
        assert!(response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{response}");
        assert!(response.ends_with("no ready endpoint after 28s: its workload could not be scaled up from zero in time (see the Service's and its HPA's Events)\n"));
    }

    #[tokio::test]
    async fn a_service_that_scales_from_zero_holds_connections_until_an_endpoint_comes() {
        use crate::userspace::tests::{ask, free_port, named};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (activator, mut told) = Activator::new(Duration::from_millis(500));
        let service = ObjectKey::new(Some("default"), "fn");
        let frontend = free_port("127.0.0.26");
        let node_ip = "127.0.0.29".parse().unwrap();
        let mut path = Activating::new(activator.clone(), node_ip, None, crate::Userspace::new(None));
        let route =
            |endpoints| Route { protocol: Protocol::Tcp, frontend, endpoints, affinity: None, keep_source: true };
        // Its frontend opened before it came to scale from zero, then its last pod gone.
        let old = named("127.0.0.28:0", "old").await;
        path.sync(&service, vec![route(vec![old])]);
        assert_eq!(ask(frontend).await.unwrap(), "old");
        activator.set_services([service.clone()].into());
        path.sync(&service, vec![route(vec![])]);
        let asked: Vec<_> = (0..3).map(|_| tokio::spawn(ask(frontend))).collect();
        assert_eq!(told.recv().await, Some(Activation::Held(service.clone())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(activator.held(), [(service.clone(), 3)]);
        // A client that goes away is no longer held, nor counted.
        drop(tokio::net::TcpStream::connect(frontend).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(activator.held(), [(service.clone(), 3)]);
        path.sync(&service, vec![route(vec![named("127.0.0.27:0", "a").await])]);
        for asked in asked {
            assert_eq!(asked.await.unwrap().unwrap(), "a");
        }
        // None comes: a 503 that says why, after the timeout.
        path.sync(&service, vec![route(vec![])]);
        let mut stream = tokio::net::TcpStream::connect(frontend).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nhost: fn\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
        assert!(answer.contains("Service default/fn has no ready endpoint"), "{answer}");

        // No longer scaling from zero: refused at once, as any Service without endpoints.
        activator.set_services(Default::default());
        path.sync(&service, vec![route(vec![])]);
        assert_eq!(ask(frontend).await.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn services_scale_from_zero_when_an_hpa_at_zero_names_them() {
        let hpa = |min: Option<i32>, kind: &str| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "ns", "name": "h"},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fn"},
                    "minReplicas": min, "maxReplicas": 3,
                    "metrics": [{"type": "Object", "object": {
                        "describedObject": {"apiVersion": "v1", "kind": kind, "name": "fn"},
                        "metric": {"name": "requests_in_flight"},
                        "target": {"type": "AverageValue", "averageValue": "10"}}}]
                }
            }))
            .unwrap()
        };
        let hpas = [hpa(Some(0), "Service"), hpa(Some(1), "Service"), hpa(None, "Service"), hpa(Some(0), "Ingress")];
        assert_eq!(scaled_from_zero(&hpas[..1]), HashSet::from([ObjectKey::new(Some("ns"), "fn")]));
        assert!(scaled_from_zero(&hpas[1..]).is_empty());
    }
}
