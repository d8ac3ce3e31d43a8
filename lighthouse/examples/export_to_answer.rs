//! Export to answer: the time from writing a ServiceExport in cluster b to
//! cluster a's DNS answering it, and from deleting it to NXDOMAIN.
//!
//! export_to_answer [ROUNDS] [POLL_MS]   (defaults: 20 rounds, 200 ms)
//!
//! Everything but the tunnel runs for real, in one process on loopback:
//! b's manifest directory (polled every POLL_MS, the cluster source's
//! default) -> b's export agent -> b's etcd -> broker etcd -> a's etcd ->
//! a's DNS feed -> a's DNS server, asked over UDP every 2 ms. The two
//! mirror hops stand in for the gateways' broker mirror and copy
//! ServiceImport records as their watches deliver them. Needs the `etcd`
//! binary (Debian etcd-server).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use causeway_api::records::{
    AnyRecord, ClusterId, ConnectionState, ConnectionStatus, Kind, RecordKey,
};
use causeway_api::source::ManifestDirSource;
use causeway_api::store::{EtcdStore, Store, WatchEvent};
use causeway_api::testing::EtcdFixture;
use causeway_lighthouse::DnsDaemon;
use causeway_lighthouse::dns::{ResolverOptions, ServerConfig};
use causeway_lighthouse::export::{ExportAgent, ExportAgentOptions};
use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Copies `owner`'s ServiceImport records from `from` to `to` as `from`'s
/// watch delivers them.
async fn mirror(
    from: Arc<dyn Store>,
    to: Arc<dyn Store>,
    owner: ClusterId,
    cancel: CancellationToken,
) {
    let mut events = from.watch(Some(Kind::ServiceImport), None);
    let mine = |k: &RecordKey| k.cluster == owner;
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = events.next() => ev,
        };
        let result = match ev {
            None => return,
            Some(WatchEvent::Snapshot { records, .. }) => {
                let mut r = Ok(0);
                for record in records.iter().filter(|r| mine(&r.key())) {
                    r = to.put(record).await;
                }
                r
            }
            Some(WatchEvent::Put { record, .. }) if mine(&record.key()) => to.put(&record).await,
            Some(WatchEvent::Delete { key, .. }) if mine(&key) => to.delete(&key).await,
            Some(_) => Ok(0),
        };
        if let Err(error) = result {
            eprintln!("mirror: {error}");
        }
    }
}

async fn ask(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
) -> Result<(ResponseCode, bool)> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    socket.send_to(&m.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
            .await
            .context("no DNS answer within 1 s")??;
        let answer = Message::from_vec(&buf[..len])?;
        if answer.metadata.id == id {
            return Ok((answer.metadata.response_code, !answer.answers.is_empty()));
        }
    }
}

/// Asks every 2 ms until `done`; the time it took, bounded by 10 s.
async fn time_until(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    start: Instant,
    done: impl Fn(ResponseCode, bool) -> bool,
) -> Result<Duration> {
    let mut id = 0u16;
    while start.elapsed() < Duration::from_secs(10) {
        id = id.wrapping_add(1);
        let (rcode, answered) = ask(socket, server, name, id).await?;
        if done(rcode, answered) {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("{name}: no change within 10 s")
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn service(i: usize) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: default}}
spec:
  clusterIP: 10.96.1.{i}
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{i}-1, namespace: default, labels: {{kubernetes.io/service-name: svc-{i}}}}}
addressType: IPv4
endpoints: [{{addresses: [10.244.1.{i}], conditions: {{ready: true}}}}]
"
    )
}

fn export(i: usize) -> String {
    format!(
        "apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {{name: svc-{i}, namespace: default}}
"
    )
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.95)),
        ms(*samples.last().expect("samples"))
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .get(1)
        .map_or(Ok(20), |s| s.parse())
        .context("ROUNDS")?;
    let poll_ms: u64 = args
        .get(2)
        .map_or(Ok(200), |s| s.parse())
        .context("POLL_MS")?;
    if rounds == 0 || rounds > 250 {
        bail!("ROUNDS: 1 to 250");
    }
    let (a, b) = (ClusterId::new("a")?, ClusterId::new("b")?);
    let etcds = [
        EtcdFixture::start().await,
        EtcdFixture::start().await,
        EtcdFixture::start().await,
    ];
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for etcd in &etcds {
        stores.push(Arc::new(EtcdStore::connect(&etcd.config()).await?));
    }
    let [b_local, broker, a_local] = [stores[0].clone(), stores[1].clone(), stores[2].clone()];
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
    tokio::spawn(mirror(
        b_local.clone(),
        broker.clone(),
        b.clone(),
        cancel.clone(),
    ));
    tokio::spawn(mirror(
        broker.clone(),
        a_local.clone(),
        b.clone(),
        cancel.clone(),
    ));

    let dir = tempfile::tempdir()?;
    let source = ManifestDirSource::spawn(
        dir.path().to_owned(),
        Duration::from_millis(poll_ms),
        cancel.clone(),
    );
    let agent = ExportAgent::new(
        &source,
        b_local.clone(),
        b.clone(),
        ExportAgentOptions::default(),
    );
    tokio::spawn(agent.run(cancel.clone()));

    let mut registry = Registry::default();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        resolver: ResolverOptions::default(),
        ..ServerConfig::default()
    };
    let daemon = DnsDaemon::bind(config, a_local.clone(), a.clone(), &mut registry).await?;
    let server = daemon.udp_addr();
    tokio::spawn(daemon.run(cancel.clone()));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;

    let (mut exported, mut withdrawn) = (Vec::new(), Vec::new());
    for i in 1..=rounds {
        let name = format!("svc-{i}.default.svc.clusterset.local.");
        write(dir.path(), &format!("svc-{i}.yaml"), &service(i))?;
        // Let the source read the Service before the clock starts, and
        // start each round at another phase of the source's poll, so the
        // rounds sample the whole interval rather than one point of it.
        let phase = Duration::from_millis(poll_ms * (i as u64 * 7 % 20) / 20);
        tokio::time::sleep(Duration::from_millis(poll_ms * 2) + phase).await;
        let start = Instant::now();
        write(dir.path(), &format!("export-{i}.yaml"), &export(i))?;
        exported.push(
            time_until(&socket, server, &name, start, |rc, answered| {
                rc == ResponseCode::NoError && answered
            })
            .await?,
        );
        tokio::time::sleep(phase).await;
        let start = Instant::now();
        std::fs::remove_file(dir.path().join(format!("export-{i}.yaml")))?;
        withdrawn.push(
            time_until(&socket, server, &name, start, |rc, _| {
                rc == ResponseCode::NXDomain
            })
            .await?,
        );
    }
    cancel.cancel();

    println!("manifest poll interval {poll_ms} ms, {rounds} rounds, three etcds on loopback\n");
    println!("| change | rounds | median ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|");
    println!("{}", summary("ServiceExport written -> answered", exported));
    println!(
        "{}",
        summary("ServiceExport deleted -> NXDOMAIN", withdrawn)
    );
    Ok(())
}
