//! `flotilla`: the one binary. `server` runs the control plane (the API server over its store
//! member, the scheduler and the controllers) and, unless told not to, a node; `agent` runs a
//! node that joins a cluster (or many hollow ones); `scheduler` and `controllers` run those
//! loops on their own; `kubeconfig` prints the admin kubeconfig; `image` manages a node's
//! modules; `store` talks to a running store member for status and membership changes.

mod agent;
mod control;
mod image;
mod node;
mod peer;
mod run;
mod server;
mod store_admin;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A Kubernetes-compatible orchestrator whose nodes run WebAssembly modules as Pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API over a store member on local disk (a
    /// one-member group by default).
    Server(Box<server::ServerArgs>),
    /// Print the admin kubeconfig a server wrote to its data directory.
    Kubeconfig {
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// Inspect or change a running store group.
    Store {
        #[command(subcommand)]
        command: store_admin::StoreCommand,
    },
    /// Run a node that joins a cluster: it runs the wasm pods the cluster binds to it.
    Agent(Box<agent::AgentArgs>),
    /// Run the scheduler alone, against the server a kubeconfig points at.
    Scheduler(control::ControlArgs),
    /// Run the controllers alone, against the server a kubeconfig points at.
    Controllers(control::ControlArgs),
    /// Run a `.wasm` module as a Deployment behind a Service, and print its URL; run again
    /// after a rebuild, it rolls the Deployment to the new module.
    Run(Box<run::RunArgs>),
    /// Manage the modules in a node's image store.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
}

/// Where state lives when `--data-dir` is not given.
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/flotilla")
}

fn main() -> anyhow::Result<()> {
    // A step of the node's OCI runtime, run in a process of its own: single-threaded, before
    // anything else starts (`flotilla_node::oci_helper`). Not a subcommand users type.
    if std::env::args_os().nth(1).is_some_and(|a| a == "oci-helper") {
        let args: Vec<String> = std::env::args_os().skip(2).map(|a| a.to_string_lossy().into_owned()).collect();
        std::process::exit(flotilla_node::oci_helper(&args));
    }
    limit_malloc_arenas();
    raise_descriptor_limit();
    keep_files_private();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error,libcgroups=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Kubeconfig { data_dir } => server::print_kubeconfig(&data_dir),
            Command::Store { command } => store_admin::run(command).await,
            Command::Agent(args) => agent::run(*args).await,
            Command::Scheduler(args) => control::scheduler(args).await,
            Command::Controllers(args) => control::controllers(args).await,
            Command::Image { command } => image::run(command),
            Command::Run(args) => run::run(*args).await,
        }
    })
}

/// Everything Flotilla writes is its own: the store's files (Secrets in its WAL), keys, tokens,
/// pods' volumes and logs. With this mask every file is created 0600 and every directory 0700
/// whatever the caller's umask, as etcd creates its data; [`make_private`] fixes up what an
/// earlier release or a careless hand left readable.
fn keep_files_private() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` if need be and makes it and everything in it private to its owner: directories
/// 0700, files 0600 (links are left alone, never followed). Containers' filesystems are left as
/// they are, only their directories made private: their files' modes are the images' and the
/// containers' own.
pub(crate) fn make_private(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let keep = flotilla_node::container_filesystems(&node::node_dir(dir));
    let walk_dir = |path: &std::path::Path| walk(path, &keep);
    fn walk(path: &std::path::Path, keep: &[std::path::PathBuf]) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        let mode = if meta.is_dir() {
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            return Ok(());
        };
        if meta.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        if meta.is_dir() && !keep.iter().any(|k| k == path) {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), keep)?;
            }
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| walk_dir(dir))
        .map_err(|e| anyhow::anyhow!("cannot make {} private to its owner: {e}", dir.display()))
}

/// A node keeps each running container's log file open, and a node holds thousands of pods:
/// the usual soft limit of 1,024 descriptors would stop it near a thousand. The soft limit is
/// raised to the hard one, which the operator sets.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
}

/// glibc gives each thread that allocates concurrently an arena of its own, up to eight per core,
/// and keeps what is freed in each. A server that serves a 10,000-pod list from whichever worker
/// thread then holds that memory in every arena: measured, 178 MiB resident after a few lists
/// against 56 MiB with one arena. Two arenas keep that at 56 MiB at no measurable cost in
/// throughput (`benches/api.rs`). The same as `MALLOC_ARENA_MAX=2`, which still wins if set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; called first thing in main, before any
        // other thread exists. Its return value (0 on failure) leaves the default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
