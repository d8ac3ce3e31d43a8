//! The export agent: this cluster's ServiceExports, Services and
//! EndpointSlices (from the cluster source) become its ServiceImport
//! records in the cluster's own store, which the active gateway mirrors to
//! the broker (Settled decision 1).
//!
//! [`plan_exports`] is pure: (local cluster, cluster state, the other
//! clusters' ServiceImports, Globalnet's addresses) -> the records to
//! publish and the MCS conditions of every ServiceExport. [`ExportAgent`]
//! re-plans on every change of its inputs (and on a timer) and converges
//! the store with `sync_owned`: a record is put when it differs, and a
//! record of this cluster that no export wants any more (unexported,
//! Service deleted, no longer valid) is deleted.
//!
//! Readiness: a ClusterSetIP export is published only while its Service has
//! a ready endpoint, so other clusters' DNS answers leave out a cluster that
//! could not serve (the records carry no readiness of their own). A headless
//! export lists its ready endpoints only.
//!
//! Conditions for `causeway show exports` (and, on Kubernetes, the
//! ServiceExport status): [`plan_exports`] computes them; the agent
//! publishes the latest on a watch channel ([`ExportAgent::status`]), when
//! given a path in a JSON status file ([`read_status_file`]), and when given
//! a [`kube_status::StatusWriter`] in each ServiceExport's status. They use
//! the MCS API's types and reasons: `Valid` (`Valid`, `NoService`,
//! `InvalidServiceType` for ExternalName, which is never published),
//! `Ready`, and `Conflict`, raised on every constituent export whenever
//! any two disagree ([`crate::import::merge`]: `PortConflict`,
//! `TypeConflict`, ..., comma-joined; `NoConflicts` when false). The oldest
//! export's fields stand, so a conflict appearing changes nothing already
//! served.
//!
//! When the cluster source takes ServiceImport writes, the agent also runs
//! the [`crate::import::ImportController`] for as long as it runs itself.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use causeway_api::mcs::McsCondition;
use causeway_api::records::{
    AnyRecord, ClientIpConfig, ClusterId, ExportProperties, HeadlessEndpoint, IpFamily, Kind,
    ObjectName, Protocol, ReadyPods, ServiceImport, ServiceImportType, ServicePort,
    SessionAffinity, SessionAffinityConfig, TargetPort,
};
use causeway_api::source::{ClusterSource, ClusterState};
use causeway_api::store::{RecordSet, Store, sync_owned};
use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::Error;
use crate::follow::Followed;
use crate::import::merge;

pub mod kube_status;

use kube_status::{StatusWriter, now_rfc3339, plan_status_updates};

/// An exported service: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExportKey {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl ExportKey {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ExportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The global IPs Globalnet has allocated to this cluster's exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalIps {
    /// The ingress global IP(s) of each exported ClusterSetIP service.
    pub services: BTreeMap<ExportKey, Vec<IpAddr>>,
    /// The global IP of each endpoint of an exported headless service, by
    /// the endpoint's pod address.
    pub endpoints: BTreeMap<ExportKey, BTreeMap<IpAddr, IpAddr>>,
    /// Why an export got no global IP (an exhausted global CIDR), in words
    /// that say what to do.
    pub errors: BTreeMap<ExportKey, String>,
}

/// The status of an MCS condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// `True`
    True,
    /// `False`
    False,
    /// `Unknown`
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One condition of a ServiceExport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// The MCS reason (`NoService`, `Exported`, `TypeConflict`, ...).
    pub reason: String,
    /// What a user reads.
    pub message: String,
}

