//! Writing a container's output to its log file in the CRI format, rotated by size, off the
//! async threads: a guest's writes are formatted into its log's buffer, and one thread of the
//! agent's (`container-logs`) writes the buffers to their files. A log whose buffer is full has
//! its writers wait ([`ContainerLog::room`]), as a container whose pipe is full waits for
//! containerd.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use flotilla_wasm::{OutputSink, Stream};
use tokio::sync::{Notify, watch};

use super::{MAX_FILE_BYTES, MAX_FILES, MAX_LINE_BYTES, format_timestamp};

/// A log's buffer takes writes until it holds this much that is not written yet.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// How far a log has been written: followers wake on every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entries written to the file so far (any change wakes followers).
    pub entries: u64,
    /// The container ended and all it wrote is in the file: nothing more will be written.
    pub closed: bool,
}

/// The log of one run of one container: `<n>.log`, where `n` is the container's restart count.
/// It is the container's [`OutputSink`]: the guest's writes are split into lines, each written
/// as one CRI entry (`<RFC 3339 time> <stream> <F|P> <line>`); a line longer than
/// [`MAX_LINE_BYTES`] is written as partial (`P`) entries, as containerd does.
#[derive(Debug)]
pub struct ContainerLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    lines: Mutex<Lines>,
    /// The file, the writer thread's alone: no guest waits for it.
    file: Mutex<Target>,
    progress: watch::Sender<Progress>,
    /// Told whenever the writer has emptied the buffer.
    drained: Notify,
}

/// What the guest wrote that is not in the file yet.
#[derive(Debug, Default)]
struct Lines {
    /// Bytes of an unfinished line, per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    /// Whole entries, formatted, and how many.
    pending: Vec<u8>,
    entries: u64,
    /// On the writer's queue.
    queued: bool,
    /// Closed: once what is pending is written, nothing more comes.
    closing: bool,
}

#[derive(Debug)]
enum Target {
    /// Opened by the writer when it first has something to write.
    Deferred,
    Open {
        file: File,
        size: u64,
    },
    /// A write failed, or there is nowhere to write: the rest of the output is dropped rather
    /// than failing the guest (a full disk must not crash pods), and the failure is logged once.
    Dropped,
}

impl ContainerLog {
    /// Creates (or, for an agent that restarted, appends to) the log at `path`, now: it blocks.
    pub fn create(path: PathBuf) -> std::io::Result<ContainerLog> {
        let (file, size) = open(&path)?;
        Ok(ContainerLog::with(path, Target::Open { file, size }))
    }

    /// The same, the file opened (and its directory made) by the writer when it is first
    /// written to: for a caller that must not block.
    pub fn deferred(path: PathBuf) -> ContainerLog {
        ContainerLog::with(path, Target::Deferred)
    }

    /// A log that keeps nothing: for a run whose output has nowhere to go yet.
    pub fn discarding() -> ContainerLog {
        ContainerLog::with(PathBuf::new(), Target::Dropped)
    }

