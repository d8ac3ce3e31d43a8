//! Tunnel throughput, side by side in one run: the routed veth path without a
//! tunnel (the ceiling), the embedded boringtun cable and an external
//! wireguard-go cable, each between two fresh network namespaces, measured
//! with iperf3 (TCP). Prints a Markdown table.
//!
//! Needs root, iperf3 and wireguard-go. Run through `gateway/bench/tunnel.sh`
//! (a release build: a debug boringtun is many times slower).
//!
//! Usage: tunnel_bench [--seconds N] [--rounds N] [--parallel N] [--txqueuelen N]
//!        [--wireguard-go PATH]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use causeway_gateway::cable::embedded::EmbeddedCable;
use causeway_gateway::cable::mtu::{Family, tunnel_mtu};
use causeway_gateway::cable::netns::named;
use causeway_gateway::cable::plan::{
    LocalKind, LocalNetworks, RemoteEndpoint, diff_peers, plan_peers,
};
use causeway_gateway::cable::wgctrl::WgctrlCable;
use causeway_gateway::cable::{Cable, DeviceSpec, InterfaceName, KeyPair};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn ip(args: &[&str]) -> Res<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Two namespaces joined by a veth, deleted on drop.
struct Pair {
    ns: [String; 2],
}

impl Pair {
    fn new(tag: &str) -> Res<Self> {
        let id = std::process::id() % 100_000;
        let pair = Self {
            ns: [format!("cwbA{tag}{id}"), format!("cwbB{tag}{id}")],
        };
        for ns in &pair.ns {
            ip(&["netns", "add", ns])?;
        }
        let veth = [format!("ba{tag}{id}"), format!("bb{tag}{id}")];
        ip(&[
            "link",
            "add",
            &veth[0],
            "netns",
            &pair.ns[0],
            "type",
            "veth",
            "peer",
            "name",
            &veth[1],
            "netns",
            &pair.ns[1],
        ])?;
        for (i, ns) in pair.ns.iter().enumerate() {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("192.168.78.{}/24", i + 1),
                "dev",
                &veth[i],
            ])?;
            ip(&["-n", ns, "link", "set", &veth[i], "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Kills a child on drop (the iperf3 server).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const POD: [&str; 2] = ["10.10.1.0/24", "10.10.2.0/24"];
const TUNNEL_IP: [&str; 2] = ["10.10.1.1", "10.10.2.1"];

/// Brings up one cable per side and routes the pod subnets through it.
fn wire(pair: &Pair, cables: &[Box<dyn Cable>; 2], txqueuelen: Option<u32>) -> Res<()> {
    let keys = [KeyPair::generate(), KeyPair::generate()];
    let mtu = tunnel_mtu(1500, Family::V4, None)?;
    for i in 0..2 {
        cables[i].ensure(&DeviceSpec {
            private_key: keys[i].private().clone(),
            listen_port: 51820,
            mtu,
        })?;
    }
    for i in 0..2 {
        let j = 1 - i;
        let remote = RemoteEndpoint {
            cluster: format!("c{j}"),
            public_key: keys[j].public().to_base64(),
            endpoint: format!("192.168.78.{}:51820", j + 1).parse()?,
            subnets: vec![POD[j].parse()?],
        };
        let local = LocalNetworks {
            cluster: format!("c{i}"),
            public_key: Some(keys[i].public()),
            ranges: BTreeMap::from([(LocalKind::Pod, vec![POD[i].parse()?])]),
        };
        let plan = plan_peers(&local, &[remote], &Default::default(), Some(25));
        let observed = cables[i].observe()?.unwrap_or_default().peers;
        cables[i].apply(&diff_peers(&plan.peers, &observed, &BTreeMap::new()))?;
        let dev = cables[i].name().to_string();
        ip(&[
            "-n",
            &pair.ns[i],
            "addr",
            "add",
            &format!("{}/32", TUNNEL_IP[i]),
            "dev",
            &dev,
        ])?;
        ip(&[
            "-n",
            &pair.ns[i],
            "route",
            "add",
            POD[j],
            "dev",
            &dev,
            "src",
            TUNNEL_IP[i],
        ])?;
        if let Some(len) = txqueuelen {
            let len = len.to_string();
            ip(&[
                "-n",
                &pair.ns[i],
                "link",
                "set",
                "dev",
                &dev,
                "txqueuelen",
                &len,
            ])?;
        }
    }
    Ok(())
}

/// Without a tunnel: the pod subnets routed straight over the veth.
fn wire_plain(pair: &Pair) -> Res<()> {
    for (i, tunnel_ip) in TUNNEL_IP.iter().enumerate() {
        let j = 1 - i;
        ip(&[
            "-n",
            &pair.ns[i],
            "addr",
            "add",
            &format!("{tunnel_ip}/32"),
            "dev",
            "lo",
        ])?;
        let via = format!("192.168.78.{}", j + 1);
        ip(&[
            "-n",
            &pair.ns[i],
            "route",
            "add",
            POD[j],
            "via",
            &via,
            "src",
            tunnel_ip,
        ])?;
    }
    Ok(())
}

/// One iperf3 run from A to B: Gbit/s received, TCP retransmits, UDP receive-buffer drops.
fn iperf(pair: &Pair, seconds: u32, parallel: u32) -> Res<(f64, u64, u64)> {
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns[1],
            "iperf3",
            "-s",
            "-1",
            "-B",
            TUNNEL_IP[1],
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _server = Reap(server);
    // Bounded wait for the server to listen (and for the first handshake).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.ns[0],
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                TUNNEL_IP[0],
                TUNNEL_IP[1],
            ])
            .stdout(Stdio::null())
            .status()?
            .success();
        if ok {
            break;
        }
        if Instant::now() > deadline {
            return Err("no ping through the tunnel within 10 s".into());
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns[0],
            "iperf3",
            "-c",
            TUNNEL_IP[1],
            "-B",
            TUNNEL_IP[0],
            "-J",
        ])
        .args(["-t", &seconds.to_string(), "-P", &parallel.to_string()])
        .output()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if let Some(err) = json.get("error") {
        return Err(format!("iperf3: {err}").into());
    }
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("no sum_received in iperf3 output")?;
    let retr = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, retr, udp_drops(pair)?))
}

