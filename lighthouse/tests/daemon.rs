//! The DNS daemon end to end on 127.0.0.1: records put in a store become
//! answers, follow the connection status, and go when withdrawn.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use causeway_api::FakeStore;
use causeway_api::records::{
    AnyRecord, ClusterId, ConnectionState, ConnectionStatus, ObjectName, Protocol, ServiceImport,
    ServiceImportType, ServicePort,
};
use causeway_api::store::Store;
use causeway_lighthouse::DnsDaemon;
use causeway_lighthouse::dns::{ResolverOptions, ServerConfig};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const WEB: &str = "web.default.svc.clusterset.local.";

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn web(cluster: &str, global: &str, cluster_ip: &str) -> AnyRecord {
    ServiceImport {
        cluster: id(cluster),
        namespace: ObjectName::new("default").unwrap(),
        name: ObjectName::new("web").unwrap(),
        kind: ServiceImportType::ClusterSetIP,
        ports: vec![ServicePort {
            name: Some("http".into()),
            protocol: Protocol::Tcp,
            port: 80,
        }],
        addresses: vec![global.parse().unwrap()],
        cluster_ips: vec![cluster_ip.parse().unwrap()],
        endpoints: vec![],
        exported_at_ms: 0,
        pods: None,
        unready: false,
        properties: Default::default(),
    }
    .into()
}

fn status(peer: &str, state: ConnectionState) -> AnyRecord {
    ConnectionStatus {
        cluster: id("a"),
        peer: id(peer),
        state,
        reason: (state == ConnectionState::Error).then(|| "tunnel down".to_owned()),
        rtt: None,
        since_ms: 0,
    }
    .into()
}

async fn ask(addr: SocketAddr, name: &str) -> Result<(ResponseCode, Vec<IpAddr>)> {
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&m.to_vec()?, addr).await?;
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .context("no answer")??;
    let answer = Message::from_vec(&buf[..len])?;
    let ips = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    Ok((answer.metadata.response_code, ips))
}

/// Asks until the answer is `want`, for up to two seconds.
async fn until(addr: SocketAddr, want: (ResponseCode, Vec<&str>)) -> Result<()> {
    let want = (
        want.0,
        want.1
            .iter()
            .map(|s| s.parse().unwrap())
            .collect::<Vec<IpAddr>>(),
    );
    let start = Instant::now();
    loop {
        let got = ask(addr, WEB).await?;
        if got == want {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(2) {
            bail!("got {got:?}, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn records_in_the_store_become_answers() -> Result<()> {
    let store = FakeStore::new();
    store.put(&web("b", "242.1.0.10", "10.96.0.10")).await?;
    store.put(&status("b", ConnectionState::Connected)).await?;
    let mut registry = Registry::default();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        resolver: ResolverOptions::default(),
        ..ServerConfig::default()
    };
    let daemon = DnsDaemon::bind(config, Arc::new(store.clone()), id("a"), &mut registry).await?;
    let addr = daemon.udp_addr();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(daemon.run(cancel.clone()));

    // The very first answer already knows the store's records.
    assert_eq!(
        ask(addr, WEB).await?,
        (ResponseCode::NoError, vec!["242.1.0.10".parse()?])
    );
    // b's tunnel fails: b is left out; it recovers: b is back.
    store.put(&status("b", ConnectionState::Error)).await?;
    until(addr, (ResponseCode::NXDomain, vec![])).await?;
    store.put(&status("b", ConnectionState::Connected)).await?;
    until(addr, (ResponseCode::NoError, vec!["242.1.0.10"])).await?;
    // a exports too: a answers its own with the ClusterIP.
    store.put(&web("a", "242.0.0.10", "10.96.0.11")).await?;
    until(addr, (ResponseCode::NoError, vec!["10.96.0.11"])).await?;
    // Both withdraw: the name goes.
    store
        .delete(&web("a", "242.0.0.10", "10.96.0.11").key())
        .await?;
    store
        .delete(&web("b", "242.1.0.10", "10.96.0.10").key())
        .await?;
    until(addr, (ResponseCode::NXDomain, vec![])).await?;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(text.contains("dns_queries_total{qtype=\"A\""), "{text}");

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .context("daemon did not stop")??;
    Ok(())
}
