//! The gateway's control loop: campaign, and while this candidate holds the
//! lease, run the cluster's side of every tunnel.
//!
//! A candidate first waits for the election to decide (a restart within the
//! lease TTL re-attaches and changes nothing before that: settled decision
//! 5). While **active** it brings up the cable, publishes the cluster's
//! Endpoint to its own store and the broker, mirrors the other clusters'
//! records from the broker into its own store ([`mirror`]), and converges
//! peers, routes and health probes on the remote Endpoints its own store
//! holds, on every change and on a timer. While **standby** it strips every
//! peer from the device before anything else (settled decision 4). A clean
//! stop resigns, so a standby takes over at once.

pub mod globalnet;
pub mod kernel;
pub mod mirror;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use causeway_api::election::Elector;
use causeway_api::records::RecordKey;
use causeway_api::records::{
    AnyRecord, CableBackend, Cluster, ClusterId, ConnectionState, ConnectionStatus, Endpoint,
    GlobalCidr, Kind, WireGuardKey,
};
use causeway_api::store::{RecordSet, Store};
use futures::StreamExt;
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cable::plan::{LocalKind, LocalNetworks, RemoteEndpoint, diff_peers, plan_peers};
use crate::cable::{Cable, DeviceSpec, KeyPair, PublicKey};
use crate::health::{self, HealthView, Prober, ProberConfig, Responder, StatusChange};
use causeway_api::records::ServiceImport;
use causeway_api::source::ClusterSource;
use causeway_lighthouse::export::{
    ExportAgent, ExportAgentOptions, ExportKey as LighthouseKey, GlobalIps,
};
use globalnet::{GlobalnetConfig, NatPlan};

/// What one gateway candidate is, and what its cluster owns.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub cluster: ClusterId,
    /// This candidate's node name (its identity in the election).
    pub node: String,
    /// The node's address on the node network: route agents route via it.
    pub private_ip: IpAddr,
    /// The address remote gateways send to, when it differs from the private one.
    pub public_ip: Option<IpAddr>,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// The cluster's key pair (the same on every candidate).
    pub key: KeyPair,
    pub backend: CableBackend,
    /// Tunnel MTU.
    pub mtu: u32,
    /// The gateway's own address inside the tunnel (settled decision 8).
    pub tunnel_ip: IpAddr,
    pub pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub node_cidrs: Vec<IpNet>,
    pub global_cidr: Option<GlobalCidr>,
    /// WireGuard persistent keepalive, seconds.
    pub keepalive: u16,
    /// How often the datapath is re-converged without any event (drift repair).
    pub resync: Duration,
    /// Globalnet, when the cluster has a global CIDR.
    pub globalnet: Option<GlobalnetConfig>,
}

impl GatewayConfig {
    /// Subnets this cluster serves to others: its global CIDR under
    /// Globalnet, else its pod and service CIDRs.
    pub fn subnets(&self) -> Vec<IpNet> {
        match self.global_cidr {
            Some(g) => vec![IpNet::V4(g.net())],
            None => self
                .pod_cidrs
                .iter()
                .chain(&self.service_cidrs)
                .copied()
                .collect(),
        }
    }

    /// The Endpoint record this gateway publishes while active.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            cluster: self.cluster.clone(),
            node_name: self.node.clone(),
            public_ip: self.public_ip,
            private_ip: self.private_ip,
            port: self.listen_port,
            public_key: WireGuardKey::from_bytes(*self.key.public().as_bytes()),
            subnets: self.subnets(),
            backend: self.backend,
            mtu: self.mtu.min(u16::MAX as u32) as u16,
            health_check_ip: Some(self.tunnel_ip),
            egress_ips: Vec::new(),
        }
    }

    /// The Cluster record: the address space this cluster brings.
    pub fn cluster_record(&self) -> Cluster {
        Cluster {
            id: self.cluster.clone(),
            pod_cidrs: self.pod_cidrs.clone(),
            service_cidrs: self.service_cidrs.clone(),
            global_cidr: self.global_cidr,
        }
    }

    /// The ranges no remote may claim.
    pub fn local_networks(&self) -> LocalNetworks {
        let mut ranges = BTreeMap::new();
        ranges.insert(LocalKind::Pod, self.pod_cidrs.clone());
        ranges.insert(LocalKind::Service, self.service_cidrs.clone());
        ranges.insert(LocalKind::Node, self.node_cidrs.clone());
        if let Some(g) = self.global_cidr {
            ranges.insert(LocalKind::Global, vec![IpNet::V4(g.net())]);
        }
        LocalNetworks {
            cluster: self.cluster.to_string(),
            public_key: Some(self.key.public()),
            ranges,
        }
    }
}

