//! Realises a [`LabPlan`] in the kernel: namespaces, bridges, veth pairs,
//! VXLAN devices, addresses, routes and neighbours through rtnetlink, the
//! Flannel-style masquerade rules through `nft`, and Calico's `natOutgoing`
//! through `iptables-nft-restore`, as each CNI writes them. Every step
//! records what it made in the lab's state first, so `lab down` can undo a
//! build that failed halfway.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
use netlink_packet_route::route::{RouteScope, RouteType};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use super::plan::{
    CALICO_HOST_VETH_MAC, CALICO_POD_GATEWAY, CALICO_VXLAN_DEVICE, CALICO_VXLAN_MTU,
    CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, ClusterPlan, Cni, LabPlan, NodePlan,
};
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
        match cluster.cni {
            Cni::Flannel => build_node(cluster, node)?,
            Cni::Calico => build_calico_node(cluster, node)?,
        }
    }
    for pod in &cluster.pods {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .ok_or_else(|| anyhow!("pod {} is planned on unknown node {}", pod.name, pod.node))?;
        let (ip, prefix, gateway) = (pod.ip, node.pod_slice.prefix_len(), node.bridge_ip);
        match cluster.cni {
            Cni::Flannel => netns::run(&pod.netns, move |h| async move {
                let links = Links(h);
                links.address("eth0", ip, prefix).await?;
                links.up("eth0").await?;
                links.default_route(gateway).await
            })?,
            // What Calico's CNI plugin does inside the pod: a /32, an
            // on-link route to a gateway nobody holds, the default via it.
            Cni::Calico => netns::run(&pod.netns, move |h| async move {
                let links = Links(h);
                links.mtu("eth0", CALICO_VXLAN_MTU).await?;
                links.address("eth0", ip, 32).await?;
                links.up("eth0").await?;
                links.link_route("eth0", CALICO_POD_GATEWAY, 32).await?;
                links.default_route(CALICO_POD_GATEWAY).await
            })?,
        }
    }
    Ok(())
}

/// A Calico node: its node-network and wan addresses; `vxlan.calico` with
/// static FDB and neighbour entries for every other node and a route to
/// each other node's block via that node's VXLAN address (what Felix
/// programs in VXLAN mode); a blackhole for its own block; each pod behind
/// a `cali*` veth with proxy ARP and a /32 route (what Calico's CNI plugin
/// and Felix do); IP forwarding; and `natOutgoing`.
fn build_calico_node(cluster: &ClusterPlan, node: &NodePlan) -> Result<()> {
    let calico = node.calico.clone().ok_or_else(|| {
        anyhow!(
            "node {} of Calico cluster {} has no block",
            node.name,
            cluster.name
        )
    })?;
    let vtep_mac = parse_mac(&calico.vtep_mac)?;
    let mut peers = Vec::new();
    for n in cluster.nodes.iter().filter(|n| n.name != node.name) {
        let c = n.calico.as_ref().ok_or_else(|| {
            anyhow!(
                "node {} of Calico cluster {} has no block",
                n.name,
                cluster.name
            )
        })?;
        peers.push((n.ip, c.vtep_ip, parse_mac(&c.vtep_mac)?, c.block));
    }
    let pods: Vec<(String, String, Ipv4Addr)> = cluster
        .pods
        .iter()
        .filter(|p| p.node == node.name)
        .map(|p| (p.host_veth.clone(), p.netns.clone(), p.ip))
        .collect();
    let veths: Vec<String> = pods.iter().map(|(veth, _, _)| veth.clone()).collect();
    let (ip, node_prefix) = (node.ip, cluster.node_cidr.prefix_len());
    let wan = node.wan_ip.map(|ip| (ip, 24u8));
    netns::run(&node.netns, move |h| async move {
        let links = Links(h);
        links.node_addresses((ip, node_prefix), wan).await?;
        // Proxy ARP answers for 169.254.1.1 only when the node has a route
        // to it out of another interface; a real node's default route
        // gives it one. The node network has no router, so this default
        // leads nowhere: unrouted traffic dies unanswered on the node
        // network, as it would at a router without a route.
        links.default_device_route("eth0").await?;
        links
            .vxlan(CALICO_VXLAN_DEVICE, ip, "eth0", vtep_mac)
            .await?;
        links
            .address(CALICO_VXLAN_DEVICE, calico.vtep_ip, 32)
            .await?;
        for (node_ip, vtep_ip, mac, block) in peers {
            links.neighbour(CALICO_VXLAN_DEVICE, vtep_ip, mac).await?;
            links.fdb(CALICO_VXLAN_DEVICE, mac, node_ip).await?;
            links
                .onlink_route(
                    block.network(),
                    block.prefix_len(),
                    vtep_ip,
                    CALICO_VXLAN_DEVICE,
                )
                .await?;
        }
        links
            .blackhole(calico.block.network(), calico.block.prefix_len())
            .await?;
        for (veth, pod_netns, pod_ip) in pods {
            links.veth_to_netns(&veth, "eth0", &pod_netns).await?;
            links.mac(&veth, CALICO_HOST_VETH_MAC).await?;
            links.mtu(&veth, CALICO_VXLAN_MTU).await?;
            links.link_route(&veth, pod_ip, 32).await?;
        }
        Ok(())
    })?;
    netns::sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
    let restore = calico_nat_outgoing(cluster);
    netns::within(&node.netns, move || {
        for veth in &veths {
            // What Calico's CNI plugin and Felix set on a workload's veth;
            // strict rp_filter stops a pod spoofing its source.
            for (key, value) in [
                (format!("ipv4/conf/{veth}/proxy_arp"), "1"),
                (format!("ipv4/neigh/{veth}/proxy_delay"), "0"),
                (format!("ipv4/conf/{veth}/forwarding"), "1"),
                (format!("ipv4/conf/{veth}/route_localnet"), "1"),
                (format!("ipv4/conf/{veth}/rp_filter"), "1"),
            ] {
                let file = format!("/proc/sys/net/{key}");
                std::fs::write(&file, value).with_context(|| format!("write {value} to {file}"))?;
            }
        }
        iptables_nft_restore(&restore)
    })
}

