//! The [`Store`] trait: where records live. One trait serves both a cluster's
//! own store (its etcd or Kubernetes API) and the broker the clusters
//! exchange records through (Settled decision 1).
//!
//! Readers never poll: [`Store::watch`] lists, then watches from the listed
//! revision, resumes after a dropped stream from the last revision it
//! delivered, and lists again (a [`WatchEvent::Snapshot`]) when that revision
//! was compacted away. A [`RecordSet`] folds those events into the current
//! state.

mod cache;
mod etcd;
mod fake;
mod keys;
mod kubernetes;

use futures::stream::BoxStream;

pub use cache::{RecordSet, reflect};
pub(crate) use etcd::call as etcd_call;
pub use etcd::{EtcdConfig, EtcdCredentials, EtcdStore, EtcdTls};
pub use fake::FakeStore;
pub use keys::{KeyLayout, prefix_end};
pub use kubernetes::{FIELD_MANAGER, KubeStore, OWNER_LABEL, causeway_crds, crds, resource_name};

use crate::error::Result;
use crate::records::{AnyRecord, Kind, RecordKey};

/// A store revision: every write raises it; events carry the revision that made them.
pub type Revision = i64;

/// Records of one list call and the revision they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The valid records (invalid ones are logged and left out).
    pub records: Vec<AnyRecord>,
    /// Revision of the read.
    pub revision: Revision,
}

/// One change seen by [`Store::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The full state: replaces everything known before (the first event of
    /// a fresh watch, and again after a compaction forced a re-list).
    Snapshot {
        /// Every valid record.
        records: Vec<AnyRecord>,
        /// Revision of the list.
        revision: Revision,
    },
    /// A record was created or changed.
    Put {
        /// The record.
        record: AnyRecord,
        /// Revision of the write.
        revision: Revision,
    },
    /// A record was deleted (or replaced by an invalid one, which is not trusted).
    Delete {
        /// Its key.
        key: RecordKey,
        /// Revision of the delete.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The revision this event brings the reader to.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Snapshot { revision, .. }
            | WatchEvent::Put { revision, .. }
            | WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// A record store (etcd, Kubernetes, or the in-memory fake).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates or replaces `record` at its key (`etcdctl put`). The record
    /// is validated first. Returns the revision of the write.
    async fn put(&self, record: &AnyRecord) -> Result<Revision>;

    /// Deletes the record at `key`; deleting a missing record succeeds.
    async fn delete(&self, key: &RecordKey) -> Result<Revision>;

    /// Lists the valid records of `kind` (every kind when `None`).
    async fn list(&self, kind: Option<Kind>) -> Result<Listing>;

    /// Streams changes to records of `kind` (every kind when `None`).
    ///
    /// Without `resume_from` the stream starts with a [`WatchEvent::Snapshot`];
    /// with it, the stream delivers what changed after that revision, or a
    /// snapshot if it was compacted. Connection failures are retried with
    /// backoff inside the stream, which never ends on its own.
    fn watch(
        &self,
        kind: Option<Kind>,
        resume_from: Option<Revision>,
    ) -> BoxStream<'static, WatchEvent>;
}

/// Puts every record of `records` that differs from what `current` holds and
/// deletes the keys of `current` (owned by `owner`) that `records` lacks:
/// the applier for a cluster's own records of one kind.
pub async fn sync_owned(
    store: &dyn Store,
    current: &RecordSet,
    owner: &crate::records::ClusterId,
    kind: Kind,
    records: &[AnyRecord],
) -> Result<usize> {
    let wanted: std::collections::BTreeMap<RecordKey, &AnyRecord> =
        records.iter().map(|r| (r.key(), r)).collect();
    let mut changes = 0;
    for (key, record) in &wanted {
        if current.get(key) != Some(*record) {
            store.put(record).await?;
            changes += 1;
        }
    }
    for key in current.keys() {
        if key.kind == kind && &key.cluster == owner && !wanted.contains_key(key) {
            store.delete(key).await?;
            changes += 1;
        }
    }
    Ok(changes)
}
