//! The HPA's arithmetic, as upstream's replica calculator (`replica_calculator.go`) and
//! normalization (`horizontal.go`) do it: pure functions of pods, their metrics, and what the
//! controller remembers of its recent recommendations and scalings.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;

/// How far from the target a metric may be before the HPA acts (upstream's
/// `--horizontal-pod-autoscaler-tolerance`).
pub(crate) const TOLERANCE: f64 = 0.1;
/// Within this long of a pod's start its CPU sample counts only once taken a whole window after
/// it turned Ready (`--horizontal-pod-autoscaler-cpu-initialization-period`).
pub(crate) const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// A pod unready since this long after its start has never been ready
/// (`--horizontal-pod-autoscaler-initial-readiness-delay`).
pub(crate) const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);
/// How long a lower recommendation waits before it is followed, without a `behavior`
/// (`--horizontal-pod-autoscaler-downscale-stabilization`).
pub(crate) const DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);

/// `at + by`, or the end of time: a node may report any start time, and none may panic the
/// controller.
fn later(at: Timestamp, by: Duration) -> Timestamp {
    at.checked_add(by).unwrap_or(Timestamp::MAX)
}

/// A pod the target selects, as the calculator needs it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PodView {
    pub name: String,
    pub phase: String,
    pub deleting: bool,
    /// The Ready condition: whether it is not `False` (upstream counts `Unknown` as ready), and
    /// since when.
    pub ready: Option<(bool, Timestamp)>,
    pub started: Option<Timestamp>,
    /// What the pod's containers request of the resource, in milli-units; `Err` names a
    /// container that requests none.
    pub request: Result<i64, String>,
}

/// One pod's usage, in milli-units, measured at `time` over `window`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Sample {
    pub value: i64,
    pub time: Timestamp,
    pub window: Duration,
}

/// What a resource metric aims at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    /// Percent of what the pods request.
    Utilization(i32),
    /// Milli-units per pod.
    AverageValue(i64),
}

/// A replica count and what it was computed from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Computed {
    pub replicas: i32,
    /// Percent of the requests, for a `Utilization` target.
    pub utilization: Option<i32>,
    /// The average per pod, milli-units.
    pub average: i64,
}

/// Pods sorted as `groupPods` sorts them: counted, unready, missing a sample, or ignored.
struct Groups {
    ready: usize,
    unready: HashSet<String>,
    missing: HashSet<String>,
    ignored: HashSet<String>,
}

fn group(pods: &[PodView], samples: &HashMap<String, Sample>, cpu: bool, now: Timestamp) -> Groups {
    let mut groups = Groups { ready: 0, unready: HashSet::new(), missing: HashSet::new(), ignored: HashSet::new() };
    for pod in pods {
        if pod.deleting || pod.phase == "Failed" {
            groups.ignored.insert(pod.name.clone());
            continue;
        }
        if pod.phase == "Pending" {
            groups.unready.insert(pod.name.clone());
            continue;
        }
        let Some(sample) = samples.get(&pod.name) else {
            groups.missing.insert(pod.name.clone());
            continue;
        };
        // CPU spent starting up is not what the pod will use: until a whole window has been
        // measured since it turned ready, its sample does not count.
        if cpu {
            let unready = match (pod.ready, pod.started) {
                (Some((ready, since)), Some(started)) => {
                    if later(started, CPU_INITIALIZATION_PERIOD) > now {
                        !ready || sample.time < later(since, sample.window)
                    } else {
                        !ready && later(started, INITIAL_READINESS_DELAY) > since
                    }
                }
                _ => true,
            };
            if unready {
                groups.unready.insert(pod.name.clone());
                continue;
            }
        }
        groups.ready += 1;
    }
    groups
}

