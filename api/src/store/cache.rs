//! Folding a watch into the current state.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Revision, Store, WatchEvent};
use crate::records::{AnyRecord, Kind, RecordKey};

/// The records a watch has delivered so far, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSet {
    records: BTreeMap<RecordKey, AnyRecord>,
    revision: Revision,
    synced: bool,
}

impl RecordSet {
    /// Applies one watch event.
    pub fn apply(&mut self, event: WatchEvent) {
        let rev = event.revision();
        match event {
            WatchEvent::Snapshot { records, .. } => {
                self.records = records.into_iter().map(|r| (r.key(), r)).collect();
                self.synced = true;
            }
            WatchEvent::Put { record, .. } => {
                self.records.insert(record.key(), record);
            }
            WatchEvent::Delete { key, .. } => {
                self.records.remove(&key);
            }
        }
        self.revision = self.revision.max(rev);
    }

    /// True once a full list has been seen (or the watch resumed from a known state).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Revision of the last event applied.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The record at `key`.
    pub fn get(&self, key: &RecordKey) -> Option<&AnyRecord> {
        self.records.get(key)
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &RecordKey> {
        self.records.keys()
    }

    /// Every record, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &AnyRecord> {
        self.records.values()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records of one kind, typed: `set.typed::<Endpoint>()`.
    pub fn typed<T>(&self) -> impl Iterator<Item = T> + '_
    where
        T: TryFrom<AnyRecord>,
    {
        self.records
            .values()
            .filter_map(|r| T::try_from(r.clone()).ok())
    }

    /// The records of `kind`.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &AnyRecord> {
        self.records.values().filter(move |r| r.kind() == kind)
    }
}

/// Watches `kind` (every kind when `None`) on `store` until `cancel` fires,
/// publishing the folded state after each event on the returned channel.
pub fn reflect(
    store: Arc<dyn Store>,
    kind: Option<Kind>,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<RecordSet>> {
    let (tx, rx) = watch::channel(Arc::new(RecordSet::default()));
    tokio::spawn(async move {
        let mut events = store.watch(kind, None);
        let mut set = RecordSet::default();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tx.closed() => break,
                ev = events.next() => ev,
            };
            let Some(ev) = ev else { break };
            set.apply(ev);
            tx.send_replace(Arc::new(set.clone()));
        }
    });
    rx
}
