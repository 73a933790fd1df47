//! The routes in force on this node, by frontend, for a socket layer that connects on a
//! client's behalf: the wasm runtime looks up each address a guest connects to, and a
//! connection to a Service goes straight to an endpoint it picks here, with no relay in between
//! and no kernel rule (which an unprivileged agent could not program anyway).
//!
//! [`Frontends`] is a [`DataPath`]: the agent hands every route both to it and to the path that
//! serves host processes, behind the same guard, so a guest reaches exactly what a host process
//! does. [`Rotation`] is how an endpoint is picked for a new connection, here and in the
//! userspace relay alike.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use flotilla_client::ObjectKey;

use crate::{DataPath, Protocol, Route};

/// Clients whose endpoint is remembered for `sessionAffinity` per frontend, at most.
const MAX_AFFINITY: usize = 65_536;

/// A route's endpoints, and which one each client went to last, when, under `sessionAffinity:
/// ClientIP`.
#[derive(Debug)]
pub(crate) struct Rotation {
    pub(crate) route: Route,
    affinity: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Rotation {
    pub(crate) fn new(route: Route) -> Rotation {
        Rotation { route, affinity: Mutex::default() }
    }

    /// The same clients' endpoints, for `route`: a sync that changes the endpoints keeps a
    /// client on its own while it stays in rotation.
    pub(crate) fn followed_by(&self, route: Route) -> Rotation {
        let affinity = if route.affinity.is_some() {
            std::mem::take(&mut *self.affinity.lock().expect("affinity lock"))
        } else {
            HashMap::new()
        };
        Rotation { route, affinity: Mutex::new(affinity) }
    }

    /// The endpoints to try, in order, for a new connection from `client`: the one it went to
    /// last under affinity, then the others at random.
    pub(crate) fn candidates(&self, client: IpAddr) -> Vec<SocketAddr> {
        let mut candidates = self.route.endpoints.clone();
        fastrand::shuffle(&mut candidates);
        if let Some(timeout) = self.route.affinity {
            let now = Instant::now();
            let mut clients = self.affinity.lock().expect("affinity lock");
            if clients.len() >= MAX_AFFINITY {
                clients.retain(|_, (_, at)| now.duration_since(*at) < timeout);
            }
            if let Some((endpoint, _)) = clients.get(&client).filter(|(_, at)| now.duration_since(*at) < timeout)
                && let Some(i) = candidates.iter().position(|c| c == endpoint)
            {
                candidates.swap(0, i);
            }
        }
        candidates
    }

    /// `client`'s connection went to `endpoint`: under affinity, its next ones go there too.
    pub(crate) fn connected(&self, client: IpAddr, endpoint: SocketAddr) {
        if self.route.affinity.is_some() {
            let mut clients = self.affinity.lock().expect("affinity lock");
            if clients.len() < MAX_AFFINITY || clients.contains_key(&client) {
                clients.insert(client, (endpoint, Instant::now()));
            }
        }
    }

    /// One endpoint for a connection from `client`, remembered as its own; `None` when there is
    /// none in rotation.
    fn pick(&self, client: IpAddr) -> Option<SocketAddr> {
        let endpoint = *self.candidates(client).first()?;
        self.connected(client, endpoint);
        Some(endpoint)
    }
}

/// The routes in force, by protocol and frontend. Cheap to clone: the clones share one table.
#[derive(Debug, Clone, Default)]
pub struct Frontends(Arc<RwLock<Table>>);

#[derive(Debug, Default)]
struct Table {
    routes: HashMap<(Protocol, SocketAddr), Arc<Rotation>>,
    /// The same, by Service: what each holds.
    held: HashMap<ObjectKey, Vec<(Protocol, SocketAddr)>>,
}

/// Where a connection to a frontend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pick {
    /// To this endpoint.
    Endpoint(SocketAddr),
    /// Nowhere: the Service has no endpoint in rotation, and the connection is refused.
    Refused,
}

impl Frontends {
    pub fn new() -> Frontends {
        Frontends::default()
    }

    /// Where a `protocol` connection from `client` to `to` goes: `None` if `to` is no frontend
    /// (the connection goes where it was asked to). An IPv4-mapped address is its IPv4 one.
    pub fn pick(&self, protocol: Protocol, to: SocketAddr, client: IpAddr) -> Option<Pick> {
        let to = SocketAddr::new(to.ip().to_canonical(), to.port());
        let rotation = self.0.read().expect("frontends lock").routes.get(&(protocol, to))?.clone();
        Some(rotation.pick(client.to_canonical()).map_or(Pick::Refused, Pick::Endpoint))
    }
}

