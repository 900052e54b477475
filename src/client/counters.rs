//! The client's PN-counters (PROTOCOL.md §3.9, §4.4): local state per counter name, its
//! persistence (`Mutation::PutCounter`), `COUNTER_REQUEST` / `COUNTER_SYNC` out and
//! `COUNTER_RESPONSE` / `COUNTER_UPDATE` in. Sans-I/O: the engine sends and persists what this
//! returns.
//!
//! Unlike both TS clients (TOPGUN-REFERENCE.md defects 9, 10):
//! - state goes out with all four keys and is read from `{p, n}` or `{positive, negative}`
//!   (the protocol's [`CounterState`] does both);
//! - increments made offline, or before a restart, reach the server after the next
//!   authentication ([`CounterManager::after_auth`] re-subscribes every counter and re-syncs
//!   every counter this node contributed to), and a server state missing part of this node's
//!   contribution (a dropped `COUNTER_SYNC`) is answered with a fresh sync;
//! - the node id is the client's persisted one (the caller's), so slot maps do not grow with
//!   every run.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use tokio::sync::watch;

use crate::pncounter::{PnCounter, PnCounterError};
use crate::protocol::{
    CounterNamePayload, CounterRequest, CounterState, CounterStatePayload, CounterSync, Message,
};
use crate::store::{CounterSnapshot, Mutation};

/// Most counters one client keeps open (the server's per-connection subscription limit).
pub const MAX_COUNTERS: usize = crate::server::counters::MAX_COUNTERS_PER_CONNECTION;
/// Longest counter name the server accepts, in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// Why a counter operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CounterError {
    /// Opening another counter would exceed [`MAX_COUNTERS`].
    #[error("too many counters open: at most {limit}")]
    TooManyCounters {
        /// [`MAX_COUNTERS`].
        limit: usize,
    },
    /// The name would fail the server's schema (1–256 characters, no control characters).
    #[error("invalid counter name {name:?}: 1 to 256 characters without control characters")]
    InvalidName {
        /// The refused name.
        name: String,
    },
    /// The delta is not finite, or the total would not be.
    #[error("invalid counter delta: {0}")]
    InvalidDelta(#[from] PnCounterError),
}

/// What a server message did to a counter.
#[derive(Debug, Default, PartialEq)]
pub struct CounterOutcome {
    /// The merged state to persist, when the server's state changed ours.
    pub persist: Option<Mutation>,
    /// A `COUNTER_SYNC` to send, when the server lacks part of this node's contribution.
    pub send: Option<Message>,
}

#[derive(Debug)]
struct Counter {
    state: PnCounter,
    value: watch::Sender<f64>,
}

impl Counter {
    fn new(state: PnCounter) -> Self {
        let (value, _) = watch::channel(state.value());
        Self { state, value }
    }
}

/// Every counter this client has open or restored.
#[derive(Debug)]
pub struct CounterManager {
    node_id: String,
    counters: BTreeMap<String, Counter>,
}

impl CounterManager {
    /// A manager for `node_id` (the client's persisted node id) with the counters restored
    /// from the store (`Store::load_counters`). Corrupt snapshots, and any beyond
    /// [`MAX_COUNTERS`], are skipped with a warning.
    pub fn new(node_id: String, restored: BTreeMap<String, CounterSnapshot>) -> Self {
        let mut counters = BTreeMap::new();
        for (name, snapshot) in restored {
            if counters.len() >= MAX_COUNTERS {
                tracing::warn!(counter = %name, limit = MAX_COUNTERS, "too many stored counters: skipped");
                continue;
            }
            match PnCounter::from_parts(snapshot.p, snapshot.n) {
                Ok(state) => {
                    counters.insert(name, Counter::new(state));
                }
                Err(e) => {
                    tracing::warn!(counter = %name, error = %e, "corrupt stored counter: skipped");
                }
            }
        }
        Self { node_id, counters }
    }

    /// The counter's value and a receiver that sees every later value. The first open while
    /// online returns the `COUNTER_REQUEST` that subscribes to it; opened offline, the
    /// request goes out with [`after_auth`](Self::after_auth).
    pub fn open(
        &mut self,
        name: &str,
        online: bool,
    ) -> Result<(f64, watch::Receiver<f64>, Option<Message>), CounterError> {
        let (counter, created) = ensure(&mut self.counters, name)?;
        let request = (created && online).then(|| request_message(name));
        Ok((counter.state.value(), counter.value.subscribe(), request))
    }

