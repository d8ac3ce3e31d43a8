//! The Globalnet ruleset: what Causeway's table on the active gateway holds.
//!
//! ```text
//! gn-ingress  nat prerouting  dstnat - 20
//!     [with affinity, per slot i] ip saddr @remote_global
//!         ip saddr . ip daddr . meta l4proto . th dport @affinity_slot{i} jump gn-slot-i
//!     ip saddr @remote_global ip daddr . meta l4proto . th dport vmap @ingress_services
//!     ip saddr @remote_global dnat ip to ip daddr map @ingress_hosts
//! gn-lb-N     (N = 1 up to the largest endpoint count in use, capped at 64,
//!              and every larger count in use)
//!     numgen random mod N vmap { 0 : goto gn-slot-0, ..., N-1 : goto gn-slot-(N-1) }
//! gn-slot-i   (one per endpoint index i below the largest N)
//!     [with affinity] ip daddr . meta l4proto . th dport @affinity_Ts
//!         update @affinity_slot{i} { ip saddr . ip daddr . meta l4proto . th dport timeout T }
//!     meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport map @slot{i}_addr
//!                            : ip daddr . meta l4proto . th dport map @slot{i}_port
//!     (the same for udp and sctp)
//! gn-egress   nat postrouting srcnat - 20
//!     ip saddr @local_sources ip daddr @remote_global
//!         snat ip to jhash ip saddr mod N seed S map { 0 : 242.0.0.2, ... }
//! identity    nat postrouting srcnat - 10   (Settled decision 2)
//!     ip daddr @remote_global snat ip to ip saddr
//!     ip saddr @remote_global snat ip to ip saddr
//! mss         filter forward mangle
//!     ip daddr @remote_global tcp flags & (syn|rst) == syn tcp option maxseg size > M ... set M
//!     ip saddr @remote_global (the same)
//! ```
//!
//! Every per-export fact is a map element: a service port with N ready
//! endpoints is one `ingress_services` element (`goto gn-lb-N`) and, for
//! each endpoint i, one element in `slot{i}_addr` and one in `slot{i}_port`,
//! all keyed by the service's `global IP . protocol . port`. The chains are
//! shared by all services and only depend on which endpoint counts occur,
//! so adding, removing or rescaling an export changes map elements only
//! (chains appear only when the largest endpoint count grows). `gn-lb-N` picks a
//! slot with `numgen random`; the slot chain looks its endpoint up.
//!
//! Why not simpler: one map to `ip . port` per slot cannot be declared
//! through JSON with nft 1.0.6 (no concatenated value types), hence the
//! address and port maps with the same key; a slot number cannot be part of
//! a map key (numgen's type does not concatenate), hence a chain per slot;
//! and a chain per service with an anonymous numgen map took the kernel 20 s
//! for 10,000 services (it names every anonymous set by scanning the others),
//! while plain per-service rules cost 30,000 rules (1.2 s of CPU in `nft`).
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use crate::ipam::ExportKey;
use crate::nft::expr::*;
use crate::nft::priority;
use crate::nft::{BaseChain, Chain, ChainType, DataType, Family, Hook, Rule, Set, Table, Value};

mod elements;

pub use elements::element_delta;
use elements::{ElementSet, Shape, service_elements};

/// Default name of the gateway's table.
pub const DEFAULT_TABLE: &str = "causeway-gateway";
/// Seed of the egress hash. Fixed, so every gateway (and every restart)
/// maps a source address to the same egress IP; without one the kernel
/// picks a random seed per rule.
pub const DEFAULT_HASH_SEED: u32 = 0x00ca_05e1;

/// Chain names.
pub mod chains {
    /// DNAT of ingress global IPs (nat prerouting, dstnat - 20).
    pub const INGRESS: &str = "gn-ingress";
    /// SNAT to the egress pool (nat postrouting, srcnat - 20).
    pub const EGRESS: &str = "gn-egress";
    /// Identity SNAT that keeps other NAT off inter-cluster traffic
    /// (nat postrouting, srcnat - 10).
    pub const IDENTITY: &str = "identity";
    /// TCP MSS clamping (filter forward, mangle).
    pub const MSS: &str = "mss";

    /// The chain that picks one of `n` endpoint slots at random.
    pub fn lb(n: usize) -> String {
        format!("gn-lb-{n}")
    }

