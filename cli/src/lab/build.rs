//! Realises a [`LabPlan`] in the kernel: namespaces, bridges, veth pairs,
//! addresses and routes through rtnetlink, and the Flannel-style
//! masquerade rules through `nft`. Every step records what it made in the
//! lab's state first, so `lab down` can undo a build that failed halfway.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::plan::{ClusterPlan, LabPlan, NodePlan};
use super::state::LabState;
use crate::netns;

/// Builds every namespace and link of `plan`.
pub fn build(plan: &LabPlan, state: &mut LabState) -> Result<()> {
    for ns in plan.namespaces() {
        netns::create(&ns)?;
        state.record_namespace(&ns)?;
        netns::run(&ns, |h| async move { Links(h).up("lo").await })?;
    }
    build_wan(plan)?;
    for cluster in &plan.clusters {
        build_cluster(cluster)?;
    }
    Ok(())
}

/// The wan bridge, the broker on it, and every gateway candidate's `wan0`.
fn build_wan(plan: &LabPlan) -> Result<()> {
    let mut ports = vec![("broker".to_owned(), plan.wan.broker_netns.clone(), "eth0")];
    for c in &plan.clusters {
        for n in c.nodes.iter().filter(|n| n.is_gateway_candidate()) {
            ports.push((format!("{}-{}", c.name, n.name), n.netns.clone(), "wan0"));
        }
    }
    netns::run(&plan.wan.netns, move |h| async move {
        let links = Links(h);
        links.bridge("br0").await?;
        for (port, netns, peer) in ports {
            links.veth_to_netns(&port, peer, &netns).await?;
            links.attach(&port, "br0").await?;
        }
        Ok(())
    })?;
    let (broker_ip, prefix) = (plan.wan.broker_ip, plan.wan.cidr.prefix_len());
    netns::run(&plan.wan.broker_netns, move |h| async move {
        let links = Links(h);
        links.address("eth0", broker_ip, prefix).await?;
        links.up("eth0").await
    })
}

/// The node network's bridge, each node, and each pod behind its node.
fn build_cluster(cluster: &ClusterPlan) -> Result<()> {
    let node_ports: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.netns.clone()))
        .chain([(
            "control-plane".to_owned(),
            cluster.control_plane.netns.clone(),
        )])
        .collect();
    netns::run(&cluster.lan_netns, move |h| async move {
        let links = Links(h);
        links.bridge("br0").await?;
        for (port, netns) in node_ports {
            links.veth_to_netns(&port, "eth0", &netns).await?;
            links.attach(&port, "br0").await?;
        }
        Ok(())
    })?;
    let (cp_ip, cp_prefix) = (cluster.control_plane.ip, cluster.node_cidr.prefix_len());
    netns::run(&cluster.control_plane.netns, move |h| async move {
        let links = Links(h);
        links.address("eth0", cp_ip, cp_prefix).await?;
        links.up("eth0").await
    })?;
    for node in &cluster.nodes {
        build_node(cluster, node)?;
    }
    for pod in &cluster.pods {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .ok_or_else(|| anyhow!("pod {} is planned on unknown node {}", pod.name, pod.node))?;
        let (ip, prefix, gateway) = (pod.ip, node.pod_slice.prefix_len(), node.bridge_ip);
        netns::run(&pod.netns, move |h| async move {
            let links = Links(h);
            links.address("eth0", ip, prefix).await?;
            links.up("eth0").await?;
            links.default_route(gateway).await
        })?;
    }
    Ok(())
}

/// A node: its node-network and wan addresses, the `cni0` bridge with its
/// pods' veths, routes to the other nodes' pod slices (Flannel host-gw), IP
/// forwarding, and Flannel's masquerade rules.
fn build_node(cluster: &ClusterPlan, node: &NodePlan) -> Result<()> {
    let pods: Vec<(String, String)> = cluster
        .pods
        .iter()
        .filter(|p| p.node == node.name)
        .map(|p| (p.host_veth.clone(), p.netns.clone()))
        .collect();
    let peers: Vec<(Ipv4Addr, u8, Ipv4Addr)> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != node.name)
        .map(|n| (n.pod_slice.network(), n.pod_slice.prefix_len(), n.ip))
        .collect();
    let (ip, node_prefix) = (node.ip, cluster.node_cidr.prefix_len());
    let (bridge_ip, slice_prefix) = (node.bridge_ip, node.pod_slice.prefix_len());
    let wan = node.wan_ip.map(|ip| (ip, 24u8));
    netns::run(&node.netns, move |h| async move {
        let links = Links(h);
        links.address("eth0", ip, node_prefix).await?;
        links.up("eth0").await?;
        if let Some((wan_ip, prefix)) = wan {
            links.address("wan0", wan_ip, prefix).await?;
            links.up("wan0").await?;
        }
        links.bridge("cni0").await?;
        links.address("cni0", bridge_ip, slice_prefix).await?;
        for (veth, pod_netns) in pods {
            links.veth_to_netns(&veth, "eth0", &pod_netns).await?;
            links.attach(&veth, "cni0").await?;
        }
        for (dst, prefix, via) in peers {
            links.route(dst, prefix, via).await?;
        }
        Ok(())
    })?;
    netns::sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
    let masquerade = flannel_masquerade(cluster, node)?;
    netns::within(&node.netns, move || {
        nftables::helper::apply_ruleset(&masquerade)
            .context("install Flannel's masquerade rules with nft")
    })
}

