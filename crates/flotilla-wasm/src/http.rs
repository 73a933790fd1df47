//! Serving a `wasi:http/incoming-handler` component: the runtime listens on the pod's address
//! and declared port, and creates one instance per request from the component's `ProxyPre`,
//! so a function that gets no requests holds no instance (this is what makes scale to zero
//! cheap). Each request's instance has the container's env, directories and output, as a
//! container run would; the container's memory limit bounds all its instances together, and
//! at most its concurrency of them run at once: a burst beyond waits briefly for an instance,
//! and past that is turned away with 503 and `Retry-After`, so that a flood of requests to
//! one function takes neither the node's memory nor its neighbours' share.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::cluster::GuestNetwork;
use crate::limits::{CpuLimit, MemoryLimit, MemoryPool, metered};
use crate::output::Stream;
use crate::run::{ContainerSpec, Exit, Network, configure, grant_network};

pub(crate) struct ProxyGuest {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutgoingHooks,
    table: ResourceTable,
    memory: MemoryLimit,
    cpu: CpuLimit,
}

/// The component's outgoing requests (`wasi:http/outgoing-handler`): wasmtime-wasi-http's own
/// client, once every address the request's host resolves to passes the pod's egress policy.
/// A name the node answers itself (a Service's) is resolved here, a Service's frontend is
/// resolved to the endpoint the node picks, and the request is sent to that address, its `Host`
/// header unchanged. (Otherwise the client resolves the name again when it connects; a name
/// whose answer changes between the two lookups is a gap the socket layer's check, which sees
/// the connected address, does not have.) A plain HTTP request to a pod leaves from the pod's
/// own address ([`send_from`]).
struct OutgoingHooks {
    network: Option<Network>,
}

type Sent = (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>);

impl WasiHttpHooks for OutgoingHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, HttpError>> + Send> {
        drop(fut);
        let network = self.network.clone();
        Box::new(async move {
            let mut request = request;
            let uri = request.uri();
            let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?.trim_matches(['[', ']']).to_string();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let allows = |to: SocketAddr| network.as_ref().is_none_or(|n| n.allows(to));
            let nxdomain = || HttpError::DnsError { rcode: Some("NXDOMAIN".into()), info_code: None };
            let (destination, chosen) = match network.as_ref().and_then(|n| crate::cluster::resolve(n, &host)) {
                // A name the node knows: one of its addresses, as a resolver's answer would be
                // taken (a headless Service's pods are spread over).
                Some(addresses) => {
                    let ip = *addresses.get(fastrand::usize(..addresses.len().max(1))).ok_or_else(nxdomain)?;
                    (SocketAddr::new(ip, port), true)
                }
                None => {
                    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                        .await
                        .map_err(|_| HttpError::DnsError { rcode: None, info_code: None })?
                        .collect();
                    if addresses.iter().any(|address| !allows(*address)) {
                        return Err(HttpError::DestinationIpProhibited);
                    }
                    (*addresses.first().ok_or_else(nxdomain)?, false)
                }
            };
            let to = |n: &Network| crate::cluster::connect_to(n, crate::run::Protocol::Tcp, destination);
            let (destination, chosen) = match network.as_ref().map(to) {
                None => (destination, chosen),
                Some(Some(to)) => (to, chosen || to != destination),
                Some(None) => return Err(HttpError::ConnectionRefused),
            };
            if !allows(destination) {
                return Err(HttpError::DestinationIpProhibited);
            }
            if chosen {
                let mut parts = request.uri().clone().into_parts();
                parts.authority = Some(destination.to_string().parse().map_err(|_| HttpError::HttpRequestUriInvalid)?);
                *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| HttpError::HttpRequestUriInvalid)?;
            }
            let pod = network.as_ref().filter(|n| n.pod_network.as_ref().is_some_and(|p| p.contains(destination.ip())));
            match pod {
                Some(network) if !https => send_from(network.pod_ip, destination, request, options).await,
                _ => {
                    let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
                    Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
                }
            }
        })
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a plain HTTP/1.1 `request` to `destination` over a connection from `source`: what
/// `default_send_request` does, less TLS and the between-bytes timeout, with the socket bound
/// before it connects, which that function cannot be asked to do.
async fn send_from(
    source: IpAddr,
    destination: SocketAddr,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<Sent, HttpError> {
    let timeout = |chosen: Option<std::time::Duration>| chosen.unwrap_or(std::time::Duration::from_secs(600));
    let connect_timeout = timeout(options.and_then(|o| o.connect_timeout));
    let first_byte_timeout = timeout(options.and_then(|o| o.first_byte_timeout));
    let socket = if destination.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
    let socket = socket.map_err(HttpError::Connect)?;
    socket.bind(SocketAddr::new(source, 0)).map_err(HttpError::Connect)?;
    let stream = tokio::time::timeout(connect_timeout, socket.connect(destination))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let (mut sender, connection) =
        tokio::time::timeout(connect_timeout, hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)??;
    // Driven on its own task until the response's body is read or dropped, and no longer than
    // the io future wasmtime holds for it: dropping that aborts the task.
    let connection = AbortOnDrop(tokio::spawn(connection));
    // The request line carries the path alone: the authority is for a proxy.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *request.uri_mut() =
        http::Uri::builder().path_and_query(path).build().map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)??;
    let io = async move {
        let mut connection = connection;
        match (&mut connection.0).await {
            Ok(result) => result.map_err(HttpError::from),
            Err(_) => Ok(()),
        }
    };
    Ok((response.map(|body| body.map_err(HttpError::from).boxed_unsync()), Box::new(io)))
}

