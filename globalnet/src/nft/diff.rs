//! The difference between a planned table and the table the kernel holds, as
//! a list of operations that `nft` applies in one transaction.

use std::collections::BTreeMap;

use super::model::{BaseChain, Chain, Family, Rule, Set, Table, Value};

/// What the kernel holds in one table, as far as the applier needs to know.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Observed {
    /// Chains by name.
    pub chains: BTreeMap<String, ObservedChain>,
    /// Sets and maps by name, with their elements.
    pub sets: BTreeMap<String, Set>,
}

/// One chain as listed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ObservedChain {
    /// Hook, type and priority of a base chain.
    pub base: Option<BaseChain>,
    /// The comment of each rule in order (see [`Rule::kernel_comment`]).
    pub rule_comments: Vec<Option<String>>,
}

impl Observed {
    /// What the kernel would list right after `table` was applied.
    pub fn of_plan(table: &Table) -> Observed {
        Observed {
            chains: table
                .chains
                .iter()
                .map(|(name, chain)| (name.clone(), ObservedChain::of_plan(chain)))
                .collect(),
            sets: table.sets.clone(),
        }
    }
}

impl ObservedChain {
    fn of_plan(chain: &Chain) -> ObservedChain {
        ObservedChain {
            base: chain.base,
            rule_comments: chain
                .rules
                .iter()
                .map(|r| Some(r.kernel_comment()))
                .collect(),
        }
    }
}

/// One step of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `add table`.
    AddTable,
    /// `delete table`.
    DeleteTable,
    /// `add chain` (base chain when `base` is set).
    AddChain {
        /// Chain name.
        name: String,
        /// Hook, type, priority.
        base: Option<BaseChain>,
    },
    /// `flush chain`.
    FlushChain(String),
    /// `delete chain`.
    DeleteChain(String),
    /// `add rule` (appended).
    AddRule {
        /// Chain name.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// `add set` / `add map`, declaration only (elements follow in `AddElements`).
    AddSet {
        /// Set name.
        name: String,
        /// Declaration; its elements are ignored.
        set: Set,
    },
    /// `delete set` / `delete map`.
    DeleteSet {
        /// Set name.
        name: String,
        /// Whether it is a map.
        is_map: bool,
    },
    /// `add element`.
    AddElements {
        /// Set name.
        set: String,
        /// Keys and, for a map, values.
        elements: Vec<(Value, Option<Value>)>,
    },
    /// `delete element` (by key).
    DeleteElements {
        /// Set name.
        set: String,
        /// Keys.
        keys: Vec<Value>,
    },
}

/// A transaction on one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Table family.
    pub family: Family,
    /// Table name.
    pub table: String,
    /// Steps in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Counts of operations by kind, for logs and tests.
    pub fn summary(&self) -> BatchSummary {
        let mut s = BatchSummary::default();
        for op in &self.ops {
            match op {
                Op::AddTable => s.tables_added += 1,
                Op::DeleteTable => s.tables_deleted += 1,
                Op::AddChain { .. } => s.chains_added += 1,
                Op::FlushChain(_) => s.chains_flushed += 1,
                Op::DeleteChain(_) => s.chains_deleted += 1,
                Op::AddRule { .. } => s.rules_added += 1,
                Op::AddSet { .. } => s.sets_added += 1,
                Op::DeleteSet { .. } => s.sets_deleted += 1,
                Op::AddElements { elements, .. } => s.elements_added += elements.len(),
                Op::DeleteElements { keys, .. } => s.elements_deleted += keys.len(),
            }
        }
        s
    }
}

/// How many things of each kind a batch changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BatchSummary {
    /// Tables added.
    pub tables_added: usize,
    /// Tables deleted.
    pub tables_deleted: usize,
    /// Chains added.
    pub chains_added: usize,
    /// Chains flushed (before rewrite or deletion).
    pub chains_flushed: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// Rules added.
    pub rules_added: usize,
    /// Sets and maps added.
    pub sets_added: usize,
    /// Sets and maps deleted.
    pub sets_deleted: usize,
    /// Set and map elements added.
    pub elements_added: usize,
    /// Set and map elements deleted.
    pub elements_deleted: usize,
}

impl BatchSummary {
    /// Whether only set and map elements change.
    pub fn only_elements(&self) -> bool {
        *self
            == BatchSummary {
                elements_added: self.elements_added,
                elements_deleted: self.elements_deleted,
                ..BatchSummary::default()
            }
    }
}

/// The transaction that turns `observed` (or no table at all) into `plan`.
///
/// Map and set elements are added and removed on their own; a chain is
/// flushed and rewritten only when its rules differ; a declaration that
/// cannot be changed in place (a set's type, a base chain's hook or
/// priority) makes the whole table be rebuilt, still in one transaction.
pub fn diff(plan: &Table, observed: Option<&Observed>) -> Batch {
    diff_against(plan, observed.map(Have::Observed))
}

