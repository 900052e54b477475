//! The client's durable op log: every local write's `ClientOp`, kept until the server acks it,
//! streamed to the server in bounded chunks (TOPGUN-REFERENCE.md §3.4, defects 2, 3, 12–15).
//!
//! The log lives in the **journal rows of the client's local [`Store`]** (the same store that
//! holds its records): a journal row is already a durable, sequenced entry whose sequence
//! never reuses, which is exactly what an op log needs.
//! - An op's id is its journal sequence. [`OpLog::append`] returns ONE [`WriteBatch`] holding
//!   the write's record mutations and `AppendJournal { sequence: id, event: <msgpack op> }`,
//!   so a record and its op are committed atomically (defect 13).
//! - Acked ops are removed with `TrimJournal { below }`; ids continue after a restart from
//!   `last_journal_sequence()`, which trimming never lowers.
//! - In memory the log keeps only counters and the in-flight window, never the ops themselves:
//!   chunks are read back from the store (defect 12).
//!
//! Rules this module relies on and keeps:
//! - **The trim floor.** Every id below `floor = min(cursor, oldest in flight, oldest
//!   uncommitted)` is finished (acked, rejected for good, dropped, or never committed), so
//!   `TrimJournal { below: floor }` is always safe. `cursor` is a lower bound of every
//!   committed op not yet sent on this session.
//! - **Done above the floor.** An op acked while an older one is still pending (a slow commit,
//!   a retried rejection) is remembered in a small set until the floor passes it, so it is not
//!   sent twice in one session. After a restart such ops are sent again: the server's merges
//!   are idempotent, so the log is at-least-once, never lossy.
//! - **Acks match chunks, not a global watermark.** `OP_ACK.lastId` completes only the ops of
//!   the in-flight chunk that contains that id (its ops ≤ `lastId`); the chunk's later ops
//!   were held back by a transient rejection and are sent again. Chunks sent before it are
//!   finished, since a connection answers in order; their unacked ops are sent again. An ack
//!   naming no in-flight op (stale, from a previous session, or unrelated) changes nothing,
//!   so it can never discard unsent ops (defect 3).
//! - **Dropping a non-prefix op.** [`OpLog::drop_oldest`] removes the oldest committed op not
//!   in flight. When that op is not below the floor (older ops are still in flight) the trim
//!   cannot reach it, so its row is overwritten in place (`AppendJournal` on the same
//!   sequence) with a `Dropped` marker: never sent again, not even after a restart, and
//!   trimmed once the floor passes it.
//! - The caller feeds messages of one connection at a time and calls
//!   [`OpLog::disconnected`] before the next connection's first message.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::ClientOp;
use crate::store::{Mutation, Store, StoreError, WriteBatch};

/// How many journal rows one store read fetches while scanning.
const SCAN_PAGE: usize = 256;

/// How many appended ops may wait for their commit at once; bounds the uncommitted set.
pub const MAX_UNCOMMITTED: usize = 65_536;

/// Why an op-log operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpLogError {
    /// The local store failed.
    #[error("op log store failed: {0}")]
    Store(#[from] StoreError),
    /// An op could not be encoded for the log.
    #[error("cannot encode op {id} for the op log: {message}")]
    Encode {
        /// The op id.
        id: u64,
        /// The encoder's message.
        message: String,
    },
    /// A stored row could not be decoded.
    #[error("op log row {id} is unreadable: {message}")]
    Corrupt {
        /// The row's id.
        id: u64,
        /// The decoder's message.
        message: String,
    },
    /// Too many writes are waiting for their local commit.
    #[error("{limit} writes are already waiting for their local commit")]
    TooManyUncommitted {
        /// [`MAX_UNCOMMITTED`].
        limit: usize,
    },
}

/// What an `OP_REJECTED` did to the op it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Final: the op is removed from the log and will never be sent again.
    Final,
    /// Transient (429 / 5xx): the op and the later ops of its chunk will be sent again.
    Retry,
    /// The id names no op in flight; nothing changed.
    Stale,
}

/// True for rejection codes that mean "try again later" rather than "never".
pub fn is_transient_rejection(code: Option<u32>) -> bool {
    matches!(code, Some(429 | 500..=599))
}

/// One journal row's content.
#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    /// A pending write.
    Op(Box<ClientOp>),
    /// A write dropped by backpressure; kept only until the floor passes it.
    Dropped,
}