impl WasiView for ProxyGuest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl GuestNetwork for ProxyGuest {
    fn network(&self) -> Option<&Network> {
        self.hooks.network.as_ref()
    }
}

impl WasiHttpView for ProxyGuest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// The requests a `wasi:http` container is serving and has been sent, which the node reports
/// as its custom metrics (`requests_in_flight`, `requests_per_second`) for the HPA. A request
/// counts from its arrival (waiting for an instance included) until its response's head is
/// sent: a handler that streams its body on is not in flight while it does. Besides the
/// requests in flight now, it keeps their sum over time (Knative's concurrency: its change
/// over a window is the average in flight over that window), so that short requests between
/// two readings are seen, which a reading of the moment would miss.
#[derive(Debug, Default)]
pub struct Requests {
    /// Whether the container serves HTTP here at all: a container that does not (a command,
    /// a core module with its own sockets) has no request counts, rather than counts of zero.
    serving: std::sync::atomic::AtomicBool,
    counts: std::sync::Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    in_flight: u64,
    total: u64,
    /// Time spent in flight by the requests that ended, in nanoseconds.
    ended: u128,
    /// The arrival times of those in flight, summed, in nanoseconds since [`Requests::epoch`].
    arrivals: u128,
}

/// When request times count from: the first time a container's requests are counted.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn since_epoch(at: std::time::Instant) -> u128 {
    at.saturating_duration_since(epoch()).as_nanos()
}

impl Requests {
    pub fn new() -> Arc<Requests> {
        Arc::default()
    }

