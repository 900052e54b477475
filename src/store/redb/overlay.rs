//! The write-behind overlay: the latest state of every row the writer touched since the last
//! checkpoint, in memory, with the same merge rules the redb tables follow.
//!
//! Each map row is a [`Slot`]: dirty when a committed batch changed it (a checkpoint must write
//! it), clean when it merely caches what redb holds (loaded as a batch's base, or written by an
//! earlier checkpoint). Clean slots keep hot keys from being read back from redb after every
//! checkpoint; they are dropped wholesale when the overlay outgrows its row bound.
//!
//! Applying a batch happens in two steps so a batch stays all-or-nothing:
//! [`Overlay::prefetch`] loads every base row the batch can consult (the only step that reads
//! redb and can fail, and one that changes no visible state), then [`Overlay::apply`] merges the
//! mutations without any I/O. A `ClearMap` marks the map cleared: the checkpoint wipes its rows
//! in redb before writing the ones put after the clear, and no row of it is read from redb
//! again until then.
//!
//! A background checkpoint writes a frozen overlay while the writer fills a fresh one; until
//! it commits, base rows come from the frozen overlay first and redb second ([`Base`]), and
//! afterwards its rows become the fresh overlay's clean cache ([`Overlay::absorb`]).
//!
//! The hash maps are keyed by map names, keys and tags: they use `foldhash`, randomly seeded,
//! rather than std's SipHash, which stood out in the writer's profile.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use smol_str::SmolStr;

use ::redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::journal_blocks::{self, BlockFiles};
use super::{KINDS, LWW, OR_RECORDS, OR_TOMBSTONES, WriteTables, backend};
use crate::record::OrMapRecord;
use crate::store::codec::{decode, encode, encode_into, kind_code, kind_from_code};
use crate::store::{CounterSnapshot, EncodedLww, MapKind, Mutation, StoreError, WriteBatch};

/// A row's key or tag. Short ones (up to 23 bytes) are held inline, so finding a row reads its
/// key from the table itself: with `String` keys, comparing a hit's key was a cache miss on its
/// heap copy, and the largest cost of the writer's lookups.
type RowKey = SmolStr;

/// One row as the overlay knows it.
#[derive(Debug, Clone)]
struct Slot<T> {
    value: T,
    /// Changed since the last checkpoint.
    dirty: bool,
}

impl<T> Slot<T> {
    fn clean(value: T) -> Self {
        Self {
            value,
            dirty: false,
        }
    }

    fn dirty(value: T) -> Self {
        Self { value, dirty: true }
    }
}

/// What the overlay knows about one map.
#[derive(Debug, Default)]
struct MapState {
    /// A `ClearMap` since the last checkpoint: redb's rows of this map are stale.
    cleared: bool,
    /// The map's kind (`None`: unknown), once loaded or claimed.
    kind: Option<Slot<Option<MapKind>>>,
    /// LWW rows, kept encoded as they arrived; `None` means no row.
    lww: HashMap<RowKey, Slot<Option<EncodedLww>>>,
    /// OR records per key; empty means no row.
    or_records: HashMap<RowKey, Slot<Vec<OrMapRecord>>>,
    /// OR tombstone tags; `false` means no row.
    tombstones: HashMap<RowKey, Slot<bool>>,
}

impl MapState {
    fn cleared() -> Self {
        Self {
            cleared: true,
            kind: Some(Slot::clean(None)),
            ..Self::default()
        }
    }

    fn rows(&self) -> usize {
        self.lww.len() + self.or_records.len() + self.tombstones.len()
    }

    /// Records the map's kind; kinds were validated, so this never changes an existing one.
    fn claim(&mut self, kind: MapKind) {
        if !self
            .kind
            .as_ref()
            .is_some_and(|slot| slot.value == Some(kind))
        {
            self.kind = Some(Slot::dirty(Some(kind)));
        }
    }

    fn mark_clean(&mut self) {
        self.cleared = false;
        if let Some(kind) = &mut self.kind {
            kind.dirty = false;
        }
        self.lww.values_mut().for_each(|slot| slot.dirty = false);
        self.or_records
            .values_mut()
            .for_each(|slot| slot.dirty = false);
        self.tombstones
            .values_mut()
            .for_each(|slot| slot.dirty = false);
    }
}

