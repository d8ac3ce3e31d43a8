//! The route agent's datapath on every node: routes to every remote subnet
//! via the active gateway node, and an identity SNAT chain that keeps the
//! CNI's masquerade off inter-cluster traffic.
//!
//! Data flow: this node's name, this cluster's active Endpoint (node name and
//! private IP), the remote clusters' Endpoint subnets and the local CIDRs
//! form an [`Input`]. [`plan_routes`] turns it into routes with
//! [`ROUTE_AGENT_PROTOCOL`] (none on the node that holds the lease: the
//! gateway's tunnel routes serve it, Settled decision 7; none while no
//! gateway is active); [`plan_nft`] into the `causeway-node` table, whose
//! chain at `srcnat - 10` binds traffic to and from remote subnets with
//! `snat ip to ip saddr` (Settled decision 2). [`Datapath::reconcile`]
//! applies both through their appliers; [`run`] does so on every change of
//! the Endpoint records in the cluster's own store and on a timer.
//!
//! A remote cluster with a subnet that is a default route or overlaps a local
//! CIDR is refused whole (as the gateway refuses its peer), so its traffic
//! is neither routed nor exempted from masquerade.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::store::{RecordSet, Store};
use causeway_api::{ClusterId, Endpoint, Kind};
use causeway_globalnet::nft::{self, DataType, Family, Set, Table};
use causeway_globalnet::ruleset::identity_chain;
use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use tokio_util::sync::CancellationToken;

use crate::routes::{
    ROUTE_AGENT_PROTOCOL, Route, RouteApplier, RouteBackend, RouteDiff, RouteError, rp_filter,
};

/// The route agent's nftables table (`nft list table ip causeway-node`).
pub const TABLE: &str = "causeway-node";
/// The set of remote subnets in that table.
pub const REMOTE_SET: &str = "remote";
/// The identity SNAT chain in that table.
pub const IDENTITY_CHAIN: &str = "identity";

/// The cluster's active gateway, from its Endpoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveGateway {
    /// The node the active gateway runs on.
    pub node_name: String,
    /// That node's address on the node network: the next hop.
    pub private_ip: IpAddr,
}

impl From<&Endpoint> for ActiveGateway {
    fn from(e: &Endpoint) -> Self {
        Self {
            node_name: e.node_name.clone(),
            private_ip: e.private_ip,
        }
    }
}

/// Everything the route agent plans from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// This node's name.
    pub node_name: String,
    /// This cluster's active gateway; `None` while there is none.
    pub active: Option<ActiveGateway>,
    /// The local cluster's pod, service, node (and global) CIDRs.
    pub local_subnets: Vec<IpNet>,
    /// Every remote cluster's subnets (from its Endpoint record).
    pub remotes: BTreeMap<ClusterId, Vec<IpNet>>,
}

impl Input {
    /// The input from Endpoint records: `local` is this cluster's (if any),
    /// `remotes` every other cluster's; a record of this cluster among the
    /// remotes is skipped.
    pub fn from_endpoints<'a>(
        node_name: impl Into<String>,
        local: Option<&Endpoint>,
        remotes: impl IntoIterator<Item = &'a Endpoint>,
        local_subnets: Vec<IpNet>,
    ) -> Self {
        let own = local.map(|e| e.cluster.clone());
        Self {
            node_name: node_name.into(),
            active: local.map(ActiveGateway::from),
            local_subnets,
            remotes: remotes
                .into_iter()
                .filter(|e| Some(&e.cluster) != own.as_ref())
                .map(|e| (e.cluster.clone(), e.subnets.clone()))
                .collect(),
        }
    }
}

/// A remote subnet the route agent will not route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The remote cluster.
    pub cluster: ClusterId,
    /// Its subnet.
    pub subnet: IpNet,
    /// Why, in words for a log line.
    pub reason: String,
}

/// The route agent's routes, and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to hold (all with [`ROUTE_AGENT_PROTOCOL`]).
    pub routes: BTreeSet<Route>,
    /// Subnets refused.
    pub refused: Vec<Refused>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The remote subnets that may be used, and the refusals.
