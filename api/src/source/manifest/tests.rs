use std::time::Duration;

use super::*;

const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: prod}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: prod
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.5]
    conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
"#;

const NODES: &str = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata: {name: node-1}
  - apiVersion: v1
    kind: Namespace
    metadata: {name: prod}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
"#;

#[test]
fn parse_table() {
    let cases: Vec<(&str, &str, Result<usize, &str>)> = vec![
        ("service file", SVC, Ok(3)),
        ("list and other", NODES, Ok(3)),
        ("empty", "", Ok(0)),
        ("empty docs", "---\n---\n", Ok(0)),
        ("not yaml", "a: [b", Err("document 1")),
        (
            "no kind",
            "apiVersion: v1\nmetadata: {name: x}\n",
            Err("apiVersion and kind"),
        ),
        (
            "no name",
            "apiVersion: v1\nkind: Service\nmetadata: {}\n",
            Err("metadata.name"),
        ),
        (
            "bad field",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: 5}\n",
            Err("Service \"x\""),
        ),
        (
            "second doc bad",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\nkind: [\n",
            Err("document 2"),
        ),
    ];
    for (name, text, want) in cases {
        match (parse_manifests(text), want) {
            (Ok(m), Ok(n)) => assert_eq!(m.len(), n, "{name}"),
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn state_defaults_namespace_and_finds_slices() {
    let files = vec![
        parse_manifests(SVC).unwrap(),
        parse_manifests("apiVersion: v1\nkind: Service\nmetadata: {name: plain}\n").unwrap(),
        parse_manifests(NODES).unwrap(),
    ];
    let s = build_state(&files);
    assert!(s.synced);
    let keys: Vec<_> = s.services.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            ("default".to_string(), "plain".to_string()),
            ("prod".into(), "web".into())
        ]
    );
    assert_eq!(s.service_exports.len(), 1);
    assert_eq!(s.slices_of("prod", "web").count(), 1);
    assert_eq!(s.slices_of("prod", "other").count(), 0);
    assert!(s.nodes.contains_key(&(String::new(), "node-1".into())));
    // prod, and the four an API server always has.
    assert_eq!(
        s.namespace_names().into_iter().collect::<Vec<_>>(),
        [
            "default",
            "kube-node-lease",
            "kube-public",
            "kube-system",
            "prod"
        ]
    );
    assert_eq!(build_state([]).namespace_names().len(), 4);
}

#[test]
fn both_mcs_versions_are_read() {
    let text = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: web, namespace: prod}
spec:
  exportedLabels: {tier: web}
  exportedAnnotations: {team: blue}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: old, namespace: prod}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: prod}
spec:
  type: ClusterSetIP
  ports: [{name: http, protocol: TCP, port: 80}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}
status:
  clusters: [{cluster: b}]
"#;
    let s = build_state(&[parse_manifests(text).unwrap()]);
    let web = &s.service_exports[&("prod".into(), "web".into())];
    assert_eq!(web.spec.exported_labels["tier"], "web");
    assert_eq!(web.spec.exported_annotations["team"], "blue");
    assert!(
        s.service_exports[&("prod".into(), "old".into())]
            .spec
            .exported_labels
            .is_empty()
    );
    let import = &s.service_imports[&("prod".into(), "web".into())];
    assert_eq!(import.spec.type_, "ClusterSetIP");
    assert_eq!(
        import
            .spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds),
        Some(10)
    );
}

/// A ServiceImport with every field the controller writes.
fn full_import() -> ServiceImport {
    use crate::mcs::{
        ClusterStatus, McsClientIpConfig, McsServicePort, McsSessionAffinityConfig,
        ServiceImportSpec, ServiceImportStatus,
    };
    let port = |name: &str, protocol: &str| McsServicePort {
        name: Some(name.into()),
        protocol: Some(protocol.into()),
        app_protocol: None,
        port: 42,
    };
    let mut i = ServiceImport::new(
        "hello",
        ServiceImportSpec {
            type_: "ClusterSetIP".into(),
            ips: vec![],
            ports: vec![port("tcp", "TCP"), port("udp", "UDP")],
            session_affinity: Some("ClientIP".into()),
            session_affinity_config: Some(McsSessionAffinityConfig {
                client_ip: Some(McsClientIpConfig {
                    timeout_seconds: Some(10),
                }),
            }),
            ip_families: vec!["IPv4".into()],
            internal_traffic_policy: Some("Cluster".into()),
            traffic_distribution: Some("PreferClose".into()),
        },
    );
    i.metadata.namespace = Some("prod".into());
    i.metadata.labels = Some(
        [
            (
                "causeway.io/managed-by".to_owned(),
                "import-controller".to_owned(),
            ),
            ("dummy-label".to_owned(), "true".to_owned()),
        ]
        .into(),
    );
    i.metadata.annotations = Some([("dummy-annotation".to_owned(), "true".to_owned())].into());
    i.status = Some(ServiceImportStatus {
        clusters: vec![
            ClusterStatus {
                cluster: "a".into(),
            },
            ClusterStatus {
                cluster: "b".into(),
            },
        ],
        conditions: vec![],
    });
    i
}

