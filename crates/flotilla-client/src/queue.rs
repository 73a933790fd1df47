//! The work queue of a control loop, as upstream's client-go `workqueue` behaves: a key queued
//! twice is worked on once, a key is never worked on by two workers at once (a change that
//! arrives meanwhile queues it again when the first is done), and failures retry with an
//! exponential back-off per key. A named queue is measured as client-go's are (`workqueue_*`,
//! by `name`), in the [`QueueMetrics`] its process registers.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

/// The first retry of a failed key waits this long, doubling up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(5);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

struct State<T> {
    queue: VecDeque<T>,
    /// Queued keys, and since when.
    queued: HashMap<T, Instant>,
    /// Keys a worker holds, and since when.
    active: HashMap<T, Instant>,
    /// Active keys that changed while worked on, since when, and whether they go first.
    again: HashMap<T, (Instant, bool)>,
    failures: HashMap<T, u32>,
    /// Keys to be queued later, and when: the earliest time asked for (on tokio's clock, which
    /// the timers sleep on).
    delayed: HashMap<T, tokio::time::Instant>,
    /// Its share of the process's `workqueue_*`. Its depth is what waits, queued or to be
    /// again, as client-go counts it: added to the family's gauge as it changes, so that queues
    /// of one name (a loop restarted on a change of leader) add up.
    measured: Measured,
}

impl<T> Drop for State<T> {
    fn drop(&mut self) {
        // A queue dropped with keys waiting takes them out of the depth.
        self.measured.depth.dec_by((self.queue.len() + self.again.len()) as i64);
    }
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

/// The work queues' measurements, client-go's `workqueue_*` families labelled by each queue's
/// name: register them once per process, and name each queue with them.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    depth: Family<QueueName, Gauge>,
    adds: Family<QueueName, Counter>,
    retries: Family<QueueName, Counter>,
    queue_duration: Family<QueueName, Histogram, fn() -> Histogram>,
    work_duration: Family<QueueName, Histogram, fn() -> Histogram>,
}

type QueueName = [(&'static str, &'static str); 1];

impl Default for QueueMetrics {
    fn default() -> Self {
        // client-go's buckets: 10 ns to 10 s, by tens.
        let durations: fn() -> Histogram = || Histogram::new(exponential_buckets(1e-8, 10.0, 10));
        QueueMetrics {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            queue_duration: Family::new_with_constructor(durations),
            work_duration: Family::new_with_constructor(durations),
        }
    }
}

impl QueueMetrics {
    pub fn register(registry: &mut Registry) -> QueueMetrics {
        let metrics = QueueMetrics::default();
        registry.register("workqueue_depth", "Current depth of workqueue", metrics.depth.clone());
        registry.register("workqueue_adds", "Total number of adds handled by workqueue", metrics.adds.clone());
        registry.register("workqueue_retries", "Total number of retries handled by workqueue", metrics.retries.clone());
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested.",
            metrics.queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            metrics.work_duration.clone(),
        );
        metrics
    }

    fn of(&self, name: &'static str) -> Measured {
        let label = [("name", name)];
        Measured {
            depth: self.depth.get_or_create_owned(&label),
            adds: self.adds.get_or_create_owned(&label),
            retries: self.retries.get_or_create_owned(&label),
            queue_duration: self.queue_duration.get_or_create_owned(&label),
            work_duration: self.work_duration.get_or_create_owned(&label),
        }
    }
}

/// One queue's share of [`QueueMetrics`].
#[derive(Clone, Debug)]
struct Measured {
    depth: Gauge,
    adds: Counter,
    retries: Counter,
    queue_duration: Histogram,
    work_duration: Histogram,
}

impl<T> std::fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().expect("work queue lock");
        f.debug_struct("WorkQueue").field("queued", &state.queue.len()).field("active", &state.active.len()).finish()
    }
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        // Measured, but in no registry.
        WorkQueue::named("", &QueueMetrics::default())
    }
}

