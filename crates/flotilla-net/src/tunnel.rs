//! Tunnels between agents: how pods reach each other across hosts where no route can carry them
//! (the "relay between agents"). An unprivileged node keeps its pods on loopback
//! addresses, which no packet leaves the host for; the pods of another such node are reached
//! through that node's agent instead.
//!
//! - Near end: before a connection to a peer's pod address is made (a guest's connect, the
//!   userspace relay's), [`PodNetwork::reach`] listens on that very address here: Linux delivers
//!   all of 127.0.0.0/8 locally, and the peer's range is no one else's on this host. Each
//!   connection the entrance accepts is carried to the peer's agent over its node API (TLS,
//!   this node's client certificate, the peer's serving certificate pinned as the API server
//!   pins it): `GET /tunnel/<address>?from=<pod ip>` upgraded to a raw stream, as the kubelet's
//!   port-forward upgrades its requests.
//! - Far end: the node API authenticates the caller, [`PodNetwork::answer`] authorizes it (a
//!   Ready node whose pods are reached this way, asking for a socket one of this node's pods
//!   listens on, at its own address, from an address of the caller's range) and connects, and
//!   the request is answered `101 Switching Protocols` and spliced to the connection
//!   ([`FarEnd::splice`]).
//!
//! The callee sees its caller's real address: the far end binds the caller's pod address (a
//! loopback address, which any process may bind) when the connection came from one, as a
//! guest's HTTP request and a bound socket do, and otherwise the caller's range's network
//! address, which is no pod's: never this host's own 127.0.0.1, which a pod may trust.
//!
//! Both ends fail closed: an entrance that cannot listen (something else holds the address)
//! refuses the connection rather than let it reach whatever does, and the far end connects only
//! to a socket bound to the pod's very address (the only kind a guest may listen on), never to
//! a host service listening on every address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use flotilla_api::Cidr;
use flotilla_auth::PinnedCertificate;
use flotilla_auth::pki::Issued;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

#[cfg(doc)]
use crate::PodNetwork;
use crate::pods::Known;

/// The upgrade token of a tunnel request.
pub const UPGRADE: &str = "flotilla-tunnel";
/// Entrances open at once: a guest that connects to every port of a peer's pods must not have
/// the node listen on all of them. Past it, the one used longest ago closes.
const MAX_ENTRANCES: usize = 1024;
/// How long reaching the far end and its answer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tunnels carried at once from this node, and into it: each holds descriptors and a task.
pub(crate) const MAX_TUNNELS: usize = 4096;
/// A far host that vanished is noticed after this much silence on its tunnel (TCP keepalive).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// The near ends of the tunnels from this node.
pub(crate) struct Tunnels {
    far: Arc<Far>,
    entrances: Mutex<HashMap<SocketAddr, Entrance>>,
}

/// What an entrance needs to carry a connection: the peers as known now (a restarted peer
/// serves another certificate), this node's identity, and room for one more tunnel.
struct Far {
    known: Arc<RwLock<Known>>,
    identity: Option<Issued>,
    /// The TLS configuration for each peer certificate met (one per peer, give or take).
    configs: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
    carrying: Arc<Semaphore>,
}

struct Entrance {
    listener: Arc<TcpListener>,
    accepting: JoinHandle<()>,
    used: Instant,
}

impl Drop for Entrance {
    fn drop(&mut self) {
        // Shut now, not when the aborted task is next polled: the address is free at once.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        self.accepting.abort();
    }
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.entrances.lock().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("Tunnels").field("entrances", &open).finish_non_exhaustive()
    }
}

impl Tunnels {
    pub(crate) fn new(known: Arc<RwLock<Known>>, identity: Option<Issued>) -> Tunnels {
        let carrying = Arc::new(Semaphore::new(MAX_TUNNELS));
        Tunnels {
            far: Arc::new(Far { known, identity, configs: Mutex::default(), carrying }),
            entrances: Mutex::default(),
        }
    }

    /// Listens on `to`, a pod address of a peer reached through a tunnel, unless an entrance
    /// already does: whether one stands. Where something else on this host holds the address,
    /// none does, and the connection must not be made.
    pub(crate) fn open(&self, to: SocketAddr) -> bool {
        let mut entrances = self.entrances.lock().expect("entrances lock");
        if let Some(entrance) = entrances.get_mut(&to) {
            entrance.used = Instant::now();
            return true;
        }
        if entrances.len() >= MAX_ENTRANCES
            && let Some(oldest) = entrances.iter().min_by_key(|(_, e)| e.used).map(|(at, _)| *at)
        {
            entrances.remove(&oldest);
        }
        let listener = match listen(to) {
            Ok(listener) => Arc::new(listener),
            Err(e) => {
                tracing::warn!(%to, error = %e, "cannot open a tunnel entrance: is another process on the peer's pod address?");
                return false;
            }
        };
        let accepting = tokio::spawn(accept(listener.clone(), to, self.far.clone()));
        entrances.insert(to, Entrance { listener, accepting, used: Instant::now() });
        true
    }

