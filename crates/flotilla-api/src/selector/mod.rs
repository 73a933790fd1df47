//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` carry them.

mod field;
mod label;

pub use field::{FieldRequirement, FieldSelector};
pub use label::{LabelRequirement, LabelSelector, Operator};
