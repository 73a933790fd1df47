//! The node's HTTP API, which the API server proxies `pods/log` to (the kubelet's
//! `/containerLogs/{namespace}/{pod}/{container}`), and which other nodes tunnel to this node's
//! pods through (`/tunnel/{address}`, see `flotilla_net::tunnel`). Who calls is told by the
//! authentication layer every listener shares (`flotilla_auth`): a client certificate the
//! cluster CA issued (the serving TLS verifies it), or a bearer token the API server vouches for
//! (a `TokenReview`); only `system:masters` (the API server's own certificate, the admin's)
//! reads logs and stats, `system:monitoring` (the metrics token) too reads `/metrics` and
//! `/metrics/resource`, and only nodes tunnel. Errors are `Status` objects,
//! which the API server passes on as they are.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_auth::identity::{MASTERS, MONITORING, NODE_PREFIX, NODES};
use flotilla_auth::{Authenticate, Authenticator, UserInfo};
use serde_json::json;

use crate::Node;
use crate::logs::{self, LogOptions};

#[derive(Clone)]
struct Server {
    node: Arc<Node>,
}

pub(crate) fn router(node: Arc<Node>) -> Router {
    // Certificates for everyone; a token only for the metrics reader (reviewed by the API
    // server): the admin's token is no good here, so no one need send it to a node.
    let review = crate::prometheus::ApiTokenReview(node.client.clone());
    let authenticator = Authenticator::new().with_token_review(review, &[MONITORING]);
    Router::new()
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/exec/{namespace}/{pod}/{container}", get(exec))
        .route("/stats/summary", get(summary))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(resource_metrics))
        .route("/stats/held", get(held))
        .route_layer(axum::middleware::from_fn(masters_only))
        .route("/tunnel/{to}", get(tunnel))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Server { node })
        .layer(Authenticate::layer(authenticator))
}

/// Upstream's kubelet asks the API server whether a caller may read `nodes/log` (logs),
/// `nodes/stats` (the summary) or `nodes/metrics`; here, with no RBAC yet, that is
/// `system:masters`: the API server (which authorized the client's `pods/log` already, and
/// reads the summaries for the resource metrics) and the admin; and for the metrics,
/// `system:monitoring`.
async fn masters_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path();
    let resource = match () {
        _ if path.starts_with("/stats") => "nodes/stats",
        _ if path.starts_with("/metrics") => "nodes/metrics",
        _ if path.starts_with("/exec") => "nodes/proxy",
        _ => "nodes/log",
    };
    match request.extensions().get::<UserInfo>() {
        Some(user) if user.in_group(MASTERS) => next.run(request).await,
        Some(user) if user.in_group(MONITORING) && resource == "nodes/metrics" => next.run(request).await,
        Some(user) if !user.is_anonymous() => status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("User {:?} cannot get resource \"{resource}\" in API group \"\" at the cluster scope", user.name),
        ),
        _ => status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into()),
    }
}

/// The Summary API: what the node and its containers use now; with `only_requests=true`, only
/// the request counts of the containers that count them.
async fn summary(State(server): State<Server>, RawQuery(query): RawQuery) -> Response {
    let node = server.node.clone();
    let only_requests = query.as_deref().unwrap_or_default().split('&').any(|pair| pair == "only_requests=true");
    let only = if only_requests { crate::stats::Only::Requests } else { crate::stats::Only::Everything };
    match tokio::task::spawn_blocking(move || crate::stats::summary(&node, only)).await {
        Ok(summary) => {
            let body = serde_json::to_vec(&summary).unwrap_or_default();
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("reading the node's usage: {e}")),
    }
}

/// The connections held for Services scaling up from zero.
async fn held(State(server): State<Server>) -> Response {
    let services =
        server.node.activator.held().into_iter().map(|(service, requests)| flotilla_api::stats::HeldService {
            namespace: service.namespace.unwrap_or_default(),
            name: service.name,
            requests: requests as u64,
        });
    let body = serde_json::to_vec(&flotilla_api::stats::Held { services: services.collect() }).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The node's own measurements, in Prometheus text.
async fn metrics(State(server): State<Server>) -> Response {
    let text = crate::prometheus::text(&server.node);
    ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
}

/// The kubelet's resource metrics, in Prometheus text: what the summary says, for scrapers.
async fn resource_metrics(State(server): State<Server>) -> Response {
    let node = server.node.clone();
    match tokio::task::spawn_blocking(move || {
        crate::stats::resource_metrics(&crate::stats::summary(&node, crate::stats::Only::Everything))
    })
    .await
    {
        Ok(text) => {
            ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
        }
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("reading the node's usage: {e}")),
    }
}

