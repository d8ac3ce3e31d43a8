//! `diagnose kernel`: which WireGuard backend can run, IP forwarding,
//! reverse-path filtering on the interfaces inter-cluster traffic uses, and
//! nftables.

use serde::Serialize;

use super::host::Host;
use super::metrics::GatewayView;
use super::{Check, Finding};

/// An interface inter-cluster traffic crosses, and why it is on the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathInterface {
    pub name: String,
    /// e.g. `tunnel`, `route to 242.1.0.0/16`, `underlay to peer b`.
    pub role: String,
    /// `net.ipv4.conf.NAME.rp_filter`.
    pub rp_filter: Option<u8>,
}

/// What the kernel check looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelFacts {
    pub wireguard_module: bool,
    pub tun: bool,
    /// The backend the running gateway reports, if one runs here.
    pub running_backend: Option<String>,
    pub ip_forward: Option<String>,
    pub rp_filter_all: Option<u8>,
    pub interfaces: Vec<PathInterface>,
    /// `nft --version`, or why it failed.
    pub nft: Result<String, String>,
}

/// Route protocols Causeway's gateway and route agent install with.
const CAUSEWAY_PROTOCOLS: [&str; 2] = ["202", "203"];

/// Gathers the kernel facts of this node.
pub fn gather(host: &dyn Host, gateway: Option<&GatewayView>) -> KernelFacts {
    let rp = |scope: &str| {
        host.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"))
            .and_then(|v| v.parse().ok())
    };
    let links = host.links().unwrap_or_default();
    let routes = host.routes().unwrap_or_default();
    let mut path: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, role: String| {
        if name != "lo" && !path.iter().any(|(n, _)| n == name) {
            path.push((name.to_owned(), role));
        }
    };
    let tunnel = gateway.map_or("causeway0", |g| g.interface.as_str());
    if links.iter().any(|l| l.name == tunnel) {
        add(tunnel, "tunnel".into());
    }
    for r in routes.iter().filter(|r| r.kind == "unicast") {
        let Some(dev) = &r.dev else { continue };
        let causeway = r
            .protocol
            .as_deref()
            .is_some_and(|p| CAUSEWAY_PROTOCOLS.contains(&p));
        if causeway {
            add(dev, format!("route to remote {}", r.dst));
        } else if r.dst == "default" {
            add(dev, "default route".into());
        } else if let Some(gw) = r.gateway {
            add(dev, format!("route to {} via {gw}", r.dst));
        }
    }
    for (peer, view) in gateway.map(|g| &g.peers).into_iter().flatten() {
        if let Some(ep) = view.endpoint
            && let Some(dev) = host.route_dev(ep.ip())
        {
            add(&dev, format!("underlay to peer {peer}"));
        }
    }
    KernelFacts {
        wireguard_module: host.exists("/sys/module/wireguard"),
        tun: host.exists("/dev/net/tun"),
        running_backend: gateway.and_then(|g| g.backend.clone()),
        ip_forward: host.sysctl("net.ipv4.ip_forward"),
        rp_filter_all: rp("all"),
        interfaces: path
            .into_iter()
            .map(|(name, role)| PathInterface {
                rp_filter: rp(&name),
                name,
                role,
            })
            .collect(),
        nft: host.nft_version(),
    }
}

fn rp_name(v: u8) -> &'static str {
    match v {
        0 => "off",
        1 => "strict",
        _ => "loose",
    }
}

