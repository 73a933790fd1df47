//! Services: upstream's defaults (`SetDefaults_Service`), validation and columns. The cluster
//! IP is allocated by the API server, which knows which are taken.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::Kind;
use super::pod::{check_one_of, port_name};
use crate::error::FieldError;
use crate::table::{self, Column};
use crate::validation::{self, Check, dns1123_label, label_value, qualified_name};

const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const AFFINITIES: &[&str] = &["None", "ClientIP"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

impl Kind for Service {
    fn name_check(name: &str) -> Check {
        validation::dns1035_label(name)
    }

    fn set_defaults(&mut self) {
        // Upstream's ServiceStatus and its LoadBalancerStatus are struct fields, which Go always
        // writes: `status: {loadBalancer: {}}` before anything sets them.
        self.status.get_or_insert_with(Default::default).load_balancer.get_or_insert_with(Default::default);
        let spec = self.spec.get_or_insert_with(ServiceSpec::default);
        let affinity = spec.session_affinity.get_or_insert_with(|| "None".into()).clone();
        if affinity == "None" {
            spec.session_affinity_config = None;
        }
        let kind = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
        for port in spec.ports.iter_mut().flatten() {
            port.protocol.get_or_insert_with(|| "TCP".into());
            let unset = matches!(&port.target_port, None | Some(IntOrString::Int(0)))
                || matches!(&port.target_port, Some(IntOrString::String(s)) if s.is_empty());
            if unset {
                port.target_port = Some(IntOrString::Int(port.port));
            }
        }
        let external =
            kind == "NodePort" || kind == "LoadBalancer" || !spec.external_ips.clone().unwrap_or_default().is_empty();
        if external && spec.external_traffic_policy.is_none() {
            spec.external_traffic_policy = Some("Cluster".into());
        }
        if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
            spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
        }
        if kind == "LoadBalancer" {
            spec.allocate_load_balancer_node_ports.get_or_insert(true);
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let spec = self.spec.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        check_one_of(Some(kind), TYPES, "spec.type", errors);
        check_one_of(spec.session_affinity.as_deref(), AFFINITIES, "spec.sessionAffinity", errors);
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.clone().unwrap_or_default();
        if ports.is_empty() && !headless && kind != "ExternalName" {
            errors.push(FieldError::required("spec.ports", ""));
        }
        if kind == "ExternalName" && spec.external_name.as_deref().unwrap_or("").is_empty() {
            errors.push(FieldError::required("spec.externalName", ""));
        }
        let mut names = std::collections::BTreeSet::new();
        // (protocol, port) and (protocol, nodePort) pairs, each once (upstream's checks: two
        // ports on one frontend would be one route).
        let (mut frontends, mut node_ports) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
        for (i, port) in ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            if !frontends.insert((protocol, port.port)) {
                // Go prints the key, a ServicePort with only these two fields set, with `%#v`.
                let key = format!(
                    "core.ServicePort{{Name:\"\", Protocol:\"{protocol}\", AppProtocol:(*string)(nil), Port:{}, \
                     TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                    port.port
                );
                errors.push(FieldError::duplicate(at.clone(), key));
            }
            if let Some(node_port) = port.node_port.filter(|p| *p != 0)
                && !node_ports.insert((protocol, node_port))
            {
                errors.push(FieldError::duplicate(format!("{at}.nodePort"), node_port));
            }
            match port.name.as_deref() {
                None | Some("") if ports.len() > 1 => errors.push(FieldError::required(format!("{at}.name"), "")),
                None | Some("") => {}
                Some(name) => {
                    if let Err(e) = dns1123_label(name) {
                        errors.push(FieldError::invalid(format!("{at}.name"), name, e));
                    } else if !names.insert(name.to_string()) {
                        errors.push(FieldError::duplicate(format!("{at}.name"), name));
                    }
                }
            }
            if !(1..=65535).contains(&port.port) {
                errors.push(FieldError::invalid(
                    format!("{at}.port"),
                    port.port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            check_one_of(port.protocol.as_deref(), PROTOCOLS, &format!("{at}.protocol"), errors);
            match &port.target_port {
                Some(IntOrString::Int(p)) if !(1..=65535).contains(p) => errors.push(FieldError::invalid(
                    format!("{at}.targetPort"),
                    p,
                    "must be between 1 and 65535, inclusive",
                )),
                Some(IntOrString::String(name)) => {
                    if let Err(e) = port_name(name) {
                        errors.push(FieldError::invalid(format!("{at}.targetPort"), name, e));
                    }
                }
                _ => {}
            }
            if let Some(node_port) = port.node_port
                && !(1..=65535).contains(&node_port)
            {
                errors.push(FieldError::invalid(
                    format!("{at}.nodePort"),
                    node_port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        for (key, value) in spec.selector.iter().flatten() {
            if let Err(e) = qualified_name(key) {
                errors.push(FieldError::invalid("spec.selector", key, e));
            }
            if let Err(e) = label_value(value) {
                errors.push(FieldError::invalid("spec.selector", value, e));
            }
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        let (new, old) = (self.spec.clone().unwrap_or_default(), old.spec.clone().unwrap_or_default());
        // The cluster IP is fixed once allocated (an update that leaves it out keeps it).
        if new.cluster_ip.is_some()
            && old.cluster_ip.is_some()
            && new.cluster_ip != old.cluster_ip
            && new.type_.as_deref() != Some("ExternalName")
        {
            validation::immutable(&new.cluster_ip, &old.cluster_ip, "spec.clusterIPs[0]", errors);
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("Type", "The type of the service."),
            Column::string("Cluster-IP", "The IP address of the service."),
            Column::string("External-IP", "The external IP address of the service."),
            Column::string("Port(s)", "The ports exposed by the service."),
            Column::age(),
            Column::string("Selector", "The label selector of the service.").wide(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let cluster_ip = match spec.cluster_ip.as_deref() {
            Some(ip) if !ip.is_empty() && kind != "ExternalName" => ip.to_string(),
            _ => "<none>".into(),
        };
        let ingress: Vec<String> = self
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .collect();
        let external_ips = spec.external_ips.clone().unwrap_or_default();
        let external = match kind.as_str() {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" => {
                let all: Vec<String> = ingress.into_iter().chain(external_ips).collect();
                if all.is_empty() { "<pending>".into() } else { all.join(",") }
            }
            _ => external_ips.join(","),
        };
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                match p.node_port {
                    Some(node_port) => format!("{}:{node_port}/{protocol}", p.port),
                    None => format!("{}/{protocol}", p.port),
                }
            })
            .collect();
        let selector: Vec<String> = spec.selector.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        vec![
            table::name(&self.metadata),
            Value::String(kind),
            Value::String(cluster_ip),
            table::or_none(external),
            table::or_none(ports.join(",")),
            table::age(&self.metadata, now),
            table::or_none(selector.join(",")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_or_node_port_twice_for_one_protocol_is_refused() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "spec": {"type": "NodePort", "ports": [
                {"name": "a", "port": 80, "nodePort": 30080},
                {"name": "b", "port": 80, "nodePort": 30080},
                {"name": "c", "port": 80, "protocol": "UDP", "nodePort": 30080},
            ]},
        }))
        .unwrap();
        let mut errors = Vec::new();
        service.validate(&mut errors);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "spec.ports[1]: Duplicate value: \"core.ServicePort{Name:\\\"\\\", Protocol:\\\"TCP\\\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\\\"\\\"}, NodePort:0}\"",
                "spec.ports[1].nodePort: Duplicate value: \"30080\"",
            ]
        );
    }
}
