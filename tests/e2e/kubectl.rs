//! The real kubectl against `flotilla server`: every workflow runs with kubectl 1.27 and 1.33
//! (`FLOTILLA_KUBECTL_VERSIONS=1.27,1.30,1.33` picks others), each version in its own
//! namespace and with its own discovery cache.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::harness::{Ports, Server};

const KUBECTL_DIR: &str = "/usr/lib/google-cloud-sdk/bin";

pub(crate) fn versions() -> Vec<String> {
    std::env::var("FLOTILLA_KUBECTL_VERSIONS")
        .unwrap_or_else(|_| "1.27,1.33".into())
        .split(',')
        .map(|v| v.trim().to_string())
        .collect()
}

pub(crate) struct Kubectl {
    version: String,
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
    pub(crate) namespace: String,
    /// The network namespace kubectl runs in (`ip netns exec`), if not this process's.
    netns: Option<String>,
}

impl Kubectl {
    /// kubectl `version` (`1.27`) for `server`, in a namespace of its own, which this creates.
    pub(crate) fn new(version: &str, server: &Server) -> Result<Kubectl> {
        Kubectl::create(version, server, None)
    }

    /// As [`Kubectl::new`], run in the network namespace `netns`, where `server` is reachable.
    pub(crate) fn in_netns(version: &str, server: &Server, netns: &str) -> Result<Kubectl> {
        Kubectl::create(version, server, Some(netns.into()))
    }

    fn create(version: &str, server: &Server, netns: Option<String>) -> Result<Kubectl> {
        let bin = Path::new(KUBECTL_DIR).join(format!("kubectl.{version}"));
        ensure!(bin.exists(), "{} is missing: the e2e suite needs the kubectl version matrix", bin.display());
        let namespace = format!("v{}", version.replace('.', "-"));
        let kubectl = Kubectl {
            version: version.into(),
            bin,
            kubeconfig: server.kubeconfig.clone(),
            home: tempfile::tempdir()?,
            namespace,
            netns,
        };
        kubectl.ok(&["create", "namespace", &kubectl.namespace.clone()])?;
        Ok(kubectl)
    }

    /// The same kubectl in the same namespace, as whoever `kubeconfig` names.
    pub(crate) fn as_user(&self, kubeconfig: &Path) -> Result<Kubectl> {
        Ok(Kubectl {
            version: self.version.clone(),
            bin: self.bin.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
            home: tempfile::tempdir()?,
            namespace: self.namespace.clone(),
            netns: self.netns.clone(),
        })
    }

    /// The same kubectl, namespace and discovery cache, for `server` (a restarted one).
    pub(crate) fn for_server(self, server: &Server) -> Kubectl {
        Kubectl { kubeconfig: server.kubeconfig.clone(), ..self }
    }

