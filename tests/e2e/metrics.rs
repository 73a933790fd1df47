//! The resource metrics API through the real `kubectl top`: the node measures the CPU time and
//! memory of each container and of itself, and the API server serves what it read of them as
//! `metrics.k8s.io`. The server reads its nodes every second here (`--metrics-resolution`), so
//! a busy pod shows within a few seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::pods::{apply, import, node_name, pod, wait_for};

/// Millicores of `cpu` as `kubectl top` prints them (`250m`, `1`).
fn millicores(cpu: &str) -> Result<u64> {
    match cpu.strip_suffix('m') {
        Some(millis) => Ok(millis.parse()?),
        None => Ok(cpu.parse::<u64>()? * 1000),
    }
}

/// `kubectl top pod` as name → (millicores, memory as printed), once every pod in `want` has a
/// row whose CPU `ready` accepts.
fn top_pods(k: &Kubectl, want: &[&str], ready: impl Fn(&str, u64) -> bool) -> Result<HashMap<String, (u64, String)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        // Until every container was read once, kubectl says "metrics not available yet".
        if let Ok(out) = k.ok(&["top", "pod", "--no-headers"]) {
            let rows: HashMap<String, (u64, String)> = out
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let [name, cpu, memory] = fields[..] else { return None };
                    Some((name.to_string(), (millicores(cpu).ok()?, memory.to_string())))
                })
                .collect();
            if want.iter().all(|name| rows.get(*name).is_some_and(|(cpu, _)| ready(name, *cpu))) {
                return Ok(rows);
            }
            last = out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("kubectl top pod never showed {want:?} as wanted; last:\n{last}")
}

