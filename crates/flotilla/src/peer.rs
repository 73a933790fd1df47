//! The store's peer API as this process serves and calls it: mutual TLS among the group's
//! members only. Every member derives the same peer CA from the group's secret
//! (`flotilla_auth::pki::Authority::derived`) and issues itself a certificate at each start;
//! the listener takes no one without one, and `flotilla store` calls as the member whose data
//! directory it is given.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use flotilla_auth::identity::STORE_MEMBERS;
use flotilla_auth::pki::StoreMember;
use flotilla_auth::tls::{ClientAuth, server_config};
use flotilla_auth::{Authenticate, Authenticator, UserInfo};

/// How this member serves the peer API and calls the others.
pub(crate) struct PeerTls {
    pub(crate) server: rustls::ServerConfig,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

/// Member `id`'s credentials in the group whose secret is `secret`, reachable at `addresses`
/// (URLs or `host:port`); kept in `pki_dir` for `flotilla store` too.
pub(crate) fn credentials(pki_dir: &Path, secret: &str, id: u64, addresses: &[&str]) -> Result<PeerTls> {
    let mut names: Vec<String> = addresses.iter().map(|a| host(a).to_string()).collect();
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    names.sort();
    names.dedup();
    let member =
        StoreMember::issue(pki_dir, secret, id, &names).context("cannot make the store member's credentials")?;
    Ok(PeerTls {
        server: server_config(&member.member.cert_pem, &member.member.key_der, ClientAuth::Required(&member.ca_pem))?,
        client: Arc::new(member.client_config()?),
    })
}

/// The client `flotilla store` calls the group with: the member's whose data directory this is.
pub(crate) fn member_client(data_dir: &Path) -> Result<rustls::ClientConfig> {
    let member = StoreMember::load(&data_dir.join("pki"))
        .with_context(|| format!("cannot read a store member's credentials in {}", data_dir.display()))?;
    Ok(member.client_config()?)
}

/// The store's peer router behind the shared authentication layer, for members only (the TLS
/// listener already refuses anyone without a certificate from the peer CA; this says so again
/// where the identity is known).
pub(crate) fn router(peer: axum::Router) -> axum::Router {
    peer.layer(axum::middleware::from_fn(members_only)).layer(Authenticate::layer(Authenticator::new()))
}

async fn members_only(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match request.extensions().get::<UserInfo>() {
        Some(user) if user.in_group(STORE_MEMBERS) => next.run(request).await,
        _ => (http::StatusCode::FORBIDDEN, "the store's peer API is for its members only").into_response(),
    }
}

/// The host of a URL or of `host:port`.
fn host(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    }
}

#[cfg(test)]
mod tests {
    use super::host;

    #[test]
    fn hosts_of_urls_and_addresses() {
        assert_eq!(host("https://10.0.0.1:2380"), "10.0.0.1");
        assert_eq!(host("http://member-2.example:2380/"), "member-2.example");
        assert_eq!(host("127.0.0.1:2380"), "127.0.0.1");
        assert_eq!(host("https://[::1]:2380"), "::1");
    }
}
