//! A pod's volumes as host directories, and a container's mounts as the directories preopened
//! into it. Every container of a pod that mounts a volume sees the same directory, which is
//! how the containers of a pod share files.
//!
//! ```text
//! <pod dir>/volumes/<name>/    emptyDir, and the projected files of configMap, secret,
//!                              downwardAPI and projected volumes
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use flotilla_wasm::Preopen;
use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod};

use super::env::Objects;

/// The host directory of each volume of a pod, and whether containers see it read-only.
#[derive(Debug, Default, Clone)]
pub(super) struct Volumes {
    dirs: HashMap<String, (PathBuf, bool)>,
}

/// Creates (or refreshes) the pod's volumes under `pod_dir`, or says why one cannot be made.
pub(super) fn prepare(pod: &Pod, pod_dir: &Path, objects: &Objects, allow_host_path: bool) -> Result<Volumes, String> {
    let mut volumes = Volumes::default();
    let spec = pod.spec.as_ref();
    for volume in spec.into_iter().flat_map(|s| s.volumes.iter().flatten()) {
        let name = &volume.name;
        let dir = pod_dir.join("volumes").join(name);
        let fail = |what: &str, err: String| format!("volume {name:?}: {what}: {err}");
        let files = if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(|e| fail("creating its directory", e.to_string()))?;
            volumes.dirs.insert(name.clone(), (dir, false));
            continue;
        } else if let Some(host) = &volume.host_path {
            if !allow_host_path {
                return Err(format!(
                    "volume {name:?}: hostPath volumes are not allowed on this node (an agent started with \
                     --allow-host-path permits them)"
                ));
            }
            let path = PathBuf::from(&host.path);
            match host.type_.as_deref().unwrap_or_default() {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path).map_err(|e| fail("creating the host directory", e.to_string()))?
                }
                "" | "Directory" if path.is_dir() => {}
                "" | "Directory" => {
                    return Err(format!("volume {name:?}: hostPath {:?} is not a directory", host.path));
                }
                other => {
                    return Err(format!(
                        "volume {name:?}: hostPath type {other:?} is not supported: wasm containers mount directories"
                    ));
                }
            }
            volumes.dirs.insert(name.clone(), (path, false));
            continue;
        } else if let Some(source) = &volume.config_map {
            match objects.config_maps.get(&source.name).and_then(Option::as_ref) {
                Some(map) => {
                    let mut data =
                        map.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                    extend_binary(&mut data, map.binary_data.as_ref());
                    select(data, source.items.as_deref(), source.optional, name)?
                }
                None if source.optional == Some(true) => BTreeMap::new(),
                None => return Err(format!("configmap \"{}\" not found", source.name)),
            }
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            match objects.secrets.get(&secret_name).and_then(Option::as_ref) {
                Some(secret) => {
                    let data = secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
                    select(data, source.items.as_deref(), source.optional, name)?
                }
                None if source.optional == Some(true) => BTreeMap::new(),
                None => return Err(format!("secret \"{secret_name}\" not found")),
            }
        } else if let Some(source) = &volume.downward_api {
            downward(pod, source.items.as_deref().unwrap_or_default())?
        } else if let Some(projected) = &volume.projected {
            let mut files = BTreeMap::new();
            for source in projected.sources.iter().flatten() {
                if let Some(source) = &source.config_map {
                    let map = objects.config_maps.get(&source.name).and_then(Option::as_ref);
                    match map {
                        Some(map) => {
                            let data = map
                                .data
                                .clone()
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.into_bytes()))
                                .collect();
                            files.extend(select(data, source.items.as_deref(), source.optional, name)?);
                        }
                        None if source.optional == Some(true) => {}
                        None => return Err(format!("configmap \"{}\" not found", source.name)),
                    }
                } else if let Some(source) = &source.secret {
                    match objects.secrets.get(&source.name).and_then(Option::as_ref) {
                        Some(secret) => {
                            let data = secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
                            files.extend(select(data, source.items.as_deref(), source.optional, name)?);
                        }
                        None if source.optional == Some(true) => {}
                        None => return Err(format!("secret \"{}\" not found", source.name)),
                    }
                } else if let Some(source) = &source.downward_api {
                    files.extend(downward(pod, source.items.as_deref().unwrap_or_default())?);
                } else {
                    return Err(format!(
                        "volume {name:?}: only configMap, secret and downwardAPI projections are supported"
                    ));
                }
            }
            files
        } else {
            return Err(format!("volume {name:?}: {} volumes are not supported by this node", kind(volume)));
        };
        project(&dir, &files).map_err(|e| fail("writing its files", e.to_string()))?;
        volumes.dirs.insert(name.clone(), (dir, true));
    }
    Ok(volumes)
}

