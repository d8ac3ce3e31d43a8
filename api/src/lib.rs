//! Causeway's shared vocabulary: the records clusters exchange, the stores
//! that hold them, leader election, joining, and the cluster sources.
//!
//! Data flow:
//!
//! - A cluster source ([`source`]: Kubernetes API or a manifest directory)
//!   publishes the local cluster's Services, EndpointSlices, ServiceExports,
//!   Nodes and Namespaces as one [`source::ClusterState`].
//! - Components turn that state into [`records`] (Cluster, Endpoint,
//!   ServiceImport, ConnectionStatus) and write their own cluster's records to
//!   a [`Store`] ([`store`]: etcd, Kubernetes CRDs, or the fake). The same
//!   trait serves a cluster's own store and the broker.
//! - Readers [`Store::watch`] (list, then watch, resume, re-list) and fold the
//!   events into a [`RecordSet`]; refused records never reach them.
//! - An [`election::Elector`] (etcd lease, Kubernetes Lease, or the fake) says
//!   on a watch channel which gateway candidate is active.
//! - [`discovery`] finds a cluster's pod and service CIDRs from its API.
//! - [`join`] sets up the broker (auth, per-cluster credentials) and gives
//!   each cluster a global CIDR in one transaction.

pub mod discovery;
pub mod election;
pub mod error;
pub mod join;
pub mod mcs;
pub mod records;
pub mod source;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use records::{
    AnyRecord, Cluster, ClusterId, ConnectionStatus, Endpoint, GlobalCidr, Kind, RecordKey,
    ServiceImport,
};
pub use store::{FakeStore, RecordSet, Store, WatchEvent};
