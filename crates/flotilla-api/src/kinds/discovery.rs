//! discovery.k8s.io/v1 EndpointSlices: a Service's endpoints, in slices.

use jiff::Timestamp;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::Kind;
use crate::error::FieldError;
use crate::table::{self, Column};

const MAX: usize = 3;

impl Kind for EndpointSlice {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        super::pod::check_one_of(Some(&self.address_type), &["IPv4", "IPv6", "FQDN"], "addressType", errors);
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

/// Upstream's `listWithMoreString`: three at most, then `+ N more...`; `<unset>` when empty.
fn with_more(items: &[String]) -> String {
    match items.len() {
        0 => "<unset>".into(),
        n if n > MAX => format!("{} + {} more...", items[..MAX].join(","), n - MAX),
        _ => items.join(","),
    }
}
