//! The HTTP service a member serves to its peers: Raft's RPCs, writes and read-index requests
//! forwarded by followers, membership changes, and reads for remote clients. Bodies are
//! postcard; `status` and `identity` are JSON for people and scripts.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::{decode, encode};
use crate::error::Error;
use crate::raft::network::{CLUSTER_HEADER, MAX_RPC_BYTES, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use crate::raft::{Command, TypeConfig};
use crate::request::{RangeRequest, TxnRequest};
use crate::store::{Forward, MembershipChange, Store};

pub(crate) const PATH_WRITE: &str = "/store/v1/write";
pub(crate) const PATH_READ_INDEX: &str = "/store/v1/read-index";
pub(crate) const PATH_MEMBERSHIP: &str = "/store/v1/membership";
/// A membership change from a remote client, forwarded to the leader.
pub(crate) const PATH_MEMBERSHIP_CHANGE: &str = "/store/v1/membership-change";
pub(crate) const PATH_IDENTITY: &str = "/store/v1/identity";
/// A linearizable (or serializable) range, served by this member.
pub const PATH_RANGE: &str = "/store/v1/range";
/// A transaction, forwarded to the leader when this member is not.
pub const PATH_TXN: &str = "/store/v1/txn";
/// [`MemberStatus`](crate::MemberStatus): JSON to a GET, postcard to a POST.
pub const PATH_STATUS: &str = "/store/v1/status";

pub(crate) fn router(store: Store) -> Router {
    let checked = Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_SNAPSHOT, post(snapshot))
        .route(PATH_WRITE, post(write))
        .route(PATH_READ_INDEX, post(read_index))
        .route(PATH_MEMBERSHIP, post(membership))
        .route(PATH_RANGE, post(range))
        .route(PATH_TXN, post(txn))
        .route(PATH_MEMBERSHIP_CHANGE, post(membership_change))
        .layer(middleware::from_fn_with_state(store.clone(), check_cluster));
    Router::new()
        .route(PATH_STATUS, get(status).post(status_postcard))
        // POST, like every other call, so the same client can ask it.
        .route(PATH_IDENTITY, post(identity))
        .merge(checked)
        .layer(DefaultBodyLimit::max(MAX_RPC_BYTES + (1 << 20)))
        .with_state(store)
}

/// Refuses calls from members of another cluster: a member restored from the wrong backup, or
/// pointed at the wrong peers, must not join its votes and log to ours.
async fn check_cluster(State(store): State<Store>, request: Request, next: Next) -> Response {
    let ours = store.cluster_id().to_string();
    match request.headers().get(CLUSTER_HEADER).and_then(|v| v.to_str().ok()) {
        Some(theirs) if theirs == ours => next.run(request).await,
        Some(theirs) => (
            StatusCode::PRECONDITION_FAILED,
            format!(
                "cluster id mismatch: this member belongs to cluster {ours}, the request came from cluster {theirs}"
            ),
        )
            .into_response(),
        None => (StatusCode::PRECONDITION_FAILED, format!("missing {CLUSTER_HEADER} header")).into_response(),
    }
}

/// A postcard body.
struct Postcard<T>(T);

impl<T: DeserializeOwned> Postcard<T> {
    fn read(body: &[u8]) -> Result<T, BadRequest> {
        decode(body).map_err(|e| BadRequest(format!("unreadable request body: {e}")))
    }
}

/// 400, naming what could not be read.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

impl<T: Serialize> IntoResponse for Postcard<T> {
    fn into_response(self) -> Response {
        ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], encode(&self.0)).into_response()
    }
}

type Answer = Result<Response, BadRequest>;

async fn append(State(store): State<Store>, body: Bytes) -> Answer {
    let req: AppendEntriesRequest<TypeConfig> = Postcard::read(&body)?;
    Ok(Postcard(store.raft().append_entries(req).await).into_response())
}

async fn vote(State(store): State<Store>, body: Bytes) -> Answer {
    let req: VoteRequest<u64> = Postcard::read(&body)?;
    Ok(Postcard(store.raft().vote(req).await).into_response())
}

async fn snapshot(State(store): State<Store>, body: Bytes) -> Answer {
    let req: InstallSnapshotRequest<TypeConfig> = Postcard::read(&body)?;
    Ok(Postcard(store.raft().install_snapshot(req).await).into_response())
}

/// A write forwarded by a follower. Not forwarded again: if leadership moved, the follower retries.
async fn write(State(store): State<Store>, body: Bytes) -> Answer {
    let command: Command = Postcard::read(&body)?;
    if let Command::Txn(txn) = &command
        && let Err(e) = txn.validate()
    {
        return Ok(Postcard(Err::<(), _>(e)).into_response());
    }
    Ok(Postcard(store.write_here(command).await.map_err(not_here)).into_response())
}

async fn read_index(State(store): State<Store>) -> Answer {
    Ok(Postcard(store.read_index_here().await.map_err(not_here)).into_response())
}

async fn membership(State(store): State<Store>, body: Bytes) -> Answer {
    let change: MembershipChange = Postcard::read(&body)?;
    Ok(Postcard(store.change_membership_here(&change).await.map_err(not_here)).into_response())
}

async fn range(State(store): State<Store>, body: Bytes) -> Answer {
    let req: RangeRequest = Postcard::read(&body)?;
    Ok(Postcard(store.range(req).await).into_response())
}

async fn txn(State(store): State<Store>, body: Bytes) -> Answer {
    let req: TxnRequest = Postcard::read(&body)?;
    Ok(Postcard(store.txn(req).await).into_response())
}

async fn membership_change(State(store): State<Store>, body: Bytes) -> Answer {
    let change: MembershipChange = Postcard::read(&body)?;
    Ok(Postcard(store.change_membership(change).await).into_response())
}

async fn status(State(store): State<Store>) -> Response {
    axum::Json(store.status()).into_response()
}

async fn status_postcard(State(store): State<Store>) -> Response {
    Postcard(store.status()).into_response()
}

async fn identity(State(store): State<Store>) -> Response {
    Postcard(store.cluster_id()).into_response()
}

fn not_here(forward: Forward) -> Error {
    match forward {
        Forward::To(addr) => Error::NoLeader(format!("this member is not the leader (the leader is at {addr})")),
        Forward::NoLeader => Error::NoLeader("no leader is known".into()),
        Forward::Fail(e) => e,
    }
}
