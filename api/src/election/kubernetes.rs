//! The Kubernetes Lease elector (`coordination.k8s.io/v1` Lease), the way
//! client-go's leaderelection works: every `retry_period` a candidate reads
//! the Lease; the holder renews it (`kubectl replace` with the read
//! resourceVersion, so concurrent writers conflict); a standby takes it over
//! once it has seen the holder and renew time unchanged for the lease
//! duration *by its own clock* (no clock comparison across nodes). The
//! holder counts itself active only until `renew_deadline` after its last
//! successful renew was sent, and `renew_deadline < lease_duration`, so it
//! stops before a standby may take over. Resign clears the holder, so a
//! standby takes over on its next read.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Elector;
use crate::error::{Error, Result};

/// How a candidate campaigns for a Kubernetes Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (its node name).
    pub identity: String,
    /// How long a Lease stays valid without renewal (whole seconds on the wire).
    pub lease_duration: Duration,
    /// How long the holder acts as active after its last successful renew.
    pub renew_deadline: Duration,
    /// How often every candidate reads (and the holder renews) the Lease.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults matching the etcd elector's 2 s TTL: renew deadline 1.5 s,
    /// retry period 250 ms.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(250),
        }
    }

    fn duration_secs(&self) -> i32 {
        (self.lease_duration.as_millis().div_ceil(1000) as i32).max(1)
    }
}

type ResignRequest = oneshot::Sender<Result<()>>;

/// A candidate for a Kubernetes Lease. Dropping it stops renewing (as a
/// crash would); [`Elector::resign`] releases the Lease.
#[derive(Debug)]
pub struct KubeLeaseElector {
    active: watch::Receiver<bool>,
    active_tx: Arc<watch::Sender<bool>>,
    holder: watch::Receiver<Option<String>>,
    round_ok: watch::Receiver<bool>,
    resign_tx: mpsc::Sender<ResignRequest>,
    task: JoinHandle<()>,
}

impl Drop for KubeLeaseElector {
    fn drop(&mut self) {
        self.task.abort();
        self.active_tx.send_replace(false);
    }
}

#[async_trait::async_trait]
impl Elector for KubeLeaseElector {
    fn active(&self) -> watch::Receiver<bool> {
        self.active.clone()
    }

    fn holder(&self) -> watch::Receiver<Option<String>> {
        self.holder.clone()
    }

