//! Watches: a replay of retained history followed by live events, in revision order, with no
//! gaps and no duplicates.
//!
//! A watcher first subscribes to the hub, which notes the revision `H` applied at that moment;
//! the watcher then replays history up to `H` from rocksdb while the hub queues everything after
//! `H` into its channel. The channel is bounded: a watcher that lets it fill is cancelled with
//! the revision to resume from, so a slow reader costs writers nothing and memory stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::keyspace::{Changes, history_since};
use crate::kv::{Event, KeyRange, Revision};
use crate::raft::state_machine::Shared;

/// Unread responses a watcher may queue before it is cancelled. Guards writers and memory
/// against a watcher that stopped reading.
pub const DEFAULT_WATCH_BUFFER: usize = 1024;

/// History records read per replay step: bounds the time one step holds a blocking thread and
/// the size of one response.
const REPLAY_CHUNK: usize = 1000;

/// Live events merged into one response at most, when several revisions are queued.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// The first revision to deliver (inclusive); `None` for changes after the current revision.
    pub start_revision: Option<Revision>,
    /// Include each event's previous value.
    pub prev_kv: bool,
    /// Send [`WatchResponse::Progress`] when the watch has been quiet for the store's progress interval.
    pub progress_notify: bool,
}

impl WatchRequest {
    pub fn new(range: KeyRange) -> Self {
        WatchRequest { range, start_revision: None, prev_kv: false, progress_notify: false }
    }

    pub fn from_revision(mut self, revision: Revision) -> Self {
        self.start_revision = Some(revision);
        self
    }

    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchResponse {
    /// Events in revision order. A response never splits a revision.
    Events(Vec<Event>),
    /// Every event up to `revision` has been delivered.
    Progress { revision: Revision },
}

/// A running watch. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Watch {
    shared: Arc<Shared>,
    id: u64,
    range: KeyRange,
    prev_kv: bool,
    /// Everything before this revision has been delivered.
    next: Revision,
    /// History must be replayed up to here (inclusive) before the channel is read.
    replay_until: Revision,
    rx: mpsc::Receiver<HubMessage>,
    /// A message read while batching that belongs in the next response.
    held: Option<HubMessage>,
    done: bool,
}

impl Watch {
    pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> Result<Watch> {
        let (id, rx, head) = shared.hub.subscribe(&req.range, req.progress_notify);
        let next = req.start_revision.filter(|&r| r != 0).unwrap_or(head + 1);
        let floor = shared.compact_floor.load(std::sync::atomic::Ordering::SeqCst);
        if next <= floor {
            shared.hub.unsubscribe(id);
            return Err(Error::Compacted { requested: next, compact_revision: floor });
        }
        Ok(Watch {
            shared,
            id,
            range: req.range,
            prev_kv: req.prev_kv,
            next,
            replay_until: head,
            rx,
            held: None,
            done: false,
        })
    }

    /// The next response; `None` once the watch has ended (after yielding the error that ended it).
    pub async fn next(&mut self) -> Option<Result<WatchResponse>> {
        if self.done {
            return None;
        }
        let response = self.next_response().await;
        if response.is_err() {
            self.done = true;
            self.shared.hub.unsubscribe(self.id);
        }
        Some(response)
    }

    /// The revision to resume from if this watch ends: every event before it was delivered.
    pub fn resume_revision(&self) -> Revision {
        self.next
    }

    /// Asks for a [`WatchResponse::Progress`] as soon as every event so far has been delivered.
    pub fn request_progress(&self) {
        self.shared.hub.request_progress(self.id);
    }

