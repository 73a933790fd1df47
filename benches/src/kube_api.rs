//! A lean Kubernetes API client for benchmarks: HTTPS with the cluster's CA and the admin's
//! client certificate from a kubeconfig, one HTTP/1.1 connection per simulated client. Nothing typed, nothing cached, so
//! what is measured is the server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where the API is and how to authenticate to it.
#[derive(Clone)]
pub struct Api {
    addr: SocketAddr,
    tls: TlsConnector,
}

impl Api {
    /// Reads the kubeconfig `flotilla server` writes (its fields, one per line).
    pub fn from_kubeconfig(path: &Path) -> Result<Api> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix(name).map(str::trim))
                .with_context(|| format!("{} has no {name}", path.display()))
        };
        let addr: SocketAddr = field("server:")?.trim_start_matches("https://").parse()?;
        let pem =
            |name: &str| -> Result<Vec<u8>> { Ok(base64::engine::general_purpose::STANDARD.decode(field(name)?)?) };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&pem("certificate-authority-data:")?)?)?;
        let cert = CertificateDer::from_pem_slice(&pem("client-certificate-data:")?)?;
        let key = PrivateKeyDer::from_pem_slice(&pem("client-key-data:")?)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)?;
        Ok(Api { addr, tls: TlsConnector::from(Arc::new(config)) })
    }

    /// A new connection, as one client has.
    pub async fn connect(&self) -> Result<Connection> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self.tls.connect(ServerName::IpAddress(self.addr.ip().into()), tcp).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(Connection { sender })
    }
}

/// One HTTP/1.1 connection; one request at a time.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Sends a request and returns the response without reading its body.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<Incoming>> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "flotilla")
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(request).await?)
    }

    /// Sends a request and reads the whole answer, which must be a success.
    pub async fn call(&mut self, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Result<Bytes> {
        let response = self.send(method.clone(), path, content_type, body).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{method} {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    pub async fn get(&mut self, path: &str) -> Result<Bytes> {
        self.call(Method::GET, path, "application/json", Vec::new()).await
    }

    /// Creates an object in `collection`; conflicts (it exists already) count as done.
    pub async fn create(&mut self, collection: &str, object: &serde_json::Value) -> Result<StatusCode> {
        let response = self.send(Method::POST, collection, "application/json", serde_json::to_vec(object)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() && status != StatusCode::CONFLICT {
            bail!("POST {collection}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(status)
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}
