//! `causeway benchmark throughput|latency`: TCP throughput and request
//! latency between pods of two clusters, with a built-in sender and receiver
//! (no iperf3 needed), from a pod on the gateway node or on a worker node.
//!
//! The receiver runs on a thread inside the receiving pod's namespace, the
//! sender on one inside the sending pod's. Throughput is what the receiver
//! counted between the first byte and the sender's end of stream (as
//! iperf3's receiver line). Latency is one 64-byte request and its 64-byte
//! answer, over one persistent connection or a fresh connection per request
//! (`--connections`), reported as p50/p90/p99. With Globalnet the receiver
//! is reached on a global IP of a short-lived headless export over it (as
//! `verify` does); without, on its pod IP.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::lab::plan::{LabName, PodPlan};
use crate::netns;
use crate::verify::Format;
use crate::verify::labkit::{self, HeadlessEndpointSpec, LabView, TempHeadlessExport};

/// The port the built-in receiver listens on inside the receiving pod.
pub const BENCH_PORT: u16 = 9180;
/// Bytes of one latency request and of its answer.
pub const MESSAGE: usize = 64;
/// The sender's write size.
const CHUNK: usize = 128 * 1024;
/// Latency samples kept at most (a bound on memory and on the loop).
const MAX_SAMPLES: usize = 2_000_000;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Throughput,
    Latency,
}

/// Which pods: on the clusters' active gateway nodes, or on worker nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodeChoice {
    Gateway,
    Worker,
}

/// Latency over one connection for every request, or a new one each time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Connections {
    Persistent,
    Fresh,
}

/// Flags of `causeway benchmark`.
#[derive(clap::Args, Debug)]
pub struct BenchmarkArgs {
    #[arg(value_enum)]
    pub mode: Mode,
    /// The sending cluster.
    #[arg(long)]
    pub from: String,
    /// The receiving cluster.
    #[arg(long)]
    pub to: String,
    /// Run between pods of this lab.
    #[arg(long, env = "CAUSEWAY_LAB")]
    pub lab: Option<LabName>,
    /// How long each run lasts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub seconds: u64,
    /// Pods on the gateway nodes or on worker nodes; both when not given.
    #[arg(long, value_enum)]
    pub node: Option<NodeChoice>,
    /// For latency: one persistent connection, or a fresh one per request.
    #[arg(long, value_enum, default_value = "persistent")]
    pub connections: Connections,
    /// For throughput: also run iperf3 over the same path (the same pods
    /// and global IP) for the same time, and print both.
    #[arg(long)]
    pub compare_iperf3: bool,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Format,
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The nearest-rank percentiles of `samples` (sorted here); none when empty.
pub fn percentiles(samples: &mut [Duration]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
    };
    Some(Percentiles {
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: samples[samples.len() - 1].as_secs_f64() * 1000.0,
    })
}

/// Bits per second, in Gbit/s.
pub fn gbits(bytes: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// One run's result.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub mode: Mode,
    pub node: NodeChoice,
    /// `cluster/pod` of the sender and the receiver.
    pub from: String,
    pub to: String,
    /// The address the sender dialled.
    pub target: SocketAddr,
    pub seconds: f64,
    /// Throughput: bytes the receiver counted, and the rate.
    pub bytes: Option<u64>,
    pub gbit_per_s: Option<f64>,
    /// Latency: requests answered, connection reuse and percentiles.
    pub requests: Option<u64>,
    pub connections: Option<Connections>,
    pub latency_ms: Option<Percentiles>,
    /// With `--compare-iperf3`: iperf3's receiver rate on the same path.
    pub iperf3_gbit_per_s: Option<f64>,
}

/// What `causeway benchmark` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub lab: String,
    pub globalnet: bool,
    pub runs: Vec<Run>,
}

