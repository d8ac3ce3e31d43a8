//! Responder and prober over loopback, every wait bounded.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn fast_config() -> ProberConfig {
    ProberConfig {
        interval: Duration::from_millis(40),
        // Generous, so a loaded machine does not lose loopback replies.
        timeout: Duration::from_millis(250),
        ..ProberConfig::new(LOOPBACK)
    }
}

/// The next change, or a panic after 5 s.
async fn next(rx: &mut mpsc::UnboundedReceiver<StatusChange<String>>) -> StatusChange<String> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a status change within 5 s")
        .expect("prober still running")
}

fn start_responder(addr: SocketAddr) -> (SocketAddr, CancellationToken) {
    let responder = Responder::bind(addr).unwrap();
    let bound = responder.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(responder.run(cancel.clone()));
    (bound, cancel)
}

#[tokio::test]
async fn peer_goes_connected_error_connected() {
    let (responder_addr, stop_responder) = start_responder(SocketAddr::new(LOOPBACK, 0));
    let prober: Prober<String> = Prober::bind(fast_config()).unwrap();
    let view = prober.view();
    let (peers_tx, peers_rx) = watch::channel(BTreeMap::from([("b".to_string(), responder_addr)]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(prober.run(peers_rx, tx, cancel.clone()));

    let c = next(&mut rx).await;
    assert_eq!(
        (c.peer.as_str(), c.previous, c.status.state),
        ("b", None, HealthState::Connecting)
    );
    let c = next(&mut rx).await;
    assert_eq!(c.previous, Some(HealthState::Connecting));
    assert_eq!(c.status.state, HealthState::Connected);
    let rtt = c.rtt.expect("an RTT sample");
    assert!(rtt.last < Duration::from_millis(250), "{rtt:?}");

    // Several more replies, and no change is emitted for them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "no change while connected");
    let health = view.get(&"b".to_string()).unwrap();
    assert!(health.received >= 3, "{health:?}");
    assert!(health.rtt.unwrap().min <= health.rtt.unwrap().max);

    // The responder goes away: error after 3 lost probes.
    stop_responder.cancel();
    let c = next(&mut rx).await;
    assert_eq!(c.status.state, HealthState::Error);
    assert_eq!(c.status.reason, "no reply to the last 3 probes");
    assert!(view.get(&"b".to_string()).unwrap().lost >= 3);

    // It comes back on the same port: connected again.
    let (_, stop_again) = start_responder(responder_addr);
    let c = next(&mut rx).await;
    assert_eq!(c.previous, Some(HealthState::Error));
    assert_eq!(c.status.state, HealthState::Connected);

    // A removed peer is forgotten.
    peers_tx.send_replace(BTreeMap::new());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(view.snapshot().is_empty());

    cancel.cancel();
    stop_again.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_silent_peer_turns_to_error_without_connecting() {
    // A port nobody listens on.
    let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let prober: Prober<String> = Prober::bind(fast_config()).unwrap();
    let (_peers_tx, peers_rx) = watch::channel(BTreeMap::from([("c".to_string(), silent)]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(prober.run(peers_rx, tx, cancel.clone()));
    assert_eq!(next(&mut rx).await.status.state, HealthState::Connecting);
    let c = next(&mut rx).await;
    assert_eq!(
        (c.previous, c.status.state),
        (Some(HealthState::Connecting), HealthState::Error)
    );
    assert_eq!(c.rtt, None);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn responder_ignores_malformed_packets_and_echoes_probes() {
    let (responder_addr, stop) = start_responder(SocketAddr::new(LOOPBACK, 0));
    let client = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let probe = Packet {
        kind: Kind::Probe,
        seq: 42,
        sent_ns: 7,
    };
    let reply = probe.reply().encode();
    let garbage: [&[u8]; 3] = [b"hello", &[0u8; 24], &reply];
    for bytes in garbage {
        client.send_to(bytes, responder_addr).await.unwrap();
        let got =
            tokio::time::timeout(Duration::from_millis(150), client.recv_from(&mut buf)).await;
        assert!(got.is_err(), "no answer to {bytes:?}");
    }
    client
        .send_to(&probe.encode(), responder_addr)
        .await
        .unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(from, responder_addr);
    assert_eq!(Packet::decode(&buf[..n]), Some(probe.reply()));
    stop.cancel();
}

#[tokio::test]
async fn prober_ignores_forged_replies() {
    let prober: Prober<String> = Prober::bind(fast_config()).unwrap();
    let prober_addr = prober.local_addr().unwrap();
    // The "peer" is a socket we control: it answers with a wrong timestamp.
    let peer = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let (_peers_tx, peers_rx) = watch::channel(BTreeMap::from([(
        "d".to_string(),
        peer.local_addr().unwrap(),
    )]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(prober.run(peers_rx, tx, cancel.clone()));
    assert_eq!(next(&mut rx).await.status.state, HealthState::Connecting);
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, prober_addr);
        let p = Packet::decode(&buf[..n]).unwrap();
        let forged = Packet {
            sent_ns: p.sent_ns ^ 1,
            ..p.reply()
        };
        peer.send_to(&forged.encode(), from).await.unwrap();
    }
    let c = next(&mut rx).await;
    assert_eq!(
        c.status.state,
        HealthState::Error,
        "forged replies do not count"
    );
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn status_change_becomes_a_connection_status_record() {
    use causeway_api::ClusterId;
    use causeway_api::records::ConnectionState;
    let since = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let ms = Duration::from_millis;
    let change = StatusChange {
        peer: ClusterId::new("b").unwrap(),
        previous: Some(HealthState::Connected),
        status: Status {
            state: HealthState::Error,
            reason: "no reply to the last 3 probes".into(),
            since,
        },
        rtt: Some(RttStats {
            last: ms(2),
            min: ms(1),
            mean: Duration::from_micros(1500),
            max: ms(2),
            stddev: Duration::from_micros(500),
        }),
    };
    let r = change.to_record(&ClusterId::new("a").unwrap());
    assert_eq!((r.cluster.as_str(), r.peer.as_str()), ("a", "b"));
    assert_eq!(r.state, ConnectionState::Error);
    assert_eq!(r.reason.as_deref(), Some("no reply to the last 3 probes"));
    assert_eq!(r.since_ms, 1_700_000_000_123);
    let rtt = r.rtt.unwrap();
    assert_eq!(
        (rtt.last_us, rtt.min_us, rtt.mean_us, rtt.max_us),
        (2000, 1000, 1500, 2000)
    );
    let connected = StatusChange {
        status: Status {
            state: HealthState::Connected,
            ..change.status.clone()
        },
        ..change
    };
    assert_eq!(
        connected.to_record(&ClusterId::new("a").unwrap()).reason,
        None
    );
}