    /// kubectl in this namespace (a `-n` in `args` still wins: it comes later).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut namespaced = vec!["-n", self.namespace.as_str()];
        namespaced.extend(args);
        self.anywhere(&namespaced)
    }

    /// kubectl with no namespace of its own: for objects of many namespaces at once.
    fn anywhere(&self, args: &[&str]) -> Command {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command.env("HOME", self.home.path()).env_remove("KUBECONFIG").stdin(Stdio::null());
        command
    }

    /// Runs kubectl without a namespace, which must succeed; returns its stdout.
    pub(crate) fn ok_anywhere(&self, args: &[&str]) -> Result<String> {
        let out = self.anywhere(args).output().with_context(|| format!("run kubectl {}", self.version))?;
        ensure!(
            out.status.success(),
            "kubectl {} {args:?} failed: {}",
            self.version,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(args).output().with_context(|| format!("run kubectl {}", self.version))
    }

    /// Runs kubectl, which must succeed; returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!("kubectl {} {:?} failed: {}", self.version, args, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl whatever comes of it; returns its stdout and stderr (for a failure's report).
    pub(crate) fn run_lossy(&self, args: &[&str]) -> String {
        match self.run(args) {
            Ok(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            Err(e) => e.to_string(),
        }
    }

    /// Runs kubectl, which must fail; returns its stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if out.status.success() {
            bail!(
                "kubectl {} {:?} succeeded, but should have failed: {}",
                self.version,
                args,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn start() -> Result<(tempfile::TempDir, Server)> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    Ok((dir, server))
}

/// The example manifests users copy (`manifests/web` at the top of the repository).
pub(crate) fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/web")
}

/// Runs `check` once per kubectl version, against one server.
fn each_version(check: impl Fn(&Kubectl) -> Result<()>) -> Result<()> {
    let (_dir, server) = start()?;
    for version in versions() {
        let kubectl = Kubectl::new(&version, &server)?;
        check(&kubectl).with_context(|| format!("with kubectl {version}"))?;
    }
    Ok(())
}

fn header(output: &str) -> Vec<&str> {
    output.lines().next().unwrap_or("").split_whitespace().collect()
}

#[test]
fn apply_creates_then_updates_by_strategic_merge() -> Result<()> {
    each_version(|k| {
        let out = k.ok(&["apply", "-f", manifests().to_str().unwrap()])?;
        ensure!(
            out.contains("deployment.apps/web created")
                && out.contains("service/web created")
                && out.contains("configmap/web-config created"),
            "{out}"
        );
        // An edited copy: new image, one env var dropped, a label added.
        let edited = tempfile::tempdir()?;
        for file in ["deployment.yaml", "service.yaml", "config.yaml"] {
            let text = std::fs::read_to_string(manifests().join(file))?;
            let text = text
                .replace("http:v1", "http:v2")
                .replace("        - name: COLOUR\n          value: blue\n", "")
                .replace(
                    "  labels:\n    app: web\nspec:\n  replicas",
                    "  labels:\n    app: web\n    tier: front\nspec:\n  replicas",
                );
            std::fs::write(edited.path().join(file), text)?;
        }
        let out = k.ok(&["apply", "-f", edited.path().to_str().unwrap()])?;
        ensure!(out.contains("deployment.apps/web configured") && out.contains("service/web unchanged"), "{out}");
        let got = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[*].name} {.metadata.labels.tier} {.metadata.generation}"])?;
        ensure!(got == "http:v2 GREETING front 2", "{got}");
        Ok(())
    })
}

#[test]
fn get_prints_upstream_columns_and_formats() -> Result<()> {
    each_version(|k| {
        k.ok(&["apply", "-f", manifests().to_str().unwrap()])?;
        let out = k.ok(&["get", "deploy"])?;
        ensure!(header(&out) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{out}");
        ensure!(out.contains("web") && out.contains("0/2"), "{out}");
        let wide = k.ok(&["get", "deploy", "-o", "wide"])?;
        ensure!(
            header(&wide) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
            "{wide}"
        );
        ensure!(wide.contains("http:v1") && wide.contains("app=web"), "{wide}");
        let svc = k.ok(&["get", "svc", "web"])?;
        ensure!(header(&svc) == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], "{svc}");
        ensure!(svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");
        let labels = k.ok(&["get", "deploy", "--show-labels"])?;
        ensure!(labels.contains("LABELS") && labels.contains("app=web"), "{labels}");
        let column = k.ok(&["get", "deploy", "-L", "app"])?;
        ensure!(header(&column).last() == Some(&"APP"), "{column}");
        let all = k.ok(&["get", "cm", "-A"])?;
        ensure!(header(&all).first() == Some(&"NAMESPACE") && all.contains(&k.namespace), "{all}");
        let yaml = k.ok(&["get", "cm", "web-config", "-o", "yaml"])?;
        ensure!(
            yaml.contains("kind: ConfigMap") && yaml.contains("mode: production") && yaml.contains("resourceVersion:"),
            "{yaml}"
        );
        let json: serde_json::Value = serde_json::from_str(&k.ok(&["get", "cm", "web-config", "-o", "json"])?)?;
        ensure!(json["metadata"]["name"] == "web-config", "{json}");
        let path = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].port}"])?;
        ensure!(path == "80", "{path}");
        Ok(())
    })
}

#[test]
fn get_watch_sees_a_later_change() -> Result<()> {
    each_version(|k| {
        k.ok(&["create", "configmap", "before", "--from-literal=a=1"])?;
        let mut watch = k.command(&["get", "cm", "-w"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let lines = lines_of(watch.stdout.take().context("kubectl's stdout")?);
        // The list comes first; once it is printed, anything created is the watch's to report.
        let seen = wait_for_line(&lines, "before");
        if seen.is_ok() {
            k.ok(&["create", "configmap", "later", "--from-literal=a=1"])?;
        }
        let later = seen.and_then(|_| wait_for_line(&lines, "later"));
        let _ = watch.kill();
        let _ = watch.wait();
        later.context("the watch did not report the configmap created after the list")
    })
}

/// A child's output, line by line, as it arrives.
pub(crate) fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// Waits (up to 30 s, so a slow machine is not a failure) for a line that starts with `name`.
fn wait_for_line(lines: &Receiver<String>, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.split_whitespace().next() == Some(name) => return Ok(()),
            Ok(_) => {}
            Err(e) => bail!("no line for {name}: {e}"),
        }
    }
}

