use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;

use super::*;

fn list(api_version: &str, kind: &str, items: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "10"},
        "items": items,
    }))
    .unwrap()
}

/// Serves list and watch requests for the six kinds until the test ends.
/// The first EndpointSlice watch delivers one ADDED event. Without `mcs`,
/// the ServiceExport and ServiceImport kinds answer 404, as when their CRDs
/// are not installed.
async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, mcs: bool) {
    let mut slice_watches = 0;
    let mut paths = std::collections::BTreeSet::new();
    while let Some((req, send)) = handle.next_request().await {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let watching = query.contains("watch=true");
        paths.insert(path.clone());
        let body = if watching {
            if path == "/apis/discovery.k8s.io/v1/endpointslices" && slice_watches == 0 {
                slice_watches += 1;
                let ev = serde_json::json!({"type": "ADDED", "object": {
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "web-1", "namespace": "prod", "resourceVersion": "11",
                                 "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.244.1.5"]}]
                }});
                let mut b = serde_json::to_vec(&ev).unwrap();
                b.push(b'\n');
                b
            } else {
                // An empty watch ends at once; slow the re-watch loop down.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Vec::new()
            }
        } else {
            match path.as_str() {
                "/api/v1/services" => list(
                    "v1",
                    "Service",
                    serde_json::json!([{"metadata": {"name": "web", "namespace": "prod", "resourceVersion": "5"},
                                        "spec": {"clusterIP": "10.96.0.10"}}]),
                ),
                "/apis/discovery.k8s.io/v1/endpointslices" => list(
                    "discovery.k8s.io/v1",
                    "EndpointSlice",
                    serde_json::json!([]),
                ),
                "/apis/multicluster.x-k8s.io/v1beta1/serviceexports"
                | "/apis/multicluster.x-k8s.io/v1beta1/serviceimports"
                    if !mcs =>
                {
                    send.send_response(
                        Response::builder()
                            .status(404)
                            .body(Body::from(
                                serde_json::to_vec(&serde_json::json!({
                                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Failure", "reason": "NotFound", "code": 404,
                                    "message": "the server could not find the requested resource"}))
                                .unwrap(),
                            ))
                            .unwrap(),
                    );
                    continue;
                }
                "/apis/multicluster.x-k8s.io/v1beta1/serviceexports" => list(
                    "multicluster.x-k8s.io/v1beta1",
                    "ServiceExport",
                    serde_json::json!([{"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
                                        "metadata": {"name": "web", "namespace": "prod", "resourceVersion": "6"},
                                        "spec": {"exportedLabels": {"tier": "web"}}}]),
                ),
                "/apis/multicluster.x-k8s.io/v1beta1/serviceimports" => list(
                    "multicluster.x-k8s.io/v1beta1",
                    "ServiceImport",
                    serde_json::json!([{"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
                                        "metadata": {"name": "web", "namespace": "prod", "resourceVersion": "9"},
                                        "spec": {"type": "ClusterSetIP", "ports": [{"port": 80}]},
                                        "status": {"clusters": [{"cluster": "b"}]}}]),
                ),
                "/api/v1/nodes" => list(
                    "v1",
                    "Node",
                    serde_json::json!([{"metadata": {"name": "node-1", "resourceVersion": "7"}}]),
                ),
                "/api/v1/namespaces" => list(
                    "v1",
                    "Namespace",
                    serde_json::json!([{"metadata": {"name": "prod", "resourceVersion": "8"}}]),
                ),
                other => panic!("unexpected request {other}?{query}"),
            }
        };
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(body))
                .unwrap(),
        );
    }
}

#[tokio::test]
async fn without_the_mcs_crd_exports_are_empty_and_the_rest_syncs() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, false));
    let cancel = CancellationToken::new();
    let src = KubeSource::spawn(Client::new(svc, "default"), cancel.clone());
    let mut rx = src.state();
    let s = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.synced))
        .await
        .expect("synced without the MCS CRD")
        .unwrap()
        .clone();
    cancel.cancel();
    server.abort();
    assert!(s.service_exports.is_empty());
    assert!(s.service_imports.is_empty());
    assert_eq!(s.services.len(), 1);
}

#[tokio::test]
async fn lists_then_watches_every_kind() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, true));
    let client = Client::new(svc, "default");
    let cancel = CancellationToken::new();
    let src = KubeSource::spawn(client, cancel.clone());
    let mut rx = src.state();
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.synced && !s.endpoint_slices.is_empty()),
    )
    .await
    .expect("synced with the watched slice")
    .unwrap()
    .clone();
    cancel.cancel();
    server.abort();
    assert_eq!(
        s.services.keys().cloned().collect::<Vec<_>>(),
        [("prod".to_string(), "web".to_string())]
    );
    let export = &s.service_exports[&("prod".into(), "web".into())];
    assert_eq!(export.spec.exported_labels["tier"], "web");
    let import = &s.service_imports[&("prod".into(), "web".into())];
    assert_eq!(import.status.as_ref().unwrap().clusters[0].cluster, "b");
    assert!(s.nodes.contains_key(&(String::new(), "node-1".into())));
    assert!(s.namespaces.contains_key(&(String::new(), "prod".into())));
    assert_eq!(s.slices_of("prod", "web").count(), 1);
}

#[test]
fn a_relist_replaces_the_kind_at_init_done() {
    let svc = |name: &str| Service {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut map = BTreeMap::new();
    let mut fold = KindFold::default();
    assert!(!fold.apply(&mut map, watcher::Event::Init));
    assert!(!fold.apply(&mut map, watcher::Event::InitApply(svc("a"))));
    assert!(map.is_empty(), "nothing visible before InitDone");
    assert!(fold.apply(&mut map, watcher::Event::InitDone));
    assert!(fold.synced);
    assert!(fold.apply(&mut map, watcher::Event::Apply(svc("b"))));
    assert_eq!(map.len(), 2);
    // A re-list without "a" drops it, at InitDone only.
    fold.apply(&mut map, watcher::Event::Init);
    fold.apply(&mut map, watcher::Event::InitApply(svc("b")));
    assert_eq!(map.len(), 2);
    fold.apply(&mut map, watcher::Event::InitDone);
    assert_eq!(
        map.keys().cloned().collect::<Vec<_>>(),
        [("ns".to_string(), "b".to_string())]
    );
    assert!(fold.apply(&mut map, watcher::Event::Delete(svc("b"))));
    assert!(!fold.apply(&mut map, watcher::Event::Delete(svc("b"))));
}
