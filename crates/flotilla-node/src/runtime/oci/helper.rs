//! The privileged steps that fork or change a process's namespaces, run in a short-lived
//! process of the agent's own binary (`flotilla oci-helper …`) rather than in the agent.
//!
//! youki's `libcontainer` clones the container's processes with raw `clone3`, which runs Rust
//! code in the child; in the agent, a multi-threaded process whose allocator arenas other
//! threads may hold, that child could deadlock on its first allocation. The helper is
//! single-threaded, does one step and exits, as `runc create` does: no process stays per pod but
//! the container's own, which the keeper (`keeper.rs`, a child subreaper) inherits when the
//! helper exits. A failure is written to `--error-file`.

use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::{SyscallType, create_syscall};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

/// The helper's steps.
#[derive(Debug)]
pub(crate) enum Step {
    /// Creates a container from its bundle (`config.json`, `rootfs`), its init process waiting
    /// to be started with the FIFOs `stdout` and `stderr` as its output, and writes its pid to
    /// `pid_file`. Run by the keeper (`keeper.rs`), which its init process is left to.
    Create { root: PathBuf, bundle: PathBuf, id: String, pid_file: PathBuf, stdout: PathBuf, stderr: PathBuf },
    /// Runs the keeper of the runtime directory `dir`, listening on `socket`.
    Keep { dir: PathBuf, socket: PathBuf },
    /// Makes a pod's sandbox: new network (loopback up, and the pod's end of its interface,
    /// `network.rs`), UTS (`hostname`) and IPC namespaces, kept by bind mounts at
    /// `dir/{net,uts,ipc}` for its containers to join; and, for a pod whose containers share
    /// their processes (`share_pids`), a PID namespace at `dir/pid` with its first process.
    /// Run by the keeper, which that process is left to.
    Sandbox { dir: PathBuf, hostname: String, interface: Option<Interface>, share_pids: bool },
    /// Is the first process of a pod's PID namespace (`Sandbox` starts it there).
    Pause,
    /// Runs `command` in a running container (its namespaces, cgroup and user), waits for it
    /// at most `timeout_ms` (then kills it), or for as long as the pipe `lifeline` (a
    /// descriptor it inherited) has a writer, and exits with its code.
    /// `own_terminal`: its terminal (its stdin) is one of the container's, to give to the
    /// command's user.
    Exec { root: PathBuf, id: String, command: Vec<String>, until: Until, own_terminal: bool },
}

/// The exit code of an `exec` whose command ran out of time, as `timeout(1)`'s.
pub(crate) const TIMED_OUT: i32 = 124;

/// How long an `exec`'s command may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// So many milliseconds (an `exec` probe's timeout).
    Milliseconds(u64),
    /// While the pipe whose read end is this descriptor has a writer (`kubectl exec`'s client
    /// is there): the agent holds the write end.
    Lifeline(i32),
}

