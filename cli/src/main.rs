//! `causeway`: one binary for every role. A thin clap shell over the
//! library; commands that enter a namespace do so here, before any runtime
//! or thread starts (DESIGN.md, settled decision 13).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use causeway_api::records::Kind;
use causeway_cli::lab::{self, plan::LabName, plan::LabSpec};
use causeway_cli::{broker, daemon, netns, show};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use nix::sys::signal::Signal;

#[derive(Parser)]
#[command(
    name = "causeway",
    version,
    about = "Connects Kubernetes clusters whose networks overlap"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulated clusters in network namespaces on this machine.
    #[command(subcommand)]
    Lab(LabCmd),
    /// Run as a gateway candidate of a cluster (one per gateway node).
    Gateway(Box<daemon::GatewayArgs>),
    /// Answer `clusterset.local` (the DNS server), or print CoreDNS configuration.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Lighthouse {
        #[command(subcommand)]
        cmd: Option<LighthouseCmd>,
        #[command(flatten)]
        args: Box<daemon::LighthouseArgs>,
    },
    /// Run the route agent of a node (every node).
    RouteAgent(daemon::RouteAgentArgs),
    /// Set up the broker.
    #[command(subcommand)]
    Broker(BrokerCmd),
    /// Join a cluster to the clusterset: allocate its global CIDR, create its
    /// broker credentials and its WireGuard key (with `--kubernetes-broker`:
    /// write values.yaml and secrets.yaml for `helm install`).
    Join(Box<causeway_cli::broker::JoinFlags>),
    /// Remove this node's Causeway kernel state (nftables tables, routes of
    /// protocols 202 and 203, the WireGuard interface); idempotent.
    Cleanup(causeway_cli::cleanup::CleanupArgs),
    /// Print the CustomResourceDefinitions (Causeway's broker kinds and the
    /// MCS API's ServiceExport and ServiceImport) as YAML, from the Rust types.
    Crdgen,
    /// Check this node and say, per finding, ok/warn/fail, why it matters
    /// and what to change (run it on the active gateway's node).
    Diagnose(causeway_cli::diagnose::DiagnoseArgs),
    /// What the clusterset looks like, from the broker's records.
    Show {
        #[command(subcommand)]
        what: ShowCmd,
    },
    /// Check pod to pod, pod to service and DNS to HTTP across every pair of
    /// clusters, from a gateway node and a worker node; fails on any failure.
    Verify(causeway_cli::verify::VerifyArgs),
    /// TCP throughput or request latency (p50/p90/p99) between pods of two
    /// clusters, with a built-in sender and receiver.
    Benchmark(causeway_cli::benchmark::BenchmarkArgs),
    /// Collect every node's logs, nftables, routes, WireGuard status (public
    /// keys only), conntrack counts and the broker's records into a tarball.
    Gather(causeway_cli::gather::GatherArgs),
    /// Run a command inside a named network namespace (what `lab exec` and
    /// the lab's daemons go through).
    #[command(hide = true)]
    Enter {
        #[arg(long)]
        netns: String,
        /// A file to show as /etc/resolv.conf inside.
        #[arg(long)]
        resolv_conf: Option<PathBuf>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<OsString>,
    },
}

#[derive(Subcommand)]
enum LighthouseCmd {
    /// Print the CoreDNS stanza that forwards clusterset.local (and only it)
    /// to Causeway's DNS service.
    Corefile {
        /// kubeadm, k3s or rke2.
        #[arg(long, default_value = "kubeadm")]
        flavour: causeway_lighthouse::corefile::Flavour,
        /// Causeway's DNS service address (ClusterIP:port).
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value = "clusterset.local")]
        zone: String,
        /// CoreDNS cache seconds (at most the answers' TTL).
        #[arg(long, default_value_t = 5)]
        cache_seconds: u32,
    },
}

#[derive(Subcommand)]
enum ShowCmd {
    /// Each cluster's active gateway: backend, public address, subnets.
    Endpoints(ShowArgs),
    /// What each active gateway reports about each peer.
    Connections(ShowArgs),
    /// Every exported service of every cluster and the address others use.
    Exports(ShowArgs),
    /// A picture of the clusterset: clusters, gateways (active, standby),
    /// tunnels with status and RTT, global CIDRs and exports.
    Topology(causeway_cli::topology::TopologyArgs),
}

