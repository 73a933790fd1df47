//! Container images (OCI and Docker): their manifest, config and layers are blobs of the store,
//! imported from a `docker save` archive or an OCI image layout (a directory, or a tar of one),
//! or pulled (`registry.rs`); each is unpacked once into a root filesystem snapshot, which its
//! containers mount read-only beneath a writable layer of their own.
//!
//! ```text
//! <store>/snapshots/<manifest hex>/rootfs     the layers applied in order, whiteouts honoured
//! ```
//!
//! A snapshot is unpacked under a temporary name and renamed into place, so a crash never
//! leaves half of one where a container would mount it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::Reference;
use super::registry::{Descriptor, Manifest, choose_platform, parse_manifest};
use super::store::{Image, ImageStore, Kind, Source};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation an OCI layout names its images by (a tag, or a whole reference).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation for the whole reference, which `ctr export` writes.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// What a whiteout's name starts with: the file it names is deleted from the layers below.
const WHITEOUT: &str = ".wh.";
/// The whiteout that makes a directory opaque: nothing below shows through it.
const OPAQUE: &str = ".wh..wh..opq";

/// An image config (`application/vnd.oci.image.config.v1+json`), the part a container runs by.
#[derive(Deserialize, Debug, Default, Clone)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: RunConfig,
}

/// What the image says its containers run, where the pod does not say.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `NAME=value`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
}

/// A container image unpacked: its root filesystem, and what it runs by default.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rootfs: PathBuf,
    pub config: RunConfig,
}

/// `docker save`'s `manifest.json`: one entry per image.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports every image of a `docker save` archive or an OCI layout (directory or tar) at
/// `path`. `name` names the image when the archive holds exactly one, instead of (or where
/// there is no) name of its own.
pub fn import_archive(store: &ImageStore, path: &Path, name: Option<&Reference>) -> Result<Vec<Image>, String> {
    let unpacked;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        unpacked = tempfile::Builder::new()
            .prefix("import.partial-")
            .tempdir_in(store.root())
            .map_err(|e| format!("creating a directory to unpack {} in: {e}", path.display()))?;
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut archive = tar::Archive::new(file);
        archive.unpack(unpacked.path()).map_err(|e| format!("{} is not a tar archive: {e}", path.display()))?;
        unpacked.path().to_path_buf()
    };
    let images = if dir.join("index.json").exists() {
        import_layout(store, &dir, name)?
    } else if dir.join("manifest.json").exists() {
        import_saved(store, &dir, name)?
    } else {
        return Err(format!(
            "{} is neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)",
            path.display()
        ));
    };
    if images.is_empty() {
        return Err(format!("{} holds no image with a name: name it with --name", path.display()));
    }
    Ok(images)
}

fn import_saved(store: &ImageStore, dir: &Path, name: Option<&Reference>) -> Result<Vec<Image>, String> {
    let saved: Vec<SavedImage> = serde_json::from_slice(&read(dir, "manifest.json")?)
        .map_err(|e| format!("manifest.json is not a `docker save` manifest: {e}"))?;
    if name.is_some() && saved.len() != 1 {
        return Err(format!("--name names one image, and the archive holds {}", saved.len()));
    }
    let mut images = Vec::new();
    for entry in saved {
        let put = |file: &str| -> Result<(String, u64), String> {
            store.put_file(&regular_file(dir, file)?, None).map_err(|e| e.to_string())
        };
        let (config_digest, config_size) = put(&entry.config)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let (digest, size) = put(layer)?;
            let gzipped = is_gzip(&store.blob_path(&digest)).map_err(|e| format!("{layer}: {e}"))?;
            let media_type = if gzipped { LAYER_GZIP_TYPE } else { LAYER_TYPE };
            layers.push(descriptor(media_type, digest, size));
        }
        let manifest = Manifest {
            schema_version: Some(2),
            media_type: Some(MANIFEST_TYPE.into()),
            config: Some(descriptor(CONFIG_TYPE, config_digest, config_size)),
            layers,
            ..Default::default()
        };
        let names = match name {
            Some(name) => vec![name.clone()],
            None => entry.repo_tags.iter().flatten().map(|t| Reference::parse(t)).collect::<Result<_, _>>()?,
        };
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
        images.extend(tag_manifest(store, &bytes, &manifest, &names)?);
    }
    Ok(images)
}

