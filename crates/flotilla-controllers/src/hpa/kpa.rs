//! Knative's pod autoscaler (KPA) for the requests the nodes count: an HPA's `Pods` or `Object`
//! metric of requests (`requests_in_flight`, `requests_per_second`) with an `averageValue`
//! target is a target per pod, as Knative's concurrency or RPS target is. Its value is read
//! every second and averaged over two windows: the stable window (60 s), whose average decides
//! in stable mode, and the panic window (6 s, a tenth of it). When the panic window's average
//! asks for at least twice the ready pods (the panic threshold), the autoscaler panics: it
//! decides on the higher of the two averages, never scales down, and stays so until a stable
//! window has passed below the threshold (`pkg/autoscaler/scaling/autoscaler.go`'s `Scale`).
//!
//! Knative's rate limits (`max-scale-up-rate`, `max-scale-down-rate`) are the HPA's `behavior`
//! here, which applies after this recommendation as it applies to any other; its windows are
//! set on the HPA with Knative's annotations (`autoscaling.knative.dev/window`,
//! `panic-window-percentage`, `panic-threshold-percentage`), in Knative's ranges.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;

/// The stable window, a Go duration (Knative's `autoscaling.knative.dev/window`).
pub(crate) const WINDOW: &str = "autoscaling.knative.dev/window";
/// The panic window, in percent of the stable window.
pub(crate) const PANIC_WINDOW_PERCENTAGE: &str = "autoscaling.knative.dev/panic-window-percentage";
/// The panic threshold, in percent of the ready pods' capacity.
pub(crate) const PANIC_THRESHOLD_PERCENTAGE: &str = "autoscaling.knative.dev/panic-threshold-percentage";

/// How often the values are read: Knative's autoscaler reads its pods every second.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// An HPA's windows and threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Windows {
    pub stable: Duration,
    pub panic: Duration,
    /// Panic when the panic window asks for this many times the ready pods.
    pub threshold: f64,
}

impl Default for Windows {
    /// Knative's defaults: 60 s, 10 % of it, 200 %.
    fn default() -> Windows {
        Windows { stable: Duration::from_secs(60), panic: Duration::from_secs(6), threshold: 2.0 }
    }
}

impl Windows {
    /// The windows an HPA's annotations set, in Knative's bounds (its webhook's): a stable
    /// window of 6 s to an hour, whole seconds; a panic window of 1 to 100 % of it; a
    /// threshold of 110 to 1000 %.
    pub(crate) fn of(
        annotations: Option<&BTreeMap<String, String>>,
        parse_duration: impl Fn(&str) -> Option<Duration>,
    ) -> Result<Windows, String> {
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let invalid = |key: &str, value: &str, why: &str| format!("invalid annotation {key}={value:?}: {why}");
        let percent = |key: &str, range: std::ops::RangeInclusive<f64>| -> Result<Option<f64>, String> {
            let Some(value) = get(key) else { return Ok(None) };
            match value.trim().parse::<f64>() {
                Ok(percent) if range.contains(&percent) => Ok(Some(percent)),
                _ => Err(invalid(key, value, &format!("must be a number from {} to {}", range.start(), range.end()))),
            }
        };
        let stable = match get(WINDOW) {
            None => Windows::default().stable,
            Some(value) => match parse_duration(value) {
                Some(window)
                    if (Duration::from_secs(6)..=Duration::from_secs(3600)).contains(&window)
                        && window.subsec_nanos() == 0 =>
                {
                    window
                }
                _ => return Err(invalid(WINDOW, value, "must be whole seconds from 6s to 1h")),
            },
        };
        let panic_percent = percent(PANIC_WINDOW_PERCENTAGE, 1.0..=100.0)?.unwrap_or(10.0);
        // Shorter than a tick, it holds the last value alone.
        let panic = stable.mul_f64(panic_percent / 100.0);
        let threshold = percent(PANIC_THRESHOLD_PERCENTAGE, 110.0..=1000.0)?.unwrap_or(200.0) / 100.0;
        Ok(Windows { stable, panic, threshold })
    }
}

/// A metric's recent values, and whether the autoscaler panics over it (Knative's
/// `autoscaler`: `panicTime`, `maxPanicPods`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    /// Its values, the oldest first, none older than the longest window asked for.
    samples: VecDeque<(Timestamp, f64)>,
    /// When the panic window last asked for more than the threshold, while panicking.
    panicked: Option<Timestamp>,
    /// The most pods asked for while panicking: a panic scales down to none fewer.
    max_panic_pods: i32,
    /// The most pods a tick asked an evaluation for in this panic.
    asked: i32,
}

/// What the windows say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Decision {
    /// The pods the metric asks for.
    pub desired: i32,
    /// The average that decided: the stable window's, or in a panic the higher of the two.
    pub value: f64,
    pub panicking: bool,
}

