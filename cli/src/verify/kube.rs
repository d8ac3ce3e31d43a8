//! `causeway verify --kubeconfig a=FILE --kubeconfig b=FILE`: the checks on
//! real clusters, with short-lived pods.
//!
//! In every cluster verify starts an echo server Pod (the image's own
//! `causeway lab echo`), a ClusterIP Service and a headless Service over it,
//! both exported with a ServiceExport. Once the servers run, [`plan_probes`]
//! decides, in a pure function, what each client checks; [`client_script`]
//! turns that into a bash script (the image is Debian slim: bash's
//! `/dev/tcp`, `getent`, `date` and `timeout`, no curl) that prints one JSON
//! line per probe to its log. Two client Pods per cluster run it, one on a
//! gateway node (`causeway.io/gateway=true`) and one on any other node.
//! Verify waits for them (bounded), reads their logs ([`parse_log`]) and
//! judges each line as the lab path does ([`judge`]). Every object carries
//! `causeway.io/verify=<run id>` and is deleted by that label at the end,
//! also after an error, a panic or Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde::Deserialize;
use serde_json::json;

use super::{CheckKind, CheckResult, NodeRole, Outcome, Report, Source, check_reply};
use crate::lab::echo::EchoReply;
use causeway_api::mcs::ServiceExport;

/// The label every object of a run carries, with the run id as its value.
pub const RUN_LABEL: &str = "causeway.io/verify";
/// What an object is for: `echo` or `client`.
pub const ROLE_LABEL: &str = "causeway.io/verify-role";
/// The node label of gateway candidates.
pub const GATEWAY_NODE_LABEL: &str = "causeway.io/gateway";
/// The port the echo server listens on.
pub const ECHO_PORT: u16 = 8080;
/// The port of the ClusterIP Service.
pub const SERVICE_PORT: u16 = 80;
/// Seconds one connection (or one lookup) may take inside the client.
const PROBE_TIMEOUT_S: u32 = 3;

/// A member cluster as the flags name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub cluster: String,
    pub kubeconfig: PathBuf,
}

/// Parses `ID=FILE` of `--kubeconfig`; the id becomes part of object names,
/// so it must be a short DNS label.
pub fn parse_member(s: &str) -> Result<Member, String> {
    let (id, file) = s
        .split_once('=')
        .ok_or_else(|| format!("--kubeconfig {s}: write CLUSTER=FILE, for example a=~/.kube/a"))?;
    let ok = !id.is_empty()
        && id.len() <= 20
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(format!(
            "--kubeconfig {s}: cluster id {id:?} must be a DNS label of at most 20 characters (a-z, 0-9, -), as `causeway join` names it"
        ));
    }
    if file.is_empty() {
        return Err(format!("--kubeconfig {s}: no file after ="));
    }
    Ok(Member {
        cluster: id.to_owned(),
        kubeconfig: PathBuf::from(file),
    })
}

/// How a run is done.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The run id: part of every name and the value of [`RUN_LABEL`].
    pub run: String,
    /// The namespace (it must exist in every cluster).
    pub namespace: String,
    /// The causeway image.
    pub image: String,
    /// Whether the clusters run Globalnet (pods reached by global IPs).
    pub globalnet: bool,
    /// How long the servers may take to run, and the clients to finish.
    pub timeout: Duration,
    /// How often a pod's status is read while waiting.
    pub poll: Duration,
    /// Attempts per probe inside the client (exports take a moment to
    /// reach the other clusters).
    pub attempts: u32,
    /// Seconds between attempts.
    pub pause_s: u32,
}

impl Settings {
    /// Defaults with a fresh run id.
    pub fn new(namespace: &str, image: &str, globalnet: bool, timeout: Duration) -> Self {
        Self {
            run: run_id(),
            namespace: namespace.to_owned(),
            image: image.to_owned(),
            globalnet,
            timeout,
            poll: Duration::from_secs(1),
            attempts: 5,
            pause_s: 2,
        }
    }