impl Step {
    /// The step `args` (after `oci-helper`) name, and where its failure goes.
    pub(crate) fn parse(args: &[String]) -> Result<(Step, PathBuf), String> {
        // The helper's own arguments: what follows `--` is a command's.
        let own = &args[..args.iter().position(|a| a == "--").unwrap_or(args.len())];
        let value = |name: &str| -> Result<String, String> {
            own.iter()
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
                stdout: value("--stdout")?.into(),
                stderr: value("--stderr")?.into(),
            },
            Some("keep") => Step::Keep { dir: value("--dir")?.into(), socket: value("--socket")?.into() },
            Some("exec") => Step::Exec {
                root: value("--root")?.into(),
                id: value("--id")?,
                until: match value("--lifeline-fd") {
                    Ok(fd) => Until::Lifeline(fd.parse().map_err(|e| format!("oci-helper: --lifeline-fd: {e}"))?),
                    Err(_) => Until::Milliseconds(
                        value("--timeout-ms")?.parse().map_err(|e| format!("oci-helper: --timeout-ms: {e}"))?,
                    ),
                },
                command: args.iter().skip_while(|a| *a != "--").skip(1).cloned().collect(),
                own_terminal: own.iter().any(|a| a == "--own-terminal"),
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
                let share_pids = args.iter().any(|a| a == "--share-pids");
                Step::Sandbox { dir: value("--dir")?.into(), hostname: value("--hostname")?, interface, share_pids }
            }
            Some("pause") => Step::Pause,
            other => return Err(format!("oci-helper: unknown step {other:?}")),
        };
        Ok((step, error_file))
    }

    /// Does the step: the exit code the helper ends with.
    pub(crate) fn run(self) -> Result<i32, String> {
        match self {
            Step::Create { root, bundle, id, pid_file, stdout, stderr } => {
                output_to(&stdout, &stderr)?;
                create(root, bundle, id, pid_file)
            }
            Step::Keep { dir, socket } => super::keeper::run(&dir, &socket).map(|()| 0),
            Step::Sandbox { dir, hostname, interface, share_pids } => {
                sandbox(&dir, &hostname, interface.as_ref())?;
                if share_pids {
                    keep_pid_namespace(&dir)?;
                }
                Ok(0)
            }
            Step::Exec { root, id, command, until, own_terminal } => exec(root, id, command, until, own_terminal),
            Step::Pause => pause(),
        }
    }
}

/// Makes the FIFOs `stdout` and `stderr` this process's output, which the container inherits.
/// Each is opened for reading too, so that it always has a reader: a write never fails, as it
/// would once the agent, its reader, went away (the container waits instead, once the FIFO is
/// full, until a new agent reads it). Each holds 256 KiB (runc's pipes hold 64), so that a
/// container outlives a restarting agent without waiting; the kernel counts a pipe's size
/// against its user's `pipe-user-pages-soft`, which larger ones would use up.
fn output_to(stdout: &std::path::Path, stderr: &std::path::Path) -> Result<(), String> {
    let open = |path: &std::path::Path| {
        let fifo = rustix::fs::open(path, rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty())
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let _ = rustix::pipe::fcntl_setpipe_size(&fifo, OUTPUT_BUFFER);
        Ok::<_, String>(fifo)
    };
    let (out, err) = (open(stdout)?, open(stderr)?);
    rustix::stdio::dup2_stdout(&out).map_err(|e| format!("opening {}: {e}", stdout.display()))?;
    rustix::stdio::dup2_stderr(&err).map_err(|e| format!("opening {}: {e}", stderr.display()))?;
    Ok(())
}

/// What a container's output FIFO holds before the container waits for a reader.
const OUTPUT_BUFFER: usize = 256 << 10;

fn create(root: PathBuf, bundle: PathBuf, id: String, pid_file: PathBuf) -> Result<i32, String> {
    ContainerBuilder::new(id, SyscallType::Linux)
        .with_root_path(root)
        .and_then(|b| b.with_pid_file(Some(pid_file)))
        .and_then(|b| b.validate_id())
        .map_err(|e| e.to_string())?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map(|_| 0)
        .map_err(|e| format!("creating the container: {e}"))
}

/// Runs the helper with `args` (after `oci-helper`): its exit code.
pub(crate) fn main(args: &[String]) -> i32 {
    // The agent keeps its own files private (umask 077); a container starts with runc's 022,
    // which its devices and its processes' files are made under.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    // A step the keeper runs starts with its mask (it blocks SIGCHLD, to read it from a
    // signalfd): a container starts with none blocked.
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    let (step, error_file) = match Step::parse(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return 2;
        }
    };
    match step.run() {
        Ok(code) => code,
        Err(message) => {
            let _ = std::fs::write(error_file, message);
            1
        }
    }
}

