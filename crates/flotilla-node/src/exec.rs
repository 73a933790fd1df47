//! `kubectl exec`: a command run in a running container (the kubelet's
//! `/exec/{namespace}/{pod}/{container}`), its streams carried over the WebSocket the API server
//! proxies from the client, in upstream's `v5.channel.k8s.io` or `v4.channel.k8s.io` protocol.
//! Each binary message is a channel byte and its data: 0 stdin, 1 stdout, 2 stderr, 3 how the
//! command ended (a `Status`), 4 a terminal's new size; in v5, 255 closes the client's end of a
//! channel (`[255, 0]`: stdin is done).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::runtime::{Control, Spawned, Streams};

pub(crate) use flotilla_api::STREAM_PROTOCOLS as PROTOCOLS;
/// The newest protocol, which closes a client's stream apart from the rest.
const V5: &str = PROTOCOLS[0];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How long a command's output may be quiet, once it has ended, before it is taken to be all
/// there: a process it left behind may hold its output open for good.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// How long a terminal's first size is waited for before its command starts.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);
/// Chunks of input waiting for a command that is slow to read it.
const INPUT_QUEUE: usize = 64;
/// A terminal's end-of-file character (`^D`).
const EOT: u8 = 0x04;

/// What the client asks for: `command` (repeated), `stdin`, `stdout`, `stderr`, `tty`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    pub command: Vec<String>,
    pub streams: Streams,
}

impl Options {
    /// The query's options, or why they cannot be had, in upstream's words.
    pub(crate) fn parse(query: Option<&str>) -> Result<Options, String> {
        let mut options = Options::default();
        let streams = &mut options.streams;
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            let value = crate::server::decode(value);
            let flag = flotilla_api::query::boolean(&value);
            match key {
                "command" => options.command.push(value),
                "stdin" | "input" => streams.stdin = flag,
                "stdout" | "output" => streams.stdout = flag,
                "stderr" | "error" => streams.stderr = flag,
                "tty" => streams.tty = flag,
                _ => {}
            }
        }
        if options.command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        let streams = &mut options.streams;
        if !(streams.stdin || streams.stdout || streams.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        // A terminal is one stream (upstream's `remotecommand` turns stderr off too).
        if streams.tty {
            streams.stderr = false;
        }
        Ok(options)
    }
}

/// Upgrades the request to the stream (its protocol chosen from [`PROTOCOLS`]), and runs
/// `options.command` in the container `control` runs, over it.
pub(crate) fn serve(
    upgrade: WebSocketUpgrade,
    control: Arc<dyn Control>,
    options: Options,
) -> axum::response::Response {
    let v5 = upgrade.selected_protocol().is_some_and(|p| p.as_bytes() == V5.as_bytes());
    upgrade.on_upgrade(move |socket| session(socket, control, options, v5))
}

