//! The event journal (CDC, PROTOCOL.md §3.11): every applied map change gets a strictly
//! increasing sequence number and is kept, streamed to `JOURNAL_SUBSCRIBE`rs and served to
//! `JOURNAL_READ`.
//!
//! - The write path records [`Change`]s in its `MapChanges` (one call per applied change);
//!   [`Journal::append`] numbers them, adds `Mutation::AppendJournal` to the same store batch
//!   as the data they describe, keeps them in a bounded in-memory ring
//!   (`Limits::journal_capacity`) and pushes them to matching subscribers, in order. Each
//!   entry is encoded once, before the journal lock, into one buffer the ring and the store
//!   batch share.
//! - Sequences continue after a restart from the store's `last_journal_sequence`, which never
//!   goes back (not even when every entry was trimmed).
//! - Reads older than the ring come from the store; the store keeps the newest
//!   `Limits::journal_retention` entries (0 keeps everything) and drops older ones.
//! - `Limits::journal` ([`JournalMode`]) can keep the journal in the ring only (nothing
//!   reaches the store but the sequence reservations) or turn it off (journal requests are
//!   refused, nothing is numbered).
//! - Types: `DELETE` for tombstones and OR removes, `PUT` when the key had no live value,
//!   else `UPDATE`; `previousValue` is the live value before the change (an OR key's values as
//!   an array). Known gap: an OR sync push that removes records of a key other than the pushed
//!   one reports that key's `DELETE` without `previousValue`.
//! - Events of a map are visible only with `READ` on it (field restrictions apply to `value`
//!   and `previousValue`). `JOURNAL_READ` applies its map filter before its limit, and
//!   `hasMore` is exact. Live pushes are at most once: a subscriber whose outbound queue is
//!   full misses events and recovers them with `JOURNAL_READ`.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::auth::Principal;
use crate::hlc::Timestamp;
use crate::protocol::codec::msgpack_writer::{MsgpackWriter, WriteError, with_scratch};
use crate::protocol::{
    JournalEntry, JournalEvent, JournalEventType, JournalRead, JournalReadResponse,
    JournalSubscribe, JournalUnsubscribe, Message,
};
use crate::record::LwwRecord;
use crate::security::{Action, Permissions};
use crate::store::{Mutation, Store, StoreError, WriteBatch};
use crate::user_value::UserValue;

use super::Shared;
use super::config::{JournalMode, Limits};
use super::connections::{ConnHandle, ConnId, SendError};
use super::dispatch::Flow;
use super::session::{Session, send_to};

/// `JOURNAL_READ` limit when the client gives none.
pub const DEFAULT_READ_LIMIT: usize = 100;
/// Most events one `JOURNAL_READ` returns.
pub const MAX_READ_LIMIT: usize = 1_000;
/// Most journal subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 64;
/// Entries fetched from the store per round trip while scanning.
const STORE_CHUNK: usize = 512;

/// One applied change, before it has a sequence number: the owned form kept when numbering
/// has to wait for a reservation (see [`ChangeRef`] for the borrowed form the write path uses).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub map_name: String,
    pub key: String,
    pub event_type: JournalEventType,
    pub value: Option<UserValue>,
    pub previous_value: Option<UserValue>,
    /// The change's HLC timestamp; `None` takes a fresh server timestamp (OR removes carry
    /// no timestamp of their own).
    pub timestamp: Option<Timestamp>,
}

impl Change {
    /// An applied LWW merge of `record` over `previous`.
    pub fn lww(
        map_name: &str,
        key: &str,
        record: &LwwRecord,
        previous: Option<&LwwRecord>,
    ) -> Self {
        ChangeRef::lww(map_name, key, record, previous).to_owned()
    }

    /// An OR key whose live values went from `before` to `after`; `removal` marks a remove
    /// (`DELETE` even if other values remain).
    pub fn or(
        map_name: &str,
        key: &str,
        before: Vec<Value>,
        after: Vec<Value>,
        removal: bool,
        timestamp: Option<Timestamp>,
    ) -> Self {
        let as_value = |values: Vec<Value>| {
            (!values.is_empty()).then(|| UserValue::from(Value::Array(values)))
        };
        let previous_value = as_value(before);
        let value = as_value(after);
        Self {
            map_name: map_name.to_owned(),
            key: key.to_owned(),
            event_type: classify(previous_value.is_some(), removal || value.is_none()),
            value,
            previous_value,
            timestamp,
        }
    }

    /// The borrowed form, for [`Journal::number`].
    pub fn as_ref(&self) -> ChangeRef<'_> {
        ChangeRef {
            map_name: &self.map_name,
            key: &self.key,
            event_type: self.event_type,
            value: self.value.as_ref(),
            previous_value: self.previous_value.as_ref(),
            timestamp: self.timestamp.as_ref(),
        }
    }
}

/// One applied change, borrowed from the records it describes: the write path numbers it
/// while it still holds the map's lock, without copying values it only has to encode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeRef<'a> {
    pub map_name: &'a str,
    pub key: &'a str,
    pub event_type: JournalEventType,
    pub value: Option<&'a UserValue>,
    pub previous_value: Option<&'a UserValue>,
    /// `None` takes a fresh server timestamp.
    pub timestamp: Option<&'a Timestamp>,
}

impl<'a> ChangeRef<'a> {
    /// An applied LWW merge of `record` over `previous`.
    pub fn lww(
        map_name: &'a str,
        key: &'a str,
        record: &'a LwwRecord,
        previous: Option<&'a LwwRecord>,
    ) -> Self {
        let previous_value = previous.and_then(|p| p.value.as_ref());
        Self {
            map_name,
            key,
            event_type: classify(previous_value.is_some(), record.value.is_none()),
            value: record.value.as_ref(),
            previous_value,
            timestamp: Some(&record.timestamp),
        }
    }

    /// The owned form, kept until numbering can go on.
    pub fn to_owned(self) -> Change {
        Change {
            map_name: self.map_name.to_owned(),
            key: self.key.to_owned(),
            event_type: self.event_type,
            value: self.value.cloned(),
            previous_value: self.previous_value.cloned(),
            timestamp: self.timestamp.cloned(),
        }
    }
}

/// DELETE for removals, PUT when nothing was live before, else UPDATE.
fn classify(had_live_value: bool, deleted: bool) -> JournalEventType {
    if deleted {
        JournalEventType::Delete
    } else if had_live_value {
        JournalEventType::Update
    } else {
        JournalEventType::Put
    }
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq)]
struct Filter {
    map_name: Option<String>,
    types: Option<Vec<JournalEventType>>,
}

