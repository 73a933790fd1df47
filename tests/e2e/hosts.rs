//! A cluster of three hosts: network namespaces this test creates (a `switch` holding a bridge,
//! and a veth pair from it to each host, with addresses in 10.77.0.0/24 that exist only in
//! them), `flotilla server` and its node on the first and `flotilla agent` on the others, each
//! node with a pod range of 10.244.0.0/16 that the agents route to each other (flannel's
//! `host-gw`), and Services carried by the kernel (`--proxy-mode nftables`). Pods on different
//! hosts reach each other by pod IP and see the caller's own address; a Service's cluster IP
//! spreads over pods on all three hosts from every host, and from a guest by name; its node port
//! answers on every host; the cluster DNS answers on each; a Service with no endpoint refuses;
//! a connection through a cluster IP outlives the restart of its host's agent; and a host whose
//! agent restarts keeps its routes and is back in rotation.
//!
//! A second cluster of two hosts keeps its pods on loopback ranges (127.44.i.0/24, what an
//! unprivileged node uses) with the userspace data path: no route can carry them, and the
//! agents tunnel to each other's pods instead; pods reach each other by IP with the caller's
//! own address, a Service spreads over both hosts from each, a guest's own socket reaches a pod
//! on the other host, and a node API refuses tunnels to anyone but a node, and to anything but
//! its own pods from the caller's.
//!
//! Needs root (`ip netns`, `nft`); runs when `FLOTILLA_E2E_NETNS=1`, which `scripts/test` sets.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flotilla_examples as examples;

use crate::harness::{Server, flotilla_bin};
use crate::kubectl::Kubectl;
use crate::nodes::Agent;
use crate::pods::{apply, import};
use crate::services::{answer_in, command_in, curl_in, dig_in, spread_over_in};

/// Runs `ip` with `args`; fails with its complaint.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The test's hosts, as network namespaces on one switch; deleted when dropped.
struct Hosts {
    prefix: String,
    count: usize,
    pods: PodNetwork,
}

/// How the hosts' pods reach each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PodNetwork {
    /// Ranges of 10.244.0.0/16, routed; Services through nftables.
    Routed,
    /// Ranges of 127.44.0.0/16, tunneled; Services through the userspace relay.
    Tunneled,
}

