//! Conntrack: removing UDP flows DNATed to an endpoint that left (Settled
//! decision 14; TCP notices a dead peer by itself, UDP would keep sending to
//! it until the entry times out), and the counters the gateway exports as
//! metrics.
//!
//! Sizing, for operators: every translated connection is one conntrack
//! entry, so `net.netfilter.nf_conntrack_max` (per host; 262144 on the
//! machines measured) bounds the connections the gateway carries, NAT or
//! not. SNAT keeps a connection's source port when it can and otherwise
//! picks one from 1024-65535 (`net.ipv4.ip_local_port_range` governs local
//! sockets only, not SNAT), so one egress IP carries about 64k concurrent
//! connections to one (destination IP, port, protocol). Sources are hashed
//! onto the pool, so a pool of P egress IPs carries about P x 64k to one
//! remote service, provided the sources are many; raise the pool size
//! before [`EgressUsage::near_port_limit`] fires, and `nf_conntrack_max`
//! before `count` nears `max`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::Error;

/// Ports one egress IP can use towards one (destination IP, port, protocol):
/// SNAT picks from 1024-65535 when the source port is taken.
pub const SNAT_PORTS_PER_DESTINATION: usize = 65535 - 1024 + 1;

/// The `conntrack` tool, in this network namespace or another.
#[derive(Clone, Debug)]
pub struct Conntrack {
    command: Vec<OsString>,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            command: vec!["conntrack".into()],
        }
    }
}

impl Conntrack {
    /// `conntrack` from `PATH`, in the caller's network namespace.
    pub fn new() -> Self {
        Conntrack::default()
    }

    /// `conntrack` inside network namespace `ns`, via `ip netns exec`.
    pub fn in_netns(ns: &str) -> Self {
        Conntrack {
            command: ["ip", "netns", "exec", ns, "conntrack"]
                .into_iter()
                .map(Into::into)
                .collect(),
        }
    }

