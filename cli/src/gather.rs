//! `causeway gather`: everything a bug report needs, in one tarball. For
//! every node: Causeway's logs, its nftables tables (and the whole ruleset,
//! since another component's NAT chain is a common culprit), addresses,
//! routes and rules, WireGuard status with public keys only, conntrack
//! counts and the sysctls the datapath depends on; each cluster's store
//! records and manifests; and the broker's records.
//!
//! Secrets never leave: private keys and broker credentials are not
//! collected, and every collected file is scrubbed of the lab's secret
//! values ([`redact`]) in case a log or a command printed one.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use base64::Engine;
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::lab::plan::{ETCD_PORT, LabName};
use crate::netns;
use crate::verify::labkit::LabView;

/// What replaces a secret value.
pub const REDACTED: &str = "[redacted]";

/// Flags of `causeway gather`.
#[derive(clap::Args, Debug)]
pub struct GatherArgs {
    /// Gather from this lab.
    #[arg(long, env = "CAUSEWAY_LAB")]
    pub lab: Option<LabName>,
    /// The tarball to write (gzip-compressed tar).
    #[arg(long)]
    pub out: PathBuf,
}

/// One file of the tarball.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub bytes: Vec<u8>,
}

impl Entry {
    fn new(path: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            bytes: bytes.into(),
        }
    }
}

/// The secret values found in a file: all of a plain file (a key, a
/// password), or the string values under a JSON object's key, password,
/// token or secret fields. A WireGuard key (32 bytes in base64) also counts
/// in hex, as UAPI writes it.
pub fn secrets_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => collect_json_secrets(&value, false, &mut out),
        _ => {
            let t = text.trim();
            if !t.is_empty() {
                out.insert(t.to_owned());
            }
        }
    }
    let hex: Vec<String> = out
        .iter()
        .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .filter(|b| b.len() == 32)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .collect();
    out.extend(hex);
    // Too short to be a secret, and would shred every file.
    out.retain(|s| s.len() >= 8);
    out
}

fn collect_json_secrets(value: &serde_json::Value, secret: bool, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::String(s) if secret => {
            out.insert(s.clone());
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let k = k.to_ascii_lowercase();
                let is_secret = secret
                    || ["password", "token", "secret", "key", "cert"]
                        .iter()
                        .any(|w| k.contains(w));
                collect_json_secrets(v, is_secret, out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                collect_json_secrets(v, secret, out);
            }
        }
        _ => {}
    }
}

