//! Pre-opened listening sockets for WASI p1 core modules.
//!
//! WASI p1 has no `bind`: a p1 server accepts connections on sockets its host opened for it, as
//! `wasmtime run --tcplisten` used to provide (`sock_accept` on fd 3, 4, …, with `LISTEN_FDS`
//! saying how many, after systemd's convention). wasmtime-wasi's p1 host no longer implements
//! sockets, so this module does, around it. Each listener's descriptor number is reserved in
//! wasmtime-wasi's table by an empty, read-only directory preopened before the pod's volumes,
//! so the listeners are fds 3, 4, …; then the socket calls, and the descriptor calls a socket
//! needs (read, write, close, fdstat, poll), are shadowed in the linker. On one of this
//! module's descriptors they act on the socket; on any other they call wasmtime-wasi's own
//! implementation, unchanged.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;

use crate::run::CoreGuest;

const MODULE: &str = "wasi_snapshot_preview1";
/// Accepted connections are numbered from here, far above what wasmtime-wasi hands out (it
/// counts up from the last descriptor in use), so the two never meet.
const FIRST_CONNECTION_FD: u32 = 1 << 30;
/// Connections a guest may hold open at once: a guest that accepts without closing must not
/// exhaust the node's file descriptors.
const MAX_CONNECTIONS: usize = 1024;
/// Bytes moved by one read or write: a guest asking for a huge buffer must not make the host
/// allocate it.
const MAX_IO: usize = 64 << 10;
/// I/O vectors read per call (the usual `IOV_MAX`).
const MAX_IOVS: u32 = 1024;

// WASI p1 errno values.
const SUCCESS: i32 = 0;
const AGAIN: i32 = 6;
const BADF: i32 = 8;
const CONNRESET: i32 = 15;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const IO: i32 = 29;
const MFILE: i32 = 33;
const NOTCONN: i32 = 53;
const NOTSUP: i32 = 58;
const PIPE: i32 = 64;

// Constants of the p1 ABI.
const FILETYPE_SOCKET_STREAM: u8 = 6;
const FDFLAGS_NONBLOCK: u16 = 4;
const RIGHTS_ALL: u64 = (1 << 29) - 1;
const RIFLAGS_RECV_PEEK: i32 = 1;
const SDFLAGS_WR: i32 = 2;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;

/// The sockets of one instance.
#[derive(Debug, Default)]
pub(crate) struct Sockets {
    listeners: HashMap<u32, Listener>,
    connections: HashMap<u32, Connection>,
    next_fd: u32,
}

#[derive(Debug)]
struct Listener {
    socket: TcpListener,
    /// A connection accepted while polling for readiness, handed out by the next accept.
    pending: Option<TcpStream>,
    nonblocking: bool,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    nonblocking: bool,
}