#[test]
fn kubectl_top_shows_what_nodes_and_pods_use() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Ports::free(), &["--metrics-resolution", "1s"])?;
    import(dir.path(), examples::P1_SPIN, "spin:v1")?;
    import(dir.path(), examples::P1_HTTP, "http:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;

    // The API group is discovered as metrics-server's is: get and list, nothing else.
    let resources = k.ok(&["api-resources", "--api-group=metrics.k8s.io", "-o", "wide", "--no-headers"])?;
    ensure!(resources.lines().count() == 2, "{resources}");
    for line in resources.lines() {
        ensure!(line.split_whitespace().any(|field| field == "get,list"), "{line}");
    }

    // A loop that never calls the host, under a 300m limit, and a server that waits.
    apply(&k, &pod("burner", &node, "spin:v1", "Always", "    resources:\n      limits: {cpu: 300m}\n", ""))?;
    apply(&k, &pod("idle", &node, "http:v1", "Always", "    ports:\n    - containerPort: 8080\n", ""))?;
    for name in ["burner", "idle"] {
        wait_for(&k, name, "{.status.phase}", 30, |p| p == "Running")?;
    }
    k.ok(&["label", "pod", "burner", "app=burner"])?;
    let rows = top_pods(&k, &["burner", "idle"], |name, cpu| name != "burner" || cpu >= 100)?;
    let (burner, idle) = (&rows["burner"], &rows["idle"]);
    // Its limit bounds it (with room for a window that ends mid-slice); the idle server uses
    // next to nothing. Both hold their linear memory.
    ensure!(burner.0 <= 400, "the burner used {}m under a 300m limit", burner.0);
    ensure!(idle.0 < 50, "the idle server used {}m", idle.0);
    for (_, memory) in [burner, idle] {
        ensure!(memory.ends_with("Mi") && memory != "0Mi", "{memory}");
    }

    // The node: its own usage, and a share of what it offers.
    let nodes = k.ok(&["top", "node", "--no-headers"])?;
    let fields: Vec<&str> = nodes.lines().next().context("no node row")?.split_whitespace().collect();
    ensure!(fields.len() == 5 && fields[0] == node, "{nodes}");
    // The machine's CPU over its own window: at least a good part of what the burner used.
    ensure!(millicores(fields[1])? >= burner.0 / 2 && fields[2].ends_with('%') && fields[3].ends_with("Mi"), "{nodes}");

    // By container, by label, everywhere, and one pod by name; the oldest kubectl we serve too.
    let containers = k.ok(&["top", "pod", "burner", "--containers", "--no-headers"])?;
    ensure!(containers.split_whitespace().take(2).collect::<Vec<_>>() == ["burner", "burner"], "{containers}");
    let selected = k.ok(&["top", "pod", "-l", "app=burner", "--no-headers"])?;
    ensure!(selected.lines().count() == 1 && selected.starts_with("burner "), "{selected}");
    let everywhere = k.ok(&["top", "pod", "-A", "--no-headers"])?;
    let ours = everywhere.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|f| f.len() == 4);
    ensure!(ours.filter(|f| f[1] == "burner" || f[1] == "idle").count() == 2, "{everywhere}");
    let old = Kubectl::new("1.27", &server)?;
    ensure!(old.ok(&["top", "pod", "idle", "-n", &k.namespace, "--no-headers"])?.starts_with("idle "));
    ensure!(old.ok(&["top", "node", "--no-headers"])?.starts_with(&node));

    // What is not there, and what the API does not do, as metrics-server answers.
    let missing = k.fails(&["top", "pod", "nosuch"])?;
    ensure!(missing.contains("NotFound") && missing.contains("\"nosuch\" not found"), "{missing}");
    let raw =
        k.ok(&["get", "--raw", &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{}/pods/burner", k.namespace)])?;
    let metrics: serde_json::Value = serde_json::from_str(&raw)?;
    ensure!(metrics["kind"] == "PodMetrics" && metrics["containers"][0]["name"] == "burner", "{raw}");
    ensure!(metrics["window"].as_str().is_some_and(|w| w.ends_with('s')), "{raw}");
    let watch = k.fails(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods?watch=true"])?;
    ensure!(watch.contains("MethodNotAllowed") || watch.contains("405"), "{watch}");
    let table = k.ok(&["get", "pods.metrics.k8s.io", "burner"])?;
    ensure!(table.starts_with("NAME") && table.contains("CPU") && table.contains("WINDOW"), "{table}");

    // The node's own resource metrics, as the kubelet serves them to scrapers: for the
    // cluster's administrators only.
    let at = node_api(&k, &node)?;
    let pki = dir.path().join("pki");
    let scrape = |credentials: &[&str]| curl(&format!("https://{at}/metrics/resource"), credentials);
    let (cert, key) = (pki.join("admin.crt"), pki.join("admin.key"));
    let (code, scraped) = scrape(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])?;
    ensure!(code == "200", "{code}: {scraped}");
    let burner_cpu = format!(
        "container_cpu_usage_seconds_total{{container=\"burner\",namespace=\"{}\",pod=\"burner\"}}",
        k.namespace
    );
    ensure!(scraped.lines().any(|l| l.starts_with(&burner_cpu)), "{scraped}");
    ensure!(scraped.lines().any(|l| l.starts_with("node_memory_working_set_bytes ")), "{scraped}");
    ensure!(scrape(&[])?.0 == "401", "anonymous");

    // A pod that is gone has no metrics.
    k.ok(&["delete", "pod", "burner", "--grace-period=1"])?;
    let after = k.fails(&["top", "pod", "burner"])?;
    ensure!(after.contains("not found"), "{after}");
    Ok(())
}

/// Where `node`'s API listens: `address:port`.
pub(crate) fn node_api(k: &Kubectl, node: &str) -> Result<String> {
    let jsonpath =
        "{.status.addresses[?(@.type==\"InternalIP\")].address}:{.status.daemonEndpoints.kubeletEndpoint.Port}";
    k.ok(&["get", "node", node, "-o", &format!("jsonpath={jsonpath}")])
}

/// `/metrics` at `url` (a server's or a node's), read with the metrics token of the server whose
/// data directory is `data_dir`.
pub(crate) fn scrape(data_dir: &std::path::Path, url: &str) -> Result<String> {
    let token = std::fs::read_to_string(data_dir.join("pki/metrics.token"))?;
    let (code, text) = curl(&format!("{url}/metrics"), &["-H", &format!("Authorization: Bearer {}", token.trim())])?;
    ensure!(code == "200", "{url}/metrics: {code}: {text}");
    Ok(text)
}

/// `curl` of `url` with `args`: the status code and the body.
fn curl(url: &str, args: &[&str]) -> Result<(String, String)> {
    let out = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    Ok((code.to_string(), body.to_string()))
}

/// The value of the first sample in `text` whose line starts with `prefix`.
pub(crate) fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix))?.rsplit(' ').next()?.parse().ok()
}

