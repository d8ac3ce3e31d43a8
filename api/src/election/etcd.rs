//! The etcd lease elector.
//!
//! Each candidate holds a lease (`etcdctl lease grant <ttl>`) and tries to
//! create the election key with it in one transaction (`create_revision ==
//! 0`); the key's holder is active. Others watch the key and try again when
//! it is deleted, which happens when the holder's lease expires or is
//! revoked. A separate task sends keep-alives six times per TTL; the holder
//! counts itself active only until a quarter TTL before the lease could
//! expire, measured from when the last confirmed keep-alive was *sent*, so
//! it stops acting before any standby can take over.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{ElectionConfig, Elector};
use crate::error::{Error, Result};
use crate::store::KeyLayout;
use crate::store::etcd_call as call;

/// What the keep-alive task knows about the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    /// Alive at least until this instant.
    Valid(Instant),
    /// Expired or revoked: a new lease is needed.
    Lost,
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type ResignRequest = oneshot::Sender<Result<()>>;

/// A candidate in an etcd lease election. Dropping it stops its keep-alives
/// without releasing the lease (as a crash would); call
/// [`Elector::resign`] for a clean stop.
pub struct EtcdElector {
    active: watch::Receiver<bool>,
    active_tx: Arc<watch::Sender<bool>>,
    holder: watch::Receiver<Option<String>>,
    resign_tx: mpsc::Sender<ResignRequest>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EtcdElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElector")
            .field("active", &*self.active.borrow())
            .finish()
    }
}

impl Drop for EtcdElector {
    fn drop(&mut self) {
        self.task.abort();
        self.active_tx.send_replace(false);
    }
}

#[async_trait::async_trait]
impl Elector for EtcdElector {
    fn active(&self) -> watch::Receiver<bool> {
        self.active.clone()
    }

    fn holder(&self) -> watch::Receiver<Option<String>> {
        self.holder.clone()
    }

    async fn resign(&self) -> Result<()> {
        // Whatever happens next, this candidate no longer acts as active.
        self.active_tx.send_replace(false);
        let (tx, rx) = oneshot::channel();
        if self.resign_tx.send(tx).await.is_err() {
            return Ok(()); // already stopped
        }
        rx.await.unwrap_or(Ok(()))
    }
}

impl EtcdElector {
    /// Starts campaigning with `client` for `config.election` under `layout`.
    /// Returns once the first lease is held (re-attached from the lease
    /// file when that lease is still alive).
    pub async fn campaign(
        client: Client,
        layout: &KeyLayout,
        config: ElectionConfig,
    ) -> Result<Self> {
        let (active_tx, active) = watch::channel(false);
        let active_tx = Arc::new(active_tx);
        let (holder_tx, holder) = watch::channel(None);
        let (resign_tx, resign_rx) = mpsc::channel(1);
        let mut c = Campaign {
            client,
            key: layout.election(&config.election),
            timeout: config.ttl.max(Duration::from_millis(500)),
            config,
            active: active_tx.clone(),
            holder: holder_tx,
            lease: 0,
            lease_state: None,
            is_holder: false,
            keeper: None,
        };
        c.obtain_lease(true).await?;
        let task = tokio::spawn(c.run(resign_rx));
        Ok(Self {
            active,
            active_tx,
            holder,
            resign_tx,
            task,
        })
    }
}

struct Campaign {
    client: Client,
    key: String,
    timeout: Duration,
    config: ElectionConfig,
    active: Arc<watch::Sender<bool>>,
    holder: watch::Sender<Option<String>>,
    lease: i64,
    lease_state: Option<watch::Receiver<LeaseState>>,
    is_holder: bool,
    /// The keep-alive task and the deadline guard of the current lease.
    keeper: Option<(AbortOnDrop, AbortOnDrop)>,
}

impl Campaign {
    fn ttl_secs(&self) -> i64 {
        (self.config.ttl.as_millis().div_ceil(1000) as i64).max(1)
    }

