//! Table-driven tests of every record form and response code.

use super::*;
use crate::dns::index::Endpoint;

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn vip(addresses: &[&str], ready: bool, ports: Vec<ServicePort>) -> ClusterExport {
    ClusterExport {
        ports,
        backing: Backing::ClusterSetIp {
            addresses: addresses.iter().map(|a| ip(a)).collect(),
            ready,
        },
    }
}

fn headless(endpoints: Vec<Endpoint>, ports: Vec<ServicePort>) -> ClusterExport {
    ClusterExport {
        ports,
        backing: Backing::Headless { endpoints },
    }
}

fn web_ports() -> Vec<ServicePort> {
    vec![
        ServicePort::new(Some("http"), Protocol::Tcp, 80),
        ServicePort::new(Some("dns"), Protocol::Udp, 53),
        ServicePort::new(Some("dns-tcp"), Protocol::Tcp, 53),
        ServicePort::new(None, Protocol::Tcp, 8080),
    ]
}

/// Cluster a is local; b and d are connected; c's status is `error`.
pub(crate) fn fixture() -> Index {
    let mut index = Index::with_local(id("a"));
    index.set_reachable(id("b"), true);
    index.set_reachable(id("d"), true);
    index.set_reachable(id("c"), false);
    // ClusterSetIP from b and from the unreachable c.
    index.upsert_export(
        key("default", "web"),
        id("b"),
        vip(&["242.1.0.10"], true, web_ports()),
    );
    index.upsert_export(
        key("default", "web"),
        id("c"),
        vip(&["242.2.0.10"], true, web_ports()),
    );
    // Exported by the local cluster too: a answers with its own.
    let http = vec![ServicePort::new(Some("http"), Protocol::Tcp, 80)];
    index.upsert_export(
        key("default", "both"),
        id("a"),
        vip(&["10.96.0.20"], true, http.clone()),
    );
    index.upsert_export(
        key("default", "both"),
        id("b"),
        vip(&["242.1.0.20"], true, http.clone()),
    );
    // The local export has no ready endpoint: b's is answered.
    index.upsert_export(
        key("default", "idle"),
        id("a"),
        vip(&["10.96.0.21"], false, http.clone()),
    );
    index.upsert_export(
        key("default", "idle"),
        id("b"),
        vip(&["242.1.0.21"], true, http.clone()),
    );
    // Two remote exporters: round robin.
    index.upsert_export(
        key("default", "rr"),
        id("b"),
        vip(&["242.1.0.22"], true, http.clone()),
    );
    index.upsert_export(
        key("default", "rr"),
        id("d"),
        vip(&["242.3.0.22"], true, http.clone()),
    );
    // Only the unreachable cluster exports it.
    index.upsert_export(
        key("default", "gone"),
        id("c"),
        vip(&["242.2.0.23"], true, http.clone()),
    );
    // Headless over a and b: db-1 not ready, one endpoint without hostname.
    let pg = vec![ServicePort::new(Some("pg"), Protocol::Tcp, 5432)];
    index.upsert_export(
        key("default", "db"),
        id("a"),
        headless(
            vec![
                Endpoint::new(Some("db-0"), ip("10.244.1.5"), true),
                Endpoint::new(Some("db-1"), ip("10.244.1.6"), false),
            ],
            pg.clone(),
        ),
    );
    index.upsert_export(
        key("default", "db"),
        id("b"),
        headless(
            vec![
                Endpoint::new(None, ip("242.1.0.33"), true),
                Endpoint::new(Some("db-0"), ip("242.1.0.34"), true),
            ],
            pg.clone(),
        ),
    );
    index.upsert_export(
        key("default", "db"),
        id("c"),
        headless(
            vec![Endpoint::new(Some("db-9"), ip("242.2.0.35"), true)],
            pg.clone(),
        ),
    );
    // Headless with no ready endpoint.
    index.upsert_export(
        key("default", "down"),
        id("b"),
        headless(
            vec![Endpoint::new(Some("x"), ip("242.1.0.36"), false)],
            pg.clone(),
        ),
    );
    // The same address from two clusters is answered once.
    index.upsert_export(
        key("default", "dup"),
        id("a"),
        headless(vec![Endpoint::new(None, ip("10.244.1.9"), true)], vec![]),
    );
    index.upsert_export(
        key("default", "dup"),
        id("b"),
        headless(vec![Endpoint::new(None, ip("10.244.1.9"), true)], vec![]),
    );
    // Dual stack in another namespace.
    index.upsert_export(
        key("other", "v6"),
        id("b"),
        vip(&["242.1.0.40", "fd00::40"], true, http),
    );
    index
}

