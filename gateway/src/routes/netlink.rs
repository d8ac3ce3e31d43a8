//! The kernel's routing tables through rtnetlink (`ip route show`,
//! `ip route replace`, `ip route del`).
//!
//! Every call runs on a fresh std thread that enters the configured network
//! namespace (when one is set), starts a current-thread tokio runtime there
//! and opens its own netlink socket, so no tokio worker ever changes
//! namespace (Settled decision 13) and the call can be made from anywhere,
//! a runtime included (through `spawn_blocking`).

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use nix::sched::{CloneFlags, setns};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Route, RouteBackend, RouteDiff, RouteError, RouteKey, RouteTarget};
use crate::cable::InterfaceName;

/// errno values that mean "no such route": deleting it is then done.
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;
/// The metric IPv6 gives a route added without one.
const IPV6_DEFAULT_METRIC: u32 = 1024;

/// Routes in the kernel, in this thread's namespace or in a given one.
#[derive(Debug, Clone, Default)]
pub struct NetlinkRoutes {
    netns: Option<PathBuf>,
}

impl NetlinkRoutes {
    /// Routes of the caller's network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes of the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn in_netns(path: impl Into<PathBuf>) -> Self {
        Self {
            netns: Some(path.into()),
        }
    }

    /// The namespace file, if one is set.
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    fn run<T, F, Fut>(&self, work: F) -> Result<T, RouteError>
    where
        T: Send,
        F: FnOnce(Handle) -> Fut + Send,
        Fut: Future<Output = Result<T, RouteError>>,
    {
        let netns = self.netns.as_deref();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    if let Some(path) = netns {
                        let fail = |detail: String| RouteError::EnterNetns {
                            path: path.to_owned(),
                            detail,
                        };
                        let file = File::open(path).map_err(|e| fail(e.to_string()))?;
                        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| fail(e.to_string()))?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(RouteError::Connect)?;
                    rt.block_on(async move {
                        let (connection, handle, _) =
                            rtnetlink::new_connection().map_err(RouteError::Connect)?;
                        let conn = tokio::spawn(connection);
                        let out = work(handle).await;
                        conn.abort();
                        out
                    })
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(RouteError::EnterNetns {
                        path: netns.map(Path::to_owned).unwrap_or_default(),
                        detail: "the netlink thread panicked".into(),
                    })
                })
        })
    }
}

impl RouteBackend for NetlinkRoutes {
    fn observe(&self, protocol: u8) -> Result<Vec<Route>, RouteError> {
        self.run(move |handle| async move {
            let links = links(&handle).await?;
            let routes = dump(&handle).await?;
            Ok(routes
                .iter()
                .filter(|m| u8::from(m.header.protocol) == protocol)
                .filter_map(|m| {
                    let parsed = parse(m, &links);
                    if parsed.is_none() {
                        tracing::debug!(
                            ?m,
                            "route of our protocol in a shape Causeway never writes; left alone"
                        );
                    }
                    parsed
                })
                .collect())
        })
    }