/// The four POSTROUTING rules Flannel's `--ip-masq` installs (through
/// iptables-nft, so in table `ip nat`): leave pod-to-pod traffic alone,
/// masquerade pod traffic leaving the pod CIDR (multicast aside), leave
/// traffic to this node's own pods alone, and masquerade other traffic into
/// the pod CIDR. Causeway must work in spite of them (DESIGN.md).
fn flannel_masquerade(
    cluster: &ClusterPlan,
    node: &NodePlan,
) -> Result<nftables::schema::Nftables<'static>> {
    let pods = (
        cluster.pod_cidr.network().to_string(),
        cluster.pod_cidr.prefix_len(),
    );
    let slice = (
        node.pod_slice.network().to_string(),
        node.pod_slice.prefix_len(),
    );
    let prefix =
        |(addr, len): &(String, u8)| serde_json::json!({"prefix": {"addr": addr, "len": len}});
    let field = |f: &str| serde_json::json!({"payload": {"protocol": "ip", "field": f}});
    let is = |f: &str, net: serde_json::Value| serde_json::json!({"match": {"op": "==", "left": field(f), "right": net}});
    let is_not = |f: &str, net: serde_json::Value| serde_json::json!({"match": {"op": "!=", "left": field(f), "right": net}});
    let multicast = serde_json::json!({"prefix": {"addr": "224.0.0.0", "len": 4}});
    let masquerade = serde_json::json!({"masquerade": {"flags": ["fully-random"]}});
    let rule = |expr: Vec<serde_json::Value>| serde_json::json!({"add": {"rule": {"family": "ip", "table": "nat", "chain": "FLANNEL-POSTRTG", "expr": expr}}});
    let ruleset = serde_json::json!({"nftables": [
        {"add": {"table": {"family": "ip", "name": "nat"}}},
        {"add": {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"chain": {"family": "ip", "table": "nat", "name": "FLANNEL-POSTRTG"}}},
        {"add": {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING",
            "expr": [{"jump": {"target": "FLANNEL-POSTRTG"}}]}}},
        rule(vec![is("saddr", prefix(&pods)), is("daddr", prefix(&pods)), serde_json::json!({"return": null})]),
        rule(vec![is("saddr", prefix(&pods)), is_not("daddr", multicast), masquerade.clone()]),
        rule(vec![is_not("saddr", prefix(&pods)), is("daddr", prefix(&slice)), serde_json::json!({"return": null})]),
        rule(vec![is_not("saddr", prefix(&pods)), is("daddr", prefix(&pods)), masquerade]),
    ]});
    serde_json::from_value(ruleset).context("build Flannel's masquerade ruleset")
}

/// rtnetlink requests the lab makes, each named after the `ip` command it
/// stands for.
struct Links(Handle);

impl Links {
    async fn index(&self, name: &str) -> Result<u32> {
        let link = self
            .0
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("find link {name}"))?
            .ok_or_else(|| anyhow!("no link {name}"))?;
        Ok(link.header.index)
    }

    /// `ip link set NAME up`
    async fn up(&self, name: &str) -> Result<()> {
        let index = self.index(name).await?;
        self.0
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("set {name} up"))
    }

    /// `ip link add NAME type bridge && ip link set NAME up`
    async fn bridge(&self, name: &str) -> Result<()> {
        self.0
            .link()
            .add(LinkBridge::new(name).up().build())
            .execute()
            .await
            .with_context(|| format!("add bridge {name}"))
    }

    /// `ip link add NAME type veth peer PEER netns NETNS && ip link set NAME up`
    async fn veth_to_netns(&self, name: &str, peer: &str, netns: &str) -> Result<()> {
        // The peer is born here under a name of its own (another peer may
        // already be called PEER here) and renamed as it moves.
        let interim = format!("{}-p", &name[..name.len().min(13)]);
        self.0
            .link()
            .add(LinkVeth::new(name, &interim).build())
            .execute()
            .await
            .with_context(|| format!("add veth {name} with peer {interim}"))?;
        let target =
            File::open(netns::path(netns)).with_context(|| format!("open namespace {netns}"))?;
        let interim_index = self.index(&interim).await?;
        self.0
            .link()
            .set(
                LinkUnspec::new_with_index(interim_index)
                    .setns_by_fd(target.as_raw_fd())
                    .name(peer)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("move {interim} into namespace {netns} as {peer}"))?;
        self.up(name).await
    }

    /// `ip link set PORT master BRIDGE`
    async fn attach(&self, port: &str, bridge: &str) -> Result<()> {
        let (port_index, bridge_index) = (self.index(port).await?, self.index(bridge).await?);
        self.0
            .link()
            .set(
                LinkUnspec::new_with_index(port_index)
                    .controller(bridge_index)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("attach {port} to {bridge}"))
    }

    /// `ip addr add IP/PREFIX dev NAME`
    async fn address(&self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let index = self.index(name).await?;
        self.0
            .address()
            .add(index, ip.into(), prefix)
            .execute()
            .await
            .with_context(|| format!("add {ip}/{prefix} to {name}"))
    }

    /// `ip route add DST/PREFIX via VIA`
    async fn route(&self, dst: Ipv4Addr, prefix: u8, via: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(via)
            .build();
        self.0
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("add route {dst}/{prefix} via {via}"))
    }

    /// `ip route add default via VIA`
    async fn default_route(&self, via: Ipv4Addr) -> Result<()> {
        self.route(Ipv4Addr::UNSPECIFIED, 0, via).await
    }
}
