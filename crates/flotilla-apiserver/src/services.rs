//! Addresses of Services: a cluster IP from the service range and, for NodePort and
//! LoadBalancer services, node ports. Each allocation is a key written in the same transaction
//! as the Service (and deleted with it), so two Services can never be given the same address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use flotilla_api::resource::ResourceDef;
use flotilla_api::{ApiError, Cidr, FieldError};
use flotilla_store::{KeyRange, RangeRequest, Store};
use serde_json::{Value, json};

use crate::error::Result;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
/// Upstream's default node port range.
const NODE_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

#[derive(Clone, Debug)]
pub(crate) struct Allocator {
    store: Store,
    range: Cidr,
}

impl Allocator {
    pub(crate) fn new(store: Store, range: Cidr) -> Self {
        Allocator { store, range }
    }

    /// Gives a Service its addresses, on create (`old` is `None`) and on update, as upstream's
    /// service storage does (`alloc.go`): what the Service already holds it keeps (an update
    /// that leaves out its cluster IP or a port's node port keeps the old one), what it asks
    /// for anew must be in range and free, and what it no longer needs is freed. Returns the
    /// allocation keys to create and those to delete, in the write's transaction.
    pub(crate) async fn allocate(&self, service: &mut Value, old: Option<&Value>) -> Result<Allocation> {
        let name = service.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let held: BTreeSet<String> = old.map(|old| self.keys(old)).unwrap_or_default().into_iter().collect();
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
            .map(str::to_string);
        let old_ports: Vec<(i64, String, u64)> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p.get("port")?.as_i64()?, protocol(p), p.get("nodePort")?.as_u64()?)))
            .collect();
        let spec = service
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("a service needs a spec"))?;
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let mut wanted = Vec::new();
        if kind == "ExternalName" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
            for port in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                port.as_object_mut().map(|p| p.remove("nodePort"));
            }
            return Ok(Allocation::between(&held, wanted));
        }
        let requested =
            spec.get("clusterIP").and_then(Value::as_str).filter(|ip| !ip.is_empty()).map(str::to_string).or(old_ip);
        let ip = match requested.as_deref() {
            Some("None") => "None".to_string(),
            Some(ip) if held.contains(&format!("{IP_PREFIX}{ip}")) => ip.to_string(),
            Some(ip) => {
                let parsed: Ipv4Addr =
                    ip.parse().map_err(|_| invalid(&name, "spec.clusterIPs[0]", ip, "must be a valid IP address"))?;
                if !self.range.contains(parsed) {
                    let why =
                        format!("provided IP is not in the valid range. The range of valid IPs is {}", self.range);
                    return Err(invalid(&name, "spec.clusterIPs[0]", ip, &why).into());
                }
                if self.taken(IP_PREFIX).await?.contains(ip) {
                    return Err(invalid(&name, "spec.clusterIPs[0]", ip, "provided IP is already allocated").into());
                }
                ip.to_string()
            }
            None => {
                let taken = self.taken(IP_PREFIX).await?;
                let hosts: Vec<Ipv4Addr> = self.range.hosts().collect();
                // From a random place in the range, as upstream's allocator does: Services
                // created at once rarely reach for the same address.
                let start = fastrand::usize(..hosts.len().max(1));
                hosts[start..]
                    .iter()
                    .chain(&hosts[..start])
                    .map(|ip| ip.to_string())
                    .find(|ip| !taken.contains(ip))
                    .ok_or_else(|| ApiError::internal(format!("the service IP range {} is full", self.range)))?
            }
        };
        if ip != "None" {
            wanted.push(format!("{IP_PREFIX}{ip}"));
        }
        spec.insert("clusterIP".into(), ip.clone().into());
        spec.insert("clusterIPs".into(), json!([ip]));
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy").or_insert_with(|| json!("SingleStack"));
        let node_ports = kind == "NodePort" || kind == "LoadBalancer";
        let mut taken = if node_ports { self.taken(PORT_PREFIX).await? } else { BTreeSet::new() };
        let mut seen = BTreeSet::new();
        for port in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
            if !node_ports {
                port.as_object_mut().map(|p| p.remove("nodePort"));
                continue;
            }
            let kept = || {
                let (number, protocol) = (port.get("port")?.as_i64()?, protocol(port));
                old_ports.iter().find(|(p, proto, _)| *p == number && *proto == protocol).map(|(_, _, n)| *n)
            };
            let node_port = match port.get("nodePort").and_then(Value::as_u64).or_else(kept) {
                Some(p) if held.contains(&format!("{PORT_PREFIX}{p}")) && seen.insert(p) => p as u32,
                Some(p) if !NODE_PORTS.contains(&(p as u32)) => {
                    let why = format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORTS.start(),
                        NODE_PORTS.end()
                    );
                    return Err(invalid(&name, "spec.ports[].nodePort", p, &why).into());
                }
                Some(p) if taken.contains(&p.to_string()) || !seen.insert(p) => {
                    return Err(invalid(&name, "spec.ports[].nodePort", p, "provided port is already allocated").into());
                }
                Some(p) => p as u32,
                None => {
                    let start = fastrand::u32(NODE_PORTS);
                    (start..=*NODE_PORTS.end())
                        .chain(*NODE_PORTS.start()..start)
                        .find(|p| !taken.contains(&p.to_string()) && !seen.contains(&u64::from(*p)))
                        .ok_or_else(|| ApiError::internal("the node port range is full"))?
                }
            };
            seen.insert(u64::from(node_port));
            taken.insert(node_port.to_string());
            port["nodePort"] = node_port.into();
            wanted.push(format!("{PORT_PREFIX}{node_port}"));
        }
        Ok(Allocation::between(&held, wanted))
    }

    /// The allocation keys a deleted Service frees.
    pub(crate) fn release(&self, def: &ResourceDef, object: &Value) -> Vec<String> {
        if def.kind != "Service" || !def.group.is_empty() {
            return Vec::new();
        }
        self.keys(object)
    }

    /// The allocation keys a stored Service holds.
    fn keys(&self, object: &Value) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(ip) =
            object.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|ip| !ip.is_empty() && *ip != "None")
        {
            keys.push(format!("{IP_PREFIX}{ip}"));
        }
        for port in object.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(node_port) = port.get("nodePort").and_then(Value::as_u64) {
                keys.push(format!("{PORT_PREFIX}{node_port}"));
            }
        }
        keys
    }

    async fn taken(&self, prefix: &str) -> Result<BTreeSet<String>> {
        let response = self.store.range(RangeRequest::new(KeyRange::prefix(prefix)).keys_only()).await?;
        Ok(response.kvs.into_iter().map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()).collect())
    }
}

