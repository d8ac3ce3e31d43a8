//! Leader election among a cluster's gateway candidates.
//!
//! A candidate campaigns once; the [`Elector`]'s `tokio::sync::watch`
//! channel says whether it is active now. The etcd backend holds a lease
//! with a short TTL (default 2 s) and drops its active status before the
//! lease can expire when keep-alives stop getting through, so two candidates
//! are never active at once. A clean stop resigns (revokes the lease), so a
//! standby takes over at once.

mod etcd;
mod fake;
mod kubernetes;

use std::time::Duration;

use tokio::sync::watch;

pub use etcd::EtcdElector;
pub use fake::{FakeElection, FakeElector};
pub use kubernetes::{KubeLeaseElector, LeaseConfig};

use crate::error::Result;

/// How a candidate campaigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// The election's name (one per cluster and role, e.g. `gateway`).
    pub election: String,
    /// This candidate's identity (its node name), published as the holder.
    pub candidate: String,
    /// Lease TTL. etcd counts whole seconds and raises TTLs below 1.5x its
    /// election timeout (Settled decision 6).
    pub ttl: Duration,
    /// Where the lease id is kept (under `/run`), so a restart within the
    /// TTL re-attaches instead of failing over (Settled decision 5).
    pub lease_file: Option<std::path::PathBuf>,
}

impl ElectionConfig {
    /// The default config: a 2 s TTL and no lease file.
    pub fn new(election: impl Into<String>, candidate: impl Into<String>) -> Self {
        Self {
            election: election.into(),
            candidate: candidate.into(),
            ttl: Duration::from_secs(2),
            lease_file: None,
        }
    }

    /// How often keep-alives are sent: six per TTL.
    pub fn keep_alive_interval(&self) -> Duration {
        self.ttl / 6
    }

    /// How long before the lease could expire this candidate stops acting as
    /// active when keep-alives fail: a quarter TTL.
    pub fn safety_margin(&self) -> Duration {
        self.ttl / 4
    }
}

/// One candidate in an election.
#[async_trait::async_trait]
pub trait Elector: Send + Sync {
    /// Whether this candidate is active now; changes are pushed.
    fn active(&self) -> watch::Receiver<bool>;

    /// The current holder's identity, as far as this candidate knows.
    fn holder(&self) -> watch::Receiver<Option<String>>;

    /// Stops campaigning and gives up the lease so another candidate takes
    /// over at once. `active` reads `false` before the lease is released.
    async fn resign(&self) -> Result<()>;

    /// Whether this candidate's last campaign round reached the store (a
    /// standby that can take over); `None` when the backend does not say.
    fn campaign_ok(&self) -> Option<watch::Receiver<bool>> {
        None
    }
}
