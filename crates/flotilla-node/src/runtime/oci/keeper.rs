//! The keeper: one small process per node that creates its containers and outlives the agent,
//! so that a container outlives the agent too, and its end is still known when it comes.
//!
//! A container's init process is an orphan once the helper that created it exits, and goes to
//! the nearest subreaper above it. Were that the agent, a container would lose its parent with
//! the agent, its end would be reaped by whatever adopted it, and a restarted agent could not
//! tell how it ended (only a parent learns an exit status). So the agent asks the keeper to
//! run each `create` step of the helper: the keeper, a child subreaper, becomes every
//! container's parent, reaps each as it ends, and records how at `exits/<pid>`, which the agent
//! reads once the container's pidfd says it has ended. It runs each `sandbox` step too, whose
//! pause process (a pod that shares its processes) it parents as a container's. Nothing else
//! lives in it: it holds no pipe (containers write to FIFOs in their bundles) and no state but
//! its children.
//!
//! The agent talks to it over `keeper-<binary>.sock` in the runtime's directory: a request is
//! the helper's arguments, NUL-separated; the answer, once that helper ends, its exit code. The
//! keeper is started by the agent when none answers, in a process group of its own, and ends
//! by itself once it has had no child and no request for [`IDLE`]. The socket is named by the
//! agent's binary (its device, inode and modification time): an agent upgraded in place starts
//! a keeper of its own version, and the old one keeps the containers (and pauses) it parents
//! until they end (their ends go to the same records).
//!
//! A supervisor that stops the agent by killing its whole cgroup (systemd's default
//! `KillMode=control-group`) kills the keeper too, and the containers are orphaned to PID 1:
//! the agent's unit wants `KillMode=process`, as containerd's has. (Should the keeper die while
//! the agent runs, its containers go to PID 1, and their ends are unknown.)

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::WaitOptions;

/// Where the ends of containers are recorded, by pid.
pub(super) const EXITS: &str = "exits";
/// How long a keeper with nothing to keep waits before it ends.
const IDLE: Duration = Duration::from_secs(60);
/// How long a helper step may take before the keeper kills it.
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request the keeper reads.
const MAX_REQUEST: u64 = 64 << 10;

/// Runs the keeper for the runtime directory `dir`, listening on `socket`, until it has been
/// idle for [`IDLE`].
pub(crate) fn run(dir: &Path, socket: &Path) -> Result<(), String> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("becoming the containers' subreaper: {e}"))?;
    let exits = dir.join(EXITS);
    std::fs::create_dir_all(&exits).map_err(|e| format!("creating {}: {e}", exits.display()))?;
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    listener.set_nonblocking(true).map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    // The socket as bound: another keeper may replace it, and its socket is not this one's to
    // remove.
    let bound = std::fs::metadata(socket).map(|m| (m.dev(), m.ino())).ok();
    // Its own binary, even once an upgrade has replaced the file it was started from.
    let helper = PathBuf::from("/proc/self/exe");
    // A child's end wakes the loop at once (a step's answer, a container's record, are what
    // pods wait for). The mask is the keeper's own: each child starts with an empty one.
    let mut children_end = SigSet::empty();
    children_end.add(Signal::SIGCHLD);
    children_end.thread_block().map_err(|e| format!("blocking SIGCHLD: {e}"))?;
    let ended = SignalFd::with_flags(&children_end, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("watching for children's ends: {e}"))?;
    // Each running step: its process, who asked, and when it is killed.
    let mut steps: HashMap<i32, (Child, UnixStream, Instant)> = HashMap::new();
    let mut busy_at = Instant::now();
    loop {
        let mut fds = [PollFd::new(&listener, PollFlags::IN), PollFd::new(&ended, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 1, tv_nsec: 0 }));
        while let Ok(Some(_)) = ended.read_signal() {}
        while let Ok((stream, _)) = listener.accept() {
            busy_at = Instant::now();
            match start_step(&helper, stream) {
                Some((child, stream)) => drop(steps.insert(child.id() as i32, (child, stream, Instant::now()))),
                None => continue,
            }
        }
        let now = Instant::now();
        for (child, _, started) in steps.values_mut() {
            if now.duration_since(*started) > STEP_TIMEOUT {
                let _ = child.kill();
            }
        }
        // Every child that ended: a step, answered; a container, recorded.
        let mut children = false;
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    children = true;
                    let code =
                        status.exit_status().or_else(|| status.terminating_signal().map(|s| 128 + s)).unwrap_or(128);
                    match steps.remove(&pid.as_raw_nonzero().get()) {
                        Some((_, mut stream, _)) => drop(stream.write_all(code.to_string().as_bytes())),
                        None => record(&exits, pid.as_raw_nonzero().get(), code),
                    }
                }
                Ok(None) => {
                    children = true;
                    break;
                }
                // No child at all.
                Err(_) => break,
            }
        }
        if children || !steps.is_empty() {
            busy_at = Instant::now();
        } else if busy_at.elapsed() > IDLE {
            // Gone before it stops answering: an agent that finds no socket starts a keeper.
            // (One that connected just before is answered by nothing, and asks again.)
            if std::fs::metadata(socket).map(|m| (m.dev(), m.ino())).ok() == bound {
                let _ = std::fs::remove_file(socket);
            }
            return Ok(());
        }
    }
}

