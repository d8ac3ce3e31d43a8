//! Allocation of global IPs from a cluster's global CIDR.
//!
//! A pure function of what the records name and what is exported now, so a
//! restarted or newly active gateway that reads the same records computes the
//! same addresses. Records are re-adopted first (gateway, then the egress pool
//! in record order, then ingress keys in order); what is still missing gets
//! the lowest free address. An address that any record names is never handed
//! to anyone else, even when its owner is gone: it is free only once the
//! record is deleted (see [`Allocation::lingering`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Default size of the egress pool.
pub const DEFAULT_EGRESS_POOL: usize = 8;

/// An exported service: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExportKey {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl ExportKey {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ExportKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ExportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What an ingress global IP serves: an exported ClusterIP service, or one
/// endpoint (by hostname or pod name) of an exported headless service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressKey {
    /// The export.
    pub export: ExportKey,
    /// The endpoint of a headless service; `None` for a ClusterIP service.
    pub endpoint: Option<String>,
}

impl IngressKey {
    /// The key of a ClusterIP service.
    pub fn service(export: ExportKey) -> Self {
        IngressKey {
            export,
            endpoint: None,
        }
    }

    /// The key of one endpoint of a headless service.
    pub fn endpoint(export: ExportKey, endpoint: impl Into<String>) -> Self {
        IngressKey {
            export,
            endpoint: Some(endpoint.into()),
        }
    }
}

impl fmt::Display for IngressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Some(e) => write!(f, "{} endpoint {e}", self.export),
            None => write!(f, "{}", self.export),
        }
    }
}

/// Who holds a global IP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// The gateway itself (health checks).
    Gateway,
    /// The egress pool.
    Egress,
    /// An export or headless endpoint.
    Ingress(IngressKey),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Gateway => f.write_str("the gateway"),
            Owner::Egress => f.write_str("the egress pool"),
            Owner::Ingress(k) => write!(f, "{k}"),
        }
    }
}

/// Why an address could not be given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free address is left in the global CIDR.
    #[error(
        "global CIDR {cidr} has no free address for {owner}; remove an export or give the cluster a larger --global-cidr"
    )]
    Exhausted {
        /// The cluster's global CIDR.
        cidr: Ipv4Net,
        /// Who asked.
        owner: String,
    },
}

/// What to allocate.
#[derive(Clone, Debug)]
pub struct Request {
    /// The cluster's global CIDR.
    pub cidr: Ipv4Net,
    /// How many egress IPs (default [`DEFAULT_EGRESS_POOL`]).
    pub egress_pool_size: usize,
    /// Every ingress key that needs an address now.
    pub wanted: BTreeSet<IngressKey>,
    /// Every (owner, address) that a record names, egress entries in pool order.
    pub records: Vec<(Owner, Ipv4Addr)>,
}

/// The result: who has which address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The gateway's own global IP.
    pub gateway: Result<Ipv4Addr, AllocError>,
    /// The egress pool, in order (the SNAT hash indexes it).
    pub egress: Vec<Ipv4Addr>,
    /// Set when the pool is smaller than asked.
    pub egress_error: Option<AllocError>,
    /// One result per wanted key; an error affects only that key.
    pub ingress: BTreeMap<IngressKey, Result<Ipv4Addr, AllocError>>,
    /// Addresses that records name but nothing uses any more: still
    /// reserved until the caller deletes those records.
    pub lingering: Vec<(Owner, Ipv4Addr)>,
}

impl Allocation {
    /// Every (owner, address) in use, as records should name them.
    pub fn records(&self) -> Vec<(Owner, Ipv4Addr)> {
        let mut out = Vec::new();
        if let Ok(ip) = self.gateway {
            out.push((Owner::Gateway, ip));
        }
        out.extend(self.egress.iter().map(|ip| (Owner::Egress, *ip)));
        for (k, r) in &self.ingress {
            if let Ok(ip) = r {
                out.push((Owner::Ingress(k.clone()), *ip));
            }
        }
        out
    }
}