/// The usage ratio against `target`, the utilization, and the average, over the samples of
/// pods with a request (`GetResourceUtilizationRatio`, `GetMetricUsageRatio`).
fn ratio(
    samples: &HashMap<String, Sample>,
    requests: &HashMap<String, i64>,
    target: Target,
) -> Result<(f64, Option<i32>, i64), String> {
    match target {
        Target::Utilization(percent) => {
            let (mut used, mut requested, mut counted) = (0i64, 0i64, 0i64);
            for (name, sample) in samples {
                if let Some(request) = requests.get(name) {
                    used += sample.value;
                    requested += request;
                    counted += 1;
                }
            }
            if requested == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let utilization = i32::try_from(used * 100 / requested).unwrap_or(i32::MAX);
            Ok((f64::from(utilization) / f64::from(percent), Some(utilization), used / counted))
        }
        Target::AverageValue(per_pod) => {
            let average = samples.values().map(|s| s.value).sum::<i64>() / samples.len().max(1) as i64;
            Ok((average as f64 / per_pod as f64, None, average))
        }
    }
}

fn within_tolerance(ratio: f64) -> bool {
    (1.0 - ratio).abs() <= TOLERANCE
}

/// The replicas a resource metric asks for (`GetResourceReplicas`, `GetRawResourceReplicas`):
/// `current` now, `pods` the target's, `samples` their usage by pod name.
pub(crate) fn resource_replicas(
    current: i32,
    target: Target,
    cpu: bool,
    pods: &[PodView],
    mut samples: HashMap<String, Sample>,
    now: Timestamp,
) -> Result<Computed, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let groups = group(pods, &samples, cpu, now);
    samples.retain(|name, _| !groups.ignored.contains(name) && !groups.unready.contains(name));
    if samples.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = HashMap::new();
    if let Target::Utilization(_) = target {
        for pod in pods {
            requests.insert(pod.name.clone(), pod.request.clone()?);
        }
    }
    let (usage_ratio, utilization, average) = ratio(&samples, &requests, target)?;
    let computed = |replicas: i32| Computed { replicas, utilization, average };
    let scale_up_with_unready = !groups.unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if within_tolerance(usage_ratio) {
            return Ok(computed(current));
        }
        return Ok(computed((usage_ratio * groups.ready as f64).ceil() as i32));
    }
    // Pods without a sample are assumed at their request (or the target) on the way down, and
    // idle on the way up; unready pods idle on the way up: the move is never overstated.
    for name in &groups.missing {
        let value = match target {
            _ if usage_ratio > 1.0 => 0,
            Target::Utilization(_) => requests.get(name).copied().unwrap_or(0),
            Target::AverageValue(per_pod) => per_pod,
        };
        if usage_ratio != 1.0 {
            samples.insert(name.clone(), Sample { value, time: now, window: Duration::ZERO });
        }
    }
    if scale_up_with_unready {
        for name in &groups.unready {
            samples.insert(name.clone(), Sample { value: 0, time: now, window: Duration::ZERO });
        }
    }
    let (new_ratio, _, _) = ratio(&samples, &requests, target)?;
    if within_tolerance(new_ratio) || (usage_ratio < 1.0 && new_ratio > 1.0) || (usage_ratio > 1.0 && new_ratio < 1.0) {
        return Ok(computed(current));
    }
    let replicas = (new_ratio * samples.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(computed(current));
    }
    Ok(computed(replicas))
}

/// What an `Object` metric aims at, in milli-units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ObjectTarget {
    /// The object's value, whatever the replicas.
    Value(i64),
    /// The object's value per replica.
    AverageValue(i64),
}

