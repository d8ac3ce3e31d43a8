//! `causeway show topology`: the clusterset as a picture. Clusters with
//! their CIDRs, gateways (active, standby, down), tunnels with their status
//! and RTT, and exported services, as text, Graphviz DOT or SVG.
//!
//! [`Topology::from_records`] builds the picture's data from store records
//! (pure); the RTT comes from each active gateway's `/metrics`
//! ([`parse_metrics`]). [`render_dot`] writes DOT, and [`render_svg`] lays
//! that same DOT out with the `layout-rs` crate (a Graphviz-free layout
//! engine), so the two always show the same graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use causeway_api::records::{AnyRecord, ConnectionState};
use serde::Serialize;

use crate::lab::plan::LabName;
use crate::verify::labkit::LabView;

/// Where each gateway serves `/metrics`.
pub const METRICS_PORT: u16 = 9464;

/// Text, Graphviz DOT or SVG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TopologyFormat {
    Text,
    Dot,
    Svg,
    Json,
}

/// Flags of `causeway show topology`.
#[derive(clap::Args, Debug)]
pub struct TopologyArgs {
    #[arg(long, value_enum, default_value = "text")]
    pub format: TopologyFormat,
    /// Draw this lab (records from each cluster's store, RTT from the
    /// gateways' /metrics).
    #[arg(long, env = "CAUSEWAY_LAB", conflicts_with_all = ["broker_config", "store"])]
    pub lab: Option<LabName>,
    /// Draw what the broker holds (the file `causeway join` wrote).
    #[arg(long, env = "CAUSEWAY_BROKER_CONFIG", conflicts_with = "store")]
    pub broker_config: Option<PathBuf>,
    /// Draw what one cluster's own store holds (its etcd endpoints,
    /// comma-separated): its own records and those its gateway mirrored.
    #[arg(long, value_delimiter = ',')]
    pub store: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A gateway candidate's part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    Active,
    Standby,
    Down,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gateway {
    pub node: String,
    pub state: GatewayState,
    /// The public address remote gateways reach it on (the active one's).
    pub address: Option<String>,
    pub backend: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Export {
    /// `namespace/name`.
    pub service: String,
    /// The address other clusters use (its global IP with Globalnet).
    pub address: Option<String>,
    pub headless: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterNode {
    pub id: String,
    pub global_cidr: Option<String>,
    pub pod_cidrs: Vec<String>,
    pub service_cidrs: Vec<String>,
    pub gateways: Vec<Gateway>,
    pub exports: Vec<Export>,
}

/// What cluster `from`'s active gateway says about its tunnel to `to`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tunnel {
    pub from: String,
    pub to: String,
    /// `connected`, `connecting`, `error` or `unknown`.
    pub state: String,
    pub rtt_ms: Option<f64>,
    pub reason: Option<String>,
}

/// The clusterset as drawn.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Topology {
    pub clusters: Vec<ClusterNode>,
    pub tunnels: Vec<Tunnel>,
}

/// What one gateway's `/metrics` says about one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PeerMetrics {
    pub rtt_seconds: Option<f64>,
    pub connected: Option<bool>,
}

/// Per peer, the RTT and health a gateway's `/metrics` exposes
/// (`causeway_gateway_peer_rtt_seconds{peer="b"} 0.0004`).
pub fn parse_metrics(text: &str) -> BTreeMap<String, PeerMetrics> {
    let mut peers: BTreeMap<String, PeerMetrics> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(peer) = labels
            .trim_end_matches('}')
            .split(',')
            .find_map(|l| l.strip_prefix("peer=\"")?.strip_suffix('"'))
        else {
            continue;
        };
        let entry = peers.entry(peer.to_owned()).or_default();
        match name {
            "causeway_gateway_peer_rtt_seconds" => entry.rtt_seconds = Some(value),
            "causeway_gateway_peer_connected" => entry.connected = Some(value >= 1.0),
            _ => {}
        }
    }
    peers
}

/// The gateway candidates of one cluster besides the active one, as the
/// caller knows them (the lab knows its nodes; a broker does not).
pub type Candidates = BTreeMap<String, Vec<(String, bool)>>;

