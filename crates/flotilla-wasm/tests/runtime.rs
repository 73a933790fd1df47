//! The runtime against the guest programs in `wasm-examples/`, built for both WASI targets.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_examples as examples;
use flotilla_wasm::{
    ContainerSpec, Exit, LoadError, Network, OutputSink, Pick, Preopen, ProgramKind, Protocol, Runtime, RuntimeConfig,
    Stream,
};

/// Output kept in memory, per stream.
#[derive(Default)]
struct Captured(Mutex<(Vec<u8>, Vec<u8>)>);

impl OutputSink for Captured {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut out = self.0.lock().unwrap();
        match stream {
            Stream::Stdout => out.0.extend_from_slice(bytes),
            Stream::Stderr => out.1.extend_from_slice(bytes),
        }
    }
}

impl Captured {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap().0).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap().1).into_owned()
    }
}

fn runtime(dir: &tempfile::TempDir) -> Runtime {
    let mut config = RuntimeConfig::new(dir.path().join("cache"));
    // Small pools: tests run side by side, each with its own engine.
    config.instance_slots = 8;
    Runtime::new(config).unwrap()
}

fn spec(name: &str, output: &Arc<Captured>) -> ContainerSpec {
    ContainerSpec {
        argv: vec![name.into()],
        env: Vec::new(),
        working_dir: None,
        dirs: Vec::new(),
        memory: flotilla_wasm::MemoryPool::new(None),
        cpu_time: flotilla_wasm::CpuTime::new(),
        requests: flotilla_wasm::Requests::new(),
        terminate: flotilla_wasm::Terminate::new(),
        cpu_limit: None,
        network: None,
        http_concurrency: None,
        output: output.clone(),
    }
}

/// A pod network on `pod_ip` that grants nothing else: no ports, no names, no Services.
fn network(pod_ip: &str) -> Network {
    Network {
        pod_ip: pod_ip.parse().unwrap(),
        namespace: false,
        ports: Vec::new(),
        egress: Default::default(),
        names: None,
        pod_network: None,
        frontends: None,
    }
}

async fn run(runtime: &Runtime, wasm: &str, spec: ContainerSpec) -> Exit {
    let program = runtime.load(&std::fs::read(wasm).unwrap()).unwrap();
    runtime.run(&program, spec).await
}

#[tokio::test]
async fn hello_runs_as_a_core_module_and_as_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    for (wasm, kind) in [(examples::P1_HELLO, ProgramKind::Core), (examples::P2_HELLO, ProgramKind::Command)] {
        let program = runtime.load(&std::fs::read(wasm).unwrap()).unwrap();
        assert_eq!(program.kind(), kind);
        assert!(program.digest().starts_with("sha256:") && program.digest().len() == 7 + 64);
        let output = Arc::new(Captured::default());
        assert_eq!(runtime.run(&program, spec("hello", &output)).await, Exit::Exited(0));
        assert_eq!(output.stdout(), "hello from a wasm pod\n");
    }
}

#[tokio::test]
async fn args_env_volumes_and_exit_code_reach_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let volume = tempfile::tempdir().unwrap();
    std::fs::write(volume.path().join("greeting.txt"), "hello from the host\n").unwrap();
    // `wasi:cli/exit` of WASI 0.2 carries success or failure only, so a component's `exit(3)`
    // ends with 1. The working directory is offered to components as
    // `wasi:cli/environment.initial-cwd` and to both as `PWD`; Rust's wasi-libc starts in `/`
    // whatever it is offered, so `cwd=` is not checked here.
    for (wasm, code) in [(examples::P1_ECHO, 3), (examples::P2_ECHO, 1)] {
        let output = Arc::new(Captured::default());
        let mut spec = spec("echo", &output);
        spec.argv.extend(["--flag".into(), "two words".into()]);
        spec.env = [("GREETING", "hi"), ("EXIT_CODE", "3"), ("LIST_DIR", "/data"), ("WRITE_TO", "/data")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        spec.dirs = vec![Preopen {
            dir: Arc::new(std::fs::File::open(volume.path()).unwrap()),
            guest: "/data".into(),
            read_only: true,
        }];
        spec.working_dir = Some("/data".into());
        assert_eq!(run(&runtime, wasm, spec).await, Exit::Exited(code), "{wasm}");
        let stdout = output.stdout();
        for line in [
            "arg[0]=echo",
            "arg[1]=--flag",
            "arg[2]=two words",
            "env GREETING=hi",
            "env PWD=/data",
            "file /data/greeting.txt=hello from the host",
        ] {
            assert!(stdout.lines().any(|l| l == line), "{line:?} missing from {wasm}:\n{stdout}");
        }
        // Deny by default: the host's environment is not visible, a read-only volume stays so.
        assert!(!stdout.contains("env PATH="), "{stdout}");
        assert!(stdout.contains("could not write /data/written.txt"), "{stdout}");
        assert!(!volume.path().join("written.txt").exists());
        assert_eq!(output.stderr(), "done\n");
    }
}

