//! How a component's own sockets reach the cluster: `wasi:sockets` as wasmtime-wasi implements
//! it, with two calls taken over in the linker, each of which then hands on to wasmtime-wasi's
//! own implementation.
//!
//! - `ip-name-lookup.resolve-addresses`: a name the node answers itself (a Service's, through
//!   the pod's search path) is answered from the node's cache, without a DNS round trip and
//!   without the node's resolver (which knows no cluster names). A name with several addresses
//!   (a headless Service's pods) is answered with one of them at random, as a round-robin
//!   server that returns one record would.
//! - `tcp-socket.start-connect`: a connection to a Service's frontend goes straight to the
//!   endpoint the node picks ([`Frontends`](crate::Frontends)), so a guest needs neither the
//!   userspace relay nor kernel rules to reach a Service. The endpoint still passes the egress
//!   check wasmtime-wasi makes of every connect. A pod's address (an endpoint's, or the one
//!   asked for) is made reachable first ([`PodNetwork::reach`](crate::PodNetwork::reach)).

use std::net::SocketAddr;

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpSocketAddress};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
use wasmtime_wasi::p2::{Network as WasiNetwork, SocketResult, TcpSocket};
use wasmtime_wasi::sockets::{WasiSocketsCtxView, WasiSocketsView};

use crate::run::{Network, Pick};

/// The `wasi:sockets` interfaces as wasmtime-wasi (pinned with wasmtime) names them; a guest
/// built against any 0.2.x release imports them by semver-compatible name.
const TCP: &str = "wasi:sockets/tcp@0.2.12";
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
            let known = store.data().network().and_then(|n| n.names.as_ref()?.resolve(&name));
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
            let pod = store.data().network();
            let to = match pod.and_then(|n| frontend(n, to.into())) {
                None => SocketAddr::from(to),
                Some(Pick::Endpoint(endpoint)) => endpoint,
                Some(Pick::Refused) => return Ok((Err(ErrorCode::ConnectionRefused),)),
            };
            if let Some(network) = pod
                && !reachable(network, to)
            {
                return Ok((Err(ErrorCode::ConnectionRefused),));
            }
            let to = IpSocketAddress::from(to);
            let mut view = store.data_mut().sockets();
            let started = HostTcpSocket::start_connect(&mut view, socket, network, to);
            answer(&mut view, started)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Whether a connection from the pod to `to` may be made: a pod's address is made reachable
/// first, if the egress policy lets the guest have it at all (what it refuses, wasmtime-wasi
/// refuses in turn; it opens nothing on the way).
pub(crate) fn reachable(network: &Network, to: SocketAddr) -> bool {
    match &network.pod_network {
        Some(pods) if network.egress.allows(to) && pods.contains(to.ip()) => pods.reach(to),
        _ => true,
    }
}

/// wasmtime-wasi's result as the guest gets it: the value or the error code, or a trap.
fn answer<T>(view: &mut WasiSocketsCtxView<'_>, result: SocketResult<T>) -> wasmtime::Result<(Result<T, ErrorCode>,)> {
    Ok((match result {
        Ok(value) => Ok(value),
        Err(err) => Err(network::Host::convert_error_code(view, err)?),
    },))
}

/// Where a connection from the pod to `to` goes if `to` is a frontend. (A guest cannot name an
/// IPv4 endpoint from an IPv6 socket: WASI refuses IPv4-mapped addresses.)
pub(crate) fn frontend(network: &Network, to: SocketAddr) -> Option<Pick> {
    network.frontends.as_ref()?.pick(to, network.pod_ip)
}
