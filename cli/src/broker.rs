//! `causeway broker init` and `causeway join`: set up an etcd broker and
//! join a cluster to it. What a cluster needs afterwards (its broker
//! credentials, its WireGuard key) is written as files of mode 0600 into one
//! directory, which the cluster's gateways read.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use causeway_api::join::{BrokerInitOptions, GlobalCidrRequest, JoinRequest, Registry};
use causeway_api::records::ClusterId;
use causeway_api::store::{EtcdConfig, EtcdStore, KubeStore, Store};
use causeway_gateway::cable::KeyPair;
use ipnet::{IpNet, Ipv4Net};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};

/// How to reach the broker: the file `causeway join` writes and the
/// gateway's `--broker-config` reads. Two forms: an etcd broker
/// (`{"endpoints": [...], "username": ..., "password": ...}`) or a
/// Kubernetes broker (`{"kubernetes": {"server", "namespace", "caFile",
/// "tokenFile"}}`).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct BrokerFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A Kubernetes broker: its API server and the cluster's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeBrokerFile>,
}

/// A Kubernetes broker in `broker.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeBrokerFile {
    /// The broker API server (`https://host:6443`).
    pub server: String,
    /// The broker namespace holding the `causeway.io` records.
    pub namespace: String,
    /// The broker API server's CA (PEM).
    pub ca_file: PathBuf,
    /// The cluster's ServiceAccount token (re-read when it changes).
    pub token_file: PathBuf,
}

impl BrokerFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("read broker config {}", path.display()))?;
        let file: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a broker config written by `causeway join`",
                path.display()
            )
        })?;
        if file.endpoints.is_empty() && file.kubernetes.is_none() {
            bail!(
                "{} names no broker: it needs \"endpoints\" (etcd) or \"kubernetes\"",
                path.display()
            );
        }
        Ok(file)
    }

    pub fn etcd_config(&self) -> EtcdConfig {
        let config = EtcdConfig::new(self.endpoints.clone());
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => config.with_credentials(u, p),
            _ => config,
        }
    }

    /// Connects to the broker, whichever form it has.
    pub async fn connect(&self) -> Result<Arc<dyn Store>> {
        match &self.kubernetes {
            Some(k) => {
                let client = kube_broker_client(k).await?;
                Ok(Arc::new(KubeStore::new(client, &k.namespace)))
            }
            None => Ok(Arc::new(EtcdStore::connect(&self.etcd_config()).await?)),
        }
    }
}

/// A client of a Kubernetes broker from its server, CA file and token file
/// (as a kubeconfig with `certificate-authority` and `tokenFile` would).
pub async fn kube_broker_client(k: &KubeBrokerFile) -> Result<kube::Client> {
    let kubeconfig: Kubeconfig = serde_json::from_value(serde_json::json!({
        "clusters": [{"name": "broker", "cluster": {
            "server": k.server,
            "certificate-authority": k.ca_file,
        }}],
        "users": [{"name": "causeway", "user": {"tokenFile": k.token_file}}],
        "contexts": [{"name": "broker", "context": {
            "cluster": "broker", "user": "causeway", "namespace": k.namespace,
        }}],
        "current-context": "broker",
    }))
    .context("build the broker's kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("the Kubernetes broker at {}", k.server))?;
    kube::Client::try_from(config).context("a client of the Kubernetes broker")
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
        kubernetes: None,
    };
    write_secret(&broker_file, &serde_json::to_vec_pretty(&file)?)?;
    KeyPair::generate().write_new(&key_file)?;
    let cluster_file = args.out.join("cluster.json");
    fs::write(&cluster_file, serde_json::to_vec_pretty(&joined.cluster)?)
        .with_context(|| format!("write {}", cluster_file.display()))?;
    Ok(joined.cluster)
}

