//! The store's measurements, named as etcd names its own (`etcd_*`), so that dashboards and alerts
//! written for an etcd behind kube-apiserver read a Flotilla store unchanged: the disk (the WAL's
//! fsync, the applied batch's write), whether the group has a leader, and how far this member
//! has applied. Raft's own term and log length have no etcd name and take the store's.

use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Inner;

/// Timed where the work is done; registered by [`crate::Store::register_metrics`].
#[derive(Clone, Debug)]
pub(crate) struct Instruments {
    /// The fsync that makes appended log entries durable (`etcd_disk_wal_fsync_duration_seconds`).
    pub(crate) wal_fsync: Histogram,
    /// The write of a batch of applied entries (`etcd_disk_backend_commit_duration_seconds`).
    pub(crate) backend_commit: Histogram,
}

impl Default for Instruments {
    fn default() -> Self {
        // etcd's buckets for both: 1 ms to 8 s, doubling.
        let disk = || Histogram::new(exponential_buckets(0.001, 2.0, 14));
        Instruments { wal_fsync: disk(), backend_commit: disk() }
    }
}

impl Instruments {
    pub(crate) fn register(&self, registry: &mut Registry, store: Weak<Inner>) {
        registry.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL",
            self.wal_fsync.clone(),
        );
        registry.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend",
            self.backend_commit.clone(),
        );
        registry.register_collector(Box::new(Status(store)));
    }
}

/// What the member knows of itself, read when scraped. Weak: a registry outliving the store
/// (the server's, after a shutdown) writes nothing of it rather than keep it open.
#[derive(Debug)]
struct Status(Weak<Inner>);

impl Collector for Status {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.0.upgrade() else { return Ok(()) };
        let status = crate::Store { inner: Arc::clone(&inner) }.status();
        let mut gauge = |name: &str, help: &str, value: i64| -> Result<(), std::fmt::Error> {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            status.leader.is_some().into(),
        )?;
        gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            (status.leader == Some(status.member_id)).into(),
        )?;
        gauge(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            status.membership.learners.contains_key(&status.member_id).into(),
        )?;
        gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            int(status.applied_index.unwrap_or_default()),
        )?;
        gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", int(status.revision))?;
        gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            int(status.compact_revision),
        )?;
        if let Some(bytes) = inner.shared.db.size() {
            gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                int(bytes),
            )?;
        }
        let raft = inner.raft.metrics().borrow().clone();
        gauge("flotilla_store_raft_term", "The member's current Raft term.", int(raft.current_term))?;
        gauge(
            "flotilla_store_raft_last_log_index",
            "The index of the last entry in the member's Raft log.",
            int(raft.last_log_index.unwrap_or_default()),
        )?;
        Ok(())
    }
}
