//! The userspace data path: a listener on each frontend that relays every connection it
//! accepts to one endpoint, as upstream's first kube-proxy did. A frontend without endpoints
//! has no listener, so a connection to it is refused at once rather than accepted and dropped.
//!
//! Listeners take `SO_REUSEPORT`: several agents on one host (the single-host default, or a test
//! cluster) each listen on the same frontends, and the kernel spreads connections over them.
//! A sync swaps a listener's endpoints in place; connections already relayed are left alone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_client::ObjectKey;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{DataPath, Route};

/// How long a connection to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections queued on a frontend before the kernel refuses more.
const BACKLOG: u32 = 1024;

/// The userspace data path.
#[derive(Debug, Default)]
pub struct Userspace {
    services: HashMap<ObjectKey, Vec<Frontend>>,
}

/// A listening frontend.
#[derive(Debug)]
struct Frontend {
    at: SocketAddr,
    listener: Arc<TcpListener>,
    route: watch::Sender<Route>,
    accepting: JoinHandle<()>,
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
        for route in routes.into_iter().filter(|r| !r.endpoints.is_empty()) {
            if let Some(i) = old.iter().position(|f| f.at == route.frontend) {
                let frontend = old.swap_remove(i);
                frontend.route.send_replace(route);
                kept.push(frontend);
                continue;
            }
            match listen(route.frontend) {
                Ok(listener) => {
                    let (at, listener) = (route.frontend, Arc::new(listener));
                    let (route, routes) = watch::channel(route);
                    let accepting = tokio::spawn(accept(listener.clone(), routes));
                    kept.push(Frontend { at, listener, route, accepting });
                }
                Err(e) => {
                    tracing::warn!(%service, frontend = %route.frontend, error = %e, "cannot listen on a frontend")
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

/// Accepts until aborted, relaying each connection on a task of its own.
async fn accept(listener: Arc<TcpListener>, route: watch::Receiver<Route>) {
    let affinity = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (client, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let route = route.borrow().clone();
        tokio::spawn(relay(client, from.ip(), route, affinity.clone()));
    }
}

/// Which endpoint each client went to last, and when (`sessionAffinity: ClientIP`).
type Affinity = Arc<Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>>;

async fn relay(mut client: TcpStream, from: IpAddr, route: Route, affinity: Affinity) {
    let _ = client.set_nodelay(true);
    let Some(mut endpoint) = connect(&route, from, &affinity).await else {
        // Every endpoint refused: the client sees its connection reset (a zero linger, which
        // cannot block), as a kernel data path would answer with a reject.
        let _ = rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO));
        return;
    };
    let _ = endpoint.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut endpoint).await;
}

/// Connects to an endpoint of `route`: the client's own under affinity, else one at random;
/// an endpoint that does not answer is skipped for the next.
async fn connect(route: &Route, from: IpAddr, affinity: &Affinity) -> Option<TcpStream> {
    let mut candidates = route.endpoints.clone();
    fastrand::shuffle(&mut candidates);
    if let Some(timeout) = route.affinity {
        let now = Instant::now();
        let mut clients = affinity.lock().expect("affinity lock");
        clients.retain(|_, (_, at)| now.duration_since(*at) < timeout);
        if let Some((endpoint, _)) = clients.get(&from)
            && let Some(i) = candidates.iter().position(|c| c == endpoint)
        {
            candidates.swap(0, i);
        }
    }
    for endpoint in candidates {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => {
                if route.affinity.is_some() {
                    affinity.lock().expect("affinity lock").insert(from, (endpoint, Instant::now()));
                }
                return Some(stream);
            }
            Ok(Err(e)) => tracing::debug!(%endpoint, error = %e, "endpoint refused"),
            Err(_) => tracing::debug!(%endpoint, "endpoint did not answer"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server on `at` that answers each connection with `name` and closes.
    async fn named(at: &str, name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    async fn ask(at: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(at).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    fn free_port(ip: &str) -> SocketAddr {
        let probe = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
        probe.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connections_spread_over_endpoints_follow_syncs_and_are_refused_without_any() {
        let a = named("127.0.0.21:0", "a").await;
        let b = named("127.0.0.22:0", "b").await;
        let frontend = free_port("127.0.0.20");
        let service = ObjectKey::new(Some("default"), "web");
        let mut path = Userspace::default();
        path.sync(&service, vec![Route { frontend, endpoints: vec![a, b], affinity: None }]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            seen.insert(ask(frontend).await.unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);

        // Affinity keeps a client on one endpoint.
        path.sync(&service, vec![Route { frontend, endpoints: vec![a, b], affinity: Some(Duration::from_secs(60)) }]);
        let first = ask(frontend).await.unwrap();
        for _ in 0..10 {
            assert_eq!(ask(frontend).await.unwrap(), first);
        }

        // An endpoint that went away is skipped.
        let gone = free_port("127.0.0.23");
        path.sync(&service, vec![Route { frontend, endpoints: vec![gone, b], affinity: None }]);
        for _ in 0..10 {
            assert_eq!(ask(frontend).await.unwrap(), "b");
        }

        // No endpoints: refused at once, not accepted and hung.
        path.sync(&service, vec![Route { frontend, endpoints: vec![], affinity: None }]);
        let refused = ask(frontend).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        path.sync(&service, vec![Route { frontend, endpoints: vec![a], affinity: None }]);
        assert_eq!(ask(frontend).await.unwrap(), "a");
        path.sync(&service, Vec::new());
        assert!(ask(frontend).await.is_err(), "a deleted Service's frontend is closed");
    }
}
