//! Nodes coming and going: a server killed with its node finds the node's pods again and tells
//! the truth about them, and `flotilla agent` joins a node from another process with the join
//! token, serving `kubectl logs` through the API server.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server, flotilla_bin};
use crate::kubectl::Kubectl;
use crate::pods::{apply, import, node_name, pod, wait_for};

#[test]
fn a_node_that_restarts_reports_its_pods_truthfully_and_restarts_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    import(dir.path(), examples::P1_TICKER, "ticker:v1")?;
    import(dir.path(), examples::P1_HELLO, "hello:v1")?;
    let ports = Ports::free();
    let server = Server::start(dir.path(), ports.clone())?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    let tick = "    env:\n    - name: TICK_MS\n      value: \"100\"\n";
    apply(&k, &pod("ticker", &node, "ticker:v1", "Always", tick, ""))?;
    apply(&k, &pod("once", &node, "ticker:v1", "Never", tick, ""))?;
    apply(&k, &pod("hello", &node, "hello:v1", "Never", "", ""))?;
    for running in ["ticker", "once"] {
        wait_for(&k, running, "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
    }
    wait_for(&k, "hello", "{.status.phase}", 30, |p| p == "Succeeded")?;
    let ip = k.ok(&["get", "pod", "ticker", "-o", "jsonpath={.status.podIP}"])?;
    std::thread::sleep(Duration::from_millis(500));

    // The node dies with its guests, then comes back on the same data directory.
    server.kill()?;
    let server = Server::start(dir.path(), ports)?;
    let k = k.for_server(&server);

    // A running container ended with the node: that end shows, and the policy restarts it.
    let restarts = wait_for(&k, "ticker", "{.status.containerStatuses[0].restartCount}", 30, |n| n == "1")?;
    ensure!(restarts == "1");
    wait_for(&k, "ticker", "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
    let last = k.ok(&[
        "get",
        "pod",
        "ticker",
        "-o",
        "jsonpath={.status.containerStatuses[0].lastState.terminated.reason} {.status.podIP}",
    ])?;
    ensure!(last == format!("ContainerStatusUnknown {ip}"), "{last}");
    let previous = k.ok(&["logs", "ticker", "--previous"])?;
    ensure!(previous.starts_with("tick 0\ntick 1\n"), "{previous:?}");
    // With `Never` the same end is final: the pod failed.
    let once = wait_for(&k, "once", "{.status.phase}", 30, |p| p == "Failed")?;
    ensure!(once == "Failed");
    // A pod that had completed is left as it was, its log still there.
    let hello =
        k.ok(&["get", "pod", "hello", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].restartCount}"])?;
    ensure!(hello == "Succeeded 0", "{hello}");
    ensure!(k.ok(&["logs", "hello"])? == "hello from a wasm pod\n");
    Ok(())
}

/// A running `flotilla agent`; killed when dropped.
pub(crate) struct Agent(Child);

impl Agent {
    pub(crate) fn start(server: &Server, token: &str, data_dir: &Path, name: &str) -> Result<Agent> {
        // An address and a pod range of its own, as a machine of its own would have.
        let own = Ports::free();
        let mut command = Command::new(flotilla_bin());
        command
            .args(["agent", "--server", &server.url, "--token", token, "--data-dir"])
            .arg(data_dir)
            .args(["--node-name", name, "--node-ip", &own.node_ip, "--node-listen", &format!("{}:0", own.node_ip)])
            .args(["--pod-cidr", &own.pods, "--proxy-mode", "userspace"])
            .args(crate::harness::EVICTION_HARD);
        Agent::spawn(command)
    }

    /// Runs `command`, a `flotilla agent`.
    pub(crate) fn spawn(mut command: Command) -> Result<Agent> {
        let child = command
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start flotilla agent")?;
        Ok(Agent(child))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_agent_joins_with_the_token_and_its_logs_are_served_through_the_api() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Ports::free(), &["--no-node"])?;
    let token = std::fs::read_to_string(dir.path().join("node-token"))?.trim().to_string();
    let k = Kubectl::new("1.33", &server)?;
    ensure!(k.ok(&["get", "nodes", "-o", "name"])?.is_empty(), "--no-node runs no node");

    // A token for another cluster's CA is refused before anything is sent.
    let (_, secret) = token.split_once("::").context("a join token")?;
    let forged = format!("F10{}::{secret}", "0".repeat(64));
    let refused = Command::new(flotilla_bin())
        .args(["agent", "--server", &server.url, "--token", &forged, "--data-dir"])
        .arg(dir.path().join("forged"))
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success() && stderr.contains("does not match the join token"), "{stderr}");

    let agent_dir = tempfile::tempdir()?;
    import(agent_dir.path(), examples::P1_ECHO, "echo:v1")?;
    let _agent = Agent::start(&server, &token, agent_dir.path(), "edge-1")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while k.ok(&["get", "nodes", "-o", "name"])? != "node/edge-1\n" {
        ensure!(Instant::now() < deadline, "the agent's node never registered");
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(node_name(&k)? == "edge-1");
    apply(&k, &pod("remote", "edge-1", "echo:v1", "Never", "    args: [\"from\", \"afar\"]\n", ""))?;
    wait_for(&k, "remote", "{.status.phase}", 30, |p| p == "Succeeded")?;
    let logs = k.ok(&["logs", "remote"])?;
    ensure!(logs.contains("arg[1]=from\narg[2]=afar\n"), "{logs}");
    Ok(())
}
