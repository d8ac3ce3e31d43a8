//! Globalnet's nftables applier against the real `nft`, inside network
//! namespaces this test creates (removed on drop, even on failure).
//!
//! `nft` and `conntrack` run through `ip netns exec`; sockets run on plain
//! std threads that `setns` into a namespace and then end, so no thread that
//! outlives its job ever changes namespace.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use causeway_globalnet::conntrack::Conntrack;
use causeway_globalnet::ipam::ExportKey;
use causeway_globalnet::nft::{Applier, Family, NftCli, Op};
use causeway_globalnet::ruleset::{Input, Protocol, ServiceIngress, ServicePort, plan};
use causeway_tests::{require_root, unique_name};
use serde_json::Value;

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = unique_name(&format!("gn{tag}"));
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn name(&self) -> &str {
        &self.0
    }

    /// Runs a command inside; it must succeed.
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.0];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn nft_json(&self, table: &str) -> Value {
        let text = self.exec(&["nft", "-j", "list", "table", "ip", table]);
        serde_json::from_str(&text).expect("nft JSON")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ep(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn service(
    ns: &str,
    name: &str,
    ip: &str,
    proto: Protocol,
    port: u16,
    eps: &[&str],
) -> ServiceIngress {
    ServiceIngress {
        key: ExportKey::new(ns, name),
        global_ip: ip.parse().unwrap(),
        ports: vec![ServicePort {
            protocol: proto,
            port,
            endpoints: eps.iter().map(|e| ep(e)).collect(),
        }],
    }
}

fn input(table: &str) -> Input {
    let mut i = Input::new(
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
            "192.168.60.0/24".parse().unwrap(),
        ],
        vec!["242.1.0.0/16".parse().unwrap()],
    );
    i.table = table.to_string();
    i.egress = vec!["242.0.0.2".parse().unwrap(), "242.0.0.3".parse().unwrap()];
    i.services = vec![
        service(
            "default",
            "web",
            "242.0.0.10",
            Protocol::Tcp,
            80,
            &["10.244.1.5:8080", "10.244.2.5:8080"],
        ),
        service(
            "default",
            "dns",
            "242.0.0.11",
            Protocol::Udp,
            53,
            &["10.244.1.5:5353"],
        ),
    ];
    i.tunnel_mtu = Some(1420);
    i
}

/// (chain, handle) of every rule in a listing.
fn rule_handles(listing: &Value) -> BTreeSet<(String, u64)> {
    listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| {
            (
                r["chain"].as_str().unwrap().to_string(),
                r["handle"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn reapply_changes_nothing() {
    require_root();
    let ns = Netns::new("re");
    let table = unique_name("gw");
    let applier = Applier::new(NftCli::in_netns(ns.name()));
    let p = plan(&input(&table));
    assert!(applier.reconcile(&p).unwrap().changed());
    let before = ns.nft_json(&table);
    let again = applier.reconcile(&p).unwrap();
    assert!(
        again.batch.is_empty(),
        "second apply did {:?}",
        again.batch.ops
    );
    assert_eq!(ns.nft_json(&table), before, "the table changed on re-apply");
}

#[test]
fn one_more_export_changes_only_map_elements() {
    require_root();
    let ns = Netns::new("add");
    let table = unique_name("gw");
    let applier = Applier::new(NftCli::in_netns(ns.name()));
    let mut i = input(&table);
    applier.reconcile(&plan(&i)).unwrap();
    let before = rule_handles(&ns.nft_json(&table));

    // A ClusterIP export: its dispatch element, its endpoint's address and port.
    i.services.push(service(
        "shop",
        "cart",
        "242.0.0.12",
        Protocol::Tcp,
        8080,
        &["10.244.3.8:8080"],
    ));
    let out = applier.reconcile(&plan(&i)).unwrap();
    let s = out.batch.summary();
    assert!(s.only_elements(), "{:?}", out.batch.ops);
    assert_eq!((s.elements_added, s.elements_deleted), (3, 0));
    assert_eq!(
        rule_handles(&ns.nft_json(&table)),
        before,
        "a rule was touched"
    );

    // A headless endpoint: one element.
    i.hosts
        .insert("242.0.0.20".parse().unwrap(), "10.244.3.9".parse().unwrap());
    let out = applier.reconcile(&plan(&i)).unwrap();
    assert!(out.batch.summary().only_elements(), "{:?}", out.batch.ops);
    assert_eq!(out.batch.summary().elements_added, 1);
    assert_eq!(rule_handles(&ns.nft_json(&table)), before);
    assert!(!applier.reconcile(&plan(&i)).unwrap().changed());

    // Every export gone: the shared pick and slot chains and the slot maps
    // go too, in one transaction the real nft accepts.
    i.services.clear();
    let out = applier.reconcile_incremental(plan(&i)).unwrap();
    let s = out.batch.summary();
    assert!(
        s.chains_deleted >= 3 && s.sets_deleted >= 2,
        "{:?}",
        out.batch.ops
    );
    let left: Vec<String> = rule_handles(&ns.nft_json(&table))
        .into_iter()
        .map(|(c, _)| c)
        .filter(|c| c.starts_with("gn-lb-") || c.starts_with("gn-slot-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!applier.reconcile(&plan(&i)).unwrap().changed());
}

#[test]
fn restart_observes_and_makes_the_minimal_change() {
    require_root();
    let ns = Netns::new("rs");
    let table = unique_name("gw");
    let mut i = input(&table);
    Applier::new(NftCli::in_netns(ns.name()))
        .reconcile(&plan(&i))
        .unwrap();
    let before = ns.nft_json(&table);

    // A new process with the same plan changes nothing.
    let fresh = Applier::new(NftCli::in_netns(ns.name()));
    assert!(!fresh.reconcile(&plan(&i)).unwrap().changed());
    assert_eq!(ns.nft_json(&table), before);

    // A new process whose plan lost one export and whose web service
    // gained a third endpoint (a count not served yet).
    i.services.retain(|s| s.key.name != "dns");
    i.services[0].ports[0]
        .endpoints
        .insert(ep("10.244.3.5:8080"));
    let fresh = Applier::new(NftCli::in_netns(ns.name()));
    let out = fresh.reconcile(&plan(&i)).unwrap();
    let s = out.batch.summary();
    // dns: dispatch, slot-0 address and port gone; web: dispatch replaced
    // (goto gn-lb-3), slot-2 address and port added; gn-lb-3 and gn-slot-2
    // (tcp, udp, sctp) and slot 2's two maps created. Nothing flushed.
    assert_eq!(
        (
            s.elements_deleted,
            s.elements_added,
            s.chains_added,
            s.rules_added,
            s.sets_added,
            s.chains_flushed,
            s.chains_deleted
        ),
        (4, 3, 2, 4, 2, 0, 0),
        "{:?}",
        out.batch.ops
    );
    assert!(matches!(out.batch.ops[0], Op::AddChain { .. }));
    let after = rule_handles(&ns.nft_json(&table));
    assert!(
        rule_handles(&before).is_subset(&after),
        "a serving rule was replaced"
    );
    assert!(!fresh.reconcile(&plan(&i)).unwrap().changed());
}

#[test]
fn drift_is_repaired_with_the_minimal_change() {
    require_root();
    let ns = Netns::new("dr");
    let table = unique_name("gw");
    let applier = Applier::new(NftCli::in_netns(ns.name()));
    let p = plan(&input(&table));
    applier.reconcile(&p).unwrap();
    // Someone deletes an element and adds a rule to one of our chains.
    ns.exec(&[
        "nft",
        "delete",
        "element",
        "ip",
        &table,
        "ingress_services",
        "{ 242.0.0.11 . udp . 53 }",
    ]);
    ns.exec(&["nft", "add", "rule", "ip", &table, "gn-ingress", "counter"]);
    let out = applier.reconcile(&p).unwrap();
    let s = out.batch.summary();
    assert_eq!(
        (s.elements_added, s.chains_flushed, s.rules_added),
        (1, 1, 2),
        "{:?}",
        out.batch.ops
    );
    assert!(!applier.reconcile(&p).unwrap().changed());
}

#[test]
fn remove_deletes_the_table() {
    require_root();
    let ns = Netns::new("rm");
    let table = unique_name("gw");
    let applier = Applier::new(NftCli::in_netns(ns.name()));
    applier.reconcile(&plan(&input(&table))).unwrap();
    assert!(applier.remove(Family::Ip, &table).unwrap());
    assert!(!applier.remove(Family::Ip, &table).unwrap());
}

// ---------------------------------------------------------------- datapath

/// Runs `f` on a new thread inside namespace `ns`; the thread ends with `f`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A TCP server in `ns` on `addr` that answers each of `n` connections with
/// the peer address it saw, then ends (or gives up after 10 s).
fn tcp_peer_echo(ns: &str, addr: &'static str, n: usize) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = in_netns(ns, move || {
        let l = TcpListener::bind(addr).expect("bind");
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut served = 0;
        while served < n && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    let _ = s.write_all(peer.ip().to_string().as_bytes());
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    h
}

/// From `ns`, connects to `addr` and returns what the server wrote.
fn tcp_ask(ns: &str, addr: &'static str) -> String {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    })
    .join()
    .unwrap()
}

/// client (pod 10.244.1.5) -- gateway -- remote (242.1.0.7 and 242.1.0.10).
struct Lab {
    client: Netns,
    gw: Netns,
    remote: Netns,
}

fn lab() -> Lab {
    let lab = Lab {
        client: Netns::new("c"),
        gw: Netns::new("g"),
        remote: Netns::new("r"),
    };
    let (c, g, r) = (lab.client.name(), lab.gw.name(), lab.remote.name());
    run(
        "ip",
        &[
            "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "pods", "netns", g,
        ],
    );
    run(
        "ip",
        &[
            "-n", r, "link", "add", "eth0", "type", "veth", "peer", "name", "wan", "netns", g,
        ],
    );
    for (ns, cmds) in [
        (
            &lab.client,
            vec![
                vec!["ip", "addr", "add", "10.244.1.5/24", "dev", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
                vec!["ip", "route", "add", "default", "via", "10.244.1.1"],
            ],
        ),
        (
            &lab.gw,
            vec![
                vec!["ip", "addr", "add", "10.244.1.1/24", "dev", "pods"],
                vec!["ip", "addr", "add", "192.168.50.1/24", "dev", "wan"],
                vec!["ip", "link", "set", "pods", "up"],
                vec!["ip", "link", "set", "wan", "up"],
                vec!["ip", "route", "add", "242.1.0.0/16", "via", "192.168.50.2"],
                vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ],
        ),
        (
            &lab.remote,
            vec![
                vec!["ip", "addr", "add", "192.168.50.2/24", "dev", "eth0"],
                vec!["ip", "addr", "add", "242.1.0.7/32", "dev", "lo"],
                vec!["ip", "addr", "add", "242.1.0.10/32", "dev", "lo"],
                vec!["ip", "link", "set", "eth0", "up"],
                vec![
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    "192.168.50.1",
                    "src",
                    "242.1.0.7",
                ],
            ],
        ),
    ] {
        for cmd in cmds {
            ns.exec(&cmd);
        }
    }
    // A Flannel-style masquerade at srcnat in another table: Globalnet's
    // chains must win over it in both directions.
    lab.gw.exec(&[
        "nft",
        "add table ip cni; \
         add chain ip cni post { type nat hook postrouting priority srcnat; } ; \
         add rule ip cni post ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade ; \
         add rule ip cni post ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade",
    ]);
    lab
}

#[test]
fn datapath_egress_and_ingress() {
    require_root();
    let lab = lab();
    let table = unique_name("gw");
    let mut i = input(&table);
    i.services = vec![
        service(
            "default",
            "web",
            "242.0.0.10",
            Protocol::Tcp,
            80,
            &["10.244.1.5:8080"],
        ),
        service(
            "default",
            "dns",
            "242.0.0.11",
            Protocol::Udp,
            53,
            &["10.244.1.5:5353"],
        ),
    ];
    Applier::new(NftCli::in_netns(lab.gw.name()))
        .reconcile(&plan(&i))
        .unwrap();

    // Egress: the remote server sees one of the egress IPs, the same each time.
    let server = tcp_peer_echo(lab.remote.name(), "242.1.0.10:80", 3);
    let seen: Vec<String> = (0..3)
        .map(|_| tcp_ask(lab.client.name(), "242.1.0.10:80"))
        .collect();
    server.join().unwrap();
    let pool: Vec<String> = i.egress.iter().map(Ipv4Addr::to_string).collect();
    assert!(
        pool.contains(&seen[0]),
        "remote saw {seen:?}, egress pool is {pool:?}"
    );
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "egress IP not stable: {seen:?}"
    );

    // Ingress: the remote dials the global IP; the pod sees the remote's
    // global source address, not the gateway's (identity beats masquerade).
    let pod = tcp_peer_echo(lab.client.name(), "10.244.1.5:8080", 1);
    let seen = tcp_ask(lab.remote.name(), "242.0.0.10:80");
    pod.join().unwrap();
    assert_eq!(seen, "242.1.0.7");

    // UDP to an endpoint; then the endpoint leaves and its flows are deleted.
    let (tx, rx) = mpsc::channel();
    let pod = in_netns(lab.client.name(), move || {
        let s = UdpSocket::bind("10.244.1.5:5353").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        let (n, peer) = s.recv_from(&mut buf).expect("udp datagram");
        s.send_to(&buf[..n], peer).unwrap();
        peer.ip().to_string()
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let reply = in_netns(lab.remote.name(), || {
        let s = UdpSocket::bind("242.1.0.7:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"ping", "242.0.0.11:53").unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).expect("udp reply");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .join()
    .unwrap();
    assert_eq!(reply, "ping");
    assert_eq!(pod.join().unwrap(), "242.1.0.7");

    let ct = Conntrack::in_netns(lab.gw.name());
    let to_pod = |entries: &[causeway_globalnet::conntrack::Entry]| {
        entries
            .iter()
            .filter(|e| {
                e.protocol == "udp" && e.reply_src == "10.244.1.5".parse::<Ipv4Addr>().unwrap()
            })
            .count()
    };
    assert_eq!(to_pod(&ct.list().unwrap()), 1);
    let deleted = ct
        .delete_udp_to_endpoint(
            "10.244.1.5".parse().unwrap(),
            Some("242.0.0.11".parse().unwrap()),
        )
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(to_pod(&ct.list().unwrap()), 0);
    // TCP flows are left alone, and deleting again finds nothing.
    assert_eq!(
        ct.delete_udp_to_endpoint("10.244.1.5".parse().unwrap(), None)
            .unwrap(),
        0
    );
}

/// Serves `n` connections in `ns` across several listeners, answering each
/// with the local address that took it; ends after `n` or 10 s.
fn tcp_local_echo(ns: &str, addrs: Vec<&'static str>, n: usize) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = in_netns(ns, move || {
        let ls: Vec<TcpListener> = addrs
            .iter()
            .map(|a| {
                let l = TcpListener::bind(a).expect("bind");
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut served = 0;
        while served < n && Instant::now() < deadline {
            let mut idle = true;
            for l in &ls {
                if let Ok((mut s, _)) = l.accept() {
                    idle = false;
                    s.set_nonblocking(false).unwrap();
                    let local = s.local_addr().unwrap().ip().to_string();
                    let _ = s.write_all(local.as_bytes());
                    served += 1;
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    h
}

#[test]
fn ingress_spreads_across_endpoints_and_follows_them() {
    require_root();
    let lab = lab();
    lab.client
        .exec(&["ip", "addr", "add", "10.244.1.6/24", "dev", "eth0"]);
    let table = unique_name("gw");
    let mut i = input(&table);
    i.services = vec![service(
        "default",
        "web",
        "242.0.0.10",
        Protocol::Tcp,
        80,
        &["10.244.1.5:8080", "10.244.1.6:8080"],
    )];
    let applier = Applier::new(NftCli::in_netns(lab.gw.name()));
    applier.reconcile(&plan(&i)).unwrap();

    // 24 connections over 2 endpoints: all on one has odds of 2^-23.
    let pods = tcp_local_echo(
        lab.client.name(),
        vec!["10.244.1.5:8080", "10.244.1.6:8080"],
        24,
    );
    let seen: Vec<String> = (0..24)
        .map(|_| tcp_ask(lab.remote.name(), "242.0.0.10:80"))
        .collect();
    pods.join().unwrap();
    let five = seen.iter().filter(|s| *s == "10.244.1.5").count();
    let six = seen.iter().filter(|s| *s == "10.244.1.6").count();
    assert_eq!(five + six, 24, "unexpected answers: {seen:?}");
    assert!(five > 0 && six > 0, "no spread: {seen:?}");

    // 10.244.1.5 leaves: new connections go to 10.244.1.6 only.
    i.services[0].ports[0]
        .endpoints
        .remove(&ep("10.244.1.5:8080"));
    applier.reconcile_incremental(plan(&i)).unwrap();
    let pods = tcp_local_echo(
        lab.client.name(),
        vec!["10.244.1.5:8080", "10.244.1.6:8080"],
        8,
    );
    let seen: Vec<String> = (0..8)
        .map(|_| tcp_ask(lab.remote.name(), "242.0.0.10:80"))
        .collect();
    pods.join().unwrap();
    assert!(seen.iter().all(|s| s == "10.244.1.6"), "{seen:?}");
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_endpoint() {
    require_root();
    let lab = lab();
    lab.client
        .exec(&["ip", "addr", "add", "10.244.1.6/24", "dev", "eth0"]);
    let table = unique_name("gw");
    let mut i = input(&table);
    i.services = vec![service(
        "default",
        "web",
        "242.0.0.10",
        Protocol::Tcp,
        80,
        &["10.244.1.5:8080", "10.244.1.6:8080"],
    )];
    i.affinity.insert(ExportKey::new("default", "web"), 600);
    let applier = Applier::new(NftCli::in_netns(lab.gw.name()));
    applier.reconcile(&plan(&i)).unwrap();

    // Without affinity 16 connections over 2 endpoints all land on one
    // with odds of 2^-15; with it they must.
    let pods = tcp_local_echo(
        lab.client.name(),
        vec!["10.244.1.5:8080", "10.244.1.6:8080"],
        16,
    );
    let seen: Vec<String> = (0..16)
        .map(|_| tcp_ask(lab.remote.name(), "242.0.0.10:80"))
        .collect();
    pods.join().unwrap();
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "affinity not honoured: {seen:?}"
    );

    // The kernel filled a pin set (and marked it dynamic): the applier
    // leaves it alone.
    let out = applier.reconcile(&plan(&i)).unwrap();
    assert!(!out.changed(), "{:?}", out.batch.ops);
}