/// The NAT rules Calico's iptables data plane writes for a pool with
/// `natOutgoing: true`, in table `nat` through iptables-nft: POSTROUTING
/// jumps to `cali-POSTROUTING`, which jumps to `cali-nat-outgoing`, which
/// masquerades pod traffic leaving the pool; and host-sourced traffic into
/// `vxlan.calico` is masqueraded to the tunnel address. Felix matches the
/// pools with ipsets (`cali40masq-ipam-pools`, `cali40all-ipam-pools`); with
/// the lab's one pool, the pod CIDR stands for both.
fn calico_nat_outgoing(cluster: &ClusterPlan) -> String {
    let pool = cluster.pod_cidr;
    format!(
        "*nat\n\
         :POSTROUTING ACCEPT [0:0]\n\
         :cali-POSTROUTING - [0:0]\n\
         :cali-nat-outgoing - [0:0]\n\
         -A POSTROUTING -m comment --comment \"cali:lab-postrouting\" -j cali-POSTROUTING\n\
         -A cali-POSTROUTING -m comment --comment \"cali:lab-nat-outgoing\" -j cali-nat-outgoing\n\
         -A cali-POSTROUTING -o {CALICO_VXLAN_DEVICE} -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL -m comment --comment \"cali:lab-vxlan-host\" -j MASQUERADE --random-fully\n\
         -A cali-nat-outgoing -s {pool} ! -d {pool} -m comment --comment \"cali:lab-masq-pools\" -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// `iptables-nft-restore --noflush`, as Felix writes its chains, in the
/// calling thread's namespace.
fn iptables_nft_restore(rules: &str) -> Result<()> {
    let mut child = Command::new("iptables-nft-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run iptables-nft-restore (Debian package `iptables`) for Calico's natOutgoing")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("iptables-nft-restore has no stdin"))?
        .write_all(rules.as_bytes())
        .context("write Calico's rules to iptables-nft-restore")?;
    let out = child
        .wait_with_output()
        .context("wait for iptables-nft-restore")?;
    if !out.status.success() {
        bail!(
            "iptables-nft-restore refused Calico's natOutgoing rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `66:ca:...` as six bytes.
fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("MAC address {text:?} is not six bytes"))
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
        links.node_addresses((ip, node_prefix), wan).await?;
        links.bridge("cni0").await?;
        links.address("cni0", bridge_ip, slice_prefix).await?;
        for (veth, pod_netns) in pods {
            links.veth_to_netns(&veth, "eth0", &pod_netns).await?;
            links.attach(&veth, "cni0").await?;
            // Flannel's CNI config sets the bridge plugin's `hairpinMode`, so
            // a pod reaches itself through a ClusterIP (the service proxy).
            links.hairpin(&veth).await?;
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
    /// A node's own addresses: `eth0` on the node network and, on a
    /// gateway candidate, `wan0` on the wan segment; both brought up.
    async fn node_addresses(
        &self,
        node: (Ipv4Addr, u8),
        wan: Option<(Ipv4Addr, u8)>,
    ) -> Result<()> {
        for (link, (ip, prefix)) in [("eth0", Some(node)), ("wan0", wan)]
            .into_iter()
            .filter_map(|(link, a)| Some((link, a?)))
        {
            self.address(link, ip, prefix).await?;
            self.up(link).await?;
        }
        Ok(())
    }

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

    /// `bridge link set dev PORT hairpin on`
    async fn hairpin(&self, port: &str) -> Result<()> {
        let index = self.index(port).await?;
        self.0
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .with_context(|| format!("set hairpin mode on {port}"))
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

    /// `ip route add default dev NAME`
    async fn default_device_route(&self, name: &str) -> Result<()> {
        self.link_route(name, Ipv4Addr::UNSPECIFIED, 0).await
    }

    /// `ip route add DST/PREFIX dev NAME scope link`
    async fn link_route(&self, name: &str, dst: Ipv4Addr, prefix: u8) -> Result<()> {
        let index = self.index(name).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.0
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("add route {dst}/{prefix} dev {name}"))
    }

    /// `ip route add DST/PREFIX via VIA dev NAME onlink`
    async fn onlink_route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        via: Ipv4Addr,
        name: &str,
    ) -> Result<()> {
        let index = self.index(name).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(via)
            .output_interface(index)
            .onlink()
            .build();
        self.0
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("add route {dst}/{prefix} via {via} dev {name} onlink"))
    }

    /// `ip route add blackhole DST/PREFIX`
    async fn blackhole(&self, dst: Ipv4Addr, prefix: u8) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .kind(RouteType::BlackHole)
            .build();
        self.0
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("add blackhole route {dst}/{prefix}"))
    }

    /// `ip link set NAME address MAC`
    async fn mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let index = self.index(name).await?;
        self.0
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("set the MAC of {name}"))
    }

    /// `ip link set NAME mtu MTU`
    async fn mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let index = self.index(name).await?;
        self.0
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("set the MTU of {name} to {mtu}"))
    }

    /// `ip link add NAME type vxlan id 4096 local LOCAL dev DEV dstport 4789
    /// nolearning && ip link set NAME address MAC mtu 1450 up`, as Felix
    /// makes `vxlan.calico`.
    async fn vxlan(&self, name: &str, local: Ipv4Addr, dev: &str, mac: [u8; 6]) -> Result<()> {
        let dev_index = self.index(dev).await?;
        self.0
            .link()
            .add(
                LinkVxlan::new(name, CALICO_VXLAN_VNI)
                    .dev(dev_index)
                    .local(local)
                    .port(CALICO_VXLAN_PORT)
                    .learning(false)
                    .mtu(CALICO_VXLAN_MTU)
                    .address(mac.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("add VXLAN device {name}"))
    }

    /// `ip neigh replace IP dev NAME lladdr MAC nud permanent`
    async fn neighbour(&self, name: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let index = self.index(name).await?;
        self.0
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("add neighbour {ip} on {name}"))
    }

    /// `bridge fdb replace MAC dev NAME dst DST self permanent`
    async fn fdb(&self, name: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        let index = self.index(name).await?;
        self.0
            .neighbours()
            .add_bridge(index, &mac)
            .destination(IpAddr::V4(dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("add FDB entry for {dst} on {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{CniChoice, LabSpec};

    fn calico_cluster(distinct: bool) -> ClusterPlan {
        let spec = LabSpec {
            name: "demo".parse().unwrap(),
            clusters: 2,
            distinct_cidrs: distinct,
            dns_answer: None,
        };
        let plan = LabPlan::with_cni(spec, &"calico".parse::<CniChoice>().unwrap()).unwrap();
        plan.clusters[1].clone()
    }

    #[test]
    fn nat_outgoing_is_written_as_calico_chains_over_the_pool() {
        let rules = calico_nat_outgoing(&calico_cluster(true));
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(lines.first(), Some(&"*nat"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
        for chain in [":cali-POSTROUTING - [0:0]", ":cali-nat-outgoing - [0:0]"] {
            assert!(lines.contains(&chain), "{rules}");
        }
        let rule = |chain: &str| {
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("-A {chain} ")))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(rule("POSTROUTING").len(), 1);
        assert!(rule("POSTROUTING")[0].ends_with("-j cali-POSTROUTING"));
        assert!(rule("cali-POSTROUTING")[0].ends_with("-j cali-nat-outgoing"));
        assert_eq!(
            rule("cali-nat-outgoing"),
            [
                "-A cali-nat-outgoing -s 10.245.0.0/16 ! -d 10.245.0.0/16 -m comment --comment \"cali:lab-masq-pools\" -j MASQUERADE --random-fully"
            ]
        );
    }

    #[test]
    fn vtep_macs_parse_and_bad_ones_are_refused() {
        let cluster = calico_cluster(false);
        for node in &cluster.nodes {
            let mac = parse_mac(&node.calico.as_ref().unwrap().vtep_mac).unwrap();
            assert_eq!(mac[0] & 0b11, 0b10, "locally administered unicast");
        }
        for bad in ["", "66:ca", "66:ca:1c:00:00:zz", "66:ca:1c:00:00:00:01"] {
            assert!(parse_mac(bad).is_err(), "{bad:?} accepted");
        }
    }
}