    /// `causeway.io/verify=<run>`.
    pub fn selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.run)
    }
}

/// Six lower-case hex digits from the clock and the process id.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:06x}",
        (nanos as u32 ^ std::process::id().rotate_left(16)) & 0xff_ffff
    )
}

/// The objects of one cluster's echo server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPlan {
    pub cluster: String,
    pub pod: String,
    /// The ClusterIP Service (and its ServiceExport).
    pub service: String,
    /// The headless Service (and its ServiceExport): one name per pod.
    pub headless: String,
    /// The echo pod's hostname under the headless Service.
    pub hostname: String,
}

/// One client Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPlan {
    pub cluster: String,
    pub pod: String,
    pub role: NodeRole,
}

/// Which pods and services a run creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub servers: Vec<ServerPlan>,
    pub clients: Vec<ClientPlan>,
}

/// Every cluster gets one echo server and two clients (gateway node,
/// worker node); names carry the run id and the cluster id.
pub fn plan_pods(run: &str, clusters: &[String]) -> PodPlan {
    let servers = clusters
        .iter()
        .map(|c| ServerPlan {
            cluster: c.clone(),
            pod: format!("cwv-{run}-{c}-echo"),
            service: format!("cwv-{run}-{c}"),
            headless: format!("cwv-{run}-{c}-pods"),
            hostname: "echo".into(),
        })
        .collect();
    let clients = clusters
        .iter()
        .flat_map(|c| {
            [(NodeRole::Gateway, "gw"), (NodeRole::Worker, "worker")].map(|(role, tag)| {
                ClientPlan {
                    cluster: c.clone(),
                    pod: format!("cwv-{run}-{c}-{tag}"),
                    role,
                }
            })
        })
        .collect();
    PodPlan { servers, clients }
}

/// What verify learnt of a running echo server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerSeen {
    pub pod_ip: Option<String>,
    pub cluster_ip: Option<String>,
}

/// One probe a client runs: GET / from `host` (an address, or a name the
/// client looks up) on `port`, answered by `cluster` (and `pod`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeProbe {
    pub id: u32,
    pub to: String,
    pub kind: CheckKind,
    pub target: String,
    pub host: String,
    pub port: u16,
    pub cluster: String,
    pub pod: Option<String>,
}

/// The probes every client of `from` runs against every other cluster:
/// pod to pod (the echo pod's IP, or with Globalnet its headless name,
/// which answers its global IP), pod to service (the ClusterIP, or with
/// Globalnet `<cluster>.<svc>.<ns>.svc.clusterset.local`, its global IP),
/// and the clusterset name `<svc>.<ns>.svc.clusterset.local` to an HTTP
/// answer. A probe without an address fails in the client with what is
/// missing. Ids are unique within the run.
pub fn plan_probes(
    plan: &PodPlan,
    seen: &BTreeMap<String, ServerSeen>,
    namespace: &str,
    globalnet: bool,
) -> BTreeMap<String, Vec<KubeProbe>> {
    let mut out = BTreeMap::new();
    let mut id = 0;
    for client in &plan.clients {
        let mut probes = Vec::new();
        for s in plan.servers.iter().filter(|s| s.cluster != client.cluster) {
            let seen = seen.get(&s.cluster).cloned().unwrap_or_default();
            let mut add = |kind, target: String, host: String, port, pod: Option<String>| {
                id += 1;
                probes.push(KubeProbe {
                    id,
                    to: s.cluster.clone(),
                    kind,
                    target,
                    host,
                    port,
                    cluster: s.cluster.clone(),
                    pod,
                });
            };
            let pod_host = if globalnet {
                Some(format!(
                    "{}.{}.{}.{namespace}.svc.clusterset.local",
                    s.hostname, s.cluster, s.headless
                ))
            } else {
                seen.pod_ip.clone()
            };
            let pod_host = pod_host.unwrap_or_else(|| "no-pod-ip.invalid".into());
            add(
                CheckKind::PodToPod,
                format!("{}/{} on {pod_host}:{ECHO_PORT}", s.cluster, s.pod),
                pod_host,
                ECHO_PORT,
                Some(s.pod.clone()),
            );
            let svc_host = if globalnet {
                Some(format!(
                    "{}.{}.{namespace}.svc.clusterset.local",
                    s.cluster, s.service
                ))
            } else {
                seen.cluster_ip.clone()
            };
            let svc_host = svc_host.unwrap_or_else(|| "no-cluster-ip.invalid".into());
            add(
                CheckKind::PodToService,
                format!("{namespace}/{} of {} on {svc_host}", s.service, s.cluster),
                svc_host,
                SERVICE_PORT,
                None,
            );
            let name = format!("{}.{namespace}.svc.clusterset.local", s.service);
            add(
                CheckKind::Dns,
                format!("{name}:{SERVICE_PORT}"),
                name,
                SERVICE_PORT,
                None,
            );
        }
        out.insert(client.pod.clone(), probes);
    }
    out
}

