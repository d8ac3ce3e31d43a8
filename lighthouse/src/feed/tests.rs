use std::net::IpAddr;
use std::time::{Duration, Instant};

use causeway_api::FakeStore;
use causeway_api::records::{
    ConnectionStatus, HeadlessEndpoint, ObjectName, Protocol as ApiProtocol, ServicePort as ApiPort,
};

use super::*;
use crate::dns::index::ServiceType;

fn id(s: &str) -> ApiClusterId {
    ApiClusterId::new(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name).unwrap()
}

fn dns(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn clusterset(cluster: &str, name: &str, global: &str, cluster_ip: &str) -> ServiceImport {
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new("default").unwrap(),
        name: ObjectName::new(name).unwrap(),
        kind: ServiceImportType::ClusterSetIP,
        ports: vec![ApiPort {
            name: Some("http".into()),
            protocol: ApiProtocol::Tcp,
            port: 80,
        }],
        addresses: vec![ip(global)],
        cluster_ips: vec![ip(cluster_ip)],
        endpoints: vec![],
        exported_at_ms: 0,
        pods: None,
        unready: false,
        properties: Default::default(),
    }
}

fn headless(cluster: &str, name: &str, endpoints: &[(Option<&str>, &str, &str)]) -> ServiceImport {
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new("default").unwrap(),
        name: ObjectName::new(name).unwrap(),
        kind: ServiceImportType::Headless,
        ports: vec![],
        addresses: vec![],
        cluster_ips: vec![],
        endpoints: endpoints
            .iter()
            .map(|(h, global, pod)| HeadlessEndpoint {
                hostname: h.map(str::to_owned),
                address: ip(global),
                local_address: ip(pod),
            })
            .collect(),
        exported_at_ms: 0,
        pods: None,
        unready: false,
        properties: Default::default(),
    }
}

fn status(cluster: &str, peer: &str, state: ConnectionState) -> ConnectionStatus {
    ConnectionStatus {
        cluster: id(cluster),
        peer: id(peer),
        state,
        reason: (state == ConnectionState::Error).then(|| "probes lost".to_owned()),
        rtt: None,
        since_ms: 0,
    }
}

fn addresses(index: &Index, k: &ServiceKey, cluster: &str) -> Vec<IpAddr> {
    let export = &index.service(k).expect("service").clusters[&dns(cluster)];
    match &export.backing {
        Backing::ClusterSetIp { addresses, .. } => addresses.clone(),
        Backing::Headless { endpoints } => endpoints.iter().map(|e| e.address).collect(),
    }
}

#[test]
fn local_exports_answer_cluster_ips_and_pod_addresses_others_their_addresses() {
    // (importing cluster, record, expected addresses)
    let web_b = clusterset("b", "web", "242.1.0.10", "10.96.0.10");
    let db_b = headless("b", "db", &[(Some("db-0"), "242.1.0.20", "10.244.1.5")]);
    let cases = [
        ("a", &web_b, vec![ip("242.1.0.10")]),
        ("b", &web_b, vec![ip("10.96.0.10")]),
        ("a", &db_b, vec![ip("242.1.0.20")]),
        ("b", &db_b, vec![ip("10.244.1.5")]),
    ];
    for (local, record, want) in cases {
        let export = import_to_export(&id(local), record);
        let got: Vec<IpAddr> = match &export.backing {
            Backing::ClusterSetIp { addresses, ready } => {
                assert!(ready);
                addresses.clone()
            }
            Backing::Headless { endpoints } => {
                assert!(endpoints.iter().all(|e| e.ready));
                endpoints.iter().map(|e| e.address).collect()
            }
        };
        assert_eq!(got, want, "{local} importing {}", record.name);
    }
    let export = import_to_export(&id("a"), &web_b);
    assert_eq!(
        export.ports,
        [ServicePort::new(Some("http"), Protocol::Tcp, 80)]
    );
    let export = import_to_export(&id("a"), &db_b);
    let Backing::Headless { endpoints } = export.backing else {
        panic!("headless")
    };
    assert_eq!(endpoints[0].label(), "db-0");
}

#[test]
fn only_the_local_gateways_connected_reports_make_peers_reachable() {
    let records: Vec<AnyRecord> = vec![
        status("a", "b", ConnectionState::Connected).into(),
        status("a", "c", ConnectionState::Error).into(),
        status("a", "d", ConnectionState::Connecting).into(),
        // c says it reaches e: not a's business.
        status("c", "e", ConnectionState::Connected).into(),
    ];
    let index = build_index(&id("a"), &records).unwrap();
    let cases = [
        ("a", true),
        ("b", true),
        ("c", false),
        ("d", false),
        ("e", false),
    ];
    for (cluster, want) in cases {
        assert_eq!(index.is_reachable(&dns(cluster)), want, "{cluster}");
    }
}

