//! One pod's lifecycle on the node (the kubelet's pod worker): it sets up the sandbox (address,
//! volumes), runs init containers then containers as the plan says, restarts them by policy
//! with back-off, writes the pod's status whenever it changes, and on deletion stops
//! everything and removes the pod for good.
//!
//! The status is written beside the work, not in its way (the kubelet's status manager): one
//! write at a time, of the latest status, while containers start and probes run. A pod that
//! starts and turns ready during its first write is written ready next, not through every
//! state between, and its containers do not wait for the API server to start.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::env::{self, Objects, Placement, Watched};
use super::hooks::{self, Hook};
use super::plan::{self, PodView, RestartPolicy, Slot, is_sidecar};
use super::probes::{self, Finding};
use super::record::{ContainerRecord, Run, Terminated};
use super::status::{self, StatusInput, Stop};
use super::termination;
use super::volumes::{self, Volumes};
use super::{ContainerLogs, PodEntry};
use crate::Node;
use crate::images::{ImageError, Kind, PullPolicy, Reference};
use crate::logs::{self, ContainerLog};
use crate::objects::SYNC_TIMEOUT;
use crate::runtime::{ContainerUsage, Control, CreateError, Exit, Launch, Security, Started};
use flotilla_client::EventType::{Normal, Warning};

/// How long to wait before retrying a status write or the final deletion that failed.
const API_RETRY: Duration = Duration::from_secs(2);
/// How long before a pod's projected volumes that could not be written are tried again (the
/// kubelet's pod sync period), unless one of their objects changes first.
const REFRESH_RETRY: Duration = Duration::from_secs(60);

/// What a container's run task reports to its worker.
#[derive(Debug)]
pub(super) enum RunEvent {
    Started {
        slot: Slot,
        attempt: i32,
        image_id: String,
        container_id: String,
        started_at: Timestamp,
        control: Arc<dyn Control>,
        usage: ContainerUsage,
        /// Adopted from an earlier run of the agent, which ran its `postStart` hook.
        adopted: bool,
    },
    /// Its image could not be had, or its run not be made as the pod asks.
    StartFailed {
        slot: Slot,
        attempt: i32,
        failure: StartFailure,
    },
    Exited {
        slot: Slot,
        attempt: i32,
        exit: Exit,
        started_at: Timestamp,
        container_id: String,
    },
    Probe {
        slot: Slot,
        attempt: i32,
        finding: Finding,
    },
    /// A lifecycle hook ended: why it failed, if it did.
    Hook {
        slot: Slot,
        attempt: i32,
        hook: Hook,
        result: Result<(), String>,
    },
    /// The eviction manager chose the pod to free memory; `message` says why.
    Evict {
        message: String,
    },
}

/// Why a container did not start, as its waiting state shows it.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartFailure {
    #[error(transparent)]
    Image(ImageError),
    /// Its run cannot be made as the pod asks.
    #[error("{0}")]
    Config(String),
}

impl StartFailure {
    fn reason(&self) -> &'static str {
        match self {
            StartFailure::Image(error) => error.reason(),
            StartFailure::Config(_) => "CreateContainerConfigError",
        }
    }
}

/// A run in progress: its task, its log, and its probes; once started, its control; when it is
/// killed if it was told to stop, and whether it was.
#[derive(Debug)]
struct ActiveRun {
    attempt: i32,
    task: JoinHandle<()>,
    log: Arc<ContainerLog>,
    probes: Option<JoinHandle<()>>,
    control: Option<Arc<dyn Control>>,
    /// The lifecycle hook that runs: its `postStart` (the run is not yet shown running), or,
    /// once it is told to stop ([`killed_at`](Self::killed_at) set), its `preStop` (it is not
    /// yet told to stop).
    hook: Option<(Hook, JoinHandle<()>)>,
    /// When the run started and its container's id, while its `postStart` hook runs.
    started: Option<(Timestamp, String)>,
    killed_at: Option<Instant>,
    /// A sidecar told that its turn to stop is coming ([`Worker::pre_stop`]): it is not told to
    /// stop, its `preStop` hook done, until it has.
    awaiting_turn: bool,
    killed: bool,
}

impl ActiveRun {
    fn new(attempt: i32, task: JoinHandle<()>, log: Arc<ContainerLog>) -> ActiveRun {
        ActiveRun {
            attempt,
            task,
            log,
            probes: None,
            control: None,
            hook: None,
            started: None,
            killed_at: None,
            awaiting_turn: false,
            killed: false,
        }
    }

    /// Ends the run: its task (a run not yet started ends with it), its probes and hook, its log.
    fn end(self) {
        self.task.abort();
        for task in [self.probes, self.hook.map(|(_, task)| task)].into_iter().flatten() {
            task.abort();
        }
        self.log.close();
    }
}

/// The pod's sandbox: what its containers share.
#[derive(Debug)]
struct Sandbox {
    ip: Ipv4Addr,
    dir: PathBuf,
    /// Whether all its containers join one network namespace ([`Launch::netns`]).
    shares_netns: bool,
}

pub(super) struct Worker {
    node: Arc<Node>,
    /// The pod's `runtimeClassName`, if it names one (else each image decides its runtime).
    class: Option<String>,
    pod: Pod,
    entry: Arc<PodEntry>,
    restart_policy: RestartPolicy,
    init: Vec<ContainerRecord>,
    main: Vec<ContainerRecord>,
    runs: HashMap<Slot, ActiveRun>,
    events: mpsc::UnboundedSender<RunEvent>,
    sandbox: Option<Sandbox>,
    /// The ConfigMaps and Secrets its containers use, as read for the last start or refresh.
    objects: Objects,
    /// Their watches, held from its first container's start (or adoption) until the pod is done.
    watched: Option<Watched>,
    /// When the projected volumes' files are to be written again: after an adoption (nothing
    /// of the objects has been read), or a refresh that failed.
    refresh_at: Option<Instant>,
    /// Runs were adopted from an earlier agent, whose runtime holds what is left of them.
    adopted: bool,
    start_time: Timestamp,
    /// When the pod's `activeDeadlineSeconds` runs out, if it has one.
    deadline: Option<Instant>,
    stop: Option<Stop>,
    /// When the pod, winding down, must have stopped: its grace period's end, from when it
    /// began to wind down.
    stop_by: Option<Instant>,
    /// The pod was removed from the API (force-deleted, or while the agent was away).
    gone: bool,
    /// The status last written, as rendered.
    published: Option<Value>,
    /// After a status write failed: not before this time again.
    publish_retry: Option<Instant>,
    /// The resource version of the pod as the last status write left it: a watch event older
    /// than that carries a status this worker has since replaced.
    published_version: u64,
    /// The status write under way: what it writes, and the task that writes it.
    publishing: Option<(Value, JoinHandle<kube::Result<Pod>>)>,
    /// When this worker first saw a pod no node had started, until the pod runs.
    first_seen: Option<Instant>,
}

