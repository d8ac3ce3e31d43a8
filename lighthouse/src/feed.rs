//! The feed: the local store's ServiceImport and ConnectionStatus records,
//! folded into the DNS [`Index`].
//!
//! The local store holds every cluster's ServiceImports (the active gateway
//! mirrors them from the broker) and this cluster's own gateway's reports on
//! each peer (Settled decision 1). The mapping, in pure functions:
//! - a ServiceImport of cluster C becomes C's export of `<ns>/<name>`; the
//!   local cluster's own export is answered with its ClusterIPs and its
//!   endpoints' pod addresses, another cluster's with `addresses` (global IPs
//!   under Globalnet, else ClusterIPs) and endpoint `address` (Settled
//!   decision 10);
//! - a peer counts only while this cluster's gateway reports it `connected`;
//!   statuses other clusters report are not ours to act on (Settled decision
//!   9); the local cluster always counts;
//! - the import takes the type of the export that takes precedence
//!   ([`crate::export::precedence`]); exports of the other type are not
//!   answered.
//!
//! The ClusterSetIP of an import is the ClusterIP of its derived Service
//! in this cluster ([`crate::derived`]): the MCS ServiceImport's
//! `spec.ips`, read from the cluster source when the feed is given one
//! ([`cluster_set_ips`], [`apply_cluster_set_ips`]); without, the index has
//! none and `--answer clusterset-ip` answers per cluster.
//!
//! [`run_feed`] keeps an [`IndexHandle`] current from two watches. A
//! snapshot rebuilds the index; puts and deletes edit it in place, batched,
//! one publication per batch. While the store is unreachable the watch
//! retries inside the store and the last index stands.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::records::{
    AnyRecord, ClusterId as ApiClusterId, ConnectionState, Kind, RecordKey, ServiceImport,
    ServiceImportType,
};
use causeway_api::source::ClusterState;
use causeway_api::store::{RecordSet, Revision, Store, WatchEvent};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::dns::index::{
    Backing, ClusterExport, ClusterId, Endpoint, Index, IndexHandle, Protocol, ServiceKey,
    ServicePort,
};

/// Most watch events folded into one publication of the index.
const MAX_BATCH: usize = 1024;

/// The DNS cluster id of a record's cluster id (the record's rules are the
/// stricter of the two, so this fails only on a bug).
pub fn dns_cluster(id: &ApiClusterId) -> Result<ClusterId, Error> {
    ClusterId::new(id.as_str())
}

/// The service a ServiceImport record names.
pub fn service_key(import: &ServiceImport) -> Result<ServiceKey, Error> {
    ServiceKey::new(import.namespace.as_str(), import.name.as_str())
}

fn protocol(p: causeway_api::records::Protocol) -> Protocol {
    match p {
        causeway_api::records::Protocol::Tcp => Protocol::Tcp,
        causeway_api::records::Protocol::Udp => Protocol::Udp,
        causeway_api::records::Protocol::Sctp => Protocol::Sctp,
    }
}

/// One cluster's export as the DNS answers it, seen from cluster `local`.
///
/// Records list ready endpoints only; a ClusterSetIP record exists while its
/// service is exported and says when it has no ready endpoint (`unready`),
/// which the resolver answers only when no export is ready.
pub fn import_to_export(local: &ApiClusterId, import: &ServiceImport) -> ClusterExport {
    let is_local = import.cluster == *local;
    let ports = import
        .ports
        .iter()
        .map(|p| ServicePort::new(p.name.as_deref(), protocol(p.protocol), p.port))
        .collect();
    let backing = match import.kind {
        ServiceImportType::ClusterSetIP => Backing::ClusterSetIp {
            addresses: if is_local && !import.cluster_ips.is_empty() {
                import.cluster_ips.clone()
            } else {
                import.addresses.clone()
            },
            ready: !import.unready,
        },
        ServiceImportType::Headless => Backing::Headless {
            endpoints: import
                .endpoints
                .iter()
                .map(|e| {
                    let address = if is_local { e.local_address } else { e.address };
                    Endpoint::new(e.hostname.as_deref(), address, true)
                })
                .collect(),
        },
    };
    ClusterExport { ports, backing }
}

/// Gives `key` the type of the export that takes precedence: the oldest,
/// then the lowest cluster id ([`crate::export::precedence`], the rule the
/// MCS ServiceImport is merged by).
fn settle_type(index: &mut Index, key: &ServiceKey) {
    let winner = index.service(key).and_then(|s| {
        let at = |c: &ClusterId| s.exported_at.get(c).copied().unwrap_or(0);
        let age = |t: u64| if t == 0 { u64::MAX } else { t };
        s.clusters
            .iter()
            .min_by(|(a, _), (b, _)| (age(at(a)), *a).cmp(&(age(at(b)), *b)))
            .map(|(_, e)| e.backing.service_type())
    });
    if let Some(ty) = winner
        && index.service(key).is_some_and(|s| s.service_type != ty)
    {
        index.set_service_type(key, ty);
    }
}

