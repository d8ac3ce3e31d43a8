//! The resolver: (question, index, options) -> answer, with no I/O.
//!
//! It follows the MCS DNS specification (schema 1.0.0) for `clusterset.local`
//! and gives negative answers the way the reference CoreDNS multicluster
//! plugin does: NXDOMAIN with the SOA for a name under which nothing exists,
//! NODATA with the SOA for a name that exists (or has names below it) but
//! has no record of the asked type.
//!
//! Which names exist is decided on the *visible* index: exports from
//! clusters that are not reachable, and headless endpoints that are not
//! ready, are as if absent.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::index::{
    Backing, ClusterExport, ClusterId, ImportedService, Index, Protocol, ServiceKey, ServicePort,
    ServiceType,
};
use crate::Error;

/// The zone served unless told otherwise.
pub const DEFAULT_ZONE: &str = "clusterset.local.";
/// TTL of every record unless told otherwise, in seconds.
pub const DEFAULT_TTL: u32 = 5;
/// The schema version `dns-version.<zone>` answers.
pub const DNS_SCHEMA_VERSION: &str = "1.0.0";

/// How ClusterSetIP services are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerMode {
    /// One exporting cluster's address per answer: the local cluster's when
    /// it exports the service, else round-robin across reachable clusters
    /// (`--answer per-cluster`, for balancing by DNS).
    PerCluster,
    /// The import's ClusterSetIP, as the MCS DNS specification says (the
    /// default); imports that have none yet are answered per cluster.
    #[default]
    ClusterSetIp,
}

impl std::str::FromStr for AnswerMode {
    type Err = Error;

    /// `per-cluster` or `clusterset-ip` (the `--answer` flag's values).
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "per-cluster" => Ok(AnswerMode::PerCluster),
            "clusterset-ip" => Ok(AnswerMode::ClusterSetIp),
            _ => Err(Error::InvalidAnswerMode(s.to_owned())),
        }
    }
}

/// Everything the resolver needs besides the index.
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// The zone, lower-case and fully qualified.
    pub zone: Name,
    /// TTL of every record and of negative answers (SOA minimum).
    pub ttl: u32,
    /// How ClusterSetIP services are answered.
    pub answer_mode: AnswerMode,
    /// Answer `<clusterid>.<svc>.<ns>.svc.<zone>` with that cluster's
    /// instance, as Submariner's Lighthouse does (`--cluster-names`).
    pub cluster_names: bool,
    /// Addresses answered for `ns.dns.<zone>`, the NS target.
    pub nameserver_addresses: Vec<IpAddr>,
}

impl ResolverOptions {
    /// Options for `zone` (e.g. `clusterset.local`) with the defaults.
    pub fn new(zone: &str) -> Result<Self, Error> {
        let mut name = Name::from_ascii(zone).map_err(|e| Error::InvalidZone {
            zone: zone.to_owned(),
            reason: e.to_string(),
        })?;
        name.set_fqdn(true);
        if name.is_root() {
            return Err(Error::InvalidZone {
                zone: zone.to_owned(),
                reason: "the root zone cannot be served".into(),
            });
        }
        Ok(Self {
            zone: name.to_lowercase(),
            ttl: DEFAULT_TTL,
            answer_mode: AnswerMode::default(),
            cluster_names: false,
            nameserver_addresses: Vec::new(),
        })
    }
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self::new(DEFAULT_ZONE).expect("the default zone is valid")
    }
}