/// `text` with every secret value replaced by [`REDACTED`], and any
/// `private_key=` or `PrivateKey =` value (UAPI, wg-quick) too.
pub fn redact(text: &str, secrets: &BTreeSet<String>) -> String {
    let mut out = text.to_owned();
    // Longest first, so a secret that contains another goes whole.
    let mut ordered: Vec<&String> = secrets.iter().collect();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in ordered {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out.lines()
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            for marker in [
                "private_key=",
                "privatekey =",
                "privatekey=",
                "private key:",
            ] {
                if let Some(at) = lower.find(marker) {
                    let value = line[at + marker.len()..].trim();
                    if !value.is_empty() && value != "(hidden)" && value != REDACTED {
                        return format!(
                            "{}{} {REDACTED}",
                            &line[..at],
                            &line[at..at + marker.len()]
                        );
                    }
                }
            }
            line.to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

/// Every secret of lab `dir`: the files `causeway join` wrote for each
/// cluster and the broker's root password.
fn lab_secrets(view: &LabView) -> BTreeSet<String> {
    let mut files: Vec<PathBuf> = vec![view.state.dir().join("broker-root-password")];
    for c in &view.state.plan.clusters {
        if let Ok(dir) = fs::read_dir(view.state.secrets_dir(&c.name)) {
            files.extend(dir.filter_map(|e| Some(e.ok()?.path())));
        }
    }
    let mut out = BTreeSet::new();
    for f in files {
        if let Ok(text) = fs::read_to_string(&f) {
            // cluster.json holds ids and CIDRs, which are no secret.
            if f.file_name().is_some_and(|n| n == "cluster.json") {
                continue;
            }
            out.extend(secrets_in(&text));
        }
    }
    out
}

/// The commands run on every node, each with the file it fills.
/// `wg show` (not `wg showconf` or `dump`) prints private keys as `(hidden)`.
const NODE_COMMANDS: &[(&str, &[&str])] = &[
    ("ip-addr.txt", &["ip", "-d", "addr", "show"]),
    ("ip-route.txt", &["ip", "route", "show", "table", "all"]),
    ("ip-rule.txt", &["ip", "rule", "show"]),
    ("nft-tables.txt", &["nft", "list", "tables"]),
    ("nft-ruleset.txt", &["nft", "list", "ruleset"]),
    ("wireguard.txt", &["wg", "show", "all"]),
    ("conntrack-count.txt", &["conntrack", "-C"]),
    ("conntrack-stats.txt", &["conntrack", "-S"]),
];

/// Sysctls the datapath depends on, read inside the node's namespace.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/rp_filter",
    "net/ipv4/conf/default/rp_filter",
    "net/ipv4/conf/eth0/rp_filter",
    "net/ipv4/ip_local_port_range",
    "net/netfilter/nf_conntrack_count",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_time_wait",
];

/// Runs `cmd` in this thread's namespace; its output, or why there is none.
fn capture(cmd: &[&str]) -> Vec<u8> {
    match Command::new(cmd[0]).args(&cmd[1..]).output() {
        Ok(out) => {
            let mut bytes = format!("$ {}\n", cmd.join(" ")).into_bytes();
            bytes.extend_from_slice(&out.stdout);
            if !out.stderr.is_empty() {
                bytes.extend_from_slice(b"\n[stderr]\n");
                bytes.extend_from_slice(&out.stderr);
            }
            if !out.status.success() {
                bytes.extend_from_slice(format!("\n[exit status {}]\n", out.status).as_bytes());
            }
            bytes
        }
        Err(e) => format!("$ {}\ncould not run: {e}\n", cmd.join(" ")).into_bytes(),
    }
}

/// Causeway's own nftables tables on this node, each listed in full.
fn causeway_tables() -> Vec<u8> {
    let listing = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for line in listing.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["table", family, name] = parts[..]
            && name.contains("causeway")
        {
            out.extend(capture(&["nft", "list", "table", family, name]));
            out.push(b'\n');
        }
    }
    if out.is_empty() {
        out.extend_from_slice(b"no Causeway table on this node\n");
    }
    out
}

/// Everything one node tells, gathered inside its namespace.
fn node_entries(netns: &str, prefix: &str, gateway: bool) -> Result<Vec<Entry>> {
    let dir = prefix.to_owned();
    let prefix = prefix.to_owned();
    let mut entries = netns::within(netns, move || {
        let mut entries: Vec<Entry> = NODE_COMMANDS
            .iter()
            .map(|(file, cmd)| Entry::new(format!("{prefix}/{file}"), capture(cmd)))
            .collect();
        entries.push(Entry::new(
            format!("{prefix}/nft-causeway.txt"),
            causeway_tables(),
        ));
        let sysctls: String = SYSCTLS
            .iter()
            .map(|key| {
                let value = fs::read_to_string(format!("/proc/sys/{key}"))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                format!("{} = {value}\n", key.replace('/', "."))
            })
            .collect();
        entries.push(Entry::new(format!("{prefix}/sysctl.txt"), sysctls));
        Ok(entries)
    })?;
    if gateway {
        // The embedded WireGuard is invisible to `wg`: its peers, handshakes
        // and bytes are in the gateway's metrics.
        let metrics = crate::topology::fetch_metrics(netns)
            .unwrap_or_else(|e| format!("the gateway's /metrics did not answer: {e:#}\n"));
        entries.push(Entry::new(format!("{dir}/gateway-metrics.txt"), metrics));
    }
    Ok(entries)
}

