//! ServiceImports as files of the manifest directory: the lab's stand-in
//! for an API server takes the import controller's writes as
//! `<dir>/causeway-imports/<namespace>.<name>.yaml`, which the manifest
//! source then reads back like any other manifest.

use std::path::{Path, PathBuf};

use crate::mcs::{ImportWriteError, ImportWriter, ServiceImport, import_key};

/// The subdirectory of the manifest directory that holds ServiceImports.
pub const IMPORTS_DIR: &str = "causeway-imports";

/// The YAML a ServiceImport is written as (one document, deterministic:
/// maps are sorted).
pub fn render_import(import: &ServiceImport) -> String {
    serde_yaml::to_string(import).unwrap_or_default()
}

/// Writes ServiceImports into a manifest directory (`cat > FILE`, `rm
/// FILE`), each whole through a dot-file and a rename, so the source never
/// reads half of one.
#[derive(Debug, Clone)]
pub struct ManifestImportWriter {
    dir: PathBuf,
}

impl ManifestImportWriter {
    /// A writer into manifest directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of ServiceImport `namespace/name`.
    pub fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir
            .join(IMPORTS_DIR)
            .join(format!("{namespace}.{name}.yaml"))
    }
}

pub(super) fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(()); // unchanged: keep the file's stamp, so nothing re-reads it
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[async_trait::async_trait]
impl ImportWriter for ManifestImportWriter {
    async fn apply(&self, import: &ServiceImport) -> Result<(), ImportWriteError> {
        let (namespace, name) = import_key(import)?;
        let path = self.path(&namespace, &name);
        let text = render_import(import);
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_whole(&target, &text))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| ImportWriteError::File {
                action: "write",
                path,
                source,
            })
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), ImportWriteError> {
        let path = self.path(namespace, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ImportWriteError::File {
                action: "remove",
                path,
                source,
            }),
        }
    }
}
