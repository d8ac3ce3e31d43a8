//! Globalnet on the active gateway: from the cluster's exports (its cluster
//! source) and the global IPs its own ServiceImport records already name,
//! allocate global IPs (IPAM in `causeway-globalnet`) and compute the NAT
//! input of Causeway's gateway table. Pure: [`plan`] is a function of its
//! inputs, so a restarted or newly active gateway reading the same records
//! and exports computes the same addresses (no address changes hands in a
//! failover).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use causeway_api::records::{Endpoint, ServiceImport};
use causeway_api::source::ClusterState;
use causeway_globalnet::ipam::{self, ExportKey, IngressKey, Owner};
use causeway_globalnet::ruleset::{self, Protocol, ServiceIngress, ServicePort};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What Globalnet is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalnetConfig {
    /// The cluster's global CIDR.
    pub cidr: Ipv4Net,
    /// Size of the egress pool.
    pub egress_pool: usize,
    /// Local pod CIDR, service CIDR and node network: SNATed to the pool.
    pub local_sources: Vec<Ipv4Net>,
    /// Tunnel MTU, for MSS clamping.
    pub mtu: u16,
}

/// The outcome: addresses and the NAT input (remote globals filled in by
/// the datapath, which knows the peers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPlan {
    /// The gateway's own global IP: its tunnel address.
    pub gateway_ip: Option<Ipv4Addr>,
    /// The egress pool.
    pub egress: Vec<Ipv4Addr>,
    /// Each ClusterIP export's ingress global IP.
    pub services: BTreeMap<ExportKey, Ipv4Addr>,
    /// Each headless export's endpoints: (hostname or pod name, global IP, pod IP).
    pub headless: BTreeMap<ExportKey, Vec<(String, Ipv4Addr, Ipv4Addr)>>,
    /// Exports that could not be served, with why.
    pub errors: BTreeMap<ExportKey, String>,
    /// The ruleset input.
    pub input: ruleset::Input,
}

/// Plans Globalnet for the exports in `state`, re-adopting the addresses
/// that this cluster's records name: its ServiceImports (ingress IPs) and
/// its Endpoint (gateway IP and egress pool).
pub fn plan(
    config: &GlobalnetConfig,
    state: &ClusterState,
    own_imports: &[ServiceImport],
    own_endpoint: Option<&Endpoint>,
) -> NatPlan {
    let exports = exported_services(state);
    let mut wanted = BTreeSet::new();
    for (key, svc) in &exports {
        if is_headless(svc) {
            for (name, _) in headless_endpoints(state, key) {
                wanted.insert(IngressKey::endpoint(key.clone(), name));
            }
        } else {
            wanted.insert(IngressKey::service(key.clone()));
        }
    }
    let mut records = Vec::new();
    if let Some(e) = own_endpoint {
        if let Some(IpAddr::V4(ip)) = e.health_check_ip {
            records.push((Owner::Gateway, ip));
        }
        for ip in &e.egress_ips {
            if let IpAddr::V4(ip) = ip {
                records.push((Owner::Egress, *ip));
            }
        }
    }
    for import in own_imports {
        let key = ExportKey::new(import.namespace.to_string(), import.name.to_string());
        if let Some(IpAddr::V4(ip)) = import.addresses.first() {
            records.push((Owner::Ingress(IngressKey::service(key.clone())), *ip));
        }
        for ep in &import.endpoints {
            if let (IpAddr::V4(ip), Some(name)) = (ep.address, endpoint_name(ep)) {
                records.push((Owner::Ingress(IngressKey::endpoint(key.clone(), name)), ip));
            }
        }
    }
    let allocation = ipam::allocate(&ipam::Request {
        cidr: config.cidr,
        egress_pool_size: config.egress_pool,
        wanted,
        records,
    });
    let mut out = NatPlan {
        gateway_ip: allocation.gateway.as_ref().ok().copied(),
        egress: allocation.egress.clone(),
        services: BTreeMap::new(),
        headless: BTreeMap::new(),
        errors: BTreeMap::new(),
        input: ruleset::Input::new(config.local_sources.clone(), Vec::new()),
    };
    out.input.egress = allocation.egress.clone();
    out.input.tunnel_mtu = Some(config.mtu);
    for (ingress, result) in &allocation.ingress {
        let key = &ingress.export;
        match (result, &ingress.endpoint) {
            (Err(e), _) => {
                out.errors.insert(key.clone(), e.to_string());
            }
            (Ok(ip), None) => {
                out.services.insert(key.clone(), *ip);
                if let Some(timeout) = client_ip_affinity(exports[key]) {
                    out.input.affinity.insert(key.clone(), timeout);
                }
                let ports = service_ports(state, key, exports[key]);
                out.input.services.push(ServiceIngress {
                    key: key.clone(),
                    global_ip: *ip,
                    ports,
                });
            }
            (Ok(ip), Some(name)) => {
                if let Some(pod_ip) = headless_endpoints(state, key)
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, ip)| ip)
                {
                    out.headless
                        .entry(key.clone())
                        .or_default()
                        .push((name.clone(), *ip, pod_ip));
                    out.input.hosts.insert(*ip, pod_ip);
                }
            }
        }
    }
    out
}

