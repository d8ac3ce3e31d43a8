//! The in-memory store for unit tests: revisions, history for resume,
//! compaction, per-cluster write restriction, and an outage switch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;

use super::{Listing, Revision, Store, WatchEvent};
use crate::error::{Error, Result};
use crate::records::{AnyRecord, ClusterId, Kind, RecordKey};

#[derive(Debug)]
struct State {
    records: BTreeMap<RecordKey, AnyRecord>,
    revision: Revision,
    /// Every change after `compacted`, oldest first.
    history: Vec<WatchEvent>,
    compacted: Revision,
    unavailable: bool,
    events: broadcast::Sender<WatchEvent>,
}

/// An in-memory [`Store`]. Clones share the same data.
#[derive(Debug, Clone)]
pub struct FakeStore {
    state: Arc<Mutex<State>>,
    writer: Option<ClusterId>,
}

impl Default for FakeStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeStore {
    /// An empty store with full access.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            state: Arc::new(Mutex::new(State {
                records: BTreeMap::new(),
                revision: 1,
                history: Vec::new(),
                compacted: 0,
                unavailable: false,
                events,
            })),
            writer: None,
        }
    }

    /// A handle on the same data that may write only `cluster`'s records,
    /// as that cluster's broker credentials may.
    pub fn restricted_to(&self, cluster: ClusterId) -> Self {
        Self {
            state: self.state.clone(),
            writer: Some(cluster),
        }
    }

    /// Makes put, delete and list fail with [`Error::Unavailable`] until
    /// reset (open watches stay open and deliver nothing new meanwhile).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Forgets history up to the current revision, as etcd compaction does.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted = s.revision;
        s.history.clear();
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_write(&self, key: &RecordKey) -> Result<()> {
        match &self.writer {
            Some(w) if *w != key.cluster => Err(Error::PermissionDenied { key: key.clone() }),
            _ => Ok(()),
        }
    }

    fn commit(s: &mut State, ev_for: impl FnOnce(Revision) -> WatchEvent) -> Revision {
        s.revision += 1;
        let ev = ev_for(s.revision);
        s.history.push(ev.clone());
        let _ = s.events.send(ev);
        s.revision
    }
}

fn matches(kind: Option<Kind>, ev: &WatchEvent) -> bool {
    match (kind, ev) {
        (None, _) | (_, WatchEvent::Snapshot { .. }) => true,
        (Some(k), WatchEvent::Put { record, .. }) => record.kind() == k,
        (Some(k), WatchEvent::Delete { key, .. }) => key.kind == k,
    }
}

#[async_trait::async_trait]
impl Store for FakeStore {
    async fn put(&self, record: &AnyRecord) -> Result<Revision> {
        let key = record.key();
        self.check_write(&key)?;
        record.validate()?;
        let mut s = self.lock();
        if s.unavailable {
            return Err(Error::Unavailable);
        }
        s.records.insert(key, record.clone());
        let record = record.clone();
        Ok(Self::commit(&mut s, |revision| WatchEvent::Put {
            record,
            revision,
        }))
    }

    async fn delete(&self, key: &RecordKey) -> Result<Revision> {
        self.check_write(key)?;
        let mut s = self.lock();
        if s.unavailable {
            return Err(Error::Unavailable);
        }
        if s.records.remove(key).is_none() {
            return Ok(s.revision);
        }
        let key = key.clone();
        Ok(Self::commit(&mut s, |revision| WatchEvent::Delete {
            key,
            revision,
        }))
    }

    async fn list(&self, kind: Option<Kind>) -> Result<Listing> {
        let s = self.lock();
        if s.unavailable {
            return Err(Error::Unavailable);
        }
        Ok(Listing {
            records: s
                .records
                .values()
                .filter(|r| kind.is_none_or(|k| r.kind() == k))
                .cloned()
                .collect(),
            revision: s.revision,
        })
    }

