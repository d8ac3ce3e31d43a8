//! The derived Service of each import and its MCS EndpointSlices: what
//! makes the ClusterSetIP carry traffic through the cluster's own service
//! proxy.
//!
//! [`plan_derived`] is pure: the ServiceImport records of the local store,
//! the peers this cluster's own gateway reports `connected` (Settled
//! decision 9) and the cluster source's state -> for every import the
//! cluster holds, a selector-less Service named [`derived_service_name`]
//! (ClusterIP, or `None` for Headless) and one EndpointSlice per source
//! cluster and address family, listing what this cluster can reach of it:
//! - a remote ClusterSetIP export: under Globalnet its record's
//!   `addresses` (the global ingress IP) on the import's port numbers;
//!   without, the ready pods its record lists (`pods`) on their target
//!   ports (a record of an older writer without them: its ClusterIP);
//! - a remote Headless export: its endpoints' addresses with hostnames;
//! - the local export: the ready endpoints of the local Service's own
//!   EndpointSlices, on their target ports.
//!
//! Strict ports: a cluster's slice lists only the import's ports that the
//! cluster exports with the same name, number and protocol. A peer that is
//! not `connected`, or whose export has no ready endpoint, has no
//! slice; it comes back when it recovers. Each source cluster is one slice
//! and every endpoint one backend, so a service proxy that balances over
//! endpoints weighs clusters by how many endpoints they list (one per
//! ClusterSetIP export, one per pod locally and for Headless).
//!
//! [`diff_derived`] compares the plan with what the source shows (only
//! objects labelled `causeway.io/managed-by: derived-controller` are ever
//! deleted); [`DerivedController`] applies the difference through a
//! [`DerivedWriter`]. [`annotate_imports`] gives the import controller's
//! ServiceImports their derived Service's name and, once the cluster
//! allocated one, its ClusterIP as `spec.ips`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::mcs::{
    self, DERIVED_MANAGED_BY, DERIVED_SERVICE_ANNOTATION, Derived, DerivedWriter, MANAGED_BY_LABEL,
    MCS_SERVICE_NAME_LABEL, SERVICE_NAME_LABEL, SLICE_MANAGED_BY_LABEL, SLICE_MANAGER,
    SOURCE_CLUSTER_LABEL, derived_service_name,
};
use causeway_api::records::{
    ClusterId, ConnectionState, ConnectionStatus, Kind, Protocol, ServiceImport, ServiceImportType,
    SessionAffinity,
};
use causeway_api::source::{ClusterState, ObjectKey};
use causeway_api::store::{RecordSet, Store};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort as KubeServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::follow::Followed;
use crate::import::merge;
use crate::pacing::Pacing;

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn is_ours(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == DERIVED_MANAGED_BY)
}

/// The peers cluster `local`'s own gateway reports `connected`.
pub fn connected_peers<'a>(
    local: &ClusterId,
    statuses: impl IntoIterator<Item = &'a ConnectionStatus>,
) -> BTreeSet<ClusterId> {
    statuses
        .into_iter()
        .filter(|s| s.cluster == *local && s.state == ConnectionState::Connected)
        .map(|s| s.peer.clone())
        .collect()
}

/// One endpoint of a slice being built.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Backend {
    address: IpAddr,
    hostname: Option<String>,
}

