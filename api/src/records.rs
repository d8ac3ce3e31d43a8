//! The records clusters exchange through the broker and mirror into their own
//! stores: [`Cluster`], [`Endpoint`], [`ServiceImport`] and
//! [`ConnectionStatus`].
//!
//! Every record is stored as a versioned envelope
//! (`{"version":1,"kind":"Endpoint","spec":{...}}`) under a key that names the
//! cluster that owns it (see [`RecordKey`]). [`decode`] checks the envelope,
//! the record's own invariants and that the record names the same cluster as
//! its key, so a malformed or foreign record is refused before anyone uses it.
//! Unknown fields are ignored: a writer may add an optional field within one
//! envelope version; anything an older reader would misread bumps the version.

mod codec;
mod ids;
mod kinds;

pub use codec::{DecodeError, ENVELOPE_VERSION, decode, encode};
pub use ids::{ClusterId, GlobalCidr, IdError, ObjectName, WireGuardKey};
/// True when two networks share an address.
pub use kinds::overlaps;
pub use kinds::{
    AnyRecord, CableBackend, ClientIpConfig, Cluster, ConnectionState, ConnectionStatus, Endpoint,
    ExportProperties, HeadlessEndpoint, IpFamily, Kind, Protocol, ReadyPods, RecordKey, RttStats,
    ServiceImport, ServiceImportType, ServicePort, SessionAffinity, SessionAffinityConfig,
    TargetPort, ValidationError,
};

#[cfg(test)]
pub(crate) mod tests;