/// Errors of the control loop.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the WireGuard device failed: {0}")]
    Cable(#[from] crate::Error),
    #[error("the cluster's own store failed: {0}")]
    Store(#[from] causeway_api::Error),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Kernel state the active gateway owns besides the WireGuard device:
/// routes, the tunnel address, nftables. Implemented over rtnetlink and
/// `nft` by the binary; a fake in tests.
#[async_trait::async_trait]
pub trait Datapath: Send + Sync {
    /// Makes the kernel hold exactly the tunnel routes (and tunnel address,
    /// and nftables rules) for these remote subnets.
    async fn converge(&self, subnets: &BTreeSet<IpNet>) -> Result<(), String>;
    /// Removes all of it: a standby answers for nothing.
    async fn withdraw(&self) -> Result<(), String>;
}

/// What the engine reports to metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayState {
    pub active: bool,
    /// Remote clusters with a configured peer.
    pub peers: BTreeSet<String>,
    /// Each configured peer's public key, by cluster.
    pub peer_keys: BTreeMap<String, PublicKey>,
    /// Remote clusters refused, with why.
    pub refused: BTreeMap<String, String>,
    /// How many times this candidate became active.
    pub activations: u64,
}

/// One gateway candidate.
pub struct Gateway {
    pub config: GatewayConfig,
    /// The cluster's own store.
    pub local: Arc<dyn Store>,
    /// The broker: `None` until connected (the gateway runs without it).
    pub broker: watch::Receiver<Option<Arc<dyn Store>>>,
    pub cable: Arc<dyn Cable>,
    pub datapath: Arc<dyn Datapath>,
    pub state: watch::Sender<GatewayState>,
    /// Every peer's health while active (for metrics and diagnostics).
    pub health: watch::Sender<Option<HealthView<ClusterId>>>,
    /// The cluster's Services, EndpointSlices and ServiceExports (Globalnet's input).
    pub source: Option<Arc<dyn ClusterSource>>,
    /// Globalnet's latest plan while active (the datapath programs it).
    pub nat: watch::Sender<Option<NatPlan>>,
    /// Where the export agent writes each export's conditions.
    pub export_status: Option<std::path::PathBuf>,
    /// Writes each export's conditions to its ServiceExport's status (Kubernetes).
    pub export_writer: Option<Arc<dyn causeway_lighthouse::export::kube_status::StatusWriter>>,
}

/// Globalnet's allocations as the export agent takes them.
fn global_ips(plan: &NatPlan) -> GlobalIps {
    let key = |k: &causeway_globalnet::ipam::ExportKey| {
        LighthouseKey::new(k.namespace.clone(), k.name.clone())
    };
    GlobalIps {
        services: plan
            .services
            .iter()
            .map(|(k, ip)| (key(k), vec![IpAddr::V4(*ip)]))
            .collect(),
        endpoints: plan
            .headless
            .iter()
            .map(|(k, eps)| {
                (
                    key(k),
                    eps.iter()
                        .map(|(_, global, pod)| (IpAddr::V4(*pod), IpAddr::V4(*global)))
                        .collect(),
                )
            })
            .collect(),
        errors: plan
            .errors
            .iter()
            .map(|(k, reason)| (key(k), reason.clone()))
            .collect(),
    }
}

impl Gateway {
    /// Campaigns until `shutdown` fires, then resigns and withdraws.
    pub async fn run(
        self: Arc<Self>,
        elector: Arc<dyn Elector>,
        shutdown: CancellationToken,
    ) -> Result<(), EngineError> {
        let mut active = elector.active();
        let mut holder = elector.holder();
        // Change nothing until the election has decided (settled decision 5).
        loop {
            let decided = *active.borrow()
                || holder
                    .borrow()
                    .as_deref()
                    .is_some_and(|h| h != self.config.node);
            if decided {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return self.stop(&*elector).await,
                _ = active.changed() => {}
                _ = holder.changed() => {}
            }
        }
        loop {
            if *active.borrow_and_update() {
                tracing::info!(cluster = %self.config.cluster, node = %self.config.node, "active: bringing up the cable");
                self.state.send_modify(|s| {
                    s.active = true;
                    s.activations += 1;
                });
                let term = shutdown.child_token();
                let serving = tokio::spawn(self.clone().serve_active(term.clone()));
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = wait_for(&mut active, false) => {}
                }
                term.cancel();
                let _ = serving.await;
                if shutdown.is_cancelled() {
                    return self.stop(&*elector).await;
                }
                tracing::warn!(cluster = %self.config.cluster, node = %self.config.node, "lost the lease: withdrawing");
            }
            self.state.send_modify(|s| {
                s.active = false;
                s.peers.clear();
            });
            self.withdraw().await;
            tokio::select! {
                _ = shutdown.cancelled() => return self.stop(&*elector).await,
                _ = wait_for(&mut active, true) => {}
            }
        }
    }

    /// A clean stop: hand the lease over at once, then withdraw.
    async fn stop(&self, elector: &dyn Elector) -> Result<(), EngineError> {
        if let Err(e) = elector.resign().await {
            tracing::warn!(error = %e, "could not resign; the standby takes over when the lease expires");
        }
        self.withdraw().await;
        Ok(())
    }

    /// Strips every peer and route: a standby must not answer for the cluster.
    async fn withdraw(&self) {
        let cable = self.cable.clone();
        match tokio::task::spawn_blocking(move || cable.strip_peers()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not strip the peers"),
            Err(e) => tracing::error!(error = %e, "could not strip the peers"),
        }
        if let Err(e) = self.datapath.withdraw().await {
            tracing::error!(error = %e, "could not withdraw the tunnel routes");
        }
    }

    /// Everything an active gateway does, until `stop`.
    async fn serve_active(self: Arc<Self>, stop: CancellationToken) {
        let spec = DeviceSpec {
            private_key: self.config.key.private().clone(),
            listen_port: self.config.listen_port,
            mtu: self.config.mtu,
        };
        let cable = self.cable.clone();
        // Retried until it works: without a device there is nothing to serve.
        let mut backoff = Duration::from_millis(100);
        loop {
            let cable = cable.clone();
            let spec = spec.clone();
            match tokio::task::spawn_blocking(move || cable.ensure(&spec)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not bring up the WireGuard device")
                }
                Err(e) => tracing::error!(error = %e, "could not bring up the WireGuard device"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        // Health: answer the peers' probes, probe theirs (settled decision 8).
        let (peers_tx, peers_rx) = watch::channel(BTreeMap::new());
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let tunnel_ip = self.config.tunnel_ip;
        match Responder::bind(SocketAddr::new(tunnel_ip, health::DEFAULT_PORT)) {
            Ok(responder) => drop(tokio::spawn(responder.run(stop.clone()))),
            Err(e) => tracing::error!(error = %e, "could not answer health probes"),
        }
        match Prober::bind(ProberConfig::new(tunnel_ip)) {
            Ok(prober) => {
                self.health.send_replace(Some(prober.view()));
                drop(tokio::spawn(prober.run(peers_rx, changes_tx, stop.clone())));
            }
            Err(e) => tracing::error!(error = %e, "could not probe the peers"),
        }
        let (own_tx, own_rx) = watch::channel(None);
        let tasks = [
            tokio::spawn(self.clone().own_records(own_tx, stop.clone())),
            tokio::spawn(mirror::publish(self.local.clone(), own_rx, stop.clone())),
            tokio::spawn(mirror::mirror(
                self.broker.clone(),
                self.local.clone(),
                self.config.cluster.clone(),
                stop.clone(),
            )),
            tokio::spawn(self.clone().converge_loop(peers_tx, stop.clone())),
            tokio::spawn(self.clone().record_health(changes_rx)),
            tokio::spawn(self.clone().plan_globalnet(stop.clone())),
            tokio::spawn(self.clone().export(stop.clone())),
        ];
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Converges peers and routes on the remote Endpoints in the cluster's
    /// own store, on every change and every `resync`.
    async fn converge_loop(
        self: Arc<Self>,
        probe: watch::Sender<BTreeMap<ClusterId, SocketAddr>>,
        stop: CancellationToken,
    ) {
        let mut events = self.local.watch(Some(Kind::Endpoint), None);
        let mut endpoints = RecordSet::default();
        let mut written: BTreeMap<PublicKey, SocketAddr> = BTreeMap::new();
        let mut statuses: BTreeMap<String, (ConnectionState, Option<String>)> = BTreeMap::new();
        let mut tick = tokio::time::interval(self.config.resync);
        let mut nat = self.nat.subscribe();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.next() => match ev {
                    Some(ev) => endpoints.apply(ev),
                    None => return,
                },
                _ = nat.changed() => {}
                _ = tick.tick() => {}
            }
            if !endpoints.is_synced() {
                continue;
            }
            let remotes: Vec<Endpoint> = endpoints
                .typed::<Endpoint>()
                .filter(|e| e.cluster != self.config.cluster)
                .collect();
            match self.converge(&remotes, &mut written).await {
                Ok(report) => {
                    let targets = remotes
                        .iter()
                        .filter(|e| report.peers.contains(e.cluster.as_str()))
                        .filter_map(|e| {
                            Some((
                                e.cluster.clone(),
                                SocketAddr::new(e.health_check_ip?, health::DEFAULT_PORT),
                            ))
                        })
                        .collect();
                    probe.send_if_modified(|old| {
                        let changed = *old != targets;
                        *old = targets;
                        changed
                    });
                    self.report(report, &mut statuses).await
                }
                Err(e) => tracing::error!(error = %e, "could not converge the datapath; retrying"),
            }
        }
    }

    /// One convergence: plan, diff, apply. Returns the peers configured and
    /// the remotes refused.
    async fn converge(
        &self,
        remotes: &[Endpoint],
        written: &mut BTreeMap<PublicKey, SocketAddr>,
    ) -> Result<Converged, EngineError> {
        let remotes: Vec<RemoteEndpoint> = remotes.iter().map(remote_endpoint).collect();
        let cable = self.cable.clone();
        let observed = tokio::task::spawn_blocking(move || cable.observe())
            .await??
            .unwrap_or_default();
        let installed: BTreeSet<PublicKey> = observed.peers.keys().copied().collect();
        let plan = plan_peers(
            &self.config.local_networks(),
            &remotes,
            &installed,
            Some(self.config.keepalive),
        );
        let diff = diff_peers(&plan.peers, &observed.peers, written);
        if !diff.is_empty() {
            tracing::info!(
                add = diff.add.len(),
                update = diff.update.len(),
                remove = diff.remove.len(),
                "applying peer changes"
            );
            let cable = self.cable.clone();
            tokio::task::spawn_blocking(move || cable.apply(&diff)).await??;
        }
        *written = plan.endpoints();
        let subnets: BTreeSet<IpNet> = plan
            .peers
            .values()
            .flat_map(|p| p.config.allowed_ips.iter().copied())
            .collect();
        if let Err(e) = self.datapath.converge(&subnets).await {
            tracing::error!(error = %e, "could not program the tunnel routes");
        }
        Ok(Converged {
            keys: plan
                .peers
                .iter()
                .map(|(k, p)| (p.cluster.clone(), *k))
                .collect(),
            peers: plan.peers.values().map(|p| p.cluster.clone()).collect(),
            refused: plan
                .refused
                .iter()
                .map(|(c, r)| (c.clone(), r.to_string()))
                .collect(),
        })
    }

    /// Publishes connection statuses that changed: `connecting` for a new
    /// peer, `error` with the reason for a refused one.
    async fn report(
        &self,
        converged: Converged,
        last: &mut BTreeMap<String, (ConnectionState, Option<String>)>,
    ) {
        // Configured peers' statuses come from the health prober; this
        // reports refused remotes, and forgets remotes that left.
        let mut now: BTreeMap<String, (ConnectionState, Option<String>)> = BTreeMap::new();
        for (peer, reason) in &converged.refused {
            now.insert(peer.clone(), (ConnectionState::Error, Some(reason.clone())));
        }
        for (peer, (state, reason)) in &now {
            if last.get(peer) == Some(&(*state, reason.clone())) {
                continue;
            }
            tracing::warn!(peer = %peer, reason = ?reason, "refusing a remote cluster's Endpoint");
            let Ok(peer_id) = peer.parse::<ClusterId>() else {
                continue;
            };
            let status = AnyRecord::ConnectionStatus(ConnectionStatus {
                cluster: self.config.cluster.clone(),
                peer: peer_id,
                state: *state,
                reason: reason.clone(),
                rtt: None,
                since_ms: unix_ms(),
            });
            if let Err(e) = self.local.put(&status).await {
                tracing::warn!(error = %e, peer = %peer, "could not record the connection status");
            }
        }
        let previous = self.state.borrow().peers.clone();
        for gone in previous.iter().chain(last.keys()) {
            if converged.peers.contains(gone) || now.contains_key(gone) {
                continue;
            }
            let Ok(peer) = gone.parse::<ClusterId>() else {
                continue;
            };
            let key = RecordKey {
                cluster: self.config.cluster.clone(),
                kind: Kind::ConnectionStatus,
                name: peer.to_string(),
            };
            if let Err(e) = self.local.delete(&key).await {
                tracing::warn!(error = %e, peer = %gone, "could not forget the connection status");
            }
        }
        self.state.send_modify(|s| {
            s.peers = converged.peers.clone();
            s.peer_keys = converged.keys.clone();
            s.refused = converged.refused.clone();
        });
        *last = now;
    }

    /// This cluster's own records while active. Under Globalnet the
    /// Endpoint carries the egress pool: until the first plan, the pool the
    /// stored record names (a newly active gateway must not erase what it
    /// re-adopts from), then the planned one.
    async fn own_records(
        self: Arc<Self>,
        tx: watch::Sender<Option<Vec<AnyRecord>>>,
        stop: CancellationToken,
    ) {
        let records = |egress_ips: Vec<IpAddr>| {
            Some(vec![
                AnyRecord::Endpoint(Endpoint {
                    egress_ips,
                    ..self.config.endpoint()
                }),
                AnyRecord::Cluster(self.config.cluster_record()),
            ])
        };
        if self.config.globalnet.is_none() {
            tx.send_replace(records(Vec::new()));
            // Dropping `tx` would end the publisher before it has put them.
            stop.cancelled().await;
            return;
        }
        let stored = match self.local.list(Some(Kind::Endpoint)).await {
            Ok(listing) => listing
                .records
                .into_iter()
                .find_map(|r| match r {
                    AnyRecord::Endpoint(e) if e.cluster == self.config.cluster => {
                        Some(e.egress_ips)
                    }
                    _ => None,
                })
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the stored egress pool; planning afresh");
                Vec::new()
            }
        };
        tx.send_replace(records(stored));
        let mut nat = self.nat.subscribe();
        loop {
            if let Some(plan) = nat.borrow_and_update().as_ref() {
                let egress = plan.egress.iter().copied().map(IpAddr::V4).collect();
                let wanted = records(egress);
                tx.send_if_modified(|have| {
                    let changed = *have != wanted;
                    *have = wanted;
                    changed
                });
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = nat.changed() => if r.is_err() { return },
            }
        }
    }

    /// Keeps Globalnet's plan current while active: on every change of the
    /// cluster's exports and of its own ServiceImport records.
    async fn plan_globalnet(self: Arc<Self>, stop: CancellationToken) {
        let (Some(config), Some(source)) = (self.config.globalnet.clone(), self.source.clone())
        else {
            return;
        };
        let mut state = source.state();
        let mut events = self.local.watch(Some(Kind::ServiceImport), None);
        let mut endpoint_events = self.local.watch(Some(Kind::Endpoint), None);
        let (mut imports, mut endpoints) = (RecordSet::default(), RecordSet::default());
        loop {
            let snapshot = state.borrow_and_update().clone();
            if snapshot.synced && imports.is_synced() && endpoints.is_synced() {
                let own: Vec<ServiceImport> = imports
                    .typed::<ServiceImport>()
                    .filter(|i| i.cluster == self.config.cluster)
                    .collect();
                let endpoint = endpoints
                    .typed::<Endpoint>()
                    .find(|e| e.cluster == self.config.cluster);
                let plan = globalnet::plan(&config, &snapshot, &own, endpoint.as_ref());
                for (export, reason) in &plan.errors {
                    tracing::warn!(%export, %reason, "cannot serve an export");
                }
                self.nat.send_if_modified(|old| {
                    let changed = old.as_ref() != Some(&plan);
                    *old = Some(plan);
                    changed
                });
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                r = state.changed() => if r.is_err() { break },
                ev = events.next() => match ev {
                    Some(ev) => imports.apply(ev),
                    None => break,
                },
                ev = endpoint_events.next() => match ev {
                    Some(ev) => endpoints.apply(ev),
                    None => break,
                },
            }
        }
        self.nat.send_replace(None);
    }

    /// The export agent (lighthouse) while active: this cluster's
    /// ServiceExports become ServiceImport records in its own store (the
    /// mirror takes them to the broker), with Globalnet's global IPs.
    async fn export(self: Arc<Self>, stop: CancellationToken) {
        let Some(source) = self.source.clone() else {
            return;
        };
        let globalnet = self.config.globalnet.as_ref().map(|_| {
            let (tx, rx) = watch::channel(Arc::new(GlobalIps::default()));
            let mut nat = self.nat.subscribe();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(plan) = nat.borrow_and_update().as_ref() {
                        tx.send_replace(Arc::new(global_ips(plan)));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = nat.changed() => if r.is_err() { return },
                    }
                }
            });
            rx
        });
        let options = ExportAgentOptions {
            globalnet,
            status_file: self.export_status.clone(),
            status_writer: self.export_writer.clone(),
            ..ExportAgentOptions::default()
        };
        ExportAgent::new(
            &*source,
            self.local.clone(),
            self.config.cluster.clone(),
            options,
        )
        .run(stop)
        .await;
    }

    /// Writes each health state change of a peer to the cluster's store
    /// (only changes: RTT lives in metrics, settled decision 9).
    async fn record_health(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<StatusChange<ClusterId>>,
    ) {
        while let Some(change) = changes.recv().await {
            tracing::info!(peer = %change.peer, state = ?change.status.state, reason = %change.status.reason, "peer health changed");
            if !self.state.borrow().peers.contains(change.peer.as_str())
                && change.previous.is_some()
            {
                continue;
            }
            let record = AnyRecord::ConnectionStatus(change.to_record(&self.config.cluster));
            if let Err(e) = self.local.put(&record).await {
                tracing::warn!(error = %e, peer = %change.peer, "could not record the connection status");
            }
        }
    }
}

struct Converged {
    peers: BTreeSet<String>,
    keys: BTreeMap<String, PublicKey>,
    refused: BTreeMap<String, String>,
}

/// A remote Endpoint record as the peer planner takes it.
fn remote_endpoint(e: &Endpoint) -> RemoteEndpoint {
    RemoteEndpoint {
        cluster: e.cluster.to_string(),
        public_key: e.public_key.to_base64(),
        endpoint: SocketAddr::new(e.public_ip.unwrap_or(e.private_ip), e.port),
        subnets: e.subnets.clone(),
    }
}

async fn wait_for(rx: &mut watch::Receiver<bool>, value: bool) {
    while *rx.borrow_and_update() != value {
        if rx.changed().await.is_err() {
            // The elector is gone: never true again.
            std::future::pending::<()>().await;
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
