use std::time::Instant as StdInstant;

use causeway_api::FakeStore;
use causeway_api::source::{Manifest, ManifestDirSource, parse_manifests};

use super::*;

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A synced cluster state from manifests.
fn state(yaml: &str) -> ClusterState {
    let mut s = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    for m in parse_manifests(yaml).unwrap() {
        match m {
            Manifest::Service(o) => {
                let k = (
                    o.metadata.namespace.clone().unwrap(),
                    o.metadata.name.clone().unwrap(),
                );
                s.services.insert(k, *o);
            }
            Manifest::EndpointSlice(o) => {
                let k = (
                    o.metadata.namespace.clone().unwrap(),
                    o.metadata.name.clone().unwrap(),
                );
                s.endpoint_slices.insert(k, *o);
            }
            Manifest::ServiceExport(o) => {
                let k = (
                    o.metadata.namespace.clone().unwrap(),
                    o.metadata.name.clone().unwrap(),
                );
                s.service_exports.insert(k, *o);
            }
            _ => {}
        }
    }
    s
}

const EXPORT_WEB: &str = "
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: default}
";

const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
";

const WEB_READY: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.5]
    conditions: {ready: true}
  - addresses: [10.244.1.6]
    conditions: {ready: false}
ports: [{name: http, port: 8080, protocol: TCP}]
";

const WEB_NOT_READY: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.6]
    conditions: {ready: false}
";

const WEB_EXTERNAL: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {type: ExternalName, externalName: example.com}
";

const WEB_HEADLESS: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: None
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.5]
    hostname: web-0
    conditions: {ready: true}
  - addresses: [10.244.1.6]
    hostname: web-1
    conditions: {ready: false}
  - addresses: [10.244.2.7]
ports: [{name: http, port: 8080, protocol: TCP}]
";

fn join(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

fn key() -> ExportKey {
    ExportKey::new("default", "web")
}

fn http(port: u16) -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        protocol: Protocol::Tcp,
        port,
    }
}

