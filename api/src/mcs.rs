//! The Multi-Cluster Services API kinds (`multicluster.x-k8s.io/v1beta1`,
//! KEP-1645) that live in member clusters: ServiceExport (a user marks a
//! Service for export) and ServiceImport (what the clusterset offers).
//!
//! Causeway reads and writes v1beta1. Its CRDs ([`mcs_crds`]) serve
//! v1alpha1 too, with the same schema (v1beta1 only adds optional fields),
//! so tools that still speak v1alpha1 keep working; the manifest-directory
//! source reads both.

mod derived;
mod fake;
mod imports;

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use derived::{
    DERIVED_FIELD_MANAGER, DERIVED_MANAGED_BY, DERIVED_SERVICE_ANNOTATION, Derived, DerivedWrite,
    DerivedWriteError, DerivedWriter, FakeDerivedWriter, KubeDerivedWriter, MCS_SERVICE_NAME_LABEL,
    SERVICE_NAME_LABEL, SLICE_MANAGED_BY_LABEL, SLICE_MANAGER, SOURCE_CLUSTER_LABEL,
    derived_service_name,
};
pub use imports::{
    FakeImportWriter, IMPORT_FIELD_MANAGER, ImportWrite, ImportWriteError, ImportWriter,
    KubeImportWriter, MANAGED_BY, MANAGED_BY_LABEL, import_key,
};

/// The API group and the version Causeway speaks.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// The version Causeway reads and writes.
pub const VERSION: &str = "v1beta1";

/// Marks the Service of the same namespace and name for export.
///
/// Written out rather than derived: the spec is optional (v1alpha1 objects
/// have none), which kube's `CustomResource` derive does not allow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExport {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// What else to export (v1beta1); empty in v1alpha1.
    #[serde(default, skip_serializing_if = "ServiceExportSpec::is_empty")]
    pub spec: ServiceExportSpec,
    /// Status written by the export agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceExportStatus>,
}

/// The spec of a ServiceExport (v1beta1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportSpec {
    /// Labels the ServiceImport carries (the Service's own never do).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_labels: BTreeMap<String, String>,
    /// Annotations the ServiceImport carries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_annotations: BTreeMap<String, String>,
}

impl ServiceExportSpec {
    fn is_empty(&self) -> bool {
        self.exported_labels.is_empty() && self.exported_annotations.is_empty()
    }
}

impl ServiceExport {
    /// A ServiceExport for `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..Self::default()
        }
    }
}

impl kube::Resource for ServiceExport {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "ServiceExport".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "serviceexports".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Status of a ServiceExport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportStatus {
    /// Conditions (`Valid`, `Conflict`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<McsCondition>,
}

/// A condition as the MCS API writes it (reason and message optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McsCondition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// RFC 3339 time of the last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A service the clusterset offers in this namespace (v1beta1).
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1beta1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    shortname = "svcim",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The ClusterSetIP(s), one per IP family in `ipFamilies` order; none
    /// for Headless.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<McsServicePort>,
    /// `None` or `ClientIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// Settings of ClientIP affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<McsSessionAffinityConfig>,
    /// `IPv4` and/or `IPv6`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<String>,
    /// `Cluster` or `Local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// `PreferClose`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
}

/// `sessionAffinityConfig` of a ServiceImport, as a Service's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct McsSessionAffinityConfig {
    /// ClientIP affinity settings.
    #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<McsClientIpConfig>,
}

/// `sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McsClientIpConfig {
    /// Stickiness in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// A port of an imported service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McsServicePort {
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Application protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Port number.
    pub port: i32,
}

/// Status of a ServiceImport: which clusters back it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceImportStatus {
    /// Exporting clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
    /// Conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<McsCondition>,
}

/// One exporting cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterStatus {
    /// Cluster id.
    pub cluster: String,
}

/// The MCS CRDs (ServiceExport and ServiceImport) for clusters that have
/// none installed: v1beta1 stored, v1alpha1 served with the same schema (no
/// conversion needed: v1beta1 only adds optional fields). ServiceExport's is
/// written out because its spec is optional.
pub fn mcs_crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    let string_map =
        serde_json::json!({"type": "object", "additionalProperties": {"type": "string"}});
    let schema = serde_json::json!({
        "type": "object",
        "description": "Marks the Service of the same namespace and name for export to the clusterset.",
        "properties": {
            "spec": {"type": "object", "properties": {
                "exportedLabels": string_map,
                "exportedAnnotations": string_map,
            }},
            "status": {"type": "object", "properties": {"conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "required": ["type", "status"], "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                }},
            }}},
        },
    });
    let export: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "serviceexports.multicluster.x-k8s.io"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": "ServiceExport", "plural": "serviceexports",
                      "singular": "serviceexport", "shortNames": ["svcex"]},
            "versions": [{
                "name": VERSION, "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }))
    .expect("well-formed CRD");
    vec![with_v1alpha1(export), with_v1alpha1(ServiceImport::crd())]
}

/// Adds v1alpha1 as a served, not stored, copy of the stored version.
fn with_v1alpha1(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    if let Some(stored) = crd.spec.versions.first().cloned() {
        let mut alpha = stored;
        alpha.name = "v1alpha1".into();
        alpha.storage = false;
        crd.spec.versions.insert(0, alpha);
    }
    crd
}

#[cfg(test)]
mod tests {
    use kube::{CustomResourceExt, Resource};

    use super::*;

    #[test]
    fn crds_name_the_mcs_group() {
        let crd = ServiceImport::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("serviceimports.multicluster.x-k8s.io")
        );
        assert_eq!(
            ServiceExport::url_path(&(), Some("prod")),
            "/apis/multicluster.x-k8s.io/v1beta1/namespaces/prod/serviceexports"
        );
        assert_eq!(
            ServiceImport::url_path(&(), Some("prod")),
            "/apis/multicluster.x-k8s.io/v1beta1/namespaces/prod/serviceimports"
        );
        for crd in mcs_crds() {
            let versions: Vec<_> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.served, v.storage))
                .collect();
            assert_eq!(
                versions,
                [("v1alpha1", true, false), ("v1beta1", true, true)],
                "{:?}",
                crd.metadata.name
            );
        }
        let v1beta1 = "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata: {name: web, namespace: default}\nspec: {exportedLabels: {tier: web}}\n";
        let se: ServiceExport = serde_yaml::from_str(v1beta1).unwrap();
        assert_eq!(se.spec.exported_labels["tier"], "web");
        let yaml = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: web, namespace: default}\n";
        let se: ServiceExport = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(se.metadata.name.as_deref(), Some("web"));
        let names: Vec<_> = mcs_crds()
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "serviceexports.multicluster.x-k8s.io",
                "serviceimports.multicluster.x-k8s.io"
            ]
        );
    }
}