fn import_layout(store: &ImageStore, dir: &Path, name: Option<&Reference>) -> Result<Vec<Image>, String> {
    let index = parse_manifest(&read(dir, "index.json")?)?;
    if name.is_some() && index.manifests.len() != 1 {
        return Err(format!("--name names one image, and the layout holds {}", index.manifests.len()));
    }
    let mut images = Vec::new();
    for entry in &index.manifests {
        let annotations = entry.annotations.clone().unwrap_or_default();
        let names = match (name, annotations.get(CONTAINERD_NAME).or(annotations.get(REF_NAME))) {
            (Some(name), _) => vec![name.clone()],
            // A bare tag (`latest`) names nothing on its own: no repository.
            (None, Some(named)) if named.contains(['/', ':', '@']) => vec![Reference::parse(named)?],
            (None, _) => continue,
        };
        let mut bytes = read_blob(dir, &entry.digest)?;
        let mut manifest = parse_manifest(&bytes)?;
        if !manifest.manifests.is_empty() {
            let chosen = choose_platform(&manifest.manifests)
                .ok_or("the image index has no manifest for this node's platform")?;
            bytes = read_blob(dir, &chosen.digest.clone())?;
            manifest = parse_manifest(&bytes)?;
        }
        let config = manifest.config.as_ref().ok_or("a manifest of the layout names no image config")?;
        for blob in std::iter::once(config).chain(&manifest.layers) {
            store
                .put_file(&regular_file(dir, &blob_name(&blob.digest)?)?, Some(&blob.digest))
                .map_err(|e| e.to_string())?;
        }
        // The manifest as it was written, so that its digest is the one it is known by.
        images.extend(tag_manifest(store, &bytes, &manifest, &names)?);
    }
    Ok(images)
}

/// Stores `manifest` (as `bytes`) and points each of `names` at it.
fn tag_manifest(
    store: &ImageStore,
    bytes: &[u8],
    manifest: &Manifest,
    names: &[Reference],
) -> Result<Vec<Image>, String> {
    let digest = store.put_blob(bytes, None).map_err(|e| e.to_string())?;
    let size = bytes.len() as u64 + manifest.config.iter().chain(&manifest.layers).map(|d| d.size).sum::<u64>();
    names
        .iter()
        .map(|name| store.tag(name, &digest, size, Source::Imported, Kind::Container).map_err(|e| e.to_string()))
        .collect()
}

fn descriptor(media_type: &str, digest: String, size: u64) -> Descriptor {
    Descriptor { media_type: media_type.into(), digest, size, platform: None, annotations: None }
}

/// Manifests, configs and indexes are small: a larger one is refused rather than read.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    let path = regular_file(dir, file)?;
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{file}: {e}"))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!("{file} is larger than {MAX_MANIFEST_BYTES} bytes"));
    }
    Ok(bytes)
}

fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, String> {
    let bytes = read(dir, &blob_name(digest)?)?;
    let actual = super::sha256(&bytes);
    if actual != digest {
        return Err(format!("blob {digest} has the digest {actual}"));
    }
    Ok(bytes)
}

/// Where a layout keeps the blob `digest`.
fn blob_name(digest: &str) -> Result<String, String> {
    match digest.strip_prefix("sha256:").filter(|_| super::store::is_digest(digest)) {
        Some(hex) => Ok(format!("blobs/sha256/{hex}")),
        None => Err(format!("{digest:?} is not a sha256 digest")),
    }
}

/// The regular file `file` names beneath `dir`: no `..`, not absolute, and neither it nor a
/// directory on the way a link (an archive's link could name any file of the host).
fn regular_file(dir: &Path, file: &str) -> Result<PathBuf, String> {
    let relative = Path::new(file);
    let refused = || format!("{file:?} does not name a regular file of the archive");
    if !relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(refused());
    }
    let parent = within(dir, relative.parent().unwrap_or(Path::new(""))).ok_or_else(refused)?;
    let path = parent.join(relative.file_name().ok_or_else(refused)?);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        _ => Err(refused()),
    }
}