/// The bash script a client runs: all probes at once, each up to `attempts` tries of a
/// lookup (names only, `getent ahostsv4`) and `GET /` over `/dev/tcp`, each
/// bounded by `timeout`, then one JSON line (see [`ProbeLine`]).
pub fn client_script(probes: &[KubeProbe], attempts: u32, pause_s: u32) -> String {
    let mut s = format!(
        r#"set -u -o pipefail
T={PROBE_TIMEOUT_S}
now() {{ date +%s%N; }}
probe() {{
  local id=$1 host=$2 port=$3 n=0 ip err status body reply t0 t1 t2 out
  while :; do
    n=$((n+1)); err=""; status=""; reply=null; ip=$host; t0=$(now)
    case $host in
      *[a-z]*) ip=$(timeout $T getent ahostsv4 "$host." | {{ read -r a _ || true; echo "${{a:-}}"; }})
               [ -n "$ip" ] || err="no address for $host (NXDOMAIN, or no DNS answer within $T s)" ;;
    esac
    t1=$(now)
    if [ -z "$err" ]; then
      out=$(timeout $T bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 7; printf "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" "$2" >&3; cat <&3' "$ip" "$port" "$host" 2>/dev/null | tr -d '\r')
      rc=$?
      status=$(printf '%s\n' "$out" | head -n1 | tr -d '"\\')
      body=$(printf '%s\n' "$out" | tail -n1)
      if [ $rc -eq 124 ]; then err="connecting to $ip:$port or its answer timed out after $T s (no route, a dropped packet or a tunnel that is down)"
      elif [ -z "$out" ]; then err="$ip:$port refused or reset the connection (nothing listens there, or no NAT rule leads on)"
      else case $body in {{*}}) reply=$body ;; *) err="$ip:$port answered, but not as the echo server" ;; esac
      fi
    fi
    t2=$(now)
    if [ -z "$err" ] || [ $n -ge {attempts} ]; then break; fi
    sleep {pause_s}
  done
  printf '{{"causeway_verify":%s,"attempts":%s,"ip":"%s","lookup_us":%s,"total_us":%s,"status":"%s","reply":%s,"error":"%s"}}\n' \
    "$id" "$n" "$ip" $(( (t1-t0)/1000 )) $(( (t2-t0)/1000 )) "$status" "$reply" "$err"
}}
"#
    );
    for p in probes {
        s.push_str(&format!("probe {} {} {} &\n", p.id, p.host, p.port));
    }
    s.push_str("wait\n");
    s
}

/// One line a client prints per probe.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ProbeLine {
    /// The probe's id.
    #[serde(rename = "causeway_verify")]
    pub id: u32,
    pub attempts: u32,
    /// The address connected to (a name's first A record).
    pub ip: String,
    pub lookup_us: u64,
    pub total_us: u64,
    /// The HTTP status line.
    pub status: String,
    /// The echo server's JSON answer.
    pub reply: Option<serde_json::Value>,
    /// Empty when the request was answered.
    pub error: String,
}

