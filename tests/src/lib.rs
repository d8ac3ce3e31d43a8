//! Helpers for the end-to-end tests: the lab fixture, commands run in its
//! pods, and the checks that the machine can run them at all.
//!
//! These tests need root and network namespaces. They never skip: on a
//! machine that cannot run them they fail and say why, so CI cannot pass
//! without having run them.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// The `causeway` binary under test: `$CAUSEWAY_BIN`, else the workspace's
/// debug build.
pub fn causeway_bin() -> PathBuf {
    let bin = std::env::var_os("CAUSEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/causeway")
        });
    assert!(
        bin.exists(),
        "no causeway binary at {}: build it with `cargo build -p causeway-cli` or set CAUSEWAY_BIN",
        bin.display()
    );
    bin
}

/// Fails the test, loudly, where end-to-end tests cannot run.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (they build network namespaces): run scripts/test.sh as root"
    );
}

/// A lab name no other test in this run uses.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("t{tag}{}x{n}", std::process::id() % 100_000)
}

/// Runs `causeway ARGS`.
pub fn causeway(args: &[&str]) -> Output {
    Command::new(causeway_bin())
        .args(args)
        .output()
        .expect("run the causeway binary")
}

/// Stdout of a command that must succeed.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Stderr of a command that must fail.
pub fn fails(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed but succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("utf-8 output")
}

/// Namespaces on this machine whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the links in the host's own namespace.
pub fn host_links() -> Vec<String> {
    let mut links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("read /sys/class/net")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    links.sort();
    links
}

