//! The etcd lease elector against a real etcd: kill and resign hand over,
//! never two actives, losing keep-alives ends active status before the TTL,
//! and a restart within the TTL re-attaches to the lease.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use causeway_api::election::{ElectionConfig, Elector, EtcdElector};
use causeway_api::store::{EtcdConfig, KeyLayout};
use causeway_api::testing::{EtcdFixture, TcpProxy};
use common::init_tracing;
use tokio::sync::watch;

fn config(name: &str, ttl_ms: u64) -> ElectionConfig {
    ElectionConfig {
        ttl: Duration::from_millis(ttl_ms),
        ..ElectionConfig::new("gateway", name)
    }
}

async fn candidate(endpoint: &str, name: &str, ttl_ms: u64) -> EtcdElector {
    let client = EtcdConfig::new([endpoint]).connect().await.unwrap();
    EtcdElector::campaign(client, &KeyLayout::default(), config(name, ttl_ms))
        .await
        .unwrap()
}

/// Waits until `rx` reads `want`; returns how long it took.
async fn wait_for(rx: &mut watch::Receiver<bool>, want: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(limit, rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("status {want} not reached within {limit:?}"))
        .expect("elector alive");
    start.elapsed()
}

/// Watches every channel and records whether two were ever true at once.
fn monitor(
    chans: Vec<watch::Receiver<bool>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let mut chans = chans;
        let mut violated = false;
        while !stop.load(Ordering::Relaxed) {
            let actives = chans.iter().filter(|c| *c.borrow()).count();
            violated |= actives > 1;
            let changes = chans.iter_mut().map(|c| Box::pin(c.changed()));
            let _ = tokio::time::timeout(
                Duration::from_millis(50),
                futures::future::select_all(changes),
            )
            .await;
        }
        violated
    })
}

