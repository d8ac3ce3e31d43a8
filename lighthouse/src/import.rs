//! The MCS ServiceImport of each exported service, as v1beta1 defines it:
//! one object per namespace/name, merged from every cluster's export of it,
//! present in every cluster that has the namespace.
//!
//! [`merge`] is pure: the ServiceImport records of one service (one per
//! exporting cluster) -> [`Merged`]: type, session affinity, policies, IP
//! families, labels and annotations of the oldest export (creationTimestamp,
//! then cluster id: [`crate::export::precedence`]); ports merged (a name
//! that comes back with another number keeps the oldest's, other names add
//! up); every disagreement as a [`ConflictKind`]. The export agent turns the
//! conflicts into each constituent ServiceExport's `Conflict` condition.
//!
//! [`plan_imports`] is pure too: every record in the local store (the
//! cluster's own and the mirrored ones) and the cluster's namespaces -> the
//! ServiceImports the cluster should hold; [`diff_imports`] compares them
//! with those the cluster source shows. [`ImportController`] (started by
//! the export agent when the source takes writes) applies the difference
//! through an [`ImportWriter`] on every change and every resync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::mcs::{
    self, ClusterStatus, ImportWriter, MANAGED_BY, MANAGED_BY_LABEL, McsClientIpConfig,
    McsServicePort, McsSessionAffinityConfig, ServiceImportSpec, ServiceImportStatus,
};
use causeway_api::records::{
    ClusterId, ExportProperties, Kind, Protocol, ServiceImport, ServiceImportType, ServicePort,
    SessionAffinity,
};
use causeway_api::source::{ClusterState, ObjectKey};
use causeway_api::store::{RecordSet, Store};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::export::precedence;
use crate::follow::Followed;
use crate::pacing::Pacing;

/// What constituent exports of one service can disagree on, in the order
/// their reasons are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictKind {
    /// ClusterSetIP against Headless.
    Type,
    /// One port name (or pair) with different numbers (or names), or an
    /// export without a port of the union.
    Port,
    /// `sessionAffinity`.
    SessionAffinity,
    /// `sessionAffinityConfig` (the ClientIP timeout).
    SessionAffinityConfig,
    /// The ServiceExports' `exportedLabels`.
    Labels,
    /// The ServiceExports' `exportedAnnotations`.
    Annotations,
    /// `internalTrafficPolicy`.
    InternalTrafficPolicy,
    /// `trafficDistribution`.
    TrafficDistribution,
    /// `ipFamilies`.
    IpFamily,
}

impl ConflictKind {
    /// The MCS reason of the `Conflict` condition.
    pub fn reason(self) -> &'static str {
        match self {
            ConflictKind::Type => "TypeConflict",
            ConflictKind::Port => "PortConflict",
            ConflictKind::SessionAffinity => "SessionAffinityConflict",
            ConflictKind::SessionAffinityConfig => "SessionAffinityConfigConflict",
            ConflictKind::Labels => "LabelsConflict",
            ConflictKind::Annotations => "AnnotationsConflict",
            ConflictKind::InternalTrafficPolicy => "InternalTrafficPolicyConflict",
            ConflictKind::TrafficDistribution => "TrafficDistributionConflict",
            ConflictKind::IpFamily => "IPFamilyConflict",
        }
    }
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// One service's exports merged into its MCS ServiceImport.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The export whose fields stand: the oldest.
    pub winner: ClusterId,
    /// The winner's type.
    pub kind: ServiceImportType,
    /// The winner's ports, then every other export's ports that clash with
    /// none merged before them (in precedence order).
    pub ports: Vec<ServicePort>,
    /// The ClusterSetIPs, one per IP family; empty until allocated (and
    /// always for Headless).
    pub ips: Vec<IpAddr>,
    /// The winner's session affinity, policies, IP families, labels and
    /// annotations.
    pub properties: ExportProperties,
    /// Every exporting cluster.
    pub clusters: BTreeSet<ClusterId>,
    /// Each disagreement with the winner, explained.
    pub conflicts: BTreeMap<ConflictKind, Vec<String>>,
}