/// Turns kernel facts into findings.
pub fn findings(f: &KernelFacts) -> Vec<Finding> {
    let k = Check::Kernel;
    let mut out = Vec::new();
    let running = f
        .running_backend
        .as_deref()
        .map(|b| format!("; the running gateway uses {b}"))
        .unwrap_or_default();
    out.push(match (f.wireguard_module, f.tun) {
        (true, _) => Finding::ok(
            k,
            format!("WireGuard: the kernel module is loaded, so `--cable auto` runs kernel WireGuard{running}"),
            "the kernel backend is the fastest tunnel",
        ),
        (false, true) => Finding::ok(
            k,
            format!("WireGuard: no kernel module, /dev/net/tun present, so `--cable auto` runs embedded userspace WireGuard{running}"),
            "userspace WireGuard works everywhere TUN does, at a fraction of the kernel's throughput (docs/benchmarks.md)",
        ),
        (false, false) => Finding::fail(
            k,
            "WireGuard: neither the kernel module nor /dev/net/tun",
            "the gateway has no way to build a tunnel",
            "load the module (`modprobe wireguard`) or give the gateway /dev/net/tun (a hostPath device in Kubernetes)",
        ),
    });
    out.push(match f.ip_forward.as_deref() {
        Some("1") => Finding::ok(
            k,
            "ip_forward: on",
            "gateways and nodes forward inter-cluster packets",
        ),
        other => Finding::fail(
            k,
            format!("ip_forward: {}", other.unwrap_or("unreadable")),
            "without forwarding this node drops every packet it should route between pods, the tunnel and other nodes",
            "`sysctl -w net.ipv4.ip_forward=1` (and in /etc/sysctl.d to keep it)",
        ),
    });
    let all = f.rp_filter_all.unwrap_or(0);
    let mut fine = Vec::new();
    for i in &f.interfaces {
        let own = i.rp_filter.unwrap_or(0);
        let effective = own.max(all);
        if effective == 1 {
            let mut fix = format!("`sysctl -w net.ipv4.conf.{}.rp_filter=2`", i.name);
            if all == 1 {
                fix.push_str(" and `sysctl -w net.ipv4.conf.all.rp_filter=2`");
            }
            fix.push_str(" (loose); the route agent does this for interfaces given with --rp-filter-interface");
            out.push(Finding::fail(
                k,
                format!(
                    "rp_filter on {} ({}): strict (net.ipv4.conf.{}.rp_filter={own}, all={all})",
                    i.name, i.role, i.name
                ),
                format!(
                    "strict reverse-path filtering drops a packet arriving on {} whose source is routed back out of another interface: return traffic from remote clusters after a failover, through the tunnel, or via per-pod routes is dropped without a trace",
                    i.name
                ),
                fix,
            ));
        } else {
            fine.push(format!("{} {}", i.name, rp_name(effective)));
        }
    }
    if !fine.is_empty() {
        out.push(Finding::ok(
            k,
            format!("rp_filter on the path: {}", fine.join(", ")),
            "loose or no reverse-path filtering lets return traffic in on any interface with a route back",
        ));
    }
    out.push(match &f.nft {
        Ok(v) => Finding::ok(
            k,
            format!("nftables: {v}"),
            "Causeway's NAT and identity chains are nftables tables",
        ),
        Err(e) => Finding::fail(
            k,
            format!("nftables: {e}"),
            "Causeway programs its NAT precedence and Globalnet through `nft`",
            "install nftables (the `nft` binary) and run with CAP_NET_ADMIN",
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::host::fake::FakeHost;
    use super::super::host::{Link, Route};
    use super::*;

    fn facts() -> KernelFacts {
        KernelFacts {
            wireguard_module: false,
            tun: true,
            running_backend: Some("userspace".into()),
            ip_forward: Some("1".into()),
            rp_filter_all: Some(0),
            interfaces: vec![
                PathInterface {
                    name: "causeway0".into(),
                    role: "tunnel".into(),
                    rp_filter: Some(0),
                },
                PathInterface {
                    name: "eth0".into(),
                    role: "route to 10.244.1.0/24 via 192.168.50.11".into(),
                    rp_filter: Some(2),
                },
            ],
            nft: Ok("nftables v1.0.6".into()),
        }
    }

    #[test]
    fn table() {
        type Case = (
            &'static str,
            fn(&mut KernelFacts),
            Vec<Status>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "healthy",
                |_| {},
                vec![Status::Ok; 4],
                "causeway0 off, eth0 loose",
            ),
            (
                "strict on the tunnel",
                |f| f.interfaces[0].rp_filter = Some(1),
                vec![Status::Ok, Status::Ok, Status::Fail, Status::Ok, Status::Ok],
                "net.ipv4.conf.causeway0.rp_filter=2",
            ),
            (
                // The kernel takes the larger of `all` and the interface's
                // value: eth0's loose 2 wins over all=1, causeway0's 0 does not.
                "strict through all",
                |f| f.rp_filter_all = Some(1),
                vec![Status::Ok, Status::Ok, Status::Fail, Status::Ok, Status::Ok],
                "net.ipv4.conf.all.rp_filter=2",
            ),
            (
                "no forwarding",
                |f| f.ip_forward = Some("0".into()),
                vec![Status::Ok, Status::Fail, Status::Ok, Status::Ok],
                "net.ipv4.ip_forward=1",
            ),
            (
                "no tunnel at all",
                |f| f.tun = false,
                vec![Status::Fail, Status::Ok, Status::Ok, Status::Ok],
                "modprobe wireguard",
            ),
            (
                "no nft",
                |f| f.nft = Err("cannot run nft".into()),
                vec![Status::Ok, Status::Ok, Status::Ok, Status::Fail],
                "install nftables",
            ),
        ];
        for (name, change, statuses, needle) in cases {
            let mut f = facts();
            change(&mut f);
            let out = findings(&f);
            crate::diagnose::assert_findings(name, &out, &statuses, needle);
        }
    }

    #[test]
    fn path_interfaces_come_from_routes_tunnel_and_underlay() {
        let mut host = FakeHost {
            links: ["lo", "eth0", "wan0", "cni0", "causeway0"]
                .iter()
                .map(|n| Link {
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        host.routes = vec![
            Route {
                dst: "10.244.1.0/24".into(),
                gateway: Some("192.168.50.11".parse().unwrap()),
                dev: Some("eth0".into()),
                protocol: Some("static".into()),
                kind: "unicast".into(),
            },
            Route {
                dst: "10.244.0.0/24".into(),
                dev: Some("cni0".into()),
                protocol: Some("kernel".into()),
                kind: "unicast".into(),
                ..Default::default()
            },
        ];
        host.route_devs
            .insert("198.51.100.20".parse().unwrap(), "wan0".into());
        host.sysctls
            .insert("net.ipv4.conf.wan0.rp_filter".into(), "1".into());
        let mut gw = GatewayView {
            interface: "causeway0".into(),
            ..Default::default()
        };
        gw.peers.insert(
            "b".into(),
            super::super::metrics::PeerView {
                endpoint: Some("198.51.100.20:4500".parse().unwrap()),
                ..Default::default()
            },
        );
        let f = gather(&host, Some(&gw));
        let names: Vec<&str> = f.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["causeway0", "eth0", "wan0"]);
        assert_eq!(f.interfaces[2].rp_filter, Some(1));
        assert_eq!(f.interfaces[2].role, "underlay to peer b");
    }
}
