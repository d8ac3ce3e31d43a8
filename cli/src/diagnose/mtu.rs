//! `diagnose mtu`: the tunnel MTU against the MTU of the underlay interface
//! towards each peer, and a path-MTU probe through the tunnel: DF pings from
//! this gateway's tunnel address to the peer's, the tunnel MTU first, then a
//! bounded binary search for the largest packet that passes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::firewall::{not_here, tunnel_ip};
use super::host::{Host, PingOutcome};
use super::metrics::GatewayView;
use super::{Check, Finding};

/// The smallest packet probed (IPv4's minimum reassembly size).
const MIN_PROBE: u32 = 576;
/// At most this many pings per peer, and this long in all.
const MAX_PROBES: usize = 14;
const MAX_TIME: Duration = Duration::from_secs(15);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What was found towards one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerMtu {
    pub peer: String,
    /// The interface the tunnel's packets to this peer leave by, and its MTU.
    pub underlay: Option<(String, u32)>,
    pub underlay_v6: bool,
    /// The peer's tunnel address.
    pub target: Option<IpAddr>,
    /// The largest packet (IP header included) that came back; `None` when none did.
    pub largest: Option<u32>,
    /// Every probe: size and whether it came back.
    pub probes: Vec<(u32, bool)>,
    /// Why the probe could not run (no `ping`, no permission), if so.
    pub probe_error: Option<String>,
}

/// What the MTU check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MtuFacts {
    pub no_gateway: Option<String>,
    pub active: bool,
    /// The tunnel interface and its MTU.
    pub tunnel: Option<(String, u32)>,
    pub peers: Vec<PeerMtu>,
}

