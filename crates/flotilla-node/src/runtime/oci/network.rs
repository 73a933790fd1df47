//! A pod's network interface, as a CNI plugin of the flat pod network would make it: a veth
//! pair, `eth0` in the pod's network namespace holding the pod's address (/32), its peer on
//! the host routed to that address in the host's `local` table (more specific than the local
//! route of the node's whole range, which would deliver it to the host's loopback) and
//! answering ARP for the gateway (proxy ARP, the range's first address), and forwarding what
//! the pod sends to other pods. The pod's default route goes through the gateway.
//!
//! On one host the range lies in 127.0.0.0/8, which Linux keeps off the wire: both ends accept
//! loopback-range addresses (`route_localnet`), and in the pod the `local 127.0.0.0/8` route
//! is narrowed to 127.0.0.1, so that the rest of 127.0.0.0/8 (other pods, the node's Service
//! addresses) is reached through `eth0`, and `localhost` stays the pod's own.
//!
//! That opens the host's loopback to the pods' links, which is what kube-proxy's CVE-2020-8558
//! was: a container that routes 127.0.0.1 out of its own `eth0` (with `NET_ADMIN` in its
//! namespace, or by crafting frames with `NET_RAW`) would reach what listens on the node's
//! 127.0.0.1 alone (the API server, the store's peer port, the node API, anything of the
//! host's). [`guard_node_loopback`] drops that, as kube-proxy's fix does: nothing a pod starts
//! reaches 127.0.0.0/16, which a loopback pod range may not overlap; the pods' and Services'
//! addresses lie elsewhere in 127.0.0.0/8.
//!
//! Every step runs iproute2's `ip`, as `flotilla-net` programs its routes.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use flotilla_api::Cidr;

/// The file of a sandbox that names its interface, for removing it after a crash.
const SAVED: &str = "network";

/// The node's own loopback addresses, which no pod reaches: the host's services listen on
/// 127.0.0.1 (and on others of this block, as a host resolver does on 127.0.0.53).
pub(super) const NODE_LOOPBACK: &str = "127.0.0.0/16";

/// The nftables table that keeps pods off [`NODE_LOOPBACK`]: the same for every agent of the
/// host, so each writes it whole, and none removes it (it holds a rule for pods' links alone).
const GUARD_TABLE: &str = "flotilla-pods";

/// Drops what a pod's link brings for the node's own loopback addresses: every connection a
/// pod starts (one the host started, or a DNAT to an endpoint there, is not the pod's doing).
pub(super) fn guard_node_loopback() -> Result<(), String> {
    flotilla_net::nft(&format!(
        "add table ip {GUARD_TABLE}\ndelete table ip {GUARD_TABLE}\ntable ip {GUARD_TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"flp*\" ip daddr {NODE_LOOPBACK} ct state new,invalid,untracked ct status & dnat == 0 drop\n\
         \t}}\n}}\n"
    ))
    .map(drop)
    .map_err(|e| format!("keeping pods off the node's loopback: {e}"))
}

/// A pod's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodInterface {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The host end's name (`flp` and 12 hex digits of the pod's uid: at most 15 bytes).
    pub link: String,
    /// Whether the range is in 127.0.0.0/8.
    pub loopback: bool,
}

impl PodInterface {
    pub(super) fn new(pod_uid: &str, ip: Ipv4Addr, range: Cidr) -> PodInterface {
        let hash = flotilla_wasm::digest(pod_uid.as_bytes());
        PodInterface {
            ip,
            gateway: range.first(),
            link: format!("flp{}", &hash["sha256:".len()..][..12]),
            loopback: range.network.is_loopback(),
        }
    }

    /// The helper's arguments that make the pod's end (see [`make_pod_end`]).
    pub(super) fn helper_args(&self) -> Vec<String> {
        let mut args = vec![
            "--ip".into(),
            self.ip.to_string(),
            "--gateway".into(),
            self.gateway.to_string(),
            "--link".into(),
            self.link.clone(),
            "--host-pid".into(),
            std::process::id().to_string(),
        ];
        if self.loopback {
            args.push("--loopback".into());
        }
        args
    }

