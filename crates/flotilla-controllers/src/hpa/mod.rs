//! The horizontal pod autoscaler, upstream's `podautoscaler`: every sync period (15 s) each
//! HPA's target is read through its `scale` subresource, the usage of the pods its selector
//! names from the resource metrics API (`metrics.k8s.io`), and the target scaled to what the
//! metrics ask, within the HPA's bounds and rates (`calculate.rs`, pure). The HPA's status
//! (current and desired replicas, current metrics, the `AbleToScale`, `ScalingActive` and
//! `ScalingLimited` conditions) and its Events say what was decided and why, in upstream's
//! words.
//!
//! `Resource` metrics come from the resource metrics API; `Pods` and `Object` metrics from the
//! custom metrics API (`custom.metrics.k8s.io`), which serves the requests the nodes count
//! (`requests_in_flight`, `requests_per_second`). `External` metrics need an external metrics
//! API, which this cluster does not serve: such a metric fails as it fails upstream without an
//! adapter.
//!
//! Scale from zero: an HPA with `minReplicas: 0` is evaluated at zero replicas too (the
//! HPAScaleToZero rule), on its `Object` metrics. A node that holds requests for a Service with
//! no endpoint writes an `Activating` Event on it; the HPAs whose `Object` metric describes that
//! Service are evaluated at once, rather than at their next sync, and the held requests count
//! as the Service's requests in flight.
//!
//! Request-driven scaling: a `Pods` or `Object` metric of the requests the nodes count with an
//! `averageValue` target (a target per pod) scales as Knative's pod autoscaler does
//! (`kpa.rs`), on its averages over a stable and a panic window rather than on one reading
//! with the HPA's tolerance. While its target runs, such a metric is read every second, and an
//! HPA whose panic window surges is evaluated at once.

mod calculate;
mod kpa;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::kinds::metrics::{self, PodMetrics};
use flotilla_api::selector::LabelSelector;
use flotilla_client::{Cache, Change, EventType, Informer, ObjectKey, Recorder, WorkQueue};
use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, MetricIdentifier, MetricSpec,
    MetricStatus, MetricValueStatus, ObjectMetricSource, ObjectMetricStatus, PodsMetricStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::task::JoinHandle;

use self::calculate::{
    Computed, Memory, Normalized, ObjectTarget, PodView, Policy, Rules, Said, Sample, Select, Target,
};
use self::kpa::{Observed, Windows};
use crate::{Context, Error, Next, Reconciler, spawn_workers};

/// How often every HPA is evaluated (upstream's `--horizontal-pod-autoscaler-sync-period`).
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);

pub(crate) fn start(context: &Context, sync_period: Duration) -> Vec<JoinHandle<()>> {
    // Every HPA once a second at most: a zero period would spin.
    let sync_period = sync_period.max(Duration::from_secs(1));
    let queue = WorkQueue::named("horizontalpodautoscaler", &context.queues);
    let mut hpas = Informer::<HorizontalPodAutoscaler>::all(context.client.clone());
    let cache = hpas.cache();
    let changed = queue.clone();
    // A new HPA, a changed spec, a deleted one: evaluated now. Its own status writes are not
    // news, or it would evaluate again at once and step past the rate it may scale at; the
    // sync period brings it back.
    hpas.on_change(move |change| match change {
        Change::Applied { old: Some(old), new } if old.metadata.generation == new.metadata.generation => {}
        Change::Applied { new: hpa, .. } | Change::Deleted(hpa) => changed.add(ObjectKey::of(&**hpa)),
    });
    let autoscaler = Arc::new(Autoscaler {
        context: context.clone(),
        events: Recorder::new(context.client.clone(), "horizontal-pod-autoscaler", None),
        hpas: cache.clone(),
        sync_period,
        memory: Mutex::default(),
        observed: Mutex::default(),
    });
    // Requests held for a Service at zero: the HPAs that scale it from zero are evaluated now.
    let fields = format!("involvedObject.kind=Service,reason={}", flotilla_api::stats::ACTIVATING);
    let mut activations = Informer::<Event>::all(context.client.clone()).selecting_fields(&fields);
    let (woken, hpas_now) = (queue.clone(), cache.clone());
    activations.on_change(move |change| {
        let Change::Applied { new: event, .. } = change else { return };
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        let service = event.involved_object.name.as_deref().unwrap_or_default();
        for hpa in hpas_now.in_namespace(namespace) {
            // Ahead of the periodic evaluations: a client waits.
            if flotilla_api::kinds::scaled_from_zero(&hpa).any(|name| name == service) {
                woken.add_first(ObjectKey::of(&*hpa));
            }
        }
    });
    let pods = context.pods.clone();
    let sampler = tokio::spawn(sample_requests(autoscaler.clone(), queue.clone()));
    let mut tasks = spawn_workers(autoscaler, queue, 2, async move {
        cache.synced().await;
        pods.synced().await;
    });
    tasks.push(sampler);
    tasks.push(tokio::spawn(hpas.run()));
    tasks.push(tokio::spawn(activations.run()));
    tasks
}