    /// The chain that DNATs to the endpoint in slot `i` of any service.
    pub fn slot(i: usize) -> String {
        format!("gn-slot-{i}")
    }
}

/// Set and map names.
pub mod sets {
    /// Remote clusters' global CIDRs.
    pub const REMOTE_GLOBAL: &str = "remote_global";
    /// Local pod CIDR, service CIDR and node network.
    pub const LOCAL_SOURCES: &str = "local_sources";
    /// `global IP . protocol . port : goto gn-lb-N` (N: ready endpoints).
    pub const INGRESS_SERVICES: &str = "ingress_services";

    /// `global IP . protocol . port : pod IP` of each service's endpoint `i`.
    pub fn slot_addr(i: usize) -> String {
        format!("slot{i}_addr")
    }

    /// Services (`global IP . protocol . port`) with affinity timeout `t`.
    pub fn affinity_services(t: u32) -> String {
        format!("affinity_{t}s")
    }

    /// `client . global IP . protocol . port` pinned to slot `i`, with
    /// timeouts (filled by the kernel).
    pub fn affinity_slot(i: usize) -> String {
        format!("affinity_slot{i}")
    }

    /// `global IP . protocol . port : target port` of each service's endpoint `i`.
    pub fn slot_port(i: usize) -> String {
        format!("slot{i}_port")
    }
    /// `global IP : target IP` (headless endpoints, the gateway).
    pub const INGRESS_HOSTS: &str = "ingress_hosts";
}

/// Priority of Globalnet's DNAT chain: before kube-proxy and every other.
pub const INGRESS_PRIORITY: i32 = priority::DSTNAT - 20;
/// Priority of Globalnet's SNAT chain: before the identity chain.
pub const EGRESS_PRIORITY: i32 = priority::SRCNAT - 20;
/// Priority of the identity SNAT chain: before CNI masquerade.
pub const IDENTITY_PRIORITY: i32 = priority::SRCNAT - 10;

/// A transport protocol of a service port.
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
    /// The name `nft` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of an exported ClusterIP service and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Protocol.
    pub protocol: Protocol,
    /// The service port (what clients dial on the global IP).
    pub port: u16,
    /// Ready endpoints: pod IP and target port.
    pub endpoints: BTreeSet<SocketAddrV4>,
}

/// An exported ClusterIP service reachable on its ingress global IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceIngress {
    /// The export.
    pub key: ExportKey,
    /// Its ingress global IP.
    pub global_ip: Ipv4Addr,
    /// Its ports.
    pub ports: Vec<ServicePort>,
}

/// Everything the Globalnet ruleset is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Table name ([`DEFAULT_TABLE`] unless the gateway says otherwise).
    pub table: String,
    /// Local pod CIDR, service CIDR and node network: sources that are SNATed.
    pub local_sources: Vec<Ipv4Net>,
    /// Remote clusters' global CIDRs: the only traffic translated.
    pub remote_globals: Vec<Ipv4Net>,
    /// The egress pool in order.
    pub egress: Vec<Ipv4Addr>,
    /// Seed of the egress hash ([`DEFAULT_HASH_SEED`]).
    pub hash_seed: u32,
    /// Exported ClusterIP services.
    pub services: Vec<ServiceIngress>,
    /// Whole-address DNAT: global IP to target (headless endpoints, and the
    /// gateway's own global IP when health checks go to another address).
    pub hosts: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// MTU of the tunnel; TCP MSS is clamped to MTU - 40 when set.
    pub tunnel_mtu: Option<u16>,
    /// Services with ClientIP session affinity, and its timeout in seconds.
    /// The client is the address the gateway sees: a remote cluster's
    /// egress IP, not the remote pod.
    pub affinity: BTreeMap<ExportKey, u32>,
}

impl Input {
    /// An input with defaults and nothing exported.
    pub fn new(local_sources: Vec<Ipv4Net>, remote_globals: Vec<Ipv4Net>) -> Self {
        Input {
            table: DEFAULT_TABLE.to_string(),
            local_sources,
            remote_globals,
            egress: Vec::new(),
            hash_seed: DEFAULT_HASH_SEED,
            services: Vec::new(),
            hosts: BTreeMap::new(),
            tunnel_mtu: None,
            affinity: BTreeMap::new(),
        }
    }
}

