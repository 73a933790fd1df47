//! `flotilla-api`: Kubernetes API objects as Flotilla serves them.
//!
//! The registry of served resources and each kind's behaviour (upstream's defaults, validation
//! and `kubectl get` columns), label and field selectors, the patch formats, and the OpenAPI
//! documents generated from the k8s-openapi types. It does no IO: the API server brings the
//! requests, the store and the clock.

pub mod body;
pub mod cidr;
pub mod error;
pub mod go;
pub mod json;
pub mod kinds;
pub mod managed;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod query;
pub mod resource;
pub mod scheduling;
pub mod schema;
pub mod selector;
pub mod stats;
pub mod table;
pub mod validation;

pub use cidr::Cidr;
pub use error::{ApiError, CauseType, FieldError, Reason, Result};
pub use kinds::{Admitted, FieldValidation, KindOps};
pub use kinds::{SERVING_CERT_ANNOTATION, WASM_RUNTIME_CLASS, runtime_class, runtime_class_for, runtime_label};
pub use resource::{ResourceDef, Subresource};

/// Where a `TokenReview` (`authentication.k8s.io/v1`) is posted: a node asks the API server who
/// a bearer token names, as the kubelet does.
pub const TOKEN_REVIEWS_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The protocols a stream into a pod (`kubectl exec`) is served in, over a WebSocket, the
/// newest first: the API server carries them to the node, which speaks them.
pub const STREAM_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The Kubernetes release whose API Flotilla serves.
pub const KUBERNETES_VERSION: (u32, u32) = (1, 33);
