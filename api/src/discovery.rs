//! CIDR discovery: a cluster's pod and service CIDRs from its Kubernetes
//! API, for `causeway join` and for the daemons at start when no
//! `--pod-cidr` / `--service-cidr` is given (flags always win).
//!
//! - Pod CIDRs: Calico's IPPools (`crd.projectcalico.org/v1`, enabled
//!   pools' `spec.cidr`) when the CRD exists, since Calico's IPAM ignores
//!   the Nodes' slices; else the Nodes' `spec.podCIDRs`, summarised by
//!   [`summarise`] to the covering CIDR per family.
//! - Service CIDRs: `networking.k8s.io/v1` ServiceCIDR objects where the API
//!   server has them (Kubernetes 1.33 and later), else the API server's own
//!   answer to a dry-run Service with a ClusterIP outside every range: the
//!   refusal names the valid range ([`parse_service_range`]).
//!
//! The pure parts ([`summarise`], [`parse_service_range`], [`choose`]) are
//! unit-tested; the lookups are tested against the fake API server.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// The ClusterIP of the dry-run probe Service: outside any sane service
/// range, so the API server refuses it and names the range it allows.
pub const PROBE_CLUSTER_IP: &str = "1.1.1.1";

/// The name of the dry-run probe Service (never stored: it is a dry run).
pub const PROBE_SERVICE: &str = "causeway-cidr-probe";

/// Where a discovered range came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrSource {
    /// Given by a flag.
    Flag,
    /// Calico IPPools.
    CalicoIpPools,
    /// The Nodes' `spec.podCIDRs`.
    NodePodCidrs,
    /// `networking.k8s.io` ServiceCIDR objects.
    ServiceCidrObjects,
    /// The API server's refusal of an invalid ClusterIP.
    InvalidClusterIp,
}

impl std::fmt::Display for CidrSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CidrSource::Flag => "flag",
            CidrSource::CalicoIpPools => "Calico IPPools",
            CidrSource::NodePodCidrs => "Nodes' spec.podCIDRs",
            CidrSource::ServiceCidrObjects => "ServiceCIDR objects",
            CidrSource::InvalidClusterIp => "the API server's answer to an invalid ClusterIP",
        })
    }
}

/// A cluster's pod and service CIDRs and where each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCidrs {
    /// Pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// Where they came from.
    pub pod_source: CidrSource,
    /// Service CIDRs.
    pub service_cidrs: Vec<IpNet>,
    /// Where they came from.
    pub service_source: CidrSource,
}

/// The narrowest covering CIDR discovery hands out for Node slices: the
/// cluster CIDR is usually wider than the slices of the nodes that exist
/// now (kubeadm and k3s give a /16), and later nodes must fall inside.
pub const MIN_V4_SUMMARY: u8 = 16;
/// As [`MIN_V4_SUMMARY`], for IPv6.
pub const MIN_V6_SUMMARY: u8 = 48;

/// Summarises Node pod slices to one covering CIDR per address family:
/// the smallest prefix holding every slice, widened to at least /16
/// (IPv4) or /48 (IPv6).
pub fn summarise(slices: &[IpNet]) -> Vec<IpNet> {
    let v4: Vec<Ipv4Net> = slices
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Net> = slices
        .iter()
        .filter_map(|n| match n {
            IpNet::V6(n) => Some(n.trunc()),
            IpNet::V4(_) => None,
        })
        .collect();
    let mut out = Vec::new();
    if let Some(first) = v4.first() {
        let base = u32::from(first.network());
        let mut len = v4.iter().map(|n| n.prefix_len()).min().unwrap_or(32);
        for n in &v4 {
            len = len.min((base ^ u32::from(n.network())).leading_zeros() as u8);
        }
        let len = len.min(MIN_V4_SUMMARY);
        let net = Ipv4Net::new(Ipv4Addr::from(base), len).expect("prefix <= 32");
        out.push(IpNet::V4(net.trunc()));
    }
    if let Some(first) = v6.first() {
        let base = u128::from(first.network());
        let mut len = v6.iter().map(|n| n.prefix_len()).min().unwrap_or(128);
        for n in &v6 {
            len = len.min((base ^ u128::from(n.network())).leading_zeros() as u8);
        }
        let len = len.min(MIN_V6_SUMMARY);
        let net = Ipv6Net::new(Ipv6Addr::from(base), len).expect("prefix <= 128");
        out.push(IpNet::V6(net.trunc()));
    }
    out
}

