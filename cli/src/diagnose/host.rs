//! Where the facts come from: the [`Host`] trait, the real node
//! ([`RealHost`]: `/proc`, `ip -j`, `nft -j`, `conntrack -L`, `ping`, the
//! gateway's `/metrics`) and [`fake::FakeHost`] for tests.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use causeway_globalnet::conntrack::Entry;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::metrics::GatewayView;

/// A network interface, as `ip -d -j addr show` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    pub mtu: u32,
    /// `bridge`, `veth`, `tun`, `vxlan`, `dummy`, ... (`None` for a plain device).
    pub kind: Option<String>,
    pub up: bool,
    /// The bridge it is a port of.
    pub master: Option<String>,
    pub addrs: Vec<Ipv4Net>,
}

/// An IPv4 route, as `ip -4 -j route show table all` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Route {
    /// `default` or a CIDR.
    pub dst: String,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    /// `kernel`, `static`, `202`, ...
    pub protocol: Option<String>,
    /// `unicast`, `unreachable`, `local`, ...
    pub kind: String,
}

/// What came of one UDP probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpOutcome {
    /// A datagram came back.
    Answered { rtt_us: u64 },
    /// ICMP port unreachable: the host is there, nothing listens on the port.
    Refused,
    /// Another ICMP error (host or admin prohibited, no route): rejected on the way.
    Rejected(String),
    /// Nothing came back in time: open but quiet (WireGuard answers nothing
    /// it cannot authenticate), or silently dropped.
    Silent,
    /// The probe could not be sent.
    Error(String),
}

/// What came of one ping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PingOutcome {
    Reply {
        rtt_us: u64,
    },
    NoReply,
    /// The packet does not fit the local route's MTU (not sent).
    TooBig {
        mtu: Option<u32>,
    },
    Error(String),
}

/// Everything the checks read or probe on a node.
pub trait Host {
    /// A sysctl (`net.ipv4.ip_forward`), trimmed; `None` when absent.
    fn sysctl(&self, key: &str) -> Option<String>;
    /// Whether a path exists (`/sys/module/wireguard`, `/dev/net/tun`).
    fn exists(&self, path: &str) -> bool;
    /// `nft --version`.
    fn nft_version(&self) -> Result<String, String>;
    /// `nft -j list ruleset`.
    fn nft_ruleset(&self) -> Result<serde_json::Value, String>;
    /// `ip -d -j addr show`.
    fn links(&self) -> Result<Vec<Link>, String>;
    /// `ip -4 -j route show table all`.
    fn routes(&self) -> Result<Vec<Route>, String>;
    /// The device of `ip route get DST`.
    fn route_dev(&self, dst: IpAddr) -> Option<String>;
    /// `conntrack -L` (or a recorded listing).
    fn conntrack_entries(&self) -> Result<Vec<Entry>, String>;
    /// What this node's gateway exposes on `/metrics`.
    fn gateway(&self) -> Result<GatewayView, String>;
    /// Sends `payload` to `to` (from `from` when given) and waits for an answer.
    fn udp_probe(
        &self,
        from: Option<IpAddr>,
        to: SocketAddr,
        payload: &[u8],
        timeout: Duration,
    ) -> UdpOutcome;
    /// One ICMP echo of `size` bytes (IP header included) with DF set, from `from`.
    fn ping(&self, from: IpAddr, to: IpAddr, size: u32, timeout: Duration) -> PingOutcome;
    /// The wall clock.
    fn now(&self) -> SystemTime;
}