    fn with(path: PathBuf, target: Target) -> ContainerLog {
        ContainerLog {
            shared: Arc::new(Shared {
                path,
                lines: Mutex::default(),
                file: Mutex::new(target),
                progress: watch::Sender::new(Progress::default()),
                drained: Notify::new(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Wakes whenever an entry is written to the file, and once more when the log is closed.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Writes what is left of unfinished lines; once all is in the file, tells followers that
    /// nothing more comes ([`closed`](Self::closed)).
    pub fn close(&self) {
        let mut lines = self.shared.lines.lock().unwrap_or_else(PoisonError::into_inner);
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut lines.partial[index(stream)]);
            if !rest.is_empty() {
                append(&mut lines, stream, b'F', &rest);
            }
        }
        lines.closing = true;
        self.shared.queue(&mut lines);
    }

    /// Once the log is closed and all that was written to it is in its file.
    pub async fn closed(&self) {
        let _ = self.subscribe().wait_for(|p| p.closed).await;
    }

    /// Whether the log takes more output now.
    fn has_room(&self) -> bool {
        self.shared.lines.lock().unwrap_or_else(PoisonError::into_inner).pending.len() < MAX_PENDING_BYTES
    }
}

impl Shared {
    /// Hands the log to the writer, unless it is on its queue already.
    fn queue(self: &Arc<Self>, lines: &mut Lines) {
        if !std::mem::replace(&mut lines.queued, true) {
            let _ = writer().send(self.clone());
        }
    }

    /// The writer's part: what is pending goes to the file.
    fn flush(&self) {
        let (pending, entries, closing) = {
            let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.queued = false;
            (std::mem::take(&mut lines.pending), std::mem::take(&mut lines.entries), lines.closing)
        };
        self.drained.notify_waiters();
        if !pending.is_empty() {
            self.write(&pending);
        }
        self.progress.send_modify(|p| {
            p.entries += entries;
            p.closed |= closing;
        });
    }

    fn write(&self, entries: &[u8]) {
        let mut target = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Target::Deferred = *target {
            *target = match open(&self.path) {
                Ok((file, size)) => Target::Open { file, size },
                Err(err) => {
                    tracing::warn!(path = %self.path.display(), %err, "cannot open a container log; dropping its output");
                    Target::Dropped
                }
            };
        }
        if let Target::Open { size, .. } = *target
            && size + entries.len() as u64 > MAX_FILE_BYTES
            && size > 0
        {
            *target = self.rotate();
        }
        let Target::Open { file, size } = &mut *target else { return };
        match file.write_all(entries) {
            Ok(()) => *size += entries.len() as u64,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot write a container log; dropping its output");
                *target = Target::Dropped;
            }
        }
    }

    /// Renames the full file aside (`<n>.log.<time>`, as the kubelet names rotated logs), keeps
    /// the newest [`MAX_FILES`]` - 1` of those, and starts a new file.
    fn rotate(&self) -> Target {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S%.f").to_string();
        let rotated = self.path.with_extension(format!("log.{stamp}"));
        let result = std::fs::rename(&self.path, &rotated)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&self.path));
        let file = match result {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot rotate a container log; dropping its output");
                return Target::Dropped;
            }
        };
        let mut old = rotated_files(&self.path);
        old.sort();
        let excess = old.len().saturating_sub(MAX_FILES - 1);
        for path in &old[..excess] {
            let _ = std::fs::remove_file(path);
        }
        Target::Open { file, size: 0 }
    }
}

/// Opens the log at `path` to append to it, and its size.
fn open(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// The writer thread's queue of logs with something to write, the thread started with the
/// first.
fn writer() -> &'static Sender<Arc<Shared>> {
    static WRITER: OnceLock<Sender<Arc<Shared>>> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (queue, logs) = std::sync::mpsc::channel::<Arc<Shared>>();
        std::thread::Builder::new()
            .name("container-logs".into())
            .spawn(move || {
                for log in logs {
                    // One log's fault must not end the thread every log needs.
                    let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.flush()));
                    if flushed.is_err() {
                        tracing::error!(path = %log.path.display(), "writing a container log panicked");
                    }
                }
            })
            .expect("starting the container log writer");
        queue
    })
}

/// Formats one entry into the buffer.
fn append(lines: &mut Lines, stream: Stream, tag: u8, line: &[u8]) {
    let timestamp = format_timestamp(jiff::Timestamp::now());
    let pending = &mut lines.pending;
    pending.reserve(timestamp.len() + line.len() + 12);
    pending.extend_from_slice(timestamp.as_bytes());
    pending.push(b' ');
    pending.extend_from_slice(stream.as_str().as_bytes());
    pending.extend_from_slice(&[b' ', tag, b' ']);
    pending.extend_from_slice(line);
    pending.push(b'\n');
    lines.entries += 1;
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
        let mut lines = self.shared.lines.lock().unwrap_or_else(PoisonError::into_inner);
        // Closed: followers were told that nothing more comes (a guest cut off mid-write).
        if lines.closing {
            return;
        }
        let before = lines.entries;
        while !bytes.is_empty() {
            let partial = &mut lines.partial[index(stream)];
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
                        append(&mut lines, stream, if last { b'F' } else { b'P' }, piece);
                    }
                    if line.is_empty() {
                        append(&mut lines, stream, b'F', b"");
                    }
                }
                None => {
                    partial.extend_from_slice(bytes);
                    bytes = &[];
                    while lines.partial[index(stream)].len() >= MAX_LINE_BYTES {
                        let rest = lines.partial[index(stream)].split_off(MAX_LINE_BYTES);
                        let piece = std::mem::replace(&mut lines.partial[index(stream)], rest);
                        append(&mut lines, stream, b'P', &piece);
                    }
                }
            }
        }
        if lines.entries > before {
            self.shared.queue(&mut lines);
        }
    }

    fn has_room(&self) -> bool {
        ContainerLog::has_room(self)
    }

    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let drained = self.shared.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if self.has_room() {
                    return;
                }
                drained.await;
            }
        })
    }
}