#[test]
fn describe_label_annotate_and_patch() -> Result<()> {
    each_version(|k| {
        k.ok(&["apply", "-f", manifests().to_str().unwrap()])?;
        k.ok(&["label", "deploy", "web", "team=edge"])?;
        k.ok(&["annotate", "deploy", "web", "owner=ops"])?;
        k.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"spec":{"replicas":3}}"#])?;
        k.ok(&[
            "patch",
            "deploy",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/minReadySeconds","value":5}]"#,
        ])?;
        k.ok(&[
            "patch",
            "deploy",
            "web",
            "--type=strategic",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"ghcr.io/example/web:2.0"}]}}}}"#,
        ])?;
        let got = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels.team} {.metadata.annotations.owner} {.spec.replicas} {.spec.minReadySeconds} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[1].name}"])?;
        ensure!(got == "edge ops 3 5 ghcr.io/example/web:2.0 COLOUR", "{got}");
        let described = k.ok(&["describe", "deploy", "web"])?;
        ensure!(
            described.contains("Name:")
                && described.contains("team=edge")
                && described.contains("ghcr.io/example/web:2.0")
                && described.contains("3 desired"),
            "{described}"
        );
        let scaled = k.ok(&["scale", "deploy", "web", "--replicas=4"])?;
        ensure!(scaled.contains("scaled"), "{scaled}");
        ensure!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])? == "4");
        Ok(())
    })
}

#[test]
fn server_side_apply_owns_fields_and_conflicts() -> Result<()> {
    each_version(|k| {
        let web = manifests();
        let web = web.to_str().unwrap();
        let out = k.ok(&["apply", "--server-side", "-f", web])?;
        ensure!(out.contains("deployment.apps/web serverside-applied"), "{out}");
        let managers = k.ok(&[
            "get",
            "deploy",
            "web",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[?(@.operation==\"Apply\")].manager}",
        ])?;
        ensure!(managers == "kubectl", "{managers}");
        // Someone else takes the replica count; applying the manifest again must not silently undo it.
        k.ok(&["scale", "deploy", "web", "--replicas=5"])?;
        let conflict = k.fails(&["apply", "--server-side", "-f", web])?;
        ensure!(conflict.contains("conflict") && conflict.contains(".spec.replicas"), "{conflict}");
        let out = k.ok(&["apply", "--server-side", "--force-conflicts", "-f", web])?;
        ensure!(out.contains("serverside-applied"), "{out}");
        ensure!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])? == "2");

        // An object applied client-side moves to server-side apply without conflicts.
        k.ok(&["create", "configmap", "moved", "--from-literal=a=1", "--dry-run=client", "-o", "yaml"]).and_then(
            |yaml| {
                let file = tempfile::NamedTempFile::new()?;
                std::fs::write(file.path(), yaml)?;
                let path = file.path().to_str().unwrap();
                k.ok(&["apply", "-f", path])?;
                k.ok(&["apply", "--server-side", "-f", path])
            },
        )?;
        Ok(())
    })
}

#[test]
fn create_from_literals_explain_and_api_resources() -> Result<()> {
    each_version(|k| {
        k.ok(&["create", "configmap", "settings", "--from-literal=a=1", "--from-literal=b=2"])?;
        k.ok(&["create", "secret", "generic", "creds", "--from-literal=password=hunter2"])?;
        ensure!(k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.b}"])? == "2");
        ensure!(k.ok(&["get", "secret", "creds", "-o", "jsonpath={.data.password}"])? == "aHVudGVyMg==");
        let explained = k.ok(&["explain", "pod.spec.containers"])?;
        ensure!(explained.contains("containers") && explained.contains("image"), "{explained}");
        let resources = k.ok(&["api-resources"])?;
        for line in ["deployments", "deploy", "apps/v1", "Deployment"] {
            ensure!(resources.contains(line), "{line} missing from {resources}");
        }
        Ok(())
    })
}

