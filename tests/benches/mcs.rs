//! MCS benchmarks (issue 10) on one lab with identical CIDRs and Globalnet:
//!
//! - ClusterSetIP cost: TCP set-up (connect, then the answer's first line)
//!   from a/client-0 through the ClusterSetIP of a service only b exports,
//!   and straight to b's global IP for it, alternately in the same run.
//! - Spread: new connections to the ClusterSetIP of a service both clusters
//!   export (no affinity), from each cluster's client; stickiness: the same
//!   to one with `sessionAffinity: ClientIP`, from one client.
//! - Health: both of b's gateways stopped; from a's gateway marking b
//!   `error` (the time on its "peer health changed" log line, written as it
//!   stores the ConnectionStatus record) to b's MCS EndpointSlice leaving
//!   a's derived objects, and from the stop; then b is started again.
//!
//! Connections are made by a thread that entered the client pod's network
//! namespace, not by a process each, so a figure is the network's cost.
//!
//! `cargo bench -p causeway-tests --bench mcs` (root; CONNECTIONS=1000,
//! ROUNDS=10).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use causeway_tests::{Lab, causeway, ok, within};
use nix::sched::CloneFlags;
use serde_json::Value as Json;
use serde_yaml::Value;

const TIMEOUT: Duration = Duration::from_secs(2);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` on a thread that entered network namespace `netns` (only that
/// thread moves: a network namespace is per thread).
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the pod");
        f()
    })
    .join()
    .expect("the thread in the pod's namespace")
}

/// One new connection's answer: set-up time, time to the first line, and
/// who answered.
struct Answer {
    connect: Duration,
    first_line: Duration,
    cluster: String,
    pod: String,
}

/// Connects to `addr` and reads the web pod's one JSON line (`None`: no
/// connection, or no line within the timeout).
fn hit(addr: SocketAddr) -> Option<Answer> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    let connect = start.elapsed();
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let first_line = start.elapsed();
    let reply: Json = serde_json::from_str(&line).ok()?;
    Some(Answer {
        connect,
        first_line,
        cluster: reply["cluster"].as_str()?.to_owned(),
        pod: reply["pod"].as_str()?.to_owned(),
    })
}

/// Connects until some cluster, and every cluster of `want`, has answered
/// (bounded: 20 s): the service proxy programs a ClusterIP a moment after
/// the derived objects.
fn warm_up(addr: SocketAddr, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|c| c.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = BTreeSet::new();
    while seen.is_empty() || !want.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "{addr}: only {seen:?} answered within 20 s, wanted {want:?}"
        );
        match hit(addr) {
            Some(a) => {
                seen.insert(a.cluster);
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn manifests(lab: &Lab, cluster: &str) -> String {
    format!(
        "/run/causeway/lab/{}/clusters/{cluster}/manifests",
        lab.name
    )
}

/// Deploys Service `name` (TCP 42, ClusterIP `ip`) over the web pods
/// `pods` of `cluster`, with the EndpointSlice an endpoints controller
/// would write (as the conformance suite's driver does).
fn deploy(lab: &Lab, cluster: &str, name: &str, ip: &str, pods: &[String], affinity: bool) {
    let affinity = if affinity {
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}\n"
    } else {
        ""
    };
    let endpoints: String = pods
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n"))
        .collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         clusterIP: {ip}\n  clusterIPs: [{ip}]\n  selector: {{app: web}}\n  \
         ports: [{{name: tcp, port: 42, protocol: TCP, targetPort: 42}}]\n{affinity}\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-lab\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
         ports: [{{name: tcp, port: 42, protocol: TCP}}]\nendpoints:\n{endpoints}"
    );
    lab.write_manifest(cluster, &format!("service-default-{name}.yaml"), &yaml);
}

/// The ClusterSetIP of `name`'s import in `cluster`, once it has one.
fn cluster_set_ip(lab: &Lab, cluster: &str, name: &str) -> SocketAddr {
    let path = format!(
        "{}/causeway-imports/default.{name}.yaml",
        manifests(lab, cluster)
    );
    within(30, &format!("{cluster}'s import of {name}"), || {
        let import: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
        let ip = import["spec"]["ips"][0].as_str()?.parse().ok()?;
        Some(SocketAddr::new(ip, 42))
    })
}

/// The source clusters of the MCS EndpointSlices of `name` in `cluster`.
fn slice_sources(lab: &Lab, cluster: &str, name: &str) -> BTreeSet<String> {
    let path = format!(
        "{}/causeway-derived/default.{name}.yaml",
        manifests(lab, cluster)
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|d: &Value| d["kind"] == "EndpointSlice")
        .filter_map(|d| {
            d["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn await_sources(lab: &Lab, cluster: &str, name: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|c| c.to_string()).collect();
    within(
        60,
        &format!("{cluster}'s slices of {name} from {want:?}"),
        || (slice_sources(lab, cluster, name) == want).then_some(()),
    );
}

/// Unix time of an RFC 3339 UTC stamp as tracing writes it
/// (`2026-11-23T22:21:55.620667Z`).
fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + min * 60 + s).ok()?;
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A gateway log read from where it stood, for the moment the gateway
/// marked `peer` `error`.
struct LogTail {
    path: String,
    offset: u64,
}

impl LogTail {
    fn at_end(path: String) -> Self {
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        Self { path, offset }
    }

    /// The time on the first new line saying `peer` turned `Error`.
    fn error_of(&mut self, peer: &str) -> Option<SystemTime> {
        let mut file = std::fs::File::open(&self.path).ok()?;
        file.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        // Only whole lines: the rest is read next time.
        let end = bytes.iter().rposition(|b| *b == b'\n')? + 1;
        self.offset += end as u64;
        let text = strip_ansi(&String::from_utf8_lossy(&bytes[..end]));
        text.lines()
            .filter(|l| {
                l.contains("peer health changed")
                    && l.contains(&format!("peer={peer} "))
                    && l.contains("state=Error")
            })
            .find_map(|l| parse_utc(l.split_whitespace().next()?))
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

/// Nearest-rank percentile of sorted `v`.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Signed milliseconds from `from` to `to`.
fn between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

fn main() {
    let n = env("CONNECTIONS", 1000);
    let rounds = env("ROUNDS", 10);
    let lab = Lab::up("bmcs", &[]);
    let status = lab.status();
    let cluster = |name: &str| -> Json {
        status["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no cluster {name}"))
    };
    // hello: no affinity; sticky: ClientIP. Exported from b first.
    for c in ["a", "b"] {
        let info = cluster(c);
        let web_ip = info["services"][0]["cluster_ip"]
            .as_str()
            .expect("web's ClusterIP");
        let prefix = web_ip.rsplit_once('.').expect("an IPv4 address").0;
        let pods: Vec<String> = info["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .filter(|p| p["app"] == "web")
            .map(|p| p["ip"].as_str().expect("pod ip").to_owned())
            .collect();
        deploy(&lab, c, "hello", &format!("{prefix}.42"), &pods, false);
        deploy(&lab, c, "sticky", &format!("{prefix}.43"), &pods, true);
    }
    lab.export("b", "default/hello");
    lab.export("b", "default/sticky");
    let ns = |c: &str| format!("cw.{}.{c}.client-0", lab.name);

    // 1. The ClusterSetIP's cost: a/client-0 to b, through the VIP and
    // straight to b's global IP, alternately.
    let vip = cluster_set_ip(&lab, "a", "hello");
    await_sources(&lab, "a", "hello", &["b"]);
    let global: SocketAddr = within(30, "b's global IP for default/hello", || {
        let ip = lab.status()["globalnet"]["b"]["exports"]["default/hello"][0]
            .as_str()?
            .parse()
            .ok()?;
        Some(SocketAddr::new(ip, 42))
    });
    let (via_vip, direct, failed) = in_netns(&ns("a"), move || {
        warm_up(vip, &["b"]);
        warm_up(global, &["b"]);
        let (mut via_vip, mut direct, mut failed) = (Vec::new(), Vec::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(600);
        for i in 0..2 * n {
            if Instant::now() > deadline {
                break;
            }
            let (addr, into) = if i % 2 == 0 {
                (vip, &mut via_vip)
            } else {
                (global, &mut direct)
            };
            match hit(addr) {
                Some(a) if a.cluster == "b" => into.push((ms(a.connect), ms(a.first_line))),
                _ => failed += 1,
            }
        }
        (via_vip, direct, failed)
    });
    println!("\n1. connection set-up, a/client-0 to b (alternating; {failed} failed)");
    println!(
        "{:<32} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "path", "conns", "conn p50", "conn p90", "conn p99", "line p50", "line p90", "line p99"
    );
    let mut p50s = Vec::new();
    for (label, samples) in [
        (format!("ClusterSetIP {}", vip.ip()), &via_vip),
        (format!("b's global IP {}", global.ip()), &direct),
    ] {
        let connect = sorted(samples.iter().map(|s| s.0).collect());
        let line = sorted(samples.iter().map(|s| s.1).collect());
        p50s.push((pct(&connect, 0.5), pct(&line, 0.5)));
        println!(
            "{label:<32} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            samples.len(),
            pct(&connect, 0.5),
            pct(&connect, 0.9),
            pct(&connect, 0.99),
            pct(&line, 0.5),
            pct(&line, 0.9),
            pct(&line, 0.99)
        );
    }
    println!(
        "ClusterSetIP / global IP at p50: connect {:.3}x, first line {:.3}x",
        p50s[0].0 / p50s[1].0,
        p50s[0].1 / p50s[1].1
    );

    // 2. Spread and stickiness, both clusters exporting.
    lab.export("a", "default/hello");
    lab.export("a", "default/sticky");
    println!("\n2. who answers {n} new connections to the ClusterSetIP");
    println!(
        "{:<22} {:<12} {:>6} {:>7} {:>7}  per pod",
        "service", "from", "conns", "a %", "b %"
    );
    for (service, from) in [
        ("hello", "a"),
        ("hello", "b"),
        ("sticky", "a"),
        ("sticky", "b"),
    ] {
        for c in ["a", "b"] {
            await_sources(&lab, c, service, &["a", "b"]);
        }
        let vip = cluster_set_ip(&lab, from, service);
        if service == "sticky" {
            // hello, exported with it, already answers from both clusters;
            // give the proxy a moment for sticky's slices too.
            std::thread::sleep(Duration::from_secs(2));
        }
        let answers = in_netns(&ns(from), move || {
            // With affinity only one cluster can answer: any will do.
            warm_up(
                vip,
                if service == "sticky" {
                    &[]
                } else {
                    &["a", "b"]
                },
            );
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut answers: BTreeMap<(String, String), usize> = BTreeMap::new();
            let mut failed = 0;
            for _ in 0..n {
                if Instant::now() > deadline {
                    break;
                }
                match hit(vip) {
                    Some(a) => *answers.entry((a.cluster, a.pod)).or_default() += 1,
                    None => failed += 1,
                }
            }
            (answers, failed)
        });
        let (answers, failed) = answers;
        let total: usize = answers.values().sum();
        let share = |c: &str| {
            answers
                .iter()
                .filter(|((cluster, _), _)| cluster == c)
                .map(|(_, k)| k)
                .sum::<usize>() as f64
                * 100.0
                / total.max(1) as f64
        };
        let pods: Vec<String> = answers
            .iter()
            .map(|((c, p), k)| format!("{c}/{p} {k}"))
            .collect();
        let label = if service == "sticky" {
            "sticky (ClientIP)"
        } else {
            "hello (no affinity)"
        };
        println!(
            "{label:<22} {:<12} {:>6} {:>7.1} {:>7.1}  {}{}",
            format!("{from}/client-0"),
            total,
            share("a"),
            share("b"),
            pods.join(", "),
            if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            }
        );
    }

    // 3. Health: b's gateways stopped; a marks b `error`; b's slice leaves
    // a's derived objects.
    let logs = format!("/run/causeway/lab/{}/logs", lab.name);
    let b_gateways = ["b/node-0", "b/node-1"];
    let (mut error_to_left, mut stop_to_error, mut stop_to_left) =
        (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        await_sources(&lab, "a", "hello", &["a", "b"]);
        let mut tails: Vec<LogTail> = std::fs::read_dir(&logs)
            .expect("the lab's logs")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.starts_with("a-") && f.ends_with("-gateway.log"))
            .map(|f| LogTail::at_end(format!("{logs}/{f}")))
            .collect();
        for node in b_gateways {
            ok(
                causeway(&["lab", "stop", "--name", &lab.name, node]),
                "stop",
            );
        }
        let stopped = SystemTime::now();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut errored, mut left) = (None, None);
        while errored.is_none() || left.is_none() {
            assert!(
                Instant::now() < deadline,
                "round {round}: error at {errored:?}, slice left at {left:?}, 30 s after the stop"
            );
            if left.is_none() && !slice_sources(&lab, "a", "hello").contains("b") {
                left = Some(SystemTime::now());
            }
            if errored.is_none() {
                errored = tails.iter_mut().find_map(|t| t.error_of("b"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (errored, left) = (errored.unwrap(), left.unwrap());
        error_to_left.push(between(errored, left));
        stop_to_error.push(between(stopped, errored));
        stop_to_left.push(between(stopped, left));
        eprintln!(
            "round {round}: stop to error {:.0} ms, error to slice gone {:.0} ms",
            between(stopped, errored),
            between(errored, left)
        );
        for node in b_gateways {
            ok(
                causeway(&["lab", "start", "--name", &lab.name, node]),
                "start",
            );
        }
        await_sources(&lab, "a", "hello", &["a", "b"]);
        std::thread::sleep(Duration::from_secs(2));
    }
    println!("\n3. b's gateways stopped: a marks b error, b's slice leaves a's ({rounds} rounds)");
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10}",
        "interval", "median ms", "p95 ms", "min ms", "max ms"
    );
    for (label, v) in [
        ("status error -> slice gone", error_to_left),
        ("stop -> status error", stop_to_error),
        ("stop -> slice gone", stop_to_left),
    ] {
        let v = sorted(v);
        println!(
            "{label:<34} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            pct(&v, 0.5),
            pct(&v, 0.95),
            v[0],
            v[v.len() - 1]
        );
    }
}
