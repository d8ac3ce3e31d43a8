use causeway_api::FakeStore;
use causeway_api::mcs::{FakeImportWriter, ImportWrite};
use causeway_api::records::{
    AnyRecord, ClientIpConfig, IpFamily, ObjectName, SessionAffinityConfig,
};
use causeway_api::source::{ClusterSource, FakeClusterSource};
use k8s_openapi::api::core::v1::Namespace;

use super::*;

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn port(name: Option<&str>, number: u16, protocol: Protocol) -> ServicePort {
    ServicePort {
        name: name.map(str::to_owned),
        protocol,
        port: number,
    }
}

fn tcp(name: &str, number: u16) -> ServicePort {
    port(Some(name), number, Protocol::Tcp)
}

/// `cluster`'s ClusterSetIP export of default/hello, created at `at` ms.
fn export(cluster: &str, at: u64) -> ServiceImport {
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new("default").unwrap(),
        name: ObjectName::new("hello").unwrap(),
        kind: ServiceImportType::ClusterSetIP,
        ports: vec![tcp("tcp", 42), port(Some("udp"), 42, Protocol::Udp)],
        addresses: vec!["242.1.0.10".parse().unwrap()],
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        endpoints: vec![],
        exported_at_ms: at,
        pods: None,
        unready: false,
        properties: Box::new(ExportProperties {
            session_affinity: SessionAffinity::ClientIp,
            session_affinity_config: Some(SessionAffinityConfig {
                client_ip: Some(ClientIpConfig {
                    timeout_seconds: Some(10),
                }),
            }),
            ip_families: vec![IpFamily::IPv4],
            ..ExportProperties::default()
        }),
    }
}

type Change = fn(&mut ServiceImport);

#[test]
fn every_conflict_kind_against_the_oldest_export() {
    let cases: Vec<(&str, Change, &str)> = vec![
        ("identical", |_| {}, ""),
        (
            "headless",
            |r| {
                r.kind = ServiceImportType::Headless;
                r.addresses.clear();
                r.cluster_ips.clear();
            },
            "TypeConflict",
        ),
        (
            "same name, other number",
            |r| r.ports[0].port = 43,
            "PortConflict",
        ),
        (
            "same number, other name",
            |r| r.ports[0].name = Some("other".into()),
            "PortConflict",
        ),
        (
            "no affinity",
            |r| {
                r.properties.session_affinity = SessionAffinity::None;
                r.properties.session_affinity_config = None;
            },
            "SessionAffinityConflict",
        ),
        (
            "another timeout",
            |r| {
                r.properties.session_affinity_config = Some(SessionAffinityConfig {
                    client_ip: Some(ClientIpConfig {
                        timeout_seconds: Some(20),
                    }),
                })
            },
            "SessionAffinityConfigConflict",
        ),
        (
            "an unset timeout is Kubernetes' 3 hours",
            |r| r.properties.session_affinity_config = None,
            "SessionAffinityConfigConflict",
        ),
        (
            "labels",
            |r| {
                r.properties
                    .exported_labels
                    .insert("dummy-label2".into(), "true".into());
            },
            "LabelsConflict",
        ),
        (
            "annotations",
            |r| {
                r.properties
                    .exported_annotations
                    .insert("dummy-annotation2".into(), "true".into());
            },
            "AnnotationsConflict",
        ),
        (
            "local traffic policy",
            |r| r.properties.internal_traffic_policy = Some("Local".into()),
            "InternalTrafficPolicyConflict",
        ),
        (
            "Cluster is the default policy",
            |r| r.properties.internal_traffic_policy = Some("Cluster".into()),
            "",
        ),
        (
            "traffic distribution",
            |r| r.properties.traffic_distribution = Some("PreferClose".into()),
            "TrafficDistributionConflict",
        ),
        (
            "IPv6",
            |r| r.properties.ip_families = vec![IpFamily::IPv6],
            "IPFamilyConflict",
        ),
        (
            "the same family",
            |r| r.properties.ip_families = vec![IpFamily::IPv4],
            "",
        ),
        (
            "unknown families are no conflict",
            |r| r.properties.ip_families.clear(),
            "",
        ),
        (
            "several at once, in the API's order",
            |r| {
                r.ports[0].port = 43;
                r.kind = ServiceImportType::Headless;
                r.addresses.clear();
                r.cluster_ips.clear();
                r.properties.exported_labels.insert("x".into(), "y".into());
            },
            "TypeConflict,PortConflict,LabelsConflict",
        ),
    ];
    for (name, change, want) in cases {
        let oldest = export("b", 1_000);
        let mut newer = export("a", 2_000);
        change(&mut newer);
        let merged = merge([&newer, &oldest]).unwrap();
        assert_eq!(merged.winner, id("b"), "{name}");
        assert_eq!(merged.conflict_reason().unwrap_or_default(), want, "{name}");
        // The winner's fields stand, whatever the newer export says.
        assert_eq!(merged.kind, ServiceImportType::ClusterSetIP, "{name}");
        assert_eq!(merged.properties, *oldest.properties, "{name}");
        assert_eq!(merged.clusters, [id("a"), id("b")].into(), "{name}");
        if !want.is_empty() {
            for cluster in ["a", "b"] {
                let message = merged.conflict_message(&id(cluster));
                assert!(message.contains("cluster a"), "{name}: {message}");
            }
        }
    }
}

