use super::*;
use causeway_api::source::{Manifest, parse_manifests};
use causeway_globalnet::nft::{Applier, FakeNft, diff, render_pretty};

/// A cluster state from manifest text.
fn state(yaml: &str) -> ClusterState {
    let mut s = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    for m in parse_manifests(yaml).unwrap() {
        match m {
            Manifest::Service(o) => {
                let k = (
                    o.metadata.namespace.clone().unwrap_or("default".into()),
                    o.metadata.name.clone().unwrap(),
                );
                s.services.insert(k, *o);
            }
            Manifest::EndpointSlice(o) => {
                let k = (
                    o.metadata.namespace.clone().unwrap_or("default".into()),
                    o.metadata.name.clone().unwrap(),
                );
                s.endpoint_slices.insert(k, *o);
            }
            _ => {}
        }
    }
    s
}

const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
";

fn slice(name: &str, service: &str, port_name: &str, endpoints: &[(&str, Option<bool>)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, ready)| match ready {
            Some(r) => format!("  - addresses: [{ip}]\n    conditions: {{ready: {r}}}\n"),
            None => format!("  - addresses: [{ip}]\n"),
        })
        .collect();
    format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: {port_name}, protocol: TCP, port: 8080}}]
endpoints:
{eps}"
    )
}

fn sock(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

#[test]
fn service_ports_table() {
    struct Case {
        what: &'static str,
        yaml: String,
        want: Vec<(&'static str, Vec<&'static str>, Option<u32>)>,
    }
    let two = slice(
        "web-a",
        "web",
        "http",
        &[("10.244.1.5", Some(true)), ("10.244.2.5", None)],
    );
    let cases = vec![
        Case {
            what: "ready endpoints at the slice's port",
            yaml: format!("{WEB}{two}"),
            want: vec![("web", vec!["10.244.1.5:8080", "10.244.2.5:8080"], None)],
        },
        Case {
            what: "not-ready endpoints are left out",
            yaml: format!(
                "{WEB}{}",
                slice("web-a", "web", "http", &[("10.244.1.5", Some(false)), ("10.244.2.5", Some(true))])
            ),
            want: vec![("web", vec!["10.244.2.5:8080"], None)],
        },
        Case {
            what: "endpoints of every slice of the Service, none of other Services",
            yaml: format!(
                "{WEB}{}{}",
                slice("web-a", "web", "http", &[("10.244.1.5", None)]),
                slice("web-b", "other", "http", &[("10.244.9.9", None)])
                    + &slice("web-c", "web", "http", &[("242.0.0.7", None)])
            ),
            want: vec![("web", vec!["10.244.1.5:8080", "242.0.0.7:8080"], None)],
        },
        Case {
            what: "a slice port of another name does not count",
            yaml: format!("{WEB}{}", slice("web-a", "web", "grpc", &[("10.244.1.5", None)])),
            want: vec![("web", vec![], None)],
        },
        Case {
            what: "ClientIP affinity with its timeout, and the default",
            yaml: format!(
                "{}{}",
                WEB.replace(
                    "  selector: {app: web}\n",
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}\n"
                ),
                "---\napiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  clusterIP: 10.96.0.11\n  sessionAffinity: ClientIP\n  ports: [{port: 80}]\n"
            ),
            want: vec![("sticky", vec![], Some(10800)), ("web", vec![], Some(10))],
        },
        Case {
            what: "headless, unallocated and ExternalName Services have no ClusterIP to serve",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: pending}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com, clusterIP: 10.96.0.12}
"
            .into(),
            want: vec![],
        },
    ];
    for c in cases {
        let got: Vec<_> = service_ports(&state(&c.yaml))
            .into_iter()
            .map(|p| {
                (
                    p.name,
                    p.endpoints
                        .into_iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>(),
                    p.affinity_timeout,
                )
            })
            .collect();
        let want: Vec<_> = c
            .want
            .into_iter()
            .map(|(n, e, a)| {
                (
                    n.to_owned(),
                    e.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    a,
                )
            })
            .collect();
        assert_eq!(got, want, "{}", c.what);
    }
}

fn port(name: &str, ip: &str, affinity: Option<u32>, eps: &[&str]) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        cluster_ip: ip.parse().unwrap(),
        port: 80,
        affinity_timeout: affinity,
        endpoints: eps.iter().map(|e| sock(e)).collect(),
    }
}

fn cidr() -> Ipv4Net {
    "10.244.0.0/16".parse().unwrap()
}

