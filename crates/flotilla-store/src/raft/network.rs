//! The Raft transport: openraft's RPCs as postcard bodies over HTTP/1.1 on mutual TLS, with a
//! timeout on every call. The TLS configuration (which CA to trust, which certificate to
//! present) is the member's [`StoreConfig::peer_tls`](crate::StoreConfig); every request also
//! carries the cluster id, and a member refuses requests from another cluster.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{Member, TypeConfig};
use crate::db::{decode, encode};

/// The header that names the sender's cluster.
pub(crate) const CLUSTER_HEADER: &str = "x-flotilla-cluster";

pub(crate) const PATH_APPEND: &str = "/raft/append";
pub(crate) const PATH_VOTE: &str = "/raft/vote";
pub(crate) const PATH_SNAPSHOT: &str = "/raft/snapshot";

/// The largest AppendEntries body sent in one call; larger batches are split. Bounds the memory
/// a follower spends on one request (each entry is at most one 1.5 MiB request).
pub(crate) const MAX_RPC_BYTES: usize = 16 << 20;

/// Why a call to another member failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection could be made: the member is down or unreachable.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke or the answer was unreadable.
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The member answered with an error status (a foreign cluster, a malformed request).
    #[error("answered {0}: {1}")]
    Status(StatusCode, String),
}

/// An HTTPS client for calls to other members, shared by Raft and request forwarding.
#[derive(Clone, Debug)]
pub(crate) struct PeerClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    cluster_id: Uuid,
}

impl PeerClient {
    pub(crate) fn new(cluster_id: Uuid, tls: &rustls::ClientConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_only()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        PeerClient { http, cluster_id }
    }

    /// POSTs `req` to `addr` + `path` and decodes the answer.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.call_raw(addr, path, Bytes::from(encode(req)), timeout).await
    }

    pub(crate) async fn call_raw<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let request = Request::post(format!("{}{path}", https(addr)))
            .header(CLUSTER_HEADER, self.cluster_id.to_string())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(format!("bad request: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() { CallError::Connect(error_chain(&e)) } else { CallError::Transport(error_chain(&e)) }
            })?;
            let status = response.status();
            let body =
                response.into_body().collect().await.map_err(|e| CallError::Transport(e.to_string()))?.to_bytes();
            if !status.is_success() {
                return Err(CallError::Status(status, String::from_utf8_lossy(&body).into_owned()));
            }
            decode(&body).map_err(|e| CallError::Transport(format!("unreadable answer: {e}")))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout(timeout))?
    }
}

/// The peer API speaks only TLS: a member URL written `http://` (by an earlier release, or a
/// careless operator) is reached over TLS all the same, never in the clear.
pub(crate) fn https(addr: &str) -> String {
    let addr = addr.trim_end_matches('/');
    match addr.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None if addr.starts_with("https://") => addr.to_string(),
        None => format!("https://{addr}"),
    }
}

/// Joins an error with its sources: hyper's top-level messages alone say little.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Makes openraft's per-member connections.
#[derive(Debug)]
pub(crate) struct NetworkFactory {
    pub(crate) id: u64,
    pub(crate) client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConnection {
        PeerConnection { id: self.id, target, member: node.clone(), client: self.client.clone() }
    }
}

#[derive(Debug)]
pub(crate) struct PeerConnection {
    id: u64,
    target: u64,
    member: Member,
    client: PeerClient,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<u64, Member, RaftError<u64, E>>>;

impl PeerConnection {
    async fn send<Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        action: RPCTypes,
        path: &str,
        body: Bytes,
        option: &RPCOption,
    ) -> RpcResult<Resp, E> {
        let timeout = option.hard_ttl();
        match self.client.call_raw::<Result<Resp, RaftError<u64, E>>>(&self.member.addr, path, body, timeout).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => {
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.member.clone(), remote)))
            }
            Err(CallError::Connect(e)) => Err(RPCError::Unreachable(Unreachable::new(&io::Error::other(e)))),
            Err(CallError::Timeout(timeout)) => {
                Err(RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout }))
            }
            Err(other) => Err(RPCError::Network(NetworkError::new(&io::Error::other(other.to_string())))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let body = encode(&rpc);
        if body.len() > MAX_RPC_BYTES && rpc.entries.len() > 1 {
            // openraft retries with at most this many entries.
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(rpc.entries.len() as u64 / 2)));
        }
        self.send(RPCTypes::AppendEntries, PATH_APPEND, Bytes::from(body), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.send(RPCTypes::InstallSnapshot, PATH_SNAPSHOT, Bytes::from(encode(&rpc)), &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>> {
        self.send(RPCTypes::Vote, PATH_VOTE, Bytes::from(encode(&rpc)), &option).await
    }
}
