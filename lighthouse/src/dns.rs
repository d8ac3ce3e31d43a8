//! The `clusterset.local` DNS server: index, resolver, wire handling, sockets.

pub mod index;
pub mod metrics;
pub mod resolve;
pub mod sample;
pub mod server;
pub mod wire;

pub use index::{
    Backing, ClusterExport, ClusterId, Endpoint, ImportedService, Index, IndexHandle, Protocol,
    ServiceKey, ServicePort, ServiceType,
};
pub use metrics::DnsMetrics;
pub use resolve::{Answer, AnswerMode, ResolverOptions, resolve};
pub use server::{DnsServer, ServerConfig};
pub use wire::{Handled, Transport, handle_packet};
