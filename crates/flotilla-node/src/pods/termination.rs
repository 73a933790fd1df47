//! A container's termination message, as the kubelet keeps it: a file of the node's that the
//! container sees at its `terminationMessagePath` (`/dev/termination-log`), read when the
//! container ends into `state.terminated.message`; with `FallbackToLogsOnError`, the end of
//! its log when it failed and wrote nothing there.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use rustix::fs::{Mode, OFlags};

use crate::logs::{self, LogOptions};
use crate::runtime::{FileMount, Mount};

/// What is read of the file: its last 4 KiB (upstream's `MaxContainerTerminationMessageLength`).
const MAX_FILE_BYTES: u64 = 4 << 10;
/// What is read of the log instead: its last 80 lines, 2 KiB at most
/// (`MaxContainerTerminationMessageLogLines`, `…LogLength`).
const MAX_LOG_LINES: u64 = 80;
const MAX_LOG_BYTES: usize = 2 << 10;
/// How long a run's end waits for its file to be read.
const READ_WAIT: Duration = Duration::from_secs(2);
/// All of a pod's containers' messages together, shared out evenly
/// (`MaxPodTerminationMessageLogLength`).
pub(super) const MAX_POD_BYTES: usize = 12 << 10;

/// The directory of run `attempt` of `container` under its pod's directory, and the file's
/// name in it: `containers/<name>/<attempt>/<the path's file name>`, so that a wasm guest, whose
/// mounts are directories, sees the file at its path too (the run's directory at the path's
/// parent). A path that is not absolute, or that climbs (`..`), has none.
fn file(pod_dir: &Path, container: &Container, attempt: i32) -> Option<(PathBuf, String)> {
    let path = Path::new(container.termination_message_path.as_deref()?);
    let plain = path.is_absolute() && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let name = path.file_name().filter(|_| plain)?.to_str()?.to_string();
    Some((pod_dir.join("containers").join(&container.name).join(attempt.to_string()), name))
}

/// Makes the (empty, world-writable, as upstream's) file of run `attempt`, after removing what
/// the container's runs left before (their messages are in its status; a guest may have put
/// anything there): the mount that shows it. It blocks.
pub(super) fn prepare(pod_dir: &Path, container: &Container, attempt: i32) -> std::io::Result<Option<Mount>> {
    let Some((dir, name)) = file(pod_dir, container, attempt) else { return Ok(None) };
    if let Some(runs) = dir.parent() {
        // (`remove_dir_all` removes links; it does not follow them.)
        for earlier in std::fs::read_dir(runs).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(earlier.path());
        }
    }
    std::fs::create_dir_all(&dir)?;
    let dir = File::open(&dir)?;
    // Whatever user the container runs as writes it: its mode is set on the file made, the
    // umask notwithstanding.
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let made = rustix::fs::openat(&dir, name.as_str(), flags, Mode::from_raw_mode(0o666))?;
    rustix::fs::fchmod(&made, Mode::from_raw_mode(0o666))?;
    let path = container.termination_message_path.clone().unwrap_or_default();
    let file = Some(FileMount { file: Arc::new(File::from(made)), name, optional: true });
    Ok(Some(Mount { dir: Arc::new(dir), path, read_only: false, file }))
}

/// The message of run `attempt` of `container`, which ended with `code`, if it left one.
pub(super) async fn message(
    pod_dir: &Path,
    log_dir: &Path,
    container: &Container,
    attempt: i32,
    code: i32,
) -> Option<String> {
    let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError") && code != 0;
    let written = match file(pod_dir, container, attempt) {
        Some((dir, name)) => {
            let read = tokio::task::spawn_blocking(move || read_tail(&dir, &name));
            tokio::time::timeout(READ_WAIT, read).await.ok().and_then(Result::ok).flatten()
        }
        None => None,
    };
    match written {
        Some(text) if !text.is_empty() || !fallback => Some(text).filter(|t| !t.is_empty()),
        _ if fallback => {
            let path = logs::container_path(log_dir, &container.name, attempt);
            let options = LogOptions { tail_lines: Some(MAX_LOG_LINES), ..Default::default() };
            let mut chunks = logs::read(path, options, None);
            let mut text = Vec::new();
            while let Some(chunk) = chunks.recv().await {
                text.extend_from_slice(&chunk);
            }
            // The last 2 KiB of those lines, as upstream's ring buffer keeps them.
            let text = String::from_utf8_lossy(&text).into_owned();
            let mut start = text.len().saturating_sub(MAX_LOG_BYTES);
            while !text.is_char_boundary(start) {
                start += 1;
            }
            Some(text[start..].to_string()).filter(|t| !t.is_empty())
        }
        _ => None,
    }
}

