//! The DNS server on 127.0.0.1: UDP and TCP, with hickory-proto messages
//! and with `dig` when it is installed; malformed packets do not stop it.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use causeway_lighthouse::dns::metrics::QueryLabels;
use causeway_lighthouse::dns::{
    Backing, ClusterExport, ClusterId, DnsMetrics, DnsServer, Endpoint, Index, IndexHandle,
    Protocol, ResolverOptions, ServerConfig, ServiceKey, ServicePort,
};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(2);

fn index() -> Index {
    let mut index = Index::with_local(ClusterId::new("a").unwrap());
    let b = ClusterId::new("b").unwrap();
    index.set_reachable(b.clone(), true);
    index.upsert_export(
        ServiceKey::new("default", "web").unwrap(),
        b.clone(),
        ClusterExport {
            ports: vec![ServicePort::new(Some("http"), Protocol::Tcp, 80)],
            backing: Backing::ClusterSetIp {
                addresses: vec!["242.1.0.10".parse().unwrap()],
                ready: true,
            },
        },
    );
    let endpoints = (0..60)
        .map(|i| Endpoint::new(None, format!("242.1.1.{i}").parse().unwrap(), true))
        .collect();
    index.upsert_export(
        ServiceKey::new("default", "big").unwrap(),
        b,
        ClusterExport {
            ports: vec![],
            backing: Backing::Headless { endpoints },
        },
    );
    index
}

struct Running {
    addr: SocketAddr,
    handle: IndexHandle,
    metrics: DnsMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Result<Running> {
    let handle = IndexHandle::new(index());
    let metrics = DnsMetrics::default();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        resolver: ResolverOptions::default(),
        tcp_idle_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let server = DnsServer::bind(config, handle.clone(), metrics.clone()).await?;
    let addr = server.udp_addr();
    assert_eq!(server.tcp_addr(), addr, "UDP and TCP share the port");
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    Ok(Running {
        addr,
        handle,
        metrics,
        stop,
        task,
    })
}

impl Running {
    async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .context("server did not stop")??;
        Ok(())
    }
}

fn query(id: u16, name: &str, ty: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp(addr: SocketAddr, packet: &[u8]) -> Result<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(packet, addr).await?;
    let mut buf = vec![0u8; 65536];
    let (len, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
        .await
        .context("no UDP answer")??;
    Ok(Message::from_vec(&buf[..len])?)
}

async fn tcp_exchange(stream: &mut TcpStream, packet: &[u8]) -> Result<Message> {
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await?;
    let len = tokio::time::timeout(TIMEOUT, stream.read_u16())
        .await
        .context("no TCP answer")??;
    let mut buf = vec![0u8; usize::from(len)];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut buf)).await??;
    Ok(Message::from_vec(&buf)?)
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_over_udp_and_tcp() -> Result<()> {
    let server = start().await?;
    let web = "web.default.svc.clusterset.local.";

    let m = udp(server.addr, &query(7, web, RecordType::A, None)).await?;
    assert_eq!(m.metadata.id, 7);
    assert!(m.metadata.authoritative);
    assert_eq!(a_records(&m), ["242.1.0.10".parse::<IpAddr>()?]);

    let m = udp(server.addr, &query(8, "example.com.", RecordType::A, None)).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // Too big for 512 bytes: TC over UDP, whole over TCP.
    let big = "big.default.svc.clusterset.local.";
    let m = udp(server.addr, &query(9, big, RecordType::A, None)).await?;
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let mut stream = TcpStream::connect(server.addr).await?;
    let m = tcp_exchange(&mut stream, &query(10, big, RecordType::A, None)).await?;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    // Several queries on one connection.
    let m = tcp_exchange(&mut stream, &query(11, web, RecordType::A, None)).await?;
    assert_eq!(m.metadata.id, 11);
    assert_eq!(a_records(&m), ["242.1.0.10".parse::<IpAddr>()?]);
    drop(stream);

    // An update to the index is answered at once.
    server.handle.update(|i| {
        i.remove_export(
            &ServiceKey::new("default", "web").unwrap(),
            &ClusterId::new("b").unwrap(),
        )
    });
    let m = udp(server.addr, &query(12, web, RecordType::A, None)).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let labels = |qtype, rcode, transport| QueryLabels {
        qtype,
        rcode,
        transport,
    };
    assert_eq!(server.metrics.count(&labels("A", "NOERROR", "udp")), 2);
    assert_eq!(server.metrics.count(&labels("A", "NOERROR", "tcp")), 2);
    assert_eq!(server.metrics.count(&labels("A", "REFUSED", "udp")), 1);
    assert_eq!(server.metrics.count(&labels("A", "NXDOMAIN", "udp")), 1);
    server.shutdown().await
}

