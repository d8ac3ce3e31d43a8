//! One kind of record followed from a store, as the export agent and the MCS
//! controllers each need: the records so far, kept by a watch that takes
//! every event already waiting in one go and, if it ends, resumes where it
//! stood.

use std::sync::Arc;

use causeway_api::records::Kind;
use causeway_api::store::{RecordSet, Store, WatchEvent};
use futures::StreamExt;
use futures::stream::BoxStream;
use tracing::warn;

/// The records of one kind in a store, kept current.
pub(crate) struct Followed {
    kind: Kind,
    store: Arc<dyn Store>,
    watch: BoxStream<'static, WatchEvent>,
    /// What has been seen so far.
    pub records: RecordSet,
}

impl Followed {
    pub(crate) fn new(store: Arc<dyn Store>, kind: Kind) -> Self {
        Followed {
            kind,
            watch: store.watch(Some(kind), None),
            store,
            records: RecordSet::default(),
        }
    }

    /// Waits for the next change and applies it with every event waiting
    /// behind it. Cancel-safe: a dropped call loses no event.
    pub(crate) async fn changed(&mut self) {
        match self.watch.next().await {
            Some(ev) => {
                self.records.apply(ev);
                while let Some(Some(ev)) = futures::FutureExt::now_or_never(self.watch.next()) {
                    self.records.apply(ev);
                }
            }
            None => {
                warn!(kind = ?self.kind, "store watch ended; watching again");
                let from = self.records.is_synced().then(|| self.records.revision());
                self.watch = self.store.watch(Some(self.kind), from);
            }
        }
    }
}