fn is_gzip(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0; 2];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// The stored manifest of a container image.
fn manifest(store: &ImageStore, image: &Image) -> Result<Manifest, String> {
    let bytes =
        std::fs::read(store.blob_path(&image.digest)).map_err(|e| format!("reading {}: {e}", image.reference))?;
    let manifest = parse_manifest(&bytes)?;
    if manifest.config.is_none() {
        return Err(format!("{} is not a container image: its manifest names no config", image.reference));
    }
    Ok(manifest)
}

/// The image unpacked, once: from the snapshot made before, else its layers applied in order
/// now (blocking: call it off the async threads).
pub fn snapshot(store: &ImageStore, image: &Image) -> Result<Snapshot, String> {
    let manifest = manifest(store, image)?;
    let config_digest = &manifest.config.as_ref().expect("checked by manifest()").digest;
    let config: ImageConfig = serde_json::from_slice(
        &std::fs::read(store.blob_path(config_digest)).map_err(|e| format!("reading the image config: {e}"))?,
    )
    .map_err(|e| format!("the image config is not valid JSON: {e}"))?;
    let dir = store.root().join("snapshots").join(image.digest.trim_start_matches("sha256:"));
    let rootfs = dir.join("rootfs");
    if rootfs.is_dir() {
        return Ok(Snapshot { rootfs, config: config.config });
    }
    let partial = tempfile::Builder::new()
        .prefix("snapshot.partial-")
        .tempdir_in(store.root().join("snapshots"))
        .map_err(|e| format!("creating a snapshot: {e}"))?;
    let unpacking = partial.path().join("rootfs");
    std::fs::create_dir(&unpacking).map_err(|e| format!("creating a snapshot: {e}"))?;
    // `/` is 0755 unless a layer says otherwise (not the node's private 0700).
    std::fs::set_permissions(&unpacking, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| format!("creating a snapshot: {e}"))?;
    for layer in &manifest.layers {
        if layer.media_type.contains("zstd") {
            return Err("zstd-compressed layers are not supported: push the image with gzip layers".into());
        }
        apply_layer(&store.blob_path(&layer.digest), &unpacking).map_err(|e| {
            // The tar crate says which file, and its source why.
            let why = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            format!("unpacking layer {}: {e}{why}", layer.digest)
        })?;
    }
    // Another start of the same image may have made it meanwhile: theirs stands.
    match std::fs::rename(partial.path(), &dir) {
        Ok(()) => {
            let _ = partial.keep();
        }
        Err(_) if rootfs.is_dir() => {}
        Err(e) => return Err(format!("storing the snapshot: {e}")),
    }
    Ok(Snapshot { rootfs, config: config.config })
}

