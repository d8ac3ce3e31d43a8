//! DNS answers the ClusterSetIP by default: each cluster's
//! `causeway lighthouse` reads the cluster's MCS
//! ServiceImports (`--manifests`) and answers
//! `web.default.svc.clusterset.local` with the import's `spec.ips`, the
//! derived Service's ClusterIP, which the cluster's service proxy carries
//! to the exporting cluster.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use causeway_tests::Lab;
use serde_yaml::Value;

const NAME: &str = "web.default.svc.clusterset.local";

/// The ClusterSetIP of default/web in `cluster`'s import (bounded: 20 s).
fn cluster_set_ip(lab: &Lab, cluster: &str) -> String {
    let path = PathBuf::from(format!(
        "/run/causeway/lab/{}/clusters/{cluster}/manifests/causeway-imports/default.web.yaml",
        lab.name
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ip = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_yaml::from_str::<Value>(&t).ok())
            .and_then(|v| v["spec"]["ips"][0].as_str().map(str::to_owned));
        if let Some(ip) = ip {
            return ip;
        }
        assert!(
            Instant::now() < deadline,
            "{cluster}'s import has no ClusterSetIP within 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `dig +short NAME` from `target`, retried until it is `want` (bounded: 20 s).
fn dig_until(lab: &Lab, target: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = lab.exec(target, &["dig", "+time=1", "+tries=1", "+short", NAME]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{NAME} from {target}: want {want}, last answer:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn answers_the_cluster_set_ip_that_reaches_b(lab: &Lab) {
    lab.export("b", "default/web");
    let ip = cluster_set_ip(lab, "a");
    assert!(ip.starts_with("10.96."), "from a's service CIDR: {ip}");
    dig_until(lab, "a/client-0", &ip);
    for _ in 0..5 {
        let reply = lab.echo_eventually("a/client-0", &format!("http://{NAME}/"));
        assert_eq!(reply["cluster"], "b", "{reply}");
    }
    // b (the exporter) answers its own import's ClusterSetIP too.
    let own = cluster_set_ip(lab, "b");
    dig_until(lab, "b/client-0", &own);
}

#[test]
fn dns_answers_the_cluster_set_ip_and_a_pod_reaches_b_through_it() {
    answers_the_cluster_set_ip_that_reaches_b(&Lab::up("mcsns", &[]));
}

#[test]
fn dns_answers_the_cluster_set_ip_and_a_pod_reaches_b_through_it_without_globalnet() {
    answers_the_cluster_set_ip_that_reaches_b(&Lab::up("mcsnu", &["--distinct-cidrs"]));
}
