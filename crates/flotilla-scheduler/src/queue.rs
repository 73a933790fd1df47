//! The scheduling queue, as upstream's: pods wait in priority order (then first come, first
//! served); a pod that fits nowhere waits as unschedulable until the cluster changes in a way
//! that might let it fit (a node added or changed, a pod gone), and one whose binding failed
//! backs off (1 s doubling to 10 s) before it is tried again.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::ObjectKey;
use k8s_openapi::api::core::v1::Pod;

use crate::cluster::PodInfo;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An unschedulable pod is tried again after this long even if nothing seemed to change
/// (upstream's `podMaxInUnschedulablePodsDuration`).
const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// Popped: being scheduled or bound.
    InFlight,
    BackingOff {
        until: Instant,
    },
    Unschedulable {
        since: Instant,
    },
}

/// A pod waiting to be scheduled.
#[derive(Debug)]
pub struct Queued {
    pub pod: Arc<Pod>,
    pub info: Arc<PodInfo>,
    pub attempts: u32,
    /// When it was first queued: its scheduling takes from here to its binding.
    pub since: Instant,
    state: State,
    /// Its place in the heap; heap entries with another number are stale.
    seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    priority: i32,
    seq: u64,
    key: ObjectKey,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority.cmp(&other.priority).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Default)]
pub struct SchedulingQueue {
    active: BinaryHeap<Entry>,
    pods: HashMap<ObjectKey, Queued>,
    /// Pods backing off or unschedulable: what `flush` looks at, so that a long line of active
    /// pods costs it nothing.
    waiting: HashSet<ObjectKey>,
    /// When the first of `waiting` is due, if any is.
    due: Option<Instant>,
    seq: u64,
}

impl SchedulingQueue {
    /// Adds a pod that needs a node, or takes in a change to one already waiting. A change to
    /// its spec or labels gives an unschedulable pod another chance at once.
    pub fn upsert(&mut self, pod: Arc<Pod>, spec_changed: bool) {
        let info = Arc::new(PodInfo::of(&pod));
        let key = info.key.clone();
        match self.pods.get_mut(&key) {
            Some(queued) if queued.info.uid == info.uid => {
                queued.pod = pod;
                queued.info = info;
                if spec_changed && matches!(queued.state, State::Unschedulable { .. }) {
                    self.activate(&key);
                }
            }
            _ => {
                self.pods.insert(
                    key.clone(),
                    Queued { pod, info, attempts: 0, since: Instant::now(), state: State::InFlight, seq: 0 },
                );
                self.activate(&key);
            }
        }
    }

    pub fn remove(&mut self, key: &ObjectKey) {
        self.pods.remove(key);
        self.waiting.remove(key);
    }

    /// The next pod to schedule, which stays tracked (in flight) until it is bound
    /// ([`SchedulingQueue::remove`]) or has [`SchedulingQueue::failed`].
    pub fn pop(&mut self) -> Option<&Queued> {
        while let Some(entry) = self.active.pop() {
            if let Some(queued) = self.pods.get_mut(&entry.key)
                && queued.seq == entry.seq
                && queued.state == State::Active
            {
                queued.state = State::InFlight;
                queued.attempts += 1;
                return self.pods.get(&entry.key);
            }
        }
        None
    }

    /// A pod that fit nowhere (`unschedulable`) or whose binding failed.
    pub fn failed(&mut self, key: &ObjectKey, unschedulable: bool, now: Instant) {
        let Some(queued) = self.pods.get_mut(key) else { return };
        queued.state = if unschedulable {
            State::Unschedulable { since: now }
        } else {
            State::BackingOff { until: now + backoff(queued.attempts) }
        };
        let due = due(queued.state);
        self.waiting.insert(key.clone());
        self.due = Some(self.due.map_or(due, |d| d.min(due)));
    }

    /// The cluster changed so that waiting pods might fit: they go back in line, after what is
    /// left of their back-off.
    pub fn cluster_changed(&mut self, now: Instant) {
        for key in &self.waiting {
            let queued = self.pods.get_mut(key).expect("waiting pods are tracked");
            if let State::Unschedulable { since } = queued.state {
                queued.state = State::BackingOff { until: since + backoff(queued.attempts) };
            }
        }
        self.due = Some(now);
        self.flush(now);
    }

