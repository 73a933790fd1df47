//! apps/v1 workloads: Deployments, ReplicaSets, DaemonSets and StatefulSets, and the
//! ControllerRevisions that record a DaemonSet's or StatefulSet's past templates; and the
//! ReplicaSet's core/v1 forerunner, the ReplicationController, whose selector is a plain map.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::pod::{check_one_of, default_template, validate_template};
use super::{Kind, always_written};
use crate::error::FieldError;
use crate::selector;
use crate::table::{self, Column};
use crate::validation;

const ALWAYS: &[&str] = &["Always"];

impl Kind for Deployment {
    fn set_defaults(&mut self) {
        always_written(&mut self.status);
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        let strategy = spec.strategy.get_or_insert_with(DeploymentStrategy::default);
        let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if kind == "RollingUpdate" {
            let rolling = strategy.rolling_update.get_or_insert_with(RollingUpdateDeployment::default);
            rolling.max_unavailable.get_or_insert_with(|| IntOrString::String("25%".into()));
            rolling.max_surge.get_or_insert_with(|| IntOrString::String("25%".into()));
        }
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        default_template(&mut spec.template);
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return errors.push(FieldError::required("spec", "")) };
        non_negative(spec.replicas, "spec.replicas", errors);
        selector_and_template(Some(&spec.selector), &spec.template, "deployment", ALWAYS, errors);
        if let Some(strategy) = &spec.strategy {
            check_one_of(strategy.type_.as_deref(), &["Recreate", "RollingUpdate"], "spec.strategy.type", errors);
            if strategy.type_.as_deref() == Some("Recreate") && strategy.rolling_update.is_some() {
                errors.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            if let Some(rolling) = &strategy.rolling_update
                && is_zero(&rolling.max_unavailable)
                && is_zero(&rolling.max_surge)
            {
                errors.push(FieldError::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    "0",
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        validation::immutable(&new.selector, &old.selector, "spec.selector", errors);
    }

    fn columns() -> Vec<Column> {
        let mut columns = vec![
            Column::name(),
            Column::string("Ready", "Number of the pod with ready state"),
            Column::integer(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            Column::integer(
                "Available",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            Column::age(),
        ];
        columns.extend(template_columns(DEPLOYMENT_SELECTOR));
        columns
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let mut cells = vec![
            table::name(&self.metadata),
            Value::String(format!("{}/{}", status.ready_replicas.unwrap_or(0), spec.replicas.unwrap_or(0))),
            Value::from(status.updated_replicas.unwrap_or(0)),
            Value::from(status.available_replicas.unwrap_or(0)),
            table::age(&self.metadata, now),
        ];
        cells.extend(template_cells(&spec.template, Some(&spec.selector)));
        cells
    }
}

impl Kind for ReplicaSet {
    fn set_defaults(&mut self) {
        always_written(&mut self.status);
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        if let Some(template) = spec.template.as_mut() {
            default_template(template);
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return errors.push(FieldError::required("spec", "")) };
        non_negative(spec.replicas, "spec.replicas", errors);
        match &spec.template {
            Some(template) => selector_and_template(Some(&spec.selector), template, "replicaset", ALWAYS, errors),
            None => errors.push(FieldError::required("spec.template", "")),
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        validation::immutable(&new.selector, &old.selector, "spec.selector", errors);
    }

    fn columns() -> Vec<Column> {
        replica_columns(
            "Replicas is the number of desired pods.",
            "Replicas is the most recently observed number of replicas.",
            "The number of ready replicas for this replica set.",
            REPLICA_SET_SELECTOR,
        )
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let counts = [spec.replicas.unwrap_or(0), status.replicas, status.ready_replicas.unwrap_or(0)];
        replica_cells(&self.metadata, counts, &spec.template.unwrap_or_default(), &spec.selector, now)
    }
}

impl Kind for ReplicationController {
    fn set_defaults(&mut self) {
        always_written(&mut self.status);
        let spec = self.spec.get_or_insert_with(Default::default);
        // A selector and labels left out are the template's labels (upstream's defaults).
        let labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
        if let Some(labels) = labels {
            if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
                spec.selector = Some(labels.clone());
            }
            if self.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
                self.metadata.labels = Some(labels);
            }
        }
        spec.replicas.get_or_insert(1);
        if let Some(template) = spec.template.as_mut() {
            default_template(template);
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return errors.push(FieldError::required("spec", "")) };
        non_negative(spec.min_ready_seconds, "spec.minReadySeconds", errors);
        let selector = spec.selector.clone().unwrap_or_default();
        if selector.is_empty() {
            errors.push(FieldError::required("spec.selector", ""));
        }
        non_negative(spec.replicas, "spec.replicas", errors);
        let Some(template) = &spec.template else { return errors.push(FieldError::required("spec.template", "")) };
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            errors.push(FieldError::invalid(
                "spec.template.metadata.labels",
                go_map(&labels),
                "`selector` does not match template `labels`",
            ));
        }
        validate_template(template, "spec.template", ALWAYS, errors);
        no_deadline(template, "ReplicationController", errors);
    }

    fn columns() -> Vec<Column> {
        replica_columns(
            "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller#what-is-a-replicationcontroller",
            "Replicas is the most recently observed number of replicas. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller#what-is-a-replicationcontroller",
            "The number of ready replicas for this replication controller.",
            REPLICATION_CONTROLLER_SELECTOR,
        )
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let counts = [spec.replicas.unwrap_or(0), status.replicas, status.ready_replicas.unwrap_or(0)];
        let selector = LabelSelector { match_labels: spec.selector, ..Default::default() };
        replica_cells(&self.metadata, counts, &spec.template.unwrap_or_default(), &selector, now)
    }
}

impl Kind for DaemonSet {
    fn set_defaults(&mut self) {
        always_written(&mut self.status);
        let spec = self.spec.get_or_insert_with(Default::default);
        let strategy = spec.update_strategy.get_or_insert_with(DaemonSetUpdateStrategy::default);
        if strategy.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            let rolling = strategy.rolling_update.get_or_insert_with(RollingUpdateDaemonSet::default);
            rolling.max_unavailable.get_or_insert(IntOrString::Int(1));
            rolling.max_surge.get_or_insert(IntOrString::Int(0));
        }
        spec.revision_history_limit.get_or_insert(10);
        default_template(&mut spec.template);
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return errors.push(FieldError::required("spec", "")) };
        selector_and_template(Some(&spec.selector), &spec.template, "daemonset", ALWAYS, errors);
        if let Some(strategy) = &spec.update_strategy {
            check_one_of(strategy.type_.as_deref(), &["RollingUpdate", "OnDelete"], "spec.updateStrategy.type", errors);
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        validation::immutable(&new.selector, &old.selector, "spec.selector", errors);
    }

    fn columns() -> Vec<Column> {
        let mut columns = vec![
            Column::name(),
            Column::integer(
                "Desired",
                "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
            ),
            Column::integer(
                "Current",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            Column::integer(
                "Ready",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            Column::integer("Up-to-date", "The total number of nodes that are running updated daemon pod"),
            Column::integer(
                "Available",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            Column::string(
                "Node Selector",
                "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node.",
            ),
            Column::age(),
        ];
        columns.extend(template_columns(DAEMON_SET_SELECTOR));
        columns
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let node_selector: Vec<String> = spec
            .template
            .spec
            .iter()
            .flat_map(|s| s.node_selector.iter().flatten())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut cells = vec![
            table::name(&self.metadata),
            Value::from(status.desired_number_scheduled),
            Value::from(status.current_number_scheduled),
            Value::from(status.number_ready),
            Value::from(status.updated_number_scheduled.unwrap_or(0)),
            Value::from(status.number_available.unwrap_or(0)),
            table::or_none(node_selector.join(",")),
            table::age(&self.metadata, now),
        ];
        cells.extend(template_cells(&spec.template, Some(&spec.selector)));
        cells
    }
}

impl Kind for StatefulSet {
    fn set_defaults(&mut self) {
        always_written(&mut self.status);
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
        let strategy = spec.update_strategy.get_or_insert_with(StatefulSetUpdateStrategy::default);
        if strategy.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateStatefulSetStrategy::default)
                .partition
                .get_or_insert(0);
        }
        spec.revision_history_limit.get_or_insert(10);
        let retention = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
        retention.when_deleted.get_or_insert_with(|| "Retain".into());
        retention.when_scaled.get_or_insert_with(|| "Retain".into());
        default_template(&mut spec.template);
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return errors.push(FieldError::required("spec", "")) };
        non_negative(spec.replicas, "spec.replicas", errors);
        selector_and_template(Some(&spec.selector), &spec.template, "statefulset", ALWAYS, errors);
        check_one_of(
            spec.pod_management_policy.as_deref(),
            &["OrderedReady", "Parallel"],
            "spec.podManagementPolicy",
            errors,
        );
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        validation::immutable(&new.selector, &old.selector, "spec.selector", errors);
    }

    fn columns() -> Vec<Column> {
        let mut columns =
            vec![Column::name(), Column::string("Ready", "Number of the pod with ready state"), Column::age()];
        columns.extend(template_columns("").into_iter().take(2));
        columns
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let mut cells = vec![
            table::name(&self.metadata),
            Value::String(format!("{}/{}", status.ready_replicas.unwrap_or(0), spec.replicas.unwrap_or(0))),
            table::age(&self.metadata, now),
        ];
        cells.extend(template_cells(&spec.template, None));
        cells
    }
}

impl Kind for ControllerRevision {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.revision < 0 {
            errors.push(FieldError::invalid("revision", self.revision, "must be greater than or equal to 0"));
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        validation::immutable(&self.data, &old.data, "data", errors);
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("Controller", "Controller of the object"),
            Column::integer("Revision", "Revision of the ControllerRevision"),
            Column::age(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        // `daemonset.apps/web`, as upstream's printer names the controller.
        let controller =
            self.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| {
                let group = o.api_version.rsplit_once('/').map(|(group, _)| format!(".{group}")).unwrap_or_default();
                format!("{}{group}/{}", o.kind.to_lowercase(), o.name)
            });
        vec![
            table::name(&self.metadata),
            table::or_none(controller.unwrap_or_default()),
            Value::from(self.revision),
            table::age(&self.metadata, now),
        ]
    }
}

fn non_negative(value: Option<i32>, field: &str, errors: &mut Vec<FieldError>) {
    if let Some(v) = value
        && v < 0
    {
        errors.push(FieldError::invalid(field, v, "must be greater than or equal to 0"));
    }
}

fn is_zero(value: &Option<IntOrString>) -> bool {
    matches!(value, Some(IntOrString::Int(0))) || matches!(value, Some(IntOrString::String(s)) if s == "0%" || s == "0")
}

/// A workload's selector must be set, non-empty, and select its own template's labels.
pub(crate) fn selector_and_template(
    selector: Option<&LabelSelector>,
    template: &PodTemplateSpec,
    workload: &str,
    restart_policies: &[&str],
    errors: &mut Vec<FieldError>,
) {
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    match selector {
        None => errors.push(FieldError::required("spec.selector", "")),
        Some(s)
            if s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty()) =>
        {
            errors.push(FieldError::invalid(
                "spec.selector",
                "{}",
                format!("empty selector is invalid for {workload}"),
            ));
        }
        Some(s) => match selector::LabelSelector::from_api(s) {
            Err(e) => errors.push(FieldError::invalid("spec.selector", "", e.message)),
            Ok(parsed) if !parsed.matches(&labels) => {
                errors.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    go_map(&labels),
                    "`selector` does not match template `labels`",
                ));
            }
            Ok(_) => {}
        },
    }
    validate_template(template, "spec.template", restart_policies, errors);
    // A controller that keeps pods running has no use for a deadline that fails them.
    let keeper = match workload {
        "deployment" | "replicaset" => Some("ReplicaSet"),
        "daemonset" => Some("DaemonSet"),
        "statefulset" => Some("StatefulSet"),
        _ => None,
    };
    if let Some(keeper) = keeper {
        no_deadline(template, keeper, errors);
    }
}

