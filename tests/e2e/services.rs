//! Traffic through Services: a Deployment of wasm HTTP servers behind `kubectl expose`, reached
//! with curl from the host at its cluster IP (by a named target port) and at a node port,
//! spread over its pods, refused at once with no endpoint, back when one returns, and kept on
//! one pod under `sessionAffinity: ClientIP`; its names in the cluster DNS, asked with dig; and
//! a wasm function calling it by its short name through `wasi:http`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::pods::{apply, import};

/// `program`, run in the network namespace `netns` (`ip netns exec`) or in this process's.
pub(crate) fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, program]);
            command
        }
        None => Command::new(program),
    }
}

/// What dig answers for `name` (`kind` records) from the cluster DNS at `server`: the status
/// and the answers, short.
fn dig(server: &str, name: &str, kind: &str) -> Result<(String, Vec<String>)> {
    dig_in(None, server, name, kind)
}

/// [`dig`] from the network namespace `netns`.
pub(crate) fn dig_in(netns: Option<&str>, server: &str, name: &str, kind: &str) -> Result<(String, Vec<String>)> {
    let dig = |extra: &[&str]| {
        command_in(netns, "dig").args([&format!("@{server}"), name, kind, "+tries=1", "+time=3"]).args(extra).output()
    };
    let text = String::from_utf8_lossy(&dig(&[])?.stdout).into_owned();
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("none").to_string();
    let mut answers: Vec<String> =
        String::from_utf8_lossy(&dig(&["+short"])?.stdout).lines().map(str::to_string).collect();
    answers.sort();
    Ok((status, answers))
}

/// What curl got from `url`: the body, or curl's exit code (7: refused, 28: timed out).
fn curl(url: &str) -> Result<Result<String, i32>> {
    curl_in(None, url)
}

/// [`curl`] from the network namespace `netns`.
pub(crate) fn curl_in(netns: Option<&str>, url: &str) -> Result<Result<String, i32>> {
    let out = command_in(netns, "curl").args(["-s", "--max-time", "5", url]).output()?;
    Ok(match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        code => Err(code.unwrap_or(-1)),
    })
}

/// The first answer of `url`, once it answers (within 30 s).
fn answer(url: &str) -> Result<String> {
    answer_in(None, url)
}

