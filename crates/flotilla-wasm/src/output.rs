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
}

impl OutputPipe {
    pub(crate) fn new(sink: Arc<dyn OutputSink>, stream: Stream) -> OutputPipe {
        OutputPipe { sink, stream }
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
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Nothing while the sink is full: the guest waits until it is `ready`.
        Ok(if self.sink.has_room() { 64 * 1024 } else { 0 })
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