/// The replicas an `Object` metric whose value is `usage` asks for, and what its status
/// reports (the value, or its average per replica): `GetObjectMetricReplicas` against the
/// `ready` pods for a value, `GetObjectPerPodMetricReplicas` against the target's
/// `status_replicas` for an average. At zero replicas a value asks for as many as its ratio
/// (so an HPA at zero wakes on any usage), as upstream's `getUsageRatioReplicaCount` does.
pub(crate) fn object_replicas(
    usage: i64,
    target: ObjectTarget,
    replicas: i32,
    status_replicas: i32,
    ready: usize,
) -> (i32, i64) {
    let ceil = |value: f64| value.ceil().clamp(0.0, f64::from(i32::MAX)) as i32;
    match target {
        ObjectTarget::AverageValue(per_replica) => {
            let per_replica = per_replica.max(1) as f64;
            // At zero replicas the ratio is infinite (or, with no usage, not a number): any
            // usage asks for replicas, none asks for none.
            let ratio = usage as f64 / (per_replica * f64::from(status_replicas));
            let proposed =
                if (1.0 - ratio).abs() > TOLERANCE { ceil(usage as f64 / per_replica) } else { status_replicas };
            let average =
                if status_replicas > 0 { ceil(usage as f64 / f64::from(status_replicas)) as i64 } else { usage };
            (proposed, average)
        }
        ObjectTarget::Value(value) => {
            let ratio = usage as f64 / value.max(1) as f64;
            let proposed = if replicas == 0 {
                ceil(ratio)
            } else if within_tolerance(ratio) {
                replicas
            } else {
                ceil(ratio * ready as f64)
            };
            (proposed, usage)
        }
    }
}

/// A condition the normalization sets: its reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Said {
    pub reason: &'static str,
    pub message: &'static str,
}

const READY_FOR_NEW_SCALE: Said = Said { reason: "ReadyForNewScale", message: "recommended size matches current size" };
const SCALE_DOWN_STABILIZED: Said = Said {
    reason: "ScaleDownStabilized",
    message: "recent recommendations were higher than current one, applying the highest recent recommendation",
};
const SCALE_UP_STABILIZED: Said = Said {
    reason: "ScaleUpStabilized",
    message: "recent recommendations were lower than current one, applying the lowest recent recommendation",
};
const WITHIN_RANGE: Said =
    Said { reason: "DesiredWithinRange", message: "the desired count is within the acceptable range" };
const TOO_FEW: Said =
    Said { reason: "TooFewReplicas", message: "the desired replica count is less than the minimum replica count" };
const TOO_MANY: Said =
    Said { reason: "TooManyReplicas", message: "the desired replica count is more than the maximum replica count" };
const SCALE_UP_LIMIT: Said = Said {
    reason: "ScaleUpLimit",
    message: "the desired replica count is increasing faster than the maximum scale rate",
};
const SCALE_DOWN_LIMIT: Said = Said {
    reason: "ScaleDownLimit",
    message: "the desired replica count is decreasing faster than the maximum scale rate",
};

/// How fast one direction may go (an HPA's `behavior.scaleUp` or `scaleDown`, defaulted).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rules {
    pub window: Duration,
    pub select: Select,
    /// (per pod or percent, value, period).
    pub policies: Vec<(Policy, i32, Duration)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    Pods,
    Percent,
}

/// What the controller remembers of one HPA: its recent recommendations and scalings.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Memory {
    recommendations: Vec<(i32, Timestamp)>,
    ups: Vec<(i32, Timestamp)>,
    downs: Vec<(i32, Timestamp)>,
}

/// The count to scale to, and the `AbleToScale` and `ScalingLimited` conditions' reasons (the
/// latter `true` when the limits changed the count).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Normalized {
    pub replicas: i32,
    pub able: Said,
    pub limited: (bool, Said),
}

impl Memory {
    /// Seeds the recommendations with the current count (`recordInitialRecommendation`).
    pub(crate) fn start(&mut self, current: i32, now: Timestamp) {
        if self.recommendations.is_empty() {
            self.recommendations.push((current, now));
        }
    }

    /// Records `recommendation`, replacing one older than `cutoff` if there is one.
    fn record(&mut self, recommendation: i32, now: Timestamp, old: impl Fn(Timestamp) -> bool) {
        match self.recommendations.iter_mut().find(|(_, at)| old(*at)) {
            Some(slot) => *slot = (recommendation, now),
            None => self.recommendations.push((recommendation, now)),
        }
    }

