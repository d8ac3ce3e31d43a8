//! Health of every tunnel: a UDP responder on the gateway's tunnel address,
//! and a prober that sends one probe per second per peer to the peer's
//! health-check address from the local tunnel address (Settled decision 8).
//!
//! Data flow: the prober reads the peers to probe from a `watch` channel
//! (peer id -> health-check address). Each reply gives an RTT sample
//! ([`stats::RttWindow`]) and drives the peer's [`machine::HealthMachine`];
//! each probe that goes unanswered within its timeout counts as lost. A
//! [`StatusChange`] goes out on a tokio channel only when a peer's state
//! changes (Settled decision 9: the store gets states; RTT is for metrics,
//! read from [`HealthView::snapshot`]).
//!
//! Packets: [`packet`] (magic, sequence number, send timestamp); anything
//! else that arrives is ignored.

pub mod machine;
pub mod packet;
pub mod stats;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use machine::{DEFAULT_LOST_THRESHOLD, HealthMachine, HealthState, Status, Transition};
pub use packet::{Kind, Packet};
pub use stats::{RttStats, RttWindow};

/// Default UDP port of the health responder.
pub const DEFAULT_PORT: u16 = 51_830;
/// Default time between two probes to one peer.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default number of RTT samples the statistics cover.
pub const DEFAULT_WINDOW: usize = 60;

/// Errors of the health responder and prober.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The UDP socket could not be made or bound.
    #[error("cannot bind the health-check socket to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A UDP socket bound to `addr` with `IP_FREEBIND`, so the tunnel address
/// need not be configured yet when the gateway starts. Needs a tokio runtime.
fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, HealthError> {
    let fail = |source: std::io::Error| HealthError::Bind { addr, source };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail(e.into()))?;
    setsockopt(&fd, sockopt::IpFreebind, &true).map_err(|e| fail(e.into()))?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| fail(e.into()))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(fail)
}

/// Echoes probes back to whoever sent them.
#[derive(Debug)]
pub struct Responder {
    socket: UdpSocket,
}

impl Responder {
    /// Binds the tunnel address and port. Needs a tokio runtime.
    pub fn bind(addr: SocketAddr) -> Result<Self, HealthError> {
        Ok(Self {
            socket: bind_udp(addr)?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Answers probes until `cancel` fires. Anything but a probe is ignored.
    #[tracing::instrument(skip_all, fields(addr = ?self.socket.local_addr().ok()))]
    pub async fn run(self, cancel: CancellationToken) {
        let mut buf = [0u8; 64];
        loop {
            let (n, from) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        // ICMP errors of earlier sends surface here; keep serving.
                        tracing::debug!(error = %e, "health responder receive failed");
                        continue;
                    }
                },
            };
            let Some(p) = Packet::decode(&buf[..n]).filter(|p| p.kind == Kind::Probe) else {
                tracing::trace!(%from, len = n, "ignored a packet that is not a probe");
                continue;
            };
            if let Err(e) = self.socket.send_to(&p.reply().encode(), from).await {
                tracing::debug!(%from, error = %e, "health reply not sent");
            }
        }
    }
}

/// How the prober works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProberConfig {
    /// Source address of the probes: this gateway's tunnel address.
    pub local: IpAddr,
    /// Time between two probes to one peer.
    pub interval: Duration,
    /// How long a probe may go unanswered before it counts as lost.
    pub timeout: Duration,
    /// Consecutive lost probes that turn a peer to `error`.
    pub lost_threshold: u32,
    /// RTT samples the statistics cover.
    pub window: usize,
}

impl ProberConfig {
    /// The defaults: one probe a second, lost after a second, `error` after 3 lost.
    pub fn new(local: IpAddr) -> Self {
        Self {
            local,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_INTERVAL,
            lost_threshold: DEFAULT_LOST_THRESHOLD,
            window: DEFAULT_WINDOW,
        }
    }
}

/// What is known of one peer's health (for metrics and `show connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    /// Where probes go.
    pub target: SocketAddr,
    /// The current status.
    pub status: Status,
    /// RTT statistics over the window, once a reply came.
    pub rtt: Option<RttStats>,
    /// Probes sent.
    pub sent: u64,
    /// Replies received in time.
    pub received: u64,
    /// Probes lost.
    pub lost: u64,
}

/// A peer's state changed (or the peer was added: `previous` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange<K> {
    /// The peer.
    pub peer: K,
    /// The state before, `None` for a new peer.
    pub previous: Option<HealthState>,
    /// The new status.
    pub status: Status,
    /// RTT statistics at the time of the change.
    pub rtt: Option<RttStats>,
}

