//! Container lifecycle hooks (`postStart`, `preStop`), run as the kubelet's handler runner runs
//! them: `exec` runs its command in the container (by its runtime), `httpGet` asks the pod (any
//! answer will do: only no answer fails), `sleep` waits. The worker decides when each runs and
//! what its failure costs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};

use crate::runtime::Control;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    PostStart,
    PreStop,
}

impl Hook {
    /// The container's handler for this hook, if it has one.
    pub(crate) fn handler(self, container: &Container) -> Option<&LifecycleHandler> {
        let lifecycle = container.lifecycle.as_ref()?;
        match self {
            Hook::PostStart => lifecycle.post_start.as_ref(),
            Hook::PreStop => lifecycle.pre_stop.as_ref(),
        }
    }
}

/// What a hook may need: the pod's address, an HTTP client, the running container.
pub(crate) struct Target {
    pub ip: IpAddr,
    /// The pod's address is one of the host's (`ProbeClient::targets`).
    pub hosted: bool,
    pub client: super::ProbeClient,
    pub control: Arc<dyn Control>,
}

/// Runs `handler` for `container` of the pod `pod` (`name_namespace(uid)`, as the kubelet
/// names it), for at most `timeout`: why it failed, in upstream's words, if it did.
pub(crate) async fn run(
    handler: &LifecycleHandler,
    container: &Container,
    pod: &str,
    target: Target,
    timeout: Duration,
) -> Result<(), String> {
    let name = &container.name;
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        let line = command.join(" ");
        let (error, output) = match target.control.exec(command, timeout).await {
            Ok(executed) if executed.code == 0 => return Ok(()),
            Ok(executed) => {
                let output = String::from_utf8_lossy(&executed.output).into_owned();
                (format!("command '{line}' exited with {}: {output}", executed.code), output)
            }
            Err(error) => (error, String::new()),
        };
        return Err(format!(
            "Exec lifecycle hook ([{line}]) for Container {name:?} in Pod {pod:?} failed - error: {error}, message: \
             {output:?}"
        ));
    }
    if let Some(get) = &handler.http_get {
        let path = get.path.as_deref().unwrap_or_default();
        let to = super::probes::Target { ip: target.ip, hosted: target.hosted };
        return super::probes::http_get(&target.client, get, container, to, timeout, "kube-lifecycle/1.33")
            .await
            .map(drop)
            .map_err(|error| {
                format!("HTTP lifecycle hook ({path}) for Container {name:?} in Pod {pod:?} failed - error: {error}")
            });
    }
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    // `tcpSocket` is accepted for compatibility and fails when run, as upstream's does.
    Err(format!("Cannot run handler: invalid handler: {handler:?}"))
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction, SleepAction, TCPSocketAction};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::runtime::Executed;

    /// A container whose commands exit with `code`, having written `output`.
    #[derive(Debug)]
    struct Exits(i32, &'static str);

    impl Control for Exits {
        fn terminate(&self) -> bool {
            true
        }

        fn kill(&self) {}

        fn exec(&self, _: Vec<String>, _: Duration) -> BoxFuture<'static, Result<Executed, String>> {
            std::future::ready(Ok(Executed { code: self.0, output: self.1.as_bytes().to_vec() })).boxed()
        }
    }

    fn target(code: i32, output: &'static str) -> Target {
        Target {
            ip: "127.0.0.1".parse().unwrap(),
            hosted: false,
            client: super::super::ProbeClient::new(Default::default()),
            control: Arc::new(Exits(code, output)),
        }
    }

    fn container() -> Container {
        Container { name: "c".into(), ..Default::default() }
    }

    async fn run_for(handler: LifecycleHandler, code: i32) -> Result<(), String> {
        run(&handler, &container(), "p_ns(uid)", target(code, "no\n"), Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn an_exec_hook_fails_when_its_command_does_in_upstreams_words() {
        let exec = |command: &[&str]| LifecycleHandler {
            exec: Some(ExecAction { command: Some(command.iter().map(|c| c.to_string()).collect()) }),
            ..Default::default()
        };
        assert_eq!(run_for(exec(&["true"]), 0).await, Ok(()));
        assert_eq!(
            run_for(exec(&["sh", "-c", "exit 7"]), 7).await.unwrap_err(),
            "Exec lifecycle hook ([sh -c exit 7]) for Container \"c\" in Pod \"p_ns(uid)\" failed - error: command \
             'sh -c exit 7' exited with 7: no\n, message: \"no\\n\""
        );
    }

    #[tokio::test]
    async fn an_http_hook_takes_any_answer_and_fails_on_none() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").await;
        });
        let get = |port: u16| LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some("/stop".into()),
                port: IntOrString::Int(port.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(run_for(get(port), 0).await, Ok(()), "a 500 is an answer");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let error = run_for(get(closed), 0).await.unwrap_err();
        assert!(
            error.starts_with(
                "HTTP lifecycle hook (/stop) for Container \"c\" in Pod \"p_ns(uid)\" failed - error: Get"
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_sleep_hook_sleeps_within_its_time_and_a_tcp_socket_one_cannot_run() {
        let sleep = LifecycleHandler { sleep: Some(SleepAction { seconds: 60 }), ..Default::default() };
        let started = std::time::Instant::now();
        assert_eq!(run_for(sleep, 0).await, Ok(()));
        assert!(started.elapsed() < Duration::from_secs(30), "bounded by the hook's time, 1 s");
        let tcp = LifecycleHandler {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(80), ..Default::default() }),
            ..Default::default()
        };
        assert!(run_for(tcp, 0).await.unwrap_err().starts_with("Cannot run handler: invalid handler"));
    }
}
