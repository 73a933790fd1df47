//! core/v1 kinds other than pods and services: namespaces, nodes, config maps, secrets,
//! events, service accounts and endpoints.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, NamespaceSpec, NamespaceStatus, Node, Secret, ServiceAccount,
};
use serde_json::Value;

use super::{Kind, always_written};
use crate::error::FieldError;
use crate::table::{self, Column};
use crate::validation::{self, Check};

/// The label upstream keeps equal to a namespace's name, so selectors can pick namespaces by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The annotation a node publishes the SHA-256 of its API's serving certificate in: whoever
/// calls the node (the API server, another node) accepts that certificate alone.
pub const SERVING_CERT_ANNOTATION: &str = "node.flotilla.dev/serving-cert-sha256";
/// Total bytes of a ConfigMap's or Secret's data: upstream's `MaxSecretSize`.
const MAX_DATA_BYTES: usize = 1024 * 1024;

impl Kind for Namespace {
    fn name_check(name: &str) -> Check {
        validation::dns1123_label(name)
    }

    fn set_defaults(&mut self) {
        // Set when the namespace is created; afterwards only `namespaces/finalize` changes them.
        let spec = self.spec.get_or_insert_with(NamespaceSpec::default);
        spec.finalizers.get_or_insert_with(|| vec!["kubernetes".into()]);
        self.status.get_or_insert_with(NamespaceStatus::default).phase.get_or_insert_with(|| "Active".into());
        if let Some(name) = self.metadata.name.clone() {
            self.metadata.labels.get_or_insert_with(Default::default).insert(NAMESPACE_NAME_LABEL.into(), name);
        }
    }

    fn columns() -> Vec<Column> {
        vec![Column::name(), Column::string("Status", "The status of the namespace"), Column::age()]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let phase = self.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        vec![table::name(&self.metadata), Value::String(phase), table::age(&self.metadata, now)]
    }
}

impl Kind for Node {
    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        // A Node's pod range is where every other node routes its pods' addresses: set once,
        // never moved (upstream's ValidateNodeUpdate).
        let ranges = |node: &Node| node.spec.as_ref().and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        let (before, after) = (ranges(old), ranges(self));
        let single = |node: &Node| node.spec.as_ref().and_then(|s| s.pod_cidr.clone()).unwrap_or_default();
        let moved = (!before.is_empty() && before != after) || (!single(old).is_empty() && single(old) != single(self));
        if moved {
            errors.push(FieldError::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
    }

    fn set_defaults(&mut self) {
        // What Go writes of a Node with nothing set: its struct fields, empty (the Python
        // client's models refuse a `nodeInfo` without its ten strings).
        always_written(&mut self.spec);
        let status = self.status.get_or_insert_with(Default::default);
        always_written(&mut status.node_info);
        always_written(&mut status.daemon_endpoints.get_or_insert_with(Default::default).kubelet_endpoint);
        if status.allocatable.is_none() {
            status.allocatable = status.capacity.clone();
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("Status", "The status of the node"),
            Column::string("Roles", "The roles of the node"),
            Column::age(),
            Column::string("Version", "Kubelet Version reported by the node.").wide().with_priority(0),
            Column::string(
                "Internal-IP",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            )
            .wide(),
            Column::string(
                "External-IP",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            )
            .wide(),
            Column::string(
                "OS-Image",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            )
            .wide(),
            Column::string(
                "Kernel-Version",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            )
            .wide(),
            Column::string(
                "Container-Runtime",
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            )
            .wide(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let mut state: Vec<String> = status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ == "Ready")
            .map(|c| if c.status == "True" { "Ready".to_string() } else { "NotReady".to_string() })
            .collect();
        if state.is_empty() {
            state.push("Unknown".into());
        }
        if self.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
            state.push("SchedulingDisabled".into());
        }
        let mut roles: Vec<String> = Vec::new();
        for (key, value) in self.metadata.labels.iter().flatten() {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/").filter(|r| !r.is_empty()) {
                roles.push(role.into());
            } else if key == "kubernetes.io/role" && !value.is_empty() {
                roles.push(value.clone());
            }
        }
        let address = |kind: &str| {
            status.addresses.iter().flatten().find(|a| a.type_ == kind).map(|a| a.address.clone()).unwrap_or_default()
        };
        let info = status.node_info.clone().unwrap_or_default();
        let or_unknown = |s: String| Value::String(if s.is_empty() { "<unknown>".into() } else { s });
        vec![
            table::name(&self.metadata),
            Value::String(state.join(",")),
            table::or_none(roles.join(",")),
            table::age(&self.metadata, now),
            Value::String(info.kubelet_version.clone()),
            table::or_none(address("InternalIP")),
            table::or_none(address("ExternalIP")),
            or_unknown(info.os_image.clone()),
            or_unknown(info.kernel_version.clone()),
            or_unknown(info.container_runtime_version.clone()),
        ]
    }
}

