//! Derived Services and their MCS EndpointSlices as files of the manifest
//! directory: `<dir>/causeway-derived/<namespace>.<import>.yaml` holds one
//! import's Service and then its slices, which the manifest source reads
//! back like any other manifest (and the lab's service proxy serves).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::imports::write_whole;
use crate::mcs::{Derived, DerivedWriteError, DerivedWriter};

/// The subdirectory of the manifest directory that holds derived Services.
pub const DERIVED_DIR: &str = "causeway-derived";

/// The YAML of one import's derived objects: the Service, then each slice
/// in name order (deterministic: maps are sorted).
pub fn render_derived(derived: &Derived) -> String {
    let mut docs = vec![serde_yaml::to_string(&derived.service).unwrap_or_default()];
    docs.extend(
        derived
            .slices
            .values()
            .map(|s| serde_yaml::to_string(s).unwrap_or_default()),
    );
    docs.join("---\n")
}

/// Writes derived Services into a manifest directory (`cat > FILE`, `rm
/// FILE`), each file whole through a dot-file and a rename.
#[derive(Debug, Clone)]
pub struct ManifestDerivedWriter {
    dir: PathBuf,
}

impl ManifestDerivedWriter {
    /// A writer into manifest directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of import `namespace/import`'s derived objects.
    pub fn path(&self, namespace: &str, import: &str) -> PathBuf {
        self.dir
            .join(DERIVED_DIR)
            .join(format!("{namespace}.{import}.yaml"))
    }
}

#[async_trait::async_trait]
impl DerivedWriter for ManifestDerivedWriter {
    /// The file holds every slice, so a stale one is gone with the rewrite.
    async fn apply(
        &self,
        derived: &Derived,
        _stale: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError> {
        let path = self.path(&derived.namespace, &derived.import);
        let text = render_derived(derived);
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_whole(&target, &text))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| DerivedWriteError::File {
                action: "write",
                path,
                source,
            })
    }

    async fn delete(
        &self,
        namespace: &str,
        import: &str,
        _slices: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError> {
        let path = self.path(namespace, import);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DerivedWriteError::File {
                action: "remove",
                path,
                source,
            }),
        }
    }
}
