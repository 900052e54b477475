//! Map loading and persistence: the server's in-memory maps, loaded lazily from the store.
//!
//! A map is loaded on first access; concurrent requests for a map that is still loading wait
//! for the same load, a failed load is reported (`ERROR 500`) and retried on the next access,
//! and no request is ever answered from a half-loaded map (BUG-05 class races). A map's kind
//! (LWW or OR) is fixed by the first message that touches it and persisted with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::replica::{LwwReplica, MapKind, OrReplica, Replica};
use crate::store::{MapSnapshot, Mutation, Store, StoreError, WriteBatch};

use super::workers::WorkerPool;

/// A loaded map, shared by every connection. The lock is held only for synchronous CRDT work,
/// never across an `.await`. One reference count for everything: the write path clones a
/// handle per op, on whichever runtime thread runs the connection.
#[derive(Debug, Clone)]
pub struct MapHandle(Arc<LoadedMap>);

/// What every [`MapHandle`] of one loaded map shares.
#[derive(Debug)]
struct LoadedMap {
    name: Box<str>,
    /// The replica's kind, fixed when the map loads (no code replaces a replica by one of
    /// another kind), so checking it takes no lock: every op checks it.
    kind: MapKind,
    replica: Mutex<Replica>,
}

impl MapHandle {
    /// The map's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The map's kind.
    pub fn kind(&self) -> MapKind {
        self.0.kind
    }

    /// True when both handles are the same loaded map (not merely the same name).
    pub fn is_same_map(&self, other: &MapHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// True when nobody holds the replica lock at this instant (it is not taken). A poisoned
    /// lock counts as free: [`MapHandle::lock`] takes it as it was left.
    pub fn is_unlocked(&self) -> bool {
        !matches!(self.0.replica.try_lock(), Err(TryLockError::WouldBlock))
    }

    /// Locks the replica for reading or changing it.
    pub fn lock(&self) -> MutexGuard<'_, Replica> {
        // A panic inside a CRDT operation would be a bug we cannot recover from better than by
        // continuing with the state as it was left.
        self.0.replica.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`MapHandle::lock`], telling `blocked` how long the thread waited when another holder
    /// had the lock; a free lock costs no clock read.
    pub fn lock_reporting_wait(&self, blocked: impl FnOnce(Duration)) -> MutexGuard<'_, Replica> {
        match self.0.replica.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let started = Instant::now();
                let guard = self.lock();
                blocked(started.elapsed());
                guard
            }
        }
    }
}

/// Why a map could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MapError {
    #[error("failed to load map {map}: {reason}")]
    LoadFailed { map: String, reason: String },
    #[error("map {map} is an {actual} map, not {expected}")]
    KindMismatch {
        map: String,
        actual: MapKind,
        expected: MapKind,
    },
}

/// The lifecycle of one map slot, for introspection (`/ready`, logs, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapLoadState {
    /// Not loaded yet, or its last load failed (the next access retries).
    Unloaded,
    /// A load is in flight.
    Loading,
    /// Loaded and serving.
    Ready,
}

#[derive(Debug, Default)]
struct Slot {
    cell: OnceCell<MapHandle>,
    loading: std::sync::atomic::AtomicBool,
}

/// Every map the server has touched.
pub struct MapRegistry {
    store: Arc<dyn Store>,
    slots: Mutex<HashMap<String, Arc<Slot>, foldhash::fast::RandomState>>,
    debug: bool,
    /// Where big maps are rebuilt, and from how many keys on.
    offload: Option<(WorkerPool, usize)>,
}

impl MapRegistry {
    /// A registry over `store`; `debug` turns on per-access load logging (BUG-07: only when
    /// `TOPGUN_DEBUG=1`).
    pub fn new(store: Arc<dyn Store>, debug: bool) -> Self {
        Self {
            store,
            slots: Mutex::new(HashMap::default()),
            debug,
            offload: None,
        }
    }

    /// Rebuilds stored maps with more than `min_keys` keys on `pool` instead of inline.
    pub fn offload_loads(mut self, pool: WorkerPool, min_keys: usize) -> Self {
        self.offload = Some((pool, min_keys));
        self
    }