/// Allocates the gateway IP, the egress pool and the ingress IPs.
pub fn allocate(req: &Request) -> Allocation {
    let cidr = req.cidr.trunc();
    let in_cidr = |ip: &Ipv4Addr| cidr.contains(ip) && usable(cidr, *ip);
    // Every address any record names is off limits to newcomers.
    let reserved: BTreeSet<Ipv4Addr> = req
        .records
        .iter()
        .map(|(_, ip)| *ip)
        .filter(in_cidr)
        .collect();
    let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let adopt = |want: &Owner, taken: &mut BTreeSet<Ipv4Addr>| -> Option<Ipv4Addr> {
        let ip = req
            .records
            .iter()
            .filter(|(o, ip)| o == want && in_cidr(ip) && !taken.contains(ip))
            .map(|(_, ip)| *ip)
            .next()?;
        taken.insert(ip);
        Some(ip)
    };

    // Re-adoption, in priority order.
    let mut gateway = adopt(&Owner::Gateway, &mut taken);
    let mut egress: Vec<Ipv4Addr> = Vec::new();
    for (o, ip) in &req.records {
        if egress.len() < req.egress_pool_size
            && *o == Owner::Egress
            && in_cidr(ip)
            && taken.insert(*ip)
        {
            egress.push(*ip);
        }
    }
    let mut ingress: BTreeMap<IngressKey, Option<Ipv4Addr>> = BTreeMap::new();
    for key in &req.wanted {
        let ip = adopt(&Owner::Ingress(key.clone()), &mut taken);
        ingress.insert(key.clone(), ip);
    }

    // New addresses: lowest first, never one a record names.
    let blocked: BTreeSet<Ipv4Addr> = reserved.union(&taken).copied().collect();
    let mut free = cidr.hosts().filter(move |ip| !blocked.contains(ip));
    let exhausted = |owner: &Owner| AllocError::Exhausted {
        cidr,
        owner: owner.to_string(),
    };
    if gateway.is_none() {
        gateway = free.next();
    }
    let gateway = gateway.ok_or_else(|| exhausted(&Owner::Gateway));
    while egress.len() < req.egress_pool_size {
        match free.next() {
            Some(ip) => egress.push(ip),
            None => break,
        }
    }
    let egress_error = (egress.len() < req.egress_pool_size).then(|| exhausted(&Owner::Egress));
    let ingress: BTreeMap<IngressKey, Result<Ipv4Addr, AllocError>> = ingress
        .into_iter()
        .map(|(key, ip)| {
            let ip = ip.or_else(|| free.next());
            let r = ip.ok_or_else(|| exhausted(&Owner::Ingress(key.clone())));
            (key, r)
        })
        .collect();

    let mut alloc = Allocation {
        gateway,
        egress,
        egress_error,
        ingress,
        lingering: Vec::new(),
    };
    let used: BTreeSet<(Owner, Ipv4Addr)> = alloc.records().into_iter().collect();
    alloc.lingering = req
        .records
        .iter()
        .filter(|r| !used.contains(*r))
        .cloned()
        .collect();
    alloc
}