/// Refuses `activeDeadlineSeconds` in the template of a `keeper` of pods, as upstream does.
fn no_deadline(template: &PodTemplateSpec, keeper: &str, errors: &mut Vec<FieldError>) {
    if template.spec.as_ref().is_some_and(|s| s.active_deadline_seconds.is_some()) {
        errors.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            format!("activeDeadlineSeconds in {keeper} is not Supported"),
        ));
    }
}

/// Labels as Go's `%#v` shows a `map[string]string`, as upstream's field errors do.
fn go_map(labels: &std::collections::BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

/// A ReplicaSet's or a ReplicationController's columns, described as each describes its fields.
fn replica_columns(
    desired: &'static str,
    current: &'static str,
    ready: &'static str,
    selector: &'static str,
) -> Vec<Column> {
    let mut columns = vec![
        Column::name(),
        Column::integer("Desired", desired),
        Column::integer("Current", current),
        Column::integer("Ready", ready),
        Column::age(),
    ];
    columns.extend(template_columns(selector));
    columns
}

/// Their cells: the desired, current and ready counts, then the template's.
fn replica_cells(
    meta: &ObjectMeta,
    [desired, current, ready]: [i32; 3],
    template: &PodTemplateSpec,
    selector: &LabelSelector,
    now: Timestamp,
) -> Vec<Value> {
    let mut cells = vec![table::name(meta), desired.into(), current.into(), ready.into(), table::age(meta, now)];
    cells.extend(template_cells(template, Some(selector)));
    cells
}

/// The `-o wide` columns every workload shares; `selector` describes the kind's selector as its
/// spec's documentation does (what upstream's printers show).
pub(crate) fn template_columns(selector: &'static str) -> Vec<Column> {
    vec![
        Column::string("Containers", "Names of each container in the template.").wide(),
        Column::string("Images", "Images referenced by each container in the template.").wide(),
        Column::string("Selector", selector).wide(),
    ]
}

/// The kinds' selector documentation, as the wide `Selector` column describes it.
const DEPLOYMENT_SELECTOR: &str = "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment. It must match the pod template's labels.";
const REPLICA_SET_SELECTOR: &str = "Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";
const REPLICATION_CONTROLLER_SELECTOR: &str = "Selector is a label query over pods that should match the Replicas count. If Selector is empty, it is defaulted to the labels present on the Pod template. Label keys and values that must match in order to be controlled by this replication controller, if empty defaulted to labels on Pod template. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";
const DAEMON_SET_SELECTOR: &str = "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

pub(crate) fn template_cells(template: &PodTemplateSpec, selector: Option<&LabelSelector>) -> Vec<Value> {
    let containers = template.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
    let mut cells = vec![
        table::joined(containers.iter().map(|c| c.name.as_str())),
        table::joined(containers.iter().map(|c| c.image.as_deref().unwrap_or(""))),
    ];
    if let Some(selector) = selector {
        cells.push(Value::String(format_selector(selector)));
    }
    cells
}

/// `metav1.FormatLabelSelector`.
pub(crate) fn format_selector(selector: &LabelSelector) -> String {
    match selector::LabelSelector::from_api(selector) {
        Ok(s) if !s.is_empty() => s.to_string(),
        _ => "<none>".into(),
    }
}
