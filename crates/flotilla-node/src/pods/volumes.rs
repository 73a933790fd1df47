//! A pod's volumes as host directories, and a container's mounts as the directories preopened
//! into it. Every container of a pod that mounts a volume sees the same directory, which is
//! how the containers of a pod share files.
//!
//! ```text
//! <pod dir>/volumes/<name>/    emptyDir, and the projected files of configMap, secret,
//!                              downwardAPI and projected volumes
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::runtime::{FileMount, Mount};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use super::env::{self, Objects};
use crate::beneath;

/// The directory of each volume of a pod, open, and whether containers see it read-only.
#[derive(Debug, Default, Clone)]
pub(super) struct Volumes {
    dirs: HashMap<String, VolumeDir>,
}

#[derive(Debug, Clone)]
struct VolumeDir {
    dir: Arc<File>,
    read_only: bool,
}

/// The files of a projected volume, by their paths beneath it.
type Files = BTreeMap<PathBuf, Vec<u8>>;

/// Creates (or refreshes) the pod's volumes under `pod_dir`, or says why one cannot be made.
/// A volume that fails leaves the others made all the same (a refresh goes on past a ConfigMap
/// deleted meanwhile, as the kubelet's volumes are set up each on its own).
pub(super) fn prepare(pod: &Pod, pod_dir: &Path, objects: &Objects, allow_host_path: bool) -> Result<Volumes, String> {
    let root = pod_dir.join("volumes");
    let root = std::fs::create_dir_all(&root)
        .and_then(|()| File::open(&root))
        .map_err(|e| format!("creating the pod's volume directory: {e}"))?;
    let mut volumes = Volumes::default();
    let mut failed = None;
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        match prepare_one(pod, volume, &root, objects, allow_host_path) {
            Ok(dir) => drop(volumes.dirs.insert(volume.name.clone(), dir)),
            Err(err) => failed = failed.or(Some(err)),
        }
    }
    failed.map_or(Ok(volumes), Err)
}

fn prepare_one(
    pod: &Pod,
    volume: &Volume,
    root: &File,
    objects: &Objects,
    allow_host_path: bool,
) -> Result<VolumeDir, String> {
    let name = &volume.name;
    let fail = |what: &str, err: std::io::Error| format!("volume {name:?}: {what}: {err}");
    let own_dir = || {
        if !beneath::is_plain_name(name) {
            return Err(format!("volume {name:?}: not a valid volume name"));
        }
        beneath::create_dir_all(root, Path::new(name)).map_err(|e| fail("creating its directory", e))
    };
    Ok(if volume.empty_dir.is_some() {
        VolumeDir { dir: Arc::new(own_dir()?), read_only: false }
    } else if let Some(host) = &volume.host_path {
        if !allow_host_path {
            return Err(format!(
                "volume {name:?}: hostPath volumes are not allowed on this node (an agent started with \
                 --allow-host-path permits them)"
            ));
        }
        VolumeDir { dir: Arc::new(host_dir(name, &host.path, host.type_.as_deref())?), read_only: false }
    } else {
        let files = projected_files(pod, volume, objects)?;
        let dir = own_dir()?;
        project(&dir, &files).map_err(|e| fail("writing its files", e))?;
        VolumeDir { dir: Arc::new(dir), read_only: true }
    })
}

/// A `hostPath` directory. Its path is the pod author's, on a node whose operator allowed them,
/// so it is opened as given, links followed, as the kubelet mounts it.
fn host_dir(volume: &str, path: &str, kind: Option<&str>) -> Result<File, String> {
    let fail = |what: &str, err: std::io::Error| format!("volume {volume:?}: {what} {path:?}: {err}");
    match kind.unwrap_or_default() {
        "DirectoryOrCreate" => std::fs::create_dir_all(path).map_err(|e| fail("creating the host directory", e))?,
        "" | "Directory" => {}
        other => {
            return Err(format!(
                "volume {volume:?}: hostPath type {other:?} is not supported: wasm containers mount directories"
            ));
        }
    }
    let dir = File::open(path).map_err(|e| fail("opening hostPath", e))?;
    match dir.metadata() {
        Ok(meta) if meta.is_dir() => Ok(dir),
        _ => Err(format!("volume {volume:?}: hostPath {path:?} is not a directory")),
    }
}

