//! A directory of Kubernetes YAML manifests as a cluster source.
//!
//! The directory is polled (file names, sizes and mtimes) every
//! `poll_interval` (default 200 ms): polling needs no inotify dependency,
//! sees changes made through bind mounts and from other mount namespaces,
//! and costs one `stat` per file. A changed file is parsed again; a file
//! that fails to parse is reported with its path and skipped. A file that
//! was good and turns bad (say, half-written) keeps its last good objects,
//! so a partial write never withdraws exports.
//!
//! Namespaces come from Namespace manifests, plus `default`, `kube-system`,
//! `kube-public` and `kube-node-lease`, which an API server always has.
//! ServiceExports and ServiceImports are read in `multicluster.x-k8s.io`
//! v1alpha1 and v1beta1. The directory also takes writes: the import
//! controller's ServiceImports go to `causeway-imports/` ([`imports`]), derived
//! Services and their EndpointSlices to `causeway-derived/` ([`derived`]),
//! the export agent's ServiceExport statuses to `causeway-export-status/`
//! ([`export_status`]), shown on the ServiceExport of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ClusterSource, ClusterState};
use crate::mcs::{DerivedWriter, ImportWriter, ServiceExport, ServiceImport};

mod derived;
mod export_status;
mod imports;

pub use derived::{DERIVED_DIR, ManifestDerivedWriter, render_derived};
pub use export_status::{EXPORT_STATUS_DIR, ManifestExportStatusWriter};
pub use imports::{IMPORTS_DIR, ManifestImportWriter, render_import};

/// The namespaces an API server creates itself.
pub const BUILTIN_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// One object of a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A ServiceExport.
    ServiceExport(Box<ServiceExport>),
    /// A ServiceImport.
    ServiceImport(Box<ServiceImport>),
    /// The status of a ServiceExport, from `causeway-export-status/`.
    ExportStatus(Box<ServiceExport>),
    /// A Node.
    Node(Box<Node>),
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// Any other kind (Pods, Deployments, ...), left to whoever wants it.
    Other {
        /// `apiVersion`.
        api_version: String,
        /// `kind`.
        kind: String,
        /// The whole object.
        object: serde_yaml::Value,
    },
}

/// Why a manifest text was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML.
    #[error("document {doc}: {source}")]
    Yaml {
        /// 1-based document number.
        doc: usize,
        /// Parser error.
        #[source]
        source: serde_yaml::Error,
    },
    /// Not a Kubernetes object of its kind.
    #[error("document {doc} ({kind} {:?}): {reason}", name.as_deref().unwrap_or("<unnamed>"))]
    Object {
        /// 1-based document number.
        doc: usize,
        /// Its kind.
        kind: String,
        /// Its name, if any.
        name: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

fn typed<T: serde::de::DeserializeOwned>(
    doc: usize,
    kind: &str,
    v: serde_yaml::Value,
) -> Result<T, ManifestError> {
    let name = v
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    if name.as_deref().is_none_or(str::is_empty) {
        return Err(ManifestError::Object {
            doc,
            kind: kind.to_owned(),
            name,
            reason: "metadata.name is missing".into(),
        });
    }
    serde_yaml::from_value(v).map_err(|e| ManifestError::Object {
        doc,
        kind: kind.to_owned(),
        name,
        reason: e.to_string(),
    })
}

fn classify(
    doc: usize,
    v: serde_yaml::Value,
    out: &mut Vec<Manifest>,
) -> Result<(), ManifestError> {
    let api_version = v
        .get("apiVersion")
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .to_owned();
    let kind = v
        .get("kind")
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .to_owned();
    if kind.is_empty() || api_version.is_empty() {
        return Err(ManifestError::Object {
            doc,
            kind,
            name: None,
            reason: "apiVersion and kind are required".into(),
        });
    }
    let m = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = v
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default();
            for item in items {
                classify(doc, item, out)?;
            }
            return Ok(());
        }
        ("v1", "Service") => Manifest::Service(Box::new(typed(doc, &kind, v)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Manifest::EndpointSlice(Box::new(typed(doc, &kind, v)?))
        }
        ("multicluster.x-k8s.io/v1alpha1" | "multicluster.x-k8s.io/v1beta1", "ServiceExport") => {
            Manifest::ServiceExport(Box::new(typed(doc, &kind, v)?))
        }
        ("multicluster.x-k8s.io/v1alpha1" | "multicluster.x-k8s.io/v1beta1", "ServiceImport") => {
            Manifest::ServiceImport(Box::new(typed(doc, &kind, v)?))
        }
        ("v1", "Node") => Manifest::Node(Box::new(typed(doc, &kind, v)?)),
        ("v1", "Namespace") => Manifest::Namespace(Box::new(typed(doc, &kind, v)?)),
        _ => Manifest::Other {
            api_version,
            kind,
            object: v,
        },
    };
    out.push(m);
    Ok(())
}

