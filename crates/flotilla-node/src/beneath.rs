//! Paths resolved beneath a directory handle, never outside it.
//!
//! A guest writes what it likes into the volumes it may write: links that climb out
//! (`../../..`), links to `/`, chains of links, a link swapped in for a directory while the node
//! looks. Every path the node resolves on a pod's behalf (a `subPath`, an item's `path`) is
//! therefore resolved relative to an open handle of the volume's root, through cap-std's
//! sandboxed lookup (`openat2` with `RESOLVE_BENEATH` where the kernel has it, a checked walk
//! otherwise): a link that stays beneath the root is followed, as the kubelet follows it, and
//! one that leads out is an error, at the moment of the open. What the node hands on is the
//! handle it opened, never the path, so nothing swapped in afterwards changes what it names.
//! Never `Path::join` + `canonicalize` + open: between the check and the use a guest wins the
//! race.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use cap_primitives::fs::{DirOptions, OpenOptions};

/// `path` as plain names to descend through (`.` dropped; empty for the root itself), or `None`
/// if it is absolute or has a `..` in it. Upstream's validation refuses the same
/// (`validateLocalDescendingPath`), so an admitted pod never hits this; it guards against
/// objects that reached the store some other way.
pub(crate) fn descending(path: &str) -> Option<PathBuf> {
    let mut plain = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => plain.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(plain)
}

/// Whether `name` may be one directory entry: not empty, no `/`, not `.` or `..`. A pod's
/// names (uid, namespace, name, volume) become directory names on the node.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Opens the directory `path` names beneath `root`.
pub(crate) fn open_dir(root: &File, path: &Path) -> io::Result<File> {
    cap_primitives::fs::open_dir(root, path).map_err(explain)
}

/// Opens the directory `path` names beneath `root`, creating what is missing of it first.
pub(crate) fn create_dir_all(root: &File, path: &Path) -> io::Result<File> {
    if path.as_os_str().is_empty() {
        return root.try_clone();
    }
    let mut prefix = PathBuf::new();
    for component in path.components() {
        prefix.push(component);
        match cap_primitives::fs::create_dir(root, &prefix, &DirOptions::new()) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(explain(err)),
        }
    }
    open_dir(root, path)
}

/// What `path` names beneath `root`, held without being opened (`O_PATH`): nothing a pod put
/// there (a FIFO, a device) is opened by looking, and the handle is what a mount binds.
pub(crate) fn open_path(root: &File, path: &Path) -> io::Result<File> {
    use cap_primitives::fs::OpenOptionsExt;
    // (`openat2` takes nothing beside `O_PATH` but `O_CLOEXEC`, `O_DIRECTORY`, `O_NOFOLLOW`.)
    let flags = rustix::fs::OFlags::PATH.bits() as i32;
    cap_primitives::fs::open(root, path, OpenOptions::new().read(true).custom_flags(flags)).map_err(explain)
}

/// The file `path` names beneath `root`, open for reading.
pub(crate) fn open_file(root: &File, path: &Path) -> io::Result<File> {
    cap_primitives::fs::open(root, path, OpenOptions::new().read(true)).map_err(explain)
}

/// The contents of the file `path` names beneath `root`.
pub(crate) fn read(root: &File, path: &Path) -> io::Result<Vec<u8>> {
    let mut file = cap_primitives::fs::open(root, path, OpenOptions::new().read(true)).map_err(explain)?;
    let mut content = Vec::new();
    io::Read::read_to_end(&mut file, &mut content)?;
    Ok(content)
}

/// Writes `content` to `path` beneath `root`, creating its directories: to a temporary name
/// first, then renamed over it, so that a reader never sees half a file.
pub(crate) fn write(root: &File, path: &Path, content: &[u8]) -> io::Result<()> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")),
    };
    let dir = if parent.as_os_str().is_empty() { root.try_clone()? } else { create_dir_all(root, parent)? };
    let mut partial = OsString::from(".");
    partial.push(name);
    partial.push(".flotilla-partial");
    let partial = Path::new(&partial);
    let options = OpenOptions::new().write(true).create(true).truncate(true).clone();
    let mut file = cap_primitives::fs::open(&dir, partial, &options).map_err(explain)?;
    file.write_all(content)?;
    drop(file);
    cap_primitives::fs::rename(&dir, partial, &dir, Path::new(name)).map_err(explain)
}

/// Removes everything beneath `root` that is neither in `keep` nor a directory holding
/// something in it. Links are removed as links, never followed.
pub(crate) fn remove_except(root: &File, keep: &BTreeSet<PathBuf>) -> io::Result<()> {
    remove_below(root, Path::new(""), keep)
}

fn remove_below(root: &File, dir: &Path, keep: &BTreeSet<PathBuf>) -> io::Result<()> {
    let entries = if dir.as_os_str().is_empty() {
        cap_primitives::fs::read_base_dir(root)
    } else {
        cap_primitives::fs::read_dir(root, dir)
    };
    for entry in entries.map_err(explain)? {
        let entry = entry?;
        let path = dir.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            remove_below(root, &path, keep)?;
            if !keep.iter().any(|kept| kept.starts_with(&path)) {
                let _ = cap_primitives::fs::remove_dir(root, &path);
            }
        } else if !keep.contains(&path) {
            cap_primitives::fs::remove_file(root, &path).map_err(explain)?;
        }
    }
    Ok(())
}