impl Filter {
    fn matches(&self, entry: &JournalEntry) -> bool {
        self.map_name.as_ref().is_none_or(|m| *m == entry.map_name)
            && self
                .types
                .as_ref()
                .is_none_or(|t| t.contains(&entry.event_type))
    }
}

/// One live journal subscription.
#[derive(Clone)]
struct Subscriber {
    conn: ConnHandle,
    principal: Principal,
    filter: Filter,
}

/// A numbered entry, kept encoded (as stored): the ring shares its one buffer with the store
/// batch, and only readers and subscribers pay for decoding.
struct Numbered {
    sequence: u64,
    encoded: Arc<[u8]>,
}

impl Numbered {
    fn entry(&self) -> Option<JournalEntry> {
        decode_entry(self.sequence, &self.encoded)
    }
}

/// Encodes a numbered change for the store and the ring: a MessagePack array of
/// [`JournalEntry`]'s fields in declaration order, `nil` for an absent value and the timestamp
/// as `[millis, counter, nodeId]`. No field names: they were a fifth of an entry's bytes, paid
/// again in the write-ahead log, the store and the ring. `rmp_serde` reads the array back as
/// the struct, as it still reads entries stored as named maps (and JSON) before.
pub fn encode_entry(
    sequence: u64,
    change: &ChangeRef<'_>,
    timestamp: &Timestamp,
    node_id: &str,
) -> Result<Vec<u8>, WriteError> {
    let mut out = MsgpackWriter::with_capacity(256);
    write_entry(&mut out, sequence, change, timestamp, node_id)?;
    Ok(out.into_vec())
}

/// [`encode_entry`] appending to `out`.
fn write_entry(
    out: &mut MsgpackWriter,
    sequence: u64,
    change: &ChangeRef<'_>,
    timestamp: &Timestamp,
    node_id: &str,
) -> Result<(), WriteError> {
    write_head(out, sequence);
    write_tail(out, change, timestamp, node_id)
}

/// A stored entry's MessagePack fixarray header: `JournalEntry`'s fields without the trailing
/// `metadata` (never set by the server; absent, it decodes as `None`).
const ENTRY_ARRAY: [u8; 1] = [0x90 | 8];
/// The fixarray header of a timestamp, `[millis, counter, nodeId]`.
const TIMESTAMP_ARRAY: [u8; 1] = [0x90 | 3];

/// The entry's head, the only part that depends on the sequence: the array header and the
/// sequence (the first field).
fn write_head(out: &mut MsgpackWriter, sequence: u64) {
    out.raw(&ENTRY_ARRAY);
    out.decimal_str(sequence);
}

/// Every field after the sequence.
fn write_tail(
    out: &mut MsgpackWriter,
    change: &ChangeRef<'_>,
    timestamp: &Timestamp,
    node_id: &str,
) -> Result<(), WriteError> {
    out.str(event_type_name(change.event_type))?;
    out.str(change.map_name)?;
    out.str(change.key)?;
    for value in [change.value, change.previous_value] {
        match value {
            Some(value) => value.write_msgpack(out)?,
            None => out.nil(),
        }
    }
    out.raw(&TIMESTAMP_ARRAY);
    out.uint(timestamp.millis);
    out.uint(u64::from(timestamp.counter));
    out.str(&timestamp.node_id)?;
    out.str(node_id)
}

/// An entry encoded and copied out before the journal lock, for a guessed sequence: under the
/// lock only its head is corrected, so writers of other maps do not wait for a value walk, an
/// allocation or a copy (except when the sequence gains a digit).
struct Draft {
    bytes: Arc<[u8]>,
    guess: u64,
    /// Length of the head written for `guess`.
    head_len: usize,
}

impl Draft {
    /// Encodes `change` for sequence `guess` in `scratch` and copies it out at its size.
    fn encode(
        scratch: &mut MsgpackWriter,
        guess: u64,
        change: &ChangeRef<'_>,
        timestamp: &Timestamp,
        node_id: &str,
    ) -> Result<Self, WriteError> {
        scratch.reset_scratch();
        write_head(scratch, guess);
        let head_len = scratch.as_mut_vec().len();
        write_tail(scratch, change, timestamp, node_id)?;
        Ok(Self {
            bytes: Arc::from(scratch.as_mut_vec().as_slice()),
            guess,
            head_len,
        })
    }

    /// The entry for `sequence`: the draft itself when the guess was right, else with the
    /// head rewritten in place, or, when the sequence has a different number of digits,
    /// copied once more behind the new head (`scratch` is reused for the head).
    fn finish(self, sequence: u64, scratch: &mut MsgpackWriter) -> Arc<[u8]> {
        let Self {
            mut bytes,
            guess,
            head_len,
        } = self;
        if sequence == guess {
            return bytes;
        }
        scratch.as_mut_vec().clear();
        write_head(scratch, sequence);
        let head = scratch.as_mut_vec();
        if head.len() == head_len
            && let Some(unique) = Arc::get_mut(&mut bytes)
        {
            unique[..head_len].copy_from_slice(head);
            return bytes;
        }
        head.extend_from_slice(&bytes[head_len..]);
        Arc::from(head.as_slice())
    }
}

/// The wire name of an event type, as its serde derive spells it.
fn event_type_name(event_type: JournalEventType) -> &'static str {
    match event_type {
        JournalEventType::Put => "PUT",
        JournalEventType::Update => "UPDATE",
        JournalEventType::Delete => "DELETE",
    }
}

/// Decodes a stored or ring entry; an unreadable one is logged and skipped. Entries written
/// before MessagePack are JSON objects: their first byte, `{`, is never a MessagePack map.
fn decode_entry(sequence: u64, bytes: &[u8]) -> Option<JournalEntry> {
    let decoded = if bytes.first() == Some(&b'{') {
        serde_json::from_slice::<JournalEntry>(bytes).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice::<JournalEntry>(bytes).map_err(|e| e.to_string())
    };
    match decoded {
        Ok(entry) => Some(entry),
        Err(error) => {
            tracing::error!(sequence, %error, "skipping an unreadable journal entry");
            None
        }
    }
}

/// Store metadata key holding the highest durably reserved journal sequence.
const RESERVED_META_KEY: &str = "journal.reserved";
/// Sequences reserved by the first durable reservation (one extra commit per block).
const RESERVE_BLOCK_MIN: u64 = 1_024;
/// Each reservation reserves twice the last block, up to this many sequences. Large, because
/// a reservation waits for a durable commit behind every queued write: at 150k changes/s a
/// full block lasts about 0.4 s, far longer than a commit takes. A crash skips at most two
/// blocks; a quiet server keeps small ones.
const RESERVE_BLOCK_MAX: u64 = 65_536;

