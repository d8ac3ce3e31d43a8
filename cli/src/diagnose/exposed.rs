//! The gateway metrics `causeway diagnose` reads besides the gateway's
//! usual ones: its tunnel (interface, backend, tunnel address, port, MTU),
//! each peer's endpoint, health address and public key, the wall-clock time
//! of its last handshake, probes sent and lost, and the egress IPs. Public
//! facts only: never a private key (settled decision 4).

use std::sync::atomic::AtomicU64;
use std::time::UNIX_EPOCH;

use causeway_gateway::engine::Gateway;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Registers the diagnostics metrics of `gateway` (called by the gateway's
/// metrics renderer, in a blocking task).
pub fn register(registry: &mut Registry, gateway: &Gateway) {
    let tunnel = Family::<Labels, Gauge>::default();
    let peer_info = Family::<Labels, Gauge>::default();
    let last_handshake = Family::<Labels, FloatGauge>::default();
    let sent = Family::<Labels, Gauge>::default();
    let lost = Family::<Labels, Gauge>::default();
    let egress = Family::<Labels, Gauge>::default();
    registry.register(
        "tunnel_info",
        "the tunnel: interface, backend, tunnel address, listen port, MTU",
        tunnel.clone(),
    );
    registry.register(
        "peer_info",
        "each peer's WireGuard endpoint, health-check address and public key",
        peer_info.clone(),
    );
    registry.register(
        "peer_last_handshake_timestamp_seconds",
        "unix time of the last handshake, on this node's clock",
        last_handshake.clone(),
    );
    registry.register(
        "peer_probes_sent",
        "health probes sent to the peer",
        sent.clone(),
    );
    registry.register(
        "peer_probes_lost",
        "health probes the peer did not answer in time",
        lost.clone(),
    );
    registry.register(
        "egress_ip",
        "1 for each egress global IP of the pool",
        egress.clone(),
    );

    let config = &gateway.config;
    tunnel
        .get_or_create(&labels(&[
            ("interface", gateway.cable.name().to_string()),
            ("backend", format!("{:?}", config.backend).to_lowercase()),
            ("tunnel_ip", config.tunnel_ip.to_string()),
            ("listen_port", config.listen_port.to_string()),
            ("mtu", config.mtu.to_string()),
        ]))
        .set(1);
    let state = gateway.state.borrow().clone();
    let device = gateway.cable.observe().ok().flatten();
    let health = gateway.health.borrow().as_ref().map(|h| h.snapshot());
    for (cluster, key) in &state.peer_keys {
        let peer = device.as_ref().and_then(|d| d.peers.get(key));
        let probe = health.as_ref().and_then(|h| {
            h.iter()
                .find(|(id, _)| id.to_string() == *cluster)
                .map(|(_, p)| p)
        });
        peer_info
            .get_or_create(&labels(&[
                ("peer", cluster.clone()),
                (
                    "endpoint",
                    peer.and_then(|p| p.config.endpoint)
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                ),
                (
                    "health",
                    probe.map(|p| p.target.to_string()).unwrap_or_default(),
                ),
                ("public_key", key.to_string()),
            ]))
            .set(1);
        let peer_labels = labels(&[("peer", cluster.clone())]);
        if let Some(t) = peer
            .and_then(|p| p.stats.last_handshake)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        {
            last_handshake
                .get_or_create(&peer_labels)
                .set(t.as_secs_f64());
        }
        if let Some(p) = probe {
            sent.get_or_create(&peer_labels).set(p.sent as i64);
            lost.get_or_create(&peer_labels).set(p.lost as i64);
        }
    }
    if let Some(plan) = gateway.nat.borrow().as_ref() {
        for ip in &plan.egress {
            egress
                .get_or_create(&labels(&[("egress_ip", ip.to_string())]))
                .set(1);
        }
    }
}
