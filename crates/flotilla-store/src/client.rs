//! [`StoreClient`]: a member's peer API from outside its process, for tools, end-to-end tests
//! and benchmarks. In-process callers (the API server) use [`Store`](crate::Store) directly.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::kv::{KeyRange, KeyValue, Revision};
use crate::peer::{PATH_IDENTITY, PATH_MEMBERSHIP_CHANGE, PATH_RANGE, PATH_STATUS, PATH_TXN};
use crate::raft::network::{CallError, PeerClient};
use crate::request::{Op, RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::store::{MemberStatus, Membership, MembershipChange};

#[derive(Clone, Debug)]
pub struct StoreClient {
    client: PeerClient,
    cluster_id: Uuid,
    addr: String,
    timeout: Duration,
}

impl StoreClient {
    /// Connects to the member at `addr` (e.g. `https://127.0.0.1:2380`), learning its cluster
    /// id. `tls` must present a member certificate: the peer API answers no one else.
    pub async fn connect(addr: impl Into<String>, tls: &rustls::ClientConfig, timeout: Duration) -> Result<Self> {
        let addr = addr.into();
        let cluster_id: Uuid = PeerClient::new(Uuid::nil(), tls)
            .call(&addr, PATH_IDENTITY, &(), timeout)
            .await
            .map_err(|e| call_error(&addr, e))?;
        Ok(StoreClient { client: PeerClient::new(cluster_id, tls), cluster_id, addr, timeout })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The cluster the member belongs to.
    pub fn cluster_id(&self) -> Uuid {
        self.cluster_id
    }

    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse> {
        self.call(PATH_TXN, &txn).await
    }

    /// Puts one key; returns the revision of the write.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<Revision> {
        Ok(self.txn(TxnRequest::default().then([Op::put(key, value)])).await?.revision)
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.call(PATH_RANGE, &req).await
    }

    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        Ok(self.range(RangeRequest::new(KeyRange::key(key))).await?.kvs.pop())
    }

    pub async fn status(&self) -> Result<MemberStatus> {
        self.client.call(&self.addr, PATH_STATUS, &(), self.timeout).await.map_err(|e| call_error(&self.addr, e))
    }

    pub async fn change_membership(&self, change: MembershipChange) -> Result<Membership> {
        self.call(PATH_MEMBERSHIP_CHANGE, &change).await
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(&self, path: &str, req: &Req) -> Result<Resp> {
        self.client
            .call::<Req, Result<Resp, Error>>(&self.addr, path, req, self.timeout)
            .await
            .map_err(|e| call_error(&self.addr, e))?
    }
}

fn call_error(addr: &str, err: CallError) -> Error {
    match err {
        CallError::Timeout(after) => Error::Timeout(format!("{addr} did not answer within {after:?}")),
        other => Error::Unreachable { addr: addr.to_string(), message: other.to_string() },
    }
}
