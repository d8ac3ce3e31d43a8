//! The active gateway's kernel state besides the WireGuard device: the
//! tunnel address, the tunnel routes (protocol [`GATEWAY_PROTOCOL`]) and
//! Causeway's nftables table on the gateway (MSS
//! clamping for traffic to and from remote subnets).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use causeway_globalnet::nft::{Applier, DataType, Family, NftCli, Set, Table};
use causeway_globalnet::ruleset::{self, mss_chain};
use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::AddressAttribute;

use super::Datapath;
use super::globalnet::NatPlan;
use crate::cable::InterfaceName;
use crate::routes::netlink::NetlinkRoutes;
use crate::routes::{GATEWAY_PROTOCOL, RouteApplier, gateway_plan};

/// The gateway's own nftables table (settled decision 7).
pub const GATEWAY_TABLE: &str = "causeway-gateway";
const REMOTE_SET: &str = "remote";

/// The gateway table without Globalnet: clamp TCP MSS to the tunnel's MTU
/// for traffic to and from remote subnets. The identity SNAT that keeps the
/// CNI's masquerade off that traffic is the route agent's, on every node
/// including this one (two NAT chains never share a priority).
pub fn tunnel_table(remote: &BTreeSet<IpNet>, mtu: u16) -> Table {
    let mut table = Table::new(Family::Ip, GATEWAY_TABLE);
    let mut set = Set::new(vec![DataType::Ipv4Addr]).interval();
    let v4: Vec<Ipv4Net> = remote
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect();
    for net in Ipv4Net::aggregate(&v4) {
        set.insert(net);
    }
    table.sets.insert(REMOTE_SET.into(), set);
    table
        .chains
        .insert("mss".into(), mss_chain(REMOTE_SET, mtu));
    table
}

/// Deletes the UDP conntrack entries DNATed to endpoints that left (settled
/// decision 14), as kube-proxy does: UDP has no close, so without this a
/// client keeps sending to an endpoint that is gone.
fn forget_udp_flows(departed: Vec<(std::net::Ipv4Addr, std::net::SocketAddrV4)>) {
    if departed.is_empty() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        let conntrack = causeway_globalnet::conntrack::Conntrack::new();
        for (global_ip, endpoint) in departed {
            match conntrack.delete_udp_to_endpoint(*endpoint.ip(), Some(global_ip)) {
                Ok(n) => {
                    tracing::info!(%global_ip, %endpoint, deleted = n, "forgot UDP flows to an endpoint that left")
                }
                Err(e) => {
                    tracing::warn!(%global_ip, %endpoint, error = %e, "could not delete UDP conntrack entries")
                }
            }
        }
    });
}

/// rtnetlink and `nft` in the gateway's own network namespace.
pub struct KernelDatapath {
    pub interface: InterfaceName,
    pub tunnel_ip: IpAddr,
    pub global_cidr: Option<IpNet>,
    pub mtu: u16,
    routes: Arc<RouteApplier<NetlinkRoutes>>,
    nft: Arc<Applier<NftCli>>,
    /// Globalnet's plan, when Globalnet is on and this gateway active.
    nat: tokio::sync::watch::Receiver<Option<NatPlan>>,
    /// The NAT input last programmed, to find UDP endpoints that left.
    programmed: std::sync::Mutex<Option<causeway_globalnet::ruleset::Input>>,
    /// When the table was last listed and compared whole.
    last_full: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How often the gateway's table is listed whole to repair drift.
const FULL_RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

impl KernelDatapath {
    pub fn new(
        interface: InterfaceName,
        tunnel_ip: IpAddr,
        global_cidr: Option<IpNet>,
        mtu: u16,
        nat: tokio::sync::watch::Receiver<Option<NatPlan>>,
    ) -> Self {
        Self {
            interface,
            tunnel_ip,
            global_cidr,
            mtu,
            routes: Arc::new(RouteApplier::new(NetlinkRoutes::new(), GATEWAY_PROTOCOL)),
            nft: Arc::new(Applier::new(NftCli::new())),
            nat,
            programmed: std::sync::Mutex::new(None),
            last_full: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// `ip addr replace TUNNEL_IP/32 dev IFACE`, when it is not there yet.
    async fn ensure_tunnel_address(&self) -> Result<(), String> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("open netlink: {e}"))?;
        let conn = tokio::spawn(connection);
        let result = async {
            let link = handle
                .link()
                .get()
                .match_name(self.interface.to_string())
                .execute()
                .try_next()
                .await
                .map_err(|e| format!("find {}: {e}", self.interface))?
                .ok_or_else(|| format!("no interface {}", self.interface))?;
            let index = link.header.index;
            let mut addresses = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            while let Some(msg) = addresses
                .try_next()
                .await
                .map_err(|e| format!("list addresses: {e}"))?
            {
                if msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == self.tunnel_ip))
                {
                    return Ok(());
                }
            }
            let prefix = if self.tunnel_ip.is_ipv4() { 32 } else { 128 };
            handle
                .address()
                .add(index, self.tunnel_ip, prefix)
                .replace()
                .execute()
                .await
                .map_err(|e| format!("add {}/{prefix} to {}: {e}", self.tunnel_ip, self.interface))
        }
        .await;
        conn.abort();
        result
    }
}

