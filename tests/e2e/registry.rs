//! Pulling wasm modules from a real OCI registry: Debian's `docker-registry` on a loopback
//! port, holding a wasm artifact (a layer of type `application/vnd.wasm.content.layer.v1+wasm`)
//! and an ordinary OCI image whose entrypoint is a `.wasm` file in a gzipped layer. The node
//! pulls both by tag and by digest, verifies them, and runs them; a missing image says why.
//!
//! Needs `docker-registry` (`scripts/setup docker-registry`); runs when
//! `FLOTILLA_E2E_REGISTRY=1`, which `scripts/test` sets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server, flotilla_bin, free_port};
use crate::kubectl::Kubectl;
use crate::pods::{apply, node_name, pod, wait_for};

/// `docker-registry` on 127.0.0.1, killed when dropped.
pub(crate) struct Registry {
    child: Child,
    pub(crate) port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub(crate) fn start() -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start docker-registry (scripts/setup docker-registry installs it)")?;
        let registry = Registry { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !request(port, "GET", "/v2/", &[], &[]).is_ok_and(|r| r.status == 200) {
            ensure!(Instant::now() < deadline, "docker-registry did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(registry)
    }

    /// Uploads a blob; its digest.
    pub(crate) fn push_blob(&self, name: &str, blob: &[u8]) -> Result<String> {
        let digest = sha256(blob);
        let started = request(self.port, "POST", &format!("/v2/{name}/blobs/uploads/"), &[], &[])?;
        ensure!(started.status == 202, "starting an upload: {}", started.status);
        let location = started.header("location").context("an upload location")?;
        let location =
            location.strip_prefix(&format!("http://127.0.0.1:{}", self.port)).unwrap_or(&location).to_string();
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={digest}");
        let done = request(self.port, "PUT", &put, &[("Content-Type", "application/octet-stream")], blob)?;
        ensure!(done.status == 201, "uploading {digest}: {} {}", done.status, String::from_utf8_lossy(&done.body));
        Ok(digest)
    }

    /// Puts an OCI manifest under `reference`; its digest.
    pub(crate) fn push_manifest(&self, name: &str, reference: &str, manifest: &serde_json::Value) -> Result<String> {
        let body = serde_json::to_vec(manifest)?;
        let media = [("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
        let done = request(self.port, "PUT", &format!("/v2/{name}/manifests/{reference}"), &media, &body)?;
        ensure!(
            done.status == 201,
            "putting {name}:{reference}: {} {}",
            done.status,
            String::from_utf8_lossy(&done.body)
        );
        Ok(sha256(&body))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`, the connection closed after it.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )?;
    for (name, value) in headers {
        write!(stream, "{name}: {value}\r\n")?;
    }
    stream.write_all(b"\r\n")?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("a response head")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).context("a status")?;
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    Ok(Response { status, headers, body: raw[end + 4..].to_vec() })
}

fn sha256(bytes: &[u8]) -> String {
    flotilla_wasm::digest(bytes)
}

/// A gzipped tar layer holding `file` at `path`.
fn layer(path: &str, file: &[u8]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(file.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, path, file)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner()?)?;
    Ok(gz.finish()?)
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

#[test]
fn modules_are_pulled_from_a_registry_by_tag_and_digest() -> Result<()> {
    if std::env::var_os("FLOTILLA_E2E_REGISTRY").is_none() {
        eprintln!("skipped: set FLOTILLA_E2E_REGISTRY=1 to pull from docker-registry (scripts/test does)");
        return Ok(());
    }
    let registry = Registry::start()?;
    let hello = std::fs::read(examples::P1_HELLO)?;

    // A wasm artifact: an empty config and the module as its one layer.
    let config = registry.push_blob("wasm/hello", b"{}")?;
    let module = registry.push_blob("wasm/hello", &hello)?;
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.wasm.config.v0+json",
        "config": descriptor("application/vnd.oci.empty.v1+json", &config, 2),
        "layers": [descriptor("application/vnd.wasm.content.layer.v1+wasm", &module, hello.len())],
    });
    let artifact_digest = registry.push_manifest("wasm/hello", "v1", &artifact)?;

    // An ordinary image: the module in a gzipped layer, named by the entrypoint.
    let gzipped = layer("app/hello.wasm", &hello)?;
    let layer_digest = registry.push_blob("oci/hello", &gzipped)?;
    let image_config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/app/hello.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&[])]},
    }))?;
    let config = registry.push_blob("oci/hello", &image_config)?;
    let image = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config, image_config.len()),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer_digest, gzipped.len())],
    });
    registry.push_manifest("oci/hello", "v1", &image)?;

    let dir = tempfile::tempdir()?;
    let address = format!("127.0.0.1:{}", registry.port);
    let server = Server::start_with(dir.path(), Ports::free(), &["--insecure-registry", &address])?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    let by_digest = format!("{address}/wasm/hello@{artifact_digest}");
    for (name, image) in [
        ("artifact", format!("{address}/wasm/hello:v1")),
        ("image", format!("{address}/oci/hello:v1")),
        ("pinned", by_digest.clone()),
    ] {
        apply(
            &k,
            &pod(name, &node, &image, "Never", "", "")
                .replace("imagePullPolicy: IfNotPresent", "imagePullPolicy: Always"),
        )?;
        wait_for(&k, name, "{.status.phase}", 60, |p| p == "Succeeded")?;
        let logs = k.ok(&["logs", name])?;
        ensure!(logs == "hello from a wasm pod\n", "{name}: {logs:?}");
        let image_id = k.ok(&["get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].imageID}"])?;
        ensure!(image_id.ends_with(&sha256(&hello)), "{name}: imageID {image_id}");
        // The digest the artifact's tag resolved to is kept: pinning it needs no second pull.
        let event = if name == "pinned" { "already present on machine" } else { "Successfully pulled image" };
        let described = k.ok(&["describe", "pod", name])?;
        ensure!(described.contains(event), "{name}: {described}");
    }

    // A tag the registry does not have: the pull fails with the registry's answer.
    apply(&k, &pod("missing", &node, &format!("{address}/wasm/hello:v9"), "Always", "", ""))?;
    let message =
        wait_for(&k, "missing", "{.status.containerStatuses[0].state.waiting.message}", 60, |m| !m.is_empty())?;
    ensure!(message.contains("404") && message.contains("manifests/v9"), "{message}");
    let reason = wait_for(&k, "missing", "{.status.containerStatuses[0].state.waiting.reason}", 30, |r| {
        r == "ImagePullBackOff"
    })?;
    ensure!(reason == "ImagePullBackOff");

    // The node keeps what it pulled.
    let listed = Command::new(flotilla_bin()).args(["image", "ls", "--data-dir"]).arg(dir.path()).output()?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for name in [format!("{address}/wasm/hello:v1"), format!("{address}/oci/hello:v1"), by_digest] {
        ensure!(listed.lines().any(|l| l.starts_with(&name) && l.ends_with("pulled")), "{name} not in {listed}");
    }
    Ok(())
}
