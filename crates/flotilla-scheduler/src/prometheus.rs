//! The scheduler's measurements, as kube-scheduler names them: its attempts by result (an
//! attempt whose binding fails is an `error`, not also `scheduled`), and how long pods took from
//! first queued to bound, under the current name and under the one deprecated in 1.29 that
//! dashboards still read.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::DEFAULT_SCHEDULER;

/// How a scheduling attempt ended (upstream's `result` label).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Attempt {
    Scheduled,
    Unschedulable,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempted {
    result: &'static str,
    profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempts {
    attempts: String,
}

/// Register once with [`SchedulerMetrics::register`] and hand a clone to each start of the
/// scheduler: the counts go on across its restarts (a change of leader).
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    attempts: Family<Attempted, Counter>,
    durations: Family<Attempts, Histogram, fn() -> Histogram>,
    deprecated_durations: Family<Attempts, Histogram, fn() -> Histogram>,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        // Upstream's buckets: 10 ms to about 1.5 h, doubling.
        let durations: fn() -> Histogram = || Histogram::new(exponential_buckets(0.01, 2.0, 20));
        SchedulerMetrics {
            attempts: Family::default(),
            durations: Family::new_with_constructor(durations),
            deprecated_durations: Family::new_with_constructor(durations),
        }
    }
}

impl SchedulerMetrics {
    pub fn register(registry: &mut Registry) -> SchedulerMetrics {
        let metrics = SchedulerMetrics::default();
        registry.register(
            "scheduler_schedule_attempts",
            "[STABLE] Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            metrics.attempts.clone(),
        );
        registry.register(
            "scheduler_pod_scheduling_sli_duration_seconds",
            "[BETA] E2e latency for a pod being scheduled, from the time the pod enters the scheduling queue and might involve multiple scheduling attempts.",
            metrics.durations.clone(),
        );
        registry.register(
            "scheduler_pod_scheduling_duration_seconds",
            "[ALPHA] (Deprecated since 1.29.0) E2e latency for a pod being scheduled which may include multiple scheduling attempts.",
            metrics.deprecated_durations.clone(),
        );
        metrics
    }

    pub(crate) fn attempted(&self, result: Attempt) {
        let result = match result {
            Attempt::Scheduled => "scheduled",
            Attempt::Unschedulable => "unschedulable",
            Attempt::Error => "error",
        };
        self.attempts.get_or_create(&Attempted { result, profile: DEFAULT_SCHEDULER }).inc();
    }

    /// A pod bound after `attempts`, `took` after it was first queued.
    pub(crate) fn bound(&self, attempts: u32, took: Duration) {
        // Pods tried 15 times or more share one label, so that the family stays small.
        let attempts = if attempts >= 15 { "15+".to_string() } else { attempts.to_string() };
        let attempts = Attempts { attempts };
        self.durations.get_or_create(&attempts).observe(took.as_secs_f64());
        self.deprecated_durations.get_or_create(&attempts).observe(took.as_secs_f64());
    }
}
