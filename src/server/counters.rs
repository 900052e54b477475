//! PN-counters: `COUNTER_REQUEST` / `COUNTER_SYNC` (PROTOCOL.md §3.9) and the registry of
//! counter states and subscribers.
//!
//! Unlike TopGun (TOPGUN-REFERENCE.md defects 9, 10) counters are permission-checked, persisted
//! and spoken in both key spellings:
//! - `COUNTER_REQUEST` needs `READ` on `counter:<name>`; it subscribes the connection and
//!   answers `COUNTER_RESPONSE` with the current state.
//! - `COUNTER_SYNC` needs `PUT` on `counter:<name>`; it merges the client's state (per-node
//!   max), persists the result (`Mutation::PutCounter`), subscribes the sender, answers it with
//!   `COUNTER_UPDATE`, and pushes `COUNTER_UPDATE` to every other subscriber when the state
//!   changed.
//! - Every persisted counter is loaded from the store on first use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

use crate::pncounter::PnCounter;
use crate::protocol::{
    CounterNamePayload, CounterResponse, CounterState, CounterStatePayload, CounterUpdate,
};
use crate::security::Action;
use crate::store::{CounterSnapshot, Mutation, Store, StoreError, WriteBatch};

use super::Shared;
use super::connections::{ConnHandle, ConnId, SendError};
use super::dispatch::Flow;
use super::session::{Session, send_to};

/// Most counters one connection may subscribe to.
pub const MAX_COUNTERS_PER_CONNECTION: usize = 1_024;

/// The permission resource of a counter.
pub fn counter_resource(name: &str) -> String {
    format!("counter:{name}")
}

/// Every counter's state and subscribers.
#[derive(Default)]
pub struct CounterRegistry {
    loaded: OnceCell<()>,
    /// Serialises merge + persist so a later state is never overwritten on disk by an
    /// earlier one whose commit happened to finish last.
    persist_order: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    counters: HashMap<String, PnCounter>,
    subscribers: HashMap<String, BTreeMap<ConnId, ConnHandle>>,
    by_conn: HashMap<ConnId, HashSet<String>>,
}

/// Whether a subscription was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscribed {
    Yes,
    LimitReached,
}

