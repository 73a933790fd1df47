//! Batches proposals into log entries.
//!
//! openraft 0.9 appends each proposal as its own entry and its core waits for that entry's fsync
//! before it handles the next message, so proposals submitted one by one cost one fsync each,
//! however many clients are waiting. The proposer keeps one batch in flight: everything proposed
//! while it commits goes into the next entry together. A lone client pays one channel hop; many
//! clients share fsyncs, replication round trips and apply batches.

use tokio::sync::{mpsc, oneshot};

use super::{Batch, Command, Raft, Reply};
use crate::error::Error;
use crate::store::Forward;

/// Commands in one log entry at most: bounds the work of one apply.
const MAX_BATCH_COMMANDS: usize = 512;

/// Bytes of keys and values in one log entry, past which the batch is closed (one command may
/// take it over, up to one request's limit). Keeps entries well under an AppendEntries body.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Proposals waiting for the batch in flight to commit. Bounded, so that a stalled group pushes
/// back on writers instead of queueing without end.
const QUEUE: usize = 4096;

#[derive(Debug)]
pub(crate) struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

#[derive(Debug)]
struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Reply, Forward>>,
}

impl Proposer {
    pub(crate) fn spawn(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes `command` and waits until it is applied, or says where the leader is.
    pub(crate) async fn propose(&self, command: Command) -> Result<Reply, Forward> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Proposal { command, reply }).await.map_err(|_| Forward::Fail(Error::Stopped))?;
        answer.await.map_err(|_| Forward::Fail(Error::Stopped))?
    }
}

/// Ends when every `Proposer` handle is dropped.
async fn run(raft: Raft, mut queue: mpsc::Receiver<Proposal>) {
    while let Some(first) = queue.recv().await {
        let mut bytes = first.command.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            bytes += next.command.size();
            batch.push(next);
        }
        let (commands, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        match raft.client_write(Batch(commands)).await {
            Ok(response) => {
                for (waiter, reply) in waiters.into_iter().zip(response.data) {
                    let _ = waiter.send(Ok(reply));
                }
            }
            Err(err) => {
                let forward = Forward::from_write_error(err);
                for waiter in waiters {
                    let _ = waiter.send(Err(forward.clone()));
                }
            }
        }
    }
}
