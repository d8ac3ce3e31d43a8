//! Derived Services and MCS EndpointSlices on the lab: the derived
//! controller in each cluster's active gateway writes
//! `causeway-derived/<namespace>.<name>.yaml` (the derived Service and one
//! EndpointSlice per source cluster) into the cluster's manifest directory,
//! and each import names its derived Service.

use std::path::PathBuf;
use std::time::Instant;

use causeway_tests::{Lab, within};
use serde_yaml::Value;

/// `derived-` + base32hex(sha256("default/web"))[..10], as the reference
/// mcs-api controller names it.
const DERIVED_WEB: &str = "derived-gapqrqeg1j";

fn manifests(lab: &Lab, cluster: &str) -> PathBuf {
    PathBuf::from(format!(
        "/run/causeway/lab/{}/clusters/{cluster}/manifests",
        lab.name
    ))
}

/// The documents of `cluster`'s derived file for default/web.
fn derived_docs(lab: &Lab, cluster: &str) -> Option<Vec<Value>> {
    let path = manifests(lab, cluster).join("causeway-derived/default.web.yaml");
    let text = std::fs::read_to_string(path).ok()?;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        docs.push(serde::Deserialize::deserialize(de).ok()?);
    }
    Some(docs)
}

/// Slices of the derived file: source cluster -> addresses.
fn slices(docs: &[Value]) -> Vec<(String, Vec<String>)> {
    docs.iter()
        .filter(|d| d["kind"] == "EndpointSlice")
        .map(|d| {
            let cluster = d["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let addresses = d["endpoints"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
                .collect();
            (cluster, addresses)
        })
        .collect()
}

fn derived_where(
    lab: &Lab,
    cluster: &str,
    what: &str,
    want: impl Fn(&[(String, Vec<String>)]) -> bool,
) -> Vec<Value> {
    within(20, &format!("{cluster}'s derived objects: {what}"), || {
        let docs = derived_docs(lab, cluster)?;
        want(&slices(&docs)).then_some(docs)
    })
}

#[test]
fn an_import_gets_a_derived_service_and_a_slice_per_source_cluster() {
    let lab = Lab::up("mcsd", &[]);
    lab.export("b", "default/web");

    // In a: the Service, and b's slice listing b's global ingress IP.
    let docs = derived_where(&lab, "a", "b's slice", |s| {
        s.len() == 1 && s[0].0 == "b" && !s[0].1.is_empty()
    });
    let service = &docs[0];
    assert_eq!(service["kind"], "Service");
    assert_eq!(service["metadata"]["name"], DERIVED_WEB);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert!(service["spec"]["selector"].is_null(), "{service:?}");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    let slice = &docs[1];
    assert_eq!(slice["metadata"]["name"], format!("{DERIVED_WEB}-b"));
    let labels = &slice["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/service-name"], DERIVED_WEB);
    assert_eq!(labels["multicluster.kubernetes.io/service-name"], "web");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "causeway.io/lighthouse"
    );
    assert_eq!(slices(&docs)[0].1, ["242.1.0.10"], "b's global IP");
    assert_eq!(slice["ports"][0]["port"], 80);

    // In b: its own export is its ready pods (not a global IP).
    let docs = derived_where(&lab, "b", "b's own slice", |s| {
        s.len() == 1 && s[0].0 == "b" && !s[0].1.is_empty()
    });
    for address in &slices(&docs)[0].1 {
        assert!(address.starts_with("10.244."), "pod address {address}");
    }

    // The import names its derived Service.
    within(20, "import annotated", || {
        let path = manifests(&lab, "a").join("causeway-imports/default.web.yaml");
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        (v["metadata"]["annotations"]["multicluster.kubernetes.io/derived-service"] == DERIVED_WEB)
            .then_some(())
    });

    // a exports too: a's slice (its pods) joins b's.
    lab.export("a", "default/web");
    derived_where(&lab, "a", "a's and b's slices", |s| {
        s.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>() == ["a", "b"]
    });

    // Unexported everywhere: the derived objects go.
    lab.unexport("a", "default/web");
    lab.unexport("b", "default/web");
    within(15, "derived objects removed", || {
        ["a", "b"]
            .iter()
            .all(|c| derived_docs(&lab, c).is_none())
            .then_some(())
    });
}