    /// Adds `delta` (negative to decrement) to this node's share at once. Returns the new
    /// value, the mutation to persist, and the `COUNTER_SYNC` to send when online (offline,
    /// [`after_auth`](Self::after_auth) sends it). The engine may coalesce syncs of one
    /// counter: each carries the full state, so the last one suffices.
    pub fn add(
        &mut self,
        name: &str,
        delta: f64,
        online: bool,
    ) -> Result<(f64, Mutation, Option<Message>), CounterError> {
        let (counter, created) = ensure(&mut self.counters, name)?;
        let value = match counter.state.add(&self.node_id, delta) {
            Ok(value) => value,
            Err(e) => {
                if created {
                    self.counters.remove(name);
                }
                return Err(e.into());
            }
        };
        counter.value.send_replace(value);
        let sync = online.then(|| sync_message(name, &counter.state));
        Ok((value, persist_mutation(name, &counter.state), sync))
    }

    /// Merges a `COUNTER_RESPONSE` / `COUNTER_UPDATE` into an open counter. `None` for any
    /// other message, or a counter this client does not have open.
    pub fn on_message(&mut self, message: &Message) -> Option<CounterOutcome> {
        let payload = match message {
            Message::CounterResponse(m) => &m.payload,
            Message::CounterUpdate(m) => &m.payload,
            _ => return None,
        };
        let node_id = self.node_id.clone();
        let counter = self.counters.get_mut(&payload.name)?;
        let incoming = match PnCounter::from_parts(
            payload.state.positive.clone(),
            payload.state.negative.clone(),
        ) {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::warn!(counter = %payload.name, error = %e, "invalid counter state from the server: ignored");
                return Some(CounterOutcome::default());
            }
        };
        let mut outcome = CounterOutcome::default();
        if counter.state.merge(&incoming) {
            counter.value.send_replace(counter.state.value());
            outcome.persist = Some(persist_mutation(&payload.name, &counter.state));
        }
        if lacks_contribution(&incoming, &counter.state, &node_id) {
            outcome.send = Some(sync_message(&payload.name, &counter.state));
        }
        Some(outcome)
    }

    /// After each authentication: `COUNTER_REQUEST` for every counter (the server forgot the
    /// subscriptions with the old connection), and `COUNTER_SYNC` for every counter this node
    /// contributed to (offline increments, or ones made before a restart; merging is
    /// idempotent, so resending synced state is harmless).
    pub fn after_auth(&mut self) -> Vec<Message> {
        let mut messages = Vec::new();
        for (name, counter) in &self.counters {
            messages.push(request_message(name));
            if contributed(&counter.state, &self.node_id) {
                messages.push(sync_message(name, &counter.state));
            }
        }
        messages
    }

    /// The current value of `name`, if it is open.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.counters.get(name).map(|c| c.state.value())
    }
}

/// The counter `name`, created if needed; `true` when it was created.
fn ensure<'a>(
    counters: &'a mut BTreeMap<String, Counter>,
    name: &str,
) -> Result<(&'a mut Counter, bool), CounterError> {
    let open = counters.len();
    match counters.entry(name.to_owned()) {
        Entry::Occupied(entry) => Ok((entry.into_mut(), false)),
        Entry::Vacant(entry) => {
            if !valid_name(name) {
                return Err(CounterError::InvalidName {
                    name: name.to_owned(),
                });
            }
            if open >= MAX_COUNTERS {
                return Err(CounterError::TooManyCounters {
                    limit: MAX_COUNTERS,
                });
            }
            Ok((entry.insert(Counter::new(PnCounter::new())), true))
        }
    }
}

/// Whether this node has ever changed the counter.
fn contributed(state: &PnCounter, node_id: &str) -> bool {
    state.p().contains_key(node_id) || state.n().contains_key(node_id)
}

/// Whether `theirs` is behind `ours` on this node's own entries.
fn lacks_contribution(theirs: &PnCounter, ours: &PnCounter, node_id: &str) -> bool {
    let behind = |their_side: &BTreeMap<String, f64>, our_side: &BTreeMap<String, f64>| {
        our_side
            .get(node_id)
            .is_some_and(|ours| their_side.get(node_id).is_none_or(|theirs| theirs < ours))
    };
    behind(theirs.p(), ours.p()) || behind(theirs.n(), ours.n())
}

