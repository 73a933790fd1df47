//! The work queue of a control loop, as upstream's client-go `workqueue` behaves: a key queued
//! twice is worked on once, a key is never worked on by two workers at once (a change that
//! arrives meanwhile queues it again when the first is done), and failures retry with an
//! exponential back-off per key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The first retry of a failed key waits this long, doubling up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(5);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

struct State<T> {
    queue: VecDeque<T>,
    queued: HashSet<T>,
    /// Keys a worker holds.
    active: HashSet<T>,
    /// Active keys that changed while worked on.
    again: HashSet<T>,
    failures: HashMap<T, u32>,
}

pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    ready: Arc<Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue { state: self.state.clone(), ready: self.ready.clone() }
    }
}

impl<T> std::fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().expect("work queue lock");
        f.debug_struct("WorkQueue").field("queued", &state.queue.len()).field("active", &state.active.len()).finish()
    }
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        let state = State {
            queue: VecDeque::new(),
            queued: HashSet::new(),
            active: HashSet::new(),
            again: HashSet::new(),
            failures: HashMap::new(),
        };
        WorkQueue { state: Arc::new(Mutex::new(state)), ready: Arc::new(Notify::new()) }
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new() -> WorkQueue<T> {
        WorkQueue::default()
    }

    pub fn add(&self, key: T) {
        let mut state = self.state.lock().expect("work queue lock");
        if state.queued.contains(&key) {
            return;
        }
        if state.active.contains(&key) {
            state.again.insert(key);
            return;
        }
        state.queued.insert(key.clone());
        state.queue.push_back(key);
        drop(state);
        self.ready.notify_one();
    }

    /// Queues `key` once `delay` has passed (a deadline to check, a retry).
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Queues `key` again after its next back-off delay.
    pub fn retry(&self, key: T) {
        let failures = {
            let mut state = self.state.lock().expect("work queue lock");
            let failures = state.failures.entry(key.clone()).or_default();
            *failures += 1;
            *failures
        };
        let delay = FIRST_RETRY_DELAY.saturating_mul(1 << (failures - 1).min(20)).min(MAX_RETRY_DELAY);
        self.add_after(key, delay);
    }

    /// Clears `key`'s failures after it succeeded.
    pub fn forget(&self, key: &T) {
        self.state.lock().expect("work queue lock").failures.remove(key);
    }

    /// The next key to work on; the caller hands it back with [`WorkQueue::done`].
    pub async fn next(&self) -> T {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("work queue lock");
                if let Some(key) = state.queue.pop_front() {
                    state.queued.remove(&key);
                    state.active.insert(key.clone());
                    if !state.queue.is_empty() {
                        // Wake another worker for the rest.
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &T) {
        let mut state = self.state.lock().expect("work queue lock");
        state.active.remove(key);
        if state.again.remove(key) {
            state.queued.insert(key.clone());
            state.queue.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("work queue lock").queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_queued_twice_is_worked_on_once() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, "a");
        assert_eq!(queue.next().await, "b");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_key_changed_while_worked_on_comes_back_when_done() {
        let queue = WorkQueue::new();
        queue.add("a");
        let key = queue.next().await;
        queue.add("a");
        assert!(queue.is_empty(), "not handed to a second worker meanwhile");
        queue.done(&key);
        assert_eq!(queue.next().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_until_forgotten() {
        let queue = WorkQueue::new();
        queue.retry("a");
        queue.retry("a");
        assert!(queue.is_empty());
        tokio::time::sleep(Duration::from_millis(11)).await;
        assert_eq!(queue.next().await, "a");
        queue.forget(&"a");
        assert!(queue.state.lock().unwrap().failures.is_empty());
    }
}
