//! `causeway lab demo`: the main job, told as a story. It brings up two
//! clusters with identical CIDRs, shows them, proves each answers on the
//! same pod address, and takes them down again (unless `--keep`).

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::echo::EchoReply;
use super::plan::{ECHO_PORT, LabName, LabSpec};
use super::{down, render_status, resolve, status, up};

/// Runs the demo on lab `name`; prints as it goes.
pub fn run(name: LabName, keep: bool) -> Result<()> {
    say(&format!(
        "Building lab {name}: two clusters, both with pod CIDR 10.244.0.0/16 and service CIDR 10.96.0.0/12"
    ));
    let state = up(LabSpec {
        name: name.clone(),
        clusters: 2,
        distinct_cidrs: false,
    })?;
    let result = tell(&name, &state);
    if keep {
        say(&format!(
            "Leaving lab {name} up (--keep). Take it down with `causeway lab down --name {name}`."
        ));
    } else {
        say(&format!("Taking lab {name} down"));
        down(&name)?;
        say("Done: no namespace, link or process of the lab is left.");
    }
    result
}

fn tell(name: &LabName, state: &super::state::LabState) -> Result<()> {
    print!("{}", render_status(&status(name)?));
    for cluster in &state.plan.clusters {
        let web = cluster
            .pods
            .iter()
            .find(|p| p.name == "web-0")
            .context("the lab has no web-0 pod")?;
        let url = format!("http://{}:{ECHO_PORT}/", web.ip);
        let target = format!("{}/client-0", cluster.name);
        say(&format!("From {target}: curl {url}"));
        let reply = curl(name, &state.plan, &target, &url)?;
        println!(
            "    answered by cluster {} pod {}, which saw the client as {}",
            reply.cluster, reply.pod, reply.client
        );
    }
    say("Both clusters hold the same addresses; connecting them is what Causeway is for.");
    Ok(())
}

/// `causeway lab exec LAB TARGET -- curl URL`, parsed as the echo reply.
fn curl(name: &LabName, plan: &super::plan::LabPlan, target: &str, url: &str) -> Result<EchoReply> {
    let netns = resolve(plan, target)?;
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "enter",
            "--netns",
            netns,
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .context("run curl (install it with `apt-get install curl`)")?;
    if !out.status.success() {
        bail!(
            "curl {url} from {target} in lab {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "unexpected answer from {url}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn say(line: &str) {
    println!("\n==> {line}");
}
