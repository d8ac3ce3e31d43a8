//! The few link operations a cable needs, through iproute2's `ip` (which runs
//! in the calling thread's network namespace, as a child inherits it). The
//! kernel creates TUN devices by ioctl only; `ip tuntap` does that without
//! unsafe code here.

use std::process::Command;

use crate::Error;

/// What the cable needs to know about a link (`ip -j -d link show dev NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// `linkinfo.info_kind`: `tun`, `wireguard`, ...
    pub kind: Option<String>,
    /// For a TUN: created multi-queue (boringtun attaches only to those).
    pub multi_queue: bool,
    /// For a TUN: persistent (outlives the process that holds it).
    pub persistent: bool,
}

fn run(args: &[&str]) -> Result<std::process::Output, Error> {
    Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            command: format!("ip {}", args.join(" ")),
            detail: format!("cannot run `ip` ({e}); install iproute2"),
        })
}

fn check(args: &[&str]) -> Result<(), Error> {
    let out = run(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Parses one link object of `ip -j -d link show`.
pub fn parse_link(json: &str) -> Option<LinkInfo> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let link = value.as_array()?.first()?;
    let info = link.get("linkinfo");
    let data = info.and_then(|i| i.get("info_data"));
    let flag = |name: &str| {
        data.and_then(|d| d.get(name))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    Some(LinkInfo {
        mtu: u32::try_from(link.get("mtu")?.as_u64()?).ok()?,
        up: link
            .get("flags")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|flags| flags.iter().any(|f| f == "UP")),
        kind: info
            .and_then(|i| i.get("info_kind"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        multi_queue: flag("multi_queue"),
        persistent: flag("persist"),
    })
}

/// The link called `name`, or `None` (`ip -j -d link show dev NAME`).
pub fn show(name: &str) -> Result<Option<LinkInfo>, Error> {
    let args = ["-j", "-d", "link", "show", "dev", name];
    let out = run(&args)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("does not exist") {
            return Ok(None);
        }
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            detail: stderr.trim().to_owned(),
        });
    }
    parse_link(&String::from_utf8_lossy(&out.stdout))
        .map(Some)
        .ok_or_else(|| Error::Command {
            command: format!("ip {}", args.join(" ")),
            detail: "unexpected output".into(),
        })
}

/// Creates a persistent multi-queue TUN (`ip tuntap add dev NAME mode tun multi_queue`).
pub fn add_persistent_tun(name: &str) -> Result<(), Error> {
    check(&["tuntap", "add", "dev", name, "mode", "tun", "multi_queue"])
}

/// Sets the MTU and brings the link up (`ip link set dev NAME mtu M up`).
pub fn set_mtu_up(name: &str, mtu: u32) -> Result<(), Error> {
    check(&["link", "set", "dev", name, "mtu", &mtu.to_string(), "up"])
}

/// Deletes the link (`ip link del dev NAME`); a missing link is success.
pub fn delete(name: &str) -> Result<(), Error> {
    if show(name)?.is_none() {
        return Ok(());
    }
    check(&["link", "del", "dev", name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_persistent_tun() {
        let json = r#"[{"ifindex":2,"ifname":"wgt0","flags":["POINTOPOINT","MULTICAST","NOARP","UP","LOWER_UP"],"mtu":1440,"qdisc":"noop","operstate":"DOWN","linkinfo":{"info_kind":"tun","info_data":{"type":"tun","pi":false,"vnet_hdr":false,"multi_queue":true,"numqueues":0,"numdisabled":0,"persist":true}}}]"#;
        assert_eq!(
            parse_link(json),
            Some(LinkInfo {
                mtu: 1440,
                up: true,
                kind: Some("tun".into()),
                multi_queue: true,
                persistent: true,
            })
        );
    }

    #[test]
    fn parses_a_plain_link() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"],"mtu":65536}]"#;
        assert_eq!(
            parse_link(json),
            Some(LinkInfo {
                mtu: 65536,
                up: false,
                kind: None,
                multi_queue: false,
                persistent: false,
            })
        );
        assert_eq!(parse_link("[]"), None);
        assert_eq!(parse_link("garbage"), None);
    }
}
