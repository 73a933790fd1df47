//! `POST /flotilla/v1/node-credentials`: a joining node's certificate, as upstream's kubelet
//! TLS bootstrapping issues one (and as k3s' agents get theirs). The join token only gets a
//! node this far: with it, the node sends a certificate signing request for its own key and
//! gets back a client certificate for `system:node:<name>` in `system:nodes`, which it uses
//! from then on. A node renews its certificate the same way, as itself.
//!
//! A name, once registered, belongs to the machine that registered it: each node keeps a random
//! node password, whose hash the first registration stores in the Secret
//! `kube-system/<name>.node-password.flotilla` (its registration); a later request for the same
//! name must bring the same password (k3s' node-password check). So a stolen join token
//! registers new nodes, but does not take over the identity of one that exists: a name that
//! has a Node but no registration (the server's own node registers one at start) is refused
//! too, until an admin deletes that Node. Deleting a registration revokes the node: the
//! authorizer grants nothing to a node identity without one, and a node cannot register itself
//! again.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flotilla_api::ApiError;
use flotilla_auth::UserInfo;
use flotilla_auth::pki::Profile;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::authz::{self, Attributes};
use crate::error::{Error, Result};
use crate::registry::WriteOptions;

/// A node password shorter than this is refused: it is the node's claim to its name.
const MIN_PASSWORD_LEN: usize = 32;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeCredentialsRequest {
    node_name: String,
    node_password: String,
    /// PEM, for the node's own key.
    certificate_request: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeCredentials {
    certificate: String,
    ca: String,
}

pub(crate) async fn node_credentials(
    State(server): State<ApiServer>,
    Extension(user): Extension<UserInfo>,
    body: Bytes,
) -> Response {
    match issue(&server, &user, &body).await {
        Ok(credentials) => axum::Json(credentials).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn issue(server: &ApiServer, user: &UserInfo, body: &[u8]) -> Result<NodeCredentials> {
    if user.is_anonymous() {
        return Err(ApiError::new(flotilla_api::Reason::Unauthorized, "Unauthorized").into());
    }
    let attributes = Attributes { user, verb: "create", target: authz::Request::Path(authz::NODE_CREDENTIALS_PATH) };
    server.inner.authorizer.authorize(&attributes).await?;
    let Some(authority) = &server.inner.authority else { return Err(crate::request::not_served().into()) };
    let request: NodeCredentialsRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("a node credentials request must be JSON: {e}")))?;
    let name = request.node_name.as_str();
    if let Err(why) = flotilla_api::validation::dns1123_subdomain(name) {
        return Err(ApiError::bad_request(format!("the node name {name:?} is not valid: {why}")).into());
    }
    // The join token's holders and the admin ask for any name; a node renews its own.
    if let Some(node) = user.node_name()
        && node != name
    {
        return Err(authz::forbidden(&attributes, "a node may only renew its own credentials").into());
    }
    if request.node_password.len() < MIN_PASSWORD_LEN {
        return Err(
            ApiError::bad_request(format!("the node password must be at least {MIN_PASSWORD_LEN} characters")).into()
        );
    }
    claim_name(server, user, name, &request.node_password).await?;
    let certificate = authority
        .issue_for_request(&request.certificate_request, &Profile::node(name))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::info!(node = name, by = %user.name, "issued a node's client certificate");
    Ok(NodeCredentials { certificate, ca: authority.cert_pem().to_string() })
}

/// The Secret in `kube-system` that registers node `name`.
pub(crate) fn registration(name: &str) -> String {
    format!("{name}{REGISTRATION_SUFFIX}")
}

/// What names a node's registration Secret, after the node's name.
pub(crate) const REGISTRATION_SUFFIX: &str = ".node-password.flotilla";

/// Registers node `name` with a password no one will ever present, if it is not registered:
/// the name is the server's own node's, which joins in-process and needs no certificate, and
/// the join token must not take it.
pub(crate) async fn reserve(server: &ApiServer, name: &str) -> Result<()> {
    let mut unknown = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut unknown)
        .map_err(|_| ApiError::internal("the system's random source failed"))?;
    let password = flotilla_auth::pki::sha256_hex(&unknown);
    let admin = UserInfo::new("system:apiserver", &[flotilla_auth::identity::MASTERS]);
    match claim_name(server, &admin, name, &password).await {
        // Registered before (by an earlier start): it stays as it is.
        Err(Error(e)) if e.reason == flotilla_api::Reason::Forbidden => Ok(()),
        // Registered, but unreadable (encrypted with a key no longer configured): the server
        // starts all the same, and the node is refused until the key is back.
        Err(Error(e)) if e.reason == flotilla_api::Reason::InternalError => {
            tracing::warn!(node = name, error = %e, "the server's own node's registration cannot be read");
            Ok(())
        }
        other => other,
    }
}

/// Registers `password` as the one that claims node `name` for `user`, or checks it against
/// the one that did.
async fn claim_name(server: &ApiServer, user: &UserInfo, name: &str, password: &str) -> Result<()> {
    let secrets = flotilla_api::resource::find("", "v1", "secrets").expect("secrets are served");
    let nodes = flotilla_api::resource::find("", "v1", "nodes").expect("nodes are served");
    let secret_name = registration(name);
    let hash = flotilla_auth::pki::sha256_hex(password.as_bytes());
    let refuse = |why: String| Err(ApiError::forbidden("", "nodes", name, why).into());
    let registry = &server.inner.registry;
    for _ in 0..2 {
        match registry.get(secrets, Some("kube-system"), &secret_name).await {
            Ok(stored) => {
                let stored = stored.value()?;
                let expected = stored.pointer("/data/hash").and_then(Value::as_str).unwrap_or_default();
                let expected = decode(expected);
                return if same(&expected, &hash) {
                    Ok(())
                } else {
                    refuse(format!(
                        "the node name is registered to another machine (its node password differs); delete the secret kube-system/{secret_name} and the Node to let a new machine take the name"
                    ))
                };
            }
            Err(Error(e)) if e.reason == flotilla_api::Reason::NotFound => {
                // A node whose registration is gone was revoked: it does not come back by itself.
                if user.node_name().is_some() {
                    return refuse(format!(
                        "the node's registration (secret kube-system/{secret_name}) is gone: a node cannot register itself again"
                    ));
                }
                // A Node without a registration is someone's already (the server's own node,
                // one registered by hand): not the join token's to take.
                let exists = registry.get(nodes, None, name).await.is_ok();
                if exists && !user.in_group(flotilla_auth::identity::MASTERS) {
                    return refuse(
                        "a Node of that name exists without a registration: an admin must delete it before another machine takes the name".into(),
                    );
                }
                use base64::Engine;
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name, "namespace": "kube-system"},
                    "data": {"hash": base64::engine::general_purpose::STANDARD.encode(&hash)},
                });
                match registry.create(secrets, Some("kube-system"), secret, WriteOptions::default()).await {
                    Ok(_) => return Ok(()),
                    // Two first registrations at once: the other one's password is the claim.
                    Err(Error(e)) if e.reason == flotilla_api::Reason::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict("", "secrets", &secret_name, "the node password changed while it was read").into())
}

fn decode(text: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

/// Compares in time independent of where the strings differ.
fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
