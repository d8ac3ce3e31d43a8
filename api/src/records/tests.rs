use std::net::IpAddr;

use super::*;

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn sample_cluster(name: &str) -> Cluster {
    Cluster {
        id: id(name),
        pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        global_cidr: Some("242.1.0.0/16".parse().unwrap()),
    }
}

pub(crate) fn sample_endpoint(name: &str) -> Endpoint {
    Endpoint {
        cluster: id(name),
        node_name: "gw-1".into(),
        public_ip: Some(ip("192.0.2.10")),
        private_ip: ip("172.18.0.2"),
        port: 4500,
        public_key: WireGuardKey::from_bytes([1; 32]),
        subnets: vec!["242.1.0.0/16".parse().unwrap()],
        backend: CableBackend::Kernel,
        mtu: 1420,
        health_check_ip: Some(ip("242.1.0.1")),
        egress_ips: vec![ip("242.1.0.2"), ip("242.1.0.3")],
    }
}

pub(crate) fn sample_import(cluster: &str, ns: &str, name: &str) -> ServiceImport {
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new(ns).unwrap(),
        name: ObjectName::new(name).unwrap(),
        kind: ServiceImportType::ClusterSetIP,
        ports: vec![ServicePort {
            name: Some("http".into()),
            protocol: Protocol::Tcp,
            port: 80,
        }],
        addresses: vec![ip("242.1.0.10")],
        cluster_ips: vec![ip("10.96.0.10")],
        endpoints: vec![],
        exported_at_ms: 0,
        pods: None,
        unready: false,
        properties: Default::default(),
    }
}

fn headless() -> ServiceImport {
    ServiceImport {
        kind: ServiceImportType::Headless,
        addresses: vec![],
        cluster_ips: vec![],
        endpoints: vec![HeadlessEndpoint {
            hostname: Some("web-0".into()),
            address: ip("242.1.0.11"),
            local_address: ip("10.244.1.5"),
        }],
        ..sample_import("a", "default", "web")
    }
}

fn status() -> ConnectionStatus {
    ConnectionStatus {
        cluster: id("a"),
        peer: id("b"),
        state: ConnectionState::Connected,
        reason: None,
        rtt: Some(RttStats {
            last_us: 300,
            min_us: 200,
            mean_us: 310,
            max_us: 900,
        }),
        since_ms: 1_700_000_000_000,
    }
}

#[test]
fn every_kind_round_trips_through_the_envelope() {
    let records: Vec<AnyRecord> = vec![
        sample_cluster("a").into(),
        sample_endpoint("a").into(),
        sample_import("a", "default", "web").into(),
        headless().into(),
        status().into(),
    ];
    for r in records {
        let bytes = encode(&r);
        let back = decode(&r.key(), &bytes).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], 1);
    }
}

#[test]
fn envelope_shape_is_stable() {
    let bytes = encode(&sample_endpoint("a").into());
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["kind"], "Endpoint");
    assert_eq!(
        v["spec"]["publicKey"],
        WireGuardKey::from_bytes([1; 32]).to_base64()
    );
    assert_eq!(v["spec"]["backend"], "kernel");
    let bytes = encode(&headless().into());
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["spec"]["type"], "Headless");
    assert_eq!(v["spec"]["ports"][0]["protocol"], "TCP");
}

#[test]
fn decode_refuses_bad_records() {
    let good: AnyRecord = sample_endpoint("a").into();
    let key = good.key();
    let mut v: serde_json::Value = serde_json::from_slice(&encode(&good)).unwrap();

    let mut newer = v.clone();
    newer["version"] = 2.into();
    let mut wrong_kind = v.clone();
    wrong_kind["kind"] = "Cluster".into();
    let mut bad_port = v.clone();
    bad_port["spec"]["port"] = 0.into();
    let mut unknown_field = v.clone();
    unknown_field["spec"]["extra"] = 1.into();
    v["spec"]["cluster"] = "b".into();
    let foreign = v;

    type Check = fn(&DecodeError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("garbage", b"{not json".to_vec(), |e| {
            matches!(e, DecodeError::Malformed { .. })
        }),
        ("newer", serde_json::to_vec(&newer).unwrap(), |e| {
            matches!(e, DecodeError::Version { found: 2, .. })
        }),
        ("kind", serde_json::to_vec(&wrong_kind).unwrap(), |e| {
            matches!(e, DecodeError::WrongKind { .. })
        }),
        ("port", serde_json::to_vec(&bad_port).unwrap(), |e| {
            matches!(e, DecodeError::Invalid(_))
        }),
        ("foreign", serde_json::to_vec(&foreign).unwrap(), |e| {
            matches!(e, DecodeError::Foreign { .. })
        }),
    ];
    for (name, bytes, check) in cases {
        let e = decode(&key, &bytes).expect_err(name);
        assert!(check(&e), "{name}: {e}");
    }
    // A field added by a newer writer within the same envelope version is
    // ignored, so rolling upgrades keep working.
    let r = decode(&key, &serde_json::to_vec(&unknown_field).unwrap()).unwrap();
    assert_eq!(r, good);
}

