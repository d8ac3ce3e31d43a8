//! Serves the synthetic record set of `dns::sample` for benchmarks, and
//! writes the same answers as a zone file and a dnsperf query list.
//!
//! dns_bench_server LISTEN SERVICES OUT_DIR
//! e.g. dns_bench_server 127.0.0.1:5300 1000 /tmp/bench
//! writes OUT_DIR/clusterset.local.zone and OUT_DIR/queries.txt, prints
//! "ready" on stdout once listening, and serves until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use causeway_lighthouse::dns::{
    DnsMetrics, DnsServer, IndexHandle, ResolverOptions, ServerConfig, sample,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, services, out] = args.as_slice() else {
        anyhow::bail!("usage: dns_bench_server LISTEN SERVICES OUT_DIR");
    };
    let listen = listen
        .parse()
        .context("LISTEN: an address such as 127.0.0.1:5300")?;
    let services: usize = services.parse().context("SERVICES: a number")?;
    let out = PathBuf::from(out);

    let resolver = ResolverOptions {
        nameserver_addresses: vec!["127.0.0.1".parse()?],
        ..ResolverOptions::default()
    };
    let index = sample::index(services);
    std::fs::write(
        out.join("clusterset.local.zone"),
        sample::zone_file(&index, &resolver),
    )?;
    let queries: String = sample::names(&index, &resolver)
        .into_iter()
        .filter(|(_, ty)| !matches!(ty, hickory_proto::rr::RecordType::AAAA))
        .map(|(name, ty)| format!("{name} {ty}\n"))
        .collect();
    std::fs::write(out.join("queries.txt"), queries)?;

    let config = ServerConfig {
        listen,
        resolver,
        ..ServerConfig::default()
    };
    let server = DnsServer::bind(config, IndexHandle::new(index), DnsMetrics::default()).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    println!("ready");
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stop.cancel();
    task.await?;
    Ok(())
}
