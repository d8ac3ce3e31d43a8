//! Cluster sources: the local cluster's Services, EndpointSlices,
//! ServiceExports, ServiceImports, Nodes and Namespaces, as one state that is
//! republished on every change. Planners are functions of that whole state, so a source
//! hands out snapshots on a `tokio::sync::watch` channel rather than events.
//!
//! Backends: a directory of Kubernetes manifests (the lab, and clusters
//! without a Kubernetes API) and the Kubernetes API through kube reflectors.
//! A source is also where the cluster's MCS ServiceImports are written
//! ([`ClusterSource::import_writer`]): the Kubernetes API, or files in the
//! manifest directory (the lab's API server stand-in).

mod kubernetes;
mod manifest;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

pub use kubernetes::KubeSource;
pub use manifest::{
    DERIVED_DIR, EXPORT_STATUS_DIR, IMPORTS_DIR, Manifest, ManifestDerivedWriter,
    ManifestDirSource, ManifestError, ManifestExportStatusWriter, ManifestImportWriter,
    parse_manifests, render_derived, render_import,
};

use crate::mcs::{DerivedWriter, ImportWriter, ServiceExport, ServiceImport};

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub type ObjectKey = (String, String);

/// Everything a cluster source streams, keyed by namespace and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// False until the source has read everything once; consumers must not
    /// delete anything on the strength of an unsynced (empty) state.
    pub synced: bool,
    /// Services.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices (`discovery.k8s.io/v1`).
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// MCS ServiceExports.
    pub service_exports: BTreeMap<ObjectKey, ServiceExport>,
    /// Nodes.
    pub nodes: BTreeMap<ObjectKey, Node>,
    /// Namespaces (namespace sameness).
    pub namespaces: BTreeMap<ObjectKey, Namespace>,
    /// MCS ServiceImports (what the import controller wrote, and any other).
    pub service_imports: BTreeMap<ObjectKey, ServiceImport>,
}

impl ClusterState {
    /// The names of the namespaces that exist (and are not being deleted).
    pub fn namespace_names(&self) -> BTreeSet<String> {
        self.namespaces
            .iter()
            .filter(|(_, n)| n.metadata.deletion_timestamp.is_none())
            .map(|((_, name), _)| name.clone())
            .collect()
    }

    /// The EndpointSlices of one Service (by the `kubernetes.io/service-name` label).
    pub fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.endpoint_slices
            .iter()
            .filter(move |((ns, _), s)| {
                ns == namespace
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .is_some_and(|n| n == service)
            })
            .map(|(_, s)| s)
    }
}

/// A source of the local cluster's state.
pub trait ClusterSource: Send + Sync {
    /// The latest state; every change publishes a new one.
    fn state(&self) -> watch::Receiver<Arc<ClusterState>>;

    /// Where this cluster's MCS ServiceImports are written, if the source
    /// can take writes.
    fn import_writer(&self) -> Option<Arc<dyn ImportWriter>> {
        None
    }

    /// Where this cluster's derived Services and MCS EndpointSlices are
    /// written, if the source can take writes.
    fn derived_writer(&self) -> Option<Arc<dyn DerivedWriter>> {
        None
    }
}

/// A cluster source whose state a test sets by hand.
#[derive(Debug)]
pub struct FakeClusterSource {
    tx: watch::Sender<Arc<ClusterState>>,
    writer: Option<Arc<dyn ImportWriter>>,
    derived: Option<Arc<dyn DerivedWriter>>,
}

impl Default for FakeClusterSource {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeClusterSource {
    /// An unsynced, empty source.
    pub fn new() -> Self {
        Self {
            tx: watch::channel(Arc::new(ClusterState::default())).0,
            writer: None,
            derived: None,
        }
    }

    /// The source hands out `writer` as its import writer.
    pub fn with_import_writer(mut self, writer: Arc<dyn ImportWriter>) -> Self {
        self.writer = Some(writer);
        self
    }

    /// The source hands out `writer` as its derived-Service writer.
    pub fn with_derived_writer(mut self, writer: Arc<dyn DerivedWriter>) -> Self {
        self.derived = Some(writer);
        self
    }

    /// Publishes `state`.
    pub fn set(&self, state: ClusterState) {
        self.tx.send_replace(Arc::new(state));
    }

    /// Changes the current state in place and publishes it.
    pub fn update(&self, f: impl FnOnce(&mut ClusterState)) {
        let mut s = (**self.tx.borrow()).clone();
        f(&mut s);
        self.set(s);
    }
}

impl ClusterSource for FakeClusterSource {
    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }

    fn import_writer(&self) -> Option<Arc<dyn ImportWriter>> {
        self.writer.clone()
    }

    fn derived_writer(&self) -> Option<Arc<dyn DerivedWriter>> {
        self.derived.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_source_publishes_updates() {
        let src = FakeClusterSource::new();
        let mut rx = src.state();
        assert!(!rx.borrow_and_update().synced);
        src.update(|s| {
            s.synced = true;
            s.nodes
                .insert((String::new(), "n1".into()), Node::default());
        });
        assert!(rx.has_changed().unwrap());
        let s = rx.borrow_and_update();
        assert!(s.synced);
        assert_eq!(s.nodes.len(), 1);
    }
}