#[test]
fn delete_waits_until_gone_and_deletes_all_and_categories() -> Result<()> {
    each_version(|k| {
        k.ok(&["apply", "-f", manifests().to_str().unwrap()])?;
        let out = k.ok(&["delete", "deploy", "web"])?;
        ensure!(out.contains("deployment.apps \"web\" deleted"), "{out}");
        ensure!(k.fails(&["get", "deploy", "web"])?.contains("NotFound"));
        for i in 0..3 {
            k.ok(&["create", "configmap", &format!("bulk-{i}"), "--from-literal=x=y"])?;
        }
        let nothing_left = |resource: &str| -> Result<()> {
            let left = k.run(&["get", resource])?;
            let left = String::from_utf8_lossy(&left.stderr).into_owned() + &String::from_utf8_lossy(&left.stdout);
            ensure!(left.contains("No resources found"), "{resource} left: {left}");
            Ok(())
        };
        let out = k.ok(&["delete", "cm", "--all"])?;
        ensure!(out.contains("bulk-2"), "{out}");
        nothing_left("cm")?;
        // The `all` category, as kubectl expands it from discovery.
        let out = k.ok(&["delete", "all", "--all"])?;
        ensure!(out.contains("service \"web\" deleted"), "{out}");
        nothing_left("all")
    })
}

#[test]
fn users_see_upstreams_errors() -> Result<()> {
    each_version(|k| {
        let bad = tempfile::NamedTempFile::new()?;
        std::fs::write(
            bad.path(),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  containers:\n  - name: c\n    imagez: x\n",
        )?;
        let err = k.fails(&["apply", "-f", bad.path().to_str().unwrap()])?;
        ensure!(err.contains("strict decoding error: unknown field \"spec.containers[0].imagez\""), "{err}");
        let err = k.fails(&["apply", "--validate=false", "-f", bad.path().to_str().unwrap()])?;
        ensure!(
            err.contains("The Pod \"bad\" is invalid") && err.contains("spec.containers[0].image: Required value"),
            "{err}"
        );

        k.ok(&["create", "configmap", "stale", "--from-literal=a=1"])?;
        let live = k.ok(&["get", "cm", "stale", "-o", "yaml"])?;
        k.ok(&["patch", "cm", "stale", "-p", r#"{"data":{"a":"2"}}"#])?;
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), live)?;
        let err = k.fails(&["replace", "-f", file.path().to_str().unwrap()])?;
        ensure!(err.contains("Conflict") && err.contains("the object has been modified"), "{err}");

        let err = k.fails(&["get", "pod", "missing"])?;
        ensure!(err.contains("Error from server (NotFound): pods \"missing\" not found"), "{err}");
        Ok(())
    })
}

#[test]
fn events_expire_once_unchanged_for_the_event_ttl() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Ports::free(), &["--event-ttl", "3s"])?;
    let k = Kubectl::new("1.33", &server)?;
    let event = |name: &str, count: u32| {
        format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: {name}\ninvolvedObject:\n  kind: ConfigMap\n  name: c\n  namespace: {}\nreason: Tested\nmessage: count {count}\ncount: {count}\ntype: Normal\n",
            k.namespace
        )
    };
    crate::pods::apply(&k, &event("idle", 1))?;
    crate::pods::apply(&k, &event("busy", 1))?;
    // One left alone goes within the TTL and a sweep; one written again all the while stays.
    let started = Instant::now();
    let mut count = 1;
    let gone = loop {
        count += 1;
        crate::pods::apply(&k, &event("busy", count))?;
        let names = k.ok(&["get", "events", "-o", "jsonpath={.items[*].metadata.name}"])?;
        if !names.split_whitespace().any(|n| n == "idle") {
            break started.elapsed();
        }
        ensure!(started.elapsed() < Duration::from_secs(20), "the idle Event outlived its TTL: {names}");
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(gone >= Duration::from_secs(2), "the idle Event went after {gone:?}, before its TTL");
    ensure!(k.ok(&["get", "event", "busy", "-o", "jsonpath={.count}"])? == count.to_string());
    // Then left alone, it goes too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while k.ok(&["get", "events", "-o", "name"])?.contains("busy") {
        ensure!(Instant::now() < deadline, "the busy Event outlived its TTL once left alone");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