impl Sockets {
    /// Adopts `listeners`, which will be fds `3..3 + n` (their numbers are reserved by the
    /// placeholder preopens the caller makes first).
    pub(crate) fn new(listeners: Vec<TcpListener>) -> Sockets {
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(i, socket)| (3 + i as u32, Listener { socket, pending: None, nonblocking: false }))
            .collect();
        Sockets { listeners, connections: HashMap::new(), next_fd: FIRST_CONNECTION_FD }
    }

    fn owns(&self, fd: i32) -> bool {
        let fd = fd as u32;
        self.listeners.contains_key(&fd) || self.connections.contains_key(&fd)
    }

    fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.connections.is_empty()
    }

    async fn accept(&mut self, fd: u32) -> Result<u32, i32> {
        if self.connections.len() >= MAX_CONNECTIONS {
            return Err(MFILE);
        }
        let listener = self.listeners.get_mut(&fd).ok_or(BADF)?;
        let stream = match listener.pending.take() {
            Some(stream) => stream,
            None if listener.nonblocking => match listener.socket.accept().now_or_never() {
                Some(accepted) => accepted.map_err(errno)?.0,
                None => return Err(AGAIN),
            },
            None => listener.socket.accept().await.map_err(errno)?.0,
        };
        let _ = stream.set_nodelay(true);
        let fd = self.next_fd;
        self.next_fd += 1;
        self.connections.insert(fd, Connection { stream, nonblocking: false });
        Ok(fd)
    }

    async fn read(&mut self, fd: u32, max: usize, peek: bool) -> Result<Vec<u8>, i32> {
        let connection = self.connections.get_mut(&fd).ok_or(NOTCONN)?;
        let mut buf = vec![0; max.min(MAX_IO)];
        let read = if connection.nonblocking {
            if peek {
                connection.stream.peek(&mut buf).now_or_never()
            } else {
                connection.stream.read(&mut buf).now_or_never()
            }
            .ok_or(AGAIN)?
        } else if peek {
            connection.stream.peek(&mut buf).await
        } else {
            connection.stream.read(&mut buf).await
        };
        buf.truncate(read.map_err(errno)?);
        Ok(buf)
    }

    async fn write(&mut self, fd: u32, data: &[u8]) -> Result<usize, i32> {
        let connection = self.connections.get_mut(&fd).ok_or(NOTCONN)?;
        let written = if connection.nonblocking {
            connection.stream.write(data).now_or_never().ok_or(AGAIN)?
        } else {
            connection.stream.write(data).await
        };
        written.map_err(errno)
    }

    fn set_nonblocking(&mut self, fd: u32, nonblocking: bool) {
        if let Some(listener) = self.listeners.get_mut(&fd) {
            listener.nonblocking = nonblocking;
        }
        if let Some(connection) = self.connections.get_mut(&fd) {
            connection.nonblocking = nonblocking;
        }
    }

    fn nonblocking(&self, fd: u32) -> bool {
        self.listeners
            .get(&fd)
            .map(|l| l.nonblocking)
            .or(self.connections.get(&fd).map(|c| c.nonblocking))
            .unwrap_or(false)
    }
}

fn errno(err: std::io::Error) -> i32 {
    use std::io::ErrorKind::*;
    match err.kind() {
        WouldBlock => AGAIN,
        ConnectionReset | ConnectionAborted => CONNRESET,
        BrokenPipe => PIPE,
        NotConnected => NOTCONN,
        InvalidInput => INVAL,
        _ => IO,
    }
}

/// Calls wasmtime-wasi's own implementation of `func`, exactly as its linker would.
macro_rules! delegate {
    ($caller:ident, $func:ident($($arg:expr),*) $($await:tt)*) => {{
        let fuel = $caller.as_context_mut().hostcall_fuel();
        let Some(Extern::Memory(memory)) = $caller.get_export("memory") else {
            wasmtime::bail!("missing required memory export")
        };
        let (memory, guest) = memory.data_and_store_mut(&mut $caller);
        p1::WasiSnapshotPreview1::set_hostcall_fuel(&mut guest.wasi, fuel);
        let mut memory = wiggle::GuestMemory::Unshared(memory);
        p1::$func(&mut guest.wasi, &mut memory, $($arg),*) $($await)*
    }};
}

/// The guest's memory, as bytes.
fn memory<'a>(caller: &'a mut Caller<'_, CoreGuest>) -> Result<&'a mut [u8], i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else { return Err(FAULT) };
    Ok(memory.data_mut(caller))
}

fn slice(memory: &[u8], offset: i32, len: usize) -> Result<std::ops::Range<usize>, i32> {
    let start = offset as u32 as usize;
    let end = start.checked_add(len).ok_or(FAULT)?;
    (end <= memory.len()).then_some(start..end).ok_or(FAULT)
}

