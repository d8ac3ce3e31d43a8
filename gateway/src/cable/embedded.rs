//! Embedded userspace WireGuard: boringtun 0.7.1 running in this process on a
//! persistent TUN, configured through UAPI written to one end of a socketpair
//! whose other end is boringtun's `DeviceConfig::uapi_fd` (Settled decision 3;
//! boringtun's socket mode shares `/var/run/wireguard/` across namespaces,
//! deletes a socket of the same name and swallows SIGTERM).
//!
//! The TUN is created persistent and multi-queue (`ip tuntap add dev NAME mode
//! tun multi_queue`) before boringtun attaches to it, so a restarted gateway
//! finds the interface, its addresses and its routes where it left them
//! (Settled decision 5). Its peers lived in the old process and are gone: the
//! next reconcile adds them again. boringtun reads the MTU once when it
//! attaches, so the MTU is set before; raising it later re-attaches.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use boringtun::device::{DeviceConfig, DeviceHandle};
use tracing::{debug, info, warn};

use super::uapi::{self, Conn};
use super::{
    BackendKind, Cable, DeviceSpec, DeviceState, InterfaceName, PeerConfig, PeerDiff, link, netns,
};
use crate::Error;

/// How long a UAPI reply may take before the device is declared stuck.
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);

struct Running {
    // Dropped first: closing our end makes boringtun's event loop exit.
    conn: Conn,
    handle: DeviceHandle,
    attached_mtu: u32,
}

/// boringtun in this process, on a persistent TUN.
pub struct EmbeddedCable {
    name: InterfaceName,
    netns: Option<PathBuf>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for EmbeddedCable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCable")
            .field("name", &self.name)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl EmbeddedCable {
    /// A cable for interface `name` in the network namespace at `netns`
    /// (`None`: the process's own). Nothing happens until [`Cable::ensure`].
    pub fn new(name: InterfaceName, netns: Option<PathBuf>) -> Self {
        Self {
            name,
            netns,
            running: Mutex::new(None),
        }
    }

    fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        // A panic while holding the lock left at worst a dead device, which
        // the next call notices through its UAPI connection.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn create_err(&self, detail: impl Into<String>) -> Error {
        Error::CreateDevice {
            iface: self.name.to_string(),
            backend: BackendKind::Embedded,
            detail: detail.into(),
        }
    }

    fn uapi_err(&self, op: &'static str, detail: impl std::fmt::Display) -> Error {
        Error::Uapi {
            iface: self.name.to_string(),
            op,
            detail: detail.to_string(),
        }
    }

    /// Makes sure the persistent TUN exists with this MTU and is up.
    fn ensure_tun(&self, mtu: u32) -> Result<(), Error> {
        let name = self.name.as_str();
        netns::run_in(self.netns(), || {
            match link::show(name)? {
                None => {
                    info!(iface = name, "creating persistent TUN");
                    link::add_persistent_tun(name)?;
                }
                Some(info) if info.kind.as_deref() != Some("tun") || !info.multi_queue => {
                    return Err(self.create_err(format!(
                        "interface exists but is not a multi-queue TUN (kind {:?}); delete it with `ip link del {name}`",
                        info.kind.unwrap_or_default()
                    )));
                }
                Some(info) if info.mtu == mtu && info.up => return Ok(()),
                Some(_) => {}
            }
            link::set_mtu_up(name, mtu)
        })
    }

    fn attach(&self, mtu: u32) -> Result<Running, Error> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| self.create_err(e.to_string()))?;
        let config = DeviceConfig {
            n_threads: 1,
            use_connected_socket: true,
            use_multi_queue: false,
            // boringtun takes ownership of the fd (and closes it when it exits).
            uapi_fd: theirs.into_raw_fd(),
        };
        let name = self.name.as_str();
        // The TUN queue and UDP sockets belong to the namespace of the thread
        // that opens them; boringtun's event thread inherits it.
        let handle = netns::run_in(self.netns(), || {
            DeviceHandle::new(name, config).map_err(|e| self.create_err(e.to_string()))
        })?;
        let conn = Conn::new(ours, UAPI_TIMEOUT).map_err(|e| self.create_err(e.to_string()))?;
        info!(iface = name, mtu, "embedded boringtun attached");
        Ok(Running {
            conn,
            handle,
            attached_mtu: mtu,
        })
    }

    fn get(&self, running: &mut Running) -> Result<DeviceState, Error> {
        let reply = running
            .conn
            .round_trip("get=1\n")
            .map_err(|e| self.uapi_err("get", e))?;
        uapi::parse_get(&reply, SystemTime::now()).map_err(|e| self.uapi_err("get", e.0))
    }

    fn set(&self, running: &mut Running, request: &str) -> Result<(), Error> {
        let reply = running
            .conn
            .round_trip(request)
            .map_err(|e| self.uapi_err("set", e))?;
        match uapi::parse_errno(&reply) {
            Ok(0) => Ok(()),
            Ok(errno) => Err(self.uapi_err(
                "set",
                format!(
                    "errno {errno} ({})",
                    std::io::Error::from_raw_os_error(errno)
                ),
            )),
            Err(e) => Err(self.uapi_err("set", e.0)),
        }
    }

    fn add(&self, running: &mut Running, peer: &PeerConfig) -> Result<(), Error> {
        self.set(running, &uapi::render_add_peer(peer))
    }
}

