//! The in-memory index of imported services, shaped the way the DNS server
//! reads it.
//!
//! These are Lighthouse's own input types; an adapter from the broker's
//! ServiceImport and connection-status records fills them. The index is a
//! plain value: whoever updates it builds a new one (or clones and edits the
//! current one) and publishes it through [`IndexHandle`], so a query always
//! sees one consistent snapshot.
//!
//! The adapter from the api crate's records is meant to be this thin:
//! - a `ServiceImport` of cluster C for namespace/name becomes
//!   `upsert_export(key, C, ClusterExport { ports, backing })` with backing
//!   `ClusterSetIp { addresses: if C is local { cluster_ips } else
//!   { addresses }, ready: true }` or `Headless { endpoints }`, each endpoint
//!   `Endpoint::new(hostname, if C is local { local_address } else
//!   { address }, true)` (records list ready endpoints only);
//! - a `ConnectionStatus` reported by the local cluster about peer P becomes
//!   `set_reachable(P, state == Connected)` (Settled decision 9);
//! - a re-list replaces a cluster's exports with `replace_cluster_exports`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arc_swap::ArcSwap;

use crate::Error;

/// The id of a cluster in the cluster set: one lower-case DNS label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(String);

impl ClusterId {
    /// Checks that `id` is one DNS label (RFC 1123: letters, digits and
    /// dashes, at most 63 bytes) and lower-cases it.
    pub fn new(id: &str) -> Result<Self, Error> {
        Ok(Self(dns_label(id, "cluster id")?))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Namespace and name of a service, both lower-case DNS labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    namespace: String,
    name: String,
}

impl ServiceKey {
    /// Checks both parts (one DNS label each) and lower-cases them.
    pub fn new(namespace: &str, name: &str) -> Result<Self, Error> {
        Ok(Self {
            namespace: dns_label(namespace, "namespace")?,
            name: dns_label(name, "service name")?,
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn dns_label(s: &str, what: &'static str) -> Result<String, Error> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Error::InvalidLabel {
            what,
            value: s.to_owned(),
        })
    }
}

/// The two kinds of imported service the MCS API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceType {
    /// Answered with one address (per-cluster or the ClusterSetIP).
    ClusterSetIp,
    /// Answered with the addresses of its ready endpoints.
    Headless,
}

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP
    Tcp,
    /// UDP
    Udp,
    /// SCTP
    Sctp,
}

impl Protocol {
    /// The label used in SRV names (`_tcp`), without the underscore.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    fn from_label(label: &str) -> Option<Self> {
        match label {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub(crate) fn from_srv_label(label: &str) -> Option<Self> {
        label.strip_prefix('_').and_then(Self::from_label)
    }
}

/// One port of a service. Only named ports get `_<name>._<proto>` SRV names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// The port's name, lower-case, if it has one.
    pub name: Option<String>,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

impl ServicePort {
    /// A port; the name, if any, is lower-cased.
    pub fn new(name: Option<&str>, protocol: Protocol, port: u16) -> Self {
        Self {
            name: name.filter(|n| !n.is_empty()).map(str::to_ascii_lowercase),
            protocol,
            port,
        }
    }
}

/// One endpoint of a headless service as one cluster exports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The pod's hostname (StatefulSets), lower-case; without one the
    /// endpoint is named by its address with dashes (`10-244-1-5`).
    pub hostname: Option<String>,
    /// The address to answer (the endpoint's global IP under Globalnet).
    pub address: IpAddr,
    /// Only ready endpoints are answered.
    pub ready: bool,
}

impl Endpoint {
    /// An endpoint; the hostname, if any, is lower-cased.
    pub fn new(hostname: Option<&str>, address: IpAddr, ready: bool) -> Self {
        Self {
            hostname: hostname
                .filter(|h| !h.is_empty())
                .map(str::to_ascii_lowercase),
            address,
            ready,
        }
    }

    /// The DNS label that names this endpoint below its cluster.
    pub fn label(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => dashed(self.address),
        }
    }
}

/// `10.244.1.5` -> `10-244-1-5`, `fd00::1` -> `fd00--1`.
pub fn dashed(address: IpAddr) -> String {
    address.to_string().replace(['.', ':'], "-")
}

