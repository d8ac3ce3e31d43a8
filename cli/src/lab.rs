//! `causeway lab`: simulated clusters built from network namespaces on one
//! machine, running the real daemons.
//!
//! [`plan`] computes every namespace, link and address from the spec;
//! [`build`] realises that plan through rtnetlink and `nft`; [`state`]
//! records what was made under `/run/causeway/lab/NAME/` so that `status`,
//! `exec` and `down` work from any later process; the lab's pods run
//! [`echo`]; [`manifests`] are each cluster's "Kubernetes API". Nothing is
//! ever added to the host's own namespace.

pub mod build;
pub mod demo;
pub mod echo;
pub mod manifests;
pub mod plan;
pub mod probe;
pub mod proxy;
pub mod state;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::ffi::OsString;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::netns;
use plan::{
    CALICO_VXLAN_DEVICE, ClusterPlan, Cni, CniChoice, DNS_PORT, ECHO_PORT, ETCD_PORT,
    HOSTNAME_PORT, LabName, LabPlan, LabSpec, WanPlan, netns_prefix,
};
use state::{LabState, ProcessRecord, run_dir};

/// Builds lab `spec.name` of Flannel clusters and starts its daemons.
/// Refuses a name that is up already; a build that fails halfway is taken
/// down again.
pub fn up(spec: LabSpec) -> Result<LabState> {
    up_with(spec, &CniChoice::default())
}

/// [`up`] with each cluster wired like the CNI `cni` names for it.
pub fn up_with(spec: LabSpec, cni: &CniChoice) -> Result<LabState> {
    let plan = LabPlan::with_cni(spec, cni).map_err(|e| anyhow!(e))?;
    let name = plan.spec.name.clone();
    if is_up(&name) {
        bail!(
            "lab {name} is already up: see `causeway lab status --name {name}`, \
             or take it down first with `causeway lab down --name {name}`"
        );
    }
    let mut state = LabState::new(plan);
    state.save()?;
    match populate(&mut state) {
        Ok(()) => Ok(state),
        Err(e) => {
            if let Err(cleanup) = down(&name) {
                tracing::error!(error = %cleanup, "could not remove the half-built lab");
            }
            Err(e.context(format!(
                "lab {name} could not be built; what it had made is removed"
            )))
        }
    }
}

fn populate(state: &mut LabState) -> Result<()> {
    let plan = state.plan.clone();
    build::build(&plan, state)?;
    for cluster in &plan.clusters {
        manifests::write(cluster, &state.manifests_dir(&cluster.name))?;
    }
    start_etcd(state, "broker", &plan.wan.broker_netns, plan.wan.broker_ip)?;
    for cluster in &plan.clusters {
        let cp = &cluster.control_plane;
        start_etcd(
            state,
            &format!("{}/control-plane", cluster.name),
            &cp.netns,
            cp.ip,
        )?;
    }
    for cluster in &plan.clusters {
        for pod in cluster.pods.iter().filter(|p| p.app == "web") {
            let args = [
                "lab",
                "echo",
                "--cluster",
                &cluster.name,
                "--pod",
                &pod.name,
                "--listen",
                &format!("0.0.0.0:{ECHO_PORT}"),
                "--hostname-listen",
                &format!("0.0.0.0:{HOSTNAME_PORT}"),
            ];
            let target = format!("{}/{}", cluster.name, pod.name);
            spawn(state, &target, &pod.netns, "echo", &causeway_exe()?, &args)?;
        }
    }
    for cluster in &plan.clusters {
        for pod in cluster.pods.iter().filter(|p| p.app == "web") {
            wait_for_port(&pod.netns, SocketAddr::from(([127, 0, 0, 1], ECHO_PORT)))?;
        }
        let cp = &cluster.control_plane;
        wait_for_port(&cp.netns, SocketAddr::from((cp.ip, ETCD_PORT)))?;
    }
    wait_for_port(
        &plan.wan.broker_netns,
        SocketAddr::from((plan.wan.broker_ip, ETCD_PORT)),
    )?;
    join_clusters(state)?;
    for cluster in &plan.clusters {
        start_gateways(state, cluster)?;
        start_route_agents(state, cluster)?;
        start_proxies(state, cluster)?;
    }
    for cluster in &plan.clusters {
        start_dns(state, cluster)?;
    }
    for cluster in &plan.clusters {
        wait_for_active_gateway(cluster)?;
        if let Some(dns) = cluster.pods.iter().find(|p| p.app == "dns") {
            wait_for_port(&dns.netns, SocketAddr::from((dns.ip, DNS_PORT)))?;
        }
    }
    Ok(())
}

