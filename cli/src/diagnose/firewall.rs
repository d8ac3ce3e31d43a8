//! `diagnose firewall`: real probes between this gateway and each peer.
//! A UDP datagram to the peer's WireGuard port tells a closed or rejected
//! port from a quiet one (WireGuard answers nothing it cannot
//! authenticate); a health probe from this gateway's tunnel address to the
//! peer's health responder (UDP 51830, through the tunnel) proves that the
//! WireGuard port passes both ways and the health port too; when it goes
//! unanswered, a ping through the tunnel tells which of the two is blocked.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use causeway_gateway::health::{Kind, Packet};
use serde::Serialize;

use super::host::{Host, PingOutcome, UdpOutcome};
use super::metrics::GatewayView;
use super::{Check, Finding};

/// How long one probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Health probes per peer before giving up (bounded: at most 3 s).
const HEALTH_TRIES: u32 = 3;

/// The probes of one peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerProbe {
    pub peer: String,
    pub endpoint: Option<SocketAddr>,
    /// A datagram to the WireGuard port.
    pub wireguard: Option<UdpOutcome>,
    /// The peer's health responder (its tunnel address).
    pub health_target: Option<SocketAddr>,
    pub health: Option<UdpOutcome>,
    /// A ping through the tunnel, when health probes went unanswered.
    pub tunnel_ping: Option<PingOutcome>,
    pub handshake_age_s: Option<f64>,
}

/// What the firewall check found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FirewallFacts {
    /// Why no gateway could be read, if so.
    pub no_gateway: Option<String>,
    pub active: bool,
    pub tunnel_ip: Option<IpAddr>,
    pub peers: Vec<PeerProbe>,
}

/// This gateway's tunnel address: what it reports, else its interface's address.
pub fn tunnel_ip(host: &dyn Host, g: &GatewayView) -> Option<IpAddr> {
    g.tunnel_ip.or_else(|| {
        host.links()
            .ok()?
            .into_iter()
            .find(|l| l.name == g.interface)?
            .addrs
            .first()
            .map(|a| IpAddr::V4(a.addr()))
    })
}

/// Probes every peer of this node's active gateway.
pub fn gather(host: &dyn Host, gateway: &Result<GatewayView, String>) -> FirewallFacts {
    let g = match gateway {
        Ok(g) => g,
        Err(e) => {
            return FirewallFacts {
                no_gateway: Some(e.clone()),
                active: false,
                tunnel_ip: None,
                peers: vec![],
            };
        }
    };
    let tunnel = tunnel_ip(host, g);
    let mut peers = Vec::new();
    if g.active {
        for (name, p) in &g.peers {
            // Anything WireGuard cannot read: it is dropped without a word.
            let wireguard = p
                .endpoint
                .map(|ep| host.udp_probe(None, ep, &[0xff, 0, 0, 0], PROBE_TIMEOUT));
            let mut health = None;
            if let (Some(target), Some(src)) = (p.health, tunnel) {
                for seq in 0..HEALTH_TRIES {
                    let sent_ns = host
                        .now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    let probe = Packet {
                        kind: Kind::Probe,
                        seq: u64::from(seq) | 0xd1a6_0000_0000,
                        sent_ns,
                    };
                    let outcome = host.udp_probe(Some(src), target, &probe.encode(), PROBE_TIMEOUT);
                    let done = matches!(outcome, UdpOutcome::Answered { .. });
                    health = Some(outcome);
                    if done {
                        break;
                    }
                }
            }
            let answered = matches!(health, Some(UdpOutcome::Answered { .. }));
            let tunnel_ping = match (answered, p.health, tunnel) {
                (false, Some(target), Some(src)) => {
                    let first = host.ping(src, target.ip(), 84, PROBE_TIMEOUT);
                    Some(match first {
                        PingOutcome::Reply { .. } => first,
                        _ => host.ping(src, target.ip(), 84, PROBE_TIMEOUT),
                    })
                }
                _ => None,
            };
            peers.push(PeerProbe {
                peer: name.clone(),
                endpoint: p.endpoint,
                wireguard,
                health_target: p.health,
                health,
                tunnel_ping,
                handshake_age_s: p.handshake_age_s,
            });
        }
    }
    FirewallFacts {
        no_gateway: None,
        active: g.active,
        tunnel_ip: tunnel,
        peers,
    }
}

