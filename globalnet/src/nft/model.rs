//! The plan of one nftables table as plain data.
//!
//! Everything is kept in `BTreeMap`s/`BTreeSet`s so a plan renders the same
//! bytes every time. Rules are lists of statements from the `nftables` crate's
//! JSON schema; per-address data lives in named sets and maps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::stmt::Statement;
use serde_json::{Value as Json, json};

/// An nftables address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip` (IPv4 only).
    Ip,
    /// `ip6` (IPv6 only).
    Ip6,
    /// `inet` (both).
    Inet,
}

impl Family {
    /// The keyword `nft` uses for this family.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }

    /// The family named by `nft`'s keyword.
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "ip" => Some(Family::Ip),
            "ip6" => Some(Family::Ip6),
            "inet" => Some(Family::Inet),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
    /// `route`.
    Route,
}

impl ChainType {
    /// The keyword `nft` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ChainType> {
        match s {
            "filter" => Some(ChainType::Filter),
            "nat" => Some(ChainType::Nat),
            "route" => Some(ChainType::Route),
            _ => None,
        }
    }
}

/// A netfilter hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl Hook {
    /// The keyword `nft` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Hook> {
        match s {
            "prerouting" => Some(Hook::Prerouting),
            "input" => Some(Hook::Input),
            "forward" => Some(Hook::Forward),
            "output" => Some(Hook::Output),
            "postrouting" => Some(Hook::Postrouting),
            _ => None,
        }
    }
}

/// Well-known chain priorities (`nft` accepts them by name; listed as numbers).
pub mod priority {
    /// `dstnat` (-100).
    pub const DSTNAT: i32 = -100;
    /// `srcnat` (100).
    pub const SRCNAT: i32 = 100;
    /// `mangle` (-150).
    pub const MANGLE: i32 = -150;
    /// `filter` (0).
    pub const FILTER: i32 = 0;
}

/// A base chain's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
}

impl Policy {
    /// The keyword `nft` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Policy> {
        match s {
            "accept" => Some(Policy::Accept),
            "drop" => Some(Policy::Drop),
            _ => None,
        }
    }
}

/// What makes a chain a base chain: where it hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseChain {
    /// Chain type.
    pub kind: ChainType,
    /// Hook.
    pub hook: Hook,
    /// Numeric priority (`priority::SRCNAT - 10` and so on).
    pub priority: i32,
    /// Policy.
    pub policy: Policy,
}

impl BaseChain {
    /// A base chain with policy accept.
    pub fn new(kind: ChainType, hook: Hook, priority: i32) -> Self {
        BaseChain {
            kind,
            hook,
            priority,
            policy: Policy::Accept,
        }
    }
}

/// One rule: statements in order, and an optional human comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The statements (matches, then a verdict or NAT statement).
    pub stmts: Vec<Statement<'static>>,
    /// A comment for humans reading `nft list`.
    pub comment: Option<String>,
}

/// Longest human comment kept in a rule (the kernel allows 128 bytes in all).
const COMMENT_TEXT_MAX: usize = 100;

impl Rule {
    /// A rule from statements.
    pub fn new(stmts: Vec<Statement<'static>>) -> Self {
        Rule {
            stmts,
            comment: None,
        }
    }