    /// Closes the entrances to addresses no longer reached through a tunnel.
    pub(crate) fn keep(&self, tunneled: impl Fn(IpAddr) -> bool) {
        self.entrances.lock().expect("entrances lock").retain(|at, _| tunneled(at.ip()));
    }
}

fn listen(at: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(at)?;
    socket.listen(1024)
}

async fn accept(listener: Arc<TcpListener>, to: SocketAddr, far: Arc<Far>) {
    loop {
        let Ok(permit) = far.carrying.clone().acquire_owned().await else { return };
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(%to, error = %e, "accepting at a tunnel entrance");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let far = far.clone();
        tokio::spawn(async move {
            if let Err(why) = carry(stream, from.ip(), to, &far).await {
                tracing::debug!(%to, %why, "a tunnel failed");
            }
            drop(permit);
        });
    }
}

/// Carries `stream` (from `from`) to `to` through the tunnel to its node. A tunnel that cannot
/// be made resets the connection, as a refusal would.
async fn carry(stream: TcpStream, from: IpAddr, to: SocketAddr, far: &Far) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let made = tokio::time::timeout(CONNECT_TIMEOUT, tunnel(from, to, far)).await;
    let upgraded = match made {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(why)) => return Err(reset(stream, why)),
        Err(_) => return Err(reset(stream, "the peer's agent did not answer in time".into())),
    };
    splice(upgraded, stream).await;
    Ok(())
}

fn reset(stream: TcpStream, why: String) -> String {
    let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
    why
}

/// The near end's request, answered with the raw stream to `to`.
async fn tunnel(from: IpAddr, to: SocketAddr, far: &Far) -> Result<hyper::upgrade::Upgraded, String> {
    let (api, serving_cert, from) = {
        let known = far.known.read().expect("pod network lock");
        let peer = known.tunneled_peer(to.ip()).ok_or("no longer a tunneled peer's address")?;
        let (api, cert) = peer.api.clone().ok_or("the peer publishes no node API")?;
        // The caller's own pod address goes along, for the far end to connect from.
        let from = match from.to_canonical() {
            IpAddr::V4(ip) if known.own.contains(ip) => Some(ip),
            _ => None,
        };
        (api, cert, from)
    };
    let config = far.config(&serving_cert)?;
    let tcp = TcpStream::connect(api).await.map_err(|e| format!("{api}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let _ = rustix::net::sockopt::set_socket_keepalive(&tcp, true);
    let _ = rustix::net::sockopt::set_tcp_keepidle(&tcp, KEEPALIVE_IDLE);
    let name = rustls::pki_types::ServerName::from(api.ip());
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("{api}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection.with_upgrades());
    let query = from.map(|ip| format!("?from={ip}")).unwrap_or_default();
    let request = http::Request::get(format!("/tunnel/{to}{query}"))
        .header(http::header::HOST, api.to_string())
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, UPGRADE)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("the peer's agent answered {}", response.status()));
    }
    hyper::upgrade::on(&mut response).await.map_err(|e| e.to_string())
}

impl Far {
    /// The TLS configuration that presents this node's certificate and accepts the peer's
    /// `serving_cert` alone.
    fn config(&self, serving_cert: &str) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut configs = self.configs.lock().expect("tunnel configs lock");
        if let Some(config) = configs.get(serving_cert) {
            return Ok(config.clone());
        }
        let identity = self.identity.as_ref().ok_or("this node has no client certificate")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate::new(Some(serving_cert.into()), provider)))
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                    .filter_map(Result::ok)
                    .collect(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(identity.key_der.clone().into()),
            )
            .map_err(|e| e.to_string())?;
        // Peers restart with new certificates: the ones of the past go now and then.
        if configs.len() >= 64 {
            configs.clear();
        }
        let config = Arc::new(config);
        configs.insert(serving_cert.to_string(), config.clone());
        Ok(config)
    }
}

/// Why the far end turned a tunnel down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not have it.
    Forbidden(String),
    /// It may, but the connection cannot be made: nothing listens, or too many tunnels.
    Unavailable(String),
}

