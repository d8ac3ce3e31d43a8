//! The daemons: `causeway gateway`, `causeway route-agent` and `causeway
//! lighthouse`. Each parses its flags into typed config, connects to the
//! cluster's own store (etcd in the lab, or with `--store kubernetes` the
//! cluster's API: [`KubeCluster`]) and, for the gateway, the broker, and
//! hands over to the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use causeway_api::election::{ElectionConfig, Elector, EtcdElector, KubeLeaseElector, LeaseConfig};
use causeway_api::records::{CableBackend, ClusterId, GlobalCidr};
use causeway_api::source::{
    ClusterSource, KubeSource, ManifestDirSource, ManifestExportStatusWriter,
};
use causeway_api::store::{EtcdConfig, EtcdStore, KubeStore, Store};
use causeway_gateway::cable::embedded::EmbeddedCable;
use causeway_gateway::cable::mtu::{Family, tunnel_mtu};
use causeway_gateway::cable::wgctrl::WgctrlCable;
use causeway_gateway::cable::{Cable, InterfaceName, KeyPair};
use causeway_gateway::engine::globalnet::GlobalnetConfig;
use causeway_gateway::engine::kernel::KernelDatapath;
use causeway_gateway::engine::{Gateway, GatewayConfig, GatewayState};
use causeway_lighthouse::export::kube_status::{KubeStatusWriter, StatusWriter};
use clap::{Args, ValueEnum};
use futures::TryStreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerFile;

/// Which WireGuard implementation the gateway runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CableFlag {
    /// Kernel WireGuard where the module exists, else the embedded one.
    Auto,
    Kernel,
    /// boringtun, embedded in the gateway process, on a TUN device.
    Userspace,
    /// An external wireguard-go, driven over its UAPI socket.
    WireguardGo,
}

/// Where a daemon's cluster store is (flags shared by every daemon).
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The cluster's own store: `kubernetes` (the cluster's API, in-cluster
    /// config else KUBECONFIG) or etcd endpoints, comma-separated.
    #[arg(long, env = "CAUSEWAY_STORE", value_delimiter = ',')]
    pub store: Vec<String>,
    /// With `--store kubernetes`: the namespace of Causeway's records and the
    /// gateway Lease (the release namespace).
    #[arg(long, env = "CAUSEWAY_NAMESPACE", default_value = "causeway")]
    pub namespace: String,
}

/// Which store `--store` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The cluster's Kubernetes API, records in this namespace.
    Kubernetes { namespace: String },
    /// An etcd per cluster (the lab).
    Etcd(Vec<String>),
}

impl StoreArgs {
    /// The store these flags name.
    pub fn choice(&self) -> Result<StoreChoice> {
        match self.store.as_slice() {
            [] => bail!("--store is required: `kubernetes`, or the cluster's own etcd endpoints"),
            [k] if k == "kubernetes" => Ok(StoreChoice::Kubernetes {
                namespace: self.namespace.clone(),
            }),
            many if many.iter().any(|s| s == "kubernetes") => {
                bail!("--store kubernetes takes no etcd endpoints besides")
            }
            endpoints => Ok(StoreChoice::Etcd(endpoints.to_vec())),
        }
    }
}

/// The cluster's address ranges (flags shared by the gateway and the route
/// agent). With `--store kubernetes` pod and service CIDRs are discovered
/// when not given; flags win.
#[derive(Args, Debug, Clone)]
pub struct CidrArgs {
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpNet>,
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNet>,
    #[arg(long = "node-cidr")]
    pub node_cidrs: Vec<IpNet>,
    /// The cluster's global CIDR: turns Globalnet on.
    #[arg(long)]
    pub global_cidr: Option<GlobalCidr>,
}

impl CidrArgs {
    /// Pod and service CIDRs: the flags, or (Kubernetes) discovered.
    async fn resolve(&self, kube: Option<&KubeCluster>) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
        match kube {
            Some(k) => {
                let c = k.cidrs(&self.pod_cidrs, &self.service_cidrs).await?;
                Ok((c.pod_cidrs, c.service_cidrs))
            }
            None => {
                if self.pod_cidrs.is_empty() {
                    bail!("--pod-cidr is required with an etcd --store");
                }
                if self.service_cidrs.is_empty() {
                    bail!("--service-cidr is required with an etcd --store");
                }
                Ok((self.pod_cidrs.clone(), self.service_cidrs.clone()))
            }
        }
    }
}

