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
//! Where no route can carry them (this node's range and the peer's are loopback, on different
//! hosts), the peer's pods are reached through a tunnel to its agent ([`crate::tunnel`]):
//! [`PodNetwork::reach`] opens its entrance before a connection is made.
//!
//! [`PodNetwork::contains`] answers which addresses are pods': a guest's connection to one
//! leaves from the pod's own address, so the peer sees who called.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use flotilla_api::{Cidr, SERVING_CERT_ANNOTATION};
use flotilla_auth::pki::Issued;
use flotilla_client::{Cache, Change, Informer};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::tunnel::{FarEnd, MAX_TUNNELS, Refusal, Tunnels};

/// The routing protocol number (`ip route … proto N`) on the routes an agent programs: its
/// mark of ownership, as a routing daemon's.
pub const ROUTE_PROTOCOL: u8 = 241;

/// Every node's pod range, kept current from the Node objects, and this node's routes (or
/// tunnels) to them.
#[derive(Debug)]
pub struct PodNetwork {
    known: Arc<RwLock<Known>>,
    tunnels: Arc<Tunnels>,
    /// Tunnels into this node, carried at once.
    answering: Arc<tokio::sync::Semaphore>,
    task: JoinHandle<()>,
}

/// This node's range and its peers'.
#[derive(Debug)]
pub(crate) struct Known {
    pub(crate) own: Cidr,
    peers: BTreeMap<Cidr, Peer>,
}

impl Known {
    /// This node's range, before any peer is known.
    pub(crate) fn new(own: Cidr) -> Known {
        Known { own, peers: BTreeMap::new() }
    }

    /// The peer whose range holds `ip`, if its pods are reached through a tunnel.
    pub(crate) fn tunneled_peer(&self, ip: IpAddr) -> Option<&Peer> {
        let IpAddr::V4(ip) = ip.to_canonical() else { return None };
        self.peers.values().find(|peer| peer.tunneled && peer.range.contains(ip))
    }
}

/// Another node, as this one reaches its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) range: Cidr,
    /// Its InternalIP: what its range is routed via.
    pub(crate) via: Ipv4Addr,
    /// Its node API and the SHA-256 of the certificate it serves, if it publishes them.
    pub(crate) api: Option<(SocketAddr, String)>,
    /// Its pods are reached through a tunnel to its agent, not a route.
    pub(crate) tunneled: bool,
    /// Its `Ready` condition is true: a node whose registration was revoked can no longer
    /// renew it, and its tunnels are refused once the node controller marks it.
    pub(crate) ready: bool,
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // The routes stay: pods elsewhere keep reaching this host's pods while it restarts.
        self.task.abort();
    }
}

impl PodNetwork {
    /// Watches Nodes through `client`; routes to their ranges unless `own` (this node's range)
    /// is loopback, and tunnels to other hosts' loopback ranges, presenting `identity` (this
    /// node's client certificate).
    pub fn start(client: kube::Client, node_name: String, own: Cidr, identity: Option<Issued>) -> PodNetwork {
        let known = Arc::new(RwLock::new(Known::new(own)));
        let tunnels = Arc::new(Tunnels::new(known.clone(), identity));
        let changed = Arc::new(Notify::new());
        let mut nodes = Informer::<Node>::all(client);
        let wake = changed.clone();
        nodes.on_change(move |_: Change<'_, Node>| wake.notify_one());
        let cache = nodes.cache();
        let routes = Routes { node_name, own };
        let task = tokio::spawn({
            let (known, tunnels) = (known.clone(), tunnels.clone());
            async move {
                let informer = tokio::spawn(nodes.run());
                sync(cache, changed, known, tunnels, routes).await;
                informer.abort();
            }
        });
        let answering = Arc::new(tokio::sync::Semaphore::new(MAX_TUNNELS));
        PodNetwork { known, tunnels, answering, task }
    }

    /// Whether this node routes its pods' traffic to and from other nodes (its range is not
    /// loopback).
    pub fn routed(&self) -> bool {
        !self.known.read().expect("pod network lock").own.network.is_loopback()
    }

    /// Whether `ip` is a pod's address, on this node or another.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(ip) = ip.to_canonical() else { return false };
        let known = self.known.read().expect("pod network lock");
        known.own.contains(ip) || known.peers.keys().any(|range| range.contains(ip))
    }

