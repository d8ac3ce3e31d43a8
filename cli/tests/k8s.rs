//! The daemons' Kubernetes code started the way the chart starts them,
//! against a fake API server (kube's mock service): the gateway takes the
//! Lease, publishes its Endpoint and writes ServiceExport status; the route
//! agent and the DNS server read their records; `join --kubernetes-broker`
//! writes the broker objects and files that parse. Then the chart's side:
//! every permission the code used is what `helm template helm/causeway`
//! grants each ServiceAccount (both directions), and every container's
//! args parse with the real `causeway` parser.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::election::Elector;
use causeway_api::records::{AnyRecord, CableBackend, Cluster, Endpoint, WireGuardKey};
use causeway_api::source::ClusterSource;
use causeway_api::store::{FakeStore, Store};
use causeway_api::testing::FakeKube;
use causeway_cli::broker::{BrokerFile, JoinFlags};
use causeway_cli::daemon::{GATEWAY_LEASE, KubeCluster, gateway_readiness};
use causeway_gateway::cable::fake::FakeCable;
use causeway_gateway::cable::{InterfaceName, KeyPair};
use causeway_gateway::engine::{Datapath, Gateway, GatewayConfig, GatewayState};
use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NS: &str = "causeway";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A kubeadm-like cluster: two nodes with /24 slices, no Calico, no
/// ServiceCIDR API (so discovery takes every path), and an exported
/// `default/web`.
fn cluster() -> FakeKube {
    let fake = FakeKube::new();
    for (i, name) in ["node-0", "node-1", "node-2"].iter().enumerate() {
        // node-0 is a gateway behind NAT; node-2's annotation is a typo.
        let annotations = match i {
            0 => json!({"causeway.io/public-ip": "203.0.113.10"}),
            2 => json!({"causeway.io/public-ip": "203.0.113"}),
            _ => json!({}),
        };
        fake.insert(
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "annotations": annotations},
                   "spec": {"podCIDR": format!("10.244.{i}.0/24"),
                            "podCIDRs": [format!("10.244.{i}.0/24")]}}),
        );
    }
    let missing = "the server could not find the requested resource";
    fake.fail(None, "ippools", 404, missing);
    fake.fail(None, "servicecidrs", 404, missing);
    fake.fail(
        Some("create"),
        "services",
        422,
        "Service \"causeway-cidr-probe\" is invalid: spec.clusterIPs: Invalid value: []string{\"1.1.1.1\"}: failed to allocate IP 1.1.1.1: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12",
    );
    fake.insert(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    );
    fake.insert(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"], "type": "ClusterIP",
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    );
    fake.insert(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    );
    fake.insert(
        "serviceexports",
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
               "metadata": {"name": "web", "namespace": "default"}}),
    );
    fake
}

