//! `flotilla run`: from a `.wasm` file to a function answering at a URL, in one command, as
//! SpinKube's `spin kube deploy` and wasmCloud's `wash` give their users. It imports the module
//! into this machine's node, applies a Deployment and a Service for it (server-side, so that
//! running it again changes only what changed: a rebuilt module has a new digest, hence a new
//! image, and the Deployment rolls to it), follows the rollout, and prints the Service's URL.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use flotilla_node::{NodeConfig, Reference};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// The field manager of what `flotilla run` applies.
const MANAGER: &str = "flotilla-run";
/// The port the Service answers on.
const SERVICE_PORT: u16 = 80;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The module: a core module (`wasm32-wasip1`) or a component (`wasm32-wasip2`).
    file: PathBuf,
    /// The Deployment's and the Service's name (default: the file's name without `.wasm`).
    #[arg(long)]
    name: Option<String>,
    /// The port the module serves on: a p1 module gets a listening socket on it, a p2 component
    /// binds it (`$POD_IP:$PORT`), a `wasi:http` handler is served on it.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value_t = 1)]
    replicas: i32,
    #[arg(long, short, default_value = "default")]
    namespace: String,
    /// The node whose image store the module goes into, where its pods then run.
    #[arg(long, default_value_t = NodeConfig::hostname())]
    node: String,
    /// The server's data directory (its node's image store, its admin kubeconfig).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,
    /// The kubeconfig to use (default: the data directory's admin kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How long to wait for every replica to be ready.
    #[arg(long, default_value = "120s", value_parser = crate::control::parse_duration)]
    timeout: Duration,
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args.file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().replace('_', "-").to_lowercase(),
    };
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    // The image is named by the module's digest: a rebuilt module is a new image, and the
    // Deployment rolls to it.
    let digest = flotilla_wasm::digest(&bytes);
    let hex = digest.trim_start_matches("sha256:");
    let image = format!("{name}:{}", &hex[..12]);
    let reference = Reference::parse(&image).map_err(anyhow::Error::msg)?;
    crate::image::open(&args.data_dir)?
        .import(&bytes, &reference)
        .with_context(|| format!("cannot import {}", args.file.display()))?;
    say(&format!("imported {} as {image}", args.file.display()))?;

    let client = client(&args).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &args.namespace);
    let apply = PatchParams::apply(MANAGER).force();
    let labels = json!({"app": name});
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "app.kubernetes.io/managed-by": MANAGER}},
        "spec": {
            "replicas": args.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": args.node},
                    "containers": [{
                        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
                        // Where a component binds: the pod's own address and the port.
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "PORT", "value": args.port.to_string()},
                        ],
                        "ports": [{"name": "http", "containerPort": args.port}],
                        // Ready once it accepts connections: only then does the Service send any.
                        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                    }],
                },
            },
        },
    });
    let applied =
        deployments.patch(&name, &apply, &Patch::Apply(&deployment)).await.context("cannot apply the Deployment")?;
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name, "app.kubernetes.io/managed-by": MANAGER}},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]},
    });
    let service = services.patch(&name, &apply, &Patch::Apply(&service)).await.context("cannot apply the Service")?;
    say(&format!("deployment.apps/{name} and service/{name} applied in namespace {}", args.namespace))?;

    let generation = applied.metadata.generation.unwrap_or(0);
    wait_ready(&client, &args, &name, generation).await?;
    let ip = service.spec.and_then(|s| s.cluster_ip).context("the Service has no cluster IP")?;
    let url = format!("http://{ip}{}/", if SERVICE_PORT == 80 { String::new() } else { format!(":{SERVICE_PORT}") });
    // The node's proxy takes the ready endpoints in within moments; the URL is printed once it
    // answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect((ip.as_str(), SERVICE_PORT)).await.is_err() {
        if Instant::now() > deadline {
            bail!("{url} does not answer: is this machine one of the cluster's nodes?");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!("{name} is ready: {url}"))
}

async fn client(args: &RunArgs) -> Result<kube::Client> {
    let path = args.kubeconfig.clone().unwrap_or_else(|| args.data_dir.join("kubeconfig.yaml"));
    let file = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("cannot read the kubeconfig {} (is the server running?)", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
    kube::Client::try_from(config).context("cannot build a client for the API server")
}

/// Follows the rollout until every replica runs the new template and is ready, saying how far
/// it is whenever that changes, and why a pod is stuck if one is.
async fn wait_ready(client: &kube::Client, args: &RunArgs, name: &str, generation: i64) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    let deadline = Instant::now() + args.timeout;
    let mut last = String::new();
    loop {
        let deployment = deployments.get(name).await?;
        let status = deployment.status.unwrap_or_default();
        let (updated, ready, total) =
            (status.updated_replicas.unwrap_or(0), status.ready_replicas.unwrap_or(0), status.replicas.unwrap_or(0));
        if status.observed_generation.unwrap_or(0) >= generation
            && updated == args.replicas
            && ready == args.replicas
            && total == args.replicas
        {
            return Ok(());
        }
        let mut progress = format!("waiting: {ready}/{} ready, {updated} up to date", args.replicas);
        let listed = pods.list(&ListParams::default().labels(&format!("app={name}"))).await?;
        for pod in &listed.items {
            let pod_status = pod.status.clone().unwrap_or_default();
            let waiting = pod_status
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .find(|reason| reason != "ContainerCreating");
            let unschedulable = pod_status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.message.clone());
            if let Some(why) = waiting.or(unschedulable) {
                progress += &format!("; {}: {why}", pod.metadata.name.as_deref().unwrap_or_default());
                break;
            }
        }
        if progress != last {
            say(&progress)?;
            last = progress;
        }
        if Instant::now() > deadline {
            bail!("{name} was not ready within {:?}: {last}", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn say(line: &str) -> Result<()> {
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}
