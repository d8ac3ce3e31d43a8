//! How records map to etcd keys: `<root>/clusters/<cluster>/<kind>/<name>`,
//! so each cluster's records share one prefix that its role may write.

use crate::records::{ClusterId, Kind, RecordKey};

/// The key layout under one root prefix (default `/causeway`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    root: String,
}

impl Default for KeyLayout {
    fn default() -> Self {
        Self::new("/causeway")
    }
}

impl KeyLayout {
    /// A layout under `root` (a trailing `/` is ignored).
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_owned(),
        }
    }

    /// The root prefix, without trailing `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Prefix of everything Causeway keeps (what every cluster may read).
    pub fn root_prefix(&self) -> String {
        format!("{}/", self.root)
    }

    /// Prefix of every cluster's records.
    pub fn clusters_prefix(&self) -> String {
        format!("{}/clusters/", self.root)
    }

    /// Prefix of one cluster's records (what its role may write).
    pub fn cluster_prefix(&self, cluster: &ClusterId) -> String {
        format!("{}/clusters/{cluster}/", self.root)
    }

    /// The key of one record.
    pub fn record(&self, key: &RecordKey) -> String {
        format!(
            "{}/clusters/{}/{}/{}",
            self.root,
            key.cluster,
            key.kind.segment(),
            key.name
        )
    }

    /// The registry of joined clusters (written only by the broker admin).
    pub fn registry(&self) -> String {
        format!("{}/registry", self.root)
    }

    /// The key candidates of `election` contend for.
    pub fn election(&self, election: &str) -> String {
        format!("{}/election/{election}", self.root)
    }

    /// Parses a record key; `None` for a key outside the layout.
    pub fn parse(&self, key: &str) -> Option<RecordKey> {
        let rest = key.strip_prefix(&self.clusters_prefix())?;
        let mut parts = rest.splitn(3, '/');
        let cluster = ClusterId::new(parts.next()?).ok()?;
        let kind = Kind::from_segment(parts.next()?)?;
        let name = parts.next()?;
        if name.is_empty() {
            return None;
        }
        Some(RecordKey {
            cluster,
            kind,
            name: name.to_owned(),
        })
    }
}

/// The end of the range that holds every key starting with `prefix`
/// (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let l = KeyLayout::new("/causeway/");
        let k = RecordKey {
            cluster: ClusterId::new("a").unwrap(),
            kind: Kind::ServiceImport,
            name: "default/web".into(),
        };
        let s = l.record(&k);
        assert_eq!(s, "/causeway/clusters/a/serviceimport/default/web");
        assert_eq!(l.parse(&s), Some(k));
        for bad in [
            "/causeway/clusters/A/endpoint/a",
            "/causeway/clusters/a/bogus/a",
            "/causeway/clusters/a/endpoint/",
            "/causeway/clusters/a",
            "/other/clusters/a/endpoint/a",
            "/causeway/registry",
        ] {
            assert_eq!(l.parse(bad), None, "{bad}");
        }
        assert_eq!(
            l.cluster_prefix(&ClusterId::new("a").unwrap()),
            "/causeway/clusters/a/"
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
