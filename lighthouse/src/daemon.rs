//! The DNS daemon (`causeway lighthouse`): the [`crate::feed`] and the
//! [`DnsServer`] together, so the CLI is a thin shell.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::records::ClusterId;
use causeway_api::store::Store;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::dns::{DnsMetrics, DnsServer, Index, IndexHandle, ServerConfig};

/// How long the server holds its first answers for the store's first
/// listing: queries wait in the socket rather than get a negative answer
/// that resolvers would cache.
pub const FIRST_SYNC_WAIT: Duration = Duration::from_secs(2);

/// A bound DNS daemon, ready to [`run`](DnsDaemon::run).
pub struct DnsDaemon {
    server: DnsServer,
    store: Arc<dyn Store>,
    local: ClusterId,
    index: IndexHandle,
    state: Option<tokio::sync::watch::Receiver<Arc<causeway_api::source::ClusterState>>>,
}

impl DnsDaemon {
    /// Registers the DNS metrics in `registry` and binds `config.listen`
    /// (UDP and TCP), so a bad address fails here rather than in `run`.
    pub async fn bind(
        config: ServerConfig,
        store: Arc<dyn Store>,
        local: ClusterId,
        registry: &mut Registry,
    ) -> Result<Self, Error> {
        let index = IndexHandle::new(Index::with_local(crate::feed::dns_cluster(&local)?));
        let metrics = DnsMetrics::register(registry);
        let server = DnsServer::bind(config, index.clone(), metrics).await?;
        Ok(Self {
            server,
            store,
            local,
            index,
            state: None,
        })
    }

    /// Answers ClusterSetIP imports with the `spec.ips` of the MCS
    /// ServiceImports `state` (the cluster source) shows, in
    /// `--answer clusterset-ip` mode.
    pub fn with_cluster_state(
        mut self,
        state: tokio::sync::watch::Receiver<Arc<causeway_api::source::ClusterState>>,
    ) -> Self {
        self.state = Some(state);
        self
    }

    /// The UDP address bound.
    pub fn udp_addr(&self) -> SocketAddr {
        self.server.udp_addr()
    }

    /// The TCP address bound.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.server.tcp_addr()
    }

    /// The index the server answers from.
    pub fn index(&self) -> IndexHandle {
        self.index.clone()
    }

    /// Feeds the index from the store and serves until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let feed_cancel = cancel.child_token();
        let (synced_tx, synced) = oneshot::channel();
        let feed = tokio::spawn(crate::feed::feed(
            self.store,
            self.local,
            self.index,
            feed_cancel.clone(),
            Some(synced_tx),
            self.state,
        ));
        tokio::select! {
            _ = cancel.cancelled() => {}
            first = tokio::time::timeout(FIRST_SYNC_WAIT, synced) => match first {
                Ok(Ok(())) => info!("DNS index loaded from the store"),
                _ => warn!(
                    wait = ?FIRST_SYNC_WAIT,
                    "store not listed yet; answering from an empty index until it is"
                ),
            },
        }
        self.server.run(cancel).await;
        feed_cancel.cancel();
        if let Err(error) = feed.await {
            warn!(%error, "DNS feed task failed");
        }
    }
}

/// Serves `clusterset.local` for cluster `local` from `store` until `cancel`
/// fires: [`DnsDaemon::bind`] then [`DnsDaemon::run`]. `registry` stays
/// borrowed until this returns; to serve the metrics meanwhile, use the two
/// steps and share the registry after `bind`.
pub async fn serve_dns(
    config: ServerConfig,
    store: Arc<dyn Store>,
    local: ClusterId,
    registry: &mut Registry,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let daemon = DnsDaemon::bind(config, store, local, registry).await?;
    daemon.run(cancel).await;
    Ok(())
}
