//! The router in-process (`Router::oneshot`), over a real one-member store on disk.

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

mod refusals;

const TOKEN: &str = "test-token-0123456789abcdef0123456789";

struct Server {
    router: Router,
    store: Store,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(ApiServerConfig::default()).await
    }

    /// A server of `config`, with the test's token.
    async fn start_with(config: ApiServerConfig) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut store_config = flotilla_store::StoreConfig::single(dir.path().join("store"), "http://127.0.0.1:1");
        store_config.progress_interval = std::time::Duration::from_millis(100);
        let store = Store::open(store_config).await.unwrap();
        store.wait_for_leader(std::time::Duration::from_secs(10)).await.unwrap();
        let admin = flotilla_auth::UserInfo::new("admin", &[flotilla_auth::identity::MASTERS]);
        let config = ApiServerConfig { authenticator: Authenticator::new().with_token(TOKEN, admin), ..config };
        let api = ApiServer::new(store.clone(), config).await.unwrap();
        api.set_ready();
        Server { router: api.router(), store, _dir: dir }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        self.call_raw(method, uri, body, headers).await
    }

    async fn call_raw(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut request =
            Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (parts.status, parts.headers, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (code, _, body) = self.call(Method::GET, uri, None, &[]).await;
        (code, body)
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let (code, _, body) = self.call(Method::POST, uri, Some(body), &[]).await;
        (code, body)
    }

    async fn put(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let (code, _, body) = self.call(Method::PUT, uri, Some(body), &[]).await;
        (code, body)
    }

    async fn patch(&self, uri: &str, kind: &str, body: Value) -> (StatusCode, Value) {
        let (code, _, body) = self.call(Method::PATCH, uri, Some(body), &[("content-type", kind)]).await;
        (code, body)
    }

    async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        let (code, _, body) = self.call(Method::DELETE, uri, None, &[]).await;
        (code, body)
    }
}

fn configmap(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "app:1"}]}})
}

#[tokio::test]
async fn requests_without_the_token_are_unauthorized_but_health_is_open() {
    let server = Server::start().await;
    let response =
        server.router.clone().oneshot(Request::get("/api/v1/pods").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
    for open in ["/livez", "/readyz", "/version"] {
        let response = server.router.clone().oneshot(Request::get(open).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }
    server.store.shutdown().await;
}

#[tokio::test]
async fn discovery_documents_match_their_snapshots() {
    let server = Server::start().await;
    let (code, apps) = server.get("/apis/apps/v1").await;
    assert_eq!(code, StatusCode::OK);
    expect_test::expect_file!["../../tests/snapshots/discovery-apps-v1.json"]
        .assert_eq(&serde_json::to_string_pretty(&apps).unwrap());
    let (_, headers, aggregated) = server
        .call(
            Method::GET,
            "/api",
            None,
            &[("accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")],
        )
        .await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    expect_test::expect_file!["../../tests/snapshots/aggregated-core.json"]
        .assert_eq(&serde_json::to_string_pretty(&aggregated).unwrap());
    let (_, root) = server.get("/openapi/v3").await;
    assert!(root["paths"]["api/v1"]["serverRelativeURL"].is_string());
    server.store.shutdown().await;
}

#[tokio::test]
async fn objects_follow_upstream_semantics() {
    let server = Server::start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let (code, created) = server.post(base, configmap("a", json!({"app": "web"}))).await;
    assert_eq!(code, StatusCode::CREATED);
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert!(created["metadata"]["uid"].is_string() && created["metadata"]["creationTimestamp"].is_string());

    let (code, status) = server.post(base, configmap("a", json!({}))).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::CONFLICT, Some("AlreadyExists")));
    assert_eq!(status["message"], "configmaps \"a\" already exists");

    let (code, status) = server.get(&format!("{base}/missing")).await;
    assert_eq!((code, status["message"].as_str()), (StatusCode::NOT_FOUND, Some("configmaps \"missing\" not found")));

    let (code, status) = server.post("/api/v1/namespaces/nowhere/configmaps", configmap("b", json!({}))).await;
    assert_eq!((code, status["message"].as_str()), (StatusCode::NOT_FOUND, Some("namespaces \"nowhere\" not found")));

    // An update on the version read succeeds once; the same stale version then conflicts.
    let mut update = created.clone();
    update["data"]["k"] = "w".into();
    let (code, updated) = server.put(&format!("{base}/a"), update.clone()).await;
    assert_eq!(code, StatusCode::OK);
    assert_ne!(updated["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()));
    let (code, status) = server.put(&format!("{base}/a"), update).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::CONFLICT, Some("Conflict")));
    assert!(status["message"].as_str().unwrap().contains("the object has been modified"));

    let (code, status) = server.post("/api/v1/namespaces/default/pods", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad"}, "spec": {"containers": [{"name": "c"}]}})).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")));
    let causes: Vec<&str> =
        status["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert_eq!(causes, ["metadata.name", "spec.containers[0].image"]);

    let (code, generated) =
        server.post(base, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}})).await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(generated["metadata"]["name"].as_str().unwrap().starts_with("gen-"));

    let (code, _) = server.delete(&format!("{base}/a")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(server.get(&format!("{base}/a")).await.0, StatusCode::NOT_FOUND);
    server.store.shutdown().await;
}

