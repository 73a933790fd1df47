//! Encryption at rest, as upstream's `--encryption-provider-config` does it and with its file
//! format (`apiserver.config.k8s.io/v1` `EncryptionConfiguration`): chosen resources are stored
//! encrypted, so that the store's files (its WAL, its SST files, a snapshot, a stolen disk)
//! hold no Secret in the clear.
//!
//! Each rule names resources (`secrets`, `deployments.apps`, `*.apps`, `*.` for every core
//! resource, `*.*` for all) and an ordered list of providers. A write uses the first provider
//! and its first key, and prefixes what it stores with `k8s:enc:<provider>:v1:<key name>:`, as
//! upstream does; a read uses whichever provider and key the prefix names, so keys rotate
//! without a flag day (add the new key second, restart; move it first, restart; rewrite every
//! object; drop the old key). Providers:
//!
//! - `aesgcm`: AES-GCM (ring), a random 12-byte nonce, the object's store key as additional
//!   data (so a value copied to another key does not decrypt), keys of 16 or 32 bytes.
//! - `secretbox`: XSalsa20-Poly1305 (NaCl's secretbox), a random 24-byte nonce, 32-byte keys.
//! - `identity`: no encryption; first, it turns encryption off for new writes, and, anywhere,
//!   lets what was stored in the clear be read.
//!
//! What upstream also offers and Flotilla does not (`aescbc`, weak; `kms`, an external service;
//! 24-byte AES keys, which ring does not implement) is refused when the file is read, naming it.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use flotilla_api::ApiError;
use flotilla_api::resource::ResourceDef;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

/// The prefix of every encrypted value.
const PREFIX: &str = "k8s:enc:";

/// How objects are stored. The default stores everything as it is.
#[derive(Clone, Default)]
pub struct Encryption {
    rules: Arc<Vec<Rule>>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption").field("rules", &self.rules.len()).finish()
    }
}

struct Rule {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

enum Provider {
    AesGcm(Vec<(String, LessSafeKey)>),
    SecretBox(Vec<(String, crypto_secretbox::XSalsa20Poly1305)>),
    Identity,
}

impl Provider {
    fn name(&self) -> &'static str {
        match self {
            Provider::AesGcm(_) => "aesgcm",
            Provider::SecretBox(_) => "secretbox",
            Provider::Identity => "identity",
        }
    }
}

/// A value read back: the object's stored form, and whether it was stored otherwise than the
/// configuration would store it now (another key, another provider, in the clear), so that a
/// rewrite of an unchanged object still writes it again.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) bytes: Vec<u8>,
    pub(crate) stale: bool,
}

impl Encryption {
    /// Reads an `EncryptionConfiguration` file; the error names what is wrong with it.
    pub fn from_file(path: &Path) -> Result<Encryption, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Encryption::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> Result<Encryption, String> {
        let file: File = serde_saphyr::from_str(text).map_err(|e| format!("not an EncryptionConfiguration: {e}"))?;
        if file.api_version != "apiserver.config.k8s.io/v1" || file.kind != "EncryptionConfiguration" {
            return Err(format!(
                "expected apiVersion apiserver.config.k8s.io/v1 and kind EncryptionConfiguration, not {} {}",
                file.api_version, file.kind
            ));
        }
        let mut rules = Vec::new();
        for (i, rule) in file.resources.into_iter().enumerate() {
            let at = format!("resources[{i}]");
            if rule.resources.is_empty() || rule.providers.is_empty() {
                return Err(format!("{at}: a rule names at least one resource and one provider"));
            }
            let providers = rule
                .providers
                .into_iter()
                .enumerate()
                .map(|(j, p)| provider(p).map_err(|e| format!("{at}.providers[{j}]: {e}")))
                .collect::<Result<_, _>>()?;
            rules.push(Rule { resources: rule.resources, providers });
        }
        Ok(Encryption { rules: Arc::new(rules) })
    }

