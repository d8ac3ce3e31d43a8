//! The Kubernetes API as a cluster source: one kube watcher per kind
//! (list, then watch from the listed resourceVersion, re-list on `410 Gone`,
//! with kube's default backoff), folded into one [`ClusterState`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{ClusterSource, ClusterState, ObjectKey};
use crate::mcs::{ImportWriter, KubeImportWriter, ServiceExport, ServiceImport};

/// A kind's place in [`ClusterState`].
type Slot<K> = fn(&mut ClusterState) -> &mut BTreeMap<ObjectKey, K>;

/// Folds watcher events of one kind: a re-list is buffered and swapped in
/// whole at `InitDone`, so readers never see a half-listed kind.
#[derive(Debug)]
pub(crate) struct KindFold<K> {
    buffer: Option<BTreeMap<ObjectKey, K>>,
    pub(crate) synced: bool,
}

impl<K> Default for KindFold<K> {
    fn default() -> Self {
        Self {
            buffer: None,
            synced: false,
        }
    }
}

fn key_of<K: Resource>(o: &K) -> ObjectKey {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

impl<K: Resource + Clone> KindFold<K> {
    /// Applies one event to `map`; true when `map` changed (or became synced).
    pub(crate) fn apply(
        &mut self,
        map: &mut BTreeMap<ObjectKey, K>,
        ev: watcher::Event<K>,
    ) -> bool {
        match ev {
            watcher::Event::Init => {
                self.buffer = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                self.buffer
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(&o), o);
                false
            }
            watcher::Event::InitDone => {
                *map = self.buffer.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(o) => {
                map.insert(key_of(&o), o);
                true
            }
            watcher::Event::Delete(o) => map.remove(&key_of(&o)).is_some(),
        }
    }
}

/// Cluster state from the Kubernetes API.
pub struct KubeSource {
    state: watch::Receiver<Arc<ClusterState>>,
    client: Client,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

impl ClusterSource for KubeSource {
    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// ServiceImports are written through the same API.
    fn import_writer(&self) -> Option<Arc<dyn ImportWriter>> {
        Some(Arc::new(KubeImportWriter::new(self.client.clone())))
    }

    fn derived_writer(&self) -> Option<Arc<dyn crate::mcs::DerivedWriter>> {
        Some(Arc::new(crate::mcs::KubeDerivedWriter::new(
            self.client.clone(),
        )))
    }
}

struct Shared {
    state: Mutex<(ClusterState, [bool; 6])>,
    tx: watch::Sender<Arc<ClusterState>>,
}

impl KubeSource {
    /// Watches Services, EndpointSlices, ServiceExports, ServiceImports (all
    /// namespaces), Nodes and Namespaces through `client` until `cancel`
    /// fires.
    pub fn spawn(client: Client, cancel: CancellationToken) -> Self {
        let (tx, state) = watch::channel(Arc::new(ClusterState::default()));
        let shared = Arc::new(Shared {
            state: Mutex::new((ClusterState::default(), [false; 6])),
            tx,
        });
        spawn_kind::<Service>(
            0,
            Api::all(client.clone()),
            |s| &mut s.services,
            &shared,
            &cancel,
        );
        spawn_kind::<EndpointSlice>(
            1,
            Api::all(client.clone()),
            |s| &mut s.endpoint_slices,
            &shared,
            &cancel,
        );
        spawn_kind::<ServiceExport>(
            2,
            Api::all(client.clone()),
            |s| &mut s.service_exports,
            &shared,
            &cancel,
        );
        spawn_kind::<Node>(
            3,
            Api::all(client.clone()),
            |s| &mut s.nodes,
            &shared,
            &cancel,
        );
        spawn_kind::<Namespace>(
            4,
            Api::all(client.clone()),
            |s| &mut s.namespaces,
            &shared,
            &cancel,
        );
        spawn_kind::<ServiceImport>(
            5,
            Api::all(client.clone()),
            |s| &mut s.service_imports,
            &shared,
            &cancel,
        );
        Self { state, client }
    }
}

fn spawn_kind<K>(
    idx: usize,
    api: Api<K>,
    slot: Slot<K>,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let shared = shared.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut events = Box::pin(watcher(api, watcher::Config::default()).default_backoff());
        let mut fold = KindFold::<K>::default();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.next() => ev,
            };
            let ev = match ev {
                None => return,
                Some(Ok(ev)) => ev,
                Some(Err(watcher::Error::InitialListFailed(kube::Error::Api(s))))
                    if s.code == 404 && !fold.synced =>
                {
                    // The kind is not installed (no MCS CRD): nothing of it
                    // exists, which must not hold back `synced`.
                    warn!(kind = %K::kind(&K::DynamicType::default()), "kind not served by the API server; treating it as empty");
                    watcher::Event::InitDone
                }
                Some(Err(e)) => {
                    warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            let mut guard = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let (state, synced) = &mut *guard;
            if fold.apply(slot(state), ev) {
                synced[idx] = fold.synced;
                state.synced = synced.iter().all(|s| *s);
                shared.tx.send_replace(Arc::new(state.clone()));
            }
        }
    });
}

#[cfg(test)]
mod tests;
