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
///   services. (IPv6's `::1` is refused: the pod has no IPv6 address.)
/// - a Service's frontend is the endpoint the node picks ([`Frontends`](crate::Frontends));
/// - a pod's address is made reachable ([`PodNetwork::reach`](crate::PodNetwork::reach)),
///   if the egress policy lets the guest have it at all (what it refuses, wasmtime-wasi refuses
///   in turn; nothing is opened on the way).
pub(crate) fn connect_to(network: &Network, protocol: Protocol, to: SocketAddr) -> Option<SocketAddr> {
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
        Some(pods) if protocol == Protocol::Tcp && network.egress.allows(to) && pods.contains(to.ip()) => {
            pods.reach(to).then_some(to)
        }
        _ => Some(to),
    }
}

/// The addresses of `name` the node answers for the pod itself: `localhost` is the pod's own
/// address, and the cluster's names are the cluster DNS's. `None`: ask the node's resolver.
pub(crate) fn resolve(network: &Network, name: &str) -> Option<Vec<IpAddr>> {
    if name.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        return Some(vec![network.pod_ip]);
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
