//! autoscaling/v2 HorizontalPodAutoscalers: defaults (`SetDefaults_HorizontalPodAutoscaler`),
//! validation and the columns of upstream's printer. `minReplicas: 0` is allowed, as upstream
//! allows it under the HPAScaleToZero gate: with an Object or External metric to wake on.

use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, MetricSpec, MetricStatus, MetricTarget,
    ResourceMetricSource,
};
use serde_json::{Value, json};

use super::Kind;
use crate::error::FieldError;
use crate::resource::Conversion;
use crate::table::{self, Column};

/// The Services `hpa` scales from zero (the HPAScaleToZero rule): with `minReplicas: 0`, those
/// its `Object` metrics describe (`v1` Services). A node holds requests to them while they have
/// no endpoint, and the HPA wakes when it does.
pub fn scaled_from_zero(hpa: &HorizontalPodAutoscaler) -> impl Iterator<Item = &str> {
    let spec = hpa.spec.as_ref().filter(|spec| spec.min_replicas == Some(0));
    spec.into_iter().flat_map(|spec| spec.metrics.iter().flatten()).filter_map(|metric| {
        let object = metric.object.as_ref().filter(|_| metric.type_ == "Object")?;
        let described = &object.described_object;
        let service = described.kind == "Service" && described.api_version.as_deref().is_none_or(|v| v == "v1");
        service.then_some(described.name.as_str())
    })
}

/// The metric an HPA without any scales on: CPU at 80% of what the pods request.
const DEFAULT_CPU_UTILIZATION: i32 = 80;

fn policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
    HPAScalingPolicy { type_: type_.into(), value, period_seconds }
}

impl Kind for HorizontalPodAutoscaler {
    fn set_defaults(&mut self) {
        super::always_written(&mut self.status);
        let Some(spec) = self.spec.as_mut() else { return };
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
            spec.metrics = Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(DEFAULT_CPU_UTILIZATION),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]);
        }
        // Behavior is filled in only where it is given: without it the controller scales as
        // it did before behaviors (the scale-down window from its own flag).
        if let Some(behavior) = spec.behavior.as_mut() {
            let up = behavior.scale_up.get_or_insert_with(HPAScalingRules::default);
            up.stabilization_window_seconds.get_or_insert(0);
            up.select_policy.get_or_insert_with(|| "Max".into());
            if up.policies.as_ref().is_none_or(Vec::is_empty) {
                up.policies = Some(vec![policy("Pods", 4, 15), policy("Percent", 100, 15)]);
            }
            let down = behavior.scale_down.get_or_insert_with(HPAScalingRules::default);
            down.select_policy.get_or_insert_with(|| "Max".into());
            if down.policies.as_ref().is_none_or(Vec::is_empty) {
                down.policies = Some(vec![policy("Percent", 100, 15)]);
            }
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return errors.push(FieldError::required("spec", "")) };
        let target = &spec.scale_target_ref;
        if target.kind.is_empty() {
            errors.push(FieldError::required("spec.scaleTargetRef.kind", ""));
        }
        if target.name.is_empty() {
            errors.push(FieldError::required("spec.scaleTargetRef.name", ""));
        }
        for (field, value) in [("spec.scaleTargetRef.kind", &target.kind), ("spec.scaleTargetRef.name", &target.name)] {
            if value.contains('/') || value.contains('%') || value == "." || value == ".." {
                errors.push(FieldError::invalid(
                    field,
                    value,
                    "may not contain '/' or '%', and may not be '.' or '..'",
                ));
            }
        }
        let metrics = spec.metrics.as_deref().unwrap_or_default();
        let min = spec.min_replicas.unwrap_or(1);
        if min < 0 {
            errors.push(FieldError::invalid("spec.minReplicas", min, "must be greater than or equal to 0"));
        }
        if min == 0 && !metrics.iter().any(|m| m.type_ == "Object" || m.type_ == "External") {
            errors.push(FieldError::forbidden(
                "spec.minReplicas",
                "must specify at least one Object or External metric to support scaling to zero replicas",
            ));
        }
        if spec.max_replicas < 1 {
            errors.push(FieldError::invalid("spec.maxReplicas", spec.max_replicas, "must be greater than 0"));
        }
        if spec.max_replicas < min {
            errors.push(FieldError::invalid(
                "spec.maxReplicas",
                spec.max_replicas,
                "must be greater than or equal to `minReplicas`",
            ));
        }
        for (i, metric) in metrics.iter().enumerate() {
            validate_metric(metric, &format!("spec.metrics[{i}]"), errors);
        }
        if let Some(behavior) = &spec.behavior {
            for (rules, field) in [(&behavior.scale_up, "scaleUp"), (&behavior.scale_down, "scaleDown")] {
                if let Some(rules) = rules {
                    validate_rules(rules, &format!("spec.behavior.{field}"), errors);
                }
            }
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("Reference", "reference to the target resource that is autoscaled"),
            Column::string("Targets", "the current and target value of the metrics the HPA scales on"),
            Column::string("MinPods", "the minimum number of replicas the HPA keeps"),
            Column::integer("MaxPods", "the maximum number of replicas the HPA keeps"),
            Column::integer("Replicas", "the current number of replicas of the target"),
            Column::age(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let reference = format!("{}/{}", spec.scale_target_ref.kind, spec.scale_target_ref.name);
        let min = spec.min_replicas.map_or_else(|| "<unset>".to_string(), |m| m.to_string());
        vec![
            table::name(&self.metadata),
            reference.into(),
            targets(spec.metrics.as_deref().unwrap_or_default(), status.current_metrics.as_deref().unwrap_or_default())
                .into(),
            min.into(),
            spec.max_replicas.into(),
            status.current_replicas.unwrap_or(0).into(),
            table::age(&self.metadata, now),
        ]
    }
}

