//! The whole export path on real etcds (needs the `etcd` binary, Debian
//! etcd-server): a ServiceExport written in b's manifest directory is
//! answered by a's DNS server, and its deletion turns the name NXDOMAIN
//! within a second. One watch-driven copy from b's etcd to a's stands in
//! for the gateways' broker mirror.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use causeway_api::records::{AnyRecord, ClusterId, ConnectionState, ConnectionStatus, Kind};
use causeway_api::source::ManifestDirSource;
use causeway_api::store::{EtcdStore, Store, WatchEvent};
use causeway_api::testing::EtcdFixture;
use causeway_lighthouse::DnsDaemon;
use causeway_lighthouse::dns::{ResolverOptions, ServerConfig};
use causeway_lighthouse::export::{ExportAgent, ExportAgentOptions, ExportKey};
use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const NAME: &str = "web.default.svc.clusterset.local.";

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5], conditions: {ready: true}}]
";

const EXPORT: &str = "
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: default}
";

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Copies b's ServiceImport records from `from` to `to`.
async fn mirror(from: Arc<dyn Store>, to: Arc<dyn Store>, cancel: CancellationToken) {
    let b = ClusterId::new("b").unwrap();
    let mut events = from.watch(Some(Kind::ServiceImport), None);
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = events.next() => ev,
        };
        let result = match ev {
            None => return,
            Some(WatchEvent::Snapshot { records, .. }) => {
                let mut r = Ok(0);
                for record in records.iter().filter(|r| *r.owner() == b) {
                    r = to.put(record).await;
                }
                r
            }
            Some(WatchEvent::Put { record, .. }) if *record.owner() == b => to.put(&record).await,
            Some(WatchEvent::Delete { key, .. }) if key.cluster == b => to.delete(&key).await,
            Some(_) => Ok(0),
        };
        result.expect("mirror write");
    }
}

async fn ask(server: SocketAddr) -> Result<(ResponseCode, Vec<IpAddr>)> {
    let mut m = Message::new(9, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(NAME)?, RecordType::A));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&m.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
        .await
        .context("no DNS answer")??;
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

async fn within(
    limit: Duration,
    server: SocketAddr,
    want: (ResponseCode, Vec<IpAddr>),
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let got = ask(server).await?;
        if got == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("after {limit:?}: got {got:?}, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_in_b_is_answered_in_a_and_unexport_withdraws_it() -> Result<()> {
    let (a, b) = (ClusterId::new("a")?, ClusterId::new("b")?);
    let (etcd_b, etcd_a) = (EtcdFixture::start().await, EtcdFixture::start().await);
    let b_local: Arc<dyn Store> = Arc::new(EtcdStore::connect(&etcd_b.config()).await?);
    let a_local: Arc<dyn Store> = Arc::new(EtcdStore::connect(&etcd_a.config()).await?);
    a_local
        .put(&AnyRecord::from(ConnectionStatus {
            cluster: a.clone(),
            peer: b.clone(),
            state: ConnectionState::Connected,
            reason: None,
            rtt: None,
            since_ms: 0,
        }))
        .await?;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    tokio::spawn(mirror(b_local.clone(), a_local.clone(), cancel.clone()));

    let dir = tempfile::tempdir()?;
    write(dir.path(), "web.yaml", SERVICE)?;
    let source = ManifestDirSource::spawn(
        dir.path().to_owned(),
        Duration::from_millis(50),
        cancel.clone(),
    );
    let agent = ExportAgent::new(&source, b_local.clone(), b, ExportAgentOptions::default());
    let status = agent.status();
    tokio::spawn(agent.run(cancel.clone()));

    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        resolver: ResolverOptions::default(),
        ..ServerConfig::default()
    };
    let daemon = DnsDaemon::bind(config, a_local, a, &mut Registry::default()).await?;
    let server = daemon.udp_addr();
    tokio::spawn(daemon.run(cancel.clone()));

    assert_eq!(
        ask(server).await?.0,
        ResponseCode::NXDomain,
        "not exported yet"
    );
    write(dir.path(), "export.yaml", EXPORT)?;
    within(
        Duration::from_secs(3),
        server,
        (ResponseCode::NoError, vec!["10.96.0.10".parse()?]),
    )
    .await?;
    let ready = status.borrow()[&ExportKey::new("default", "web")]
        .ready
        .clone();
    assert_eq!(ready.reason, "Exported", "{ready:?}");

    std::fs::remove_file(dir.path().join("export.yaml"))?;
    within(
        Duration::from_secs(1),
        server,
        (ResponseCode::NXDomain, vec![]),
    )
    .await?;
    Ok(())
}
