//! Pods, and the pod spec every workload template shares: upstream's defaults
//! (`SetDefaults_Pod`, `SetDefaults_Container`, the ServiceAccount and Priority admission
//! plugins), validation, and the `kubectl get pods` columns.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, KeyToPath, Pod, PodSecurityContext, PodSpec, PodStatus, PodTemplateSpec, Probe,
    ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use super::Kind;
use crate::error::FieldError;
use crate::quantity;
use crate::table::{self, Column};
use crate::validation::{dns1123_label, label_value, qualified_name};

pub(crate) const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];

impl Kind for Pod {
    fn set_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_pod_spec(spec);
        let qos = qos_class(spec);
        let status = self.status.get_or_insert_with(PodStatus::default);
        status.phase.get_or_insert_with(|| "Pending".into());
        status.qos_class = Some(qos.into());
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        match &self.spec {
            Some(spec) => validate_pod_spec(spec, "spec", errors),
            None => errors.push(FieldError::required("spec", "")),
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        // Upstream allows only these to change on a running pod.
        let mut comparable = new.clone();
        for (container, old) in comparable.containers.iter_mut().zip(&old.containers) {
            container.image = old.image.clone();
        }
        for (container, old) in
            comparable.init_containers.iter_mut().flatten().zip(old.init_containers.iter().flatten())
        {
            container.image = old.image.clone();
        }
        comparable.active_deadline_seconds = old.active_deadline_seconds;
        let adds_tolerations =
            old.tolerations.iter().flatten().all(|t| new.tolerations.iter().flatten().any(|n| n == t));
        if adds_tolerations {
            comparable.tolerations = old.tolerations.clone();
        }
        if old.termination_grace_period_seconds.is_some_and(|g| g < 0)
            && new.termination_grace_period_seconds == Some(1)
        {
            comparable.termination_grace_period_seconds = old.termination_grace_period_seconds;
        }
        // The node is not among them: a pod is assigned through its binding subresource.
        if &comparable != old {
            errors.push(pod_update_forbidden());
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("Ready", "The aggregate readiness state of this pod for accepting traffic."),
            Column::string("Status", "The aggregate status of the containers in this pod."),
            Column::string(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            Column::age(),
            Column::string("IP", "The IP address assigned to the pod").wide(),
            Column::string("Node", "The name of the node to which the pod is scheduled").wide(),
            Column::string("Nominated Node", "The name of the node to which the pod is nominated").wide(),
            Column::string("Readiness Gates", "The readiness gates of the pod").wide(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let summary = summarize(self, now);
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let ip = status.pod_ips.iter().flatten().next().map(|ip| ip.ip.clone()).unwrap_or_default();
        let gates = spec.readiness_gates.as_deref().unwrap_or_default();
        let readiness_gates = if gates.is_empty() {
            "<none>".to_string()
        } else {
            let met = gates
                .iter()
                .filter(|g| {
                    status.conditions.iter().flatten().any(|c| c.type_ == g.condition_type && c.status == "True")
                })
                .count();
            format!("{met}/{}", gates.len())
        };
        vec![
            table::name(&self.metadata),
            Value::String(format!("{}/{}", summary.ready, summary.total)),
            Value::String(summary.reason),
            Value::String(summary.restarts),
            table::age(&self.metadata, now),
            table::or_none(ip),
            table::or_none(spec.node_name.unwrap_or_default()),
            table::or_none(status.nominated_node_name.unwrap_or_default()),
            Value::String(readiness_gates),
        ]
    }
}

fn pod_update_forbidden() -> FieldError {
    FieldError::forbidden(
        "spec",
        "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
    )
}

/// Upstream's pod spec defaults, plus what its admission plugins add to every pod.
pub(crate) fn default_pod_spec(spec: &mut PodSpec) {
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.security_context.get_or_insert_with(PodSecurityContext::default);
    spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    // The ServiceAccount admission plugin.
    let account =
        spec.service_account_name.clone().or_else(|| spec.service_account.clone()).unwrap_or_else(|| "default".into());
    spec.service_account_name = Some(account.clone());
    spec.service_account = Some(account);
    // The Priority admission plugin, for pods without a priority class.
    spec.priority.get_or_insert(0);
    spec.preemption_policy.get_or_insert_with(|| "PreemptLowerPriority".into());
    let host_network = spec.host_network.unwrap_or(false);
    for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        default_container(container, host_network);
    }
    for volume in spec.volumes.iter_mut().flatten() {
        default_volume(volume);
    }
}

fn default_container(container: &mut Container, host_network: bool) {
    container.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
    container.termination_message_policy.get_or_insert_with(|| "File".into());
    if container.image_pull_policy.is_none() {
        container.image_pull_policy = Some(default_pull_policy(container.image.as_deref().unwrap_or("")).into());
    }
    for port in container.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
        if host_network && port.host_port.is_none() {
            port.host_port = Some(port.container_port);
        }
    }
    for env in container.env.iter_mut().flatten() {
        if let Some(field) = env.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            field.api_version.get_or_insert_with(|| "v1".into());
        }
    }
    for probe in [&mut container.liveness_probe, &mut container.readiness_probe, &mut container.startup_probe]
        .into_iter()
        .flatten()
    {
        default_probe(probe);
    }
    // Limits without requests request the limit.
    if let Some(resources) = container.resources.as_mut()
        && let Some(limits) = resources.limits.clone()
    {
        let requests = resources.requests.get_or_insert_with(BTreeMap::new);
        for (name, limit) in limits {
            requests.entry(name).or_insert(limit);
        }
    }
    container.resources.get_or_insert_with(ResourceRequirements::default);
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (digests included).
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(probe: &mut Probe) {
    probe.timeout_seconds.get_or_insert(1);
    probe.period_seconds.get_or_insert(10);
    probe.success_threshold.get_or_insert(1);
    probe.failure_threshold.get_or_insert(3);
    if let Some(http) = probe.http_get.as_mut() {
        http.scheme.get_or_insert_with(|| "HTTP".into());
        if http.path.as_deref().unwrap_or("").is_empty() {
            http.path = Some("/".into());
        }
    }
}

fn default_volume(volume: &mut Volume) {
    // A volume with no source is an emptyDir.
    let v = serde_json::to_value(&*volume).unwrap_or_default();
    if v.as_object().is_some_and(|m| m.len() == 1) {
        volume.empty_dir = Some(Default::default());
    }
    const DEFAULT_MODE: i32 = 0o644;
    if let Some(cm) = volume.config_map.as_mut() {
        cm.default_mode.get_or_insert(DEFAULT_MODE);
    }
    if let Some(secret) = volume.secret.as_mut() {
        secret.default_mode.get_or_insert(DEFAULT_MODE);
    }
    if let Some(api) = volume.downward_api.as_mut() {
        api.default_mode.get_or_insert(DEFAULT_MODE);
    }
    if let Some(projected) = volume.projected.as_mut() {
        projected.default_mode.get_or_insert(DEFAULT_MODE);
    }
}

/// The QoS class upstream derives from requests and limits.
fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let resources = container.resources.clone().unwrap_or_default();
        let nonzero = |map: &Option<BTreeMap<String, Quantity>>, name: &str| {
            map.as_ref().and_then(|m| m.get(name)).and_then(|q| quantity::parse(&q.0).ok()).filter(|v| *v != 0)
        };
        for name in ["cpu", "memory"] {
            let request = nonzero(&resources.requests, name);
            let limit = nonzero(&resources.limits, name);
            any |= request.is_some() || limit.is_some();
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The runtime class of wasm pods, and the default: a pod without `runtimeClassName` runs as
/// wasm.
pub const WASM_RUNTIME_CLASS: &str = "wasm";

/// What a node's label for each runtime class it offers starts with.
const RUNTIME_LABEL_PREFIX: &str = "runtime.flotilla.dev/";

/// The runtime class a pod runs as: its `runtimeClassName`, else wasm.
pub fn runtime_class(spec: &PodSpec) -> &str {
    spec.runtime_class_name.as_deref().unwrap_or(WASM_RUNTIME_CLASS)
}

/// The label a node carries when it offers runtime class `class` (`runtime.flotilla.dev/wasm`),
/// which the scheduler matches pods against.
pub fn runtime_label(class: &str) -> String {
    format!("{RUNTIME_LABEL_PREFIX}{class}")
}

/// Why an `exec` handler cannot be honoured in a wasm pod.
const NO_EXEC: &str = "a wasm container has no processes, so there is nothing to exec: use an httpGet or tcpSocket handler, or runtimeClassName \"oci\"";

/// Validates a pod spec at `path` (`spec`, or `spec.template.spec` in a workload).
pub(crate) fn validate_pod_spec(spec: &PodSpec, path: &str, errors: &mut Vec<FieldError>) {
    // A pod that names no runtime class runs what its images are, which admission cannot
    // tell: only one that insists on wasm is refused here (the node says so for the others).
    if spec.runtime_class_name.as_deref() == Some(WASM_RUNTIME_CLASS) {
        forbid_exec(spec, path, errors);
    }
    let volumes: BTreeSet<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    let mut names = BTreeSet::new();
    if spec.containers.is_empty() {
        errors.push(FieldError::required(format!("{path}.containers"), ""));
    }
    for (list, containers) in
        [("initContainers", spec.init_containers.as_deref().unwrap_or_default()), ("containers", &spec.containers)]
    {
        for (i, container) in containers.iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            if container.name.is_empty() {
                errors.push(FieldError::required(format!("{at}.name"), ""));
            } else if let Err(e) = dns1123_label(&container.name) {
                errors.push(FieldError::invalid(format!("{at}.name"), &container.name, e));
            } else if !names.insert(container.name.as_str()) {
                errors.push(FieldError::duplicate(format!("{at}.name"), &container.name));
            }
            validate_container(container, &at, &volumes, errors);
            // A container's own restart policy makes an init container a sidecar; nothing else.
            match (list, container.restart_policy.as_deref()) {
                (_, None) | ("initContainers", Some("Always")) => {}
                ("initContainers", Some(policy)) => {
                    errors.push(FieldError::not_supported(format!("{at}.restartPolicy"), policy, &["Always"]));
                }
                (_, Some(_)) => {
                    errors.push(FieldError::forbidden(
                        format!("{at}.restartPolicy"),
                        "may not be set for non-init containers",
                    ));
                }
            }
            // An init container runs to its end before the next starts: it has no lifecycle to
            // hook or to probe, unless it is a sidecar that runs on beside the pod's containers.
            if list == "initContainers" && container.restart_policy.as_deref() != Some("Always") {
                let set = [
                    ("lifecycle", container.lifecycle.is_some()),
                    ("livenessProbe", container.liveness_probe.is_some()),
                    ("readinessProbe", container.readiness_probe.is_some()),
                    ("startupProbe", container.startup_probe.is_some()),
                ];
                for (field, _) in set.into_iter().filter(|(_, set)| *set) {
                    errors.push(FieldError::forbidden(
                        format!("{at}.{field}"),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                }
            }
        }
    }
    let mut volume_names = BTreeSet::new();
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("{path}.volumes[{i}]");
        if let Err(e) = dns1123_label(&volume.name) {
            errors.push(FieldError::invalid(format!("{at}.name"), &volume.name, e));
        } else if !volume_names.insert(volume.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{at}.name"), &volume.name));
        }
        validate_volume_files(volume, &at, errors);
    }
    check_one_of(spec.restart_policy.as_deref(), RESTART_POLICIES, &format!("{path}.restartPolicy"), errors);
    check_one_of(spec.dns_policy.as_deref(), DNS_POLICIES, &format!("{path}.dnsPolicy"), errors);
    if let Some(deadline) = spec.active_deadline_seconds
        && deadline <= 0
    {
        errors.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            deadline,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    for (key, value) in spec.node_selector.iter().flatten() {
        if let Err(e) = qualified_name(key) {
            errors.push(FieldError::invalid(format!("{path}.nodeSelector"), key, e));
        }
        if let Err(e) = label_value(value) {
            errors.push(FieldError::invalid(format!("{path}.nodeSelector"), value, e));
        }
    }
}

/// Refuses `exec` probes and lifecycle hooks, which a wasm pod cannot run.
fn forbid_exec(spec: &PodSpec, path: &str, errors: &mut Vec<FieldError>) {
    for (list, containers) in
        [("initContainers", spec.init_containers.as_deref().unwrap_or_default()), ("containers", &spec.containers)]
    {
        for (i, container) in containers.iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            let probes = [
                ("livenessProbe", container.liveness_probe.as_ref().and_then(|p| p.exec.as_ref())),
                ("readinessProbe", container.readiness_probe.as_ref().and_then(|p| p.exec.as_ref())),
                ("startupProbe", container.startup_probe.as_ref().and_then(|p| p.exec.as_ref())),
            ];
            let lifecycle = container.lifecycle.as_ref();
            let hooks = [
                ("lifecycle.postStart", lifecycle.and_then(|l| l.post_start.as_ref()).and_then(|h| h.exec.as_ref())),
                ("lifecycle.preStop", lifecycle.and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.exec.as_ref())),
            ];
            for (field, exec) in probes.into_iter().chain(hooks) {
                if exec.is_some() {
                    errors.push(FieldError::forbidden(format!("{at}.{field}.exec"), NO_EXEC));
                }
            }
        }
    }
}

fn validate_container(container: &Container, at: &str, volumes: &BTreeSet<&str>, errors: &mut Vec<FieldError>) {
    if container.image.as_deref().unwrap_or("").trim().is_empty() {
        errors.push(FieldError::required(format!("{at}.image"), ""));
    }
    check_one_of(container.image_pull_policy.as_deref(), PULL_POLICIES, &format!("{at}.imagePullPolicy"), errors);
    let mut port_names = BTreeSet::new();
    for (j, port) in container.ports.iter().flatten().enumerate() {
        validate_port(port, &format!("{at}.ports[{j}]"), &mut port_names, errors);
    }
    for (j, env) in container.env.iter().flatten().enumerate() {
        let valid = !env.name.is_empty()
            && env.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !env.name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            errors.push(FieldError::invalid(
                format!("{at}.env[{j}].name"),
                &env.name,
                "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')",
            ));
        }
    }
    let mut mount_paths = BTreeSet::new();
    for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let at = format!("{at}.volumeMounts[{j}]");
        if !volumes.contains(mount.name.as_str()) {
            errors.push(FieldError::not_found(format!("{at}.name"), &mount.name));
        }
        if mount.mount_path.is_empty() {
            errors.push(FieldError::required(format!("{at}.mountPath"), ""));
        } else if !mount_paths.insert(mount.mount_path.as_str()) {
            errors.push(FieldError::invalid(format!("{at}.mountPath"), &mount.mount_path, "must be unique"));
        }
        let sub_path = mount.sub_path.as_deref().unwrap_or_default();
        if !sub_path.is_empty() {
            local_descending_path(sub_path, &format!("{at}.subPath"), errors);
        }
        let expr = mount.sub_path_expr.as_deref().unwrap_or_default();
        if !expr.is_empty() {
            if !sub_path.is_empty() {
                errors.push(FieldError::invalid(
                    format!("{at}.subPathExpr"),
                    expr,
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            local_descending_path(expr, &format!("{at}.subPathExpr"), errors);
        }
    }
    if let Some(resources) = &container.resources {
        validate_resources(resources, &format!("{at}.resources"), errors);
    }
}

/// The paths of the files a configMap, secret, downwardAPI or projected volume holds: each
/// stays beneath the volume, as upstream's `validateKeyToPath` and
/// `validateDownwardAPIVolumeFile` require.
fn validate_volume_files(volume: &Volume, at: &str, errors: &mut Vec<FieldError>) {
    let key_paths = |items: Option<&Vec<KeyToPath>>, at: &str, errors: &mut Vec<FieldError>| {
        for (k, item) in items.into_iter().flatten().enumerate() {
            let at = format!("{at}.items[{k}]");
            if item.key.is_empty() {
                errors.push(FieldError::required(format!("{at}.key"), ""));
            }
            local_file_path(&item.path, &format!("{at}.path"), errors);
        }
    };
    // The volume's own source, then each source of a projected volume.
    let mut sources = vec![(
        at.to_string(),
        volume.config_map.as_ref().and_then(|s| s.items.as_ref()),
        volume.secret.as_ref().and_then(|s| s.items.as_ref()),
        volume.downward_api.as_ref().and_then(|s| s.items.as_ref()),
    )];
    for (k, source) in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()).enumerate() {
        sources.push((
            format!("{at}.projected.sources[{k}]"),
            source.config_map.as_ref().and_then(|s| s.items.as_ref()),
            source.secret.as_ref().and_then(|s| s.items.as_ref()),
            source.downward_api.as_ref().and_then(|s| s.items.as_ref()),
        ));
    }
    for (at, config_map, secret, downward) in sources {
        key_paths(config_map, &format!("{at}.configMap"), errors);
        key_paths(secret, &format!("{at}.secret"), errors);
        for (k, item) in downward.into_iter().flatten().enumerate() {
            local_file_path(&item.path, &format!("{at}.downwardAPI.items[{k}].path"), errors);
        }
    }
}

/// Upstream's `validateLocalDescendingPath`: relative, and no `..` element.
fn local_descending_path(path: &str, at: &str, errors: &mut Vec<FieldError>) {
    if path.starts_with('/') {
        errors.push(FieldError::invalid(at, path, "must be a relative path"));
    }
    if path.split('/').any(|part| part == "..") {
        errors.push(FieldError::invalid(at, path, "must not contain '..'"));
    }
}

/// Upstream's `ValidateLocalNonReservedPath` for a volume's file: also required, and not
/// starting with `..` (the kubelet's atomic writer keeps its own `..data` there).
fn local_file_path(path: &str, at: &str, errors: &mut Vec<FieldError>) {
    if path.is_empty() {
        errors.push(FieldError::required(at, ""));
        return;
    }
    local_descending_path(path, at, errors);
    if path.starts_with("..") && !path.starts_with("../") {
        errors.push(FieldError::invalid(at, path, "must not start with '..'"));
    }
}

fn validate_port(port: &ContainerPort, at: &str, names: &mut BTreeSet<String>, errors: &mut Vec<FieldError>) {
    if !(1..=65535).contains(&port.container_port) {
        errors.push(FieldError::invalid(
            format!("{at}.containerPort"),
            port.container_port,
            "must be between 1 and 65535, inclusive",
        ));
    }
    if let Some(host) = port.host_port
        && !(0..=65535).contains(&host)
    {
        errors.push(FieldError::invalid(format!("{at}.hostPort"), host, "must be between 1 and 65535, inclusive"));
    }
    check_one_of(port.protocol.as_deref(), PROTOCOLS, &format!("{at}.protocol"), errors);
    if let Some(name) = &port.name {
        if let Err(e) = port_name(name) {
            errors.push(FieldError::invalid(format!("{at}.name"), name, e));
        } else if !names.insert(name.clone()) {
            errors.push(FieldError::duplicate(format!("{at}.name"), name));
        }
    }
}

/// An IANA service name: at most 15 lowercase letters, digits and single dashes, with a letter.
pub(crate) fn port_name(name: &str) -> Result<(), String> {
    if name.len() > 15 {
        return Err("must be no more than 15 characters".into());
    }
    let ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok { Ok(()) } else { Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into()) }
}