fn accepted(input: &Input) -> (BTreeMap<&ClusterId, Vec<IpNet>>, Vec<Refused>) {
    let mut ok = BTreeMap::new();
    let mut refused = Vec::new();
    'cluster: for (cluster, subnets) in &input.remotes {
        for subnet in subnets {
            let reason = if subnet.prefix_len() == 0 {
                Some("is a default route".to_string())
            } else {
                input
                    .local_subnets
                    .iter()
                    .find(|l| overlaps(subnet, l))
                    .map(|l| format!("overlaps the local CIDR {l}"))
            };
            if let Some(reason) = reason {
                refused.extend(subnets.iter().map(|s| Refused {
                    cluster: cluster.clone(),
                    subnet: s.trunc(),
                    reason: if s == subnet {
                        reason.clone()
                    } else {
                        format!("cluster refused: its subnet {subnet} {reason}")
                    },
                }));
                continue 'cluster;
            }
        }
        ok.insert(cluster, subnets.iter().map(IpNet::trunc).collect());
    }
    (ok, refused)
}

/// The route agent's routes: each accepted remote subnet via the active
/// gateway node's private IP, on every node but the one holding the lease.
pub fn plan_routes(input: &Input) -> RoutePlan {
    let (ok, mut refused) = accepted(input);
    let mut routes = BTreeSet::new();
    let Some(active) = &input.active else {
        return RoutePlan { routes, refused };
    };
    if active.node_name == input.node_name {
        return RoutePlan { routes, refused };
    }
    for (cluster, subnets) in ok {
        for subnet in subnets {
            if subnet.addr().is_ipv4() != active.private_ip.is_ipv4() {
                refused.push(Refused {
                    cluster: cluster.clone(),
                    subnet,
                    reason: format!(
                        "is of another address family than the gateway's {}",
                        active.private_ip
                    ),
                });
                continue;
            }
            if subnet.contains(&active.private_ip) {
                refused.push(Refused {
                    cluster: cluster.clone(),
                    subnet,
                    reason: format!("holds the gateway node's own address {}", active.private_ip),
                });
                continue;
            }
            routes.insert(Route::via(subnet, active.private_ip, ROUTE_AGENT_PROTOCOL));
        }
    }
    RoutePlan { routes, refused }
}

/// The `causeway-node` table: the set of accepted remote IPv4 subnets and
/// the identity SNAT chain over it at `srcnat - 10`. Planned the same on
/// every node, whether a gateway is active or not, so the binding never
/// flaps during a failover.
pub fn plan_nft(input: &Input) -> Table {
    let (ok, _) = accepted(input);
    let v4: Vec<Ipv4Net> = ok
        .values()
        .flatten()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect();
    let mut set = Set::new(vec![DataType::Ipv4Addr]).interval();
    // nft refuses overlapping intervals: merge them first.
    for n in Ipv4Net::aggregate(&v4) {
        set.insert(n);
    }
    let mut table = Table::new(Family::Ip, TABLE);
    table.sets.insert(REMOTE_SET.into(), set);
    table
        .chains
        .insert(IDENTITY_CHAIN.into(), identity_chain(REMOTE_SET));
    table
}

/// Errors of the route agent's datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Programming routes failed.
    #[error(transparent)]
    Routes(#[from] RouteError),
    /// Programming the nftables table failed.
    #[error("route agent nftables: {0}")]
    Nft(#[from] causeway_globalnet::Error),
}

/// What one reconcile changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Routes replaced and deleted.
    pub routes: RouteDiff,
    /// Whether the nftables table changed.
    pub nft_changed: bool,
    /// Subnets refused.
    pub refused: Vec<Refused>,
}

/// The route agent's two appliers.
#[derive(Debug)]
pub struct Datapath<R, N> {
    routes: RouteApplier<R>,
    nft: nft::Applier<N>,
}

impl<R: RouteBackend, N: nft::Backend> Datapath<R, N> {
    /// Over a route backend and an nftables backend.
    pub fn new(routes: R, nft: N) -> Self {
        Self {
            routes: RouteApplier::new(routes, ROUTE_AGENT_PROTOCOL),
            nft: nft::Applier::new(nft),
        }
    }

    /// The route applier.
    pub fn routes(&self) -> &RouteApplier<R> {
        &self.routes
    }

    /// The nftables applier.
    pub fn nft(&self) -> &nft::Applier<N> {
        &self.nft
    }

