//! A server killed with SIGKILL and started again on the same data directory: every object is
//! still there with the same identity, the old kubeconfig still works (same CA, same token), and
//! a watch from a resource version seen before the kill resumes with every change since.

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::harness::{Ports, Server};
use crate::kubectl::{Kubectl, manifests};

#[test]
fn objects_credentials_and_watches_survive_sigkill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = Ports::free();
    let server = Server::start(dir.path(), ports.clone())?;
    let kubeconfig = std::fs::read_to_string(&server.kubeconfig)?;
    let k = Kubectl::new("1.33", &server)?;
    k.ok(&["apply", "-f", manifests().to_str().unwrap()])?;
    k.ok(&["create", "configmap", "before-list", "--from-literal=a=1"])?;
    let collection = format!("/api/v1/namespaces/{}/configmaps", k.namespace);
    let list: Value = serde_json::from_str(&k.ok(&["get", "--raw", &collection])?)?;
    let listed_at = list["metadata"]["resourceVersion"].as_str().context("the list's resourceVersion")?.to_string();
    k.ok(&["create", "configmap", "after-list", "--from-literal=a=2"])?;
    let identity = |k: &Kubectl| {
        k.ok(&[
            "get",
            "deploy/web",
            "svc/web",
            "cm/before-list",
            "-o",
            "jsonpath={.items[*].metadata.uid} {.items[*].spec.clusterIP}",
        ])
    };
    let before = identity(&k)?;
    ensure!(before.split_whitespace().count() == 4, "three uids and a cluster IP: {before}");

    server.kill()?;
    let server = Server::start(dir.path(), ports.clone())?;

    ensure!(std::fs::read_to_string(&server.kubeconfig)? == kubeconfig, "the kubeconfig changed across the restart");
    let after = identity(&k)?;
    ensure!(after == before, "objects changed across the restart: {before} → {after}");
    k.ok(&["create", "configmap", "after-restart", "--from-literal=a=3"])?;

    let watch = format!("{collection}?watch=1&resourceVersion={listed_at}&timeoutSeconds=2");
    let events: Vec<(String, String)> = k
        .ok(&["get", "--raw", &watch])?
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line)?;
            Ok((
                event["type"].as_str().unwrap_or_default().into(),
                event["object"]["metadata"]["name"].as_str().unwrap_or_default().into(),
            ))
        })
        .collect::<Result<_>>()?;
    let expected = [("ADDED", "after-list"), ("ADDED", "after-restart")].map(|(t, n)| (t.to_string(), n.to_string()));
    ensure!(events == expected, "a watch from {listed_at} saw {events:?}");
    Ok(())
}