impl Cable for EmbeddedCable {
    fn kind(&self) -> BackendKind {
        BackendKind::Embedded
    }

    fn name(&self) -> &InterfaceName {
        &self.name
    }

    fn ensure(&self, spec: &DeviceSpec) -> Result<(), Error> {
        let mut guard = self.lock();
        if let Some(running) = guard.as_mut() {
            // A dead event loop (or a raised MTU) means attaching afresh.
            let alive = self.get(running).is_ok();
            if !alive || spec.mtu > running.attached_mtu {
                warn!(iface = %self.name, alive, "re-attaching embedded boringtun");
                *guard = None;
            }
        }
        self.ensure_tun(spec.mtu)?;
        if guard.is_none() {
            *guard = Some(self.attach(spec.mtu)?);
        }
        let running = guard.as_mut().expect("attached above");
        let state = self.get(running)?;
        let key =
            (state.public_key != Some(spec.private_key.public_key())).then_some(&spec.private_key);
        let port = (state.listen_port != Some(spec.listen_port)).then_some(spec.listen_port);
        if key.is_some() || port.is_some() {
            debug!(iface = %self.name, key = key.is_some(), ?port, "setting device");
            self.set(running, &uapi::render_set_device(key, port))?;
        }
        Ok(())
    }

    fn observe(&self) -> Result<Option<DeviceState>, Error> {
        let mut guard = self.lock();
        if let Some(running) = guard.as_mut() {
            return self.get(running).map(Some);
        }
        drop(guard);
        // Not attached: a leftover TUN carries no WireGuard state at all.
        let exists = netns::run_in(self.netns(), || link::show(self.name.as_str()))?.is_some();
        Ok(exists.then(DeviceState::default))
    }

    fn apply(&self, diff: &PeerDiff) -> Result<(), Error> {
        if diff.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock();
        let running = guard.as_mut().ok_or_else(|| Error::NotUp {
            iface: self.name.to_string(),
        })?;
        let before = self.get(running)?;
        for key in &diff.remove {
            if before.peers.contains_key(key) {
                info!(iface = %self.name, peer = %key, "removing peer");
                self.set(running, &uapi::render_remove_peer(key))?;
            }
        }
        for (key, update) in &diff.update {
            // boringtun cannot modify a peer: remove and add it again, keeping
            // the current (possibly roamed) endpoint unless the update moves it.
            let current: Option<SocketAddr> = before.peers.get(key).and_then(|p| p.config.endpoint);
            let peer = PeerConfig {
                public_key: *key,
                endpoint: update.endpoint.or(current),
                allowed_ips: update.allowed_ips.clone(),
                keepalive: update.keepalive,
            };
            info!(iface = %self.name, peer = %key, endpoint = ?peer.endpoint, "updating peer (remove + add)");
            if before.peers.contains_key(key) {
                self.set(running, &uapi::render_remove_peer(key))?;
            }
            self.add(running, &peer)?;
        }
        for (key, peer) in &diff.add {
            if before.peers.contains_key(key) {
                // Setting an existing peer would panic boringtun's event thread.
                self.set(running, &uapi::render_remove_peer(key))?;
            }
            info!(iface = %self.name, peer = %key, endpoint = ?peer.endpoint, "adding peer");
            self.add(running, peer)?;
        }
        Ok(())
    }

    fn strip_peers(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        match guard.as_mut() {
            Some(running) => self.set(running, &uapi::render_remove_all()),
            None => Ok(()),
        }
    }

    fn teardown(&self) -> Result<(), Error> {
        let running = self.lock().take();
        if let Some(Running { conn, handle, .. }) = running {
            drop(conn);
            drop(handle);
        }
        netns::run_in(self.netns(), || link::delete(self.name.as_str()))
    }
}

impl Drop for EmbeddedCable {
    fn drop(&mut self) {
        // The process is going away or the cable is replaced: stop boringtun
        // but leave the persistent TUN (and its routes) for the next one.
        if let Some(Running { conn, handle, .. }) = self.lock().take() {
            drop(conn);
            drop(handle);
        }
    }
}
