//! Per-export elements, and the element changes between two inputs whose
//! tables have the same shape. Adding one export to 10,000 then costs a walk
//! over the exports, not planning and diffing 70,000 elements.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{ALWAYS_PICK_CHAINS, Input, ServiceIngress, chains, sets};
use crate::ipam::ExportKey;
use crate::nft::{Op, Value, Verdict};

/// The set or map an element belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum ElementSet {
    Services,
    SlotAddr(usize),
    SlotPort(usize),
    Affinity(u32),
    Hosts,
}

impl ElementSet {
    fn name(self) -> String {
        match self {
            ElementSet::Services => sets::INGRESS_SERVICES.to_owned(),
            ElementSet::SlotAddr(i) => sets::slot_addr(i),
            ElementSet::SlotPort(i) => sets::slot_port(i),
            ElementSet::Affinity(t) => sets::affinity_services(t),
            ElementSet::Hosts => sets::INGRESS_HOSTS.to_owned(),
        }
    }
}

/// What the chains and set declarations depend on. Two inputs of one shape
/// (and the same frame: sources, remotes, egress pool, MTU) plan tables that
/// differ only in elements.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Shape {
    /// Endpoint counts that get a `gn-lb-N` chain.
    pub lb: BTreeSet<usize>,
    /// Endpoint slots: the largest endpoint count.
    pub slots: usize,
    /// Affinity timeouts of services that have endpoints.
    pub timeouts: BTreeSet<u32>,
}

impl Shape {
    pub(super) fn of(input: &Input) -> Shape {
        let mut counts = BTreeSet::new();
        let mut timeouts = BTreeSet::new();
        for svc in &input.services {
            let affinity = input.affinity.get(&svc.key);
            for p in svc.ports.iter().filter(|p| !p.endpoints.is_empty()) {
                counts.insert(p.endpoints.len());
                timeouts.extend(affinity);
            }
        }
        let slots = counts.last().copied().unwrap_or(0);
        // Every count up to the largest (capped), so a service that shrinks
        // or a new export with fewer endpoints never adds a chain; beyond
        // the cap only the counts in use, since gn-lb-N holds N verdicts.
        let lb = (1..=slots.min(ALWAYS_PICK_CHAINS)).chain(counts).collect();
        Shape {
            lb,
            slots,
            timeouts,
        }
    }
}

/// Calls `emit` with every element `svc` puts in the table: per port with
/// ready endpoints, its `ingress_services` verdict, its endpoints' slot
/// address and port, and its affinity membership.
pub(super) fn service_elements(
    svc: &ServiceIngress,
    affinity: Option<u32>,
    mut emit: impl FnMut(ElementSet, Value, Option<Value>),
) {
    for p in svc.ports.iter().filter(|p| !p.endpoints.is_empty()) {
        let key = Value::Concat(vec![
            Value::Addr(svc.global_ip),
            Value::Str(p.protocol.as_str().into()),
            Value::from(p.port),
        ]);
        if let Some(t) = affinity {
            emit(ElementSet::Affinity(t), key.clone(), None);
        }
        for (i, ep) in p.endpoints.iter().enumerate() {
            emit(
                ElementSet::SlotAddr(i),
                key.clone(),
                Some((*ep.ip()).into()),
            );
            emit(ElementSet::SlotPort(i), key.clone(), Some(ep.port().into()));
        }
        let verdict = Verdict::Goto(chains::lb(p.endpoints.len()));
        emit(ElementSet::Services, key, Some(verdict.into()));
    }
}

type Elements = BTreeMap<(ElementSet, Value), Option<Value>>;

