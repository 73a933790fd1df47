//! Where a guest's connections may go. The default policy is open (a pod talks to whatever the
//! network lets it reach, as on Kubernetes without a NetworkPolicy) but for the node's own
//! endpoints: the store's peer port and the node API are never a guest's to call, whatever
//! address it tries them by. A guest reaches the cluster through the authenticated Kubernetes
//! API, which stays open to it.
//!
//! [`Egress::allows`] is the one connect filter: `wasi:sockets` asks it at every `connect` and
//! `send-to` of a component, and the `wasi:http` host asks it for every address an outgoing
//! request's host resolves to. (A p1 module has no outgoing sockets at all.)

use std::net::{IpAddr, SocketAddr};

/// The endpoints guests may not connect to.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    protected: Vec<SocketAddr>,
}

impl Egress {
    /// A policy that keeps guests from `protected`: listen addresses of the node's own
    /// services. An unspecified address (`0.0.0.0:2380`) protects the port on every address.
    pub fn protecting(protected: Vec<SocketAddr>) -> Egress {
        Egress { protected }
    }

    /// Whether a guest may connect to `destination`.
    pub fn allows(&self, destination: SocketAddr) -> bool {
        let to = local_alias(destination.ip());
        !self.protected.iter().any(|protected| {
            let everywhere = protected.ip().to_canonical().is_unspecified();
            let at = local_alias(protected.ip());
            protected.port() == destination.port() && (everywhere || at == to || (at.is_loopback() && to.is_loopback()))
        })
    }
}

/// The address a connection to `ip` reaches, for the comparison: IPv4-mapped IPv6 as IPv4, and
/// "this host" (`0.0.0.0`, `::`), which Linux connects to loopback, as loopback.
fn local_alias(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_endpoints_are_kept_from_guests_by_any_name() {
        let egress = Egress::protecting(vec!["127.0.0.1:2380".parse().unwrap(), "0.0.0.0:10250".parse().unwrap()]);
        for refused in [
            "127.0.0.1:2380",
            "127.0.0.2:2380",
            "0.0.0.0:2380",
            "[::ffff:127.0.0.1]:2380",
            "10.1.2.3:10250",
            "[::1]:10250",
        ] {
            assert!(!egress.allows(refused.parse().unwrap()), "{refused}");
        }
        for allowed in ["127.0.0.1:6443", "10.1.2.3:2380", "127.44.0.7:8080", "[::1]:2381"] {
            assert!(egress.allows(allowed.parse().unwrap()), "{allowed}");
        }
        assert!(Egress::default().allows("127.0.0.1:2380".parse().unwrap()));
    }
}