#[test]
fn port_rules() {
    // (case, oldest's ports, newer's ports, merged ports, conflict)
    type Case = (
        &'static str,
        Vec<ServicePort>,
        Vec<ServicePort>,
        Vec<ServicePort>,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "different names give the union, and still a conflict",
            vec![tcp("tcp", 42)],
            vec![tcp("tcp", 42), port(Some("stcp"), 142, Protocol::Sctp)],
            vec![tcp("tcp", 42), port(Some("stcp"), 142, Protocol::Sctp)],
            true,
        ),
        (
            "the same ports agree",
            vec![tcp("tcp", 42), tcp("metrics", 9090)],
            vec![tcp("metrics", 9090), tcp("tcp", 42)],
            vec![tcp("tcp", 42), tcp("metrics", 9090)],
            false,
        ),
        (
            "the same name with another number keeps the oldest's",
            vec![tcp("tcp", 42)],
            vec![tcp("tcp", 43)],
            vec![tcp("tcp", 42)],
            true,
        ),
        (
            "another name for the same port is left out",
            vec![tcp("tcp", 42)],
            vec![tcp("web", 42)],
            vec![tcp("tcp", 42)],
            true,
        ),
        (
            "unnamed ports clash on numbers",
            vec![port(None, 80, Protocol::Tcp)],
            vec![port(None, 81, Protocol::Tcp)],
            vec![port(None, 80, Protocol::Tcp)],
            true,
        ),
        (
            "a clash leaves the newer export's other ports in",
            vec![tcp("tcp", 42)],
            vec![tcp("tcp", 43), tcp("metrics", 9090)],
            vec![tcp("tcp", 42), tcp("metrics", 9090)],
            true,
        ),
    ];
    for (name, old_ports, new_ports, want, conflict) in cases {
        let mut oldest = export("z", 1_000);
        oldest.ports = old_ports;
        let mut newer = export("a", 2_000);
        newer.ports = new_ports;
        let merged = merge([&oldest, &newer]).unwrap();
        assert_eq!(merged.ports, want, "{name}");
        assert_eq!(
            merged.conflicts.contains_key(&ConflictKind::Port),
            conflict,
            "{name}"
        );
    }
}

#[test]
fn the_oldest_wins_then_the_lowest_cluster_id_and_undated_exports_rank_last() {
    let merged = merge([&export("b", 5), &export("c", 5)]).unwrap();
    assert_eq!(merged.winner, id("b"));
    let merged = merge([&export("a", 0), &export("c", 5)]).unwrap();
    assert_eq!(merged.winner, id("c"));
    assert!(merge(std::iter::empty::<&ServiceImport>()).is_none());
}