fn valid_name(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&chars) && !name.chars().any(char::is_control)
}

fn request_message(name: &str) -> Message {
    CounterRequest {
        payload: CounterNamePayload {
            name: name.to_owned(),
        },
    }
    .into()
}

fn sync_message(name: &str, state: &PnCounter) -> Message {
    CounterSync {
        payload: CounterStatePayload {
            name: name.to_owned(),
            state: CounterState {
                positive: state.p().clone(),
                negative: state.n().clone(),
            },
        },
    }
    .into()
}

fn persist_mutation(name: &str, state: &PnCounter) -> Mutation {
    Mutation::PutCounter {
        name: name.to_owned(),
        state: CounterSnapshot {
            p: state.p().clone(),
            n: state.n().clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::protocol::{CounterResponse, CounterUpdate};

    fn snapshot(p: &[(&str, f64)], n: &[(&str, f64)]) -> CounterSnapshot {
        let side = |entries: &[(&str, f64)]| {
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        CounterSnapshot {
            p: side(p),
            n: side(n),
        }
    }

    fn wire(message: &Message) -> serde_json::Value {
        serde_json::to_value(message).unwrap()
    }

    /// A server-side counter doing what `server::counters` does for one name: merge syncs,
    /// answer requests, and send every merged state to both clients.
    #[derive(Default)]
    struct FakeServer {
        state: PnCounter,
    }

    impl FakeServer {
        fn state_payload(&self, name: &str) -> CounterStatePayload {
            CounterStatePayload {
                name: name.to_owned(),
                state: CounterState {
                    positive: self.state.p().clone(),
                    negative: self.state.n().clone(),
                },
            }
        }

        /// The reply to the sender, and whether it also goes to every other subscriber.
        fn handle(&mut self, message: &Message) -> (Message, bool) {
            match message {
                Message::CounterRequest(r) => (
                    CounterResponse {
                        payload: self.state_payload(&r.payload.name),
                    }
                    .into(),
                    false,
                ),
                Message::CounterSync(s) => {
                    let incoming = PnCounter::from_parts(
                        s.payload.state.positive.clone(),
                        s.payload.state.negative.clone(),
                    )
                    .unwrap();
                    let changed = self.state.merge(&incoming);
                    (
                        CounterUpdate {
                            payload: self.state_payload(&s.payload.name),
                        }
                        .into(),
                        changed,
                    )
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends `outgoing` from client `from` through the server until nothing is left to send.
    fn exchange(
        server: &mut FakeServer,
        clients: &mut [CounterManager],
        from: usize,
        outgoing: Vec<Message>,
    ) {
        let mut queue: Vec<(usize, Message)> = outgoing.into_iter().map(|m| (from, m)).collect();
        while let Some((sender, message)) = queue.pop() {
            let (reply, broadcast) = server.handle(&message);
            for (i, client) in clients.iter_mut().enumerate() {
                if i == sender || broadcast {
                    let outcome = client.on_message(&reply).unwrap();
                    queue.extend(outcome.send.map(|m| (i, m)));
                }
            }
        }
    }

    #[test]
    fn open_subscribes_once_and_watches_the_value() {
        let mut counters = CounterManager::new("me".into(), BTreeMap::new());
        let (value, mut rx, request) = counters.open("hits", true).unwrap();
        assert_eq!(value, 0.0);
        assert_eq!(
            wire(&request.unwrap()),
            json!({"type": "COUNTER_REQUEST", "payload": {"name": "hits"}})
        );
        let (_, _, again) = counters.open("hits", true).unwrap();
        assert_eq!(again, None);
        let (_, _, offline) = counters.open("other", false).unwrap();
        assert_eq!(offline, None);

        counters.add("hits", 2.5, false).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2.5);
    }

    #[test]
    fn add_applies_at_once_persists_and_syncs_with_all_four_keys() {
        let mut counters = CounterManager::new("me".into(), BTreeMap::new());
        counters.add("hits", 5.0, true).unwrap();
        let (value, mutation, sync) = counters.add("hits", -2.0, true).unwrap();
        assert_eq!(value, 3.0);
        assert_eq!(
            mutation,
            Mutation::PutCounter {
                name: "hits".into(),
                state: snapshot(&[("me", 5.0)], &[("me", 2.0)]),
            }
        );
        assert_eq!(
            wire(&sync.unwrap()),
            json!({"type": "COUNTER_SYNC", "payload": {"name": "hits", "state": {
                "p": {"me": 5.0}, "n": {"me": 2.0},
                "positive": {"me": 5.0}, "negative": {"me": 2.0},
            }}})
        );
        let (_, _, offline) = counters.add("hits", 1.0, false).unwrap();
        assert_eq!(offline, None);
    }

    #[test]
    fn refuses_bad_names_bad_deltas_and_too_many_counters() {
        let mut counters = CounterManager::new("me".into(), BTreeMap::new());
        assert!(matches!(
            counters.open("", true),
            Err(CounterError::InvalidName { .. })
        ));
        assert!(matches!(
            counters.add("nan", f64::NAN, true),
            Err(CounterError::InvalidDelta(_))
        ));
        assert_eq!(counters.value("nan"), None, "a refused add opens nothing");
        for i in 0..MAX_COUNTERS {
            counters.open(&format!("c{i}"), false).unwrap();
        }
        assert_eq!(
            counters.add("one-more", 1.0, true).unwrap_err(),
            CounterError::TooManyCounters {
                limit: MAX_COUNTERS
            }
        );
        assert!(
            counters.open("c0", false).is_ok(),
            "open counters stay usable"
        );
    }

    #[test]
    fn both_key_pairs_decode_and_merge() {
        let mut counters = CounterManager::new("me".into(), BTreeMap::new());
        let (_, mut rx, _) = counters.open("hits", true).unwrap();
        let short: Message = serde_json::from_value(json!({"type": "COUNTER_RESPONSE",
            "payload": {"name": "hits", "state": {"p": {"a": 4}, "n": {"b": 1}}}}))
        .unwrap();
        let long: Message = serde_json::from_value(json!({"type": "COUNTER_UPDATE",
            "payload": {"name": "hits", "state": {"positive": {"a": 3, "c": 2}, "negative": {}}}}))
        .unwrap();

        let outcome = counters.on_message(&short).unwrap();
        assert_eq!(
            outcome.persist,
            Some(Mutation::PutCounter {
                name: "hits".into(),
                state: snapshot(&[("a", 4.0)], &[("b", 1.0)]),
            })
        );
        assert_eq!(outcome.send, None);
        assert_eq!(*rx.borrow_and_update(), 3.0);

        let outcome = counters.on_message(&long).unwrap();
        assert_eq!(
            outcome.persist,
            Some(Mutation::PutCounter {
                name: "hits".into(),
                state: snapshot(&[("a", 4.0), ("c", 2.0)], &[("b", 1.0)]),
            })
        );
        assert_eq!(*rx.borrow_and_update(), 5.0);

        assert_eq!(
            counters.on_message(&long).unwrap(),
            CounterOutcome::default(),
            "nothing new: nothing to persist"
        );
        let unknown: Message = serde_json::from_value(json!({"type": "COUNTER_UPDATE",
            "payload": {"name": "nope", "state": {"p": {"a": 1}}}}))
        .unwrap();
        assert_eq!(counters.on_message(&unknown), None);
        let bad: Message = serde_json::from_value(json!({"type": "COUNTER_UPDATE",
            "payload": {"name": "hits", "state": {"p": {"a": -1}}}}))
        .unwrap();
        assert_eq!(counters.on_message(&bad), Some(CounterOutcome::default()));
        assert_eq!(counters.value("hits"), Some(5.0));
    }

    #[test]
    fn a_server_missing_our_contribution_gets_a_fresh_sync() {
        let mut counters = CounterManager::new("me".into(), BTreeMap::new());
        counters.add("hits", 3.0, true).unwrap();
        let stale: Message = serde_json::from_value(json!({"type": "COUNTER_UPDATE",
            "payload": {"name": "hits", "state": {"p": {"me": 1, "other": 2}}}}))
        .unwrap();
        let outcome = counters.on_message(&stale).unwrap();
        assert!(outcome.persist.is_some());
        assert_eq!(
            wire(&outcome.send.unwrap())["payload"]["state"]["p"],
            json!({"me": 3.0, "other": 2.0})
        );
        let current: Message = serde_json::from_value(json!({"type": "COUNTER_UPDATE",
            "payload": {"name": "hits", "state": {"p": {"me": 3, "other": 2}}}}))
        .unwrap();
        assert_eq!(counters.on_message(&current).unwrap().send, None);
    }

    #[test]
    fn offline_increments_sync_after_auth() {
        let mut server = FakeServer::default();
        let mut clients = [CounterManager::new("me".into(), BTreeMap::new())];
        let (_, _, request) = clients[0].open("hits", false).unwrap();
        assert_eq!(request, None);
        clients[0].open("watched", false).unwrap();
        let (_, _, sync) = clients[0].add("hits", 4.0, false).unwrap();
        assert_eq!(sync, None);
        clients[0].add("hits", -1.0, false).unwrap();

        let after_auth = clients[0].after_auth();
        let types: Vec<(&str, String)> = after_auth
            .iter()
            .map(|m| {
                (
                    m.type_name(),
                    wire(m)["payload"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            types,
            vec![
                ("COUNTER_REQUEST", "hits".to_owned()),
                ("COUNTER_SYNC", "hits".to_owned()),
                ("COUNTER_REQUEST", "watched".to_owned()),
            ]
        );
        exchange(
            &mut server,
            &mut clients,
            0,
            after_auth.into_iter().take(2).collect(),
        );
        assert_eq!(server.state.value(), 3.0);
        assert_eq!(clients[0].value("hits"), Some(3.0));
    }

    #[test]
    fn restores_from_snapshots() {
        let restored = BTreeMap::from([
            (
                "mine".to_owned(),
                snapshot(&[("me", 7.0)], &[("other", 2.0)]),
            ),
            ("theirs".to_owned(), snapshot(&[("other", 1.0)], &[])),
            ("corrupt".to_owned(), snapshot(&[("me", f64::NAN)], &[])),
        ]);
        let mut counters = CounterManager::new("me".into(), restored);
        assert_eq!(counters.value("mine"), Some(5.0));
        assert_eq!(counters.value("theirs"), Some(1.0));
        assert_eq!(counters.value("corrupt"), None);
        let (value, rx, request) = counters.open("mine", true).unwrap();
        assert_eq!((value, *rx.borrow()), (5.0, 5.0));
        assert_eq!(request, None, "after_auth subscribes restored counters");

        let messages: Vec<&str> = counters
            .after_auth()
            .iter()
            .map(Message::type_name)
            .collect();
        assert_eq!(
            messages,
            vec!["COUNTER_REQUEST", "COUNTER_SYNC", "COUNTER_REQUEST"],
            "only the counter this node changed is re-synced"
        );
        let (value, mutation, _) = counters.add("mine", 1.0, true).unwrap();
        assert_eq!(value, 6.0);
        assert_eq!(
            mutation,
            Mutation::PutCounter {
                name: "mine".into(),
                state: snapshot(&[("me", 8.0)], &[("other", 2.0)]),
            }
        );
    }

    #[test]
    fn restore_is_bounded() {
        let restored = (0..MAX_COUNTERS + 5)
            .map(|i| (format!("c{i:05}"), snapshot(&[("me", 1.0)], &[])))
            .collect();
        let counters = CounterManager::new("me".into(), restored);
        assert_eq!(counters.counters.len(), MAX_COUNTERS);
    }

    proptest! {
        /// Two clients with their own node ids, adding online or offline in any order,
        /// converge through the server to the sum of all deltas once both have
        /// re-authenticated.
        #[test]
        fn two_clients_converge_through_the_server(
            ops in prop::collection::vec((0usize..2, -50i32..50, any::<bool>()), 0..40),
        ) {
            let mut server = FakeServer::default();
            let mut clients = [
                CounterManager::new("alice".into(), BTreeMap::new()),
                CounterManager::new("bob".into(), BTreeMap::new()),
            ];
            for client in &mut clients {
                client.open("shared", true).unwrap();
            }
            let mut expected = 0i64;
            for (who, delta, online) in ops {
                let (_, _, sync) = clients[who].add("shared", f64::from(delta), online).unwrap();
                expected += i64::from(delta);
                if let Some(sync) = sync {
                    exchange(&mut server, &mut clients, who, vec![sync]);
                }
            }
            for who in 0..2 {
                let messages = clients[who].after_auth();
                exchange(&mut server, &mut clients, who, messages);
            }
            let expected = expected as f64;
            prop_assert_eq!(server.state.value(), expected);
            prop_assert_eq!(clients[0].value("shared"), Some(expected));
            prop_assert_eq!(clients[1].value("shared"), Some(expected));
        }
    }
}
