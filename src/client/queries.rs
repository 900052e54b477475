//! The client's live queries (`QUERY_SUB` / `QUERY_RESP` / `QUERY_UPDATE` / `QUERY_UNSUB`,
//! PROTOCOL.md §3.6): registration, local evaluation, reconciliation with the server, and
//! re-subscription after every authentication.
//!
//! Each query keeps every row it knows to match (its *candidates*), sorted by the same
//! [`CompiledQuery`] the server uses, and shows the first `limit` of them. Local changes
//! (writes, server events, sync merges) arrive through [`QueryManager::on_change`] and update
//! results at once, so offline UIs see their own writes (REFERENCE defect 23). A `QUERY_RESP`
//! replaces the candidates even when empty, so rows deleted on the server while the client was
//! offline disappear; keys that changed locally while that answer was awaited keep their local
//! state, because the server's answer may predate them.
//!
//! The collection is LRU-bounded ([`QueryConfig::max_live_queries`]); when it is full the least
//! recently used query without listeners goes first, and only if every query has listeners is
//! the least recently used one evicted. Either way the eviction is unsubscribed on the server
//! and reported, never silent.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::protocol::{
    ChangeType, CursorStatus, Message, QueryIdPayload, QueryResp, QuerySub, QuerySubPayload,
    QueryUnsub, QueryUpdate,
};
use crate::query::{self, CompiledQuery, Query, QueryLimits};

/// Most keys whose local state is remembered while a server answer is awaited; past it, new
/// keys are left to the server's answer (which already reflects every flushed write).
const MAX_OVERLAY_KEYS: usize = 10_000;

/// Limits of the live-query collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryConfig {
    /// Most live queries held at once (LRU bound); 0 is treated as 1.
    pub max_live_queries: usize,
    /// Events buffered per query for slow receivers; a receiver that falls further behind
    /// gets `RecvError::Lagged` and should read the latest snapshot.
    pub event_capacity: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_live_queries: 256,
            event_capacity: 64,
        }
    }
}

/// One row's change between two consecutive results.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryChange {
    /// The key entered the results.
    Added { key: String, value: Value },
    /// The key stayed in the results with a new value (or position).
    Updated { key: String, value: Value },
    /// The key left the results.
    Removed { key: String },
}

/// A query's current results.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuerySnapshot {
    /// `(key, value)` rows in query order, at most `limit` of them.
    pub rows: Vec<(String, Value)>,
    /// The server's cursor for the next page (only the server can issue one).
    pub next_cursor: Option<String>,
    /// More matching rows exist beyond `rows`.
    pub has_more: bool,
    /// The server has answered at least once since registration.
    pub from_server: bool,
}

/// What a query's receivers hear.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryEvent {
    /// New results (the first event is the local result).
    Changed {
        snapshot: Arc<QuerySnapshot>,
        changes: Vec<QueryChange>,
    },
    /// The query was evicted from the LRU-bounded collection; no more events follow.
    Evicted,
    /// The server answered the query with an error; local results stay as they were.
    Error { code: Option<u32>, message: String },
}

/// Events for the application-level event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryManagerEvent {
    /// A live query was evicted to keep the collection within its bound.
    Evicted { query_id: String, map_name: String },
}

/// Why a query could not be registered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The query does not compile (the same checks the server makes).
    #[error("invalid query: {0}")]
    Invalid(Arc<query::QueryError>),
    /// The query asks for something live queries cannot evaluate.
    #[error("{feature} is not supported by live queries")]
    Unsupported { feature: &'static str },
}

/// A query the LRU pushed out to make room.
#[derive(Debug, Clone, PartialEq)]
pub struct Eviction {
    /// `QUERY_UNSUB` for the evicted query, when online.
    pub unsubscribe: Option<Message>,
    /// The event to report on the application stream.
    pub event: QueryManagerEvent,
}

/// The outcome of [`QueryManager::register`].
#[derive(Debug)]
pub struct Registered {
    /// The query id (`q1`, `q2`, ...).
    pub id: String,
    /// The query's events; the first one is already queued.
    pub events: broadcast::Receiver<QueryEvent>,
    /// `QUERY_SUB` to send now, when online.
    pub subscribe: Option<Message>,
    /// The query evicted to make room, if any.
    pub eviction: Option<Eviction>,
}

/// Where a query's result window starts.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    /// The first matching row.
    Beginning,
    /// Strictly after this `(key, value)` row: the position of a known cursor.
    After(String, Value),
    /// After a cursor this client did not issue; only the server can place new rows.
    Unknown,
}

