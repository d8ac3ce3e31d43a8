//! Rendering a [`Batch`] as the JSON that `nft -j -f -` reads, and reading
//! `nft -j list table` back into an [`Observed`].

use serde_json::{Map as JsonMap, Value as Json, json};

use super::diff::{Batch, Observed, ObservedChain, Op};
use super::model::{BaseChain, ChainType, DataType, Family, Hook, Policy, Set, SetFlag, Value};

/// The JSON document for one transaction.
pub fn render(batch: &Batch) -> Json {
    let f = batch.family.as_str();
    let t = batch.table.as_str();
    let cmds: Vec<Json> = batch.ops.iter().map(|op| render_op(f, t, op)).collect();
    json!({ "nftables": cmds })
}

/// The JSON document for one transaction, as pretty text (for golden files).
pub fn render_pretty(batch: &Batch) -> String {
    let mut s = serde_json::to_string_pretty(&render(batch)).expect("JSON values serialise");
    s.push('\n');
    s
}

fn types_json(types: &[DataType]) -> Json {
    if types.len() == 1 {
        json!(types[0].as_str())
    } else {
        json!(types.iter().map(DataType::as_str).collect::<Vec<_>>())
    }
}

fn set_kind(is_map: bool) -> &'static str {
    if is_map { "map" } else { "set" }
}

fn render_op(f: &str, t: &str, op: &Op) -> Json {
    match op {
        Op::AddTable => json!({"add": {"table": {"family": f, "name": t}}}),
        Op::DeleteTable => json!({"delete": {"table": {"family": f, "name": t}}}),
        Op::AddChain { name, base } => {
            let mut c = JsonMap::new();
            c.insert("family".into(), json!(f));
            c.insert("table".into(), json!(t));
            c.insert("name".into(), json!(name));
            if let Some(b) = base {
                c.insert("type".into(), json!(b.kind.as_str()));
                c.insert("hook".into(), json!(b.hook.as_str()));
                c.insert("prio".into(), json!(b.priority));
                c.insert("policy".into(), json!(b.policy.as_str()));
            }
            json!({"add": {"chain": c}})
        }
        Op::FlushChain(name) => {
            json!({"flush": {"chain": {"family": f, "table": t, "name": name}}})
        }
        Op::DeleteChain(name) => {
            json!({"delete": {"chain": {"family": f, "table": t, "name": name}}})
        }
        Op::AddRule { chain, rule } => json!({"add": {"rule": {
            "family": f,
            "table": t,
            "chain": chain,
            "expr": serde_json::to_value(&rule.stmts).expect("statements serialise"),
            "comment": rule.kernel_comment(),
        }}}),
        Op::AddSet { name, set } => {
            let mut s = JsonMap::new();
            s.insert("family".into(), json!(f));
            s.insert("table".into(), json!(t));
            s.insert("name".into(), json!(name));
            s.insert("type".into(), types_json(&set.key));
            if let Some(data) = &set.data {
                s.insert("map".into(), types_json(data));
            }
            if !set.flags.is_empty() {
                s.insert(
                    "flags".into(),
                    json!(set.flags.iter().map(SetFlag::as_str).collect::<Vec<_>>()),
                );
            }
            json!({"add": {set_kind(set.is_map()): s}})
        }
        Op::DeleteSet { name, is_map } => {
            json!({"delete": {set_kind(*is_map): {"family": f, "table": t, "name": name}}})
        }
        Op::AddElements { set, elements } => {
            let elem: Vec<Json> = elements
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => json!([k.to_json(), v.to_json()]),
                    None => k.to_json(),
                })
                .collect();
            json!({"add": {"element": {"family": f, "table": t, "name": set, "elem": elem}}})
        }
        Op::DeleteElements { set, keys } => {
            let elem: Vec<Json> = keys.iter().map(Value::to_json).collect();
            json!({"delete": {"element": {"family": f, "table": t, "name": set, "elem": elem}}})
        }
    }
}

/// Why a listing could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn types_from(j: Option<&Json>) -> Vec<DataType> {
    match j {
        Some(Json::String(s)) => vec![DataType::parse(s)],
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| DataType::parse(i.as_str().unwrap_or("?")))
            .collect(),
        _ => Vec::new(),
    }
}

fn flags_from(j: Option<&Json>) -> std::collections::BTreeSet<SetFlag> {
    match j {
        Some(Json::String(s)) => [SetFlag::parse(s)].into(),
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(Json::as_str)
            .map(SetFlag::parse)
            .collect(),
        _ => Default::default(),
    }
}

fn parse_set(o: &JsonMap<String, Json>, is_map: bool) -> Set {
    let mut set = Set {
        key: types_from(o.get("type")),
        data: if is_map {
            Some(types_from(o.get("map")))
        } else {
            None
        },
        flags: flags_from(o.get("flags")),
        elements: Default::default(),
    };
    if let Some(Json::Array(elems)) = o.get("elem") {
        for e in elems {
            match (is_map, e) {
                (true, Json::Array(pair)) if pair.len() == 2 => {
                    set.elements
                        .insert(Value::from_json(&pair[0]), Some(Value::from_json(&pair[1])));
                }
                _ => {
                    set.elements.insert(Value::from_json(e), None);
                }
            }
        }
    }
    set
}