impl Topology {
    /// Builds the picture from `records` (each cluster's own records, or
    /// the broker's), the gateway candidates with whether each runs, and
    /// each active gateway's metrics (keyed by its cluster).
    pub fn from_records(
        records: &[AnyRecord],
        candidates: &Candidates,
        metrics: &BTreeMap<String, BTreeMap<String, PeerMetrics>>,
    ) -> Self {
        let mut ids: BTreeSet<String> = candidates.keys().cloned().collect();
        for r in records {
            ids.insert(r.owner().as_str().to_owned());
        }
        let mut clusters = Vec::new();
        for id in &ids {
            let own = || records.iter().filter(move |r| r.owner().as_str() == id);
            let record = own().find_map(|r| match r {
                AnyRecord::Cluster(c) => Some(c),
                _ => None,
            });
            let endpoint = own().find_map(|r| match r {
                AnyRecord::Endpoint(e) => Some(e),
                _ => None,
            });
            let mut gateways = Vec::new();
            if let Some(e) = endpoint {
                gateways.push(Gateway {
                    node: e.node_name.clone(),
                    state: GatewayState::Active,
                    address: Some(format!(
                        "{}:{}",
                        e.public_ip.unwrap_or(e.private_ip),
                        e.port
                    )),
                    backend: serde_json::to_value(e.backend)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned)),
                });
            }
            for (node, running) in candidates.get(id).into_iter().flatten() {
                if endpoint.is_some_and(|e| &e.node_name == node) {
                    continue;
                }
                gateways.push(Gateway {
                    node: node.clone(),
                    state: if *running {
                        GatewayState::Standby
                    } else {
                        GatewayState::Down
                    },
                    address: None,
                    backend: None,
                });
            }
            let mut exports: Vec<Export> = own()
                .filter_map(|r| match r {
                    AnyRecord::ServiceImport(i) => Some(Export {
                        service: format!("{}/{}", i.namespace, i.name),
                        address: i.addresses.first().map(ToString::to_string),
                        headless: matches!(
                            i.kind,
                            causeway_api::records::ServiceImportType::Headless
                        ),
                    }),
                    _ => None,
                })
                .collect();
            exports.sort_by(|a, b| a.service.cmp(&b.service));
            clusters.push(ClusterNode {
                id: id.clone(),
                global_cidr: record.and_then(|c| c.global_cidr.as_ref().map(ToString::to_string)),
                pod_cidrs: record
                    .map(|c| c.pod_cidrs.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                service_cidrs: record
                    .map(|c| c.service_cidrs.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                gateways,
                exports,
            });
        }
        let mut tunnels = Vec::new();
        for from in &ids {
            for to in ids.iter().filter(|t| *t != from) {
                let status = records.iter().find_map(|r| match r {
                    AnyRecord::ConnectionStatus(c)
                        if c.cluster.as_str() == from && c.peer.as_str() == to =>
                    {
                        Some(c)
                    }
                    _ => None,
                });
                let m = metrics.get(from).and_then(|m| m.get(to)).copied();
                if status.is_none() && m.is_none() {
                    continue;
                }
                let state = match (status, m.and_then(|m| m.connected)) {
                    (Some(s), _) => match s.state {
                        ConnectionState::Connected => "connected",
                        ConnectionState::Connecting => "connecting",
                        _ => "error",
                    }
                    .to_owned(),
                    (None, Some(true)) => "connected".to_owned(),
                    (None, Some(false)) => "error".to_owned(),
                    (None, None) => "unknown".to_owned(),
                };
                let rtt_ms = m
                    .and_then(|m| m.rtt_seconds)
                    .map(|s| s * 1000.0)
                    .or_else(|| {
                        status
                            .and_then(|s| s.rtt)
                            .map(|r| r.mean_us as f64 / 1000.0)
                    });
                tunnels.push(Tunnel {
                    from: from.clone(),
                    to: to.clone(),
                    state,
                    rtt_ms,
                    reason: status.and_then(|s| s.reason.clone()),
                });
            }
        }
        Self { clusters, tunnels }
    }

    fn tunnel(&self, from: &str, to: &str) -> Option<&Tunnel> {
        self.tunnels.iter().find(|t| t.from == from && t.to == to)
    }
}

fn tunnel_text(t: Option<&Tunnel>) -> String {
    match t {
        None => "no report".into(),
        Some(t) => {
            let rtt = t.rtt_ms.map(|r| format!(" {r:.2} ms")).unwrap_or_default();
            format!("{}{rtt}", t.state)
        }
    }
}