/// A published record: (addresses, cluster IPs, endpoints as (hostname,
/// address, pod address)).
type Published = (
    Vec<&'static str>,
    Vec<&'static str>,
    Vec<(Option<&'static str>, &'static str, &'static str)>,
);

#[test]
fn plan_table() {
    let global = GlobalIps {
        services: [(key(), vec![ip("242.0.0.10")])].into(),
        endpoints: [(key(), [(ip("10.244.1.5"), ip("242.0.0.20"))].into())].into(),
        errors: Default::default(),
    };
    struct Case {
        name: &'static str,
        yaml: String,
        globalnet: Option<GlobalIps>,
        /// (Valid, Ready) reasons.
        reasons: (&'static str, &'static str),
        /// What the published record holds.
        record: Option<Published>,
    }
    let exhausted = GlobalIps {
        errors: [(
            key(),
            "global CIDR 242.0.0.0/28 has no free address; give the cluster a larger --global-cidr"
                .to_owned(),
        )]
        .into(),
        ..GlobalIps::default()
    };
    let cases = vec![
        Case {
            name: "an exhausted global CIDR is the export's reason",
            yaml: join(&[EXPORT_WEB, WEB, WEB_READY]),
            globalnet: Some(exhausted),
            reasons: ("Valid", "NoGlobalIP"),
            record: None,
        },
        Case {
            name: "export without a Service",
            yaml: join(&[EXPORT_WEB]),
            globalnet: None,
            reasons: ("NoService", "Failed"),
            record: None,
        },
        Case {
            name: "ExternalName",
            yaml: join(&[EXPORT_WEB, WEB_EXTERNAL]),
            globalnet: None,
            reasons: ("InvalidServiceType", "Failed"),
            record: None,
        },
        Case {
            name: "ClusterIP service with a ready endpoint",
            yaml: join(&[EXPORT_WEB, WEB, WEB_READY]),
            globalnet: None,
            reasons: ("Valid", "Exported"),
            record: Some((vec!["10.96.0.10"], vec!["10.96.0.10"], vec![])),
        },
        Case {
            name: "Globalnet without a global IP yet",
            yaml: join(&[EXPORT_WEB, WEB, WEB_READY]),
            globalnet: Some(GlobalIps::default()),
            reasons: ("Valid", "Pending"),
            record: None,
        },
        Case {
            name: "Globalnet with a global IP",
            yaml: join(&[EXPORT_WEB, WEB, WEB_READY]),
            globalnet: Some(global.clone()),
            reasons: ("Valid", "Exported"),
            record: Some((vec!["242.0.0.10"], vec!["10.96.0.10"], vec![])),
        },
        Case {
            name: "headless: ready endpoints only, hostname or none",
            yaml: join(&[EXPORT_WEB, WEB_HEADLESS]),
            globalnet: None,
            reasons: ("Valid", "Exported"),
            record: Some((
                vec![],
                vec![],
                vec![
                    (Some("web-0"), "10.244.1.5", "10.244.1.5"),
                    (None, "10.244.2.7", "10.244.2.7"),
                ],
            )),
        },
        Case {
            name: "headless under Globalnet: endpoints with a global IP",
            yaml: join(&[EXPORT_WEB, WEB_HEADLESS]),
            globalnet: Some(global.clone()),
            reasons: ("Valid", "Exported"),
            record: Some((
                vec![],
                vec![],
                vec![(Some("web-0"), "242.0.0.20", "10.244.1.5")],
            )),
        },
        Case {
            name: "headless under Globalnet: no global IP yet",
            yaml: join(&[EXPORT_WEB, WEB_HEADLESS]),
            globalnet: Some(GlobalIps::default()),
            reasons: ("Valid", "Pending"),
            record: None,
        },
        Case {
            name: "a Service that is not exported",
            yaml: join(&[WEB, WEB_READY]),
            globalnet: None,
            reasons: ("", ""),
            record: None,
        },
    ];
    for case in cases {
        let plan = plan_exports(&id("a"), &state(&case.yaml), [], case.globalnet.as_ref());
        let Some(status) = plan.status.get(&key()) else {
            assert_eq!(case.reasons, ("", ""), "{}: no status", case.name);
            assert!(plan.imports.is_empty(), "{}", case.name);
            continue;
        };
        assert_eq!(
            (status.valid.reason.as_str(), status.ready.reason.as_str()),
            case.reasons,
            "{}: {status:?}",
            case.name
        );
        let valid = case.reasons.0 == "Valid";
        assert_eq!(
            status.valid.status,
            if valid {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            "{}",
            case.name
        );
        match (plan.imports.get(&key()), case.record) {
            (None, None) => {
                assert_eq!(status.ready.status, ConditionStatus::False, "{}", case.name)
            }
            (Some(r), Some((addresses, cluster_ips, endpoints))) => {
                assert_eq!(status.ready.status, ConditionStatus::True, "{}", case.name);
                assert_eq!(status.conflict.reason, "NoConflicts", "{}", case.name);
                assert_eq!(r.cluster, id("a"));
                let ips = |v: Vec<&str>| v.into_iter().map(ip).collect::<Vec<_>>();
                assert_eq!(r.addresses, ips(addresses), "{}", case.name);
                assert_eq!(r.cluster_ips, ips(cluster_ips), "{}", case.name);
                let want: Vec<HeadlessEndpoint> = endpoints
                    .into_iter()
                    .map(|(h, a, l)| HeadlessEndpoint {
                        hostname: h.map(str::to_owned),
                        address: ip(a),
                        local_address: ip(l),
                    })
                    .collect();
                assert_eq!(r.endpoints, want, "{}", case.name);
                // Headless services carry the endpoints' ports.
                let port = if r.kind == ServiceImportType::Headless {
                    8080
                } else {
                    80
                };
                assert_eq!(r.ports, [http(port)], "{}", case.name);
                AnyRecord::from(r.clone()).validate().unwrap();
            }
            (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
        }
    }
}

#[test]
fn a_missing_service_says_what_to_do() {
    let plan = plan_exports(&id("a"), &state(EXPORT_WEB), [], None);
    let status = &plan.status[&key()];
    assert!(
        status.valid.message.contains("default/web does not exist"),
        "{status:?}"
    );
    let mcs = status.to_mcs();
    let types: Vec<_> = mcs
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("Valid", "False"),
            ("Ready", "False"),
            ("Conflict", "Unknown")
        ]
    );
}

fn import(cluster: &str, kind: ServiceImportType, ports: Vec<ServicePort>) -> ServiceImport {
    let headless = kind == ServiceImportType::Headless;
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new("default").unwrap(),
        name: ObjectName::new("web").unwrap(),
        kind,
        ports,
        addresses: if headless {
            vec![]
        } else {
            vec![ip("242.1.0.10")]
        },
        cluster_ips: if headless {
            vec![]
        } else {
            vec![ip("10.96.0.10")]
        },
        endpoints: vec![],
        exported_at_ms: 0,
        pods: None,
        unready: false,
        properties: Default::default(),
    }
}