    /// Plans from `input` and brings routes and the table to the plan. The
    /// table goes first, so traffic is exempted from masquerade before it is
    /// routed. Blocks (netlink, `nft`): async callers use `spawn_blocking`.
    #[tracing::instrument(skip_all, fields(node = %input.node_name))]
    pub fn reconcile(&self, input: &Input) -> Result<Outcome, DatapathError> {
        let plan = plan_routes(input);
        for r in &plan.refused {
            tracing::warn!(cluster = %r.cluster, subnet = %r.subnet, "remote subnet refused: {}", r.reason);
        }
        let nft_changed = self.nft.reconcile(&plan_nft(input))?.changed();
        let routes = self.routes.reconcile(&plan.routes)?;
        Ok(Outcome {
            routes,
            nft_changed,
            refused: plan.refused,
        })
    }
}

/// What the route agent daemon needs besides its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// This node's cluster.
    pub cluster: ClusterId,
    /// This node's name (as the gateway writes it into the Endpoint record).
    pub node_name: String,
    /// The local cluster's pod, service, node (and global) CIDRs.
    pub local_subnets: Vec<IpNet>,
    /// Interfaces whose rp_filter is loosened besides `all`; `None` leaves
    /// rp_filter alone.
    pub rp_filter: Option<Vec<String>>,
    /// How often the datapath is re-checked without any event (drift repair).
    pub resync: Duration,
}

