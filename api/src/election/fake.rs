//! An in-memory election for unit tests.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Elector;
use crate::error::Result;

#[derive(Debug, Default)]
struct State {
    /// Campaigning candidates in arrival order; the first is active.
    queue: Vec<(u64, String, watch::Sender<bool>)>,
    next_id: u64,
    holder: Option<watch::Sender<Option<String>>>,
}

impl State {
    fn promote(&mut self) {
        for (i, (_, _, tx)) in self.queue.iter().enumerate() {
            tx.send_replace(i == 0);
        }
        let h = self.queue.first().map(|(_, name, _)| name.clone());
        if let Some(tx) = &self.holder {
            tx.send_replace(h);
        }
    }
}

/// One election that [`FakeElector`]s campaign in. The first candidate is
/// active; resigning or dropping hands over to the next at once.
#[derive(Debug, Clone)]
pub struct FakeElection {
    state: Arc<Mutex<State>>,
    holder: watch::Receiver<Option<String>>,
}

impl Default for FakeElection {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeElection {
    /// A new, empty election.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(None);
        Self {
            state: Arc::new(Mutex::new(State {
                holder: Some(tx),
                ..State::default()
            })),
            holder: rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters `candidate` into the election.
    pub fn campaign(&self, candidate: &str) -> FakeElector {
        let (tx, rx) = watch::channel(false);
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.queue.push((id, candidate.to_owned(), tx));
        s.promote();
        FakeElector {
            election: self.clone(),
            id,
            active: rx,
        }
    }

    /// The active candidate's name.
    pub fn holder(&self) -> Option<String> {
        self.holder.borrow().clone()
    }

    fn leave(&self, id: u64) {
        let mut s = self.lock();
        if let Some(pos) = s.queue.iter().position(|(i, _, _)| *i == id) {
            let (_, _, tx) = s.queue.remove(pos);
            tx.send_replace(false);
            s.promote();
        }
    }
}

/// A candidate in a [`FakeElection`].
#[derive(Debug)]
pub struct FakeElector {
    election: FakeElection,
    id: u64,
    active: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl Elector for FakeElector {
    fn active(&self) -> watch::Receiver<bool> {
        self.active.clone()
    }

    fn holder(&self) -> watch::Receiver<Option<String>> {
        self.election.holder.clone()
    }

    async fn resign(&self) -> Result<()> {
        self.election.leave(self.id);
        Ok(())
    }
}

impl Drop for FakeElector {
    fn drop(&mut self) {
        self.election.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_is_active_and_resign_hands_over() {
        let e = FakeElection::new();
        let a = e.campaign("a");
        let b = e.campaign("b");
        assert!(*a.active().borrow());
        assert!(!*b.active().borrow());
        assert_eq!(e.holder().as_deref(), Some("a"));
        a.resign().await.unwrap();
        assert!(!*a.active().borrow());
        assert!(*b.active().borrow());
        drop(b);
        assert_eq!(e.holder(), None);
    }
}
