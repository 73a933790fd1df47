//! What the data path must do for one Service: upstream's kube-proxy's reading of Services and
//! EndpointSlices (`pkg/proxy/servicechangetracker.go`, `endpointschangetracker.go`,
//! `topology.go`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long `sessionAffinity: ClientIP` keeps a client on its endpoint unless the Service
/// says otherwise (upstream's default, three hours).
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10_800);

/// A transport protocol of a Service port (SCTP is not carried).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// A Service port's `protocol` (unset: TCP); `None` for one not carried.
    fn of(protocol: Option<&str>) -> Option<Protocol> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Its name as nftables and `/etc/protocols` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where connections arrive, and the endpoints they are spread over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub protocol: Protocol,
    pub frontend: SocketAddr,
    /// In rotation: each new connection goes to one of them.
    pub endpoints: Vec<SocketAddr>,
    /// `sessionAffinity: ClientIP`: a client's connections go to the endpoint its first went to,
    /// until it has been idle this long.
    pub affinity: Option<Duration>,
    /// The client's address must reach the endpoint: traffic from outside the cluster under
    /// `externalTrafficPolicy: Local` (to this node's endpoints only). Otherwise a data path
    /// that forwards it to another node may masquerade it, so that the reply comes back this way.
    pub keep_source: bool,
}

/// The routes of `service` on node `node` (name and address), its endpoints from `slices` (those
/// labelled with its name, in its namespace). TCP and UDP ports.
pub fn routes(service: &Service, slices: &[&EndpointSlice], node: &str, node_ip: Ipv4Addr) -> Vec<Route> {
    let Some(spec) = &service.spec else { return Vec::new() };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok());
    if kind == "ExternalName" || cluster_ip.is_none() {
        // Headless Services (`clusterIP: None`) have no virtual address: DNS answers with their
        // endpoints instead.
        return Vec::new();
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let config = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref());
        config.and_then(|c| c.timeout_seconds).map_or(DEFAULT_AFFINITY, |s| Duration::from_secs(s.max(1) as u64))
    });
    let local_internal = spec.internal_traffic_policy.as_deref() == Some("Local");
    let local_external = spec.external_traffic_policy.as_deref() == Some("Local");
    let ingress: Vec<Ipv4Addr> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::of(port.protocol.as_deref()) else { continue };
        let all = endpoints(port, slices, None);
        let local = || endpoints(port, slices, Some(node));
        if let Some(ip) = cluster_ip {
            let endpoints = if local_internal { local() } else { all.clone() };
            // Within the cluster a client's address is kept: a pod's is routable.
            let frontend = SocketAddr::new(ip, port.port as u16);
            out.push(Route { protocol, frontend, endpoints, affinity, keep_source: true });
        }
        let external = if local_external { local() } else { all };
        if let Some(node_port) = port.node_port.filter(|_| matches!(kind, "NodePort" | "LoadBalancer")) {
            let frontend = SocketAddr::new(node_ip.into(), node_port as u16);
            out.push(Route { protocol, frontend, endpoints: external.clone(), affinity, keep_source: local_external });
        }
        // A load balancer's ingress on this node's address answers on the Service's own port
        // (ServiceLB's; other nodes answer on theirs).
        if kind == "LoadBalancer" && ingress.contains(&node_ip) {
            let frontend = SocketAddr::new(node_ip.into(), port.port as u16);
            out.push(Route { protocol, frontend, endpoints: external, affinity, keep_source: local_external });
        }
    }
    out
}

