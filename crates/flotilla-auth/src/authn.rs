//! The authentication layer every listener puts in front of its router. It turns what a request
//! carries into a [`UserInfo`] in the request's extensions, in upstream's order: a client
//! certificate the TLS handshake verified (see [`crate::tls::serve`]), then a bearer token;
//! with neither, the anonymous identity, which each listener's authorization then refuses or
//! not. A bearer token that matches nothing is refused here, with 401.
//!
//! A listener that does not know a token itself may ask someone who does ([`ReviewToken`]): a
//! node asks the API server with a `TokenReview`, as upstream's kubelet does with
//! `--authentication-token-webhook`, so that one token (the metrics reader's) is good on every
//! node without the nodes holding it. Answers are cached as the kubelet caches them.
//!
//! A request that already carries a `UserInfo` keeps it: only code in the same process can put
//! one there (extensions never cross the network), which is how the server's own loops and its
//! embedded node call the API in-process as themselves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{Request, StatusCode, header};
use rustls::pki_types::CertificateDer;
use tower::{Layer, Service};

use crate::identity::UserInfo;

/// The certificate chain a client presented and the handshake verified, leaf first.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// How a listener tells who is calling.
#[derive(Clone, Default)]
pub struct Authenticator {
    /// Bearer tokens and whom they stand for.
    tokens: Vec<(String, UserInfo)>,
    /// Who is asked about other bearer tokens, and what they said.
    reviews: Option<Arc<Reviews>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("reviews", &self.reviews.is_some())
            .finish()
    }
}

/// Asks someone who knows whom a bearer token names: the API server, with a `TokenReview`.
pub trait ReviewToken: Send + Sync + 'static {
    /// `Ok(None)`: the token names no one. `Err`: no answer (the server unreachable); the
    /// caller is refused, and the question is asked again next time.
    fn review(&self, token: String) -> BoxFuture<'static, Result<Option<UserInfo>, String>>;
}

/// How long an answer is kept: the kubelet's `--authentication-token-webhook-cache-ttl` for a
/// token that names someone; a refusal only briefly, so that a token just made works soon.
const REVIEWED_TTL: Duration = Duration::from_secs(120);
const REFUSED_TTL: Duration = Duration::from_secs(10);
/// At most this many refusals are kept: a caller sending random tokens grows nothing beyond it
/// (and evicts no approval, which only real tokens earn).
const MAX_REFUSALS: usize = 4096;
/// Questions asked at most, per second and in a burst: whoever sends unknown tokens may not make
/// the listener ask the API server more often than this. Past it, they are refused unasked.
const REVIEWS_PER_SECOND: f64 = 10.0;
const REVIEW_BURST: f64 = 20.0;
/// How long a question may take; and after a failed one, how long none is asked.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
const HOLD_OFF: Duration = Duration::from_secs(1);

struct Reviews {
    reviewer: Box<dyn ReviewToken>,
    /// What a reviewed identity is taken as: only these of its groups (none of them, refused).
    groups: Vec<String>,
    state: Mutex<ReviewState>,
}

/// By the token's SHA-256 (the tokens themselves are not kept): until when an answer holds.
#[derive(Default)]
struct ReviewState {
    approved: HashMap<[u8; 32], (Instant, UserInfo)>,
    refused: HashMap<[u8; 32], Instant>,
    /// The questions that may be asked now (a token bucket), as of `refilled`.
    budget: f64,
    refilled: Option<Instant>,
    /// No question is asked before this, after one failed.
    held_off_until: Option<Instant>,
}

impl ReviewState {
    /// The cached answer, if any: `Some(None)` for a refusal.
    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<Option<UserInfo>> {
        if let Some((until, user)) = self.approved.get(key)
            && *until > now
        {
            return Some(Some(user.clone()));
        }
        self.refused.get(key).filter(|until| **until > now).map(|_| None)
    }

    /// Whether a question may be asked now; spends one if so.
    fn may_ask(&mut self, now: Instant) -> bool {
        if self.held_off_until.is_some_and(|until| until > now) {
            return false;
        }
        let elapsed = self.refilled.map_or(Duration::MAX, |at| now.duration_since(at));
        self.budget = (self.budget + elapsed.as_secs_f64() * REVIEWS_PER_SECOND).min(REVIEW_BURST);
        self.refilled = Some(now);
        if self.budget < 1.0 {
            return false;
        }
        self.budget -= 1.0;
        true
    }

    fn keep(&mut self, key: [u8; 32], answer: Option<UserInfo>, now: Instant) {
        match answer {
            Some(user) => {
                self.approved.retain(|_, (until, _)| *until > now);
                self.approved.insert(key, (now + REVIEWED_TTL, user));
            }
            None => {
                if self.refused.len() >= MAX_REFUSALS {
                    self.refused.retain(|_, until| *until > now);
                    if self.refused.len() >= MAX_REFUSALS {
                        self.refused.clear();
                    }
                }
                self.refused.insert(key, now + REFUSED_TTL);
            }
        }
    }
}