fn describe_port(p: &ServicePort) -> String {
    let protocol = match p.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    };
    match &p.name {
        Some(n) => format!("{n}={}/{protocol}", p.port),
        None => format!("{}/{protocol}", p.port),
    }
}

/// MCS port conflict: one name (the empty name included) for different
/// port/protocol pairs, or one pair under different names.
pub fn ports_clash(a: &ServicePort, b: &ServicePort) -> bool {
    (a.name == b.name) != (a.port == b.port && a.protocol == b.protocol)
}

fn affinity_timeout(p: &ExportProperties) -> Option<u32> {
    (p.session_affinity == SessionAffinity::ClientIp).then(|| {
        p.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    })
}

fn policy(p: &ExportProperties) -> &str {
    p.internal_traffic_policy.as_deref().unwrap_or("Cluster")
}

fn show<T: fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// Merges the ServiceImport records of one service (the first record of
/// each cluster counts). `None` when there are none.
pub fn merge<'a>(records: impl IntoIterator<Item = &'a ServiceImport>) -> Option<Merged> {
    let mut by_cluster: BTreeMap<&ClusterId, &ServiceImport> = BTreeMap::new();
    for r in records {
        by_cluster.entry(&r.cluster).or_insert(r);
    }
    let mut ordered: Vec<&ServiceImport> = by_cluster.into_values().collect();
    ordered.sort_by(|a, b| {
        precedence(
            (&a.cluster, a.exported_at_ms),
            (&b.cluster, b.exported_at_ms),
        )
    });
    let winner = *ordered.first()?;
    let mut conflicts: BTreeMap<ConflictKind, Vec<String>> = BTreeMap::new();
    let mut note = |kind: ConflictKind, text: String| conflicts.entry(kind).or_default().push(text);
    let w = &winner.properties;
    let wc = &winner.cluster;
    for other in &ordered[1..] {
        let (o, c) = (&other.properties, &other.cluster);
        if other.kind != winner.kind {
            note(
                ConflictKind::Type,
                format!(
                    "cluster {c} exports {:?}, cluster {wc} {:?}",
                    other.kind, winner.kind
                ),
            );
        }
        if o.session_affinity != w.session_affinity {
            note(
                ConflictKind::SessionAffinity,
                format!(
                    "cluster {c} has session affinity {}, cluster {wc} {}",
                    show(&o.session_affinity),
                    show(&w.session_affinity)
                ),
            );
        } else if affinity_timeout(o) != affinity_timeout(w) {
            note(
                ConflictKind::SessionAffinityConfig,
                format!(
                    "cluster {c} keeps ClientIP affinity {} s, cluster {wc} {} s",
                    affinity_timeout(o).unwrap_or_default(),
                    affinity_timeout(w).unwrap_or_default()
                ),
            );
        }
        if o.exported_labels != w.exported_labels {
            note(
                ConflictKind::Labels,
                format!(
                    "cluster {c} exports labels {:?}, cluster {wc} {:?}",
                    o.exported_labels, w.exported_labels
                ),
            );
        }
        if o.exported_annotations != w.exported_annotations {
            note(
                ConflictKind::Annotations,
                format!(
                    "cluster {c} exports annotations {:?}, cluster {wc} {:?}",
                    o.exported_annotations, w.exported_annotations
                ),
            );
        }
        if policy(o) != policy(w) {
            note(
                ConflictKind::InternalTrafficPolicy,
                format!(
                    "cluster {c} has internal traffic policy {}, cluster {wc} {}",
                    policy(o),
                    policy(w)
                ),
            );
        }
        if o.traffic_distribution != w.traffic_distribution {
            note(
                ConflictKind::TrafficDistribution,
                format!(
                    "cluster {c} has traffic distribution {}, cluster {wc} {}",
                    o.traffic_distribution.as_deref().unwrap_or("unset"),
                    w.traffic_distribution.as_deref().unwrap_or("unset")
                ),
            );
        }
        let families =
            |p: &ExportProperties| p.ip_families.iter().copied().collect::<BTreeSet<_>>();
        if !o.ip_families.is_empty() && !w.ip_families.is_empty() && families(o) != families(w) {
            note(
                ConflictKind::IpFamily,
                format!(
                    "cluster {c} serves {:?}, cluster {wc} {:?}",
                    o.ip_families, w.ip_families
                ),
            );
        }
    }
    // Ports: in precedence order, each port joins unless it clashes with
    // one merged before it (which then stands).
    let mut ports: Vec<(&ClusterId, &ServicePort)> = Vec::new();
    for r in &ordered {
        for p in &r.ports {
            if let Some((c, m)) = ports.iter().find(|(_, m)| ports_clash(p, m)) {
                note(
                    ConflictKind::Port,
                    format!(
                        "port {} of cluster {} clashes with {} of cluster {c}",
                        describe_port(p),
                        r.cluster,
                        describe_port(m)
                    ),
                );
            } else if !ports.iter().any(|(_, m)| *m == p) {
                ports.push((&r.cluster, p));
            }
        }
    }
    // The union serves every port, yet exports that differ in their ports
    // still disagree (the conformance suite's "expose the union of the
    // constituent service ports and raise a conflict").
    for r in &ordered {
        for (c, m) in &ports {
            if **c != r.cluster && !r.ports.contains(m) {
                note(
                    ConflictKind::Port,
                    format!(
                        "cluster {} does not export port {} of cluster {c}",
                        r.cluster,
                        describe_port(m)
                    ),
                );
            }
        }
    }
    Some(Merged {
        namespace: winner.namespace.to_string(),
        name: winner.name.to_string(),
        winner: winner.cluster.clone(),
        kind: winner.kind,
        ports: ports.into_iter().map(|(_, p)| p.clone()).collect(),
        ips: Vec::new(),
        properties: (*winner.properties).clone(),
        clusters: ordered.iter().map(|r| r.cluster.clone()).collect(),
        conflicts,
    })
}

