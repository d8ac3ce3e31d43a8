//! Short builders for the `nftables` crate's statements and expressions, so a
//! ruleset reads close to `nft` syntax.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::expr::{
    BinaryOperation, Expression, JHash, Map, Meta, MetaKey, NamedExpression, NgMode, Numgen,
    Payload, PayloadField, Prefix, SetItem, TcpOption,
};
use nftables::stmt::{JumpTarget, Mangle, Match, NAT, NATFamily, Operator, Statement, VerdictMap};

/// Expressions and statements with no borrowed data.
pub type Expr = Expression<'static>;
/// A statement with no borrowed data.
pub type Stmt = Statement<'static>;

/// `PROTO FIELD` (`ip saddr`, `th dport`, `tcp flags`).
pub fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// `ip saddr`.
pub fn ip_saddr() -> Expr {
    payload("ip", "saddr")
}

/// `ip daddr`.
pub fn ip_daddr() -> Expr {
    payload("ip", "daddr")
}

/// `th dport` (the destination port of TCP, UDP or SCTP).
pub fn th_dport() -> Expr {
    payload("th", "dport")
}

/// `meta l4proto`.
pub fn meta_l4proto() -> Expr {
    Expression::Named(NamedExpression::Meta(Meta {
        key: MetaKey::L4proto,
    }))
}

/// `@NAME`: a reference to a named set or map.
pub fn set_ref(name: &str) -> Expr {
    Expression::String(Cow::Owned(format!("@{name}")))
}

/// A string constant (`tcp`, an address).
pub fn string(s: impl Into<String>) -> Expr {
    Expression::String(Cow::Owned(s.into()))
}

/// An address constant.
pub fn addr(a: Ipv4Addr) -> Expr {
    string(a.to_string())
}

/// A number constant.
pub fn number(n: u32) -> Expr {
    Expression::Number(n)
}

/// A prefix constant (`10.0.0.0/8`); a /32 is written as an address.
pub fn prefix(net: Ipv4Net) -> Expr {
    let net = net.trunc();
    if net.prefix_len() == 32 {
        return addr(net.addr());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(addr(net.addr())),
        len: u32::from(net.prefix_len()),
    }))
}

/// `a . b . c`.
pub fn concat(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Concat(items))
}

/// An anonymous set `{ a, b }`.
pub fn anon_set(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

/// `KEY map { k : v, ... }` with an anonymous map.
pub fn anon_map(key: Expr, pairs: Vec<(Expr, Expr)>) -> Expr {
    Expression::Named(NamedExpression::Map(Box::new(Map {
        key,
        data: Expression::Named(NamedExpression::Set(
            pairs
                .into_iter()
                .map(|(k, v)| SetItem::Mapping(k, v))
                .collect(),
        )),
    })))
}

/// An anonymous map `{ k : v, ... }`, as the data of a `vmap` or `map`.
pub fn anon_pairs(pairs: Vec<(Expr, Expr)>) -> Expr {
    Expression::Named(NamedExpression::Set(
        pairs
            .into_iter()
            .map(|(k, v)| SetItem::Mapping(k, v))
            .collect(),
    ))
}

/// `goto CHAIN` as a value of a verdict map.
pub fn goto_value(chain: impl Into<String>) -> Expr {
    Expression::Verdict(nftables::expr::Verdict::Goto(JumpTarget {
        target: Cow::Owned(chain.into()),
    }))
}

/// `KEY map @NAME`.
pub fn map_lookup(key: Expr, map: &str) -> Expr {
    Expression::Named(NamedExpression::Map(Box::new(Map {
        key,
        data: set_ref(map),
    })))
}

/// `numgen random mod N`.
pub fn numgen_random(modulus: u32) -> Expr {
    Expression::Named(NamedExpression::Numgen(Numgen {
        mode: NgMode::Random,
        ng_mod: modulus,
        offset: None,
    }))
}

/// `jhash EXPR mod N seed SEED`. The seed is explicit: without one the kernel
/// picks a random seed per rule, and the mapping would change on failover.
pub fn jhash(expr: Expr, modulus: u32, seed: u32) -> Expr {
    Expression::Named(NamedExpression::JHash(JHash {
        hash_mod: modulus,
        offset: None,
        expr: Box::new(expr),
        seed: Some(seed),
    }))
}

/// `tcp option maxseg size`.
pub fn tcp_mss() -> Expr {
    Expression::Named(NamedExpression::TcpOption(TcpOption {
        name: Cow::Borrowed("maxseg"),
        field: Some(Cow::Borrowed("size")),
    }))
}

/// `LEFT OP RIGHT`.
pub fn match_op(left: Expr, op: Operator, right: Expr) -> Stmt {
    Statement::Match(Match { left, right, op })
}

/// `LEFT == RIGHT` (`ip saddr @remote`).
pub fn match_eq(left: Expr, right: Expr) -> Stmt {
    match_op(left, Operator::EQ, right)
}

/// `LEFT != RIGHT`.
pub fn match_ne(left: Expr, right: Expr) -> Stmt {
    match_op(left, Operator::NEQ, right)
}

/// `tcp flags & (syn | rst) == syn`: SYN and SYN-ACK, not RST.
pub fn tcp_syn() -> Stmt {
    match_eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            payload("tcp", "flags"),
            Expression::List(vec![string("syn"), string("rst")]),
        ))),
        string("syn"),
    )
}

