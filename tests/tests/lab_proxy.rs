//! The lab's service proxy: ClusterIPs work inside lab clusters as
//! kube-proxy's nftables mode makes them work (random balancing, ClientIP
//! affinity, hairpin masquerade), the lab allocates ClusterIPs for Services
//! that lack one, and `lab down` leaves nothing of it behind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use causeway_tests::{Lab, is_running, namespaces_with_prefix, ok};
use serde_json::Value;

/// `name -> ip` of cluster `cluster`'s pods, from `lab status`.
fn pods(status: &Value, cluster: &str) -> BTreeMap<String, String> {
    status["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["name"] == cluster)
        .expect("cluster")["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Which pods answered `n` GETs of `url` from `target`, in order.
fn answers(lab: &Lab, target: &str, url: &str, n: usize) -> Vec<Value> {
    (0..n).map(|_| lab.echo(target, url)).collect()
}

fn pod_names(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| r["pod"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// An EndpointSlice of `service` listing `ips` at port 8080 (`http`).
fn slice(name: &str, service: &str, ips: &[&str]) -> String {
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
  - {{name: http, protocol: TCP, port: 8080}}
endpoints:
{endpoints}"
    )
}

#[test]
fn cluster_ip_balances_hairpins_and_follows_its_endpoint_slice() {
    let lab = Lab::up("proxy", &[]);
    let status = lab.status();
    let processes = status["processes"].as_array().expect("processes").clone();
    let proxies: Vec<&Value> = processes.iter().filter(|p| p["role"] == "proxy").collect();
    assert!(
        proxies.len() >= 4,
        "a proxy on every node of both clusters: {proxies:?}"
    );
    assert!(proxies.iter().all(|p| p["running"] == true), "{proxies:?}");
    let a = pods(&status, "a");
    let url = "http://10.96.0.10/";

    // Random balancing over both endpoints; pod traffic is not NATed.
    let replies = answers(&lab, "a/client-0", url, 20);
    let names = pod_names(&replies);
    for web in ["web-0", "web-1"] {
        assert!(
            names.iter().any(|n| n == web),
            "{web} never answered: {names:?}"
        );
    }
    for r in &replies {
        assert_eq!(r["cluster"], "a", "{r}");
        let client = r["client"].as_str().unwrap();
        assert!(
            client.starts_with(&format!("{}:", a["client-0"])),
            "pod to ClusterIP keeps the pod's address: {client}"
        );
    }
    // The same in cluster b, whose addresses are the same (Globalnet lab).
    let names = pod_names(&answers(&lab, "b/client-0", url, 20));
    assert!(
        names.iter().all(|n| n == "web-0" || n == "web-1"),
        "{names:?}"
    );

    // Hairpin: a pod reaching itself through the ClusterIP is masqueraded.
    let from_web0 = answers(&lab, "a/web-0", url, 20);
    let own = from_web0
        .iter()
        .find(|r| r["pod"] == "web-0")
        .expect("web-0 reached itself once in 20 tries");
    let seen = own["client"].as_str().unwrap();
    assert!(
        !seen.starts_with(&format!("{}:", a["web-0"])),
        "hairpin traffic must be masqueraded: {seen}"
    );

    // web-0 leaves the slice: no traffic reaches it a second later.
    let manifest = lab.manifest_document("a", "service-default-web.yaml", "Service");
    let written = Instant::now();
    lab.write_manifest(
        "a",
        "service-default-web.yaml",
        &format!("---\n{manifest}{}", slice("web-lab", "web", &[&a["web-1"]])),
    );
    std::thread::sleep(Duration::from_secs(1).saturating_sub(written.elapsed()));
    let names = pod_names(&answers(&lab, "a/client-0", url, 20));
    assert!(
        names.iter().all(|n| n == "web-1"),
        "web-0 still answers a second after leaving the slice: {names:?}"
    );
    // And it comes back.
    lab.write_manifest(
        "a",
        "service-default-web.yaml",
        &format!(
            "---\n{manifest}{}",
            slice("web-lab", "web", &[&a["web-0"], &a["web-1"]])
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    let names = pod_names(&answers(&lab, "a/client-0", url, 20));
    assert!(names.iter().any(|n| n == "web-0"), "{names:?}");

    // A Service without endpoints is refused at once, as kube-proxy refuses it.
    lab.write_manifest(
        "a",
        "service-default-idle.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: idle, namespace: default}
spec:
  clusterIP: 10.96.0.99
  ports: [{name: http, protocol: TCP, port: 80}]
",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab.exec(
            "a/client-0",
            &["curl", "-sS", "--max-time", "2", "http://10.96.0.99/"],
        );
        if out.status.code() == Some(7) {
            break; // connection refused
        }
        assert!(
            Instant::now() < deadline,
            "a Service without endpoints is not refused: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Causeway's own tables are untouched by the proxy, and its table is there.
    let tables = ok(
        lab.exec("a/node-0", &["nft", "list", "tables"]),
        "nft list tables",
    );
    assert!(tables.contains("table ip lab-kube-proxy"), "{tables}");

    let pids: Vec<i64> = proxies.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    lab.down();
    assert!(namespaces_with_prefix(&lab.netns_prefix()).is_empty());
    for pid in pids {
        assert!(!is_running(pid), "proxy {pid} outlived `lab down`");
    }
}

#[test]
fn a_service_without_cluster_ip_gets_one_and_client_ip_affinity_pins_a_client() {
    let lab = Lab::up("proxyaff", &[]);
    let a = pods(&lab.status(), "a");
    // No selector and no clusterIP: someone else writes its slice (as the
    // MCS derived Services are), in a subdirectory of the manifests.
    let service = "apiVersion: v1
kind: Service
metadata:
  name: sticky
  namespace: default
spec:
  type: ClusterIP
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 10
  ports:
    - {name: http, protocol: TCP, port: 80, targetPort: 8080}
";
    let dir = format!(
        "/run/causeway/lab/{}/clusters/a/manifests/causeway-imports",
        lab.name
    );
    std::fs::create_dir_all(&dir).expect("create a manifest subdirectory");
    lab.write_manifest(
        "a",
        "causeway-imports/sticky.yaml",
        &format!(
            "---\n{service}{}",
            slice("sticky-1", "sticky", &[&a["web-0"], &a["web-1"]])
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let ip = loop {
        let doc = lab.manifest_document("a", "causeway-imports/sticky.yaml", "Service");
        if let Some(line) = doc
            .lines()
            .find(|l| l.trim_start().starts_with("clusterIP:"))
        {
            break line.split(':').nth(1).unwrap().trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no ClusterIP after 5 s: {doc}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let octets = ip
        .parse::<std::net::Ipv4Addr>()
        .expect("an IPv4 ClusterIP")
        .octets();
    assert!(
        octets[0] == 10 && (96..112).contains(&octets[1]),
        "{ip} is in 10.96.0.0/12"
    );
    assert_ne!(ip, "10.96.0.10", "a ClusterIP in use is never handed out");
    let url = format!("http://{ip}/");
    let first = lab.echo_eventually("a/client-0", &url);
    let pinned = first["pod"].as_str().unwrap().to_owned();
    let names = pod_names(&answers(&lab, "a/client-0", &url, 15));
    assert!(
        names.iter().all(|n| *n == pinned),
        "ClientIP affinity pins client-0 to {pinned}: {names:?}"
    );
    // Another client may land anywhere, but stays where it lands.
    let names = pod_names(&answers(&lab, "a/web-1", &url, 10));
    assert!(names.windows(2).all(|w| w[0] == w[1]), "{names:?}");
}