/// autoscaling/v1 over v2's storage. v1 says one thing v2 does not hold as such, a CPU
/// utilization target, and shows nothing of the other metrics or the behavior. Upstream carries
/// those in annotations of the v1 object; here they stay in the stored object, which a v1 write
/// keeps (a v1 client reads and writes its part, and a v2 client sees the whole).
pub(super) static V1: Conversion = Conversion { stored_version: "v2", from_stored: v2_to_v1, to_stored: v1_to_v2 };

fn is_cpu_utilization(metric: &Value) -> bool {
    metric["type"] == "Resource"
        && metric.pointer("/resource/name") == Some(&json!("cpu"))
        && metric.pointer("/resource/target/type") == Some(&json!("Utilization"))
}

/// A stored (v2) HPA as autoscaling/v1 shows it.
fn v2_to_v1(mut object: Value) -> Value {
    if !object.is_object() {
        return object;
    }
    object["apiVersion"] = json!("autoscaling/v1");
    if let Some(spec) = object.get("spec").cloned() {
        let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
        let cpu = metrics
            .iter()
            .find(|m| is_cpu_utilization(m))
            .and_then(|m| m.pointer("/resource/target/averageUtilization").cloned());
        let mut v1 = json!({"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"]});
        if let Some(min) = spec.get("minReplicas") {
            v1["minReplicas"] = min.clone();
        }
        if let Some(cpu) = cpu {
            v1["targetCPUUtilizationPercentage"] = cpu;
        }
        object["spec"] = v1;
    }
    if let Some(status) = object.get("status").cloned() {
        let mut v1 = json!({
            "currentReplicas": status.get("currentReplicas").cloned().unwrap_or(json!(0)),
            "desiredReplicas": status.get("desiredReplicas").cloned().unwrap_or(json!(0)),
        });
        for field in ["observedGeneration", "lastScaleTime"] {
            if let Some(value) = status.get(field).filter(|v| !v.is_null()) {
                v1[field] = value.clone();
            }
        }
        let current = status["currentMetrics"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu")));
        if let Some(utilization) = current.and_then(|m| m.pointer("/resource/current/averageUtilization")) {
            v1["currentCPUUtilizationPercentage"] = utilization.clone();
        }
        object["status"] = v1;
    }
    object
}

