//! `causeway lab probe`: measures how long a service is unreachable. It
//! sends one HTTP GET every interval (each with a short timeout) and
//! reports the longest run of failures, so an outage is timed to within one
//! interval. It stops after `--settle` successes following a failure, or at
//! the deadline: a bounded loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a probe run saw.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub requests: u64,
    pub failures: u64,
    /// The longest time from the first failed request of a run to the first
    /// success after it, in milliseconds.
    pub outage_ms: u64,
}

/// Probes `target` every `interval` until `settle` successes followed a
/// failure, or until `deadline` passes.
pub async fn run(
    target: SocketAddr,
    interval: Duration,
    settle: u32,
    deadline: Duration,
) -> Result<ProbeReport> {
    let started = Instant::now();
    let mut report = ProbeReport {
        requests: 0,
        failures: 0,
        outage_ms: 0,
    };
    let mut failing_since: Option<Instant> = None;
    let mut ok_after_failure = 0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < deadline {
        tick.tick().await;
        let sent = Instant::now();
        report.requests += 1;
        let ok = matches!(
            tokio::time::timeout(Duration::from_millis(200), get(target)).await,
            Ok(Ok(true))
        );
        match (ok, failing_since) {
            (false, None) => {
                failing_since = Some(sent);
                report.failures += 1;
            }
            (false, Some(_)) => report.failures += 1,
            (true, Some(since)) => {
                report.outage_ms = report
                    .outage_ms
                    .max(sent.duration_since(since).as_millis() as u64);
                failing_since = None;
                ok_after_failure = 1;
            }
            (true, None) if ok_after_failure > 0 => {
                ok_after_failure += 1;
                if ok_after_failure >= settle {
                    break;
                }
            }
            (true, None) => {}
        }
    }
    if let Some(since) = failing_since {
        report.outage_ms = report.outage_ms.max(since.elapsed().as_millis() as u64);
    }
    Ok(report)
}

/// One `GET /` that must answer `200`.
async fn get(target: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(target).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    Ok(head.starts_with(b"HTTP/1.1 200"))
}
