//! The userspace data path: a listener on each TCP frontend that relays every connection it
//! accepts to one endpoint, as upstream's first kube-proxy did (UDP Services need the kernel
//! data path). A frontend without endpoints
//! has no listener, so a connection to it is refused at once rather than accepted and dropped.
//! (The [`Activator`](crate::Activator)'s holding listeners accept and relay as these do.)
//!
//! Listeners take `SO_REUSEPORT`: several agents on one host (the single-host default, or a test
//! cluster) each listen on the same frontends, and the kernel spreads connections over them.
//! A sync swaps a listener's endpoints in place; connections already relayed are left alone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::ObjectKey;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::activator::{Activator, Unheld, unavailable};
use crate::frontends::Rotation;
use crate::{DataPath, PodNetwork, Protocol, Route};

/// How long a connection to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections queued on a frontend before the kernel refuses more.
const BACKLOG: u32 = 1024;
/// Connections relayed at once; past it, new ones wait in the backlog.
const MAX_RELAYS: usize = 8192;
/// What a held client may send before its endpoint comes, kept to be passed on.
const MAX_HELD_BYTES: usize = 64 * 1024;
/// How long a connection whose endpoints all refused it waits for others, when its Service
/// scales from zero.
const REFUSED_WAIT: Duration = Duration::from_secs(2);

/// The userspace data path.
pub struct Userspace {
    services: HashMap<ObjectKey, Vec<Frontend>>,
    /// Connections relayed at once, on all frontends: each holds two descriptors.
    relays: Arc<Semaphore>,
    /// Where endpoints on other nodes are made reachable before each connection.
    pods: Option<Arc<PodNetwork>>,
}

impl std::fmt::Debug for Userspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userspace").field("services", &self.services.len()).finish_non_exhaustive()
    }
}

impl Userspace {
    /// A relay to endpoints on this host, and through `pods` to those on other nodes.
    pub fn new(pods: Option<Arc<PodNetwork>>) -> Userspace {
        Userspace { services: HashMap::new(), relays: Arc::new(Semaphore::new(MAX_RELAYS)), pods }
    }
}

/// A listener that relays what it accepts: a Service's frontend here, or the activator's
/// holding listener.
#[derive(Debug)]
pub(crate) struct Frontend {
    /// Where it listens.
    pub(crate) at: SocketAddr,
    listener: Arc<TcpListener>,
    rotation: watch::Sender<Arc<Rotation>>,
    accepting: JoinHandle<()>,
}

impl Frontend {
    /// Listens on `at` (port 0: any) and relays each connection to an endpoint of `route`, as
    /// many at once as `relays` lets, holding them for `held`'s Service while there is none.
    pub(crate) fn open(
        at: SocketAddr,
        route: Route,
        relays: Arc<Semaphore>,
        pods: Option<Arc<PodNetwork>>,
        held: Option<(Arc<Activator>, ObjectKey)>,
    ) -> std::io::Result<Frontend> {
        let listener = Arc::new(listen(at)?);
        let at = listener.local_addr()?;
        let (rotation, rotations) = watch::channel(Arc::new(Rotation::new(route)));
        let accepting = tokio::spawn(accept(listener.clone(), rotations, relays, pods, held));
        Ok(Frontend { at, listener, rotation, accepting })
    }

    /// Relays to `route`'s endpoints from now on; connections already relayed are left alone.
    pub(crate) fn follow(&self, route: Route) {
        let next = self.rotation.borrow().followed_by(route);
        self.rotation.send_replace(Arc::new(next));
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        // Shut the socket now, not when the aborted task is next polled: from this moment a
        // connection to the frontend is refused.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        self.accepting.abort();
    }
}

impl DataPath for Userspace {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        let mut kept: Vec<Frontend> = Vec::new();
        let mut old = self.services.remove(service).unwrap_or_default();
        for route in routes {
            // UDP is the kernel data path's alone: a relay of datagrams is left out.
            if route.endpoints.is_empty() || route.protocol != Protocol::Tcp {
                continue;
            }
            if let Some(i) = old.iter().position(|f| f.at == route.frontend) {
                let frontend = old.swap_remove(i);
                frontend.follow(route);
                kept.push(frontend);
                continue;
            }
            let at = route.frontend;
            match Frontend::open(at, route, self.relays.clone(), self.pods.clone(), None) {
                Ok(frontend) => kept.push(frontend),
                Err(e) => {
                    tracing::warn!(%service, frontend = %at, error = %e, "cannot listen on a frontend")
                }
            }
        }
        // What is left of `old` is dropped here: those listeners close.
        if !kept.is_empty() {
            self.services.insert(service.clone(), kept);
        }
    }
}

