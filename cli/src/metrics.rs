//! The `/metrics` endpoint (Prometheus text format), `/healthz` (alive) and
//! `/readyz` (ready: 200, else 503), served by a small HTTP responder: a
//! daemon needs nothing more of HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Renders the current metrics.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Says whether the daemon is ready (`/readyz`).
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves `GET /metrics`, `GET /healthz` and `GET /readyz` (always ready)
/// on `listen` until `cancel`.
pub async fn serve(listen: SocketAddr, render: Render, cancel: CancellationToken) -> Result<()> {
    serve_with(listen, render, Arc::new(|| true), cancel).await
}

/// As [`serve`], with `/readyz` answering 200 while `ready` says so, else 503.
pub async fn serve_with(
    listen: SocketAddr,
    render: Render,
    ready: Ready,
    cancel: CancellationToken,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen} for metrics"))?;
    tracing::info!(%listen, "serving /metrics");
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let render = render.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
                    .await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, kind, body) = match path {
                // Rendering reads the cable and conntrack: off the runtime's workers.
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    tokio::task::spawn_blocking(move || render())
                        .await
                        .unwrap_or_default(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                "/readyz" if ready() => ("200 OK", "text/plain", "ready\n".to_owned()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_owned(),
                ),
                _ => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readyz_follows_readiness_and_healthz_is_always_ok() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_with(
            addr,
            Arc::new(|| "m 1\n".to_owned()),
            Arc::new(move || r.load(Ordering::SeqCst)),
            cancel.clone(),
        ));
        // Bounded wait for the listener.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        ready.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/metrics").await.ends_with("m 1\n"));
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
