//! The backend-neutral persistence contract: the [`Store`] trait, the typed mutations a
//! [`WriteBatch`] carries, the snapshots a restart reloads, and [`StoreError`].
//!
//! The server keeps every map in memory and persists each change through a `Store`; a restart
//! reloads everything from it. Backends: [`MemoryStore`] (nothing durable; tests and
//! simulations) and [`RedbStore`] (durable: group commit to a write-ahead log, a write-behind
//! overlay, periodic checkpoints into redb). The trait speaks only in maps, keys,
//! records and names, never in backend concepts, so a PostgreSQL backend can implement it too.
//!
//! Semantics every backend implements (and the shared conformance suite checks):
//! - A map's [`MapKind`] is fixed at first touch. Writes (`SetMapKind`, `PutLww`, a non-empty
//!   `PutOrKey`, `AddOrTombstones`) claim the kind of an unknown map; removals (`DeleteLww`, an
//!   empty `PutOrKey`, `RemoveOrTombstones`) of an unknown map are no-ops and do not create it.
//!   Any mutation of the other kind fails with [`StoreError::KindMismatch`].
//! - `ClearMap` forgets the map entirely (records, tombstones and kind), so it can be reused.
//! - A batch applies in order and is all-or-nothing: if it fails, none of it is visible.
//! - `commit` resolves only once the batch is durable (for durable backends), so an ack sent
//!   after it can never be lost to a crash (TOPGUN-REFERENCE.md defects 13, 33).
//! - Fencing tokens never decrease: the stored token is the maximum ever put (defect 8).
//! - The journal's last sequence never decreases: it is the maximum ever appended, and
//!   `TrimJournal` drops entries without lowering it.
//! - Map names and keys are arbitrary UTF-8; different maps can never collide (defect 27).
//! - Cancelling a `commit` future does not cancel a write already handed to the backend.

mod codec;
mod lww_row;
pub mod memory;
pub mod redb;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod faulty;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::record::{LwwRecord, OrMapRecord};

pub use self::lww_row::EncodedLww;
pub use self::memory::MemoryStore;
pub use self::redb::{GroupCommitStats, RedbOptions, RedbStore};

/// A boxed, sendable future: what the object-safe [`Store`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which CRDT a map holds. Fixed when the map is first touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// Last-writer-wins map (PROTOCOL.md §4.2).
    Lww,
    /// Observed-remove map (PROTOCOL.md §4.3).
    Or,
}

impl fmt::Display for MapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lww => "LWW",
            Self::Or => "OR",
        })
    }
}

/// Everything stored for one map, as reloaded after a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum MapSnapshot {
    /// A last-writer-wins map: key → record, tombstones included.
    Lww {
        /// Every stored record by key.
        records: BTreeMap<String, LwwRecord>,
    },
    /// An observed-remove map: key → live records, plus the map-wide tombstone tags.
    Or {
        /// Each key's live records, in the order they were put.
        records: BTreeMap<String, Vec<OrMapRecord>>,
        /// Tags removed from this map.
        tombstones: BTreeSet<String>,
    },
}

impl MapSnapshot {
    /// An empty map of `kind`.
    pub fn empty(kind: MapKind) -> Self {
        match kind {
            MapKind::Lww => Self::Lww {
                records: BTreeMap::new(),
            },
            MapKind::Or => Self::Or {
                records: BTreeMap::new(),
                tombstones: BTreeSet::new(),
            },
        }
    }

    /// The kind of map this snapshot holds.
    pub fn kind(&self) -> MapKind {
        match self {
            Self::Lww { .. } => MapKind::Lww,
            Self::Or { .. } => MapKind::Or,
        }
    }
}

/// The persisted state of one PN-counter: per-node totals on each side (PROTOCOL.md §4.4).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    /// Increments per node id.
    pub p: BTreeMap<String, f64>,
    /// Decrements per node id.
    pub n: BTreeMap<String, f64>,
}

/// One stored journal entry: its sequence and its encoded event.
pub type JournalRow = (u64, Vec<u8>);

