//! The lab itself: clusters with identical CIDRs that really hold the same
//! addresses, and a `lab down` that leaves nothing behind.

use causeway_tests::{
    Lab, causeway, fails, host_links, is_running, namespaces_with_prefix, ok, unique_name,
};
use serde_json::Value;

fn pods(status: &Value, cluster: usize) -> Vec<(String, String)> {
    status["clusters"][cluster]["pods"]
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

#[test]
fn identical_clusters_answer_on_the_same_pod_addresses_and_down_leaves_nothing() {
    let links_before = host_links();
    let lab = Lab::up("same", &[]);
    let status = lab.status();
    let (a, b) = (pods(&status, 0), pods(&status, 1));
    assert_eq!(a, b, "both clusters hold the same pod addresses");
    assert_eq!(status["clusters"][0]["pod_cidr"], "10.244.0.0/16");
    assert_eq!(status["clusters"][1]["pod_cidr"], "10.244.0.0/16");
    assert_eq!(status["clusters"][1]["service_cidr"], "10.96.0.0/12");

    let web0 = &a.iter().find(|(n, _)| n == "web-0").unwrap().1;
    let client = &a.iter().find(|(n, _)| n == "client-0").unwrap().1;
    for cluster in ["a", "b"] {
        let reply = lab.echo(
            &format!("{cluster}/client-0"),
            &format!("http://{web0}:8080/"),
        );
        assert_eq!(reply["cluster"], cluster, "{reply}");
        assert_eq!(reply["pod"], "web-0", "{reply}");
        let seen = reply["client"].as_str().unwrap();
        assert!(
            seen.starts_with(&format!("{client}:")),
            "pod-to-pod traffic is not NATed: {seen}"
        );
    }

    let processes = status["processes"].as_array().unwrap();
    let pids: Vec<i64> = processes
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    let count = |role: &str| processes.iter().filter(|p| p["role"] == role).count();
    assert_eq!(count("echo"), 4, "an echo server per web pod");
    assert_eq!(count("etcd"), 3, "an etcd per cluster and the broker's");
    assert!(
        processes.iter().all(|p| p["running"] == true),
        "{processes:?}"
    );
    let run_dir = status["run_dir"].as_str().unwrap().to_owned();

    lab.down();
    assert_eq!(
        namespaces_with_prefix(&lab.netns_prefix()),
        Vec::<String>::new()
    );
    for pid in pids {
        assert!(!is_running(pid), "process {pid} is still running");
    }
    assert!(
        !std::path::Path::new(&run_dir).exists(),
        "{run_dir} is still there"
    );
    assert_eq!(
        host_links(),
        links_before,
        "the host's own links are unchanged"
    );
}

#[test]
fn distinct_cidrs_give_each_cluster_its_own_ranges() {
    let lab = Lab::up("dist", &["--distinct-cidrs", "--clusters", "3"]);
    let status = lab.status();
    let cidrs: Vec<&str> = (0..3)
        .map(|i| status["clusters"][i]["pod_cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs, ["10.244.0.0/16", "10.245.0.0/16", "10.246.0.0/16"]);
    let web1 = &pods(&status, 2)
        .into_iter()
        .find(|(n, _)| n == "web-1")
        .unwrap()
        .1;
    assert!(web1.starts_with("10.246."), "{web1}");
    let reply = lab.echo("c/client-0", &format!("http://{web1}:8080/"));
    assert_eq!(reply["cluster"], "c");
    assert_eq!(reply["pod"], "web-1");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let name = unique_name("bad");
    let err = fails(
        causeway(&["lab", "up", "--name", &name, "--clusters", "0"]),
        "--clusters 0",
    );
    assert!(err.contains("--clusters"), "{err}");
    assert!(namespaces_with_prefix(&format!("cw.{name}.")).is_empty());

    let err = fails(
        causeway(&["lab", "up", "--name", "a/b"]),
        "a name with a slash",
    );
    assert!(err.contains("invalid lab name"), "{err}");

    let lab = Lab::up("bad", &["--clusters", "1"]);
    let err = fails(
        causeway(&["lab", "up", "--name", &lab.name]),
        "up on a lab that is up",
    );
    assert!(err.contains("already up"), "{err}");
    // The lab that was up is untouched.
    let reply = lab.echo("a/client-0", "http://10.244.0.2:8080/");
    assert_eq!(reply["pod"], "web-0");

    let err = fails(lab.exec("a/nope", &["true"]), "exec into a missing pod");
    assert!(err.contains("no pod or node a/nope"), "{err}");
    let err = fails(lab.exec("nope", &["true"]), "exec with a malformed target");
    assert!(err.contains("CLUSTER/POD"), "{err}");
    let err = fails(
        causeway(&[
            "lab",
            "exec",
            "--name",
            &unique_name("gone"),
            "a/client-0",
            "--",
            "true",
        ]),
        "exec into a lab that is not up",
    );
    assert!(err.contains("is not up"), "{err}");

    let out = ok(
        causeway(&["lab", "status", "--name", &lab.name, "-o", "json"]),
        "status",
    );
    assert!(out.contains("client-0"));
}

#[test]
fn large_responses_arrive_whole() {
    let lab = Lab::up("big", &["--clusters", "1"]);
    let out = ok(
        lab.exec(
            "a/client-0",
            &[
                "sh",
                "-c",
                "curl -sS --max-time 10 http://10.244.1.2:8080/bytes/4194304 | wc -c",
            ],
        ),
        "4 MiB GET",
    );
    assert_eq!(out.trim(), "4194304");
}