    /// The same rule with a human comment.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// The comment this rule carries in the kernel: the human text and a
    /// fingerprint of the statements. The applier compares these strings
    /// instead of the statements, because `nft` lists a rule in a normalised
    /// form that differs from what was written.
    pub fn kernel_comment(&self) -> String {
        let body = serde_json::to_string(&self.stmts).unwrap_or_default();
        let text = self.comment.as_deref().unwrap_or("");
        let text = truncate(text, COMMENT_TEXT_MAX);
        let mut hash = Fnv64::new();
        hash.write(body.as_bytes());
        hash.write(&[0]);
        hash.write(text.as_bytes());
        if text.is_empty() {
            format!("[{:016x}]", hash.finish())
        } else {
            format!("{text} [{:016x}]", hash.finish())
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// FNV-1a, 64 bit: a hash whose value never changes between builds (unlike
/// std's `DefaultHasher`), so fingerprints written by one version are read
/// by the next.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A chain: a base chain when `base` is set, else a regular chain reached by
/// jump, goto or a verdict map.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Chain {
    /// Hook, type and priority of a base chain.
    pub base: Option<BaseChain>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A regular chain.
    pub fn regular(rules: Vec<Rule>) -> Self {
        Chain { base: None, rules }
    }

    /// A base chain.
    pub fn base(base: BaseChain, rules: Vec<Rule>) -> Self {
        Chain {
            base: Some(base),
            rules,
        }
    }
}

/// The type of a set key or map value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`.
    InetProto,
    /// `inet_service` (a port).
    InetService,
    /// `mark` (any 32-bit integer).
    Mark,
    /// `verdict` (for verdict maps).
    Verdict,
    /// `ifname`.
    Ifname,
    /// Any other type name, as `nft` lists it.
    Other(String),
}

impl DataType {
    /// The name `nft` uses.
    pub fn as_str(&self) -> &str {
        match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetProto => "inet_proto",
            DataType::InetService => "inet_service",
            DataType::Mark => "mark",
            DataType::Verdict => "verdict",
            DataType::Ifname => "ifname",
            DataType::Other(s) => s,
        }
    }

    pub(crate) fn parse(s: &str) -> DataType {
        match s {
            "ipv4_addr" => DataType::Ipv4Addr,
            "ipv6_addr" => DataType::Ipv6Addr,
            "inet_proto" => DataType::InetProto,
            "inet_service" => DataType::InetService,
            "mark" => DataType::Mark,
            "verdict" => DataType::Verdict,
            "ifname" => DataType::Ifname,
            other => DataType::Other(other.to_string()),
        }
    }
}

/// A set flag.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetFlag {
    /// `interval`: elements may be prefixes or ranges.
    Interval,
    /// `constant`.
    Constant,
    /// `timeout`.
    Timeout,
    /// `dynamic`.
    Dynamic,
    /// Any other flag, as `nft` lists it.
    Other(String),
}

impl SetFlag {
    /// The name `nft` uses.
    pub fn as_str(&self) -> &str {
        match self {
            SetFlag::Interval => "interval",
            SetFlag::Constant => "constant",
            SetFlag::Timeout => "timeout",
            SetFlag::Dynamic => "dynamic",
            SetFlag::Other(s) => s,
        }
    }

    pub(crate) fn parse(s: &str) -> SetFlag {
        match s {
            "interval" => SetFlag::Interval,
            "constant" => SetFlag::Constant,
            "timeout" => SetFlag::Timeout,
            "dynamic" => SetFlag::Dynamic,
            other => SetFlag::Other(other.to_string()),
        }
    }
}

/// A verdict, as the value of a verdict-map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

/// One element value (a key or a map value) of a named set or map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// An IPv4 address.
    Addr(Ipv4Addr),
    /// An IPv4 prefix shorter than /32 (a /32 is an [`Value::Addr`]).
    Prefix(Ipv4Net),
    /// An integer (ports, marks).
    Int(u64),
    /// A symbolic constant (`tcp`, `udp`, an interface name).
    Str(String),
    /// A verdict.
    Verdict(Verdict),
    /// A concatenation (`a . b . c`).
    Concat(Vec<Value>),
    /// Anything else `nft` listed, kept as its JSON text so it can be deleted.
    Other(String),
}

impl Value {
    /// A prefix, normalised so that a /32 is a plain address (as `nft` lists it).
    pub fn net(net: Ipv4Net) -> Value {
        let net = net.trunc();
        if net.prefix_len() == 32 {
            Value::Addr(net.addr())
        } else {
            Value::Prefix(net)
        }
    }