/// What one cluster contributes to an imported service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A ClusterSetIP service in that cluster.
    ClusterSetIp {
        /// The addresses to answer for that cluster, at most one per family:
        /// the service's global IP under Globalnet, else its ClusterIP; the
        /// local cluster's own export is given with its ClusterIP (Settled
        /// decision 10). The adapter chooses, the DNS answers what it gets.
        addresses: Vec<IpAddr>,
        /// Whether the service has a ready endpoint in that cluster. A
        /// cluster without one is answered only if no cluster has one.
        ready: bool,
    },
    /// A headless service in that cluster.
    Headless {
        /// Its endpoints, ready or not.
        endpoints: Vec<Endpoint>,
    },
}

impl Backing {
    /// The service type this backing belongs to.
    pub fn service_type(&self) -> ServiceType {
        match self {
            Backing::ClusterSetIp { .. } => ServiceType::ClusterSetIp,
            Backing::Headless { .. } => ServiceType::Headless,
        }
    }
}

/// One cluster's export of a service, as imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterExport {
    /// The service's ports in that cluster.
    pub ports: Vec<ServicePort>,
    /// Its addresses or endpoints.
    pub backing: Backing,
}

/// A service imported into the cluster set: the union of its exports.
#[derive(Debug)]
pub struct ImportedService {
    /// The type that won conflict resolution; exports of the other type are
    /// ignored.
    pub service_type: ServiceType,
    /// The ClusterSetIP(s) allocated for the import, answered in
    /// [`crate::dns::AnswerMode::ClusterSetIp`] (issue 10). Empty until then.
    pub cluster_set_ips: Vec<IpAddr>,
    /// The exports, per cluster.
    pub clusters: BTreeMap<ClusterId, ClusterExport>,
    /// When each cluster's export was created (Unix ms; absent or 0 when
    /// unknown): the oldest export's type stands.
    pub exported_at: BTreeMap<ClusterId, u64>,
    /// Round-robin position; a new index starts it again at zero.
    turn: AtomicU32,
}

impl ImportedService {
    /// An import with no exports yet.
    pub fn new(service_type: ServiceType) -> Self {
        Self {
            service_type,
            cluster_set_ips: Vec::new(),
            clusters: BTreeMap::new(),
            exported_at: BTreeMap::new(),
            turn: AtomicU32::new(0),
        }
    }

    /// Takes the next round-robin turn.
    pub(crate) fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed) as usize
    }
}

impl Clone for ImportedService {
    fn clone(&self) -> Self {
        Self {
            service_type: self.service_type,
            cluster_set_ips: self.cluster_set_ips.clone(),
            clusters: self.clusters.clone(),
            exported_at: self.exported_at.clone(),
            turn: AtomicU32::new(self.turn.load(Ordering::Relaxed)),
        }
    }
}

impl PartialEq for ImportedService {
    fn eq(&self, other: &Self) -> bool {
        self.service_type == other.service_type
            && self.cluster_set_ips == other.cluster_set_ips
            && self.clusters == other.clusters
            && self.exported_at == other.exported_at
    }
}

