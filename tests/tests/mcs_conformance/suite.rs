//! The upstream suite's driver, on the lab: its `hello` Service (port 42
//! TCP and UDP, `sessionAffinity: ClientIP` with a 10 s timeout) over the
//! web pods every lab cluster runs (they answer on 42 with who they are,
//! as the suite's socat pods do), its ServiceExport, and its probes: the
//! ServiceImport, the ServiceExport's conditions, the MCS EndpointSlices,
//! `nc` and `dig` from a pod of every cluster. Conditions are read from
//! the ServiceExport's status, which the export agent writes into the
//! lab's API stand-in as it patches the status subresource on Kubernetes.
//! Cluster `a` is the suite's first cluster, `b` its second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use causeway_tests::Lab;
pub use causeway_tests::{consistently, import_clusters as exporters, within};
use serde_json::Value as Json;
use serde_yaml::Value;

/// The two configurations every case runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Identical pod and service CIDRs, joined by Globalnet (`lab up`).
    Globalnet,
    /// Distinct CIDRs, no Globalnet (`lab up --distinct-cidrs`).
    DistinctCidrs,
}

pub const NAME: &str = "hello";
pub const NAMESPACE: &str = "default";
pub const FQDN: &str = "hello.default.svc.clusterset.local";
pub const CLUSTERS: [&str; 2] = ["a", "b"];

/// One port of the hello Service.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: &'static str,
    pub port: u16,
    pub protocol: &'static str,
}

/// The Service a cluster deploys: the suite's `newHelloService()`, then
/// whatever a case changes.
#[derive(Clone, Debug)]
pub struct Hello {
    pub ports: Vec<Port>,
    pub headless: bool,
    pub external_name: bool,
    pub client_ip_affinity: bool,
    /// The ClientIP affinity's timeout, in seconds.
    pub affinity_timeout: u32,
    pub internal_traffic_policy: Option<&'static str>,
    pub traffic_distribution: Option<&'static str>,
    /// Pod hostnames in the Service's EndpointSlice, as a StatefulSet
    /// gives them (`hello-0`, `hello-1`).
    pub stateful_set: bool,
}

impl Default for Hello {
    fn default() -> Self {
        Self {
            ports: vec![
                Port {
                    name: "tcp",
                    port: 42,
                    protocol: "TCP",
                },
                Port {
                    name: "udp",
                    port: 42,
                    protocol: "UDP",
                },
            ],
            headless: false,
            external_name: false,
            client_ip_affinity: true,
            affinity_timeout: 10,
            internal_traffic_policy: None,
            traffic_distribution: None,
            stateful_set: false,
        }
    }
}

/// What a ServiceExport carries besides its name.
#[derive(Clone, Debug, Default)]
pub struct Export {
    pub labels: Vec<(&'static str, &'static str)>,
    pub annotations: Vec<(&'static str, &'static str)>,
}

pub struct Suite {
    pub lab: Lab,
}

impl Suite {
    pub fn up(config: Config) -> Self {
        let lab = match config {
            Config::Globalnet => Lab::up("mcg", &[]),
            Config::DistinctCidrs => Lab::up("mcd", &["--distinct-cidrs"]),
        };
        Self { lab }
    }

