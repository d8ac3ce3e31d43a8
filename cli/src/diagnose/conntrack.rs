//! `diagnose conntrack`: conntrack entries against `nf_conntrack_max`, the
//! TCP established and time-wait timeouts, the ephemeral port range, and per
//! Globalnet egress IP the connections to its busiest destination against
//! the SNAT ports one egress IP has per destination. Near a limit, the
//! sysctls to set and why (docs/operations.md explains the sizing).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use causeway_globalnet::conntrack::{Entry, SNAT_PORTS_PER_DESTINATION};
use serde::Serialize;

use super::host::Host;
use super::metrics::GatewayView;
use super::{Check, Finding};

/// Table use at which a warning, then a failure, is raised.
const WARN_AT: f64 = 0.75;
const FAIL_AT: f64 = 0.9;
/// SNAT port use per destination at which a warning, then a failure, is
/// raised (the gateway's metric warns at 0.8 too).
const PORTS_WARN_AT: f64 = 0.5;
const PORTS_FAIL_AT: f64 = 0.8;
/// kube-proxy's value for the established timeout (one day).
const SENSIBLE_ESTABLISHED: u64 = 86_400;

/// How busy one egress IP is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressLoad {
    pub ip: Ipv4Addr,
    pub connections: usize,
    /// The busiest (destination IP, port, protocol) and its connections.
    pub busiest: Option<(String, usize)>,
}

/// What the conntrack check reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackFacts {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub tcp_established: Option<u64>,
    pub tcp_time_wait: Option<u64>,
    pub port_range: Option<(u32, u32)>,
    /// Egress IPs, when this node runs Globalnet's active gateway.
    pub egress: Vec<EgressLoad>,
    /// Why entries could not be listed, if so.
    pub entries_error: Option<String>,
}

/// Per-egress-IP load from conntrack entries: an entry counts for the egress
/// IP it was SNATed to (its reply destination) when its source was another.
pub fn egress_load(entries: &[Entry], egress: &[Ipv4Addr]) -> Vec<EgressLoad> {
    let mut per_dest: BTreeMap<(Ipv4Addr, Ipv4Addr, Option<u16>, &str), usize> = BTreeMap::new();
    let mut total: BTreeMap<Ipv4Addr, usize> = egress.iter().map(|ip| (*ip, 0)).collect();
    for e in entries {
        if e.orig_src == e.reply_dst {
            continue;
        }
        let Some(n) = total.get_mut(&e.reply_dst) else {
            continue;
        };
        *n += 1;
        *per_dest
            .entry((e.reply_dst, e.orig_dst, e.orig_dport, e.protocol.as_str()))
            .or_default() += 1;
    }
    total
        .into_iter()
        .map(|(ip, connections)| {
            let busiest = per_dest
                .iter()
                .filter(|((e, ..), _)| *e == ip)
                .max_by_key(|(_, n)| **n)
                .map(|((_, dst, port, proto), n)| {
                    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                    (format!("{dst}{port}/{proto}"), *n)
                });
            EgressLoad {
                ip,
                connections,
                busiest,
            }
        })
        .collect()
}

/// Reads the counters and sysctls, and the entries when there are egress IPs.
pub fn gather(host: &dyn Host, gateway: Option<&GatewayView>) -> ConntrackFacts {
    let num = |key: &str| host.sysctl(key).and_then(|v| v.parse().ok());
    let egress_ips = gateway.map(|g| g.egress_ips.clone()).unwrap_or_default();
    let (egress, entries_error) = if egress_ips.is_empty() {
        (vec![], None)
    } else {
        match host.conntrack_entries() {
            Ok(entries) => (egress_load(&entries, &egress_ips), None),
            Err(e) => (vec![], Some(e)),
        }
    };
    ConntrackFacts {
        count: num("net.netfilter.nf_conntrack_count"),
        max: num("net.netfilter.nf_conntrack_max"),
        tcp_established: num("net.netfilter.nf_conntrack_tcp_timeout_established"),
        tcp_time_wait: num("net.netfilter.nf_conntrack_tcp_timeout_time_wait"),
        port_range: host.sysctl("net.ipv4.ip_local_port_range").and_then(|v| {
            let mut it = v.split_whitespace().map(|n| n.parse().ok());
            Some((it.next()??, it.next()??))
        }),
        egress,
        entries_error,
    }
}

