//! Pulling images from OCI registries over the distribution API: wasm artifacts (a layer of
//! type `application/vnd.wasm.content.layer.v1+wasm` or `application/wasm`), OCI images whose
//! root filesystem holds the `.wasm` their entrypoint names, and any other image as a
//! container image (its manifest, config and layers). Every blob is verified against its
//! digest before it is stored.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::container::ImageConfig;
use super::store::{Image, ImageStore, Kind, Source, StoreError, is_digest, sha256};
use super::{Reference, reference::DEFAULT_REGISTRY};

/// Media types of a layer that is the module itself.
const WASM_LAYERS: [&str; 3] = [
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",
];
/// What a manifest request accepts: OCI and Docker manifests and indexes.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// A manifest larger than this is refused: a registry must not make the node buffer without end.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// A blob read into memory (a module, an image config, a layer searched for a module) larger
/// than this is refused, for the same reason; a container image's layer is written to the store
/// as it arrives instead, held to the size its manifest gives.
const MAX_BLOB_BYTES: usize = 512 << 20;
/// What a blob written to the store is written in: what a pull holds of it at once.
const BLOB_CHUNK: usize = 1 << 20;
/// Redirects followed for one blob (registries send blobs to storage by redirect).
const MAX_REDIRECTS: usize = 5;

/// The registries a node pulls from: HTTPS with the system's roots, or plain HTTP for the
/// registries listed as insecure (meant for a registry on loopback).
#[derive(Clone)]
pub struct Registries {
    insecure: Arc<Vec<String>>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries").field("insecure", &self.insecure).finish_non_exhaustive()
    }
}

/// An image manifest or index, as registries, OCI layouts and the store hold them.
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
pub(super) struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

