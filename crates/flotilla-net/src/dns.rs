//! Cluster DNS: the names upstream's DNS specification for Services gives (what CoreDNS's
//! `kubernetes` plugin answers), served by every node from memory.
//!
//! - `<service>.<namespace>.svc.<domain>`: the cluster IP; for a headless Service, the address
//!   of each ready endpoint; for an `ExternalName` one, a CNAME.
//! - `<hostname>.<service>.…` (or `<a-b-c-d>.<service>.…`): one endpoint of a headless Service.
//! - `_<port>._<protocol>.<service>.…`: SRV records of each named port.
//! - `<a-b-c-d>.<namespace>.pod.<domain>`: that address (CoreDNS's `pods insecure`).
//!
//! Any other name in the cluster domain is NXDOMAIN at once, from memory; names outside it go
//! to the node's own resolver. Messages are encoded and decoded by `hickory-proto`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_client::ObjectKey;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The cluster's domain (the kubelet's `--cluster-domain`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// How long answers may be cached (CoreDNS's default `ttl`).
const TTL: u32 = 5;
/// How long a forwarded query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer to a query without EDNS (RFC 1035); longer ones are truncated.
const UDP_PLAIN: usize = 512;
/// Queries forwarded at once (CoreDNS's `forward` has its `max_concurrent`): each holds a
/// socket while it waits.
const MAX_FORWARDS: usize = 256;
/// TCP connections served at once.
const MAX_TCP_CONNECTIONS: usize = 256;
/// How long a TCP client may take to send a whole query, or idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What a name holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    A(Ipv4Addr),
    Srv { port: u16, target: String },
    Cname(String),
}

