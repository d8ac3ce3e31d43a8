//! `causeway diagnose` on the lab: a healthy lab gives no failure, and each
//! check, when the thing it checks is broken on purpose, names it and says
//! what to change. One lab for all of it (a bring-up costs 20-40 s); each
//! breakage is undone before the next.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use causeway_tests::{Lab, causeway, causeway_bin, ok};
use serde_json::Value;

/// `causeway diagnose ARGS -o json` inside `target`: (findings, exit success).
fn diagnose(lab: &Lab, target: &str, args: &[&str]) -> (Vec<Value>, bool) {
    let bin = causeway_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let mut cmd = vec![bin, "diagnose"];
    cmd.extend_from_slice(args);
    cmd.extend_from_slice(&["-o", "json"]);
    let out = lab.exec(target, &cmd);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "diagnose {args:?} on {target} printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings = report["findings"].as_array().expect("findings").clone();
    let any_fail = findings.iter().any(|f| f["status"] == "fail");
    assert_eq!(
        out.status.success(),
        !any_fail,
        "the exit status says whether a check failed: {findings:#?}"
    );
    (findings, out.status.success())
}

fn with_status<'a>(findings: &'a [Value], status: &str) -> Vec<&'a Value> {
    findings.iter().filter(|f| f["status"] == status).collect()
}

/// The one finding of `status` whose `what` contains `needle`.
fn find<'a>(findings: &'a [Value], status: &str, needle: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["status"] == status && f["what"].as_str().unwrap_or("").contains(needle))
        .unwrap_or_else(|| panic!("no {status} finding about {needle:?} in {findings:#?}"))
}

fn fix(f: &Value) -> &str {
    f["fix"]
        .as_str()
        .unwrap_or_else(|| panic!("no fix in {f:#}"))
}

/// Runs `script` with `sh -c` inside `target`, which must succeed.
fn sh(lab: &Lab, target: &str, script: &str) {
    ok(lab.exec(target, &["sh", "-c", script]), script);
}

