//! Service discovery across clusters with identical CIDRs: the
//! `clusterset.local` DNS server in each cluster's `dns` pod, fed by the
//! export agent in the active gateway.

use std::time::{Duration, Instant};

use causeway_tests::{Lab, causeway, ok};

const NAME: &str = "web.default.svc.clusterset.local";

/// These tests check the Lighthouse-style answers (an exporting cluster's
/// address); the ClusterSetIP answer, the default, is `mcs_dns`'s.
const PER_CLUSTER: &[&str] = &["--dns-answer", "per-cluster"];

/// `dig +short` from `target`, retried until `want` holds (bounded: 20 s).
fn dig_until(lab: &Lab, target: &str, args: &[&str], want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut cmd = vec!["dig", "+time=1", "+tries=1"];
        cmd.extend_from_slice(args);
        let out = lab.exec(target, &cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if want(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "dig {args:?} from {target} never gave what was expected; last:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pod_finds_a_service_of_another_cluster_by_name() {
    let lab = Lab::up("dns", PER_CLUSTER);
    lab.export("b", "default/web");

    let answer = dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        !t.trim().is_empty()
    });
    assert_eq!(answer.trim(), "242.1.0.10", "b's global IP for default/web");

    let reply = lab.echo_eventually("a/client-0", &format!("http://{NAME}/"));
    assert_eq!(reply["cluster"], "b", "{reply}");

    let srv = dig_until(
        &lab,
        "a/client-0",
        &["+short", "SRV", &format!("_http._tcp.{NAME}")],
        |t| !t.trim().is_empty(),
    );
    assert!(srv.contains(" 80 "), "SRV names port 80: {srv}");

    let refused = dig_until(&lab, "a/client-0", &["example.com"], |t| {
        t.contains("status:")
    });
    assert!(refused.contains("status: REFUSED"), "{refused}");

    // Both export: a answers with its own.
    lab.export("a", "default/web");
    dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        t.trim() == "10.96.0.10"
    });

    // Unexport: the name goes away (b's), then only a's remains.
    lab.unexport("b", "default/web");
    lab.unexport("a", "default/web");
    let gone = dig_until(&lab, "a/client-0", &[NAME], |t| {
        t.contains("status: NXDOMAIN")
    });
    assert!(gone.contains("NXDOMAIN"), "{gone}");
}

#[test]
fn a_cluster_whose_tunnel_is_down_leaves_the_answers_and_comes_back() {
    let lab = Lab::up("dnsh", PER_CLUSTER);
    lab.export("b", "default/web");
    dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        t.trim() == "242.1.0.10"
    });
    for node in ["b/node-0", "b/node-1"] {
        ok(
            causeway(&["lab", "stop", "--name", &lab.name, node]),
            "stop b's gateways",
        );
    }
    // a's gateway reports b `error` after three lost probes; a's DNS drops b.
    dig_until(&lab, "a/client-0", &[NAME], |t| {
        t.contains("status: NXDOMAIN")
    });
    for node in ["b/node-0", "b/node-1"] {
        ok(
            causeway(&["lab", "start", "--name", &lab.name, node]),
            "start b's gateways",
        );
    }
    dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        t.trim() == "242.1.0.10"
    });
}

#[test]
fn a_headless_export_answers_with_its_endpoints_and_a_local_export_without_endpoints_yields_to_a_remote_one()
 {
    let lab = Lab::up("dnshl", PER_CLUSTER);
    // A headless Service over b's web pods, with hostnames as a StatefulSet gives them.
    lab.write_manifest("b",
        "service-default-db.yaml",
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\nspec:\n  clusterIP: None\n  selector: {app: web}\n  ports: [{name: http, port: 8080, protocol: TCP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-lab\n  namespace: default\n  labels: {kubernetes.io/service-name: db}\naddressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\nendpoints:\n- addresses: [10.244.0.2]\n  hostname: db-0\n  conditions: {ready: true}\n- addresses: [10.244.1.2]\n  hostname: db-1\n  conditions: {ready: true}\n",
    );
    lab.export("b", "default/db");
    let db = "db.default.svc.clusterset.local";
    let answer = dig_until(&lab, "a/client-0", &["+short", db], |t| {
        t.lines().count() == 2
    });
    let ips: Vec<&str> = answer.lines().collect();
    assert!(
        ips.iter().all(|ip| ip.starts_with("242.1.0.")),
        "b's endpoints by their global IPs: {ips:?}"
    );
    let host = dig_until(
        &lab,
        "a/client-0",
        &["+short", &format!("db-1.b.{db}")],
        |t| !t.trim().is_empty(),
    );
    let reply = lab.echo_eventually("a/client-0", &format!("http://{}:8080/", host.trim()));
    assert_eq!(reply["cluster"], "b");
    assert_eq!(reply["pod"], "web-1", "db-1 is web-1's address: {reply}");

    // Both export web; a answers its own until its own has no ready endpoint.
    lab.export("b", "default/web");
    let b_web = dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        t.trim().starts_with("242.1.0.")
    });
    lab.export("a", "default/web");
    dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        t.trim() == "10.96.0.10"
    });
    let service_doc = lab.manifest_document("a", "service-default-web.yaml", "Service");
    lab.write_manifest("a",
        "service-default-web.yaml",
        &format!(
            "---\n{service_doc}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-lab\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints: []\n"
        ),
    );
    dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        t.trim() == b_web.trim()
    });
}
