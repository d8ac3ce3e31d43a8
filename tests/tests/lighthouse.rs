//! Service discovery across clusters with identical CIDRs: the
//! `clusterset.local` DNS server in each cluster's `dns` pod, fed by the
//! export agent in the active gateway.

use std::time::{Duration, Instant};

use causeway_tests::{Lab, causeway, ok};

const NAME: &str = "web.default.svc.clusterset.local";

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
    let lab = Lab::up("dns", &[]);
    ok(
        causeway(&["lab", "export", "--name", &lab.name, "b", "default/web"]),
        "export",
    );

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
    ok(
        causeway(&["lab", "export", "--name", &lab.name, "a", "default/web"]),
        "export a",
    );
    dig_until(&lab, "a/client-0", &["+short", NAME], |t| {
        t.trim() == "10.96.0.10"
    });

    // Unexport: the name goes away (b's), then only a's remains.
    ok(
        causeway(&[
            "lab",
            "export",
            "--name",
            &lab.name,
            "b",
            "default/web",
            "--unexport",
        ]),
        "unexport b",
    );
    ok(
        causeway(&[
            "lab",
            "export",
            "--name",
            &lab.name,
            "a",
            "default/web",
            "--unexport",
        ]),
        "unexport a",
    );
    let gone = dig_until(&lab, "a/client-0", &[NAME], |t| {
        t.contains("status: NXDOMAIN")
    });
    assert!(gone.contains("NXDOMAIN"), "{gone}");
}

#[test]
fn a_cluster_whose_tunnel_is_down_leaves_the_answers_and_comes_back() {
    let lab = Lab::up("dnsh", &[]);
    ok(
        causeway(&["lab", "export", "--name", &lab.name, "b", "default/web"]),
        "export",
    );
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
