//! ServiceExport statuses as files of the manifest directory: the export
//! agent's conditions go to `<dir>/causeway-export-status/<namespace>.<name>.yaml`,
//! a ServiceExport that carries only its status (as a write to the status
//! subresource would), and the manifest source shows that status on the
//! user's own ServiceExport of the same name.

use std::path::PathBuf;

use super::imports::write_whole;
use crate::mcs::{ServiceExport, ServiceExportStatus};

/// The subdirectory of the manifest directory that holds export statuses.
pub const EXPORT_STATUS_DIR: &str = "causeway-export-status";

/// Writes ServiceExport statuses into a manifest directory, each file whole
/// through a dot-file and a rename.
#[derive(Debug, Clone)]
pub struct ManifestExportStatusWriter {
    dir: PathBuf,
}

impl ManifestExportStatusWriter {
    /// A writer into manifest directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of ServiceExport `namespace/name`'s status.
    pub fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir
            .join(EXPORT_STATUS_DIR)
            .join(format!("{namespace}.{name}.yaml"))
    }

    /// Replaces the status of ServiceExport `namespace/name`.
    pub async fn write(
        &self,
        namespace: &str,
        name: &str,
        status: &ServiceExportStatus,
    ) -> std::io::Result<()> {
        let export = ServiceExport {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(status.clone()),
        };
        let text = format!(
            "apiVersion: {}/{}\nkind: ServiceExport\n{}",
            crate::mcs::GROUP,
            crate::mcs::VERSION,
            serde_yaml::to_string(&export).map_err(std::io::Error::other)?
        );
        let path = self.path(namespace, name);
        tokio::task::spawn_blocking(move || write_whole(&path, &text))
            .await
            .map_err(std::io::Error::other)?
    }
}