/// One `OP_BATCH` in flight.
#[derive(Debug)]
struct Chunk {
    /// Every id sent in it, ascending: the ids its ack may name.
    sent: Vec<u64>,
    /// The ids still awaiting their ack.
    waiting: BTreeSet<u64>,
}

/// The durable op log. See the module docs for its rules.
pub struct OpLog {
    store: Arc<dyn Store>,
    /// The id the next append gets.
    next_id: u64,
    /// Every committed, unsent op has an id ≥ this.
    cursor: u64,
    /// The last `TrimJournal` bound handed out (or found at open).
    trimmed_below: u64,
    /// Appended ops whose batch is not committed yet.
    uncommitted: BTreeSet<u64>,
    /// Chunks sent on this session and not answered yet, oldest first.
    chunks: VecDeque<Chunk>,
    /// Every id in `chunks[..].waiting`.
    in_flight: BTreeSet<u64>,
    /// Finished ids at or above the floor.
    done: BTreeSet<u64>,
    /// Committed ops not finished.
    pending: u64,
}

impl std::fmt::Debug for OpLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpLog")
            .field("next_id", &self.next_id)
            .field("cursor", &self.cursor)
            .field("pending", &self.pending)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl OpLog {
    /// Opens the log over `store`, resuming ids after the highest ever used and counting the
    /// ops still pending from earlier runs (one bounded pass over the stored rows).
    pub async fn open(store: Arc<dyn Store>) -> Result<Self, OpLogError> {
        let next_id = store.last_journal_sequence().await?.saturating_add(1);
        let mut first_row = None;
        let mut first_op = None;
        let mut pending = 0;
        let mut from = 0;
        loop {
            let rows = store.read_journal(from, SCAN_PAGE).await?;
            let full_page = rows.len() == SCAN_PAGE;
            for (id, bytes) in rows {
                first_row.get_or_insert(id);
                if let Entry::Op(_) = decode(id, &bytes)? {
                    first_op.get_or_insert(id);
                    pending += 1;
                }
                from = id.saturating_add(1);
            }
            if !full_page {
                break;
            }
        }
        Ok(Self {
            store,
            next_id,
            cursor: first_op.unwrap_or(next_id),
            trimmed_below: first_row.unwrap_or(next_id),
            uncommitted: BTreeSet::new(),
            chunks: VecDeque::new(),
            in_flight: BTreeSet::new(),
            done: BTreeSet::new(),
            pending,
        })
    }

    /// Assigns the next id (sets `op.id`) and returns it with ONE batch: `local` (the record
    /// mutations of this write) followed by the op's row. The caller commits the batch, then
    /// calls [`committed`](Self::committed) (or [`commit_failed`](Self::commit_failed)).
    pub fn append(
        &mut self,
        mut op: ClientOp,
        local: Vec<Mutation>,
    ) -> Result<(u64, WriteBatch), OpLogError> {
        if self.uncommitted.len() >= MAX_UNCOMMITTED {
            return Err(OpLogError::TooManyUncommitted {
                limit: MAX_UNCOMMITTED,
            });
        }
        let id = self.next_id;
        op.id = Some(id.to_string());
        let event = encode(id, &Entry::Op(Box::new(op)))?;
        let mut batch = WriteBatch::from(local);
        batch.push(Mutation::AppendJournal {
            sequence: id,
            event: event.into(),
        });
        self.next_id += 1;
        self.uncommitted.insert(id);
        Ok((id, batch))
    }

    /// The batch of op `id` is durable: the op becomes sendable. Commits may finish in any order.
    pub fn committed(&mut self, id: u64) {
        if self.uncommitted.remove(&id) {
            self.pending += 1;
            self.cursor = self.cursor.min(id);
        }
    }

    /// The batch of op `id` failed to commit: the write did not happen and its id stays unused.
    pub fn commit_failed(&mut self, id: u64) {
        self.uncommitted.remove(&id);
    }

    /// Committed ops not yet acked, sent or not; survives restarts.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Ops sent on this session and not answered yet: the backpressure window.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.len() as u64
    }

    /// The next ops to send, in id order: committed, not in flight, at most `max_ops` ops and
    /// `max_bytes` encoded bytes (but at least one op, however large). Marks them in flight;
    /// an empty result means nothing is waiting to be sent.
    pub async fn next_chunk(
        &mut self,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<ClientOp>, OpLogError> {
        let max_ops = max_ops.max(1);
        let mut ops = Vec::new();
        let mut ids = Vec::new();
        let mut bytes = 0usize;
        'scan: loop {
            let rows = self.store.read_journal(self.cursor, SCAN_PAGE).await?;
            let full_page = rows.len() == SCAN_PAGE;
            for (id, row) in rows {
                if let Some(op) = self.unsent_op(id, &row)? {
                    let fits = ids.is_empty() || bytes.saturating_add(row.len()) <= max_bytes;
                    if !fits {
                        break 'scan;
                    }
                    bytes = bytes.saturating_add(row.len());
                    ops.push(op);
                    ids.push(id);
                }
                self.advance_cursor(id.saturating_add(1));
                if ids.len() >= max_ops {
                    break 'scan;
                }
            }
            if !full_page {
                break;
            }
        }
        if !ids.is_empty() {
            self.in_flight.extend(ids.iter().copied());
            self.chunks.push_back(Chunk {
                waiting: ids.iter().copied().collect(),
                sent: ids,
            });
        }
        Ok(ops)
    }

    /// `OP_ACK { lastId: last_id }`: the ops of the chunk holding `last_id` up to it are done.
    /// Returns the trim batch to commit (empty when the floor did not move) and the acked ids.
    pub fn ack(&mut self, last_id: u64) -> (WriteBatch, Vec<u64>) {
        let Some(position) = self
            .chunks
            .iter()
            .position(|chunk| chunk.sent.binary_search(&last_id).is_ok())
        else {
            return (WriteBatch::new(), Vec::new());
        };
        self.finish_chunks_before(position);
        let mut acked = Vec::new();
        if let Some(mut chunk) = self.chunks.pop_front() {
            let held_back = chunk.waiting.split_off(&last_id.saturating_add(1));
            for id in chunk.waiting {
                self.finish(id);
                acked.push(id);
            }
            self.send_again(held_back);
        }
        (self.trim(), acked)
    }

    /// The stored op `id`, if it is still in the log (for undoing a rejected write locally).
    pub async fn read(&self, id: u64) -> Result<Option<ClientOp>, OpLogError> {
        let rows = self.store.read_journal(id, 1).await?;
        match rows.into_iter().next() {
            Some((sequence, bytes)) if sequence == id => match decode(id, &bytes)? {
                Entry::Op(op) => Ok(Some(*op)),
                Entry::Dropped => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// `OP_REJECTED { opId: id, code }`: a transient code sends the op (and its chunk's later
    /// ops, whose ack the server held back) again; any other code finishes it for good.
    /// Returns the trim batch to commit and what happened.
    pub fn rejected(&mut self, id: u64, code: Option<u32>) -> (WriteBatch, Rejection) {
        let Some(position) = self
            .chunks
            .iter()
            .position(|chunk| chunk.waiting.contains(&id))
        else {
            return (WriteBatch::new(), Rejection::Stale);
        };
        self.finish_chunks_before(position);
        let Some(chunk) = self.chunks.front_mut() else {
            return (WriteBatch::new(), Rejection::Stale);
        };
        let rejection = if is_transient_rejection(code) {
            let held_back = chunk.waiting.split_off(&id);
            self.send_again(held_back);
            Rejection::Retry
        } else {
            chunk.waiting.remove(&id);
            self.finish(id);
            Rejection::Final
        };
        if self
            .chunks
            .front()
            .is_some_and(|chunk| chunk.waiting.is_empty())
        {
            self.chunks.pop_front();
        }
        (self.trim(), rejection)
    }

    /// The connection is gone: every op in flight will be sent again on the next session.
    pub fn disconnected(&mut self) {
        let chunks = std::mem::take(&mut self.chunks);
        for chunk in chunks {
            self.send_again(chunk.waiting);
        }
    }

    /// Drops the oldest committed op that is not in flight, durably: returns it (for the
    /// `Dropped` event) with the batch to commit, or `None` when every pending op is in flight.
    pub async fn drop_oldest(&mut self) -> Result<Option<(ClientOp, WriteBatch)>, OpLogError> {
        loop {
            let rows = self.store.read_journal(self.cursor, SCAN_PAGE).await?;
            let full_page = rows.len() == SCAN_PAGE;
            for (id, row) in rows {
                let unsent = self.unsent_op(id, &row)?;
                self.advance_cursor(id.saturating_add(1));
                if let Some(op) = unsent {
                    self.pending = self.pending.saturating_sub(1);
                    // Until the batch is committed the row still holds the op; a cursor moved
                    // back by a retry must not send it.
                    self.done.insert(id);
                    return Ok(Some((op, self.dropped_batch(id)?)));
                }
            }
            if !full_page {
                return Ok(None);
            }
        }
    }

    /// The batch that makes dropping `id` durable: a trim when the floor has passed it, else
    /// a `Dropped` marker over its row.
    fn dropped_batch(&mut self, id: u64) -> Result<WriteBatch, OpLogError> {
        let mut batch = WriteBatch::new();
        if self.floor() <= id {
            batch.push(Mutation::AppendJournal {
                sequence: id,
                event: encode(id, &Entry::Dropped)?.into(),
            });
        }
        for mutation in Vec::<Mutation>::from(self.trim()) {
            batch.push(mutation);
        }
        Ok(batch)
    }

    /// The op in row `id` if it is committed and neither in flight nor finished.
    fn unsent_op(&self, id: u64, row: &[u8]) -> Result<Option<ClientOp>, OpLogError> {
        if self.in_flight.contains(&id) || self.done.contains(&id) || self.uncommitted.contains(&id)
        {
            return Ok(None);
        }
        Ok(match decode(id, row)? {
            Entry::Op(op) => Some(*op),
            Entry::Dropped => None,
        })
    }

    /// Moves the cursor forward past rows that were sent, skipped or found finished.
    fn advance_cursor(&mut self, to: u64) {
        self.cursor = self.cursor.max(to);
    }

    /// Chunks older than `position` were answered without an ack for some ops (an `ERROR`,
    /// or a transient rejection of their first op): those ops are sent again.
    fn finish_chunks_before(&mut self, position: usize) {
        let finished: Vec<Chunk> = self.chunks.drain(..position).collect();
        for chunk in finished {
            self.send_again(chunk.waiting);
        }
    }

    /// Op `id`, in flight, is finished for good.
    fn finish(&mut self, id: u64) {
        if self.in_flight.remove(&id) {
            self.pending = self.pending.saturating_sub(1);
            self.done.insert(id);
        }
    }

    /// Ops in flight that will be sent again.
    fn send_again(&mut self, ids: BTreeSet<u64>) {
        for id in ids {
            if self.in_flight.remove(&id) {
                self.cursor = self.cursor.min(id);
            }
        }
    }

    /// Every id below this is finished.
    fn floor(&self) -> u64 {
        let oldest_in_flight = self.in_flight.first().copied().unwrap_or(u64::MAX);
        let oldest_uncommitted = self.uncommitted.first().copied().unwrap_or(u64::MAX);
        self.cursor.min(oldest_in_flight).min(oldest_uncommitted)
    }

    /// Forgets finished ids below the floor and returns the trim that removes their rows.
    fn trim(&mut self) -> WriteBatch {
        let floor = self.floor();
        self.done = self.done.split_off(&floor);
        let mut batch = WriteBatch::new();
        if floor > self.trimmed_below {
            self.trimmed_below = floor;
            batch.push(Mutation::TrimJournal { below: floor });
        }
        batch
    }

    /// Sizes of the in-memory structures, for the memory-bound tests.
    #[cfg(test)]
    fn footprint(&self) -> (usize, usize, usize, usize) {
        (
            self.uncommitted.len(),
            self.chunks.len(),
            self.in_flight.len(),
            self.done.len(),
        )
    }
}

fn encode(id: u64, entry: &Entry) -> Result<Vec<u8>, OpLogError> {
    rmp_serde::to_vec_named(entry).map_err(|e| OpLogError::Encode {
        id,
        message: e.to_string(),
    })
}

fn decode(id: u64, bytes: &[u8]) -> Result<Entry, OpLogError> {
    rmp_serde::from_slice(bytes).map_err(|e| OpLogError::Corrupt {
        id,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::protocol::OpType;
    use crate::record::LwwRecord;
    use crate::store::{MemoryStore, RedbStore};
    use serde_json::json;

    fn record(key: &str) -> LwwRecord {
        LwwRecord {
            value: Some(json!({ "key": key }).into()),
            timestamp: Timestamp::new(1_700_000_000_000, 0, "client-a"),
            ttl_ms: None,
        }
    }

    fn op(key: &str) -> ClientOp {
        ClientOp {
            id: None,
            map_name: "todos".into(),
            key: key.into(),
            op_type: Some(OpType::Put),
            record: Some(record(key)),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        }
    }

    fn put(key: &str) -> Mutation {
        Mutation::put_lww("todos", key, &record(key)).unwrap()
    }

    /// One complete local write: append, commit, report the commit.
    async fn write(log: &mut OpLog, store: &Arc<dyn Store>, key: &str) -> u64 {
        let (id, batch) = log.append(op(key), vec![put(key)]).unwrap();
        store.commit(batch).await.unwrap();
        log.committed(id);
        id
    }

    async fn write_n(log: &mut OpLog, store: &Arc<dyn Store>, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(write(log, store, &format!("k{i}")).await);
        }
        ids
    }

    fn ids(ops: &[ClientOp]) -> Vec<u64> {
        ops.iter().map(|op| op.numeric_id().unwrap()).collect()
    }

    fn memory() -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }

    async fn stored_ids(store: &Arc<dyn Store>) -> Vec<u64> {
        let rows = store.read_journal(0, 1_000).await.unwrap();
        rows.into_iter().map(|(id, _)| id).collect()
    }

    #[tokio::test]
    async fn append_puts_the_record_and_the_op_in_one_batch() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        let (id, batch) = log.append(op("a"), vec![put("a")]).unwrap();
        assert_eq!(id, 1);
        let mutations = batch.mutations();
        assert_eq!(mutations.len(), 2);
        assert_eq!(mutations[0], put("a"));
        let Mutation::AppendJournal { sequence, event } = &mutations[1] else {
            panic!("expected the op row, got {:?}", mutations[1]);
        };
        assert_eq!(*sequence, 1);
        let Entry::Op(stored) = decode(1, event).unwrap() else {
            panic!("expected an op");
        };
        assert_eq!(stored.id.as_deref(), Some("1"));
        assert_eq!(stored.key, "a");
        // Not durable yet: neither pending nor sendable.
        assert_eq!(log.pending(), 0);
        store.commit(batch).await.unwrap();
        assert!(log.next_chunk(10, usize::MAX).await.unwrap().is_empty());
        log.committed(id);
        assert_eq!(log.pending(), 1);
        assert_eq!(ids(&log.next_chunk(10, usize::MAX).await.unwrap()), vec![1]);
        assert_eq!(log.in_flight(), 1);
    }

    #[tokio::test]
    async fn commits_may_finish_out_of_order() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        let (first, first_batch) = log.append(op("a"), vec![put("a")]).unwrap();
        let (second, second_batch) = log.append(op("b"), vec![put("b")]).unwrap();
        let (third, third_batch) = log.append(op("c"), vec![put("c")]).unwrap();
        store.commit(third_batch).await.unwrap();
        log.committed(third);
        store.commit(second_batch).await.unwrap();
        // The row of `second` is in the store, but its commit was not reported yet.
        assert_eq!(ids(&log.next_chunk(10, usize::MAX).await.unwrap()), vec![3]);
        assert_eq!(log.ack(3).0.mutations(), &[] as &[Mutation]);
        log.committed(second);
        store.commit(first_batch).await.unwrap();
        log.committed(first);
        // The earlier commits are sent now; the acked op is not sent twice.
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![1, 2]
        );
        let (trim, acked) = log.ack(2);
        assert_eq!(acked, vec![1, 2]);
        assert_eq!(trim.mutations(), &[Mutation::TrimJournal { below: 4 }]);
        store.commit(trim).await.unwrap();
        assert!(stored_ids(&store).await.is_empty());
        assert_eq!(log.pending(), 0);
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_a_gap_that_does_not_block_trimming() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        let (lost, _never_committed) = log.append(op("a"), vec![put("a")]).unwrap();
        log.commit_failed(lost);
        let kept = write(&mut log, &store, "b").await;
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![kept]
        );
        let (trim, _) = log.ack(kept);
        assert_eq!(trim.mutations(), &[Mutation::TrimJournal { below: 3 }]);
    }

    #[tokio::test]
    async fn chunks_respect_both_bounds_and_always_carry_one_op() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 10).await;
        let row_len = store.read_journal(1, 1).await.unwrap()[0].1.len();

        assert_eq!(
            ids(&log.next_chunk(3, usize::MAX).await.unwrap()),
            vec![1, 2, 3]
        );
        // Two rows fit in 2.5 rows' worth of bytes, a third does not.
        let chunk = log.next_chunk(100, row_len * 5 / 2).await.unwrap();
        assert_eq!(ids(&chunk), vec![4, 5]);
        // A byte budget below one op still sends one op, so a large op cannot stall the log.
        assert_eq!(ids(&log.next_chunk(100, 1).await.unwrap()), vec![6]);
        assert_eq!(
            ids(&log.next_chunk(0, usize::MAX).await.unwrap()),
            vec![7],
            "max_ops 0 still sends one op"
        );
        assert_eq!(
            ids(&log.next_chunk(100, usize::MAX).await.unwrap()),
            vec![8, 9, 10]
        );
        assert!(log.next_chunk(100, usize::MAX).await.unwrap().is_empty());
        assert_eq!(log.in_flight(), 10);
        assert_eq!(log.pending(), 10);
    }

    #[tokio::test]
    async fn acks_compare_ids_as_numbers_across_digit_boundaries() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 101).await;
        log.next_chunk(200, usize::MAX).await.unwrap();
        let (trim, acked) = log.ack(100);
        // "97" <= "100" is false as strings; numerically every op up to 100 is acked.
        assert_eq!(acked, (1..=100).collect::<Vec<_>>());
        assert_eq!(trim.mutations(), &[Mutation::TrimJournal { below: 101 }]);
        assert_eq!(log.pending(), 1);
        // Op 101 was held back by the server (ack before it): it is sent again.
        assert_eq!(log.in_flight(), 0);
        assert_eq!(
            ids(&log.next_chunk(200, usize::MAX).await.unwrap()),
            vec![101]
        );
    }

    #[tokio::test]
    async fn acks_trim_durably_and_ids_continue_after_a_restart() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 5).await;
        log.next_chunk(3, usize::MAX).await.unwrap();
        let (trim, acked) = log.ack(3);
        assert_eq!(acked, vec![1, 2, 3]);
        store.commit(trim).await.unwrap();
        assert_eq!(stored_ids(&store).await, vec![4, 5]);
        drop(log);

        let mut reopened = OpLog::open(store.clone()).await.unwrap();
        assert_eq!(reopened.pending(), 2);
        assert_eq!(reopened.in_flight(), 0);
        assert_eq!(write(&mut reopened, &store, "next").await, 6);
        assert_eq!(
            ids(&reopened.next_chunk(10, usize::MAX).await.unwrap()),
            vec![4, 5, 6]
        );
        let (trim, _) = reopened.ack(6);
        store.commit(trim).await.unwrap();
        drop(reopened);

        // An empty log still never reuses an id.
        let mut empty = OpLog::open(store.clone()).await.unwrap();
        assert_eq!(empty.pending(), 0);
        assert_eq!(write(&mut empty, &store, "after").await, 7);
    }

    #[tokio::test]
    async fn a_redb_log_survives_the_app_being_killed_before_reconnecting() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
            let mut log = OpLog::open(store.clone()).await.unwrap();
            write_n(&mut log, &store, 4).await;
            // Sent but never acked: the app dies with these in flight.
            log.next_chunk(2, usize::MAX).await.unwrap();
            store.close().await.unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let mut log = OpLog::open(store.clone()).await.unwrap();
        assert_eq!(log.pending(), 4);
        let sent = log.next_chunk(10, usize::MAX).await.unwrap();
        assert_eq!(ids(&sent), vec![1, 2, 3, 4]);
        assert_eq!(sent[2].key, "k2");
        assert_eq!(sent[2].record, Some(record("k2")));
        let (trim, _) = log.ack(4);
        store.commit(trim).await.unwrap();
        assert_eq!(write(&mut log, &store, "late").await, 5);
        store.close().await.unwrap();

        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let log = OpLog::open(store.clone()).await.unwrap();
        assert_eq!(log.pending(), 1);
        assert_eq!(stored_ids(&store).await, vec![5]);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn acks_of_a_previous_session_or_unknown_ids_change_nothing() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 3).await;
        log.next_chunk(10, usize::MAX).await.unwrap();
        log.disconnected();
        assert_eq!(log.in_flight(), 0);
        // The old connection's ack arrives late: the ops are not marked synced ...
        let (trim, acked) = log.ack(3);
        assert!(trim.is_empty());
        assert!(acked.is_empty());
        assert_eq!(log.pending(), 3);
        // ... and an unrelated id (e.g. a call id) cannot discard unsent ops either.
        assert!(log.ack(1_000).1.is_empty());
        // They are all sent again on the next session.
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![1, 2, 3]
        );
        assert_eq!(log.ack(3).1, vec![1, 2, 3]);
        assert_eq!(log.pending(), 0);
    }

    #[tokio::test]
    async fn a_transient_rejection_resends_the_op_and_later_acks_cannot_cover_it() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 8).await;
        assert_eq!(
            ids(&log.next_chunk(5, usize::MAX).await.unwrap()),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(
            ids(&log.next_chunk(5, usize::MAX).await.unwrap()),
            vec![6, 7, 8]
        );

        // The server answers the first batch: op 3 hit a 503, so its ack stops at 2.
        let (trim, rejection) = log.rejected(3, Some(503));
        assert_eq!(rejection, Rejection::Retry);
        assert!(trim.is_empty());
        assert_eq!(log.in_flight(), 5);
        let (trim, acked) = log.ack(2);
        assert_eq!(acked, vec![1, 2]);
        assert_eq!(trim.mutations(), &[Mutation::TrimJournal { below: 3 }]);
        // The retry goes out before the second batch is answered.
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![3, 4, 5]
        );
        // The second batch's ack names 8, which is above 3, but 3 is not in that batch.
        let (trim, acked) = log.ack(8);
        assert_eq!(acked, vec![6, 7, 8]);
        assert!(
            trim.is_empty(),
            "op 3 is still pending, so nothing above it is trimmed"
        );
        assert_eq!(log.pending(), 3);
        let (trim, acked) = log.ack(5);
        assert_eq!(acked, vec![3, 4, 5]);
        assert_eq!(trim.mutations(), &[Mutation::TrimJournal { below: 9 }]);
        assert_eq!(log.pending(), 0);
        assert!(log.next_chunk(10, usize::MAX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_transient_rejection_of_a_chunks_first_op_resends_the_whole_chunk() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 3).await;
        log.next_chunk(10, usize::MAX).await.unwrap();
        // No ack follows a batch whose first op was held back.
        assert_eq!(log.rejected(1, Some(503)).1, Rejection::Retry);
        assert_eq!(log.in_flight(), 0);
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![1, 2, 3]
        );
    }

    #[tokio::test]
    async fn a_final_rejection_removes_the_op_and_the_ack_covers_the_rest() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 3).await;
        log.next_chunk(10, usize::MAX).await.unwrap();
        let (_, rejection) = log.rejected(2, Some(403));
        assert_eq!(rejection, Rejection::Final);
        assert_eq!(log.pending(), 2);
        assert_eq!(log.rejected(2, Some(403)).1, Rejection::Stale);
        let (trim, acked) = log.ack(3);
        assert_eq!(acked, vec![1, 3]);
        assert_eq!(trim.mutations(), &[Mutation::TrimJournal { below: 4 }]);
        assert_eq!(log.pending(), 0);
        // A 2026-01 rejection carries no code: final too.
        write(&mut log, &store, "x").await;
        log.next_chunk(10, usize::MAX).await.unwrap();
        let (trim, rejection) = log.rejected(4, None);
        assert_eq!(rejection, Rejection::Final);
        assert_eq!(trim.mutations(), &[Mutation::TrimJournal { below: 5 }]);
    }

    #[tokio::test]
    async fn an_unanswered_earlier_chunk_is_resent_when_a_later_one_is_acked() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 4).await;
        log.next_chunk(2, usize::MAX).await.unwrap();
        log.next_chunk(2, usize::MAX).await.unwrap();
        // The first batch got an ERROR instead of an ack; the second was acked.
        assert_eq!(log.ack(4).1, vec![3, 4]);
        assert_eq!(log.in_flight(), 0);
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![1, 2]
        );
    }

    #[tokio::test]
    async fn drop_oldest_of_a_prefix_op_trims_it() {
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 2).await;
        let (dropped, batch) = log.drop_oldest().await.unwrap().unwrap();
        assert_eq!(dropped.numeric_id().unwrap(), 1);
        assert_eq!(batch.mutations(), &[Mutation::TrimJournal { below: 2 }]);
        store.commit(batch).await.unwrap();
        assert_eq!(log.pending(), 1);
        assert_eq!(stored_ids(&store).await, vec![2]);
        assert_eq!(ids(&log.next_chunk(10, usize::MAX).await.unwrap()), vec![2]);
        assert!(log.drop_oldest().await.unwrap().is_none(), "all in flight");
    }

    #[tokio::test]
    async fn drop_oldest_behind_ops_in_flight_is_durable_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let mut log = OpLog::open(store.clone()).await.unwrap();
        write_n(&mut log, &store, 4).await;
        log.next_chunk(2, usize::MAX).await.unwrap();
        let (dropped, batch) = log.drop_oldest().await.unwrap().unwrap();
        assert_eq!(dropped.numeric_id().unwrap(), 3);
        assert!(
            !batch
                .mutations()
                .iter()
                .any(|m| matches!(m, Mutation::TrimJournal { .. })),
            "ops 1 and 2 are in flight, so nothing can be trimmed yet"
        );
        // Even before the marker is committed, a retry that moves the cursor back skips it.
        log.disconnected();
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![1, 2, 4]
        );
        store.commit(batch).await.unwrap();
        assert_eq!(log.pending(), 3);
        store.close().await.unwrap();

        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let mut log = OpLog::open(store.clone()).await.unwrap();
        assert_eq!(log.pending(), 3);
        assert_eq!(
            ids(&log.next_chunk(10, usize::MAX).await.unwrap()),
            vec![1, 2, 4]
        );
        let (trim, acked) = log.ack(4);
        assert_eq!(acked, vec![1, 2, 4]);
        store.commit(trim).await.unwrap();
        assert!(
            stored_ids(&store).await.is_empty(),
            "the marker is trimmed too"
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_hundred_thousand_ops_keep_memory_bounded() {
        const OPS: usize = 100_000;
        const CHUNK: usize = 1_000;
        let store = memory();
        let mut log = OpLog::open(store.clone()).await.unwrap();
        // Offline: the log grows in the store only, committed in groups of writes.
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        for i in 0..OPS {
            let (id, write) = log.append(op(&format!("k{i}")), vec![]).unwrap();
            batch.extend(Vec::<Mutation>::from(write));
            waiting.push(id);
            if waiting.len() == 10_000 || i + 1 == OPS {
                assert_eq!(log.footprint().0, waiting.len());
                store
                    .commit(std::mem::take(&mut batch).into())
                    .await
                    .unwrap();
                for id in waiting.drain(..) {
                    log.committed(id);
                }
            }
        }
        assert_eq!(log.pending(), OPS as u64);
        assert_eq!(log.footprint(), (0, 0, 0, 0));

        // Online: a window of two chunks streams the whole log.
        let mut acked_total = 0;
        log.next_chunk(CHUNK, usize::MAX).await.unwrap();
        loop {
            let sent = log.next_chunk(CHUNK, usize::MAX).await.unwrap();
            let (uncommitted, chunks, in_flight, done) = log.footprint();
            assert_eq!(uncommitted, 0);
            assert!(chunks <= 2, "{chunks} chunks in flight");
            assert!(in_flight <= 2 * CHUNK, "{in_flight} ops in flight");
            assert!(done <= CHUNK, "{done} finished ids kept");
            let oldest = log
                .chunks
                .front()
                .map(|chunk| chunk.sent[chunk.sent.len() - 1]);
            let Some(last) = oldest else { break };
            let (trim, acked) = log.ack(last);
            acked_total += acked.len();
            store.commit(trim).await.unwrap();
            if sent.is_empty() && log.in_flight() == 0 {
                break;
            }
        }
        assert_eq!(acked_total, OPS);
        assert_eq!(log.pending(), 0);
        assert_eq!(log.footprint(), (0, 0, 0, 0));
        assert!(stored_ids(&store).await.is_empty());
    }
}