/// Runs `command` in the container `id` as one more of its processes (youki's tenant, as
/// `runc exec`), waits for it, and gives its exit code (128 + a signal that ended it).
fn exec(root: PathBuf, id: String, command: Vec<String>, until: Until, own_terminal: bool) -> Result<i32, String> {
    // Not dumpable, as runc's exec: the command's process, a child of this one, sits in the
    // container's PID namespace as the container's user before its filter is loaded and its
    // program runs, where a container's process could otherwise open its `/proc/<pid>/fd` or
    // write its memory. The command's `execve` makes it dumpable again.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("making the helper undumpable: {e}"))?;
    // The inherited pipe, opened anew through its number (a FIFO's open, without waiting for
    // a writer), before there is a command to leave unwatched.
    let lifeline = match until {
        Until::Lifeline(fd) => Some(
            rustix::fs::open(
                format!("/proc/self/fd/{fd}"),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| format!("opening the lifeline: {e}"))?,
        ),
        Until::Milliseconds(_) => None,
    };
    if command.is_empty() {
        return Err("no command to exec".into());
    }
    // As the container's own user (its `runAsUser`, `runAsGroup`): youki's tenant runs as root
    // unless told, as `runc exec` does not.
    let container = libcontainer::container::Container::load(root.join(&id)).map_err(|e| e.to_string())?;
    let config = std::fs::read(container.bundle().join("config.json")).map_err(|e| format!("reading the spec: {e}"))?;
    let config: serde_json::Value = serde_json::from_slice(&config).map_err(|e| format!("reading the spec: {e}"))?;
    let id_of = |key: &str| config["process"]["user"][key].as_u64().and_then(|n| u32::try_from(n).ok());
    let confinement = Confinement::of(&config)?;
    // The container's terminal is the command's user's, as runc gives it: it may open it by
    // its name. (The node's, when it had to be, stays the node's.)
    if own_terminal && rustix::termios::isatty(std::io::stdin()) {
        let owner = id_of("uid").map(rustix::process::Uid::from_raw);
        rustix::fs::fchown(std::io::stdin(), owner, None)
            .map_err(|e| format!("giving the terminal to its user: {e}"))?;
    }
    let pid = ContainerBuilder::new(id, SyscallType::Linux)
        .with_root_path(root)
        .map_err(|e| e.to_string())?
        .with_executor(confinement)
        .as_tenant()
        .with_user(id_of("uid"))
        .with_group(id_of("gid"))
        .with_container_args(command)
        .with_detach(false)
        .build()
        .map_err(|e| format!("running the command: {e}"))?;
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).ok_or("the command has no process")?;
    let deadline = match until {
        Until::Milliseconds(ms) => Some(std::time::Instant::now() + std::time::Duration::from_millis(ms)),
        Until::Lifeline(_) => None,
    };
    // Its own child: its pid cannot have been taken by another process.
    let kill = || {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    };
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(signal) = status.terminating_signal() {
                    return Ok(128 + signal);
                }
            }
            Ok(None) if deadline.is_some_and(|deadline| std::time::Instant::now() > deadline) => {
                kill();
                return Ok(TIMED_OUT);
            }
            Ok(None) => match &lifeline {
                None => std::thread::sleep(std::time::Duration::from_millis(5)),
                Some(lifeline) => {
                    let mut polled = [rustix::event::PollFd::new(lifeline, rustix::event::PollFlags::IN)];
                    let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: 20_000_000 };
                    // Readable: its writer is gone (the agent writes nothing to it).
                    if rustix::event::poll(&mut polled, Some(&timeout)).is_ok_and(|ready| ready > 0) {
                        kill();
                        return Ok(128 + 9);
                    }
                }
            },
            Err(e) => return Err(format!("waiting for the command: {e}")),
        }
    }
}

/// What youki's tenant leaves out of a command it runs in a container, done in the command's
/// process just before the command replaces it (libcontainer's `Executor`): the container's
/// seccomp filter, which the tenant drops when it rebuilds the spec's `linux`, and a terminal
/// as the command's controlling terminal.
///
/// The tenant gives the command `no_new_privs` whatever the container has (its process
/// builder's default), which lets it load the filter after it has dropped to the container's
/// capabilities. runc's `exec` loads the filter before it drops them instead, and leaves a
/// set-user-ID program free to gain its privileges where the container's own processes may.
#[derive(Clone)]
struct Confinement {
    filter: Option<libcontainer::oci_spec::runtime::LinuxSeccomp>,
}

