//! How a component's own sockets reach the cluster: `wasi:sockets` as wasmtime-wasi implements
//! it, with two calls taken over in the linker, each of which then hands on to wasmtime-wasi's
//! own implementation.
//!
//! - `ip-name-lookup.resolve-addresses`: a name the node answers itself (a Service's, through
//!   the pod's search path; `localhost`, the pod's own address) is answered from the node's
//!   cache, without a DNS round trip and without the node's resolver (which knows no cluster
//!   names). A name with several addresses (a headless Service's pods) is answered with one of
//!   them at random, as a round-robin server that returns one record would.
//! - `tcp-socket.start-connect`, and `udp-socket.stream` that connects a UDP socket: the
//!   connection goes where [`connect_to`] says: localhost is the pod's own address, a
//!   Service's frontend the endpoint the node picks ([`Frontends`](crate::Frontends)), so a
//!   guest needs neither the userspace relay nor kernel rules to reach a Service. The address
//!   still passes the egress check wasmtime-wasi makes of every connect. (A datagram sent
//!   unconnected, to an address of its own, goes where it was sent: a reply from an endpoint
//!   would not come from the address the guest sent to.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpSocketAddress};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
use wasmtime_wasi::p2::bindings::sockets::udp::{HostUdpSocket, IncomingDatagramStream, OutgoingDatagramStream};
use wasmtime_wasi::p2::{Network as WasiNetwork, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{WasiSocketsCtxView, WasiSocketsView};

use crate::run::{Network, Pick, Protocol};

/// The `wasi:sockets` interfaces as wasmtime-wasi (pinned with wasmtime) names them; a guest
/// built against any 0.2.x release imports them by semver-compatible name.
const TCP: &str = "wasi:sockets/tcp@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// A component's store: wasmtime-wasi's state, and the pod's network.
pub(crate) trait GuestNetwork: WasiView {
    fn network(&self) -> Option<&Network>;
}

/// Takes over the two calls, in a linker wasmtime-wasi's p2 interfaces were added to.
pub(crate) fn add_to_linker<T: GuestNetwork + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(IP_NAME_LOOKUP)?.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<WasiNetwork>, String)| {
            let known = store.data().network().and_then(|n| resolve(n, &name));
            let name = match known {
                None => name,
                Some(addresses) if addresses.is_empty() => return Ok((Err(ErrorCode::NameUnresolvable),)),
                Some(addresses) => addresses[fastrand::usize(..addresses.len())].to_string(),
            };
            let mut view = store.data_mut().sockets();
            let stream: SocketResult<Resource<ResolveAddressStream>> =
                ip_name_lookup::Host::resolve_addresses(&mut view, network, name);
            answer(&mut view, stream)
        },
    )?;
    linker.instance(TCP)?.func_wrap(
        "[method]tcp-socket.start-connect",
        |mut store, (socket, network, to): (Resource<TcpSocket>, Resource<WasiNetwork>, IpSocketAddress)| {
            let to = match store.data().network().map(|n| connect_to(n, Protocol::Tcp, to.into())) {
                None => to,
                Some(Some(to)) => to.into(),
                Some(None) => return Ok((Err(ErrorCode::ConnectionRefused),)),
            };
            let mut view = store.data_mut().sockets();
            let started = HostTcpSocket::start_connect(&mut view, socket, network, to);
            answer(&mut view, started)
        },
    )?;
    linker.instance(UDP)?.func_wrap_async(
        "[method]udp-socket.stream",
        |mut store, (socket, remote): (Resource<UdpSocket>, Option<IpSocketAddress>)| {
            Box::new(async move {
                let remote = match (store.data().network(), remote) {
                    (Some(network), Some(remote)) => match connect_to(network, Protocol::Udp, remote.into()) {
                        Some(remote) => Some(remote.into()),
                        None => return Ok((Err(ErrorCode::ConnectionRefused),)),
                    },
                    (_, remote) => remote,
                };
                let mut view = store.data_mut().sockets();
                let streams: SocketResult<(Resource<IncomingDatagramStream>, Resource<OutgoingDatagramStream>)> =
                    HostUdpSocket::stream(&mut view, socket, remote).await;
                answer(&mut view, streams)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Where a `protocol` connection from the pod to `to` goes (a UDP socket's connected peer), or
/// `None` when it is refused at once:
/// - `localhost` (127.0.0.1, and "this host", 0.0.0.0) is the pod itself, as in a pod's own
///   network namespace: its containers reach each other there, and never the host's loopback
///   services. (IPv6's `::1` is refused: the pod has no IPv6 address.) In a namespace of the
///   pod's own ([`Network::namespace`]) it is that namespace's loopback, left as it is.
/// - a Service's frontend is the endpoint the node picks ([`Frontends`](crate::Frontends));
/// - a pod's address is made reachable ([`PodNetwork::reach`](crate::PodNetwork::reach)),
///   if the egress policy lets the guest have it at all (what it refuses, wasmtime-wasi refuses
///   in turn; nothing is opened on the way).
pub(crate) fn connect_to(network: &Network, protocol: Protocol, to: SocketAddr) -> Option<SocketAddr> {
    if network.is_own_loopback(to.ip()) {
        // The pod's own loopback, in its own namespace, where its other containers listen.
        return Some(to);
    }
    let to = match to.ip() {
        IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST || ip.is_unspecified() => {
            SocketAddr::new(network.pod_ip, to.port())
        }
        IpAddr::V6(ip) if (ip.is_loopback() || ip.is_unspecified()) && network.pod_ip.is_ipv4() => return None,
        _ => to,
    };
    let to = match network.frontends.as_ref().and_then(|f| f.pick(protocol, to, network.pod_ip)) {
        None => to,
        Some(Pick::Endpoint(endpoint)) => endpoint,
        Some(Pick::Refused) => return None,
    };
    match &network.pod_network {
        // Tunnels carry TCP alone: a datagram to a pod they would carry goes nowhere.
        Some(pods) if protocol == Protocol::Tcp && network.allows(to) && pods.contains(to.ip()) => {
            pods.reach(to).then_some(to)
        }
        _ => Some(to),
    }
}

/// The addresses of `name` the node answers for the pod itself: `localhost` is the pod's own
/// address, and the cluster's names are the cluster DNS's. `None`: ask the node's resolver.
pub(crate) fn resolve(network: &Network, name: &str) -> Option<Vec<IpAddr>> {
    if name.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        let own = if network.namespace { IpAddr::from(Ipv4Addr::LOCALHOST) } else { network.pod_ip };
        return Some(vec![own]);
    }
    network.names.as_ref()?.resolve(name)
}

/// wasmtime-wasi's result as the guest gets it: the value or the error code, or a trap.
fn answer<T>(view: &mut WasiSocketsCtxView<'_>, result: SocketResult<T>) -> wasmtime::Result<(Result<T, ErrorCode>,)> {
    Ok((match result {
        Ok(value) => Ok(value),
        Err(err) => Err(network::Host::convert_error_code(view, err)?),
    },))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn network(namespace: bool) -> Network {
        Network {
            pod_ip: "127.44.0.7".parse().unwrap(),
            namespace,
            egress: Default::default(),
            ports: Vec::new(),
            names: None,
            pod_network: None,
            frontends: None,
        }
    }

    #[test]
    fn localhost_is_the_pods_address_on_the_host_and_its_loopback_in_a_namespace_of_its_own() {
        let on_host = network(false);
        let own = network(true);
        let to = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 8080);
        assert_eq!(connect_to(&on_host, Protocol::Tcp, to("127.0.0.1")), Some(to("127.44.0.7")));
        assert_eq!(connect_to(&on_host, Protocol::Tcp, to("0.0.0.0")), Some(to("127.44.0.7")));
        assert_eq!(connect_to(&on_host, Protocol::Tcp, to("::1")), None);
        assert_eq!(resolve(&on_host, "localhost"), Some(vec!["127.44.0.7".parse().unwrap()]));
        for ip in ["127.0.0.1", "0.0.0.0", "::1"] {
            assert_eq!(connect_to(&own, Protocol::Tcp, to(ip)), Some(to(ip)), "{ip}");
        }
        // The rest of 127.0.0.0/8 is the host's from the namespace, as it is from the host.
        assert_eq!(connect_to(&own, Protocol::Tcp, to("127.0.0.2")), Some(to("127.0.0.2")));
        assert!(!own.is_own_loopback("127.44.0.1".parse().unwrap()));
        assert_eq!(resolve(&own, "localhost."), Some(vec!["127.0.0.1".parse().unwrap()]));
        // What listens in the namespace, listens on all of it; on the host, on the pod's address.
        assert_eq!(own.listen_ip(), "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(on_host.listen_ip(), "127.44.0.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_nodes_endpoints_stay_protected_but_a_namespaces_own_loopback_is_the_pods() {
        let protect = |namespace| Network {
            egress: Arc::new(crate::Egress::protecting(vec!["0.0.0.0:10250".parse().unwrap()])),
            ..network(namespace)
        };
        let (on_host, own) = (protect(false), protect(true));
        for to in ["127.0.0.1:10250", "[::1]:10250"] {
            let to = to.parse().unwrap();
            assert!(!on_host.allows(to), "{to}");
            assert!(own.allows(to), "{to}");
        }
        // The node's other addresses (its gateway, its own) are the host's from any namespace.
        for to in ["127.44.0.1:10250", "10.0.0.5:10250"] {
            assert!(!own.allows(to.parse().unwrap()), "{to}");
        }
    }
}