/// Applies one layer (a tar, gzip-compressed or not) onto `rootfs`: first its whiteouts delete
/// what the layers below have there, then its files are written.
fn apply_layer(blob: &Path, rootfs: &Path) -> std::io::Result<()> {
    let open = || -> std::io::Result<tar::Archive<Box<dyn Read>>> {
        let file = std::io::BufReader::new(std::fs::File::open(blob)?);
        let reader: Box<dyn Read> =
            if is_gzip(blob)? { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
        Ok(tar::Archive::new(reader))
    };
    let mut whiteouts = Vec::new();
    for entry in open()?.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && name.starts_with(WHITEOUT)
        {
            whiteouts.push(path);
        }
    }
    for whiteout in &whiteouts {
        let Some(parent) = within(rootfs, whiteout.parent().unwrap_or(Path::new(""))) else { continue };
        let name = whiteout.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == OPAQUE {
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                remove(&child.path())?;
            }
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT).filter(|n| !n.is_empty() && *n != "." && *n != "..") {
            remove(&parent.join(hidden))?;
        }
    }
    let mut archive = open()?;
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.components().all(|c| c == Component::CurDir) {
            // The layer's `/`, which the tar crate does not unpack onto its destination.
            if let Ok(mode) = entry.header().mode() {
                std::fs::set_permissions(rootfs, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))?;
            }
            continue;
        }
        let is_whiteout = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(WHITEOUT));
        let device =
            matches!(entry.header().entry_type(), tar::EntryType::Block | tar::EntryType::Char | tar::EntryType::Fifo);
        // Devices come from the runtime's own /dev, not from an image.
        if is_whiteout || device {
            continue;
        }
        // A layer may put a file where a layer below has a directory, or the other way round:
        // what was there goes first, as containerd's applier does (the tar crate would fail).
        let is_dir = entry.header().entry_type().is_dir();
        if let (Some(parent), Some(name)) = (within(rootfs, path.parent().unwrap_or(Path::new(""))), path.file_name())
            && let Ok(existing) = std::fs::symlink_metadata(parent.join(name))
            && existing.is_dir() != is_dir
        {
            remove(&parent.join(name))?;
        }
        entry.unpack_in(rootfs)?;
    }
    Ok(())
}

/// The directory `relative` names beneath `root`, if every step to it is a directory of its
/// own (not a link, which a layer could point anywhere on the host).
fn within(root: &Path, relative: &Path) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for component in relative.components() {
        match component {
            Component::CurDir => continue,
            Component::Normal(part) => path.push(part),
            _ => return None,
        }
        if !std::fs::symlink_metadata(&path).ok()?.is_dir() {
            return None;
        }
    }
    Some(path)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The environment of a container of this image: the image's, with the pod's over it.
pub fn merge_env(image: &RunConfig, pod: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let image_env =
        image.env.iter().flatten().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string()));
    for (order, (name, value)) in image_env.chain(pod.iter().cloned()).enumerate() {
        let first = env.get(&name).map_or(order, |(first, _)| *first);
        env.insert(name, (first, value));
    }
    let mut env: Vec<_> = env.into_iter().map(|(name, (order, value))| (order, name, value)).collect();
    env.sort();
    env.into_iter().map(|(_, name, value)| (name, value)).collect()
}