#[tokio::test]
async fn a_trap_is_reported_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    for wasm in [examples::P1_TRAP, examples::P2_TRAP] {
        let output = Arc::new(Captured::default());
        let exit = run(&runtime, wasm, spec("trap", &output)).await;
        let Exit::Trapped { message } = &exit else { panic!("{wasm} ended {exit:?}") };
        assert!(message.contains("unreachable"), "{message}");
        assert_eq!(exit.code(), 134);
        assert_eq!(output.stdout(), "about to trap\n");
    }
}

#[tokio::test]
async fn a_guest_past_its_memory_limit_is_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    for wasm in [examples::P1_HOG, examples::P2_HOG] {
        let output = Arc::new(Captured::default());
        let mut spec = spec("hog", &output);
        spec.memory = flotilla_wasm::MemoryPool::new(Some(64 << 20));
        let exit = run(&runtime, wasm, spec).await;
        let Exit::OutOfMemory { message } = &exit else { panic!("{wasm} ended {exit:?}") };
        assert!(message.contains("memory limit exceeded"), "{message}");
        assert_eq!(exit.code(), 137);
        let held: Vec<_> = output.stdout().lines().map(String::from).collect();
        // 64 MiB in 8 MiB chunks, less what the guest had before its first chunk.
        assert!((4..8).contains(&held.len()), "{held:?}");
    }
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_dropping_its_future() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let output = Arc::new(Captured::default());
    let program = runtime.load(&std::fs::read(examples::P1_SPIN).unwrap()).unwrap();
    // The loop makes no host call: only an epoch yield lets the timeout fire.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_millis(300), runtime.run(&program, spec("spin", &output))).await;
    assert!(ended.is_err(), "the loop ended by itself: {ended:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "stopping took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_container_is_charged_the_cpu_time_it_computes_and_not_the_time_it_sleeps() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let output = Arc::new(Captured::default());
    let run_for = |name: &'static str, path: &str| {
        let program = runtime.load(&std::fs::read(path).unwrap()).unwrap();
        let mut spec = spec(name, &output);
        spec.env = vec![("TICK_MS".into(), "50".into())];
        let cpu_time = spec.cpu_time.clone();
        let runtime = &runtime;
        async move {
            let started = Instant::now();
            let _ = tokio::time::timeout(Duration::from_millis(400), runtime.run(&program, spec)).await;
            (cpu_time.used(), started.elapsed())
        }
    };
    // A loop that never calls the host computes all the time it is given; a guest that sleeps
    // between ticks, next to nothing.
    let (spun, spin_took) = run_for("spin", examples::P1_SPIN).await;
    assert!(spun >= Duration::from_millis(20) && spun <= spin_took, "{spun:?} of {spin_took:?}");
    let (ticked, _) = run_for("ticker", examples::P1_TICKER).await;
    assert!(ticked < Duration::from_millis(50), "{ticked:?}");
    assert!(output.stdout().contains("tick 1"), "{}", output.stdout());
}

#[tokio::test]
async fn bad_modules_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    assert!(matches!(runtime.load(b"#!/bin/sh\necho hi\n"), Err(LoadError::NotWasm)));
    let mut truncated = std::fs::read(examples::P1_HELLO).unwrap();
    truncated.truncate(truncated.len() / 2);
    let err = runtime.load(&truncated).unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
    // A module importing a function no node provides.
    let unlinkable = [
        &b"\0asm\x01\0\0\0"[..],
        // type section: one type () -> ()
        &[0x01, 0x04, 0x01, 0x60, 0x00, 0x00],
        // import section: "env" "missing" func type 0
        &[0x02, 0x0f, 0x01, 0x03, b'e', b'n', b'v', 0x07, b'm', b'i', b's', b's', b'i', b'n', b'g', 0x00, 0x00],
        // export section: "_start" func 0
        &[0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00],
    ]
    .concat();
    let err = runtime.load(&unlinkable).unwrap_err();
    assert!(matches!(err, LoadError::Unlinkable(_)) && err.to_string().contains("env::missing"), "{err}");
}