/// What the server last said about paging.
#[derive(Debug, Clone, Default)]
struct ServerPage {
    next_cursor: Option<String>,
    has_more: bool,
}

#[derive(Debug)]
struct LiveQuery {
    map: String,
    query: Query,
    compiled: CompiledQuery,
    start: Start,
    /// Every known matching row after `start`, in query order.
    candidates: Vec<(String, Value)>,
    /// Local state of keys changed since the last server answer; `Some` while one is awaited.
    overlay: Option<HashMap<String, Option<Value>>>,
    server: Option<ServerPage>,
    snapshot: Arc<QuerySnapshot>,
    events: broadcast::Sender<QueryEvent>,
}

impl LiveQuery {
    fn subscribe_message(&self, id: &str) -> Message {
        QuerySub {
            payload: QuerySubPayload {
                query_id: id.to_owned(),
                map_name: self.map.clone(),
                query: self.query.clone(),
                fields: None,
            },
        }
        .into()
    }

    fn admits(&self, key: &str, value: &Value) -> bool {
        match &self.start {
            Start::Beginning | Start::Unknown => true,
            Start::After(after_key, after_value) => {
                self.compiled
                    .compare((key, value), (after_key, after_value))
                    == std::cmp::Ordering::Greater
            }
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.candidates.iter().position(|(k, _)| k == key)
    }

    fn insert_sorted(&mut self, key: String, value: Value) {
        let slot = self.candidates.partition_point(|(k, v)| {
            self.compiled.compare((k, v), (&key, &value)) == std::cmp::Ordering::Less
        });
        self.candidates.insert(slot, (key, value));
    }

    /// Applies the map's new state of `key`; whether the candidates changed.
    fn apply_local(&mut self, key: &str, value: Option<&Value>) -> bool {
        let now = value.filter(|v| self.compiled.matches(v) && self.admits(key, v));
        let was = self.position(key);
        match (was, now) {
            (None, None) => false,
            // Without the cursor's position a new row cannot be placed; the server will.
            (None, Some(_)) if self.start == Start::Unknown => false,
            (Some(index), None) => {
                self.candidates.remove(index);
                true
            }
            (None, Some(value)) => {
                self.insert_sorted(key.to_owned(), value.clone());
                true
            }
            (Some(index), Some(value)) => {
                if &self.candidates[index].1 == value {
                    return false;
                }
                self.candidates.remove(index);
                self.insert_sorted(key.to_owned(), value.clone());
                true
            }
        }
    }

    /// Applies a server-side row change; the server's window is trusted as is.
    fn apply_server(&mut self, key: &str, value: Option<&Value>) {
        if let Some(index) = self.position(key) {
            self.candidates.remove(index);
        }
        if let Some(value) = value {
            self.insert_sorted(key.to_owned(), value.clone());
        }
    }

    fn remember_local(&mut self, key: &str, value: Option<&Value>) {
        if let Some(overlay) = &mut self.overlay
            && (overlay.len() < MAX_OVERLAY_KEYS || overlay.contains_key(key))
        {
            overlay.insert(key.to_owned(), value.cloned());
        }
    }

    fn compute_snapshot(&self) -> QuerySnapshot {
        let limit = self.compiled.limit().unwrap_or(usize::MAX);
        let server = self.server.clone().unwrap_or_default();
        QuerySnapshot {
            rows: self.candidates.iter().take(limit).cloned().collect(),
            next_cursor: server.next_cursor,
            has_more: self.candidates.len() > limit || server.has_more,
            from_server: self.server.is_some(),
        }
    }

    /// Recomputes the snapshot and tells receivers when anything they can see changed.
    fn publish(&mut self) {
        let snapshot = self.compute_snapshot();
        if snapshot == *self.snapshot {
            return;
        }
        let changes = diff(&self.snapshot.rows, &snapshot.rows);
        self.snapshot = Arc::new(snapshot);
        // No receivers is not an error: the engine collects such queries with `gc_unused`.
        let _ = self.events.send(QueryEvent::Changed {
            snapshot: Arc::clone(&self.snapshot),
            changes,
        });
    }
}

/// The row changes from `old` to `new`: removals first, then additions and updates in
/// result order. (Rows whose values did not change keep their relative order, because the
/// query order is total.)
fn diff(old: &[(String, Value)], new: &[(String, Value)]) -> Vec<QueryChange> {
    let before: HashMap<&str, &Value> = old.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let after: HashMap<&str, &Value> = new.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut changes: Vec<QueryChange> = old
        .iter()
        .filter(|(k, _)| !after.contains_key(k.as_str()))
        .map(|(k, _)| QueryChange::Removed { key: k.clone() })
        .collect();
    for (key, value) in new {
        match before.get(key.as_str()) {
            None => changes.push(QueryChange::Added {
                key: key.clone(),
                value: value.clone(),
            }),
            Some(previous) if *previous != value => changes.push(QueryChange::Updated {
                key: key.clone(),
                value: value.clone(),
            }),
            Some(_) => {}
        }
    }
    changes
}

/// Registers live queries, evaluates them locally, reconciles them with the server and
/// re-subscribes them after every authentication.
#[derive(Debug)]
pub struct QueryManager {
    queries: LruCache<String, LiveQuery>,
    /// Positions of cursors this client received, so a page requested with one can be
    /// evaluated locally too.
    cursor_positions: LruCache<String, (String, Value)>,
    event_capacity: usize,
    next_id: u64,
}

impl QueryManager {
    /// An empty manager.
    pub fn new(config: QueryConfig) -> Self {
        let capacity = NonZeroUsize::new(config.max_live_queries).unwrap_or(NonZeroUsize::MIN);
        Self {
            queries: LruCache::new(capacity),
            cursor_positions: LruCache::new(capacity),
            event_capacity: config.event_capacity.max(1),
            next_id: 0,
        }
    }

