//! The service proxy's pure part: the cluster's Services and EndpointSlices
//! in, the `lab-kube-proxy` nftables table out, in the shape kube-proxy's
//! nftables mode gives its own table:
//!
//! ```text
//! chain nat-prerouting { type nat hook prerouting priority dstnat; jump services }
//! chain nat-output     { type nat hook output priority dstnat; jump services }
//! chain nat-postrouting { type nat hook postrouting priority srcnat; jump masquerading }
//! chain services { ip daddr . meta l4proto . th dport vmap @service-ips }
//! chain service-NS/NAME/PROTO/PORT {
//!     ip daddr CIP meta l4proto PROTO th dport PORT ip saddr != CLUSTER_CIDR jump mark-for-masquerade
//!     [affinity] ip saddr @affinity-EP goto endpoint-EP          (one per endpoint)
//!     numgen random mod N vmap { 0 : goto endpoint-EP0, ... }
//! }
//! chain endpoint-NS/NAME/PROTO/PORT__IP/PORT {
//!     ip saddr IP jump mark-for-masquerade                        (hairpin)
//!     [affinity] update @affinity-EP { ip saddr timeout T }
//!     meta l4proto PROTO dnat ip to IP:PORT
//! }
//! ```
//!
//! A Service port with no ready endpoint is in `no-endpoint-services`
//! instead, whose traffic the filter chains reject, as kube-proxy does:
//!
//! ```text
//! chain filter-forward { type filter hook forward priority -10; jump service-endpoints-check }
//! chain filter-output  { type filter hook output priority -10; jump service-endpoints-check }
//! chain service-endpoints-check { ip daddr . meta l4proto . th dport vmap @no-endpoint-services }
//! chain reject-chain { reject }
//! ```
//!
//! Chain and set names carry the port's name (its number when unnamed).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use causeway_api::source::ClusterState;
use causeway_globalnet::nft::expr::{
    Expr, Stmt, anon_pairs, concat, goto, goto_value, ip_daddr, ip_saddr, jump, match_eq, match_ne,
    meta_l4proto, number, numgen_random, prefix, ret, set_ref, string, th_dport, update_set, vmap,
};
use causeway_globalnet::nft::{
    BaseChain, Chain, ChainType, DataType, Family, Hook, Rule, Set, SetFlag, Table, Value, Verdict,
    priority,
};
use ipnet::Ipv4Net;
use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression};
use nftables::stmt::{Mangle, NAT, NATFlag, Statement};

/// The proxy's own table; Causeway's tables are never touched.
pub const TABLE: &str = "lab-kube-proxy";
/// The packet mark bit that asks for masquerade, as kube-proxy uses it.
pub const MASQUERADE_MARK: u32 = 0x4000;
/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// The verdict map from `ClusterIP . protocol . port` to a service chain.
pub const SERVICE_IPS: &str = "service-ips";
/// The verdict map of Service ports without endpoints, to `reject-chain`.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// The filter chains' priority (kube-proxy's `filter - 10`).
const FILTER_PRIORITY: i32 = priority::FILTER - 10;

/// A transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The name `nft` uses (`tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The protocol a Kubernetes object names (`TCP`; none means TCP).
    pub fn from_k8s(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One port of one Service with a ClusterIP, and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// The port's name (may be empty).
    pub port_name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// ClientIP session affinity and its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Ready endpoints: address and target port (from the EndpointSlice).
    pub endpoints: BTreeSet<SocketAddrV4>,
}

impl ServicePort {
    /// `NS/NAME/PROTO/PORT`, the stem of this port's chain and set names.
    fn id(&self) -> String {
        let port = if self.port_name.is_empty() {
            self.port.to_string()
        } else {
            self.port_name.clone()
        };
        format!(
            "{}/{}/{}/{port}",
            self.namespace,
            self.name,
            self.protocol.as_str()
        )
    }

    /// The chain that picks an endpoint.
    pub fn chain(&self) -> String {
        format!("service-{}", self.id())
    }

    /// The chain that DNATs to endpoint `ep`.
    pub fn endpoint_chain(&self, ep: SocketAddrV4) -> String {
        format!("endpoint-{}__{}/{}", self.id(), ep.ip(), ep.port())
    }

    /// The set of clients pinned to endpoint `ep`.
    pub fn affinity_set(&self, ep: SocketAddrV4) -> String {
        format!("affinity-{}__{}/{}", self.id(), ep.ip(), ep.port())
    }
}