/// The probe lines of a client's log by id; other lines are left out.
pub fn parse_log(log: &str) -> BTreeMap<u32, ProbeLine> {
    log.lines()
        .filter(|l| l.contains("\"causeway_verify\""))
        .filter_map(|l| serde_json::from_str::<ProbeLine>(l.trim()).ok())
        .map(|p| (p.id, p))
        .collect()
}

/// Judges each probe by its line, as the lab path judges a probe.
pub fn judge(
    from: &Source,
    probes: &[KubeProbe],
    lines: &BTreeMap<u32, ProbeLine>,
    missing: &str,
) -> Vec<CheckResult> {
    probes
        .iter()
        .map(|p| {
            let mut r = CheckResult {
                from: from.clone(),
                to: p.to.clone(),
                check: p.kind,
                target: p.target.clone(),
                outcome: Outcome::Fail,
                millis: None,
                attempts: 0,
                detail: String::new(),
            };
            let Some(line) = lines.get(&p.id) else {
                r.detail = missing.to_owned();
                return r;
            };
            r.attempts = line.attempts;
            let verdict = if !line.error.is_empty() {
                Err(line.error.clone())
            } else if !line.status.starts_with("HTTP/1.1 200") {
                Err(format!("{}:{} answered {}", line.ip, p.port, line.status))
            } else {
                match line.reply.clone().map(serde_json::from_value::<EchoReply>) {
                    Some(Ok(reply)) => check_reply(
                        &reply,
                        &BTreeSet::from([p.cluster.clone()]),
                        p.pod.as_deref(),
                    )
                    .map(|()| reply),
                    _ => Err(format!(
                        "{}:{} answered, but not as the echo server",
                        line.ip, p.port
                    )),
                }
            };
            match verdict {
                Ok(reply) => {
                    r.outcome = Outcome::Pass;
                    r.millis = Some(line.total_us as f64 / 1000.0);
                    r.detail = if p.host == line.ip {
                        format!("answered by {}/{}", reply.cluster, reply.pod)
                    } else {
                        format!(
                            "{} -> {} in {:.1} ms, answered by {}/{}",
                            p.host,
                            line.ip,
                            line.lookup_us as f64 / 1000.0,
                            reply.cluster,
                            reply.pod
                        )
                    };
                }
                Err(why) if p.host != line.ip && !line.ip.is_empty() => {
                    r.detail = format!("{} -> {}: {why}", p.host, line.ip);
                }
                Err(why) => r.detail = why,
            }
            r
        })
        .collect()
}

fn labels(s: &Settings, role: &str) -> serde_json::Value {
    json!({ RUN_LABEL: s.run, ROLE_LABEL: role })
}

/// The echo server Pod, its two Services and their ServiceExports.
pub fn server_objects(
    s: &Settings,
    p: &ServerPlan,
) -> Result<(Pod, Vec<Service>, Vec<ServiceExport>)> {
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.pod, "namespace": s.namespace, "labels": labels(s, "echo")},
        "spec": {
            "hostname": p.hostname,
            "subdomain": p.headless,
            "restartPolicy": "Never",
            "activeDeadlineSeconds": s.timeout.as_secs().max(60) * 3,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "echo",
                "image": s.image,
                "args": ["lab", "echo", "--cluster", p.cluster, "--pod", p.pod,
                         "--listen", format!("0.0.0.0:{ECHO_PORT}")],
                "ports": [{"containerPort": ECHO_PORT, "name": "http"}],
                "readinessProbe": {"tcpSocket": {"port": ECHO_PORT}, "periodSeconds": 1},
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}},
            }],
        },
    }))
    .context("build the echo Pod")?;
    let selector = labels(s, "echo");
    let svc = |name: &str, headless: bool, port: u16| -> Result<Service> {
        let mut spec = json!({
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": ECHO_PORT, "protocol": "TCP"}],
        });
        if headless {
            spec["clusterIP"] = json!("None");
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": s.namespace, "labels": labels(s, "echo")},
            "spec": spec,
        }))
        .context("build a Service")
    };
    let services = vec![
        svc(&p.service, false, SERVICE_PORT)?,
        svc(&p.headless, true, ECHO_PORT)?,
    ];
    let exports = [&p.service, &p.headless]
        .into_iter()
        .map(|name| {
            let mut e = ServiceExport::new(&s.namespace, name);
            e.metadata.labels = Some(
                [
                    (RUN_LABEL.to_owned(), s.run.clone()),
                    (ROLE_LABEL.to_owned(), "echo".to_owned()),
                ]
                .into(),
            );
            e
        })
        .collect();
    Ok((pod, services, exports))
}