impl Worker {
    /// A worker for `pod`, picking up what an earlier run of the agent left in its status.
    pub(super) fn new(
        node: Arc<Node>,
        pod: Pod,
        entry: Arc<PodEntry>,
        events: mpsc::UnboundedSender<RunEvent>,
    ) -> Worker {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let restore = |containers: &[Container], statuses: Option<&Vec<ContainerStatus>>, waiting: &str| {
            containers
                .iter()
                .map(|c| {
                    let mut record = ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default(), waiting);
                    record.sidecar = is_sidecar(c);
                    if let Some(found) = statuses.and_then(|s| s.iter().find(|s| s.name == c.name)) {
                        restore_record(&mut record, found);
                    }
                    record
                })
                .collect::<Vec<_>>()
        };
        let init = restore(
            spec.init_containers.as_deref().unwrap_or_default(),
            status.init_container_statuses.as_ref(),
            "PodInitializing",
        );
        let main_waiting = if has_init { "PodInitializing" } else { "ContainerCreating" };
        let main = restore(&spec.containers, status.container_statuses.as_ref(), main_waiting);
        let start_time = status.start_time.as_ref().map_or_else(Timestamp::now, |t| t.0);
        let class = spec.runtime_class_name.clone();
        let stop = if let Some(class) = class.as_deref().filter(|c| node.runtimes.get(c).is_none()) {
            let offered = node.runtimes.handlers().iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ");
            Some(Stop::Rejected {
                reason: "UnsupportedRuntimeClass".into(),
                message: format!(
                    "Pod was rejected: runtime class {class:?} is not offered by node {:?}, which runs {offered} pods",
                    node.config.name,
                ),
            })
        } else {
            None
        };
        // The kubelet's eviction admission: a new pod (no node has started it, nor left a
        // run of it here) that requests nothing is not taken on while the node is short of
        // memory. Decided once what was left is adopted.
        let evicted_on_admission = status.start_time.is_none()
            && node.memory_pressure.load(std::sync::atomic::Ordering::Relaxed)
            && status::qos_class(spec.containers.iter().chain(spec.init_containers.iter().flatten())) == "BestEffort";
        let deadline = spec.active_deadline_seconds.map(|secs| {
            let elapsed = Timestamp::now().duration_since(start_time).unsigned_abs();
            Instant::now() + Duration::from_secs(secs.max(0) as u64).saturating_sub(elapsed)
        });
        let mut worker = Worker {
            restart_policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            node,
            class,
            pod,
            entry,
            init,
            main,
            runs: HashMap::new(),
            events,
            sandbox: None,
            objects: Objects::default(),
            watched: None,
            refresh_at: None,
            adopted: false,
            start_time,
            deadline,
            stop,
            stop_by: None,
            gone: false,
            published: None,
            publish_retry: None,
            published_version: 0,
            publishing: None,
            first_seen: status.start_time.is_none().then(Instant::now),
        };
        let statuses = [
            (status.init_container_statuses.unwrap_or_default(), worker.init.len(), Slot::Init as fn(usize) -> Slot),
            (status.container_statuses.unwrap_or_default(), worker.main.len(), Slot::Main),
        ];
        for (statuses, count, slot) in statuses {
            for i in 0..count {
                let name = worker.record(slot(i)).name.clone();
                // A container the status does not show yet may have a run left all the same.
                let status = statuses
                    .iter()
                    .find(|s| s.name == name)
                    .cloned()
                    .unwrap_or_else(|| ContainerStatus { name, ..Default::default() });
                worker.adopt(slot(i), &status);
            }
        }
        if evicted_on_admission && worker.stop.is_none() && !worker.adopted {
            worker.stop = Some(Stop::Rejected {
                reason: "Evicted".into(),
                message: "The node had condition: [MemoryPressure]. ".into(),
            });
        }
        if !worker.runs.is_empty() {
            // Adopted runs' volumes follow their objects and labels from now on, as a start's do.
            worker.watched = Some(Watched::subscribe(&worker.node, &worker.pod));
            worker.refresh_at = Some(Instant::now());
        }
        worker
    }

    /// Adopts the run of the container in `slot` that an earlier run of the agent left, if
    /// its runtime still holds it (a Linux container outlives the agent; a wasm guest does
    /// not): the one `status` says was running, else the newest the runtime knows was made for
    /// the container after the status was written (during its `postStart` hook, or while the
    /// API server was out of reach), as the kubelet learns its containers from the runtime.
    /// The record is running again, with no restart counted (nor a `postStart` hook run again,
    /// as the kubelet's), and the run's end is reported as any other's.
    fn adopt(&mut self, slot: Slot, status: &ContainerStatus) {
        let name = status.name.clone();
        let state = status.state.clone().unwrap_or_default();
        let shown_running = state.running.as_ref().zip(status.container_id.as_deref()).map(|(running, id)| {
            (id.to_string(), status.restart_count, running.started_at.as_ref().map_or_else(Timestamp::now, |t| t.0))
        });
        let adopted = match shown_running {
            Some((id, attempt, started_at)) => self.adopt_run(&name, id, attempt, started_at),
            None => Ok(None),
        };
        let (adopted, begun_after_status) = match adopted {
            Ok(Some(adopted)) => (adopted, false),
            // The run the status shows is held, but cannot be taken up: not another in its place.
            Err(()) => return,
            Ok(None) => {
                let Some(left) = self.node.runtimes.left_behind(self.uid(), &name) else { return };
                // A run the status shows ended was reported; one older than its run is not
                // the newest.
                let reported =
                    [state.terminated.as_ref(), status.last_state.as_ref().and_then(|s| s.terminated.as_ref())]
                        .into_iter()
                        .flatten()
                        .any(|ended| ended.container_id.as_deref() == Some(left.id.as_str()));
                // Nor one the pod could not have got to as recorded: a regular init container
                // before it whose end went with the agent would run again beside it.
                if reported || left.attempt < status.restart_count || !self.initialized_before(slot) {
                    return;
                }
                let Ok(Some(adopted)) = self.adopt_run(&name, left.id, left.attempt, left.created) else { return };
                (adopted, true)
            }
        };
        let Adopted { started, log, container_id, attempt, started_at } = adopted;
        let Started { control, usage, exit } = started;
        let record = self.record(slot);
        let shown = std::mem::replace(&mut record.run, Run::Starting { shown: None });
        // The run the status shows ended (or gone with the agent) is the one before it.
        if let (true, Run::Exited(previous)) = (begun_after_status, shown) {
            record.last = Some(previous);
        }
        record.restart_count = attempt;
        record.exited_at = None;
        let (events, image_id) = (self.events.clone(), status.image_id.clone());
        // The run can be stopped before its start is applied (a pod deleted while no agent ran).
        let held = control.clone();
        let task = tokio::spawn(async move {
            let id = container_id.clone();
            let _ = events.send(RunEvent::Started {
                slot,
                attempt,
                image_id,
                container_id: id,
                started_at,
                control,
                usage,
                adopted: true,
            });
            let exit = exit.await;
            let _ = events.send(RunEvent::Exited { slot, attempt, exit, started_at, container_id });
        });
        let mut run = ActiveRun::new(attempt, task, log);
        run.control = Some(held);
        self.runs.insert(slot, run);
        self.adopted = true;
    }

    /// Adopts the run `container_id` (number `attempt`) of the container `name` from its
    /// runtime, its output going to that run's log: `None` when the runtime holds no such run,
    /// an error (logged) when it holds one that cannot be taken up.
    fn adopt_run(
        &self,
        name: &str,
        container_id: String,
        attempt: i32,
        started_at: Timestamp,
    ) -> Result<Option<Adopted>, ()> {
        let log_dir = logs::pod_dir(&self.node.logs_dir, self.namespace(), self.name(), self.uid());
        // Opened when first written to: this runs on an async thread.
        let log = Arc::new(ContainerLog::deferred(logs::container_path(&log_dir, name, attempt)));
        match self.node.runtimes.adopt(self.uid(), &container_id, log.clone(), started_at) {
            None => Ok(None),
            Some(Ok(started)) => Ok(Some(Adopted { started, log, container_id, attempt, started_at })),
            Some(Err(err)) => {
                tracing::warn!(pod = self.name(), container = name, %err, "cannot adopt a container left running");
                Err(())
            }
        }
    }

    /// Whether every regular init container before `slot` is recorded as completed.
    fn initialized_before(&self, slot: Slot) -> bool {
        let before = match slot {
            Slot::Init(i) => &self.init[..i],
            Slot::Main(_) => &self.init[..],
        };
        before.iter().all(|c| c.sidecar || matches!(&c.run, Run::Exited(ended) if ended.exit_code == 0))
    }

    pub(super) async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Pod>>,
        mut events: mpsc::UnboundedReceiver<RunEvent>,
    ) {
        loop {
            self.observe_stop();
            let terminal = self.is_terminal();
            if self.sandbox.is_none() && self.stop.is_none() && !terminal {
                self.create_sandbox();
            }
            let now = Instant::now();
            let mut view = PodView {
                restart_policy: self.restart_policy,
                stopping: self.stop.is_some(),
                stop_by: self.stop_by,
                init: &self.init,
                main: &self.main,
            };
            // A shorter grace period than the one it began with (a second deletion's, a force
            // deletion's) brings the end forward.
            if view.winding_down() {
                let by = now + self.grace_period();
                self.stop_by = Some(self.stop_by.map_or(by, |t| t.min(by)));
                view.stop_by = self.stop_by;
            }
            let planned = plan::plan(&view, now);
            for slot in planned.pre_stop {
                self.pre_stop(slot);
            }
            for slot in planned.kill {
                let name = self.record(slot).name.clone();
                self.kill(slot, format!("Stopping container {name}"));
            }
            // A run told to stop (a failed liveness probe) that outlived its grace period.
            let overdue: Vec<Slot> = (self.runs.iter())
                .filter(|(_, run)| !run.killed && run.killed_at.is_some_and(|at| now >= at))
                .map(|(slot, _)| *slot)
                .collect();
            for slot in overdue {
                self.kill(slot, String::new());
            }
            // A start that failed at once (its volumes, say) lets the next container start:
            // plan again.
            let started = !planned.start.is_empty() && self.sandbox.is_some();
            for slot in planned.start {
                self.start(slot).await;
            }
            self.report_backoffs();
            self.publish();
            self.update_entry();
            if self.is_terminal() && self.runs.is_empty() {
                self.release_sandbox();
                // The pod's last status is written before the pod is removed (the kubelet's
                // status manager deletes a pod only once its final status is stored).
                let deleted = self.stop == Some(Stop::Deleted) && !self.gone;
                if self.gone || (deleted && self.flush().await && self.delete().await) {
                    self.clean_up();
                    return;
                }
            }
            let mut wake = planned.wake_at;
            let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
            if started {
                at(Instant::now());
            }
            if let Some(deadline) = self.deadline.filter(|_| self.stop.is_none() && !self.is_terminal()) {
                at(deadline);
            }
            // A container told to stop is killed when its grace period is over.
            if let Some(killed_at) = self.runs.values().filter(|run| !run.killed).filter_map(|run| run.killed_at).min()
            {
                at(killed_at);
            }
            // (The retried write under way is waited for instead.)
            if let Some(retry) = self.publish_retry.filter(|_| self.publishing.is_none()) {
                at(retry);
            }
            if let Some(refresh) = self.refresh_at {
                at(refresh);
            }
            if self.stop == Some(Stop::Deleted) && self.runs.is_empty() {
                at(Instant::now() + API_RETRY);
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let (publishing, watched) = (&mut self.publishing, &mut self.watched);
            let published = async {
                match publishing {
                    Some((_, write)) => write.await,
                    None => std::future::pending().await,
                }
            };
            let objects_changed = async {
                match watched {
                    Some(watched) => watched.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                written = published => self.published(written),
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The agent is shutting down: its wasm guests end with it; its Linux
                        // containers run on, for the next agent to adopt, in the pod's
                        // sandbox, which stays.
                        self.end_runs();
                        return;
                    }
                    let update = updates.borrow_and_update().clone();
                    match update {
                        Some(pod) if pod.metadata.uid == self.pod.metadata.uid => {
                            // The event of a write before this worker's last one would take the
                            // status back (and its conditions' times with it): the rest is news.
                            let stale = flotilla_client::resource_version(&pod) < self.published_version;
                            let status = if stale { self.pod.status.take() } else { pod.status.clone() };
                            // A downwardAPI volume's labels and annotations follow the pod's.
                            let (old, new) = (&self.pod.metadata, &pod.metadata);
                            let relabelled = old.labels != new.labels || old.annotations != new.annotations;
                            self.pod = pod;
                            self.pod.status = status;
                            if relabelled {
                                self.refresh_projections().await;
                            }
                        }
                        _ => self.gone = true,
                    }
                }
                Some(event) = events.recv() => self.apply(event).await,
                () = objects_changed => self.refresh_projections().await,
                () = sleep => {
                    if self.refresh_at.is_some_and(|at| at <= Instant::now()) {
                        self.refresh_projections().await;
                    }
                }
            }
        }
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    fn record(&mut self, slot: Slot) -> &mut ContainerRecord {
        match slot {
            Slot::Init(i) => &mut self.init[i],
            Slot::Main(i) => &mut self.main[i],
        }
    }

    fn record_ref(&self, slot: Slot) -> &ContainerRecord {
        match slot {
            Slot::Init(i) => &self.init[i],
            Slot::Main(i) => &self.main[i],
        }
    }

    fn container(&self, slot: Slot) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        match slot {
            Slot::Init(i) => spec.init_containers.as_ref()?.get(i).cloned(),
            Slot::Main(i) => spec.containers.get(i).cloned(),
        }
    }

    fn observe_stop(&mut self) {
        if self.stop.is_some() {
            return;
        }
        if self.gone || self.pod.metadata.deletion_timestamp.is_some() {
            self.stop = Some(Stop::Deleted);
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) && !self.is_terminal() {
            self.stop = Some(Stop::DeadlineExceeded);
            self.node.events.pod(
                &self.pod,
                None,
                Warning,
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline".into(),
            );
        }
    }

    /// Whether the pod has reached its end: stopped for good, or in a terminal phase.
    fn is_terminal(&self) -> bool {
        let active = self.init.iter().chain(&self.main).any(ContainerRecord::is_active);
        if active {
            return false;
        }
        self.stop.is_some() || status::is_terminal_phase(self.render().phase.as_deref())
    }

    fn create_sandbox(&mut self) {
        let ip = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| self.node.addresses.reserve(*ip))
            .or_else(|| self.node.addresses.allocate());
        let Some(ip) = ip else {
            let range = self.node.addresses.range();
            self.node.events.pod(
                &self.pod,
                None,
                Warning,
                "FailedCreatePodSandBox",
                format!("no free address in the pod range {range}"),
            );
            return;
        };
        let dir = self.node.pods_dir.join(self.uid());
        self.sandbox = Some(Sandbox { ip, dir, shares_netns: self.may_mix_runtimes() });
    }

    /// Whether the pod may mix wasm and Linux containers, which then share one network
    /// namespace (made before the first of them starts, so that localhost is one place for
    /// all): a pod of more than one container that names no runtime class, unless every one of
    /// its images is a wasm module in the node's store. (One whose images are not here yet
    /// shares one too: which they are is known only once they are pulled, and a namespace
    /// serves wasm containers just as well.) On a node that gives pods no namespace, none.
    fn may_mix_runtimes(&self) -> bool {
        let Some(spec) = self.pod.spec.as_ref() else { return false };
        let mut images = spec.init_containers.iter().flatten().chain(&spec.containers).map(|c| c.image.as_deref());
        self.class.is_none()
            && spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len) > 1
            && !images.all(|image| {
                let reference = image.and_then(|i| Reference::parse(i).ok());
                reference.and_then(|r| self.node.images.store().lookup(&r)).is_some_and(|i| i.kind == Kind::Module)
            })
    }

    fn release_sandbox(&mut self) {
        // Nothing of the pod starts again: its objects' watches go too.
        self.watched = None;
        self.refresh_at = None;
        let sandbox = self.sandbox.take();
        if let Some(sandbox) = &sandbox {
            self.node.addresses.release(sandbox.ip);
        }
        // What an adopted run left is the runtime's to remove, sandbox recorded or not.
        if sandbox.is_some() || std::mem::take(&mut self.adopted) {
            self.node.runtimes.release(self.uid());
        }
    }

    /// Reads the ConfigMaps and Secrets the pod refers to, watching them from now on, waiting at
    /// most `wait` for the first lists.
    async fn read_objects(&mut self, wait: Duration) -> Result<(), String> {
        let watched = self.watched.get_or_insert_with(|| Watched::subscribe(&self.node, &self.pod));
        self.objects = watched.read(wait).await?;
        Ok(())
    }

    /// Makes (or refreshes) the pod's volumes from the objects last read, off the async threads:
    /// it writes files.
    async fn prepare_volumes(&self, dir: PathBuf) -> Result<Volumes, String> {
        let (pod, objects, allow_host_path) =
            (self.pod.clone(), self.objects.clone(), self.node.config.allow_host_path);
        tokio::task::spawn_blocking(move || volumes::prepare(&pod, &dir, &objects, allow_host_path))
            .await
            .map_err(|e| format!("preparing the pod's volumes: {e}"))?
    }

    /// Writes the projected volumes' files again, from the objects as they are now and the pod's
    /// labels and annotations, once its containers have started. It waits for nothing (an object
    /// not listed yet is a change to come); one that fails is tried again shortly.
    async fn refresh_projections(&mut self) {
        // Set again below if this one fails: a time left in the past would wake the loop at
        // once, again and again.
        self.refresh_at = None;
        if self.watched.is_none() {
            return;
        }
        // Read whatever follows: what was read is what the next change is told from.
        let read = self.read_objects(Duration::ZERO).await;
        if self.is_terminal() {
            return;
        }
        // An adopted pod before its sandbox is recorded: refreshed once it is.
        let Some(dir) = self.sandbox.as_ref().map(|s| s.dir.clone()) else {
            self.refresh_at = Some(Instant::now() + API_RETRY);
            return;
        };
        // An object not listed yet is read again soon; a volume that cannot be made (its
        // ConfigMap deleted, say) is tried again at the kubelet's pod sync period, or when one
        // of its objects changes.
        let failed = match read {
            Ok(()) => self.prepare_volumes(dir).await.err().map(|err| (err, REFRESH_RETRY)),
            Err(err) => Some((err, API_RETRY)),
        };
        self.refresh_at = failed.map(|(err, retry)| {
            tracing::debug!(pod = self.name(), %err, "cannot refresh projected volumes");
            Instant::now() + retry
        });
    }

    async fn start(&mut self, slot: Slot) {
        let now = Instant::now();
        let Some(container) = self.container(slot) else { return };
        let Some(sandbox) = &self.sandbox else { return };
        let (ip, dir, shares_netns) = (sandbox.ip, sandbox.dir.clone(), sandbox.shares_netns);
        {
            let record = self.record(slot);
            if let (Run::Exited(_), Some(exited_at)) = (&record.run, record.exited_at) {
                record.backoff.next(exited_at);
            }
            record.begin();
        }
        let attempt = self.record(slot).restart_count;
        let log_dir = logs::pod_dir(&self.node.logs_dir, self.namespace(), self.name(), self.uid());
        let path = logs::container_path(&log_dir, &container.name, attempt);
        // The kubelet keeps the logs of the current and the previous run (`--previous`).
        let stale = (attempt >= 2).then(|| logs::container_path(&log_dir, &container.name, attempt - 2));
        let (pod_dir, spec, hollow) = (dir.clone(), container.clone(), self.node.hollow);
        let created = tokio::task::spawn_blocking(move || {
            if let Some(stale) = stale {
                let _ = std::fs::remove_file(stale);
            }
            // A hollow node's runs write nothing: a file held open for each would only run the
            // process out of descriptors.
            let log = if hollow { ContainerLog::deferred(path) } else { ContainerLog::create(path)? };
            Ok((log, termination::prepare(&pod_dir, &spec, attempt)?))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let (log, termination) = match created {
            Ok((log, termination)) => (Arc::new(log), termination),
            Err(err) => {
                let message = format!("cannot create the container's log or termination message file: {err}");
                self.record(slot).failed_to_start("CreateContainerError", message, now);
                return;
            }
        };
        let prepared = match self.read_objects(SYNC_TIMEOUT).await {
            Ok(()) => self.prepare_volumes(dir).await,
            Err(err) => Err(err),
        };
        let prepared = prepared.and_then(|volumes| self.launch(&container, attempt, ip, &volumes, log.clone()));
        let prepared = prepared.map(|mut launch| {
            launch.mounts.extend(termination);
            launch
        });
        let launch = match prepared {
            Ok(launch) => launch,
            Err(message) => {
                log.close();
                self.node.events.pod(&self.pod, Some(&container.name), Warning, "Failed", format!("Error: {message}"));
                self.record(slot).failed_to_start("CreateContainerConfigError", message, now);
                return;
            }
        };
        let task = tokio::spawn(run_container(RunRequest {
            node: self.node.clone(),
            class: self.class.clone(),
            shares_netns,
            pod: self.pod.clone(),
            container,
            slot,
            attempt,
            launch,
            events: self.events.clone(),
        }));
        let run = ActiveRun::new(attempt, task, log);
        self.runs.insert(slot, run);
    }

    /// One run of `container` as the node works it out (argv, env, mounts, limits), or why it
    /// cannot be had.
    fn launch(
        &self,
        container: &Container,
        attempt: i32,
        ip: Ipv4Addr,
        volumes: &Volumes,
        output: Arc<ContainerLog>,
    ) -> Result<Launch, String> {
        let ip_text = ip.to_string();
        let placement = Placement {
            pod_ip: &ip_text,
            host_ip: &self.node.config.node_ip.to_string(),
            node_name: &self.node.config.name,
            node_cpu: self.node.capacity.cpu,
            node_memory: self.node.capacity.memory,
        };
        let services: Vec<_> = self
            .node
            .services
            .state()
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(self.namespace()) || env::is_api_service(s))
            .map(|s| (**s).clone())
            .collect();
        let environment = env::environment(&self.pod, container, &placement, &self.objects, &services)?;
        let (command, args) = env::command(container, &environment);
        let mounts = volumes::mounts(container, volumes, &environment)?;
        let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
        let quantity = |name: &str| -> Result<Option<i128>, String> {
            limits
                .and_then(|l| l.get(name))
                .map(|q| flotilla_api::quantity::parse(&q.0).map_err(|e| format!("resources.limits.{name}: {e}")))
                .transpose()
        };
        let memory_limit = quantity("memory")?.map(|nanos| u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX));
        let cpu_limit = quantity("cpu")?.map(|nanos| nanos as f64 / 1e9);
        let cpu_request = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .map(|q| flotilla_api::quantity::parse(&q.0).map_err(|e| format!("resources.requests.cpu: {e}")))
            .transpose()?
            .map(|nanos| nanos as f64 / 1e9);
        let ports = container
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        // Unique to this run, whatever an earlier agent made of the same attempt (one it left
        // running, unknown to the status it published, keeps its own).
        let nonce = Timestamp::now().as_nanosecond();
        let id = crate::images::sha256(
            format!("{:?}/{}/{attempt}/{nonce}", self.pod.metadata.uid, container.name).as_bytes(),
        );
        let spec = self.pod.spec.as_ref();
        let containers = spec.iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
        let mut init_containers = spec.iter().flat_map(|s| s.init_containers.iter().flatten());
        let runs_to_completion = !plan::is_sidecar(container) && init_containers.any(|c| c.name == container.name);
        Ok(Launch {
            namespace: self.namespace().to_string(),
            pod_name: self.name().to_string(),
            pod_uid: self.uid().to_string(),
            container: container.name.clone(),
            hostname: hostname(&self.pod),
            qos: status::qos_class(containers),
            cpu_request,
            security: security(self.pod.spec.as_ref(), container),
            share_pids: self.pod.spec.as_ref().and_then(|s| s.share_process_namespace).unwrap_or(false),
            id: id["sha256:".len()..].to_string(),
            attempt,
            command,
            args,
            env: environment,
            working_dir: container.working_dir.clone(),
            mounts,
            memory_limit,
            cpu_limit,
            pod_ip: ip,
            netns: None,
            dns: self.node.services.state().iter().find_map(|s| {
                let (namespace, name) = flotilla_net::DNS_SERVICE;
                let ours =
                    s.metadata.namespace.as_deref() == Some(namespace) && s.metadata.name.as_deref() == Some(name);
                s.spec.as_ref()?.cluster_ip.as_ref()?.parse().ok().filter(|_| ours)
            }),
            ports,
            http_concurrency: http_concurrency(&self.pod)?,
            output,
            runs_to_completion,
        })
    }

    async fn apply(&mut self, event: RunEvent) {
        match event {
            RunEvent::Evict { message } => {
                if self.stop.is_none() && !self.is_terminal() {
                    self.node.events.pod(&self.pod, None, Warning, "Evicted", message.clone());
                    self.stop = Some(Stop::Evicted { message });
                }
            }
            RunEvent::Started { slot, attempt, image_id, container_id, started_at, control, usage, adopted } => {
                if !self.is_current(slot, attempt) {
                    return;
                }
                let name = self.record(slot).name.clone();
                self.entry.usage.lock().expect("pod entry lock").insert(name.clone(), usage);
                self.entry.running.lock().expect("pod entry lock").insert(name, control.clone());
                if let Some(run) = self.runs.get_mut(&slot) {
                    run.control = Some(control);
                }
                self.record(slot).image_id = Some(image_id);
                // As the kubelet: a container is running once its postStart hook is done.
                if !adopted && self.run_hook(slot, attempt, Hook::PostStart, POST_START_TIMEOUT) {
                    if let Some(run) = self.runs.get_mut(&slot) {
                        run.started = Some((started_at, container_id));
                    }
                } else {
                    self.record(slot).running(started_at, container_id);
                    self.start_probes(slot, attempt);
                }
            }
            RunEvent::Hook { slot, attempt, hook, result } => {
                if !self.is_current(slot, attempt) {
                    return;
                }
                let Some(run) = self.runs.get_mut(&slot) else { return };
                // The end of the hook that runs: one given up on (a postStart as the container
                // is stopped, a preStop past the grace period) is done with.
                match run.hook.take() {
                    Some((running, _)) if running == hook => {}
                    other => {
                        run.hook = other;
                        return;
                    }
                }
                let (started, deadline, awaiting_turn) = (run.started.take(), run.killed_at, run.awaiting_turn);
                let name = self.record(slot).name.clone();
                match (hook, result) {
                    (Hook::PostStart, Ok(())) => {
                        if let Some((started_at, container_id)) = started {
                            self.record(slot).running(started_at, container_id);
                            self.start_probes(slot, attempt);
                        }
                    }
                    (Hook::PostStart, Err(message)) => {
                        self.node.events.pod(&self.pod, Some(&name), Warning, "FailedPostStartHook", message);
                        self.kill(slot, "FailedPostStartHook".into());
                    }
                    (Hook::PreStop, result) => {
                        if let Err(error) = result {
                            tracing::warn!(pod = self.name(), container = name, %error, "a preStop hook failed");
                            // Upstream's words alone: the hook's own may carry secrets.
                            let message = "PreStopHook failed".to_string();
                            self.node.events.pod(&self.pod, Some(&name), Warning, "FailedPreStopHook", message);
                        }
                        // What the hook left of the grace period is the container's, once its
                        // turn to stop has come.
                        if !awaiting_turn {
                            self.terminate(slot, deadline.unwrap_or_else(Instant::now));
                        }
                    }
                }
            }
            RunEvent::Probe { slot, attempt, finding } => {
                if !self.is_current(slot, attempt) {
                    return;
                }
                let name = self.record(slot).name.clone();
                match finding {
                    Finding::Started => self.record(slot).started = true,
                    Finding::Ready(ready) => self.record(slot).ready = ready,
                    Finding::Failed { probe, message } => {
                        let message = format!("{probe} probe failed: {message}");
                        self.node.events.pod(&self.pod, Some(&name), Warning, "Unhealthy", message);
                    }
                    // A container told to stop is not restarted for a failed probe: a sidecar
                    // waiting for its turn to stop stays until then, as upstream's would.
                    Finding::Unhealthy { .. } if self.runs.get(&slot).is_some_and(|run| run.killed_at.is_some()) => {}
                    Finding::Unhealthy { probe } => {
                        let why = format!("Container {name} failed {} probe, will be restarted", probe.to_lowercase());
                        self.kill(slot, why);
                    }
                }
            }
            RunEvent::StartFailed { slot, attempt, failure } => {
                if !self.is_current(slot, attempt) {
                    return;
                }
                if let Some(run) = self.runs.remove(&slot) {
                    run.end();
                }
                self.ended(slot);
                let image = self.record(slot).image.clone();
                let message = failure.to_string();
                self.record(slot).failed_to_start(failure.reason(), message.clone(), Instant::now());
                if let StartFailure::Image(ImageError::Pull(_)) = failure {
                    // As upstream: the error is shown, then the back-off until the next try.
                    self.flush().await;
                    self.record(slot).run = Run::Waiting {
                        reason: "ImagePullBackOff".into(),
                        message: Some(format!("Back-off pulling image \"{image}\": {message}")),
                    };
                    let container = self.record(slot).name.clone();
                    self.node.events.pod(
                        &self.pod,
                        Some(&container),
                        Normal,
                        "BackOff",
                        format!("Back-off pulling image \"{image}\""),
                    );
                    self.node.events.pod(
                        &self.pod,
                        Some(&container),
                        Warning,
                        "Failed",
                        "Error: ImagePullBackOff".into(),
                    );
                }
            }
            RunEvent::Exited { slot, attempt, exit, started_at, container_id } => {
                if !self.is_current(slot, attempt) {
                    return;
                }
                if let Some(run) = self.runs.remove(&slot) {
                    let log = run.log.clone();
                    run.end();
                    // What it wrote is in its log before its end is shown: `kubectl logs` of a
                    // pod that has completed reads it all.
                    let _ = tokio::time::timeout(LOG_FLUSH_WAIT, log.closed()).await;
                }
                self.ended(slot);
                let Exit { code, reason, mut message } = exit;
                // What the container left as its termination message follows the runtime's
                // words, as upstream joins them.
                if let Some(container) = self.container(slot) {
                    let pod_dir = self.node.pods_dir.join(self.uid());
                    let log_dir = logs::pod_dir(&self.node.logs_dir, self.namespace(), self.name(), self.uid());
                    if let Some(left) = termination::message(&pod_dir, &log_dir, &container, attempt, code).await {
                        message = Some(match message {
                            Some(said) if !said.is_empty() => format!("{said}: {left}"),
                            _ => left,
                        });
                    }
                }
                let ended = Terminated {
                    exit_code: code,
                    reason: reason.as_str().into(),
                    message,
                    started_at,
                    finished_at: Timestamp::now(),
                    container_id,
                };
                self.record(slot).exit(ended, Instant::now());
            }
        }
    }

    /// A run of the container in `slot` ended: it uses nothing more.
    fn ended(&mut self, slot: Slot) {
        let name = self.record(slot).name.clone();
        self.entry.usage.lock().expect("pod entry lock").remove(&name);
        self.entry.running.lock().expect("pod entry lock").remove(&name);
    }

    fn is_current(&mut self, slot: Slot, attempt: i32) -> bool {
        self.runs.get(&slot).is_some_and(|run| run.attempt == attempt)
    }

    /// How long a container told to stop has before it is killed: the deletion's grace period,
    /// else the pod's `terminationGracePeriodSeconds` (30 s by default), as the kubelet's. A pod
    /// gone from the API (force-deleted) has at most the kubelet's minimum, 2 s; one evicted, 1 s.
    fn grace_period(&self) -> Duration {
        if let Some(Stop::Evicted { .. }) = self.stop {
            return EVICTION_GRACE_PERIOD;
        }
        let spec = self.pod.spec.as_ref();
        let seconds =
            self.pod.metadata.deletion_grace_period_seconds.or_else(|| spec?.termination_grace_period_seconds);
        let seconds = u64::try_from(seconds.unwrap_or(30)).unwrap_or(0);
        let grace = Duration::from_secs(seconds);
        if self.gone { grace.min(MINIMUM_GRACE_PERIOD) } else { grace }
    }

    /// Ends a run: for good when the pod stops, or to restart it (a failed liveness probe).
    /// `why` is the `Killing` event's message. A container that can hear it is told to stop
    /// first, and killed only if it has not ended within the grace period, as the kubelet sends
    /// SIGTERM, then SIGKILL; it is called again until then. A container with a `preStop` hook
    /// runs it first, within the grace period; what the hook leaves of it (2 s at the least) is
    /// the container's. A killed run's end is reported by its runtime, as any other end.
    fn kill(&mut self, slot: Slot, why: String) {
        let now = Instant::now();
        // A pod winding down has what is left of its grace period (its sidecars stop after its
        // other containers), 2 s at the least, as upstream gives each container.
        let grace = match (self.grace_period(), self.stop_by) {
            (grace, Some(by)) if !grace.is_zero() => by.saturating_duration_since(now).max(MINIMUM_GRACE_PERIOD),
            (grace, _) => grace,
        };
        let pre_stop = self.container(slot).is_some_and(|c| Hook::PreStop.handler(&c).is_some());
        let Some(run) = self.runs.get_mut(&slot) else { return };
        let told = run.killed_at.is_some() || run.killed;
        // Told already: a shorter grace period since (a second deletion's) brings its end forward.
        if let Some(at) = run.killed_at {
            run.killed_at = Some(at.min(now + grace.max(MINIMUM_GRACE_PERIOD)));
        }
        let Some(control) = run.control.clone() else {
            // Not started yet (its image is being pulled, or its run made): nothing runs to
            // stop, and the run ends here.
            let Some(run) = self.runs.remove(&slot) else { return };
            run.end();
            self.ended(slot);
            let record = self.record(slot);
            let name = record.name.clone();
            let killed = Exit::killed();
            let ended = Terminated {
                exit_code: killed.code,
                reason: killed.reason.as_str().into(),
                message: None,
                started_at: Timestamp::now(),
                finished_at: Timestamp::now(),
                container_id: String::new(),
            };
            record.exit(ended, Instant::now());
            if !told {
                self.node.events.pod(&self.pod, Some(&name), Normal, "Killing", why);
            }
            return;
        };
        if run.killed {
            return;
        }
        // A postStart hook still running is given up on: the container is to stop.
        if let Some((Hook::PostStart, hook)) = run.hook.take_if(|(hook, _)| *hook == Hook::PostStart) {
            hook.abort();
        }
        match run.killed_at {
            // Its preStop hook runs: the container is told to stop once it is done, or once
            // the grace period is over, whichever comes first.
            Some(at) if run.hook.is_some() => {
                run.awaiting_turn = false;
                if now >= at {
                    if let Some((_, hook)) = run.hook.take() {
                        hook.abort();
                    }
                    self.terminate(slot, now);
                }
                return;
            }
            // A sidecar whose preStop hook ran while it waited: its turn has come.
            Some(at) if std::mem::take(&mut run.awaiting_turn) => {
                self.terminate(slot, at);
                return;
            }
            None if !grace.is_zero() => {
                run.killed_at = Some(now + grace);
                let attempt = run.attempt;
                let name = self.record(slot).name.clone();
                self.node.events.pod(&self.pod, Some(&name), Normal, "Killing", why);
                if !(pre_stop && self.run_hook(slot, attempt, Hook::PreStop, grace)) {
                    self.terminate(slot, now + grace);
                }
                return;
            }
            Some(at) if now < at => return,
            _ => {}
        }
        control.kill();
        run.killed = true;
        if !told {
            let name = self.record(slot).name.clone();
            self.node.events.pod(&self.pod, Some(&name), Normal, "Killing", why);
        }
    }

    /// Tells a sidecar of a pod winding down that its turn to stop is coming, as upstream's
    /// `killContainer` does before it waits for that turn: its `preStop` hook runs now, within
    /// the pod's grace period, and it is told to stop once its turn has come
    /// ([`kill`](Self::kill)).
    fn pre_stop(&mut self, slot: Slot) {
        let Some(by) = self.stop_by else { return };
        let name = self.record(slot).name.clone();
        let pre_stop = self.container(slot).is_some_and(|c| Hook::PreStop.handler(&c).is_some());
        let Some(run) = self.runs.get_mut(&slot) else { return };
        if run.control.is_none() || run.killed_at.is_some() || run.killed {
            return;
        }
        if let Some((Hook::PostStart, hook)) = run.hook.take_if(|(hook, _)| *hook == Hook::PostStart) {
            hook.abort();
        }
        run.killed_at = Some(by);
        run.awaiting_turn = true;
        let attempt = run.attempt;
        self.node.events.pod(&self.pod, Some(&name), Normal, "Killing", format!("Stopping container {name}"));
        if pre_stop {
            self.run_hook(slot, attempt, Hook::PreStop, by.saturating_duration_since(Instant::now()));
        }
    }

    /// Tells the run in `slot` to stop, as SIGTERM does, to be killed at `deadline` (at the
    /// earliest 2 s from now, the kubelet's minimum); one that cannot hear it is killed now.
    fn terminate(&mut self, slot: Slot, deadline: Instant) {
        let Some(run) = self.runs.get_mut(&slot) else { return };
        let Some(control) = run.control.clone() else { return };
        if control.terminate() {
            run.killed_at = Some(deadline.max(Instant::now() + MINIMUM_GRACE_PERIOD));
        } else {
            control.kill();
            run.killed = true;
        }
    }

    /// Runs the container's `hook`, if it has one, for at most `timeout`: whether it does. Its
    /// end comes back as [`RunEvent::Hook`].
    fn run_hook(&mut self, slot: Slot, attempt: i32, hook: Hook, timeout: Duration) -> bool {
        let Some(container) = self.container(slot) else { return false };
        let (Some(handler), Some(sandbox)) = (hook.handler(&container).cloned(), &self.sandbox) else { return false };
        let pod = format!("{}_{}({})", self.name(), self.namespace(), self.uid());
        let (ip, client, events) = (sandbox.ip.into(), self.node.probe_client.clone(), self.events.clone());
        let hosted = self.hosted(slot);
        let Some(run) = self.runs.get_mut(&slot) else { return false };
        let Some(control) = run.control.clone() else { return false };
        let task = tokio::spawn(async move {
            let target = hooks::Target { ip, hosted, client, control };
            let result = hooks::run(&handler, &container, &pod, target, timeout).await;
            let _ = events.send(RunEvent::Hook { slot, attempt, hook, result });
        });
        run.hook = Some((hook, task));
        true
    }

    /// Probes the run that just started, if its container has probes; without any it is started
    /// and ready at once.
    fn start_probes(&mut self, slot: Slot, attempt: i32) {
        let Some(container) = self.container(slot) else { return };
        let probed = container.startup_probe.is_some()
            || container.liveness_probe.is_some()
            || container.readiness_probe.is_some();
        let (Some(sandbox), true, true) = (&self.sandbox, self.runs.contains_key(&slot), probed) else {
            let record = self.record(slot);
            record.started = true;
            record.ready = true;
            return;
        };
        let events = self.events.clone();
        let report = move |finding| {
            let _ = events.send(RunEvent::Probe { slot, attempt, finding });
        };
        let (client, ip) = (self.node.probe_client.clone(), sandbox.ip.into());
        let hosted = self.hosted(slot);
        let Some(run) = self.runs.get_mut(&slot) else { return };
        let Some(control) = run.control.clone() else { return };
        run.probes = Some(tokio::spawn(probes::run(container, ip, hosted, client, control, report)));
    }

    /// Whether the pod's address is one of the host's for the run in `slot`, which its probes
    /// and hooks must then keep from the node's own endpoints: a wasm guest's is, unless its
    /// pod has a network namespace (one that mixes runtimes); a Linux container's is not.
    fn hosted(&self, slot: Slot) -> bool {
        if self.sandbox.as_ref().is_some_and(|s| s.shares_netns) {
            return false;
        }
        let id = match &self.record_ref(slot).run {
            Run::Running { container_id, .. } => Some(container_id.as_str()),
            _ => self.runs.get(&slot).and_then(|run| run.started.as_ref()).map(|(_, id)| id.as_str()),
        };
        let runtime = id.and_then(|id| id.split_once("://")).and_then(|(handler, _)| self.node.runtimes.get(handler));
        !runtime.is_some_and(|r| r.isolates_network())
    }

    /// The pod is done on the node: every run ends, and its sandbox goes.
    fn abort_all(&mut self) {
        self.end_runs();
        self.release_sandbox();
    }

    /// Every run's task ends (a container a runtime runs outside the agent, it keeps running).
    fn end_runs(&mut self) {
        if let Some((_, write)) = self.publishing.take() {
            write.abort();
        }
        for (_, run) in self.runs.drain() {
            run.end();
        }
    }

    /// One `BackOff` event per wait, as the kubelet writes one per sync that backs off.
    fn report_backoffs(&mut self) {
        // Nothing restarts once the pod stops or its regular containers are done.
        let stopping = self.stop.is_some() || plan::finished(self.restart_policy, &self.init, &self.main);
        let (pod, namespace, uid) = (self.name().to_string(), self.namespace().to_string(), self.uid().to_string());
        let mut waiting = Vec::new();
        for record in self.init.iter_mut().chain(self.main.iter_mut()) {
            if matches!(record.run, Run::Exited(_))
                && !record.backoff_reported
                && !stopping
                && let Some(exited_at) = record.exited_at
                && record.backoff.remaining(exited_at, Instant::now()).is_some()
            {
                record.backoff_reported = true;
                waiting.push(record.name.clone());
            }
        }
        for name in waiting {
            let message = format!("Back-off restarting failed container {name} in pod {pod}_{namespace}({uid})");
            self.node.events.pod(&self.pod, Some(&name), Warning, "BackOff", message);
        }
    }

    fn render(&self) -> k8s_openapi::api::core::v1::PodStatus {
        status::render(&StatusInput {
            pod: &self.pod,
            restart_policy: self.restart_policy,
            init: &self.init,
            main: &self.main,
            stop: self.stop.clone(),
            sandbox_ready: self.sandbox.is_some(),
            // A pod keeps its address in its status once it has ended, as upstream shows it.
            pod_ip: self
                .sandbox
                .as_ref()
                .map(|s| s.ip.to_string())
                .or_else(|| self.pod.status.as_ref().and_then(|s| s.pod_ip.clone())),
            host_ip: &self.node.config.node_ip.to_string(),
            start_time: self.start_time,
            now: Timestamp::now(),
        })
    }

    /// Starts writing the pod's status when it differs from what was last written, unless a
    /// write is under way (the loop calls again when that one is done, with the latest) or a
    /// failed one waits to be retried.
    fn publish(&mut self) {
        if self.gone {
            return;
        }
        let rendered = self.render();
        // Upstream's kubelet_pod_start_duration_seconds: first sight to the pod running.
        if rendered.phase.as_deref() == Some(status::PHASE_RUNNING)
            && let Some(seen) = self.first_seen.take()
        {
            self.node.instruments.pod_start.observe(seen.elapsed().as_secs_f64());
        }
        if self.publishing.is_some() || self.publish_retry.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let status = serde_json::to_value(rendered).unwrap_or_default();
        if self.published.as_ref() == Some(&status) {
            return;
        }
        let mut patch = status.clone();
        // A merge patch leaves out what it does not name: clear what the pod no longer has.
        for field in ["reason", "message"] {
            if patch.get(field).is_none() {
                patch[field] = Value::Null;
            }
        }
        let api: Api<Pod> = Api::namespaced(self.node.client.clone(), self.namespace());
        let name = self.name().to_string();
        let write = tokio::spawn(async move {
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"status": patch}))).await
        });
        self.publishing = Some((status, write));
    }

    /// Takes in the end of the status write under way.
    fn published(&mut self, written: Result<kube::Result<Pod>, tokio::task::JoinError>) {
        let Some((status, _)) = self.publishing.take() else { return };
        // A write whose task ended without an answer failed like one the API refused.
        let written = written.unwrap_or_else(|err| Err(kube::Error::Service(err.into())));
        match written {
            Ok(pod) => {
                self.publish_retry = None;
                self.published_version = flotilla_client::resource_version(&pod);
                // The status as stored: what the next rendering starts from (when each
                // condition last changed), so that a status that did not change renders the same.
                if pod.metadata.uid == self.pod.metadata.uid {
                    self.pod.status = pod.status;
                }
                self.published = Some(status);
            }
            Err(kube::Error::Api(err)) if err.code == 404 => self.gone = true,
            Err(err) => {
                tracing::warn!(pod = self.name(), %err, "cannot write the pod's status; retrying");
                self.publish_retry = Some(Instant::now() + API_RETRY);
            }
        }
    }

    /// Writes the pod's status as it is now: waits for the write under way, then for one of
    /// what changed since. Whether that is stored; a write that failed is left to the loop to
    /// retry after [`API_RETRY`].
    async fn flush(&mut self) -> bool {
        if self.publish_retry.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        for _ in 0..2 {
            self.publish();
            let Some((_, write)) = self.publishing.as_mut() else { break };
            let written = write.await;
            self.published(written);
            if self.publish_retry.is_some() {
                return false;
            }
        }
        true
    }

    /// Tells the log server which runs each container has had.
    fn update_entry(&self) {
        let mut containers = self.entry.containers.lock().expect("pod entry lock");
        for (slot, record) in self
            .init
            .iter()
            .enumerate()
            .map(|(i, r)| (Slot::Init(i), r))
            .chain(self.main.iter().enumerate().map(|(i, r)| (Slot::Main(i), r)))
        {
            let live = self.runs.get(&slot).map(|run| run.log.clone());
            let waiting = match &record.run {
                Run::Waiting { reason, .. } => Some(reason.clone()),
                Run::Starting { shown } => Some(shown.as_ref().map_or("ContainerCreating", |(r, _)| r).to_string()),
                _ => None,
            };
            let started = !matches!(record.run, Run::Waiting { .. } | Run::Starting { .. }) || record.restart_count > 0;
            containers.insert(
                record.name.clone(),
                ContainerLogs { restart_count: record.restart_count, live, waiting, started },
            );
        }
    }

    /// The final deletion, once nothing runs: the API server removes the object.
    async fn delete(&mut self) -> bool {
        let api: Api<Pod> = Api::namespaced(self.node.client.clone(), self.namespace());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: self.pod.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(self.name(), &params).await {
            Ok(_) => true,
            Err(kube::Error::Api(err)) if err.code == 404 || err.code == 409 => true,
            Err(err) => {
                tracing::warn!(pod = self.name(), %err, "cannot delete the pod; retrying");
                false
            }
        }
    }

    /// Removes what the pod left on the node: its volumes and its logs (off the async threads:
    /// an emptyDir may hold much).
    fn clean_up(&mut self) {
        self.abort_all();
        let pod_dir = self.node.pods_dir.join(self.uid());
        let log_dir = logs::pod_dir(&self.node.logs_dir, self.namespace(), self.name(), self.uid());
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(pod_dir);
            let _ = std::fs::remove_dir_all(log_dir);
        });
        self.node.pods.remove(self.namespace(), self.name(), self.uid());
    }
}

