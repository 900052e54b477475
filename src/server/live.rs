//! Incremental maintenance of live query results: after each applied change, only the
//! subscriptions on the changed map are re-evaluated, and only the keys that entered, changed
//! or left their result window are sent as `QUERY_UPDATE` (PROTOCOL.md §3.6).
//!
//! Each subscription keeps its current window in result order ([`LiveWindow`]). A change to a
//! key is decided locally when it can be (insert, move, drop, displace the last row), finding
//! the key's row by binary search (under a sort by fields, by the sort values it was placed
//! with; a window of a few rows is scanned); only when a limited window loses a row while more matches exist (it must refill
//! from the map), or when the query pages from a cursor (whose lower bound the window does
//! not hold), is the whole query re-run over the map and diffed against the window.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::protocol::{QueryUpdate, ServerEventPayload};
use crate::query::{CompiledQuery, CursorContext, CursorStatus, QueryError, QueryPage};
use crate::replica::Replica;

use super::Shared;
use super::connections::ConnHandle;
use super::session::send_to;
use super::storage::MapHandle;

/// One key's move relative to a result window.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowChange {
    /// The key joined the window with this value.
    Enter(String, Value),
    /// The key stayed in the window with a new value.
    Update(String, Value),
    /// The key left the window.
    Leave(String),
}

/// What applying one key's new state to a window needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Decided locally; the window was updated.
    Changes(Vec<WindowChange>),
    /// Cannot be decided from the window alone; re-run the query and [`LiveWindow::replace`].
    Rerun,
}

/// Under a sort by fields, a window of at most this many rows finds a key by scanning: key
/// comparisons are cheaper than the sort-field lookups of a binary search.
const SCANNED_ROWS: usize = 32;

/// A subscription's current results, in the compiled query's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveWindow {
    rows: Vec<(String, Value)>,
    /// Under a sort by fields: each held key's sort values, which place its row, so a changed
    /// key is found by binary search; a scan cost O(window) per change per subscription.
    /// Empty under a key order, where the key alone places a row.
    places: HashMap<String, Vec<Option<Value>>, foldhash::fast::RandomState>,
    /// More matches exist beyond the window (only possible with a limit).
    has_more: bool,
    /// The page starts after a valid cursor, a lower bound the window does not hold.
    after_cursor: bool,
}

impl LiveWindow {
    /// The window of a page of `query`, freshly executed.
    pub fn from_page(query: &CompiledQuery, page: &QueryPage) -> Self {
        let places = if query.orders_by_key() {
            HashMap::default()
        } else {
            page.results
                .iter()
                .map(|(key, value)| (key.clone(), query.order().owned_cells(value)))
                .collect()
        };
        Self {
            rows: page.results.clone(),
            places,
            has_more: page.has_more,
            after_cursor: page.cursor_status == CursorStatus::Valid,
        }
    }

    /// The rows, in result order.
    pub fn rows(&self) -> &[(String, Value)] {
        &self.rows
    }

    /// Applies the new state of `key` (`None` when deleted or expired).
    pub fn apply(&mut self, query: &CompiledQuery, key: &str, value: Option<&Value>) -> Step {
        if self.after_cursor {
            return Step::Rerun;
        }
        let was = self.find(query, key);
        let now = value.filter(|v| query.matches(v));
        match (was, now) {
            (None, None) => Step::Changes(Vec::new()),
            (Some(index), None) => self.leave(query, index),
            (None, Some(value)) => self.enter(query, key, value),
            (Some(index), Some(value)) => self.update(query, index, value),
        }
    }