/// Every port of every Service that has an IPv4 ClusterIP, with the ready
/// endpoints its EndpointSlices list for that port (matched by port name
/// and protocol, as kube-proxy does). Services without a selector work the
/// same: only the slices labelled with the Service's name count.
pub fn service_ports(state: &ClusterState) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for ((ns, name), svc) in &state.services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // none yet, headless ("None"), or IPv6
        };
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::from_k8s(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let mut endpoints = BTreeSet::new();
            for slice in state.slices_of(ns, name) {
                if slice.address_type != "IPv4" {
                    continue;
                }
                let Some(target) = slice.ports.iter().flatten().find_map(|sp| {
                    let same = sp.name.as_deref().unwrap_or("") == port_name
                        && Protocol::from_k8s(sp.protocol.as_deref()) == Some(protocol);
                    same.then_some(sp.port)
                        .flatten()
                        .and_then(|n| u16::try_from(n).ok())
                }) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    if let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) {
                        endpoints.insert(SocketAddrV4::new(ip, target));
                    }
                }
            }
            out.push(ServicePort {
                namespace: ns.clone(),
                name: name.clone(),
                port_name,
                protocol,
                cluster_ip,
                port,
                affinity_timeout,
                endpoints,
            });
        }
    }
    out
}

/// The UDP flows to drop when `before` becomes `after`, as kube-proxy
/// drops them: `(ClusterIP, endpoint address)` for every endpoint that left
/// a UDP Service port (UDP has no connection end that would stop a client
/// sending to an endpoint that is gone).
pub fn departed_udp(
    before: &[ServicePort],
    after: &[ServicePort],
) -> BTreeSet<(Ipv4Addr, Ipv4Addr)> {
    let key = |p: &ServicePort| (p.cluster_ip, p.protocol, p.port);
    let now: BTreeMap<_, &BTreeSet<SocketAddrV4>> =
        after.iter().map(|p| (key(p), &p.endpoints)).collect();
    let mut out = BTreeSet::new();
    for p in before.iter().filter(|p| p.protocol == Protocol::Udp) {
        for ep in &p.endpoints {
            if !now.get(&key(p)).is_some_and(|eps| eps.contains(ep)) {
                out.insert((p.cluster_ip, *ep.ip()));
            }
        }
    }
    out
}

fn meta_mark() -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }))
}

/// `meta mark set mark | 0x4000`.
fn mark_for_masquerade() -> Stmt {
    Statement::Mangle(Mangle {
        key: meta_mark(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            meta_mark(),
            number(MASQUERADE_MARK),
        ]))),
    })
}

/// `meta mark & 0x4000 == 0`.
fn not_marked() -> Stmt {
    match_eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            meta_mark(),
            number(MASQUERADE_MARK),
        ))),
        number(0),
    )
}

/// `meta mark set mark ^ 0x4000`.
fn clear_mark() -> Stmt {
    Statement::Mangle(Mangle {
        key: meta_mark(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::XOR(
            meta_mark(),
            number(MASQUERADE_MARK),
        ))),
    })
}

/// `masquerade fully-random`.
fn masquerade() -> Stmt {
    Statement::Masquerade(Some(NAT {
        addr: None,
        family: None,
        port: None,
        flags: Some(HashSet::from([NATFlag::FullyRandom])),
    }))
}

/// `dnat ip to IP:PORT`.
fn dnat(ep: SocketAddrV4) -> Stmt {
    causeway_globalnet::nft::expr::dnat_to_port(*ep.ip(), ep.port())
}