/// A run adopted from its runtime ([`Worker::adopt_run`]).
struct Adopted {
    started: Started,
    log: Arc<ContainerLog>,
    container_id: String,
    attempt: i32,
    started_at: Timestamp,
}

/// Rebuilds a container's record from the status an earlier run of the agent wrote. A run that
/// was going when the agent stopped is recorded as ended, and the restart policy decides what
/// happens next, as for any other end, unless its runtime still runs it: then the worker
/// adopts it ([`Worker::adopt`]), and the record is running again.
fn restore_record(record: &mut ContainerRecord, status: &ContainerStatus) {
    record.restart_count = status.restart_count;
    record.image_id = Some(status.image_id.clone()).filter(|i| !i.is_empty());
    let terminated = |state: &k8s_openapi::api::core::v1::ContainerStateTerminated| Terminated {
        exit_code: state.exit_code,
        reason: state.reason.clone().unwrap_or_default(),
        message: state.message.clone(),
        started_at: state.started_at.as_ref().map_or_else(Timestamp::now, |t| t.0),
        finished_at: state.finished_at.as_ref().map_or_else(Timestamp::now, |t| t.0),
        container_id: state.container_id.clone().unwrap_or_default(),
    };
    record.last = status.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(terminated);
    let state = status.state.clone().unwrap_or_default();
    if let Some(running) = state.running {
        let ended = Terminated {
            exit_code: 137,
            reason: "ContainerStatusUnknown".into(),
            message: Some("The node agent restarted while the container was running".into()),
            started_at: running.started_at.map_or_else(Timestamp::now, |t| t.0),
            finished_at: Timestamp::now(),
            container_id: status.container_id.clone().unwrap_or_default(),
        };
        record.exit(ended, Instant::now());
    } else if let Some(ended) = state.terminated.as_ref() {
        record.exit(terminated(ended), Instant::now());
    } else if let Some(waiting) = state.waiting.as_ref()
        && let Some(last) = record.last.take()
    {
        // Waiting to restart after a run that ended (`CrashLoopBackOff`): that run is the
        // current one again. Waiting otherwise, a new run had begun, and was counted, but
        // never ran (its start failed, or the agent stopped first): it counts when it begins
        // again.
        record.exit(last, Instant::now());
        let begun = waiting.reason.as_deref() != Some("CrashLoopBackOff");
        record.restart_count = if begun { (status.restart_count - 1).max(0) } else { status.restart_count };
    }
}