/// The journal: sequence counter, recent-event ring and subscribers.
pub struct Journal {
    mode: JournalMode,
    /// The server's node id, stamped on every entry.
    node_id: String,
    capacity: usize,
    retention: u64,
    loaded: OnceCell<()>,
    inner: Arc<Mutex<Inner>>,
    /// The sequence after the last one numbered, readable without the lock: entries are
    /// encoded for it before the lock is taken (see [`Draft`]).
    next_guess: AtomicU64,
    /// Held while a reservation commits: one at a time, so concurrent writers short of
    /// sequences wait for that one instead of each queueing a durable commit of its own.
    reserving: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    last_sequence: u64,
    /// Sequences up to this one are durably reserved: after a crash numbering resumes above
    /// it, so a sequence a subscriber has seen is never handed out again.
    reserved: u64,
    /// Size of the next reservation's block.
    block: u64,
    /// When fewer sequences than this remain reserved, the next block is reserved in the
    /// background (half the last block), so writers normally never wait for one.
    ahead: u64,
    ring: VecDeque<Numbered>,
    subscribers: HashMap<(ConnId, String), Subscriber>,
}

impl Inner {
    /// The lowest sequence the ring can answer for; anything below comes from the store (in
    /// durable mode; otherwise nothing older is kept).
    fn ring_start(&self) -> u64 {
        self.ring
            .front()
            .map_or(self.last_sequence.saturating_add(1), |n| n.sequence)
    }
}