/// The resolver's answer to one question.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// NOERROR, NXDOMAIN or REFUSED.
    pub rcode: ResponseCode,
    /// The AA bit: set for every name inside the zone.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of negative answers).
    pub authorities: Vec<Record>,
    /// The additional section (addresses of SRV and NS targets).
    pub additionals: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Self {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// A name of the zone, classified.
enum Node<'a> {
    Apex,
    DnsVersion,
    /// `dns.<zone>`, above the nameserver's name.
    NameserverParent,
    Nameserver,
    /// `svc.<zone>`.
    SvcRoot,
    /// `<ns>.svc.<zone>`.
    Namespace,
    Service(View<'a>),
    /// `_<proto>.<svc>...`, above named ports: always empty.
    SrvProto,
    /// `_<port>._<proto>.<svc>...`
    SrvPort(View<'a>, String, Protocol),
    /// `<clusterid>.<svc>...`
    Cluster(View<'a>, &'a ClusterId),
    /// `<hostname>.<clusterid>.<svc>...`
    Host(View<'a>, &'a ClusterId, String),
}

/// Answers one question from `index`.
pub fn resolve(query: &Query, index: &Index, opts: &ResolverOptions) -> Answer {
    let qname = query.name();
    let class = query.query_class();
    if !(class == DNSClass::IN || class == DNSClass::ANY) || !opts.zone.zone_of(qname) {
        return Answer::refused();
    }
    let qtype = query.query_type();
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Answer::refused();
    }
    let ctx = Ctx::new(qname, index, opts);
    let mut answer = Answer {
        rcode: ResponseCode::NoError,
        authoritative: true,
        answers: Vec::new(),
        authorities: Vec::new(),
        additionals: Vec::new(),
    };
    let Some(node) = ctx.classify() else {
        answer.rcode = ResponseCode::NXDomain;
        answer.authorities.push(ctx.soa());
        return answer;
    };
    let types: &[RecordType] = if qtype == RecordType::ANY {
        &[
            RecordType::SOA,
            RecordType::NS,
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::TXT,
        ]
    } else {
        std::slice::from_ref(&qtype)
    };
    for &ty in types {
        ctx.records(&node, ty, &mut answer);
    }
    if answer.answers.is_empty() {
        answer.authorities.push(ctx.soa());
    }
    answer
}

/// One question's view of the index.
struct Ctx<'a> {
    qname: &'a Name,
    /// Labels of the question below the zone, lower-case, leftmost first.
    rel: Vec<String>,
    index: &'a Index,
    opts: &'a ResolverOptions,
}

impl<'a> Ctx<'a> {
    fn new(qname: &'a Name, index: &'a Index, opts: &'a ResolverOptions) -> Self {
        // Counted with iter(): num_labels() leaves out a leading `*`.
        let below = qname.iter().count() - opts.zone.iter().count();
        let rel = qname
            .iter()
            .take(below)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        Self {
            qname,
            rel,
            index,
            opts,
        }
    }

    /// The question's last `n` labels below the zone plus the zone, in the
    /// question's own case.
    fn asked_suffix(&self, n: usize) -> Name {
        let mut name = self.qname.trim_to(self.opts.zone.iter().count() + n);
        name.set_fqdn(true);
        name
    }

    fn apex(&self) -> Name {
        self.asked_suffix(0)
    }

    fn nameserver(&self) -> Name {
        let apex = self.apex();
        apex.prepend_label("dns")
            .and_then(|n| n.prepend_label("ns"))
            .unwrap_or(apex)
    }

    fn record(&self, owner: Name, data: RData) -> Record {
        Record::from_rdata(owner, self.opts.ttl, data)
    }

    fn soa(&self) -> Record {
        let apex = self.apex();
        let rname = apex
            .prepend_label("hostmaster")
            .unwrap_or_else(|_| apex.clone());
        self.record(
            apex,
            RData::SOA(SOA::new(
                self.nameserver(),
                rname,
                self.index.serial(),
                7200,
                1800,
                86400,
                self.opts.ttl,
            )),
        )
    }

