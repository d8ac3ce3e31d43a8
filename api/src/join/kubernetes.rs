//! `causeway broker init` and `causeway join` on a Kubernetes broker.
//!
//! Each cluster gets a ServiceAccount `causeway-cluster-<id>` in the broker
//! namespace, a Role that may read and write the `causeway.io` records there,
//! and a token Secret; a ValidatingAdmissionPolicy holds every such account
//! to records labelled, named and specified as its own cluster's. Global CIDR
//! allocation reads the registry ConfigMap and replaces it with the read
//! resourceVersion, so two joins cannot both win.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::info;

use super::allocate::{JoinRequest, RegisteredCluster, Registry, allocate};
use super::etcd::cluster_user;
use crate::error::{Error, Result};
use crate::records::{AnyRecord, Cluster, ClusterId};
use crate::store::{FIELD_MANAGER, KubeStore, OWNER_LABEL, Store};

/// Name of the registry ConfigMap in the broker namespace.
pub const REGISTRY_CONFIGMAP: &str = "causeway-registry";

/// Key of the registry inside the ConfigMap.
pub const REGISTRY_KEY: &str = "registry.json";

/// Name of the admission policy (and its binding).
pub const POLICY_NAME: &str = "causeway-broker-own-records";

/// What `join` hands the new cluster on a Kubernetes broker.
#[derive(Debug, Clone)]
pub struct KubeJoinOutput {
    /// The cluster as registered.
    pub cluster: Cluster,
    /// Its ServiceAccount in the broker namespace.
    pub service_account: String,
    /// The Secret the API server fills with that account's token.
    pub token_secret: String,
}

fn kube_err(op: String, source: kube::Error) -> Error {
    Error::Kube { op, source }
}

fn from_json<T: DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("well-formed built-in object")
}

/// The admission policy and its binding for broker namespace `namespace`:
/// a cluster's ServiceAccount may create, update and delete only resources
/// labelled with its cluster, named `<cluster>` or `<cluster>.*`, whose
/// record names its cluster.
pub fn broker_policy(
    namespace: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let prefix = format!("system:serviceaccount:{namespace}:causeway-cluster-");
    let label = OWNER_LABEL;
    let policy = from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["causeway.io"],
                "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "resources": ["*"],
            }]},
            "matchConditions": [{
                "name": "cluster-service-account",
                "expression": format!("request.userInfo.username.startsWith('{prefix}')"),
            }],
            "variables": [{
                "name": "cluster",
                "expression": format!("request.userInfo.username.substring(size('{prefix}'))"),
            }],
            "validations": [
                {
                    "expression": format!("request.operation == 'DELETE' || (has(object.metadata.labels) && '{label}' in object.metadata.labels && object.metadata.labels['{label}'] == variables.cluster)"),
                    "messageExpression": format!("'cluster ' + variables.cluster + ' may write only records labelled {label}=' + variables.cluster"),
                },
                {
                    "expression": format!("request.operation == 'CREATE' || (has(oldObject.metadata.labels) && '{label}' in oldObject.metadata.labels && oldObject.metadata.labels['{label}'] == variables.cluster)"),
                    "messageExpression": "'cluster ' + variables.cluster + ' may not change or delete another cluster\\'s record'",
                },
                {
                    "expression": "request.operation == 'DELETE' || object.metadata.name == variables.cluster || object.metadata.name.startsWith(variables.cluster + '.')",
                    "messageExpression": "'cluster ' + variables.cluster + ' may write only records named ' + variables.cluster + ' or ' + variables.cluster + '.*'",
                },
                {
                    "expression": "request.operation == 'DELETE' || (has(object.spec.cluster) ? object.spec.cluster == variables.cluster : (has(object.spec.id) && object.spec.id == variables.cluster))",
                    "messageExpression": "'cluster ' + variables.cluster + ' may write only records that name it'",
                },
            ],
        },
    }));
    let binding = from_json(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "policyName": POLICY_NAME,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": namespace,
            }}},
        },
    }));
    (policy, binding)
}

/// The ServiceAccount, Role, RoleBinding and token Secret of one cluster.
pub fn cluster_access(
    namespace: &str,
    id: &ClusterId,
) -> (ServiceAccount, Role, RoleBinding, Secret) {
    let name = cluster_user(id);
    let labels = json!({OWNER_LABEL: id.as_str()});
    let meta = json!({"name": name, "namespace": namespace, "labels": labels});
    let sa = from_json(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}));
    let role = from_json(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
        "rules": [{
            "apiGroups": ["causeway.io"],
            "resources": ["clusters", "gatewayendpoints", "exportedservices", "connectionstatuses"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }],
    }));
    let binding = from_json(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }));
    let secret = from_json(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{name}-token"), "namespace": namespace, "labels": labels,
                     "annotations": {"kubernetes.io/service-account.name": name}},
        "type": "kubernetes.io/service-account-token",
    }));
    (sa, role, binding, secret)
}