#[test]
fn plan_table() {
    struct Case {
        what: &'static str,
        ports: Vec<ServicePort>,
        map: usize,
        rejected: usize,
        chains: Vec<&'static str>,
        sets: usize,
    }
    let fixed = [
        "filter-forward",
        "filter-output",
        "reject-chain",
        "service-endpoints-check",
        "mark-for-masquerade",
        "masquerading",
        "nat-output",
        "nat-postrouting",
        "nat-prerouting",
        "services",
    ];
    let cases = vec![
        Case {
            what: "nothing: only the fixed chains and an empty map",
            ports: vec![],
            map: 0,
            rejected: 0,
            chains: vec![],
            sets: 2,
        },
        Case {
            what: "a Service without endpoints is rejected, not balanced",
            ports: vec![port("web", "10.96.0.10", None, &[])],
            map: 0,
            rejected: 1,
            chains: vec![],
            sets: 2,
        },
        Case {
            what: "one chain per Service port and per endpoint",
            ports: vec![port(
                "web",
                "10.96.0.10",
                None,
                &["10.244.1.5:8080", "10.244.2.5:8080"],
            )],
            map: 1,
            rejected: 0,
            chains: vec![
                "endpoint-default/web/tcp/http__10.244.1.5/8080",
                "endpoint-default/web/tcp/http__10.244.2.5/8080",
                "service-default/web/tcp/http",
            ],
            sets: 2,
        },
        Case {
            what: "affinity adds a timeout set per endpoint",
            ports: vec![port(
                "web",
                "10.96.0.10",
                Some(10),
                &["10.244.1.5:8080", "10.244.2.5:8080"],
            )],
            map: 1,
            rejected: 0,
            chains: vec![
                "endpoint-default/web/tcp/http__10.244.1.5/8080",
                "endpoint-default/web/tcp/http__10.244.2.5/8080",
                "service-default/web/tcp/http",
            ],
            sets: 4,
        },
        Case {
            what: "a duplicate ClusterIP: the first Service keeps it",
            ports: vec![
                port("a", "10.96.0.10", None, &["10.244.1.5:8080"]),
                port("b", "10.96.0.10", None, &["10.244.2.5:8080"]),
            ],
            map: 1,
            rejected: 0,
            chains: vec![
                "endpoint-default/a/tcp/http__10.244.1.5/8080",
                "service-default/a/tcp/http",
            ],
            sets: 2,
        },
    ];
    for c in cases {
        let t = plan(&c.ports, cidr());
        assert_eq!(t.name, TABLE, "{}", c.what);
        assert_eq!(t.sets[SERVICE_IPS].elements.len(), c.map, "{}", c.what);
        assert_eq!(
            t.sets[NO_ENDPOINT_SERVICES].elements.len(),
            c.rejected,
            "{}",
            c.what
        );
        let mut want: Vec<&str> = fixed.iter().copied().chain(c.chains).collect();
        want.sort();
        let got: Vec<&str> = t.chains.keys().map(String::as_str).collect();
        assert_eq!(got, want, "{}", c.what);
        assert_eq!(t.sets.len(), c.sets, "{}", c.what);
        for s in t.sets.values().filter(|s| !s.is_map()) {
            assert!(
                s.kernel_managed(),
                "{}: affinity sets are the kernel's",
                c.what
            );
        }
    }
}

#[test]
fn hooks_sit_at_kube_proxys_priorities() {
    let t = plan(&[], cidr());
    let base = |c: &str| t.chains[c].base.unwrap();
    assert_eq!(base("nat-prerouting").hook, Hook::Prerouting);
    assert_eq!(base("nat-prerouting").priority, priority::DSTNAT);
    assert_eq!(base("nat-output").hook, Hook::Output);
    assert_eq!(base("nat-output").priority, priority::DSTNAT);
    assert_eq!(base("nat-postrouting").priority, priority::SRCNAT);
}

#[test]
fn removing_an_endpoint_changes_only_its_service() {
    let a = Applier::new(FakeNft::new());
    let two = [port(
        "web",
        "10.96.0.10",
        None,
        &["10.244.1.5:8080", "10.244.2.5:8080"],
    )];
    let one = [port("web", "10.96.0.10", None, &["10.244.2.5:8080"])];
    a.reconcile(&plan(&two, cidr())).unwrap();
    let out = a.reconcile_incremental(plan(&one, cidr())).unwrap();
    assert!(out.changed());
    assert!(!a.reconcile(&plan(&one, cidr())).unwrap().changed());
    let left = a.backend().dump(Family::Ip, TABLE).unwrap();
    assert!(
        !left
            .chains
            .contains_key("endpoint-default/web/tcp/http__10.244.1.5/8080")
    );
}

/// Regenerate with `UPDATE_GOLDEN=1 cargo test -p causeway-cli golden`.
#[test]
fn golden_rendered_table() {
    let ports = [
        port(
            "web",
            "10.96.0.10",
            None,
            &["10.244.1.5:8080", "10.244.2.5:8080"],
        ),
        port("sticky", "10.96.1.0", Some(10), &["10.244.1.6:8080"]),
        port("idle", "10.96.1.1", None, &[]),
    ];
    let text = render_pretty(&diff(&plan(&ports, cidr()), None));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/lab/proxy/plan/golden/lab_kube_proxy.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        text,
        want,
        "{} differs; review and regenerate",
        path.display()
    );
}

#[test]
fn departed_udp_endpoints_table() {
    let udp = |eps: &[&str]| {
        let mut p = port("dns", "10.96.0.53", None, eps);
        p.protocol = Protocol::Udp;
        p
    };
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    /// What, before, after, and the `(ClusterIP, endpoint)` flows to drop.
    type Case = (
        &'static str,
        Vec<ServicePort>,
        Vec<ServicePort>,
        Vec<(&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "nothing changed",
            vec![udp(&["10.244.1.5:53"])],
            vec![udp(&["10.244.1.5:53"])],
            vec![],
        ),
        (
            "an endpoint left",
            vec![udp(&["10.244.1.5:53", "10.244.2.5:53"])],
            vec![udp(&["10.244.2.5:53"])],
            vec![("10.96.0.53", "10.244.1.5")],
        ),
        (
            "the Service went",
            vec![udp(&["10.244.1.5:53"])],
            vec![],
            vec![("10.96.0.53", "10.244.1.5")],
        ),
        (
            "TCP endpoints are left to TCP",
            vec![port("web", "10.96.0.10", None, &["10.244.1.5:8080"])],
            vec![],
            vec![],
        ),
    ];
    for (what, before, after, want) in cases {
        let want: BTreeSet<_> = want.into_iter().map(|(c, e)| (ip(c), ip(e))).collect();
        assert_eq!(departed_udp(&before, &after), want, "{what}");
    }
}