impl Confinement {
    /// The confinement of a command in the container whose spec is `config`.
    fn of(config: &serde_json::Value) -> Result<Confinement, String> {
        let filter = match &config["linux"]["seccomp"] {
            serde_json::Value::Null => None,
            profile => Some(
                serde_json::from_value(profile.clone()).map_err(|e| format!("reading the container's seccomp: {e}"))?,
            ),
        };
        Ok(Confinement { filter })
    }

    fn confine(&self) -> Result<(), String> {
        // The tenant's process leads a session of its own, without a controlling terminal: a
        // terminal it was given becomes that, so that ^C is SIGINT and `/dev/tty` opens.
        if rustix::termios::isatty(std::io::stdin()) {
            rustix::process::ioctl_tiocsctty(std::io::stdin())
                .map_err(|e| format!("making the terminal the command's own: {e}"))?;
        }
        if let Some(filter) = &self.filter {
            // The kernel takes a filter from a process without `CAP_SYS_ADMIN` only under
            // `no_new_privs`: checked, so that a tenant that stopped setting it fails here, not
            // with a command left unfiltered.
            if !rustix::thread::no_new_privs().unwrap_or(false) {
                return Err("the command has no no_new_privs to load the container's seccomp filter under".into());
            }
            let listener = libcontainer::seccomp::initialize_seccomp(filter)
                .map_err(|e| format!("loading the container's seccomp filter: {e}"))?;
            // A profile that hands syscalls to a listener would hold them forever: there is none.
            if listener.is_some() {
                return Err("the container's seccomp profile notifies a listener, which exec does not run".into());
            }
        }
        Ok(())
    }
}

