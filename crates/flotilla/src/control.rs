//! `flotilla scheduler` and `flotilla controllers`: the control loops `flotilla server` runs
//! in-process, as separate processes against any server a kubeconfig points at.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// The kubeconfig to reach the API server with [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// (controllers) Seconds a node may go without renewing its Lease before it is
    /// unreachable and its pods start to be evicted; more than the 10 s at which nodes renew it.
    #[arg(long, default_value_t = flotilla_controllers::DEFAULT_NODE_GRACE_PERIOD.as_secs(),
          value_parser = clap::value_parser!(u64).range(11..))]
    node_grace_period: u64,
}

async fn client(args: &ControlArgs) -> Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no kubeconfig found")?,
    };
    kube::Client::try_from(config).context("cannot build a client for the API server")
}

pub(crate) async fn scheduler(args: ControlArgs) -> Result<()> {
    let client = client(&args).await?;
    tracing::info!("scheduler running");
    tokio::select! {
        () = flotilla_scheduler::run(client) => {}
        () = crate::server::shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

pub(crate) async fn controllers(args: ControlArgs) -> Result<()> {
    let client = client(&args).await?;
    let config = flotilla_controllers::ControllersConfig {
        node_grace_period: std::time::Duration::from_secs(args.node_grace_period),
    };
    let controllers = flotilla_controllers::Controllers::start(client, config);
    tracing::info!("controllers running");
    crate::server::shutdown_signal().await;
    tracing::info!("shutting down");
    drop(controllers);
    Ok(())
}