    /// The map `name`, loading it if needed. An unknown map is created with `first_touch`
    /// as its kind; a known one must be of kind `expect` when given.
    pub async fn get(
        &self,
        name: &str,
        first_touch: MapKind,
        expect: Option<MapKind>,
    ) -> Result<MapHandle, MapError> {
        let slot = self.slot(name);
        if self.debug {
            tracing::debug!(map = name, state = ?Self::state_of(&slot), "map access");
        }
        let handle = slot
            .cell
            .get_or_try_init(|| async {
                slot.loading
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                let loaded = self.load(name, first_touch).await;
                slot.loading
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                loaded
            })
            .await?
            .clone();
        if let Some(expected) = expect {
            let actual = handle.kind();
            if actual != expected {
                return Err(MapError::KindMismatch {
                    map: name.to_owned(),
                    actual,
                    expected,
                });
            }
        }
        Ok(handle)
    }

    /// The load state of `name`.
    pub fn state(&self, name: &str) -> MapLoadState {
        let slot = self.lock_slots().get(name).cloned();
        slot.map_or(MapLoadState::Unloaded, |s| Self::state_of(&s))
    }

    /// Every loaded map.
    pub fn loaded(&self) -> Vec<MapHandle> {
        self.lock_slots()
            .values()
            .filter_map(|s| s.cell.get().cloned())
            .collect()
    }

    /// Forgets every loaded map (tests use this to prove a reload restores the same state).
    pub fn unload_all(&self) {
        self.lock_slots().clear();
    }

    async fn load(&self, name: &str, first_touch: MapKind) -> Result<MapHandle, MapError> {
        let failed = |e: StoreError| MapError::LoadFailed {
            map: name.to_owned(),
            reason: e.to_string(),
        };
        let replica = match self.store.load_map(name).await.map_err(failed)? {
            Some(snapshot) => self.rebuild(name, snapshot).await?,
            None => {
                let mut batch = WriteBatch::new();
                batch.push(Mutation::SetMapKind {
                    map: name.to_owned(),
                    kind: first_touch,
                });
                self.store.commit(batch).await.map_err(failed)?;
                Replica::empty(first_touch)
            }
        };
        if self.debug {
            tracing::debug!(map = name, kind = %replica.kind(), keys = replica.merkle().len(), "map loaded");
        }
        Ok(MapHandle(Arc::new(LoadedMap {
            name: Box::from(name),
            kind: replica.kind(),
            replica: Mutex::new(replica),
        })))
    }

    /// The replica of a stored map; building its Merkle tree is the costly part, so big maps
    /// are built on the worker pool.
    async fn rebuild(&self, name: &str, snapshot: MapSnapshot) -> Result<Replica, MapError> {
        match &self.offload {
            Some((pool, min_keys)) if snapshot_keys(&snapshot) > *min_keys => pool
                .run(move || replica_from(snapshot))
                .await
                .map_err(|e| MapError::LoadFailed {
                    map: name.to_owned(),
                    reason: e.to_string(),
                }),
            _ => Ok(replica_from(snapshot)),
        }
    }