/// The directories `container` mounts, as preopens at their mount paths.
pub(super) fn mounts(container: &Container, volumes: &Volumes) -> Result<Vec<Preopen>, String> {
    let mut preopens = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let (dir, read_only) = volumes
            .dirs
            .get(&mount.name)
            .ok_or_else(|| format!("volume mount {:?}: the pod has no volume of that name", mount.name))?;
        if mount.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
            return Err(format!("volume mount {:?}: subPathExpr is not supported in wasm containers", mount.name));
        }
        let host = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
            None => dir.clone(),
            Some(sub) => {
                let sub =
                    relative(sub).ok_or_else(|| format!("volume mount {:?}: invalid subPath {sub:?}", mount.name))?;
                let host = dir.join(&sub);
                if host.is_file() {
                    return Err(format!(
                        "volume mount {:?}: subPath {sub:?} is a file; wasm containers mount directories only",
                        mount.name
                    ));
                }
                std::fs::create_dir_all(&host).map_err(|e| format!("volume mount {:?}: {e}", mount.name))?;
                host
            }
        };
        preopens.push(Preopen {
            host,
            guest: mount.mount_path.clone(),
            read_only: *read_only || mount.read_only == Some(true),
        });
    }
    Ok(preopens)
}

fn extend_binary(data: &mut BTreeMap<String, Vec<u8>>, binary: Option<&BTreeMap<String, k8s_openapi::ByteString>>) {
    for (key, value) in binary.into_iter().flatten() {
        data.insert(key.clone(), value.0.clone());
    }
}

/// The files of a configMap or secret volume: every key, or the `items` it names at their paths.
fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    volume: &str,
) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
    let Some(items) = items else {
        return Ok(data.into_iter().map(|(k, v)| (PathBuf::from(k), v)).collect());
    };
    let mut files = BTreeMap::new();
    for item in items {
        let path =
            relative(&item.path).ok_or_else(|| format!("volume {volume:?}: invalid item path {:?}", item.path))?;
        match data.get(&item.key) {
            Some(value) => {
                files.insert(path, value.clone());
            }
            None if optional == Some(true) => {}
            None => {
                return Err(format!("volume {volume:?}: configured to use key {:?}, which is not present", item.key));
            }
        }
    }
    Ok(files)
}

fn downward(pod: &Pod, items: &[DownwardAPIVolumeFile]) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
    let meta = &pod.metadata;
    let map_text = |map: Option<&BTreeMap<String, String>>| {
        map.into_iter().flatten().map(|(k, v)| format!("{k}={v:?}\n")).collect::<String>()
    };
    let mut files = BTreeMap::new();
    for item in items {
        let path = relative(&item.path).ok_or_else(|| format!("downwardAPI: invalid item path {:?}", item.path))?;
        let Some(field) = &item.field_ref else {
            return Err(format!("downwardAPI item {:?}: only fieldRef items are supported", item.path));
        };
        let value = match field.field_path.as_str() {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => map_text(meta.labels.as_ref()),
            "metadata.annotations" => map_text(meta.annotations.as_ref()),
            other => return Err(format!("downwardAPI item {:?}: unsupported fieldRef {other:?}", item.path)),
        };
        files.insert(path, value.into_bytes());
    }
    Ok(files)
}

