//! coordination.k8s.io/v1 Leases: node heartbeats and leader election.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::Value;

use super::Kind;
use crate::table::{self, Column};

impl Kind for Lease {
    fn columns() -> Vec<Column> {
        vec![Column::name(), Column::string("Holder", "The holder of the lease"), Column::age()]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let holder = self.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
        vec![table::name(&self.metadata), table::or_none(holder), table::age(&self.metadata, now)]
    }
}
