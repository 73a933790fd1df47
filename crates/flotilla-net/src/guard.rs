//! What every data path is handed: endpoints a Service may send to, on frontends it may take.
//! Endpoints are whatever an EndpointSlice says, and a slice written by hand could name the
//! node's own ports (which a relay or a DNAT on the host would reach on a guest's behalf) or a
//! frontend (a route that feeds on itself). A frontend is the API's allocation (a cluster IP, a
//! node port) or a load balancer's port on the node's address, which any Service may ask for:
//! one on the node's own ports, or one another Service holds, is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use flotilla_client::ObjectKey;

use crate::{DataPath, Route};

/// A data path behind the guard.
pub struct Guarded<P> {
    path: P,
    allows: Box<dyn Fn(SocketAddr) -> bool + Send>,
    /// Which Service each frontend address handed on is: an address and port is one Service's,
    /// whatever the protocol (cluster IPs are one Service's, and node ports are allocated
    /// across protocols).
    owners: HashMap<SocketAddr, ObjectKey>,
    /// The same, by Service: what each holds.
    held: HashMap<ObjectKey, Vec<SocketAddr>>,
    /// Services that were refused a frontend another held, with the routes they asked for:
    /// synced again when it is given up.
    refused: BTreeMap<ObjectKey, Vec<Route>>,
}

impl<P: std::fmt::Debug> std::fmt::Debug for Guarded<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").field("path", &self.path).field("frontends", &self.owners.len()).finish()
    }
}

impl<P: DataPath> Guarded<P> {
    /// `path`, handed only endpoints and frontends that `allows` passes (the node's egress
    /// policy, which names the node's own endpoints).
    pub fn new(allows: impl Fn(SocketAddr) -> bool + Send + 'static, path: P) -> Guarded<P> {
        Guarded {
            path,
            allows: Box::new(allows),
            owners: HashMap::new(),
            held: HashMap::new(),
            refused: BTreeMap::new(),
        }
    }

    fn guard(&mut self, service: &ObjectKey, routes: Vec<Route>) -> Vec<Route> {
        self.refused.remove(service);
        let mut kept: Vec<Route> = Vec::with_capacity(routes.len());
        let mut taken = HashSet::new();
        for mut route in routes.iter().cloned() {
            if !(self.allows)(route.frontend) {
                tracing::warn!(%service, frontend = %route.frontend, "the frontend is one of the node's own endpoints");
                continue;
            }
            if self.owners.get(&route.frontend).is_some_and(|owner| owner != service) {
                tracing::warn!(%service, frontend = %route.frontend, "the frontend is another Service's");
                self.refused.insert(service.clone(), routes.clone());
                continue;
            }
            // One route per frontend and protocol: the first port that asks.
            if !taken.insert((route.protocol, route.frontend)) {
                tracing::warn!(%service, frontend = %route.frontend, "two ports of the Service share a frontend");
                continue;
            }
            let before = route.endpoints.len();
            let api = is_api_service(service);
            route.endpoints.retain(|e| {
                (self.allows)(*e)
                    && (api || !is_node_loopback(e.ip()))
                    && !self.owners.contains_key(e)
                    && !routes.iter().any(|r| r.frontend == *e)
            });
            if route.endpoints.len() < before {
                tracing::warn!(%service, frontend = %route.frontend, "endpoints that are the node's own (its ports, its loopback), or frontends, are left out");
            }
            kept.push(route);
        }
        kept
    }
}

impl<P: DataPath> DataPath for Guarded<P> {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        let kept = self.guard(service, routes);
        let held = self.held.remove(service).unwrap_or_default();
        for frontend in &held {
            self.owners.remove(frontend);
        }
        for route in &kept {
            self.owners.insert(route.frontend, service.clone());
        }
        if !kept.is_empty() {
            self.held.insert(service.clone(), kept.iter().map(|route| route.frontend).collect());
        }
        self.path.sync(service, kept);
        // A frontend given up may be what a refused Service waits for.
        if held.iter().any(|frontend| !self.owners.contains_key(frontend)) {
            for (waiting, routes) in std::mem::take(&mut self.refused) {
                self.sync(&waiting, routes);
            }
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        self.path.commit()
    }
}

