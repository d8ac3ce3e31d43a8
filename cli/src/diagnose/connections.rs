//! `diagnose connections`: each peer's status, last handshake age, RTT and
//! probe loss, as the active gateway reports them; a peer that never
//! completed a handshake gets the side to look at (no reply from its
//! address: the far side; replies but no handshake: the keys; a last
//! handshake ahead of this node's clock: this side's clock).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::firewall::not_here;
use super::host::{Host, UdpOutcome};
use super::metrics::{GatewayView, PeerView};
use super::{Check, Finding};

/// WireGuard re-handshakes every 2 minutes while packets flow, and the
/// gateway's keepalive keeps them flowing: older than this is a dead tunnel.
const STALE_HANDSHAKE_S: f64 = 180.0;
/// Probe loss above this is worth a warning.
const LOSS_WARN: f64 = 0.05;
/// Clock skew tolerated before calling a handshake "in the future".
const CLOCK_SLACK_S: f64 = 5.0;

/// What the connections check reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectionsFacts {
    pub no_gateway: Option<String>,
    pub active: bool,
    /// This node's clock, as unix seconds.
    pub now_unix_s: f64,
    pub peers: BTreeMap<String, PeerView>,
    /// Per peer, probes (lost, sent) over a short interval now: the
    /// gateway's counters run since it became active, so an old outage
    /// would show in them for good.
    pub recent: BTreeMap<String, (u64, u64)>,
    /// Per peer without a handshake, a datagram to its WireGuard port.
    pub direct: BTreeMap<String, UdpOutcome>,
}

/// How long recent probe loss is watched for (the gateway probes once a second).
pub const LOSS_INTERVAL: Duration = Duration::from_secs(3);

