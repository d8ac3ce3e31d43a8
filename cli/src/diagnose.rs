//! `causeway diagnose`: checks a node and says, for each finding, whether it
//! is ok, a warning or a failure, what was checked, why it matters and what
//! to change.
//!
//! Data flow: each check family gathers plain facts through a [`host::Host`]
//! (sysctls, links, routes, the nftables ruleset, conntrack, the running
//! gateway's `/metrics`, and real probes: UDP to a peer's WireGuard and
//! health ports, DF pings through the tunnel), then a pure function turns
//! those facts into [`Finding`]s. The real host is [`host::RealHost`]; unit
//! tests feed the pure functions facts directly, and the probing steps a
//! [`host::fake::FakeHost`]. Diagnostics never use the cluster's WireGuard
//! key (settled decision 4): what the gateway knows of its peers comes from
//! its metrics ([`exposed`] registers what diagnostics read there).

pub mod cni;
pub mod connections;
pub mod conntrack;
pub mod exposed;
pub mod firewall;
pub mod host;
pub mod kernel;
pub mod metrics;
pub mod mtu;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use host::{Host, RealHost};

/// A check family (`causeway diagnose <family>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// WireGuard module or TUN, IP forwarding, rp_filter, nftables.
    Kernel,
    /// Which CNI runs, NAT chains that would translate before Causeway's, kube-proxy's mode.
    Cni,
    /// Whether the WireGuard and health ports get through between gateways (probes).
    Firewall,
    /// Tunnel MTU against the underlay's, and a path-MTU probe through the tunnel.
    Mtu,
    /// Conntrack entries, timeouts, port ranges and SNAT ports per egress IP.
    Conntrack,
    /// Each peer's status, handshake age, RTT and loss.
    Connections,
}

impl Check {
    /// Every family, in the order `all` runs them.
    pub const ALL: [Check; 6] = [
        Check::Kernel,
        Check::Cni,
        Check::Firewall,
        Check::Mtu,
        Check::Conntrack,
        Check::Connections,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Check::Kernel => "kernel",
            Check::Cni => "cni",
            Check::Firewall => "firewall",
            Check::Mtu => "mtu",
            Check::Conntrack => "conntrack",
            Check::Connections => "connections",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a finding came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub status: Status,
    /// What was checked and what was found, e.g. `rp_filter on causeway0: strict (1)`.
    pub what: String,
    /// Why it matters.
    pub why: String,
    /// What to change; `None` when nothing needs to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    /// A finding that needs nothing changed.
    pub fn ok(check: Check, what: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            what: what.into(),
            why: why.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(
        check: Check,
        what: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Self::ok(check, what, why)
        }
    }

    /// A failure with its fix.
    pub fn fail(
        check: Check,
        what: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Self::ok(check, what, why)
        }
    }
}

/// Every finding of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// How many findings have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// Whether any finding failed.
    pub fn failed(&self) -> bool {
        self.count(Status::Fail) > 0
    }
}

/// One line per finding, then a summary line.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        out.push_str(&format!(
            "{:<4}  {:<11}  {}. Why: {}.",
            f.status.to_string(),
            f.check.to_string(),
            f.what.trim_end_matches('.'),
            f.why.trim_end_matches('.')
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!(" Fix: {}.", fix.trim_end_matches('.')));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{} ok, {} warn, {} fail\n",
        report.count(Status::Ok),
        report.count(Status::Warn),
        report.count(Status::Fail)
    ));
    out
}

/// Runs the check families `checks` against `host`, in order.
pub fn run(host: &dyn Host, checks: &[Check]) -> Report {
    let gateway = host.gateway();
    let mut report = Report::default();
    for check in checks {
        let findings = match check {
            Check::Kernel => kernel::findings(&kernel::gather(host, gateway.as_ref().ok())),
            Check::Cni => cni::findings(&cni::gather(host)),
            Check::Firewall => firewall::findings(&firewall::gather(host, &gateway)),
            Check::Mtu => mtu::findings(&mtu::gather(host, &gateway)),
            Check::Conntrack => {
                conntrack::findings(&conntrack::gather(host, gateway.as_ref().ok()))
            }
            Check::Connections => connections::findings(&connections::gather(
                host,
                &gateway,
                connections::LOSS_INTERVAL,
            )),
        };
        report.findings.extend(findings);
    }
    report
}

/// Which families to run: `all` or one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    All,
    Kernel,
    Cni,
    Firewall,
    Mtu,
    Conntrack,
    Connections,
}

impl Which {
    /// The families this stands for.
    pub fn checks(self) -> Vec<Check> {
        match self {
            Which::All => Check::ALL.to_vec(),
            Which::Kernel => vec![Check::Kernel],
            Which::Cni => vec![Check::Cni],
            Which::Firewall => vec![Check::Firewall],
            Which::Mtu => vec![Check::Mtu],
            Which::Conntrack => vec![Check::Conntrack],
            Which::Connections => vec![Check::Connections],
        }
    }
}

/// Text or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Flags of `causeway diagnose`.
#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// Which checks: all (default), kernel, cni, firewall, mtu, conntrack, connections.
    #[arg(value_enum, default_value = "all")]
    pub what: Which,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Format,
    /// Where this node's gateway serves /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics: SocketAddr,
    /// The /proc to read sysctls and conntrack counters from (a recorded copy in tests).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// A recorded `conntrack -L` listing to read instead of running `conntrack -L`.
    #[arg(long)]
    pub conntrack_file: Option<PathBuf>,
    /// The gateway's WireGuard interface.
    #[arg(long, default_value = "causeway0")]
    pub interface: String,
}

/// `causeway diagnose`: prints the report; returns whether nothing failed.
pub fn command(args: DiagnoseArgs) -> anyhow::Result<bool> {
    let host = RealHost {
        proc_root: args.proc_root,
        metrics: args.metrics,
        conntrack_file: args.conntrack_file,
        interface: args.interface,
    };
    let report = run(&host, &args.what.checks());
    match args.output {
        Format::Text => print!("{}", render_text(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(!report.failed())
}

/// The checks' table tests: `out` has these statuses, in order, and says
/// `needle` somewhere.
#[cfg(test)]
pub(crate) fn assert_findings(case: &str, out: &[Finding], statuses: &[Status], needle: &str) {
    let got: Vec<Status> = out.iter().map(|f| f.status).collect();
    assert_eq!(got, statuses, "{case}: {out:#?}");
    let text = format!("{out:?}");
    assert!(text.contains(needle), "{case}: no {needle:?} in {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_one_line_per_finding_and_a_summary() {
        let report = Report {
            findings: vec![
                Finding::ok(Check::Kernel, "ip_forward: on", "the node routes"),
                Finding::fail(
                    Check::Mtu,
                    "tunnel MTU 1440 over wan0's 1280",
                    "outer packets do not fit",
                    "set --tunnel-mtu 1220",
                ),
            ],
        };
        let text = render_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "ok    kernel       ip_forward: on. Why: the node routes."
        );
        assert!(lines[1].starts_with("fail  mtu"));
        assert!(lines[1].ends_with("Fix: set --tunnel-mtu 1220."));
        assert_eq!(lines[2], "1 ok, 0 warn, 1 fail");
        assert!(report.failed());
    }
}
