//! Shared helpers for the etcd tests.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use causeway_api::records::*;
use causeway_api::store::WatchEvent;
use futures::StreamExt;
use futures::stream::BoxStream;

pub fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn endpoint(cluster: &str, port: u16) -> AnyRecord {
    Endpoint {
        cluster: id(cluster),
        node_name: "gw-1".into(),
        public_ip: None,
        private_ip: ip("172.18.0.2"),
        port,
        public_key: WireGuardKey::from_bytes([1; 32]),
        subnets: vec!["242.1.0.0/16".parse().unwrap()],
        backend: CableBackend::Kernel,
        mtu: 1420,
        health_check_ip: None,
        egress_ips: Vec::new(),
    }
    .into()
}

pub fn import(cluster: &str, name: &str) -> AnyRecord {
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new("default").unwrap(),
        name: ObjectName::new(name).unwrap(),
        kind: ServiceImportType::ClusterSetIP,
        ports: vec![ServicePort {
            name: None,
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
    .into()
}

/// The next event, within `secs` seconds.
pub async fn next_within(s: &mut BoxStream<'static, WatchEvent>, secs: u64) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(secs), s.next())
        .await
        .expect("a watch event in time")
        .expect("watch stream open")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "causeway_api=debug".into()),
        )
        .with_test_writer()
        .try_init();
}