/// Logs to the test's output with RUST_LOG set.
fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Waits (bounded) until `check` holds; on time-out names what the fake
/// API server was asked.
async fn eventually(fake: &FakeKube, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        if Instant::now() > deadline {
            let asked: BTreeSet<String> = fake
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            panic!(
                "timed out waiting for {what}; requests:\n{}",
                asked.into_iter().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Routes and nftables are the kernel's; here they go nowhere.
struct NoDatapath;

#[async_trait::async_trait]
impl Datapath for NoDatapath {
    async fn converge(&self, _: &std::collections::BTreeSet<IpNet>) -> Result<(), String> {
        Ok(())
    }
    async fn withdraw(&self) -> Result<(), String> {
        Ok(())
    }
}

fn remote_cluster() -> Cluster {
    Cluster {
        id: "b".parse().unwrap(),
        pod_cidrs: vec![net("10.244.0.0/16")],
        service_cidrs: vec![net("10.96.0.0/12")],
        global_cidr: Some("242.1.0.0/16".parse().unwrap()),
    }
}

/// Built from JSON, as the broker would hand it over.
fn remote_endpoint() -> Endpoint {
    serde_json::from_value(json!({
        "cluster": "b",
        "nodeName": "b-node-0",
        "privateIp": "192.0.2.20",
        "port": 4500,
        "publicKey": WireGuardKey::from_bytes([7; 32]).to_base64(),
        "subnets": ["242.1.0.0/16"],
        "backend": "userspace",
        "mtu": 1420,
        "healthCheckIp": "242.1.0.1",
    }))
    .expect("an Endpoint record")
}

/// What `causeway gateway --store kubernetes` does with the cluster's API:
/// discovery, Lease, records (its own, and a remote's mirrored in and out),
/// the cluster source, ServiceExport status, the removal check.
async fn exercise_gateway(fake: &FakeKube) {
    logs();
    let k = KubeCluster::new(fake.client(), NS);
    let cidrs = k.cidrs(&[], &[]).await.unwrap();
    assert_eq!(cidrs.pod_cidrs, vec![net("10.244.0.0/16")]);
    // The public address, from the node's annotation.
    assert_eq!(
        k.node_public_ip("node-0").await.unwrap(),
        Some("203.0.113.10".parse().unwrap())
    );
    assert_eq!(k.node_public_ip("node-1").await.unwrap(), None);
    assert_eq!(k.node_public_ip("node-9").await.unwrap(), None);
    let typo = k.node_public_ip("node-2").await.unwrap_err().to_string();
    assert!(
        typo.contains("not an IP address") && typo.contains("--public-ip"),
        "{typo}"
    );
    assert_eq!(cidrs.service_cidrs, vec![net("10.96.0.0/12")]);
    let shutdown = CancellationToken::new();
    let (local, elector, source, export_writer) =
        k.gateway_backends("node-0", Duration::from_secs(2), shutdown.clone());
    let broker = Arc::new(FakeStore::new());
    broker
        .put(&AnyRecord::Cluster(remote_cluster()))
        .await
        .unwrap();
    broker
        .put(&AnyRecord::Endpoint(remote_endpoint()))
        .await
        .unwrap();
    let (_broker_tx, broker_rx) = watch::channel(Some(broker.clone() as Arc<dyn Store>));
    let interface = InterfaceName::new("causeway0").unwrap();
    let config = GatewayConfig {
        cluster: "a".parse().unwrap(),
        node: "node-0".into(),
        private_ip: "192.0.2.10".parse().unwrap(),
        public_ip: None,
        listen_port: 4500,
        key: KeyPair::generate(),
        backend: CableBackend::Userspace,
        mtu: 1420,
        // Not on this machine: health probing fails to bind and says so.
        tunnel_ip: "242.0.0.1".parse::<IpAddr>().unwrap(),
        pod_cidrs: cidrs.pod_cidrs,
        service_cidrs: cidrs.service_cidrs,
        node_cidrs: vec![],
        global_cidr: Some("242.0.0.0/16".parse().unwrap()),
        keepalive: 10,
        resync: Duration::from_secs(10),
        globalnet: None,
    };
    let gateway = Arc::new(Gateway {
        config,
        local,
        broker: broker_rx,
        cable: Arc::new(FakeCable::new(interface)),
        datapath: Arc::new(NoDatapath),
        state: watch::channel(GatewayState::default()).0,
        health: watch::channel(None).0,
        source,
        nat: watch::channel(None).0,
        export_status: None,
        export_writer,
    });
    let ready = gateway_readiness(&gateway, &*elector);
    let run = tokio::spawn(gateway.clone().run(elector, shutdown.clone()));

    eventually(fake, "the Lease held by node-0", || {
        fake.get("coordination.k8s.io", "leases", NS, GATEWAY_LEASE)
            .is_some_and(|l| l["spec"]["holderIdentity"] == "node-0")
    })
    .await;
    eventually(fake, "the gateway's Endpoint record", || {
        fake.get("causeway.io", "gatewayendpoints", NS, "a")
            .is_some_and(|e| e["spec"]["nodeName"] == "node-0")
    })
    .await;
    eventually(
        fake,
        "the remote Endpoint mirrored into the cluster",
        || {
            fake.get("causeway.io", "gatewayendpoints", NS, "b")
                .is_some()
        },
    )
    .await;
    eventually(fake, "the export's ServiceImport record", || {
        !fake.list("causeway.io", "exportedservices").is_empty()
    })
    .await;
    eventually(fake, "the export's conditions in its status", || {
        fake.get("multicluster.x-k8s.io", "serviceexports", "default", "web")
            .is_some_and(|e| {
                e["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            })
    })
    .await;
    assert!(ready(), "an active gateway is ready");

    // The remote cluster leaves the broker: its mirrored records go too.
    broker
        .delete(&AnyRecord::Endpoint(remote_endpoint()).key())
        .await
        .unwrap();
    broker
        .delete(&AnyRecord::Cluster(remote_cluster()).key())
        .await
        .unwrap();
    eventually(fake, "the remote records deleted from the cluster", || {
        fake.get("causeway.io", "gatewayendpoints", NS, "b")
            .is_none()
            && fake.get("causeway.io", "clusters", NS, "b").is_none()
    })
    .await;
    eventually(
        fake,
        "the connection status of the departed peer deleted",
        || fake.list("causeway.io", "connectionstatuses").is_empty(),
    )
    .await;

    // The Service is unexported: its ServiceImport record is withdrawn.
    assert!(fake.remove("multicluster.x-k8s.io", "serviceexports", "default", "web"));
    eventually(fake, "the withdrawn ServiceImport record", || {
        fake.list("causeway.io", "exportedservices").is_empty()
    })
    .await;

    // SIGTERM: the Lease is released at once.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the gateway stops in time")
        .unwrap()
        .unwrap();
    let lease = fake
        .get("coordination.k8s.io", "leases", NS, GATEWAY_LEASE)
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
    assert!(!k.removal_requested().await.unwrap());
    fake.insert(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "causeway-removal", "namespace": NS}}),
    );
    assert!(k.removal_requested().await.unwrap());
}

#[tokio::test]
async fn gateway_takes_the_lease_publishes_its_endpoint_and_export_status() {
    exercise_gateway(&cluster()).await;
}

#[tokio::test]
async fn a_standby_is_ready_while_its_campaign_reaches_the_api() {
    let fake = cluster();
    let k = KubeCluster::new(fake.client(), NS);
    // node-0 holds the Lease (and keeps renewing it).
    let holder: Arc<dyn Elector> = Arc::new(k.elector("node-0", Duration::from_secs(2)));
    let mut active = holder.active();
    tokio::time::timeout(Duration::from_secs(5), active.wait_for(|a| *a))
        .await
        .expect("node-0 takes the Lease")
        .unwrap();
    let standby: Arc<dyn Elector> = Arc::new(k.elector("node-1", Duration::from_secs(2)));
    let gateway = Arc::new(Gateway {
        config: GatewayConfig {
            cluster: "a".parse().unwrap(),
            node: "node-1".into(),
            private_ip: "192.0.2.11".parse().unwrap(),
            public_ip: None,
            listen_port: 4500,
            key: KeyPair::generate(),
            backend: CableBackend::Userspace,
            mtu: 1420,
            tunnel_ip: "10.244.1.1".parse().unwrap(),
            pod_cidrs: vec![net("10.244.0.0/16")],
            service_cidrs: vec![net("10.96.0.0/12")],
            node_cidrs: vec![],
            global_cidr: None,
            keepalive: 10,
            resync: Duration::from_secs(10),
            globalnet: None,
        },
        local: Arc::new(k.store()),
        broker: watch::channel(None).1,
        cable: Arc::new(FakeCable::new(InterfaceName::new("causeway0").unwrap())),
        datapath: Arc::new(NoDatapath),
        state: watch::channel(GatewayState::default()).0,
        health: watch::channel(None).0,
        source: None,
        nat: watch::channel(None).0,
        export_status: None,
        export_writer: None,
    });
    let ready = gateway_readiness(&gateway, &*standby);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "a healthy standby never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!*standby.active().borrow(), "node-1 is a standby");
    // The API server stops answering Lease requests: not ready any more.
    fake.fail(None, "leases", 503, "etcdserver: request timed out");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready() {
        assert!(
            Instant::now() < deadline,
            "a standby that cannot campaign stayed ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `causeway route-agent --store kubernetes` does with the API.
async fn exercise_route_agent(fake: &FakeKube) {
    use causeway_gateway::route_agent::{AgentConfig, Datapath, run};
    use causeway_gateway::routes::fake::FakeRoutes;
    use causeway_globalnet::nft::FakeNft;

    let k = KubeCluster::new(fake.client(), NS);
    let mut endpoint = remote_endpoint();
    endpoint.cluster = "a".parse().unwrap();
    endpoint.node_name = "node-1".into();
    k.store().put(&AnyRecord::Endpoint(endpoint)).await.unwrap();
    // Written by the gateway in a real cluster, not by the route agent.
    fake.clear_requests();
    let cidrs = k.cidrs(&[], &[]).await.unwrap();
    let requests_before = fake.requests().len();
    let config = AgentConfig {
        cluster: "a".parse().unwrap(),
        node_name: "node-0".into(),
        local_subnets: cidrs.pod_cidrs,
        rp_filter: None,
        resync: Duration::from_secs(10),
    };
    let routes = FakeRoutes::default();
    let datapath = Arc::new(Datapath::new(routes, FakeNft::new()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(config, Arc::new(k.store()), datapath, shutdown.clone()));
    eventually(fake, "the route agent's watch of Endpoints", || {
        fake.requests()[requests_before..]
            .iter()
            .any(|r| r.permission.verb == "watch")
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert!(!k.removal_requested().await.unwrap());
}

/// What `causeway lighthouse --store kubernetes` does with the API; with
/// `--answer clusterset-ip` it also follows the cluster through the source.
async fn exercise_lighthouse(fake: &FakeKube, clusterset_ip: bool) {
    use causeway_lighthouse::DnsDaemon;
    use causeway_lighthouse::dns::{ResolverOptions, ServerConfig};

    let k = KubeCluster::new(fake.client(), NS);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        resolver: ResolverOptions::new("clusterset.local").unwrap(),
        ..ServerConfig::default()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let daemon = DnsDaemon::bind(
        config,
        Arc::new(k.store()),
        "a".parse().unwrap(),
        &mut registry,
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let daemon = if clusterset_ip {
        let source = k.source(shutdown.clone());
        daemon.with_cluster_state(source.state())
    } else {
        daemon
    };
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    eventually(fake, "the DNS server's watches", || {
        let watched: BTreeSet<String> = fake
            .requests()
            .iter()
            .filter(|r| r.permission.verb == "watch")
            .map(|r| r.permission.resource.clone())
            .collect();
        watched.len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

fn join_flags(out: &Path) -> JoinFlags {
    JoinFlags {
        cluster: "a".parse().unwrap(),
        kubernetes_broker: true,
        broker: vec![],
        root_password_file: None,
        broker_kubeconfig: Some(PathBuf::from("/nonexistent/broker.kubeconfig")),
        broker_namespace: "causeway-broker".into(),
        kubeconfig: None,
        namespace: NS.into(),
        pod_cidrs: vec![],
        service_cidrs: vec![net("10.96.0.0/12")],
        global_cidr: "auto".into(),
        out: out.to_owned(),
    }
}

#[tokio::test]
async fn join_writes_the_broker_objects_and_files_that_parse() {
    let broker = FakeKube::new();
    // The token controller fills every service-account token Secret.
    broker.on_write(
        "secrets",
        Arc::new(|s: &mut Value| {
            if s["type"] == "kubernetes.io/service-account-token" {
                s["data"] = json!({"token": "dG9rZW4tb2YtYQ==", "ca.crt": "Q0EtUEVN"});
            }
        }),
    );
    let member = cluster();
    let dir = tempfile::tempdir().unwrap();
    let flags = join_flags(dir.path());
    let key = KeyPair::generate();
    let (joined, files) = causeway_cli::broker::kube_join_with(
        broker.client(),
        Some(member.client()),
        "https://broker.example.net:6443",
        Some(b"-----BEGIN CERTIFICATE-----\nbroker\n-----END CERTIFICATE-----\n".to_vec()),
        &flags,
        causeway_api::join::GlobalCidrRequest::Auto,
        &key,
    )
    .await
    .unwrap();
    assert_eq!(joined.pod_cidrs, vec![net("10.244.0.0/16")], "discovered");
    assert_eq!(joined.service_cidrs, vec![net("10.96.0.0/12")], "the flag");
    let global = joined.global_cidr.expect("a global CIDR");

    // On the broker: the registry, the cluster's account and its record.
    let bns = "causeway-broker";
    let registry = broker
        .get("", "configmaps", bns, "causeway-registry")
        .unwrap();
    assert!(
        registry["data"]["registry.json"]
            .as_str()
            .unwrap()
            .contains(&global.to_string())
    );
    for (group, resource) in [
        ("", "serviceaccounts"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    ] {
        assert!(
            broker
                .get(group, resource, bns, "causeway-cluster-a")
                .is_some(),
            "{resource}"
        );
    }
    assert!(
        broker
            .get("", "secrets", bns, "causeway-cluster-a-token")
            .is_some()
    );
    assert!(broker.get("causeway.io", "clusters", bns, "a").is_some());

    // The files: values for the chart, and the two Secrets.
    causeway_cli::broker::write_join_files(dir.path(), &files).unwrap();
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.path().join("values.yaml")).unwrap())
            .unwrap();
    assert_eq!(values["cluster"]["id"], "a");
    assert_eq!(
        values["cluster"]["podCIDRs"],
        json!([]),
        "discovered: [] = discover"
    );
    assert_eq!(values["cluster"]["serviceCIDRs"], json!(["10.96.0.0/12"]));
    assert_eq!(values["globalnet"]["enabled"], true);
    assert_eq!(values["globalnet"]["globalCIDR"], global.to_string());
    assert_eq!(values["broker"]["type"], "kubernetes");
    assert_eq!(
        values["broker"]["server"],
        "https://broker.example.net:6443"
    );
    assert_eq!(values["broker"]["namespace"], bns);
    assert_eq!(values["broker"]["secretName"], "causeway-broker");
    assert_eq!(values["wireguard"]["secretName"], "causeway-wireguard");
    let text = std::fs::read_to_string(dir.path().join("secrets.yaml")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("secrets.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let secrets: BTreeMap<String, k8s_openapi::api::core::v1::Secret> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let s: k8s_openapi::api::core::v1::Secret = serde_yaml::from_str(d).unwrap();
            (s.metadata.name.clone().unwrap(), s)
        })
        .collect();
    let data =
        |name: &str, key: &str| -> Vec<u8> { secrets[name].data.as_ref().unwrap()[key].0.clone() };
    let broker_json: BrokerFile = serde_json::from_slice(&data("causeway-broker", "broker.json"))
        .expect("broker.json parses as the gateway reads it");
    let k = broker_json.kubernetes.expect("the kubernetes form");
    assert_eq!(k.server, "https://broker.example.net:6443");
    assert_eq!(k.namespace, bns);
    assert_eq!(k.ca_file, PathBuf::from("/etc/causeway/broker/ca.crt"));
    assert_eq!(k.token_file, PathBuf::from("/etc/causeway/broker/token"));
    assert_eq!(data("causeway-broker", "token"), b"token-of-a");
    assert!(
        String::from_utf8(data("causeway-broker", "ca.crt"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let wg = String::from_utf8(data("causeway-wireguard", "wireguard.key")).unwrap();
    assert_eq!(wg.trim(), key.private().expose_base64());
    for s in secrets.values() {
        assert_eq!(s.metadata.namespace.as_deref(), Some(NS));
    }

    // With a member kubeconfig the Secrets are created there too.
    causeway_cli::broker::apply_secrets(member.client(), NS, &files.secrets)
        .await
        .unwrap();
    assert!(member.get("", "secrets", NS, "causeway-broker").is_some());
    assert!(
        member
            .get("", "secrets", NS, "causeway-wireguard")
            .is_some()
    );

    // A second join of the same id is refused.
    let again = causeway_cli::broker::kube_join_with(
        broker.client(),
        Some(member.client()),
        "https://broker.example.net:6443",
        None,
        &flags,
        causeway_api::join::GlobalCidrRequest::Auto,
        &key,
    )
    .await
    .unwrap_err();
    assert!(format!("{again:#}").contains("--cluster"), "{again:#}");
}

// ---- The chart's side ----------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// helm at `$CAUSEWAY_HELM` or `target/k8s-tools/bin/helm`; `None` (with a
/// note) when missing, except under CI=true, where that fails.
fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("CAUSEWAY_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/k8s-tools/bin/helm"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "helm not found at {}: run scripts/k8s-tools.sh (CI must not skip this test)",
        path.display()
    );
    eprintln!(
        "note: helm not found at {}; skipping (run scripts/k8s-tools.sh)",
        path.display()
    );
    None
}

/// The chart's CI values files.
fn ci_values() -> Vec<PathBuf> {
    let dir = repo_root().join("helm/causeway/ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `helm template` of helm/causeway with `values`, as YAML documents.
fn render(helm: &Path, values: &Path) -> Vec<Value> {
    let out = Command::new(helm)
        .args(["template", "causeway"])
        .arg(repo_root().join("helm/causeway"))
        .args(["--namespace", NS, "-f"])
        .arg(values)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template -f {}: {}",
        values.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Where a permission is needed or granted: in the release namespace (a
/// Role will do) or beyond it (a ClusterRole).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Release,
    Cluster,
}

type Rule = (String, String, String, Scope);

fn needed(fake: &FakeKube) -> BTreeSet<Rule> {
    fake.requests()
        .into_iter()
        .map(|r| {
            let scope = if r.namespace.as_deref() == Some(NS) {
                Scope::Release
            } else {
                Scope::Cluster
            };
            (
                r.permission.group,
                r.permission.resource,
                r.permission.verb,
                scope,
            )
        })
        .collect()
}

/// What the rendered RBAC grants ServiceAccount `sa` of the release.
fn granted(docs: &[Value], sa: &str) -> BTreeSet<Rule> {
    let bound = |kind: &str| -> BTreeSet<String> {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .filter(|d| {
                d["subjects"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == NS
                    })
                })
            })
            .filter_map(|d| d["roleRef"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let roles = bound("RoleBinding");
    let cluster_roles = bound("ClusterRoleBinding");
    let mut out = BTreeSet::new();
    for d in docs {
        let scope = match d["kind"].as_str() {
            Some("Role") if roles.contains(d["metadata"]["name"].as_str().unwrap_or("")) => {
                assert_eq!(
                    d["metadata"]["namespace"], NS,
                    "Role in the release namespace"
                );
                Scope::Release
            }
            Some("ClusterRole")
                if cluster_roles.contains(d["metadata"]["name"].as_str().unwrap_or("")) =>
            {
                Scope::Cluster
            }
            _ => continue,
        };
        for rule in d["rules"].as_array().into_iter().flatten() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((g.clone(), r.clone(), v, scope.clone()));
                    }
                }
            }
        }
    }
    out
}

fn show(r: &Rule) -> String {
    let group = if r.0.is_empty() { "\"\"" } else { &r.0 };
    let kind = match r.3 {
        Scope::Release => "Role",
        Scope::Cluster => "ClusterRole",
    };
    format!(
        "{kind} rule apiGroups [{group}] resources [{}] verbs [{}]",
        r.1, r.2
    )
}

/// Both directions: every need is granted (a ClusterRole also covers the
/// release namespace); every grant is needed at its scope.
fn compare(sa: &str, need: &BTreeSet<Rule>, grant: &BTreeSet<Rule>) -> Vec<String> {
    let mut problems = Vec::new();
    for n in need {
        let covered = grant.contains(n)
            || (n.3 == Scope::Release
                && grant.contains(&(n.0.clone(), n.1.clone(), n.2.clone(), Scope::Cluster)));
        if !covered {
            problems.push(format!("{sa}: missing {} (the code uses it)", show(n)));
        }
    }
    for g in grant {
        if !need.contains(g) {
            problems.push(format!("{sa}: unused {} (no code uses it)", show(g)));
        }
    }
    problems
}

#[tokio::test]
async fn chart_rbac_grants_exactly_what_each_component_uses() {
    let Some(helm) = helm() else { return };
    let gateway = cluster();
    exercise_gateway(&gateway).await;
    let route_agent = cluster();
    exercise_route_agent(&route_agent).await;
    let lighthouse = cluster();
    exercise_lighthouse(&lighthouse, false).await;
    let lighthouse_clusterset_ip = cluster();
    exercise_lighthouse(&lighthouse_clusterset_ip, true).await;
    let files = ci_values();
    assert!(!files.is_empty(), "no helm/causeway/ci/*.yaml");
    let mut problems = Vec::new();
    for file in &files {
        let docs = render(&helm, file);
        // The Lighthouse's needs follow the answer mode this file renders.
        let clusterset_ip = serde_json::to_string(&docs)
            .unwrap()
            .contains("--answer=clusterset-ip");
        let needs = [
            ("causeway-gateway", needed(&gateway)),
            ("causeway-route-agent", needed(&route_agent)),
            (
                "causeway-lighthouse",
                needed(if clusterset_ip {
                    &lighthouse_clusterset_ip
                } else {
                    &lighthouse
                }),
            ),
        ];
        for (sa, need) in &needs {
            let grant = granted(&docs, sa);
            for p in compare(sa, need, &grant) {
                problems.push(format!(
                    "{} ({}): {p}",
                    file.file_name().unwrap().to_string_lossy(),
                    "helm/causeway/templates"
                ));
            }
        }
    }
    problems.dedup();
    assert!(problems.is_empty(), "RBAC drift:\n{}", problems.join("\n"));
}

#[test]
fn rbac_comparison_names_missing_and_unused_rules() {
    let need: BTreeSet<Rule> = [
        (
            "".into(),
            "services".into(),
            "create".into(),
            Scope::Release,
        ),
        ("".into(), "nodes".into(), "list".into(), Scope::Cluster),
    ]
    .into();
    let grant: BTreeSet<Rule> = [
        (
            "".into(),
            "services".into(),
            "create".into(),
            Scope::Cluster,
        ),
        ("".into(), "secrets".into(), "get".into(), Scope::Release),
    ]
    .into();
    let p = compare("sa", &need, &grant);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().any(|p| {
        p.contains("missing ClusterRole rule apiGroups [\"\"] resources [nodes] verbs [list]")
    }));
    assert!(
        p.iter().any(
            |p| p.contains("unused Role rule apiGroups [\"\"] resources [secrets] verbs [get]")
        )
    );
    assert!(p.iter().any(|p| {
        p.contains("unused ClusterRole rule apiGroups [\"\"] resources [services] verbs [create]")
    }));
}

/// `$(VAR)` replaced from the container's env: downward-API fields get
/// sample values, plain values themselves.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn container_env(c: &Value) -> BTreeMap<String, String> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e["name"].as_str()?.to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str()? {
                    "spec.nodeName" => "node-0".into(),
                    "status.hostIP" => "192.0.2.10".into(),
                    "metadata.namespace" => "causeway".into(),
                    other => format!("sample-{other}"),
                }
            };
            Some((name, value))
        })
        .collect()
}

fn causeway_bin() -> PathBuf {
    std::env::var_os("CAUSEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_causeway")))
}

#[test]
fn every_chart_container_args_parse_with_the_real_parser() {
    let Some(helm) = helm() else { return };
    let files = ci_values();
    assert!(!files.is_empty(), "no helm/causeway/ci/*.yaml");
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in &files {
        for doc in render(&helm, file) {
            let spec = &doc["spec"]["template"]["spec"];
            let containers = spec["containers"]
                .as_array()
                .into_iter()
                .chain(spec["initContainers"].as_array())
                .flatten();
            for c in containers {
                if c["command"] != json!(["causeway"]) {
                    continue;
                }
                let env = container_env(c);
                let args: Vec<String> = c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(|a| expand(a, &env)))
                    .collect();
                let out = Command::new(causeway_bin())
                    .args(&args)
                    .env("CAUSEWAY_PARSE_ONLY", "1")
                    .env_remove("CAUSEWAY_STORE")
                    .output()
                    .expect("run causeway");
                checked += 1;
                if !out.status.success() {
                    problems.push(format!(
                        "{} {}/{} container {}: causeway {}\n{}",
                        file.file_name().unwrap().to_string_lossy(),
                        doc["kind"].as_str().unwrap_or("?"),
                        doc["metadata"]["name"].as_str().unwrap_or("?"),
                        c["name"].as_str().unwrap_or("?"),
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                assert!(
                    !args.iter().any(|a| a.contains("$(")),
                    "{}: container {} refers to an env var it does not define: {args:?}",
                    file.display(),
                    c["name"]
                );
            }
        }
    }
    assert!(checked > 0, "no container runs causeway");
    assert!(
        problems.is_empty(),
        "chart args the binary does not accept:\n{}",
        problems.join("\n")
    );
}

#[test]
fn store_flags_fail_with_errors_that_name_what_to_pass() {
    let run = |args: &[&str]| {
        let out = Command::new(causeway_bin())
            .args(args)
            .env_remove("CAUSEWAY_STORE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("HOME", "/nonexistent")
            .output()
            .expect("run causeway");
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = ["route-agent", "--cluster=a", "--node=node-0"];
    let err = run(&base);
    assert!(err.contains("--store is required"), "{err}");
    let err = run(&[&base[..], &["--store=kubernetes"]].concat());
    assert!(err.contains("--store kubernetes"), "{err}");
    let err = run(&[&base[..], &["--store=http://127.0.0.1:1"]].concat());
    assert!(err.contains("--pod-cidr"), "{err}");
    let err = run(&[&base[..], &["--store=kubernetes,http://127.0.0.1:1"]].concat());
    assert!(err.contains("no etcd endpoints"), "{err}");
    let err = run(&[
        "join",
        "--kubernetes-broker",
        "--cluster=a",
        "--out=/nonexistent/out",
    ]);
    assert!(err.contains("--broker-kubeconfig"), "{err}");
}
