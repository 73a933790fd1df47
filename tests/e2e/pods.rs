//! Wasm pods on the embedded node, driven by the real kubectl: the examples in `wasm-examples/`
//! reach the states upstream would show (Completed, Running, CrashLoopBackOff, OOMKilled,
//! DeadlineExceeded), `kubectl logs` (with `-f`, `--tail`, `--previous`) reads them through the
//! API server and the node, and a broken module or a missing image gives a clear status while
//! the other pods keep running. Until the scheduler lands, pods name their node.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server, flotilla_bin};
use crate::kubectl::{Kubectl, lines_of, versions};

/// Imports a module into the server's node under `name`.
pub(crate) fn import(data_dir: &Path, wasm: &str, name: &str) -> Result<()> {
    let out = std::process::Command::new(flotilla_bin())
        .args(["image", "import", wasm, "--name", name, "--data-dir"])
        .arg(data_dir)
        .output()?;
    ensure!(out.status.success(), "flotilla image import {name}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A pod manifest for `image` on `node`, with `extra` lines of container fields and
/// `spec` lines of pod fields (indented as they go).
pub(crate) fn pod(name: &str, node: &str, image: &str, restart: &str, container: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  restartPolicy: {restart}\n{spec}  containers:\n  - name: {name}\n    image: {image}\n    imagePullPolicy: IfNotPresent\n{container}"
    )
}

pub(crate) fn apply(k: &Kubectl, manifest: &str) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest)?;
    k.ok(&["apply", "-f", file.path().to_str().unwrap()])?;
    Ok(())
}