#[test]
fn among_exports_of_unknown_age_the_lowest_cluster_id_decides_the_type() {
    let web = key("default", "web");
    let records: Vec<AnyRecord> = vec![
        clusterset("c", "web", "242.2.0.10", "10.96.0.10").into(),
        headless("b", "web", &[(None, "242.1.0.20", "10.244.1.5")]).into(),
    ];
    let mut index = build_index(&id("a"), &records).unwrap();
    assert_eq!(
        index.service(&web).unwrap().service_type,
        ServiceType::Headless
    );

    // b withdraws: c's type stands.
    let delete = WatchEvent::Delete {
        key: records[1].key(),
        revision: 9,
    };
    apply_change(&mut index, &id("a"), &delete).unwrap();
    assert_eq!(
        index.service(&web).unwrap().service_type,
        ServiceType::ClusterSetIp
    );
    // b exports again, still headless: it takes precedence again.
    let put = WatchEvent::Put {
        record: records[1].clone(),
        revision: 10,
    };
    apply_change(&mut index, &id("a"), &put).unwrap();
    assert_eq!(
        index.service(&web).unwrap().service_type,
        ServiceType::Headless
    );
}

#[test]
fn the_oldest_export_decides_the_type_as_the_merge_does() {
    let web = key("default", "web");
    // c exported first (older), b later: c's ClusterSetIP stands, although
    // b's id is lower; an export of unknown age ranks last.
    let mut c = clusterset("c", "web", "242.2.0.10", "10.96.0.10");
    c.exported_at_ms = 1_000;
    let mut b = headless("b", "web", &[(None, "242.1.0.20", "10.244.1.5")]);
    b.exported_at_ms = 2_000;
    let mut a = headless("a", "web", &[(None, "242.0.0.20", "10.244.0.5")]);
    a.exported_at_ms = 0;
    let records: Vec<AnyRecord> = vec![c.clone().into(), b.clone().into(), a.into()];
    let mut index = build_index(&id("a"), &records).unwrap();
    assert_eq!(
        index.service(&web).unwrap().service_type,
        ServiceType::ClusterSetIp
    );
    assert_eq!(
        crate::import::merge([&c, &b]).unwrap().kind,
        ServiceImportType::ClusterSetIP,
        "the ServiceImport merge agrees"
    );
    // c withdraws: b is now the oldest dated export.
    let delete = WatchEvent::Delete {
        key: records[0].key(),
        revision: 9,
    };
    apply_change(&mut index, &id("a"), &delete).unwrap();
    assert_eq!(
        index.service(&web).unwrap().service_type,
        ServiceType::Headless
    );
    // c comes back, older again (put one by one, as a rebuild).
    let put = WatchEvent::Put {
        record: records[0].clone(),
        revision: 10,
    };
    apply_change(&mut index, &id("a"), &put).unwrap();
    assert_eq!(
        index.service(&web).unwrap().service_type,
        ServiceType::ClusterSetIp
    );
}

