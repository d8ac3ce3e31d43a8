//! Route programming, rp_filter and the route agent's datapath against the
//! real kernel, inside a network namespace this test creates (removed on
//! drop, even on failure).
//!
//! Netlink work runs on a thread that enters the namespace and starts its own
//! current-thread runtime (what `NetlinkRoutes::in_netns` does); `nft` runs
//! through `ip netns exec`. Every address lives inside the namespaces. The
//! last test sends TCP through a router namespace with Flannel-style
//! masquerade to check that the route agent's identity SNAT keeps the
//! pod's address in both directions (settled decision 2).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use causeway_api::ClusterId;
use causeway_gateway::cable::InterfaceName;
use causeway_gateway::cable::netns::run_in;
use causeway_gateway::route_agent::{self, ActiveGateway, Datapath, Input};
use causeway_gateway::routes::netlink::NetlinkRoutes;
use causeway_gateway::routes::rp_filter;
use causeway_gateway::routes::{
    GATEWAY_PROTOCOL, ROUTE_AGENT_PROTOCOL, Route, RouteApplier, RouteError, gateway_plan,
};
use causeway_globalnet::nft::NftCli;
use causeway_tests::{require_root, unique_name};
use ipnet::IpNet;

/// A network namespace with a node-network link `eth0` (192.168.10.5/24)
/// and a tunnel-like link `cw0` holding the tunnel address 242.0.0.1;
/// deleted on drop.
struct Netns(String);

impl Netns {
    /// A namespace with only `lo` up.
    fn bare() -> Self {
        let ns = Netns(unique_name("rt"));
        run(&["ip", "netns", "add", &ns.0]);
        ns.ip("link set lo up");
        ns
    }

