//! `diagnose cni`: which CNI runs (from its links and chains), whether any
//! NAT chain would translate inter-cluster traffic before Causeway's chains
//! bind it (netfilter: the first NAT chain to bind a connection decides it;
//! two at one priority run in no defined order), and kube-proxy's mode.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;
use serde_json::Value;

use super::host::Host;
use super::{Check, Finding};

/// A chain of the ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// `nat`, `filter`, ... for a base chain.
    pub kind: Option<String>,
    pub hook: Option<String>,
    pub prio: Option<i32>,
}

/// What one rule does, as far as NAT precedence cares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// Chains it jumps or goes to.
    pub targets: Vec<String>,
    /// `masquerade`, `snat`, `dnat`, `redirect`.
    pub translations: Vec<String>,
}

/// The parts of `nft -j list ruleset` the checks read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    pub tables: Vec<(String, String)>,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

impl Ruleset {
    /// Reads `nft -j list ruleset` output.
    pub fn from_json(v: &Value) -> Self {
        let mut r = Ruleset::default();
        let s = |o: &Value, k: &str| o[k].as_str().unwrap_or_default().to_owned();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(t) = item.get("table") {
                r.tables.push((s(t, "family"), s(t, "name")));
            } else if let Some(c) = item.get("chain") {
                r.chains.push(Chain {
                    family: s(c, "family"),
                    table: s(c, "table"),
                    name: s(c, "name"),
                    kind: c["type"].as_str().map(str::to_owned),
                    hook: c["hook"].as_str().map(str::to_owned),
                    prio: c["prio"].as_i64().map(|p| p as i32),
                });
            } else if let Some(rule) = item.get("rule") {
                let mut out = Rule {
                    family: s(rule, "family"),
                    table: s(rule, "table"),
                    chain: s(rule, "chain"),
                    ..Default::default()
                };
                for e in rule["expr"].as_array().into_iter().flatten() {
                    walk(e, &mut out);
                }
                r.rules.push(out);
            }
        }
        r
    }
}

/// Collects jumps and translations anywhere in an expression (verdict maps included).
fn walk(e: &Value, out: &mut Rule) {
    match e {
        Value::Object(map) => {
            for (k, v) in map {
                match k.as_str() {
                    "jump" | "goto" => {
                        if let Some(t) = v["target"].as_str() {
                            out.targets.push(t.to_owned());
                        }
                    }
                    "masquerade" | "snat" | "dnat" | "redirect" => {
                        out.translations.push(k.clone());
                    }
                    // iptables-nft writes targets nft cannot express natively
                    // as xtables expressions (Calico's and kube-proxy's rules).
                    "xt" if v["type"] == "target" => {
                        let name = v["name"].as_str().unwrap_or_default();
                        if ["MASQUERADE", "SNAT", "DNAT", "REDIRECT", "NETMAP"].contains(&name) {
                            out.translations.push(name.to_lowercase());
                        }
                    }
                    _ => {}
                }
                walk(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
        _ => {}
    }
}

/// What the CNI check looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniFacts {
    /// Link names and kinds.
    pub links: Vec<(String, Option<String>)>,
    pub ruleset: Result<Ruleset, String>,
}

/// Gathers links and the nftables ruleset.
pub fn gather(host: &dyn Host) -> CniFacts {
    CniFacts {
        links: host
            .links()
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.name, l.kind))
            .collect(),
        ruleset: host.nft_ruleset().map(|v| Ruleset::from_json(&v)),
    }
}

/// Netfilter's standard NAT priorities.
const SRCNAT: i32 = 100;
const DSTNAT: i32 = -100;
/// Causeway's identity chain (settled decision 2), when none is found.
const DEFAULT_CAUSEWAY_SRCNAT: i32 = SRCNAT - 10;

fn is_causeway(table: &str) -> bool {
    table.starts_with("causeway")
}

