//! The derived Service of an import and its MCS EndpointSlices: what makes
//! a ClusterSetIP carry traffic. The cluster's service proxy (kube-proxy,
//! Cilium, the lab's) serves the derived Service's ClusterIP from the
//! slices, as it serves any selector-less Service.
//!
//! This module names things ([`derived_service_name`], the labels) and
//! writes them: the [`DerivedWriter`] trait, the Kubernetes implementation
//! ([`KubeDerivedWriter`]) and an in-memory fake. The manifest-directory
//! implementation lives with its source, `ManifestDerivedWriter`. What to
//! write is planned in lighthouse.

use super::fake::FakeObjects;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

/// The annotation of a ServiceImport naming its derived Service.
pub const DERIVED_SERVICE_ANNOTATION: &str = "multicluster.kubernetes.io/derived-service";
/// The label of an MCS EndpointSlice (and of Causeway's derived Service)
/// naming the ServiceImport it serves (KEP-1645).
pub const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// The label of an MCS EndpointSlice naming the cluster its endpoints are in.
pub const SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";
/// The label service proxies select a Service's EndpointSlices by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming an EndpointSlice's controller.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Causeway's value of [`SLICE_MANAGED_BY_LABEL`].
pub const SLICE_MANAGER: &str = "causeway.io/lighthouse";
/// Causeway's value of `causeway.io/managed-by` on derived Services and
/// their slices: only objects that carry it are ever deleted.
pub const DERIVED_MANAGED_BY: &str = "derived-controller";
/// The field manager of the derived controller's server-side applies.
pub const DERIVED_FIELD_MANAGER: &str = "causeway-derived-controller";

/// SHA-256 (FIPS 180-4), for [`derived_service_name`]: the one hash the
/// reference controller's names need does not justify a crate.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// The name of the derived Service of ServiceImport `namespace/name`, as
/// the reference mcs-api controller forms it: `derived-` and the first 10
/// characters of the lower-case, unpadded base32hex SHA-256 of
/// `namespace/name`.
pub fn derived_service_name(namespace: &str, name: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let digest = sha256(format!("{namespace}/{name}").as_bytes());
    // 10 characters are 50 bits: the first 7 bytes hold them.
    let mut bits: u64 = 0;
    for b in &digest[..7] {
        bits = (bits << 8) | u64::from(*b);
    }
    let mut out = String::from("derived-");
    for i in 0..10 {
        let shift = 56 - 5 * (i + 1);
        out.push(char::from(ALPHABET[((bits >> shift) & 31) as usize]));
    }
    out
}

/// One import's derived Service and its EndpointSlices (by name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// The ServiceImport's namespace.
    pub namespace: String,
    /// The ServiceImport's name.
    pub import: String,
    /// The derived Service.
    pub service: Service,
    /// Its MCS EndpointSlices, one per source cluster (and address family).
    pub slices: BTreeMap<String, EndpointSlice>,
}

/// Why a derived Service or slice could not be written or deleted.
#[derive(Debug, thiserror::Error)]
pub enum DerivedWriteError {
    /// The API server refused or could not be reached.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Kube {
        /// `apply` or `delete`.
        action: &'static str,
        /// `Service` or `EndpointSlice`.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// A file of the manifest directory could not be written or removed.
    #[error("{action} {}: {source}", path.display())]
    File {
        /// `write` or `remove`.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes and deletes derived Services and their slices. Both calls are
/// idempotent.
#[async_trait::async_trait]
pub trait DerivedWriter: Send + Sync + std::fmt::Debug {
    /// Creates or updates the Service and every slice of `derived`, and
    /// deletes the slices named in `stale` (Causeway's, no longer wanted).
    async fn apply(
        &self,
        derived: &Derived,
        stale: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError>;

    /// Deletes the derived Service of import `namespace/import` and the
    /// slices named in `slices`; what is gone is success.
    async fn delete(
        &self,
        namespace: &str,
        import: &str,
        slices: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError>;
}

/// Writes derived Services and slices through the Kubernetes API: `kubectl
/// apply --server-side --field-manager=causeway-derived-controller
/// --force-conflicts` of each object, `kubectl delete service|endpointslice`.
#[derive(Clone)]
pub struct KubeDerivedWriter {
    client: kube::Client,
}

impl std::fmt::Debug for KubeDerivedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDerivedWriter").finish_non_exhaustive()
    }
}

impl KubeDerivedWriter {
    /// A writer using `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    async fn delete_one<K>(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<(), DerivedWriteError>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(DerivedWriteError::Kube {
                action: "delete",
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(e),
            }),
        }
    }
}