/// `(name, number, protocol)` of a slice port.
type SlicePort = (Option<String>, i32, &'static str);

fn address_type(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// The slices of one source cluster: one per address family.
fn slices_of(
    namespace: &str,
    import: &str,
    derived: &str,
    cluster: &ClusterId,
    backends: &BTreeSet<Backend>,
    ports: &[SlicePort],
) -> Vec<EndpointSlice> {
    if ports.is_empty() {
        return Vec::new();
    }
    let mut by_family: BTreeMap<&'static str, Vec<&Backend>> = BTreeMap::new();
    for b in backends {
        by_family
            .entry(address_type(&b.address))
            .or_default()
            .push(b);
    }
    by_family
        .into_iter()
        .map(|(family, backends)| {
            let name = if family == "IPv4" {
                format!("{derived}-{cluster}")
            } else {
                format!("{derived}-{cluster}-ipv6")
            };
            let labels = BTreeMap::from([
                (MCS_SERVICE_NAME_LABEL.to_owned(), import.to_owned()),
                (SERVICE_NAME_LABEL.to_owned(), derived.to_owned()),
                (SOURCE_CLUSTER_LABEL.to_owned(), cluster.to_string()),
                (SLICE_MANAGED_BY_LABEL.to_owned(), SLICE_MANAGER.to_owned()),
                (MANAGED_BY_LABEL.to_owned(), DERIVED_MANAGED_BY.to_owned()),
            ]);
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                address_type: family.to_owned(),
                endpoints: backends
                    .into_iter()
                    .map(|b| Endpoint {
                        addresses: vec![b.address.to_string()],
                        hostname: b.hostname.clone(),
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: name.clone(),
                            port: Some(*port),
                            protocol: Some((*protocol).to_owned()),
                            ..EndpointPort::default()
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// The local export's backends and ports: the ready endpoints of the
/// Service's own slices, with the target port of every import port the
/// Service serves under the same name, number and protocol.
fn local_backends(
    state: &ClusterState,
    record: &ServiceImport,
    import_ports: &[causeway_api::records::ServicePort],
) -> (BTreeSet<Backend>, Vec<SlicePort>) {
    let (ns, name) = (record.namespace.as_str(), record.name.as_str());
    let mut backends = BTreeSet::new();
    let mut ports: BTreeSet<SlicePort> = BTreeSet::new();
    for slice in state.slices_of(ns, name) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for e in &slice.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(address)) = (ready, e.addresses.first().and_then(|a| a.parse().ok()))
            {
                backends.insert(Backend {
                    address,
                    hostname: e.hostname.clone(),
                });
            }
        }
        for p in import_ports.iter().filter(|p| record.ports.contains(p)) {
            let protocol = protocol_name(p.protocol);
            let target = slice.ports.iter().flatten().find(|sp| {
                sp.name.as_deref().unwrap_or("") == p.name.as_deref().unwrap_or("")
                    && sp.protocol.as_deref().unwrap_or("TCP") == protocol
            });
            if let Some(number) = target.and_then(|t| t.port) {
                ports.insert((p.name.clone(), number, protocol));
            }
        }
    }
    (backends, ports.into_iter().collect())
}

/// The derived objects of every import cluster `local` holds (keyed by the
/// import's namespace and name), from the ServiceImport records of its
/// store, the peers its gateway reports connected, and the cluster's state.
pub fn plan_derived<'a>(
    local: &ClusterId,
    records: impl IntoIterator<Item = &'a ServiceImport>,
    connected: &BTreeSet<ClusterId>,
    state: &ClusterState,
) -> BTreeMap<ObjectKey, Derived> {
    let namespaces = state.namespace_names();
    let mut by_service: BTreeMap<ObjectKey, Vec<&ServiceImport>> = BTreeMap::new();
    for r in records {
        if namespaces.contains(r.namespace.as_str()) {
            by_service
                .entry((r.namespace.to_string(), r.name.to_string()))
                .or_default()
                .push(r);
        }
    }
    let mut out = BTreeMap::new();
    for ((ns, name), records) in by_service {
        let Some(merged) = merge(records.iter().copied()) else {
            continue;
        };
        let derived = derived_service_name(&ns, &name);
        let observed = state.services.get(&(ns.clone(), derived.clone()));
        let service = derived_service(&ns, &name, &derived, &merged, observed);
        let mut slices = BTreeMap::new();
        for r in &records {
            // Exports of the losing type are not served (as in DNS).
            if r.kind != merged.kind {
                continue;
            }
            let (backends, ports): (BTreeSet<Backend>, Vec<SlicePort>) = if r.cluster == *local {
                local_backends(state, r, &merged.ports)
            } else if !connected.contains(&r.cluster) || r.unready {
                continue;
            } else if let Some(pods) = r.pods.as_ref().filter(|_| r.kind == merged.kind) {
                // Without Globalnet: the pods themselves, on their ports.
                let ports = merged
                    .ports
                    .iter()
                    .filter(|p| r.ports.contains(p))
                    .filter_map(|p| pods.ports.iter().find(|t| t.service == *p))
                    .map(|t| {
                        (
                            t.service.name.clone(),
                            i32::from(t.target),
                            protocol_name(t.service.protocol),
                        )
                    })
                    .collect();
                let backends = pods
                    .addresses
                    .iter()
                    .map(|a| Backend {
                        address: *a,
                        hostname: None,
                    })
                    .collect();
                (backends, ports)
            } else {
                let ports = merged
                    .ports
                    .iter()
                    .filter(|p| r.ports.contains(p))
                    .map(|p| (p.name.clone(), i32::from(p.port), protocol_name(p.protocol)))
                    .collect();
                let backends = match r.kind {
                    ServiceImportType::ClusterSetIP => r
                        .addresses
                        .iter()
                        .map(|a| Backend {
                            address: *a,
                            hostname: None,
                        })
                        .collect(),
                    ServiceImportType::Headless => r
                        .endpoints
                        .iter()
                        .map(|e| Backend {
                            address: e.address,
                            hostname: e.hostname.clone(),
                        })
                        .collect(),
                };
                (backends, ports)
            };
            for slice in slices_of(&ns, &name, &derived, &r.cluster, &backends, &ports) {
                slices.insert(slice.metadata.name.clone().unwrap_or_default(), slice);
            }
        }
        out.insert(
            (ns.clone(), name.clone()),
            Derived {
                namespace: ns,
                import: name,
                service,
                slices,
            },
        );
    }
    out
}

/// The derived Service: selector-less, the import's ports and session
/// affinity; an allocated ClusterIP the cluster shows is kept.
fn derived_service(
    ns: &str,
    name: &str,
    derived: &str,
    merged: &crate::import::Merged,
    observed: Option<&Service>,
) -> Service {
    let p = &merged.properties;
    let headless = merged.kind == ServiceImportType::Headless;
    let observed_spec = observed.and_then(|s| s.spec.as_ref());
    let (cluster_ip, cluster_ips, ip_families) = if headless {
        (Some("None".to_owned()), None, None)
    } else {
        (
            observed_spec
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| !ip.is_empty() && ip != "None"),
            observed_spec
                .and_then(|s| s.cluster_ips.clone())
                .filter(|ips| !ips.is_empty() && ips.iter().all(|ip| ip != "None")),
            observed_spec
                .filter(|s| s.cluster_ip.as_deref().is_some_and(|ip| ip != "None"))
                .and_then(|s| s.ip_families.clone()),
        )
    };
    let client_ip = p.session_affinity == SessionAffinity::ClientIp;
    Service {
        metadata: ObjectMeta {
            name: Some(derived.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), DERIVED_MANAGED_BY.to_owned()),
                (MCS_SERVICE_NAME_LABEL.to_owned(), name.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip,
            cluster_ips,
            ip_families,
            ports: Some(
                merged
                    .ports
                    .iter()
                    .map(|sp| KubeServicePort {
                        name: sp.name.clone(),
                        port: i32::from(sp.port),
                        protocol: Some(protocol_name(sp.protocol).to_owned()),
                        ..KubeServicePort::default()
                    })
                    .collect(),
            ),
            session_affinity: Some(if client_ip { "ClientIP" } else { "None" }.to_owned()),
            session_affinity_config: client_ip.then(|| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(
                        p.session_affinity_config
                            .as_ref()
                            .and_then(|c| c.client_ip.as_ref())
                            .and_then(|c| c.timeout_seconds)
                            .and_then(|t| i32::try_from(t).ok())
                            .unwrap_or(10_800),
                    ),
                }),
            }),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Sets each import's derived-Service annotation and, for a ClusterSetIP
/// import whose derived Service has its ClusterIP(s), `spec.ips` and
/// `spec.ipFamilies` from it.
pub fn annotate_imports(
    imports: &mut BTreeMap<ObjectKey, mcs::ServiceImport>,
    state: &ClusterState,
) {
    for ((ns, name), import) in imports.iter_mut() {
        let derived = derived_service_name(ns, name);
        import
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(DERIVED_SERVICE_ANNOTATION.to_owned(), derived.clone());
        if import.spec.type_ != "ClusterSetIP" {
            continue;
        }
        let Some(spec) = state
            .services
            .get(&(ns.clone(), derived))
            .and_then(|s| s.spec.as_ref())
        else {
            continue;
        };
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.clone());
        }
        ips.retain(|ip| ip.parse::<IpAddr>().is_ok());
        if ips.is_empty() {
            continue;
        }
        let families: Vec<String> = ips
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| address_type(&ip).to_owned())
            .collect();
        import.spec.ips = ips;
        import.spec.ip_families = families;
    }
}

