//! Pure peer planning: remote Endpoint records and the local CIDRs in, the
//! peers the device should have (and the remotes refused, with why) out; then
//! the diff against what the device holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::{ObservedPeer, PeerConfig, PeerDiff, PeerUpdate, PublicKey};

/// One remote cluster's active gateway, as its Endpoint record gives it.
/// (An adapter from the broker's record type fills this in.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The remote cluster's id.
    pub cluster: String,
    /// Its WireGuard public key, base64 as in the record.
    pub public_key: String,
    /// Address and UDP port of its active gateway.
    pub endpoint: SocketAddr,
    /// Subnets it serves: its global CIDR with Globalnet, else its pod and service CIDRs.
    pub subnets: Vec<IpNet>,
}

/// Which local range a remote subnet collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LocalKind {
    /// The local pod CIDR.
    Pod,
    /// The local service CIDR.
    Service,
    /// The local node network.
    Node,
    /// The local global CIDR.
    Global,
}

impl fmt::Display for LocalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pod => "pod",
            Self::Service => "service",
            Self::Node => "node",
            Self::Global => "global",
        })
    }
}

/// The local cluster's own ranges, which no remote may claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNetworks {
    /// The local cluster's id (names it in refusals).
    pub cluster: String,
    /// The local cluster's public key: no remote may use it.
    pub public_key: Option<PublicKey>,
    /// Ranges by kind.
    pub ranges: BTreeMap<LocalKind, Vec<IpNet>>,
}

/// Why a remote is refused: becomes its connection status `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Two records name the same cluster.
    DuplicateCluster,
    /// The public key is not 32 bytes of base64.
    MalformedKey(String),
    /// The remote uses the local cluster's own key.
    OwnKey,
    /// Another remote has the same key.
    DuplicateKey {
        /// The remote that keeps the key.
        other: String,
    },
    /// The endpoint cannot be sent to.
    MalformedEndpoint(SocketAddr),
    /// No subnets advertised.
    NoSubnets,
    /// A subnet has host bits set, or is a default route.
    MalformedSubnet {
        /// The subnet as given.
        subnet: IpNet,
        /// Why.
        reason: &'static str,
    },
    /// A subnet overlaps a local range.
    OverlapsLocal {
        /// The remote's subnet.
        subnet: IpNet,
        /// Which local range.
        kind: LocalKind,
        /// The local range.
        local: IpNet,
    },
    /// A subnet overlaps another remote's.
    OverlapsPeer {
        /// The remote's subnet.
        subnet: IpNet,
        /// The remote that keeps its subnets.
        other: String,
        /// That remote's subnet.
        other_subnet: IpNet,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateCluster => write!(f, "two Endpoint records name this cluster"),
            Self::MalformedKey(reason) => write!(f, "public key is malformed: {reason}"),
            Self::OwnKey => write!(
                f,
                "uses this cluster's own WireGuard public key; each cluster needs its own key pair (`causeway join`)"
            ),
            Self::DuplicateKey { other } => write!(
                f,
                "uses the same WireGuard public key as cluster {other}; each cluster needs its own key pair"
            ),
            Self::MalformedEndpoint(addr) => {
                write!(
                    f,
                    "endpoint {addr} is not an address a peer can be reached at"
                )
            }
            Self::NoSubnets => write!(f, "advertises no subnets"),
            Self::MalformedSubnet { subnet, reason } => {
                write!(f, "subnet {subnet} is malformed: {reason}")
            }
            Self::OverlapsLocal {
                subnet,
                kind,
                local,
            } => write!(
                f,
                "subnet {subnet} overlaps the local {kind} CIDR {local}; use Globalnet or distinct CIDRs"
            ),
            Self::OverlapsPeer {
                subnet,
                other,
                other_subnet,
            } => write!(
                f,
                "subnet {subnet} overlaps {other_subnet} of cluster {other}; use Globalnet or distinct CIDRs"
            ),
        }
    }
}

/// A peer the device should have, and the cluster it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    /// The remote cluster.
    pub cluster: String,
    /// Its configuration.
    pub config: PeerConfig,
}

/// The outcome of planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// Peers to have, by key.
    pub peers: BTreeMap<PublicKey, DesiredPeer>,
    /// Remotes refused, by cluster id, with the reason.
    pub refused: BTreeMap<String, Refusal>,
}

impl PeerPlan {
    /// The endpoints this plan writes; keep them after a successful apply and
    /// hand them to the next [`diff_peers`] as `written`.
    pub fn endpoints(&self) -> BTreeMap<PublicKey, SocketAddr> {
        self.peers
            .iter()
            .filter_map(|(key, peer)| peer.config.endpoint.map(|e| (*key, e)))
            .collect()
    }
}