/// The name of the gateway's Lease in the release namespace.
pub const GATEWAY_LEASE: &str = "causeway-gateway";

/// The Node annotation a gateway node's public address is read from.
pub const PUBLIC_IP_ANNOTATION: &str = "causeway.io/public-ip";

/// A cluster's Kubernetes API as the daemons use it: what each reads and
/// writes goes through here, so the RBAC test exercises the same calls.
#[derive(Clone)]
pub struct KubeCluster {
    pub client: kube::Client,
    pub namespace: String,
}

impl KubeCluster {
    /// In-cluster config, else KUBECONFIG.
    pub async fn connect(namespace: &str) -> Result<Self> {
        let client = kube::Client::try_default().await.context(
            "--store kubernetes: no in-cluster service account and no usable KUBECONFIG",
        )?;
        Ok(Self::new(client, namespace))
    }

    /// Over an existing client.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
        }
    }

    /// CIDR discovery; flags win.
    pub async fn cidrs(
        &self,
        pod: &[IpNet],
        service: &[IpNet],
    ) -> Result<causeway_api::discovery::ClusterCidrs> {
        Ok(causeway_api::discovery::discover(&self.client, &self.namespace, pod, service).await?)
    }

    /// The cluster's own store: `causeway.io` records in the namespace.
    pub fn store(&self) -> KubeStore {
        KubeStore::new(self.client.clone(), &self.namespace)
    }

    /// Campaigns for the gateway Lease with a TTL of `ttl`.
    pub fn elector(&self, node: &str, ttl: Duration) -> KubeLeaseElector {
        let config = LeaseConfig {
            lease_duration: ttl,
            renew_deadline: ttl * 3 / 4,
            retry_period: ttl / 8,
            ..LeaseConfig::new(&self.namespace, GATEWAY_LEASE, node)
        };
        KubeLeaseElector::campaign(self.client.clone(), config)
    }

    /// Services, EndpointSlices, ServiceExports, Nodes and Namespaces.
    pub fn source(&self, cancel: CancellationToken) -> KubeSource {
        KubeSource::spawn(self.client.clone(), cancel)
    }

    /// The address node `node` is reached at from other clusters, when its
    /// annotation [`PUBLIC_IP_ANNOTATION`] names one (a gateway behind NAT:
    /// each node its own, which one chart value could not give).
    pub async fn node_public_ip(&self, node: &str) -> Result<Option<IpAddr>> {
        let nodes: kube::Api<Node> = kube::Api::all(self.client.clone());
        let Some(found) = nodes.get_opt(node).await.with_context(|| {
            format!("read Node {node} (for its {PUBLIC_IP_ANNOTATION} annotation)")
        })?
        else {
            return Ok(None);
        };
        let Some(value) = found
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PUBLIC_IP_ANNOTATION))
        else {
            return Ok(None);
        };
        value.trim().parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "Node {node} has annotation {PUBLIC_IP_ANNOTATION}={value:?}, which is not an IP address: \
                 fix it (kubectl annotate node {node} --overwrite {PUBLIC_IP_ANNOTATION}=ADDRESS) or pass --public-ip"
            )
        })
    }

    /// Writes export conditions to ServiceExport status.
    pub fn status_writer(&self) -> KubeStatusWriter {
        KubeStatusWriter::new(self.client.clone())
    }

    /// Whether the release is being removed (the ConfigMap
    /// [`crate::cleanup::REMOVAL_CONFIGMAP`] exists in the namespace).
    pub async fn removal_requested(&self) -> Result<bool> {
        let maps: kube::Api<ConfigMap> =
            kube::Api::namespaced(self.client.clone(), &self.namespace);
        Ok(maps
            .get_opt(crate::cleanup::REMOVAL_CONFIGMAP)
            .await
            .with_context(|| {
                format!(
                    "read ConfigMap {}/{}",
                    self.namespace,
                    crate::cleanup::REMOVAL_CONFIGMAP
                )
            })?
            .is_some())
    }
}

