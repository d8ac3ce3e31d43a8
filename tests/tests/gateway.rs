//! Clusters with distinct CIDRs joined by the gateways' WireGuard tunnels
//! (embedded userspace backend) and the route agents: pod to pod across
//! clusters, without NAT, from gateway and worker nodes.

use causeway_tests::{Lab, ok};

fn pod_ip(lab: &Lab, cluster: usize, pod: &str) -> String {
    let status = lab.status();
    status["clusters"][cluster]["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .map(|p| p["ip"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no pod {pod}"))
}

#[test]
fn pods_reach_pods_of_another_cluster_by_pod_ip_without_nat() {
    let lab = Lab::up("tun", &["--distinct-cidrs"]);
    for (from, to, to_cluster) in [(0, 1, "b"), (1, 0, "a")] {
        let from_cluster = if from == 0 { "a" } else { "b" };
        for client in ["client-0", "web-0"] {
            let client_ip = pod_ip(&lab, from, client);
            for web in ["web-0", "web-1"] {
                let url = format!("http://{}:8080/", pod_ip(&lab, to, web));
                let reply = lab.echo_eventually(&format!("{from_cluster}/{client}"), &url);
                assert_eq!(reply["cluster"], to_cluster, "{reply}");
                assert_eq!(reply["pod"], web, "{reply}");
                let seen = reply["client"].as_str().unwrap();
                assert!(
                    seen.starts_with(&format!("{client_ip}:")),
                    "{from_cluster}/{client} reached {to_cluster}/{web} as {seen}, not as itself"
                );
            }
        }
    }
}

#[test]
fn a_large_response_crosses_the_tunnel_intact() {
    let lab = Lab::up("mtu", &["--distinct-cidrs"]);
    let web1 = pod_ip(&lab, 1, "web-1");
    lab.echo_eventually("a/client-0", &format!("http://{web1}:8080/"));
    let url = format!("http://{web1}:8080/bytes/4194304");
    let cmd = format!("curl -sS --max-time 20 {url} | md5sum");
    let remote = ok(
        lab.exec("a/client-0", &["sh", "-c", &cmd]),
        "4 MiB across the tunnel",
    );
    let local_url = format!("http://{}:8080/bytes/4194304", pod_ip(&lab, 1, "web-0"));
    let local_cmd = format!("curl -sS --max-time 20 {local_url} | md5sum");
    let local = ok(
        lab.exec("b/client-0", &["sh", "-c", &local_cmd]),
        "4 MiB inside b",
    );
    assert_eq!(remote, local, "the bytes that crossed the tunnel differ");
}

/// Requests from `a/client-0` to `url`, one every 50 ms with a 500 ms
/// timeout, until one succeeds after `disrupt` ran (bounded: 30 s). Returns
/// how long requests failed.
fn outage(lab: &Lab, url: &str, disrupt: impl FnOnce()) -> std::time::Duration {
    use std::time::{Duration, Instant};
    lab.echo_eventually("a/client-0", url);
    disrupt();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = lab.exec("a/client-0", &["curl", "-s", "--max-time", "0.5", url]);
        if out.status.success() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} still fails 30 s after the active gateway went away");
}

/// `causeway show endpoints -o json`, run on a/node-0 as an operator would.
fn show_endpoints(lab: &Lab) -> serde_json::Value {
    let bin = causeway_tests::causeway_bin().display().to_string();
    let config = format!(
        "/run/causeway/lab/{}/clusters/a/secrets/broker.json",
        lab.name
    );
    let out = ok(
        lab.exec(
            "a/node-0",
            &[
                &bin,
                "show",
                "endpoints",
                "-o",
                "json",
                "--broker-config",
                &config,
            ],
        ),
        "show endpoints",
    );
    serde_json::from_str(&out).expect("JSON")
}