impl Condition {
    fn new(status: ConditionStatus, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The MCS conditions of one ServiceExport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStatus {
    /// `Valid`: the Service exists and may be exported.
    pub valid: Condition,
    /// `Ready`: the ServiceImport record is published.
    pub ready: Condition,
    /// `Conflict`: another cluster's export of the name, which takes
    /// precedence, disagrees on type or ports.
    pub conflict: Condition,
}

impl ExportStatus {
    fn invalid(reason: &str, message: String) -> Self {
        Self {
            valid: Condition::new(ConditionStatus::False, reason, message),
            ready: Condition::new(
                ConditionStatus::False,
                "Failed",
                "not exported: the export is not valid",
            ),
            conflict: Condition::new(
                ConditionStatus::Unknown,
                "NotExported",
                "not checked: the export is not valid",
            ),
        }
    }

    /// The conditions as a ServiceExport's status holds them.
    pub fn to_mcs(&self) -> Vec<McsCondition> {
        [
            ("Valid", &self.valid),
            ("Ready", &self.ready),
            ("Conflict", &self.conflict),
        ]
        .into_iter()
        .map(|(ty, c)| McsCondition {
            type_: ty.to_owned(),
            status: c.status.to_string(),
            last_transition_time: None,
            reason: Some(c.reason.clone()),
            message: Some(c.message.clone()),
        })
        .collect()
    }
}

/// The conditions of every ServiceExport of the cluster.
pub type ExportStatuses = BTreeMap<ExportKey, ExportStatus>;

/// What the cluster should publish, and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportPlan {
    /// The ServiceImport records this cluster publishes.
    pub imports: BTreeMap<ExportKey, ServiceImport>,
    /// The conditions of every ServiceExport.
    pub status: ExportStatuses,
}

impl ExportPlan {
    /// The records, ready for `sync_owned`.
    pub fn records(&self) -> Vec<AnyRecord> {
        self.imports.values().cloned().map(Into::into).collect()
    }
}

/// The order in which exports of one service take precedence (first wins).
///
/// The MCS API gives precedence to the oldest export (its ServiceExport's
/// creationTimestamp, carried as `exported_at_ms`), then the lowest cluster
/// id; an export of unknown age ranks after every dated one. Every cluster
/// computes the same order from the same records.
pub fn precedence(a: (&ClusterId, u64), b: (&ClusterId, u64)) -> Ordering {
    let age = |t: u64| if t == 0 { u64::MAX } else { t };
    (age(a.1), a.0).cmp(&(age(b.1), b.0))
}

/// When the ServiceExport `ns/name` was created (Unix ms; 0 when unknown).
fn exported_at(state: &ClusterState, ns: &str, name: &str) -> u64 {
    state
        .service_exports
        .get(&(ns.to_owned(), name.to_owned()))
        .and_then(|e| e.metadata.creation_timestamp.as_ref())
        .map(|t| u64::try_from(t.0.as_millisecond()).unwrap_or(0))
        .unwrap_or(0)
}

/// What a valid export's Service offers, before addresses are chosen.
#[derive(Debug)]
struct Described {
    kind: ServiceImportType,
    ports: Vec<ServicePort>,
    cluster_ips: Vec<IpAddr>,
    /// Ready endpoints: pod address -> hostname.
    ready: BTreeMap<IpAddr, Option<String>>,
    /// The pods' port behind each service port (by name and protocol, as
    /// the slices say).
    target_ports: Vec<TargetPort>,
    /// What the MCS ServiceImport takes from the Service and the export.
    properties: ExportProperties,
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn parse_protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn port(
    name: Option<&String>,
    protocol: Option<&String>,
    number: i32,
) -> Result<ServicePort, String> {
    let protocol = parse_protocol(protocol.map(String::as_str))
        .ok_or_else(|| format!("port {number} has unknown protocol {protocol:?}"))?;
    let port = u16::try_from(number)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {number} is out of range"))?;
    Ok(ServicePort {
        name: name.filter(|n| !n.is_empty()).cloned(),
        protocol,
        port,
    })
}

/// Checks the export's Service and reads what it offers; `Err` is the
/// `Valid=False` reason and message.
fn describe(
    state: &ClusterState,
    ns: &str,
    name: &str,
) -> Result<Described, (&'static str, String)> {
    let id = format!("{ns}/{name}");
    if let Err(e) = ObjectName::new(ns).and_then(|_| ObjectName::new(name)) {
        return Err(("InvalidName", format!("{id} cannot be exported: {e}")));
    }
    let Some(service) = state.services.get(&(ns.to_owned(), name.to_owned())) else {
        return Err((
            "NoService",
            format!("Service {id} does not exist; create it, or delete the ServiceExport"),
        ));
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err((
            "InvalidServiceType",
            format!("Service {id} is of type ExternalName, which cannot be exported"),
        ));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let cluster_ips = cluster_ips(service);
    let mut ports = BTreeSet::new();
    for p in spec.ports.iter().flatten() {
        let p = port(p.name.as_ref(), p.protocol.as_ref(), p.port)
            .map_err(|e| ("InvalidServicePort", format!("Service {id}: {e}")))?;
        ports.insert(p);
    }
    let mut slice_ports = BTreeSet::new();
    let mut ready: BTreeMap<IpAddr, Option<String>> = BTreeMap::new();
    for slice in state.slices_of(ns, name) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for p in slice.ports.iter().flatten() {
            if let Some(number) = p.port
                && let Ok(p) = port(p.name.as_ref(), p.protocol.as_ref(), number)
            {
                slice_ports.insert(p);
            }
        }
        for endpoint in &slice.endpoints {
            // Kubernetes: an unknown readiness is ready.
            let is_ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            let Some(address) = endpoint.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            if !is_ready {
                continue;
            }
            let hostname = endpoint
                .hostname
                .as_ref()
                .filter(|h| is_dns_label(h))
                .cloned();
            let slot = ready.entry(address).or_default();
            if slot.is_none() {
                *slot = hostname;
            }
        }
    }
    // Clients of a headless service connect to the pods themselves, so
    // its SRV records carry the endpoints' ports where the slices say.
    let target_ports = ports
        .iter()
        .filter_map(|p| {
            slice_ports
                .iter()
                .find(|sp| sp.name == p.name && sp.protocol == p.protocol)
                .map(|sp| TargetPort {
                    service: p.clone(),
                    target: sp.port,
                })
        })
        .collect();
    if headless && !slice_ports.is_empty() {
        ports = slice_ports;
    }
    Ok(Described {
        kind: if headless {
            ServiceImportType::Headless
        } else {
            ServiceImportType::ClusterSetIP
        },
        ports: ports.into_iter().collect(),
        properties: properties(state, ns, name, &spec, &cluster_ips),
        cluster_ips,
        ready,
        target_ports,
    })
}

/// What the MCS ServiceImport takes from the Service `spec` and from the
/// ServiceExport `ns/name` (its exported labels and annotations only).
fn properties(
    state: &ClusterState,
    ns: &str,
    name: &str,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    cluster_ips: &[IpAddr],
) -> ExportProperties {
    let export = state.service_exports.get(&(ns.to_owned(), name.to_owned()));
    let mut ip_families: Vec<IpFamily> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(IpFamily::IPv4),
            "IPv6" => Some(IpFamily::IPv6),
            _ => None,
        })
        .collect();
    if ip_families.is_empty() {
        // A manifest without the API server's defaults: the ClusterIPs say.
        ip_families = cluster_ips.iter().map(IpFamily::of).collect();
    }
    ip_families.dedup();
    ExportProperties {
        session_affinity: match spec.session_affinity.as_deref() {
            Some("ClientIP") => SessionAffinity::ClientIp,
            _ => SessionAffinity::None,
        },
        session_affinity_config: spec.session_affinity_config.as_ref().map(|c| {
            SessionAffinityConfig {
                client_ip: c.client_ip.as_ref().map(|c| ClientIpConfig {
                    timeout_seconds: c.timeout_seconds.and_then(|t| u32::try_from(t).ok()),
                }),
            }
        }),
        internal_traffic_policy: spec.internal_traffic_policy.clone(),
        traffic_distribution: spec.traffic_distribution.clone(),
        ip_families,
        exported_labels: export
            .map(|e| e.spec.exported_labels.clone())
            .unwrap_or_default(),
        exported_annotations: export
            .map(|e| e.spec.exported_annotations.clone())
            .unwrap_or_default(),
    }
}

fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let listed: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    listed.into_iter().filter_map(|s| s.parse().ok()).collect()
}

/// The `Conflict` condition of `candidate` (this cluster's export, as it
/// would be published) against `others` (other clusters' exports of the
/// same service): raised on every constituent export whenever any two
/// disagree, with every reason; the oldest export's fields stand.
fn conflict(candidate: &ServiceImport, others: &[&ServiceImport]) -> Condition {
    let merged = merge(
        std::iter::once(candidate).chain(
            others
                .iter()
                .copied()
                .filter(|o| o.cluster != candidate.cluster),
        ),
    );
    let Some(merged) = merged else {
        return Condition::new(ConditionStatus::Unknown, "NotExported", "not merged");
    };
    let message = merged.conflict_message(&candidate.cluster);
    match merged.conflict_reason() {
        None => Condition::new(ConditionStatus::False, "NoConflicts", message),
        Some(reasons) => Condition::new(ConditionStatus::True, &reasons, message),
    }
}

/// This cluster's record of a described export, without addresses yet.
fn candidate(
    local: &ClusterId,
    key: &ExportKey,
    d: &Described,
    exported_at_ms: u64,
) -> Result<ServiceImport, (&'static str, String)> {
    let namespace =
        ObjectName::new(key.namespace.as_str()).map_err(|e| ("Failed", e.to_string()))?;
    let name = ObjectName::new(key.name.as_str()).map_err(|e| ("Failed", e.to_string()))?;
    Ok(ServiceImport {
        cluster: local.clone(),
        namespace,
        name,
        kind: d.kind,
        ports: d.ports.clone(),
        addresses: Vec::new(),
        cluster_ips: Vec::new(),
        endpoints: Vec::new(),
        exported_at_ms,
        pods: None,
        unready: false,
        properties: Box::new(d.properties.clone()),
    })
}