/// The kubelet's `minimumGracePeriodInSeconds`: the grace period of a pod removed from the API
/// without one (force-deleted), and the least a container has to stop after its `preStop` hook.
const MINIMUM_GRACE_PERIOD: Duration = Duration::from_secs(2);

/// How long a run's end waits for its output to be in its log.
const LOG_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The grace period of a pod evicted to free memory: the kubelet's for a hard eviction
/// (`immediateEvictionGracePeriodSeconds`), so that the memory is had back soon.
const EVICTION_GRACE_PERIOD: Duration = Duration::from_secs(1);

/// How long a `postStart` hook may run: the kubelet sets no bound, and neither does this but in
/// name (the container is stopped meanwhile if it must be).
const POST_START_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything a run task needs.
struct RunRequest {
    node: Arc<Node>,
    class: Option<String>,
    /// Whether the run joins the pod's network namespace, which the node's runtimes give.
    shares_netns: bool,
    pod: Pod,
    container: Container,
    slot: Slot,
    attempt: i32,
    launch: Launch,
    events: mpsc::UnboundedSender<RunEvent>,
}

/// One run of a container: resolve its image, have the runtime make the run, start it, and
/// report each step and its end.
async fn run_container(request: RunRequest) {
    let RunRequest { node, class, shares_netns, pod, container, slot, attempt, mut launch, events } = request;
    let name = container.name.clone();
    let image = container.image.clone().unwrap_or_default();
    let policy = PullPolicy::parse(container.image_pull_policy.as_deref(), &image);
    let resolved = match node.images.resolve(&image, policy).await {
        Ok(resolved) => resolved,
        Err(error) => {
            if let ImageError::Pull(message) = &error {
                node.events.pod(
                    &pod,
                    Some(&name),
                    Warning,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {message}"),
                );
            }
            node.events.pod(&pod, Some(&name), Warning, "Failed", format!("Error: {}", error.reason()));
            let _ = events.send(RunEvent::StartFailed { slot, attempt, failure: StartFailure::Image(error) });
            return;
        }
    };
    match resolved.pulled_in {
        None => node.events.pod(
            &pod,
            Some(&name),
            Normal,
            "Pulled",
            format!("Container image \"{image}\" already present on machine"),
        ),
        Some(took) => node.events.pod(
            &pod,
            Some(&name),
            Normal,
            "Pulled",
            format!(
                "Successfully pulled image \"{image}\" in {}. Image size: {} bytes.",
                flotilla_api::go::duration(took),
                resolved.image.size
            ),
        ),
    }
    let started_at = Timestamp::now();
    let failed = |message: String, container_id: String| {
        node.events.pod(&pod, Some(&name), Warning, "Failed", format!("Error: {message}"));
        let exit = Exit::start_error(message);
        let _ = events.send(RunEvent::Exited { slot, attempt, exit, started_at, container_id });
    };
    let runtime = match node.runtimes.for_image(class.as_deref(), resolved.image.kind) {
        Ok(runtime) => runtime,
        Err(message) => return failed(format!("image \"{image}\": {message}"), String::new()),
    };
    let container_id = format!("{}://{}", runtime.handler(), launch.id);
    if shares_netns {
        match node.runtimes.pod_netns(&launch).await {
            Ok(netns) => launch.netns = netns,
            Err(message) => return failed(message, container_id),
        }
    }
    let created = match runtime.create(resolved.image, launch).await {
        Ok(created) => created,
        Err(CreateError::Failed(message)) => return failed(message, container_id),
        Err(CreateError::Config(message)) => {
            node.events.pod(&pod, Some(&name), Warning, "Failed", format!("Error: {message}"));
            let _ = events.send(RunEvent::StartFailed { slot, attempt, failure: StartFailure::Config(message) });
            return;
        }
    };
    node.events.pod(&pod, Some(&name), Normal, "Created", format!("Created container: {name}"));
    let started_at = Timestamp::now();
    let Started { control, usage, exit } = match created.start().await {
        Ok(started) => started,
        Err(message) => return failed(message, container_id),
    };
    let image_id = resolved.image_id.clone();
    let id = container_id.clone();
    let started =
        RunEvent::Started { slot, attempt, image_id, container_id: id, started_at, control, usage, adopted: false };
    let _ = events.send(started);
    node.events.pod(&pod, Some(&name), Normal, "Started", format!("Started container {name}"));
    // Not held while the run goes on: the worker has the pod.
    drop((pod, container));
    let exit = exit.await;
    let _ = events.send(RunEvent::Exited { slot, attempt, exit, started_at, container_id });
}