/// The far end of a tunnel: the connection to the pod, made.
#[derive(Debug)]
pub struct FarEnd {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl FarEnd {
    /// Connects to `to` from `from` (an address of `caller`'s range), if one of this node's
    /// pods listens on it, holding a place among `carrying`.
    pub(crate) async fn connect(
        carrying: &Arc<Semaphore>,
        caller: Cidr,
        from: Option<Ipv4Addr>,
        to: SocketAddr,
    ) -> Result<FarEnd, Refusal> {
        let permit = carrying
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Unavailable(format!("{MAX_TUNNELS} tunnels are open already")))?;
        if !listening_at(to).await {
            return Err(Refusal::Unavailable(format!("no pod listens on {to}")));
        }
        let unavailable = |e: std::io::Error| Refusal::Unavailable(format!("{to}: {e}"));
        let socket = TcpSocket::new_v4().map_err(unavailable)?;
        socket.bind(SocketAddr::new(from.unwrap_or(caller.network).into(), 0)).map_err(unavailable)?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
            .await
            .map_err(|_| Refusal::Unavailable(format!("{to}: no answer")))?
            .map_err(unavailable)?;
        let _ = stream.set_nodelay(true);
        Ok(FarEnd { stream, _permit: permit })
    }

    /// Copies both ways between the upgraded request and the pod until both are done.
    pub async fn splice(self, upgraded: hyper::upgrade::Upgraded) {
        splice(upgraded, self.stream).await;
    }
}

/// Copies both ways between a tunnel and a connection until both are done.
async fn splice(upgraded: hyper::upgrade::Upgraded, mut stream: TcpStream) {
    let mut upgraded = TokioIo::new(upgraded);
    let _ = tokio::io::copy_bidirectional(&mut upgraded, &mut stream).await;
}

/// Whether a socket listens on exactly `at` (`/proc/net/tcp`): a pod's, which binds its own
/// address, and not a host service's on every address, which would answer there too.
async fn listening_at(at: SocketAddr) -> bool {
    let Ok(table) = tokio::fs::read_to_string("/proc/net/tcp").await else { return false };
    listens(&table, at)
}

/// Whether `table` (`/proc/net/tcp`'s text) has a socket listening on `at`.
fn listens(table: &str, at: SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { return false };
        let Some((ip, port)) = local.split_once(':') else { return false };
        // The address as the kernel holds it (network order), printed as a host-order number.
        let ip = u32::from_str_radix(ip, 16).map(|ip| Ipv4Addr::from(ip.to_ne_bytes()));
        let port = u16::from_str_radix(port, 16);
        *state == LISTEN && matches!((ip, port), (Ok(ip), Ok(port)) if SocketAddr::new(ip.into(), port) == at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_entrance_is_not_opened_on_an_address_another_process_holds() {
        let tunnels = Tunnels::new(Arc::new(RwLock::new(Known::new("127.44.0.0/24".parse().unwrap()))), None);
        // A squatter on a peer's pod address: the connection must fail, not reach it.
        let squatter = std::net::TcpListener::bind("127.44.9.7:0").unwrap();
        assert!(!tunnels.open(squatter.local_addr().unwrap()));
        let free = std::net::TcpListener::bind("127.44.9.8:0").unwrap().local_addr().unwrap();
        assert!(tunnels.open(free), "the entrance stands");
        assert!(tunnels.open(free), "and is reused");
        assert!(std::net::TcpListener::bind(free).is_err(), "the entrance holds the address");
        tunnels.keep(|_| false);
        assert!(std::net::TcpListener::bind(free).is_ok(), "closed at once when dropped");
    }

    #[test]
    fn a_listener_on_the_very_address_is_a_pods_and_one_on_every_address_is_not() {
        let pod = std::net::TcpListener::bind("127.0.0.77:0").unwrap();
        let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let pod_at = pod.local_addr().unwrap();
        assert!(listens(&table, pod_at), "{pod_at}");
        let host_port = host.local_addr().unwrap().port();
        assert!(!listens(&table, SocketAddr::new([127, 0, 0, 78].into(), host_port)), "a wildcard listener");
        assert!(!listens(&table, SocketAddr::new([127, 0, 0, 77].into(), host_port)));
        // A connection's socket on the address is no listener.
        let _connected = std::net::TcpStream::connect(pod_at).unwrap();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        drop(pod);
        let after = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert!(listens(&table, pod_at));
        assert!(!listens(&after, pod_at), "closed");
    }
}