/// A Service as far as the derived plan decides it (API-server defaults
/// filled in), for comparison.
fn service_view(s: &Service) -> impl PartialEq + std::fmt::Debug {
    let spec = s.spec.clone().unwrap_or_default();
    let ports: Vec<(Option<String>, i32, String)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone(),
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            )
        })
        .collect();
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    let affinity = spec.session_affinity.unwrap_or_else(|| "None".into());
    (
        labels_of(&s.metadata),
        spec.type_.unwrap_or_else(|| "ClusterIP".into()),
        spec.selector.unwrap_or_default(),
        spec.cluster_ip.as_deref() == Some("None"),
        ports,
        (
            affinity.clone(),
            (affinity == "ClientIP").then_some(timeout),
        ),
    )
}

fn slice_view(s: &EndpointSlice) -> impl PartialEq + std::fmt::Debug {
    let endpoints: Vec<(Vec<String>, Option<String>, bool)> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses.clone(),
                e.hostname.clone(),
                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            )
        })
        .collect();
    let ports: Vec<(Option<String>, Option<i32>, String)> = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone(),
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            )
        })
        .collect();
    (
        labels_of(&s.metadata),
        s.address_type.clone(),
        endpoints,
        ports,
    )
}

/// What the source shows of Causeway's derived objects: the Service (if
/// any) and the slices, by import.
#[derive(Debug, Default)]
struct Observed<'a> {
    service: Option<&'a Service>,
    slices: BTreeMap<String, &'a EndpointSlice>,
}