struct Autoscaler {
    context: Context,
    events: Recorder,
    hpas: Cache<HorizontalPodAutoscaler>,
    sync_period: Duration,
    /// Each HPA's recent recommendations and scalings.
    memory: Mutex<HashMap<ObjectKey, Memory>>,
    /// Each HPA's request metrics that scale as Knative's do: what was read of them, and the
    /// selector of the target's pods (for a `Pods` metric) as its last evaluation found it.
    observed: Mutex<HashMap<ObjectKey, Requests>>,
}

/// What is known of an HPA's request metrics.
#[derive(Default)]
struct Requests {
    /// The HPA's: one made again under its name starts over.
    uid: String,
    /// Of its target's scale.
    selector: String,
    /// By [`MetricSpec`], as [`per_pod_requests`] names it.
    metrics: HashMap<String, Observed>,
}

/// The most request metrics of one HPA read every tick: one HPA cannot make the sampler read
/// more than this many times a second.
const MAX_SAMPLED: usize = 4;

/// Every [`kpa::TICK`], each HPA's request metrics with a target per pod, while its target
/// runs: read into their windows, and an HPA whose panic window surges evaluated at once.
async fn sample_requests(autoscaler: Arc<Autoscaler>, queue: WorkQueue<ObjectKey>) {
    let mut tick = tokio::time::interval(kpa::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let hpas = autoscaler.hpas.list().into_iter().filter(|hpa| {
            hpa.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0) > 0
                && hpa.spec.iter().flat_map(|s| s.metrics.iter().flatten()).any(|m| per_pod_requests(m).is_some())
        });
        futures::StreamExt::for_each_concurrent(futures::stream::iter(hpas), 16, |hpa| {
            let (autoscaler, queue) = (&autoscaler, &queue);
            async move {
                if autoscaler.sample(&hpa).await {
                    queue.add_first(ObjectKey::of(&*hpa));
                }
            }
        })
        .await;
    }
}

/// An HPA's metric of the requests the nodes count with a target per pod, which scales as
/// Knative's pod autoscaler does: its name among the HPA's metrics, and the target in
/// milli-units.
fn per_pod_requests(spec: &MetricSpec) -> Option<(String, i64)> {
    use flotilla_api::stats::{REQUESTS_IN_FLIGHT, REQUESTS_PER_SECOND};
    let counted = |name: &str| name == REQUESTS_IN_FLIGHT || name == REQUESTS_PER_SECOND;
    match spec.type_.as_str() {
        "Pods" => {
            let source = spec.pods.as_ref()?;
            let target = milli(source.target.average_value.as_ref()?)?;
            counted(&source.metric.name).then(|| (format!("Pods/{}", source.metric.name), target))
        }
        "Object" => {
            let source = spec.object.as_ref()?;
            let target = milli(source.target.average_value.as_ref()?)?;
            let object = &source.described_object;
            let name = format!("Object/{}/{}/{}", object.kind, object.name, source.metric.name);
            counted(&source.metric.name).then_some((name, target))
        }
        _ => None,
    }
}

impl Reconciler for Autoscaler {
    const NAME: &'static str = "horizontal-pod-autoscaler";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(hpa) = self.hpas.get(key) else {
            self.memory.lock().expect("hpa memory lock").remove(key);
            self.observed.lock().expect("hpa requests lock").remove(key);
            return Ok(Next::Done);
        };
        let mut run = Run { hpa: &hpa, conditions: current_conditions(&hpa), now: Timestamp::now() };
        let status = self.evaluate(key, &mut run).await;
        let status = json!({
            "currentReplicas": status.current,
            "desiredReplicas": status.desired,
            "lastScaleTime": status.scaled.or_else(|| hpa.status.as_ref().and_then(|s| s.last_scale_time.clone())),
            "currentMetrics": status.metrics,
            "conditions": run.conditions,
        });
        self.context.write_status(&*hpa, &self.hpas, status).await?;
        Ok(Next::After(self.sync_period))
    }
}

/// One evaluation of an HPA: the conditions it sets as it goes.
struct Run<'a> {
    hpa: &'a HorizontalPodAutoscaler,
    conditions: Vec<HorizontalPodAutoscalerCondition>,
    now: Timestamp,
}

impl Run<'_> {
    /// Sets condition `type_`, keeping its transition time unless its status changes.
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" }.to_string();
        let transition = match self.conditions.iter().find(|c| c.type_ == type_) {
            Some(old) if old.status == status => old.last_transition_time.clone(),
            _ => Some(Time(self.now)),
        };
        let condition = HorizontalPodAutoscalerCondition {
            type_: type_.into(),
            status,
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: transition,
        };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(old) => *old = condition,
            None => self.conditions.push(condition),
        }
    }

    fn said(&mut self, type_: &str, status: bool, said: &Said) {
        self.set(type_, status, said.reason, said.message.into());
    }
}

