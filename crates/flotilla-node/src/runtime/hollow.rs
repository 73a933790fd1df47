//! The hollow runtime, kubemark's fake CRI runtime: each container a run that starts at once,
//! does nothing and uses nothing, and ends when it is told to stop (a regular init container
//! ends well at once). The agent around it is the real one, so a hollow node (`crate::hollow`)
//! does what a node does without running anything.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{ContainerRuntime, ContainerUsage, Control, CreateError, Created, Executed, Exit, Launch, Meter, Started};
use crate::images::{Image, Kind};

/// Runs every image as nothing, under the wasm handler (hollow nodes offer only it).
#[derive(Debug)]
pub(crate) struct HollowRuntime;

impl ContainerRuntime for HollowRuntime {
    fn handler(&self) -> &'static str {
        super::wasm::HANDLER
    }

    fn version(&self) -> String {
        "hollow://0.1".into()
    }

    fn runs(&self, _: Kind) -> bool {
        true
    }

    fn create(&self, _: Image, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Created>, CreateError>> {
        let run = HollowRun { completes: launch.runs_to_completion };
        std::future::ready(Ok(Box::new(run) as Box<dyn Created>)).boxed()
    }
}

struct HollowRun {
    /// It ends well at once (a regular init container, which the pod waits for).
    completes: bool,
}

impl Created for HollowRun {
    fn start(self: Box<Self>) -> BoxFuture<'static, Result<Started, String>> {
        let (ended, mut exit) = watch::channel(self.completes.then(|| Exit::exited(0)));
        let control = Arc::new(HollowControl { ended });
        let usage =
            ContainerUsage { meter: Arc::new(Nothing), requests: Arc::default(), started: jiff::Timestamp::now() };
        let exit = async move {
            let ended = exit.wait_for(Option::is_some).await.ok().and_then(|ended| ended.clone());
            ended.unwrap_or_else(Exit::killed)
        };
        std::future::ready(Ok(Started { control, usage, exit: exit.boxed() })).boxed()
    }
}

#[derive(Debug)]
struct HollowControl {
    ended: watch::Sender<Option<Exit>>,
}

impl HollowControl {
    /// Ends the run with `exit`, unless it has ended already.
    fn end(&self, exit: Exit) {
        self.ended.send_if_modified(|ended| {
            let first = ended.is_none();
            if first {
                *ended = Some(exit);
            }
            first
        });
    }
}

impl Control for HollowControl {
    fn terminate(&self) -> bool {
        // As a process that SIGTERM ends (128 + 15).
        self.end(Exit::exited(143));
        true
    }

    fn kill(&self) {
        self.end(Exit::killed());
    }

    fn exec(&self, _: Vec<String>, _: Duration) -> BoxFuture<'static, Result<Executed, String>> {
        // Every command succeeds, as kubemark's fake runtime's `ExecSync` does.
        std::future::ready(Ok(Executed { code: 0, output: Vec::new() })).boxed()
    }
}

/// A run that uses nothing.
#[derive(Debug)]
struct Nothing;

impl Meter for Nothing {
    fn memory(&self) -> u64 {
        0
    }

    fn cpu(&self) -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{ImageStore, Images, PullPolicy};
    use crate::logs::ContainerLog;

    fn launch() -> Launch {
        Launch {
            namespace: "default".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            container: "c".into(),
            hostname: "p".into(),
            attempt: 0,
            qos: "BestEffort",
            id: "u-c-0".into(),
            command: None,
            args: None,
            env: Vec::new(),
            working_dir: None,
            mounts: Vec::new(),
            memory_limit: None,
            cpu_limit: None,
            cpu_request: None,
            security: Default::default(),
            share_pids: false,
            pod_ip: std::net::Ipv4Addr::new(127, 128, 0, 2),
            netns: None,
            dns: None,
            ports: Vec::new(),
            http_concurrency: None,
            output: Arc::new(ContainerLog::discarding()),
            runs_to_completion: false,
        }
    }

    async fn started(runs_to_completion: bool) -> Started {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::made_up(ImageStore::open(dir.path().into()).unwrap());
        let image = images.resolve("anything:v1", PullPolicy::Never).await.unwrap().image;
        let created = HollowRuntime.create(image, Launch { runs_to_completion, ..launch() }).await.unwrap();
        created.start().await.unwrap()
    }

    #[tokio::test]
    async fn a_hollow_run_goes_on_until_it_is_stopped_and_ends_once() {
        let Started { control, exit, .. } = started(false).await;
        let mut exit = exit;
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut exit).await.is_err(), "ended by itself");
        assert_eq!(control.exec(vec!["true".into()], Duration::from_secs(1)).await.unwrap().code, 0);
        assert!(control.terminate(), "a hollow run hears SIGTERM");
        control.kill();
        assert_eq!(exit.await, Exit::exited(143), "the first end stands");

        let Started { control, exit, .. } = started(false).await;
        control.kill();
        control.terminate();
        assert_eq!(exit.await, Exit::killed());

        let Started { control, exit, .. } = started(true).await;
        assert_eq!(exit.await, Exit::exited(0), "an init container ends well at once");
        control.kill();
    }
}