#[tokio::test]
async fn kill_and_resign_hand_over() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let ep = etcd.endpoint();
    let a = candidate(&ep, "a", 1000).await;
    let mut a_rx = a.active();
    wait_for(&mut a_rx, true, Duration::from_secs(3)).await;
    let b = candidate(&ep, "b", 1000).await;
    let mut b_rx = b.active();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*b_rx.borrow(), "b must stand by while a holds the lease");
    assert_eq!(b.holder().borrow().as_deref(), Some("a"));

    // Kill: a's keep-alives stop; b takes over after the TTL, not before.
    drop(a);
    let took = wait_for(&mut b_rx, true, Duration::from_secs(4)).await;
    assert!(
        took >= Duration::from_millis(300),
        "b took over after {took:?}: before a's lease could expire"
    );

    // Resign: c takes over at once.
    let c = candidate(&ep, "c", 1000).await;
    let mut c_rx = c.active();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!*c_rx.borrow());
    let start = Instant::now();
    b.resign().await.unwrap();
    assert!(
        !*b_rx.borrow(),
        "resign ends active status before returning"
    );
    wait_for(&mut c_rx, true, Duration::from_secs(1)).await;
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "resign handed over in {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn never_two_actives_over_many_rounds() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let ep = etcd.endpoint();
    let stop = Arc::new(AtomicBool::new(false));
    let mut holders: Vec<EtcdElector> = Vec::new();
    let mut monitors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..8 {
        assert!(Instant::now() < deadline, "rounds took too long");
        // Keep three candidates in the race.
        while holders.len() < 3 {
            let name = format!("n{round}-{}", holders.len());
            holders.push(candidate(&ep, &name, 1000).await);
        }
        monitors.push(monitor(
            holders.iter().map(|h| h.active()).collect(),
            stop.clone(),
        ));
        // Find the active one.
        let start = Instant::now();
        let idx = loop {
            if let Some(i) = holders.iter().position(|h| *h.active().borrow()) {
                break i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "nobody active in round {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let active = holders.remove(idx);
        if round % 2 == 0 {
            active.resign().await.unwrap();
        } else {
            drop(active);
        }
        let mut rxs: Vec<_> = holders.iter().map(|h| h.active()).collect();
        let waits = rxs.iter_mut().map(|r| Box::pin(r.wait_for(|v| *v)));
        tokio::time::timeout(Duration::from_secs(4), futures::future::select_all(waits))
            .await
            .unwrap_or_else(|_| panic!("no takeover in round {round}"))
            .0
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for m in monitors {
        assert!(
            !m.await.unwrap(),
            "two candidates were active at the same time"
        );
    }
}

#[tokio::test]
async fn lost_keep_alives_end_active_status_before_the_standby_takes_over() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let proxy = TcpProxy::start(etcd.client_addr()).await;
    let a = candidate(&proxy.endpoint(), "a", 2000).await;
    let mut a_rx = a.active();
    wait_for(&mut a_rx, true, Duration::from_secs(3)).await;
    let b = candidate(&etcd.endpoint(), "b", 2000).await;
    let mut b_rx = b.active();

    let cut = Instant::now();
    proxy.set_blocked(true);
    let a_off = wait_for(&mut a_rx, false, Duration::from_secs(3)).await;
    assert!(!*b_rx.borrow(), "b active while a still was");
    let b_on = cut.elapsed() + wait_for(&mut b_rx, true, Duration::from_secs(4)).await;
    assert!(
        a_off < Duration::from_secs(2),
        "a stayed active {a_off:?}, past its TTL"
    );
    assert!(a_off < b_on, "a off at {a_off:?}, b on at {b_on:?}");

    // Healed, a finds its lease gone and stands by behind b.
    proxy.set_blocked(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!*a_rx.borrow());
    assert!(*b_rx.borrow());
}

#[tokio::test]
async fn restart_within_the_ttl_reattaches_to_the_lease() {
    init_tracing();
    let etcd = EtcdFixture::start().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("gateway.lease");
    let with_file = |name: &str| ElectionConfig {
        lease_file: Some(lease_file.clone()),
        ..config(name, 2000)
    };
    let client = EtcdConfig::new([ep.as_str()]).connect().await.unwrap();
    let a = EtcdElector::campaign(client.clone(), &KeyLayout::default(), with_file("a"))
        .await
        .unwrap();
    wait_for(&mut a.active(), true, Duration::from_secs(3)).await;
    let b = candidate(&ep, "b", 2000).await;
    let b_rx = b.active();
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(vec![b.active()], stop.clone());

    drop(a); // crash
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a2 = EtcdElector::campaign(client, &KeyLayout::default(), with_file("a"))
        .await
        .unwrap();
    let took = wait_for(&mut a2.active(), true, Duration::from_secs(1)).await;
    assert!(took < Duration::from_millis(500), "re-attach took {took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !*b_rx.borrow(),
        "the standby must not take over a re-attached lease"
    );
    assert!(*a2.active().borrow());

    // A clean stop removes the lease file and hands over.
    a2.resign().await.unwrap();
    assert!(!lease_file.exists());
    wait_for(&mut b.active(), true, Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    mon.await.unwrap();
}

#[tokio::test]
async fn an_etcd_restart_keeps_one_active_at_most() {
    init_tracing();
    let mut etcd = EtcdFixture::start().await;
    let ep = etcd.endpoint();
    let a = candidate(&ep, "a", 2000).await;
    wait_for(&mut a.active(), true, Duration::from_secs(3)).await;
    let b = candidate(&ep, "b", 2000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(vec![a.active(), b.active()], stop.clone());

    etcd.restart().await;
    // Within a few TTLs exactly one candidate is active again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = [&a, &b].iter().filter(|c| *c.active().borrow()).count();
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no candidate active after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(!mon.await.unwrap(), "two actives around an etcd restart");
    assert_eq!([&a, &b].iter().filter(|c| *c.active().borrow()).count(), 1);
}