/// The picture as text.
pub fn render_text(t: &Topology) -> String {
    let mut out = String::new();
    for c in &t.clusters {
        let _ = writeln!(
            out,
            "cluster {}  global CIDR {}  pods {}  services {}",
            c.id,
            c.global_cidr.as_deref().unwrap_or("none"),
            list(&c.pod_cidrs),
            list(&c.service_cidrs)
        );
        for g in &c.gateways {
            let state = serde_json::to_value(g.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  gateway {:<10} {:<8} {} {}",
                g.node,
                state,
                g.address.as_deref().unwrap_or(""),
                g.backend.as_deref().unwrap_or("")
            );
        }
        for e in &c.exports {
            let _ = writeln!(
                out,
                "  export  {:<24} {}{}",
                e.service,
                e.address.as_deref().unwrap_or("-"),
                if e.headless { " (headless)" } else { "" }
            );
        }
    }
    for (a, b) in pairs(t) {
        let _ = writeln!(
            out,
            "tunnel {a} <-> {b}: {a} sees {}, {b} sees {}",
            tunnel_text(t.tunnel(&a, &b)),
            tunnel_text(t.tunnel(&b, &a))
        );
    }
    out
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// Each unordered pair of clusters that has a tunnel report either way.
fn pairs(t: &Topology) -> Vec<(String, String)> {
    let mut out = BTreeSet::new();
    for tun in &t.tunnels {
        let (a, b) = if tun.from < tun.to {
            (tun.from.clone(), tun.to.clone())
        } else {
            (tun.to.clone(), tun.from.clone())
        };
        out.insert((a, b));
    }
    out.into_iter().collect()
}

/// A DOT string literal's inside.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The picture as Graphviz DOT: one box per cluster (its CIDRs and
/// exports), one per gateway (active solid and green, standby dashed, down
/// red), each cluster tied to its gateways, and one edge per tunnel between
/// active gateways, labelled with each side's status and RTT.
pub fn render_dot(t: &Topology) -> String {
    let mut out = String::from("graph clusterset {\n  rankdir=LR;\n");
    for (index, c) in t.clusters.iter().enumerate() {
        let mut label = format!("cluster {}", c.id);
        if let Some(g) = &c.global_cidr {
            let _ = write!(label, "\\nglobal {g}");
        }
        let _ = write!(label, "\\npods {}", list(&c.pod_cidrs));
        let _ = write!(label, "\\nservices {}", list(&c.service_cidrs));
        for e in &c.exports {
            let _ = write!(
                label,
                "\\nexport {} {}",
                esc(&e.service),
                e.address.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            out,
            "  \"c-{}\" [shape=box, label=\"{label}\", fillcolor=\"#e8eef7\", style=filled];",
            esc(&c.id)
        );
        for g in &c.gateways {
            let (state, color, style) = match g.state {
                GatewayState::Active => ("active", "#2e7d32", "filled"),
                GatewayState::Standby => ("standby", "#757575", "dashed"),
                GatewayState::Down => ("down", "#c62828", "dashed"),
            };
            let mut label = format!("{}/{}\\n{state}", c.id, g.node);
            if let Some(a) = &g.address {
                let _ = write!(label, "\\n{a}");
            }
            let fill = if g.state == GatewayState::Active {
                ", fillcolor=\"#dcedc8\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  \"g-{}-{}\" [shape=box, label=\"{label}\", color=\"{color}\", style={style}{fill}];",
                esc(&c.id),
                esc(&g.node)
            );
            // The first cluster reads left to right (cluster, gateways,
            // tunnels), the others right to left, so tunnels run between
            // gateways in the middle: the layout ranks an edge's ends in order.
            let (cluster_end, gateway_end) = (
                format!("c-{}", esc(&c.id)),
                format!("g-{}-{}", esc(&c.id), esc(&g.node)),
            );
            let (left, right) = if index == 0 {
                (cluster_end, gateway_end)
            } else {
                (gateway_end, cluster_end)
            };
            let _ = writeln!(
                out,
                "  \"{left}\" -- \"{right}\" [color=\"{color}\", style={}];",
                if g.state == GatewayState::Active {
                    "solid"
                } else {
                    "dashed"
                }
            );
        }
    }
    let active = |id: &str| {
        t.clusters
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.gateways.iter().find(|g| g.state == GatewayState::Active))
            .map(|g| format!("g-{}-{}", esc(id), esc(&g.node)))
            .unwrap_or_else(|| format!("c-{}", esc(id)))
    };
    for (a, b) in pairs(t) {
        let (ab, ba) = (t.tunnel(&a, &b), t.tunnel(&b, &a));
        let up = [ab, ba]
            .iter()
            .all(|x| x.is_some_and(|x| x.state == "connected"));
        let color = if up { "#2e7d32" } else { "#c62828" };
        let label = format!("{a}: {}\\n{b}: {}", tunnel_text(ab), tunnel_text(ba));
        let _ = writeln!(
            out,
            "  \"{}\" -- \"{}\" [label=\"{label}\", color=\"{color}\", penwidth=2];",
            active(&a),
            active(&b)
        );
    }
    out.push_str("}\n");
    out
}

/// The picture as SVG: [`render_dot`] laid out by `layout-rs`.
pub fn render_svg(t: &Topology) -> Result<String> {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};

    let dot = render_dot(t);
    let mut parser = DotParser::new(&dot);
    let graph = parser
        .process()
        .map_err(|e| anyhow!("layout-rs could not read the DOT it was given: {e}"))?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&graph);
    let mut visual = builder.get();
    let mut svg = SVGWriter::new();
    visual.do_it(false, false, false, &mut svg);
    Ok(tighten(&svg.finalize()))
}

