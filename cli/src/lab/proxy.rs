//! `causeway lab proxy`: the lab's service proxy, one per node, the part of
//! a simulated cluster that kube-proxy plays in a real one (DESIGN.md,
//! settled decision 10). It follows the cluster's manifest directory (the
//! same [`ManifestDirSource`] Causeway reads: Services and EndpointSlices,
//! subdirectories included, so Services without a selector whose slices
//! someone else writes work too) and programs its own nftables table,
//! [`plan::TABLE`], the way kube-proxy's nftables mode does ([`plan`]).
//! It never touches Causeway's tables; Causeway's Globalnet DNAT runs at
//! `dstnat - 20`, before this table's `dstnat` chains, so a connection that
//! Globalnet translated never reaches them.
//!
//! When an endpoint leaves a UDP Service, the UDP flows DNATed to it are
//! deleted, as kube-proxy deletes them.
//!
//! The proxy given `--allocate-from` (the lab starts node-0's with it, so a
//! cluster has exactly one) also plays the API server's ClusterIP allocator
//! ([`allocate`]): it lives beside the one watcher of the directory that
//! already runs on every cluster, and needs no network of its own.

pub mod allocate;
pub mod plan;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use causeway_api::source::{ClusterSource, ClusterState, ManifestDirSource};
use causeway_globalnet::conntrack::Conntrack;
use causeway_globalnet::nft::{Applier, Family, NftCli};
use ipnet::Ipv4Net;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How often the whole table is listed and repaired.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed update is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// `causeway lab proxy` (hidden: the lab starts it on every node).
#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArgs {
    /// The cluster's manifest directory.
    #[arg(long)]
    pub manifests: PathBuf,
    /// The cluster's pod CIDR: traffic to a ClusterIP from outside it is
    /// masqueraded, as kube-proxy's `--cluster-cidr` does.
    #[arg(long)]
    pub cluster_cidr: Ipv4Net,
    /// Also allocate ClusterIPs from this service CIDR for Services that
    /// lack one (one proxy per cluster does it).
    #[arg(long)]
    pub allocate_from: Option<Ipv4Net>,
    /// How often the manifest directory is polled, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub poll_ms: u64,
}

/// Runs the proxy until SIGTERM or SIGINT, then removes its table.
pub fn command(args: ProxyArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// Whether a Service of `state` waits for a ClusterIP.
fn wants_cluster_ip(state: &ClusterState) -> bool {
    state.services.values().any(|s| {
        s.spec.as_ref().is_some_and(|spec| {
            spec.type_.as_deref() != Some("ExternalName")
                && spec.cluster_ip.as_deref().unwrap_or("").is_empty()
        })
    })
}

async fn run(args: ProxyArgs) -> Result<()> {
    let cancel = CancellationToken::new();
    let source = ManifestDirSource::spawn(
        args.manifests.clone(),
        Duration::from_millis(args.poll_ms.max(10)),
        cancel.clone(),
    );
    let mut state = source.state();
    let applier = Arc::new(Applier::new(NftCli::new()));
    let mut allocator = args
        .allocate_from
        .map(|cidr| allocate::Allocator::new(args.manifests.clone(), cidr));
    let mut term = signal(SignalKind::terminate()).context("catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("catch SIGINT")?;
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<tokio::time::Instant> = None;
    // What the table was last brought to (UDP flows follow its endpoints).
    let mut programmed: Vec<plan::ServicePort> = Vec::new();
    tracing::info!(
        manifests = %args.manifests.display(),
        cluster_cidr = %args.cluster_cidr,
        allocate_from = ?args.allocate_from,
        "service proxy started"
    );
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let full = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                false
            }
            _ = resync.tick() => true,
            _ = retry => true,
        };
        let snapshot = state.borrow_and_update().clone();
        if !snapshot.synced {
            continue;
        }
        if let Some(a) = allocator.as_mut()
            && wants_cluster_ip(&snapshot)
            && let Err(e) = a.run()
        {
            tracing::warn!(error = %format!("{e:#}"), "could not allocate ClusterIPs");
        }
        let ports = plan::service_ports(&snapshot);
        let table = plan::plan(&ports, args.cluster_cidr);
        let departed = plan::departed_udp(&programmed, &ports);
        let a = applier.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let out = if full {
                a.reconcile(&table)
            } else {
                a.reconcile_incremental(table)
            };
            if out.is_ok() {
                for (cluster_ip, endpoint) in departed {
                    if let Err(e) = Conntrack::new().delete_udp_to_endpoint(endpoint, Some(cluster_ip))
                    {
                        tracing::warn!(%endpoint, error = %e, "could not drop UDP flows to a departed endpoint");
                    }
                }
            }
            out
        })
        .await?;
        match outcome {
            Ok(_) => {
                retry_at = None;
                programmed = ports;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not program the service proxy's table; retrying");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
    cancel.cancel();
    let a = applier.clone();
    tokio::task::spawn_blocking(move || a.remove(Family::Ip, plan::TABLE))
        .await?
        .context("remove the service proxy's table")?;
    tracing::info!("service proxy stopped; its table is removed");
    Ok(())
}