fn observed(state: &ClusterState) -> BTreeMap<ObjectKey, Observed<'_>> {
    let mut out: BTreeMap<ObjectKey, Observed<'_>> = BTreeMap::new();
    let import_of = |meta: &ObjectMeta| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(MCS_SERVICE_NAME_LABEL))
            .cloned()
    };
    for ((ns, _), s) in &state.services {
        if is_ours(&s.metadata)
            && let Some(import) = import_of(&s.metadata)
        {
            out.entry((ns.clone(), import)).or_default().service = Some(s);
        }
    }
    for ((ns, name), s) in &state.endpoint_slices {
        if is_ours(&s.metadata)
            && let Some(import) = import_of(&s.metadata)
        {
            out.entry((ns.clone(), import))
                .or_default()
                .slices
                .insert(name.clone(), s);
        }
    }
    out
}

/// What to change so the cluster holds the planned derived objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DerivedChanges {
    /// Write these, deleting the named stale slices.
    pub apply: BTreeMap<ObjectKey, (Derived, BTreeSet<String>)>,
    /// Delete these imports' derived Services and the named slices.
    pub delete: BTreeMap<ObjectKey, BTreeSet<String>>,
}

impl DerivedChanges {
    /// True when nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

/// The changes that turn what `state` shows into `desired`. Only objects
/// labelled as the derived controller's are deleted.
pub fn diff_derived(
    desired: &BTreeMap<ObjectKey, Derived>,
    state: &ClusterState,
) -> DerivedChanges {
    let observed = observed(state);
    let mut changes = DerivedChanges::default();
    for (key, d) in desired {
        let o = observed.get(key);
        let stale: BTreeSet<String> = o
            .map(|o| {
                o.slices
                    .keys()
                    .filter(|n| !d.slices.contains_key(*n))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let service_shown = o
            .and_then(|o| o.service)
            .is_some_and(|s| service_view(s) == service_view(&d.service));
        let slices_shown = d.slices.iter().all(|(n, s)| {
            o.and_then(|o| o.slices.get(n))
                .is_some_and(|os| slice_view(os) == slice_view(s))
        });
        if !service_shown || !slices_shown || !stale.is_empty() {
            changes.apply.insert(key.clone(), (d.clone(), stale));
        }
    }
    for (key, o) in observed {
        if !desired.contains_key(&key) {
            changes
                .delete
                .insert(key, o.slices.keys().cloned().collect());
        }
    }
    changes
}

/// How the derived controller runs.
#[derive(Debug, Clone)]
pub struct DerivedControllerOptions {
    /// Converge this often even without a change.
    pub resync_interval: Duration,
    /// Retry this soon after a write failed.
    pub retry_interval: Duration,
    /// A write the source does not show yet is not repeated for this long.
    pub settle: Duration,
}

impl Default for DerivedControllerOptions {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
            settle: Duration::from_secs(5),
        }
    }
}

/// Keeps the cluster's derived Services and MCS EndpointSlices in line with
/// the ServiceImport and ConnectionStatus records of the cluster's own
/// store (run by the active gateway, beside the import controller).
pub struct DerivedController {
    local: ClusterId,
    state: watch::Receiver<Arc<ClusterState>>,
    store: Arc<dyn Store>,
    writer: Arc<dyn DerivedWriter>,
    options: DerivedControllerOptions,
    /// What was last written (`None`: deleted), and when.
    written: BTreeMap<ObjectKey, (Option<Derived>, Instant)>,
    pacing: Pacing,
}

impl DerivedController {
    /// A controller for cluster `local` following `store` and writing
    /// through `writer`.
    pub fn new(
        local: ClusterId,
        state: watch::Receiver<Arc<ClusterState>>,
        store: Arc<dyn Store>,
        writer: Arc<dyn DerivedWriter>,
        options: DerivedControllerOptions,
    ) -> Self {
        Self {
            local,
            state,
            store,
            writer,
            options,
            written: BTreeMap::new(),
            pacing: Pacing::default(),
        }
    }

