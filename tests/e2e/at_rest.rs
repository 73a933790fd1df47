//! The edge device's data at rest: a server's data directory and every file in it are its
//! owner's alone (0700 and 0600, as etcd keeps its data), also when an earlier release or a
//! careless hand left them readable, so that another local user finds no Secret in the store's
//! files; and with encryption at rest on, the store's files hold no Secret in the clear at all,
//! through a key rotation as upstream documents it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, ensure};

use anyhow::Context;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;

/// A Secret value, and how it is written inside a Secret's JSON (base64).
const PASSWORD: &str = "correct-horse-battery-staple";
const PASSWORD_B64: &str = "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==";

/// Whether any file under `root` holds `needle`.
fn found_in_files(root: &Path, needle: &[u8]) -> Result<bool> {
    for file in walk_files(root)? {
        let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
        if bytes.windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every directory and file under `root` whose mode is not private, with its mode.
fn readable_by_others(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            if mode != 0o700 {
                found.push(format!("{} {mode:o}", path.display()));
            }
            pending.extend(std::fs::read_dir(&path)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?);
        } else if meta.is_file() && mode != 0o600 {
            found.push(format!("{} {mode:o}", path.display()));
        }
    }
    Ok(found)
}

#[test]
fn the_data_directory_is_private_to_its_owner() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // What an earlier release left behind: world-readable.
    std::fs::create_dir_all(data.join("store-notes"))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(data.join("store-notes"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(data.join("store-notes/old.txt"), "left readable")?;
    std::fs::set_permissions(data.join("store-notes/old.txt"), std::fs::Permissions::from_mode(0o644))?;

    let server = Server::start(&data, Ports::free())?;
    let k = Kubectl::new("1.33", &server)?;
    k.ok(&["create", "secret", "generic", "vault", &format!("--from-literal=password={PASSWORD}")])?;
    let loose = readable_by_others(&data)?;
    ensure!(loose.is_empty(), "readable by others: {loose:?}");
    // Without encryption at rest the store's files do hold the Secret, readably: what the
    // file modes (and, in the next test, encryption) must protect.
    ensure!(found_in_files(&data.join("store"), PASSWORD_B64.as_bytes())?, "the Secret is not in the store's files");

    // Another local user cannot read the store's files (which hold the Secret in the clear
    // unless encryption at rest is on). Only root can switch users to try it.
    if rustix::process::geteuid().is_root() {
        let wal = walk_files(&data.join("store"))?.into_iter().find(|p| p.extension().is_some_and(|e| e == "log"));
        let wal = wal.ok_or_else(|| anyhow::anyhow!("no RocksDB WAL under {}", data.display()))?;
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&wal)
            .output()?;
        ensure!(!out.status.success(), "another user read {}", wal.display());
        ensure!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    }
    Ok(())
}

fn walk_files(root: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// An `EncryptionConfiguration` for Secrets with these aesgcm keys, first first, and identity
/// after them.
fn encryption_config(path: &Path, keys: &[(&str, &str)]) -> Result<()> {
    let keys: String =
        keys.iter().map(|(name, secret)| format!("      - name: {name}\n        secret: {secret}\n")).collect();
    let config = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n{keys}  - identity: {{}}\n"
    );
    std::fs::write(path, config)?;
    Ok(())
}

#[test]
fn secrets_are_encrypted_at_rest_and_keys_rotate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("encryption.yaml");
    let k1 = ("k1", "c2VjcmV0IGlzIHNlY3VyZSwgaXNuJ3QgaXQ/IDMyIGI=");
    let k2 = ("k2", "YW5vdGhlciBzZWNyZXQsIDMyIGJ5dGVzIGxvbmcgb2s=");
    let ports = Ports::free();
    let start = |keys: &[(&str, &str)]| -> Result<Server> {
        encryption_config(&config, keys)?;
        Server::start_with(&data, ports.clone(), &["--encryption-provider-config", config.to_str().unwrap()])
    };

    let server = start(&[k1])?;
    let k = Kubectl::new("1.33", &server)?;
    k.ok(&["create", "secret", "generic", "vault", &format!("--from-literal=password={PASSWORD}")])?;
    k.ok(&["create", "configmap", "plain", "--from-literal=colour=blue"])?;
    let read = |k: &Kubectl| k.ok(&["get", "secret", "vault", "-o", "jsonpath={.data.password}"]);
    ensure!(read(&k)? == PASSWORD_B64, "the Secret reads back as it was written");
    let store = data.join("store");
    ensure!(!found_in_files(&store, PASSWORD_B64.as_bytes())?, "the Secret is in the store's files in the clear");
    ensure!(!found_in_files(&store, PASSWORD.as_bytes())?, "the Secret is in the store's files in the clear");
    ensure!(found_in_files(&store, b"k8s:enc:aesgcm:v1:k1:")?, "nothing was stored encrypted");
    // What the configuration does not name is stored as it was.
    ensure!(found_in_files(&store, b"\"colour\":\"blue\"")?, "the ConfigMap is not stored as it was");

    // Rotation, as upstream documents it: the new key second, then first, then every Secret
    // written again, then the old key gone.
    drop(server);
    let server = start(&[k1, k2])?;
    let k = k.for_server(&server);
    ensure!(read(&k)? == PASSWORD_B64);
    drop(server);
    let server = start(&[k2, k1])?;
    let k = k.for_server(&server);
    let all = k.ok(&["get", "secrets", "-A", "-o", "json"])?;
    let file = dir.path().join("secrets.json");
    std::fs::write(&file, all)?;
    k.ok_anywhere(&["replace", "-f", file.to_str().unwrap()])?;
    drop(server);
    let server = start(&[k2])?;
    let k = k.for_server(&server);
    ensure!(read(&k)? == PASSWORD_B64, "the rewritten Secret reads with the new key alone");

    // Without its key, a Secret is lost, and says so.
    drop(server);
    let server = start(&[k1])?;
    let k = k.for_server(&server);
    let err = k.fails(&["get", "secret", "vault"])?;
    ensure!(err.contains("no provider or key of the encryption configuration opens it"), "{err}");
    drop(server);
    let server = Server::start(&data, ports.clone())?;
    let k = k.for_server(&server);
    let err = k.fails(&["get", "secret", "vault"])?;
    ensure!(err.contains("it is encrypted"), "{err}");
    Ok(())
}
