//! Controller history, as upstream's `pkg/controller/history` keeps it for DaemonSets and
//! StatefulSets: each template a set has had is a ControllerRevision named `<set>-<hash>`,
//! numbered in the order the set took it up. `kubectl rollout history` lists them, and
//! `kubectl rollout undo` patches the set with a revision's data, after which this module finds
//! that revision again and renumbers it as the newest.

use std::sync::Arc;

use flotilla_client::resource_version;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::daemonset::REVISION_LABEL;
use crate::deployment::template_hash;
use crate::pods::controller_reference;
use crate::{Context, Error, OBSERVE_TIMEOUT, unless_gone};

/// Not copied from the set to its revisions: it is large and says nothing about the template.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The data of a revision: the patch that puts `template` back into a set (upstream's
/// `getPatch`), which `kubectl rollout undo` sends as a strategic merge patch.
pub(crate) fn patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), "replace".into());
    }
    json!({"spec": {"template": template}})
}

/// `<set>-<hash>`, the prefix cut so the name stays a valid one (upstream's
/// `ControllerRevisionName`).
pub(crate) fn revision_name(set: &str, hash: &str) -> String {
    let prefix = if set.len() > 223 { &set[..223] } else { set };
    format!("{prefix}-{hash}")
}

/// Whether `revision` holds `template`.
fn holds(revision: &ControllerRevision, template: &PodTemplateSpec) -> bool {
    revision.data.as_ref().is_some_and(|data| data.0 == patch(template))
}

/// Upstream's bound on hash collisions stepped past before giving up.
const MAX_COLLISIONS: i32 = 100;

/// The revision a set is at, and the set's `collisionCount` after finding it.
pub(crate) struct Synced {
    pub(crate) revision: Arc<ControllerRevision>,
    pub(crate) collisions: Option<i32>,
}

/// The ControllerRevision of `set`'s current `template`, created (or renumbered as the newest)
/// when needed, after pruning the revisions beyond `limit` that no pod runs (`in_use`) and that
/// are not current. The revision's `controller-revision-hash` label is the template's hash,
/// salted with the set's `collisionCount`: a name already taken by a revision of another
/// template (a hash collision) raises the count and is hashed again, as upstream's
/// `CreateControllerRevision` does; the caller writes the count to the set's status.
pub(crate) async fn sync<K>(
    context: &Context,
    set: &K,
    template: &PodTemplateSpec,
    collisions: Option<i32>,
    limit: usize,
    in_use: impl Fn(&ControllerRevision) -> bool,
) -> Result<Synced, Error>
where
    K: Resource<DynamicType = ()>,
{
    let namespace = set.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ControllerRevision> = Api::namespaced(context.client.clone(), &namespace);
    let uid = set.uid().unwrap_or_default();
    let owned = context.controllerrevisions.controlled_by(&uid);
    let newest = owned.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut written = 0;
    // A count of 0 hashes as none: the names revisions had before any collision stay theirs.
    let mut collisions = collisions.filter(|&count| count > 0);
    let collided = |count: Option<i32>| -> Result<Option<i32>, Error> {
        let next = count.unwrap_or(0) + 1;
        if next > MAX_COLLISIONS {
            return Err(Error::Invalid(format!("{next} hash collisions naming a revision of {}", set.name_any())));
        }
        Ok(Some(next))
    };

    let (name, current) = loop {
        let hash = template_hash(template, collisions);
        let name = revision_name(&set.name_any(), &hash);
        match owned.iter().find(|r| r.name_any() == name) {
            Some(current) if !holds(current, template) => collisions = collided(collisions)?,
            Some(current) if current.revision == newest => break (name, current.clone()),
            // The set went back to an older template: that revision is the newest again.
            Some(_) => {
                let renumbered = json!({"revision": newest + 1, "metadata": {"annotations": annotations(set)}});
                let updated = api.patch(&name, &PatchParams::default(), &Patch::Merge(&renumbered)).await?;
                written = resource_version(&updated);
                break (name, Arc::new(updated));
            }
            None => {
                let mut labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                labels.insert(REVISION_LABEL.into(), hash.clone());
                let revision = ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        labels: Some(labels),
                        annotations: Some(annotations(set)),
                        owner_references: Some(vec![controller_reference(set)]),
                        ..Default::default()
                    },
                    data: Some(RawExtension(patch(template))),
                    revision: newest + 1,
                };
                match api.create(&PostParams::default(), &revision).await {
                    Ok(created) => {
                        written = resource_version(&created);
                        break (name, Arc::new(created));
                    }
                    Err(kube::Error::Api(err)) if err.code == 409 => {
                        // Created by an earlier pass the cache has not shown yet, or a name
                        // taken by another object.
                        let existing = api.get(&name).await?;
                        let ours =
                            existing.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true));
                        if ours && holds(&existing, template) {
                            break (name, Arc::new(existing));
                        }
                        collisions = collided(collisions)?;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
    };

    let mut old: Vec<&Arc<ControllerRevision>> = owned.iter().filter(|r| r.name_any() != name && !in_use(r)).collect();
    old.sort_by_key(|r| r.revision);
    for revision in old.iter().take(old.len().saturating_sub(limit)) {
        unless_gone(api.delete(&revision.name_any(), &DeleteParams::background()).await)?;
    }
    if written > 0 && !context.controllerrevisions.observed(written, OBSERVE_TIMEOUT).await {
        return Err(Error::Lagging);
    }
    Ok(Synced { revision: current, collisions })
}

/// The set's annotations, which its revisions carry (`kubernetes.io/change-cause` among them,
/// the column `kubectl rollout history` prints).
fn annotations<K: Resource>(set: &K) -> std::collections::BTreeMap<String, String> {
    let mut annotations = set.meta().annotations.clone().unwrap_or_default();
    annotations.remove(LAST_APPLIED);
    annotations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_replaces_the_whole_template() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "agent", "image": "agent:2"}]}
        }))
        .unwrap();
        let data = patch(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(data["spec"]["template"]["spec"]["containers"][0]["image"], "agent:2");
        assert_eq!(revision_name("agent", "5d4f"), "agent-5d4f");
        // A revision holds the template whose patch it carries, and no other: a revision of
        // another template under the same name is a hash collision.
        let revision = ControllerRevision { data: Some(RawExtension(data)), ..Default::default() };
        assert!(holds(&revision, &template));
        let mut other = template.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("agent:3".into());
        assert!(!holds(&revision, &other));
        assert_ne!(template_hash(&template, None), template_hash(&template, Some(1)));
        assert_eq!(revision_name(&"a".repeat(300), "h").len(), 225);
    }
}
