//! Processes under measurement: started with their output captured, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The hard eviction thresholds of the benchmarks' nodes: the kubelet's for memory, and disk
/// pressure only below 1 GiB free. They run on machines whose one large disk is shared and often
/// nine tenths full, where a share of it (the default's 5%) would keep every pod off the node.
pub const EVICTION_HARD: [&str; 2] = ["--eviction-hard", "memory.available<100Mi,nodefs.available<1Gi"];

/// The release `flotilla` binary: `FLOTILLA_BIN`, else `target/release/flotilla` beside this benchmark.
pub fn flotilla_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLOTILLA_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let bin =
        exe.parent().and_then(Path::parent).context("benchmark runs from target/<profile>/deps")?.join("flotilla");
    if !bin.exists() {
        bail!("{} is missing: build it with `cargo build --release --bin flotilla`", bin.display());
    }
    Ok(bin)
}

/// The resident memory of the process `pid` now (`VmRSS`) and at its peak (`VmHWM`), in MiB.
pub fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    Ok((status_mib(pid, "VmRSS:")?, status_mib(pid, "VmHWM:")?))
}

/// A memory field of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, …), in MiB.
pub fn status_mib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    let kib: f64 = line.trim_start_matches(field).trim().trim_end_matches("kB").trim().parse()?;
    Ok(kib / 1024.0)
}

/// A free TCP port on 127.0.0.1 (free when asked; taken by whoever binds it first).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `command` with stdout captured line by line (stderr discarded unless `BENCH_VERBOSE`).
    pub fn spawn(command: &mut Command) -> Result<Running> {
        let stderr = if std::env::var_os("BENCH_VERBOSE").is_some() { Stdio::inherit() } else { Stdio::null() };
        let mut child =
            command.stdout(Stdio::piped()).stderr(stderr).spawn().with_context(|| format!("start {command:?}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Running { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now (`VmRSS`) and at its peak (`VmHWM`), in MiB.
    pub fn memory_mib(&self) -> Result<(f64, f64)> {
        memory_mib(self.pid())
    }

    /// A process this one started whose command line has the argument `arg`, if one runs.
    pub fn child_with_arg(&self, arg: &str) -> Option<u32> {
        let children = std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok());
        children.into_iter().find(|pid: &u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`: the parent is the second field after the command.
            let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parent == Some(self.pid()) && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        })
    }

    /// CPU time the process has used so far, user and system, all threads.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid())
    }

    /// Waits for a line of output that satisfies `ready`.
    pub fn wait_for_line(&mut self, timeout: Duration, ready: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if ready(&line) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no ready line within {timeout:?} (exit status: {:?})", self.child.try_wait()?),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time process `pid` has used so far (`utime + stime` of `/proc/<pid>/stat`), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    /// `USER_HZ`, the unit of those fields: 100 on every Linux ABI a benchmark runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields counted here follow its `)`.
    let rest = stat.rsplit_once(')').context("malformed /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15, the 12th and 13th after the command name.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// A control plane and one node, as separate processes so that each one's memory is its own:
/// a `flotilla server --no-node` and a `flotilla agent` joined to it, both on loopback.
#[derive(Debug)]
pub struct Cluster {
    pub server: Running,
    pub agent: Running,
    pub api: crate::kube_api::Api,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// How a benchmark's [`Cluster`] is laid out.
#[derive(Debug, Clone)]
pub struct ClusterConfig<'a> {
    pub node: &'a str,
    /// The node's address (`None`: 127.0.0.1), its pod range, and the service range.
    pub node_ip: Option<&'a str>,
    pub pod_cidr: &'a str,
    pub service_cidr: Option<&'a str>,
    pub max_pods: Option<usize>,
    /// Modules imported into the node's image store: `(path, name)`.
    pub images: &'a [(&'a str, &'a str)],
    /// The agent's `--proxy-mode`; `None` relays in userspace, since nftables would program the
    /// network namespace's one table, which is the machine's unless the benchmark runs in one
    /// of its own.
    pub proxy_mode: Option<&'a str>,
    /// More arguments for the server (`--metrics-resolution 1s`).
    pub server_args: &'a [&'a str],
}

impl Cluster {
    pub fn start(config: &ClusterConfig<'_>) -> Result<Cluster> {
        let (server_dir, agent_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let listen = format!("127.0.0.1:{}", free_port()?);
        let mut command = Command::new(flotilla_bin()?);
        command.args(["server", "--no-node", "--data-dir"]).arg(server_dir.path()).args([
            "--listen",
            &listen,
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port()?),
        ]);
        if let Some(cidr) = config.service_cidr {
            command.args(["--service-cidr", cidr]);
        }
        command.args(config.server_args);
        let mut server = Running::spawn(&mut command)?;
        let line = server.wait_for_line(Duration::from_secs(30), |l| l.starts_with("kubeconfig: "))?;
        let api = crate::kube_api::Api::from_kubeconfig(line.trim_start_matches("kubeconfig: ").as_ref())?;
        for (wasm, name) in config.images {
            let status = Command::new(flotilla_bin()?)
                .args(["image", "import", wasm, "--name", name, "--data-dir"])
                .arg(agent_dir.path())
                .stdout(Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "importing {name}");
        }
        let token = std::fs::read_to_string(server_dir.path().join("node-token"))?;
        let node_ip = config.node_ip.unwrap_or("127.0.0.1");
        let mut command = Command::new(flotilla_bin()?);
        command
            .args(["agent", "--server", &format!("https://{listen}"), "--token", token.trim(), "--data-dir"])
            .arg(agent_dir.path())
            .args(["--node-name", config.node, "--node-ip", node_ip, "--node-listen", &format!("{node_ip}:0")])
            .args(["--pod-cidr", config.pod_cidr])
            .args(["--proxy-mode", config.proxy_mode.unwrap_or("userspace")])
            .args(EVICTION_HARD);
        if let Some(max_pods) = config.max_pods {
            command.args(["--max-pods", &max_pods.to_string()]);
        }
        let agent = Running::spawn(&mut command)?;
        Ok(Cluster { server, agent, api, _dirs: (server_dir, agent_dir) })
    }
}
