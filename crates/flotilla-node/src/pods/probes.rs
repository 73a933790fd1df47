//! A running container's probes, with the kubelet's timing: the startup probe first (the others
//! wait for it), then liveness and readiness on their own periods; thresholds of consecutive
//! results; `httpGet` (a status from 200 to 399 passes), `tcpSocket` (a connection passes) and
//! `exec` (the command, run in the container by its runtime, exits 0).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::Control;
use flotilla_wasm::Egress;

/// What a probe found, when it changes what the worker should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    /// The startup probe passed: the container has started.
    Started,
    /// Readiness changed.
    Ready(bool),
    /// A probe failed once (for the `Unhealthy` event): which, and why.
    Failed { probe: &'static str, message: String },
    /// The liveness (or startup) probe failed past its threshold: the container must be
    /// restarted.
    Unhealthy { probe: &'static str },
}

/// How the node reaches what a pod's probes and hooks name: over a new connection each time, as
/// the kubelet's prober does, and never at one of the node's own endpoints (its API, the
/// store's peers), which the pod's guests may not reach either: a pod's author would otherwise
/// have the agent call them for it, from the host, as upstream's kubelet would.
#[derive(Debug, Clone)]
pub(crate) struct ProbeClient {
    http: Client<HttpConnector, Empty<bytes::Bytes>>,
    egress: Arc<Egress>,
    /// Every probe and hook that would reach the pod over the network passes (a hollow node's
    /// pods, which listen nowhere): they are as ready as their runs are real.
    everything_answers: bool,
}

impl ProbeClient {
    pub(crate) fn new(egress: Arc<Egress>) -> ProbeClient {
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
        ProbeClient { http, egress, everything_answers: false }
    }

    /// A hollow node's: every probe and hook passes without a connection.
    pub(crate) fn hollow() -> ProbeClient {
        ProbeClient { everything_answers: true, ..ProbeClient::new(Arc::default()) }
    }

    /// Where a probe or a hook may connect for `port`, in order: the pod's address `ip`,
    /// unless `host` names another (an address, or a name, resolved here and connected to as
    /// resolved). One of the node's own endpoints is left out, and with nothing left the target
    /// is refused: the pod's own address too when it is one of the host's (`hosted`: a wasm
    /// pod's, on the host's loopback, where a listener on every address answers).
    async fn targets(
        &self,
        host: Option<&str>,
        ip: IpAddr,
        port: u16,
        hosted: bool,
    ) -> Result<Vec<SocketAddr>, String> {
        let host = host.filter(|h| !h.is_empty());
        let found: Vec<SocketAddr> = match host.map(|h| (h, h.parse::<IpAddr>())) {
            None if !hosted => return Ok(vec![SocketAddr::new(ip, port)]),
            None => vec![SocketAddr::new(ip, port)],
            Some((_, Ok(ip))) => vec![SocketAddr::new(ip, port)],
            Some((host, Err(_))) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("dial tcp: lookup {host}: {e}"))?
                .collect(),
        };
        let first = *found.first().ok_or_else(|| format!("dial tcp: lookup {}: no such host", host.unwrap_or("")))?;
        let allowed: Vec<SocketAddr> = found.into_iter().filter(|address| self.egress.allows(*address)).collect();
        if allowed.is_empty() {
            return Err(format!("dial tcp {first}: connect: permission denied (one of the node's own endpoints)"));
        }
        Ok(allowed)
    }
}

