//! Who may do what, tried as an attacker would: with a node's credentials taken from its data
//! directory (a stolen edge machine), with the join token alone, and against the store's peer
//! port and the node API without the right certificate. Each refusal must be upstream's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::nodes::Agent;
use crate::pods::{apply, import, wait_for};

/// A kubeconfig for `server` with a client certificate and key (files) or a token.
fn kubeconfig(dir: &Path, name: &str, server: &Server, ca: &Path, user: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.kubeconfig"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority: {}\n    server: {}\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: c\ncurrent-context: c\nusers:\n- name: u\n  user:\n{user}",
        ca.display(),
        server.url
    );
    std::fs::write(&path, config)?;
    Ok(path)
}

fn forbidden(out: &str, message: &str) -> Result<()> {
    ensure!(out.contains("Forbidden") || out.contains("forbidden"), "not refused as forbidden: {out}");
    ensure!(out.contains(message), "expected {message:?} in: {out}");
    Ok(())
}

/// Asks `server` for node `name`'s credentials with a new key, as `credentials` (curl's
/// `--cert`/`--key`, or a bearer token header) and node password `password`; the answer.
fn ask_credentials(server: &Server, ca: &Path, credentials: &[&str], name: &str, password: &str) -> Result<String> {
    let (request, _) = flotilla_auth::pki::certificate_request(&format!("system:node:{name}"))?;
    let body = serde_json::json!({"nodeName": name, "nodePassword": password, "certificateRequest": request});
    let body = body.to_string();
    let url = format!("{}/flotilla/v1/node-credentials", server.url);
    let mut args = vec!["--cacert", ca.to_str().unwrap(), "-H", "Content-Type: application/json", "-d", &body];
    args.extend(credentials);
    args.push(&url);
    Ok(curl(&args)?.1)
}

