//! Globalnet: allocates global IPs from the cluster's global CIDR, plans the
//! nftables ruleset of Causeway's own table (NAT, MSS clamping) as plain data,
//! and applies it by diffing the plan against what the kernel holds.
//!
//! Data flow: records (what the broker names) and exports go into
//! [`ipam::allocate`], which yields the egress pool, the gateway's global IP
//! and one ingress IP per export or headless endpoint. Those, with the ready
//! endpoints, go into [`ruleset::plan`], which yields an [`nft::Table`].
//! [`nft::Applier::reconcile`] observes the live table, diffs, and applies
//! only the difference in one `nft -j -f -` transaction. [`conntrack`] cleans
//! up UDP flows to endpoints that left and reads counters for metrics.

pub mod conntrack;
pub mod ipam;
pub mod nft;
pub mod ruleset;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper program could not be started.
    #[error("running {command}: {source}")]
    RunCommand {
        /// The command line.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and failed.
    #[error("{command} failed: {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The live table could not be read.
    #[error("reading nftables table {table}: {reason}")]
    ObserveTable {
        /// Table name.
        table: String,
        /// Why.
        reason: String,
    },
    /// `nft` refused a transaction; nothing of it was applied.
    #[error("programming nftables table {table}: {stderr}")]
    ProgramNat {
        /// Table name.
        table: String,
        /// What `nft` said.
        stderr: String,
    },
    /// A counter under /proc could not be read.
    #[error("reading {path}: {reason}")]
    ReadCounter {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}
