//! Reading a container's log back as `kubectl logs` asks: tail, since, timestamps, a byte limit,
//! and follow.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use bytes::Bytes;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

use super::writer::Progress;

/// What `GET pods/{name}/log` asks for (upstream's `PodLogOptions`).
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// The last N entries only.
    pub tail_lines: Option<u64>,
    /// Entries written at or after this time only.
    pub since: Option<Timestamp>,
    /// Prefix each line with the time it was written.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// One entry of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    time: &'a str,
    /// A partial line (`P`): its content has no newline of its own.
    partial: bool,
    content: &'a [u8],
}

/// Parses `<time> <stream> <F|P> <content>`; `None` for a line that is not an entry.
fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let _stream = fields.next()?;
    let partial = match fields.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Entry { time, partial, content: fields.next().unwrap_or_default() })
}

/// Formats the entries of `text` (whole lines of a log file) that pass `options`.
struct Formatter {
    options: LogOptions,
    written: u64,
}

impl Formatter {
    /// Appends what `entries` show to `out`; false once the byte limit is reached.
    fn format<'a>(&mut self, entries: impl Iterator<Item = Entry<'a>>, out: &mut Vec<u8>) -> bool {
        for entry in entries {
            if let Some(since) = self.options.since
                && entry.time.parse::<Timestamp>().is_ok_and(|t| t < since)
            {
                continue;
            }
            let start = out.len();
            if self.options.timestamps {
                out.extend_from_slice(entry.time.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(entry.content);
            if !entry.partial {
                out.push(b'\n');
            }
            self.written += (out.len() - start) as u64;
            if let Some(limit) = self.options.limit_bytes
                && self.written >= limit
            {
                out.truncate(out.len() - (self.written - limit) as usize);
                return false;
            }
        }
        true
    }
}

/// Reads the log at `path`. Without `follow` (or with no `progress`, for a container that has
/// ended) it sends what is there; with it, it goes on sending what is written until the log is
/// closed or the receiver is dropped. Rotation is followed: when the file is renamed aside, the
/// rest of it is read, then the new file from its start.
pub fn read(path: PathBuf, options: LogOptions, progress: Option<watch::Receiver<Progress>>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(err) = stream(path.clone(), options, progress, &tx).await {
            tracing::debug!(path = %path.display(), %err, "reading a container log ended");
        }
    });
    rx
}

async fn stream(
    path: PathBuf,
    options: LogOptions,
    progress: Option<watch::Receiver<Progress>>,
    tx: &mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let follow = options.follow;
    let tail = options.tail_lines;
    let mut formatter = Formatter { options, written: 0 };
    // Through tokio's files: the reads run on its blocking threads, not the async ones.
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text).await?;
    // Only whole lines: a line still being written is read on the next round.
    let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut offset = whole as u64;
    let mut out = Vec::new();
    let entries: Vec<Entry<'_>> = text[..whole].split(|b| *b == b'\n').filter_map(parse).collect();
    let skip = tail.map_or(0, |n| entries.len().saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)));
    let more = formatter.format(entries.into_iter().skip(skip), &mut out);
    send(tx, out).await?;
    let Some(mut progress) = progress.filter(|_| follow && more) else { return Ok(()) };
    let mut inode = file.metadata().await?.ino();
    loop {
        let closed = progress.borrow_and_update().closed;
        // Read what was added to the open file, then, if it was rotated away, what was added to
        // it before that (the writer writes no more to a file once it has renamed it), then the
        // new one.
        let mut rotated = false;
        loop {
            file.seek(SeekFrom::Start(offset)).await?;
            let mut added = Vec::new();
            file.read_to_end(&mut added).await?;
            let whole = added.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            offset += whole as u64;
            let mut out = Vec::new();
            let more = formatter.format(added[..whole].split(|b| *b == b'\n').filter_map(parse), &mut out);
            send(tx, out).await?;
            if !more {
                return Ok(());
            }
            if std::mem::take(&mut rotated) {
                file = tokio::fs::File::open(&path).await?;
                inode = file.metadata().await?.ino();
                offset = 0;
                continue;
            }
            match tokio::fs::metadata(&path).await {
                Ok(current) if current.ino() != inode => rotated = true,
                _ => break,
            }
        }
        if closed {
            return Ok(());
        }
        if progress.changed().await.is_err() {
            // The writer is gone without closing (the agent is stopping): nothing more comes.
            return Ok(());
        }
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, out: Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    tx.send(Bytes::from(out)).await.map_err(|_| std::io::Error::other("the reader went away"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_parsed_and_formatted_with_their_options() {
        let log = b"2026-01-01T00:00:01.000000000Z stdout F one\n\
                    2026-01-01T00:00:02.000000000Z stderr P tw\n\
                    2026-01-01T00:00:02.100000000Z stderr F o\n\
                    not an entry\n\
                    2026-01-01T00:00:03.000000000Z stdout F three\n";
        let entries = || log.split(|b| *b == b'\n').filter_map(parse);
        assert_eq!(entries().count(), 4);
        let render = |options: LogOptions| {
            let mut out = Vec::new();
            Formatter { options, written: 0 }.format(entries(), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(render(LogOptions::default()), "one\ntwo\nthree\n");
        let since = Some("2026-01-01T00:00:02Z".parse().unwrap());
        assert_eq!(render(LogOptions { since, ..Default::default() }), "two\nthree\n");
        assert_eq!(
            render(LogOptions { timestamps: true, tail_lines: None, ..Default::default() }).lines().next(),
            Some("2026-01-01T00:00:01.000000000Z one")
        );
        assert_eq!(render(LogOptions { limit_bytes: Some(6), ..Default::default() }), "one\ntw");
    }
}