/// Every imported service, which clusters are reachable, and which one is
/// local.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    local: Option<ClusterId>,
    reachable: BTreeSet<ClusterId>,
    services: BTreeMap<ServiceKey, ImportedService>,
    serial: u32,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index that knows which cluster it serves.
    pub fn with_local(local: ClusterId) -> Self {
        let mut index = Self::new();
        index.set_local(local);
        index
    }

    /// Names the local cluster: it is answered first and always reachable.
    pub fn set_local(&mut self, local: ClusterId) {
        self.local = Some(local);
        self.bump();
    }

    /// The local cluster, if set.
    pub fn local(&self) -> Option<&ClusterId> {
        self.local.as_ref()
    }

    /// Records whether `cluster` is reachable. Per Settled decision 9 the
    /// adapter passes `true` only while the local gateway reports the
    /// cluster `connected`; a cluster never mentioned is unreachable.
    pub fn set_reachable(&mut self, cluster: ClusterId, reachable: bool) {
        if reachable {
            self.reachable.insert(cluster);
        } else {
            self.reachable.remove(&cluster);
        }
        self.bump();
    }

    /// Whether answers may name `cluster`.
    pub fn is_reachable(&self, cluster: &ClusterId) -> bool {
        self.local.as_ref() == Some(cluster) || self.reachable.contains(cluster)
    }

    /// Adds or replaces `cluster`'s export of `key`. The import takes the
    /// type of its first export unless [`Index::set_service_type`] says
    /// otherwise.
    pub fn upsert_export(&mut self, key: ServiceKey, cluster: ClusterId, export: ClusterExport) {
        let ty = export.backing.service_type();
        self.services
            .entry(key)
            .or_insert_with(|| ImportedService::new(ty))
            .clusters
            .insert(cluster, export);
        self.bump();
    }

    /// Withdraws `cluster`'s export of `key`; the import goes with its last
    /// export.
    pub fn remove_export(&mut self, key: &ServiceKey, cluster: &ClusterId) {
        if let Some(service) = self.services.get_mut(key) {
            service.clusters.remove(cluster);
            service.exported_at.remove(cluster);
            if service.clusters.is_empty() {
                self.services.remove(key);
            }
        }
        self.bump();
    }

    /// Withdraws every export of `cluster` (a cluster that left).
    pub fn remove_cluster(&mut self, cluster: &ClusterId) {
        self.services.retain(|_, s| {
            s.clusters.remove(cluster);
            !s.clusters.is_empty()
        });
        self.reachable.remove(cluster);
        self.bump();
    }

    /// Replaces every export of `cluster` with `exports` (a re-list of that
    /// cluster's records); imports left without exports go.
    pub fn replace_cluster_exports(
        &mut self,
        cluster: &ClusterId,
        exports: impl IntoIterator<Item = (ServiceKey, ClusterExport)>,
    ) {
        self.services.retain(|_, s| {
            s.clusters.remove(cluster);
            !s.clusters.is_empty()
        });
        for (key, export) in exports {
            let ty = export.backing.service_type();
            self.services
                .entry(key)
                .or_insert_with(|| ImportedService::new(ty))
                .clusters
                .insert(cluster.clone(), export);
        }
        self.bump();
    }

    /// Replaces the set of reachable clusters (a re-list of statuses).
    pub fn replace_reachable(&mut self, reachable: impl IntoIterator<Item = ClusterId>) {
        self.reachable = reachable.into_iter().collect();
        self.bump();
    }

    /// Sets the type that won conflict resolution for `key`.
    pub fn set_service_type(&mut self, key: &ServiceKey, ty: ServiceType) {
        if let Some(service) = self.services.get_mut(key) {
            service.service_type = ty;
        }
        self.bump();
    }

    /// Records when `cluster`'s export of `key` was created (Unix ms; 0
    /// when unknown), which decides the import's type.
    pub fn set_exported_at(&mut self, key: &ServiceKey, cluster: &ClusterId, ms: u64) {
        if let Some(service) = self.services.get_mut(key) {
            service.exported_at.insert(cluster.clone(), ms);
        }
    }

    /// Sets the ClusterSetIP(s) of `key` (issue 10).
    pub fn set_cluster_set_ips(&mut self, key: &ServiceKey, ips: Vec<IpAddr>) {
        if let Some(service) = self.services.get_mut(key) {
            service.cluster_set_ips = ips;
        }
        self.bump();
    }

    /// One imported service.
    pub fn service(&self, key: &ServiceKey) -> Option<&ImportedService> {
        self.services.get(key)
    }

    /// Every imported service, in key order.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &ImportedService)> {
        self.services.iter()
    }

    /// Every imported service of one namespace.
    pub fn services_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ServiceKey, &'a ImportedService)> + 'a {
        let start = ServiceKey {
            namespace: namespace.to_owned(),
            name: String::new(),
        };
        self.services
            .range(start..)
            .take_while(move |(k, _)| k.namespace == namespace)
    }

    /// Changes on every edit; the SOA serial.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn bump(&mut self) {
        self.serial = self.serial.wrapping_add(1);
    }
}

