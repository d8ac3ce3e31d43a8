//! `causeway verify`: connectivity and service discovery across every
//! ordered pair of clusters, from a pod on the active gateway node and from
//! a pod on a worker node, as a pass/fail table with timings.
//!
//! [`plan`] turns what the stores say (who exports what, on which address)
//! into probes, in a pure function; [`run_probes`] runs each probe inside
//! its pod's network namespace (pod to pod, pod to service, DNS name to
//! HTTP answer) against the lab's echo servers, which say who answered.
//! Pods of another cluster are reachable one by one only through a headless
//! export (Globalnet gives each endpoint a global IP), so verify exports a
//! short-lived headless `cw-verify-CLUSTER` over each cluster's web pods and
//! removes it at the end. On Kubernetes ([`kube`], `--kubeconfig`) verify
//! starts short-lived echo and client pods instead and removes them.

pub mod kube;
pub mod labkit;

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::lab::echo::EchoReply;
use crate::lab::plan::{ECHO_PORT, LabName};
use labkit::{HeadlessEndpointSpec, LabView, TempHeadlessExport};

/// The exported service every pair is checked against.
pub const SERVICE_NAMESPACE: &str = "default";
pub const SERVICE_NAME: &str = "web";
/// Its `clusterset.local` name.
pub const SERVICE_DNS: &str = "web.default.svc.clusterset.local";
/// How long one probe (connect, request, answer) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts per probe: the first request after verify's own export may race
/// the NAT rules by a moment.
const ATTEMPTS: u32 = 3;

/// What a check tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    PodToPod,
    PodToService,
    Dns,
}

impl CheckKind {
    fn label(self) -> &'static str {
        match self {
            CheckKind::PodToPod => "pod to pod",
            CheckKind::PodToService => "pod to service",
            CheckKind::Dns => "DNS to HTTP",
        }
    }
}

/// Which kind of node a probe starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    Gateway,
    Worker,
}

/// Where a probe starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    pub cluster: String,
    pub pod: String,
    pub node: String,
    pub role: NodeRole,
    #[serde(skip)]
    pub netns: String,
    /// The cluster's nameserver, as the pod's resolv.conf names it.
    #[serde(skip)]
    pub nameserver: Option<Ipv4Addr>,
}

/// What a remote cluster offers to be checked against, read from the
/// stores by the caller.
#[derive(Clone, Debug)]
pub struct Target {
    pub cluster: String,
    /// Its web pods: name and the address others reach them on, or why
    /// there is none.
    pub pods: Vec<(String, Result<SocketAddr, String>)>,
    /// `default/web` on its global IP (or ClusterIP), or why it cannot be checked.
    pub service: Result<SocketAddr, Verdict>,
    /// Whether the cluster exports `default/web`.
    pub exports_web: bool,
    /// The name of verify's own headless export of the cluster, or why it
    /// has none.
    pub headless_name: Result<String, String>,
}

/// A check that cannot run: it fails, or it does not apply here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fail(String),
    Skip(String),
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// GET / from the echo server at `addr`, answered by `cluster` (and `pod`).
    Http {
        addr: SocketAddr,
        cluster: String,
        pod: Option<String>,
    },
    /// Resolve `name` with `nameserver`, then GET / on `port` of its first
    /// address, answered by one of `clusters`.
    Dns {
        nameserver: Ipv4Addr,
        name: String,
        port: u16,
        clusters: BTreeSet<String>,
        /// The address to use when the answer holds it.
        prefer: Option<IpAddr>,
    },
    /// Decided without a probe.
    Verdict(Verdict),
}

/// One planned check.
#[derive(Clone, Debug)]
pub struct Probe {
    pub from: Source,
    pub to: String,
    pub kind: CheckKind,
    /// What is checked, as a person reads it.
    pub target: String,
    pub action: Action,
}

/// Pass, fail or skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub from: Source,
    pub to: String,
    pub check: CheckKind,
    pub target: String,
    pub outcome: Outcome,
    /// How long the successful attempt took (DNS: lookup plus request).
    pub millis: Option<f64>,
    pub attempts: u32,
    /// Who answered, or what failed and what to look at.
    pub detail: String,
}