/// The pod's hostname, as the kubelet's: its `spec.hostname`, else its name cut to 63
/// characters with no trailing `-` or `.`.
fn hostname(pod: &Pod) -> String {
    if let Some(hostname) = pod.spec.as_ref().and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty()) {
        return hostname;
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    name[..name.len().min(63)].trim_end_matches(['-', '.']).to_string()
}

/// The container's security context, with the pod's where the container's says nothing.
fn security(pod: Option<&k8s_openapi::api::core::v1::PodSpec>, container: &Container) -> Security {
    let own = container.security_context.as_ref();
    let pod = pod.and_then(|p| p.security_context.as_ref());
    let capabilities = own.and_then(|c| c.capabilities.as_ref());
    Security {
        run_as_user: own.and_then(|c| c.run_as_user).or_else(|| pod?.run_as_user),
        run_as_group: own.and_then(|c| c.run_as_group).or_else(|| pod?.run_as_group),
        run_as_non_root: own.and_then(|c| c.run_as_non_root).or_else(|| pod?.run_as_non_root),
        read_only_root: own.and_then(|c| c.read_only_root_filesystem).unwrap_or(false),
        add_capabilities: capabilities.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: capabilities.and_then(|c| c.drop.clone()).unwrap_or_default(),
        allow_privilege_escalation: own.and_then(|c| c.allow_privilege_escalation),
        privileged: own.and_then(|c| c.privileged).unwrap_or(false),
        seccomp: own
            .and_then(|c| c.seccomp_profile.as_ref())
            .or_else(|| pod?.seccomp_profile.as_ref())
            .map(|p| p.type_.clone()),
    }
}

