//! The privileged steps that fork or change a process's namespaces, run in a short-lived
//! process of the agent's own binary (`flotilla oci-helper …`) rather than in the agent.
//!
//! youki's `libcontainer` clones the container's processes with raw `clone3`, which runs Rust
//! code in the child; in the agent, a multi-threaded process whose allocator arenas other
//! threads may hold, that child could deadlock on its first allocation. The helper is
//! single-threaded, does one step and exits, as `runc create` does: no process stays per pod but
//! the container's own, which the agent (a child subreaper) inherits when the helper exits.
//! A failure is written to `--error-file`: the helper's stdout and stderr are the container's.

use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::{SyscallType, create_syscall};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

/// The helper's steps.
#[derive(Debug)]
pub(crate) enum Step {
    /// Creates a container from its bundle (`config.json`, `rootfs`), its init process waiting
    /// to be started, and writes its pid to `pid_file`.
    Create { root: PathBuf, bundle: PathBuf, id: String, pid_file: PathBuf },
    /// Makes a pod's sandbox: new network (loopback up, and the pod's end of its interface,
    /// `network.rs`), UTS (`hostname`) and IPC namespaces, kept by bind mounts at
    /// `dir/{net,uts,ipc}` for its containers to join.
    Sandbox { dir: PathBuf, hostname: String, interface: Option<Interface> },
}

impl Step {
    /// The step `args` (after `oci-helper`) name, and where its failure goes.
    pub(crate) fn parse(args: &[String]) -> Result<(Step, PathBuf), String> {
        let value = |name: &str| -> Result<String, String> {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
                .ok_or_else(|| format!("oci-helper: {name} is missing"))
        };
        let error_file = PathBuf::from(value("--error-file")?);
        let step = match args.first().map(String::as_str) {
            Some("create") => Step::Create {
                root: value("--root")?.into(),
                bundle: value("--bundle")?.into(),
                id: value("--id")?,
                pid_file: value("--pid-file")?.into(),
            },
            Some("sandbox") => {
                let interface = match value("--ip") {
                    Ok(ip) => {
                        let address = |text: String| text.parse().map_err(|e| format!("oci-helper: {text}: {e}"));
                        Some(Interface {
                            ip: address(ip)?,
                            gateway: address(value("--gateway")?)?,
                            link: value("--link")?,
                            host_pid: value("--host-pid")?
                                .parse()
                                .map_err(|e| format!("oci-helper: --host-pid: {e}"))?,
                            loopback: args.iter().any(|a| a == "--loopback"),
                        })
                    }
                    Err(_) => None,
                };
                Step::Sandbox { dir: value("--dir")?.into(), hostname: value("--hostname")?, interface }
            }
            other => return Err(format!("oci-helper: unknown step {other:?}")),
        };
        Ok((step, error_file))
    }

    /// Does the step.
    pub(crate) fn run(self) -> Result<(), String> {
        match self {
            Step::Create { root, bundle, id, pid_file } => ContainerBuilder::new(id, SyscallType::Linux)
                .with_root_path(root)
                .and_then(|b| b.with_pid_file(Some(pid_file)))
                .and_then(|b| b.validate_id())
                .map_err(|e| e.to_string())?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map(drop)
                .map_err(|e| format!("creating the container: {e}")),
            Step::Sandbox { dir, hostname, interface } => sandbox(&dir, &hostname, interface.as_ref()),
        }
    }
}

/// Runs the helper with `args` (after `oci-helper`): its exit code.
pub(crate) fn main(args: &[String]) -> i32 {
    // The agent keeps its own files private (umask 077); a container starts with runc's 022,
    // which its devices and its processes' files are made under.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let (step, error_file) = match Step::parse(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return 2;
        }
    };
    match step.run() {
        Ok(()) => 0,
        Err(message) => {
            let _ = std::fs::write(error_file, message);
            1
        }
    }
}

/// The pod's end of its interface, as the agent asks for it.
#[derive(Debug)]
pub(crate) struct Interface {
    ip: std::net::Ipv4Addr,
    gateway: std::net::Ipv4Addr,
    link: String,
    host_pid: u32,
    loopback: bool,
}

fn sandbox(dir: &std::path::Path, hostname: &str, interface: Option<&Interface>) -> Result<(), String> {
    let syscall = create_syscall();
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    syscall
        .unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .map_err(|e| format!("creating the pod's namespaces: {e}"))?;
    syscall.set_hostname(hostname).map_err(|e| format!("setting the pod's hostname: {e}"))?;
    // `ip` inherits the namespaces it is started in.
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("running ip: {e}"))?;
    if !up.success() {
        return Err(format!("ip link set lo up: {up}"));
    }
    if let Some(i) = interface {
        super::network::make_pod_end(i.ip, i.gateway, &i.link, i.host_pid, i.loopback)?;
    }
    for kind in ["net", "uts", "ipc"] {
        let target = dir.join(kind);
        std::fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        let source = PathBuf::from(format!("/proc/self/ns/{kind}"));
        syscall
            .mount(Some(&source), &target, None, MsFlags::MS_BIND, None)
            .map_err(|e| format!("keeping the pod's {kind} namespace at {}: {e}", target.display()))?;
    }
    Ok(())
}
