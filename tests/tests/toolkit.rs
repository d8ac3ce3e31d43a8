//! The operator's toolkit on the lab: `verify` passes on a healthy lab and
//! fails with the right line on a broken one, `benchmark` measures both
//! ways, `show topology` draws what is there, and `gather` collects a
//! tarball without a single secret. One lab serves every check.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use causeway_tests::{Lab, causeway, fails, ok};
use serde_json::Value;

/// `causeway verify --lab LAB -o json`: its report and whether it passed.
fn verify(lab: &Lab) -> (Value, bool, String) {
    let out = causeway(&["verify", "--lab", &lab.name, "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        report,
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn checks(report: &Value) -> &Vec<Value> {
    report["checks"].as_array().expect("checks")
}

/// Lines that failed, as `FROM_CLUSTER/POD -> TO CHECK: DETAIL`.
fn failures(report: &Value) -> Vec<String> {
    checks(report)
        .iter()
        .filter(|c| c["outcome"] == "fail")
        .map(|c| {
            format!(
                "{}/{} -> {} {}: {}",
                c["from"]["cluster"].as_str().unwrap(),
                c["from"]["pod"].as_str().unwrap(),
                c["to"].as_str().unwrap(),
                c["check"].as_str().unwrap(),
                c["detail"].as_str().unwrap()
            )
        })
        .collect()
}

/// Files under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read a directory") {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every secret of the lab: keys and passwords `causeway join` wrote, and
/// the broker's root password.
fn lab_secrets(lab: &Lab) -> Vec<String> {
    let run = format!("/run/causeway/lab/{}", lab.name);
    let mut secrets = vec![
        std::fs::read_to_string(format!("{run}/broker-root-password"))
            .unwrap()
            .trim()
            .to_owned(),
    ];
    for c in ["a", "b"] {
        let dir = format!("{run}/clusters/{c}/secrets");
        secrets.push(
            std::fs::read_to_string(format!("{dir}/wireguard.key"))
                .unwrap()
                .trim()
                .to_owned(),
        );
        let broker: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/broker.json")).unwrap())
                .unwrap();
        if let Some(p) = broker["password"].as_str() {
            secrets.push(p.to_owned());
        }
    }
    assert!(secrets.iter().all(|s| s.len() >= 16), "{secrets:?}");
    secrets
}

#[test]
fn the_toolkit_sees_a_healthy_lab_and_names_what_broke() {
    let lab = Lab::up("kit", &[]);
    lab.export("a", "default/web");
    lab.export("b", "default/web");
    lab.echo_eventually("a/client-0", "http://242.1.0.10/");
    lab.echo_eventually("b/client-0", "http://242.0.0.10/");

    // verify: every check passes on a healthy lab.
    let (report, passed, stderr) = verify(&lab);
    assert!(
        passed,
        "verify failed on a healthy lab: {stderr}\n{:#?}",
        failures(&report)
    );
    assert_eq!(report["failed"], 0);
    assert_eq!(report["skipped"], 0);
    // 2 ordered pairs x 2 source nodes x (2 pods + service + DNS).
    assert_eq!(checks(&report).len(), 16);
    let kinds: BTreeSet<(String, String)> = checks(&report)
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["from"]["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds.len(),
        6,
        "every check from both kinds of node: {kinds:?}"
    );
    for c in checks(&report) {
        assert!(c["millis"].as_f64().unwrap() > 0.0, "{c}");
        let to = c["to"].as_str().unwrap();
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("answered by {to}/")),
            "{c}"
        );
    }
    // Its short-lived exports are gone again.
    let manifests = format!("/run/causeway/lab/{}/clusters/b/manifests", lab.name);
    assert!(
        !std::fs::read_dir(&manifests).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("cw-verify")),
        "verify left its export behind"
    );
    // The text form says the same.
    let text = ok(causeway(&["verify", "--lab", &lab.name]), "verify (text)");
    assert!(text.contains("16 passed, 0 failed, 0 skipped"), "{text}");

    // benchmark: throughput and latency between the clusters, both variants.
    let out = ok(
        causeway(&[
            "benchmark",
            "throughput",
            "--lab",
            &lab.name,
            "--from",
            "a",
            "--to",
            "b",
            "--seconds",
            "2",
            "-o",
            "json",
        ]),
        "benchmark throughput",
    );
    let bench: Value = serde_json::from_str(&out).unwrap();
    let runs = bench["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        2,
        "gateway-node and worker-node variants: {bench}"
    );
    for run in runs {
        let gbit = run["gbit_per_s"].as_f64().unwrap();
        assert!(gbit > 0.01, "{run}");
        assert!(run["bytes"].as_u64().unwrap() > 1_000_000, "{run}");
        assert!(
            run["target"].as_str().unwrap().starts_with("242.1.0."),
            "{run}"
        );
    }
    assert_eq!(runs[0]["node"], "gateway");
    assert_eq!(runs[1]["from"], "a/client-0");
    // The same path measured by iperf3 too, in one command.
    let out = ok(
        causeway(&[
            "benchmark",
            "throughput",
            "--lab",
            &lab.name,
            "--from",
            "a",
            "--to",
            "b",
            "--seconds",
            "1",
            "--node",
            "worker",
            "--compare-iperf3",
            "-o",
            "json",
        ]),
        "benchmark throughput --compare-iperf3",
    );
    let bench: Value = serde_json::from_str(&out).unwrap();
    let run = &bench["runs"][0];
    assert!(run["iperf3_gbit_per_s"].as_f64().unwrap() > 0.01, "{run}");
    for connections in ["persistent", "fresh"] {
        let out = ok(
            causeway(&[
                "benchmark",
                "latency",
                "--lab",
                &lab.name,
                "--from",
                "b",
                "--to",
                "a",
                "--seconds",
                "1",
                "--node",
                "worker",
                "--connections",
                connections,
                "-o",
                "json",
            ]),
            "benchmark latency",
        );
        let bench: Value = serde_json::from_str(&out).unwrap();
        let run = &bench["runs"][0];
        assert_eq!(run["connections"], connections);
        assert!(run["requests"].as_u64().unwrap() > 20, "{run}");
        let p = &run["latency_ms"];
        let (p50, p90, p99) = (
            p["p50"].as_f64().unwrap(),
            p["p90"].as_f64().unwrap(),
            p["p99"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{run}");
    }

    // show topology: text, DOT and an SVG with every part in it.
    let text = ok(
        causeway(&["show", "topology", "--lab", &lab.name]),
        "show topology",
    );
    assert!(
        text.contains("cluster a  global CIDR 242.0.0.0/16"),
        "{text}"
    );
    assert!(
        text.contains("export  default/web              242.1.0.10"),
        "{text}"
    );
    assert!(text.contains("standby"), "{text}");
    assert!(
        text.contains("tunnel a <-> b: a sees connected ")
            && text.contains(" ms, b sees connected "),
        "{text}"
    );
    let svg = ok(
        causeway(&["show", "topology", "--lab", &lab.name, "--format", "svg"]),
        "show topology --format svg",
    );
    assert!(svg.contains("<svg"), "{svg}");
    for want in [
        "cluster b",
        "global 242.1.0.0/16",
        "active",
        "standby",
        "connected",
    ] {
        assert!(svg.contains(want), "{want} missing from the SVG");
    }
    let dot = ok(
        causeway(&["show", "topology", "--lab", &lab.name, "--format", "dot"]),
        "show topology --format dot",
    );
    assert!(dot.starts_with("graph clusterset {"), "{dot}");
    // From one cluster's own store (read from a node, where it is reachable).
    let bin = causeway_tests::causeway_bin();
    let text = ok(
        lab.exec(
            "a/node-1",
            &[
                bin.to_str().unwrap(),
                "show",
                "topology",
                "--store",
                "http://192.168.50.2:2379",
            ],
        ),
        "show topology --store",
    );
    assert!(
        text.contains("export  default/web              242.1.0.10")
            && text.contains("tunnel a <-> b: a sees connected"),
        "{text}"
    );

    // gather: one tarball, every node in it, no secret anywhere.
    let dir = std::env::temp_dir().join(format!("cw-kit-{}", lab.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tarball = dir.join("gather.tar.gz");
    ok(
        causeway(&[
            "gather",
            "--lab",
            &lab.name,
            "--out",
            tarball.to_str().unwrap(),
        ]),
        "gather",
    );
    let unpacked = dir.join("x");
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = Command::new("tar")
        .args([
            "xzf",
            tarball.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "the tarball unpacks");
    let root = unpacked.join(format!("causeway-gather-{}", lab.name));
    for want in [
        "nodes/a-node-0/ip-route.txt",
        "nodes/b-node-2/ip-rule.txt",
        "nodes/a-node-0/nft-causeway.txt",
        "nodes/b-node-1/wireguard.txt",
        "nodes/a-node-0/gateway-metrics.txt",
        "nodes/a-node-2/conntrack-count.txt",
        "broker/records.json",
        "clusters/b/store-records.json",
        "logs/a-node-0-gateway.log",
    ] {
        assert!(root.join(want).exists(), "{want} missing from the tarball");
    }
    let nft = std::fs::read_to_string(root.join("nodes/a-node-0/nft-causeway.txt")).unwrap();
    assert!(nft.contains("table ip causeway"), "{nft}");
    let broker = std::fs::read_to_string(root.join("broker/records.json")).unwrap();
    assert!(broker.contains("\"Endpoint\""), "{broker}");
    let secrets = lab_secrets(&lab);
    let all = files(&unpacked);
    assert!(all.len() > 40, "{} files", all.len());
    for file in &all {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{} holds a secret of the lab",
                file.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    // Broken: b's web is no longer exported. Pod to service toward b fails,
    // from both of a's nodes, with the command that mends it; the rest passes.
    lab.unexport("b", "default/web");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (report, passed, stderr) = loop {
        let v = verify(&lab);
        if !v.1 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(!passed, "verify passed with default/web unexported from b");
    let failed = failures(&report);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    for line in &failed {
        assert!(
            line.contains("-> b pod-to-service: b does not export default/web")
                && line.contains("causeway lab export b default/web"),
            "{line}"
        );
    }
    assert!(
        stderr.contains("2 of 16 checks failed")
            && stderr.contains("-> b pod to service: b does not export default/web"),
        "{stderr}"
    );
    lab.export("b", "default/web");

    // Broken harder: b's gateways stop. Everything toward b fails, saying why.
    std::thread::sleep(std::time::Duration::from_secs(1));
    for node in ["b/node-0", "b/node-1"] {
        ok(
            causeway(&["lab", "stop", "--name", &lab.name, node]),
            "lab stop",
        );
    }
    let (report, passed, stderr) = verify(&lab);
    assert!(!passed, "verify passed with b's gateways stopped");
    assert!(stderr.contains("checks failed"), "{stderr}");
    let to_b: Vec<&Value> = checks(&report).iter().filter(|c| c["to"] == "b").collect();
    assert_eq!(to_b.len(), 8);
    assert!(
        to_b.iter().all(|c| c["outcome"] == "fail"),
        "every check toward b fails: {to_b:#?}"
    );
    for c in to_b {
        let detail = c["detail"].as_str().unwrap();
        assert!(
            [
                "no import of headless default/cw-verify-b",
                "timed out",
                "NXDOMAIN",
                "refused"
            ]
            .iter()
            .any(|why| detail.contains(why)),
            "{c}"
        );
    }
}

#[test]
fn without_globalnet_verify_reaches_pods_on_their_own_addresses() {
    let lab = Lab::up("kitd", &["--distinct-cidrs"]);
    lab.export("a", "default/web");
    lab.export("b", "default/web");
    let (report, passed, stderr) = verify(&lab);
    assert!(passed, "{stderr}\n{:#?}", failures(&report));
    assert_eq!(report["globalnet"], false);
    assert_eq!(report["skipped"], 0);
    for c in checks(&report) {
        match c["check"].as_str().unwrap() {
            // The remote ClusterIP itself, served by b's service proxy.
            "pod-to-service" if c["to"] == "b" => {
                assert_eq!(c["outcome"], "pass", "{c}");
                assert!(c["target"].as_str().unwrap().contains("10.112."), "{c}");
            }
            "pod-to-pod" if c["to"] == "b" => {
                assert!(c["target"].as_str().unwrap().contains(" on 10.245."), "{c}");
            }
            _ => {}
        }
    }
}

#[test]
fn the_toolkit_refuses_what_it_cannot_do_yet() {
    let err = fails(causeway(&["verify"]), "verify without --lab");
    assert!(
        err.contains("--lab") && err.contains("--kubeconfig"),
        "{err}"
    );
    let err = fails(
        causeway(&["benchmark", "throughput", "--from", "a", "--to", "b"]),
        "benchmark without --lab",
    );
    assert!(err.contains("--lab"), "{err}");
    let err = fails(
        causeway(&["gather", "--out", "/tmp/never-written.tar.gz"]),
        "gather without --lab",
    );
    assert!(err.contains("--lab"), "{err}");
    assert!(!Path::new("/tmp/never-written.tar.gz").exists());
    let err = fails(
        causeway(&["verify", "--lab", "nosuchlab"]),
        "verify on a lab that is not up",
    );
    assert!(err.contains("causeway lab up --name nosuchlab"), "{err}");
}