    /// How many live queries are registered.
    pub fn len(&self) -> usize {
        self.queries.len()
    }

    /// Whether no live query is registered.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// Registers a live query over `map`; `local` = the map's current local entries (for OR
    /// maps the array of live values per key). Returns the id, a receiver whose first event is
    /// the local result, the `QUERY_SUB` to send if `online`, and the eviction the LRU bound
    /// caused, if any.
    pub fn register(
        &mut self,
        map: &str,
        query: Query,
        local: impl Iterator<Item = (String, Value)>,
        online: bool,
    ) -> Result<Registered, QueryError> {
        if query.group_by.is_some() {
            return Err(QueryError::Unsupported { feature: "groupBy" });
        }
        if query.aggregations.is_some() {
            return Err(QueryError::Unsupported {
                feature: "aggregations",
            });
        }
        let compiled = CompiledQuery::compile(&query, &QueryLimits::default())
            .map_err(|e| QueryError::Invalid(Arc::new(e)))?;
        let start = match &query.cursor {
            None => Start::Beginning,
            Some(cursor) => match self.cursor_positions.get(cursor) {
                Some((key, value)) => Start::After(key.clone(), value.clone()),
                None => Start::Unknown,
            },
        };
        let (events, receiver) = broadcast::channel(self.event_capacity);
        let mut live = LiveQuery {
            map: map.to_owned(),
            query,
            compiled,
            start,
            candidates: Vec::new(),
            overlay: Some(HashMap::new()),
            server: None,
            snapshot: Arc::new(QuerySnapshot::default()),
            events,
        };
        if live.start != Start::Unknown {
            let mut rows: Vec<(String, Value)> = local
                .filter(|(k, v)| live.compiled.matches(v) && live.admits(k, v))
                .collect();
            rows.sort_by(|a, b| live.compiled.compare((&a.0, &a.1), (&b.0, &b.1)));
            live.candidates = rows;
        }
        let snapshot = Arc::new(live.compute_snapshot());
        live.snapshot = Arc::clone(&snapshot);
        let changes = diff(&[], &snapshot.rows);
        let _ = live.events.send(QueryEvent::Changed { snapshot, changes });

        self.next_id += 1;
        let id = format!("q{}", self.next_id);
        let subscribe = online.then(|| live.subscribe_message(&id));
        let eviction = self.make_room(online);
        self.queries.put(id.clone(), live);
        Ok(Registered {
            id,
            events: receiver,
            subscribe,
            eviction,
        })
    }

    /// Evicts one query when the collection is full: the least recently used one without
    /// receivers if there is one, else the least recently used one.
    fn make_room(&mut self, online: bool) -> Option<Eviction> {
        if self.queries.len() < self.queries.cap().get() {
            return None;
        }
        let unused = self
            .queries
            .iter()
            .rev()
            .find(|(_, live)| live.events.receiver_count() == 0)
            .map(|(id, _)| id.clone());
        let (id, live) = match unused {
            Some(id) => self.queries.pop_entry(&id)?,
            None => self.queries.pop_lru()?,
        };
        let _ = live.events.send(QueryEvent::Evicted);
        Some(Eviction {
            unsubscribe: online.then(|| unsubscribe_message(&id)),
            event: QueryManagerEvent::Evicted {
                query_id: id,
                map_name: live.map,
            },
        })
    }

    /// Drops a query; the `QUERY_UNSUB` to send when online and the query existed.
    pub fn unregister(&mut self, id: &str, online: bool) -> Option<Message> {
        self.queries.pop(id)?;
        online.then(|| unsubscribe_message(id))
    }

