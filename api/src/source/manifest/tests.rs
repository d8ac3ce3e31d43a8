use std::time::Duration;

use super::*;

const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: prod}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: prod
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.5]
    conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
"#;

const NODES: &str = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata: {name: node-1}
  - apiVersion: v1
    kind: Namespace
    metadata: {name: prod}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
"#;

#[test]
fn parse_table() {
    let cases: Vec<(&str, &str, Result<usize, &str>)> = vec![
        ("service file", SVC, Ok(3)),
        ("list and other", NODES, Ok(3)),
        ("empty", "", Ok(0)),
        ("empty docs", "---\n---\n", Ok(0)),
        ("not yaml", "a: [b", Err("document 1")),
        (
            "no kind",
            "apiVersion: v1\nmetadata: {name: x}\n",
            Err("apiVersion and kind"),
        ),
        (
            "no name",
            "apiVersion: v1\nkind: Service\nmetadata: {}\n",
            Err("metadata.name"),
        ),
        (
            "bad field",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: 5}\n",
            Err("Service \"x\""),
        ),
        (
            "second doc bad",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\nkind: [\n",
            Err("document 2"),
        ),
    ];
    for (name, text, want) in cases {
        match (parse_manifests(text), want) {
            (Ok(m), Ok(n)) => assert_eq!(m.len(), n, "{name}"),
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn state_defaults_namespace_and_finds_slices() {
    let files = vec![
        parse_manifests(SVC).unwrap(),
        parse_manifests("apiVersion: v1\nkind: Service\nmetadata: {name: plain}\n").unwrap(),
        parse_manifests(NODES).unwrap(),
    ];
    let s = build_state(&files);
    assert!(s.synced);
    let keys: Vec<_> = s.services.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            ("default".to_string(), "plain".to_string()),
            ("prod".into(), "web".into())
        ]
    );
    assert_eq!(s.service_exports.len(), 1);
    assert_eq!(s.slices_of("prod", "web").count(), 1);
    assert_eq!(s.slices_of("prod", "other").count(), 0);
    assert!(s.nodes.contains_key(&(String::new(), "node-1".into())));
    assert_eq!(s.namespaces.len(), 1);
}

async fn wait_until(
    rx: &mut watch::Receiver<Arc<ClusterState>>,
    what: &str,
    f: impl Fn(&ClusterState) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("state never reached: {what}"))
        .unwrap();
}

#[tokio::test]
async fn directory_source_follows_changes_and_skips_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
    std::fs::create_dir(dir.path().join("nodes")).unwrap();
    std::fs::write(dir.path().join("nodes/all.yml"), NODES).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();

    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let src = ManifestDirSource::spawn(dir.path().into(), Duration::from_millis(50), cancel);
    let mut rx = src.state();
    wait_until(&mut rx, "first read", |s| s.synced).await;
    {
        let s = rx.borrow();
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.nodes.len(), 1);
    }
    let problems = src.problems().borrow().clone();
    let broken = dir.path().join("broken.yaml");
    assert!(
        problems
            .get(&broken)
            .is_some_and(|e| e.contains("document 1")),
        "{problems:?}"
    );

    // Fixing the broken file brings its objects and clears the problem.
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Service\nmetadata: {name: fixed, namespace: prod}\n",
    )
    .unwrap();
    wait_until(&mut rx, "fixed file read", |s| s.services.len() == 2).await;
    assert!(src.problems().borrow().is_empty());

    // A good file turning bad keeps its last good objects.
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Service\nmetadata: {name: fix",
    )
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        src.problems().wait_for(|p| !p.is_empty()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rx.borrow().services.len(), 2);

    // Removing files withdraws their objects.
    std::fs::remove_file(&broken).unwrap();
    std::fs::remove_file(dir.path().join("svc.yaml")).unwrap();
    wait_until(&mut rx, "files removed", |s| {
        s.services.is_empty() && s.service_exports.is_empty()
    })
    .await;
    assert!(src.problems().borrow().is_empty());
}