/// An answer as lines: rcode, AA, then each record as `name TYPE data`
/// per section.
fn render(answer: &Answer) -> Vec<String> {
    let mut lines = vec![format!(
        "{} aa={}",
        crate::dns::wire::rcode_name(answer.rcode),
        answer.authoritative
    )];
    for (section, records) in [
        ("an", &answer.answers),
        ("ns", &answer.authorities),
        ("ad", &answer.additionals),
    ] {
        for r in records {
            lines.push(format!(
                "{section} {} {} {} {}",
                r.name,
                r.ttl,
                r.record_type(),
                r.data
            ));
        }
    }
    lines
}

fn ask_with(name: &str, ty: RecordType, index: &Index, opts: &ResolverOptions) -> Vec<String> {
    let query = Query::query(Name::from_ascii(name).unwrap(), ty);
    render(&resolve(&query, index, opts))
}

fn ask(name: &str, ty: RecordType) -> Vec<String> {
    ask_with(name, ty, &fixture(), &ResolverOptions::default())
}

const SOA: &str = "ns clusterset.local. 5 SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 20 7200 1800 86400 5";

fn nx() -> Vec<String> {
    vec!["NXDOMAIN aa=true".to_owned(), SOA.to_owned()]
}

fn nodata() -> Vec<String> {
    vec!["NOERROR aa=true".to_owned(), SOA.to_owned()]
}

fn ok(lines: &[&str]) -> Vec<String> {
    std::iter::once("NOERROR aa=true")
        .chain(lines.iter().copied())
        .map(str::to_owned)
        .collect()
}

use RecordType::{A, AAAA, ANY, CNAME, MX, NS as NS_, SOA as SOA_, SRV as SRV_, TXT as TXT_};