fn validate_resources(resources: &ResourceRequirements, at: &str, errors: &mut Vec<FieldError>) {
    let mut parsed = BTreeMap::new();
    for (kind, map) in [("limits", &resources.limits), ("requests", &resources.requests)] {
        for (name, value) in map.iter().flatten() {
            match quantity::parse(&value.0) {
                Err(e) => errors.push(FieldError::invalid(format!("{at}.{kind}[{name}]"), &value.0, e)),
                Ok(v) if v < 0 => errors.push(FieldError::invalid(
                    format!("{at}.{kind}[{name}]"),
                    &value.0,
                    "must be greater than or equal to 0",
                )),
                Ok(v) => {
                    parsed.insert((kind, name.as_str()), (v, value.0.as_str()));
                }
            }
        }
    }
    for (&(kind, name), &(request, shown)) in &parsed {
        if kind == "requests"
            && let Some(&(limit, limit_shown)) = parsed.get(&("limits", name))
            && request > limit
        {
            errors.push(FieldError::invalid(
                format!("{at}.requests"),
                shown,
                format!("must be less than or equal to {name} limit of {limit_shown}"),
            ));
        }
    }
}

pub(crate) fn check_one_of(value: Option<&str>, allowed: &[&str], field: &str, errors: &mut Vec<FieldError>) {
    if let Some(value) = value
        && !allowed.contains(&value)
    {
        errors.push(FieldError::not_supported(field, value, allowed));
    }
}