fn check_shape(remote: &RemoteEndpoint) -> Result<PublicKey, Refusal> {
    let key: PublicKey = remote.public_key.parse().map_err(|e| {
        Refusal::MalformedKey(match e {
            crate::Error::ParseKey { reason, .. } => reason,
            other => other.to_string(),
        })
    })?;
    let ip = remote.endpoint.ip();
    let bad_ip = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if bad_ip || remote.endpoint.port() == 0 {
        return Err(Refusal::MalformedEndpoint(remote.endpoint));
    }
    if remote.subnets.is_empty() {
        return Err(Refusal::NoSubnets);
    }
    for subnet in &remote.subnets {
        if subnet.prefix_len() == 0 {
            return Err(Refusal::MalformedSubnet {
                subnet: *subnet,
                reason: "a default route is never routed to a peer",
            });
        }
        if subnet.trunc() != *subnet {
            return Err(Refusal::MalformedSubnet {
                subnet: *subnet,
                reason: "host bits are set",
            });
        }
    }
    Ok(key)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Plans the peers. A remote is refused (and nothing else disturbed) when its
/// record is malformed, its key is ours or taken, or a subnet overlaps a local
/// range or a subnet of a remote that ranks before it. Remotes already on the
/// device (`installed`) rank first, so a newcomer cannot displace them; then by
/// cluster id.
pub fn plan_peers(
    local: &LocalNetworks,
    remotes: &[RemoteEndpoint],
    installed: &BTreeSet<PublicKey>,
    keepalive: Option<u16>,
) -> PeerPlan {
    let mut plan = PeerPlan::default();
    let mut seen = BTreeSet::new();
    let mut shaped = Vec::new();
    // Duplicate ids first: neither record can be trusted to be the cluster's.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for remote in remotes {
        *counts.entry(remote.cluster.as_str()).or_default() += 1;
    }
    for remote in remotes {
        if counts[remote.cluster.as_str()] > 1 {
            plan.refused
                .insert(remote.cluster.clone(), Refusal::DuplicateCluster);
            continue;
        }
        if !seen.insert(remote.cluster.as_str()) {
            continue;
        }
        match check_shape(remote) {
            Ok(key) => shaped.push((key, remote)),
            Err(refusal) => {
                plan.refused.insert(remote.cluster.clone(), refusal);
            }
        }
    }
    shaped.sort_by(|(ka, a), (kb, b)| {
        (!installed.contains(ka), &a.cluster).cmp(&(!installed.contains(kb), &b.cluster))
    });

    let mut taken: Vec<(IpNet, &str)> = Vec::new();
    for (key, remote) in shaped {
        if let Some(refusal) = vet(local, &plan, &taken, key, remote) {
            plan.refused.insert(remote.cluster.clone(), refusal);
            continue;
        }
        taken.extend(remote.subnets.iter().map(|s| (*s, remote.cluster.as_str())));
        plan.peers.insert(
            key,
            DesiredPeer {
                cluster: remote.cluster.clone(),
                config: PeerConfig {
                    public_key: key,
                    endpoint: Some(remote.endpoint),
                    allowed_ips: remote.subnets.iter().copied().collect(),
                    keepalive,
                },
            },
        );
    }
    plan
}

fn vet(
    local: &LocalNetworks,
    plan: &PeerPlan,
    taken: &[(IpNet, &str)],
    key: PublicKey,
    remote: &RemoteEndpoint,
) -> Option<Refusal> {
    if local.public_key == Some(key) {
        return Some(Refusal::OwnKey);
    }
    if let Some(other) = plan.peers.get(&key) {
        return Some(Refusal::DuplicateKey {
            other: other.cluster.clone(),
        });
    }
    for subnet in &remote.subnets {
        for (kind, ranges) in &local.ranges {
            if let Some(local) = ranges.iter().find(|l| overlaps(subnet, l)) {
                return Some(Refusal::OverlapsLocal {
                    subnet: *subnet,
                    kind: *kind,
                    local: *local,
                });
            }
        }
        if let Some((other_subnet, other)) = taken.iter().find(|(t, _)| overlaps(subnet, t)) {
            return Some(Refusal::OverlapsPeer {
                subnet: *subnet,
                other: (*other).to_owned(),
                other_subnet: *other_subnet,
            });
        }
    }
    // Two subnets of one remote may overlap each other: harmless, WireGuard takes both.
    None
}

/// Diffs desired peers against observed ones.
///
/// `written` holds the endpoint last written for each peer (from
/// [`PeerPlan::endpoints`] of the last successful apply). An existing peer's
/// endpoint is written only when its record moved it (`written` differs from
/// the record) or it has none: never to undo a roam. After a restart `written`
/// is empty, so roamed endpoints survive it too.
pub fn diff_peers(
    desired: &BTreeMap<PublicKey, DesiredPeer>,
    observed: &BTreeMap<PublicKey, ObservedPeer>,
    written: &BTreeMap<PublicKey, SocketAddr>,
) -> PeerDiff {
    let mut diff = PeerDiff::default();
    for (key, want) in desired {
        let want = &want.config;
        let Some(have) = observed.get(key) else {
            diff.add.insert(*key, want.clone());
            continue;
        };
        let have = &have.config;
        let record_moved = match (written.get(key), want.endpoint) {
            (Some(last), Some(now)) => *last != now,
            _ => false,
        };
        let endpoint =
            if (record_moved || have.endpoint.is_none()) && have.endpoint != want.endpoint {
                want.endpoint
            } else {
                None
            };
        if endpoint.is_some()
            || have.allowed_ips != want.allowed_ips
            || normalize_keepalive(have.keepalive) != normalize_keepalive(want.keepalive)
        {
            diff.update.insert(
                *key,
                PeerUpdate {
                    endpoint,
                    allowed_ips: want.allowed_ips.clone(),
                    keepalive: want.keepalive,
                },
            );
        }
    }
    for key in observed.keys() {
        if !desired.contains_key(key) {
            diff.remove.insert(*key);
        }
    }
    diff
}

/// Keepalive 0 is "off", as `None` is.
fn normalize_keepalive(k: Option<u16>) -> Option<u16> {
    k.filter(|s| *s != 0)
}

#[cfg(test)]
mod tests;
