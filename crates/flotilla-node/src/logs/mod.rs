//! Container logs, kept as the kubelet keeps them: one directory per pod
//! (`<namespace>_<name>_<uid>`), one per container in it, and one file per run of the container
//! (`<restart count>.log`) in the CRI format, so that log shippers written for Kubernetes read
//! them unchanged.

mod reader;
mod writer;

use std::path::{Path, PathBuf};

pub use reader::{LogOptions, read};
pub use writer::{ContainerLog, Progress};

/// A log file is rotated past this size (the kubelet's `containerLogMaxSize` default): a guest
/// that prints without end must not fill the node's disk.
pub const MAX_FILE_BYTES: u64 = 10 << 20;
/// Files kept per container run, the current one included (`containerLogMaxFiles`).
pub const MAX_FILES: usize = 5;
/// A longer line is split into partial entries, as containerd splits them: a guest that never
/// prints a newline must not make the agent buffer without end.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// The directory of a pod's logs under the node's log root.
pub fn pod_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

/// The log of run `restart_count` of `container`, in its pod's log directory.
pub fn container_path(pod_dir: &Path, container: &str, restart_count: i32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart_count}.log"))
}

/// RFC 3339 with nanoseconds, as CRI logs and `kubectl logs --timestamps` show times.
pub fn format_timestamp(time: jiff::Timestamp) -> String {
    format!("{time:.9}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flotilla_wasm::{OutputSink, Stream};

    use super::*;

    async fn collect(mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn lines_are_written_as_cri_entries_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = container_path(dir.path(), "app", 0);
        let log = ContainerLog::create(path.clone()).unwrap();
        log.write(Stream::Stdout, b"first\nsec");
        log.write(Stream::Stderr, b"oops\n");
        log.write(Stream::Stdout, b"ond\n\nunfinished");
        log.close();
        log.closed().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(lines, ["stdout F first", "stderr F oops", "stdout F second", "stdout F ", "stdout F unfinished"]);
        let all = collect(read(path.clone(), LogOptions::default(), None)).await;
        assert_eq!(all, "first\noops\nsecond\n\nunfinished\n");
        let tail = collect(read(path, LogOptions { tail_lines: Some(2), ..Default::default() }, None)).await;
        assert_eq!(tail, "\nunfinished\n");
    }

    #[tokio::test]
    async fn a_long_line_is_split_into_partial_entries_and_joined_on_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = container_path(dir.path(), "app", 0);
        let log = ContainerLog::create(path.clone()).unwrap();
        let long = "x".repeat(MAX_LINE_BYTES * 2 + 10);
        log.write(Stream::Stdout, long.as_bytes());
        log.write(Stream::Stdout, b"\n");
        log.close();
        log.closed().await;
        let tags: Vec<_> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| l.split(' ').nth(2).unwrap().to_string()).collect();
        assert_eq!(tags, ["P", "P", "F"]);
        assert_eq!(collect(read(path, LogOptions::default(), None)).await, format!("{long}\n"));
    }

    #[tokio::test]
    async fn a_follower_sees_later_writes_across_a_rotation_until_the_log_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = container_path(dir.path(), "app", 0);
        let log = Arc::new(ContainerLog::create(path.clone()).unwrap());
        log.write(Stream::Stdout, b"before\n");
        let rx = read(path.clone(), LogOptions { follow: true, ..Default::default() }, Some(log.subscribe()));
        let reader = tokio::spawn(collect(rx));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Enough to rotate the file at least once.
        let line = format!("{}\n", "y".repeat(MAX_LINE_BYTES - 1));
        let lines = (MAX_FILE_BYTES as usize / line.len()) + 10;
        for _ in 0..lines {
            log.write(Stream::Stdout, line.as_bytes());
            tokio::task::yield_now().await;
        }
        log.write(Stream::Stdout, b"after\n");
        log.close();
        let text = reader.await.unwrap();
        assert!(text.starts_with("before\n") && text.ends_with("after\n"), "{}", &text[..20]);
        assert_eq!(text.lines().count(), lines + 2);
        assert!(!writer::rotated_files(&path).is_empty());
    }

    #[tokio::test]
    async fn a_writer_that_waits_for_room_loses_nothing_and_a_deferred_log_is_made_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = container_path(dir.path(), "app", 3);
        let log = ContainerLog::deferred(path.clone());
        assert!(!path.exists(), "nothing written, nothing made");
        let line = format!("{}\n", "z".repeat(1023));
        let chunk = line.repeat(64);
        for _ in 0..48 {
            log.room().await;
            log.write(Stream::Stdout, chunk.as_bytes());
        }
        log.close();
        log.closed().await;
        let text = collect(read(path, LogOptions::default(), None)).await;
        assert_eq!(text.len(), chunk.len() * 48);
    }
}
