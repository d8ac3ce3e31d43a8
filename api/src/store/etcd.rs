//! The etcd backend of [`Store`]: records under `<root>/clusters/<id>/`,
//! list with `etcdctl get --prefix`, watch with `etcdctl watch --prefix
//! --rev`, and user/password authentication that re-authenticates when the
//! token expires (etcd-client's `with_auto_token_refresh`; without it calls
//! fail after `--auth-token-ttl` of disuse, FACTS.md).

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, WatchOptions,
};
use futures::stream::BoxStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::keys::KeyLayout;
use super::{Listing, Revision, Store, WatchEvent};
use crate::error::{Error, Result};
use crate::records::{self, AnyRecord, Kind, RecordKey};

/// User and password for etcd authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS files for an `https://` etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA bundle that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Server name to verify, when it differs from the endpoint's host.
    pub domain: Option<String>,
}

/// How to reach an etcd and where Causeway's keys live in it.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Endpoints (`http://127.0.0.1:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// Key layout (root prefix).
    pub layout: KeyLayout,
    /// Credentials, when auth is enabled.
    pub credentials: Option<EtcdCredentials>,
    /// TLS, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// Bound on each unary request.
    pub request_timeout: Duration,
    /// Bound on connecting.
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    /// A config for `endpoints` with the default layout, no auth, no TLS.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            layout: KeyLayout::default(),
            credentials: None,
            tls: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// The same config authenticating as `username`.
    pub fn with_credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some(EtcdCredentials {
            username: username.to_owned(),
            password: password.to_owned(),
        });
        self
    }

    fn options(&self) -> Result<ConnectOptions> {
        // HTTP/2 pings notice a dead server under an idle watch.
        let mut o = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_auto_token_refresh(true);
        if let Some(c) = &self.credentials {
            o = o.with_user(&c.username, &c.password);
        }
        if let Some(t) = &self.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| Error::ReadTlsFile {
                    path: p.clone(),
                    source,
                })
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &t.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &t.client_cert {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(d) = &t.domain {
                tls = tls.domain_name(d.clone());
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }

    /// Connects (and authenticates, when credentials are set).
    pub async fn connect(&self) -> Result<Client> {
        let endpoints = self.endpoints.join(",");
        let fut = Client::connect(&self.endpoints, Some(self.options()?));
        match tokio::time::timeout(self.connect_timeout + self.request_timeout, fut).await {
            Ok(r) => r.map_err(|source| Error::ConnectEtcd { endpoints, source }),
            Err(_) => Err(Error::ConnectEtcd {
                endpoints,
                source: etcd_client::Error::Internal("timed out".into()),
            }),
        }
    }
}

/// Runs one unary etcd call with the configured bound.
pub(crate) async fn call<T>(
    timeout: Duration,
    op: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Etcd { op: op(), source }),
        Err(_) => Err(Error::Etcd {
            op: op(),
            source: etcd_client::Error::Internal(format!("timed out after {timeout:?}")),
        }),
    }
}

/// True when etcd refused the call for lack of permission.
pub(crate) fn is_permission_denied(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("permission denied"))
}

/// A [`Store`] on etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    layout: KeyLayout,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("layout", &self.layout)
            .finish()
    }
}

impl EtcdStore {
    /// Connects per `config`.
    pub async fn connect(config: &EtcdConfig) -> Result<Self> {
        Ok(Self::from_client(
            config.connect().await?,
            config.layout.clone(),
            config.request_timeout,
        ))
    }

    /// Wraps an existing client.
    pub fn from_client(client: Client, layout: KeyLayout, timeout: Duration) -> Self {
        Self {
            client,
            layout,
            timeout,
        }
    }