impl Registries {
    /// `insecure` lists registries (`host:port`) reached over plain HTTP.
    pub fn new(insecure: Vec<String>) -> Registries {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .unwrap_or_else(|err| {
                tracing::warn!(%err, "no usable system root certificates: pulls over HTTPS will fail");
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default versions")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            })
            .https_or_http()
            .enable_http1()
            .build();
        Registries { insecure: Arc::new(insecure), client: Client::builder(TokioExecutor::new()).build(https) }
    }

    /// Pulls the module `reference` names into `store`, and tags it there.
    pub async fn pull(&self, store: &ImageStore, reference: &Reference) -> Result<Image, String> {
        let host = if reference.registry == DEFAULT_REGISTRY { "registry-1.docker.io" } else { &reference.registry };
        let scheme = if self.insecure.iter().any(|r| r == &reference.registry) { "http" } else { "https" };
        let mut session =
            Session { registries: self, base: format!("{scheme}://{host}/v2/{}", reference.repository), token: None };
        let tag_or_digest =
            reference.digest.clone().or_else(|| reference.tag.clone()).unwrap_or_else(|| "latest".into());
        let mut manifest_bytes =
            session.get(&format!("manifests/{tag_or_digest}"), MANIFEST_TYPES, MAX_MANIFEST_BYTES).await?;
        let mut manifest_digest = sha256(&manifest_bytes);
        if let Some(pinned) = &reference.digest
            && *pinned != manifest_digest
        {
            return Err(format!("the manifest's digest is {manifest_digest}, not the {pinned} the image names"));
        }
        let mut manifest: Manifest = parse_manifest(&manifest_bytes)?;
        if !manifest.manifests.is_empty() {
            let chosen = choose_platform(&manifest.manifests).ok_or_else(|| {
                "the image index has no manifest for wasm (wasi/wasm) or this node's platform".to_string()
            })?;
            manifest_bytes =
                session.get(&format!("manifests/{}", chosen.digest), MANIFEST_TYPES, MAX_MANIFEST_BYTES).await?;
            manifest_digest = sha256(&manifest_bytes);
            if manifest_digest != chosen.digest {
                return Err(format!("manifest {} arrived with digest {manifest_digest}", chosen.digest));
            }
            manifest = parse_manifest(&manifest_bytes)?;
        }
        let module = match manifest.layers.iter().find(|l| WASM_LAYERS.contains(&l.media_type.as_str())) {
            Some(layer) => session.blob(&layer.digest).await?,
            None => match self.module_from_rootfs(&mut session, &manifest).await? {
                Some(module) => module,
                None => return self.container(&mut session, store, reference, manifest, &manifest_bytes).await,
            },
        };
        if !module.starts_with(b"\0asm") {
            return Err(
                "the image holds no WebAssembly module: its layer does not start with the wasm magic number".into()
            );
        }
        let digest = store.put_blob(&module, None).map_err(|e| e.to_string())?;
        let size = module.len() as u64;
        tag_pulled(store, reference, &manifest_digest, &digest, size, Kind::Module)
    }

    /// Stores a container image: its config and layers, each verified, then its manifest.
    async fn container(
        &self,
        session: &mut Session<'_>,
        store: &ImageStore,
        reference: &Reference,
        manifest: Manifest,
        manifest_bytes: &[u8],
    ) -> Result<Image, String> {
        let config = manifest.config.as_ref().ok_or("the manifest names no image config")?;
        // What the manifest says it holds must fit on the node's disk, with room to spare: a
        // registry must not fill it (each blob is then held to the size it declares).
        let declared: u64 = std::iter::once(config).chain(&manifest.layers).map(|b| b.size).sum();
        let free = rustix::fs::statvfs(store.root()).map(|s| s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(u64::MAX);
        if declared.saturating_mul(2) > free {
            return Err(format!(
                "the image is {declared} bytes, and the node's image store has {free} bytes free: it needs twice \
                 the image's size (its layers and their unpacked files)"
            ));
        }
        let mut size = manifest_bytes.len() as u64;
        for blob in std::iter::once(config).chain(&manifest.layers) {
            if !store.blob_path(&blob.digest).exists() {
                session.store_blob(store, blob).await?;
            }
            size += blob.size;
        }
        let digest = store.put_blob(manifest_bytes, None).map_err(|e| e.to_string())?;
        tag_pulled(store, reference, &digest, &digest, size, Kind::Container)
    }

    /// The module an ordinary OCI image's entrypoint names, read from its layers (the last
    /// layer that has the file wins, as it would in the unpacked root filesystem); `None` when
    /// its entrypoint is no `.wasm` file: a container image.
    async fn module_from_rootfs(
        &self,
        session: &mut Session<'_>,
        manifest: &Manifest,
    ) -> Result<Option<Vec<u8>>, String> {
        let config = manifest.config.as_ref().ok_or("the manifest has neither a wasm layer nor an image config")?;
        let config: ImageConfig = serde_json::from_slice(&session.blob(&config.digest).await?)
            .map_err(|e| format!("the image config is not valid JSON: {e}"))?;
        let entry =
            config.config.entrypoint.filter(|e| !e.is_empty()).or(config.config.cmd).and_then(|e| e.into_iter().next());
        let Some(entry) = entry.filter(|e| e.ends_with(".wasm")) else { return Ok(None) };
        let wanted = entry.trim_start_matches('/').to_string();
        for layer in manifest.layers.iter().rev() {
            let blob = session.blob(&layer.digest).await?;
            let media_type = layer.media_type.clone();
            let wanted = wanted.clone();
            let found = tokio::task::spawn_blocking(move || find_in_layer(&blob, &media_type, &wanted))
                .await
                .map_err(|e| format!("reading a layer: {e}"))??;
            if let Some(module) = found {
                return Ok(Some(module));
            }
        }
        Err(format!("no layer of the image holds its entrypoint {entry:?}"))
    }
}

/// Points `reference`, and the reference pinned to the manifest it resolved to, at the stored
/// `digest` (the pinned one resolves without a second pull).
fn tag_pulled(
    store: &ImageStore,
    reference: &Reference,
    manifest_digest: &str,
    digest: &str,
    size: u64,
    kind: Kind,
) -> Result<Image, String> {
    let pinned = Reference { tag: None, digest: Some(manifest_digest.to_string()), ..reference.clone() };
    store.tag(&pinned, digest, size, Source::Pulled, kind).map_err(|e| e.to_string())?;
    store.tag(reference, digest, size, Source::Pulled, kind).map_err(|e| e.to_string())
}

pub(super) fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not valid JSON: {e}"))?;
    if manifest.media_type.as_deref().is_some_and(|t| t.contains("schema1")) {
        return Err("Docker schema 1 manifests are not supported".into());
    }
    // A digest names a file of the store: nothing but `sha256:` and 64 hex digits may.
    let descriptors = manifest.manifests.iter().chain(&manifest.config).chain(&manifest.layers);
    if let Some(bad) = descriptors.map(|d| &d.digest).find(|d| !is_digest(d)) {
        return Err(format!("the manifest names {bad:?}, which is not a sha256 digest"));
    }
    Ok(manifest)
}

/// The manifest of an index to run: one for wasm first, else one for this node's platform.
pub(super) fn choose_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let platform = |d: &&Descriptor| d.platform.clone();
    manifests
        .iter()
        .find(|d| platform(d).is_some_and(|p| p.architecture == "wasm" || p.os.starts_with("wasi")))
        .or_else(|| manifests.iter().find(|d| platform(d).is_some_and(|p| p.os == "linux" && p.architecture == arch)))
        .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
}

/// The file at `wanted` in a layer (tar, or gzip-compressed tar), if the layer has it.
fn find_in_layer(blob: &[u8], media_type: &str, wanted: &str) -> Result<Option<Vec<u8>>, String> {
    let gzipped = blob.starts_with(&[0x1f, 0x8b]);
    if media_type.contains("zstd") {
        return Err("zstd-compressed layers are not supported: push the image with gzip layers".into());
    }
    let reader: Box<dyn Read> = if gzipped { Box::new(flate2::read::GzDecoder::new(blob)) } else { Box::new(blob) };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| format!("reading a layer: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading a layer: {e}"))?;
        let path = entry.path().map_err(|e| format!("reading a layer: {e}"))?.to_string_lossy().into_owned();
        if path.trim_start_matches("./").trim_start_matches('/') == wanted {
            if entry.size() as usize > MAX_BLOB_BYTES {
                return Err(format!("{wanted} is larger than {MAX_BLOB_BYTES} bytes"));
            }
            let mut module = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut module).map_err(|e| format!("reading {wanted}: {e}"))?;
            return Ok(Some(module));
        }
    }
    Ok(None)
}

