//! An in-memory routing table for tests, with the kernel's rules that matter
//! here: one route per (table, destination), `replace` overwrites a route of
//! the same key, deleting a gone route is success.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Route, RouteBackend, RouteDiff, RouteError, RouteKey};

/// Routes held in memory, of every protocol.
#[derive(Debug, Default)]
pub struct FakeRoutes {
    routes: Mutex<BTreeMap<RouteKey, Route>>,
}

impl FakeRoutes {
    /// Adds a route as another component would (`ip route add`).
    pub fn insert(&self, route: Route) {
        self.lock().insert(route.key(), route);
    }

    /// Every route held, of every protocol.
    pub fn routes(&self) -> Vec<Route> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RouteKey, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RouteBackend for FakeRoutes {
    fn observe(&self, protocol: u8) -> Result<Vec<Route>, RouteError> {
        Ok(self
            .lock()
            .values()
            .filter(|r| r.protocol == protocol)
            .cloned()
            .collect())
    }

    fn apply(&self, diff: &RouteDiff) -> Result<(), RouteError> {
        let mut routes = self.lock();
        for r in &diff.delete {
            if routes.get(&r.key()) == Some(r) {
                routes.remove(&r.key());
            }
        }
        let mut conflict = None;
        for r in &diff.replace {
            match routes.get(&r.key()) {
                Some(have) if have.protocol != r.protocol => {
                    conflict.get_or_insert_with(|| RouteError::Foreign {
                        route: r.to_string(),
                        foreign: have.to_string(),
                    });
                }
                _ => {
                    routes.insert(r.key(), r.clone());
                }
            }
        }
        conflict.map_or(Ok(()), Err)
    }
}