/// `srcnat - 30 (70)` style.
fn prio_name(hook: &str, prio: i32) -> String {
    let (base, name) = if hook == "postrouting" || hook == "input" {
        (SRCNAT, "srcnat")
    } else {
        (DSTNAT, "dstnat")
    };
    match prio - base {
        0 => format!("{name} ({prio})"),
        d if d < 0 => format!("{name} - {} ({prio})", -d),
        d => format!("{name} + {d} ({prio})"),
    }
}

/// A NAT base chain outside Causeway's tables that translates (itself or
/// in a chain it jumps to).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ForeignNat {
    chain: Chain,
    /// `masquerade in FLANNEL-POSTRTG`, ...
    translations: Vec<String>,
}

fn foreign_nat(r: &Ruleset) -> Vec<ForeignNat> {
    let mut rules: BTreeMap<(&str, &str, &str), Vec<&Rule>> = BTreeMap::new();
    for rule in &r.rules {
        rules
            .entry((&rule.family, &rule.table, &rule.chain))
            .or_default()
            .push(rule);
    }
    r.chains
        .iter()
        .filter(|c| c.kind.as_deref() == Some("nat") && c.hook.is_some() && !is_causeway(&c.table))
        .map(|c| {
            let mut seen = BTreeSet::new();
            let mut queue = VecDeque::from([c.name.as_str()]);
            let mut translations = Vec::new();
            while let Some(name) = queue.pop_front() {
                if !seen.insert(name) || seen.len() > 1000 {
                    continue;
                }
                for rule in rules
                    .get(&(c.family.as_str(), c.table.as_str(), name))
                    .into_iter()
                    .flatten()
                {
                    for t in &rule.translations {
                        let found = format!("{t} in {name}");
                        if !translations.contains(&found) {
                            translations.push(found);
                        }
                    }
                    queue.extend(rule.targets.iter().map(String::as_str));
                }
            }
            ForeignNat {
                chain: c.clone(),
                translations,
            }
        })
        .filter(|f| !f.translations.is_empty())
        .collect()
}

/// Which CNI runs, with the evidence.
fn detect_cni(f: &CniFacts) -> (String, Vec<String>) {
    let chains: Vec<&Chain> = f
        .ruleset
        .as_ref()
        .map(|r| r.chains.iter().collect())
        .unwrap_or_default();
    let mut evidence: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, kind) in &f.links {
        let cni = if name.starts_with("cali") || name == "vxlan.calico" {
            Some("Calico")
        } else if name.starts_with("flannel") {
            Some("Flannel")
        } else if name.starts_with("cilium") {
            Some("Cilium")
        } else if name == "weave" {
            Some("Weave")
        } else {
            None
        };
        if let Some(cni) = cni {
            let e = evidence.entry(cni).or_default();
            if e.len() < 3 {
                e.push(format!("link {name}"));
            }
        }
        if name == "cni0" && kind.as_deref() == Some("bridge") {
            evidence
                .entry("Flannel")
                .or_default()
                .push("bridge cni0".into());
        }
    }
    for c in chains {
        let cni = if c.name.starts_with("cali-") {
            Some("Calico")
        } else if c.name.starts_with("FLANNEL") {
            Some("Flannel")
        } else if c.name.starts_with("CILIUM") {
            Some("Cilium")
        } else {
            None
        };
        if let Some(cni) = cni {
            let e = evidence.entry(cni).or_default();
            if e.len() < 4 {
                e.push(format!("chain {} {} {}", c.family, c.table, c.name));
            }
        }
    }
    // Calico and Cilium leave traces that a bridge alone cannot; prefer them.
    for cni in ["Calico", "Cilium", "Weave", "Flannel"] {
        if let Some(e) = evidence.remove(cni) {
            return (cni.to_owned(), e);
        }
    }
    ("other".into(), Vec::new())
}

/// kube-proxy's mode, with the evidence.
fn kube_proxy(f: &CniFacts) -> (&'static str, String) {
    let rs = f.ruleset.as_ref().ok();
    if rs.is_some_and(|r| r.tables.iter().any(|(_, t)| t == "kube-proxy")) {
        return ("nftables", "table kube-proxy".into());
    }
    if f.links.iter().any(|(n, _)| n == "kube-ipvs0") {
        return ("ipvs", "link kube-ipvs0".into());
    }
    if rs.is_some_and(|r| r.chains.iter().any(|c| c.name == "KUBE-SERVICES")) {
        return ("iptables", "chain KUBE-SERVICES".into());
    }
    ("none found", "no kube-proxy table, chain or link".into())
}

