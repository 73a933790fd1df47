//! A container's environment and command line, as the kubelet makes them: Service variables,
//! then `envFrom`, then `env` (later ones win), `$(VAR)` references expanded against what is
//! defined before them, and `command`/`args` expanded against the result.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectFieldSelector, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::Node;
use crate::objects::Subscription;

/// The ConfigMaps and Secrets a pod's containers refer to, as known when they start; `None`
/// for one that does not exist.
#[derive(Debug, Default, Clone)]
pub(super) struct Objects {
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    pub secrets: HashMap<String, Option<Secret>>,
}

impl Objects {
    /// A key of the ConfigMap's `data`: as the kubelet, an environment variable is text, and a
    /// key of `binaryData` is not found (`envFrom` takes `data` alone too).
    fn config_map_value(&self, name: &str, key: &str) -> Option<Option<String>> {
        let map = self.config_maps.get(name)?.as_ref()?;
        Some(map.data.as_ref().and_then(|d| d.get(key)).cloned())
    }

    fn secret_value(&self, name: &str, key: &str) -> Option<Option<String>> {
        let secret = self.secrets.get(name)?.as_ref()?;
        Some(
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).cloned()),
        )
    }
}

/// The watches of the ConfigMaps and Secrets a pod uses (`crate::objects`), held while its
/// containers may start.
pub(super) struct Watched {
    config_maps: Vec<(String, Subscription<ConfigMap>)>,
    secrets: Vec<(String, Subscription<Secret>)>,
}

impl Watched {
    pub(super) fn subscribe(node: &Node, pod: &Pod) -> Watched {
        let (config_maps, secrets) = referenced(pod);
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        Watched {
            config_maps: config_maps
                .into_iter()
                .map(|n| (n.clone(), node.config_maps.subscribe(namespace, &n)))
                .collect(),
            secrets: secrets.into_iter().map(|n| (n.clone(), node.secrets.subscribe(namespace, &n))).collect(),
        }
    }

    /// The objects as last known, waiting at most `wait` in all for the first lists; or why one
    /// is not known, as the kubelet says it.
    pub(super) async fn read(&mut self, wait: Duration) -> Result<Objects, String> {
        let deadline = tokio::time::Instant::now() + wait;
        Ok(Objects {
            config_maps: read_all(&mut self.config_maps, deadline, "configmap").await?,
            secrets: read_all(&mut self.secrets, deadline, "secret").await?,
        })
    }

    /// Resolves when one of the objects changes from what `read` last returned.
    pub(super) async fn changed(&mut self) {
        let config_maps = self.config_maps.iter_mut().map(|(_, w)| w.changed().boxed());
        let secrets = self.secrets.iter_mut().map(|(_, w)| w.changed().boxed());
        let all: Vec<_> = config_maps.chain(secrets).collect();
        if all.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(all).await;
    }
}

/// Each watched object of one kind, by name, as last known.
async fn read_all<K: Clone>(
    watches: &mut [(String, Subscription<K>)],
    deadline: tokio::time::Instant,
    kind: &str,
) -> Result<HashMap<String, Option<K>>, String> {
    let mut found = HashMap::new();
    for (name, watch) in watches {
        let object = watch.read(deadline).await;
        let object =
            object.ok_or_else(|| format!("failed to sync {kind} cache: timed out waiting for the condition"))?;
        found.insert(name.clone(), object);
    }
    Ok(found)
}