/// [`answer`] from the network namespace `netns`.
pub(crate) fn answer_in(netns: Option<&str>, url: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match curl_in(netns, url)? {
            Ok(body) => return Ok(body),
            Err(code) if Instant::now() > deadline => bail!("{url}: curl still exits {code}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Asks `url` until its answers come from `want` pods (or 30 s pass).
fn spread_over(url: &str, want: usize) -> Result<BTreeSet<String>> {
    spread_over_in(None, url, want)
}

/// [`spread_over`] from the network namespace `netns`.
pub(crate) fn spread_over_in(netns: Option<&str>, url: &str, want: usize) -> Result<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeSet::new();
    while seen.len() < want {
        ensure!(Instant::now() < deadline, "{url} answered only from {seen:?}");
        if let Ok(body) = curl_in(netns, url)? {
            seen.insert(body.split(' ').nth(2).unwrap_or_default().to_string());
        }
    }
    Ok(seen)
}

#[test]
fn a_deployment_behind_a_service_answers_curl_at_its_cluster_ip_and_node_port() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    import(dir.path(), examples::P1_HTTP, "http:v1")?;
    import(dir.path(), examples::P2_HANDLER, "handler:v1")?;
    import(dir.path(), examples::P2_ESCAPE, "client:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: http\n        image: http:v1\n        imagePullPolicy: IfNotPresent\n        ports:\n        - name: http\n          containerPort: 8080\n";
    apply(&k, deployment)?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;

    // A named target port, resolved per pod.
    k.ok(&["expose", "deploy", "web", "--port=80", "--target-port=http"])?;
    let ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let url = format!("http://{ip}/");
    let pods: BTreeSet<String> = k
        .ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"])?
        .split(' ')
        .map(String::from)
        .collect();
    ensure!(spread_over(&url, 2)? == pods, "the cluster IP spreads over both pods");

    // Its names: A and SRV, NXDOMAIN for what is not there, a headless Service's pods.
    let dns = k.ok(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"])?;
    let ns = &k.namespace;
    let name = |service: &str| format!("{service}.{ns}.svc.cluster.local");
    let deadline = Instant::now() + Duration::from_secs(30);
    while dig(&dns, &name("web"), "A")?.1 != [ip.clone()] {
        let answered = dig(&dns, &name("web"), "A")?;
        ensure!(Instant::now() < deadline, "the cluster DNS never answered for {}: {answered:?}", name("web"));
        std::thread::sleep(Duration::from_millis(200));
    }
    // A named port has an SRV record (kubectl expose names none; the port is named after).
    k.ok(&[
        "patch",
        "svc",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/ports/0/name","value":"http"}]"#,
    ])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let srv_name = format!("_http._tcp.{}", name("web"));
    while dig(&dns, &srv_name, "SRV")?.1 != [format!("0 100 80 {}.", name("web"))] {
        ensure!(Instant::now() < deadline, "no SRV record: {:?}", dig(&dns, &srv_name, "SRV")?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = dig(&dns, &name("nothing"), "A")?;
    ensure!(status == "NXDOMAIN", "{status}");
    // A target port by a name no container declares: the Service says why it has no endpoints.
    k.ok(&["expose", "deploy", "web", "--name=web-misnamed", "--port=80", "--target-port=htp"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let said =
        r#"jsonpath={range .items[?(@.reason=="TargetPortNotFound")]}{.involvedObject.name}: {.message}{"\n"}{end}"#;
    loop {
        let events = k.ok(&["get", "events", "-o", said])?;
        if events.contains("web-misnamed: port 80: no container of pod web-") && events.contains("a port named \"htp\"")
        {
            break;
        }
        ensure!(Instant::now() < deadline, "no TargetPortNotFound event: {events:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    k.ok(&["expose", "deploy", "web", "--name=web-headless", "--cluster-ip=None", "--port=8080"])?;
    let pod_ips: Vec<String> = {
        let out = k.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"])?;
        let mut ips: Vec<String> = out.split(' ').map(String::from).collect();
        ips.sort();
        ips
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while dig(&dns, &name("web-headless"), "A")?.1 != pod_ips {
        ensure!(Instant::now() < deadline, "the headless Service never listed {pod_ips:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A function calls the Service by its short name, which the node resolves for it.
    let function = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: function\nspec:\n  containers:\n  - name: function\n    image: handler:v1\n    imagePullPolicy: IfNotPresent\n    ports:\n    - containerPort: 8080\n";
    apply(&k, function)?;
    k.ok(&["wait", "--for=condition=Ready", "pod/function", "--timeout=60s"])?;
    let function_ip = k.ok(&["get", "pod", "function", "-o", "jsonpath={.status.podIP}"])?;
    let called = answer(&format!("http://{function_ip}:8080/?call=web"))?;
    ensure!(called.starts_with("called web: hello from web-"), "{called}");
    let called = answer(&format!("http://{function_ip}:8080/?call={}", name("web")))?;
    ensure!(called.contains("hello from web-"), "{called}");
    let missing = answer(&format!("http://{function_ip}:8080/?call={}", name("nothing")))?;
    ensure!(missing.contains("failed") && missing.contains("Dns"), "{missing}");
    // A component's own sockets: the name looked up through `wasi:sockets`, the connection to
    // the cluster IP made straight to a pod.
    let targets = format!("web:80,{}:80,{ip}:80,nothing:80", name("web"));
    let client = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  restartPolicy: Never\n  containers:\n  - name: client\n    image: client:v1\n    imagePullPolicy: IfNotPresent\n    env:\n    - {{name: MODE, value: connect}}\n    - {{name: GET, value: /}}\n    - {{name: TARGETS, value: \"{targets}\"}}\n"
    );
    apply(&k, &client)?;
    k.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/client", "--timeout=60s"])?;
    let said = k.ok(&["logs", "client"])?;
    for reached in ["web:80".to_string(), format!("{}:80", name("web")), format!("{ip}:80")] {
        ensure!(said.contains(&format!("connect {reached}: ok hello from web-")), "{reached}: {said}");
    }
    ensure!(said.contains("connect nothing:80: error"), "{said}");

    // A node port, on the node's address.
    k.ok(&["expose", "deploy", "web", "--name=web-np", "--type=NodePort", "--port=80", "--target-port=8080"])?;
    let node_port = k.ok(&["get", "svc", "web-np", "-o", "jsonpath={.spec.ports[0].nodePort}"])?;
    let node_ip =
        k.ok(&["get", "nodes", "-o", "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}"])?;
    let answered = answer(&format!("http://{node_ip}:{node_port}/"))?;
    ensure!(answered.starts_with("hello from web-"), "{answered}");

    // A load balancer: the node's address as its external IP, answering on the Service's port
    // (a free one, since tests share the node address).
    let lb_port = std::net::TcpListener::bind(format!("{node_ip}:0"))?.local_addr()?.port().to_string();
    k.ok(&[
        "expose",
        "deploy",
        "web",
        "--name=web-lb",
        "--type=LoadBalancer",
        &format!("--port={lb_port}"),
        "--target-port=8080",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while k.ok(&["get", "svc", "web-lb", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"])? != node_ip {
        ensure!(Instant::now() < deadline, "no ingress: {}", k.ok(&["get", "svc", "web-lb"])?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = k.ok(&["get", "svc", "web-lb"])?;
    ensure!(shown.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(3) == Some(node_ip.as_str())), "{shown}");
    let answered = answer(&format!("http://{node_ip}:{lb_port}/"))?;
    ensure!(answered.starts_with("hello from web-"), "{answered}");

    // No endpoint: refused at once (curl's 7), never a hang (28); back when a pod is.
    k.ok(&["scale", "deploy", "web", "--replicas=0"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match curl(&url)? {
            Err(7) => break,
            Err(28) => bail!("a Service without endpoints hung"),
            other if Instant::now() > deadline => bail!("a Service without endpoints still answers {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    k.ok(&["scale", "deploy", "web", "--replicas=2"])?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    ensure!(spread_over(&url, 2)?.len() == 2);

    // Session affinity keeps this client on one pod.
    k.ok(&["patch", "svc", "web", "-p", r#"{"spec":{"sessionAffinity":"ClientIP"}}"#])?;
    std::thread::sleep(Duration::from_secs(1));
    let first = answer(&url)?;
    for _ in 0..10 {
        ensure!(curl(&url)?.as_deref() == Ok(first.as_str()), "affinity lost: first {first}");
    }
    Ok(())
}

/// The README's first example, as a new user runs it: `scripts/examples` imports the example
/// modules (as `scripts/start` does), `kubectl apply -f manifests/web`, and curl at the
/// Service answers from the pods.
#[test]
fn the_readme_web_example_answers_curl_through_its_service() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(repository.join("scripts/examples"))
        .arg(dir.path())
        .arg(crate::harness::flotilla_bin())
        .output()?;
    ensure!(out.status.success(), "scripts/examples: {}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(dir.path(), Ports::free())?;
    let k = Kubectl::new("1.33", &server)?;
    k.ok(&["apply", "-f", crate::kubectl::manifests().to_str().unwrap()])?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    let ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    ensure!(spread_over(&format!("http://{ip}/"), 2)?.iter().all(|pod| pod.starts_with("web-")));
    Ok(())
}

/// `flotilla run`: a module to a URL in one command; run again with another build, the
/// Deployment rolls to it; run again unchanged, nothing rolls.
#[test]
fn flotilla_run_serves_a_module_at_a_url_and_rolls_to_a_rebuild() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    let k = Kubectl::new("1.33", &server)?;
    let node = crate::pods::node_name(&k)?;
    let run = |module: &str| -> Result<String> {
        let out = Command::new(crate::harness::flotilla_bin())
            .args(["run", module, "--name", "fn", "--node", &node, "--namespace", &k.namespace, "--timeout", "60s"])
            .arg("--data-dir")
            .arg(dir.path())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "flotilla run: {text}{}", String::from_utf8_lossy(&out.stderr));
        Ok(text)
    };
    let said = run(examples::P1_HTTP)?;
    let url = said.lines().last().and_then(|l| l.split("ready: ").nth(1)).unwrap_or_default().to_string();
    ensure!(url.starts_with("http://127."), "{said}");
    let first = answer(&url)?;
    ensure!(first.starts_with("hello from fn-"), "{first}");
    let image =
        |k: &Kubectl| k.ok(&["get", "deploy", "fn", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]);
    let (v1, generation) = (image(&k)?, k.ok(&["get", "deploy", "fn", "-o", "jsonpath={.metadata.generation}"])?);

    // The same module again: nothing changes.
    run(examples::P1_HTTP)?;
    ensure!(k.ok(&["get", "deploy", "fn", "-o", "jsonpath={.metadata.generation}"])? == generation);
    // Another build (here the component of the same program): a new image, rolled out.
    let said = run(examples::P2_HTTP)?;
    let v2 = image(&k)?;
    ensure!(v2 != v1 && v2.starts_with("fn:"), "{v1} then {v2}: {said}");
    let pods = k.ok(&["get", "pods", "-l", "app=fn", "-o", "jsonpath={.items[*].spec.containers[0].image}"])?;
    ensure!(pods.split(' ').all(|i| i == v2), "pods after the rollout: {pods}");
    let after = answer(&url)?;
    ensure!(after.starts_with("hello from fn-") && after != first, "{first} then {after}");
    Ok(())
}
