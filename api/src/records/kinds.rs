//! The record kinds and their invariants.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ids::{ClusterId, GlobalCidr, ObjectName, WireGuardKey, is_dns_label};

/// Why a record breaks its own invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} record {name:?} of cluster {cluster}: {reason}")]
pub struct ValidationError {
    /// Kind of the refused record.
    pub kind: Kind,
    /// Owner the record names.
    pub cluster: String,
    /// Record name within its owner.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// The kinds of record the stores hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// [`Cluster`].
    Cluster,
    /// [`Endpoint`].
    Endpoint,
    /// [`ServiceImport`].
    ServiceImport,
    /// [`ConnectionStatus`].
    ConnectionStatus,
}

impl Kind {
    /// Every kind, in key order.
    pub const ALL: [Kind; 4] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::ServiceImport,
        Kind::ConnectionStatus,
    ];

    /// The key segment that holds records of this kind.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Endpoint => "endpoint",
            Kind::ServiceImport => "serviceimport",
            Kind::ConnectionStatus => "connection",
        }
    }

    /// The kind stored under key segment `s`.
    pub fn from_segment(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.segment() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where a record lives: its kind, the cluster that owns it, and its name
/// within that cluster (`<namespace>/<service>` for a ServiceImport, the peer
/// id for a ConnectionStatus, the owner's id for Cluster and Endpoint).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    /// The cluster that owns (and alone may write) the record.
    pub cluster: ClusterId,
    /// Record kind.
    pub kind: Kind,
    /// Name within the owner.
    pub name: String,
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.cluster, self.kind.segment(), self.name)
    }
}

/// A cluster of the clusterset and the address space it brings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// The cluster's id.
    pub id: ClusterId,
    /// Pod CIDRs.
    #[schemars(with = "Vec<String>")]
    pub pod_cidrs: Vec<IpNet>,
    /// Service CIDRs.
    #[schemars(with = "Vec<String>")]
    pub service_cidrs: Vec<IpNet>,
    /// Global CIDR when Globalnet is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_cidr: Option<GlobalCidr>,
}

/// How a gateway runs its WireGuard device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CableBackend {
    /// The kernel module.
    Kernel,
    /// The wireguard-go daemon.
    WireguardGo,
    /// Embedded userspace WireGuard (boringtun).
    Userspace,
}

/// The active gateway of a cluster, as its peers need to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The cluster this gateway serves.
    pub cluster: ClusterId,
    /// Node the active gateway runs on.
    pub node_name: String,
    /// Address peers outside the node network use, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    /// The node's own address.
    pub private_ip: IpAddr,
    /// WireGuard UDP port.
    pub port: u16,
    /// The cluster's WireGuard public key.
    pub public_key: WireGuardKey,
    /// Subnets reached through this gateway: the global CIDR under
    /// Globalnet, else the pod and service CIDRs.
    #[schemars(with = "Vec<String>")]
    pub subnets: Vec<IpNet>,
    /// How the tunnel is run.
    pub backend: CableBackend,
    /// Tunnel MTU.
    pub mtu: u16,
    /// The gateway's tunnel address, where health probes go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_ip: Option<IpAddr>,
    /// Globalnet's egress pool, in order (the SNAT hash indexes it): the
    /// record a newly active gateway re-adopts it from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_ips: Vec<IpAddr>,
}

/// How a ServiceImport is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ServiceImportType {
    /// One virtual address per cluster.
    ClusterSetIP,
    /// No virtual address: DNS answers with endpoint addresses.
    Headless,
}

/// L4 protocol of a port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// One port of an exported service.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (needed for SRV records), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// One ready endpoint of a headless service.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct HeadlessEndpoint {
    /// Hostname (a StatefulSet pod's name), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Address other clusters use (a global IP under Globalnet).
    pub address: IpAddr,
    /// The endpoint's address inside its own cluster (the pod IP).
    pub local_address: IpAddr,
}

/// The ready pods behind a ClusterSetIP export, published when Globalnet is
/// off (other clusters route to pod addresses), so their MCS EndpointSlices
/// can list the pods themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadyPods {
    /// The ready pods' addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The port each service port reaches on the pods.
    #[serde(default)]
    pub ports: Vec<TargetPort>,
}

/// A service port and the pods' port behind it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetPort {
    /// The service port.
    #[serde(flatten)]
    pub service: ServicePort,
    /// The pods' port number.
    pub target: u16,
}

