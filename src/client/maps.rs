//! Local map residency: which maps are loaded in memory, loading them from the local store
//! on first access, and evicting the least recently used ones when more than the configured
//! number are open.
//!
//! Every local write is committed to the store before it touches a loaded replica, so a
//! loaded map is only a cache of the store: eviction is a residency change, never a loss
//! (TOPGUN-REFERENCE.md §3.8). Even so, a map with pending ops, live query subscribers or
//! change subscribers is never evicted, so what an app is watching never reloads under it.
//! Every map the store holds stays in the reconnect sync set whether it is loaded or not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lru::LruCache;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::record::{LwwRecord, OrMapRecord};
use crate::replica::{LwwReplica, MapKind, OrReplica, Replica};
use crate::store::{MapSnapshot, Mutation, Store, StoreError};

/// How many change notifications a slow map subscriber may fall behind before it skips some.
const CHANGE_CHANNEL_CAPACITY: usize = 1_024;

/// Residency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapsConfig {
    /// Maps kept loaded at once (more may stay loaded while all of them are in use).
    pub max_open_maps: usize,
}

impl Default for MapsConfig {
    fn default() -> Self {
        Self { max_open_maps: 64 }
    }
}

/// Why a map could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MapError {
    /// The map exists with the other CRDT kind.
    #[error("map {map:?} is an {actual} map, not an {expected} map")]
    KindMismatch {
        /// The map.
        map: String,
        /// The kind the caller asked for.
        expected: MapKind,
        /// The kind it has.
        actual: MapKind,
    },
    /// The map name breaks the name grammar.
    #[error("invalid map name {0:?}: names are 1-256 characters without ':' or control characters")]
    InvalidName(String),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
}

/// A change to one key of a loaded map, as seen by map subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct MapChange {
    /// The key that changed.
    pub key: String,
    /// Its values now: the LWW value (empty when removed) or the OR values.
    pub values: Vec<Value>,
}

/// Something residency did that the app may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapsEvent {
    /// A map was unloaded; its data stays in the local store.
    Evicted {
        /// The map.
        map: String,
    },
}

/// A loaded map: its replica and its change subscribers.
#[derive(Debug)]
pub struct OpenMap {
    /// The CRDT and its Merkle tree.
    pub replica: Replica,
    changes: broadcast::Sender<MapChange>,
}

impl OpenMap {
    fn new(replica: Replica) -> Self {
        Self {
            replica,
            changes: broadcast::channel(CHANGE_CHANNEL_CAPACITY).0,
        }
    }

    /// A receiver of every later change to this map.
    pub fn subscribe(&self) -> broadcast::Receiver<MapChange> {
        self.changes.subscribe()
    }

    /// Tells subscribers that `key` changed.
    pub fn notify(&self, key: &str, now_millis: u64) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        let values = self.values(key, now_millis);
        let _ = self.changes.send(MapChange {
            key: key.to_owned(),
            values,
        });
    }

    /// The live values of `key`: at most one for an LWW map, any number for an OR map.
    pub fn values(&self, key: &str, now_millis: u64) -> Vec<Value> {
        match &self.replica {
            Replica::Lww(r) => r.map().get(key, now_millis).cloned().into_iter().collect(),
            Replica::Or(r) => r.map().get(key, now_millis).into_iter().cloned().collect(),
        }
    }

    /// Every live entry: LWW keys with their value, OR keys with an array of their values.
    pub fn entries(&self, now_millis: u64) -> Vec<(String, Value)> {
        self.entries_where(now_millis, |_, _| true)
    }

    /// The live entries (as [`OpenMap::entries`] gives them) that `keep` accepts; an LWW
    /// value is copied only when kept.
    pub fn entries_where(
        &self,
        now_millis: u64,
        keep: impl Fn(&str, &Value) -> bool,
    ) -> Vec<(String, Value)> {
        match &self.replica {
            Replica::Lww(r) => r
                .map()
                .entries(now_millis)
                .filter(|(k, v)| keep(k, v))
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
            Replica::Or(r) => r
                .map()
                .keys()
                .filter_map(|k| {
                    let values = r.map().get(k, now_millis);
                    (!values.is_empty()).then(|| {
                        (
                            k.to_owned(),
                            Value::Array(values.into_iter().cloned().collect()),
                        )
                    })
                })
                .filter(|(k, v)| keep(k, v))
                .collect(),
        }
    }

    fn has_subscribers(&self) -> bool {
        self.changes.receiver_count() > 0
    }
}

