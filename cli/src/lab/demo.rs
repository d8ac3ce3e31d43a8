//! `causeway lab demo`: the main job, told as a story. Two clusters with
//! identical CIDRs; `default/web` exported from b; from a pod in a, its
//! `clusterset.local` name resolves to a's ClusterSetIP for the import, and
//! an HTTP request by name is carried by a's service proxy to b's global IP
//! and served by b. Everything is taken down at the end (unless `--keep`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::echo::EchoReply;
use super::plan::{LabName, LabSpec};
use super::{down, export, render_status, resolve, status, up};

const NAME: &str = "web.default.svc.clusterset.local";

/// Runs the demo on lab `name`; prints as it goes.
pub fn run(name: LabName, keep: bool) -> Result<()> {
    say(&format!(
        "Building lab {name}: two clusters, both with pod CIDR 10.244.0.0/16 and service CIDR 10.96.0.0/12"
    ));
    up(LabSpec {
        name: name.clone(),
        clusters: 2,
        distinct_cidrs: false,
        dns_answer: None,
    })?;
    let result = tell(&name);
    if result.is_ok() {
        match crate::topology::write_demo_picture(&name, keep) {
            Ok(path) => say(&format!(
                "A picture of the clusterset (gateways, tunnels with RTT, exports): {}",
                path.display()
            )),
            Err(e) => say(&format!("Could not draw the clusterset: {e:#}")),
        }
    }
    if keep {
        say(&format!(
            "Leaving lab {name} up (--keep). Try `causeway lab exec --name {name} a/client-0 -- curl {NAME}`; \
             take it down with `causeway lab down --name {name}`."
        ));
    } else {
        say(&format!("Taking lab {name} down"));
        down(&name)?;
        say("Done: no namespace, link or process of the lab is left.");
    }
    result
}

fn tell(name: &LabName) -> Result<()> {
    print!("{}", render_status(&status(name)?));
    say("Both clusters hold the same pod addresses: a/web-0 and b/web-0 are both 10.244.0.2");
    for cluster in ["a", "b"] {
        let reply: EchoReply = parse(&run_in(
            name,
            &format!("{cluster}/client-0"),
            &curl("http://10.244.0.2:8080/"),
        )?)?;
        println!(
            "    from {cluster}/client-0, 10.244.0.2 is cluster {}'s {}",
            reply.cluster, reply.pod
        );
    }
    say("Exporting default/web from cluster b (a ServiceExport in b's manifests)");
    export(name, "b", "default/web", false)?;
    say(&format!("From a/client-0: dig {NAME}"));
    // Until a's import has its ClusterSetIP, DNS answers b's address.
    let a_services = status(name)?
        .clusters
        .iter()
        .find(|c| c.name == "a")
        .map(|c| c.service_cidr)
        .context("the lab has no cluster a")?;
    let answer = eventually(|| {
        let out = run_in(name, "a/client-0", &["dig", "+short", NAME])?;
        match out.trim().parse::<std::net::Ipv4Addr>() {
            Ok(ip) if a_services.contains(&ip) => Ok(out),
            _ => bail!("no ClusterSetIP answer yet: {out:?}"),
        }
    })?;
    println!(
        "    {NAME} -> {}  (the ClusterSetIP of a's ServiceImport: a virtual IP in a's own service CIDR)",
        answer.trim()
    );
    let status = status(name)?;
    if let Some(global) = status
        .globalnet
        .get("b")
        .and_then(|b| b.exports.get("default/web"))
        .and_then(|ips| ips.first())
    {
        println!("    a's service proxy sends it on to {global}, b's global IP for default/web");
    }
    say(&format!("From a/client-0: curl http://{NAME}/"));
    let reply: EchoReply = eventually(|| {
        parse(&run_in(
            name,
            "a/client-0",
            &curl(&format!("http://{NAME}/")),
        )?)
    })?;
    println!(
        "    answered by cluster {} pod {}, which saw the client as {} (one of a's egress global IPs)",
        reply.cluster, reply.pod, reply.client
    );
    say(
        "Identical CIDRs never met: a's pod reached b's service through its ClusterSetIP and Globalnet's global addresses.",
    );
    Ok(())
}

fn curl(url: &str) -> Vec<&str> {
    vec!["curl", "-sS", "--max-time", "3", url]
}

/// Retries `f` for up to 20 s: the export takes a moment to reach a's DNS.
fn eventually<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `causeway lab exec --name LAB TARGET -- CMD`, its stdout.
fn run_in(name: &LabName, target: &str, cmd: &[&str]) -> Result<String> {
    let state = super::load(name)?;
    resolve(&state.plan, target)?;
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["lab", "exec", "--name", name.as_str(), target, "--"])
        .args(cmd)
        .output()
        .with_context(|| format!("run {} in {target}", cmd[0]))?;
    if !out.status.success() {
        bail!(
            "{} in {target} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse(body: &str) -> Result<EchoReply> {
    serde_json::from_str(body).with_context(|| format!("unexpected answer: {body}"))
}

fn say(line: &str) {
    println!("\n==> {line}");
}
