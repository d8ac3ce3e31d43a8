//! Routes Causeway owns in the kernel: planned as plain data, applied by
//! diffing against the routes that carry Causeway's protocol number.
//!
//! Data flow: a planner ([`gateway_plan`] here, or
//! [`crate::route_agent::plan_routes`]) yields a `BTreeSet<Route>`, all with
//! one protocol number. [`RouteApplier::reconcile`] observes the routes of
//! that protocol ([`RouteBackend::observe`], `ip route show proto N table
//! all`), computes a [`RouteDiff`] with [`diff`] and applies it (`ip route
//! replace` / `ip route del`). Routes of any other protocol are never read
//! into a diff, so they are never touched.
//!
//! Protocol numbers (Settled decision 7: one owner per piece of kernel
//! state): [`GATEWAY_PROTOCOL`] 202 for the gateway's tunnel routes and the
//! unreachable route of the cluster's own global CIDR, [`ROUTE_AGENT_PROTOCOL`]
//! 203 for the route agent's routes via the active gateway. Neither is named
//! in iproute2's `rt_protos` nor used by FRR (186-199), BIRD (12), Babel
//! (42) or keepalived (18). `ip route show proto 202` lists the gateway's.
//!
//! Backends: [`netlink::NetlinkRoutes`] (rtnetlink, optionally inside a
//! network namespace) and [`fake::FakeRoutes`] for tests. [`rp_filter`]
//! loosens reverse-path filtering on the interfaces the path uses.

pub mod fake;
pub mod netlink;
pub mod rp_filter;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::cable::InterfaceName;

/// Route protocol number of the gateway's routes (`ip route ... proto 202`).
pub const GATEWAY_PROTOCOL: u8 = 202;
/// Route protocol number of the route agent's routes (`ip route ... proto 203`).
pub const ROUTE_AGENT_PROTOCOL: u8 = 203;
/// Metric of the gateway's routes. The route agent's routes (metric 0) win
/// over them, so tunnel routes a crashed gateway left behind on a node that
/// no longer holds the lease never blackhole that node's traffic; on the
/// lease holder the route agent installs none (settled decision 7).
pub const GATEWAY_METRIC: u32 = 100;
/// The main routing table (`table main`).
pub const MAIN_TABLE: u32 = 254;

/// Errors of route programming and rp_filter.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Opening a netlink socket or a runtime for it failed.
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    /// Entering the network namespace failed.
    #[error("cannot enter network namespace {path}: {detail}")]
    EnterNetns {
        /// The namespace file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Listing routes or links failed.
    #[error("cannot list {what}: {detail}")]
    Observe {
        /// `routes` or `links`.
        what: &'static str,
        /// The netlink error.
        detail: String,
    },
    /// A route names an interface that does not exist.
    #[error("cannot program route {route}: interface {device} does not exist")]
    NoDevice {
        /// The route.
        route: String,
        /// The missing interface.
        device: String,
    },
    /// `ip route replace` failed.
    #[error("`ip route replace {route}` failed: {detail}")]
    Replace {
        /// The route.
        route: String,
        /// The netlink error.
        detail: String,
    },
    /// Another component's route holds the destination in that table;
    /// `ip route replace` would overwrite it, so it was left alone.
    #[error(
        "not programming route {route}: the kernel holds {foreign} of another component; \
         remove it or change the overlapping subnet"
    )]
    Foreign {
        /// The planned route.
        route: String,
        /// The route in the way.
        foreign: String,
    },
    /// `ip route del` failed.
    #[error("`ip route del {route}` failed: {detail}")]
    Delete {
        /// The route.
        route: String,
        /// The netlink error.
        detail: String,
    },
    /// Reading or writing an rp_filter sysctl failed.
    #[error("cannot {op} {path}: {source}")]
    Sysctl {
        /// `read` or `write`.
        op: &'static str,
        /// The file under /proc/sys.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An rp_filter sysctl held something other than 0, 1 or 2.
    #[error("{path} holds {value:?}, not 0, 1 or 2")]
    SysctlValue {
        /// The file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
}

/// Where a route sends packets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteTarget {
    /// `via GATEWAY [dev DEVICE]`; with no device the kernel picks the one
    /// that reaches the gateway, and any device then matches the plan.
    Via {
        /// Next hop.
        gateway: IpAddr,
        /// Outgoing interface, when pinned.
        device: Option<InterfaceName>,
    },
    /// `dev DEVICE` (scope link: the tunnel routes).
    Device(InterfaceName),
    /// `unreachable` (the packet is refused with ICMP unreachable).
    Unreachable,
}