/// UDP datagrams dropped for a full receive buffer, over both namespaces.
fn udp_drops(pair: &Pair) -> Res<u64> {
    let mut total = 0;
    for ns in &pair.ns {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "nstat",
                "-asz",
                "-j",
                "UdpRcvbufErrors",
            ])
            .output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        total += json["kernel"]["UdpRcvbufErrors"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let mut seconds = 5;
    let mut rounds = 3;
    let mut parallel = 1;
    let mut wireguard_go = PathBuf::from("wireguard-go");
    let mut txqueuelen = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => seconds = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--parallel" => parallel = value()?.parse()?,
            "--wireguard-go" => wireguard_go = value()?.into(),
            "--txqueuelen" => txqueuelen = Some(value()?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (it builds network namespaces)".into());
    }
    let paths = ["plain", "embedded", "wireguard-go"];
    let mut results: BTreeMap<&str, Vec<(f64, u64, u64)>> = BTreeMap::new();
    // Interleaved rounds, so drift in the machine's load hits every path alike.
    for round in 0..rounds {
        for (n, path) in paths.iter().enumerate() {
            let pair = Pair::new(&format!("{n}"))?;
            let result = match *path {
                "plain" => {
                    wire_plain(&pair)?;
                    iperf(&pair, seconds, parallel)?
                }
                "embedded" => {
                    let cables: [Box<dyn Cable>; 2] = [0, 1].map(|i| {
                        Box::new(EmbeddedCable::new(
                            InterfaceName::new("cwb0").unwrap(),
                            Some(named(&pair.ns[i])),
                        )) as Box<dyn Cable>
                    });
                    wire(&pair, &cables, txqueuelen)?;
                    let r = iperf(&pair, seconds, parallel)?;
                    for c in &cables {
                        c.teardown()?;
                    }
                    r
                }
                _ => {
                    let id = std::process::id() % 100_000;
                    let cables: [Box<dyn Cable>; 2] = [0, 1].map(|i| {
                        Box::new(WgctrlCable::wireguard_go(
                            InterfaceName::new(&format!("cwbg{i}x{id}")).unwrap(),
                            Some(named(&pair.ns[i])),
                            wireguard_go.clone(),
                        )) as Box<dyn Cable>
                    });
                    let r = wire(&pair, &cables, txqueuelen)
                        .and_then(|()| iperf(&pair, seconds, parallel));
                    for c in &cables {
                        let _ = c.teardown();
                    }
                    r?
                }
            };
            eprintln!(
                "round {}: {path}: {:.2} Gbit/s, {} retransmits, {} UDP receive-buffer drops",
                round + 1,
                result.0,
                result.1,
                result.2
            );
            results.entry(path).or_default().push(result);
        }
    }
    println!(
        "| path | Gbit/s (median of {rounds}) | min | max | TCP retransmits (median) | UDP receive-buffer drops (median) |"
    );
    println!("|---|---|---|---|---|---|");
    for path in paths {
        let r = &results[path];
        let gbps: Vec<f64> = r.iter().map(|x| x.0).collect();
        let retr: Vec<f64> = r.iter().map(|x| x.1 as f64).collect();
        let drops: Vec<f64> = r.iter().map(|x| x.2 as f64).collect();
        let min = gbps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = gbps.iter().copied().fold(0.0, f64::max);
        println!(
            "| {path} | {:.2} | {min:.2} | {max:.2} | {:.0} | {:.0} |",
            median(gbps.clone()),
            median(retr),
            median(drops)
        );
    }
    Ok(())
}