impl Kind for ConfigMap {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        let text = self.data.iter().flatten().map(|(k, v)| (k, v.len()));
        let binary = self.binary_data.iter().flatten().map(|(k, v)| (k, v.0.len()));
        data_keys(text.chain(binary), "data", errors);
    }

    fn columns() -> Vec<Column> {
        vec![Column::name(), Column::integer("Data", "Data contains the configuration data."), Column::age()]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let count = self.data.as_ref().map_or(0, |d| d.len()) + self.binary_data.as_ref().map_or(0, |d| d.len());
        vec![table::name(&self.metadata), Value::from(count), table::age(&self.metadata, now)]
    }
}

impl Kind for Secret {
    fn set_defaults(&mut self) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        // `stringData` is write-only: it is merged into `data` (and wins over it), as upstream does.
        if let Some(strings) = self.string_data.take() {
            let data = self.data.get_or_insert_with(Default::default);
            for (key, value) in strings {
                data.insert(key, ByteString(value.into_bytes()));
            }
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        data_keys(self.data.iter().flatten().map(|(k, v)| (k, v.0.len())), "data", errors);
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        validation::immutable(&self.type_, &old.type_, "type", errors);
        if old.immutable == Some(true) {
            validation::immutable(&self.data, &old.data, "data", errors);
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("Type", "The type of the secret"),
            Column::integer("Data", "The number of entries in the secret"),
            Column::age(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        vec![
            table::name(&self.metadata),
            Value::String(self.type_.clone().unwrap_or_default()),
            Value::from(self.data.as_ref().map_or(0, |d| d.len())),
            table::age(&self.metadata, now),
        ]
    }
}

/// Keys of a ConfigMap or Secret: `[-._a-zA-Z0-9]+`, unique, and at most 1 MiB of data in all.
fn data_keys<'a>(entries: impl Iterator<Item = (&'a String, usize)>, field: &str, errors: &mut Vec<FieldError>) {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (key, size) in entries {
        total += size;
        let valid = !key.is_empty()
            && key.len() <= 253
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && key != "."
            && key != "..";
        if !valid {
            errors.push(FieldError::invalid(
                format!("{field}[{key}]"),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
        if !seen.insert(key.clone()) {
            errors.push(FieldError::invalid(format!("{field}[{key}]"), key, "duplicate of key present in binaryData"));
        }
    }
    if total > MAX_DATA_BYTES {
        errors.push(FieldError::too_long(field, MAX_DATA_BYTES));
    }
}

impl Kind for Event {
    fn columns() -> Vec<Column> {
        vec![
            Column::string("Last Seen", "Time when last this event has been seen"),
            Column::string("Type", "Type of this event (Normal, Warning), new types could be added in the future."),
            Column::string(
                "Reason",
                "Reason why the action was taken. It is human-readable. This field cannot be empty for new Events and it can have at most 128 characters.",
            ),
            Column::string("Object", "The object that this event is about. Mapped from the involvedObject field."),
            Column::string(
                "Subobject",
                "The subobject that this event is about. Mapped from the involvedObject.fieldPath field.",
            )
            .wide(),
            Column::string(
                "Source",
                "The component reporting this event. Should be a short machine understandable string.",
            )
            .wide(),
            Column::string("Message", "A human-readable description of the status of this operation."),
            Column::string("First Seen", "Time when this event has been seen first.").wide(),
            Column::integer("Count", "The number of times this event has occurred.").wide(),
            Column { format: "name", ..Column::string("Name", "Name of the event.").wide() },
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let first = match &self.first_timestamp {
            Some(t) => table::since(Some(t), now),
            None => table::since(
                self.event_time.as_ref().map(|m| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(m.0)).as_ref(),
                now,
            ),
        };
        let mut last = match &self.last_timestamp {
            Some(t) => table::since(Some(t), now),
            None => first.clone(),
        };
        let mut count = self.count.unwrap_or(0);
        if let Some(series) = &self.series {
            if let Some(observed) = &series.last_observed_time {
                last = table::since(Some(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(observed.0)), now);
            }
            count = series.count.unwrap_or(count);
        } else if count == 0 {
            count = 1;
        }
        let involved = &self.involved_object;
        let kind = involved.kind.clone().unwrap_or_default().to_lowercase();
        let target = match involved.name.as_deref() {
            Some(name) if !name.is_empty() => format!("{kind}/{name}"),
            _ => kind,
        };
        let source = self.source.clone().unwrap_or_default();
        let component =
            source.component.filter(|c| !c.is_empty()).or_else(|| self.reporting_component.clone()).unwrap_or_default();
        let host =
            source.host.filter(|h| !h.is_empty()).or_else(|| self.reporting_instance.clone()).unwrap_or_default();
        let source = if host.is_empty() { component } else { format!("{component}, {host}") };
        vec![
            Value::String(last),
            Value::String(self.type_.clone().unwrap_or_default()),
            Value::String(self.reason.clone().unwrap_or_default()),
            Value::String(target),
            Value::String(involved.field_path.clone().unwrap_or_default()),
            Value::String(source),
            Value::String(self.message.clone().unwrap_or_default().trim().to_string()),
            Value::String(first),
            Value::from(count),
            table::name(&self.metadata),
        ]
    }
}

impl Kind for ServiceAccount {
    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::integer(
                "Secrets",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        vec![
            table::name(&self.metadata),
            Value::from(self.secrets.as_ref().map_or(0, |s| s.len())),
            table::age(&self.metadata, now),
        ]
    }
}

impl Kind for Endpoints {
    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("Endpoints", "Endpoints is the list of endpoints in the resource."),
            Column::age(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        const MAX: usize = 3;
        let mut list = Vec::new();
        let mut count = 0;
        for subset in self.subsets.iter().flatten() {
            let addresses = subset.addresses.clone().unwrap_or_default();
            let ports = subset.ports.clone().unwrap_or_default();
            if ports.is_empty() {
                count += addresses.len();
                list.extend(addresses.iter().map(|a| a.ip.clone()));
                continue;
            }
            for port in &ports {
                count += addresses.len();
                list.extend(addresses.iter().map(|a| join_host_port(&a.ip, port.port)));
            }
        }
        let shown = if count == 0 && self.subsets.as_ref().is_none_or(|s| s.is_empty()) {
            "<none>".to_string()
        } else if list.len() > MAX {
            format!("{} + {} more...", list[..MAX].join(","), count - MAX)
        } else {
            list.join(",")
        };
        vec![table::name(&self.metadata), Value::String(shown), table::age(&self.metadata, now)]
    }
}

/// `net.JoinHostPort`: IPv6 addresses in brackets.
pub(crate) fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}
