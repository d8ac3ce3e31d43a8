//! The lab's address plan: every namespace, link and address of a lab,
//! computed from its spec alone. Pure, so the builder only realises it and
//! `status`, `exec` and `down` read the same plan back from the state file.
//!
//! Each cluster is wired like one of two CNIs. Flannel (the default):
//! every node leases a /24 of the pod CIDR, pods sit on a `cni0` bridge and
//! other nodes' /24s are routed via their node addresses (host-gw). Calico
//! (`--cni calico`): each node owns a /26 IPAM block of the IP pool (the
//! pod CIDR), every pod sits behind a host-side `cali*` veth with proxy ARP
//! and a /32 host route, pods route everything via 169.254.1.1, and nodes
//! reach each other's blocks over `vxlan.calico`. The lab takes each node's
//! Calico block as the first /26 of its Flannel /24, so a pod has the same
//! address under either CNI (real Calico hands out blocks in pool order).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The most clusters one lab holds: with `--distinct-cidrs`, cluster `i`
/// gets 10.(244+i).0.0/16 for pods and 10.(96+16i).0.0/12 for services,
/// which stay apart up to nine clusters.
pub const MAX_CLUSTERS: u8 = 8;

/// The "internet" between clusters: a documentation range (RFC 5737) that
/// is never routed anywhere, so a stray packet cannot leave the machine.
const WAN: &str = "198.51.100.0/24";
const BROKER_WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// Port the lab's `web` pods serve the echo server on.
pub const ECHO_PORT: u16 = 8080;
/// Where web pods answer TCP and UDP with who they are (`nc`'s port in the
/// MCS conformance suite).
pub const HOSTNAME_PORT: u16 = 42;

/// Port the lab's `dns` pod answers `clusterset.local` on.
pub const DNS_PORT: u16 = 53;

/// Port every lab etcd (each cluster's store and the broker) serves clients on.
pub const ETCD_PORT: u16 = 2379;

/// A lab's name: it prefixes every namespace the lab makes, so it must be
/// short and unable to collide with another lab's prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let starts_with_letter = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if s.is_empty() || s.len() > 20 || !valid_chars || !starts_with_letter || s.ends_with('-') {
            return Err(format!(
                "invalid lab name {s:?}: use 1 to 20 lower-case letters, digits and '-', \
                 starting with a letter (for example `demo` or `test-1`)"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for LabName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Calico's default VXLAN network identifier (`FelixConfiguration.vxlanVNI`).
pub const CALICO_VXLAN_VNI: u32 = 4096;
/// Calico's default VXLAN UDP port (`FelixConfiguration.vxlanPort`).
pub const CALICO_VXLAN_PORT: u16 = 4789;
/// Calico's VXLAN device.
pub const CALICO_VXLAN_DEVICE: &str = "vxlan.calico";
/// The MTU Calico gives pods and `vxlan.calico` on a 1500-byte network
/// (50 bytes of VXLAN overhead).
pub const CALICO_VXLAN_MTU: u32 = 1450;
/// The pods' default gateway under Calico: a link-local address nobody
/// holds, answered by proxy ARP on the host-side veth.
pub const CALICO_POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC Calico gives every host-side veth.
pub const CALICO_HOST_VETH_MAC: [u8; 6] = [0xee; 6];
/// The prefix length of a Calico IPAM block (Calico's default `blockSize`).
const CALICO_BLOCK_PREFIX: u8 = 26;

/// The CNI whose datapath a lab cluster is built like.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    /// Flannel host-gw with `--ip-masq`: a `cni0` bridge per node.
    #[default]
    Flannel,
    /// Calico with VXLAN and `natOutgoing`: routed `cali*` veths.
    Calico,
}

impl FromStr for Cni {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flannel" => Ok(Self::Flannel),
            "calico" => Ok(Self::Calico),
            _ => Err(format!(
                "unknown CNI {s:?}: the lab builds `flannel` or `calico` clusters"
            )),
        }
    }
}

impl fmt::Display for Cni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flannel => "flannel",
            Self::Calico => "calico",
        })
    }
}

/// `--cni`: one CNI for every cluster (`calico`), one per cluster
/// (`a=flannel,b=calico`), or both (`calico,a=flannel`: a is Flannel, the
/// rest Calico). Clusters not named get the bare CNI, else Flannel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniChoice {
    pub default: Cni,
    pub per_cluster: BTreeMap<String, Cni>,
}