    fn classify(&self) -> Option<Node<'a>> {
        let r: Vec<&str> = self.rel.iter().map(String::as_str).collect();
        match r.as_slice() {
            [] => Some(Node::Apex),
            ["dns-version"] => Some(Node::DnsVersion),
            ["dns"] => Some(Node::NameserverParent),
            ["ns", "dns"] => Some(Node::Nameserver),
            ["svc"] => Some(Node::SvcRoot),
            [ns, "svc"] => self
                .index
                .services_in(ns)
                .any(|(_, s)| View::new(self.index, self.opts, s).exists())
                .then_some(Node::Namespace),
            [svc, ns, "svc"] => self.view(ns, svc).map(Node::Service),
            [first, svc, ns, "svc"] => {
                let view = self.view(ns, svc)?;
                if first.starts_with('_') {
                    let proto = Protocol::from_srv_label(first)?;
                    view.has_srv_proto(proto).then_some(Node::SrvProto)
                } else {
                    let cluster = view.cluster(first)?;
                    match view.service.service_type {
                        ServiceType::Headless => view.has_hosts(cluster),
                        ServiceType::ClusterSetIp => {
                            self.opts.cluster_names && view.has_addresses(cluster)
                        }
                    }
                    .then_some(Node::Cluster(view, cluster))
                }
            }
            [first, second, svc, ns, "svc"] => {
                let view = self.view(ns, svc)?;
                match (first.strip_prefix('_'), second.starts_with('_')) {
                    (Some(port), true) => {
                        let proto = Protocol::from_srv_label(second)?;
                        view.has_srv_port(port, proto)
                            .then(|| Node::SrvPort(view, port.to_owned(), proto))
                    }
                    (None, false) => {
                        let cluster = view.cluster(second)?;
                        view.has_host(cluster, first)
                            .then(|| Node::Host(view, cluster, (*first).to_owned()))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn view(&self, ns: &str, svc: &str) -> Option<View<'a>> {
        let key = ServiceKey::new(ns, svc).ok()?;
        let service = self.index.service(&key)?;
        let view = View::new(self.index, self.opts, service);
        view.exists().then_some(view)
    }

    fn records(&self, node: &Node<'a>, ty: RecordType, out: &mut Answer) {
        let owner = self.qname.clone();
        match (node, ty) {
            (Node::Apex, RecordType::SOA) => {
                let mut soa = self.soa();
                soa.name = owner;
                out.answers.push(soa);
            }
            (Node::Apex, RecordType::NS) => {
                let ns = self.nameserver();
                out.answers
                    .push(self.record(owner, RData::NS(NS(ns.clone()))));
                for &ip in &self.opts.nameserver_addresses {
                    out.additionals.push(self.address(ns.clone(), ip));
                }
            }
            (Node::DnsVersion, RecordType::TXT) => out.answers.push(self.record(
                owner,
                RData::TXT(TXT::new(vec![DNS_SCHEMA_VERSION.to_owned()])),
            )),
            (Node::Nameserver, RecordType::A | RecordType::AAAA) => {
                self.push_addresses(owner, &self.opts.nameserver_addresses, ty, &mut out.answers)
            }
            (Node::Service(view), RecordType::A | RecordType::AAAA) => {
                let ips = view.service_addresses(ty);
                self.push_addresses(owner, &ips, ty, &mut out.answers);
            }
            (Node::Service(view), RecordType::SRV) => self.srv(view, None, out),
            (Node::SrvPort(view, port, proto), RecordType::SRV) => {
                self.srv(view, Some((port, *proto)), out)
            }
            (Node::Cluster(view, cluster), RecordType::A | RecordType::AAAA)
                if self.opts.cluster_names =>
            {
                let ips = view.cluster_addresses(cluster);
                self.push_addresses(owner, &ips, ty, &mut out.answers);
            }
            (Node::Host(view, cluster, host), RecordType::A | RecordType::AAAA) => {
                let ips: Vec<IpAddr> = view
                    .ready_endpoints(cluster)
                    .filter(|e| e.label() == *host)
                    .map(|e| e.address)
                    .collect();
                self.push_addresses(owner, &ips, ty, &mut out.answers);
            }
            // Every other pair is a name that exists without that type: NODATA.
            _ => {}
        }
    }

    fn address(&self, owner: Name, ip: IpAddr) -> Record {
        match ip {
            IpAddr::V4(v4) => self.record(owner, RData::A(A::from(v4))),
            IpAddr::V6(v6) => self.record(owner, RData::AAAA(AAAA::from(v6))),
        }
    }

    fn push_addresses(&self, owner: Name, ips: &[IpAddr], ty: RecordType, out: &mut Vec<Record>) {
        let mut seen = BTreeSet::new();
        for &ip in ips {
            let family_ok = match ty {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                _ => false,
            };
            if family_ok && seen.insert(ip) {
                out.push(self.address(owner.clone(), ip));
            }
        }
    }

    /// SRV records for the service (`port` None: the bare name, every port)
    /// or for one named port; identical records are merged.
    fn srv(&self, view: &View<'a>, port: Option<(&String, Protocol)>, out: &mut Answer) {
        let service_name = self.asked_suffix(3);
        let wanted = |p: &ServicePort| match port {
            None => true,
            Some((name, proto)) => p.protocol == proto && p.name.as_deref() == Some(name.as_str()),
        };
        // (port, target, target's addresses), in order, without duplicates.
        let mut targets: Vec<(u16, Name, Vec<IpAddr>)> = Vec::new();
        let mut seen = BTreeSet::new();
        match view.service.service_type {
            ServiceType::ClusterSetIp => {
                let ips = view.service_addresses_any();
                for p in view.srv_ports().filter(|p| wanted(p)) {
                    if seen.insert((p.port, String::new())) {
                        targets.push((p.port, service_name.clone(), ips.clone()));
                    }
                }
            }
            ServiceType::Headless => {
                for (cluster, export) in view.clusters() {
                    for endpoint in view.ready_endpoints(cluster) {
                        let label = endpoint.label();
                        let Ok(target) = service_name
                            .prepend_label(cluster.as_str())
                            .and_then(|n| n.prepend_label(label.as_str()))
                        else {
                            continue;
                        };
                        for p in export.ports.iter().filter(|p| wanted(p)) {
                            let key = (p.port, target.to_lowercase().to_ascii());
                            if seen.insert(key) {
                                targets.push((p.port, target.clone(), vec![endpoint.address]));
                            } else if let Some(t) =
                                targets.iter_mut().find(|t| t.0 == p.port && t.1 == target)
                            {
                                // Two endpoints of one name: both addresses.
                                if !t.2.contains(&endpoint.address) {
                                    t.2.push(endpoint.address);
                                }
                            }
                        }
                    }
                }
            }
        }
        let weight = u16::try_from(100 / targets.len().max(1))
            .unwrap_or(1)
            .max(1);
        let mut additional_seen = BTreeSet::new();
        for (port, target, ips) in targets {
            out.answers.push(self.record(
                self.qname.clone(),
                RData::SRV(SRV::new(0, weight, port, target.clone())),
            ));
            for ip in ips {
                if additional_seen.insert((target.to_lowercase().to_ascii(), ip)) {
                    out.additionals.push(self.address(target.clone(), ip));
                }
            }
        }
    }
}

/// One imported service as the question sees it: only the exports of its
/// type from reachable clusters.
struct View<'a> {
    index: &'a Index,
    opts: &'a ResolverOptions,
    service: &'a ImportedService,
}

impl<'a> View<'a> {
    fn new(index: &'a Index, opts: &'a ResolverOptions, service: &'a ImportedService) -> Self {
        Self {
            index,
            opts,
            service,
        }
    }

    /// Reachable exports of the service's type, the local cluster first.
    fn clusters(&self) -> impl Iterator<Item = (&'a ClusterId, &'a ClusterExport)> + '_ {
        let local = self.index.local();
        let visible = move |(c, e): &(&'a ClusterId, &'a ClusterExport)| {
            e.backing.service_type() == self.service.service_type && self.index.is_reachable(c)
        };
        let first = self
            .service
            .clusters
            .iter()
            .filter(move |(c, _)| Some(*c) == local);
        let rest = self
            .service
            .clusters
            .iter()
            .filter(move |(c, _)| Some(*c) != local);
        first.chain(rest).filter(visible)
    }

    fn cluster(&self, id: &str) -> Option<&'a ClusterId> {
        self.clusters().map(|(c, _)| c).find(|c| c.as_str() == id)
    }

