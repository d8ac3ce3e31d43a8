use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;

use super::*;

#[test]
fn sha256_matches_the_standard_vectors() {
    let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex(sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // Two blocks.
    assert_eq!(
        hex(sha256(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

#[test]
fn derived_names_are_the_reference_controllers() {
    // base32hex(sha256("ns/name")), lower case, first 10 (checked with
    // Python's base64.b32hexencode and hashlib).
    let cases = [
        ("default", "web", "derived-gapqrqeg1j"),
        ("prod", "hello", "derived-lvi877gboq"),
    ];
    for (ns, name, want) in cases {
        assert_eq!(derived_service_name(ns, name), want, "{ns}/{name}");
    }
}

fn derived() -> Derived {
    let name = derived_service_name("prod", "web");
    let service = Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some("prod".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-b")),
            namespace: Some("prod".into()),
            labels: Some([(SERVICE_NAME_LABEL.to_owned(), name.clone())].into()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["242.1.0.5".into()],
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(80),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    };
    Derived {
        namespace: "prod".into(),
        import: "web".into(),
        service,
        slices: [(format!("{name}-b"), slice)].into(),
    }
}

#[derive(Debug)]
struct Seen {
    method: http::Method,
    path: String,
    query: String,
    body: serde_json::Value,
}

/// Answers one request per status: 200 echoes the object sent (with a
/// resourceVersion), anything else is a Status.
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
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let reply = if status == 200 && method == http::Method::PATCH {
            let mut object = body.clone();
            object["metadata"]["resourceVersion"] = "1".into();
            object
        } else if status == 200 {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Success", "code": 200})
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
            body,
        });
    }
    seen
}

#[tokio::test]
async fn the_kube_writer_applies_the_service_and_slices_and_deletes_stale_slices() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, vec![200, 200, 404]));
    let writer = KubeDerivedWriter::new(kube::Client::new(svc, "default"));
    let name = derived_service_name("prod", "web");
    let stale: BTreeSet<String> = [format!("{name}-c")].into();
    writer.apply(&derived(), &stale).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen[0].method, http::Method::PATCH);
    assert_eq!(
        seen[0].path,
        format!("/api/v1/namespaces/prod/services/{name}")
    );
    assert!(
        seen[0]
            .query
            .contains("fieldManager=causeway-derived-controller")
    );
    assert_eq!(seen[0].body["kind"], "Service");
    assert_eq!(seen[0].body["apiVersion"], "v1");
    assert_eq!(seen[0].body["spec"]["ports"][0]["port"], 80);
    assert!(seen[0].body["spec"].get("selector").is_none());
    assert_eq!(seen[1].method, http::Method::PATCH);
    assert_eq!(
        seen[1].path,
        format!("/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices/{name}-b")
    );
    assert_eq!(seen[1].body["kind"], "EndpointSlice");
    assert_eq!(seen[1].body["endpoints"][0]["addresses"][0], "242.1.0.5");
    assert_eq!(seen[1].body["metadata"]["labels"][SERVICE_NAME_LABEL], name);
    // A stale slice already gone is success.
    assert_eq!(seen[2].method, http::Method::DELETE);
    assert_eq!(
        seen[2].path,
        format!("/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices/{name}-c")
    );
}

#[tokio::test]
async fn the_kube_writer_deletes_slices_then_the_service() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, vec![200, 404, 500]));
    let writer = KubeDerivedWriter::new(kube::Client::new(svc, "default"));
    let name = derived_service_name("prod", "web");
    let slices: BTreeSet<String> = [format!("{name}-b")].into();
    writer.delete("prod", "web", &slices).await.unwrap();
    let err = writer
        .delete("prod", "web", &BTreeSet::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("delete Service prod/{name}")),
        "{err}"
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let paths: Vec<_> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        paths,
        [
            (
                http::Method::DELETE,
                format!("/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices/{name}-b")
            ),
            (
                http::Method::DELETE,
                format!("/api/v1/namespaces/prod/services/{name}")
            ),
            (
                http::Method::DELETE,
                format!("/api/v1/namespaces/prod/services/{name}")
            ),
        ]
    );
}

#[tokio::test]
async fn the_fake_keeps_objects_and_can_fail() {
    let fake = FakeDerivedWriter::default();
    fake.apply(&derived(), &BTreeSet::new()).await.unwrap();
    assert_eq!(fake.objects().len(), 1);
    fake.fail(true);
    assert!(fake.delete("prod", "web", &BTreeSet::new()).await.is_err());
    assert_eq!(fake.objects().len(), 1);
    fake.fail(false);
    fake.delete("prod", "web", &BTreeSet::new()).await.unwrap();
    assert!(fake.objects().is_empty());
    assert_eq!(fake.log().len(), 3);
}
