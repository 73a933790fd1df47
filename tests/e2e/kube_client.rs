//! kube-rs, the client our own scheduler and controllers will be built on, against a real server:
//! it loads the written kubeconfig (CA and token) unchanged, applies server-side with field
//! managers and conflicts, lists typed objects, and follows a watch through `kube::runtime`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use serde_json::json;

use crate::harness::{Ports, Server};

#[tokio::test]
async fn kube_rs_applies_lists_and_watches() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    let kubeconfig = Kubeconfig::read_from(&server.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta { name: Some("kube-rs".into()), ..Default::default() },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &namespace).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, "kube-rs");

    // Server-side apply creates the object and records its manager.
    let owner = PatchParams::apply("kube-test");
    let desired = |value: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": value}});
    let created = config_maps.patch("settings", &owner, &Patch::Apply(desired("fast"))).await?;
    let managers: Vec<_> = created.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
    ensure!(managers == ["kube-test"], "managed fields after the first apply: {managers:?}");

    // A watcher started now sees the next change as an Apply event.
    let mut events = watcher(config_maps.clone(), watcher::Config::default()).boxed();
    let initial = next_applied(&mut events).await?;
    ensure!(initial.data == Some(data("fast")), "the watcher's initial state: {:?}", initial.data);
    config_maps.patch("settings", &owner, &Patch::Apply(desired("safe"))).await?;
    let changed = next_applied(&mut events).await?;
    ensure!(changed.data == Some(data("safe")), "the watcher saw {:?}", changed.data);

    // So does one that starts from a streaming list (a watch with `sendInitialEvents`), which
    // needs the bookmark that ends the initial events to report `InitDone`.
    let mut streamed = watcher(config_maps.clone(), watcher::Config::default().streaming_lists()).boxed();
    let initial = next_applied(&mut streamed).await?;
    ensure!(initial.data == Some(data("safe")), "the streaming list's initial state: {:?}", initial.data);
    let done = tokio::time::timeout(Duration::from_secs(10), streamed.try_next()).await;
    ensure!(matches!(done, Ok(Ok(Some(watcher::Event::InitDone)))), "after the initial state came {done:?}");

    // Another manager that sets the same field conflicts, unless it forces.
    let intruder = PatchParams::apply("intruder");
    match config_maps.patch("settings", &intruder, &Patch::Apply(desired("slow"))).await {
        Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "Conflict" => {
            ensure!(status.message.contains("kube-test"), "the conflict names the owner: {}", status.message)
        }
        other => bail!("a conflicting apply answered {other:?}"),
    }
    let forced = config_maps.patch("settings", &intruder.force(), &Patch::Apply(desired("slow"))).await?;
    ensure!(forced.data == Some(data("slow")), "the forced apply left {:?}", forced.data);

    // Typed lists with a label selector.
    let labelled =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "labelled", "labels": {"tier": "edge"}}});
    config_maps.patch("labelled", &owner, &Patch::Apply(labelled)).await?;
    let listed = config_maps.list(&ListParams::default().labels("tier=edge")).await?;
    let names: Vec<_> = listed.items.iter().filter_map(|cm| cm.metadata.name.as_deref()).collect();
    ensure!(names == ["labelled"], "a list by label returned {names:?}");
    Ok(())
}

fn data(mode: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("mode".to_string(), mode.to_string())])
}

/// The next object the watcher reports as present (initial listing or a later change).
async fn next_applied<S>(events: &mut S) -> Result<ConfigMap>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let deadline = Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout(deadline, events.try_next())
            .await
            .context("no watch event within 30 s")??
            .context("the watch stream ended")?;
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => return Ok(object),
            watcher::Event::Init | watcher::Event::InitDone | watcher::Event::Delete(_) => {}
        }
    }
}