fn human(seconds: u64) -> String {
    match seconds {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{s} s ({} d)", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{s} s ({} h)", s / 3600),
        s => format!("{s} s"),
    }
}

/// Turns conntrack facts into findings.
pub fn findings(f: &ConntrackFacts) -> Vec<Finding> {
    let k = Check::Conntrack;
    let mut out = Vec::new();
    let est = f.tcp_established.unwrap_or(432_000);
    match (f.count, f.max) {
        (Some(count), Some(max)) if max > 0 => {
            let used = count as f64 / max as f64;
            let what = format!(
                "conntrack table: {count} of {max} entries ({:.0}%)",
                used * 100.0
            );
            let why = "every connection through the node (NATed or not) holds an entry; when the table is full the kernel drops the first packet of each new connection (`nf_conntrack: table full, dropping packet`), and the limit is per host, shared by every pod";
            if used >= WARN_AT {
                let target = (count.saturating_mul(2))
                    .max(max.saturating_mul(2))
                    .next_power_of_two();
                let mut fix = format!(
                    "`sysctl -w net.netfilter.nf_conntrack_max={target}` (about {} MiB of kernel memory at ~320 bytes an entry) and `echo {} > /sys/module/nf_conntrack/parameters/hashsize`",
                    target * 320 / (1024 * 1024),
                    target / 4
                );
                if est > SENSIBLE_ESTABLISHED {
                    fix.push_str(&format!(
                        "; `sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established={SENSIBLE_ESTABLISHED}` so entries of connections that died silently leave after a day, not {}",
                        human(est)
                    ));
                }
                fix.push_str(" (docs/operations.md, conntrack sizing)");
                out.push(if used >= FAIL_AT {
                    Finding::fail(k, what, why, fix)
                } else {
                    Finding::warn(k, what, why, fix)
                });
            } else {
                out.push(Finding::ok(k, what, why));
            }
        }
        _ => out.push(Finding::warn(
            k,
            "conntrack table: nf_conntrack_count or nf_conntrack_max unreadable",
            "without conntrack Causeway's NAT does not work, and its use cannot be judged",
            "load nf_conntrack (`modprobe nf_conntrack`) and run diagnose as root",
        )),
    }
    out.push(Finding::ok(
        k,
        format!(
            "TCP conntrack timeouts: established {}, time-wait {}",
            f.tcp_established.map_or("unknown".into(), human),
            f.tcp_time_wait.map_or("unknown".into(), human)
        ),
        "an entry lives this long after the last packet; the kernel's 5-day established default keeps dead connections in the table (kube-proxy sets 1 day)",
    ));
    if let Some((lo, hi)) = f.port_range {
        let n = hi.saturating_sub(lo) + 1;
        let what = format!("ephemeral port range: {lo}-{hi} ({n} ports)");
        let why = "bounds the connections this node's own processes open to one destination; SNAT of pod traffic picks from 1024-65535 regardless";
        out.push(if n < 10_000 {
            Finding::warn(
                k,
                what,
                why,
                "`sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\"`",
            )
        } else {
            Finding::ok(k, what, why)
        });
    }
    if let Some(e) = &f.entries_error {
        out.push(Finding::warn(
            k,
            format!("SNAT ports per egress IP: cannot list conntrack entries ({e})"),
            "each egress IP has 64512 source ports per destination",
            "install the `conntrack` tool (Debian: conntrack) on the gateway node",
        ));
    }
    let per = SNAT_PORTS_PER_DESTINATION as f64;
    let mut calm = Vec::new();
    for e in &f.egress {
        let (dest, n) = e.busiest.clone().unwrap_or(("none".into(), 0));
        let used = n as f64 / per;
        let what = format!(
            "SNAT ports of egress IP {}: {n} of {SNAT_PORTS_PER_DESTINATION} used towards {dest} ({} connections in all)",
            e.ip, e.connections
        );
        let why = "one egress IP can hold one connection per source port to a given destination IP, port and protocol; past that, new connections from the sources hashed onto it fail";
        let fix = format!(
            "raise the gateway's --egress-pool (now {}): each egress IP adds {SNAT_PORTS_PER_DESTINATION} ports per destination, and sources are hashed across the pool; keep nf_conntrack_max above the connections you expect",
            f.egress.len()
        );
        if used >= PORTS_FAIL_AT {
            out.push(Finding::fail(k, what, why, fix));
        } else if used >= PORTS_WARN_AT {
            out.push(Finding::warn(k, what, why, fix));
        } else {
            calm.push((e.ip, dest, n));
        }
    }
    if !calm.is_empty() {
        let (ip, dest, n) = calm.iter().max_by_key(|c| c.2).cloned().expect("not empty");
        let busiest = if n == 0 {
            "no connection SNATed yet".to_owned()
        } else {
            format!("busiest: {ip} with {n} towards {dest}")
        };
        out.push(Finding::ok(
            k,
            format!(
                "SNAT ports: {} egress IPs well below {SNAT_PORTS_PER_DESTINATION} per destination ({busiest})",
                calm.len()
            ),
            "each egress IP holds one connection per source port to one destination",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::host::fake::FakeHost;
    use super::*;

    fn facts() -> ConntrackFacts {
        ConntrackFacts {
            count: Some(15),
            max: Some(262_144),
            tcp_established: Some(432_000),
            tcp_time_wait: Some(120),
            port_range: Some((32768, 60999)),
            egress: vec![EgressLoad {
                ip: "242.0.0.2".parse().unwrap(),
                connections: 3,
                busiest: Some(("242.1.0.10:80/tcp".into(), 2)),
            }],
            entries_error: None,
        }
    }

    #[test]
    fn table() {
        type Case = (
            &'static str,
            fn(&mut ConntrackFacts),
            Vec<Status>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            ("healthy", |_| {}, vec![Status::Ok; 4], "15 of 262144"),
            (
                "table nearly full",
                |f| f.count = Some(250_000),
                vec![Status::Fail, Status::Ok, Status::Ok, Status::Ok],
                "nf_conntrack_max=524288",
            ),
            (
                "table filling",
                |f| f.count = Some(200_000),
                vec![Status::Warn, Status::Ok, Status::Ok, Status::Ok],
                "nf_conntrack_tcp_timeout_established=86400",
            ),
            (
                "narrow port range",
                |f| f.port_range = Some((60000, 61000)),
                vec![Status::Ok, Status::Ok, Status::Warn, Status::Ok],
                "ip_local_port_range",
            ),
            (
                "an egress IP near its ports",
                |f| f.egress[0].busiest = Some(("242.1.0.10:80/tcp".into(), 60_000)),
                vec![Status::Ok, Status::Ok, Status::Ok, Status::Fail],
                "raise the gateway's --egress-pool (now 1)",
            ),
            (
                "unreadable counters",
                |f| f.max = None,
                vec![Status::Warn, Status::Ok, Status::Ok, Status::Ok],
                "modprobe nf_conntrack",
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
    fn load_per_egress_ip_names_the_busiest_destination() {
        let listing = "\
tcp      6 431999 ESTABLISHED src=10.244.1.5 dst=242.1.0.10 sport=40000 dport=80 src=242.1.0.10 dst=242.0.0.2 sport=80 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.244.1.6 dst=242.1.0.10 sport=40001 dport=80 src=242.1.0.10 dst=242.0.0.2 sport=80 dport=40001 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.6 dst=242.1.0.11 sport=5000 dport=53 [UNREPLIED] src=242.1.0.11 dst=242.0.0.2 sport=53 dport=5000 mark=0 use=1
tcp      6 100 ESTABLISHED src=242.1.0.7 dst=242.0.0.10 sport=1234 dport=80 src=10.244.1.5 dst=242.1.0.7 sport=8080 dport=1234 [ASSURED] mark=0 use=1
";
        let mut host = FakeHost {
            entries: causeway_globalnet::conntrack::parse_entries(listing),
            ..Default::default()
        };
        host.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "32768 60999".into());
        let gw = GatewayView {
            egress_ips: vec!["242.0.0.2".parse().unwrap(), "242.0.0.3".parse().unwrap()],
            ..Default::default()
        };
        let f = gather(&host, Some(&gw));
        assert_eq!(f.port_range, Some((32768, 60999)));
        assert_eq!(f.egress[0].connections, 3);
        assert_eq!(f.egress[0].busiest, Some(("242.1.0.10:80/tcp".into(), 2)));
        assert_eq!(f.egress[1].connections, 0);
        assert_eq!(f.egress[1].busiest, None);
    }
}
