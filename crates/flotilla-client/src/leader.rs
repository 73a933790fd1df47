//! Leader election through a `coordination.k8s.io` Lease, as client-go's `leaderelection`
//! does it for kube-scheduler and kube-controller-manager: of all the candidates for one Lease,
//! one leads at a time, and a leader that dies is replaced within the lease duration.
//!
//! - A candidate takes the Lease when it is missing, released (no holder), or unchanged for a
//!   whole lease duration as this candidate observed it: time is measured on the candidate's own
//!   clock from when it last saw the record change, never by comparing another machine's
//!   timestamps (client-go's `observedTime`).
//! - The leader renews every retry period. If it has not renewed for the renew deadline, it
//!   stops leading, before anyone may take the Lease from it (renew deadline < lease duration),
//!   so two never lead at once as long as clocks run at the same rate.
//! - Every write is a replace at the resource version read, so two candidates racing for the
//!   Lease cannot both win.
//!
//! The decision ([`step`]) is a pure function of what was observed; [`LeaderElection::run`]
//! carries it out and says whether this candidate leads through a `watch` channel.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// Upstream's defaults for kube-scheduler and kube-controller-manager.
pub(crate) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub(crate) const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// How an election runs (upstream's `--leader-elect-*` flags).
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// How long a Lease unrenewed stays its holder's.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops leading.
    pub renew_deadline: Duration,
    /// How often candidates try to take the Lease and the leader renews it.
    pub retry_period: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

/// What a candidate does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The Lease does not exist: create it, held.
    Create,
    /// Write the Lease as ours: a renewal if it is ours already, else a takeover.
    Take,
    /// Someone else holds it and has renewed it recently: wait.
    Wait,
}

/// The next step for `me`, given the Lease's holder (`None` if there is no Lease) and how long
/// ago its record was last seen to change.
pub(crate) fn step(holder: Option<Option<&str>>, unchanged_for: Duration, lease_duration: Duration, me: &str) -> Step {
    match holder {
        None => Step::Create,
        Some(Some(holder)) if holder != me && !holder.is_empty() && unchanged_for < lease_duration => Step::Wait,
        Some(_) => Step::Take,
    }
}

/// One candidate for one Lease.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    leases: Api<Lease>,
    name: String,
    identity: String,
    config: ElectionConfig,
}

impl LeaderElection {
    /// A candidate named `identity` for the Lease `kube-system/<name>`.
    pub fn new(client: kube::Client, name: &str, identity: &str, config: ElectionConfig) -> LeaderElection {
        LeaderElection {
            leases: Api::namespaced(client, "kube-system"),
            name: name.into(),
            identity: identity.into(),
            config,
        }
    }

    /// Runs the election until `leading`'s receivers are all gone, telling them whether this
    /// candidate leads.
    pub async fn run(self, leading: watch::Sender<bool>) {
        // The record last seen, and when it was seen to change.
        let mut observed: Option<(String, Instant)> = None;
        let mut last_renewal: Option<Instant> = None;
        loop {
            if leading.is_closed() {
                return;
            }
            let attempt = self.try_once(&mut observed).await;
            let now = Instant::now();
            match attempt {
                Ok(true) => {
                    if !*leading.borrow() {
                        tracing::info!(lease = self.name, identity = self.identity, "became the leader");
                    }
                    last_renewal = Some(now);
                    // Told only when it changes: a renewal is no news to what runs while leading.
                    leading.send_if_modified(|was| !std::mem::replace(was, true));
                }
                Ok(false) => {
                    last_renewal = None;
                    leading.send_if_modified(|was| std::mem::replace(was, false));
                }
                Err(err) => {
                    tracing::debug!(lease = self.name, %err, "leader election: the Lease could not be read or written");
                    // A leader that cannot renew keeps leading until the renew deadline, and
                    // not a moment longer.
                    if last_renewal.is_some_and(|at| now.duration_since(at) >= self.config.renew_deadline) {
                        tracing::warn!(lease = self.name, "lost the leadership: the Lease was not renewed in time");
                        last_renewal = None;
                        leading.send_if_modified(|was| std::mem::replace(was, false));
                    }
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Reads the Lease and takes or renews it if it may; whether this candidate now holds it.
    async fn try_once(&self, observed: &mut Option<(String, Instant)>) -> Result<bool, kube::Error> {
        let current = self.leases.get_opt(&self.name).await?;
        let now = Instant::now();
        let spec = current.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        let record = serde_json::to_string(&spec).unwrap_or_default();
        let seen_at = match observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                *observed = Some((record, now));
                now
            }
        };
        let holder = current.as_ref().map(|_| spec.holder_identity.as_deref());
        let time = MicroTime(jiff::Timestamp::now());
        match step(holder, now.duration_since(seen_at), self.config.lease_duration, &self.identity) {
            Step::Wait => Ok(false),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some("kube-system".into()),
                        ..Default::default()
                    },
                    spec: Some(self.held(time.clone(), time, 0)),
                };
                self.leases.create(&PostParams::default(), &lease).await?;
                Ok(true)
            }
            Step::Take => {
                let mut lease = current.expect("a Lease to take");
                let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                let (acquired, transitions) = match ours {
                    true => {
                        (spec.acquire_time.clone().unwrap_or_else(|| time.clone()), spec.lease_transitions.unwrap_or(0))
                    }
                    false => (time.clone(), spec.lease_transitions.unwrap_or(0) + 1),
                };
                lease.spec = Some(self.held(acquired, time, transitions));
                // A replace at the resource version read: of two candidates taking it at once,
                // one fails with a conflict.
                self.leases.replace(&self.name, &PostParams::default(), &lease).await?;
                Ok(true)
            }
        }
    }

    fn held(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

/// A candidate identity as client-go makes one: the host name and a unique suffix.
pub fn candidate_identity(host: &str) -> String {
    format!("{host}_{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_when_missing_released_expired_or_ours() {
        let duration = Duration::from_secs(15);
        let fresh = Duration::from_secs(3);
        let stale = Duration::from_secs(15);
        assert_eq!(step(None, fresh, duration, "me"), Step::Create);
        assert_eq!(step(Some(None), fresh, duration, "me"), Step::Take, "no holder");
        assert_eq!(step(Some(Some("")), fresh, duration, "me"), Step::Take, "released");
        assert_eq!(step(Some(Some("me")), fresh, duration, "me"), Step::Take, "a renewal");
        assert_eq!(step(Some(Some("them")), fresh, duration, "me"), Step::Wait);
        assert_eq!(step(Some(Some("them")), stale, duration, "me"), Step::Take, "expired as we saw it");
    }
}