async fn session(socket: WebSocket, control: Arc<dyn Control>, options: Options, v5: bool) {
    let (mut sink, mut messages) = socket.split();
    let streams = options.streams;
    // As upstream: an empty message on the first channel the client reads, once it may.
    let first = if streams.stdout {
        STDOUT
    } else if streams.stderr {
        STDERR
    } else {
        STATUS
    };
    let _ = sink.send(frame(first, &[])).await;
    // A terminal's size comes first (kubectl sends it at once): a command that reads it as it
    // starts is not to see 0×0. What else the client sends meanwhile is kept for the command.
    let (mut early, mut size) = (Vec::new(), None);
    if streams.tty {
        let wait = tokio::time::sleep(FIRST_SIZE_WAIT);
        tokio::pin!(wait);
        while size.is_none() {
            tokio::select! {
                () = &mut wait => break,
                message = messages.next() => match message {
                    Some(Ok(message)) => match payload(&message) {
                        Some((RESIZE, data)) => size = terminal_size(data),
                        _ => early.push(message),
                    },
                    _ => return,
                },
            }
        }
    }
    let spawned = match control.spawn(options.command.clone(), streams).await {
        Ok(spawned) => spawned,
        Err(message) => {
            let _ = sink.send(frame(STATUS, internal_error(&message).to_string().as_bytes())).await;
            let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
            return;
        }
    };
    let Spawned { stdin, stdout, stderr, resize, mut exit, kill } = spawned;
    if let (Some(resize), Some((width, height))) = (&resize, size) {
        resize(width, height);
    }
    // One writer: the pumps hand it what they read, the session the end.
    let (outgoing, mut to_send) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = to_send.recv().await {
            let last = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || last {
                break;
            }
        }
    });
    let (exited, exit_seen) = watch::channel(false);
    let mut pumps = Vec::new();
    for (from, channel) in [(stdout, STDOUT), (stderr, STDERR)] {
        if let Some(from) = from {
            pumps.push(tokio::spawn(pump(from, channel, outgoing.clone(), exit_seen.clone())));
        }
    }
    // Input goes through a task of its own, so that a command that does not read it holds up
    // neither the client's other messages nor the pongs its pings want.
    let (input, mut to_write) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
    let writing = tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        while let Some(data) = to_write.recv().await {
            if stdin.write_all(&data).await.is_err() || stdin.flush().await.is_err() {
                return;
            }
        }
        // The client's input ended: on a terminal that is its end-of-file character.
        if streams.tty {
            let _ = stdin.write_all(&[EOT]).await;
            let _ = stdin.flush().await;
        }
    });
    let reading = tokio::spawn(async move {
        let mut input = Some(input).filter(|_| streams.stdin);
        let mut early = early.into_iter();
        loop {
            let message = match early.next() {
                Some(message) => message,
                None => match messages.next().await {
                    Some(Ok(message)) => message,
                    // The client went away.
                    _ => return,
                },
            };
            if matches!(message, Message::Close(_)) {
                return;
            }
            match payload(&message) {
                Some((STDIN, data)) => {
                    if let Some(sender) = &input
                        && sender.send(data.to_vec()).await.is_err()
                    {
                        input = None;
                    }
                }
                Some((RESIZE, data)) => {
                    if let (Some(resize), Some((width, height))) = (&resize, terminal_size(data)) {
                        resize(width, height);
                    }
                }
                // The client is done writing: the command reads the end of its input.
                Some((CLOSE, [STDIN])) if v5 => input = None,
                _ => {}
            }
        }
    });
    let mut reading = reading;
    let ended = tokio::select! {
        ended = &mut exit => Some(ended),
        _ = &mut reading => None,
    };
    let Some(ended) = ended else {
        // The client went away: so does the command, as with upstream's runtimes.
        kill();
        for task in pumps.iter().chain([&writer, &writing]) {
            task.abort();
        }
        return;
    };
    // What it wrote before it ended goes first, then how it ended, then the close.
    let _ = exited.send(true);
    for pump in pumps {
        let _ = pump.await;
    }
    let status = match ended {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        // Upstream's words; clients read the code from the cause, the Python client from the
        // first one.
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: command terminated with exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(message) => internal_error(&message),
    };
    let _ = outgoing.send(frame(STATUS, status.to_string().as_bytes())).await;
    let _ = outgoing.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    drop(outgoing);
    let _ = writer.await;
    reading.abort();
    writing.abort();
}

/// A message's channel and data. The Python client sends text frames, upstream takes both.
fn payload(message: &Message) -> Option<(u8, &[u8])> {
    let bytes: &[u8] = match message {
        Message::Binary(bytes) => bytes,
        Message::Text(text) => text.as_bytes(),
        _ => return None,
    };
    bytes.split_first().map(|(channel, data)| (*channel, data))
}

/// A resize message's size (`{"Width": 80, "Height": 24}`): columns, rows.
fn terminal_size(data: &[u8]) -> Option<(u16, u16)> {
    let size: Value = serde_json::from_slice(data).ok()?;
    let dimension = |key: &str| size[key].as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dimension("Width")?, dimension("Height")?))
}

/// A command that could not be run, as the kubelet reports it (kubectl prints the message and
/// exits 1).
fn internal_error(why: &str) -> Value {
    let message = format!("error executing command in container: {why}");
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

/// Copies `from` to the client on `channel` until it ends, or, once the command has
/// (`exited`), until it has been quiet for [`DRAIN_WAIT`]: a process the command left behind
/// may hold it open for good.
async fn pump(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    channel: u8,
    to: mpsc::Sender<Message>,
    mut exited: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 32 << 10];
    let mut draining = false;
    loop {
        let read = if draining {
            match tokio::time::timeout(DRAIN_WAIT, from.read(&mut buffer)).await {
                Ok(read) => read,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = exited.wait_for(|exited| *exited) => {
                    draining = true;
                    continue;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(frame(channel, &buffer[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_as_the_api_server_forwards_them() {
        let options = Options::parse(Some(
            "command=sh&command=-c&command=echo%20hi%3B%20exit%203&stdin=true&stdout=1&tty=true&stderr=true",
        ))
        .unwrap();
        assert_eq!(options.command, ["sh", "-c", "echo hi; exit 3"]);
        assert!(options.streams.stdin && options.streams.stdout && options.streams.tty);
        assert!(!options.streams.stderr, "a terminal has one stream");
        assert_eq!(
            Options::parse(Some("command=ls")).unwrap_err(),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
        assert!(Options::parse(Some("stdout=true")).is_err());
    }
}