/// Where residency events go (the engine forwards them to the app).
pub type MapsEventSink = Arc<dyn Fn(MapsEvent) + Send + Sync>;

/// The loaded maps, the set of every map known locally, and what keeps a map loaded.
pub struct LocalMaps {
    store: Arc<dyn Store>,
    on_event: MapsEventSink,
    open: LruCache<String, OpenMap>,
    capacity: usize,
    known: BTreeMap<String, MapKind>,
    /// Highest op id not yet acknowledged, per map.
    pending_ops: HashMap<String, u64>,
    /// Live queries per map.
    query_refs: HashMap<String, usize>,
}

impl LocalMaps {
    /// Reads which maps the store holds; loads none of them yet.
    pub async fn open(
        store: Arc<dyn Store>,
        config: MapsConfig,
        on_event: MapsEventSink,
    ) -> Result<Self, StoreError> {
        let known = store.list_maps().await?.into_iter().collect();
        Ok(Self {
            store,
            on_event,
            open: LruCache::unbounded(),
            capacity: config.max_open_maps.max(1),
            known,
            pending_ops: HashMap::new(),
            query_refs: HashMap::new(),
        })
    }

    /// Every map this client holds data for, loaded or not: the reconnect sync set.
    pub fn known(&self) -> Vec<(String, MapKind)> {
        self.known.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The kind of `map`, if this client has ever used it.
    pub fn kind_of(&self, map: &str) -> Option<MapKind> {
        self.known.get(map).copied()
    }

    /// How many maps are loaded.
    pub fn loaded(&self) -> usize {
        self.open.len()
    }

    /// Whether `map` is loaded.
    pub fn is_loaded(&self, map: &str) -> bool {
        self.open.contains(map)
    }

    /// The loaded map, marked as recently used; `None` if it is not loaded.
    pub fn get_mut(&mut self, map: &str) -> Option<&mut OpenMap> {
        self.open.get_mut(map)
    }

    /// The loaded map without touching its recency.
    pub fn peek(&self, map: &str) -> Option<&OpenMap> {
        self.open.peek(map)
    }

    /// Loads `map` as `kind` (from the store, or empty if new); evictions this causes go to
    /// the event sink.
    pub async fn load(&mut self, map: &str, kind: MapKind) -> Result<&mut OpenMap, MapError> {
        validate_map_name(map)?;
        if let Some(actual) = self.known.get(map).copied() {
            if actual != kind {
                return Err(MapError::KindMismatch {
                    map: map.to_owned(),
                    expected: kind,
                    actual,
                });
            }
        }
        if !self.open.contains(map) {
            let replica = match self.store.load_map(map).await? {
                Some(snapshot) => replica_from(snapshot),
                None => Replica::empty(kind),
            };
            self.open.put(map.to_owned(), OpenMap::new(replica));
            for event in self.evict_over_capacity(map) {
                (self.on_event)(event);
            }
        }
        self.known.insert(map.to_owned(), kind);
        // Present by now (eviction never takes `map`); the closure only satisfies the API.
        let open = self
            .open
            .get_or_insert_mut(map.to_owned(), || OpenMap::new(Replica::empty(kind)));
        Ok(open)
    }

    /// Remembers that op `op_id` of `map` awaits its ack (the map is pinned until then).
    pub fn op_pending(&mut self, map: &str, op_id: u64) {
        let highest = self.pending_ops.entry(map.to_owned()).or_default();
        *highest = (*highest).max(op_id);
    }

    /// Every op up to `last_id` was acknowledged (or dropped).
    pub fn ops_settled(&mut self, last_id: u64) {
        self.pending_ops.retain(|_, highest| *highest > last_id);
    }

    /// A live query on `map` started (`true`) or ended (`false`).
    pub fn query_ref(&mut self, map: &str, started: bool) {
        let count = self.query_refs.entry(map.to_owned()).or_default();
        if started {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.query_refs.remove(map);
            }
        }
    }

