//! The cluster's credentials, kept in the data directory: a CA made on first start (and kept, so
//! kubeconfigs stay valid across restarts), a serving certificate signed by it (made again at
//! every start, so its names always match the address served), and the admin bearer token.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The credentials a server runs with.
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub server_cert_pem: String,
    /// The serving key, PKCS#8 DER.
    pub server_key_der: Vec<u8>,
    /// The admin's bearer token.
    pub token: String,
    /// The secret node agents authenticate with (and the server, to nodes).
    pub node_token: String,
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
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const TOKEN: &str = "admin.token";
const NODE_TOKEN: &str = "node.token";

/// Loads the CA and token from `dir` (making them on first start) and issues a serving
/// certificate for `names` (DNS names and IP addresses).
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Credentials, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.into(), source })?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = if ca_key_path.exists() {
        let pem = read(&ca_key_path)?;
        KeyPair::from_pem(&pem).map_err(|e| PkiError::Invalid { path: ca_key_path.clone(), message: e.to_string() })?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_secret(&dir.join(CA_CERT), cert.pem().as_bytes())?;
        write_secret(&ca_key_path, key.serialize_pem().as_bytes())?;
        key
    };
    let ca_pem = read(&dir.join(CA_CERT))?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn("kube-apiserver");
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &issuer)?;
    write_secret(&dir.join(SERVER_CERT), server_cert.pem().as_bytes())?;
    write_secret(&dir.join(SERVER_KEY), server_key.serialize_pem().as_bytes())?;

    let token = load_or_create_secret(&dir.join(TOKEN))?;
    let node_token = load_or_create_secret(&dir.join(NODE_TOKEN))?;
    Ok(Credentials {
        ca_pem,
        server_cert_pem: server_cert.pem(),
        server_key_der: server_key.serialize_der(),
        token,
        node_token,
    })
}

/// A secret of 256 random bits kept in `path`, made on first use.
fn load_or_create_secret(path: &Path) -> Result<String, PkiError> {
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

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA's parameters. Deterministic, so that a restart can sign with the stored CA key alone:
/// the issuer name and key identifier of new certificates match the stored CA certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("flotilla-ca");
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

/// An admin kubeconfig for a server at `server_url`.
pub fn kubeconfig(credentials: &Credentials, server_url: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(credentials.ca_pem.as_bytes());
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
    token: {token}
",
        token = credentials.token
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
        let mode = fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
        let config = kubeconfig(&first, "https://127.0.0.1:6443");
        assert!(config.contains("server: https://127.0.0.1:6443"));
        assert!(config.contains(&first.token));
    }
}