/// One route as `ip route` knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination prefix (host bits cleared).
    pub destination: IpNet,
    /// Where it sends packets.
    pub target: RouteTarget,
    /// Preferred source address (`src`).
    pub source: Option<IpAddr>,
    /// Routing table id.
    pub table: u32,
    /// Protocol number (`proto`): whose route this is.
    pub protocol: u8,
    /// Metric (`metric`); 0 is the kernel's default for the family.
    pub metric: u32,
}

/// What identifies a route for `ip route replace`: one route per table,
/// destination and metric (Causeway sets no TOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// Routing table id.
    pub table: u32,
    /// Destination prefix.
    pub destination: IpNet,
    /// Metric (0: the family's default).
    pub metric: u32,
}

impl Route {
    fn new(destination: IpNet, target: RouteTarget, protocol: u8) -> Self {
        Self {
            destination: destination.trunc(),
            target,
            source: None,
            table: MAIN_TABLE,
            protocol,
            metric: 0,
        }
    }

    /// `DEST via GATEWAY proto P` in the main table.
    pub fn via(destination: IpNet, gateway: IpAddr, protocol: u8) -> Self {
        Self::new(
            destination,
            RouteTarget::Via {
                gateway,
                device: None,
            },
            protocol,
        )
    }

    /// `DEST dev DEVICE proto P` in the main table.
    pub fn device(destination: IpNet, device: InterfaceName, protocol: u8) -> Self {
        Self::new(destination, RouteTarget::Device(device), protocol)
    }

    /// `unreachable DEST proto P` in the main table.
    pub fn unreachable(destination: IpNet, protocol: u8) -> Self {
        Self::new(destination, RouteTarget::Unreachable, protocol)
    }

    /// The same route with a preferred source (`src ADDR`).
    pub fn with_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// The same route with a metric (`metric N`).
    pub fn with_metric(mut self, metric: u32) -> Self {
        self.metric = metric;
        self
    }

    /// The same route in another table (`table N`).
    pub fn in_table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// Its identity for `ip route replace`.
    pub fn key(&self) -> RouteKey {
        RouteKey {
            table: self.table,
            destination: self.destination,
            metric: self.metric,
        }
    }

    /// Whether a route the kernel holds is this planned route. A planned
    /// `via` route without a device matches whatever device the kernel chose.
    pub fn satisfied_by(&self, observed: &Route) -> bool {
        if self.key() != observed.key()
            || self.protocol != observed.protocol
            || self.source != observed.source
        {
            return false;
        }
        match (&self.target, &observed.target) {
            (
                RouteTarget::Via {
                    gateway: want,
                    device: None,
                },
                RouteTarget::Via { gateway: have, .. },
            ) => want == have,
            (want, have) => want == have,
        }
    }
}

impl fmt::Display for Route {
    /// The route in `ip route` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            RouteTarget::Unreachable => write!(f, "unreachable {}", self.destination)?,
            RouteTarget::Via { gateway, device } => {
                write!(f, "{} via {gateway}", self.destination)?;
                if let Some(dev) = device {
                    write!(f, " dev {dev}")?;
                }
            }
            RouteTarget::Device(dev) => write!(f, "{} dev {dev}", self.destination)?,
        }
        if let Some(src) = self.source {
            write!(f, " src {src}")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        write!(f, " proto {}", self.protocol)?;
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// The difference between the routes of one protocol that the kernel holds
/// and those planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// Routes to write with `ip route replace` (missing or different).
    pub replace: BTreeSet<Route>,
    /// Routes to remove with `ip route del` (no planned route has their key).
    pub delete: BTreeSet<Route>,
}