impl Observed {
    /// Records the metric's `value` at `now`, keeping `windows.stable` of values. A value read
    /// sooner than half a tick after the last replaces it: two readers of one second (the
    /// sampler and an evaluation) count once.
    pub(crate) fn record(&mut self, now: Timestamp, value: f64, windows: Windows) {
        let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
        if let Some(last) = self.samples.back_mut()
            && now.duration_since(last.0) < jiff::SignedDuration::try_from(TICK / 2).unwrap_or_default()
        {
            *last = (last.0.max(now), value);
        } else {
            self.samples.push_back((now, value));
        }
        while self.samples.front().is_some_and(|(at, _)| !within(*at, now, windows.stable)) {
            self.samples.pop_front();
        }
    }

    /// The average of the values in the `window` before `now`, if there are any.
    fn average(&self, now: Timestamp, window: Duration) -> Option<f64> {
        let recent = self.samples.iter().rev().take_while(|(at, _)| within(*at, now, window));
        let (sum, count) = recent.fold((0.0, 0usize), |(sum, count), (_, value)| (sum + value, count + 1));
        (count > 0).then(|| sum / count as f64)
    }

    /// The pods needed for `target` per pod with `ready` pods ready, if any value was read in
    /// the stable window; panicking or calming down as the panic window says.
    pub(crate) fn decide(&mut self, now: Timestamp, windows: Windows, target: f64, ready: usize) -> Option<Decision> {
        let stable = self.average(now, windows.stable)?;
        let panic = self.average(now, windows.panic).unwrap_or(stable);
        let (stable_pods, panic_pods) = (pods(stable, target), pods(panic, target));
        // No pod ready (a scale from zero) counts as one, as Knative counts it.
        let over = f64::from(panic_pods) / ready.max(1) as f64 >= windows.threshold;
        match self.panicked {
            _ if over => self.panicked = Some(now),
            Some(since) if !within(since, now, windows.stable) => {
                self.panicked = None;
                self.max_panic_pods = 0;
                self.asked = 0;
            }
            _ => {}
        }
        if self.panicked.is_none() {
            return Some(Decision { desired: stable_pods, value: stable, panicking: false });
        }
        // The surge may already be in the stable window: provision for the higher.
        let (desired, value) = if panic_pods > stable_pods { (panic_pods, panic) } else { (stable_pods, stable) };
        self.max_panic_pods = self.max_panic_pods.max(desired);
        Some(Decision { desired: self.max_panic_pods, value, panicking: true })
    }

    /// Knative's tick: decides as an evaluation would (so that a panic begins, goes on and
    /// ends with the load, not with the HPA's syncs), and says whether a panic asks for more
    /// than the `current` replicas, and more than it asked before: the sampler's cue to
    /// evaluate the HPA now rather than at its next sync, once for each new high.
    pub(crate) fn tick(&mut self, now: Timestamp, windows: Windows, target: f64, ready: usize, current: i32) -> bool {
        match self.decide(now, windows, target, ready) {
            Some(Decision { desired, panicking: true, .. }) if desired > current && desired > self.asked => {
                self.asked = desired;
                true
            }
            _ => false,
        }
    }
}

/// Whether `at` is within `window` before `now` (or after it: a clock's step back).
fn within(at: Timestamp, now: Timestamp, window: Duration) -> bool {
    now.duration_since(at) < jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX)
}