#[test]
fn the_mcs_import_has_the_winners_fields_and_every_exporter() {
    let mut oldest = export("b", 1_000);
    oldest
        .properties
        .exported_labels
        .insert("dummy-label".into(), "true".into());
    oldest
        .properties
        .exported_annotations
        .insert("dummy-annotation".into(), "true".into());
    let mut newer = export("a", 2_000);
    newer
        .properties
        .exported_labels
        .insert("dummy-label2".into(), "true".into());
    let import = merge([&oldest, &newer]).unwrap().to_mcs();
    assert_eq!(import.metadata.name.as_deref(), Some("hello"));
    assert_eq!(import.metadata.namespace.as_deref(), Some("default"));
    let labels = import.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("dummy-label").map(String::as_str), Some("true"));
    assert!(!labels.contains_key("dummy-label2"));
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(
        import.metadata.annotations.unwrap()["dummy-annotation"],
        "true"
    );
    assert_eq!(import.spec.type_, "ClusterSetIP");
    assert!(import.spec.ips.is_empty(), "allocated later");
    assert_eq!(import.spec.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(
        import
            .spec
            .session_affinity_config
            .unwrap()
            .client_ip
            .unwrap()
            .timeout_seconds,
        Some(10)
    );
    assert_eq!(import.spec.ip_families, ["IPv4"]);
    let ports: Vec<(Option<String>, Option<String>, i32)> = import
        .spec
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.protocol.clone(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("tcp".into()), Some("TCP".into()), 42),
            (Some("udp".into()), Some("UDP".into()), 42)
        ]
    );
    let clusters: Vec<String> = import
        .status
        .unwrap()
        .clusters
        .into_iter()
        .map(|c| c.cluster)
        .collect();
    assert_eq!(clusters, ["a", "b"]);
}

fn namespaces(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn imports_exist_where_the_namespace_does() {
    let mut prod = export("b", 1);
    prod.namespace = ObjectName::new("prod").unwrap();
    let records = [export("a", 2), export("b", 1), prod];
    let plan = plan_imports(&records, &namespaces(&["default", "kube-system"]));
    assert_eq!(
        plan.keys().cloned().collect::<Vec<_>>(),
        [("default".to_string(), "hello".to_string())]
    );
    let plan = plan_imports(&records, &namespaces(&["default", "prod"]));
    assert_eq!(plan.len(), 2);
    assert!(plan_imports(&records, &namespaces(&[])).is_empty());
}

#[test]
fn the_diff_writes_what_differs_and_deletes_only_managed_imports() {
    let key = ("default".to_string(), "hello".to_string());
    let desired = plan_imports(&[export("b", 1)], &namespaces(&["default"]));
    // Nothing there: create.
    let changes = diff_imports(&desired, &BTreeMap::new());
    assert_eq!(changes.apply.keys().collect::<Vec<_>>(), [&key]);
    // Shown as desired, with the API server's bookkeeping: nothing to do.
    let mut observed = desired.clone();
    let o = observed.get_mut(&key).unwrap();
    o.metadata.resource_version = Some("7".into());
    o.metadata.annotations = Some(
        [(
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{}".to_owned(),
        )]
        .into(),
    );
    assert!(diff_imports(&desired, &observed).is_empty());
    // A second exporter: the status changes, so the import is written.
    let two = plan_imports(&[export("b", 1), export("a", 2)], &namespaces(&["default"]));
    assert_eq!(diff_imports(&two, &observed).apply.len(), 1);
    // Unexported: deleted; an import someone else manages is left alone.
    let mut foreign = desired[&key].clone();
    foreign.metadata.name = Some("theirs".into());
    foreign.metadata.labels = None;
    observed.insert(("default".into(), "theirs".into()), foreign);
    let changes = diff_imports(&BTreeMap::new(), &observed);
    assert_eq!(changes.delete, [key].into());
    assert!(changes.apply.is_empty());
}

async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !probe() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Namespace::default()
    }
}

