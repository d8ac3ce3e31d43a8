//! The etcd store against a real etcd: put, list, watch, resume, compaction,
//! restart of etcd mid-watch, refused records.

mod common;

use causeway_api::records::Kind;
use causeway_api::store::{EtcdStore, RecordSet, Store, WatchEvent};
use causeway_api::testing::EtcdFixture;
use common::*;

#[tokio::test]
async fn put_list_watch_delete() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let store = EtcdStore::connect(&etcd.config()).await.unwrap();
    store.put(&endpoint("a", 4500)).await.unwrap();
    store.put(&import("a", "web")).await.unwrap();

    let listing = store.list(Some(Kind::Endpoint)).await.unwrap();
    assert_eq!(listing.records, vec![endpoint("a", 4500)]);
    assert_eq!(store.list(None).await.unwrap().records.len(), 2);

    let mut w = store.watch(Some(Kind::Endpoint), None);
    let WatchEvent::Snapshot { records, .. } = next_within(&mut w, 5).await else {
        panic!("a watch starts with a snapshot")
    };
    assert_eq!(records, vec![endpoint("a", 4500)]);

    store.put(&import("a", "db")).await.unwrap(); // other kind: filtered out
    let rev = store.put(&endpoint("b", 4501)).await.unwrap();
    assert_eq!(
        next_within(&mut w, 5).await,
        WatchEvent::Put {
            record: endpoint("b", 4501),
            revision: rev
        }
    );
    let key = endpoint("a", 4500).key();
    let rev = store.delete(&key).await.unwrap();
    assert_eq!(
        next_within(&mut w, 5).await,
        WatchEvent::Delete { key, revision: rev }
    );
}

#[tokio::test]
async fn resume_after_a_dropped_stream_misses_nothing() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let store = EtcdStore::connect(&etcd.config()).await.unwrap();
    let mut w = store.watch(None, None);
    let mut set = RecordSet::default();
    set.apply(next_within(&mut w, 5).await);
    store.put(&endpoint("a", 1)).await.unwrap();
    set.apply(next_within(&mut w, 5).await);
    drop(w);

    // Changes made while nobody watches.
    for p in 2..=5 {
        store.put(&endpoint("a", p)).await.unwrap();
    }
    store.put(&import("b", "web")).await.unwrap();

    let mut w = store.watch(None, Some(set.revision()));
    for _ in 0..5 {
        let ev = next_within(&mut w, 5).await;
        assert!(
            !matches!(ev, WatchEvent::Snapshot { .. }),
            "resume replays, no re-list"
        );
        set.apply(ev);
    }
    assert_eq!(set.get(&endpoint("a", 1).key()), Some(&endpoint("a", 5)));
    assert_eq!(
        set.get(&import("b", "web").key()),
        Some(&import("b", "web"))
    );
}

#[tokio::test]
async fn compacted_revision_forces_a_relist() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let store = EtcdStore::connect(&etcd.config()).await.unwrap();
    let first = store.put(&endpoint("a", 1)).await.unwrap();
    store.put(&endpoint("a", 2)).await.unwrap();
    let last = store.put(&endpoint("b", 3)).await.unwrap();
    let mut c = store.client().clone();
    c.compact(last, None).await.unwrap();

    let mut w = store.watch(Some(Kind::Endpoint), Some(first));
    match next_within(&mut w, 5).await {
        WatchEvent::Snapshot { records, revision } => {
            assert_eq!(records, vec![endpoint("a", 2), endpoint("b", 3)]);
            assert!(revision >= last);
        }
        other => panic!("expected a snapshot after compaction, got {other:?}"),
    }
    // And the watch goes on after the re-list.
    store.put(&endpoint("c", 4)).await.unwrap();
    assert!(matches!(
        next_within(&mut w, 5).await,
        WatchEvent::Put { .. }
    ));
}

#[tokio::test]
async fn watch_survives_an_etcd_restart() {
    init_tracing();
    let mut etcd = EtcdFixture::start().await;
    let store = EtcdStore::connect(&etcd.config()).await.unwrap();
    let mut w = store.watch(None, None);
    let mut set = RecordSet::default();
    set.apply(next_within(&mut w, 5).await);
    store.put(&endpoint("a", 1)).await.unwrap();
    set.apply(next_within(&mut w, 5).await);

    etcd.restart().await;
    // Written right after the restart, possibly before the watch reconnects:
    // the resume revision must bring them anyway.
    let writer = EtcdStore::connect(&etcd.config()).await.unwrap();
    writer.put(&endpoint("a", 2)).await.unwrap();
    writer.put(&import("a", "web")).await.unwrap();

    for _ in 0..2 {
        set.apply(next_within(&mut w, 15).await);
    }
    assert_eq!(set.get(&endpoint("a", 1).key()), Some(&endpoint("a", 2)));
    assert_eq!(set.len(), 2);
    // The original store's own client works again too.
    store.put(&endpoint("b", 3)).await.unwrap();
    set.apply(next_within(&mut w, 5).await);
    assert_eq!(set.len(), 3);
}

#[tokio::test]
async fn refused_records_are_skipped() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let store = EtcdStore::connect(&etcd.config()).await.unwrap();
    store.put(&endpoint("a", 1)).await.unwrap();
    let mut w = store.watch(None, None);
    let mut set = RecordSet::default();
    set.apply(next_within(&mut w, 5).await);
    assert_eq!(set.len(), 1);

    let mut c = store.client().clone();
    let layout = store.layout().clone();
    // Garbage over a valid record: the watch forgets the record.
    c.put(layout.record(&endpoint("a", 1).key()), "{garbage", None)
        .await
        .unwrap();
    set.apply(next_within(&mut w, 5).await);
    assert!(set.is_empty());
    // A record of cluster b stored under cluster c's prefix: foreign.
    let foreign = causeway_api::records::encode(&endpoint("b", 2));
    c.put(
        format!("{}clusters/c/endpoint/c", layout.root_prefix()),
        foreign,
        None,
    )
    .await
    .unwrap();
    set.apply(next_within(&mut w, 5).await);
    assert!(set.is_empty(), "{set:?}");
    assert!(store.list(None).await.unwrap().records.is_empty());
}

#[tokio::test]
async fn mutual_tls() {
    init_tracing();
    let etcd = EtcdFixture::start_tls().await;
    assert!(etcd.endpoint().starts_with("https://"));
    let store = EtcdStore::connect(&etcd.config()).await.unwrap();
    store.put(&endpoint("a", 1)).await.unwrap();
    assert_eq!(store.list(None).await.unwrap().records.len(), 1);

    // Without a client certificate the server refuses.
    let mut no_cert = etcd.config();
    no_cert.tls.as_mut().unwrap().client_cert = None;
    let refused = async { EtcdStore::connect(&no_cert).await?.list(None).await };
    assert!(refused.await.is_err());
    // Without the CA the client refuses the server.
    let mut no_ca = etcd.config();
    no_ca.tls.as_mut().unwrap().ca_file = None;
    let refused = async { EtcdStore::connect(&no_ca).await?.list(None).await };
    assert!(refused.await.is_err());
}
