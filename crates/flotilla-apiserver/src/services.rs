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

    /// Gives a new Service its addresses; returns the allocation keys to create with it.
    pub(crate) async fn allocate(&self, service: &mut Value) -> Result<Vec<String>> {
        let name = service.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let spec = service
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("a service needs a spec"))?;
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let mut keys = Vec::new();
        if kind == "ExternalName" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
            return Ok(keys);
        }
        let requested = spec.get("clusterIP").and_then(Value::as_str).filter(|ip| !ip.is_empty()).map(str::to_string);
        let ip = match requested.as_deref() {
            Some("None") => "None".to_string(),
            Some(ip) => {
                let parsed: Ipv4Addr =
                    ip.parse().map_err(|_| invalid(&name, "spec.clusterIPs[0]", ip, "must be a valid IP address"))?;
                if !self.range.contains(parsed) {
                    let why =
                        format!("provided IP is not in the valid range. The range of valid IPs is {}", self.range);
                    return Err(invalid(&name, "spec.clusterIPs[0]", ip, &why).into());
                }
                if !self.taken(IP_PREFIX).await?.contains(ip) {
                    keys.push(format!("{IP_PREFIX}{ip}"));
                    ip.to_string()
                } else {
                    return Err(invalid(&name, "spec.clusterIPs[0]", ip, "provided IP is already allocated").into());
                }
            }
            None => {
                let taken = self.taken(IP_PREFIX).await?;
                let ip = self
                    .range
                    .hosts()
                    .map(|ip| ip.to_string())
                    .find(|ip| !taken.contains(ip))
                    .ok_or_else(|| ApiError::internal(format!("the service IP range {} is full", self.range)))?;
                keys.push(format!("{IP_PREFIX}{ip}"));
                ip
            }
        };
        spec.insert("clusterIP".into(), ip.clone().into());
        spec.insert("clusterIPs".into(), json!([ip]));
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy").or_insert_with(|| json!("SingleStack"));
        if kind == "NodePort" || kind == "LoadBalancer" {
            let mut taken = self.taken(PORT_PREFIX).await?;
            for port in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                let node_port = match port.get("nodePort").and_then(Value::as_u64) {
                    Some(p) if taken.contains(&p.to_string()) => {
                        return Err(
                            invalid(&name, "spec.ports[].nodePort", p, "provided port is already allocated").into()
                        );
                    }
                    Some(p) => p as u32,
                    None => NODE_PORTS
                        .clone()
                        .find(|p| !taken.contains(&p.to_string()))
                        .ok_or_else(|| ApiError::internal("the node port range is full"))?,
                };
                taken.insert(node_port.to_string());
                port["nodePort"] = node_port.into();
                keys.push(format!("{PORT_PREFIX}{node_port}"));
            }
        }
        Ok(keys)
    }

    /// The allocation keys a deleted Service frees.
    pub(crate) fn release(&self, def: &ResourceDef, object: &Value) -> Vec<String> {
        if def.kind != "Service" || !def.group.is_empty() {
            return Vec::new();
        }
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