impl From<RttStats> for causeway_api::records::RttStats {
    fn from(r: RttStats) -> Self {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Self {
            last_us: us(r.last),
            min_us: us(r.min),
            mean_us: us(r.mean),
            max_us: us(r.max),
        }
    }
}

impl From<HealthState> for causeway_api::records::ConnectionState {
    fn from(s: HealthState) -> Self {
        match s {
            HealthState::Connecting => Self::Connecting,
            HealthState::Connected => Self::Connected,
            HealthState::Error => Self::Error,
        }
    }
}

impl StatusChange<causeway_api::ClusterId> {
    /// The connection status record `reporter`'s gateway writes for this
    /// change (the reason only when not connected; RTT as of the change).
    pub fn to_record(&self, reporter: &causeway_api::ClusterId) -> causeway_api::ConnectionStatus {
        let since_ms = self
            .status
            .since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        causeway_api::ConnectionStatus {
            cluster: reporter.clone(),
            peer: self.peer.clone(),
            state: self.status.state.into(),
            reason: (self.status.state != HealthState::Connected)
                .then(|| self.status.reason.clone()),
            rtt: self.rtt.map(Into::into),
            since_ms,
        }
    }
}

/// A shared, read-only view of every peer's health.
#[derive(Debug)]
pub struct HealthView<K> {
    inner: Arc<Mutex<BTreeMap<K, PeerHealth>>>,
}

impl<K> Clone for HealthView<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Ord + Clone> HealthView<K> {
    fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Every peer's health now.
    pub fn snapshot(&self) -> BTreeMap<K, PeerHealth> {
        self.lock().clone()
    }