fn interval_set(nets: &[Ipv4Net]) -> Set {
    let mut s = Set::new(vec![DataType::Ipv4Addr]).interval();
    // nft refuses overlapping intervals: merge them first.
    for n in Ipv4Net::aggregate(&nets.to_vec()) {
        s.insert(n);
    }
    s
}

/// The identity SNAT chain of Settled decision 2 over a set of remote
/// subnets: binds traffic to and from them so no later NAT chain (CNI
/// masquerade) touches it. The route agent uses it for its own table too.
pub fn identity_chain(remote_set: &str) -> Chain {
    Chain::base(
        BaseChain::new(ChainType::Nat, Hook::Postrouting, IDENTITY_PRIORITY),
        vec![
            Rule::new(vec![
                match_eq(ip_daddr(), set_ref(remote_set)),
                snat_to(ip_saddr()),
            ])
            .with_comment("to remote: keep source"),
            Rule::new(vec![
                match_eq(ip_saddr(), set_ref(remote_set)),
                snat_to(ip_saddr()),
            ])
            .with_comment("from remote: keep source"),
        ],
    )
}

/// The MSS clamping chain: SYN and SYN-ACK to or from the remote set get
/// their MSS lowered to `mtu - 40`.
pub fn mss_chain(remote_set: &str, mtu: u16) -> Chain {
    let mss = mtu.saturating_sub(40);
    let clamp = |dir: Expr| {
        Rule::new(vec![
            match_eq(dir, set_ref(remote_set)),
            tcp_syn(),
            // nftables 0.6's `Operator::LT` is the one that renders as ">"
            // (its LT/GT names are swapped); the golden file shows ">".
            match_op(
                tcp_mss(),
                nftables::stmt::Operator::LT,
                number(u32::from(mss)),
            ),
            set_mss(mss),
        ])
    };
    Chain::base(
        BaseChain::new(ChainType::Filter, Hook::Forward, priority::MANGLE),
        vec![
            clamp(ip_daddr()).with_comment(format!("to remote: mss {mss}")),
            clamp(ip_saddr()).with_comment(format!("from remote: mss {mss}")),
        ],
    )
}

/// Pick chains kept for every endpoint count up to this one.
pub const ALWAYS_PICK_CHAINS: usize = 64;

/// The `gn-lb-N` chain: a uniform random pick among N slots.
fn lb_chain(n: usize) -> Chain {
    let rule = if n == 1 {
        Rule::new(vec![goto(chains::slot(0))])
    } else {
        Rule::new(vec![vmap(
            numgen_random(n as u32),
            anon_pairs(
                (0..n)
                    .map(|i| (number(i as u32), goto_value(chains::slot(i))))
                    .collect(),
            ),
        )])
    };
    Chain::regular(vec![
        rule.with_comment(format!("pick one of {n} endpoints")),
    ])
}