    /// Moves pods whose back-off has passed, and unschedulable pods that waited long enough,
    /// back in line.
    pub fn flush(&mut self, now: Instant) {
        if self.due.is_none_or(|due| due > now) {
            return;
        }
        let (ready, later): (Vec<ObjectKey>, Vec<ObjectKey>) =
            self.waiting.iter().cloned().partition(|key| due(self.pods[key].state) <= now);
        self.due = later.iter().map(|key| due(self.pods[key].state)).min();
        for key in ready {
            self.activate(&key);
        }
    }

    /// When the next waiting pod is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// Pods waiting or in flight.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn activate(&mut self, key: &ObjectKey) {
        let Some(queued) = self.pods.get_mut(key) else { return };
        self.waiting.remove(key);
        self.seq += 1;
        queued.seq = self.seq;
        queued.state = State::Active;
        self.active.push(Entry { priority: queued.info.priority, seq: self.seq, key: key.clone() });
    }
}

/// When a waiting pod goes back in line.
fn due(state: State) -> Instant {
    match state {
        State::BackingOff { until } => until,
        State::Unschedulable { since } => since + MAX_UNSCHEDULABLE,
        State::Active | State::InFlight => unreachable!("only waiting pods are due"),
    }
}

/// 1 s after the first failure, doubling to 10 s.
fn backoff(attempts: u32) -> Duration {
    INITIAL_BACKOFF.saturating_mul(1 << attempts.saturating_sub(1).min(10)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": name},
                "spec": {"priority": priority, "containers": [{"name": "c"}]},
            }))
            .unwrap(),
        )
    }

    fn pop_name(queue: &mut SchedulingQueue) -> Option<String> {
        queue.pop().map(|q| q.info.key.name.clone())
    }

    #[test]
    fn higher_priority_first_then_first_come_first_served() {
        let mut queue = SchedulingQueue::default();
        queue.upsert(pod("a", 0), false);
        queue.upsert(pod("b", 10), false);
        queue.upsert(pod("c", 0), false);
        assert_eq!(pop_name(&mut queue).as_deref(), Some("b"));
        assert_eq!(pop_name(&mut queue).as_deref(), Some("a"));
        assert_eq!(pop_name(&mut queue).as_deref(), Some("c"));
        assert_eq!(pop_name(&mut queue), None);
    }

    #[test]
    fn an_unschedulable_pod_waits_for_a_change_in_the_cluster() {
        let mut queue = SchedulingQueue::default();
        let now = Instant::now();
        queue.upsert(pod("a", 0), false);
        let key = queue.pop().unwrap().info.key.clone();
        queue.failed(&key, true, now);
        queue.flush(now + Duration::from_secs(60));
        assert_eq!(pop_name(&mut queue), None, "nothing changed");
        // A status update (no change of spec) does not bring it back either.
        queue.upsert(pod("a", 0), false);
        assert_eq!(pop_name(&mut queue), None);
        queue.cluster_changed(now + Duration::from_secs(60));
        assert_eq!(pop_name(&mut queue).as_deref(), Some("a"));
    }

    #[test]
    fn a_failed_binding_backs_off() {
        let mut queue = SchedulingQueue::default();
        let now = Instant::now();
        queue.upsert(pod("a", 0), false);
        let key = queue.pop().unwrap().info.key.clone();
        queue.failed(&key, false, now);
        queue.flush(now + Duration::from_millis(500));
        assert_eq!(pop_name(&mut queue), None);
        assert_eq!(queue.next_due(), Some(now + Duration::from_secs(1)));
        queue.flush(now + Duration::from_secs(1));
        assert_eq!(pop_name(&mut queue).as_deref(), Some("a"));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(9), MAX_BACKOFF);
    }

    #[test]
    fn a_pod_in_flight_is_not_queued_again_by_an_update() {
        let mut queue = SchedulingQueue::default();
        queue.upsert(pod("a", 0), false);
        queue.pop().unwrap();
        queue.upsert(pod("a", 0), true);
        assert_eq!(pop_name(&mut queue), None);
        assert_eq!(queue.len(), 1);
    }
}