    /// Sets up the host's end, once the helper made the pair, and records it in the sandbox
    /// `dir` (blocking).
    pub(super) fn attach(&self, dir: &Path) -> Result<(), String> {
        std::fs::write(dir.join(SAVED), format!("{} {}", self.link, self.ip))
            .map_err(|e| format!("recording the pod's interface: {e}"))?;
        sysctl(&self.link, "proxy_arp")?;
        // What the pod sends to another pod is forwarded (only what comes in on this link:
        // the host does not become a router).
        sysctl(&self.link, "forwarding")?;
        if self.loopback {
            sysctl(&self.link, "route_localnet")?;
        }
        run_ip(&["link", "set", &self.link, "up"])?;
        let (ip_text, gateway) = (format!("{}/32", self.ip), self.gateway.to_string());
        run_ip(&["route", "replace", &ip_text, "dev", &self.link, "table", "local", "src", &gateway])
    }

    /// Removes the host's end of the interface recorded in the sandbox `dir`: its route and
    /// its link (the pod's end goes with it).
    pub(super) fn detach(dir: &Path) {
        let Ok(saved) = std::fs::read_to_string(dir.join(SAVED)) else { return };
        let mut words = saved.split_whitespace();
        let (Some(link), Some(ip)) = (words.next(), words.next()) else { return };
        let _ = run_ip(&["route", "del", &format!("{ip}/32"), "dev", link, "table", "local"]);
        let _ = run_ip(&["link", "del", link]);
        let _ = std::fs::remove_file(dir.join(SAVED));
    }
}

/// Makes the pair from inside the pod's new network namespace (the helper's), its host end
/// moved to the namespace of `host_pid` (the agent's), and sets up the pod's end.
pub(super) fn make_pod_end(
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    link: &str,
    host_pid: u32,
    loopback: bool,
) -> Result<(), String> {
    let host = host_pid.to_string();
    let (address, gw) = (format!("{ip}/32"), gateway.to_string());
    run_ip(&["link", "add", "eth0", "type", "veth", "peer", "name", link, "netns", &host])?;
    run_ip(&["addr", "add", &address, "dev", "eth0"])?;
    if loopback {
        sysctl("eth0", "route_localnet")?;
    }
    run_ip(&["link", "set", "eth0", "up"])?;
    run_ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    run_ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])?;
    if loopback {
        let own = ip.to_string();
        run_ip(&["route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"])?;
        run_ip(&["route", "add", "127.0.0.0/8", "via", &gw, "dev", "eth0", "src", &own])?;
    }
    Ok(())
}

fn sysctl(link: &str, name: &str) -> Result<(), String> {
    let path = format!("/proc/sys/net/ipv4/conf/{link}/{name}");
    std::fs::write(&path, "1").map_err(|e| format!("setting {path}: {e}"))
}

/// Runs iproute2's `ip`: its complaint, if it fails.
fn run_ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_is_named_within_the_kernels_limit_and_routes_through_the_gateway() {
        let range: Cidr = "127.44.0.0/16".parse().unwrap();
        let interface = PodInterface::new("0b5e1c7a-uid", "127.44.0.7".parse().unwrap(), range);
        assert!(interface.link.len() <= 15 && interface.link.starts_with("flp"), "{}", interface.link);
        assert_eq!(interface.gateway, Ipv4Addr::new(127, 44, 0, 1));
        assert!(interface.loopback);
        assert_ne!(interface.link, PodInterface::new("another", interface.ip, range).link);
        let routed = PodInterface::new("u", "10.244.1.5".parse().unwrap(), "10.244.1.0/24".parse().unwrap());
        assert!(!routed.loopback && routed.gateway == Ipv4Addr::new(10, 244, 1, 1));
        assert!(!routed.helper_args().contains(&"--loopback".to_string()));
    }
}