/// The node this process runs on (in its network namespace).
pub struct RealHost {
    pub proc_root: PathBuf,
    pub metrics: SocketAddr,
    pub conntrack_file: Option<PathBuf>,
    pub interface: String,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    flags: Vec<String>,
    master: Option<String>,
    linkinfo: Option<IpLinkInfo>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpLinkInfo {
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    family: String,
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct IpRoute {
    #[serde(rename = "type")]
    kind: Option<String>,
    dst: String,
    gateway: Option<IpAddr>,
    dev: Option<String>,
    protocol: Option<String>,
}

/// Reads `ip -d -j addr show` output.
pub fn parse_links(json: &str) -> Result<Vec<Link>, String> {
    let links: Vec<IpLink> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(links
        .into_iter()
        .map(|l| Link {
            up: l.flags.iter().any(|f| f == "UP"),
            kind: l.linkinfo.and_then(|i| i.info_kind),
            addrs: l
                .addr_info
                .iter()
                .filter(|a| a.family == "inet")
                .filter_map(|a| {
                    let ip: Ipv4Addr = a.local.as_deref()?.parse().ok()?;
                    Ipv4Net::new(ip, a.prefixlen?).ok()
                })
                .collect(),
            name: l.ifname,
            mtu: l.mtu,
            master: l.master,
        })
        .collect())
}

/// Reads `ip -4 -j route show table all` output.
pub fn parse_routes(json: &str) -> Result<Vec<Route>, String> {
    let routes: Vec<IpRoute> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(routes
        .into_iter()
        .map(|r| Route {
            dst: r.dst,
            gateway: r.gateway,
            dev: r.dev,
            protocol: r.protocol,
            kind: r.kind.unwrap_or_else(|| "unicast".into()),
        })
        .collect())
}

/// Plain `GET /metrics` over HTTP/1.0, bounded by a few seconds.
fn http_get_metrics(addr: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("no gateway answers at {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = body
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} answered no HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{addr} answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_owned())
}

impl Host for RealHost {
    fn sysctl(&self, key: &str) -> Option<String> {
        let path = self.proc_root.join("sys").join(key.replace('.', "/"));
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    fn exists(&self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }

    fn nft_version(&self) -> Result<String, String> {
        run("nft", &["--version"]).map(|s| s.trim().to_owned())
    }

    fn nft_ruleset(&self) -> Result<serde_json::Value, String> {
        let text = run("nft", &["-j", "list", "ruleset"])?;
        serde_json::from_str(&text).map_err(|e| format!("nft -j output: {e}"))
    }

    fn links(&self) -> Result<Vec<Link>, String> {
        parse_links(&run("ip", &["-d", "-j", "addr", "show"])?)
    }

    fn routes(&self) -> Result<Vec<Route>, String> {
        parse_routes(&run("ip", &["-4", "-j", "route", "show", "table", "all"])?)
    }

    fn route_dev(&self, dst: IpAddr) -> Option<String> {
        let out = run("ip", &["-j", "route", "get", &dst.to_string()]).ok()?;
        let routes: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
        routes.first()?["dev"].as_str().map(str::to_owned)
    }

    fn conntrack_entries(&self) -> Result<Vec<Entry>, String> {
        let text = match &self.conntrack_file {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| format!("read {}: {e}", file.display()))?,
            None => run("conntrack", &["-L"])?,
        };
        Ok(causeway_globalnet::conntrack::parse_entries(&text))
    }

    fn gateway(&self) -> Result<GatewayView, String> {
        let text = http_get_metrics(self.metrics)?;
        Ok(GatewayView::from_metrics(&text, &self.interface))
    }

