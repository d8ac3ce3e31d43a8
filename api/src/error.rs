//! The crate's error type.

use std::path::PathBuf;

use crate::records::{ClusterId, IdError, RecordKey};

/// Errors of the stores, electors, join and cluster sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect (or authenticate) to etcd.
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    ConnectEtcd {
        /// Endpoints tried, comma-separated.
        endpoints: String,
        /// Client error.
        #[source]
        source: etcd_client::Error,
    },
    /// A TLS file could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    ReadTlsFile {
        /// The file.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An etcd request failed.
    #[error("etcd {op} failed: {source}")]
    Etcd {
        /// What was being done ("put /causeway/...", "lease grant", ...).
        op: String,
        /// Client error.
        #[source]
        source: etcd_client::Error,
    },
    /// The store refused a write the credentials do not allow.
    #[error(
        "permission denied writing {key}: these credentials may write only their own cluster's records"
    )]
    PermissionDenied {
        /// The refused key.
        key: RecordKey,
    },
    /// The (fake) store is made unavailable by a test.
    #[error("store unavailable")]
    Unavailable,
    /// A record failed validation before a write.
    #[error("refusing to write an invalid record: {0}")]
    InvalidRecord(#[from] crate::records::ValidationError),
    /// An identifier was invalid.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The lease file could not be read or written.
    #[error("lease file {path}: {source}")]
    LeaseFile {
        /// The file.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster id is already registered.
    #[error("cluster id {id} is already taken in this clusterset; pick another with --cluster")]
    ClusterIdTaken {
        /// The taken id.
        id: ClusterId,
    },
    /// The requested or computed global CIDR is not usable.
    #[error("{0}")]
    GlobalCidr(String),
    /// The clusterset range has no free block left.
    #[error(
        "no free /{prefix_len} left in clusterset range {range}; widen the range or use a longer prefix"
    )]
    RangeExhausted {
        /// The clusterset range.
        range: ipnet::Ipv4Net,
        /// The block size.
        prefix_len: u8,
    },
    /// `broker init` found authentication already enabled.
    #[error(
        "this etcd already has authentication enabled: broker init has run before; join clusters with the root credentials"
    )]
    BrokerInitialised,
    /// The registry of joined clusters changed under us too many times.
    #[error("the clusterset registry kept changing during join; retry")]
    JoinContention,
    /// The registry held unreadable data.
    #[error("clusterset registry at {key} is corrupt: {source}")]
    CorruptRegistry {
        /// Its key.
        key: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest directory could not be read.
    #[error("cannot read manifest directory {path}: {source}")]
    ReadManifests {
        /// The directory.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes {op} failed: {source}")]
    Kube {
        /// What was being done.
        op: String,
        /// Client error.
        #[source]
        source: kube::Error,
    },
    /// CIDR discovery found nothing for one of the cluster's ranges.
    #[error("could not discover the cluster's {what} (looked at {tried}); pass {flag}")]
    CidrNotFound {
        /// `pod CIDR` or `service CIDR`.
        what: &'static str,
        /// The sources looked at.
        tried: &'static str,
        /// The flag that sets it by hand.
        flag: &'static str,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