/// The gateway's nft table, planned only when element changes do not do.
enum NatTable {
    /// The MSS-only table without Globalnet.
    Plan(Table),
    /// Globalnet's table, from its input.
    Globalnet(ruleset::Input),
}

impl NatTable {
    fn plan(self) -> Table {
        match self {
            NatTable::Plan(table) => table,
            NatTable::Globalnet(input) => {
                let mut table = ruleset::plan(&input);
                // The identity SNAT is the route agent's, on every node
                // including this one: two NAT chains never share a priority.
                table.chains.remove(ruleset::chains::IDENTITY);
                table
            }
        }
    }
}

#[async_trait::async_trait]
impl Datapath for KernelDatapath {
    async fn converge(&self, subnets: &BTreeSet<IpNet>) -> Result<(), String> {
        self.ensure_tunnel_address().await?;
        let plan = gateway_plan(
            &self.interface,
            Some(self.tunnel_ip),
            subnets.iter().copied(),
            self.global_cidr,
        );
        let routes = self.routes.clone();
        let nat = self.nat.borrow().clone();
        // What the nft table needs: element changes alone (the common case:
        // an export or endpoint changed), or a plan to diff.
        let (table, delta) = match nat {
            // Globalnet: NAT between local addresses and the global CIDRs of the peers.
            Some(nat) => {
                let mut input = nat.input;
                input.table = GATEWAY_TABLE.to_owned();
                input.remote_globals = subnets
                    .iter()
                    .filter_map(|n| match n {
                        IpNet::V4(n) => Some(*n),
                        IpNet::V6(_) => None,
                    })
                    .collect();
                let before = self
                    .programmed
                    .lock()
                    .expect("not poisoned")
                    .replace(input.clone());
                let delta = before.as_ref().and_then(|before| {
                    forget_udp_flows(ruleset::departed_udp_endpoints(before, &input));
                    ruleset::element_delta(before, &input)
                });
                (NatTable::Globalnet(input), delta)
            }
            None if self.global_cidr.is_some() => return Ok(()),
            None => (NatTable::Plan(tunnel_table(subnets, self.mtu)), None),
        };
        let nft = self.nft.clone();
        let last_full = self.last_full.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
            routes.reconcile(&plan).map_err(|e| e.to_string())?;
            // Against the last plan on events; a full listing (drift repair)
            // at most once a minute, since at 10,000 exports it costs a second.
            let full = last_full
                .lock()
                .expect("not poisoned")
                .is_none_or(|t| t.elapsed() >= FULL_RESYNC);
            if !full
                && let Some(ops) = delta
                && let Ok(Some(_)) = nft.apply_elements(Family::Ip, GATEWAY_TABLE, ops)
            {
                return Ok(());
            }
            let table = table.plan();
            if full {
                nft.reconcile(&table).map_err(|e| e.to_string())?;
                *last_full.lock().expect("not poisoned") = Some(std::time::Instant::now());
            } else {
                nft.reconcile_incremental(table)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
        if result.is_err() {
            // The next round must not take a delta from an input that never
            // reached the kernel: it plans in full.
            *self.programmed.lock().expect("not poisoned") = None;
        }
        result
    }

    async fn withdraw(&self) -> Result<(), String> {
        let routes = self.routes.clone();
        let nft = self.nft.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            routes.remove_all().map_err(|e| e.to_string())?;
            nft.remove(Family::Ip, GATEWAY_TABLE)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
