//! discovery.k8s.io/v1 EndpointSlices: a Service's endpoints, in slices.

use jiff::Timestamp;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::Kind;
use crate::error::FieldError;
use crate::table::{self, Column};
use crate::validation;

const MAX: usize = 3;

impl Kind for EndpointSlice {
    /// Upstream's `ValidateEndpointSlice`, but for loopback addresses, which a single host's
    /// pods have (their range is in 127.0.0.0/8). Each node's proxy also refuses to relay to the
    /// node's own endpoints and to frontends, whatever a slice says.
    fn validate(&self, errors: &mut Vec<FieldError>) {
        super::pod::check_one_of(Some(&self.address_type), &["IPv4", "IPv6", "FQDN"], "addressType", errors);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            match endpoint.addresses.len() {
                0 => errors.push(FieldError::required(format!("{at}.addresses"), "must contain at least 1 address")),
                n if n > 100 => errors.push(FieldError::invalid(
                    format!("{at}.addresses"),
                    n,
                    "may not contain more than 100 addresses",
                )),
                _ => {}
            }
            for (j, address) in endpoint.addresses.iter().enumerate() {
                let field = format!("{at}.addresses[{j}]");
                let ip = address.parse::<std::net::IpAddr>();
                let why = match (self.address_type.as_str(), ip) {
                    ("IPv4", Ok(std::net::IpAddr::V4(ip))) => ip_rule(ip.into()),
                    ("IPv4", _) => Some("must be a valid IPv4 address"),
                    ("IPv6", Ok(std::net::IpAddr::V6(ip))) => ip_rule(ip.into()),
                    ("IPv6", _) => Some("must be a valid IPv6 address"),
                    _ => None,
                };
                if let Some(why) = why {
                    errors.push(FieldError::invalid(field, address, why));
                }
            }
            if let Some(hostname) = &endpoint.hostname
                && let Err(e) = validation::dns1123_label(hostname)
            {
                errors.push(FieldError::invalid(format!("{at}.hostname"), hostname, e));
            }
        }
        for (i, port) in self.ports.iter().flatten().enumerate() {
            let at = format!("ports[{i}]");
            if let Some(number) = port.port
                && !(1..=65535).contains(&number)
            {
                errors.push(FieldError::invalid(
                    format!("{at}.port"),
                    number,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            super::pod::check_one_of(
                port.protocol.as_deref(),
                &["TCP", "UDP", "SCTP"],
                &format!("{at}.protocol"),
                errors,
            );
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty())
                && let Err(e) = validation::dns1123_label(name)
            {
                errors.push(FieldError::invalid(format!("{at}.name"), name, e));
            }
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name(),
            Column::string("AddressType", "The IP protocol for this slice"),
            Column::string("Ports", "The ports contained in this slice"),
            Column::string("Endpoints", "The endpoints contained in this slice"),
            Column::age(),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let ports: Vec<String> = self
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.map(|n| n.to_string()).or_else(|| p.name.clone()).unwrap_or_else(|| "*".into()))
            .collect();
        let addresses: Vec<String> = self.endpoints.iter().flat_map(|e| e.addresses.iter().cloned()).collect();
        vec![
            table::name(&self.metadata),
            Value::String(self.address_type.clone()),
            Value::String(with_more(&ports)),
            Value::String(with_more(&addresses)),
            table::age(&self.metadata, now),
        ]
    }
}

/// Upstream's `ValidateEndpointIP`, less its loopback rule.
fn ip_rule(ip: std::net::IpAddr) -> Option<&'static str> {
    let link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    let link_local_multicast = match ip {
        std::net::IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    };
    if ip.is_unspecified() {
        Some("may not be unspecified (0.0.0.0, ::)")
    } else if link_local {
        Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    } else if link_local_multicast {
        Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
    } else {
        None
    }
}

/// Upstream's `listWithMoreString`: three at most, then `+ N more...`; `<unset>` when empty.
fn with_more(items: &[String]) -> String {
    match items.len() {
        0 => "<unset>".into(),
        n if n > MAX => format!("{} + {} more...", items[..MAX].join(","), n - MAX),
        _ => items.join(","),
    }
}