/// Writes `files` into `dir`, replacing what changed and removing files no longer there. Each
/// file is written to a temporary name and renamed, so a reader never sees half a file.
fn project(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (path, content) in files {
        let target = dir.join(path);
        if std::fs::read(&target).is_ok_and(|old| old == *content) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let partial = target.with_extension("flotilla-partial");
        std::fs::write(&partial, content)?;
        std::fs::rename(&partial, &target)?;
    }
    remove_stale(dir, dir, files)
}

fn remove_stale(root: &Path, dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if path.is_dir() {
            remove_stale(root, &path, files)?;
            if files.keys().all(|f| !f.starts_with(&relative)) {
                let _ = std::fs::remove_dir(&path);
            }
        } else if !files.contains_key(&relative) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `path` if it is relative and stays inside the volume (no `..`, no root).
fn relative(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    path.components().all(|c| matches!(c, Component::Normal(_))).then(|| path.to_path_buf())
}

fn kind(volume: &k8s_openapi::api::core::v1::Volume) -> &'static str {
    let value = serde_json::to_value(volume).unwrap_or_default();
    let kinds = [
        "persistentVolumeClaim",
        "nfs",
        "iscsi",
        "csi",
        "ephemeral",
        "image",
        "gitRepo",
        "awsElasticBlockStore",
        "gcePersistentDisk",
        "azureDisk",
        "azureFile",
        "cephfs",
        "rbd",
        "fc",
        "flexVolume",
        "glusterfs",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "vsphereVolume",
        "quobyte",
        "photonPersistentDisk",
        "flocker",
        "cinder",
    ];
    kinds.into_iter().find(|k| value.get(k).is_some()).unwrap_or("these")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn volumes_become_directories_that_containers_mount() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "config", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "conf/a.txt"}]}},
                    {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                ],
                "containers": [{"name": "app", "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "config", "mountPath": "/etc/app"},
                    {"name": "info", "mountPath": "/info", "readOnly": false},
                ]}],
            },
        }))
        .unwrap();
        let mut objects = Objects::default();
        let config = json!({"metadata": {"name": "cfg"}, "data": {"a": "one", "b": "two"}});
        objects.config_maps.insert("cfg".into(), Some(serde_json::from_value(config).unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let volumes = prepare(&pod, dir.path(), &objects, false).unwrap();
        let preopens = mounts(&pod.spec.as_ref().unwrap().containers[0], &volumes).unwrap();
        let by_guest: HashMap<_, _> = preopens.iter().map(|p| (p.guest.as_str(), p)).collect();
        assert!(!by_guest["/scratch"].read_only);
        assert!(by_guest["/etc/app"].read_only && by_guest["/info"].read_only);
        assert_eq!(std::fs::read_to_string(by_guest["/etc/app"].host.join("conf/a.txt")).unwrap(), "one");
        assert!(!by_guest["/etc/app"].host.join("b").exists());
        assert_eq!(std::fs::read_to_string(by_guest["/info"].host.join("labels")).unwrap(), "app=\"web\"\n");

        // A changed ConfigMap is projected again; a key no longer selected disappears.
        let config = json!({"metadata": {"name": "cfg"}, "data": {"a": "uno"}});
        objects.config_maps.insert("cfg".into(), Some(serde_json::from_value(config).unwrap()));
        prepare(&pod, dir.path(), &objects, false).unwrap();
        assert_eq!(std::fs::read_to_string(by_guest["/etc/app"].host.join("conf/a.txt")).unwrap(), "uno");

        // What the node cannot provide is refused with the reason.
        let host: Pod = serde_json::from_value(json!({"spec": {"containers": [],
            "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}}))
        .unwrap();
        assert!(prepare(&host, dir.path(), &objects, false).unwrap_err().contains("--allow-host-path"));
        let claim: Pod = serde_json::from_value(json!({"spec": {"containers": [],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]}}))
        .unwrap();
        assert_eq!(
            prepare(&claim, dir.path(), &objects, false).unwrap_err(),
            "volume \"data\": persistentVolumeClaim volumes are not supported by this node"
        );
    }
}