/// Flags of `causeway join`, for an etcd broker or (with
/// `--kubernetes-broker`) a Kubernetes broker.
#[derive(clap::Args, Debug)]
pub struct JoinFlags {
    /// The cluster's id (a DNS label).
    #[arg(long)]
    pub cluster: ClusterId,
    /// Join a Kubernetes broker (`--broker-kubeconfig`) instead of etcd.
    #[arg(long)]
    pub kubernetes_broker: bool,
    /// The broker's etcd endpoints, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "kubernetes_broker"
    )]
    pub broker: Vec<String>,
    /// A file holding the etcd broker's root password.
    #[arg(long, required_unless_present = "kubernetes_broker")]
    pub root_password_file: Option<PathBuf>,
    /// An administrator's kubeconfig of the broker cluster.
    #[arg(long, required_if_eq("kubernetes_broker", "true"))]
    pub broker_kubeconfig: Option<PathBuf>,
    /// The broker namespace (where `helm/causeway-broker` is installed).
    #[arg(long, default_value = "causeway-broker")]
    pub broker_namespace: String,
    /// The member cluster's kubeconfig: its CIDRs are discovered through it
    /// and the Secrets created in it.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Causeway's namespace in the member cluster (the Helm release's).
    #[arg(long, default_value = "causeway")]
    pub namespace: String,
    /// Pod CIDRs; discovered through `--kubeconfig` when not given.
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpNet>,
    /// Service CIDRs; discovered through `--kubeconfig` when not given.
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNet>,
    /// `auto` (the first free block), a CIDR, or `none` (no Globalnet).
    #[arg(long, default_value = "auto")]
    pub global_cidr: String,
    /// Where to write what the cluster needs (files of mode 0600).
    #[arg(long)]
    pub out: PathBuf,
}

impl JoinFlags {
    fn global_cidr_request(&self) -> Result<GlobalCidrRequest> {
        Ok(match self.global_cidr.as_str() {
            "auto" => GlobalCidrRequest::Auto,
            "none" => GlobalCidrRequest::Disabled,
            cidr => GlobalCidrRequest::Fixed(cidr.parse().map_err(|e| {
                anyhow::anyhow!(
                    "--global-cidr {cidr}: {e}; give `auto`, `none` or a CIDR like 242.3.0.0/16"
                )
            })?),
        })
    }
}

/// `causeway join`, either form; returns the registered cluster.
pub async fn join_command(flags: JoinFlags) -> Result<causeway_api::records::Cluster> {
    let global_cidr = flags.global_cidr_request()?;
    if flags.kubernetes_broker {
        return kube_join_command(flags, global_cidr).await;
    }
    if flags.pod_cidrs.is_empty() {
        bail!("--pod-cidr is required with an etcd broker");
    }
    if flags.service_cidrs.is_empty() {
        bail!("--service-cidr is required with an etcd broker");
    }
    join(JoinArgs {
        cluster: flags.cluster,
        endpoints: flags.broker,
        root_password: flags
            .root_password_file
            .context("--root-password-file is required with an etcd broker")?,
        pod_cidrs: flags.pod_cidrs,
        service_cidrs: flags.service_cidrs,
        global_cidr,
        out: flags.out,
    })
    .await
}

/// Secret names `join --kubernetes-broker` writes into values.yaml.
pub const BROKER_SECRET: &str = "causeway-broker";
/// The WireGuard key Secret's name.
pub const WIREGUARD_SECRET: &str = "causeway-wireguard";
/// Where the chart mounts the broker Secret.
pub const BROKER_MOUNT: &str = "/etc/causeway/broker";

/// What `join --kubernetes-broker` hands the member cluster.
#[derive(Debug, Clone)]
pub struct KubeJoinFiles {
    /// The values file for `helm/causeway`.
    pub values: serde_json::Value,
    /// The broker and WireGuard Secrets.
    pub secrets: Vec<k8s_openapi::api::core::v1::Secret>,
}