    /// The map was cleared by a sync reset: forget it locally.
    pub fn forget(&mut self, map: &str) {
        self.open.pop(map);
        self.known.remove(map);
    }

    fn in_use(&self, map: &str, open: &OpenMap) -> bool {
        self.pending_ops.contains_key(map)
            || self.query_refs.contains_key(map)
            || open.has_subscribers()
    }

    /// Evicts least recently used idle maps until the capacity holds, never `keep`.
    fn evict_over_capacity(&mut self, keep: &str) -> Vec<MapsEvent> {
        let mut events = Vec::new();
        while self.open.len() > self.capacity {
            let victim = self
                .open
                .iter()
                .rev()
                .find(|(name, open)| name.as_str() != keep && !self.in_use(name, open))
                .map(|(name, _)| name.clone());
            let Some(victim) = victim else {
                tracing::debug!(
                    loaded = self.open.len(),
                    capacity = self.capacity,
                    "every loaded map is in use; staying over the residency limit"
                );
                break;
            };
            self.open.pop(&victim);
            tracing::debug!(map = %victim, "evicted an idle map (its data stays in the store)");
            events.push(MapsEvent::Evicted { map: victim });
        }
        events
    }
}

/// The name grammar (defect 27): no `:` (the TS clients' key prefix separator), no control
/// characters, 1 to 256 characters.
pub fn validate_map_name(map: &str) -> Result<(), MapError> {
    let valid = !map.is_empty()
        && map.chars().count() <= 256
        && !map.chars().any(|c| c == ':' || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(MapError::InvalidName(map.to_owned()))
    }
}

fn replica_from(snapshot: MapSnapshot) -> Replica {
    match snapshot {
        MapSnapshot::Lww { records } => Replica::Lww(LwwReplica::from_records(records)),
        MapSnapshot::Or {
            records,
            tombstones,
        } => Replica::Or(OrReplica::from_parts(records, tombstones)),
    }
}

/// The store mutation that persists one LWW record (encoded here, as the store keeps it).
pub fn lww_mutation(map: &str, key: &str, record: &LwwRecord) -> Result<Mutation, StoreError> {
    Mutation::put_lww(map, key, record)
}

