//! An in-memory cable for tests of whatever drives a [`Cable`]. It keeps a
//! device's state as WireGuard would and records every change, so a test can
//! check that re-applying an unchanged plan changes nothing.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::{
    BackendKind, Cable, DeviceSpec, DeviceState, InterfaceName, ObservedPeer, PeerDiff, PeerStats,
    PublicKey,
};
use crate::Error;

#[derive(Debug, Default)]
struct State {
    device: Option<DeviceState>,
    mtu: u32,
    changes: Vec<String>,
}

/// The fake.
#[derive(Debug)]
pub struct FakeCable {
    name: InterfaceName,
    state: Mutex<State>,
}

impl FakeCable {
    /// A fake device called `name` that does not exist yet.
    pub fn new(name: InterfaceName) -> Self {
        Self {
            name,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every change made so far, one line each (`add KEY`, `update KEY endpoint=..`, ...).
    pub fn changes(&self) -> Vec<String> {
        self.lock().changes.clone()
    }

    /// The MTU last set.
    pub fn mtu(&self) -> u32 {
        self.lock().mtu
    }

    /// What WireGuard roaming does: an authenticated packet from `addr` moves the endpoint.
    pub fn roam(&self, key: &PublicKey, addr: SocketAddr) {
        if let Some(peer) = self
            .lock()
            .device
            .as_mut()
            .and_then(|d| d.peers.get_mut(key))
        {
            peer.config.endpoint = Some(addr);
        }
    }

    /// A completed handshake and some traffic.
    pub fn handshake(&self, key: &PublicKey, at: SystemTime, rx: u64, tx: u64) {
        if let Some(peer) = self
            .lock()
            .device
            .as_mut()
            .and_then(|d| d.peers.get_mut(key))
        {
            peer.stats.last_handshake = Some(at);
            peer.stats.rx_bytes += rx;
            peer.stats.tx_bytes += tx;
        }
    }
}

impl Cable for FakeCable {
    fn kind(&self) -> BackendKind {
        BackendKind::Embedded
    }

    fn name(&self) -> &InterfaceName {
        &self.name
    }

    fn ensure(&self, spec: &DeviceSpec) -> Result<(), Error> {
        let mut state = self.lock();
        let public = spec.private_key.public_key();
        let mut changes = Vec::new();
        let device = state.device.get_or_insert_with(|| {
            changes.push("create".to_owned());
            DeviceState::default()
        });
        if device.public_key != Some(public) {
            device.public_key = Some(public);
            changes.push("set private_key".to_owned());
        }
        if device.listen_port != Some(spec.listen_port) {
            device.listen_port = Some(spec.listen_port);
            changes.push(format!("set listen_port={}", spec.listen_port));
        }
        if state.mtu != spec.mtu {
            state.mtu = spec.mtu;
            changes.push(format!("set mtu={}", spec.mtu));
        }
        state.changes.extend(changes);
        Ok(())
    }

    fn observe(&self) -> Result<Option<DeviceState>, Error> {
        Ok(self.lock().device.clone())
    }

    fn apply(&self, diff: &PeerDiff) -> Result<(), Error> {
        let mut state = self.lock();
        let State {
            device, changes, ..
        } = &mut *state;
        let device = device.as_mut().ok_or_else(|| Error::NotUp {
            iface: self.name.to_string(),
        })?;
        for key in &diff.remove {
            if device.peers.remove(key).is_some() {
                changes.push(format!("remove {key}"));
            }
        }
        for (key, config) in &diff.add {
            device.peers.insert(
                *key,
                ObservedPeer {
                    config: config.clone(),
                    stats: PeerStats::default(),
                },
            );
            changes.push(format!("add {key} endpoint={:?}", config.endpoint));
        }
        for (key, update) in &diff.update {
            let Some(peer) = device.peers.get_mut(key) else {
                continue;
            };
            if let Some(endpoint) = update.endpoint {
                peer.config.endpoint = Some(endpoint);
            }
            peer.config.allowed_ips = update.allowed_ips.clone();
            peer.config.keepalive = update.keepalive;
            changes.push(format!("update {key} endpoint={:?}", update.endpoint));
        }
        Ok(())
    }

    fn strip_peers(&self) -> Result<(), Error> {
        let mut state = self.lock();
        let stripped = state
            .device
            .as_mut()
            .map(|d| std::mem::take(&mut d.peers).len())
            .unwrap_or(0);
        if stripped > 0 {
            state.changes.push(format!("strip {stripped}"));
        }
        Ok(())
    }

    fn teardown(&self) -> Result<(), Error> {
        let mut state = self.lock();
        if state.device.take().is_some() {
            state.changes.push("delete".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::cable::plan::{LocalKind, LocalNetworks, RemoteEndpoint, diff_peers, plan_peers};
    use crate::cable::{KeyPair, PrivateKey};

    struct Harness {
        cable: FakeCable,
        local: LocalNetworks,
        written: BTreeMap<PublicKey, SocketAddr>,
    }

    impl Harness {
        fn new() -> Self {
            let key = PrivateKey::generate();
            let cable = FakeCable::new(InterfaceName::new("cw0").unwrap());
            cable
                .ensure(&DeviceSpec {
                    private_key: key.clone(),
                    listen_port: 51820,
                    mtu: 1440,
                })
                .unwrap();
            Self {
                cable,
                local: LocalNetworks {
                    cluster: "a".into(),
                    public_key: Some(key.public_key()),
                    ranges: BTreeMap::from([(
                        LocalKind::Pod,
                        vec!["10.244.0.0/16".parse().unwrap()],
                    )]),
                },
                written: BTreeMap::new(),
            }
        }

        /// One reconcile: plan, diff against the fake, apply, remember endpoints.
        fn reconcile(&mut self, remotes: &[RemoteEndpoint]) -> PeerDiff {
            let observed = self.cable.observe().unwrap().unwrap_or_default().peers;
            let installed: BTreeSet<_> = observed.keys().copied().collect();
            let plan = plan_peers(&self.local, remotes, &installed, Some(25));
            let diff = diff_peers(&plan.peers, &observed, &self.written);
            self.cable.apply(&diff).unwrap();
            self.written = plan.endpoints();
            diff
        }
    }

    fn remote(cluster: &str, key: &KeyPair, endpoint: &str, subnet: &str) -> RemoteEndpoint {
        RemoteEndpoint {
            cluster: cluster.into(),
            public_key: key.public().to_base64(),
            endpoint: endpoint.parse().unwrap(),
            subnets: vec![subnet.parse().unwrap()],
        }
    }

    #[test]
    fn reapplying_an_unchanged_plan_changes_nothing() {
        let mut h = Harness::new();
        let b = KeyPair::generate();
        let c = KeyPair::generate();
        let remotes = [
            remote("b", &b, "172.18.1.10:51820", "10.245.0.0/16"),
            remote("c", &c, "172.18.2.10:51820", "10.246.0.0/16"),
        ];
        assert_eq!(h.reconcile(&remotes).add.len(), 2);
        let before = h.cable.changes();
        assert!(h.reconcile(&remotes).is_empty());
        assert_eq!(h.cable.changes(), before);
    }

    #[test]
    fn roaming_stands_until_the_record_moves() {
        let mut h = Harness::new();
        let b = KeyPair::generate();
        let first = [remote("b", &b, "172.18.1.10:51820", "10.245.0.0/16")];
        h.reconcile(&first);
        // b's standby took over with the same key and handshook from its address.
        let roamed: SocketAddr = "172.18.1.11:51820".parse().unwrap();
        h.cable.roam(&b.public(), roamed);
        assert!(
            h.reconcile(&first).is_empty(),
            "drift repair must not undo a roam"
        );
        let endpoint = |h: &Harness| {
            h.cable.observe().unwrap().unwrap().peers[&b.public()]
                .config
                .endpoint
        };
        assert_eq!(endpoint(&h), Some(roamed));
        // Then b's Endpoint record names a third address: written.
        let moved = [remote("b", &b, "172.18.1.12:51820", "10.245.0.0/16")];
        assert_eq!(h.reconcile(&moved).update.len(), 1);
        assert_eq!(endpoint(&h), Some("172.18.1.12:51820".parse().unwrap()));
        assert!(h.reconcile(&moved).is_empty());
    }

    #[test]
    fn refused_remote_disturbs_nothing() {
        let mut h = Harness::new();
        let b = KeyPair::generate();
        let c = KeyPair::generate();
        let good = remote("b", &b, "172.18.1.10:51820", "10.245.0.0/16");
        h.reconcile(std::slice::from_ref(&good));
        let before = h.cable.changes();
        // c claims b's subnet and then our pod CIDR: refused both times, b untouched.
        for subnet in ["10.245.1.0/24", "10.244.0.0/16"] {
            let diff = h.reconcile(&[good.clone(), remote("c", &c, "172.18.2.10:51820", subnet)]);
            assert!(diff.is_empty(), "{subnet}: {diff:?}");
        }
        assert_eq!(h.cable.changes(), before);
    }

    #[test]
    fn strip_and_teardown() {
        let mut h = Harness::new();
        let b = KeyPair::generate();
        h.reconcile(&[remote("b", &b, "172.18.1.10:51820", "10.245.0.0/16")]);
        h.cable.handshake(&b.public(), SystemTime::now(), 92, 148);
        assert_eq!(h.cable.stats().unwrap()[&b.public()].rx_bytes, 92);
        h.cable.strip_peers().unwrap();
        assert!(h.cable.observe().unwrap().unwrap().peers.is_empty());
        h.cable.teardown().unwrap();
        assert_eq!(h.cable.observe().unwrap(), None);
        assert!(h.cable.stats().unwrap().is_empty());
        assert_eq!(h.cable.mtu(), 1440);
    }
}
