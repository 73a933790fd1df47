//! Discovery: `/version`, the legacy documents (`/api`, `/apis`, `/api/v1`,
//! `/apis/<group>/<version>`), and aggregated discovery (`apidiscovery.k8s.io` v2 and v2beta1),
//! which clients ask for first through the `Accept` header.

use flotilla_api::resource::{self, ResourceDef};
use serde_json::{Value, json};

/// The aggregated discovery version an `Accept` header asks for, if any.
pub(crate) fn aggregated_version(accept: Option<&str>) -> Option<&'static str> {
    for entry in accept?.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        let has = |p: &str| params.contains(&p);
        if has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList") {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

/// The `Content-Type` of an aggregated discovery answer: clients check it to know they got one.
pub(crate) fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

pub(crate) fn version() -> Value {
    let (major, minor) = flotilla_api::KUBERNETES_VERSION;
    json!({
        "major": major.to_string(),
        "minor": minor.to_string(),
        "gitVersion": format!("v{major}.{minor}.0+flotilla.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64")),
    })
}

/// `/api`.
pub(crate) fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (group, version) in resource::group_versions() {
        if group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => versions.push(version),
            None => groups.push((group, vec![version])),
        }
    }
    // Served by the server itself, where upstream aggregates an adapter's.
    groups.push((crate::custom_metrics::GROUP, vec![crate::custom_metrics::VERSION]));
    groups
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

/// `/apis`.
pub(crate) fn group_list() -> Value {
    let groups: Vec<Value> = groups().iter().map(|(g, v)| group_entry(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub(crate) fn group(name: &str) -> Option<Value> {
    let (group, versions) = groups().into_iter().find(|(g, _)| *g == name)?;
    let mut entry = group_entry(group, &versions);
    entry["kind"] = "APIGroup".into();
    entry["apiVersion"] = "v1".into();
    Some(entry)
}

fn in_group_version<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    resource::resources().iter().filter(move |r| r.group == group && r.version == version)
}

/// `/api/v1`, `/apis/<group>/<version>`.
pub(crate) fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in in_group_version(group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for sub in r.subresources {
            let mut entry = json!({"name": format!("{}/{}", r.plural, sub.name()), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": sub.verbs()});
            if let Some((g, v, k)) = sub.kind() {
                entry["group"] = g.into();
                entry["version"] = v.into();
                entry["kind"] = k.into();
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn discovery_resources(group: &str, version: &str) -> Vec<Value> {
    if group == crate::custom_metrics::GROUP {
        return crate::custom_metrics::discovery_resources();
    }
    in_group_version(group, version)
        .map(|r| {
            let mut entry = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                entry["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                entry["categories"] = json!(r.categories);
            }
            if !r.subresources.is_empty() {
                let subs: Vec<Value> = r
                    .subresources
                    .iter()
                    .map(|s| {
                        let (g, v, k) = s.kind().unwrap_or((r.group, r.version, r.kind));
                        json!({"subresource": s.name(), "responseKind": {"group": g, "version": v, "kind": k}, "verbs": s.verbs()})
                    })
                    .collect();
                entry["subresources"] = subs.into();
            }
            entry
        })
        .collect()
}

fn discovery_list(version: &str, items: Vec<Value>) -> Value {
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

/// Aggregated discovery of `/api`: the core group.
pub(crate) fn aggregated_core(version: &str) -> Value {
    let item = json!({"metadata": {"creationTimestamp": null}, "versions": [{"version": "v1", "resources": discovery_resources("", "v1"), "freshness": "Current"}]});
    discovery_list(version, vec![item])
}

/// Aggregated discovery of `/apis`: every named group.
pub(crate) fn aggregated_groups(version: &str) -> Value {
    let items = groups()
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"version": v, "resources": discovery_resources(group, v), "freshness": "Current"}))
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    discovery_list(version, items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_aggregated_discovery_when_they_ask() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(Some(kubectl)), Some("v2"));
        assert_eq!(
            aggregated_version(Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList")),
            Some("v2beta1")
        );
        assert_eq!(aggregated_version(Some("application/json")), None);
    }

    #[test]
    fn scale_subresources_are_autoscaling_scale() {
        let apps = resource_list("apps", "v1");
        let scale = apps["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!(
            (scale["group"].as_str(), scale["version"].as_str(), scale["kind"].as_str()),
            (Some("autoscaling"), Some("v1"), Some("Scale"))
        );
        let pods = resource_list("", "v1");
        let po = pods["resources"].as_array().unwrap().iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(po["shortNames"], json!(["po"]));
        assert_eq!(po["categories"], json!(["all"]));
    }
}
