//! The full-text search service: `SEARCH`, `SEARCH_SUB` / `SEARCH_UNSUB` (PROTOCOL.md §3.13)
//! over the BM25 index of [`crate::search`].
//!
//! Search is enabled per map by the config file (`[search.<map>] fields = [...]`). Each such
//! map gets its index built lazily, from the map's content, by the first search that needs it.
//! From then on the write path only *notes* which keys changed ([`SearchService::note_writes`]
//! adds them to the map's pending set) and one indexing task per map updates the index and the
//! live subscriptions, so a write is acknowledged without waiting for indexing. The pending
//! set holds each key once however often it is rewritten, so an index that falls behind a
//! write storm costs at most one entry per key of the map, not one per write.
//!
//! Read-your-writes goes through sequence numbers, not sleeps: every noted change carries the
//! map's next write sequence, the indexing task publishes the last sequence it has applied,
//! and a search first waits until the index has caught up with the map's write sequence as it
//! was when the search arrived. A write acknowledged before the search was sent has been noted
//! before its ack, so the search sees it.
//!
//! The indexing task re-reads each changed key's *current* value from the map instead of
//! trusting the value carried by the write, so concurrent batches noted in a different order
//! than they were merged still leave the index equal to the map.
//!
//! Choices: only LWW maps are searchable (as in TopGun 2026-01, which indexes and looks up
//! values in LWW maps only); a search on an OR map is answered with an error rather than with
//! an arbitrary pick among a key's concurrent values. Result values go through field-level
//! security like query results (TopGun leaked them); a hit whose value is withheld is dropped.
//! `totalCount` counts every matching document before `limit`. Live subscriptions re-score
//! only the changed documents (TopGun's model) and do not apply `limit` to later entries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::auth::Principal;
use crate::protocol::{
    ChangeType, SearchHit as WireHit, SearchOptions as WireOptions, SearchPayload, SearchResp,
    SearchRespPayload, SearchSubPayload, SearchUpdate, ServerEventPayload, SubscriptionIdPayload,
};
use crate::replica::{MapKind, Replica};
use crate::search::{SearchConfig, SearchConfigError, SearchIndex, SearchOptions, query_terms};
use crate::security::{Action, Permissions};

use super::Shared;
use super::config::SearchMapConfig;
use super::connections::{ConnHandle, ConnId, SendError};
use super::dispatch::Flow;
use super::session::{Session, send_to};
use super::storage::{MapError, MapHandle};

/// Most live searches one connection may hold.
pub const MAX_SEARCHES_PER_CONNECTION: usize = 256;

/// The sequence number the initial build of an index publishes; noted writes follow it.
const BUILD_SEQ: u64 = 1;

/// Why a search was refused; the text is what the client sees in `SEARCH_RESP.error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SearchError {
    #[error("Access denied for map: {0}")]
    AccessDenied(String),
    #[error("Full-text search not enabled for map: {0}")]
    NotEnabled(String),
    #[error("Full-text search is only available on LWW maps; {0} is an OR map")]
    OrMap(String),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("Search index for map {0} is unavailable")]
    IndexUnavailable(String),
    #[error(
        "Search subscription limit reached: at most {MAX_SEARCHES_PER_CONNECTION} per connection"
    )]
    TooManySubscriptions,
}

/// A search configuration the server refused at startup.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid full-text search config for map {map}: {source}")]
pub struct SearchSetupError {
    pub map: String,
    pub source: SearchConfigError,
}

/// The BM25 configs of the config file's `[search.<map>]` sections.
pub fn configs_from_file(
    file: &BTreeMap<String, SearchMapConfig>,
) -> BTreeMap<String, SearchConfig> {
    file.iter()
        .map(|(map, cfg)| (map.clone(), SearchConfig::for_fields(cfg.fields.clone())))
        .collect()
}

/// Converts wire options; an absent or zero `limit` means unlimited, as on the wire.
fn options_from_wire(options: Option<WireOptions>) -> SearchOptions {
    let options = options.unwrap_or_default();
    SearchOptions {
        limit: options
            .limit
            .filter(|&limit| limit > 0)
            .and_then(|limit| usize::try_from(limit).ok()),
        min_score: options.min_score,
        boost: options.boost.unwrap_or_default().into_iter().collect(),
    }
}

/// Search for every map, shared by all connections.
#[derive(Debug)]
pub struct SearchService {
    configs: BTreeMap<String, SearchConfig>,
    maps: Mutex<HashMap<String, Arc<MapSearch>>>,
    /// connection → subscription id → map, to find a subscription from `SEARCH_UNSUB`.
    by_conn: Mutex<HashMap<ConnId, HashMap<String, String>>>,
}

