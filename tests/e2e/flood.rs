//! A flood of requests to a function: `hey` with 200 connections against a `wasi:http` handler
//! whose pod allows 4 requests at once. The excess is turned away with 503 and `Retry-After`,
//! and meanwhile a neighbour pod answers and the node reports as ever.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::pods::{apply, import, node_name, pod, wait_for};

/// `GET http://ip:port/path` over plain HTTP/1.1; the status line.
fn status_of(ip: &str, port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((ip, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.lines().next().unwrap_or_default().to_string())
}

#[test]
fn a_flood_to_one_function_leaves_the_node_and_its_neighbours_unharmed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    import(dir.path(), examples::P2_HANDLER, "handler:v1")?;
    import(dir.path(), examples::P1_HTTP, "http:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    let port = "    ports:\n    - containerPort: 8080\n    resources:\n      limits: {memory: 64Mi}\n";
    let function = pod("function", &node, "handler:v1", "Always", port, "").replace(
        "metadata:\n  name: function\n",
        "metadata:\n  name: function\n  annotations:\n    http.flotilla.dev/max-concurrency: \"4\"\n",
    );
    apply(&k, &function)?;
    apply(&k, &pod("neighbour", &node, "http:v1", "Always", "    ports:\n    - containerPort: 8080\n", ""))?;
    for name in ["function", "neighbour"] {
        wait_for(&k, name, "{.status.phase}", 30, |p| p == "Running")?;
    }
    let ip = |name: &str| k.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
    let (function_ip, neighbour_ip) = (ip("function")?, ip("neighbour")?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&function_ip, 8080, "/").map_or(true, |s| !s.contains("200")) {
        ensure!(Instant::now() < deadline, "the function never answered");
        std::thread::sleep(Duration::from_millis(100));
    }

    let hey = std::thread::spawn(move || {
        Command::new("hey")
            .args(["-c", "200", "-z", "6s", "-t", "20"])
            .arg(format!("http://{function_ip}:8080/flood?sleep_ms=50&alloc_mb=4"))
            .output()
    });
    // While it lasts: the neighbour answers, the API and the node are as ever.
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        let neighbour = status_of(&neighbour_ip, 8080, "/")?;
        ensure!(neighbour.contains("200"), "the neighbour did not answer during the flood: {neighbour}");
        let ready =
            k.ok(&["get", "node", &node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])?;
        ensure!(ready == "True", "the node is {ready} during the flood");
        std::thread::sleep(Duration::from_millis(700));
    }
    let out = hey.join().expect("hey's thread").context("run hey (scripts/test installs it)")?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "hey failed: {report}");
    ensure!(report.contains("[200]"), "no request was served: {report}");
    ensure!(report.contains("[503]"), "the excess was not turned away: {report}");
    ensure!(!report.contains("Error distribution"), "requests failed or hung: {report}");
    // The function is still there, and serves once the flood is over.
    ensure!(status_of(&ip("function")?, 8080, "/")?.contains("200"));
    let restarts = k.ok(&["get", "pod", "function", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])?;
    ensure!(restarts == "0", "the function restarted {restarts} times");
    Ok(())
}