/// A client Pod that runs `script`, on a gateway node or on another node.
pub fn client_pod(s: &Settings, c: &ClientPlan, script: &str) -> Result<Pod> {
    let mut spec = json!({
        "restartPolicy": "Never",
        "activeDeadlineSeconds": s.timeout.as_secs().max(60) * 3,
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "probe",
            "image": s.image,
            "command": ["bash", "-c", script],
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}},
        }],
    });
    match c.role {
        NodeRole::Gateway => spec["nodeSelector"] = json!({GATEWAY_NODE_LABEL: "true"}),
        // NotIn also matches nodes without the label.
        NodeRole::Worker => {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": GATEWAY_NODE_LABEL, "operator": "NotIn", "values": ["true"]}
                ]}]
            }}})
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": c.pod, "namespace": s.namespace, "labels": labels(s, "client")},
        "spec": spec,
    }))
    .context("build a client Pod")
}

/// What verify does with one member cluster's API server.
pub trait MemberApi: Sync {
    /// Creates a Pod (`kubectl create`).
    fn create_pod(&self, ns: &str, pod: &Pod) -> impl Future<Output = Result<()>> + Send;
    /// Creates a Service.
    fn create_service(&self, ns: &str, svc: &Service) -> impl Future<Output = Result<()>> + Send;
    /// Creates a ServiceExport.
    fn create_export(
        &self,
        ns: &str,
        export: &ServiceExport,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Reads a Pod, `None` when it is gone.
    fn pod(&self, ns: &str, name: &str) -> impl Future<Output = Result<Option<Pod>>> + Send;
    /// Reads a Service, `None` when it is gone.
    fn service(&self, ns: &str, name: &str)
    -> impl Future<Output = Result<Option<Service>>> + Send;
    /// A Pod's log (`kubectl logs`).
    fn logs(&self, ns: &str, name: &str) -> impl Future<Output = Result<String>> + Send;
    /// Deletes every Pod, Service and ServiceExport whose labels match
    /// `key=value`; returns how many it deleted.
    fn delete_labelled(
        &self,
        ns: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<usize>> + Send;
}

/// [`MemberApi`] over a kube client.
#[derive(Clone)]
pub struct KubeMember {
    pub client: kube::Client,
}

impl KubeMember {
    /// A client from a kubeconfig file (its current context).
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("read kubeconfig {}", path.display()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("load kubeconfig {}", path.display()))?;
        let client = kube::Client::try_from(config)
            .with_context(|| format!("a client for {}", path.display()))?;
        Ok(Self { client })
    }
}

fn absent<T>(r: kube::Result<T>) -> kube::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

fn has_label(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
    value: &str,
) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .is_some_and(|v| v == value)
}

/// Lists `K` by label (checked again here) and deletes each; gone is fine.
async fn delete_each<K>(api: Api<K>, key: &str, value: &str) -> Result<usize>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let list = api
        .list(&ListParams::default().labels(&format!("{key}={value}")))
        .await
        .context("list")?;
    let mut n = 0;
    for o in list
        .items
        .iter()
        .filter(|o| has_label(o.meta(), key, value))
    {
        let Some(name) = o.meta().name.as_deref() else {
            continue;
        };
        if absent(api.delete(name, &DeleteParams::background()).await)
            .with_context(|| format!("delete {name}"))?
            .is_some()
        {
            n += 1;
        }
    }
    Ok(n)
}