#[tokio::test]
async fn the_controller_follows_records_and_namespaces() {
    let store = Arc::new(FakeStore::new());
    let writer = FakeImportWriter::default();
    let source = FakeClusterSource::new().with_import_writer(Arc::new(writer.clone()));
    source.update(|s| {
        s.synced = true;
        s.namespaces
            .insert((String::new(), "default".into()), namespace("default"));
    });
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let options = ImportControllerOptions {
        resync_interval: Duration::from_millis(200),
        retry_interval: Duration::from_millis(50),
        settle: Duration::from_millis(100),
        derived: false,
    };
    let controller = ImportController::new(
        source.state(),
        store.clone(),
        source.import_writer().unwrap(),
        options,
    );
    tokio::spawn(controller.run(cancel.clone()));
    let key = ("default".to_string(), "hello".to_string());

    // b exports: the import appears with b as its only cluster.
    store.put(&AnyRecord::from(export("b", 1))).await.unwrap();
    eventually("import written", || writer.objects().contains_key(&key)).await;
    let clusters = |w: &FakeImportWriter| -> Vec<String> {
        w.objects()[&key]
            .status
            .clone()
            .unwrap()
            .clusters
            .into_iter()
            .map(|c| c.cluster)
            .collect()
    };
    assert_eq!(clusters(&writer), ["b"]);

    // a exports too; b's prod export waits for its namespace.
    let mut prod = export("b", 1);
    prod.namespace = ObjectName::new("prod").unwrap();
    store.put(&AnyRecord::from(export("a", 2))).await.unwrap();
    store.put(&AnyRecord::from(prod)).await.unwrap();
    eventually("a listed", || clusters(&writer) == ["a", "b"]).await;
    assert!(
        !writer
            .objects()
            .contains_key(&("prod".into(), "hello".into()))
    );
    source.update(|s| {
        s.namespaces
            .insert((String::new(), "prod".into()), namespace("prod"));
    });
    eventually("prod import", || {
        writer
            .objects()
            .contains_key(&("prod".into(), "hello".into()))
    })
    .await;

    // A failing writer is retried.
    writer.fail(true);
    let before = writer.log().len();
    store
        .delete(&AnyRecord::from(export("a", 2)).key())
        .await
        .unwrap();
    eventually("retried", || writer.log().len() >= before + 2).await;
    writer.fail(false);
    eventually("a gone", || clusters(&writer) == ["b"]).await;

    // Every export gone: deleted (the fake source does not show writes, so
    // show it the import to delete).
    let shown = writer.objects();
    source.update(|s| s.service_imports = shown);
    for cluster in ["b"] {
        store
            .delete(&AnyRecord::from(export(cluster, 1)).key())
            .await
            .unwrap();
    }
    eventually("deleted", || !writer.objects().contains_key(&key)).await;
    assert!(
        writer
            .log()
            .contains(&ImportWrite::Delete("default".into(), "hello".into()))
    );
}

/// Counts the calls that reach a real writer.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ImportWriter>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl ImportWriter for Counting {
    async fn apply(&self, import: &mcs::ServiceImport) -> Result<(), mcs::ImportWriteError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.apply(import).await
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), mcs::ImportWriteError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.delete(namespace, name).await
    }
}

#[tokio::test]
async fn on_a_manifest_directory_the_controller_settles_and_writes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let source = causeway_api::source::ManifestDirSource::spawn(
        dir.path().into(),
        Duration::from_millis(20),
        cancel.clone(),
    );
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = Counting {
        inner: source.import_writer().unwrap(),
        calls: calls.clone(),
    };
    let store = Arc::new(FakeStore::new());
    store.put(&AnyRecord::from(export("b", 1))).await.unwrap();
    let options = ImportControllerOptions {
        resync_interval: Duration::from_millis(50),
        retry_interval: Duration::from_millis(20),
        settle: Duration::from_millis(100),
        derived: false,
    };
    tokio::spawn(
        ImportController::new(source.state(), store.clone(), Arc::new(writer), options)
            .run(cancel.clone()),
    );
    let file = dir.path().join("causeway-imports/default.hello.yaml");
    eventually("file written", || file.exists()).await;
    let mut state = source.state();
    tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| !s.service_imports.is_empty()),
    )
    .await
    .unwrap()
    .unwrap();
    // The source shows what was written: many resyncs later, no more calls.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = calls.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), settled);
    assert_eq!(settled, 1, "one write");

    store
        .delete(&AnyRecord::from(export("b", 1)).key())
        .await
        .unwrap();
    eventually("file removed", || !file.exists()).await;
}