/// The record for a described export, or the `Ready=False` reason and
/// message while it cannot be published yet.
fn publish(
    mut record: ServiceImport,
    key: &ExportKey,
    d: &Described,
    globalnet: Option<&GlobalIps>,
) -> Result<(ServiceImport, String), (&'static str, String)> {
    let note = match d.kind {
        ServiceImportType::ClusterSetIP => {
            if d.cluster_ips.is_empty() {
                return Err(("Pending", format!("Service {key} has no ClusterIP yet")));
            }
            // Published while exported, ready or not: the import exists as
            // long as the export does; `unready` keeps it out of answers
            // and slices while another export is ready.
            record.unready = d.ready.is_empty();
            record.cluster_ips = d.cluster_ips.clone();
            if globalnet.is_none() {
                // Pod addresses route between clusters without Globalnet:
                // other clusters' slices list the pods themselves.
                record.pods = Some(Box::new(ReadyPods {
                    addresses: d.ready.keys().copied().collect(),
                    ports: d.target_ports.clone(),
                }));
            }
            record.addresses = match globalnet {
                None => d.cluster_ips.clone(),
                Some(g) => match g.services.get(key).filter(|a| !a.is_empty()) {
                    Some(addresses) => addresses.clone(),
                    None => {
                        return Err(match g.errors.get(key) {
                            Some(reason) => {
                                ("NoGlobalIP", format!("{key} cannot be served: {reason}"))
                            }
                            None => (
                                "Pending",
                                format!("waiting for Globalnet to allocate a global IP to {key}"),
                            ),
                        });
                    }
                },
            };
            format!("{} ready endpoint(s)", d.ready.len())
        }
        ServiceImportType::Headless => {
            let globals = globalnet.map(|g| g.endpoints.get(key));
            let mut waiting = 0;
            for (pod, hostname) in &d.ready {
                let address = match globals {
                    None => *pod,
                    Some(map) => match map.and_then(|m| m.get(pod)) {
                        Some(global) => *global,
                        None => {
                            waiting += 1;
                            continue;
                        }
                    },
                };
                record.endpoints.push(HeadlessEndpoint {
                    hostname: hostname.clone(),
                    address,
                    local_address: *pod,
                });
            }
            if waiting > 0 && record.endpoints.is_empty() {
                return Err((
                    "Pending",
                    format!(
                        "waiting for Globalnet to allocate global IPs to {waiting} endpoint(s) of {key}"
                    ),
                ));
            }
            if waiting > 0 {
                format!(
                    "{} ready endpoint(s); {waiting} more await a global IP",
                    record.endpoints.len()
                )
            } else {
                format!("{} ready endpoint(s)", record.endpoints.len())
            }
        }
    };
    AnyRecord::from(record.clone())
        .validate()
        .map_err(|e| ("Failed", e.to_string()))?;
    Ok((record, note))
}