/// One typed change. A [`WriteBatch`] applies a list of them atomically, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Declare `map` to be of `kind` (a no-op if it already is).
    SetMapKind {
        /// The map.
        map: String,
        /// Its kind.
        kind: MapKind,
    },
    /// Store an LWW record (a tombstone is a record with `value: None`) unless the stored one
    /// is at least as new. Built with [`Mutation::put_lww`]; the record travels encoded.
    PutLww {
        /// The map.
        map: String,
        /// The key.
        key: SmolStr,
        /// The record that replaces any stored one, encoded as the stored row.
        record: EncodedLww,
    },
    /// Remove an LWW key outright if it holds a tombstone (tombstone pruning); a live record
    /// written since the prune was decided is kept.
    DeleteLww {
        /// The map.
        map: String,
        /// The key.
        key: String,
    },
    /// Remove an LWW record outright if it still carries `timestamp`: a client withdrawing its
    /// own write that the server rejected (a newer record written since is kept).
    ForgetLww {
        /// The map.
        map: String,
        /// The key.
        key: String,
        /// The timestamp of the record to withdraw.
        timestamp: crate::hlc::Timestamp,
    },
    /// Merge records into an OR key: union with the stored ones, minus tombstoned tags; a key
    /// left with no records is deleted.
    PutOrKey {
        /// The map.
        map: String,
        /// The key.
        key: String,
        /// The key's complete set of live records.
        records: Vec<OrMapRecord>,
    },
    /// Add tags to an OR map's tombstone set.
    AddOrTombstones {
        /// The map.
        map: String,
        /// Tags to add.
        tags: Vec<String>,
    },
    /// Drop tags from an OR map's tombstone set (tombstone pruning).
    RemoveOrTombstones {
        /// The map.
        map: String,
        /// Tags to drop.
        tags: Vec<String>,
    },
    /// Replace a PN-counter's state.
    PutCounter {
        /// The counter name.
        name: String,
        /// Its full state.
        state: CounterSnapshot,
    },
    /// Record the last fencing token issued for a lock; the stored token never decreases.
    PutFencingToken {
        /// The lock name.
        lock: String,
        /// The token just issued.
        token: u64,
    },
    /// Set a server metadata entry.
    PutMeta {
        /// The metadata key.
        key: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// Forget a map entirely: records, tombstones and kind.
    ClearMap {
        /// The map.
        map: String,
    },
    /// Store one event-journal entry under its sequence number. The store also remembers the
    /// highest sequence ever appended, which trimming never lowers.
    AppendJournal {
        /// The entry's sequence number.
        sequence: u64,
        /// The encoded entry; the store does not interpret it. Shared, so the server's
        /// in-memory journal and the store hold one copy of it.
        event: Arc<[u8]>,
    },
    /// Drop every journal entry whose sequence is below `below` (retention).
    TrimJournal {
        /// The lowest sequence kept.
        below: u64,
    },
}

/// What a mutation does to its map's kind; the rule set both backends validate against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KindEffect {
    /// Creates the map with this kind if unknown; fails if the map has the other kind.
    Claim(MapKind),
    /// Fails if the map has the other kind; leaves an unknown map unknown.
    Require(MapKind),
    /// The map becomes unknown.
    Forget,
}

impl Mutation {
    /// A [`Mutation::PutLww`] of `record`, encoded here, on the caller's thread.
    pub fn put_lww(
        map: impl Into<String>,
        key: impl Into<SmolStr>,
        record: &LwwRecord,
    ) -> Result<Self, StoreError> {
        Ok(Self::PutLww {
            map: map.into(),
            key: key.into(),
            record: EncodedLww::new(record)?,
        })
    }

    /// The map this mutation touches and how it affects that map's kind, if it is map-scoped.
    pub(crate) fn kind_effect(&self) -> Option<(&str, KindEffect)> {
        use KindEffect::{Claim, Forget, Require};
        match self {
            Self::SetMapKind { map, kind } => Some((map, Claim(*kind))),
            Self::PutLww { map, .. } => Some((map, Claim(MapKind::Lww))),
            Self::DeleteLww { map, .. } | Self::ForgetLww { map, .. } => {
                Some((map, Require(MapKind::Lww)))
            }
            Self::PutOrKey { map, records, .. } if records.is_empty() => {
                Some((map, Require(MapKind::Or)))
            }
            Self::PutOrKey { map, .. } | Self::AddOrTombstones { map, .. } => {
                Some((map, Claim(MapKind::Or)))
            }
            Self::RemoveOrTombstones { map, .. } => Some((map, Require(MapKind::Or))),
            Self::ClearMap { map } => Some((map, Forget)),
            Self::PutCounter { .. }
            | Self::PutFencingToken { .. }
            | Self::PutMeta { .. }
            | Self::AppendJournal { .. }
            | Self::TrimJournal { .. } => None,
        }
    }
}