/// The names of one Service (lower-case, without the final dot), from it and its slices.
pub fn records(service: &Service, slices: &[&EndpointSlice], domain: &str) -> Vec<(String, Answer)> {
    let (Some(name), Some(namespace), Some(spec)) =
        (service.metadata.name.as_deref(), service.metadata.namespace.as_deref(), service.spec.as_ref())
    else {
        return Vec::new();
    };
    let base = format!("{name}.{namespace}.svc.{domain}").to_lowercase();
    let mut out = Vec::new();
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(external) = spec.external_name.as_deref() {
            out.push((base, Answer::Cname(external.trim_end_matches('.').to_lowercase())));
        }
        return out;
    }
    let ports: Vec<(String, String, u16)> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port as u16)))
        .filter(|(name, _, _)| !name.is_empty())
        .collect();
    match spec.cluster_ip.as_deref().map(str::parse::<Ipv4Addr>) {
        Some(Ok(ip)) => {
            out.push((base.clone(), Answer::A(ip)));
            for (port, protocol, number) in &ports {
                let srv = format!("_{port}._{}.{base}", protocol.to_lowercase());
                out.push((srv, Answer::Srv { port: *number, target: base.clone() }));
            }
        }
        // Headless: the endpoints themselves, each under a name of its own.
        _ => {
            for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
                for endpoint in &slice.endpoints {
                    if !endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) {
                        continue;
                    }
                    for address in endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                        let label = endpoint.hostname.clone().unwrap_or_else(|| address.to_string().replace('.', "-"));
                        let own = format!("{label}.{base}").to_lowercase();
                        out.push((base.clone(), Answer::A(address)));
                        out.push((own.clone(), Answer::A(address)));
                        for slice_port in slice.ports.iter().flatten() {
                            let (Some(port), Some(number)) = (slice_port.name.as_deref(), slice_port.port) else {
                                continue;
                            };
                            if port.is_empty() {
                                continue;
                            }
                            let protocol = slice_port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                            let srv = format!("_{port}._{protocol}.{base}");
                            out.push((srv, Answer::Srv { port: number as u16, target: own.clone() }));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every Service's names, answered from memory; updated one Service at a time.
#[derive(Debug)]
pub struct Zone {
    domain: String,
    names: RwLock<Names>,
}

#[derive(Debug, Default)]
struct Names {
    /// Each Service's records, to take them back when it changes.
    by_service: HashMap<ObjectKey, Vec<(String, Answer)>>,
    /// What each name holds, and from which Services.
    by_name: HashMap<String, Vec<(ObjectKey, Answer)>>,
}

/// What the zone knows of a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not a name of the cluster domain: the node's resolver's business.
    Elsewhere,
    /// In the cluster domain, and nothing is there (NXDOMAIN).
    Missing,
    /// What it holds (possibly nothing of the type asked: NODATA).
    Found(Vec<Answer>),
}

impl Zone {
    pub fn new(domain: &str) -> Zone {
        Zone { domain: domain.trim_end_matches('.').to_lowercase(), names: RwLock::default() }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Makes `records` the names of `service` (none: it is gone).
    pub fn replace(&self, service: &ObjectKey, records: Vec<(String, Answer)>) {
        let mut names = self.names.write().expect("zone lock");
        if let Some(old) = names.by_service.remove(service) {
            for (name, _) in old {
                if let Some(held) = names.by_name.get_mut(&name) {
                    held.retain(|(owner, _)| owner != service);
                    if held.is_empty() {
                        names.by_name.remove(&name);
                    }
                }
            }
        }
        for (name, answer) in &records {
            let held = names.by_name.entry(name.clone()).or_default();
            if !held.iter().any(|(owner, a)| owner == service && a == answer) {
                held.push((service.clone(), answer.clone()));
            }
        }
        if !records.is_empty() {
            names.by_service.insert(service.clone(), records);
        }
    }

    /// Whether a Service of `namespace` is in the zone.
    fn has_namespace(&self, namespace: &str) -> bool {
        self.names.read().expect("zone lock").by_service.keys().any(|k| k.namespace.as_deref() == Some(namespace))
    }

    /// What `name` (any case, with or without the final dot) holds.
    pub fn lookup(&self, name: &str) -> Lookup {
        let name = name.trim_end_matches('.').to_lowercase();
        let Some(inside) = name.strip_suffix(&self.domain) else { return Lookup::Elsewhere };
        if !inside.is_empty() && !inside.ends_with('.') {
            return Lookup::Elsewhere;
        }
        // `<a-b-c-d>.<namespace>.pod.<domain>`
        let labels: Vec<&str> = inside.trim_end_matches('.').split('.').collect();
        if let [address, _namespace, "pod"] = labels.as_slice()
            && let Ok(ip) = address.replace('-', ".").parse::<Ipv4Addr>()
        {
            return Lookup::Found(vec![Answer::A(ip)]);
        }
        match self.names.read().expect("zone lock").by_name.get(&name) {
            Some(held) => Lookup::Found(held.iter().map(|(_, answer)| answer.clone()).collect()),
            // The domain and its structure exist, empty (NODATA rather than NXDOMAIN): a
            // resolver that takes NXDOMAIN to mean nothing below (RFC 8020) must not be told so
            // of `<namespace>.svc.<domain>`.
            None if inside.is_empty() || inside == "svc." || inside == "pod." => Lookup::Found(Vec::new()),
            None if matches!(labels.as_slice(), [namespace, "svc"] if self.has_namespace(namespace)) => {
                Lookup::Found(Vec::new())
            }
            None => Lookup::Missing,
        }
    }
}

/// How many dots make a name absolute before the search path is tried (a pod's `ndots:5`).
const NDOTS: usize = 5;

impl Zone {
    /// The addresses `name` has for a pod in `namespace`, looked up as its resolver would
    /// with the pod's search path (`<namespace>.svc.<domain> svc.<domain> <domain>`,
    /// `ndots:5`): `None` when it is no name of the cluster domain (the node's resolver's
    /// business), `Some` of nothing when it is but holds no address.
    pub fn resolve(&self, namespace: &str, name: &str) -> Option<Vec<std::net::IpAddr>> {
        let domain = &self.domain;
        let candidates: Vec<String> = match name.strip_suffix('.') {
            Some(absolute) => vec![absolute.to_string()],
            None => {
                let searched = [format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.clone()]
                    .map(|suffix| format!("{name}.{suffix}"));
                if name.matches('.').count() >= NDOTS {
                    std::iter::once(name.to_string()).chain(searched).collect()
                } else {
                    searched.into_iter().chain([name.to_string()]).collect()
                }
            }
        };
        let mut inside = false;
        for candidate in &candidates {
            match self.lookup(candidate) {
                Lookup::Elsewhere => {}
                Lookup::Missing => inside = true,
                Lookup::Found(held) => {
                    inside = true;
                    let addresses: Vec<std::net::IpAddr> = held
                        .iter()
                        .filter_map(|a| if let Answer::A(ip) = a { Some((*ip).into()) } else { None })
                        .collect();
                    if !addresses.is_empty() {
                        return Some(addresses);
                    }
                    // An alias out of the cluster: the node's resolver follows it.
                    if held.iter().any(|a| matches!(a, Answer::Cname(_))) {
                        return None;
                    }
                }
            }
        }
        // Only a name written in full within the cluster domain is known not to exist; a short
        // one may still be a name of the world (`example` in `example.com`'s search).
        let absolute = name.trim_end_matches('.');
        (inside && matches!(self.lookup(absolute), Lookup::Missing | Lookup::Found(_))).then(Vec::new)
    }
}

/// The node's own resolver: the first `nameserver` of `/etc/resolv.conf`.
pub fn system_resolver() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|address| address.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

/// What becomes of a query.
enum Reply {
    /// Answered from the zone (or refused as malformed).
    Now(Vec<u8>),
    /// Outside the zone: the node's resolver's to answer; the reply if it cannot be asked.
    Forward(Vec<u8>),
    /// Not a query at all.
    Drop,
}

/// The answer to the DNS message `query`, or `None` if it is not one; names outside the zone
/// are forwarded to `upstream`.
pub async fn answer(query: &[u8], zone: &Zone, upstream: Option<SocketAddr>) -> Option<Vec<u8>> {
    match reply(query, zone) {
        Reply::Now(reply) => Some(reply),
        Reply::Forward(failed) => match upstream {
            Some(upstream) => Some(forward(query, upstream).await.unwrap_or(failed)),
            None => Some(failed),
        },
        Reply::Drop => None,
    }
}

/// Answers `query` from the zone, without waiting on anything.
fn reply(query: &[u8], zone: &Zone) -> Reply {
    let Ok(request) = Message::from_vec(query) else { return Reply::Drop };
    if request.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let id = request.metadata.id;
    let mut response = Message::response(id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.queries = request.queries.clone();
    let now = |message| encode(message).map_or(Reply::Drop, Reply::Now);
    let question = match (request.metadata.op_code, request.queries.as_slice()) {
        (OpCode::Query, [question]) => question,
        (OpCode::Query, _) => return now(error(response, ResponseCode::FormErr)),
        _ => return now(error(response, ResponseCode::NotImp)),
    };
    let name = question.name().to_ascii();
    match zone.lookup(&name) {
        Lookup::Elsewhere => encode(error(response, ResponseCode::ServFail)).map_or(Reply::Drop, Reply::Forward),
        Lookup::Missing => {
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa(zone));
            now(response)
        }
        Lookup::Found(held) => {
            response.metadata.authoritative = true;
            let wanted = question.query_type();
            for answer in held {
                let (kind, data) = match answer {
                    Answer::A(ip) => (RecordType::A, RData::A(A(ip))),
                    Answer::Srv { port, target } => match fqdn(&target) {
                        Some(target) => (RecordType::SRV, RData::SRV(SRV::new(0, 100, port, target))),
                        None => continue,
                    },
                    Answer::Cname(target) => match fqdn(&target) {
                        Some(target) => (RecordType::CNAME, RData::CNAME(CNAME(target))),
                        None => continue,
                    },
                };
                // A CNAME answers every type, as the alias it is.
                if wanted == kind || wanted == RecordType::ANY || kind == RecordType::CNAME {
                    response.add_answer(Record::from_rdata(question.name().clone(), TTL, data));
                }
            }
            if response.answers.is_empty() {
                response.add_authority(soa(zone));
            }
            now(response)
        }
    }
}

fn error(mut response: Message, code: ResponseCode) -> Message {
    response.metadata.response_code = code;
    response
}

fn encode(message: Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{name}.")).ok()
}

/// The zone's SOA, which negative answers carry so that resolvers cache them (as CoreDNS's do).
fn soa(zone: &Zone) -> Record {
    let origin = fqdn(zone.domain()).unwrap_or_else(Name::root);
    let server = fqdn(&format!("ns.dns.{}", zone.domain())).unwrap_or_else(Name::root);
    let mailbox = fqdn(&format!("hostmaster.{}", zone.domain())).unwrap_or_else(Name::root);
    Record::from_rdata(origin, TTL, RData::SOA(SOA::new(server, mailbox, 1, 7200, 1800, 86400, TTL)))
}

/// Relays `query` to `upstream` over UDP; its answer as it came.
async fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(FORWARD_TIMEOUT, socket.recv(&mut buf)).await.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The DNS server of a node: UDP and TCP on one address. Dropping it stops it.
#[derive(Debug)]
pub struct DnsServer {
    pub at: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl DnsServer {
    /// Serves `zone` on `at` (shared with the node's other agents on the host: `SO_REUSEPORT`).
    pub fn start(at: SocketAddr, zone: Arc<Zone>, upstream: Option<SocketAddr>) -> std::io::Result<DnsServer> {
        // A node whose resolver is this server would forward to itself without end.
        let upstream = upstream.filter(|u| u.ip() != at.ip());
        let udp = {
            let socket = reuse_port_udp(at)?;
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)?
        };
        let tcp = {
            let socket = if at.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(at)?;
            socket.listen(128)?
        };
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), zone.clone(), upstream)),
            tokio::spawn(serve_tcp(tcp, zone, upstream)),
        ];
        Ok(DnsServer { at, tasks })
    }
}

