//! broker init, join and per-cluster authorization against a real etcd.

mod common;

use std::time::Duration;

use causeway_api::Error;
use causeway_api::join::{
    BrokerInitOptions, GlobalCidrRequest, JoinRequest, Registry, broker_init, join,
};
use causeway_api::records::{ClusterId, Kind};
use causeway_api::store::{EtcdConfig, EtcdStore, Store, WatchEvent};
use causeway_api::testing::EtcdFixture;
use common::*;

const ROOT_PW: &str = "root-secret";

fn request(cluster: &str, g: GlobalCidrRequest) -> JoinRequest {
    JoinRequest {
        cluster: id(cluster),
        pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        global_cidr: g,
    }
}

async fn init(etcd: &EtcdFixture) -> EtcdConfig {
    broker_init(
        &etcd.config(),
        &BrokerInitOptions {
            root_password: ROOT_PW.into(),
            registry: Registry::default(),
        },
    )
    .await
    .unwrap();
    etcd.config().with_credentials("root", ROOT_PW)
}

#[tokio::test]
async fn a_cluster_writes_only_its_own_records_and_reads_all() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let root = init(&etcd).await;
    let a = join(&root, &request("a", GlobalCidrRequest::Auto), None)
        .await
        .unwrap();
    let b = join(&root, &request("b", GlobalCidrRequest::Auto), None)
        .await
        .unwrap();

    let creds = |o: &causeway_api::join::JoinOutput| {
        let mut c = etcd.config();
        c.credentials = Some(o.credentials.clone());
        c
    };
    let store_a = EtcdStore::connect(&creds(&a)).await.unwrap();
    let store_b = EtcdStore::connect(&creds(&b)).await.unwrap();
    store_a.put(&endpoint("a", 4500)).await.unwrap();
    store_b.put(&endpoint("b", 4500)).await.unwrap();

    let e = store_b.put(&endpoint("a", 9999)).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    let e = store_b.delete(&endpoint("a", 1).key()).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");

    // b reads the whole clusterset, a's records untouched.
    let eps = store_b.list(Some(Kind::Endpoint)).await.unwrap().records;
    assert_eq!(eps, vec![endpoint("a", 4500), endpoint("b", 4500)]);
    let clusters = store_b.list(Some(Kind::Cluster)).await.unwrap().records;
    assert_eq!(clusters.len(), 2, "join wrote each Cluster record");

    // A second init is refused with an error that says why.
    let again = broker_init(
        &etcd.config(),
        &BrokerInitOptions {
            root_password: ROOT_PW.into(),
            registry: Registry::default(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(again, Error::BrokerInitialised), "{again}");

    // Without credentials nothing is readable.
    let anon = EtcdStore::connect(&etcd.config()).await.unwrap();
    assert!(anon.list(None).await.is_err());
    // Wrong password is refused at connect.
    let mut bad = creds(&b);
    bad.credentials.as_mut().unwrap().password = "nope".into();
    assert!(EtcdStore::connect(&bad).await.is_err());
}

#[tokio::test]
async fn join_allocates_distinct_cidrs_and_refuses_conflicts() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let root = init(&etcd).await;
    // Concurrent joins: the transaction keeps allocations distinct.
    let joins = (0..12).map(|i| {
        let root = root.clone();
        async move {
            join(
                &root,
                &request(&format!("c{i}"), GlobalCidrRequest::Auto),
                None,
            )
            .await
        }
    });
    let outs = futures::future::join_all(joins).await;
    let mut cidrs = std::collections::BTreeSet::new();
    for o in outs {
        let g = o.unwrap().cluster.global_cidr.unwrap();
        assert_eq!(g.net().prefix_len(), 16);
        assert!(cidrs.insert(g), "{g} allocated twice");
    }
    assert_eq!(cidrs.len(), 12);

    let taken = *cidrs.first().unwrap();
    let e = join(&root, &request("c3", GlobalCidrRequest::Auto), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ClusterIdTaken { .. }), "{e}");
    assert!(e.to_string().contains("--cluster"), "{e}");

    let e = join(&root, &request("x", GlobalCidrRequest::Fixed(taken)), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");

    let mut own = request(
        "y",
        GlobalCidrRequest::Fixed("242.200.0.0/16".parse().unwrap()),
    );
    own.pod_cidrs = vec!["242.200.0.0/20".parse().unwrap()];
    let e = join(&root, &own, None).await.unwrap_err();
    assert!(e.to_string().contains("own CIDR"), "{e}");

    let e = ClusterId::new("Not_A_Label").unwrap_err();
    assert!(e.to_string().contains("DNS label"), "{e}");

    // A fixed free CIDR is honoured.
    let o = join(
        &root,
        &request(
            "z",
            GlobalCidrRequest::Fixed("242.100.0.0/16".parse().unwrap()),
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(o.cluster.global_cidr.unwrap().to_string(), "242.100.0.0/16");
}

#[tokio::test]
async fn expired_auth_token_is_renewed() {
    init_tracing();
    let etcd = EtcdFixture::start_with(&["--auth-token-ttl=1"]).await;
    let root = init(&etcd).await;
    let a = join(&root, &request("a", GlobalCidrRequest::Auto), None)
        .await
        .unwrap();
    let mut cfg = etcd.config();
    cfg.credentials = Some(a.credentials);
    let store = EtcdStore::connect(&cfg).await.unwrap();
    store.put(&endpoint("a", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The token expired while idle: calls and new watches still work.
    store.put(&endpoint("a", 2)).await.unwrap();
    let mut w = store.watch(Some(Kind::Endpoint), None);
    let WatchEvent::Snapshot { records, .. } = next_within(&mut w, 5).await else {
        panic!("snapshot first")
    };
    assert_eq!(records, vec![endpoint("a", 2)]);
}