impl MemberApi for KubeMember {
    async fn create_pod(&self, ns: &str, pod: &Pod) -> Result<()> {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), pod)
            .await
            .map(drop)
            .map_err(|e| create_error(ns, "Pod", e))
    }

    async fn create_service(&self, ns: &str, svc: &Service) -> Result<()> {
        Api::<Service>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), svc)
            .await
            .map(drop)
            .map_err(|e| create_error(ns, "Service", e))
    }

    async fn create_export(&self, ns: &str, export: &ServiceExport) -> Result<()> {
        // ServiceExport has no TypeMeta of its own; the API server needs it.
        let ar = kube::api::ApiResource::erase::<ServiceExport>(&());
        let mut body = serde_json::to_value(export).context("encode a ServiceExport")?;
        body["apiVersion"] = json!(ar.api_version);
        body["kind"] = json!(ar.kind);
        let object: kube::api::DynamicObject =
            serde_json::from_value(body).context("encode a ServiceExport")?;
        Api::<kube::api::DynamicObject>::namespaced_with(self.client.clone(), ns, &ar)
            .create(&PostParams::default(), &object)
            .await
            .map(drop)
            .map_err(|e| create_error(ns, "ServiceExport", e))
    }

    async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>> {
        absent(
            Api::<Pod>::namespaced(self.client.clone(), ns)
                .get(name)
                .await,
        )
        .with_context(|| format!("read Pod {ns}/{name}"))
    }

    async fn service(&self, ns: &str, name: &str) -> Result<Option<Service>> {
        absent(
            Api::<Service>::namespaced(self.client.clone(), ns)
                .get(name)
                .await,
        )
        .with_context(|| format!("read Service {ns}/{name}"))
    }

    async fn logs(&self, ns: &str, name: &str) -> Result<String> {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .logs(name, &LogParams::default())
            .await
            .with_context(|| format!("read the log of Pod {ns}/{name}"))
    }

    async fn delete_labelled(&self, ns: &str, key: &str, value: &str) -> Result<usize> {
        let c = &self.client;
        let mut n = 0;
        n += delete_each(Api::<Pod>::namespaced(c.clone(), ns), key, value)
            .await
            .context("Pods")?;
        n += delete_each(Api::<ServiceExport>::namespaced(c.clone(), ns), key, value)
            .await
            .context("ServiceExports")?;
        n += delete_each(Api::<Service>::namespaced(c.clone(), ns), key, value)
            .await
            .context("Services")?;
        Ok(n)
    }
}

fn create_error(ns: &str, kind: &str, e: kube::Error) -> anyhow::Error {
    let hint = match &e {
        kube::Error::Api(s) if s.code == 404 && kind == "ServiceExport" => {
            " (is the MCS ServiceExport CRD installed? `causeway crdgen | kubectl apply -f -`)"
        }
        kube::Error::Api(s) if s.code == 404 => {
            " (does the namespace exist? create it, or pick one with --namespace)"
        }
        kube::Error::Api(s) if s.code == 403 => {
            " (verify needs create, get, list and delete on pods, pods/log, services and serviceexports there)"
        }
        _ => "",
    };
    anyhow!(e).context(format!("create a {kind} in namespace {ns}{hint}"))
}

