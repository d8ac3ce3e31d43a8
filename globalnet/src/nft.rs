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
pub use diff::{Batch, BatchSummary, Observed, ObservedChain, Op, diff};
pub use model::{
    BaseChain, Chain, ChainType, DataType, Family, Hook, Policy, Rule, Set, SetFlag, Table, Value,
    Verdict, priority,
};
pub use render::{render, render_pretty};

use crate::Error;

/// Brings one table to its plan with the least change.
#[derive(Debug)]
pub struct Applier<B> {
    backend: B,
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
        Applier { backend }
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
    /// transaction; does nothing when the table already matches.
    #[tracing::instrument(skip_all, fields(table = %plan.name))]
    pub fn reconcile(&self, plan: &Table) -> Result<ApplyOutcome, Error> {
        let batch = self.plan_changes(plan)?;
        if batch.is_empty() {
            tracing::debug!("nftables table already up to date");
        } else {
            let s = batch.summary();
            tracing::info!(
                ops = batch.ops.len(),
                elements_added = s.elements_added,
                elements_deleted = s.elements_deleted,
                rules_added = s.rules_added,
                chains_flushed = s.chains_flushed,
                "programming nftables table"
            );
            self.backend.apply(&batch)?;
        }
        Ok(ApplyOutcome { batch })
    }

    /// Deletes the table if it exists (`nft delete table`).
    pub fn remove(&self, family: Family, table: &str) -> Result<bool, Error> {
        if self.backend.observe(family, table)?.is_none() {
            return Ok(false);
        }
        self.backend.apply(&Batch {
            family,
            table: table.to_string(),
            ops: vec![Op::DeleteTable],
        })?;
        Ok(true)
    }
}