/// The transaction that turns a table holding exactly `previous` (what was
/// last applied) into `plan`. Same result as [`diff`] against the listing
/// of `previous`, but compares rules as values instead of fingerprinting
/// every rule, which matters with tens of thousands of them.
pub fn diff_from_plan(plan: &Table, previous: &Table) -> Batch {
    diff_against(plan, Some(Have::Plan(previous)))
}

/// What the table holds: a listing, or the plan last applied.
#[derive(Clone, Copy)]
enum Have<'a> {
    Observed(&'a Observed),
    Plan(&'a Table),
}

impl<'a> Have<'a> {
    fn sets(self) -> &'a BTreeMap<String, Set> {
        match self {
            Have::Observed(o) => &o.sets,
            Have::Plan(t) => &t.sets,
        }
    }

    /// `Some(base)` when the chain exists.
    fn chain_base(self, name: &str) -> Option<Option<BaseChain>> {
        match self {
            Have::Observed(o) => o.chains.get(name).map(|c| c.base),
            Have::Plan(t) => t.chains.get(name).map(|c| c.base),
        }
    }

    fn chain_names(self) -> Vec<&'a String> {
        match self {
            Have::Observed(o) => o.chains.keys().collect(),
            Have::Plan(t) => t.chains.keys().collect(),
        }
    }

    fn chain_has_rules(self, name: &str) -> bool {
        match self {
            Have::Observed(o) => o
                .chains
                .get(name)
                .is_some_and(|c| !c.rule_comments.is_empty()),
            Have::Plan(t) => t.chains.get(name).is_some_and(|c| !c.rules.is_empty()),
        }
    }

    /// Whether an existing chain's rules differ from `chain`'s.
    fn rules_differ(self, name: &str, chain: &Chain) -> bool {
        match self {
            Have::Observed(o) => {
                let have = &o.chains[name].rule_comments;
                have.len() != chain.rules.len()
                    || have
                        .iter()
                        .zip(&chain.rules)
                        .any(|(h, r)| h.as_deref() != Some(r.kernel_comment().as_str()))
            }
            Have::Plan(t) => t.chains[name].rules != chain.rules,
        }
    }
}

fn diff_against(plan: &Table, have: Option<Have<'_>>) -> Batch {
    let mut ops = Vec::new();
    match have {
        None => create_all(plan, &mut ops),
        Some(have) if needs_rebuild(plan, have) => {
            ops.push(Op::DeleteTable);
            create_all(plan, &mut ops);
        }
        Some(have) => update(plan, have, &mut ops),
    }
    Batch {
        family: plan.family,
        table: plan.name.clone(),
        ops,
    }
}

fn needs_rebuild(plan: &Table, have: Have<'_>) -> bool {
    let chain_changed = plan
        .chains
        .iter()
        .any(|(name, chain)| have.chain_base(name).is_some_and(|base| base != chain.base));
    let set_changed = plan.sets.iter().any(|(name, set)| {
        have.sets()
            .get(name)
            .is_some_and(|h| !h.same_declaration(set))
    });
    chain_changed || set_changed
}

