//! `causeway show`: what the clusterset looks like from the broker's
//! records, as a table or as JSON.

use std::fmt::Write;

use anyhow::Result;
use causeway_api::records::{AnyRecord, ConnectionStatus, Endpoint, Kind, ServiceImport};

use crate::broker::BrokerFile;

/// Every record of `kind` the broker holds (an etcd or a Kubernetes broker).
pub async fn list(broker: &BrokerFile, kind: Kind) -> Result<Vec<AnyRecord>> {
    Ok(broker.connect().await?.list(Some(kind)).await?.records)
}

pub fn endpoints(records: &[AnyRecord]) -> Vec<&Endpoint> {
    records
        .iter()
        .filter_map(|r| match r {
            AnyRecord::Endpoint(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub fn connections(records: &[AnyRecord]) -> Vec<&ConnectionStatus> {
    records
        .iter()
        .filter_map(|r| match r {
            AnyRecord::ConnectionStatus(c) => Some(c),
            _ => None,
        })
        .collect()
}

pub fn imports(records: &[AnyRecord]) -> Vec<&ServiceImport> {
    records
        .iter()
        .filter_map(|r| match r {
            AnyRecord::ServiceImport(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// A cluster's global addresses: its global CIDR (Cluster record) and the
/// egress pool its active gateway publishes (Endpoint record).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGlobals {
    pub cluster: String,
    pub global_cidr: Option<String>,
    pub egress_ips: Vec<std::net::IpAddr>,
}

/// The global addresses of every cluster with a global CIDR.
pub fn cluster_globals(records: &[AnyRecord]) -> Vec<ClusterGlobals> {
    let mut out: std::collections::BTreeMap<String, ClusterGlobals> = Default::default();
    for r in records {
        let (id, cidr, egress) = match r {
            AnyRecord::Cluster(c) => (&c.id, c.global_cidr.map(|g| g.to_string()), None),
            AnyRecord::Endpoint(e) => (&e.cluster, None, Some(e.egress_ips.clone())),
            _ => continue,
        };
        let entry = out.entry(id.to_string()).or_insert_with(|| ClusterGlobals {
            cluster: id.to_string(),
            global_cidr: None,
            egress_ips: Vec::new(),
        });
        entry.global_cidr = entry.global_cidr.take().or(cidr);
        if let Some(egress) = egress {
            entry.egress_ips = egress;
        }
    }
    out.into_values()
        .filter(|c| c.global_cidr.is_some())
        .collect()
}

/// One line per cluster with a global CIDR, above the exports table.
pub fn render_globals(globals: &[ClusterGlobals]) -> String {
    let mut out = String::new();
    for g in globals {
        let egress: Vec<String> = g.egress_ips.iter().map(ToString::to_string).collect();
        let egress = if egress.is_empty() {
            "-".to_owned()
        } else {
            egress.join(",")
        };
        let _ = writeln!(
            out,
            "cluster {}: global CIDR {}, egress IPs {egress}",
            g.cluster,
            g.global_cidr.as_deref().unwrap_or("-"),
        );
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// `show endpoints` as a table.
pub fn render_endpoints(endpoints: &[&Endpoint]) -> String {
    let mut out = format!(
        "{:<12} {:<12} {:<13} {:<22} {:<6} SUBNETS\n",
        "CLUSTER", "GATEWAY", "BACKEND", "PUBLIC ADDRESS", "MTU"
    );
    for e in endpoints {
        let address = format!("{}:{}", e.public_ip.unwrap_or(e.private_ip), e.port);
        let backend = serde_json::to_value(e.backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let subnets: Vec<String> = e.subnets.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:<13} {:<22} {:<6} {}",
            e.cluster.as_str(),
            e.node_name,
            backend,
            address,
            e.mtu,
            subnets.join(",")
        );
    }
    out
}

/// `show connections` as a table.
pub fn render_connections(connections: &[&ConnectionStatus]) -> String {
    let mut out = format!(
        "{:<12} {:<12} {:<11} {:<10} {:<10} REASON\n",
        "CLUSTER", "PEER", "STATE", "RTT", "MAX RTT"
    );
    for c in connections {
        let state = serde_json::to_value(c.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let ms = |us: u64| format!("{:.2}ms", us as f64 / 1000.0);
        let (rtt, max) = c
            .rtt
            .map(|r| (ms(r.mean_us), ms(r.max_us)))
            .unwrap_or(("-".into(), "-".into()));
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:<11} {:<10} {:<10} {}",
            c.cluster.as_str(),
            c.peer.as_str(),
            state,
            rtt,
            max,
            c.reason.as_deref().unwrap_or("")
        );
    }
    out
}

/// `show exports` as a table.
pub fn render_imports(imports: &[&ServiceImport]) -> String {
    let mut out = format!(
        "{:<12} {:<28} {:<13} {:<18} PORTS\n",
        "CLUSTER", "SERVICE", "TYPE", "ADDRESS"
    );
    for i in imports {
        let kind = if matches!(i.kind, causeway_api::records::ServiceImportType::Headless) {
            "Headless"
        } else {
            "ClusterSetIP"
        };
        let address = i
            .addresses
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into());
        let ports: Vec<String> = i
            .ports
            .iter()
            .map(|p| format!("{}/{:?}", p.port, p.protocol).to_lowercase())
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:<28} {:<13} {:<18} {}",
            i.cluster.as_str(),
            format!("{}/{}", i.namespace, i.name),
            kind,
            address,
            ports.join(",")
        );
    }
    out
}