    /// The instant this candidate must stop acting as active, if it holds a live lease.
    fn deadline(&self) -> Option<Instant> {
        match self.lease_state.as_ref().map(|s| *s.borrow()) {
            Some(LeaseState::Valid(until)) => Some(until - self.config.safety_margin()),
            _ => None,
        }
    }

    fn publish(&self) {
        let active = self.is_holder && self.deadline().is_some_and(|d| Instant::now() < d);
        self.active.send_if_modified(|a| {
            if *a != active {
                info!(election = %self.config.election, candidate = %self.config.candidate, active, "election status changed");
                *a = active;
                true
            } else {
                false
            }
        });
    }

    /// Re-attaches the lease from the lease file when allowed and alive,
    /// else grants a new one; then starts keep-alives.
    async fn obtain_lease(&mut self, reattach: bool) -> Result<()> {
        self.keeper = None;
        let sent = Instant::now();
        let mut attached = None;
        if reattach
            && let Some(path) = &self.config.lease_file
            && let Some(id) = read_lease_file(path)
        {
            let mut c = self.client.clone();
            match call(
                self.timeout,
                || format!("lease timetolive {id:x}"),
                c.lease_time_to_live(id, None),
            )
            .await
            {
                // Whole seconds: a lease with under a second left reads 0.
                // Renew it once before trusting it (the opening request of
                // a keep-alive stream is itself a keep-alive).
                Ok(r) if r.ttl() >= 0 => match renewed_ttl(&self.client, id, self.timeout).await {
                    ttl if ttl > 0 => {
                        info!(
                            lease = format!("{id:x}"),
                            remaining_s = ttl,
                            "re-attached to the lease kept in the lease file"
                        );
                        attached = Some((id, ttl));
                    }
                    _ => debug!(
                        lease = format!("{id:x}"),
                        "lease in the lease file has expired"
                    ),
                },
                Ok(_) => debug!(
                    lease = format!("{id:x}"),
                    "lease in the lease file has expired"
                ),
                Err(e) => return Err(e),
            }
        }
        let (id, ttl) = match attached {
            Some(a) => a,
            None => {
                let mut c = self.client.clone();
                let r = call(
                    self.timeout,
                    || "lease grant".to_owned(),
                    c.lease_grant(self.ttl_secs(), None),
                )
                .await?;
                if let Some(path) = &self.config.lease_file {
                    write_lease_file(path, r.id())?;
                }
                (r.id(), r.ttl())
            }
        };
        self.lease = id;
        let until = sent + Duration::from_secs(ttl.max(0) as u64);
        let (tx, rx) = watch::channel(LeaseState::Valid(until));
        self.keeper = Some((
            AbortOnDrop(tokio::spawn(keep_alive_loop(
                self.client.clone(),
                id,
                self.config.keep_alive_interval(),
                tx,
            ))),
            AbortOnDrop(tokio::spawn(deadline_guard(
                rx.clone(),
                self.active.clone(),
                self.config.safety_margin(),
            ))),
        ));
        self.lease_state = Some(rx);
        Ok(())
    }

    /// One transaction: create the key with our lease if nobody holds it.
    /// Returns the revision to watch the key from.
    async fn try_acquire(&mut self) -> Result<i64> {
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.config.candidate.as_str(),
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut c = self.client.clone();
        let r = call(self.timeout, || format!("txn acquire {key}"), c.txn(txn)).await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or_default();
        if r.succeeded() {
            self.is_holder = true;
            self.holder
                .send_replace(Some(self.config.candidate.clone()));
            return Ok(rev);
        }
        let kv = r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        match kv {
            Some(kv) => {
                self.is_holder = kv.lease() == self.lease;
                self.holder
                    .send_replace(kv.value_str().ok().map(str::to_owned));
            }
            None => self.is_holder = false,
        }
        Ok(rev)
    }