impl Hosts {
    fn create(count: usize, pods: PodNetwork) -> Result<Hosts> {
        // Made first, so that whatever part of the setup was made is deleted. Named apart per
        // test: the tests of one run share the process.
        let kind = if pods == PodNetwork::Routed { "r" } else { "t" };
        let hosts = Hosts { prefix: format!("fl{}{kind}", std::process::id()), count, pods };
        let switch = hosts.switch();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 1..=count {
            let (host, port) = (hosts.name(i), format!("h{i}"));
            ip(&["netns", "add", &host])?;
            ip(&["link", "add", "eth0", "netns", &host, "type", "veth", "peer", "name", &port, "netns", &switch])?;
            ip(&["-n", &host, "addr", "add", &format!("{}/24", Hosts::address(i)), "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
        }
        Ok(hosts)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Host `i`'s network namespace (from 1).
    fn name(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn address(i: usize) -> String {
        format!("10.77.0.{i}")
    }

    fn pod_range(&self, i: usize) -> String {
        match self.pods {
            PodNetwork::Routed => format!("10.244.{i}.0/24"),
            PodNetwork::Tunneled => format!("127.44.{i}.0/24"),
        }
    }

    /// `flotilla` with `args` on host `i`.
    fn flotilla(&self, i: usize, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name(i)]).arg(flotilla_bin()).args(args);
        command
    }

    /// The node options of host `i`: its name, address, pod range and data path (the kernel's
    /// where pods are routed: each host is a network namespace of its own).
    fn node_args(&self, i: usize) -> Vec<String> {
        let address = Hosts::address(i);
        let proxy_mode = if self.pods == PodNetwork::Routed { "nftables" } else { "userspace" };
        [
            "--node-name".into(),
            format!("host-{i}"),
            "--node-ip".into(),
            address.clone(),
            "--node-listen".into(),
            format!("{address}:10250"),
            "--pod-cidr".into(),
            self.pod_range(i),
            crate::harness::EVICTION_HARD[0].into(),
            crate::harness::EVICTION_HARD[1].into(),
            "--proxy-mode".into(),
            proxy_mode.into(),
        ]
        .into()
    }

    /// Starts `flotilla server` and its node on host 1, keeping its state in `dir` (which gets
    /// the test's images): it and its join token.
    fn server(&self, dir: &tempfile::TempDir) -> Result<(Server, String)> {
        import(dir.path(), examples::P2_HTTP, "http:v2")?;
        import(dir.path(), examples::P2_HANDLER, "handler:v1")?;
        let api = format!("{}:6443", Hosts::address(1));
        let mut args: Vec<String> =
            ["server", "--listen", &api, "--peer-listen", "127.0.0.1:2380", "--data-dir"].map(String::from).into();
        args.push(dir.path().to_str().context("a UTF-8 path")?.into());
        args.extend(self.node_args(1));
        let command = self.flotilla(1, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let server = Server::spawn(command, &api, "127.0.0.1:2380")?;
        let token = std::fs::read_to_string(dir.path().join("node-token"))?.trim().to_string();
        Ok((server, token))
    }

    /// kubectl on host 1, once every host's node is registered and Ready.
    fn kubectl(&self, server: &Server) -> Result<Kubectl> {
        let k = Kubectl::in_netns("1.33", server, &self.name(1))?;
        let want = (1..=self.count).map(|i| format!("host-{i}")).collect::<Vec<_>>().join(" ");
        eventually(
            "nodes",
            || k.ok(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]),
            |names| *names == want,
        )?;
        k.ok(&["wait", "--for=condition=Ready", "node", "--all", "--timeout=60s"])?;
        Ok(k)
    }

    /// Starts `flotilla agent` on host `i`, joining the server on host 1.
    fn agent(&self, i: usize, token: &str, data_dir: &Path) -> Result<Agent> {
        let server = format!("https://{}:6443", Hosts::address(1));
        let mut args: Vec<String> =
            ["agent", "--server", &server, "--token", token, "--data-dir"].map(String::from).into();
        args.push(data_dir.to_str().context("a UTF-8 path")?.into());
        args.extend(self.node_args(i));
        Agent::spawn(self.flotilla(i, &args.iter().map(String::as_str).collect::<Vec<_>>()))
    }

    /// The routes host `i` holds to other hosts' pods: `range via address` each.
    fn pod_routes(&self, i: usize) -> Result<BTreeSet<String>> {
        let proto = flotilla_net::ROUTE_PROTOCOL.to_string();
        let out =
            Command::new("ip").args(["-n", &self.name(i), "-4", "-o", "route", "show", "proto", &proto]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| line.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect())
    }
}

/// A connection from host `i` to `to`, held open by a Python client, which sends its request
/// only when told to.
struct Held(std::process::Child);

impl Held {
    fn open(hosts: &Hosts, i: usize, to: &str) -> Result<Held> {
        use std::io::BufRead;
        let script = format!(
            "import socket, sys\n\
             s = socket.create_connection(('{to}', 80), timeout=20)\n\
             print('connected', flush=True)\n\
             sys.stdin.readline()\n\
             s.sendall(b'GET / HTTP/1.1\\r\\nHost: held\\r\\nConnection: close\\r\\n\\r\\n')\n\
             data = b''\n\
             while chunk := s.recv(65536): data += chunk\n\
             print(data.decode().split('\\r\\n\\r\\n', 1)[-1], end='')\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &hosts.name(i), "python3", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().context("piped stdout")?).read_line(&mut line)?;
        ensure!(line == "connected\n", "the held connection did not open: {line:?}");
        Ok(Held(child))
    }

    /// Sends the request now; the response's body.
    fn finish(mut self) -> Result<String> {
        use std::io::Write;
        writeln!(self.0.stdin.as_mut().context("piped stdin")?)?;
        let out = self.0.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `nft list map` of the Flotilla table's `map` in network namespace `netns`.
fn table_map(netns: &str, map: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "map", "ip", flotilla_net::TABLE, map])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a datagram from host `i` to `to` brings back within a second, if anything.
fn udp_ask(hosts: &Hosts, i: usize, to: &str, port: u16) -> Result<Option<String>> {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(1)\n\
         s.sendto(b'hello', ('{to}', {port}))\n\
         try:\n    print(s.recv(1500).decode(), end='')\n\
         except OSError:\n    pass\n"
    );
    let out = Command::new("ip").args(["netns", "exec", &hosts.name(i), "python3", "-c", &script]).output()?;
    ensure!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((!answer.is_empty()).then_some(answer))
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 1..=self.count {
            // What a killed agent keeps of its namespace's route_localnet, named by it.
            let namespace =
                Command::new("ip").args(["netns", "exec", &self.name(i), "readlink", "/proc/self/ns/net"]).output();
            if let Ok(out) = namespace {
                let _ =
                    std::fs::remove_file(flotilla_net::route_localnet_record(&String::from_utf8_lossy(&out.stdout)));
            }
            let _ = ip(&["netns", "del", &self.name(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

/// A pod of `image` on host `i`, labelled `app`, serving HTTP on 8080.
fn pod(name: &str, i: usize, image: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {app}\nspec:\n  nodeName: host-{i}\n  containers:\n  - name: {name}\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    env:\n    - name: POD_IP\n      valueFrom:\n        fieldRef:\n          fieldPath: status.podIP\n    ports:\n    - name: http\n      containerPort: 8080\n    readinessProbe:\n      tcpSocket:\n        port: 8080\n      periodSeconds: 1\n"
    )
}

/// Waits until `check` holds of what `read` returns (30 s at most).
fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut read: impl FnMut() -> Result<T>,
    check: impl Fn(&T) -> bool,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = read()?;
        if check(&value) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what}: still {value:?} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn pods_on_three_hosts_reach_each_other_and_their_services() -> Result<()> {
    if std::env::var_os("FLOTILLA_E2E_NETNS").is_none() {
        eprintln!("skipped: set FLOTILLA_E2E_NETNS=1 (as root) to run hosts in network namespaces (scripts/test does)");
        return Ok(());
    }
    let hosts = Hosts::create(3, PodNetwork::Routed)?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let (server, token) = hosts.server(&dirs[0])?;
    for dir in &dirs[1..] {
        import(dir.path(), examples::P2_HTTP, "http:v2")?;
        import(dir.path(), examples::P2_HANDLER, "handler:v1")?;
    }
    let mut agent2 = hosts.agent(2, &token, dirs[1].path())?;
    let mut agent3 = hosts.agent(3, &token, dirs[2].path())?;
    let k = hosts.kubectl(&server)?;

    // Each host routes the others' pod ranges via their addresses.
    for i in 1..=3 {
        let want: BTreeSet<String> =
            (1..=3).filter(|j| *j != i).map(|j| format!("{} via {}", hosts.pod_range(j), Hosts::address(j))).collect();
        eventually(&format!("host {i}'s routes"), || hosts.pod_routes(i), |routes| *routes == want)?;
    }

    for i in 1..=3 {
        apply(&k, &pod(&format!("web-{i}"), i, "http:v2", "web"))?;
    }
    apply(&k, &pod("caller", 1, "handler:v1", "caller"))?;
    k.ok(&["wait", "--for=condition=Ready", "pod", "--all", "--timeout=60s"])?;
    let pod_ip = |name: &str| k.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
    let caller = pod_ip("caller")?;
    ensure!(caller.starts_with("10.244.1."), "the caller's address is from host 1's range: {caller}");

    // Pod to pod across hosts, by IP, from the caller's own address: the peer sees who called.
    let h1 = Some(hosts.name(1));
    let h1 = h1.as_deref();
    for i in 2..=3 {
        let web = pod_ip(&format!("web-{i}"))?;
        ensure!(web.starts_with(&format!("10.244.{i}.")), "web-{i} is at {web}");
        let called = answer_in(h1, &format!("http://{caller}:8080/?call={web}:8080/peer"))?;
        ensure!(called.starts_with(&format!("called {web}:8080/peer: {caller}:")), "{called}");
        // And from the host itself, across the switch.
        let direct = answer_in(h1, &format!("http://{web}:8080/"))?;
        ensure!(direct == format!("hello from web-{i} at /\n"), "{direct}");
    }

    // A Service over the three hosts' pods: its cluster IP spreads over all of them from every
    // host, and a guest calls it by name.
    k.ok(&["expose", "pod", "web-1", "--name=web", "--selector=app=web", "--port=80", "--target-port=http"])?;
    let cluster_ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let all: BTreeSet<String> = (1..=3).map(|i| format!("web-{i}")).collect();
    for i in 1..=3 {
        let host = hosts.name(i);
        let seen = spread_over_in(Some(&host), &format!("http://{cluster_ip}/"), 3)?;
        ensure!(seen == all, "from host {i}: {seen:?}");
    }
    let by_name = answer_in(h1, &format!("http://{caller}:8080/?call=web"))?;
    ensure!(by_name.starts_with("called web: hello from web-"), "{by_name}");

    // Its node port answers on every host's address.
    k.ok(&["patch", "svc", "web", "-p", r#"{"spec":{"type":"NodePort"}}"#])?;
    let node_port = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"])?;
    for i in 1..=3 {
        let answered = answer_in(h1, &format!("http://{}:{node_port}/", Hosts::address(i)))?;
        ensure!(answered.starts_with("hello from web-"), "host {i}'s node port: {answered}");
    }

    // Under ClientIP affinity a host's connections all go to one pod (through chains of the
    // table, rather than its map).
    k.ok(&["patch", "svc", "web", "-p", r#"{"spec":{"sessionAffinity":"ClientIP"}}"#])?;
    let h2 = Some(hosts.name(2));
    let host2 = hosts.name(2);
    eventually(
        "affinity in host 2's table",
        || table_map(&host2, "service-ips"),
        |map| map.contains(&format!("{cluster_ip} . tcp . 80 : goto svc-")),
    )?;
    let first = answer_in(h2.as_deref(), &format!("http://{cluster_ip}/"))?;
    for _ in 0..10 {
        ensure!(answer_in(h2.as_deref(), &format!("http://{cluster_ip}/"))? == first, "affinity kept to {first}");
    }
    k.ok(&["patch", "svc", "web", "-p", r#"{"spec":{"sessionAffinity":"None"}}"#])?;

    // The cluster DNS answers on every host.
    let dns = k.ok(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"])?;
    let name = format!("web.{}.svc.cluster.local", k.namespace);
    for i in 1..=3 {
        let host = hosts.name(i);
        let (status, answers) = eventually(
            &format!("{name} on host {i}"),
            || dig_in(Some(&host), &dns, &name, "A"),
            |(_, a)| *a == [cluster_ip.clone()],
        )?;
        ensure!(status == "NOERROR", "{status} {answers:?}");
    }

    // The kernel carries it: each host's table maps the cluster IP.
    for i in 1..=3 {
        let host = hosts.name(i);
        eventually(
            &format!("host {i}'s table"),
            || table_map(&host, "service-endpoints"),
            |map| map.contains(&format!("{cluster_ip} . tcp . 80 . 0 : 10.244.")),
        )?;
    }

    // A UDP Service: datagrams reach a pod on another host through its cluster IP.
    let udp = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: udp-3\n  labels:\n    app: udp\nspec:\n  nodeName: host-3\n  containers:\n  - name: udp\n    image: http:v2\n    imagePullPolicy: IfNotPresent\n    env:\n    - name: PROTOCOL\n      value: udp\n    - name: PORT\n      value: \"5353\"\n    - name: POD_IP\n      valueFrom:\n        fieldRef:\n          fieldPath: status.podIP\n    ports:\n    - containerPort: 5353\n      protocol: UDP\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: udp\nspec:\n  selector:\n    app: udp\n  ports:\n  - port: 53\n    targetPort: 5353\n    protocol: UDP\n";
    apply(&k, udp)?;
    k.ok(&["wait", "--for=condition=Ready", "pod/udp-3", "--timeout=60s"])?;
    let udp_ip = k.ok(&["get", "svc", "udp", "-o", "jsonpath={.spec.clusterIP}"])?;
    eventually(
        "a datagram through the UDP Service",
        || udp_ask(&hosts, 1, &udp_ip, 53),
        |answer| answer.as_deref() == Some("hello from udp-3 over udp\n"),
    )?;

    // A Service with no endpoint refuses at once.
    k.ok(&["create", "service", "clusterip", "nothing", "--tcp=80:8080"])?;
    let nothing = k.ok(&["get", "svc", "nothing", "-o", "jsonpath={.spec.clusterIP}"])?;
    ensure!(curl_in(h1, &format!("http://{nothing}/"))? == Err(7), "refused, not hung");

    // Unless it scales from zero: then the kernel leads its cluster IP to the node's activator,
    // which holds the request while the function is woken, on whichever host it lands.
    k.ok(&["create", "deployment", "fn", "--image=handler:v1", "--port=8080", "--replicas=0"])?;
    k.ok(&["expose", "deployment", "fn", "--port=80", "--target-port=8080"])?;
    apply(&k, crate::serverless::AUTOSCALER)?;
    let fn_ip = k.ok(&["get", "svc", "fn", "-o", "jsonpath={.spec.clusterIP}"])?;
    eventually(
        "the activator in host 2's table",
        || table_map(&host2, "service-endpoints"),
        |map| map.contains(&format!("{fn_ip} . tcp . 80 . 0 : {} . ", Hosts::address(2))),
    )?;
    let woken = curl_in(h2.as_deref(), &format!("http://{fn_ip}/"))?;
    ensure!(woken.as_ref().is_ok_and(|body| body.starts_with("hello from fn-")), "from zero: {woken:?}");

    // An established connection through a cluster IP outlives the restart of its host's agent:
    // conntrack holds its translation, and the agent rebuilds its table around it.
    k.ok(&["expose", "pod", "caller", "--port=80", "--target-port=8080"])?;
    let caller_ip = k.ok(&["get", "svc", "caller", "-o", "jsonpath={.spec.clusterIP}"])?;
    eventually(
        "the caller Service",
        || Ok(curl_in(Some(&hosts.name(2)), &format!("http://{caller_ip}/"))?.ok()),
        |body| body.as_deref().is_some_and(|b| b.starts_with("hello from caller")),
    )?;
    let held = Held::open(&hosts, 2, &caller_ip)?;
    drop(agent2);
    agent2 = hosts.agent(2, &token, dirs[1].path())?;
    k.ok(&["wait", "--for=condition=Ready", "pod/web-2", "--timeout=60s"])?;
    let body = held.finish()?;
    ensure!(body.contains("hello from caller at /"), "the held connection: {body:?}");

    // Host 3's agent restarts: it finds its routes as it left them, and its pod is back in
    // rotation everywhere.
    drop(agent3);
    let routes = hosts.pod_routes(3)?;
    ensure!(routes.len() == 2, "the routes outlive the agent: {routes:?}");
    agent3 = hosts.agent(3, &token, dirs[2].path())?;
    let web3 = pod_ip("web-3")?;
    eventually(
        "web-3 after its agent restarted",
        || Ok(curl_in(h1, &format!("http://{web3}:8080/"))?.ok()),
        |body| body.as_deref() == Some("hello from web-3 at /\n"),
    )?;
    k.ok(&["wait", "--for=condition=Ready", "pod/web-3", "--timeout=60s"])?;
    let seen = spread_over_in(Some(&hosts.name(2)), &format!("http://{cluster_ip}/"), 3)?;
    ensure!(seen == all, "after the restart: {seen:?}");
    ensure!(hosts.pod_routes(3)? == routes, "the restarted agent keeps its routes");
    drop((agent2, agent3));
    Ok(())
}

#[test]
fn pods_on_hosts_without_routes_reach_each_other_through_tunnels() -> Result<()> {
    if std::env::var_os("FLOTILLA_E2E_NETNS").is_none() {
        eprintln!("skipped: set FLOTILLA_E2E_NETNS=1 (as root) to run hosts in network namespaces (scripts/test does)");
        return Ok(());
    }
    let hosts = Hosts::create(2, PodNetwork::Tunneled)?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    import(dirs[0].path(), examples::P2_ESCAPE, "client:v1")?;
    let (server, token) = hosts.server(&dirs[0])?;
    import(dirs[1].path(), examples::P2_HTTP, "http:v2")?;
    let agent2 = hosts.agent(2, &token, dirs[1].path())?;
    let k = hosts.kubectl(&server)?;
    for i in 1..=2 {
        apply(&k, &pod(&format!("web-{i}"), i, "http:v2", "web"))?;
    }
    apply(&k, &pod("caller", 1, "handler:v1", "caller"))?;
    k.ok(&["wait", "--for=condition=Ready", "pod", "--all", "--timeout=60s"])?;
    for i in 1..=2 {
        ensure!(hosts.pod_routes(i)?.is_empty(), "loopback ranges are not routed");
    }
    let pod_ip = |name: &str| k.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
    let (caller, web1, web2) = (pod_ip("caller")?, pod_ip("web-1")?, pod_ip("web-2")?);
    ensure!(caller.starts_with("127.44.1.") && web2.starts_with("127.44.2."), "{caller} {web2}");
    let (h1, h2) = (hosts.name(1), hosts.name(2));

    // Pod to pod across hosts through the tunnel, and the callee sees the caller's own address.
    let called = answer_in(Some(&h1), &format!("http://{caller}:8080/?call={web2}:8080/peer"))?;
    ensure!(called.starts_with(&format!("called {web2}:8080/peer: {caller}:")), "{called}");

    // A Service over both hosts' pods spreads from each, through the relay and the tunnels.
    k.ok(&["expose", "pod", "web-1", "--name=web", "--selector=app=web", "--port=80", "--target-port=http"])?;
    let cluster_ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let both: BTreeSet<String> = ["web-1".into(), "web-2".into()].into();
    for host in [&h1, &h2] {
        let seen = spread_over_in(Some(host), &format!("http://{cluster_ip}/"), 2)?;
        ensure!(seen == both, "from {host}: {seen:?}");
    }

    // A guest's own socket, to a pod on the other host by IP and to the Service by name. Its
    // socket is not bound to its pod's address, so the callee sees host 1's range, not a pod
    // (and never the far host's own 127.0.0.1).
    let client = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  nodeName: host-1\n  restartPolicy: Never\n  containers:\n  - name: client\n    image: client:v1\n    imagePullPolicy: IfNotPresent\n    env:\n    - {{name: MODE, value: connect}}\n    - {{name: GET, value: /peer}}\n    - {{name: TARGETS, value: \"{web2}:8080,web:80\"}}\n"
    );
    apply(&k, &client)?;
    k.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/client", "--timeout=60s"])?;
    let said = k.ok(&["logs", "client"])?;
    ensure!(said.contains(&format!("connect {web2}:8080: ok 127.44.1.0:")), "{said}");
    ensure!(said.contains("connect web:80: ok 127."), "{said}");

    // The node API tunnels for nodes only, to its own pods only, from the caller's only.
    let tunnel = |credentials: &[&str], path: &str| -> Result<String> {
        let url = format!("https://{}:10250{path}", Hosts::address(1));
        let out = command_in(Some(&h2), "curl")
            .args(["-sk", "--http1.1", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(credentials)
            .arg(&url)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let pki = dirs[1].path().join("pki");
    let (cert, key) = (pki.join("node.crt"), pki.join("node.key"));
    let node = ["--cert", cert.to_str().context("a UTF-8 path")?, "--key", key.to_str().context("a UTF-8 path")?];
    let upgrade = ["-H", "Connection: Upgrade", "-H", "Upgrade: flotilla-tunnel"];
    let with = |extra: &[&'static str]| -> Vec<&str> { node.iter().copied().chain(extra.iter().copied()).collect() };
    ensure!(tunnel(&upgrade, &format!("/tunnel/{web1}:8080"))? == "401", "anonymous");
    // The admin, and a node the cluster's CA vouches for but that is no peer of host 1.
    let server_pki = dirs[0].path().join("pki");
    let (admin_cert, admin_key) = (server_pki.join("admin.crt"), server_pki.join("admin.key"));
    let admin =
        ["--cert", admin_cert.to_str().context("a UTF-8 path")?, "--key", admin_key.to_str().context("a UTF-8 path")?];
    let admin: Vec<&str> = admin.iter().copied().chain(upgrade).collect();
    ensure!(tunnel(&admin, &format!("/tunnel/{web1}:8080"))? == "403", "the admin");
    let stranger = flotilla_auth::pki::Authority::load_or_create(&server_pki, "ca", "flotilla-ca")?
        .issue_key(&flotilla_auth::pki::Profile::node("host-9"))?;
    let stranger_dir = tempfile::tempdir()?;
    let (stranger_cert, stranger_key) = (stranger_dir.path().join("n.crt"), stranger_dir.path().join("n.key"));
    std::fs::write(&stranger_cert, &stranger.cert_pem)?;
    std::fs::write(&stranger_key, &stranger.key_pem)?;
    let stranger = [
        "--cert",
        stranger_cert.to_str().context("a UTF-8 path")?,
        "--key",
        stranger_key.to_str().context("a UTF-8 path")?,
    ];
    let stranger: Vec<&str> = stranger.iter().copied().chain(upgrade).collect();
    ensure!(tunnel(&stranger, &format!("/tunnel/{web1}:8080"))? == "403", "a node that is no peer");
    ensure!(tunnel(&with(&upgrade), "/tunnel/127.0.0.1:2380")? == "403", "the store's peer port");
    ensure!(tunnel(&with(&upgrade), &format!("/tunnel/{web2}:8080"))? == "403", "another node's pod");
    ensure!(tunnel(&with(&upgrade), &format!("/tunnel/{web1}:8080?from=127.0.0.1"))? == "403", "a spoofed source");
    // A host service on every address answers at a pod's address too: not through a tunnel.
    let mut host_service = command_in(Some(&h1), "python3")
        .args(["-c", "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 7777))\ns.listen()\ntime.sleep(60)"])
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let answered = tunnel(&with(&upgrade), &format!("/tunnel/{web1}:7777"));
    let _ = host_service.kill();
    let _ = host_service.wait();
    ensure!(answered? == "503", "a host service behind a pod's address");
    ensure!(tunnel(&with(&[]), &format!("/tunnel/{web1}:8080"))? == "400", "not an upgrade");
    let made = tunnel(&with(&upgrade), &format!("/tunnel/{web1}:8080"))?;
    ensure!(made == "101", "a node to a pod: {made}");
    drop(agent2);
    Ok(())
}
