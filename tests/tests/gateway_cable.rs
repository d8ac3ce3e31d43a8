//! The embedded WireGuard cable between two network namespaces joined by a
//! veth: keys generated, peers planned and applied, a TCP exchange through the
//! tunnel with the handshake visible in the stats, re-planning changes nothing,
//! and a restarted gateway re-attaches to its persistent TUN.
//!
//! Needs root. Every address lives in the two namespaces this test creates,
//! which are removed on drop even when the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use causeway_gateway::cable::embedded::EmbeddedCable;
use causeway_gateway::cable::mtu::{Family, tunnel_mtu};
use causeway_gateway::cable::netns::{named, run_in};
use causeway_gateway::cable::plan::{
    LocalKind, LocalNetworks, RemoteEndpoint, diff_peers, plan_peers,
};
use causeway_gateway::cable::wgctrl::WgctrlCable;
use causeway_gateway::cable::{Cable, DeviceSpec, InterfaceName, KeyPair, PeerDiff, PublicKey};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth; deleted on drop.
struct Pair {
    ns: Vec<String>,
}

impl Pair {
    fn new(run: &str) -> Self {
        let pair = Self {
            ns: vec![format!("cwgA{run}"), format!("cwgB{run}")],
        };
        for ns in &pair.ns {
            ip(&["netns", "add", ns]);
        }
        let veth = [format!("va{run}"), format!("vb{run}")];
        ip(&[
            "link",
            "add",
            &veth[0],
            "netns",
            &pair.ns[0],
            "type",
            "veth",
            "peer",
            "name",
            &veth[1],
            "netns",
            &pair.ns[1],
        ]);
        for (i, ns) in pair.ns.iter().enumerate() {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("192.168.77.{}/24", i + 1),
                "dev",
                &veth[i],
            ]);
            ip(&["-n", ns, "link", "set", &veth[i], "up"]);
        }
        pair
    }

    /// A third namespace, b's standby gateway, on its own link to a
    /// (192.168.79.0/24: a is .1, the standby .2).
    fn add_standby(&mut self, run: &str) {
        let ns = format!("cwgC{run}");
        ip(&["netns", "add", &ns]);
        self.ns.push(ns.clone());
        let veth = [format!("vac{run}"), format!("vc{run}")];
        ip(&[
            "link",
            "add",
            &veth[0],
            "netns",
            &self.ns[0],
            "type",
            "veth",
            "peer",
            "name",
            &veth[1],
            "netns",
            &ns,
        ]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        for (i, ns) in [self.ns[0].clone(), ns].iter().enumerate() {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("192.168.79.{}/24", i + 1),
                "dev",
                &veth[i],
            ]);
            ip(&["-n", ns, "link", "set", &veth[i], "up"]);
        }
    }

    fn path(&self, i: usize) -> PathBuf {
        named(&self.ns[i])
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One gateway: its cable, key and subnets, and the endpoints last written.
struct Gateway {
    cable: Box<dyn Cable>,
    keys: KeyPair,
    pod: ipnet::IpNet,
    tunnel_ip: &'static str,
    underlay: SocketAddr,
    written: BTreeMap<PublicKey, SocketAddr>,
}

const MTU: u32 = 1440;

impl Gateway {
    fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            private_key: self.keys.private().clone(),
            listen_port: 51820,
            mtu: tunnel_mtu(1500, Family::V4, None).unwrap(),
        }
    }

    fn as_remote(&self, cluster: &str) -> RemoteEndpoint {
        RemoteEndpoint {
            cluster: cluster.into(),
            public_key: self.keys.public().to_base64(),
            endpoint: self.underlay,
            subnets: vec![self.pod],
        }
    }

    /// Plan against the remote, diff against the device, apply; returns the diff.
    fn reconcile(&mut self, remote: &RemoteEndpoint) -> PeerDiff {
        let local = LocalNetworks {
            cluster: "self".into(),
            public_key: Some(self.keys.public()),
            ranges: BTreeMap::from([(LocalKind::Pod, vec![self.pod])]),
        };
        let observed = self.cable.observe().unwrap().expect("device exists").peers;
        let installed: BTreeSet<_> = observed.keys().copied().collect();
        let plan = plan_peers(&local, std::slice::from_ref(remote), &installed, Some(5));
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        let diff = diff_peers(&plan.peers, &observed, &self.written);
        self.cable.apply(&diff).unwrap();
        self.written = plan.endpoints();
        diff
    }
}