/// Store-side LWW rule: a stored record is replaced only by a strictly newer one. Batches
/// reach the store in whatever order their commits were queued, so the store must not let an
/// older write land on top of a newer one (the same merge the maps use in memory).
pub(crate) fn lww_replaces(stored: Option<&LwwRecord>, incoming: &LwwRecord) -> bool {
    stored.is_none_or(|stored| incoming.timestamp > stored.timestamp)
}

/// Store-side OR rule: a key's records become the union of what is stored and what arrives,
/// newer timestamp winning per tag, minus every tombstoned tag. Order-independent, like the
/// OR map itself, so out-of-order commits cannot resurrect or lose records.
pub(crate) fn merge_or_records(
    stored: Vec<OrMapRecord>,
    incoming: &[OrMapRecord],
    is_tombstoned: impl Fn(&str) -> bool,
) -> Vec<OrMapRecord> {
    let mut by_tag: BTreeMap<String, OrMapRecord> =
        stored.into_iter().map(|r| (r.tag.clone(), r)).collect();
    for record in incoming {
        let newer = by_tag
            .get(&record.tag)
            .is_none_or(|existing| record.timestamp > existing.timestamp);
        if newer {
            by_tag.insert(record.tag.clone(), record.clone());
        }
    }
    by_tag
        .into_values()
        .filter(|record| !is_tombstoned(&record.tag))
        .collect()
}

/// An ordered list of mutations, committed atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    mutations: Vec<Mutation>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `mutations` without regrowing.
    pub fn with_capacity(mutations: usize) -> Self {
        Self {
            mutations: Vec::with_capacity(mutations),
        }
    }

    /// Appends a mutation; mutations apply in the order they were pushed.
    pub fn push(&mut self, mutation: Mutation) -> &mut Self {
        self.mutations.push(mutation);
        self
    }

    /// The mutations, in application order.
    pub fn mutations(&self) -> &[Mutation] {
        &self.mutations
    }

    /// True when the batch holds no mutation.
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }

    /// Checks every map-scoped mutation against the kind its map will have at that point of
    /// the batch. `stored` reports a map's kind before the batch. Validating up front is what
    /// lets backends apply a batch without partial failure on kind conflicts.
    pub(crate) fn check_kinds(
        &self,
        mut stored: impl FnMut(&str) -> Result<Option<MapKind>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut seen: HashMap<&str, Option<MapKind>, foldhash::fast::RandomState> =
            HashMap::default();
        for (map, effect) in self.mutations.iter().filter_map(Mutation::kind_effect) {
            let current = match seen.get(map) {
                Some(kind) => *kind,
                None => stored(map)?,
            };
            seen.insert(map, kind_after(map, current, effect)?);
        }
        Ok(())
    }
}

impl From<Vec<Mutation>> for WriteBatch {
    fn from(mutations: Vec<Mutation>) -> Self {
        Self { mutations }
    }
}

impl From<WriteBatch> for Vec<Mutation> {
    fn from(batch: WriteBatch) -> Self {
        batch.mutations
    }
}

/// The kind `map` has after `effect`, or the conflict that forbids it.
fn kind_after(
    map: &str,
    current: Option<MapKind>,
    effect: KindEffect,
) -> Result<Option<MapKind>, StoreError> {
    let (KindEffect::Claim(requested) | KindEffect::Require(requested)) = effect else {
        return Ok(None);
    };
    match current {
        Some(existing) if existing != requested => Err(StoreError::KindMismatch {
            map: map.to_owned(),
            existing,
            requested,
        }),
        Some(existing) => Ok(Some(existing)),
        None if matches!(effect, KindEffect::Claim(_)) => Ok(Some(requested)),
        None => Ok(None),
    }
}

/// Why a store operation failed. Cloneable so one group-commit failure can answer every
/// batch in the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A mutation of one kind was aimed at a map of the other kind.
    #[error("map {map:?} is a {existing} map; a {requested} mutation cannot be applied to it")]
    KindMismatch {
        /// The map.
        map: String,
        /// Its stored kind.
        existing: MapKind,
        /// The kind the mutation needs.
        requested: MapKind,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The background writer went away before acknowledging a batch; its fate is unknown.
    #[error("the store writer stopped before acknowledging the batch")]
    WriterStopped,
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being attempted.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The storage engine reported an error.
    #[error("storage backend failed to {action}: {source}")]
    Backend {
        /// What was being attempted.
        action: String,
        /// The engine's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode {what} for storage: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        message: String,
    },
    /// A stored value could not be decoded.
    #[error("stored {what} at {key:?} is unreadable: {message}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// Where it was stored.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// The store was written by an incompatible version.
    #[error("store format version {found} is not supported (this build reads version {supported})")]
    UnsupportedFormat {
        /// The version on disk.
        found: u32,
        /// The version this build understands.
        supported: u32,
    },
    /// A background task for a blocking operation failed.
    #[error("store background task failed: {0}")]
    Task(String),
}

