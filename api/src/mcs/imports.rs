//! Writing a cluster's MCS ServiceImports: the [`ImportWriter`] trait, the
//! Kubernetes implementation ([`KubeImportWriter`]) and an in-memory fake.
//! The manifest-directory implementation (the lab's API server stand-in)
//! lives with its source, `ManifestImportWriter`.
//!
//! The import controller in lighthouse decides what to write; a writer
//! only applies one object or deletes one, and both are idempotent.

use super::fake::FakeObjects;
use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::{GROUP, ServiceImport, VERSION};

/// The label on every ServiceImport Causeway writes: the controller deletes
/// only imports that carry it.
pub const MANAGED_BY_LABEL: &str = "causeway.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "import-controller";
/// The field manager of the import controller's server-side applies.
pub const IMPORT_FIELD_MANAGER: &str = "causeway-import-controller";

/// Why a ServiceImport could not be written or deleted.
#[derive(Debug, thiserror::Error)]
pub enum ImportWriteError {
    /// The API server refused or could not be reached.
    #[error("{action} ServiceImport {namespace}/{name}: {source}")]
    Kube {
        /// `apply`, `apply the status of` or `delete`.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// A file of the manifest directory could not be written or removed.
    #[error("{action} {}: {source}", path.display())]
    File {
        /// `write` or `remove`.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object lacks a name or namespace.
    #[error("a ServiceImport without a namespace or name cannot be written")]
    Unnamed,
}

/// `(namespace, name)` of a ServiceImport.
pub fn import_key(import: &ServiceImport) -> Result<(String, String), ImportWriteError> {
    match (&import.metadata.namespace, &import.metadata.name) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Ok((ns.clone(), name.clone()))
        }
        _ => Err(ImportWriteError::Unnamed),
    }
}

/// Writes and deletes the cluster's ServiceImports.
#[async_trait::async_trait]
pub trait ImportWriter: Send + Sync + std::fmt::Debug {
    /// Creates or updates `import` (metadata labels and annotations, spec
    /// and status) so that it is exactly what is given.
    async fn apply(&self, import: &ServiceImport) -> Result<(), ImportWriteError>;

    /// Deletes the ServiceImport `namespace/name`; one that is gone is
    /// success.
    async fn delete(&self, namespace: &str, name: &str) -> Result<(), ImportWriteError>;
}

/// Writes ServiceImports through the Kubernetes API: `kubectl apply
/// --server-side --field-manager=causeway-import-controller
/// --force-conflicts` of the object, then of its status subresource, and
/// `kubectl delete serviceimport`.
#[derive(Clone)]
pub struct KubeImportWriter {
    client: kube::Client,
}

impl std::fmt::Debug for KubeImportWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeImportWriter").finish_non_exhaustive()
    }
}

impl KubeImportWriter {
    /// A writer using `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl ImportWriter for KubeImportWriter {
    async fn apply(&self, import: &ServiceImport) -> Result<(), ImportWriteError> {
        let (namespace, name) = import_key(import)?;
        let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), &namespace);
        let fail = |action, e| ImportWriteError::Kube {
            action,
            namespace: namespace.clone(),
            name: name.clone(),
            source: Box::new(e),
        };
        let api_version = format!("{GROUP}/{VERSION}");
        let metadata = serde_json::json!({
            "name": name,
            "namespace": namespace,
            "labels": import.metadata.labels.clone().unwrap_or_default(),
            "annotations": import.metadata.annotations.clone().unwrap_or_default(),
        });
        // Server-side apply owns exactly the fields sent: a label or
        // annotation left out now (no longer exported) is removed.
        let object = serde_json::json!({
            "apiVersion": api_version,
            "kind": "ServiceImport",
            "metadata": metadata,
            "spec": import.spec,
        });
        let params = PatchParams::apply(IMPORT_FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| fail("apply", e))?;
        let status = serde_json::json!({
            "apiVersion": api_version,
            "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": namespace},
            "status": import.status.clone().unwrap_or_default(),
        });
        api.patch_status(&name, &params, &Patch::Apply(&status))
            .await
            .map_err(|e| fail("apply the status of", e))?;
        Ok(())
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), ImportWriteError> {
        let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(ImportWriteError::Kube {
                action: "delete",
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(e),
            }),
        }
    }
}

/// One call a [`FakeImportWriter`] received.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportWrite {
    /// `apply` of this object.
    Apply(Box<ServiceImport>),
    /// `delete` of `(namespace, name)`.
    Delete(String, String),
}

/// An in-memory [`ImportWriter`] for tests: holds the objects and logs the
/// calls; [`FakeImportWriter::fail`] makes calls fail.
#[derive(Debug, Clone, Default)]
pub struct FakeImportWriter {
    fake: FakeObjects<ServiceImport, ImportWrite>,
}

impl FakeImportWriter {
    /// The objects written and not deleted.
    pub fn objects(&self) -> BTreeMap<(String, String), ServiceImport> {
        self.fake.objects()
    }

    /// Every call so far, in order.
    pub fn log(&self) -> Vec<ImportWrite> {
        self.fake.log()
    }

    /// Makes every later call fail (true) or succeed (false).
    pub fn fail(&self, failing: bool) {
        self.fake.fail(failing);
    }

    fn failure(action: &'static str, namespace: &str, name: &str) -> ImportWriteError {
        ImportWriteError::File {
            action,
            path: format!("fake/{namespace}.{name}").into(),
            source: std::io::Error::other("the fake fails"),
        }
    }
}

#[async_trait::async_trait]
impl ImportWriter for FakeImportWriter {
    async fn apply(&self, import: &ServiceImport) -> Result<(), ImportWriteError> {
        let key = import_key(import)?;
        let call = ImportWrite::Apply(Box::new(import.clone()));
        if !self.fake.call(call, |o| {
            o.insert(key.clone(), import.clone());
        }) {
            return Err(Self::failure("write", &key.0, &key.1));
        }
        Ok(())
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), ImportWriteError> {
        let key = (namespace.to_owned(), name.to_owned());
        let call = ImportWrite::Delete(key.0.clone(), key.1.clone());
        if !self.fake.call(call, |o| {
            o.remove(&key);
        }) {
            return Err(Self::failure("remove", namespace, name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