fn create_all(plan: &Table, ops: &mut Vec<Op>) {
    ops.push(Op::AddTable);
    // Chains first (verdict-map elements and jumps name them), then sets
    // (rules name them), then elements, then rules.
    for (name, chain) in &plan.chains {
        ops.push(Op::AddChain {
            name: name.clone(),
            base: chain.base,
        });
    }
    for (name, set) in &plan.sets {
        ops.push(Op::AddSet {
            name: name.clone(),
            set: declaration(set),
        });
    }
    for (name, set) in &plan.sets {
        if !set.elements.is_empty() {
            ops.push(Op::AddElements {
                set: name.clone(),
                elements: set
                    .elements
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
    }
    for (name, chain) in &plan.chains {
        add_rules(name, chain, ops);
    }
}

fn declaration(set: &Set) -> Set {
    Set {
        elements: Default::default(),
        ..set.clone()
    }
}

fn add_rules(name: &str, chain: &Chain, ops: &mut Vec<Op>) {
    for rule in &chain.rules {
        ops.push(Op::AddRule {
            chain: name.to_string(),
            rule: rule.clone(),
        });
    }
}

/// Applies the element operations of a transaction to the plan it was
/// computed from, so the plan stays the record of what the kernel holds.
/// Other operations are not element changes and are left out.
pub(crate) fn apply_to_plan(plan: &mut Table, ops: &[Op]) {
    for op in ops {
        match op {
            Op::DeleteElements { set, keys } => {
                if let Some(set) = plan.sets.get_mut(set) {
                    for key in keys {
                        set.elements.remove(key);
                    }
                }
            }
            Op::AddElements { set, elements } => {
                if let Some(set) = plan.sets.get_mut(set) {
                    set.elements.extend(elements.iter().cloned());
                }
            }
            _ => debug_assert!(false, "not an element change: {op:?}"),
        }
    }
}

type Elements = BTreeMap<Value, Option<Value>>;

/// Keys to delete (gone, or whose value changed) and elements to add, in
/// one ordered pass over both maps (tens of thousands of elements).
fn element_changes(have: &Elements, want: &Elements) -> (Vec<Value>, Vec<(Value, Option<Value>)>) {
    use std::cmp::Ordering;
    let mut stale = Vec::new();
    let mut missing = Vec::new();
    let mut h = have.iter().peekable();
    let mut w = want.iter().peekable();
    loop {
        match (h.peek(), w.peek()) {
            (None, None) => break,
            (Some((hk, _)), None) => {
                stale.push((*hk).clone());
                h.next();
            }
            (None, Some((wk, wv))) => {
                missing.push(((*wk).clone(), (*wv).clone()));
                w.next();
            }
            (Some((hk, hv)), Some((wk, wv))) => match hk.cmp(wk) {
                Ordering::Less => {
                    stale.push((*hk).clone());
                    h.next();
                }
                Ordering::Greater => {
                    missing.push(((*wk).clone(), (*wv).clone()));
                    w.next();
                }
                Ordering::Equal => {
                    if hv != wv {
                        stale.push((*hk).clone());
                        missing.push(((*wk).clone(), (*wv).clone()));
                    }
                    h.next();
                    w.next();
                }
            },
        }
    }
    (stale, missing)
}

fn update(plan: &Table, have: Have<'_>, ops: &mut Vec<Op>) {
    // 1. New chains and sets.
    for (name, chain) in &plan.chains {
        if have.chain_base(name).is_none() {
            ops.push(Op::AddChain {
                name: name.clone(),
                base: chain.base,
            });
        }
    }
    for (name, set) in &plan.sets {
        if !have.sets().contains_key(name) {
            ops.push(Op::AddSet {
                name: name.clone(),
                set: declaration(set),
            });
        }
    }
    // 2. Elements: removals before additions, so a changed map value is a
    // delete and an add of the same key in one transaction.
    for (name, set) in &plan.sets {
        if set.kernel_managed() {
            continue;
        }
        let empty = BTreeMap::new();
        let have_elems = have.sets().get(name).map_or(&empty, |s| &s.elements);
        if *have_elems == set.elements {
            continue;
        }
        let (stale, missing) = element_changes(have_elems, &set.elements);
        if !stale.is_empty() {
            ops.push(Op::DeleteElements {
                set: name.clone(),
                keys: stale,
            });
        }
        if !missing.is_empty() {
            ops.push(Op::AddElements {
                set: name.clone(),
                elements: missing,
            });
        }
    }
    // 3. Chains whose rules differ are flushed and rewritten.
    for (name, chain) in &plan.chains {
        if have.chain_base(name).is_none() {
            add_rules(name, chain, ops);
        } else if have.rules_differ(name, chain) {
            ops.push(Op::FlushChain(name.clone()));
            add_rules(name, chain, ops);
        }
    }
    // 4. Chains and sets no longer planned: flush every such chain before
    // deleting any (one may jump to another), then delete sets they used.
    let stale_chains: Vec<&String> = have
        .chain_names()
        .into_iter()
        .filter(|name| !plan.chains.contains_key(*name))
        .collect();
    for name in &stale_chains {
        if have.chain_has_rules(name) {
            ops.push(Op::FlushChain((*name).clone()));
        }
    }
    for name in &stale_chains {
        ops.push(Op::DeleteChain((*name).clone()));
    }
    for (name, set) in have.sets() {
        if !plan.sets.contains_key(name) {
            ops.push(Op::DeleteSet {
                name: name.clone(),
                is_map: set.is_map(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::expr::*;
    use crate::nft::model::{ChainType, DataType, Hook, Verdict, priority};

    fn table() -> Table {
        let mut t = Table::new(Family::Ip, "t");
        let mut m = Set::map(
            vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ],
            vec![DataType::Verdict],
        );
        m.insert_map(
            Value::Concat(vec![
                Value::Addr("242.0.0.10".parse().unwrap()),
                Value::Str("tcp".into()),
                Value::Int(80),
            ]),
            Verdict::Goto("svc-a".into()),
        );
        t.sets.insert("svc".into(), m);
        t.chains.insert(
            "svc-a".into(),
            Chain::regular(vec![Rule::new(vec![dnat_to_port(
                "10.0.0.1".parse().unwrap(),
                80,
            )])]),
        );
        t.chains.insert(
            "in".into(),
            Chain::base(
                BaseChain::new(ChainType::Nat, Hook::Prerouting, priority::DSTNAT - 20),
                vec![Rule::new(vec![vmap(ip_daddr(), set_ref("svc"))])],
            ),
        );
        t
    }

    #[test]
    fn create_from_nothing_then_nothing_to_do() {
        let plan = table();
        let first = diff(&plan, None);
        assert_eq!(first.ops[0], Op::AddTable);
        let s = first.summary();
        assert_eq!((s.chains_added, s.sets_added, s.rules_added), (2, 1, 2));
        assert!(diff(&plan, Some(&Observed::of_plan(&plan))).is_empty());
    }

    #[test]
    fn changed_map_value_is_delete_then_add() {
        let plan = table();
        let mut obs = Observed::of_plan(&plan);
        let elems = &mut obs.sets.get_mut("svc").unwrap().elements;
        let key = elems.keys().next().unwrap().clone();
        elems.insert(key.clone(), Some(Verdict::Goto("other".into()).into()));
        let b = diff(&plan, Some(&obs));
        assert_eq!(
            b.ops,
            vec![
                Op::DeleteElements {
                    set: "svc".into(),
                    keys: vec![key.clone()]
                },
                Op::AddElements {
                    set: "svc".into(),
                    elements: vec![(key, Some(Verdict::Goto("svc-a".into()).into()))]
                },
            ]
        );
    }

    #[test]
    fn changed_rule_rewrites_only_its_chain() {
        let mut plan = table();
        let obs = Observed::of_plan(&plan);
        plan.chains.get_mut("svc-a").unwrap().rules[0] =
            Rule::new(vec![dnat_to_port("10.0.0.2".parse().unwrap(), 80)]);
        let b = diff(&plan, Some(&obs));
        assert_eq!(b.ops.len(), 2);
        assert_eq!(b.ops[0], Op::FlushChain("svc-a".into()));
        assert!(matches!(&b.ops[1], Op::AddRule { chain, .. } if chain == "svc-a"));
    }

    #[test]
    fn foreign_rule_in_owned_chain_is_repaired() {
        let plan = table();
        let mut obs = Observed::of_plan(&plan);
        obs.chains.get_mut("in").unwrap().rule_comments.push(None);
        let b = diff(&plan, Some(&obs));
        assert_eq!(b.ops[0], Op::FlushChain("in".into()));
        assert_eq!(b.summary().rules_added, 1);
    }

    #[test]
    fn stale_objects_are_removed_in_safe_order() {
        let plan = table();
        let mut obs = Observed::of_plan(&plan);
        obs.chains.insert(
            "old".into(),
            ObservedChain {
                base: None,
                rule_comments: vec![Some("x".into())],
            },
        );
        obs.sets
            .insert("oldset".into(), Set::new(vec![DataType::Ipv4Addr]));
        let b = diff(&plan, Some(&obs));
        assert_eq!(
            b.ops,
            vec![
                Op::FlushChain("old".into()),
                Op::DeleteChain("old".into()),
                Op::DeleteSet {
                    name: "oldset".into(),
                    is_map: false
                },
            ]
        );
    }

    #[test]
    fn diff_from_plan_agrees_with_diff_of_listing() {
        let old = table();
        let mut new = table();
        new.chains.get_mut("svc-a").unwrap().rules[0] =
            Rule::new(vec![dnat_to_port("10.0.0.2".parse().unwrap(), 80)]);
        new.chains.insert("extra".into(), Chain::regular(vec![]));
        new.sets.get_mut("svc").unwrap().elements.clear();
        let mut old2 = old.clone();
        old2.chains.insert(
            "gone".into(),
            Chain::regular(vec![Rule::new(vec![accept()])]),
        );
        for (from, to) in [(&old, &new), (&new, &old), (&old2, &new), (&old, &old)] {
            assert_eq!(
                diff_from_plan(to, from),
                diff(to, Some(&Observed::of_plan(from)))
            );
        }
    }

    #[test]
    fn changed_declaration_rebuilds_table() {
        let plan = table();
        let mut obs = Observed::of_plan(&plan);
        obs.chains.get_mut("in").unwrap().base =
            Some(BaseChain::new(ChainType::Nat, Hook::Prerouting, 0));
        let b = diff(&plan, Some(&obs));
        assert_eq!(b.ops[0], Op::DeleteTable);
        assert_eq!(b.ops[1], Op::AddTable);
    }
}