/// Runs `kubectl args` until its output passes `check`; returns that output.
pub(crate) fn eventually(k: &Kubectl, args: &[&str], secs: u64, check: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        match k.ok(args) {
            Ok(out) if check(&out) => return Ok(out),
            Ok(out) => last = out,
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("kubectl {args:?} still says {last:?} after {secs} s")
}

/// Waits (up to `secs`) until `jsonpath` of `pod` reads as `check` wants; returns what it read.
pub(crate) fn wait_for(
    k: &Kubectl,
    pod: &str,
    jsonpath: &str,
    secs: u64,
    check: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = k.ok(&["get", "pod", pod, "-o", &format!("jsonpath={jsonpath}")])?;
        if check(&last) {
            return Ok(last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the pod went through, to tell why it never got there.
    let described = k.ok(&["describe", "pod", pod]).unwrap_or_default();
    bail!("pod {pod}: {jsonpath} is {last:?} after {secs} s\n{described}")
}

/// The STATUS column of `kubectl get pod`.
fn status_column(k: &Kubectl, pod: &str) -> Result<String> {
    let out = k.ok(&["get", "pod", pod, "--no-headers"])?;
    Ok(out.split_whitespace().nth(2).unwrap_or_default().to_string())
}

/// `GET path` from `ip:port` over plain HTTP/1.1; the whole response.
fn http_get(ip: &str, port: u16, path: &str) -> Result<String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect((ip, port)).with_context(|| format!("connect to {ip}:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    Ok(response)
}

pub(crate) fn node_name(k: &Kubectl) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let name = k.ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])?;
        if !name.is_empty() {
            return Ok(name);
        }
        ensure!(Instant::now() < deadline, "no node registered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn wasm_pods_reach_upstreams_states_and_logs_are_served() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    for (wasm, name) in [
        (examples::P1_HELLO, "hello:v1"),
        (examples::P2_HELLO, "hello-p2:v1"),
        (examples::P1_TICKER, "ticker:v1"),
        (examples::P1_TRAP, "trap:v1"),
        (examples::P2_HOG, "hog:v1"),
        (examples::P1_SPIN, "spin:v1"),
        (examples::P1_ECHO, "echo:v1"),
        (examples::P1_HTTP, "http:v1"),
        (examples::P2_HTTP, "http-p2:v1"),
        (examples::P2_HANDLER, "handler:v1"),
        (examples::P1_SHARE, "share:v1"),
    ] {
        import(dir.path(), wasm, name)?;
    }
    // A module that is not valid wasm past its header is refused when it is imported.
    let mut garbage = std::fs::read(examples::P1_HELLO)?;
    garbage.truncate(garbage.len() / 3);
    let garbage_path = dir.path().join("garbage.wasm");
    std::fs::write(&garbage_path, garbage)?;
    let refused = import(dir.path(), garbage_path.to_str().unwrap(), "garbage:v1").unwrap_err().to_string();
    ensure!(refused.contains("invalid WebAssembly"), "{refused}");
    // A valid module that needs a function the node does not provide is stored, and fails
    // when it is linked: `(module (import "env" "nope" (func)))`.
    let unlinkable = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x02\x0c\x01\x03env\x04nope\0\0";
    let broken_path = dir.path().join("broken.wasm");
    std::fs::write(&broken_path, unlinkable)?;
    import(dir.path(), broken_path.to_str().unwrap(), "broken:v1")?;

    for version in versions() {
        let k = Kubectl::new(&version, &server)?;
        check_pods(&k).with_context(|| format!("with kubectl {version}"))?;
    }
    Ok(())
}

fn check_pods(k: &Kubectl) -> Result<()> {
    let node = node_name(k)?;
    let nodes = k.ok(&["get", "nodes", "-o", "wide"])?;
    ensure!(nodes.contains(&node) && nodes.contains("wasmtime://"), "{nodes}");
    let ready = k.ok(&["get", "node", &node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])?;
    ensure!(ready == "True", "node Ready is {ready:?}");

    apply(k, &pod("hello", &node, "hello:v1", "Never", "", ""))?;
    apply(k, &pod("hello-p2", &node, "hello-p2:v1", "OnFailure", "", ""))?;
    apply(
        k,
        &pod("ticker", &node, "ticker:v1", "Always", "    env:\n    - name: TICK_MS\n      value: \"100\"\n", ""),
    )?;
    apply(k, &pod("trap", &node, "trap:v1", "Always", "", ""))?;
    let limits = "    resources:\n      limits:\n        memory: 64Mi\n";
    apply(k, &pod("hog", &node, "hog:v1", "Never", limits, ""))?;
    apply(k, &pod("spin", &node, "spin:v1", "Always", "", "  activeDeadlineSeconds: 2\n"))?;
    let echo = "    args: [\"--flag\", \"$(GREETING) world\"]\n    env:\n    - name: GREETING\n      value: hi\n    - name: POD_IP\n      valueFrom:\n        fieldRef:\n          fieldPath: status.podIP\n";
    apply(k, &pod("echo", &node, "echo:v1", "Never", echo, ""))?;
    apply(k, &pod("broken", &node, "broken:v1", "Always", "", ""))?;
    // HTTP servers on the pod's address: a p1 module on the socket the node pre-opens for its
    // port, a p2 component binding it itself; both ready once their readiness probe passes.
    let probe = "    ports:\n    - containerPort: 8080\n    readinessProbe:\n      httpGet:\n        path: /healthz\n        port: 8080\n      periodSeconds: 1\n";
    let pod_ip =
        "    env:\n    - name: POD_IP\n      valueFrom:\n        fieldRef:\n          fieldPath: status.podIP\n";
    apply(k, &pod("web-p1", &node, "http:v1", "Always", probe, ""))?;
    apply(k, &pod("web-p2", &node, "http-p2:v1", "Always", &format!("{probe}{pod_ip}"), ""))?;
    // A wasi:http handler, served by the node with an instance per request.
    apply(k, &pod("function", &node, "handler:v1", "Always", probe, ""))?;
    // A runtime this node does not offer.
    // A RuntimeClass with no such runtime behind it here: the node refuses the pod.
    apply(k, "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: gvisor\nhandler: runsc\n")?;
    apply(k, &pod("gvisor", &node, "hello:v1", "Always", "", "  runtimeClassName: gvisor\n"))?;
    // A runtime class that does not exist: admission refuses the pod, as upstream's.
    let missing = k.fails(&[
        "run",
        "missing-class",
        "--image=hello:v1",
        "--overrides",
        r#"{"spec":{"runtimeClassName":"nosuch"}}"#,
    ])?;
    ensure!(missing.contains("forbidden: pod rejected: RuntimeClass \"nosuch\" not found"), "{missing}");
    // A ConfigMap's keys as files, which follow the ConfigMap when it changes.
    k.ok(&["create", "configmap", "palette", "--from-literal=colour=blue"])?;
    let watch_file = "    env: [{name: FILE, value: /config/colour}, {name: TICK_MS, value: \"200\"}]\n    volumeMounts: [{name: config, mountPath: /config}]\n";
    let config_volume = "  volumes:\n  - name: config\n    configMap:\n      name: palette\n";
    apply(k, &pod("palette", &node, "ticker:v1", "Always", watch_file, config_volume))?;
    // The same through a projected volume, whose ConfigMap nothing else in the pod names.
    k.ok(&["create", "configmap", "tint", "--from-literal=colour=red"])?;
    let projected =
        "  volumes:\n  - name: config\n    projected:\n      sources:\n      - configMap:\n          name: tint\n";
    apply(k, &pod("tint", &node, "ticker:v1", "Always", watch_file, projected))?;
    // A label as a file, which follows the pod's labels.
    let downward = "  volumes:\n  - name: config\n    downwardAPI:\n      items:\n      - path: colour\n        fieldRef: {fieldPath: \"metadata.labels['colour']\"}\n";
    apply(k, &pod("labelled", &node, "ticker:v1", "Always", watch_file, downward))?;
    let dead =
        "    livenessProbe:\n      tcpSocket:\n        port: 9\n      periodSeconds: 1\n      failureThreshold: 2\n";
    apply(k, &pod("unhealthy", &node, "ticker:v1", "Always", dead, ""))?;
    // A probe that names the node's own API: the node does not call it for the pod.
    let api_port = k.ok(&["get", "node", &node, "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"])?;
    let prying = format!(
        "    readinessProbe:\n      httpGet: {{host: localhost, port: {api_port}, path: /pods}}\n      periodSeconds: 1\n"
    );
    apply(k, &pod("prying", &node, "ticker:v1", "Always", &prying, ""))?;
    apply(k, &pod("absent", &node, "absent:v1", "Always", "", "").replace("IfNotPresent", "Never"))?;

    // The manifests users copy: the Pod, bound to the node until the scheduler lands; the
    // Deployment and the Job are accepted (their controllers come with the scheduler).
    let manifests = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/wasm");
    let hello = std::fs::read_to_string(manifests.join("hello.yaml"))?
        .replace("name: hello\n  labels", "name: manifest-hello\n  labels")
        .replace("\nspec:\n", &format!("\nspec:\n  nodeName: {node}\n"));
    apply(k, &hello)?;
    for file in ["ticker.yaml", "echo-job.yaml"] {
        k.ok(&["apply", "-f", manifests.join(file).to_str().unwrap()])?;
    }
    wait_for(k, "manifest-hello", "{.status.phase}", 30, |p| p == "Succeeded")?;
    // Two containers exchange a file through an emptyDir; an init container runs first.
    let shared = std::fs::read_to_string(manifests.join("shared-volume.yaml"))?
        .replace("\nspec:\n", &format!("\nspec:\n  nodeName: {node}\n"));
    apply(k, &shared)?;
    let init = "  volumes:\n  - name: work\n    emptyDir: {}\n  initContainers:\n  - name: prepare\n    image: share:v1\n    imagePullPolicy: IfNotPresent\n    env: [{name: MODE, value: write}, {name: MESSAGE, value: prepared}, {name: DIR, value: /work}]\n    volumeMounts: [{name: work, mountPath: /work}]\n";
    let reads = "    env: [{name: MODE, value: read}, {name: DIR, value: /work}]\n    volumeMounts: [{name: work, mountPath: /work}]\n";
    apply(k, &pod("initialized", &node, "share:v1", "Never", reads, init))?;
    // A sidecar runs beside the pod's container, and is stopped once that is done.
    let sidecar = "  initContainers:\n  - name: ticker\n    image: ticker:v1\n    imagePullPolicy: IfNotPresent\n    restartPolicy: Always\n";
    apply(k, &pod("sidecar", &node, "hello:v1", "Never", "", sidecar))?;
    // A guest's termination message, written where its path says.
    let last_words = "    env: [{name: MODE, value: write}, {name: MESSAGE, value: all done}, {name: DIR, value: /dev}]\n    terminationMessagePath: /dev/message.txt\n";
    apply(k, &pod("last-words", &node, "share:v1", "Never", last_words, ""))?;

    wait_for(k, "shared-volume", "{.status.phase}", 60, |p| p == "Succeeded")?;
    let read = k.ok(&["logs", "shared-volume", "-c", "reader"])?;
    ensure!(read == "read: hello from the writer\n", "{read:?}");
    let all = k.ok(&["logs", "shared-volume", "--all-containers"])?;
    ensure!(all.contains("wrote /shared/message.txt") && all.contains("read: hello"), "{all}");
    wait_for(k, "initialized", "{.status.phase}", 60, |p| p == "Succeeded")?;
    ensure!(k.ok(&["logs", "initialized"])? == "read: prepared\n");
    ensure!(k.ok(&["logs", "initialized", "-c", "prepare"])? == "wrote /work/message.txt\n");
    wait_for(k, "sidecar", "{.status.phase}", 60, |p| p == "Succeeded")?;
    let ended = "{.status.initContainerStatuses[0].state.terminated.finishedAt}";
    wait_for(k, "sidecar", ended, 5, |at| !at.is_empty())?;
    ensure!(k.ok(&["logs", "sidecar", "-c", "ticker"])?.starts_with("tick 0\n"));
    let message = "{.status.containerStatuses[0].state.terminated.message}";
    let message = wait_for(k, "last-words", message, 60, |m| !m.is_empty())?;
    ensure!(message == "all done", "{message:?}");

    // Run to completion, as a core module and as a component.
    for name in ["hello", "hello-p2"] {
        wait_for(k, name, "{.status.phase}", 30, |p| p == "Succeeded")?;
        ensure!(status_column(k, name)? == "Completed", "{name}: {}", status_column(k, name)?);
        let logs = k.ok(&["logs", name])?;
        ensure!(logs == "hello from a wasm pod\n", "{name} logs: {logs:?}");
    }
    let ip = wait_for(k, "hello", "{.status.podIP}", 5, |ip| ip.starts_with("127."))?;
    ensure!(!ip.is_empty(), "no pod IP");

    // A long-running pod: Running and ready, its log followed as it grows.
    wait_for(k, "ticker", "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
    ensure!(status_column(k, "ticker")? == "Running");
    let mut follow = k.command(&["logs", "-f", "ticker"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let lines = lines_of(follow.stdout.take().context("kubectl's stdout")?);
    let mut ticks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks.len() < 15 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
            ticks.push(line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    ensure!(ticks.len() >= 15 && ticks[0] == "tick 0", "followed {ticks:?}");
    let numbers: Vec<u64> = ticks.iter().filter_map(|t| t.strip_prefix("tick ")?.parse().ok()).collect();
    ensure!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "ticks out of order: {ticks:?}");
    let tail = k.ok(&["logs", "ticker", "--tail=2", "--timestamps"])?;
    ensure!(tail.lines().count() == 2 && tail.lines().all(|l| l.contains("Z tick ")), "{tail:?}");

    // A guest that traps is restarted with a growing back-off.
    let restarts = wait_for(k, "trap", "{.status.containerStatuses[0].restartCount}", 40, |n| {
        n.parse::<i32>().is_ok_and(|n| n >= 2)
    })?;
    ensure!(restarts.parse::<i32>()? >= 2);
    wait_for(k, "trap", "{.status.containerStatuses[0].state.waiting.reason}", 20, |r| r == "CrashLoopBackOff")?;
    ensure!(status_column(k, "trap")? == "CrashLoopBackOff");
    let last = k.ok(&["get", "pod", "trap", "-o", "jsonpath={.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].lastState.terminated.message}"])?;
    ensure!(last.starts_with("Error ") && last.contains("unreachable"), "{last}");
    let previous = k.ok(&["logs", "trap", "--previous"])?;
    ensure!(previous == "about to trap\n", "{previous:?}");
    let described = k.ok(&["describe", "pod", "trap"])?;
    ensure!(described.contains("BackOff") && described.contains("Back-off restarting failed container"), "{described}");

    // A guest past its memory limit is OOMKilled; one past its deadline fails with the reason.
    wait_for(k, "hog", "{.status.phase}", 30, |p| p == "Failed")?;
    let hog = k.ok(&["get", "pod", "hog", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}"])?;
    ensure!(hog == "OOMKilled 137", "{hog}");
    ensure!(status_column(k, "hog")? == "OOMKilled");
    let spin = wait_for(k, "spin", "{.status.phase} {.status.reason}", 30, |r| r.ends_with("DeadlineExceeded"))?;
    ensure!(spin == "Failed DeadlineExceeded", "{spin}");

    // Arguments and the environment, `$(VAR)` references and the downward API.
    wait_for(k, "echo", "{.status.phase}", 30, |p| p == "Succeeded")?;
    let echo = k.ok(&["logs", "echo"])?;
    for line in ["arg[0]=echo", "arg[1]=--flag", "arg[2]=hi world", "env GREETING=hi", "env HOSTNAME=echo"] {
        ensure!(echo.lines().any(|l| l == line), "{line:?} missing from {echo}");
    }
    let pod_ip = k.ok(&["get", "pod", "echo", "-o", "jsonpath={.status.podIP}"])?;
    ensure!(echo.contains(&format!("env POD_IP={pod_ip}")), "{echo}");

    // The HTTP servers answer on their pod's address once ready.
    for name in ["web-p1", "web-p2"] {
        wait_for(k, name, "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
        let ip = k.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"])?;
        let response = http_get(&ip, 8080, "/hello")?;
        ensure!(response.ends_with(&format!("hello from {name} at /hello\n")), "{name}: {response}");
        let logs = k.ok(&["logs", name])?;
        ensure!(logs.contains("GET /healthz") && logs.contains("GET /hello"), "{name} logs: {logs}");
    }
    wait_for(k, "function", "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
    let ip = k.ok(&["get", "pod", "function", "-o", "jsonpath={.status.podIP}"])?;
    let response = http_get(&ip, 8080, "/hi")?;
    ensure!(response.contains("hello from function at /hi (request 1 of this instance)"), "{response}");
    let logs = k.ok(&["logs", "function"])?;
    ensure!(logs.contains("handling /healthz") && logs.contains("handling /hi"), "function logs: {logs}");
    let rejected = wait_for(k, "gvisor", "{.status.phase} {.status.reason}", 30, |r| r.starts_with("Failed"))?;
    ensure!(rejected == "Failed UnsupportedRuntimeClass", "{rejected}");
    let restarts = wait_for(k, "unhealthy", "{.status.containerStatuses[0].restartCount}", 30, |n| {
        n.parse::<i32>().is_ok_and(|n| n >= 1)
    })?;
    ensure!(restarts.parse::<i32>()? >= 1);
    let events =
        ["get", "events", "--field-selector", "involvedObject.name=prying", "-o", "jsonpath={.items[*].message}"];
    let refused = eventually(k, &events, 30, |m| m.contains("Readiness probe failed"))?;
    ensure!(refused.contains("connect: permission denied (one of the node's own endpoints)"), "{refused}");
    ensure!(k.ok(&["get", "pod", "prying", "-o", "jsonpath={.status.containerStatuses[0].ready}"])? == "false");
    let described = k.ok(&["describe", "pod", "unhealthy"])?;
    ensure!(
        described.contains("Liveness probe failed: dial tcp")
            && described.contains("failed liveness probe, will be restarted"),
        "{described}"
    );

    // The projected file changes with its ConfigMap.
    wait_for(k, "palette", "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
    ensure!(k.ok(&["logs", "palette", "--tail=1"])?.ends_with(": blue\n"));
    k.ok(&["patch", "configmap", "palette", "-p", r#"{"data":{"colour":"green"}}"#])?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !k.ok(&["logs", "palette", "--tail=1"])?.ends_with(": green\n") {
        ensure!(Instant::now() < deadline, "the projected file never followed its ConfigMap");
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for(k, "tint", "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
    let tint = k.ok(&["logs", "tint", "--tail=1"])?;
    ensure!(tint.ends_with(": red\n"), "a projected ConfigMap source: {tint:?}");
    wait_for(k, "labelled", "{.status.containerStatuses[0].ready}", 30, |r| r == "true")?;
    k.ok(&["label", "pod", "labelled", "colour=violet"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !k.ok(&["logs", "labelled", "--tail=1"])?.ends_with(": violet\n") {
        ensure!(Instant::now() < deadline, "the downwardAPI file never followed the pod's label");
        std::thread::sleep(Duration::from_millis(500));
    }

    // What cannot run says why, and the rest keeps running.
    let broken =
        wait_for(k, "broken", "{.status.containerStatuses[0].lastState.terminated.message}", 30, |m| !m.is_empty())?;
    ensure!(broken.contains("needs imports this node does not provide"), "{broken}");
    let absent = wait_for(k, "absent", "{.status.containerStatuses[0].state.waiting.reason}", 30, |r| !r.is_empty())?;
    ensure!(absent == "ErrImageNeverPull", "{absent}");
    ensure!(status_column(k, "absent")? == "ErrImageNeverPull");
    ensure!(status_column(k, "ticker")? == "Running");

    // Deleting a running pod stops it and removes it within its grace period.
    let started = Instant::now();
    let out = k.ok(&["delete", "pod", "ticker"])?;
    ensure!(out.contains("pod \"ticker\" deleted"), "{out}");
    ensure!(started.elapsed() < Duration::from_secs(30), "deletion took {:?}", started.elapsed());
    let gone = k.command(&["get", "pod", "ticker"]).output()?;
    let mut err = String::new();
    gone.stderr.as_slice().read_to_string(&mut err)?;
    ensure!(err.contains("NotFound"), "{err}");
    let out = k.ok(&["delete", "pod", "--all"])?;
    ensure!(out.contains("pod \"trap\" deleted"), "{out}");
    Ok(())
}