/// Waits (bounded) until `a`'s gateway reports peer b connected again.
fn wait_connected(lab: &Lab, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (findings, _) = diagnose(lab, target, &["connections"]);
        if findings.iter().all(|f| f["status"] == "ok") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "peer b did not come back within 30 s: {findings:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn diagnose_finds_what_was_broken_and_says_what_to_change() {
    let lab = Lab::up("diag", &[]);
    let a = format!("a/{}", lab.active_gateway("a"));
    let b = format!("b/{}", lab.active_gateway("b"));

    // Healthy: every family reports, nothing fails, from the active gateway.
    wait_connected(&lab, &a);
    let (findings, success) = diagnose(&lab, &a, &[]);
    assert!(success, "a healthy lab fails: {findings:#?}");
    for check in [
        "kernel",
        "cni",
        "firewall",
        "mtu",
        "conntrack",
        "connections",
    ] {
        assert!(
            findings.iter().any(|f| f["check"] == check),
            "no {check} finding: {findings:#?}"
        );
    }
    let cni = std::env::var("CAUSEWAY_TEST_CNI").unwrap_or_else(|_| "flannel".into());
    if cni == "flannel" {
        find(&findings, "ok", "CNI: Flannel");
    } else if cni == "calico" {
        find(&findings, "ok", "CNI: Calico");
    }
    find(&findings, "ok", "WireGuard udp/4500 to peer b");
    find(&findings, "ok", "health udp/51830");
    find(&findings, "ok", "1440-byte packets with DF pass");
    find(&findings, "ok", "peer b: connected");
    // A worker has no gateway: the tunnel checks say where to run, nothing fails.
    let (findings, success) = diagnose(&lab, "a/node-2", &[]);
    assert!(success, "a worker fails: {findings:#?}");

    // Strict rp_filter on the tunnel interface.
    sh(&lab, &a, "sysctl -qw net.ipv4.conf.causeway0.rp_filter=1");
    let (findings, success) = diagnose(&lab, &a, &["kernel"]);
    assert!(!success);
    let f = find(&findings, "fail", "rp_filter on causeway0");
    assert!(
        fix(f).contains("sysctl -w net.ipv4.conf.causeway0.rp_filter=2"),
        "{f:#}"
    );
    assert_eq!(with_status(&findings, "fail").len(), 1, "{findings:#?}");
    sh(&lab, &a, "sysctl -qw net.ipv4.conf.causeway0.rp_filter=0");

    // An underlay MTU too small for the tunnel's.
    sh(&lab, &a, "ip link set wan0 mtu 1280");
    let (findings, _) = diagnose(&lab, &a, &["mtu"]);
    let f = find(
        &findings,
        "fail",
        "tunnel MTU 1440 (causeway0) needs an underlay MTU of 1500 but wan0",
    );
    assert!(fix(f).contains("--tunnel-mtu 1220"), "{f:#}");
    let f = find(&findings, "fail", "the largest packet that passes is");
    let largest: u32 = f["what"]
        .as_str()
        .unwrap()
        .split("passes is ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size in {f:#}"));
    assert!(
        (1100..=1280).contains(&largest),
        "the probe found {largest}, not about 1220"
    );
    sh(&lab, &a, "ip link set wan0 mtu 1500");

    // A NAT chain that masquerades before Causeway's (srcnat - 30).
    sh(
        &lab,
        &a,
        "nft add table ip diag-rogue && \
         nft add chain ip diag-rogue post '{ type nat hook postrouting priority srcnat - 30; }' && \
         nft add rule ip diag-rogue post ip daddr 242.0.0.0/8 masquerade",
    );
    let (findings, success) = diagnose(&lab, &a, &["cni"]);
    assert!(!success);
    let f = find(
        &findings,
        "fail",
        "NAT chain ip diag-rogue post at postrouting srcnat - 30 (70)",
    );
    assert!(f["what"].as_str().unwrap().contains("masquerade"), "{f:#}");
    assert!(
        fix(f).contains("move chain ip diag-rogue post to priority"),
        "{f:#}"
    );
    sh(&lab, &a, "nft delete table ip diag-rogue");
    wait_connected(&lab, &a);

    // The far gateway drops the WireGuard port.
    sh(
        &lab,
        &b,
        "nft add table ip diag-drop && \
         nft add chain ip diag-drop input '{ type filter hook input priority 0; }' && \
         nft add rule ip diag-drop input udp dport 4500 drop",
    );
    let (findings, success) = diagnose(&lab, &a, &["firewall"]);
    assert!(!success);
    let f = find(&findings, "fail", "WireGuard udp/4500 to peer b");
    assert!(
        f["what"]
            .as_str()
            .unwrap()
            .contains("nothing passes the tunnel"),
        "{f:#}"
    );
    assert!(
        fix(f).contains("allow udp/4500 in both directions"),
        "{f:#}"
    );
    // The gateway itself notices within its probe interval and three losses.
    std::thread::sleep(Duration::from_secs(4));
    let (findings, _) = diagnose(&lab, &a, &["connections"]);
    let f = find(&findings, "fail", "peer b");
    assert!(fix(f).contains("diagnose firewall"), "{f:#}");
    // A gateway that restarts meanwhile never completes a handshake:
    // nothing comes back, and diagnose says to look at the far side.
    ok(
        causeway(&["lab", "restart", "--name", &lab.name, &a]),
        "lab restart",
    );
    std::thread::sleep(Duration::from_secs(3));
    let (findings, _) = diagnose(&lab, &a, &["connections"]);
    let f = find(&findings, "fail", "peer b: never completed a handshake");
    assert!(fix(f).starts_with("look at the far side"), "{f:#}");
    sh(&lab, &b, "nft delete table ip diag-drop");
    wait_connected(&lab, &a);

    // The far gateway drops the health port only (inside the tunnel).
    sh(
        &lab,
        &b,
        "nft add table ip diag-drop && \
         nft add chain ip diag-drop input '{ type filter hook input priority 0; }' && \
         nft add rule ip diag-drop input udp dport 51830 drop",
    );
    let (findings, success) = diagnose(&lab, &a, &["firewall"]);
    assert!(!success);
    find(&findings, "ok", "WireGuard udp/4500 to peer b");
    let f = find(&findings, "fail", "health udp/51830");
    assert!(fix(f).contains("allow udp/51830"), "{f:#}");
    sh(&lab, &b, "nft delete table ip diag-drop");
    wait_connected(&lab, &a);

    // Conntrack pressure, from a recorded /proc and conntrack listing (the
    // limit is per host and read-only inside a namespace).
    let status = lab.status();
    let egress = status["globalnet"]["a"]["egress_ips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no egress IP of cluster a in {status:#}"))
        .to_owned();
    let dir = TempDir(std::env::temp_dir().join(format!("{}-diag-proc", lab.name)));
    let proc = dir.0.join("proc");
    let netfilter = proc.join("sys/net/netfilter");
    std::fs::create_dir_all(&netfilter).unwrap();
    std::fs::create_dir_all(proc.join("sys/net/ipv4")).unwrap();
    for (name, value) in [
        ("nf_conntrack_count", "250000"),
        ("nf_conntrack_max", "262144"),
        ("nf_conntrack_tcp_timeout_established", "432000"),
        ("nf_conntrack_tcp_timeout_time_wait", "120"),
    ] {
        std::fs::write(netfilter.join(name), format!("{value}\n")).unwrap();
    }
    std::fs::write(
        proc.join("sys/net/ipv4/ip_local_port_range"),
        "32768\t60999\n",
    )
    .unwrap();
    let mut listing = String::new();
    for i in 0..56_000u32 {
        let (src, port) = (
            format!("10.244.{}.{}", 2 + i / 60_000, 2 + i % 250),
            1024 + i,
        );
        listing.push_str(&format!(
            "tcp      6 431999 ESTABLISHED src={src} dst=242.1.0.10 sport={port} dport=80 src=242.1.0.10 dst={egress} sport=80 dport={port} [ASSURED] mark=0 use=1\n"
        ));
    }
    let file = dir.0.join("conntrack.txt");
    std::fs::write(&file, listing).unwrap();
    let (findings, success) = diagnose(
        &lab,
        &a,
        &[
            "conntrack",
            "--proc-root",
            proc.to_str().unwrap(),
            "--conntrack-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!success);
    let f = find(
        &findings,
        "fail",
        "conntrack table: 250000 of 262144 entries",
    );
    assert!(
        fix(f).contains("net.netfilter.nf_conntrack_max=524288"),
        "{f:#}"
    );
    assert!(
        fix(f).contains("nf_conntrack_tcp_timeout_established=86400"),
        "{f:#}"
    );
    let f = find(
        &findings,
        "fail",
        &format!("SNAT ports of egress IP {egress}: 56000 of 64512 used towards 242.1.0.10:80/tcp"),
    );
    assert!(fix(f).contains("--egress-pool"), "{f:#}");
    find(&findings, "ok", "ephemeral port range: 32768-60999");

    // Everything undone: healthy again.
    let (findings, success) = diagnose(&lab, &a, &[]);
    assert!(success, "the lab is not healthy again: {findings:#?}");
    lab.down();
}