/// The lab's broker: `causeway broker init`, then `causeway join` for each
/// cluster, run inside the broker's namespace as an operator would run them.
/// Without `--distinct-cidrs` every cluster gets a global CIDR (Globalnet).
fn join_clusters(state: &mut LabState) -> Result<()> {
    let plan = state.plan.clone();
    let broker = format!("http://{}:{ETCD_PORT}", plan.wan.broker_ip);
    let root_password = state.dir().join("broker-root-password");
    let mut secret = [0u8; 16];
    File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&root_password, hex).context("write the broker's root password")?;
    fs::set_permissions(
        &root_password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let root = root_password.display().to_string();
    run_in(
        &plan.wan.broker_netns,
        &[
            "broker",
            "init",
            "--endpoints",
            &broker,
            "--root-password-file",
            &root,
        ],
    )?;
    for cluster in &plan.clusters {
        let out = state.secrets_dir(&cluster.name).display().to_string();
        let global = if plan.spec.distinct_cidrs {
            "none"
        } else {
            "auto"
        };
        let pods = cluster.pod_cidr.to_string();
        let services = cluster.service_cidr.to_string();
        run_in(
            &plan.wan.broker_netns,
            &[
                "join",
                "--cluster",
                &cluster.name,
                "--broker",
                &broker,
                "--root-password-file",
                &root,
                "--pod-cidr",
                &pods,
                "--service-cidr",
                &services,
                "--global-cidr",
                global,
                "--out",
                &out,
            ],
        )?;
    }
    Ok(())
}

/// The global CIDR `causeway join` gave `cluster`, if any.
fn global_cidr(state: &LabState, cluster: &str) -> Result<Option<String>> {
    let file = state.secrets_dir(cluster).join("cluster.json");
    let joined: serde_json::Value = serde_json::from_slice(
        &fs::read(&file).with_context(|| format!("read {}", file.display()))?,
    )?;
    Ok(joined["globalCidr"].as_str().map(str::to_owned))
}