#[tokio::test]
async fn malformed_packets_do_not_disturb_the_server() -> Result<()> {
    let server = start().await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        // Header promising a question that is not there.
        vec![0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        // Compression loop.
        vec![
            0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
        ],
        // A response: must not be answered.
        query(1, "web.default.svc.clusterset.local.", RecordType::A, None)
            .into_iter()
            .enumerate()
            .map(|(i, b)| if i == 2 { b | 0x80 } else { b })
            .collect(),
        vec![0u8; 3000],
    ];
    for g in &garbage {
        socket.send_to(g, server.addr).await?;
    }
    // The FORMERR for the loop arrives; the server then answers normally.
    let mut buf = vec![0u8; 4096];
    let mut formerr = 0;
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
    {
        let m = Message::from_vec(&buf[..len])?;
        if m.metadata.response_code == ResponseCode::FormErr {
            formerr += 1;
        }
        if formerr > 10 {
            bail!("too many answers");
        }
    }
    assert!(formerr >= 2, "FORMERR answers: {formerr}");

    // A TCP connection sending a broken frame, then closing mid-message.
    let mut stream = TcpStream::connect(server.addr).await?;
    let m = tcp_exchange(&mut stream, &[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    stream.write_all(&[0x10, 0x00, 1, 2, 3]).await?;
    drop(stream);

    let m = udp(
        server.addr,
        &query(2, "web.default.svc.clusterset.local.", RecordType::A, None),
    )
    .await?;
    assert_eq!(a_records(&m), ["242.1.0.10".parse::<IpAddr>()?]);
    server.shutdown().await
}

#[tokio::test]
async fn dig_gets_the_same_answers() -> Result<()> {
    if Command::new("dig").arg("-v").output().is_err() {
        eprintln!("dig not installed: skipped");
        return Ok(());
    }
    let server = start().await?;
    let addr = server.addr;
    let dig = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new("dig");
            cmd.arg(format!("@{}", addr.ip()))
                .arg("-p")
                .arg(addr.port().to_string())
                .args(["+time=2", "+tries=1"])
                .args(&args);
            let out = cmd.output()?;
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
    };
    let short = dig(vec![
        "+short".into(),
        "web.default.svc.clusterset.local".into(),
        "A".into(),
    ])
    .await??;
    assert_eq!(short.trim(), "242.1.0.10");

    let srv = dig(vec![
        "+short".into(),
        "_http._tcp.web.default.svc.clusterset.local".into(),
        "SRV".into(),
    ])
    .await??;
    assert_eq!(srv.trim(), "0 100 80 web.default.svc.clusterset.local.");

    let refused = dig(vec!["example.com".into()]).await??;
    assert!(refused.contains("status: REFUSED"), "{refused}");

    let nx = dig(vec!["nosuch.default.svc.clusterset.local".into()]).await??;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("flags: qr aa"), "{nx}");

    // Over UDP with a 512-byte buffer dig sees TC and retries over TCP.
    let big = dig(vec![
        "+noedns".into(),
        "big.default.svc.clusterset.local".into(),
    ])
    .await??;
    assert!(big.contains("Truncated, retrying in TCP mode"), "{big}");
    assert!(big.contains("ANSWER: 60"), "{big}");
    server.shutdown().await
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() -> Result<()> {
    let server = start().await?;
    let mut stream = TcpStream::connect(server.addr).await?;
    // Half a length prefix, then nothing: closed after the 2 s idle timeout.
    stream.write_all(&[0]).await?;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .context("connection still open after the idle timeout")??;
    assert_eq!(n, 0);
    server.shutdown().await
}