/// The `gn-slot-i` chain: DNAT to the service's endpoint `i`, for each
/// protocol (nft needs the protocol match to translate a port).
fn slot_chain(i: usize, timeouts: &BTreeSet<u32>) -> Chain {
    let key = || concat(vec![ip_daddr(), meta_l4proto(), th_dport()]);
    // Remember the client's slot for services with affinity.
    let pin = timeouts.iter().map(|t| {
        Rule::new(vec![
            match_eq(key(), set_ref(&sets::affinity_services(*t))),
            update_set(&sets::affinity_slot(i), affinity_key(), *t),
        ])
        .with_comment(format!("affinity {t}s"))
    });
    let rules = pin
        .chain(
            [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .map(|proto| {
                    Rule::new(vec![
                        match_eq(meta_l4proto(), string(proto.as_str())),
                        dnat_to_mapped(
                            map_lookup(key(), &sets::slot_addr(i)),
                            map_lookup(key(), &sets::slot_port(i)),
                        ),
                    ])
                    .with_comment(format!("endpoint {i} {}", proto.as_str()))
                }),
        )
        .collect();
    Chain::regular(rules)
}

/// `ip saddr . ip daddr . meta l4proto . th dport`.
fn affinity_key() -> Expr {
    concat(vec![ip_saddr(), ip_daddr(), meta_l4proto(), th_dport()])
}

fn service_key() -> Vec<DataType> {
    vec![
        DataType::Ipv4Addr,
        DataType::InetProto,
        DataType::InetService,
    ]
}

/// UDP endpoints that served an export in `before` and no longer do in
/// `after`, with the global IP they were reached on: the flows to delete
/// with [`crate::conntrack::Conntrack::delete_udp_to_endpoint`] (Settled
/// decision 14). TCP needs nothing: a dead peer resets or times out.
pub fn departed_udp_endpoints(before: &Input, after: &Input) -> Vec<(Ipv4Addr, SocketAddrV4)> {
    let udp = |i: &Input| -> BTreeSet<(Ipv4Addr, u16, SocketAddrV4)> {
        i.services
            .iter()
            .flat_map(|s| {
                s.ports
                    .iter()
                    .filter(|p| p.protocol == Protocol::Udp)
                    .flat_map(move |p| p.endpoints.iter().map(move |e| (s.global_ip, p.port, *e)))
            })
            .collect()
    };
    let now = udp(after);
    let mut gone: BTreeSet<(Ipv4Addr, SocketAddrV4)> = BTreeSet::new();
    for (global, port, ep) in udp(before) {
        if !now.contains(&(global, port, ep)) {
            gone.insert((global, ep));
        }
    }
    gone.into_iter().collect()
}

/// The Globalnet table for `input`.
pub fn plan(input: &Input) -> Table {
    let mut t = Table::new(Family::Ip, input.table.clone());
    t.sets.insert(
        sets::REMOTE_GLOBAL.into(),
        interval_set(&input.remote_globals),
    );
    t.sets.insert(
        sets::LOCAL_SOURCES.into(),
        interval_set(&input.local_sources),
    );

    let shape = Shape::of(input);
    let mut services = Set::map(service_key(), vec![DataType::Verdict]);
    let mut slot_addrs: Vec<Set> = (0..shape.slots)
        .map(|_| Set::map(service_key(), vec![DataType::Ipv4Addr]))
        .collect();
    let mut slot_ports: Vec<Set> = (0..shape.slots)
        .map(|_| Set::map(service_key(), vec![DataType::InetService]))
        .collect();
    let mut affinity: BTreeMap<u32, Set> = shape
        .timeouts
        .iter()
        .map(|t| (*t, Set::new(service_key())))
        .collect();
    let mut hosts = Set::map(vec![DataType::Ipv4Addr], vec![DataType::Ipv4Addr]);
    let mut insert = |set: ElementSet, key: Value, value: Option<Value>| {
        let into = match set {
            ElementSet::Services => &mut services,
            ElementSet::SlotAddr(i) => &mut slot_addrs[i],
            ElementSet::SlotPort(i) => &mut slot_ports[i],
            ElementSet::Affinity(t) => affinity.get_mut(&t).expect("a timeout of the shape"),
            ElementSet::Hosts => &mut hosts,
        };
        into.elements.insert(key, value);
    };
    for svc in &input.services {
        service_elements(svc, input.affinity.get(&svc.key).copied(), &mut insert);
    }
    for (global, target) in &input.hosts {
        insert(ElementSet::Hosts, (*global).into(), Some((*target).into()));
    }
    for n in &shape.lb {
        t.chains.insert(chains::lb(*n), lb_chain(*n));
    }
    let timeouts = shape.timeouts;
    let slots = shape.slots;
    for (i, (addrs, ports)) in slot_addrs.into_iter().zip(slot_ports).enumerate() {
        t.chains.insert(chains::slot(i), slot_chain(i, &timeouts));
        t.sets.insert(sets::slot_addr(i), addrs);
        t.sets.insert(sets::slot_port(i), ports);
    }
    // A client pinned to slot i jumps there first; if the service has no
    // endpoint i any more, the slot chain does not match and the client
    // gets a fresh pick below.
    let mut pinned = Vec::new();
    if !affinity.is_empty() {
        for (timeout, set) in affinity {
            t.sets.insert(sets::affinity_services(timeout), set);
        }
        for i in 0..slots {
            let mut pins = Set::new(vec![
                DataType::Ipv4Addr,
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ]);
            pins.flags.insert(crate::nft::SetFlag::Timeout);
            t.sets.insert(sets::affinity_slot(i), pins);
            pinned.push(
                Rule::new(vec![
                    match_eq(ip_saddr(), set_ref(sets::REMOTE_GLOBAL)),
                    match_eq(affinity_key(), set_ref(&sets::affinity_slot(i))),
                    jump(chains::slot(i)),
                ])
                .with_comment(format!("affinity to endpoint {i}")),
            );
        }
    }
    t.sets.insert(sets::INGRESS_SERVICES.into(), services);

    t.sets.insert(sets::INGRESS_HOSTS.into(), hosts);

    let from_remote = || match_eq(ip_saddr(), set_ref(sets::REMOTE_GLOBAL));
    t.chains.insert(
        chains::INGRESS.into(),
        Chain::base(
            BaseChain::new(ChainType::Nat, Hook::Prerouting, INGRESS_PRIORITY),
            pinned
                .into_iter()
                .chain([
                    Rule::new(vec![
                        from_remote(),
                        vmap(
                            concat(vec![ip_daddr(), meta_l4proto(), th_dport()]),
                            set_ref(sets::INGRESS_SERVICES),
                        ),
                    ])
                    .with_comment("ingress services"),
                    Rule::new(vec![
                        from_remote(),
                        dnat_to(map_lookup(ip_daddr(), sets::INGRESS_HOSTS)),
                    ])
                    .with_comment("ingress hosts"),
                ])
                .collect(),
        ),
    );

    let mut egress_rules = Vec::new();
    if !input.egress.is_empty() {
        let to = match input.egress.as_slice() {
            [one] => addr(*one),
            many => anon_map(
                jhash(ip_saddr(), many.len() as u32, input.hash_seed),
                many.iter()
                    .enumerate()
                    .map(|(i, ip)| (number(i as u32), addr(*ip)))
                    .collect(),
            ),
        };
        egress_rules.push(
            Rule::new(vec![
                match_eq(ip_saddr(), set_ref(sets::LOCAL_SOURCES)),
                match_eq(ip_daddr(), set_ref(sets::REMOTE_GLOBAL)),
                snat_to(to),
            ])
            .with_comment("egress pool"),
        );
    }
    t.chains.insert(
        chains::EGRESS.into(),
        Chain::base(
            BaseChain::new(ChainType::Nat, Hook::Postrouting, EGRESS_PRIORITY),
            egress_rules,
        ),
    );
    t.chains
        .insert(chains::IDENTITY.into(), identity_chain(sets::REMOTE_GLOBAL));
    if let Some(mtu) = input.tunnel_mtu {
        t.chains
            .insert(chains::MSS.into(), mss_chain(sets::REMOTE_GLOBAL, mtu));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Verdict;
    use crate::nft::{Applier, FakeNft};

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    pub(crate) fn sample() -> Input {
        let mut i = Input::new(
            vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
                "172.18.0.0/24".parse().unwrap(),
            ],
            vec!["242.1.0.0/16".parse().unwrap()],
        );
        i.egress = vec!["242.0.0.2".parse().unwrap(), "242.0.0.3".parse().unwrap()];
        i.services = vec![ServiceIngress {
            key: ExportKey::new("default", "web"),
            global_ip: "242.0.0.10".parse().unwrap(),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                endpoints: [ep("10.244.1.5:8080"), ep("10.244.2.5:8080")].into(),
            }],
        }];
        i.tunnel_mtu = Some(1420);
        i
    }

    fn svc(name: &str, ip: &str, proto: Protocol, port: u16, eps: &[&str]) -> ServiceIngress {
        ServiceIngress {
            key: ExportKey::new("default", name),
            global_ip: ip.parse().unwrap(),
            ports: vec![ServicePort {
                protocol: proto,
                port,
                endpoints: eps.iter().map(|e| ep(e)).collect(),
            }],
        }
    }

    fn key(ip: &str, proto: &str, port: u16) -> Value {
        Value::Concat(vec![
            Value::Addr(ip.parse().unwrap()),
            Value::Str(proto.into()),
            Value::Int(u64::from(port)),
        ])
    }

    #[test]
    fn plan_shape() {
        let t = plan(&sample());
        assert_eq!(
            t.chains.keys().cloned().collect::<Vec<_>>(),
            vec![
                "gn-egress",
                "gn-ingress",
                "gn-lb-1",
                "gn-lb-2",
                "gn-slot-0",
                "gn-slot-1",
                "identity",
                "mss"
            ]
        );
        let k = key("242.0.0.10", "tcp", 80);
        assert_eq!(
            t.sets[sets::INGRESS_SERVICES].elements[&k],
            Some(Verdict::Goto("gn-lb-2".into()).into())
        );
        assert_eq!(
            t.sets["slot0_addr"].elements[&k],
            Some(Value::Addr("10.244.1.5".parse().unwrap()))
        );
        assert_eq!(t.sets["slot1_port"].elements[&k], Some(Value::Int(8080)));
        assert_eq!(t.sets[sets::LOCAL_SOURCES].elements.len(), 3);
    }

    #[test]
    fn service_without_endpoints_has_no_chain_or_element() {
        let mut i = sample();
        i.services[0].ports[0].endpoints.clear();
        let t = plan(&i);
        assert!(!t.chains.keys().any(|c| c.starts_with("gn-lb-")));
        assert!(!t.sets.contains_key("slot0_addr"));
        assert!(t.sets[sets::INGRESS_SERVICES].elements.is_empty());
    }

    #[test]
    fn overlapping_sources_are_merged() {
        let mut i = sample();
        i.local_sources.push("10.244.3.0/24".parse().unwrap());
        let t = plan(&i);
        assert_eq!(t.sets[sets::LOCAL_SOURCES].elements.len(), 3);
    }

    #[test]
    fn apply_then_nothing_left() {
        let a = Applier::new(FakeNft::new());
        let t = plan(&sample());
        assert!(a.reconcile(&t).unwrap().changed());
        assert!(!a.reconcile(&t).unwrap().changed());
    }

    #[test]
    fn one_more_export_changes_only_elements() {
        let a = Applier::new(FakeNft::new());
        let mut i = sample();
        a.reconcile(&plan(&i)).unwrap();
        i.services.push(svc(
            "api",
            "242.0.0.11",
            Protocol::Udp,
            53,
            &["10.244.1.9:5353", "10.244.2.9:5353"],
        ));
        let out = a.reconcile(&plan(&i)).unwrap();
        let s = out.batch.summary();
        assert!(s.only_elements(), "{:?}", out.batch.ops);
        // its dispatch element, and address and port of both endpoints
        assert_eq!((s.elements_added, s.elements_deleted), (5, 0));
    }

    #[test]
    fn a_larger_endpoint_count_adds_its_chains() {
        let a = Applier::new(FakeNft::new());
        let mut i = sample();
        a.reconcile(&plan(&i)).unwrap();
        i.services.push(svc(
            "three",
            "242.0.0.12",
            Protocol::Tcp,
            443,
            &["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"],
        ));
        let out = a.reconcile(&plan(&i)).unwrap();
        let s = out.batch.summary();
        // gn-lb-3 (one rule) and gn-slot-2 (tcp, udp, sctp), slot 2's maps
        assert_eq!(
            (
                s.chains_added,
                s.rules_added,
                s.chains_flushed,
                s.sets_added
            ),
            (2, 4, 0, 2)
        );
        assert_eq!(s.elements_added, 7);
    }

    #[test]
    fn endpoint_change_changes_only_elements() {
        let a = Applier::new(FakeNft::new());
        let mut i = sample();
        i.services.push(svc(
            "three",
            "242.0.0.12",
            Protocol::Tcp,
            80,
            &["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"],
        ));
        a.reconcile(&plan(&i)).unwrap();
        // web scales from 2 to 3 endpoints: gn-lb-3 and gn-slot-2 exist already.
        i.services[0].ports[0]
            .endpoints
            .insert(ep("10.244.3.5:8080"));
        let out = a.reconcile(&plan(&i)).unwrap();
        let s = out.batch.summary();
        assert!(s.only_elements(), "{:?}", out.batch.ops);
        // dispatch element replaced (goto gn-lb-3), slot 2 address and port added
        assert_eq!((s.elements_deleted, s.elements_added), (1, 3));
        assert!(!a.reconcile(&plan(&i)).unwrap().changed());
    }

    #[test]
    fn affinity_pins_clients_and_leaves_kernel_entries_alone() {
        let a = Applier::new(FakeNft::new());
        let mut i = sample();
        i.affinity.insert(ExportKey::new("default", "web"), 10800);
        let t = plan(&i);
        assert_eq!(t.sets["affinity_10800s"].elements.len(), 1);
        assert!(t.sets["affinity_slot1"].kernel_managed());
        assert_eq!(t.chains[chains::INGRESS].rules.len(), 4);
        assert_eq!(t.chains["gn-slot-0"].rules.len(), 4);
        a.reconcile(&t).unwrap();

        // Traffic fills a pin set; the kernel lists it as dynamic.
        let mut live = a.backend().dump(Family::Ip, &t.name).unwrap();
        let pins = live.sets.get_mut("affinity_slot0").unwrap();
        pins.flags.insert(crate::nft::SetFlag::Dynamic);
        pins.insert(Value::Concat(vec![
            Value::Addr("242.1.0.7".parse().unwrap()),
            Value::Addr("242.0.0.10".parse().unwrap()),
            Value::Str("tcp".into()),
            Value::Int(80),
        ]));
        a.backend().set_table(Family::Ip, &t.name, Some(live));
        assert!(!a.reconcile(&t).unwrap().changed());

        // Another service with the same timeout: elements only.
        i.services.push(svc(
            "api",
            "242.0.0.11",
            Protocol::Tcp,
            81,
            &["10.244.1.7:81"],
        ));
        i.affinity.insert(ExportKey::new("default", "api"), 10800);
        let out = a.reconcile(&plan(&i)).unwrap();
        assert!(out.batch.summary().only_elements(), "{:?}", out.batch.ops);
    }

    #[test]
    fn no_affinity_no_pin_rules() {
        let t = plan(&sample());
        assert!(!t.sets.keys().any(|k| k.starts_with("affinity")));
        assert_eq!(t.chains[chains::INGRESS].rules.len(), 2);
    }

    #[test]
    fn departed_udp_endpoints_are_listed() {
        let mut before = sample();
        before.services.push(svc(
            "dns",
            "242.0.0.11",
            Protocol::Udp,
            53,
            &["10.244.1.9:5353", "10.244.2.9:5353"],
        ));
        let mut after = before.clone();
        after.services[1].ports[0]
            .endpoints
            .remove(&ep("10.244.2.9:5353"));
        // TCP endpoints leaving are not listed
        after.services[0].ports[0].endpoints.clear();
        assert_eq!(
            departed_udp_endpoints(&before, &after),
            vec![("242.0.0.11".parse().unwrap(), ep("10.244.2.9:5353"))]
        );
        after.services.truncate(1);
        assert_eq!(departed_udp_endpoints(&before, &after).len(), 2);
        assert!(departed_udp_endpoints(&after, &after).is_empty());
    }

    #[test]
    fn many_endpoints_keep_pick_chains_bounded() {
        let mut i = sample();
        let eps: Vec<String> = (0..100).map(|n| format!("10.244.9.{n}:80")).collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        i.services
            .push(svc("big", "242.0.0.13", Protocol::Tcp, 80, &eps));
        let t = plan(&i);
        let picks = t.chains.keys().filter(|c| c.starts_with("gn-lb-")).count();
        assert_eq!(picks, ALWAYS_PICK_CHAINS + 1);
        assert!(t.chains.contains_key("gn-lb-100"));
        assert!(t.chains.contains_key("gn-slot-99"));
    }

    #[test]
    fn removed_export_goes_away_cleanly() {
        let a = Applier::new(FakeNft::new());
        let mut i = sample();
        a.reconcile(&plan(&i)).unwrap();
        i.services.clear();
        let out = a.reconcile(&plan(&i)).unwrap();
        let s = out.batch.summary();
        // both pick chains and both slot chains go, with the slot maps
        assert_eq!(
            (
                s.elements_deleted,
                s.chains_flushed,
                s.chains_deleted,
                s.sets_deleted
            ),
            (1, 4, 4, 4)
        );
        assert!(!a.reconcile(&plan(&i)).unwrap().changed());
    }

    #[test]
    fn drift_is_repaired() {
        let a = Applier::new(FakeNft::new());
        let t = plan(&sample());
        a.reconcile(&t).unwrap();
        let mut live = a.backend().dump(Family::Ip, &t.name).unwrap();
        live.sets
            .get_mut(sets::REMOTE_GLOBAL)
            .unwrap()
            .elements
            .clear();
        live.chains
            .get_mut(chains::EGRESS)
            .unwrap()
            .rule_comments
            .clear();
        a.backend().set_table(Family::Ip, &t.name, Some(live));
        let out = a.reconcile(&t).unwrap();
        let s = out.batch.summary();
        assert_eq!((s.elements_added, s.rules_added), (1, 1));
        assert!(!a.reconcile(&t).unwrap().changed());
    }
}
