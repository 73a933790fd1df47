//! `flotilla agent`: a node that joins a cluster from another process or machine.
//!
//! The join token (`<server data dir>/node-token`) carries the hash of the cluster's CA and the
//! node secret. The agent fetches the CA from the server's open `/cacerts`, accepts it only if
//! its hash matches the token's, and from then on talks to the server over verified HTTPS.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use flotilla_apiserver::{PinnedCertificate, pki};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::node::NodeArgs;

#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// The API server to join, e.g. `https://10.0.0.1:6443`.
    #[arg(long)]
    server: String,

    /// The join token, from `<data-dir>/node-token` on the server.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: String,

    /// Where the agent keeps its state: images, compiled modules, pod volumes and logs.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,

    /// Run this many hollow nodes instead of a real one (as kubemark does): they register,
    /// renew their Leases and report the pods bound to them Running without running anything,
    /// to test and measure the scheduler and controllers at scale.
    #[arg(long, value_name = "N")]
    hollow: Option<usize>,

    /// The hollow nodes' names: `<prefix>-0`, `<prefix>-1`, …
    #[arg(long, default_value = "hollow", requires = "hollow")]
    hollow_prefix: String,

    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) async fn run(args: AgentArgs) -> Result<()> {
    let (ca_hash, secret) = pki::parse_join_token(&args.token).map_err(anyhow::Error::msg)?;
    let ca_pem = fetch_ca(&args.server, &ca_hash).await?;
    crate::make_private(&args.data_dir)?;
    pki::write_secret(&args.data_dir.join("ca.crt"), ca_pem.as_bytes()).context("cannot keep the cluster CA")?;
    let mut config = kube::Config::new(args.server.parse().with_context(|| format!("{:?} is not a URL", args.server))?);
    config.root_cert = Some(
        CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .context("the cluster CA is not PEM")?,
    );
    config.auth_info.token = Some(secret.clone().into());
    let client = kube::Client::try_from(config).context("cannot build a client for the API server")?;
    if let Some(count) = args.hollow {
        let mut config = flotilla_node::hollow::HollowConfig::new(count);
        config.prefix = args.hollow_prefix;
        tokio::select! {
            result = flotilla_node::hollow::run(client, config) => result.context("cannot run the hollow nodes")?,
            () = crate::server::shutdown_signal() => tracing::info!("shutting down"),
        }
        return Ok(());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    };
    let (agent, server) = crate::node::start(client, args.node, &args.data_dir, secret, shutdown).await?;
    tracing::info!(server = args.server, "node agent running");
    crate::server::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    drop(agent);
    let _ = server.await;
    Ok(())
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