    /// Drops every query whose receivers are all gone; the `QUERY_UNSUB`s to send when online.
    pub fn gc_unused(&mut self, online: bool) -> Vec<Message> {
        let unused: Vec<String> = self
            .queries
            .iter()
            .filter(|(_, live)| live.events.receiver_count() == 0)
            .map(|(id, _)| id.clone())
            .collect();
        unused
            .into_iter()
            .filter_map(|id| self.unregister(&id, online))
            .collect()
    }

    /// `QUERY_SUB` for every live query, oldest first: send after each authentication.
    pub fn resubscribe(&self) -> Vec<Message> {
        self.queries
            .iter()
            .rev()
            .map(|(id, live)| live.subscribe_message(id))
            .collect()
    }

    /// The connection dropped: from now on local changes are remembered per key until each
    /// query's next server answer, which may not reflect them.
    pub fn disconnected(&mut self) {
        for (_, live) in self.queries.iter_mut() {
            live.overlay.get_or_insert_with(HashMap::new);
        }
    }

    /// Applies `QUERY_RESP` / `QUERY_UPDATE` of either generation to its query; `false` for
    /// other messages and unknown query ids.
    pub fn on_message(&mut self, message: &Message) -> bool {
        match message {
            Message::QueryResp(resp) => self.on_resp(resp),
            Message::QueryUpdate(update) => self.on_update(update),
            _ => false,
        }
    }

    fn on_resp(&mut self, resp: &QueryResp) -> bool {
        let payload = &resp.payload;
        let Some(live) = self.queries.peek_mut(&payload.query_id) else {
            return false;
        };
        if payload.error.is_some() || payload.code.is_some() {
            let _ = live.events.send(QueryEvent::Error {
                code: payload.code,
                message: payload.error.clone().unwrap_or_default(),
            });
            return true;
        }
        if !matches!(payload.cursor_status, Some(CursorStatus::Valid)) {
            // The server paged from the beginning (no cursor, or an expired/invalid one).
            live.start = Start::Beginning;
        }
        // Replaced even when empty: rows deleted on the server while offline must go.
        let mut rows: Vec<(String, Value)> = payload
            .results
            .iter()
            .map(|row| (row.key.clone(), row.value.clone()))
            .collect();
        rows.sort_by(|a, b| live.compiled.compare((&a.0, &a.1), (&b.0, &b.1)));
        live.candidates = rows;
        for (key, value) in live.overlay.take().unwrap_or_default() {
            live.apply_local(&key, value.as_ref());
        }
        live.server = Some(ServerPage {
            next_cursor: payload.next_cursor.clone(),
            has_more: payload.has_more.unwrap_or(false),
        });
        live.publish();
        if let (Some(cursor), Some(last)) = (&payload.next_cursor, payload.results.last()) {
            self.cursor_positions
                .put(cursor.clone(), (last.key.clone(), last.value.clone()));
        }
        true
    }

    fn on_update(&mut self, update: &QueryUpdate) -> bool {
        let payload = &update.payload;
        let Some(live) = self.queries.peek_mut(&payload.query_id) else {
            return false;
        };
        // Both generations delete on `value: nil`, whatever the change type says.
        let leaves = update.change() == Some(ChangeType::Leave) || payload.value.is_null();
        live.apply_server(&payload.key, (!leaves).then_some(&payload.value));
        live.publish();
        true
    }

    /// A key of `map` changed locally or through a server event or sync (`None` = deleted or
    /// expired): re-evaluates every query on that map.
    pub fn on_change(&mut self, map: &str, key: &str, value: Option<&Value>) {
        for (_, live) in self.queries.iter_mut() {
            if live.map != map {
                continue;
            }
            live.remember_local(key, value);
            if live.apply_local(key, value) {
                live.publish();
            }
        }
    }

    /// The current results of a query (marks it recently used).
    pub fn snapshot(&mut self, id: &str) -> Option<Arc<QuerySnapshot>> {
        self.queries.get(id).map(|live| Arc::clone(&live.snapshot))
    }

    /// Another receiver of a query's events, for a cloned handle.
    pub fn events(&self, id: &str) -> Option<broadcast::Receiver<QueryEvent>> {
        self.queries.peek(id).map(|live| live.events.subscribe())
    }
}

fn unsubscribe_message(id: &str) -> Message {
    QueryUnsub {
        payload: QueryIdPayload {
            query_id: id.to_owned(),
        },
    }
    .into()
}

#[cfg(test)]
#[path = "queries_tests.rs"]
mod tests;