/// The annotation that sets how many requests a pod's `wasi:http` containers serve at once.
const HTTP_CONCURRENCY_ANNOTATION: &str = "http.flotilla.dev/max-concurrency";

/// Requests at once the pod asks for its `wasi:http` containers, if it asks.
fn http_concurrency(pod: &Pod) -> Result<Option<usize>, String> {
    let Some(value) = pod.metadata.annotations.as_ref().and_then(|a| a.get(HTTP_CONCURRENCY_ANNOTATION)) else {
        return Ok(None);
    };
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(Some(n)),
        _ => Err(format!(
            "annotation {HTTP_CONCURRENCY_ANNOTATION}: {value:?} is not a number of requests from 1 to 10000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStateWaiting};

    use super::*;

    /// The run that the record begins next has the number the kubelet's would: one more
    /// than the last that ran, whatever the agent was doing when it stopped.
    #[test]
    fn a_restored_record_numbers_the_next_run_as_the_one_after_the_last_that_ran() {
        let ended =
            ContainerStateTerminated { exit_code: 1, container_id: Some("oci://a".into()), ..Default::default() };
        let status = |restart_count: i32, reason: &str| ContainerStatus {
            name: "c".into(),
            restart_count,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), ..Default::default() }),
                ..Default::default()
            }),
            last_state: Some(ContainerState { terminated: Some(ended.clone()), ..Default::default() }),
            ..Default::default()
        };
        let next = |status: &ContainerStatus| {
            let mut record = ContainerRecord::new("c", "busybox", "ContainerCreating");
            restore_record(&mut record, status);
            record.begin();
            (record.restart_count, record.last.map(|last| last.container_id))
        };
        // Backing off after run 2 ended; then run 3 begun (and shown creating, or failing).
        assert_eq!(next(&status(2, "CrashLoopBackOff")), (3, Some("oci://a".into())));
        assert_eq!(next(&status(3, "ContainerCreating")), (3, Some("oci://a".into())));
        assert_eq!(next(&status(3, "ErrImagePull")), (3, Some("oci://a".into())));
    }
}
