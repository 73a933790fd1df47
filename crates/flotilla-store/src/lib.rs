//! `flotilla-store`: the control plane's one source of truth.
//!
//! An etcd-like MVCC keyspace (one global revision, per-key create/mod revisions and versions,
//! compare-and-swap transactions, watches from any retained revision, compaction) that is the
//! state machine of an openraft group whose log, vote and state live in rocksdb. A single
//! machine runs a one-member group; three or five members run the same code.
//!
//! ```no_run
//! # async fn example() -> flotilla_store::Result<()> {
//! use flotilla_store::{KeyRange, RangeRequest, Store, StoreConfig};
//! let store = Store::open(StoreConfig::single("/var/lib/flotilla/store", "http://127.0.0.1:2380")).await?;
//! store.put("/registry/namespaces/default", r#"{"kind":"Namespace"}"#).await?;
//! let namespaces = store.range(RangeRequest::new(KeyRange::prefix("/registry/namespaces/"))).await?;
//! # Ok(()) }
//! ```

mod client;
mod config;
mod db;
mod error;
mod keyspace;
mod kv;
mod peer;
mod prometheus;
mod raft;
mod request;
mod store;
mod watch;

pub use client::StoreClient;
pub use config::{Bootstrap, RaftTiming, StoreConfig};
pub use error::{Error, Result};
pub use kv::{Event, EventKind, INITIAL_REVISION, KeyRange, KeyValue, RangeEnd, Revision, prefix_end};
pub use peer::{PATH_RANGE, PATH_STATUS, PATH_TXN};
pub use raft::Member;
pub use request::{
    Compare, CompareOp, CompareTarget, Consistency, MAX_REQUEST_BYTES, MAX_TXN_OPS, Op, OpResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse,
};
pub use store::{MemberStatus, Membership, MembershipChange, PutResponse, Store};
pub use watch::{DEFAULT_WATCH_BUFFER, Watch, WatchRequest, WatchResponse};
