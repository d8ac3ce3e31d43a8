//! The MCS API conformance suite (kubernetes-sigs/mcs-api `conformance/`,
//! v1beta1) mirrored on the lab: one module per upstream case, named after
//! it, each run in both configurations (`globalnet`: identical CIDRs with
//! Globalnet; `distinct_cidrs`: without). `docs/mcs-conformance.md` maps
//! every upstream case to its module, with where a mirror differs and why.
//! The last modules go beyond the suite: namespace sameness and every
//! conflict kind at once.

#[path = "mcs_conformance/suite.rs"]
mod suite;

use suite::{CLUSTERS, Config, Export, FQDN, Hello, Port, Suite, exporters, ports};

/// Each case's body runs once per configuration, in a lab of its own.
macro_rules! conformance {
    ($($(#[$meta:meta])* fn $case:ident($config:ident) $body:block)*) => {$(
        $(#[$meta])*
        mod $case {
            use super::*;

            fn run($config: Config) $body

            #[test]
            fn globalnet() {
                run(Config::Globalnet)
            }

            #[test]
            fn distinct_cidrs() {
                run(Config::DistinctCidrs)
            }
        }
    )*};
}

fn plain() -> Export {
    Export::default()
}

fn port(name: &'static str, port: u16, protocol: &'static str) -> Port {
    Port {
        name,
        port,
        protocol,
    }
}

fn triples(ports: &[(&str, u64, &str)]) -> Vec<(String, u64, String)> {
    let mut out: Vec<_> = ports
        .iter()
        .map(|(n, p, proto)| ((*n).to_owned(), *p, (*proto).to_owned()))
        .collect();
    out.sort();
    out
}

/// The hello Service's own ports (tcp 42, udp 42).
fn hello_ports() -> Vec<(String, u64, String)> {
    triples(&[("tcp", 42, "TCP"), ("udp", 42, "UDP")])
}

conformance! {
    // ---- service_import.go ----

    /// "A ServiceImport should only exist as long as there's at least one
    /// exporting cluster" (Required).
    fn a_service_import_should_only_exist_as_long_as_there_is_at_least_one_exporting_cluster(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        s.await_import("a", |_| true);
        s.deploy("b", &Hello::default());
        s.export("b", &plain());
        s.await_import("a", |i| exporters(i) == ["a", "b"]);
        s.ensure_import("a");
        s.unexport("a");
        s.await_import("a", |i| exporters(i) == ["b"]);
        s.ensure_import("a");
        s.unexport("b");
        for cluster in CLUSTERS {
            s.await_no_import(cluster);
        }
    }

    /// "Only labels and annotations specified as exported in the
    /// ServiceExport should be propagated to the ServiceImport" (Optional).
    fn only_labels_and_annotations_specified_as_exported_should_be_propagated_to_the_service_import(config) {
        let export = Export {
            labels: vec![("dummy-label", "true")],
            annotations: vec![("dummy-annotation", "true")],
        };
        let s = Suite::exported_from_a(config, &Hello::default(), &export);
        for cluster in CLUSTERS {
            let import = s.await_import(cluster, |_| true);
            let meta = &import["metadata"];
            assert_eq!(meta["labels"]["dummy-label"], "true", "{import:?}");
            assert_eq!(meta["annotations"]["dummy-annotation"], "true", "{import:?}");
            assert!(meta["labels"]["service-label"].is_null(), "{import:?}");
            assert!(meta["annotations"]["service-annotation"].is_null(), "{import:?}");
        }
    }

    /// "A service exported on two clusters / with conflicting annotations
    /// and labels / should apply the conflict resolution policy and report
    /// a Conflict condition on each ServiceExport" (Optional).
    fn a_service_exported_on_two_clusters_with_conflicting_annotations_and_labels_should_apply_the_conflict_resolution_policy(config) {
        let first = Export {
            labels: vec![("dummy-label", "true")],
            annotations: vec![("dummy-annotation", "true")],
        };
        let second = Export {
            labels: vec![("dummy-label2", "true")],
            annotations: vec![("dummy-annotation2", "true")],
        };
        let s = Suite::exported_from_a_then_b(config, &Hello::default(), &first, &Hello::default(), &second);
        for cluster in CLUSTERS {
            let conflict = s.await_condition(cluster, "Conflict", "True");
            assert_eq!(conflict["reason"], "LabelsConflict,AnnotationsConflict", "{conflict}");
        }
        let import = s.await_import("a", |i| exporters(i) == ["a", "b"]);
        let meta = &import["metadata"];
        assert_eq!(meta["labels"]["dummy-label"], "true", "the oldest export's: {import:?}");
        assert_eq!(meta["annotations"]["dummy-annotation"], "true", "{import:?}");
        assert!(meta["labels"]["dummy-label2"].is_null(), "{import:?}");
        assert!(meta["annotations"]["dummy-annotation2"].is_null(), "{import:?}");
    }

    /// "Exporting a ClusterIP service should create a ServiceImport of type
    /// ClusterSetIP in the service's namespace in each cluster.
    /// Unexporting should delete the ServiceImport" (Required).
    fn exporting_a_cluster_ip_service_should_create_a_cluster_set_ip_service_import_in_each_cluster(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        s.await_condition("a", "Valid", "True");
        for cluster in CLUSTERS {
            let import = s.await_import(cluster, |_| true);
            assert_eq!(import["spec"]["type"], "ClusterSetIP", "in {cluster}");
            assert_eq!(import["metadata"]["namespace"], "default", "in {cluster}");
        }
        s.unexport("a");
        for cluster in CLUSTERS {
            s.await_no_import(cluster);
        }
    }

    /// "The SessionAffinity for a ClusterSetIP ServiceImport should match
    /// the exported service's SessionAffinity" (Required).
    fn the_session_affinity_for_a_cluster_set_ip_service_import_should_match_the_exported_service(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        let import = s.await_import("a", |_| true);
        assert_eq!(import["spec"]["sessionAffinity"], "ClientIP", "{import:?}");
        assert_eq!(
            import["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 10,
            "{import:?}"
        );
    }

    /// "The InternalTrafficPolicy for a ClusterSetIP ServiceImport should
    /// match the exported service's InternalTrafficPolicy" (Required).
    fn the_internal_traffic_policy_for_a_cluster_set_ip_service_import_should_match_the_exported_service(config) {
        let hello = Hello {
            internal_traffic_policy: Some("Cluster"),
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        let import = s.await_import("a", |_| true);
        assert_eq!(import["spec"]["internalTrafficPolicy"], "Cluster", "{import:?}");
    }

    /// "The TrafficDistribution for a ClusterSetIP ServiceImport should
    /// match the exported service's TrafficDistribution" (Required).
    fn the_traffic_distribution_for_a_cluster_set_ip_service_import_should_match_the_exported_service(config) {
        let hello = Hello {
            traffic_distribution: Some("PreferClose"),
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        let import = s.await_import("a", |_| true);
        assert_eq!(import["spec"]["trafficDistribution"], "PreferClose", "{import:?}");
    }

    /// "An IP should be allocated for a ClusterSetIP ServiceImport for each
    /// IP family" (Required). The lab's clusters are IPv4-only.
    fn an_ip_should_be_allocated_for_a_cluster_set_ip_service_import_for_each_ip_family(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        let import = s.await_import("a", |i| i["spec"]["ips"].as_sequence().is_some_and(|s| !s.is_empty()));
        let ips = import["spec"]["ips"].as_sequence().expect("ips");
        let families = import["spec"]["ipFamilies"].as_sequence().expect("ipFamilies");
        assert_eq!(ips.len(), families.len(), "{import:?}");
        for (ip, family) in ips.iter().zip(families) {
            let ip: std::net::IpAddr = ip.as_str().expect("an IP").parse().expect("a valid IP");
            assert_eq!(family, if ip.is_ipv4() { "IPv4" } else { "IPv6" }, "{import:?}");
        }
    }

    /// "The ports for a ClusterSetIP ServiceImport should match those of the
    /// exported service" (Required).
    fn the_ports_for_a_cluster_set_ip_service_import_should_match_those_of_the_exported_service(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        let import = s.await_import("a", |_| true);
        assert_eq!(ports(&import), hello_ports());
    }

    /// "A ClusterIP service exported on two clusters / should expose the
    /// union of the constituent service ports and raise a conflict"
    /// (Required).
    fn a_cluster_ip_service_exported_on_two_clusters_should_expose_the_union_of_the_ports_and_raise_a_conflict(config) {
        let hello2 = Hello {
            ports: vec![port("tcp", 42, "TCP"), port("stcp", 142, "SCTP")],
            ..Hello::default()
        };
        let s = Suite::exported_from_a_then_b(config, &Hello::default(), &plain(), &hello2, &plain());
        for cluster in CLUSTERS {
            let conflict = s.await_condition(cluster, "Conflict", "True");
            assert_eq!(conflict["reason"], "PortConflict", "{conflict}");
        }
        s.await_import("a", |i| {
            ports(i) == triples(&[("tcp", 42, "TCP"), ("udp", 42, "UDP"), ("stcp", 142, "SCTP")])
        });
    }

    /// "A ClusterIP service exported on two clusters / with conflicting
    /// ports / should apply the conflict resolution policy and report a
    /// Conflict condition on each ServiceExport" (Required).
    fn a_cluster_ip_service_exported_on_two_clusters_with_conflicting_ports_should_apply_the_conflict_resolution_policy(config) {
        let hello2 = Hello {
            ports: vec![port("tcp", 43, "TCP")],
            ..Hello::default()
        };
        let s = Suite::exported_from_a_then_b(config, &Hello::default(), &plain(), &hello2, &plain());
        for cluster in CLUSTERS {
            let conflict = s.await_condition(cluster, "Conflict", "True");
            assert_eq!(conflict["reason"], "PortConflict", "{conflict}");
        }
        let import = s.await_import("a", |i| exporters(i) == ["a", "b"]);
        assert_eq!(ports(&import), hello_ports(), "the oldest export's ports stand");
    }

    /// "Exporting a headless service should create a ServiceImport of type
    /// Headless in the service's namespace in each cluster. Unexporting
    /// should delete the ServiceImport" (Required).
    fn exporting_a_headless_service_should_create_a_headless_service_import_in_each_cluster(config) {
        let hello = Hello {
            headless: true,
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        for cluster in CLUSTERS {
            let import = s.await_import(cluster, |_| true);
            assert_eq!(import["spec"]["type"], "Headless", "in {cluster}");
        }
        s.unexport("a");
        for cluster in CLUSTERS {
            s.await_no_import(cluster);
        }
    }

    /// "No clusterset IP should be allocated for a Headless ServiceImport"
    /// (Required).
    fn no_cluster_set_ip_should_be_allocated_for_a_headless_service_import(config) {
        let hello = Hello {
            headless: true,
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        s.await_import("a", |_| true);
        suite::consistently(5, "a Headless import without ips", || {
            s.import("a").is_some_and(|i| {
                i["spec"]["ips"].as_sequence().is_none_or(|ips| ips.is_empty())
            })
        });
    }

    /// "Exporting an ExternalName service should set ServiceExport Valid
    /// condition to False" (Required).
    fn exporting_an_external_name_service_should_set_service_export_valid_condition_to_false(config) {
        let hello = Hello {
            external_name: true,
            client_ip_affinity: false,
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        let valid = s.await_condition("a", "Valid", "False");
        assert_eq!(valid["reason"], "InvalidServiceType", "{valid}");
        s.ensure_no_import("a");
    }

    /// "A service exported on two clusters with conflicting headlessness
    /// should apply the conflict resolution policy and report a Conflict
    /// condition on the ServiceExport" (Required).
    fn a_service_exported_on_two_clusters_with_conflicting_headlessness_should_apply_the_conflict_resolution_policy(config) {
        let hello2 = Hello {
            headless: true,
            ..Hello::default()
        };
        let s = Suite::exported_from_a_then_b(config, &Hello::default(), &plain(), &hello2, &plain());
        for cluster in CLUSTERS {
            let conflict = s.await_condition(cluster, "Conflict", "True");
            assert_eq!(conflict["reason"], "TypeConflict", "{conflict}");
        }
        for cluster in CLUSTERS {
            let import = s.await_import(cluster, |i| exporters(i) == ["a", "b"]);
            assert_eq!(import["spec"]["type"], "ClusterSetIP", "the oldest's type, in {cluster}");
        }
    }

    // ---- connectivity.go ----

    /// "Connectivity to a service that is not exported / should be
    /// inaccessible" (Required).
    fn connectivity_to_a_service_that_is_not_exported_should_be_inaccessible(config) {
        let s = Suite::up(config);
        s.deploy("a", &Hello::default());
        for from in CLUSTERS {
            for _ in 0..20 {
                assert_eq!(s.nc(from, 42, false), None, "{FQDN} answered from {from}");
            }
        }
    }

    /// "Connectivity to an exported ClusterIP service / should be accessible
    /// through DNS" (Optional).
    fn connectivity_to_an_exported_cluster_ip_service_should_be_accessible_through_dns(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        s.await_answers(42, "a", 1);
    }

    /// "Connectivity to a ClusterIP service existing in two clusters but
    /// exported from one / should only access the exporting cluster"
    /// (Optional).
    fn connectivity_to_a_cluster_ip_service_existing_in_two_clusters_but_exported_from_one_should_only_access_the_exporting_cluster(config) {
        let s = Suite::up(config);
        s.deploy("b", &Hello::default());
        s.deploy("a", &Hello::default());
        s.export("a", &plain());
        s.await_answers(42, "a", 10);
    }

    /// "Connectivity to exported services with same port name but different
    /// port numbers on each cluster / should only route traffic to the
    /// cluster that exposes the port" (Optional).
    fn connectivity_to_exported_services_with_same_port_name_but_different_port_numbers_should_only_route_to_the_cluster_that_exposes_the_port(config) {
        let hello2 = Hello {
            ports: vec![port("tcp", 4242, "TCP")],
            ..Hello::default()
        };
        let s = Suite::exported_from_a_then_b(config, &Hello::default(), &plain(), &hello2, &plain());
        s.await_import("a", |i| exporters(i) == ["a", "b"]);
        s.await_answers(42, "a", 10);
    }

    /// "Connectivity to exported services with different port name on each
    /// cluster / should route traffic to each port only to the cluster that
    /// exposes it" (Optional).
    fn connectivity_to_exported_services_with_different_port_name_on_each_cluster_should_route_each_port_only_to_the_cluster_that_exposes_it(config) {
        let hello2 = Hello {
            ports: vec![port("tcp2", 4242, "TCP")],
            ..Hello::default()
        };
        let s = Suite::exported_from_a_then_b(config, &Hello::default(), &plain(), &hello2, &plain());
        s.await_answers(42, "a", 10);
        s.await_answers(4242, "b", 10);
    }

    // ---- clusterip_service_dns.go ----

    /// "A DNS lookup of the <service>.<ns>.svc.clusterset.local domain for
    /// a ClusterIP service should resolve to the clusterset IP" (Optional).
    fn a_dns_lookup_for_a_cluster_ip_service_should_resolve_to_the_cluster_set_ip(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        for cluster in CLUSTERS {
            let import = s.await_import(cluster, |i| i["spec"]["ips"][0].is_string());
            let ip = import["spec"]["ips"][0].as_str().expect("an IP").to_owned();
            s.await_dig(cluster, &["A", FQDN], |a| a.lines().any(|l| l == ip));
        }
    }

    /// "A DNS SRV query of the <service>.<ns>.svc.clusterset.local domain
    /// for a ClusterIP service should return valid SRV records" (Optional):
    /// one record, the first port, the service's name.
    fn a_dns_srv_query_for_a_cluster_ip_service_should_return_valid_srv_records(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        for cluster in CLUSTERS {
            let srv = s.await_dig(cluster, &["SRV", FQDN], |a| !a.trim().is_empty());
            let records: Vec<Vec<&str>> = srv.lines().map(|l| l.split_whitespace().collect()).collect();
            assert_eq!(records.len(), 1, "one SRV record from {cluster}: {srv}");
            assert_eq!(records[0][2], "42", "{srv}");
            assert_eq!(records[0][3], format!("{FQDN}."), "{srv}");
        }
    }

    /// "DNS lookups of the <service>.<ns>.svc.cluster.local domain for a
    /// ClusterIP service should only resolve local services" (Optional).
    /// `cluster.local` is the cluster DNS's zone, which the lab does not
    /// run; what Causeway owns is that its server never answers it, so a
    /// cluster-local name never leads to another cluster.
    fn dns_lookups_of_the_cluster_local_domain_should_only_resolve_local_services(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        s.await_import("a", |_| true);
        for cluster in CLUSTERS {
            let answer = s.dig_status(cluster, "hello.default.svc.cluster.local");
            assert!(answer.contains("status: REFUSED"), "from {cluster}: {answer}");
        }
    }

    // ---- headless_service_dns.go ----

    /// "A DNS query of the <service>.<ns>.svc.clusterset.local domain for a
    /// headless service should return the ready endpoint addresses of all
    /// the backing pods" (Optional). Under Globalnet another cluster
    /// reaches the pods by their global IPs, so that is what it gets.
    fn a_dns_query_for_a_headless_service_should_return_the_ready_endpoint_addresses_of_all_the_backing_pods(config) {
        let hello = Hello {
            headless: true,
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        let mut pods = s.pod_ips("a");
        pods.sort();
        for cluster in CLUSTERS {
            let answer = s.await_dig(cluster, &["A", FQDN], |a| a.lines().count() == pods.len());
            let mut got: Vec<String> = answer.lines().map(str::to_owned).collect();
            got.sort();
            if config == Config::Globalnet && cluster != "a" {
                assert!(got.iter().all(|ip| ip.starts_with("242.0.")), "a's global IPs: {got:?}");
            } else {
                assert_eq!(got, pods, "from {cluster}");
            }
        }
    }

    /// "A DNS query of the <hostname>.<clusterid>.<service>.<ns>.svc.clusterset.local
    /// domain for a headless StatefulSet service should return the requested
    /// pod's endpoint address" (Optional): hostnames read from the MCS
    /// EndpointSlices, as the suite does.
    fn a_dns_query_of_the_hostname_cluster_id_domain_for_a_headless_stateful_set_service_should_return_the_pods_address(config) {
        let hello = Hello {
            headless: true,
            stateful_set: true,
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        for cluster in CLUSTERS {
            let slices = s.await_mcs_slices(cluster, |slices| {
                slices.iter().any(|s| s["endpoints"].as_sequence().is_some_and(|e| e.len() == 2))
            });
            let slice = slices
                .iter()
                .find(|s| s["endpoints"].as_sequence().is_some_and(|e| e.len() == 2))
                .expect("a slice with both pods");
            let source = slice["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]
                .as_str()
                .expect("source cluster")
                .to_owned();
            assert_eq!(source, "a");
            for ep in slice["endpoints"].as_sequence().expect("endpoints") {
                assert_ne!(ep["conditions"]["ready"], false, "{ep:?}");
                let hostname = ep["hostname"].as_str().expect("a hostname in the MCS slice");
                let address = ep["addresses"][0].as_str().expect("an address").to_owned();
                let name = format!("{hostname}.{source}.{FQDN}");
                s.await_dig(cluster, &["A", &name], |a| a.trim() == address);
            }
        }
    }

    /// "A DNS SRV query of the <service>.<ns>.svc.clusterset.local domain
    /// for a headless service should return valid SRV records" (Optional):
    /// one per endpoint, named after it, on the first port.
    fn a_dns_srv_query_for_a_headless_service_should_return_valid_srv_records(config) {
        let hello = Hello {
            headless: true,
            ..Hello::default()
        };
        let s = Suite::exported_from_a(config, &hello, &plain());
        let pods = s.pod_ips("a");
        for cluster in CLUSTERS {
            let srv = s.await_dig(cluster, &["SRV", FQDN], |a| a.lines().count() == pods.len());
            let records: Vec<Vec<&str>> = srv.lines().map(|l| l.split_whitespace().collect()).collect();
            for record in &records {
                assert_eq!(record[2], "42", "{srv}");
            }
            // The suite names an endpoint without a hostname by its address.
            // Under Globalnet, another cluster knows a's pods by their
            // global IPs, so its names come from those.
            if config == Config::DistinctCidrs || cluster == "a" {
                for ip in &pods {
                    let label = ip.replace('.', "-");
                    assert!(
                        records.iter().any(|r| r[3].starts_with(&format!("{label}."))),
                        "an SRV record for {label} from {cluster}: {srv}"
                    );
                }
            }
        }
    }

    // ---- endpoint_slice.go ----

    /// "Exporting a service should create an MCS EndpointSlice in the
    /// service's namespace in each cluster with the required MCS labels.
    /// Unexporting should delete the EndpointSlice" (Optional).
    fn exporting_a_service_should_create_an_mcs_endpoint_slice_in_each_cluster_and_unexporting_should_delete_it(config) {
        let s = Suite::exported_from_a(config, &Hello::default(), &plain());
        for cluster in CLUSTERS {
            let slices = s.await_mcs_slices(cluster, |slices| {
                slices.iter().any(|s| s["endpoints"].as_sequence().is_some_and(|e| !e.is_empty()))
            });
            for slice in &slices {
                let labels = &slice["metadata"]["labels"];
                assert_eq!(labels["multicluster.kubernetes.io/service-name"], "hello");
                assert_eq!(slice["metadata"]["namespace"], "default");
                let managed_by = labels["endpointslice.kubernetes.io/managed-by"].as_str().expect("managed-by");
                assert_ne!(managed_by, "endpointslice-controller.k8s.io");
            }
        }
        s.unexport("a");
        for cluster in CLUSTERS {
            s.await_mcs_slices(cluster, <[_]>::is_empty);
        }
    }

    // ---- beyond the suite ----

    /// Namespace sameness: a cluster without the namespace gets no import,
    /// and gets it when the namespace appears.
    fn a_cluster_without_the_namespace_gets_the_import_when_the_namespace_appears(config) {
        let s = Suite::up(config);
        s.lab.write_manifest("a", "prod-namespace.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n");
        s.lab.write_manifest("a", "prod-api.yaml", &s.lab.manifest_document("a", "service-default-web.yaml", "Service")
            .replace("namespace: default", "namespace: prod"));
        s.lab.export("a", "prod/web");
        let path = |cluster: &str| format!(
            "/run/causeway/lab/{}/clusters/{cluster}/manifests/causeway-imports/prod.web.yaml",
            s.lab.name
        );
        suite::within(20, "a's prod/web import", || std::path::Path::new(&path("a")).exists().then_some(()));
        suite::consistently(3, "b has no prod namespace, so no import", || !std::path::Path::new(&path("b")).exists());
        s.lab.write_manifest("b", "prod-namespace.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n");
        suite::within(20, "b's prod/web import once b has prod", || std::path::Path::new(&path("b")).exists().then_some(()));
    }

    /// An export created before its Service: Valid is False (`NoService`)
    /// and nothing is imported until the Service appears, then it works.
    fn an_export_created_before_its_service_starts_working_when_the_service_appears(config) {
        let s = Suite::up(config);
        s.export("a", &plain());
        let valid = s.await_condition("a", "Valid", "False");
        assert_eq!(valid["reason"], "NoService", "{valid}");
        s.ensure_no_import("b");
        s.deploy("a", &Hello::default());
        s.await_condition("a", "Valid", "True");
        s.await_answers(42, "a", 1);
    }

    /// With both clusters exporting and `sessionAffinity: ClientIP`, the
    /// service proxy keeps a client on one pod, so on one cluster, for
    /// every new connection within the timeout.
    fn with_client_ip_affinity_a_client_stays_on_one_cluster(config) {
        let s = Suite::exported_from_a_then_b(config, &Hello::default(), &plain(), &Hello::default(), &plain());
        s.await_import("a", |i| exporters(i) == ["a", "b"]);
        for from in CLUSTERS {
            s.await_mcs_slices(from, |slices| slices.len() == 2);
            let first = suite::within(20, &format!("an answer from {from}"), || s.nc_reply(from, 42, false));
            for _ in 0..9 {
                let next = s.nc_reply(from, 42, false).expect("an answer");
                assert_eq!(
                    (&next["cluster"], &next["pod"]),
                    (&first["cluster"], &first["pod"]),
                    "from {from}: ClientIP affinity keeps one endpoint"
                );
            }
        }
    }

    /// Every conflict kind two ClusterSetIP exports can have: the second
    /// export differs in ports, affinity, both policies, labels and
    /// annotations, then in the affinity's timeout instead of the affinity
    /// (one or the other is reported); both exports name every reason, the
    /// oldest's fields stand, and traffic keeps flowing to the oldest's
    /// cluster. (A type conflict is the headlessness case's.)
    fn every_conflict_kind_is_reported_on_both_exports_and_the_oldest_export_wins(config) {
        let first = Hello {
            internal_traffic_policy: Some("Cluster"),
            traffic_distribution: Some("PreferClose"),
            ..Hello::default()
        };
        let export1 = Export {
            labels: vec![("dummy-label", "1")],
            annotations: vec![("dummy-annotation", "1")],
        };
        let second = Hello {
            ports: vec![port("tcp", 43, "TCP")],
            client_ip_affinity: false,
            internal_traffic_policy: Some("Local"),
            traffic_distribution: None,
            ..Hello::default()
        };
        let export2 = Export {
            labels: vec![("dummy-label", "2")],
            annotations: vec![("dummy-annotation", "2")],
        };
        let s = Suite::exported_from_a_then_b(config, &first, &export1, &second, &export2);
        let others = "LabelsConflict,AnnotationsConflict,InternalTrafficPolicyConflict,TrafficDistributionConflict";
        for cluster in CLUSTERS {
            s.await_condition_reason(cluster, &format!("PortConflict,SessionAffinityConflict,{others}"));
        }
        s.deploy("b", &Hello { client_ip_affinity: true, affinity_timeout: 20, ..second.clone() });
        for cluster in CLUSTERS {
            s.await_condition_reason(cluster, &format!("PortConflict,SessionAffinityConfigConflict,{others}"));
        }
        let import = s.await_import("b", |i| exporters(i) == ["a", "b"]);
        assert_eq!(ports(&import), hello_ports());
        assert_eq!(import["spec"]["sessionAffinity"], "ClientIP");
        assert_eq!(import["spec"]["internalTrafficPolicy"], "Cluster");
        assert_eq!(import["spec"]["trafficDistribution"], "PreferClose");
        assert_eq!(import["metadata"]["labels"]["dummy-label"], "1");
        s.await_answers(42, "a", 3);
    }
}