/// The finding when no active gateway runs here (shared by the checks that
/// need one).
pub fn not_here(check: Check, no_gateway: Option<&str>, active: bool) -> Option<Finding> {
    let fix = "run diagnose on the node of the cluster's active gateway (in Kubernetes: in the active gateway's pod); `causeway show endpoints` names its node";
    if let Some(e) = no_gateway {
        return Some(Finding::warn(
            check,
            format!("no gateway runs on this node ({e})"),
            "peers, tunnels and probes are seen from the active gateway",
            fix,
        ));
    }
    (!active).then(|| {
        Finding::ok(
            check,
            "this node's gateway is a standby: it holds no tunnel",
            "only the active gateway has a configured WireGuard device (settled decision 4); checks of the tunnel run there",
        )
    })
}

/// Turns probe results into findings.
pub fn findings(f: &FirewallFacts) -> Vec<Finding> {
    let k = Check::Firewall;
    if let Some(finding) = not_here(k, f.no_gateway.as_deref(), f.active) {
        return vec![finding];
    }
    if f.peers.is_empty() {
        return vec![Finding::warn(
            k,
            "the active gateway has no peer to probe",
            "a gateway learns its peers from the other clusters' Endpoint records",
            "check that the gateway reaches the broker and that other clusters joined (`causeway show endpoints`)",
        )];
    }
    let mut out = Vec::new();
    for p in &f.peers {
        let ep = p
            .endpoint
            .map_or_else(|| "an unknown endpoint".to_owned(), |e| e.to_string());
        let port = p.endpoint.map_or(0, |e| e.port());
        let health = p
            .health_target
            .map_or_else(|| "no health address".into(), |h| h.to_string());
        let through_tunnel = match (&p.health, &p.tunnel_ping) {
            (Some(UdpOutcome::Answered { rtt_us }), _) => Some(("a health probe", *rtt_us)),
            (_, Some(PingOutcome::Reply { rtt_us })) => Some(("a ping", *rtt_us)),
            _ => None,
        };
        let allow = format!(
            "allow udp/{port} in both directions between the gateways (the far gateway node's nftables/iptables input, cloud security groups, any firewall on the way)"
        );
        let wg_why = "WireGuard carries all inter-cluster traffic over this one UDP port";
        out.push(match (&p.wireguard, through_tunnel) {
            (_, Some((how, rtt))) => Finding::ok(
                k,
                format!(
                    "WireGuard udp/{port} to peer {} at {ep}: passes both ways ({how} through the tunnel came back in {:.1} ms)",
                    p.peer,
                    rtt as f64 / 1000.0
                ),
                wg_why,
            ),
            (Some(UdpOutcome::Refused), None) => Finding::fail(
                k,
                format!("WireGuard udp/{port} to peer {} at {ep}: refused (ICMP port unreachable)", p.peer),
                "the peer's node is reachable but nothing listens on its WireGuard port: its gateway is down, standby on that address, or listens elsewhere",
                format!("check that peer {}'s active gateway runs and listens on {port} (its --listen-port), and that its Endpoint record names the active node", p.peer),
            ),
            (Some(UdpOutcome::Rejected(why)), None) => Finding::fail(
                k,
                format!("WireGuard udp/{port} to peer {} at {ep}: rejected ({why})", p.peer),
                "a firewall or a missing route on the way rejects the tunnel's packets",
                allow,
            ),
            (wg, None) => Finding::fail(
                k,
                format!(
                    "WireGuard udp/{port} to peer {} at {ep}: nothing passes the tunnel (no answer to health probes or pings through it; {})",
                    p.peer,
                    match wg {
                        Some(UdpOutcome::Silent) => "a datagram to the port drew no ICMP error, so it is dropped silently or the gateway ignores it".to_owned(),
                        Some(other) => format!("the direct probe: {other:?}"),
                        None => "the endpoint is unknown".to_owned(),
                    }
                ),
                "the tunnel's UDP packets are dropped on the way or at the far gateway (a firewall that drops rather than rejects), or the far gateway is down",
                allow,
            ),
        });
        let health_why = "each gateway decides whether a peer is connected from these probes; without answers the peer is reported down and left out of DNS answers";
        out.push(match (&p.health, &p.tunnel_ping) {
            (Some(UdpOutcome::Answered { rtt_us }), _) => Finding::ok(
                k,
                format!("health udp/{} at {health}: answered in {:.1} ms", p.health_target.map_or(0, |h| h.port()), *rtt_us as f64 / 1000.0),
                health_why,
            ),
            (_, Some(PingOutcome::Reply { .. })) => Finding::fail(
                k,
                format!(
                    "health udp/{} at {health}: no answer, though a ping through the tunnel is answered",
                    p.health_target.map_or(0, |h| h.port())
                ),
                format!("the tunnel works but the health port is dropped (or peer {}'s responder is not running), so both sides report the connection down", p.peer),
                format!(
                    "allow udp/{} to {} on peer {}'s gateway (input on its tunnel interface) from this gateway's tunnel address{}",
                    p.health_target.map_or(0, |h| h.port()),
                    p.health_target.map_or_else(String::new, |h| h.ip().to_string()),
                    p.peer,
                    f.tunnel_ip.map(|t| format!(" {t}")).unwrap_or_default()
                ),
            ),
            _ if f.tunnel_ip.is_none() || p.health_target.is_none() => Finding::warn(
                k,
                format!("health port of peer {}: not probed (no tunnel address here or no health address for the peer)", p.peer),
                health_why,
                "check the gateway's --tunnel-ip (or Globalnet's allocation) and the peer's Endpoint record",
            ),
            _ => Finding::warn(
                k,
                format!("health port at {health}: not reachable, because nothing passes the tunnel"),
                health_why,
                "fix the WireGuard port first (line above)",
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::host::fake::FakeHost;
    use super::super::metrics::PeerView;
    use super::*;

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

    fn host(wg: UdpOutcome, health: UdpOutcome, ping_passes: bool) -> FakeHost {
        let mut h = FakeHost::default();
        h.udp.insert("198.51.100.20:4500".parse().unwrap(), wg);
        h.udp.insert("242.1.0.1:51830".parse().unwrap(), health);
        if ping_passes {
            h.path_mtu.insert("242.1.0.1".parse().unwrap(), 1440);
        }
        h
    }

    #[test]
    fn table() {
        let cases = [
            (
                "healthy",
                host(
                    UdpOutcome::Silent,
                    UdpOutcome::Answered { rtt_us: 900 },
                    true,
                ),
                [Status::Ok, Status::Ok],
                "passes both ways (a health probe",
            ),
            (
                "wireguard port dropped",
                host(UdpOutcome::Silent, UdpOutcome::Silent, false),
                [Status::Fail, Status::Warn],
                "allow udp/4500 in both directions",
            ),
            (
                "nothing listens",
                host(UdpOutcome::Refused, UdpOutcome::Silent, false),
                [Status::Fail, Status::Warn],
                "refused (ICMP port unreachable)",
            ),
            (
                "rejected",
                host(
                    UdpOutcome::Rejected("No route to host".into()),
                    UdpOutcome::Silent,
                    false,
                ),
                [Status::Fail, Status::Warn],
                "rejected (No route to host)",
            ),
            (
                "health port dropped",
                host(UdpOutcome::Silent, UdpOutcome::Silent, true),
                [Status::Ok, Status::Fail],
                "allow udp/51830 to 242.1.0.1 on peer b's gateway",
            ),
        ];
        for (name, h, statuses, needle) in cases {
            let facts = gather(&h, &Ok(view()));
            let out = findings(&facts);
            crate::diagnose::assert_findings(name, &out, &statuses, needle);
        }
    }

    #[test]
    fn standby_and_absent_gateways() {
        let h = FakeHost::default();
        let standby = GatewayView {
            active: false,
            ..view()
        };
        let out = findings(&gather(&h, &Ok(standby)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Ok);
        assert!(h.pings.borrow().is_empty(), "a standby probes nothing");
        let out = findings(&gather(&h, &Err("connection refused".into())));
        assert_eq!(out[0].status, Status::Warn);
    }
}
