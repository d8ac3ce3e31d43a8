//! The Kubernetes backend of [`Store`]: each record is a `causeway.io`
//! custom resource in one namespace (the broker namespace, or Causeway's
//! namespace for a cluster's own store; Settled decisions 1 and 11), named
//! after its key and labelled `causeway.io/cluster=<owner>`, so an admission
//! policy can hold each cluster's ServiceAccount to its own records.
//!
//! Writes are server-side apply (`kubectl apply --server-side
//! --field-manager=causeway --force-conflicts`); watches are kube watchers,
//! which list, watch from the listed resourceVersion and re-list on `410
//! Gone`. Kubernetes offers no resume from an arbitrary revision across
//! kinds, so [`Store::watch`] always starts with a snapshot here.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResource, CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use super::{Listing, Revision, Store, WatchEvent};
use crate::error::{Error, Result};
use crate::records::{self, AnyRecord, Kind, RecordKey};

/// The label naming a record's owner.
pub const OWNER_LABEL: &str = "causeway.io/cluster";

/// The field manager of Causeway's server-side applies.
pub const FIELD_MANAGER: &str = "causeway";

/// CRD types of the `causeway.io` records.
pub mod crds {
    use super::*;

    /// A [`records::Cluster`] as a custom resource.
    #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "causeway.io",
        version = "v1alpha1",
        kind = "Cluster",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct ClusterSpec {
        /// The record.
        #[serde(flatten)]
        pub record: records::Cluster,
    }

    /// A [`records::Endpoint`] (a cluster's active gateway) as a custom resource.
    #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "causeway.io",
        version = "v1alpha1",
        kind = "GatewayEndpoint",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct GatewayEndpointSpec {
        /// The record.
        #[serde(flatten)]
        pub record: records::Endpoint,
    }

    /// A [`records::ServiceImport`] (one exported service of one cluster) as
    /// a custom resource; named apart from the MCS ServiceImport.
    #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "causeway.io",
        version = "v1alpha1",
        kind = "ExportedService",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct ExportedServiceSpec {
        /// The record.
        #[serde(flatten)]
        pub record: records::ServiceImport,
    }

    /// A [`records::ConnectionStatus`] as a custom resource.
    #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "causeway.io",
        version = "v1alpha1",
        kind = "ConnectionStatus",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct ConnectionStatusSpec {
        /// The record.
        #[serde(flatten)]
        pub record: records::ConnectionStatus,
    }
}

/// The CRDs of every `causeway.io` record kind (what `causeway crdgen` prints).
pub fn causeway_crds() -> Vec<CustomResourceDefinition> {
    vec![
        crds::Cluster::crd(),
        crds::GatewayEndpoint::crd(),
        crds::ExportedService::crd(),
        crds::ConnectionStatus::crd(),
    ]
}

/// The resource name of a record: `<cluster>` for Cluster and Endpoint,
/// `<cluster>.<namespace>.<service>` for a ServiceImport, `<cluster>.<peer>`
/// for a ConnectionStatus. Every part is a DNS label, so the dots keep
/// names unique and valid.
pub fn resource_name(key: &RecordKey) -> String {
    match key.kind {
        Kind::Cluster | Kind::Endpoint => key.cluster.to_string(),
        Kind::ServiceImport | Kind::ConnectionStatus => {
            format!("{}.{}", key.cluster, key.name.replace('/', "."))
        }
    }
}

fn revision_of(meta: &ObjectMeta) -> Revision {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Checks a custom resource's record against its name and owner label.
fn check(meta: &ObjectMeta, record: AnyRecord) -> Option<AnyRecord> {
    let key = record.key();
    let name = meta.name.as_deref().unwrap_or("");
    let owner = meta.labels.as_ref().and_then(|l| l.get(OWNER_LABEL));
    let problem = if name != resource_name(&key) {
        Some(format!("named {name:?}, but its record is {key}"))
    } else if owner.map(String::as_str) != Some(key.cluster.as_str()) {
        Some(format!(
            "labelled owner {owner:?}, but its record names {}",
            key.cluster
        ))
    } else {
        record.validate().err().map(|e| e.to_string())
    };
    match problem {
        Some(p) => {
            warn!(resource = name, problem = %p, "skipping a refused record");
            None
        }
        None => Some(record),
    }
}

fn kube_err(op: String, source: kube::Error) -> Error {
    Error::Kube { op, source }
}

/// A [`Store`] on a Kubernetes API server.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// One kind's mapping between records and custom resources.
trait RecordResource:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn to_record(&self) -> AnyRecord;
    fn from_record(meta: ObjectMeta, r: &AnyRecord) -> Option<Self>;
}

