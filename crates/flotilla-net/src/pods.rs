//! The flat pod network, the part a CNI plugin plays (flannel's `host-gw` backend): every node's
//! pods take addresses from the node's `spec.podCIDR`, and reach every other node's pods at
//! theirs, with no NAT.
//!
//! On one host the ranges lie in 127.0.0.0/8, which Linux delivers locally as a whole: nothing
//! is programmed and nothing needs privileges. Otherwise the agent makes its own range local
//! (`local <range> dev lo`: a guest binds any address in it, with no address to add per pod)
//! and routes each other node's range via that node's InternalIP, as `host-gw` does. Routes
//! need CAP_NET_ADMIN and the nodes on one link; they are tagged with [`ROUTE_PROTOCOL`], so a
//! restarted agent finds its own, keeps what is still right (established connections never
//! notice) and removes what is not.
//!
//! [`PodNetwork::contains`] answers which addresses are pods': a guest's connection to one
//! leaves from the pod's own address, so the peer sees who called.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock};

use flotilla_api::Cidr;
use flotilla_client::{Cache, Change, Informer};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The routing protocol number (`ip route … proto N`) on the routes an agent programs: its
/// mark of ownership, as a routing daemon's.
pub const ROUTE_PROTOCOL: u8 = 241;

/// Every node's pod range, kept current from the Node objects, and this node's routes to them.
#[derive(Debug)]
pub struct PodNetwork {
    ranges: Arc<RwLock<Vec<Cidr>>>,
    task: JoinHandle<()>,
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // The routes stay: pods elsewhere keep reaching this host's pods while it restarts.
        self.task.abort();
    }
}

impl PodNetwork {
    /// Watches Nodes through `client`; routes to their ranges unless `own` (this node's range)
    /// is loopback.
    pub fn start(client: kube::Client, node_name: String, own: Cidr) -> PodNetwork {
        let ranges = Arc::new(RwLock::new(vec![own]));
        let changed = Arc::new(Notify::new());
        let mut nodes = Informer::<Node>::all(client);
        let wake = changed.clone();
        nodes.on_change(move |_: Change<'_, Node>| wake.notify_one());
        let cache = nodes.cache();
        let routes = Routes { node_name, own, programmed: BTreeMap::new(), local: false };
        let task = tokio::spawn({
            let ranges = ranges.clone();
            async move {
                let informer = tokio::spawn(nodes.run());
                sync(cache, changed, ranges, routes).await;
                informer.abort();
            }
        });
        PodNetwork { ranges, task }
    }

    /// Whether `ip` is a pod's address, on this node or another.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(ip) = ip.to_canonical() else { return false };
        self.ranges.read().expect("pod ranges lock").iter().any(|range| range.contains(ip))
    }
}

async fn sync(nodes: Cache<Node>, changed: Arc<Notify>, ranges: Arc<RwLock<Vec<Cidr>>>, mut routes: Routes) {
    nodes.synced().await;
    routes.adopt().await;
    loop {
        let peers = peers(&nodes.list(), &routes.node_name);
        let mut all: Vec<Cidr> = peers.keys().copied().collect();
        all.push(routes.own);
        *ranges.write().expect("pod ranges lock") = all;
        routes.program(&peers).await;
        // A route that could not be programmed is tried again a while later, or at the next
        // change of a Node.
        let retry = routes.incomplete(&peers);
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(10)), if retry => {}
        }
    }
}

/// Other nodes' pod ranges and the InternalIP each is reached through.
fn peers(nodes: &[Arc<Node>], own_name: &str) -> BTreeMap<Cidr, Ipv4Addr> {
    nodes
        .iter()
        .filter(|node| node.metadata.name.as_deref() != Some(own_name))
        .filter_map(|node| {
            let range = node.spec.as_ref()?.pod_cidr.as_deref()?.parse::<Cidr>().ok()?;
            let addresses = node.status.as_ref()?.addresses.as_ref()?;
            let via = addresses.iter().find(|a| a.type_ == "InternalIP")?.address.parse::<Ipv4Addr>().ok()?;
            Some((range, via))
        })
        .collect()
}

/// The kernel routes this node owns.
#[derive(Debug)]
struct Routes {
    node_name: String,
    own: Cidr,
    /// Each peer range routed, and via where.
    programmed: BTreeMap<Cidr, Ipv4Addr>,
    /// The own range is local.
    local: bool,
}