fn current_conditions(hpa: &HorizontalPodAutoscaler) -> Vec<HorizontalPodAutoscalerCondition> {
    hpa.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default()
}

/// What an evaluation leaves in the status.
struct Outcome {
    current: i32,
    desired: i32,
    scaled: Option<Time>,
    metrics: Vec<MetricStatus>,
}

/// The target's scale: its replicas and the selector of its pods.
struct Scale {
    api: kube::Api<DynamicObject>,
    /// The target's name.
    name: String,
    replicas: i32,
    /// The replicas it has now (its status), which may trail what it asks for.
    status_replicas: i32,
    selector: String,
}

impl Autoscaler {
    async fn evaluate(&self, key: &ObjectKey, run: &mut Run<'_>) -> Outcome {
        let hpa = run.hpa;
        let spec = hpa.spec.clone().unwrap_or_default();
        let previous = hpa.status.clone().unwrap_or_default();
        let scale = match self.scale(hpa).await {
            Ok(scale) => scale,
            Err(message) => {
                self.events.object(hpa, EventType::Warning, "FailedGetScale", message.clone());
                run.set(
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {message}"),
                );
                return Outcome {
                    current: previous.current_replicas.unwrap_or(0),
                    desired: previous.desired_replicas,
                    scaled: None,
                    metrics: previous.current_metrics.unwrap_or_default(),
                };
            }
        };
        run.set(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        );
        let current = scale.replicas;
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut memory = self.memory.lock().expect("hpa memory lock").remove(key).unwrap_or_default();
        memory.start(current, run.now);
        let mut metrics = previous.current_metrics.clone().unwrap_or_default();
        let (desired, reason) = if current == 0 && min != 0 {
            run.set(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            );
            (0, String::new())
        } else if current > max {
            (max, "Current number of replicas above Spec.MaxReplicas".to_string())
        } else if current < min {
            (min, "Current number of replicas below Spec.MinReplicas".to_string())
        } else {
            match self.replicas_for_metrics(hpa, &spec.metrics.clone().unwrap_or_default(), &scale, run).await {
                Err(message) => {
                    self.events.object(hpa, EventType::Warning, "FailedComputeMetricsReplicas", message);
                    self.memory.lock().expect("hpa memory lock").insert(key.clone(), memory);
                    return Outcome { current, desired: previous.desired_replicas, scaled: None, metrics };
                }
                Ok((proposed, metric, statuses)) => {
                    metrics = statuses;
                    let reason = if proposed > current {
                        format!("{metric} above target")
                    } else {
                        "All metrics below target".to_string()
                    };
                    let Normalized { replicas, able, limited } = match &spec.behavior {
                        None => memory.normalize(current, proposed, min, max, run.now),
                        Some(behavior) => {
                            let up = rules(behavior.scale_up.as_ref(), Duration::ZERO);
                            let down = rules(behavior.scale_down.as_ref(), calculate::DOWNSCALE_STABILIZATION);
                            memory.normalize_with(current, proposed, (min, max), &up, &down, run.now)
                        }
                    };
                    run.said("AbleToScale", true, &able);
                    run.said("ScalingLimited", limited.0, &limited.1);
                    (replicas, reason)
                }
            }
        };
        let mut scaled = None;
        if desired != current && !(current == 0 && min != 0) {
            let patch = json!({"spec": {"replicas": desired}});
            match scale.api.patch_scale(&scale.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    run.set(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        format!("the HPA controller was able to update the target scale to {desired}"),
                    );
                    self.events.object(
                        hpa,
                        EventType::Normal,
                        "SuccessfulRescale",
                        format!("New size: {desired}; reason: {reason}"),
                    );
                    let longest = spec.behavior.as_ref().map_or(Duration::ZERO, |b| {
                        [&b.scale_up, &b.scale_down]
                            .into_iter()
                            .flatten()
                            .flat_map(|r| r.policies.iter().flatten())
                            .map(|p| Duration::from_secs(p.period_seconds.max(0) as u64))
                            .max()
                            .unwrap_or_default()
                    });
                    memory.scaled(current, desired, longest, run.now);
                    scaled = Some(Time(run.now));
                }
                Err(e) => {
                    self.events.object(
                        hpa,
                        EventType::Warning,
                        "FailedRescale",
                        format!("New size: {desired}; reason: {reason}; error: {e}"),
                    );
                    run.set(
                        "AbleToScale",
                        false,
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e}"),
                    );
                    self.memory.lock().expect("hpa memory lock").insert(key.clone(), memory);
                    return Outcome { current, desired: previous.desired_replicas, scaled: None, metrics };
                }
            }
        }
        self.memory.lock().expect("hpa memory lock").insert(key.clone(), memory);
        Outcome { current, desired: if scaled.is_some() { desired } else { current }, scaled, metrics }
    }

    /// The target's `scale` subresource, through the resource its `apiVersion` and `kind` name.
    async fn scale(&self, hpa: &HorizontalPodAutoscaler) -> Result<Scale, String> {
        let target = hpa.spec.as_ref().map(|s| s.scale_target_ref.clone()).unwrap_or_default();
        let api_version = target.api_version.clone().unwrap_or_default();
        let def = flotilla_api::resource::find_kind(&api_version, &target.kind)
            .filter(|d| d.has(flotilla_api::resource::Subresource::Scale))
            .ok_or_else(|| {
                format!("no matches for kind \"{}\" in group \"{}\"", target.kind, group_of(&api_version))
            })?;
        let resource = ApiResource {
            group: def.group.into(),
            version: def.version.into(),
            api_version: def.api_version(),
            kind: def.kind.into(),
            plural: def.plural.into(),
        };
        let namespace = hpa.metadata.namespace.as_deref().unwrap_or("default");
        let api = kube::Api::<DynamicObject>::namespaced_with(self.context.client.clone(), namespace, &resource);
        let scale = api.get_scale(&target.name).await.map_err(|e| e.to_string())?;
        let status = scale.status.unwrap_or_default();
        Ok(Scale {
            replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            status_replicas: status.replicas,
            selector: status.selector.unwrap_or_default(),
            name: target.name,
            api,
        })
    }

    /// The largest count any metric asks for, the metric that asked for it, and every
    /// metric's status (`computeReplicasForMetrics`). A metric that cannot be read fails the
    /// whole only when no other asks for at least the current count.
    async fn replicas_for_metrics(
        &self,
        hpa: &HorizontalPodAutoscaler,
        specs: &[MetricSpec],
        scale: &Scale,
        run: &mut Run<'_>,
    ) -> Result<(i32, String, Vec<MetricStatus>), String> {
        if scale.selector.is_empty() {
            self.events.object(hpa, EventType::Warning, "SelectorRequired", "selector is required".into());
            run.set("ScalingActive", false, "InvalidSelector", "the HPA target's scale is missing a selector".into());
            return Err("selector is required".into());
        }
        let selector = match LabelSelector::parse(&scale.selector) {
            Ok(selector) => selector,
            Err(e) => {
                let message =
                    format!("couldn't convert selector into a corresponding internal selector object: {}", e.message);
                self.events.object(hpa, EventType::Warning, "InvalidSelector", message.clone());
                run.set("ScalingActive", false, "InvalidSelector", message.clone());
                return Err(message);
            }
        };
        let namespace = hpa.metadata.namespace.as_deref().unwrap_or("default");
        if specs.iter().any(|spec| per_pod_requests(spec).is_some()) {
            let mut observed = self.observed.lock().expect("hpa requests lock");
            let requests = observed.entry(ObjectKey::of(hpa)).or_default();
            let uid = hpa.metadata.uid.as_deref().unwrap_or_default();
            if requests.uid != uid {
                *requests = Requests { uid: uid.to_string(), ..Requests::default() };
            }
            requests.selector.clone_from(&scale.selector);
            // A metric no longer named is forgotten.
            requests.metrics.retain(|name, _| specs.iter().filter_map(per_pod_requests).any(|(n, _)| n == *name));
        }
        let pods: Vec<Arc<Pod>> = self
            .context
            .pods
            .in_namespace(namespace)
            .into_iter()
            .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&Default::default())))
            .collect();
        let mut best: Option<(i32, String)> = None;
        let mut statuses = vec![MetricStatus::default(); specs.len()];
        let mut failures: Vec<(&'static str, String)> = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match self.metric_replicas(spec, scale, namespace, &pods, (hpa, run.now)).await {
                Ok((replicas, name, status)) => {
                    statuses[i] = status;
                    if best.as_ref().is_none_or(|(most, _)| replicas > *most) {
                        best = Some((replicas, name));
                    }
                }
                Err((reason, message)) => {
                    self.events.object(hpa, EventType::Warning, reason, message.clone());
                    failures.push((reason, message));
                }
            }
        }
        match (best, failures.first()) {
            (Some((replicas, name)), first) if first.is_none() || replicas >= scale.replicas => {
                let message = format!("the HPA was able to successfully calculate a replica count from {name}");
                run.set("ScalingActive", true, "ValidMetricFound", message);
                Ok((replicas, name, statuses))
            }
            (_, Some((reason, message))) => {
                run.set(
                    "ScalingActive",
                    false,
                    reason,
                    format!("the HPA was unable to compute the replica count: {message}"),
                );
                Err(format!(
                    "invalid metrics ({} invalid out of {}), first error is: {message}",
                    failures.len(),
                    specs.len()
                ))
            }
            (_, None) => Err("no metrics to compute a replica count from".into()),
        }
    }

    /// What one metric asks for: the count, the metric's name in upstream's words, and its
    /// status; or the failure's Event reason and message.
    async fn metric_replicas(
        &self,
        spec: &MetricSpec,
        scale: &Scale,
        namespace: &str,
        pods: &[Arc<Pod>],
        (hpa, now): (&HorizontalPodAutoscaler, Timestamp),
    ) -> Proposed {
        if let Some((name, target)) = per_pod_requests(spec) {
            return self.requests_replicas(spec, scale, (name, target), pods, (hpa, now)).await;
        }
        let unserved = |reason: &'static str, what: &str| {
            Err((reason, format!("unable to get {what}: the {what} API is not served by this cluster yet")))
        };
        let source = match spec.type_.as_str() {
            "Resource" => spec.resource.as_ref(),
            "Pods" => return self.pods_replicas(spec, scale, namespace, pods, now).await,
            "Object" => return self.object_replicas(spec, scale, namespace, pods).await,
            "External" => return unserved("FailedGetExternalMetric", "external metrics"),
            "ContainerResource" => return unserved("FailedGetContainerResourceMetric", "container resource metrics"),
            other => return Err(("InvalidMetricSourceType", format!("unknown metric source type \"{other}\""))),
        };
        let Some(source) = source else {
            return Err(("InvalidMetricSourceType", "the Resource metric names no resource".into()));
        };
        let resource = source.name.as_str();
        let (target, name, what) = match (source.target.average_utilization, &source.target.average_value) {
            (Some(percent), _) => (
                Target::Utilization(percent),
                format!("{resource} resource utilization (percentage of request)"),
                "utilization",
            ),
            (None, Some(value)) => {
                let milli =
                    milli(value).ok_or(("FailedGetResourceMetric", format!("invalid target value {}", value.0)))?;
                (Target::AverageValue(milli), format!("{resource} resource"), "usage")
            }
            (None, None) => {
                return Err((
                    "FailedGetResourceMetric",
                    "invalid resource metric source: neither a utilization target nor a value target was set"
                        .to_string(),
                ));
            }
        };
        let failed = |message: String| {
            (
                "FailedGetResourceMetric",
                format!("failed to get {resource} resource metric value: failed to get {resource} {what}: {message}"),
            )
        };
        let samples = self
            .samples(namespace, &scale.selector, resource)
            .await
            .map_err(|e| failed(format!("unable to get metrics for resource {resource}: {e}")))?;
        let views: Vec<PodView> = pods.iter().map(|pod| view(pod, resource)).collect();
        let Computed { replicas, utilization, average } =
            calculate::resource_replicas(scale.replicas, target, resource == "cpu", &views, samples, now)
                .map_err(failed)?;
        let status = MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: resource.into(),
                current: MetricValueStatus {
                    average_utilization: utilization,
                    average_value: Some(Quantity(flotilla_api::quantity::nanocores(
                        (average.max(0) as u64).saturating_mul(1_000_000),
                    ))),
                    value: None,
                },
            }),
            ..MetricStatus::default()
        };
        Ok((replicas, name, status))
    }

    /// What a `Pods` metric asks for: its average over the selected pods against the target
    /// (`GetMetricReplicas`, the resource calculation without requests).
    async fn pods_replicas(
        &self,
        spec: &MetricSpec,
        scale: &Scale,
        namespace: &str,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Proposed {
        let failed = |message: String| ("FailedGetPodsMetric", format!("failed to get pods metric value: {message}"));
        let source = spec.pods.as_ref().ok_or_else(|| failed("the Pods metric names no metric".into()))?;
        let metric = &source.metric.name;
        let target =
            source.target.average_value.as_ref().and_then(milli).ok_or_else(|| {
                failed("invalid pods metric source: a Pods metric's target is an averageValue".into())
            })?;
        let values = self
            .custom_metric(&format!("namespaces/{namespace}/pods/*/{metric}"), Some(&scale.selector))
            .await
            .map_err(|e| failed(format!("unable to get metric {metric}: {e}")))?;
        let samples: HashMap<String, Sample> =
            values.into_iter().map(|v| (v.name, Sample { value: v.milli, time: v.time, window: v.window })).collect();
        if samples.is_empty() {
            return Err(failed(format!("unable to get metric {metric}: no metrics returned from custom metrics API")));
        }
        let views: Vec<PodView> = pods.iter().map(|pod| view(pod, "")).collect();
        let Computed { replicas, average, .. } =
            calculate::resource_replicas(scale.replicas, Target::AverageValue(target), false, &views, samples, now)
                .map_err(failed)?;
        let status = MetricStatus {
            type_: "Pods".into(),
            pods: Some(PodsMetricStatus {
                metric: MetricIdentifier { name: metric.clone(), selector: source.metric.selector.clone() },
                current: MetricValueStatus { average_value: Some(milli_quantity(average)), ..Default::default() },
            }),
            ..MetricStatus::default()
        };
        Ok((replicas, format!("pods metric {metric}"), status))
    }

    /// What an `Object` metric asks for: the object's value against the target, as a total
    /// (`GetObjectMetricReplicas`) or per replica (`GetObjectPerPodMetricReplicas`). At zero
    /// replicas, a value asks for as many as it needs.
    async fn object_replicas(&self, spec: &MetricSpec, scale: &Scale, namespace: &str, pods: &[Arc<Pod>]) -> Proposed {
        let failed =
            |message: String| ("FailedGetObjectMetric", format!("failed to get object metric value: {message}"));
        let source = spec.object.as_ref().ok_or_else(|| failed("the Object metric names no object".into()))?;
        let (object, metric) = (&source.described_object, &source.metric.name);
        let usage = self
            .object_metric(namespace, source)
            .await
            .map_err(|e| failed(format!("unable to get metric {metric}: {e}")))?;
        let name = format!("{} metric {metric}", object.kind);
        let target = match (&source.target.average_value, &source.target.value) {
            (Some(average), _) => milli(average).map(ObjectTarget::AverageValue),
            (None, Some(value)) => milli(value).map(ObjectTarget::Value),
            (None, None) => None,
        };
        let target = target.ok_or_else(|| {
            failed("invalid object metric source: neither a value target nor an average value target was set".into())
        })?;
        let ready = pods.iter().filter(|pod| ready(pod)).count();
        let (proposed, reported) =
            calculate::object_replicas(usage, target, scale.replicas, scale.status_replicas, ready);
        // What the status reports: the value, or its average per replica.
        let current = match target {
            ObjectTarget::AverageValue(_) => {
                MetricValueStatus { average_value: Some(milli_quantity(reported)), ..Default::default() }
            }
            ObjectTarget::Value(_) => MetricValueStatus { value: Some(milli_quantity(reported)), ..Default::default() },
        };
        Ok((proposed, name, object_status(source, current)))
    }

    /// An `Object` metric's value now, in milli-units.
    async fn object_metric(&self, namespace: &str, source: &ObjectMetricSource) -> Result<i64, String> {
        let (object, metric) = (&source.described_object, &source.metric.name);
        let plural = match object.kind.as_str() {
            "Service" => "services",
            "Pod" => "pods",
            other => return Err(format!("no custom metrics of {other} objects")),
        };
        let values =
            self.custom_metric(&format!("namespaces/{namespace}/{plural}/{}/{metric}", object.name), None).await?;
        values.first().map(|v| v.milli).ok_or_else(|| "no value".to_string())
    }

    /// A request metric's value over the target's pods now, in milli-units, and how many pods
    /// it was read of (an `Object` metric's, as one). A `Pods` metric read of fewer pods than
    /// `ready` counts the others at the average of those read, as Knative counts the pods it
    /// did not scrape: a pod not read yet is not taken for an idle one.
    async fn requests_now(
        &self,
        spec: &MetricSpec,
        namespace: &str,
        selector: &str,
        ready: usize,
    ) -> Result<(i64, usize), String> {
        if let Some(source) = &spec.object {
            return Ok((self.object_metric(namespace, source).await?, 1));
        }
        let metric = spec.pods.as_ref().map(|p| p.metric.name.as_str()).unwrap_or_default();
        let values = self.custom_metric(&format!("namespaces/{namespace}/pods/*/{metric}"), Some(selector)).await?;
        if values.is_empty() {
            return Err("no metrics returned from custom metrics API".into());
        }
        let total = values.iter().map(|v| v.milli).fold(0, i64::saturating_add);
        let read = values.len();
        let total =
            if read < ready { (total as f64 * ready as f64 / read as f64).min(i64::MAX as f64) as i64 } else { total };
        Ok((total, read))
    }

    /// How many of the pods `selector` picks in `namespace` are Running and Ready.
    fn ready_pods(&self, namespace: &str, selector: &LabelSelector) -> usize {
        let pods = self.context.pods.in_namespace(namespace);
        pods.iter()
            .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&Default::default())) && ready(p))
            .count()
    }

    /// What a request metric with a target per pod asks for: the pods its windows ask for
    /// (`kpa.rs`), the value now recorded in them.
    async fn requests_replicas(
        &self,
        spec: &MetricSpec,
        scale: &Scale,
        (name, target): (String, i64),
        pods: &[Arc<Pod>],
        (hpa, now): (&HorizontalPodAutoscaler, Timestamp),
    ) -> Proposed {
        let (reason, what) =
            if spec.type_ == "Pods" { ("FailedGetPodsMetric", "pods") } else { ("FailedGetObjectMetric", "object") };
        let failed = |message: String| (reason, format!("failed to get {what} metric value: {message}"));
        let windows = Windows::of(hpa.metadata.annotations.as_ref(), parse_window).map_err(failed)?;
        let namespace = hpa.metadata.namespace.as_deref().unwrap_or("default");
        let ready = pods.iter().filter(|pod| ready(pod)).count();
        let (total, read) = self
            .requests_now(spec, namespace, &scale.selector, ready)
            .await
            .map_err(|e| failed(format!("unable to get metric {}: {e}", metric_name(spec))))?;
        let decision = {
            let mut observed = self.observed.lock().expect("hpa requests lock");
            let observed = observed.entry(ObjectKey::of(hpa)).or_default().metrics.entry(name).or_default();
            observed.record(now, total as f64 / 1000.0, windows);
            observed.decide(now, windows, target as f64 / 1000.0, ready)
        };
        let decision = decision.ok_or_else(|| failed("no value in the stable window".into()))?;
        // The status reports the deciding average per pod: per pod read for a `Pods` metric,
        // per replica for an `Object` one, as upstream reports either.
        let per = if spec.type_ == "Pods" { read.max(ready) } else { scale.status_replicas.max(0) as usize };
        let average = (decision.value * 1000.0 / per.max(1) as f64).ceil().min(i64::MAX as f64) as i64;
        let current = MetricValueStatus { average_value: Some(milli_quantity(average)), ..Default::default() };
        let status = match (&spec.pods, &spec.object) {
            (Some(source), _) => MetricStatus {
                type_: "Pods".into(),
                pods: Some(PodsMetricStatus {
                    metric: MetricIdentifier {
                        name: source.metric.name.clone(),
                        selector: source.metric.selector.clone(),
                    },
                    current,
                }),
                ..MetricStatus::default()
            },
            (None, Some(source)) => object_status(source, current),
            (None, None) => return Err(failed("the metric names no pods and no object".into())),
        };
        let label = match &spec.object {
            Some(source) => format!("{} metric {}", source.described_object.kind, source.metric.name),
            None => format!("pods metric {}", metric_name(spec)),
        };
        Ok((decision.desired, label, status))
    }

    /// Reads an HPA's request metrics with a target per pod into their windows and decides
    /// on them, once it has been evaluated (which found its target's selector); whether one of
    /// them asks for more pods in a panic.
    async fn sample(&self, hpa: &HorizontalPodAutoscaler) -> bool {
        let key = ObjectKey::of(hpa);
        let Ok(windows) = Windows::of(hpa.metadata.annotations.as_ref(), parse_window) else { return false };
        let Some(selector) = self.observed.lock().expect("hpa requests lock").get(&key).map(|r| r.selector.clone())
        else {
            return false;
        };
        let Ok(parsed) = LabelSelector::parse(&selector) else { return false };
        let namespace = hpa.metadata.namespace.as_deref().unwrap_or("default");
        let ready = self.ready_pods(namespace, &parsed);
        let current = hpa.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0);
        let mut urgent = false;
        let specs = hpa.spec.iter().flat_map(|s| s.metrics.iter().flatten());
        for (spec, (name, target)) in specs.filter_map(|s| Some((s, per_pod_requests(s)?))).take(MAX_SAMPLED) {
            let now = Timestamp::now();
            // A read that takes longer than a tick is a tick without a value.
            let read = tokio::time::timeout(kpa::TICK, self.requests_now(spec, namespace, &selector, ready)).await;
            let Ok(Ok((total, _))) = read else { continue };
            let mut observed = self.observed.lock().expect("hpa requests lock");
            // Deleted meanwhile: not brought back.
            let Some(requests) = observed.get_mut(&key) else { return false };
            let observed = requests.metrics.entry(name).or_default();
            observed.record(now, total as f64 / 1000.0, windows);
            urgent |= observed.tick(now, windows, target as f64 / 1000.0, ready, current);
        }
        urgent
    }

    /// A custom metric's values (`custom.metrics.k8s.io/v1beta2`, `path` below a namespace's),
    /// of the objects `selector` picks when the path names them all.
    async fn custom_metric(&self, path: &str, selector: Option<&str>) -> Result<Vec<MetricValue>, String> {
        let path = format!("/apis/custom.metrics.k8s.io/v1beta2/{path}");
        let request = kube::core::Request::new(path)
            .list(&ListParams::default().labels(selector.unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = self.context.client.request(request).await.map_err(|e| e.to_string())?;
        let items = list.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
        Ok(items
            .iter()
            .filter_map(|item| {
                let value = Quantity(item.get("value")?.as_str()?.to_string());
                Some(MetricValue {
                    name: item.pointer("/describedObject/name")?.as_str()?.to_string(),
                    milli: milli(&value)?,
                    time: item.get("timestamp")?.as_str()?.parse().ok()?,
                    window: Duration::from_secs(item.get("windowSeconds").and_then(|w| w.as_u64()).unwrap_or(0)),
                })
            })
            .collect())
    }

    /// Each selected pod's usage of `resource` from the resource metrics API, in milli-units;
    /// a pod missing the resource in any container has none.
    async fn samples(
        &self,
        namespace: &str,
        selector: &str,
        resource: &str,
    ) -> Result<HashMap<String, Sample>, String> {
        let metrics = ApiResource {
            group: metrics::GROUP.into(),
            version: metrics::VERSION.into(),
            api_version: format!("{}/{}", metrics::GROUP, metrics::VERSION),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let api = kube::Api::<DynamicObject>::namespaced_with(self.context.client.clone(), namespace, &metrics);
        let list = api.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
        if list.items.is_empty() {
            return Err("no metrics returned from resource metrics API".into());
        }
        let mut samples = HashMap::new();
        for item in list.items {
            let Ok(item) = serde_json::to_value(item).and_then(serde_json::from_value::<PodMetrics>) else { continue };
            let Some(name) = item.metadata.name.clone() else { continue };
            let values: Option<Vec<i64>> =
                item.containers.iter().map(|c| c.usage.get(resource).and_then(milli)).collect();
            let Some(values) = values.filter(|v| !v.is_empty()) else { continue };
            let window = parse_window(&item.window).unwrap_or_default();
            samples.insert(name, Sample { value: values.iter().sum(), time: item.timestamp.0, window });
        }
        Ok(samples)
    }
}

/// What one metric asks for: the count, the metric's name in upstream's words, and its
/// status; or the failure's Event reason and message.
type Proposed = Result<(i32, String, MetricStatus), (&'static str, String)>;

/// One object's value of a custom metric.
struct MetricValue {
    name: String,
    /// In milli-units.
    milli: i64,
    time: Timestamp,
    window: Duration,
}

/// An `Object` metric's status, its current value being `current`.
fn object_status(source: &ObjectMetricSource, current: MetricValueStatus) -> MetricStatus {
    MetricStatus {
        type_: "Object".into(),
        object: Some(ObjectMetricStatus {
            described_object: source.described_object.clone(),
            metric: MetricIdentifier { name: source.metric.name.clone(), selector: source.metric.selector.clone() },
            current,
        }),
        ..MetricStatus::default()
    }
}

/// The name of a `Pods` or `Object` metric.
fn metric_name(spec: &MetricSpec) -> &str {
    let pods = spec.pods.as_ref().map(|p| &p.metric);
    pods.or(spec.object.as_ref().map(|o| &o.metric)).map_or("", |m| m.name.as_str())
}

/// Whether a pod is Running and Ready.
fn ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn milli_quantity(milli: i64) -> Quantity {
    Quantity(if milli % 1000 == 0 { (milli / 1000).to_string() } else { format!("{milli}m") })
}

/// A pod as the calculator sees it, with what its containers request of `resource`.
fn view(pod: &Pod, resource: &str) -> PodView {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status != "False", c.last_transition_time.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0)));
    let spec = pod.spec.clone().unwrap_or_default();
    // Containers, and init containers that run beside them (sidecars), request together.
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let request = spec
        .containers
        .iter()
        .chain(sidecars)
        .map(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(milli)
                .ok_or_else(|| format!("missing request for {resource} in container {} of Pod {name}", c.name))
        })
        .sum::<Result<i64, String>>();
    PodView {
        name: name.clone(),
        phase: status.phase.clone().unwrap_or_default(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        started: status.start_time.as_ref().map(|t| t.0),
        request,
    }
}