/// The files of a configMap, secret, downwardAPI or projected volume.
fn projected_files(pod: &Pod, volume: &Volume, objects: &Objects) -> Result<Files, String> {
    let name = &volume.name;
    if let Some(source) = &volume.config_map {
        config_map_files(objects, &source.name, source.items.as_deref(), source.optional, name)
    } else if let Some(source) = &volume.secret {
        let secret = source.secret_name.as_deref().unwrap_or_default();
        secret_files(objects, secret, source.items.as_deref(), source.optional, name)
    } else if let Some(source) = &volume.downward_api {
        downward(pod, source.items.as_deref().unwrap_or_default(), name)
    } else if let Some(projected) = &volume.projected {
        let mut files = Files::new();
        for source in projected.sources.iter().flatten() {
            files.extend(if let Some(source) = &source.config_map {
                config_map_files(objects, &source.name, source.items.as_deref(), source.optional, name)?
            } else if let Some(source) = &source.secret {
                secret_files(objects, &source.name, source.items.as_deref(), source.optional, name)?
            } else if let Some(source) = &source.downward_api {
                downward(pod, source.items.as_deref().unwrap_or_default(), name)?
            } else {
                return Err(format!(
                    "volume {name:?}: only configMap, secret and downwardAPI projections are supported"
                ));
            });
        }
        Ok(files)
    } else {
        Err(format!("volume {name:?}: {} volumes are not supported by this node", kind(volume)))
    }
}

/// The directories `container` mounts, at their mount paths. `env` is the
/// container's environment, which `subPathExpr` expands against.
pub(super) fn mounts(container: &Container, volumes: &Volumes, env: &[(String, String)]) -> Result<Vec<Mount>, String> {
    let defined: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let name = &mount.name;
        let volume = volumes
            .dirs
            .get(name)
            .ok_or_else(|| format!("volume mount {name:?}: the pod has no volume of that name"))?;
        let sub = match (mount.sub_path.as_deref(), mount.sub_path_expr.as_deref()) {
            (Some(path), _) if !path.is_empty() => path.to_string(),
            (_, Some(expr)) if !expr.is_empty() => env::expand(expr, &defined),
            _ => String::new(),
        };
        let (dir, file) = if sub.is_empty() {
            (volume.dir.clone(), None)
        } else {
            let path = beneath::descending(&sub).ok_or_else(|| {
                format!("volume mount {name:?}: subPath {sub:?} must be a relative path that does not contain '..'")
            })?;
            let failed = |err: std::io::Error| format!("volume mount {name:?}: subPath {sub:?}: {err}");
            // A subPath that names a regular file shows that file alone (a ConfigMap's key as
            // a config file), as upstream binds it: held as found (looking opens nothing, a
            // FIFO or a device a container made there included), and bound from that handle.
            let held = beneath::open_path(&volume.dir, &path).ok();
            let regular = held.as_ref().and_then(|f| f.metadata().ok()).is_some_and(|m| m.is_file());
            match (held.filter(|_| regular), path.file_name().and_then(|n| n.to_str())) {
                (Some(file), Some(name)) => {
                    let file = FileMount { file: Arc::new(file), name: name.to_string(), optional: false };
                    (volume.dir.clone(), Some(file))
                }
                _ => {
                    // A missing subPath of a writable volume is made, as the kubelet makes it.
                    let opened = if volume.read_only {
                        beneath::open_dir(&volume.dir, &path)
                    } else {
                        beneath::create_dir_all(&volume.dir, &path)
                    };
                    (Arc::new(opened.map_err(failed)?), None)
                }
            }
        };
        mounts.push(Mount {
            dir,
            path: mount.mount_path.clone(),
            read_only: volume.read_only || mount.read_only == Some(true),
            file,
        });
    }
    Ok(mounts)
}

/// A configMap's files: `data` and `binaryData` alike, every key or the `items` named.
fn config_map_files(
    objects: &Objects,
    map: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    volume: &str,
) -> Result<Files, String> {
    match objects.config_maps.get(map).and_then(Option::as_ref) {
        Some(map) => {
            let text = map.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes()));
            let binary = map.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone()));
            select(text.chain(binary).collect(), items, optional, volume)
        }
        None if optional == Some(true) => Ok(Files::new()),
        None => Err(format!("configmap \"{map}\" not found")),
    }
}

/// A secret's files: every key, or the `items` named.
fn secret_files(
    objects: &Objects,
    secret: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    volume: &str,
) -> Result<Files, String> {
    match objects.secrets.get(secret).and_then(Option::as_ref) {
        Some(found) => {
            let data = found.data.iter().flatten().map(|(k, v): (&String, &ByteString)| (k.clone(), v.0.clone()));
            select(data.collect(), items, optional, volume)
        }
        None if optional == Some(true) => Ok(Files::new()),
        None => Err(format!("secret \"{secret}\" not found")),
    }
}