    async fn resign(&self) -> Result<()> {
        self.active_tx.send_replace(false);
        let (tx, rx) = oneshot::channel();
        if self.resign_tx.send(tx).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    fn campaign_ok(&self) -> Option<watch::Receiver<bool>> {
        Some(self.round_ok.clone())
    }
}

impl KubeLeaseElector {
    /// Starts campaigning through `client`.
    pub fn campaign(client: Client, config: LeaseConfig) -> Self {
        let (active_tx, active) = watch::channel(false);
        let active_tx = Arc::new(active_tx);
        let (holder_tx, holder) = watch::channel(None);
        let (round_ok_tx, round_ok) = watch::channel(false);
        let (resign_tx, resign_rx) = mpsc::channel(1);
        let (until_tx, until_rx) = watch::channel(None);
        let guard = tokio::spawn(guard(until_rx, active_tx.clone()));
        let run = Run {
            api: Api::namespaced(client, &config.namespace),
            config,
            holder: holder_tx,
            round_ok: round_ok_tx,
            until: until_tx,
            observed: None,
        };
        let active_for_resign = active_tx.clone();
        let task = tokio::spawn(async move {
            run.run(resign_rx, active_for_resign).await;
            guard.abort();
        });
        Self {
            active,
            active_tx,
            holder,
            round_ok,
            resign_tx,
            task,
        }
    }
}

/// Publishes `active` from "active until" and ends it when that passes.
async fn guard(mut until: watch::Receiver<Option<Instant>>, active: Arc<watch::Sender<bool>>) {
    loop {
        let u = *until.borrow_and_update();
        let now_active = u.is_some_and(|u| Instant::now() < u);
        active.send_if_modified(|a| {
            let changed = *a != now_active;
            *a = now_active;
            changed
        });
        let sleep = async {
            match u.filter(|_| now_active) {
                Some(u) => tokio::time::sleep_until(u).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = until.changed() => if r.is_err() { return },
            _ = sleep => {}
        }
    }
}

struct Run {
    api: Api<Lease>,
    config: LeaseConfig,
    holder: watch::Sender<Option<String>>,
    /// Whether the last round reached the API server.
    round_ok: watch::Sender<bool>,
    until: watch::Sender<Option<Instant>>,
    /// The holder and renew time last seen, and when they were first seen.
    observed: Option<(String, Option<MicroTime>, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn kube_err(op: &str, source: kube::Error) -> Error {
    Error::Kube {
        op: op.to_owned(),
        source,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Run {
    async fn run(
        mut self,
        mut resign_rx: mpsc::Receiver<ResignRequest>,
        active: Arc<watch::Sender<bool>>,
    ) {
        let mut tick = tokio::time::interval(self.config.retry_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = resign_rx.recv() => {
                    self.until.send_replace(None);
                    active.send_replace(false);
                    let r = self.release().await;
                    if let Err(e) = &r {
                        warn!(error = %e, "resign could not release the Lease; it expires on its own");
                    }
                    if let Some(tx) = req {
                        let _ = tx.send(r);
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            // No call may outlive the renew deadline.
            let r =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await;
            self.round_ok.send_if_modified(|ok| {
                let now_ok = matches!(r, Ok(Ok(_)));
                let changed = *ok != now_ok;
                *ok = now_ok;
                changed
            });
            match r {
                Ok(Ok(true)) => {
                    self.until
                        .send_replace(Some(sent + self.config.renew_deadline));
                }
                Ok(Ok(false)) => {
                    self.until.send_replace(None);
                }
                Ok(Err(e)) => warn!(error = %e, "Lease update failed"),
                Err(_) => warn!("Lease update timed out"),
            }
        }
    }

    /// One round; true when this candidate holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let cfg = &self.config;
        let lease = self
            .api
            .get_opt(&cfg.name)
            .await
            .map_err(|e| kube_err("get lease", e))?;
        let Some(mut lease) = lease else {
            let t = now();
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(cfg.duration_secs()),
                    acquire_time: Some(t.clone()),
                    renew_time: Some(t),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &new).await {
                Ok(_) => {
                    info!(lease = %cfg.name, identity = %cfg.identity, "created and acquired the Lease");
                    self.holder.send_replace(Some(cfg.identity.clone()));
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(kube_err("create lease", e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew = spec.renew_time.clone();
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(h, r, _)| *h != holder || *r != renew);
        if changed {
            self.observed = Some((holder.clone(), renew, Instant::now()));
        }
        let observed_at = self.observed.as_ref().map(|o| o.2).expect("set above");
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(cfg.lease_duration);
        let t = now();
        if holder == cfg.identity {
            spec.renew_time = Some(t);
        } else if holder.is_empty() || observed_at.elapsed() >= duration {
            debug!(previous = %holder, "taking over the Lease");
            spec.holder_identity = Some(cfg.identity.clone());
            spec.acquire_time = Some(t.clone());
            spec.renew_time = Some(t);
            spec.lease_duration_seconds = Some(cfg.duration_secs());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        } else {
            self.holder
                .send_replace(Some(holder).filter(|h| !h.is_empty()));
            return Ok(false);
        }
        match self
            .api
            .replace(&cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.holder.send_replace(Some(cfg.identity.clone()));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(kube_err("replace lease", e)),
        }
    }

    /// Clears the holder (as client-go's ReleaseOnCancel does), if it is us.
    async fn release(&mut self) -> Result<()> {
        let cfg = &self.config;
        let Some(mut lease) = self
            .api
            .get_opt(&cfg.name)
            .await
            .map_err(|e| kube_err("get lease", e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return Ok(());
        }
        let t = now();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = Some(t.clone());
        spec.renew_time = Some(t);
        self.api
            .replace(&cfg.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| kube_err("release lease", e))?;
        self.holder.send_replace(None);
        info!(lease = %cfg.name, identity = %cfg.identity, "released the Lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