fn parse_base(o: &JsonMap<String, Json>) -> Result<Option<BaseChain>, ParseError> {
    let Some(hook) = o.get("hook").and_then(Json::as_str) else {
        return Ok(None);
    };
    let bad = |what: &str| ParseError(format!("chain {:?}: unknown {what}", o.get("name")));
    Ok(Some(BaseChain {
        kind: o
            .get("type")
            .and_then(Json::as_str)
            .and_then(ChainType::parse)
            .ok_or_else(|| bad("type"))?,
        hook: Hook::parse(hook).ok_or_else(|| bad("hook"))?,
        priority: o
            .get("prio")
            .and_then(Json::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| bad("priority"))?,
        policy: o
            .get("policy")
            .and_then(Json::as_str)
            .and_then(Policy::parse)
            .unwrap_or(Policy::Accept),
    }))
}

/// Reads the output of `nft -j list table FAMILY NAME` for that table.
pub fn parse_listing(family: Family, table: &str, text: &str) -> Result<Observed, ParseError> {
    let doc: Json = serde_json::from_str(text).map_err(|e| ParseError(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Json::as_array)
        .ok_or_else(|| ParseError("no \"nftables\" array".into()))?;
    let mut obs = Observed::default();
    let ours = |o: &JsonMap<String, Json>, key: &str| {
        o.get("family").and_then(Json::as_str) == Some(family.as_str())
            && o.get(key).and_then(Json::as_str) == Some(table)
    };
    for item in items {
        let Some((kind, Json::Object(o))) = item.as_object().and_then(|m| m.iter().next()) else {
            continue;
        };
        let name = o.get("name").and_then(Json::as_str).unwrap_or_default();
        match kind.as_str() {
            "chain" if ours(o, "table") => {
                let base = parse_base(o)?;
                obs.chains.entry(name.to_string()).or_default().base = base;
            }
            "set" | "map" if ours(o, "table") => {
                obs.sets
                    .insert(name.to_string(), parse_set(o, kind == "map"));
            }
            "rule" if ours(o, "table") => {
                let chain = o.get("chain").and_then(Json::as_str).unwrap_or_default();
                let comment = o.get("comment").and_then(Json::as_str).map(str::to_string);
                obs.chains
                    .entry(chain.to_string())
                    .or_insert_with(ObservedChain::default)
                    .rule_comments
                    .push(comment);
            }
            _ => {}
        }
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `nft -j list table ip cwtest` (nftables 1.0.6).
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "cwtest", "handle": 1}}, {"set": {"family": "ip", "name": "remote", "table": "cwtest", "type": "ipv4_addr", "handle": 6, "flags": ["interval"], "elem": ["10.0.0.1", {"prefix": {"addr": "242.1.0.0", "len": 16}}]}}, {"map": {"family": "ip", "name": "svc", "table": "cwtest", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 7, "map": "verdict", "elem": [[{"concat": ["242.0.0.10", "tcp", 80]}, {"goto": {"target": "svc1"}}]]}}, {"chain": {"family": "ip", "table": "cwtest", "name": "svc1", "handle": 1}}, {"chain": {"family": "ip", "table": "cwtest", "name": "ingress", "handle": 2, "type": "nat", "hook": "prerouting", "prio": -120, "policy": "accept"}}, {"rule": {"family": "ip", "table": "cwtest", "chain": "svc1", "handle": 10, "comment": "x [abc]", "expr": []}}, {"rule": {"family": "ip", "table": "cwtest", "chain": "ingress", "handle": 11, "expr": []}}]}"#;

    #[test]
    fn reads_a_real_listing() {
        let obs = parse_listing(Family::Ip, "cwtest", LISTING).unwrap();
        assert_eq!(obs.chains.len(), 2);
        assert_eq!(
            obs.chains["svc1"].rule_comments,
            vec![Some("x [abc]".to_string())]
        );
        assert_eq!(obs.chains["ingress"].rule_comments, vec![None]);
        assert_eq!(
            obs.chains["ingress"].base,
            Some(BaseChain::new(ChainType::Nat, Hook::Prerouting, -120))
        );
        let remote = &obs.sets["remote"];
        assert!(!remote.is_map());
        assert!(remote.flags.contains(&SetFlag::Interval));
        assert_eq!(remote.elements.len(), 2);
        let svc = &obs.sets["svc"];
        assert_eq!(svc.data, Some(vec![DataType::Verdict]));
        assert_eq!(svc.key.len(), 3);
        let (k, v) = svc.elements.iter().next().unwrap();
        assert_eq!(
            *k,
            Value::Concat(vec![
                Value::Addr("242.0.0.10".parse().unwrap()),
                Value::Str("tcp".into()),
                Value::Int(80)
            ])
        );
        assert_eq!(
            *v,
            Some(Value::Verdict(super::super::model::Verdict::Goto(
                "svc1".into()
            )))
        );
    }

    #[test]
    fn other_tables_are_ignored() {
        let obs = parse_listing(Family::Ip, "elsewhere", LISTING).unwrap();
        assert_eq!(obs, Observed::default());
    }
}