/// Whether an address may be handed out: not the network or broadcast
/// address of a CIDR that has those.
fn usable(cidr: Ipv4Net, ip: Ipv4Addr) -> bool {
    cidr.prefix_len() >= 31 || (ip != cidr.network() && ip != cidr.broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn svc(name: &str) -> IngressKey {
        IngressKey::service(ExportKey::new("default", name))
    }

    fn req(cidr: &str, pool: usize, wanted: &[IngressKey], records: &[(Owner, &str)]) -> Request {
        Request {
            cidr: cidr.parse().unwrap(),
            egress_pool_size: pool,
            wanted: wanted.iter().cloned().collect(),
            records: records.iter().map(|(o, a)| (o.clone(), ip(a))).collect(),
        }
    }

    struct Case {
        name: &'static str,
        req: Request,
        gateway: Option<&'static str>,
        egress: Vec<&'static str>,
        ingress: Vec<(IngressKey, Option<&'static str>)>,
        lingering: Vec<(Owner, &'static str)>,
    }

    #[test]
    fn table() {
        let cases = vec![
            Case {
                name: "fresh allocation takes the lowest addresses in order",
                req: req("242.0.0.0/16", 2, &[svc("web"), svc("db")], &[]),
                gateway: Some("242.0.0.1"),
                egress: vec!["242.0.0.2", "242.0.0.3"],
                // keys in order: db < web
                ingress: vec![
                    (svc("db"), Some("242.0.0.4")),
                    (svc("web"), Some("242.0.0.5")),
                ],
                lingering: vec![],
            },
            Case {
                name: "records are re-adopted exactly",
                req: req(
                    "242.0.0.0/16",
                    2,
                    &[svc("web")],
                    &[
                        (Owner::Egress, "242.0.9.9"),
                        (Owner::Egress, "242.0.0.7"),
                        (Owner::Gateway, "242.0.3.3"),
                        (Owner::Ingress(svc("web")), "242.0.1.10"),
                    ],
                ),
                gateway: Some("242.0.3.3"),
                egress: vec!["242.0.9.9", "242.0.0.7"],
                ingress: vec![(svc("web"), Some("242.0.1.10"))],
                lingering: vec![],
            },
            Case {
                name: "an address still named by a record is not reused",
                req: req(
                    "242.0.0.0/29",
                    1,
                    &[svc("new")],
                    &[(Owner::Ingress(svc("gone")), "242.0.0.1")],
                ),
                gateway: Some("242.0.0.2"),
                egress: vec!["242.0.0.3"],
                ingress: vec![(svc("new"), Some("242.0.0.4"))],
                lingering: vec![(Owner::Ingress(svc("gone")), "242.0.0.1")],
            },
            Case {
                name: "exhaustion fails only the newcomer",
                // /29: hosts .1-.6
                req: req(
                    "242.0.0.0/29",
                    2,
                    &[svc("a"), svc("b"), svc("c"), svc("d")],
                    &[(Owner::Ingress(svc("d")), "242.0.0.6")],
                ),
                gateway: Some("242.0.0.1"),
                egress: vec!["242.0.0.2", "242.0.0.3"],
                ingress: vec![
                    (svc("a"), Some("242.0.0.4")),
                    (svc("b"), Some("242.0.0.5")),
                    (svc("c"), None),
                    (svc("d"), Some("242.0.0.6")),
                ],
                lingering: vec![],
            },
            Case {
                name: "records outside the CIDR are not adopted",
                req: req(
                    "242.0.0.0/24",
                    1,
                    &[svc("web")],
                    &[
                        (Owner::Ingress(svc("web")), "242.1.0.5"),
                        (Owner::Gateway, "242.0.0.0"),
                    ],
                ),
                gateway: Some("242.0.0.1"),
                egress: vec!["242.0.0.2"],
                ingress: vec![(svc("web"), Some("242.0.0.3"))],
                lingering: vec![
                    (Owner::Ingress(svc("web")), "242.1.0.5"),
                    (Owner::Gateway, "242.0.0.0"),
                ],
            },
            Case {
                name: "one address named twice goes to the first owner",
                req: req(
                    "242.0.0.0/24",
                    1,
                    &[svc("web")],
                    &[
                        (Owner::Egress, "242.0.0.9"),
                        (Owner::Ingress(svc("web")), "242.0.0.9"),
                    ],
                ),
                gateway: Some("242.0.0.1"),
                egress: vec!["242.0.0.9"],
                ingress: vec![(svc("web"), Some("242.0.0.2"))],
                lingering: vec![(Owner::Ingress(svc("web")), "242.0.0.9")],
            },
            Case {
                name: "a smaller pool keeps the first recorded egress IPs",
                req: req(
                    "242.0.0.0/24",
                    1,
                    &[],
                    &[(Owner::Egress, "242.0.0.5"), (Owner::Egress, "242.0.0.6")],
                ),
                gateway: Some("242.0.0.1"),
                egress: vec!["242.0.0.5"],
                ingress: vec![],
                lingering: vec![(Owner::Egress, "242.0.0.6")],
            },
            Case {
                name: "headless endpoints get one address each",
                req: req(
                    "242.0.0.0/24",
                    0,
                    &[
                        IngressKey::endpoint(ExportKey::new("db", "pg"), "pg-0"),
                        IngressKey::endpoint(ExportKey::new("db", "pg"), "pg-1"),
                    ],
                    &[],
                ),
                gateway: Some("242.0.0.1"),
                egress: vec![],
                ingress: vec![
                    (
                        IngressKey::endpoint(ExportKey::new("db", "pg"), "pg-0"),
                        Some("242.0.0.2"),
                    ),
                    (
                        IngressKey::endpoint(ExportKey::new("db", "pg"), "pg-1"),
                        Some("242.0.0.3"),
                    ),
                ],
                lingering: vec![],
            },
        ];
        for c in cases {
            let a = allocate(&c.req);
            assert_eq!(a.gateway.ok(), c.gateway.map(ip), "{}: gateway", c.name);
            assert_eq!(
                a.egress,
                c.egress.iter().map(|s| ip(s)).collect::<Vec<_>>(),
                "{}: egress",
                c.name
            );
            let got: Vec<(IngressKey, Option<Ipv4Addr>)> = a
                .ingress
                .iter()
                .map(|(k, r)| (k.clone(), r.as_ref().ok().copied()))
                .collect();
            let want: Vec<(IngressKey, Option<Ipv4Addr>)> = c
                .ingress
                .iter()
                .map(|(k, s)| (k.clone(), s.map(ip)))
                .collect();
            assert_eq!(got, want, "{}: ingress", c.name);
            let lingering: Vec<(Owner, Ipv4Addr)> = c
                .lingering
                .iter()
                .map(|(o, s)| (o.clone(), ip(s)))
                .collect();
            assert_eq!(a.lingering, lingering, "{}: lingering", c.name);
        }
    }

    #[test]
    fn exhaustion_says_what_to_do() {
        let a = allocate(&req("242.0.0.0/30", 1, &[svc("web")], &[]));
        let err = a.ingress[&svc("web")].clone().unwrap_err();
        assert_eq!(
            err.to_string(),
            "global CIDR 242.0.0.0/30 has no free address for default/web; remove an export or give the cluster a larger --global-cidr"
        );
        assert!(a.egress_error.is_none());
    }

    #[test]
    fn short_egress_pool_is_reported() {
        let a = allocate(&req("242.0.0.0/30", 4, &[], &[]));
        assert_eq!(a.egress, vec![ip("242.0.0.2")]);
        assert!(a.egress_error.is_some());
    }

    #[test]
    fn allocation_is_reproduced_from_its_own_records() {
        let first = allocate(&req(
            "242.0.0.0/16",
            8,
            &[svc("a"), svc("b"), svc("c")],
            &[],
        ));
        let again = allocate(&Request {
            records: first.records(),
            ..req("242.0.0.0/16", 8, &[svc("a"), svc("b"), svc("c")], &[])
        });
        assert_eq!(first, again);
        // removing one export keeps every other address where it was
        let fewer = allocate(&Request {
            records: first.records(),
            ..req("242.0.0.0/16", 8, &[svc("a"), svc("c")], &[])
        });
        assert_eq!(fewer.ingress[&svc("a")], first.ingress[&svc("a")]);
        assert_eq!(fewer.ingress[&svc("c")], first.ingress[&svc("c")]);
        assert_eq!(fewer.lingering.len(), 1);
    }
}