/// The whole `lab-kube-proxy` table for `ports`; traffic to a ClusterIP from
/// outside `cluster_cidr` (host processes, other networks) is masqueraded,
/// as kube-proxy does when it knows the cluster CIDR.
pub fn plan(ports: &[ServicePort], cluster_cidr: Ipv4Net) -> Table {
    let mut t = Table::new(Family::Ip, TABLE);
    let dstnat = |hook| BaseChain::new(ChainType::Nat, hook, priority::DSTNAT);
    t.chains.insert(
        "nat-prerouting".into(),
        Chain::base(
            dstnat(Hook::Prerouting),
            vec![Rule::new(vec![jump("services")])],
        ),
    );
    t.chains.insert(
        "nat-output".into(),
        Chain::base(
            dstnat(Hook::Output),
            vec![Rule::new(vec![jump("services")])],
        ),
    );
    t.chains.insert(
        "nat-postrouting".into(),
        Chain::base(
            BaseChain::new(ChainType::Nat, Hook::Postrouting, priority::SRCNAT),
            vec![Rule::new(vec![jump("masquerading")])],
        ),
    );
    t.chains.insert(
        "services".into(),
        Chain::regular(vec![Rule::new(vec![vmap(
            concat(vec![ip_daddr(), meta_l4proto(), th_dport()]),
            set_ref(SERVICE_IPS),
        )])]),
    );
    t.chains.insert(
        "mark-for-masquerade".into(),
        Chain::regular(vec![Rule::new(vec![mark_for_masquerade()])]),
    );
    t.chains.insert(
        "masquerading".into(),
        Chain::regular(vec![
            Rule::new(vec![not_marked(), ret()]),
            Rule::new(vec![clear_mark()]),
            Rule::new(vec![masquerade()]),
        ]),
    );
    let filter = |hook| BaseChain::new(ChainType::Filter, hook, FILTER_PRIORITY);
    for (name, hook) in [
        ("filter-forward", Hook::Forward),
        ("filter-output", Hook::Output),
    ] {
        t.chains.insert(
            name.into(),
            Chain::base(
                filter(hook),
                vec![Rule::new(vec![jump("service-endpoints-check")])],
            ),
        );
    }
    t.chains.insert(
        "service-endpoints-check".into(),
        Chain::regular(vec![Rule::new(vec![vmap(
            concat(vec![ip_daddr(), meta_l4proto(), th_dport()]),
            set_ref(NO_ENDPOINT_SERVICES),
        )])]),
    );
    t.chains.insert(
        "reject-chain".into(),
        Chain::regular(vec![Rule::new(vec![Statement::Reject(None)])]),
    );
    let verdict_map = || {
        Set::map(
            vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ],
            vec![DataType::Verdict],
        )
    };
    let mut service_ips = verdict_map();
    let mut no_endpoints = verdict_map();
    // One entry per ClusterIP . protocol . port: the first Service (in
    // namespace/name order) that claims it wins, as with a duplicate IP.
    let mut claimed = BTreeMap::new();
    for sp in ports {
        let key = Value::Concat(vec![
            Value::Addr(sp.cluster_ip),
            Value::Str(sp.protocol.as_str().into()),
            Value::from(sp.port),
        ]);
        if claimed.contains_key(&key) {
            continue;
        }
        claimed.insert(key.clone(), ());
        if sp.endpoints.is_empty() {
            no_endpoints.insert_map(key, Verdict::Goto("reject-chain".into()));
            continue;
        }
        service_ips.insert_map(key, Verdict::Goto(sp.chain()));
        let proto = || match_eq(meta_l4proto(), string(sp.protocol.as_str()));
        let mut rules = vec![Rule::new(vec![
            match_eq(ip_daddr(), string(sp.cluster_ip.to_string())),
            proto(),
            match_eq(th_dport(), number(u32::from(sp.port))),
            match_ne(ip_saddr(), prefix(cluster_cidr)),
            jump("mark-for-masquerade"),
        ])];
        if sp.affinity_timeout.is_some() {
            for ep in &sp.endpoints {
                rules.push(Rule::new(vec![
                    match_eq(ip_saddr(), set_ref(&sp.affinity_set(*ep))),
                    goto(sp.endpoint_chain(*ep)),
                ]));
            }
        }
        let pairs = sp
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| (number(i as u32), goto_value(sp.endpoint_chain(*ep))))
            .collect();
        rules.push(Rule::new(vec![vmap(
            numgen_random(sp.endpoints.len() as u32),
            anon_pairs(pairs),
        )]));
        t.chains.insert(sp.chain(), Chain::regular(rules));
        for ep in &sp.endpoints {
            let mut rules = vec![Rule::new(vec![
                match_eq(ip_saddr(), string(ep.ip().to_string())),
                jump("mark-for-masquerade"),
            ])];
            if let Some(timeout) = sp.affinity_timeout {
                let mut set = Set::new(vec![DataType::Ipv4Addr]);
                set.flags.insert(SetFlag::Timeout);
                t.sets.insert(sp.affinity_set(*ep), set);
                rules.push(Rule::new(vec![update_set(
                    &sp.affinity_set(*ep),
                    ip_saddr(),
                    timeout,
                )]));
            }
            rules.push(Rule::new(vec![proto(), dnat(*ep)]));
            t.chains
                .insert(sp.endpoint_chain(*ep), Chain::regular(rules));
        }
    }
    t.sets.insert(SERVICE_IPS.into(), service_ips);
    t.sets.insert(NO_ENDPOINT_SERVICES.into(), no_endpoints);
    t
}

#[cfg(test)]
mod tests;