/// Runs `container`'s probes against `ip` until the task is dropped, reporting findings.
pub(crate) async fn run(
    container: Container,
    ip: IpAddr,
    hosted: bool,
    client: ProbeClient,
    control: Arc<dyn Control>,
    report: impl Fn(Finding),
) {
    let prober = Prober { container: &container, ip, hosted, client, control };
    if let Some(probe) = &container.startup_probe {
        let timing = Timing::of(probe);
        tokio::time::sleep(timing.initial_delay).await;
        let mut failures = 0;
        loop {
            match prober.check(probe, timing.timeout).await {
                Ok(()) => break,
                Err(message) => {
                    failures += 1;
                    report(Finding::Failed { probe: "Startup", message });
                    if failures >= timing.failure_threshold {
                        report(Finding::Unhealthy { probe: "Startup" });
                        return;
                    }
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    }
    report(Finding::Started);
    let liveness = container.liveness_probe.as_ref().map(|p| (p, Timing::of(p)));
    let readiness = container.readiness_probe.as_ref().map(|p| (p, Timing::of(p)));
    if readiness.is_none() {
        report(Finding::Ready(true));
    }
    let live = async {
        let Some((probe, timing)) = liveness else { return std::future::pending().await };
        tokio::time::sleep(timing.initial_delay).await;
        let mut failures = 0;
        loop {
            match prober.check(probe, timing.timeout).await {
                Ok(()) => failures = 0,
                Err(message) => {
                    failures += 1;
                    report(Finding::Failed { probe: "Liveness", message });
                    if failures >= timing.failure_threshold {
                        report(Finding::Unhealthy { probe: "Liveness" });
                        return;
                    }
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    };
    let ready = async {
        let Some((probe, timing)) = readiness else { return std::future::pending().await };
        tokio::time::sleep(timing.initial_delay).await;
        let (mut successes, mut failures, mut ready) = (0, 0, false);
        loop {
            match prober.check(probe, timing.timeout).await {
                Ok(()) => {
                    (successes, failures) = (successes + 1, 0);
                    if !ready && successes >= timing.success_threshold {
                        ready = true;
                        report(Finding::Ready(true));
                    }
                }
                Err(message) => {
                    (successes, failures) = (0, failures + 1);
                    report(Finding::Failed { probe: "Readiness", message });
                    if ready && failures >= timing.failure_threshold {
                        ready = false;
                        report(Finding::Ready(false));
                    }
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    };
    // Liveness ending means the container is to be restarted: nothing more to probe.
    tokio::select! {
        () = live => {}
        () = ready => {}
    }
}

/// A probe's timing, with upstream's defaults.
#[derive(Debug, Clone, Copy)]
struct Timing {
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Timing {
    fn of(probe: &Probe) -> Timing {
        let secs = |value: Option<i32>, default: i32| Duration::from_secs(value.unwrap_or(default).max(0) as u64);
        Timing {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

struct Prober<'a> {
    container: &'a Container,
    ip: IpAddr,
    /// The pod's address is one of the host's ([`ProbeClient::targets`]).
    hosted: bool,
    client: ProbeClient,
    /// The running container, which `exec` probes run their command in.
    control: Arc<dyn Control>,
}

impl Prober<'_> {
    /// One check: `Ok` if it passed, else why not, as upstream words it.
    async fn check(&self, probe: &Probe, timeout: Duration) -> Result<(), String> {
        if self.client.everything_answers {
            return Ok(());
        }
        if let Some(get) = &probe.http_get {
            let target = Target { ip: self.ip, hosted: self.hosted };
            let status = http_get(&self.client, get, self.container, target, timeout, "kube-probe/1.33").await?;
            return if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            };
        }
        if let Some(socket) = &probe.tcp_socket {
            let port = port(self.container, &socket.port)?;
            let host = socket.host.as_deref();
            let dial = async {
                let mut failed = String::new();
                for address in self.client.targets(host, self.ip, port, self.hosted).await? {
                    match tokio::net::TcpStream::connect(address).await {
                        Ok(_) => return Ok(()),
                        Err(e) => failed = format!("dial tcp {address}: connect: {e}"),
                    }
                }
                Err(failed)
            };
            // The lookup as well as the connections, within the probe's timeout.
            return match tokio::time::timeout(timeout, dial).await {
                Ok(result) => result,
                Err(_) => Err(format!("dial tcp {}:{port}: i/o timeout", host.unwrap_or(&self.ip.to_string()))),
            };
        }
        if probe.grpc.is_some() {
            return Err("gRPC probes are not supported by this node: use httpGet or tcpSocket".into());
        }
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            let executed = self.control.exec(command.clone(), timeout).await?;
            if executed.code == 0 {
                return Ok(());
            }
            // As the kubelet: what the command wrote is why.
            let output = String::from_utf8_lossy(&executed.output).trim_end().to_string();
            return Err(if output.is_empty() {
                format!("command {command:?} exited with {}", executed.code)
            } else {
                output
            });
        }
        // A probe with no handler passes.
        Ok(())
    }
}

/// Where a probe or a hook goes unless its action names a host: the pod's address, and
/// whether that is one of the host's ([`ProbeClient::targets`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub ip: IpAddr,
    pub hosted: bool,
}

/// `httpGet` against the pod (or the action's host): the answer's status code, or why there
/// was none, as upstream words it. A probe and a lifecycle hook judge the answer each their way.
pub(crate) async fn http_get(
    client: &ProbeClient,
    get: &HTTPGetAction,
    container: &Container,
    target: Target,
    timeout: Duration,
    user_agent: &str,
) -> Result<u16, String> {
    let port = port(container, &get.port)?;
    if client.everything_answers {
        return Ok(200);
    }
    let scheme = get.scheme.as_deref().unwrap_or("HTTP");
    if !scheme.eq_ignore_ascii_case("HTTP") {
        return Err(format!("{scheme} is not supported by this node: use HTTP"));
    }
    let host = get.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.ip.to_string());
    let path = get.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    let path = if path.starts_with('/') { path } else { format!("/{path}") };
    let url = format!("http://{host}:{port}{path}");
    let named = get.http_headers.iter().flatten().any(|h| h.name.eq_ignore_ascii_case("host"));
    let get_one = |address: SocketAddr| {
        // To the address found, named as the action names it.
        let mut request =
            http::Request::get(format!("http://{address}{path}")).header(http::header::USER_AGENT, user_agent);
        if !named {
            request = request.header(http::header::HOST, format!("{host}:{port}"));
        }
        for header in get.http_headers.iter().flatten() {
            request = request.header(header.name.as_str(), header.value.as_str());
        }
        request.body(Empty::new()).map_err(|e| format!("Get {url:?}: {e}"))
    };
    // The lookup as well as the request, within the timeout; each address found in turn.
    let answer = async {
        let mut failed = String::new();
        for address in client.targets(get.host.as_deref(), target.ip, port, target.hosted).await? {
            match client.http.request(get_one(address)?).await {
                Ok(response) => return Ok(response.status().as_u16()),
                Err(e) => failed = format!("Get {url:?}: {}", connect_error(&e)),
            }
        }
        Err(failed)
    };
    tokio::time::timeout(timeout, answer).await.map_err(|_| {
        format!("Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)")
    })?
}

/// A port by number, or by the name of one of the container's ports.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {name:?} is not a named port of the container")),
        },
    }
}

/// The root cause of a failed request, which is what a user needs (`connection refused`).
fn connect_error(err: &dyn std::error::Error) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_may_not_name_one_of_the_nodes_own_endpoints() {
        let own = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (own, other) = (own.local_addr().unwrap(), other.local_addr().unwrap());
        let client = ProbeClient::new(Arc::new(Egress::protecting(vec![own])));
        let pod: IpAddr = "127.0.0.1".parse().unwrap();
        // By address, by name, and through "this host": refused.
        for host in ["127.0.0.1", "localhost", "0.0.0.0", "::ffff:127.0.0.1"] {
            let refused = client.targets(Some(host), pod, own.port(), false).await.unwrap_err();
            assert!(refused.contains("one of the node's own endpoints"), "{host}: {refused}");
        }
        // The pod's own address, when it is one of the host's (a wasm pod's); not when the pod
        // has a network of its own, where that port is the pod's.
        assert!(client.targets(None, pod, own.port(), true).await.is_err());
        assert_eq!(client.targets(None, pod, own.port(), false).await, Ok(vec![own]));
        // Another port of the host, as the action names it.
        assert_eq!(client.targets(Some("127.0.0.1"), pod, other.port(), true).await, Ok(vec![other]));
        // An httpGet probe is refused before anything is sent.
        let get = HTTPGetAction {
            host: Some("localhost".into()),
            port: IntOrString::Int(own.port().into()),
            ..Default::default()
        };
        let (container, target) = (Container::default(), Target { ip: pod, hosted: true });
        let refused = http_get(&client, &get, &container, target, Duration::from_secs(1), "kube-probe/1.33").await;
        assert!(refused.unwrap_err().contains("one of the node's own endpoints"));
        // A name is tried at each of its addresses the node allows: `localhost`'s `::1`, where
        // nothing listens, then 127.0.0.1.
        let get = HTTPGetAction {
            host: Some("localhost".into()),
            port: IntOrString::Int(other.port().into()),
            ..Default::default()
        };
        let answered = http_get(&client, &get, &container, target, Duration::from_secs(1), "kube-probe/1.33").await;
        assert!(!answered.unwrap_err().contains("own endpoints"));
    }
}