/// Why a pod is not running yet, from its status.
fn pod_state(pod: &Pod) -> String {
    let st = pod.status.as_ref();
    let phase = st
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let waiting = st
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .map(|w| {
            format!(
                ": {} {}",
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let unscheduled = st
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
        .map(|c| format!(": unschedulable: {}", c.message.clone().unwrap_or_default()))
        .unwrap_or_default();
    let unready = if phase == "Running" && !ready(pod) {
        " (not Ready: the echo server does not accept connections on its port)"
    } else {
        ""
    };
    format!("{phase}{unready}{waiting}{unscheduled}")
}

/// Reads `name` every `poll` until `done` says so, at most `timeout`.
async fn wait_pod<A: MemberApi>(
    api: &A,
    s: &Settings,
    cluster: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let started = Instant::now();
    let rounds = (timeout.as_millis() / s.poll.as_millis().max(1)) as u64 + 1;
    let mut last = "not created".to_owned();
    for _ in 0..rounds {
        if let Some(pod) = api.pod(&s.namespace, name).await? {
            if done(&pod) {
                return Ok(pod);
            }
            last = pod_state(&pod);
        }
        if started.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(s.poll).await;
    }
    bail!(
        "Pod {}/{name} in cluster {cluster} did not {what} within {} s (last: {last}); is the image {} pullable there?",
        s.namespace,
        timeout.as_secs(),
        s.image
    )
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Runs the checks and deletes what it created, whatever happens (an
/// error, a panic, or `interrupt` resolving first: Ctrl-C). If the returned
/// future is dropped before it ends, a guard starts the cleanup on the
/// runtime.
pub async fn run<A: MemberApi + Clone + Send + 'static>(
    members: &[(String, A)],
    s: &Settings,
    interrupt: impl Future<Output = ()>,
) -> Result<Report> {
    if members.len() < 2 {
        bail!(
            "verify checks pairs of clusters: give --kubeconfig ID=FILE for two clusters or more"
        );
    }
    let mut guard = CleanupGuard {
        members: members.to_vec(),
        settings: s.clone(),
        armed: true,
    };
    let outcome = tokio::select! {
        r = std::panic::AssertUnwindSafe(run_checks(members, s)).catch_unwind() => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow!("verify panicked")),
        },
        () = interrupt => Err(anyhow!("interrupted")),
    };
    let cleaned = cleanup(members, s).await;
    guard.armed = false;
    match (outcome, cleaned) {
        (Ok(report), Ok(())) => Ok(report),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(c)) => Err(c),
        (Err(e), Err(c)) => Err(e.context(format!("and cleaning up failed too: {c:#}"))),
    }
}

/// Deletes a run's objects when [`run`] is dropped before its own cleanup
/// has finished (a caller's timeout, say).
struct CleanupGuard<A: MemberApi + Clone + Send + 'static> {
    members: Vec<(String, A)>,
    settings: Settings,
    armed: bool,
}

impl<A: MemberApi + Clone + Send + 'static> Drop for CleanupGuard<A> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (members, s) = (std::mem::take(&mut self.members), self.settings.clone());
        let hint = format!(
            "kubectl delete pods,services,serviceexports -n {} -l {}",
            s.namespace,
            s.selector()
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = cleanup(&members, &s).await {
                        tracing::warn!(error = %format!("{e:#}"), "verify was stopped and could not clean up");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%hint, "verify was stopped before it cleaned up; delete its objects by hand")
            }
        }
    }
}