macro_rules! record_resource {
    ($cr:ident, $spec:ident, $variant:ident) => {
        impl RecordResource for crds::$cr {
            fn to_record(&self) -> AnyRecord {
                AnyRecord::$variant(self.spec.record.clone())
            }

            fn from_record(meta: ObjectMeta, r: &AnyRecord) -> Option<Self> {
                match r {
                    AnyRecord::$variant(rec) => Some(crds::$cr {
                        metadata: meta,
                        spec: crds::$spec {
                            record: rec.clone(),
                        },
                    }),
                    _ => None,
                }
            }
        }
    };
}

record_resource!(Cluster, ClusterSpec, Cluster);
record_resource!(GatewayEndpoint, GatewayEndpointSpec, Endpoint);
record_resource!(ExportedService, ExportedServiceSpec, ServiceImport);
record_resource!(ConnectionStatus, ConnectionStatusSpec, ConnectionStatus);

/// A watch event of one kind, with the kind's records.
enum KindEvent {
    /// A full list of the kind.
    Listed(Kind, Vec<AnyRecord>),
    /// One record applied.
    Applied(AnyRecord, Revision),
    /// One record deleted.
    Deleted(RecordKey, Revision),
}

impl KubeStore {
    /// A store of the records in `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
        }
    }

    fn api<K: RecordResource>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn put_as<K: RecordResource>(&self, record: &AnyRecord) -> Result<Revision> {
        let key = record.key();
        let name = resource_name(&key);
        let meta = ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(BTreeMap::from([(
                OWNER_LABEL.to_owned(),
                key.cluster.to_string(),
            )])),
            ..ObjectMeta::default()
        };
        let mut obj = K::from_record(meta, record).expect("kind matches");
        // Server-side apply needs apiVersion and kind in the body.
        let mut value = serde_json::to_value(&obj).expect("resources serialise");
        value["apiVersion"] = K::api_version(&()).into();
        value["kind"] = K::kind(&()).into();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        obj = self
            .api::<K>()
            .patch(&name, &params, &Patch::Apply(value))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 403 => {
                    Error::PermissionDenied { key: key.clone() }
                }
                e => kube_err(format!("apply {} {name}", K::kind(&())), e),
            })?;
        Ok(revision_of(obj.meta()))
    }

    async fn delete_as<K: RecordResource>(&self, key: &RecordKey) -> Result<Revision> {
        let name = resource_name(key);
        match self
            .api::<K>()
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(either) => Ok(either.left().map(|o| revision_of(o.meta())).unwrap_or(0)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(0),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                Err(Error::PermissionDenied { key: key.clone() })
            }
            Err(e) => Err(kube_err(format!("delete {} {name}", K::kind(&())), e)),
        }
    }

    async fn list_as<K: RecordResource>(&self) -> Result<(Vec<AnyRecord>, Revision)> {
        let list = self
            .api::<K>()
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_err(format!("list {}", K::plural(&())), e))?;
        let rev = list
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let records = list
            .items
            .into_iter()
            .filter_map(|o| check(o.meta(), o.to_record()))
            .collect();
        Ok((records, rev))
    }

    fn watch_as<K: RecordResource>(&self, kind: Kind) -> BoxStream<'static, KindEvent> {
        let mut buffer: Option<Vec<AnyRecord>> = None;
        watcher(self.api::<K>(), watcher::Config::default())
            .default_backoff()
            .filter_map(move |ev| {
                let out = match ev {
                    Err(e) => {
                        warn!(kind = %kind, error = %e, "record watch failed; retrying with backoff");
                        None
                    }
                    Ok(watcher::Event::Init) => {
                        buffer = Some(Vec::new());
                        None
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        if let Some(r) = check(o.meta(), o.to_record()) {
                            buffer.get_or_insert_with(Vec::new).push(r);
                        }
                        None
                    }
                    Ok(watcher::Event::InitDone) => {
                        Some(KindEvent::Listed(kind, buffer.take().unwrap_or_default()))
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        let rev = revision_of(o.meta());
                        match check(o.meta(), o.to_record()) {
                            Some(r) => Some(KindEvent::Applied(r, rev)),
                            // Replaced by a refused record: not trusted any more.
                            None => Some(KindEvent::Deleted(o.to_record().key(), rev)),
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        Some(KindEvent::Deleted(o.to_record().key(), revision_of(o.meta())))
                    }
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

#[async_trait::async_trait]
impl Store for KubeStore {
    async fn put(&self, record: &AnyRecord) -> Result<Revision> {
        record.validate()?;
        match record.kind() {
            Kind::Cluster => self.put_as::<crds::Cluster>(record).await,
            Kind::Endpoint => self.put_as::<crds::GatewayEndpoint>(record).await,
            Kind::ServiceImport => self.put_as::<crds::ExportedService>(record).await,
            Kind::ConnectionStatus => self.put_as::<crds::ConnectionStatus>(record).await,
        }
    }

    async fn delete(&self, key: &RecordKey) -> Result<Revision> {
        match key.kind {
            Kind::Cluster => self.delete_as::<crds::Cluster>(key).await,
            Kind::Endpoint => self.delete_as::<crds::GatewayEndpoint>(key).await,
            Kind::ServiceImport => self.delete_as::<crds::ExportedService>(key).await,
            Kind::ConnectionStatus => self.delete_as::<crds::ConnectionStatus>(key).await,
        }
    }

    async fn list(&self, kind: Option<Kind>) -> Result<Listing> {
        let mut records = Vec::new();
        let mut revision = 0;
        for k in kind.map(|k| vec![k]).unwrap_or_else(|| Kind::ALL.to_vec()) {
            let (r, rev) = match k {
                Kind::Cluster => self.list_as::<crds::Cluster>().await?,
                Kind::Endpoint => self.list_as::<crds::GatewayEndpoint>().await?,
                Kind::ServiceImport => self.list_as::<crds::ExportedService>().await?,
                Kind::ConnectionStatus => self.list_as::<crds::ConnectionStatus>().await?,
            };
            records.extend(r);
            revision = revision.max(rev);
        }
        Ok(Listing { records, revision })
    }

    fn watch(
        &self,
        kind: Option<Kind>,
        _resume_from: Option<Revision>,
    ) -> BoxStream<'static, WatchEvent> {
        let kinds: Vec<Kind> = kind.map(|k| vec![k]).unwrap_or_else(|| Kind::ALL.to_vec());
        let streams: Vec<_> = kinds
            .iter()
            .map(|k| match k {
                Kind::Cluster => self.watch_as::<crds::Cluster>(*k),
                Kind::Endpoint => self.watch_as::<crds::GatewayEndpoint>(*k),
                Kind::ServiceImport => self.watch_as::<crds::ExportedService>(*k),
                Kind::ConnectionStatus => self.watch_as::<crds::ConnectionStatus>(*k),
            })
            .collect();
        let want: BTreeSet<Kind> = kinds.into_iter().collect();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut merged = futures::stream::select_all(streams);
            let mut state: BTreeMap<RecordKey, AnyRecord> = BTreeMap::new();
            let mut listed: BTreeSet<Kind> = BTreeSet::new();
            let mut revision: Revision = 0;
            loop {
                let ev = tokio::select! {
                    _ = tx.closed() => return,
                    ev = merged.next() => ev,
                };
                let Some(ev) = ev else { return };
                let out = match ev {
                    KindEvent::Listed(kind, records) => {
                        state.retain(|k, _| k.kind != kind);
                        state.extend(records.into_iter().map(|r| (r.key(), r)));
                        listed.insert(kind);
                        // One snapshot once every kind has listed, and again on each re-list.
                        (listed == want).then(|| WatchEvent::Snapshot {
                            records: state.values().cloned().collect(),
                            revision,
                        })
                    }
                    KindEvent::Applied(record, rev) => {
                        revision = revision.max(rev);
                        state.insert(record.key(), record.clone());
                        (listed == want).then_some(WatchEvent::Put {
                            record,
                            revision: rev,
                        })
                    }
                    KindEvent::Deleted(key, rev) => {
                        revision = revision.max(rev);
                        let known = state.remove(&key).is_some();
                        (listed == want && known)
                            .then_some(WatchEvent::Delete { key, revision: rev })
                    }
                };
                if let Some(out) = out
                    && tx.send(out).await.is_err()
                {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests;