/// The endpoints of `port` in rotation: the ready ones; if none is ready, those still serving
/// while they terminate, so that a rolling update's last pods drain rather than refuse (upstream's
/// terminating-endpoints fallback). With `node`, only those on it.
fn endpoints(port: &ServicePort, slices: &[&EndpointSlice], node: Option<&str>) -> Vec<SocketAddr> {
    let mut ready = BTreeSet::new();
    let mut draining = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or("")
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok().filter(|p| *p > 0))
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| node.is_none() || e.node_name.as_deref() == node) {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // Unset, they mean what discovery/v1 says: ready, serving, not terminating.
            let (is_ready, serving, terminating) = (
                conditions.ready.unwrap_or(true),
                conditions.serving.unwrap_or(true),
                conditions.terminating.unwrap_or(false),
            );
            for address in endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                let at = SocketAddr::new(address.into(), target);
                if is_ready {
                    ready.insert(at);
                } else if serving && terminating {
                    draining.insert(at);
                }
            }
        }
    }
    let chosen = if ready.is_empty() { draining } else { ready };
    chosen.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})).unwrap()
    }

    fn slice(ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn endpoint(ip: &str, node: &str, ready: bool, terminating: bool) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready, "serving": true, "terminating": terminating}})
    }

    const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    #[test]
    fn ready_endpoints_back_each_port_of_the_cluster_ip_and_node_port() {
        let svc = service(json!({
            "type": "NodePort", "clusterIP": "127.43.0.10",
            "ports": [{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080}],
        }));
        let slices = [slice(
            json!([{"name": "http", "port": 8080}]),
            json!([endpoint("127.77.0.2", "a", true, false), endpoint("127.77.0.3", "b", false, false)]),
        )];
        let routes = routes(&svc, &slices.iter().collect::<Vec<_>>(), "a", NODE_IP);
        let ready = vec!["127.77.0.2:8080".parse().unwrap()];
        assert_eq!(
            routes,
            [
                Route {
                    protocol: Protocol::Tcp,
                    frontend: "127.43.0.10:80".parse().unwrap(),
                    endpoints: ready.clone(),
                    affinity: None,
                    keep_source: true
                },
                Route {
                    protocol: Protocol::Tcp,
                    frontend: "10.0.0.1:30080".parse().unwrap(),
                    endpoints: ready,
                    affinity: None,
                    keep_source: false
                },
            ]
        );
    }

    #[test]
    fn udp_ports_are_routed_by_their_protocol_and_sctp_is_not() {
        let svc = service(json!({"clusterIP": "127.43.0.10", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "sig", "port": 9, "protocol": "SCTP"},
        ]}));
        let slices = [slice(
            json!([
                {"name": "dns", "port": 5353, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                {"name": "sig", "port": 9, "protocol": "SCTP"},
            ]),
            json!([endpoint("127.77.0.2", "a", true, false)]),
        )];
        let routes = routes(&svc, &slices.iter().collect::<Vec<_>>(), "a", NODE_IP);
        let carried: Vec<(Protocol, String)> =
            routes.iter().map(|r| (r.protocol, r.endpoints.iter().map(|e| e.to_string()).collect())).collect();
        assert_eq!(carried, [(Protocol::Udp, "127.77.0.2:5353".into()), (Protocol::Tcp, "127.77.0.2:5354".into())]);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let svc = service(json!({"clusterIP": "127.43.0.10", "ports": [{"port": 80}]}));
        let draining = slice(json!([{"port": 8080}]), json!([endpoint("127.77.0.2", "a", false, true)]));
        let routes_with = |slices: &[EndpointSlice]| routes(&svc, &slices.iter().collect::<Vec<_>>(), "a", NODE_IP);
        assert_eq!(routes_with(std::slice::from_ref(&draining))[0].endpoints, ["127.77.0.2:8080".parse().unwrap()]);
        let fresh = slice(json!([{"port": 8080}]), json!([endpoint("127.77.0.9", "a", true, false)]));
        assert_eq!(routes_with(&[draining, fresh])[0].endpoints, ["127.77.0.9:8080".parse().unwrap()]);
    }

    #[test]
    fn local_policies_keep_to_this_nodes_endpoints_and_affinity_has_its_timeout() {
        let svc = service(json!({
            "type": "LoadBalancer", "clusterIP": "127.43.0.10", "externalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "ports": [{"port": 80, "nodePort": 30080}],
        }));
        let slices = [slice(
            json!([{"port": 8080}]),
            json!([endpoint("127.77.0.2", "a", true, false), endpoint("127.78.0.2", "b", true, false)]),
        )];
        let mut svc = svc;
        svc.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}}))
                .unwrap(),
        );
        let routes = routes(&svc, &slices.iter().collect::<Vec<_>>(), "b", NODE_IP);
        assert_eq!(routes[0].endpoints.len(), 2, "the cluster IP spreads over every node");
        assert_eq!(routes[1].endpoints, ["127.78.0.2:8080".parse().unwrap()], "the node port keeps to node b");
        assert_eq!(routes[2].frontend, "10.0.0.1:80".parse().unwrap(), "this node's ingress, on the Service's port");
        assert_eq!(routes.len(), 3, "not the other node's ingress");
        assert!(routes.iter().all(|r| r.affinity == Some(Duration::from_secs(60))));
        assert!(routes.iter().all(|r| r.keep_source), "the client's address is kept under Local");
    }

    #[test]
    fn headless_and_external_name_services_have_no_routes() {
        for spec in [
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ] {
            assert!(routes(&service(spec), &[], "a", NODE_IP).is_empty());
        }
    }
}