/// Persistence for maps, counters, fencing tokens, the event journal and server metadata.
///
/// Object-safe (`Arc<dyn Store>`) and async: backends never block the calling runtime thread.
pub trait Store: Send + Sync + 'static {
    /// Everything stored for `map`, or `None` if the map is unknown.
    fn load_map(&self, map: &str) -> BoxFuture<'_, Result<Option<MapSnapshot>, StoreError>>;

    /// Every known map and its kind, sorted by name.
    fn list_maps(&self) -> BoxFuture<'_, Result<Vec<(String, MapKind)>, StoreError>>;

    /// Every PN-counter's state by name.
    fn load_counters(&self)
    -> BoxFuture<'_, Result<BTreeMap<String, CounterSnapshot>, StoreError>>;

    /// The last fencing token issued per lock name.
    fn load_fencing_tokens(&self) -> BoxFuture<'_, Result<BTreeMap<String, u64>, StoreError>>;

    /// Up to `limit` journal entries with sequence ≥ `from_sequence`, in sequence order.
    fn read_journal(
        &self,
        from_sequence: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalRow>, StoreError>>;

    /// The highest journal sequence ever appended (0 if none), even if it was trimmed since,
    /// so sequences continue upward after a restart.
    fn last_journal_sequence(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// A server metadata entry, if set.
    fn get_meta(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>>;

    /// Whether the store takes work, for a readiness probe: it must be cheap and must not
    /// disturb writes, as an orchestrator calls it every few seconds under full load. The
    /// default reads a metadata entry; backends whose reads cost more override it.
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.get_meta("readiness-probe").await.map(|_| ()) })
    }

    /// Applies `batch` atomically; resolves once it is durable (for durable backends).
    fn commit(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Queues `batch` behind every earlier commit and resolves once it is queued, not once it
    /// is durable: the caller keeps its place in commit order and feels the backend's
    /// backpressure without waiting for a flush. A later failure to write it is logged by
    /// the backend. Backends without a write queue simply commit.
    fn commit_queued(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StoreError>> {
        self.commit(batch)
    }

    /// Finishes every accepted commit, then releases the backend. Later reads and commits fail
    /// with [`StoreError::Closed`]; closing again is a no-op.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_lww(map: &str) -> Mutation {
        let record = LwwRecord {
            value: None,
            timestamp: crate::hlc::Timestamp::new(1, 0, "n"),
            ttl_ms: None,
        };
        Mutation::put_lww(map, "k", &record).unwrap()
    }

    fn remove_tags(map: &str) -> Mutation {
        Mutation::RemoveOrTombstones {
            map: map.into(),
            tags: vec![],
        }
    }

    #[test]
    fn kinds_follow_the_batch_order() {
        let batch = WriteBatch::from(vec![
            put_lww("m"),
            Mutation::ClearMap { map: "m".into() },
            Mutation::SetMapKind {
                map: "m".into(),
                kind: MapKind::Or,
            },
            remove_tags("m"),
        ]);
        assert!(batch.check_kinds(|_| Ok(Some(MapKind::Lww))).is_ok());

        let conflicting = WriteBatch::from(vec![put_lww("m"), remove_tags("m")]);
        let err = conflicting.check_kinds(|_| Ok(None)).unwrap_err();
        assert!(matches!(
            err,
            StoreError::KindMismatch {
                existing: MapKind::Lww,
                requested: MapKind::Or,
                ..
            }
        ));
    }

    #[test]
    fn removals_do_not_claim_an_unknown_map() {
        let batch = WriteBatch::from(vec![remove_tags("m"), put_lww("m")]);
        assert!(batch.check_kinds(|_| Ok(None)).is_ok());
        let empty_or_put = Mutation::PutOrKey {
            map: "m".into(),
            key: "k".into(),
            records: vec![],
        };
        assert_eq!(
            empty_or_put.kind_effect(),
            Some(("m", KindEffect::Require(MapKind::Or)))
        );
    }

    #[test]
    fn stored_kind_is_consulted_once_per_map() {
        let mut lookups = 0;
        let batch = WriteBatch::from(vec![put_lww("m"), put_lww("m"), put_lww("n")]);
        batch
            .check_kinds(|_| {
                lookups += 1;
                Ok(None)
            })
            .unwrap();
        assert_eq!(lookups, 2);
    }
}