fn port(name: Option<&str>, number: u16, protocol: Protocol) -> ServicePort {
    ServicePort {
        name: name.map(str::to_owned),
        protocol,
        port: number,
    }
}

/// (case, local cluster, local type, local ports, other exports, reason)
type ConflictCase = (
    &'static str,
    &'static str,
    ServiceImportType,
    Vec<ServicePort>,
    Vec<ServiceImport>,
    &'static str,
);

/// The Conflict condition of `local`'s export (created at `at`) against `others`.
fn conflict_of(
    local: &str,
    at: u64,
    kind: ServiceImportType,
    ports: &[ServicePort],
    others: &[&ServiceImport],
) -> Condition {
    let mut candidate = import(local, kind, ports.to_vec());
    candidate.exported_at_ms = at;
    conflict(&candidate, others)
}

#[test]
fn conflict_table() {
    use ServiceImportType::{ClusterSetIP, Headless};
    let tcp = Protocol::Tcp;
    let cases: Vec<ConflictCase> = vec![
        (
            "alone",
            "c",
            ClusterSetIP,
            vec![http(80)],
            vec![],
            "NoConflicts",
        ),
        (
            "agreeing",
            "c",
            ClusterSetIP,
            vec![http(80)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "NoConflicts",
        ),
        (
            "type differs, the other takes precedence",
            "c",
            Headless,
            vec![http(80)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "TypeConflict",
        ),
        (
            "type differs, this one takes precedence: raised here too",
            "a",
            Headless,
            vec![http(80)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "TypeConflict",
        ),
        (
            "same name, other number",
            "c",
            ClusterSetIP,
            vec![http(8080)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "PortConflict",
        ),
        (
            "same number, other name",
            "c",
            ClusterSetIP,
            vec![port(Some("web"), 80, tcp)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "PortConflict",
        ),
        (
            "unnamed ports with different numbers",
            "c",
            ClusterSetIP,
            vec![port(None, 8080, tcp)],
            vec![import("b", ClusterSetIP, vec![port(None, 80, tcp)])],
            "PortConflict",
        ),
        (
            "an extra port joins the union and is still a conflict",
            "c",
            ClusterSetIP,
            vec![http(80), port(Some("metrics"), 9090, tcp)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "PortConflict",
        ),
        (
            "same port over UDP under the same name",
            "c",
            ClusterSetIP,
            vec![port(Some("http"), 80, Protocol::Udp)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "PortConflict",
        ),
        (
            "both type and ports",
            "c",
            Headless,
            vec![http(81)],
            vec![import("b", ClusterSetIP, vec![http(80)])],
            "TypeConflict,PortConflict",
        ),
        (
            "a later cluster's clashing port is raised on the oldest export too",
            "b",
            ClusterSetIP,
            vec![http(80)],
            vec![import("c", ClusterSetIP, vec![http(8080)])],
            "PortConflict",
        ),
        (
            "our own record in the store is not a contender",
            "c",
            ClusterSetIP,
            vec![http(80)],
            vec![import("c", Headless, vec![http(8080)])],
            "NoConflicts",
        ),
    ];
    for (name, local, kind, ports, others, reason) in cases {
        let others: Vec<&ServiceImport> = others.iter().collect();
        let c = conflict_of(local, 0, kind, &ports, &others);
        assert_eq!(c.reason, reason, "{name}: {c:?}");
        let want = if reason == "NoConflicts" {
            ConditionStatus::False
        } else {
            ConditionStatus::True
        };
        assert_eq!(c.status, want, "{name}");
        if c.status == ConditionStatus::True {
            assert!(c.message.contains("cluster b"), "{name}: {}", c.message);
        }
    }
}

#[test]
fn the_oldest_export_wins_whatever_the_cluster_ids() {
    use ServiceImportType::{ClusterSetIP, Headless};
    // z exported first (older), a later: both carry the conflict, z's fields stand.
    let mut older = import("z", Headless, vec![http(80)]);
    older.exported_at_ms = 1_000;
    let c = conflict_of("a", 2_000, ClusterSetIP, &[http(80)], &[&older]);
    assert_eq!(c.reason, "TypeConflict", "{c:?}");
    assert!(
        c.message.contains("cluster z's export is the oldest"),
        "{}",
        c.message
    );
    // a exported first: its fields stand.
    let c = conflict_of("a", 500, ClusterSetIP, &[http(80)], &[&older]);
    assert_eq!(c.reason, "TypeConflict", "{c:?}");
    assert!(
        c.message.contains("this export is the oldest"),
        "{}",
        c.message
    );
    // An export of unknown age ranks after every dated one.
    let mut undated = import("a", Headless, vec![http(80)]);
    undated.exported_at_ms = 0;
    let c = conflict_of("z", 3_000, ClusterSetIP, &[http(80)], &[&undated]);
    assert!(
        c.message.contains("this export is the oldest"),
        "{}",
        c.message
    );
}

#[test]
fn a_conflicting_export_is_still_published() {
    let others = [import("a", ServiceImportType::Headless, vec![http(80)])];
    let plan = plan_exports(
        &id("b"),
        &state(&join(&[EXPORT_WEB, WEB, WEB_READY])),
        &others,
        None,
    );
    assert_eq!(plan.status[&key()].conflict.reason, "TypeConflict");
    assert_eq!(plan.status[&key()].ready.reason, "Exported");
    assert!(plan.imports.contains_key(&key()));
}

/// Writes `text` to `dir/name` whole (the source skips dot files).
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let start = StdInstant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn published(store: &FakeStore) -> Vec<ServiceImport> {
    store
        .list(Some(Kind::ServiceImport))
        .await
        .unwrap()
        .records
        .into_iter()
        .filter_map(|r| ServiceImport::try_from(r).ok())
        .collect()
}

#[tokio::test]
async fn the_agent_publishes_and_withdraws_from_a_manifest_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let source = ManifestDirSource::spawn(
        dir.path().to_owned(),
        Duration::from_millis(20),
        cancel.clone(),
    );
    let store = FakeStore::new();
    // Another cluster's export of another service stays untouched.
    let theirs = ServiceImport {
        name: ObjectName::new("db").unwrap(),
        ..import("b", ServiceImportType::ClusterSetIP, vec![http(5432)])
    };
    store.put(&theirs.clone().into()).await.unwrap();
    let status_file = dir.path().join("status").join("exports.json");
    std::fs::create_dir(status_file.parent().unwrap()).unwrap();
    let writer = kube_status::FakeStatusWriter::default();
    let agent = ExportAgent::new(
        &source,
        Arc::new(store.clone()),
        id("a"),
        ExportAgentOptions {
            status_file: Some(status_file.clone()),
            status_writer: Some(Arc::new(writer.clone())),
            ..ExportAgentOptions::default()
        },
    );
    let mut status = agent.status();
    let task = tokio::spawn(agent.run(cancel.clone()));

    write(dir.path(), "web.yaml", &join(&[WEB, WEB_READY]));
    write(dir.path(), "export.yaml", EXPORT_WEB);
    let record = eventually("web published", async || {
        published(&store)
            .await
            .into_iter()
            .find(|r| r.cluster == id("a"))
    })
    .await;
    assert_eq!(record.kind, ServiceImportType::ClusterSetIP);
    assert_eq!(record.addresses, [ip("10.96.0.10")]);
    assert_eq!(record.ports, [http(80)]);
    let file = eventually("status file", async || {
        read_status_file(&status_file).ok().filter(|s| {
            s.get("default/web")
                .is_some_and(|s| s.ready.reason == "Exported")
        })
    })
    .await;
    assert_eq!(file["default/web"].valid.status, ConditionStatus::True);
    status.changed().await.unwrap();
    assert!(status.borrow().contains_key(&key()));
    // The ServiceExport's own status says so too.
    let written = writer.written()[&key()].clone();
    let ready = written
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", Some("Exported"))
    );

    // The Service goes: the record is withdrawn and the export says why.
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    eventually("web withdrawn, Service gone", async || {
        let gone = published(&store).await.iter().all(|r| r.cluster != id("a"));
        let said = status
            .borrow()
            .get(&key())
            .is_some_and(|s| s.valid.reason == "NoService");
        (gone && said).then_some(())
    })
    .await;

    // It comes back, then the export goes: withdrawn again.
    write(dir.path(), "web.yaml", &join(&[WEB, WEB_READY]));
    eventually("web published again", async || {
        published(&store)
            .await
            .iter()
            .find(|r| r.cluster == id("a"))
            .map(|_| ())
    })
    .await;
    std::fs::remove_file(dir.path().join("export.yaml")).unwrap();
    eventually("web unexported", async || {
        let left = published(&store).await;
        left.iter().all(|r| r.cluster != id("a")).then_some(left)
    })
    .await;
    assert_eq!(
        published(&store).await,
        [theirs],
        "b's record is not ours to touch"
    );
    assert!(status.borrow().is_empty());

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("agent stops on cancel")
        .unwrap();
}

#[tokio::test]
async fn the_agent_waits_for_globalnet_and_retries_an_unavailable_store() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    write(dir.path(), "web.yaml", &join(&[EXPORT_WEB, WEB, WEB_READY]));
    let source = ManifestDirSource::spawn(
        dir.path().to_owned(),
        Duration::from_millis(20),
        cancel.clone(),
    );
    let store = FakeStore::new();
    let (global_tx, global_rx) = watch::channel(Arc::new(GlobalIps::default()));
    let agent = ExportAgent::new(
        &source,
        Arc::new(store.clone()),
        id("a"),
        ExportAgentOptions {
            globalnet: Some(global_rx),
            retry_interval: Duration::from_millis(50),
            ..ExportAgentOptions::default()
        },
    );
    let status = agent.status();
    let task = tokio::spawn(agent.run(cancel.clone()));
    eventually("pending on Globalnet", async || {
        status
            .borrow()
            .get(&key())
            .is_some_and(|s| s.ready.reason == "Pending")
            .then_some(())
    })
    .await;
    assert!(published(&store).await.is_empty());

    store.set_unavailable(true);
    global_tx.send_replace(Arc::new(GlobalIps {
        services: [(key(), vec![ip("242.0.0.10")])].into(),
        ..GlobalIps::default()
    }));
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.set_unavailable(false);
    let record = eventually("published with the global IP", async || {
        published(&store).await.into_iter().next()
    })
    .await;
    assert_eq!(record.addresses, [ip("242.0.0.10")]);
    assert_eq!(record.cluster_ips, [ip("10.96.0.10")]);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("agent stops on cancel")
        .unwrap();
}

#[test]
fn the_status_table_explains_each_export() {
    let yaml = join(&[EXPORT_WEB, WEB, WEB_NOT_READY]);
    let mut st = state(&yaml);
    let mut db = st.service_exports.values().next().unwrap().clone();
    db.metadata.name = Some("db".into());
    st.service_exports
        .insert(("default".into(), "db".into()), db);
    let plan = plan_exports(&id("a"), &st, [], None);
    let table = render_status_table(plan.status.iter().map(|(k, s)| (k.to_string(), s)));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("EXPORT"), "{table}");
    assert!(
        lines[1].starts_with("default/db")
            && lines[1].contains("False (NoService)")
            && lines[1].contains("does not exist"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("default/web")
            && lines[2].contains("False (NoReadyEndpoints)")
            && lines[2].contains("no ready endpoint"),
        "{table}"
    );
}

const HELLO_EXPORT: &str = "
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: web, namespace: default, labels: {own: export-label}}
spec:
  exportedLabels: {dummy-label: 'true'}
  exportedAnnotations: {dummy-annotation: 'true'}
";

const HELLO: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {service-label: 'true'}, annotations: {service-annotation: 'true'}}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}
  internalTrafficPolicy: Local
  trafficDistribution: PreferClose
  ports:
    - {name: tcp, port: 42, protocol: TCP}
    - {name: udp, port: 42, protocol: UDP}
";

#[test]
fn the_record_carries_what_the_import_needs_and_only_exported_labels() {
    let plan = plan_exports(
        &id("a"),
        &state(&join(&[HELLO_EXPORT, HELLO, WEB_READY])),
        [],
        None,
    );
    let record = &plan.imports[&key()];
    let p = &record.properties;
    assert_eq!(p.session_affinity, SessionAffinity::ClientIp);
    assert_eq!(
        p.session_affinity_config,
        Some(SessionAffinityConfig {
            client_ip: Some(ClientIpConfig {
                timeout_seconds: Some(10)
            })
        })
    );
    assert_eq!(p.internal_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(p.traffic_distribution.as_deref(), Some("PreferClose"));
    assert_eq!(p.ip_families, [IpFamily::IPv4]);
    assert_eq!(
        p.exported_labels,
        [("dummy-label".to_owned(), "true".to_owned())].into()
    );
    assert_eq!(
        p.exported_annotations,
        [("dummy-annotation".to_owned(), "true".to_owned())].into()
    );
    assert_eq!(
        record.ports,
        [
            port(Some("tcp"), 42, Protocol::Tcp),
            port(Some("udp"), 42, Protocol::Udp)
        ]
    );
    // Without ipFamilies (a bare manifest), the ClusterIPs give the family.
    let plan = plan_exports(
        &id("a"),
        &state(&join(&[EXPORT_WEB, WEB, WEB_READY])),
        [],
        None,
    );
    assert_eq!(
        plan.imports[&key()].properties.ip_families,
        [IpFamily::IPv4]
    );
}

#[test]
fn valid_reasons_follow_the_api_and_an_early_export_starts_with_its_service() {
    let a = id("a");
    // Exported before the Service exists: NoService, nothing published.
    let early = plan_exports(&a, &state(EXPORT_WEB), [], None);
    assert_eq!(early.status[&key()].valid.reason, "NoService");
    assert_eq!(early.status[&key()].valid.status, ConditionStatus::False);
    assert!(early.imports.is_empty());
    // ExternalName: InvalidServiceType, and never an import.
    let external = plan_exports(&a, &state(&join(&[EXPORT_WEB, WEB_EXTERNAL])), [], None);
    assert_eq!(external.status[&key()].valid.reason, "InvalidServiceType");
    assert!(external.imports.is_empty());
    // The Service appears: the same export is valid and published.
    let later = plan_exports(&a, &state(&join(&[EXPORT_WEB, WEB, WEB_READY])), [], None);
    let s = &later.status[&key()];
    assert_eq!(
        (
            s.valid.reason.as_str(),
            s.ready.reason.as_str(),
            s.conflict.reason.as_str()
        ),
        ("Valid", "Exported", "NoConflicts")
    );
    assert!(later.imports.contains_key(&key()));
    let types: Vec<String> = s.to_mcs().into_iter().map(|c| c.type_).collect();
    assert_eq!(types, ["Valid", "Ready", "Conflict"]);
}

#[test]
fn every_conflict_kind_reaches_the_condition_of_both_exports() {
    let older = {
        let mut r = plan_exports(
            &id("a"),
            &state(&join(&[EXPORT_WEB, WEB, WEB_READY])),
            [],
            None,
        )
        .imports[&key()]
            .clone();
        r.exported_at_ms = 1_000;
        r
    };
    // b's export (newer, see HELLO) differs in ports, affinity, policies,
    // labels and annotations.
    let mut b_state = state(&join(&[HELLO_EXPORT, HELLO, WEB_READY]));
    b_state
        .service_exports
        .get_mut(&("default".into(), "web".into()))
        .unwrap()
        .metadata
        .creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_millisecond(2_000).unwrap(),
    ));
    let plan = plan_exports(&id("b"), &b_state, [&older], None);
    let c = &plan.status[&key()].conflict;
    assert_eq!(c.status, ConditionStatus::True);
    assert_eq!(
        c.reason,
        "PortConflict,SessionAffinityConflict,LabelsConflict,AnnotationsConflict,InternalTrafficPolicyConflict,TrafficDistributionConflict",
        "{c:?}"
    );
    assert!(
        c.message.contains("cluster a's export is the oldest"),
        "{}",
        c.message
    );
    // a sees the same conflict from b's record.
    let newer = plan.imports[&key()].clone();
    let plan_a = plan_exports(
        &id("a"),
        &state(&join(&[EXPORT_WEB, WEB, WEB_READY])),
        [&newer],
        None,
    );
    assert_eq!(plan_a.status[&key()].conflict.reason, c.reason);
}