impl DataPath for Frontends {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        let mut table = self.0.write().expect("frontends lock");
        let mut old: HashMap<_, _> = table
            .held
            .remove(service)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|key| table.routes.remove(&key).map(|rotation| (key, rotation)))
            .collect();
        let keys: Vec<_> = routes.iter().map(|route| (route.protocol, route.frontend)).collect();
        for route in routes {
            let key = (route.protocol, route.frontend);
            let rotation = match old.remove(&key) {
                Some(before) => before.followed_by(route),
                None => Rotation::new(route),
            };
            table.routes.insert(key, Arc::new(rotation));
        }
        if !keys.is_empty() {
            table.held.insert(service.clone(), keys);
        }
    }
}

/// Both data paths carry out every route: the kernel's or the relay's for host processes, and
/// the connect-time table for guests.
impl<A: DataPath, B: DataPath> DataPath for (A, B) {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        self.0.sync(service, routes.clone());
        self.1.sync(service, routes);
    }

    fn commit(&mut self) -> Result<(), String> {
        self.0.commit()?;
        self.1.commit()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn route(frontend: &str, endpoints: &[&str], affinity: Option<Duration>) -> Route {
        Route {
            protocol: Protocol::Tcp,
            frontend: frontend.parse().unwrap(),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            affinity,
            keep_source: true,
        }
    }

    #[test]
    fn a_frontend_picks_its_endpoints_keeps_affinity_across_syncs_and_refuses_without_any() {
        let frontends = Frontends::new();
        let mut path = crate::Guarded::new(|at: SocketAddr| at.port() != 10250, frontends.clone());
        let web = ObjectKey::new(Some("default"), "web");
        let client: IpAddr = "10.244.1.7".parse().unwrap();
        let (a, b): (SocketAddr, SocketAddr) = ("10.244.1.2:8080".parse().unwrap(), "10.244.2.2:8080".parse().unwrap());
        let to: SocketAddr = "10.96.0.5:80".parse().unwrap();
        path.sync(&web, vec![route("10.96.0.5:80", &["10.244.1.2:8080", "10.244.2.2:8080"], None)]);

        let picked: HashSet<_> = (0..64).map(|_| frontends.pick(Protocol::Tcp, to, client)).collect();
        assert_eq!(picked, HashSet::from([Some(Pick::Endpoint(a)), Some(Pick::Endpoint(b))]));
        let mapped: SocketAddr = "[::ffff:10.96.0.5]:80".parse().unwrap();
        assert!(frontends.pick(Protocol::Tcp, mapped, client).is_some(), "an IPv4-mapped frontend");
        assert_eq!(frontends.pick(Protocol::Udp, to, client), None, "no UDP port");
        assert_eq!(frontends.pick(Protocol::Tcp, "10.96.0.5:81".parse().unwrap(), client), None);

        // Affinity holds a client to its endpoint, also when the endpoints change around it.
        path.sync(&web, vec![route("10.96.0.5:80", &["10.244.1.2:8080", "10.244.2.2:8080"], Some(Duration::MAX))]);
        let first = frontends.pick(Protocol::Tcp, to, client);
        path.sync(
            &web,
            vec![route(
                "10.96.0.5:80",
                &["10.244.1.2:8080", "10.244.2.2:8080", "10.244.3.2:8080"],
                Some(Duration::MAX),
            )],
        );
        for _ in 0..16 {
            assert_eq!(frontends.pick(Protocol::Tcp, to, client), first);
        }

        // Endpoints the guard refuses are never picked; no endpoint left refuses.
        path.sync(&web, vec![route("10.96.0.5:80", &["10.0.0.1:10250"], None)]);
        assert_eq!(frontends.pick(Protocol::Tcp, to, client), Some(Pick::Refused));
        // A frontend on the node's own port is not the Service's to take.
        path.sync(&web, vec![route("10.0.0.1:10250", &["10.244.1.2:8080"], None)]);
        assert_eq!(frontends.pick(Protocol::Tcp, "10.0.0.1:10250".parse().unwrap(), client), None);
        assert_eq!(frontends.pick(Protocol::Tcp, to, client), None, "the old frontend is gone");
        path.sync(&web, Vec::new());
        assert!(frontends.0.read().unwrap().routes.is_empty() && frontends.0.read().unwrap().held.is_empty());
    }
}