/// An autoscaling/v1 HPA as stored (v2), keeping what `stored` holds beyond v1's reach.
fn v1_to_v2(mut object: Value, stored: Option<&Value>) -> Value {
    // What is not an object is left for the stored version's checks to refuse.
    if !object.is_object() {
        return object;
    }
    object["apiVersion"] = json!("autoscaling/v2");
    if let Some(spec) = object.get("spec").cloned() {
        let before = stored.map(|s| &s["spec"]);
        let mut metrics: Vec<Value> = before
            .and_then(|s| s["metrics"].as_array())
            .into_iter()
            .flatten()
            .filter(|m| !is_cpu_utilization(m))
            .cloned()
            .collect();
        if let Some(cpu) = spec.get("targetCPUUtilizationPercentage").filter(|v| !v.is_null()) {
            let target = json!({"type": "Utilization", "averageUtilization": cpu});
            metrics.insert(0, json!({"type": "Resource", "resource": {"name": "cpu", "target": target}}));
        }
        let mut v2 = json!({"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"]});
        if let Some(min) = spec.get("minReplicas") {
            v2["minReplicas"] = min.clone();
        }
        if !metrics.is_empty() {
            v2["metrics"] = json!(metrics);
        }
        if let Some(behavior) = before.and_then(|s| s.get("behavior")) {
            v2["behavior"] = behavior.clone();
        }
        object["spec"] = v2;
    }
    if let Some(status) = object.get("status").cloned() {
        let mut v2 = stored.and_then(|s| s.get("status").cloned()).unwrap_or_else(|| json!({}));
        for field in ["currentReplicas", "desiredReplicas", "observedGeneration", "lastScaleTime"] {
            if let Some(value) = status.get(field) {
                v2[field] = value.clone();
            }
        }
        object["status"] = v2;
    }
    object
}

impl Kind for k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler {
    fn columns() -> Vec<Column> {
        HorizontalPodAutoscaler::columns()
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let stored = serde_json::to_value(self).map(|v1| v1_to_v2(v1, None));
        match stored.and_then(serde_json::from_value::<HorizontalPodAutoscaler>) {
            Ok(v2) => v2.cells(now),
            Err(_) => vec![table::name(&self.metadata)],
        }
    }
}

/// A metric's source: exactly the one its type names.
fn validate_metric(metric: &MetricSpec, field: &str, errors: &mut Vec<FieldError>) {
    const TYPES: [&str; 5] = ["ContainerResource", "External", "Object", "Pods", "Resource"];
    let given = [
        ("ContainerResource", metric.container_resource.is_some()),
        ("External", metric.external.is_some()),
        ("Object", metric.object.is_some()),
        ("Pods", metric.pods.is_some()),
        ("Resource", metric.resource.is_some()),
    ];
    if metric.type_.is_empty() {
        return errors.push(FieldError::required(format!("{field}.type"), "must specify a metric source type"));
    }
    if !TYPES.contains(&metric.type_.as_str()) {
        return errors.push(FieldError::not_supported(format!("{field}.type"), &metric.type_, &TYPES));
    }
    if !given.iter().any(|(t, set)| *t == metric.type_ && *set) {
        errors.push(FieldError::required(field.to_string(), "must populate information for the given metric source"));
    }
    if given.iter().any(|(t, set)| *t != metric.type_ && *set) {
        errors.push(FieldError::forbidden(field.to_string(), "must populate the given metric source only"));
    }
    let target = match metric.type_.as_str() {
        "Resource" => metric.resource.as_ref().map(|r| (&r.target, true)),
        "ContainerResource" => metric.container_resource.as_ref().map(|r| (&r.target, true)),
        "Pods" => metric.pods.as_ref().map(|p| (&p.target, false)),
        "Object" => metric.object.as_ref().map(|o| (&o.target, false)),
        _ => metric.external.as_ref().map(|e| (&e.target, false)),
    };
    if let Some((target, resource)) = target {
        validate_target(target, resource, &format!("{field}.{}.target", lower_first(&metric.type_)), errors);
    }
}