/// Flags of `causeway gateway`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// This cluster's id.
    #[arg(long, env = "CAUSEWAY_CLUSTER")]
    pub cluster: ClusterId,
    /// This node's name: the candidate's identity in the election.
    #[arg(long, env = "CAUSEWAY_NODE")]
    pub node: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The broker connection written by `causeway join`.
    #[arg(long, env = "CAUSEWAY_BROKER_CONFIG")]
    pub broker_config: PathBuf,
    /// The cluster's WireGuard private key (mode 0600 or 0400), written by `causeway join`.
    #[arg(long, env = "CAUSEWAY_KEY_FILE")]
    pub key_file: PathBuf,
    /// This node's address on the node network.
    #[arg(long)]
    pub private_ip: IpAddr,
    /// The address remote gateways reach this node at, when not the private
    /// one (default with `--store kubernetes`: the node's annotation
    /// `causeway.io/public-ip`, if it has one).
    #[arg(long)]
    pub public_ip: Option<IpAddr>,
    #[command(flatten)]
    pub cidrs: CidrArgs,
    /// This gateway's address inside the tunnel: an unused address of its
    /// node's pod slice. With Globalnet it is the gateway's global IP, which
    /// Globalnet allocates, and this flag is not needed.
    #[arg(long)]
    pub tunnel_ip: Option<IpAddr>,
    /// How many egress global IPs Globalnet SNATs the cluster's traffic to.
    #[arg(long, default_value_t = causeway_globalnet::ipam::DEFAULT_EGRESS_POOL)]
    pub egress_pool: usize,
    /// Read the cluster's Services, EndpointSlices and ServiceExports from
    /// this directory of Kubernetes manifests (default with `--store
    /// kubernetes`: from the API).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub cable: CableFlag,
    /// The WireGuard interface.
    #[arg(long, default_value = "causeway0")]
    pub interface: String,
    #[arg(long, default_value_t = 4500)]
    pub listen_port: u16,
    /// Tunnel MTU; default: the underlay interface's MTU less WireGuard's overhead.
    #[arg(long)]
    pub tunnel_mtu: Option<u32>,
    /// Gateway lease TTL in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub lease_ttl: u64,
    /// Where the lease id is kept, so a restart re-attaches to its lease.
    #[arg(long, default_value = "/run/causeway/gateway.lease")]
    pub lease_file: PathBuf,
    /// Where the export agent writes each export's conditions (JSON), for
    /// `causeway show exports --status-file`.
    #[arg(long)]
    pub export_status: Option<PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:9464")]
    pub metrics_listen: std::net::SocketAddr,
    /// The wireguard-go binary, for `--cable wireguard-go`.
    #[arg(long, default_value = "wireguard-go")]
    pub wireguard_go: PathBuf,
    /// On SIGTERM, when the ConfigMap `causeway-removal` exists in
    /// `--namespace`, remove this node's gateway state (nftables table,
    /// routes, interface) after releasing the Lease.
    #[arg(long)]
    pub cleanup_on_removal: bool,
}

/// The gateway's store, elector, cluster source and export status writer.
pub type Backends = (
    Arc<dyn Store>,
    Arc<dyn Elector>,
    Option<Arc<dyn ClusterSource>>,
    Option<Arc<dyn StatusWriter>>,
);

