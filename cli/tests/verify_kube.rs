//! `causeway verify` on Kubernetes, against two fake API servers (kube's
//! mock service): the objects it creates carry the run label and the node
//! placement, the clients' logs become the report, and everything it
//! created is deleted: after a good run, after a refused create, and on an
//! interrupt. The fake answers a Pod's `/log` with the Pod itself, so a thin
//! wrapper reads the log through the real client (the request is made) and
//! then answers what a client would have printed, from the script the Pod
//! was created with.

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_api::testing::FakeKube;
use causeway_cli::verify::kube::{
    GATEWAY_NODE_LABEL, KubeMember, MemberApi, RUN_LABEL, Settings, run,
};
use causeway_cli::verify::{CheckKind, NodeRole, Outcome, render};
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{Value, json};

const NS: &str = "causeway-verify";

/// Who answers a host in the fake clusterset: (cluster, pod).
type Answers = BTreeMap<String, (String, String)>;

/// [`KubeMember`] with logs made up from the client's script.
#[derive(Clone)]
struct Member {
    fake: FakeKube,
    real: KubeMember,
    answers: Answers,
}

fn log_for(script: &str, answers: &Answers) -> String {
    let mut out = String::from("client starting\n");
    for line in script.lines().filter(|l| l.starts_with("probe ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (id, host) = (f[1], f[2]);
        let ip = if host.chars().any(|c| c.is_ascii_lowercase()) {
            "242.1.0.7"
        } else {
            host
        };
        let line = match answers.get(host) {
            Some((cluster, pod)) => json!({
                "causeway_verify": id.parse::<u32>().unwrap(), "attempts": 1, "ip": ip,
                "lookup_us": 900, "total_us": 2500, "status": "HTTP/1.1 200 OK",
                "reply": {"cluster": cluster, "pod": pod, "client": "10.0.0.1:40000"},
                "error": "",
            }),
            None => json!({
                "causeway_verify": id.parse::<u32>().unwrap(), "attempts": 5, "ip": ip,
                "lookup_us": 0, "total_us": 3_000_000, "status": "", "reply": null,
                "error": format!("connecting to {ip}:80 or its answer timed out after 3 s"),
            }),
        };
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

impl MemberApi for Member {
    async fn create_pod(&self, ns: &str, pod: &Pod) -> anyhow::Result<()> {
        self.real.create_pod(ns, pod).await
    }
    async fn create_service(&self, ns: &str, svc: &Service) -> anyhow::Result<()> {
        self.real.create_service(ns, svc).await
    }
    async fn create_export(
        &self,
        ns: &str,
        export: &causeway_api::mcs::ServiceExport,
    ) -> anyhow::Result<()> {
        self.real.create_export(ns, export).await
    }
    async fn pod(&self, ns: &str, name: &str) -> anyhow::Result<Option<Pod>> {
        self.real.pod(ns, name).await
    }
    async fn service(&self, ns: &str, name: &str) -> anyhow::Result<Option<Service>> {
        self.real.service(ns, name).await
    }
    async fn logs(&self, ns: &str, name: &str) -> anyhow::Result<String> {
        self.real.logs(ns, name).await?;
        let pod = self.fake.get("", "pods", ns, name).expect("the client pod");
        let script = pod["spec"]["containers"][0]["command"][2]
            .as_str()
            .expect("bash -c SCRIPT")
            .to_owned();
        Ok(log_for(&script, &self.answers))
    }
    async fn delete_labelled(&self, ns: &str, key: &str, value: &str) -> anyhow::Result<usize> {
        self.real.delete_labelled(ns, key, value).await
    }
}

/// A fake cluster whose kubelet starts echo pods (with `pod_ip`), finishes
/// client pods on a node, and whose Services get `cluster_ip`.
fn cluster(pod_ip: &'static str, cluster_ip: &'static str, start: bool) -> FakeKube {
    let fake = FakeKube::new();
    if start {
        fake.on_write(
            "pods",
            std::sync::Arc::new(move |pod: &mut Value| {
                match pod["metadata"]["labels"]["causeway.io/verify-role"].as_str() {
                    Some("echo") => {
                        pod["status"] = json!({"phase": "Running", "podIP": pod_ip,
                        "conditions": [{"type": "Ready", "status": "True"}]});
                        pod["spec"]["nodeName"] = json!("worker-1");
                    }
                    _ => {
                        pod["status"] = json!({"phase": "Succeeded"});
                        let on_gw = pod["spec"]["nodeSelector"][GATEWAY_NODE_LABEL] == "true";
                        pod["spec"]["nodeName"] = json!(if on_gw { "gw-0" } else { "worker-1" });
                    }
                }
            }),
        );
    }
    fake.on_write(
        "services",
        std::sync::Arc::new(move |svc: &mut Value| {
            if svc["spec"]["clusterIP"] != "None" {
                svc["spec"]["clusterIP"] = json!(cluster_ip);
            }
        }),
    );
    // Not verify's: must survive its cleanup.
    fake.insert(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "someone-elses", "namespace": NS, "labels": {"app": "x"}}}),
    );
    fake.insert(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "other-run", "namespace": NS, "labels": {RUN_LABEL: "zzzzzz"}}}),
    );
    fake
}