    /// Makes `to` reachable from this host before a connection to it: a pod of a peer reached
    /// through a tunnel gets an entrance here; anything else is left to the routes. Whether a
    /// connection may be made: not to a tunneled pod whose entrance cannot stand.
    pub fn reach(&self, to: SocketAddr) -> bool {
        let tunneled = self.known.read().expect("pod network lock").tunneled_peer(to.ip()).is_some();
        !tunneled || self.tunnels.open(to)
    }

    /// The far end of a tunnel node `caller` asks for, to `to` from `from`: made if the caller
    /// is a Ready peer whose pods reach this node's through tunnels, `to` one of this node's pod
    /// addresses, `from` (if given) one of the caller's, and one of this node's pods listens on
    /// `to`.
    pub async fn answer(&self, caller: &str, from: Option<Ipv4Addr>, to: SocketAddr) -> Result<FarEnd, Refusal> {
        let range = {
            let known = self.known.read().expect("pod network lock");
            let IpAddr::V4(to_ip) = to.ip() else { return Err(Refusal::Forbidden(format!("{to} is not IPv4"))) };
            if !known.own.contains(to_ip) {
                return Err(Refusal::Forbidden(format!("{to} is not in this node's pod range {}", known.own)));
            }
            let peer = known.peers.values().find(|peer| peer.name == caller && peer.tunneled);
            let Some(peer) = peer else {
                return Err(Refusal::Forbidden(format!("node {caller:?} does not reach this node through tunnels")));
            };
            if !peer.ready {
                return Err(Refusal::Forbidden(format!("node {caller:?} is not Ready")));
            }
            if let Some(from) = from.filter(|from| !peer.range.contains(*from)) {
                return Err(Refusal::Forbidden(format!("{from} is not in node {caller:?}'s pod range {}", peer.range)));
            }
            peer.range
        };
        FarEnd::connect(&self.answering, range, from, to).await
    }
}

/// How often the kernel's routes are read back and set right (a link that went down takes
/// its routes with it), as flannel checks its own.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

async fn sync(
    nodes: Cache<Node>,
    changed: Arc<Notify>,
    known: Arc<RwLock<Known>>,
    tunnels: Arc<Tunnels>,
    routes: Routes,
) {
    nodes.synced().await;
    loop {
        let local = local_addresses().await;
        let peers = peers(&nodes.list(), &routes.node_name, routes.own, &local);
        let routed: BTreeMap<Cidr, Ipv4Addr> =
            peers.iter().filter(|(_, peer)| !peer.tunneled).map(|(range, peer)| (*range, peer.via)).collect();
        known.write().expect("pod network lock").peers = peers;
        tunnels.keep(|ip| known.read().expect("pod network lock").tunneled_peer(ip).is_some());
        // What the kernel has, not what was last programmed: a route may have gone under us.
        let held = routes.held().await;
        routes.program(held, &routed).await;
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Other nodes, by pod range. A range is only taken where it cannot take traffic that is not
/// its node's: none that overlaps this node's range, an older Node's (the one registered first
/// keeps it), or holds any node's address; none in loopback when this node's is not. (Nodes
/// write their own range at registration, and may not move it after.) A loopback range of a
/// node on another host, seen from a node whose range is loopback too, is tunneled: no route
/// leaves the host for loopback, and a node on this host (whose InternalIP is local) shares
/// its loopback already.
fn peers(nodes: &[Arc<Node>], own_name: &str, own: Cidr, local: &[Ipv4Addr]) -> BTreeMap<Cidr, Peer> {
    let address = |node: &Node| -> Option<Ipv4Addr> {
        let addresses = node.status.as_ref()?.addresses.as_ref()?;
        addresses.iter().find(|a| a.type_ == "InternalIP")?.address.parse().ok()
    };
    let addresses: Vec<Ipv4Addr> = nodes.iter().filter_map(|node| address(node)).collect();
    let mut oldest_first: Vec<&Arc<Node>> = nodes.iter().collect();
    oldest_first
        .sort_by_key(|node| (node.metadata.creation_timestamp.clone().map(|t| t.0), node.metadata.name.clone()));
    let mut taken: Vec<Cidr> = vec![own];
    let mut peers = BTreeMap::new();
    for node in oldest_first {
        if node.metadata.name.as_deref() == Some(own_name) {
            continue;
        }
        let Some(range) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).and_then(|r| r.parse::<Cidr>().ok())
        else {
            continue;
        };
        let Some(via) = address(node) else { continue };
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if taken.iter().any(|t| t.overlaps(range))
            || addresses.iter().any(|a| range.contains(*a))
            || (range.network.is_loopback() && !own.network.is_loopback())
        {
            tracing::warn!(node = name, %range, "a node's pod range is not routed: it overlaps another or holds a node's address");
            continue;
        }
        taken.push(range);
        let api = (|| {
            let port = node.status.as_ref()?.daemon_endpoints.as_ref()?.kubelet_endpoint.as_ref()?.port;
            let cert = node.metadata.annotations.as_ref()?.get(SERVING_CERT_ANNOTATION)?;
            Some((SocketAddr::new(via.into(), u16::try_from(port).ok()?), cert.clone()))
        })();
        let on_this_host = via.is_loopback() || local.contains(&via);
        let tunneled = own.network.is_loopback() && range.network.is_loopback() && !on_this_host;
        let ready = (|| {
            let conditions = node.status.as_ref()?.conditions.as_ref()?;
            Some(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })()
        .unwrap_or(false);
        peers.insert(range, Peer { name: name.to_string(), range, via, api, tunneled, ready });
    }
    peers
}

/// This host's IPv4 addresses (`ip -o -4 addr show`). The interfaces' list, not whether an
/// address can be bound, which `ip_nonlocal_bind` would answer yes for every address.
async fn local_addresses() -> Vec<Ipv4Addr> {
    match ip(&["-o", "-4", "addr", "show"]).await {
        Ok(listing) => parse_addresses(&listing),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses");
            Vec::new()
        }
    }
}

/// `ip -o -4 addr show` lines (`2: eth0    inet 10.77.0.1/24 brd … scope global eth0`) as
/// addresses.
fn parse_addresses(listing: &str) -> Vec<Ipv4Addr> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next()?.parse().ok())
        .collect()
}

