//! The Kubernetes clients people use, unmodified, against `flotilla server`: the suites in
//! `tests/clients/` (the official Python client, kubernetes_asyncio, kr8s and lightkube under
//! pytest; @kubernetes/client-node under `node --test`), each with its client as installed from
//! its registry at a pinned version by `scripts/clients`. They run when
//! `FLOTILLA_E2E_CLIENTS=1` (`scripts/test` installs the clients and sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use flotilla_examples::{self as examples, busybox};

use crate::harness::{Ports, Server, flotilla_bin};
use crate::pods::import;

fn enabled() -> bool {
    std::env::var("FLOTILLA_E2E_CLIENTS").is_ok_and(|v| v == "1")
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// A server with the images the suites run, and the environment that names them
/// (`FLOTILLA_IMAGE_RUN` prints a line a second until stopped; `FLOTILLA_IMAGE_ONCE` prints
/// and exits 0).
struct Target {
    // Fields drop in order: the server stops before its directory goes.
    _server: Server,
    _dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

fn target() -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    import(dir.path(), examples::P1_TICKER, "ticker:e2e")?;
    import(dir.path(), examples::P1_HELLO, "hello:e2e")?;
    let mut env = vec![
        ("KUBECONFIG", server.kubeconfig.display().to_string()),
        ("FLOTILLA_IMAGE_RUN", "ticker:e2e".into()),
        ("FLOTILLA_IMAGE_ONCE", "hello:e2e".into()),
    ];
    // Where Linux containers run (as root), `busybox` too, which the clients' own suites use.
    if std::env::var_os("FLOTILLA_E2E_OCI").is_some() {
        let layer = busybox::layer()?;
        let archive = busybox::saved_image(dir.path(), &layer, &flotilla_wasm::digest(&layer))?;
        let imported = Command::new(flotilla_bin())
            .args(["image", "import"])
            .arg(&archive)
            .arg("--data-dir")
            .arg(dir.path())
            .output()?;
        ensure!(imported.status.success(), "import: {}", String::from_utf8_lossy(&imported.stderr));
        env.push(("FLOTILLA_IMAGE_BUSYBOX", "busybox".into()));
    }
    Ok(Target { _server: server, _dir: dir, env })
}

/// Runs a client's suite against a fresh server, when the matrix is switched on.
fn run_suite(mut command: Command, what: &str) -> Result<()> {
    if !enabled() {
        eprintln!("skipped: FLOTILLA_E2E_CLIENTS is not 1");
        return Ok(());
    }
    let target = target()?;
    let env = target.env.iter().map(|(k, v)| (*k, v.as_str()));
    let status = command.envs(env).status().with_context(|| format!("run {what}"))?;
    ensure!(status.success(), "{what} failed ({status}); its output is above");
    Ok(())
}

#[test]
fn python_clients() -> Result<()> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/clients/venv/bin/python");
    let mut pytest = Command::new(python);
    pytest.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).current_dir(clients_dir().join("python"));
    run_suite(pytest, "pytest tests/clients/python")
}

#[test]
fn javascript_client() -> Result<()> {
    let mut node = Command::new("node");
    node.arg("--test").current_dir(clients_dir().join("node"));
    run_suite(node, "node --test tests/clients/node")
}