impl CniChoice {
    /// The CNI of cluster `name`.
    pub fn for_cluster(&self, name: &str) -> Cni {
        self.per_cluster.get(name).copied().unwrap_or(self.default)
    }
}

impl FromStr for CniChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut choice = Self::default();
        let mut bare = None;
        for item in s.split(',').map(str::trim) {
            match item.split_once('=') {
                None => {
                    if bare.replace(item).is_some() {
                        return Err(format!(
                            "--cni {s:?} names more than one CNI for all clusters; \
                             use CNI or CLUSTER=CNI,... (for example a=flannel,b=calico)"
                        ));
                    }
                    choice.default = item.parse()?;
                }
                Some((cluster, cni)) => {
                    let valid =
                        cluster.len() == 1 && cluster.bytes().all(|b| b.is_ascii_lowercase());
                    if !valid {
                        return Err(format!(
                            "--cni {s:?}: {cluster:?} is not a lab cluster name (a, b, c, ...)"
                        ));
                    }
                    if choice
                        .per_cluster
                        .insert(cluster.to_owned(), cni.parse()?)
                        .is_some()
                    {
                        return Err(format!("--cni {s:?} names cluster {cluster} twice"));
                    }
                }
            }
        }
        Ok(choice)
    }
}

impl fmt::Display for CniChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = vec![self.default.to_string()];
        items.extend(self.per_cluster.iter().map(|(c, cni)| format!("{c}={cni}")));
        f.write_str(&items.join(","))
    }
}

/// What the user asked for with `causeway lab up`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    pub name: LabName,
    pub clusters: u8,
    pub distinct_cidrs: bool,
    /// `--answer` of every cluster's DNS daemon (`lab up --dns-answer`);
    /// none: the daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_answer: Option<String>,
}

/// Every namespace, link and address of one lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub spec: LabSpec,
    pub wan: WanPlan,
    pub clusters: Vec<ClusterPlan>,
}

/// The segment joining gateway candidates of every cluster, and the broker on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WanPlan {
    /// The namespace holding the segment's bridge.
    pub netns: String,
    pub cidr: Ipv4Net,
    pub broker_netns: String,
    pub broker_ip: Ipv4Addr,
}

/// One simulated Kubernetes cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub node_cidr: Ipv4Net,
    /// The CNI the cluster's nodes and pods are wired like.
    #[serde(default)]
    pub cni: Cni,
    /// The namespace holding the node network's bridge.
    pub lan_netns: String,
    /// The cluster's own store (its "API server"), on the node network.
    pub control_plane: ControlPlanePlan,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
}

/// The cluster's control plane: a namespace on the node network running the
/// cluster's own etcd (DESIGN.md, settled decision 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlanePlan {
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// A node: a namespace on the node network, routing its slice of the pod CIDR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// This node's slice of the pod CIDR (its Node `podCIDR`), as Flannel
    /// leases one per node.
    pub pod_slice: Ipv4Net,
    /// The pods' default gateway: the address of the node's `cni0` bridge
    /// (Flannel), or 169.254.1.1, which nobody holds (Calico).
    pub bridge_ip: Ipv4Addr,
    /// Gateway candidates sit on the wan segment too.
    pub wan_ip: Option<Ipv4Addr>,
    /// The node's Calico block and VXLAN tunnel endpoint (Calico clusters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico: Option<CalicoNodePlan>,
}

/// What Calico's IPAM and Felix give a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalicoNodePlan {
    /// The node's IPAM block: its pods take their addresses from it, and
    /// every other node routes it via this node's VXLAN address.
    pub block: Ipv4Net,
    /// The address of the node's `vxlan.calico`: the block's first address,
    /// which Calico's IPAM hands the tunnel first.
    pub vtep_ip: Ipv4Addr,
    /// The MAC of the node's `vxlan.calico` (Felix picks a random one and
    /// publishes it; the lab derives one from the cluster and node index).
    pub vtep_mac: String,
}

impl NodePlan {
    pub fn is_gateway_candidate(&self) -> bool {
        self.wan_ip.is_some()
    }

    /// The range this node's pods take their addresses from: its Calico
    /// block, else its pod slice.
    pub fn pod_range(&self) -> Ipv4Net {
        self.calico.as_ref().map_or(self.pod_slice, |c| c.block)
    }
}

