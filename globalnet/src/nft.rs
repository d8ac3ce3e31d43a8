//! A generic model of one nftables table and an applier that brings the
//! kernel to it: observe (`nft -j list table`), diff, apply the difference in
//! one transaction (`nft -j -f -`). Used by Globalnet on the gateway and by
//! the route agent, each for its own table.

pub mod backend;
pub mod diff;
pub mod expr;
pub mod model;
pub mod render;

pub use backend::{Backend, FakeNft, NftCli};
pub use diff::{Batch, BatchSummary, Observed, ObservedChain, Op, diff, diff_from_plan};
pub use model::{
    BaseChain, Chain, ChainType, DataType, Family, Hook, Policy, Rule, Set, SetFlag, Table, Value,
    Verdict, priority,
};
pub use render::{render, render_pretty};

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::Error;

/// Brings one table to its plan with the least change.
#[derive(Debug)]
pub struct Applier<B> {
    backend: B,
    /// The plan this applier last brought each table to: lets
    /// [`Applier::reconcile_incremental`] skip listing a large table.
    last: Mutex<BTreeMap<(Family, String), Table>>,
}

/// What one reconcile did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The transaction that was applied (empty when the table already matched).
    pub batch: Batch,
}

impl ApplyOutcome {
    /// Whether anything was changed.
    pub fn changed(&self) -> bool {
        !self.batch.is_empty()
    }
}

