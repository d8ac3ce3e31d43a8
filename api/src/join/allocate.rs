//! The registry of joined clusters and the pure global CIDR allocator.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::records::overlaps;
use crate::records::{ClusterId, GlobalCidr};

/// The default clusterset range for global CIDRs.
pub const DEFAULT_GLOBAL_RANGE: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(242, 0, 0, 0), 8) {
    Ok(n) => n,
    Err(_) => panic!("valid"),
};

/// The default size of each cluster's global CIDR.
pub const DEFAULT_PREFIX_LEN: u8 = 16;

/// What the clusterset knows about one joined cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredCluster {
    /// Its global CIDR, when Globalnet is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_cidr: Option<GlobalCidr>,
    /// Its pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// Its service CIDRs.
    pub service_cidrs: Vec<IpNet>,
}

/// Every joined cluster, and the range global CIDRs come from. Stored as
/// one key that only the broker admin writes, so a join is one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// Format version.
    pub version: u32,
    /// The clusterset range global CIDRs are allocated from.
    pub range: Ipv4Net,
    /// Size of each allocated global CIDR.
    pub prefix_len: u8,
    /// Joined clusters.
    pub clusters: BTreeMap<ClusterId, RegisteredCluster>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(DEFAULT_GLOBAL_RANGE, DEFAULT_PREFIX_LEN)
    }
}

impl Registry {
    /// An empty registry allocating `/prefix_len` blocks from `range`.
    pub fn new(range: Ipv4Net, prefix_len: u8) -> Self {
        Self {
            version: 1,
            range: range.trunc(),
            prefix_len,
            clusters: BTreeMap::new(),
        }
    }
}

/// Which global CIDR a joining cluster wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalCidrRequest {
    /// The first free block of the clusterset range.
    Auto,
    /// This CIDR (`--global-cidr`).
    Fixed(GlobalCidr),
    /// None: Globalnet is off for this cluster.
    Disabled,
}

/// A cluster asking to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Its id.
    pub cluster: ClusterId,
    /// Its pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// Its service CIDRs.
    pub service_cidrs: Vec<IpNet>,
    /// The global CIDR it wants.
    pub global_cidr: GlobalCidrRequest,
}

