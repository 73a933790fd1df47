//! Starting and stopping `flotilla` processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

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

/// A running `flotilla server`; killed (SIGKILL) when dropped.
pub(crate) struct Server {
    child: Child,
    /// The store member's peer URL, from the line the server prints when it is ready.
    pub(crate) store_url: String,
}

impl Server {
    /// Starts `flotilla server` on `data_dir` and waits for its ready line.
    pub(crate) fn start(data_dir: &Path, peer_listen: &str) -> Result<Server> {
        let mut child = Command::new(flotilla_bin())
            .args(["server", "--data-dir"])
            .arg(data_dir)
            .args(["--peer-listen", peer_listen])
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
        let store_url = line
            .rsplit_once(" at ")
            .map(|(_, url)| url.to_string())
            .with_context(|| format!("unexpected ready line {line:?}"))?;
        Ok(Server { child, store_url })
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
