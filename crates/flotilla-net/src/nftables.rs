//! The kernel data path, programmed as kube-proxy's nftables mode programs it
//! (`pkg/proxy/nftables`): one table of Flotilla's own, in which a connection to a frontend
//! (address, protocol, port) is DNATed to one of its endpoints. A verdict map (`service-ips`)
//! sends the frontend on. Most routes are map elements alone: the frontend goes to a fixed
//! chain `spread-<n>` for its count of endpoints, which draws one of n slots at random, and the
//! frontend and the slot map to an endpoint (`service-endpoints`). A route under
//! `sessionAffinity` (or of more endpoints than [`SPREAD`]) gets chains of its own instead, as
//! kube-proxy's do, which send a client back to its endpoint (remembered in a set with the
//! affinity's timeout) or pick one at random. Each commit is
//! one `nft -f` transaction: the kernel takes all of it or none. Only the changed Services'
//! elements and chains are rewritten (kube-proxy's partial sync), so a change costs its own
//! Service's work. The table is deleted when the path is dropped (a clean shutdown); a
//! restarted agent rebuilds it in one transaction. Connections already established keep their
//! translation in conntrack either way, so a restart drops none, but for one case: a clean
//! shutdown restores `route_localnet`, which cuts connections from a loopback source to
//! another node (a crash or kill leaves it on, with the table's drop rules).
//!
//! Frontends are loopback cluster IPs and node addresses: a connection to one with no endpoint
//! finds nothing listening and is refused. (Unless a host socket listens on the wildcard
//! address at that port: kube-proxy's reject rule for such frontends is not here yet. Nor is
//! its conntrack cleanup for UDP, whose flows keep going where they went until they idle.) Traffic from a loopback source (the host's, a
//! guest's) to an endpoint on another node is masqueraded, as is traffic from outside that is
//! forwarded under a `Cluster` traffic policy; that needs `route_localnet` and `ip_forward`,
//! which [`Nftables::new`] turns on when the node routes a pod network. Packets that arrive
//! from outside for 127.0.0.0/8 are dropped, as kube-proxy drops them when it turns
//! `route_localnet` on.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};

use flotilla_client::ObjectKey;

use crate::{DataPath, Protocol, Route};

/// The table Flotilla owns, in the `ip` family.
pub const TABLE: &str = "flotilla";
/// The packet mark that asks for masquerading (kube-proxy's bit).
const MASQUERADE_MARK: u32 = 0x4000;
/// The most endpoints a route spreads over by map elements alone: the table has a chain
/// `spread-<n>` for each count up to it. A route costs an element per endpoint, and each
/// endpoint gets an even share.
const SPREAD: usize = 64;

/// The nftables data path.
#[derive(Debug)]
pub struct Nftables {
    /// What each Service should have: kept so that a failed transaction is retried whole.
    desired: HashMap<ObjectKey, Vec<Route>>,
    /// What each Service has in the table.
    programmed: HashMap<ObjectKey, Programmed>,
    /// Services synced since the last commit.
    pending: Vec<ObjectKey>,
    /// Names each Service's chains: stable while it exists.
    ids: HashMap<ObjectKey, u64>,
    next_id: u64,
    /// The table holds what `programmed` says; otherwise the next commit rebuilds it.
    built: bool,
    /// A commit has written the table: it is this path's to delete when dropped.
    owns_table: bool,
    /// The node forwards to other nodes' pods: `None` when it does not.
    forwarding: Option<Forwarding>,
}

/// What forwarding to other nodes needed turned on.
#[derive(Debug, Default)]
struct Forwarding {
    /// `route_localnet` before, once it is on; restored when the table goes. (`ip_forward`
    /// stays on: the node still routes its pod network.)
    route_localnet_was: Option<String>,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";
/// Where the value of `route_localnet` before Flotilla's is kept until it is restored: a file
/// per network namespace (the setting is the namespace's), named after `namespace`, the link
/// `/proc/<pid>/ns/net` of a process in it (`net:[4026531840]`).
pub fn route_localnet_record(namespace: &str) -> String {
    let id: String = namespace.chars().filter(char::is_ascii_digit).collect();
    format!("/run/flotilla-route_localnet-{id}")
}

/// [`route_localnet_record`] of this process's network namespace.
fn route_localnet_was() -> String {
    let namespace = std::fs::read_link("/proc/self/ns/net").map(|n| n.display().to_string()).unwrap_or_default();
    route_localnet_record(&namespace)
}

/// A Service's part of the table.
#[derive(Debug, Default, Clone, PartialEq)]
struct Programmed {
    objects: Vec<Object>,
    elements: Vec<Element>,
}

/// An element of one of the table's maps or sets: kept as values, not text, since a table of
/// 10,000 Services holds 100,000 of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Element {
    map: &'static str,
    key: Key,
    /// What the key maps to; `None` in a set.
    value: Option<Value>,
}