/// One exported service of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImport {
    /// The exporting cluster.
    pub cluster: ClusterId,
    /// Namespace of the service.
    pub namespace: ObjectName,
    /// Name of the service.
    pub name: ObjectName,
    /// ClusterSetIP or Headless.
    #[serde(rename = "type")]
    pub kind: ServiceImportType,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Addresses other clusters use (global IPs under Globalnet, else the
    /// ClusterIPs). Empty for a headless service.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The service's ClusterIPs in the exporting cluster, which that cluster
    /// answers its own pods with. Empty for a headless service.
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    /// Ready endpoints of a headless service.
    #[serde(default)]
    pub endpoints: Vec<HeadlessEndpoint>,
    /// When the ServiceExport was created (Unix ms; 0 when unknown): the
    /// oldest export takes precedence in a conflict, as the MCS API says.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exported_at_ms: u64,
    /// The ready pods of a ClusterSetIP export when Globalnet is off;
    /// absent otherwise (and in records of older writers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<Box<ReadyPods>>,
    /// True while a ClusterSetIP export has no ready endpoint: the import
    /// still exists (as a ClusterIP does), other clusters answer this
    /// export only when no export is ready and leave it out of their
    /// EndpointSlices. Absent (false) in records of older writers, which
    /// published ready exports only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unready: bool,
    /// What the MCS ServiceImport takes from this export (session affinity,
    /// policies, IP families, exported labels and annotations); absent in
    /// records of older writers, which read as the defaults. Boxed: most
    /// records are handled without looking at it.
    #[serde(flatten)]
    pub properties: Box<ExportProperties>,
}

/// Session affinity of a Service (`spec.sessionAffinity`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum SessionAffinity {
    /// `None`: no affinity (the Kubernetes default).
    #[default]
    None,
    /// `ClientIP`: a client keeps its endpoint for the timeout.
    #[serde(rename = "ClientIP")]
    ClientIp,
}

impl SessionAffinity {
    fn is_none(&self) -> bool {
        *self == SessionAffinity::None
    }
}

/// `spec.sessionAffinityConfig` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct SessionAffinityConfig {
    /// `clientIP`: settings of ClientIP affinity.
    #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `spec.sessionAffinityConfig.clientIP` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// How long a client sticks to its endpoint (seconds, 1 to 86400;
    /// Kubernetes defaults it to 10800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// An IP family (`spec.ipFamilies`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum IpFamily {
    /// `IPv4`.
    IPv4,
    /// `IPv6`.
    IPv6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::IPv4,
            IpAddr::V6(_) => IpFamily::IPv6,
        }
    }
}

/// What an MCS ServiceImport (v1beta1) takes from one constituent export:
/// the Service's session affinity, traffic policies and IP families, and the
/// ServiceExport's `spec.exportedLabels` / `spec.exportedAnnotations` (never
/// the Service's own labels). The oldest export's values win a conflict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportProperties {
    /// `spec.sessionAffinity` of the Service.
    #[serde(default, skip_serializing_if = "SessionAffinity::is_none")]
    pub session_affinity: SessionAffinity,
    /// `spec.sessionAffinityConfig` of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// `spec.internalTrafficPolicy` of the Service (`Cluster`, `Local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// `spec.trafficDistribution` of the Service (`PreferClose`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
    /// `spec.ipFamilies` of the Service, in its order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<IpFamily>,
    /// `spec.exportedLabels` of the ServiceExport.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_labels: BTreeMap<String, String>,
    /// `spec.exportedAnnotations` of the ServiceExport.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_annotations: BTreeMap<String, String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A gateway's view of its tunnel to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionState {
    /// Handshake done and probes answered.
    Connected,
    /// Being set up.
    Connecting,
    /// Failed; see the reason.
    Error,
}

/// Round-trip statistics of health probes, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RttStats {
    /// Last probe.
    pub last_us: u64,
    /// Minimum.
    pub min_us: u64,
    /// Mean.
    pub mean_us: u64,
    /// Maximum.
    pub max_us: u64,
}

/// What cluster `cluster`'s active gateway reports about peer `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// The reporting cluster.
    pub cluster: ClusterId,
    /// The peer reported on.
    pub peer: ClusterId,
    /// State.
    pub state: ConnectionState,
    /// Why, when the state is not `connected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Probe round trips, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt: Option<RttStats>,
    /// Since when the state holds (Unix time, milliseconds).
    pub since_ms: u64,
}

/// Any record, for code that handles every kind (stores, mirrors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRecord {
    /// A [`Cluster`].
    Cluster(Cluster),
    /// An [`Endpoint`].
    Endpoint(Endpoint),
    /// A [`ServiceImport`].
    ServiceImport(ServiceImport),
    /// A [`ConnectionStatus`].
    ConnectionStatus(ConnectionStatus),
}

impl AnyRecord {
    /// The record's kind.
    pub fn kind(&self) -> Kind {
        match self {
            AnyRecord::Cluster(_) => Kind::Cluster,
            AnyRecord::Endpoint(_) => Kind::Endpoint,
            AnyRecord::ServiceImport(_) => Kind::ServiceImport,
            AnyRecord::ConnectionStatus(_) => Kind::ConnectionStatus,
        }
    }

    /// The cluster the record names as its owner.
    pub fn owner(&self) -> &ClusterId {
        match self {
            AnyRecord::Cluster(r) => &r.id,
            AnyRecord::Endpoint(r) => &r.cluster,
            AnyRecord::ServiceImport(r) => &r.cluster,
            AnyRecord::ConnectionStatus(r) => &r.cluster,
        }
    }