/// Plans cluster `local`'s ServiceImport records and the conditions of its
/// ServiceExports. `others` are the ServiceImports in the store (this
/// cluster's own are skipped); `globalnet` is `None` when Globalnet is off,
/// else the global IPs allocated so far (an export without one is not
/// published yet).
pub fn plan_exports<'a>(
    local: &ClusterId,
    state: &ClusterState,
    others: impl IntoIterator<Item = &'a ServiceImport>,
    globalnet: Option<&GlobalIps>,
) -> ExportPlan {
    let mut by_service: BTreeMap<(&str, &str), Vec<&ServiceImport>> = BTreeMap::new();
    for import in others {
        if import.cluster != *local {
            by_service
                .entry((import.namespace.as_str(), import.name.as_str()))
                .or_default()
                .push(import);
        }
    }
    let mut plan = ExportPlan::default();
    for (ns, name) in state.service_exports.keys() {
        let key = ExportKey::new(ns.as_str(), name.as_str());
        let status = match describe(state, ns, name) {
            Err((reason, message)) => ExportStatus::invalid(reason, message),
            Ok(d) => {
                let others = by_service
                    .get(&(ns.as_str(), name.as_str()))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let at = exported_at(state, ns, name);
                let (conflict, published) = match candidate(local, &key, &d, at) {
                    Ok(c) => (conflict(&c, others), publish(c, &key, &d, globalnet)),
                    Err(e) => (
                        Condition::new(ConditionStatus::Unknown, "NotExported", e.1.clone()),
                        Err(e),
                    ),
                };
                let ready = match published {
                    Ok((record, _)) if record.unready => {
                        plan.imports.insert(key.clone(), record);
                        Condition::new(
                            ConditionStatus::False,
                            "NoReadyEndpoints",
                            format!(
                                "Service {key} has no ready endpoint; its import stands, and other clusters send it traffic once one is ready"
                            ),
                        )
                    }
                    Ok((record, note)) => {
                        plan.imports.insert(key.clone(), record);
                        Condition::new(
                            ConditionStatus::True,
                            "Exported",
                            format!("published as a {:?} ServiceImport: {note}", d.kind),
                        )
                    }
                    Err((reason, message)) => {
                        Condition::new(ConditionStatus::False, reason, message)
                    }
                };
                ExportStatus {
                    valid: Condition::new(
                        ConditionStatus::True,
                        "Valid",
                        format!("Service {key} exists"),
                    ),
                    ready,
                    conflict,
                }
            }
        };
        plan.status.insert(key, status);
    }
    plan
}

/// How the export agent runs.
#[derive(Clone)]
pub struct ExportAgentOptions {
    /// Globalnet's allocations; `None` when Globalnet is off.
    pub globalnet: Option<watch::Receiver<Arc<GlobalIps>>>,
    /// Re-plan and converge this often even without a change.
    pub resync_interval: Duration,
    /// Retry this soon after the store refused a write.
    pub retry_interval: Duration,
    /// Write the conditions here as JSON (for `causeway show exports`).
    pub status_file: Option<PathBuf>,
    /// Write the conditions to each ServiceExport's status (Kubernetes).
    pub status_writer: Option<Arc<dyn StatusWriter>>,
    /// Run the import controller beside the agent when the cluster source
    /// takes ServiceImport writes ([`ClusterSource::import_writer`]).
    pub imports: bool,
}

impl Default for ExportAgentOptions {
    fn default() -> Self {
        Self {
            globalnet: None,
            resync_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
            status_file: None,
            status_writer: None,
            imports: true,
        }
    }
}

/// The export agent of one cluster (run by the active gateway).
pub struct ExportAgent {
    state: watch::Receiver<Arc<ClusterState>>,
    store: Arc<dyn Store>,
    local: ClusterId,
    options: ExportAgentOptions,
    status: watch::Sender<Arc<ExportStatuses>>,
    /// ServiceExport statuses written but perhaps not yet seen by the source.
    written: BTreeMap<ExportKey, causeway_api::mcs::ServiceExportStatus>,
    /// Where the import controller writes the cluster's ServiceImports.
    import_writer: Option<Arc<dyn causeway_api::mcs::ImportWriter>>,
    /// Where the derived controller writes derived Services and slices.
    derived_writer: Option<Arc<dyn causeway_api::mcs::DerivedWriter>>,
}