impl Reviews {
    async fn review(&self, token: &str) -> Option<UserInfo> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let now = Instant::now();
        {
            let mut state = self.state.lock().expect("reviews lock");
            if let Some(answer) = state.cached(&key, now) {
                return answer;
            }
            if !state.may_ask(now) {
                return None;
            }
        }
        let asked = tokio::time::timeout(REVIEW_TIMEOUT, self.reviewer.review(token.to_string())).await;
        let now = Instant::now();
        let mut state = self.state.lock().expect("reviews lock");
        let reviewed = match asked {
            Ok(Ok(reviewed)) => reviewed,
            failed => {
                let why = match failed {
                    Ok(Err(why)) => why,
                    _ => "no answer in time".to_string(),
                };
                // Questions in flight together may fail together: told once.
                if state.held_off_until.is_none_or(|until| until <= now) {
                    tracing::warn!(%why, "cannot review a bearer token; refusing those not known here for a second");
                }
                state.held_off_until = Some(now + HOLD_OFF);
                return None;
            }
        };
        // Only the groups this listener takes from a review; with none of them, no one.
        let answer = reviewed.and_then(|user| {
            let groups: Vec<&str> =
                user.groups.iter().map(String::as_str).filter(|g| self.groups.iter().any(|t| t == g)).collect();
            (!groups.is_empty()).then(|| UserInfo::new(user.name, &groups))
        });
        state.keep(key, answer.clone(), now);
        answer
    }
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

    /// Asks `reviewer` about bearer tokens this authenticator does not know, and takes the
    /// identity it names in `groups` only: a node takes the metrics reader's token, not the
    /// admin's, whose holder should never need to send it to a node.
    pub fn with_token_review(mut self, reviewer: impl ReviewToken, groups: &[&str]) -> Authenticator {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        self.reviews = Some(Arc::new(Reviews { reviewer: Box::new(reviewer), groups, state: Mutex::default() }));
        self
    }

    /// Who sent `request`, as far as it can be told without asking anyone; `Err` for a bearer
    /// token that names no one known here.
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
        let Some(token) = bearer(request)? else { return Ok(UserInfo::anonymous()) };
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

/// The request's bearer token; `Err` for an `Authorization` header that carries none.
fn bearer<B>(request: &Request<B>) -> Result<Option<&str>, Unauthorized> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else { return Ok(None) };
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or(Unauthorized)?;
    Ok(Some(token))
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
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let authenticated = self.authenticator.authenticate(&request);
        let reviews = self.authenticator.reviews.clone();
        // Only a token that named no one here is reviewed: not a refused certificate's.
        let unknown_token = authenticated.is_err() && request.extensions().get::<PeerCertificates>().is_none();
        let token = match (unknown_token, &reviews) {
            (true, Some(_)) => bearer(&request).ok().flatten().map(str::to_string),
            _ => None,
        };
        // The service that was polled ready serves this request; a clone waits for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            let user = match (authenticated, reviews, token) {
                (Ok(user), _, _) => user,
                (Err(_), Some(reviews), Some(token)) => match reviews.review(&token).await {
                    Some(user) => user,
                    None => return Ok(Unauthorized.into_response()),
                },
                (Err(unauthorized), _, _) => return Ok(unauthorized.into_response()),
            };
            request.extensions_mut().insert(user);
            inner.call(request).await
        })
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

    /// Answers for one token, counting the questions.
    struct Reviewer(Arc<std::sync::atomic::AtomicUsize>);

    impl ReviewToken for Reviewer {
        fn review(&self, token: String) -> BoxFuture<'static, Result<Option<UserInfo>, String>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                match token.as_str() {
                    "reviewed" => Ok(Some(UserInfo::new("metrics", &[crate::identity::MONITORING]))),
                    "admin" => Ok(Some(UserInfo::new("admin", &[MASTERS]))),
                    "unreachable" => Err("no server".into()),
                    _ => Ok(None),
                }
            })
        }
    }

    #[tokio::test]
    async fn unknown_tokens_are_reviewed_and_the_answers_kept_a_while() {
        use tower::ServiceExt;
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let authn = Authenticator::new().with_token("local", UserInfo::new("admin", &[MASTERS]));
        let authn = authn.with_token_review(Reviewer(asked.clone()), &[crate::identity::MONITORING]);
        let service = tower::service_fn(|request: Request<Body>| async move {
            let user = request.extensions().get::<UserInfo>().cloned().unwrap();
            Ok::<_, Infallible>(user.name.into_response())
        });
        let layer = Authenticate::layer(authn);
        let call = |token: &'static str| {
            let service = layer.layer(service);
            async move {
                let request = Request::get("/").header(header::AUTHORIZATION, format!("Bearer {token}"));
                let response = service.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        // A token known here is not asked about.
        assert_eq!(call("local").await, (StatusCode::OK, "admin".to_string()));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
        // One the reviewer vouches for, asked about once.
        assert_eq!(call("reviewed").await, (StatusCode::OK, "metrics".to_string()));
        assert_eq!(call("reviewed").await.0, StatusCode::OK);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        // One it refuses, refused (and kept a while too); no answer refuses, and is not kept.
        assert_eq!(call("forged").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call("forged").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
        // A token of a group this listener does not take from reviews names no one here.
        assert_eq!(call("admin").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
        // No answer refuses, is not kept, and holds further questions off for a while.
        assert_eq!(call("unreachable").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call("unreachable").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call("another").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 4);
        // What was approved before is still taken meanwhile.
        assert_eq!(call("reviewed").await.0, StatusCode::OK);
    }

    #[test]
    fn questions_are_rationed() {
        let mut state = ReviewState::default();
        let start = Instant::now();
        let asked = (0..100).filter(|_| state.may_ask(start)).count();
        assert_eq!(asked, REVIEW_BURST as usize);
        // A second later, a second's worth more.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| state.may_ask(later)).count(), REVIEWS_PER_SECOND as usize);
    }
}
