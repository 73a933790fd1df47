//! Writing a container's output to its log file in the CRI format, rotated by size.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flotilla_wasm::{OutputSink, Stream};
use tokio::sync::watch;

use super::{MAX_FILE_BYTES, MAX_FILES, MAX_LINE_BYTES, format_timestamp};

/// How far a log has been written: followers wake on every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entries written so far (any change wakes followers).
    pub entries: u64,
    /// The container ended: nothing more will be written.
    pub closed: bool,
}

/// The log of one run of one container: `<n>.log`, where `n` is the container's restart count.
/// It is the container's [`OutputSink`]: the guest's writes are split into lines, each written
/// as one CRI entry (`<RFC 3339 time> <stream> <F|P> <line>`); a line longer than
/// [`MAX_LINE_BYTES`] is written as partial (`P`) entries, as containerd does.
#[derive(Debug)]
pub struct ContainerLog {
    path: PathBuf,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
}

#[derive(Debug)]
struct State {
    /// `None` after a write failed: the rest of the output is dropped rather than failing the
    /// guest (a full disk must not crash pods), and the failure is logged once.
    file: Option<File>,
    size: u64,
    /// Bytes of an unfinished line, per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
}

impl ContainerLog {
    /// Creates (or, for an agent that restarted, appends to) the log at `path`.
    pub fn create(path: PathBuf) -> std::io::Result<ContainerLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(ContainerLog {
            path,
            state: Mutex::new(State { file: Some(file), size, partial: [Vec::new(), Vec::new()] }),
            progress: watch::Sender::new(Progress::default()),
        })
    }

    /// A log that keeps nothing: for a run whose output has nowhere to go yet.
    pub fn discarding() -> ContainerLog {
        ContainerLog {
            path: PathBuf::new(),
            state: Mutex::new(State { file: None, size: 0, partial: [Vec::new(), Vec::new()] }),
            progress: watch::Sender::new(Progress::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wakes whenever an entry is written, and once more when the log is closed.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Writes what is left of unfinished lines and tells followers that nothing more comes.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("log lock");
        let mut written = 0;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut state.partial[index(stream)]);
            if !rest.is_empty() {
                self.append(&mut state, stream, b'F', &rest);
                written += 1;
            }
        }
        drop(state);
        self.progress.send_modify(|p| {
            p.entries += written;
            p.closed = true;
        });
    }

    fn append(&self, state: &mut State, stream: Stream, tag: u8, line: &[u8]) {
        let timestamp = format_timestamp(jiff::Timestamp::now());
        let mut entry = Vec::with_capacity(timestamp.len() + line.len() + 12);
        entry.extend_from_slice(timestamp.as_bytes());
        entry.push(b' ');
        entry.extend_from_slice(stream.as_str().as_bytes());
        entry.extend_from_slice(&[b' ', tag, b' ']);
        entry.extend_from_slice(line);
        entry.push(b'\n');
        if state.size + entry.len() as u64 > MAX_FILE_BYTES && state.size > 0 {
            self.rotate(state);
        }
        let Some(file) = state.file.as_mut() else { return };
        match file.write_all(&entry) {
            Ok(()) => state.size += entry.len() as u64,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot write a container log; dropping its output");
                state.file = None;
            }
        }
    }

    /// Renames the full file aside (`<n>.log.<time>`, as the kubelet names rotated logs), keeps
    /// the newest [`MAX_FILES`]` - 1` of those, and starts a new file.
    fn rotate(&self, state: &mut State) {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S%.f").to_string();
        let rotated = self.path.with_extension(format!("log.{stamp}"));
        let result = std::fs::rename(&self.path, &rotated)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&self.path));
        match result {
            Ok(file) => {
                state.file = Some(file);
                state.size = 0;
            }
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot rotate a container log; dropping its output");
                state.file = None;
                return;
            }
        }
        let mut old = rotated_files(&self.path);
        old.sort();
        let excess = old.len().saturating_sub(MAX_FILES - 1);
        for path in &old[..excess] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The rotated files of the log at `path` (`<n>.log.<time>`).
pub(super) fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|entry| entry.path())
        .collect()
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl OutputSink for ContainerLog {
    fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut state = self.state.lock().expect("log lock");
        let mut written = 0;
        while !bytes.is_empty() {
            let partial = &mut state.partial[index(stream)];
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let line = if partial.is_empty() {
                        bytes[..end].to_vec()
                    } else {
                        let mut line = std::mem::take(partial);
                        line.extend_from_slice(&bytes[..end]);
                        line
                    };
                    bytes = &bytes[end + 1..];
                    for (i, piece) in line.chunks(MAX_LINE_BYTES).enumerate() {
                        let last = (i + 1) * MAX_LINE_BYTES >= line.len();
                        self.append(&mut state, stream, if last { b'F' } else { b'P' }, piece);
                        written += 1;
                    }
                    if line.is_empty() {
                        self.append(&mut state, stream, b'F', b"");
                        written += 1;
                    }
                }
                None => {
                    partial.extend_from_slice(bytes);
                    bytes = &[];
                    while state.partial[index(stream)].len() >= MAX_LINE_BYTES {
                        let rest = state.partial[index(stream)].split_off(MAX_LINE_BYTES);
                        let piece = std::mem::replace(&mut state.partial[index(stream)], rest);
                        self.append(&mut state, stream, b'P', &piece);
                        written += 1;
                    }
                }
            }
        }
        drop(state);
        if written > 0 {
            self.progress.send_modify(|p| p.entries += written);
        }
    }
}
