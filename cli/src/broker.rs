//! `causeway broker init` and `causeway join`: set up an etcd broker and
//! join a cluster to it. What a cluster needs afterwards (its broker
//! credentials, its WireGuard key) is written as files of mode 0600 into one
//! directory, which the cluster's gateways read.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use causeway_api::join::{BrokerInitOptions, GlobalCidrRequest, JoinRequest, Registry};
use causeway_api::records::ClusterId;
use causeway_api::store::EtcdConfig;
use causeway_gateway::cable::KeyPair;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// How to reach the broker: the file `causeway join` writes and the
/// gateway's `--broker-config` reads.
#[derive(Clone, Serialize, Deserialize)]
pub struct BrokerFile {
    pub endpoints: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl BrokerFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("read broker config {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a broker config written by `causeway join`",
                path.display()
            )
        })
    }

    pub fn etcd_config(&self) -> EtcdConfig {
        let config = EtcdConfig::new(self.endpoints.clone());
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => config.with_credentials(u, p),
            _ => config,
        }
    }
}

/// Writes `contents` to a new file readable by its owner only.
fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("write {}", path.display()))
}

/// Reads a secret from a file, trimmed.
pub fn read_secret(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("read {}", path.display()))?
        .trim()
        .to_owned())
}

/// `causeway broker init`: root user, registry, auth on.
pub async fn init(
    endpoints: Vec<String>,
    root_password: &Path,
    range: Ipv4Net,
    prefix_len: u8,
) -> Result<()> {
    let options = BrokerInitOptions {
        root_password: read_secret(root_password)?,
        registry: Registry::new(range, prefix_len),
    };
    causeway_api::join::broker_init(&EtcdConfig::new(endpoints), &options).await?;
    Ok(())
}

/// What `causeway join` is asked.
pub struct JoinArgs {
    pub cluster: ClusterId,
    pub endpoints: Vec<String>,
    pub root_password: PathBuf,
    pub pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub global_cidr: GlobalCidrRequest,
    pub out: PathBuf,
}

/// `causeway join`: registers the cluster (allocating its global CIDR),
/// creates its broker user, and writes `broker.json`, `wireguard.key` and
/// `cluster.json` (what was registered) into `out`.
pub async fn join(args: JoinArgs) -> Result<causeway_api::records::Cluster> {
    fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let (broker_file, key_file) = (args.out.join("broker.json"), args.out.join("wireguard.key"));
    for f in [&broker_file, &key_file] {
        if f.exists() {
            bail!(
                "{} exists already: this directory holds a joined cluster; pick another --out",
                f.display()
            );
        }
    }
    let root = EtcdConfig::new(args.endpoints.clone())
        .with_credentials("root", &read_secret(&args.root_password)?);
    let request = JoinRequest {
        cluster: args.cluster.clone(),
        pod_cidrs: args.pod_cidrs,
        service_cidrs: args.service_cidrs,
        global_cidr: args.global_cidr,
    };
    let joined = causeway_api::join::join(&root, &request, None).await?;
    let file = BrokerFile {
        endpoints: args.endpoints,
        username: Some(joined.credentials.username.clone()),
        password: Some(joined.credentials.password.clone()),
    };
    write_secret(&broker_file, &serde_json::to_vec_pretty(&file)?)?;
    KeyPair::generate().write_new(&key_file)?;
    let cluster_file = args.out.join("cluster.json");
    fs::write(&cluster_file, serde_json::to_vec_pretty(&joined.cluster)?)
        .with_context(|| format!("write {}", cluster_file.display()))?;
    Ok(joined.cluster)
}