/// Shrinks the SVG's canvas to what is drawn: layout-rs 0.1.3 grows the
/// canvas by ten pixels per character of every text downwards, which leaves
/// most of a picture blank.
pub fn tighten(svg: &str) -> String {
    let (mut max_x, mut max_y) = (0f64, 0f64);
    let attr = |element: &str, name: &str| -> Option<f64> {
        let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
        element[start..].split('"').next()?.trim().parse().ok()
    };
    for (tag, close) in [("<rect", "/>"), ("<text", "</text>"), ("<path", "/>")] {
        let mut rest = svg;
        while let Some(at) = rest.find(tag) {
            let tail = &rest[at..];
            let end = tail
                .find(close)
                .map(|e| e + close.len())
                .unwrap_or(tail.len());
            let element = &tail[..end];
            match tag {
                "<rect" => {
                    if let (Some(x), Some(y), Some(w), Some(h)) = (
                        attr(element, "x"),
                        attr(element, "y"),
                        attr(element, "width"),
                        attr(element, "height"),
                    ) {
                        max_x = max_x.max(x + w);
                        max_y = max_y.max(y + h);
                    }
                }
                "<text" => {
                    if let (Some(x), Some(y)) = (attr(element, "x"), attr(element, "y")) {
                        let lines = element.matches("<tspan").count().max(1) as f64;
                        let widest = element
                            .split("<tspan")
                            .filter_map(|t| t.split_once('>').map(|(_, r)| r))
                            .map(|t| t.split('<').next().unwrap_or("").chars().count())
                            .max()
                            .unwrap_or(0) as f64;
                        max_x = max_x.max(x + widest * 4.5);
                        max_y = max_y.max(y + (lines + 1.0) * 16.0);
                    }
                }
                _ => {
                    if let Some(d) = element
                        .split(" d=\"")
                        .nth(1)
                        .and_then(|d| d.split('"').next())
                    {
                        let numbers: Vec<f64> = d
                            .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
                            .filter_map(|n| n.parse().ok())
                            .collect();
                        for pair in numbers.chunks(2) {
                            if let [x, y] = pair {
                                max_x = max_x.max(*x);
                                max_y = max_y.max(*y);
                            }
                        }
                    }
                }
            }
            rest = &tail[end.min(tail.len())..];
            if end == 0 {
                break;
            }
        }
    }
    let Some(open) = svg.find("<svg ") else {
        return svg.to_owned();
    };
    let Some(close) = svg[open..].find('>') else {
        return svg.to_owned();
    };
    let (w, h) = ((max_x + 10.0).ceil(), (max_y + 10.0).ceil());
    if w <= 10.0 || h <= 10.0 {
        return svg.to_owned();
    }
    format!(
        "{}<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">{}",
        &svg[..open],
        &svg[open + close + 1..]
    )
}

/// RTT and health per peer from the active gateway of each lab cluster,
/// fetched inside the gateway's node namespace from 127.0.0.1:9464.
fn lab_metrics(view: &LabView) -> BTreeMap<String, BTreeMap<String, PeerMetrics>> {
    let mut out = BTreeMap::new();
    for c in &view.state.plan.clusters {
        let Some(node) = view.active_gateway(&c.name) else {
            continue;
        };
        let Some(netns) = view.state.plan.member_netns(&c.name, node) else {
            continue;
        };
        if let Ok(text) = fetch_metrics(netns) {
            out.insert(c.name.clone(), parse_metrics(&text));
        }
    }
    out
}