fn settings() -> Settings {
    let mut s = Settings::new(
        NS,
        "registry.test/causeway:1",
        false,
        Duration::from_secs(2),
    );
    s.run = "abc123".into();
    s.poll = Duration::from_millis(10);
    s
}

fn member(fake: &FakeKube, answers: &Answers) -> Member {
    Member {
        fake: fake.clone(),
        real: KubeMember {
            client: fake.client(),
        },
        answers: answers.clone(),
    }
}

/// Names of verify's objects left in a fake.
fn leftovers(fake: &FakeKube) -> Vec<String> {
    let mut left = Vec::new();
    for (group, resource) in [
        ("", "pods"),
        ("", "services"),
        ("multicluster.x-k8s.io", "serviceexports"),
    ] {
        for o in fake.list(group, resource) {
            if o["metadata"]["labels"][RUN_LABEL] == "abc123" {
                left.push(format!("{resource}/{}", o["metadata"]["name"]));
            }
        }
    }
    left
}

fn foreign_pods_survive(fake: &FakeKube) {
    assert!(fake.get("", "pods", NS, "someone-elses").is_some());
    assert!(fake.get("", "pods", NS, "other-run").is_some());
}

#[tokio::test]
async fn a_run_creates_labelled_objects_reports_the_logs_and_deletes_everything() {
    let a = cluster("10.244.1.5", "10.96.0.20", true);
    let b = cluster("10.244.1.5", "10.96.0.30", true);
    // a's pod and Service answer; b's Service leads to the wrong cluster;
    // the clusterset names answer their own cluster.
    let answers: Answers = [
        ("10.244.1.5", "a", "cwv-abc123-a-echo"),
        ("10.96.0.20", "a", "cwv-abc123-a-echo"),
        ("10.96.0.30", "a", "cwv-abc123-a-echo"),
        (
            "cwv-abc123-a.causeway-verify.svc.clusterset.local",
            "a",
            "cwv-abc123-a-echo",
        ),
        (
            "cwv-abc123-b.causeway-verify.svc.clusterset.local",
            "b",
            "cwv-abc123-b-echo",
        ),
    ]
    .into_iter()
    .map(|(h, c, p)| (h.to_owned(), (c.to_owned(), p.to_owned())))
    .collect();
    let members = vec![
        ("a".to_string(), member(&a, &answers)),
        ("b".to_string(), member(&b, &answers)),
    ];
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run(&members, &settings(), std::future::pending()),
    )
    .await
    .expect("bounded")
    .expect("the run completes");

    // What was created, with the run label and the placement.
    for (fake, c) in [(&a, "a"), (&b, "b")] {
        let creates: Vec<Value> = fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.body)
            .collect();
        let names: Vec<String> = creates
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                format!("Pod/cwv-abc123-{c}-echo"),
                format!("Service/cwv-abc123-{c}"),
                format!("Service/cwv-abc123-{c}-pods"),
                format!("ServiceExport/cwv-abc123-{c}"),
                format!("ServiceExport/cwv-abc123-{c}-pods"),
                format!("Pod/cwv-abc123-{c}-gw"),
                format!("Pod/cwv-abc123-{c}-worker"),
            ]
        );
        for o in &creates {
            assert_eq!(o["metadata"]["labels"][RUN_LABEL], "abc123", "{o}");
            assert_eq!(o["metadata"]["namespace"], NS);
        }
        assert_eq!(
            creates[5]["spec"]["nodeSelector"][GATEWAY_NODE_LABEL],
            "true"
        );
        assert_eq!(
            creates[6]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0]["operator"],
            "NotIn"
        );
        assert_eq!(
            creates[0]["spec"]["containers"][0]["image"],
            "registry.test/causeway:1"
        );
        let logs: Vec<String> = fake
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/log"))
            .map(|r| r.path)
            .collect();
        assert_eq!(
            logs,
            [
                format!("/api/v1/namespaces/{NS}/pods/cwv-abc123-{c}-gw/log"),
                format!("/api/v1/namespaces/{NS}/pods/cwv-abc123-{c}-worker/log"),
            ]
        );
        assert_eq!(leftovers(fake), Vec::<String>::new(), "cluster {c}");
        foreign_pods_survive(fake);
    }

    // The report: 2 clusters x 2 clients x 3 checks.
    assert_eq!(report.checks.len(), 12);
    let line = |from: &str, role: NodeRole, kind: CheckKind| {
        report
            .checks
            .iter()
            .find(|c| c.from.cluster == from && c.from.role == role && c.check == kind)
            .unwrap()
    };
    let ok = line("b", NodeRole::Gateway, CheckKind::PodToPod);
    assert_eq!(ok.outcome, Outcome::Pass);
    assert_eq!(ok.detail, "answered by a/cwv-abc123-a-echo");
    assert_eq!(ok.from.node, "gw-0");
    assert_eq!(ok.millis, Some(2.5));
    let wrong = line("a", NodeRole::Worker, CheckKind::PodToService);
    assert_eq!(wrong.outcome, Outcome::Fail);
    assert!(
        wrong.detail.contains("answered by cluster a"),
        "{}",
        wrong.detail
    );
    assert_eq!(wrong.from.node, "worker-1");
    let dns = line("a", NodeRole::Gateway, CheckKind::Dns);
    assert_eq!(dns.outcome, Outcome::Pass, "{}", dns.detail);
    assert!(dns.detail.contains("-> 242.1.0.7"), "{}", dns.detail);
    // a's probe of b's pod IP (the same as a's own: overlapping CIDRs
    // without --globalnet) is answered by a: a failure, as it should be.
    assert_eq!(
        line("a", NodeRole::Gateway, CheckKind::PodToPod).outcome,
        Outcome::Fail
    );
    assert_eq!(report.passed, 8);
    assert_eq!(report.failed, 4);
    let table = render(&report);
    assert!(table.contains("8 passed, 4 failed, 0 skipped"), "{table}");
    assert!(table.contains("cwv-abc123-b-gw (gw)"), "{table}");
}

