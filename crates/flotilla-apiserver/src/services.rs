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
/// Values tried at random before a scan for a free one.
const PROBES: usize = 16;

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
                if self.is_taken(IP_PREFIX, ip).await? {
                    return Err(invalid(&name, "spec.clusterIPs[0]", ip, "provided IP is already allocated").into());
                }
                ip.to_string()
            }
            None => {
                let range = self.range;
                let (first, count) = (u32::from(range.first()), range.hosts().count());
                self.free(IP_PREFIX, count, |i| Ipv4Addr::from(first + i as u32).to_string(), |_| true)
                    .await?
                    .ok_or_else(|| ApiError::internal(format!("the service IP range {range} is full")))?
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
                Some(p) if !seen.insert(p) || self.is_taken(PORT_PREFIX, &p.to_string()).await? => {
                    return Err(invalid(&name, "spec.ports[].nodePort", p, "provided port is already allocated").into());
                }
                Some(p) => p as u32,
                None => self
                    .free(
                        PORT_PREFIX,
                        NODE_PORTS.clone().count(),
                        |i| (NODE_PORTS.start() + i as u32).to_string(),
                        |p| p.parse().is_ok_and(|p: u64| !seen.contains(&p)),
                    )
                    .await?
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| ApiError::internal("the node port range is full"))?,
            };
            seen.insert(u64::from(node_port));
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

    /// A free value among the `count` that `nth` gives (addresses, ports) and `allowed` passes:
    /// first a few at random, each one point read (a range a fifth full takes one or two,
    /// however large it is; a scan of what is taken would cost a read per Service), then, for a
    /// range nearly full, the first free from a random place in a scan. At random, as
    /// upstream's allocator picks: Services created at once rarely reach for the same value.
    /// (The write's transaction creates the key only if it is absent, so a value taken
    /// meanwhile fails the write rather than being given twice.)
    async fn free(
        &self,
        prefix: &str,
        count: usize,
        nth: impl Fn(usize) -> String,
        allowed: impl Fn(&str) -> bool,
    ) -> Result<Option<String>> {
        if count == 0 {
            return Ok(None);
        }
        for _ in 0..PROBES {
            let value = nth(fastrand::usize(..count));
            if allowed(&value) && !self.is_taken(prefix, &value).await? {
                return Ok(Some(value));
            }
        }
        let request = RangeRequest::new(KeyRange::prefix(prefix)).keys_only().serializable();
        let taken: BTreeSet<String> = self
            .store
            .range(request)
            .await?
            .kvs
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect();
        let start = fastrand::usize(..count);
        Ok((start..count).chain(0..start).map(nth).find(|v| allowed(v) && !taken.contains(v)))
    }

    /// Whether `value` (an address, a port) is allocated under `prefix`.
    async fn is_taken(&self, prefix: &str, value: &str) -> Result<bool> {
        let request = RangeRequest::new(KeyRange::key(format!("{prefix}{value}"))).count_only().serializable();
        Ok(self.store.range(request).await?.count > 0)
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
