use super::*;
use causeway_api::records::{Cluster, ConnectionStatus, Endpoint, ServiceImport};
use serde_json::json;

const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn records() -> Vec<AnyRecord> {
    let cluster = |id: &str, g: &str| {
        AnyRecord::Cluster(
            serde_json::from_value::<Cluster>(json!({
                "id": id, "podCidrs": ["10.244.0.0/16"], "serviceCidrs": ["10.96.0.0/12"],
                "globalCidr": g,
            }))
            .unwrap(),
        )
    };
    let endpoint = |id: &str, node: &str, ip: &str| {
        AnyRecord::Endpoint(
            serde_json::from_value::<Endpoint>(json!({
                "cluster": id, "nodeName": node, "publicIp": ip, "privateIp": "192.168.50.10",
                "port": 4500, "publicKey": KEY, "subnets": [], "backend": "userspace", "mtu": 1420,
            }))
            .unwrap(),
        )
    };
    let status = |id: &str, peer: &str, state: &str| {
        AnyRecord::ConnectionStatus(
            serde_json::from_value::<ConnectionStatus>(json!({
                "cluster": id, "peer": peer, "state": state, "sinceMs": 1,
                "rtt": {"lastUs": 500, "minUs": 400, "meanUs": 450, "maxUs": 900},
            }))
            .unwrap(),
        )
    };
    let import = AnyRecord::ServiceImport(
        serde_json::from_value::<ServiceImport>(json!({
            "cluster": "b", "namespace": "default", "name": "web", "type": "ClusterSetIP",
            "ports": [{"protocol": "TCP", "port": 80}], "addresses": ["242.1.0.10"],
            "clusterIps": ["10.96.0.10"],
        }))
        .unwrap(),
    );
    vec![
        cluster("a", "242.0.0.0/16"),
        cluster("b", "242.1.0.0/16"),
        endpoint("a", "node-0", "198.51.100.10"),
        endpoint("b", "node-1", "198.51.100.21"),
        status("a", "b", "connected"),
        status("b", "a", "connected"),
        import,
    ]
}

fn candidates() -> Candidates {
    Candidates::from([
        (
            "a".to_owned(),
            vec![("node-0".to_owned(), true), ("node-1".to_owned(), true)],
        ),
        (
            "b".to_owned(),
            vec![("node-0".to_owned(), false), ("node-1".to_owned(), true)],
        ),
    ])
}

fn metrics() -> BTreeMap<String, BTreeMap<String, PeerMetrics>> {
    let text = "# HELP causeway_gateway_peer_rtt_seconds mean round trip of health probes\n\
        # TYPE causeway_gateway_peer_rtt_seconds gauge\n\
        causeway_gateway_peer_rtt_seconds{peer=\"b\"} 0.00125\n\
        causeway_gateway_peer_connected{peer=\"b\"} 1\n\
        causeway_gateway_active 1\n";
    BTreeMap::from([("a".to_owned(), parse_metrics(text))])
}

#[test]
fn metrics_give_rtt_and_health_per_peer() {
    let m = &metrics()["a"];
    assert_eq!(
        m["b"],
        PeerMetrics {
            rtt_seconds: Some(0.00125),
            connected: Some(true)
        }
    );
    assert_eq!(m.len(), 1, "series without a peer label are ignored");
}

#[test]
fn gateways_are_active_standby_or_down_and_tunnels_carry_rtt() {
    let t = Topology::from_records(&records(), &candidates(), &metrics());
    let b = t.clusters.iter().find(|c| c.id == "b").unwrap();
    let states: Vec<(&str, GatewayState)> = b
        .gateways
        .iter()
        .map(|g| (g.node.as_str(), g.state))
        .collect();
    assert_eq!(
        states,
        [
            ("node-1", GatewayState::Active),
            ("node-0", GatewayState::Down)
        ]
    );
    assert_eq!(b.global_cidr.as_deref(), Some("242.1.0.0/16"));
    assert_eq!(b.exports[0].service, "default/web");
    assert_eq!(b.exports[0].address.as_deref(), Some("242.1.0.10"));
    let ab = t.tunnel("a", "b").unwrap();
    assert_eq!(ab.state, "connected");
    assert_eq!(ab.rtt_ms, Some(1.25), "metrics win over the record");
    let ba = t.tunnel("b", "a").unwrap();
    assert_eq!(ba.rtt_ms, Some(0.45), "the record's mean without metrics");
}

#[test]
fn text_names_every_part() {
    let text = render_text(&Topology::from_records(
        &records(),
        &candidates(),
        &metrics(),
    ));
    for want in [
        "cluster a  global CIDR 242.0.0.0/16",
        "gateway node-0     active   198.51.100.10:4500 userspace",
        "gateway node-1     standby",
        "export  default/web",
        "tunnel a <-> b: a sees connected 1.25 ms, b sees connected 0.45 ms",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

#[test]
fn dot_ties_clusters_to_gateways_and_gateways_by_tunnels() {
    let dot = render_dot(&Topology::from_records(
        &records(),
        &candidates(),
        &metrics(),
    ));
    assert!(dot.starts_with("graph clusterset {"), "{dot}");
    assert!(dot.contains("\"c-a\" -- \"g-a-node-0\""), "{dot}");
    assert!(
        dot.contains("\"g-a-node-0\" -- \"g-b-node-1\" [label=\"a: connected 1.25 ms\\nb: connected 0.45 ms\""),
        "{dot}"
    );
    assert!(dot.contains("b/node-0\\ndown"), "{dot}");
}

#[test]
fn svg_is_laid_out_with_every_label() {
    let svg = render_svg(&Topology::from_records(
        &records(),
        &candidates(),
        &metrics(),
    ))
    .unwrap();
    assert!(svg.contains("<svg"), "{svg}");
    for want in [
        "cluster a",
        "global 242.1.0.0/16",
        "export default/web 242.1.0.10",
        "a/node-0",
        "standby",
        "connected 1.25 ms",
    ] {
        assert!(svg.contains(want), "{want:?} missing from the SVG");
    }
}

#[test]
fn a_tunnel_that_is_down_is_drawn_red() {
    let mut recs = records();
    for r in &mut recs {
        if let AnyRecord::ConnectionStatus(s) = r
            && s.cluster.as_str() == "b"
        {
            s.state = ConnectionState::Error;
            s.reason = Some("no handshake".into());
        }
    }
    let t = Topology::from_records(&recs, &candidates(), &BTreeMap::new());
    assert_eq!(t.tunnel("b", "a").unwrap().state, "error");
    assert!(render_dot(&t).contains("color=\"#c62828\", penwidth=2"));
}

/// The DOT of two clusters, reviewed like code (`UPDATE_GOLDEN=1` rewrites it).
#[test]
fn dot_matches_its_golden_file() {
    let dot = render_dot(&Topology::from_records(
        &records(),
        &candidates(),
        &metrics(),
    ));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/topology/golden/two-clusters.dot");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &dot).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        dot,
        want,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}