/// What a write of a Service allocates and frees.
#[derive(Debug, Default)]
pub(crate) struct Allocation {
    /// Keys to create (they must not exist).
    pub(crate) taken: Vec<String>,
    /// Keys to delete: what the Service held and no longer does.
    pub(crate) freed: Vec<String>,
}

impl Allocation {
    fn between(held: &BTreeSet<String>, wanted: Vec<String>) -> Allocation {
        let freed = held.iter().filter(|k| !wanted.contains(k)).cloned().collect();
        let taken = wanted.into_iter().filter(|k| !held.contains(k)).collect();
        Allocation { taken, freed }
    }
}

fn protocol(port: &Value) -> String {
    port.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string()
}

fn invalid(name: &str, field: &str, value: impl std::fmt::Display, why: &str) -> ApiError {
    ApiError::invalid("", "Service", name, vec![FieldError::invalid(field, value, why)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_hold_their_hosts() {
        let cidr: Cidr = "127.43.0.7/16".parse().unwrap();
        assert_eq!(cidr.to_string(), "127.43.0.0/16");
        assert_eq!(cidr.first(), Ipv4Addr::new(127, 43, 0, 1));
        assert!(cidr.contains(Ipv4Addr::new(127, 43, 255, 254)));
        assert!(!cidr.contains(Ipv4Addr::new(127, 44, 0, 1)));
        assert_eq!(cidr.hosts().count(), 65534);
        assert!("10.0.0.0/31".parse::<Cidr>().is_err());
    }
}