#[test]
fn traffic_moves_to_the_standby_when_the_active_gateway_dies_or_stops() {
    let lab = Lab::up("fail", &["--distinct-cidrs"]);
    // web-0 runs on node-0: its replies take the failed-over path too.
    let url = format!("http://{}:8080/", pod_ip(&lab, 1, "web-0"));
    for (verb, _signal) in [("kill", "SIGKILL"), ("stop", "SIGTERM")] {
        let before = lab.active_gateway("b");
        let target = format!("b/{before}");
        let took = outage(&lab, &url, || {
            ok(
                causeway_tests::causeway(&["lab", verb, "--name", &lab.name, &target]),
                verb,
            );
        });
        let after = lab.active_gateway("b");
        assert_ne!(after, before, "after `lab {verb}` the standby is active");
        let shown = show_endpoints(&lab);
        let b = shown
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["cluster"] == "b")
            .unwrap();
        assert_eq!(
            b["nodeName"],
            after.as_str(),
            "show endpoints names the new gateway: {b}"
        );
        eprintln!("lab {verb} {target}: requests failed for {took:?}; {after} is active");
        // Bring the candidate back as a standby for the next round.
        ok(
            causeway_tests::causeway(&["lab", "start", "--name", &lab.name, &target]),
            "lab start",
        );
        let reply = lab.echo_eventually("a/client-0", &url);
        assert_eq!(reply["cluster"], "b");
    }
}

#[test]
fn a_restarted_gateway_keeps_its_lease_and_changes_nothing() {
    let lab = Lab::up("rst", &["--distinct-cidrs"]);
    let url = format!("http://{}:8080/", pod_ip(&lab, 1, "web-0"));
    lab.echo_eventually("a/client-0", &url);
    lab.assert_restart_changes_nothing("b", &url);
}

#[test]
fn an_endpoint_that_claims_local_subnets_is_refused_and_nothing_else_is_disturbed() {
    let lab = Lab::up("ovl", &["--distinct-cidrs", "--clusters", "3"]);
    let url = format!("http://{}:8080/", pod_ip(&lab, 1, "web-0"));
    lab.echo_eventually("a/client-0", &url);

    // A record for cluster x that claims a's pod CIDR, written with the
    // broker's root credentials (a cluster's own could not write it).
    let password = std::fs::read_to_string(format!(
        "/run/causeway/lab/{}/broker-root-password",
        lab.name
    ))
    .unwrap();
    let record = r#"{"version":1,"kind":"Endpoint","spec":{"cluster":"x","nodeName":"evil","privateIp":"198.51.100.99","port":4500,"publicKey":"q2jV3fWDQk8o9nH4bqv4PxJ5Xm6QxXnqA6Pc3Xn3XkY=","subnets":["10.244.0.0/16"],"backend":"userspace","mtu":1440}}"#;
    ok(
        lab.exec(
            "a/node-0",
            &[
                "etcdctl",
                "--endpoints",
                "http://198.51.100.2:2379",
                "--user",
                &format!("root:{}", password.trim()),
                "put",
                "/causeway/clusters/x/endpoint/x",
                record,
            ],
        ),
        "put a bogus Endpoint",
    );

    let bin = causeway_tests::causeway_bin().display().to_string();
    let config = format!(
        "/run/causeway/lab/{}/clusters/a/secrets/broker.json",
        lab.name
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let refusal = loop {
        let out = ok(
            lab.exec(
                "a/node-0",
                &[
                    &bin,
                    "show",
                    "connections",
                    "-o",
                    "json",
                    "--broker-config",
                    &config,
                ],
            ),
            "show connections",
        );
        let all: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(x) = all
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster"] == "a" && c["peer"] == "x")
        {
            break x.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a never reported x: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(refusal["state"], "error", "{refusal}");
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("overlaps the local pod CIDR"),
        "{refusal}"
    );

    // a's own pod CIDR still routes locally, and traffic to b and c flows.
    let routes = ok(
        lab.exec("a/node-0", &["ip", "route", "show", "proto", "202"]),
        "routes",
    );
    assert!(
        !routes.contains("10.244.0.0/16"),
        "a routed its own pod CIDR into the tunnel: {routes}"
    );
    for (cluster, index) in [("b", 1), ("c", 2)] {
        let url = format!("http://{}:8080/", pod_ip(&lab, index, "web-1"));
        assert_eq!(lab.echo_eventually("a/client-0", &url)["cluster"], cluster);
    }
}
