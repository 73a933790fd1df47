//! The control loops, the scheduler and the controllers: run in `flotilla server`'s process by
//! default, or on their own (`flotilla scheduler`, `flotilla controllers`) against any server a
//! kubeconfig points at. Either way each runs only while its process leads its Lease
//! (`kube-system/kube-scheduler`, `kube-system/kube-controller-manager`), as upstream's do, so
//! that the members of a store group, which all run them, never act twice on the same objects.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use flotilla_client::{ElectionConfig, LeaderElection, candidate_identity};
use flotilla_controllers::{Controllers, ControllersConfig};
use flotilla_scheduler::SchedulerMetrics;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Leases the control loops lead by, as upstream names them.
const SCHEDULER_LEASE: &str = "kube-scheduler";
const CONTROLLERS_LEASE: &str = "kube-controller-manager";

/// Leader election, with upstream's flags and defaults.
#[derive(Debug, Args)]
pub(crate) struct ElectionArgs {
    /// Run the control loops only while this process leads their Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a Lease unrenewed stays its holder's.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long a leader tries to renew before it stops leading; less than the lease duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to take the Lease and the leader renews it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
}

impl ElectionArgs {
    pub(crate) fn config(&self) -> Result<Option<ElectionConfig>> {
        if !self.leader_elect {
            return Ok(None);
        }
        anyhow::ensure!(
            self.leader_elect_renew_deadline < self.leader_elect_lease_duration,
            "--leader-elect-renew-deadline must be less than --leader-elect-lease-duration"
        );
        Ok(Some(ElectionConfig {
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }))
    }
}

/// `15s`, `500ms`, `2m`, `1h`, as Go writes durations (whole units only).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 15s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
}

/// A period something is done every: a duration, and not zero.
pub(crate) fn parse_period(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?}: a period must be longer than 0")),
        period => Ok(period),
    }
}

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

    /// (controllers) How often every HorizontalPodAutoscaler is evaluated, e.g. `15s`.
    #[arg(long, value_parser = parse_period, default_value = "15s")]
    horizontal_pod_autoscaler_sync_period: Duration,

    #[command(flatten)]
    election: ElectionArgs,
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
    let loops = ControlLoops {
        scheduler: Some(client(&args).await?),
        controllers: None,
        scheduler_metrics: SchedulerMetrics::default(),
    };
    run_standalone(loops, &args.election).await
}

pub(crate) async fn controllers(args: ControlArgs) -> Result<()> {
    let config = ControllersConfig {
        node_grace_period: Duration::from_secs(args.node_grace_period),
        hpa_sync_period: args.horizontal_pod_autoscaler_sync_period,
        ..ControllersConfig::default()
    };
    let loops = ControlLoops {
        scheduler: None,
        controllers: Some((client(&args).await?, config)),
        scheduler_metrics: SchedulerMetrics::default(),
    };
    run_standalone(loops, &args.election).await
}

async fn run_standalone(loops: ControlLoops, election: &ElectionArgs) -> Result<()> {
    let identity = candidate_identity(&flotilla_node::NodeConfig::hostname());
    let running = tokio::spawn(loops.run(election.config()?, identity));
    tracing::info!("control loops running");
    crate::server::shutdown_signal().await;
    tracing::info!("shutting down");
    running.abort();
    Ok(())
}

/// The loops a process runs, each with the client it runs as (`None`: not run here).
pub(crate) struct ControlLoops {
    pub(crate) scheduler: Option<kube::Client>,
    pub(crate) controllers: Option<(kube::Client, ControllersConfig)>,
    /// Kept across the scheduler's restarts.
    pub(crate) scheduler_metrics: SchedulerMetrics,
}

/// What runs while the leaderships last; dropping it stops it.
struct Running {
    _controllers: Option<Controllers>,
    scheduler: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(scheduler) = &self.scheduler {
            scheduler.abort();
        }
    }
}

impl ControlLoops {
    /// Runs each loop while this process leads its Lease (always, without an election), as the
    /// candidate `identity`, until dropped. When it leads both, the two share their watches of
    /// pods and nodes (every pod is decoded and held once); a change of leadership stops what
    /// runs and starts what the new leadership allows.
    pub(crate) async fn run(self, election: Option<ElectionConfig>, identity: String) {
        let lead = |name: &str, client: Option<&kube::Client>| -> (watch::Sender<bool>, watch::Receiver<bool>) {
            let (tx, rx) = watch::channel(client.is_some() && election.is_none());
            if let (Some(client), Some(config)) = (client, &election) {
                let candidate = LeaderElection::new(client.clone(), name, &identity, config.clone());
                tokio::spawn(candidate.run(tx.clone()));
            }
            (tx, rx)
        };
        let (_scheduler_tx, mut scheduling) = lead(SCHEDULER_LEASE, self.scheduler.as_ref());
        let (_controllers_tx, mut controlling) = lead(CONTROLLERS_LEASE, self.controllers.as_ref().map(|(c, _)| c));
        // What runs is restarted only when what this process leads changes: restarting on a
        // mere renewal would drop every loop mid-action (a scale written, its Event never).
        let mut running: Option<((bool, bool), Running)> = None;
        loop {
            let leads = (*controlling.borrow_and_update(), *scheduling.borrow_and_update());
            if running.as_ref().is_none_or(|(led, _)| *led != leads) {
                if running.is_some() {
                    tracing::info!(controllers = leads.0, scheduler = leads.1, "leadership changed");
                }
                // The old loops stop before the new ones start.
                drop(running.take());
                running = Some((leads, self.start(leads.0, leads.1)));
            }
            tokio::select! {
                _ = controlling.changed() => {}
                _ = scheduling.changed() => {}
            }
        }
    }

    fn start(&self, controls: bool, schedules: bool) -> Running {
        let scheduler = self.scheduler.clone().filter(|_| schedules);
        match self.controllers.clone().filter(|_| controls) {
            Some((client, config)) => {
                let mut started = None;
                let controllers = Controllers::start_sharing(client, config, |pods, nodes| {
                    started = scheduler.map(|client| {
                        tokio::spawn(flotilla_scheduler::start(client, self.scheduler_metrics.clone(), pods, nodes))
                    });
                });
                Running { _controllers: Some(controllers), scheduler: started }
            }
            None => {
                let metrics = self.scheduler_metrics.clone();
                Running {
                    _controllers: None,
                    scheduler: scheduler.map(|c| tokio::spawn(flotilla_scheduler::run(c, metrics))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("fast").is_err() && parse_duration("3d").is_err());
    }
}