    fn new() -> Self {
        let ns = Netns(unique_name("rt"));
        run(&["ip", "netns", "add", &ns.0]);
        for cmd in [
            "link set lo up",
            "link add eth0 type veth peer name eth0p",
            "link set eth0p up",
            "addr add 192.168.10.5/24 dev eth0",
            "link set eth0 up",
            "link add cw0 type veth peer name cw0p",
            "link set cw0p up",
            "addr add 242.0.0.1/32 dev cw0",
            "link set cw0 up",
        ] {
            ns.ip(cmd);
        }
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    /// `ip -n NS ARGS`; must succeed.
    fn ip(&self, args: &str) -> String {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend(args.split_whitespace());
        run(&full)
    }

    /// `ip route show table all` lines of protocol `proto`, sorted.
    fn routes(&self, proto: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .ip(&format!("route show table all proto {proto}"))
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect();
        lines.sort();
        lines
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn agent_plan(gateway: &str, clusters: &[(&str, &str)]) -> BTreeSet<Route> {
    clusters
        .iter()
        .map(|(_, subnet)| Route::via(net(subnet), gateway.parse().unwrap(), ROUTE_AGENT_PROTOCOL))
        .collect()
}

#[test]
fn routes_apply_converge_and_leave_foreign_routes_alone() {
    require_root();
    let ns = Netns::new();
    // Another component's routes: one elsewhere, one on a destination we plan.
    ns.ip("route add 10.99.0.0/16 via 192.168.10.9 proto static");
    ns.ip("route add 10.250.0.0/16 via 192.168.10.9 proto boot");
    let foreign_before = [ns.routes("static"), ns.routes("boot")];

    let agent = RouteApplier::new(NetlinkRoutes::in_netns(ns.path()), ROUTE_AGENT_PROTOCOL);
    let plan = agent_plan(
        "192.168.10.1",
        &[("b", "10.245.0.0/16"), ("c", "10.246.0.0/16")],
    );

    let applied = agent.reconcile(&plan).unwrap();
    assert_eq!(applied.replace.len(), 2);
    assert_eq!(
        ns.routes("203"),
        [
            "10.245.0.0/16 via 192.168.10.1 dev eth0",
            "10.246.0.0/16 via 192.168.10.1 dev eth0"
        ]
    );

    // Re-applying changes nothing.
    assert!(agent.plan_changes(&plan).unwrap().is_empty());
    assert!(agent.reconcile(&plan).unwrap().is_empty());

    // Failover: the routes move to the new gateway node in place.
    let moved = agent_plan(
        "192.168.10.2",
        &[("b", "10.245.0.0/16"), ("c", "10.246.0.0/16")],
    );
    let d = agent.reconcile(&moved).unwrap();
    assert_eq!((d.replace.len(), d.delete.len()), (2, 0));
    assert_eq!(
        ns.routes("203"),
        [
            "10.245.0.0/16 via 192.168.10.2 dev eth0",
            "10.246.0.0/16 via 192.168.10.2 dev eth0"
        ]
    );

    // Cluster c leaves: its route goes, b's stays.
    let without_c = agent_plan("192.168.10.2", &[("b", "10.245.0.0/16")]);
    let d = agent.reconcile(&without_c).unwrap();
    assert_eq!((d.replace.len(), d.delete.len()), (0, 1));
    assert_eq!(
        ns.routes("203"),
        ["10.245.0.0/16 via 192.168.10.2 dev eth0"]
    );

    // A planned destination that another component's route holds: refused,
    // the foreign route untouched, the rest applied.
    let mut clash = without_c.clone();
    clash.insert(Route::via(
        net("10.250.0.0/16"),
        "192.168.10.2".parse().unwrap(),
        ROUTE_AGENT_PROTOCOL,
    ));
    clash.insert(Route::via(
        net("10.251.0.0/16"),
        "192.168.10.2".parse().unwrap(),
        ROUTE_AGENT_PROTOCOL,
    ));
    let err = agent.reconcile(&clash).unwrap_err();
    assert!(matches!(err, RouteError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("10.250.0.0/16"), "{err}");
    assert_eq!(
        ns.routes("203"),
        [
            "10.245.0.0/16 via 192.168.10.2 dev eth0",
            "10.251.0.0/16 via 192.168.10.2 dev eth0"
        ]
    );

    // The gateway's routes live beside them under their own protocol.
    let gw = RouteApplier::new(NetlinkRoutes::in_netns(ns.path()), GATEWAY_PROTOCOL);
    let cw0 = InterfaceName::new("cw0").unwrap();
    let gw_plan = gateway_plan(
        &cw0,
        Some("242.0.0.1".parse().unwrap()),
        [net("242.1.0.0/16"), net("242.2.0.0/16")],
        Some(net("242.0.0.0/16")),
    );
    assert_eq!(gw.reconcile(&gw_plan).unwrap().replace.len(), 3);
    assert_eq!(
        ns.routes("202"),
        [
            "242.1.0.0/16 dev cw0 scope link src 242.0.0.1 metric 100",
            "242.2.0.0/16 dev cw0 scope link src 242.0.0.1 metric 100",
            "unreachable 242.0.0.0/16 metric 100",
        ]
    );
    assert!(gw.reconcile(&gw_plan).unwrap().is_empty());
    // An unallocated global IP of our own is refused at the gateway
    // (settled decision 16); the tunnel address itself stays local.
    let out = Command::new("ip")
        .args(["-n", &ns.0, "route", "get", "242.0.0.77"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "242.0.0.77 must be unreachable");
    assert!(ns.ip("route get 242.0.0.1").starts_with("local 242.0.0.1"));

    // Cleaning up one protocol leaves the other's and the foreign routes.
    let d = agent.remove_all().unwrap();
    assert_eq!(d.delete.len(), 2);
    assert!(ns.routes("203").is_empty());
    assert_eq!(ns.routes("202").len(), 3);
    assert_eq!([ns.routes("static"), ns.routes("boot")], foreign_before);
    assert!(
        agent.remove_all().unwrap().is_empty(),
        "removing again is a no-op"
    );
}

#[test]
fn a_deleted_route_that_is_already_gone_is_success() {
    require_root();
    let ns = Netns::new();
    let agent = RouteApplier::new(NetlinkRoutes::in_netns(ns.path()), ROUTE_AGENT_PROTOCOL);
    let plan = agent_plan("192.168.10.1", &[("b", "10.245.0.0/16")]);
    agent.reconcile(&plan).unwrap();
    let stale = agent.plan_changes(&BTreeSet::new()).unwrap();
    assert_eq!(stale.delete.len(), 1);
    // Someone removes it first; applying the stale diff still succeeds.
    ns.ip("route del 10.245.0.0/16 proto 203");
    use causeway_gateway::routes::RouteBackend;
    agent.backend().apply(&stale).unwrap();
    // And replacing an existing route is success too.
    agent
        .backend()
        .apply(&agent.plan_changes(&plan).unwrap())
        .unwrap();
    agent
        .backend()
        .apply(&agent.plan_changes(&plan).unwrap())
        .unwrap();
    assert_eq!(
        ns.routes("203"),
        ["10.245.0.0/16 via 192.168.10.1 dev eth0"]
    );
}

#[test]
fn rp_filter_is_loosened_in_the_namespace() {
    require_root();
    let ns = Netns::new();
    let conf = PathBuf::from(rp_filter::CONF_DIR);
    let changed = run_in(Some(&ns.path()), || {
        for scope in ["all", "eth0", "cw0"] {
            std::fs::write(conf.join(scope).join("rp_filter"), "1\n").unwrap();
        }
        std::fs::write(conf.join("lo").join("rp_filter"), "0\n").unwrap();
        let first = rp_filter::loosen(&["eth0", "cw0"]).unwrap();
        let again = rp_filter::loosen(&["eth0", "cw0"]).unwrap();
        let values: Vec<u8> = ["all", "eth0", "cw0", "lo"]
            .iter()
            .map(|s| rp_filter::current(&conf, s).unwrap())
            .collect();
        Ok((first.len(), again.len(), values))
    })
    .unwrap();
    assert_eq!(changed, (3, 0, vec![2, 2, 2, 0]));
    // The machine's own namespace was not touched: its thread never moved.
    let own = Command::new("ip")
        .args(["netns", "identify"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&own.stdout).trim().is_empty());
}

#[test]
fn route_agent_datapath_in_a_namespace() {
    require_root();
    let ns = Netns::new();
    let dp = Datapath::new(NetlinkRoutes::in_netns(ns.path()), NftCli::in_netns(&ns.0));
    let id = |s: &str| ClusterId::new(s).unwrap();
    let mut input = Input {
        node_name: "node-2".into(),
        active: Some(ActiveGateway {
            node_name: "node-0".into(),
            private_ip: "192.168.10.1".parse().unwrap(),
        }),
        local_subnets: vec![
            net("10.244.0.0/16"),
            net("10.96.0.0/12"),
            net("192.168.10.0/24"),
        ],
        remotes: BTreeMap::from([
            (id("b"), vec![net("10.245.0.0/16")]),
            (id("c"), vec![net("10.246.0.0/16")]),
            // Overlaps the local pod CIDR: refused, neither routed nor exempted.
            (id("d"), vec![net("10.244.0.0/16")]),
        ]),
    };
    let first = dp.reconcile(&input).unwrap();
    assert!(first.nft_changed);
    assert_eq!(first.refused.len(), 1);
    assert_eq!(
        ns.routes("203"),
        [
            "10.245.0.0/16 via 192.168.10.1 dev eth0",
            "10.246.0.0/16 via 192.168.10.1 dev eth0"
        ]
    );
    let table = run(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "nft",
        "list",
        "table",
        "ip",
        route_agent::TABLE,
    ]);
    let table = table.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(table.contains("10.245.0.0/16"), "{table}");
    assert!(table.contains("10.246.0.0/16"), "{table}");
    assert!(!table.contains("10.244.0.0/16"), "{table}");
    assert!(table.contains("srcnat - 10"), "{table}");
    assert!(
        table.contains("ip daddr @remote snat to ip saddr"),
        "{table}"
    );
    assert!(
        table.contains("ip saddr @remote snat to ip saddr"),
        "{table}"
    );

    let again = dp.reconcile(&input).unwrap();
    assert!(!again.nft_changed && again.routes.is_empty());

    // This node takes the lease: its remote routes go, the table stays.
    input.node_name = "node-0".into();
    let took = dp.reconcile(&input).unwrap();
    assert_eq!(took.routes.delete.len(), 2);
    assert!(!took.nft_changed);
    assert!(ns.routes("203").is_empty());
}

/// A TCP server in namespace `ns` on `addr` that accepts one connection
/// within 5 s and returns the peer's address (what the server saw).
fn serve_once(ns: &Netns, addr: &str) -> std::thread::JoinHandle<Option<std::net::SocketAddr>> {
    let path = ns.path();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        run_in(Some(&path), || {
            let listener = std::net::TcpListener::bind(addr).expect("bind");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((_, peer)) => return Ok(Some(peer)),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            Ok(None)
        })
        .unwrap()
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("server ready");
    handle
}

/// Connects from namespace `ns` to `to` (bounded by 3 s).
fn connect_from(ns: &Netns, to: &str) {
    let to: std::net::SocketAddr = to.parse().unwrap();
    run_in(Some(&ns.path()), || {
        std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(3))
            .map(drop)
            .map_err(|e| causeway_gateway::Error::Command {
                command: format!("connect {to}"),
                detail: e.to_string(),
            })
    })
    .unwrap();
}

/// The address the server in `server` saw when `client` connected to `to`.
fn seen_by(server: &Netns, client: &Netns, to: &str) -> String {
    let handle = serve_once(server, to);
    connect_from(client, to);
    handle
        .join()
        .unwrap()
        .expect("a connection")
        .ip()
        .to_string()
}

/// pod (10.244.1.5) -- node (router, Flannel-style masquerade) -- remote
/// (192.168.10.1, serving 10.245.0.10). Without the route agent's table the
/// remote sees the node's address; with it, the pod's, both ways.
#[test]
fn identity_snat_keeps_cni_masquerade_off_inter_cluster_traffic() {
    require_root();
    let [pod, node, remote] = [Netns::bare(), Netns::bare(), Netns::bare()];
    run(&[
        "ip", "link", "add", "vpod", "netns", &pod.0, "type", "veth", "peer", "name", "vnode",
        "netns", &node.0,
    ]);
    run(&[
        "ip", "link", "add", "vwan", "netns", &node.0, "type", "veth", "peer", "name", "vgw",
        "netns", &remote.0,
    ]);
    for cmd in [
        "addr add 10.244.1.5/24 dev vpod",
        "link set vpod up",
        "route add default via 10.244.1.1",
    ] {
        pod.ip(cmd);
    }
    for cmd in [
        "addr add 10.244.1.1/24 dev vnode",
        "link set vnode up",
        "addr add 192.168.10.5/24 dev vwan",
        "link set vwan up",
    ] {
        node.ip(cmd);
    }
    for cmd in [
        "addr add 192.168.10.1/24 dev vgw",
        "link set vgw up",
        "addr add 10.245.0.10/32 dev lo",
        // Remote traffic comes from the remote subnet, as from a remote pod.
        "route add 10.244.0.0/16 via 192.168.10.5 src 10.245.0.10",
    ] {
        remote.ip(cmd);
    }
    run(&[
        "ip",
        "netns",
        "exec",
        &node.0,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    // Flannel's --ip-masq POSTROUTING rules, at srcnat.
    for rule in [
        "add table ip cni",
        "add chain ip cni post { type nat hook postrouting priority srcnat; }",
        "add rule ip cni post ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
        "add rule ip cni post ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
        "add rule ip cni post ip saddr != 10.244.0.0/16 ip daddr 192.168.10.0/24 return",
        "add rule ip cni post ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade",
    ] {
        let mut args = vec!["ip", "netns", "exec", &node.0, "nft"];
        args.extend(rule.split_whitespace());
        run(&args);
    }
    // The remote cluster's subnet, routed by hand until the agent runs.
    node.ip("route add 10.245.0.0/16 via 192.168.10.1");
    assert_eq!(
        seen_by(&remote, &pod, "10.245.0.10:8080"),
        "192.168.10.5",
        "masqueraded"
    );
    assert_eq!(
        seen_by(&pod, &remote, "10.244.1.5:8081"),
        "10.244.1.1",
        "masqueraded"
    );
    node.ip("route del 10.245.0.0/16");

    let dp = Datapath::new(
        NetlinkRoutes::in_netns(node.path()),
        NftCli::in_netns(&node.0),
    );
    let input = Input {
        node_name: "node-2".into(),
        active: Some(ActiveGateway {
            node_name: "node-0".into(),
            private_ip: "192.168.10.1".parse().unwrap(),
        }),
        local_subnets: vec![net("10.244.0.0/16"), net("192.168.10.0/24")],
        remotes: BTreeMap::from([(ClusterId::new("b").unwrap(), vec![net("10.245.0.0/16")])]),
    };
    dp.reconcile(&input).unwrap();
    assert_eq!(
        seen_by(&remote, &pod, "10.245.0.10:8082"),
        "10.244.1.5",
        "to remote: kept"
    );
    assert_eq!(
        seen_by(&pod, &remote, "10.244.1.5:8083"),
        "10.245.0.10",
        "from remote: kept"
    );
}

/// The health responder binds a tunnel address that does not exist yet
/// (IP_FREEBIND), and a prober bound to the local tunnel address reaches it
/// once it does, so probes leave from the tunnel address (settled decision 8).
#[test]
fn health_probes_go_between_tunnel_addresses() {
    use causeway_gateway::health::{HealthState, Prober, ProberConfig, Responder};
    use std::time::Duration;

    require_root();
    let ns = Netns::bare();
    let path = ns.path();
    let name = ns.0.clone();
    let states = run_in(Some(&path), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let far: std::net::SocketAddr = "10.77.0.1:51830".parse().unwrap();
            let responder = Responder::bind(far).expect("bind before the address exists");
            for a in ["10.77.0.1/32", "10.77.0.2/32"] {
                run(&["ip", "-n", &name, "addr", "add", a, "dev", "lo"]);
            }
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::spawn(responder.run(cancel.clone()));
            let config = ProberConfig {
                interval: Duration::from_millis(50),
                timeout: Duration::from_millis(250),
                ..ProberConfig::new("10.77.0.2".parse().unwrap())
            };
            let prober: Prober<String> = Prober::bind(config).unwrap();
            assert_eq!(prober.local_addr().unwrap().ip().to_string(), "10.77.0.2");
            let (_peers, peers_rx) =
                tokio::sync::watch::channel(BTreeMap::from([("b".to_string(), far)]));
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(prober.run(peers_rx, tx, cancel.clone()));
            let mut states = Vec::new();
            while states.len() < 2 {
                let change = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .expect("a status change within 5 s")
                    .expect("prober running");
                states.push(change.status.state);
            }
            cancel.cancel();
            Ok(states)
        })
    })
    .unwrap();
    assert_eq!(states, [HealthState::Connecting, HealthState::Connected]);
}
