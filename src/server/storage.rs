//! Map loading and persistence: the server's in-memory maps, loaded lazily from the store.
//!
//! A map is loaded on first access; concurrent requests for a map that is still loading wait
//! for the same load, a failed load is reported (`ERROR 500`) and retried on the next access,
//! and no request is ever answered from a half-loaded map (BUG-05 class races). A map's kind
//! (LWW or OR) is fixed by the first message that touches it and persisted with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

use crate::replica::{LwwReplica, MapKind, OrReplica, Replica};
use crate::store::{MapSnapshot, Mutation, Store, StoreError, WriteBatch};

/// A loaded map, shared by every connection. The lock is held only for synchronous CRDT work,
/// never across an `.await`.
#[derive(Debug, Clone)]
pub struct MapHandle {
    name: Arc<str>,
    replica: Arc<Mutex<Replica>>,
}

impl MapHandle {
    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Locks the replica for reading or changing it.
    pub fn lock(&self) -> MutexGuard<'_, Replica> {
        // A panic inside a CRDT operation would be a bug we cannot recover from better than by
        // continuing with the state as it was left.
        self.replica.lock().unwrap_or_else(|e| e.into_inner())
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
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    debug: bool,
}

impl MapRegistry {
    /// A registry over `store`; `debug` turns on per-access load logging (BUG-07: only when
    /// `TOPGUN_DEBUG=1`).
    pub fn new(store: Arc<dyn Store>, debug: bool) -> Self {
        Self {
            store,
            slots: Mutex::new(HashMap::new()),
            debug,
        }
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
            let actual = handle.lock().kind();
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
            Some(snapshot) => replica_from(snapshot),
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
        Ok(MapHandle {
            name: Arc::from(name),
            replica: Arc::new(Mutex::new(replica)),
        })
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        self.lock_slots()
            .entry(name.to_owned())
            .or_default()
            .clone()
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

    fn lock_slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
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