fn write_u32(caller: &mut Caller<'_, CoreGuest>, offset: i32, value: u32) -> Result<(), i32> {
    let memory = memory(caller)?;
    let range = slice(memory, offset, 4)?;
    memory[range].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// The (address, length) pairs of an iovec list.
fn iovecs(caller: &mut Caller<'_, CoreGuest>, list: i32, count: i32) -> Result<Vec<(i32, usize)>, i32> {
    let count = u32::try_from(count).map_err(|_| INVAL)?.min(MAX_IOVS) as usize;
    let memory = memory(caller)?;
    let bytes = &memory[slice(memory, list, count * 8)?];
    Ok(bytes
        .chunks_exact(8)
        .map(|v| {
            let (ptr, len) = v.split_at(4);
            (i32::from_le_bytes(ptr.try_into().unwrap()), u32::from_le_bytes(len.try_into().unwrap()) as usize)
        })
        .collect())
}

/// Reads from connection `fd` into the iovecs at `list`; the byte count, or an errno.
async fn read_into(caller: &mut Caller<'_, CoreGuest>, fd: i32, list: i32, count: i32, peek: bool) -> Result<u32, i32> {
    let vecs = iovecs(caller, list, count)?;
    let wanted = vecs.iter().map(|(_, len)| len).sum::<usize>();
    let data = caller.data_mut().sockets.read(fd as u32, wanted, peek).await?;
    let memory = memory(caller)?;
    let mut rest = data.as_slice();
    for (ptr, len) in vecs {
        let take = len.min(rest.len());
        let range = slice(memory, ptr, take)?;
        memory[range].copy_from_slice(&rest[..take]);
        rest = &rest[take..];
        if rest.is_empty() {
            break;
        }
    }
    Ok(data.len() as u32)
}

/// Writes the iovecs at `list` to connection `fd`; the byte count, or an errno.
async fn write_from(caller: &mut Caller<'_, CoreGuest>, fd: i32, list: i32, count: i32) -> Result<u32, i32> {
    let vecs = iovecs(caller, list, count)?;
    let memory = memory(caller)?;
    let mut data = Vec::new();
    for (ptr, len) in vecs {
        let take = len.min(MAX_IO - data.len());
        data.extend_from_slice(&memory[slice(memory, ptr, take)?]);
        if data.len() == MAX_IO {
            break;
        }
    }
    Ok(caller.data_mut().sockets.write(fd as u32, &data).await? as u32)
}

fn status<T>(result: Result<T, i32>, then: impl FnOnce(T) -> Result<(), i32>) -> i32 {
    match result.and_then(then) {
        Ok(()) => SUCCESS,
        Err(errno) => errno,
    }
}

type Boxed<'a, T> = Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>;

/// Shadows wasmtime-wasi's p1 functions that sockets need; call after
/// `wasmtime_wasi::p1::add_to_linker_async`.
pub(crate) fn add_to_linker(linker: &mut Linker<CoreGuest>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        MODULE,
        "sock_accept",
        |mut caller: Caller<'_, CoreGuest>, (fd, flags, out): (i32, i32, i32)| -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.listeners.contains_key(&(fd as u32)) {
                    return delegate!(caller, sock_accept(fd, flags, out));
                }
                let accepted = caller.data_mut().sockets.accept(fd as u32).await;
                Ok(status(accepted, |new| write_u32(&mut caller, out, new)))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "sock_recv",
        |mut caller: Caller<'_, CoreGuest>,
         (fd, list, count, flags, out_len, out_flags): (i32, i32, i32, i32, i32, i32)|
         -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.owns(fd) {
                    return delegate!(caller, sock_recv(fd, list, count, flags, out_len, out_flags));
                }
                let read = read_into(&mut caller, fd, list, count, flags & RIFLAGS_RECV_PEEK != 0).await;
                Ok(status(read, |n| {
                    write_u32(&mut caller, out_len, n)?;
                    let memory = memory(&mut caller)?;
                    let range = slice(memory, out_flags, 2)?;
                    memory[range].copy_from_slice(&0u16.to_le_bytes());
                    Ok(())
                }))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "sock_send",
        |mut caller: Caller<'_, CoreGuest>,
         (fd, list, count, flags, out): (i32, i32, i32, i32, i32)|
         -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.owns(fd) {
                    return delegate!(caller, sock_send(fd, list, count, flags, out));
                }
                let written = write_from(&mut caller, fd, list, count).await;
                Ok(status(written, |n| write_u32(&mut caller, out, n)))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "sock_shutdown",
        |mut caller: Caller<'_, CoreGuest>, (fd, how): (i32, i32)| -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.owns(fd) {
                    return delegate!(caller, sock_shutdown(fd, how));
                }
                let Some(connection) = caller.data_mut().sockets.connections.get_mut(&(fd as u32)) else {
                    return Ok(NOTCONN);
                };
                if how & SDFLAGS_WR != 0 {
                    return Ok(status(connection.stream.shutdown().await.map_err(errno), |()| Ok(())));
                }
                Ok(SUCCESS)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_read",
        |mut caller: Caller<'_, CoreGuest>, (fd, list, count, out): (i32, i32, i32, i32)| -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.connections.contains_key(&(fd as u32)) {
                    return delegate!(caller, fd_read(fd, list, count, out).await);
                }
                let read = read_into(&mut caller, fd, list, count, false).await;
                Ok(status(read, |n| write_u32(&mut caller, out, n)))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, CoreGuest>, (fd, list, count, out): (i32, i32, i32, i32)| -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.connections.contains_key(&(fd as u32)) {
                    return delegate!(caller, fd_write(fd, list, count, out).await);
                }
                let written = write_from(&mut caller, fd, list, count).await;
                Ok(status(written, |n| write_u32(&mut caller, out, n)))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_close",
        |mut caller: Caller<'_, CoreGuest>, (fd,): (i32,)| -> Boxed<'_, i32> {
            Box::new(async move {
                let sockets = &mut caller.data_mut().sockets;
                if sockets.connections.remove(&(fd as u32)).is_some() {
                    return Ok(SUCCESS);
                }
                // A listener's placeholder directory is closed too, freeing its number.
                sockets.listeners.remove(&(fd as u32));
                delegate!(caller, fd_close(fd).await)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_fdstat_get",
        |mut caller: Caller<'_, CoreGuest>, (fd, out): (i32, i32)| -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.owns(fd) {
                    return delegate!(caller, fd_fdstat_get(fd, out).await);
                }
                let flags = if caller.data().sockets.nonblocking(fd as u32) { FDFLAGS_NONBLOCK } else { 0 };
                let mut stat = [0u8; 24];
                stat[0] = FILETYPE_SOCKET_STREAM;
                stat[2..4].copy_from_slice(&flags.to_le_bytes());
                stat[8..16].copy_from_slice(&RIGHTS_ALL.to_le_bytes());
                Ok(status(memory(&mut caller), |memory| {
                    let range = slice(memory, out, stat.len())?;
                    memory[range].copy_from_slice(&stat);
                    Ok(())
                }))
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_fdstat_set_flags",
        |mut caller: Caller<'_, CoreGuest>, (fd, flags): (i32, i32)| -> Boxed<'_, i32> {
            Box::new(async move {
                if !caller.data().sockets.owns(fd) {
                    return delegate!(caller, fd_fdstat_set_flags(fd, flags));
                }
                caller.data_mut().sockets.set_nonblocking(fd as u32, flags as u16 & FDFLAGS_NONBLOCK != 0);
                Ok(SUCCESS)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, CoreGuest>, (subs, events, count, out): (i32, i32, i32, i32)| -> Boxed<'_, i32> {
            Box::new(async move {
                let parsed = {
                    let sockets_empty = caller.data().sockets.is_empty();
                    if sockets_empty { None } else { Some(subscriptions(&mut caller, subs, count)) }
                };
                let subscriptions = match parsed {
                    None => return delegate!(caller, poll_oneoff(subs, events, count, out).await),
                    Some(Err(errno)) => return Ok(errno),
                    Some(Ok(list)) => list,
                };
                let sockets = &caller.data().sockets;
                if !subscriptions.iter().any(|s| s.fd.is_some_and(|fd| sockets.owns(fd as i32))) {
                    return delegate!(caller, poll_oneoff(subs, events, count, out).await);
                }
                // Mixing this module's sockets with wasmtime-wasi's descriptors in one poll is not
                // supported: each side can wait only on its own.
                if subscriptions.iter().any(|s| s.fd.is_some_and(|fd| !sockets.owns(fd as i32)) || s.absolute) {
                    return Ok(NOTSUP);
                }
                let ready = poll(&mut caller.data_mut().sockets, &subscriptions).await;
                Ok(status(memory(&mut caller), |memory| {
                    for (i, sub) in ready.iter().enumerate() {
                        let mut event = [0u8; 32];
                        event[0..8].copy_from_slice(&sub.userdata.to_le_bytes());
                        event[10] = sub.kind;
                        if sub.kind != EVENTTYPE_CLOCK {
                            event[16..24].copy_from_slice(&1u64.to_le_bytes());
                        }
                        let range = slice(memory, events + 32 * i as i32, 32)?;
                        memory[range].copy_from_slice(&event);
                    }
                    let range = slice(memory, out, 4)?;
                    memory[range].copy_from_slice(&(ready.len() as u32).to_le_bytes());
                    Ok(())
                }))
            })
        },
    )?;
    Ok(())
}

/// One subscription of a `poll_oneoff` call.
#[derive(Debug, Clone)]
struct Subscription {
    userdata: u64,
    kind: u8,
    /// The descriptor, for `fd_read` and `fd_write`.
    fd: Option<u32>,
    /// The timeout, for a clock.
    timeout: Duration,
    absolute: bool,
}

fn subscriptions(caller: &mut Caller<'_, CoreGuest>, list: i32, count: i32) -> Result<Vec<Subscription>, i32> {
    let count = u32::try_from(count).map_err(|_| INVAL)?.min(MAX_IOVS) as usize;
    let memory = memory(caller)?;
    let bytes = &memory[slice(memory, list, count * 48)?];
    bytes
        .chunks_exact(48)
        .map(|s| {
            let u64_at = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
            let kind = s[8];
            let fd = (kind != EVENTTYPE_CLOCK).then(|| u32::from_le_bytes(s[16..20].try_into().unwrap()));
            if kind > EVENTTYPE_FD_WRITE {
                return Err(INVAL);
            }
            let flags = u16::from_le_bytes(s[40..42].try_into().unwrap());
            Ok(Subscription {
                userdata: u64_at(0),
                kind,
                fd,
                timeout: Duration::from_nanos(if kind == EVENTTYPE_CLOCK { u64_at(24) } else { 0 }),
                absolute: kind == EVENTTYPE_CLOCK && flags & SUBCLOCKFLAGS_ABSTIME != 0,
            })
        })
        .collect()
}

/// Waits until at least one subscription is ready; returns the ready ones, in order.
async fn poll(sockets: &mut Sockets, subscriptions: &[Subscription]) -> Vec<Subscription> {
    type Wait<'a> = Pin<Box<dyn Future<Output = (usize, Option<TcpStream>)> + Send + 'a>>;
    let started = tokio::time::Instant::now();
    let ready = {
        let mut waits: Vec<Wait<'_>> = Vec::new();
        for (i, sub) in subscriptions.iter().enumerate() {
            let fd = sub.fd.unwrap_or_default();
            let wait: Wait<'_> = match (sub.kind, sockets.listeners.get(&fd), sockets.connections.get(&fd)) {
                (EVENTTYPE_CLOCK, _, _) => Box::pin(async move {
                    tokio::time::sleep_until(started + sub.timeout).await;
                    (i, None)
                }),
                (EVENTTYPE_FD_READ, Some(listener), _) if listener.pending.is_none() => {
                    // Readiness to accept is an accepted connection, kept for the next accept.
                    Box::pin(async move { (i, listener.socket.accept().await.ok().map(|(s, _)| s)) })
                }
                (EVENTTYPE_FD_READ, None, Some(connection)) => Box::pin(async move {
                    let _ = connection.stream.readable().await;
                    (i, None)
                }),
                (EVENTTYPE_FD_WRITE, None, Some(connection)) => Box::pin(async move {
                    let _ = connection.stream.writable().await;
                    (i, None)
                }),
                // A pending connection, or a descriptor closed meanwhile: ready at once.
                _ => Box::pin(async move { (i, None) }),
            };
            waits.push(wait);
        }
        let (first, _, rest) = futures::future::select_all(waits).await;
        // Whatever else is ready now is reported with it.
        let mut ready = vec![first];
        ready.extend(rest.into_iter().filter_map(|wait| wait.now_or_never()));
        ready
    };
    let mut events: Vec<(usize, Subscription)> = Vec::new();
    for (i, stream) in ready {
        let sub = &subscriptions[i];
        if let (Some(stream), Some(listener)) = (stream, sub.fd.and_then(|fd| sockets.listeners.get_mut(&fd))) {
            listener.pending = Some(stream);
        }
        events.push((i, sub.clone()));
    }
    events.sort_by_key(|(i, _)| *i);
    events.into_iter().map(|(_, sub)| sub).collect()
}