/// Finds the largest size in `MIN_PROBE..=top` that `passes`, in a bounded
/// number of probes: `top` first, then the minimum, then a binary search.
pub fn largest_passing(
    top: u32,
    mut passes: impl FnMut(u32) -> Option<bool>,
) -> (Option<u32>, Vec<(u32, bool)>) {
    let started = Instant::now();
    let mut probes = Vec::new();
    let mut probe = |size: u32, probes: &mut Vec<(u32, bool)>| {
        let ok = passes(size).unwrap_or(false);
        probes.push((size, ok));
        ok
    };
    if probe(top, &mut probes) {
        return (Some(top), probes);
    }
    // One retry of the smallest: a lost probe is not a dead path.
    if !probe(MIN_PROBE, &mut probes) && !probe(MIN_PROBE, &mut probes) {
        return (None, probes);
    }
    let (mut lo, mut hi) = (MIN_PROBE, top);
    while hi - lo > 1 && probes.len() < MAX_PROBES && started.elapsed() < MAX_TIME {
        let mid = lo + (hi - lo) / 2;
        if probe(mid, &mut probes) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (Some(lo), probes)
}

/// Reads the tunnel and underlay MTUs and probes each peer's path.
pub fn gather(host: &dyn Host, gateway: &Result<GatewayView, String>) -> MtuFacts {
    let g = match gateway {
        Ok(g) => g,
        Err(e) => {
            return MtuFacts {
                no_gateway: Some(e.clone()),
                active: false,
                tunnel: None,
                peers: vec![],
            };
        }
    };
    let links = host.links().unwrap_or_default();
    let mtu_of = |name: &str| links.iter().find(|l| l.name == name).map(|l| l.mtu);
    let tunnel = mtu_of(&g.interface)
        .or(g.mtu)
        .map(|m| (g.interface.clone(), m));
    let src = tunnel_ip(host, g);
    let mut peers = Vec::new();
    if g.active {
        for (name, p) in &g.peers {
            let underlay = p
                .endpoint
                .and_then(|ep| host.route_dev(ep.ip()))
                .and_then(|dev| mtu_of(&dev).map(|m| (dev, m)));
            let target = p.health.map(|h| h.ip());
            let mut probe_error = None;
            let (largest, probes) = match (src, target, &tunnel) {
                (Some(src), Some(dst), Some((_, top))) => largest_passing(*top, |size| match host
                    .ping(src, dst, size, PROBE_TIMEOUT)
                {
                    PingOutcome::Reply { .. } => Some(true),
                    PingOutcome::Error(e) => {
                        probe_error.get_or_insert(e);
                        Some(false)
                    }
                    _ => Some(false),
                }),
                _ => (None, vec![]),
            };
            peers.push(PeerMtu {
                peer: name.clone(),
                underlay,
                underlay_v6: p.endpoint.is_some_and(|e| e.is_ipv6()),
                target,
                largest,
                probes,
                probe_error,
            });
        }
    }
    MtuFacts {
        no_gateway: None,
        active: g.active,
        tunnel,
        peers,
    }
}

/// Turns MTU facts into findings.
pub fn findings(f: &MtuFacts) -> Vec<Finding> {
    let k = Check::Mtu;
    if let Some(finding) = not_here(k, f.no_gateway.as_deref(), f.active) {
        return vec![finding];
    }
    let Some((tun, mtu)) = &f.tunnel else {
        return vec![Finding::fail(
            k,
            "the active gateway has no tunnel interface here",
            "the tunnel MTU is that interface's MTU",
            "check the gateway's log: it creates the interface when it becomes active",
        )];
    };
    let mut out = Vec::new();
    for p in &f.peers {
        let overhead = if p.underlay_v6 { 80 } else { 60 };
        let family = if p.underlay_v6 { "IPv6" } else { "IPv4" };
        match &p.underlay {
            Some((dev, under)) if mtu + overhead > *under => out.push(Finding::fail(
                k,
                format!(
                    "tunnel MTU {mtu} ({tun}) needs an underlay MTU of {} but {dev}, towards peer {}, has {under}",
                    mtu + overhead,
                    p.peer
                ),
                format!("WireGuard adds {overhead} bytes over {family}: a full-size tunnel packet becomes an outer packet larger than {dev} carries, so it is fragmented or dropped and large transfers stall"),
                format!(
                    "set the gateway's --tunnel-mtu {} ({dev}'s {under} less {overhead}), or raise {dev}'s MTU to {} on every hop between the gateways",
                    under.saturating_sub(overhead),
                    mtu + overhead
                ),
            )),
            Some((dev, under)) => out.push(Finding::ok(
                k,
                format!("tunnel MTU {mtu} ({tun}) fits {dev}'s {under} towards peer {} ({overhead} bytes of WireGuard over {family})", p.peer),
                "tunnel packets of full size fit the underlay without fragmenting",
            )),
            None => out.push(Finding::warn(
                k,
                format!("underlay towards peer {}: unknown (no route to its endpoint?)", p.peer),
                "the tunnel MTU must leave room for WireGuard's overhead on the underlay",
                "check the route to the peer's endpoint (`ip route get ENDPOINT`)",
            )),
        }
        let target = p.target.map_or_else(|| "?".into(), |t| t.to_string());
        out.push(match p.largest {
            Some(l) if l >= *mtu => Finding::ok(
                k,
                format!("path-MTU probe to peer {} ({target}) through the tunnel: {l}-byte packets with DF pass (the tunnel MTU)", p.peer),
                "every packet the tunnel accepts reaches the peer",
            ),
            Some(l) => Finding::fail(
                k,
                format!("path-MTU probe to peer {} ({target}) through the tunnel: the largest packet that passes is {l} bytes, below the tunnel MTU {mtu}", p.peer),
                format!("packets of {} to {mtu} bytes are accepted by {tun} and then lost on the way (a black hole: the 'fragmentation needed' error does not come back through the tunnel); MSS clamping saves TCP but not UDP", l + 1),
                format!("set --tunnel-mtu {l} on the gateways of both clusters, or raise the MTU of the path between them"),
            ),
            None if p.probe_error.is_some() => Finding::warn(
                k,
                format!(
                    "path-MTU probe to peer {}: could not run ({})",
                    p.peer,
                    p.probe_error.as_deref().unwrap_or_default()
                ),
                "the probe sends DF pings through the tunnel with `ping`",
                "install ping on the node or in the gateway image (Debian: iputils-ping) and run diagnose as root",
            ),
            None if p.target.is_none() => Finding::warn(
                k,
                format!("path-MTU probe to peer {}: not run (no health address for the peer or no tunnel address here)", p.peer),
                "the probe needs both ends' tunnel addresses",
                "check the gateway's --tunnel-ip and the peer's Endpoint record",
            ),
            None => Finding::warn(
                k,
                format!("path-MTU probe to peer {} ({target}): not even {MIN_PROBE}-byte packets pass the tunnel", p.peer),
                "with nothing passing, the MTU cannot be measured",
                "see `causeway diagnose firewall` and `causeway diagnose connections` for why the tunnel carries nothing",
            ),
        });
    }
    if out.is_empty() {
        out.push(Finding::ok(
            k,
            format!("tunnel MTU {mtu} ({tun}); no peer to probe"),
            "the tunnel MTU is checked against each peer's path",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::host::Link;
    use super::super::host::fake::FakeHost;
    use super::super::metrics::PeerView;
    use super::*;

    #[test]
    fn search_finds_the_largest_size_in_bounded_probes() {
        for path in [1440, 1220, 1000, 577, 576] {
            let (got, probes) = largest_passing(1440, |s| Some(s <= path));
            assert_eq!(got, Some(path), "path {path}");
            assert!(probes.len() <= MAX_PROBES, "{probes:?}");
        }
        let (got, probes) = largest_passing(1440, |_| Some(false));
        assert_eq!(got, None);
        assert_eq!(probes.len(), 3);
    }

    fn host(wan_mtu: u32, path: u32) -> FakeHost {
        let mut h = FakeHost {
            links: vec![
                Link {
                    name: "causeway0".into(),
                    mtu: 1440,
                    ..Default::default()
                },
                Link {
                    name: "wan0".into(),
                    mtu: wan_mtu,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        h.route_devs
            .insert("198.51.100.20".parse().unwrap(), "wan0".into());
        h.path_mtu.insert("242.1.0.1".parse().unwrap(), path);
        h
    }

    fn view() -> GatewayView {
        let mut g = GatewayView {
            active: true,
            interface: "causeway0".into(),
            tunnel_ip: Some("242.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        g.peers.insert(
            "b".into(),
            PeerView {
                endpoint: Some("198.51.100.20:4500".parse().unwrap()),
                health: Some("242.1.0.1:51830".parse().unwrap()),
                ..Default::default()
            },
        );
        g
    }

    #[test]
    fn a_missing_ping_is_said_so() {
        struct NoPing(FakeHost);
        impl Host for NoPing {
            fn sysctl(&self, key: &str) -> Option<String> {
                self.0.sysctl(key)
            }
            fn exists(&self, path: &str) -> bool {
                self.0.exists(path)
            }
            fn nft_version(&self) -> Result<String, String> {
                self.0.nft_version()
            }
            fn nft_ruleset(&self) -> Result<serde_json::Value, String> {
                self.0.nft_ruleset()
            }
            fn links(&self) -> Result<Vec<Link>, String> {
                self.0.links()
            }
            fn routes(&self) -> Result<Vec<super::super::host::Route>, String> {
                self.0.routes()
            }
            fn route_dev(&self, dst: IpAddr) -> Option<String> {
                self.0.route_dev(dst)
            }
            fn conntrack_entries(
                &self,
            ) -> Result<Vec<causeway_globalnet::conntrack::Entry>, String> {
                self.0.conntrack_entries()
            }
            fn gateway(&self) -> Result<GatewayView, String> {
                self.0.gateway()
            }
            fn udp_probe(
                &self,
                from: Option<IpAddr>,
                to: std::net::SocketAddr,
                payload: &[u8],
                timeout: Duration,
            ) -> super::super::host::UdpOutcome {
                self.0.udp_probe(from, to, payload, timeout)
            }
            fn ping(&self, _: IpAddr, _: IpAddr, _: u32, _: Duration) -> PingOutcome {
                PingOutcome::Error("cannot run ping: No such file or directory".into())
            }
            fn now(&self) -> std::time::SystemTime {
                self.0.now()
            }
        }
        let out = findings(&gather(&NoPing(host(1500, 1440)), &Ok(view())));
        assert_eq!(out[1].status, Status::Warn, "{out:#?}");
        assert!(out[1].fix.as_deref().unwrap().contains("iputils-ping"));
    }

    #[test]
    fn table() {
        let cases = [
            (
                "healthy",
                host(1500, 1440),
                [Status::Ok, Status::Ok],
                "1440-byte packets with DF pass",
            ),
            (
                "underlay too small",
                host(1280, 1220),
                [Status::Fail, Status::Fail],
                "set the gateway's --tunnel-mtu 1220 (wan0's 1280 less 60)",
            ),
            (
                "a smaller hop on the way",
                host(1500, 1300),
                [Status::Ok, Status::Fail],
                "the largest packet that passes is 1300 bytes",
            ),
            (
                "nothing passes",
                host(1500, 0),
                [Status::Ok, Status::Warn],
                "not even 576-byte",
            ),
        ];
        for (name, h, statuses, needle) in cases {
            let out = findings(&gather(&h, &Ok(view())));
            crate::diagnose::assert_findings(name, &out, &statuses, needle);
        }
    }
}