/// The service range(s) named in the API server's refusal of a ClusterIP
/// outside them: `... provided IP is not in the valid range. The range of
/// valid IPs is 10.96.0.0/12`.
pub fn parse_service_range(message: &str) -> Vec<IpNet> {
    let Some((_, rest)) = message.split_once("valid IPs is") else {
        return Vec::new();
    };
    rest.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '"')
        .map(|w| w.trim_end_matches(['.', ')', ']']))
        .filter_map(|w| w.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

/// Picks flags over discovered ranges: `None` when neither has any.
pub fn choose(
    flags: &[IpNet],
    discovered: Option<(Vec<IpNet>, CidrSource)>,
) -> Option<(Vec<IpNet>, CidrSource)> {
    if !flags.is_empty() {
        return Some((flags.to_vec(), CidrSource::Flag));
    }
    discovered.filter(|(c, _)| !c.is_empty())
}

fn kube_err(op: &str, source: kube::Error) -> Error {
    Error::Kube {
        op: op.to_owned(),
        source,
    }
}

/// Whether an error means "this API is not here (or not ours to read)".
fn absent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 403)
}

/// Enabled Calico IPPools' CIDRs; `None` when the CRD is not installed.
pub async fn calico_pools(client: &Client) -> Result<Option<Vec<IpNet>>> {
    let ar = ApiResource {
        group: "crd.projectcalico.org".into(),
        version: "v1".into(),
        api_version: "crd.projectcalico.org/v1".into(),
        kind: "IPPool".into(),
        plural: "ippools".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) if absent(&e) => {
            debug!(error = %e, "no Calico IPPools");
            return Ok(None);
        }
        Err(e) => return Err(kube_err("list ippools.crd.projectcalico.org", e)),
    };
    let mut out = Vec::new();
    for pool in list.items {
        let spec = &pool.data["spec"];
        if spec["disabled"].as_bool() == Some(true) {
            continue;
        }
        match spec["cidr"].as_str().map(str::parse::<IpNet>) {
            Some(Ok(n)) => out.push(n.trunc()),
            _ => {
                warn!(pool = ?pool.metadata.name, "Calico IPPool without a valid spec.cidr; skipped")
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

/// Every Node's `spec.podCIDRs` (or `spec.podCIDR`).
pub async fn node_pod_cidrs(client: &Client) -> Result<Vec<IpNet>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_err("list nodes", e))?;
    let mut out = Vec::new();
    for node in list.items {
        let Some(spec) = node.spec else { continue };
        let cidrs = spec
            .pod_cidrs
            .filter(|c| !c.is_empty())
            .or_else(|| spec.pod_cidr.map(|c| vec![c]))
            .unwrap_or_default();
        out.extend(cidrs.iter().filter_map(|c| c.parse::<IpNet>().ok()));
    }
    Ok(out)
}

/// The pod CIDRs: Calico's pools when Calico runs, else the Nodes' slices
/// summarised; `None` when neither says anything.
pub async fn discover_pod_cidrs(client: &Client) -> Result<Option<(Vec<IpNet>, CidrSource)>> {
    if let Some(pools) = calico_pools(client).await?
        && !pools.is_empty()
    {
        return Ok(Some((pools, CidrSource::CalicoIpPools)));
    }
    let slices = node_pod_cidrs(client).await?;
    if slices.is_empty() {
        return Ok(None);
    }
    Ok(Some((summarise(&slices), CidrSource::NodePodCidrs)))
}

/// The CIDRs of every ServiceCIDR object; `None` when the API lacks them.
pub async fn service_cidr_objects(client: &Client) -> Result<Option<Vec<IpNet>>> {
    let api: Api<ServiceCIDR> = Api::all(client.clone());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) if absent(&e) => {
            debug!(error = %e, "no ServiceCIDR objects");
            return Ok(None);
        }
        Err(e) => return Err(kube_err("list servicecidrs", e)),
    };
    let mut out: Vec<IpNet> = list
        .items
        .iter()
        .filter_map(|s| s.spec.as_ref()?.cidrs.clone())
        .flatten()
        .filter_map(|c| c.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect();
    out.sort();
    out.dedup();
    Ok(Some(out))
}