impl ExportAgent {
    /// An agent publishing `local`'s exports from `source` into `store`.
    pub fn new(
        source: &dyn ClusterSource,
        store: Arc<dyn Store>,
        local: ClusterId,
        options: ExportAgentOptions,
    ) -> Self {
        let import_writer = source.import_writer().filter(|_| options.imports);
        let derived_writer = source.derived_writer().filter(|_| options.imports);
        Self {
            state: source.state(),
            store,
            local,
            options,
            status: watch::channel(Arc::new(ExportStatuses::new())).0,
            written: BTreeMap::new(),
            import_writer,
            derived_writer,
        }
    }

    /// The conditions of the last plan.
    pub fn status(&self) -> watch::Receiver<Arc<ExportStatuses>> {
        self.status.subscribe()
    }

    /// Runs until `cancel` fires. Records stay in the store when it stops:
    /// the next active gateway adopts them, and DNS answers go on. The
    /// import controller, when the source takes writes, runs as long.
    #[instrument(name = "export_agent", skip_all, fields(cluster = %self.local))]
    pub async fn run(mut self, cancel: CancellationToken) {
        let derived = self.derived_writer.take().map(|writer| {
            let controller = crate::derived::DerivedController::new(
                self.local.clone(),
                self.state.clone(),
                self.store.clone(),
                writer,
                crate::derived::DerivedControllerOptions::default(),
            );
            tokio::spawn(controller.run(cancel.clone()))
        });
        let controller = self.import_writer.take().map(|writer| {
            let controller = crate::import::ImportController::new(
                self.state.clone(),
                self.store.clone(),
                writer,
                crate::import::ImportControllerOptions {
                    derived: derived.is_some(),
                    ..crate::import::ImportControllerOptions::default()
                },
            );
            tokio::spawn(controller.run(cancel.clone()))
        });
        let mut imports = Followed::new(self.store.clone(), Kind::ServiceImport);
        let mut globalnet_open = self.options.globalnet.is_some();
        let mut source_open = true;
        let mut next = Instant::now();
        info!("export agent started");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = self.state.changed(), if source_open => {
                    source_open = changed.is_ok();
                }
                _ = imports.changed() => {}
                changed = async {
                    match self.options.globalnet.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                }, if globalnet_open => {
                    // When Globalnet stops, its last addresses stand.
                    globalnet_open = changed.is_ok();
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            next = Instant::now() + self.reconcile(&imports.records).await;
        }
        if let Some(controller) = controller {
            let _ = controller.await;
        }
        if let Some(derived) = derived {
            let _ = derived.await;
        }
        info!("export agent stopped");
    }

    /// One plan-and-converge pass; returns when to run again at the latest.
    async fn reconcile(&mut self, imports: &RecordSet) -> Duration {
        let state = self.state.borrow().clone();
        if !state.synced || !imports.is_synced() {
            // Nothing is withdrawn on the strength of an unread source.
            return self.options.retry_interval;
        }
        let globalnet = self
            .options
            .globalnet
            .as_ref()
            .map(|rx| rx.borrow().clone());
        let others: Vec<ServiceImport> = imports
            .typed::<ServiceImport>()
            .filter(|i| i.cluster != self.local)
            .collect();
        let plan = plan_exports(&self.local, &state, &others, globalnet.as_deref());
        let status = Arc::new(plan.status.clone());
        if *self.status.borrow() != status {
            self.status.send_replace(status.clone());
            if let Some(path) = &self.options.status_file
                && let Err(error) = write_status_file(path, &status)
            {
                warn!(%error, "write export status file");
            }
        }
        let statuses_written = self.write_statuses(&state, &plan.status).await;
        let published = sync_owned(
            &*self.store,
            imports,
            &self.local,
            Kind::ServiceImport,
            &plan.records(),
        )
        .await;
        let next = match published {
            Ok(0) => self.options.resync_interval,
            Ok(changes) => {
                info!(
                    changes,
                    published = plan.imports.len(),
                    "ServiceImport records converged"
                );
                self.options.resync_interval
            }
            Err(error) => {
                warn!(%error, "publish ServiceImport records; retrying");
                self.options.retry_interval
            }
        };
        if statuses_written {
            next
        } else {
            next.min(self.options.retry_interval)
        }
    }