/// The values and Secrets of a cluster joined to a Kubernetes broker (pure).
#[allow(clippy::too_many_arguments)]
pub fn kube_join_files(
    cluster: &causeway_api::records::Cluster,
    discovered_pod: bool,
    discovered_service: bool,
    server: &str,
    broker_namespace: &str,
    namespace: &str,
    ca_pem: &[u8],
    token: &[u8],
    wireguard_key: &str,
) -> KubeJoinFiles {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let broker_json = BrokerFile {
        kubernetes: Some(KubeBrokerFile {
            server: server.to_owned(),
            namespace: broker_namespace.to_owned(),
            ca_file: Path::new(BROKER_MOUNT).join("ca.crt"),
            token_file: Path::new(BROKER_MOUNT).join("token"),
        }),
        ..BrokerFile::default()
    };
    let cidrs = |c: &[IpNet], discovered: bool| -> Vec<String> {
        // Discovered ranges are left for the daemons to discover again at
        // start, so the chart follows the cluster; given ones are pinned.
        if discovered {
            Vec::new()
        } else {
            c.iter().map(ToString::to_string).collect()
        }
    };
    let values = serde_json::json!({
        "cluster": {
            "id": cluster.id.as_str(),
            "podCIDRs": cidrs(&cluster.pod_cidrs, discovered_pod),
            "serviceCIDRs": cidrs(&cluster.service_cidrs, discovered_service),
        },
        "globalnet": match cluster.global_cidr {
            Some(g) => serde_json::json!({"enabled": true, "globalCIDR": g.to_string()}),
            None => serde_json::json!({"enabled": false}),
        },
        "broker": {
            "type": "kubernetes",
            "server": server,
            "namespace": broker_namespace,
            "secretName": BROKER_SECRET,
        },
        "wireguard": {"secretName": WIREGUARD_SECRET},
    });
    let secret = |name: &str, data: Vec<(&str, Vec<u8>)>| Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_owned(),
                    "causeway".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    };
    let secrets = vec![
        secret(
            BROKER_SECRET,
            vec![
                (
                    "broker.json",
                    serde_json::to_vec_pretty(&broker_json).expect("serialisable"),
                ),
                ("ca.crt", ca_pem.to_vec()),
                ("token", token.to_vec()),
            ],
        ),
        secret(
            WIREGUARD_SECRET,
            vec![("wireguard.key", format!("{wireguard_key}\n").into_bytes())],
        ),
    ];
    KubeJoinFiles { values, secrets }
}

/// The server and CA (PEM) of a kubeconfig's current context.
fn server_and_ca(kubeconfig: &Kubeconfig, path: &Path) -> Result<(String, Option<Vec<u8>>)> {
    let context = kubeconfig
        .current_context
        .as_ref()
        .and_then(|c| kubeconfig.contexts.iter().find(|n| &n.name == c))
        .and_then(|n| n.context.clone())
        .with_context(|| format!("{} has no current context", path.display()))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .with_context(|| {
            format!(
                "{} names cluster {} but does not define it",
                path.display(),
                context.cluster
            )
        })?;
    let server = cluster
        .server
        .with_context(|| format!("{}: its cluster has no server", path.display()))?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data.trim())
                .context("certificate-authority-data is not base64")?,
        ),
        (None, Some(file)) => {
            Some(fs::read(file).with_context(|| format!("read the broker's CA {file}"))?)
        }
        (None, None) => None,
    };
    Ok((server, ca))
}

async fn client_from(path: &Path) -> Result<(kube::Client, Kubeconfig)> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("read kubeconfig {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .with_context(|| format!("kubeconfig {}", path.display()))?;
    Ok((kube::Client::try_from(config)?, kubeconfig))
}