#[test]
fn changes_applied_one_by_one_equal_a_rebuild() {
    let local = id("a");
    let changes: Vec<WatchEvent> = vec![
        WatchEvent::Put {
            record: clusterset("b", "web", "242.1.0.10", "10.96.0.10").into(),
            revision: 2,
        },
        WatchEvent::Put {
            record: clusterset("a", "web", "242.0.0.10", "10.96.0.11").into(),
            revision: 3,
        },
        WatchEvent::Put {
            record: status("a", "b", ConnectionState::Connected).into(),
            revision: 4,
        },
        WatchEvent::Put {
            record: headless("b", "db", &[(Some("db-0"), "242.1.0.20", "10.244.1.5")]).into(),
            revision: 5,
        },
        WatchEvent::Put {
            record: status("a", "c", ConnectionState::Connected).into(),
            revision: 6,
        },
        WatchEvent::Delete {
            key: AnyRecord::from(status("a", "c", ConnectionState::Connected)).key(),
            revision: 7,
        },
        WatchEvent::Delete {
            key: AnyRecord::from(clusterset("a", "web", "242.0.0.10", "10.96.0.11")).key(),
            revision: 8,
        },
    ];
    let mut incremental = build_index(&local, []).unwrap();
    let mut set = RecordSet::default();
    for change in &changes {
        apply_change(&mut incremental, &local, change).unwrap();
        set.apply(change.clone());
    }
    let rebuilt = build_index(&local, set.iter()).unwrap();
    let services = |i: &Index| {
        i.services()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(services(&incremental), services(&rebuilt));
    for c in ["a", "b", "c"] {
        assert_eq!(
            incremental.is_reachable(&dns(c)),
            rebuilt.is_reachable(&dns(c)),
            "{c}"
        );
    }
    assert!(!rebuilt.is_reachable(&dns("c")));
    assert_eq!(
        addresses(&rebuilt, &key("default", "web"), "b"),
        [ip("242.1.0.10")]
    );
    assert!(
        !rebuilt
            .service(&key("default", "web"))
            .unwrap()
            .clusters
            .contains_key(&dns("a"))
    );
}

/// Polls `cond` on the handle's snapshot for up to two seconds.
async fn eventually(handle: &IndexHandle, what: &str, cond: impl Fn(&Index) -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if cond(&handle.load()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn the_feed_follows_the_store_and_keeps_the_last_index_when_it_is_down() {
    let store = FakeStore::new();
    let web = key("default", "web");
    store
        .put(&clusterset("b", "web", "242.1.0.10", "10.96.0.10").into())
        .await
        .unwrap();
    let handle = IndexHandle::default();
    let cancel = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(feed(
        Arc::new(store.clone()),
        id("a"),
        handle.clone(),
        cancel.clone(),
        Some(tx),
        None,
    ));
    tokio::time::timeout(Duration::from_secs(2), rx)
        .await
        .expect("synced in time")
        .unwrap();
    let index = handle.load();
    assert_eq!(index.local(), Some(&dns("a")));
    assert_eq!(addresses(&index, &web, "b"), [ip("242.1.0.10")]);
    assert!(!index.is_reachable(&dns("b")));

    store
        .put(&status("a", "b", ConnectionState::Connected).into())
        .await
        .unwrap();
    eventually(&handle, "b reachable", |i| i.is_reachable(&dns("b"))).await;
    store
        .put(&status("a", "b", ConnectionState::Error).into())
        .await
        .unwrap();
    eventually(&handle, "b unreachable", |i| !i.is_reachable(&dns("b"))).await;
    store
        .put(&status("a", "b", ConnectionState::Connected).into())
        .await
        .unwrap();
    eventually(&handle, "b back", |i| i.is_reachable(&dns("b"))).await;

    // The store goes away: the index stands.
    store.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(handle.load().service(&web).is_some());
    store.set_unavailable(false);

    // Unexport: the name goes.
    let gone = AnyRecord::from(clusterset("b", "web", "242.1.0.10", "10.96.0.10")).key();
    store.delete(&gone).await.unwrap();
    eventually(&handle, "web withdrawn", |i| i.service(&web).is_none()).await;

    // A compaction while watching changes nothing visible.
    store.compact();
    store
        .put(&headless("b", "db", &[(None, "242.1.0.20", "10.244.1.5")]).into())
        .await
        .unwrap();
    eventually(&handle, "db imported", |i| {
        i.service(&key("default", "db")).is_some()
    })
    .await;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("feed stops on cancel")
        .unwrap();
}

#[tokio::test]
async fn the_feed_takes_cluster_set_ips_from_the_cluster_source() {
    use causeway_api::mcs;
    use causeway_api::source::{ClusterSource, FakeClusterSource};

    let store = FakeStore::new();
    let web = key("default", "web");
    store
        .put(&clusterset("b", "web", "242.1.0.10", "10.96.0.10").into())
        .await
        .unwrap();
    let source = FakeClusterSource::new();
    let handle = IndexHandle::default();
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    tokio::spawn(run_feed_with_source(
        Arc::new(store.clone()),
        id("a"),
        handle.clone(),
        source.state(),
        cancel.clone(),
    ));
    eventually(&handle, "web imported", |i| i.service(&web).is_some()).await;
    assert!(
        handle
            .load()
            .service(&web)
            .unwrap()
            .cluster_set_ips
            .is_empty()
    );
    // The derived Service got its ClusterIP: the import shows it.
    let mut import = mcs::ServiceImport::new(
        "web",
        mcs::ServiceImportSpec {
            type_: "ClusterSetIP".into(),
            ips: vec!["10.96.7.7".into()],
            ..mcs::ServiceImportSpec::default()
        },
    );
    import.metadata.namespace = Some("default".into());
    source.update(|s| {
        s.synced = true;
        s.service_imports
            .insert(("default".into(), "web".into()), import);
    });
    eventually(&handle, "ClusterSetIP set", |i| {
        i.service(&web).unwrap().cluster_set_ips == [ip("10.96.7.7")]
    })
    .await;
    // A store change keeps it.
    store
        .put(&status("a", "b", ConnectionState::Connected).into())
        .await
        .unwrap();
    eventually(&handle, "b reachable", |i| i.is_reachable(&dns("b"))).await;
    assert_eq!(
        handle.load().service(&web).unwrap().cluster_set_ips,
        [ip("10.96.7.7")]
    );
    // The import loses its ips: so does the index.
    source.update(|s| s.service_imports.clear());
    eventually(&handle, "ClusterSetIP gone", |i| {
        i.service(&web).unwrap().cluster_set_ips.is_empty()
    })
    .await;
}