    fn apply(&self, diff: &RouteDiff) -> Result<(), RouteError> {
        self.run(move |handle| async move {
            let links = links(&handle).await?;
            let by_name: BTreeMap<&str, u32> =
                links.iter().map(|(i, n)| (n.as_str(), *i)).collect();
            let mut first_error = None;
            for route in &diff.delete {
                let result = match message(route, &by_name, true) {
                    Ok(msg) => match handle.route().del(msg).execute().await {
                        Ok(()) => Ok(()),
                        Err(rtnetlink::Error::NetlinkError(e))
                            if matches!(e.raw_code().abs(), ESRCH | ENOENT) =>
                        {
                            Ok(())
                        }
                        Err(e) => Err(RouteError::Delete {
                            route: route.to_string(),
                            detail: e.to_string(),
                        }),
                    },
                    // Its device is gone, and the kernel removed the route with it.
                    Err(RouteError::NoDevice { .. }) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            let occupied = if diff.replace.is_empty() {
                BTreeMap::new()
            } else {
                foreign_keys(&dump(&handle).await?, &links)
            };
            for route in &diff.replace {
                let result = match occupied.get(&route.key()) {
                    Some((protocol, shown)) if *protocol != route.protocol => {
                        Err(RouteError::Foreign {
                            route: route.to_string(),
                            foreign: shown.clone(),
                        })
                    }
                    _ => match message(route, &by_name, false) {
                        Ok(msg) => handle
                            .route()
                            .add(msg)
                            .replace()
                            .execute()
                            .await
                            .map_err(|e| RouteError::Replace {
                                route: route.to_string(),
                                detail: e.to_string(),
                            }),
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = result {
                    tracing::warn!(route = %route, error = %e, "route not programmed");
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }
}

/// Interface index to name (`ip link show`).
async fn links(handle: &Handle) -> Result<BTreeMap<u32, String>, RouteError> {
    let messages: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| RouteError::Observe {
            what: "links",
            detail: e.to_string(),
        })?;
    Ok(messages
        .into_iter()
        .filter_map(|m| {
            let name = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            Some((m.header.index, name))
        })
        .collect())
}

/// Every IPv4 and IPv6 route of every table (`ip route show table all`).
async fn dump(handle: &Handle) -> Result<Vec<RouteMessage>, RouteError> {
    let fail = |e: rtnetlink::Error| RouteError::Observe {
        what: "routes",
        detail: e.to_string(),
    };
    let mut all: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(fail)?;
    // A kernel without IPv6 refuses the dump; it then holds no IPv6 route.
    match handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect::<Vec<RouteMessage>>()
        .await
    {
        Ok(v6) => all.extend(v6),
        Err(e) => tracing::debug!(error = %e, "no IPv6 routes listed"),
    }
    Ok(all)
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn destination_of(m: &RouteMessage) -> Option<IpNet> {
    let addr = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => address(d),
            _ => None,
        })
        .or(match m.header.address_family {
            AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            _ => None,
        })?;
    IpNet::new(addr, m.header.destination_prefix_length).ok()
}

/// A kernel route as a [`Route`]; `None` for shapes Causeway never writes
/// (multipath, broadcast, local, ...).
fn parse(m: &RouteMessage, links: &BTreeMap<u32, String>) -> Option<Route> {
    let destination = destination_of(m)?;
    let mut gateway = None;
    let mut source = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Gateway(g) => gateway = address(g),
            RouteAttribute::PrefSource(s) => source = address(s),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    let device = oif
        .and_then(|i| links.get(&i))
        .and_then(|n| InterfaceName::new(n).ok());
    let target = match m.header.kind {
        RouteType::Unreachable => RouteTarget::Unreachable,
        RouteType::Unicast => match (gateway, device) {
            (Some(gateway), device) => RouteTarget::Via { gateway, device },
            (None, Some(device)) => RouteTarget::Device(device),
            (None, None) => return None,
        },
        _ => return None,
    };
    Some(Route {
        destination,
        target,
        source,
        table: table_of(m),
        protocol: u8::from(m.header.protocol),
        metric: metric_of(m, destination),
    })
}

/// A route's metric, with the family's default (0 for IPv4, 1024 for IPv6)
/// read as 0, as [`Route::metric`] counts it.
fn metric_of(m: &RouteMessage, destination: IpNet) -> u32 {
    let priority = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    if destination.addr().is_ipv6() && priority == IPV6_DEFAULT_METRIC {
        0
    } else {
        priority
    }
}

/// The routes a `replace` of ours would overwrite: same table, destination,
/// metric and TOS 0.
fn foreign_keys(
    routes: &[RouteMessage],
    links: &BTreeMap<u32, String>,
) -> BTreeMap<RouteKey, (u8, String)> {
    routes
        .iter()
        .filter(|m| m.header.tos == 0)
        .filter_map(|m| {
            let destination = destination_of(m)?;
            let metric = metric_of(m, destination);
            let protocol = u8::from(m.header.protocol);
            let shown = parse(m, links).map_or_else(
                || format!("{destination} ({:?}, proto {protocol})", m.header.kind),
                |r| r.to_string(),
            );
            Some((
                RouteKey {
                    table: table_of(m),
                    destination,
                    metric,
                },
                (protocol, shown),
            ))
        })
        .collect()
}

/// The netlink message for `ip route replace ROUTE` or `ip route del ROUTE`.
fn message(
    route: &Route,
    links: &BTreeMap<&str, u32>,
    for_delete: bool,
) -> Result<RouteMessage, RouteError> {
    let index = |dev: &InterfaceName| {
        links
            .get(dev.as_str())
            .copied()
            .ok_or_else(|| RouteError::NoDevice {
                route: route.to_string(),
                device: dev.to_string(),
            })
    };
    let mut m = RouteMessage::default();
    let dest = route.destination;
    m.header.address_family = if dest.addr().is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.destination_prefix_length = dest.prefix_len();
    m.header.protocol = RouteProtocol::from(route.protocol);
    if route.table < 256 {
        m.header.table = route.table as u8;
    } else {
        m.header.table = RouteHeader::RT_TABLE_UNSPEC;
        m.attributes.push(RouteAttribute::Table(route.table));
    }
    if dest.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dest.addr())));
    }
    let (kind, scope) = match &route.target {
        RouteTarget::Unreachable => (RouteType::Unreachable, RouteScope::Universe),
        RouteTarget::Via { gateway, device } => {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(*gateway)));
            if let Some(dev) = device {
                m.attributes.push(RouteAttribute::Oif(index(dev)?));
            }
            (RouteType::Unicast, RouteScope::Universe)
        }
        RouteTarget::Device(dev) => {
            m.attributes.push(RouteAttribute::Oif(index(dev)?));
            (RouteType::Unicast, RouteScope::Link)
        }
    };
    m.header.kind = kind;
    // As `ip route del` does: any scope, so the route is found whatever the
    // kernel recorded.
    m.header.scope = if for_delete {
        RouteScope::NoWhere
    } else {
        scope
    };
    if route.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(route.metric));
    }
    if let Some(src) = route.source {
        m.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_the_route() {
        let links: BTreeMap<u32, String> = [(7, "cw0".to_string())].into();
        let by_name: BTreeMap<&str, u32> = [("cw0", 7)].into();
        let cw0 = InterfaceName::new("cw0").unwrap();
        let routes = [
            Route::via(
                "10.1.0.0/16".parse().unwrap(),
                "192.168.0.1".parse().unwrap(),
                203,
            ),
            Route::device("242.1.0.0/16".parse().unwrap(), cw0.clone(), 202)
                .with_source("242.0.0.1".parse().unwrap()),
            Route::unreachable("242.0.0.0/16".parse().unwrap(), 202).in_table(1000),
            Route::device("fd00:1::/64".parse().unwrap(), cw0, 202),
        ];
        for r in routes {
            let m = message(&r, &by_name, false).unwrap();
            assert_eq!(parse(&m, &links), Some(r.clone()), "{r}");
        }
    }

    #[test]
    fn a_missing_device_is_named() {
        let r = Route::device(
            "10.1.0.0/16".parse().unwrap(),
            InterfaceName::new("cw9").unwrap(),
            202,
        );
        let err = message(&r, &BTreeMap::new(), false).unwrap_err();
        assert!(err.to_string().contains("cw9"), "{err}");
    }
}