/// The kernel routes this node owns.
#[derive(Debug)]
struct Routes {
    node_name: String,
    own: Cidr,
}

impl Routes {
    /// Whether routes are this node's to program: not for a loopback range.
    fn routed(&self) -> bool {
        !self.own.network.is_loopback()
    }

    /// The peer routes the kernel holds of this node's (a previous run's too), found by their
    /// protocol: each range, and via where.
    async fn held(&self) -> BTreeMap<Cidr, Ipv4Addr> {
        if !self.routed() {
            return BTreeMap::new();
        }
        let proto = ROUTE_PROTOCOL.to_string();
        let held = match ip(&["-4", "-o", "route", "show", "proto", &proto]).await {
            Ok(listing) => parse_routes(&listing),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the pod network's routes");
                BTreeMap::new()
            }
        };
        // A range this node had before (its Node was registered anew with another) is
        // local no longer.
        if let Ok(listing) = ip(&["-4", "-o", "route", "show", "table", "local", "proto", &proto]).await {
            let stale = listing.lines().filter_map(|line| line.split_whitespace().nth(1)?.parse::<Cidr>().ok());
            for range in stale.filter(|range| *range != self.own).collect::<Vec<_>>() {
                let text = range.to_string();
                if let Err(e) = ip(&["-4", "route", "del", "local", &text, "table", "local", "proto", &proto]).await {
                    tracing::warn!(range = %range, error = %e, "cannot remove a former pod range");
                }
            }
        }
        held
    }

    /// Makes the kernel's routes, `held`, `peers`' (and the own range local).
    async fn program(&self, held: BTreeMap<Cidr, Ipv4Addr>, peers: &BTreeMap<Cidr, Ipv4Addr>) {
        if !self.routed() {
            return;
        }
        let proto = ROUTE_PROTOCOL.to_string();
        let own = self.own.to_string();
        if let Err(e) =
            ip(&["-4", "route", "replace", "local", &own, "dev", "lo", "table", "local", "proto", &proto]).await
        {
            tracing::error!(range = %own, error = %e, "cannot make the pod range local");
        }
        for (range, via) in peers {
            if held.get(range) == Some(via) {
                continue;
            }
            let (range_text, via_text) = (range.to_string(), via.to_string());
            match ip(&["-4", "route", "replace", &range_text, "via", &via_text, "proto", &proto]).await {
                Ok(_) => tracing::info!(range = %range, %via, "routing a node's pods"),
                // Not on this node's link (host-gw's limit), or no CAP_NET_ADMIN.
                Err(e) => tracing::warn!(range = %range, %via, error = %e, "cannot route a node's pods"),
            }
        }
        for range in held.keys().filter(|range| !peers.contains_key(range)) {
            let text = range.to_string();
            match ip(&["-4", "route", "del", &text, "proto", &proto]).await {
                Ok(_) => tracing::info!(range = %range, "no longer routing a node's pods"),
                Err(e) => tracing::warn!(range = %range, error = %e, "cannot remove a node's pod route"),
            }
        }
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

    fn node(name: &str, created: &str, range: Option<&str>, ip: Option<&str>) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "creationTimestamp": format!("2026-12-05T10:{created}:00Z")},
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
    fn peers_are_other_nodes_whose_ranges_take_nothing_that_is_not_theirs() {
        let own: Cidr = "10.244.1.0/24".parse().unwrap();
        let nodes = [
            node("self", "00", Some("10.244.1.0/24"), Some("10.77.0.1")),
            node("b", "01", Some("10.244.2.0/24"), Some("10.77.0.2")),
            node("no-range", "02", None, Some("10.77.0.3")),
            node("no-address", "03", Some("10.244.4.0/24"), None),
            node("bad", "04", Some("10.244.5.0/33"), Some("10.77.0.5")),
            // Later claims on what is taken, and ranges that would swallow addresses.
            node("a-copy-of-b", "05", Some("10.244.2.0/24"), Some("10.77.0.6")),
            node("within-own", "06", Some("10.244.1.128/25"), Some("10.77.0.7")),
            node("everything", "07", Some("10.0.0.0/8"), Some("10.77.0.8")),
            node("the-links", "08", Some("10.77.0.0/24"), Some("10.77.0.9")),
            node("loopback", "09", Some("127.0.0.0/8"), Some("10.77.0.10")),
            node("c", "10", Some("10.244.3.0/24"), Some("10.77.0.11")),
        ];
        let peers = peers(&nodes, "self", own, &[]);
        let want: BTreeMap<Cidr, Ipv4Addr> = [
            ("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(10, 77, 0, 2)),
            ("10.244.3.0/24".parse().unwrap(), Ipv4Addr::new(10, 77, 0, 11)),
        ]
        .into();
        assert_eq!(peers.iter().map(|(range, peer)| (*range, peer.via)).collect::<BTreeMap<_, _>>(), want);
        assert!(peers.values().all(|peer| !peer.tunneled), "routed ranges");
    }

    #[test]
    fn loopback_ranges_on_other_hosts_are_tunneled_and_those_on_this_one_are_not() {
        let own: Cidr = "127.44.0.0/24".parse().unwrap();
        let mut far = node("far", "01", Some("127.44.1.0/24"), Some("192.0.2.1"));
        let far_node = Arc::make_mut(&mut far);
        far_node.metadata.annotations = Some([(SERVING_CERT_ANNOTATION.to_string(), "ab12".to_string())].into());
        far_node.status.as_mut().unwrap().daemon_endpoints =
            Some(serde_json::from_value(serde_json::json!({"kubeletEndpoint": {"Port": 10250}})).unwrap());
        let nodes = [
            node("self", "00", Some("127.44.0.0/24"), Some("127.61.0.1")),
            far,
            node("here", "02", Some("127.44.2.0/24"), Some("127.61.0.2")),
            node("here-too", "03", Some("127.44.3.0/24"), Some("192.0.2.3")),
        ];
        let peers = peers(&nodes, "self", own, &["192.0.2.3".parse().unwrap()]);
        let far = &peers[&"127.44.1.0/24".parse().unwrap()];
        assert!(far.tunneled);
        assert_eq!(far.api, Some(("192.0.2.1:10250".parse().unwrap(), "ab12".to_string())));
        assert!(!peers[&"127.44.2.0/24".parse().unwrap()].tunneled, "a node on this host shares its loopback");
        assert!(!peers[&"127.44.3.0/24".parse().unwrap()].tunneled, "an address of this host's");
        assert!(!far.ready, "no Ready condition");
        let known = Known { own, peers };
        assert_eq!(known.tunneled_peer("127.44.1.9".parse().unwrap()).map(|p| p.name.as_str()), Some("far"));
        assert!(known.tunneled_peer("127.44.2.9".parse().unwrap()).is_none());
        assert!(known.tunneled_peer("127.44.0.9".parse().unwrap()).is_none());
    }

    #[test]
    fn a_listing_of_addresses_is_read_back() {
        let listing = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                       2: eth0    inet 10.77.0.1/24 brd 10.77.0.255 scope global eth0\n";
        let want: Vec<Ipv4Addr> = vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 77, 0, 1)];
        assert_eq!(parse_addresses(listing), want);
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
