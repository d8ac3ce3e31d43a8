//! The lab API server's ClusterIP allocator. A Service manifest whose
//! `spec.clusterIP` is missing or empty (not `None`: that is headless) gets
//! one from the cluster's service CIDR, written back into its own file, as
//! an API server stores it in the object. Writing the file back keeps the
//! manifest directory the one source of truth: the cluster source, the
//! service proxies and Causeway read the ClusterIP like any other field.
//!
//! As Kubernetes (1.27 and later) does, dynamic allocation skips the lower
//! band of the range (`min(max(16, size/16), 256)` addresses), which is left
//! to Services that ask for a fixed IP (the lab's own `10.96.0.10`). An IP is
//! sticky per Service: one that was allocated before and is free gets the
//! same IP again (a writer that rewrites its file without the field does
//! not make its Service's IP move).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::Deserialize;

/// `(namespace, name)` of a Service.
pub type ServiceKey = (String, String);

/// Addresses of `cidr` that dynamic allocation never hands out: the
/// network address, the static band, and the broadcast address.
fn dynamic_range(cidr: Ipv4Net) -> (u32, u32) {
    let first = u32::from(cidr.network());
    let last = u32::from(cidr.broadcast());
    let size = last - first + 1;
    let band = (size / 16).clamp(16, 256);
    let start = first.saturating_add(band).min(last);
    (start, last.saturating_sub(1))
}

/// The IPs for `wanting` Services, in order: the one `previous` remembers
/// for it when that is free, else the lowest free address of the dynamic
/// range. `in_use` holds every ClusterIP already set. Services for which
/// the range has no address left get none.
pub fn allocate(
    cidr: Ipv4Net,
    wanting: &[ServiceKey],
    in_use: &BTreeSet<Ipv4Addr>,
    previous: &BTreeMap<ServiceKey, Ipv4Addr>,
) -> BTreeMap<ServiceKey, Ipv4Addr> {
    let (start, end) = dynamic_range(cidr);
    let mut used = in_use.clone();
    let mut out = BTreeMap::new();
    for key in wanting {
        if let Some(ip) = previous.get(key)
            && cidr.contains(ip)
            && !used.contains(ip)
        {
            used.insert(*ip);
            out.insert(key.clone(), *ip);
        }
    }
    let mut next = start;
    for key in wanting {
        if out.contains_key(key) {
            continue;
        }
        while next <= end && used.contains(&Ipv4Addr::from(next)) {
            next += 1;
        }
        if next > end {
            break;
        }
        let ip = Ipv4Addr::from(next);
        used.insert(ip);
        out.insert(key.clone(), ip);
    }
    out
}

/// What one Service document of a manifest says about its ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ClusterIp {
    /// Set (to an address, `None`, or anything else the allocator leaves alone).
    Set(Option<Ipv4Addr>),
    /// Missing or empty: wants one.
    Wanted,
}

/// The Service documents of a parsed manifest: key and ClusterIP state.
fn services(docs: &[serde_yaml::Value]) -> Vec<(usize, ServiceKey, ClusterIp)> {
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if doc["kind"].as_str() != Some("Service") || doc["apiVersion"].as_str() != Some("v1") {
            continue;
        }
        let meta = &doc["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("default").to_owned();
        let Some(name) = meta["name"].as_str() else {
            continue;
        };
        let spec = &doc["spec"];
        if spec["type"].as_str() == Some("ExternalName") {
            continue;
        }
        let ip = match spec["clusterIP"].as_str() {
            None | Some("") => ClusterIp::Wanted,
            Some(s) => ClusterIp::Set(s.parse().ok()),
        };
        out.push((i, (ns, name.to_owned()), ip));
    }
    out
}

/// The allocator over one manifest directory.
#[derive(Debug)]
pub struct Allocator {
    dir: PathBuf,
    cidr: Ipv4Net,
    /// What it handed out, by Service (stickiness).
    given: BTreeMap<ServiceKey, Ipv4Addr>,
}

impl Allocator {
    /// An allocator for `dir` over the service CIDR `cidr`.
    pub fn new(dir: PathBuf, cidr: Ipv4Net) -> Self {
        Allocator {
            dir,
            cidr,
            given: BTreeMap::new(),
        }
    }

