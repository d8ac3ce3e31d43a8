//! Failover benchmark: how long requests from cluster a to cluster b fail
//! after b's active gateway is killed (SIGKILL) or stopped (SIGTERM),
//! probing every 10 ms from inside a/client-0. Prints a table.
//!
//! `cargo bench -p causeway-tests --bench failover` (root; ROUNDS=10 by default).

use std::process::{Command, Stdio};
use std::time::Duration;

use causeway_tests::{Lab, causeway, causeway_bin, ok};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let lab = Lab::up("bfail", &["--distinct-cidrs"]);
    let web = "10.245.0.2:8080";
    lab.echo_eventually("a/client-0", &format!("http://{web}/"));
    let bin = causeway_bin().display().to_string();
    println!(
        "{:<8} {:>6} {:>10} {:>10} {:>10}",
        "signal", "rounds", "median ms", "p95 ms", "max ms"
    );
    for (verb, signal) in [("kill", "SIGKILL"), ("stop", "SIGTERM")] {
        let mut outages = Vec::new();
        for _ in 0..rounds {
            let status = lab.status();
            let active = status["active_gateways"]["b"]
                .as_str()
                .expect("an active gateway")
                .to_owned();
            let target = format!("b/{active}");
            let probe = Command::new(&bin)
                .args([
                    "lab",
                    "exec",
                    "--name",
                    &lab.name,
                    "a/client-0",
                    "--",
                    &bin,
                    "lab",
                    "probe",
                    web,
                ])
                .args([
                    "--interval-ms",
                    "10",
                    "--settle",
                    "30",
                    "--deadline-s",
                    "20",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the prober");
            std::thread::sleep(Duration::from_millis(500));
            ok(causeway(&["lab", verb, "--name", &lab.name, &target]), verb);
            let out = probe.wait_with_output().expect("prober");
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("probe report");
            outages.push(report["outage_ms"].as_u64().unwrap());
            ok(
                causeway(&["lab", "start", "--name", &lab.name, &target]),
                "start",
            );
            // Let the restarted candidate settle as the standby.
            std::thread::sleep(Duration::from_secs(2));
        }
        outages.sort();
        println!(
            "{:<8} {:>6} {:>10} {:>10} {:>10}",
            signal,
            outages.len(),
            percentile(&outages, 0.5),
            percentile(&outages, 0.95),
            outages.last().unwrap()
        );
    }
}
