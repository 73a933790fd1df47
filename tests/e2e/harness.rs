//! Starting and stopping `flotilla` processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The hard eviction thresholds of the tests' nodes: the kubelet's for memory, and disk
/// pressure only below 1 GiB free. The suite runs on machines whose one large disk is shared and
/// often nine tenths full, where a share of it (the default's 5%) would keep every pod off a
/// test's node; `pressure.rs` sets its own.
pub(crate) const EVICTION_HARD: [&str; 2] = ["--eviction-hard", "memory.available<100Mi,nodefs.available<1Gi"];

/// The `flotilla` binary next to this test's build: `FLOTILLA_BIN` when set, else
/// `target/<profile>/flotilla`.
pub(crate) fn flotilla_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOTILLA_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/flotilla
    let bin = exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps").join("flotilla");
    assert!(bin.exists(), "{} is missing: build it first with `cargo build --bin flotilla`", bin.display());
    bin
}

/// A free port on 127.0.0.1 (free when asked; the server binds it right after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Where a server listens: the Kubernetes API and the store's peer API; and the addresses of
/// its cluster, kept across restarts as a node's are: its node's address and pod range, and its
/// service range. Each server of a test process gets its own, all in 127.0.0.0/8, so servers
/// that run side by side never share a pod address, a cluster IP or a node port (the proxies
/// of one host's nodes share their frontends, by design, within a cluster).
#[derive(Clone, Debug)]
pub(crate) struct Ports {
    pub(crate) api: u16,
    pub(crate) peer: u16,
    pub(crate) pods: String,
    pub(crate) services: String,
    pub(crate) node_ip: String,
}

impl Ports {
    pub(crate) fn free() -> Ports {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (high, low) = (n / 256 % 50, n % 256);
        Ports {
            api: free_port(),
            peer: free_port(),
            pods: format!("127.{}.{low}.0/24", 100 + high),
            services: format!("127.{}.{low}.0/24", 150 + high),
            node_ip: format!("127.{}.{low}.1", 200 + high),
        }
    }
}

/// How a test calls a server's store as the member whose data directory is `data_dir` (the
/// peer API answers members only).
pub(crate) fn store_tls(data_dir: &Path) -> Result<rustls::ClientConfig> {
    Ok(flotilla_auth::pki::StoreMember::load(&data_dir.join("pki"))?.client_config()?)
}

/// A running `flotilla server`; killed (SIGKILL) when dropped.
pub(crate) struct Server {
    child: Child,
    /// The store member's peer URL.
    pub(crate) store_url: String,
    /// The admin kubeconfig, from the line the server prints when it is ready.
    pub(crate) kubeconfig: PathBuf,
    /// The Kubernetes API's URL.
    pub(crate) url: String,
}

impl Server {
    /// Starts `flotilla server` on `data_dir` and waits for its ready line.
    pub(crate) fn start(data_dir: &Path, ports: Ports) -> Result<Server> {
        Server::start_with(data_dir, ports, &[])
    }

    /// As [`Server::start`], with more arguments for `flotilla server`.
    pub(crate) fn start_with(data_dir: &Path, ports: Ports, extra: &[&str]) -> Result<Server> {
        let mut command = Command::new(flotilla_bin());
        command
            .args(["server", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", ports.api)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", ports.peer)])
            // The embedded node: its API on a free port of its own address.
            .args(["--node-ip", &ports.node_ip, "--node-listen", &format!("{}:0", ports.node_ip)])
            .args(["--pod-cidr", &ports.pods, "--service-cidr", &ports.services])
            // Servers side by side on this machine relay in userspace: with nftables they would
            // share the network namespace's one table (tests/e2e/hosts.rs runs nftables, each
            // host in a namespace of its own).
            .args(["--proxy-mode", "userspace"])
            .args(extra);
        if !extra.contains(&EVICTION_HARD[0]) {
            command.args(EVICTION_HARD);
        }
        Server::spawn(command, &format!("127.0.0.1:{}", ports.api), &format!("127.0.0.1:{}", ports.peer))
    }

    /// Runs `command`, a `flotilla server` whose API listens on `api` and store on `peer`, and
    /// waits for its ready line.
    pub(crate) fn spawn(mut command: Command, api: &str, peer: &str) -> Result<Server> {
        let mut child = command
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start flotilla server")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let line = match ready.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                bail!("flotilla server printed no ready line within 30 s (status: {:?})", child.try_wait());
            }
        };
        let kubeconfig = line
            .strip_prefix("kubeconfig: ")
            .map(PathBuf::from)
            .with_context(|| format!("unexpected ready line {line:?}"))?;
        Ok(Server { child, store_url: format!("https://{peer}"), kubeconfig, url: format!("https://{api}") })
    }

    /// Kills the process without letting it shut down: what a power cut or the OOM killer does.
    pub(crate) fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