fn curl(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("curl").args(["-s", "--max-time", "10"]).args(args).output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[test]
fn a_stolen_node_a_join_token_and_a_local_process_get_only_what_they_may() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Ports::free(), &["--no-node"])?;
    let token = std::fs::read_to_string(dir.path().join("node-token"))?.trim().to_string();
    let admin = Kubectl::new("1.33", &server)?;
    let ns = admin.namespace.clone();
    let (edge1, edge2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    import(edge1.path(), examples::P1_TICKER, "ticker:v1")?;
    import(edge2.path(), examples::P1_TICKER, "ticker:v1")?;
    let _agents = [
        Agent::start(&server, &token, edge1.path(), "edge-1")?,
        Agent::start(&server, &token, edge2.path(), "edge-2")?,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.ok(&["get", "nodes", "-o", "name"])? != "node/edge-1\nnode/edge-2\n" {
        ensure!(Instant::now() < deadline, "the agents never registered");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each node runs a pod that uses a Secret and a ConfigMap of its own.
    for (node, n) in [("edge-1", 1), ("edge-2", 2)] {
        admin.ok(&["create", "secret", "generic", &format!("secret-{n}"), "--from-literal=password=s3cr3t"])?;
        admin.ok(&["create", "configmap", &format!("config-{n}"), "--from-literal=colour=blue"])?;
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{n}\nspec:\n  nodeName: {node}\n  volumes:\n  - name: s\n    secret:\n      secretName: secret-{n}\n  containers:\n  - name: c\n    image: ticker:v1\n    imagePullPolicy: IfNotPresent\n    envFrom: [{{configMapRef: {{name: config-{n}}}}}]\n    volumeMounts: [{{name: s, mountPath: /s}}]\n"
        );
        apply(&admin, &manifest)?;
        wait_for(&admin, &format!("pod-{n}"), "{.status.phase}", 30, |p| p == "Running")?;
    }
    admin.ok(&["create", "secret", "generic", "unused", "--from-literal=k=v"])?;

    // edge-1 is stolen: its credentials, as its data directory keeps them.
    let pki = edge1.path().join("pki");
    let user = format!(
        "    client-certificate: {}\n    client-key: {}\n",
        pki.join("node.crt").display(),
        pki.join("node.key").display()
    );
    let stolen = admin.as_user(&kubeconfig(dir.path(), "edge-1", &server, &pki.join("ca.crt"), &user)?)?;
    // What its own pods use, it reads.
    stolen.ok(&["get", "secret", "secret-1"])?;
    stolen.ok(&["get", "configmap", "config-1"])?;
    stolen.ok(&["get", "node", "edge-1"])?;
    stolen.ok(&["get", "pods", "-A", "--field-selector", "spec.nodeName=edge-1"])?;
    // Nothing else.
    let user_is = "User \"system:node:edge-1\"";
    forbidden(
        &stolen.fails(&["get", "secret", "secret-2"])?,
        &format!(
            "secrets \"secret-2\" is forbidden: {user_is} cannot get resource \"secrets\" in API group \"\" in the namespace \"{ns}\": no relationship found between node 'edge-1' and this object"
        ),
    )?;
    forbidden(&stolen.fails(&["get", "secret", "unused"])?, "no relationship found")?;
    forbidden(&stolen.fails(&["get", "configmap", "config-2"])?, "no relationship found")?;
    forbidden(&stolen.fails(&["get", "secrets", "-A"])?, &format!("{user_is} cannot list resource \"secrets\""))?;
    forbidden(&stolen.fails(&["get", "pods", "-A"])?, "can only list/watch pods with spec.nodeName field selector")?;
    // The Nodes it reads, as every node's kube-proxy and pod network agent do upstream: it
    // routes to their pods. It changes none but its own (NodeRestriction).
    stolen.ok(&["get", "node", "edge-2"])?;
    let patch_as_node = |path: &str, patch: &str| -> Result<String> {
        let (ca, cert, key) = (pki.join("ca.crt"), pki.join("node.crt"), pki.join("node.key"));
        let answer = curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
            "-d",
            patch,
            &format!("{}{path}", server.url),
        ])?
        .1;
        let status: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        Ok(format!("{} {}", status["reason"], status["message"].as_str().unwrap_or(&answer)))
    };
    let answer = patch_as_node("/api/v1/nodes/edge-2", r#"{"metadata":{"labels":{"owned":"yes"}}}"#)?;
    forbidden(&answer, "nodes \"edge-2\" is forbidden: node \"edge-1\" is not allowed to modify node \"edge-2\"")?;
    // Nor may it move its own pod range over another's: every node routes that range to it.
    let answer =
        patch_as_node("/api/v1/nodes/edge-1", r#"{"spec":{"podCIDR":"10.0.0.0/8","podCIDRs":["10.0.0.0/8"]}}"#)?;
    ensure!(
        answer.contains("\"Invalid\"")
            && answer.contains("node updates may not change podCIDR except from \"\" to valid"),
        "{answer}"
    );
    forbidden(
        &stolen.fails(&["label", "node", "edge-1", "node-role.kubernetes.io/control-plane="])?,
        "is not allowed to modify labels: node-role.kubernetes.io/control-plane",
    )?;
    forbidden(
        &stolen.fails(&["delete", "pod", "pod-2", "--wait=false"])?,
        "node \"edge-1\" can only delete pods with spec.nodeName set to itself",
    )?;
    // It reads the HPAs (its activator holds requests for the Services they scale from
    // zero), but not the request counts other nodes report, nor the node API's held requests.
    stolen.ok(&["get", "hpa", "-A"])?;
    let metric = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/services/web/requests_in_flight");
    forbidden(
        &stolen.fails(&["get", "--raw", &metric])?,
        &format!(
            "{user_is} cannot get resource \"services/requests_in_flight\" in API group \"custom.metrics.k8s.io\" in the namespace \"{ns}\""
        ),
    )?;
    // Nor streams into a pod, not even its own: exec is no verb a node has.
    forbidden(&stolen.fails(&["exec", "pod-1", "--", "date"])?, "resource \"pods/exec\"")?;
    let failed = r#"{"status":{"phase":"Failed"}}"#;
    let answer = patch_as_node(&format!("/api/v1/namespaces/{ns}/pods/pod-2/status"), failed)?;
    forbidden(&answer, "node \"edge-1\" can only update pod status for pods with spec.nodeName set to itself")?;
    forbidden(
        &stolen.fails(&["create", "namespace", "evil"])?,
        &format!("{user_is} cannot create resource \"namespaces\""),
    )?;
    forbidden(&stolen.fails(&["delete", "namespace", &ns, "--wait=false"])?, "cannot delete resource \"namespaces\"")?;
    forbidden(
        &stolen.fails(&["run", "evil", "--image=ticker:v1", "--overrides={\"spec\":{\"nodeName\":\"edge-1\"}}"])?,
        "can only create mirror pods",
    )?;
    // The stolen node cannot take edge-2's name either: a certificate for it needs edge-2's
    // node password.
    let (_, secret) = token.split_once("::").context("a join token")?;
    let ca = dir.path().join("pki/ca.crt");
    let bearer = format!("Authorization: Bearer {secret}");
    let answer = ask_credentials(&server, &ca, &["-H", &bearer], "edge-2", &"x".repeat(40))?;
    forbidden(&answer, "the node name is registered to another machine")?;
    ensure!(!answer.contains("BEGIN CERTIFICATE"), "{answer}");

    // The join token alone registers a node, and does nothing else.
    let join = admin.as_user(&kubeconfig(dir.path(), "join", &server, &ca, &format!("    token: {secret}\n"))?)?;
    forbidden(
        &join.fails(&["get", "secrets"])?,
        "User \"system:bootstrap:flotilla\" cannot list resource \"secrets\"",
    )?;
    forbidden(&join.fails(&["get", "nodes"])?, "cannot list resource \"nodes\"")?;
    forbidden(&join.fails(&["create", "namespace", "evil"])?, "cannot create resource \"namespaces\"")?;

    // The store's peer port answers no one but its members: not without a certificate, not
    // with the admin's (another CA's), and plain HTTP is told it is not welcome.
    let peer = server.store_url.clone();
    let (ok, answer) = curl(&["-k", "-X", "POST", &format!("{peer}/store/v1/range")])?;
    ensure!(!ok && answer.is_empty(), "the peer port answered a client without a certificate: {answer}");
    let admin_cert = dir.path().join("pki/admin.crt");
    let admin_key = dir.path().join("pki/admin.key");
    let (ok, answer) = curl(&[
        "-k",
        "--cert",
        admin_cert.to_str().unwrap(),
        "--key",
        admin_key.to_str().unwrap(),
        "-X",
        "POST",
        &format!("{peer}/store/v1/range"),
    ])?;
    ensure!(!ok && answer.is_empty(), "the peer port answered the admin's certificate: {answer}");
    let (_, answer) = curl(&["-X", "POST", &format!("{}/store/v1/range", peer.replace("https://", "http://"))])?;
    ensure!(answer.contains("Client sent an HTTP request to an HTTPS server"), "{answer}");

    // The node API reads logs to the API server only: not to a stranger, not to a node.
    let port = admin.ok(&["get", "node", "edge-2", "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"])?;
    let ip = admin.ok(&[
        "get",
        "node",
        "edge-2",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ])?;
    let logs = format!("https://{ip}:{port}/containerLogs/{ns}/pod-2/c");
    let (_, answer) = curl(&["-k", &logs])?;
    ensure!(answer.contains("Unauthorized"), "{answer}");
    let (_, answer) = curl(&[
        "-k",
        "--cert",
        pki.join("node.crt").to_str().unwrap(),
        "--key",
        pki.join("node.key").to_str().unwrap(),
        &logs,
    ])?;
    ensure!(answer.contains("Forbidden") && answer.contains("system:node:edge-1"), "{answer}");
    // The admin's way still works.
    admin.ok(&["logs", "pod-2"])?;

    // Revoking the stolen node: its registration goes, and its certificate is good for nothing,
    // not even for registering again.
    admin.ok(&["delete", "secret", "-n", "kube-system", "edge-1.node-password.flotilla"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match stolen.fails(&["get", "secret", "secret-1"]) {
            Ok(err) => {
                forbidden(&err, "node 'edge-1' is not registered")?;
                break;
            }
            Err(_) => ensure!(Instant::now() < deadline, "the revoked node still reads its Secret"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    forbidden(&stolen.fails(&["get", "node", "edge-1"])?, "is not registered")?;
    let password = std::fs::read_to_string(pki.join("node-password"))?;
    let (cert, key) = (pki.join("node.crt"), pki.join("node.key"));
    let as_edge_1 = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let answer = ask_credentials(&server, &ca, &as_edge_1, "edge-1", password.trim())?;
    forbidden(&answer, "a node cannot register itself again")?;
    Ok(())
}

#[test]
fn the_join_token_cannot_take_the_servers_own_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    let k = Kubectl::new("1.33", &server)?;
    let node = crate::pods::node_name(&k)?;
    let token = std::fs::read_to_string(dir.path().join("node-token"))?.trim().to_string();
    let (_, secret) = token.split_once("::").context("a join token")?;
    let bearer = format!("Authorization: Bearer {secret}");
    let answer = ask_credentials(&server, &dir.path().join("pki/ca.crt"), &["-H", &bearer], &node, &"y".repeat(40))?;
    forbidden(&answer, "the node name is registered to another machine")?;
    ensure!(!answer.contains("BEGIN CERTIFICATE"), "{answer}");
    Ok(())
}