/// `GET /metrics` from the gateway in node namespace `netns`.
pub fn fetch_metrics(netns: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    crate::netns::block_on(netns, || async {
        let work = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).await?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: causeway\r\nConnection: close\r\n\r\n")
                .await?;
            let mut body = Vec::new();
            (&mut s).take(4 << 20).read_to_end(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(2), work)
            .await
            .context("the gateway's /metrics did not answer within 2 s")??;
        let text = String::from_utf8_lossy(&body).into_owned();
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(text))
    })
}

/// The lab's topology: each cluster's own records from its own store, its
/// gateway candidates and whether each runs, and the active gateways' metrics.
pub fn from_lab(name: &LabName) -> Result<Topology> {
    let view = LabView::load(name)?;
    let status = crate::lab::status(name)?;
    let mut records = Vec::new();
    for (cluster, recs) in &view.records {
        records.extend(
            recs.iter()
                .filter(|r| r.owner().as_str() == cluster)
                .cloned(),
        );
    }
    let mut candidates = Candidates::new();
    for c in &view.state.plan.clusters {
        let nodes =
            c.nodes
                .iter()
                .filter(|n| n.is_gateway_candidate())
                .map(|n| {
                    let target = format!("{}/{}", c.name, n.name);
                    let running = status.processes.iter().any(|p| {
                        p.record.target == target && p.record.role == "gateway" && p.running
                    });
                    (n.name.clone(), running)
                })
                .collect();
        candidates.insert(c.name.clone(), nodes);
    }
    Ok(Topology::from_records(
        &records,
        &candidates,
        &lab_metrics(&view),
    ))
}

/// The broker's view: every cluster's records as published.
pub fn from_broker(file: &std::path::Path) -> Result<Topology> {
    let broker = crate::broker::BrokerFile::load(file)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut records = Vec::new();
    for kind in [
        causeway_api::records::Kind::Cluster,
        causeway_api::records::Kind::Endpoint,
        causeway_api::records::Kind::ConnectionStatus,
        causeway_api::records::Kind::ServiceImport,
    ] {
        records.extend(rt.block_on(crate::show::list(&broker, kind))?);
    }
    Ok(Topology::from_records(
        &records,
        &Candidates::new(),
        &BTreeMap::new(),
    ))
}

/// One cluster's view, from its own etcd store: its records and the ones
/// its active gateway mirrored from the broker.
pub fn from_store(endpoints: &[String]) -> Result<Topology> {
    use causeway_api::store::{EtcdConfig, EtcdStore, Store};
    let config = EtcdConfig::new(endpoints.to_vec());
    let rt = tokio::runtime::Runtime::new()?;
    let records = rt.block_on(async {
        let store = EtcdStore::connect(&config)
            .await
            .with_context(|| format!("connect to the store {}", endpoints.join(",")))?;
        anyhow::Ok(store.list(None).await?.records)
    })?;
    Ok(Topology::from_records(
        &records,
        &Candidates::new(),
        &BTreeMap::new(),
    ))
}

/// Draws lab `name` as SVG for `causeway lab demo`: next to the daemons'
/// logs when the lab stays up, else in the temporary directory (the lab's
/// run directory goes with it). Returns where.
pub fn write_demo_picture(name: &LabName, keep: bool) -> Result<PathBuf> {
    let svg = render_svg(&from_lab(name)?)?;
    let path = if keep {
        crate::lab::load(name)?.logs_dir().join("topology.svg")
    } else {
        std::env::temp_dir().join(format!("causeway-demo-{name}-topology.svg"))
    };
    std::fs::write(&path, svg).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// `causeway show topology`.
pub fn command(args: TopologyArgs) -> Result<()> {
    let topology = match (&args.lab, &args.broker_config) {
        (Some(lab), _) => from_lab(lab)?,
        (None, Some(file)) => from_broker(file)?,
        (None, None) if !args.store.is_empty() => from_store(&args.store)?,
        (None, None) => bail!("give --lab NAME, --broker-config FILE or --store ENDPOINTS"),
    };
    let text = render(&topology, args.format)?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// The topology in `format`.
pub fn render(topology: &Topology, format: TopologyFormat) -> Result<String> {
    Ok(match format {
        TopologyFormat::Text => render_text(topology),
        TopologyFormat::Dot => render_dot(topology),
        TopologyFormat::Svg => render_svg(topology)?,
        TopologyFormat::Json => serde_json::to_string_pretty(topology)? + "\n",
    })
}

#[cfg(test)]
mod tests;