/// A pod: a namespace behind a veth pair on its node's `cni0` bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub name: String,
    pub netns: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The `app` label, which Services select on.
    pub app: String,
    /// The host side of the pod's veth pair, in the node's namespace:
    /// `veth-POD` (Flannel), or `cali` and a hash of the pod (Calico).
    pub host_veth: String,
}

/// A Service the lab declares as manifests for the cluster source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    /// Pods selected by `app`.
    pub app: String,
}

/// Nodes per cluster: two gateway candidates and a worker.
const NODES: [&str; 3] = ["node-0", "node-1", "node-2"];
const GATEWAY_CANDIDATES: usize = 2;
/// The lab's fixed pods and the node each runs on: `web` pods on the two
/// gateway candidates, the client on the worker, so its traffic takes the
/// route-agent path.
const PODS: [(&str, &str, usize); 4] = [
    ("web-0", "web", 0),
    ("web-1", "web", 1),
    ("client-0", "client", 2),
    ("dns", "dns", 2),
];

/// The namespace of `member` (a node, a pod, `lan`) of `cluster` in lab `lab`.
/// Dots cannot appear in lab or cluster names, so one lab's prefix never
/// matches another's.
pub fn netns_name(lab: &LabName, cluster: &str, member: &str) -> String {
    format!("{}{cluster}.{member}", netns_prefix(lab))
}

/// The prefix every namespace of lab `lab` starts with.
pub fn netns_prefix(lab: &LabName) -> String {
    format!("cw.{lab}.")
}

/// The name of the `i`th cluster: a, b, c, ...
pub fn cluster_name(i: u8) -> String {
    char::from(b'a' + i).to_string()
}

impl LabPlan {
    /// Plans a lab of Flannel clusters. Fails only on a spec no lab can be
    /// built from.
    pub fn new(spec: LabSpec) -> Result<Self, String> {
        Self::with_cni(spec, &CniChoice::default())
    }

