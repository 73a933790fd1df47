//! `flotilla-client`: the machinery every client of the cluster shares — the node agent, the
//! scheduler and the controllers.
//!
//! - [`Informer`]: one watch per kind feeding a cache with the indexes control loops look
//!   things up by (namespace, owner), change notifications, and a read-your-writes barrier
//!   ([`Cache::observed`]) that stands in for upstream's "expectations".
//! - [`WorkQueue`]: keys to reconcile, deduplicated, never worked on twice at once, with
//!   delayed and backed-off retries — level-triggered control loops as upstream runs them.
//! - [`Recorder`]: core/v1 Events with upstream's series aggregation.
//! - [`LeaderElection`]: one leader among candidates through a Lease, as client-go's.
//!
//! It talks to the cluster only through a `kube::Client`, in-process or remote.

mod events;
mod informer;
mod leader;
mod queue;

pub use events::{EventType, Recorder};
pub use informer::{Cache, Change, Informer, ObjectKey, controller_of, resource_version};
pub use leader::{ElectionConfig, LeaderElection, candidate_identity};
pub use queue::{QueueMetrics, WorkQueue};
