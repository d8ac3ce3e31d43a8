//! What the operator's toolkit (`verify`, `benchmark`, `show topology`,
//! `gather`) needs from a running lab: each cluster's own store records, the
//! pods on its active gateway node and on its worker, work run inside a pod's
//! namespace, and short-lived headless exports that give chosen pods global
//! IPs (the lab's stand-in for the short-lived pods the toolkit would start
//! on Kubernetes).

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use causeway_api::records::{AnyRecord, Endpoint, ServiceImport};

use crate::lab::plan::{ClusterPlan, LabName, PodPlan};
use crate::lab::state::LabState;

/// A lab as the toolkit reads it: its plan and, per cluster, the records of
/// the cluster's own store (its own and those mirrored from the broker).
pub struct LabView {
    pub state: LabState,
    /// Records of each cluster's own store; empty when the store did not answer.
    pub records: BTreeMap<String, Vec<AnyRecord>>,
}

impl LabView {
    /// Reads lab `name` and every cluster's store.
    pub fn load(name: &LabName) -> Result<Self> {
        let state = crate::lab::load(name)?;
        let mut records = BTreeMap::new();
        for c in &state.plan.clusters {
            records.insert(c.name.clone(), crate::lab::store_records(c, None)?);
        }
        Ok(Self { state, records })
    }

    /// Reads the stores again (after an export changed them).
    pub fn refresh(&mut self) -> Result<()> {
        for c in &self.state.plan.clusters {
            self.records
                .insert(c.name.clone(), crate::lab::store_records(c, None)?);
        }
        Ok(())
    }

    pub fn cluster(&self, name: &str) -> Result<&ClusterPlan> {
        self.state.plan.cluster(name).ok_or_else(|| {
            let known: Vec<&str> = self
                .state
                .plan
                .clusters
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            anyhow!(
                "lab {} has no cluster {name}; it has {}",
                self.state.plan.spec.name,
                known.join(", ")
            )
        })
    }

    /// `cluster`'s own Endpoint record (its active gateway), as its store holds it.
    pub fn own_endpoint(&self, cluster: &str) -> Option<&Endpoint> {
        self.records.get(cluster)?.iter().find_map(|r| match r {
            AnyRecord::Endpoint(e) if e.cluster.as_str() == cluster => Some(e),
            _ => None,
        })
    }

    /// The node of `cluster`'s active gateway.
    pub fn active_gateway(&self, cluster: &str) -> Option<&str> {
        self.own_endpoint(cluster).map(|e| e.node_name.as_str())
    }

    /// The ServiceImport `namespace/name` that cluster `exporter` published,
    /// as cluster `reader`'s store holds it.
    pub fn import(
        &self,
        reader: &str,
        exporter: &str,
        namespace: &str,
        name: &str,
    ) -> Option<&ServiceImport> {
        self.records.get(reader)?.iter().find_map(|r| match r {
            AnyRecord::ServiceImport(i)
                if i.cluster.as_str() == exporter
                    && i.namespace.as_str() == namespace
                    && i.name.as_str() == name =>
            {
                Some(i)
            }
            _ => None,
        })
    }

    /// The cluster's global CIDR, from its Cluster record (none without Globalnet).
    pub fn global_cidr(&self, cluster: &str) -> Option<String> {
        self.records.get(cluster)?.iter().find_map(|r| match r {
            AnyRecord::Cluster(c) if c.id.as_str() == cluster => {
                c.global_cidr.as_ref().map(ToString::to_string)
            }
            _ => None,
        })
    }

    /// Whether the lab runs Globalnet (identical CIDRs).
    pub fn globalnet(&self) -> bool {
        !self.state.plan.spec.distinct_cidrs
    }

    /// The pod that stands for "a pod on the gateway node" of `cluster`: a
    /// pod on its active gateway node (node-0's when no gateway is active).
    pub fn gateway_pod(&self, cluster: &str) -> Result<&PodPlan> {
        let c = self.cluster(cluster)?;
        let node = self
            .active_gateway(cluster)
            .map(str::to_owned)
            .or_else(|| {
                c.nodes
                    .iter()
                    .find(|n| n.is_gateway_candidate())
                    .map(|n| n.name.clone())
            })
            .ok_or_else(|| anyhow!("cluster {cluster} has no gateway candidate"))?;
        c.pods
            .iter()
            .find(|p| p.node == node && p.app != "dns")
            .ok_or_else(|| anyhow!("no pod runs on {cluster}/{node}"))
    }

    /// The pod that stands for "a pod on a worker node": one on a node that
    /// is no gateway candidate.
    pub fn worker_pod(&self, cluster: &str) -> Result<&PodPlan> {
        let c = self.cluster(cluster)?;
        c.pods
            .iter()
            .filter(|p| p.app != "dns")
            .find(|p| {
                c.nodes
                    .iter()
                    .any(|n| n.name == p.node && !n.is_gateway_candidate())
            })
            .ok_or_else(|| anyhow!("cluster {cluster} has no pod on a worker node"))
    }

