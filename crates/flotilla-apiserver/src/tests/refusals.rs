//! Input that upstream refuses is refused here too, with upstream's code, reason and message.

use super::*;

const CM: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn bodies_in_a_media_type_the_server_does_not_speak_get_415() {
    let server = Server::start().await;
    let body = serde_json::to_vec(&configmap("form", json!({}))).unwrap();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (code, _, status) = server.call_raw(Method::POST, CM, body.clone(), &form).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("UnsupportedMediaType")));
    assert_eq!(
        status["message"],
        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
    );
    assert_eq!(server.get(&format!("{CM}/form")).await.0, StatusCode::NOT_FOUND, "nothing was created");
    let (code, _, _) = server.call_raw(Method::PUT, &format!("{CM}/form"), body, &form).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (code, status) = server.patch(&format!("{CM}/form"), "text/plain", json!({})).await;
    assert_eq!(
        (code, status["message"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("415: Unsupported Media Type"))
    );

    // YAML and a charset parameter are spoken.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yaml\ndata:\n  k: v\n";
    let (code, _, created) =
        server.call_raw(Method::POST, CM, yaml.into(), &[("content-type", "application/yaml")]).await;
    assert_eq!((code, created["data"]["k"].as_str()), (StatusCode::CREATED, Some("v")));
    let json = [("content-type", "application/json; charset=utf-8")];
    let (code, _, _) =
        server.call_raw(Method::POST, CM, serde_json::to_vec(&configmap("utf8", json!({}))).unwrap(), &json).await;
    assert_eq!(code, StatusCode::CREATED);
}

#[tokio::test]
async fn duplicate_fields_are_refused_when_strict_and_warned_of_otherwise() {
    let server = Server::start().await;
    let body = br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "name": "b"}, "data": {"k": "1", "k": "2"}}"#;
    let (code, _, status) =
        server.call_raw(Method::POST, &format!("{CM}?fieldValidation=Strict"), body.to_vec(), &[]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        status["message"],
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: duplicate field \"metadata.name\", duplicate field \"data.k\""
    );
    let (code, headers, created) = server.call_raw(Method::POST, CM, body.to_vec(), &[]).await;
    assert_eq!((code, created["metadata"]["name"].as_str()), (StatusCode::CREATED, Some("b")), "the last one wins");
    let warnings: Vec<_> = headers.get_all("warning").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(warnings, [r#"299 - "duplicate field \"metadata.name\"""#, r#"299 - "duplicate field \"data.k\"""#]);
    let (code, headers, _) =
        server.call_raw(Method::PUT, &format!("{CM}/b?fieldValidation=Ignore"), body.to_vec(), &[]).await;
    assert_eq!((code, headers.get("warning")), (StatusCode::OK, None));

    // A strict patch with duplicates is an invalid patch (422), as upstream has it.
    let patch = br#"{"data": {"k": "3", "k": "4"}}"#.to_vec();
    let merge = [("content-type", "application/merge-patch+json")];
    let (code, _, status) =
        server.call_raw(Method::PATCH, &format!("{CM}/b?fieldValidation=Strict"), patch.clone(), &merge).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        status["message"].as_str().unwrap().ends_with("strict decoding error: duplicate field \"data.k\""),
        "{status}"
    );
    let (code, headers, patched) = server.call_raw(Method::PATCH, &format!("{CM}/b"), patch, &merge).await;
    assert_eq!((code, patched["data"]["k"].as_str()), (StatusCode::OK, Some("4")));
    assert!(headers.get("warning").is_some());
}