impl Journal {
    /// A journal sized by `limits`, for the server `node_id`.
    pub fn new(limits: &Limits, node_id: &str) -> Self {
        Self {
            mode: limits.journal,
            node_id: node_id.to_owned(),
            capacity: limits.journal_capacity.max(1),
            retention: limits.journal_retention,
            loaded: OnceCell::new(),
            inner: Arc::new(Mutex::new(Inner {
                block: RESERVE_BLOCK_MIN,
                ..Inner::default()
            })),
            next_guess: AtomicU64::new(1),
            reserving: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Picks up the last sequence from the store once; a failed load is retried next time.
    async fn ensure_loaded(&self, store: &dyn Store) -> Result<(), StoreError> {
        self.loaded
            .get_or_try_init(|| async {
                let last = store.last_journal_sequence().await?;
                let reserved = store
                    .get_meta(RESERVED_META_KEY)
                    .await?
                    .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
                    .map_or(0, u64::from_be_bytes);
                let mut inner = self.lock();
                inner.last_sequence = inner.last_sequence.max(last).max(reserved);
                inner.reserved = inner.reserved.max(inner.last_sequence);
                self.next_guess
                    .store(inner.last_sequence.saturating_add(1), Ordering::Relaxed);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The highest sequence assigned so far.
    pub fn last_sequence(&self) -> u64 {
        self.lock().last_sequence
    }

    /// Loads the journal head if needed and makes sure at least `needed` more sequences are
    /// durably reserved, so [`Journal::number`] can run synchronously under a map lock.
    /// Waits only when the reservation is really short; running low starts the next
    /// reservation in the background.
    pub async fn prepare(&self, shared: &Shared, needed: u64) -> Result<(), StoreError> {
        if !self.is_on() {
            return Ok(());
        }
        self.ensure_loaded(&*shared.store).await?;
        loop {
            match self.shortfall(needed) {
                Shortfall::None => return Ok(()),
                Shortfall::Low => {
                    self.reserve_in_background(shared.store.clone());
                    return Ok(());
                }
                Shortfall::Short => {
                    let _reserving = self.reserving.lock().await;
                    // Another writer may have reserved while this one waited.
                    if self.shortfall(needed) == Shortfall::Short {
                        let target = self.next_target(needed);
                        reserve(&self.inner, &*shared.store, target).await?;
                    }
                }
            }
        }
    }

    fn shortfall(&self, needed: u64) -> Shortfall {
        let inner = self.lock();
        let available = inner.reserved.saturating_sub(inner.last_sequence);
        if available < needed {
            Shortfall::Short
        } else if available - needed < inner.ahead {
            Shortfall::Low
        } else {
            Shortfall::None
        }
    }

    /// The reservation that leaves a full block after `needed` more sequences; the next
    /// block will be twice as large (up to [`RESERVE_BLOCK_MAX`]).
    fn next_target(&self, needed: u64) -> u64 {
        let mut inner = self.lock();
        let block = inner.block;
        inner.block = block.saturating_mul(2).min(RESERVE_BLOCK_MAX);
        inner.ahead = block / 2;
        inner
            .last_sequence
            .max(inner.reserved)
            .saturating_add(needed)
            .saturating_add(block)
    }

    /// Reserves the next block on a spawned task, unless a reservation is already running.
    fn reserve_in_background(&self, store: Arc<dyn Store>) {
        let Ok(reserving) = self.reserving.clone().try_lock_owned() else {
            return;
        };
        let target = self.next_target(0);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = reserve(&inner, &*store, target).await {
                // Writers that run short try again in the foreground and report it.
                tracing::warn!(error = %e, "reserving journal sequences ahead failed");
            }
            drop(reserving);
        });
    }

    /// False in `off` mode, where no change is numbered: callers need not build one.
    pub fn is_on(&self) -> bool {
        self.mode != JournalMode::Off
    }

    /// Numbers one change now: adds its persistence to `batch`, keeps it in the ring and
    /// pushes it to subscribers. Synchronous, so the write path calls it while it still holds
    /// the map's lock and journal order is apply order. False when the journal is not loaded
    /// or its reservation is used up: keep the change ([`ChangeRef::to_owned`]) and
    /// [`Journal::append`] it later.
    pub fn number(&self, shared: &Shared, change: ChangeRef<'_>, batch: &mut WriteBatch) -> bool {
        if !self.is_on() {
            return true;
        }
        if !self.loaded.initialized() {
            return false;
        }
        // Taken before the journal lock so the HLC lock is never held inside it.
        let fresh;
        let timestamp = match change.timestamp {
            Some(timestamp) => timestamp,
            None => {
                fresh = shared.now_timestamp();
                &fresh
            }
        };
        // Encoded in scratch and copied out at its exact size: sizing a fresh buffer up front
        // would mean walking every value twice.
        with_scratch(|scratch| self.number_encoded(shared, &change, timestamp, scratch, batch))
    }

    /// [`Journal::number`] with its timestamp settled, encoding in `scratch`.
    fn number_encoded(
        &self,
        shared: &Shared,
        change: &ChangeRef<'_>,
        timestamp: &Timestamp,
        scratch: &mut MsgpackWriter,
        batch: &mut WriteBatch,
    ) -> bool {
        let guess = self.next_guess.load(Ordering::Relaxed);
        let draft = match Draft::encode(scratch, guess, change, timestamp, &self.node_id) {
            Ok(draft) => draft,
            Err(e) => {
                // Only a length past the MessagePack limit fails; no sequence is used.
                tracing::error!(error = %e, "journal entry not encodable: not journaled");
                return true;
            }
        };
        let mut inner = self.lock();
        if inner.last_sequence >= inner.reserved {
            return false;
        }
        let sequence = inner.last_sequence + 1;
        let encoded = draft.finish(sequence, scratch);
        inner.last_sequence = sequence;
        self.next_guess
            .store(sequence.saturating_add(1), Ordering::Relaxed);
        if !inner.subscribers.is_empty()
            && let Some(entry) = decode_entry(sequence, &encoded)
        {
            let gone: Vec<_> = inner
                .subscribers
                .iter()
                .filter(|(_, sub)| matches!(push(shared, sub, &entry), Err(SendError::Gone)))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                inner.subscribers.remove(&id);
            }
        }
        inner.ring.push_back(Numbered {
            sequence,
            encoded: Arc::clone(&encoded),
        });
        // One in, at most one out: the capacity never changes. The evicted entry is freed
        // after the lock is released, so other writers do not wait for the allocator.
        let evicted = if inner.ring.len() > self.capacity {
            inner.ring.pop_front()
        } else {
            None
        };
        drop(inner);
        drop(evicted);
        if self.mode == JournalMode::Durable {
            batch.push(Mutation::AppendJournal {
                sequence,
                event: encoded,
            });
        }
        true
    }

    /// Adds the trim that keeps only the newest `retention` entries in the store, once per
    /// batch (callers number first, then trim).
    pub fn trim_into(&self, batch: &mut WriteBatch) {
        if self.mode != JournalMode::Durable {
            return;
        }
        let last = self.lock().last_sequence;
        if self.retention > 0 && last > self.retention {
            batch.push(Mutation::TrimJournal {
                below: last - self.retention + 1,
            });
        }
    }

    /// Numbers `changes` in order (see [`Journal::number`]), reserving sequences as needed.
    pub async fn append(&self, shared: &Shared, changes: Vec<Change>, batch: &mut WriteBatch) {
        let mut pending = changes.into_iter().peekable();
        while pending.peek().is_some() {
            let needed = pending.len() as u64;
            if let Err(e) = self.prepare(shared, needed).await {
                tracing::error!(error = %e, dropped = needed, "journal unavailable: changes not journaled");
                return;
            }
            // Stops at a change the reservation no longer covers: reserve again and go on.
            while pending
                .next_if(|change| self.number(shared, change.as_ref(), batch))
                .is_some()
            {}
        }
        self.trim_into(batch);
    }

    /// Visits entries with sequence ≥ `from` in order, from the store (durable mode only)
    /// and then the ring, until `visit` breaks. If it never breaks, `at_head` runs under the
    /// same lock as the last ring visit, so nothing appended concurrently can fall between
    /// the two.
    async fn scan(
        &self,
        store: &dyn Store,
        from: u64,
        mut visit: impl FnMut(&JournalEntry) -> ControlFlow<()> + Send,
        at_head: impl FnOnce(&mut Inner) + Send,
    ) -> Result<(), StoreError> {
        self.ensure_loaded(store).await?;
        let mut cursor = from;
        loop {
            let ring_start = {
                let mut inner = self.lock();
                let ring_start = inner.ring_start();
                if self.mode != JournalMode::Durable {
                    // Nothing older than the ring is kept: go on from its oldest entry.
                    cursor = cursor.max(ring_start);
                }
                if cursor >= ring_start {
                    for numbered in inner.ring.iter().filter(|n| n.sequence >= cursor) {
                        if let Some(entry) = numbered.entry()
                            && visit(&entry).is_break()
                        {
                            return Ok(());
                        }
                    }
                    at_head(&mut inner);
                    return Ok(());
                }
                ring_start
            };
            let chunk = store.read_journal(cursor, STORE_CHUNK).await?;
            let mut reached_ring = chunk.len() < STORE_CHUNK;
            for (sequence, bytes) in chunk {
                if sequence >= ring_start {
                    reached_ring = true;
                    break;
                }
                cursor = sequence + 1;
                if let Some(entry) = decode_entry(sequence, &bytes)
                    && visit(&entry).is_break()
                {
                    return Ok(());
                }
            }
            if reached_ring {
                cursor = cursor.max(ring_start);
            }
        }
    }

    /// Up to `limit` entries ≥ `from` that `wanted` accepts, and whether more exist.
    pub(crate) async fn read(
        &self,
        store: &dyn Store,
        from: u64,
        limit: usize,
        wanted: impl Fn(&JournalEntry) -> bool + Send + Sync,
    ) -> Result<(Vec<JournalEntry>, bool), StoreError> {
        let mut found = Vec::new();
        self.scan(
            store,
            from,
            |entry| {
                if wanted(entry) {
                    found.push(entry.clone());
                }
                // One past the limit tells whether there is more.
                if found.len() > limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
            |_| {},
        )
        .await?;
        let has_more = found.len() > limit;
        found.truncate(limit);
        Ok((found, has_more))
    }

    fn unsubscribe(&self, conn: ConnId, id: &str) {
        self.lock().subscribers.remove(&(conn, id.to_owned()));
    }

    fn subscriptions_of(&self, conn: ConnId) -> usize {
        self.lock()
            .subscribers
            .keys()
            .filter(|(c, _)| *c == conn)
            .count()
    }

    /// Drops every subscription of a closed connection.
    pub fn remove_connection(&self, conn: ConnId) {
        self.lock().subscribers.retain(|(c, _), _| *c != conn);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How far the durable reservation is from covering the next changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shortfall {
    /// Enough reserved, with room to spare.
    None,
    /// Enough for now, but the next block should be reserved soon.
    Low,
    /// Not enough: numbering must wait for a reservation.
    Short,
}

/// Durably reserves sequences up to `target` before any of them is handed out.
async fn reserve(inner: &Mutex<Inner>, store: &dyn Store, target: u64) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    batch.push(Mutation::PutMeta {
        key: RESERVED_META_KEY.to_owned(),
        value: target.to_be_bytes().to_vec(),
    });
    store.commit(batch).await?;
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    inner.reserved = inner.reserved.max(target);
    Ok(())
}

/// `entry` as `principal` may see it, or `None` when it may not read the map.
fn visible(
    permissions: &Permissions,
    principal: &Principal,
    entry: &JournalEntry,
) -> Option<JournalEntry> {
    if !permissions.check(principal, &entry.map_name, Action::Read) {
        return None;
    }
    let filter =
        |v: Option<Value>| v.and_then(|v| permissions.filter_value(principal, &entry.map_name, v));
    Some(JournalEntry {
        value: filter(entry.value.clone()),
        previous_value: filter(entry.previous_value.clone()),
        ..entry.clone()
    })
}

/// Sends `entry` to `sub` if it matches and is visible to it.
fn push(shared: &Shared, sub: &Subscriber, entry: &JournalEntry) -> Result<(), SendError> {
    if !sub.filter.matches(entry) {
        return Ok(());
    }
    let Some(event) = visible(&shared.permissions, &sub.principal, entry) else {
        return Ok(());
    };
    send_to(shared, &sub.conn, &Message::from(JournalEvent { event }))
}

fn parse_sequence(shared: &Shared, session: &Session, text: &str) -> Option<u64> {
    match text.parse() {
        Ok(sequence) => Some(sequence),
        Err(_) => {
            session.send_error(shared, 400, format!("Invalid journal sequence {text:?}"));
            None
        }
    }
}

/// Refuses (`ERROR 403`) a map filter the principal may not read.
fn may_read_filter(shared: &Shared, session: &Session, map_name: Option<&str>) -> bool {
    let Some(map) = map_name else {
        return true;
    };
    let allowed = shared
        .permissions
        .check(session.principal(), map, Action::Read);
    if !allowed {
        session.send_error(shared, 403, format!("Access denied for map {map}"));
    }
    allowed
}

/// Why journal requests fail when the journal is off: TopGun's words and code (503) for its
/// disabled journal, so clients that know them recognise the case.
pub const JOURNAL_OFF: &str = "Event journal not enabled (this server's journal mode is off)";

/// Answers a journal request with `ERROR 503` when the journal is off.
fn refused_when_off(shared: &Shared, session: &Session) -> bool {
    let off = !shared.journal.is_on();
    if off {
        session.send_error(shared, 503, JOURNAL_OFF);
    }
    off
}

fn report_store_error(shared: &Shared, session: &Session, e: &StoreError) {
    tracing::error!(error = %e, "reading the journal failed");
    session.send_error(shared, 500, format!("Reading the journal failed: {e}"));
}

/// `JOURNAL_READ`: one page of events, the map filter applied before the limit.
pub async fn handle_journal_read(
    shared: &Arc<Shared>,
    session: &mut Session,
    read: JournalRead,
) -> Flow {
    if refused_when_off(shared, session) {
        // The reader waits for its page: an empty last one ends the wait at once.
        let _ = session.send(
            shared,
            JournalReadResponse {
                request_id: read.request_id,
                events: Vec::new(),
                has_more: false,
            },
        );
        return Flow::Continue;
    }
    let Some(from) = parse_sequence(shared, session, &read.from_sequence) else {
        return Flow::Continue;
    };
    if !may_read_filter(shared, session, read.map_name.as_deref()) {
        return Flow::Continue;
    }
    let limit = read
        .limit
        .map_or(DEFAULT_READ_LIMIT, |l| {
            usize::try_from(l).unwrap_or(MAX_READ_LIMIT)
        })
        .min(MAX_READ_LIMIT);
    let filter = Filter {
        map_name: read.map_name,
        types: None,
    };
    let principal = session.principal().clone();
    let permissions = &shared.permissions;
    let wanted = |entry: &JournalEntry| {
        filter.matches(entry) && permissions.check(&principal, &entry.map_name, Action::Read)
    };
    match shared
        .journal
        .read(&*shared.store, from, limit, wanted)
        .await
    {
        Ok((events, has_more)) => {
            let events = events
                .iter()
                .filter_map(|e| visible(permissions, &principal, e))
                .collect();
            let _ = session.send(
                shared,
                JournalReadResponse {
                    request_id: read.request_id,
                    events,
                    has_more,
                },
            );
        }
        Err(e) => report_store_error(shared, session, &e),
    }
    Flow::Continue
}

/// `JOURNAL_SUBSCRIBE`: no reply; replays from `fromSequence` if given, then streams.
pub async fn handle_journal_subscribe(
    shared: &Arc<Shared>,
    session: &mut Session,
    subscribe: JournalSubscribe,
) -> Flow {
    if refused_when_off(shared, session) {
        return Flow::Continue;
    }
    let from = match subscribe.from_sequence.as_deref() {
        Some(text) => match parse_sequence(shared, session, text) {
            Some(from) => Some(from),
            None => return Flow::Continue,
        },
        None => None,
    };
    if !may_read_filter(shared, session, subscribe.map_name.as_deref()) {
        return Flow::Continue;
    }
    let key = (session.id, subscribe.request_id);
    let journal = &shared.journal;
    let already = journal.lock().subscribers.contains_key(&key);
    if !already && journal.subscriptions_of(session.id) >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
        session.send_error(
            shared,
            429,
            format!("Journal subscription limit reached: at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} per connection"),
        );
        return Flow::Continue;
    }
    let subscriber = Subscriber {
        conn: session.handle().clone(),
        principal: session.principal().clone(),
        filter: Filter {
            map_name: subscribe.map_name,
            types: subscribe.types,
        },
    };
    let registered = subscriber.clone();
    // Without a start point the subscription begins after the newest event.
    let from = from.unwrap_or(u64::MAX);
    let mut replay_gone = false;
    let replayed = journal
        .scan(
            &*shared.store,
            from,
            |entry| match push(shared, &subscriber, entry) {
                Err(SendError::Gone) => {
                    replay_gone = true;
                    ControlFlow::Break(())
                }
                // A full queue drops replayed events like live ones (at most once).
                Ok(()) | Err(SendError::Full) => ControlFlow::Continue(()),
            },
            |inner| {
                inner.subscribers.insert(key, registered);
            },
        )
        .await;
    if let Err(e) = replayed {
        report_store_error(shared, session, &e);
    }
    if replay_gone {
        tracing::debug!(conn = session.id, "journal subscriber left during replay");
    }
    Flow::Continue
}

/// `JOURNAL_UNSUBSCRIBE`: silent.
pub fn handle_journal_unsubscribe(
    shared: &Shared,
    session: &mut Session,
    unsubscribe: JournalUnsubscribe,
) -> Flow {
    shared
        .journal
        .unsubscribe(session.id, &unsubscribe.subscription_id);
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Server;
    use crate::store::MemoryStore;
    use serde_json::json;

    fn server(store: Arc<dyn Store>, capacity: usize, retention: u64) -> Server {
        server_with(store, capacity, retention, JournalMode::Durable)
    }

    fn server_with(
        store: Arc<dyn Store>,
        capacity: usize,
        retention: u64,
        journal: JournalMode,
    ) -> Server {
        let limits = Limits {
            journal,
            journal_capacity: capacity,
            journal_retention: retention,
            ..Limits::default()
        };
        Server::for_tests(store, 1_000, limits)
    }

    fn put(map: &str, key: &str, n: u64) -> Change {
        let record = LwwRecord {
            value: Some(json!(n).into()),
            timestamp: Timestamp::new(n, 0, "client"),
            ttl_ms: None,
        };
        Change::lww(map, key, &record, None)
    }

    /// Appends `changes` and commits what the journal added to the batch.
    async fn append(shared: &Shared, changes: Vec<Change>) {
        let mut batch = WriteBatch::new();
        shared.journal.append(shared, changes, &mut batch).await;
        shared.store.commit(batch).await.unwrap();
    }

    async fn read_all(
        shared: &Shared,
        from: u64,
        limit: usize,
        map: Option<&str>,
    ) -> (Vec<u64>, bool) {
        let (events, more) = shared
            .journal
            .read(&*shared.store, from, limit, |e| {
                map.is_none_or(|m| e.map_name == m)
            })
            .await
            .unwrap();
        let sequences = events.iter().map(|e| e.sequence.parse().unwrap()).collect();
        (sequences, more)
    }

    /// A journal entry serialized from borrowed parts by serde: the named form entries
    /// were stored in before, which must still decode.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct EntryRef<'a> {
        sequence: String,
        #[serde(rename = "type")]
        event_type: JournalEventType,
        map_name: &'a str,
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous_value: Option<&'a Value>,
        timestamp: &'a Timestamp,
        node_id: &'a str,
    }

    #[test]
    fn entries_encode_as_field_arrays_that_decode_like_every_earlier_form() {
        let long = "ü".repeat(40_000);
        let cases = [
            (
                42,
                JournalEventType::Update,
                Some(json!({"b": 1, "a": [true, null, "x"]})),
                Some(json!("old")),
                Timestamp::new(1_700_000_000_000, 3, "client-1"),
            ),
            (
                1,
                JournalEventType::Put,
                Some(json!({"n": 123, "pad": "x".repeat(100)})),
                None,
                Timestamp::new(1_795_698_229_131, 0, "c"),
            ),
            (
                u64::MAX,
                JournalEventType::Delete,
                None,
                Some(json!(1.5)),
                Timestamp::new(u64::MAX, u32::MAX, long.clone()),
            ),
            (
                0,
                JournalEventType::Delete,
                None,
                None,
                Timestamp::new(0, 0, ""),
            ),
            (
                7,
                JournalEventType::Update,
                Some(json!([long.clone(), i64::MIN, u64::MAX, -0.25])),
                Some(json!({"k": {"deep": [null]}})),
                Timestamp::new(5, 70_000, "n"),
            ),
        ];
        for (sequence, event_type, value, previous_value, timestamp) in cases {
            for (map_name, key, node_id) in [("m\"ap", "ключ", "server"), ("", &*long, &*long)]
            {
                let owned = JournalEntry {
                    sequence: sequence.to_string(),
                    event_type,
                    map_name: map_name.to_owned(),
                    key: key.to_owned(),
                    value: value.clone(),
                    previous_value: previous_value.clone(),
                    timestamp: timestamp.clone(),
                    node_id: node_id.to_owned(),
                    metadata: None,
                };
                let borrowed = EntryRef {
                    sequence: sequence.to_string(),
                    event_type,
                    map_name,
                    key,
                    value: value.as_ref(),
                    previous_value: previous_value.as_ref(),
                    timestamp: &timestamp,
                    node_id,
                };
                let (value, previous_value) = (
                    value.clone().map(UserValue::from),
                    previous_value.clone().map(UserValue::from),
                );
                let change = ChangeRef {
                    map_name,
                    key,
                    event_type,
                    value: value.as_ref(),
                    previous_value: previous_value.as_ref(),
                    timestamp: None,
                };
                let json = serde_json::to_vec(&borrowed).unwrap();
                assert_eq!(json, serde_json::to_vec(&owned).unwrap());
                let named = rmp_serde::to_vec_named(&borrowed).unwrap();
                assert_eq!(named, rmp_serde::to_vec_named(&owned).unwrap());
                let packed = encode_entry(sequence, &change, &timestamp, node_id).unwrap();
                assert_eq!(packed.first(), Some(&(0x90 | 8)), "a fixarray of 8 fields");
                assert!(packed.len() < named.len(), "sequence {sequence}");
                // Entries stored by earlier versions, as named maps or JSON, still read.
                assert_eq!(decode_entry(sequence, &json).as_ref(), Some(&owned));
                assert_eq!(decode_entry(sequence, &named).as_ref(), Some(&owned));
                assert_eq!(decode_entry(sequence, &packed), Some(owned));
            }
        }
    }

    #[test]
    fn drafts_finish_as_the_entry_of_the_real_sequence() {
        let value = UserValue::from(json!({"n": 1, "pad": "x".repeat(100)}));
        let previous = UserValue::from(json!([null, "old"]));
        let timestamp = Timestamp::new(1_795_698_229_131, 2, "client");
        let mut scratch = MsgpackWriter::default();
        for (value, previous_value) in [(Some(&value), Some(&previous)), (None, None)] {
            let change = ChangeRef {
                map_name: "m",
                key: "k",
                event_type: JournalEventType::Update,
                value,
                previous_value,
                timestamp: None,
            };
            for sequence in [1, 9, 10, 999_999, 1_000_000, 1_234_567, u64::MAX] {
                let expected = encode_entry(sequence, &change, &timestamp, "server").unwrap();
                let guesses = [
                    sequence,
                    sequence.saturating_sub(1),
                    sequence.saturating_add(1),
                    sequence / 10,
                    sequence.saturating_mul(10),
                    0,
                    u64::MAX,
                ];
                for guess in guesses {
                    let draft =
                        Draft::encode(&mut scratch, guess, &change, &timestamp, "server").unwrap();
                    let drafted = Arc::as_ptr(&draft.bytes);
                    let finished = draft.finish(sequence, &mut scratch);
                    assert_eq!(*finished, *expected, "sequence {sequence}, guess {guess}");
                    // A guess with as many digits is corrected in the draft's own buffer.
                    let same_digits = guess.to_string().len() == sequence.to_string().len();
                    assert_eq!(
                        std::ptr::eq(Arc::as_ptr(&finished), drafted),
                        same_digits,
                        "sequence {sequence}, guess {guess}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn the_ring_and_the_store_batch_share_one_encoded_entry() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let running = server(store, 2, 0);
        let shared = running.shared();
        append(shared, vec![put("m", "a", 1)]).await;
        shared.journal.prepare(shared, 3).await.unwrap();
        let record = LwwRecord {
            value: Some(json!({"v": "x".repeat(100)}).into()),
            timestamp: Timestamp::new(7, 0, "client"),
            ttl_ms: None,
        };
        let previous = LwwRecord {
            value: Some(json!("before").into()),
            ..record.clone()
        };
        let change = ChangeRef::lww("m", "k", &record, Some(&previous));
        // A stale guess (another writer numbered meanwhile) is corrected under the lock.
        shared.journal.next_guess.store(9, Ordering::Relaxed);
        let mut batch = WriteBatch::new();
        for _ in 0..3 {
            assert!(shared.journal.number(shared, change, &mut batch));
        }
        let inner = shared.journal.lock();
        let ring: Vec<_> = inner
            .ring
            .iter()
            .map(|n| (n.sequence, &n.encoded))
            .collect();
        let Mutation::AppendJournal { sequence, event } = &batch.mutations()[2] else {
            panic!("expected a journal entry, got {:?}", batch.mutations());
        };
        assert_eq!(*sequence, 4);
        assert_eq!(ring.len(), 2);
        assert_eq!(ring[1].0, 4);
        assert!(Arc::ptr_eq(ring[1].1, event));
        for (mutation, sequence) in batch.mutations().iter().zip(2..) {
            let expected = encode_entry(sequence, &change, &record.timestamp, "server-1").unwrap();
            assert_eq!(
                mutation,
                &Mutation::AppendJournal {
                    sequence,
                    event: expected.into()
                }
            );
        }
    }

    #[tokio::test]
    async fn concurrent_writers_get_distinct_sequences_written_into_their_entries() {
        const THREADS: u64 = 4;
        const EACH: u64 = 2_000;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let running = server(store, (THREADS * EACH) as usize, 0);
        let shared = running.shared();
        shared
            .journal
            .prepare(shared, THREADS * EACH)
            .await
            .unwrap();
        // All start together, so guesses go stale between encoding and numbering.
        let start = std::sync::Barrier::new(THREADS as usize);
        let batches: Vec<WriteBatch> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        let mut batch = WriteBatch::new();
                        for n in 0..EACH {
                            let change = put("m", &format!("t{thread}"), n);
                            assert!(shared.journal.number(shared, change.as_ref(), &mut batch));
                        }
                        batch
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut sequences = Vec::new();
        for (thread, batch) in batches.iter().enumerate() {
            let mut last = 0;
            for (n, mutation) in batch.mutations().iter().enumerate() {
                let Mutation::AppendJournal { sequence, event } = mutation else {
                    panic!("expected a journal entry, got {mutation:?}");
                };
                assert!(*sequence > last, "a writer's own entries are in order");
                last = *sequence;
                let entry = decode_entry(*sequence, event).unwrap();
                assert_eq!(entry.sequence, sequence.to_string());
                assert_eq!(entry.key, format!("t{thread}"));
                assert_eq!(entry.value, Some(json!(n)));
                sequences.push(*sequence);
            }
        }
        sequences.sort_unstable();
        assert_eq!(sequences, (1..=THREADS * EACH).collect::<Vec<_>>());
        let ring: Vec<u64> = shared
            .journal
            .lock()
            .ring
            .iter()
            .map(|n| n.sequence)
            .collect();
        assert_eq!(ring, sequences);
    }

    #[test]
    fn classifies_put_update_and_delete() {
        let rec = |value: Option<Value>| LwwRecord {
            value: value.map(Into::into),
            timestamp: Timestamp::new(5, 0, "n"),
            ttl_ms: None,
        };
        let first = Change::lww("m", "k", &rec(Some(json!(1))), None);
        assert_eq!(first.event_type, JournalEventType::Put);
        let tombstone_before = rec(None);
        let over_tombstone = Change::lww("m", "k", &rec(Some(json!(2))), Some(&tombstone_before));
        assert_eq!(over_tombstone.event_type, JournalEventType::Put);
        let live_before = rec(Some(json!(1)));
        let update = Change::lww("m", "k", &rec(Some(json!(2))), Some(&live_before));
        assert_eq!(update.event_type, JournalEventType::Update);
        assert_eq!(update.previous_value, Some(json!(1)).map(Into::into));
        let delete = Change::lww("m", "k", &rec(None), Some(&live_before));
        assert_eq!(delete.event_type, JournalEventType::Delete);
        assert_eq!(
            (delete.value, delete.previous_value),
            (None, Some(json!(1).into()))
        );

        let added = Change::or("m", "k", vec![], vec![json!("a")], false, None);
        assert_eq!(added.event_type, JournalEventType::Put);
        assert_eq!(added.value, Some(json!(["a"])).map(Into::into));
        let more = Change::or(
            "m",
            "k",
            vec![json!("a")],
            vec![json!("a"), json!("b")],
            false,
            None,
        );
        assert_eq!(more.event_type, JournalEventType::Update);
        let removed = Change::or(
            "m",
            "k",
            vec![json!("a"), json!("b")],
            vec![json!("b")],
            true,
            None,
        );
        assert_eq!(removed.event_type, JournalEventType::Delete);
        assert_eq!(
            removed.previous_value,
            Some(json!(["a", "b"])).map(Into::into)
        );
    }

    #[tokio::test]
    async fn sequences_increase_and_survive_a_restart() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let first = server(store.clone(), 100, 0);
        let shared = first.shared();
        append(shared, vec![put("a", "x", 1), put("a", "y", 2)]).await;
        append(shared, vec![put("b", "z", 3)]).await;
        assert_eq!(shared.journal.last_sequence(), 3);
        let (events, _) = shared.journal.read(&*store, 0, 10, |_| true).await.unwrap();
        assert_eq!(events[2].node_id, "server-1");
        assert_eq!(events[2].timestamp, Timestamp::new(3, 0, "client"));

        // A new server over the same store continues above everything reserved: the first
        // append reserved 1..=1026 (2 needed + the first block of 1,024).
        let second = server(store.clone(), 100, 0);
        let shared = second.shared();
        append(shared, vec![put("a", "x", 4)]).await;
        let resumed = 2 + RESERVE_BLOCK_MIN + 1;
        assert_eq!(shared.journal.last_sequence(), resumed);
        assert_eq!(
            read_all(shared, 0, 2_000, None).await,
            (vec![1, 2, 3, resumed], false)
        );
    }

    #[tokio::test]
    async fn reservation_blocks_start_small_and_grow_under_load() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let running = server(store, 100, 0);
        let shared = running.shared();
        append(shared, vec![put("a", "x", 1)]).await;
        assert_eq!(shared.journal.lock().reserved, 1 + RESERVE_BLOCK_MIN);
        let mut reservations = vec![shared.journal.lock().reserved];
        for round in 0..200u64 {
            let changes = (0..500).map(|i| put("a", "k", round * 500 + i)).collect();
            append(shared, changes).await;
            let reserved = shared.journal.lock().reserved;
            if reservations.last() != Some(&reserved) {
                reservations.push(reserved);
            }
        }
        let inner = shared.journal.lock();
        assert_eq!(inner.last_sequence, 1 + 200 * 500);
        assert!(inner.reserved >= inner.last_sequence);
        assert_eq!(inner.block, RESERVE_BLOCK_MAX);
        // 100k sequences took a handful of reservations, not one per 1,024.
        assert!(reservations.len() < 12, "{reservations:?}");
    }

    #[tokio::test]
    async fn a_sequence_seen_before_a_crash_is_never_reused() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let first = server(store.clone(), 100, 0);
        let shared = first.shared();
        append(shared, vec![put("a", "x", 1)]).await;
        // Numbered and pushed to subscribers, but the process dies before the batch lands.
        let mut lost = WriteBatch::new();
        shared
            .journal
            .append(shared, vec![put("a", "y", 2)], &mut lost)
            .await;
        assert_eq!(shared.journal.last_sequence(), 2);
        drop(lost);

        let second = server(store.clone(), 100, 0);
        let shared = second.shared();
        append(shared, vec![put("a", "z", 3)]).await;
        assert!(
            shared.journal.last_sequence() > 2,
            "sequence 2 was seen by subscribers and must not name another event"
        );
    }

    #[tokio::test]
    async fn reads_span_store_and_ring_and_filter_before_the_limit() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let running = server(store, 3, 0);
        let shared = running.shared();
        for n in 1..=10 {
            let map = if n % 3 == 0 { "rare" } else { "common" };
            append(shared, vec![put(map, "k", n)]).await;
        }
        // The ring holds only 8..=10; everything before comes from the store.
        assert_eq!(shared.journal.lock().ring_start(), 8);
        assert_eq!(read_all(shared, 0, 4, None).await, (vec![1, 2, 3, 4], true));
        assert_eq!(
            read_all(shared, 7, 100, None).await,
            (vec![7, 8, 9, 10], false)
        );
        assert_eq!(
            read_all(shared, 0, 2, Some("rare")).await,
            (vec![3, 6], true)
        );
        assert_eq!(
            read_all(shared, 0, 3, Some("rare")).await,
            (vec![3, 6, 9], false)
        );
        assert_eq!(read_all(shared, 11, 5, None).await, (vec![], false));
        assert_eq!(read_all(shared, 0, 0, None).await, (vec![], true));
    }

    #[tokio::test]
    async fn a_memory_journal_keeps_the_ring_only_and_its_sequences_across_restarts() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let first = server_with(store.clone(), 3, 0, JournalMode::Memory);
        let shared = first.shared();
        for n in 1..=5 {
            let mut batch = WriteBatch::new();
            shared
                .journal
                .append(shared, vec![put("m", "k", n)], &mut batch)
                .await;
            // Neither entries nor trims reach the store batch.
            assert!(batch.is_empty(), "{batch:?}");
        }
        assert!(store.read_journal(0, 100).await.unwrap().is_empty());
        // Reads older than the ring start at its oldest entry.
        assert_eq!(read_all(shared, 0, 100, None).await, (vec![3, 4, 5], false));
        assert_eq!(read_all(shared, 4, 100, None).await, (vec![4, 5], false));

        // The durable reservation carries the numbering over a restart.
        let second = server_with(store, 3, 0, JournalMode::Memory);
        let shared = second.shared();
        append(shared, vec![put("m", "k", 6)]).await;
        let (after_restart, _) = read_all(shared, 0, 100, None).await;
        assert_eq!(after_restart.len(), 1);
        assert!(after_restart[0] > 5, "{after_restart:?}");
    }

    #[tokio::test]
    async fn an_off_journal_numbers_nothing_and_touches_no_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let running = server_with(store.clone(), 3, 2, JournalMode::Off);
        let shared = running.shared();
        let mut batch = WriteBatch::new();
        shared
            .journal
            .append(shared, vec![put("m", "k", 1), put("m", "j", 2)], &mut batch)
            .await;
        assert!(batch.is_empty(), "{batch:?}");
        assert_eq!(shared.journal.last_sequence(), 0);
        assert!(shared.journal.lock().ring.is_empty());
        assert_eq!(store.get_meta(RESERVED_META_KEY).await.unwrap(), None);
    }