/// Whether process `pid` is alive: present and not a zombie (a daemon whose
/// parent exited waits for a reaper that may be slow to come).
pub fn is_running(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A lab that is taken down when the test ends, pass or fail.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `causeway lab up --name <unique> EXTRA...`, with the CNI of
    /// `$CAUSEWAY_TEST_CNI` when it is set (`calico`, `a=flannel,b=calico`),
    /// so the whole suite can run under another CNI; else the lab's default
    /// (or the `--cni` among `extra`).
    pub fn up(tag: &str, extra: &[&str]) -> Self {
        let cni = std::env::var("CAUSEWAY_TEST_CNI")
            .ok()
            .filter(|_| !extra.contains(&"--cni"));
        Self::up_with(tag, cni.as_deref(), extra)
    }

    /// `causeway lab up --name <unique> --cni CNI EXTRA...`: `cni` is what
    /// `--cni` takes (`calico`, `a=flannel,b=calico`); `None` leaves the
    /// lab's default (Flannel).
    pub fn up_with(tag: &str, cni: Option<&str>, extra: &[&str]) -> Self {
        require_root();
        let lab = Self {
            name: unique_name(tag),
        };
        let mut args = vec!["lab", "up", "--name", &lab.name];
        if let Some(cni) = cni {
            args.extend_from_slice(&["--cni", cni]);
        }
        args.extend_from_slice(extra);
        ok(causeway(&args), "lab up");
        lab
    }

    /// The CNI `lab status` reports for `cluster`.
    pub fn cni(&self, cluster: &str) -> String {
        self.status()["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .find(|c| c["name"] == cluster)
            .and_then(|c| c["cni"].as_str())
            .unwrap_or_else(|| panic!("lab status names no CNI for cluster {cluster}"))
            .to_owned()
    }

    /// `causeway lab exec --name LAB TARGET -- CMD...`
    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", "--name", &self.name, target, "--"];
        args.extend_from_slice(cmd);
        causeway(&args)
    }

    /// The body of an HTTP GET from `target`, which must succeed.
    pub fn http_get(&self, target: &str, url: &str) -> String {
        let out = self.exec(target, &["curl", "-sS", "--max-time", "5", url]);
        ok(out, &format!("GET {url} from {target}"))
    }

    /// The echo server's JSON answer to a GET from `target`.
    pub fn echo(&self, target: &str, url: &str) -> Value {
        let body = self.http_get(target, url);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url} answered {body:?}: {e}"))
    }

    /// The echo reply to a GET from `target`, retried for up to 15 s (a
    /// bounded loop): for a path that is still coming up.
    pub fn echo_eventually(&self, target: &str, url: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let out = self.exec(target, &["curl", "-sS", "--max-time", "2", url]);
            if out.status.success()
                && let Ok(reply) = serde_json::from_slice::<Value>(&out.stdout)
            {
                return reply;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "GET {url} from {target} still fails after 15 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// `causeway lab export --name LAB CLUSTER SERVICE`, checked.
    pub fn export(&self, cluster: &str, service: &str) {
        ok(
            causeway(&["lab", "export", "--name", &self.name, cluster, service]),
            "lab export",
        );
    }

    /// `causeway lab export --unexport`, checked.
    pub fn unexport(&self, cluster: &str, service: &str) {
        ok(
            causeway(&[
                "lab",
                "export",
                "--name",
                &self.name,
                cluster,
                service,
                "--unexport",
            ]),
            "lab export --unexport",
        );
    }

    /// Writes `yaml` as manifest `file` of `cluster`, whole (then renamed),
    /// as `kubectl apply` would change the cluster's API.
    pub fn write_manifest(&self, cluster: &str, file: &str, yaml: &str) {
        let dir = format!(
            "/run/causeway/lab/{}/clusters/{cluster}/manifests",
            self.name
        );
        let tmp = format!("{dir}/{file}.tmp");
        std::fs::write(&tmp, yaml).expect("write a manifest");
        std::fs::rename(&tmp, format!("{dir}/{file}")).expect("write a manifest");
    }

    /// The document of kind `kind` in manifest `file` of `cluster`.
    pub fn manifest_document(&self, cluster: &str, file: &str, kind: &str) -> String {
        let path = format!(
            "/run/causeway/lab/{}/clusters/{cluster}/manifests/{file}",
            self.name
        );
        let text = std::fs::read_to_string(&path).expect("read a manifest");
        text.split("---\n")
            .find(|d| d.contains(&format!("kind: {kind}\n")))
            .unwrap_or_else(|| panic!("no {kind} in {path}"))
            .to_owned()
    }

    /// `causeway lab status -o json`
    pub fn status(&self) -> Value {
        let out = ok(
            causeway(&["lab", "status", "--name", &self.name, "-o", "json"]),
            "lab status",
        );
        serde_json::from_str(&out).expect("status is JSON")
    }

    /// The node of `cluster`'s active gateway, from `lab status`.
    pub fn active_gateway(&self, cluster: &str) -> String {
        self.status()["active_gateways"][cluster]
            .as_str()
            .unwrap_or_else(|| panic!("cluster {cluster} has no active gateway"))
            .to_owned()
    }

    /// Restarts `cluster`'s active gateway (SIGKILL, then started again at
    /// once) while `a/client-0` keeps requesting `url`, and checks what a
    /// restart must leave alone (settled decision 5): the same candidate
    /// stays active, no request fails, and the tunnel routes, the tunnel
    /// address and the gateway's nftables table are the same afterwards.
    pub fn assert_restart_changes_nothing(&self, cluster: &str, url: &str) {
        let active = self.active_gateway(cluster);
        let target = format!("{cluster}/{active}");
        let snapshot = || {
            let script = "ip route show proto 202; ip addr show causeway0 | grep inet; nft -j list table ip causeway-gateway";
            ok(self.exec(&target, &["sh", "-c", script]), "kernel state")
        };
        let before = snapshot();
        let (bin, lab, url) = (causeway_bin(), self.name.clone(), url.to_owned());
        let requests = std::thread::spawn(move || {
            (0..30)
                .map(|_| {
                    let out = Command::new(&bin)
                        .args(["lab", "exec", "--name", &lab, "a/client-0", "--"])
                        .args([
                            "curl",
                            "-s",
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code}",
                            "--max-time",
                            "5",
                            &url,
                        ])
                        .output()
                        .expect("curl");
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    String::from_utf8_lossy(&out.stdout).into_owned()
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        ok(
            causeway(&["lab", "restart", "--name", &self.name, &target]),
            "lab restart",
        );
        let codes = requests.join().expect("request loop");
        assert!(
            codes.iter().all(|c| c == "200"),
            "a request failed across the restart: {codes:?}"
        );
        assert_eq!(
            self.active_gateway(cluster),
            active,
            "a restart within the TTL is not a failover"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert_eq!(
            snapshot(),
            before,
            "routes, tunnel address and nftables table changed across the restart"
        );
    }

    /// The namespace prefix of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("cw.{}.", self.name)
    }

    /// `causeway lab down`, checked.
    pub fn down(&self) {
        ok(causeway(&["lab", "down", "--name", &self.name]), "lab down");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = causeway(&["lab", "down", "--name", &self.name]);
    }
}

/// Waits (bounded: `secs`) until `probe` gives a value; fails the test
/// with `what` when it never does.
pub fn within<T>(secs: u64, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Checks that `holds` stays true for `secs`, polled every 100 ms.
pub fn consistently(secs: u64, what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        assert!(holds(), "{what}: no longer true");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The clusters an MCS ServiceImport's status lists.
pub fn import_clusters(import: &serde_yaml::Value) -> Vec<String> {
    import["status"]["clusters"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|c| c["cluster"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