/// Deletes every object of the run in every cluster, each within `timeout`.
pub async fn cleanup<A: MemberApi>(members: &[(String, A)], s: &Settings) -> Result<()> {
    let mut failed = Vec::new();
    for (cluster, api) in members {
        let del = api.delete_labelled(&s.namespace, RUN_LABEL, &s.run);
        match tokio::time::timeout(s.timeout, del).await {
            Ok(Ok(n)) => tracing::debug!(%cluster, deleted = n, run = %s.run, "cleaned up"),
            Ok(Err(e)) => failed.push(format!("{cluster}: {e:#}")),
            Err(_) => failed.push(format!("{cluster}: timed out")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "could not delete verify's objects ({}); delete them with `kubectl delete pods,services,serviceexports -n {} -l {}`",
            failed.join("; "),
            s.namespace,
            s.selector()
        )
    }
}

async fn run_checks<A: MemberApi>(members: &[(String, A)], s: &Settings) -> Result<Report> {
    let api_of = |c: &str| {
        members
            .iter()
            .find(|(m, _)| m == c)
            .map(|(_, a)| a)
            .ok_or_else(|| anyhow!("no cluster {c}"))
    };
    let clusters: Vec<String> = members.iter().map(|(c, _)| c.clone()).collect();
    let plan = plan_pods(&s.run, &clusters);
    let ns = &s.namespace;
    for sp in &plan.servers {
        let api = api_of(&sp.cluster)?;
        let (pod, services, exports) = server_objects(s, sp)?;
        let ctx = || format!("cluster {}", sp.cluster);
        api.create_pod(ns, &pod).await.with_context(ctx)?;
        for svc in &services {
            api.create_service(ns, svc).await.with_context(ctx)?;
        }
        for e in &exports {
            api.create_export(ns, e).await.with_context(ctx)?;
        }
    }
    let mut seen = BTreeMap::new();
    for sp in &plan.servers {
        let api = api_of(&sp.cluster)?;
        // Ready: a headless Service publishes ready endpoints only.
        let pod = wait_pod(
            api,
            s,
            &sp.cluster,
            &sp.pod,
            "become ready",
            s.timeout,
            |p| {
                phase(p) == Some("Running")
                    && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
                    && ready(p)
            },
        )
        .await?;
        let cluster_ip = api
            .service(ns, &sp.service)
            .await?
            .and_then(|svc| svc.spec)
            .and_then(|spec| spec.cluster_ip)
            .filter(|ip| ip != "None");
        seen.insert(
            sp.cluster.clone(),
            ServerSeen {
                pod_ip: pod.status.and_then(|s| s.pod_ip),
                cluster_ip,
            },
        );
    }
    let probes = plan_probes(&plan, &seen, ns, s.globalnet);
    for c in &plan.clients {
        let script = client_script(&probes[&c.pod], s.attempts, s.pause_s);
        api_of(&c.cluster)?
            .create_pod(ns, &client_pod(s, c, &script)?)
            .await
            .with_context(|| format!("cluster {}", c.cluster))?;
    }
    // The clients probe at once; each probe ends within its attempts.
    let client_bound =
        s.timeout + Duration::from_secs(u64::from(s.attempts * (2 * PROBE_TIMEOUT_S + s.pause_s)));
    let mut checks = Vec::new();
    for c in &plan.clients {
        let api = api_of(&c.cluster)?;
        let waited = wait_pod(api, s, &c.cluster, &c.pod, "finish", client_bound, |p| {
            matches!(phase(p), Some("Succeeded" | "Failed"))
        })
        .await;
        let (node, missing) = match &waited {
            Ok(p) => (
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                format!("no result in the log of {} (it stopped early)", c.pod),
            ),
            Err(e) => (String::new(), format!("{e:#}")),
        };
        let lines = match &waited {
            Ok(_) => parse_log(&api.logs(ns, &c.pod).await?),
            Err(_) => BTreeMap::new(),
        };
        let from = Source {
            cluster: c.cluster.clone(),
            pod: c.pod.clone(),
            node,
            role: c.role,
            netns: String::new(),
            nameserver: None,
        };
        checks.extend(judge(&from, &probes[&c.pod], &lines, &missing));
    }
    Ok(super::report(
        format!("kubernetes run {} in namespace {ns}", s.run),
        s.globalnet,
        checks,
    ))
}

/// `causeway verify --kubeconfig ...`: loads a client per cluster and runs.
pub fn command(members: &[Member], s: &Settings) -> Result<Report> {
    let mut seen = BTreeSet::new();
    for m in members {
        if !seen.insert(&m.cluster) {
            bail!("--kubeconfig {}: cluster id given twice", m.cluster);
        }
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut apis = Vec::new();
        for m in members {
            apis.push((
                m.cluster.clone(),
                KubeMember::from_kubeconfig(&m.kubeconfig).await?,
            ));
        }
        tracing::info!(run = %s.run, namespace = %s.namespace, "starting verify pods");
        run(&apis, s, async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await
    })
}

#[cfg(test)]
mod tests;