    /// The record's name within its owner.
    pub fn name(&self) -> String {
        match self {
            AnyRecord::Cluster(r) => r.id.to_string(),
            AnyRecord::Endpoint(r) => r.cluster.to_string(),
            AnyRecord::ServiceImport(r) => format!("{}/{}", r.namespace, r.name),
            AnyRecord::ConnectionStatus(r) => r.peer.to_string(),
        }
    }

    /// Where the record lives.
    pub fn key(&self) -> RecordKey {
        RecordKey {
            cluster: self.owner().clone(),
            kind: self.kind(),
            name: self.name(),
        }
    }

    /// Checks the record's own invariants.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let fail = |reason: String| ValidationError {
            kind: self.kind(),
            cluster: self.owner().to_string(),
            name: self.name(),
            reason,
        };
        match self {
            AnyRecord::Cluster(c) => {
                for net in c.pod_cidrs.iter().chain(&c.service_cidrs) {
                    if net.trunc() != *net {
                        return Err(fail(format!("CIDR {net} has host bits set")));
                    }
                }
                if let Some(g) = c.global_cidr {
                    let g = IpNet::V4(g.net());
                    if let Some(n) = c
                        .pod_cidrs
                        .iter()
                        .chain(&c.service_cidrs)
                        .find(|n| overlaps(n, &g))
                    {
                        return Err(fail(format!("global CIDR {g} overlaps the cluster's {n}")));
                    }
                }
            }
            AnyRecord::Endpoint(e) => {
                if e.port == 0 {
                    return Err(fail("port 0".into()));
                }
                if e.mtu < 576 {
                    return Err(fail(format!("MTU {} below 576", e.mtu)));
                }
                if e.node_name.is_empty() {
                    return Err(fail("empty node name".into()));
                }
                if let Some(n) = e.subnets.iter().find(|n| n.trunc() != **n) {
                    return Err(fail(format!("subnet {n} has host bits set")));
                }
                if let Some(ip) = e
                    .egress_ips
                    .iter()
                    .find(|ip| !e.subnets.iter().any(|n| n.contains(*ip)))
                {
                    return Err(fail(format!(
                        "egress IP {ip} is outside the gateway's subnets"
                    )));
                }
            }
            AnyRecord::ServiceImport(s) => {
                if let Some(p) = s.ports.iter().find(|p| p.port == 0) {
                    return Err(fail(format!("port 0 ({:?})", p.name)));
                }
                if let Some(p) = s
                    .ports
                    .iter()
                    .filter_map(|p| p.name.as_deref())
                    .find(|n| !is_dns_label(n))
                {
                    return Err(fail(format!("port name {p:?} is not a DNS label")));
                }
                match s.kind {
                    ServiceImportType::ClusterSetIP => {
                        if s.addresses.is_empty() {
                            return Err(fail("ClusterSetIP import without addresses".into()));
                        }
                        if !s.endpoints.is_empty() {
                            return Err(fail("ClusterSetIP import with headless endpoints".into()));
                        }
                    }
                    ServiceImportType::Headless => {
                        if !s.addresses.is_empty() || !s.cluster_ips.is_empty() {
                            return Err(fail("headless import with virtual addresses".into()));
                        }
                    }
                }
                if let Some(t) = s
                    .properties
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .filter(|t| !(1..=86_400).contains(t))
                {
                    return Err(fail(format!(
                        "session affinity timeout {t} s is outside 1..=86400"
                    )));
                }
                if s.properties.ip_families.len() > 2
                    || s.properties.ip_families.windows(2).any(|w| w[0] == w[1])
                {
                    return Err(fail(format!(
                        "IP families {:?} are not one or two distinct families",
                        s.properties.ip_families
                    )));
                }
                if let Some(h) = s
                    .endpoints
                    .iter()
                    .filter_map(|e| e.hostname.as_deref())
                    .find(|h| !is_dns_label(h))
                {
                    return Err(fail(format!("endpoint hostname {h:?} is not a DNS label")));
                }
            }
            AnyRecord::ConnectionStatus(c) => {
                if c.peer == c.cluster {
                    return Err(fail("a cluster reports on itself".into()));
                }
                if c.state == ConnectionState::Error && c.reason.is_none() {
                    return Err(fail("error state without a reason".into()));
                }
            }
        }
        Ok(())
    }
}

/// True when two networks share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

macro_rules! any_from {
    ($($t:ident),*) => {$(
        impl From<$t> for AnyRecord {
            fn from(r: $t) -> Self {
                AnyRecord::$t(r)
            }
        }

        impl TryFrom<AnyRecord> for $t {
            type Error = AnyRecord;
            fn try_from(r: AnyRecord) -> Result<Self, AnyRecord> {
                match r {
                    AnyRecord::$t(r) => Ok(r),
                    other => Err(other),
                }
            }
        }
    )*};
}

any_from!(Cluster, Endpoint, ServiceImport, ConnectionStatus);
