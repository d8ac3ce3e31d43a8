//! Join on a Kubernetes broker against kube's mock service.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::Handle;

use super::*;
use crate::join::GlobalCidrRequest;

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn request(id: &str) -> JoinRequest {
    JoinRequest {
        cluster: ClusterId::new(id).unwrap(),
        pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        global_cidr: GlobalCidrRequest::Auto,
    }
}

fn registry_cm(rv: &str, clusters: &[(&str, &str)]) -> Value {
    let mut reg = Registry::default();
    for (id, cidr) in clusters {
        reg.clusters.insert(
            ClusterId::new(*id).unwrap(),
            RegisteredCluster {
                global_cidr: Some(cidr.parse().unwrap()),
                pod_cidrs: vec![],
                service_cidrs: vec![],
            },
        );
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": REGISTRY_CONFIGMAP, "namespace": "broker", "resourceVersion": rv},
           "data": {REGISTRY_KEY: serde_json::to_string(&reg).unwrap()}})
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// Answers requests with `answer` (given method, path and body) and records them.
async fn serve(
    mut h: MockHandle,
    mut answer: impl FnMut(&Method, &str, &Value) -> (u16, Value),
) -> Vec<(Method, String, Value)> {
    let mut seen = Vec::new();
    while let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_millis(500), h.next_request()).await
    {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let path = parts.uri.path().to_owned();
        let (code, reply) = answer(&parts.method, &path, &v);
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        seen.push((parts.method, path, v));
    }
    seen
}

const CM: &str = "/api/v1/namespaces/broker/configmaps";

#[tokio::test]
async fn first_join_creates_registry_access_and_cluster_record() {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let join = tokio::spawn(async move { kube_join(client, "broker", &request("a")).await });
    let seen = serve(h, |m, p, body| match (m, p) {
        (&Method::GET, _) => (404, status(404, "NotFound")),
        _ if p.starts_with("/apis/causeway.io") => {
            let mut b = body.clone();
            b["metadata"]["resourceVersion"] = json!("3");
            (200, b)
        }
        _ => (201, body.clone()),
    })
    .await;
    let out = join.await.unwrap().unwrap();
    assert_eq!(out.cluster.global_cidr.unwrap().to_string(), "242.0.0.0/16");
    assert_eq!(out.service_account, "causeway-cluster-a");
    assert_eq!(out.token_secret, "causeway-cluster-a-token");

    let calls: Vec<(Method, &str)> = seen
        .iter()
        .map(|(m, p, _)| (m.clone(), p.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (
                Method::GET,
                "/api/v1/namespaces/broker/configmaps/causeway-registry"
            ),
            (Method::POST, CM),
            (
                Method::PATCH,
                "/api/v1/namespaces/broker/serviceaccounts/causeway-cluster-a"
            ),
            (
                Method::PATCH,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/broker/roles/causeway-cluster-a"
            ),
            (
                Method::PATCH,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/broker/rolebindings/causeway-cluster-a"
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/broker/secrets/causeway-cluster-a-token"
            ),
            (
                Method::PATCH,
                "/apis/causeway.io/v1alpha1/namespaces/broker/clusters/a"
            ),
        ]
    );
    let reg: Registry =
        serde_json::from_str(seen[1].2["data"][REGISTRY_KEY].as_str().unwrap()).unwrap();
    assert!(reg.clusters.contains_key(&ClusterId::new("a").unwrap()));
    let role = &seen[3].2;
    assert_eq!(role["rules"][0]["apiGroups"], json!(["causeway.io"]));
    assert_eq!(
        role["rules"].as_array().unwrap().len(),
        1,
        "nothing but the records"
    );
    assert_eq!(seen[6].2["metadata"]["labels"][OWNER_LABEL], "a");
    assert_eq!(seen[6].2["spec"]["globalCidr"], "242.0.0.0/16");
}

#[tokio::test]
async fn a_conflicting_registry_write_is_retried_against_the_new_registry() {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let join = tokio::spawn(async move { kube_join(client, "broker", &request("b")).await });
    let mut gets = 0;
    let mut puts = 0;
    let seen = serve(h, move |m, p, body| match *m {
        Method::GET => {
            gets += 1;
            if gets == 1 {
                (200, registry_cm("5", &[("a", "242.0.0.0/16")]))
            } else {
                // c joined in between.
                (
                    200,
                    registry_cm("6", &[("a", "242.0.0.0/16"), ("c", "242.1.0.0/16")]),
                )
            }
        }
        Method::PUT => {
            puts += 1;
            if puts == 1 {
                (409, status(409, "Conflict"))
            } else {
                (200, body.clone())
            }
        }
        _ if p.starts_with("/apis/causeway.io") => (200, body.clone()),
        _ => (200, body.clone()),
    })
    .await;
    let out = join.await.unwrap().unwrap();
    assert_eq!(out.cluster.global_cidr.unwrap().to_string(), "242.2.0.0/16");
    let puts: Vec<&Value> = seen
        .iter()
        .filter(|(m, _, _)| *m == Method::PUT)
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0]["metadata"]["resourceVersion"], "5");
    assert_eq!(puts[1]["metadata"]["resourceVersion"], "6");
    let reg: Registry =
        serde_json::from_str(puts[1]["data"][REGISTRY_KEY].as_str().unwrap()).unwrap();
    assert_eq!(reg.clusters.len(), 3);
}

#[tokio::test]
async fn a_taken_id_is_refused_before_anything_is_written() {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let join = tokio::spawn(async move { kube_join(client, "broker", &request("a")).await });
    let seen = serve(h, |_, _, _| {
        (200, registry_cm("5", &[("a", "242.0.0.0/16")]))
    })
    .await;
    let e = join.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::ClusterIdTaken { .. }), "{e}");
    assert_eq!(seen.len(), 1, "only the registry was read");
}

#[test]
fn policy_binds_cluster_accounts_to_their_own_records() {
    let (policy, binding) = broker_policy("broker");
    let p = serde_json::to_value(&policy).unwrap();
    let cond = p["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        cond.contains("system:serviceaccount:broker:causeway-cluster-"),
        "{cond}"
    );
    let checks: Vec<&str> = p["spec"]["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["expression"].as_str().unwrap())
        .collect();
    assert!(
        checks
            .iter()
            .any(|c| c.contains("object.metadata.labels['causeway.io/cluster']"))
    );
    assert!(checks.iter().any(|c| c.contains("oldObject")));
    assert!(checks.iter().any(|c| c.contains("object.spec.cluster")));
    let b = serde_json::to_value(&binding).unwrap();
    assert_eq!(b["spec"]["policyName"], POLICY_NAME);
    assert_eq!(b["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(
        b["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "broker"
    );
}

#[tokio::test]
async fn broker_init_applies_the_policy_and_keeps_an_existing_registry() {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let init =
        tokio::spawn(async move { kube_broker_init(client, "broker", &Registry::default()).await });
    let seen = serve(h, |m, _, body| match *m {
        Method::POST => (409, status(409, "AlreadyExists")),
        _ => (200, body.clone()),
    })
    .await;
    init.await.unwrap().unwrap();
    let calls: Vec<(Method, &str)> = seen
        .iter()
        .map(|(m, p, _)| (m.clone(), p.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (
                Method::PATCH,
                "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/causeway-broker-own-records"
            ),
            (
                Method::PATCH,
                "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/causeway-broker-own-records"
            ),
            (Method::POST, CM),
        ]
    );
    assert_eq!(seen[0].2["kind"], "ValidatingAdmissionPolicy");
}
