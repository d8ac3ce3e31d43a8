//! Kernel WireGuard (netlink) and an external wireguard-go (its UAPI socket
//! under `/var/run/wireguard/`), both through wireguard-control 2.0.
//!
//! What would be sent is built by pure functions ([`device_update`],
//! [`diff_update`]) that unit tests check, since this kernel has no WireGuard
//! module. wireguard-control is not used against boringtun: its UAPI reader
//! misreads boringtun's replies (FACTS.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use wireguard_control::{Backend, Device, DeviceUpdate, PeerConfigBuilder};

use super::{
    BackendKind, Cable, DeviceSpec, DeviceState, InterfaceName, ObservedPeer, PeerConfig, PeerDiff,
    PeerStats, PublicKey, link, netns,
};
use crate::Error;

/// Where wireguard-go puts its UAPI sockets (shared by every namespace).
const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long wireguard-go gets to create its socket, or to go away.
const START_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether this kernel has WireGuard (the module loaded or built in, which
/// shows as `/sys/module/wireguard`). A module that could be loaded but is not
/// counts as absent: the gateway does not load modules.
pub fn kernel_available() -> bool {
    Path::new("/sys/module/wireguard").exists()
}

/// The device settings to send so `observed` matches `spec` (`wg set NAME
/// private-key ... listen-port ...`), or `None` when nothing differs.
pub fn device_update(spec: &DeviceSpec, observed: Option<&DeviceState>) -> Option<DeviceUpdate> {
    let mut update = DeviceUpdate::new();
    let mut changed = false;
    if observed.and_then(|s| s.public_key) != Some(spec.private_key.public_key()) {
        update = update.set_private_key(spec.private_key.to_wgctrl());
        changed = true;
    }
    if observed.and_then(|s| s.listen_port) != Some(spec.listen_port) {
        update = update.set_listen_port(spec.listen_port);
        changed = true;
    }
    changed.then_some(update)
}

fn wg_key(key: &PublicKey) -> wireguard_control::Key {
    wireguard_control::Key(*key.as_bytes())
}

fn allowed(nets: &std::collections::BTreeSet<ipnet::IpNet>) -> Vec<wireguard_control::AllowedIp> {
    nets.iter()
        .map(|n| wireguard_control::AllowedIp {
            address: n.addr(),
            cidr: n.prefix_len(),
        })
        .collect()
}

/// The peer changes of `diff` as one request (`wg set NAME peer ... [remove]`).
pub fn diff_update(diff: &PeerDiff) -> DeviceUpdate {
    let mut update = DeviceUpdate::new();
    for key in &diff.remove {
        update = update.remove_peer_by_key(&wg_key(key));
    }
    for (key, peer) in &diff.add {
        let mut builder = PeerConfigBuilder::new(&wg_key(key))
            .replace_allowed_ips()
            .add_allowed_ips(&allowed(&peer.allowed_ips));
        if let Some(endpoint) = peer.endpoint {
            builder = builder.set_endpoint(endpoint);
        }
        if let Some(keepalive) = peer.keepalive {
            builder = builder.set_persistent_keepalive_interval(keepalive);
        }
        update = update.add_peer(builder);
    }
    for (key, change) in &diff.update {
        let mut builder = PeerConfigBuilder::new(&wg_key(key))
            .replace_allowed_ips()
            .add_allowed_ips(&allowed(&change.allowed_ips));
        // Only a moved record writes the endpoint: roaming must stand.
        if let Some(endpoint) = change.endpoint {
            builder = builder.set_endpoint(endpoint);
        }
        builder = match change.keepalive {
            Some(keepalive) => builder.set_persistent_keepalive_interval(keepalive),
            None => builder.unset_persistent_keepalive(),
        };
        update = update.add_peer(builder);
    }
    update
}

/// What the device reports, in the cable's terms.
pub fn device_state(device: &Device) -> DeviceState {
    DeviceState {
        public_key: device
            .public_key
            .as_ref()
            .map(|k| PublicKey::from_bytes(k.0)),
        listen_port: device.listen_port,
        peers: device
            .peers
            .iter()
            .map(|p| {
                let key = PublicKey::from_bytes(p.config.public_key.0);
                let peer = ObservedPeer {
                    config: PeerConfig {
                        public_key: key,
                        endpoint: p.config.endpoint,
                        allowed_ips: p
                            .config
                            .allowed_ips
                            .iter()
                            .filter_map(|a| ipnet::IpNet::new(a.address, a.cidr).ok())
                            .collect(),
                        keepalive: p.config.persistent_keepalive_interval.filter(|k| *k != 0),
                    },
                    stats: PeerStats {
                        rx_bytes: p.stats.rx_bytes,
                        tx_bytes: p.stats.tx_bytes,
                        last_handshake: p.stats.last_handshake_time,
                    },
                };
                (key, peer)
            })
            .collect(),
    }
}

/// Kernel WireGuard, or wireguard-go, driven through wireguard-control.
#[derive(Debug)]
pub struct WgctrlCable {
    name: InterfaceName,
    kind: BackendKind,
    netns: Option<PathBuf>,
    wireguard_go: PathBuf,
}

impl WgctrlCable {
    /// Kernel WireGuard on interface `name` in namespace `netns` (`None`: ours).
    pub fn kernel(name: InterfaceName, netns: Option<PathBuf>) -> Self {
        Self {
            name,
            kind: BackendKind::Kernel,
            netns,
            wireguard_go: PathBuf::new(),
        }
    }

    /// An external wireguard-go (binary at `binary`, e.g. `wireguard-go`) on
    /// interface `name` in namespace `netns`. Its socket directory is shared by
    /// every namespace, so `name` must be unique on the machine.
    pub fn wireguard_go(name: InterfaceName, netns: Option<PathBuf>, binary: PathBuf) -> Self {
        Self {
            name,
            kind: BackendKind::WireguardGo,
            netns,
            wireguard_go: binary,
        }
    }

    fn backend(&self) -> Backend {
        match self.kind {
            BackendKind::Kernel => Backend::Kernel,
            _ => Backend::Userspace,
        }
    }

    fn wg_name(&self) -> Result<wireguard_control::InterfaceName, Error> {
        self.name
            .as_str()
            .parse()
            .map_err(|_| Error::InterfaceName {
                name: self.name.to_string(),
                reason: "rejected by wireguard-control",
            })
    }

    fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    fn socket(&self) -> PathBuf {
        Path::new(SOCKET_DIR).join(format!("{}.sock", self.name))
    }

    fn device_err(&self, op: &'static str) -> impl Fn(std::io::Error) -> Error + '_ {
        move |source| Error::Device {
            iface: self.name.to_string(),
            backend: self.kind,
            op,
            source,
        }
    }

    fn exists(&self) -> Result<bool, Error> {
        match self.kind {
            BackendKind::WireguardGo => {
                Ok(std::os::unix::net::UnixStream::connect(self.socket()).is_ok())
            }
            _ => netns::run_in(self.netns(), || {
                Ok(link::show(self.name.as_str())?.is_some())
            }),
        }
    }

    fn start_wireguard_go(&self) -> Result<(), Error> {
        let command = format!("{} {}", self.wireguard_go.display(), self.name);
        let out = netns::run_in(self.netns(), || {
            // It daemonizes; the child inherits this thread's namespace.
            Command::new(&self.wireguard_go)
                .arg(self.name.as_str())
                .output()
                .map_err(|e| Error::Command {
                    command: command.clone(),
                    detail: format!("{e}; install wireguard-go or pass its path"),
                })
        })?;
        if !out.status.success() {
            return Err(Error::Command {
                command,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.exists()? {
            if Instant::now() > deadline {
                return Err(Error::Command {
                    command,
                    detail: format!(
                        "no UAPI socket at {} after {START_TIMEOUT:?}",
                        self.socket().display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        info!(iface = %self.name, "wireguard-go started");
        Ok(())
    }

    fn send(&self, update: DeviceUpdate, op: &'static str) -> Result<(), Error> {
        let name = self.wg_name()?;
        let backend = self.backend();
        netns::run_in(self.netns(), || {
            update.apply(&name, backend).map_err(self.device_err(op))
        })
    }
}

impl Cable for WgctrlCable {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn name(&self) -> &InterfaceName {
        &self.name
    }

    fn ensure(&self, spec: &DeviceSpec) -> Result<(), Error> {
        if self.kind == BackendKind::WireguardGo && !self.exists()? {
            self.start_wireguard_go()?;
        }
        // For the kernel, applying to a missing link creates it (`ip link add NAME type wireguard`).
        let observed = self.observe()?;
        if let Some(update) = device_update(spec, observed.as_ref()) {
            debug!(iface = %self.name, backend = %self.kind, "setting device");
            self.send(update, "set device")?;
        }
        let name = self.name.as_str();
        netns::run_in(self.netns(), || match link::show(name)? {
            Some(info) if info.mtu == spec.mtu && info.up => Ok(()),
            _ => link::set_mtu_up(name, spec.mtu),
        })
    }

    fn observe(&self) -> Result<Option<DeviceState>, Error> {
        if !self.exists()? {
            return Ok(None);
        }
        let name = self.wg_name()?;
        let backend = self.backend();
        let device = netns::run_in(self.netns(), || {
            Device::get(&name, backend).map_err(self.device_err("get"))
        })?;
        Ok(Some(device_state(&device)))
    }

    fn apply(&self, diff: &PeerDiff) -> Result<(), Error> {
        if diff.is_empty() {
            return Ok(());
        }
        info!(iface = %self.name, add = diff.add.len(), update = diff.update.len(), remove = diff.remove.len(), "applying peer diff");
        self.send(diff_update(diff), "set peers")
    }

    fn strip_peers(&self) -> Result<(), Error> {
        if !self.exists()? {
            return Ok(());
        }
        self.send(DeviceUpdate::new().replace_peers(), "strip peers")
    }

    fn teardown(&self) -> Result<(), Error> {
        let name = self.wg_name()?;
        match self.kind {
            BackendKind::WireguardGo => {
                // wireguard-go exits when its socket file is removed.
                wireguard_control::backends::userspace::delete_interface(&name)
                    .map_err(self.device_err("delete"))?;
                let deadline = Instant::now() + START_TIMEOUT;
                loop {
                    let gone =
                        netns::run_in(self.netns(), || link::show(self.name.as_str()))?.is_none();
                    if gone {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return netns::run_in(self.netns(), || link::delete(self.name.as_str()));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            _ => netns::run_in(self.netns(), || link::delete(self.name.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cable::{PeerUpdate, PrivateKey};

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn wkey(n: u8) -> wireguard_control::Key {
        wireguard_control::Key([n; 32])
    }

    #[test]
    fn device_update_sends_only_what_differs() {
        let private = PrivateKey::generate();
        let spec = DeviceSpec {
            private_key: private.clone(),
            listen_port: 51820,
            mtu: 1440,
        };
        let full = DeviceUpdate::new()
            .set_private_key(private.to_wgctrl())
            .set_listen_port(51820);
        assert_eq!(device_update(&spec, None), Some(full.clone()));
        assert_eq!(
            device_update(&spec, Some(&DeviceState::default())),
            Some(full)
        );
        let same = DeviceState {
            public_key: Some(private.public_key()),
            listen_port: Some(51820),
            peers: BTreeMap::new(),
        };
        assert_eq!(device_update(&spec, Some(&same)), None);
        let moved = DeviceState {
            listen_port: Some(1),
            ..same
        };
        assert_eq!(
            device_update(&spec, Some(&moved)),
            Some(DeviceUpdate::new().set_listen_port(51820))
        );
    }

    #[test]
    fn diff_update_is_the_wg_set_request() {
        let e1 = "172.18.1.10:51820".parse().unwrap();
        let e2 = "172.18.1.11:51820".parse().unwrap();
        let diff = PeerDiff {
            add: BTreeMap::from([(
                key(2),
                PeerConfig {
                    public_key: key(2),
                    endpoint: Some(e1),
                    allowed_ips: ["10.245.0.0/16".parse().unwrap()].into(),
                    keepalive: Some(25),
                },
            )]),
            update: BTreeMap::from([
                (
                    key(3),
                    PeerUpdate {
                        endpoint: None,
                        allowed_ips: ["10.246.0.0/16".parse().unwrap()].into(),
                        keepalive: None,
                    },
                ),
                (
                    key(4),
                    PeerUpdate {
                        endpoint: Some(e2),
                        allowed_ips: ["10.247.0.0/16".parse().unwrap()].into(),
                        keepalive: Some(10),
                    },
                ),
            ]),
            remove: [key(5)].into(),
        };
        let want = DeviceUpdate::new()
            .remove_peer_by_key(&wkey(5))
            .add_peer(
                PeerConfigBuilder::new(&wkey(2))
                    .replace_allowed_ips()
                    .add_allowed_ip("10.245.0.0".parse().unwrap(), 16)
                    .set_endpoint(e1)
                    .set_persistent_keepalive_interval(25),
            )
            .add_peer(
                PeerConfigBuilder::new(&wkey(3))
                    .replace_allowed_ips()
                    .add_allowed_ip("10.246.0.0".parse().unwrap(), 16)
                    .unset_persistent_keepalive(),
            )
            .add_peer(
                PeerConfigBuilder::new(&wkey(4))
                    .replace_allowed_ips()
                    .add_allowed_ip("10.247.0.0".parse().unwrap(), 16)
                    .set_endpoint(e2)
                    .set_persistent_keepalive_interval(10),
            );
        assert_eq!(diff_update(&diff), want);
        assert_eq!(diff_update(&PeerDiff::default()), DeviceUpdate::new());
    }

    #[test]
    fn kernel_cable_without_a_device_observes_nothing() {
        // Runs unprivileged too: `ip link show` of a name that does not exist.
        let cable = WgctrlCable::kernel(InterfaceName::new("cwnotthere0").unwrap(), None);
        assert_eq!(cable.observe().unwrap(), None);
        assert!(cable.strip_peers().is_ok());
        assert_eq!(cable.kind(), BackendKind::Kernel);
    }
}