#[test]
fn prometheus_reads_the_server_and_its_nodes_with_the_metrics_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    import(dir.path(), examples::P1_HTTP, "http:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    // A Deployment: its controllers' queues, the scheduler, a pod the node starts.
    k.ok(&["create", "deployment", "web", "--image=http:v1", "--port=8080"])?;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;

    let token = std::fs::read_to_string(dir.path().join("pki/metrics.token"))?;
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let with_token = ["-H", bearer.as_str()];

    // The server: the API server's requests, the store as etcd names it, the scheduler, the
    // controllers' work queues, all under upstream's names.
    let (code, text) = curl(&format!("{}/metrics", server.url), &with_token)?;
    ensure!(code == "200", "{code}: {text}");
    let lists = text.lines().filter(|l| {
        l.starts_with("apiserver_request_total{")
            && l.contains("verb=\"LIST\"")
            && l.contains("resource=\"pods\"")
            && l.contains("code=\"200\"")
    });
    ensure!(lists.count() >= 1, "no LIST of pods counted:\n{text}");
    let created = "apiserver_request_duration_seconds_count{verb=\"POST\",dry_run=\"\",group=\"apps\",version=\"v1\",resource=\"deployments\",subresource=\"\",scope=\"resource\",component=\"apiserver\"}";
    ensure!(sample(&text, created) >= Some(1.0), "the Deployment's creation is not timed:\n{text}");
    ensure!(sample(&text, "apiserver_storage_objects{resource=\"namespaces\"}") >= Some(4.0), "{text}");
    ensure!(sample(&text, "etcd_server_has_leader ") == Some(1.0), "{text}");
    ensure!(sample(&text, "etcd_server_is_leader ") == Some(1.0), "{text}");
    ensure!(sample(&text, "etcd_disk_wal_fsync_duration_seconds_count ") > Some(0.0), "{text}");
    ensure!(sample(&text, "etcd_mvcc_db_total_size_in_bytes ") > Some(0.0), "{text}");
    let scheduled = "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"}";
    ensure!(sample(&text, scheduled) >= Some(1.0), "{text}");
    let bound = text
        .lines()
        .filter(|l| l.starts_with("scheduler_pod_scheduling_sli_duration_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    ensure!(bound >= 1.0, "no pod's scheduling timed:\n{text}");
    ensure!(sample(&text, "workqueue_adds_total{name=\"deployment\"}") >= Some(1.0), "{text}");
    ensure!(sample(&text, "workqueue_work_duration_seconds_count{name=\"replicaset\"}") >= Some(1.0), "{text}");

    // The token reads metrics and nothing else; no token, or a wrong one, reads nothing.
    let (code, body) = curl(&format!("{}/api/v1/pods", server.url), &with_token)?;
    ensure!(code == "403" && body.contains("flotilla:metrics-reader"), "{code}: {body}");
    ensure!(curl(&format!("{}/metrics", server.url), &[])?.0 == "401", "anonymous");
    let wrong = ["-H", "Authorization: Bearer not-the-metrics-token-but-long-enough-0123456789"];
    ensure!(curl(&format!("{}/metrics", server.url), &wrong)?.0 == "401", "a wrong token");

    // The node takes the same token, which it checks with the API server (a TokenReview): it
    // holds no token of its own.
    let at = node_api(&k, &node)?;
    let (code, text) = curl(&format!("https://{at}/metrics"), &with_token)?;
    ensure!(code == "200", "{code}: {text}");
    ensure!(sample(&text, "kubelet_running_pods ") >= Some(1.0), "{text}");
    ensure!(sample(&text, "kubelet_running_containers{container_state=\"running\"}") >= Some(1.0), "{text}");
    ensure!(sample(&text, "kubelet_pod_start_duration_seconds_count ") >= Some(1.0), "{text}");
    let (code, text) = curl(&format!("https://{at}/metrics/resource"), &with_token)?;
    ensure!(code == "200" && text.contains("container_memory_working_set_bytes"), "{code}: {text}");
    // Not the summary, the logs or the held connections; and a wrong token not even the metrics.
    for path in ["stats/summary", "stats/held", &format!("containerLogs/{}/x/y", k.namespace)] {
        let (code, body) = curl(&format!("https://{at}/{path}"), &with_token)?;
        ensure!(code == "403", "{path}: {code}: {body}");
    }
    ensure!(curl(&format!("https://{at}/metrics"), &wrong)?.0 == "401", "a wrong token at the node");
    // The admin's token and the join token are good at the API server, and nothing at a node:
    // no one need send them there. Nor is the metrics token good for a tunnel.
    for file in ["admin.token", "node.token"] {
        let other = std::fs::read_to_string(dir.path().join("pki").join(file))?;
        let other = format!("Authorization: Bearer {}", other.trim());
        let (code, body) = curl(&format!("https://{at}/stats/summary"), &["-H", other.as_str()])?;
        ensure!(code == "401", "{file} at the node: {code}: {body}");
    }
    let (code, body) = curl(&format!("https://{at}/tunnel/10.0.0.1:80"), &with_token)?;
    ensure!(code == "403", "the metrics token tunnels: {code}: {body}");
    // Unknown tokens by the hundred cost the API server a bounded number of questions.
    let reviews = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("apiserver_request_total{verb=\"POST\"") && l.contains("resource=\"tokenreviews\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // (The node asks at most 20 at once and 10 a second after that.)
    let before = reviews(&curl(&format!("{}/metrics", server.url), &with_token)?.1);
    let started = Instant::now();
    for i in 0..100 {
        let forged = format!("Authorization: Bearer forged-{i:058}");
        ensure!(curl(&format!("https://{at}/metrics"), &["-H", forged.as_str()])?.0 == "401", "forged token {i}");
    }
    let bound = 21.0 + 10.0 * started.elapsed().as_secs_f64().ceil();
    let after = reviews(&curl(&format!("{}/metrics", server.url), &with_token)?.1);
    ensure!(after - before <= bound.min(99.0), "100 forged tokens cost {} reviews", after - before);
    ensure!(after - before >= 1.0, "the node asked about no forged token: is it counted?");

    // The review itself, as the admin (or a node) asks it.
    let review = dir.path().join("review.json");
    let asked = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token.trim()},
    });
    std::fs::write(&review, asked.to_string())?;
    let answered =
        k.ok(&["create", "--raw", "/apis/authentication.k8s.io/v1/tokenreviews", "-f", review.to_str().unwrap()])?;
    let answered: serde_json::Value = serde_json::from_str(&answered)?;
    ensure!(answered["status"]["authenticated"] == true, "{answered}");
    ensure!(answered["status"]["user"]["username"] == "flotilla:metrics-reader", "{answered}");
    ensure!(answered["status"]["user"]["groups"][0] == "system:monitoring", "{answered}");
    // Not for whoever holds the metrics token or the join token.
    let join = std::fs::read_to_string(dir.path().join("pki/node.token"))?;
    let join = format!("Authorization: Bearer {}", join.trim());
    for holder in [bearer.as_str(), join.as_str()] {
        let (code, body) = curl(
            &format!("{}/apis/authentication.k8s.io/v1/tokenreviews", server.url),
            &["-X", "POST", "-H", holder, "-H", "Content-Type: application/json", "-d", &asked.to_string()],
        )?;
        ensure!(code == "403", "{code}: {body}");
    }
    Ok(())
}
