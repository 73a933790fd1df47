//! A guest's stdout and stderr, handed to whoever keeps the container's log.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Which of a container's output streams bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The name the CRI log format uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Receives a container's output as the guest writes it. Writes arrive in order per stream,
/// in whatever pieces the guest wrote; a sink splits them into lines itself. It must not block:
/// it runs on the guest's task. A sink that cannot keep up says so ([`has_room`]), and the
/// guest waits for [`room`] before it writes again.
///
/// [`has_room`]: OutputSink::has_room
/// [`room`]: OutputSink::room
pub trait OutputSink: Send + Sync + 'static {
    fn write(&self, stream: Stream, bytes: &[u8]);

    /// Whether the sink takes more now.
    fn has_room(&self) -> bool {
        true
    }

    /// Once the sink takes more.
    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

/// One of a guest's output streams, as WASI p1 and p2 both want it.
#[derive(Clone)]
pub(crate) struct OutputPipe {
    sink: Arc<dyn OutputSink>,
    stream: Stream,
    /// What the guest may write before it asks again (`check-write`): the host passes its
    /// writes on unchecked, and a guest that wrote past it would grow the sink without bound.
    permit: usize,
}

impl OutputPipe {
    pub(crate) fn new(sink: Arc<dyn OutputSink>, stream: Stream) -> OutputPipe {
        OutputPipe { sink, stream, permit: 0 }
    }
}

impl IsTerminal for OutputPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // As wasmtime's own streams: past the permit is the guest's error, and ends it.
        self.permit = self
            .permit
            .checked_sub(bytes.len())
            .ok_or_else(|| wasmtime_wasi::p2::StreamError::trap("write beyond what check-write permitted"))?;
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Nothing while the sink is full: the guest waits until it is `ready`.
        self.permit = if self.sink.has_room() { 64 * 1024 } else { 0 };
        Ok(self.permit)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputPipe {
    async fn ready(&mut self) {
        self.sink.room().await;
    }
}

/// (For WASIp3's streams, which this runtime does not offer: it takes all it is given.)
impl AsyncWrite for OutputPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use wasmtime_wasi::p2::StreamError;

    use super::*;

    /// A sink that keeps what it is given, and is full when told.
    #[derive(Default)]
    struct Kept {
        bytes: Mutex<Vec<u8>>,
        full: std::sync::atomic::AtomicBool,
    }

    impl OutputSink for Kept {
        fn write(&self, _: Stream, bytes: &[u8]) {
            self.bytes.lock().unwrap().extend_from_slice(bytes);
        }

        fn has_room(&self) -> bool {
            !self.full.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn a_guest_writes_only_what_check_write_permits() {
        let sink = Arc::new(Kept::default());
        let mut pipe = OutputPipe::new(sink.clone(), Stream::Stdout);
        // Unasked, nothing is permitted: the host passes writes on unchecked.
        assert!(matches!(pipe.write(Bytes::from_static(b"x")), Err(StreamError::Trap(_))));
        let permit = pipe.check_write().unwrap();
        pipe.write(Bytes::from(vec![b'a'; permit - 1])).unwrap();
        pipe.write(Bytes::from_static(b"b")).unwrap();
        assert!(matches!(pipe.write(Bytes::from_static(b"c")), Err(StreamError::Trap(_))));
        assert_eq!(sink.bytes.lock().unwrap().len(), permit);
        // A full sink permits nothing until it has room.
        sink.full.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(pipe.check_write().unwrap(), 0);
    }
}