    /// Whether requests are counted: the container is a `wasi:http` component served here.
    pub fn counted(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests in flight now, requests received since the container started (those turned
    /// away included), and the time all of them have spent in flight (its change over a window
    /// is the average in flight over it).
    pub fn read(&self) -> (u64, u64, std::time::Duration) {
        let now = since_epoch(std::time::Instant::now());
        let counts = self.counts.lock().expect("request counts lock");
        let running = (now * u128::from(counts.in_flight)).saturating_sub(counts.arrivals);
        let busy = counts.ended.saturating_add(running);
        let busy = std::time::Duration::from_nanos(u64::try_from(busy).unwrap_or(u64::MAX));
        (counts.in_flight, counts.total, busy)
    }

    /// One request more, in flight until the guard is dropped.
    fn arrived(self: &Arc<Requests>) -> InFlight {
        let at = std::time::Instant::now();
        let mut counts = self.counts.lock().expect("request counts lock");
        counts.total += 1;
        counts.in_flight += 1;
        counts.arrivals += since_epoch(at);
        InFlight { requests: self.clone(), at }
    }
}

struct InFlight {
    requests: Arc<Requests>,
    at: std::time::Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.requests.counts.lock().expect("request counts lock");
        counts.in_flight -= 1;
        counts.arrivals -= since_epoch(self.at);
        counts.ended += self.at.elapsed().as_nanos();
    }
}

/// Requests a `wasi:http` container serves at once unless its pod says otherwise (the
/// annotation `http.flotilla.dev/max-concurrency`). Each holds an instance; together they
/// share the container's memory limit.
pub const DEFAULT_HTTP_CONCURRENCY: usize = 32;
/// Requests that may wait for an instance, per instance the container may run: a burst is
/// absorbed, a flood is not queued without end.
const QUEUED_PER_INSTANCE: usize = 2;
/// How long a request waits for an instance before it is turned away.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The door to a container's instances: how many run, how many wait.
#[derive(Debug)]
struct Gate {
    running: Arc<tokio::sync::Semaphore>,
    concurrency: usize,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn new(concurrency: usize) -> Gate {
        let concurrency = concurrency.max(1);
        Gate { running: Arc::new(tokio::sync::Semaphore::new(concurrency)), concurrency, waiting: Default::default() }
    }

    /// A place for one more instance, if one frees in time and the queue is not full.
    async fn enter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Some(permit);
        }
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.concurrency * QUEUED_PER_INSTANCE {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = tokio::time::timeout(QUEUE_WAIT, self.running.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit.ok().and_then(Result::ok)
    }
}

/// 503 for a request no instance was free for, with a hint to retry.
fn busy(spec: &ContainerSpec, concurrency: usize) -> hyper::Response<HyperOutgoingBody> {
    let message = format!(
        "the function is busy: {concurrency} requests in flight, its limit (annotation http.flotilla.dev/max-concurrency), and more waiting; retry later\n"
    );
    spec.output.write(Stream::Stderr, message.as_bytes());
    let body = Full::new(Bytes::from(message)).map_err(|never| match never {}).boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    response
}

/// Serves `pre` until the future is dropped, which ends every request in flight, or until the
/// container is told to stop ([`Terminate`](crate::Terminate)): then it takes no more
/// connections, lets each open one finish the request it carries (closing it after), and
/// ends with exit 0 once all have. Ends by itself otherwise only if it cannot listen.
pub(crate) async fn serve(engine: &Engine, pre: &ProxyPre<ProxyGuest>, spec: ContainerSpec) -> Exit {
    let Some(network) = spec.network.clone() else {
        return Exit::Failed {
            message: "a wasi:http component is served on its pod's address, and this pod has none".into(),
        };
    };
    let Some(&port) = network.ports.first() else {
        return Exit::Failed {
            message: "a wasi:http component is served on its container's port: declare a containerPort".into(),
        };
    };
    let listener = match tokio::net::TcpListener::bind((network.listen_ip(), port)).await {
        Ok(listener) => listener,
        Err(err) => return Exit::Failed { message: format!("cannot listen on {}:{port}: {err}", network.pod_ip) },
    };
    spec.requests.serving.store(true, std::sync::atomic::Ordering::Relaxed);
    let gate = Arc::new(Gate::new(spec.http_concurrency.unwrap_or(DEFAULT_HTTP_CONCURRENCY)));
    let pool = spec.memory.clone();
    let spec = Arc::new(spec);
    // Dropping the set (when the container is stopped) aborts every connection; dropping
    // `_stop` ends every request's instance, including one still streaming its body.
    let mut connections = tokio::task::JoinSet::new();
    let (_stop, stopped) = tokio::sync::watch::channel(());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(%err, "accepting a connection for a wasi:http component");
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = spec.terminate.received() => break,
        };
        let _ = stream.set_nodelay(true);
        let (engine, pre, spec, stopped) = (engine.clone(), pre.clone(), spec.clone(), stopped.clone());
        let (gate, pool, terminate) = (gate.clone(), pool.clone(), spec.terminate.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (engine, pre, spec, stopped) = (engine.clone(), pre.clone(), spec.clone(), stopped.clone());
                let (gate, pool) = (gate.clone(), pool.clone());
                async move {
                    let _counted = spec.requests.arrived();
                    let Some(permit) = gate.enter().await else {
                        return Ok::<_, Infallible>(busy(&spec, gate.concurrency));
                    };
                    Ok(handle(&engine, &pre, &spec, stopped, request, permit, pool).await)
                }
            });
            let connection = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = terminate.received() => {
                    // The request it carries is finished and answered, and the connection closed.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%err, "a wasi:http connection ended with an error");
            }
        });
    }
    // Told to stop: no more connections; those open end once their requests are answered.
    drop(listener);
    while connections.join_next().await.is_some() {}
    Exit::Exited(0)
}