#[test]
fn every_form_and_rcode() {
    let z = "svc.clusterset.local.";
    let cases: Vec<(String, RecordType, Vec<String>)> = vec![
        // Apex, version, nameserver.
        (
            "clusterset.local.".into(),
            SOA_,
            ok(&[&SOA.replacen("ns ", "an ", 1)]),
        ),
        (
            "clusterset.local.".into(),
            NS_,
            ok(&["an clusterset.local. 5 NS ns.dns.clusterset.local."]),
        ),
        ("clusterset.local.".into(), A, nodata()),
        (
            "dns-version.clusterset.local.".into(),
            TXT_,
            ok(&["an dns-version.clusterset.local. 5 TXT 1.0.0"]),
        ),
        ("dns-version.clusterset.local.".into(), A, nodata()),
        ("dns.clusterset.local.".into(), A, nodata()),
        ("ns.dns.clusterset.local.".into(), A, nodata()),
        ("nope.clusterset.local.".into(), A, nx()),
        // Empty non-terminals.
        (z.into(), A, nodata()),
        (format!("default.{z}"), A, nodata()),
        (format!("other.{z}"), SRV_, nodata()),
        (format!("nosuchns.{z}"), A, nx()),
        // ClusterSetIP: the remote cluster that is connected, not c.
        (
            format!("web.default.{z}"),
            A,
            ok(&["an web.default.svc.clusterset.local. 5 A 242.1.0.10"]),
        ),
        (format!("web.default.{z}"), AAAA, nodata()),
        (format!("web.default.{z}"), TXT_, nodata()),
        (format!("web.default.{z}"), MX, nodata()),
        (format!("web.default.{z}"), CNAME, nodata()),
        (format!("nosuch.default.{z}"), A, nx()),
        (format!("gone.default.{z}"), A, nx()),
        // Local first; b when the local export has no ready endpoint.
        (
            format!("both.default.{z}"),
            A,
            ok(&["an both.default.svc.clusterset.local. 5 A 10.96.0.20"]),
        ),
        (
            format!("idle.default.{z}"),
            A,
            ok(&["an idle.default.svc.clusterset.local. 5 A 242.1.0.21"]),
        ),
        // Dual stack.
        (
            format!("v6.other.{z}"),
            AAAA,
            ok(&["an v6.other.svc.clusterset.local. 5 AAAA fd00::40"]),
        ),
        (
            format!("v6.other.{z}"),
            A,
            ok(&["an v6.other.svc.clusterset.local. 5 A 242.1.0.40"]),
        ),
        // SRV: named ports; unnamed 8080 only on the bare name; TCP and
        // UDP on 53 merged into one record there.
        (
            format!("_http._tcp.web.default.{z}"),
            SRV_,
            ok(&[
                "an _http._tcp.web.default.svc.clusterset.local. 5 SRV 0 100 80 web.default.svc.clusterset.local.",
                "ad web.default.svc.clusterset.local. 5 A 242.1.0.10",
            ]),
        ),
        (
            format!("_dns._udp.web.default.{z}"),
            SRV_,
            ok(&[
                "an _dns._udp.web.default.svc.clusterset.local. 5 SRV 0 100 53 web.default.svc.clusterset.local.",
                "ad web.default.svc.clusterset.local. 5 A 242.1.0.10",
            ]),
        ),
        (
            format!("web.default.{z}"),
            SRV_,
            ok(&[
                "an web.default.svc.clusterset.local. 5 SRV 0 33 80 web.default.svc.clusterset.local.",
                "an web.default.svc.clusterset.local. 5 SRV 0 33 53 web.default.svc.clusterset.local.",
                "an web.default.svc.clusterset.local. 5 SRV 0 33 8080 web.default.svc.clusterset.local.",
                "ad web.default.svc.clusterset.local. 5 A 242.1.0.10",
            ]),
        ),
        (format!("_http._tcp.web.default.{z}"), A, nodata()),
        (format!("_http._udp.web.default.{z}"), SRV_, nx()),
        (format!("_nope._tcp.web.default.{z}"), SRV_, nx()),
        (format!("_tcp.web.default.{z}"), SRV_, nodata()),
        (format!("_sctp.web.default.{z}"), SRV_, nx()),
        (format!("_http.web.default.{z}"), SRV_, nx()),
        (format!("_http._tcp.gone.default.{z}"), SRV_, nx()),
        // <clusterid>.<svc>: NXDOMAIN for ClusterSetIP (nothing below).
        (format!("b.web.default.{z}"), A, nx()),
        // Headless: the union of ready endpoints, local first; db-1 (not
        // ready) and c (unreachable) left out.
        (
            format!("db.default.{z}"),
            A,
            ok(&[
                "an db.default.svc.clusterset.local. 5 A 10.244.1.5",
                "an db.default.svc.clusterset.local. 5 A 242.1.0.33",
                "an db.default.svc.clusterset.local. 5 A 242.1.0.34",
            ]),
        ),
        (format!("db.default.{z}"), AAAA, nodata()),
        (
            format!("dup.default.{z}"),
            A,
            ok(&["an dup.default.svc.clusterset.local. 5 A 10.244.1.9"]),
        ),
        (format!("down.default.{z}"), A, nx()),
        (format!("x.b.down.default.{z}"), A, nx()),
        // Hosts, by hostname or dashed address.
        (
            format!("db-0.a.db.default.{z}"),
            A,
            ok(&["an db-0.a.db.default.svc.clusterset.local. 5 A 10.244.1.5"]),
        ),
        (
            format!("db-0.b.db.default.{z}"),
            A,
            ok(&["an db-0.b.db.default.svc.clusterset.local. 5 A 242.1.0.34"]),
        ),
        (
            format!("242-1-0-33.b.db.default.{z}"),
            A,
            ok(&["an 242-1-0-33.b.db.default.svc.clusterset.local. 5 A 242.1.0.33"]),
        ),
        (format!("db-0.b.db.default.{z}"), TXT_, nodata()),
        (format!("db-1.a.db.default.{z}"), A, nx()),
        (format!("db-9.c.db.default.{z}"), A, nx()),
        (format!("db-0.z.db.default.{z}"), A, nx()),
        (format!("10-244-1-5.a.db.default.{z}"), A, nx()),
        // <clusterid>.<svc> with hosts below: empty non-terminal.
        (format!("a.db.default.{z}"), A, nodata()),
        (format!("b.db.default.{z}"), A, nodata()),
        (format!("c.db.default.{z}"), A, nx()),
        // Headless SRV: one per endpoint and named port.
        (
            format!("_pg._tcp.db.default.{z}"),
            SRV_,
            ok(&[
                "an _pg._tcp.db.default.svc.clusterset.local. 5 SRV 0 33 5432 db-0.a.db.default.svc.clusterset.local.",
                "an _pg._tcp.db.default.svc.clusterset.local. 5 SRV 0 33 5432 242-1-0-33.b.db.default.svc.clusterset.local.",
                "an _pg._tcp.db.default.svc.clusterset.local. 5 SRV 0 33 5432 db-0.b.db.default.svc.clusterset.local.",
                "ad db-0.a.db.default.svc.clusterset.local. 5 A 10.244.1.5",
                "ad 242-1-0-33.b.db.default.svc.clusterset.local. 5 A 242.1.0.33",
                "ad db-0.b.db.default.svc.clusterset.local. 5 A 242.1.0.34",
            ]),
        ),
        (
            format!("db.default.{z}"),
            SRV_,
            ok(&[
                "an db.default.svc.clusterset.local. 5 SRV 0 33 5432 db-0.a.db.default.svc.clusterset.local.",
                "an db.default.svc.clusterset.local. 5 SRV 0 33 5432 242-1-0-33.b.db.default.svc.clusterset.local.",
                "an db.default.svc.clusterset.local. 5 SRV 0 33 5432 db-0.b.db.default.svc.clusterset.local.",
                "ad db-0.a.db.default.svc.clusterset.local. 5 A 10.244.1.5",
                "ad 242-1-0-33.b.db.default.svc.clusterset.local. 5 A 242.1.0.33",
                "ad db-0.b.db.default.svc.clusterset.local. 5 A 242.1.0.34",
            ]),
        ),
        // Too many labels, unknown second level, invalid labels.
        (format!("a.b.c.db.default.{z}"), A, nx()),
        (format!("x.y.z.w.v.u.{z}"), A, nx()),
        ("web.default.pod.clusterset.local.".into(), A, nx()),
        (format!("we_b.default.{z}"), A, nx()),
        ("*.clusterset.local.".into(), SOA_, nx()),
        (format!("*.default.{z}"), A, nx()),
        (format!("*.{z}"), A, nx()),
        // Outside the zone, zone transfers.
        (
            "web.default.svc.cluster.local.".into(),
            A,
            vec!["REFUSED aa=false".into()],
        ),
        ("example.com.".into(), A, vec!["REFUSED aa=false".into()]),
        ("local.".into(), SOA_, vec!["REFUSED aa=false".into()]),
        (
            "clusterset.local.".into(),
            RecordType::AXFR,
            vec!["REFUSED aa=false".into()],
        ),
    ];
    let index = fixture();
    let opts = ResolverOptions::default();
    let mut failures = Vec::new();
    for (name, ty, want) in cases {
        let got = ask_with(&name, ty, &index, &opts);
        if got != want {
            failures.push(format!("{name} {ty}:\n  want {want:#?}\n  got  {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn owner_names_echo_the_question_case_and_match_any_case() {
    assert_eq!(
        ask("WEB.Default.SVC.ClusterSet.Local.", A),
        ok(&["an WEB.Default.SVC.ClusterSet.Local. 5 A 242.1.0.10"])
    );
    let got = ask("Nope.Default.svc.CLUSTERSET.local.", A);
    assert_eq!(got[0], "NXDOMAIN aa=true");
    assert!(
        got[1].starts_with("ns CLUSTERSET.local. 5 SOA ns.dns.CLUSTERSET.local."),
        "{got:?}"
    );
    assert_eq!(
        ask("_HTTP._TCP.Web.default.svc.clusterset.local.", SRV_)[1],
        "an _HTTP._TCP.Web.default.svc.clusterset.local. 5 SRV 0 100 80 Web.default.svc.clusterset.local."
    );
    assert_eq!(
        ask("DB-0.B.db.default.svc.clusterset.local.", A),
        ok(&["an DB-0.B.db.default.svc.clusterset.local. 5 A 242.1.0.34"])
    );
}

#[test]
fn round_robin_across_connected_remote_clusters() {
    let index = fixture();
    let opts = ResolverOptions::default();
    let answers: Vec<String> = (0..4)
        .map(|_| ask_with("rr.default.svc.clusterset.local.", A, &index, &opts)[1].clone())
        .collect();
    let b = "an rr.default.svc.clusterset.local. 5 A 242.1.0.22";
    let d = "an rr.default.svc.clusterset.local. 5 A 242.3.0.22";
    assert_eq!(answers, [b, d, b, d]);
    // The local export always wins, however often it is asked.
    for _ in 0..3 {
        assert_eq!(
            ask_with("both.default.svc.clusterset.local.", A, &index, &opts)[1],
            "an both.default.svc.clusterset.local. 5 A 10.96.0.20"
        );
    }
}

#[test]
fn a_cluster_in_error_leaves_and_comes_back() {
    let opts = ResolverOptions::default();
    let mut index = fixture();
    index.set_reachable(id("b"), false);
    let rr: Vec<String> = (0..3)
        .map(|_| ask_with("rr.default.svc.clusterset.local.", A, &index, &opts)[1].clone())
        .collect();
    assert!(rr.iter().all(|l| l.ends_with("242.3.0.22")), "{rr:?}");
    assert_eq!(
        ask_with("web.default.svc.clusterset.local.", A, &index, &opts)[0],
        "NXDOMAIN aa=true"
    );
    index.set_reachable(id("b"), true);
    assert_eq!(
        ask_with("web.default.svc.clusterset.local.", A, &index, &opts)[1],
        "an web.default.svc.clusterset.local. 5 A 242.1.0.10"
    );
    // Unexport: the name is gone.
    index.remove_export(&key("default", "web"), &id("b"));
    index.remove_export(&key("default", "web"), &id("c"));
    assert_eq!(
        ask_with("web.default.svc.clusterset.local.", A, &index, &opts)[0],
        "NXDOMAIN aa=true"
    );
}

#[test]
fn no_ready_endpoint_anywhere_still_answers_the_address() {
    let mut index = Index::with_local(id("a"));
    index.set_reachable(id("b"), true);
    index.upsert_export(
        key("default", "cold"),
        id("b"),
        vip(&["242.1.0.50"], false, vec![]),
    );
    assert_eq!(
        ask_with(
            "cold.default.svc.clusterset.local.",
            A,
            &index,
            &ResolverOptions::default()
        ),
        ok(&["an cold.default.svc.clusterset.local. 5 A 242.1.0.50"])
    );
}

#[test]
fn cluster_names_option_answers_one_clusters_instance() {
    let index = fixture();
    let opts = ResolverOptions {
        cluster_names: true,
        ..ResolverOptions::default()
    };
    let z = "svc.clusterset.local.";
    let cases = [
        (
            format!("b.web.default.{z}"),
            A,
            ok(&["an b.web.default.svc.clusterset.local. 5 A 242.1.0.10"]),
        ),
        (
            format!("b.both.default.{z}"),
            A,
            ok(&["an b.both.default.svc.clusterset.local. 5 A 242.1.0.20"]),
        ),
        (
            format!("a.both.default.{z}"),
            A,
            ok(&["an a.both.default.svc.clusterset.local. 5 A 10.96.0.20"]),
        ),
        (format!("c.web.default.{z}"), A, nx()),
        (format!("z.web.default.{z}"), A, nx()),
        (format!("b.web.default.{z}"), TXT_, nodata()),
        (
            format!("b.db.default.{z}"),
            A,
            ok(&[
                "an b.db.default.svc.clusterset.local. 5 A 242.1.0.33",
                "an b.db.default.svc.clusterset.local. 5 A 242.1.0.34",
            ]),
        ),
    ];
    for (name, ty, want) in cases {
        assert_eq!(ask_with(&name, ty, &index, &opts), want, "{name} {ty}");
    }
}

#[test]
fn ttl_zone_and_nameserver_are_configurable() {
    let mut opts = ResolverOptions::new("Mesh.Example").unwrap();
    opts.ttl = 30;
    opts.nameserver_addresses = vec![ip("10.96.0.53")];
    let index = fixture();
    assert_eq!(
        ask_with("web.default.svc.mesh.example.", A, &index, &opts),
        ok(&["an web.default.svc.mesh.example. 30 A 242.1.0.10"])
    );
    assert_eq!(
        ask_with("mesh.example.", NS_, &index, &opts),
        ok(&[
            "an mesh.example. 30 NS ns.dns.mesh.example.",
            "ad ns.dns.mesh.example. 30 A 10.96.0.53",
        ])
    );
    assert_eq!(
        ask_with("ns.dns.mesh.example.", A, &index, &opts),
        ok(&["an ns.dns.mesh.example. 30 A 10.96.0.53"])
    );
    assert_eq!(
        ask_with("web.default.svc.clusterset.local.", A, &index, &opts),
        vec!["REFUSED aa=false".to_owned()]
    );
    assert!(ResolverOptions::new(".").is_err());
}

#[test]
fn any_gathers_every_type_at_the_name() {
    assert_eq!(
        ask("dns-version.clusterset.local.", ANY),
        ok(&["an dns-version.clusterset.local. 5 TXT 1.0.0"])
    );
    let apex = ask("clusterset.local.", ANY);
    assert_eq!(apex.len(), 3, "{apex:?}");
}

#[test]
fn cluster_set_ip_mode_answers_the_vip_where_there_is_one() {
    let mut index = fixture();
    index.set_cluster_set_ips(&key("default", "rr"), vec![ip("10.96.200.1")]);
    let opts = ResolverOptions {
        answer_mode: AnswerMode::ClusterSetIp,
        ..ResolverOptions::default()
    };
    for _ in 0..2 {
        assert_eq!(
            ask_with("rr.default.svc.clusterset.local.", A, &index, &opts),
            ok(&["an rr.default.svc.clusterset.local. 5 A 10.96.200.1"])
        );
    }
    // No VIP yet: per cluster.
    assert_eq!(
        ask_with("web.default.svc.clusterset.local.", A, &index, &opts),
        ok(&["an web.default.svc.clusterset.local. 5 A 242.1.0.10"])
    );
}

#[test]
fn answer_modes_parse() {
    assert_eq!(
        "per-cluster".parse::<AnswerMode>().unwrap(),
        AnswerMode::PerCluster
    );
    assert_eq!(
        "clusterset-ip".parse::<AnswerMode>().unwrap(),
        AnswerMode::ClusterSetIp
    );
    assert!("vip".parse::<AnswerMode>().is_err());
}

#[test]
fn ipv6_headless_endpoints_have_dashed_names_and_aaaa() {
    let mut index = Index::with_local(id("a"));
    index.set_reachable(id("b"), true);
    index.upsert_export(
        key("default", "v6db"),
        id("b"),
        headless(
            vec![Endpoint::new(None, ip("fd00:10:244::5"), true)],
            vec![ServicePort::new(Some("pg"), Protocol::Tcp, 5432)],
        ),
    );
    let opts = ResolverOptions::default();
    let z = "svc.clusterset.local.";
    assert_eq!(
        ask_with(
            &format!("fd00-10-244--5.b.v6db.default.{z}"),
            AAAA,
            &index,
            &opts
        ),
        ok(&["an fd00-10-244--5.b.v6db.default.svc.clusterset.local. 5 AAAA fd00:10:244::5"])
    );
    assert_eq!(
        ask_with(&format!("v6db.default.{z}"), A, &index, &opts)[0],
        "NOERROR aa=true"
    );
    assert_eq!(
        ask_with(&format!("_pg._tcp.v6db.default.{z}"), SRV_, &index, &opts),
        ok(&[
            "an _pg._tcp.v6db.default.svc.clusterset.local. 5 SRV 0 100 5432 fd00-10-244--5.b.v6db.default.svc.clusterset.local.",
            "ad fd00-10-244--5.b.v6db.default.svc.clusterset.local. 5 AAAA fd00:10:244::5",
        ])
    );
}