impl RouteDiff {
    /// True when applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.delete.is_empty()
    }
}

/// Compares the planned routes with the observed ones (both of one
/// protocol). A route whose key a planned route takes is overwritten by the
/// replace, so it is not deleted as well (deleting after the replace would
/// remove the new route).
pub fn diff(planned: &BTreeSet<Route>, observed: &[Route]) -> RouteDiff {
    let replace: BTreeSet<Route> = planned
        .iter()
        .filter(|want| !observed.iter().any(|have| want.satisfied_by(have)))
        .cloned()
        .collect();
    let planned_keys: BTreeSet<RouteKey> = planned.iter().map(Route::key).collect();
    let delete = observed
        .iter()
        .filter(|have| !planned_keys.contains(&have.key()))
        .cloned()
        .collect();
    RouteDiff { replace, delete }
}

/// A place that holds routes. Calls block (a netlink round trip on a thread
/// of their own); async callers use `spawn_blocking`.
pub trait RouteBackend: Send + Sync {
    /// Every route of protocol `protocol`, in every table.
    fn observe(&self, protocol: u8) -> Result<Vec<Route>, RouteError>;
    /// Applies a diff: deletes first, then replaces. Deleting a route that
    /// is gone and replacing one that exists are success. A replace whose
    /// key another protocol's route holds is skipped (that route is never
    /// overwritten), the rest is applied, and [`RouteError::Foreign`] names
    /// the first such route.
    fn apply(&self, diff: &RouteDiff) -> Result<(), RouteError>;
}

/// Brings the routes of one protocol to a plan with the least change.
#[derive(Debug)]
pub struct RouteApplier<B> {
    backend: B,
    protocol: u8,
}

impl<B: RouteBackend> RouteApplier<B> {
    /// An applier for the routes of `protocol` over a backend.
    pub fn new(backend: B, protocol: u8) -> Self {
        Self { backend, protocol }
    }

    /// The backend (tests read the fake through it).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The protocol whose routes this applier owns.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// The diff that would bring the kernel to `plan`, without applying it.
    /// Planned routes of another protocol are left out (with a warning):
    /// this applier would never see them again to remove them.
    pub fn plan_changes(&self, plan: &BTreeSet<Route>) -> Result<RouteDiff, RouteError> {
        let plan: BTreeSet<Route> = plan
            .iter()
            .filter(|r| {
                let ours = r.protocol == self.protocol;
                if !ours {
                    tracing::warn!(route = %r, protocol = self.protocol, "planned route of another protocol left out");
                }
                ours
            })
            .cloned()
            .collect();
        let observed = self.backend.observe(self.protocol)?;
        Ok(diff(&plan, &observed))
    }

    /// Observes, diffs and applies; does nothing when the kernel matches.
    /// Returns what was applied.
    #[tracing::instrument(skip_all, fields(protocol = self.protocol))]
    pub fn reconcile(&self, plan: &BTreeSet<Route>) -> Result<RouteDiff, RouteError> {
        let diff = self.plan_changes(plan)?;
        if diff.is_empty() {
            tracing::debug!("routes already up to date");
            return Ok(diff);
        }
        for r in &diff.delete {
            tracing::info!(route = %r, "removing route");
        }
        for r in &diff.replace {
            tracing::info!(route = %r, "programming route");
        }
        self.backend.apply(&diff)?;
        Ok(diff)
    }

    /// Removes every route of this protocol (a gateway that stops being
    /// active, a route agent that is told to clean up).
    pub fn remove_all(&self) -> Result<RouteDiff, RouteError> {
        self.reconcile(&BTreeSet::new())
    }
}

