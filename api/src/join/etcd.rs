//! `causeway broker init` and `causeway join` on an etcd broker.
//!
//! `broker_init` is `etcdctl user add root && etcdctl user grant-role root
//! root && etcdctl auth enable`, plus the registry key. `join` allocates in
//! one transaction (`etcdctl txn`: the registry's mod revision is unchanged,
//! then write the registry and the Cluster record), then creates the
//! cluster's role (read the clusterset prefix, read-write its own) and user.

use etcd_client::{Client, Compare, CompareOp, Permission, Txn, TxnOp};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use tracing::info;

use super::allocate::{JoinRequest, RegisteredCluster, Registry, allocate};
use crate::error::{Error, Result};
use crate::records::{self, AnyRecord, Cluster, ClusterId, RecordKey};
use crate::store::{EtcdConfig, EtcdCredentials, KeyLayout, etcd_call as call};

/// Options of `broker init`.
#[derive(Debug, Clone)]
pub struct BrokerInitOptions {
    /// Password for etcd's `root` user.
    pub root_password: String,
    /// The registry to start with (clusterset range and block size).
    pub registry: Registry,
}

/// What `join` hands the new cluster.
#[derive(Debug, Clone)]
pub struct JoinOutput {
    /// The cluster as registered (with its global CIDR).
    pub cluster: Cluster,
    /// Its broker credentials (read the clusterset, write its own records).
    pub credentials: EtcdCredentials,
}

/// The etcd user of a cluster.
pub fn cluster_user(id: &ClusterId) -> String {
    format!("causeway-cluster-{id}")
}

/// The etcd role of a cluster.
pub fn cluster_role(id: &ClusterId) -> String {
    cluster_user(id)
}

/// Runs `f` and retries while etcd answers "revision of auth store is old"
/// (another join changed users or roles between the token check and the call).
async fn retrying<T, F, Fut>(t: std::time::Duration, op: impl Fn() -> String, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call(t, &op, f()).await {
            Err(Error::Etcd { source, .. })
                if attempt < 20 && source.to_string().contains("auth store is old") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempt)).await;
            }
            r => return r,
        }
    }
}

fn already_exists(e: &Error) -> bool {
    matches!(e, Error::Etcd { source, .. } if source.to_string().contains("already exists"))
}

/// Creates etcd's root user, writes the registry (unless one exists) and
/// enables authentication. `config` connects without credentials; running
/// it again after auth is on fails with a permission error, which says so.
pub async fn broker_init(config: &EtcdConfig, options: &BrokerInitOptions) -> Result<()> {
    let mut plain = config.clone();
    plain.credentials = None;
    let mut c = plain.connect().await?;
    let t = config.request_timeout;
    match call(
        t,
        || "user add root".into(),
        c.user_add("root", options.root_password.as_str(), None),
    )
    .await
    {
        Err(e) if already_exists(&e) => {}
        // With auth on, an anonymous request is refused: init has run before.
        Err(Error::Etcd { source, .. })
            if source.to_string().contains("user name is empty")
                || source.to_string().contains("permission denied") =>
        {
            return Err(Error::BrokerInitialised);
        }
        r => {
            r?;
        }
    }
    call(
        t,
        || "user grant-role root root".into(),
        c.user_grant_role("root", "root"),
    )
    .await?;
    let key = config.layout.registry();
    let bytes = serde_json::to_vec(&options.registry).expect("registry serialises");
    let txn = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), bytes, None)]);
    call(t, || format!("txn create {key}"), c.txn(txn)).await?;
    call(t, || "auth enable".into(), c.auth_enable()).await?;
    info!(registry = %key, "broker initialised: auth enabled");
    Ok(())
}

async fn read_registry(
    c: &Client,
    layout: &KeyLayout,
    t: std::time::Duration,
) -> Result<(Registry, i64)> {
    let key = layout.registry();
    let r = retrying(
        t,
        || format!("get {key}"),
        || {
            let (mut c, key) = (c.clone(), key.clone());
            async move { c.get(key, None).await }
        },
    )
    .await?;
    match r.kvs().first() {
        None => Ok((Registry::default(), 0)),
        Some(kv) => {
            let reg =
                serde_json::from_slice(kv.value()).map_err(|source| Error::CorruptRegistry {
                    key: key.clone(),
                    source,
                })?;
            Ok((reg, kv.mod_revision()))
        }
    }
}