    /// Whether anything is encrypted at all.
    pub fn is_enabled(&self) -> bool {
        self.rules.iter().any(|r| !matches!(r.providers.first(), Some(Provider::Identity)))
    }

    fn rule(&self, def: &ResourceDef) -> Option<&Rule> {
        let name = if def.group.is_empty() { def.plural.to_string() } else { format!("{}.{}", def.plural, def.group) };
        self.rules.iter().find(|rule| {
            rule.resources.iter().any(|pattern| {
                pattern == "*.*"
                    || *pattern == name
                    || (def.group.is_empty() && pattern == "*.")
                    || (!def.group.is_empty() && *pattern == format!("*.{}", def.group))
                    || (def.group.is_empty() && *pattern == def.plural)
            })
        })
    }

    /// What to store for `plain`, the stored form of the object at store key `key`.
    pub(crate) fn seal(&self, def: &ResourceDef, key: &str, plain: Vec<u8>) -> Vec<u8> {
        let Some(provider) = self.rule(def).and_then(|rule| rule.providers.first()) else { return plain };
        let mut nonce = [0u8; 24];
        match provider {
            Provider::Identity => plain,
            Provider::AesGcm(keys) => {
                let (name, cipher) = &keys[0];
                fill(&mut nonce[..12]);
                let mut sealed = plain;
                let nonce12 = Nonce::assume_unique_for_key(nonce[..12].try_into().expect("12 bytes"));
                cipher
                    .seal_in_place_append_tag(nonce12, Aad::from(key.as_bytes()), &mut sealed)
                    .expect("AES-GCM seals any value under 64 GiB");
                [format!("{PREFIX}aesgcm:v1:{name}:").as_bytes(), &nonce[..12], &sealed].concat()
            }
            Provider::SecretBox(keys) => {
                let (name, cipher) = &keys[0];
                fill(&mut nonce);
                let sealed = cipher
                    .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plain.as_slice())
                    .expect("secretbox seals any value");
                [format!("{PREFIX}secretbox:v1:{name}:").as_bytes(), &nonce, &sealed].concat()
            }
        }
    }

    /// The stored form of the object at store key `key`, from what the store holds.
    pub(crate) fn open(&self, def: &ResourceDef, key: &[u8], stored: Vec<u8>) -> Result<Opened, ApiError> {
        if !stored.starts_with(PREFIX.as_bytes()) {
            // In the clear: stale if the rule would encrypt it now. Readable unless the rule
            // leaves no way to read plain values (no `identity` among its providers).
            let rule = self.rule(def);
            let identity = rule.is_none_or(|r| r.providers.iter().any(|p| matches!(p, Provider::Identity)));
            let stale = !matches!(rule.and_then(|r| r.providers.first()), None | Some(Provider::Identity));
            if !identity && stale {
                tracing::debug!(resource = def.plural, "reading a value stored in the clear before encryption was on");
            }
            return Ok(Opened { bytes: stored, stale });
        }
        let failed =
            |why: String| ApiError::internal(format!("cannot decrypt {}: {why}", String::from_utf8_lossy(key)));
        let Some(rule) = self.rule(def) else {
            return Err(failed("it is encrypted, and the encryption configuration names no provider for it".into()));
        };
        let rest = &stored[PREFIX.len()..];
        for (index, provider) in rule.providers.iter().enumerate() {
            let tag = format!("{}:v1:", provider.name());
            let Some(rest) = rest.strip_prefix(tag.as_bytes()) else { continue };
            let opened = match provider {
                Provider::Identity => continue,
                Provider::AesGcm(keys) => open_with(keys, rest, |cipher, sealed| {
                    let (nonce, sealed) = sealed.split_at_checked(12)?;
                    let nonce = Nonce::assume_unique_for_key(nonce.try_into().ok()?);
                    let mut buffer = sealed.to_vec();
                    let plain = cipher.open_in_place(nonce, Aad::from(key), &mut buffer).ok()?.len();
                    buffer.truncate(plain);
                    Some(buffer)
                }),
                Provider::SecretBox(keys) => open_with(keys, rest, |cipher, sealed| {
                    let (nonce, sealed) = sealed.split_at_checked(24)?;
                    cipher.decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed).ok()
                }),
            };
            if let Some((bytes, first_key)) = opened {
                return Ok(Opened { bytes, stale: index > 0 || !first_key });
            }
        }
        Err(failed("no provider or key of the encryption configuration opens it (was its key removed?)".into()))
    }
}

