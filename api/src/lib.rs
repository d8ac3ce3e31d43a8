//! Causeway's shared vocabulary: the records clusters exchange (Cluster,
//! Endpoint, ServiceImport, connection status), the broker and elector traits
//! with their etcd and Kubernetes backends, and the cluster sources that
//! stream a cluster's own Services, EndpointSlices, ServiceExports and Nodes.

pub mod records;

pub use records::{
    AnyRecord, Cluster, ClusterId, ConnectionStatus, Endpoint, GlobalCidr, Kind, RecordKey,
    ServiceImport,
};
pub mod election;
pub mod error;
pub mod join;
pub mod mcs;
pub mod source;
pub mod store;

pub use error::{Error, Result};
pub use store::{FakeStore, RecordSet, Store, WatchEvent};
#[cfg(feature = "testing")]
pub mod testing;