    /// Replaces the window with a re-run page of `query` and reports the difference.
    pub fn replace(&mut self, query: &CompiledQuery, page: &QueryPage) -> Vec<WindowChange> {
        let old: HashMap<&str, &Value> = self.rows.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let new_keys: BTreeSet<&str> = page.results.iter().map(|(k, _)| k.as_str()).collect();
        let mut changes: Vec<WindowChange> = self
            .rows
            .iter()
            .filter(|(k, _)| !new_keys.contains(k.as_str()))
            .map(|(k, _)| WindowChange::Leave(k.clone()))
            .collect();
        for (key, value) in &page.results {
            match old.get(key.as_str()) {
                None => changes.push(WindowChange::Enter(key.clone(), value.clone())),
                Some(previous) if *previous != value => {
                    changes.push(WindowChange::Update(key.clone(), value.clone()))
                }
                Some(_) => {}
            }
        }
        *self = Self::from_page(query, page);
        changes
    }

    /// The index of `key`'s row, if the window holds it.
    fn find(&self, query: &CompiledQuery, key: &str) -> Option<usize> {
        if query.orders_by_key() {
            // The value takes no part in a key order, so each row's own stands in for it.
            return self
                .rows
                .binary_search_by(|(k, v)| query.compare((k, v), (key, v)))
                .ok();
        }
        if self.rows.len() <= SCANNED_ROWS {
            return self.rows.iter().position(|(k, _)| k == key);
        }
        let cells = self.places.get(key)?;
        let index = self.rows.partition_point(|(k, v)| {
            query.order().compare_with_cells((k, v), key, cells) == std::cmp::Ordering::Less
        });
        if self.rows.get(index).is_some_and(|(k, _)| k == key) {
            return Some(index);
        }
        // The window holds the key but not where its sort values put it: a bug (tests fail on
        // it), but a scan still finds the row rather than letting the change enter it twice.
        debug_assert!(
            false,
            "live window row {key} not where its sort values place it"
        );
        tracing::warn!(key, "live window row not where its sort values place it");
        self.rows.iter().position(|(k, _)| k == key)
    }

    /// Records where `key`'s row, now holding `value`, is placed (field orders only).
    fn place(&mut self, query: &CompiledQuery, key: &str, value: &Value) {
        if query.orders_by_key() {
            return;
        }
        match self.places.get_mut(key) {
            Some(cells) => query.order().write_cells(value, cells),
            None => {
                self.places
                    .insert(key.to_owned(), query.order().owned_cells(value));
            }
        }
    }

    fn limit_reached(&self, query: &CompiledQuery) -> bool {
        query.limit().is_some_and(|limit| self.rows.len() >= limit)
    }

    /// Index at which `(key, value)` belongs among the current rows.
    fn slot(&self, query: &CompiledQuery, key: &str, value: &Value) -> usize {
        self.rows.partition_point(|(k, v)| {
            query.compare((k, v), (key, value)) == std::cmp::Ordering::Less
        })
    }

    /// Whether the row at `index`, given `value`, still sorts between its neighbours and no
    /// match outside the window can take its place.
    fn stays_at(&self, query: &CompiledQuery, index: usize, value: &Value) -> bool {
        let Some((key, _)) = self.rows.get(index) else {
            return false;
        };
        let before = index
            .checked_sub(1)
            .and_then(|i| self.rows.get(i))
            .is_none_or(|(k, v)| query.compare((k, v), (key, value)) == std::cmp::Ordering::Less);
        // The last row of a window with more matches beyond it may be overtaken by one.
        let after = match self.rows.get(index + 1) {
            Some((k, v)) => query.compare((key, value), (k, v)) == std::cmp::Ordering::Less,
            None => !self.has_more,
        };
        before && after
    }

    fn leave(&mut self, query: &CompiledQuery, index: usize) -> Step {
        // The next match beyond the window must be promoted, and only the map knows it.
        if self.has_more && query.limit().is_some() {
            return Step::Rerun;
        }
        let (key, _) = self.rows.remove(index);
        self.places.remove(&key);
        Step::Changes(vec![WindowChange::Leave(key)])
    }