    /// The JSON `nft` reads for this value.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Addr(a) => json!(a.to_string()),
            Value::Prefix(n) => {
                json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}})
            }
            Value::Int(i) => json!(i),
            Value::Str(s) => json!(s),
            Value::Verdict(v) => match v {
                Verdict::Accept => json!({"accept": null}),
                Verdict::Drop => json!({"drop": null}),
                Verdict::Return => json!({"return": null}),
                Verdict::Jump(t) => json!({"jump": {"target": t}}),
                Verdict::Goto(t) => json!({"goto": {"target": t}}),
            },
            Value::Concat(vs) => {
                json!({"concat": vs.iter().map(Value::to_json).collect::<Vec<_>>()})
            }
            Value::Other(raw) => serde_json::from_str(raw).unwrap_or(Json::Null),
        }
    }

    /// Reads a value as `nft -j list` prints it.
    pub(crate) fn from_json(j: &Json) -> Value {
        match j {
            Json::String(s) => match s.parse::<Ipv4Addr>() {
                Ok(a) => Value::Addr(a),
                Err(_) => Value::Str(s.clone()),
            },
            Json::Number(n) => match n.as_u64() {
                Some(i) => Value::Int(i),
                None => Value::Other(j.to_string()),
            },
            Json::Object(o) if o.len() == 1 => {
                let (k, v) = o.iter().next().expect("one entry");
                match (k.as_str(), v) {
                    ("prefix", Json::Object(p)) => {
                        let addr = p.get("addr").and_then(Json::as_str);
                        let len = p.get("len").and_then(Json::as_u64);
                        match (addr.and_then(|a| a.parse::<Ipv4Addr>().ok()), len) {
                            (Some(a), Some(l)) if l <= 32 => match Ipv4Net::new(a, l as u8) {
                                Ok(n) => Value::net(n),
                                Err(_) => Value::Other(j.to_string()),
                            },
                            _ => Value::Other(j.to_string()),
                        }
                    }
                    ("concat", Json::Array(items)) => {
                        Value::Concat(items.iter().map(Value::from_json).collect())
                    }
                    ("accept", _) => Value::Verdict(Verdict::Accept),
                    ("drop", _) => Value::Verdict(Verdict::Drop),
                    ("return", _) => Value::Verdict(Verdict::Return),
                    ("jump", v) | ("goto", v) => match v.get("target").and_then(Json::as_str) {
                        Some(t) if k == "jump" => Value::Verdict(Verdict::Jump(t.to_string())),
                        Some(t) => Value::Verdict(Verdict::Goto(t.to_string())),
                        None => Value::Other(j.to_string()),
                    },
                    // An element with a counter, timeout or comment.
                    ("elem", Json::Object(e)) => match e.get("val") {
                        Some(v) => Value::from_json(v),
                        None => Value::Other(j.to_string()),
                    },
                    _ => Value::Other(j.to_string()),
                }
            }
            _ => Value::Other(j.to_string()),
        }
    }
}

impl From<Ipv4Addr> for Value {
    fn from(a: Ipv4Addr) -> Self {
        Value::Addr(a)
    }
}

impl From<Ipv4Net> for Value {
    fn from(n: Ipv4Net) -> Self {
        Value::net(n)
    }
}

impl From<u16> for Value {
    fn from(p: u16) -> Self {
        Value::Int(u64::from(p))
    }
}

impl From<Verdict> for Value {
    fn from(v: Verdict) -> Self {
        Value::Verdict(v)
    }
}

/// A named set, or a map when `data` is set.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Set {
    /// Key type; more than one is a concatenation.
    pub key: Vec<DataType>,
    /// Value type of a map; `None` for a set.
    pub data: Option<Vec<DataType>>,
    /// Flags (`interval` and so on).
    pub flags: BTreeSet<SetFlag>,
    /// Elements: key, and the value for a map.
    pub elements: BTreeMap<Value, Option<Value>>,
}

impl Set {
    /// An empty set of keys of type `key`.
    pub fn new(key: Vec<DataType>) -> Self {
        Set {
            key,
            ..Set::default()
        }
    }

