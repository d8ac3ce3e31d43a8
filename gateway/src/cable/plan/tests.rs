use super::*;
use crate::cable::PeerStats;

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn remote(cluster: &str, n: u8, endpoint: &str, subnets: &[&str]) -> RemoteEndpoint {
    RemoteEndpoint {
        cluster: cluster.into(),
        public_key: key(n).to_base64(),
        endpoint: endpoint.parse().unwrap(),
        subnets: subnets.iter().map(|s| net(s)).collect(),
    }
}

fn local() -> LocalNetworks {
    LocalNetworks {
        cluster: "a".into(),
        public_key: Some(key(1)),
        ranges: BTreeMap::from([
            (LocalKind::Pod, vec![net("10.244.0.0/16")]),
            (LocalKind::Service, vec![net("10.96.0.0/12")]),
            (LocalKind::Node, vec![net("172.18.0.0/24")]),
            (LocalKind::Global, vec![net("242.0.0.0/16")]),
        ]),
    }
}

/// (name, remotes, installed, accepted clusters, refused cluster -> substring of the reason)
type Case = (
    &'static str,
    Vec<RemoteEndpoint>,
    Vec<u8>,
    Vec<&'static str>,
    Vec<(&'static str, &'static str)>,
);

#[test]
fn plan_table() {
    let b = || {
        remote(
            "b",
            2,
            "172.18.1.10:51820",
            &["10.245.0.0/16", "10.112.0.0/12"],
        )
    };
    let c = || remote("c", 3, "172.18.2.10:51820", &["10.246.0.0/16"]);
    let cases: Vec<Case> = vec![
        ("nothing", vec![], vec![], vec![], vec![]),
        (
            "two good remotes",
            vec![b(), c()],
            vec![],
            vec!["b", "c"],
            vec![],
        ),
        (
            "pod CIDR equal to ours",
            vec![remote("b", 2, "172.18.1.10:51820", &["10.244.0.0/16"]), c()],
            vec![],
            vec!["c"],
            vec![("b", "overlaps the local pod CIDR 10.244.0.0/16")],
        ),
        (
            "inside our service CIDR",
            vec![remote("b", 2, "172.18.1.10:51820", &["10.100.0.0/16"])],
            vec![],
            vec![],
            vec![("b", "local service CIDR 10.96.0.0/12")],
        ),
        (
            "containing our node network",
            vec![remote("b", 2, "172.18.1.10:51820", &["172.16.0.0/12"])],
            vec![],
            vec![],
            vec![("b", "local node CIDR")],
        ),
        (
            "our global CIDR",
            vec![remote("b", 2, "172.18.1.10:51820", &["242.0.3.0/24"])],
            vec![],
            vec![],
            vec![("b", "local global CIDR 242.0.0.0/16")],
        ),
        (
            "overlap between remotes: lower id wins",
            vec![
                c(),
                remote("d", 4, "172.18.3.10:51820", &["10.246.128.0/17"]),
            ],
            vec![],
            vec!["c"],
            vec![("d", "overlaps 10.246.0.0/16 of cluster c")],
        ),
        (
            "overlap between remotes: installed wins over lower id",
            vec![c(), remote("b", 2, "172.18.3.10:51820", &["10.246.0.0/24"])],
            vec![3],
            vec!["c"],
            vec![("b", "of cluster c")],
        ),
        (
            "malformed key",
            vec![RemoteEndpoint {
                public_key: "abc".into(),
                ..b()
            }],
            vec![],
            vec![],
            vec![("b", "public key is malformed")],
        ),
        (
            "host bits",
            vec![remote("b", 2, "172.18.1.10:51820", &["10.245.0.1/16"])],
            vec![],
            vec![],
            vec![("b", "host bits are set")],
        ),
        (
            "default route",
            vec![remote("b", 2, "172.18.1.10:51820", &["0.0.0.0/0"])],
            vec![],
            vec![],
            vec![("b", "default route")],
        ),
        (
            "no subnets",
            vec![remote("b", 2, "172.18.1.10:51820", &[])],
            vec![],
            vec![],
            vec![("b", "no subnets")],
        ),
        (
            "unspecified endpoint",
            vec![remote("b", 2, "0.0.0.0:51820", &["10.245.0.0/16"])],
            vec![],
            vec![],
            vec![("b", "endpoint 0.0.0.0:51820")],
        ),
        (
            "port zero",
            vec![remote("b", 2, "172.18.1.10:0", &["10.245.0.0/16"])],
            vec![],
            vec![],
            vec![("b", "endpoint")],
        ),
        (
            "our own key",
            vec![remote("b", 1, "172.18.1.10:51820", &["10.245.0.0/16"])],
            vec![],
            vec![],
            vec![("b", "own WireGuard public key")],
        ),
        (
            "two clusters one key",
            vec![b(), remote("c", 2, "172.18.2.10:51820", &["10.246.0.0/16"])],
            vec![],
            vec!["b"],
            vec![("c", "same WireGuard public key as cluster b")],
        ),
        (
            "one cluster twice",
            vec![
                b(),
                remote("b", 5, "172.18.2.10:51820", &["10.247.0.0/16"]),
                c(),
            ],
            vec![],
            vec!["c"],
            vec![("b", "two Endpoint records")],
        ),
        (
            "ipv6 subnets are checked too",
            vec![
                remote("b", 2, "[fd00::1]:51820", &["fd10::/48"]),
                remote("c", 3, "[fd00::2]:51820", &["fd10:0:0:1::/64"]),
            ],
            vec![],
            vec!["b"],
            vec![("c", "overlaps fd10::/48 of cluster b")],
        ),
    ];
    for (name, remotes, installed, accepted, refused) in cases {
        let installed: BTreeSet<_> = installed.into_iter().map(key).collect();
        let plan = plan_peers(&local(), &remotes, &installed, Some(25));
        let mut got: Vec<&str> = plan.peers.values().map(|p| p.cluster.as_str()).collect();
        got.sort();
        assert_eq!(got, accepted, "{name}: accepted");
        assert_eq!(
            plan.refused.keys().map(String::as_str).collect::<Vec<_>>(),
            refused.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            "{name}: refused"
        );
        for (cluster, needle) in refused {
            let reason = plan.refused[cluster].to_string();
            assert!(
                reason.contains(needle),
                "{name}: {reason:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn plan_builds_peer_config() {
    let plan = plan_peers(
        &local(),
        &[remote(
            "b",
            2,
            "172.18.1.10:51820",
            &["10.245.0.0/16", "10.112.0.0/12"],
        )],
        &BTreeSet::new(),
        Some(25),
    );
    assert_eq!(
        plan.peers[&key(2)].config,
        PeerConfig {
            public_key: key(2),
            endpoint: Some("172.18.1.10:51820".parse().unwrap()),
            allowed_ips: [net("10.112.0.0/12"), net("10.245.0.0/16")].into(),
            keepalive: Some(25),
        }
    );
    assert_eq!(
        plan.endpoints(),
        BTreeMap::from([(key(2), "172.18.1.10:51820".parse().unwrap())])
    );
}

fn desired(
    n: u8,
    endpoint: &str,
    subnets: &[&str],
    keepalive: Option<u16>,
) -> (PublicKey, DesiredPeer) {
    (
        key(n),
        DesiredPeer {
            cluster: format!("c{n}"),
            config: PeerConfig {
                public_key: key(n),
                endpoint: Some(endpoint.parse().unwrap()),
                allowed_ips: subnets.iter().map(|s| net(s)).collect(),
                keepalive,
            },
        },
    )
}

fn observed(
    n: u8,
    endpoint: Option<&str>,
    subnets: &[&str],
    keepalive: Option<u16>,
) -> (PublicKey, ObservedPeer) {
    (
        key(n),
        ObservedPeer {
            config: PeerConfig {
                public_key: key(n),
                endpoint: endpoint.map(|e| e.parse().unwrap()),
                allowed_ips: subnets.iter().map(|s| net(s)).collect(),
                keepalive,
            },
            stats: PeerStats::default(),
        },
    )
}

struct DiffCase {
    name: &'static str,
    desired: Vec<(PublicKey, DesiredPeer)>,
    observed: Vec<(PublicKey, ObservedPeer)>,
    written: Vec<(u8, &'static str)>,
    add: Vec<u8>,
    update: Vec<(u8, Option<&'static str>)>,
    remove: Vec<u8>,
}

#[test]
fn diff_table() {
    let e1 = "172.18.1.10:51820";
    let e2 = "172.18.1.11:51820";
    let roamed = "172.18.1.99:40000";
    let s = &["10.245.0.0/16"][..];
    let sock = |e: &str| e.parse::<SocketAddr>().unwrap();
    let cases = vec![
        DiffCase {
            name: "empty",
            desired: vec![],
            observed: vec![],
            written: vec![],
            add: vec![],
            update: vec![],
            remove: vec![],
        },
        DiffCase {
            name: "new peer is added with its endpoint",
            desired: vec![desired(2, e1, s, Some(25))],
            observed: vec![],
            written: vec![],
            add: vec![2],
            update: vec![],
            remove: vec![],
        },
        DiffCase {
            name: "in sync",
            desired: vec![desired(2, e1, s, Some(25))],
            observed: vec![observed(2, Some(e1), s, Some(25))],
            written: vec![(2, e1)],
            add: vec![],
            update: vec![],
            remove: vec![],
        },
        DiffCase {
            name: "roamed endpoint is left alone",
            desired: vec![desired(2, e1, s, Some(25))],
            observed: vec![observed(2, Some(roamed), s, Some(25))],
            written: vec![(2, e1)],
            add: vec![],
            update: vec![],
            remove: vec![],
        },
        DiffCase {
            name: "roamed endpoint survives a restart (nothing written yet)",
            desired: vec![desired(2, e1, s, Some(25))],
            observed: vec![observed(2, Some(roamed), s, Some(25))],
            written: vec![],
            add: vec![],
            update: vec![],
            remove: vec![],
        },
        DiffCase {
            name: "record moved: endpoint written",
            desired: vec![desired(2, e2, s, Some(25))],
            observed: vec![observed(2, Some(roamed), s, Some(25))],
            written: vec![(2, e1)],
            add: vec![],
            update: vec![(2, Some(e2))],
            remove: vec![],
        },
        DiffCase {
            name: "record moved where roaming already went",
            desired: vec![desired(2, e2, s, Some(25))],
            observed: vec![observed(2, Some(e2), s, Some(25))],
            written: vec![(2, e1)],
            add: vec![],
            update: vec![],
            remove: vec![],
        },
        DiffCase {
            name: "peer without endpoint gets one",
            desired: vec![desired(2, e1, s, Some(25))],
            observed: vec![observed(2, None, s, Some(25))],
            written: vec![],
            add: vec![],
            update: vec![(2, Some(e1))],
            remove: vec![],
        },
        DiffCase {
            name: "allowed IPs drift repaired without touching the endpoint",
            desired: vec![desired(
                2,
                e1,
                &["10.245.0.0/16", "10.112.0.0/12"],
                Some(25),
            )],
            observed: vec![observed(2, Some(roamed), s, Some(25))],
            written: vec![(2, e1)],
            add: vec![],
            update: vec![(2, None)],
            remove: vec![],
        },
        DiffCase {
            name: "keepalive drift repaired",
            desired: vec![desired(2, e1, s, Some(25))],
            observed: vec![observed(2, Some(e1), s, None)],
            written: vec![(2, e1)],
            add: vec![],
            update: vec![(2, None)],
            remove: vec![],
        },
        DiffCase {
            name: "keepalive 0 equals off",
            desired: vec![desired(2, e1, s, None)],
            observed: vec![observed(2, Some(e1), s, Some(0))],
            written: vec![(2, e1)],
            add: vec![],
            update: vec![],
            remove: vec![],
        },
        DiffCase {
            name: "stranger removed, key change is remove plus add",
            desired: vec![desired(3, e1, s, Some(25))],
            observed: vec![
                observed(2, Some(e1), s, Some(25)),
                observed(9, None, &[], None),
            ],
            written: vec![(2, e1)],
            add: vec![3],
            update: vec![],
            remove: vec![2, 9],
        },
    ];
    for case in cases {
        let diff = diff_peers(
            &case.desired.into_iter().collect(),
            &case.observed.into_iter().collect(),
            &case
                .written
                .iter()
                .map(|(n, e)| (key(*n), sock(e)))
                .collect(),
        );
        assert_eq!(
            diff.add.keys().copied().collect::<Vec<_>>(),
            case.add.iter().map(|n| key(*n)).collect::<Vec<_>>(),
            "{}: add",
            case.name
        );
        assert_eq!(
            diff.update
                .iter()
                .map(|(k, u)| (*k, u.endpoint))
                .collect::<Vec<_>>(),
            case.update
                .iter()
                .map(|(n, e)| (key(*n), e.map(sock)))
                .collect::<Vec<_>>(),
            "{}: update",
            case.name
        );
        assert_eq!(
            diff.remove.iter().copied().collect::<Vec<_>>(),
            case.remove.iter().map(|n| key(*n)).collect::<Vec<_>>(),
            "{}: remove",
            case.name
        );
        for (k, added) in &diff.add {
            assert!(
                added.endpoint.is_some(),
                "{}: {k} added without endpoint",
                case.name
            );
        }
    }
}