impl<B: Backend> Applier<B> {
    /// An applier over a backend.
    pub fn new(backend: B) -> Self {
        Applier {
            backend,
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// The backend (tests read the fake through it).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The transaction that would bring the table to `plan`, without applying it.
    pub fn plan_changes(&self, plan: &Table) -> Result<Batch, Error> {
        let observed = self.backend.observe(plan.family, &plan.name)?;
        Ok(diff(plan, observed.as_ref()))
    }

    /// Observes the table, and applies the difference to `plan` in one
    /// transaction; does nothing when the table already matches. This is
    /// the full resync a timer runs to repair drift.
    #[tracing::instrument(skip_all, fields(table = %plan.name))]
    pub fn reconcile(&self, plan: &Table) -> Result<ApplyOutcome, Error> {
        let observed = self.backend.observe(plan.family, &plan.name)?;
        let out = self.apply_batch(plan, diff(plan, observed.as_ref()))?;
        self.remember(plan.clone());
        Ok(out)
    }

    /// Like [`Applier::reconcile`], but diffs against the plan this applier
    /// last applied instead of listing the table (listing 10,000 exports
    /// costs far more than adding one). Lists the table when nothing is
    /// cached, and again when the transaction fails because the table
    /// drifted; drift that does not make it fail waits for the next
    /// [`Applier::reconcile`]. Takes the plan by value to keep it as the
    /// cache without copying it.
    #[tracing::instrument(skip_all, fields(table = %plan.name))]
    pub fn reconcile_incremental(&self, plan: Table) -> Result<ApplyOutcome, Error> {
        let key = (plan.family, plan.name.clone());
        let batch = {
            let last = self.last.lock().expect("lock");
            match last.get(&key) {
                Some(prev) => diff_from_plan(&plan, prev),
                None => {
                    drop(last);
                    return self.reconcile(&plan);
                }
            }
        };
        match self.apply_batch(&plan, batch) {
            Ok(out) => {
                if out.changed() {
                    self.remember(plan);
                }
                Ok(out)
            }
            Err(e) => {
                tracing::warn!(error = %e, "incremental update failed; resyncing from the live table");
                self.reconcile(&plan)
            }
        }
    }

    /// Applies element changes computed without a plan (see
    /// [`crate::ruleset::element_delta`]) to a table this applier last
    /// programmed, without planning, diffing or listing it, and keeps the
    /// cached plan in step. `Ok(None)` when nothing is cached: the caller
    /// plans and reconciles. A failed transaction drops the cache.
    #[tracing::instrument(skip_all, fields(table = %table))]
    pub fn apply_elements(
        &self,
        family: Family,
        table: &str,
        ops: Vec<Op>,
    ) -> Result<Option<ApplyOutcome>, Error> {
        let key = (family, table.to_owned());
        let mut last = self.last.lock().expect("lock");
        let Some(cached) = last.get_mut(&key) else {
            return Ok(None);
        };
        let batch = Batch {
            family,
            table: table.to_owned(),
            ops,
        };
        if !batch.is_empty() {
            log_batch(&batch);
            if let Err(e) = self.backend.apply(&batch) {
                last.remove(&key);
                return Err(e);
            }
            diff::apply_to_plan(cached, &batch.ops);
        }
        Ok(Some(ApplyOutcome { batch }))
    }

    fn remember(&self, plan: Table) {
        let key = (plan.family, plan.name.clone());
        self.last.lock().expect("lock").insert(key, plan);
    }

    fn apply_batch(&self, plan: &Table, batch: Batch) -> Result<ApplyOutcome, Error> {
        let key = (plan.family, plan.name.clone());
        if batch.is_empty() {
            tracing::debug!("nftables table already up to date");
        } else {
            log_batch(&batch);
            if let Err(e) = self.backend.apply(&batch) {
                self.last.lock().expect("lock").remove(&key);
                return Err(e);
            }
        }
        Ok(ApplyOutcome { batch })
    }

    /// Deletes the table if it exists (`nft delete table`).
    pub fn remove(&self, family: Family, table: &str) -> Result<bool, Error> {
        if self.backend.observe(family, table)?.is_none() {
            return Ok(false);
        }
        self.last
            .lock()
            .expect("lock")
            .remove(&(family, table.to_string()));
        self.backend.apply(&Batch {
            family,
            table: table.to_string(),
            ops: vec![Op::DeleteTable],
        })?;
        Ok(true)
    }
}

fn log_batch(batch: &Batch) {
    let s = batch.summary();
    tracing::info!(
        ops = batch.ops.len(),
        elements_added = s.elements_added,
        elements_deleted = s.elements_deleted,
        rules_added = s.rules_added,
        chains_flushed = s.chains_flushed,
        "programming nftables table"
    );
}

#[cfg(test)]
mod tests {
    use super::expr::*;
    use super::*;

    fn plan(n: u16) -> Table {
        let mut t = Table::new(Family::Ip, "t");
        let mut s = Set::map(vec![DataType::Ipv4Addr], vec![DataType::Ipv4Addr]);
        for i in 0..n {
            s.insert_map(
                std::net::Ipv4Addr::new(242, 0, 0, i as u8 + 1),
                std::net::Ipv4Addr::new(10, 0, 0, i as u8 + 1),
            );
        }
        t.sets.insert("hosts".into(), s);
        t.chains.insert(
            "in".into(),
            Chain::base(
                BaseChain::new(ChainType::Nat, Hook::Prerouting, -120),
                vec![Rule::new(vec![dnat_to(map_lookup(ip_daddr(), "hosts"))])],
            ),
        );
        t
    }

    #[test]
    fn incremental_trusts_its_own_last_write() {
        let a = Applier::new(FakeNft::new());
        a.reconcile(&plan(1)).unwrap();
        let out = a.reconcile_incremental(plan(2)).unwrap();
        assert_eq!(out.batch.summary().elements_added, 1);
        assert!(out.batch.summary().only_elements());
        assert!(!a.reconcile_incremental(plan(2)).unwrap().changed());
        assert_eq!(a.backend().applied().len(), 2);
    }

    #[test]
    fn element_changes_keep_the_cached_plan_in_step() {
        let a = Applier::new(FakeNft::new());
        let add = |n: u8| Op::AddElements {
            set: "hosts".into(),
            elements: vec![(
                std::net::Ipv4Addr::new(242, 0, 0, n).into(),
                Some(std::net::Ipv4Addr::new(10, 0, 0, n).into()),
            )],
        };
        // Nothing cached: the caller must plan.
        assert!(
            a.apply_elements(Family::Ip, "t", vec![add(2)])
                .unwrap()
                .is_none()
        );
        a.reconcile(&plan(1)).unwrap();
        let out = a
            .apply_elements(Family::Ip, "t", vec![add(2)])
            .unwrap()
            .unwrap();
        assert_eq!(out.batch.summary().elements_added, 1);
        // The cache now is plan(2): planning it changes nothing, and the
        // kernel (the fake) agrees.
        assert!(!a.reconcile_incremental(plan(2)).unwrap().changed());
        assert!(!a.reconcile(&plan(2)).unwrap().changed());
    }

    #[test]
    fn incremental_resyncs_when_the_table_drifted() {
        let a = Applier::new(FakeNft::new());
        a.reconcile_incremental(plan(1)).unwrap();
        // The table vanished behind the applier's back: the cached diff
        // (add one element) fails, and a full resync recreates everything.
        a.backend().set_table(Family::Ip, "t", None);
        let out = a.reconcile_incremental(plan(2)).unwrap();
        assert_eq!(out.batch.ops[0], Op::AddTable);
        assert_eq!(
            a.backend().dump(Family::Ip, "t"),
            Some(Observed::of_plan(&plan(2)))
        );
    }

    #[test]
    fn remove_is_idempotent() {
        let a = Applier::new(FakeNft::new());
        a.reconcile(&plan(1)).unwrap();
        assert!(a.remove(Family::Ip, "t").unwrap());
        assert!(!a.remove(Family::Ip, "t").unwrap());
        assert_eq!(a.backend().dump(Family::Ip, "t"), None);
    }
}