/// Where a batch's base rows come from: the overlay a background checkpoint is writing (its
/// rows are newer than redb's), then map-scoped redb tables in one read transaction, begun
/// only when a row is missing from both overlays (hot keys never need it).
pub(super) struct Base {
    db: Arc<Database>,
    frozen: Option<Arc<Overlay>>,
    tables: Option<BaseTables>,
}

/// The map-scoped redb tables, open in one read transaction.
struct BaseTables {
    kinds: ReadOnlyTable<&'static str, u8>,
    lww: ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    or_records: ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    or_tombstones: ReadOnlyTable<(&'static str, &'static str), ()>,
}

impl Base {
    /// Base rows from `db` behind `frozen` (the overlay being checkpointed, if any). Must not
    /// outlive the end of that checkpoint, which would leave it stale. Until then, whenever
    /// its redb snapshot is taken, it agrees with `frozen` on every row `frozen` lacks.
    pub(super) fn new(db: &Arc<Database>, frozen: Option<Arc<Overlay>>) -> Self {
        Self {
            db: Arc::clone(db),
            frozen,
            tables: None,
        }
    }

    /// The redb tables, opened on first use.
    fn tables(&mut self) -> Result<&BaseTables, StoreError> {
        match &mut self.tables {
            Some(tables) => Ok(tables),
            empty => {
                let txn = self
                    .db
                    .begin_read()
                    .map_err(backend("begin a read transaction"))?;
                let open_error = backend("open a table for reading");
                Ok(empty.insert(BaseTables {
                    kinds: txn.open_table(KINDS).map_err(open_error.clone())?,
                    lww: txn.open_table(LWW).map_err(open_error.clone())?,
                    or_records: txn.open_table(OR_RECORDS).map_err(open_error.clone())?,
                    or_tombstones: txn.open_table(OR_TOMBSTONES).map_err(open_error)?,
                }))
            }
        }
    }

    /// What the frozen overlay says about a map: its state, or `None` to ask redb.
    fn frozen(&self, map: &str) -> Option<&MapState> {
        self.frozen.as_ref().and_then(|frozen| frozen.maps.get(map))
    }

    fn kind(&mut self, map: &str) -> Result<Option<MapKind>, StoreError> {
        if let Some(slot) = self.frozen(map).and_then(|state| state.kind.as_ref()) {
            return Ok(slot.value);
        }
        self.tables()?
            .kinds
            .get(map)
            .map_err(backend("read a map kind"))?
            .map(|code| kind_from_code(map, code.value()))
            .transpose()
    }

    fn lww(&mut self, map: &str, key: &str) -> Result<Option<EncodedLww>, StoreError> {
        if let Some(state) = self.frozen(map) {
            if let Some(slot) = state.lww.get(key) {
                return Ok(slot.value.clone());
            }
            if state.cleared {
                return Ok(None);
            }
        }
        self.tables()?
            .lww
            .get((map, key))
            .map_err(backend("read an LWW record"))?
            .map(|bytes| EncodedLww::from_stored(bytes.value(), format_args!("{map}/{key}")))
            .transpose()
    }

    fn or_records(&mut self, map: &str, key: &str) -> Result<Vec<OrMapRecord>, StoreError> {
        if let Some(state) = self.frozen(map) {
            if let Some(slot) = state.or_records.get(key) {
                return Ok(slot.value.clone());
            }
            if state.cleared {
                return Ok(Vec::new());
            }
        }
        Ok(self
            .tables()?
            .or_records
            .get((map, key))
            .map_err(backend("read OR records"))?
            .map(|bytes| decode("OR records", format_args!("{map}/{key}"), bytes.value()))
            .transpose()?
            .unwrap_or_default())
    }

    fn tombstoned(&mut self, map: &str, tag: &str) -> Result<bool, StoreError> {
        if let Some(state) = self.frozen(map) {
            if let Some(slot) = state.tombstones.get(tag) {
                return Ok(slot.value);
            }
            if state.cleared {
                return Ok(false);
            }
        }
        Ok(self
            .tables()?
            .or_tombstones
            .get((map, tag))
            .map_err(backend("read an OR tombstone"))?
            .is_some())
    }
}