/// A quantity in milli-units (`MilliValue`), rounded up.
fn milli(quantity: &Quantity) -> Option<i64> {
    let nanos = flotilla_api::quantity::parse(&quantity.0).ok()?;
    i64::try_from((nanos + 999_999).div_euclid(1_000_000)).ok()
}

/// A Go duration as metrics-server writes `window` (`15.018s`, `500ms`, `1m0.5s`).
fn parse_window(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    // Whatever a user writes in an annotation: not a panic.
    Duration::try_from_secs_f64(total).ok()
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// A direction's rules as the calculator takes them, defaulted as the API defaults them.
fn rules(rules: Option<&HPAScalingRules>, default_window: Duration) -> Rules {
    let window = rules
        .and_then(|r| r.stabilization_window_seconds)
        .map_or(default_window, |s| Duration::from_secs(s.max(0) as u64));
    let select = match rules.and_then(|r| r.select_policy.as_deref()) {
        Some("Min") => Select::Min,
        Some("Disabled") => Select::Disabled,
        _ => Select::Max,
    };
    let policies = rules
        .and_then(|r| r.policies.as_ref())
        .into_iter()
        .flatten()
        .map(|p| {
            let policy = if p.type_ == "Pods" { Policy::Pods } else { Policy::Percent };
            (policy, p.value, Duration::from_secs(p.period_seconds.max(0) as u64))
        })
        .collect();
    Rules { window, select, policies }
}
