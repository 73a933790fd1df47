//! `flotilla-net`: traffic to Services, the part upstream's kube-proxy plays, run by each node
//! agent.
//!
//! [`routes`] turns a Service and its EndpointSlices into [`Route`]s: a frontend (the cluster IP
//! and port, a node port) and the endpoints in rotation behind it. That is a pure function,
//! tested alone. [`ServiceProxy`] keeps the routes of every Service current from two informers
//! and hands each Service's routes, whenever they change, to a [`DataPath`], which carries them
//! out: [`Userspace`] listens on each frontend and relays every connection to one endpoint. It
//! needs no privileges where the service range is loopback (the single-host default,
//! 127.43.0.0/16), and serves host processes and wasm guests alike, since both connect through
//! the host's sockets. The same loop keeps the cluster DNS's names ([`dns`]) current, which the
//! node serves on the cluster IP of `kube-system/kube-dns`. [`PodNetwork`] routes between
//! nodes' pod ranges, the part a CNI plugin plays.

pub mod dns;
mod pods;
mod proxy;
mod routes;
mod userspace;

pub use pods::{PodNetwork, ROUTE_PROTOCOL};
pub use proxy::{DNS_SERVICE, ProxyConfig, ServiceProxy};
pub use routes::{Route, routes};
pub use userspace::Userspace;

use flotilla_client::ObjectKey;

/// Where routes are carried out.
pub trait DataPath: Send + 'static {
    /// Makes `service`'s routes `routes` from now on, replacing what it had (none: the
    /// Service is gone). A route without endpoints refuses its connections at once.
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>);
}