    fn enter(&mut self, query: &CompiledQuery, key: &str, value: &Value) -> Step {
        let slot = self.slot(query, key, value);
        if !self.limit_reached(query) {
            self.rows.insert(slot, (key.to_owned(), value.clone()));
            self.place(query, key, value);
            return Step::Changes(vec![WindowChange::Enter(key.to_owned(), value.clone())]);
        }
        self.has_more = true;
        if slot >= self.rows.len() {
            return Step::Changes(Vec::new());
        }
        self.rows.insert(slot, (key.to_owned(), value.clone()));
        self.place(query, key, value);
        let mut changes = vec![WindowChange::Enter(key.to_owned(), value.clone())];
        if let Some((displaced, _)) = self.rows.pop() {
            self.places.remove(&displaced);
            changes.push(WindowChange::Leave(displaced));
        }
        Step::Changes(changes)
    }

    fn update(&mut self, query: &CompiledQuery, index: usize, value: &Value) -> Step {
        if &self.rows[index].1 == value {
            return Step::Changes(Vec::new());
        }
        if self.stays_at(query, index, value) {
            // The common case (always, for a key order): no shifting of the rows after it.
            let (key, held) = &mut self.rows[index];
            *held = value.clone();
            let key = key.clone();
            self.place(query, &key, value);
            return Step::Changes(vec![WindowChange::Update(key, value.clone())]);
        }
        let (key, old) = self.rows.remove(index);
        let slot = self.slot(query, &key, value);
        // Moving to the end of a full window: a match outside it may now sort first.
        if self.has_more && slot >= self.rows.len() {
            self.rows.insert(index, (key, old));
            return Step::Rerun;
        }
        self.rows.insert(slot, (key.clone(), value.clone()));
        self.place(query, &key, value);
        Step::Changes(vec![WindowChange::Update(key, value.clone())])
    }
}

/// Everything a live subscription needs besides its registry entry.
#[derive(Debug)]
pub struct LiveQuery {
    pub query_id: String,
    pub query: CompiledQuery,
    pub map: MapHandle,
    /// 2026-08 projection: top-level fields to keep.
    pub fields: Option<Vec<String>>,
    /// Whose field-level security applies to sent values.
    pub principal: Principal,
    /// The clock at subscription, so a cursor that was valid then stays valid on re-runs.
    pub cursor_now: u64,
    window: Mutex<LiveWindow>,
}

impl LiveQuery {
    /// A live query whose current results are `window`.
    pub fn new(
        query_id: String,
        query: CompiledQuery,
        map: MapHandle,
        fields: Option<Vec<String>>,
        principal: Principal,
        cursor_now: u64,
        window: LiveWindow,
    ) -> Self {
        Self {
            query_id,
            query,
            map,
            fields,
            principal,
            cursor_now,
            window: Mutex::new(window),
        }
    }

    /// The current window. Lock the map first when both are needed.
    pub fn window(&self) -> MutexGuard<'_, LiveWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the query over `replica` with the subscription's cursor clock.
    pub fn execute(&self, shared: &Shared, replica: &Replica) -> Result<QueryPage, QueryError> {
        let context = CursorContext::new(&shared.cursor_secret, self.cursor_now);
        execute(&self.query, replica, shared.now_millis(), &context)
    }

    /// A row value as this subscriber may see it: field-level security, then projection.
    /// `None` when the subscriber may not see it at all.
    pub fn visible(&self, shared: &Shared, value: Value) -> Option<Value> {
        let value = shared
            .permissions
            .filter_value(&self.principal, self.map.name(), value)?;
        Some(match &self.fields {
            Some(fields) => project(value, fields),
            None => value,
        })
    }
}

/// Runs `query` over the live entries of `replica` (OR keys as the array of live values).
pub fn execute(
    query: &CompiledQuery,
    replica: &Replica,
    now: u64,
    context: &CursorContext<'_>,
) -> Result<QueryPage, QueryError> {
    match replica {
        Replica::Lww(r) => query.execute(r.map().entries(now), context),
        Replica::Or(r) => {
            let rows: Vec<(String, Value)> = r
                .map()
                .keys()
                .filter_map(|key| Some((key.to_owned(), current_value(replica, key, now)?)))
                .collect();
            query.execute(rows.iter().map(|(k, v)| (k.as_str(), v)), context)
        }
    }
}