/// The name a headless endpoint's global IP is allocated under, as the
/// planner names it: its hostname, else its pod address with dashes.
fn endpoint_name(ep: &causeway_api::records::HeadlessEndpoint) -> Option<String> {
    ep.hostname
        .clone()
        .or_else(|| Some(ep.local_address.to_string().replace(['.', ':'], "-")))
}

/// Exported Services that exist and are ClusterIP or headless.
fn exported_services(state: &ClusterState) -> BTreeMap<ExportKey, &Service> {
    state
        .service_exports
        .keys()
        .filter_map(|(ns, name)| {
            let svc = state.services.get(&(ns.clone(), name.clone()))?;
            let kind = svc.spec.as_ref()?.type_.as_deref().unwrap_or("ClusterIP");
            (kind == "ClusterIP").then(|| (ExportKey::new(ns, name), svc))
        })
        .collect()
}

/// The Service's ClientIP session affinity timeout, in seconds (settled
/// decision 14; Kubernetes' default is 10800).
fn client_ip_affinity(svc: &Service) -> Option<u32> {
    let spec = svc.spec.as_ref()?;
    (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10_800)
    })
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Ready endpoints of a headless export: (hostname or dashed address, pod IP).
fn headless_endpoints(state: &ClusterState, key: &ExportKey) -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    for slice in state.slices_of(&key.namespace, &key.name) {
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in ep
                .addresses
                .iter()
                .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            {
                let name = ep
                    .hostname
                    .clone()
                    .unwrap_or_else(|| addr.to_string().replace('.', "-"));
                out.push((name, addr));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Each port of a ClusterIP export with its ready endpoints (pod IP and
/// target port, resolved through the EndpointSlices by port name).
fn service_ports(state: &ClusterState, key: &ExportKey, svc: &Service) -> Vec<ServicePort> {
    let Some(ports) = svc.spec.as_ref().and_then(|s| s.ports.as_ref()) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                _ => return None,
            };
            let mut endpoints = BTreeSet::new();
            for slice in state.slices_of(&key.namespace, &key.name) {
                let target = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|sp| sp.name == p.name)
                    .and_then(|sp| sp.port)
                    .or(match &p.target_port {
                        Some(IntOrString::Int(n)) => Some(*n),
                        _ => None,
                    });
                let Some(target) = target.and_then(|t| u16::try_from(t).ok()) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for addr in ep
                        .addresses
                        .iter()
                        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    {
                        endpoints.insert(SocketAddrV4::new(addr, target));
                    }
                }
            }
            Some(ServicePort {
                protocol,
                port: u16::try_from(p.port).ok()?,
                endpoints,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_api::source::{Manifest, parse_manifests};

    fn state(yaml: &str) -> ClusterState {
        let mut s = ClusterState {
            synced: true,
            ..ClusterState::default()
        };
        let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        for m in parse_manifests(yaml).unwrap() {
            match m {
                Manifest::Service(o) => drop(s.services.insert(key(&o.metadata), *o)),
                Manifest::EndpointSlice(o) => drop(s.endpoint_slices.insert(key(&o.metadata), *o)),
                Manifest::ServiceExport(o) => drop(s.service_exports.insert(key(&o.metadata), *o)),
                _ => {}
            }
        }
        s
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.0.2]
  conditions: {ready: true}
- addresses: [10.244.1.2]
  conditions: {ready: true}
- addresses: [10.244.2.9]
  conditions: {ready: false}
"#;
    const EXPORT: &str = "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: web, namespace: default}\n";

    fn config() -> GlobalnetConfig {
        GlobalnetConfig {
            cidr: "242.1.0.0/16".parse().unwrap(),
            egress_pool: 2,
            local_sources: vec!["10.244.0.0/16".parse().unwrap()],
            mtu: 1440,
        }
    }

    #[test]
    fn an_export_gets_a_global_ip_that_dnats_to_its_ready_endpoints() {
        let plan = plan(&config(), &state(&format!("{WEB}{EXPORT}")), &[], None);
        assert_eq!(plan.gateway_ip, Some("242.1.0.1".parse().unwrap()));
        assert_eq!(plan.egress.len(), 2);
        let ip = plan.services[&ExportKey::new("default", "web")];
        assert!(!plan.egress.contains(&ip) && Some(ip) != plan.gateway_ip);
        let svc = &plan.input.services[0];
        assert_eq!(svc.global_ip, ip);
        let endpoints: Vec<String> = svc.ports[0]
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            endpoints,
            ["10.244.0.2:8080", "10.244.1.2:8080"],
            "only ready endpoints, at the target port"
        );
        assert_eq!(svc.ports[0].port, 80);
    }

    #[test]
    fn client_ip_affinity_reaches_the_ruleset_with_its_timeout() {
        let sticky = WEB.replace(
            "  selector: {app: web}\n",
            "  selector: {app: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}\n",
        );
        let plan = plan(&config(), &state(&format!("{sticky}{EXPORT}")), &[], None);
        assert_eq!(
            plan.input.affinity.get(&ExportKey::new("default", "web")),
            Some(&10)
        );
        let plain = super::plan(&config(), &state(&format!("{WEB}{EXPORT}")), &[], None);
        assert!(plain.input.affinity.is_empty());
    }

    #[test]
    fn the_egress_pool_is_readopted_from_the_endpoint_record() {
        let first = plan(&config(), &state(&format!("{WEB}{EXPORT}")), &[], None);
        // A record written by an earlier gateway, with a pool of its own
        // (another default, say): the new gateway keeps it, in its order.
        let recorded: Vec<IpAddr> =
            vec!["242.1.0.9".parse().unwrap(), "242.1.0.8".parse().unwrap()];
        let endpoint = Endpoint {
            cluster: "b".parse().unwrap(),
            node_name: "node-0".into(),
            public_ip: None,
            private_ip: "192.168.50.10".parse().unwrap(),
            port: 4500,
            public_key: causeway_api::records::WireGuardKey::from_bytes([7; 32]),
            subnets: vec!["242.1.0.0/16".parse().unwrap()],
            backend: causeway_api::records::CableBackend::Userspace,
            mtu: 1420,
            health_check_ip: Some("242.1.0.1".parse().unwrap()),
            egress_ips: recorded.clone(),
        };
        let again = plan(
            &config(),
            &state(&format!("{WEB}{EXPORT}")),
            &[],
            Some(&endpoint),
        );
        let egress: Vec<IpAddr> = again.egress.iter().copied().map(IpAddr::V4).collect();
        assert_eq!(egress, recorded);
        assert_eq!(
            again.input.egress, again.egress,
            "the SNAT hash indexes this order"
        );
        assert_eq!(again.gateway_ip, first.gateway_ip);
        let web = ExportKey::new("default", "web");
        assert!(!again.egress.contains(&again.services[&web]));
    }

    #[test]
    fn without_an_export_nothing_is_allocated_and_a_missing_service_is_skipped() {
        assert!(plan(&config(), &state(WEB), &[], None).services.is_empty());
        assert!(
            plan(&config(), &state(EXPORT), &[], None)
                .services
                .is_empty()
        );
    }
}