#[tokio::test]
async fn a_refused_create_fails_with_a_hint_and_leaves_nothing() {
    let a = cluster("10.244.1.5", "10.96.0.20", true);
    let b = cluster("10.244.1.6", "10.96.0.30", true);
    b.fail(
        Some("create"),
        "serviceexports",
        404,
        "the server could not find the requested resource",
    );
    let members = vec![
        ("a".to_string(), member(&a, &Answers::new())),
        ("b".to_string(), member(&b, &Answers::new())),
    ];
    let err = run(&members, &settings(), std::future::pending())
        .await
        .expect_err("b has no ServiceExport CRD");
    let msg = format!("{err:#}");
    assert!(msg.contains("cluster b"), "{msg}");
    assert!(msg.contains("causeway crdgen"), "{msg}");
    for fake in [&a, &b] {
        assert_eq!(leftovers(fake), Vec::<String>::new());
        foreign_pods_survive(fake);
        assert!(
            fake.requests().iter().any(|r| r.method == "DELETE"),
            "cleanup ran"
        );
    }
}

#[tokio::test]
async fn an_interrupt_while_waiting_deletes_everything() {
    // Echo pods never start here: verify waits until interrupted.
    let a = cluster("10.244.1.5", "10.96.0.20", false);
    let b = cluster("10.244.1.6", "10.96.0.30", false);
    let members = vec![
        ("a".to_string(), member(&a, &Answers::new())),
        ("b".to_string(), member(&b, &Answers::new())),
    ];
    let mut s = settings();
    s.timeout = Duration::from_secs(20);
    let started = std::time::Instant::now();
    let err = run(&members, &s, tokio::time::sleep(Duration::from_millis(300)))
        .await
        .expect_err("interrupted");
    assert!(format!("{err:#}").contains("interrupted"));
    assert!(started.elapsed() < Duration::from_secs(10));
    for fake in [&a, &b] {
        assert!(
            fake.requests()
                .iter()
                .any(|r| r.method == "POST" && r.path.ends_with("/pods"))
        );
        assert_eq!(leftovers(fake), Vec::<String>::new());
        foreign_pods_survive(fake);
    }
}

#[tokio::test]
async fn a_server_that_never_starts_is_an_error_within_the_timeout() {
    let a = cluster("10.244.1.5", "10.96.0.20", false);
    let b = cluster("10.244.1.6", "10.96.0.30", false);
    let members = vec![
        ("a".to_string(), member(&a, &Answers::new())),
        ("b".to_string(), member(&b, &Answers::new())),
    ];
    let mut s = settings();
    s.timeout = Duration::from_millis(300);
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        run(&members, &s, std::future::pending()),
    )
    .await
    .expect("bounded")
    .expect_err("never runs");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("cwv-abc123-a-echo in cluster a did not become ready"),
        "{msg}"
    );
    assert!(msg.contains("registry.test/causeway:1"), "{msg}");
    for fake in [&a, &b] {
        assert_eq!(leftovers(fake), Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_dropped_run_still_deletes_everything() {
    let a = cluster("10.244.1.5", "10.96.0.20", false);
    let b = cluster("10.244.1.6", "10.96.0.30", false);
    let members = vec![
        ("a".to_string(), member(&a, &Answers::new())),
        ("b".to_string(), member(&b, &Answers::new())),
    ];
    let mut s = settings();
    s.timeout = Duration::from_secs(20);
    // The caller gives up while verify waits for its echo servers.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        run(&members, &s, std::future::pending()),
    )
    .await;
    assert!(gave_up.is_err());
    assert!(!leftovers(&a).is_empty(), "the run had created objects");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && !(leftovers(&a).is_empty() && leftovers(&b).is_empty())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for fake in [&a, &b] {
        assert_eq!(leftovers(fake), Vec::<String>::new());
        foreign_pods_survive(fake);
    }
}