/// One request: a fresh instance, its `handle` called, its response streamed back. A failure
/// is answered 500, and written to the container's log as a crashed run would be. The
/// instance holds `permit`, its place among the container's instances, and memory from
/// `pool`, until it ends.
async fn handle(
    engine: &Engine,
    pre: &ProxyPre<ProxyGuest>,
    spec: &ContainerSpec,
    mut stopped: tokio::sync::watch::Receiver<()>,
    request: hyper::Request<hyper::body::Incoming>,
    permit: tokio::sync::OwnedSemaphorePermit,
    pool: Arc<MemoryPool>,
) -> hyper::Response<HyperOutgoingBody> {
    let failed = |message: String| {
        spec.output.write(Stream::Stderr, format!("{message}\n").as_bytes());
        let body = Full::new(Bytes::from(format!("{message}\n"))).map_err(|never| match never {}).boxed_unsync();
        let mut response = hyper::Response::new(body);
        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        response
    };
    let mut wasi = WasiCtxBuilder::new();
    if let Err(message) = configure(&mut wasi, spec) {
        return failed(message);
    }
    grant_network(&mut wasi, spec.network.as_ref());
    let guest = ProxyGuest {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        hooks: OutgoingHooks { network: spec.network.clone() },
        table: ResourceTable::new(),
        memory: MemoryLimit::sharing(pool),
        cpu: CpuLimit::new(spec.cpu_limit),
    };
    let mut store = Store::new(engine, guest);
    store.limiter(|guest| &mut guest.memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut guest| Ok(guest.data_mut().cpu.on_tick()));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let prepared = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|request| Ok((request, store.data_mut().http().new_response_outparam(sender)?)));
    let (request, out) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return failed(format!("cannot pass the request to the component: {err:#}")),
    };
    let (pre, cpu_time) = (pre.clone(), spec.cpu_time.clone());
    // The handler may go on streaming its body after it has set the response, so it runs in a
    // task of its own; the task holds the instance, and ends with it.
    let task = tokio::spawn(async move {
        let _permit = permit;
        let work = metered(&cpu_time, async {
            let proxy = pre.instantiate_async(&mut store).await?;
            let result = proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await;
            result.map_err(|err| match store.data().memory.exceeded {
                Some(_) => err
                    .context("out of memory: the request's instance outgrew what its container's memory limit left it"),
                None => err,
            })
        });
        tokio::select! {
            result = work => result,
            // Only closes, never changes: the container was stopped.
            _ = stopped.changed() => Err(wasmtime::format_err!("the container was stopped")),
        }
    });
    match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => failed(format!("the component answered with an error: {code:?}")),
        Err(_) => match task.await {
            Ok(Ok(())) => failed("the component returned without setting a response".into()),
            Ok(Err(err)) => failed(format!("the component failed: {err:?}")),
            Err(err) => failed(format!("the component's task ended: {err}")),
        },
    }
}