/// `causeway benchmark`: runs, then prints a table or JSON.
pub fn command(args: BenchmarkArgs) -> Result<()> {
    let Some(lab) = args.lab.clone() else {
        bail!(
            "not yet: on Kubernetes the benchmark would start short-lived pods, which is not built; use --lab NAME"
        );
    };
    let report = run_lab(&lab, &args)?;
    match args.output {
        Format::Text => print!("{}", render(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// The pods a variant runs between.
fn pods<'a>(view: &'a LabView, cluster: &str, node: NodeChoice) -> Result<&'a PodPlan> {
    match node {
        NodeChoice::Gateway => view.gateway_pod(cluster),
        NodeChoice::Worker => view.worker_pod(cluster),
    }
}

/// Runs the benchmark between pods of lab `name`.
pub fn run_lab(name: &LabName, args: &BenchmarkArgs) -> Result<Report> {
    if args.from == args.to {
        bail!(
            "--from and --to are both {}: the benchmark measures between two clusters",
            args.from
        );
    }
    let mut view = LabView::load(name)?;
    view.cluster(&args.from)?;
    view.cluster(&args.to)?;
    let variants: Vec<NodeChoice> = match args.node {
        Some(n) => vec![n],
        None => vec![NodeChoice::Gateway, NodeChoice::Worker],
    };
    let receivers: Vec<PodPlan> = variants
        .iter()
        .map(|v| pods(&view, &args.to, *v).cloned())
        .collect::<Result<_>>()?;
    // With Globalnet a pod of another cluster has no address of its own
    // there: a headless export over the receivers gives each a global IP.
    let _guard;
    let mut targets = Vec::new();
    if view.globalnet() {
        let export = format!("cw-bench-{}", args.to);
        let mut endpoints: Vec<HeadlessEndpointSpec> = receivers
            .iter()
            .map(|p| HeadlessEndpointSpec {
                hostname: p.name.clone(),
                ip: p.ip,
                node: p.node.clone(),
            })
            .collect();
        endpoints.dedup_by(|a, b| a.ip == b.ip);
        _guard =
            TempHeadlessExport::create(&view.state, &args.to, &export, BENCH_PORT, &endpoints)?;
        let import = labkit::wait_for_headless(
            &mut view,
            &args.to,
            &export,
            endpoints.len(),
            std::slice::from_ref(&args.from),
            Duration::from_secs(15),
        )?;
        for r in &receivers {
            let ip = labkit::endpoint_address(&import, r.ip)
                .ok_or_else(|| anyhow!("{}'s import has no address for {}", args.to, r.ip))?;
            targets.push(SocketAddr::new(ip, BENCH_PORT));
        }
    } else {
        targets = receivers
            .iter()
            .map(|r| SocketAddr::new(IpAddr::V4(r.ip), BENCH_PORT))
            .collect();
    }
    let mut runs = Vec::new();
    for ((variant, receiver), target) in variants.iter().zip(&receivers).zip(&targets) {
        let sender = pods(&view, &args.from, *variant)?.clone();
        let run = measure(args, *variant, &sender, receiver, *target)?;
        runs.push(run);
    }
    Ok(Report {
        lab: name.to_string(),
        globalnet: view.globalnet(),
        runs,
    })
}

/// One variant: the receiver in `receiver`'s namespace, the sender in `sender`'s.
fn measure(
    args: &BenchmarkArgs,
    node: NodeChoice,
    sender: &PodPlan,
    receiver: &PodPlan,
    target: SocketAddr,
) -> Result<Run> {
    let stop = CancellationToken::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (mode, seconds) = (args.mode, args.seconds);
    let recv_netns = receiver.netns.clone();
    let recv_stop = stop.clone();
    let receiving = std::thread::spawn(move || {
        crate::netns::block_on(&recv_netns, move || {
            receive(
                mode,
                SocketAddr::from(([0, 0, 0, 0], BENCH_PORT)),
                ready_tx,
                recv_stop,
            )
        })
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(5));
    let result = match ready {
        Ok(Ok(_)) => {
            let connections = args.connections;
            crate::netns::block_on(&sender.netns, move || {
                send(mode, target, Duration::from_secs(seconds), connections)
            })
        }
        Ok(Err(e)) => Err(anyhow!("the receiver could not listen: {e}")),
        Err(_) => Err(anyhow!("the receiver did not start within 5 s")),
    };
    stop.cancel();
    let _ = receiving.join();
    let sent = result.with_context(|| {
        format!(
            "{} from {}/{} to {}/{} on {target}",
            match mode {
                Mode::Throughput => "throughput",
                Mode::Latency => "latency",
            },
            args.from,
            sender.name,
            args.to,
            receiver.name
        )
    })?;
    let mut run = Run {
        mode,
        node,
        from: format!("{}/{}", args.from, sender.name),
        to: format!("{}/{}", args.to, receiver.name),
        target,
        seconds: sent.elapsed.as_secs_f64(),
        bytes: None,
        gbit_per_s: None,
        requests: None,
        connections: None,
        latency_ms: None,
        iperf3_gbit_per_s: None,
    };
    match mode {
        Mode::Throughput => {
            run.bytes = Some(sent.bytes);
            run.gbit_per_s = Some(gbits(sent.bytes, sent.elapsed));
            if args.compare_iperf3 {
                run.iperf3_gbit_per_s = Some(iperf3(
                    &sender.netns,
                    &receiver.netns,
                    target.ip(),
                    args.seconds,
                )?);
            }
        }
        Mode::Latency => {
            let mut samples = sent.samples;
            run.requests = Some(samples.len() as u64);
            run.connections = Some(args.connections);
            run.latency_ms = percentiles(&mut samples);
        }
    }
    Ok(run)
}

/// The port iperf3's server listens on in the receiving pod.
const IPERF3_PORT: u16 = 5201;

/// iperf3's receiver rate from `sender` to `receiver` (reached on `ip`),
/// in Gbit/s: `iperf3 -s -1` in the receiving pod, `iperf3 -c IP -t N -J`
/// in the sending pod.
fn iperf3(sender: &str, receiver: &str, ip: IpAddr, seconds: u64) -> Result<f64> {
    use std::process::{Command, Stdio};
    let port = IPERF3_PORT.to_string();
    let server = netns::within(receiver, move || {
        Command::new("iperf3")
            .args(["-s", "-1", "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 (Debian package iperf3)")
    })?;
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reap(server);
    let (ip, secs) = (ip.to_string(), seconds.to_string());
    let mut last = String::new();
    // The server needs a moment to listen: a bounded number of tries.
    for _ in 0..20 {
        let (ip, secs) = (ip.clone(), secs.clone());
        let out = netns::within(sender, move || {
            Command::new("iperf3")
                .args(["-c", &ip, "-p", &IPERF3_PORT.to_string(), "-t", &secs, "-J"])
                .output()
                .context("run iperf3")
        })?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        last = report["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("iperf3 to {ip}:{IPERF3_PORT} gave no result: {last}")
}

/// What the sender brings back.
struct Sent {
    /// Throughput: bytes the receiver counted and over what time.
    bytes: u64,
    elapsed: Duration,
    /// Latency: one round trip per request.
    samples: Vec<Duration>,
}

/// The receiver: for throughput, counts one stream's bytes and answers the
/// count and the time from the first byte to the end of stream; for
/// latency, answers every 64-byte request with 64 bytes. Stops on `stop`.
async fn receive(
    mode: Mode,
    listen: SocketAddr,
    ready: mpsc::Sender<std::result::Result<SocketAddr, String>>,
    stop: CancellationToken,
) -> Result<()> {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => {
            let _ = ready.send(l.local_addr().map_err(|e| e.to_string()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(format!("listen on {listen}: {e}")));
            return Ok(());
        }
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let served = match mode {
                Mode::Throughput => count(stream).await,
                Mode::Latency => answer(stream, stop).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "benchmark connection ended");
            }
        });
    }
}

async fn count(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        bytes += n as u64;
    }
    let nanos = first.map(|f| f.elapsed().as_nanos() as u64).unwrap_or(0);
    let mut reply = [0u8; 16];
    reply[..8].copy_from_slice(&bytes.to_be_bytes());
    reply[8..].copy_from_slice(&nanos.to_be_bytes());
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

async fn answer(mut stream: TcpStream, stop: CancellationToken) -> std::io::Result<()> {
    let mut buf = [0u8; MESSAGE];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            read = stream.read_exact(&mut buf) => match read {
                Ok(_) => stream.write_all(&buf).await?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            },
        }
    }
}

/// The sender: a stream for `duration`, or requests for `duration`.
async fn send(
    mode: Mode,
    target: SocketAddr,
    duration: Duration,
    connections: Connections,
) -> Result<Sent> {
    let connect = || async {
        let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(target))
            .await
            .map_err(|_| anyhow!("connecting to {target} timed out after 3 s"))?
            .with_context(|| format!("connect to {target}"))?;
        stream.set_nodelay(true)?;
        Ok::<_, anyhow::Error>(stream)
    };
    let started = Instant::now();
    match mode {
        Mode::Throughput => {
            let mut stream = connect().await?;
            let chunk = vec![0x5au8; CHUNK];
            while started.elapsed() < duration {
                stream.write_all(&chunk).await.context("send")?;
            }
            stream.shutdown().await?;
            let mut reply = [0u8; 16];
            tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply))
                .await
                .map_err(|_| anyhow!("the receiver did not report its count within 10 s"))?
                .context("read the receiver's count")?;
            let bytes = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
            let nanos = u64::from_be_bytes(reply[8..].try_into().expect("8 bytes"));
            Ok(Sent {
                bytes,
                elapsed: Duration::from_nanos(nanos),
                samples: Vec::new(),
            })
        }
        Mode::Latency => {
            let mut samples = Vec::new();
            let request = [0xa5u8; MESSAGE];
            let mut reply = [0u8; MESSAGE];
            let mut persistent = None;
            while started.elapsed() < duration && samples.len() < MAX_SAMPLES {
                let t = Instant::now();
                let mut stream = match (connections, persistent.take()) {
                    (Connections::Persistent, Some(s)) => s,
                    _ => connect().await?,
                };
                let round_trip = async {
                    stream.write_all(&request).await?;
                    stream.read_exact(&mut reply).await
                };
                tokio::time::timeout(Duration::from_secs(3), round_trip)
                    .await
                    .map_err(|_| anyhow!("a request to {target} got no answer within 3 s"))?
                    .context("request")?;
                samples.push(t.elapsed());
                if connections == Connections::Persistent {
                    persistent = Some(stream);
                }
            }
            Ok(Sent {
                bytes: 0,
                elapsed: started.elapsed(),
                samples,
            })
        }
    }
}