    fn cluster(&self, cluster: &str) -> Json {
        self.lab.status()["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .find(|c| c["name"] == cluster)
            .cloned()
            .unwrap_or_else(|| panic!("no cluster {cluster}"))
    }

    /// The IPs of `cluster`'s web pods, which back every hello Service.
    pub fn pod_ips(&self, cluster: &str) -> Vec<String> {
        self.cluster(cluster)["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .filter(|p| p["app"] == "web")
            .map(|p| p["ip"].as_str().expect("pod ip").to_owned())
            .collect()
    }

    /// Deploys `hello` in `cluster`: the Service and the EndpointSlice its
    /// endpoints controller would write (the lab has none).
    pub fn deploy(&self, cluster: &str, hello: &Hello) {
        let web_ip = self.cluster(cluster)["services"][0]["cluster_ip"]
            .as_str()
            .expect("web's ClusterIP")
            .to_owned();
        let cluster_ip = format!("{}.42", web_ip.rsplit_once('.').expect("an IPv4 address").0);
        let ports: Vec<String> = hello
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{{name: {}, port: {}, protocol: {}, targetPort: 42}}",
                    p.name, p.port, p.protocol
                )
            })
            .collect();
        let mut spec = if hello.external_name {
            "  type: ExternalName\n  externalName: example.com\n".to_owned()
        } else if hello.headless {
            "  clusterIP: None\n".to_owned()
        } else {
            format!("  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n")
        };
        spec += &format!(
            "  selector: {{app: web}}\n  ports: [{}]\n",
            ports.join(", ")
        );
        if hello.client_ip_affinity {
            spec += &format!(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {}}}}}\n",
                hello.affinity_timeout
            );
        }
        if let Some(p) = hello.internal_traffic_policy {
            spec += &format!("  internalTrafficPolicy: {p}\n");
        }
        if let Some(d) = hello.traffic_distribution {
            spec += &format!("  trafficDistribution: {d}\n");
        }
        let slice_ports: Vec<String> = hello
            .ports
            .iter()
            .map(|p| format!("{{name: {}, port: 42, protocol: {}}}", p.name, p.protocol))
            .collect();
        let endpoints: String = self
            .pod_ips(cluster)
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let hostname = if hello.stateful_set {
                    format!("  hostname: hello-{i}\n")
                } else {
                    String::new()
                };
                format!("- addresses: [{ip}]\n{hostname}  conditions: {{ready: true}}\n")
            })
            .collect();
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {NAME}\n  namespace: {NAMESPACE}\n  \
             labels: {{service-label: 'true'}}\n  annotations: {{service-annotation: 'true'}}\nspec:\n{spec}\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {NAME}-lab\n  \
             namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: {NAME}}}\naddressType: IPv4\n\
             ports: [{}]\nendpoints:\n{endpoints}",
            slice_ports.join(", ")
        );
        self.lab
            .write_manifest(cluster, "service-default-hello.yaml", &yaml);
    }

    /// Creates the ServiceExport of hello in `cluster`, stamped now.
    pub fn export(&self, cluster: &str, export: &Export) {
        let map = |entries: &[(&str, &str)]| {
            let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
            format!("{{{}}}", inner.join(", "))
        };
        let yaml = format!(
            "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata:\n  name: {NAME}\n  \
             namespace: {NAMESPACE}\n  creationTimestamp: '{}'\nspec:\n  exportedLabels: {}\n  \
             exportedAnnotations: {}\n",
            now_rfc3339(),
            map(&export.labels),
            map(&export.annotations),
        );
        self.lab
            .write_manifest(cluster, "serviceexport-default-hello.yaml", &yaml);
    }

    /// Deletes the ServiceExport of hello in `cluster`.
    pub fn unexport(&self, cluster: &str) {
        self.lab.unexport(cluster, "default/hello");
    }

    /// The suite's default driver: hello deployed and exported in `a`.
    pub fn exported_from_a(config: Config, hello: &Hello, export: &Export) -> Self {
        let suite = Self::up(config);
        suite.deploy("a", hello);
        suite.export("a", export);
        suite
    }

    /// The suite's two-cluster driver: hello exported from `a`; once a has
    /// its import, and more than a second later (creation timestamps have
    /// seconds), `hello2` deployed and exported from `b`.
    pub fn exported_from_a_then_b(
        config: Config,
        hello: &Hello,
        export: &Export,
        hello2: &Hello,
        export2: &Export,
    ) -> Self {
        let suite = Self::exported_from_a(config, hello, export);
        suite.await_import("a", |_| true);
        std::thread::sleep(Duration::from_millis(1100));
        suite.deploy("b", hello2);
        suite.export("b", export2);
        suite
    }

    fn import_path(&self, cluster: &str) -> PathBuf {
        PathBuf::from(format!(
            "/run/causeway/lab/{}/clusters/{cluster}/manifests/causeway-imports/{NAMESPACE}.{NAME}.yaml",
            self.lab.name
        ))
    }

    /// The ServiceImport of hello in `cluster`, if it has one.
    pub fn import(&self, cluster: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.import_path(cluster)).ok()?;
        serde_yaml::from_str(&text).ok()
    }

    /// The import once it satisfies `want` (the suite's 20 s).
    pub fn await_import(&self, cluster: &str, want: impl Fn(&Value) -> bool) -> Value {
        within(20, &format!("{cluster}'s ServiceImport as wanted"), || {
            self.import(cluster).filter(|v| want(v))
        })
    }

    /// No import in `cluster` (the suite's 20 s).
    pub fn await_no_import(&self, cluster: &str) {
        within(20, &format!("{cluster}'s ServiceImport deleted"), || {
            self.import(cluster).is_none().then_some(())
        });
    }

    /// The import stays for 5 s (the suite's `Consistently`).
    pub fn ensure_import(&self, cluster: &str) {
        consistently(5, &format!("{cluster}'s ServiceImport present"), || {
            self.import(cluster).is_some()
        });
    }

    /// No import appears for 5 s.
    pub fn ensure_no_import(&self, cluster: &str) {
        consistently(5, &format!("{cluster} without a ServiceImport"), || {
            self.import(cluster).is_none()
        });
    }

    /// Condition `kind` (`Valid`, `Ready`, `Conflict`) of hello's
    /// ServiceExport in `cluster`, once its status is `status`.
    pub fn await_condition(&self, cluster: &str, kind: &str, status: &str) -> Json {
        within(
            20,
            &format!("{cluster}'s {kind} condition {status}"),
            || {
                self.condition(cluster, kind)
                    .filter(|c| c["status"] == status)
            },
        )
    }

    /// Condition `kind` of hello's ServiceExport in `cluster`, as the export
    /// agent last wrote it to the ServiceExport's status.
    pub fn condition(&self, cluster: &str, kind: &str) -> Option<Json> {
        let path = format!(
            "/run/causeway/lab/{}/clusters/{cluster}/manifests/causeway-export-status/{NAMESPACE}.{NAME}.yaml",
            self.lab.name
        );
        let text = std::fs::read_to_string(path).ok()?;
        let export: Value = serde_yaml::from_str(&text).ok()?;
        let condition = export["status"]["conditions"]
            .as_sequence()?
            .iter()
            .find(|c| c["type"] == kind)?;
        serde_json::to_value(condition).ok()
    }

    /// Waits until the `Conflict` condition of `cluster`'s export is True
    /// with `reason`.
    pub fn await_condition_reason(&self, cluster: &str, reason: &str) {
        within(20, &format!("{cluster}'s Conflict reason {reason}"), || {
            let c = self.condition(cluster, "Conflict")?;
            (c["status"] == "True" && c["reason"] == reason).then_some(())
        });
    }

    /// The MCS EndpointSlices of hello's import in `cluster`, once `want`
    /// holds for them.
    pub fn await_mcs_slices(&self, cluster: &str, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        within(
            20,
            &format!("{cluster}'s MCS EndpointSlices as wanted"),
            || {
                let slices = self.mcs_slices(cluster);
                want(&slices).then_some(slices)
            },
        )
    }

    pub fn mcs_slices(&self, cluster: &str) -> Vec<Value> {
        let path = format!(
            "/run/causeway/lab/{}/clusters/{cluster}/manifests/causeway-derived/{NAMESPACE}.{NAME}.yaml",
            self.lab.name
        );
        let text = std::fs::read_to_string(path).unwrap_or_default();
        serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .filter(|d: &Value| {
                d["kind"] == "EndpointSlice"
                    && d["metadata"]["labels"]["multicluster.kubernetes.io/service-name"] == NAME
                    && !d["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]
                        .is_null()
            })
            .collect()
    }

    /// `echo hi | nc -w 2 FQDN PORT` (`-u` for UDP) from `cluster`'s
    /// client pod: the cluster that answered, if any did.
    pub fn nc(&self, cluster: &str, port: u16, udp: bool) -> Option<String> {
        let reply = self.nc_reply(cluster, port, udp)?;
        reply["cluster"].as_str().map(str::to_owned)
    }

    /// The whole JSON answer `nc` got, if any.
    pub fn nc_reply(&self, cluster: &str, port: u16, udp: bool) -> Option<Json> {
        let flags = if udp { "-u -w 1" } else { "-w 2" };
        let out = self.lab.exec(
            &format!("{cluster}/client-0"),
            &["sh", "-c", &format!("echo hi | nc {flags} {FQDN} {port}")],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().next()?).ok()
    }

    /// The suite's `execPortConnectivityCommand`: from a pod of every
    /// cluster, `times` answers in a row from `want` on `port`, over TCP
    /// and, where the import has the port for UDP, over UDP (bounded: 20 s
    /// per answer, as the suite allows).
    pub fn await_answers(&self, port: u16, want: &str, times: usize) {
        for from in CLUSTERS {
            let import = self.await_import(from, |_| true);
            let udp = ports(&import)
                .iter()
                .any(|(_, p, proto)| *p == u64::from(port) && proto == "UDP");
            for udp in [false, true].into_iter().filter(|u| !u || udp) {
                let what = format!(
                    "{times} {} answers in a row from {want} on port {port}, from {from}",
                    if udp { "UDP" } else { "TCP" }
                );
                let deadline = Instant::now() + Duration::from_secs(20 * times as u64);
                let mut in_a_row = 0;
                let mut last = None;
                while in_a_row < times {
                    assert!(Instant::now() < deadline, "{what}: last answer {last:?}");
                    last = self.nc(from, port, udp);
                    if last.as_deref() == Some(want) {
                        in_a_row += 1;
                    } else {
                        in_a_row = 0;
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        }
    }

    /// `dig +short ARGS` from `cluster`'s client pod.
    pub fn dig(&self, cluster: &str, args: &[&str]) -> String {
        let mut cmd = vec!["dig", "+time=1", "+tries=2", "+short"];
        cmd.extend_from_slice(args);
        let out = self.lab.exec(&format!("{cluster}/client-0"), &cmd);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The whole `dig NAME` output from `cluster`, once it has a response
    /// code (bounded: 20 s).
    pub fn dig_status(&self, cluster: &str, name: &str) -> String {
        within(20, &format!("dig {name} from {cluster}"), || {
            let out = self.lab.exec(
                &format!("{cluster}/client-0"),
                &["dig", "+time=1", "+tries=2", name],
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("status:").then_some(text)
        })
    }

    /// `dig +short ARGS` from `cluster`, once `want` holds (bounded: 20 s).
    pub fn await_dig(&self, cluster: &str, args: &[&str], want: impl Fn(&str) -> bool) -> String {
        within(
            20,
            &format!("dig {args:?} from {cluster} as wanted"),
            || {
                let answer = self.dig(cluster, args);
                want(&answer).then_some(answer)
            },
        )
    }
}

/// The import's ports as (name, port, protocol), sorted as the suite's
/// `sortMCSPorts` does.
pub fn ports(import: &Value) -> Vec<(String, u64, String)> {
    let mut out: Vec<(String, u64, String)> = import["spec"]["ports"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        p["port"].as_u64().unwrap_or_default(),
                        p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("run date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
