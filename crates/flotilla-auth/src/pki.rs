//! The cluster's certificate authorities and what they issue, kept in the data directory.
//!
//! - The **cluster CA** (made on first start and kept, so that kubeconfigs and nodes stay valid
//!   across restarts) signs the API server's serving certificate (made again at every start, so
//!   its names always match the address served), the admin's client certificate (in
//!   `system:masters`, what the kubeconfig holds), the API server's client certificate for
//!   nodes, and each node's client certificate (`system:node:<name>`), which a node asks for
//!   when it joins ([`Authority::issue_for_request`]).
//! - The **store peer CA** signs the store members' certificates, with which they, and only
//!   they, talk to each other (mutual TLS). It is derived from the store group's secret, so that
//!   every member that holds the secret, the initial ones and those that join later, makes the
//!   same CA without a word exchanged, as etcd members share a peer CA; see [`Authority::derived`].
//! - Tokens: the admin's bearer token, the join secret nodes present once, to be issued
//!   their certificate, and the metrics reader's, which reads `/metrics` and nothing more.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateSigningRequestDer, PrivatePkcs8KeyDer, pem::PemObject};

use crate::identity::{MASTERS, NODE_PREFIX, NODES, STORE_MEMBER_PREFIX, STORE_MEMBERS};

/// How long a certificate the cluster issues is valid: a year, as kubeadm's and the kubelet's
/// client certificates are.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A kept certificate is issued again when less than this is left of it (the kubelet rotates
/// at 70 to 90% of a certificate's life: for a year's, at least a month before its end).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The credentials a server runs with.
#[derive(Clone)]
pub struct Credentials {
    /// The cluster CA, which signs nodes' certificates at join.
    pub authority: std::sync::Arc<Authority>,
    pub ca_pem: String,
    pub server_cert_pem: String,
    /// The serving key, PKCS#8 DER.
    pub server_key_der: Vec<u8>,
    /// The admin's client certificate (`kubernetes-admin` in `system:masters`).
    pub admin: Issued,
    /// What the API server presents to nodes when it proxies to them (`pods/log`).
    pub kubelet_client: Issued,
    /// The admin's bearer token, also in `system:masters`.
    pub token: String,
    /// The secret of the join token: it lets a node ask for its certificate, nothing more.
    pub node_token: String,
    /// The metrics reader's bearer token (`system:monitoring`): what Prometheus scrapes the
    /// server and the nodes with.
    pub metrics_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate request that cannot be signed (unreadable, badly signed, or asking for
    /// another key type than the cluster issues).
    #[error("the certificate request is not valid: {0}")]
    Request(String),
}

/// The cluster CA's files: `ca.crt`, `ca.key`.
const CA: &str = "ca";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const TOKEN: &str = "admin.token";
const NODE_TOKEN: &str = "node.token";
const METRICS_TOKEN: &str = "metrics.token";

/// A certificate authority: its certificate and the key that signs with it.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// A certificate and its key, issued together.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// What a certificate says and may be used for.
#[derive(Clone, Debug)]
pub struct Profile {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// DNS names and IP addresses it serves as.
    pub names: Vec<String>,
    pub client: bool,
    pub server: bool,
}

impl Profile {
    /// A client certificate for `common_name` in `organizations` (its identity and groups).
    pub fn client(common_name: &str, organizations: &[&str]) -> Profile {
        Profile {
            common_name: common_name.into(),
            organizations: organizations.iter().map(|o| o.to_string()).collect(),
            names: Vec::new(),
            client: true,
            server: false,
        }
    }

    /// A serving certificate for `names`.
    pub fn server(common_name: &str, names: &[String]) -> Profile {
        Profile { names: names.to_vec(), client: false, server: true, ..Profile::client(common_name, &[]) }
    }

    /// Node `name`'s client certificate.
    pub fn node(name: &str) -> Profile {
        Profile::client(&format!("{NODE_PREFIX}{name}"), &[NODES])
    }

    /// Store member `id`'s certificate: it serves the peer API at `names` and calls the others.
    pub fn store_member(id: u64, names: &[String]) -> Profile {
        Profile {
            common_name: format!("{STORE_MEMBER_PREFIX}{id}"),
            organizations: vec![STORE_MEMBERS.into()],
            names: names.to_vec(),
            client: true,
            server: true,
        }
    }

    fn params(&self) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.common_name.as_str());
        for organization in &self.organizations {
            dn.push(DnType::OrganizationName, organization.as_str());
        }
        params.distinguished_name = dn;
        for name in &self.names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if self.client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if self.server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let now = time::OffsetDateTime::now_utc();
        // A little slack for clocks that disagree by a few minutes.
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + CERTIFICATE_LIFETIME;
        Ok(params)
    }
}