    /// The nameserver of `cluster`'s pods (the lab's `dns` pod).
    pub fn nameserver(&self, cluster: &str) -> Result<Ipv4Addr> {
        let file = self.state.resolv_conf(cluster);
        let text = fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("nameserver ")?.trim().parse().ok())
            .ok_or_else(|| anyhow!("{} names no nameserver", file.display()))
    }
}

/// One endpoint of a short-lived headless export.
#[derive(Clone, Debug)]
pub struct HeadlessEndpointSpec {
    pub hostname: String,
    pub ip: Ipv4Addr,
    pub node: String,
}

/// A headless Service with hand-picked endpoints, exported from one lab
/// cluster while this guard lives: Globalnet gives each endpoint a global IP
/// that forwards every port to the pod. Dropping it removes the manifests.
pub struct TempHeadlessExport {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    files: Vec<PathBuf>,
}

impl TempHeadlessExport {
    /// Writes the Service, its EndpointSlice and its ServiceExport into
    /// `cluster`'s manifests (each written whole, then renamed).
    pub fn create(
        state: &LabState,
        cluster: &str,
        name: &str,
        port: u16,
        endpoints: &[HeadlessEndpointSpec],
    ) -> Result<Self> {
        let dir = state.manifests_dir(cluster);
        let eps: String = endpoints
            .iter()
            .map(|e| {
                format!(
                    "- addresses: [{}]\n  hostname: {}\n  nodeName: {}\n  conditions: {{ready: true}}\n",
                    e.ip, e.hostname, e.node
                )
            })
            .collect();
        let service = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: None\n  ports: [{{name: tcp, port: {port}, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-lab\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: tcp, protocol: TCP, port: {port}}}]\nendpoints:\n{eps}"
        );
        let created = k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second)?;
        let export = format!(
            "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: {name}\n  namespace: default\n  creationTimestamp: \"{created}\"\n"
        );
        let mut guard = Self {
            cluster: cluster.to_owned(),
            namespace: "default".into(),
            name: name.to_owned(),
            files: Vec::new(),
        };
        for (file, text) in [
            (format!("service-default-{name}.yaml"), service),
            (format!("serviceexport-default-{name}.yaml"), export),
        ] {
            let path = dir.join(&file);
            let tmp = dir.join(format!(".{file}.tmp"));
            fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
            fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
            guard.files.push(path);
        }
        Ok(guard)
    }
}

impl Drop for TempHeadlessExport {
    fn drop(&mut self) {
        // The export first, so the agent withdraws it before the Service goes.
        for file in self.files.iter().rev() {
            let _ = fs::remove_file(file);
        }
    }
}

/// Waits (bounded by `timeout`) until every cluster of `readers` holds
/// `exporter`'s import of `default/name` with `endpoints` addressed
/// endpoints, reading the stores again as it goes. Returns the import as
/// the exporter's own store holds it, or why it is missing.
pub fn wait_for_headless(
    view: &mut LabView,
    exporter: &str,
    name: &str,
    endpoints: usize,
    readers: &[String],
    timeout: Duration,
) -> Result<ServiceImport> {
    let deadline = Instant::now() + timeout;
    loop {
        view.refresh()?;
        let ready = |reader: &str| {
            view.import(reader, exporter, "default", name)
                .is_some_and(|i| i.endpoints.len() == endpoints)
        };
        if ready(exporter) && readers.iter().all(|r| ready(r)) {
            return Ok(view
                .import(exporter, exporter, "default", name)
                .cloned()
                .expect("checked above"));
        }
        if Instant::now() > deadline {
            let why = if view.active_gateway(exporter).is_none() {
                format!("{exporter} has no active gateway (its export agent runs there)")
            } else if !ready(exporter) {
                format!("the export agent of {exporter} did not publish it")
            } else {
                let missing: Vec<&str> = readers
                    .iter()
                    .filter(|r| !ready(r))
                    .map(String::as_str)
                    .collect();
                format!(
                    "it did not reach the stores of {} (the active gateways mirror the broker's records)",
                    missing.join(", ")
                )
            };
            bail!(
                "no import of headless default/{name} from {exporter} within {} s: {why}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The address others reach headless endpoint `pod_ip` of `import` on (its
/// global IP with Globalnet, the pod IP without).
pub fn endpoint_address(import: &ServiceImport, pod_ip: Ipv4Addr) -> Option<IpAddr> {
    import
        .endpoints
        .iter()
        .find(|e| e.local_address == IpAddr::V4(pod_ip))
        .map(|e| e.address)
}
