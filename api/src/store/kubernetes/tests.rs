//! The Kubernetes store against kube's mock service: exact requests of
//! put (server-side apply) and delete, and refusal of foreign resources.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use super::*;
use crate::records::tests::{sample_endpoint, sample_import};

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn store() -> (KubeStore, MockHandle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        KubeStore::new(Client::new(svc, "default"), "broker"),
        handle,
    )
}

async fn next(h: &mut MockHandle) -> (Method, String, Value, SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .expect("a request in time")
        .expect("client alive");
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let uri = parts.uri.path_and_query().unwrap().to_string();
    (parts.method, uri, v, send)
}

fn reply(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

#[tokio::test]
async fn put_is_a_server_side_apply_of_the_named_labelled_resource() {
    let (s, mut h) = store();
    let record: AnyRecord = sample_import("a", "prod", "web").into();
    let put = tokio::spawn(async move { s.put(&record).await });
    let (m, uri, body, send) = next(&mut h).await;
    assert_eq!(m, Method::PATCH);
    assert_eq!(
        uri,
        "/apis/causeway.io/v1alpha1/namespaces/broker/exportedservices/a.prod.web?&force=true&fieldManager=causeway"
    );
    assert_eq!(body["apiVersion"], "causeway.io/v1alpha1");
    assert_eq!(body["kind"], "ExportedService");
    assert_eq!(body["metadata"]["name"], "a.prod.web");
    assert_eq!(body["metadata"]["labels"][OWNER_LABEL], "a");
    assert_eq!(body["spec"]["cluster"], "a");
    assert_eq!(body["spec"]["type"], "ClusterSetIP");
    assert_eq!(body["spec"]["addresses"], json!(["242.1.0.10"]));
    let mut back = body.clone();
    back["metadata"]["resourceVersion"] = json!("42");
    reply(send, 200, &back);
    assert_eq!(put.await.unwrap().unwrap(), 42);
}

#[tokio::test]
async fn forbidden_writes_and_missing_deletes() {
    let (s, mut h) = store();
    let s2 = s.clone();
    let put = tokio::spawn(async move { s2.put(&sample_endpoint("a").into()).await });
    let (m, uri, _, send) = next(&mut h).await;
    assert_eq!(m, Method::PATCH);
    assert!(uri.starts_with("/apis/causeway.io/v1alpha1/namespaces/broker/gatewayendpoints/a?"));
    reply(send, 403, &status(403, "Forbidden"));
    assert!(matches!(
        put.await.unwrap(),
        Err(Error::PermissionDenied { .. })
    ));

    let key = AnyRecord::from(sample_endpoint("a")).key();
    let del = tokio::spawn(async move { s.delete(&key).await });
    let (m, uri, _, send) = next(&mut h).await;
    assert_eq!(m, Method::DELETE);
    assert!(uri.starts_with("/apis/causeway.io/v1alpha1/namespaces/broker/gatewayendpoints/a"));
    reply(send, 404, &status(404, "NotFound"));
    assert_eq!(
        del.await.unwrap().unwrap(),
        0,
        "deleting a missing record succeeds"
    );
}

#[tokio::test]
async fn list_skips_foreign_and_invalid_resources() {
    let (s, mut h) = store();
    let list = tokio::spawn(async move { s.list(Some(Kind::Endpoint)).await });
    let (m, uri, _, send) = next(&mut h).await;
    assert_eq!(m, Method::GET);
    assert!(uri.starts_with("/apis/causeway.io/v1alpha1/namespaces/broker/gatewayendpoints"));
    let item = |name: &str, owner: &str, spec: Value| {
        json!({"apiVersion": "causeway.io/v1alpha1", "kind": "GatewayEndpoint",
               "metadata": {"name": name, "namespace": "broker", "labels": {OWNER_LABEL: owner}},
               "spec": spec})
    };
    let good = serde_json::to_value(sample_endpoint("a")).unwrap();
    let of_b = serde_json::to_value(sample_endpoint("b")).unwrap();
    let mut bad_port = good.clone();
    bad_port["port"] = json!(0);
    reply(
        send,
        200,
        &json!({"apiVersion": "causeway.io/v1alpha1", "kind": "GatewayEndpointList",
        "metadata": {"resourceVersion": "77"},
        "items": [
            item("a", "a", good),
            item("c", "c", of_b.clone()),   // b's record under c's name
            item("b", "c", of_b),           // owner label lies
            item("a2", "a", bad_port),
        ]}),
    );
    let l = list.await.unwrap().unwrap();
    assert_eq!(l.revision, 77);
    assert_eq!(l.records, vec![AnyRecord::from(sample_endpoint("a"))]);
}

#[test]
fn crds_are_structural_and_named() {
    let crds = causeway_crds();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "clusters.causeway.io",
            "gatewayendpoints.causeway.io",
            "exportedservices.causeway.io",
            "connectionstatuses.causeway.io"
        ]
    );
    for crd in &crds {
        let y = serde_yaml::to_string(crd).unwrap();
        assert!(!y.contains("$ref"), "{y}");
        assert!(!y.contains("additionalProperties: false"), "{y}");
    }
}

async fn next_event(w: &mut BoxStream<'static, WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("event in time")
        .expect("stream open")
}

#[tokio::test]
async fn watch_lists_then_streams_changes() {
    let (s, mut h) = store();
    let mut w = s.watch(Some(Kind::Endpoint), None);
    let item = |cluster: &str, rv: &str| {
        json!({"apiVersion": "causeway.io/v1alpha1", "kind": "GatewayEndpoint",
               "metadata": {"name": cluster, "namespace": "broker", "resourceVersion": rv,
                            "labels": {OWNER_LABEL: cluster}},
               "spec": serde_json::to_value(sample_endpoint(cluster)).unwrap()})
    };
    let server = tokio::spawn(async move {
        let mut watches = 0;
        loop {
            let (m, uri, _, send) = next(&mut h).await;
            assert_eq!(m, Method::GET);
            assert!(
                uri.starts_with("/apis/causeway.io/v1alpha1/namespaces/broker/gatewayendpoints?")
            );
            if !uri.contains("watch=true") {
                reply(
                    send,
                    200,
                    &json!({"apiVersion": "causeway.io/v1alpha1",
                    "kind": "GatewayEndpointList", "metadata": {"resourceVersion": "10"},
                    "items": [item("a", "9")]}),
                );
            } else if watches == 0 {
                watches += 1;
                let mut b =
                    serde_json::to_vec(&json!({"type": "ADDED", "object": item("b", "11")}))
                        .unwrap();
                b.push(b'\n');
                b.extend(
                    serde_json::to_vec(&json!({"type": "DELETED", "object": item("a", "12")}))
                        .unwrap(),
                );
                b.push(b'\n');
                send.send_response(Response::builder().status(200).body(Body::from(b)).unwrap());
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                send.send_response(
                    Response::builder()
                        .status(200)
                        .body(Body::from(Vec::new()))
                        .unwrap(),
                );
            }
        }
    });
    match next_event(&mut w).await {
        WatchEvent::Snapshot { records, .. } => {
            assert_eq!(records, vec![AnyRecord::from(sample_endpoint("a"))])
        }
        other => panic!("snapshot first, got {other:?}"),
    }
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Put {
            record: sample_endpoint("b").into(),
            revision: 11
        }
    );
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Delete {
            key: AnyRecord::from(sample_endpoint("a")).key(),
            revision: 12
        }
    );
    server.abort();
}