#[tokio::test]
async fn lists_select_page_and_tabulate() {
    let server = Server::start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    for i in 0..5 {
        server.post(base, configmap(&format!("cm{i}"), json!({"tier": if i % 2 == 0 { "even" } else { "odd" }}))).await;
    }
    let (_, even) = server.get(&format!("{base}?labelSelector=tier%3Deven")).await;
    assert_eq!(even["items"].as_array().unwrap().len(), 3);
    assert_eq!(even["kind"], "ConfigMapList");
    let (_, named) = server.get(&format!("{base}?fieldSelector=metadata.name%3Dcm1")).await;
    assert_eq!(named["items"][0]["metadata"]["name"], "cm1");
    let (code, status) = server.get(&format!("{base}?fieldSelector=spec.nope%3Dx")).await;
    assert_eq!(
        (code, status["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("field label not supported: spec.nope"))
    );

    let (_, first) = server.get(&format!("{base}?limit=2")).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    // Pages continue at the first page's version, whatever is written meanwhile.
    server.post(base, configmap("zz-late", json!({}))).await;
    let token = first["metadata"]["continue"].as_str().unwrap();
    let (_, rest) = server.get(&format!("{base}?limit=10&continue={token}")).await;
    let names: Vec<&str> =
        rest["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cm2", "cm3", "cm4"]);
    assert_eq!(rest["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);

    let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let (_, _, table) =
        server.call(Method::GET, "/api/v1/namespaces/default/configmaps?limit=500", None, &[("accept", kubectl)]).await;
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Data", "Age"]);
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(table["rows"][0]["cells"][1], 1);
    server.store.shutdown().await;
}

#[tokio::test]
async fn patches_of_every_kind_apply() {
    let server = Server::start().await;
    let base = "/api/v1/namespaces/default/pods";
    server.post(base, pod("p")).await;
    let (code, merged) = server
        .patch(&format!("{base}/p"), "application/merge-patch+json", json!({"metadata": {"labels": {"tier": "front"}}}))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(merged["metadata"]["labels"], json!({"app": "web", "tier": "front"}));
    let (_, patched) = server
        .patch(
            &format!("{base}/p"),
            "application/json-patch+json",
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]),
        )
        .await;
    assert_eq!(patched["metadata"]["annotations"], json!({"a": "b"}));
    let (code, status) = server
        .patch(
            &format!("{base}/p"),
            "application/json-patch+json",
            json!([{"op": "test", "path": "/metadata/name", "value": "q"}]),
        )
        .await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")));
    let (_, patched) = server
        .patch(
            &format!("{base}/p"),
            "application/strategic-merge-patch+json",
            json!({"spec": {"containers": [{"name": "c", "image": "app:2"}]}}),
        )
        .await;
    assert_eq!(patched["spec"]["containers"][0]["image"], "app:2");
    assert_eq!(patched["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent", "defaults survive a patch");
    let (code, _) = server.patch(&format!("{base}/p"), "text/plain", json!({})).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    server.store.shutdown().await;
}

#[tokio::test]
async fn deletion_waits_for_finalizers_and_scheduled_pods() {
    let server = Server::start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let mut held = configmap("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    server.post(base, held).await;
    let (code, pending) = server.delete(&format!("{base}/held")).await;
    assert_eq!(code, StatusCode::OK);
    assert!(pending["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(server.get(&format!("{base}/held")).await.0, StatusCode::OK, "kept until the finalizer goes");
    server
        .patch(&format!("{base}/held"), "application/merge-patch+json", json!({"metadata": {"finalizers": null}}))
        .await;
    assert_eq!(server.get(&format!("{base}/held")).await.0, StatusCode::NOT_FOUND);

    let pods = "/api/v1/namespaces/default/pods";
    server.post(pods, pod("unscheduled")).await;
    server.delete(&format!("{pods}/unscheduled")).await;
    assert_eq!(
        server.get(&format!("{pods}/unscheduled")).await.0,
        StatusCode::NOT_FOUND,
        "a pod no node runs goes at once"
    );
    server.post(pods, pod("running")).await;
    let (code, _) = server.post(&format!("{pods}/running/binding"), json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "running"}, "target": {"kind": "Node", "name": "n1"}})).await;
    assert_eq!(code, StatusCode::CREATED);
    let (_, terminating) = server.delete(&format!("{pods}/running")).await;
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 30);
    let (code, _, _) = server.call(Method::DELETE, &format!("{pods}/running?gracePeriodSeconds=0"), None, &[]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        server.get(&format!("{pods}/running")).await.0,
        StatusCode::NOT_FOUND,
        "grace 0 deletes a terminating pod"
    );
    server.store.shutdown().await;
}

#[tokio::test]
async fn watches_start_with_the_state_and_follow_changes() {
    let server = Server::start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let (_, first) = server.post(base, configmap("w1", json!({}))).await;
    // Each watch runs while w1 is changed then deleted; `watched` gives (type, name) per event.
    let watch_as = |query: &str, accept: &str| {
        let request = Request::get(format!("{base}?watch=true&timeoutSeconds=2&{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap();
        let router = server.router.clone();
        tokio::spawn(async move {
            let response = router.oneshot(request).await.unwrap();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let events: Vec<Value> =
                String::from_utf8(body.to_vec()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            events
        })
    };
    let watch = |query: &str| watch_as(query, "application/json");
    let legacy = watch("");
    let streaming = watch(&format!(
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion={}",
        first["metadata"]["resourceVersion"].as_str().unwrap()
    ));
    let changes_only = watch("sendInitialEvents=false&resourceVersionMatch=NotOlderThan");
    // A metadata watch's bookmarks are metadata too: its client decodes nothing else.
    let metadata = watch_as(
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut update = first.clone();
    update["data"]["k"] = "changed".into();
    server.put(&format!("{base}/w1"), update).await;
    server.delete(&format!("{base}/w1")).await;
    let watched = |events: Vec<Value>| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                let name = e["object"]["metadata"]["name"].as_str().unwrap_or("");
                (e["type"].as_str().unwrap().to_string(), name.to_string())
            })
            .collect()
    };
    let changes = [("MODIFIED".to_string(), "w1".to_string()), ("DELETED".into(), "w1".into())];
    let mut expected = vec![("ADDED".to_string(), "w1".to_string())];
    expected.extend(changes.clone());
    assert_eq!(watched(legacy.await.unwrap()), expected);
    // A streaming list: the state, a bookmark that ends it, then the changes.
    let streamed = streaming.await.unwrap();
    assert_eq!(streamed[1]["type"], "BOOKMARK");
    assert_eq!(streamed[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert_eq!(streamed[1]["object"]["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
    let streamed: Vec<_> = watched(streamed).into_iter().filter(|(kind, _)| kind != "BOOKMARK").collect();
    assert_eq!(streamed, expected);
    assert_eq!(watched(changes_only.await.unwrap()), changes);
    let metadata = metadata.await.unwrap();
    assert_eq!(metadata[1]["type"], "BOOKMARK");
    assert_eq!(metadata[1]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(metadata[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");

    // A version below the compaction floor is answered with an ERROR event carrying 410.
    let now = server.store.revision();
    server.store.compact(now).await.unwrap();
    let (_, _, body) =
        server.call(Method::GET, &format!("{base}?watch=true&resourceVersion=1&timeoutSeconds=1"), None, &[]).await;
    let text = body.as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
    let event: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["object"]["code"].as_u64(), event["object"]["reason"].as_str()),
        (Some("ERROR"), Some(410), Some("Expired"))
    );
    server.store.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_creates_merges_and_conflicts() {
    let server = Server::start().await;
    let cm = "/api/v1/namespaces/default/configmaps/settings";
    let apply = |manager: &'static str, force: bool, body: &'static str| {
        let uri = format!("{cm}?fieldManager={manager}{}", if force { "&force=true" } else { "" });
        let server = &server;
        async move {
            let (code, _, body) = server
                .call_raw(Method::PATCH, &uri, body.into(), &[("content-type", "application/apply-patch+yaml")])
                .await;
            (code, body)
        }
    };
    // YAML, as the media type says; the object does not exist yet, so the apply creates it.
    let (code, created) = apply(
        "alice",
        false,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n  size: big\n",
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "alice");
    assert_eq!(created["metadata"]["managedFields"][0]["operation"], "Apply");

    let bob = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings"},"data":{"mode":"slow"}}"#;
    let (code, conflict) = apply("bob", false, bob).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(conflict["message"], r#"Apply failed with 1 conflict: conflict with "alice": .data.mode"#);
    assert_eq!(
        conflict["details"]["causes"][0],
        json!({"reason": "FieldManagerConflict", "message": "conflict with \"alice\"", "field": ".data.mode"})
    );
    let (code, forced) = apply("bob", true, bob).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(forced["data"], json!({"mode": "slow", "size": "big"}));

    // Alice drops `size` from her configuration: it goes. Ordinary writes are tracked too.
    let (_, dropped) =
        apply("alice", false, r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings"},"data":{}}"#)
            .await;
    assert_eq!(dropped["data"], json!({"mode": "slow"}));
    let (_, _, labelled) = server
        .call(
            Method::PATCH,
            cm,
            Some(json!({"metadata": {"labels": {"team": "edge"}}})),
            &[("content-type", "application/merge-patch+json"), ("user-agent", "kubectl/v1.33.1 (linux/amd64)")],
        )
        .await;
    let managers: Vec<&str> = labelled["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["alice", "bob", "kubectl"]);

    let (code, _, _) =
        server.call_raw(Method::PATCH, cm, bob.into(), &[("content-type", "application/apply-patch+yaml")]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "apply needs a field manager");
    let other = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"other"}}"#;
    assert_eq!(apply("bob", false, other).await.0, StatusCode::BAD_REQUEST, "the name must match the URL");
    server.store.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let server = Server::start().await;
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"k": "x".repeat(4 * 1024 * 1024)}});
    let (code, status) = server.post("/api/v1/namespaces/default/configmaps", big).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("RequestEntityTooLarge")));
    server.store.shutdown().await;
}

#[tokio::test]
async fn history_is_compacted_one_interval_behind() {
    let server = Server::start().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let compactor = tokio::spawn(compact_history(server.store.clone(), std::time::Duration::from_millis(50), async {
        let _ = stopped.await;
    }));
    let base = "/api/v1/namespaces/default/configmaps";
    let mut written = 0;
    // Keep writing until the floor passes a revision seen after the compactor started: it only
    // ever compacts to what was current a tick ago, so the newest history stays.
    let started_at = server.store.revision();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.store.compact_revision() < started_at {
        assert!(std::time::Instant::now() < deadline, "no compaction past {started_at}");
        server.post(base, json!({"metadata": {"name": format!("c{written}")}})).await;
        written += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(server.store.compact_revision() < server.store.revision());
    let _ = stop.send(());
    compactor.await.unwrap();
    server.store.shutdown().await;
}

#[tokio::test]
async fn pod_tables_field_selectors_and_field_validation_match_upstream() {
    let server = Server::start().await;
    let pods = "/api/v1/namespaces/default/pods";
    server.post(pods, pod("pending")).await;
    for (name, status) in [
        (
            "running",
            json!({"phase": "Running", "podIP": "127.44.0.2", "podIPs": [{"ip": "127.44.0.2"}], "containerStatuses": [{
                "name": "c", "image": "app:1", "imageID": "", "ready": true, "started": true, "restartCount": 2,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}),
        ),
        (
            "oom",
            json!({"phase": "Failed", "containerStatuses": [{
                "name": "c", "image": "app:1", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        ),
    ] {
        let mut object = pod(name);
        object["spec"]["nodeName"] = json!("n1");
        server.post(pods, object).await;
        let (code, _) = server
            .patch(&format!("{pods}/{name}/status"), "application/merge-patch+json", json!({"status": status}))
            .await;
        assert_eq!(code, StatusCode::OK);
    }

    // The columns and cells `kubectl get pods -o wide` prints, ages left out.
    let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (_, _, table) = server.call(Method::GET, pods, None, &[("accept", kubectl)]).await;
    let age = table["columnDefinitions"].as_array().unwrap().iter().position(|c| c["name"] == "Age").unwrap();
    let shown = json!({
        "columns": table["columnDefinitions"].as_array().unwrap().iter()
            .map(|c| json!([c["name"], c["type"], c["priority"]])).collect::<Vec<_>>(),
        "rows": table["rows"].as_array().unwrap().iter().map(|r| {
            let mut cells = r["cells"].as_array().unwrap().clone();
            cells.remove(age);
            cells
        }).collect::<Vec<_>>(),
    });
    expect_test::expect_file!["../../tests/snapshots/table-pods.json"]
        .assert_eq(&serde_json::to_string_pretty(&shown).unwrap());

    // The field selectors kubectl sends: `describe node` lists a node's live pods.
    let names = |list: &Value| -> Vec<String> {
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };
    for (selector, expected) in [
        ("spec.nodeName%3Dn1", vec!["oom", "running"]),
        ("status.phase!%3DPending", vec!["oom", "running"]),
        ("spec.nodeName%3Dn1,status.phase!%3DSucceeded,status.phase!%3DFailed", vec!["running"]),
        ("spec.nodeName%3D", vec!["pending"]),
    ] {
        let (code, list) = server.get(&format!("{pods}?fieldSelector={selector}")).await;
        assert_eq!(
            (code, names(&list)),
            (StatusCode::OK, expected.iter().map(|n| n.to_string()).collect()),
            "{selector}"
        );
    }
    let event = json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "running", "namespace": "default"},
        "reason": "Started", "message": "Started container c", "type": "Normal"});
    server.post("/api/v1/namespaces/default/events", event).await;
    let (_, events) = server
        .get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Drunning,involvedObject.kind%3DPod")
        .await;
    assert_eq!(names(&events), ["e1"]);
    let secret =
        json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
    server.post("/api/v1/namespaces/default/secrets", secret).await;
    server.post("/api/v1/namespaces/default/secrets", json!({"metadata": {"name": "plain"}})).await;
    let (_, secrets) = server.get("/api/v1/namespaces/default/secrets?fieldSelector=type%3Dkubernetes.io/tls").await;
    assert_eq!(names(&secrets), ["tls"]);

    // Unknown fields: a warning with Warn, silence with Ignore, a refusal with Strict.
    let mut odd = configmap("odd", json!({}));
    odd["colour"] = json!("blue");
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, headers, _) =
        server.call(Method::POST, &format!("{cms}?fieldValidation=Warn"), Some(odd.clone()), &[]).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(headers[header::WARNING], "299 - \"unknown field \\\"colour\\\"\"");
    odd["metadata"]["name"] = json!("odd2");
    let (code, headers, _) =
        server.call(Method::POST, &format!("{cms}?fieldValidation=Ignore"), Some(odd.clone()), &[]).await;
    assert_eq!((code, headers.get(header::WARNING)), (StatusCode::CREATED, None));
    odd["metadata"]["name"] = json!("odd3");
    let (code, status) = server.post(&format!("{cms}?fieldValidation=Strict"), odd).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("BadRequest")));

    // What kubectl reads from OpenAPI to validate on the server and patch strategically.
    let (_, v1) = server.get("/openapi/v3/api/v1").await;
    let patch = &v1["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
    let shown = json!({
        "gvk": patch["x-kubernetes-group-version-kind"],
        "parameters": patch["parameters"].as_array().unwrap().iter().map(|p| &p["name"]).collect::<Vec<_>>(),
        "requestBody": patch["requestBody"]["content"].as_object().unwrap().keys().collect::<Vec<_>>(),
        "containers": v1["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
            .as_object().unwrap().iter().filter(|(k, _)| k.starts_with("x-kubernetes")).map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
    });
    expect_test::expect_file!["../../tests/snapshots/openapi-v1-pod-patch.json"]
        .assert_eq(&serde_json::to_string_pretty(&shown).unwrap());
    server.store.shutdown().await;
}

#[tokio::test]
async fn pretty_output_is_asked_for_or_given_to_curl() {
    let server = Server::start().await;
    const CM: &str = "/api/v1/namespaces/default/configmaps";
    server.post(CM, configmap("shown", json!({}))).await;
    let raw = |query: &'static str, agent: &'static str| {
        let server = &server;
        async move {
            let request = Request::get(format!("{CM}/shown{query}"))
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::USER_AGENT, agent)
                .body(Body::empty())
                .unwrap();
            let response = server.router.clone().oneshot(request).await.unwrap();
            String::from_utf8(axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap()
        }
    };
    let indented = raw("?pretty=true", "kubectl/v1.33.0").await;
    assert!(indented.starts_with("{\n  \"") && indented.contains("\n  \"kind\": \"ConfigMap\",\n"), "{indented}");
    assert!(indented.ends_with('}'), "no newline after an indented body: {indented:?}");
    assert_eq!(raw("", "curl/8.5.0").await, indented);
    assert_eq!(raw("?pretty=", "curl/8.5.0").await, indented, "an empty value leaves it to the user agent");
    for (query, agent) in [("", "kubectl/v1.33.0"), ("?pretty=0", "curl/8.5.0"), ("?pretty=yes", "Mozilla/5.0")] {
        let compact = raw(query, agent).await;
        assert!(!compact.contains('\n') || compact.find('\n') == Some(compact.len() - 1), "{query} {agent}: {compact}");
    }
    // Errors are indented too.
    let missing = raw("-missing?pretty=1", "python").await;
    assert!(missing.starts_with("{\n  \"kind\": \"Status\",\n"), "{missing}");
    // Aggregated discovery is negotiated, so indented; OpenAPI documents are served as hashed.
    let at = |path: &'static str, accept: &'static str| {
        let server = &server;
        async move {
            let request = Request::get(path)
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::USER_AGENT, "curl/8.5.0")
                .header(header::ACCEPT, accept)
                .body(Body::empty())
                .unwrap();
            let response = server.router.clone().oneshot(request).await.unwrap();
            String::from_utf8(axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap()
        }
    };
    let discovery = at("/api", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList").await;
    assert!(discovery.starts_with("{\n  \""), "{discovery:.80}");
    let openapi = at("/openapi/v3/api/v1", "application/json").await;
    assert!(openapi.starts_with("{\"") && !openapi.contains("\n  \""), "{openapi:.80}");
}
