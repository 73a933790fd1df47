//! A small HTTP/1.1 server: answers every request with `hello from <HOSTNAME> at <path>`, but
//! `/peer` with the address the connection came from (where the socket layer says: a p2
//! component's does), and prints each request it serves. With `PROTOCOL=udp` (p2 only) it
//! answers datagrams on `$POD_IP:$PORT` instead, each with `hello from <HOSTNAME> over udp`. As a WASI p1 module it accepts on the socket the node
//! pre-opened for its declared `containerPort` (fd 3, `LISTEN_FDS`); as a p2 component it binds
//! `$POD_IP:$PORT` (default port 8080) itself through `wasi:sockets`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn listener() -> std::io::Result<TcpListener> {
    #[cfg(target_env = "p1")]
    {
        use std::os::wasi::io::FromRawFd;
        if std::env::var("LISTEN_FDS").map_or(true, |n| n == "0") {
            return Err(std::io::Error::other("no pre-opened socket: declare a containerPort"));
        }
        // SAFETY: fd 3 is the listening socket the host pre-opened; LISTEN_FDS says it exists.
        Ok(unsafe { TcpListener::from_raw_fd(3) })
    }
    #[cfg(not(target_env = "p1"))]
    {
        let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
        let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
        TcpListener::bind(format!("{ip}:{port}"))
    }
}

fn serve(mut stream: TcpStream, hostname: &str) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    println!("GET {path}");
    let body = match path.as_str() {
        "/peer" => match stream.peer_addr() {
            Ok(peer) => format!("{peer}\n"),
            Err(err) => format!("peer unknown: {err}\n"),
        },
        _ => format!("hello from {hostname} at {path}\n"),
    };
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Answers every datagram on `$POD_IP:$PORT`.
fn serve_udp(hostname: &str) -> std::io::Result<()> {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let socket = std::net::UdpSocket::bind(format!("{ip}:{port}"))?;
    println!("listening on udp");
    let mut buf = [0u8; 1500];
    loop {
        let (_, from) = socket.recv_from(&mut buf)?;
        socket.send_to(format!("hello from {hostname} over udp\n").as_bytes(), from)?;
    }
}

fn main() {
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "wasm".into());
    if std::env::var("PROTOCOL").is_ok_and(|p| p == "udp") {
        if let Err(err) = serve_udp(&hostname) {
            eprintln!("serving udp: {err}");
            std::process::exit(1);
        }
    }
    let listener = match listener() {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cannot listen: {err}");
            std::process::exit(1);
        }
    };
    println!("listening");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(err) = serve(stream, &hostname) {
                    eprintln!("serving a request: {err}");
                }
            }
            Err(err) => eprintln!("accepting: {err}"),
        }
    }
}