    fn run(&self, args: &[String]) -> Result<std::process::Output, Error> {
        let shown = self
            .command
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| Error::RunCommand {
                command: shown,
                source,
            })
    }

    /// Deletes the UDP flows DNATed to `endpoint`, only those whose original
    /// destination was `global_ip` when given
    /// (`conntrack -D -p udp --dst-nat ENDPOINT [--orig-dst GLOBAL_IP]`).
    /// Returns how many were deleted; none is success.
    pub fn delete_udp_to_endpoint(
        &self,
        endpoint: Ipv4Addr,
        global_ip: Option<Ipv4Addr>,
    ) -> Result<usize, Error> {
        let mut args = vec![
            "-D".to_string(),
            "-p".into(),
            "udp".into(),
            "--dst-nat".into(),
            endpoint.to_string(),
        ];
        if let Some(g) = global_ip {
            args.push("--orig-dst".into());
            args.push(g.to_string());
        }
        let out = self.run(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match deleted_count(&stderr) {
            Some(n) => {
                if n > 0 {
                    tracing::info!(%endpoint, deleted = n, "deleted UDP conntrack entries of a departed endpoint");
                }
                Ok(n)
            }
            None => Err(Error::CommandFailed {
                command: format!("conntrack {}", args.join(" ")),
                stderr: stderr.trim().to_string(),
            }),
        }
    }

    /// Every conntrack entry (`conntrack -L`).
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let out = self.run(&["-L".to_string()])?;
        if !out.status.success() {
            return Err(Error::CommandFailed {
                command: "conntrack -L".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(parse_entries(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// "N flow entries have been deleted." → N (conntrack exits 1 when N is 0).
fn deleted_count(stderr: &str) -> Option<usize> {
    let line = stderr
        .lines()
        .find(|l| l.contains("flow entries have been deleted"))?;
    let before = line.split(" flow entries").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// One conntrack entry, as far as metrics need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Protocol name (`tcp`, `udp`, `icmp`).
    pub protocol: String,
    /// Original source address.
    pub orig_src: Ipv4Addr,
    /// Original destination address.
    pub orig_dst: Ipv4Addr,
    /// Original destination port, for TCP/UDP/SCTP.
    pub orig_dport: Option<u16>,
    /// Reply source (the DNAT target when DNATed).
    pub reply_src: Ipv4Addr,
    /// Reply destination (the SNAT address when SNATed).
    pub reply_dst: Ipv4Addr,
}

/// Reads `conntrack -L` output; lines it cannot read (IPv6) are skipped.
pub fn parse_entries(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let protocol = line.split_whitespace().next()?.to_string();
    let mut src = Vec::new();
    let mut dst = Vec::new();
    let mut dport = Vec::new();
    for tok in line.split_whitespace() {
        if let Some(v) = tok.strip_prefix("src=") {
            src.push(v.parse::<Ipv4Addr>().ok()?);
        } else if let Some(v) = tok.strip_prefix("dst=") {
            dst.push(v.parse::<Ipv4Addr>().ok()?);
        } else if let Some(v) = tok.strip_prefix("dport=") {
            dport.push(v.parse::<u16>().ok()?);
        }
    }
    if src.len() < 2 || dst.len() < 2 {
        return None;
    }
    Some(Entry {
        protocol,
        orig_src: src[0],
        orig_dst: dst[0],
        orig_dport: dport.first().copied(),
        reply_src: src[1],
        reply_dst: dst[1],
    })
}

/// How busy one egress IP is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EgressUsage {
    /// Connections SNATed to it.
    pub connections: usize,
    /// Connections to its busiest (destination IP, port, protocol): each
    /// needs its own source port, so this nears
    /// [`SNAT_PORTS_PER_DESTINATION`] before the pool runs dry.
    pub busiest_destination: usize,
}

impl EgressUsage {
    /// Whether the busiest destination uses more than `fraction` of the ports.
    pub fn near_port_limit(&self, fraction: f64) -> bool {
        self.busiest_destination as f64 > fraction * SNAT_PORTS_PER_DESTINATION as f64
    }
}

/// Per-egress-IP usage: an entry counts for the egress IP it was SNATed to
/// (its reply destination) when its original source was something else.
pub fn egress_usage(entries: &[Entry], egress: &[Ipv4Addr]) -> BTreeMap<Ipv4Addr, EgressUsage> {
    let mut per_dest: BTreeMap<(Ipv4Addr, Ipv4Addr, Option<u16>, &str), usize> = BTreeMap::new();
    let mut out: BTreeMap<Ipv4Addr, EgressUsage> = egress
        .iter()
        .map(|ip| (*ip, EgressUsage::default()))
        .collect();
    for e in entries {
        if e.orig_src == e.reply_dst {
            continue;
        }
        let Some(u) = out.get_mut(&e.reply_dst) else {
            continue;
        };
        u.connections += 1;
        let n = per_dest
            .entry((e.reply_dst, e.orig_dst, e.orig_dport, e.protocol.as_str()))
            .or_default();
        *n += 1;
        u.busiest_destination = u.busiest_destination.max(*n);
    }
    out
}

/// Conntrack table size and limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Entries now (`nf_conntrack_count`, per network namespace).
    pub count: u64,
    /// Limit (`nf_conntrack_max`, per host).
    pub max: u64,
}

/// Reads `PROC/sys/net/netfilter/nf_conntrack_{count,max}`; `proc_root` is
/// `/proc` except in tests. The values are those of the namespace of the
/// process that reads them.
pub fn read_counters(proc_root: &Path) -> Result<Counters, Error> {
    let read = |name: &str| -> Result<u64, Error> {
        let path = proc_root.join("sys/net/netfilter").join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::ReadCounter {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        text.trim().parse().map_err(|e| Error::ReadCounter {
            path: path.display().to_string(),
            reason: format!("{e}"),
        })
    };
    Ok(Counters {
        count: read("nf_conntrack_count")?,
        max: read("nf_conntrack_max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
tcp      6 431999 ESTABLISHED src=10.244.1.5 dst=242.1.0.10 sport=40000 dport=80 src=242.1.0.10 dst=242.0.0.2 sport=80 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.244.1.6 dst=242.1.0.10 sport=40001 dport=80 src=242.1.0.10 dst=242.0.0.2 sport=80 dport=40001 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.6 dst=242.1.0.11 sport=5000 dport=53 [UNREPLIED] src=242.1.0.11 dst=242.0.0.3 sport=53 dport=5000 mark=0 use=1
tcp      6 100 ESTABLISHED src=242.1.0.7 dst=242.0.0.10 sport=1234 dport=80 src=10.244.1.5 dst=242.1.0.7 sport=8080 dport=1234 [ASSURED] mark=0 use=1
icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7 mark=0 use=1
ipv6     10 tcp      6 10 SYN_SENT src=fd00::1 dst=fd00::2 sport=1 dport=2 src=fd00::2 dst=fd00::1 sport=2 dport=1
";

    #[test]
    fn parses_entries() {
        let e = parse_entries(LISTING);
        assert_eq!(e.len(), 5);
        assert_eq!(e[2].protocol, "udp");
        assert_eq!(e[2].orig_dport, Some(53));
        assert_eq!(e[2].reply_dst, "242.0.0.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(e[4].orig_dport, None);
    }

    #[test]
    fn counts_per_egress_ip() {
        let egress: Vec<Ipv4Addr> = vec![
            "242.0.0.2".parse().unwrap(),
            "242.0.0.3".parse().unwrap(),
            "242.0.0.4".parse().unwrap(),
        ];
        let u = egress_usage(&parse_entries(LISTING), &egress);
        assert_eq!(
            u[&egress[0]],
            EgressUsage {
                connections: 2,
                busiest_destination: 2
            }
        );
        assert_eq!(u[&egress[1]].connections, 1);
        assert_eq!(u[&egress[2]], EgressUsage::default());
        assert!(!u[&egress[0]].near_port_limit(0.8));
        let hot = EgressUsage {
            connections: 60000,
            busiest_destination: 60000,
        };
        assert!(hot.near_port_limit(0.8));
    }

    #[test]
    fn reads_deleted_count() {
        let s = "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted.\n";
        assert_eq!(deleted_count(s), Some(2));
        assert_eq!(deleted_count("conntrack: error"), None);
    }

    #[test]
    fn reads_counters_from_a_proc_tree() {
        let dir = std::env::temp_dir().join(format!("gn-proc-{}", std::process::id()));
        let nf = dir.join("sys/net/netfilter");
        std::fs::create_dir_all(&nf).unwrap();
        std::fs::write(nf.join("nf_conntrack_count"), "17\n").unwrap();
        std::fs::write(nf.join("nf_conntrack_max"), "262144\n").unwrap();
        let c = read_counters(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            c,
            Counters {
                count: 17,
                max: 262144
            }
        );
    }
}
