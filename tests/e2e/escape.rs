//! A hostile guest tries to leave its volumes (`wasm-examples/escape`): it plants links in its
//! `emptyDir` that climb out, point at `/`, chain through each other or are swapped in for a
//! directory while the node looks, and hard-links what it may only read; other mounts of the
//! pod then name those links by `subPath`. A canary file on the host, which every escape would
//! reach, must stay unread and unchanged, and each refusal must say why in the pod's status.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::pods::{apply, import, node_name, wait_for};

const CANARY: &str = "the host's secret";

/// Enough `..` to climb from any pod volume to `/`.
const UP: &str = "../../../../../../../../../../../../../../../..";

fn escape_pod(name: &str, node: &str, init_env: &str, containers: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  restartPolicy: Never
  volumes:
  - name: scratch
    emptyDir: {{}}
  - name: config
    configMap:
      name: cfg
  initContainers:
  - name: plant
    image: escape:v1
    imagePullPolicy: IfNotPresent
    env: [{{name: MODE, value: plant}}, {{name: DIR, value: /scratch}}, {init_env}]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: config, mountPath: /config}}]
  containers:
{containers}"
    )
}

fn canary_intact(canary: &Path) -> Result<()> {
    let content = std::fs::read_to_string(canary.join("secret.txt"))?;
    ensure!(content == CANARY, "the canary was changed: {content:?}");
    let entries: Vec<_> = std::fs::read_dir(canary)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    ensure!(entries.len() == 1, "something was created beside the canary: {entries:?}");
    Ok(())
}

/// Why `pod`'s container `container` could not start; an error if it started instead (it
/// escaped: the canary says how far).
fn refused(k: &Kubectl, pod: &str, container: &str, canary: &Path) -> Result<String> {
    let path = format!("{{.status.containerStatuses[?(@.name==\"{container}\")].state}}");
    let state = wait_for(k, pod, &path, 60, |s| s.contains("CreateContainerConfigError") || s.contains("erminated"))?;
    canary_intact(canary)?;
    ensure!(state.contains("CreateContainerConfigError"), "{pod}: {container} started with its mount: {state}");
    Ok(state)
}

#[test]
fn a_hostile_guest_cannot_leave_its_volumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let canary = dir.path().join("canary");
    std::fs::create_dir(&canary)?;
    std::fs::write(canary.join("secret.txt"), CANARY)?;
    // The canary as a guest's link climbing from its volume names it.
    let canary_rel = canary.strip_prefix("/")?.display().to_string();

    let server = Server::start(dir.path(), Ports::free())?;
    import(dir.path(), examples::P1_ESCAPE, "escape:v1")?;
    import(dir.path(), examples::P2_ESCAPE, "escape-p2:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    k.ok(&["create", "configmap", "cfg", "--from-literal=key=read only"])?;

    // Links climbing out and chained, then named by subPath from another mount: the container
    // never starts, and its status says why. (A link to `/` the runtime does not let a guest
    // make, see below; the node's unit tests plant one from the host.)
    let links = format!("{{name: LINKS, value: 'up={UP},root=/,chain=hop,hop=up,inside=real'}}");
    for (pod, sub) in [
        ("relative", format!("up/{canary_rel}")),
        ("chained", format!("chain/{canary_rel}")),
        ("expr", "$(WHERE)".to_string()),
    ] {
        let (field, env) = if pod == "expr" {
            ("subPathExpr", format!(", {{name: WHERE, value: 'up/{canary_rel}'}}"))
        } else {
            ("subPath", String::new())
        };
        let containers = format!(
            "  - name: probe
    image: escape:v1
    imagePullPolicy: IfNotPresent
    env: [{{name: MODE, value: probe}}, {{name: PATHS, value: /host/secret.txt}}{env}]
    volumeMounts: [{{name: scratch, mountPath: /host, {field}: '{sub}'}}]
"
        );
        let manifest = escape_pod(pod, &node, &links, &containers);
        apply(&k, &manifest)?;
        let why = refused(&k, pod, "probe", &canary)?;
        ensure!(why.contains("leads outside the volume"), "{pod}: {why}");
        canary_intact(&canary)?;
    }

    // A subPath that names a file, where wasm mounts directories only.
    let containers = "  - name: probe
    image: escape:v1
    imagePullPolicy: IfNotPresent
    env: [{name: MODE, value: probe}]
    volumeMounts: [{name: scratch, mountPath: /host, subPath: file}]
";
    apply(&k, &escape_pod("file", &node, "{name: LINKS, value: ''}", containers))?;
    let why = refused(&k, "file", "probe", &canary)?;
    ensure!(why.contains("wasm containers mount directories only"), "{why}");

    // The guest follows its own links, and hard-links a file it may only read into a volume
    // it may write: the runtime refuses both, and a link that stays inside is followed.
    let paths = format!("/scratch/up/{canary_rel}/secret.txt,/scratch/chain/{canary_rel}/secret.txt,/scratch/hard");
    let containers = format!(
        "  - name: probe
    image: escape:v1
    imagePullPolicy: IfNotPresent
    env: [{{name: MODE, value: probe}}, {{name: PATHS, value: '{paths}'}}]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: config, mountPath: /config}}, {{name: scratch, mountPath: /inside, subPath: inside}}]
