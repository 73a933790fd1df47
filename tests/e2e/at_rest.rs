//! The edge device's data at rest: a server's data directory and every file in it are its
//! owner's alone (0700 and 0600, as etcd keeps its data), also when an earlier release or a
//! careless hand left them readable, so that another local user finds no Secret in the store's
//! files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, ensure};

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;

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
    k.ok(&["create", "secret", "generic", "vault", "--from-literal=password=correct-horse-battery-staple"])?;
    let loose = readable_by_others(&data)?;
    ensure!(loose.is_empty(), "readable by others: {loose:?}");

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