/// One searchable map: the feed into its indexing task and the state that task maintains.
/// Dropping it ends the task.
#[derive(Debug)]
struct MapSearch {
    feed: Arc<Feed>,
    indexed: watch::Receiver<u64>,
    live: Arc<Mutex<LiveIndex>>,
}

/// What the write path hands an indexing task: the keys changed since the task last looked,
/// each once, and the sequence of the latest change. Both change under one lock, so whatever
/// the task takes is complete up to the sequence it takes with it.
#[derive(Debug)]
struct Feed {
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    last_seq: u64,
    keys: BTreeSet<String>,
    /// The map's search state was dropped: the task ends.
    closed: bool,
}

impl Feed {
    fn new(last_seq: u64) -> Self {
        Self {
            pending: Mutex::new(Pending {
                last_seq,
                ..Pending::default()
            }),
            wake: Notify::new(),
        }
    }

    /// Everything noted since the last call and the sequence it is complete up to; `None`
    /// once closed.
    fn take(&self) -> Option<(BTreeSet<String>, u64)> {
        let mut pending = lock(&self.pending);
        if pending.closed {
            return None;
        }
        Some((std::mem::take(&mut pending.keys), pending.last_seq))
    }
}

impl MapSearch {
    fn note(&self, keys: impl Iterator<Item = String>) {
        let mut pending = lock(&self.feed.pending);
        for key in keys {
            pending.last_seq += 1;
            pending.keys.insert(key);
        }
        drop(pending);
        self.feed.wake.notify_one();
    }

    fn written(&self) -> u64 {
        lock(&self.feed.pending).last_seq
    }

    async fn caught_up(&self, target: u64) -> bool {
        let mut indexed = self.indexed.clone();
        indexed.wait_for(|&seq| seq >= target).await.is_ok()
    }
}

impl Drop for MapSearch {
    fn drop(&mut self) {
        lock(&self.feed.pending).closed = true;
        self.feed.wake.notify_one();
    }
}