/// Records as pretty JSON: each record's envelope form.
fn records_json(records: &[causeway_api::records::AnyRecord]) -> Vec<u8> {
    let values: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "kind": format!("{:?}", r.kind()),
                "cluster": r.owner().as_str(),
                "name": r.name(),
                "record": match r {
                    causeway_api::records::AnyRecord::Cluster(x) => serde_json::to_value(x),
                    causeway_api::records::AnyRecord::Endpoint(x) => serde_json::to_value(x),
                    causeway_api::records::AnyRecord::ServiceImport(x) => serde_json::to_value(x),
                    causeway_api::records::AnyRecord::ConnectionStatus(x) => serde_json::to_value(x),
                }.unwrap_or_default(),
            })
        })
        .collect();
    serde_json::to_vec_pretty(&values).unwrap_or_default()
}

/// The broker's records, read with the first cluster's credentials from
/// inside the broker's namespace (the credentials never reach the tarball).
fn broker_records(view: &LabView) -> Result<Vec<u8>> {
    let Some(first) = view.state.plan.clusters.first() else {
        bail!("the lab has no cluster");
    };
    let file = view.state.secrets_dir(&first.name).join("broker.json");
    let broker = crate::broker::BrokerFile::load(&file)?;
    let records = crate::netns::block_on(&view.state.plan.wan.broker_netns, move || async move {
        let mut all = Vec::new();
        for kind in [
            causeway_api::records::Kind::Cluster,
            causeway_api::records::Kind::Endpoint,
            causeway_api::records::Kind::ServiceImport,
            causeway_api::records::Kind::ConnectionStatus,
        ] {
            all.extend(crate::show::list(&broker, kind).await?);
        }
        Ok(all)
    })?;
    Ok(records_json(&records))
}

/// Every file of lab `name`'s tarball, secrets removed.
pub fn lab_entries(name: &LabName) -> Result<Vec<Entry>> {
    let view = LabView::load(name)?;
    let secrets = lab_secrets(&view);
    let root = format!("causeway-gather-{name}");
    let mut entries = vec![Entry::new(
        format!("{root}/README.txt"),
        format!(
            "causeway gather of lab {name}\n\n\
             nodes/CLUSTER-NODE/   addresses, routes, rules, nftables (Causeway's tables and the whole\n\
             \x20                     ruleset), WireGuard (`wg show`: public keys only; the embedded\n\
             \x20                     backend's peers are in gateway-metrics.txt), conntrack, sysctls\n\
             logs/                 every lab daemon's log\n\
             clusters/CLUSTER/     the cluster's store records and manifests\n\
             broker/records.json   the broker's records\n\n\
             Private keys and broker credentials are not collected; any secret value\n\
             of the lab found in a collected file is replaced by {REDACTED}.\n"
        ),
    )];
    let status = crate::lab::status(name)?;
    entries.push(Entry::new(
        format!("{root}/lab-status.json"),
        serde_json::to_vec_pretty(&status)?,
    ));
    for c in &view.state.plan.clusters {
        for n in &c.nodes {
            let prefix = format!("{root}/nodes/{}-{}", c.name, n.name);
            entries.extend(node_entries(&n.netns, &prefix, n.is_gateway_candidate())?);
        }
        let records = view.records.get(&c.name).cloned().unwrap_or_default();
        entries.push(Entry::new(
            format!("{root}/clusters/{}/store-records.json", c.name),
            records_json(&records),
        ));
        if let Ok(dir) = fs::read_dir(view.state.manifests_dir(&c.name)) {
            for e in dir.filter_map(|e| e.ok()) {
                let file = e.file_name().to_string_lossy().into_owned();
                if let Ok(bytes) = fs::read(e.path()) {
                    entries.push(Entry::new(
                        format!("{root}/clusters/{}/manifests/{file}", c.name),
                        bytes,
                    ));
                }
            }
        }
        let store = format!("http://{}:{ETCD_PORT}", c.control_plane.ip);
        entries.push(Entry::new(
            format!("{root}/clusters/{}/store.txt", c.name),
            format!("the cluster's store: {store}\n"),
        ));
    }
    let broker = broker_records(&view).unwrap_or_else(|e| {
        format!("the broker's records could not be read: {e:#}\n").into_bytes()
    });
    entries.push(Entry::new(format!("{root}/broker/records.json"), broker));
    if let Ok(dir) = fs::read_dir(view.state.logs_dir()) {
        let mut logs: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        logs.sort();
        for log in logs {
            let file = log
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if let Ok(bytes) = fs::read(&log) {
                entries.push(Entry::new(format!("{root}/logs/{file}"), bytes));
            }
        }
    }
    for e in &mut entries {
        let text = String::from_utf8_lossy(&e.bytes);
        e.bytes = redact(&text, &secrets).into_bytes();
    }
    Ok(entries)
}