/// Everything changed since the last checkpoint, plus clean rows cached from redb.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    maps: HashMap<String, MapState>,
    /// Map rows (slots) held in `maps`.
    map_rows: usize,
    counters: HashMap<String, CounterSnapshot>,
    /// The highest token put per lock; the checkpoint keeps the stored one if higher.
    fencing: HashMap<String, u64>,
    meta: HashMap<String, Vec<u8>>,
    /// Journal entries appended (and not trimmed) since the last checkpoint.
    journal: BTreeMap<u64, Arc<[u8]>>,
    /// The highest `TrimJournal` bound since the last checkpoint (0: none).
    trim_below: u64,
    /// The highest journal sequence appended since the last checkpoint (0: none).
    journal_head: u64,
    /// Some batch was applied since the last checkpoint.
    dirty: bool,
}

impl Overlay {
    /// A metadata value put since the last checkpoint.
    pub(super) fn meta(&self, key: &str) -> Option<&[u8]> {
        self.meta.get(key).map(Vec::as_slice)
    }

    /// The journal as far as redb may not hold it yet: the lowest entry appended since the
    /// last checkpoint, and the highest trim bound not yet applied to redb (0: none).
    pub(super) fn unwritten_journal(&self) -> (Option<u64>, u64) {
        (self.journal.keys().next().copied(), self.trim_below)
    }

    /// Whether a checkpoint has anything to write.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether `map` has anything redb does not hold yet: a changed row or kind, or a clear.
    pub(super) fn has_unwritten(&self, map: &str) -> bool {
        self.maps.get(map).is_some_and(|state| {
            state.cleared
                || state.kind.as_ref().is_some_and(|kind| kind.dirty)
                || state.lww.values().any(|slot| slot.dirty)
                || state.or_records.values().any(|slot| slot.dirty)
                || state.tombstones.values().any(|slot| slot.dirty)
        })
    }

    /// Rows held in memory, dirty or clean: what the row bound limits. Journal entries do not
    /// count: every one is also in the log since the last checkpoint, so the log's size bound
    /// already bounds them. Counting them made a server taking 100k writes/s checkpoint on
    /// the row bound several times a second, rewriting the same map rows each time.
    pub(super) fn rows(&self) -> usize {
        self.map_rows + self.counters.len() + self.fencing.len() + self.meta.len()
    }