/// Parses a multi-document YAML text into objects (a `v1` List is
/// flattened; empty documents are skipped).
pub fn parse_manifests(text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let v = serde_yaml::Value::deserialize(de)
            .map_err(|source| ManifestError::Yaml { doc, source })?;
        if v.is_null() {
            continue;
        }
        classify(doc, v, &mut out)?;
    }
    Ok(out)
}

fn ns_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    namespaced: bool,
) -> (String, String) {
    let ns = if namespaced {
        meta.namespace.clone().unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    (ns, meta.name.clone().unwrap_or_default())
}

/// Folds parsed files into one state (later files win on a duplicate key).
pub(crate) fn build_state<'a>(files: impl IntoIterator<Item = &'a Vec<Manifest>>) -> ClusterState {
    let mut s = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    for name in BUILTIN_NAMESPACES {
        let ns = Namespace {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Namespace::default()
        };
        s.namespaces.insert((String::new(), name.to_owned()), ns);
    }
    let mut statuses = Vec::new();
    for m in files.into_iter().flatten() {
        match m {
            Manifest::Service(o) => {
                let mut o = (**o).clone();
                let k = ns_name(&o.metadata, true);
                o.metadata.namespace = Some(k.0.clone());
                s.services.insert(k, o);
            }
            Manifest::EndpointSlice(o) => {
                let mut o = (**o).clone();
                let k = ns_name(&o.metadata, true);
                o.metadata.namespace = Some(k.0.clone());
                s.endpoint_slices.insert(k, o);
            }
            Manifest::ServiceExport(o) => {
                let mut o = (**o).clone();
                let k = ns_name(&o.metadata, true);
                o.metadata.namespace = Some(k.0.clone());
                s.service_exports.insert(k, o);
            }
            Manifest::ServiceImport(o) => {
                let mut o = (**o).clone();
                let k = ns_name(&o.metadata, true);
                o.metadata.namespace = Some(k.0.clone());
                s.service_imports.insert(k, o);
            }
            Manifest::Node(o) => {
                s.nodes.insert(ns_name(&o.metadata, false), (**o).clone());
            }
            Manifest::Namespace(o) => {
                s.namespaces
                    .insert(ns_name(&o.metadata, false), (**o).clone());
            }
            Manifest::ExportStatus(o) => statuses.push(o),
            Manifest::Other { .. } => {}
        }
    }
    // A status shows on its ServiceExport; one whose export is gone shows
    // nowhere.
    for o in statuses {
        if let Some(export) = s.service_exports.get_mut(&ns_name(&o.metadata, true)) {
            export.status.clone_from(&o.status);
        }
    }
    s
}

/// File identity for change detection.
type Stamp = (SystemTime, u64);

/// Lists `*.yaml`, `*.yml` and `*.json` files under `dir` (recursively), sorted.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue; // editors' and atomic writers' temporary files
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => continue, // vanished between readdir and stat
            };
            if meta.is_dir() {
                stack.push(path);
            } else if [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e)) {
                out.insert(path, (meta.modified()?, meta.len()));
            }
        }
    }
    Ok(out)
}

/// The manifest directory source: polls the directory and republishes the
/// state when it changes.
#[derive(Debug)]
pub struct ManifestDirSource {
    state: watch::Receiver<Arc<ClusterState>>,
    problems: watch::Receiver<BTreeMap<PathBuf, String>>,
    dir: PathBuf,
}

impl ClusterSource for ManifestDirSource {
    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// ServiceImports become files of the directory, as an API server
    /// would store them.
    fn import_writer(&self) -> Option<Arc<dyn ImportWriter>> {
        Some(Arc::new(ManifestImportWriter::new(self.dir.clone())))
    }