/// A tunnel from a pod of node `caller` to `to`, one of this node's pods: the request is
/// authorized and the connection made by the pod network (`PodNetwork::answer`), and the
/// request upgraded to the raw stream.
async fn tunnel(
    State(server): State<Server>,
    Path(to): Path<String>,
    RawQuery(query): RawQuery,
    mut request: axum::extract::Request,
) -> Response {
    let forbidden = |message: String| status(StatusCode::FORBIDDEN, "Forbidden", message);
    let bad = |message: String| status(StatusCode::BAD_REQUEST, "BadRequest", message);
    let caller = match request.extensions().get::<UserInfo>() {
        Some(user) if user.in_group(NODES) && user.name.starts_with(NODE_PREFIX) => {
            user.name[NODE_PREFIX.len()..].to_string()
        }
        Some(user) if !user.is_anonymous() => {
            return forbidden(format!("User {:?} cannot tunnel to pods: only nodes do", user.name));
        }
        _ => return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into()),
    };
    let to = match to.parse::<std::net::SocketAddr>() {
        Ok(to) if to.is_ipv4() => to,
        _ => return bad(format!("{to:?} is not an IPv4 address and port")),
    };
    let from = match query.as_deref().unwrap_or_default().split('&').find_map(|pair| pair.strip_prefix("from=")) {
        None => None,
        Some(from) => match from.parse::<std::net::Ipv4Addr>() {
            Ok(from) => Some(from),
            Err(_) => return bad(format!("from: {from:?} is not an IPv4 address")),
        },
    };
    let headers = request.headers();
    let says = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    if !says(header::CONNECTION, "upgrade") || !says(header::UPGRADE, flotilla_net::tunnel::UPGRADE) {
        return bad(format!("a tunnel is an HTTP/1.1 request upgraded to {:?}", flotilla_net::tunnel::UPGRADE));
    }
    if !server.node.egress.allows(to) {
        return forbidden(format!("{to} is one of the node's own endpoints"));
    }
    let Some(pod_network) = &server.node.pod_network else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this node carries no pod traffic".into(),
        );
    };
    let far = match pod_network.0.answer(&caller, from, to).await {
        Ok(far) => far,
        Err(flotilla_net::tunnel::Refusal::Forbidden(why)) => return forbidden(why),
        Err(flotilla_net::tunnel::Refusal::Unavailable(why)) => {
            return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", why);
        }
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgraded.await {
            far.splice(upgraded).await;
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    response.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static(flotilla_net::tunnel::UPGRADE));
    response
}

/// The query of `GET pods/{name}/log`, as the API server forwards it.
#[derive(Debug, Default)]
struct LogQuery {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    limit_bytes: Option<i64>,
}

impl LogQuery {
    fn parse(query: Option<&str>) -> LogQuery {
        let mut parsed = LogQuery::default();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            let value = decode(value);
            let flag = flotilla_api::query::boolean(&value);
            match key {
                "follow" => parsed.follow = flag,
                "previous" => parsed.previous = flag,
                "timestamps" => parsed.timestamps = flag,
                "tailLines" => parsed.tail_lines = value.parse().ok(),
                "sinceSeconds" => parsed.since_seconds = value.parse().ok(),
                "sinceTime" => parsed.since_time = Some(value),
                "limitBytes" => parsed.limit_bytes = value.parse().ok(),
                _ => {}
            }
        }
        parsed
    }
}

/// `kubectl exec` in a running container of a pod on this node, over the WebSocket the request
/// upgrades to (`exec.rs`).
async fn exec(
    State(server): State<Server>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    upgrade: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let bad = |message: String| status(StatusCode::BAD_REQUEST, "BadRequest", message);
    let options = match crate::exec::Options::parse(query.as_deref()) {
        Ok(options) => options,
        Err(message) => return bad(message),
    };
    let control = server
        .node
        .pods
        .get(&namespace, &pod)
        .and_then(|entry| entry.running.lock().expect("pod entry lock").get(&container).cloned());
    let Some(control) = control else {
        return bad(format!("unable to upgrade connection: container not found ({container:?})"));
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade.protocols(crate::exec::PROTOCOLS),
        Err(rejection) => return bad(format!("a stream is a WebSocket upgrade: {rejection}")),
    };
    if upgrade.selected_protocol().is_none() {
        return bad(format!("a stream is served in {}", crate::exec::PROTOCOLS.join(" or ")));
    }
    crate::exec::serve(upgrade, control, options)
}

/// Percent-decoding of a query value (`+` is a space).
pub(crate) fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&value[i + 1..i + 3], 16) {
                Ok(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn container_logs(
    State(server): State<Server>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(entry) = server.node.pods.get(&namespace, &pod) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("pods \"{pod}\" not found"));
    };
    let Some(logs) = entry.containers.lock().expect("pod entry lock").get(&container).cloned() else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("container {container} is not valid for pod {pod}"),
        );
    };
    let query = LogQuery::parse(query.as_deref());
    let since = match (query.since_seconds, query.since_time.as_deref()) {
        (Some(secs), _) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs.max(0))),
        (None, Some(time)) => match time.parse::<jiff::Timestamp>() {
            Ok(time) => Some(time),
            Err(err) => return status(StatusCode::BAD_REQUEST, "BadRequest", format!("sinceTime {time:?}: {err}")),
        },
        (None, None) => None,
    };
    let options = LogOptions {
        follow: query.follow,
        tail_lines: query.tail_lines.map(|n| n.max(0) as u64),
        since,
        timestamps: query.timestamps,
        limit_bytes: query.limit_bytes.map(|n| n.max(0) as u64),
    };
    let (path, progress) = if query.previous {
        let path = logs::container_path(&entry.log_dir, &container, logs.restart_count - 1);
        if logs.restart_count == 0 || !path.exists() {
            let message = format!("previous terminated container \"{container}\" in pod \"{pod}\" not found");
            return status(StatusCode::BAD_REQUEST, "BadRequest", message);
        }
        (path, None)
    } else {
        if !logs.started {
            let reason = logs.waiting.as_deref().unwrap_or("ContainerCreating");
            let message = format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}");
            return status(StatusCode::BAD_REQUEST, "BadRequest", message);
        }
        let progress = logs.live.as_ref().map(|log| log.subscribe());
        (logs::container_path(&entry.log_dir, &container, logs.restart_count), progress)
    };
    let chunks = logs::read(path, options, progress);
    let body = futures::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk), chunks))
    });
    ([(header::CONTENT_TYPE, "text/plain")], Body::from_stream(body)).into_response()
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
