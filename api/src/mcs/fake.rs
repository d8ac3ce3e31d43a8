//! The in-memory core of the fake writers ([`super::FakeImportWriter`],
//! [`super::FakeDerivedWriter`]): the objects by `(namespace, name)`, every
//! call in order, and a switch that makes calls fail.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Objects of type `T`, calls of type `C`.
#[derive(Debug)]
pub(super) struct FakeObjects<T, C> {
    inner: Arc<Mutex<State<T, C>>>,
}

#[derive(Debug)]
struct State<T, C> {
    objects: BTreeMap<(String, String), T>,
    log: Vec<C>,
    failing: bool,
}

impl<T, C> Default for FakeObjects<T, C> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                log: Vec::new(),
                failing: false,
            })),
        }
    }
}

impl<T, C> Clone for FakeObjects<T, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Clone, C: Clone> FakeObjects<T, C> {
    fn lock(&self) -> MutexGuard<'_, State<T, C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn objects(&self) -> BTreeMap<(String, String), T> {
        self.lock().objects.clone()
    }

    pub(super) fn log(&self) -> Vec<C> {
        self.lock().log.clone()
    }

    pub(super) fn fail(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Logs `call`; unless failing, applies `change` to the objects. False
    /// when failing.
    pub(super) fn call(
        &self,
        call: C,
        change: impl FnOnce(&mut BTreeMap<(String, String), T>),
    ) -> bool {
        let mut state = self.lock();
        state.log.push(call);
        if state.failing {
            return false;
        }
        change(&mut state.objects);
        true
    }
}