/// The live value of `key`: the LWW value, or the array of live OR values (`None` if empty).
pub fn current_value(replica: &Replica, key: &str, now: u64) -> Option<Value> {
    match replica {
        Replica::Lww(r) => r.map().get(key, now).cloned(),
        Replica::Or(r) => {
            let values = r.map().get(key, now);
            (!values.is_empty()).then(|| Value::Array(values.into_iter().cloned().collect()))
        }
    }
}

/// Keeps only `fields` of an object (each object of an OR array); other values pass as is.
pub fn project(value: Value, fields: &[String]) -> Value {
    match value {
        Value::Object(object) => {
            let kept: Map<String, Value> = object
                .into_iter()
                .filter(|(name, _)| fields.iter().any(|f| f == name))
                .collect();
            Value::Object(kept)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| match item {
                    Value::Object(_) => project(item, fields),
                    other => other,
                })
                .collect(),
        ),
        other => other,
    }
}

/// The write-path hook: re-evaluates the subscriptions on every changed map and sends each
/// subscriber (the writer included) the keys that entered, changed or left its window.
pub fn on_changes(shared: &Shared, events: &BTreeMap<String, Vec<ServerEventPayload>>) {
    for (map, map_events) in events {
        let keys: BTreeSet<&str> = map_events.iter().map(|e| e.key.as_str()).collect();
        for (conn, live) in shared.queries.live_on(map) {
            refresh(shared, &conn, &live, &keys);
        }
    }
}

fn refresh(shared: &Shared, conn: &ConnHandle, live: &Arc<LiveQuery>, keys: &BTreeSet<&str>) {
    let now = shared.now_millis();
    let replica = live.map.lock();
    let mut window = live.window();
    let mut changes = Vec::new();
    for key in keys {
        let value = current_value(&replica, key, now);
        match window.apply(&live.query, key, value.as_ref()) {
            Step::Changes(step) => changes.extend(step),
            Step::Rerun => {
                match live.execute(shared, &replica) {
                    Ok(page) => changes.extend(window.replace(&live.query, &page)),
                    Err(e) => {
                        tracing::warn!(query = %live.query_id, error = %e, "live query re-run failed");
                    }
                }
                // The re-run saw the whole map, the remaining changed keys included.
                break;
            }
        }
    }
    drop(window);
    // Sent while the map is still locked, so a concurrent writer's updates for the same
    // subscription cannot overtake these.
    send_changes(shared, conn, live, changes);
    drop(replica);
}

/// Brings a just-registered subscription up to date: whatever changed between computing
/// its `QUERY_RESP` and registering it goes out as ordinary updates.
pub fn catch_up(shared: &Shared, conn: &ConnHandle, live: &Arc<LiveQuery>) {
    let replica = live.map.lock();
    match live.execute(shared, &replica) {
        Ok(page) => {
            let changes = live.window().replace(&live.query, &page);
            send_changes(shared, conn, live, changes);
        }
        Err(e) => tracing::warn!(query = %live.query_id, error = %e, "live query catch-up failed"),
    }
    drop(replica);
}

fn send_changes(shared: &Shared, conn: &ConnHandle, live: &LiveQuery, changes: Vec<WindowChange>) {
    for change in changes {
        if let Some(update) = to_update(shared, live, change)
            && let Err(e) = send_to(shared, conn, &update.into())
        {
            tracing::debug!(conn = conn.id, error = %e, "subscriber missed a query update");
        }
    }
}

fn to_update(shared: &Shared, live: &LiveQuery, change: WindowChange) -> Option<QueryUpdate> {
    let id = live.query_id.clone();
    match change {
        WindowChange::Enter(key, value) => live
            .visible(shared, value)
            .map(|v| QueryUpdate::enter(id, key, v)),
        // A value the subscriber may no longer see leaves its result set.
        WindowChange::Update(key, value) => Some(match live.visible(shared, value) {
            Some(v) => QueryUpdate::update(id, key, v),
            None => QueryUpdate::leave(id, key),
        }),
        WindowChange::Leave(key) => Some(QueryUpdate::leave(id, key)),
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
