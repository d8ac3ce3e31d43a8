//! Benchmark of election failover on a real etcd (started here, on
//! loopback): the time from killing the active candidate (its keep-alives
//! stop, as with SIGKILL) to the standby's watch saying active, and the same
//! after a clean resign. Prints a Markdown table.
//!
//! `cargo run -p causeway-api --example election_failover -- [rounds] [ttl_ms]`

use std::time::{Duration, Instant};

use causeway_api::election::{ElectionConfig, Elector, EtcdElector};
use causeway_api::store::{EtcdConfig, KeyLayout};
use causeway_api::testing::EtcdFixture;

async fn candidate(ep: &str, name: &str, ttl: Duration) -> anyhow::Result<EtcdElector> {
    let client = EtcdConfig::new([ep]).connect().await?;
    let cfg = ElectionConfig {
        ttl,
        ..ElectionConfig::new("bench", name)
    };
    Ok(EtcdElector::campaign(client, &KeyLayout::default(), cfg).await?)
}

/// Milliseconds of one takeover: start two candidates, wait for one to be
/// active, stop it (kill or resign), time until the other is active.
async fn round(ep: &str, i: usize, ttl: Duration, kill: bool) -> anyhow::Result<f64> {
    let a = candidate(ep, &format!("a{i}"), ttl).await?;
    tokio::time::timeout(Duration::from_secs(10), a.active().wait_for(|v| *v)).await??;
    let b = candidate(ep, &format!("b{i}"), ttl).await?;
    // Let b settle into watching the key, and a few keep-alives pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    anyhow::ensure!(!*b.active().borrow(), "standby active too early");
    let mut b_rx = b.active();
    let start = Instant::now();
    if kill {
        drop(a);
    } else {
        a.resign().await?;
    }
    tokio::time::timeout(ttl * 3, b_rx.wait_for(|v| *v)).await??;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    b.resign().await?;
    Ok(ms)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.95), *v.last().expect("rounds > 0"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let ttl = Duration::from_millis(args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000));
    anyhow::ensure!(rounds > 0, "rounds must be positive");
    let etcd = EtcdFixture::start().await;
    let ep = etcd.endpoint();
    println!(
        "etcd 3.4 on loopback, --heartbeat-interval=50 --election-timeout=500, lease TTL {ttl:?}, {rounds} rounds each\n"
    );
    println!("| takeover after | median ms | p95 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, kill) in [("kill (keep-alives stop)", true), ("resign", false)] {
        let mut v = Vec::with_capacity(rounds);
        for i in 0..rounds {
            v.push(round(&ep, i, ttl, kill).await?);
        }
        let (p50, p95, max) = stats(v);
        println!("| {name} | {p50:.0} | {p95:.0} | {max:.0} |");
    }
    Ok(())
}