/// What `causeway verify` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub lab: String,
    pub globalnet: bool,
    pub checks: Vec<CheckResult>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Plans every check: for each ordered pair (from, to) of clusters and each
/// source pod of `from`: pod to pod (each web pod of `to`), pod to service
/// (`default/web` of `to`), and a DNS name of `to` to an HTTP answer. The
/// DNS check uses `web.default.svc.clusterset.local` when `to` exports it
/// and `from` does not (a local export answers first, settled decision 10)
/// and the answer is a global IP; otherwise verify's own headless export of
/// `to`, which only `to` exports.
pub fn plan(sources: &[Source], targets: &[Target], globalnet: bool) -> Vec<Probe> {
    let mut probes = Vec::new();
    for from in sources {
        for to in targets.iter().filter(|t| t.cluster != from.cluster) {
            let probe = |kind, target: String, action| Probe {
                from: from.clone(),
                to: to.cluster.clone(),
                kind,
                target,
                action,
            };
            for (pod, addr) in &to.pods {
                let (target, action) = match addr {
                    Ok(addr) => (
                        format!("{}/{pod} on {addr}", to.cluster),
                        Action::Http {
                            addr: *addr,
                            cluster: to.cluster.clone(),
                            pod: Some(pod.clone()),
                        },
                    ),
                    Err(why) => (
                        format!("{}/{pod}", to.cluster),
                        Action::Verdict(Verdict::Fail(why.clone())),
                    ),
                };
                probes.push(probe(CheckKind::PodToPod, target, action));
            }
            let how = if globalnet { "global IP" } else { "ClusterIP" };
            let (target, action) = match &to.service {
                Ok(addr) => (
                    format!(
                        "{SERVICE_NAMESPACE}/{SERVICE_NAME} of {} on {addr}",
                        to.cluster
                    ),
                    Action::Http {
                        addr: *addr,
                        cluster: to.cluster.clone(),
                        pod: None,
                    },
                ),
                Err(v) => (
                    format!(
                        "{SERVICE_NAMESPACE}/{SERVICE_NAME} of {} by {how}",
                        to.cluster
                    ),
                    Action::Verdict(v.clone()),
                ),
            };
            probes.push(probe(CheckKind::PodToService, target, action));
            let from_exports = targets
                .iter()
                .any(|t| t.cluster == from.cluster && t.exports_web);
            // Any remote exporter of web may answer its name.
            let web_exporters: BTreeSet<String> = targets
                .iter()
                .filter(|t| t.exports_web && t.cluster != from.cluster)
                .map(|t| t.cluster.clone())
                .collect();
            // Without Globalnet, look up the headless name: it names the
            // pods, so the answer proves DNS and pod routing at once.
            let dns = match (
                &from.nameserver,
                globalnet && to.exports_web && !from_exports,
            ) {
                (None, _) => Err(Verdict::Fail(format!(
                    "cluster {} has no DNS pod (no nameserver in its resolv.conf)",
                    from.cluster
                ))),
                (Some(ns), true) => Ok((
                    *ns,
                    SERVICE_DNS.to_owned(),
                    80,
                    web_exporters,
                    to.service.as_ref().ok().map(|a| a.ip()),
                )),
                (Some(ns), false) => match &to.headless_name {
                    Ok(name) => Ok((
                        *ns,
                        format!("{name}.{SERVICE_NAMESPACE}.svc.clusterset.local"),
                        ECHO_PORT,
                        BTreeSet::from([to.cluster.clone()]),
                        None,
                    )),
                    Err(why) if to.exports_web => Err(Verdict::Fail(format!(
                        "{} exports {SERVICE_NAMESPACE}/{SERVICE_NAME} itself, so its own answers first, and {}'s own name to look up is missing: {why}",
                        from.cluster, to.cluster
                    ))),
                    Err(why) => Err(Verdict::Fail(format!(
                        "{} has no name to look up: it does not export {SERVICE_NAMESPACE}/{SERVICE_NAME} (`causeway lab export {} {SERVICE_NAMESPACE}/{SERVICE_NAME}`) and {why}",
                        to.cluster, to.cluster
                    ))),
                },
            };
            let (target, action) = match dns {
                Ok((nameserver, name, port, clusters, prefer)) => (
                    format!("{name}:{port}"),
                    Action::Dns {
                        nameserver,
                        name,
                        port,
                        clusters,
                        prefer,
                    },
                ),
                Err(v) => (format!("a name of {}", to.cluster), Action::Verdict(v)),
            };
            probes.push(probe(CheckKind::Dns, target, action));
        }
    }
    probes
}

