//! What the running gateway tells about itself on `/metrics` (Prometheus
//! text), read into a [`GatewayView`]: whether it is active, its tunnel, and
//! per peer the endpoint, handshake, RTT, loss and counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

/// One sample: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Reads the samples of a Prometheus text exposition; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_owned(),
                labels: BTreeMap::new(),
                value: value.split_whitespace().next()?.parse().ok()?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = None;
    loop {
        // key
        let mut key = String::new();
        for (i, c) in chars.by_ref() {
            match c {
                '=' => break,
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                c => key.push(c),
            }
        }
        if end.is_some() {
            break;
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        for (_, c) in chars.by_ref() {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => break,
                (false, c) => value.push(c),
            }
        }
        labels.insert(key, value);
        if let Some(&(i, '}')) = chars.peek() {
            end = Some(i);
            break;
        }
        chars.peek()?;
    }
    let value = rest[end? + 1..].split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// What the gateway says about one peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerView {
    /// Where WireGuard sends to (the current endpoint, after roaming).
    pub endpoint: Option<SocketAddr>,
    /// Where health probes go (the peer's tunnel address).
    pub health: Option<SocketAddr>,
    pub public_key: Option<String>,
    pub connected: Option<bool>,
    pub handshake_age_s: Option<f64>,
    /// Unix time of the last handshake, as this node's clock has it.
    pub last_handshake_unix_s: Option<f64>,
    pub rtt_s: Option<f64>,
    pub probes_sent: Option<u64>,
    pub probes_lost: Option<u64>,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
}

/// What the gateway on this node says about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GatewayView {
    pub active: bool,
    /// The WireGuard interface.
    pub interface: String,
    /// `kernel`, `wireguard-go`, `userspace`.
    pub backend: Option<String>,
    pub tunnel_ip: Option<IpAddr>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
    pub peers: BTreeMap<String, PeerView>,
    pub egress_ips: Vec<Ipv4Addr>,
}

const PREFIX: &str = "causeway_gateway_";

impl GatewayView {
    /// Reads the gateway's metrics; `interface` is the default when the
    /// gateway does not name its own.
    pub fn from_metrics(text: &str, interface: &str) -> Self {
        let mut view = GatewayView {
            interface: interface.to_owned(),
            ..Default::default()
        };
        for s in parse(text) {
            let Some(name) = s.name.strip_prefix(PREFIX) else {
                continue;
            };
            let label = |k: &str| s.labels.get(k).filter(|v| !v.is_empty());
            let int = || (s.value >= 0.0).then_some(s.value as u64);
            match name {
                "active" => view.active = s.value == 1.0,
                "tunnel_info" => {
                    if let Some(i) = label("interface") {
                        view.interface = i.clone();
                    }
                    view.backend = label("backend").cloned();
                    view.tunnel_ip = label("tunnel_ip").and_then(|v| v.parse().ok());
                    view.listen_port = label("listen_port").and_then(|v| v.parse().ok());
                    view.mtu = label("mtu").and_then(|v| v.parse().ok());
                }
                "egress_ip" => view
                    .egress_ips
                    .extend(label("egress_ip").and_then(|v| v.parse::<Ipv4Addr>().ok())),
                _ => {
                    let Some(field) = name.strip_prefix("peer_") else {
                        continue;
                    };
                    let Some(peer) = label("peer") else {
                        continue;
                    };
                    let p = view.peers.entry(peer.clone()).or_default();
                    match field {
                        "info" => {
                            p.endpoint = label("endpoint").and_then(|v| v.parse().ok());
                            p.health = label("health").and_then(|v| v.parse().ok());
                            p.public_key = label("public_key").cloned();
                        }
                        "connected" => p.connected = Some(s.value == 1.0),
                        "handshake_age_seconds" => p.handshake_age_s = Some(s.value),
                        "last_handshake_timestamp_seconds" => {
                            p.last_handshake_unix_s = Some(s.value)
                        }
                        "rtt_seconds" => p.rtt_s = Some(s.value),
                        "probes_sent" => p.probes_sent = int(),
                        "probes_lost" => p.probes_lost = int(),
                        "rx_bytes" => p.rx_bytes = int(),
                        "tx_bytes" => p.tx_bytes = int(),
                        _ => {}
                    }
                }
            }
        }
        view.egress_ips.sort();
        view.egress_ips.dedup();
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP causeway_gateway_active 1 while this candidate is the active gateway.
# TYPE causeway_gateway_active gauge
causeway_gateway_active 1
causeway_gateway_tunnel_info{interface="causeway0",backend="userspace",tunnel_ip="242.0.0.1",listen_port="4500",mtu="1440"} 1
causeway_gateway_peer_info{peer="b",endpoint="198.51.100.20:4500",health="242.1.0.1:51830",public_key="k\"ey"} 1
causeway_gateway_peer_rx_bytes{peer="b"} 416
causeway_gateway_peer_handshake_age_seconds{peer="b"} 3.797253169
causeway_gateway_peer_connected{peer="b"} 1
causeway_gateway_peer_probes_lost{peer="b"} 2
causeway_gateway_egress_ip{egress_ip="242.0.0.3"} 1
causeway_gateway_egress_ip{egress_ip="242.0.0.2"} 1
causeway_gateway_conntrack_max 262144
# EOF
"#;

    #[test]
    fn reads_the_gateway() {
        let v = GatewayView::from_metrics(TEXT, "wg0");
        assert!(v.active);
        assert_eq!(v.interface, "causeway0");
        assert_eq!(v.backend.as_deref(), Some("userspace"));
        assert_eq!(v.tunnel_ip, Some("242.0.0.1".parse().unwrap()));
        assert_eq!(v.listen_port, Some(4500));
        assert_eq!(v.mtu, Some(1440));
        let b = &v.peers["b"];
        assert_eq!(b.endpoint, Some("198.51.100.20:4500".parse().unwrap()));
        assert_eq!(b.health, Some("242.1.0.1:51830".parse().unwrap()));
        assert_eq!(b.public_key.as_deref(), Some("k\"ey"));
        assert_eq!(b.rx_bytes, Some(416));
        assert_eq!(b.connected, Some(true));
        assert_eq!(b.probes_lost, Some(2));
        assert!((b.handshake_age_s.unwrap() - 3.797).abs() < 0.01);
        assert_eq!(
            v.egress_ips,
            vec![
                "242.0.0.2".parse::<Ipv4Addr>().unwrap(),
                "242.0.0.3".parse().unwrap()
            ]
        );
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        assert_eq!(parse("x{a=b} 1\ny 2\nz{a=\"1\"} nan-ish\n").len(), 1);
    }
}
