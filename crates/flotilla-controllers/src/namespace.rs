//! The Namespace controller: a namespace being deleted (`Terminating`) has everything in it
//! deleted, kind by kind; once nothing is left it clears the `kubernetes` finalizer through
//! `namespaces/finalize` and the namespace goes. Meanwhile its conditions say what remains, as
//! upstream's do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Change, ObjectKey, WorkQueue};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Scope, verbs};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{Context, Error, Informers, Next, Reconciler, spawn_workers};

/// The finalizer that holds a namespace until its content is gone.
const FINALIZER: &str = "kubernetes";
/// How often a terminating namespace is looked at while content remains (pods terminating).
const RECHECK: Duration = Duration::from_secs(2);

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named("namespace", &context.queues);
    let q = queue.clone();
    informers.namespaces.on_change(move |change| {
        if let Change::Applied { new, .. } = change
            && new.metadata.deletion_timestamp.is_some()
        {
            q.add(ObjectKey::of(&**new));
        }
    });
    let namespaces = context.namespaces.clone();
    spawn_workers(Arc::new(NamespaceController { context: context.clone() }), queue, 2, async move {
        namespaces.synced().await;
    })
}

/// Every namespaced kind the server serves that can be listed and deleted as a collection,
/// in its preferred version, found by discovery as upstream's controller finds them: so that
/// a namespace is emptied on any server, of kinds the controller was not built with too.
async fn namespaced_kinds(client: &kube::Client) -> Result<Vec<ApiResource>, Error> {
    let discovery = kube::Discovery::new(client.clone()).run().await?;
    Ok(discovery
        .groups()
        .flat_map(|group| group.recommended_resources())
        .filter(|(_, caps)| {
            caps.scope == Scope::Namespaced
                && caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::DELETE_COLLECTION)
        })
        .map(|(resource, _)| resource)
        .collect())
}

struct NamespaceController {
    context: Context,
}

impl Reconciler for NamespaceController {
    const NAME: &'static str = "namespace";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(namespace) = self.context.namespaces.get(key) else { return Ok(Next::Done) };
        let finalizers = namespace.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default();
        if namespace.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(Next::Done);
        }
        let name = &key.name;
        // What is left of each kind after asking for all of it to go.
        let mut remaining = BTreeMap::new();
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        for kind in namespaced_kinds(&self.context.client).await? {
            let api: Api<DynamicObject> = Api::namespaced_with(self.context.client.clone(), name, &kind);
            api.delete_collection(&DeleteParams::background(), &ListParams::default()).await?;
            let left = api.list_metadata(&ListParams::default()).await?;
            if !left.items.is_empty() {
                let resource =
                    if kind.group.is_empty() { kind.plural.clone() } else { format!("{}.{}", kind.plural, kind.group) };
                remaining.insert(resource, left.items.len());
                for item in &left.items {
                    for finalizer in item.metadata.finalizers.iter().flatten() {
                        *held.entry(finalizer.clone()).or_default() += 1;
                    }
                }
            }
        }
        let api: Api<Namespace> = Api::all(self.context.client.clone());
        if !remaining.is_empty() {
            self.report(&api, &namespace, &remaining, &held).await?;
            return Ok(Next::After(RECHECK));
        }
        let mut finalized = (*namespace).clone();
        finalized.spec.get_or_insert_with(Default::default).finalizers =
            Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
        match api.replace_subresource("finalize", name, &PostParams::default(), &finalized).await {
            Ok(_) => {}
            Err(kube::Error::Api(err)) if err.code == 404 => return Ok(Next::Done),
            Err(err) => return Err(err.into()),
        }
        // Gone now, unless other finalizers still hold it.
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(Next::Done),
            Err(kube::Error::Api(err)) if err.code == 404 => Ok(Next::Done),
            Err(err) => Err(err.into()),
        }
    }
}

impl NamespaceController {
    /// Upstream's `NamespaceContentRemaining` and `NamespaceFinalizersRemaining` conditions.
    async fn report(
        &self,
        api: &Api<Namespace>,
        namespace: &Namespace,
        remaining: &BTreeMap<String, usize>,
        held: &BTreeMap<String, usize>,
    ) -> Result<(), Error> {
        let content: Vec<String> =
            remaining.iter().map(|(resource, n)| format!("{resource} has {n} resource instances")).collect();
        let finalizers: Vec<String> =
            held.iter().map(|(finalizer, n)| format!("{finalizer} in {n} resource instances")).collect();
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let condition = |kind: &str, reason: &str, message: Option<String>| match message {
            Some(message) => {
                json!({"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now})
            }
            None => {
                json!({"type": kind, "status": "False", "reason": format!("{reason}Empty"), "message": "All content successfully removed", "lastTransitionTime": now})
            }
        };
        let conditions = vec![
            condition(
                "NamespaceContentRemaining",
                "SomeResourcesRemain",
                Some(format!("Some resources are remaining: {}", content.join(", "))),
            ),
            condition(
                "NamespaceFinalizersRemaining",
                "SomeFinalizersRemain",
                (!finalizers.is_empty()).then(|| {
                    format!("Some content in the namespace has finalizers remaining: {}", finalizers.join(", "))
                }),
            ),
        ];
        let unchanged = namespace.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|current| {
            conditions.iter().all(|c| {
                current.iter().any(|o| {
                    o.type_ == c["type"] && Some(c["message"].as_str().unwrap_or_default()) == o.message.as_deref()
                })
            })
        });
        if !unchanged {
            let patch = json!({"status": {"phase": "Terminating", "conditions": conditions}});
            let name = namespace.metadata.name.as_deref().unwrap_or_default();
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        Ok(())
    }
}