/// Why `default/web` of `to` has no address `from` can use, or the address.
pub fn service_target(view: &LabView, to: &str) -> Result<SocketAddr, Verdict> {
    let export_hint = format!(
        "{to} does not export {SERVICE_NAMESPACE}/{SERVICE_NAME} (no ServiceImport from {to} in its store): export it with `causeway lab export {to} {SERVICE_NAMESPACE}/{SERVICE_NAME}`"
    );
    let Some(import) = view.import(to, to, SERVICE_NAMESPACE, SERVICE_NAME) else {
        return Err(Verdict::Fail(export_hint));
    };
    let port = import.ports.first().map(|p| p.port).unwrap_or(80);
    if !view.globalnet() {
        // Without Globalnet the remote ClusterIP itself is routed to the
        // exporting cluster, whose service proxy (the lab's, or kube-proxy)
        // serves it.
        return match import.cluster_ips.first() {
            Some(ip) => Ok(SocketAddr::new(*ip, port)),
            None => Err(Verdict::Fail(format!(
                "{to} exports {SERVICE_NAMESPACE}/{SERVICE_NAME} without a ClusterIP: is its Service headless?"
            ))),
        };
    }
    match import.addresses.first() {
        Some(ip) => Ok(SocketAddr::new(*ip, port)),
        None => Err(Verdict::Fail(format!(
            "{to} exports {SERVICE_NAMESPACE}/{SERVICE_NAME} without a global IP: see `causeway show exports` for its NoGlobalIP reason"
        ))),
    }
}

/// Runs `causeway verify --lab NAME`.
pub fn run_lab(name: &LabName) -> Result<Report> {
    let mut view = LabView::load(name)?;
    let clusters: Vec<String> = view
        .state
        .plan
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .collect();
    if clusters.len() < 2 {
        bail!(
            "lab {name} has one cluster: verify checks pairs of clusters; start a lab with --clusters 2 or more"
        );
    }
    // Verify's own headless exports: one per cluster over its web pods.
    let mut guards = Vec::new();
    let mut headless = Vec::new();
    for c in &view.state.plan.clusters {
        let export_name = format!("cw-verify-{}", c.name);
        let endpoints: Vec<HeadlessEndpointSpec> = c
            .pods
            .iter()
            .filter(|p| p.app == "web")
            .map(|p| HeadlessEndpointSpec {
                hostname: p.name.clone(),
                ip: p.ip,
                node: p.node.clone(),
            })
            .collect();
        guards.push(TempHeadlessExport::create(
            &view.state,
            &c.name,
            &export_name,
            ECHO_PORT,
            &endpoints,
        )?);
        headless.push((c.name.clone(), export_name, endpoints));
    }
    let mut targets = Vec::new();
    for (cluster, export_name, endpoints) in &headless {
        let others: Vec<String> = clusters.iter().filter(|c| *c != cluster).cloned().collect();
        let ready = labkit::wait_for_headless(
            &mut view,
            cluster,
            export_name,
            endpoints.len(),
            &others,
            Duration::from_secs(15),
        );
        let pods = endpoints
            .iter()
            .map(|e| {
                let addr = match &ready {
                    Ok(import) => labkit::endpoint_address(import, e.ip)
                        .map(|ip| SocketAddr::new(ip, ECHO_PORT))
                        .ok_or_else(|| format!("no address for {} in {cluster}'s import", e.ip)),
                    Err(why) => Err(format!("{why:#}")),
                };
                (e.hostname.clone(), addr)
            })
            .collect();
        targets.push(Target {
            cluster: cluster.clone(),
            pods,
            service: Err(Verdict::Skip(String::new())),
            exports_web: false,
            headless_name: match &ready {
                Ok(_) => Ok(export_name.clone()),
                Err(e) => Err(format!("{e:#}")),
            },
        });
    }
    view.refresh()?;
    for t in &mut targets {
        t.service = service_target(&view, &t.cluster);
        t.exports_web = view
            .import(&t.cluster, &t.cluster, SERVICE_NAMESPACE, SERVICE_NAME)
            .is_some();
    }
    let mut sources = Vec::new();
    for c in &clusters {
        let nameserver = view.nameserver(c).ok();
        for (pod, role) in [
            (view.gateway_pod(c)?, NodeRole::Gateway),
            (view.worker_pod(c)?, NodeRole::Worker),
        ] {
            sources.push(Source {
                cluster: c.clone(),
                pod: pod.name.clone(),
                node: pod.node.clone(),
                role,
                netns: pod.netns.clone(),
                nameserver,
            });
        }
    }
    let probes = plan(&sources, &targets, view.globalnet());
    let checks = run_probes(probes);
    drop(guards);
    Ok(report(name.to_string(), view.globalnet(), checks))
}