/// The object as sent: without server-owned fields, with its type.
fn applied<K: serde::Serialize>(object: &K, api_version: &str, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(object).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(|x| x.as_object_mut()) {
            for k in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
                "generation",
            ] {
                meta.remove(k);
            }
        }
    }
    v
}

#[async_trait::async_trait]
impl DerivedWriter for KubeDerivedWriter {
    async fn apply(
        &self,
        derived: &Derived,
        stale: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError> {
        let ns = &derived.namespace;
        let params = PatchParams::apply(DERIVED_FIELD_MANAGER).force();
        let service_name = derived.service.metadata.name.clone().unwrap_or_default();
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        services
            .patch(
                &service_name,
                &params,
                &Patch::Apply(&applied(&derived.service, "v1", "Service")),
            )
            .await
            .map_err(|e| DerivedWriteError::Kube {
                action: "apply",
                kind: "Service",
                namespace: ns.clone(),
                name: service_name.clone(),
                source: Box::new(e),
            })?;
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        for (name, slice) in &derived.slices {
            slices
                .patch(
                    name,
                    &params,
                    &Patch::Apply(&applied(slice, "discovery.k8s.io/v1", "EndpointSlice")),
                )
                .await
                .map_err(|e| DerivedWriteError::Kube {
                    action: "apply",
                    kind: "EndpointSlice",
                    namespace: ns.clone(),
                    name: name.clone(),
                    source: Box::new(e),
                })?;
        }
        for name in stale {
            self.delete_one::<EndpointSlice>("EndpointSlice", ns, name)
                .await?;
        }
        Ok(())
    }

    async fn delete(
        &self,
        namespace: &str,
        import: &str,
        slices: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError> {
        for name in slices {
            self.delete_one::<EndpointSlice>("EndpointSlice", namespace, name)
                .await?;
        }
        let name = derived_service_name(namespace, import);
        self.delete_one::<Service>("Service", namespace, &name)
            .await
    }
}

/// One call a [`FakeDerivedWriter`] received.
#[derive(Debug, Clone, PartialEq)]
pub enum DerivedWrite {
    /// `apply` of this object, with the stale slices named.
    Apply(Box<Derived>, BTreeSet<String>),
    /// `delete` of `(namespace, import)`.
    Delete(String, String),
}

/// An in-memory [`DerivedWriter`] for tests: holds the objects by import
/// and logs the calls; [`FakeDerivedWriter::fail`] makes calls fail.
#[derive(Debug, Clone, Default)]
pub struct FakeDerivedWriter {
    fake: FakeObjects<Derived, DerivedWrite>,
}

impl FakeDerivedWriter {
    /// The objects written and not deleted, by import.
    pub fn objects(&self) -> BTreeMap<(String, String), Derived> {
        self.fake.objects()
    }

    /// Every call so far, in order.
    pub fn log(&self) -> Vec<DerivedWrite> {
        self.fake.log()
    }

    /// Makes every later call fail (true) or succeed (false).
    pub fn fail(&self, failing: bool) {
        self.fake.fail(failing);
    }

    fn failure(action: &'static str, ns: &str, name: &str) -> DerivedWriteError {
        DerivedWriteError::File {
            action,
            path: format!("fake/{ns}.{name}").into(),
            source: std::io::Error::other("the fake fails"),
        }
    }
}

#[async_trait::async_trait]
impl DerivedWriter for FakeDerivedWriter {
    async fn apply(
        &self,
        derived: &Derived,
        stale: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError> {
        let call = DerivedWrite::Apply(Box::new(derived.clone()), stale.clone());
        let key = (derived.namespace.clone(), derived.import.clone());
        if !self.fake.call(call, |o| {
            o.insert(key, derived.clone());
        }) {
            return Err(Self::failure("write", &derived.namespace, &derived.import));
        }
        Ok(())
    }

    async fn delete(
        &self,
        namespace: &str,
        import: &str,
        _slices: &BTreeSet<String>,
    ) -> Result<(), DerivedWriteError> {
        let key = (namespace.to_owned(), import.to_owned());
        let call = DerivedWrite::Delete(key.0.clone(), key.1.clone());
        if !self.fake.call(call, |o| {
            o.remove(&key);
        }) {
            return Err(Self::failure("remove", namespace, import));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
