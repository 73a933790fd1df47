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
    pub token: String,
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

    let token_path = dir.join(TOKEN);
    let token = if token_path.exists() {
        read(&token_path)?.trim().to_string()
    } else {
        // 256 random bits.
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        write_secret(&token_path, token.as_bytes())?;
        token
    };
    if token.len() < 32 {
        return Err(PkiError::Invalid { path: token_path, message: "the admin token is too short".into() });
    }
    Ok(Credentials { ca_pem, server_cert_pem: server_cert.pem(), server_key_der: server_key.serialize_der(), token })
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
        assert_ne!(first.server_cert_pem, second.server_cert_pem);
        let mode = fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
        let config = kubeconfig(&first, "https://127.0.0.1:6443");
        assert!(config.contains("server: https://127.0.0.1:6443"));
        assert!(config.contains(&first.token));
    }
}
