//! `causeway lab echo`: the HTTP server the lab's `web` pods run. It answers
//! every request with who served it and the client address its socket saw,
//! which is how tests tell which cluster answered and whether NAT happened.
//! `GET /bytes/N` answers N bytes instead, to push large responses through
//! a tunnel.
//!
//! With `--hostname-listen`, the pod also answers every TCP connection and
//! every UDP datagram on that address with the same JSON, as the MCS
//! conformance suite's pods answer with their address; the suite probes
//! them with `nc`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The JSON every plain request gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    pub cluster: String,
    pub pod: String,
    /// `ip:port` of the client as the server's socket saw it.
    pub client: String,
}

/// Requests larger than this are refused: the echo server reads only a
/// request line and headers.
const MAX_REQUEST: usize = 16 * 1024;
/// The largest body `/bytes/N` serves.
const MAX_BYTES: u64 = 1 << 30;

/// Serves HTTP on `listen` (and, with `hostname`, TCP and UDP there) until
/// the process is stopped.
pub async fn serve(
    listen: SocketAddr,
    hostname: Option<SocketAddr>,
    cluster: String,
    pod: String,
) -> Result<()> {
    match hostname {
        None => serve_http(listen, cluster, pod).await,
        Some(addr) => {
            tokio::try_join!(
                serve_http(listen, cluster.clone(), pod.clone()),
                serve_hostname_tcp(addr, cluster.clone(), pod.clone()),
                serve_hostname_udp(addr, cluster, pod),
            )?;
            Ok(())
        }
    }
}

/// Every connection gets one JSON line, then the server ends its side.
async fn serve_hostname_tcp(listen: SocketAddr, cluster: String, pod: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on tcp {listen}"))?;
    loop {
        let (mut stream, client) = listener.accept().await.context("accept")?;
        let line = reply_line(&cluster, &pod, client)?;
        tokio::spawn(async move {
            if let Err(e) = async {
                stream.write_all(&line).await?;
                stream.shutdown().await?;
                // Closing with the client's bytes unread would send a reset,
                // which can discard the line before the client reads it: read
                // until the client closes too (bounded).
                let mut sink = [0u8; 1024];
                let drain = async {
                    while stream.read(&mut sink).await? > 0 {}
                    Ok::<_, std::io::Error>(())
                };
                tokio::time::timeout(std::time::Duration::from_secs(5), drain)
                    .await
                    .unwrap_or(Ok(()))
            }
            .await
            {
                tracing::debug!(%client, error = %e, "hostname reply failed");
            }
        });
    }
}

/// Every datagram gets one JSON line back.
async fn serve_hostname_udp(listen: SocketAddr, cluster: String, pod: String) -> Result<()> {
    let socket = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("listen on udp {listen}"))?;
    let mut buf = [0u8; 2048];
    loop {
        let (_, client) = socket.recv_from(&mut buf).await.context("recv")?;
        let line = reply_line(&cluster, &pod, client)?;
        if let Err(e) = socket.send_to(&line, client).await {
            tracing::debug!(%client, error = %e, "hostname reply failed");
        }
    }
}

fn reply_line(cluster: &str, pod: &str, client: SocketAddr) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&EchoReply {
        cluster: cluster.to_owned(),
        pod: pod.to_owned(),
        client: client.to_string(),
    })?;
    line.push(b'\n');
    Ok(line)
}

async fn serve_http(listen: SocketAddr, cluster: String, pod: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    tracing::info!(%listen, %cluster, %pod, "echo server listening");
    loop {
        let (stream, client) = listener.accept().await.context("accept")?;
        let reply = EchoReply {
            cluster: cluster.clone(),
            pod: pod.clone(),
            client: client.to_string(),
        };
        tokio::spawn(async move {
            if let Err(e) = answer(stream, reply).await {
                tracing::debug!(%client, error = %e, "request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, reply: EchoReply) -> Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"too large\n",
            )
            .await;
        }
    }
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let path = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/");
    match path.strip_prefix("/bytes/").map(str::parse::<u64>) {
        Some(Ok(n)) if n <= MAX_BYTES => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            // A repeating pattern, so a corrupted byte shows in a checksum.
            let chunk: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
            let mut left = n;
            while left > 0 {
                let take = left.min(chunk.len() as u64) as usize;
                stream.write_all(&chunk[..take]).await?;
                left -= take as u64;
            }
            stream.shutdown().await?;
            Ok(())
        }
        Some(_) => {
            respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"use /bytes/N with N up to 1 GiB\n",
            )
            .await
        }
        None => {
            let mut body = serde_json::to_vec(&reply)?;
            body.push(b'\n');
            respond(&mut stream, "200 OK", "application/json", &body).await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await?;
    Ok(())
}
