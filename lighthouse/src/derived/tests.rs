use causeway_api::FakeStore;
use causeway_api::mcs::{DerivedWrite, FakeDerivedWriter};
use causeway_api::records::{
    AnyRecord, ExportProperties, HeadlessEndpoint, ObjectName, ServicePort,
};
use causeway_api::source::{ClusterSource, FakeClusterSource};
use k8s_openapi::api::core::v1::Namespace;

use super::*;

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn tcp(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        protocol: Protocol::Tcp,
        port: number,
    }
}

fn udp(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        protocol: Protocol::Udp,
        port: number,
    }
}

/// `cluster`'s ClusterSetIP export of default/hello (tcp 42, udp 42),
/// reachable at `address`, created at `at` ms.
fn export(cluster: &str, address: &str, at: u64) -> ServiceImport {
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new("default").unwrap(),
        name: ObjectName::new("hello").unwrap(),
        kind: ServiceImportType::ClusterSetIP,
        ports: vec![tcp("tcp", 42), udp("udp", 42)],
        addresses: vec![address.parse().unwrap()],
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        endpoints: vec![],
        exported_at_ms: at,
        pods: None,
        unready: false,
        properties: Box::new(ExportProperties::default()),
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// A synced state with namespace `default` and the local Service
/// default/hello, whose slice lists `ready` and `unready` pods on target
/// ports tcp 8042 and udp 8042.
fn state(ready: &[&str], unready: &[&str]) -> ClusterState {
    let mut s = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    s.namespaces
        .insert((String::new(), "default".into()), namespace("default"));
    let endpoint = |ip: &&str, ready: bool| Endpoint {
        addresses: vec![(*ip).to_owned()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..EndpointConditions::default()
        }),
        ..Endpoint::default()
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("hello-abc".into()),
            namespace: Some("default".into()),
            labels: Some([(SERVICE_NAME_LABEL.to_owned(), "hello".to_owned())].into()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: ready
            .iter()
            .map(|ip| endpoint(ip, true))
            .chain(unready.iter().map(|ip| endpoint(ip, false)))
            .collect(),
        ports: Some(vec![
            EndpointPort {
                name: Some("tcp".into()),
                port: Some(8042),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            },
            EndpointPort {
                name: Some("udp".into()),
                port: Some(8042),
                protocol: Some("UDP".into()),
                ..EndpointPort::default()
            },
        ]),
    };
    s.endpoint_slices
        .insert(("default".into(), "hello-abc".into()), slice);
    s
}

/// Each slice of the plan for default/hello: name suffix after the derived
/// name -> (addresses, ports as `name/number/protocol`).
fn summary(plan: &BTreeMap<ObjectKey, Derived>) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let derived = derived_service_name("default", "hello");
    plan.get(&("default".to_owned(), "hello".to_owned()))
        .map(|d| {
            d.slices
                .iter()
                .map(|(name, s)| {
                    (
                        name.strip_prefix(&format!("{derived}-"))
                            .unwrap_or(name)
                            .to_owned(),
                        (
                            s.endpoints.iter().map(|e| e.addresses.join(",")).collect(),
                            s.ports
                                .iter()
                                .flatten()
                                .map(|p| {
                                    format!(
                                        "{}/{}/{}",
                                        p.name.clone().unwrap_or_default(),
                                        p.port.unwrap_or_default(),
                                        p.protocol.clone().unwrap_or_default()
                                    )
                                })
                                .collect(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

type Case = (
    &'static str,
    Vec<ServiceImport>,
    &'static [&'static str],
    ClusterState,
    Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)>,
);

#[test]
fn slices_list_what_this_cluster_reaches_of_each_source() {
    let both = vec!["tcp/42/TCP", "udp/42/UDP"];
    let mut strict = export("c", "242.2.0.7", 3);
    strict.ports = vec![tcp("tcp", 4242), udp("udp", 42)];
    let mut only_tcp = export("c", "242.2.0.7", 3);
    only_tcp.ports = vec![tcp("tcp", 42)];
    let mut v6 = export("b", "242.1.0.5", 2);
    v6.addresses.push("fd00::5".parse().unwrap());
    let mut headless_b = export("b", "242.1.0.5", 1);
    headless_b.kind = ServiceImportType::Headless;
    headless_b.addresses.clear();
    headless_b.endpoints = vec![HeadlessEndpoint {
        hostname: Some("web-0".into()),
        address: "242.1.0.9".parse().unwrap(),
        local_address: "10.244.1.9".parse().unwrap(),
    }];
    let mut pods_b = export("b", "10.96.0.10", 1);
    pods_b.pods = Some(Box::new(causeway_api::records::ReadyPods {
        addresses: vec!["10.245.1.5".parse().unwrap(), "10.245.1.6".parse().unwrap()],
        ports: vec![causeway_api::records::TargetPort {
            service: tcp("tcp", 42),
            target: 8042,
        }],
    }));
    let mut unready_c = export("c", "242.2.0.7", 2);
    unready_c.unready = true;
    let cases: Vec<Case> = vec![
        (
            "a remote export without a ready endpoint is left out",
            vec![export("b", "242.1.0.5", 1), unready_c],
            &["b", "c"],
            state(&[], &[]),
            vec![("b", vec!["242.1.0.5"], both.clone())],
        ),
        (
            "a remote export is its global ingress IP on the import's ports",
            vec![export("b", "242.1.0.5", 1)],
            &["b"],
            state(&[], &[]),
            vec![("b", vec!["242.1.0.5"], both.clone())],
        ),
        (
            "a peer not connected is left out",
            vec![export("b", "242.1.0.5", 1), export("c", "242.2.0.7", 2)],
            &["c"],
            state(&[], &[]),
            vec![("c", vec!["242.2.0.7"], both.clone())],
        ),
        (
            "the local export is its ready pods on their target ports",
            vec![export("a", "242.0.0.3", 1), export("b", "242.1.0.5", 2)],
            &["b"],
            state(&["10.244.0.5", "10.244.0.6"], &["10.244.0.7"]),
            vec![
                (
                    "a",
                    vec!["10.244.0.5", "10.244.0.6"],
                    vec!["tcp/8042/TCP", "udp/8042/UDP"],
                ),
                ("b", vec!["242.1.0.5"], both.clone()),
            ],
        ),
        (
            "the local export without a ready pod is left out",
            vec![export("a", "242.0.0.3", 1), export("b", "242.1.0.5", 2)],
            &["b"],
            state(&[], &["10.244.0.7"]),
            vec![("b", vec!["242.1.0.5"], both.clone())],
        ),
        (
            "strict ports: tcp 4242 never serves the import's tcp 42",
            vec![export("b", "242.1.0.5", 1), strict],
            &["b", "c"],
            state(&[], &[]),
            vec![
                ("b", vec!["242.1.0.5"], both.clone()),
                ("c", vec!["242.2.0.7"], vec!["udp/42/UDP"]),
            ],
        ),
        (
            "a cluster without the udp port serves tcp only",
            vec![export("b", "242.1.0.5", 1), only_tcp],
            &["b", "c"],
            state(&[], &[]),
            vec![
                ("b", vec!["242.1.0.5"], both.clone()),
                ("c", vec!["242.2.0.7"], vec!["tcp/42/TCP"]),
            ],
        ),
        (
            "one slice per address family",
            vec![v6],
            &["b"],
            state(&[], &[]),
            vec![
                ("b", vec!["242.1.0.5"], both.clone()),
                ("b-ipv6", vec!["fd00::5"], both.clone()),
            ],
        ),
        (
            "an export of the losing type is not served",
            vec![headless_b.clone(), export("c", "242.2.0.7", 2)],
            &["b", "c"],
            state(&[], &[]),
            vec![("b", vec!["242.1.0.9"], both.clone())],
        ),
        (
            "without Globalnet a remote export is its ready pods on their target ports",
            vec![pods_b],
            &["b"],
            state(&[], &[]),
            vec![("b", vec!["10.245.1.5", "10.245.1.6"], vec!["tcp/8042/TCP"])],
        ),
        (
            "no namespace, no derived objects",
            vec![export("b", "242.1.0.5", 1)],
            &["b"],
            ClusterState {
                synced: true,
                ..ClusterState::default()
            },
            vec![],
        ),
    ];
    for (name, records, connected, state, want) in cases {
        let connected: BTreeSet<ClusterId> = connected.iter().map(|c| id(c)).collect();
        let plan = plan_derived(&id("a"), &records, &connected, &state);
        let want: BTreeMap<String, (Vec<String>, Vec<String>)> = want
            .into_iter()
            .map(|(n, a, p)| {
                (
                    n.to_owned(),
                    (
                        a.into_iter().map(str::to_owned).collect(),
                        p.into_iter().map(str::to_owned).collect(),
                    ),
                )
            })
            .collect();
        assert_eq!(summary(&plan), want, "{name}");
        if name.starts_with("no namespace") {
            assert!(plan.is_empty(), "{name}");
        } else {
            assert_eq!(plan.len(), 1, "{name}");
        }
    }
}

#[test]
fn the_derived_service_and_slices_carry_the_mcs_names() {
    let mut b = export("b", "242.1.0.5", 1);
    b.properties.session_affinity = SessionAffinity::ClientIp;
    let plan = plan_derived(&id("a"), &[b], &[id("b")].into(), &state(&[], &[]));
    let d = &plan[&("default".to_owned(), "hello".to_owned())];
    let derived = derived_service_name("default", "hello");
    assert_eq!(d.service.metadata.name.as_deref(), Some(derived.as_str()));
    let spec = d.service.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(spec.selector.is_none());
    assert!(spec.cluster_ip.is_none(), "left to the cluster to allocate");
    assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds),
        Some(10_800)
    );
    let slice = &d.slices[&format!("{derived}-b")];
    let labels = slice.metadata.labels.clone().unwrap();
    assert_eq!(labels[SERVICE_NAME_LABEL], derived);
    assert_eq!(labels[MCS_SERVICE_NAME_LABEL], "hello");
    assert_eq!(labels[SOURCE_CLUSTER_LABEL], "b");
    assert_eq!(labels[SLICE_MANAGED_BY_LABEL], "causeway.io/lighthouse");
    assert_eq!(labels[MANAGED_BY_LABEL], DERIVED_MANAGED_BY);
}

#[test]
fn an_allocated_cluster_ip_is_kept_and_becomes_the_imports_ips() {
    let records = [export("b", "242.1.0.5", 1)];
    let mut s = state(&[], &[]);
    let plan = plan_derived(&id("a"), &records, &[id("b")].into(), &s);
    let d = plan[&("default".to_owned(), "hello".to_owned())].clone();
    // The cluster allocates an address.
    let mut shown = d.service.clone();
    let spec = shown.spec.as_mut().unwrap();
    spec.cluster_ip = Some("10.96.7.7".into());
    spec.cluster_ips = Some(vec!["10.96.7.7".into()]);
    spec.ip_families = Some(vec!["IPv4".into()]);
    let derived = derived_service_name("default", "hello");
    s.services
        .insert(("default".into(), derived.clone()), shown);
    for (name, slice) in &d.slices {
        s.endpoint_slices
            .insert(("default".into(), name.clone()), slice.clone());
    }
    let again = plan_derived(&id("a"), &records, &[id("b")].into(), &s);
    let spec = again[&("default".to_owned(), "hello".to_owned())]
        .service
        .spec
        .clone()
        .unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.7.7"));
    assert!(diff_derived(&again, &s).is_empty());

    let mut imports = crate::import::plan_imports(&records, &s.namespace_names());
    annotate_imports(&mut imports, &s);
    let import = &imports[&("default".to_owned(), "hello".to_owned())];
    assert_eq!(import.spec.ips, ["10.96.7.7"]);
    assert_eq!(import.spec.ip_families, ["IPv4"]);
    assert_eq!(
        import.metadata.annotations.as_ref().unwrap()[DERIVED_SERVICE_ANNOTATION],
        derived
    );
    // Before allocation: annotated, no ips.
    let mut imports = crate::import::plan_imports(&records, &s.namespace_names());
    annotate_imports(&mut imports, &state(&[], &[]));
    assert!(
        imports[&("default".to_owned(), "hello".to_owned())]
            .spec
            .ips
            .is_empty()
    );
}

#[test]
fn the_diff_writes_changes_deletes_stale_slices_and_spares_others() {
    let records = [export("b", "242.1.0.5", 1), export("c", "242.2.0.7", 2)];
    let mut s = state(&[], &[]);
    let plan = plan_derived(&id("a"), &records, &[id("b"), id("c")].into(), &s);
    let key = ("default".to_owned(), "hello".to_owned());
    let changes = diff_derived(&plan, &s);
    assert_eq!(changes.apply.len(), 1);
    assert!(changes.delete.is_empty());
    // Shown as written: nothing to do.
    let d = &plan[&key];
    let derived = derived_service_name("default", "hello");
    s.services
        .insert(("default".into(), derived.clone()), d.service.clone());
    for (name, slice) in &d.slices {
        s.endpoint_slices
            .insert(("default".into(), name.clone()), slice.clone());
    }
    assert!(diff_derived(&plan, &s).is_empty());
    // c drops: its slice is stale.
    let fewer = plan_derived(&id("a"), &records, &[id("b")].into(), &s);
    let changes = diff_derived(&fewer, &s);
    assert_eq!(
        changes.apply[&key].1,
        BTreeSet::from([format!("{derived}-c")])
    );
    // Every export gone: ours deleted, someone else's Service kept.
    let mut other = d.service.clone();
    other.metadata.name = Some("derived-someoneelse".into());
    other.metadata.labels = Some([(MCS_SERVICE_NAME_LABEL.to_owned(), "x".to_owned())].into());
    s.services
        .insert(("default".into(), "derived-someoneelse".into()), other);
    let changes = diff_derived(&BTreeMap::new(), &s);
    assert!(changes.apply.is_empty());
    assert_eq!(
        changes.delete,
        BTreeMap::from([(
            key,
            BTreeSet::from([format!("{derived}-b"), format!("{derived}-c")])
        )])
    );
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn status(cluster: &str, peer: &str, state: ConnectionState) -> AnyRecord {
    AnyRecord::from(ConnectionStatus {
        cluster: id(cluster),
        peer: id(peer),
        state,
        reason: (state != ConnectionState::Connected).then(|| "probes lost".to_owned()),
        rtt: None,
        since_ms: 0,
    })
}

#[tokio::test]
async fn the_controller_follows_records_and_connection_status() {
    let store = Arc::new(FakeStore::new());
    let writer = FakeDerivedWriter::default();
    let source = FakeClusterSource::new().with_derived_writer(Arc::new(writer.clone()));
    source.set(state(&[], &[]));
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let options = DerivedControllerOptions {
        resync_interval: Duration::from_millis(200),
        retry_interval: Duration::from_millis(50),
        settle: Duration::from_millis(100),
    };
    let controller = DerivedController::new(
        id("a"),
        source.state(),
        store.clone(),
        source.derived_writer().unwrap(),
        options,
    );
    tokio::spawn(controller.run(cancel.clone()));
    let key = ("default".to_string(), "hello".to_string());
    let slices = |w: &FakeDerivedWriter| -> Vec<String> {
        w.objects()
            .get(&key)
            .map(|d| d.slices.keys().cloned().collect())
            .unwrap_or_default()
    };
    let derived = derived_service_name("default", "hello");

    store
        .put(&AnyRecord::from(export("b", "242.1.0.5", 1)))
        .await
        .unwrap();
    store
        .put(&status("a", "b", ConnectionState::Connected))
        .await
        .unwrap();
    eventually("b's slice", || slices(&writer) == [format!("{derived}-b")]).await;
    // b's status as c reports it does not count; a's own report does.
    store
        .put(&status("c", "b", ConnectionState::Error))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(slices(&writer), [format!("{derived}-b")]);
    store
        .put(&status("a", "b", ConnectionState::Error))
        .await
        .unwrap();
    eventually("b left", || slices(&writer).is_empty()).await;
    store
        .put(&status("a", "b", ConnectionState::Connected))
        .await
        .unwrap();
    eventually("b back", || slices(&writer) == [format!("{derived}-b")]).await;
    // The export withdrawn: the fake source does not show writes, so the
    // delete happens once the source shows the objects.
    store
        .delete(&AnyRecord::from(export("b", "242.1.0.5", 1)).key())
        .await
        .unwrap();
    let written = writer.objects()[&key].clone();
    source.update(|s| {
        s.services
            .insert(("default".into(), derived.clone()), written.service.clone());
        for (name, slice) in &written.slices {
            s.endpoint_slices
                .insert(("default".into(), name.clone()), slice.clone());
        }
    });
    eventually("deleted", || writer.objects().is_empty()).await;
    assert!(matches!(
        writer.log().last(),
        Some(DerivedWrite::Delete(ns, name)) if ns == "default" && name == "hello"
    ));
}