    /// Without a `behavior`: the highest recommendation of the last five minutes, within
    /// `[min, max]` and at most double (or 4) of `current` (`normalizeDesiredReplicas`).
    pub(crate) fn normalize(&mut self, current: i32, desired: i32, min: i32, max: i32, now: Timestamp) -> Normalized {
        let cutoff = now - DOWNSCALE_STABILIZATION;
        let stabilized =
            self.recommendations.iter().filter(|(_, at)| *at > cutoff).map(|(r, _)| *r).fold(desired, i32::max);
        self.record(desired, now, |at| at < cutoff);
        let able = if stabilized != desired { SCALE_DOWN_STABILIZED } else { READY_FOR_NEW_SCALE };
        let scale_up_limit = current.saturating_mul(2).max(4);
        let (most, over) = if max > scale_up_limit { (scale_up_limit, SCALE_UP_LIMIT) } else { (max, TOO_MANY) };
        let (replicas, said) = if stabilized < min {
            (min, TOO_FEW)
        } else if stabilized > most {
            (most, over)
        } else {
            (stabilized, WITHIN_RANGE)
        };
        Normalized { replicas, able, limited: (replicas != stabilized, said) }
    }

    /// With a `behavior`: stabilized within each direction's window, then held to its policies
    /// over their periods (`normalizeDesiredReplicasWithBehaviors`).
    pub(crate) fn normalize_with(
        &mut self,
        current: i32,
        desired: i32,
        (min, max): (i32, i32),
        up: &Rules,
        down: &Rules,
        now: Timestamp,
    ) -> Normalized {
        let (up_cutoff, down_cutoff) = (now - up.window, now - down.window);
        let mut up_recommendation = desired;
        let mut down_recommendation = desired;
        for (recommendation, at) in &self.recommendations {
            if *at > up_cutoff {
                up_recommendation = up_recommendation.min(*recommendation);
            }
            if *at > down_cutoff {
                down_recommendation = down_recommendation.max(*recommendation);
            }
        }
        let stabilized = current.max(up_recommendation).min(down_recommendation);
        self.record(desired, now, |at| at < up_cutoff && at < down_cutoff);
        let able = match (stabilized != desired, desired >= current) {
            (false, _) => READY_FOR_NEW_SCALE,
            (true, true) => SCALE_UP_STABILIZED,
            (true, false) => SCALE_DOWN_STABILIZED,
        };
        let changed = |events: &[(i32, Timestamp)], period: Duration| -> i32 {
            events.iter().filter(|(_, at)| *at > now - period).map(|(n, _)| *n).sum()
        };
        let period_start = |period: Duration| current - changed(&self.ups, period) + changed(&self.downs, period);
        let (replicas, said) = if stabilized > current {
            let limit = match up.select {
                Select::Disabled => current,
                select => {
                    let proposals = up.policies.iter().map(|(policy, value, period)| {
                        let start = period_start(*period);
                        match policy {
                            Policy::Pods => start.saturating_add(*value),
                            Policy::Percent => (f64::from(start) * (1.0 + f64::from(*value) / 100.0)).ceil() as i32,
                        }
                    });
                    let pick = if select == Select::Min { proposals.min() } else { proposals.max() };
                    pick.unwrap_or(current)
                }
            }
            .max(current);
            let (most, over) = if max > limit { (limit, SCALE_UP_LIMIT) } else { (max, TOO_MANY) };
            if stabilized > most { (most, over) } else { (stabilized, WITHIN_RANGE) }
        } else if stabilized < current {
            let limit = match down.select {
                Select::Disabled => current,
                select => {
                    let proposals = down.policies.iter().map(|(policy, value, period)| {
                        let start = period_start(*period);
                        match policy {
                            Policy::Pods => start.saturating_sub(*value),
                            Policy::Percent => (f64::from(start) * (1.0 - f64::from(*value) / 100.0)) as i32,
                        }
                    });
                    let pick = if select == Select::Min { proposals.max() } else { proposals.min() };
                    pick.unwrap_or(current)
                }
            }
            .min(current);
            let (least, under) = if min < limit { (limit, SCALE_DOWN_LIMIT) } else { (min, TOO_FEW) };
            if stabilized < least { (least, under) } else { (stabilized, WITHIN_RANGE) }
        } else {
            (stabilized, WITHIN_RANGE)
        };
        Normalized { replicas, able, limited: (replicas != stabilized, said) }
    }