    /// An empty map from `key` to `data`.
    pub fn map(key: Vec<DataType>, data: Vec<DataType>) -> Self {
        Set {
            key,
            data: Some(data),
            ..Set::default()
        }
    }

    /// The same set with the `interval` flag (for prefixes).
    pub fn interval(mut self) -> Self {
        self.flags.insert(SetFlag::Interval);
        self
    }

    /// Whether this is a map.
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }

    /// Adds a set element.
    pub fn insert(&mut self, key: impl Into<Value>) {
        self.elements.insert(key.into(), None);
    }

    /// Adds a map element.
    pub fn insert_map(&mut self, key: impl Into<Value>, value: impl Into<Value>) {
        self.elements.insert(key.into(), Some(value.into()));
    }

    /// Whether the declarations (types and flags) of two sets agree.
    /// (`dynamic` is ignored: the kernel adds it to any set that rules
    /// update.)
    pub fn same_declaration(&self, other: &Set) -> bool {
        let flags = |s: &Set| -> BTreeSet<SetFlag> {
            s.flags
                .iter()
                .filter(|f| **f != SetFlag::Dynamic)
                .cloned()
                .collect()
        };
        self.key == other.key && self.data == other.data && flags(self) == flags(other)
    }

    /// Whether the kernel owns the elements (a `timeout` set that rules
    /// fill, such as session affinity): the applier then leaves them alone.
    pub fn kernel_managed(&self) -> bool {
        self.flags.contains(&SetFlag::Timeout)
    }
}

/// The whole of one table as Causeway wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Family.
    pub family: Family,
    /// Table name (each component owns its own table).
    pub name: String,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    /// An empty table.
    pub fn new(family: Family, name: impl Into<String>) -> Self {
        Table {
            family,
            name: name.into(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written() {
        let cases: Vec<Value> = vec![
            Value::Addr("10.0.0.1".parse().unwrap()),
            Value::net("10.0.0.0/8".parse().unwrap()),
            Value::Int(80),
            Value::Str("tcp".into()),
            Value::Verdict(Verdict::Goto("svc".into())),
            Value::Verdict(Verdict::Jump("svc".into())),
            Value::Verdict(Verdict::Accept),
            Value::Concat(vec![
                Value::Addr("242.0.0.1".parse().unwrap()),
                Value::Str("tcp".into()),
                Value::Int(443),
            ]),
        ];
        for v in cases {
            assert_eq!(Value::from_json(&v.to_json()), v, "{v:?}");
        }
    }

    #[test]
    fn slash_32_is_an_address() {
        assert_eq!(
            Value::net("10.1.2.3/32".parse().unwrap()),
            Value::Addr("10.1.2.3".parse().unwrap())
        );
        // nft lists a /32 in an interval set as a bare address
        assert_eq!(
            Value::from_json(&json!({"prefix": {"addr": "10.1.2.3", "len": 32}})),
            Value::Addr("10.1.2.3".parse().unwrap())
        );
    }

    #[test]
    fn element_with_counter_reads_as_its_value() {
        let j = json!({"elem": {"val": "10.0.0.1", "counter": {"packets": 0, "bytes": 0}}});
        assert_eq!(
            Value::from_json(&j),
            Value::Addr("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn kernel_comment_is_stable_and_tracks_content() {
        use crate::nft::expr::*;
        let a = Rule::new(vec![accept()]);
        let b = Rule::new(vec![drop()]);
        assert_eq!(a.kernel_comment(), a.clone().kernel_comment());
        assert_ne!(a.kernel_comment(), b.kernel_comment());
        let c = a.clone().with_comment("hello");
        assert!(c.kernel_comment().starts_with("hello ["));
        assert_ne!(c.kernel_comment(), a.kernel_comment());
        let long = a.with_comment("x".repeat(300));
        assert!(long.kernel_comment().len() <= 128);
    }
}