impl SearchService {
    /// A service over per-map configs, each checked now so a bad file fails at startup.
    pub fn new(configs: BTreeMap<String, SearchConfig>) -> Result<Self, SearchSetupError> {
        for (map, config) in &configs {
            SearchIndex::new(config.clone()).map_err(|source| SearchSetupError {
                map: map.clone(),
                source,
            })?;
        }
        Ok(Self {
            configs,
            maps: Mutex::new(HashMap::new()),
            by_conn: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `map` has full-text search configured.
    pub fn is_enabled(&self, map: &str) -> bool {
        self.configs.contains_key(map)
    }

    /// Whether `map` has a search index that must be told of its writes.
    pub fn tracks(&self, map: &str) -> bool {
        lock(&self.maps).contains_key(map)
    }

    /// The write-path hook: queues the changed keys of searchable maps for indexing. Never
    /// waits; maps whose index is not built yet are skipped (the build reads their content).
    pub fn note_writes(&self, events: &BTreeMap<String, Vec<ServerEventPayload>>) {
        for (map, map_events) in events {
            let Some(search) = lock(&self.maps).get(map).cloned() else {
                continue;
            };
            search.note(map_events.iter().map(|event| event.key.clone()));
        }
    }

    /// Drops every live search of a closed connection.
    pub fn remove_connection(&self, conn: ConnId) {
        let owned = lock(&self.by_conn).remove(&conn).unwrap_or_default();
        for (subscription_id, map) in owned {
            self.drop_live(&map, conn, &subscription_id);
        }
    }

    /// Runs a one-shot search: the hits (with current values) up to the limit, and how many
    /// documents matched in all.
    pub async fn search(
        &self,
        shared: &Arc<Shared>,
        principal: &Principal,
        map: &str,
        query: &str,
        options: SearchOptions,
    ) -> Result<(Vec<WireHit>, u64), SearchError> {
        let (search, handle) = self.ready(shared, principal, map).await?;
        let live = lock(&search.live);
        let now = shared.now_millis();
        let hits = snapshot(
            &live.index,
            &handle,
            &shared.permissions,
            principal,
            &query_terms(query),
            &options,
            now,
        );
        Ok(hits)
    }

    /// Registers a live search and sends its initial `SEARCH_RESP` (whose `requestId` is the
    /// subscription id) before any `SEARCH_UPDATE` for it can be sent.
    pub async fn subscribe(
        &self,
        shared: &Arc<Shared>,
        conn: &ConnHandle,
        principal: &Principal,
        sub: SearchSubPayload,
    ) -> Result<(), SearchError> {
        let (search, handle) = self.ready(shared, principal, &sub.map_name).await?;
        self.claim(conn.id, &sub.subscription_id, &sub.map_name)?;
        let options = options_from_wire(sub.options);
        let terms = query_terms(&sub.query);
        // Holding the live lock from the snapshot to the send orders the response before
        // every update computed by the indexing task.
        let mut live = lock(&search.live);
        let now = shared.now_millis();
        let (results, total_count) = snapshot(
            &live.index,
            &handle,
            &shared.permissions,
            principal,
            &terms,
            &options,
            now,
        );
        let members = results.iter().map(|hit| hit.key.clone()).collect();
        let response = SearchResp {
            payload: SearchRespPayload {
                request_id: sub.subscription_id.clone(),
                results,
                total_count,
                error: None,
                next_cursor: None,
            },
        };
        // The subscription is registered even if this send fails: a gone connection is
        // cleaned up by `remove_connection`.
        let _ = send_to(shared, conn, &response.into());
        live.subscriptions.insert(
            (conn.id, sub.subscription_id),
            LiveSearch {
                conn: conn.clone(),
                principal: principal.clone(),
                terms,
                options,
                members,
            },
        );
        Ok(())
    }

    /// Ends a live search; unknown ids are ignored.
    pub fn unsubscribe(&self, conn: ConnId, subscription_id: &str) {
        let map = lock(&self.by_conn)
            .get_mut(&conn)
            .and_then(|owned| owned.remove(subscription_id));
        if let Some(map) = map {
            self.drop_live(&map, conn, subscription_id);
        }
    }

    /// Number of live searches.
    pub fn subscription_count(&self) -> usize {
        lock(&self.by_conn).values().map(HashMap::len).sum()
    }

    /// Records `subscription_id` as the connection's (replacing an older one of the same id,
    /// possibly on another map), within the per-connection bound.
    fn claim(&self, conn: ConnId, subscription_id: &str, map: &str) -> Result<(), SearchError> {
        let previous = {
            let mut by_conn = lock(&self.by_conn);
            let owned = by_conn.entry(conn).or_default();
            if !owned.contains_key(subscription_id) && owned.len() >= MAX_SEARCHES_PER_CONNECTION {
                return Err(SearchError::TooManySubscriptions);
            }
            owned.insert(subscription_id.to_owned(), map.to_owned())
        };
        if let Some(previous) = previous.filter(|previous| previous != map) {
            self.drop_live(&previous, conn, subscription_id);
        }
        Ok(())
    }

    fn drop_live(&self, map: &str, conn: ConnId, subscription_id: &str) {
        let search = lock(&self.maps).get(map).cloned();
        if let Some(search) = search {
            lock(&search.live)
                .subscriptions
                .remove(&(conn, subscription_id.to_owned()));
        }
    }

    /// Checks access and configuration, loads the map, and waits until its index has caught
    /// up with every write noted before now.
    async fn ready(
        &self,
        shared: &Arc<Shared>,
        principal: &Principal,
        map: &str,
    ) -> Result<(Arc<MapSearch>, MapHandle), SearchError> {
        if !shared.permissions.check(principal, map, Action::Read) {
            return Err(SearchError::AccessDenied(map.to_owned()));
        }
        let config = self
            .configs
            .get(map)
            .ok_or_else(|| SearchError::NotEnabled(map.to_owned()))?;
        let handle = shared.maps.get(map, MapKind::Lww, None).await?;
        if handle.kind() != MapKind::Lww {
            return Err(SearchError::OrMap(map.to_owned()));
        }
        let search = self.index_of(shared, &handle, config)?;
        let target = search.written();
        if !search.caught_up(target).await {
            return Err(SearchError::IndexUnavailable(map.to_owned()));
        }
        Ok((search, handle))
    }

    /// The map's search state, starting its indexing task on first use.
    fn index_of(
        &self,
        shared: &Arc<Shared>,
        handle: &MapHandle,
        config: &SearchConfig,
    ) -> Result<Arc<MapSearch>, SearchError> {
        let mut maps = lock(&self.maps);
        if let Some(search) = maps.get(handle.name()) {
            return Ok(search.clone());
        }
        let index = SearchIndex::new(config.clone())
            .map_err(|_| SearchError::IndexUnavailable(handle.name().to_owned()))?;
        let feed = Arc::new(Feed::new(BUILD_SEQ));
        let (indexed_tx, indexed) = watch::channel(0);
        let live = Arc::new(Mutex::new(LiveIndex::new(index)));
        let search = Arc::new(MapSearch {
            feed: feed.clone(),
            indexed,
            live: live.clone(),
        });
        // Registered before the task snapshots the map, so every write merged after the
        // snapshot is noted to the task, and every write before it is in the snapshot.
        maps.insert(handle.name().to_owned(), search.clone());
        let task = IndexTask {
            shared: Arc::downgrade(shared),
            map: handle.clone(),
            live,
            indexed: indexed_tx,
        };
        tokio::spawn(task.run(feed));
        Ok(search)
    }
}

/// The searched hits with their current values, after field-level security, and the total.
fn snapshot(
    index: &SearchIndex,
    map: &MapHandle,
    permissions: &Permissions,
    principal: &Principal,
    terms: &[String],
    options: &SearchOptions,
    now: u64,
) -> (Vec<WireHit>, u64) {
    let unlimited = SearchOptions {
        limit: None,
        ..options.clone()
    };
    let hits = index.search_terms(terms, &unlimited);
    let guard = map.lock();
    let Replica::Lww(replica) = &*guard else {
        return (Vec::new(), 0);
    };
    let mut results: Vec<WireHit> = hits
        .into_iter()
        .filter_map(|hit| {
            let value = replica.map().get(&hit.key, now)?.clone();
            let value = permissions.filter_value(principal, map.name(), value)?;
            Some(WireHit {
                key: hit.key,
                value,
                score: hit.score,
                matched_terms: hit.matched_terms,
            })
        })
        .collect();
    let total = results.len() as u64;
    if let Some(limit) = options.limit {
        results.truncate(limit);
    }
    (results, total)
}

/// One live search.
#[derive(Debug)]
struct LiveSearch {
    conn: ConnHandle,
    principal: Principal,
    terms: Vec<String>,
    options: SearchOptions,
    /// Keys the client currently holds as results.
    members: HashSet<String>,
}

/// A delta for one live search.
#[derive(Debug)]
struct Delta {
    subscription: (ConnId, String),
    conn: ConnHandle,
    update: SearchUpdate,
}

/// A map's index and its live searches, changed only together.
#[derive(Debug)]
struct LiveIndex {
    index: SearchIndex,
    subscriptions: HashMap<(ConnId, String), LiveSearch>,
}

impl LiveIndex {
    fn new(index: SearchIndex) -> Self {
        Self {
            index,
            subscriptions: HashMap::new(),
        }
    }

    /// Applies the current values of changed keys (`None` = deleted) and returns, per live
    /// search, the ENTER / UPDATE / LEAVE deltas in key order.
    fn apply(
        &mut self,
        changed: &BTreeMap<String, Option<Value>>,
        permissions: &Permissions,
        map: &str,
    ) -> Vec<Delta> {
        for (key, value) in changed {
            match value {
                Some(value) => self.index.upsert(key, value),
                None => {
                    self.index.remove(key);
                }
            }
        }
        let mut deltas = Vec::new();
        for (id, live) in &mut self.subscriptions {
            for (key, value) in changed {
                let hit = self
                    .index
                    .score_document(&live.terms, key, &live.options)
                    .and_then(|hit| {
                        let value = value.clone()?;
                        let value = permissions.filter_value(&live.principal, map, value)?;
                        Some(WireHit {
                            key: hit.key,
                            value,
                            score: hit.score,
                            matched_terms: hit.matched_terms,
                        })
                    });
                let change = match (hit, live.members.contains(key)) {
                    (Some(hit), true) => Some((hit, ChangeType::Update)),
                    (Some(hit), false) => {
                        live.members.insert(key.clone());
                        Some((hit, ChangeType::Enter))
                    }
                    (None, true) => {
                        live.members.remove(key);
                        Some((leaving(key), ChangeType::Leave))
                    }
                    (None, false) => None,
                };
                if let Some((hit, change)) = change {
                    deltas.push(Delta {
                        subscription: id.clone(),
                        conn: live.conn.clone(),
                        update: SearchUpdate::new(id.1.clone(), hit, change),
                    });
                }
            }
        }
        deltas.sort_by(|a, b| {
            (&a.subscription, &a.update.payload.key).cmp(&(&b.subscription, &b.update.payload.key))
        });
        deltas
    }
}

/// A LEAVE carries no value (both clients delete on a nil value).
fn leaving(key: &str) -> WireHit {
    WireHit {
        key: key.to_owned(),
        value: Value::Null,
        score: 0.0,
        matched_terms: Vec::new(),
    }
}

/// The indexing task of one map.
struct IndexTask {
    /// Weak so the task ends when the server is dropped.
    shared: Weak<Shared>,
    map: MapHandle,
    live: Arc<Mutex<LiveIndex>>,
    indexed: watch::Sender<u64>,
}

impl IndexTask {
    async fn run(self, feed: Arc<Feed>) {
        self.build();
        loop {
            // A permit stored by a `note` while the last batch was applied wakes this at once.
            feed.wake.notified().await;
            let Some((keys, last_seq)) = feed.take() else {
                return;
            };
            if keys.is_empty() {
                continue;
            }
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            self.apply(&shared, keys);
            self.indexed.send_replace(last_seq);
        }
    }

    fn build(&self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let now = shared.now_millis();
        let documents: Vec<(String, Value)> = {
            let guard = self.map.lock();
            match &*guard {
                Replica::Lww(replica) => replica
                    .map()
                    .entries(now)
                    .map(|(key, value)| (key.to_owned(), value.clone()))
                    .collect(),
                Replica::Or(_) => Vec::new(),
            }
        };
        let mut live = lock(&self.live);
        for (key, value) in &documents {
            live.index.upsert(key, value);
        }
        drop(live);
        tracing::debug!(
            map = self.map.name(),
            documents = documents.len(),
            "search index built"
        );
        self.indexed.send_replace(BUILD_SEQ);
    }

    fn apply(&self, shared: &Shared, keys: BTreeSet<String>) {
        let now = shared.now_millis();
        // The map lock is released before the live lock is taken: the request path takes
        // them in the opposite order.
        let changed: BTreeMap<String, Option<Value>> = {
            let guard = self.map.lock();
            let Replica::Lww(replica) = &*guard else {
                return;
            };
            keys.into_iter()
                .map(|key| {
                    let value = replica.map().get(&key, now).cloned();
                    (key, value)
                })
                .collect()
        };
        let mut live = lock(&self.live);
        let deltas = live.apply(&changed, &shared.permissions, self.map.name());
        // Sent under the live lock so a replaced subscription never gets a stale delta after
        // its new initial response.
        for delta in deltas {
            match send_to(shared, &delta.conn, &delta.update.into()) {
                Ok(()) => {}
                Err(SendError::Gone) => {
                    live.subscriptions.remove(&delta.subscription);
                }
                Err(SendError::Full) => {
                    tracing::debug!(conn = delta.conn.id, "search subscriber missed an update");
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks stays consistent between statements, so a poisoned lock (a
    // panic elsewhere) is safe to keep using.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `SEARCH`: answers `SEARCH_RESP` with the hits or the error.
pub async fn handle_search(
    shared: &Arc<Shared>,
    session: &mut Session,
    request: SearchPayload,
) -> Flow {
    let options = options_from_wire(request.options);
    let outcome = shared
        .search
        .search(
            shared,
            session.principal(),
            &request.map_name,
            &request.query,
            options,
        )
        .await;
    let payload = match outcome {
        Ok((results, total_count)) => SearchRespPayload {
            request_id: request.request_id,
            results,
            total_count,
            error: None,
            next_cursor: None,
        },
        Err(e) => failed(request.request_id, &e),
    };
    let _ = session.send(shared, SearchResp { payload });
    Flow::Continue
}

/// `SEARCH_SUB`: the initial `SEARCH_RESP` (or its error), then live `SEARCH_UPDATE`s.
pub async fn handle_search_sub(
    shared: &Arc<Shared>,
    session: &mut Session,
    sub: SearchSubPayload,
) -> Flow {
    let subscription_id = sub.subscription_id.clone();
    let outcome = shared
        .search
        .subscribe(shared, session.handle(), session.principal(), sub)
        .await;
    if let Err(e) = outcome {
        let _ = session.send(
            shared,
            SearchResp {
                payload: failed(subscription_id, &e),
            },
        );
    }
    Flow::Continue
}

/// `SEARCH_UNSUB`: silent, as in TopGun.
pub fn handle_search_unsub(
    shared: &Shared,
    session: &mut Session,
    unsub: SubscriptionIdPayload,
) -> Flow {
    shared
        .search
        .unsubscribe(session.id, &unsub.subscription_id);
    Flow::Continue
}

fn failed(request_id: String, error: &SearchError) -> SearchRespPayload {
    SearchRespPayload {
        request_id,
        results: Vec::new(),
        total_count: 0,
        error: Some(error.to_string()),
        next_cursor: None,
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    /// However often keys are rewritten before the indexing task looks, each waits once; the
    /// sequence still counts every write, so read-your-writes waits for all of them.
    #[tokio::test]
    async fn a_write_storm_keeps_one_pending_entry_per_key() {
        let index = SearchIndex::new(SearchConfig::for_fields(["title"])).unwrap();
        let (_indexed_tx, indexed) = watch::channel(0);
        let search = MapSearch {
            feed: Arc::new(Feed::new(BUILD_SEQ)),
            indexed,
            live: Arc::new(Mutex::new(LiveIndex::new(index))),
        };
        for round in 0..1_000 {
            search.note([format!("k{}", round % 3), "hot".to_owned()].into_iter());
        }
        assert_eq!(search.written(), BUILD_SEQ + 2_000);
        let feed = search.feed.clone();
        let (keys, last_seq) = feed.take().unwrap();
        assert_eq!(
            keys,
            BTreeSet::from(["hot", "k0", "k1", "k2"].map(String::from))
        );
        assert_eq!(last_seq, BUILD_SEQ + 2_000);
        assert_eq!(feed.take().unwrap().0, BTreeSet::new());
        // Dropping the map's search state ends its task.
        drop(search);
        assert!(feed.take().is_none());
        tokio::time::timeout(std::time::Duration::from_secs(1), feed.wake.notified())
            .await
            .expect("the task is woken to notice");
    }
    use crate::clock::ManualClock;
    use crate::entropy::SeededEntropy;
    use crate::hlc::Timestamp;
    use crate::merkle::Combine;
    use crate::protocol::codec::{self, Frame};
    use crate::protocol::{EventType, Message};
    use crate::record::{LwwRecord, OrMapRecord};
    use crate::security::Policy;
    use crate::server::config::Limits;
    use crate::server::connections::{Outbound, outbound_queue};
    use crate::server::{Server, ServerOptions};
    use crate::store::MemoryStore;
    use serde_json::json;

    const NOW: u64 = 1_790_000_000_000;

    fn user(name: &str) -> Principal {
        Principal::new(name, vec!["USER".to_owned()])
    }

    fn server(policies: Option<Vec<Policy>>) -> Arc<Shared> {
        let options = ServerOptions {
            node_id: "server-test".to_owned(),
            jwt_secret: "unit-secret-0123456789abcdef0123456789".to_owned(),
            permissions: policies.map_or_else(Permissions::development_default, Permissions::new),
            limits: Limits::default(),
            max_connections: 10,
            debug: false,
            default_combine: Combine::Fmix,
            search: BTreeMap::from([
                (
                    "articles".to_owned(),
                    SearchConfig::for_fields(["title", "body"]),
                ),
                ("tags".to_owned(), SearchConfig::for_fields(["title"])),
            ]),
        };
        let server = Server::new(
            options,
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::new(NOW)),
            Arc::new(SeededEntropy::new(1)),
        )
        .unwrap();
        server.shared().clone()
    }

    /// Merges a write straight into the map and notes it, as the write path does.
    async fn write(shared: &Shared, map: &str, key: &str, value: Option<Value>, n: u64) {
        let handle = shared.maps.get(map, MapKind::Lww, None).await.unwrap();
        let record = LwwRecord {
            value: value.map(Into::into),
            timestamp: Timestamp::new(NOW - 1_000 + n, 0, "client"),
            ttl_ms: None,
        };
        {
            let mut guard = handle.lock();
            let Replica::Lww(replica) = &mut *guard else {
                panic!("LWW map expected")
            };
            assert!(replica.merge(key, record.clone()).is_applied());
        }
        let event = ServerEventPayload {
            map_name: map.to_owned(),
            key: key.to_owned(),
            event_type: EventType::Put,
            record: Some(record),
            or_record: None,
            or_tag: None,
            epoch: None,
        };
        shared
            .search
            .note_writes(&BTreeMap::from([(map.to_owned(), vec![event])]));
    }

    fn received(rx: &mut mpsc::Receiver<Outbound>) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            let Outbound::Binary(bytes) = frame else {
                panic!("binary frame expected")
            };
            messages.push(codec::decode(Frame::Binary(&bytes)).unwrap());
        }
        messages
    }

    fn updates(messages: &[Message]) -> Vec<(String, ChangeType, Value)> {
        messages
            .iter()
            .map(|m| match m {
                Message::SearchUpdate(u) => {
                    assert_eq!(u.payload.legacy_type, u.payload.change_type);
                    (
                        u.payload.key.clone(),
                        u.change().unwrap(),
                        u.payload.value.clone(),
                    )
                }
                other => panic!("SEARCH_UPDATE expected, got {other:?}"),
            })
            .collect()
    }

    /// Lets the indexing task drain its queue and reports the index as caught up.
    async fn settle(shared: &Shared, map: &str) {
        let search = lock(&shared.search.maps).get(map).cloned().unwrap();
        assert!(search.caught_up(search.written()).await);
    }

    #[test]
    fn wire_options_map_zero_limit_to_unlimited_and_keep_boosts() {
        let options = options_from_wire(Some(WireOptions {
            limit: Some(0),
            min_score: Some(0.5),
            boost: Some([("title".to_owned(), 2.0)].into_iter().collect()),
        }));
        assert_eq!(options.limit, None);
        assert_eq!(options.min_score, Some(0.5));
        assert_eq!(options.boost.get("title"), Some(&2.0));
        assert_eq!(
            options_from_wire(Some(WireOptions {
                limit: Some(3),
                ..WireOptions::default()
            }))
            .limit,
            Some(3)
        );
        assert_eq!(options_from_wire(None), SearchOptions::default());
    }

    #[test]
    fn bad_configs_are_refused_at_startup_naming_the_map() {
        let file = crate::server::config::FileConfig::parse(
            "[search.notes]\nfields = []\n[search.docs]\nfields = [\"title\"]\n",
        )
        .unwrap();
        let configs = configs_from_file(&file.search);
        assert_eq!(configs["docs"].fields, vec!["title"]);
        let error = SearchService::new(configs).unwrap_err();
        assert_eq!(error.map, "notes");
        assert_eq!(error.source, SearchConfigError::NoFields);
    }

    #[test]
    fn live_index_emits_enter_update_leave_only_for_its_matches() {
        let mut live =
            LiveIndex::new(SearchIndex::new(SearchConfig::for_fields(["title"])).unwrap());
        let (conn, _rx) = outbound_queue(7, 8);
        live.subscriptions.insert(
            (7, "s1".to_owned()),
            LiveSearch {
                conn,
                principal: user("alice"),
                terms: query_terms("rust"),
                options: SearchOptions::default(),
                members: HashSet::new(),
            },
        );
        let permissions = Permissions::development_default();
        let step = |live: &mut LiveIndex, key: &str, value: Option<Value>| {
            let changed = BTreeMap::from([(key.to_owned(), value)]);
            live.apply(&changed, &permissions, "articles")
                .into_iter()
                .map(|d| (d.update.payload.key.clone(), d.update.change().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            step(&mut live, "a", Some(json!({"title": "learning rust"}))),
            [("a".to_owned(), ChangeType::Enter)]
        );
        assert!(step(&mut live, "b", Some(json!({"title": "go"}))).is_empty());
        assert_eq!(
            step(&mut live, "a", Some(json!({"title": "rust rust"}))),
            [("a".to_owned(), ChangeType::Update)]
        );
        assert_eq!(
            step(&mut live, "a", Some(json!({"title": "python"}))),
            [("a".to_owned(), ChangeType::Leave)]
        );
        assert!(step(&mut live, "a", None).is_empty(), "already left");
        assert_eq!(
            step(&mut live, "b", Some(json!({"title": "rust"}))),
            [("b".to_owned(), ChangeType::Enter)]
        );
        assert_eq!(
            step(&mut live, "b", None),
            [("b".to_owned(), ChangeType::Leave)]
        );
        assert!(live.index.is_empty());
    }

    #[tokio::test]
    async fn one_shot_search_ranks_and_reads_writes_noted_just_before() {
        let shared = server(None);
        write(
            &shared,
            "articles",
            "1",
            Some(json!({"title": "rust", "body": "a systems language"})),
            1,
        )
        .await;
        write(
            &shared,
            "articles",
            "2",
            Some(json!({"title": "cooking", "body": "rust on a pan, rust everywhere"})),
            2,
        )
        .await;
        write(
            &shared,
            "articles",
            "3",
            Some(json!({"title": "gardening"})),
            3,
        )
        .await;
        let search = |query: &'static str, options: SearchOptions| {
            let shared = shared.clone();
            async move {
                shared
                    .search
                    .search(&shared, &user("alice"), "articles", query, options)
                    .await
                    .unwrap()
            }
        };
        let (hits, total) = search("rust", SearchOptions::default()).await;
        let keys: Vec<&str> = hits.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["1", "2"], "the short title match ranks first");
        assert_eq!(total, 2);
        assert!(hits[0].score > hits[1].score);
        assert_eq!(hits[0].matched_terms, ["rust"]);
        assert_eq!(
            hits[0].value,
            json!({"title": "rust", "body": "a systems language"})
        );

        // Written after the index exists: no yield between the note and the search, so only
        // the sequence wait can make the search see it.
        write(
            &shared,
            "articles",
            "4",
            Some(json!({"title": "rust rust rust"})),
            4,
        )
        .await;
        let (limited, total) = search(
            "rust",
            SearchOptions {
                limit: Some(1),
                ..SearchOptions::default()
            },
        )
        .await;
        assert_eq!(total, 3);
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].key, "4");

        write(&shared, "articles", "4", None, 5).await;
        let (hits, _) = search("rust", SearchOptions::default()).await;
        assert!(
            hits.iter().all(|h| h.key != "4"),
            "deleted documents leave the index"
        );
    }

    #[tokio::test]
    async fn refusals_carry_the_wire_error_texts() {
        let shared = server(Some(vec![Policy {
            role: "USER".to_owned(),
            map_name_pattern: "tags".to_owned(),
            actions: vec![crate::security::PolicyAction::All],
            allowed_fields: None,
        }]));
        let alice = user("alice");
        let refusal = |map: &'static str| {
            let shared = shared.clone();
            let alice = alice.clone();
            async move {
                shared
                    .search
                    .search(&shared, &alice, map, "x", SearchOptions::default())
                    .await
                    .unwrap_err()
                    .to_string()
            }
        };
        assert_eq!(refusal("articles").await, "Access denied for map: articles");

        let shared = server(None);
        let error = shared
            .search
            .search(&shared, &alice, "todos", "x", SearchOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Full-text search not enabled for map: todos"
        );

        let or_map = shared.maps.get("tags", MapKind::Or, None).await.unwrap();
        if let Replica::Or(replica) = &mut *or_map.lock() {
            replica.apply(
                "k",
                OrMapRecord {
                    value: json!({"title": "x"}),
                    timestamp: Timestamp::new(NOW, 0, "c"),
                    tag: "t1".to_owned(),
                    ttl_ms: None,
                },
            );
        }
        let error = shared
            .search
            .search(&shared, &alice, "tags", "x", SearchOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(error, SearchError::OrMap(_)), "{error}");
    }

    #[tokio::test]
    async fn field_level_security_filters_and_withholds_hits() {
        let shared = server(Some(vec![Policy {
            role: "USER".to_owned(),
            map_name_pattern: "*".to_owned(),
            actions: vec![crate::security::PolicyAction::All],
            allowed_fields: Some(vec!["title".to_owned()]),
        }]));
        write(
            &shared,
            "articles",
            "1",
            Some(json!({"title": "rust", "body": "secret rust"})),
            1,
        )
        .await;
        let (hits, _) = shared
            .search
            .search(
                &shared,
                &user("alice"),
                "articles",
                "rust",
                SearchOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(hits[0].value, json!({"title": "rust"}));
    }

    #[tokio::test]
    async fn subscription_gets_snapshot_then_deltas_until_unsubscribed() {
        let shared = server(None);
        write(&shared, "articles", "1", Some(json!({"title": "rust"})), 1).await;
        let (conn, mut rx) = outbound_queue(3, 64);
        let sub = SearchSubPayload {
            subscription_id: "sub-1".to_owned(),
            map_name: "articles".to_owned(),
            query: "rust".to_owned(),
            options: None,
        };
        shared
            .search
            .subscribe(&shared, &conn, &user("bob"), sub)
            .await
            .unwrap();
        let initial = received(&mut rx);
        let [Message::SearchResp(resp)] = initial.as_slice() else {
            panic!("one SEARCH_RESP expected: {initial:?}")
        };
        assert_eq!(resp.payload.request_id, "sub-1");
        assert_eq!(resp.payload.results.len(), 1);
        assert_eq!(shared.search.subscription_count(), 1);

        write(
            &shared,
            "articles",
            "2",
            Some(json!({"title": "more rust"})),
            2,
        )
        .await;
        write(
            &shared,
            "articles",
            "1",
            Some(json!({"title": "rust, edited"})),
            3,
        )
        .await;
        write(
            &shared,
            "articles",
            "3",
            Some(json!({"title": "nothing relevant"})),
            4,
        )
        .await;
        settle(&shared, "articles").await;
        write(&shared, "articles", "2", None, 5).await;
        settle(&shared, "articles").await;
        assert_eq!(
            updates(&received(&mut rx)),
            [
                (
                    "1".to_owned(),
                    ChangeType::Update,
                    json!({"title": "rust, edited"})
                ),
                (
                    "2".to_owned(),
                    ChangeType::Enter,
                    json!({"title": "more rust"})
                ),
                ("2".to_owned(), ChangeType::Leave, Value::Null),
            ]
        );

        shared.search.unsubscribe(3, "sub-1");
        assert_eq!(shared.search.subscription_count(), 0);
        write(&shared, "articles", "5", Some(json!({"title": "rust"})), 6).await;
        settle(&shared, "articles").await;
        assert!(
            received(&mut rx).is_empty(),
            "no updates after SEARCH_UNSUB"
        );
    }

    #[tokio::test]
    async fn closed_connections_lose_their_subscriptions() {
        let shared = server(None);
        let (conn, _rx) = outbound_queue(9, 8);
        for id in ["a", "b"] {
            let sub = SearchSubPayload {
                subscription_id: id.to_owned(),
                map_name: "articles".to_owned(),
                query: "rust".to_owned(),
                options: None,
            };
            shared
                .search
                .subscribe(&shared, &conn, &user("bob"), sub)
                .await
                .unwrap();
        }
        assert_eq!(shared.search.subscription_count(), 2);
        shared.search.remove_connection(9);
        assert_eq!(shared.search.subscription_count(), 0);
        let search = lock(&shared.search.maps).get("articles").cloned().unwrap();
        assert!(lock(&search.live).subscriptions.is_empty());
    }
}
