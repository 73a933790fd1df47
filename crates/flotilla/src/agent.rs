//! `flotilla agent`: a node that joins a cluster from another process or machine.
//!
//! The join token (`<server data dir>/node-token`) carries the hash of the cluster's CA and the
//! join secret. The agent fetches the CA from the server's open `/cacerts` and accepts it only
//! if its hash matches the token's. Then, as upstream's kubelet TLS bootstrapping does, it
//! sends a certificate request for a key of its own, with the join secret, and from then on
//! talks to the server as `system:node:<name>` with the client certificate it got back; the
//! join secret is good for nothing else. The certificate, its key and the node password that
//! holds the node's name are kept in `<data-dir>/pki`, and asked for again when the certificate
//! nears its end or the token names another cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use clap::Args;
use flotilla_auth::{PinnedCertificate, pki};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::node::NodeArgs;

/// Requests the hollow nodes have in flight at once (their watches' streams not counted).
const HOLLOW_REQUESTS_IN_FLIGHT: usize = 64;

#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// The API server to join, e.g. `https://10.0.0.1:6443`.
    #[arg(long, required_unless_present = "kubeconfig")]
    server: Option<String>,

    /// The join token, from `<data-dir>/node-token` on the server.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true, required_unless_present = "kubeconfig")]
    token: Option<String>,

    /// Where the agent keeps its state: credentials, images, compiled modules, pod volumes and
    /// logs.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,

    /// Run this many hollow nodes instead of a real one (as kubemark does): each the agent of a
    /// node, on a runtime that runs nothing, taking its pods through their lifecycle to test and
    /// measure the scheduler and controllers at scale. They act for many nodes at once, which
    /// no node identity may, so they take the admin's `--kubeconfig`.
    #[arg(long, value_name = "N", requires = "kubeconfig", value_parser = clap::value_parser!(u16).range(1..=flotilla_node::hollow::MAX_NODES as i64))]
    hollow: Option<u16>,

    /// The hollow nodes' names: `<prefix>-0`, `<prefix>-1`, …
    #[arg(long, default_value = "hollow", requires = "hollow")]
    hollow_prefix: String,

    /// (hollow nodes) The admin kubeconfig to reach the API server with.
    #[arg(long, requires = "hollow")]
    kubeconfig: Option<PathBuf>,

    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) async fn run(args: AgentArgs) -> Result<()> {
    crate::make_private(&args.data_dir)?;
    if let (Some(count), Some(kubeconfig)) = (args.hollow, &args.kubeconfig) {
        let file = kube::config::Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("cannot read the kubeconfig {}", kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
        // The nodes share one client, which speaks HTTP/1.1: each request at once is a
        // connection. Bounded, a slow server is not met with ever more of them (a kubelet's own
        // client is bounded by its queries per second).
        let client = kube::client::ClientBuilder::try_from(config)
            .context("cannot build a client for the API server")?
            .with_layer(&tower::limit::ConcurrencyLimitLayer::new(HOLLOW_REQUESTS_IN_FLIGHT))
            .build();
        let mut config = flotilla_node::hollow::HollowConfig::new(count.into(), args.data_dir.join("hollow"));
        config.prefix = args.hollow_prefix;
        tokio::select! {
            result = flotilla_node::hollow::run(client, config) => result.context("cannot run the hollow nodes")?,
            () = crate::server::shutdown_signal() => tracing::info!("shutting down"),
        }
        return Ok(());
    }
    let (Some(server), Some(token)) = (args.server, args.token) else {
        bail!("an agent joins with --server and --token");
    };
    let name = args.node.name();
    let credentials = node_credentials(&server, &token, &name, &args.data_dir.join("pki")).await?;
    let mut config = kube::Config::new(server.parse().with_context(|| format!("{server:?} is not a URL"))?);
    config.root_cert = Some(
        CertificateDer::pem_slice_iter(credentials.ca_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .context("the cluster CA is not PEM")?,
    );
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    config.auth_info.client_certificate_data = Some(b64(&credentials.cert_pem));
    config.auth_info.client_key_data = Some(b64(&credentials.key_pem).into());
    let client = kube::Client::try_from(config).context("cannot build a client for the API server")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    };
    let rustls::pki_types::PrivateKeyDer::Pkcs8(key) =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())
            .context("the node's key is not PEM")?
    else {
        bail!("the node's key in {} is not PKCS#8", args.data_dir.join("pki").display());
    };
    let identity = pki::Issued {
        cert_pem: credentials.cert_pem.clone(),
        key_pem: credentials.key_pem.clone(),
        key_der: key.secret_pkcs8_der().to_vec(),
    };
    let (agent, api) =
        crate::node::start(client, args.node, &args.data_dir, &credentials.ca_pem, identity, Vec::new(), shutdown)
            .await?;
    tracing::info!(%server, node = name, "node agent running");
    crate::server::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    drop(agent);
    let _ = api.await;
    Ok(())
}

