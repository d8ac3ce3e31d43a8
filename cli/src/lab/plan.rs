//! The lab's address plan: every namespace, link and address of a lab,
//! computed from its spec alone. Pure, so the builder only realises it and
//! `status`, `exec` and `down` read the same plan back from the state file.

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

/// What the user asked for with `causeway lab up`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    pub name: LabName,
    pub clusters: u8,
    pub distinct_cidrs: bool,
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
    /// This node's slice of the pod CIDR, as Flannel leases one per node.
    pub pod_slice: Ipv4Net,
    /// The address of the node's `cni0` bridge: the pods' default gateway.
    pub bridge_ip: Ipv4Addr,
    /// Gateway candidates sit on the wan segment too.
    pub wan_ip: Option<Ipv4Addr>,
}

impl NodePlan {
    pub fn is_gateway_candidate(&self) -> bool {
        self.wan_ip.is_some()
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
    /// The host side of the pod's veth pair, in the node's namespace.
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
    /// Plans a lab. Fails only on a spec no lab can be built from.
    pub fn new(spec: LabSpec) -> Result<Self, String> {
        if spec.clusters == 0 || spec.clusters > MAX_CLUSTERS {
            return Err(format!(
                "a lab has 1 to {MAX_CLUSTERS} clusters, not {}: change --clusters",
                spec.clusters
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
            .map(|i| plan_cluster(lab, i, spec.distinct_cidrs))
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

fn plan_cluster(lab: &LabName, i: u8, distinct: bool) -> ClusterPlan {
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
            NodePlan {
                name: node.to_string(),
                netns: netns_name(lab, &name, node),
                ip: nth_host(node_cidr, 10 + j as u32),
                pod_slice,
                bridge_ip: nth_host(pod_slice, 1),
                wan_ip,
            }
        })
        .collect();
    let mut next_host = vec![2u32; nodes.len()];
    let pods = PODS
        .iter()
        .map(|(pod, app, j)| {
            let ip = nth_host(nodes[*j].pod_slice, next_host[*j]);
            next_host[*j] += 1;
            PodPlan {
                name: pod.to_string(),
                netns: netns_name(lab, &name, pod),
                node: nodes[*j].name.clone(),
                ip,
                app: app.to_string(),
                host_veth: format!("veth-{pod}"),
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
        nodes,
        pods,
        services,
    }
}

fn nth_host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(clusters: u8, distinct_cidrs: bool) -> LabSpec {
        LabSpec {
            name: "demo".parse().unwrap(),
            clusters,
            distinct_cidrs,
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
    fn interface_names_fit_the_kernel_limit() {
        let plan = LabPlan::new(spec(MAX_CLUSTERS, false)).unwrap();
        for c in &plan.clusters {
            for p in &c.pods {
                assert!(p.host_veth.len() <= 15, "{}", p.host_veth);
            }
        }
    }
}