impl Merged {
    /// The reasons of the `Conflict` condition, comma-joined; `None` when
    /// the exports agree.
    pub fn conflict_reason(&self) -> Option<String> {
        (!self.conflicts.is_empty()).then(|| {
            self.conflicts
                .keys()
                .map(|k| k.reason())
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// What a user reads in the `Conflict` condition of `cluster`'s export.
    pub fn conflict_message(&self, cluster: &ClusterId) -> String {
        let standing = if *cluster == self.winner {
            "this export is the oldest and its fields stand".to_owned()
        } else {
            format!(
                "cluster {}'s export is the oldest and its fields stand",
                self.winner
            )
        };
        if self.conflicts.is_empty() {
            return format!("the {} export(s) agree; {standing}", self.clusters.len());
        }
        let details: Vec<&str> = self
            .conflicts
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        format!("{}; {standing}", details.join("; "))
    }

    /// The MCS ServiceImport (v1beta1) of this merge: the winner's fields,
    /// the exported labels and annotations (and Causeway's managed-by
    /// label), and the exporting clusters in its status.
    pub fn to_mcs(&self) -> mcs::ServiceImport {
        let p = &self.properties;
        let protocol = |p: Protocol| match p {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        };
        let spec = ServiceImportSpec {
            type_: match self.kind {
                ServiceImportType::ClusterSetIP => "ClusterSetIP",
                ServiceImportType::Headless => "Headless",
            }
            .to_owned(),
            ips: self.ips.iter().map(ToString::to_string).collect(),
            ports: self
                .ports
                .iter()
                .map(|s| McsServicePort {
                    name: s.name.clone(),
                    protocol: Some(protocol(s.protocol).to_owned()),
                    app_protocol: None,
                    port: i32::from(s.port),
                })
                .collect(),
            session_affinity: Some(
                match p.session_affinity {
                    SessionAffinity::None => "None",
                    SessionAffinity::ClientIp => "ClientIP",
                }
                .to_owned(),
            ),
            session_affinity_config: p.session_affinity_config.as_ref().map(|c| {
                McsSessionAffinityConfig {
                    client_ip: c.client_ip.as_ref().map(|c| McsClientIpConfig {
                        timeout_seconds: c.timeout_seconds.and_then(|t| i32::try_from(t).ok()),
                    }),
                }
            }),
            ip_families: p.ip_families.iter().map(show).collect(),
            internal_traffic_policy: p.internal_traffic_policy.clone(),
            traffic_distribution: p.traffic_distribution.clone(),
        };
        let mut object = mcs::ServiceImport::new(&self.name, spec);
        object.metadata.namespace = Some(self.namespace.clone());
        let mut labels = p.exported_labels.clone();
        // Ours last: an exported label of the same key cannot disown the import.
        labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        object.metadata.labels = Some(labels);
        object.metadata.annotations =
            (!p.exported_annotations.is_empty()).then(|| p.exported_annotations.clone());
        object.status = Some(ServiceImportStatus {
            clusters: self
                .clusters
                .iter()
                .map(|c| ClusterStatus {
                    cluster: c.to_string(),
                })
                .collect(),
            conditions: Vec::new(),
        });
        object
    }
}

/// The ServiceImports the cluster should hold: one per exported service
/// whose namespace exists here.
pub fn plan_imports<'a>(
    records: impl IntoIterator<Item = &'a ServiceImport>,
    namespaces: &BTreeSet<String>,
) -> BTreeMap<ObjectKey, mcs::ServiceImport> {
    let mut by_service: BTreeMap<ObjectKey, Vec<&ServiceImport>> = BTreeMap::new();
    for r in records {
        if namespaces.contains(r.namespace.as_str()) {
            by_service
                .entry((r.namespace.to_string(), r.name.to_string()))
                .or_default()
                .push(r);
        }
    }
    by_service
        .into_iter()
        .filter_map(|(key, records)| merge(records).map(|m| (key, m.to_mcs())))
        .collect()
}

/// What to change so the cluster holds the planned imports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportChanges {
    /// Create or update these.
    pub apply: BTreeMap<ObjectKey, mcs::ServiceImport>,
    /// Delete these (only imports Causeway manages).
    pub delete: BTreeSet<ObjectKey>,
}

impl ImportChanges {
    /// True when nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

fn managed(i: &mcs::ServiceImport) -> bool {
    i.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// True when `observed` shows everything `desired` says: labels,
/// annotations (others' bookkeeping aside), spec and exporting clusters.
fn shows(observed: &mcs::ServiceImport, desired: &mcs::ServiceImport) -> bool {
    let annotations = |i: &mcs::ServiceImport| {
        let mut a = i.metadata.annotations.clone().unwrap_or_default();
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        a
    };
    let clusters = |i: &mcs::ServiceImport| i.status.as_ref().map(|s| s.clusters.clone());
    observed.metadata.labels.clone().unwrap_or_default()
        == desired.metadata.labels.clone().unwrap_or_default()
        && annotations(observed) == annotations(desired)
        && observed.spec == desired.spec
        && clusters(observed).unwrap_or_default() == clusters(desired).unwrap_or_default()
}

/// The changes that turn `observed` (the cluster's ServiceImports) into
/// `desired`.
pub fn diff_imports(
    desired: &BTreeMap<ObjectKey, mcs::ServiceImport>,
    observed: &BTreeMap<ObjectKey, mcs::ServiceImport>,
) -> ImportChanges {
    ImportChanges {
        apply: desired
            .iter()
            .filter(|(k, d)| observed.get(*k).is_none_or(|o| !shows(o, d)))
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect(),
        delete: observed
            .iter()
            .filter(|(k, o)| managed(o) && !desired.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

/// How the import controller runs.
#[derive(Debug, Clone)]
pub struct ImportControllerOptions {
    /// Converge this often even without a change.
    pub resync_interval: Duration,
    /// Retry this soon after a write failed.
    pub retry_interval: Duration,
    /// A write the source does not show yet is not repeated for this long.
    pub settle: Duration,
    /// Imports name their derived Service and take its ClusterIP as `ips`
    /// ([`crate::derived::annotate_imports`]): set when the derived
    /// controller runs beside this one.
    pub derived: bool,
}

impl Default for ImportControllerOptions {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
            settle: Duration::from_secs(5),
            derived: false,
        }
    }
}

/// Keeps the cluster's MCS ServiceImports in line with the ServiceImport
/// records of the cluster's own store (run by the active gateway).
pub struct ImportController {
    state: watch::Receiver<Arc<ClusterState>>,
    store: Arc<dyn Store>,
    writer: Arc<dyn ImportWriter>,
    options: ImportControllerOptions,
    /// What was last written (`None`: deleted), and when: the source may not
    /// show it yet.
    written: BTreeMap<ObjectKey, (Option<mcs::ServiceImport>, Instant)>,
    /// Passes in a row with a failed write (the retry backs off).
    pacing: Pacing,
}

impl ImportController {
    /// A controller following `store` and writing through `writer`; the
    /// cluster's namespaces and current imports come from `state`.
    pub fn new(
        state: watch::Receiver<Arc<ClusterState>>,
        store: Arc<dyn Store>,
        writer: Arc<dyn ImportWriter>,
        options: ImportControllerOptions,
    ) -> Self {
        Self {
            state,
            store,
            writer,
            options,
            written: BTreeMap::new(),
            pacing: Pacing::default(),
        }
    }

    /// Runs until `cancel` fires. Imports stay when it stops: the next
    /// active gateway adopts them.
    #[instrument(name = "import_controller", skip_all)]
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut imports = Followed::new(self.store.clone(), Kind::ServiceImport);
        let mut source_open = true;
        let mut next = Instant::now();
        info!("import controller started");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = self.state.changed(), if source_open => {
                    source_open = changed.is_ok();
                }
                _ = imports.changed() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
            next = Instant::now() + self.reconcile(&imports.records).await;
        }
        info!("import controller stopped");
    }

    /// One plan-and-apply pass; returns when to run again at the latest.
    async fn reconcile(&mut self, records: &RecordSet) -> Duration {
        let state = self.state.borrow().clone();
        if !state.synced || !records.is_synced() {
            // Nothing is deleted on the strength of an unread source.
            return self.options.retry_interval;
        }
        let all: Vec<ServiceImport> = records.typed::<ServiceImport>().collect();
        let mut desired = plan_imports(&all, &state.namespace_names());
        if self.options.derived {
            crate::derived::annotate_imports(&mut desired, &state);
        }
        let changes = diff_imports(&desired, &state.service_imports);
        let now = Instant::now();
        let settle = self.options.settle;
        // Forget writes the source shows, or that had time to show.
        self.written.retain(|k, (w, at)| {
            let shown = match w {
                Some(w) => state.service_imports.get(k).is_some_and(|o| shows(o, w)),
                None => !state.service_imports.contains_key(k),
            };
            !shown && now.duration_since(*at) < settle
        });
        let mut ok = true;
        let mut done = 0;
        for (key, import) in changes.apply {
            if self
                .written
                .get(&key)
                .is_some_and(|(w, _)| w.as_ref() == Some(&import))
            {
                continue;
            }
            match self.writer.apply(&import).await {
                Ok(()) => {
                    done += 1;
                    self.written.insert(key, (Some(import), now));
                }
                Err(error) => {
                    warn!(%error, "write ServiceImport; retrying");
                    ok = false;
                }
            }
        }
        for key in changes.delete {
            if self.written.get(&key).is_some_and(|(w, _)| w.is_none()) {
                continue;
            }
            match self.writer.delete(&key.0, &key.1).await {
                Ok(()) => {
                    done += 1;
                    self.written.insert(key, (None, now));
                }
                Err(error) => {
                    warn!(%error, "delete ServiceImport; retrying");
                    ok = false;
                }
            }
        }
        if done > 0 {
            info!(
                changes = done,
                imports = desired.len(),
                "ServiceImports converged"
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

/// Runs the import controller of a cluster until `cancel` fires: the
/// ServiceImport records of `store` become MCS ServiceImports written by
/// `source`'s writer. Returns at once when the source takes no writes.
pub async fn run_import_controller(
    source: &dyn causeway_api::source::ClusterSource,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) {
    let Some(writer) = source.import_writer() else {
        return;
    };
    ImportController::new(
        source.state(),
        store,
        writer,
        ImportControllerOptions::default(),
    )
    .run(cancel)
    .await;
}

#[cfg(test)]
mod tests;
