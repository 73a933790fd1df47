//! What the agent knows of one container of a pod: its current run, its last ended run, its
//! restart count and back-off. The pod worker updates records as runs start and end; the plan
//! and the status are computed from them.

use std::time::{Duration, Instant};

use jiff::Timestamp;

/// Restarts back off from this delay …
pub(super) const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// … doubling up to this one (the kubelet's `MaxContainerBackOff`) …
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// … and start over after a run this long (twice the maximum, as upstream's back-off expires).
pub(super) const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How a run of a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Terminated {
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, …
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub container_id: String,
}

/// The state of a container's current (or most recent) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Run {
    /// Not started yet (or between runs): `reason` says why it waits
    /// (`ContainerCreating`, `PodInitializing`, `ErrImagePull`, `CreateContainerError`, …).
    Waiting {
        reason: String,
        message: Option<String>,
    },
    /// Its image is being resolved and its module loaded. A retry after a failed attempt
    /// goes on showing why the last attempt failed, as the kubelet's status does until the
    /// new attempt has an outcome.
    Starting {
        shown: Option<(String, Option<String>)>,
    },
    Running {
        started_at: Timestamp,
        container_id: String,
    },
    Exited(Terminated),
}

/// One container of the pod, init or regular.
#[derive(Debug, Clone)]
pub(super) struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// A sidecar: an init container that restarts always and runs beside the others.
    pub sidecar: bool,
    /// The image's digest-pinned reference, once resolved.
    pub image_id: Option<String>,
    pub restart_count: i32,
    pub run: Run,
    /// The run before the current one, as `lastState.terminated` shows it.
    pub last: Option<Terminated>,
    pub backoff: Backoff,
    /// When, after a failed image pull or start, the next attempt may be made.
    pub retry_at: Option<Instant>,
    /// When the last run ended, on the clock back-offs are measured by.
    pub exited_at: Option<Instant>,
    /// Failed attempts to set a run up (image pulls, configuration) since the last start:
    /// each retry waits twice as long as the one before.
    pub start_failures: u32,
    /// The current wait in back-off has had its `BackOff` event.
    pub backoff_reported: bool,
    /// Its startup probe passed (or it has none) in the current run.
    pub started: bool,
    /// Its readiness (a running container without a readiness probe is ready).
    pub ready: bool,
}

impl ContainerRecord {
    pub(super) fn new(name: &str, image: &str, reason: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            image: image.into(),
            sidecar: false,
            image_id: None,
            restart_count: 0,
            run: Run::Waiting { reason: reason.into(), message: None },
            last: None,
            backoff: Backoff::default(),
            retry_at: None,
            exited_at: None,
            start_failures: 0,
            backoff_reported: false,
            started: false,
            ready: false,
        }
    }

    pub(super) fn is_running(&self) -> bool {
        matches!(self.run, Run::Running { .. })
    }

    /// It has run, or its first run is under way (upstream: the runtime has a container of it).
    pub(super) fn has_run(&self) -> bool {
        !matches!(self.run, Run::Waiting { .. }) || self.last.is_some()
    }

    /// Running or about to (its start is under way).
    pub(super) fn is_active(&self) -> bool {
        matches!(self.run, Run::Running { .. } | Run::Starting { .. })
    }

    /// Records the end of the current run.
    pub(super) fn exit(&mut self, terminated: Terminated, at: Instant) {
        self.ready = false;
        self.started = false;
        self.exited_at = Some(at);
        self.run = Run::Exited(terminated);
    }

    /// Records that a new run is being set up. An ended run becomes `last`, and the new one
    /// counts as a restart from now on, as upstream counts a restart when it creates the
    /// container.
    pub(super) fn begin(&mut self) {
        let shown = match &self.run {
            Run::Waiting { reason, message } if self.start_failures > 0 => Some((reason.clone(), message.clone())),
            _ => None,
        };
        if let Run::Exited(previous) = std::mem::replace(&mut self.run, Run::Starting { shown }) {
            self.last = Some(previous);
            self.restart_count += 1;
        }
        self.retry_at = None;
        self.backoff_reported = false;
    }

    /// Records that the run set up by [`begin`](Self::begin) is running.
    pub(super) fn running(&mut self, started_at: Timestamp, container_id: String) {
        self.run = Run::Running { started_at, container_id };
        self.start_failures = 0;
    }

    /// Records that a run could not be set up; it is tried again after a delay that doubles
    /// with each failure, from [`BACKOFF_INITIAL`] up to [`BACKOFF_MAX`].
    pub(super) fn failed_to_start(&mut self, reason: &str, message: String, now: Instant) {
        self.run = Run::Waiting { reason: reason.into(), message: Some(message) };
        let delay = BACKOFF_INITIAL.saturating_mul(1 << self.start_failures.min(8)).min(BACKOFF_MAX);
        self.start_failures += 1;
        self.retry_at = Some(now + delay);
    }

    /// A new run at once, for tests.
    #[cfg(test)]
    pub(super) fn start(&mut self, started_at: Timestamp, container_id: String) {
        self.begin();
        self.running(started_at, container_id);
    }
}