/// A node's credentials: the cluster CA, its client certificate and key.
struct NodeCredentials {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";
const PASSWORD_FILE: &str = "node-password";

/// The credentials kept in `dir` if they are this cluster's and have time left, else new ones
/// from `server`, asked for with the join token.
async fn node_credentials(server: &str, token: &str, name: &str, dir: &Path) -> Result<NodeCredentials> {
    let (ca_hash, secret) = pki::parse_join_token(token).map_err(anyhow::Error::msg)?;
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    if let (Some(ca_pem), Some(cert_pem), Some(key_pem)) = (read(CA_FILE), read(CERT_FILE), read(KEY_FILE))
        && pki::sha256_hex(ca_pem.as_bytes()) == ca_hash
        && !pki::expires_within(&cert_pem, pki::RENEW_BEFORE)
    {
        return Ok(NodeCredentials { ca_pem, cert_pem, key_pem });
    }
    let ca_pem = fetch_ca(server, &ca_hash).await?;
    let password = pki::load_or_create_secret(&dir.join(PASSWORD_FILE))?;
    let (request, key) = pki::certificate_request(&format!("system:node:{name}"))?;
    let body = serde_json::json!({"nodeName": name, "nodePassword": password, "certificateRequest": request});
    let tls = flotilla_auth::tls::client_config(&ca_pem, None)?;
    let url = format!("{}/flotilla/v1/node-credentials", server.trim_end_matches('/'));
    let answer = post(&tls, &url, &secret, serde_json::to_vec(&body)?).await?;
    let cert_pem = answer["certificate"].as_str().context("the server sent no certificate")?.to_string();
    for (file, contents) in [(CA_FILE, &ca_pem), (CERT_FILE, &cert_pem), (KEY_FILE, &key.key_pem)] {
        pki::write_secret(&dir.join(file), contents.as_bytes())?;
    }
    tracing::info!(node = name, "joined the cluster: got the node's client certificate");
    Ok(NodeCredentials { ca_pem, cert_pem, key_pem: key.key_pem })
}

/// `POST url` with a JSON body and a bearer token; the JSON answer, or the server's refusal.
async fn post(tls: &rustls::ClientConfig, url: &str, token: &str, body: Vec<u8>) -> Result<serde_json::Value> {
    let https =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone()).https_only().enable_http1().build();
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let request = http::Request::post(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .with_context(|| format!("{url}: no answer within 30 s"))?
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        let message =
            answer["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&body).into());
        bail!("the server refused the node's credentials ({status}): {message}");
    }
    Ok(answer)
}

/// The cluster CA from the server's `/cacerts`, fetched without verifying the server (there is
/// nothing to verify it with yet) and accepted only if it hashes to `expected`.
async fn fetch_ca(server: &str, expected: &str) -> Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        // Nothing to verify the server with yet: the CA it hands out is checked by its hash.
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate::new(None, provider)))
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let url = format!("{}/cacerts", server.trim_end_matches('/'));
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.get(url.parse()?))
        .await
        .with_context(|| format!("{url}: no answer within 30 s"))?
        .with_context(|| format!("cannot reach {url}"))?;
    ensure!(response.status().is_success(), "{url} answered {}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    let pem = String::from_utf8(body.to_vec()).context("the CA is not text")?;
    if pki::sha256_hex(pem.as_bytes()) != expected {
        bail!("the CA {server} presents does not match the join token: is this the server the token came from?");
    }
    Ok(pem)
}