impl libcontainer::workload::Executor for Confinement {
    fn exec(&self, spec: &libcontainer::oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        // A failure goes back to the helper (the tenant's builder fails), which reports it.
        self.confine().map_err(libcontainer::workload::ExecutorError::Other)?;
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(
        &self,
        spec: &libcontainer::oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
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

/// Makes the pod's PID namespace, which `shareProcessNamespace` has its containers join, with
/// its first process, the kubelet's pause: this binary again (`oci-helper pause`), which does
/// nothing but reap what is left to it, and whose end (killed by the agent once the pod is
/// done) ends every process in the namespace. The namespace is kept at `dir/pid`, and the
/// process's id at `dir/pause`; the process is left to the keeper when this one exits. The two
/// shake hands: the pause says it is ready once it has given up its privileges (a step that
/// reports success has a pause that holds none), and goes on only once told to, after it is
/// recorded (a step killed half-way leaves no pause that nothing knows of).
fn keep_pid_namespace(dir: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    create_syscall().unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("creating the pod's PID namespace: {e}"))?;
    let mut pause = std::process::Command::new("/proc/self/exe")
        .arg0("/pause")
        .args(["oci-helper", "pause", "--error-file", "/dev/null"])
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the pod's first process: {e}"))?;
    let pid = pause.id();
    let kept = (|| {
        let mut ready = [0; PAUSE_READY.len()];
        let said = pause.stdout.take().ok_or("the pause process has no output")?.read_exact(&mut ready);
        if said.is_err() || ready != PAUSE_READY {
            return Err("the pod's first process could not give up its privileges".to_string());
        }
        let target = dir.join(super::sandbox::PID_NAMESPACE);
        std::fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        let source = PathBuf::from(format!("/proc/{pid}/ns/pid"));
        create_syscall()
            .mount(Some(&source), &target, None, MsFlags::MS_BIND, None)
            .map_err(|e| format!("keeping the pod's PID namespace at {}: {e}", target.display()))?;
        let partial = dir.join(super::sandbox::PARTIAL_PAUSE);
        std::fs::write(&partial, pid.to_string())
            .and_then(|()| std::fs::rename(&partial, dir.join(super::sandbox::PAUSE)))
            .map_err(|e| format!("recording the pod's first process: {e}"))?;
        let go = pause.stdin.take().ok_or("the pause process has no input")?;
        (&go).write_all(PAUSE_GO).map_err(|e| format!("starting the pod's first process: {e}"))
    })();
    if kept.is_err() {
        let _ = pause.kill();
        let _ = pause.wait();
    }
    kept
}

/// What the pause tells the helper once it holds no privileges, and what the helper tells the
/// pause once it is recorded.
const PAUSE_READY: &[u8] = b"ready";
const PAUSE_GO: &[u8] = b"go";

/// The pause process: the first of its PID namespace, which the processes of the pod's
/// containers are left to when their parents end. It reaps them, and waits for more; no signal
/// but SIGKILL reaches it (the kernel's rule for a namespace's first process). The containers
/// see it as their PID 1: it holds nothing of the node's once it is told to go on (an
/// unprivileged user, as upstream's pause image runs, no groups, no new privileges, and not
/// dumpable, so that no container may trace it or open its root or memory).
fn pause() -> ! {
    use std::io::{Read, Write};
    // Its only thread: the thread's ids are the process's.
    let nobody = (rustix::process::Gid::from_raw(PAUSE_ID), rustix::process::Uid::from_raw(PAUSE_ID));
    let dropped = rustix::thread::set_thread_groups(&[])
        .and_then(|()| rustix::thread::set_thread_res_gid(nobody.0, nobody.0, nobody.0))
        .and_then(|()| rustix::thread::set_thread_res_uid(nobody.1, nobody.1, nobody.1))
        .and_then(|()| rustix::thread::set_no_new_privs(true))
        .and_then(|()| rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable));
    // A pause that would hold root's powers is no pause: it says nothing, and ends (and its
    // namespace with it); the step that made it fails.
    if dropped.is_err() || std::io::stdout().write_all(PAUSE_READY).and_then(|()| std::io::stdout().flush()).is_err() {
        std::process::exit(1);
    }
    let mut go = [0; PAUSE_GO.len()];
    if std::io::stdin().read_exact(&mut go).is_err() || go != PAUSE_GO {
        std::process::exit(0);
    }
    if let Ok(null) = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()) {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
    let mut ended = nix::sys::signal::SigSet::empty();
    ended.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = ended.thread_block();
    loop {
        while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
        let _ = ended.wait();
    }
}

/// The user and group the pause runs as: upstream's pause image's (65535).
const PAUSE_ID: u32 = 65535;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_commands_words_are_never_the_helpers_flags() {
        // A probe's command that names the helper's flags does not switch its mode.
        let probe = args(&[
            "exec",
            "--root",
            "/r",
            "--id",
            "c",
            "--timeout-ms",
            "1000",
            "--error-file",
            "/e",
            "--",
            "sh",
            "--lifeline-fd",
            "0",
            "--id",
            "other",
            "--own-terminal",
        ]);
        let (Step::Exec { id, until, command, own_terminal, .. }, _) = Step::parse(&probe).unwrap() else {
            panic!("not exec")
        };
        assert_eq!((id.as_str(), until, own_terminal), ("c", Until::Milliseconds(1000), false));
        assert_eq!(command, ["sh", "--lifeline-fd", "0", "--id", "other", "--own-terminal"]);
        // Nor do they stand in for a flag the helper was not given.
        let missing = args(&["exec", "--root", "/r", "--error-file", "/e", "--", "--id", "c", "--timeout-ms", "5"]);
        assert!(Step::parse(&missing).is_err());
        let session =
            args(&["exec", "--root", "/r", "--id", "c", "--lifeline-fd", "7", "--error-file", "/e", "--", "sh"]);
        let (Step::Exec { until, .. }, _) = Step::parse(&session).unwrap() else { panic!("not exec") };
        assert_eq!(until, Until::Lifeline(7));
    }
}