fn reuse_port_udp(at: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
    let family = if at.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = socket(family, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    bind(&fd, &at)?;
    Ok(std::net::UdpSocket::from(fd))
}

async fn serve_udp(socket: Arc<UdpSocket>, zone: Arc<Zone>, upstream: Option<SocketAddr>) {
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        let query = &buf[..n];
        match reply(query, &zone) {
            // The cluster's own names are answered here, at once: no task, no socket.
            Reply::Now(answer) => send_udp(&socket, query, answer, from).await,
            Reply::Forward(failed) => {
                // Forwards wait on the node's resolver: on tasks of their own, a bounded number
                // of them; past it the client is told to try again (SERVFAIL) at once.
                let (Some(upstream), Ok(permit)) = (upstream, forwards.clone().try_acquire_owned()) else {
                    send_udp(&socket, query, failed, from).await;
                    continue;
                };
                let (socket, query) = (socket.clone(), query.to_vec());
                tokio::spawn(async move {
                    let answer = forward(&query, upstream).await.unwrap_or(failed);
                    send_udp(&socket, &query, answer, from).await;
                    drop(permit);
                });
            }
            Reply::Drop => {}
        }
    }
}

async fn send_udp(socket: &UdpSocket, query: &[u8], mut answer: Vec<u8>, to: SocketAddr) {
    if answer.len() > UDP_PLAIN && !has_edns(query) {
        answer = truncated(&answer).unwrap_or(answer);
    }
    let _ = socket.send_to(&answer, to).await;
}