/// Reads a request from `stream` and starts its helper step: the step's process, and the
/// stream its answer goes to. A request that is not the agent's, or unreadable, gets none.
fn start_step(helper: &Path, mut stream: UnixStream) -> Option<(Child, UnixStream)> {
    let peer = rustix::net::sockopt::socket_peercred(stream.as_fd()).ok()?;
    if peer.uid != rustix::process::geteuid() {
        return None;
    }
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = Vec::new();
    (&mut stream).take(MAX_REQUEST).read_to_end(&mut request).ok()?;
    let args: Vec<String> = String::from_utf8(request).ok()?.split('\0').map(str::to_string).collect();
    let child = Command::new(helper)
        .arg("oci-helper")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((child, stream))
}

/// Records how the process `pid` ended, for the agent to read.
fn record(exits: &Path, pid: i32, code: i32) {
    let path = exits.join(pid.to_string());
    let partial = exits.join(format!(".{pid}"));
    let _ = std::fs::write(&partial, code.to_string()).and_then(|()| std::fs::rename(&partial, &path));
}

/// The agent's side: the keeper of a runtime directory, started when none answers.
#[derive(Debug)]
pub(super) struct Keeper {
    dir: PathBuf,
    /// `keeper-<binary>.sock`: the keeper of this agent's binary.
    socket: PathBuf,
    /// The keeper this agent started last, reaped once it has ended (nothing else waits for
    /// the agent's children).
    started: std::sync::Mutex<Option<Child>>,
}

impl Keeper {
    pub(super) fn new(dir: PathBuf) -> Keeper {
        let binary = std::fs::metadata("/proc/self/exe")
            .map(|m| format!("{:x}-{:x}-{:x}", m.dev(), m.ino(), m.mtime()))
            .unwrap_or_default();
        let socket = dir.join(format!("keeper-{binary}.sock"));
        Keeper { dir, socket, started: std::sync::Mutex::new(None) }
    }

    /// Runs a helper step through the keeper, waiting for it at most `timeout`: the step's
    /// exit code. A keeper that ends as it is asked (it was idle) is asked again, once.
    pub(super) fn run_step(&self, args: &[&str], timeout: Duration) -> Result<i32, String> {
        match self.ask(args, timeout) {
            Ok(Some(code)) => Ok(code),
            Ok(None) => self.ask(args, timeout)?.ok_or_else(|| "the keeper ended without an answer".to_string()),
            Err(e) => Err(e),
        }
    }

    /// The step's exit code, or `None` if the keeper closed the connection without answering.
    fn ask(&self, args: &[&str], timeout: Duration) -> Result<Option<i32>, String> {
        let mut stream = self.connect()?;
        let failed = |e: std::io::Error| format!("asking the keeper: {e}");
        stream.write_all(args.join("\0").as_bytes()).map_err(failed)?;
        stream.shutdown(std::net::Shutdown::Write).map_err(failed)?;
        stream.set_read_timeout(Some(timeout)).map_err(failed)?;
        let mut answer = String::new();
        match stream.read_to_string(&mut answer) {
            Ok(_) if answer.is_empty() => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
            Ok(_) => answer.trim().parse().map(Some).map_err(|_| format!("the keeper answered {answer:?}")),
            Err(e) => Err(failed(e)),
        }
    }

    /// A connection to the keeper, starting one if none answers.
    fn connect(&self) -> Result<UnixStream, String> {
        let socket = &self.socket;
        if let Ok(stream) = UnixStream::connect(socket) {
            return Ok(stream);
        }
        let mut started = self.started.lock().expect("keeper lock");
        // Another thread may have started one meanwhile.
        if let Ok(stream) = UnixStream::connect(socket) {
            return Ok(stream);
        }
        if let Some(mut old) = started.take() {
            let _ = old.try_wait();
        }
        // Under the fork lock: it lives on, and inherits no descriptor meant for a step.
        let held = super::FORK_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let child = Command::new("/proc/self/exe")
            .arg("oci-helper")
            .arg("keep")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--socket")
            .arg(socket)
            .arg("--error-file")
            .arg(self.dir.join("keeper.error"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the agent's process group: a Ctrl-C meant for the agent does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the keeper: {e}"))?;
        drop(held);
        *started = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() > deadline => return Err(format!("the keeper does not answer: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}