/// Writes `entries` as a gzip-compressed tarball at `out`.
pub fn write_tarball(entries: &[Entry], out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(e.bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(now);
        header.set_cksum();
        tar.append_data(&mut header, &e.path, e.bytes.as_slice())
            .with_context(|| format!("add {} to the tarball", e.path))?;
    }
    let gz = tar.into_inner().context("finish the tarball")?;
    gz.finish()
        .context("finish the gzip stream")?
        .flush()
        .context("write the tarball")?;
    Ok(())
}

/// `causeway gather`.
pub fn command(args: GatherArgs) -> Result<()> {
    let Some(lab) = &args.lab else {
        bail!(
            "not yet: on Kubernetes gather would read the gateway and route-agent pods, which is not built; use --lab NAME"
        );
    };
    let entries = lab_entries(lab)?;
    write_tarball(&entries, &args.out)?;
    println!(
        "wrote {} files to {} (private keys and broker credentials left out)",
        entries.len(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "wOaM3mX1bWm1cO0kS0l7zL8w1mYbO9Z0M8bJbW6l3Xk=";

    #[test]
    fn secrets_are_whole_plain_files_and_secret_json_fields() {
        let plain = secrets_in(&format!("{KEY}\n"));
        assert!(plain.contains(KEY));
        let hex: String = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(plain.contains(&hex), "the key's hex form (UAPI) counts too");
        let json = secrets_in(
            r#"{"endpoints": ["http://198.51.100.2:2379"], "username": "causeway-cluster-a", "password": "KRL87mHQyVxyksEE"}"#,
        );
        assert_eq!(json, BTreeSet::from(["KRL87mHQyVxyksEE".to_owned()]));
    }

    #[test]
    fn redact_removes_secrets_and_private_key_lines() {
        let secrets = secrets_in(KEY);
        let text = format!(
            "peer up with key {KEY}\nprivate_key=0011\n  private key: (hidden)\nPrivateKey = abc\nfine\n"
        );
        let out = redact(&text, &secrets);
        assert!(!out.contains(KEY), "{out}");
        assert!(out.contains("peer up with key [redacted]"));
        assert!(out.contains("private_key= [redacted]"), "{out}");
        assert!(out.contains("private key: (hidden)"), "{out}");
        assert!(out.contains("PrivateKey = [redacted]"), "{out}");
        assert!(out.ends_with("fine\n"));
    }

    #[test]
    fn a_tarball_holds_every_entry() {
        let dir = std::env::temp_dir().join(format!("cw-gather-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("g.tar.gz");
        let entries = vec![
            Entry::new("g/a.txt", "one\n"),
            Entry::new("g/nodes/b.txt", "two\n"),
        ];
        write_tarball(&entries, &out).unwrap();
        let gz = flate2::read::GzDecoder::new(fs::File::open(&out).unwrap());
        let mut archive = tar::Archive::new(gz);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut e, &mut body).unwrap();
            seen.push((e.path().unwrap().display().to_string(), body));
        }
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            seen,
            [
                ("g/a.txt".to_owned(), "one\n".to_owned()),
                ("g/nodes/b.txt".to_owned(), "two\n".to_owned())
            ]
        );
    }
}