#[derive(Args)]
struct ShowArgs {
    /// The broker connection written by `causeway join`.
    #[arg(long, env = "CAUSEWAY_BROKER_CONFIG")]
    broker_config: PathBuf,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
    /// With `exports`: also print this cluster's export conditions (Valid,
    /// Ready, Conflict), from the file its gateway's `--export-status` names.
    #[arg(long)]
    status_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BrokerCmd {
    /// Create the root user and the registry, and turn etcd's auth on.
    Init {
        /// The broker's etcd endpoints, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// A file holding the root password to set.
        #[arg(long)]
        root_password_file: PathBuf,
        /// The clusterset range global CIDRs are allocated from.
        #[arg(long, default_value = "242.0.0.0/8")]
        global_range: Ipv4Net,
        /// The prefix length of each cluster's global CIDR.
        #[arg(long, default_value_t = 16)]
        global_prefix: u8,
    },
}

#[derive(Args)]
struct LabName_ {
    /// The lab's name: it prefixes every namespace the lab makes.
    #[arg(long, default_value = "demo", env = "CAUSEWAY_LAB")]
    name: LabName,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the clusters and start their daemons.
    Up {
        #[command(flatten)]
        lab: LabName_,
        /// How many clusters (named a, b, c, ...).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=lab::plan::MAX_CLUSTERS as i64))]
        clusters: u8,
        /// Give each cluster its own pod, service and node CIDRs instead of
        /// the same kubeadm defaults.
        #[arg(long)]
        distinct_cidrs: bool,
        /// The CNI the clusters are wired like: `flannel` or `calico` for
        /// all, or per cluster (`a=flannel,b=calico`).
        #[arg(long, default_value = "flannel")]
        cni: lab::plan::CniChoice,
        /// `--answer` of every cluster's DNS daemon (`per-cluster` or
        /// `clusterset-ip`); default: the daemon's own.
        #[arg(long, value_parser = ["per-cluster", "clusterset-ip"])]
        dns_answer: Option<String>,
    },
    /// Stop every process of the lab and remove everything it made.
    Down {
        #[command(flatten)]
        lab: LabName_,
    },
    /// Clusters, nodes, pods, addresses and daemons of the lab.
    Status {
        #[command(flatten)]
        lab: LabName_,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run a command inside a pod or node, as `kubectl exec` would.
    Exec {
        #[command(flatten)]
        lab: LabName_,
        /// CLUSTER/POD or CLUSTER/NODE, for example a/client-0 or b/node-1.
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
    /// The main job: two clusters with identical CIDRs, end to end.
    Demo {
        #[command(flatten)]
        lab: LabName_,
        /// Leave the lab up at the end.
        #[arg(long)]
        keep: bool,
    },
    /// SIGKILL the gateway on a node, as a crash would (failover).
    Kill {
        #[command(flatten)]
        lab: LabName_,
        /// CLUSTER/NODE, for example b/node-0.
        target: String,
    },
    /// SIGTERM the gateway on a node: a clean stop that hands over at once.
    Stop {
        #[command(flatten)]
        lab: LabName_,
        /// CLUSTER/NODE, for example b/node-0.
        target: String,
    },
    /// SIGKILL the gateway on a node and start it again at once, as a
    /// container restart would: within the lease TTL it keeps its lease.
    Restart {
        #[command(flatten)]
        lab: LabName_,
        /// CLUSTER/NODE, for example b/node-0.
        target: String,
    },
    /// Start a stopped or killed gateway again.
    Start {
        #[command(flatten)]
        lab: LabName_,
        /// CLUSTER/NODE, for example b/node-0.
        target: String,
    },
    /// Export a Service of a cluster (writes a ServiceExport manifest).
    Export {
        #[command(flatten)]
        lab: LabName_,
        /// The cluster, for example b.
        cluster: String,
        /// NAMESPACE/NAME of the Service, for example default/web.
        service: String,
        /// Remove the export instead.
        #[arg(long)]
        unexport: bool,
    },
    /// Time an outage: GET a service every interval and report the longest
    /// run of failures (run it inside a pod with `lab exec`).
    #[command(hide = true)]
    Probe {
        /// ADDRESS:PORT of an HTTP server.
        target: SocketAddr,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Stop after this many successes that follow a failure.
        #[arg(long, default_value_t = 20)]
        settle: u32,
        /// Stop after this many seconds in any case.
        #[arg(long, default_value_t = 30)]
        deadline_s: u64,
    },
    /// The lab's service proxy (kube-proxy's part), run on every node.
    #[command(hide = true)]
    Proxy(lab::proxy::ProxyArgs),
    /// The HTTP echo server the lab's web pods run.
    Echo {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        pod: String,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Also answer TCP connections and UDP datagrams here with the
        /// same JSON (the MCS conformance suite's `serve-hostname`).
        #[arg(long)]
        hostname_listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The chart tests parse every container's args with this parser, and no more.
    if std::env::var_os("CAUSEWAY_PARSE_ONLY").is_some() {
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        // These replace the process: they must run before any thread starts.
        Cmd::Enter {
            netns,
            resolv_conf,
            cmd,
        } => {
            netns::enter_and_exec(&netns, resolv_conf.as_deref(), &cmd)?;
            Ok(())
        }
        Cmd::Lab(LabCmd::Exec { lab, target, cmd }) => {
            lab::exec(&lab.name, &target, &cmd)?;
            Ok(())
        }
        Cmd::Lab(cmd) => run_lab(cmd),
        Cmd::Verify(args) => causeway_cli::verify::command(args),
        Cmd::Benchmark(args) => causeway_cli::benchmark::command(args),
        Cmd::Gather(args) => causeway_cli::gather::command(args),
        Cmd::Show {
            what: ShowCmd::Topology(args),
        } => causeway_cli::topology::command(args),
        Cmd::Crdgen => {
            let crds = causeway_api::store::causeway_crds()
                .into_iter()
                .chain(causeway_api::mcs::mcs_crds());
            for crd in crds {
                print!("---\n{}", serde_yaml::to_string(&crd)?);
            }
            Ok(())
        }
        Cmd::Show { what } => {
            let (args, kind) = match &what {
                ShowCmd::Endpoints(a) => (a, Kind::Endpoint),
                ShowCmd::Connections(a) => (a, Kind::ConnectionStatus),
                ShowCmd::Exports(a) => (a, Kind::ServiceImport),
                ShowCmd::Topology(_) => unreachable!("show topology is handled above"),
            };
            let broker = broker::BrokerFile::load(&args.broker_config)?;
            let mut records = runtime()?.block_on(show::list(&broker, kind))?;
            if let ShowCmd::Exports(_) = what {
                // Each cluster's global CIDR and egress pool head the exports.
                for kind in [Kind::Cluster, Kind::Endpoint] {
                    records.extend(runtime()?.block_on(show::list(&broker, kind))?);
                }
            }
            let text = match (&what, args.output) {
                (ShowCmd::Topology(_), _) => unreachable!("show topology is handled above"),
                (ShowCmd::Endpoints(_), Output::Text) => {
                    show::render_endpoints(&show::endpoints(&records))
                }
                (ShowCmd::Connections(_), Output::Text) => {
                    show::render_connections(&show::connections(&records))
                }
                (ShowCmd::Exports(_), Output::Text) => format!(
                    "{}{}",
                    show::render_globals(&show::cluster_globals(&records)),
                    show::render_imports(&show::imports(&records))
                ),
                (ShowCmd::Endpoints(_), Output::Json) => {
                    serde_json::to_string_pretty(&show::endpoints(&records))?
                }
                (ShowCmd::Connections(_), Output::Json) => {
                    serde_json::to_string_pretty(&show::connections(&records))?
                }
                (ShowCmd::Exports(_), Output::Json) => {
                    serde_json::to_string_pretty(&serde_json::json!({
                        "clusters": show::cluster_globals(&records),
                        "exports": show::imports(&records),
                    }))?
                }
            };
            print!("{text}");
            if matches!(args.output, Output::Json) {
                println!();
            }
            if let (ShowCmd::Exports(_), Some(file)) = (&what, &args.status_file) {
                let statuses = causeway_lighthouse::export::read_status_file(file)?;
                println!();
                print!(
                    "{}",
                    causeway_lighthouse::export::render_status_table(
                        statuses.iter().map(|(k, v)| (k.clone(), v))
                    )
                );
            }
            Ok(())
        }
        Cmd::Diagnose(args) => {
            if !causeway_cli::diagnose::command(args)? {
                // A failed check: the report is printed, the exit status says it.
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Gateway(args) => runtime()?.block_on(daemon::gateway(*args)),
        Cmd::Lighthouse {
            cmd:
                Some(LighthouseCmd::Corefile {
                    flavour,
                    upstream,
                    zone,
                    cache_seconds,
                }),
            ..
        } => {
            let options = causeway_lighthouse::corefile::CorefileOptions {
                zone,
                upstream,
                cache_seconds,
            };
            print!(
                "{}",
                causeway_lighthouse::corefile::render(flavour, &options)
            );
            Ok(())
        }
        Cmd::Lighthouse { cmd: None, args } => runtime()?.block_on(daemon::lighthouse(*args)),
        Cmd::RouteAgent(args) => runtime()?.block_on(daemon::route_agent(args)),
        Cmd::Broker(BrokerCmd::Init {
            endpoints,
            root_password_file,
            global_range,
            global_prefix,
        }) => runtime()?.block_on(broker::init(
            endpoints,
            &root_password_file,
            global_range,
            global_prefix,
        )),
        Cmd::Join(flags) => {
            let out = flags.out.clone();
            let joined = runtime()?.block_on(broker::join_command(*flags))?;
            let global = joined
                .global_cidr
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".into());
            println!(
                "joined cluster {} (global CIDR {global}); its files are in {}",
                joined.id,
                out.display()
            );
            Ok(())
        }
        Cmd::Cleanup(args) => {
            let removed = runtime()?.block_on(causeway_cli::cleanup::cleanup(&args))?;
            print!("{}", removed.render());
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

fn run_lab(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up {
            lab,
            clusters,
            distinct_cidrs,
            cni,
            dns_answer,
        } => {
            let state = lab::up_with(
                LabSpec {
                    name: lab.name.clone(),
                    clusters,
                    distinct_cidrs,
                    dns_answer,
                },
                &cni,
            )?;
            print!(
                "{}",
                lab::render_status(&lab::status(&state.plan.spec.name)?)
            );
            Ok(())
        }
        LabCmd::Down { lab } => {
            if lab::down(&lab.name)? {
                println!("lab {} is down", lab.name);
            } else {
                println!("lab {} was not up; nothing to do", lab.name);
            }
            Ok(())
        }
        LabCmd::Status { lab, output } => {
            let status = lab::status(&lab.name)?;
            match output {
                Output::Text => print!("{}", lab::render_status(&status)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
            Ok(())
        }
        LabCmd::Demo { lab, keep } => lab::demo::run(lab.name, keep),
        LabCmd::Export {
            lab,
            cluster,
            service,
            unexport,
        } => {
            let file = lab::export(&lab.name, &cluster, &service, unexport)?;
            let verb = if unexport { "unexported" } else { "exported" };
            println!(
                "{verb} {service} from cluster {cluster} ({})",
                file.display()
            );
            Ok(())
        }
        LabCmd::Probe {
            target,
            interval_ms,
            settle,
            deadline_s,
        } => {
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(lab::probe::run(
                    target,
                    std::time::Duration::from_millis(interval_ms),
                    settle,
                    std::time::Duration::from_secs(deadline_s),
                ))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        LabCmd::Kill { lab, target } => {
            let pid = lab::signal_gateway(&lab.name, &target, Signal::SIGKILL)?;
            println!("killed the gateway on {target} (pid {pid})");
            Ok(())
        }
        LabCmd::Stop { lab, target } => {
            let pid = lab::signal_gateway(&lab.name, &target, Signal::SIGTERM)?;
            println!("stopping the gateway on {target} (pid {pid})");
            Ok(())
        }
        LabCmd::Restart { lab, target } => {
            let old = lab::signal_gateway(&lab.name, &target, Signal::SIGKILL)?;
            // Wait (bounded) until the old process is gone.
            for _ in 0..100 {
                if !std::path::Path::new(&format!("/proc/{old}/ns/net")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let pid = lab::start_gateway(&lab.name, &target)?;
            println!("restarted the gateway on {target} (pid {old} -> {pid})");
            Ok(())
        }
        LabCmd::Start { lab, target } => {
            let pid = lab::start_gateway(&lab.name, &target)?;
            println!("started the gateway on {target} (pid {pid})");
            Ok(())
        }
        LabCmd::Echo {
            cluster,
            pod,
            listen,
            hostname_listen,
        } => tokio::runtime::Runtime::new()?.block_on(lab::echo::serve(
            listen,
            hostname_listen,
            cluster,
            pod,
        )),
        LabCmd::Proxy(args) => lab::proxy::command(args),
        LabCmd::Exec { .. } => unreachable!("handled before any thread starts"),
    }
}