/// Asks the API server (dry run, nothing is stored) to create a Service in
/// `namespace` with ClusterIP [`PROBE_CLUSTER_IP`] and reads the valid
/// range from its refusal.
pub async fn service_range_from_refusal(client: &Client, namespace: &str) -> Result<Vec<IpNet>> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let probe: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": PROBE_SERVICE, "namespace": namespace},
        "spec": {"clusterIP": PROBE_CLUSTER_IP, "ports": [{"port": 443, "protocol": "TCP"}]},
    }))
    .expect("a well-formed Service");
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match services.create(&params, &probe).await {
        Ok(_) => {
            // The probe address is inside the range: it says nothing about its bounds.
            warn!(
                ip = PROBE_CLUSTER_IP,
                "the API server accepted the probe ClusterIP; service CIDR unknown"
            );
            Ok(Vec::new())
        }
        Err(kube::Error::Api(s)) if s.code == 422 => Ok(parse_service_range(&s.message)),
        Err(e) => Err(kube_err("dry-run create service (service CIDR probe)", e)),
    }
}

/// The service CIDRs: ServiceCIDR objects, else the refusal of an invalid
/// ClusterIP; `None` when neither says anything.
pub async fn discover_service_cidrs(
    client: &Client,
    namespace: &str,
) -> Result<Option<(Vec<IpNet>, CidrSource)>> {
    if let Some(cidrs) = service_cidr_objects(client).await?
        && !cidrs.is_empty()
    {
        return Ok(Some((cidrs, CidrSource::ServiceCidrObjects)));
    }
    let cidrs = service_range_from_refusal(client, namespace).await?;
    Ok((!cidrs.is_empty()).then_some((cidrs, CidrSource::InvalidClusterIp)))
}

/// The cluster's CIDRs: each flag wins; what no flag gives is discovered
/// through `client` (the dry-run probe goes to `namespace`). Nothing found
/// for a range is an error naming the flag to pass.
pub async fn discover(
    client: &Client,
    namespace: &str,
    pod_flags: &[IpNet],
    service_flags: &[IpNet],
) -> Result<ClusterCidrs> {
    let pod = if pod_flags.is_empty() {
        choose(&[], discover_pod_cidrs(client).await?)
    } else {
        choose(pod_flags, None)
    };
    let Some((pod_cidrs, pod_source)) = pod else {
        return Err(Error::CidrNotFound {
            what: "pod CIDR",
            tried: "Calico IPPools and the Nodes' spec.podCIDRs",
            flag: "--pod-cidr",
        });
    };
    let service = if service_flags.is_empty() {
        choose(&[], discover_service_cidrs(client, namespace).await?)
    } else {
        choose(service_flags, None)
    };
    let Some((service_cidrs, service_source)) = service else {
        return Err(Error::CidrNotFound {
            what: "service CIDR",
            tried: "ServiceCIDR objects and the API server's answer to an invalid ClusterIP",
            flag: "--service-cidr",
        });
    };
    let cidrs = ClusterCidrs {
        pod_cidrs,
        pod_source,
        service_cidrs,
        service_source,
    };
    info!(pod = ?cidrs.pod_cidrs, pod_source = %cidrs.pod_source,
          service = ?cidrs.service_cidrs, service_source = %cidrs.service_source,
          "cluster CIDRs");
    Ok(cidrs)
}

#[cfg(test)]
mod tests;