impl Authority {
    /// A new authority named `name`, with a random key; also the key, PEM, to keep.
    pub fn generate(name: &str) -> Result<(Authority, String), PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let cert_pem = ca_params(name).self_signed(&key)?.pem();
        Ok((Authority { cert_pem, issuer: Issuer::new(ca_params(name), key) }, key_pem))
    }

    /// The authority kept in `dir` (`<stem>.crt`, `<stem>.key`), made on first use.
    pub fn load_or_create(dir: &Path, stem: &str, name: &str) -> Result<Authority, PkiError> {
        let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        if !key_path.exists() {
            let (authority, key_pem) = Authority::generate(name)?;
            write_secret(&cert_path, authority.cert_pem.as_bytes())?;
            write_secret(&key_path, key_pem.as_bytes())?;
            return Ok(authority);
        }
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|e| PkiError::Invalid { path: key_path.clone(), message: e.to_string() })?;
        Ok(Authority { cert_pem: read(&cert_path)?, issuer: Issuer::new(ca_params(name), key) })
    }

    /// The authority every holder of `secret` makes alike: an Ed25519 key whose seed is
    /// HKDF-SHA256 of the secret, and a certificate of fixed parameters. Holding the secret is
    /// therefore holding the CA, which is what makes it the group's one credential (as k3s'
    /// server token is); it must be long and random, and is refused when it is not.
    pub fn derived(secret: &str, name: &str) -> Result<Authority, PkiError> {
        if secret.len() < 32 {
            return Err(PkiError::Request(format!(
                "the secret a CA is derived from must be at least 32 characters, not {}",
                secret.len()
            )));
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"flotilla derived CA v1");
        let mut seed = [0u8; 32];
        salt.extract(secret.as_bytes())
            .expand(&[name.as_bytes()], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut seed))
            .map_err(|_| PkiError::Request("deriving the CA key".into()))?;
        // PKCS#8 v1 of an Ed25519 key is a fixed prefix and the 32-byte seed (RFC 8410).
        let mut pkcs8 =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        pkcs8.extend_from_slice(&seed);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &rcgen::PKCS_ED25519)?;
        let mut params = ca_params(name);
        params.serial_number = Some(rcgen::SerialNumber::from(1u64));
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Authority { cert_pem, issuer: Issuer::new(params, key) })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A new key and a certificate for it.
    pub fn issue_key(&self, profile: &Profile) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = profile.params()?.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), key_der: key.serialize_der() })
    }

    /// The certificate kept in `dir` (`<stem>.crt`, `<stem>.key`) while it has a month left,
    /// else a new one for `profile`, kept there.
    pub fn load_or_issue(&self, dir: &Path, stem: &str, profile: &Profile) -> Result<Issued, PkiError> {
        let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        if let (Ok(cert_pem), Ok(key_pem)) = (fs::read_to_string(&cert_path), fs::read_to_string(&key_path))
            && !expires_within(&cert_pem, RENEW_BEFORE)
            && let Ok(key) = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        {
            return Ok(Issued { cert_pem, key_der: key.secret_pkcs8_der().to_vec(), key_pem });
        }
        let issued = self.issue_key(profile)?;
        write_secret(&cert_path, issued.cert_pem.as_bytes())?;
        write_secret(&key_path, issued.key_pem.as_bytes())?;
        Ok(issued)
    }

    /// A certificate for the key of a signing request (PEM). Only the key is taken from the
    /// request: what the certificate says is `profile`, whatever the request asked for.
    pub fn issue_for_request(&self, request_pem: &str, profile: &Profile) -> Result<String, PkiError> {
        let der = CertificateSigningRequestDer::from_pem_slice(request_pem.as_bytes())
            .map_err(|e| PkiError::Request(format!("not a PEM certificate request: {e}")))?;
        let mut request =
            CertificateSigningRequestParams::from_der(&der).map_err(|e| PkiError::Request(e.to_string()))?;
        request.params = profile.params()?;
        Ok(request.signed_by(&self.issuer)?.pem())
    }
}

/// A store member's credentials: the group's peer CA and the member's own certificate, as kept
/// in its `pki` directory (`store-peer-ca.crt`, `store-member.crt`, `store-member.key`), where
/// `flotilla store`, tests and benchmarks find them to call the group as that member.
#[derive(Clone, Debug)]
pub struct StoreMember {
    pub ca_pem: String,
    pub member: Issued,
}

const PEER_CA: &str = "store-peer-ca.crt";
const MEMBER_CERT: &str = "store-member.crt";
const MEMBER_KEY: &str = "store-member.key";

