//! Serving HTTPS: rustls (ring) with ALPN for HTTP/2 and HTTP/1.1, client certificates verified
//! against a listener's client CA and handed to each request (for [`crate::authn`]), plain HTTP
//! answered as Go answers it, a deadline on handshakes, and graceful shutdown. Also the client
//! side: configurations that present a certificate and trust one CA, or one pinned certificate.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::authn::PeerCertificates;

/// Whether, and from which CA, a listener takes client certificates.
#[derive(Clone, Copy, Debug)]
pub enum ClientAuth<'a> {
    /// None asked for.
    None,
    /// Taken if presented and issued by this CA (PEM); a client may also come without one.
    Optional(&'a str),
    /// Required, issued by this CA: the handshake fails for anyone else.
    Required(&'a str),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, rustls::Error> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| rustls::Error::General(format!("{what}: {e}")))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem, "CA certificate")? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The TLS configuration of a serving certificate (PEM) and its PKCS#8 key (DER), taking
/// client certificates as `clients` says.
pub fn server_config(cert_pem: &str, key_der: &[u8], clients: ClientAuth<'_>) -> Result<ServerConfig, rustls::Error> {
    let chain = certificates(cert_pem, "serving certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let verifier = match clients {
        ClientAuth::None => None,
        ClientAuth::Optional(ca) => Some(WebPkiClientVerifier::builder(roots(ca)?).allow_unauthenticated().build()),
        ClientAuth::Required(ca) => Some(WebPkiClientVerifier::builder(roots(ca)?).build()),
    };
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => {
            builder.with_client_cert_verifier(verifier.map_err(|e| rustls::Error::General(e.to_string()))?)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that trusts servers `ca_pem` issued and, with `identity` (certificate
/// PEM and PKCS#8 key DER), presents that certificate.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &[u8])>) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_der)) => builder.with_client_auth_cert(
            certificates(cert_pem, "client certificate")?,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        ),
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets open requests
/// finish (watches are cut off when the router's own shutdown ends their streams).
pub async fn serve(listener: TcpListener, config: ServerConfig, router: Router, shutdown: impl Future<Output = ()>) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake = async {
                if sent_plain_http(&stream).await {
                    // What Go's server answers, so that a client pointed at `http://` learns why.
                    let mut stream = stream;
                    let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
                    return None;
                }
                acceptor
                    .accept(stream)
                    .await
                    .map_err(|e| tracing::debug!(%peer, error = %e, "TLS handshake failed"))
                    .ok()
            };
            let Ok(Some(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else { return };
            // The chain the handshake verified, if the client presented one, goes with every
            // request of the connection.
            let certificates = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| PeerCertificates(Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())));
            let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                router,
                move |mut request: http::Request<hyper::body::Incoming>| {
                    if let Some(certificates) = &certificates {
                        request.extensions_mut().insert(certificates.clone());
                    }
                    request
                },
            ));
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// A connection that has not finished its TLS handshake by then is dropped: a client that
/// connects and says nothing must not hold a task and a descriptor for good.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Go's `net/http` answer to plain HTTP on a TLS port, byte for byte.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Whether the first bytes on `stream` are an HTTP request rather than a TLS handshake, by the
/// five prefixes Go's server recognises (`tlsRecordHeaderLooksLikeHTTP`).
async fn sent_plain_http(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 5];
    // `peek` returns as soon as anything arrived; wait for the five bytes or a TLS record.
    loop {
        match stream.peek(&mut first).await {
            Ok(n) if n >= 5 => break,
            Ok(0) | Err(_) => return false,
            Ok(n) if first[0] == 0x16 || first[..n].iter().any(|b| !b.is_ascii()) => return false,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
    [b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO"].iter().any(|prefix| first == **prefix)
}

/// Accepts exactly the certificate with a known SHA-256, whatever its names or issuer (a
/// node's self-signed certificate, published on its Node); the handshake's signatures are still
/// checked, so only the key's holder passes. With no hash it accepts any certificate: for
/// fetching a CA that is then checked by its own hash.
#[derive(Debug)]
pub struct PinnedCertificate {
    sha256: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCertificate {
    pub fn new(sha256: Option<String>, provider: Arc<CryptoProvider>) -> PinnedCertificate {
        PinnedCertificate { sha256, provider }
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.sha256.as_ref().is_none_or(|pinned| crate::pki::sha256_hex(end_entity.as_ref()) == *pinned) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the certificate is not the one published for this server".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// What a client that sends `first` to the TLS port reads back before the server closes.
    async fn answer_to(first: &[u8]) -> Vec<u8> {
        let cert = crate::pki::self_signed(&["127.0.0.1".into()]).unwrap();
        let config = server_config(&cert.cert_pem, &cert.key_der, ClientAuth::None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, config, Router::new(), std::future::pending()));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(first).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        server.abort();
        answer
    }

    #[tokio::test]
    async fn plain_http_on_the_tls_port_is_told_so_as_go_tells_it() {
        for request in ["GET /api HTTP/1.1\r\nHost: x\r\n\r\n", "POST /api HTTP/1.1\r\n\r\n", "PUT /x HTTP/1.1\r\n\r\n"]
        {
            assert_eq!(answer_to(request.as_bytes()).await, PLAIN_HTTP_ANSWER, "{request}");
        }
        // What Go does not recognise as HTTP fails as a handshake would (at most a TLS alert).
        for other in [&b"PATCH /api HTTP/1.1\r\n\r\n"[..], b"\x16\x03\x01\x00\x05hello"] {
            assert!(!answer_to(other).await.starts_with(b"HTTP"));
        }
    }

    /// `GET /` over TLS with `config`; the body, or why there was none.
    async fn get(addr: std::net::SocketAddr, config: ClientConfig) -> Result<String, String> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
        answer.split("\r\n\r\n").nth(1).map(str::to_string).ok_or(answer)
    }

    #[tokio::test]
    async fn a_listener_that_requires_client_certificates_takes_only_its_cas() {
        use crate::pki::{Authority, Profile};
        use crate::{Authenticate, Authenticator, UserInfo};
        let (members, _) = Authority::generate("members").unwrap();
        let (strangers, _) = Authority::generate("strangers").unwrap();
        let serving = members.issue_key(&Profile::store_member(1, &["127.0.0.1".into()])).unwrap();
        let config =
            server_config(&serving.cert_pem, &serving.key_der, ClientAuth::Required(members.cert_pem())).unwrap();
        let router = Router::new()
            .route("/", axum::routing::get(|axum::Extension(user): axum::Extension<UserInfo>| async move { user.name }))
            .layer(Authenticate::layer(Authenticator::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, config, router, std::future::pending()));

        let member = members.issue_key(&Profile::store_member(2, &[])).unwrap();
        let trusted = client_config(members.cert_pem(), Some((&member.cert_pem, &member.key_der))).unwrap();
        assert_eq!(get(addr, trusted).await.unwrap(), "flotilla:store-member:2");
        let anonymous = client_config(members.cert_pem(), None).unwrap();
        assert!(get(addr, anonymous).await.is_err(), "no certificate, no answer");
        let stranger = strangers.issue_key(&Profile::store_member(3, &[])).unwrap();
        let foreign = client_config(members.cert_pem(), Some((&stranger.cert_pem, &stranger.key_der))).unwrap();
        assert!(get(addr, foreign).await.is_err(), "another CA's certificate, no answer");
        server.abort();
    }
}