fn listen(at: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if at.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(at)?;
    socket.listen(BACKLOG)
}

/// Accepts until aborted, relaying each connection on a task of its own, as many at once as
/// `relays` lets; while there is no endpoint, `held`'s activator holds them for its Service.
async fn accept(
    listener: Arc<TcpListener>,
    rotation: watch::Receiver<Arc<Rotation>>,
    relays: Arc<Semaphore>,
    pods: Option<Arc<PodNetwork>>,
    held: Option<(Arc<Activator>, ObjectKey)>,
) {
    loop {
        let Ok(permit) = relays.clone().acquire_owned().await else { return };
        let (client, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (pods, held, rotations) = (pods.clone(), held.clone(), rotation.clone());
        tokio::spawn(async move {
            relay(client, from.ip(), rotations, pods.as_deref(), held).await;
            drop(permit);
        });
    }
}

/// Relays `client` to an endpoint of the current rotation. Under `held` (the activator's
/// listener of a Service scaling from zero), a connection that finds no endpoint is held until
/// one comes, what the client sends meanwhile kept to be passed on; and one whose endpoints all
/// refuse it (a pod gone before its slice changed, one not listening yet) waits a moment for
/// other endpoints.
async fn relay(
    mut client: TcpStream,
    from: IpAddr,
    mut rotations: watch::Receiver<Arc<Rotation>>,
    pods: Option<&PodNetwork>,
    held: Option<(Arc<Activator>, ObjectKey)>,
) {
    use tokio::io::AsyncWriteExt;
    let _ = client.set_nodelay(true);
    let mut rotation = rotations.borrow_and_update().clone();
    let mut sent = Vec::new();
    if let Some((activator, service)) = &held
        && rotation.route.endpoints.is_empty()
    {
        match activator.hold(service, &mut rotations, read_until_closed(&mut client, &mut sent)).await {
            Ok(next) => rotation = next,
            Err(Unheld::Left) => return,
            Err(why) => return turn_away(client, &sent, &unavailable(service, why)).await,
        }
    }
    let mut endpoint = match connect(&rotation, from, pods).await {
        Some(endpoint) => endpoint,
        None if held.is_some() => {
            let refused = rotation.route.endpoints.clone();
            let others = rotations.wait_for(|r| !r.route.endpoints.is_empty() && r.route.endpoints != refused);
            let others = tokio::time::timeout(REFUSED_WAIT, others).await.ok().and_then(Result::ok).map(|r| r.clone());
            match others {
                Some(others) => match connect(&others, from, pods).await {
                    Some(endpoint) => endpoint,
                    None => return reset(&client),
                },
                None => return reset(&client),
            }
        }
        None => return reset(&client),
    };
    let _ = endpoint.set_nodelay(true);
    if endpoint.write_all(&sent).await.is_err() {
        return reset(&client);
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut endpoint).await;
}

/// Every endpoint refused: the client sees its connection reset (a zero linger, which cannot
/// block), as a kernel data path would answer with a reject.
fn reset(client: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(client, Some(Duration::ZERO));
}

/// Reads what a held client sends into `sent` (up to [`MAX_HELD_BYTES`], then no more), and
/// ends when the client goes away.
async fn read_until_closed(client: &mut TcpStream, sent: &mut Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 4096];
    while sent.len() < MAX_HELD_BYTES {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sent.extend_from_slice(&buffer[..n]),
        }
    }
    std::future::pending().await
}

/// Answers a held connection that no endpoint came for with `response` (an HTTP `503`: what
/// waits on a Service that scales from zero is a request to a function), once what the client
/// sent is read (if none was yet), so that closing does not reset the connection before it
/// reads the answer.
async fn turn_away(mut client: TcpStream, sent: &[u8], response: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if sent.is_empty() {
        let mut request = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(100), client.read(&mut request)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        client.write_all(response).await?;
        client.shutdown().await
    })
    .await;
}

