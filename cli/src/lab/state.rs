//! What a lab made, kept under `/run/causeway/lab/NAME/` so that `status`,
//! `exec` and `down` work from any later process, after a crash too.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::plan::{LabName, LabPlan};

/// Where every lab keeps its run directory.
pub const LAB_ROOT: &str = "/run/causeway/lab";

/// The run directory of lab `name`: state, logs, manifests.
pub fn run_dir(name: &LabName) -> PathBuf {
    Path::new(LAB_ROOT).join(name.as_str())
}

/// A lab's plan and the namespaces and processes it has made so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub plan: LabPlan,
    pub namespaces: Vec<String>,
    pub processes: Vec<ProcessRecord>,
}

/// A daemon the lab started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// `a/web-0`: the pod or node it runs in.
    pub target: String,
    pub netns: String,
    /// What it is: `echo`, `gateway`, ...
    pub role: String,
    pub pid: i32,
    pub log: PathBuf,
    /// The program and its arguments, so `lab start` can run it again.
    #[serde(default)]
    pub command: Vec<String>,
}

impl LabState {
    pub fn new(plan: LabPlan) -> Self {
        Self {
            plan,
            namespaces: Vec::new(),
            processes: Vec::new(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        run_dir(&self.plan.spec.name)
    }

    fn file(name: &LabName) -> PathBuf {
        run_dir(name).join("state.json")
    }

    /// The state of lab `name`, if it has one.
    pub fn load(name: &LabName) -> Result<Option<Self>> {
        let file = Self::file(name);
        match fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("read lab state {}", file.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", file.display())),
        }
    }

    /// Writes the state atomically (a rename), so a crash never leaves half a file.
    pub fn save(&self) -> Result<()> {
        let file = Self::file(&self.plan.spec.name);
        let tmp = file.with_extension("json.tmp");
        fs::create_dir_all(self.dir())
            .with_context(|| format!("create {}", self.dir().display()))?;
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &file).with_context(|| format!("write {}", file.display()))
    }

    pub fn record_namespace(&mut self, netns: &str) -> Result<()> {
        self.namespaces.push(netns.to_owned());
        self.save()
    }

    pub fn record_process(&mut self, process: ProcessRecord) -> Result<()> {
        self.processes.push(process);
        self.save()
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir().join("logs")
    }

    /// Where `causeway join` left cluster `cluster`'s broker credentials and key.
    pub fn secrets_dir(&self, cluster: &str) -> PathBuf {
        self.dir().join("clusters").join(cluster).join("secrets")
    }

    /// The resolv.conf every pod of cluster `cluster` sees.
    pub fn resolv_conf(&self, cluster: &str) -> PathBuf {
        self.dir()
            .join("clusters")
            .join(cluster)
            .join("resolv.conf")
    }

    /// Where cluster `cluster`'s export agent writes each export's conditions.
    pub fn export_status(&self, cluster: &str) -> PathBuf {
        self.dir()
            .join("clusters")
            .join(cluster)
            .join("export-status.json")
    }

    /// The manifest directory of cluster `cluster`: its "Kubernetes API".
    pub fn manifests_dir(&self, cluster: &str) -> PathBuf {
        self.dir().join("clusters").join(cluster).join("manifests")
    }
}