#[tokio::test]
async fn compiled_modules_are_reused_from_the_cache_across_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(examples::P1_ECHO).unwrap();
    let digest = runtime(&dir).load(&wasm).unwrap().digest().to_string();
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].to_string_lossy().starts_with(&digest["sha256:".len()..]));
    // A corrupt cache entry is discarded and the module compiled again.
    let path = dir.path().join("cache").join(&cached[0]);
    std::fs::write(&path, b"garbage").unwrap();
    let output = Arc::new(Captured::default());
    assert_eq!(run(&runtime(&dir), examples::P1_ECHO, spec("echo", &output)).await, Exit::Exited(0));
    assert!(std::fs::read(&path).unwrap().len() > 1000);
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` from 127.0.0.1:`port`, retried while the server comes up.
async fn get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..100 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            return response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on port {port}");
}

#[tokio::test]
async fn servers_listen_on_the_pods_address_as_p1_modules_and_p2_components() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = std::sync::Arc::new(runtime(&dir));
    for wasm in [examples::P1_HTTP, examples::P2_HTTP] {
        let port = free_port();
        let output = Arc::new(Captured::default());
        let mut spec = spec("http", &output);
        spec.env = vec![
            ("HOSTNAME".into(), "web-0".into()),
            ("POD_IP".into(), "127.0.0.1".into()),
            ("PORT".into(), port.to_string()),
        ];
        spec.network = Some(Network { ports: vec![port], ..network("127.0.0.1") });
        let program = runtime.load(&std::fs::read(wasm).unwrap()).unwrap();
        let running = {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.run(&program, spec).await })
        };
        // A p1 module's port is listening before it even starts: the node opened it.
        for path in ["/one", "/two"] {
            let response = get(port, path).await;
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{wasm}: {response}");
            assert!(response.ends_with(&format!("hello from web-0 at {path}\n")), "{wasm}: {response}");
        }
        running.abort();
        assert!(output.stdout().contains("GET /two"), "{wasm}: {}", output.stdout());
    }
}

#[tokio::test]
async fn a_component_may_bind_only_its_pods_address_and_a_module_without_ports_has_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let output = Arc::new(Captured::default());
    let mut bind_elsewhere = spec("http", &output);
    bind_elsewhere.env = vec![("POD_IP".into(), "127.0.0.1".into()), ("PORT".into(), free_port().to_string())];
    bind_elsewhere.network = Some(network("127.9.9.9"));
    assert_eq!(run(&runtime, examples::P2_HTTP, bind_elsewhere).await, Exit::Exited(1));
    assert!(output.stderr().starts_with("cannot listen"), "{}", output.stderr());

    let output = Arc::new(Captured::default());
    assert_eq!(run(&runtime, examples::P1_HTTP, spec("http", &output)).await, Exit::Exited(1));
    assert_eq!(output.stderr(), "cannot listen: no pre-opened socket: declare a containerPort\n");
}

#[tokio::test]
async fn a_wasi_http_component_is_served_with_an_instance_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = std::sync::Arc::new(runtime(&dir));
    let program = runtime.load(&std::fs::read(examples::P2_HANDLER).unwrap()).unwrap();
    assert_eq!(program.kind(), ProgramKind::HttpHandler);
    let port = free_port();
    let output = Arc::new(Captured::default());
    let mut served = spec("handler", &output);
    served.env = vec![("HOSTNAME".into(), "fn-0".into())];
    served.network = Some(Network { ports: vec![port], ..network("127.0.0.1") });
    let serving = {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.run(&program, served).await })
    };
    // Every request meets a fresh instance: none outlives its request.
    for path in ["/a", "/b?x=1"] {
        let response = get(port, path).await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        // (The body comes chunked: it is streamed from the instance.)
        assert!(response.contains(&format!("hello from fn-0 at {path} (request 1 of this instance)\n")), "{response}");
    }
    assert_eq!(output.stdout(), "handling /a\nhandling /b?x=1\n");
    serving.abort();
    assert!(serving.await.unwrap_err().is_cancelled());

    // Without a port there is nothing to serve on.
    let program = runtime.load(&std::fs::read(examples::P2_HANDLER).unwrap()).unwrap();
    let exit = runtime.run(&program, spec("handler", &output)).await;
    assert!(matches!(&exit, Exit::Failed { message } if message.contains("pod's address")), "{exit:?}");
}

#[tokio::test]
async fn a_component_cannot_connect_to_the_nodes_own_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    // Two listeners on the host: one the node protects (as it does its store's peer port),
    // one it does not.
    let protected = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap();
    let _keep = (std::net::TcpListener::bind(protected).unwrap(), open);
    let output = Arc::new(Captured::default());
    let mut spec = spec("escape", &output);
    let targets = format!("{protected},0.0.0.0:{},{open_addr}", protected.port());
    spec.env = vec![("MODE".into(), "connect".into()), ("TARGETS".into(), targets)];
    spec.network =
        Some(Network { egress: Arc::new(flotilla_wasm::Egress::protecting(vec![protected])), ..network("127.0.0.1") });
    assert_eq!(run(&runtime, examples::P2_ESCAPE, spec).await, Exit::Exited(0));
    let out = output.stdout();
    assert!(out.contains(&format!("connect {protected}: error")), "{out}");
    assert!(out.contains(&format!("connect 0.0.0.0:{}: error", protected.port())), "{out}");
    assert!(out.contains(&format!("connect {open_addr}: ok")), "{out}");
}

/// A server on `at` that answers each HTTP request with `text` (its whole request read first,
/// so that closing does not reset the connection under the answer): its address.
fn answering(at: &str, text: &'static str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind(at).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{text}\n").as_bytes());
        }
    });
    addr
}

#[tokio::test]
async fn localhost_is_the_pod_itself_and_never_the_hosts_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    // Another container of the pod, on the pod's address; and a host service on 127.0.0.1.
    let sibling = answering("127.0.0.55:0", "from the pod");
    let host = answering("127.0.0.1:0", "from the host");
    let output = Arc::new(Captured::default());
    let mut spec = spec("escape", &output);
    let port = sibling.port();
    let targets = format!("localhost:{port},127.0.0.1:{port},0.0.0.0:{port},[::1]:{port},127.0.0.1:{}", host.port());
    spec.env = vec![("MODE".into(), "connect".into()), ("TARGETS".into(), targets), ("GET".into(), "/".into())];
    spec.network = Some(network("127.0.0.55"));
    assert_eq!(run(&runtime, examples::P2_ESCAPE, spec).await, Exit::Exited(0));
    let out = output.stdout();
    for reached in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        assert!(out.contains(&format!("connect {reached}: ok from the pod")), "{reached}: {out}");
    }
    assert!(out.contains(&format!("connect [::1]:{port}: error")), "{out}");
    assert!(out.contains(&format!("connect 127.0.0.1:{}: error", host.port())), "the host's service: {out}");
    assert!(!out.contains("from the host"), "{out}");
}

/// The cluster as the node knows it: a few names and Service frontends.
#[derive(Debug)]
struct Cluster {
    names: std::collections::HashMap<&'static str, Vec<std::net::IpAddr>>,
    frontends: std::collections::HashMap<(Protocol, std::net::SocketAddr), Pick>,
}

impl flotilla_wasm::Names for Cluster {
    fn resolve(&self, name: &str) -> Option<Vec<std::net::IpAddr>> {
        self.names.get(name).cloned()
    }
}

impl flotilla_wasm::Frontends for Cluster {
    fn pick(&self, protocol: Protocol, to: std::net::SocketAddr, _client: std::net::IpAddr) -> Option<Pick> {
        self.frontends.get(&(protocol, to)).copied()
    }
}

#[tokio::test]
async fn a_components_sockets_resolve_service_names_and_frontends_in_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    // The one endpoint: nothing listens on the frontends themselves, so an answer proves the
    // connection went straight to it.
    let endpoint_addr = answering("127.0.0.1:0", "from the endpoint");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_endpoint = udp.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0; 1500];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(b"from the udp endpoint", from);
        }
    });
    let protected = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let protected_addr = protected.local_addr().unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let cluster = Arc::new(Cluster {
        names: [("web", vec![ip("127.43.0.9")]), ("empty", vec![ip("127.43.0.10")]), ("gone", vec![])].into(),
        frontends: [
            ((Protocol::Tcp, at("127.43.0.9:80")), Pick::Endpoint(endpoint_addr)),
            ((Protocol::Tcp, at("127.43.0.10:80")), Pick::Refused),
            // What a Service could not get past the node's guard, but the runtime checks anyway.
            ((Protocol::Tcp, at("127.43.0.11:80")), Pick::Endpoint(protected_addr)),
            ((Protocol::Udp, at("127.43.0.9:53")), Pick::Endpoint(udp_endpoint)),
            ((Protocol::Udp, at("127.43.0.10:53")), Pick::Refused),
        ]
        .into(),
    });
    let output = Arc::new(Captured::default());
    let mut spec = spec("escape", &output);
    let targets = "web:80,127.43.0.9:80,empty:80,gone:80,127.43.0.11:80,udp:web:53,udp:127.43.0.10:53";
    spec.env = vec![("MODE".into(), "connect".into()), ("TARGETS".into(), targets.into()), ("GET".into(), "/".into())];
    spec.network = Some(Network {
        egress: Arc::new(flotilla_wasm::Egress::protecting(vec![protected_addr])),
        names: Some(cluster.clone()),
        frontends: Some(cluster),
        ..network("127.0.0.1")
    });
    assert_eq!(run(&runtime, examples::P2_ESCAPE, spec).await, Exit::Exited(0));
    let out = output.stdout();
    for reached in ["web:80", "127.43.0.9:80"] {
        assert!(out.contains(&format!("connect {reached}: ok from the endpoint")), "{reached}: {out}");
    }
    let refused = out.lines().find(|l| l.starts_with("connect empty:80")).unwrap_or_default();
    assert!(refused.contains("error") && refused.contains("refused"), "{out}");
    // A UDP socket connected to a Service's frontend talks to its endpoint; one without any is
    // refused.
    assert!(out.contains("connect udp:web:53: ok from the udp endpoint"), "{out}");
    let refused = out.lines().find(|l| l.starts_with("connect udp:127.43.0.10:53")).unwrap_or_default();
    assert!(refused.contains("error") && refused.contains("refused"), "{out}");
    assert!(out.contains("connect gone:80: error"), "{out}");
    assert!(out.contains("connect 127.43.0.11:80: error"), "{out}");
    drop(protected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_meets_the_functions_concurrency_and_memory_limits() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = std::sync::Arc::new(runtime(&dir));
    let program = runtime.load(&std::fs::read(examples::P2_HANDLER).unwrap()).unwrap();
    let port = free_port();
    let output = Arc::new(Captured::default());
    let mut served = spec("handler", &output);
    served.network = Some(Network { ports: vec![port], ..network("127.0.0.1") });
    served.http_concurrency = Some(2);
    served.memory = flotilla_wasm::MemoryPool::new(Some(48 << 20));
    let serving = {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.run(&program, served).await })
    };
    get(port, "/warm").await;

    // 40 slow requests at once: two run, four wait, and the rest are turned away at once with
    // a hint to retry; none is left hanging.
    let started = std::time::Instant::now();
    let answers =
        futures::future::join_all((0..40).map(|i| async move { get(port, &format!("/slow/{i}?sleep_ms=300")).await }))
            .await;
    let ok = answers.iter().filter(|a| a.starts_with("HTTP/1.1 200")).count();
    let busy: Vec<_> = answers.iter().filter(|a| a.starts_with("HTTP/1.1 503")).collect();
    assert_eq!(ok + busy.len(), 40, "{answers:?}");
    assert!((2..=8).contains(&ok), "{ok} served: two at once, for at most the queue's wait");
    assert!(busy.iter().all(|a| a.contains("retry-after: 1") && a.contains("the function is busy")), "{busy:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "a request was left hanging");

    // The container's 48 MiB bound its instances together: two asking 30 MiB each cannot both
    // have it, and the one refused says why.
    let answers =
        futures::future::join_all((0..2).map(|_| async move { get(port, "/big?alloc_mb=30&sleep_ms=500").await }))
            .await;
    let ok = answers.iter().filter(|a| a.starts_with("HTTP/1.1 200")).count();
    assert_eq!(ok, 1, "{answers:?}");
    assert!(answers.iter().any(|a| a.starts_with("HTTP/1.1 500") && a.contains("out of memory")), "{answers:?}");
    // And what they held came back: one more fits now.
    assert!(get(port, "/big?alloc_mb=30").await.starts_with("HTTP/1.1 200"));
    serving.abort();
}