/// The route agent: watches the Endpoint records of the cluster's own store
/// (Settled decision 1) and reconciles the datapath on every change and
/// every `resync`, until `cancel` fires. While the store is unreachable the
/// last known state stands (the watch retries inside). Loosens rp_filter on
/// every resync (the calling thread's namespace: the daemon's).
pub async fn run<R, N>(
    config: AgentConfig,
    store: Arc<dyn Store>,
    datapath: Arc<Datapath<R, N>>,
    cancel: CancellationToken,
) where
    R: RouteBackend + 'static,
    N: nft::Backend + Send + Sync + 'static,
{
    let mut events = store.watch(Some(Kind::Endpoint), None);
    let mut endpoints = RecordSet::default();
    let mut tick = tokio::time::interval(config.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Input> = None;
    loop {
        let timer = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = events.next() => match ev {
                Some(ev) => {
                    endpoints.apply(ev);
                    false
                }
                None => return,
            },
            _ = tick.tick() => true,
        };
        if let Some(interfaces) = config.rp_filter.clone().filter(|_| timer) {
            match tokio::task::spawn_blocking(move || rp_filter::loosen(&interfaces)).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "could not loosen rp_filter"),
                Err(e) => tracing::warn!(error = %e, "rp_filter task failed"),
                Ok(Ok(_)) => {}
            }
        }
        if !endpoints.is_synced() {
            continue;
        }
        let all: Vec<Endpoint> = endpoints.typed::<Endpoint>().collect();
        let local = all.iter().find(|e| e.cluster == config.cluster);
        let input = Input::from_endpoints(
            config.node_name.clone(),
            local,
            all.iter(),
            config.local_subnets.clone(),
        );
        // An event that changes nothing of ours (another record's revision)
        // needs no kernel round trip; the timer still repairs drift.
        if !timer && last.as_ref() == Some(&input) {
            continue;
        }
        let dp = Arc::clone(&datapath);
        let planned = input.clone();
        match tokio::task::spawn_blocking(move || dp.reconcile(&planned)).await {
            Ok(Ok(outcome)) => {
                if !outcome.routes.is_empty() || outcome.nft_changed {
                    tracing::info!(
                        gateway = ?input.active.as_ref().map(|a| &a.node_name),
                        replaced = outcome.routes.replace.len(),
                        deleted = outcome.routes.delete.len(),
                        nft_changed = outcome.nft_changed,
                        "route agent converged"
                    );
                }
                last = Some(input);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not converge the node's datapath; retrying");
                last = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "route agent reconcile task failed");
                last = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_globalnet::nft::{ChainType, FakeNft, Hook, Value, priority};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn input(node: &str, active: Option<(&str, &str)>) -> Input {
        Input {
            node_name: node.into(),
            active: active.map(|(n, a)| ActiveGateway {
                node_name: n.into(),
                private_ip: ip(a),
            }),
            local_subnets: vec![
                net("10.244.0.0/16"),
                net("10.96.0.0/12"),
                net("192.168.10.0/24"),
            ],
            remotes: BTreeMap::from([
                (id("b"), vec![net("10.245.0.0/16"), net("10.112.0.0/12")]),
                (id("c"), vec![net("10.246.0.0/16")]),
            ]),
        }
    }

    fn shown(plan: &RoutePlan) -> Vec<String> {
        plan.routes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn routes_table() {
        let all_via_0 = [
            "10.112.0.0/12 via 192.168.10.1 proto 203",
            "10.245.0.0/16 via 192.168.10.1 proto 203",
            "10.246.0.0/16 via 192.168.10.1 proto 203",
        ];
        let cases: [(&str, Input, Vec<&str>); 4] = [
            (
                "worker routes everything via the active gateway node",
                input("node-2", Some(("node-0", "192.168.10.1"))),
                all_via_0.to_vec(),
            ),
            (
                "standby candidate routes too",
                input("node-1", Some(("node-0", "192.168.10.1"))),
                all_via_0.to_vec(),
            ),
            (
                "the lease holder installs no remote routes",
                input("node-0", Some(("node-0", "192.168.10.1"))),
                vec![],
            ),
            (
                "no active gateway, no routes",
                input("node-2", None),
                vec![],
            ),
        ];
        for (name, inp, want) in cases {
            let plan = plan_routes(&inp);
            assert_eq!(shown(&plan), want, "{name}");
            assert!(plan.refused.is_empty(), "{name}");
        }
    }

    #[test]
    fn failover_moves_every_route() {
        let before = plan_routes(&input("node-2", Some(("node-0", "192.168.10.1"))));
        let after = plan_routes(&input("node-2", Some(("node-1", "192.168.10.2"))));
        let d = crate::routes::diff(
            &after.routes,
            &before.routes.iter().cloned().collect::<Vec<_>>(),
        );
        assert_eq!(d.replace.len(), 3);
        assert!(
            d.delete.is_empty(),
            "replaced in place, never deleted first"
        );
        // On the new lease holder they all go.
        let on_new = plan_routes(&input("node-1", Some(("node-1", "192.168.10.2"))));
        let d = crate::routes::diff(
            &on_new.routes,
            &before.routes.iter().cloned().collect::<Vec<_>>(),
        );
        assert_eq!(d.delete.len(), 3);
    }

    #[test]
    fn bad_remote_subnets_are_refused_whole_cluster() {
        let mut inp = input("node-2", Some(("node-0", "192.168.10.1")));
        inp.remotes
            .insert(id("d"), vec![net("10.247.0.0/16"), net("10.244.5.0/24")]);
        inp.remotes.insert(id("e"), vec![net("0.0.0.0/0")]);
        inp.remotes.insert(id("f"), vec![net("fd00::/64")]);
        let plan = plan_routes(&inp);
        assert_eq!(plan.routes.len(), 3, "b and c only");
        let refused: Vec<(String, String)> = plan
            .refused
            .iter()
            .map(|r| (format!("{} {}", r.cluster, r.subnet), r.reason.clone()))
            .collect();
        assert_eq!(
            refused,
            [
                (
                    "d 10.247.0.0/16".into(),
                    "cluster refused: its subnet 10.244.5.0/24 overlaps the local CIDR 10.244.0.0/16"
                        .into()
                ),
                ("d 10.244.5.0/24".into(), "overlaps the local CIDR 10.244.0.0/16".into()),
                ("e 0.0.0.0/0".into(), "is a default route".into()),
                (
                    "f fd00::/64".into(),
                    "is of another address family than the gateway's 192.168.10.1".into()
                ),
            ]
        );
        let table = plan_nft(&inp);
        let set = &table.sets[REMOTE_SET];
        assert!(
            !set.elements
                .contains_key(&Value::net("10.247.0.0/16".parse().unwrap()))
        );
    }

    fn ep(cluster: &str, node: &str, addr: &str, subnets: &[&str]) -> Endpoint {
        serde_json::from_value(serde_json::json!({
            "cluster": cluster,
            "nodeName": node,
            "privateIp": addr,
            "port": 51820,
            "publicKey": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "subnets": subnets,
            "backend": "kernel",
            "mtu": 1420,
        }))
        .unwrap_or_else(|e| panic!("endpoint json: {e}"))
    }

    /// Waits up to 3 s for the fake's routes to be `want`.
    async fn routes_become(dp: &Datapath<crate::routes::fake::FakeRoutes, FakeNft>, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let have: Vec<String> = dp
                .routes()
                .backend()
                .routes()
                .iter()
                .map(ToString::to_string)
                .collect();
            if have == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "routes {have:?}, want {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn run_follows_the_endpoint_records() {
        use causeway_api::{AnyRecord, FakeStore};
        let store = Arc::new(FakeStore::new());
        let put = |e: Endpoint| {
            let store = Arc::clone(&store);
            async move { store.put(&AnyRecord::from(e)).await.unwrap() }
        };
        put(ep("a", "node-0", "192.168.10.1", &["10.244.0.0/16"])).await;
        put(ep("b", "node-0", "192.168.20.1", &["10.245.0.0/16"])).await;
        let dp = Arc::new(Datapath::new(
            crate::routes::fake::FakeRoutes::default(),
            FakeNft::default(),
        ));
        let cancel = CancellationToken::new();
        let config = AgentConfig {
            cluster: id("a"),
            node_name: "node-2".into(),
            local_subnets: vec![net("10.244.0.0/16")],
            rp_filter: None,
            resync: std::time::Duration::from_secs(30),
        };
        let task = tokio::spawn(run(config, store.clone(), Arc::clone(&dp), cancel.clone()));
        routes_become(&dp, &["10.245.0.0/16 via 192.168.10.1 proto 203"]).await;

        // Failover to node-1.
        put(ep("a", "node-1", "192.168.10.2", &["10.244.0.0/16"])).await;
        routes_become(&dp, &["10.245.0.0/16 via 192.168.10.2 proto 203"]).await;
        // A new cluster joins.
        put(ep("c", "node-0", "192.168.30.1", &["10.246.0.0/16"])).await;
        routes_become(
            &dp,
            &[
                "10.245.0.0/16 via 192.168.10.2 proto 203",
                "10.246.0.0/16 via 192.168.10.2 proto 203",
            ],
        )
        .await;
        // This node takes the lease: no remote routes here.
        put(ep("a", "node-2", "192.168.10.3", &["10.244.0.0/16"])).await;
        routes_become(&dp, &[]).await;

        cancel.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn from_endpoints_skips_this_cluster() {
        let a = ep("a", "node-0", "192.168.10.1", &["10.244.0.0/16"]);
        let b = ep("b", "node-1", "192.168.20.2", &["10.245.0.0/16"]);
        let inp = Input::from_endpoints("node-2", Some(&a), [&a, &b], vec![net("10.244.0.0/16")]);
        assert_eq!(inp.remotes.keys().collect::<Vec<_>>(), [&id("b")]);
        assert_eq!(
            shown(&plan_routes(&inp)),
            ["10.245.0.0/16 via 192.168.10.1 proto 203"]
        );
    }

    #[test]
    fn nft_table_binds_to_and_from_remote_subnets() {
        let mut inp = input("node-2", None);
        // Adjacent subnets merge into one interval.
        inp.remotes.insert(id("d"), vec![net("10.247.0.0/16")]);
        let table = plan_nft(&inp);
        assert_eq!(
            (table.family, table.name.as_str()),
            (Family::Ip, "causeway-node")
        );
        let elements: Vec<&Value> = table.sets[REMOTE_SET].elements.keys().collect();
        let want: Vec<Value> = ["10.112.0.0/12", "10.245.0.0/16", "10.246.0.0/15"]
            .iter()
            .map(|n| Value::net(n.parse().unwrap()))
            .collect();
        assert_eq!(elements, want.iter().collect::<Vec<_>>());
        let chain = &table.chains[IDENTITY_CHAIN];
        let base = chain.base.expect("a base chain");
        assert_eq!(
            (base.kind, base.hook, base.priority),
            (ChainType::Nat, Hook::Postrouting, priority::SRCNAT - 10)
        );
        assert_eq!(chain, &identity_chain(REMOTE_SET));
        assert_eq!(chain.rules.len(), 2, "to and from remote subnets");
        // The same with or without an active gateway (no flap on failover).
        assert_eq!(
            plan_nft(&input("node-2", Some(("node-0", "192.168.10.1")))),
            plan_nft(&input("node-2", None))
        );
    }

    #[test]
    fn datapath_converges_on_fakes() {
        let dp = Datapath::new(
            crate::routes::fake::FakeRoutes::default(),
            FakeNft::default(),
        );
        let inp = input("node-2", Some(("node-0", "192.168.10.1")));
        let first = dp.reconcile(&inp).unwrap();
        assert!(first.nft_changed);
        assert_eq!(first.routes.replace.len(), 3);
        let second = dp.reconcile(&inp).unwrap();
        assert!(!second.nft_changed);
        assert!(second.routes.is_empty());
    }
}
