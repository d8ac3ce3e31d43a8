use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;

use super::*;
use crate::mcs::{ClusterStatus, McsServicePort, ServiceImportSpec, ServiceImportStatus};

fn import() -> ServiceImport {
    let mut i = ServiceImport::new(
        "web",
        ServiceImportSpec {
            type_: "ClusterSetIP".into(),
            ports: vec![McsServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                app_protocol: None,
                port: 80,
            }],
            ..ServiceImportSpec::default()
        },
    );
    i.metadata.namespace = Some("prod".into());
    i.metadata.labels = Some(
        [
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ("tier".to_owned(), "web".to_owned()),
        ]
        .into(),
    );
    i.status = Some(ServiceImportStatus {
        clusters: vec![ClusterStatus {
            cluster: "b".into(),
        }],
        conditions: vec![],
    });
    i
}

/// What the mock API server saw of one request.
#[derive(Debug)]
struct Seen {
    method: http::Method,
    path: String,
    query: String,
    content_type: String,
    body: serde_json::Value,
}

/// Answers `n` requests: each with `status` and the object it was sent
/// (or a Status for errors), recording what came in.
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    statuses: Vec<u16>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    for status in statuses {
        let (req, send) = handle.next_request().await.expect("a request");
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let reply = if status == 200 {
            let mut object = serde_json::to_value(import()).unwrap();
            object["metadata"]["resourceVersion"] = "1".into();
            object
        } else {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "NotFound", "code": status, "message": "not found"})
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        seen.push(Seen {
            method,
            path,
            query,
            content_type,
            body,
        });
    }
    seen
}

#[tokio::test]
async fn the_kube_writer_applies_the_object_then_its_status() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, vec![200, 200]));
    let writer = KubeImportWriter::new(kube::Client::new(svc, "default"));
    writer.apply(&import()).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let base = "/apis/multicluster.x-k8s.io/v1beta1/namespaces/prod/serviceimports/web";
    assert_eq!(seen[0].method, http::Method::PATCH);
    assert_eq!(seen[0].path, base);
    assert_eq!(seen[0].content_type, "application/apply-patch+yaml");
    assert!(
        seen[0]
            .query
            .contains("fieldManager=causeway-import-controller"),
        "{}",
        seen[0].query
    );
    assert!(seen[0].query.contains("force=true"), "{}", seen[0].query);
    let object = &seen[0].body;
    assert_eq!(object["apiVersion"], "multicluster.x-k8s.io/v1beta1");
    assert_eq!(object["kind"], "ServiceImport");
    assert_eq!(object["metadata"]["labels"]["tier"], "web");
    assert_eq!(object["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(object["spec"]["type"], "ClusterSetIP");
    assert_eq!(object["spec"]["ports"][0]["port"], 80);
    assert!(object.get("status").is_none(), "{object}");

    assert_eq!(seen[1].method, http::Method::PATCH);
    assert_eq!(seen[1].path, format!("{base}/status"));
    assert_eq!(seen[1].content_type, "application/apply-patch+yaml");
    assert_eq!(seen[1].body["status"]["clusters"][0]["cluster"], "b");
    assert!(seen[1].body.get("spec").is_none());
}

#[tokio::test]
async fn the_kube_writer_deletes_and_a_missing_import_is_success() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, vec![200, 404, 500]));
    let writer = KubeImportWriter::new(kube::Client::new(svc, "default"));
    writer.delete("prod", "web").await.unwrap();
    writer.delete("prod", "web").await.unwrap();
    let err = writer.delete("prod", "web").await.unwrap_err();
    assert!(
        err.to_string().starts_with("delete ServiceImport prod/web"),
        "{err}"
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    for s in &seen {
        assert_eq!(s.method, http::Method::DELETE);
        assert_eq!(
            s.path,
            "/apis/multicluster.x-k8s.io/v1beta1/namespaces/prod/serviceimports/web"
        );
    }
}

#[tokio::test]
async fn the_fake_keeps_objects_and_can_fail() {
    let fake = FakeImportWriter::default();
    fake.apply(&import()).await.unwrap();
    assert_eq!(fake.objects().len(), 1);
    fake.fail(true);
    assert!(fake.delete("prod", "web").await.is_err());
    assert_eq!(fake.objects().len(), 1);
    fake.fail(false);
    fake.delete("prod", "web").await.unwrap();
    assert!(fake.objects().is_empty());
    assert_eq!(fake.log().len(), 3);
    let mut unnamed = import();
    unnamed.metadata.namespace = None;
    assert!(matches!(
        fake.apply(&unnamed).await,
        Err(ImportWriteError::Unnamed)
    ));
}