impl KubeCluster {
    /// What `causeway gateway --store kubernetes` runs on: the records in
    /// the namespace, the Lease, the cluster source and ServiceExport status.
    pub fn gateway_backends(
        &self,
        node: &str,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> Backends {
        (
            Arc::new(self.store()),
            Arc::new(self.elector(node, ttl)),
            Some(Arc::new(self.source(cancel))),
            Some(Arc::new(self.status_writer())),
        )
    }
}

/// `causeway gateway`: campaigns and serves until SIGTERM or SIGINT.
pub async fn gateway(args: GatewayArgs) -> Result<()> {
    let key = KeyPair::load(&args.key_file)?;
    let broker_file = BrokerFile::load(&args.broker_config)?;
    let interface = InterfaceName::new(&args.interface).context("--interface")?;
    let store_choice = args.store.choice()?;
    let kube = match &store_choice {
        StoreChoice::Kubernetes { namespace } => Some(KubeCluster::connect(namespace).await?),
        StoreChoice::Etcd(_) => None,
    };
    let public_ip = match (args.public_ip, &kube) {
        (Some(ip), _) => Some(ip),
        (None, Some(k)) => k.node_public_ip(&args.node).await?,
        (None, None) => None,
    };
    let underlay = public_ip.unwrap_or(args.private_ip);
    let family = if underlay.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    if args.cleanup_on_removal && kube.is_none() {
        bail!("--cleanup-on-removal needs --store kubernetes (the removal ConfigMap lives there)");
    }
    let (pod_cidrs, service_cidrs) = args.cidrs.resolve(kube.as_ref()).await?;
    let mtu = tunnel_mtu(underlay_mtu(underlay).await?, family, args.tunnel_mtu)?;
    let (cable, backend): (Arc<dyn Cable>, CableBackend) = match args.cable {
        CableFlag::Kernel => (
            Arc::new(WgctrlCable::kernel(interface.clone(), None)),
            CableBackend::Kernel,
        ),
        CableFlag::WireguardGo => (
            Arc::new(WgctrlCable::wireguard_go(
                interface.clone(),
                None,
                args.wireguard_go.clone(),
            )),
            CableBackend::WireguardGo,
        ),
        CableFlag::Userspace => (
            Arc::new(EmbeddedCable::new(interface.clone(), None)),
            CableBackend::Userspace,
        ),
        CableFlag::Auto if kernel_has_wireguard() => (
            Arc::new(WgctrlCable::kernel(interface.clone(), None)),
            CableBackend::Kernel,
        ),
        CableFlag::Auto => (
            Arc::new(EmbeddedCable::new(interface.clone(), None)),
            CableBackend::Userspace,
        ),
    };
    let global_cidr = args.cidrs.global_cidr;
    let tunnel_ip = match (args.tunnel_ip, global_cidr) {
        (Some(ip), _) => ip,
        // IPAM gives the gateway the first address of the global CIDR.
        (None, Some(g)) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(g.net().network()) + 1)),
        (None, None) => bail!(
            "--tunnel-ip is needed without Globalnet: give an unused address of this node's pod slice"
        ),
    };
    let node_cidrs = args.cidrs.node_cidrs.clone();
    let globalnet = global_cidr.map(|g| GlobalnetConfig {
        cidr: g.net(),
        egress_pool: args.egress_pool,
        local_sources: pod_cidrs
            .iter()
            .chain(&service_cidrs)
            .chain(&node_cidrs)
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(*n),
                IpNet::V6(_) => None,
            })
            .collect(),
        mtu: mtu.min(u32::from(u16::MAX)) as u16,
    });
    if globalnet.is_some() && args.manifests.is_none() && kube.is_none() {
        bail!(
            "Globalnet needs the cluster's Services and ServiceExports: pass --manifests DIR or --store kubernetes"
        );
    }
    let config = GatewayConfig {
        cluster: args.cluster.clone(),
        node: args.node.clone(),
        private_ip: args.private_ip,
        public_ip,
        listen_port: args.listen_port,
        key,
        backend,
        mtu,
        tunnel_ip,
        pod_cidrs,
        service_cidrs,
        node_cidrs,
        global_cidr,
        keepalive: 10,
        resync: Duration::from_secs(10),
        globalnet,
    };
    tracing::info!(cluster = %config.cluster, node = %config.node, backend = ?backend, mtu, "gateway starting");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let ttl = Duration::from_secs(args.lease_ttl);
    let (local, elector, kube_source, export_writer): Backends = match (&store_choice, &kube) {
        (_, Some(k)) => k.gateway_backends(&args.node, ttl, shutdown.clone()),
        (StoreChoice::Etcd(endpoints), None) => {
            let local = connect_store(&EtcdConfig::new(endpoints.clone())).await?;
            let election = ElectionConfig {
                ttl,
                lease_file: Some(args.lease_file.clone()),
                ..ElectionConfig::new("gateway", args.node.clone())
            };
            let elector =
                EtcdElector::campaign(local.client().clone(), local.layout(), election).await?;
            (Arc::new(local), Arc::new(elector), None, None)
        }
        (StoreChoice::Kubernetes { .. }, None) => unreachable!("connected above"),
    };
    let (broker_tx, broker_rx) = watch::channel(None);
    tokio::spawn(connect_broker(broker_file, broker_tx, shutdown.clone()));

    // A manifest directory holds the ServiceExports, so their statuses too.
    let (source, export_writer): (Option<Arc<dyn ClusterSource>>, _) = match args.manifests.clone()
    {
        Some(dir) => (
            Some(Arc::new(ManifestDirSource::spawn(
                dir.clone(),
                Duration::from_millis(200),
                shutdown.clone(),
            ))),
            Some(Arc::new(ManifestExportStatusWriter::new(dir)) as Arc<dyn StatusWriter>),
        ),
        None => (kube_source, export_writer),
    };
    let (nat_tx, nat_rx) = watch::channel(None);
    let datapath = KernelDatapath::new(
        interface.clone(),
        tunnel_ip,
        global_cidr.map(|g| IpNet::V4(g.net())),
        mtu.min(u32::from(u16::MAX)) as u16,
        nat_rx,
    );
    let gateway = Arc::new(Gateway {
        config,
        local,
        broker: broker_rx,
        cable,
        datapath: Arc::new(datapath),
        state: watch::channel(GatewayState::default()).0,
        health: watch::channel(None).0,
        source,
        nat: nat_tx,
        export_status: args.export_status.clone(),
        export_writer,
    });
    let metrics = crate::metrics::serve_with(
        args.metrics_listen,
        gateway_metrics(gateway.clone()),
        gateway_readiness(&gateway, &*elector),
        shutdown.clone(),
    );
    tokio::spawn(async move {
        if let Err(e) = metrics.await {
            tracing::error!(error = %e, "no /metrics");
        }
    });
    gateway.run(elector, shutdown).await?;
    if args.cleanup_on_removal
        && let Some(k) = &kube
    {
        remove_on_removal(k, crate::cleanup::Owner::Gateway, &interface).await;
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// After a clean stop: when the release is being removed, remove `owner`'s
/// kernel state too (the Lease was released by the stop).
async fn remove_on_removal(
    k: &KubeCluster,
    owner: crate::cleanup::Owner,
    interface: &InterfaceName,
) {
    match k.removal_requested().await {
        Ok(false) => {
            tracing::info!("not being removed: leaving the datapath state for the next start")
        }
        Ok(true) => match crate::cleanup::remove(owner, interface).await {
            Ok(removed) => {
                tracing::info!(tables = ?removed.tables, routes = removed.routes.len(), interfaces = ?removed.interfaces, "release removed: cleaned up this node")
            }
            Err(e) => {
                tracing::error!(error = %e, "could not clean up this node; run `causeway cleanup`")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether the release is being removed; leaving state")
        }
    }
}

/// `/readyz` of the gateway: ready while active, or while standby and its
/// last campaign round reached the store (etcd: while some candidate holds
/// the lease).
pub fn gateway_readiness(gateway: &Arc<Gateway>, elector: &dyn Elector) -> crate::metrics::Ready {
    let state = gateway.state.subscribe();
    let holder = elector.holder();
    let campaign_ok = elector.campaign_ok();
    Arc::new(move || {
        if state.borrow().active {
            return true;
        }
        match &campaign_ok {
            Some(ok) => *ok.borrow(),
            None => holder.borrow().is_some(),
        }
    })
}

/// Connects to the cluster's own store, retrying: without it a gateway can
/// neither campaign nor serve.
async fn connect_store(config: &EtcdConfig) -> Result<EtcdStore> {
    let mut backoff = Duration::from_millis(200);
    for attempt in 1.. {
        match EtcdStore::connect(config).await {
            Ok(store) => return Ok(store),
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %e, "the cluster's store is not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("connect to the cluster's own store (--store)"),
        }
    }
    unreachable!()
}

/// Connects to the broker in the background: the gateway serves without it.
async fn connect_broker(
    file: BrokerFile,
    tx: watch::Sender<Option<Arc<dyn Store>>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match file.connect().await {
            Ok(store) => {
                tracing::info!("connected to the broker");
                tx.send_replace(Some(store));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the broker is not reachable; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Cancels `token` on SIGTERM or SIGINT: the one root shutdown signal.
pub async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    token.cancel();
}

/// Whether this kernel has WireGuard (`/sys/module/wireguard`).
fn kernel_has_wireguard() -> bool {
    std::path::Path::new("/sys/module/wireguard").exists()
}

/// The MTU of the interface that holds `ip` (`ip -o addr show to IP`).
async fn underlay_mtu(ip: IpAddr) -> Result<u32> {
    let (connection, handle, _) = rtnetlink::new_connection().context("open a netlink socket")?;
    let conn = tokio::spawn(connection);
    let result = async {
        let mut addresses = handle.address().get().set_address_filter(ip).execute();
        let mut index = None;
        while let Some(msg) = addresses.try_next().await? {
            if msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(a) if *a == ip))
            {
                index = Some(msg.header.index);
            }
        }
        let Some(index) = index else {
            bail!("no interface of this node holds {ip}: check --public-ip and --private-ip");
        };
        let link = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await?
            .context("the underlay interface vanished")?;
        link.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .context("the underlay interface reports no MTU")
    }
    .await;
    conn.abort();
    result
}

/// Flags of `causeway route-agent`.
#[derive(Args, Debug)]
pub struct RouteAgentArgs {
    /// This node's cluster.
    #[arg(long, env = "CAUSEWAY_CLUSTER")]
    pub cluster: ClusterId,
    /// This node's name, as the gateway names it in the Endpoint record.
    #[arg(long, env = "CAUSEWAY_NODE")]
    pub node: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub cidrs: CidrArgs,
    /// Interfaces whose reverse-path filter is set to loose (besides `all`).
    #[arg(long = "rp-filter-interface")]
    pub rp_filter_interfaces: Vec<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:9466")]
    pub metrics_listen: std::net::SocketAddr,
    /// On SIGTERM, when the ConfigMap `causeway-removal` exists in
    /// `--namespace`, remove this node's routes and nftables table.
    #[arg(long)]
    pub cleanup_on_removal: bool,
}

/// `causeway route-agent`: routes remote subnets via the active gateway
/// until SIGTERM or SIGINT.
pub async fn route_agent(args: RouteAgentArgs) -> Result<()> {
    use causeway_gateway::route_agent::{AgentConfig, Datapath, run};
    use causeway_gateway::routes::netlink::NetlinkRoutes;
    use causeway_globalnet::nft::NftCli;

    let store_choice = args.store.choice()?;
    let kube = match &store_choice {
        StoreChoice::Kubernetes { namespace } => Some(KubeCluster::connect(namespace).await?),
        StoreChoice::Etcd(_) => None,
    };
    if args.cleanup_on_removal && kube.is_none() {
        bail!("--cleanup-on-removal needs --store kubernetes (the removal ConfigMap lives there)");
    }
    let (pod_cidrs, service_cidrs) = args.cidrs.resolve(kube.as_ref()).await?;
    let mut local_subnets: Vec<IpNet> = pod_cidrs
        .iter()
        .chain(&service_cidrs)
        .chain(&args.cidrs.node_cidrs)
        .copied()
        .collect();
    local_subnets.extend(args.cidrs.global_cidr.map(|g| IpNet::V4(g.net())));
    let config = AgentConfig {
        cluster: args.cluster,
        node_name: args.node,
        local_subnets,
        rp_filter: Some(args.rp_filter_interfaces),
        resync: Duration::from_secs(10),
    };
    let store: Arc<dyn Store> = match (&store_choice, &kube) {
        (_, Some(k)) => Arc::new(k.store()),
        (StoreChoice::Etcd(endpoints), None) => {
            Arc::new(connect_store(&EtcdConfig::new(endpoints.clone())).await?)
        }
        (StoreChoice::Kubernetes { .. }, None) => unreachable!("connected above"),
    };
    let datapath = Datapath::new(NetlinkRoutes::new(), NftCli::new());
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let render: crate::metrics::Render = Arc::new(String::new);
    let metrics = crate::metrics::serve(args.metrics_listen, render, shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = metrics.await {
            tracing::error!(error = %e, "no /healthz");
        }
    });
    tracing::info!(cluster = %config.cluster, node = %config.node_name, "route agent starting");
    run(config, store, Arc::new(datapath), shutdown).await;
    if args.cleanup_on_removal
        && let Some(k) = &kube
    {
        let unused = InterfaceName::new("causeway0").expect("a valid name");
        remove_on_removal(k, crate::cleanup::Owner::RouteAgent, &unused).await;
    }
    tracing::info!("route agent stopped");
    Ok(())
}

/// The gateway's metrics: whether it is active, how often it became active,
/// and per peer: bytes, handshake age, RTT and health.
fn gateway_metrics(gateway: Arc<Gateway>) -> crate::metrics::Render {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::AtomicU64;

    type Peer = Vec<(String, String)>;
    type FloatGauge = Gauge<f64, AtomicU64>;
    Arc::new(move || {
        let mut registry = Registry::with_prefix("causeway_gateway");
        let active = Gauge::<i64>::default();
        let activations = Gauge::<i64>::default();
        let rx = Family::<Peer, Gauge>::default();
        let tx = Family::<Peer, Gauge>::default();
        let handshake_age = Family::<Peer, FloatGauge>::default();
        let rtt = Family::<Peer, FloatGauge>::default();
        let up = Family::<Peer, Gauge>::default();
        registry.register(
            "active",
            "1 while this candidate is the active gateway",
            active.clone(),
        );
        registry.register(
            "activations",
            "times this candidate became active",
            activations.clone(),
        );
        registry.register("peer_rx_bytes", "bytes received from the peer", rx.clone());
        registry.register("peer_tx_bytes", "bytes sent to the peer", tx.clone());
        registry.register(
            "peer_handshake_age_seconds",
            "seconds since the last handshake",
            handshake_age.clone(),
        );
        registry.register(
            "peer_rtt_seconds",
            "mean round trip of health probes",
            rtt.clone(),
        );
        registry.register(
            "peer_connected",
            "1 while the peer answers health probes",
            up.clone(),
        );
        let state = gateway.state.borrow().clone();
        active.set(i64::from(state.active));
        activations.set(state.activations as i64);
        let stats = gateway.cable.stats().unwrap_or_default();
        for (cluster, key) in &state.peer_keys {
            let labels = vec![("peer".to_owned(), cluster.clone())];
            if let Some(s) = stats.get(key) {
                rx.get_or_create(&labels).set(s.rx_bytes as i64);
                tx.get_or_create(&labels).set(s.tx_bytes as i64);
                if let Some(age) = s.last_handshake.and_then(|t| t.elapsed().ok()) {
                    handshake_age.get_or_create(&labels).set(age.as_secs_f64());
                }
            }
        }
        if let Some(view) = gateway.health.borrow().as_ref() {
            for (peer, health) in view.snapshot() {
                let labels = vec![("peer".to_owned(), peer.to_string())];
                if let Some(r) = health.rtt {
                    rtt.get_or_create(&labels).set(r.mean.as_secs_f64());
                }
                let connected =
                    health.status.state == causeway_gateway::health::HealthState::Connected;
                up.get_or_create(&labels).set(i64::from(connected));
            }
        }
        crate::diagnose::exposed::register(&mut registry, &gateway);
        conntrack_metrics(
            &mut registry,
            gateway.nat.borrow().as_ref().map(|n| n.egress.clone()),
        );
        let mut out = String::new();
        let _ = encode(&mut out, &registry);
        out
    })
}

/// Conntrack on the gateway node: entries against the limit, and per
/// egress IP the connections SNATed to it and those to its busiest
/// destination, which need distinct source ports (about 64,000 at most).
fn conntrack_metrics(
    registry: &mut prometheus_client::registry::Registry,
    egress: Option<Vec<std::net::Ipv4Addr>>,
) {
    use causeway_globalnet::conntrack::{self, Conntrack};
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    let entries = Gauge::<i64>::default();
    let max = Gauge::<i64>::default();
    registry.register(
        "conntrack_entries",
        "conntrack entries in the gateway's namespace",
        entries.clone(),
    );
    registry.register("conntrack_max", "nf_conntrack_max (per host)", max.clone());
    if let Ok(c) = conntrack::read_counters(std::path::Path::new("/proc")) {
        entries.set(c.count as i64);
        max.set(c.max as i64);
    }
    let Some(egress) = egress.filter(|e| !e.is_empty()) else {
        return;
    };
    type Ip = Vec<(String, String)>;
    let connections = Family::<Ip, Gauge>::default();
    let busiest = Family::<Ip, Gauge>::default();
    let near = Family::<Ip, Gauge>::default();
    registry.register(
        "egress_connections",
        "connections SNATed to the egress IP",
        connections.clone(),
    );
    registry.register(
        "egress_busiest_destination_connections",
        "connections from the egress IP to its busiest destination IP, port and protocol",
        busiest.clone(),
    );
    registry.register(
        "egress_near_port_limit",
        "1 when the busiest destination uses over 80% of the SNAT ports",
        near.clone(),
    );
    let Ok(list) = Conntrack::new().list() else {
        return;
    };
    for (ip, usage) in conntrack::egress_usage(&list, &egress) {
        let labels = vec![("egress_ip".to_owned(), ip.to_string())];
        connections
            .get_or_create(&labels)
            .set(usage.connections as i64);
        busiest
            .get_or_create(&labels)
            .set(usage.busiest_destination as i64);
        let is_near = usage.near_port_limit(0.8);
        near.get_or_create(&labels).set(i64::from(is_near));
        if is_near {
            tracing::warn!(egress_ip = %ip, connections = usage.busiest_destination,
                "an egress IP nears the SNAT ports of one destination; raise --egress-pool (docs/operations.md)");
        }
    }
}

/// Flags of `causeway lighthouse` (the DNS server).
#[derive(Args, Debug)]
pub struct LighthouseArgs {
    /// This cluster's id.
    #[arg(long, env = "CAUSEWAY_CLUSTER")]
    pub cluster: Option<ClusterId>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// UDP and TCP address to answer on.
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: std::net::SocketAddr,
    /// The zone answered; everything else is REFUSED.
    #[arg(long, default_value = "clusterset.local")]
    pub zone: String,
    /// TTL of answers, in seconds.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// `clusterset-ip` (the import's ClusterSetIP, as the MCS DNS
    /// specification says) or `per-cluster` (one exporting cluster's address
    /// per answer, for balancing by DNS).
    #[arg(long, default_value = "clusterset-ip")]
    pub answer: causeway_lighthouse::dns::AnswerMode,
    /// Answer `<cluster>.<svc>.<ns>.svc.<zone>` with that cluster's instance
    /// (Lighthouse-compatible) instead of NXDOMAIN.
    #[arg(long)]
    pub cluster_names: bool,
    /// With `--answer clusterset-ip`: read the cluster's MCS ServiceImports
    /// (their `spec.ips`) from this directory of Kubernetes manifests
    /// (default with `--store kubernetes`: from the API).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, default_value = "0.0.0.0:9465")]
    pub metrics_listen: std::net::SocketAddr,
}

/// `causeway lighthouse`: answers `clusterset.local` until SIGTERM or SIGINT.
pub async fn lighthouse(args: LighthouseArgs) -> Result<()> {
    use causeway_lighthouse::DnsDaemon;
    use causeway_lighthouse::dns::{ResolverOptions, ServerConfig};

    let Some(cluster) = args.cluster else {
        bail!("--cluster is required: the id this cluster joined with");
    };
    let (store, kube): (Arc<dyn Store>, Option<KubeCluster>) = match args.store.choice()? {
        StoreChoice::Kubernetes { namespace } => {
            let k = KubeCluster::connect(&namespace).await?;
            (Arc::new(k.store()), Some(k))
        }
        StoreChoice::Etcd(endpoints) => (
            Arc::new(connect_store(&EtcdConfig::new(endpoints)).await?),
            None,
        ),
    };
    let shutdown = CancellationToken::new();
    // The ClusterSetIPs come from the cluster's ServiceImports; only
    // `--answer clusterset-ip` reads them, so `--answer per-cluster` needs
    // no access to the cluster's MCS objects.
    let source: Option<Arc<dyn ClusterSource>> = match (args.answer, args.manifests.clone(), kube) {
        (causeway_lighthouse::dns::AnswerMode::PerCluster, _, _) => None,
        (_, Some(dir), _) => Some(Arc::new(ManifestDirSource::spawn(
            dir,
            Duration::from_millis(200),
            shutdown.clone(),
        ))),
        (_, None, Some(k)) => Some(Arc::new(k.source(shutdown.clone()))),
        (_, None, None) => {
            tracing::warn!(
                "--answer clusterset-ip without --manifests or --store kubernetes: \
                     no ServiceImports to read, answering per cluster"
            );
            None
        }
    };
    let mut resolver =
        ResolverOptions::new(&args.zone).with_context(|| format!("--zone {}", args.zone))?;
    resolver.ttl = args.ttl;
    resolver.answer_mode = args.answer;
    resolver.cluster_names = args.cluster_names;
    let config = ServerConfig {
        listen: args.listen,
        resolver,
        ..ServerConfig::default()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let mut daemon = DnsDaemon::bind(config, store, cluster.clone(), &mut registry).await?;
    if let Some(source) = &source {
        daemon = daemon.with_cluster_state(source.state());
    }
    let registry = Arc::new(registry);
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let render: crate::metrics::Render = Arc::new(move || {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    });
    let metrics = crate::metrics::serve(args.metrics_listen, render, shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = metrics.await {
            tracing::error!(error = %e, "no /metrics");
        }
    });
    tracing::info!(%cluster, listen = %args.listen, zone = %args.zone, "lighthouse DNS answering");
    daemon.run(shutdown).await;
    drop(source);
    Ok(())
}