/// Compares `text` with golden file `name` (`UPDATE_GOLDEN=1` rewrites it).
fn golden(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/source/manifest/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(text, want, "{} differs", path.display());
}

#[test]
fn an_import_renders_as_the_golden_yaml_and_parses_back() {
    let text = render_import(&full_import());
    golden("serviceimport-prod-hello.yaml", &text);
    let back = parse_manifests(&text).unwrap();
    assert_eq!(back, [Manifest::ServiceImport(Box::new(full_import()))]);
}

#[tokio::test]
async fn imports_written_to_the_directory_are_read_back_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let src = ManifestDirSource::spawn(dir.path().into(), Duration::from_millis(50), cancel);
    let writer = src.import_writer().expect("the directory takes writes");
    writer.apply(&full_import()).await.unwrap();
    let file = dir.path().join("causeway-imports/prod.hello.yaml");
    assert!(file.exists());
    // Applying the same object again leaves the file alone.
    let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
    writer.apply(&full_import()).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), stamp);

    let mut rx = src.state();
    wait_until(&mut rx, "import read", |s| {
        s.service_imports
            .contains_key(&("prod".into(), "hello".into()))
    })
    .await;
    assert!(src.problems().borrow().is_empty());
    assert_eq!(
        rx.borrow().service_imports[&("prod".into(), "hello".into())],
        full_import()
    );

    writer.delete("prod", "hello").await.unwrap();
    writer.delete("prod", "hello").await.unwrap();
    assert!(!file.exists());
    wait_until(&mut rx, "import removed", |s| s.service_imports.is_empty()).await;
    assert_eq!(rx.borrow().services.len(), 1);
}

async fn wait_until(
    rx: &mut watch::Receiver<Arc<ClusterState>>,
    what: &str,
    f: impl Fn(&ClusterState) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("state never reached: {what}"))
        .unwrap();
}

#[tokio::test]
async fn directory_source_follows_changes_and_skips_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
    std::fs::create_dir(dir.path().join("nodes")).unwrap();
    std::fs::write(dir.path().join("nodes/all.yml"), NODES).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();

    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let src = ManifestDirSource::spawn(dir.path().into(), Duration::from_millis(50), cancel);
    let mut rx = src.state();
    wait_until(&mut rx, "first read", |s| s.synced).await;
    {
        let s = rx.borrow();
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.nodes.len(), 1);
    }
    let problems = src.problems().borrow().clone();
    let broken = dir.path().join("broken.yaml");
    assert!(
        problems
            .get(&broken)
            .is_some_and(|e| e.contains("document 1")),
        "{problems:?}"
    );

    // Fixing the broken file brings its objects and clears the problem.
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Service\nmetadata: {name: fixed, namespace: prod}\n",
    )
    .unwrap();
    wait_until(&mut rx, "fixed file read", |s| s.services.len() == 2).await;
    assert!(src.problems().borrow().is_empty());

    // A good file turning bad keeps its last good objects.
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Service\nmetadata: {name: fix",
    )
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        src.problems().wait_for(|p| !p.is_empty()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rx.borrow().services.len(), 2);

    // Removing files withdraws their objects.
    std::fs::remove_file(&broken).unwrap();
    std::fs::remove_file(dir.path().join("svc.yaml")).unwrap();
    wait_until(&mut rx, "files removed", |s| {
        s.services.is_empty() && s.service_exports.is_empty()
    })
    .await;
    assert!(src.problems().borrow().is_empty());
}