/// Joins `request.cluster`: allocates its global CIDR and registers it in
/// one transaction (refusing a taken id or an overlapping CIDR), writes its
/// Cluster record, and creates its role and user. `config` must carry the
/// root credentials. `password` is generated when `None`.
pub async fn join(
    config: &EtcdConfig,
    request: &JoinRequest,
    password: Option<String>,
) -> Result<JoinOutput> {
    let c = config.connect().await?;
    let t = config.request_timeout;
    let layout = &config.layout;
    let id = &request.cluster;
    let mut attempt = 0;
    let cluster = loop {
        attempt += 1;
        if attempt > 32 {
            return Err(Error::JoinContention);
        }
        let (mut registry, rev) = read_registry(&c, layout, t).await?;
        let global_cidr = allocate(&registry, request)?;
        let cluster = Cluster {
            id: id.clone(),
            pod_cidrs: request.pod_cidrs.clone(),
            service_cidrs: request.service_cidrs.clone(),
            global_cidr,
        };
        let record = AnyRecord::Cluster(cluster.clone());
        record.validate()?;
        registry.clusters.insert(
            id.clone(),
            RegisteredCluster {
                global_cidr,
                pod_cidrs: request.pod_cidrs.clone(),
                service_cidrs: request.service_cidrs.clone(),
            },
        );
        let key = layout.registry();
        let guard = if rev == 0 {
            Compare::version(key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
        };
        let record_key = layout.record(&RecordKey {
            cluster: id.clone(),
            kind: records::Kind::Cluster,
            name: id.to_string(),
        });
        let txn = Txn::new().when([guard]).and_then([
            TxnOp::put(
                key.as_str(),
                serde_json::to_vec(&registry).expect("registry serialises"),
                None,
            ),
            TxnOp::put(record_key.as_str(), records::encode(&record), None),
        ]);
        let r = retrying(
            t,
            || format!("txn join {id}"),
            || {
                let (mut c, txn) = (c.clone(), txn.clone());
                async move { c.txn(txn).await }
            },
        )
        .await?;
        if r.succeeded() {
            break cluster;
        }
        info!(cluster = %id, attempt, "registry changed during join; retrying");
    };

    let user = cluster_user(id);
    let role = cluster_role(id);
    let password = password.unwrap_or_else(|| {
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    });
    let r = retrying(
        t,
        || format!("role add {role}"),
        || {
            let (mut c, role) = (c.clone(), role.clone());
            async move { c.role_add(role).await }
        },
    )
    .await;
    match r {
        Err(e) if already_exists(&e) => {}
        r => {
            r?;
        }
    }
    let grants = [
        Permission::read(layout.root_prefix()).with_prefix(),
        Permission::read_write(layout.cluster_prefix(id)).with_prefix(),
    ];
    for perm in grants {
        retrying(
            t,
            || format!("role grant-permission {role} {perm:?}"),
            || {
                let (mut c, role, perm) = (c.clone(), role.clone(), perm.clone());
                async move { c.role_grant_permission(role, perm).await }
            },
        )
        .await?;
    }
    let r = retrying(
        t,
        || format!("user add {user}"),
        || {
            let (mut c, user, pw) = (c.clone(), user.clone(), password.clone());
            async move { c.user_add(user, pw, None).await }
        },
    )
    .await;
    match r {
        Err(e) if already_exists(&e) => {
            retrying(
                t,
                || format!("user passwd {user}"),
                || {
                    let (mut c, user, pw) = (c.clone(), user.clone(), password.clone());
                    async move { c.user_change_password(user, pw).await }
                },
            )
            .await?;
        }
        r => {
            r?;
        }
    }
    retrying(
        t,
        || format!("user grant-role {user} {role}"),
        || {
            let (mut c, user, role) = (c.clone(), user.clone(), role.clone());
            async move { c.user_grant_role(user, role).await }
        },
    )
    .await?;
    info!(cluster = %id, global_cidr = ?cluster.global_cidr, "cluster joined");
    Ok(JoinOutput {
        cluster,
        credentials: EtcdCredentials {
            username: user,
            password,
        },
    })
}