/// Decides the global CIDR of a joining cluster against the registry:
/// refuses a taken id, a requested CIDR outside the range or overlapping
/// another cluster's global CIDR or any cluster's pod or service CIDRs
/// (its own included); `Auto` takes the first block that is free of all of
/// those. Without Globalnet, refuses local CIDRs that overlap another
/// cluster's.
pub fn allocate(registry: &Registry, req: &JoinRequest) -> Result<Option<GlobalCidr>> {
    if registry.clusters.contains_key(&req.cluster) {
        return Err(Error::ClusterIdTaken {
            id: req.cluster.clone(),
        });
    }
    let own_local: Vec<IpNet> = req
        .pod_cidrs
        .iter()
        .chain(&req.service_cidrs)
        .copied()
        .collect();
    // Every network a global CIDR must stay clear of, with whose it is.
    let mut taken: Vec<(IpNet, String)> = own_local
        .iter()
        .map(|n| (*n, format!("cluster {}'s own CIDR {n}", req.cluster)))
        .collect();
    for (id, c) in &registry.clusters {
        if let Some(g) = c.global_cidr {
            taken.push((
                IpNet::V4(g.net()),
                format!("cluster {id}'s global CIDR {g}"),
            ));
        }
        for n in c.pod_cidrs.iter().chain(&c.service_cidrs) {
            taken.push((*n, format!("cluster {id}'s CIDR {n}")));
        }
    }
    let clash = |net: Ipv4Net| {
        taken
            .iter()
            .find(|(n, _)| overlaps(n, &IpNet::V4(net)))
            .map(|(_, what)| what.clone())
    };
    match req.global_cidr {
        GlobalCidrRequest::Disabled => {
            for (id, c) in &registry.clusters {
                for theirs in c.pod_cidrs.iter().chain(&c.service_cidrs) {
                    if let Some(mine) = own_local.iter().find(|m| overlaps(m, theirs)) {
                        return Err(Error::GlobalCidr(format!(
                            "CIDR {mine} of cluster {} overlaps cluster {id}'s {theirs}; enable Globalnet (--global-cidr auto) or use distinct CIDRs",
                            req.cluster
                        )));
                    }
                }
            }
            Ok(None)
        }
        GlobalCidrRequest::Fixed(g) => {
            let net = g.net();
            if !registry.range.contains(&net) {
                return Err(Error::GlobalCidr(format!(
                    "global CIDR {g} lies outside the clusterset range {}; pick one inside it with --global-cidr",
                    registry.range
                )));
            }
            if let Some(what) = clash(net) {
                return Err(Error::GlobalCidr(format!(
                    "global CIDR {g} of cluster {} overlaps {what}; pick another with --global-cidr or leave it to auto",
                    req.cluster
                )));
            }
            Ok(Some(g))
        }
        GlobalCidrRequest::Auto => {
            let len = registry.prefix_len;
            let exhausted = Error::RangeExhausted {
                range: registry.range,
                prefix_len: len,
            };
            let blocks = registry.range.subnets(len).map_err(|_| {
                Error::GlobalCidr(format!(
                    "prefix length /{len} does not fit the clusterset range {}",
                    registry.range
                ))
            })?;
            // A /8 holds 256 /16s; bound the scan anyway for tiny prefixes.
            for net in blocks.take(1 << 16) {
                if clash(net).is_none() {
                    return Ok(Some(GlobalCidr::new(net).expect("subnets are canonical")));
                }
            }
            Err(exhausted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn req(name: &str, g: GlobalCidrRequest) -> JoinRequest {
        JoinRequest {
            cluster: id(name),
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            global_cidr: g,
        }
    }

    fn fixed(s: &str) -> GlobalCidrRequest {
        GlobalCidrRequest::Fixed(s.parse().unwrap())
    }

    fn register(r: &mut Registry, q: &JoinRequest) -> Option<GlobalCidr> {
        let g = allocate(r, q).unwrap();
        r.clusters.insert(
            q.cluster.clone(),
            RegisteredCluster {
                global_cidr: g,
                pod_cidrs: q.pod_cidrs.clone(),
                service_cidrs: q.service_cidrs.clone(),
            },
        );
        g
    }

    #[test]
    fn auto_hands_out_distinct_blocks_in_order() {
        let mut r = Registry::default();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..50 {
            let g = register(&mut r, &req(&format!("c{i}"), GlobalCidrRequest::Auto)).unwrap();
            assert_eq!(g.net().prefix_len(), 16);
            assert!(seen.insert(g), "{g} handed out twice");
        }
        assert_eq!(seen.first().unwrap().to_string(), "242.0.0.0/16");
        assert_eq!(seen.last().unwrap().to_string(), "242.49.0.0/16");
    }

    #[test]
    fn auto_skips_fixed_and_local_cidrs() {
        let mut r = Registry::default();
        register(&mut r, &req("a", fixed("242.0.0.0/16")));
        // b's own pods live in 242.1.0.0/16: auto must skip it.
        let mut b = req("b", GlobalCidrRequest::Auto);
        b.pod_cidrs = vec!["242.1.0.0/16".parse().unwrap()];
        assert_eq!(register(&mut r, &b).unwrap().to_string(), "242.2.0.0/16");
    }

    #[test]
    fn refusals() {
        let mut r = Registry::default();
        register(&mut r, &req("a", fixed("242.0.0.0/16")));
        let mut own_overlap = req("c", fixed("242.5.0.0/16"));
        own_overlap.service_cidrs = vec!["242.5.128.0/17".parse().unwrap()];
        let cases: Vec<(&str, JoinRequest, &str)> = vec![
            (
                "taken id",
                req("a", GlobalCidrRequest::Auto),
                "already taken",
            ),
            (
                "overlap",
                req("b", fixed("242.0.0.0/8")),
                "cluster a's global CIDR",
            ),
            (
                "overlap sub",
                req("b", fixed("242.0.4.0/24")),
                "pick another",
            ),
            (
                "outside",
                req("b", fixed("10.0.0.0/16")),
                "outside the clusterset range",
            ),
            ("own", own_overlap, "cluster c's own CIDR"),
            (
                "no globalnet",
                req("d", GlobalCidrRequest::Disabled),
                "enable Globalnet",
            ),
        ];
        for (name, q, want) in cases {
            let e = allocate(&r, &q).expect_err(name).to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn exhaustion_says_what_to_change() {
        let mut r = Registry::new("242.0.0.0/15".parse().unwrap(), 16);
        register(&mut r, &req("a", GlobalCidrRequest::Auto));
        register(&mut r, &req("b", GlobalCidrRequest::Auto));
        let e = allocate(&r, &req("c", GlobalCidrRequest::Auto)).unwrap_err();
        assert!(matches!(e, Error::RangeExhausted { .. }), "{e}");
        assert!(e.to_string().contains("widen the range"));
    }

    #[test]
    fn distinct_cidrs_join_without_globalnet() {
        let mut r = Registry::default();
        let mut a = req("a", GlobalCidrRequest::Disabled);
        a.pod_cidrs = vec!["10.1.0.0/16".parse().unwrap()];
        a.service_cidrs = vec!["10.101.0.0/16".parse().unwrap()];
        assert_eq!(register(&mut r, &a), None);
        let mut b = req("b", GlobalCidrRequest::Disabled);
        b.pod_cidrs = vec!["10.2.0.0/16".parse().unwrap()];
        b.service_cidrs = vec!["10.102.0.0/16".parse().unwrap()];
        assert_eq!(register(&mut r, &b), None);
    }
}