/// Pods for `value` at `target` each.
fn pods(value: f64, target: f64) -> i32 {
    (value / target.max(f64::MIN_POSITIVE)).ceil().clamp(0.0, f64::from(i32::MAX)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + secs).unwrap()
    }

    /// Values `from..to` seconds, one a second.
    fn record(observed: &mut Observed, seconds: std::ops::Range<i64>, value: f64) {
        for s in seconds {
            observed.record(at(s), value, Windows::default());
        }
    }

    #[test]
    fn stable_mode_asks_for_the_stable_windows_average_over_the_target() {
        // Knative's docs: a target of 10 and 50 requests at once ask for 5 pods.
        let mut observed = Observed::default();
        record(&mut observed, 0..60, 50.0);
        let decision = observed.decide(at(59), Windows::default(), 10.0, 5).unwrap();
        assert_eq!(decision, Decision { desired: 5, value: 50.0, panicking: false });
        // Half the window at 50 and half at 10: the average, 30, asks for 3.
        record(&mut observed, 60..90, 10.0);
        assert_eq!(observed.decide(at(89), Windows::default(), 10.0, 5).unwrap().desired, 3);
        // Nothing read in the window: no decision.
        assert_eq!(Observed::default().decide(at(0), Windows::default(), 10.0, 1), None);
    }

    #[test]
    fn a_surge_in_the_panic_window_panics_and_a_panic_does_not_scale_down() {
        let windows = Windows::default();
        let mut observed = Observed::default();
        // A minute at 10, one pod's target: one pod, calm.
        record(&mut observed, 0..60, 10.0);
        assert!(!observed.decide(at(59), windows, 10.0, 1).unwrap().panicking);
        // Then 60 at once for 6 s: the panic window asks for 6 pods, 6 times the one ready,
        // beyond 200 %; the stable window, at 15, would ask for 2. Panic decides on 6.
        record(&mut observed, 60..66, 60.0);
        assert!(observed.tick(at(65), windows, 10.0, 1, 1), "a new high: evaluate now");
        assert!(!observed.tick(at(65), windows, 10.0, 1, 1), "asked once");
        let decision = observed.decide(at(65), windows, 10.0, 1).unwrap();
        assert_eq!((decision.desired, decision.value, decision.panicking), (6, 60.0, true));
        // With 6 ready and the load gone, a panic keeps 6 until a stable window has passed
        // since it last saw the surge.
        record(&mut observed, 66..125, 0.0);
        assert!(!observed.tick(at(124), windows, 10.0, 6, 6));
        assert_eq!(
            observed.decide(at(124), windows, 10.0, 6).unwrap(),
            Decision { desired: 6, value: observed.average(at(124), windows.stable).unwrap(), panicking: true }
        );
        // Past it, calm again: the stable window (all zeros by now) asks for none.
        record(&mut observed, 125..130, 0.0);
        let calm = observed.decide(at(129), windows, 10.0, 6).unwrap();
        assert_eq!(calm, Decision { desired: 0, value: 0.0, panicking: false });
    }

    #[test]
    fn requests_held_at_zero_ask_for_pods_at_once() {
        // A function at zero, read every sync (15 s), then woken 7 s after the last with 40
        // requests held: the panic window asks for 20 at a target of 2, twenty times the one
        // pod counted for none.
        let windows = Windows::default();
        let mut observed = Observed::default();
        for s in [0, 15, 30, 45] {
            observed.record(at(s), 0.0, windows);
        }
        observed.record(at(52), 40.0, windows);
        let decision = observed.decide(at(52), windows, 2.0, 0).unwrap();
        assert_eq!((decision.desired, decision.panicking), (20, true));
        // One held request: the stable window's average of 0.2 still asks for one pod.
        let mut one = Observed::default();
        one.record(at(0), 0.0, windows);
        one.record(at(50), 1.0, windows);
        assert_eq!(one.decide(at(50), windows, 2.0, 0).unwrap(), Decision { desired: 1, value: 0.5, panicking: false });
    }

    #[test]
    fn values_outside_the_stable_window_are_forgotten_and_a_second_read_twice_counts_once() {
        let windows = Windows { stable: Duration::from_secs(10), panic: Duration::from_secs(2), threshold: 2.0 };
        let mut observed = Observed::default();
        for s in 0..30 {
            observed.record(at(s), s as f64, windows);
        }
        assert_eq!(observed.samples.len(), 10);
        observed.record(at(29), 100.0, windows);
        assert_eq!((observed.samples.len(), observed.samples.back().unwrap().1), (10, 100.0));
        // Made-up values count as nothing.
        observed.record(at(31), f64::NAN, windows);
        observed.record(at(32), -5.0, windows);
        assert_eq!(observed.average(at(32), Duration::from_secs(2)), Some(0.0));
    }

    #[test]
    fn windows_are_read_from_knatives_annotations_in_its_bounds() {
        let parse = |text: &str| text.strip_suffix('s').and_then(|s| s.parse().ok()).map(Duration::from_secs);
        let of = |pairs: &[(&str, &str)]| {
            let annotations: BTreeMap<String, String> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Windows::of(Some(&annotations), parse)
        };
        assert_eq!(of(&[]).unwrap(), Windows::default());
        let set = of(&[(WINDOW, "20s"), (PANIC_WINDOW_PERCENTAGE, "25"), (PANIC_THRESHOLD_PERCENTAGE, "150")]);
        assert_eq!(
            set.unwrap(),
            Windows { stable: Duration::from_secs(20), panic: Duration::from_secs(5), threshold: 1.5 }
        );
        for bad in [
            vec![(WINDOW, "5s")],
            vec![(WINDOW, "2h")],
            vec![(WINDOW, "soon")],
            vec![(PANIC_WINDOW_PERCENTAGE, "0.5")],
            vec![(PANIC_WINDOW_PERCENTAGE, "many")],
            vec![(PANIC_THRESHOLD_PERCENTAGE, "100")],
        ] {
            let error = of(&bad).unwrap_err();
            assert!(error.starts_with("invalid annotation autoscaling.knative.dev/"), "{error}");
        }
        // Through the controller's own parser, a window past any duration is refused, not a
        // panic of the sampler that reads it every second.
        for huge in ["99999999999999999999s", &"9".repeat(400), "1e9s"] {
            let annotations = BTreeMap::from([(WINDOW.to_string(), huge.to_string())]);
            assert!(Windows::of(Some(&annotations), crate::hpa::parse_window).is_err(), "{huge}");
        }
    }
}
