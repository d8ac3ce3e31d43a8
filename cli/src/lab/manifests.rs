//! The Kubernetes objects a lab cluster declares, written as YAML into the
//! cluster's manifest directory, which the cluster source reads as it would
//! read an API server.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::plan::{ClusterPlan, ServicePlan};

/// Writes every manifest of `cluster` into `dir`.
pub fn write(cluster: &ClusterPlan, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut files: Vec<(String, Vec<Value>)> = vec![("nodes.yaml".into(), nodes(cluster))];
    for svc in &cluster.services {
        files.push((
            format!("service-{}-{}.yaml", svc.namespace, svc.name),
            vec![service(svc), endpoint_slice(cluster, svc)],
        ));
    }
    for (name, docs) in files {
        let path = dir.join(name);
        fs::write(&path, to_yaml(&docs)?).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// A multi-document YAML stream.
fn to_yaml(docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok(out)
}

fn nodes(cluster: &ClusterPlan) -> Vec<Value> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let mut labels = json!({"kubernetes.io/hostname": n.name});
            let mut addresses = vec![json!({"type": "InternalIP", "address": n.ip.to_string()})];
            if let Some(wan) = n.wan_ip {
                labels["causeway.io/gateway"] = json!("true");
                addresses.push(json!({"type": "ExternalIP", "address": wan.to_string()}));
            }
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n.name, "labels": labels},
                "spec": {"podCIDR": n.pod_slice.to_string(), "podCIDRs": [n.pod_slice.to_string()]},
                "status": {"addresses": addresses},
            })
        })
        .collect()
}

fn service(svc: &ServicePlan) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": svc.cluster_ip.to_string(),
            "clusterIPs": [svc.cluster_ip.to_string()],
            "selector": {"app": svc.app},
            "ports": [{"name": "http", "protocol": "TCP", "port": svc.port, "targetPort": svc.target_port}],
        },
    })
}

/// The slice the endpoints controller would write for `svc`: one ready
/// endpoint per selected pod.
fn endpoint_slice(cluster: &ClusterPlan, svc: &ServicePlan) -> Value {
    let endpoints: Vec<Value> = cluster
        .pods
        .iter()
        .filter(|p| p.app == svc.app)
        .map(|p| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": p.node,
                "targetRef": {"kind": "Pod", "namespace": svc.namespace, "name": p.name},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-lab", svc.name),
            "namespace": svc.namespace,
            "labels": {
                "kubernetes.io/service-name": svc.name,
                "endpointslice.kubernetes.io/managed-by": "lab.causeway.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": svc.target_port}],
        "endpoints": endpoints,
    })
}