    fn watch(
        &self,
        kind: Option<Kind>,
        resume_from: Option<Revision>,
    ) -> BoxStream<'static, WatchEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let mut from = resume_from;
            loop {
                // Start (or restart after lagging) under the lock, so no
                // event falls between the catch-up and the subscription.
                let (catch_up, mut sub) = {
                    let s = this.lock();
                    let sub = s.events.subscribe();
                    let catch_up: Vec<WatchEvent> = match from {
                        Some(rev) if rev >= s.compacted => s
                            .history
                            .iter()
                            .filter(|e| e.revision() > rev)
                            .cloned()
                            .collect(),
                        _ => vec![WatchEvent::Snapshot {
                            records: s
                                .records
                                .values()
                                .filter(|r| kind.is_none_or(|k| r.kind() == k))
                                .cloned()
                                .collect(),
                            revision: s.revision,
                        }],
                    };
                    (catch_up, sub)
                };
                for ev in catch_up {
                    from = Some(ev.revision());
                    if matches(kind, &ev) && tx.send(ev).await.is_err() {
                        return;
                    }
                }
                loop {
                    let ev = tokio::select! {
                        _ = tx.closed() => return,
                        ev = sub.recv() => ev,
                    };
                    match ev {
                        Ok(ev) => {
                            if from.is_some_and(|f| ev.revision() <= f) {
                                continue;
                            }
                            from = Some(ev.revision());
                            if matches(kind, &ev) && tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::records::tests::{sample_endpoint, sample_import};
    use crate::store::RecordSet;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    async fn next(s: &mut BoxStream<'static, WatchEvent>) -> WatchEvent {
        tokio::time::timeout(std::time::Duration::from_secs(2), s.next())
            .await
            .expect("event in time")
            .expect("stream open")
    }

    #[tokio::test]
    async fn list_then_watch_then_resume_then_compaction() {
        let store = FakeStore::new();
        store.put(&sample_endpoint("a").into()).await.unwrap();
        let mut w = store.watch(Some(Kind::Endpoint), None);
        let WatchEvent::Snapshot { records, .. } = next(&mut w).await else {
            panic!("snapshot first")
        };
        assert_eq!(records.len(), 1);
        // Another kind is filtered out.
        store
            .put(&sample_import("a", "ns", "svc").into())
            .await
            .unwrap();
        let rev = store.put(&sample_endpoint("b").into()).await.unwrap();
        assert_eq!(next(&mut w).await.revision(), rev);
        drop(w);

        // Changes while disconnected are replayed on resume.
        let key = AnyRecord::from(sample_endpoint("a")).key();
        let del = store.delete(&key).await.unwrap();
        let mut w = store.watch(Some(Kind::Endpoint), Some(rev));
        assert_eq!(
            next(&mut w).await,
            WatchEvent::Delete { key, revision: del }
        );
        drop(w);

        // A compacted revision forces a snapshot.
        store.put(&sample_endpoint("c").into()).await.unwrap();
        store.compact();
        let mut w = store.watch(Some(Kind::Endpoint), Some(rev));
        let mut set = RecordSet::default();
        set.apply(next(&mut w).await);
        assert!(set.is_synced());
        let names: Vec<_> = set.keys().map(|k| k.cluster.to_string()).collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[tokio::test]
    async fn reflect_publishes_the_folded_state() {
        let store = FakeStore::new();
        store.put(&sample_endpoint("a").into()).await.unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut rx = crate::store::reflect(
            std::sync::Arc::new(store.clone()),
            Some(Kind::Endpoint),
            cancel.clone(),
        );
        let wait = |rx: &mut tokio::sync::watch::Receiver<std::sync::Arc<RecordSet>>, n: usize| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    rx.wait_for(|s| s.is_synced() && s.len() == n),
                )
                .await
                .expect("state in time")
                .unwrap()
                .clone()
            }
        };
        wait(&mut rx, 1).await;
        store.put(&sample_endpoint("b").into()).await.unwrap();
        let s = wait(&mut rx, 2).await;
        let ids: Vec<String> = s
            .typed::<crate::records::Endpoint>()
            .map(|e| e.cluster.to_string())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        cancel.cancel();
    }

    #[tokio::test]
    async fn restricted_handle_writes_only_its_own() {
        let store = FakeStore::new();
        let b = store.restricted_to(id("b"));
        let e = b.put(&sample_endpoint("a").into()).await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
        b.put(&sample_endpoint("b").into()).await.unwrap();
        assert_eq!(b.list(None).await.unwrap().records.len(), 1);
    }

    #[tokio::test]
    async fn sync_owned_converges() {
        let store = FakeStore::new();
        let a = id("a");
        let want: Vec<AnyRecord> = vec![
            sample_import("a", "ns", "one").into(),
            sample_import("a", "ns", "two").into(),
        ];
        let mut set = RecordSet::default();
        let n = crate::store::sync_owned(&store, &set, &a, Kind::ServiceImport, &want)
            .await
            .unwrap();
        assert_eq!(n, 2);
        set.apply(WatchEvent::Snapshot {
            records: store.list(None).await.unwrap().records,
            revision: store.revision(),
        });
        let n = crate::store::sync_owned(&store, &set, &a, Kind::ServiceImport, &want)
            .await
            .unwrap();
        assert_eq!(n, 0, "a second sync changes nothing");
        let n = crate::store::sync_owned(&store, &set, &a, Kind::ServiceImport, &want[..1])
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(store.list(None).await.unwrap().records.len(), 1);
    }
}