impl CounterRegistry {
    /// Loads every persisted counter once; a failed load is retried on the next use.
    async fn ensure_loaded(&self, store: &dyn Store) -> Result<(), StoreError> {
        self.loaded
            .get_or_try_init(|| async {
                let stored = store.load_counters().await?;
                let mut inner = self.lock();
                for (name, snapshot) in stored {
                    match PnCounter::from_parts(snapshot.p, snapshot.n) {
                        Ok(counter) => {
                            inner.counters.entry(name).or_insert(counter);
                        }
                        Err(e) => {
                            tracing::error!(counter = %name, error = %e, "ignoring a corrupt stored counter");
                        }
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The wire state of `name` (zero if unknown).
    pub fn state(&self, name: &str) -> CounterState {
        self.lock()
            .counters
            .get(name)
            .map(wire_state)
            .unwrap_or_default()
    }

    /// Merges `incoming` into `name`; returns the resulting state and whether it changed.
    fn merge(&self, name: &str, incoming: &PnCounter) -> (PnCounter, bool) {
        let mut inner = self.lock();
        let counter = inner.counters.entry(name.to_owned()).or_default();
        let changed = counter.merge(incoming);
        (counter.clone(), changed)
    }

    fn subscribe(&self, name: &str, conn: &ConnHandle) -> Subscribed {
        let mut inner = self.lock();
        let owned = inner.by_conn.entry(conn.id).or_default();
        if !owned.contains(name) && owned.len() >= MAX_COUNTERS_PER_CONNECTION {
            return Subscribed::LimitReached;
        }
        owned.insert(name.to_owned());
        inner
            .subscribers
            .entry(name.to_owned())
            .or_default()
            .insert(conn.id, conn.clone());
        Subscribed::Yes
    }

    /// Subscribers of `name` other than `except`.
    fn others(&self, name: &str, except: ConnId) -> Vec<ConnHandle> {
        self.lock()
            .subscribers
            .get(name)
            .map(|subs| subs.values().filter(|c| c.id != except).cloned().collect())
            .unwrap_or_default()
    }

    /// Number of subscriptions `conn` holds.
    pub fn subscriptions_of(&self, conn: ConnId) -> usize {
        self.lock().by_conn.get(&conn).map_or(0, HashSet::len)
    }

    /// Drops every subscription of a closed connection.
    pub fn remove_connection(&self, conn: ConnId) {
        let mut inner = self.lock();
        for name in inner.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(subs) = inner.subscribers.get_mut(&name) {
                subs.remove(&conn);
                if subs.is_empty() {
                    inner.subscribers.remove(&name);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn wire_state(counter: &PnCounter) -> CounterState {
    CounterState {
        positive: counter.p().clone(),
        negative: counter.n().clone(),
    }
}

/// Checks `action` on the counter, answering `ERROR 403` when denied.
fn permitted(shared: &Shared, session: &Session, name: &str, action: Action) -> bool {
    let allowed = shared
        .permissions
        .check(session.principal(), &counter_resource(name), action);
    if !allowed {
        session.send_error(shared, 403, format!("Access denied for counter {name}"));
    }
    allowed
}

/// Loads persisted counters, answering `ERROR 500` when the store cannot.
async fn loaded(shared: &Shared, session: &Session) -> bool {
    match shared.counters.ensure_loaded(&*shared.store).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "loading counters failed");
            session.send_error(shared, 500, format!("Counters unavailable: {e}"));
            false
        }
    }
}

fn subscribe(shared: &Shared, session: &Session, name: &str) {
    if shared.counters.subscribe(name, session.handle()) == Subscribed::LimitReached {
        session.send_error(
            shared,
            429,
            format!(
                "Counter limit reached: at most {MAX_COUNTERS_PER_CONNECTION} counter subscriptions per connection"
            ),
        );
    }
}

/// `COUNTER_REQUEST`: subscribe and answer the current state.
pub async fn handle_counter_request(
    shared: &Arc<Shared>,
    session: &mut Session,
    request: CounterNamePayload,
) -> Flow {
    let name = request.name;
    if !permitted(shared, session, &name, Action::Read) || !loaded(shared, session).await {
        return Flow::Continue;
    }
    subscribe(shared, session, &name);
    let state = shared.counters.state(&name);
    let _ = session.send(
        shared,
        CounterResponse {
            payload: CounterStatePayload { name, state },
        },
    );
    Flow::Continue
}

/// `COUNTER_SYNC`: merge, persist, answer the sender and notify the other subscribers.
pub async fn handle_counter_sync(
    shared: &Arc<Shared>,
    session: &mut Session,
    sync: CounterStatePayload,
) -> Flow {
    let name = sync.name;
    if !permitted(shared, session, &name, Action::Put) || !loaded(shared, session).await {
        return Flow::Continue;
    }
    let incoming = match PnCounter::from_parts(sync.state.positive, sync.state.negative) {
        Ok(counter) => counter,
        Err(e) => {
            session.send_error(
                shared,
                400,
                format!("Invalid state for counter {name}: {e}"),
            );
            return Flow::Continue;
        }
    };
    let (merged, changed) = {
        let _order = shared.counters.persist_order.lock().await;
        let (merged, changed) = shared.counters.merge(&name, &incoming);
        if changed && let Err(e) = persist(&*shared.store, &name, &merged).await {
            tracing::error!(counter = %name, error = %e, "persisting a counter failed");
            session.send_error(
                shared,
                500,
                format!("Persisting counter {name} failed: {e}"),
            );
        }
        (merged, changed)
    };
    subscribe(shared, session, &name);
    let update: crate::protocol::Message = CounterUpdate {
        payload: CounterStatePayload {
            name: name.clone(),
            state: wire_state(&merged),
        },
    }
    .into();
    let _ = send_to(shared, session.handle(), &update);
    if changed {
        for conn in shared.counters.others(&name, session.id) {
            if let Err(SendError::Gone) = send_to(shared, &conn, &update) {
                shared.counters.remove_connection(conn.id);
            }
        }
    }
    Flow::Continue
}

async fn persist(store: &dyn Store, name: &str, counter: &PnCounter) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    batch.push(Mutation::PutCounter {
        name: name.to_owned(),
        state: CounterSnapshot {
            p: counter.p().clone(),
            n: counter.n().clone(),
        },
    });
    store.commit(batch).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn counter(p: &[(&str, f64)], n: &[(&str, f64)]) -> PnCounter {
        let side = |entries: &[(&str, f64)]| {
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        PnCounter::from_parts(side(p), side(n)).unwrap()
    }

    #[tokio::test]
    async fn loads_persisted_counters_once_and_merges_on_top() {
        let store = MemoryStore::new();
        persist(&store, "hits", &counter(&[("a", 3.0)], &[("a", 1.0)]))
            .await
            .unwrap();
        let registry = CounterRegistry::default();
        registry.ensure_loaded(&store).await.unwrap();
        assert_eq!(registry.state("hits").value(), 2.0);
        assert_eq!(registry.state("unknown"), CounterState::default());

        let (merged, changed) = registry.merge("hits", &counter(&[("a", 2.0), ("b", 5.0)], &[]));
        assert!(changed);
        assert_eq!(
            merged.value(),
            7.0,
            "per-node max: a stays 3, b adds 5, minus 1"
        );
        let (_, again) = registry.merge("hits", &counter(&[("b", 5.0)], &[]));
        assert!(!again, "merging a dominated state changes nothing");

        // A second load must not clobber in-memory merges with the stored state.
        registry.ensure_loaded(&store).await.unwrap();
        assert_eq!(registry.state("hits").value(), 7.0);
    }

    #[tokio::test]
    async fn a_failed_load_is_retried() {
        let store = MemoryStore::new();
        store.close().await.unwrap();
        let registry = CounterRegistry::default();
        assert!(registry.ensure_loaded(&store).await.is_err());
        let reopened = MemoryStore::new();
        persist(&reopened, "c", &counter(&[("x", 4.0)], &[]))
            .await
            .unwrap();
        registry.ensure_loaded(&reopened).await.unwrap();
        assert_eq!(registry.state("c").value(), 4.0);
    }

    #[test]
    fn subscriptions_are_bounded_and_dropped_with_the_connection() {
        let registry = CounterRegistry::default();
        let (a, _rx_a) = super::super::connections::outbound_queue(1, 8);
        let (b, _rx_b) = super::super::connections::outbound_queue(2, 8);
        for i in 0..MAX_COUNTERS_PER_CONNECTION {
            assert_eq!(registry.subscribe(&format!("c{i}"), &a), Subscribed::Yes);
        }
        assert_eq!(registry.subscribe("one-more", &a), Subscribed::LimitReached);
        assert_eq!(
            registry.subscribe("c0", &a),
            Subscribed::Yes,
            "resubscribing is free"
        );
        assert_eq!(registry.subscribe("c0", &b), Subscribed::Yes);
        let others: Vec<ConnId> = registry.others("c0", 1).iter().map(|c| c.id).collect();
        assert_eq!(others, vec![2]);

        registry.remove_connection(1);
        assert_eq!(registry.subscriptions_of(1), 0);
        assert!(registry.others("c0", 2).is_empty());
        assert!(registry.others("c1", 0).is_empty());
        assert_eq!(registry.subscriptions_of(2), 1);
    }

    #[test]
    fn counters_are_permission_checked_under_their_own_namespace() {
        assert_eq!(counter_resource("likes"), "counter:likes");
    }
}