impl<T> WorkQueue<T> {
    /// A queue measured as `name` in `metrics`.
    pub fn named(name: &'static str, metrics: &QueueMetrics) -> WorkQueue<T> {
        let state = State {
            queue: VecDeque::new(),
            queued: HashMap::new(),
            active: HashMap::new(),
            again: HashMap::new(),
            failures: HashMap::new(),
            delayed: HashMap::new(),
            measured: metrics.of(name),
        };
        WorkQueue { state: Arc::new(Mutex::new(state)), ready: Arc::new(Notify::new()) }
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new() -> WorkQueue<T> {
        WorkQueue::default()
    }

    pub fn add(&self, key: T) {
        self.enqueue(key, false);
    }

    /// Queues `key` ahead of every other, or moves it ahead if it waits already: for work that
    /// someone waits on now (a request held for a function at zero), which must not wait
    /// behind a full round of periodic work. A key being worked on is queued again once it is
    /// done, as with [`WorkQueue::add`], and first.
    pub fn add_first(&self, key: T) {
        self.enqueue(key, true);
    }

    fn enqueue(&self, key: T, first: bool) {
        let mut state = self.state.lock().expect("work queue lock");
        // A key already waiting is not added again (nor counted); first, it moves ahead.
        if let Some((_, again_first)) = state.again.get_mut(&key) {
            *again_first |= first;
            return;
        }
        if state.queued.contains_key(&key) && !first {
            return;
        }
        if state.queued.contains_key(&key) {
            if let Some(at) = state.queue.iter().position(|k| *k == key) {
                state.queue.remove(at);
            }
        } else {
            state.measured.adds.inc();
            state.measured.depth.inc();
            if state.active.contains_key(&key) {
                state.again.insert(key, (Instant::now(), first));
                return;
            }
            state.queued.insert(key.clone(), Instant::now());
        }
        if first {
            state.queue.push_front(key);
        } else {
            state.queue.push_back(key);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Queues `key` once `delay` has passed (a deadline to check, a retry, the next periodic
    /// sync). A key waits once, for the earliest time asked for, as client-go's delaying queue
    /// has it: a loop that asks for its next sync at every reconcile, however many things
    /// queued it meanwhile, keeps one cadence rather than one more for each of them.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        // A time beyond the clock's range never comes.
        let Some(due) = tokio::time::Instant::now().checked_add(delay) else { return };
        {
            let mut state = self.state.lock().expect("work queue lock");
            match state.delayed.get(&key) {
                Some(earlier) if *earlier <= due => return,
                _ => state.delayed.insert(key.clone(), due),
            };
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let mut state = queue.state.lock().expect("work queue lock");
            // Not if an earlier time took its place (and has passed, or will).
            if state.delayed.get(&key) != Some(&due) {
                return;
            }
            state.delayed.remove(&key);
            drop(state);
            queue.add(key);
        });
    }

    /// Queues `key` again after its next back-off delay.
    pub fn retry(&self, key: T) {
        let failures = {
            let mut state = self.state.lock().expect("work queue lock");
            state.measured.retries.inc();
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
                    let now = Instant::now();
                    if let Some(since) = state.queued.remove(&key) {
                        state.measured.queue_duration.observe(now.duration_since(since).as_secs_f64());
                    }
                    state.measured.depth.dec();
                    state.active.insert(key.clone(), now);
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
        if let Some(since) = state.active.remove(key) {
            state.measured.work_duration.observe(since.elapsed().as_secs_f64());
        }
        // Still waiting since it was added (the depth counts it already).
        if let Some((since, first)) = state.again.remove(key) {
            state.queued.insert(key.clone(), since);
            if first {
                state.queue.push_front(key.clone());
            } else {
                state.queue.push_back(key.clone());
            }
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

    #[tokio::test(start_paused = true)]
    async fn a_key_waits_once_for_the_earliest_time_asked_for() {
        let queue = WorkQueue::new();
        queue.add_after("a", Duration::from_secs(15));
        queue.add_after("a", Duration::from_secs(20));
        queue.add_after("a", Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(queue.len(), 1, "queued at the earliest time");
        let a = queue.next().await;
        queue.done(&a);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(queue.is_empty(), "and not again at the later times");
        // A time past the clock's end (a deadline of i64::MAX seconds) never comes, and does
        // not panic the worker that asks for it.
        queue.add_after("b", Duration::from_secs(i64::MAX as u64));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_first_jumps_the_queue_once() {
        let queue = WorkQueue::new();
        for key in ["a", "b", "c"] {
            queue.add(key);
        }
        queue.add_first("c");
        queue.add_first("d");
        assert_eq!(queue.len(), 4, "c moved, not queued twice");
        let mut order = Vec::new();
        for _ in 0..4 {
            let key = queue.next().await;
            queue.done(&key);
            order.push(key);
        }
        assert_eq!(order, ["d", "c", "a", "b"]);
        // Worked on meanwhile: once more, when done, and still first.
        queue.add("e");
        let e = queue.next().await;
        queue.add("f");
        queue.add_first("e");
        assert_eq!(queue.len(), 1);
        queue.done(&e);
        assert_eq!(queue.next().await, "e");
    }

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

    #[tokio::test]
    async fn queues_are_measured_as_client_go_measures_them() {
        let metrics = QueueMetrics::default();
        let label = [("name", "test")];
        let depth = || metrics.depth.get_or_create(&label).get();
        let adds = || metrics.adds.get_or_create(&label).get();
        let queue = WorkQueue::named("test", &metrics);
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!((depth(), adds()), (2, 2), "a key already waiting is not added again");
        let a = queue.next().await;
        queue.add("a");
        queue.add("a");
        assert_eq!((depth(), adds()), (2, 3), "changed while worked on: waiting again");
        queue.done(&a);
        assert_eq!(depth(), 2);
        // A second queue of the same name (a loop restarted) adds to the same depth, and takes
        // its keys out when it goes.
        let other = WorkQueue::named("test", &metrics);
        other.add("c");
        assert_eq!(depth(), 3);
        drop(other);
        assert_eq!(depth(), 2);
        drop(queue);
        assert_eq!(depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_until_forgotten() {
        let queue = WorkQueue::new();
        // The first failure waits 5 ms, the second 10 ms.
        queue.retry("a");
        tokio::time::sleep(Duration::from_millis(6)).await;
        let a = queue.next().await;
        queue.done(&a);
        queue.retry("a");
        tokio::time::sleep(Duration::from_millis(6)).await;
        assert!(queue.is_empty(), "the second waits longer");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(queue.next().await, "a");
        queue.forget(&"a");
        assert!(queue.state.lock().unwrap().failures.is_empty());
    }
}