fn validate_target(target: &MetricTarget, resource: bool, field: &str, errors: &mut Vec<FieldError>) {
    match target.type_.as_str() {
        "Utilization" | "Value" | "AverageValue" => {}
        "" => errors.push(FieldError::required(format!("{field}.type"), "must specify a metric target type")),
        other => errors.push(FieldError::invalid(
            format!("{field}.type"),
            other,
            "must be either Utilization, Value, or AverageValue",
        )),
    }
    let positive =
        |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| crate::quantity::parse(&q.0).is_ok_and(|v| v > 0);
    if let Some(value) = &target.value
        && !positive(value)
    {
        errors.push(FieldError::invalid(format!("{field}.value"), &value.0, "must be positive"));
    }
    if let Some(value) = &target.average_value
        && !positive(value)
    {
        errors.push(FieldError::invalid(format!("{field}.averageValue"), &value.0, "must be positive"));
    }
    if let Some(utilization) = target.average_utilization
        && utilization < 1
    {
        errors.push(FieldError::invalid(format!("{field}.averageUtilization"), utilization, "must be greater than 0"));
    }
    if resource {
        match (target.type_.as_str(), target.average_utilization.is_some(), target.average_value.is_some()) {
            ("Utilization", false, _) => errors.push(FieldError::required(
                format!("{field}.averageUtilization"),
                "must set either a target raw value or a target utilization",
            )),
            ("AverageValue", _, false) => errors.push(FieldError::required(
                format!("{field}.averageValue"),
                "must set either a target raw value or a target utilization",
            )),
            (_, true, true) => errors.push(FieldError::forbidden(
                format!("{field}.averageValue"),
                "may not set both a target raw value and a target utilization",
            )),
            _ => {}
        }
    } else if target.type_ == "Utilization" {
        errors.push(FieldError::invalid(
            format!("{field}.type"),
            "Utilization",
            "must be either Value or AverageValue",
        ));
    }
}