    /// Gives every Service manifest under the directory that lacks a
    /// ClusterIP one, rewriting its file (whole, then renamed). Returns the
    /// allocations made. A file that changed while it was being rewritten
    /// is left for the next pass.
    pub fn run(&mut self) -> Result<BTreeMap<ServiceKey, Ipv4Addr>> {
        let mut files = Vec::new();
        for path in manifest_files(&self.dir)? {
            let Ok(text) = fs::read_to_string(&path) else {
                continue; // vanished
            };
            let mut docs = Vec::new();
            let mut ok = true;
            for de in serde_yaml::Deserializer::from_str(&text) {
                match serde_yaml::Value::deserialize(de) {
                    Ok(v) if v.is_null() => {}
                    Ok(v) => docs.push(v),
                    Err(_) => ok = false,
                }
            }
            if ok {
                files.push((path, text, docs));
            }
        }
        let mut in_use = BTreeSet::new();
        let mut wanting = Vec::new();
        for (_, _, docs) in &files {
            for (_, key, ip) in services(docs) {
                match ip {
                    ClusterIp::Set(Some(ip)) => {
                        in_use.insert(ip);
                    }
                    ClusterIp::Set(None) => {}
                    ClusterIp::Wanted => wanting.push(key),
                }
            }
        }
        if wanting.is_empty() {
            return Ok(BTreeMap::new());
        }
        let given = allocate(self.cidr, &wanting, &in_use, &self.given);
        let mut done = BTreeMap::new();
        for (path, text, mut docs) in files {
            let mut changed = false;
            for (i, key, ip) in services(&docs) {
                let (ClusterIp::Wanted, Some(addr)) = (ip, given.get(&key)) else {
                    continue;
                };
                let spec = &mut docs[i]["spec"];
                if !spec.is_mapping() {
                    *spec = serde_yaml::Value::Mapping(Default::default());
                }
                spec["clusterIP"] = addr.to_string().into();
                spec["clusterIPs"] = serde_yaml::Value::Sequence(vec![addr.to_string().into()]);
                changed = true;
                done.insert(key, *addr);
            }
            if changed {
                let mut out = String::new();
                for d in &docs {
                    out.push_str("---\n");
                    out.push_str(&serde_yaml::to_string(d)?);
                }
                // Only if nobody rewrote it meanwhile (a small window remains,
                // as with any read-modify-write without an API server).
                if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    continue;
                }
                write_atomically(&path, &out)?;
            }
        }
        for (k, ip) in &done {
            tracing::info!(namespace = %k.0, service = %k.1, cluster_ip = %ip, "allocated a ClusterIP");
        }
        self.given.extend(done.clone());
        Ok(done)
    }
}

/// Writes `path` through a hidden temporary file (which the cluster source
/// skips) and a rename.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.allocating"));
    fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("rename {} into place", tmp.display()))
}

/// Every manifest file under `dir`, as the cluster source reads them.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if d != dir && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", d.display())),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) if [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e)) => {
                    out.push(path)
                }
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ServiceKey {
        ("default".into(), n.into())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_table() {
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let small: Ipv4Net = "10.0.0.0/28".parse().unwrap();
        struct Case {
            what: &'static str,
            cidr: Ipv4Net,
            wanting: Vec<ServiceKey>,
            in_use: Vec<&'static str>,
            previous: Vec<(&'static str, &'static str)>,
            want: Vec<(&'static str, &'static str)>,
        }
        let cases = vec![
            Case {
                what: "first dynamic address is above the static band",
                cidr,
                wanting: vec![key("a")],
                in_use: vec!["10.96.0.10"],
                previous: vec![],
                want: vec![("a", "10.96.1.0")],
            },
            Case {
                what: "addresses in use are skipped",
                cidr,
                wanting: vec![key("a"), key("b")],
                in_use: vec!["10.96.1.0", "10.96.1.2"],
                previous: vec![],
                want: vec![("a", "10.96.1.1"), ("b", "10.96.1.3")],
            },
            Case {
                what: "a Service gets its previous IP back when free",
                cidr,
                wanting: vec![key("a"), key("b")],
                in_use: vec![],
                previous: vec![("b", "10.96.1.0"), ("a", "10.96.1.7")],
                want: vec![("a", "10.96.1.7"), ("b", "10.96.1.0")],
            },
            Case {
                what: "a previous IP taken meanwhile is not reused",
                cidr,
                wanting: vec![key("a")],
                in_use: vec!["10.96.1.7"],
                previous: vec![("a", "10.96.1.7")],
                want: vec![("a", "10.96.1.0")],
            },
            Case {
                what: "a full range hands out nothing more",
                cidr: small,
                // /28: 16 addresses, band 16: nothing is dynamic.
                wanting: vec![key("a")],
                in_use: vec![],
                previous: vec![],
                want: vec![],
            },
        ];
        for c in cases {
            let in_use = c.in_use.iter().map(|s| ip(s)).collect();
            let previous = c.previous.iter().map(|(k, v)| (key(k), ip(v))).collect();
            let want: BTreeMap<_, _> = c.want.iter().map(|(k, v)| (key(k), ip(v))).collect();
            assert_eq!(
                allocate(c.cidr, &c.wanting, &in_use, &previous),
                want,
                "{}",
                c.what
            );
        }
    }

    #[test]
    fn files_get_their_cluster_ip_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("causeway-imports");
        fs::create_dir(&sub).unwrap();
        fs::write(
            dir.path().join("fixed.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: fixed}\nspec:\n  clusterIP: 10.96.1.0\n",
        )
        .unwrap();
        fs::write(
            sub.join("derived.yaml"),
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: derived, namespace: ns}\nspec:\n  ports: [{port: 42}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: headless}\nspec: {clusterIP: None}\n",
        )
        .unwrap();
        let mut a = Allocator::new(dir.path().to_owned(), "10.96.0.0/12".parse().unwrap());
        let done = a.run().unwrap();
        assert_eq!(
            done,
            BTreeMap::from([(("ns".into(), "derived".into()), ip("10.96.1.1"))])
        );
        let text = fs::read_to_string(sub.join("derived.yaml")).unwrap();
        let docs = causeway_api::source::parse_manifests(&text).unwrap();
        assert_eq!(docs.len(), 2);
        assert!(text.contains("clusterIP: 10.96.1.1"), "{text}");
        assert!(text.contains("clusterIP: None"), "{text}");
        // Nothing more to do, and no temporary file left.
        assert!(a.run().unwrap().is_empty());
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
        // A writer that drops the field gets the same IP back.
        fs::write(
            sub.join("derived.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: derived, namespace: ns}\nspec:\n  ports: [{port: 42}]\n",
        )
        .unwrap();
        assert_eq!(
            a.run().unwrap().values().copied().collect::<Vec<_>>(),
            [ip("10.96.1.1")]
        );
    }
}
