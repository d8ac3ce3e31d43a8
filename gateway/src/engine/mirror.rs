//! The active gateway's exchange with the broker (settled decision 1):
//! everything this cluster writes goes to its own store; the mirror copies
//! the cluster's own records up to the broker and every other cluster's
//! records down into the cluster's own store, which is all that route
//! agents, the DNS server and the export agent read. When the broker is
//! away, nothing local changes.

use std::sync::Arc;
use std::time::Duration;

use causeway_api::records::{AnyRecord, ClusterId};
use causeway_api::store::{RecordSet, Store};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a failed write is retried when no event comes.
const RETRY: Duration = Duration::from_secs(2);

/// Keeps `records` (once known, and as they change) in `store`: puts each
/// one that is missing or differs, again whenever someone changes or
/// deletes it, until `stop`.
pub async fn publish(
    store: Arc<dyn Store>,
    mut records: watch::Receiver<Option<Vec<AnyRecord>>>,
    stop: CancellationToken,
) {
    let mut events = store.watch(None, None);
    let mut seen = RecordSet::default();
    let mut tick = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.next() => match ev {
                Some(ev) => seen.apply(ev),
                None => return,
            },
            _ = tick.tick() => {}
            r = records.changed() => if r.is_err() { return },
        }
        let wanted = records.borrow().clone();
        let Some(wanted) = wanted.filter(|_| seen.is_synced()) else {
            continue;
        };
        for record in &wanted {
            if seen.get(&record.key()) != Some(record)
                && let Err(e) = store.put(record).await
            {
                tracing::warn!(key = %record.key(), error = %e, "could not publish; retrying");
            }
        }
    }
}

/// Mirrors between the broker (once connected) and the cluster's own store
/// until `stop`: own records up, other clusters' records down.
pub async fn mirror(
    mut broker: watch::Receiver<Option<Arc<dyn Store>>>,
    local: Arc<dyn Store>,
    own: ClusterId,
    stop: CancellationToken,
) {
    let broker = loop {
        if let Some(b) = broker.borrow_and_update().clone() {
            break b;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = broker.changed() => if r.is_err() { return },
        }
    };
    let mut broker_events = broker.watch(None, None);
    let mut local_events = local.watch(None, None);
    let (mut remote_view, mut local_view) = (RecordSet::default(), RecordSet::default());
    let mut tick = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = broker_events.next() => match ev {
                Some(ev) => remote_view.apply(ev),
                None => return,
            },
            ev = local_events.next() => match ev {
                Some(ev) => local_view.apply(ev),
                None => return,
            },
            _ = tick.tick() => {}
        }
        if remote_view.is_synced() && local_view.is_synced() {
            sync(&*broker, &remote_view, &*local, &local_view, &own).await;
        }
    }
}

/// One pass: copies what differs in each direction. Failures are logged
/// and retried on the next pass.
async fn sync(
    broker: &dyn Store,
    remote: &RecordSet,
    local: &dyn Store,
    here: &RecordSet,
    own: &ClusterId,
) {
    let mine = |r: &AnyRecord| r.owner() == own;
    for record in remote.iter().filter(|r| !mine(r)) {
        if here.get(&record.key()) != Some(record)
            && let Err(e) = local.put(record).await
        {
            tracing::warn!(key = %record.key(), error = %e, "could not mirror a record into the cluster's store");
        }
    }
    for key in here
        .keys()
        .filter(|k| &k.cluster != own && remote.get(k).is_none())
    {
        if let Err(e) = local.delete(key).await {
            tracing::warn!(%key, error = %e, "could not remove a withdrawn record from the cluster's store");
        }
    }
    for record in here.iter().filter(|r| mine(r)) {
        if remote.get(&record.key()) != Some(record)
            && let Err(e) = broker.put(record).await
        {
            tracing::warn!(key = %record.key(), error = %e, "could not publish to the broker");
        }
    }
    for key in remote
        .keys()
        .filter(|k| &k.cluster == own && here.get(k).is_none())
    {
        if let Err(e) = broker.delete(key).await {
            tracing::warn!(%key, error = %e, "could not withdraw a record from the broker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_api::FakeStore;
    use causeway_api::records::Cluster;

    fn cluster(id: &str) -> AnyRecord {
        AnyRecord::Cluster(Cluster {
            id: id.parse().unwrap(),
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec![],
            global_cidr: None,
        })
    }

    async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
        for _ in 0..200 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} never happened");
    }

    #[tokio::test]
    async fn own_records_go_up_and_others_come_down_and_withdrawals_follow() {
        let broker: Arc<dyn Store> = Arc::new(FakeStore::new());
        let local: Arc<dyn Store> = Arc::new(FakeStore::new());
        let (_tx, rx) = watch::channel(Some(broker.clone()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(mirror(
            rx,
            local.clone(),
            "a".parse().unwrap(),
            stop.clone(),
        ));

        local.put(&cluster("a")).await.unwrap();
        broker.put(&cluster("b")).await.unwrap();
        let has = |s: Arc<dyn Store>, id: &'static str| async move {
            s.list(None)
                .await
                .unwrap()
                .records
                .iter()
                .any(|r| r.owner().as_str() == id)
        };
        eventually("a reaches the broker", async || {
            has(broker.clone(), "a").await
        })
        .await;
        eventually("b reaches the local store", async || {
            has(local.clone(), "b").await
        })
        .await;

        broker.delete(&cluster("b").key()).await.unwrap();
        eventually("b leaves the local store", async || {
            !has(local.clone(), "b").await
        })
        .await;
        local.delete(&cluster("a").key()).await.unwrap();
        eventually("a leaves the broker", async || {
            !has(broker.clone(), "a").await
        })
        .await;
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn without_a_broker_nothing_local_changes() {
        let local: Arc<dyn Store> = Arc::new(FakeStore::new());
        local.put(&cluster("b")).await.unwrap();
        let (_tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(mirror(
            rx,
            local.clone(),
            "a".parse().unwrap(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(local.list(None).await.unwrap().records, vec![cluster("b")]);
        stop.cancel();
        task.await.unwrap();
    }
}