/// The gateway's routes: every remote subnet through the tunnel device with
/// the tunnel address as source (Settled decision 8), and an unreachable
/// route for the cluster's own global CIDR (Settled decision 16), all with
/// [`GATEWAY_PROTOCOL`].
pub fn gateway_plan(
    tunnel: &InterfaceName,
    tunnel_address: Option<IpAddr>,
    remote_subnets: impl IntoIterator<Item = IpNet>,
    own_global_cidr: Option<IpNet>,
) -> BTreeSet<Route> {
    let mut plan = BTreeSet::new();
    for subnet in remote_subnets {
        let mut route =
            Route::device(subnet, tunnel.clone(), GATEWAY_PROTOCOL).with_metric(GATEWAY_METRIC);
        // A source of the other family would make the kernel refuse the route.
        if let Some(src) = tunnel_address.filter(|a| a.is_ipv4() == subnet.addr().is_ipv4()) {
            route = route.with_source(src);
        }
        plan.insert(route);
    }
    if let Some(global) = own_global_cidr {
        plan.insert(Route::unreachable(global, GATEWAY_PROTOCOL).with_metric(GATEWAY_METRIC));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn dev(s: &str) -> InterfaceName {
        InterfaceName::new(s).unwrap()
    }

    #[test]
    fn gateway_plan_routes_remotes_through_the_tunnel() {
        let plan = gateway_plan(
            &dev("cw0"),
            Some(ip("242.0.0.1")),
            [net("242.1.0.0/16"), net("242.2.0.0/16"), net("fd00::/64")],
            Some(net("242.0.0.0/16")),
        );
        let shown: Vec<String> = plan.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "unreachable 242.0.0.0/16 proto 202 metric 100",
                "242.1.0.0/16 dev cw0 src 242.0.0.1 proto 202 metric 100",
                "242.2.0.0/16 dev cw0 src 242.0.0.1 proto 202 metric 100",
                "fd00::/64 dev cw0 proto 202 metric 100",
            ]
        );
    }

    #[test]
    fn gateway_plan_without_globalnet_has_no_unreachable_route() {
        let plan = gateway_plan(&dev("cw0"), None, [net("10.245.0.0/16")], None);
        assert_eq!(
            plan.into_iter().collect::<Vec<_>>(),
            [
                Route::device(net("10.245.0.0/16"), dev("cw0"), GATEWAY_PROTOCOL)
                    .with_metric(GATEWAY_METRIC)
            ]
        );
    }

    #[test]
    fn destinations_are_truncated() {
        let r = Route::via(net("10.1.2.3/16"), ip("192.168.0.2"), 203);
        assert_eq!(r.destination, net("10.1.0.0/16"));
    }

    #[test]
    fn diff_cases() {
        let p = ROUTE_AGENT_PROTOCOL;
        let a_via_1 = Route::via(net("10.1.0.0/16"), ip("192.168.0.1"), p);
        let a_via_2 = Route::via(net("10.1.0.0/16"), ip("192.168.0.2"), p);
        let b_via_1 = Route::via(net("10.2.0.0/16"), ip("192.168.0.1"), p);
        let pinned = |r: &Route, d: &str| {
            let mut r = r.clone();
            if let RouteTarget::Via { device, .. } = &mut r.target {
                *device = Some(dev(d));
            }
            r
        };
        struct Case {
            name: &'static str,
            planned: Vec<Route>,
            observed: Vec<Route>,
            replace: Vec<Route>,
            delete: Vec<Route>,
        }
        let cases = [
            Case {
                name: "empty kernel",
                planned: vec![a_via_1.clone(), b_via_1.clone()],
                observed: vec![],
                replace: vec![a_via_1.clone(), b_via_1.clone()],
                delete: vec![],
            },
            Case {
                name: "up to date, kernel filled in the device",
                planned: vec![a_via_1.clone()],
                observed: vec![pinned(&a_via_1, "eth0")],
                replace: vec![],
                delete: vec![],
            },
            Case {
                name: "gateway moved: replace, do not delete",
                planned: vec![a_via_2.clone()],
                observed: vec![pinned(&a_via_1, "eth0")],
                replace: vec![a_via_2.clone()],
                delete: vec![],
            },
            Case {
                name: "cluster left",
                planned: vec![a_via_1.clone()],
                observed: vec![a_via_1.clone(), b_via_1.clone()],
                replace: vec![],
                delete: vec![b_via_1.clone()],
            },
            Case {
                name: "source changed",
                planned: vec![a_via_1.clone().with_source(ip("10.0.0.1"))],
                observed: vec![a_via_1.clone()],
                replace: vec![a_via_1.clone().with_source(ip("10.0.0.1"))],
                delete: vec![],
            },
            Case {
                name: "same destination in another table is another route",
                planned: vec![a_via_1.clone().in_table(100)],
                observed: vec![a_via_1.clone()],
                replace: vec![a_via_1.clone().in_table(100)],
                delete: vec![a_via_1.clone()],
            },
            Case {
                name: "pinned device must match",
                planned: vec![pinned(&a_via_1, "eth1")],
                observed: vec![pinned(&a_via_1, "eth0")],
                replace: vec![pinned(&a_via_1, "eth1")],
                delete: vec![],
            },
            Case {
                name: "nothing planned removes everything",
                planned: vec![],
                observed: vec![a_via_1.clone(), b_via_1.clone()],
                replace: vec![],
                delete: vec![a_via_1.clone(), b_via_1.clone()],
            },
        ];
        for c in cases {
            let d = diff(&c.planned.into_iter().collect(), &c.observed);
            assert_eq!(
                d.replace,
                c.replace.into_iter().collect::<BTreeSet<_>>(),
                "{}",
                c.name
            );
            assert_eq!(
                d.delete,
                c.delete.into_iter().collect::<BTreeSet<_>>(),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn applier_on_the_fake_converges_and_leaves_foreign_routes() {
        let foreign = Route::via(net("10.9.0.0/16"), ip("192.168.0.9"), 4);
        let fake = fake::FakeRoutes::default();
        fake.insert(foreign.clone());
        let applier = RouteApplier::new(fake, ROUTE_AGENT_PROTOCOL);
        let plan: BTreeSet<Route> = [
            Route::via(net("10.1.0.0/16"), ip("192.168.0.1"), ROUTE_AGENT_PROTOCOL),
            Route::via(net("10.2.0.0/16"), ip("192.168.0.1"), ROUTE_AGENT_PROTOCOL),
        ]
        .into();
        let first = applier.reconcile(&plan).unwrap();
        assert_eq!(first.replace.len(), 2);
        assert!(applier.plan_changes(&plan).unwrap().is_empty());
        assert!(applier.reconcile(&plan).unwrap().is_empty());

        let smaller: BTreeSet<Route> = plan.iter().take(1).cloned().collect();
        let second = applier.reconcile(&smaller).unwrap();
        assert_eq!(second.delete.len(), 1);
        applier.remove_all().unwrap();
        assert_eq!(applier.backend().routes(), vec![foreign]);
    }

    #[test]
    fn a_foreign_route_in_the_way_is_not_overwritten() {
        let foreign = Route::via(net("10.1.0.0/16"), ip("192.168.0.9"), 4);
        let fake = fake::FakeRoutes::default();
        fake.insert(foreign.clone());
        let applier = RouteApplier::new(fake, ROUTE_AGENT_PROTOCOL);
        let ours = Route::via(net("10.1.0.0/16"), ip("192.168.0.1"), ROUTE_AGENT_PROTOCOL);
        let other = Route::via(net("10.2.0.0/16"), ip("192.168.0.1"), ROUTE_AGENT_PROTOCOL);
        let err = applier
            .reconcile(&[ours, other.clone()].into())
            .unwrap_err();
        assert!(matches!(err, RouteError::Foreign { .. }), "{err}");
        assert_eq!(applier.backend().routes(), vec![foreign, other]);
    }

    #[test]
    fn planned_routes_of_another_protocol_are_left_out() {
        let applier = RouteApplier::new(fake::FakeRoutes::default(), ROUTE_AGENT_PROTOCOL);
        let plan: BTreeSet<Route> = [Route::via(
            net("10.1.0.0/16"),
            ip("192.168.0.1"),
            GATEWAY_PROTOCOL,
        )]
        .into();
        assert!(applier.reconcile(&plan).unwrap().is_empty());
        assert!(applier.backend().routes().is_empty());
    }
}