/// The index for `records` (ServiceImports and ConnectionStatuses; other
/// kinds are ignored), seen from cluster `local`.
pub fn build_index<'a>(
    local: &ApiClusterId,
    records: impl IntoIterator<Item = &'a AnyRecord>,
) -> Result<Index, Error> {
    let mut index = Index::with_local(dns_cluster(local)?);
    let mut reachable = Vec::new();
    let mut keys = Vec::new();
    for record in records {
        match record {
            AnyRecord::ServiceImport(import) => {
                let key = service_key(import)?;
                let cluster = dns_cluster(&import.cluster)?;
                index.upsert_export(
                    key.clone(),
                    cluster.clone(),
                    import_to_export(local, import),
                );
                index.set_exported_at(&key, &cluster, import.exported_at_ms);
                keys.push(key);
            }
            AnyRecord::ConnectionStatus(status)
                if status.cluster == *local && status.state == ConnectionState::Connected =>
            {
                reachable.push(dns_cluster(&status.peer)?);
            }
            _ => {}
        }
    }
    index.replace_reachable(reachable);
    for key in keys {
        settle_type(&mut index, &key);
    }
    Ok(index)
}

/// The ClusterSetIPs (`spec.ips`) of the cluster's MCS ServiceImports, by
/// service; imports without any are left out.
pub fn cluster_set_ips(state: &ClusterState) -> BTreeMap<ServiceKey, Vec<IpAddr>> {
    state
        .service_imports
        .iter()
        .filter_map(|((ns, name), import)| {
            let ips: Vec<IpAddr> = import
                .spec
                .ips
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            let key = ServiceKey::new(ns, name).ok()?;
            (!ips.is_empty()).then_some((key, ips))
        })
        .collect()
}

/// Gives every imported service of `index` its ClusterSetIPs from `ips`
/// (none when absent); services already right are left alone.
pub fn apply_cluster_set_ips(index: &mut Index, ips: &BTreeMap<ServiceKey, Vec<IpAddr>>) {
    let changes: Vec<(ServiceKey, Vec<IpAddr>)> = index
        .services()
        .filter_map(|(key, service)| {
            let want = ips.get(key).cloned().unwrap_or_default();
            (service.cluster_set_ips != want).then(|| (key.clone(), want))
        })
        .collect();
    for (key, want) in changes {
        index.set_cluster_set_ips(&key, want);
    }
}

/// Applies one put or delete to `index` (a snapshot is handled by
/// [`build_index`]; here it is ignored).
pub fn apply_change(
    index: &mut Index,
    local: &ApiClusterId,
    event: &WatchEvent,
) -> Result<(), Error> {
    match event {
        WatchEvent::Snapshot { .. } => {}
        WatchEvent::Put { record, .. } => match record {
            AnyRecord::ServiceImport(import) => {
                let key = service_key(import)?;
                let cluster = dns_cluster(&import.cluster)?;
                index.upsert_export(
                    key.clone(),
                    cluster.clone(),
                    import_to_export(local, import),
                );
                index.set_exported_at(&key, &cluster, import.exported_at_ms);
                settle_type(index, &key);
            }
            AnyRecord::ConnectionStatus(status) if status.cluster == *local => {
                index.set_reachable(
                    dns_cluster(&status.peer)?,
                    status.state == ConnectionState::Connected,
                );
            }
            _ => {}
        },
        WatchEvent::Delete { key, .. } => apply_delete(index, local, key)?,
    }
    Ok(())
}

fn apply_delete(index: &mut Index, local: &ApiClusterId, key: &RecordKey) -> Result<(), Error> {
    match key.kind {
        Kind::ServiceImport => {
            let Some((ns, name)) = key.name.split_once('/') else {
                return Ok(());
            };
            let service = ServiceKey::new(ns, name)?;
            index.remove_export(&service, &dns_cluster(&key.cluster)?);
            settle_type(index, &service);
        }
        Kind::ConnectionStatus if key.cluster == *local => {
            // The name of a status record is the peer's id.
            index.set_reachable(ClusterId::new(&key.name)?, false);
        }
        _ => {}
    }
    Ok(())
}