/// One pull's requests to one repository, with the bearer token a registry hands out.
struct Session<'a> {
    registries: &'a Registries,
    base: String,
    token: Option<String>,
}

impl Session<'_> {
    /// A blob, verified against its digest.
    async fn blob(&mut self, digest: &str) -> Result<Vec<u8>, String> {
        let bytes = self.get(&format!("blobs/{digest}"), "*/*", MAX_BLOB_BYTES).await?;
        let actual = sha256(&bytes);
        if actual != digest {
            return Err(format!("blob {digest} arrived with digest {actual}"));
        }
        Ok(bytes.to_vec())
    }

    /// A blob written into `store` as it arrives, a piece at a time (a layer may be larger than
    /// the node's memory), held to the size its descriptor gives and verified against its digest.
    async fn store_blob(&mut self, store: &ImageStore, blob: &Descriptor) -> Result<(), String> {
        let limit = if blob.size > 0 { blob.size } else { MAX_BLOB_BYTES as u64 };
        let (mut body, url) = self.open(&format!("blobs/{}", blob.digest), "*/*").await?;
        let stored = |e: StoreError| format!("storing blob {}: {e}", blob.digest);
        let mut writer = store.blob_writer().map_err(stored)?;
        let mut pending = Vec::with_capacity(BLOB_CHUNK);
        loop {
            let frame = body.frame().await.transpose().map_err(|e| format!("reading {url}: {e}"))?;
            let data = frame.map(|f| f.into_data().unwrap_or_default());
            if let Some(data) = &data {
                if writer.size() + (pending.len() + data.len()) as u64 > limit {
                    return Err(format!("{url}: the blob is larger than the {limit} bytes its manifest says"));
                }
                pending.extend_from_slice(data);
            }
            // Written off the async threads, a chunk at a time.
            if pending.len() >= BLOB_CHUNK || (data.is_none() && !pending.is_empty()) {
                let chunk = std::mem::take(&mut pending);
                writer = tokio::task::spawn_blocking(move || writer.write(&chunk).map(|()| writer))
                    .await
                    .map_err(|e| format!("storing blob {}: {e}", blob.digest))?
                    .map_err(stored)?;
            }
            if data.is_none() {
                break;
            }
        }
        if blob.size > 0 && writer.size() != blob.size {
            return Err(format!("{url}: the blob is {} bytes, not the {} its manifest says", writer.size(), blob.size));
        }
        let expected = blob.digest.clone();
        tokio::task::spawn_blocking(move || writer.finish(Some(&expected)))
            .await
            .map_err(|e| format!("storing blob {}: {e}", blob.digest))?
            .map_err(|e| match e {
                StoreError::DigestMismatch { actual, .. } => {
                    format!("blob {} arrived with digest {actual}", blob.digest)
                }
                e => stored(e),
            })?;
        Ok(())
    }

    /// The body of `path`, of at most `limit` bytes, in memory.
    async fn get(&mut self, path: &str, accept: &str, limit: usize) -> Result<Bytes, String> {
        let (body, url) = self.open(path, accept).await?;
        let body = Limited::new(body, limit).collect().await.map_err(|e| format!("reading {url}: {e}"))?;
        Ok(body.to_bytes())
    }

    /// The body of a successful `GET` of `path`, through the registry's token and redirects,
    /// and the URL it came from.
    async fn open(&mut self, path: &str, accept: &str) -> Result<(hyper::body::Incoming, String), String> {
        let mut url = format!("{}/{path}", self.base);
        let mut authorized = true;
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send(&url, accept, authorized).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && self.token.is_none() && authorized {
                let challenge = response.headers().get(header::WWW_AUTHENTICATE).cloned();
                self.token = Some(self.authenticate(challenge).await?);
                continue;
            }
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or("a redirect without a Location")?;
                let next = resolve(&url, location);
                // Credentials for the registry are not sent to the storage it redirects to.
                authorized = host(&next) == host(&url);
                url = next;
                continue;
            }
            if !status.is_success() {
                let body = Limited::new(response.into_body(), 4096).collect().await.map(|b| b.to_bytes());
                let body = body.unwrap_or_default();
                let detail = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string();
                return Err(format!(
                    "{url}: {status}{}",
                    if detail.is_empty() { String::new() } else { format!(": {detail}") }
                ));
            }
            return Ok((response.into_body(), url));
        }
        Err(format!("{url}: too many redirects"))
    }

    async fn send(
        &self,
        url: &str,
        accept: &str,
        authorized: bool,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let mut request = Request::get(uri).header(header::ACCEPT, accept).header(header::USER_AGENT, "flotilla");
        if authorized && let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
        tokio::time::timeout(std::time::Duration::from_secs(60), self.registries.client.request(request))
            .await
            .map_err(|_| format!("{url}: no answer within 60 s"))?
            .map_err(|e| format!("{url}: {e}"))
    }

    /// An anonymous token from the realm a `WWW-Authenticate: Bearer …` challenge names.
    async fn authenticate(&self, challenge: Option<HeaderValue>) -> Result<String, String> {
        let challenge = challenge
            .as_ref()
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.strip_prefix("Bearer "))
            .ok_or("the registry asks for credentials this node does not have")?;
        let mut realm = None;
        let mut query = Vec::new();
        for part in split_challenge(challenge) {
            let Some((key, value)) = part.split_once('=') else { continue };
            let value = value.trim_matches('"');
            match key.trim() {
                "realm" => realm = Some(value.to_string()),
                key @ ("service" | "scope") => query.push(format!("{key}={}", encode(value))),
                _ => {}
            }
        }
        let realm = realm.ok_or("the registry's challenge names no realm")?;
        let url = if query.is_empty() { realm } else { format!("{realm}?{}", query.join("&")) };
        let response = self.send(&url, "application/json", false).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 1 << 20).collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("getting a token from {url}: {status}"));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&body).map_err(|e| format!("the token from {url}: {e}"))?;
        token.token.or(token.access_token).ok_or_else(|| format!("{url} gave no token"))
    }
}