impl Routes {
    /// Whether routes are this node's to program: not for a loopback range.
    fn routed(&self) -> bool {
        !self.own.network.is_loopback()
    }

    /// Takes on the routes a previous run of the agent left, found by their protocol.
    async fn adopt(&mut self) {
        if !self.routed() {
            return;
        }
        let proto = ROUTE_PROTOCOL.to_string();
        match ip(&["-4", "-o", "route", "show", "proto", &proto]).await {
            Ok(listing) => self.programmed = parse_routes(&listing),
            Err(e) => tracing::warn!(error = %e, "cannot list the pod network's routes"),
        }
    }

    /// Makes the kernel's routes `peers`' (and the own range local).
    async fn program(&mut self, peers: &BTreeMap<Cidr, Ipv4Addr>) {
        if !self.routed() {
            return;
        }
        let proto = ROUTE_PROTOCOL.to_string();
        if !self.local {
            let own = self.own.to_string();
            match ip(&["-4", "route", "replace", "local", &own, "dev", "lo", "table", "local", "proto", &proto]).await {
                Ok(_) => self.local = true,
                Err(e) => tracing::error!(range = %own, error = %e, "cannot make the pod range local"),
            }
        }
        for (range, via) in peers {
            if self.programmed.get(range) == Some(via) {
                continue;
            }
            let (range_text, via_text) = (range.to_string(), via.to_string());
            match ip(&["-4", "route", "replace", &range_text, "via", &via_text, "proto", &proto]).await {
                Ok(_) => {
                    tracing::info!(range = %range, %via, "routing a node's pods");
                    self.programmed.insert(*range, *via);
                }
                // Not on this node's link (host-gw's limit), or no CAP_NET_ADMIN.
                Err(e) => tracing::warn!(range = %range, %via, error = %e, "cannot route a node's pods"),
            }
        }
        let gone: Vec<Cidr> = self.programmed.keys().filter(|range| !peers.contains_key(range)).copied().collect();
        for range in gone {
            let text = range.to_string();
            match ip(&["-4", "route", "del", &text, "proto", &proto]).await {
                Ok(_) => {
                    tracing::info!(range = %range, "no longer routing a node's pods");
                    self.programmed.remove(&range);
                }
                Err(e) => tracing::warn!(range = %range, error = %e, "cannot remove a node's pod route"),
            }
        }
    }

    /// Whether some route is still to be programmed.
    fn incomplete(&self, peers: &BTreeMap<Cidr, Ipv4Addr>) -> bool {
        self.routed() && (!self.local || &self.programmed != peers)
    }
}

/// `ip -o route show` lines (`10.244.2.0/24 via 10.77.0.2 dev eth0 proto 241`) as ranges and
/// gateways.
fn parse_routes(listing: &str) -> BTreeMap<Cidr, Ipv4Addr> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let range = words.next()?.parse::<Cidr>().ok()?;
            let via = words.skip_while(|w| *w != "via").nth(1)?.parse::<Ipv4Addr>().ok()?;
            Some((range, via))
        })
        .collect()
}

/// Runs iproute2's `ip`: its output, or its complaint.
async fn ip(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, range: Option<&str>, ip: Option<&str>) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": range},
                "status": {"addresses": ip.map(|ip| vec![
                    serde_json::json!({"type": "Hostname", "address": name}),
                    serde_json::json!({"type": "InternalIP", "address": ip}),
                ])},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn peers_are_other_nodes_with_a_range_and_an_internal_ip() {
        let nodes = [
            node("self", Some("10.244.1.0/24"), Some("10.77.0.1")),
            node("b", Some("10.244.2.0/24"), Some("10.77.0.2")),
            node("no-range", None, Some("10.77.0.3")),
            node("no-address", Some("10.244.4.0/24"), None),
            node("bad", Some("10.244.5.0/33"), Some("10.77.0.5")),
        ];
        let peers = peers(&nodes, "self");
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            [("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(10, 77, 0, 2))]
        );
    }

    #[test]
    fn a_listing_of_routes_is_read_back() {
        let listing = "10.244.2.0/24 via 10.77.0.2 dev eth0 proto 241 \n\
                       10.244.3.0/24 via 10.77.0.3 dev eth0 proto 241 onlink \n\
                       local 10.244.1.0/24 dev lo proto 241\n";
        let routes = parse_routes(listing);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[&"10.244.3.0/24".parse().unwrap()], Ipv4Addr::new(10, 77, 0, 3));
    }
}
