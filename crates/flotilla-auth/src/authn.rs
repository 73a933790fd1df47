//! The authentication layer every listener puts in front of its router. It turns what a request
//! carries into a [`UserInfo`] in the request's extensions, in upstream's order: a client
//! certificate the TLS handshake verified (see [`crate::tls::serve`]), then a bearer token;
//! with neither, the anonymous identity, which each listener's authorization then refuses or
//! not. A bearer token that matches nothing is refused here, with 401.
//!
//! A request that already carries a `UserInfo` keeps it: only code in the same process can put
//! one there (extensions never cross the network), which is how the server's own loops and its
//! embedded node call the API in-process as themselves.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use http::{Request, StatusCode, header};
use rustls::pki_types::CertificateDer;
use tower::{Layer, Service};

use crate::identity::UserInfo;

/// The certificate chain a client presented and the handshake verified, leaf first.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// How a listener tells who is calling.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    /// Bearer tokens and whom they stand for.
    tokens: Vec<(String, UserInfo)>,
}

impl Authenticator {
    /// Only client certificates (and in-process identities) are taken.
    pub fn new() -> Authenticator {
        Authenticator::default()
    }

    /// Also takes `token` as a bearer token for `user`.
    pub fn with_token(mut self, token: impl Into<String>, user: UserInfo) -> Authenticator {
        self.tokens.push((token.into(), user));
        self
    }

    /// Who sent `request`; `Err` for a bearer token that names no one.
    pub fn authenticate<B>(&self, request: &Request<B>) -> Result<UserInfo, Unauthorized> {
        if let Some(user) = request.extensions().get::<UserInfo>() {
            return Ok(user.clone());
        }
        if let Some(PeerCertificates(chain)) = request.extensions().get::<PeerCertificates>()
            && let Some(leaf) = chain.first()
        {
            return UserInfo::from_certificate(leaf).map_err(|why| {
                tracing::debug!(%why, "refusing a client certificate");
                Unauthorized
            });
        }
        let Some(value) = request.headers().get(header::AUTHORIZATION) else { return Ok(UserInfo::anonymous()) };
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or(Unauthorized)?;
        // Every token is compared, in time independent of where they differ.
        let mut found = None;
        for (expected, user) in &self.tokens {
            if same(token, expected) {
                found = Some(user);
            }
        }
        found.cloned().ok_or(Unauthorized)
    }
}

/// Credentials were presented, and they name no one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unauthorized;

impl IntoResponse for Unauthorized {
    /// Upstream's 401 `Status`.
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
        });
        (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

/// Compares in time independent of where the strings differ.
fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The layer: `router.layer(Authenticate::layer(authenticator))`.
#[derive(Clone, Debug)]
pub struct Authenticate<S> {
    authenticator: Arc<Authenticator>,
    inner: S,
}

impl Authenticate<()> {
    pub fn layer(authenticator: Authenticator) -> AuthenticateLayer {
        AuthenticateLayer { authenticator: Arc::new(authenticator) }
    }
}

#[derive(Clone, Debug)]
pub struct AuthenticateLayer {
    authenticator: Arc<Authenticator>,
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate { authenticator: self.authenticator.clone(), inner }
    }
}

impl<S> Service<Request<Body>> for Authenticate<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.authenticator.authenticate(&request) {
            Ok(user) => {
                request.extensions_mut().insert(user);
                Either::Right(self.inner.call(request))
            }
            Err(unauthorized) => Either::Left(ready(Ok(unauthorized.into_response()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::identity::{AUTHENTICATED, MASTERS};

    fn request(token: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/");
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn tokens_certificates_and_in_process_identities_name_the_caller() {
        let admin = UserInfo::new("admin", &[MASTERS]);
        let authn = Authenticator::new().with_token("secret-token", admin.clone());
        assert_eq!(authn.authenticate(&request(Some("secret-token"))), Ok(admin));
        assert_eq!(authn.authenticate(&request(Some("secret-tokex"))), Err(Unauthorized));
        assert_eq!(authn.authenticate(&request(Some(""))), Err(Unauthorized));
        assert_eq!(authn.authenticate(&request(None)), Ok(UserInfo::anonymous()));
        let mut basic = request(None);
        basic.headers_mut().insert(header::AUTHORIZATION, "Basic YWRtaW46YWRtaW4=".parse().unwrap());
        assert_eq!(authn.authenticate(&basic), Err(Unauthorized));

        // An identity put there in-process wins over a token.
        let mut in_process = request(Some("wrong"));
        in_process.extensions_mut().insert(UserInfo::node("n1"));
        assert_eq!(authn.authenticate(&in_process).unwrap().node_name(), Some("n1"));

        // A verified certificate names its subject.
        let (ca, _) = crate::pki::Authority::generate("test-ca").unwrap();
        let issued = ca.issue_key(&crate::pki::Profile::client("system:node:n2", &["system:nodes"])).unwrap();
        let mut with_cert = request(Some("secret-token"));
        let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        with_cert.extensions_mut().insert(PeerCertificates(Arc::new(vec![der])));
        let user = authn.authenticate(&with_cert).unwrap();
        assert_eq!((user.node_name(), user.in_group(AUTHENTICATED)), (Some("n2"), true));
    }
}