    fn udp_probe(
        &self,
        from: Option<IpAddr>,
        to: SocketAddr,
        payload: &[u8],
        timeout: Duration,
    ) -> UdpOutcome {
        let local = SocketAddr::new(from.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), 0);
        let socket = match UdpSocket::bind(local) {
            Ok(s) => s,
            Err(e) => return UdpOutcome::Error(format!("bind {local}: {e}")),
        };
        if let Err(e) = socket.connect(to) {
            return UdpOutcome::Rejected(format!("connect: {e}"));
        }
        let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
        let start = Instant::now();
        if let Err(e) = socket.send(payload) {
            return UdpOutcome::Error(format!("send to {to}: {e}"));
        }
        let mut buf = [0u8; 1500];
        // Short reads in a bounded loop, so an ICMP error that arrives after
        // the first read still counts.
        while start.elapsed() < timeout {
            match socket.recv(&mut buf) {
                Ok(_) => {
                    return UdpOutcome::Answered {
                        rtt_us: start.elapsed().as_micros() as u64,
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return UdpOutcome::Refused;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return UdpOutcome::Rejected(e.to_string()),
            }
        }
        UdpOutcome::Silent
    }

    fn ping(&self, from: IpAddr, to: IpAddr, size: u32, timeout: Duration) -> PingOutcome {
        // `ping -M do` sets DF; -s is the ICMP payload (IP 20 + ICMP 8 less).
        let payload = size.saturating_sub(28).to_string();
        let wait = format!("{:.1}", timeout.as_secs_f64().max(0.1));
        let out = Command::new("ping")
            .args(["-n", "-c", "1", "-W", &wait, "-M", "do", "-s", &payload])
            .args(["-I", &from.to_string(), &to.to_string()])
            .env("LC_ALL", "C")
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => return PingOutcome::Error(format!("cannot run ping: {e}")),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(rest) = stderr.split("mtu=").nth(1) {
            let mtu = rest
                .trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok();
            return PingOutcome::TooBig { mtu };
        }
        match out.status.code() {
            Some(0) => {
                let rtt_ms: f64 = stdout
                    .split("time=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                PingOutcome::Reply {
                    rtt_us: (rtt_ms * 1000.0) as u64,
                }
            }
            Some(1) => PingOutcome::NoReply,
            _ => PingOutcome::Error(stderr.trim().to_owned()),
        }
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// An in-memory host for tests: every fact is a field.
pub mod fake {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Facts as fields; `ping` answers up to `path_mtu` per target and
    /// refuses above `local_mtu`.
    #[derive(Clone, Debug)]
    pub struct FakeHost {
        pub sysctls: BTreeMap<String, String>,
        pub paths: BTreeSet<String>,
        pub nft: Result<serde_json::Value, String>,
        pub links: Vec<Link>,
        pub routes: Vec<Route>,
        pub route_devs: BTreeMap<IpAddr, String>,
        pub entries: Vec<Entry>,
        pub gateway: Result<GatewayView, String>,
        pub udp: BTreeMap<SocketAddr, UdpOutcome>,
        pub path_mtu: BTreeMap<IpAddr, u32>,
        pub local_mtu: u32,
        pub now: SystemTime,
        /// Every ping sent, as (target, size).
        pub pings: std::cell::RefCell<Vec<(IpAddr, u32)>>,
    }

    impl Default for FakeHost {
        fn default() -> Self {
            Self {
                sysctls: BTreeMap::new(),
                paths: BTreeSet::new(),
                nft: Ok(serde_json::json!({"nftables": []})),
                links: Vec::new(),
                routes: Vec::new(),
                route_devs: BTreeMap::new(),
                entries: Vec::new(),
                gateway: Err("no gateway".into()),
                udp: BTreeMap::new(),
                path_mtu: BTreeMap::new(),
                local_mtu: 1500,
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                pings: Default::default(),
            }
        }
    }

    impl Host for FakeHost {
        fn sysctl(&self, key: &str) -> Option<String> {
            self.sysctls.get(key).cloned()
        }
        fn exists(&self, path: &str) -> bool {
            self.paths.contains(path)
        }
        fn nft_version(&self) -> Result<String, String> {
            self.nft
                .as_ref()
                .map(|_| "nftables v1.0.6".into())
                .map_err(Clone::clone)
        }
        fn nft_ruleset(&self) -> Result<serde_json::Value, String> {
            self.nft.clone()
        }
        fn links(&self) -> Result<Vec<Link>, String> {
            Ok(self.links.clone())
        }
        fn routes(&self) -> Result<Vec<Route>, String> {
            Ok(self.routes.clone())
        }
        fn route_dev(&self, dst: IpAddr) -> Option<String> {
            self.route_devs.get(&dst).cloned()
        }
        fn conntrack_entries(&self) -> Result<Vec<Entry>, String> {
            Ok(self.entries.clone())
        }
        fn gateway(&self) -> Result<GatewayView, String> {
            self.gateway.clone()
        }
        fn udp_probe(
            &self,
            _from: Option<IpAddr>,
            to: SocketAddr,
            _payload: &[u8],
            _timeout: Duration,
        ) -> UdpOutcome {
            self.udp.get(&to).cloned().unwrap_or(UdpOutcome::Silent)
        }
        fn ping(&self, _from: IpAddr, to: IpAddr, size: u32, _timeout: Duration) -> PingOutcome {
            self.pings.borrow_mut().push((to, size));
            if size > self.local_mtu {
                return PingOutcome::TooBig {
                    mtu: Some(self.local_mtu),
                };
            }
            match self.path_mtu.get(&to) {
                Some(mtu) if size <= *mtu => PingOutcome::Reply { rtt_us: 500 },
                _ => PingOutcome::NoReply,
            }
        }
        fn now(&self) -> SystemTime {
            self.now
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ip_json() {
        let links = parse_links(
            r#"[{"ifindex":7,"ifname":"causeway0","flags":["POINTOPOINT","UP"],"mtu":1440,
                "linkinfo":{"info_kind":"tun"},"addr_info":[{"family":"inet","local":"242.0.0.1","prefixlen":32},
                {"family":"inet6","local":"fe80::1","prefixlen":64}]},
               {"ifindex":6,"ifname":"veth-web-0","flags":["UP"],"mtu":1500,"master":"cni0","addr_info":[]}]"#,
        )
        .unwrap();
        assert_eq!(links[0].name, "causeway0");
        assert_eq!(links[0].kind.as_deref(), Some("tun"));
        assert_eq!(links[0].addrs, vec!["242.0.0.1/32".parse().unwrap()]);
        assert!(links[0].up);
        assert_eq!(links[1].master.as_deref(), Some("cni0"));
        let routes = parse_routes(
            r#"[{"type":"unreachable","dst":"242.0.0.0/16","protocol":"202","metric":100,"flags":[]},
               {"dst":"10.244.1.0/24","gateway":"192.168.50.11","dev":"eth0","protocol":"static","flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(routes[0].kind, "unreachable");
        assert_eq!(routes[1].kind, "unicast");
        assert_eq!(routes[1].dev.as_deref(), Some("eth0"));
    }
}