    /// A scaling from `from` to `to` happened at `now`: the policies' periods count it.
    /// Scalings older than the longest period are dropped.
    pub(crate) fn scaled(&mut self, from: i32, to: i32, longest_period: Duration, now: Timestamp) {
        let cutoff = now - longest_period;
        for events in [&mut self.ups, &mut self.downs] {
            events.retain(|(_, at)| *at > cutoff);
        }
        if to > from {
            self.ups.push((to - from, now));
        } else if to < from {
            self.downs.push((from - to, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    /// Pods `p0`, `p1`, … Running and Ready long since, each requesting `requests[i]` millicores.
    fn pods(requests: &[i64]) -> Vec<PodView> {
        requests
            .iter()
            .enumerate()
            .map(|(i, request)| PodView {
                name: format!("p{i}"),
                phase: "Running".into(),
                deleting: false,
                ready: Some((true, at(-3600))),
                started: Some(at(-3600)),
                request: Ok(*request),
            })
            .collect()
    }

    fn samples(levels: &[Option<i64>]) -> HashMap<String, Sample> {
        levels
            .iter()
            .enumerate()
            .filter_map(|(i, level)| {
                Some((format!("p{i}"), Sample { value: (*level)?, time: at(0), window: Duration::from_secs(30) }))
            })
            .collect()
    }

    fn replicas(current: i32, target: Target, pods: &[PodView], levels: &[Option<i64>]) -> Result<Computed, String> {
        resource_replicas(current, target, true, pods, samples(levels), at(0))
    }

    // The cases of upstream's replica_calculator_test.go.
    #[test]
    fn utilization_scales_in_proportion_beyond_the_tolerance() {
        // TestReplicaCalcScaleUp: 50% against 30% takes 3 pods to 5.
        let up = replicas(3, Target::Utilization(30), &pods(&[1000; 3]), &[Some(300), Some(500), Some(700)]).unwrap();
        assert_eq!(up, Computed { replicas: 5, utilization: Some(50), average: 500 });
        // TestReplicaCalcScaleDown: 28% against 50% takes 5 to 3.
        let levels = [Some(100), Some(300), Some(500), Some(250), Some(250)];
        let down = replicas(5, Target::Utilization(50), &pods(&[1000; 5]), &levels).unwrap();
        assert_eq!(down, Computed { replicas: 3, utilization: Some(28), average: 280 });
        // TestReplicaCalcTolerance: 102% against 100% is close enough.
        let pods = pods(&[900, 1000, 1100]);
        let near = replicas(3, Target::Utilization(100), &pods, &[Some(1010), Some(1030), Some(1020)]).unwrap();
        assert_eq!((near.replicas, near.utilization), (3, Some(102)));
        // An average value: 500m a pod against 250m doubles them.
        let raw = replicas(2, Target::AverageValue(250), &pods[..2], &[Some(500), Some(500)]).unwrap();
        assert_eq!((raw.replicas, raw.utilization, raw.average), (4, None, 500));
    }

    #[test]
    fn unready_and_missing_pods_never_overstate_the_move() {
        // TestReplicaCalcScaleUpUnreadyLessScale: an unready pod counts as idle on the way up.
        let mut three = pods(&[1000; 3]);
        three[0].ready = Some((false, at(-3600)));
        let up = replicas(3, Target::Utilization(30), &three, &[Some(300), Some(500), Some(700)]).unwrap();
        assert_eq!((up.replicas, up.utilization), (4, Some(60)));
        // A pod without a sample counts as using its whole request on the way down…
        let four = pods(&[1000; 4]);
        let down = replicas(4, Target::Utilization(50), &four, &[Some(100), Some(100), Some(100), None]).unwrap();
        assert_eq!((down.replicas, down.utilization), (3, Some(10)));
        // … and when that reverses the direction, nothing changes.
        let even = replicas(2, Target::Utilization(100), &four[..2], &[Some(1000), None]).unwrap();
        assert_eq!(even.replicas, 2);
        // Pending pods wait; pods being deleted or failed do not count at all.
        let mut mixed = pods(&[1000; 3]);
        mixed[1].phase = "Pending".into();
        mixed[2].deleting = true;
        let alone = replicas(3, Target::Utilization(50), &mixed, &[Some(500), Some(900), Some(900)]).unwrap();
        assert_eq!((alone.replicas, alone.utilization), (3, Some(50)));
    }

    #[test]
    fn a_cpu_sample_from_a_pods_start_up_does_not_count() {
        let mut young = pods(&[1000; 2]);
        // Ready 10 s ago, sampled over 30 s ending now: the window reaches back into its start.
        young[1].started = Some(at(-60));
        young[1].ready = Some((true, at(-10)));
        let computed = replicas(2, Target::Utilization(50), &young, &[Some(500), Some(1000)]).unwrap();
        assert_eq!(computed.utilization, Some(50), "p1's sample is left out");
        // Memory samples count from the start.
        let memory =
            resource_replicas(2, Target::Utilization(50), false, &young, samples(&[Some(500), Some(1000)]), at(0));
        assert_eq!(memory.unwrap().utilization, Some(75));
    }

    #[test]
    fn what_cannot_be_computed_says_why_as_upstream_does() {
        let err = |result: Result<Computed, String>| result.unwrap_err();
        assert_eq!(
            err(replicas(1, Target::Utilization(50), &[], &[])),
            "no pods returned by selector while calculating replica count"
        );
        assert_eq!(
            err(replicas(1, Target::Utilization(50), &pods(&[1000]), &[None])),
            "did not receive metrics for targeted pods (pods might be unready)"
        );
        let mut unrequested = pods(&[1000]);
        unrequested[0].request = Err("missing request for cpu in container app of Pod p0".into());
        assert_eq!(
            err(replicas(1, Target::Utilization(50), &unrequested, &[Some(100)])),
            "missing request for cpu in container app of Pod p0"
        );
    }

    #[test]
    fn without_a_behavior_scale_down_waits_five_minutes_and_scale_up_at_most_doubles() {
        let mut memory = Memory::default();
        memory.start(5, at(0));
        // Lower recommendations wait for the window…
        let held = memory.normalize(5, 2, 1, 10, at(60));
        assert_eq!((held.replicas, held.able.reason), (5, "ScaleDownStabilized"));
        // … and are followed once the higher ones are older than it.
        let followed = memory.normalize(5, 2, 1, 10, at(400));
        assert_eq!((followed.replicas, followed.able.reason, followed.limited.0), (2, "ReadyForNewScale", false));
        let mut fresh = Memory::default();
        fresh.start(1, at(0));
        let up = fresh.normalize(1, 10, 1, 20, at(15));
        assert_eq!((up.replicas, up.limited), (4, (true, SCALE_UP_LIMIT)));
        let capped = fresh.normalize(4, 30, 1, 6, at(30));
        assert_eq!((capped.replicas, capped.limited), (6, (true, TOO_MANY)));
        // Below the minimum, once nothing recent asks for more.
        let mut idle = Memory::default();
        idle.start(1, at(0));
        let floor = idle.normalize(1, 0, 1, 6, at(400));
        assert_eq!((floor.replicas, floor.limited), (1, (true, TOO_FEW)));
    }

    #[test]
    fn a_behavior_limits_each_direction_by_its_policies_over_their_periods() {
        let default_up = Rules {
            window: Duration::ZERO,
            select: Select::Max,
            policies: vec![(Policy::Pods, 4, Duration::from_secs(15)), (Policy::Percent, 100, Duration::from_secs(15))],
        };
        let quick_down = Rules {
            window: Duration::ZERO,
            select: Select::Max,
            policies: vec![(Policy::Percent, 100, Duration::from_secs(15))],
        };
        let mut memory = Memory::default();
        memory.start(2, at(0));
        // From 2: four pods more or double, whichever is more.
        let up = memory.normalize_with(2, 10, (1, 20), &default_up, &quick_down, at(1));
        assert_eq!((up.replicas, up.limited), (6, (true, SCALE_UP_LIMIT)));
        memory.scaled(2, 6, Duration::from_secs(15), at(1));
        // Within the same 15 s the period started at 2: no more than 6 yet.
        let again = memory.normalize_with(6, 10, (1, 20), &default_up, &quick_down, at(5));
        assert_eq!(again.replicas, 6);
        // A period later it may go on.
        let later = memory.normalize_with(6, 10, (1, 20), &default_up, &quick_down, at(20));
        assert_eq!((later.replicas, later.limited.0), (10, false));
        // Down by 100% in a period: straight to the minimum.
        let down = memory.normalize_with(10, 1, (1, 20), &default_up, &quick_down, at(40));
        assert_eq!((down.replicas, down.able.reason), (1, "ReadyForNewScale"));
        // A disabled direction holds.
        let disabled = Rules { select: Select::Disabled, ..quick_down.clone() };
        let held = memory.normalize_with(10, 1, (1, 20), &default_up, &disabled, at(60));
        assert_eq!((held.replicas, held.limited.1.reason), (10, "ScaleDownLimit"));
        // A scale-down window keeps the highest recommendation within it.
        let windowed = Rules { window: Duration::from_secs(300), ..quick_down };
        let mut recent = Memory::default();
        recent.start(8, at(0));
        let stabilized = recent.normalize_with(8, 3, (1, 20), &default_up, &windowed, at(100));
        assert_eq!((stabilized.replicas, stabilized.able.reason), (8, "ScaleDownStabilized"));
    }

    #[test]
    fn object_metrics_follow_upstreams_worked_examples() {
        // TestReplicaCalcScaleUpCMObject: 500 against 400 with 3 ready pods.
        assert_eq!(object_replicas(500_000, ObjectTarget::Value(400_000), 3, 3, 3), (4, 500_000));
        // TestReplicaCalcScaleDownCMObject: 12000 against 20000 with 5.
        assert_eq!(object_replicas(12_000_000, ObjectTarget::Value(20_000_000), 5, 5, 5), (3, 12_000_000));
        // TestReplicaCalcScaleUpCMPerPodObject: 20000 at 5000 per replica, over 3.
        assert_eq!(object_replicas(20_000_000, ObjectTarget::AverageValue(5_000_000), 3, 3, 3), (4, 6_666_667));
        // Within tolerance: unchanged.
        assert_eq!(object_replicas(1_050_000, ObjectTarget::Value(1_000_000), 4, 4, 4).0, 4);
        assert_eq!(object_replicas(2_050_000, ObjectTarget::AverageValue(1_000_000), 2, 2, 2).0, 2);
        // From zero: any usage asks for what it needs; none asks for none.
        assert_eq!(object_replicas(3_000, ObjectTarget::AverageValue(2_000), 0, 0, 0), (2, 3_000));
        assert_eq!(object_replicas(0, ObjectTarget::AverageValue(2_000), 0, 0, 0), (0, 0));
        assert_eq!(object_replicas(500, ObjectTarget::Value(1_000), 0, 0, 0), (1, 500));
        // Idle: to zero.
        assert_eq!(object_replicas(0, ObjectTarget::AverageValue(2_000), 1, 1, 1), (0, 0));
    }
}
