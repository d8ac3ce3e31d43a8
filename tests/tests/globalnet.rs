//! Globalnet on clusters with identical CIDRs (the lab's default): an
//! exported service is reached on its global IP, DNATed straight to its
//! ready endpoints, and the server sees one of the client cluster's egress
//! global IPs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use causeway_tests::{Lab, causeway, ok};

/// The lab's clusters join in order, each taking the next free /16 of
/// 242.0.0.0/8; IPAM gives the gateway .1, the egress pool .2-.9 and the
/// first export .10.
const B_WEB: &str = "http://242.1.0.10/";
const A_WEB: &str = "http://242.0.0.10/";

fn in_egress_pool(client: &str, cluster_octet: u8) -> bool {
    let ip = client.rsplit_once(':').unwrap().0;
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    octets[..3] == [242, cluster_octet, 0] && (2..=9).contains(&octets[3])
}

#[test]
fn an_exported_service_answers_on_its_global_ip_from_the_other_cluster() {
    let lab = Lab::up("gnet", &[]);
    lab.export("b", "default/web");
    lab.export("a", "default/web");

    let mut pods = BTreeSet::new();
    let first = lab.echo_eventually("a/client-0", B_WEB);
    for _ in 0..12 {
        let reply = lab.echo("a/client-0", B_WEB);
        assert_eq!(reply["cluster"], "b", "{reply}");
        let client = reply["client"].as_str().unwrap();
        assert!(
            in_egress_pool(client, 0),
            "b saw {client}, not one of a's egress IPs"
        );
        pods.insert(reply["pod"].as_str().unwrap().to_owned());
    }
    assert_eq!(first["cluster"], "b");
    assert_eq!(
        pods.len(),
        2,
        "requests spread over web-0 and web-1: {pods:?}"
    );

    // The other way round, from a pod on a gateway node.
    let reply = lab.echo_eventually("b/web-0", A_WEB);
    assert_eq!(reply["cluster"], "a");
    assert!(
        in_egress_pool(reply["client"].as_str().unwrap(), 1),
        "{reply}"
    );

    // Inside a cluster nothing is translated.
    let reply = lab.echo("a/client-0", "http://10.244.0.2:8080/");
    assert_eq!(reply["cluster"], "a");
    assert!(
        reply["client"].as_str().unwrap().starts_with("10.244.2.2:"),
        "{reply}"
    );
}

#[test]
fn after_failover_the_same_global_ip_serves_the_same_service() {
    let lab = Lab::up("gfail", &[]);
    lab.export("b", "default/web");
    lab.echo_eventually("a/client-0", B_WEB);
    let status = lab.status();
    let active = status["active_gateways"]["b"].as_str().unwrap().to_owned();
    // b's egress pool, as its active gateway's Endpoint record names it.
    let egress = status["globalnet"]["b"]["egress_ips"].clone();
    assert_eq!(egress.as_array().map(Vec::len), Some(8), "{status}");
    ok(
        causeway(&["lab", "kill", "--name", &lab.name, &format!("b/{active}")]),
        "kill",
    );
    let reply = lab.echo_eventually("a/client-0", B_WEB);
    assert_eq!(reply["cluster"], "b", "{reply}");
    let status = lab.status();
    assert_ne!(status["active_gateways"]["b"].as_str().unwrap(), active);
    // The new gateway first republishes the stored pool, then the pool it
    // planned: watch long enough for its plan to have replaced the first.
    for _ in 0..6 {
        let status = lab.status();
        assert_eq!(status["globalnet"]["b"]["egress_ips"], egress, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Rewrites b's `default/web` EndpointSlice to hold only `pods` (name, IP).
fn set_endpoints(lab: &Lab, pods: &[(&str, &str, &str)]) {
    let endpoints: String = pods
        .iter()
        .map(|(pod, ip, node)| {
            format!(
                "- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n  targetRef: {{kind: Pod, namespace: default, name: {pod}}}\n"
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-lab\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints:\n{endpoints}"
    );
    let service = lab.manifest_document("b", "service-default-web.yaml", "Service");
    lab.write_manifest(
        "b",
        "service-default-web.yaml",
        &format!("---\n{service}---\n{yaml}"),
    );
}

/// The set of pods that answer `n` requests to b's web.
fn answering(lab: &Lab, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            lab.echo("a/client-0", B_WEB)["pod"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn endpoints_follow_the_endpoint_slice_and_an_unexported_global_ip_stops_answering() {
    let lab = Lab::up("gscale", &[]);
    lab.export("b", "default/web");
    lab.echo_eventually("a/client-0", B_WEB);

    set_endpoints(&lab, &[("web-0", "10.244.0.2", "node-0")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while answering(&lab, 6) != BTreeSet::from(["web-0".to_owned()]) {
        assert!(
            Instant::now() < deadline,
            "web-1 still gets traffic after leaving the slice"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    set_endpoints(
        &lab,
        &[
            ("web-0", "10.244.0.2", "node-0"),
            ("web-1", "10.244.1.2", "node-1"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while answering(&lab, 12).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "web-1 gets no traffic after joining the slice"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    lab.unexport("b", "default/web");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.exec("a/client-0", &["curl", "-s", "--max-time", "1", B_WEB]);
        if !out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the global IP still answers after unexport"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_restarted_gateway_keeps_its_table_and_its_global_ips() {
    let lab = Lab::up("grst", &[]);
    lab.export("b", "default/web");
    lab.echo_eventually("a/client-0", B_WEB);
    lab.assert_restart_changes_nothing("b", B_WEB);
    assert_eq!(lab.echo("a/client-0", B_WEB)["cluster"], "b");
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_endpoint() {
    let lab = Lab::up("gaff", &[]);
    let service = lab.manifest_document("b", "service-default-web.yaml", "Service");
    let slice = lab.manifest_document("b", "service-default-web.yaml", "EndpointSlice");
    let sticky = service.replace(
        "spec:\n",
        "spec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 30\n",
    );
    lab.write_manifest(
        "b",
        "service-default-web.yaml",
        &format!("---\n{sticky}---\n{slice}"),
    );
    lab.export("b", "default/web");
    lab.echo_eventually("a/client-0", B_WEB);
    // The plan may still be catching up with the edit: wait until it sticks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answering(&lab, 10).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "a/client-0 still reaches both endpoints with ClientIP affinity"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Chance alone would keep 20 more on one endpoint once in 500,000 runs.
    assert_eq!(answering(&lab, 20).len(), 1, "affinity did not hold");
}