    async fn run(mut self, mut resign_rx: mpsc::Receiver<ResignRequest>) {
        let retry = self.config.keep_alive_interval();
        'campaign: loop {
            if self.lease_state.as_ref().map(|s| *s.borrow()) == Some(LeaseState::Lost) {
                self.is_holder = false;
                self.publish();
                if let Err(e) = self.obtain_lease(false).await {
                    warn!(error = %e, "cannot grant a lease; retrying");
                    if self.pause(retry, &mut resign_rx).await {
                        return;
                    }
                    continue;
                }
            }
            let rev = match self.try_acquire().await {
                Ok(rev) => rev,
                Err(e) => {
                    warn!(error = %e, "election transaction failed; retrying");
                    self.publish();
                    if self.pause(retry, &mut resign_rx).await {
                        return;
                    }
                    continue;
                }
            };
            self.publish();
            let mut c = self.client.clone();
            let opts = WatchOptions::new().with_start_revision(rev + 1);
            let mut stream = match call(
                self.timeout,
                || format!("watch {}", self.key),
                c.watch(self.key.as_str(), Some(opts)),
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot watch the election key; retrying");
                    if self.pause(retry, &mut resign_rx).await {
                        return;
                    }
                    continue;
                }
            };
            let mut lease_state = self.lease_state.clone().expect("a lease is held");
            loop {
                let deadline = self.deadline().filter(|_| *self.active.borrow());
                tokio::select! {
                    req = resign_rx.recv() => {
                        self.resign(req).await;
                        return;
                    }
                    changed = lease_state.changed() => {
                        if changed.is_err() || *lease_state.borrow() == LeaseState::Lost {
                            warn!(lease = format!("{:x}", self.lease), "lease lost");
                            // Marked lost for the campaign loop even if the keeper died.
                            self.lease_state = Some(watch::channel(LeaseState::Lost).1);
                            continue 'campaign;
                        }
                        self.publish();
                    }
                    _ = sleep_until_opt(deadline) => {
                        warn!("keep-alives not confirmed in time; no longer active");
                        self.publish();
                    }
                    msg = stream.message() => {
                        match msg {
                            Ok(Some(m)) if m.canceled() => continue 'campaign,
                            Ok(Some(m)) => {
                                let deleted = m.events().iter().any(|e| e.event_type() == EventType::Delete);
                                if deleted {
                                    self.is_holder = false;
                                    self.holder.send_replace(None);
                                    self.publish();
                                    continue 'campaign;
                                }
                                if let Some(kv) = m.events().iter().filter_map(|e| e.kv()).next_back() {
                                    self.is_holder = kv.lease() == self.lease;
                                    self.holder.send_replace(kv.value_str().ok().map(str::to_owned));
                                    self.publish();
                                }
                            }
                            Ok(None) | Err(_) => {
                                if self.pause(retry, &mut resign_rx).await {
                                    return;
                                }
                                continue 'campaign;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Waits `d` (publishing status as the lease ages); true when a resign
    /// arrived and was handled.
    async fn pause(&mut self, d: Duration, resign_rx: &mut mpsc::Receiver<ResignRequest>) -> bool {
        let end = Instant::now() + d;
        loop {
            let deadline = self.deadline().filter(|_| *self.active.borrow());
            tokio::select! {
                req = resign_rx.recv() => {
                    self.resign(req).await;
                    return true;
                }
                _ = tokio::time::sleep_until(end) => {
                    self.publish();
                    return false;
                }
                _ = sleep_until_opt(deadline) => self.publish(),
            }
        }
    }

    async fn resign(&mut self, req: Option<ResignRequest>) {
        self.is_holder = false;
        self.active.send_replace(false);
        self.keeper = None;
        let mut c = self.client.clone();
        let lease = self.lease;
        let r = call(
            self.timeout,
            || format!("lease revoke {lease:x}"),
            c.lease_revoke(lease),
        )
        .await
        .map(|_| ());
        if let Some(path) = &self.config.lease_file {
            let _ = std::fs::remove_file(path);
        }
        match &r {
            Ok(()) => info!(candidate = %self.config.candidate, "resigned"),
            Err(e) => {
                warn!(error = %e, "resign could not revoke the lease; it expires within its TTL")
            }
        }
        if let Some(tx) = req {
            let _ = tx.send(r);
        }
    }
}

/// Ends active status when the lease's deadline passes, whatever the
/// campaign loop is waiting for (a slow etcd call must not keep a candidate
/// active past it).
async fn deadline_guard(
    mut lease: watch::Receiver<LeaseState>,
    active: Arc<watch::Sender<bool>>,
    margin: Duration,
) {
    loop {
        let state = *lease.borrow_and_update();
        let deadline = match state {
            LeaseState::Valid(until) => Some(until - margin),
            LeaseState::Lost => None,
        };
        if deadline.is_none_or(|d| Instant::now() >= d) && *active.borrow() {
            warn!("lease not confirmed in time; no longer active");
            active.send_replace(false);
        }
        tokio::select! {
            r = lease.changed() => if r.is_err() { return },
            _ = sleep_until_opt(deadline.filter(|d| Instant::now() < *d)) => {}
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends a keep-alive every `interval`; publishes how long the lease is
/// known to live (from when each confirmed keep-alive was sent) or that it is
/// lost. Ends when the lease is lost.
/// Renews lease `id` once and returns the TTL it then has (0 when it is gone).
async fn renewed_ttl(client: &Client, id: i64, timeout: Duration) -> i64 {
    let mut c = client.clone();
    let renew = async {
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
        keeper.keep_alive().await?;
        // The reply to the opening request, or to ours: either carries the TTL.
        Ok::<_, etcd_client::Error>(stream.message().await?.map(|r| r.ttl()).unwrap_or(0))
    };
    match tokio::time::timeout(timeout, renew).await {
        Ok(Ok(ttl)) => ttl,
        _ => 0,
    }
}

async fn keep_alive_loop(
    client: Client,
    lease: i64,
    interval: Duration,
    state: watch::Sender<LeaseState>,
) {
    let wait = interval * 2;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let ttl = match stream.as_mut() {
            None => {
                let mut c = client.clone();
                match tokio::time::timeout(wait, c.lease_keep_alive(lease)).await {
                    Ok(Ok((keeper, s))) => {
                        stream = Some((keeper, s));
                        // The opening request was itself a keep-alive; its
                        // TTL is not exposed, ask for the remaining time next tick.
                        None
                    }
                    Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) => {
                        warn!(lease = format!("{lease:x}"), error = %e, "lease gone");
                        state.send_replace(LeaseState::Lost);
                        return;
                    }
                    Ok(Err(e)) => {
                        debug!(error = %e, "keep-alive stream failed");
                        None
                    }
                    Err(_) => None,
                }
            }
            Some((keeper, s)) => {
                let round = async {
                    keeper.keep_alive().await?;
                    s.message().await
                };
                match tokio::time::timeout(wait, round).await {
                    Ok(Ok(Some(r))) => Some(r.ttl()),
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                        debug!("keep-alive not answered; reopening the stream");
                        stream = None;
                        None
                    }
                }
            }
        };
        match ttl {
            Some(t) if t <= 0 => {
                warn!(lease = format!("{lease:x}"), "lease expired");
                state.send_replace(LeaseState::Lost);
                return;
            }
            Some(t) => {
                state.send_replace(LeaseState::Valid(sent + Duration::from_secs(t as u64)));
            }
            None => {}
        }
    }
}

fn read_lease_file(path: &Path) -> Option<i64> {
    let s = std::fs::read_to_string(path).ok()?;
    i64::from_str_radix(s.trim(), 16).ok()
}

fn write_lease_file(path: &Path, id: i64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id:x}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| Error::LeaseFile {
            path: path.to_owned(),
            source,
        })
}
