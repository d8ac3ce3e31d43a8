//! Programming-at-scale benchmark: Globalnet's nftables table (verdict map,
//! one-rule service chains) against the iptables ways (one DNAT rule per
//! address via `iptables-restore`, and one `iptables` exec per rule).
//!
//! Run it through `globalnet/bench/run.sh`, which creates a network
//! namespace, runs this inside it and deletes it; it refuses to run in the
//! host's namespace. Options: `--exports N` (10000), `--endpoints K` (3),
//! `--per-rule M` (how many single `iptables` execs to time; default N,
//! 0 to skip).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use causeway_globalnet::ipam::ExportKey;
use causeway_globalnet::nft::{Applier, Family, NftCli};
use causeway_globalnet::ruleset::{
    Input, Protocol, ServiceIngress, ServicePort, element_delta, plan,
};

const CHAIN: &str = "CW-INGRESS";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let exports = opt("--exports", 10_000);
    let endpoints = opt("--endpoints", 3);
    let per_rule = opt("--per-rule", exports);

    // A fresh namespace has only loopback; the host never does. (`ip netns
    // exec` remounts /sys for the namespace it enters.)
    let links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    if links != ["lo"] {
        eprintln!(
            "refusing to run outside a fresh network namespace (links: {links:?}): use globalnet/bench/run.sh"
        );
        std::process::exit(2);
    }

    let mut rows = Rows::default();
    let cpu0 = children_cpu();
    if let Some(i) = args.iter().position(|a| a == "--dump") {
        let batch = causeway_globalnet::nft::diff(&plan(&input(exports, endpoints)), None);
        std::fs::write(
            &args[i + 1],
            causeway_globalnet::nft::render(&batch).to_string(),
        )
        .expect("write dump");
        return;
    }

    // --- nftables, Causeway's way
    let input_n = input(exports, endpoints);
    let applier = Applier::new(NftCli::new());
    rows.reset();
    let t = Instant::now();
    let p = plan(&input_n);
    let planned = t.elapsed();
    let out = applier.reconcile(&p).expect("program the table");
    let nft_full = t.elapsed();
    let s = out.batch.summary();
    rows.push((
        format!("nft: {exports} exports x {endpoints} endpoints from empty (plan + diff + one transaction)"),
        Some(nft_full),
        format!(
            "plan {:.1} ms; {} chains, {} rules, {} elements",
            ms(planned),
            s.chains_added,
            s.rules_added,
            s.elements_added
        ),
    ));

    // One more export the way the gateway adds it: the element delta
    // between the inputs, no planning, no listing.
    let input_more = input(exports + 1, endpoints);
    rows.reset();
    let t = Instant::now();
    let ops = element_delta(&input_n, &input_more).expect("same shape");
    let delta = t.elapsed();
    let out = applier
        .apply_elements(Family::Ip, &input_more.table, ops)
        .expect("add one export")
        .expect("the table is cached");
    let nft_one = t.elapsed();
    let s = out.batch.summary();
    rows.push((
        format!("nft: one more export with {exports} present (element delta + one transaction)"),
        Some(nft_one),
        format!(
            "{} elements; the delta took {:.2} ms",
            s.elements_added,
            ms(delta)
        ),
    ));

    // The same, planned in full and diffed against the last plan (what a
    // change of shape, such as a larger endpoint count, costs).
    rows.reset();
    let t = Instant::now();
    let out = applier
        .reconcile_incremental(plan(&input(exports + 2, endpoints)))
        .expect("add one export");
    let s = out.batch.summary();
    rows.push((
        format!(
            "nft: one more export with {} present (full plan + diff against last plan + one transaction)",
            exports + 1
        ),
        Some(t.elapsed()),
        format!("{} elements", s.elements_added),
    ));

    let p_two = plan(&input(exports + 3, endpoints));
    let fresh = Applier::new(NftCli::new());
    rows.reset();
    let t = Instant::now();
    fresh
        .reconcile(&p_two)
        .expect("add one export after restart");
    rows.push((
        format!(
            "nft: one more export with {} present, after restart (lists the table first)",
            exports + 2
        ),
        Some(t.elapsed()),
        String::new(),
    ));
    rows.reset();
    let t = Instant::now();
    let out = fresh.reconcile(&p_two).expect("resync");
    assert!(!out.changed());
    rows.push((
        format!(
            "nft: full resync of {} exports, nothing to change",
            exports + 3
        ),
        Some(t.elapsed()),
        String::new(),
    ));
    fresh
        .remove(p_two.family, &p_two.name)
        .expect("remove the table");

    // --- iptables, one DNAT rule per address
    let rules: Vec<String> = input_n
        .services
        .iter()
        .map(|s| dnat_rule(s.global_ip, *s.ports[0].endpoints.iter().next().unwrap()))
        .collect();
    let one_more = {
        let s = &input_more.services[exports];
        dnat_rule(s.global_ip, *s.ports[0].endpoints.iter().next().unwrap())
    };
    for (tool, save_tool) in [
        ("iptables", "iptables-restore"),
        ("iptables-legacy", "iptables-legacy-restore"),
    ] {
        let mut doc = format!("*nat\n:{CHAIN} - [0:0]\n-A PREROUTING -j {CHAIN}\n");
        for r in &rules {
            doc.push_str(&format!("-A {CHAIN} {r}\n"));
        }
        doc.push_str("COMMIT\n");
        rows.reset();
        let t = Instant::now();
        let ok = run_stdin(save_tool, &["--noflush"], &doc);
        let restore = t.elapsed();
        if !ok {
            rows.push((
                format!("{save_tool}: {exports} DNAT rules"),
                None,
                "failed (no kernel support?)".into(),
            ));
            continue;
        }
        rows.push((
            format!("{save_tool}: {exports} DNAT rules, one per address"),
            Some(restore),
            String::new(),
        ));

        rows.reset();

        let t = Instant::now();
        let exists = iptables(tool, &format!("-t nat -C {CHAIN} {one_more}"));
        assert!(!exists, "rule exists already");
        assert!(iptables(tool, &format!("-t nat -A {CHAIN} {one_more}")));
        rows.push((
            format!("{tool}: one more rule with {exports} present (check + append)"),
            Some(t.elapsed()),
            String::new(),
        ));

        if per_rule > 0 && tool == "iptables" {
            assert!(iptables(tool, &format!("-t nat -F {CHAIN}")));
            rows.reset();
            let t = Instant::now();
            for r in rules.iter().take(per_rule) {
                assert!(iptables(tool, &format!("-t nat -A {CHAIN} {r}")));
            }
            let el = t.elapsed();
            rows.push((
                format!(
                    "{tool}: {} DNAT rules, one exec per rule",
                    per_rule.min(rules.len())
                ),
                Some(el),
                String::new(),
            ));
        }
        // Leave nothing for the next tool.
        iptables(tool, &format!("-t nat -D PREROUTING -j {CHAIN}"));
        iptables(tool, &format!("-t nat -F {CHAIN}"));
        iptables(tool, &format!("-t nat -X {CHAIN}"));
    }

    eprintln!(
        "CPU time of all nft/iptables children: {:.1} s",
        children_cpu() - cpu0
    );
    println!("| operation | wall ms | CPU ms (tools) | notes |");
    println!("|---|---:|---:|---|");
    for (what, d, note, cpu) in &rows.v {
        let v = d.map_or("n/a".to_string(), |d| format!("{:.1}", ms(d)));
        println!("| {what} | {v} | {:.0} | {note} |", cpu * 1000.0);
    }
}