    #[tokio::test]
    async fn retention_trims_the_store_but_never_the_head() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let running = server(store.clone(), 2, 4);
        let shared = running.shared();
        for n in 1..=10 {
            append(shared, vec![put("m", "k", n)]).await;
        }
        let kept: Vec<u64> = store
            .read_journal(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(kept, vec![7, 8, 9, 10]);
        assert_eq!(
            read_all(shared, 0, 100, None).await,
            (vec![7, 8, 9, 10], false)
        );
        assert_eq!(store.last_journal_sequence().await.unwrap(), 10);
    }

    #[tokio::test]
    async fn subscribers_get_matching_events_in_order_after_a_replay() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let running = server(store, 2, 0);
        let shared = running.shared();
        for n in 1..=4 {
            append(
                shared,
                vec![put(if n % 2 == 0 { "even" } else { "odd" }, "k", n)],
            )
            .await;
        }
        let (conn, mut rx) = super::super::connections::outbound_queue(9, 64);
        let subscriber = Subscriber {
            conn,
            principal: Principal::new("admin", vec!["ADMIN".to_owned()]),
            filter: Filter {
                map_name: Some("even".into()),
                types: Some(vec![JournalEventType::Put]),
            },
        };
        let registered = subscriber.clone();
        shared
            .journal
            .scan(
                &*shared.store,
                1,
                |e| {
                    let _ = push(shared, &subscriber, e);
                    ControlFlow::Continue(())
                },
                |inner| {
                    inner.subscribers.insert((9, "s".into()), registered);
                },
            )
            .await
            .unwrap();
        append(shared, vec![put("odd", "k", 5), put("even", "k", 6)]).await;
        shared.journal.unsubscribe(9, "s");
        append(shared, vec![put("even", "k", 8)]).await;

        let mut seen = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            let super::super::connections::Outbound::Binary(bytes) = frame else {
                panic!("unexpected frame {frame:?}")
            };
            let message =
                crate::protocol::codec::decode(crate::protocol::codec::Frame::Binary(&bytes))
                    .unwrap();
            let Message::JournalEvent(event) = message else {
                panic!("unexpected {message:?}")
            };
            seen.push(event.event.sequence);
        }
        assert_eq!(
            seen,
            vec!["2", "4", "6"],
            "replay from the store, then live, then nothing"
        );
        assert_eq!(shared.journal.subscriptions_of(9), 0);
    }
}
