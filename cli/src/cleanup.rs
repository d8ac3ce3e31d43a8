//! Removing a node's Causeway kernel state: `causeway cleanup` by hand,
//! and the daemons' `--cleanup-on-removal` on SIGTERM when the ConfigMap
//! [`REMOVAL_CONFIGMAP`] says the release is being uninstalled.
//!
//! Each owner removes only its own (Settled decision 7): the gateway its
//! nftables table `causeway-gateway` (`nft delete table ip
//! causeway-gateway`), its routes of protocol 202 (`ip route flush proto
//! 202`) and its WireGuard interface (`ip link del causeway0`); the route
//! agent its table `causeway-node` and its routes of protocol 203. Causeway
//! adds no policy routing rules. Removing what is already gone is success,
//! so every step is idempotent.

use std::path::Path;

use anyhow::{Context, Result};
use causeway_gateway::cable::InterfaceName;
use causeway_gateway::engine::kernel::GATEWAY_TABLE;
use causeway_gateway::route_agent::TABLE as NODE_TABLE;
use causeway_gateway::routes::netlink::NetlinkRoutes;
use causeway_gateway::routes::{GATEWAY_PROTOCOL, ROUTE_AGENT_PROTOCOL, RouteApplier};
use causeway_globalnet::nft::{Applier, Family, NftCli};
use futures::TryStreamExt;
use serde::Serialize;

/// The ConfigMap (in the release namespace) whose presence tells daemons
/// with `--cleanup-on-removal` that SIGTERM means removal, not a restart.
pub const REMOVAL_CONFIGMAP: &str = "causeway-removal";

/// Flags of `causeway cleanup`.
#[derive(clap::Args, Debug, Clone)]
pub struct CleanupArgs {
    /// The gateway's WireGuard interface.
    #[arg(long, default_value = "causeway0")]
    pub interface: String,
}

/// Whose state to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The gateway's table, routes (protocol 202) and interface.
    Gateway,
    /// The route agent's table and routes (protocol 203).
    RouteAgent,
}

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// nftables tables (`ip causeway-gateway`).
    pub tables: Vec<String>,
    /// Routes, as `ip route` shows them.
    pub routes: Vec<String>,
    /// Interfaces.
    pub interfaces: Vec<String>,
}

impl Removed {
    /// Whether nothing was there.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.routes.is_empty() && self.interfaces.is_empty()
    }

    fn extend(&mut self, other: Removed) {
        self.tables.extend(other.tables);
        self.routes.extend(other.routes);
        self.interfaces.extend(other.interfaces);
    }

    /// One line per thing removed, or a line saying there was nothing.
    pub fn render(&self) -> String {
        if self.is_empty() {
            return "nothing of Causeway's was left on this node\n".to_owned();
        }
        let mut out = String::new();
        for t in &self.tables {
            out.push_str(&format!("removed nftables table {t}\n"));
        }
        for r in &self.routes {
            out.push_str(&format!("removed route {r}\n"));
        }
        for i in &self.interfaces {
            out.push_str(&format!("removed interface {i}\n"));
        }
        out
    }
}

/// Removes `owner`'s kernel state in this process's network namespace.
pub async fn remove(owner: Owner, interface: &InterfaceName) -> Result<Removed> {
    let (table, protocol) = match owner {
        Owner::Gateway => (GATEWAY_TABLE, GATEWAY_PROTOCOL),
        Owner::RouteAgent => (NODE_TABLE, ROUTE_AGENT_PROTOCOL),
    };
    let mut removed = tokio::task::spawn_blocking(move || -> Result<Removed> {
        let mut removed = Removed::default();
        // Routes first: a route through the interface goes with it anyway.
        let routes = RouteApplier::new(NetlinkRoutes::new(), protocol)
            .remove_all()
            .with_context(|| format!("remove the routes of protocol {protocol}"))?;
        removed
            .routes
            .extend(routes.delete.iter().map(ToString::to_string));
        if Applier::new(NftCli::new())
            .remove(Family::Ip, table)
            .with_context(|| format!("nft delete table ip {table}"))?
        {
            removed.tables.push(format!("ip {table}"));
        }
        Ok(removed)
    })
    .await??;
    if owner == Owner::Gateway && delete_link(interface).await? {
        removed.interfaces.push(interface.to_string());
    }
    if owner == Owner::Gateway {
        // wireguard-go leaves its UAPI socket behind.
        let socket = Path::new("/var/run/wireguard").join(format!("{interface}.sock"));
        if socket.exists() {
            let _ = std::fs::remove_file(&socket);
        }
    }
    Ok(removed)
}

/// `causeway cleanup`: the gateway's and the route agent's state.
pub async fn cleanup(args: &CleanupArgs) -> Result<Removed> {
    let interface = InterfaceName::new(&args.interface).context("--interface")?;
    let mut removed = remove(Owner::Gateway, &interface).await?;
    removed.extend(remove(Owner::RouteAgent, &interface).await?);
    Ok(removed)
}

/// `ip link del NAME`; false when there is no such link.
async fn delete_link(name: &InterfaceName) -> Result<bool> {
    let (connection, handle, _) = rtnetlink::new_connection().context("open a netlink socket")?;
    let conn = tokio::spawn(connection);
    let result = async {
        let link = match handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
        {
            Ok(link) => link,
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == 19 => None,
            Err(e) => return Err(e).with_context(|| format!("find interface {name}")),
        };
        let Some(link) = link else {
            return Ok(false);
        };
        handle
            .link()
            .del(link.header.index)
            .execute()
            .await
            .with_context(|| format!("ip link del {name}"))?;
        Ok(true)
    }
    .await;
    conn.abort();
    result
}
