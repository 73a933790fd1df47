//! Requests the API server makes to nodes on a client's behalf (`pods/log`, `pods/exec`), as upstream's
//! apiserver proxies to the kubelet. A node serves HTTPS with a certificate of its own; the
//! server accepts only the certificate whose SHA-256 the node published on its Node object
//! (which NodeRestriction lets only that node write), and presents the server's own client
//! certificate (`kube-apiserver-kubelet-client` in `system:masters`), which nodes require.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use flotilla_api::{ApiError, Reason, SERVING_CERT_ANNOTATION};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;

use crate::error::Result;
use flotilla_auth::PinnedCertificate;
use flotilla_auth::pki::Issued;

/// Connecting to a node and receiving its answer's head must not take longer: a node that
/// stopped answering must not hold a client's request forever.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the API server reaches nodes.
#[derive(Clone, Debug)]
pub(crate) struct NodeProxy {
    /// The certificate nodes accept, `None` when the cluster has no nodes.
    client: Option<Issued>,
}

impl NodeProxy {
    pub(crate) fn new(client: Option<Issued>) -> NodeProxy {
        NodeProxy { client }
    }

    /// `GET path_and_query` on `node`, the answer streamed back as the node gave it.
    pub(crate) async fn get(&self, node: &Value, path_and_query: &str) -> Result<Response> {
        let response = self.send(node, path_and_query, &HeaderMap::new()).await?;
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::OK);
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let mut answer = Response::new(Body::new(response.into_body()));
        *answer.status_mut() = status;
        if let Some(content_type) = content_type {
            answer.headers_mut().insert(header::CONTENT_TYPE, content_type);
        }
        Ok(answer.into_response())
    }

    /// `GET path_and_query` on `node`, its answer read whole: at most `limit` bytes.
    pub(crate) async fn read(&self, node: &Value, path_and_query: &str, limit: usize) -> Result<bytes::Bytes> {
        let response = self.send(node, path_and_query, &HeaderMap::new()).await?;
        let read = http_body_util::Limited::new(response.into_body(), limit).collect().await;
        read.map(|body| body.to_bytes()).map_err(|e| {
            let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            ApiError::new(Reason::ServiceUnavailable, format!("reading what node {name:?} answered: {e}")).into()
        })
    }

    /// Carries a client's stream into a pod (`pods/exec`'s WebSocket) to `path_and_query` on
    /// `node`, as upstream's API server proxies it to the kubelet: the upgrade is asked of the
    /// node with the client's WebSocket headers, the node's answer is the client's, and once
    /// both sides have switched, bytes flow both ways untouched.
    pub(crate) async fn upgrade(
        &self,
        node: &Value,
        path_and_query: &str,
        headers: &HeaderMap,
        client: OnUpgrade,
    ) -> Result<Response> {
        let forwarded = [
            header::CONNECTION,
            header::UPGRADE,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_PROTOCOL,
        ];
        let asked = forwarded.iter().filter_map(|name| Some((name.clone(), headers.get(name)?.clone()))).collect();
        let mut response = self.send(node, path_and_query, &asked).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(ApiError::internal(format!("the node answered {} to an upgrade", response.status())).into());
        }
        let node_side = hyper::upgrade::on(&mut response);
        let mut answer = Response::new(Body::empty());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for name in [header::CONNECTION, header::UPGRADE, header::SEC_WEBSOCKET_ACCEPT, header::SEC_WEBSOCKET_PROTOCOL]
        {
            if let Some(value) = response.headers().get(&name) {
                answer.headers_mut().insert(name, value.clone());
            }
        }
        tokio::spawn(async move {
            let (Ok(client), Ok(node)) = tokio::join!(client, node_side) else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(node)).await;
        });
        Ok(answer)
    }

    /// The node's answer to `GET path_and_query` with `headers`: a success (or the switch an
    /// upgrade asked for), or else its refusal as an error.
    async fn send(
        &self,
        node: &Value,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let unreachable =
            |why: String| ApiError::new(Reason::ServiceUnavailable, format!("cannot reach node {name:?}: {why}"));
        let client = self.client.as_ref().ok_or_else(|| unreachable("this server has no node credentials".into()))?;
        let address = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|addresses| {
                let of = |kind: &str| addresses.iter().find(|a| a["type"] == kind).and_then(|a| a["address"].as_str());
                of("InternalIP").or_else(|| of("ExternalIP"))
            })
            .ok_or_else(|| unreachable("it reports no address".into()))?;
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0 && *p <= 65535)
            .ok_or_else(|| unreachable("it reports no port".into()))?;
        let fingerprint = node
            .pointer(&format!("/metadata/annotations/{}", SERVING_CERT_ANNOTATION.replace('/', "~1")))
            .and_then(Value::as_str)
            .ok_or_else(|| unreachable("it publishes no serving certificate".into()))?
            .to_string();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedCertificate::new(Some(fingerprint), provider.clone()));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unreachable(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(certificates(&client.cert_pem), key(&client.key_der))
            .map_err(|e| unreachable(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let host = if address.contains(':') { format!("[{address}]") } else { address.to_string() };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((address, port as u16)).await.map_err(|e| e.to_string())?;
            let server_name = ServerName::try_from(address.to_string()).map_err(|e| e.to_string())?;
            let tls = connector.connect(server_name, tcp).await.map_err(|e| e.to_string())?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                if let Err(err) = connection.with_upgrades().await {
                    tracing::debug!(%err, "a node connection ended");
                }
            });
            let mut request = Request::get(path_and_query)
                .header(header::HOST, format!("{host}:{port}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            request.headers_mut().extend(headers.clone());
            sender.send_request(request).await.map_err(|e| e.to_string())
        };
        let response = tokio::time::timeout(NODE_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", NODE_TIMEOUT.as_secs())))?
            .map_err(unreachable)?;
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        if !status.is_success() && status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(status, response.into_body()).await.into());
        }
        Ok(response)
    }
}

/// A node's refusal as this server's own error, so that the client gets one `Status` rendered
/// the one way (upstream's API server likewise answers with its own Status when the kubelet
/// refuses). The node writes a `Status`; anything else becomes an internal error naming it.
async fn refusal(status: StatusCode, body: hyper::body::Incoming) -> ApiError {
    /// More than any Status a node writes.
    const LIMIT: usize = 64 * 1024;
    #[derive(serde::Deserialize)]
    struct NodeStatus {
        reason: Reason,
        message: String,
    }
    let bytes = http_body_util::Limited::new(body, LIMIT).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    match serde_json::from_slice::<NodeStatus>(&bytes) {
        Ok(NodeStatus { reason, message }) => ApiError::new(reason, message),
        Err(_) => ApiError::internal(format!(
            "the node answered {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).trim()
        )),
    }
}

fn certificates(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(|c| c.ok()).collect()
}

fn key(der: &[u8]) -> rustls::pki_types::PrivateKeyDer<'static> {
    rustls::pki_types::PrivateKeyDer::Pkcs8(der.to_vec().into())
}
