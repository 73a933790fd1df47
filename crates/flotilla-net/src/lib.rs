//! `flotilla-net`: traffic to Services and between pods, the parts upstream's kube-proxy,
//! CoreDNS and a CNI plugin play, run by each node agent.
//!
//! [`routes`] turns a Service and its EndpointSlices into [`Route`]s: a frontend (the cluster IP
//! and port, a node port) and the endpoints in rotation behind it. That is a pure function,
//! tested alone. [`ServiceProxy`] keeps the routes of every Service current from two informers
//! and hands each Service's routes, whenever they change, to a [`DataPath`], behind the
//! [`Guarded`] checks, which carries them out: [`Nftables`] programs the kernel to DNAT, as
//! kube-proxy's nftables mode; [`Userspace`] listens on each frontend and relays every
//! connection to one endpoint, which needs no privileges where the service range is loopback
//! (the default, 127.43.0.0/16). Either serves host processes. Wasm guests connect through the
//! runtime, which looks each address up in [`Frontends`], handed the same routes, and connects
//! straight to the endpoint it picks: no relay and no kernel rule on their way. In front of
//! them all, the [`Activating`] path holds connections to Services at zero. The same loop keeps the cluster DNS's names ([`dns`])
//! current, which the node serves on the cluster IP of `kube-system/kube-dns`. [`PodNetwork`]
//! routes between nodes' pod ranges.

mod activator;
pub mod dns;
mod frontends;
mod guard;
mod nftables;
mod pods;
mod proxy;
mod routes;
pub mod tunnel;
mod userspace;

pub use activator::{Activating, Activation, Activator};
pub use frontends::{Frontends, Pick};
pub use guard::Guarded;
pub use nftables::{Nftables, TABLE, nft, route_localnet_record};
pub use pods::{PodNetwork, ROUTE_PROTOCOL};
pub use proxy::{DNS_SERVICE, ProxyConfig, ServiceProxy};
pub use routes::{Protocol, Route, routes};
pub use userspace::Userspace;

use flotilla_client::ObjectKey;

/// Where routes are carried out.
pub trait DataPath: Send + 'static {
    /// Makes `service`'s routes `routes` from now on, replacing what it had (none: the
    /// Service is gone). A route without endpoints refuses its connections at once.
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>);

    /// Carries out the syncs since the last commit, together: the proxy calls it after each
    /// batch of changed Services, and again a while later if it failed. A path that acts at
    /// each sync does nothing here.
    fn commit(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl DataPath for Box<dyn DataPath> {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        (**self).sync(service, routes);
    }

    fn commit(&mut self) -> Result<(), String> {
        (**self).commit()
    }
}

/// How a node carries traffic to Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// nftables where the node routes a pod network (its pod range is not loopback) and may
    /// program it (CAP_NET_ADMIN, `nft` installed); else userspace.
    #[default]
    Auto,
    Nftables,
    Userspace,
}

/// The data path `mode` asks for on this node, whose pods are on `pods`, beside `frontends`
/// (which guests connect through), both behind the guard of `allows` (the node's egress
/// policy), with `activator` holding connections to Services at zero on the node's address
/// `node_ip`.
pub fn data_path(
    mode: ProxyMode,
    pods: std::sync::Arc<PodNetwork>,
    allows: impl Fn(std::net::SocketAddr) -> bool + Send + 'static,
    frontends: Frontends,
    (activator, node_ip): (std::sync::Arc<Activator>, std::net::IpAddr),
) -> Result<Box<dyn DataPath>, String> {
    // The node routes a pod network to other nodes.
    let forwarding = pods.routed();
    let nftables = || {
        let path = Nftables::new(forwarding)?;
        tracing::info!(table = TABLE, "traffic to Services goes through nftables");
        Ok::<_, String>(Box::new(path) as Box<dyn DataPath>)
    };
    let userspace = || {
        tracing::info!("traffic to Services is relayed in userspace");
        Box::new(Userspace::new(Some(pods.clone()))) as Box<dyn DataPath>
    };
    let path = match mode {
        ProxyMode::Userspace => userspace(),
        ProxyMode::Nftables => nftables()?,
        // Pods on loopback (one host) are the relay's: a connection from another machine to a
        // node port, DNATed to 127.0.0.0/8, would be dropped as a martian.
        ProxyMode::Auto if !forwarding => userspace(),
        ProxyMode::Auto => nftables().unwrap_or_else(|why| {
            tracing::info!(%why, "nftables cannot be programmed here");
            userspace()
        }),
    };
    // The guard passes on real endpoints alone; the activator's own come after it.
    let activating = Activating::new(activator, node_ip, Some(pods), (path, frontends));
    Ok(Box::new(Guarded::new(allows, activating)))
}