/// The report as a table.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let path = if report.globalnet {
        "through Globalnet (global IPs)"
    } else {
        "pod IP to pod IP"
    };
    let _ = writeln!(out, "lab {}, {path}", report.lab);
    for run in &report.runs {
        let node = match run.node {
            NodeChoice::Gateway => "gateway node",
            NodeChoice::Worker => "worker node",
        };
        match run.mode {
            Mode::Throughput => {
                let _ = writeln!(
                    out,
                    "throughput {node:<13} {} -> {} ({}): {:.3} Gbit/s ({} bytes in {:.2} s, one TCP stream)",
                    run.from,
                    run.to,
                    run.target,
                    run.gbit_per_s.unwrap_or_default(),
                    run.bytes.unwrap_or_default(),
                    run.seconds
                );
                if let (Some(ours), Some(theirs)) = (run.gbit_per_s, run.iperf3_gbit_per_s) {
                    let _ = writeln!(
                        out,
                        "           iperf3 on the same path: {theirs:.3} Gbit/s (causeway {:+.1}% of iperf3)",
                        (ours / theirs - 1.0) * 100.0
                    );
                }
            }
            Mode::Latency => {
                let conn = match run.connections {
                    Some(Connections::Fresh) => "a fresh connection per request",
                    _ => "one persistent connection",
                };
                let p = run.latency_ms.map(|p| {
                    format!(
                        "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                        p.p50, p.p90, p.p99, p.max
                    )
                });
                let _ = writeln!(
                    out,
                    "latency    {node:<13} {} -> {} ({}): {} ({} requests of {MESSAGE} bytes over {conn})",
                    run.from,
                    run.to,
                    run.target,
                    p.unwrap_or_else(|| "no answer".into()),
                    run.requests.unwrap_or_default()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut s = ms(&(1..=100).rev().collect::<Vec<_>>());
        let p = percentiles(&mut s).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let mut one = ms(&[7]);
        let p = percentiles(&mut one).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (7.0, 7.0, 7.0));
        let mut ten = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let p = percentiles(&mut ten).unwrap();
        assert_eq!((p.p50, p.p90, p.p99), (5.0, 9.0, 10.0));
        assert!(percentiles(&mut []).is_none());
    }

    #[test]
    fn gbits_counts_bits_per_second() {
        assert_eq!(gbits(125_000_000, Duration::from_secs(1)), 1.0);
        assert_eq!(gbits(1, Duration::ZERO), 0.0);
    }

    #[test]
    fn a_loopback_run_measures_both_modes() {
        // The sender and receiver themselves, on loopback in this namespace.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for mode in [Mode::Throughput, Mode::Latency] {
                let stop = CancellationToken::new();
                let (tx, rx) = mpsc::channel();
                let listen = SocketAddr::from(([127, 0, 0, 1], 0));
                let receiver = tokio::spawn(receive(mode, listen, tx, stop.clone()));
                tokio::task::yield_now().await;
                let target = rx.recv_timeout(Duration::from_secs(2)).unwrap().unwrap();
                let sent = send(mode, target, Duration::from_millis(200), Connections::Fresh)
                    .await
                    .unwrap();
                match mode {
                    Mode::Throughput => assert!(sent.bytes > CHUNK as u64, "{}", sent.bytes),
                    Mode::Latency => assert!(sent.samples.len() > 10, "{}", sent.samples.len()),
                }
                stop.cancel();
                receiver.await.unwrap().unwrap();
            }
        });
    }
}