#[test]
fn without_globalnet_a_clusterset_ip_record_lists_its_ready_pods() {
    let yaml = format!("{EXPORT_WEB}---{WEB}---{WEB_READY}");
    let plan = plan_exports(&id("a"), &state(&yaml), [], None);
    let pods = plan.imports[&key()].pods.clone().expect("pods listed");
    assert_eq!(pods.addresses, [ip("10.244.1.5")], "ready pods only");
    assert_eq!(
        pods.ports,
        [causeway_api::records::TargetPort {
            service: ServicePort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 80,
            },
            target: 8080,
        }]
    );
}

#[test]
fn a_clusterset_ip_export_without_a_ready_endpoint_stays_published_as_unready() {
    for (name, yaml) in [
        ("unready pods", join(&[EXPORT_WEB, WEB, WEB_NOT_READY])),
        ("no slices", join(&[EXPORT_WEB, WEB])),
    ] {
        let plan = plan_exports(&id("a"), &state(&yaml), [], None);
        let status = &plan.status[&key()];
        assert_eq!(status.ready.status, ConditionStatus::False, "{name}");
        assert_eq!(status.ready.reason, "NoReadyEndpoints", "{name}");
        let record = plan.imports.get(&key()).expect("published while exported");
        assert!(record.unready, "{name}");
        assert_eq!(record.addresses, [ip("10.96.0.10")], "{name}");
    }
    let ready = plan_exports(
        &id("a"),
        &state(&join(&[EXPORT_WEB, WEB, WEB_READY])),
        [],
        None,
    );
    assert!(!ready.imports[&key()].unready);
}