/// Validates a workload's pod template, whose pods may only use `restart_policies`.
pub(crate) fn validate_template(
    template: &PodTemplateSpec,
    path: &str,
    restart_policies: &[&str],
    errors: &mut Vec<FieldError>,
) {
    let meta = template.metadata.clone().unwrap_or_default();
    for (key, value) in meta.labels.iter().flatten() {
        if let Err(e) = qualified_name(key) {
            errors.push(FieldError::invalid(format!("{path}.metadata.labels"), key, e));
        }
        if let Err(e) = label_value(value) {
            errors.push(FieldError::invalid(format!("{path}.metadata.labels"), value, e));
        }
    }
    match &template.spec {
        None => errors.push(FieldError::required(format!("{path}.spec"), "")),
        Some(spec) => {
            validate_pod_spec(spec, &format!("{path}.spec"), errors);
            if let Some(policy) = spec.restart_policy.as_deref()
                && RESTART_POLICIES.contains(&policy)
                && !restart_policies.contains(&policy)
            {
                errors.push(FieldError::not_supported(format!("{path}.spec.restartPolicy"), policy, restart_policies));
            }
        }
    }
}

/// Defaults a workload's pod template.
pub(crate) fn default_template(template: &mut PodTemplateSpec) {
    default_pod_spec(template.spec.get_or_insert_with(Default::default));
}

