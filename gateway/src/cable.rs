//! The cable: the WireGuard device that carries a cluster's traffic to every
//! remote cluster, one peer per remote.
//!
//! Data flow: remote Endpoint records ([`plan::RemoteEndpoint`]) and the local
//! CIDRs go through [`plan::plan_peers`] (pure: refuses malformed or
//! overlapping remotes) into desired peers; [`plan::diff_peers`] compares them
//! with what the device holds ([`Cable::observe`]) into a [`PeerDiff`], which a
//! backend applies ([`Cable::apply`]). Re-planning after an apply yields an
//! empty diff.
//!
//! Backends: [`embedded::EmbeddedCable`] (boringtun in this process, on a
//! persistent TUN, configured through UAPI on a socketpair),
//! [`wgctrl::WgctrlCable`] (kernel WireGuard over netlink, or an external
//! wireguard-go over its UAPI socket, both through wireguard-control) and
//! [`fake::FakeCable`] for tests.

pub mod embedded;
pub mod fake;
pub mod key;
pub mod link;
pub mod mtu;
pub mod netns;
pub mod plan;
pub mod uapi;
pub mod wgctrl;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::Error;
pub use key::{KeyPair, PrivateKey, PublicKey};

/// Which WireGuard implementation runs a cable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The kernel module, over netlink.
    Kernel,
    /// An external wireguard-go daemon, over its UAPI socket.
    WireguardGo,
    /// boringtun embedded in the gateway process.
    Embedded,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::WireguardGo => "wireguard-go",
            Self::Embedded => "userspace",
        })
    }
}

/// A network interface name the kernel accepts (1 to 15 bytes, no `/`, no blanks).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, Error> {
        let bad = |reason| {
            Err(Error::InterfaceName {
                name: name.to_owned(),
                reason,
            })
        };
        if name.is_empty() || name.len() > 15 {
            return bad("must be 1 to 15 bytes long");
        }
        if name == "." || name == ".." {
            return bad("is reserved");
        }
        if name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return bad("must not contain '/', ':' or blanks");
        }
        if name.parse::<i64>().is_ok() {
            // boringtun reads an all-digit name as a file descriptor.
            return bad("must not be a number");
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`Cable::ensure`] makes true of the device itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The cluster's private key.
    pub private_key: PrivateKey,
    /// UDP port WireGuard listens on.
    pub listen_port: u16,
    /// Tunnel MTU (see [`mtu::tunnel_mtu`]).
    pub mtu: u32,
}

/// One peer as configured (what `wg set` sets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The remote cluster's public key.
    pub public_key: PublicKey,
    /// Where to send; `None` until known.
    pub endpoint: Option<SocketAddr>,
    /// Subnets routed to this peer and accepted from it.
    pub allowed_ips: BTreeSet<IpNet>,
    /// Persistent keepalive in seconds; `None` is off.
    pub keepalive: Option<u16>,
}

/// Counters of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// When the last handshake completed, if ever.
    pub last_handshake: Option<SystemTime>,
}

/// One peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPeer {
    /// Its configuration (the endpoint is the current one, after roaming).
    pub config: PeerConfig,
    /// Its counters.
    pub stats: PeerStats,
}

/// The device as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Public key of the device's private key, if one is set.
    pub public_key: Option<PublicKey>,
    /// UDP listen port, if known.
    pub listen_port: Option<u16>,
    /// Peers by public key.
    pub peers: BTreeMap<PublicKey, ObservedPeer>,
}

/// A change to an existing peer. The endpoint is `Some` only when the remote's
/// record moved it: drift repair never writes one, so WireGuard roaming stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    /// New endpoint, written only when `Some`.
    pub endpoint: Option<SocketAddr>,
    /// The complete AllowedIPs (replaces the old set).
    pub allowed_ips: BTreeSet<IpNet>,
    /// Persistent keepalive; `None` turns it off.
    pub keepalive: Option<u16>,
}

/// The difference between the peers a device has and those it should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerDiff {
    /// Peers to create.
    pub add: BTreeMap<PublicKey, PeerConfig>,
    /// Peers to change.
    pub update: BTreeMap<PublicKey, PeerUpdate>,
    /// Peers to delete.
    pub remove: BTreeSet<PublicKey>,
}

impl PeerDiff {
    /// True when applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

/// A WireGuard device. Every method is idempotent; calls block briefly (a
/// netlink or UAPI round trip), so async callers use `spawn_blocking`.
pub trait Cable: Send + Sync {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;

    /// The interface name.
    fn name(&self) -> &InterfaceName;

    /// Creates the interface if missing (or re-attaches to it), sets the private
    /// key and listen port where they differ, and sets the MTU and link up.
    /// Changes no peer.
    fn ensure(&self, spec: &DeviceSpec) -> Result<(), Error>;

    /// The device's key, port and peers with their counters; `None` when there is no device.
    fn observe(&self) -> Result<Option<DeviceState>, Error>;

    /// Applies a diff (`wg set`: add, update, remove peers).
    fn apply(&self, diff: &PeerDiff) -> Result<(), Error>;

    /// Removes every peer (a standby does this before anything else). No device is fine.
    fn strip_peers(&self) -> Result<(), Error>;

    /// Deletes the device (`ip link del`). No device is fine.
    fn teardown(&self) -> Result<(), Error>;

    /// Per-peer counters.
    fn stats(&self) -> Result<BTreeMap<PublicKey, PeerStats>, Error> {
        Ok(self
            .observe()?
            .map(|state| {
                state
                    .peers
                    .into_iter()
                    .map(|(key, peer)| (key, peer.stats))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in ["cw0", "causeway-wg", "a234567890abcde"] {
            assert!(InterfaceName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "a234567890abcdef", "a/b", "a b", "..", "12", "wg:1"] {
            assert!(InterfaceName::new(bad).is_err(), "{bad}");
        }
    }
}