/// The names of the ConfigMaps and Secrets the containers' env and the pod's volumes use.
pub(super) fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut config_maps, mut secrets) = (Vec::new(), Vec::new());
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    for container in containers {
        for from in container.env_from.iter().flatten() {
            config_maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for var in container.env.iter().flatten() {
            let Some(source) = &var.value_from else { continue };
            config_maps.extend(source.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(source.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    for volume in spec.into_iter().flat_map(|s| s.volumes.iter().flatten()) {
        config_maps.extend(volume.config_map.as_ref().map(|v| v.name.clone()));
        secrets.extend(volume.secret.as_ref().and_then(|v| v.secret_name.clone()));
        // A projected volume's sources, which nothing else may name.
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            config_maps.extend(source.config_map.as_ref().map(|c| c.name.clone()));
            secrets.extend(source.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    for list in [&mut config_maps, &mut secrets] {
        list.sort();
        list.dedup();
    }
    (config_maps, secrets)
}

/// Where the pod runs, for `fieldRef`s and `resourceFieldRef`s.
#[derive(Debug, Clone)]
pub(super) struct Placement<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub node_name: &'a str,
    /// The node's allocatable cpu (cores) and memory (bytes): what an unlimited container may use.
    pub node_cpu: f64,
    pub node_memory: u64,
}

/// The environment of `container`, or why it cannot be made (`CreateContainerConfigError`).
pub(super) fn environment(
    pod: &Pod,
    container: &Container,
    placement: &Placement<'_>,
    objects: &Objects,
    services: &[Service],
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set =
        |env: &mut Vec<(String, String)>, name: String, value: String| match env.iter_mut().find(|(n, _)| *n == name) {
            Some(existing) => existing.1 = value,
            None => env.push((name, value)),
        };
    let spec = pod.spec.as_ref();
    // Upstream sets HOSTNAME to the pod's name (or its `hostname`), the name the pod's
    // containers share.
    let hostname = spec.and_then(|s| s.hostname.clone()).or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    set(&mut env, "HOSTNAME".into(), hostname);
    // The API's Service always (in-cluster clients read `KUBERNETES_SERVICE_HOST`), the pod's
    // namespace's with `enableServiceLinks`, as upstream's kubelet gives them.
    let links = spec.and_then(|s| s.enable_service_links).unwrap_or(true);
    let namespace = pod.metadata.namespace.as_deref();
    let linked =
        services.iter().filter(|s| is_api_service(s) || (links && s.metadata.namespace.as_deref() == namespace));
    for (name, value) in service_variables(linked) {
        set(&mut env, name, value);
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let entries: BTreeMap<String, String> = if let Some(source) = &from.config_map_ref {
            match objects.config_maps.get(&source.name).and_then(Option::as_ref) {
                Some(map) => map.data.clone().unwrap_or_default(),
                None if source.optional == Some(true) => BTreeMap::new(),
                None => return Err(format!("configmap \"{}\" not found", source.name)),
            }
        } else if let Some(source) = &from.secret_ref {
            match objects.secrets.get(&source.name).and_then(Option::as_ref) {
                Some(secret) => secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if source.optional == Some(true) => BTreeMap::new(),
                None => return Err(format!("secret \"{}\" not found", source.name)),
            }
        } else {
            BTreeMap::new()
        };
        for (key, value) in entries {
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let defined: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(var.value.as_deref().unwrap_or_default(), &defined)
            }
            Some(source) => {
                if let Some(field) = &source.field_ref {
                    field_value(pod, field, placement)?
                } else if let Some(field) = &source.resource_field_ref {
                    resource_value(container, &field.resource, field.divisor.as_ref().map(|d| d.0.as_str()), placement)?
                } else if let Some(key) = &source.config_map_key_ref {
                    match objects.config_map_value(&key.name, &key.key) {
                        Some(Some(value)) => value,
                        _ if key.optional == Some(true) => continue,
                        None => return Err(format!("configmap \"{}\" not found", key.name)),
                        Some(None) => {
                            return Err(format!("couldn't find key {} in ConfigMap {namespace}/{}", key.key, key.name));
                        }
                    }
                } else if let Some(key) = &source.secret_key_ref {
                    match objects.secret_value(&key.name, &key.key) {
                        Some(Some(value)) => value,
                        _ if key.optional == Some(true) => continue,
                        None => return Err(format!("secret \"{}\" not found", key.name)),
                        Some(None) => {
                            return Err(format!("couldn't find key {} in Secret {namespace}/{}", key.key, key.name));
                        }
                    }
                } else {
                    String::new()
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// `command` and `args` with `$(VAR)` expanded against `env`; what the image says fills in
/// what they leave out (each runtime's image its own way).
pub(super) fn command(container: &Container, env: &[(String, String)]) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let defined: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expanded = |list: &Option<Vec<String>>| list.as_ref().map(|l| l.iter().map(|a| expand(a, &defined)).collect());
    (expanded(&container.command), expanded(&container.args))
}

/// Upstream's `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// left as written, and `$$` escapes a `$`.
pub(super) fn expand(text: &str, defined: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match defined.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_value(pod: &Pod, field: &ObjectFieldSelector, placement: &Placement<'_>) -> Result<String, String> {
    let path = field.field_path.as_str();
    let value = match path {
        "spec.nodeName" => placement.node_name.to_string(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => placement.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => placement.pod_ip.to_string(),
        // A whole map is a volume's file; a variable names one key (upstream's validation).
        "metadata.labels" | "metadata.annotations" => return Err(format!("unsupported fieldRef path {path:?}")),
        _ => metadata_field(&pod.metadata, path).ok_or_else(|| format!("unsupported fieldRef path {path:?}"))?,
    };
    Ok(value)
}

/// A field of the pod's metadata by its `fieldRef` path, as upstream's
/// `ExtractFieldPathAsString` reads it: the one reading, for environment variables and
/// downwardAPI volumes alike. A whole map is a `key="value"` line per entry, in key order.
pub(super) fn metadata_field(meta: &ObjectMeta, path: &str) -> Option<String> {
    let format_map = |map: Option<&BTreeMap<String, String>>| {
        map.into_iter().flatten().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")
    };
    let subscripted = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => subscripted(meta.labels.as_ref(), "metadata.labels['")
            .or_else(|| subscripted(meta.annotations.as_ref(), "metadata.annotations['"))?,
    })
}

/// `text` quoted as Go's `%q` quotes it (`strconv.Quote`), which upstream's downwardAPI files
/// hold: `\"` and `\\`, C's escapes for control characters, `\xNN` for other ASCII controls,
/// `\uNNNN` (or `\UNNNNNNNN`) for other controls and spaces but the space itself; the rest as
/// it is (Go also escapes Unicode's format characters, which Rust's library cannot tell).
fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || c.is_whitespace() && c != ' ' => match c as u32 {
                n if n < 0x10000 => out.push_str(&format!("\\u{n:04x}")),
                n => out.push_str(&format!("\\U{n:08x}")),
            },
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `limits.cpu`, `requests.memory`, …, in units of `divisor` rounded up, as upstream's
/// `ExtractContainerResourceValue`; an unset limit is the node's allocatable amount.
fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    placement: &Placement<'_>,
) -> Result<String, String> {
    let (kind, name) = resource.split_once('.').ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let resources = container.resources.as_ref();
    let map = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let nanos = |q: &str| flotilla_api::quantity::parse(q).map_err(|e| format!("{resource}: {e}"));
    let value = match map.and_then(|m| m.get(name)) {
        Some(quantity) => nanos(&quantity.0)?,
        None => match name {
            "cpu" => (placement.node_cpu * 1e9) as i128,
            "memory" => i128::from(placement.node_memory) * 1_000_000_000,
            _ => 0,
        },
    };
    let divisor = nanos(divisor.unwrap_or("1"))?.max(1);
    Ok(((value + divisor - 1) / divisor).to_string())
}

/// Whether `service` is `default/kubernetes`, the API server's.
pub(crate) fn is_api_service(service: &Service) -> bool {
    service.metadata.namespace.as_deref() == Some("default") && service.metadata.name.as_deref() == Some("kubernetes")
}

/// The Docker-links-style variables upstream gives every container for each Service of its
/// namespace: `WEB_SERVICE_HOST`, `WEB_SERVICE_PORT`, `WEB_PORT_80_TCP_ADDR`, …
fn service_variables<'a>(services: impl Iterator<Item = &'a Service>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") else { continue };
        let name = service.metadata.name.as_deref().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for port in ports.iter().filter(|p| p.name.is_some()) {
            let port_name = port.name.as_deref().unwrap_or_default().to_uppercase().replace('-', "_");
            env.push((format!("{name}_SERVICE_PORT_{port_name}"), port.port.to_string()));
        }
        let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or("TCP".into());
        env.push((format!("{name}_PORT"), format!("{}://{ip}:{}", protocol(first).to_lowercase(), first.port)));
        for port in ports {
            let proto = protocol(port);
            let prefix = format!("{name}_PORT_{}_{}", port.port, proto.to_uppercase());
            env.push((prefix.clone(), format!("{}://{ip}:{}", proto.to_lowercase(), port.port)));
            env.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            env.push((format!("{prefix}_PORT"), port.port.to_string()));
            env.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn placement() -> Placement<'static> {
        Placement { pod_ip: "127.44.0.9", host_ip: "127.0.0.1", node_name: "n1", node_cpu: 2.0, node_memory: 1 << 30 }
    }

    #[test]
    fn references_expand_against_what_is_defined_before_them() {
        let defined = HashMap::from([("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &defined), "1-two");
        assert_eq!(expand("$(MISSING) $$(A) $ $(A", &defined), "$(MISSING) $(A) $ $(A");
    }

    #[test]
    fn the_environment_is_built_in_upstream_order() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "app",
                "resources": {"limits": {"memory": "64Mi"}},
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "GREETING", "value": "hi $(CFG_who)"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": true}}},
                ],
                "command": ["server"],
                "args": ["--ip=$(IP)", "$(UNSET)"],
            }]}
        }))
        .unwrap();
        let mut objects = Objects::default();
        objects.config_maps.insert(
            "cfg".into(),
            Some(serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"who": "there"}})).unwrap()),
        );
        objects.secrets.insert(
            "creds".into(),
            Some(
                serde_json::from_value(json!({"metadata": {"name": "creds"}, "data": {"password": "czNjcjN0"}}))
                    .unwrap(),
            ),
        );
        objects.secrets.insert("nope".into(), None);
        let services: Vec<Service> = vec![
            serde_json::from_value(
                json!({"metadata": {"name": "my-db", "namespace": "ns"}, "spec": {"clusterIP": "127.43.0.5",
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]}}),
            )
            .unwrap(),
        ];
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let env = environment(&pod, container, &placement(), &objects, &services).unwrap();
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("HOSTNAME"), Some("web"));
        assert_eq!(get("MY_DB_SERVICE_HOST"), Some("127.43.0.5"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR"), Some("127.43.0.5"));
        assert_eq!(get("CFG_who"), Some("there"));
        assert_eq!(get("GREETING"), Some("hi there"));
        assert_eq!(get("POD"), Some("web"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("MEM"), Some("64"));
        assert_eq!(get("CPU"), Some("2"));
        assert_eq!(get("PASSWORD"), Some("s3cr3t"));
        assert_eq!(get("GONE"), None);
        let (command, args) = command(container, &env);
        assert_eq!(command.unwrap(), ["server"]);
        assert_eq!(args.unwrap(), ["--ip=127.44.0.9", "$(UNSET)"]);

        objects.config_maps.insert("cfg".into(), None);
        let err = environment(&pod, container, &placement(), &objects, &services).unwrap_err();
        assert_eq!(err, "configmap \"cfg\" not found");

        // A key of `binaryData` is not an environment variable's value, as upstream's kubelet
        // reads `data` alone.
        let binary = json!({"metadata": {"name": "bin"}, "data": {"text": "t"}, "binaryData": {"blob": "AAE="}});
        objects.config_maps.insert("bin".into(), Some(serde_json::from_value(binary).unwrap()));
        objects
            .config_maps
            .insert("cfg".into(), Some(serde_json::from_value(json!({"metadata": {"name": "cfg"}})).unwrap()));
        let mut container = container.clone();
        let reference = |key: &str| {
            serde_json::from_value(
                json!({"name": key.to_uppercase(), "valueFrom": {"configMapKeyRef": {"name": "bin", "key": key}}}),
            )
            .unwrap()
        };
        container.env = Some(vec![reference("text")]);
        let env = environment(&pod, &container, &placement(), &objects, &services).unwrap();
        assert!(env.iter().any(|(n, v)| n == "TEXT" && v == "t"));
        container.env = Some(vec![reference("blob")]);
        let err = environment(&pod, &container, &placement(), &objects, &services).unwrap_err();
        assert_eq!(err, "couldn't find key blob in ConfigMap ns/bin");
    }

    #[test]
    fn the_apis_service_is_given_to_every_pod_and_its_namespaces_only_with_service_links() {
        let service = |namespace: &str, name: &str, ip: &str, port: u16| -> Service {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": port}]}}))
            .unwrap()
        };
        let services = [service("default", "kubernetes", "127.43.0.1", 443), service("apps", "db", "127.43.0.5", 5432)];
        for (links, db) in [(true, Some("127.43.0.5")), (false, None)] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "apps"},
                "spec": {"enableServiceLinks": links, "containers": [{"name": "c", "image": "app:1"}]}
            }))
            .unwrap();
            let container = &pod.spec.as_ref().unwrap().containers[0];
            let env = environment(&pod, container, &placement(), &Objects::default(), &services).unwrap();
            let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
            assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("127.43.0.1"));
            assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
            assert_eq!(get("DB_SERVICE_HOST"), db);
        }
    }

    #[test]
    fn whole_maps_are_written_as_upstreams_downward_api_files() {
        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "labels": {"tier": "web", "app": "shop"},
            "annotations": {"note": "say \"hi\"\n\tthen\u{7}go \u{85}é \\ end"},
        }))
        .unwrap();
        assert_eq!(metadata_field(&meta, "metadata.labels").unwrap(), "app=\"shop\"\ntier=\"web\"");
        assert_eq!(
            metadata_field(&meta, "metadata.annotations").unwrap(),
            r#"note="say \"hi\"\n\tthen\ago \u0085é \\ end""#
        );
        assert_eq!(metadata_field(&meta, "metadata.labels['app']").unwrap(), "shop");
        assert_eq!(metadata_field(&meta, "metadata.labels['none']").unwrap(), "");
        assert_eq!(metadata_field(&meta, "spec.nodeName"), None);
    }

    #[test]
    fn objects_are_referenced_from_env_volumes_and_projected_sources() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "containers": [{"name": "app", "envFrom": [{"configMapRef": {"name": "env-cfg"}}],
                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}]}],
                "volumes": [
                    {"name": "a", "configMap": {"name": "vol-cfg"}},
                    {"name": "b", "secret": {"secretName": "vol-secret"}},
                    {"name": "c", "projected": {"sources": [
                        {"configMap": {"name": "projected-cfg"}},
                        {"secret": {"name": "projected-secret"}},
                        {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                        {"configMap": {"name": "vol-cfg"}},
                    ]}},
                ],
            }
        }))
        .unwrap();
        let (config_maps, secrets) = referenced(&pod);
        assert_eq!(config_maps, ["env-cfg", "projected-cfg", "vol-cfg"]);
        assert_eq!(secrets, ["env-secret", "projected-secret", "vol-secret"]);
    }
}
