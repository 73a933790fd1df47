//! What every data path is handed: endpoints a Service may send to, on frontends it may take.
//! Endpoints are whatever an EndpointSlice says, and a slice written by hand could name the
//! node's own ports (which a relay or a DNAT on the host would reach on a guest's behalf) or a
//! frontend (a route that feeds on itself); and two Services could claim one address.

use std::collections::HashMap;
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
}

impl<P: std::fmt::Debug> std::fmt::Debug for Guarded<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").field("path", &self.path).field("frontends", &self.owners.len()).finish()
    }
}

impl<P: DataPath> Guarded<P> {
    /// `path`, handed only endpoints that `allows` passes (the node's egress policy).
    pub fn new(allows: impl Fn(SocketAddr) -> bool + Send + 'static, path: P) -> Guarded<P> {
        Guarded { path, allows: Box::new(allows), owners: HashMap::new() }
    }
}

impl<P: DataPath> DataPath for Guarded<P> {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        self.owners.retain(|_, owner| owner != service);
        let mut kept = Vec::with_capacity(routes.len());
        for mut route in routes.iter().cloned() {
            if self.owners.contains_key(&route.frontend) {
                tracing::warn!(%service, frontend = %route.frontend, "the frontend is another Service's");
                continue;
            }
            let before = route.endpoints.len();
            route.endpoints.retain(|e| {
                (self.allows)(*e) && !self.owners.contains_key(e) && !routes.iter().any(|r| r.frontend == *e)
            });
            if route.endpoints.len() < before {
                tracing::warn!(%service, frontend = %route.frontend, "endpoints that are the node's own, or frontends, are left out");
            }
            kept.push(route);
        }
        for route in &kept {
            self.owners.insert(route.frontend, service.clone());
        }
        self.path.sync(service, kept);
    }

    fn commit(&mut self) {
        self.path.commit();
    }
}