struct Summary {
    ready: usize,
    total: usize,
    reason: String,
    restarts: String,
}

/// The READY, STATUS and RESTARTS columns, computed as upstream's `printPod` does.
fn summarize(pod: &Pod, now: Timestamp) -> Summary {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let restartable = |name: &str| {
        spec.init_containers.iter().flatten().any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    };
    let mut total =
        spec.containers.len() + spec.init_containers.iter().flatten().filter(|c| restartable(&c.name)).count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;
    let mut reason = status.reason.clone().unwrap_or_else(|| status.phase.clone().unwrap_or_default());
    if status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated"))
    {
        reason = "SchedulingGated".into();
    }
    let init_total = spec.init_containers.as_ref().map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in status.init_container_statuses.iter().flatten().enumerate() {
        restarts += c.restart_count;
        let finished =
            c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.finished_at.as_ref()).map(|t| t.0);
        if finished > last_restart {
            last_restart = finished;
        }
        let sidecar = restartable(&c.name);
        if sidecar {
            sidecar_restarts += c.restart_count;
            if finished > last_sidecar_restart {
                last_sidecar_restart = finished;
            }
        }
        let state = c.state.clone().unwrap_or_default();
        match (&state.terminated, &state.waiting) {
            (Some(t), _) if t.exit_code == 0 => continue,
            _ if sidecar && c.started == Some(true) => {
                if c.ready {
                    ready += 1;
                }
                continue;
            }
            (Some(t), _) => {
                reason = match t.reason.as_deref() {
                    Some(r) if !r.is_empty() => format!("Init:{r}"),
                    _ if t.signal.unwrap_or(0) != 0 => format!("Init:Signal:{}", t.signal.unwrap_or(0)),
                    _ => format!("Init:ExitCode:{}", t.exit_code),
                };
            }
            (None, Some(w)) if w.reason.as_deref().is_some_and(|r| !r.is_empty() && r != "PodInitializing") => {
                reason = format!("Init:{}", w.reason.clone().unwrap_or_default());
            }
            _ => reason = format!("Init:{i}/{init_total}"),
        }
        initializing = true;
        break;
    }
    let initialized = status.conditions.iter().flatten().any(|c| c.type_ == "Initialized" && c.status == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut running = false;
        for c in status.container_statuses.iter().flatten().rev() {
            restarts += c.restart_count;
            let finished = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.finished_at.as_ref())
                .map(|t| t.0);
            if finished > last_restart {
                last_restart = finished;
            }
            let state = c.state.clone().unwrap_or_default();
            if let Some(r) = state.waiting.as_ref().and_then(|w| w.reason.clone()).filter(|r| !r.is_empty()) {
                reason = r;
            } else if let Some(t) = &state.terminated {
                reason = match t.reason.as_deref() {
                    Some(r) if !r.is_empty() => r.to_string(),
                    _ if t.signal.unwrap_or(0) != 0 => format!("Signal:{}", t.signal.unwrap_or(0)),
                    _ => format!("ExitCode:{}", t.exit_code),
                };
            } else if c.ready && state.running.is_some() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let pod_ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
            reason = if pod_ready { "Running".into() } else { "NotReady".into() };
        }
    }
    let phase = status.phase.as_deref().unwrap_or("");
    if pod.metadata.deletion_timestamp.is_some() && status.reason.as_deref() == Some("NodeLost") {
        reason = "Unknown".into();
    } else if pod.metadata.deletion_timestamp.is_some() && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    let restarts = match last_restart {
        Some(at) if restarts != 0 => {
            format!("{restarts} ({} ago)", table::human_duration(now.as_second() - at.as_second()))
        }
        _ => restarts.to_string(),
    };
    total = total.max(ready);
    Summary { ready, total, reason, restarts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("registry:5000/app"), "Always");
        assert_eq!(default_pull_policy("registry:5000/app:v1"), "IfNotPresent");
        assert_eq!(default_pull_policy("app@sha256:abc"), "IfNotPresent");
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    /// What validation says of `value` once defaulted, one line per cause.
    fn refusals(value: serde_json::Value) -> Vec<String> {
        let mut p = pod(value);
        p.set_defaults();
        let mut errors = Vec::new();
        p.validate(&mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_match_upstream() {
        let mut p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "app:v1", "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                "readinessProbe": {"httpGet": {"port": 80}}}], "volumes": [{"name": "scratch"}]}
        }));
        p.set_defaults();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
        assert_eq!(c.ports.as_ref().unwrap()[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(c.resources.as_ref().unwrap().requests, c.resources.as_ref().unwrap().limits);
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!((probe.period_seconds, probe.http_get.as_ref().unwrap().path.as_deref()), (Some(10), Some("/")));
        assert!(spec.volumes.as_ref().unwrap()[0].empty_dir.is_some());
        let status = p.status.as_ref().unwrap();
        assert_eq!((status.phase.as_deref(), status.qos_class.as_deref()), (Some("Pending"), Some("Guaranteed")));
    }

    #[test]
    fn invalid_specs_name_every_problem() {
        let shown = refusals(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"restartPolicy": "Sometimes", "containers": [
                {"name": "c", "ports": [{"containerPort": 70000}], "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
                 "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}},
                {"name": "c", "image": "i"}]}
        }));
        assert_eq!(
            shown,
            vec![
                "spec.containers[0].image: Required value",
                "spec.containers[0].ports[0].containerPort: Invalid value: \"70000\": must be between 1 and 65535, inclusive",
                "spec.containers[0].volumeMounts[0].name: Not found: \"nope\"",
                "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
                "spec.containers[1].name: Duplicate value: \"c\"",
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ]
        );
    }

    #[test]
    fn an_init_container_has_hooks_and_probes_only_as_a_sidecar() {
        let init = |restart: Option<&str>| {
            refusals(serde_json::json!({"metadata": {"name": "p"}, "spec": {
                "initContainers": [{"name": "i", "image": "i", "restartPolicy": restart,
                    "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
                    "readinessProbe": {"tcpSocket": {"port": 80}}}],
                "containers": [{"name": "c", "image": "i"}]}}))
        };
        assert_eq!(
            init(None),
            [
                "spec.initContainers[0].lifecycle: Forbidden: may not be set for init containers without restartPolicy=Always",
                "spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
            ]
        );
        assert!(init(Some("Always")).is_empty());
    }

    #[test]
    fn only_an_init_container_restarts_on_its_own_and_only_always() {
        let shown = refusals(serde_json::json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i", "image": "i", "restartPolicy": "Never"}],
            "containers": [{"name": "c", "image": "i", "restartPolicy": "Always"}]}}));
        assert_eq!(
            shown,
            [
                "spec.initContainers[0].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
            ]
        );
    }

    #[test]
    fn paths_that_climb_out_of_a_volume_are_refused_as_upstream_refuses_them() {
        let shown = refusals(serde_json::json!({"metadata": {"name": "p"}, "spec": {
        "volumes": [
            {"name": "v", "emptyDir": {}},
            {"name": "c", "configMap": {"name": "m", "items": [{"key": "k", "path": "../x"}, {"key": "", "path": "ok"}]}},
            {"name": "d", "downwardAPI": {"items": [{"path": "/abs", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "p", "projected": {"sources": [{"secret": {"name": "s", "items": [{"key": "k", "path": "..data"}]}}]}},
        ],
        "containers": [{"name": "c", "image": "i", "volumeMounts": [
            {"name": "v", "mountPath": "/a", "subPath": "/etc"},
            {"name": "v", "mountPath": "/b", "subPath": "x/../../y"},
            {"name": "v", "mountPath": "/c", "subPathExpr": "$(A)/..", "subPath": "z"},
            {"name": "v", "mountPath": "/a", "subPath": "fine/./path"},
        ]}]}}));
        assert_eq!(
            shown,
            vec![
                "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"/etc\": must be a relative path",
                "spec.containers[0].volumeMounts[1].subPath: Invalid value: \"x/../../y\": must not contain '..'",
                "spec.containers[0].volumeMounts[2].subPathExpr: Invalid value: \"$(A)/..\": subPathExpr and subPath are mutually exclusive",
                "spec.containers[0].volumeMounts[2].subPathExpr: Invalid value: \"$(A)/..\": must not contain '..'",
                "spec.containers[0].volumeMounts[3].mountPath: Invalid value: \"/a\": must be unique",
                "spec.volumes[1].configMap.items[0].path: Invalid value: \"../x\": must not contain '..'",
                "spec.volumes[1].configMap.items[1].key: Required value",
                "spec.volumes[2].downwardAPI.items[0].path: Invalid value: \"/abs\": must be a relative path",
                "spec.volumes[3].projected.sources[0].secret.items[0].path: Invalid value: \"..data\": must not start with '..'",
            ]
        );
    }

    #[test]
    fn exec_handlers_are_refused_in_wasm_pods_with_the_reason() {
        let spec = |runtime: Option<&str>| {
            refusals(serde_json::json!({"metadata": {"name": "p"}, "spec": {
                "runtimeClassName": runtime,
                "containers": [{"name": "c", "image": "i",
                    "livenessProbe": {"exec": {"command": ["true"]}},
                    "readinessProbe": {"httpGet": {"port": 80}},
                    "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}}]}}))
        };
        let refused = spec(Some("wasm"));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0]
                .starts_with("spec.containers[0].livenessProbe.exec: Forbidden: a wasm container has no processes")
        );
        assert!(refused[1].starts_with("spec.containers[0].lifecycle.preStop.exec: Forbidden"));
        assert_eq!(spec(None), Vec::<String>::new(), "a pod whose images decide its runtime");
        assert_eq!(spec(Some("oci")), Vec::<String>::new());
    }

    #[test]
    fn only_images_and_a_few_fields_change_on_a_running_pod() {
        let mut old = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "a"}]}}),
        );
        old.set_defaults();
        let mut new = old.clone();
        new.spec.as_mut().unwrap().containers[0].image = Some("b".into());
        let mut errors = Vec::new();
        new.validate_update(&old, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        new.spec.as_mut().unwrap().containers[0].working_dir = Some("/tmp".into());
        new.validate_update(&old, &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("spec: Forbidden: pod updates may not change fields"));
    }
}