/// The argv of a container of this image, as upstream's kubelet makes it: the pod's `command`
/// replaces the image's entrypoint (and then its cmd too), its `args` replace the cmd.
pub fn argv(image: &RunConfig, command: Option<Vec<String>>, args: Option<Vec<String>>) -> Vec<String> {
    let command = command.filter(|c| !c.is_empty());
    let args = args.filter(|a| !a.is_empty());
    match (command, args) {
        (Some(command), Some(args)) => command.into_iter().chain(args).collect(),
        (Some(command), None) => command,
        (None, Some(args)) => image.entrypoint.clone().unwrap_or_default().into_iter().chain(args).collect(),
        (None, None) => image
            .entrypoint
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(image.cmd.clone().unwrap_or_default())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match content {
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append_data(&mut header, path, *bytes).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    header.set_cksum();
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    /// A `docker save` archive of one image with `layers`, tagged `tag`.
    fn saved(dir: &Path, tag: &str, layers: &[Vec<u8>], config: serde_json::Value) -> PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, bytes).unwrap();
        };
        let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
        for (name, bytes) in names.iter().zip(layers) {
            add(name, bytes);
        }
        add("config.json", &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": names}]);
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        let path = dir.join("image.tar");
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
        path
    }

    #[test]
    fn a_saved_image_is_imported_and_unpacked_with_its_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let lower = layer(&[
            ("etc", None),
            ("etc/keep", Some(b"kept")),
            ("etc/gone", Some(b"deleted above")),
            ("data", None),
            ("data/old", Some(b"hidden by an opaque dir")),
        ]);
        let upper = layer(&[
            ("etc/keep", None),
            ("etc/keep/now-a-dir", Some(b"replaced")),
            ("etc/.wh.gone", Some(b"")),
            ("data/.wh..wh..opq", Some(b"")),
            ("data/new", Some(b"new")),
            ("etc/.wh...", Some(b"")),
            ("bin", None),
            ("bin/sh", Some(b"#!")),
        ]);
        let config = serde_json::json!({"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["PATH=/bin"], "WorkingDir": "/data"}});
        let archive = saved(dir.path(), "busybox:latest", &[lower, upper], config);
        let images = import_archive(&store, &archive, None).unwrap();
        assert_eq!(images.len(), 1);
        let image = &images[0];
        assert_eq!(image.reference, "docker.io/library/busybox:latest");
        assert_eq!(image.kind, Kind::Container);
        assert_eq!(store.lookup(&Reference::parse("busybox").unwrap()).as_ref(), Some(image));
        let snapshot = snapshot(&store, image).unwrap();
        let read = |p: &str| std::fs::read_to_string(snapshot.rootfs.join(p)).ok();
        let mode = |p: &str| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(snapshot.rootfs.join(p)).unwrap().permissions())
                & 0o7777
        };
        assert_eq!(mode(""), 0o755, "the image's / is open to every user of the container");
        assert_eq!(mode("bin"), 0o755);
        assert_eq!(read("etc/keep/now-a-dir").as_deref(), Some("replaced"), "a file replaced by a directory");
        assert_eq!(read("etc/gone"), None);
        assert_eq!(read("data/old"), None);
        assert_eq!(read("data/new").as_deref(), Some("new"));
        assert_eq!(read("bin/sh").as_deref(), Some("#!"));
        assert!(!snapshot.rootfs.join("etc/.wh.gone").exists());
        assert_eq!(snapshot.config.working_dir.as_deref(), Some("/data"));
        // The second time, the snapshot is there.
        assert_eq!(super::snapshot(&store, image).unwrap().rootfs, snapshot.rootfs);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("store/snapshots")).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn a_whiteout_or_a_link_cannot_reach_outside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), "x").unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        // A link to the host's directory, then a whiteout and a file through it.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        header.set_mode(0o777);
        builder.append_link(&mut header, "escape", &victim).unwrap();
        let evil = builder.into_inner().unwrap();
        let through = layer(&[("escape/.wh.precious", Some(b"")), ("escape/planted", Some(b"!"))]);
        let archive = saved(dir.path(), "evil:v1", &[evil, through], serde_json::json!({}));
        let image = import_archive(&store, &archive, None).unwrap().remove(0);
        let _ = snapshot(&store, &image);
        assert!(victim.join("precious").exists(), "a whiteout deleted a host file through a link");
        assert!(!victim.join("planted").exists(), "a layer wrote a host file through a link");
    }

    #[test]
    fn an_archive_cannot_import_a_host_file_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        // A `docker save` archive whose layer is a link to a file of the host.
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        builder.append_link(&mut link, "l/layer.tar", &secret).unwrap();
        let manifest = br#"[{"Config":"config.json","RepoTags":["evil:v1"],"Layers":["l/layer.tar"]}]"#;
        for (path, content) in [("config.json", &b"{}"[..]), ("manifest.json", &manifest[..])] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, content).unwrap();
        }
        let archive = dir.path().join("evil.tar");
        std::fs::write(&archive, builder.into_inner().unwrap()).unwrap();
        let err = import_archive(&store, &archive, None).unwrap_err();
        assert!(err.contains("does not name a regular file"), "{err}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn argv_and_env_follow_upstreams_rules() {
        let image = RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
            ..Default::default()
        };
        let v = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(argv(&image, None, None), ["/entry", "default"]);
        assert_eq!(argv(&image, None, v(&["x"])), ["/entry", "x"]);
        assert_eq!(argv(&image, v(&["/bin/sh"]), None), ["/bin/sh"]);
        assert_eq!(argv(&image, v(&["/bin/sh"]), v(&["-c", "echo"])), ["/bin/sh", "-c", "echo"]);
        let env = merge_env(&image, &[("A".into(), "pod".into()), ("B".into(), "b".into())]);
        assert_eq!(env, [("PATH".into(), "/bin".into()), ("A".into(), "pod".into()), ("B".into(), "b".into())]);
    }
}
