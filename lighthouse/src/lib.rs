//! Lighthouse: the export agent turns local ServiceExports into ServiceImport
//! records; the DNS server answers `clusterset.local` from the imports of
//! every cluster whose tunnel is up.
//!
//! Export side: [`export::ExportAgent`] (in the active gateway) reads the
//! cluster source, plans this cluster's ServiceImport records and their MCS
//! conditions with the pure [`export::plan_exports`], and converges the
//! cluster's own store; the gateway mirrors them to the broker.
//!
//! Import side: [`import::ImportController`] (started by the export agent
//! when the cluster source takes writes) merges every cluster's records of
//! a service with the pure [`import::merge`] into the MCS ServiceImport, and
//! writes it into every namespace-holding cluster's API (or manifest
//! directory) through an `ImportWriter`. Beside it, [`derived::DerivedController`]
//! writes each import's derived Service and MCS EndpointSlices (the pure
//! [`derived::plan_derived`]), so the cluster's service proxy serves the
//! ClusterSetIP; the derived Service's ClusterIP becomes the import's `ips`.
//!
//! DNS side, one way: [`feed`] watches the local store's ServiceImport and
//! connection-status records and edits a [`dns::Index`], published through
//! a [`dns::IndexHandle`]; the [`dns::server`] decodes each packet, asks the
//! pure [`dns::resolve()`] for the answer against the current snapshot, and
//! encodes it within the client's size limit. [`serve_dns`] runs both.
//! [`corefile`] renders the CoreDNS stanza that forwards the zone here.

pub mod corefile;
pub mod daemon;
pub mod derived;
pub mod dns;
pub mod export;
pub mod feed;
mod follow;
pub mod import;
mod pacing;

pub use daemon::{DnsDaemon, serve_dns};

/// Errors of the lighthouse crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cluster id, namespace or name that is not one DNS label.
    #[error("{what} {value:?} is not a DNS label (letters, digits and '-', at most 63)")]
    InvalidLabel {
        /// What was being named.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// A zone that cannot be served.
    #[error(
        "zone {zone:?} cannot be served: {reason}; pass a domain such as clusterset.local with --zone"
    )]
    InvalidZone {
        /// The zone given.
        zone: String,
        /// Why not.
        reason: String,
    },
    /// The server could not bind its sockets.
    #[error("bind DNS {transport} socket on {addr}: {source}; pick another address with --listen")]
    Bind {
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `--answer` with an unknown value.
    #[error("unknown answer mode {0:?}; use per-cluster or clusterset-ip")]
    InvalidAnswerMode(String),
    /// `causeway lighthouse corefile --flavour` with an unknown value.
    #[error("unknown CoreDNS flavour {0:?}; use kubeadm, k3s or rke2")]
    InvalidFlavour(String),
    /// The export status file could not be written or read.
    #[error("export status file {}: {source}", path.display())]
    StatusFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A ServiceExport's status could not be written.
    #[error("write the status of ServiceExport {export}: {source}")]
    WriteExportStatus {
        /// `namespace/name`.
        export: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A metric could not be registered or encoded.
    #[error("encode metrics: {0}")]
    Metrics(#[from] std::fmt::Error),
}
