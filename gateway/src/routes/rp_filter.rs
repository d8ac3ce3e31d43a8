//! Reverse-path filtering on the interfaces the inter-cluster path uses
//! (`sysctl net.ipv4.conf.{all,IFACE}.rp_filter`).
//!
//! Strict mode (1) drops a packet whose source the kernel would not route
//! back out of the interface it came in on; remote subnets arrive on the
//! tunnel or the node network but may be routed back another way (Calico's
//! per-pod routes, asymmetric paths across a failover). Loose mode (2) only
//! asks that the source be routable at all. The kernel uses the larger of
//! `all` and the interface's value, so both are loosened. A value of 0
//! (off) is left as it is: loosening never tightens.
//!
//! The files are read and written under `/proc/sys/net/ipv4/conf` of the
//! calling thread's network namespace.

use std::path::{Path, PathBuf};

use super::RouteError;

/// Where the IPv4 per-interface sysctls live.
pub const CONF_DIR: &str = "/proc/sys/net/ipv4/conf";

/// Strict reverse-path filtering.
pub const STRICT: u8 = 1;
/// Loose reverse-path filtering.
pub const LOOSE: u8 = 2;

/// The value to write for a current value, or `None` to leave it: strict
/// becomes loose; off and loose stay.
pub fn loosened(current: u8) -> Option<u8> {
    (current == STRICT).then_some(LOOSE)
}

/// One sysctl that was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loosened {
    /// `all` or the interface name.
    pub scope: String,
    /// The value before.
    pub before: u8,
    /// The value written.
    pub after: u8,
}

/// Loosens `rp_filter` for `all` and each of `interfaces` in the calling
/// thread's namespace; returns what it changed (nothing on a second run).
pub fn loosen<S: AsRef<str>>(interfaces: &[S]) -> Result<Vec<Loosened>, RouteError> {
    loosen_under(Path::new(CONF_DIR), interfaces)
}

/// [`loosen`] with the `conf` directory given (tests use a temporary one).
pub fn loosen_under<S: AsRef<str>>(
    conf_dir: &Path,
    interfaces: &[S],
) -> Result<Vec<Loosened>, RouteError> {
    let mut scopes = vec!["all"];
    scopes.extend(interfaces.iter().map(AsRef::as_ref));
    let mut changed = Vec::new();
    for scope in scopes {
        let path = conf_dir.join(scope).join("rp_filter");
        let before = read(&path)?;
        if let Some(after) = loosened(before) {
            std::fs::write(&path, format!("{after}\n")).map_err(|source| RouteError::Sysctl {
                op: "write",
                path: path.clone(),
                source,
            })?;
            tracing::info!(scope, before, after, "loosened rp_filter");
            changed.push(Loosened {
                scope: scope.to_owned(),
                before,
                after,
            });
        }
    }
    Ok(changed)
}

/// The current `rp_filter` value of `scope` (`all` or an interface).
pub fn current(conf_dir: &Path, scope: &str) -> Result<u8, RouteError> {
    read(&conf_dir.join(scope).join("rp_filter"))
}

fn read(path: &PathBuf) -> Result<u8, RouteError> {
    let text = std::fs::read_to_string(path).map_err(|source| RouteError::Sysctl {
        op: "read",
        path: path.clone(),
        source,
    })?;
    match text.trim().parse::<u8>() {
        Ok(v @ 0..=2) => Ok(v),
        _ => Err(RouteError::SysctlValue {
            path: path.clone(),
            value: text.trim().to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loosening_never_tightens() {
        assert_eq!(loosened(0), None);
        assert_eq!(loosened(1), Some(2));
        assert_eq!(loosened(2), None);
    }

    #[test]
    fn loosens_all_and_the_interfaces_once() {
        let dir = tempfile::tempdir().unwrap();
        for (scope, value) in [("all", "1"), ("eth0", "1"), ("cw0", "0"), ("lo", "1")] {
            std::fs::create_dir(dir.path().join(scope)).unwrap();
            std::fs::write(
                dir.path().join(scope).join("rp_filter"),
                format!("{value}\n"),
            )
            .unwrap();
        }
        let changed = loosen_under(dir.path(), &["eth0", "cw0"]).unwrap();
        let scopes: Vec<&str> = changed.iter().map(|c| c.scope.as_str()).collect();
        assert_eq!(scopes, ["all", "eth0"]);
        assert_eq!(current(dir.path(), "all").unwrap(), 2);
        assert_eq!(current(dir.path(), "eth0").unwrap(), 2);
        assert_eq!(current(dir.path(), "cw0").unwrap(), 0);
        assert_eq!(current(dir.path(), "lo").unwrap(), 1, "not asked for");
        assert!(
            loosen_under(dir.path(), &["eth0", "cw0"])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_missing_interface_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("all")).unwrap();
        std::fs::write(dir.path().join("all/rp_filter"), "0\n").unwrap();
        let err = loosen_under(dir.path(), &["nope0"]).unwrap_err();
        assert!(err.to_string().contains("nope0/rp_filter"), "{err}");
    }
}