/// Reads the gateway's view and the clock, and, when `interval` is not
/// zero, the gateway's probe counters again after `interval`.
pub fn gather(
    host: &dyn Host,
    gateway: &Result<GatewayView, String>,
    interval: Duration,
) -> ConnectionsFacts {
    let now_unix_s = host
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    match gateway {
        Ok(g) => {
            let mut recent = BTreeMap::new();
            if g.active && !g.peers.is_empty() && !interval.is_zero() {
                std::thread::sleep(interval);
                if let Ok(later) = host.gateway() {
                    for (name, p) in &g.peers {
                        let Some(q) = later.peers.get(name) else {
                            continue;
                        };
                        if let (Some(s0), Some(l0), Some(s1), Some(l1)) =
                            (p.probes_sent, p.probes_lost, q.probes_sent, q.probes_lost)
                            && s1 > s0
                        {
                            recent.insert(name.clone(), (l1.saturating_sub(l0), s1 - s0));
                        }
                    }
                }
            }
            let direct = g
                .peers
                .iter()
                .filter(|(_, p)| g.active && p.handshake_age_s.is_none())
                .filter_map(|(name, p)| {
                    let ep = p.endpoint?;
                    let outcome =
                        host.udp_probe(None, ep, &[0xff, 0, 0, 0], Duration::from_secs(1));
                    Some((name.clone(), outcome))
                })
                .collect();
            ConnectionsFacts {
                no_gateway: None,
                active: g.active,
                now_unix_s,
                peers: g.peers.clone(),
                recent,
                direct,
            }
        }
        Err(e) => ConnectionsFacts {
            no_gateway: Some(e.clone()),
            active: false,
            now_unix_s,
            peers: BTreeMap::new(),
            recent: BTreeMap::new(),
            direct: BTreeMap::new(),
        },
    }
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

/// Turns the gateway's view into one finding per peer.
pub fn findings(f: &ConnectionsFacts) -> Vec<Finding> {
    let k = Check::Connections;
    if let Some(finding) = not_here(k, f.no_gateway.as_deref(), f.active) {
        return vec![finding];
    }
    if f.peers.is_empty() {
        return vec![Finding::warn(
            k,
            "the active gateway has no peers",
            "a gateway builds one tunnel per remote cluster from the Endpoint records the broker carries",
            "check that the gateway reaches the broker and that other clusters joined (`causeway show endpoints`)",
        )];
    }
    let mut out = Vec::new();
    for (name, p) in &f.peers {
        let ep = p
            .endpoint
            .map_or_else(|| "its endpoint".to_owned(), |e| e.to_string());
        let port = p.endpoint.map_or(0, |e| e.port());
        let rx = p.rx_bytes.unwrap_or(0);
        let tx = p.tx_bytes.unwrap_or(0);
        let total = match (p.probes_sent, p.probes_lost) {
            (Some(sent), Some(lost)) if sent > 0 => Some((lost, sent, lost as f64 / sent as f64)),
            _ => None,
        };
        let recent = f
            .recent
            .get(name)
            .map(|&(lost, sent)| (lost, sent, lost as f64 / sent as f64));
        let loss_text = match (recent, total) {
            (Some((lost, sent, r)), Some((tl, ts, _))) => format!(
                ", loss {:.0}% now ({lost} of the last {sent} probes; {tl} of {ts} since it became active)",
                r * 100.0
            ),
            (_, Some((lost, sent, r))) => {
                format!(", loss {:.1}% ({lost} of {sent} probes)", r * 100.0)
            }
            _ => String::new(),
        };
        // Judge by what is lost now when that was measured.
        let loss = recent.or(total);
        let rtt = p
            .rtt_s
            .map_or_else(|| "no RTT yet".into(), |r| format!("RTT {}", ms(r)));
        if let Some(t) = p.last_handshake_unix_s
            && t > f.now_unix_s + CLOCK_SLACK_S
        {
            out.push(Finding::fail(
                k,
                format!(
                    "peer {name}: the last handshake is {:.0} s ahead of this node's clock",
                    t - f.now_unix_s
                ),
                format!("this node's clock went back: WireGuard refuses a handshake whose timestamp is not later than the last one it accepted (replay protection), so peer {name} ignores this side's handshakes until the clock passes the old one"),
                "look at this side: set this gateway node's clock right (NTP/chrony); the tunnel comes back once the clock passes the last handshake, or at once if the far gateway restarts",
            ));
            continue;
        }
        match p.handshake_age_s {
            None if tx == 0 && rx == 0 && p.probes_sent.unwrap_or(0) == 0 => {
                out.push(Finding::warn(
                    k,
                    format!("peer {name}: no handshake yet and no packet sent"),
                    "the tunnel starts with the first packet or keepalive; a gateway that just became active has not sent one yet",
                    "wait a few seconds and run diagnose again; if it stays, see the gateway's log",
                ))
            }
            None if rx == 0 => {
                let keys = format!(
                    "then compare keys: this gateway has {} for {name}, which must match {name}'s Endpoint record (`causeway show endpoints`) and key file, and {name} must hold this cluster's current key",
                    p.public_key.as_deref().unwrap_or("an unknown key")
                );
                let sent = format!(
                    "{} probes and {tx} bytes sent",
                    p.probes_sent.unwrap_or(0)
                );
                out.push(match f.direct.get(name) {
                    Some(UdpOutcome::Refused) => Finding::fail(
                        k,
                        format!("peer {name}: never completed a handshake ({sent}); udp/{port} at {ep} is refused (ICMP port unreachable)"),
                        "the peer's node answers but nothing listens on its WireGuard port",
                        format!("look at the far side: peer {name}'s gateway on {ep} is down or not the active one; its Endpoint record may name a node that lost the lease"),
                    ),
                    Some(UdpOutcome::Rejected(why)) => Finding::fail(
                        k,
                        format!("peer {name}: never completed a handshake ({sent}); udp/{port} to {ep} is rejected ({why})"),
                        "a firewall or a missing route between the gateways rejects the tunnel's packets",
                        format!("look between the sides: allow udp/{port} between the gateways, and check this node's route to {ep}"),
                    ),
                    _ => Finding::fail(
                        k,
                        format!("peer {name}: never completed a handshake ({sent}), nothing received from {ep}"),
                        format!("no reply comes from the peer's address: udp/{port} is dropped on the far node or on the way, its gateway is down, or it drops this side's handshakes because the keys do not match (WireGuard answers nothing it cannot authenticate)"),
                        format!("look at the far side first: peer {name}'s active gateway at {ep} (running? udp/{port} open in its firewall? `causeway diagnose firewall` there and here); {keys}"),
                    ),
                });
            }
            None => out.push(Finding::fail(
                k,
                format!("peer {name}: never completed a handshake, though {rx} bytes came back from {ep}"),
                "the peer answers but the handshake fails: a key mismatch, a stale public key in an Endpoint record or a cluster that joined again with a new key",
                format!(
                    "look at both sides' keys: this gateway has {} for {name}; compare it with {name}'s Endpoint record (`causeway show endpoints`) and {name}'s key file, and that {name} holds this cluster's current key",
                    p.public_key.as_deref().unwrap_or("an unknown key")
                ),
            )),
            Some(age) if age > STALE_HANDSHAKE_S => out.push(Finding::fail(
                k,
                format!("peer {name}: last handshake {age:.0} s ago{loss_text}"),
                "WireGuard re-handshakes every 2 minutes while packets flow and the gateway keeps them flowing: the tunnel has stopped",
                format!("run `causeway diagnose firewall` to see whether udp/{port} still gets through to {ep}, and check peer {name}'s active gateway"),
            )),
            Some(age) if p.connected == Some(false) => out.push(Finding::fail(
                k,
                format!("peer {name}: handshake {age:.0} s ago but health probes go unanswered{loss_text}"),
                format!("the tunnel is up, yet this cluster reports {name} down and leaves it out of DNS answers"),
                format!("run `causeway diagnose firewall` here: it probes through the tunnel and tells whether WireGuard's udp/{port} or the health port (udp/51830) is dropped"),
            )),
            Some(age) => {
                let what = format!("peer {name}: connected, handshake {age:.0} s ago, {rtt}{loss_text}");
                let why = "a fresh handshake and answered probes mean the tunnel carries traffic both ways";
                out.push(match loss {
                    Some((_, _, r)) if r > LOSS_WARN => Finding::warn(
                        k,
                        what,
                        why,
                        "probe loss on a working tunnel points at a congested or lossy underlay: check the path between the gateways",
                    ),
                    _ => Finding::ok(k, what, why),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    fn facts(p: PeerView) -> ConnectionsFacts {
        ConnectionsFacts {
            no_gateway: None,
            active: true,
            now_unix_s: NOW,
            peers: BTreeMap::from([("b".to_owned(), p)]),
            recent: BTreeMap::new(),
            direct: BTreeMap::new(),
        }
    }

    fn healthy() -> PeerView {
        PeerView {
            endpoint: Some("198.51.100.20:4500".parse().unwrap()),
            public_key: Some("KEY".into()),
            connected: Some(true),
            handshake_age_s: Some(3.0),
            last_handshake_unix_s: Some(NOW - 3.0),
            rtt_s: Some(0.0016),
            probes_sent: Some(100),
            probes_lost: Some(0),
            rx_bytes: Some(416),
            tx_bytes: Some(416),
            ..Default::default()
        }
    }

    #[test]
    fn an_old_outage_does_not_count_when_recent_probes_pass() {
        let mut p = healthy();
        p.probes_lost = Some(30);
        let mut f = facts(p);
        f.recent.insert("b".into(), (0, 3));
        let out = findings(&f);
        assert_eq!(out[0].status, Status::Ok, "{out:#?}");
        assert!(
            out[0]
                .what
                .contains("loss 0% now (0 of the last 3 probes; 30 of 100 since it became active)"),
            "{out:#?}"
        );
        f.recent.insert("b".into(), (2, 3));
        assert_eq!(findings(&f)[0].status, Status::Warn);
    }

    #[test]
    fn recent_loss_comes_from_a_second_reading() {
        use super::super::host::fake::FakeHost;
        let mut later = GatewayView {
            active: true,
            ..Default::default()
        };
        let mut p = healthy();
        p.probes_sent = Some(103);
        p.probes_lost = Some(1);
        later.peers.insert("b".into(), p);
        let host = FakeHost {
            gateway: Ok(later),
            ..Default::default()
        };
        let mut first = GatewayView {
            active: true,
            ..Default::default()
        };
        first.peers.insert("b".into(), healthy());
        let f = gather(&host, &Ok(first), Duration::from_millis(1));
        assert_eq!(f.recent["b"], (1, 3));
    }

    #[test]
    fn a_refused_port_points_at_the_far_gateway() {
        let mut p = healthy();
        p.handshake_age_s = None;
        p.last_handshake_unix_s = None;
        p.rx_bytes = Some(0);
        let mut f = facts(p);
        f.direct.insert("b".into(), UdpOutcome::Refused);
        let out = findings(&f);
        assert_eq!(out[0].status, Status::Fail);
        assert!(
            out[0].what.contains("is refused (ICMP port unreachable)"),
            "{out:#?}"
        );
        assert!(
            out[0]
                .fix
                .as_deref()
                .unwrap()
                .starts_with("look at the far side: peer b's gateway")
        );
    }

    #[test]
    fn table() {
        type Case = (&'static str, fn(&mut PeerView), Status, &'static str);
        let cases: Vec<Case> = vec![
            (
                "healthy",
                |_| {},
                Status::Ok,
                "connected, handshake 3 s ago, RTT 1.6 ms, loss 0.0%",
            ),
            (
                "lossy",
                |p| p.probes_lost = Some(10),
                Status::Warn,
                "loss 10.0% (10 of 100 probes)",
            ),
            (
                "no reply from the far side",
                |p| {
                    p.handshake_age_s = None;
                    p.last_handshake_unix_s = None;
                    p.rx_bytes = Some(0);
                    p.tx_bytes = Some(1480);
                },
                Status::Fail,
                "look at the far side first: peer b's active gateway at 198.51.100.20:4500",
            ),
            (
                "key mismatch",
                |p| {
                    p.handshake_age_s = None;
                    p.last_handshake_unix_s = None;
                    p.rx_bytes = Some(92);
                },
                Status::Fail,
                "look at both sides' keys: this gateway has KEY for b",
            ),
            (
                "clock behind",
                |p| {
                    p.handshake_age_s = None;
                    p.last_handshake_unix_s = Some(NOW + 600.0);
                },
                Status::Fail,
                "600 s ahead of this node's clock",
            ),
            (
                "stale",
                |p| p.handshake_age_s = Some(400.0),
                Status::Fail,
                "last handshake 400 s ago",
            ),
            (
                "health unanswered",
                |p| p.connected = Some(false),
                Status::Fail,
                "whether WireGuard's udp/4500 or the health port (udp/51830) is dropped",
            ),
            (
                "nothing sent yet",
                |p| {
                    p.handshake_age_s = None;
                    p.rx_bytes = Some(0);
                    p.tx_bytes = Some(0);
                    p.probes_sent = Some(0);
                },
                Status::Warn,
                "no handshake yet",
            ),
        ];
        for (name, change, status, needle) in cases {
            let mut p = healthy();
            change(&mut p);
            let out = findings(&facts(p));
            assert_eq!(out.len(), 1, "{name}");
            assert_eq!(out[0].status, status, "{name}: {out:#?}");
            let text = format!("{out:?}");
            assert!(text.contains(needle), "{name}: no {needle:?} in {text}");
        }
    }
}