    /// Every op looks its map up here, so a known map costs no copy of its name.
    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = self.lock_slots();
        if let Some(slot) = slots.get(name) {
            return Arc::clone(slot);
        }
        Arc::clone(slots.entry(name.to_owned()).or_default())
    }

    fn state_of(slot: &Slot) -> MapLoadState {
        if slot.cell.initialized() {
            MapLoadState::Ready
        } else if slot.loading.load(std::sync::atomic::Ordering::SeqCst) {
            MapLoadState::Loading
        } else {
            MapLoadState::Unloaded
        }
    }

    fn lock_slots(
        &self,
    ) -> MutexGuard<'_, HashMap<String, Arc<Slot>, foldhash::fast::RandomState>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn snapshot_keys(snapshot: &MapSnapshot) -> usize {
    match snapshot {
        MapSnapshot::Lww { records } => records.len(),
        MapSnapshot::Or { records, .. } => records.len(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::LwwRecord;
    use crate::store::MemoryStore;
    use crate::store::faulty::FaultyStore;
    use std::sync::atomic::Ordering;

    fn flaky(failures: usize) -> Arc<FaultyStore> {
        let store = FaultyStore::with_load_delay(std::time::Duration::from_millis(20));
        store.failing_loads.store(failures, Ordering::SeqCst);
        Arc::new(store)
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_load_and_see_the_full_map() {
        let store = flaky(0);
        let mut batch = WriteBatch::new();
        let record = LwwRecord {
            value: Some(serde_json::json!(1).into()),
            timestamp: Timestamp::new(1, 0, "n"),
            ttl_ms: None,
        };
        batch.push(Mutation::put_lww("m", "k", &record).unwrap());
        store.commit(batch).await.unwrap();
        let registry = MapRegistry::new(store.clone(), false);
        let (a, b) = tokio::join!(
            registry.get("m", MapKind::Lww, None),
            registry.get("m", MapKind::Lww, None)
        );
        assert_eq!(
            store.loads.load(Ordering::SeqCst),
            1,
            "one load serves both"
        );
        for handle in [a.unwrap(), b.unwrap()] {
            assert_eq!(handle.lock().merkle().len(), 1, "never a half-loaded map");
        }
        assert_eq!(registry.state("m"), MapLoadState::Ready);
    }

    #[tokio::test]
    async fn a_failed_load_is_reported_and_retried_on_next_access() {
        let store = flaky(1);
        let registry = MapRegistry::new(store.clone(), false);
        let first = registry.get("m", MapKind::Lww, None).await;
        assert!(matches!(first, Err(MapError::LoadFailed { .. })));
        assert_eq!(registry.state("m"), MapLoadState::Unloaded);
        assert!(registry.get("m", MapKind::Lww, None).await.is_ok());
        assert_eq!(store.loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn map_kind_is_fixed_at_first_touch_and_persisted() {
        let store = flaky(0);
        let registry = MapRegistry::new(store.clone(), false);
        registry.get("m", MapKind::Or, None).await.unwrap();
        let mismatch = registry.get("m", MapKind::Lww, Some(MapKind::Lww)).await;
        assert!(matches!(
            mismatch,
            Err(MapError::KindMismatch {
                actual: MapKind::Or,
                ..
            })
        ));
        let reloaded = MapRegistry::new(store, false);
        let handle = reloaded.get("m", MapKind::Lww, None).await.unwrap();
        assert_eq!(
            handle.kind(),
            MapKind::Or,
            "the persisted kind wins over a new first touch"
        );
        assert_eq!(handle.lock().kind(), MapKind::Or);
    }

    async fn store_with_records(count: usize) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::new());
        let mut batch = WriteBatch::new();
        for i in 0..count {
            let record = LwwRecord {
                value: (i % 7 != 0)
                    .then(|| serde_json::json!({"n": i}))
                    .map(Into::into),
                timestamp: Timestamp::new(1_000 + i as u64, (i % 3) as u32, "n"),
                ttl_ms: None,
            };
            batch.push(Mutation::put_lww("big", format!("key-{i}"), &record).unwrap());
        }
        store.commit(batch).await.unwrap();
        store
    }

    #[tokio::test]
    async fn a_big_map_rebuilt_on_the_pool_equals_the_inline_rebuild() {
        let store = store_with_records(4_000).await;
        let pool = WorkerPool::new(2);
        let inline = MapRegistry::new(store.clone(), false);
        let pooled = MapRegistry::new(store, false).offload_loads(pool.clone(), 1_000);
        let a = inline.get("big", MapKind::Lww, None).await.unwrap();
        let b = pooled.get("big", MapKind::Lww, None).await.unwrap();
        let roots = |h: &MapHandle| {
            let guard = h.lock();
            (
                guard.merkle().len(),
                guard.merkle().root(crate::merkle::Combine::Fmix),
                guard.merkle().root(crate::merkle::Combine::Sum),
            )
        };
        assert_eq!(roots(&a).0, 4_000);
        assert_eq!(roots(&a), roots(&b));
        assert_eq!(pool.metrics().tasks_run.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_small_map_is_rebuilt_inline() {
        let store = store_with_records(10).await;
        let pool = WorkerPool::new(1);
        let registry = MapRegistry::new(store, false).offload_loads(pool.clone(), 1_000);
        registry.get("big", MapKind::Lww, None).await.unwrap();
        assert_eq!(pool.metrics().tasks_run.load(Ordering::Relaxed), 0);
    }

    /// A `MakeWriter` that appends every log line to a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Loads one map with debug logging enabled at the subscriber and returns what was logged.
    async fn log_of_a_map_load(debug: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let registry = MapRegistry::new(flaky(0), debug);
        registry.get("orders", MapKind::Lww, None).await.unwrap();
        registry.get("orders", MapKind::Lww, None).await.unwrap();
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn map_load_debug_lines_only_when_debug_is_on() {
        // BUG-07: per-access logging must not run unless the operator asked for it.
        let quiet = log_of_a_map_load(false).await;
        assert!(!quiet.contains("orders"), "debug off logged: {quiet}");
        let verbose = log_of_a_map_load(true).await;
        assert!(
            verbose.contains("map loaded") && verbose.contains("map=\"orders\""),
            "{verbose}"
        );
        assert_eq!(verbose.matches("map access").count(), 2, "{verbose}");
    }
}
