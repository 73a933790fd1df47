//! node.k8s.io/v1 RuntimeClasses: the runtimes pods may ask for (`runtimeClassName`), each a
//! handler of the nodes' (`wasm`, `oci`) and where its nodes are (`scheduling.nodeSelector`),
//! which admission merges into the pods that name it, as upstream's RuntimeClass plugin does.

use jiff::Timestamp;
use k8s_openapi::api::node::v1::RuntimeClass;
use serde_json::Value;

use super::Kind;
use crate::error::FieldError;
use crate::table::{self, Column};
use crate::validation;

impl Kind for RuntimeClass {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.handler.is_empty() {
            errors.push(FieldError::required("handler", ""));
        } else if let Err(e) = validation::dns1123_label(&self.handler) {
            errors.push(FieldError::invalid("handler", &self.handler, e));
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        if self.handler != old.handler {
            errors.push(FieldError::invalid("handler", &self.handler, "field is immutable"));
        }
    }

    fn columns() -> Vec<Column> {
        vec![Column::name(), Column::string("Handler", "The handler of the runtime class"), Column::age()]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        vec![table::name(&self.metadata), self.handler.clone().into(), table::age(&self.metadata, now)]
    }
}

/// The RuntimeClass a node handler is offered under, with the node label its nodes carry (the
/// API server creates one for each of Flotilla's handlers).
pub fn runtime_class_for(handler: &str) -> RuntimeClass {
    RuntimeClass {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(handler.to_string()),
            ..Default::default()
        },
        handler: handler.to_string(),
        scheduling: Some(k8s_openapi::api::node::v1::Scheduling {
            node_selector: Some([(super::pod::runtime_label(handler), "true".to_string())].into()),
            tolerations: None,
        }),
        overhead: None,
    }
}