/// Connects to an endpoint of `rotation`: the client's own under affinity, else one at random;
/// an endpoint that does not answer is skipped for the next.
async fn connect(rotation: &Rotation, from: IpAddr, pods: Option<&PodNetwork>) -> Option<TcpStream> {
    for endpoint in rotation.candidates(from) {
        if pods.is_some_and(|pods| !pods.reach(endpoint)) {
            tracing::debug!(%endpoint, "endpoint unreachable");
            continue;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => {
                rotation.connected(from, endpoint);
                return Some(stream);
            }
            Ok(Err(e)) => tracing::debug!(%endpoint, error = %e, "endpoint refused"),
            Err(_) => tracing::debug!(%endpoint, "endpoint did not answer"),
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server on `at` that answers each connection with `name` and closes.
    pub(crate) async fn named(at: &str, name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    pub(crate) async fn ask(at: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(at).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    pub(crate) fn free_port(ip: &str) -> SocketAddr {
        let probe = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
        probe.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connections_spread_over_endpoints_follow_syncs_and_are_refused_without_any() {
        let a = named("127.45.0.21:0", "a").await;
        let b = named("127.45.0.22:0", "b").await;
        let frontend = free_port("127.45.0.20");
        let service = ObjectKey::new(Some("default"), "web");
        let protected: SocketAddr = "127.45.0.24:2380".parse().unwrap();
        let mut path = crate::Guarded::new(move |endpoint| endpoint != protected, Userspace::new(None));
        path.sync(
            &service,
            vec![Route { protocol: Protocol::Tcp, frontend, endpoints: vec![a, b], affinity: None, keep_source: true }],
        );
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            seen.insert(ask(frontend).await.unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);

        // Affinity keeps a client on one endpoint.
        path.sync(
            &service,
            vec![Route {
                protocol: Protocol::Tcp,
                frontend,
                endpoints: vec![a, b],
                affinity: Some(Duration::from_secs(60)),
                keep_source: true,
            }],
        );
        let first = ask(frontend).await.unwrap();
        for _ in 0..10 {
            assert_eq!(ask(frontend).await.unwrap(), first);
        }

        // An endpoint that went away is skipped.
        let gone = free_port("127.45.0.23");
        path.sync(
            &service,
            vec![Route {
                protocol: Protocol::Tcp,
                frontend,
                endpoints: vec![gone, b],
                affinity: None,
                keep_source: true,
            }],
        );
        for _ in 0..10 {
            assert_eq!(ask(frontend).await.unwrap(), "b");
        }

        // The node's own endpoint is never relayed to, whatever a slice says.
        path.sync(
            &service,
            vec![Route {
                protocol: Protocol::Tcp,
                frontend,
                endpoints: vec![protected],
                affinity: None,
                keep_source: true,
            }],
        );
        assert!(ask(frontend).await.is_err(), "relayed to a protected endpoint");

        // No endpoints: refused at once, not accepted and hung.
        path.sync(
            &service,
            vec![Route { protocol: Protocol::Tcp, frontend, endpoints: vec![], affinity: None, keep_source: true }],
        );
        let refused = ask(frontend).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        path.sync(
            &service,
            vec![Route { protocol: Protocol::Tcp, frontend, endpoints: vec![a], affinity: None, keep_source: true }],
        );
        assert_eq!(ask(frontend).await.unwrap(), "a");
        // Another Service cannot take the frontend, nor relay to it.
        let thief = ObjectKey::new(Some("default"), "thief");
        let elsewhere = free_port("127.45.0.25");
        path.sync(
            &thief,
            vec![
                Route { protocol: Protocol::Tcp, frontend, endpoints: vec![b], affinity: None, keep_source: true },
                Route {
                    protocol: Protocol::Tcp,
                    frontend: elsewhere,
                    endpoints: vec![frontend],
                    affinity: None,
                    keep_source: true,
                },
            ],
        );
        for _ in 0..10 {
            assert_eq!(ask(frontend).await.unwrap(), "a");
        }
        assert!(ask(elsewhere).await.is_err(), "a relay to a frontend");
        // Once the Service is gone, its frontend goes to the one that asked for it.
        path.sync(&service, Vec::new());
        assert_eq!(ask(frontend).await.unwrap(), "b");
        path.sync(&thief, Vec::new());
        assert!(ask(frontend).await.is_err(), "a deleted Service's frontend is closed");
    }
}