/// The store mutations that persist OR records and removed tags of one key (the store
/// unions records and drops tombstoned tags).
pub fn or_mutations(
    map: &str,
    key: &str,
    records: Vec<OrMapRecord>,
    removed_tags: Vec<String>,
) -> Vec<Mutation> {
    let mut mutations = Vec::with_capacity(2);
    if !removed_tags.is_empty() {
        mutations.push(Mutation::AddOrTombstones {
            map: map.to_owned(),
            tags: removed_tags,
        });
    }
    mutations.push(Mutation::PutOrKey {
        map: map.to_owned(),
        key: key.to_owned(),
        records,
    });
    mutations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::store::{MemoryStore, WriteBatch};
    use serde_json::json;

    fn record(value: Value, millis: u64) -> LwwRecord {
        LwwRecord {
            value: Some(value.into()),
            timestamp: Timestamp::new(millis, 0, "n1"),
            ttl_ms: None,
        }
    }

    /// Local maps over `store` whose events land in the returned list.
    async fn maps_over(
        store: Arc<dyn Store>,
        max_open_maps: usize,
    ) -> (LocalMaps, Arc<std::sync::Mutex<Vec<MapsEvent>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let maps = LocalMaps::open(
            store,
            MapsConfig { max_open_maps },
            Arc::new(move |e| sink.lock().unwrap().push(e)),
        )
        .await
        .unwrap();
        (maps, seen)
    }

    fn drain(seen: &std::sync::Mutex<Vec<MapsEvent>>) -> Vec<MapsEvent> {
        std::mem::take(&mut *seen.lock().unwrap())
    }

    async fn store_with(maps: &[&str]) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut batch = WriteBatch::new();
        for map in maps {
            batch.push(lww_mutation(map, "k", &record(json!(map), 10)).unwrap());
        }
        store.commit(batch).await.unwrap();
        store
    }

    #[tokio::test]
    async fn loading_reads_the_store_and_checks_the_kind() {
        let store = store_with(&["a"]).await;
        let (mut maps, _) = maps_over(store, 64).await;
        assert_eq!(maps.known(), vec![("a".to_owned(), MapKind::Lww)]);
        assert!(!maps.is_loaded("a"));
        let open = maps.load("a", MapKind::Lww).await.unwrap();
        assert_eq!(open.values("k", 0), vec![json!("a")]);
        let err = maps.load("a", MapKind::Or).await.unwrap_err();
        assert!(matches!(err, MapError::KindMismatch { .. }), "{err}");
        assert!(matches!(
            maps.load("bad:name", MapKind::Lww).await,
            Err(MapError::InvalidName(_))
        ));
    }

    #[tokio::test]
    async fn eviction_takes_the_least_recently_used_idle_map() {
        let store = store_with(&["a", "b", "c", "d"]).await;
        let (mut maps, seen) = maps_over(store, 2).await;
        maps.load("a", MapKind::Lww).await.unwrap();
        maps.load("b", MapKind::Lww).await.unwrap();
        maps.get_mut("a");
        maps.load("c", MapKind::Lww).await.unwrap();
        assert_eq!(drain(&seen), vec![MapsEvent::Evicted { map: "b".into() }]);
        assert!(maps.is_loaded("a") && maps.is_loaded("c"));
        assert_eq!(maps.known().len(), 4, "evicted maps stay in the sync set");
    }

    #[tokio::test]
    async fn maps_in_use_are_never_evicted() {
        let store = store_with(&["a", "b", "c", "d"]).await;
        let (mut maps, seen) = maps_over(store, 1).await;
        let a = maps.load("a", MapKind::Lww).await.unwrap();
        let _watching = a.subscribe();
        maps.op_pending("b", 7);
        maps.load("b", MapKind::Lww).await.unwrap();
        maps.query_ref("c", true);
        maps.load("c", MapKind::Lww).await.unwrap();
        let events = drain(&seen);
        assert!(events.is_empty(), "all three are in use: {events:?}");
        assert_eq!(maps.loaded(), 3);

        maps.ops_settled(7);
        maps.query_ref("c", false);
        maps.load("d", MapKind::Lww).await.unwrap();
        assert_eq!(
            drain(&seen),
            vec![
                MapsEvent::Evicted { map: "b".into() },
                MapsEvent::Evicted { map: "c".into() }
            ]
        );
        assert!(maps.is_loaded("a"), "a subscribed map stays");
    }

    #[tokio::test]
    async fn or_mutations_persist_adds_and_removes() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let add = OrMapRecord {
            value: json!("x"),
            timestamp: Timestamp::new(5, 0, "n1"),
            tag: "5:0:n1".into(),
            ttl_ms: None,
        };
        store
            .commit(or_mutations("m", "k", vec![add], vec![]).into())
            .await
            .unwrap();
        store
            .commit(or_mutations("m", "k", vec![], vec!["5:0:n1".into()]).into())
            .await
            .unwrap();
        let (mut maps, _) = maps_over(store, 64).await;
        let open = maps.load("m", MapKind::Or).await.unwrap();
        assert!(open.values("k", 0).is_empty());
        let Replica::Or(r) = &open.replica else {
            panic!("kind")
        };
        assert!(r.map().is_tombstoned("5:0:n1"));
    }
}