    /// Loads from `base` every row `batch` may consult that the overlay does not know yet.
    pub(super) fn prefetch(
        &mut self,
        batch: &WriteBatch,
        base: &mut Base,
    ) -> Result<(), StoreError> {
        for mutation in batch.mutations() {
            if let Some((map, _)) = mutation.kind_effect() {
                self.load_kind(map, base)?;
            }
            match mutation {
                Mutation::PutLww { map, key, .. } => self.load_lww(map, key, base)?,
                Mutation::DeleteLww { map, key } | Mutation::ForgetLww { map, key, .. } => {
                    self.load_lww(map, key, base)?;
                }
                Mutation::PutOrKey { map, key, records } => {
                    self.load_or_records(map, key, base)?;
                    let stored = self
                        .maps
                        .get(map.as_str())
                        .and_then(|state| state.or_records.get(key.as_str()))
                        .map(|slot| slot.value.iter().map(|r| r.tag.clone()))
                        .into_iter()
                        .flatten();
                    let tags: HashSet<String> = stored
                        .chain(records.iter().map(|r| r.tag.clone()))
                        .collect();
                    for tag in &tags {
                        self.load_tombstone(map, tag, base)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The kind of `map` as of every applied batch; call after [`Self::prefetch`].
    pub(super) fn kind(&self, map: &str) -> Option<MapKind> {
        self.maps
            .get(map)
            .and_then(|state| state.kind.as_ref())
            .and_then(|slot| slot.value)
    }

    /// Merges a prefetched, kind-checked batch into the overlay.
    pub(super) fn apply(&mut self, batch: WriteBatch) {
        for mutation in Vec::from(batch) {
            self.apply_one(mutation);
        }
        self.dirty = true;
    }

    /// Writes every dirty row into `tables` (the checkpoint's transaction), and the journal
    /// entries into `journal_files` (the caller syncs them before committing).
    pub(super) fn write_to(
        &self,
        tables: &mut WriteTables<'_>,
        journal_files: &mut BlockFiles,
    ) -> Result<(), StoreError> {
        let mut scratch = Vec::new();
        for (map, state) in &self.maps {
            write_map(tables, map, state, &mut scratch)?;
        }
        for (name, state) in &self.counters {
            let bytes = encode("counter", state)?;
            tables
                .counters
                .insert(name.as_str(), bytes.as_slice())
                .map_err(backend("write a counter"))?;
        }
        for (lock, token) in &self.fencing {
            tables.raise_fencing_token(lock, *token)?;
        }
        for (key, value) in &self.meta {
            tables
                .meta
                .insert(key.as_str(), value.as_slice())
                .map_err(backend("write metadata"))?;
        }
        if self.trim_below > 0 {
            journal_blocks::trim(&mut tables.journal_blocks, journal_files, self.trim_below)?;
        }
        journal_blocks::write(
            &mut tables.journal_blocks,
            journal_files,
            self.journal
                .iter()
                .map(|(sequence, entry)| (*sequence, &**entry)),
        )?;
        tables.raise_journal_head(self.journal_head)
    }

    /// After a checkpoint committed: every row is now in redb. Map rows stay as a cache
    /// unless they exceed `keep_rows`.
    pub(super) fn mark_clean(&mut self, keep_rows: usize) {
        if self.map_rows > keep_rows {
            self.maps.clear();
            self.map_rows = 0;
        } else {
            self.maps.values_mut().for_each(MapState::mark_clean);
        }
        self.counters.clear();
        self.fencing.clear();
        self.meta.clear();
        self.journal.clear();
        self.trim_below = 0;
        self.journal_head = 0;
        self.dirty = false;
    }

    /// Drops the clean cache when the overlay holds more than `keep_rows` map rows, keeping
    /// every dirty row: only changed rows may force a checkpoint. (Rows loaded for batches
    /// that were then rejected dirty nothing, so only this sheds them.)
    pub(super) fn trim_cache(&mut self, keep_rows: usize) {
        if self.map_rows <= keep_rows {
            return;
        }
        if !self.dirty {
            self.maps.clear();
            self.map_rows = 0;
            return;
        }
        self.map_rows = 0;
        for state in self.maps.values_mut() {
            state.lww.retain(|_, slot| slot.dirty);
            state.or_records.retain(|_, slot| slot.dirty);
            state.tombstones.retain(|_, slot| slot.dirty);
            self.map_rows += state.rows();
        }
    }

    /// Takes the rows of `older` (an overlay a checkpoint just wrote) that this one lacks as
    /// clean cache, so hot keys need no redb read after a background checkpoint: as many as
    /// fit under `keep_rows`. The two mostly share their keys, so their union usually fits
    /// even when their sum would not.
    pub(super) fn absorb(&mut self, older: Overlay, keep_rows: usize) {
        for (map, mut older_state) in older.maps {
            let room = keep_rows.saturating_sub(self.map_rows);
            if room == 0 {
                return;
            }
            older_state.mark_clean();
            match self.maps.entry(map) {
                Entry::Vacant(vacant) if older_state.rows() <= room => {
                    self.map_rows += older_state.rows();
                    vacant.insert(older_state);
                }
                Entry::Vacant(vacant) => {
                    let mut state = MapState {
                        kind: older_state.kind.take(),
                        ..MapState::default()
                    };
                    self.map_rows += absorb_rows(&mut state, older_state, room);
                    vacant.insert(state);
                }
                // A clear since then made the older rows stale.
                Entry::Occupied(occupied) if occupied.get().cleared => {}
                Entry::Occupied(mut occupied) => {
                    let state = occupied.get_mut();
                    if state.kind.is_none() {
                        state.kind = older_state.kind.take();
                    }
                    self.map_rows += absorb_rows(state, older_state, room);
                }
            }
        }
    }

    fn load_kind(&mut self, map: &str, base: &mut Base) -> Result<(), StoreError> {
        if self.maps.get(map).is_some_and(|state| state.kind.is_some()) {
            return Ok(());
        }
        let kind = base.kind(map)?;
        self.state(map).kind = Some(Slot::clean(kind));
        Ok(())
    }

    fn load_lww(&mut self, map: &str, key: &str, base: &mut Base) -> Result<(), StoreError> {
        self.load_row(map, key, |state| &mut state.lww, || base.lww(map, key))
    }

    fn load_or_records(&mut self, map: &str, key: &str, base: &mut Base) -> Result<(), StoreError> {
        self.load_row(
            map,
            key,
            |state| &mut state.or_records,
            || base.or_records(map, key),
        )
    }

    fn load_tombstone(&mut self, map: &str, tag: &str, base: &mut Base) -> Result<(), StoreError> {
        self.load_row(
            map,
            tag,
            |state| &mut state.tombstones,
            || base.tombstoned(map, tag),
        )
    }

    /// Caches one map row read by `read` as clean, unless the overlay already knows it or
    /// the map was cleared (then redb's rows of it are stale and never read).
    fn load_row<T>(
        &mut self,
        map: &str,
        key: &str,
        rows: fn(&mut MapState) -> &mut HashMap<RowKey, Slot<T>>,
        read: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<(), StoreError> {
        if let Some(state) = self.maps.get_mut(map)
            && (state.cleared || rows(state).contains_key(key))
        {
            return Ok(());
        }
        let value = read()?;
        rows(self.state(map)).insert(RowKey::from(key), Slot::clean(value));
        self.map_rows += 1;
        Ok(())
    }

    fn state(&mut self, map: &str) -> &mut MapState {
        self.maps.entry(map.to_owned()).or_default()
    }

    fn apply_one(&mut self, mutation: Mutation) {
        match mutation {
            Mutation::SetMapKind { map, kind } => self.claim(&map, kind),
            Mutation::PutLww { map, key, record } => self.put_lww(map, key, record),
            Mutation::DeleteLww { map, key } => {
                if self.lww(&map, &key).is_some_and(EncodedLww::is_tombstone) {
                    self.set_lww(&map, key, None);
                }
            }
            Mutation::ForgetLww {
                map,
                key,
                timestamp,
            } => {
                if self
                    .lww(&map, &key)
                    .is_some_and(|row| row.has_timestamp(&timestamp))
                {
                    self.set_lww(&map, key, None);
                }
            }
            Mutation::PutOrKey { map, key, records } => {
                if !records.is_empty() {
                    self.claim(&map, MapKind::Or);
                }
                self.merge_or_key(&map, key, &records);
            }
            Mutation::AddOrTombstones { map, tags } => {
                self.claim(&map, MapKind::Or);
                self.set_tombstones(&map, tags, true);
            }
            Mutation::RemoveOrTombstones { map, tags } => self.set_tombstones(&map, tags, false),
            Mutation::PutCounter { name, state } => {
                self.counters.insert(name, state);
            }
            Mutation::PutFencingToken { lock, token } => {
                let stored = self.fencing.entry(lock).or_default();
                *stored = (*stored).max(token);
            }
            Mutation::PutMeta { key, value } => {
                self.meta.insert(key, value);
            }
            Mutation::ClearMap { map } => {
                if let Some(old) = self.maps.insert(map, MapState::cleared()) {
                    self.map_rows -= old.rows();
                }
            }
            Mutation::AppendJournal { sequence, event } => {
                self.journal.insert(sequence, event);
                self.journal_head = self.journal_head.max(sequence);
            }
            Mutation::TrimJournal { below } => {
                // Every batch carries the trim once the journal is full, and it rarely reaches
                // an entry still here: splitting anyway rebuilt the tree's left edge each time.
                if self
                    .journal
                    .first_key_value()
                    .is_some_and(|(first, _)| *first < below)
                {
                    self.journal = self.journal.split_off(&below);
                }
                self.trim_below = self.trim_below.max(below);
            }
        }
    }

    /// Records `map`'s kind; kinds were validated, so this never changes an existing one.
    fn claim(&mut self, map: &str, kind: MapKind) {
        self.state(map).claim(kind);
    }

    /// The hottest mutation: one lookup of the map and one of the key, with the mutation's key
    /// and encoded row moved in (not copied). The stored row is replaced only by a strictly
    /// newer one, as [`crate::store::lww_replaces`] rules.
    fn put_lww(&mut self, map: String, key: SmolStr, row: EncodedLww) {
        let state = self.maps.entry(map).or_default();
        state.claim(MapKind::Lww);
        match state.lww.entry(key) {
            Entry::Occupied(mut occupied) => {
                let replaces = occupied
                    .get()
                    .value
                    .as_ref()
                    .is_none_or(|stored| row.is_newer_than(stored));
                if replaces {
                    occupied.insert(Slot::dirty(Some(row)));
                }
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Slot::dirty(Some(row)));
                self.map_rows += 1;
            }
        }
    }

    fn lww(&self, map: &str, key: &str) -> Option<&EncodedLww> {
        self.maps
            .get(map)
            .and_then(|state| state.lww.get(key))
            .and_then(|slot| slot.value.as_ref())
    }

    fn set_lww(&mut self, map: &str, key: String, record: Option<EncodedLww>) {
        let state = self.state(map);
        if state
            .lww
            .insert(RowKey::from(key), Slot::dirty(record))
            .is_none()
        {
            self.map_rows += 1;
        }
    }

    fn merge_or_key(&mut self, map: &str, key: String, records: &[OrMapRecord]) {
        let state = self.state(map);
        let stored = state
            .or_records
            .get(key.as_str())
            .map(|slot| slot.value.clone())
            .unwrap_or_default();
        let tombstones = &state.tombstones;
        // A tag the prefetch did not load cannot be tombstoned in redb (it was neither
        // stored nor incoming then); keeping the record is the safe side regardless.
        let merged = crate::store::merge_or_records(stored, records, |tag| {
            tombstones.get(tag).is_some_and(|slot| slot.value)
        });
        if state
            .or_records
            .insert(RowKey::from(key), Slot::dirty(merged))
            .is_none()
        {
            self.map_rows += 1;
        }
    }

    fn set_tombstones(&mut self, map: &str, tags: Vec<String>, present: bool) {
        let state = self.state(map);
        let mut added = 0;
        for tag in tags {
            if state
                .tombstones
                .insert(RowKey::from(tag), Slot::dirty(present))
                .is_none()
            {
                added += 1;
            }
        }
        self.map_rows += added;
    }
}

/// Adds up to `room` of `older`'s rows that `state` lacks, LWW rows first; returns how many.
fn absorb_rows(state: &mut MapState, older: MapState, room: usize) -> usize {
    let lww = absorb_table(&mut state.lww, older.lww, room);
    let or_records = absorb_table(&mut state.or_records, older.or_records, room - lww);
    lww + or_records
        + absorb_table(
            &mut state.tombstones,
            older.tombstones,
            room - lww - or_records,
        )
}

/// Adds up to `room` rows of `older` that `rows` lacks; returns how many.
fn absorb_table<T>(
    rows: &mut HashMap<RowKey, Slot<T>>,
    older: HashMap<RowKey, Slot<T>>,
    room: usize,
) -> usize {
    let mut added = 0;
    for (key, slot) in older {
        if added == room {
            break;
        }
        if let Entry::Vacant(vacant) = rows.entry(key) {
            vacant.insert(slot);
            added += 1;
        }
    }
    added
}

/// Writes one map's dirty state: the wipe a `ClearMap` asked for, then its kind and rows.
/// LWW rows are written as they are; OR rows are encoded into `scratch`, one buffer for the
/// whole checkpoint.
fn write_map(
    tables: &mut WriteTables<'_>,
    map: &str,
    state: &MapState,
    scratch: &mut Vec<u8>,
) -> Result<(), StoreError> {
    if state.cleared {
        tables.clear_map(map)?;
    }
    if let Some(Slot {
        value: Some(kind),
        dirty: true,
    }) = state.kind
    {
        tables
            .kinds
            .insert(map, kind_code(kind))
            .map_err(backend("write a map kind"))?;
    }
    for (key, slot) in state.lww.iter().filter(|(_, slot)| slot.dirty) {
        match &slot.value {
            Some(row) => {
                tables
                    .lww
                    .insert((map, key.as_str()), row.bytes())
                    .map_err(backend("write an LWW record"))?;
            }
            None => {
                tables
                    .lww
                    .remove((map, key.as_str()))
                    .map_err(backend("delete an LWW record"))?;
            }
        }
    }
    for (key, slot) in state.or_records.iter().filter(|(_, slot)| slot.dirty) {
        if slot.value.is_empty() {
            tables
                .or_records
                .remove((map, key.as_str()))
                .map_err(backend("delete an OR key"))?;
        } else {
            encode_into(scratch, "OR records", &slot.value)?;
            tables
                .or_records
                .insert((map, key.as_str()), scratch.as_slice())
                .map_err(backend("write OR records"))?;
        }
    }
    for (tag, slot) in state.tombstones.iter().filter(|(_, slot)| slot.dirty) {
        if slot.value {
            tables
                .or_tombstones
                .insert((map, tag.as_str()), ())
                .map_err(backend("write an OR tombstone"))?;
        } else {
            tables
                .or_tombstones
                .remove((map, tag.as_str()))
                .map_err(backend("delete an OR tombstone"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::LwwRecord;
    use serde_json::json;

    fn put(key: &str) -> Mutation {
        put_at(key, None, Timestamp::new(1, 0, "n"))
    }

    fn put_at(key: &str, value: Option<serde_json::Value>, timestamp: Timestamp) -> Mutation {
        let record = LwwRecord {
            value: value.map(Into::into),
            timestamp,
            ttl_ms: None,
        };
        Mutation::put_lww("m", key, &record).unwrap()
    }

    fn empty_base(dir: &tempfile::TempDir) -> Base {
        drop(super::super::RedbStore::open(dir.path()).unwrap());
        let db = Database::create(dir.path().join(super::super::FILE_NAME)).unwrap();
        Base::new(&Arc::new(db), None)
    }

    fn apply(overlay: &mut Overlay, base: &mut Base, mutations: Vec<Mutation>) {
        let batch = WriteBatch::from(mutations);
        overlay.prefetch(&batch, base).unwrap();
        overlay.apply(batch);
    }

    fn stored(overlay: &Overlay, key: &str) -> Option<LwwRecord> {
        overlay.lww("m", key).map(|row| row.decode().unwrap())
    }

    #[test]
    fn an_encoded_row_is_replaced_only_by_a_strictly_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = empty_base(&dir);
        let mut overlay = Overlay::default();
        let at = |millis, counter, node: &str| Timestamp::new(millis, counter, node);
        // Each put against a row holding 5:1:"nb": later millis, counter and node id win;
        // an equal or older timestamp leaves the row alone.
        for (timestamp, wins) in [
            (at(5, 1, "nb"), false),
            (at(4, 9, "nz"), false),
            (at(5, 0, "nz"), false),
            (at(5, 1, "na"), false),
            (at(5, 1, "nba"), true),
            (at(5, 2, "a"), true),
            (at(6, 0, ""), true),
        ] {
            apply(
                &mut overlay,
                &mut base,
                vec![Mutation::ClearMap { map: "m".into() }],
            );
            apply(
                &mut overlay,
                &mut base,
                vec![put_at("k", Some(json!("old")), at(5, 1, "nb"))],
            );
            apply(
                &mut overlay,
                &mut base,
                vec![put_at("k", Some(json!("new")), timestamp.clone())],
            );
            let expected = if wins {
                (json!("new"), timestamp)
            } else {
                (json!("old"), at(5, 1, "nb"))
            };
            let record = stored(&overlay, "k").unwrap();
            assert_eq!(
                (record.value.unwrap().into_value(), record.timestamp),
                expected
            );
        }
    }

    #[test]
    fn inline_and_long_keys_are_one_row_each_and_merge_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = empty_base(&dir);
        let mut overlay = Overlay::default();
        // 23 bytes is the longest key held inline; the others live behind a pointer.
        let keys = ["k", &"i".repeat(23), &"l".repeat(24), &"x".repeat(300)];
        for (round, millis) in [(0, 5), (1, 7), (2, 6)] {
            let puts = keys
                .iter()
                .map(|key| put_at(key, Some(json!(round)), Timestamp::new(millis, 0, "n")))
                .collect();
            apply(&mut overlay, &mut base, puts);
        }
        assert_eq!(overlay.map_rows, keys.len(), "each key is one row");
        for key in keys {
            let record = stored(&overlay, key).unwrap();
            // Round 1 (millis 7) is newest; round 2's older write left it alone.
            assert_eq!(record.value.unwrap().into_value(), json!(1), "{key}");
        }
    }

    #[test]
    fn deletes_and_forgets_read_the_encoded_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = empty_base(&dir);
        let mut overlay = Overlay::default();
        apply(
            &mut overlay,
            &mut base,
            vec![
                put_at("live", Some(json!(1)), Timestamp::new(1, 0, "n")),
                put_at("dead", None, Timestamp::new(1, 0, "n")),
                put_at("null", Some(json!(null)), Timestamp::new(1, 0, "n")),
                put_at("mine", Some(json!(2)), Timestamp::new(3, 0, "n")),
            ],
        );
        let delete = |key: &str| Mutation::DeleteLww {
            map: "m".into(),
            key: key.into(),
        };
        let forget = |key: &str, millis| Mutation::ForgetLww {
            map: "m".into(),
            key: key.into(),
            timestamp: Timestamp::new(millis, 0, "n"),
        };
        apply(
            &mut overlay,
            &mut base,
            vec![
                delete("live"),
                delete("dead"),
                delete("null"),
                forget("mine", 2),
                forget("live", 1),
            ],
        );
        assert_eq!(stored(&overlay, "dead"), None);
        assert_eq!(
            stored(&overlay, "null"),
            None,
            "a null value is stored as a tombstone"
        );
        assert_eq!(
            stored(&overlay, "live"),
            None,
            "forgotten by its exact timestamp"
        );
        assert_eq!(
            stored(&overlay, "mine").unwrap().value,
            Some(json!(2)).map(Into::into)
        );
    }

    #[test]
    fn an_absorbed_overlay_fills_the_cache_up_to_the_bound_without_losing_newer_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = empty_base(&dir);
        let mut older = Overlay::default();
        let keys: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        apply(&mut older, &mut base, keys.iter().map(|k| put(k)).collect());
        let mut newer = Overlay::default();
        let newer_put = |key: &str| put_at(key, Some(json!("new")), Timestamp::new(2, 0, "n"));
        apply(
            &mut newer,
            &mut base,
            (0..5).map(|i| newer_put(&keys[i])).collect(),
        );

        newer.absorb(older, 12);
        assert_eq!(newer.rows(), 12, "7 of the 15 rows it lacked fit");
        for key in &keys[..5] {
            assert_eq!(
                stored(&newer, key).unwrap().value,
                Some(json!("new")).map(Into::into)
            );
        }
        assert_eq!(
            keys.iter().filter(|k| newer.lww("m", k).is_some()).count(),
            12
        );
        newer.trim_cache(10);
        assert_eq!(
            newer.rows(),
            5,
            "over the bound, only the changed rows stay"
        );
    }

    #[test]
    fn a_cache_of_rejected_batches_is_trimmed_but_dirty_rows_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = empty_base(&dir);

        let mut overlay = Overlay::default();
        let batch = WriteBatch::from((0..20).map(|i| put(&i.to_string())).collect::<Vec<_>>());
        overlay.prefetch(&batch, &mut base).unwrap();
        assert_eq!((overlay.rows(), overlay.is_dirty()), (20, false));
        overlay.trim_cache(30);
        assert_eq!(overlay.rows(), 20);
        overlay.trim_cache(10);
        assert_eq!(overlay.rows(), 0);

        overlay.prefetch(&batch, &mut base).unwrap();
        overlay.apply(batch);
        overlay.trim_cache(10);
        assert_eq!((overlay.rows(), overlay.is_dirty()), (20, true));
        assert_eq!(overlay.kind("m"), Some(MapKind::Lww));

        // Over the bound with both: the clean rows go, the dirty ones stay.
        let more = WriteBatch::from((20..35).map(|i| put(&i.to_string())).collect::<Vec<_>>());
        overlay.prefetch(&more, &mut base).unwrap();
        assert_eq!(overlay.rows(), 35);
        overlay.trim_cache(30);
        assert_eq!(overlay.rows(), 20);
        assert!(overlay.has_unwritten("m"));
        assert!(stored(&overlay, "7").is_some(), "a dirty row survives");
    }
}