/// The kubelet's restart back-off for one container: the first restart is immediate, then
/// each waits twice as long as the one before, from [`BACKOFF_INITIAL`] up to [`BACKOFF_MAX`],
/// measured from when the run ended; a run longer than [`BACKOFF_RESET`] starts it over.
#[derive(Debug, Clone, Default)]
pub(super) struct Backoff {
    /// The current delay and the end of the run that set it.
    entry: Option<(Duration, Instant)>,
}

impl Backoff {
    /// How long a container that ended at `finished` must still wait at `now`, if at all.
    pub(super) fn remaining(&self, finished: Instant, now: Instant) -> Option<Duration> {
        let (delay, _) = self.entry.filter(|(_, updated)| !expired(*updated, finished))?;
        let waited = now.saturating_duration_since(finished);
        (waited < delay).then(|| delay - waited)
    }

    /// The delay a wait would show (`back-off 20s restarting …`).
    pub(super) fn delay(&self) -> Duration {
        self.entry.map_or(Duration::ZERO, |(delay, _)| delay)
    }

    /// Records a restart of a container that ended at `finished`: the next one waits longer.
    pub(super) fn next(&mut self, finished: Instant) {
        let delay = match self.entry {
            Some((delay, updated)) if !expired(updated, finished) => (delay * 2).min(BACKOFF_MAX),
            _ => BACKOFF_INITIAL,
        };
        self.entry = Some((delay, finished));
    }
}

fn expired(updated: Instant, finished: Instant) -> bool {
    finished.saturating_duration_since(updated) > BACKOFF_RESET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_as_the_kubelet_does() {
        let t0 = Instant::now();
        let mut backoff = Backoff::default();
        // The first restart is immediate …
        assert_eq!(backoff.remaining(t0, t0), None);
        backoff.next(t0);
        // … the next waits 10 s from the end of the run, then 20 s, 40 s, … up to 5 min.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(backoff.remaining(t1, t1 + Duration::from_secs(4)), Some(Duration::from_secs(6)));
        assert_eq!(backoff.remaining(t1, t1 + Duration::from_secs(10)), None);
        let mut finished = t1;
        let mut delays = Vec::new();
        for _ in 0..8 {
            backoff.next(finished);
            delays.push(backoff.delay().as_secs());
            finished += backoff.delay() + Duration::from_secs(1);
        }
        assert_eq!(delays, [20, 40, 80, 160, 300, 300, 300, 300]);
        // A run longer than ten minutes starts it over.
        let late = finished + BACKOFF_RESET + Duration::from_secs(1);
        assert_eq!(backoff.remaining(late, late), None);
        backoff.next(late);
        assert_eq!(backoff.delay(), BACKOFF_INITIAL);
    }

    #[test]
    fn a_restart_moves_the_ended_run_to_last_state() {
        let mut record = ContainerRecord::new("app", "hello", "ContainerCreating");
        let now = Timestamp::now();
        record.start(now, "wasm://1".into());
        assert_eq!(record.restart_count, 0);
        let ended = Terminated {
            exit_code: 1,
            reason: "Error".into(),
            message: None,
            started_at: now,
            finished_at: now,
            container_id: "wasm://1".into(),
        };
        record.exit(ended.clone(), Instant::now());
        record.start(now, "wasm://2".into());
        assert_eq!(record.restart_count, 1);
        assert_eq!(record.last, Some(ended));
    }
}