/// Import prod/hello's derived Service (ClusterIP allocated) and b's slice.
fn full_derived() -> crate::mcs::Derived {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::mcs::{
        DERIVED_MANAGED_BY, MANAGED_BY_LABEL, MCS_SERVICE_NAME_LABEL, SERVICE_NAME_LABEL,
        SLICE_MANAGED_BY_LABEL, SLICE_MANAGER, SOURCE_CLUSTER_LABEL, derived_service_name,
    };
    let name = derived_service_name("prod", "hello");
    let service = Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some("prod".into()),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_owned(), DERIVED_MANAGED_BY.to_owned()),
                    (MCS_SERVICE_NAME_LABEL.to_owned(), "hello".to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("10.96.7.7".into()),
            ports: Some(vec![ServicePort {
                name: Some("tcp".into()),
                port: 42,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            session_affinity: Some("None".into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-b")),
            namespace: Some("prod".into()),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_owned(), DERIVED_MANAGED_BY.to_owned()),
                    (MCS_SERVICE_NAME_LABEL.to_owned(), "hello".to_owned()),
                    (SERVICE_NAME_LABEL.to_owned(), name.clone()),
                    (SOURCE_CLUSTER_LABEL.to_owned(), "b".to_owned()),
                    (SLICE_MANAGED_BY_LABEL.to_owned(), SLICE_MANAGER.to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["242.1.0.5".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("tcp".into()),
            port: Some(42),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    };
    crate::mcs::Derived {
        namespace: "prod".into(),
        import: "hello".into(),
        service,
        slices: [(format!("{name}-b"), slice)].into(),
    }
}

#[test]
fn a_derived_service_renders_as_the_golden_yaml_and_parses_back() {
    let d = full_derived();
    let text = render_derived(&d);
    golden("derived-prod-hello.yaml", &text);
    let back = parse_manifests(&text).unwrap();
    let slice = d.slices.values().next().unwrap().clone();
    assert_eq!(
        back,
        [
            Manifest::Service(Box::new(d.service.clone())),
            Manifest::EndpointSlice(Box::new(slice)),
        ]
    );
}

#[tokio::test]
async fn derived_services_written_to_the_directory_are_read_back_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let src = ManifestDirSource::spawn(dir.path().into(), Duration::from_millis(50), cancel);
    let writer = src.derived_writer().expect("the directory takes writes");
    let d = full_derived();
    let none = std::collections::BTreeSet::new();
    writer.apply(&d, &none).await.unwrap();
    let file = dir.path().join("causeway-derived/prod.hello.yaml");
    assert!(file.exists());
    let mut rx = src.state();
    wait_until(&mut rx, "derived read", |s| {
        s.services.len() == 1 && s.endpoint_slices.len() == 1
    })
    .await;
    let name = crate::mcs::derived_service_name("prod", "hello");
    assert_eq!(rx.borrow().slices_of("prod", &name).count(), 1);
    writer.delete("prod", "hello", &none).await.unwrap();
    writer.delete("prod", "hello", &none).await.unwrap();
    assert!(!file.exists());
    wait_until(&mut rx, "derived removed", |s| s.services.is_empty()).await;
}

#[tokio::test]
async fn an_export_status_written_to_the_directory_shows_on_its_service_export() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let src = ManifestDirSource::spawn(dir.path().into(), Duration::from_millis(50), cancel);
    let writer = ManifestExportStatusWriter::new(dir.path());
    let status = crate::mcs::ServiceExportStatus {
        conditions: vec![crate::mcs::McsCondition {
            type_: "Valid".into(),
            status: "True".into(),
            last_transition_time: Some("2026-11-23T22:00:00Z".into()),
            reason: Some("Valid".into()),
            message: Some("Service prod/web exists".into()),
        }],
    };
    writer.write("prod", "web", &status).await.unwrap();
    // A status whose ServiceExport does not exist shows nowhere.
    writer.write("prod", "gone", &status).await.unwrap();
    assert!(
        dir.path()
            .join("causeway-export-status/prod.web.yaml")
            .exists()
    );

    let mut rx = src.state();
    let key = ("prod".to_owned(), "web".to_owned());
    wait_until(&mut rx, "status read", |s| {
        s.service_exports
            .get(&key)
            .is_some_and(|e| e.status.is_some())
    })
    .await;
    let state = rx.borrow().clone();
    assert_eq!(state.service_exports[&key].status, Some(status));
    assert_eq!(state.service_exports.len(), 1, "a status is not an export");
    assert!(src.problems().borrow().is_empty());
}