/// Sends a line from a's tunnel address to b's listener; returns what came back.
fn exchange(pair: &Pair, listener: &TcpListener, to: SocketAddr, payload: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        let attempt = run_in(Some(&pair.path(0)), || {
            Ok(TcpStream::connect_timeout(&to, Duration::from_millis(500)))
        })
        .unwrap();
        match attempt {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => {
                panic!("no TCP connection through the tunnel: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (mut server, seen) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut client = client;
    client.write_all(payload.as_bytes()).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    server.read_to_string(&mut got).unwrap();
    server
        .write_all(format!("{got} seen from {}", seen.ip()).as_bytes())
        .unwrap();
    drop(server);
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn embedded_cable_between_two_namespaces() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces: run it as root (scripts/test.sh)"
    );
    let run = format!("{}", std::process::id() % 100_000);
    let pair = Pair::new(&run);
    let name = InterfaceName::new("cw0").unwrap();

    let mut gw = [
        Gateway {
            cable: Box::new(EmbeddedCable::new(name.clone(), Some(pair.path(0)))),
            keys: KeyPair::generate(),
            pod: "10.10.1.0/24".parse().unwrap(),
            tunnel_ip: "10.10.1.1",
            underlay: "192.168.77.1:51820".parse().unwrap(),
            written: BTreeMap::new(),
        },
        Gateway {
            cable: Box::new(EmbeddedCable::new(name.clone(), Some(pair.path(1)))),
            keys: KeyPair::generate(),
            pod: "10.10.2.0/24".parse().unwrap(),
            tunnel_ip: "10.10.2.1",
            underlay: "192.168.77.2:51820".parse().unwrap(),
            written: BTreeMap::new(),
        },
    ];
    for (i, g) in gw.iter().enumerate() {
        g.cable.ensure(&g.spec()).unwrap();
        let ns = &pair.ns[i];
        // The tunnel address (Settled decision 8) and the route to the far side.
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", g.tunnel_ip),
            "dev",
            "cw0",
        ]);
        let other = &gw[1 - i];
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &other.pod.to_string(),
            "dev",
            "cw0",
            "src",
            g.tunnel_ip,
        ]);
    }
    let remotes = [gw[1].as_remote("b"), gw[0].as_remote("a")];
    for (i, g) in gw.iter_mut().enumerate() {
        let diff = g.reconcile(&remotes[i]);
        assert_eq!(diff.add.len(), 1, "first reconcile adds the peer");
    }

    // Device state as configured.
    let state = gw[0].cable.observe().unwrap().unwrap();
    assert_eq!(state.public_key, Some(gw[0].keys.public()));
    assert_eq!(state.listen_port, Some(51820));
    let peer = &state.peers[&gw[1].keys.public()];
    assert_eq!(peer.config.endpoint, Some(gw[1].underlay));
    assert_eq!(peer.config.allowed_ips, BTreeSet::from([gw[1].pod]));

    let listener = run_in(Some(&pair.path(1)), || {
        Ok(TcpListener::bind("10.10.2.1:7777").expect("bind in b"))
    })
    .unwrap();
    let to: SocketAddr = "10.10.2.1:7777".parse().unwrap();
    let reply = exchange(&pair, &listener, to, "hello from a");
    assert_eq!(reply, "hello from a seen from 10.10.1.1");

    // The handshake and the bytes show in both devices' stats.
    for (i, g) in gw.iter().enumerate() {
        let stats = g.cable.stats().unwrap();
        let s = stats[&gw[1 - i].keys.public()];
        assert!(
            s.last_handshake.is_some(),
            "gateway {i}: no handshake in {s:?}"
        );
        assert!(s.rx_bytes > 0 && s.tx_bytes > 0, "gateway {i}: {s:?}");
    }

    // Planning again against the devices changes nothing.
    let before: Vec<_> = gw
        .iter()
        .map(|g| {
            let s = g.cable.observe().unwrap().unwrap();
            s.peers
                .into_iter()
                .map(|(k, p)| (k, p.config))
                .collect::<Vec<_>>()
        })
        .collect();
    for (i, g) in gw.iter_mut().enumerate() {
        g.cable.ensure(&g.spec()).unwrap();
        let diff = g.reconcile(&remotes[i]);
        assert!(
            diff.is_empty(),
            "gateway {i}: second reconcile wants {diff:?}"
        );
    }
    for (i, g) in gw.iter().enumerate() {
        let s = g.cable.observe().unwrap().unwrap();
        let now: Vec<_> = s.peers.into_iter().map(|(k, p)| (k, p.config)).collect();
        assert_eq!(now, before[i], "gateway {i} changed");
    }

    // A restart: the process's boringtun goes, the persistent TUN stays with
    // its address and route; a new cable re-attaches and the peers come back.
    let old = std::mem::replace(
        &mut gw[0].cable,
        Box::new(EmbeddedCable::new(name.clone(), Some(pair.path(0)))),
    );
    drop(old);
    let link = Command::new("ip")
        .args(["-n", &pair.ns[0], "-j", "addr", "show", "dev", "cw0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("10.10.1.1"),
        "TUN or its address gone after restart: {link}"
    );
    assert!(link.contains(&format!("\"mtu\":{MTU}")), "{link}");
    gw[0].written.clear();
    gw[0].cable.ensure(&gw[0].spec()).unwrap();
    assert_eq!(
        gw[0].reconcile(&remotes[0]).add.len(),
        1,
        "peer re-added after restart"
    );
    let reply = exchange(&pair, &listener, to, "again");
    assert_eq!(reply, "again seen from 10.10.1.1");

    // A standby strips its peers; teardown removes the TUN.
    gw[0].cable.strip_peers().unwrap();
    assert!(gw[0].cable.observe().unwrap().unwrap().peers.is_empty());
    for (i, g) in gw.iter().enumerate() {
        g.cable.teardown().unwrap();
        assert_eq!(
            g.cable.observe().unwrap(),
            None,
            "gateway {i}: TUN left behind"
        );
    }
}