/// Whether a query offers a UDP payload beyond 512 bytes (an EDNS OPT record).
fn has_edns(query: &[u8]) -> bool {
    Message::from_vec(query).is_ok_and(|m| m.edns.is_some())
}

/// The answer cut to its question with TC set: the client asks again over TCP.
fn truncated(reply: &[u8]) -> Option<Vec<u8>> {
    Message::from_vec(reply).ok()?.truncate().to_vec().ok()
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>, upstream: Option<SocketAddr>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let zone = zone.clone();
        tokio::spawn(async move {
            serve_connection(stream, zone, upstream).await;
            drop(permit);
        });
    }
}

/// Queries over one TCP connection, each framed by its two-byte length, until it closes,
/// idles, or takes too long to send one.
async fn serve_connection(mut stream: TcpStream, zone: Arc<Zone>, upstream: Option<SocketAddr>) {
    loop {
        let read = async {
            let length = stream.read_u16().await? as usize;
            let mut query = vec![0u8; length];
            stream.read_exact(&mut query).await?;
            Ok::<_, std::io::Error>(query)
        };
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read).await else { return };
        let Some(reply) = answer(&query, &zone, upstream).await else { return };
        let Ok(length) = u16::try_from(reply.len()) else { return };
        if stream.write_u16(length).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec})).unwrap()
    }

    fn zone_with(service: &Service, slices: &[EndpointSlice]) -> Zone {
        let zone = Zone::new(CLUSTER_DOMAIN);
        zone.replace(
            &ObjectKey::new(Some("shop"), "web"),
            records(service, &slices.iter().collect::<Vec<_>>(), CLUSTER_DOMAIN),
        );
        zone
    }

    async fn ask(zone: &Zone, name: &str, kind: RecordType) -> Message {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        Message::from_vec(&answer(&query.to_vec().unwrap(), zone, None).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn services_answer_by_name_srv_and_short_of_it_nxdomain() {
        let zone =
            zone_with(&service(json!({"clusterIP": "127.43.0.7", "ports": [{"name": "http", "port": 80}]})), &[]);
        let a = ask(&zone, "Web.Shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(a.answers[0].data, RData::A(A("127.43.0.7".parse().unwrap())));
        let srv = ask(&zone, "_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV).await;
        let RData::SRV(srv) = &srv.answers[0].data else { panic!("{srv:?}") };
        assert_eq!((srv.port, srv.target.to_ascii()), (80, "web.shop.svc.cluster.local.".to_string()));
        let missing = ask(&zone, "nothing.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert!(!missing.authorities.is_empty(), "a negative answer carries the SOA");
        let namespace = ask(&zone, "shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!((namespace.metadata.response_code, namespace.answers.len()), (ResponseCode::NoError, 0));
        let nodata = ask(&zone, "web.shop.svc.cluster.local.", RecordType::AAAA).await;
        assert_eq!((nodata.metadata.response_code, nodata.answers.len()), (ResponseCode::NoError, 0));
        let pod = ask(&zone, "127-77-0-9.shop.pod.cluster.local.", RecordType::A).await;
        assert_eq!(pod.answers[0].data, RData::A(A("127.77.0.9".parse().unwrap())));
        // Outside the cluster domain with no resolver to ask: SERVFAIL, not a made-up answer.
        let outside = ask(&zone, "example.com.", RecordType::A).await;
        assert_eq!(outside.metadata.response_code, ResponseCode::ServFail);
        // A Service gone takes its names with it.
        zone.replace(&ObjectKey::new(Some("shop"), "web"), Vec::new());
        assert_eq!(zone.lookup("web.shop.svc.cluster.local"), Lookup::Missing);
    }

    #[tokio::test]
    async fn headless_services_answer_with_their_ready_endpoints() {
        let headless = service(json!({"clusterIP": "None", "ports": [{"name": "db", "port": 5432}]}));
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "shop"}, "addressType": "IPv4",
            "ports": [{"name": "db", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["127.77.0.2"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["127.77.0.3"], "conditions": {"ready": true}},
                {"addresses": ["127.77.0.4"], "conditions": {"ready": false}},
            ],
        }))
        .unwrap();
        let zone = zone_with(&headless, &[slice]);
        let all = ask(&zone, "web.shop.svc.cluster.local.", RecordType::A).await;
        let mut ips: Vec<String> = all.answers.iter().map(|r| r.data.to_string()).collect();
        ips.sort();
        assert_eq!(ips, ["127.77.0.2", "127.77.0.3"]);
        let one = ask(&zone, "web-0.web.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(one.answers[0].data.to_string(), "127.77.0.2");
        let dashed = ask(&zone, "127-77-0-3.web.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(dashed.answers.len(), 1);
        let srv = ask(&zone, "_db._tcp.web.shop.svc.cluster.local.", RecordType::SRV).await;
        assert_eq!(srv.answers.len(), 2);
    }

    #[test]
    fn a_pods_short_names_resolve_through_its_search_path() {
        let zone = zone_with(&service(json!({"clusterIP": "127.43.0.7", "ports": [{"port": 80}]})), &[]);
        let ip: std::net::IpAddr = "127.43.0.7".parse().unwrap();
        assert_eq!(zone.resolve("shop", "web"), Some(vec![ip]));
        assert_eq!(zone.resolve("other", "web.shop"), Some(vec![ip]));
        assert_eq!(zone.resolve("other", "web.shop.svc.cluster.local."), Some(vec![ip]));
        assert_eq!(zone.resolve("other", "web"), None, "not in this namespace: the world's to answer");
        assert_eq!(zone.resolve("shop", "nothing.shop.svc.cluster.local"), Some(vec![]));
        assert_eq!(zone.resolve("shop", "example.com"), None);
    }

    #[tokio::test]
    async fn external_names_are_aliases_and_garbage_gets_no_answer() {
        let zone = zone_with(&service(json!({"type": "ExternalName", "externalName": "db.example.com"})), &[]);
        let alias = ask(&zone, "web.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(alias.answers[0].data, RData::CNAME(CNAME(Name::from_ascii("db.example.com.").unwrap())));
        assert!(answer(b"\x00\x01garbage", &zone, None).await.is_none());
    }
}