impl StoreMember {
    /// Member `id` of the group whose secret is `secret`, serving at `names`: a new certificate
    /// from the derived peer CA, kept in `pki_dir`.
    pub fn issue(pki_dir: &Path, secret: &str, id: u64, names: &[String]) -> Result<StoreMember, PkiError> {
        let authority = Authority::derived(secret, "flotilla-store-peers")?;
        let member = authority.issue_key(&Profile::store_member(id, names))?;
        fs::create_dir_all(pki_dir).map_err(|source| PkiError::Io { path: pki_dir.into(), source })?;
        write_secret(&pki_dir.join(PEER_CA), authority.cert_pem().as_bytes())?;
        write_secret(&pki_dir.join(MEMBER_CERT), member.cert_pem.as_bytes())?;
        write_secret(&pki_dir.join(MEMBER_KEY), member.key_pem.as_bytes())?;
        Ok(StoreMember { ca_pem: authority.cert_pem().to_string(), member })
    }

    /// The credentials a member keeps in `pki_dir`.
    pub fn load(pki_dir: &Path) -> Result<StoreMember, PkiError> {
        let key_path = pki_dir.join(MEMBER_KEY);
        let key_pem = read(&key_path)?;
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| PkiError::Invalid { path: key_path, message: e.to_string() })?;
        let member =
            Issued { cert_pem: read(&pki_dir.join(MEMBER_CERT))?, key_der: key.secret_pkcs8_der().to_vec(), key_pem };
        Ok(StoreMember { ca_pem: read(&pki_dir.join(PEER_CA))?, member })
    }

    /// How this member calls the group's peer API.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        crate::tls::client_config(&self.ca_pem, Some((&self.member.cert_pem, &self.member.key_der)))
    }
}

/// A new key and a signing request for it (PEM), as a node makes one to join.
pub fn certificate_request(common_name: &str) -> Result<(String, Issued), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name);
    let request = params.serialize_request(&key)?.pem()?;
    Ok((request, Issued { cert_pem: String::new(), key_pem: key.serialize_pem(), key_der: key.serialize_der() }))
}

/// Loads the cluster CA and tokens from `dir` (making them on first start) and issues the
/// certificates a server serves and calls with: serving for `names` (DNS names and IP
/// addresses), the admin's, and the one it presents to nodes.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Credentials, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.into(), source })?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let authority = Authority::load_or_create(dir, CA, "flotilla-ca")?;
    let server = authority.issue_key(&Profile::server("kube-apiserver", names))?;
    write_secret(&dir.join(SERVER_CERT), server.cert_pem.as_bytes())?;
    write_secret(&dir.join(SERVER_KEY), server.key_pem.as_bytes())?;
    // Kept across restarts, as kubeadm keeps `admin.conf`: a copied kubeconfig stays valid.
    let admin = authority.load_or_issue(dir, "admin", &Profile::client("kubernetes-admin", &[MASTERS]))?;
    let kubelet_client = authority.load_or_issue(
        dir,
        "kubelet-client",
        &Profile::client("kube-apiserver-kubelet-client", &[MASTERS]),
    )?;

    let token = load_or_create_secret(&dir.join(TOKEN))?;
    let node_token = load_or_create_secret(&dir.join(NODE_TOKEN))?;
    let metrics_token = load_or_create_secret(&dir.join(METRICS_TOKEN))?;
    Ok(Credentials {
        ca_pem: authority.cert_pem().to_string(),
        authority: std::sync::Arc::new(authority),
        server_cert_pem: server.cert_pem,
        server_key_der: server.key_der,
        admin,
        kubelet_client,
        token,
        node_token,
        metrics_token,
    })
}

/// A secret of 256 random bits kept in `path`, made on first use.
pub fn load_or_create_secret(path: &Path) -> Result<String, PkiError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.into(), source })?;
    }
    let secret = if path.exists() {
        read(path)?.trim().to_string()
    } else {
        let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        write_secret(path, secret.as_bytes())?;
        secret
    };
    if secret.len() < 32 {
        return Err(PkiError::Invalid { path: path.into(), message: "the token is too short".into() });
    }
    Ok(secret)
}

/// A certificate to serve with, and the SHA-256 (hex) of its DER form.
#[derive(Clone)]
pub struct ServingCertificate {
    pub cert_pem: String,
    /// PKCS#8 DER.
    pub key_der: Vec<u8>,
    pub sha256: String,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate").field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

/// A self-signed serving certificate for a node's HTTP API. Clients know it by its hash, which
/// the node publishes on its Node object, not by a CA: a node need not hold the cluster's CA key.
pub fn self_signed(names: &[String]) -> Result<ServingCertificate, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn("flotilla-node");
    for name in names {
        params.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        });
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    Ok(ServingCertificate { sha256: sha256_hex(cert.der()), cert_pem: cert.pem(), key_der: key.serialize_der() })
}

