//! A guest written to escape its volumes, for the node's adversarial tests. Every attempt is
//! printed as one line, `<verb> <path>: ok ...` or `<verb> <path>: error ...`, so that a test
//! reads from the log what the guest could and could not do.
//!
//! - `MODE=plant`: in `$DIR`, creates each link of `LINKS` (`name=target,...`) in place of
//!   whatever has that name, a regular file
//!   `file`, a directory `real`, and hard-links each pair of `HARD_LINKS` (`from=to,...`).
//! - `MODE=probe`: reads each path of `PATHS` (comma-separated) and writes `owned` over it.
//! - `MODE=connect`: opens a TCP connection to each address of `TARGETS` (comma-separated,
//!   `host:port`, a name looked up as the guest's resolver answers it); with `GET=PATH`, asks
//!   each for `PATH` over HTTP/1.0 and prints the answer's last line. A target `udp:host:port`
//!   is a UDP socket connected there instead, which sends `hello` and prints the answer.
//! - `MODE=swap`: renames `$DIR/dir` and a link `$DIR/link` (to `LINK_TARGET`) in and out of
//!   each other's place without end, to race whoever resolves `$DIR/dir`.
//!
//! It exits 0 whatever happened: whether an attempt may succeed is the test's to judge.

use std::path::Path;

fn pairs(var: &str) -> Vec<(String, String)> {
    let value = std::env::var(var).unwrap_or_default();
    value
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn report(verb: &str, path: &str, result: std::io::Result<String>) {
    match result {
        Ok(detail) => println!("{verb} {path}: ok {detail}"),
        Err(err) => println!("{verb} {path}: error {err}"),
    }
}

#[allow(deprecated)] // `soft_link` is std's one portable way to make a symlink on WASI.
fn symlink(target: &str, link: &Path) -> std::io::Result<()> {
    std::fs::soft_link(target, link)
}

/// With a path, the last line of the answer to `GET path` on `stream`.
fn ask(mut stream: std::net::TcpStream, path: Option<&str>) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let Some(path) = path else { return Ok(String::new()) };
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: escape\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.trim_end().lines().last().unwrap_or_default().to_string())
}

/// The answer to `hello` from `target` over a connected UDP socket, within a second.
fn datagram(target: &str) -> std::io::Result<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(target)?;
    // Polled: WASI sockets take no receive timeout.
    socket.set_nonblocking(true)?;
    socket.send(b"hello")?;
    let mut answer = [0; 1500];
    for _ in 0..100 {
        match socket.recv(&mut answer) {
            Ok(n) => return Ok(String::from_utf8_lossy(&answer[..n]).trim_end().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::ErrorKind::TimedOut.into())
}

fn main() {
    let dir = std::env::var("DIR").unwrap_or_else(|_| "/scratch".into());
    let dir = Path::new(&dir);
    match std::env::var("MODE").as_deref() {
        Ok("plant") => {
            for (name, target) in pairs("LINKS") {
                let link = dir.join(&name);
                let _ = std::fs::remove_file(&link);
                report("symlink", &link.display().to_string(), symlink(&target, &link).map(|()| target));
            }
            report("create", "file", std::fs::write(dir.join("file"), "a file").map(|()| String::new()));
            report("mkdir", "real", std::fs::create_dir_all(dir.join("real")).map(|()| String::new()));
            for (from, to) in pairs("HARD_LINKS") {
                report("hardlink", &format!("{from} -> {to}"), std::fs::hard_link(&from, &to).map(|()| String::new()));
            }
        }
        Ok("probe") => {
            let paths = std::env::var("PATHS").unwrap_or_default();
            for path in paths.split(',').filter(|p| !p.is_empty()) {
                report("read", path, std::fs::read_to_string(path).map(|s| format!("{:?}", s.trim())));
                report("write", path, std::fs::write(path, "owned").map(|()| String::new()));
            }
        }
        Ok("connect") => {
            let targets = std::env::var("TARGETS").unwrap_or_default();
            let get = std::env::var("GET").ok();
            for target in targets.split(',').filter(|t| !t.is_empty()) {
                if let Some(udp) = target.strip_prefix("udp:") {
                    report("connect", target, datagram(udp));
                    continue;
                }
                let connected = std::net::TcpStream::connect(target);
                report("connect", target, connected.and_then(|stream| ask(stream, get.as_deref())));
            }
        }
        Ok("swap") => {
            let target = std::env::var("LINK_TARGET").unwrap_or_else(|_| "../../../../../../../..".into());
            let (real, link, aside) = (dir.join("dir"), dir.join("link"), dir.join("aside"));
            let _ = std::fs::create_dir_all(&real);
            let _ = symlink(&target, &link);
            println!("swapping {} and {}", real.display(), link.display());
            loop {
                let _ = std::fs::rename(&real, &aside);
                let _ = std::fs::rename(&link, &real);
                let _ = std::fs::rename(&real, &link);
                let _ = std::fs::rename(&aside, &real);
            }
        }
        other => {
            eprintln!("MODE must be plant, probe, connect or swap, not {other:?}");
            std::process::exit(2);
        }
    }
}