    /// Runs until `cancel` fires. Derived objects stay when it stops: the
    /// next active gateway adopts them, and traffic goes on.
    #[instrument(name = "derived_controller", skip_all, fields(cluster = %self.local))]
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut imports = Followed::new(self.store.clone(), Kind::ServiceImport);
        let mut statuses = Followed::new(self.store.clone(), Kind::ConnectionStatus);
        let mut source_open = true;
        let mut next = Instant::now();
        info!("derived controller started");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = self.state.changed(), if source_open => {
                    source_open = changed.is_ok();
                }
                _ = imports.changed() => {}
                _ = statuses.changed() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
            next = Instant::now() + self.reconcile(&imports.records, &statuses.records).await;
        }
        info!("derived controller stopped");
    }

    /// One plan-and-apply pass; returns when to run again at the latest.
    async fn reconcile(&mut self, imports: &RecordSet, statuses: &RecordSet) -> Duration {
        let state = self.state.borrow().clone();
        if !state.synced || !imports.is_synced() || !statuses.is_synced() {
            return self.options.retry_interval;
        }
        let records: Vec<ServiceImport> = imports.typed::<ServiceImport>().collect();
        let reports: Vec<ConnectionStatus> = statuses.typed::<ConnectionStatus>().collect();
        let connected = connected_peers(&self.local, &reports);
        let desired = plan_derived(&self.local, &records, &connected, &state);
        let changes = diff_derived(&desired, &state);
        let now = Instant::now();
        let settle = self.options.settle;
        // Forget writes the source shows, or that had time to show.
        let pending: BTreeSet<&ObjectKey> =
            changes.apply.keys().chain(changes.delete.keys()).collect();
        self.written
            .retain(|k, (_, at)| pending.contains(k) && now.duration_since(*at) < settle);
        let mut ok = true;
        let mut done = 0;
        for (key, (derived, stale)) in changes.apply {
            if self
                .written
                .get(&key)
                .is_some_and(|(w, _)| w.as_ref() == Some(&derived))
            {
                continue;
            }
            match self.writer.apply(&derived, &stale).await {
                Ok(()) => {
                    done += 1;
                    self.written.insert(key, (Some(derived), now));
                }
                Err(error) => {
                    warn!(%error, "write derived Service; retrying");
                    ok = false;
                }
            }
        }
        for (key, slices) in changes.delete {
            if self.written.get(&key).is_some_and(|(w, _)| w.is_none()) {
                continue;
            }
            match self.writer.delete(&key.0, &key.1, &slices).await {
                Ok(()) => {
                    done += 1;
                    self.written.insert(key, (None, now));
                }
                Err(error) => {
                    warn!(%error, "delete derived Service; retrying");
                    ok = false;
                }
            }
        }
        if done > 0 {
            info!(
                changes = done,
                imports = desired.len(),
                "derived Services converged"
            );
        }
        self.pacing.after_pass(
            ok,
            !self.written.is_empty(),
            self.options.retry_interval,
            settle,
            self.options.resync_interval,
        )
    }
}

#[cfg(test)]
mod tests;