    /// Derived Services and their slices become files of the directory.
    fn derived_writer(&self) -> Option<Arc<dyn DerivedWriter>> {
        Some(Arc::new(ManifestDerivedWriter::new(self.dir.clone())))
    }
}

impl ManifestDirSource {
    /// Starts watching `dir` every `poll_interval` until `cancel` fires.
    pub fn spawn(dir: PathBuf, poll_interval: Duration, cancel: CancellationToken) -> Self {
        let (state_tx, state) = watch::channel(Arc::new(ClusterState::default()));
        let (problems_tx, problems) = watch::channel(BTreeMap::new());
        let source = Self {
            state,
            problems,
            dir: dir.clone(),
        };
        tokio::spawn(async move {
            let mut poller = Poller::default();
            let mut tick = tokio::time::interval(poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let d = dir.clone();
                let prev = std::mem::take(&mut poller);
                // File I/O off the async workers.
                let Ok((p, changed)) = tokio::task::spawn_blocking(move || {
                    let mut p = prev;
                    let changed = p.poll(&d);
                    (p, changed)
                })
                .await
                else {
                    return;
                };
                poller = p;
                if changed {
                    let s = Arc::new(build_state(poller.files.values().map(|(_, m)| m)));
                    state_tx.send_if_modified(|old| {
                        if **old != *s {
                            *old = s.clone();
                            true
                        } else {
                            false
                        }
                    });
                    problems_tx.send_if_modified(|old| {
                        if *old != poller.problems {
                            old.clone_from(&poller.problems);
                            true
                        } else {
                            false
                        }
                    });
                }
            }
        });
        source
    }

    /// Files that failed to parse, with the error; changes are pushed.
    pub fn problems(&self) -> watch::Receiver<BTreeMap<PathBuf, String>> {
        self.problems.clone()
    }
}

#[derive(Debug, Default)]
struct Poller {
    /// Last good parse of each file, with the stamp it was read at.
    files: BTreeMap<PathBuf, (Stamp, Vec<Manifest>)>,
    /// Stamps of files that failed, so they are not re-read until they change.
    failed: BTreeMap<PathBuf, Stamp>,
    problems: BTreeMap<PathBuf, String>,
    scanned_once: bool,
}

impl Poller {
    /// Re-reads changed files; true when anything changed.
    fn poll(&mut self, dir: &Path) -> bool {
        let stamps = match scan(dir) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("cannot read manifest directory: {e}");
                if self.problems.get(dir) != Some(&msg) {
                    warn!(path = %dir.display(), error = %e, "cannot read manifest directory");
                    self.problems.insert(dir.to_path_buf(), msg);
                    return true;
                }
                return false;
            }
        };
        let mut changed = !self.scanned_once | self.problems.remove(dir).is_some();
        self.scanned_once = true;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .chain(self.failed.keys())
            .filter(|p| !stamps.contains_key(*p))
            .cloned()
            .collect();
        for p in gone {
            debug!(path = %p.display(), "manifest removed");
            changed |= self.files.remove(&p).is_some();
            self.failed.remove(&p);
            changed |= self.problems.remove(&p).is_some();
        }
        for (path, stamp) in stamps {
            let known = self.files.get(&path).map(|(s, _)| *s);
            if known == Some(stamp) || self.failed.get(&path) == Some(&stamp) {
                continue;
            }
            changed = true;
            let statuses = path.starts_with(dir.join(EXPORT_STATUS_DIR));
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_manifests(&t).map_err(|e| e.to_string()))
                .map(|m| if statuses { as_statuses(m) } else { m });
            match parsed {
                Ok(m) => {
                    debug!(path = %path.display(), objects = m.len(), "manifest read");
                    self.failed.remove(&path);
                    self.problems.remove(&path);
                    self.files.insert(path, (stamp, m));
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping malformed manifest file");
                    self.failed.insert(path.clone(), stamp);
                    self.problems.insert(path, e);
                }
            }
        }
        changed
    }
}

/// The ServiceExports of a status file are statuses, nothing else.
fn as_statuses(manifests: Vec<Manifest>) -> Vec<Manifest> {
    manifests
        .into_iter()
        .filter_map(|m| match m {
            Manifest::ServiceExport(o) => Some(Manifest::ExportStatus(o)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
