//! MCS ServiceImports on the lab: the import controller in each cluster's
//! active gateway writes `causeway-imports/<namespace>.<name>.yaml` into
//! the cluster's manifest directory (the lab's API server stand-in) for
//! every exported service whose namespace the cluster has.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use causeway_tests::{Lab, import_clusters as clusters, within};
use serde_yaml::Value;

fn import_path(lab: &Lab, cluster: &str, file: &str) -> PathBuf {
    PathBuf::from(format!(
        "/run/causeway/lab/{}/clusters/{cluster}/manifests/causeway-imports/{file}",
        lab.name
    ))
}

/// The ServiceImport file of `cluster`, once it satisfies `want`.
fn import_where(lab: &Lab, cluster: &str, file: &str, want: impl Fn(&Value) -> bool) -> Value {
    let path = import_path(lab, cluster, file);
    within(20, &format!("{} as wanted", path.display()), || {
        let text = std::fs::read_to_string(&path).ok()?;
        let v: Value = serde_yaml::from_str(&text).ok()?;
        want(&v).then_some(v)
    })
}

#[test]
fn an_export_is_imported_in_every_cluster_and_unexporting_removes_it() {
    let lab = Lab::up("mcsi", &[]);
    lab.export("b", "default/web");
    for cluster in ["a", "b"] {
        let import = import_where(&lab, cluster, "default.web.yaml", |v| clusters(v) == ["b"]);
        assert_eq!(import["apiVersion"], "multicluster.x-k8s.io/v1beta1");
        assert_eq!(import["kind"], "ServiceImport");
        assert_eq!(import["metadata"]["namespace"], "default");
        assert_eq!(import["spec"]["type"], "ClusterSetIP");
        assert_eq!(import["spec"]["ports"][0]["port"], 80, "{import:?}");
        assert_eq!(
            import["metadata"]["labels"]["causeway.io/managed-by"],
            "import-controller"
        );
    }

    // Both export: both clusters list both exporters.
    lab.export("a", "default/web");
    for cluster in ["a", "b"] {
        import_where(&lab, cluster, "default.web.yaml", |v| {
            clusters(v) == ["a", "b"]
        });
    }

    // Unexported everywhere: gone everywhere within seconds.
    lab.unexport("a", "default/web");
    lab.unexport("b", "default/web");
    let started = Instant::now();
    within(10, "imports removed", || {
        ["a", "b"]
            .iter()
            .all(|c| !import_path(&lab, c, "default.web.yaml").exists())
            .then_some(())
    });
    eprintln!("imports removed in {:?}", started.elapsed());
}

const PROD_API: &str = "
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod, labels: {service-label: 'true'}}
spec:
  clusterIP: 10.96.0.77
  clusterIPs: [10.96.0.77]
  ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.77]
    conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: api, namespace: prod}
spec:
  exportedLabels: {dummy-label: 'true'}
  exportedAnnotations: {dummy-annotation: 'true'}
";

const PROD: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n";

#[test]
fn a_cluster_gets_the_import_when_the_namespace_appears() {
    let lab = Lab::up("mcsn", &[]);
    lab.write_manifest("b", "prod-namespace.yaml", PROD);
    lab.write_manifest("b", "prod-api.yaml", PROD_API);
    let import = import_where(&lab, "b", "prod.api.yaml", |v| clusters(v) == ["b"]);
    // Only the export's labels and annotations reach the import.
    assert_eq!(import["metadata"]["labels"]["dummy-label"], "true");
    assert!(import["metadata"]["labels"]["service-label"].is_null());
    assert_eq!(
        import["metadata"]["annotations"]["dummy-annotation"],
        "true"
    );

    // a has no prod namespace: no import, until it has.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!import_path(&lab, "a", "prod.api.yaml").exists());
    lab.write_manifest("a", "prod-namespace.yaml", PROD);
    import_where(&lab, "a", "prod.api.yaml", |v| clusters(v) == ["b"]);
}