fn validate_rules(rules: &HPAScalingRules, field: &str, errors: &mut Vec<FieldError>) {
    if let Some(window) = rules.stabilization_window_seconds
        && !(0..=3600).contains(&window)
    {
        errors.push(FieldError::invalid(
            format!("{field}.stabilizationWindowSeconds"),
            window,
            "must be less than or equal to 3600 and greater than or equal to 0",
        ));
    }
    if let Some(select) = &rules.select_policy
        && !["Max", "Min", "Disabled"].contains(&select.as_str())
    {
        errors.push(FieldError::not_supported(format!("{field}.selectPolicy"), select, &["Disabled", "Max", "Min"]));
    }
    let policies = rules.policies.as_deref().unwrap_or_default();
    if policies.is_empty() && rules.select_policy.as_deref() != Some("Disabled") {
        errors.push(FieldError::required(format!("{field}.policies"), "must specify at least one Policy"));
    }
    for (i, policy) in policies.iter().enumerate() {
        let at = format!("{field}.policies[{i}]");
        if policy.type_ != "Pods" && policy.type_ != "Percent" {
            errors.push(FieldError::not_supported(format!("{at}.type"), &policy.type_, &["Percent", "Pods"]));
        }
        if policy.value <= 0 {
            errors.push(FieldError::invalid(format!("{at}.value"), policy.value, "must be greater than zero"));
        }
        if !(1..=1800).contains(&policy.period_seconds) {
            errors.push(FieldError::invalid(
                format!("{at}.periodSeconds"),
                policy.period_seconds,
                "must be greater than zero and less than or equal to 1800",
            ));
        }
    }
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// The `Targets` cell as upstream's printer writes it since 1.30: each metric's current value
/// against its target (`cpu: 45%/50%`), at most two, then how many more.
fn targets(specs: &[MetricSpec], statuses: &[MetricStatus]) -> String {
    if specs.is_empty() {
        return "<none>".into();
    }
    const UNKNOWN: &str = "<unknown>";
    let shown: Vec<String> = specs
        .iter()
        .enumerate()
        .take(2)
        .map(|(i, spec)| {
            let status = statuses.get(i);
            let plain =
                |target: &MetricTarget, current: Option<&k8s_openapi::api::autoscaling::v2::MetricValueStatus>| {
                    let (current, wanted, avg) = match (&target.value, &target.average_value) {
                        (Some(value), _) => (current.and_then(|c| c.value.as_ref()), value, ""),
                        (None, Some(value)) => (current.and_then(|c| c.average_value.as_ref()), value, " (avg)"),
                        (None, None) => return format!("{UNKNOWN}/<auto>"),
                    };
                    format!("{}/{}{avg}", current.map_or(UNKNOWN, |c| c.0.as_str()), wanted.0)
                };
            let resource =
                |name: &str,
                 target: &MetricTarget,
                 current: Option<&k8s_openapi::api::autoscaling::v2::MetricValueStatus>| {
                    let shown = match (target.average_utilization, &target.average_value) {
                        (Some(wanted), _) => format!(
                            "{}/{wanted}%",
                            current
                                .and_then(|c| c.average_utilization)
                                .map_or(UNKNOWN.to_string(), |u| format!("{u}%"))
                        ),
                        (None, Some(wanted)) => format!(
                            "{}/{}",
                            current.and_then(|c| c.average_value.as_ref()).map_or(UNKNOWN, |v| v.0.as_str()),
                            wanted.0
                        ),
                        (None, None) => format!("{UNKNOWN}/<auto>"),
                    };
                    format!("{name}: {shown}")
                };
            match spec.type_.as_str() {
                "Resource" => spec.resource.as_ref().map_or(UNKNOWN.into(), |r| {
                    resource(&r.name, &r.target, status.and_then(|s| s.resource.as_ref()).map(|s| &s.current))
                }),
                "ContainerResource" => spec.container_resource.as_ref().map_or(UNKNOWN.into(), |r| {
                    resource(&r.name, &r.target, status.and_then(|s| s.container_resource.as_ref()).map(|s| &s.current))
                }),
                "Pods" => spec.pods.as_ref().map_or(UNKNOWN.into(), |p| {
                    let current = status.and_then(|s| s.pods.as_ref()).and_then(|s| s.current.average_value.as_ref());
                    format!(
                        "{}/{}",
                        current.map_or(UNKNOWN, |c| c.0.as_str()),
                        p.target.average_value.as_ref().map_or("<auto>", |v| v.0.as_str())
                    )
                }),
                "Object" => spec.object.as_ref().map_or(UNKNOWN.into(), |o| {
                    plain(&o.target, status.and_then(|s| s.object.as_ref()).map(|s| &s.current))
                }),
                "External" => spec.external.as_ref().map_or(UNKNOWN.into(), |e| {
                    plain(&e.target, status.and_then(|s| s.external.as_ref()).map(|s| &s.current))
                }),
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    let more = specs.len().saturating_sub(2);
    let mut cell = shown.join(", ");
    if more > 0 {
        cell.push_str(&format!(" + {more} more..."));
    }
    cell
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: Value) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec})).unwrap()
    }

    fn errors(hpa: &HorizontalPodAutoscaler) -> Vec<String> {
        let mut errors = Vec::new();
        hpa.validate(&mut errors);
        errors.iter().map(|e| format!("{}: {}", e.field, e.message())).collect()
    }

    #[test]
    fn defaults_are_upstreams_and_a_behavior_is_filled_only_where_given() {
        let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
        let mut plain = hpa(json!({"scaleTargetRef": target, "maxReplicas": 3}));
        plain.set_defaults();
        let spec = serde_json::to_value(plain.spec.as_ref().unwrap()).unwrap();
        assert_eq!(spec["minReplicas"], 1);
        assert_eq!(
            spec["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}])
        );
        assert!(spec.get("behavior").is_none());
        assert_eq!(serde_json::to_value(&plain.status).unwrap(), json!({"desiredReplicas": 0}));
        let mut tuned = hpa(
            json!({"scaleTargetRef": target, "maxReplicas": 3, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}),
        );
        tuned.set_defaults();
        let behavior = serde_json::to_value(tuned.spec.unwrap().behavior).unwrap();
        assert_eq!(
            behavior,
            json!({
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                    {"type": "Pods", "value": 4, "periodSeconds": 15},
                    {"type": "Percent", "value": 100, "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 15}]},
            })
        );
    }

    #[test]
    fn validation_refuses_what_upstream_refuses() {
        let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
        let zero = hpa(json!({"scaleTargetRef": target, "minReplicas": 0, "maxReplicas": 0}));
        let said = errors(&zero);
        assert!(
            said.iter().any(|e| e.contains("spec.maxReplicas: Invalid value: \"0\": must be greater than 0")),
            "{said:?}"
        );
        assert!(said.iter().any(|e| e.contains("Object or External metric")), "{said:?}");
        let bad = hpa(json!({
            "scaleTargetRef": {"kind": "", "name": "web"},
            "maxReplicas": 2,
            "metrics": [{"type": "Resource", "pods": {"metric": {"name": "x"}, "target": {"type": "AverageValue", "averageValue": "1"}}}],
            "behavior": {"scaleUp": {"selectPolicy": "Fastest", "policies": [{"type": "Pods", "value": 0, "periodSeconds": 0}]}},
        }));
        let said = errors(&bad);
        for expected in [
            "spec.scaleTargetRef.kind: Required value",
            "spec.metrics[0]: Required value: must populate information for the given metric source",
            "spec.metrics[0]: Forbidden: must populate the given metric source only",
            "spec.behavior.scaleUp.selectPolicy: Unsupported value: \"Fastest\"",
            "spec.behavior.scaleUp.policies[0].value: Invalid value: \"0\": must be greater than zero",
            "spec.behavior.scaleUp.policies[0].periodSeconds: Invalid value: \"0\"",
        ] {
            assert!(said.iter().any(|e| e.contains(expected)), "{expected} not in {said:?}");
        }
    }

    #[test]
    fn targets_are_shown_as_upstreams_printer_shows_them() {
        let spec: Vec<MetricSpec> = serde_json::from_value(json!([
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
            {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
        ]))
        .unwrap();
        let status: Vec<MetricStatus> = serde_json::from_value(json!([
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 45, "averageValue": "45m"}}},
        ]))
        .unwrap();
        assert_eq!(targets(&spec, &status), "cpu: 45%/50%, memory: <unknown>/100Mi + 1 more...");
        assert_eq!(targets(&spec[2..], &[]), "<unknown>/10");
        assert_eq!(targets(&[], &[]), "<none>");
    }

    #[test]
    fn v1_shows_the_cpu_target_and_a_v1_write_keeps_the_rest() {
        let stored = json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            },
            "status": {
                "currentReplicas": 2,
                "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70, "averageValue": "70m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}],
            },
        });
        let v1 = v2_to_v1(stored.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(
            v1["spec"],
            json!({"scaleTargetRef": stored["spec"]["scaleTargetRef"], "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50})
        );
        assert_eq!(
            v1["status"],
            json!({"currentReplicas": 2, "desiredReplicas": 3, "currentCPUUtilizationPercentage": 70})
        );
        // A v1 client raises the target and the maximum: the memory metric and the behavior stay.
        let mut edited = v1.clone();
        edited["spec"]["targetCPUUtilizationPercentage"] = json!(60);
        edited["spec"]["maxReplicas"] = json!(8);
        let back = v1_to_v2(edited, Some(&stored));
        assert_eq!(back["apiVersion"], "autoscaling/v2");
        assert_eq!(back["spec"]["maxReplicas"], 8);
        assert_eq!(back["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
        assert_eq!(back["spec"]["metrics"][1], stored["spec"]["metrics"][0]);
        assert_eq!(back["spec"]["behavior"], stored["spec"]["behavior"]);
        assert_eq!(back["status"]["conditions"], stored["status"]["conditions"]);
        // `kubectl autoscale` before 1.33: a new v1 object.
        let created = v1_to_v2(
            json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}}),
            None,
        );
        assert_eq!(
            created["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
    }
}
