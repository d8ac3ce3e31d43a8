//! CIDR discovery: the pure parts table-driven, each source against the
//! fake API server.

use serde_json::json;

use super::*;
use crate::testing::FakeKube;

fn nets(s: &[&str]) -> Vec<IpNet> {
    s.iter().map(|n| n.parse().unwrap()).collect()
}

#[test]
fn node_slices_summarise_to_a_covering_cidr_per_family() {
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &[]),
        // kubeadm + Flannel: /24 slices of 10.244.0.0/16.
        (
            &["10.244.0.0/24", "10.244.1.0/24", "10.244.7.0/24"],
            &["10.244.0.0/16"],
        ),
        // One node still gives the /16 that later nodes fall into.
        (&["10.42.0.0/24"], &["10.42.0.0/16"]),
        // Slices spread wider than a /16 give what covers them.
        (&["10.0.0.0/24", "10.3.0.0/24"], &["10.0.0.0/14"]),
        // Dual stack: one per family.
        (
            &["10.244.1.0/24", "fd00:10:244:1::/64", "fd00:10:244:2::/64"],
            &["10.244.0.0/16", "fd00:10:244::/48"],
        ),
        // Host bits are ignored.
        (&["10.244.1.7/24"], &["10.244.0.0/16"]),
    ];
    for (slices, want) in cases {
        assert_eq!(summarise(&nets(slices)), nets(want), "{slices:?}");
    }
}

#[test]
fn the_refusal_names_the_service_range() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"Service "causeway-cidr-probe" is invalid: spec.clusterIPs: Invalid value: []string{"1.1.1.1"}: failed to allocate IP 1.1.1.1: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"#,
            &["10.96.0.0/12"],
        ),
        (
            "failed to allocate IP 1.1.1.1: the provided IP (1.1.1.1) is not in the valid range. The range of valid IPs is 10.43.0.0/16.",
            &["10.43.0.0/16"],
        ),
        (
            "The range of valid IPs is 10.96.0.0/12, fd00:96::/108",
            &["10.96.0.0/12", "fd00:96::/108"],
        ),
        ("spec.clusterIPs: Invalid value: must be a valid IP", &[]),
    ];
    for (message, want) in cases {
        assert_eq!(parse_service_range(message), nets(want), "{message}");
    }
}

#[test]
fn flags_win_over_discovery() {
    let found = Some((nets(&["10.244.0.0/16"]), CidrSource::NodePodCidrs));
    assert_eq!(
        choose(&nets(&["10.1.0.0/16"]), found.clone()),
        Some((nets(&["10.1.0.0/16"]), CidrSource::Flag))
    );
    assert_eq!(choose(&[], found.clone()), found);
    assert_eq!(choose(&[], Some((vec![], CidrSource::NodePodCidrs))), None);
    assert_eq!(choose(&[], None), None);
}

fn node(name: &str, cidrs: &[&str]) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs}})
}

fn no_calico(fake: &FakeKube) {
    fake.fail(
        None,
        "ippools",
        404,
        "the server could not find the requested resource",
    );
}

fn no_service_cidrs(fake: &FakeKube) {
    fake.fail(
        None,
        "servicecidrs",
        404,
        "the server could not find the requested resource",
    );
}

fn refuse_probe(fake: &FakeKube, range: &str) {
    fake.fail(
        Some("create"),
        "services",
        422,
        &format!(
            "Service \"causeway-cidr-probe\" is invalid: spec.clusterIPs: Invalid value: []string{{\"1.1.1.1\"}}: failed to allocate IP 1.1.1.1: provided IP is not in the valid range. The range of valid IPs is {range}"
        ),
    );
}

#[tokio::test]
async fn pod_cidr_from_nodes_and_service_cidr_from_the_refusal() {
    let fake = FakeKube::new();
    fake.insert("nodes", node("node-0", &["10.244.0.0/24"]));
    fake.insert("nodes", node("node-1", &["10.244.1.0/24"]));
    no_calico(&fake);
    no_service_cidrs(&fake);
    refuse_probe(&fake, "10.96.0.0/12");
    let got = discover(&fake.client(), "causeway", &[], &[])
        .await
        .unwrap();
    assert_eq!(got.pod_cidrs, nets(&["10.244.0.0/16"]));
    assert_eq!(got.pod_source, CidrSource::NodePodCidrs);
    assert_eq!(got.service_cidrs, nets(&["10.96.0.0/12"]));
    assert_eq!(got.service_source, CidrSource::InvalidClusterIp);
    // The probe was a dry run in Causeway's namespace.
    let probe = fake
        .requests()
        .into_iter()
        .find(|r| r.permission.resource == "services")
        .expect("a probe");
    assert!(probe.dry_run, "{probe:?}");
    assert_eq!(probe.namespace.as_deref(), Some("causeway"));
    assert_eq!(probe.body["spec"]["clusterIP"], PROBE_CLUSTER_IP);
    assert!(fake.list("", "services").is_empty());
}

#[tokio::test]
async fn calico_pools_win_over_node_slices() {
    let fake = FakeKube::new();
    fake.insert("nodes", node("node-0", &["10.244.0.0/24"]));
    for (name, cidr, disabled) in [
        ("default-ipv4-ippool", "192.168.0.0/16", false),
        ("old", "172.16.0.0/16", true),
    ] {
        fake.insert(
            "ippools",
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                   "metadata": {"name": name},
                   "spec": {"cidr": cidr, "disabled": disabled, "natOutgoing": true}}),
        );
    }
    no_service_cidrs(&fake);
    refuse_probe(&fake, "10.96.0.0/12");
    let (cidrs, source) = discover_pod_cidrs(&fake.client()).await.unwrap().unwrap();
    assert_eq!(cidrs, nets(&["192.168.0.0/16"]));
    assert_eq!(source, CidrSource::CalicoIpPools);
}

#[tokio::test]
async fn service_cidr_objects_win_over_the_probe() {
    let fake = FakeKube::new();
    fake.insert(
        "servicecidrs",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
               "metadata": {"name": "kubernetes"},
               "spec": {"cidrs": ["10.96.0.0/12", "fd00:10:96::/108"]}}),
    );
    fake.insert(
        "servicecidrs",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
               "metadata": {"name": "extra"}, "spec": {"cidrs": ["10.100.0.0/16"]}}),
    );
    let (cidrs, source) = discover_service_cidrs(&fake.client(), "causeway")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cidrs,
        nets(&["10.96.0.0/12", "10.100.0.0/16", "fd00:10:96::/108"])
    );
    assert_eq!(source, CidrSource::ServiceCidrObjects);
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.permission.resource == "services"),
        "no probe when ServiceCIDRs answer"
    );
}

#[tokio::test]
async fn flags_skip_discovery_and_nothing_found_names_the_flag() {
    let fake = FakeKube::new();
    let got = discover(
        &fake.client(),
        "causeway",
        &nets(&["10.1.0.0/16"]),
        &nets(&["10.2.0.0/16"]),
    )
    .await
    .unwrap();
    assert_eq!(got.pod_source, CidrSource::Flag);
    assert_eq!(got.service_source, CidrSource::Flag);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    // A cluster without node slices, Calico or ServiceCIDRs, whose API
    // server accepts the probe address.
    no_calico(&fake);
    no_service_cidrs(&fake);
    let err = discover(&fake.client(), "causeway", &[], &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--pod-cidr"), "{err}");
    let err = discover(&fake.client(), "causeway", &nets(&["10.1.0.0/16"]), &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--service-cidr"), "{err}");
}