fn report(lab: String, globalnet: bool, checks: Vec<CheckResult>) -> Report {
    let count = |o| checks.iter().filter(|c| c.outcome == o).count();
    Report {
        lab,
        globalnet,
        passed: count(Outcome::Pass),
        failed: count(Outcome::Fail),
        skipped: count(Outcome::Skip),
        checks,
    }
}

/// Runs every probe, a few at a time, each on a thread inside its pod's
/// namespace; results keep the probes' order.
pub fn run_probes(probes: Vec<Probe>) -> Vec<CheckResult> {
    let mut results = Vec::with_capacity(probes.len());
    for chunk in probes.chunks(8) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|p| std::thread::spawn(move || run_probe(p)))
            .collect();
        for h in handles {
            results.push(
                h.join()
                    .unwrap_or_else(|_| unreachable!("a probe panicked")),
            );
        }
    }
    results
}

fn run_probe(probe: Probe) -> CheckResult {
    let mut result = CheckResult {
        from: probe.from.clone(),
        to: probe.to.clone(),
        check: probe.kind,
        target: probe.target.clone(),
        outcome: Outcome::Fail,
        millis: None,
        attempts: 0,
        detail: String::new(),
    };
    let action = match probe.action {
        Action::Verdict(Verdict::Fail(why)) => {
            result.detail = why;
            return result;
        }
        Action::Verdict(Verdict::Skip(why)) => {
            result.outcome = Outcome::Skip;
            result.detail = why;
            return result;
        }
        a => a,
    };
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        result.attempts = attempt;
        let action = action.clone();
        let outcome = crate::netns::block_on(&probe.from.netns, move || async move {
            Ok(probe_once(&action).await)
        })
        .unwrap_or_else(|e| Err(format!("{e:#}")));
        match outcome {
            Ok((elapsed, detail)) => {
                result.outcome = Outcome::Pass;
                result.millis = Some(elapsed.as_secs_f64() * 1000.0);
                result.detail = detail;
                return result;
            }
            Err(why) => last = why,
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    result.detail = last;
    result
}

/// One attempt: how long it took and who answered, or what failed.
async fn probe_once(action: &Action) -> Result<(Duration, String), String> {
    match action {
        Action::Http { addr, cluster, pod } => {
            let started = Instant::now();
            let reply = http_get(*addr, "verify").await?;
            let elapsed = started.elapsed();
            check_reply(&reply, &BTreeSet::from([cluster.clone()]), pod.as_deref())?;
            Ok((
                elapsed,
                format!("answered by {}/{}", reply.cluster, reply.pod),
            ))
        }
        Action::Dns {
            nameserver,
            name,
            port,
            clusters,
            prefer,
        } => {
            let started = Instant::now();
            let ips = resolve(*nameserver, name).await?;
            let lookup = started.elapsed();
            let ip = ips
                .iter()
                .copied()
                .find(|ip| Some(IpAddr::V4(*ip)) == *prefer)
                .unwrap_or(ips[0]);
            let reply = http_get(SocketAddr::new(IpAddr::V4(ip), *port), name)
                .await
                .map_err(|e| format!("{name} resolved to {ip}, but {e}"))?;
            let elapsed = started.elapsed();
            check_reply(&reply, clusters, None).map_err(|e| format!("{name} -> {ip}: {e}"))?;
            Ok((
                elapsed,
                format!(
                    "{name} -> {ip} in {:.1} ms, answered by {}/{}",
                    lookup.as_secs_f64() * 1000.0,
                    reply.cluster,
                    reply.pod
                ),
            ))
        }
        Action::Verdict(_) => unreachable!("verdicts need no probe"),
    }
}

fn check_reply(
    reply: &EchoReply,
    clusters: &BTreeSet<String>,
    pod: Option<&str>,
) -> Result<(), String> {
    if !clusters.contains(&reply.cluster) {
        return Err(format!(
            "answered by cluster {} ({}), not {}: the address leads to the wrong cluster",
            reply.cluster,
            reply.pod,
            clusters.iter().cloned().collect::<Vec<_>>().join(" or ")
        ));
    }
    if let Some(pod) = pod
        && reply.pod != pod
    {
        return Err(format!(
            "answered by {}/{}, not {pod}: the global IP leads to another pod",
            reply.cluster, reply.pod
        ));
    }
    Ok(())
}

/// GET / from the lab's echo server at `addr`, within [`PROBE_TIMEOUT`].
async fn http_get(addr: SocketAddr, host: &str) -> Result<EchoReply, String> {
    let work = async {
        let mut stream = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(format!(
                    "connecting to {addr} timed out after {} s (no route, a dropped packet or a tunnel that is down)",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(format!(
                    "{addr} refused the connection (nothing listens there, or no NAT rule leads on)"
                ));
            }
            Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
            Ok(Ok(s)) => s,
        };
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send a request to {addr}: {e}"))?;
        let mut body = Vec::new();
        (&mut stream)
            .take(64 * 1024)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("read the answer of {addr}: {e}"))?;
        Ok(body)
    };
    let body = tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .map_err(|_| {
            format!(
                "{addr} accepted but did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )
        })??;
    let text = String::from_utf8_lossy(&body);
    let Some((head, json)) = text.split_once("\r\n\r\n") else {
        return Err(format!("{addr} answered something that is not HTTP"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{addr} answered {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    serde_json::from_str(json.trim()).map_err(|_| {
        format!(
            "{addr} answered, but not as the lab's echo server: {}",
            json.trim()
        )
    })
}

/// The A records of `name`, asked of `nameserver` over UDP.
async fn resolve(nameserver: Ipv4Addr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};

    let qname = Name::from_ascii(name).map_err(|e| format!("{name} is not a DNS name: {e}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let id = (std::process::id() as u16) ^ (nanos as u16);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname, RecordType::A));
    let bytes = query.to_vec().map_err(|e| format!("encode a query: {e}"))?;
    let socket = UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| format!("open a UDP socket: {e}"))?;
    let server = SocketAddr::from((nameserver, 53));
    socket
        .send_to(&bytes, server)
        .await
        .map_err(|e| format!("send a query to {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, from) = tokio::time::timeout(left, socket.recv_from(&mut buf))
            .await
            .map_err(|_| {
                format!("the cluster's DNS server {server} did not answer {name} within 2 s")
            })?
            .map_err(|e| format!("read the answer of {server}: {e}"))?;
        let Ok(answer) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if from != server || answer.metadata.id != id {
            continue;
        }
        let rcode = answer.metadata.response_code;
        if rcode == ResponseCode::NXDomain {
            return Err(format!(
                "{server} answered NXDOMAIN for {name}: no cluster this one reaches exports it (is its tunnel connected? `causeway show connections`)"
            ));
        }
        if rcode != ResponseCode::NoError {
            return Err(format!("{server} answered {rcode} for {name}"));
        }
        let ips: Vec<Ipv4Addr> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        if ips.is_empty() {
            return Err(format!("{server} answered {name} with no address"));
        }
        return Ok(ips);
    }
}

/// The report as a table; each failing line says what failed.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "{:<4} {:<24} {:<3} {:<15} {:<52} {:>9}  DETAIL\n",
        "", "FROM", "TO", "CHECK", "TARGET", "TIME"
    );
    for c in &report.checks {
        let mark = match c.outcome {
            Outcome::Pass => "ok",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        let role = match c.from.role {
            NodeRole::Gateway => "gw",
            NodeRole::Worker => "worker",
        };
        let from = format!("{}/{} ({role})", c.from.cluster, c.from.pod);
        let time = c
            .millis
            .map(|m| format!("{m:.1} ms"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{mark:<4} {from:<24} {:<3} {:<15} {:<52} {time:>9}  {}",
            c.to,
            c.check.label(),
            c.target,
            c.detail
        );
    }
    let _ = writeln!(
        out,
        "\n{} passed, {} failed, {} skipped",
        report.passed, report.failed, report.skipped
    );
    out
}

/// The error `causeway verify` exits with when a check failed.
pub fn failure(report: &Report) -> Option<anyhow::Error> {
    let first = report.checks.iter().find(|c| c.outcome == Outcome::Fail)?;
    Some(anyhow!(
        "{} of {} checks failed; first: {}/{} -> {} {}: {}",
        report.failed,
        report.checks.len(),
        first.from.cluster,
        first.from.pod,
        first.to,
        first.check.label(),
        first.detail
    ))
}

/// `causeway verify` with neither `--lab` nor `--kubeconfig`.
pub fn run_kubernetes() -> Result<Report> {
    Err(anyhow!(
        "say where to verify: --lab NAME, or --kubeconfig CLUSTER=FILE once per member cluster (two or more)"
    ))
    .context("causeway verify")
}

#[cfg(test)]
mod tests;

/// `-o text|json` of the toolkit's commands.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Flags of `causeway verify`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "On Kubernetes (--kubeconfig, twice or more), verify starts in every cluster, \
in --namespace (which must exist): an echo server Pod (the image's `causeway lab echo`), a \
ClusterIP and a headless Service over it, both exported with a ServiceExport, and two client \
Pods (one with nodeSelector causeway.io/gateway=true, one on any other node) that probe every \
other cluster and print one JSON line per probe. It reads their logs, prints the table and \
deletes everything labelled causeway.io/verify=<run id>, also on an error or Ctrl-C. It needs \
create, get, list and delete on pods, pods/log, services and serviceexports in that namespace."
)]
pub struct VerifyArgs {
    /// Check this lab, using its pods.
    #[arg(long, env = "CAUSEWAY_LAB", conflicts_with = "kubeconfig")]
    pub lab: Option<LabName>,
    /// CLUSTER=FILE: a member cluster's id and a kubeconfig that reaches it
    /// (its current context); give it once per cluster, two or more.
    #[arg(long, value_name = "CLUSTER=FILE", value_parser = kube::parse_member)]
    pub kubeconfig: Vec<kube::Member>,
    /// Kubernetes: the namespace the short-lived pods and services go in.
    #[arg(long, default_value = "causeway-verify")]
    pub namespace: String,
    /// Kubernetes: the causeway image the pods run (it needs bash, as the
    /// project's Containerfile image has).
    #[arg(long, default_value = concat!("localhost/causeway:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Kubernetes: the clusters run Globalnet, so remote pods and services
    /// are reached by their global IPs (looked up by their clusterset.local
    /// names) rather than by pod IP and ClusterIP.
    #[arg(long)]
    pub globalnet: bool,
    /// Kubernetes: seconds the echo servers may take to start, and the
    /// clients to finish beyond their own probe time.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Format,
}

/// `causeway verify`: prints the table (or JSON) and fails when a check failed.
pub fn command(args: VerifyArgs) -> Result<()> {
    let report = match &args.lab {
        Some(lab) => run_lab(lab)?,
        None if !args.kubeconfig.is_empty() => kube::command(
            &args.kubeconfig,
            &kube::Settings::new(
                &args.namespace,
                &args.image,
                args.globalnet,
                Duration::from_secs(args.timeout_secs),
            ),
        )?,
        None => run_kubernetes()?,
    };
    match args.output {
        Format::Text => print!("{}", render(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    match failure(&report) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