    fn export(&self, cluster: &ClusterId) -> Option<&'a ClusterExport> {
        self.clusters().find(|(c, _)| *c == cluster).map(|(_, e)| e)
    }

    fn exists(&self) -> bool {
        match self.service.service_type {
            ServiceType::ClusterSetIp => !self.pool().is_empty(),
            ServiceType::Headless => self
                .clusters()
                .any(|(c, _)| self.ready_endpoints(c).next().is_some()),
        }
    }

    /// ClusterSetIP: the clusters that may be answered: those with an
    /// address and a ready endpoint, or if none has a ready endpoint, those
    /// with an address (an import is answered while it exists, as a
    /// ClusterIP is).
    fn pool(&self) -> Vec<(&'a ClusterId, &'a [IpAddr])> {
        let mut ready = Vec::new();
        let mut all = Vec::new();
        for (c, e) in self.clusters() {
            if let Backing::ClusterSetIp {
                addresses,
                ready: r,
            } = &e.backing
                && !addresses.is_empty()
            {
                all.push((c, addresses.as_slice()));
                if *r {
                    ready.push((c, addresses.as_slice()));
                }
            }
        }
        if ready.is_empty() { all } else { ready }
    }

    fn uses_cluster_set_ip(&self) -> bool {
        self.opts.answer_mode == AnswerMode::ClusterSetIp
            && !self.service.cluster_set_ips.is_empty()
    }

    /// ClusterSetIP: the one cluster this answer names, among those with an
    /// address of the family `filter` accepts: the local one if it may be
    /// answered, else the next in turn.
    fn pick(&self, filter: impl Fn(&IpAddr) -> bool) -> Vec<IpAddr> {
        let pool: Vec<_> = self
            .pool()
            .into_iter()
            .filter(|(_, ips)| ips.iter().any(&filter))
            .collect();
        let local = self.index.local();
        let chosen = match pool.iter().find(|(c, _)| Some(*c) == local) {
            Some(p) => p,
            None if pool.is_empty() => return Vec::new(),
            None => &pool[self.service.next_turn() % pool.len()],
        };
        chosen.1.to_vec()
    }

    /// A/AAAA for the service name.
    fn service_addresses(&self, ty: RecordType) -> Vec<IpAddr> {
        let family = move |ip: &IpAddr| match ty {
            RecordType::A => ip.is_ipv4(),
            _ => ip.is_ipv6(),
        };
        match self.service.service_type {
            ServiceType::ClusterSetIp if self.uses_cluster_set_ip() => {
                self.service.cluster_set_ips.clone()
            }
            ServiceType::ClusterSetIp => self.pick(family),
            ServiceType::Headless => self
                .clusters()
                .flat_map(|(c, _)| self.ready_endpoints(c))
                .map(|e| e.address)
                .collect(),
        }
    }

    /// ClusterSetIP: the addresses of both families for SRV additionals.
    fn service_addresses_any(&self) -> Vec<IpAddr> {
        if self.uses_cluster_set_ip() {
            self.service.cluster_set_ips.clone()
        } else {
            self.pick(|_| true)
        }
    }

    /// ClusterSetIP: the ports of every cluster that may be answered.
    fn srv_ports(&self) -> impl Iterator<Item = &'a ServicePort> + '_ {
        let pool: BTreeSet<&ClusterId> = self.pool().into_iter().map(|(c, _)| c).collect();
        self.clusters()
            .filter(move |(c, _)| pool.contains(c))
            .flat_map(|(_, e)| e.ports.iter())
    }

    fn srv_port_candidates(&self) -> Vec<&'a ServicePort> {
        match self.service.service_type {
            ServiceType::ClusterSetIp => self.srv_ports().collect(),
            ServiceType::Headless => self
                .clusters()
                .filter(|(c, _)| self.ready_endpoints(c).next().is_some())
                .flat_map(|(_, e)| e.ports.iter())
                .collect(),
        }
    }

    fn has_srv_proto(&self, proto: Protocol) -> bool {
        self.srv_port_candidates()
            .iter()
            .any(|p| p.protocol == proto && p.name.is_some())
    }

    fn has_srv_port(&self, name: &str, proto: Protocol) -> bool {
        self.srv_port_candidates()
            .iter()
            .any(|p| p.protocol == proto && p.name.as_deref() == Some(name))
    }

    fn ready_endpoints(
        &self,
        cluster: &ClusterId,
    ) -> impl Iterator<Item = &'a super::index::Endpoint> + use<'a> {
        let endpoints: &'a [super::index::Endpoint] = match self.export(cluster) {
            Some(ClusterExport {
                backing: Backing::Headless { endpoints },
                ..
            }) => endpoints,
            _ => &[],
        };
        endpoints.iter().filter(|e| e.ready)
    }

    fn has_hosts(&self, cluster: &ClusterId) -> bool {
        self.ready_endpoints(cluster).next().is_some()
    }

    fn has_host(&self, cluster: &ClusterId, host: &str) -> bool {
        self.ready_endpoints(cluster).any(|e| e.label() == host)
    }

    fn has_addresses(&self, cluster: &ClusterId) -> bool {
        !self.cluster_addresses(cluster).is_empty()
    }

    /// `--cluster-names`: that one cluster's instance.
    fn cluster_addresses(&self, cluster: &ClusterId) -> Vec<IpAddr> {
        match self.export(cluster).map(|e| &e.backing) {
            Some(Backing::ClusterSetIp { addresses, .. }) => addresses.clone(),
            Some(Backing::Headless { .. }) => {
                self.ready_endpoints(cluster).map(|e| e.address).collect()
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
pub(super) mod tests;