/// Waits (bounded) for the API server to fill the token Secret; returns
/// its token and CA.
async fn wait_for_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    for _ in 0..60 {
        if let Some(s) = secrets
            .get_opt(name)
            .await
            .with_context(|| format!("read Secret {namespace}/{name} on the broker"))?
            && let Some(data) = s.data
            && let Some(token) = data.get("token").filter(|t| !t.0.is_empty())
        {
            return Ok((token.0.clone(), data.get("ca.crt").map(|c| c.0.clone())));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    bail!(
        "the broker's API server did not fill the token of Secret {namespace}/{name} within 30 s; \
         is its token controller running?"
    )
}

/// `causeway join --kubernetes-broker`: registers the cluster on the
/// broker, reads its ServiceAccount token, and writes `values.yaml` and
/// `secrets.yaml` into `--out` (and the Secrets into the member cluster,
/// with `--kubeconfig`).
async fn kube_join_command(
    flags: JoinFlags,
    global_cidr: GlobalCidrRequest,
) -> Result<causeway_api::records::Cluster> {
    let broker_path = flags
        .broker_kubeconfig
        .clone()
        .context("--broker-kubeconfig is required with --kubernetes-broker")?;
    let (values_file, secrets_file) = (
        flags.out.join("values.yaml"),
        flags.out.join("secrets.yaml"),
    );
    for f in [&values_file, &secrets_file] {
        if f.exists() {
            bail!(
                "{} exists already: this directory holds a joined cluster; pick another --out",
                f.display()
            );
        }
    }
    let member = match &flags.kubeconfig {
        Some(p) => Some(client_from(p).await?.0),
        None => None,
    };
    let (broker, broker_kubeconfig) = client_from(&broker_path).await?;
    let (server, ca) = server_and_ca(&broker_kubeconfig, &broker_path)?;
    let files = kube_join_with(
        broker,
        member.clone(),
        &server,
        ca,
        &flags,
        global_cidr,
        &KeyPair::generate(),
    )
    .await?;
    write_join_files(&flags.out, &files.1)?;
    if let Some(member) = member {
        apply_secrets(member, &flags.namespace, &files.1.secrets).await?;
    }
    Ok(files.0)
}

/// The part of `join --kubernetes-broker` that talks to the API servers:
/// discovery on the member (when CIDRs are not given), `kube_join` on the
/// broker, the token. Returns the cluster and the files to write.
pub async fn kube_join_with(
    broker: kube::Client,
    member: Option<kube::Client>,
    server: &str,
    ca: Option<Vec<u8>>,
    flags: &JoinFlags,
    global_cidr: GlobalCidrRequest,
    key: &KeyPair,
) -> Result<(causeway_api::records::Cluster, KubeJoinFiles)> {
    let (pod_cidrs, service_cidrs, discovered_pod, discovered_service) = match &member {
        Some(member) => {
            let c = causeway_api::discovery::discover(
                member,
                &flags.namespace,
                &flags.pod_cidrs,
                &flags.service_cidrs,
            )
            .await?;
            use causeway_api::discovery::CidrSource::Flag;
            (
                c.pod_cidrs,
                c.service_cidrs,
                c.pod_source != Flag,
                c.service_source != Flag,
            )
        }
        None => {
            if flags.pod_cidrs.is_empty() || flags.service_cidrs.is_empty() {
                bail!(
                    "give --pod-cidr and --service-cidr, or --kubeconfig of the member cluster to discover them"
                );
            }
            (
                flags.pod_cidrs.clone(),
                flags.service_cidrs.clone(),
                false,
                false,
            )
        }
    };
    let request = JoinRequest {
        cluster: flags.cluster.clone(),
        pod_cidrs,
        service_cidrs,
        global_cidr,
    };
    let joined =
        causeway_api::join::kube_join(broker.clone(), &flags.broker_namespace, &request).await?;
    let (token, secret_ca) =
        wait_for_token(&broker, &flags.broker_namespace, &joined.token_secret).await?;
    let ca = ca.or(secret_ca).context(
        "neither the broker kubeconfig nor the token Secret holds the broker's CA certificate",
    )?;
    let files = kube_join_files(
        &joined.cluster,
        discovered_pod,
        discovered_service,
        server,
        &flags.broker_namespace,
        &flags.namespace,
        &ca,
        &token,
        &key.private().expose_base64(),
    );
    Ok((joined.cluster, files))
}

/// Writes `values.yaml` (0644) and `secrets.yaml` (0600) into `out`.
pub fn write_join_files(out: &Path, files: &KubeJoinFiles) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let values = format!(
        "# Values for helm/causeway, written by `causeway join --kubernetes-broker`.\n{}",
        serde_yaml::to_string(&files.values)?
    );
    fs::write(out.join("values.yaml"), values)
        .with_context(|| format!("write {}", out.join("values.yaml").display()))?;
    let mut secrets = String::new();
    for s in &files.secrets {
        secrets.push_str("---\n");
        secrets.push_str(&serde_yaml::to_string(s)?);
    }
    write_secret(&out.join("secrets.yaml"), secrets.as_bytes())
}