/// The embedded backend and an external wireguard-go (driven through
/// wireguard-control's UAPI backend) talk to each other.
#[test]
fn embedded_and_wireguard_go_interoperate() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces: run it as root (scripts/test.sh)"
    );
    let run = format!("{}g", std::process::id() % 100_000);
    let pair = Pair::new(&run);
    // wireguard-go's socket directory is shared by every namespace: a unique name.
    let go_name = InterfaceName::new(&format!("cwgo{run}")).unwrap();
    let go_cable =
        WgctrlCable::wireguard_go(go_name.clone(), Some(pair.path(1)), "wireguard-go".into());
    struct Teardown<'a>(&'a WgctrlCable);
    impl Drop for Teardown<'_> {
        fn drop(&mut self) {
            let _ = self.0.teardown();
        }
    }
    let mut gw = [
        Gateway {
            cable: Box::new(EmbeddedCable::new(
                InterfaceName::new("cw0").unwrap(),
                Some(pair.path(0)),
            )),
            keys: KeyPair::generate(),
            pod: "10.10.1.0/24".parse().unwrap(),
            tunnel_ip: "10.10.1.1",
            underlay: "192.168.77.1:51820".parse().unwrap(),
            written: BTreeMap::new(),
        },
        Gateway {
            cable: Box::new(go_cable),
            keys: KeyPair::generate(),
            pod: "10.10.2.0/24".parse().unwrap(),
            tunnel_ip: "10.10.2.1",
            underlay: "192.168.77.2:51820".parse().unwrap(),
            written: BTreeMap::new(),
        },
    ];
    let go_guard =
        WgctrlCable::wireguard_go(go_name.clone(), Some(pair.path(1)), "wireguard-go".into());
    let _teardown = Teardown(&go_guard);
    let devs = ["cw0".to_owned(), go_name.to_string()];
    for (i, g) in gw.iter().enumerate() {
        g.cable.ensure(&g.spec()).unwrap();
        let ns = &pair.ns[i];
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", g.tunnel_ip),
            "dev",
            &devs[i],
        ]);
        let other = &gw[1 - i];
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &other.pod.to_string(),
            "dev",
            &devs[i],
            "src",
            g.tunnel_ip,
        ]);
    }
    let remotes = [gw[1].as_remote("b"), gw[0].as_remote("a")];
    for (i, g) in gw.iter_mut().enumerate() {
        assert_eq!(g.reconcile(&remotes[i]).add.len(), 1);
    }
    let state = gw[1].cable.observe().unwrap().unwrap();
    assert_eq!(state.public_key, Some(gw[1].keys.public()));
    assert_eq!(state.listen_port, Some(51820));
    assert_eq!(
        state.peers[&gw[0].keys.public()].config.allowed_ips,
        BTreeSet::from([gw[0].pod])
    );

    let listener = run_in(Some(&pair.path(1)), || {
        Ok(TcpListener::bind("10.10.2.1:7777").expect("bind in b"))
    })
    .unwrap();
    let reply = exchange(
        &pair,
        &listener,
        "10.10.2.1:7777".parse().unwrap(),
        "hello go",
    );
    assert_eq!(reply, "hello go seen from 10.10.1.1");
    for (i, g) in gw.iter().enumerate() {
        let s = g.cable.stats().unwrap()[&gw[1 - i].keys.public()];
        assert!(
            s.last_handshake.is_some() && s.rx_bytes > 0,
            "gateway {i}: {s:?}"
        );
    }
    for (i, g) in gw.iter_mut().enumerate() {
        g.cable.ensure(&g.spec()).unwrap();
        assert!(g.reconcile(&remotes[i]).is_empty(), "gateway {i}");
    }
    for g in &gw {
        g.cable.teardown().unwrap();
        assert_eq!(g.cable.observe().unwrap(), None);
    }
}