/// Opens `rest` (`<key name>:<sealed>`) with the key it names; the plaintext, and whether that
/// key is the first.
fn open_with<K>(
    keys: &[(String, K)],
    rest: &[u8],
    open: impl Fn(&K, &[u8]) -> Option<Vec<u8>>,
) -> Option<(Vec<u8>, bool)> {
    keys.iter().enumerate().find_map(|(i, (name, cipher))| {
        let sealed = rest.strip_prefix(name.as_bytes())?.strip_prefix(b":")?;
        open(cipher, sealed).map(|plain| (plain, i == 0))
    })
}

fn fill(bytes: &mut [u8]) {
    SystemRandom::new().fill(bytes).expect("the system's random source works");
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<FileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    resources: Vec<String>,
    providers: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    keys: Vec<FileKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    secret: String,
}

fn provider(entry: serde_json::Map<String, serde_json::Value>) -> Result<Provider, String> {
    if entry.len() != 1 {
        return Err(
            "more than one provider specified in a single element, should split into different list elements".into()
        );
    }
    let (kind, body) = entry.into_iter().next().expect("one entry");
    let keys = |body: serde_json::Value, sizes: &[usize]| -> Result<Vec<(String, Vec<u8>)>, String> {
        let keys: Keys = serde_json::from_value(body).map_err(|e| format!("{kind}: {e}"))?;
        if keys.keys.is_empty() {
            return Err(format!("{kind}: at least one keys is required"));
        }
        keys.keys
            .into_iter()
            .map(|key| {
                if key.name.is_empty() || key.name.contains(':') {
                    return Err(format!("{kind}: a key needs a name without ':'"));
                }
                let secret = base64::engine::general_purpose::STANDARD
                    .decode(key.secret.trim())
                    .map_err(|_| format!("{kind} key {:?}: secrets must be base64 encoded", key.name))?;
                if !sizes.contains(&secret.len()) {
                    return Err(format!(
                        "{kind} key {:?}: secret is not of the expected length, got {}, expected one of {sizes:?}",
                        key.name,
                        secret.len()
                    ));
                }
                Ok((key.name, secret))
            })
            .collect()
    };
    match kind.as_str() {
        "identity" => Ok(Provider::Identity),
        "aesgcm" => {
            let keys = keys(body, &[16, 32])?
                .into_iter()
                .map(|(name, secret)| {
                    let algorithm = if secret.len() == 16 { &AES_128_GCM } else { &AES_256_GCM };
                    let key = UnboundKey::new(algorithm, &secret)
                        .map_err(|_| format!("aesgcm key {name:?} is not usable"))?;
                    Ok((name, LessSafeKey::new(key)))
                })
                .collect::<Result<_, String>>()?;
            Ok(Provider::AesGcm(keys))
        }
        "secretbox" => {
            let keys = keys(body, &[32])?
                .into_iter()
                .map(|(name, secret)| {
                    let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(&secret)
                        .map_err(|_| format!("secretbox key {name:?} is not usable"))?;
                    Ok((name, cipher))
                })
                .collect::<Result<_, String>>()?;
            Ok(Provider::SecretBox(keys))
        }
        "aescbc" => Err("aescbc is not supported (it is upstream's weakest provider): use aesgcm or secretbox".into()),
        "kms" => Err("kms is not supported: use aesgcm or secretbox with a key kept off the device's disk".into()),
        other => Err(format!("unknown provider {other:?}: supported are aesgcm, secretbox and identity")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> &'static ResourceDef {
        flotilla_api::resource::find("", "v1", "secrets").unwrap()
    }

    fn config(providers: &str) -> Encryption {
        Encryption::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    const K1: &str = "      - name: k1\n        secret: c2VjcmV0IGlzIHNlY3VyZSwgaXNuJ3QgaXQ/IDMyIGI=\n";
    const K2: &str = "      - name: k2\n        secret: YW5vdGhlciBzZWNyZXQsIDMyIGJ5dGVzIGxvbmcgb2s=\n";

    #[test]
    fn values_are_sealed_by_the_first_key_and_opened_by_the_one_they_name() {
        let key = b"/registry/secrets/ns/s";
        for kind in ["aesgcm", "secretbox"] {
            let one = config(&format!("  - {kind}:\n      keys:\n{K1}  - identity: {{}}\n"));
            let sealed = one.seal(secrets(), "/registry/secrets/ns/s", b"{\"data\":\"x\"}".to_vec());
            assert!(sealed.starts_with(format!("k8s:enc:{kind}:v1:k1:").as_bytes()), "{kind}");
            assert!(!sealed.windows(10).any(|w| w == b"{\"data\":\"x"), "{kind}: in the clear");
            let opened = one.open(secrets(), key, sealed.clone()).unwrap();
            assert_eq!((opened.bytes.as_slice(), opened.stale), (&b"{\"data\":\"x\"}"[..], false));
            // Rotation: a new first key still opens the old values, and says they are stale.
            let rotated = config(&format!("  - {kind}:\n      keys:\n{K2}{K1}"));
            let opened = rotated.open(secrets(), key, sealed.clone()).unwrap();
            assert!(opened.stale, "{kind}");
            // Without the old key, the value is lost, and says so.
            let err =
                config(&format!("  - {kind}:\n      keys:\n{K2}")).open(secrets(), key, sealed.clone()).unwrap_err();
            assert!(
                err.message.contains("no provider or key of the encryption configuration opens it"),
                "{}",
                err.message
            );
            // Values are bound to their place where the provider takes additional data.
            if kind == "aesgcm" {
                assert!(one.open(secrets(), b"/registry/secrets/ns/other", sealed.clone()).is_err());
            }
            let mut tampered = sealed;
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            assert!(one.open(secrets(), key, tampered).is_err(), "{kind}: tampering goes unnoticed");
        }
    }

    #[test]
    fn plain_values_read_while_identity_is_there_and_other_resources_are_untouched() {
        let on = config(&format!("  - aesgcm:\n      keys:\n{K1}  - identity: {{}}\n"));
        let opened = on.open(secrets(), b"/registry/secrets/ns/s", b"plain".to_vec()).unwrap();
        assert_eq!((opened.bytes.as_slice(), opened.stale), (&b"plain"[..], true));
        let pods = flotilla_api::resource::find("", "v1", "pods").unwrap();
        assert_eq!(on.seal(pods, "/registry/pods/ns/p", b"pod".to_vec()), b"pod");
        let off = Encryption::default();
        assert_eq!(off.seal(secrets(), "/registry/secrets/ns/s", b"s".to_vec()), b"s");
        assert!(on.is_enabled() && !off.is_enabled());
    }

    #[test]
    fn bad_configurations_are_refused_naming_what_is_wrong() {
        let bad = |providers: &str| match Encryption::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        )) {
            Ok(_) => panic!("accepted: {providers}"),
            Err(err) => err,
        };
        assert!(bad(&format!("  - aescbc:\n      keys:\n{K1}")).contains("aescbc is not supported"));
        assert!(
            bad("  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n")
                .contains("secret is not of the expected length, got 5")
        );
        assert!(bad("  - aesgcm:\n      keys:\n      - name: k\n        secret: '!!!'\n").contains("must be base64"));
        assert!(bad("  - aesgcm:\n      keys: []\n").contains("at least one keys is required"));
        assert!(bad("  - identity: {}\n    aesgcm: {keys: []}\n").contains("more than one provider"));
        assert!(Encryption::parse("apiVersion: v1\nkind: Config\n").is_err());
    }
}