/// Server-side applies the Secrets (and their namespace) in the member cluster.
pub async fn apply_secrets(
    member: kube::Client,
    namespace: &str,
    secrets: &[k8s_openapi::api::core::v1::Secret],
) -> Result<()> {
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{Patch, PatchParams};
    let params = PatchParams::apply(causeway_api::store::FIELD_MANAGER).force();
    let namespaces: kube::Api<Namespace> = kube::Api::all(member.clone());
    namespaces
        .patch(
            namespace,
            &params,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})),
        )
        .await
        .with_context(|| format!("create namespace {namespace} in the member cluster"))?;
    let api: kube::Api<Secret> = kube::Api::namespaced(member, namespace);
    for s in secrets {
        let name = s.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(s))
            .await
            .with_context(|| format!("create Secret {namespace}/{name} in the member cluster"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_files_of_both_forms_parse_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let etcd = dir.path().join("etcd.json");
        fs::write(
            &etcd,
            r#"{"endpoints":["http://192.0.2.1:2379"],"username":"cluster-a","password":"p"}"#,
        )
        .unwrap();
        let f = BrokerFile::load(&etcd).unwrap();
        assert_eq!(f.endpoints, ["http://192.0.2.1:2379"]);
        assert!(f.kubernetes.is_none());

        let kube = dir.path().join("kube.json");
        fs::write(
            &kube,
            r#"{"kubernetes":{"server":"https://broker.example:6443","namespace":"causeway-broker",
                "caFile":"/etc/causeway/broker/ca.crt","tokenFile":"/etc/causeway/broker/token"}}"#,
        )
        .unwrap();
        let f = BrokerFile::load(&kube).unwrap();
        let k = f.kubernetes.unwrap();
        assert_eq!(k.server, "https://broker.example:6443");
        assert_eq!(k.token_file, Path::new("/etc/causeway/broker/token"));

        let typo = dir.path().join("typo.json");
        fs::write(
            &typo,
            r#"{"kubernetes":{"server":"https://b:6443","namespace":"n","caFile":"c","tokenFil":"t"}}"#,
        )
        .unwrap();
        assert!(BrokerFile::load(&typo).is_err());
        let empty = dir.path().join("empty.json");
        fs::write(&empty, "{}").unwrap();
        let err = format!("{:#}", BrokerFile::load(&empty).err().unwrap());
        assert!(
            err.contains("endpoints") && err.contains("kubernetes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_kubernetes_broker_client_is_built_from_its_ca_and_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=broker-ca", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&ca)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success());
        let token = dir.path().join("token");
        fs::write(&token, "t0ken\n").unwrap();
        let k = KubeBrokerFile {
            server: "https://192.0.2.1:6443".into(),
            namespace: "causeway-broker".into(),
            ca_file: ca,
            token_file: token,
        };
        let client = kube_broker_client(&k).await.unwrap();
        assert_eq!(client.default_namespace(), "causeway-broker");
        let missing = KubeBrokerFile {
            ca_file: dir.path().join("nope.crt"),
            ..k
        };
        assert!(kube_broker_client(&missing).await.is_err());
    }
}
