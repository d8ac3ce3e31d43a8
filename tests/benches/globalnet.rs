//! Globalnet's packet cost and connection survival, in the lab.
//!
//! - Throughput: iperf3 TCP from a/client-0 to an iperf3 server in b/web-1,
//!   across the tunnel, on a lab with `--distinct-cidrs` (no NAT, by pod IP)
//!   and on a lab with identical CIDRs (Globalnet: by b's global IP, SNAT and
//!   DNAT on both gateways), in the same run.
//! - Survival: does an established TCP connection through Globalnet survive
//!   a failover of the far side's gateway? A slow 64 MiB download is started,
//!   b's active gateway is killed, and the download either completes whole
//!   or fails.
//!
//! `cargo bench -p causeway-tests --bench globalnet` (root; ROUNDS=3).

use std::process::{Command, Stdio};
use std::time::Duration;

use causeway_tests::{Lab, causeway, causeway_bin, ok};

const IPERF: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: iperf, namespace: default}\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{name: iperf, port: 5201, targetPort: 5201, protocol: TCP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: iperf-lab\n  namespace: default\n  labels: {kubernetes.io/service-name: iperf}\naddressType: IPv4\nports: [{name: iperf, protocol: TCP, port: 5201}]\nendpoints:\n- addresses: [10.244.1.2]\n  conditions: {ready: true}\n";

/// Gbit/s of one iperf3 run from a/client-0 to `server` (an iperf3 server
/// in b/web-1 is started first and ends after one test).
fn iperf(lab: &Lab, server: &str, seconds: u32) -> f64 {
    let daemon = Command::new(causeway_bin())
        .args([
            "lab", "exec", "--name", &lab.name, "b/web-1", "--", "iperf3", "-s", "-1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = ok(
        lab.exec(
            "a/client-0",
            &["iperf3", "-c", server, "-t", &seconds.to_string(), "-J"],
        ),
        "iperf3 client",
    );
    let _ = daemon.wait_with_output();
    let report: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}

/// The global IP b's export `service` got, from `lab status` (bounded wait).
fn export_ip(lab: &Lab, service: &str) -> String {
    for _ in 0..100 {
        if let Some(ip) = lab.status()["globalnet"]["b"]["exports"][service][0].as_str() {
            return ip.to_owned();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("b's export {service} got no global IP");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let plain = Lab::up("bplain", &["--distinct-cidrs"]);
    let global = Lab::up("bglobal", &[]);
    global.write_manifest("b", "service-default-iperf.yaml", IPERF);
    global.export("b", "default/iperf");
    global.export("b", "default/web");
    plain.echo_eventually("a/client-0", "http://10.245.1.2:8080/");
    let web_url = format!("http://{}/", export_ip(&global, "default/web"));
    global.echo_eventually("a/client-0", &web_url);
    let iperf_ip = export_ip(&global, "default/iperf");

    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        without.push(iperf(&plain, "10.245.1.2", 5));
        with.push(iperf(&global, &iperf_ip, 5));
    }
    let (a, b) = (median(without.clone()), median(with.clone()));
    println!(
        "{:<34} {:>8} {:>10}",
        "path (iperf3 TCP, 5 s)", "rounds", "Gbit/s"
    );
    println!("{:<34} {:>8} {:>10.3}", "distinct CIDRs, no NAT", rounds, a);
    println!(
        "{:<34} {:>8} {:>10.3}",
        "identical CIDRs, Globalnet", rounds, b
    );
    println!(
        "Globalnet costs {:.1}% (per round: {without:.3?} vs {with:.3?})",
        (1.0 - b / a) * 100.0
    );

    println!("\n{:<8} {:<10} result", "round", "killed");
    let bin = causeway_bin().display().to_string();
    for round in 1..=rounds {
        let active = global.active_gateway("b");
        let (bin, lab, web_url) = (bin.clone(), global.name.clone(), web_url.clone());
        let child = std::thread::spawn(move || {
            Command::new(&bin)
                .args(["lab", "exec", "--name", &lab, "a/client-0", "--"])
                .args([
                    "sh",
                    "-c",
                    &format!(
                        "curl -sS --max-time 40 --limit-rate 8M {web_url}bytes/67108864 | wc -c"
                    ),
                ])
                .output()
        });
        std::thread::sleep(Duration::from_secs(3));
        ok(
            causeway(&[
                "lab",
                "kill",
                "--name",
                &global.name,
                &format!("b/{active}"),
            ]),
            "kill",
        );
        let out = child.join().unwrap().expect("curl");
        let bytes = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let result = if bytes == "67108864" {
            "survived: all 64 MiB arrived".to_owned()
        } else {
            format!(
                "broke after {bytes} bytes: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        };
        println!("{round:<8} b/{active:<8} {result}");
        ok(
            causeway(&[
                "lab",
                "start",
                "--name",
                &global.name,
                &format!("b/{active}"),
            ]),
            "start",
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
