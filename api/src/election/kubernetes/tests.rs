//! The Lease elector against kube's mock service: the exact requests of
//! acquire, renew, take-over and release.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use super::*;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/causeway/leases";

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn config(retry_ms: u64) -> LeaseConfig {
    LeaseConfig {
        retry_period: Duration::from_millis(retry_ms),
        ..LeaseConfig::new("causeway", "gateway", "a")
    }
}

fn elector(cfg: LeaseConfig) -> (KubeLeaseElector, MockHandle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        KubeLeaseElector::campaign(Client::new(svc, "default"), cfg),
        handle,
    )
}

async fn next(h: &mut MockHandle) -> (Method, String, Value, SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .expect("a request in time")
        .expect("client alive");
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (parts.method, parts.uri.path().to_owned(), v, send)
}

fn reply(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "leases \"gateway\" not found", "reason": "NotFound", "code": 404})
}

fn lease(holder: &str, rv: &str, renew: &str, transitions: i32, secs: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "gateway", "namespace": "causeway", "resourceVersion": rv},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": secs,
                    "acquireTime": "2026-01-01T00:00:00.000000Z",
                    "renewTime": renew, "leaseTransitions": transitions}})
}

fn with_rv(mut v: Value, rv: &str) -> Value {
    v["metadata"]["resourceVersion"] = json!(rv);
    v
}

#[tokio::test]
async fn acquire_renew_and_release_requests() {
    let (e, mut h) = elector(config(100));
    let mut active = e.active();

    let (m, p, _, send) = next(&mut h).await;
    assert_eq!(
        (m, p.as_str()),
        (Method::GET, format!("{PATH}/gateway").as_str())
    );
    reply(send, 404, &not_found());

    let (m, p, body, send) = next(&mut h).await;
    assert_eq!((m, p.as_str()), (Method::POST, PATH));
    assert_eq!(body["spec"]["holderIdentity"], "a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 2);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert!(body["spec"]["renewTime"].is_string());
    let created = with_rv(body, "1");
    reply(send, 201, &created);
    tokio::time::timeout(Duration::from_secs(1), active.wait_for(|a| *a))
        .await
        .unwrap()
        .unwrap();

    // Renew: read, then replace with the read resourceVersion and a newer renewTime.
    let (m, _, _, send) = next(&mut h).await;
    assert_eq!(m, Method::GET);
    reply(send, 200, &created);
    let (m, p, body, send) = next(&mut h).await;
    assert_eq!(
        (m, p.as_str()),
        (Method::PUT, format!("{PATH}/gateway").as_str())
    );
    assert_eq!(body["metadata"]["resourceVersion"], "1");
    assert_eq!(body["spec"]["holderIdentity"], "a");
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert!(body["spec"]["renewTime"].as_str() > created["spec"]["renewTime"].as_str());
    let mut current = with_rv(body, "2");
    reply(send, 200, &current);

    // Resign: active ends at once, then the holder is cleared.
    let resign = tokio::spawn(async move {
        e.resign().await.unwrap();
        e
    });
    tokio::time::timeout(Duration::from_secs(1), active.wait_for(|a| !*a))
        .await
        .unwrap()
        .unwrap();
    let mut rv = 2;
    loop {
        let (m, _, body, send) = next(&mut h).await;
        match m {
            Method::GET => reply(send, 200, &current),
            Method::PUT if body["spec"]["holderIdentity"] == "a" => {
                // A renew that raced the resign.
                rv += 1;
                current = with_rv(body, &rv.to_string());
                reply(send, 200, &current);
            }
            Method::PUT => {
                assert!(body["spec"]["holderIdentity"].is_null(), "{body}");
                assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
                assert_eq!(body["metadata"]["resourceVersion"], rv.to_string());
                reply(send, 200, &body);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let e = resign.await.unwrap();
    assert!(!*e.active().borrow());
}

#[tokio::test]
async fn standby_takes_over_only_after_the_lease_sat_unrenewed_for_its_duration() {
    let (e, mut h) = elector(config(100));
    let held = lease("b", "5", "2026-01-01T00:00:00.000000Z", 3, 1);
    let start = std::time::Instant::now();
    loop {
        let (m, _, body, send) = next(&mut h).await;
        match m {
            Method::GET => {
                reply(send, 200, &held);
                if start.elapsed() < Duration::from_millis(500) {
                    assert!(!*e.active().borrow());
                }
            }
            Method::PUT => {
                let waited = start.elapsed();
                assert!(
                    waited >= Duration::from_secs(1),
                    "took over after {waited:?}"
                );
                assert_eq!(body["spec"]["holderIdentity"], "a");
                assert_eq!(body["spec"]["leaseTransitions"], 4);
                assert_eq!(body["spec"]["leaseDurationSeconds"], 2);
                assert_eq!(body["metadata"]["resourceVersion"], "5");
                reply(send, 200, &with_rv(body, "6"));
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    tokio::time::timeout(Duration::from_secs(1), e.active().wait_for(|a| *a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.holder().borrow().as_deref(), Some("a"));
}

#[tokio::test]
async fn a_renewed_lease_is_never_taken_over_and_conflicts_lose() {
    let (e, mut h) = elector(config(50));
    let start = std::time::Instant::now();
    let mut n = 0;
    // b renews on every read: a must only ever GET.
    while start.elapsed() < Duration::from_millis(1500) {
        let (m, _, _, send) = next(&mut h).await;
        assert_eq!(m, Method::GET);
        n += 1;
        let renew = format!("2026-01-01T00:00:{:02}.000000Z", n % 60);
        reply(send, 200, &lease("b", "5", &renew, 0, 1));
    }
    assert!(!*e.active().borrow());
    // Now b stops renewing; a's take-over meets a conflict (someone else won).
    let fixed = lease("b", "7", "2026-01-01T00:01:00.000000Z", 0, 1);
    loop {
        let (m, _, _, send) = next(&mut h).await;
        match m {
            Method::GET => reply(send, 200, &fixed),
            Method::PUT => {
                reply(
                    send,
                    409,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "conflict", "reason": "Conflict", "code": 409}),
                );
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!*e.active().borrow(), "a lost the race and must stand by");
}

#[tokio::test]
async fn failing_renewals_end_active_status_within_the_renew_deadline() {
    let (e, mut h) = elector(config(100));
    let (_, _, _, send) = next(&mut h).await;
    reply(send, 404, &not_found());
    let (_, _, body, send) = next(&mut h).await;
    reply(send, 201, &with_rv(body, "1"));
    let mut active = e.active();
    tokio::time::timeout(Duration::from_secs(1), active.wait_for(|a| *a))
        .await
        .unwrap()
        .unwrap();
    let on = std::time::Instant::now();
    // The API server stops answering: requests hang.
    let mut pending = Vec::new();
    let off = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            tokio::select! {
                r = h.next_request() => pending.push(r),
                r = active.wait_for(|a| !*a) => { r.unwrap(); break on.elapsed(); }
            }
        }
    })
    .await
    .expect("active status ended");
    assert!(
        off <= Duration::from_millis(1500 + 200),
        "active for {off:?} without a renew"
    );
}