/// Whether `ip` is one of the node's own loopback addresses, where its host services listen
/// (127.0.0.1, a resolver's 127.0.0.53, `::1`): `127.0.0.0/16`. Pods' and Services' ranges on
/// loopback lie elsewhere in 127.0.0.0/8. An endpoint here would take a pod's connection to
/// the host's loopback on its behalf (the relay connects from the host; the kernel path's DNAT
/// lands there), which the node keeps its containers from (upstream refuses loopback endpoints
/// in validation).
fn is_node_loopback(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.octets()[..2] == [127, 0],
        std::net::IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// The API server's own Service (`default/kubernetes`), whose endpoint is the API server's
/// address: on one host, a loopback one.
fn is_api_service(service: &ObjectKey) -> bool {
    service.namespace.as_deref() == Some("default") && service.name == "kubernetes"
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::Protocol;

    /// A data path that records what it was handed.
    #[derive(Debug, Default, Clone)]
    struct Recorded(Arc<Mutex<BTreeMap<ObjectKey, Vec<Route>>>>);

    impl DataPath for Recorded {
        fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
            self.0.lock().unwrap().insert(service.clone(), routes);
        }
    }

    fn route(frontend: &str, endpoints: &[&str]) -> Route {
        Route {
            protocol: Protocol::Tcp,
            frontend: frontend.parse().unwrap(),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            affinity: None,
            keep_source: true,
        }
    }

    #[test]
    fn the_nodes_own_ports_duplicates_and_anothers_frontend_are_refused_until_it_is_free() {
        let recorded = Recorded::default();
        let protected: SocketAddr = "10.0.0.1:10250".parse().unwrap();
        let mut path = Guarded::new(move |at| at != protected, recorded.clone());
        let (web, thief) = (ObjectKey::new(Some("a"), "web"), ObjectKey::new(Some("a"), "thief"));
        let handed = |service: &ObjectKey| recorded.0.lock().unwrap().get(service).cloned().unwrap_or_default();

        path.sync(&web, vec![route("127.43.0.5:80", &["10.244.1.2:8080", "10.0.0.1:10250"])]);
        assert_eq!(handed(&web), [route("127.43.0.5:80", &["10.244.1.2:8080"])], "the node API is left out");
        // The host's loopback services are no Service's endpoints, but the API server's own.
        let (sneaky, api) = (ObjectKey::new(Some("a"), "sneaky"), ObjectKey::new(Some("default"), "kubernetes"));
        path.sync(&sneaky, vec![route("127.43.0.7:80", &["127.0.0.1:2379", "127.0.0.53:53", "127.44.0.9:80"])]);
        assert_eq!(handed(&sneaky), [route("127.43.0.7:80", &["127.44.0.9:80"])]);
        path.sync(&api, vec![route("127.43.0.1:443", &["127.0.0.1:6443"])]);
        assert_eq!(handed(&api), [route("127.43.0.1:443", &["127.0.0.1:6443"])]);
        // A load balancer on the node API's port, a second port on one frontend, and web's
        // frontend: all refused.
        path.sync(
            &thief,
            vec![
                route("10.0.0.1:10250", &["10.244.1.3:8080"]),
                route("127.43.0.9:80", &["10.244.1.3:8080"]),
                route("127.43.0.9:80", &["10.244.1.4:8080"]),
                route("127.43.0.5:80", &["10.244.1.3:8080"]),
            ],
        );
        assert_eq!(handed(&thief), [route("127.43.0.9:80", &["10.244.1.3:8080"])]);
        // web goes: the frontend it held is handed to the Service that waited for it.
        path.sync(&web, Vec::new());
        assert_eq!(
            handed(&thief),
            [route("127.43.0.9:80", &["10.244.1.3:8080"]), route("127.43.0.5:80", &["10.244.1.3:8080"])]
        );
    }
}