/// Result rows, each with the CPU its child processes used.
#[derive(Default)]
struct Rows {
    v: Vec<(String, Option<Duration>, String, f64)>,
    mark: f64,
}

impl Rows {
    fn push(&mut self, (what, wall, note): (String, Option<Duration>, String)) {
        let now = children_cpu();
        self.v.push((what, wall, note, now - self.mark));
        self.mark = now;
    }

    /// Starts the CPU count of the next row here.
    fn reset(&mut self) {
        self.mark = children_cpu();
    }
}

/// User + system seconds of waited-for children (/proc/self/stat fields 16
/// and 17, in clock ticks of 1/100 s on Linux).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // after the command name: field 3 is f[0], so field 16 is f[13]
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(13) + tick(14)) / 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn input(exports: usize, endpoints: usize) -> Input {
    let mut i = Input::new(
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
        ],
        vec!["242.1.0.0/16".parse().unwrap()],
    );
    i.egress = (2..10).map(|n| Ipv4Addr::new(242, 0, 0, n)).collect();
    let base = u32::from(Ipv4Addr::new(242, 0, 0, 16));
    let pods = u32::from(Ipv4Addr::new(10, 244, 0, 1));
    i.services = (0..exports)
        .map(|n| ServiceIngress {
            key: ExportKey::new("bench", format!("svc-{n}")),
            global_ip: Ipv4Addr::from(base + n as u32),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                endpoints: (0..endpoints)
                    .map(|e| {
                        SocketAddrV4::new(Ipv4Addr::from(pods + (n * endpoints + e) as u32), 8080)
                    })
                    .collect(),
            }],
        })
        .collect();
    i
}

fn dnat_rule(global: Ipv4Addr, ep: SocketAddrV4) -> String {
    format!("-d {global}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination {ep}")
}

fn iptables(tool: &str, args: &str) -> bool {
    Command::new(tool)
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run_stdin(tool: &str, args: &[&str], input: &str) -> bool {
    let Ok(mut child) = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return false;
    };
    let mut stdin = child.stdin.take().expect("piped");
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    match child.wait_with_output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!("{tool}: {}", String::from_utf8_lossy(&o.stderr).trim());
            false
        }
        Err(_) => false,
    }
}