/// Server-side applies `obj` (`kubectl apply --server-side`).
async fn apply<K>(api: Api<K>, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut v = serde_json::to_value(obj).expect("serialisable");
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(v),
    )
    .await
    .map_err(|e| kube_err(format!("apply {} {name}", K::kind(&())), e))?;
    Ok(())
}

/// Installs the admission policy and the registry ConfigMap (unless one
/// exists) for broker namespace `namespace`. The CRDs come from
/// [`crate::store::causeway_crds`] (the Helm chart or `crdgen`).
pub async fn kube_broker_init(client: Client, namespace: &str, registry: &Registry) -> Result<()> {
    let (policy, binding) = broker_policy(namespace);
    apply(Api::all(client.clone()), &policy).await?;
    apply(Api::all(client.clone()), &binding).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, namespace);
    let cm = registry_configmap(namespace, registry, None);
    match cms.create(&PostParams::default(), &cm).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(kube_err(
                format!("create configmap {REGISTRY_CONFIGMAP}"),
                e,
            ));
        }
    }
    info!(namespace, "Kubernetes broker initialised");
    Ok(())
}

fn registry_configmap(namespace: &str, registry: &Registry, rv: Option<String>) -> ConfigMap {
    from_json(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": REGISTRY_CONFIGMAP, "namespace": namespace, "resourceVersion": rv},
        "data": {REGISTRY_KEY: serde_json::to_string(registry).expect("serialisable")},
    }))
}

/// Joins `request.cluster` to the Kubernetes broker in `namespace`:
/// allocates and registers its global CIDR (refusing a taken id or an
/// overlap), creates its ServiceAccount, Role, RoleBinding and token Secret,
/// and writes its Cluster record. `client` must be an administrator's.
pub async fn kube_join(
    client: Client,
    namespace: &str,
    request: &JoinRequest,
) -> Result<KubeJoinOutput> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let id = &request.cluster;
    let mut attempt = 0;
    let cluster = loop {
        attempt += 1;
        if attempt > 32 {
            return Err(Error::JoinContention);
        }
        let current = cms
            .get_opt(REGISTRY_CONFIGMAP)
            .await
            .map_err(|e| kube_err(format!("get configmap {REGISTRY_CONFIGMAP}"), e))?;
        let (mut registry, rv) = match &current {
            None => (Registry::default(), None),
            Some(cm) => {
                let text = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(REGISTRY_KEY))
                    .map(String::as_str)
                    .unwrap_or("");
                let reg = serde_json::from_str(text).map_err(|source| Error::CorruptRegistry {
                    key: format!("configmap {namespace}/{REGISTRY_CONFIGMAP}"),
                    source,
                })?;
                (reg, cm.metadata.resource_version.clone())
            }
        };
        let global_cidr = allocate(&registry, request)?;
        registry.clusters.insert(
            id.clone(),
            RegisteredCluster {
                global_cidr,
                pod_cidrs: request.pod_cidrs.clone(),
                service_cidrs: request.service_cidrs.clone(),
            },
        );
        let exists = rv.is_some();
        let cm = registry_configmap(namespace, &registry, rv);
        let r = if exists {
            cms.replace(REGISTRY_CONFIGMAP, &PostParams::default(), &cm)
                .await
        } else {
            cms.create(&PostParams::default(), &cm).await
        };
        match r {
            Ok(_) => {
                break Cluster {
                    id: id.clone(),
                    pod_cidrs: request.pod_cidrs.clone(),
                    service_cidrs: request.service_cidrs.clone(),
                    global_cidr,
                };
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(cluster = %id, attempt, "registry changed during join; retrying");
            }
            Err(e) => return Err(kube_err(format!("write configmap {REGISTRY_CONFIGMAP}"), e)),
        }
    };
    let (sa, role, binding, secret) = cluster_access(namespace, id);
    apply(Api::namespaced(client.clone(), namespace), &sa).await?;
    apply(Api::namespaced(client.clone(), namespace), &role).await?;
    apply(Api::namespaced(client.clone(), namespace), &binding).await?;
    apply(Api::namespaced(client.clone(), namespace), &secret).await?;
    KubeStore::new(client, namespace)
        .put(&AnyRecord::Cluster(cluster.clone()))
        .await?;
    info!(cluster = %id, global_cidr = ?cluster.global_cidr, "cluster joined the Kubernetes broker");
    Ok(KubeJoinOutput {
        cluster,
        service_account: cluster_user(id),
        token_secret: secret.metadata.name.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