    /// One peer's health now.
    pub fn get(&self, peer: &K) -> Option<PeerHealth> {
        self.lock().get(peer).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<K, PeerHealth>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Probes in flight to one peer, and what they told.
struct PeerProbe {
    target: SocketAddr,
    next_seq: u64,
    /// seq -> (sent at, timestamp in the packet).
    in_flight: BTreeMap<u64, (Instant, u64)>,
    machine: HealthMachine,
    rtt: RttWindow,
    sent: u64,
    received: u64,
    lost: u64,
}

impl PeerProbe {
    fn health(&self) -> PeerHealth {
        PeerHealth {
            target: self.target,
            status: self.machine.status().clone(),
            rtt: self.rtt.stats(),
            sent: self.sent,
            received: self.received,
            lost: self.lost,
        }
    }
}

/// Sends probes to every peer and tracks their health.
#[derive(Debug)]
pub struct Prober<K> {
    config: ProberConfig,
    socket: UdpSocket,
    view: HealthView<K>,
}

impl<K> Prober<K>
where
    K: Ord + Clone + fmt::Display + Send + Sync + 'static,
{
    /// Binds a socket on the tunnel address (any port). Needs a tokio runtime.
    pub fn bind(config: ProberConfig) -> Result<Self, HealthError> {
        let socket = bind_udp(SocketAddr::new(config.local, 0))?;
        Ok(Self {
            config,
            socket,
            view: HealthView::new(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// A view of every peer's health that stays valid while the prober runs.
    pub fn view(&self) -> HealthView<K> {
        self.view.clone()
    }

    /// Probes the peers `peers` holds until `cancel` fires or the `peers`
    /// sender is dropped. A new peer starts `connecting` (announced on
    /// `changes`); a removed peer is forgotten; a peer whose address moved
    /// keeps its state but not its probes in flight.
    #[tracing::instrument(skip_all, fields(local = %self.config.local))]
    pub async fn run(
        self,
        mut peers: watch::Receiver<BTreeMap<K, SocketAddr>>,
        changes: mpsc::UnboundedSender<StatusChange<K>>,
        cancel: CancellationToken,
    ) {
        let epoch = Instant::now();
        let mut probes: BTreeMap<K, PeerProbe> = BTreeMap::new();
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = [0u8; 64];
        let wanted = peers.borrow_and_update().clone();
        self.sync_peers(&mut probes, &wanted, &changes);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = peers.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let wanted = peers.borrow_and_update().clone();
                    self.sync_peers(&mut probes, &wanted, &changes);
                }
                _ = tick.tick() => {
                    self.expire(&mut probes, &changes);
                    for (peer, probe) in &mut probes {
                        let seq = probe.next_seq;
                        probe.next_seq += 1;
                        let sent_at = Instant::now();
                        let sent_ns = sent_at.duration_since(epoch).as_nanos() as u64;
                        let p = Packet { kind: Kind::Probe, seq, sent_ns };
                        if let Err(e) = self.socket.send_to(&p.encode(), probe.target).await {
                            // Counted as lost when its timeout passes.
                            tracing::debug!(%peer, target = %probe.target, error = %e, "probe not sent");
                        }
                        probe.in_flight.insert(seq, (sent_at, sent_ns));
                        probe.sent += 1;
                    }
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let now_ns = epoch.elapsed().as_nanos() as u64;
                        self.on_packet(&mut probes, &buf[..n], from, now_ns, &changes);
                    }
                    Err(e) => tracing::debug!(error = %e, "probe receive failed"),
                },
            }
            self.publish(&probes);
        }
    }

    fn sync_peers(
        &self,
        probes: &mut BTreeMap<K, PeerProbe>,
        wanted: &BTreeMap<K, SocketAddr>,
        changes: &mpsc::UnboundedSender<StatusChange<K>>,
    ) {
        probes.retain(|peer, _| wanted.contains_key(peer));
        for (peer, target) in wanted {
            match probes.get_mut(peer) {
                Some(probe) if probe.target == *target => {}
                Some(probe) => {
                    tracing::info!(%peer, from = %probe.target, to = %target, "health-check address moved");
                    probe.target = *target;
                    probe.in_flight.clear();
                }
                None => {
                    let machine = HealthMachine::new(self.config.lost_threshold, SystemTime::now());
                    let _ = changes.send(StatusChange {
                        peer: peer.clone(),
                        previous: None,
                        status: machine.status().clone(),
                        rtt: None,
                    });
                    probes.insert(
                        peer.clone(),
                        PeerProbe {
                            target: *target,
                            next_seq: 0,
                            in_flight: BTreeMap::new(),
                            machine,
                            rtt: RttWindow::new(self.config.window),
                            sent: 0,
                            received: 0,
                            lost: 0,
                        },
                    );
                }
            }
        }
        self.publish(probes);
    }

    /// Counts probes past their timeout as lost.
    fn expire(
        &self,
        probes: &mut BTreeMap<K, PeerProbe>,
        changes: &mpsc::UnboundedSender<StatusChange<K>>,
    ) {
        let now = Instant::now();
        for (peer, probe) in probes.iter_mut() {
            let expired: Vec<u64> = probe
                .in_flight
                .iter()
                .filter(|(_, (sent_at, _))| now.duration_since(*sent_at) >= self.config.timeout)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in expired {
                probe.in_flight.remove(&seq);
                probe.lost += 1;
                if let Some(t) = probe.machine.on_lost(SystemTime::now()) {
                    tracing::warn!(%peer, target = %probe.target, reason = %t.to.reason, "peer health: {}", t.to.state);
                    let _ = changes.send(StatusChange {
                        peer: peer.clone(),
                        previous: Some(t.from),
                        status: t.to,
                        rtt: probe.rtt.stats(),
                    });
                }
            }
        }
    }

    fn on_packet(
        &self,
        probes: &mut BTreeMap<K, PeerProbe>,
        bytes: &[u8],
        from: SocketAddr,
        now_ns: u64,
        changes: &mpsc::UnboundedSender<StatusChange<K>>,
    ) {
        let Some(reply) = Packet::decode(bytes).filter(|p| p.kind == Kind::Reply) else {
            tracing::trace!(%from, len = bytes.len(), "ignored a packet that is not a probe reply");
            return;
        };
        let Some((peer, probe)) = probes.iter_mut().find(|(_, p)| p.target == from) else {
            tracing::trace!(%from, "ignored a reply from no known peer");
            return;
        };
        // Only a reply to a probe still in flight, carrying the timestamp we
        // sent, counts: late, duplicated or forged replies do not.
        match probe.in_flight.get(&reply.seq) {
            Some((_, sent_ns)) if *sent_ns == reply.sent_ns => {}
            _ => return,
        }
        probe.in_flight.remove(&reply.seq);
        probe.received += 1;
        probe
            .rtt
            .push(Duration::from_nanos(now_ns.saturating_sub(reply.sent_ns)));
        if let Some(t) = probe.machine.on_reply(SystemTime::now()) {
            tracing::info!(%peer, target = %probe.target, reason = %t.to.reason, "peer health: {}", t.to.state);
            let _ = changes.send(StatusChange {
                peer: peer.clone(),
                previous: Some(t.from),
                status: t.to,
                rtt: probe.rtt.stats(),
            });
        }
    }

    fn publish(&self, probes: &BTreeMap<K, PeerProbe>) {
        let mut view = self.view.lock();
        view.clear();
        view.extend(probes.iter().map(|(k, p)| (k.clone(), p.health())));
    }
}

#[cfg(test)]
mod tests;