/// The parts of a challenge, split at commas outside quotes.
fn split_challenge(challenge: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in challenge.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&challenge[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&challenge[start..]);
    parts
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn host(url: &str) -> Option<String> {
    url.parse::<Uri>().ok().and_then(|u| u.authority().map(|a| a.to_string()))
}

/// `location` relative to `url`.
fn resolve(url: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    match url.parse::<Uri>() {
        Ok(uri) if location.starts_with('/') => {
            format!(
                "{}://{}{location}",
                uri.scheme_str().unwrap_or("https"),
                uri.authority().map(|a| a.as_str()).unwrap_or("")
            )
        }
        _ => location.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_whose_digest_names_a_path_is_refused() {
        let hex = "ab".repeat(32);
        for bad in ["sha256:../../../../etc/shadow", "/etc/shadow", "sha256:AB", "md5:00"] {
            let manifest =
                serde_json::json!({"config": {"digest": format!("sha256:{hex}")}, "layers": [{"digest": bad}]});
            let err = parse_manifest(&serde_json::to_vec(&manifest).unwrap()).err().unwrap();
            assert!(err.contains("not a sha256 digest"), "{bad}: {err}");
        }
        let store = ImageStore::open(tempfile::tempdir().unwrap().path().into()).unwrap();
        assert!(store.blob_path("sha256:../../x").ends_with("not-a-digest"));
    }

    #[test]
    fn challenges_indexes_and_layers_are_read() {
        let parts =
            split_challenge(r#"realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push""#);
        assert_eq!(parts.len(), 3);
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
        let index: Manifest = serde_json::from_str(
            r#"{"manifests": [
                {"digest": "sha256:1", "platform": {"os": "linux", "architecture": "s390x"}},
                {"digest": "sha256:2", "platform": {"os": "wasip1", "architecture": "wasm"}}]}"#,
        )
        .unwrap();
        assert_eq!(choose_platform(&index.manifests).unwrap().digest, "sha256:2");
        // A gzipped tar layer with the module at the entrypoint's path.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(8);
        header.set_cksum();
        tar.append_data(&mut header, "app/hello.wasm", &b"\0asm\x01\0\0\0"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let layer = gz.finish().unwrap();
        let found = find_in_layer(&layer, "application/vnd.oci.image.layer.v1.tar+gzip", "app/hello.wasm").unwrap();
        assert_eq!(found.as_deref(), Some(&b"\0asm\x01\0\0\0"[..]));
        assert_eq!(find_in_layer(&tar, "application/vnd.oci.image.layer.v1.tar", "other.wasm").unwrap(), None);
    }
}