"
    );
    let init = format!("{links}, {{name: HARD_LINKS, value: '/config/key=/scratch/hard'}}");
    apply(&k, &escape_pod("own-links", &node, &init, &containers))?;
    wait_for(&k, "own-links", "{.status.phase}", 60, |p| p == "Succeeded")?;
    let planted = k.ok(&["logs", "own-links", "-c", "plant"])?;
    ensure!(planted.contains("hardlink /config/key -> /scratch/hard: error"), "{planted}");
    ensure!(planted.contains("symlink /scratch/root: error"), "{planted}");
    ensure!(planted.contains("symlink /scratch/up: ok"), "{planted}");
    let probed = k.ok(&["logs", "own-links", "-c", "probe"])?;
    for escape in [format!("/scratch/up/{canary_rel}"), format!("/scratch/chain/{canary_rel}")] {
        ensure!(probed.contains(&format!("read {escape}/secret.txt: error")), "{probed}");
        ensure!(probed.contains(&format!("write {escape}/secret.txt: error")), "{probed}");
    }
    ensure!(!probed.contains(CANARY), "{probed}");
    canary_intact(&canary)?;

    // A guest swaps a directory and a link out of the volume in and out of place, while the
    // node resolves that name for its neighbour's subPath at every restart.
    let containers = format!(
        "  - name: swap
    image: escape:v1
    imagePullPolicy: IfNotPresent
    env: [{{name: MODE, value: swap}}, {{name: DIR, value: /scratch}}, {{name: LINK_TARGET, value: '{UP}/{canary_rel}'}}]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: probe
    image: escape:v1
    imagePullPolicy: IfNotPresent
    env: [{{name: MODE, value: probe}}, {{name: PATHS, value: /host/secret.txt}}]
    volumeMounts: [{{name: scratch, mountPath: /host, subPath: dir}}]
"
    );
    let manifest = escape_pod("race", &node, "{name: LINKS, value: ''}", &containers)
        .replace("restartPolicy: Never", "restartPolicy: Always");
    apply(&k, &manifest)?;
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline {
        canary_intact(&canary)?;
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for(&k, "race", "{.status.containerStatuses[?(@.name==\"swap\")].state}", 10, |s| s.contains("running"))?;
    canary_intact(&canary)?;

    // A guest may call the API (it authenticates) through the `kubernetes` Service, as a pod's
    // in-cluster configuration does, but not the store's peer port nor the node API, whatever
    // address it tries them by. (Its localhost is its own.)
    let peer = server.store_url.trim_start_matches("https://").to_string();
    let peer_port = peer.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let node_port = k.ok(&["get", "node", &node, "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"])?;
    let api =
        format!("{}:443", k.ok(&["get", "svc", "kubernetes", "-n", "default", "-o", "jsonpath={.spec.clusterIP}"])?);
    let targets = format!("{peer},0.0.0.0:{peer_port},127.0.0.1:{node_port},{api}");
    let containers = format!(
        "  - name: probe
    image: escape-p2:v1
    imagePullPolicy: IfNotPresent
    env: [{{name: MODE, value: connect}}, {{name: TARGETS, value: '{targets}'}}]
"
    );
    apply(&k, &escape_pod("egress", &node, "{name: LINKS, value: ''}", &containers))?;
    wait_for(&k, "egress", "{.status.phase}", 60, |p| p == "Succeeded")?;
    let connected = k.ok(&["logs", "egress", "-c", "probe"])?;
    for refused in [peer.clone(), format!("0.0.0.0:{peer_port}"), format!("127.0.0.1:{node_port}")] {
        ensure!(connected.contains(&format!("connect {refused}: error")), "{connected}");
    }
    ensure!(connected.contains(&format!("connect {api}: ok")), "{connected}");

    // Admission refuses what upstream's validation refuses, naming the field.
    for (sub, why) in [("../../etc", "must not contain '..'"), ("/etc", "must be a relative path")] {
        let containers = format!(
            "  - name: probe
    image: escape:v1
    volumeMounts: [{{name: scratch, mountPath: /host, subPath: '{sub}'}}]
"
        );
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), escape_pod("refused", &node, "{name: LINKS, value: ''}", &containers))?;
        let err = k.fails(&["apply", "-f", file.path().to_str().unwrap()])?;
        ensure!(err.contains("spec.containers[0].volumeMounts[0].subPath") && err.contains(why), "{err}");
    }
    // Its termination message file swapped for a link to the canary: the node does not follow
    // it, and says so in the message.
    let leak = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: last-words\nspec:\n  nodeName: {node}\n  restartPolicy: Never\n  containers:\n  - name: leak\n    image: escape:v1\n    imagePullPolicy: IfNotPresent\n    env: [{{name: MODE, value: plant}}, {{name: DIR, value: /dev}}, {{name: LINKS, value: 'termination-log={UP}/{canary_rel}/secret.txt'}}]\n"
    );
    apply(&k, &leak)?;
    let message = "{.status.containerStatuses[0].state.terminated.message}";
    let message = wait_for(&k, "last-words", message, 60, |m| !m.is_empty())?;
    ensure!(message.starts_with("Error on reading termination log") && !message.contains(CANARY), "{message}");
    let planted = k.ok(&["logs", "last-words"])?;
    ensure!(planted.contains("symlink /dev/termination-log: ok"), "{planted}");
    canary_intact(&canary)?;
    Ok(())
}
