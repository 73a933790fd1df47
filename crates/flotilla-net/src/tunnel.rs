//! Tunnels between agents: how pods reach each other across hosts where no route can carry them
//! (the "relay between agents"). An unprivileged node keeps its pods on loopback
//! addresses, which no packet leaves the host for; the pods of another such node are reached
//! through that node's agent instead.
//!
//! - Near end: before a connection to a peer's pod address is made (a guest's connect, the
//!   userspace relay's), [`Tunnels::open`] listens on that very address here: Linux delivers
//!   all of 127.0.0.0/8 locally, and the peer's range is no one else's on this host. Each
//!   connection the entrance accepts is carried to the peer's agent over its node API (TLS,
//!   this node's client certificate, the peer's serving certificate pinned as the API server
//!   pins it): `GET /tunnel/<address>?from=<pod ip>` upgraded to a raw stream, as the kubelet's
//!   port-forward upgrades its requests.
//! - Far end: the node API authorizes the caller (a node, whose pods are reached this way, asking
//!   for an address in this node's range, from one in its own), connects ([`connect_from`]),
//!   answers `101 Switching Protocols` and splices the two ([`splice`]).
//!
//! The callee sees its caller's real address: the far end binds the caller's pod address (a
//! loopback address, which any process may bind) when the connection came from one, as a
//! guest's HTTP request and a bound socket do.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use flotilla_auth::PinnedCertificate;
use flotilla_auth::pki::Issued;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::pods::Known;

/// The upgrade token of a tunnel request.
pub const UPGRADE: &str = "flotilla-tunnel";
/// Entrances open at once: a guest that connects to every port of a peer's pods must not have
/// the node listen on all of them. Past it, the one used longest ago closes.
const MAX_ENTRANCES: usize = 1024;
/// How long reaching the far end and its answer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The near ends of the tunnels from this node.
pub(crate) struct Tunnels {
    far: Arc<Far>,
    entrances: Mutex<HashMap<SocketAddr, Entrance>>,
}

/// What an entrance needs to carry a connection: the peers as known now (a restarted peer
/// serves another certificate), and this node's identity.
struct Far {
    known: Arc<RwLock<Known>>,
    identity: Option<Issued>,
}

struct Entrance {
    accepting: JoinHandle<()>,
    used: Instant,
}

impl Drop for Entrance {
    fn drop(&mut self) {
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
        Tunnels { far: Arc::new(Far { known, identity }), entrances: Mutex::default() }
    }

    /// Listens on `to`, a pod address of a peer reached through a tunnel, unless an entrance
    /// already does. Something on this host that holds the address already serves it.
    pub(crate) fn open(&self, to: SocketAddr) {
        let mut entrances = self.entrances.lock().expect("entrances lock");
        if let Some(entrance) = entrances.get_mut(&to) {
            entrance.used = Instant::now();
            return;
        }
        if entrances.len() >= MAX_ENTRANCES
            && let Some(oldest) = entrances.iter().min_by_key(|(_, e)| e.used).map(|(at, _)| *at)
        {
            entrances.remove(&oldest);
        }
        let listener = match listen(to) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::debug!(%to, error = %e, "no tunnel entrance");
                return;
            }
        };
        let accepting = tokio::spawn(accept(listener, to, self.far.clone()));
        entrances.insert(to, Entrance { accepting, used: Instant::now() });
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

async fn accept(listener: TcpListener, to: SocketAddr, far: Arc<Far>) {
    loop {
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
    let identity = far.identity.as_ref().ok_or("this node has no client certificate")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate::new(Some(serving_cert), provider)))
        .with_client_auth_cert(
            rustls::pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                .filter_map(Result::ok)
                .collect(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(identity.key_der.clone().into()),
        )
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(api).await.map_err(|e| format!("{api}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::from(api.ip());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{api}: {e}"))?;
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

/// The far end's connection to `to`, from the caller's pod address when it gave one.
pub async fn connect_from(from: Option<Ipv4Addr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(from) = from {
        socket.bind(SocketAddr::new(from.into(), 0))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies both ways between a tunnel and a connection until both are done.
pub async fn splice(upgraded: hyper::upgrade::Upgraded, mut stream: TcpStream) {
    let mut upgraded = TokioIo::new(upgraded);
    let _ = tokio::io::copy_bidirectional(&mut upgraded, &mut stream).await;
}