#[tokio::test]
async fn a_patch_may_not_move_its_object() {
    let server = Server::start().await;
    let (_, created) = server.post(CM, configmap("stay", json!({}))).await;
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let at = format!("{CM}/stay");
    for kind in ["application/merge-patch+json", "application/strategic-merge-patch+json"] {
        let (code, status) = server.patch(&at, kind, json!({"metadata": {"name": "moved"}})).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{kind}");
        assert_eq!(status["message"], "the name of the object (moved) does not match the name on the URL (stay)");
        let (code, status) = server.patch(&at, kind, json!({"metadata": {"namespace": "kube-system"}})).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{kind}");
        assert_eq!(
            status["message"],
            "the namespace of the provided object does not match the namespace sent on the request"
        );
        let (code, status) = server.patch(&at, kind, json!({"metadata": {"uid": "another"}})).await;
        assert_eq!((code, status["reason"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")), "{kind}");
        assert_eq!(
            status["message"],
            "ConfigMap \"stay\" is invalid: metadata.uid: Invalid value: \"another\": field is immutable"
        );
    }
    let json_patch = json!([{"op": "replace", "path": "/metadata/name", "value": "moved"}]);
    let (code, _) = server.patch(&at, "application/json-patch+json", json_patch).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let json_patch = json!([{"op": "remove", "path": "/metadata/name"}]);
    let (code, status) = server.patch(&at, "application/json-patch+json", json_patch).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    // A PUT naming another uid fails its precondition.
    let mut replaced = configmap("stay", json!({}));
    replaced["metadata"]["uid"] = "another".into();
    let (code, status) = server.put(&at, replaced).await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    let (_, stored) = server.get(&at).await;
    assert_eq!(
        (stored["metadata"]["name"].as_str(), stored["metadata"]["uid"].as_str()),
        (Some("stay"), Some(uid.as_str()))
    );
}

#[tokio::test]
async fn list_options_that_make_no_sense_are_invalid() {
    let server = Server::start().await;
    let (code, status) = server.get(&format!("{CM}?resourceVersionMatch=NotOlderThan")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        status["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
    );
    let (code, status) = server.get(&format!("{CM}?resourceVersion=0&resourceVersionMatch=Exact")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let (code, status) = server.get(&format!("{CM}?resourceVersion=1&resourceVersionMatch=Sometime")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(status["message"].as_str().unwrap().contains("Unsupported value: \"Sometime\""), "{status}");
    let (code, _) = server.get(&format!("{CM}?resourceVersion=1&resourceVersionMatch=NotOlderThan")).await;
    assert_eq!(code, StatusCode::OK);

    // A streaming list is a watch's, and needs NotOlderThan; a watch takes no other match.
    let (code, status) = server.get(&format!("{CM}?sendInitialEvents=true")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
    );
    for (query, why) in [
        ("sendInitialEvents=true", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"),
        (
            "resourceVersionMatch=NotOlderThan",
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ),
        (
            "sendInitialEvents=true&resourceVersionMatch=Exact",
            "Unsupported value: \"Exact\": supported values: \"NotOlderThan\"",
        ),
    ] {
        let (code, status) = server.get(&format!("{CM}?watch=1&{query}")).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {status}");
        assert!(status["message"].as_str().unwrap().contains(why), "{query}: {status}");
    }
}

#[tokio::test]
async fn a_read_from_the_future_waits_then_times_out_with_a_retry_hint() {
    let server = Server::start().await;
    let (_, list) = server.get(CM).await;
    let now: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    let future = now + 1000;
    let started = std::time::Instant::now();
    let (code, headers, status) = server.call(Method::GET, &format!("{CM}?resourceVersion={future}"), None, &[]).await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "it waited for the version");
    assert_eq!((code, status["reason"].as_str()), (StatusCode::GATEWAY_TIMEOUT, Some("Timeout")));
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Timeout: Too large resource version: {future}, current: ")),
        "{status}"
    );
    assert_eq!(status["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
    assert_eq!(
        (status["details"]["retryAfterSeconds"].as_u64(), headers.get("retry-after").map(|v| v.to_str().unwrap())),
        (Some(1), Some("1"))
    );
    let (code, _) = server.get(&format!("/api/v1/namespaces/default?resourceVersion={future}")).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);

    // A version reached while the read waits is served.
    let waiting = {
        let router = server.router.clone();
        let uri = format!("{CM}?resourceVersion={}", now + 1);
        tokio::spawn(async move {
            let request =
                Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {TOKEN}")).body(Body::empty());
            router.oneshot(request.unwrap()).await.unwrap().status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.post(CM, configmap("now", json!({}))).await;
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn the_system_namespaces_may_not_be_deleted() {
    let server = Server::start().await;
    for name in ["default", "kube-system", "kube-public"] {
        let (code, status) = server.delete(&format!("/api/v1/namespaces/{name}")).await;
        assert_eq!((code, status["reason"].as_str()), (StatusCode::FORBIDDEN, Some("Forbidden")));
        assert_eq!(status["message"], format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"));
        assert_eq!(server.get(&format!("/api/v1/namespaces/{name}")).await.0, StatusCode::OK);
    }
    // kube-node-lease is not among them, as upstream.
    assert_eq!(server.delete("/api/v1/namespaces/kube-node-lease").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_delete_reads_its_options_from_the_body_when_it_has_one() {
    let server = Server::start().await;
    server.post(CM, configmap("kept", json!({}))).await;
    let at = format!("{CM}/kept");
    let (code, status) = server.delete(&format!("{at}?propagationPolicy=Sometimes")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["message"],
        "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"Sometimes\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
    );
    let delete = |query: &str, body: Value| {
        let uri = format!("{at}{query}");
        let server = &server;
        async move { server.call(Method::DELETE, &uri, Some(body), &[]).await }
    };
    let (code, _, status) = delete("", json!({"gracePeriodSeconds": "soon"})).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("BadRequest")), "{status}");
    let (code, _, status) = delete("", json!({"dryRun": ["Some"], "propagationPolicy": "Sometimes"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(status["details"]["causes"].as_array().map(Vec::len), Some(2), "every cause: {status}");
    // A body of another kind is no DeleteOptions, and deletes nothing.
    let (code, _, status) = delete("", configmap("kept", json!({}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    // Options are checked before the object is looked for.
    let (code, status) = server.delete(&format!("{CM}/missing?propagationPolicy=Sometimes")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    // Dry runs, however they are asked for, delete nothing; the query beside a body does not
    // count otherwise, as upstream ignores it.
    for (query, body) in [("", json!({"dryRun": ["All"]})), ("?dryRun=All", json!({}))] {
        let (code, _, status) = delete(query, body).await;
        assert_eq!(code, StatusCode::OK, "{status}");
        assert_eq!(server.get(&at).await.0, StatusCode::OK, "{query}: a dry run deleted it");
    }
    let (code, _, status) = delete("?propagationPolicy=Sometimes", json!({"kind": "DeleteOptions"})).await;
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(server.get(&at).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_service_update_allocates_keeps_and_frees_its_addresses() {
    let server = Server::start().await;
    let svcs = "/api/v1/namespaces/default/services";
    let service = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec});
    let (code, a) = server.post(svcs, service("a", json!({"type": "NodePort", "ports": [{"port": 80}]}))).await;
    assert_eq!(code, StatusCode::CREATED, "{a}");
    let (a_ip, a_port) = (a["spec"]["clusterIP"].clone(), a["spec"]["ports"][0]["nodePort"].clone());
    server.post(svcs, service("b", json!({"ports": [{"port": 80}]}))).await;
    let merge = "application/merge-patch+json";
    // Another's node port, or one out of range, is refused on update as on create.
    let (code, status) = server
        .patch(
            &format!("{svcs}/b"),
            merge,
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": a_port}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(status["message"].as_str().unwrap().contains("provided port is already allocated"), "{status}");
    let (code, status) = server
        .patch(
            &format!("{svcs}/b"),
            merge,
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    // Becoming a NodePort gets one; a replace that leaves it out keeps it.
    let (code, b) = server.patch(&format!("{svcs}/b"), merge, json!({"spec": {"type": "NodePort"}})).await;
    assert_eq!(code, StatusCode::OK, "{b}");
    let b_port = b["spec"]["ports"][0]["nodePort"].clone();
    assert!(b_port.as_u64().is_some_and(|p| p != a_port.as_u64().unwrap()), "{b}");
    let mut replaced = b.clone();
    replaced["spec"]["ports"][0].as_object_mut().unwrap().remove("nodePort");
    let (_, b) = server.put(&format!("{svcs}/b"), replaced).await;
    assert_eq!(b["spec"]["ports"][0]["nodePort"], b_port);
    // Back to ClusterIP: the node port is freed, and another Service can have it.
    let (_, b) = server.patch(&format!("{svcs}/b"), merge, json!({"spec": {"type": "ClusterIP"}})).await;
    assert!(b["spec"]["ports"][0].get("nodePort").is_none(), "{b}");
    let (code, c) =
        server.post(svcs, service("c", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": b_port}]}))).await;
    assert_eq!(code, StatusCode::CREATED, "{c}");
    // An ExternalName that becomes a ClusterIP Service cannot take another's cluster IP.
    server.post(svcs, service("d", json!({"type": "ExternalName", "externalName": "example.com"}))).await;
    let (code, status) = server
        .patch(
            &format!("{svcs}/d"),
            merge,
            json!({"spec": {"type": "ClusterIP", "externalName": null, "clusterIP": a_ip, "ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(status["message"].as_str().unwrap().contains("provided IP is already allocated"), "{status}");
    // Deleting the one that tried frees nothing of a's: a's address stays its own.
    server.delete(&format!("{svcs}/d")).await;
    let (code, status) = server.post(svcs, service("e", json!({"clusterIP": a_ip, "ports": [{"port": 80}]}))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
}

#[tokio::test]
async fn a_service_range_is_given_out_to_its_last_address_then_refused() {
    // 14 addresses, some of them the system Services' already.
    let config = ApiServerConfig { service_cidr: "127.50.0.0/28".parse().unwrap(), ..ApiServerConfig::default() };
    let server = Server::start_with(config).await;
    let svcs = "/api/v1/namespaces/default/services";
    let service = |name: String| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
    let (_, system) = server.get("/api/v1/services").await;
    let held: std::collections::BTreeSet<String> =
        system["items"].as_array().unwrap().iter().map(|s| s["spec"]["clusterIP"].as_str().unwrap().into()).collect();
    let mut given = held.clone();
    for i in 0..14 - held.len() {
        let (code, created) = server.post(svcs, service(format!("s-{i}"))).await;
        assert_eq!(code, StatusCode::CREATED, "{created}");
        given.insert(created["spec"]["clusterIP"].as_str().unwrap().to_string());
    }
    let all: std::collections::BTreeSet<String> = (1..=14).map(|i| format!("127.50.0.{i}")).collect();
    assert_eq!(given, all, "every address, once each");
    let (code, status) = server.post(svcs, service("one-too-many".into())).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{status}");
    assert!(status["message"].as_str().unwrap().contains("the service IP range 127.50.0.0/28 is full"), "{status}");
    // A deleted Service's address is the one free, and the next Service gets it.
    let (_, freed) = server.get(&format!("{svcs}/s-3")).await;
    server.delete(&format!("{svcs}/s-3")).await;
    let (code, created) = server.post(svcs, service("after".into())).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["spec"]["clusterIP"], freed["spec"]["clusterIP"]);
}
