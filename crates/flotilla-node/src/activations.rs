//! What the activator tells of Services scaling up from zero, written as Events on the Service:
//! `Activating` when connections are held (the HPA that scales the Service's workload wakes on
//! it, rather than at its next sync), `ActivationFailed` when one waited in vain and was
//! answered 503.

use std::sync::Arc;

use flotilla_api::stats::ACTIVATING;
use flotilla_client::{EventType, Recorder};
use flotilla_net::Activation;
use tokio::sync::mpsc;

use crate::Node;

pub(crate) async fn tell(node: Arc<Node>, mut activations: mpsc::UnboundedReceiver<Activation>) {
    let events = Recorder::new(node.client.clone(), "activator", Some(&node.config.name));
    while let Some(activation) = activations.recv().await {
        let (service, kind, reason, message) = match activation {
            Activation::Held(service) => (
                service,
                EventType::Normal,
                ACTIVATING,
                "Holding requests while the Service scales up from zero".to_string(),
            ),
            Activation::TimedOut(service, waited) => (
                service,
                EventType::Warning,
                "ActivationFailed",
                format!(
                    "No endpoint became ready within {}s of a request: it was answered 503 Service Unavailable",
                    waited.as_secs()
                ),
            ),
        };
        let namespace = service.namespace.as_deref().unwrap_or("default");
        let reference = kube::runtime::reflector::ObjectRef::new(&service.name).within(namespace);
        let Some(object) = node.services.get(&reference) else { continue };
        events.object(&*object, kind, reason, message);
    }
}