/// cap-std says "a path led outside of the filesystem" when a lookup would leave the root; a
/// user reads it in a pod's status, so say it in the pod's terms.
fn explain(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::PermissionDenied && err.to_string().contains("outside of the filesystem") {
        io::Error::new(io::ErrorKind::PermissionDenied, "it leads outside the volume (through a link or \"..\")")
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A volume inside a directory that also holds a canary: what an escape would reach.
    fn volume() -> (tempfile::TempDir, File) {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("canary"), "host secret").unwrap();
        std::fs::create_dir(host.path().join("volume")).unwrap();
        let root = File::open(host.path().join("volume")).unwrap();
        (host, root)
    }

    fn canary_untouched(host: &tempfile::TempDir) {
        assert_eq!(std::fs::read_to_string(host.path().join("canary")).unwrap(), "host secret");
        let entries: Vec<_> = std::fs::read_dir(host.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries.len(), 2, "nothing new beside the volume: {entries:?}");
    }

    #[test]
    fn links_that_leave_the_root_are_refused_and_those_inside_it_followed() {
        let (host, root) = volume();
        let vol = host.path().join("volume");
        std::fs::create_dir(vol.join("real")).unwrap();
        symlink("real", vol.join("inside")).unwrap();
        symlink("../../../../../..", vol.join("up")).unwrap();
        symlink("..", vol.join("parent")).unwrap();
        symlink(host.path(), vol.join("absolute")).unwrap();
        symlink("chain2", vol.join("chain1")).unwrap();
        symlink("real/../..", vol.join("chain2")).unwrap();
        symlink("loop", vol.join("loop")).unwrap();
        std::fs::write(vol.join("file"), "x").unwrap();

        assert!(open_dir(&root, Path::new("inside")).is_ok());
        for escape in ["up", "parent", "absolute", "chain1", "up/etc", "chain1/volume"] {
            let err = open_dir(&root, Path::new(escape)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{escape}: {err}");
            assert!(err.to_string().contains("outside the volume"), "{err}");
            // Creating beneath it fails the same way, and creates nothing outside.
            assert!(create_dir_all(&root, &Path::new(escape).join("new")).is_err(), "{escape}");
            assert!(write(&root, &Path::new(escape).join("canary"), b"owned").is_err(), "{escape}");
            assert!(read(&root, &Path::new(escape).join("canary")).is_err(), "{escape}");
        }
        assert!(open_dir(&root, Path::new("loop")).is_err());
        assert_eq!(open_dir(&root, Path::new("file")).unwrap_err().raw_os_error(), Some(libc_enotdir()));
        assert!(create_dir_all(&root, Path::new("file/sub")).is_err());
        canary_untouched(&host);
    }

    #[test]
    fn files_are_written_beneath_and_stale_ones_removed_without_following_links() {
        let (host, root) = volume();
        write(&root, Path::new("conf/a.txt"), b"one").unwrap();
        write(&root, Path::new("b"), b"two").unwrap();
        assert_eq!(read(&root, Path::new("conf/a.txt")).unwrap(), b"one");
        // A link to the host beneath the root is removed as a link; its target stays.
        symlink(host.path(), host.path().join("volume/host")).unwrap();
        let keep = BTreeSet::from([PathBuf::from("conf/a.txt")]);
        remove_except(&root, &keep).unwrap();
        let mut left: Vec<_> =
            std::fs::read_dir(host.path().join("volume")).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["conf"]);
        assert_eq!(std::fs::read_to_string(host.path().join("volume/conf/a.txt")).unwrap(), "one");
        canary_untouched(&host);
    }

    #[test]
    fn a_link_swapped_in_while_the_node_resolves_never_leads_out() {
        // A guest renames a directory and a link to the host in and out of place as fast as it
        // can, while the node resolves and creates beneath that name.
        let (host, root) = volume();
        let vol = host.path().join("volume");
        std::fs::create_dir(vol.join("dir")).unwrap();
        symlink("..", vol.join("link")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (vol, stop) = (vol.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::rename(vol.join("dir"), vol.join("aside"));
                    let _ = std::fs::rename(vol.join("link"), vol.join("dir"));
                    let _ = std::fs::rename(vol.join("dir"), vol.join("link"));
                    let _ = std::fs::rename(vol.join("aside"), vol.join("dir"));
                }
            })
        };
        for _ in 0..2000 {
            let _ = create_dir_all(&root, Path::new("dir/made"));
            let _ = write(&root, Path::new("dir/canary"), b"owned");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        canary_untouched(&host);
    }

    #[test]
    fn only_plain_relative_paths_descend() {
        assert!(is_plain_name("web-1") && is_plain_name("..a"));
        assert!(!is_plain_name("") && !is_plain_name("..") && !is_plain_name("a/b") && !is_plain_name("."));
        for (given, plain) in [("a", "a"), ("a/b/", "a/b"), ("./a/./b", "a/b"), ("..a", "..a"), (".", ""), ("", "")] {
            assert_eq!(descending(given), Some(PathBuf::from(plain)), "{given}");
        }
        for bad in ["/", "/etc", "..", "a/../b", "a/..", "../a"] {
            assert!(descending(bad).is_none(), "{bad}");
        }
    }

    fn libc_enotdir() -> i32 {
        rustix::io::Errno::NOTDIR.raw_os_error()
    }
}