    /// The underlying client (for the elector and join on the same connection).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key layout.
    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    /// Decodes one stored key/value: `None` for a key outside the layout,
    /// `Some(Err)` for a record that is refused.
    fn decode_kv(
        layout: &KeyLayout,
        kv: &KeyValue,
    ) -> Option<(RecordKey, Result<AnyRecord, records::DecodeError>)> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        let Some(rk) = layout.parse(key) else {
            debug!(key, "ignoring a key outside the record layout");
            return None;
        };
        let r = records::decode(&rk, kv.value());
        Some((rk, r))
    }

    async fn list_at(
        client: &Client,
        layout: &KeyLayout,
        timeout: Duration,
        kind: Option<Kind>,
    ) -> Result<Listing> {
        let prefix = layout.clusters_prefix();
        let mut c = client.clone();
        let resp = call(
            timeout,
            || format!("get --prefix {prefix}"),
            c.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut records = Vec::new();
        for kv in resp.kvs() {
            match Self::decode_kv(layout, kv) {
                Some((rk, _)) if kind.is_some_and(|k| k != rk.kind) => {}
                Some((_, Ok(r))) => records.push(r),
                Some((rk, Err(e))) => warn!(key = %rk, error = %e, "skipping a refused record"),
                None => {}
            }
        }
        Ok(Listing { records, revision })
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn put(&self, record: &AnyRecord) -> Result<Revision> {
        record.validate()?;
        let rk = record.key();
        let key = self.layout.record(&rk);
        let mut c = self.client.clone();
        let resp = call(
            self.timeout,
            || format!("put {key}"),
            c.put(key.as_str(), records::encode(record), None::<PutOptions>),
        )
        .await
        .map_err(|e| match e {
            Error::Etcd { source, .. } if is_permission_denied(&source) => {
                Error::PermissionDenied { key: rk }
            }
            e => e,
        })?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn delete(&self, key: &RecordKey) -> Result<Revision> {
        let k = self.layout.record(key);
        let mut c = self.client.clone();
        let resp = call(
            self.timeout,
            || format!("del {k}"),
            c.delete(k.as_str(), None),
        )
        .await
        .map_err(|e| match e {
            Error::Etcd { source, .. } if is_permission_denied(&source) => {
                Error::PermissionDenied { key: key.clone() }
            }
            e => e,
        })?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn list(&self, kind: Option<Kind>) -> Result<Listing> {
        Self::list_at(&self.client, &self.layout, self.timeout, kind).await
    }

    fn watch(
        &self,
        kind: Option<Kind>,
        resume_from: Option<Revision>,
    ) -> BoxStream<'static, WatchEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = watch_loop(this, kind, resume_from, &tx) => {}
                _ = tx.closed() => {}
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Why one watch stream ended.
enum StreamEnd {
    /// The revision to resume from was compacted: list again.
    Compacted,
    /// The stream broke; resume from the last revision.
    Broken(String),
    /// The reader went away.
    Closed,
}

async fn watch_loop(
    store: EtcdStore,
    kind: Option<Kind>,
    resume_from: Option<Revision>,
    tx: &tokio::sync::mpsc::Sender<WatchEvent>,
) {
    let mut last = resume_from;
    let mut backoff = Duration::from_millis(100);
    loop {
        if last.is_none() {
            match EtcdStore::list_at(&store.client, &store.layout, store.timeout, kind).await {
                Ok(l) => {
                    last = Some(l.revision);
                    let ev = WatchEvent::Snapshot {
                        records: l.records,
                        revision: l.revision,
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "listing records failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let from = last.expect("set above");
        match watch_once(&store, kind, from, tx, &mut last, &mut backoff).await {
            StreamEnd::Closed => return,
            StreamEnd::Compacted => {
                info!(from, "watch revision was compacted; listing again");
                last = None;
            }
            StreamEnd::Broken(why) => {
                warn!(from = ?last, error = %why, "watch broke; resuming in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn watch_once(
    store: &EtcdStore,
    kind: Option<Kind>,
    from: Revision,
    tx: &tokio::sync::mpsc::Sender<WatchEvent>,
    last: &mut Option<Revision>,
    backoff: &mut Duration,
) -> StreamEnd {
    let prefix = store.layout.clusters_prefix();
    let mut c = store.client.clone();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from + 1)
        .with_progress_notify();
    let mut stream = match call(
        store.timeout,
        || format!("watch {prefix}"),
        c.watch(prefix.as_str(), Some(opts)),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return StreamEnd::Broken(e.to_string()),
    };
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return StreamEnd::Broken("stream ended".into()),
            Err(e) => return StreamEnd::Broken(e.to_string()),
        };
        if msg.canceled() {
            if msg.compact_revision() > 0 {
                return StreamEnd::Compacted;
            }
            return StreamEnd::Broken(format!("watch canceled: {}", msg.cancel_reason()));
        }
        // A working stream resets the backoff.
        *backoff = Duration::from_millis(100);
        if msg.events().is_empty() && !msg.created() {
            // A progress notification: everything up to its revision was sent.
            if let Some(h) = msg.header() {
                *last = Some(last.unwrap_or(0).max(h.revision()));
            }
            continue;
        }
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let revision = kv.mod_revision();
            *last = Some(revision);
            let Some((rk, decoded)) = EtcdStore::decode_kv(&store.layout, kv) else {
                continue;
            };
            if kind.is_some_and(|k| k != rk.kind) {
                continue;
            }
            let out = match (ev.event_type(), decoded) {
                (EventType::Delete, _) => WatchEvent::Delete { key: rk, revision },
                (EventType::Put, Ok(record)) => WatchEvent::Put { record, revision },
                (EventType::Put, Err(e)) => {
                    warn!(key = %rk, error = %e, "record replaced by a refused one; forgetting it");
                    WatchEvent::Delete { key: rk, revision }
                }
            };
            if tx.send(out).await.is_err() {
                return StreamEnd::Closed;
            }
        }
    }
}