/// Turns CNI facts into findings.
pub fn findings(f: &CniFacts) -> Vec<Finding> {
    let k = Check::Cni;
    let mut out = Vec::new();
    let (cni, evidence) = detect_cni(f);
    out.push(Finding::ok(
        k,
        if evidence.is_empty() {
            "CNI: not one diagnose recognises (no Flannel, Calico or Cilium traces)".to_owned()
        } else {
            format!("CNI: {cni} ({})", evidence.join(", "))
        },
        "Causeway works with any CNI that routes pod CIDRs on the host; its NAT chains bind inter-cluster traffic before the CNI's masquerade",
    ));
    let rs = match &f.ruleset {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::fail(
                k,
                format!("NAT chains: cannot read the nftables ruleset: {e}"),
                "a CNI or kube-proxy NAT chain that runs before Causeway's translates inter-cluster traffic",
                "run diagnose as root (CAP_NET_ADMIN) on a node with `nft`",
            ));
            return out;
        }
    };
    let causeway_prio = |hook: &str| {
        rs.chains
            .iter()
            .filter(|c| {
                is_causeway(&c.table)
                    && c.kind.as_deref() == Some("nat")
                    && c.hook.as_deref() == Some(hook)
            })
            .filter_map(|c| c.prio)
            .max()
    };
    let post = causeway_prio("postrouting");
    let pre = causeway_prio("prerouting");
    let post_ref = post.unwrap_or(DEFAULT_CAUSEWAY_SRCNAT);
    let mut later = Vec::new();
    for n in foreign_nat(rs) {
        let c = &n.chain;
        let hook = c.hook.as_deref().unwrap_or_default();
        let prio = c.prio.unwrap_or(0);
        let reference = match hook {
            "postrouting" => Some(post_ref),
            "prerouting" | "output" => pre,
            _ => None,
        };
        let label = format!("{} {} {}", c.family, c.table, c.name);
        let Some(reference) = reference else {
            later.push(format!("{label} ({hook} {})", prio_name(hook, prio)));
            continue;
        };
        if prio < reference {
            out.push(Finding::fail(
                k,
                format!(
                    "NAT chain {label} at {hook} {} runs before Causeway's ({}) and translates ({})",
                    prio_name(hook, prio),
                    prio_name(hook, reference),
                    n.translations.join(", ")
                ),
                "the first NAT chain to bind a connection decides it and later NAT chains are skipped, so inter-cluster connections it matches get its translation instead of Causeway's (remote clusters see the wrong source, or replies never match)",
                format!(
                    "move chain {label} to priority {} or later, or make it `return` for Causeway's subnets before it translates; Causeway never edits another component's chains",
                    prio_name(hook, reference + 1)
                ),
            ));
        } else if prio == reference {
            out.push(Finding::fail(
                k,
                format!(
                    "NAT chain {label} shares priority {} with Causeway's chain at {hook} and translates ({})",
                    prio_name(hook, prio),
                    n.translations.join(", ")
                ),
                "two NAT chains at one priority run in no defined order: sometimes this one binds inter-cluster connections first",
                format!("move chain {label} to priority {} or later", prio_name(hook, reference + 1)),
            ));
        } else {
            later.push(format!("{label} ({hook} {})", prio_name(hook, prio)));
        }
    }
    let mine = match (post, pre) {
        (None, None) => {
            "no Causeway NAT chain on this node; the route agent's comes at srcnat - 10 (90)"
                .to_owned()
        }
        _ => format!(
            "Causeway's chains at {}",
            [
                post.map(|p| format!("postrouting {}", prio_name("postrouting", p))),
                pre.map(|p| format!("prerouting {}", prio_name("prerouting", p)))
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ")
        ),
    };
    if !out.iter().any(|f| f.status != super::Status::Ok) {
        out.push(Finding::ok(
            k,
            if later.is_empty() {
                format!("NAT precedence: {mine}; no other chain translates")
            } else {
                format!("NAT precedence: {mine}, before the other translating chains: {}", later.join(", "))
            },
            "Causeway's chains bind inter-cluster connections first, so the CNI's masquerade and kube-proxy skip them",
        ));
    }
    let (mode, why) = kube_proxy(f);
    out.push(Finding::ok(
        k,
        format!("kube-proxy mode: {mode} ({why})"),
        "Causeway DNATs global IPs straight to endpoints before kube-proxy, so any mode (or none) works",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;
    use serde_json::json;

    fn lab_ruleset(extra: Vec<Value>) -> Value {
        let mut items = vec![
            json!({"table": {"family": "ip", "name": "nat"}}),
            json!({"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "type": "nat", "hook": "postrouting", "prio": 100}}),
            json!({"chain": {"family": "ip", "table": "nat", "name": "FLANNEL-POSTRTG"}}),
            json!({"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "expr": [{"jump": {"target": "FLANNEL-POSTRTG"}}]}}),
            json!({"rule": {"family": "ip", "table": "nat", "chain": "FLANNEL-POSTRTG", "expr": [{"masquerade": {"flags": "fully-random"}}]}}),
            json!({"table": {"family": "ip", "name": "causeway-node"}}),
            json!({"chain": {"family": "ip", "table": "causeway-node", "name": "identity", "type": "nat", "hook": "postrouting", "prio": 90}}),
            json!({"rule": {"family": "ip", "table": "causeway-node", "chain": "identity", "expr": [{"snat": {"addr": {"payload": {"protocol": "ip", "field": "saddr"}}}}]}}),
            json!({"table": {"family": "ip", "name": "causeway-gateway"}}),
            json!({"chain": {"family": "ip", "table": "causeway-gateway", "name": "gn-egress", "type": "nat", "hook": "postrouting", "prio": 80}}),
            json!({"chain": {"family": "ip", "table": "causeway-gateway", "name": "gn-ingress", "type": "nat", "hook": "prerouting", "prio": -120}}),
        ];
        items.extend(extra);
        json!({ "nftables": items })
    }

    fn facts(ruleset: Value, links: &[(&str, Option<&str>)]) -> CniFacts {
        CniFacts {
            links: links
                .iter()
                .map(|(n, k)| ((*n).to_owned(), k.map(str::to_owned)))
                .collect(),
            ruleset: Ok(Ruleset::from_json(&ruleset)),
        }
    }

    #[test]
    fn table() {
        let rogue = |prio: i32, stmt: &str, hook: &str| {
            vec![
                json!({"table": {"family": "ip", "name": "rogue"}}),
                json!({"chain": {"family": "ip", "table": "rogue", "name": "post", "type": "nat", "hook": hook, "prio": prio}}),
                json!({"chain": {"family": "ip", "table": "rogue", "name": "inner"}}),
                json!({"rule": {"family": "ip", "table": "rogue", "chain": "post", "expr": [{"goto": {"target": "inner"}}]}}),
                json!({"rule": {"family": "ip", "table": "rogue", "chain": "inner", "expr": [{ stmt: {"addr": "1.2.3.4"}}]}}),
            ]
        };
        let flannel = [("cni0", Some("bridge")), ("eth0", Some("veth"))];
        let calico = [("cali1234", Some("veth")), ("vxlan.calico", Some("vxlan"))];
        // Calico's natOutgoing as iptables-nft writes it, in its own chains.
        let calico_nat = |prio: i32| {
            vec![
                json!({"chain": {"family": "ip", "table": "nat", "name": "cali-POSTROUTING"}}),
                json!({"chain": {"family": "ip", "table": "nat", "name": "cali-nat-outgoing"}}),
                json!({"chain": {"family": "ip", "table": "nat", "name": "CALI-EARLY", "type": "nat", "hook": "postrouting", "prio": prio}}),
                json!({"rule": {"family": "ip", "table": "nat", "chain": "CALI-EARLY", "expr": [{"xt": {"type": "match", "name": "comment"}}, {"jump": {"target": "cali-POSTROUTING"}}]}}),
                json!({"rule": {"family": "ip", "table": "nat", "chain": "cali-POSTROUTING", "expr": [{"jump": {"target": "cali-nat-outgoing"}}]}}),
                json!({"rule": {"family": "ip", "table": "nat", "chain": "cali-nat-outgoing", "expr": [{"xt": {"type": "match", "name": "comment"}}, {"xt": {"type": "target", "name": "MASQUERADE"}}]}}),
            ]
        };
        let cases: Vec<(&str, CniFacts, Vec<Status>, &str)> = vec![
            (
                "flannel lab",
                facts(lab_ruleset(vec![]), &flannel),
                vec![Status::Ok; 3],
                "CNI: Flannel",
            ),
            (
                "calico",
                facts(lab_ruleset(vec![]), &calico),
                vec![Status::Ok; 3],
                "CNI: Calico (link cali1234, link vxlan.calico)",
            ),
            (
                "calico natOutgoing after Causeway",
                facts(lab_ruleset(calico_nat(100)), &calico),
                vec![Status::Ok; 3],
                "ip nat CALI-EARLY (postrouting srcnat (100))",
            ),
            (
                "calico natOutgoing (iptables-nft) before Causeway",
                facts(lab_ruleset(calico_nat(50)), &calico),
                vec![Status::Ok, Status::Fail, Status::Ok],
                "translates (masquerade in cali-nat-outgoing)",
            ),
            (
                "masquerade at srcnat - 30",
                facts(
                    lab_ruleset(rogue(70, "masquerade", "postrouting")),
                    &flannel,
                ),
                vec![Status::Ok, Status::Fail, Status::Ok],
                "NAT chain ip rogue post at postrouting srcnat - 30 (70) runs before Causeway's (srcnat - 10 (90)) and translates (masquerade in inner)",
            ),
            (
                "snat between Globalnet and the identity chain",
                facts(lab_ruleset(rogue(85, "snat", "postrouting")), &flannel),
                vec![Status::Ok, Status::Fail, Status::Ok],
                "priority srcnat - 9 (91) or later",
            ),
            (
                "same priority as the identity chain",
                facts(
                    lab_ruleset(rogue(90, "masquerade", "postrouting")),
                    &flannel,
                ),
                vec![Status::Ok, Status::Fail, Status::Ok],
                "no defined order",
            ),
            (
                "dnat before Globalnet's ingress",
                facts(lab_ruleset(rogue(-150, "dnat", "prerouting")), &flannel),
                vec![Status::Ok, Status::Fail, Status::Ok],
                "prerouting dstnat - 50 (-150)",
            ),
            (
                "kube-proxy dnat after Globalnet is fine",
                facts(lab_ruleset(rogue(-100, "dnat", "prerouting")), &flannel),
                vec![Status::Ok; 3],
                "before the other translating chains: ip nat POSTROUTING (postrouting srcnat (100)), ip rogue post (prerouting dstnat (-100))",
            ),
            (
                "kube-proxy nftables",
                facts(
                    lab_ruleset(vec![
                        json!({"table": {"family": "ip", "name": "kube-proxy"}}),
                    ]),
                    &flannel,
                ),
                vec![Status::Ok; 3],
                "kube-proxy mode: nftables",
            ),
            (
                "kube-proxy ipvs",
                facts(lab_ruleset(vec![]), &[("kube-ipvs0", Some("dummy"))]),
                vec![Status::Ok; 3],
                "kube-proxy mode: ipvs",
            ),
        ];
        for (name, f, statuses, needle) in cases {
            let out = findings(&f);
            crate::diagnose::assert_findings(name, &out, &statuses, needle);
        }
    }

    #[test]
    fn unreadable_ruleset_fails() {
        let f = CniFacts {
            links: vec![],
            ruleset: Err("permission denied".into()),
        };
        let out = findings(&f);
        assert_eq!(out[1].status, Status::Fail);
    }
}