#[test]
fn without_globalnet_a_remote_slice_lists_the_pods_on_their_target_port() {
    let lab = Lab::up("mcsdp", &["--distinct-cidrs"]);
    lab.export("b", "default/web");
    let docs = derived_where(&lab, "a", "b's slice", |s| {
        s.len() == 1 && s[0].0 == "b" && !s[0].1.is_empty()
    });
    // b's own slice (its pods) is what a's slice of b lists.
    let own = derived_where(&lab, "b", "b's own slice", |s| {
        s.len() == 1 && !s[0].1.is_empty()
    });
    assert_eq!(slices(&docs)[0].1, slices(&own)[0].1, "b's pods");
    for address in &slices(&docs)[0].1 {
        assert!(
            !address.starts_with("10.96.") && !address.starts_with("242."),
            "a pod address, not a ClusterIP or global IP: {address}"
        );
    }
    let slice = docs.iter().find(|d| d["kind"] == "EndpointSlice").unwrap();
    assert_eq!(slice["ports"][0]["port"], 8080, "the pods' port");
    let service = &docs[0];
    assert_eq!(service["spec"]["ports"][0]["port"], 80, "the import's port");
}

/// The ClusterSetIP of default/web in `cluster`'s import, once the lab
/// allocated its derived Service one.
fn cluster_set_ip(lab: &Lab, cluster: &str) -> String {
    within(
        20,
        &format!("{cluster}'s import has its ClusterSetIP"),
        || {
            let path = manifests(lab, cluster).join("causeway-imports/default.web.yaml");
            let v: Value = serde_yaml::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
            v["spec"]["ips"][0].as_str().map(str::to_owned)
        },
    )
}

/// From a/client-0, `http://<ClusterSetIP>/` answers from b.
fn reaches_b_through_the_cluster_set_ip(lab: &Lab) {
    lab.export("b", "default/web");
    let ip = cluster_set_ip(lab, "a");
    assert!(ip.starts_with("10.96."), "from a's service CIDR: {ip}");
    // The derived Service shows the same address.
    let docs = derived_where(lab, "a", "b's slice", |s| s.len() == 1);
    assert_eq!(docs[0]["spec"]["clusterIP"], ip.as_str());
    for _ in 0..5 {
        let reply = lab.echo_eventually("a/client-0", &format!("http://{ip}/"));
        assert_eq!(reply["cluster"], "b", "{reply}");
    }
}

#[test]
fn a_pod_reaches_a_remote_export_through_the_cluster_set_ip() {
    reaches_b_through_the_cluster_set_ip(&Lab::up("mcsdt", &[]));
}

#[test]
fn a_pod_reaches_a_remote_export_through_the_cluster_set_ip_without_globalnet() {
    reaches_b_through_the_cluster_set_ip(&Lab::up("mcsdu", &["--distinct-cidrs"]));
}

#[test]
fn a_cluster_whose_tunnel_is_down_leaves_the_slices_and_comes_back() {
    let lab = Lab::up("mcsdh", &[]);
    lab.export("b", "default/web");
    lab.export("a", "default/web");
    derived_where(&lab, "a", "a's and b's slices", |s| s.len() == 2);
    for node in ["b/node-0", "b/node-1"] {
        causeway_tests::ok(
            causeway_tests::causeway(&["lab", "stop", "--name", &lab.name, node]),
            "stop b's gateways",
        );
    }
    // a's gateway reports b `error` after its lost probes: b's slice goes,
    // a's own stays.
    let started = Instant::now();
    derived_where(&lab, "a", "b's slice gone", |s| {
        s.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>() == ["a"]
    });
    eprintln!(
        "b left a's slices {:?} after its gateways stopped",
        started.elapsed()
    );
    for node in ["b/node-0", "b/node-1"] {
        causeway_tests::ok(
            causeway_tests::causeway(&["lab", "start", "--name", &lab.name, node]),
            "start b's gateways",
        );
    }
    derived_where(&lab, "a", "b's slice back", |s| s.len() == 2);
}