    /// Plans a lab whose clusters are wired like the CNIs of `cni`.
    pub fn with_cni(spec: LabSpec, cni: &CniChoice) -> Result<Self, String> {
        if spec.clusters == 0 || spec.clusters > MAX_CLUSTERS {
            return Err(format!(
                "a lab has 1 to {MAX_CLUSTERS} clusters, not {}: change --clusters",
                spec.clusters
            ));
        }
        let names: Vec<String> = (0..spec.clusters).map(cluster_name).collect();
        if let Some(unknown) = cni.per_cluster.keys().find(|c| !names.contains(c)) {
            return Err(format!(
                "--cni names cluster {unknown}, but the lab has only {}: change --cni or --clusters",
                names.join(", ")
            ));
        }
        let lab = &spec.name;
        let wan_cidr: Ipv4Net = WAN.parse().expect("constant CIDR");
        let wan = WanPlan {
            netns: format!("{}wan", netns_prefix(lab)),
            cidr: wan_cidr,
            broker_netns: format!("{}broker", netns_prefix(lab)),
            broker_ip: BROKER_WAN_IP,
        };
        let clusters = (0..spec.clusters)
            .map(|i| {
                plan_cluster(
                    lab,
                    i,
                    spec.distinct_cidrs,
                    cni.for_cluster(&cluster_name(i)),
                )
            })
            .collect();
        Ok(Self {
            spec,
            wan,
            clusters,
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterPlan> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Every namespace of the lab, in the order they are made.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.wan.netns.clone(), self.wan.broker_netns.clone()];
        for c in &self.clusters {
            all.push(c.lan_netns.clone());
            all.push(c.control_plane.netns.clone());
            all.extend(c.nodes.iter().map(|n| n.netns.clone()));
            all.extend(c.pods.iter().map(|p| p.netns.clone()));
        }
        all
    }

    /// The namespace of `cluster/member`, where member is a node or a pod.
    pub fn member_netns(&self, cluster: &str, member: &str) -> Option<&str> {
        let c = self.cluster(cluster)?;
        c.nodes
            .iter()
            .find(|n| n.name == member)
            .map(|n| n.netns.as_str())
            .or_else(|| {
                c.pods
                    .iter()
                    .find(|p| p.name == member)
                    .map(|p| p.netns.as_str())
            })
            .or_else(|| (member == "control-plane").then_some(c.control_plane.netns.as_str()))
    }
}

fn plan_cluster(lab: &LabName, i: u8, distinct: bool, cni: Cni) -> ClusterPlan {
    let name = cluster_name(i);
    let k = if distinct { i } else { 0 };
    let pod_cidr = Ipv4Net::new(Ipv4Addr::new(10, 244 + k, 0, 0), 16).expect("valid prefix");
    let service_cidr =
        Ipv4Net::new(Ipv4Addr::new(10, 96 + 16 * k, 0, 0), 12).expect("valid prefix");
    let node_cidr = Ipv4Net::new(Ipv4Addr::new(192, 168, 50 + k, 0), 24).expect("valid prefix");
    let nodes: Vec<NodePlan> = NODES
        .iter()
        .enumerate()
        .map(|(j, node)| {
            let pod_slice = pod_cidr
                .subnets(24)
                .expect("a /16 splits into /24s")
                .nth(j)
                .expect("fewer nodes than slices");
            let wan_ip = (j < GATEWAY_CANDIDATES)
                .then(|| Ipv4Addr::new(198, 51, 100, 10 + 10 * i + j as u8));
            let calico = (cni == Cni::Calico).then(|| {
                let block =
                    Ipv4Net::new(pod_slice.network(), CALICO_BLOCK_PREFIX).expect("valid prefix");
                CalicoNodePlan {
                    block,
                    vtep_ip: block.network(),
                    // Locally administered, unicast.
                    vtep_mac: format!("66:ca:1c:00:{i:02x}:{j:02x}"),
                }
            });
            NodePlan {
                name: node.to_string(),
                netns: netns_name(lab, &name, node),
                ip: nth_host(node_cidr, 10 + j as u32),
                pod_slice,
                bridge_ip: match cni {
                    Cni::Flannel => nth_host(pod_slice, 1),
                    Cni::Calico => CALICO_POD_GATEWAY,
                },
                wan_ip,
                calico,
            }
        })
        .collect();
    let mut next_host = vec![2u32; nodes.len()];
    let pods = PODS
        .iter()
        .map(|(pod, app, j)| {
            let ip = nth_host(nodes[*j].pod_range(), next_host[*j]);
            next_host[*j] += 1;
            PodPlan {
                name: pod.to_string(),
                netns: netns_name(lab, &name, pod),
                node: nodes[*j].name.clone(),
                ip,
                app: app.to_string(),
                host_veth: match cni {
                    Cni::Flannel => format!("veth-{pod}"),
                    Cni::Calico => calico_veth_name(POD_NAMESPACE, pod),
                },
            }
        })
        .collect();
    let services = vec![ServicePlan {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: nth_host(service_cidr, 10),
        port: 80,
        target_port: ECHO_PORT,
        app: "web".into(),
    }];
    ClusterPlan {
        lan_netns: netns_name(lab, &name, "lan"),
        control_plane: ControlPlanePlan {
            netns: netns_name(lab, &name, "control-plane"),
            ip: nth_host(node_cidr, 2),
        },
        name,
        pod_cidr,
        service_cidr,
        node_cidr,
        cni,
        nodes,
        pods,
        services,
    }
}

fn nth_host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// The Kubernetes namespace of the lab's fixed pods.
const POD_NAMESPACE: &str = "default";

/// The host-side veth name Calico's CNI plugin gives a pod: `cali` and the
/// first 11 hex digits of the SHA-1 of `NAMESPACE.POD` (libcalico-go's
/// `VethNameForWorkload`), 15 characters, the kernel's limit.
pub fn calico_veth_name(namespace: &str, pod: &str) -> String {
    let digest = sha1(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// SHA-1 (FIPS 180-4), only for Calico's interface names: nothing secret
/// depends on it, and no crate in the workspace offers it.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for t in 16..80 {
            w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (t, word) in w.iter().enumerate() {
            let (f, k) = match t {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let temp = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*word);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, temp);
        }
        for (acc, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *acc = acc.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(clusters: u8, distinct_cidrs: bool) -> LabSpec {
        LabSpec {
            name: "demo".parse().unwrap(),
            clusters,
            distinct_cidrs,
            dns_answer: None,
        }
    }

    #[test]
    fn identical_cidrs_give_every_cluster_the_same_addresses() {
        let plan = LabPlan::new(spec(3, false)).unwrap();
        let a = &plan.clusters[0];
        for c in &plan.clusters[1..] {
            assert_eq!(c.pod_cidr, a.pod_cidr);
            assert_eq!(c.service_cidr, a.service_cidr);
            assert_eq!(c.node_cidr, a.node_cidr);
            let ips = |c: &ClusterPlan| c.pods.iter().map(|p| p.ip).collect::<Vec<_>>();
            assert_eq!(ips(c), ips(a));
        }
        assert_eq!(a.pod_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(a.service_cidr.to_string(), "10.96.0.0/12");
    }

    #[test]
    fn distinct_cidrs_never_overlap_across_clusters() {
        let plan = LabPlan::new(spec(MAX_CLUSTERS, true)).unwrap();
        let nets: Vec<Ipv4Net> = plan
            .clusters
            .iter()
            .flat_map(|c| [c.pod_cidr, c.service_cidr, c.node_cidr])
            .chain([plan.wan.cidr])
            .collect();
        for (i, x) in nets.iter().enumerate() {
            for y in &nets[i + 1..] {
                assert!(!x.contains(y) && !y.contains(x), "{x} overlaps {y}");
            }
        }
        assert_eq!(plan.clusters[1].pod_cidr.to_string(), "10.245.0.0/16");
        assert_eq!(plan.clusters[1].service_cidr.to_string(), "10.112.0.0/12");
    }

    #[test]
    fn each_node_gets_its_own_slice_and_pods_live_in_their_nodes_slice() {
        let plan = LabPlan::new(spec(2, false)).unwrap();
        let a = &plan.clusters[0];
        let slices: Vec<String> = a.nodes.iter().map(|n| n.pod_slice.to_string()).collect();
        assert_eq!(slices, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]);
        for node in &a.nodes {
            assert_eq!(node.bridge_ip, nth_host(node.pod_slice, 1));
            assert!(node.pod_slice.contains(&node.bridge_ip));
        }
        for pod in &a.pods {
            let node = a.nodes.iter().find(|n| n.name == pod.node).unwrap();
            assert!(
                node.pod_slice.contains(&pod.ip),
                "{} outside {}",
                pod.ip,
                node.pod_slice
            );
            assert_ne!(pod.ip, node.bridge_ip);
        }
        let web0 = a.pods.iter().find(|p| p.name == "web-0").unwrap();
        let web1 = a.pods.iter().find(|p| p.name == "web-1").unwrap();
        assert_ne!(web0.node, web1.node, "web pods run on different nodes");
        assert_eq!(web0.ip.to_string(), "10.244.0.2");
    }

    #[test]
    fn only_the_first_two_nodes_are_gateway_candidates_with_distinct_wan_addresses() {
        let plan = LabPlan::new(spec(3, false)).unwrap();
        let wan_ips: Vec<Ipv4Addr> = plan
            .clusters
            .iter()
            .flat_map(|c| c.nodes.iter().filter_map(|n| n.wan_ip))
            .collect();
        assert_eq!(wan_ips.len(), 6);
        let mut unique = wan_ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), wan_ips.len());
        assert!(
            wan_ips
                .iter()
                .all(|ip| plan.wan.cidr.contains(ip) && *ip != plan.wan.broker_ip)
        );
        for c in &plan.clusters {
            assert!(!c.nodes[2].is_gateway_candidate());
        }
    }