    async fn next_response(&mut self) -> Result<WatchResponse> {
        while self.next <= self.replay_until {
            let (shared, range, from, until) = (self.shared.clone(), self.range.clone(), self.next, self.replay_until);
            let (changes, next) = tokio::task::spawn_blocking(move || {
                history_since(&shared.db, from, until, &range, REPLAY_CHUNK, &shared.compact_floor)
            })
            .await
            .map_err(|e| Error::Storage(format!("watch replay task: {e}")))??;
            let events = self.take_events(&changes);
            // Revisions after the last change in range were read too: skip past them.
            self.next = self.next.max(next);
            if !events.is_empty() {
                return Ok(WatchResponse::Events(events));
            }
        }
        loop {
            let message = match self.held.take() {
                Some(message) => message,
                None => self.rx.recv().await.ok_or(Error::Stopped)?,
            };
            match message {
                HubMessage::Changes(first) => {
                    let mut batch = vec![first];
                    let mut count = batch[0].events.len();
                    while count < MAX_EVENTS_PER_RESPONSE {
                        match self.rx.try_recv() {
                            Ok(HubMessage::Changes(more)) => {
                                count += more.events.len();
                                batch.push(more);
                            }
                            Ok(other) => {
                                self.held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let events = self.take_events(batch.iter().map(|c| &**c));
                    if !events.is_empty() {
                        return Ok(WatchResponse::Events(events));
                    }
                }
                HubMessage::Progress(revision) => {
                    // The hub sends progress only behind every change up to `revision`.
                    self.next = self.next.max(revision + 1);
                    return Ok(WatchResponse::Progress { revision: self.next - 1 });
                }
                HubMessage::Cancelled(reason) => {
                    return Err(Error::WatchCancelled { reason, resume_from: self.next });
                }
            }
        }
    }

    /// The events of `changes` this watch has not delivered and wants, advancing `next`.
    ///
    /// Changes are shared by every watcher they touch, so only the events in range are copied,
    /// and their previous values only when asked for.
    fn take_events<'a>(&mut self, changes: impl IntoIterator<Item = &'a Changes>) -> Vec<Event> {
        let mut events = Vec::new();
        for change in changes {
            if change.revision < self.next {
                continue;
            }
            self.next = change.revision + 1;
            for event in change.events.iter().filter(|e| self.range.contains(&e.kv.key)) {
                events.push(Event {
                    kind: event.kind,
                    kv: event.kv.clone(),
                    prev_kv: if self.prev_kv { event.prev_kv.clone() } else { None },
                });
            }
        }
        events
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.hub.unsubscribe(self.id);
    }
}

#[derive(Debug)]
pub(crate) enum HubMessage {
    Changes(Arc<Changes>),
    Progress(Revision),
    Cancelled(String),
}

/// Fans applied changes out to watchers.
#[derive(Debug)]
pub(crate) struct WatchHub {
    inner: Mutex<HubState>,
    buffer: usize,
}

#[derive(Debug)]
struct HubState {
    revision: Revision,
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
}

#[derive(Debug)]
struct Subscriber {
    range: KeyRange,
    progress_notify: bool,
    tx: mpsc::Sender<HubMessage>,
}

impl Subscriber {
    /// Queues `message`, or cancels the subscriber when its queue is full. The channel holds one
    /// slot more than the buffer, kept for the cancellation. Returns false if it must be dropped.
    fn send(&self, message: HubMessage, buffer: usize) -> bool {
        if self.tx.capacity() <= 1 {
            let reason = format!("the watcher fell behind by more than {buffer} unread responses");
            let _ = self.tx.try_send(HubMessage::Cancelled(reason));
            return false;
        }
        self.tx.try_send(message).is_ok()
    }

    fn is_idle(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }
}

impl WatchHub {
    pub(crate) fn new(revision: Revision, buffer: usize) -> Self {
        WatchHub {
            inner: Mutex::new(HubState { revision, next_id: 0, subscribers: HashMap::new() }),
            buffer: buffer.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a watcher; returns its id, its channel and the revision applied so far (every
    /// later change will be sent to the channel).
    pub(crate) fn subscribe(
        &self,
        range: &KeyRange,
        progress_notify: bool,
    ) -> (u64, mpsc::Receiver<HubMessage>, Revision) {
        let (tx, rx) = mpsc::channel(self.buffer + 1);
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.insert(id, Subscriber { range: range.clone(), progress_notify, tx });
        (id, rx, state.revision)
    }

    pub(crate) fn unsubscribe(&self, id: u64) {
        self.state().subscribers.remove(&id);
    }

    pub(crate) fn revision(&self) -> Revision {
        self.state().revision
    }

    /// Sends newly applied changes to the watchers whose range they touch.
    pub(crate) fn publish(&self, revision: Revision, changes: Vec<Changes>) {
        let mut state = self.state();
        state.revision = revision;
        for change in changes {
            let change = Arc::new(change);
            state.subscribers.retain(|_, sub| {
                !change.events.iter().any(|e| sub.range.contains(&e.kv.key))
                    || sub.send(HubMessage::Changes(change.clone()), self.buffer)
            });
        }
    }

    /// Tells every idle watcher that asked for progress notifications the current revision.
    pub(crate) fn notify_progress(&self) {
        let mut state = self.state();
        let revision = state.revision;
        state.subscribers.retain(|_, sub| {
            !(sub.progress_notify && sub.is_idle()) || sub.send(HubMessage::Progress(revision), self.buffer)
        });
    }

    pub(crate) fn request_progress(&self, id: u64) {
        let mut state = self.state();
        let revision = state.revision;
        let keep = state.subscribers.get(&id).is_none_or(|sub| sub.send(HubMessage::Progress(revision), self.buffer));
        if !keep {
            state.subscribers.remove(&id);
        }
    }

    /// Cancels every watcher: the state they were following was replaced wholesale.
    pub(crate) fn reset(&self, revision: Revision, reason: &str) {
        let mut state = self.state();
        state.revision = revision;
        for (_, sub) in state.subscribers.drain() {
            let _ = sub.tx.try_send(HubMessage::Cancelled(reason.to_string()));
        }
    }

    /// Ends every watch (the store is shutting down).
    pub(crate) fn close(&self) {
        self.state().subscribers.clear();
    }
}

/// Sends progress notifications every `interval` until the hub's owner is gone.
pub(crate) fn spawn_progress_notifier(
    shared: Weak<Shared>,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match shared.upgrade() {
                Some(shared) => shared.hub.notify_progress(),
                None => return,
            }
        }
    })
}