/// `causeway gateway` on each gateway candidate of `cluster`, with the
/// embedded userspace WireGuard (this kernel may lack the module).
fn start_gateways(state: &mut LabState, cluster: &ClusterPlan) -> Result<()> {
    let secrets = state.secrets_dir(&cluster.name);
    let global = global_cidr(state, &cluster.name)?;
    for node in cluster.nodes.iter().filter(|n| n.is_gateway_candidate()) {
        let lease = state
            .dir()
            .join(format!("{}-{}.lease", cluster.name, node.name));
        let mut args = vec![
            "gateway".to_owned(),
            format!("--cluster={}", cluster.name),
            format!("--node={}", node.name),
            format!("--store=http://{}:{ETCD_PORT}", cluster.control_plane.ip),
            format!("--broker-config={}", secrets.join("broker.json").display()),
            format!("--key-file={}", secrets.join("wireguard.key").display()),
            format!("--private-ip={}", node.ip),
            format!("--pod-cidr={}", cluster.pod_cidr),
            format!("--service-cidr={}", cluster.service_cidr),
            format!("--node-cidr={}", cluster.node_cidr),
            "--cable=userspace".to_owned(),
            "--lease-ttl=1".to_owned(),
            format!("--lease-file={}", lease.display()),
        ];
        if let Some(wan) = node.wan_ip {
            args.push(format!("--public-ip={wan}"));
        }
        // The export agent (in the active gateway) and Globalnet read the
        // cluster's manifests.
        args.push(format!(
            "--manifests={}",
            state.manifests_dir(&cluster.name).display()
        ));
        args.push(format!(
            "--export-status={}",
            state.export_status(&cluster.name).display()
        ));
        match &global {
            // Globalnet gives the gateway its tunnel address.
            Some(g) => args.push(format!("--global-cidr={g}")),
            // The tunnel address: the last address of the node's own pod
            // slice (Flannel) or block (Calico).
            None => args.push(format!("--tunnel-ip={}", nth_last(node.pod_range(), 1))),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let target = format!("{}/{}", cluster.name, node.name);
        spawn(
            state,
            &target,
            &node.netns,
            "gateway",
            &causeway_exe()?,
            &args,
        )?;
    }
    Ok(())
}

/// `causeway lighthouse` in `cluster`'s `dns` pod, and the resolv.conf that
/// points every pod of the cluster at it (a nameserver and no search line:
/// settled decision 13).
fn start_dns(state: &mut LabState, cluster: &ClusterPlan) -> Result<()> {
    let Some(dns) = cluster.pods.iter().find(|p| p.app == "dns") else {
        return Ok(());
    };
    let resolv = state.resolv_conf(&cluster.name);
    fs::write(
        &resolv,
        format!("nameserver {}\noptions timeout:1 attempts:2\n", dns.ip),
    )
    .with_context(|| format!("write {}", resolv.display()))?;
    let mut args = vec![
        "lighthouse".to_owned(),
        format!("--cluster={}", cluster.name),
        format!("--store=http://{}:{ETCD_PORT}", cluster.control_plane.ip),
        format!("--listen=0.0.0.0:{DNS_PORT}"),
        // The ServiceImports, for `--answer clusterset-ip`.
        format!(
            "--manifests={}",
            state.manifests_dir(&cluster.name).display()
        ),
    ];
    if let Some(answer) = &state.plan.spec.dns_answer {
        args.push(format!("--answer={answer}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let target = format!("{}/{}", cluster.name, dns.name);
    spawn(state, &target, &dns.netns, "dns", &causeway_exe()?, &args)
}

/// `causeway route-agent` on every node of `cluster`.
fn start_route_agents(state: &mut LabState, cluster: &ClusterPlan) -> Result<()> {
    let global = global_cidr(state, &cluster.name)?;
    for node in &cluster.nodes {
        let mut args = vec![
            "route-agent".to_owned(),
            format!("--cluster={}", cluster.name),
            format!("--node={}", node.name),
            format!("--store=http://{}:{ETCD_PORT}", cluster.control_plane.ip),
            format!("--pod-cidr={}", cluster.pod_cidr),
            format!("--service-cidr={}", cluster.service_cidr),
            format!("--node-cidr={}", cluster.node_cidr),
            "--rp-filter-interface=eth0".to_owned(),
        ];
        if cluster.cni == Cni::Calico {
            // Traffic between nodes also comes in over VXLAN.
            args.push(format!("--rp-filter-interface={CALICO_VXLAN_DEVICE}"));
        }
        if let Some(g) = &global {
            args.push(format!("--global-cidr={g}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let target = format!("{}/{}", cluster.name, node.name);
        spawn(
            state,
            &target,
            &node.netns,
            "route-agent",
            &causeway_exe()?,
            &args,
        )?;
    }
    Ok(())
}

/// `causeway lab proxy` (the lab's kube-proxy) on every node of `cluster`;
/// node-0's also allocates ClusterIPs, so each cluster has one allocator.
fn start_proxies(state: &mut LabState, cluster: &ClusterPlan) -> Result<()> {
    let manifests = state.manifests_dir(&cluster.name);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut args = vec![
            "lab".to_owned(),
            "proxy".to_owned(),
            format!("--manifests={}", manifests.display()),
            format!("--cluster-cidr={}", cluster.pod_cidr),
        ];
        if i == 0 {
            args.push(format!("--allocate-from={}", cluster.service_cidr));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let target = format!("{}/{}", cluster.name, node.name);
        spawn(
            state,
            &target,
            &node.netns,
            "proxy",
            &causeway_exe()?,
            &args,
        )?;
    }
    Ok(())
}

/// The address `n` before the broadcast address of `net`.
fn nth_last(net: ipnet::Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.broadcast()) - n)
}

/// Waits until `cluster`'s store names an active gateway.
fn wait_for_active_gateway(cluster: &ClusterPlan) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if active_gateway(cluster)?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no gateway of cluster {} became active in 20 s: see the gateways' logs",
                cluster.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cluster`'s own ServiceImport records, from its own store.
fn own_imports(cluster: &ClusterPlan) -> Result<Vec<causeway_api::records::ServiceImport>> {
    let id = cluster.name.clone();
    Ok(
        store_records(cluster, Some(causeway_api::records::Kind::ServiceImport))?
            .into_iter()
            .filter_map(|r| match r {
                causeway_api::records::AnyRecord::ServiceImport(i) if i.cluster.as_str() == id => {
                    Some(i)
                }
                _ => None,
            })
            .collect(),
    )
}

/// The records of `kind` (every kind when `None`) in `cluster`'s own
/// store, read from inside the cluster's first node; none when the store
/// does not answer.
pub fn store_records(
    cluster: &ClusterPlan,
    kind: Option<causeway_api::records::Kind>,
) -> Result<Vec<causeway_api::records::AnyRecord>> {
    use causeway_api::store::{EtcdConfig, EtcdStore, Store};
    let mut config = EtcdConfig::new([format!("http://{}:{ETCD_PORT}", cluster.control_plane.ip)]);
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    netns::block_on(&cluster.nodes[0].netns, move || async move {
        let Ok(store) = EtcdStore::connect(&config).await else {
            return Ok(Vec::new());
        };
        Ok(store.list(kind).await?.records)
    })
}

/// The node of `cluster`'s active gateway, as the Endpoint record in the
/// cluster's own store names it (read from inside the cluster's first node).
pub fn active_gateway(cluster: &ClusterPlan) -> Result<Option<String>> {
    let id = cluster.name.clone();
    Ok(
        store_records(cluster, Some(causeway_api::records::Kind::Endpoint))?
            .into_iter()
            .find_map(|r| match r {
                causeway_api::records::AnyRecord::Endpoint(e) if e.cluster.as_str() == id => {
                    Some(e.node_name)
                }
                _ => None,
            }),
    )
}

/// Runs `causeway ARGS` inside `netns` to completion.
fn run_in(netns: &str, args: &[&str]) -> Result<String> {
    let exe = causeway_exe()?;
    let out = Command::new(&exe)
        .args(["enter", "--netns", netns, "--"])
        .arg(&exe)
        .args(args)
        .output()
        .with_context(|| format!("run causeway {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "causeway {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts an etcd serving `ip:2379` in `netns`, with the flags that let
/// one-second leases hold (DESIGN.md, settled decision 6) and compaction on
/// (settled decision 9).
fn start_etcd(state: &mut LabState, target: &str, netns: &str, ip: Ipv4Addr) -> Result<()> {
    let data = state.dir().join("etcd").join(target.replace('/', "-"));
    let client = format!("http://{ip}:{ETCD_PORT}");
    let peer = "http://127.0.0.1:2380";
    let args = [
        "--name".to_owned(),
        "lab".to_owned(),
        "--data-dir".to_owned(),
        data.display().to_string(),
        format!("--listen-client-urls={client},http://127.0.0.1:{ETCD_PORT}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=lab={peer}"),
        "--heartbeat-interval=50".to_owned(),
        "--election-timeout=500".to_owned(),
        "--auto-compaction-mode=revision".to_owned(),
        "--auto-compaction-retention=1000".to_owned(),
        "--logger=zap".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(state, target, netns, "etcd", Path::new("etcd"), &args)
}

/// The running `causeway` binary, which the lab starts its daemons from.
fn causeway_exe() -> Result<PathBuf> {
    std::env::current_exe().context("find the causeway binary")
}

/// True when anything of lab `name` exists: its run directory or a namespace.
pub fn is_up(name: &LabName) -> bool {
    run_dir(name).exists() || !netns::list_with_prefix(&netns_prefix(name)).is_empty()
}

/// Starts `PROGRAM ARGS` inside `netns` as a daemon of the lab, logging to
/// the lab's log directory.
fn spawn(
    state: &mut LabState,
    target: &str,
    netns: &str,
    role: &str,
    program: &Path,
    args: &[&str],
) -> Result<()> {
    let exe = causeway_exe()?;
    let logs = state.logs_dir();
    fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let log = logs.join(format!("{}-{role}.log", target.replace('/', "-")));
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let mut child = Command::new(&exe)
        .args(["enter", "--netns", netns, "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group, so a Ctrl-C meant for `lab up` spares it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {role} in {target}"))?;
    let pid = child.id() as i32;
    // Reap it when it ends, so a long-lived caller (the demo) keeps no zombie.
    std::thread::spawn(move || child.wait());
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect();
    state.record_process(ProcessRecord {
        target: target.to_owned(),
        netns: netns.to_owned(),
        role: role.to_owned(),
        pid,
        log,
        command,
    })
}

/// Waits until something listens on `addr` inside `netns`.
fn wait_for_port(netns: &str, addr: SocketAddr) -> Result<()> {
    let ns = netns.to_owned();
    netns::within(netns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nothing listens on {addr} in {ns} after 10 s: see the lab's logs");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Stops every process inside the lab's namespaces and removes the
/// namespaces and the run directory. Works from the state file, and without
/// it from the namespace names alone, so it also cleans up after a crash.
/// Returns whether there was anything to take down.
pub fn down(name: &LabName) -> Result<bool> {
    let prefix = netns_prefix(name);
    let mut namespaces: BTreeSet<String> = netns::list_with_prefix(&prefix).into_iter().collect();
    if let Ok(Some(state)) = LabState::load(name) {
        namespaces.extend(state.namespaces.into_iter().filter(|n| netns::exists(n)));
    }
    let dir = run_dir(name);
    let was_up = !namespaces.is_empty() || dir.exists();
    stop_processes(&namespaces)?;
    for ns in &namespaces {
        netns::delete(ns)?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let left = netns::list_with_prefix(&prefix);
    if !left.is_empty() {
        bail!("namespaces {left:?} are still there after `lab down`");
    }
    Ok(was_up)
}

/// SIGTERM, then SIGKILL, every process whose network namespace is one of
/// `namespaces`, whoever started it (a daemon, or a `lab exec` left running).
fn stop_processes(namespaces: &BTreeSet<String>) -> Result<()> {
    let inodes: Vec<u64> = namespaces.iter().filter_map(|n| netns::inode(n)).collect();
    for (signal, grace) in [
        (Signal::SIGTERM, Duration::from_secs(3)),
        (Signal::SIGKILL, Duration::from_secs(3)),
    ] {
        let pids = netns::pids_in(&inodes);
        if pids.is_empty() {
            return Ok(());
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        let deadline = Instant::now() + grace;
        while !netns::pids_in(&inodes).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let left = netns::pids_in(&inodes);
    if !left.is_empty() {
        bail!("processes {left:?} in the lab's namespaces survived SIGKILL");
    }
    Ok(())
}

/// Runs `cmd` inside `target` (`CLUSTER/POD` or `CLUSTER/NODE`) of lab
/// `name`, as `kubectl exec` would: this process becomes the command.
pub fn exec(name: &LabName, target: &str, cmd: &[OsString]) -> Result<Infallible> {
    let state = load(name)?;
    let netns = resolve(&state.plan, target)?;
    // Every pod and node resolves through its cluster's DNS pod.
    let cluster = target.split_once('/').map(|(c, _)| c).unwrap_or_default();
    let resolv = state.resolv_conf(cluster);
    netns::enter_and_exec(netns, resolv.exists().then_some(resolv.as_path()), cmd)
}

/// The state of lab `name`, or an error that says how to start it.
pub fn load(name: &LabName) -> Result<LabState> {
    LabState::load(name)?.ok_or_else(|| {
        anyhow!("lab {name} is not up: start it with `causeway lab up --name {name}`")
    })
}

/// The namespace of `CLUSTER/MEMBER`, or an error listing what exists.
pub fn resolve<'a>(plan: &'a LabPlan, target: &str) -> Result<&'a str> {
    let known = || {
        plan.clusters
            .iter()
            .flat_map(|c| {
                c.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .chain(c.pods.iter().map(|p| p.name.as_str()))
                    .map(move |m| format!("{}/{m}", c.name))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some((cluster, member)) = target.split_once('/') else {
        bail!(
            "{target:?} is not CLUSTER/POD or CLUSTER/NODE; lab {} has {}",
            plan.spec.name,
            known()
        );
    };
    plan.member_netns(cluster, member).ok_or_else(|| {
        anyhow!(
            "no pod or node {target} in lab {}; it has {}",
            plan.spec.name,
            known()
        )
    })
}

/// Sends `signal` to the gateway of `target` (`CLUSTER/NODE`), as a crash
/// (SIGKILL, `lab kill`) or a clean stop (SIGTERM, `lab stop`) would.
pub fn signal_gateway(name: &LabName, target: &str, signal: Signal) -> Result<i32> {
    let state = load(name)?;
    resolve(&state.plan, target)?;
    let process = state
        .processes
        .iter()
        .rev()
        .find(|p| p.target == target && p.role == "gateway")
        .ok_or_else(|| {
            anyhow!(
                "{target} runs no gateway: gateways run on the gateway candidates (node-0, node-1)"
            )
        })?;
    if !is_running(process.pid) {
        bail!(
            "the gateway on {target} is not running; start it with `causeway lab start {target}`"
        );
    }
    kill(Pid::from_raw(process.pid), signal)
        .with_context(|| format!("signal the gateway on {target}"))?;
    Ok(process.pid)
}

/// Starts the gateway of `target` again, with the arguments it had.
pub fn start_gateway(name: &LabName, target: &str) -> Result<i32> {
    let mut state = load(name)?;
    let process = state
        .processes
        .iter()
        .rev()
        .find(|p| p.target == target && p.role == "gateway")
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "{target} runs no gateway: gateways run on the gateway candidates (node-0, node-1)"
            )
        })?;
    if is_running(process.pid) {
        bail!(
            "the gateway on {target} is running already (pid {})",
            process.pid
        );
    }
    let Some((program, args)) = process.command.split_first() else {
        bail!("the lab did not record how it started the gateway on {target}");
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(
        &mut state,
        target,
        &process.netns,
        "gateway",
        Path::new(program),
        &args,
    )?;
    Ok(state.processes.last().map(|p| p.pid).unwrap_or_default())
}

/// `causeway lab export CLUSTER NAMESPACE/NAME`: writes a ServiceExport
/// manifest into the cluster's manifest directory, as `kubectl apply` would.
pub fn export(name: &LabName, cluster: &str, service: &str, unexport: bool) -> Result<PathBuf> {
    let state = load(name)?;
    let plan = state
        .plan
        .cluster(cluster)
        .ok_or_else(|| anyhow!("lab {name} has no cluster {cluster}"))?;
    let Some((namespace, svc)) = service.split_once('/') else {
        bail!("{service:?} is not NAMESPACE/NAME (for example default/web)");
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !valid(namespace) || !valid(svc) {
        bail!("{service:?} is not a valid NAMESPACE/NAME: use lower-case letters, digits and '-'");
    }
    let file = state
        .manifests_dir(&plan.name)
        .join(format!("serviceexport-{namespace}-{svc}.yaml"));
    if unexport {
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{service} is not exported from {cluster}")
            }
            Err(e) => return Err(e).with_context(|| format!("remove {}", file.display())),
        }
        // The API server deletes an object's status with it.
        let status =
            causeway_api::source::ManifestExportStatusWriter::new(state.manifests_dir(&plan.name))
                .path(namespace, svc);
        if let Err(e) = fs::remove_file(&status)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e).with_context(|| format!("remove {}", status.display()));
        }
        return Ok(file);
    }
    // The creation time an API server would set: the oldest export wins a conflict.
    let created = k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second)?;
    let manifest = format!(
        "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata:\n  name: {svc}\n  namespace: {namespace}\n  creationTimestamp: \"{created}\"\n"
    );
    // Written whole then renamed: the cluster source never reads half a file.
    let tmp = file.with_extension("tmp");
    fs::write(&tmp, manifest).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &file).with_context(|| format!("write {}", file.display()))?;
    Ok(file)
}

/// What `causeway lab status` reports.
#[derive(Debug, Serialize)]
pub struct LabStatus {
    pub name: LabName,
    pub run_dir: String,
    pub distinct_cidrs: bool,
    pub wan: WanPlan,
    pub clusters: Vec<ClusterPlan>,
    /// Each cluster's active gateway node, as its own store names it.
    pub active_gateways: std::collections::BTreeMap<String, Option<String>>,
    /// Each cluster's Globalnet addresses (none with `--distinct-cidrs`).
    pub globalnet: std::collections::BTreeMap<String, GlobalnetStatus>,
    pub processes: Vec<ProcessStatus>,
}

/// A cluster's global addresses.
#[derive(Debug, Serialize)]
pub struct GlobalnetStatus {
    pub global_cidr: String,
    /// The gateway's global IP (its tunnel address).
    pub gateway_ip: Option<Ipv4Addr>,
    /// The egress pool the cluster's traffic is SNATed to.
    pub egress_ips: Vec<Ipv4Addr>,
    /// Each export's global IP(s), from the cluster's ServiceImport records.
    pub exports: std::collections::BTreeMap<String, Vec<String>>,
}

/// The cluster's Globalnet addresses: the egress pool its Endpoint record
/// names (before a gateway has published one, what the gateway's IPAM
/// allocates first), the exports' IPs what its ServiceImport records name.
fn globalnet_status(state: &LabState, cluster: &ClusterPlan) -> Option<GlobalnetStatus> {
    use causeway_globalnet::ipam;
    let cidr: ipnet::Ipv4Net = global_cidr(state, &cluster.name)
        .ok()
        .flatten()?
        .parse()
        .ok()?;
    let allocation = ipam::allocate(&ipam::Request {
        cidr,
        egress_pool_size: ipam::DEFAULT_EGRESS_POOL,
        wanted: Default::default(),
        records: Vec::new(),
    });
    let exports = own_imports(cluster)
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            (
                format!("{}/{}", i.namespace, i.name),
                i.addresses.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    let recorded: Vec<Ipv4Addr> =
        store_records(cluster, Some(causeway_api::records::Kind::Endpoint))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| match r {
                causeway_api::records::AnyRecord::Endpoint(e)
                    if e.cluster.as_str() == cluster.name =>
                {
                    Some(e.egress_ips)
                }
                _ => None,
            })
            .flatten()
            .filter_map(|ip| match ip {
                std::net::IpAddr::V4(ip) => Some(ip),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
    Some(GlobalnetStatus {
        global_cidr: cidr.to_string(),
        gateway_ip: allocation.gateway.ok(),
        egress_ips: if recorded.is_empty() {
            allocation.egress
        } else {
            recorded
        },
        exports,
    })
}

/// A daemon of the lab and whether it still runs.
#[derive(Debug, Serialize)]
pub struct ProcessStatus {
    #[serde(flatten)]
    pub record: ProcessRecord,
    pub running: bool,
}

pub fn status(name: &LabName) -> Result<LabStatus> {
    let state = load(name)?;
    let active_gateways = state
        .plan
        .clusters
        .iter()
        .map(|c| (c.name.clone(), active_gateway(c).ok().flatten()))
        .collect();
    let globalnet = state
        .plan
        .clusters
        .iter()
        .filter_map(|c| Some((c.name.clone(), globalnet_status(&state, c)?)))
        .collect();
    // A restarted daemon shows once: its latest run.
    let mut latest: Vec<&ProcessRecord> = Vec::new();
    for p in state.processes.iter().rev() {
        if !latest
            .iter()
            .any(|l| l.target == p.target && l.role == p.role)
        {
            latest.insert(0, p);
        }
    }
    let processes = latest
        .into_iter()
        .map(|p| ProcessStatus {
            running: is_running(p.pid),
            record: p.clone(),
        })
        .collect();
    Ok(LabStatus {
        name: name.clone(),
        run_dir: state.dir().display().to_string(),
        distinct_cidrs: state.plan.spec.distinct_cidrs,
        wan: state.plan.wan.clone(),
        clusters: state.plan.clusters.clone(),
        active_gateways,
        globalnet,
        processes,
    })
}

/// A live process: not gone and not a zombie.
fn is_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// The status as a person reads it.
pub fn render_status(s: &LabStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let cidrs = if s.distinct_cidrs {
        "distinct"
    } else {
        "identical"
    };
    let _ = writeln!(
        out,
        "lab {} ({cidrs} CIDRs), run directory {}",
        s.name, s.run_dir
    );
    let _ = writeln!(
        out,
        "wan {}  broker {} in {}",
        s.wan.cidr, s.wan.broker_ip, s.wan.broker_netns
    );
    for c in &s.clusters {
        let _ = writeln!(
            out,
            "\ncluster {}  cni {}  pods {}  services {}  nodes {}",
            c.name, c.cni, c.pod_cidr, c.service_cidr, c.node_cidr
        );
        let active = s.active_gateways.get(&c.name).cloned().flatten();
        let _ = writeln!(
            out,
            "  active gateway: {}",
            active.as_deref().unwrap_or("none")
        );
        if let Some(g) = s.globalnet.get(&c.name) {
            let egress: Vec<String> = g.egress_ips.iter().map(ToString::to_string).collect();
            let gateway = g
                .gateway_ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  global CIDR {}  gateway {gateway}  egress {}",
                g.global_cidr,
                egress.join(",")
            );
            for (export, ips) in &g.exports {
                let _ = writeln!(out, "  export {export} on {}", ips.join(","));
            }
        }
        let _ = writeln!(
            out,
            "  {:<10} {:<16} {:<16} {:<16} ROLE",
            "NODE",
            "ADDRESS",
            "WAN",
            match c.cni {
                Cni::Flannel => "POD SLICE",
                Cni::Calico => "IPAM BLOCK",
            }
        );
        for n in &c.nodes {
            let wan = n
                .wan_ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".into());
            let role = if n.is_gateway_candidate() {
                "gateway candidate"
            } else {
                "worker"
            };
            let _ = writeln!(
                out,
                "  {:<10} {:<16} {:<16} {:<16} {role}",
                n.name,
                n.ip,
                wan,
                n.pod_range().to_string()
            );
        }
        let _ = writeln!(
            out,
            "  {:<10} {:<16} {:<16} HOST VETH",
            "POD", "ADDRESS", "NODE"
        );
        for p in &c.pods {
            let _ = writeln!(
                out,
                "  {:<10} {:<16} {:<16} {}",
                p.name, p.ip, p.node, p.host_veth
            );
        }
        for svc in &c.services {
            let _ = writeln!(
                out,
                "  service {}/{} {}:{} -> pods app={} :{}",
                svc.namespace, svc.name, svc.cluster_ip, svc.port, svc.app, svc.target_port
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:<8} {:<8} {:<8} LOG",
        "WHERE", "ROLE", "PID", "STATE"
    );
    for p in &s.processes {
        let state = if p.running { "running" } else { "exited" };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<8} {:<8} {}",
            p.record.target,
            p.record.role,
            p.record.pid,
            state,
            p.record.log.display()
        );
    }
    out
}
