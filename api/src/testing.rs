//! Test fixtures (feature `testing`): a real etcd on loopback.
//!
//! [`EtcdFixture`] runs the `etcd` binary (Debian `etcd-server`) on
//! 127.0.0.1 with free ports and a temporary data dir, with the flags that
//! allow 1 s leases (Settled decision 6) and auto-compaction, and kills it
//! on drop. [`FakeKube`] is a fake Kubernetes API server that records the
//! permissions Causeway's requests need.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::store::{EtcdConfig, EtcdTls};

mod fake_kube;

pub use self::fake_kube::{FakeKube, KubeRequest, Permission, WriteHook};

/// A running etcd for one test. Killed (and its data removed) on drop.
#[derive(Debug)]
pub struct EtcdFixture {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    extra: Vec<String>,
    tls: Option<EtcdTls>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdFixture {
    /// Starts etcd with the default test flags.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts etcd with extra flags (`--auth-token-ttl=2`, ...).
    pub async fn start_with(extra: &[&str]) -> Self {
        let mut f = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: None,
        };
        f.spawn().await;
        f
    }

    /// Starts etcd serving clients over TLS and requiring client
    /// certificates (mutual TLS), with a CA and certificates made by
    /// `openssl` in the temp dir. [`Self::config`] carries the client side.
    pub async fn start_tls() -> Self {
        let mut f = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            extra: Vec::new(),
            tls: None,
        };
        let d = f.dir.path().to_path_buf();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=causeway-test-ca",
            ],
        ]
        .concat());
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write ext.cnf");
        for who in ["server", "client"] {
            let (key, csr, crt) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
            );
            run(&[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={who}"),
                ],
            ]
            .concat());
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
            ]);
        }
        let p = |n: &str| d.join(n).display().to_string();
        f.extra = vec![
            format!("--cert-file={}", p("server.crt")),
            format!("--key-file={}", p("server.key")),
            format!("--trusted-ca-file={}", p("ca.crt")),
            "--client-cert-auth".into(),
        ];
        f.tls = Some(EtcdTls {
            ca_file: Some(d.join("ca.crt")),
            client_cert: Some((d.join("client.crt"), d.join("client.key"))),
            domain: None,
        });
        f.spawn().await;
        f
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// A store config for this etcd (no credentials; TLS when it serves TLS).
    pub fn config(&self) -> EtcdConfig {
        let mut c = EtcdConfig::new([self.endpoint()]);
        c.tls = self.tls.clone();
        c
    }

    /// Kills etcd (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data after [`Self::kill`].
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--auto-compaction-retention=1")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_secs(1), self.config().connect()).await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(1), c.get("/ready-probe", None)).await
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited with {status}; log: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not ready in 15 s; log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// etcd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdFixture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP proxy that a test can cut, to make etcd unreachable for
/// one client while others still reach it (a partition, not a crash).
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    blocked: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Proxies a new loopback port to `target` (`127.0.0.1:port`).
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (blocked, _) = tokio::sync::watch::channel(false);
        let b = blocked.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = b.subscribe();
                tokio::spawn(async move {
                    if *rx.borrow_and_update() {
                        // Black hole: hold the connection, forward nothing.
                        let _ = rx.wait_for(|b| !*b).await;
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|b| *b) => {}
                    }
                });
            }
        });
        Self {
            port,
            blocked,
            task,
        }
    }

    /// The proxy's URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection and black-holes new ones (`true`), or heals (`false`).
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.send_replace(blocked);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdFixture {
    /// The client address (for [`TcpProxy::start`]).
    pub fn client_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }
}
