//! A synthetic record set for benchmarks and fuzzing, and the same answers
//! rendered as a zone file so another server (Knot) can serve them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RecordType};

use super::index::{
    Backing, ClusterExport, ClusterId, Endpoint, Index, Protocol, ServiceKey, ServicePort,
};
use super::resolve::{ResolverOptions, resolve};

/// The namespace of the generated services.
pub const NAMESPACE: &str = "bench";

/// `services` ClusterSetIP services `svc-<i>.bench`, each exported by the
/// local cluster `a` (answered with its 10.96 ClusterIP) and by the
/// connected cluster `b` (242.1 global IP), with a named `http` TCP port;
/// plus a headless `db.bench` with three endpoints in `b`, one without a
/// hostname. Local-first makes every answer deterministic.
pub fn index(services: usize) -> Index {
    let a = ClusterId::new("a").expect("valid id");
    let b = ClusterId::new("b").expect("valid id");
    let mut index = Index::with_local(a.clone());
    index.set_reachable(b.clone(), true);
    let ports = vec![ServicePort::new(Some("http"), Protocol::Tcp, 80)];
    for i in 0..services {
        let key = ServiceKey::new(NAMESPACE, &format!("svc-{i}")).expect("valid key");
        let [hi, lo] = u16::try_from(i % 65536).unwrap_or(0).to_be_bytes();
        for (cluster, first) in [(&a, [10, 96]), (&b, [242, 1])] {
            let ip = IpAddr::V4(Ipv4Addr::new(first[0], first[1], hi, lo));
            index.upsert_export(
                key.clone(),
                cluster.clone(),
                ClusterExport {
                    ports: ports.clone(),
                    backing: Backing::ClusterSetIp {
                        addresses: vec![ip],
                        ready: true,
                    },
                },
            );
        }
    }
    let endpoints = vec![
        Endpoint::new(Some("db-0"), "242.1.200.1".parse().expect("ip"), true),
        Endpoint::new(Some("db-1"), "242.1.200.2".parse().expect("ip"), true),
        Endpoint::new(None, "242.1.200.3".parse().expect("ip"), true),
    ];
    index.upsert_export(
        ServiceKey::new(NAMESPACE, "db").expect("valid key"),
        b,
        ClusterExport {
            ports: vec![ServicePort::new(Some("pg"), Protocol::Tcp, 5432)],
            backing: Backing::Headless { endpoints },
        },
    );
    index
}

/// The names `index` answers and the types to ask for each (for zone files
/// and query lists): the apex, the version, and every service's forms.
pub fn names(index: &Index, opts: &ResolverOptions) -> Vec<(String, RecordType)> {
    let zone = opts.zone.to_ascii();
    let mut out = vec![
        (zone.clone(), RecordType::SOA),
        (zone.clone(), RecordType::NS),
        (format!("ns.dns.{zone}"), RecordType::A),
        (format!("dns-version.{zone}"), RecordType::TXT),
    ];
    for (key, service) in index.services() {
        let base = format!("{}.{}.svc.{zone}", key.name(), key.namespace());
        out.push((base.clone(), RecordType::A));
        out.push((base.clone(), RecordType::AAAA));
        out.push((base.clone(), RecordType::SRV));
        let mut ports: Vec<&ServicePort> =
            service.clusters.values().flat_map(|e| &e.ports).collect();
        ports.sort();
        ports.dedup();
        for p in ports {
            if let Some(name) = &p.name {
                let srv = format!("_{name}._{}.{base}", p.protocol.label());
                out.push((srv, RecordType::SRV));
            }
        }
        for (cluster, export) in &service.clusters {
            if let Backing::Headless { endpoints } = &export.backing {
                for e in endpoints.iter().filter(|e| e.ready) {
                    out.push((format!("{}.{cluster}.{base}", e.label()), RecordType::A));
                }
            }
        }
    }
    out
}

/// What the resolver answers for [`names`], as a zone file. Records that
/// would change between queries (round robin) come out as first answered.
pub fn zone_file(index: &Index, opts: &ResolverOptions) -> String {
    let mut out = format!("$ORIGIN {}\n$TTL {}\n", opts.zone.to_ascii(), opts.ttl);
    let mut seen = std::collections::BTreeSet::new();
    for (name, ty) in names(index, opts) {
        let Ok(name) = Name::from_ascii(&name) else {
            continue;
        };
        let answer = resolve(&Query::query(name, ty), index, opts);
        for r in answer.answers.iter().chain(&answer.additionals) {
            let line = match &r.data {
                hickory_proto::rr::RData::TXT(txt) => {
                    let strings: Vec<String> = txt
                        .txt_data
                        .iter()
                        .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
                        .collect();
                    format!("{} {} IN TXT {}", r.name, r.ttl, strings.join(" "))
                }
                data => format!("{} {} IN {} {}", r.name, r.ttl, r.record_type(), data),
            };
            if seen.insert(line.clone()) {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_file_holds_every_answer_once() {
        let opts = ResolverOptions {
            nameserver_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..ResolverOptions::default()
        };
        let zone = zone_file(&index(2), &opts);
        let lines: Vec<&str> = zone.lines().collect();
        assert_eq!(lines[0], "$ORIGIN clusterset.local.");
        for want in [
            "clusterset.local. 5 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local.",
            "clusterset.local. 5 IN NS ns.dns.clusterset.local.",
            "ns.dns.clusterset.local. 5 IN A 127.0.0.1",
            "dns-version.clusterset.local. 5 IN TXT \"1.0.0\"",
            "svc-1.bench.svc.clusterset.local. 5 IN A 10.96.0.1",
            "_http._tcp.svc-0.bench.svc.clusterset.local. 5 IN SRV 0 100 80 svc-0.bench.svc.clusterset.local.",
            "242-1-200-3.b.db.bench.svc.clusterset.local. 5 IN A 242.1.200.3",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "{want}\n{zone}");
        }
        assert_eq!(zone.matches("IN A 10.96.0.1\n").count(), 1, "{zone}");
    }
}