/// The last [`MAX_FILE_BYTES`] of the file `name` in the run's directory `dir` (upstream's
/// `tail.ReadAtMost`): `None` if there is none, an error's words if it cannot be read. A wasm
/// guest could have put anything there: a link is not followed, and only a regular file is
/// read (a FIFO is not waited on).
fn read_tail(dir: &Path, name: &str) -> Option<String> {
    let read = || -> std::io::Result<Vec<u8>> {
        let dir = File::open(dir)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let mut file = File::from(rustix::fs::openat(&dir, name, flags, Mode::empty())?);
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        file.seek(SeekFrom::Start(metadata.len().saturating_sub(MAX_FILE_BYTES)))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => Some(format!("Error on reading termination log {}: {err}", dir.join(name).display())),
    }
}

/// `message` cut to a pod's share of [`MAX_POD_BYTES`] among its `containers` (the kubelet's
/// status manager), at a character's end.
pub(super) fn within_share(message: &str, containers: usize) -> &str {
    let share = MAX_POD_BYTES / containers.max(1);
    if message.len() <= share {
        return message;
    }
    let end = (0..=share).rev().find(|i| message.is_char_boundary(*i)).unwrap_or(0);
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(policy: &str) -> Container {
        Container {
            name: "app".into(),
            termination_message_path: Some("/dev/termination-log".into()),
            termination_message_policy: Some(policy.into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_file_is_read_else_with_fallback_the_end_of_a_failed_runs_log() {
        let pod = tempfile::tempdir().unwrap();
        let log_dir = pod.path().join("logs");
        let app = container("FallbackToLogsOnError");
        let mount = prepare(pod.path(), &app, 0).unwrap().unwrap();
        let name = mount.file.as_ref().map(|f| f.name.as_str());
        assert_eq!((mount.path.as_str(), name), ("/dev/termination-log", Some("termination-log")));
        let file = pod.path().join("containers/app/0/termination-log");
        assert!(std::fs::read(&file).unwrap().is_empty());
        // Nothing written, and it succeeded: no message.
        assert_eq!(message(pod.path(), &log_dir, &app, 0, 0).await, None);
        // Failed: the end of its log, 80 lines at most.
        let log = logs::ContainerLog::create(logs::container_path(&log_dir, "app", 0)).unwrap();
        for i in 0..100 {
            flotilla_wasm::OutputSink::write(&log, flotilla_wasm::Stream::Stdout, format!("line {i}\n").as_bytes());
        }
        log.close();
        log.closed().await;
        let tail = message(pod.path(), &log_dir, &app, 0, 1).await.unwrap();
        assert!(tail.starts_with("line 20\n") && tail.ends_with("line 99\n"), "{tail}");
        // What it wrote wins, its last 4 KiB.
        std::fs::write(&file, format!("{}the end", "x".repeat(5000))).unwrap();
        let written = message(pod.path(), &log_dir, &app, 0, 1).await.unwrap();
        assert_eq!((written.len(), written.ends_with("the end")), (4096, true));
        // The next run's file replaces it.
        prepare(pod.path(), &app, 1).unwrap();
        assert!(!file.exists() && pod.path().join("containers/app/1/termination-log").exists());
        // With the default policy, a failed run's log is not read.
        assert_eq!(message(pod.path(), &log_dir, &container("File"), 1, 1).await, None);
    }

    #[tokio::test]
    async fn what_a_guest_puts_in_place_of_the_file_is_not_followed_nor_waited_on() {
        let pod = tempfile::tempdir().unwrap();
        let app = container("File");
        prepare(pod.path(), &app, 0).unwrap();
        let file = pod.path().join("containers/app/0/termination-log");
        let secret = pod.path().join("secret");
        std::fs::write(&secret, "the node's secret").unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("../../../secret", &file).unwrap();
        let read = message(pod.path(), pod.path(), &app, 0, 1).await.unwrap();
        assert!(read.starts_with("Error on reading termination log") && !read.contains("secret\""), "{read}");
        std::fs::remove_file(&file).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, &file, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o666), 0).unwrap();
        let read = message(pod.path(), pod.path(), &app, 0, 1).await.unwrap();
        assert!(read.ends_with("not a regular file"), "{read}");
        // The next run's directory is made afresh, whatever the last one held.
        prepare(pod.path(), &app, 0).unwrap();
        assert!(std::fs::symlink_metadata(&file).unwrap().is_file());
        // A path that is not absolute or climbs has no file.
        for path in ["termination-log", "/dev/../x", "/"] {
            let odd = Container { termination_message_path: Some(path.into()), ..container("File") };
            assert!(prepare(pod.path(), &odd, 0).unwrap().is_none(), "{path}");
        }
    }

    #[test]
    fn a_pods_messages_share_twelve_kib() {
        assert_eq!(within_share(&"a".repeat(5000), 4).len(), 3072);
        assert_eq!(within_share("é".repeat(4000).as_str(), 3).len(), 4096);
        assert_eq!(within_share("short", 100), "short");
    }
}