/// `tcp option maxseg size set MSS`.
pub fn set_mss(mss: u16) -> Stmt {
    Statement::Mangle(Mangle {
        key: tcp_mss(),
        value: number(u32::from(mss)),
    })
}

/// `snat ip to ADDR`.
pub fn snat_to(addr: Expr) -> Stmt {
    Statement::SNAT(Some(NAT {
        addr: Some(addr),
        family: Some(NATFamily::IP),
        port: None,
        flags: None,
    }))
}

/// `dnat ip to ADDR` (ADDR may be a map to `ip . port` concatenations).
pub fn dnat_to(addr: Expr) -> Stmt {
    Statement::DNAT(Some(NAT {
        addr: Some(addr),
        family: Some(NATFamily::IP),
        port: None,
        flags: None,
    }))
}

/// `dnat ip to ADDR:PORT`.
pub fn dnat_to_port(a: Ipv4Addr, port: u16) -> Stmt {
    Statement::DNAT(Some(NAT {
        addr: Some(addr(a)),
        family: Some(NATFamily::IP),
        port: Some(number(u32::from(port))),
        flags: None,
    }))
}

/// `dnat ip to ADDR : PORT` with computed address and port (map lookups).
pub fn dnat_to_mapped(addr: Expr, port: Expr) -> Stmt {
    Statement::DNAT(Some(NAT {
        addr: Some(addr),
        family: Some(NATFamily::IP),
        port: Some(port),
        flags: None,
    }))
}

/// `update @SET { KEY timeout SECONDS }`: adds or refreshes an element from
/// the packet path.
pub fn update_set(set: &str, key: Expr, timeout_secs: u32) -> Stmt {
    Statement::Set(nftables::stmt::Set {
        op: nftables::stmt::SetOp::Update,
        elem: Expression::Named(NamedExpression::Elem(nftables::expr::Elem {
            val: Box::new(key),
            timeout: Some(timeout_secs),
            expires: None,
            comment: None,
            counter: None,
        })),
        set: Cow::Owned(format!("@{set}")),
    })
}

/// `KEY vmap DATA`.
pub fn vmap(key: Expr, data: Expr) -> Stmt {
    Statement::VerdictMap(VerdictMap { key, data })
}

/// `accept`.
pub fn accept() -> Stmt {
    Statement::Accept(None)
}

/// `drop`.
pub fn drop() -> Stmt {
    Statement::Drop(None)
}

/// `return`.
pub fn ret() -> Stmt {
    Statement::Return(None)
}

/// `jump CHAIN`.
pub fn jump(chain: impl Into<String>) -> Stmt {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(chain.into()),
    })
}

/// `goto CHAIN`.
pub fn goto(chain: impl Into<String>) -> Stmt {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain.into()),
    })
}