/// An import with every MCS property set.
fn with_properties() -> ServiceImport {
    let mut r = sample_import("a", "default", "web");
    r.exported_at_ms = 1_700_000_000_000;
    r.properties = Box::new(ExportProperties {
        session_affinity: SessionAffinity::ClientIp,
        session_affinity_config: Some(SessionAffinityConfig {
            client_ip: Some(ClientIpConfig {
                timeout_seconds: Some(10),
            }),
        }),
        internal_traffic_policy: Some("Local".into()),
        traffic_distribution: Some("PreferClose".into()),
        ip_families: vec![IpFamily::IPv4],
        exported_labels: [("tier".to_owned(), "web".to_owned())].into(),
        exported_annotations: [("team".to_owned(), "blue".to_owned())].into(),
    });
    r
}

#[test]
fn mcs_properties_round_trip_and_old_records_read_as_defaults() {
    let r: AnyRecord = with_properties().into();
    let bytes = encode(&r);
    assert_eq!(decode(&r.key(), &bytes).unwrap(), r);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let spec = &v["spec"];
    assert_eq!(spec["sessionAffinity"], "ClientIP");
    assert_eq!(
        spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10
    );
    assert_eq!(spec["internalTrafficPolicy"], "Local");
    assert_eq!(spec["trafficDistribution"], "PreferClose");
    assert_eq!(spec["ipFamilies"], serde_json::json!(["IPv4"]));
    assert_eq!(spec["exportedLabels"]["tier"], "web");
    assert_eq!(spec["exportedAnnotations"]["team"], "blue");

    // A record written before these fields existed (and one with defaults:
    // nothing new is written) reads as the defaults.
    let old = br#"{"version":1,"kind":"ServiceImport","spec":{"cluster":"a","namespace":"default","name":"web","type":"ClusterSetIP","ports":[{"name":"http","protocol":"TCP","port":80}],"addresses":["242.1.0.10"],"clusterIps":["10.96.0.10"],"endpoints":[]}}"#;
    let plain: AnyRecord = sample_import("a", "default", "web").into();
    assert_eq!(decode(&plain.key(), old).unwrap(), plain);
    let v: serde_json::Value = serde_json::from_slice(&encode(&plain)).unwrap();
    for field in [
        "sessionAffinity",
        "sessionAffinityConfig",
        "ipFamilies",
        "exportedLabels",
    ] {
        assert!(v["spec"].get(field).is_none(), "{field} written: {v}");
    }
}

#[test]
fn validation_table() {
    let mut overlapping = sample_cluster("a");
    overlapping.global_cidr = Some("10.244.0.0/16".parse().unwrap());
    let mut host_bits = sample_cluster("a");
    host_bits.pod_cidrs = vec!["10.244.0.1/16".parse().unwrap()];
    let mut no_addr = sample_import("a", "default", "web");
    no_addr.addresses.clear();
    let mut headless_with_ip = headless();
    headless_with_ip.cluster_ips = vec![ip("10.96.0.1")];
    let mut bad_host = headless();
    bad_host.endpoints[0].hostname = Some("Web_0".into());
    let mut self_status = status();
    self_status.peer = id("a");
    let mut error_without_reason = status();
    error_without_reason.state = ConnectionState::Error;
    let mut small_mtu = sample_endpoint("a");
    small_mtu.mtu = 500;
    let mut foreign_egress = sample_endpoint("a");
    foreign_egress.egress_ips.push(ip("242.0.0.2"));
    let mut long_affinity = with_properties();
    long_affinity.properties.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIpConfig {
            timeout_seconds: Some(86_401),
        }),
    });
    let mut twice_v4 = with_properties();
    twice_v4.properties.ip_families = vec![IpFamily::IPv4, IpFamily::IPv4];

    let cases: Vec<(&str, AnyRecord, bool)> = vec![
        ("cluster", sample_cluster("a").into(), true),
        ("overlap", overlapping.into(), false),
        ("host bits", host_bits.into(), false),
        ("import", sample_import("a", "ns", "svc").into(), true),
        ("no address", no_addr.into(), false),
        ("headless", headless().into(), true),
        ("headless with ip", headless_with_ip.into(), false),
        ("bad hostname", bad_host.into(), false),
        ("status", status().into(), true),
        ("self status", self_status.into(), false),
        ("error w/o reason", error_without_reason.into(), false),
        ("mtu", small_mtu.into(), false),
        ("egress", sample_endpoint("a").into(), true),
        ("foreign egress", foreign_egress.into(), false),
        ("mcs properties", with_properties().into(), true),
        ("affinity timeout", long_affinity.into(), false),
        ("one family twice", twice_v4.into(), false),
    ];
    for (name, r, ok) in cases {
        assert_eq!(r.validate().is_ok(), ok, "{name}: {:?}", r.validate());
    }
}

#[test]
fn keys_name_owner_and_record() {
    let r: AnyRecord = sample_import("east", "prod", "db").into();
    assert_eq!(r.key().to_string(), "east/serviceimport/prod/db");
    let s: AnyRecord = status().into();
    assert_eq!(s.key().to_string(), "a/connection/b");
    assert_eq!(Kind::from_segment("endpoint"), Some(Kind::Endpoint));
    assert_eq!(Kind::from_segment("nope"), None);
}