    #[test]
    fn namespaces_are_unique_and_carry_the_lab_prefix() {
        let plan = LabPlan::new(spec(2, false)).unwrap();
        let all = plan.namespaces();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        assert!(all.iter().all(|n| n.starts_with("cw.demo.")));
        assert_eq!(
            plan.member_netns("b", "client-0"),
            Some("cw.demo.b.client-0")
        );
        assert_eq!(plan.member_netns("b", "node-1"), Some("cw.demo.b.node-1"));
        assert_eq!(plan.member_netns("c", "node-1"), None);
        assert_eq!(plan.member_netns("a", "nope"), None);
    }

    #[test]
    fn bad_specs_are_refused_with_the_flag_to_change() {
        let err = LabPlan::new(spec(0, false)).unwrap_err();
        assert!(err.contains("--clusters"), "{err}");
        assert!(LabPlan::new(spec(MAX_CLUSTERS + 1, true)).is_err());
    }

    #[test]
    fn lab_names_are_checked() {
        for bad in [
            "",
            "a/b",
            "Demo",
            "1lab",
            "lab-",
            "a.b",
            "x".repeat(21).as_str(),
        ] {
            assert!(bad.parse::<LabName>().is_err(), "{bad:?} accepted");
        }
        for good in ["demo", "t-1", "abc123"] {
            assert!(good.parse::<LabName>().is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn cni_choices_parse_per_cluster_and_refuse_nonsense() {
        let calico = |c: &[(&str, Cni)], d: Cni| CniChoice {
            default: d,
            per_cluster: c.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        };
        for (text, want) in [
            ("flannel", calico(&[], Cni::Flannel)),
            ("calico", calico(&[], Cni::Calico)),
            (
                "a=flannel,b=calico",
                calico(&[("a", Cni::Flannel), ("b", Cni::Calico)], Cni::Flannel),
            ),
            (
                "calico,a=flannel",
                calico(&[("a", Cni::Flannel)], Cni::Calico),
            ),
        ] {
            let got: CniChoice = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string().parse::<CniChoice>().unwrap(), want);
        }
        for bad in [
            "cilium",
            "",
            "a=weave",
            "calico,flannel",
            "a=calico,a=flannel",
            "node-0=calico",
        ] {
            assert!(bad.parse::<CniChoice>().is_err(), "{bad:?} accepted");
        }
        let mixed: CniChoice = "b=calico".parse().unwrap();
        assert_eq!(mixed.for_cluster("a"), Cni::Flannel);
        assert_eq!(mixed.for_cluster("b"), Cni::Calico);
        let err = LabPlan::with_cni(spec(2, false), &"c=calico".parse().unwrap()).unwrap_err();
        assert!(err.contains("--cni") && err.contains("cluster c"), "{err}");
    }

    #[test]
    fn calico_clusters_keep_the_pod_addresses_in_per_node_blocks() {
        let flannel = LabPlan::new(spec(2, false)).unwrap();
        let plan = LabPlan::with_cni(spec(2, false), &"b=calico".parse().unwrap()).unwrap();
        assert_eq!(plan.clusters[0], flannel.clusters[0], "a stays Flannel");
        let b = &plan.clusters[1];
        assert_eq!(b.cni, Cni::Calico);
        let ips = |c: &ClusterPlan| c.pods.iter().map(|p| p.ip).collect::<Vec<_>>();
        assert_eq!(ips(b), ips(&flannel.clusters[1]), "same pod addresses");
        let blocks: Vec<String> = b
            .nodes
            .iter()
            .map(|n| n.calico.as_ref().unwrap().block.to_string())
            .collect();
        assert_eq!(blocks, ["10.244.0.0/26", "10.244.1.0/26", "10.244.2.0/26"]);
        for node in &b.nodes {
            let calico = node.calico.as_ref().unwrap();
            assert_eq!(node.pod_range(), calico.block);
            assert!(calico.block.contains(&calico.vtep_ip));
            assert_eq!(node.bridge_ip, CALICO_POD_GATEWAY);
        }
        let macs: std::collections::BTreeSet<&str> = b
            .nodes
            .iter()
            .map(|n| n.calico.as_ref().unwrap().vtep_mac.as_str())
            .collect();
        assert_eq!(macs.len(), b.nodes.len(), "one VTEP MAC per node");
        for pod in &b.pods {
            let node = b.nodes.iter().find(|n| n.name == pod.node).unwrap();
            let calico = node.calico.as_ref().unwrap();
            assert!(calico.block.contains(&pod.ip) && pod.ip != calico.vtep_ip);
            assert!(pod.host_veth.starts_with("cali"), "{}", pod.host_veth);
            assert_eq!(pod.host_veth.len(), 15);
        }
        let names: std::collections::BTreeSet<&str> =
            b.pods.iter().map(|p| p.host_veth.as_str()).collect();
        assert_eq!(names.len(), b.pods.len());
    }

    #[test]
    fn sha1_matches_the_standard_vectors() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            calico_veth_name("default", "web-0"),
            format!("cali{}", &hex(sha1(b"default.web-0"))[..11])
        );
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let plan = LabPlan::new(spec(MAX_CLUSTERS, false)).unwrap();
        for c in &plan.clusters {
            for p in &c.pods {
                assert!(p.host_veth.len() <= 15, "{}", p.host_veth);
            }
        }
    }
}