/// A frontend, and its endpoint's slot for `service-endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    frontend: SocketAddrV4,
    protocol: Protocol,
    slot: Option<u8>,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} . {} . {}", self.frontend.ip(), self.protocol.name(), self.frontend.port())?;
        match self.slot {
            Some(slot) => write!(f, " . {slot}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Value {
    Endpoint(SocketAddrV4),
    Goto(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Endpoint(at) => write!(f, "{} . {}", at.ip(), at.port()),
            Value::Goto(chain) => write!(f, "goto {chain}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Object {
    /// A set of client addresses, each forgotten `timeout` seconds after its last connection.
    Affinity {
        name: String,
        timeout: u64,
    },
    Chain {
        name: String,
        rules: Vec<String>,
    },
}

impl Object {
    fn name(&self) -> &str {
        match self {
            Object::Affinity { name, .. } | Object::Chain { name, .. } => name,
        }
    }
}

impl Nftables {
    /// Whether nftables can be programmed here: `nft` is installed and this process may change
    /// the network namespace's tables (CAP_NET_ADMIN).
    pub fn available() -> Result<(), String> {
        nft("list tables\n").map(drop)
    }

    /// Deletes the table, if there is one: what a clean shutdown does, and what is left to do
    /// after an agent that was killed.
    pub fn delete_table() -> Result<(), String> {
        nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")).map(drop)
    }

    /// A data path that, when `forwarding` (the node routes a pod network to other nodes),
    /// turns on what forwarding to them needs.
    pub fn new(forwarding: bool) -> Result<Nftables, String> {
        Nftables::available()?;
        let mut path = Nftables::unbuilt();
        path.forwarding = forwarding.then(Forwarding::default);
        Ok(path)
    }

    /// Turns on forwarding and `route_localnet` once the table stands, with its rule that
    /// drops what arrives from outside for 127.0.0.0/8 (never before: that would open the
    /// node's loopback listeners to its link).
    fn turn_on_forwarding(&mut self) -> Result<(), String> {
        let Some(forwarding) = self.forwarding.as_mut().filter(|f| f.route_localnet_was.is_none()) else {
            return Ok(());
        };
        // The value before the first agent turned it on, kept where a crash leaves it: an agent
        // restarted after one finds `route_localnet` on, and must not take that for the original.
        let kept = route_localnet_was();
        let old = match std::fs::read_to_string(&kept) {
            Ok(was) => was,
            Err(_) => {
                let was = std::fs::read_to_string(ROUTE_LOCALNET).map_err(|e| format!("{ROUTE_LOCALNET}: {e}"))?;
                std::fs::write(&kept, &was).map_err(|e| format!("{kept}: {e}"))?;
                was
            }
        };
        for path in [IP_FORWARD, ROUTE_LOCALNET] {
            std::fs::write(path, "1").map_err(|e| format!("cannot turn on {path}: {e}"))?;
        }
        forwarding.route_localnet_was = Some(old.trim().to_string());
        Ok(())
    }

    /// Takes what a transaction that the kernel took made of the Services it changed.
    fn record(&mut self, changed: Vec<(ObjectKey, Programmed)>) {
        if !self.built {
            self.programmed.clear();
        }
        for (service, programmed) in changed {
            if programmed == Programmed::default() {
                self.programmed.remove(&service);
            } else {
                self.programmed.insert(service, programmed);
            }
        }
        self.built = true;
    }

    /// A path that has programmed nothing yet.
    fn unbuilt() -> Nftables {
        Nftables {
            desired: HashMap::new(),
            programmed: HashMap::new(),
            pending: Vec::new(),
            ids: HashMap::new(),
            next_id: 0,
            built: false,
            owns_table: false,
            forwarding: None,
        }
    }

    /// The transaction that brings the table to `desired` for the pending Services (every
    /// Service, when the table is to be built), and what the table then holds of them.
    fn transaction(&mut self) -> (String, Vec<(ObjectKey, Programmed)>) {
        let mut script = String::new();
        let changed: Vec<ObjectKey> = if self.built {
            self.pending.clone()
        } else {
            script.push_str(&base());
            self.desired.keys().cloned().collect()
        };
        let mut plans = Vec::new();
        let mut after = Vec::with_capacity(changed.len());
        for service in &changed {
            // Only the changed Services' part is copied: a change costs its own Service.
            let old = if self.built {
                self.programmed.get(service).cloned().unwrap_or_default()
            } else {
                Programmed::default()
            };
            let new = match self.desired.get(service) {
                Some(routes) => {
                    let id = *self.ids.entry(service.clone()).or_insert_with(|| {
                        self.next_id += 1;
                        self.next_id
                    });
                    plan(id, routes)
                }
                None => {
                    self.ids.remove(service);
                    Programmed::default()
                }
            };
            after.push((service.clone(), new.clone()));
            plans.push((old, new));
        }
        // Elements out first, so no frontend jumps to a chain being emptied; chains and sets in,
        // then their rules, then the new elements; the objects no longer wanted go last, once
        // nothing refers to them.
        let sets: Vec<(HashSet<&Element>, HashSet<&Element>)> =
            plans.iter().map(|(old, new)| (old.elements.iter().collect(), new.elements.iter().collect())).collect();
        for ((old, _), (_, new)) in plans.iter().zip(&sets) {
            for Element { map, key, .. } in old.elements.iter().filter(|e| !new.contains(e)) {
                script.push_str(&format!("delete element ip {TABLE} {map} {{ {key} }}\n"));
            }
        }
        for (old, new) in &plans {
            for object in new.objects.iter().filter(|o| !old.objects.iter().any(|was| was.name() == o.name())) {
                match object {
                    Object::Affinity { name, timeout } => script.push_str(&format!(
                        "add set ip {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}\n"
                    )),
                    Object::Chain { name, .. } => script.push_str(&format!("add chain ip {TABLE} {name}\n")),
                }
            }
        }
        for (old, new) in &plans {
            // A chain as it was is left alone: rewriting it would have the kernel validate the
            // table again for nothing.
            for object in new.objects.iter().filter(|o| !old.objects.contains(o)) {
                if let Object::Chain { name, rules } = object {
                    script.push_str(&format!("flush chain ip {TABLE} {name}\n"));
                    for rule in rules {
                        script.push_str(&format!("add rule ip {TABLE} {name} {rule}\n"));
                    }
                }
            }
        }
        for ((_, new), (old, _)) in plans.iter().zip(&sets) {
            for Element { map, key, value } in new.elements.iter().filter(|e| !old.contains(e)) {
                match value {
                    Some(value) => script.push_str(&format!("add element ip {TABLE} {map} {{ {key} : {value} }}\n")),
                    None => script.push_str(&format!("add element ip {TABLE} {map} {{ {key} }}\n")),
                }
            }
        }
        let gone = |(old, new): &(Programmed, Programmed)| -> Vec<Object> {
            old.objects.iter().filter(|o| !new.objects.iter().any(|n| n.name() == o.name())).cloned().collect()
        };
        let gone: Vec<Object> = plans.iter().flat_map(gone).collect();
        for object in &gone {
            if let Object::Chain { name, .. } = object {
                script.push_str(&format!("flush chain ip {TABLE} {name}\n"));
            }
        }
        // Chains, then the sets their rules named.
        for object in &gone {
            if let Object::Chain { name, .. } = object {
                script.push_str(&format!("delete chain ip {TABLE} {name}\n"));
            }
        }
        for object in &gone {
            if let Object::Affinity { name, .. } = object {
                script.push_str(&format!("delete set ip {TABLE} {name}\n"));
            }
        }
        (script, after)
    }
}

/// The table's fixed part, built afresh (what a previous run left is deleted in the same
/// transaction).
fn base() -> String {
    let spread: String = (1..=SPREAD)
        .map(|n| {
            format!(
                "\tchain spread-{n} {{ meta l4proto {{ tcp, udp }} dnat ip to ip daddr . meta l4proto . th dport . numgen random mod {n} map @service-endpoints; }}\n"
            )
        })
        .collect();
    format!(
        "add table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
	map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
	map service-endpoints {{ typeof ip daddr . meta l4proto . th dport . numgen random mod {SPREAD} : ip daddr . th dport; }}
	set masquerade-frontends {{ type ipv4_addr . inet_proto . inet_service; }}
	chain raw-prerouting {{ type filter hook prerouting priority -300; policy accept; iifname != \"lo\" ip daddr 127.0.0.0/8 drop; iifname != \"lo\" ip saddr 127.0.0.0/8 drop; }}
	chain nat-prerouting {{ type nat hook prerouting priority -100; policy accept; jump services; }}
	chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
	chain nat-postrouting {{ type nat hook postrouting priority 100; policy accept; ip saddr 127.0.0.0/8 ip daddr != 127.0.0.0/8 masquerade; meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} meta mark set meta mark ^ {MASQUERADE_MARK:#x} masquerade; }}
	chain services {{
		ip daddr . meta l4proto . th dport @masquerade-frontends meta mark set meta mark | {MASQUERADE_MARK:#x};
		ip daddr . meta l4proto . th dport vmap @service-ips;
	}}
{spread}}}
"
    )
}

/// A Service's chains, sets and elements, for its routes; `id` names them.
///
/// A route without affinity, of at most [`SPREAD`] endpoints, is map elements alone: its
/// frontend goes to the `spread-<n>` chain for its n endpoints, and the frontend and each slot
/// below n map to an endpoint. Adding elements asks nothing more of the kernel, where adding a
/// rule has it validate every chain of the table again (a second, at 10,000 Services). A route
/// with affinity, or more endpoints, gets chains, as kube-proxy's do.
fn plan(id: u64, routes: &[Route]) -> Programmed {
    let mut programmed = Programmed::default();
    for (r, route) in routes.iter().enumerate() {
        let SocketAddr::V4(frontend) = route.frontend else { continue };
        let endpoints: Vec<SocketAddr> = route.endpoints.iter().copied().filter(SocketAddr::is_ipv4).collect();
        if endpoints.is_empty() {
            // Nothing listens on the frontend: refused.
            continue;
        }
        let key = Key { frontend, protocol: route.protocol, slot: None };
        if route.affinity.is_none() && endpoints.len() <= SPREAD {
            if !route.keep_source {
                programmed.elements.push(Element { map: "masquerade-frontends", key, value: None });
            }
            let spread = Value::Goto(format!("spread-{}", endpoints.len()));
            programmed.elements.push(Element { map: "service-ips", key, value: Some(spread) });
            for (slot, endpoint) in endpoints.iter().enumerate() {
                let SocketAddr::V4(endpoint) = endpoint else { continue };
                programmed.elements.push(Element {
                    map: "service-endpoints",
                    key: Key { slot: Some(slot as u8), ..key },
                    value: Some(Value::Endpoint(*endpoint)),
                });
            }
            continue;
        }
        let service_chain = format!("svc-{id}-{r}");
        // Named by the endpoint, not by its place in the list, as kube-proxy names them: a
        // client kept on an endpoint by affinity stays on it when others come and go.
        let at = |e: usize| match endpoints[e] {
            SocketAddr::V4(at) => format!("{:08x}{:04x}", u32::from(*at.ip()), at.port()),
            SocketAddr::V6(_) => unreachable!("IPv4 endpoints only"),
        };
        let endpoint_chain = |e: usize| format!("ep-{id}-{r}-{}", at(e));
        // Upstream's bound on `timeoutSeconds`, a day.
        let timeout = route.affinity.map(|t| t.as_secs().clamp(1, 86_400));
        let affinity = |e: usize| format!("aff-{id}-{r}-{}-{}", at(e), timeout.unwrap_or_default());
        let mut rules = Vec::new();
        if !route.keep_source {
            rules.push(format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"));
        }
        for (e, endpoint) in endpoints.iter().enumerate() {
            let mut endpoint_rules = Vec::new();
            if let Some(timeout) = timeout {
                programmed.objects.push(Object::Affinity { name: affinity(e), timeout });
                rules.push(format!("ip saddr @{} goto {}", affinity(e), endpoint_chain(e)));
                endpoint_rules.push(format!("update @{} {{ ip saddr }}", affinity(e)));
            }
            endpoint_rules.push(format!("meta l4proto {} dnat to {endpoint}", route.protocol.name()));
            programmed.objects.push(Object::Chain { name: endpoint_chain(e), rules: endpoint_rules });
        }
        let choices: Vec<String> = (0..endpoints.len()).map(|e| format!("{e} : goto {}", endpoint_chain(e))).collect();
        rules.push(format!("numgen random mod {} vmap {{ {} }}", endpoints.len(), choices.join(", ")));
        programmed.objects.push(Object::Chain { name: service_chain.clone(), rules });
        programmed.elements.push(Element { map: "service-ips", key, value: Some(Value::Goto(service_chain)) });
    }
    programmed
}

impl DataPath for Nftables {
    fn sync(&mut self, service: &ObjectKey, routes: Vec<Route>) {
        if routes.is_empty() {
            self.desired.remove(service);
        } else {
            self.desired.insert(service.clone(), routes);
        }
        self.pending.push(service.clone());
    }

    fn commit(&mut self) -> Result<(), String> {
        if self.built && self.pending.is_empty() {
            // Nothing to write; what may have failed after the last write is forwarding.
            return self.turn_on_forwarding();
        }
        self.pending.sort();
        self.pending.dedup();
        let (script, programmed) = self.transaction();
        self.owns_table = true;
        self.pending.clear();
        match nft(&script) {
            Ok(_) => {
                self.record(programmed);
                self.turn_on_forwarding()
            }
            Err(e) => {
                // Nothing of it was applied; the next commit rebuilds the table whole.
                self.built = false;
                Err(format!("cannot program nftables: {e}"))
            }
        }
    }
}

impl Drop for Nftables {
    fn drop(&mut self) {
        if !self.owns_table {
            return;
        }
        // `route_localnet` first: the table's drop rule is what makes it safe.
        if let Some(was) = self.forwarding.as_ref().and_then(|f| f.route_localnet_was.as_ref()) {
            match std::fs::write(ROUTE_LOCALNET, was) {
                Ok(()) => drop(std::fs::remove_file(route_localnet_was())),
                Err(e) => tracing::warn!(error = %e, "cannot restore route_localnet"),
            }
        }
        if let Err(e) = Nftables::delete_table() {
            tracing::warn!(error = %e, "cannot remove the nftables table");
        }
    }
}

/// Runs `nft -f -` on `script`: one transaction.
pub fn nft(script: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let output = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(frontend: &str, endpoints: &[&str], affinity: Option<u64>, keep_source: bool) -> Route {
        Route {
            protocol: Protocol::Tcp,
            frontend: frontend.parse().unwrap(),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            affinity: affinity.map(Duration::from_secs),
            keep_source,
        }
    }

    /// Commits as [`DataPath::commit`] would, had nft taken the script; returns the script.
    fn commit(path: &mut Nftables) -> String {
        let (script, programmed) = path.transaction();
        path.record(programmed);
        path.pending.clear();
        script
    }

    /// An element as the script shows it.
    fn shown(element: &Element) -> (&'static str, String, Option<String>) {
        (element.map, element.key.to_string(), element.value.as_ref().map(ToString::to_string))
    }

    fn element(map: &'static str, key: &str, value: Option<&str>) -> (&'static str, String, Option<String>) {
        (map, key.into(), value.map(String::from))
    }

    #[test]
    fn a_route_is_elements_of_maps_or_with_affinity_chains_that_dnat() {
        let programmed = plan(
            7,
            &[
                route("127.43.0.5:80", &["10.244.1.2:8080", "10.244.2.3:8080"], None, true),
                route("10.77.0.1:30080", &["10.244.1.2:8080"], Some(60), false),
                route("127.43.0.5:81", &[], None, true),
                route("10.77.0.1:30081", &["10.244.1.2:8080"], None, false),
            ],
        );
        let elements: Vec<_> = programmed.elements.iter().map(shown).collect();
        let web: Vec<_> = elements.iter().filter(|e| e.1.starts_with("127.43.0.5")).collect();
        assert_eq!(
            web,
            [
                &element("service-ips", "127.43.0.5 . tcp . 80", Some("goto spread-2")),
                &element("service-endpoints", "127.43.0.5 . tcp . 80 . 0", Some("10.244.1.2 . 8080")),
                &element("service-endpoints", "127.43.0.5 . tcp . 80 . 1", Some("10.244.2.3 . 8080")),
            ],
            "a slot per endpoint, drawn by the chain for two"
        );
        assert!(elements.contains(&element("service-ips", "10.77.0.1 . tcp . 30080", Some("goto svc-7-1"))));
        assert!(elements.contains(&element("masquerade-frontends", "10.77.0.1 . tcp . 30081", None)));
        assert!(!elements.iter().any(|e| e.1.contains(" 81")), "no endpoints, nothing");
        let chain = |name: &str| {
            programmed.objects.iter().find_map(|o| match o {
                Object::Chain { name: n, rules } if n == name => Some(rules.clone()),
                _ => None,
            })
        };
        assert_eq!(chain("svc-7-0"), None, "slots need no chain of their own");
        assert_eq!(
            chain("svc-7-1").unwrap(),
            [
                "meta mark set meta mark | 0x4000",
                "ip saddr @aff-7-1-0af401021f90-60 goto ep-7-1-0af401021f90",
                "numgen random mod 1 vmap { 0 : goto ep-7-1-0af401021f90 }"
            ]
        );
        assert_eq!(
            chain("ep-7-1-0af401021f90").unwrap(),
            ["update @aff-7-1-0af401021f90-60 { ip saddr }", "meta l4proto tcp dnat to 10.244.1.2:8080"]
        );
        assert!(programmed.objects.contains(&Object::Affinity { name: "aff-7-1-0af401021f90-60".into(), timeout: 60 }));
    }

    #[test]
    fn a_commit_rewrites_only_the_changed_service_and_removes_what_went() {
        let mut path = Nftables::unbuilt();
        let (web, api) = (ObjectKey::new(Some("default"), "web"), ObjectKey::new(Some("default"), "api"));
        path.sync(&web, vec![route("127.43.0.5:80", &["10.244.1.2:8080", "10.244.1.3:8080"], None, true)]);
        path.sync(&api, vec![route("127.43.0.6:80", &["10.244.1.4:8080"], None, true)]);
        let first = commit(&mut path);
        assert!(first.starts_with("add table ip flotilla\ndelete table ip flotilla\n"), "{first}");
        assert!(
            first.contains(
                "add element ip flotilla service-endpoints { 127.43.0.5 . tcp . 80 . 1 : 10.244.1.3 . 8080 }"
            ),
            "{first}"
        );

        // web loses an endpoint: its slot goes and the frontend draws from one, by elements
        // alone; api is not touched.
        path.sync(&web, vec![route("127.43.0.5:80", &["10.244.1.2:8080"], None, true)]);
        let second = commit(&mut path);
        assert!(!second.contains("table ip flotilla {") && !second.contains("rule"), "no rebuild, no rule: {second}");
        let slot = "127.43.0.5 . tcp . 80 . 1";
        let (out, back) = (
            second.find("delete element ip flotilla service-ips { 127.43.0.5 . tcp . 80 }").unwrap(),
            second.find("add element ip flotilla service-ips { 127.43.0.5 . tcp . 80 : goto spread-1 }").unwrap(),
        );
        assert!(out < back, "{second}");
        assert!(second.contains(&format!("delete element ip flotilla service-endpoints {{ {slot} }}")), "{second}");
        assert!(!second.contains("10.244.1.4") && !second.contains(" . 0 "), "only what changed: {second}");

        // With affinity, web goes through chains; without web, its element goes before its
        // chains do.
        path.sync(&web, vec![route("127.43.0.5:80", &["10.244.1.2:8080"], Some(60), true)]);
        let third = commit(&mut path);
        let web_id = path.ids[&web];
        assert!(third.contains(&format!(
            "add element ip flotilla service-ips {{ 127.43.0.5 . tcp . 80 : goto svc-{web_id}-0 }}"
        )));
        assert!(third.contains("delete element ip flotilla service-endpoints { 127.43.0.5 . tcp . 80 . 0 }"));
        path.sync(&web, Vec::new());
        let fourth = commit(&mut path);
        let element = fourth.find("delete element ip flotilla service-ips { 127.43.0.5 . tcp . 80 }").unwrap();
        let chain = fourth.find(&format!("delete chain ip flotilla svc-{web_id}-0")).unwrap();
        assert!(element < chain, "{fourth}");
        assert!(fourth.ends_with(&format!("delete set ip flotilla aff-{web_id}-0-0af401021f90-60\n")), "{fourth}");
        assert!(!path.programmed.contains_key(&web) && path.programmed.contains_key(&api));

        // A failed transaction leaves the next commit to rebuild everything.
        path.built = false;
        let rebuilt = commit(&mut path);
        assert!(rebuilt.starts_with("add table") && rebuilt.contains("10.244.1.4 . 8080"), "{rebuilt}");
    }
}
