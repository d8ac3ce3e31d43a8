//! `causeway cleanup` in a network namespace holding what the daemons make
//! (the gateway's and the route agent's nftables tables, routes of
//! protocols 202 and 203, the persistent TUN `causeway0`): it removes all of
//! it, leaves other components' state alone, and a second run finds nothing.

use std::process::{Command, Output};

use causeway_tests::{causeway_bin, require_root, unique_name};

/// Deletes the namespace on drop, even when the test fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("cw-{}", unique_name(tag));
        sh("ip", &["netns", "add", &name]);
        Netns(name)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the gateway and the route agent leave on a node, plus a foreign
/// route and table that must survive.
fn make_causeway_state(ns: &Netns) {
    ns.ok("ip", &["link", "set", "lo", "up"]);
    // No dummy module on this kernel: a veth pair stands in for the node's NIC.
    ns.ok(
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
    );
    ns.ok("ip", &["link", "set", "eth1", "up"]);
    ns.ok("ip", &["addr", "add", "192.168.50.3/24", "dev", "eth0"]);
    ns.ok("ip", &["link", "set", "eth0", "up"]);
    ns.ok("ip", &["tuntap", "add", "dev", "causeway0", "mode", "tun"]);
    ns.ok("ip", &["addr", "add", "242.0.0.1/32", "dev", "causeway0"]);
    ns.ok("ip", &["link", "set", "causeway0", "up"]);
    // The gateway's: tunnel routes (metric 100) and the unreachable route
    // of its own global CIDR, protocol 202.
    for route in [
        "242.1.0.0/16 dev causeway0 src 242.0.0.1 proto 202 metric 100",
        "unreachable 242.0.0.0/16 proto 202 metric 100",
    ] {
        let args: Vec<&str> = ["route", "add"]
            .into_iter()
            .chain(route.split(' '))
            .collect();
        ns.ok("ip", &args);
    }
    // The route agent's: remote subnets via the active gateway, protocol 203.
    ns.ok(
        "ip",
        &[
            "route",
            "add",
            "242.2.0.0/16",
            "via",
            "192.168.50.2",
            "proto",
            "203",
        ],
    );
    // Someone else's route and table.
    ns.ok(
        "ip",
        &[
            "route",
            "add",
            "10.9.0.0/16",
            "via",
            "192.168.50.2",
            "proto",
            "static",
        ],
    );
    let ruleset = "table ip causeway-gateway {\n chain srcnat { type nat hook postrouting priority srcnat - 20; }\n}\n\
                   table ip causeway-node {\n chain identity { type nat hook postrouting priority srcnat - 10; }\n}\n\
                   table ip cni {\n chain postrouting { type nat hook postrouting priority srcnat; }\n}\n";
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(ruleset.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cleanup_removes_every_piece_of_causeway_state_and_nothing_else() {
    require_root();
    let ns = Netns::new("clean");
    make_causeway_state(&ns);
    let bin = causeway_bin();
    let bin = bin.to_str().expect("utf-8 path");

    let first = ns.ok(bin, &["cleanup"]);
    for want in [
        "removed nftables table ip causeway-gateway",
        "removed nftables table ip causeway-node",
        "removed interface causeway0",
        "242.1.0.0/16",
        "242.0.0.0/16",
        "242.2.0.0/16",
    ] {
        assert!(first.contains(want), "{want} missing from:\n{first}");
    }

    let tables = ns.ok("nft", &["list", "tables"]);
    assert!(!tables.contains("causeway"), "tables left:\n{tables}");
    assert!(
        tables.contains("table ip cni"),
        "a foreign table went:\n{tables}"
    );
    for proto in ["202", "203"] {
        let routes = ns.ok("ip", &["route", "show", "table", "all", "proto", proto]);
        assert!(
            routes.trim().is_empty(),
            "proto {proto} routes left:\n{routes}"
        );
    }
    let routes = ns.ok("ip", &["route", "show"]);
    assert!(
        routes.contains("10.9.0.0/16"),
        "a foreign route went:\n{routes}"
    );
    assert!(
        !ns.run("ip", &["link", "show", "causeway0"])
            .status
            .success(),
        "causeway0 is still there"
    );
    let rules = ns.ok("ip", &["rule", "show"]);
    assert_eq!(
        rules.lines().count(),
        3,
        "only the kernel's default rules:\n{rules}"
    );

    // Idempotent: nothing left, nothing to do, success.
    let second = ns.ok(bin, &["cleanup"]);
    assert!(
        second.contains("nothing of Causeway's was left"),
        "second run:\n{second}"
    );
}
