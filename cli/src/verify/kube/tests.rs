use super::*;
use serde_json::Value;

fn clusters(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn seen(pod_ip: &str, cluster_ip: &str) -> ServerSeen {
    ServerSeen {
        pod_ip: Some(pod_ip.into()),
        cluster_ip: Some(cluster_ip.into()),
    }
}

#[test]
fn member_flags() {
    type Want = Result<(&'static str, &'static str), &'static str>;
    let cases: &[(&str, Want)] = &[
        ("a=/k/a", Ok(("a", "/k/a"))),
        ("east-1=k.yaml", Ok(("east-1", "k.yaml"))),
        ("a", Err("write CLUSTER=FILE")),
        ("A=/k", Err("DNS label")),
        ("1a=/k", Err("DNS label")),
        ("a-=/k", Err("DNS label")),
        ("a_b=/k", Err("DNS label")),
        ("averyveryverylongclusterid=/k", Err("DNS label")),
        ("a=", Err("no file")),
    ];
    for (flag, want) in cases {
        match (parse_member(flag), want) {
            (Ok(m), Ok((id, file))) => {
                assert_eq!(m.cluster, *id, "{flag}");
                assert_eq!(m.kubeconfig, PathBuf::from(file), "{flag}");
            }
            (Err(e), Err(part)) => assert!(e.contains(part), "{flag}: {e}"),
            (got, want) => panic!("{flag}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn run_ids_are_six_hex_digits() {
    let id = run_id();
    assert_eq!(id.len(), 6);
    assert!(
        id.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
    );
}

#[test]
fn one_server_and_two_clients_per_cluster() {
    let plan = plan_pods("r1", &clusters(&["a", "b", "c"]));
    let servers: Vec<_> = plan
        .servers
        .iter()
        .map(|s| {
            (
                s.cluster.as_str(),
                s.pod.as_str(),
                s.service.as_str(),
                s.headless.as_str(),
            )
        })
        .collect();
    assert_eq!(
        servers,
        [
            ("a", "cwv-r1-a-echo", "cwv-r1-a", "cwv-r1-a-pods"),
            ("b", "cwv-r1-b-echo", "cwv-r1-b", "cwv-r1-b-pods"),
            ("c", "cwv-r1-c-echo", "cwv-r1-c", "cwv-r1-c-pods"),
        ]
    );
    let clients: Vec<_> = plan
        .clients
        .iter()
        .map(|c| (c.cluster.as_str(), c.pod.as_str(), c.role))
        .collect();
    assert_eq!(
        clients,
        [
            ("a", "cwv-r1-a-gw", NodeRole::Gateway),
            ("a", "cwv-r1-a-worker", NodeRole::Worker),
            ("b", "cwv-r1-b-gw", NodeRole::Gateway),
            ("b", "cwv-r1-b-worker", NodeRole::Worker),
            ("c", "cwv-r1-c-gw", NodeRole::Gateway),
            ("c", "cwv-r1-c-worker", NodeRole::Worker),
        ]
    );
    // The longest name (20-character id, 6-character run) is a DNS label.
    let long = "a".repeat(20);
    let plan = plan_pods("abcdef", &[long]);
    assert!(plan.clients[1].pod.len() <= 63);
    assert!(plan.servers[0].headless.len() <= 63);
}

#[test]
fn probes_per_pair() {
    let plan = plan_pods("r", &clusters(&["a", "b"]));
    let seen = BTreeMap::from([
        ("a".to_string(), seen("10.244.1.5", "10.96.0.20")),
        ("b".to_string(), seen("10.245.1.6", "10.97.0.30")),
    ]);
    // (globalnet, client, [(to, kind, host, port, pod)])
    type Row = (
        &'static str,
        CheckKind,
        &'static str,
        u16,
        Option<&'static str>,
    );
    let cases: &[(bool, &str, &[Row])] = &[
        (
            false,
            "cwv-r-a-gw",
            &[
                (
                    "b",
                    CheckKind::PodToPod,
                    "10.245.1.6",
                    8080,
                    Some("cwv-r-b-echo"),
                ),
                ("b", CheckKind::PodToService, "10.97.0.30", 80, None),
                (
                    "b",
                    CheckKind::Dns,
                    "cwv-r-b.ns.svc.clusterset.local",
                    80,
                    None,
                ),
            ],
        ),
        (
            false,
            "cwv-r-b-worker",
            &[
                (
                    "a",
                    CheckKind::PodToPod,
                    "10.244.1.5",
                    8080,
                    Some("cwv-r-a-echo"),
                ),
                ("a", CheckKind::PodToService, "10.96.0.20", 80, None),
                (
                    "a",
                    CheckKind::Dns,
                    "cwv-r-a.ns.svc.clusterset.local",
                    80,
                    None,
                ),
            ],
        ),
        (
            true,
            "cwv-r-a-worker",
            &[
                (
                    "b",
                    CheckKind::PodToPod,
                    "echo.b.cwv-r-b-pods.ns.svc.clusterset.local",
                    8080,
                    Some("cwv-r-b-echo"),
                ),
                (
                    "b",
                    CheckKind::PodToService,
                    "b.cwv-r-b.ns.svc.clusterset.local",
                    80,
                    None,
                ),
                (
                    "b",
                    CheckKind::Dns,
                    "cwv-r-b.ns.svc.clusterset.local",
                    80,
                    None,
                ),
            ],
        ),
    ];
    for (globalnet, client, want) in cases {
        let all = plan_probes(&plan, &seen, "ns", *globalnet);
        assert_eq!(all.len(), 4, "every client has its probes");
        let got: Vec<Row> = all[*client]
            .iter()
            .map(|p| {
                assert_eq!(p.to, p.cluster);
                let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
                (
                    leak(&p.to),
                    p.kind,
                    leak(&p.host),
                    p.port,
                    p.pod.as_deref().map(leak),
                )
            })
            .collect();
        assert_eq!(&got, want, "globalnet {globalnet}, {client}");
        let ids: BTreeSet<u32> = all.values().flatten().map(|p| p.id).collect();
        assert_eq!(ids.len(), 12, "ids are unique in the run");
    }
}

#[test]
fn a_server_without_addresses_gives_probes_that_fail_in_the_client() {
    let plan = plan_pods("r", &clusters(&["a", "b"]));
    let probes = plan_probes(&plan, &BTreeMap::new(), "ns", false);
    let hosts: Vec<&str> = probes["cwv-r-a-gw"]
        .iter()
        .map(|p| p.host.as_str())
        .collect();
    assert_eq!(
        hosts,
        [
            "no-pod-ip.invalid",
            "no-cluster-ip.invalid",
            "cwv-r-b.ns.svc.clusterset.local"
        ]
    );
}

fn settings() -> Settings {
    let mut s = Settings::new("ns", "img:1", false, Duration::from_secs(30));
    s.run = "r".into();
    s
}

#[test]
fn objects_carry_the_run_label_and_the_placement() {
    let s = settings();
    let plan = plan_pods("r", &clusters(&["a", "b"]));
    let (pod, services, exports) = server_objects(&s, &plan.servers[0]).unwrap();
    let run = |l: &Option<BTreeMap<String, String>>| l.as_ref().unwrap()[RUN_LABEL].clone();
    assert_eq!(run(&pod.metadata.labels), "r");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[0].args.as_ref().unwrap()[..6],
        ["lab", "echo", "--cluster", "a", "--pod", "cwv-r-a-echo"]
    );
    assert_eq!(spec.subdomain.as_deref(), Some("cwv-r-a-pods"));
    for svc in &services {
        assert_eq!(run(&svc.metadata.labels), "r");
        assert_eq!(
            svc.spec.as_ref().unwrap().selector.as_ref().unwrap()[ROLE_LABEL],
            "echo"
        );
    }
    assert_eq!(
        services[1].spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    let names: Vec<_> = exports
        .iter()
        .map(|e| {
            assert_eq!(run(&e.metadata.labels), "r");
            e.metadata.name.clone().unwrap()
        })
        .collect();
    assert_eq!(names, ["cwv-r-a", "cwv-r-a-pods"]);

    let gw = client_pod(&s, &plan.clients[0], "true").unwrap();
    let spec = gw.spec.unwrap();
    assert_eq!(
        spec.node_selector.unwrap()[GATEWAY_NODE_LABEL],
        "true",
        "the gateway variant runs on a gateway node"
    );
    assert_eq!(
        spec.containers[0].command.as_ref().unwrap()[..2],
        ["bash", "-c"]
    );
    let worker = client_pod(&s, &plan.clients[1], "true").unwrap();
    let spec = worker.spec.unwrap();
    assert!(spec.node_selector.is_none());
    let terms = serde_json::to_value(spec.affinity).unwrap();
    assert_eq!(
        terms["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0],
        json!({"key": GATEWAY_NODE_LABEL, "operator": "NotIn", "values": ["true"]})
    );
    assert_eq!(run(&worker.metadata.labels), "r");
}

fn probe(id: u32, kind: CheckKind, host: &str, port: u16, pod: Option<&str>) -> KubeProbe {
    KubeProbe {
        id,
        to: "b".into(),
        kind,
        target: format!("t{id}"),
        host: host.into(),
        port,
        cluster: "b".into(),
        pod: pod.map(str::to_owned),
    }
}

fn source() -> Source {
    Source {
        cluster: "a".into(),
        pod: "cwv-r-a-gw".into(),
        node: "n1".into(),
        role: NodeRole::Gateway,
        netns: String::new(),
        nameserver: None,
    }
}

#[test]
fn log_lines_are_judged() {
    let log = r#"some noise
{"causeway_verify":1,"attempts":1,"ip":"10.0.0.5","lookup_us":0,"total_us":1500,"status":"HTTP/1.1 200 OK","reply":{"cluster":"b","pod":"cwv-r-b-echo","client":"1.2.3.4:5"},"error":""}
{"causeway_verify":2,"attempts":5,"ip":"10.0.0.6","lookup_us":0,"total_us":3000000,"status":"","reply":null,"error":"connecting to 10.0.0.6:80 timed out"}
{"causeway_verify":3,"attempts":1,"ip":"242.0.0.9","lookup_us":2000,"total_us":4000,"status":"HTTP/1.1 200 OK","reply":{"cluster":"a","pod":"x","client":"1.2.3.4:5"},"error":""}
{"causeway_verify":5,"attempts":1,"ip":"10.0.0.5","lookup_us":0,"total_us":100,"status":"HTTP/1.1 404 Not Found","reply":null,"error":""}
{"causeway_verify":6,"attempts":1,"ip":"242.0.0.9","lookup_us":2000,"total_us":4000,"status":"HTTP/1.1 200 OK","reply":{"cluster":"b","pod":"p","client":"c"},"error":""}
{"causeway_verify":7,"attempts":1,"ip":"10.0.0.5","lookup_us":0,"total_us":100,"status":"HTTP/1.1 200 OK","reply":{"cluster":"b","pod":"other","client":"c"},"error":""}
"#;
    let lines = parse_log(log);
    assert_eq!(lines.len(), 6);
    let name = "cwv-r-b.ns.svc.clusterset.local";
    let probes = [
        probe(
            1,
            CheckKind::PodToPod,
            "10.0.0.5",
            8080,
            Some("cwv-r-b-echo"),
        ),
        probe(2, CheckKind::PodToService, "10.0.0.6", 80, None),
        probe(3, CheckKind::Dns, name, 80, None),
        probe(4, CheckKind::Dns, name, 80, None),
        probe(5, CheckKind::PodToService, "10.0.0.5", 80, None),
        probe(6, CheckKind::Dns, name, 80, None),
        probe(
            7,
            CheckKind::PodToPod,
            "10.0.0.5",
            8080,
            Some("cwv-r-b-echo"),
        ),
    ];
    let results = judge(&source(), &probes, &lines, "no result in the log");
    let got: Vec<(Outcome, &str)> = results
        .iter()
        .map(|r| (r.outcome, r.detail.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Outcome::Pass, "answered by b/cwv-r-b-echo"),
            (Outcome::Fail, "connecting to 10.0.0.6:80 timed out"),
            (
                Outcome::Fail,
                "cwv-r-b.ns.svc.clusterset.local -> 242.0.0.9: answered by cluster a (x), not b: the address leads to the wrong cluster"
            ),
            (Outcome::Fail, "no result in the log"),
            (Outcome::Fail, "10.0.0.5:80 answered HTTP/1.1 404 Not Found"),
            (
                Outcome::Pass,
                "cwv-r-b.ns.svc.clusterset.local -> 242.0.0.9 in 2.0 ms, answered by b/p"
            ),
            (
                Outcome::Fail,
                "answered by b/other, not cwv-r-b-echo: the global IP leads to another pod"
            ),
        ]
    );
    assert_eq!(results[0].millis, Some(1.5));
    assert_eq!(results[1].attempts, 5);
    assert!(results.iter().all(|r| r.from.pod == "cwv-r-a-gw"));
}

/// The script, run by bash against the lab's echo server on loopback:
/// one answered probe, one refused port, one name that resolves (to
/// loopback) and one that does not. `getent` is a stand-in on PATH, so no
/// query leaves the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_script_probes_and_prints_one_line_each() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let server = tokio::spawn(crate::lab::echo::serve(
        addr,
        None,
        "b".into(),
        "cwv-r-b-echo".into(),
    ));
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let probes = [
        probe(
            1,
            CheckKind::PodToPod,
            "127.0.0.1",
            addr.port(),
            Some("cwv-r-b-echo"),
        ),
        probe(2, CheckKind::PodToService, "127.0.0.1", closed_port, None),
        probe(3, CheckKind::Dns, "no-such-name.invalid", 80, None),
        probe(4, CheckKind::Dns, "echo.b.test", addr.port(), None),
    ];
    let bin = tempfile::tempdir().unwrap();
    let getent = bin.path().join("getent");
    std::fs::write(
        &getent,
        "#!/bin/sh\n[ \"$1 $2\" = \"ahostsv4 echo.b.test.\" ] || exit 2\necho \"127.0.0.1       STREAM $2\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&getent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = client_script(&probes, 2, 0);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("PATH", path)
            .output(),
    )
    .await
    .expect("the script ends within its bound")
    .expect("bash runs");
    server.abort();
    let log = String::from_utf8_lossy(&out.stdout);
    let lines = parse_log(&log);
    assert_eq!(lines.len(), 4, "one line per probe: {log}");
    let results = judge(&source(), &probes, &lines, "missing");
    assert_eq!(results[0].outcome, Outcome::Pass, "{log}");
    assert_eq!(results[0].detail, "answered by b/cwv-r-b-echo");
    assert!(results[0].millis.is_some_and(|m| m > 0.0 && m < 3000.0));
    assert_eq!(results[1].outcome, Outcome::Fail);
    assert!(
        results[1].detail.contains("refused"),
        "{}",
        results[1].detail
    );
    assert_eq!(results[1].attempts, 2);
    assert_eq!(results[2].outcome, Outcome::Fail);
    assert!(
        results[2]
            .detail
            .contains("no address for no-such-name.invalid"),
        "{}",
        results[2].detail
    );
    assert_eq!(results[3].outcome, Outcome::Pass, "{log}");
    assert!(
        results[3]
            .detail
            .starts_with("echo.b.test -> 127.0.0.1 in "),
        "{}",
        results[3].detail
    );
}

#[test]
fn a_pod_that_is_not_ready_says_why() {
    let pod = |status: Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    };
    let cases = [
        (json!({}), false, "Pending"),
        (
            json!({"phase": "Pending", "containerStatuses": [{"name": "echo", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}),
            false,
            "Pending: ImagePullBackOff no such image",
        ),
        (
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "message": "0/3 nodes match node selector"}]}),
            false,
            "Pending: unschedulable: 0/3 nodes match node selector",
        ),
        (
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}),
            false,
            "Running (not Ready: the echo server does not accept connections on its port)",
        ),
        (
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
            true,
            "Running",
        ),
    ];
    for (status, want_ready, want_state) in cases {
        let p = pod(status);
        assert_eq!(ready(&p), want_ready, "{want_state}");
        assert_eq!(pod_state(&p), want_state);
    }
}
