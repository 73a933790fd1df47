//! Container images as Linux containers (runtime class `oci`), driven by the real kubectl: a
//! `busybox` image built from Debian's static busybox, imported as a `docker save` archive and
//! pushed to a real registry, runs as upstream's clients expect (`kubectl run --image=busybox
//! -- sh -c ...` ends Failed with its exit code and its output in `kubectl logs`), in the pod's
//! own hostname, under its limits (an OOM kill shows as upstream's, a CPU limit is a CFS
//! quota), a read-only root holds, a non-root user runs, a wasm pod reaches a container pod,
//! a pod of wasm and Linux containers shares one localhost, one that shares its processes
//! sees them all, an agent killed and started again
//! adopts the containers it left (no restart, no output lost, the end of one that ended
//! meanwhile known), and a deleted pod leaves nothing on the node: no mount, no cgroup, no
//! bundle.
//!
//! Needs root and `busybox-static` (`scripts/setup busybox-static`); runs when
//! `FLOTILLA_E2E_OCI=1`, which `scripts/test` sets.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use flotilla_examples::{self as examples, busybox};

use crate::harness::{Ports, Server, flotilla_bin};
use crate::kubectl::Kubectl;
use crate::pods::{apply, eventually, import, node_name, pod, wait_for};
use crate::registry::Registry;

/// `GET /` from `ip:port` over HTTP/1.0; the whole response.
fn http_get(ip: &str, port: u16) -> Result<String> {
    http_get_path(ip, port, "/")
}