/// The element changes that take the table planned from `before` to the
/// plan of `after`, when the two differ only in exports' elements and
/// `ingress_hosts`; `None` when anything else differs (then plan anew and
/// diff). Removals come first, so a changed map value is a delete and an
/// add of its key in one transaction, as [`crate::nft::diff`] makes it.
pub fn element_delta(before: &Input, after: &Input) -> Option<Vec<Op>> {
    let same_frame = before.table == after.table
        && before.local_sources == after.local_sources
        && before.remote_globals == after.remote_globals
        && before.egress == after.egress
        && before.hash_seed == after.hash_seed
        && before.tunnel_mtu == after.tunnel_mtu;
    if !same_frame || Shape::of(before) != Shape::of(after) {
        return None;
    }
    let mut old: HashMap<&ExportKey, &ServiceIngress> =
        before.services.iter().map(|s| (&s.key, s)).collect();
    if old.len() != before.services.len() {
        return None;
    }
    let (mut removed, mut added) = (Elements::new(), Elements::new());
    fn collect(into: &mut Elements, svc: &ServiceIngress, input: &Input) {
        service_elements(svc, input.affinity.get(&svc.key).copied(), |set, k, v| {
            into.insert((set, k), v);
        })
    }
    for svc in &after.services {
        match old.remove(&svc.key) {
            Some(was)
                if was == svc && before.affinity.get(&svc.key) == after.affinity.get(&svc.key) => {}
            Some(was) => {
                collect(&mut removed, was, before);
                collect(&mut added, svc, after);
            }
            None => collect(&mut added, svc, after),
        }
    }
    for was in old.into_values() {
        collect(&mut removed, was, before);
    }
    for (global, target) in &before.hosts {
        if after.hosts.get(global) != Some(target) {
            removed.insert(
                (ElementSet::Hosts, (*global).into()),
                Some((*target).into()),
            );
        }
    }
    for (global, target) in &after.hosts {
        if before.hosts.get(global) != Some(target) {
            added.insert(
                (ElementSet::Hosts, (*global).into()),
                Some((*target).into()),
            );
        }
    }

    let mut deletes: BTreeMap<ElementSet, Vec<Value>> = BTreeMap::new();
    for (key, value) in removed {
        if added.get(&key) == Some(&value) {
            added.remove(&key);
        } else {
            deletes.entry(key.0).or_default().push(key.1);
        }
    }
    let mut adds: BTreeMap<ElementSet, Vec<(Value, Option<Value>)>> = BTreeMap::new();
    for ((set, key), value) in added {
        adds.entry(set).or_default().push((key, value));
    }
    let deletes = deletes.into_iter().map(|(set, keys)| Op::DeleteElements {
        set: set.name(),
        keys,
    });
    let adds = adds.into_iter().map(|(set, elements)| Op::AddElements {
        set: set.name(),
        elements,
    });
    Some(deletes.chain(adds).collect())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::nft::diff;
    use crate::ruleset::tests::sample;
    use crate::ruleset::{Protocol, ServicePort, plan};

    fn export(name: &str, ip: Ipv4Addr, endpoints: &[&str]) -> ServiceIngress {
        ServiceIngress {
            key: ExportKey::new("default", name),
            global_ip: ip,
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            }],
        }
    }

    /// A named change to an input.
    type Change = Box<dyn Fn(&mut Input)>;

    /// The delta applied to the plan of `before` gives the plan of `after`.
    fn assert_delta_plans(before: &Input, after: &Input) -> Vec<Op> {
        let ops = element_delta(before, after).expect("same shape");
        let mut table = plan(before);
        diff::apply_to_plan(&mut table, &ops);
        assert_eq!(table, plan(after));
        ops
    }

    #[test]
    fn changes_of_exports_alone_are_deltas() {
        let mut before = sample();
        let eps = ["10.244.1.6:80", "10.244.2.6:80"];
        before
            .services
            .push(export("other", Ipv4Addr::new(242, 0, 0, 11), &eps));
        let cases: Vec<(&str, Change)> = vec![
            (
                "one more export",
                Box::new(|i| {
                    let e = export("more", Ipv4Addr::new(242, 0, 0, 99), &["10.244.3.3:80"]);
                    i.services.push(e);
                }),
            ),
            ("an export gone", Box::new(|i| drop(i.services.remove(0)))),
            (
                "an endpoint replaced",
                Box::new(|i| {
                    let eps = &mut i.services[0].ports[0].endpoints;
                    let first = *eps.iter().next().unwrap();
                    eps.remove(&first);
                    eps.insert("10.244.9.9:8080".parse().unwrap());
                }),
            ),
            (
                "an endpoint fewer",
                Box::new(|i| {
                    let eps = &mut i.services[0].ports[0].endpoints;
                    let first = *eps.iter().next().unwrap();
                    eps.remove(&first);
                }),
            ),
            (
                "a headless host",
                Box::new(|i| {
                    let g = Ipv4Addr::new(242, 0, 0, 77);
                    i.hosts.insert(g, Ipv4Addr::new(10, 244, 2, 7));
                }),
            ),
        ];
        for (what, change) in cases {
            let mut after = before.clone();
            change(&mut after);
            let ops = assert_delta_plans(&before, &after);
            assert!(!ops.is_empty(), "{what}: something changes");
            assert!(
                ops.iter()
                    .all(|op| matches!(op, Op::AddElements { .. } | Op::DeleteElements { .. })),
                "{what}: elements only"
            );
        }
    }

    #[test]
    fn one_more_export_adds_its_elements_only() {
        let before = sample();
        let mut after = before.clone();
        let ip = Ipv4Addr::new(242, 0, 0, 99);
        after.services.push(export("more", ip, &["10.244.3.3:80"]));
        let ops = assert_delta_plans(&before, &after);
        // Its verdict, and slot 0's address and port.
        let added: usize = ops
            .iter()
            .map(|op| match op {
                Op::AddElements { elements, .. } => elements.len(),
                _ => panic!("only additions: {op:?}"),
            })
            .sum();
        assert_eq!(added, 3);
    }

    #[test]
    fn nothing_changed_is_an_empty_delta() {
        assert_eq!(element_delta(&sample(), &sample()), Some(vec![]));
    }

    #[test]
    fn a_new_shape_or_frame_is_planned_anew() {
        let before = sample();
        let cases: Vec<(&str, Change)> = vec![
            (
                "a larger endpoint count adds a slot chain",
                Box::new(|i| {
                    let eps = ["10.244.1.1:80", "10.244.1.2:80", "10.244.1.3:80"];
                    let e = export("wide", Ipv4Addr::new(242, 0, 0, 98), &eps);
                    i.services.push(e);
                }),
            ),
            (
                "another egress pool",
                Box::new(|i| i.egress.push(Ipv4Addr::new(242, 0, 0, 9))),
            ),
            (
                "a remote cluster joins",
                Box::new(|i| i.remote_globals.push("242.7.0.0/16".parse().unwrap())),
            ),
            (
                "a first affinity timeout",
                Box::new(|i| {
                    let key = i.services[0].key.clone();
                    i.affinity.insert(key, 10800);
                }),
            ),
        ];
        for (what, change) in cases {
            let mut after = before.clone();
            change(&mut after);
            assert_eq!(element_delta(&before, &after), None, "{what}");
        }
    }
}