/// Keeps `handle` current with the ServiceImport and ConnectionStatus
/// records of `store`, seen from cluster `local`, until `cancel` fires.
pub async fn run_feed(
    store: Arc<dyn Store>,
    local: ApiClusterId,
    handle: IndexHandle,
    cancel: CancellationToken,
) {
    feed(store, local, handle, cancel, None, None).await;
}

/// As [`run_feed`], and the ClusterSetIPs of the MCS ServiceImports that
/// `state` (the cluster source) shows.
pub async fn run_feed_with_source(
    store: Arc<dyn Store>,
    local: ApiClusterId,
    handle: IndexHandle,
    state: watch::Receiver<Arc<ClusterState>>,
    cancel: CancellationToken,
) {
    feed(store, local, handle, cancel, None, Some(state)).await;
}

/// Which of the feed's two watches an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Imports,
    Statuses,
}

struct Watch {
    kind: Kind,
    stream: BoxStream<'static, WatchEvent>,
    set: RecordSet,
}

impl Watch {
    fn new(store: &dyn Store, kind: Kind) -> Self {
        Self {
            kind,
            stream: store.watch(Some(kind), None),
            set: RecordSet::default(),
        }
    }

    /// Watches again from the last revision seen (the store's streams are
    /// not meant to end; this is a guard, not the retry path).
    fn restart(&mut self, store: &dyn Store) {
        let from: Option<Revision> = self.set.is_synced().then(|| self.set.revision());
        self.stream = store.watch(Some(self.kind), from);
    }
}

/// The feed loop; `synced` fires once both watches have delivered their
/// first snapshot.
pub(crate) async fn feed(
    store: Arc<dyn Store>,
    local: ApiClusterId,
    handle: IndexHandle,
    cancel: CancellationToken,
    mut synced: Option<oneshot::Sender<()>>,
    mut state: Option<watch::Receiver<Arc<ClusterState>>>,
) {
    let ips_now = |state: &Option<watch::Receiver<Arc<ClusterState>>>| {
        state.as_ref().map(|rx| cluster_set_ips(&rx.borrow()))
    };
    match dns_cluster(&local) {
        Ok(id) if handle.load().local() != Some(&id) => handle.update(|i| i.set_local(id.clone())),
        Ok(_) => {}
        Err(error) => warn!(%error, "local cluster id is not a DNS label"),
    }
    let mut imports = Watch::new(&*store, Kind::ServiceImport);
    let mut statuses = Watch::new(&*store, Kind::ConnectionStatus);
    loop {
        let (what, first) = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = imports.stream.next() => (Watched::Imports, ev),
            ev = statuses.stream.next() => (Watched::Statuses, ev),
            changed = async {
                match state.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                match changed {
                    Ok(()) => {
                        if let Some(ips) = ips_now(&state) {
                            handle.update(|index| apply_cluster_set_ips(index, &ips));
                        }
                    }
                    // The source stopped: its last ClusterSetIPs stand.
                    Err(_) => state = None,
                }
                continue;
            }
        };
        let watch = if what == Watched::Imports {
            &mut imports
        } else {
            &mut statuses
        };
        let Some(first) = first else {
            warn!(kind = %watch.kind, "store watch ended; watching again");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            watch.restart(&*store);
            continue;
        };
        // Take what else is ready on this watch, so a burst publishes once.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match futures::FutureExt::now_or_never(watch.stream.next()) {
                Some(Some(ev)) => batch.push(ev),
                _ => break,
            }
        }
        let snapshot = batch
            .iter()
            .any(|e| matches!(e, WatchEvent::Snapshot { .. }));
        for ev in &batch {
            watch.set.apply(ev.clone());
        }
        if snapshot {
            // Rebuild from both sets, keeping what the other watch knows.
            match build_index(&local, imports.set.iter().chain(statuses.set.iter())) {
                Ok(mut index) => {
                    if let Some(ips) = ips_now(&state) {
                        apply_cluster_set_ips(&mut index, &ips);
                    }
                    info!(
                        services = index.services().count(),
                        kind = ?what,
                        "DNS index rebuilt from a store listing"
                    );
                    handle.store(index);
                }
                Err(error) => warn!(%error, "rebuild DNS index"),
            }
        } else {
            let ips = ips_now(&state);
            handle.update(|index| {
                for ev in &batch {
                    if let Err(error) = apply_change(index, &local, ev) {
                        warn!(%error, "skip a record the DNS index cannot hold");
                    }
                }
                if let Some(ips) = &ips {
                    apply_cluster_set_ips(index, ips);
                }
            });
            debug!(events = batch.len(), kind = ?what, "DNS index updated");
        }
        if imports.set.is_synced()
            && statuses.set.is_synced()
            && let Some(tx) = synced.take()
        {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests;