/// The logs of `container` in `pod` once `check` holds of them (30 s at most; a container not
/// started yet has none).
fn wait_for_logs(k: &Kubectl, pod: &str, container: &str, check: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let logs = k.ok(&["logs", pod, "-c", container]);
        if let Ok(logs) = &logs
            && check(logs)
        {
            return Ok(logs.clone());
        }
        ensure!(std::time::Instant::now() < deadline, "{pod}/{container}: {logs:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `GET path` from `ip:port` over HTTP/1.0; the whole response.
fn http_get_path(ip: &str, port: u16, path: &str) -> Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect((ip, port)).with_context(|| format!("connect to {ip}:{port}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    ensure!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
    Ok(response)
}

/// What of pods' containers is on the node: overlay, volume and namespace mounts under the
/// data directory, bundles, sandboxes, and the cgroups of the pod `uid`.
fn leftovers(data_dir: &Path, uid: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let data = data_dir.canonicalize()?.to_string_lossy().into_owned();
    for line in std::fs::read_to_string("/proc/self/mountinfo")?.lines() {
        if let Some(point) = line.split(' ').nth(4)
            && point.starts_with(&data)
        {
            found.push(format!("mount {point}"));
        }
    }
    for dir in ["bundles", "sandboxes"] {
        for entry in std::fs::read_dir(data_dir.join("node/oci").join(dir))?.flatten() {
            let held: Vec<_> =
                std::fs::read_dir(entry.path()).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
            found.push(format!("{dir} {} holding {held:?}", entry.path().display()));
        }
    }
    for controller in ["memory", "cpu", "pids", "cpuacct", "freezer", "devices", "blkio", "cpuset", ""] {
        for qos in ["", "burstable/", "besteffort/"] {
            let path = format!("/sys/fs/cgroup/{controller}/flotilla/{qos}pod{uid}");
            if Path::new(&path).exists() {
                found.push(format!("cgroup {path}"));
            }
        }
    }
    Ok(found)
}

#[test]
fn busybox_runs_as_a_linux_container_beside_wasm_pods() -> Result<()> {
    if std::env::var_os("FLOTILLA_E2E_OCI").is_none() {
        eprintln!("skipped: set FLOTILLA_E2E_OCI=1 (as root) to run container images (scripts/test does)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let layer = busybox::layer()?;
    let archive = busybox::saved_image(dir.path(), &layer, &flotilla_wasm::digest(&layer))?;
    let data_dir = dir.path().join("data");
    let imported = std::process::Command::new(flotilla_bin())
        .args(["image", "import"])
        .arg(&archive)
        .arg("--data-dir")
        .arg(&data_dir)
        .output()?;
    ensure!(imported.status.success(), "import: {}", String::from_utf8_lossy(&imported.stderr));
    ensure!(String::from_utf8_lossy(&imported.stdout).contains("docker.io/library/busybox:latest"));

    // The same image in a registry, with its layer gzipped, as registries serve them.
    let registry = Registry::start()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer)?;
    let gzipped = gz.finish()?;
    let layer_digest = registry.push_blob("tools/busybox", &gzipped)?;
    let config = busybox::config(&flotilla_wasm::digest(&layer));
    let config_digest = registry.push_blob("tools/busybox", &config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": gzipped.len()}],
    });
    registry.push_manifest("tools/busybox", "v1", &manifest)?;
    // The same layer under a manifest that understates its size: a registry may not make the
    // node store more than a manifest says.
    let mut short = manifest.clone();
    short["layers"][0]["size"] = serde_json::json!(gzipped.len() - 1);
    registry.push_manifest("tools/busybox", "short", &short)?;
    let address = format!("127.0.0.1:{}", registry.port);

    for (wasm, name) in
        [(examples::P2_ESCAPE, "escape:v1"), (examples::P2_HANDLER, "handler:v1"), (examples::P1_HTTP, "http:v1")]
    {
        import(&data_dir, wasm, name)?;
    }

    let ports = Ports::free();
    // A pod's processes are bounded low enough for a fork bomb to meet its bound here.
    let flags = ["--insecure-registry", &address, "--pod-max-pids", "64"];
    let server = Server::start_with(&data_dir, ports.clone(), &flags)?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    let labels = k.ok(&["get", "node", &node, "-o", "jsonpath={.metadata.labels}"])?;
    ensure!(labels.contains("runtime.flotilla.dev/oci"), "{labels}");

    // What the upstream clients do: no runtime class, the image decides.
    k.ok(&[
        "run",
        "hi",
        "--image=busybox",
        "--image-pull-policy=IfNotPresent",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hi; hostname; exit 3",
    ])?;
    wait_for(&k, "hi", "{.status.phase}", 60, |p| p == "Failed")?;
    let code =
        k.ok(&["get", "pod", "hi", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"])?;
    let message =
        k.ok(&["get", "pod", "hi", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.message}"])?;
    ensure!(code == "3", "exit code {code}: {message}");
    let id = k.ok(&["get", "pod", "hi", "-o", "jsonpath={.status.containerStatuses[0].containerID}"])?;
    ensure!(id.starts_with("oci://"), "{id}");
    let logs = k.ok(&["logs", "hi"])?;
    ensure!(logs == "hi\nhi\n", "the output, and the pod's name as its hostname: {logs:?}");

    // A pod name longer than a hostname may be: cut to 63 characters, as the kubelet does.
    let long = "a-pod-whose-name-is-longer-than-any-hostname-may-be-by-a-few-more-letters";
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {long}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [hostname]\n"
    );
    apply(&k, &manifest)?;
    wait_for(&k, long, "{.status.phase}", 60, |p| p == "Succeeded")?;
    ensure!(k.ok(&["logs", long])?.trim() == &long[..63], "the hostname of a long-named pod");

    // On the pod network: a busybox httpd answers on its pod IP from the host and through a
    // Service, and another container pod reaches it by address and by the Service's name.
    let httpd = "    command: [\"sh\", \"-c\", \"mkdir -p /www && echo hello over the pod network > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n    ports:\n    - containerPort: 8080\n    readinessProbe:\n      tcpSocket: {port: 8080}\n      periodSeconds: 1\n";
    apply(&k, &pod("web", &node, "busybox", "Always", httpd, ""))?;
    wait_for(&k, "web", "{.status.containerStatuses[0].ready}", 60, |r| r == "true")?;
    let web_ip = k.ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"])?;
    let page = http_get(&web_ip, 8080)?;
    ensure!(page.ends_with("hello over the pod network\n"), "{page}");
    k.ok(&["label", "pod", "web", "app=web"])?;
    k.ok(&["expose", "pod", "web", "--port=80", "--target-port=8080"])?;
    let cluster_ip = k.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let page = loop {
        match http_get(&cluster_ip, 80) {
            Ok(page) => break page,
            Err(err) if std::time::Instant::now() > deadline => return Err(err.context("the Service")),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    };
    ensure!(page.ends_with("hello over the pod network\n"), "{page}");
    let client = format!(
        "    command: [\"sh\", \"-c\", \"printf 'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 5 {web_ip} 8080 | tail -1; printf 'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 5 web 80 | tail -1\"]\n"
    );
    apply(&k, &pod("client", &node, "busybox", "Never", &client, ""))?;
    wait_for(&k, "client", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let logs = k.ok(&["logs", "client"])?;
    ensure!(logs == "hello over the pod network\nhello over the pod network\n", "{logs:?}");

    // A wasm pod reaches the container pod by its address, from the host's sockets.
    let reach = format!(
        "    env:\n    - {{name: MODE, value: connect}}\n    - {{name: TARGETS, value: \"{web_ip}:8080\"}}\n    - {{name: GET, value: /}}\n"
    );
    apply(&k, &pod("wasm-client", &node, "escape:v1", "Never", &reach, ""))?;
    wait_for(&k, "wasm-client", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let logs = k.ok(&["logs", "wasm-client"])?;
    ensure!(logs.contains(&format!("connect {web_ip}:8080: ok hello over the pod network")), "{logs:?}");

    // A pod of wasm and Linux containers shares one localhost: a wasm `wasi:http` handler calls
    // a busybox sidecar that listens on 127.0.0.1 only, and a busybox client calls a wasm
    // server. The sidecar is out of the host's reach, as on loopback it should be.
    let mixed = [
        "- name: sidecar\n    image: busybox\n    command: [\"sh\", \"-c\", \"mkdir -p /www && echo from the sidecar > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www\"]\n",
        "- name: handler\n    image: handler:v1\n    ports:\n    - containerPort: 8090\n",
        "- name: server\n    image: http:v1\n    ports:\n    - containerPort: 8081\n",
        "- name: client\n    image: busybox\n    command: [\"sh\", \"-c\", \"until wget -q -O - http://localhost:8081/from-busybox; do sleep 0.2; done; exec sleep 600\"]\n",
    ]
    .map(|container| format!("  {container}    imagePullPolicy: IfNotPresent\n"))
    .concat();
    let mixed = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mixed\nspec:\n  nodeName: {node}\n  containers:\n{mixed}"
    );
    apply(&k, &mixed)?;
    wait_for(&k, "mixed", "{.status.phase}", 60, |p| p == "Running")?;
    let mixed_ip = k.ok(&["get", "pod", "mixed", "-o", "jsonpath={.status.podIP}"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let called = http_get_path(&mixed_ip, 8090, "/?call=localhost:8080/index.html");
        match called {
            Ok(page) if page.ends_with("called localhost:8080/index.html: from the sidecar\n") => break,
            _ if std::time::Instant::now() > deadline => bail!("the handler calling its sidecar: {called:?}"),
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
    let logs = wait_for_logs(&k, "mixed", "client", |l| l.contains("hello from"))?;
    ensure!(logs.contains("at /from-busybox"), "{logs:?}");
    ensure!(http_get(&mixed_ip, 8080).is_err(), "the sidecar listens on the pod's loopback only");

    // A container that gives up its own 127.0.0.1 (NET_ADMIN, in its namespace), so that the
    // address is routed through its gateway as the rest of 127.0.0.0/8 is, does not reach what
    // listens on the node's 127.0.0.1: here the registry (CVE-2020-8558's pattern).
    let registry_port = registry.port;
    let reroute = format!(
        "    command: [\"sh\", \"-c\", \"printf 'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 3 {web_ip} 8080 | tail -1; ip addr del 127.0.0.1/8 dev lo && ip route get 127.0.0.1 && (printf 'GET /v2/ HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 3 127.0.0.1 {registry_port} | grep -q 200 && echo reached || echo refused)\"]\n    securityContext:\n      capabilities:\n        add: [\"NET_ADMIN\"]\n"
    );
    apply(&k, &pod("reroute", &node, "busybox", "Never", &reroute, ""))?;
    wait_for(&k, "reroute", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let logs = k.ok(&["logs", "reroute"])?;
    // (The same `nc` reaches a pod: what it cannot reach, it is kept from. Its stderr, read
    // apart, may come between the lines.)
    let lines: Vec<&str> = logs.lines().collect();
    ensure!(
        lines.contains(&"hello over the pod network")
            && logs.contains("dev eth0")
            && lines.contains(&"refused")
            && !lines.contains(&"reached"),
        "{logs:?}"
    );

    // Kubernetes' own liveness example: an exec probe that starts failing restarts the
    // container, and says why in the command's words.
    let liveness = "    command: [\"sh\", \"-c\", \"touch /tmp/healthy; sleep 3; rm -f /tmp/healthy; sleep 600\"]\n    livenessProbe:\n      exec:\n        command: [cat, /tmp/healthy]\n      periodSeconds: 1\n      failureThreshold: 2\n";
    apply(&k, &pod("liveness", &node, "busybox", "Always", liveness, "  terminationGracePeriodSeconds: 1\n"))?;
    wait_for(&k, "liveness", "{.status.containerStatuses[0].restartCount}", 60, |n| {
        n.parse::<i32>().is_ok_and(|n| n >= 1)
    })?;
    let described = k.ok(&["describe", "pod", "liveness"])?;
    ensure!(
        described.contains("Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory")
            && described.contains("failed liveness probe, will be restarted"),
        "{described}"
    );

    // Lifecycle hooks, in the container. Its postStart (slow) is done before it is running
    // and probed: a liveness probe before it would fail, and restart it without the line that
    // says so. When its probe then fails, its preStop runs before SIGTERM, and what the hook
    // left of the grace period is the container's (a trap that takes 3 s is not killed).
    let hooked = r#"    command: ["sh", "-c", "trap 'sleep 3; echo TERM after $(cat /tmp/pre-stop); exit 0' TERM; until [ -f /tmp/post-start ]; do sleep 0.1; done; echo saw $(cat /tmp/post-start); touch /tmp/stop-now; while true; do sleep 0.1; done"]
    lifecycle:
      postStart:
        exec:
          command: ["sh", "-c", "sleep 2; echo post-start > /tmp/post-start"]
      preStop:
        exec:
          command: ["sh", "-c", "echo pre-stop > /tmp/pre-stop"]
    livenessProbe:
      exec:
        command: ["sh", "-c", "test -f /tmp/post-start -a ! -f /tmp/stop-now"]
      periodSeconds: 1
      failureThreshold: 1
"#;
    apply(&k, &pod("hooked", &node, "busybox", "Always", hooked, ""))?;
    wait_for(&k, "hooked", "{.status.containerStatuses[0].restartCount}", 60, |n| {
        n.parse::<i32>().is_ok_and(|n| n >= 1)
    })?;
    let previous = k.ok(&["logs", "hooked", "--previous"])?;
    ensure!(previous == "saw post-start\nTERM after pre-stop\n", "{previous:?}");
    // A failing postStart stops the container (its preStop runs, and fails too): both say so.
    let failing = r#"    command: ["sleep", "600"]
    lifecycle:
      postStart:
        exec:
          command: ["sh", "-c", "echo no; exit 7"]
      preStop:
        exec:
          command: ["false"]
"#;
    apply(&k, &pod("unhooked", &node, "busybox", "Never", failing, "  terminationGracePeriodSeconds: 5\n"))?;
    wait_for(&k, "unhooked", "{.status.phase}", 60, |p| p == "Failed")?;
    let events = ["get", "events", "--field-selector", "involvedObject.name=unhooked", "-o"];
    let events = [&events[..], &["jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}"]].concat();
    let post_start = "FailedPostStartHook: Exec lifecycle hook ([sh -c echo no; exit 7]) for Container \"unhooked\"";
    eventually(&k, &events, 30, |events| {
        events.lines().any(|l| l.starts_with(post_start) && l.contains("exited with 7"))
            && events.lines().any(|l| l == "FailedPreStopHook: PreStopHook failed")
    })?;

    // A pod's containers start in order, each once the one before it is up, its postStart
    // done: the second reads what the first's (slow) hook wrote.
    let ordered = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: ordered
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: first
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sleep", "86400"]
    lifecycle:
      postStart:
        exec:
          command: ["sh", "-c", "sleep 2; echo first is up > /shared/up"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: second
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /shared/up 2>/dev/null || echo too soon; exec sleep 86400"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  volumes: [{{name: shared, emptyDir: {{}}}}]
"#
    );
    apply(&k, &ordered)?;
    let second = wait_for_logs(&k, "ordered", "second", |l| !l.is_empty())?;
    ensure!(second == "first is up\n", "the second container started before the first was up: {second:?}");
    check_sidecars(&k, &node)?;
    check_log_flood(&k, &node, &data_dir)?;
    check_termination_messages(&k, &node)?;
    check_sub_path_files(&k, &node)?;

    check_exec(&k, &server, &node)?;

    // Pulled from the registry, a layer at a time, each held to its manifest's size.
    let understated = format!("{address}/tools/busybox:short");
    apply(&k, &pod("short", &node, &understated, "Never", "", ""))?;
    let waiting =
        "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}";
    let state =
        wait_for(&k, "short", waiting, 60, |s| s.starts_with("ErrImagePull") || s.starts_with("ImagePullBackOff"))?;
    ensure!(state.contains("the blob is larger than"), "{state}");
    let pulled = format!("{address}/tools/busybox:v1");
    apply(
        &k,
        &pod("pulled", &node, &pulled, "Never", "    command: [\"sh\", \"-c\", \"cat /var/www/index.html\"]\n", ""),
    )?;
    wait_for(&k, "pulled", "{.status.phase}", 60, |p| p == "Succeeded")?;
    ensure!(k.ok(&["logs", "pulled"])? == "hello from busybox\n");

    // Limits: an OOM kill as upstream shows it, a CPU limit as a CFS quota.
    let hog = "    command: [\"sh\", \"-c\", \"x=$(head -c 200000000 /dev/zero | tr '\\\\0' a); echo survived\"]\n    resources:\n      limits:\n        memory: 32Mi\n";
    apply(&k, &pod("hog", &node, "busybox", "Never", hog, ""))?;
    wait_for(&k, "hog", "{.status.phase}", 60, |p| p == "Failed")?;
    let state = k.ok(&["get", "pod", "hog", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}"])?;
    ensure!(state == "OOMKilled 137", "{state}");
    // A container sees its own limit, in its own cgroup.
    let limit = "    command: [\"sh\", \"-c\", \"cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null\"]\n    resources:\n      limits:\n        memory: 48Mi\n";
    apply(&k, &pod("limit", &node, "busybox", "Never", limit, ""))?;
    wait_for(&k, "limit", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let seen = k.ok(&["logs", "limit"])?;
    ensure!(seen.trim() == (48u64 << 20).to_string(), "the limit the container sees: {seen:?}");
    let spin =
        "    command: [\"sh\", \"-c\", \"while true; do :; done\"]\n    resources:\n      limits:\n        cpu: 200m\n";
    apply(&k, &pod("spin", &node, "busybox", "Always", spin, ""))?;
    wait_for(&k, "spin", "{.status.containerStatuses[0].state.running.startedAt}", 60, |s| !s.is_empty())?;
    let uid = k.ok(&["get", "pod", "spin", "-o", "jsonpath={.metadata.uid}"])?;
    let quota = std::fs::read_dir(format!("/sys/fs/cgroup/cpu/flotilla/burstable/pod{uid}"))
        .ok()
        .and_then(|mut entries| entries.find_map(|e| e.ok().filter(|e| e.path().is_dir())))
        .map(|container| std::fs::read_to_string(container.path().join("cpu.cfs_quota_us")))
        .transpose()?
        .unwrap_or_default();
    ensure!(quota.trim() == "20000", "the container's CFS quota: {quota:?}");

    // A read-only root, a non-root user.
    let locked = "    command: [\"sh\", \"-c\", \"touch /x 2>/dev/null && echo writable || echo read-only; id -u\"]\n    securityContext:\n      readOnlyRootFilesystem: true\n      runAsUser: 65534\n";
    apply(&k, &pod("locked", &node, "busybox", "Never", locked, ""))?;
    wait_for(&k, "locked", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let logs = k.ok(&["logs", "locked"])?;
    ensure!(logs == "read-only\n65534\n", "{logs:?}");

    // A container starts with no signal blocked (its keeper blocks SIGCHLD for itself).
    apply(
        &k,
        &pod("mask", &node, "busybox", "Never", "    command: [\"grep\", \"SigBlk\", \"/proc/self/status\"]\n", ""),
    )?;
    wait_for(&k, "mask", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let mask = k.ok(&["logs", "mask"])?;
    ensure!(mask.trim() == "SigBlk:\t0000000000000000", "{mask:?}");

    // A command an exec probe runs, runs as the container's user (youki's exec alone would
    // run it as root), with no more capabilities than the container: here none.
    let probed = "    command: [\"sleep\", \"600\"]\n    securityContext:\n      runAsUser: 65534\n      capabilities: {drop: [ALL]}\n    readinessProbe:\n      exec:\n        command: [\"sh\", \"-c\", \"test $(id -u) = 65534\"]\n      periodSeconds: 1\n";
    apply(&k, &pod("probed", &node, "busybox", "Always", probed, "  terminationGracePeriodSeconds: 1\n"))?;
    wait_for(&k, "probed", "{.status.containerStatuses[0].ready}", 60, |r| r == "true")?;
    check_exec_confinement(&k, "probed")?;
    // A non-root command's terminal is its own: it opens it by its name.
    let line = shell_line(&k.command(&[
        "exec",
        "-it",
        "probed",
        "--",
        "sh",
        "-c",
        "echo by its name > $(tty) && stat -c owner=%u $(tty)",
    ]));
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    ensure!(shown.contains("by its name") && shown.contains("owner=65534"), "{out:?}");

    // A fork bomb stops at its pod's bound (`--pod-max-pids`, on the pod's cgroup), not at
    // the node's: the forks past it fail, and what it started before goes on.
    let bomb =
        "    command: [\"sh\", \"-c\", \"(for i in $(seq 200); do sleep 600 & done); echo bounded; exec sleep 600\"]\n";
    apply(&k, &pod("bomb", &node, "busybox", "Never", bomb, "  terminationGracePeriodSeconds: 1\n"))?;
    let logs = wait_for_logs(&k, "bomb", "bomb", |l| l.contains("bounded"))?;
    ensure!(logs.contains("can't fork"), "{logs:?}");
    let bomb_uid = k.ok(&["get", "pod", "bomb", "-o", "jsonpath={.metadata.uid}"])?;
    let pids =
        |file: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/pids/flotilla/besteffort/pod{bomb_uid}/{file}"));
    let (max, current) = (pids("pids.max")?, pids("pids.current")?);
    ensure!(max.trim() == "64" && current.trim().parse::<u32>()? <= 64, "pids.max {max:?}, pids.current {current:?}");
    k.ok(&["delete", "pod", "bomb", "--wait=false"])?;

    // Volumes, bound into the container: a ConfigMap's keys and a writable emptyDir.
    k.ok(&["create", "configmap", "cfg", "--from-literal=greeting=hello from a configmap"])?;
    let mounts = "    command: [\"sh\", \"-c\", \"cat /etc/cfg/greeting; echo; echo kept > /data/f && cat /data/f\"]\n    volumeMounts:\n    - {name: cfg, mountPath: /etc/cfg}\n    - {name: data, mountPath: /data}\n";
    let volumes = "  volumes:\n  - {name: cfg, configMap: {name: cfg}}\n  - {name: data, emptyDir: {}}\n";
    apply(&k, &pod("volumes", &node, "busybox", "Never", mounts, volumes))?;
    wait_for(&k, "volumes", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let logs = k.ok(&["logs", "volumes"])?;
    ensure!(logs == "hello from a configmap\nkept\n", "{logs:?}");

    // Under the `RuntimeDefault` seccomp profile, which a container gets unless it asks for
    // none, the kernel's reach is cut: no user namespace (a classic way to privileges, and
    // allowed here to anyone by the kernel), as the same command shows when unconfined.
    let userns = "    command: [\"sh\", \"-c\", \"grep Seccomp: /proc/self/status; unshare -U true && echo unshared || echo refused\"]\n";
    apply(&k, &pod("confined", &node, "busybox", "Never", userns, ""))?;
    let unconfined = "  securityContext:\n    seccompProfile: {type: Unconfined}\n";
    apply(&k, &pod("unconfined", &node, "busybox", "Never", userns, unconfined))?;
    for (name, mode, end) in [("confined", "2", "refused\n"), ("unconfined", "0", "unshared\n")] {
        wait_for(&k, name, "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
        let logs = k.ok(&["logs", name])?;
        // (Its stdout and stderr are read apart: their lines' order between them may differ.)
        ensure!(logs.contains(&format!("Seccomp:\t{mode}\n")) && logs.contains(end), "{name}: {logs:?}");
    }

    // What the node will not do waits with upstream's reason and says why: a capability that
    // would reach the host, root for a pod that runs as non-root.
    let admin = "    securityContext:\n      capabilities:\n        add: [\"SYS_ADMIN\"]\n";
    apply(&k, &pod("admin", &node, "busybox", "Never", admin, ""))?;
    let nonroot = "    securityContext:\n      runAsNonRoot: true\n";
    apply(&k, &pod("nonroot", &node, "busybox", "Never", nonroot, ""))?;
    let localhost = "    securityContext:\n      seccompProfile: {type: Localhost, localhostProfile: mine.json}\n";
    apply(&k, &pod("localhost", &node, "busybox", "Never", localhost, ""))?;
    for (name, why) in [
        ("admin", "CAP_SYS_ADMIN is not allowed on this node"),
        ("nonroot", "runAsNonRoot and image will run as root"),
        ("localhost", "seccomp profile type \"Localhost\" is not supported on this node"),
    ] {
        let waiting =
            "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}";
        let state = wait_for(&k, name, waiting, 60, |s| s.starts_with("CreateContainerConfigError"))?;
        ensure!(state.contains(why), "{name}: {state}");
    }

    // The runtime classes are objects, and naming one places a pod where its runtime is.
    let classes =
        k.ok(&["get", "runtimeclasses", "-o", "jsonpath={range .items[*]}{.metadata.name}={.handler} {end}"])?;
    ensure!(classes.trim() == "oci=oci wasm=wasm", "{classes}");
    apply(&k, &pod("classy", &node, "busybox", "Never", "    command: [\"true\"]\n", "  runtimeClassName: oci\n"))?;
    let selector = k.ok(&["get", "pod", "classy", "-o", "jsonpath={.spec.nodeSelector}"])?;
    ensure!(selector == r#"{"runtime.flotilla.dev/oci":"true"}"#, "{selector}");
    wait_for(&k, "classy", "{.status.phase}", 60, |p| p == "Succeeded")?;

    // The wrong runtime for an image says so.
    apply(&k, &pod("wrong", &node, "busybox", "Never", "", "  runtimeClassName: wasm\n"))?;
    let message =
        wait_for(&k, "wrong", "{.status.containerStatuses[0].state.terminated.message}", 60, |m| !m.is_empty())?;
    ensure!(message.contains("is a container image, which runtime class \"wasm\" does not run"), "{message}");

    // Containers that share their pod's processes (`shareProcessNamespace`) see each other's,
    // under the pod's pause process, which holds nothing a container could use: its root is
    // closed to them. A pod's containers see only their own otherwise.
    let processes = |share: bool| {
        let containers = [
            "- name: app\n    image: busybox\n    command: [\"sleep\", \"4242\"]\n",
            "- name: looker\n    image: busybox\n    command: [\"sh\", \"-c\", \"until ps | grep -q '[s]leep 4242'; do sleep 0.2; done; echo sees app; echo 1 is $(head -c 6 /proc/1/cmdline); ls /proc/1/root/ >/dev/null 2>&1 && echo root open || echo root closed; exec sleep 86400\"]\n",
        ]
        .map(|container| format!("  {container}    imagePullPolicy: IfNotPresent\n"))
        .concat();
        let name = if share { "shared" } else { "apart" };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  shareProcessNamespace: {share}\n  terminationGracePeriodSeconds: 1\n  containers:\n{containers}"
        )
    };
    apply(&k, &processes(true))?;
    apply(&k, &processes(false))?;
    wait_for_logs(&k, "shared", "looker", |l| l == "sees app\n1 is /pause\nroot closed\n")?;
    let both_running = "{.status.containerStatuses[*].state.running.startedAt}";
    wait_for(&k, "apart", both_running, 60, |s| s.split_whitespace().count() == 2)?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let apart = k.ok(&["logs", "apart", "-c", "looker"])?;
    ensure!(apart.is_empty(), "a container of a pod that shares nothing sees: {apart:?}");
    let shared_uid = k.ok(&["get", "pod", "shared", "-o", "jsonpath={.metadata.uid}"])?;
    let pause = std::fs::read_to_string(data_dir.join("node/oci/sandboxes").join(&shared_uid).join("pause"))?;
    let pause_ns = |pid: &str| std::fs::read_link(format!("/proc/{}/ns/pid", pid.trim())).ok();
    let shared_ns = pause_ns(&pause).context("the shared pod's pause process")?;

    // An agent killed and started again adopts the Linux containers it left running: the same
    // run (no restart), its output kept while no agent read it, its end learned when it comes.
    let ticker = "    command: [\"sh\", \"-c\", \"i=0; while [ $i -lt 120 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 7\"]\n";
    apply(&k, &pod("survivor", &node, "busybox", "Never", ticker, ""))?;
    // One that ends while no agent runs: its end is known all the same (a Job's pod that
    // succeeded meanwhile succeeded).
    apply(&k, &pod("brief", &node, "busybox", "Never", "    command: [\"sleep\", \"2\"]\n", ""))?;
    let run = "{.status.containerStatuses[0].containerID} {.status.containerStatuses[0].state.running.startedAt}";
    let before = wait_for(&k, "survivor", run, 60, |s| s.split_whitespace().count() == 2)?;
    wait_for(&k, "brief", run, 60, |s| s.split_whitespace().count() == 2)?;
    // One whose postStart hook still runs when the agent stops, so that no status shows it
    // running: adopted all the same (found by whose run it is, as the kubelet finds its
    // containers in the runtime), not started again, its hook not run again.
    let hooked = "    command: [\"sh\", \"-c\", \"echo born $(date +%s); exec sleep 86400\"]\n    lifecycle:\n      postStart:\n        exec:\n          command: [\"sleep\", \"600\"]\n";
    apply(&k, &pod("hooked-long", &node, "busybox", "Always", hooked, "  terminationGracePeriodSeconds: 1\n"))?;
    let started = ["get", "events", "--field-selector", "involvedObject.name=hooked-long,reason=Started", "-o", "name"];
    eventually(&k, &started, 60, |events| !events.trim().is_empty())?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let shown = "{.status.containerStatuses[0].state.running.startedAt}";
    ensure!(k.ok(&["get", "pod", "hooked-long", "-o", &format!("jsonpath={shown}")])?.is_empty(), "shown running");
    let stopped_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    server.kill()?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _server = Server::start_with(&data_dir, ports.clone(), &flags)?;
    let ended = "{.status.containerStatuses[0].containerID} {.status.containerStatuses[0].state.terminated.startedAt} \
                 {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.terminated.exitCode}";
    let after = wait_for(&k, "survivor", "{.status.phase}", 60, |p| p == "Failed" || p == "Succeeded")
        .and_then(|_| k.ok(&["get", "pod", "survivor", "-o", &format!("jsonpath={ended}")]))?;
    ensure!(after == format!("{before} 0 7"), "before the restart: {before}; after: {after}");
    let ticks: Vec<String> = k.ok(&["logs", "survivor"])?.lines().map(str::to_string).collect();
    let expected: Vec<String> = (0..120).map(|i| format!("tick {i}")).collect();
    ensure!(ticks == expected, "the output across the restart: {ticks:?}");
    let brief = "{.status.phase} {.status.containerStatuses[0].state.terminated.reason} \
                 {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].restartCount}";
    let brief = k.ok(&["get", "pod", "brief", "-o", &format!("jsonpath={brief}")])?;
    ensure!(brief == "Succeeded Completed 0 0", "a container that ended while no agent ran: {brief}");
    // The shared pod's containers still share its pause, and its looker has not restarted.
    let restarts = k.ok(&["get", "pod", "shared", "-o", "jsonpath={.status.containerStatuses[*].restartCount}"])?;
    ensure!(restarts == "0 0" && pause_ns(&pause).as_ref() == Some(&shared_ns), "across the restart: {restarts}");
    wait_for(&k, "hooked-long", shown, 60, |s| !s.is_empty())?;
    let restarts =
        k.ok(&["get", "pod", "hooked-long", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])?;
    let born = k.ok(&["logs", "hooked-long"])?;
    let born_at: Option<i64> = born.strip_prefix("born ").and_then(|at| at.trim().parse().ok());
    ensure!(
        restarts == "0" && born.lines().count() == 1 && born_at.is_some_and(|at| at <= stopped_at),
        "a container in its postStart hook when the agent stopped at {stopped_at}: {restarts} restarts, {born:?}"
    );

    // Deleting pods stops their containers (sh ignores SIGTERM as PID 1, so the grace period
    // ends in SIGKILL for the running one) and leaves nothing of them behind.
    // A pod force-deleted goes with its containers all the same.
    k.ok(&["delete", "pod", "spin", "--grace-period=0", "--force"])?;
    k.ok(&["delete", "pods", "--all", "--grace-period=1"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut left = leftovers(&data_dir, &uid)?;
        if pause_ns(&pause).as_ref() == Some(&shared_ns) {
            left.push(format!("the pause process {}", pause.trim()));
        }
        if left.is_empty() {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Nor its interface: no route to the pod's address is left.
    let routes = std::process::Command::new("ip").args(["route", "show", "table", "local"]).output()?;
    let routes = String::from_utf8_lossy(&routes.stdout);
    ensure!(!routes.lines().any(|r| r.starts_with(&format!("{web_ip} "))), "a route to {web_ip} is left: {routes}");
    Ok(())
}

/// Sidecars (init containers that restart always): what follows one starts once it has started
/// (its startup probe passed, 2 s in), and reaches it on localhost; once the pod's containers
/// are done, it is stopped and the pod succeeds. A pod deleted stops its own containers first,
/// and its sidecar only once they have ended, its preStop hook run at once.
fn check_sidecars(k: &Kubectl, node: &str) -> Result<()> {
    let manifest = |name: &str, policy: &str, setup: &str, app: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 10
  initContainers:
  - name: proxy
    image: busybox
    imagePullPolicy: IfNotPresent
    restartPolicy: Always
    command: ["sh", "-c", "trap 'echo proxy stopped; exit 0' TERM; sleep 2; mkdir -p /www; echo from the proxy > /www/index.html; httpd -f -p 8080 -h /www & wait"]
    lifecycle:
      preStop:
        exec:
          command: ["touch", "/shared/pre-stop"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    startupProbe:
      httpGet: {{path: /, port: 8080}}
      periodSeconds: 1
      failureThreshold: 30
{setup}  containers:
  - name: app
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "{app}"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  volumes: [{{name: shared, emptyDir: {{}}}}]
"#
        )
    };
    let setup = r#"  - name: setup
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "wget -qO- http://localhost:8080/ > /shared/page"]
    volumeMounts: [{name: shared, mountPath: /shared}]
"#;
    let app = "cat /shared/page; wget -qO- http://localhost:8080/";
    apply(k, &manifest("sidecars", "Never", setup, app))?;
    wait_for(k, "sidecars", "{.status.phase}", 60, |p| p == "Succeeded")?;
    let logs = k.ok(&["logs", "sidecars", "-c", "app"])?;
    ensure!(logs == "from the proxy\nfrom the proxy\n", "the app's view of its sidecar: {logs:?}");
    ensure!(k.ok(&["logs", "sidecars", "-c", "proxy"])? == "proxy stopped\n", "the sidecar was not told to stop");
    let proxy = "{.status.initContainerStatuses[0].state.terminated.exitCode} {.status.initContainerStatuses[*].ready}";
    let proxy = k.ok(&["get", "pod", "sidecars", "-o", &format!("jsonpath={proxy}")])?;
    ensure!(proxy == "0 false true", "the sidecar's and the init container's statuses: {proxy}");

    // Deleted, the app (which takes 2 s to stop) ends before its sidecar is told to; the
    // sidecar's preStop hook has run by then (the app's exit code says whether it saw it).
    let app = "trap 'sleep 2; test -f /shared/pre-stop && exit 0; exit 3' TERM; while true; do sleep 0.1; done";
    apply(k, &manifest("layered", "Always", "", app))?;
    eventually(k, &["get", "pod", "layered", "--no-headers"], 60, |row| {
        row.contains(" 2/2 ") && row.contains(" Running ")
    })?;
    let mut watch =
        k.command(&["get", "pod", "layered", "-w", "-o", "json"]).stdout(std::process::Stdio::piped()).spawn()?;
    let mut output = watch.stdout.take().context("the watch's output")?;
    // Read as it comes: a watch that fills its pipe would stop printing.
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let _ = std::io::Read::read_to_string(&mut output, &mut seen);
        seen
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    k.ok(&["delete", "pod", "layered", "--wait=true"])?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = reader.join().expect("the watch's reader");
    let state = |pod: &serde_json::Value, list: &str| pod["status"][list][0]["state"].clone();
    let mut last = None;
    // (The last object may be cut short by the kill.)
    for pod in serde_json::Deserializer::from_str(&seen).into_iter::<serde_json::Value>().map_while(Result::ok) {
        let (app, proxy) = (state(&pod, "containerStatuses"), state(&pod, "initContainerStatuses"));
        ensure!(
            !(app.get("running").is_some() && proxy.get("running").is_none()),
            "the sidecar stopped while the app ran: {app} {proxy}"
        );
        if app.get("terminated").is_some() && proxy.get("terminated").is_some() {
            last = Some((app["terminated"].clone(), proxy["terminated"]["finishedAt"].clone()));
        }
    }
    let (app, proxy) = last.context("no status showed both containers ended")?;
    let ended = app["finishedAt"].as_str().unwrap_or_default();
    ensure!(proxy.as_str().is_some_and(|at| at >= ended), "the sidecar ended at {proxy}, before the app: {app}");
    ensure!(app["exitCode"] == 0, "the app did not see the sidecar's preStop hook run: {app}");
    Ok(())
}

/// A container that prints as fast as it can (`yes`, 300000 lines: about 14 MB of log, enough
/// to rotate it, little enough not to hold up the machine's disk for the tests beside it) is held to its
/// log's pace: its log is rotated, nothing is lost, and the node answers meanwhile.
fn check_log_flood(k: &Kubectl, node: &str, data_dir: &Path) -> Result<()> {
    let flood = "    command: [\"sh\", \"-c\", \"yes hello | head -n 300000; exec sleep 3600\"]\n";
    apply(k, &pod("chatter", node, "busybox", "Always", flood, ""))?;
    let logs = data_dir.join("node/logs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let files = loop {
        let dir = std::fs::read_dir(&logs)?.flatten().find(|e| e.file_name().to_string_lossy().contains("_chatter_"));
        let sizes: Vec<u64> = dir
            .map(|d| std::fs::read_dir(d.path().join("chatter")).into_iter().flatten().flatten())
            .into_iter()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .collect();
        // 300000 lines, as CRI entries of 46 bytes each.
        if sizes.iter().sum::<u64>() >= 300_000 * 46 {
            break sizes;
        }
        ensure!(std::time::Instant::now() < deadline, "the flooding container's log holds {sizes:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    ensure!(files.len() >= 2 && files.len() <= 5, "kept {files:?}");
    ensure!(k.ok(&["logs", "chatter", "--tail=1"])? == "hello\n", "the flooding container's last line");
    let ready = k.ok(&["get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])?;
    ensure!(ready == "True", "the node after a flood of output: Ready is {ready:?}");
    k.ok(&["delete", "pod", "chatter", "--grace-period=1"])?;
    Ok(())
}

/// What a container leaves at its `terminationMessagePath` (writable by any user) is its
/// terminated state's message; with `FallbackToLogsOnError`, a failed one that left nothing
/// there has the end of its log.
fn check_termination_messages(k: &Kubectl, node: &str) -> Result<()> {
    let written = "    command: [\"sh\", \"-c\", \"printf 'gone fishing' > /dev/termination-log; exit 3\"]\n    securityContext: {runAsUser: 65534}\n";
    apply(k, &pod("last-words", node, "busybox", "Never", written, ""))?;
    let fallback = "    command: [\"sh\", \"-c\", \"echo one; echo two; exit 4\"]\n    terminationMessagePolicy: FallbackToLogsOnError\n";
    apply(k, &pod("fallback", node, "busybox", "Never", fallback, ""))?;
    let ended = "{.status.containerStatuses[0].state.terminated.exitCode}:{.status.containerStatuses[0].state.terminated.message}";
    let last = wait_for(k, "last-words", ended, 60, |s| !s.starts_with(':'))?;
    ensure!(last == "3:gone fishing", "{last:?}");
    let fell_back = wait_for(k, "fallback", ended, 60, |s| !s.starts_with(':'))?;
    ensure!(fell_back == "4:one\ntwo\n", "{fell_back:?}");
    Ok(())
}

/// `kubectl exec` into a running busybox: output and errors apart, the exit code, input, a
/// terminal, a command that cannot start, a client that goes away (its command goes too), and
/// the clear refusals of what is not served.
fn check_exec(k: &Kubectl, server: &Server, node: &str) -> Result<()> {
    use std::process::Stdio;
    let run = |args: &[&str], input: Option<&str>| -> Result<std::process::Output> {
        let mut command = k.command(args);
        command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let out = run(&["exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], None)?;
    ensure!(text(&out.stdout) == "out\n", "{out:?}");
    ensure!(text(&out.stderr).starts_with("err\n"), "errors apart from the output: {out:?}");
    ensure!(text(&out.stderr).contains("command terminated with exit code 3"), "{out:?}");
    ensure!(out.status.code() == Some(3), "kubectl exits with the command's code: {out:?}");
    // Input, to its end (v5's close of stdin), and the container's own view of things.
    let out =
        run(&["exec", "-i", "web", "--", "sh", "-c", "cat; echo done as $(id -u) on $(hostname)"], Some("piped\n"))?;
    ensure!(out.status.success() && text(&out.stdout) == "piped\ndone as 0 on web\n", "{out:?}");
    // A terminal: `script` gives kubectl one, as a user's shell would, of a size it passes on.
    // It is the command's controlling terminal (so that ^C is SIGINT): `/dev/tty` opens. And
    // it is one of the container's own, which `tty` names.
    let line = shell_line(&k.command(&[
        "exec",
        "-it",
        "web",
        "--",
        "sh",
        "-c",
        "test -t 0 && echo on a terminal; stty size; echo controlled > /dev/tty; tty",
    ]));
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &format!("stty cols 91 rows 27; {line}"), "/dev/null"]).stdin(Stdio::null());
    let out = script.output()?;
    let shown = text(&out.stdout);
    ensure!(
        out.status.success()
            && shown.contains("on a terminal")
            && shown.contains("27 91")
            && shown.contains("controlled")
            && shown.contains("/dev/pts/0"),
        "{out:?}"
    );
    check_exec_confinement(k, "web")?;
    // A container whose /dev/pts is not its devpts (a volume over it, with a FIFO planted as
    // its ptmx) gets a terminal all the same: the node's, the FIFO never opened as one.
    let planted = "    command: [\"sh\", \"-c\", \"mkfifo /dev/pts/ptmx && exec sleep 600\"]\n    volumeMounts: [{name: fake, mountPath: /dev/pts}]\n";
    let volume = "  terminationGracePeriodSeconds: 1\n  volumes: [{name: fake, emptyDir: {}}]\n";
    apply(k, &pod("fake-pts", node, "busybox", "Never", planted, volume))?;
    wait_for(k, "fake-pts", "{.status.containerStatuses[0].state.running.startedAt}", 60, |s| !s.is_empty())?;
    eventually(k, &["exec", "fake-pts", "--", "sh", "-c", "test -p /dev/pts/ptmx && echo planted"], 30, |o| {
        o.contains("planted")
    })?;
    let line =
        shell_line(&k.command(&["exec", "-it", "fake-pts", "--", "sh", "-c", "test -t 0 && echo on a terminal"]));
    let out = std::process::Command::new("script").args(["-qec", &line, "/dev/null"]).stdin(Stdio::null()).output()?;
    ensure!(out.status.success() && text(&out.stdout).contains("on a terminal"), "{out:?}");
    k.ok(&["delete", "pod", "fake-pts", "--wait=false"])?;
    // A command that cannot start says why (the helper's failure, read from memory), and
    // kubectl fails.
    let out = run(&["exec", "web", "--", "no-such-command"], None)?;
    ensure!(!out.status.success() && text(&out.stderr).contains("executable 'no-such-command' not found"), "{out:?}");
    // A client that goes away takes its command with it.
    let mut gone =
        k.command(&["exec", "web", "--", "sleep", "4343"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    eventually(k, &["exec", "web", "--", "ps"], 30, |ps| ps.contains("sleep 4343"))?;
    gone.kill()?;
    gone.wait()?;
    eventually(k, &["exec", "web", "--", "ps"], 30, |ps| !ps.contains("sleep 4343"))?;
    // What is not served is refused, saying so: a container that is not running, attach, and
    // SPDY (kubectl 1.29 speaks nothing else).
    let mut ended = pod("ended", node, "busybox", "Never", "    command: [\"true\"]\n", "");
    ended.push_str(
        "  - name: app\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [\"sleep\", \"600\"]\n",
    );
    apply(k, &ended)?;
    wait_for(k, "ended", "{.status.containerStatuses[?(@.name==\"ended\")].state.terminated.reason}", 60, |r| {
        r == "Completed"
    })?;
    let refused = k.fails(&["exec", "ended", "-c", "ended", "--", "true"])?;
    ensure!(refused.contains("container not found (\"ended\")"), "{refused}");
    let refused = k.fails(&["attach", "web"])?;
    ensure!(refused.contains("attach is not supported yet"), "{refused}");
    let mut old = Kubectl::new("1.29", server)?;
    old.namespace = k.namespace.clone();
    let refused = old.fails(&["exec", "web", "--", "true"])?;
    ensure!(refused.contains("this client asked for SPDY"), "{refused}");
    k.ok(&["delete", "pod", "ended", "--wait=false"])?;
    Ok(())
}

/// A command run in `pod` by `kubectl exec` is as confined as its container's own process (its
/// PID 1): the same seccomp mode and capabilities; and it has `no_new_privs` (youki's exec
/// gives it that).
fn check_exec_confinement(k: &Kubectl, pod: &str) -> Result<()> {
    let status = "grep -E '^(Seccomp|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc";
    let both = k.ok(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        &format!("{status}/self/status; grep NoNewPrivs: /proc/self/status; echo; {status}/1/status"),
    ])?;
    let (command, container) = both.split_once("\n\n").unwrap_or((&both, ""));
    let (own, no_new_privs): (Vec<&str>, Vec<&str>) = command.lines().partition(|l| !l.starts_with("NoNewPrivs:"));
    ensure!(
        own == container.lines().collect::<Vec<_>>(),
        "{pod}: the command's confinement, then its container's: {both}"
    );
    ensure!(own.contains(&"Seccomp:\t2") && no_new_privs == ["NoNewPrivs:\t1"], "{pod}: {both}");
    // The filter bites: no user namespace, as for the container's own processes.
    let refused =
        k.ok(&["exec", pod, "--", "sh", "-c", "unshare -U true 2>/dev/null && echo unshared || echo refused"])?;
    ensure!(refused == "refused\n", "{pod}: {refused:?}");
    Ok(())
}

/// `command` as one line of shell, each word quoted.
fn shell_line(command: &std::process::Command) -> String {
    let quote = |word: &std::ffi::OsStr| format!("'{}'", word.to_string_lossy().replace('\'', "'\\''"));
    std::iter::once(quote(command.get_program())).chain(command.get_args().map(quote)).collect::<Vec<_>>().join(" ")
}

/// A `subPath` that names a file (a ConfigMap's key as a config file) shows that file alone,
/// read-only as its volume is.
fn check_sub_path_files(k: &Kubectl, node: &str) -> Result<()> {
    k.ok(&["create", "configmap", "site", "--from-literal=index.html=from a key", "--from-literal=other=no"])?;
    let keyed = "    command: [\"sh\", \"-c\", \"cat /www/index.html; echo; ls /www; (echo x > /www/index.html) 2>/dev/null && echo writable || echo read-only\"]\n    volumeMounts: [{name: site, mountPath: /www/index.html, subPath: index.html}]\n";
    let volume = "  volumes: [{name: site, configMap: {name: site}}]\n";
    apply(k, &pod("keyed", node, "busybox", "Never", keyed, volume))?;
    wait_for(k, "keyed", "{.status.phase}", 60, |p| p == "Succeeded" || p == "Failed")?;
    let logs = k.ok(&["logs", "keyed"])?;
    ensure!(logs == "from a key\nindex.html\nread-only\n", "{logs:?}");
    // The subPath attack (CVE-2017-1002101) from a Linux container: an init container plants
    // links out of its emptyDir, to `/` and up past the volume, which its neighbour then names
    // by `subPath`. The node resolves a subPath beneath its volume, as for a wasm guest, and
    // the container binds what it resolved: it never starts, and says why.
    for (name, link) in [("to-root", "/"), ("climbs", "../../../../../../../../../../..")] {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  restartPolicy: Never\n  volumes: [{{name: scratch, emptyDir: {{}}}}]\n  initContainers:\n  - name: plant\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [\"ln\", \"-s\", \"{link}\", \"/scratch/out\"]\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n  containers:\n  - name: probe\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [\"ls\", \"/host/etc\"]\n    volumeMounts: [{{name: scratch, mountPath: /host, subPath: out}}]\n"
        );
        apply(k, &manifest)?;
        let waiting =
            "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}";
        let why = wait_for(k, name, waiting, 60, |s| s.starts_with("CreateContainerConfigError"))?;
        ensure!(why.contains("leads outside the volume"), "{name}: {why}");
    }
    Ok(())
}