    /// Writes the ServiceExport statuses that changed; false if a write
    /// failed (it is retried).
    async fn write_statuses(&mut self, state: &ClusterState, statuses: &ExportStatuses) -> bool {
        let Some(writer) = self.options.status_writer.clone() else {
            return true;
        };
        let without_times = |s: &causeway_api::mcs::ServiceExportStatus| {
            let mut s = s.clone();
            for c in &mut s.conditions {
                c.last_transition_time = None;
            }
            s
        };
        let updates = plan_status_updates(state, statuses, &now_rfc3339());
        // What the source shows as written needs no memory any more.
        self.written.retain(|k, _| updates.contains_key(k));
        let mut ok = true;
        for (key, status) in updates {
            if self
                .written
                .get(&key)
                .is_some_and(|w| without_times(w) == without_times(&status))
            {
                continue; // written; the source has not shown it yet
            }
            match writer.write(&key, &status).await {
                Ok(()) => {
                    self.written.insert(key, status);
                }
                Err(error) => {
                    warn!(%error, "write ServiceExport status; retrying");
                    ok = false;
                }
            }
        }
        ok
    }
}

/// Runs the export agent of cluster `local` with default options until
/// `cancel` fires.
pub async fn run_export_agent(
    source: &dyn ClusterSource,
    store: Arc<dyn Store>,
    local: ClusterId,
    cancel: CancellationToken,
) {
    ExportAgent::new(source, store, local, ExportAgentOptions::default())
        .run(cancel)
        .await;
}

/// Writes `status` to `path` as JSON (`{"ns/name": {valid, ready,
/// conflict}}`), through a temporary file and a rename so a reader never
/// sees half of it.
pub fn write_status_file(path: &Path, status: &ExportStatuses) -> Result<(), Error> {
    let by_name: BTreeMap<String, &ExportStatus> =
        status.iter().map(|(k, s)| (k.to_string(), s)).collect();
    let text = serde_json::to_string_pretty(&by_name).map_err(|e| Error::StatusFile {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| Error::StatusFile {
            path: path.to_owned(),
            source,
        })
}

/// Reads a status file the agent wrote: `namespace/name` -> conditions.
pub fn read_status_file(path: &Path) -> Result<BTreeMap<String, ExportStatus>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::StatusFile {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::StatusFile {
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Renders conditions as the table `causeway show exports` prints: one
/// line per export, each condition as its status and, unless it is the
/// happy one, its reason; then the message that explains the export.
pub fn render_status_table<'a>(
    statuses: impl IntoIterator<Item = (String, &'a ExportStatus)>,
) -> String {
    fn cell(c: &Condition, happy: ConditionStatus) -> String {
        if c.status == happy {
            c.status.to_string()
        } else {
            format!("{} ({})", c.status, c.reason)
        }
    }
    let mut rows = vec![[
        "EXPORT".to_owned(),
        "VALID".to_owned(),
        "READY".to_owned(),
        "CONFLICT".to_owned(),
        "MESSAGE".to_owned(),
    ]];
    for (name, s) in statuses {
        let explain = [&s.valid, &s.conflict, &s.ready]
            .into_iter()
            .zip([
                ConditionStatus::True,
                ConditionStatus::False,
                ConditionStatus::True,
            ])
            .find(|(c, happy)| c.status != *happy)
            .map_or(&s.ready, |(c, _)| c);
        rows.push([
            name,
            cell(&s.valid, ConditionStatus::True),
            cell(&s.ready, ConditionStatus::True),
            cell(&s.conflict, ConditionStatus::False),
            explain.message.clone(),
        ]);
    }
    let mut widths = [0; 4];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (w, c) in widths.iter().zip(&row) {
            out.push_str(&format!("{c:<w$}  "));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
