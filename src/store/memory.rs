//! [`MemoryStore`]: the [`Store`] contract held in process memory behind one mutex. Nothing is
//! durable; it exists for tests, simulations and servers run without persistence.

use std::collections::{BTreeMap, BTreeSet};
use std::future::ready;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::record::{LwwRecord, OrMapRecord};

use super::{
    BoxFuture, CounterSnapshot, JournalRow, MapKind, MapSnapshot, Mutation, Store, StoreError,
    WriteBatch,
};

/// A non-durable store with the same semantics as the durable backends.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    maps: BTreeMap<String, MapSnapshot>,
    counters: BTreeMap<String, CounterSnapshot>,
    fencing_tokens: BTreeMap<String, u64>,
    meta: BTreeMap<String, Vec<u8>>,
    journal: BTreeMap<u64, Arc<[u8]>>,
    last_journal_sequence: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Batches are validated before any change is made, so a panic while the lock was held
        // cannot have left a half-applied batch behind; the state is safe to keep using.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The open state, or `Closed`.
    fn open_state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        let state = self.lock();
        if state.closed {
            return Err(StoreError::Closed);
        }
        Ok(state)
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> T,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        Box::pin(ready(self.open_state().map(|state| f(&state))))
    }
}

impl State {
    /// Applies one mutation; a `PutLww` takes its record from `lww_records`, the batch's LWW
    /// rows decoded in order by [`decode_lww_rows`].
    fn apply(&mut self, mutation: Mutation, lww_records: &mut impl Iterator<Item = LwwRecord>) {
        match mutation {
            Mutation::SetMapKind { map, kind } => {
                self.claim(map, kind);
            }
            Mutation::PutLww { map, key, .. } => {
                let record = lww_records.next();
                if let (MapSnapshot::Lww { records }, Some(record)) =
                    (self.claim(map, MapKind::Lww), record)
                    && super::lww_replaces(records.get(key.as_str()), &record)
                {
                    records.insert(key.into(), record);
                }
            }
            Mutation::DeleteLww { map, key } => {
                if let Some(MapSnapshot::Lww { records }) = self.maps.get_mut(&map)
                    && records.get(&key).is_some_and(LwwRecord::is_tombstone)
                {
                    records.remove(&key);
                }
            }
            Mutation::ForgetLww {
                map,
                key,
                timestamp,
            } => {
                if let Some(MapSnapshot::Lww { records }) = self.maps.get_mut(&map)
                    && records.get(&key).is_some_and(|r| r.timestamp == timestamp)
                {
                    records.remove(&key);
                }
            }
            Mutation::PutOrKey { map, key, records } if records.is_empty() => {
                if let Some(MapSnapshot::Or {
                    records: items,
                    tombstones,
                }) = self.maps.get_mut(&map)
                {
                    merge_or_key(items, tombstones, key, &records);
                }
            }
            Mutation::PutOrKey { map, key, records } => {
                if let MapSnapshot::Or {
                    records: items,
                    tombstones,
                } = self.claim(map, MapKind::Or)
                {
                    merge_or_key(items, tombstones, key, &records);
                }
            }
            Mutation::AddOrTombstones { map, tags } => {
                if let MapSnapshot::Or { tombstones, .. } = self.claim(map, MapKind::Or) {
                    tombstones.extend(tags);
                }
            }
            Mutation::RemoveOrTombstones { map, tags } => {
                if let Some(MapSnapshot::Or { tombstones, .. }) = self.maps.get_mut(&map) {
                    for tag in &tags {
                        tombstones.remove(tag);
                    }
                }
            }
            Mutation::PutCounter { name, state } => {
                self.counters.insert(name, state);
            }
            Mutation::PutFencingToken { lock, token } => {
                let stored = self.fencing_tokens.entry(lock).or_insert(0);
                *stored = (*stored).max(token);
            }
            Mutation::PutMeta { key, value } => {
                self.meta.insert(key, value);
            }
            Mutation::ClearMap { map } => {
                self.maps.remove(&map);
            }
            Mutation::AppendJournal { sequence, event } => {
                self.journal.insert(sequence, event);
                self.last_journal_sequence = self.last_journal_sequence.max(sequence);
            }
            Mutation::TrimJournal { below } => {
                self.journal = self.journal.split_off(&below);
            }
        }
    }

    /// The map, created empty with `kind` if unknown. Kinds were validated before applying,
    /// so an existing map already has `kind`.
    fn claim(&mut self, map: String, kind: MapKind) -> &mut MapSnapshot {
        self.maps
            .entry(map)
            .or_insert_with(|| MapSnapshot::empty(kind))
    }
}

impl Store for MemoryStore {
    fn load_map(&self, map: &str) -> BoxFuture<'_, Result<Option<MapSnapshot>, StoreError>> {
        let map = map.to_owned();
        self.read(move |state| state.maps.get(&map).cloned())
    }

    fn list_maps(&self) -> BoxFuture<'_, Result<Vec<(String, MapKind)>, StoreError>> {
        self.read(|state| {
            state
                .maps
                .iter()
                .map(|(name, snapshot)| (name.clone(), snapshot.kind()))
                .collect()
        })
    }

    fn load_counters(
        &self,
    ) -> BoxFuture<'_, Result<BTreeMap<String, CounterSnapshot>, StoreError>> {
        self.read(|state| state.counters.clone())
    }

    fn load_fencing_tokens(&self) -> BoxFuture<'_, Result<BTreeMap<String, u64>, StoreError>> {
        self.read(|state| state.fencing_tokens.clone())
    }

    fn read_journal(
        &self,
        from_sequence: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalRow>, StoreError>> {
        self.read(move |state| {
            state
                .journal
                .range(from_sequence..)
                .take(limit)
                .map(|(sequence, event)| (*sequence, event.to_vec()))
                .collect()
        })
    }

    fn last_journal_sequence(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.read(|state| state.last_journal_sequence)
    }

    fn get_meta(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        let key = key.to_owned();
        self.read(move |state| state.meta.get(&key).cloned())
    }

    fn commit(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(ready(self.open_state().and_then(|mut state| {
            batch.check_kinds(|map| Ok(state.maps.get(map).map(MapSnapshot::kind)))?;
            let mut lww_records = decode_lww_rows(&batch)?.into_iter();
            for mutation in Vec::from(batch) {
                state.apply(mutation, &mut lww_records);
            }
            Ok(())
        })))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.lock().closed = true;
        Box::pin(ready(Ok(())))
    }
}

/// The records of `batch`'s `PutLww` rows, in order: decoded before anything is applied, so a
/// row that cannot be read fails the batch as a whole.
fn decode_lww_rows(batch: &WriteBatch) -> Result<Vec<LwwRecord>, StoreError> {
    batch
        .mutations()
        .iter()
        .filter_map(|mutation| match mutation {
            Mutation::PutLww { record, .. } => Some(record.decode()),
            _ => None,
        })
        .collect()
}

/// Applies the store-side OR merge to one key, deleting it when nothing is left.
fn merge_or_key(
    items: &mut BTreeMap<String, Vec<OrMapRecord>>,
    tombstones: &BTreeSet<String>,
    key: String,
    incoming: &[OrMapRecord],
) {
    let stored = items.remove(&key).unwrap_or_default();
    let merged = super::merge_or_records(stored, incoming, |tag| tombstones.contains(tag));
    if !merged.is_empty() {
        items.insert(key, merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    crate::store::conformance::store_conformance_tests!(((), Arc::new(MemoryStore::new())));
}
