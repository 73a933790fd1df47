//! The ServiceAccount controller: every active namespace has a `default` service account (the
//! one pods run as unless they name another), recreated if it is deleted.

use std::sync::Arc;

use flotilla_client::{Change, ObjectKey, WorkQueue};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;

use crate::{Context, Error, Informers, Next, Reconciler, spawn_workers};

const DEFAULT: &str = "default";

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    // The queue holds namespace names.
    let queue = WorkQueue::named("serviceaccount", &context.queues);
    let q = queue.clone();
    informers.namespaces.on_change(move |change| {
        if let Change::Applied { new, .. } = change {
            q.add(ObjectKey::new(None, new.metadata.name.as_deref().unwrap_or_default()));
        }
    });
    let q = queue.clone();
    informers.serviceaccounts.on_change(move |change| {
        if let Change::Deleted(account) = change
            && account.metadata.name.as_deref() == Some(DEFAULT)
        {
            q.add(ObjectKey::new(None, account.metadata.namespace.as_deref().unwrap_or_default()));
        }
    });
    let (namespaces, accounts) = (context.namespaces.clone(), context.serviceaccounts.clone());
    spawn_workers(Arc::new(ServiceAccountController { context: context.clone() }), queue, 1, async move {
        namespaces.synced().await;
        accounts.synced().await;
    })
}

struct ServiceAccountController {
    context: Context,
}

impl Reconciler for ServiceAccountController {
    const NAME: &'static str = "serviceaccount";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let namespace = &key.name;
        let active = self
            .context
            .namespaces
            .get(&ObjectKey::new(None, namespace))
            .is_some_and(|ns| ns.metadata.deletion_timestamp.is_none());
        if !active || self.context.serviceaccounts.get(&ObjectKey::new(Some(namespace), DEFAULT)).is_some() {
            return Ok(Next::Done);
        }
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT.into()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.context.client.clone(), namespace);
        match api.create(&PostParams::default(), &account).await {
            Ok(_) => Ok(Next::Done),
            // Created meanwhile, or the namespace began terminating.
            Err(kube::Error::Api(err)) if err.code == 409 || err.code == 403 => Ok(Next::Done),
            Err(err) => Err(err.into()),
        }
    }
}