/// The path of a projected file beneath its volume, or why it cannot be one.
fn file_path(path: &str, volume: &str) -> Result<PathBuf, String> {
    beneath::descending(path).filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| {
        format!("volume {volume:?}: item path {path:?} must be a relative path that does not contain '..'")
    })
}

/// The files of a configMap or secret volume: every key, or the `items` it names at their paths.
fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    volume: &str,
) -> Result<Files, String> {
    let Some(items) = items else {
        return data.into_iter().map(|(k, v)| Ok((file_path(&k, volume)?, v))).collect();
    };
    let mut files = Files::new();
    for item in items {
        let path = file_path(&item.path, volume)?;
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

fn downward(pod: &Pod, items: &[DownwardAPIVolumeFile], volume: &str) -> Result<Files, String> {
    let mut files = Files::new();
    for item in items {
        let path = file_path(&item.path, volume)?;
        let Some(field) = &item.field_ref else {
            return Err(format!("downwardAPI item {:?}: only fieldRef items are supported", item.path));
        };
        let value = env::metadata_field(&pod.metadata, &field.field_path)
            .ok_or_else(|| format!("downwardAPI item {:?}: unsupported fieldRef {:?}", item.path, field.field_path))?;
        files.insert(path, value.into_bytes());
    }
    Ok(files)
}

/// Writes `files` beneath `dir`, replacing what changed and removing what is no longer there.
fn project(dir: &File, files: &Files) -> std::io::Result<()> {
    for (path, content) in files {
        if beneath::read(dir, path).is_ok_and(|old| old == *content) {
            continue;
        }
        beneath::write(dir, path, content)?;
    }
    beneath::remove_except(dir, &files.keys().cloned().collect::<BTreeSet<_>>())
}

fn kind(volume: &Volume) -> &'static str {
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
    use std::os::unix::fs::symlink;

    use serde_json::json;

    use super::*;

    fn pod_of(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}}, "spec": spec}),
        )
        .unwrap()
    }

    /// What the guest at `guest` would see at `path`, read through the handle it was given.
    fn read(mounts: &[Mount], guest: &str, path: &str) -> std::io::Result<String> {
        let dir = &mounts.iter().find(|p| p.path == guest).unwrap().dir;
        beneath::read(dir, Path::new(path)).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn volumes_become_directories_that_containers_mount() {
        let pod = pod_of(json!({
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "conf/a.txt"}]}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "both", "projected": {"sources": [{"configMap": {"name": "cfg"}}]}},
            ],
            "containers": [{"name": "app", "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "config", "mountPath": "/etc/app"},
                {"name": "info", "mountPath": "/info", "readOnly": false},
                {"name": "both", "mountPath": "/both"},
            ]}],
        }));
        let mut objects = Objects::default();
        let config =
            json!({"metadata": {"name": "cfg"}, "data": {"a": "one", "b": "two"}, "binaryData": {"bin": "AAE="}});
        objects.config_maps.insert("cfg".into(), Some(serde_json::from_value(config).unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let volumes = prepare(&pod, dir.path(), &objects, false).unwrap();
        let mounts = mounts(&pod.spec.as_ref().unwrap().containers[0], &volumes, &[]).unwrap();
        let by_guest: HashMap<_, _> = mounts.iter().map(|p| (p.path.as_str(), p)).collect();
        assert!(!by_guest["/scratch"].read_only);
        assert!(by_guest["/etc/app"].read_only && by_guest["/info"].read_only);
        assert_eq!(read(&mounts, "/etc/app", "conf/a.txt").unwrap(), "one");
        assert!(read(&mounts, "/etc/app", "b").is_err());
        assert_eq!(read(&mounts, "/info", "labels").unwrap(), "app=\"web\"");
        // A configMap volume and a projected configMap are one implementation: both keep
        // `binaryData`.
        assert_eq!(read(&mounts, "/both", "b").unwrap(), "two");
        assert_eq!(std::fs::read(dir.path().join("volumes/both/bin")).unwrap(), [0, 1]);
        assert_eq!(std::fs::read(dir.path().join("volumes/config/conf/a.txt")).unwrap(), b"one");

        // A changed ConfigMap is projected again; a key no longer selected disappears.
        let config = json!({"metadata": {"name": "cfg"}, "data": {"a": "uno"}});
        objects.config_maps.insert("cfg".into(), Some(serde_json::from_value(config).unwrap()));
        prepare(&pod, dir.path(), &objects, false).unwrap();
        assert_eq!(read(&mounts, "/etc/app", "conf/a.txt").unwrap(), "uno");
        assert!(read(&mounts, "/both", "b").is_err());

        // What the node cannot provide is refused with the reason.
        let host = pod_of(json!({"containers": [], "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}));
        assert!(prepare(&host, dir.path(), &objects, false).unwrap_err().contains("--allow-host-path"));
        let claim = pod_of(
            json!({"containers": [], "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]}),
        );
        assert_eq!(
            prepare(&claim, dir.path(), &objects, false).unwrap_err(),
            "volume \"data\": persistentVolumeClaim volumes are not supported by this node"
        );
    }

    /// A guest plants links in its emptyDir; another mount of the pod names them by subPath.
    /// Nothing outside the pod's volumes may be reached: not the canary beside them.
    #[test]
    fn a_sub_path_through_a_planted_link_does_not_leave_the_volume() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("canary"), "host secret").unwrap();
        let pod_dir = host.path().join("pod");
        let spec = |sub: &str, expr: bool| {
            let field = if expr { "subPathExpr" } else { "subPath" };
            pod_of(json!({
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "app", "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "scratch", "mountPath": "/sub", field: sub},
                ]}],
            }))
        };
        let objects = Objects::default();
        let volumes = prepare(&spec("x", false), &pod_dir, &objects, false).unwrap();
        let scratch = pod_dir.join("volumes/scratch");
        symlink("../../../../../../../..", scratch.join("up")).unwrap();
        symlink("../..", scratch.join("pods")).unwrap();
        symlink("/", scratch.join("root")).unwrap();
        symlink("hop", scratch.join("chain")).unwrap();
        symlink("up", scratch.join("hop")).unwrap();
        std::fs::write(scratch.join("file"), "").unwrap();
        let env = [("WHERE".to_string(), "up".to_string())];
        for (sub, expr) in
            [("up", false), ("up/etc", false), ("pods", false), ("root", false), ("chain", false), ("$(WHERE)", true)]
        {
            let pod = spec(sub, expr);
            let err = mounts(&pod.spec.as_ref().unwrap().containers[0], &volumes, &env).unwrap_err();
            assert!(err.contains("leads outside the volume"), "{sub}: {err}");
        }
        // A file is shown alone, from the directory that holds it.
        let pod = spec("file", false);
        let shown = mounts(&pod.spec.as_ref().unwrap().containers[0], &volumes, &env).unwrap();
        let file = shown[1].file.as_ref().unwrap();
        assert_eq!((file.name.as_str(), file.optional, shown[1].path.as_str()), ("file", false, "/sub"));
        // A FIFO a container made there is not opened by looking (which would wait for a
        // writer), nor shown.
        rustix::fs::mknodat(rustix::fs::CWD, scratch.join("fifo"), rustix::fs::FileType::Fifo, 0o644.into(), 0)
            .unwrap();
        let pod = spec("fifo", false);
        let err = mounts(&pod.spec.as_ref().unwrap().containers[0], &volumes, &env).unwrap_err();
        assert!(err.contains("subPath \"fifo\""), "{err}");
        // Refused before anything is resolved, as upstream's validation refuses them.
        for sub in ["../..", "/etc", "a/../../b"] {
            let pod = spec(sub, false);
            let err = mounts(&pod.spec.as_ref().unwrap().containers[0], &volumes, &env).unwrap_err();
            assert!(err.contains("must be a relative path"), "{sub}: {err}");
        }
        // A link that stays in the volume is followed, and a missing subPath is made.
        std::fs::create_dir(scratch.join("real")).unwrap();
        symlink("real", scratch.join("inside")).unwrap();
        let pod = spec("inside/new", false);
        let mounts = mounts(&pod.spec.as_ref().unwrap().containers[0], &volumes, &env).unwrap();
        assert!(mounts.iter().all(|p| !p.read_only));
        assert!(scratch.join("real/new").is_dir());
        assert_eq!(std::fs::read_to_string(host.path().join("canary")).unwrap(), "host secret");
        let mut beside: Vec<_> = std::fs::read_dir(host.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        beside.sort();
        assert_eq!(beside, ["canary", "pod"]);
    }
}