/// The cluster key makes failover need no re-planning on the far side: b's
/// standby (another node, same key) takes over, its first packets move a's
/// endpoint for b (WireGuard roaming), and a's reconcile, still holding b's
/// stale record, leaves the roamed endpoint alone (Settled decision 4).
#[test]
fn roaming_carries_traffic_to_the_standby_and_reconcile_keeps_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces: run it as root (scripts/test.sh)"
    );
    let run = format!("{}r", std::process::id() % 100_000);
    let mut pair = Pair::new(&run);
    pair.add_standby(&run);
    let name = InterfaceName::new("cw0").unwrap();
    let b_keys = KeyPair::generate();
    let mut a = Gateway {
        cable: Box::new(EmbeddedCable::new(name.clone(), Some(pair.path(0)))),
        keys: KeyPair::generate(),
        pod: "10.10.1.0/24".parse().unwrap(),
        tunnel_ip: "10.10.1.1",
        underlay: "192.168.77.1:51820".parse().unwrap(),
        written: BTreeMap::new(),
    };
    let mut b = [1, 2].map(|i| Gateway {
        cable: Box::new(EmbeddedCable::new(name.clone(), Some(pair.path(i)))),
        keys: b_keys.clone(),
        pod: "10.10.2.0/24".parse().unwrap(),
        tunnel_ip: "10.10.2.1",
        underlay: if i == 1 {
            "192.168.77.2:51820"
        } else {
            "192.168.79.2:51820"
        }
        .parse()
        .unwrap(),
        written: BTreeMap::new(),
    });
    // a reaches b's standby over the second link.
    let a_for_standby = RemoteEndpoint {
        endpoint: "192.168.79.1:51820".parse().unwrap(),
        ..a.as_remote("a")
    };
    a.cable.ensure(&a.spec()).unwrap();
    ip(&[
        "-n",
        &pair.ns[0],
        "addr",
        "add",
        "10.10.1.1/32",
        "dev",
        "cw0",
    ]);
    ip(&[
        "-n",
        &pair.ns[0],
        "route",
        "add",
        "10.10.2.0/24",
        "dev",
        "cw0",
        "src",
        "10.10.1.1",
    ]);
    for (i, g) in b.iter().enumerate() {
        g.cable.ensure(&g.spec()).unwrap();
        let ns = &pair.ns[i + 1];
        ip(&["-n", ns, "addr", "add", "10.10.2.1/32", "dev", "cw0"]);
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "10.10.1.0/24",
            "dev",
            "cw0",
            "src",
            "10.10.2.1",
        ]);
    }
    // b's record names its active gateway, node 1.
    let b_record = b[0].as_remote("b");
    a.reconcile(&b_record);
    b[0].reconcile(&a.as_remote("a"));
    let to: SocketAddr = "10.10.2.1:7777".parse().unwrap();
    let bind = |i: usize| {
        run_in(Some(&pair.path(i)), || {
            Ok(TcpListener::bind(to).expect("bind the tunnel address"))
        })
        .unwrap()
    };
    let active = bind(1);
    assert_eq!(
        exchange(&pair, &active, to, "to b"),
        "to b seen from 10.10.1.1"
    );

    // Failover: node 1 loses the lease and strips its peers; the standby,
    // with the same key, configures its peer a and sends first.
    b[0].cable.strip_peers().unwrap();
    b[1].reconcile(&a_for_standby);
    let standby = bind(2);
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns[2],
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
        ])
        .args(["-I", "10.10.2.1", "10.10.1.1"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "standby cannot reach a through the tunnel: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let roamed = "192.168.79.2:51820".parse().unwrap();
    let endpoint = |a: &Gateway| {
        a.cable.observe().unwrap().unwrap().peers[&b_keys.public()]
            .config
            .endpoint
    };
    assert_eq!(endpoint(&a), Some(roamed), "a did not roam to the standby");
    assert_eq!(
        exchange(&pair, &standby, to, "to standby"),
        "to standby seen from 10.10.1.1"
    );

    // a's broker view is stale (it still names node 1): drift repair must not undo the roam.
    assert!(a.reconcile(&b_record).is_empty());
    assert_eq!(endpoint(&a), Some(roamed));
    // When b's record catches up, the endpoint it names is written.
    let moved = RemoteEndpoint {
        endpoint: roamed,
        ..b_record.clone()
    };
    assert!(
        a.reconcile(&moved).is_empty(),
        "the device is already there"
    );
    assert_eq!(a.written.get(&b_keys.public()), Some(&roamed));
    drop(standby);
    drop(active);
    a.cable.teardown().unwrap();
    for g in &b {
        g.cable.teardown().unwrap();
    }
}