/// The prefix of a join token, which also names its format.
const JOIN_TOKEN_PREFIX: &str = "F10";

/// The token an agent joins the cluster with: the CA's hash (so the agent can check the CA it
/// fetches) and the node secret, as `F10<sha256 of the CA PEM>::<secret>` (after k3s' `K10`).
pub fn join_token(credentials: &Credentials) -> String {
    format!("{JOIN_TOKEN_PREFIX}{}::{}", sha256_hex(credentials.ca_pem.as_bytes()), credentials.node_token)
}

/// The CA hash and the secret of a join token.
pub fn parse_join_token(token: &str) -> Result<(String, String), String> {
    let rest = token
        .trim()
        .strip_prefix(JOIN_TOKEN_PREFIX)
        .ok_or("a join token starts with F10 (see `<data-dir>/node-token` on the server)")?;
    let (hash, secret) = rest.split_once("::").ok_or("a join token is F10<CA hash>::<secret>")?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.len() < 32 {
        return Err("the join token is malformed: copy it whole from `<data-dir>/node-token` on the server".into());
    }
    Ok((hash.to_ascii_lowercase(), secret.to_string()))
}

/// Whether the certificate (PEM) is unreadable or stops being valid within `margin` from now:
/// time to ask for a new one.
pub fn expires_within(cert_pem: &str, margin: Duration) -> bool {
    let Ok(der) = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()) else { return true };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { return true };
    let deadline = time::OffsetDateTime::now_utc() + margin;
    cert.validity().not_after.to_datetime() <= deadline
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA's parameters. Deterministic, so that a restart can sign with the stored CA key alone:
/// the issuer name and key identifier of new certificates match the stored CA certificate.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.into(), source })
}

/// Writes a file only its owner can read, atomically (a crash leaves the old one or the new one).
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let io = |source| PkiError::Io { path: path.into(), source };
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// An admin kubeconfig for a server at `server_url`: the admin's client certificate, as
/// kubeadm's `admin.conf` holds one.
pub fn kubeconfig(credentials: &Credentials, server_url: &str) -> String {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server_url}
  name: flotilla
contexts:
- context:
    cluster: flotilla
    user: admin
  name: flotilla
current-context: flotilla
preferences: {{}}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(&credentials.ca_pem),
        cert = b64(&credentials.admin.cert_pem),
        key = b64(&credentials.admin.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_keeps_the_ca_and_token_and_reissues_the_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load_or_create(dir.path(), &names).unwrap();
        let second = load_or_create(dir.path(), &names).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.token, second.token);
        assert_eq!(first.node_token, second.node_token);
        assert_ne!(first.token, first.node_token);
        let (hash, secret) = parse_join_token(&join_token(&first)).unwrap();
        assert_eq!((hash, secret), (sha256_hex(first.ca_pem.as_bytes()), first.node_token.clone()));
        assert!(parse_join_token("K10abc::def").is_err());
        assert_ne!(first.server_cert_pem, second.server_cert_pem);
        let mode = fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
        let config = kubeconfig(&first, "https://127.0.0.1:6443");
        assert!(config.contains("server: https://127.0.0.1:6443"));
        assert!(config.contains("client-certificate-data") && !config.contains(&first.token));
    }

    #[test]
    fn every_holder_of_the_secret_derives_the_same_ca_and_no_one_else_does() {
        let secret = "a-group-secret-of-at-least-32-characters";
        let one = Authority::derived(secret, "flotilla-store-peers").unwrap();
        let two = Authority::derived(secret, "flotilla-store-peers").unwrap();
        assert_eq!(one.cert_pem(), two.cert_pem());
        let other = Authority::derived("another-group-secret-of-32-characters", "flotilla-store-peers").unwrap();
        assert_ne!(one.cert_pem(), other.cert_pem());
        assert!(Authority::derived("short", "flotilla-store-peers").is_err());
    }

    #[test]
    fn a_request_gives_its_key_and_nothing_else() {
        let (ca, _) = Authority::generate("test-ca").unwrap();
        let (request, _key) = certificate_request("system:node:someone-else").unwrap();
        let cert = ca.issue_for_request(&request, &Profile::node("n1")).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let user = crate::identity::UserInfo::from_certificate(&der).unwrap();
        assert_eq!(user.node_name(), Some("n1"));
        assert!(
            ca.issue_for_request(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &Profile::node("n1")
            )
            .is_err()
        );
        assert!(ca.issue_for_request("not pem", &Profile::node("n1")).is_err());
    }
}