/// The index as the server reads it and an updater replaces it.
///
/// An `arc-swap` rather than a `watch` channel: every query loads the
/// current snapshot, and with `ArcSwap` that load is a few atomic operations
/// that never wait for a writer or another reader, where `watch::borrow`
/// takes a read lock shared with the writer. Nothing in the server needs to
/// be woken on change, which is what `watch` would add.
#[derive(Debug, Clone)]
pub struct IndexHandle(Arc<ArcSwap<Index>>);

impl IndexHandle {
    /// A handle that serves `index`.
    pub fn new(index: Index) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(index)))
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Index> {
        self.0.load_full()
    }

    /// Replaces the snapshot; queries under way finish on the old one.
    pub fn store(&self, index: Index) {
        self.0.store(Arc::new(index));
    }

    /// Edits a copy of the current snapshot and publishes it (retried if
    /// another update raced it).
    pub fn update(&self, mut edit: impl FnMut(&mut Index)) {
        self.0.rcu(|current| {
            let mut next = Index::clone(current);
            edit(&mut next);
            next
        });
    }
}

impl Default for IndexHandle {
    fn default() -> Self {
        Self::new(Index::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_lowercased() {
        assert_eq!(ClusterId::new("Cluster-B").unwrap().as_str(), "cluster-b");
        for bad in ["", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(ClusterId::new(bad).is_err(), "{bad:?}");
        }
        let key = ServiceKey::new("Default", "Web").unwrap();
        assert_eq!(key.to_string(), "default/web");
    }

    #[test]
    fn dashed_names() {
        assert_eq!(dashed("10.244.1.5".parse().unwrap()), "10-244-1-5");
        assert_eq!(dashed("fd00::1".parse().unwrap()), "fd00--1");
    }

    #[test]
    fn last_export_withdrawn_removes_the_import() {
        let key = ServiceKey::new("default", "web").unwrap();
        let a = ClusterId::new("a").unwrap();
        let b = ClusterId::new("b").unwrap();
        let export = ClusterExport {
            ports: vec![],
            backing: Backing::ClusterSetIp {
                addresses: vec!["242.1.0.10".parse().unwrap()],
                ready: true,
            },
        };
        let mut index = Index::new();
        index.upsert_export(key.clone(), a.clone(), export.clone());
        index.upsert_export(key.clone(), b.clone(), export);
        index.remove_export(&key, &a);
        assert!(index.service(&key).is_some());
        index.remove_cluster(&b);
        assert!(index.service(&key).is_none());
    }

    #[test]
    fn replacing_a_clusters_exports_drops_the_ones_not_listed() {
        let web = ServiceKey::new("default", "web").unwrap();
        let db = ServiceKey::new("default", "db").unwrap();
        let a = ClusterId::new("a").unwrap();
        let b = ClusterId::new("b").unwrap();
        let export = ClusterExport {
            ports: vec![],
            backing: Backing::Headless { endpoints: vec![] },
        };
        let mut index = Index::new();
        index.upsert_export(web.clone(), a.clone(), export.clone());
        index.upsert_export(web.clone(), b.clone(), export.clone());
        index.upsert_export(db.clone(), b.clone(), export.clone());
        index.replace_cluster_exports(&b, [(db.clone(), export)]);
        assert_eq!(
            index
                .service(&web)
                .unwrap()
                .clusters
                .keys()
                .collect::<Vec<_>>(),
            [&a]
        );
        assert!(index.service(&db).unwrap().clusters.contains_key(&b));
        index.replace_cluster_exports(&b, []);
        assert!(index.service(&db).is_none());

        index.set_reachable(a.clone(), true);
        index.replace_reachable([b.clone()]);
        assert!(!index.is_reachable(&a) && index.is_reachable(&b));
    }

    #[test]
    fn handle_update_publishes_a_new_snapshot() {
        let handle = IndexHandle::default();
        let before = handle.load();
        handle.update(|i| i.set_reachable(ClusterId::new("b").unwrap(), true));
        assert!(!before.is_reachable(&ClusterId::new("b").unwrap()));
        assert!(handle.load().is_reachable(&ClusterId::new("b").unwrap()));
    }
}
