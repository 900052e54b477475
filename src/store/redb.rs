//! [`RedbStore`]: the durable [`Store`] backend on one redb file, `<dir>/topgun.redb`, with a
//! write-ahead log, `<dir>/topgun.wal.*`, in front of it and the journal's entries in block
//! files, `<dir>/journal/` ([`journal_blocks`]).
//!
//! Layout: one table per kind of data (the journal as locators of its blocks, keyed by their
//! first sequence, `journal_blocks`), never one per map, so map names need no grammar
//! (TOPGUN-REFERENCE.md defect 27). Map-scoped rows use redb tuple keys `(map, key)` /
//! `(map, tag)`, which compare element by element, so two maps can never collide and one map's
//! rows form a contiguous range. Values are MessagePack ([`super::codec`]); an LWW row arrives
//! already encoded ([`super::EncodedLww`]), so the log frame and the checkpoint copy its bytes.
//!
//! Writes (write-behind): every `commit` queues its batch on a bounded channel (backpressure)
//! to ONE writer thread. The writer drains whatever is queued and, per batch, checks its map
//! kinds, merges it into an in-memory overlay ([`overlay`]) and frames it as one log record
//! ([`wal`]); then it appends the group's records and makes them durable with ONE `fdatasync`
//! of the log, and only then answers every caller. An ack therefore always follows the fsync
//! (defect 33), and the fsync is shared by everything that arrived meanwhile. A rejected batch
//! leaves no trace while the rest of its group still commits. `commit_queued` resolves as soon
//! as its batch is queued; the writer logs a failure of such a batch itself.
//!
//! Nobody waits for a queued batch's fsync, so a run of queued batches only stays buffered in
//! memory: the buffer is written and synced (with one `fdatasync` for all of it) when a
//! waiting `commit` joins it, before a read or checkpoint, when it grows past
//! `MAX_UNSYNCED_LOG_BYTES`, on close, and at the latest
//! [`RedbOptions::queued_sync_delay`] after its first batch. That delay is how much of the
//! APPLIED writes a crash can lose; syncing thousands of groups a second that nobody awaits
//! cost the server more CPU than it bought.
//!
//! Checkpoints: every [`RedbOptions::checkpoint_interval`], or sooner when the overlay holds
//! more than [`RedbOptions::max_overlay_rows`] map rows or the log segment exceeds
//! [`RedbOptions::max_log_bytes`], the writer seals the log segment, freezes the overlay and
//! starts a fresh one, and a checkpoint thread writes the frozen overlay's changed rows into
//! redb in ONE durable transaction, together with the highest log sequence they cover (its
//! journal entries go to the block files, synced before that transaction commits); then that
//! thread deletes the sealed segment. Commits go on meanwhile (reading base rows from the frozen
//! overlay before redb), so a checkpoint never stalls the acks. A hot key is written to redb
//! once per checkpoint instead of once per commit. At most one checkpoint runs at a time.
//!
//! Recovery: opening loads redb, replays the log records whose sequence is above the
//! checkpointed one (stopping at the first torn or corrupt record, where the log is
//! truncated), and checkpoints. A failed log append or checkpoint leaves the log's tail or the
//! overlay in doubt, so the writer then fails every later batch and read; reopening the store
//! recovers everything whose commit resolved.
//!
//! Reads go through the writer's queue as a checkpoint request (the writer finishes any
//! background checkpoint, then checkpoints on its own thread), so they see every batch queued
//! before them, then run in a redb read transaction on `tokio::task::spawn_blocking`. A map
//! load skips the checkpoint when nothing of that map is waiting to be written, so touching
//! a new or quiet map never stalls the writer; a journal read skips it when redb's entries
//! answer it below everything unwritten; a metadata read takes a value put since the last
//! checkpoint from memory (after syncing the log) and any other from redb, never
//! checkpointing; a readiness probe only asks the writer whether it still takes work.
//! `close()` (or `Drop`) stops accepting work, lets the writer finish everything already
//! queued and checkpoint, joins it, and releases the files. What a crash can lose: only batches
//! whose `commit` has not resolved, and queued batches younger than the sync delay.

mod journal_blocks;
mod overlay;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{Notify, mpsc, oneshot};

use self::journal_blocks::BlockFiles;
use self::overlay::{Base, Overlay};
use self::wal::{LogRecord, Wal};
use super::codec::{decode, decode_lww, decode_mutations, encode_mutations, kind_from_code};
use super::{
    BoxFuture, CounterSnapshot, JournalRow, MapKind, MapSnapshot, Store, StoreError, WriteBatch,
};
use std::collections::{BTreeMap, BTreeSet};

/// The database file inside the store directory.
const FILE_NAME: &str = "topgun.redb";
/// The layout and encoding version this build writes and reads. Version 2 added the
/// write-ahead log and the checkpoint row; version 3 stored the journal in runs of entries;
/// version 4 keeps the journal's entries in block files and only their locators in redb.
const FORMAT_VERSION: u32 = 4;
/// Formats opened and upgraded in place: 1 had no write-ahead log; 2 kept one journal row per
/// entry, 3 runs of entries in rows (the upgrade moves both into block files).
const UPGRADABLE_FORMAT_VERSIONS: [u32; 3] = [1, 2, 3];
const FORMAT_KEY: &str = "version";

const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("store_format");
const KINDS: TableDefinition<&str, u8> = TableDefinition::new("map_kinds");
const LWW: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("lww_records");
const OR_RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("or_records");
const OR_TOMBSTONES: TableDefinition<(&str, &str), ()> = TableDefinition::new("or_tombstones");
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
const FENCING: TableDefinition<&str, u64> = TableDefinition::new("fencing_tokens");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Format 2's journal, one entry per row: moved into block files by the upgrade, then deleted.
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// Format 3's journal, runs of entries: moved into block files by the upgrade, then deleted.
const JOURNAL_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("journal_chunks");
/// Where each block of journal entries is (see [`journal_blocks`]).
const JOURNAL_BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("journal_blocks");
/// One row, [`JOURNAL_HEAD_KEY`] → the highest sequence ever appended.
const JOURNAL_HEAD: TableDefinition<&str, u64> = TableDefinition::new("journal_head");
const JOURNAL_HEAD_KEY: &str = "last";
/// One row, [`CHECKPOINT_KEY`] → the highest log sequence redb already contains.
const CHECKPOINT: TableDefinition<&str, u64> = TableDefinition::new("log_checkpoint");
const CHECKPOINT_KEY: &str = "sequence";

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// Batches that may wait for the writer before `commit` callers are made to wait.
    pub queue_capacity: usize,
    /// Most batches made durable by one log flush.
    pub max_group_batches: usize,
    /// Longest time committed changes stay only in the log and the overlay before a
    /// checkpoint copies them into redb.
    pub checkpoint_interval: Duration,
    /// Rows the in-memory overlay may hold (changed rows plus rows cached from redb) before a
    /// checkpoint is forced and the cache dropped: the overlay's memory bound. While a
    /// checkpoint runs, its frozen overlay is held as well, so memory holds up to twice this.
    /// Journal entries are not rows: [`Self::max_log_bytes`] bounds them, as each is in the log.
    pub max_overlay_rows: usize,
    /// Log segment size that forces a checkpoint: bounds the log files, the replay time after
    /// a crash, and the bytes of changes held only in the overlay.
    pub max_log_bytes: u64,
    /// redb's page cache. redb's own default (1 GiB) let a server with a full journal sit at
    /// ~700 MiB resident; the OS page cache still holds the file behind a smaller one.
    pub cache_bytes: usize,
    /// Longest time a batch committed with `commit_queued` (nobody awaits its durability)
    /// stays buffered before the log is written and synced: the window in which a crash can
    /// lose an acknowledged APPLIED / FIRE_AND_FORGET write. A waiting `commit`, a read, a
    /// checkpoint or close syncs sooner. Zero syncs every drained group, as `commit` does.
    pub queued_sync_delay: Duration,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_group_batches: 256,
            checkpoint_interval: Duration::from_secs(1),
            max_overlay_rows: 100_000,
            max_log_bytes: 64 << 20,
            cache_bytes: 128 << 20,
            queued_sync_delay: Duration::from_millis(5),
        }
    }
}

/// How well group commit is doing: batches acknowledged vs. log flushes and checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Batches made durable by log flushes.
    pub batches: u64,
    /// Log flushes (one `write` and `fdatasync` each).
    pub flushes: u64,
    /// Checkpoints committed to redb (one durable transaction each).
    pub checkpoints: u64,
}

/// The durable store. See the module documentation for the write path.
#[derive(Debug)]
pub struct RedbStore {
    path: PathBuf,
    journal_dir: PathBuf,
    open: Mutex<Option<Open>>,
    stats: Arc<StatCounters>,
}

/// What exists only while the store is open.
#[derive(Debug)]
struct Open {
    db: Arc<Database>,
    queue: mpsc::Sender<Job>,
    /// Cuts the writer's linger short: someone waits for a job just queued.
    urgent: Arc<Notify>,
    writer: JoinHandle<()>,
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Work for the writer thread, in queue order.
#[derive(Debug)]
enum Job {
    /// Commit a batch; reply once it is durable. Without a reply nobody waits (a queued
    /// commit): the batch may stay buffered for up to the sync delay, and a failure is logged.
    Write {
        batch: WriteBatch,
        reply: Option<Reply>,
    },
    /// Checkpoint everything queued before; reply once redb holds it (a read follows).
    /// With `only_for`, skip the checkpoint when redb already holds everything of that map
    /// (a map load then costs no checkpoint, which matters when maps are touched often).
    Checkpoint {
        reply: Reply,
        only_for: Option<String>,
    },
    /// Reply whether the writer still takes work; touches nothing (a readiness probe).
    Probe { reply: Reply },
    /// Reply a metadata value put since the last checkpoint (in the overlay or the one a
    /// background checkpoint is writing), made durable first; `None` when redb holds the
    /// latest (if any), so the read needs no checkpoint.
    Meta {
        key: String,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, StoreError>>,
    },
    /// Reply what of the journal redb may not hold yet (see [`UnwrittenJournal`]).
    UnwrittenJournal {
        reply: oneshot::Sender<Result<UnwrittenJournal, StoreError>>,
    },
}

/// What of the journal redb may lack, in the overlay and in the one a background checkpoint
/// is writing: entries from `from` on, and trims below `trim_below` (0: none). A journal
/// read that redb answers entirely below both needs no checkpoint first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UnwrittenJournal {
    from: Option<u64>,
    trim_below: u64,
}

#[derive(Debug, Default)]
struct StatCounters {
    batches: AtomicU64,
    flushes: AtomicU64,
    checkpoints: AtomicU64,
}

impl RedbStore {
    /// Opens (creating if needed) the store in directory `dir` with default tuning.
    /// Blocks on file I/O: call it at startup or from a blocking task.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, RedbOptions::default())
    }

    /// Opens (creating if needed) the store in directory `dir`, replaying the write-ahead log
    /// left by a crash. Blocks on file I/O: call it at startup or from a blocking task.
    pub fn open_with(dir: impl AsRef<Path>, options: RedbOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_error("create store directory", dir, e))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(backend(format!("open {}", path.display())))?;
        let mut journal_files = BlockFiles::open(&dir.join(journal_blocks::DIR_NAME))?;
        let checkpointed = initialise(&db, &mut journal_files)?;
        let journal_dir = journal_files.dir().to_owned();
        let db = Arc::new(db);
        let (wal, records) = Wal::open(dir)?;
        let stats = Arc::new(StatCounters::default());
        let mut writer = Writer {
            db: Arc::clone(&db),
            wal,
            journal_files: Arc::new(Mutex::new(journal_files)),
            overlay: Overlay::default(),
            options,
            next_sequence: checkpointed + 1,
            last_checkpoint: Instant::now(),
            background: None,
            stats: Arc::clone(&stats),
            failed: None,
            unsynced: Unsynced::default(),
            urgent: Arc::new(Notify::new()),
        };
        writer.replay(records, checkpointed)?;
        writer.checkpoint_now()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| io_error("start the writer runtime for", &path, e))?;
        let (queue, jobs) = mpsc::channel(options.queue_capacity.max(1));
        let urgent = Arc::clone(&writer.urgent);
        let writer = std::thread::Builder::new()
            .name("topgun-store-writer".into())
            .spawn(move || runtime.block_on(writer.run(jobs)))
            .map_err(|e| io_error("start the writer thread for", &path, e))?;
        Ok(Self {
            path,
            journal_dir,
            open: Mutex::new(Some(Open {
                db,
                queue,
                urgent,
                writer,
            })),
            stats,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Group-commit counters since the store was opened.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            flushes: self.stats.flushes.load(Ordering::Relaxed),
            checkpoints: self.stats.checkpoints.load(Ordering::Relaxed),
        }
    }

    fn lock_open(&self) -> MutexGuard<'_, Option<Open>> {
        // The guarded value is only ever taken or cloned from, so a poisoned lock still
        // holds a consistent value.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.lock_open()
            .as_ref()
            .map(|open| Arc::clone(&open.db))
            .ok_or(StoreError::Closed)
    }

    fn queue(&self) -> Result<mpsc::Sender<Job>, StoreError> {
        self.lock_open()
            .as_ref()
            .map(|open| open.queue.clone())
            .ok_or(StoreError::Closed)
    }

    /// Queues `job` for the writer (waiting for room) and returns where its outcome arrives.
    /// The caller will wait for it, so a lingering writer is woken at once.
    async fn enqueue<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let urgent = self.urgent()?;
        self.send(job(reply)).await?;
        urgent.notify_one();
        Ok(outcome)
    }

    fn urgent(&self) -> Result<Arc<Notify>, StoreError> {
        self.lock_open()
            .as_ref()
            .map(|open| Arc::clone(&open.urgent))
            .ok_or(StoreError::Closed)
    }

    /// Queues `job` for the writer, waiting for room. The sender is dropped on return:
    /// holding it while waiting for an outcome would keep a closing writer alive for nothing.
    async fn send(&self, job: Job) -> Result<(), StoreError> {
        self.queue()?
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Has the writer checkpoint everything queued so far, then runs `read` in a read
    /// transaction on the blocking pool.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        self.read_scoped(None, read)
    }

    /// [`RedbStore::read`] of one map's rows only: no checkpoint when redb already holds
    /// everything queued so far for `map`.
    fn read_scoped<T: Send + 'static>(
        &self,
        only_for: Option<String>,
        read: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        Box::pin(async move {
            self.ask(|reply| Job::Checkpoint { reply, only_for })
                .await?;
            self.read_redb(read).await
        })
    }

    /// Queues `job` for the writer and waits for its answer.
    async fn ask<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        self.enqueue(job)
            .await?
            .await
            .map_err(|_| StoreError::WriterStopped)?
    }

    /// Reads journal entries from what redb and the block files hold now, on the blocking pool.
    async fn read_journal_blocks(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<JournalRow>, StoreError> {
        let db = self.database()?;
        let dir = self.journal_dir.clone();
        tokio::task::spawn_blocking(move || journal_blocks::read(&db, &dir, from, limit))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `read` in a read transaction on the blocking pool, on what redb holds now
    /// (callers decide whether a checkpoint must come first).
    async fn read_redb<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.database()?;
        tokio::task::spawn_blocking(move || {
            let txn = db
                .begin_read()
                .map_err(backend("begin a read transaction"))?;
            read(&txn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl Open {
    /// Stops accepting batches, waits for the writer to finish the queued ones and
    /// checkpoint, and releases the file (once no read is still running).
    fn shut_down(self) -> Result<(), StoreError> {
        let Self {
            db,
            queue,
            urgent,
            writer,
        } = self;
        drop(queue);
        // A lingering writer notices the closed queue at once.
        urgent.notify_one();
        let joined = writer.join();
        drop(db);
        joined.map_err(|_| StoreError::Task("the store writer thread panicked".into()))
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        let open = self
            .open
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Err(error)) = open.map(Open::shut_down) {
            tracing::error!(%error, path = %self.path.display(), "store shutdown failed");
        }
    }
}

impl Store for RedbStore {
    fn load_map(&self, map: &str) -> BoxFuture<'_, Result<Option<MapSnapshot>, StoreError>> {
        let map = map.to_owned();
        self.read_scoped(Some(map.clone()), move |txn| read_map(txn, &map))
    }

    fn list_maps(&self) -> BoxFuture<'_, Result<Vec<(String, MapKind)>, StoreError>> {
        self.read(|txn| {
            let kinds = txn.open_table(KINDS).map_err(backend("open map kinds"))?;
            let mut maps = Vec::new();
            for entry in kinds.iter().map_err(backend("list maps"))? {
                let (name, code) = entry.map_err(backend("list maps"))?;
                let name = name.value();
                maps.push((name.to_owned(), kind_from_code(name, code.value())?));
            }
            Ok(maps)
        })
    }

    fn load_counters(
        &self,
    ) -> BoxFuture<'_, Result<BTreeMap<String, CounterSnapshot>, StoreError>> {
        self.read(|txn| {
            let table = txn.open_table(COUNTERS).map_err(backend("open counters"))?;
            let mut counters = BTreeMap::new();
            for entry in table.iter().map_err(backend("read counters"))? {
                let (name, state) = entry.map_err(backend("read counters"))?;
                let name = name.value();
                counters.insert(name.to_owned(), decode("counter", name, state.value())?);
            }
            Ok(counters)
        })
    }

    fn load_fencing_tokens(&self) -> BoxFuture<'_, Result<BTreeMap<String, u64>, StoreError>> {
        self.read(|txn| {
            let table = txn
                .open_table(FENCING)
                .map_err(backend("open fencing tokens"))?;
            let mut tokens = BTreeMap::new();
            for entry in table.iter().map_err(backend("read fencing tokens"))? {
                let (lock, token) = entry.map_err(backend("read fencing tokens"))?;
                tokens.insert(lock.value().to_owned(), token.value());
            }
            Ok(tokens)
        })
    }

    /// Reads redb directly when what it holds answers the read: `limit` entries all below
    /// anything unwritten, or everything when nothing is. Otherwise (the read reaches entries
    /// or trims still in memory) it checkpoints first, like every read. A consumer catching
    /// up on history so no longer makes the writer checkpoint for each page.
    fn read_journal(
        &self,
        from_sequence: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalRow>, StoreError>> {
        Box::pin(async move {
            let unwritten = self.ask(|reply| Job::UnwrittenJournal { reply }).await?;
            if unwritten.trim_below <= from_sequence {
                let rows = self.read_journal_blocks(from_sequence, limit).await?;
                let answered = match unwritten.from {
                    None => true,
                    Some(floor) => {
                        rows.len() == limit && rows.last().is_none_or(|(seq, _)| *seq < floor)
                    }
                };
                if answered {
                    return Ok(rows);
                }
            }
            self.ask(|reply| Job::Checkpoint {
                reply,
                only_for: None,
            })
            .await?;
            self.read_journal_blocks(from_sequence, limit).await
        })
    }

    fn last_journal_sequence(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.read(|txn| {
            let table = txn
                .open_table(JOURNAL_HEAD)
                .map_err(backend("open the journal head"))?;
            let head = table
                .get(JOURNAL_HEAD_KEY)
                .map_err(backend("read the journal head"))?;
            Ok(head.map_or(0, |v| v.value()))
        })
    }

    /// Answered by the writer from its queue, behind the commits before it: it shows the
    /// writer alive, keeping up and not failed, without the checkpoint a read would force
    /// (which stalled every commit for as long as it took, each time a probe came).
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ask(|reply| Job::Probe { reply }))
    }

    /// Answered from memory when the value was put since the last checkpoint, else from
    /// redb without a checkpoint (a client reads its sync watermark at every walk).
    fn get_meta(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let unwritten = self
                .ask(|reply| Job::Meta {
                    key: key.clone(),
                    reply,
                })
                .await?;
            if let Some(value) = unwritten {
                return Ok(Some(value));
            }
            self.read_redb(move |txn| {
                let table = txn.open_table(META).map_err(backend("open metadata"))?;
                let value = table.get(key.as_str()).map_err(backend("read metadata"))?;
                Ok(value.map(|v| v.value().to_vec()))
            })
            .await
        })
    }

    fn commit(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let outcome = self
                .enqueue(|reply| Job::Write {
                    batch,
                    reply: Some(reply),
                })
                .await?;
            outcome.await.map_err(|_| StoreError::WriterStopped)?
        })
    }

    fn commit_queued(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.send(Job::Write { batch, reply: None }))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let Some(open) = self.lock_open().take() else {
                return Ok(());
            };
            tokio::task::spawn_blocking(move || open.shut_down())
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }
}

/// Creates every table, checks (or stamps) the format version, upgrades an older format, and
/// returns the highest log sequence the database already contains.
fn initialise(db: &Database, journal_files: &mut BlockFiles) -> Result<u64, StoreError> {
    let txn = db
        .begin_write()
        .map_err(backend("begin the initial transaction"))?;
    let checkpointed = {
        let mut format = txn
            .open_table(FORMAT)
            .map_err(backend("open the format table"))?;
        let found = format
            .get(FORMAT_KEY)
            .map_err(backend("read the format version"))?
            .map(|v| v.value());
        match found {
            None => {
                format
                    .insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(backend("write the format version"))?;
            }
            Some(found) if UPGRADABLE_FORMAT_VERSIONS.contains(&found) => {
                move_journal_into_blocks(&txn, journal_files)?;
                format
                    .insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(backend("write the format version"))?;
            }
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        WriteTables::open(&txn)?;
        let blocks = txn
            .open_table(JOURNAL_BLOCKS)
            .map_err(backend("open the journal blocks"))?;
        journal_blocks::mark_files_without_blocks(&blocks, journal_files)?;
        txn.open_table(CHECKPOINT)
            .map_err(backend("open the checkpoint table"))?
            .get(CHECKPOINT_KEY)
            .map_err(backend("read the checkpointed log sequence"))?
            .map_or(0, |v| v.value())
    };
    txn.commit().map_err(backend("create the tables"))?;
    // Not fatal: an orphan costs disk space, not correctness, and the next open or trim
    // retries.
    if let Err(error) = journal_files.remove_unreferenced() {
        tracing::warn!(%error, "cannot delete journal block files no block is in");
    }
    Ok(checkpointed)
}

/// The upgrade from formats 1 to 3: their journal entries, in redb rows, move into block
/// files (synced before the transaction commits), and their tables are deleted.
fn move_journal_into_blocks(
    txn: &WriteTransaction,
    journal_files: &mut BlockFiles,
) -> Result<(), StoreError> {
    let open_error = backend("open the journal for the upgrade");
    {
        let single = txn.open_table(JOURNAL).map_err(open_error.clone())?;
        let runs = txn.open_table(JOURNAL_CHUNKS).map_err(open_error.clone())?;
        let mut blocks = txn.open_table(JOURNAL_BLOCKS).map_err(open_error)?;
        journal_blocks::migrate(&single, &runs, &mut blocks, journal_files)?;
    }
    let delete_error = backend("delete the old journal tables");
    txn.delete_table(JOURNAL).map_err(delete_error.clone())?;
    txn.delete_table(JOURNAL_CHUNKS).map_err(delete_error)?;
    Ok(())
}

/// The writer thread's state: the log, the overlay, and what it takes to checkpoint them.
struct Writer {
    db: Arc<Database>,
    wal: Wal,
    /// Where checkpoints append journal entries (one checkpoint at a time uses it).
    journal_files: Arc<Mutex<BlockFiles>>,
    overlay: Overlay,
    options: RedbOptions,
    /// The log sequence the next accepted batch gets; never reused, so replay can tell
    /// checkpointed records from newer ones.
    next_sequence: u64,
    last_checkpoint: Instant,
    /// The checkpoint running in the background, if any (at most one).
    background: Option<Background>,
    stats: Arc<StatCounters>,
    /// Why the writer stopped accepting work: a log append or checkpoint failed.
    failed: Option<StoreError>,
    /// Staged records not yet written to the log, and who waits for them.
    unsynced: Unsynced,
    /// Notified when a job somebody waits for was queued (see [`QUEUED_LINGER`]).
    urgent: Arc<Notify>,
}

/// A checkpoint on its own thread, writing an overlay the writer no longer changes.
struct Background {
    frozen: Arc<Overlay>,
    thread: JoinHandle<Result<(), StoreError>>,
    started: Instant,
}

/// How often an otherwise idle writer looks whether its background checkpoint finished.
const BACKGROUND_POLL: Duration = Duration::from_millis(5);

/// How long the writer lets queued commits gather after a run of nothing but them, unless a
/// waiting job arrives: under load, waking the writer for every batch (a futex wake on the
/// sender's side, a context switch on the writer's) cost more than the work itself. Nobody
/// waits for these batches, and the sync delay still bounds how long they stay unsynced.
const QUEUED_LINGER: Duration = Duration::from_millis(1);

/// The largest log buffer kept for the next group: one huge batch must not pin its memory.
const MAX_KEPT_LOG_BUFFER: usize = 4 << 20;

/// Buffered log bytes of queued batches that force a flush before the sync delay is up: bounds
/// the buffer's memory and the size of one write.
const MAX_UNSYNCED_LOG_BYTES: usize = 1 << 20;

/// Accepted batches whose log records wait for the next flush.
#[derive(Default)]
struct Unsynced {
    /// Their framed log records.
    framed: Vec<u8>,
    /// The callers waiting for durability.
    replies: Vec<Reply>,
    /// Batches nobody waits for (queued commits).
    queued: u64,
    /// When the oldest of them was staged.
    since: Option<Instant>,
}

impl Unsynced {
    fn batches(&self) -> u64 {
        self.replies.len() as u64 + self.queued
    }
}

/// One drained run of jobs: base rows are read from one snapshot per group; the end of a
/// checkpoint invalidates it.
#[derive(Default)]
struct Group {
    base: Option<Base>,
}

impl Writer {
    /// Group commit until every sender is gone and the queue is empty; then checkpoint.
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let max_group = self.options.max_group_batches.max(1);
        let mut received = Vec::with_capacity(max_group);
        let mut group = Group::default();
        loop {
            let count = match self.next_wake() {
                Some(wait) => {
                    tokio::time::timeout(wait, jobs.recv_many(&mut received, max_group)).await
                }
                None => Ok(jobs.recv_many(&mut received, max_group).await),
            };
            let mut linger = false;
            match count {
                Ok(0) => break,
                Ok(drained) => {
                    let anyone_waits = self.process(&mut received, &mut group);
                    linger = !anyone_waits && drained < max_group;
                }
                Err(_elapsed) => {}
            }
            self.flush_if_due();
            if self
                .background
                .as_ref()
                .is_some_and(|background| background.thread.is_finished())
            {
                self.finish_background();
            }
            self.start_background_if_due();
            if linger && !self.options.queued_sync_delay.is_zero() {
                let wait = self
                    .next_wake()
                    .map_or(QUEUED_LINGER, |w| w.min(QUEUED_LINGER));
                // Either way the loop goes on to drain what gathered.
                let _ = tokio::time::timeout(wait, self.urgent.notified()).await;
            }
        }
        // Reported through `failed`'s log line; nothing is left to answer.
        let _ = self.checkpoint_now();
    }

    /// How long the writer may wait for jobs before it has to act: sync buffered queued
    /// batches, look after its background checkpoint, or start one. `None`: until a job comes.
    fn next_wake(&self) -> Option<Duration> {
        let sync = self.unsynced.since.map(|since| {
            self.options
                .queued_sync_delay
                .saturating_sub(since.elapsed())
        });
        let checkpoint = if self.failed.is_some() {
            None
        } else if self.background.is_some() {
            Some(BACKGROUND_POLL)
        } else if self.overlay.is_dirty() {
            Some(
                self.options
                    .checkpoint_interval
                    .saturating_sub(self.last_checkpoint.elapsed()),
            )
        } else {
            None
        };
        match (sync, checkpoint) {
            (Some(sync), Some(checkpoint)) => Some(sync.min(checkpoint)),
            (sync, checkpoint) => sync.or(checkpoint),
        }
    }

    /// Flushes the buffered records when someone waits for them, they outgrew their bound,
    /// the oldest reached the sync delay, or the store failed (their callers learn it now).
    fn flush_if_due(&mut self) {
        let unsynced = &self.unsynced;
        let due = !unsynced.replies.is_empty()
            || unsynced.framed.len() > MAX_UNSYNCED_LOG_BYTES
            || unsynced
                .since
                .is_some_and(|since| since.elapsed() >= self.options.queued_sync_delay)
            || self.failed.is_some();
        if due {
            self.flush();
        }
    }

    /// Handles one drained run of jobs in order. `group` is reused so its buffers keep
    /// their capacity from one run to the next. True when some job had a caller waiting.
    fn process(&mut self, jobs: &mut Vec<Job>, group: &mut Group) -> bool {
        let mut anyone_waits = false;
        for job in jobs.drain(..) {
            match job {
                Job::Write { batch, reply } => match self.stage(batch, group) {
                    Ok(()) => {
                        let unsynced = &mut self.unsynced;
                        unsynced.since.get_or_insert_with(Instant::now);
                        match reply {
                            Some(reply) => {
                                anyone_waits = true;
                                unsynced.replies.push(reply);
                            }
                            None => unsynced.queued += 1,
                        }
                    }
                    Err(error) => {
                        anyone_waits |= reply.is_some();
                        answer(reply, Err(error));
                    }
                },
                Job::Checkpoint { reply, only_for } => {
                    anyone_waits = true;
                    self.flush();
                    group.base = None;
                    let outcome = match only_for {
                        Some(map) if !self.has_unwritten(&map) => self.healthy(),
                        _ => self.checkpoint_now(),
                    };
                    // The reader reports a failure; the writer logged it once.
                    let _ = reply.send(outcome);
                }
                Job::Probe { reply } => {
                    let _ = reply.send(self.healthy());
                }
                Job::Meta { key, reply } => {
                    let _ = reply.send(self.unwritten_meta(&key));
                }
                Job::UnwrittenJournal { reply } => {
                    let _ = reply.send(self.healthy().map(|()| self.unwritten_journal()));
                }
            }
        }
        // The snapshot must not outlive the background checkpoint, which may end next.
        group.base = None;
        anyone_waits
    }

    /// Validates `batch`, merges it into the overlay and frames its log record. A batch
    /// that fails here leaves no trace.
    fn stage(&mut self, batch: WriteBatch, group: &mut Group) -> Result<(), StoreError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let base = match &mut group.base {
            Some(base) => base,
            empty => {
                let frozen = self.background.as_ref().map(|b| Arc::clone(&b.frozen));
                empty.insert(Base::new(&self.db, frozen))
            }
        };
        self.overlay.prefetch(&batch, base)?;
        batch.check_kinds(|map| Ok(self.overlay.kind(map)))?;
        wal::frame_record(&mut self.unsynced.framed, self.next_sequence, |out| {
            encode_mutations(batch.mutations(), out)
        })?;
        self.overlay.apply(batch);
        self.next_sequence += 1;
        Ok(())
    }

    /// Makes the buffered records durable with one log write and `fdatasync`, then answers
    /// their callers.
    fn flush(&mut self) {
        let batches = self.unsynced.batches();
        if batches == 0 {
            return;
        }
        let outcome = match &self.failed {
            Some(error) => Err(error.clone()),
            None => self.wal.append_durably(&self.unsynced.framed),
        };
        let unsynced = &mut self.unsynced;
        unsynced.framed.clear();
        if unsynced.framed.capacity() > MAX_KEPT_LOG_BUFFER {
            unsynced.framed = Vec::new();
        }
        unsynced.since = None;
        let queued = std::mem::take(&mut unsynced.queued);
        let replies = std::mem::take(&mut unsynced.replies);
        match outcome {
            Ok(()) => {
                self.stats.batches.fetch_add(batches, Ordering::Relaxed);
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                for reply in replies {
                    answer(Some(reply), Ok(()));
                }
            }
            Err(error) => {
                self.fail(&error);
                if queued > 0 {
                    tracing::error!(%error, batches = queued, "queued store commits failed");
                }
                for reply in replies {
                    // Logged once by `fail`.
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Records the first failure of the log or a checkpoint: from then on the log's tail or
    /// redb's contents are in doubt, so every later batch and read fails.
    fn fail(&mut self, error: &StoreError) {
        if self.failed.is_none() {
            tracing::error!(%error, "store write failed; the store refuses further work until reopened");
            self.failed = Some(error.clone());
        }
    }

    /// Starts a background checkpoint when one is due: the interval passed or a bound is
    /// exceeded. With one still running, a bound makes the writer wait for it first (the
    /// overlay's memory stays bounded by two overlays); the interval simply waits.
    fn start_background_if_due(&mut self) {
        self.overlay.trim_cache(self.options.max_overlay_rows);
        let over_bound = self.overlay.rows() > self.options.max_overlay_rows
            || self.wal.len() > self.options.max_log_bytes;
        let due = over_bound || self.last_checkpoint.elapsed() >= self.options.checkpoint_interval;
        if self.failed.is_some() || !self.overlay.is_dirty() || !due {
            return;
        }
        if self.background.is_some() {
            if !over_bound {
                return;
            }
            self.finish_background();
        }
        tracing::debug!(
            over_bound,
            rows = self.overlay.rows(),
            log_bytes = self.wal.len(),
            "checkpoint starting"
        );
        if let Err(error) = self.start_background() {
            self.fail(&error);
        }
    }

    /// Seals the log segment, freezes the overlay, and writes it to redb on a new thread.
    fn start_background(&mut self) -> Result<(), StoreError> {
        // The sealed segment must hold every record the frozen overlay covers.
        self.flush();
        self.healthy()?;
        self.wal.rotate()?;
        let frozen = Arc::new(std::mem::take(&mut self.overlay));
        let covered = self.next_sequence - 1;
        // The checkpoint deletes the segments it covers itself: unlinking a full segment
        // frees tens of MiB of page cache, which held the writer for ~20 ms.
        let sealed = self.wal.take_sealed();
        let thread = {
            let db = Arc::clone(&self.db);
            let frozen = Arc::clone(&frozen);
            let journal_files = Arc::clone(&self.journal_files);
            std::thread::Builder::new()
                .name("topgun-store-checkpoint".into())
                .spawn(move || {
                    write_checkpoint(&db, &frozen, covered, &journal_files)?;
                    wal::remove_segments(sealed)
                })
                .map_err(|e| io_error("start a checkpoint thread for", self.wal.dir(), e))?
        };
        self.background = Some(Background {
            frozen,
            thread,
            started: Instant::now(),
        });
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Waits for the background checkpoint (which deleted the log segments it covered), then
    /// keeps its rows as clean cache. Only between groups: a group's base snapshot would go stale.
    fn finish_background(&mut self) {
        let Some(Background {
            frozen,
            thread,
            started,
        }) = self.background.take()
        else {
            return;
        };
        let written = thread
            .join()
            .map_err(|_| StoreError::Task("the store checkpoint thread panicked".into()))
            .and_then(|written| written);
        match written {
            Ok(()) => {
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(elapsed = ?started.elapsed(), "background checkpoint written");
                if let Ok(frozen) = Arc::try_unwrap(frozen) {
                    self.overlay.absorb(frozen, self.options.max_overlay_rows);
                }
            }
            Err(error) => self.fail(&error),
        }
    }

    /// Whether redb lacks something staged for `map`, in the overlay or in the one a
    /// background checkpoint is still writing.
    fn has_unwritten(&self, map: &str) -> bool {
        self.overlay.has_unwritten(map)
            || self
                .background
                .as_ref()
                .is_some_and(|background| background.frozen.has_unwritten(map))
    }

    /// `key`'s value if redb may lack it, after making it durable (reads never return what
    /// a crash could still take back).
    fn unwritten_meta(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.overlay.meta(key).or_else(|| {
            self.background
                .as_ref()
                .and_then(|background| background.frozen.meta(key))
        });
        let Some(value) = value.map(<[u8]>::to_vec) else {
            return self.healthy().map(|()| None);
        };
        self.flush();
        self.healthy().map(|()| Some(value))
    }

    fn unwritten_journal(&self) -> UnwrittenJournal {
        let frozen = self
            .background
            .as_ref()
            .map(|b| b.frozen.unwritten_journal());
        let (from, trim_below) = self.overlay.unwritten_journal();
        let (frozen_from, frozen_trim) = frozen.unwrap_or((None, 0));
        UnwrittenJournal {
            from: from.into_iter().chain(frozen_from).min(),
            trim_below: trim_below.max(frozen_trim),
        }
    }

    /// `Ok` unless an earlier failure stopped the store.
    fn healthy(&self) -> Result<(), StoreError> {
        self.failed.clone().map_or(Ok(()), Err)
    }

    /// Makes redb hold every staged batch before returning (for a read, recovery or close):
    /// waits for a background checkpoint, then checkpoints the overlay on this thread.
    fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        self.flush();
        self.finish_background();
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if !self.overlay.is_dirty() && self.wal.len() == 0 && !self.wal.has_sealed() {
            return Ok(());
        }
        let started = Instant::now();
        let written = write_checkpoint(
            &self.db,
            &self.overlay,
            self.next_sequence - 1,
            &self.journal_files,
        )
        .and_then(|()| self.wal.remove_sealed())
        .and_then(|()| self.wal.truncate_current());
        match written {
            Ok(()) => {
                tracing::debug!(
                    rows = self.overlay.rows(),
                    elapsed_us = started.elapsed().as_micros(),
                    "store checkpoint"
                );
                self.overlay.mark_clean(self.options.max_overlay_rows);
                self.last_checkpoint = Instant::now();
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    /// Re-applies the log records redb does not contain yet, in order.
    fn replay(&mut self, records: Vec<LogRecord>, checkpointed: u64) -> Result<(), StoreError> {
        let mut base = None;
        for record in records.into_iter().filter(|r| r.sequence > checkpointed) {
            let batch = WriteBatch::from(decode_mutations(
                format_args!("log sequence {}", record.sequence),
                &record.payload,
            )?);
            let base = match &mut base {
                Some(base) => base,
                empty => empty.insert(Base::new(&self.db, None)),
            };
            self.overlay.prefetch(&batch, base)?;
            // The batch passed this check when it was logged, against the same state.
            batch.check_kinds(|map| Ok(self.overlay.kind(map)))?;
            self.overlay.apply(batch);
            self.next_sequence = record.sequence + 1;
        }
        Ok(())
    }
}

/// Writes `overlay`'s dirty rows into redb in one durable transaction, with `covered`, the
/// highest log sequence they include; its journal entries go to the block files, synced
/// before the transaction commits. Block files a trim emptied are deleted after it.
fn write_checkpoint(
    db: &Database,
    overlay: &Overlay,
    covered: u64,
    journal_files: &Mutex<BlockFiles>,
) -> Result<(), StoreError> {
    // Only a panicking checkpoint could poison the lock, and the writer fails the store then.
    let mut journal_files = journal_files
        .lock()
        .map_err(|_| StoreError::Task("a store checkpoint panicked".into()))?;
    let mut txn = db
        .begin_write()
        .map_err(backend("begin a checkpoint transaction"))?;
    txn.set_durability(Durability::Immediate)
        .map_err(backend("request immediate durability"))?;
    let started = Instant::now();
    {
        let mut tables = WriteTables::open(&txn)?;
        overlay.write_to(&mut tables, &mut journal_files)?;
        txn.open_table(CHECKPOINT)
            .map_err(backend("open the checkpoint table"))?
            .insert(CHECKPOINT_KEY, covered)
            .map_err(backend("write the checkpointed log sequence"))?;
    }
    let written = Instant::now();
    journal_files.sync()?;
    let synced = Instant::now();
    txn.commit().map_err(backend("commit a checkpoint"))?;
    let committed = Instant::now();
    // The checkpoint holds; a file left behind is removed with the next one.
    if let Err(error) = journal_files.remove_unreferenced() {
        tracing::warn!(%error, "could not delete a journal block file no block is in");
    }
    tracing::debug!(
        write_us = (written - started).as_micros(),
        journal_sync_us = (synced - written).as_micros(),
        commit_us = (committed - synced).as_micros(),
        remove_us = committed.elapsed().as_micros(),
        "checkpoint phases"
    );
    Ok(())
}

/// Sends a batch's outcome to its caller; a failure nobody waits for (a queued commit) is
/// logged here, so it is never lost silently.
fn answer(reply: Option<Reply>, outcome: Result<(), StoreError>) {
    let unanswered = match reply {
        Some(reply) => reply.send(outcome).err(),
        None => Some(outcome),
    };
    if let Some(Err(error)) = unanswered {
        tracing::error!(%error, "a queued store commit failed");
    }
}

/// Every table a checkpoint writes, open in one write transaction.
struct WriteTables<'txn> {
    kinds: Table<'txn, &'static str, u8>,
    lww: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    or_records: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    or_tombstones: Table<'txn, (&'static str, &'static str), ()>,
    counters: Table<'txn, &'static str, &'static [u8]>,
    fencing: Table<'txn, &'static str, u64>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    journal_blocks: Table<'txn, u64, &'static [u8]>,
    journal_head: Table<'txn, &'static str, u64>,
}

impl<'txn> WriteTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        let open_error = backend("open a table for writing");
        Ok(Self {
            kinds: txn.open_table(KINDS).map_err(open_error.clone())?,
            lww: txn.open_table(LWW).map_err(open_error.clone())?,
            or_records: txn.open_table(OR_RECORDS).map_err(open_error.clone())?,
            or_tombstones: txn.open_table(OR_TOMBSTONES).map_err(open_error.clone())?,
            counters: txn.open_table(COUNTERS).map_err(open_error.clone())?,
            fencing: txn.open_table(FENCING).map_err(open_error.clone())?,
            meta: txn.open_table(META).map_err(open_error.clone())?,
            journal_blocks: txn.open_table(JOURNAL_BLOCKS).map_err(open_error.clone())?,
            journal_head: txn.open_table(JOURNAL_HEAD).map_err(open_error)?,
        })
    }

    /// Raises the stored journal head to `appended` (never lowers it).
    fn raise_journal_head(&mut self, appended: u64) -> Result<(), StoreError> {
        let head = self
            .journal_head
            .get(JOURNAL_HEAD_KEY)
            .map_err(backend("read the journal head"))?
            .map_or(0, |v| v.value());
        if appended > head {
            self.journal_head
                .insert(JOURNAL_HEAD_KEY, appended)
                .map_err(backend("write the journal head"))?;
        }
        Ok(())
    }

    fn raise_fencing_token(&mut self, lock: &str, token: u64) -> Result<(), StoreError> {
        let stored = self
            .fencing
            .get(lock)
            .map_err(backend("read a fencing token"))?
            .map_or(0, |v| v.value());
        if token > stored {
            self.fencing
                .insert(lock, token)
                .map_err(backend("write a fencing token"))?;
        }
        Ok(())
    }

    fn clear_map(&mut self, map: &str) -> Result<(), StoreError> {
        self.kinds
            .remove(map)
            .map_err(backend("delete a map kind"))?;
        let end = range_end(map);
        let rows = (map, "")..(end.as_str(), "");
        self.lww
            .retain_in(rows.clone(), |_, _| false)
            .map_err(backend("clear LWW records"))?;
        self.or_records
            .retain_in(rows.clone(), |_, _| false)
            .map_err(backend("clear OR records"))?;
        self.or_tombstones
            .retain_in(rows, |_, _| false)
            .map_err(backend("clear OR tombstones"))?;
        Ok(())
    }
}
/// The exclusive upper bound of `map`'s rows: `(map + "\0", "")` is the smallest tuple key
/// whose first element sorts after `map` in byte order.
fn range_end(map: &str) -> String {
    format!("{map}\0")
}

/// Reads one map's kind and rows.
fn read_map(txn: &ReadTransaction, map: &str) -> Result<Option<MapSnapshot>, StoreError> {
    let kinds = txn.open_table(KINDS).map_err(backend("open map kinds"))?;
    let Some(code) = kinds.get(map).map_err(backend("read a map kind"))? else {
        return Ok(None);
    };
    let end = range_end(map);
    let rows = (map, "")..(end.as_str(), "");
    match kind_from_code(map, code.value())? {
        MapKind::Lww => {
            let table = txn.open_table(LWW).map_err(backend("open LWW records"))?;
            let mut records = BTreeMap::new();
            for entry in table.range(rows).map_err(backend("read LWW records"))? {
                let (row, bytes) = entry.map_err(backend("read LWW records"))?;
                let key = row.value().1;
                let record = decode_lww(format_args!("{map}/{key}"), bytes.value())?;
                records.insert(key.to_owned(), record);
            }
            Ok(Some(MapSnapshot::Lww { records }))
        }
        MapKind::Or => {
            let table = txn
                .open_table(OR_RECORDS)
                .map_err(backend("open OR records"))?;
            let mut records = BTreeMap::new();
            for entry in table
                .range(rows.clone())
                .map_err(backend("read OR records"))?
            {
                let (row, bytes) = entry.map_err(backend("read OR records"))?;
                let key = row.value().1;
                let list = decode("OR records", format_args!("{map}/{key}"), bytes.value())?;
                records.insert(key.to_owned(), list);
            }
            let table = txn
                .open_table(OR_TOMBSTONES)
                .map_err(backend("open OR tombstones"))?;
            let mut tombstones = BTreeSet::new();
            for entry in table.range(rows).map_err(backend("read OR tombstones"))? {
                let (row, _) = entry.map_err(backend("read OR tombstones"))?;
                tombstones.insert(row.value().1.to_owned());
            }
            Ok(Some(MapSnapshot::Or {
                records,
                tombstones,
            }))
        }
    }
}

/// Wraps an engine error with what was being attempted.
fn backend<E: std::error::Error + Send + Sync + 'static>(
    action: impl Into<String> + Clone,
) -> impl Fn(E) -> StoreError + Clone {
    move |error| StoreError::Backend {
        action: action.clone().into(),
        source: Arc::new(error),
    }
}

fn io_error(action: &'static str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io {
        action,
        path: path.to_owned(),
        source: Arc::new(error),
    }
}

/// Creates `path` (which must not exist) for appending and makes its directory entry durable,
/// so what is later synced into the file cannot vanish with the entry in a crash.
fn create_durably(path: &Path, action: &'static str) -> Result<std::fs::File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_error(action, path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error("sync the directory", dir, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::{LwwRecord, OrMapRecord};
    use crate::store::{MemoryStore, Mutation};
    use serde_json::json;
    use std::process::Command;

    crate::store::conformance::store_conformance_tests!({
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        (dir, store)
    });

    fn put(map: &str, key: &str, n: u64) -> Mutation {
        let record = LwwRecord {
            value: Some(json!({"n": n}).into()),
            timestamp: Timestamp::new(n, 0, "node"),
            ttl_ms: None,
        };
        Mutation::put_lww(map, key, &record).unwrap()
    }

    fn every_kind_of_mutation() -> WriteBatch {
        let or_record = OrMapRecord {
            value: json!("v"),
            timestamp: Timestamp::new(2, 0, "node"),
            tag: "2:0:node".into(),
            ttl_ms: Some(60_000),
        };
        WriteBatch::from(vec![
            put("lww", "k", 1),
            Mutation::PutOrKey {
                map: "or".into(),
                key: "k".into(),
                records: vec![or_record],
            },
            Mutation::AddOrTombstones {
                map: "or".into(),
                tags: vec!["1:0:node".into()],
            },
            Mutation::SetMapKind {
                map: "empty".into(),
                kind: MapKind::Or,
            },
            Mutation::PutCounter {
                name: "c".into(),
                state: CounterSnapshot {
                    p: BTreeMap::from([("node".to_owned(), 2.0)]),
                    n: BTreeMap::new(),
                },
            },
            Mutation::PutFencingToken {
                lock: "l".into(),
                token: 42,
            },
            Mutation::PutMeta {
                key: "node-id".into(),
                value: b"server-1".to_vec(),
            },
            Mutation::AppendJournal {
                sequence: 7,
                event: b"event-7".as_slice().into(),
            },
            Mutation::AppendJournal {
                sequence: 9,
                event: b"event-9".as_slice().into(),
            },
            Mutation::TrimJournal { below: 8 },
        ])
    }

    /// Everything [`every_kind_of_mutation`] wrote, as read back from `store`.
    async fn assert_every_kind_present(store: &RedbStore) {
        let expected = MemoryStore::new();
        expected.commit(every_kind_of_mutation()).await.unwrap();
        for map in ["lww", "or", "empty"] {
            assert_eq!(
                store.load_map(map).await.unwrap(),
                expected.load_map(map).await.unwrap(),
                "map {map}"
            );
        }
        let listed = store.list_maps().await.unwrap();
        for map in expected.list_maps().await.unwrap() {
            assert!(listed.contains(&map), "{map:?} missing from {listed:?}");
        }
        assert_eq!(
            store.load_counters().await.unwrap(),
            expected.load_counters().await.unwrap()
        );
        assert_eq!(
            store.load_fencing_tokens().await.unwrap(),
            BTreeMap::from([("l".to_owned(), 42)])
        );
        assert_eq!(
            store.get_meta("node-id").await.unwrap(),
            Some(b"server-1".to_vec())
        );
        assert_eq!(
            store.read_journal(0, 10).await.unwrap(),
            vec![(9, b"event-9".to_vec())]
        );
        assert_eq!(store.last_journal_sequence().await.unwrap(), 9);
    }

    #[tokio::test]
    async fn data_survives_drop_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        store.commit(every_kind_of_mutation()).await.unwrap();
        drop(store);

        let reopened = RedbStore::open(dir.path()).unwrap();
        assert_eq!(reopened.path(), dir.path().join("topgun.redb"));
        assert_every_kind_present(&reopened).await;
    }

    /// Commits puts of keys `0..count` in map `m` from concurrent tasks, each acknowledged.
    async fn commit_puts_concurrently(store: &Arc<RedbStore>, count: u64) {
        let commits: Vec<_> = (0..count)
            .map(|i| {
                let store = Arc::clone(store);
                tokio::spawn(async move {
                    store
                        .commit(WriteBatch::from(vec![put("m", &i.to_string(), i)]))
                        .await
                })
            })
            .collect();
        for commit in commits {
            commit.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn close_drains_queued_commits_and_releases_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        commit_puts_concurrently(&store, 20).await;
        store.close().await.unwrap();

        let reopened = RedbStore::open(dir.path()).unwrap();
        match reopened.load_map("m").await.unwrap() {
            Some(MapSnapshot::Lww { records }) => assert_eq!(records.len(), 20),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A block file below every block (one whose deletion a crash undid) goes when the store
    /// opens; the journal and the data stay.
    #[tokio::test]
    async fn opening_deletes_journal_files_no_block_is_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        store.commit(every_kind_of_mutation()).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let journal_dir = dir.path().join(journal_blocks::DIR_NAME);
        let orphan = journal_dir.join(format!("{:016}", 0));
        std::fs::write(&orphan, b"deleted before a crash").unwrap();

        let reopened = RedbStore::open(dir.path()).unwrap();
        assert!(!orphan.exists());
        assert!(std::fs::read_dir(&journal_dir).unwrap().count() >= 1);
        assert_every_kind_present(&reopened).await;
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path()).unwrap();
        assert!(matches!(
            RedbStore::open(dir.path()),
            Err(StoreError::Backend { .. })
        ));
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(RedbStore::open(dir.path()).unwrap());
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(FORMAT)
            .unwrap()
            .insert(FORMAT_KEY, 99)
            .unwrap();
        txn.commit().unwrap();
        drop(db);

        assert!(matches!(
            RedbStore::open(dir.path()),
            Err(StoreError::UnsupportedFormat {
                found: 99,
                supported: FORMAT_VERSION
            })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_grouped_and_all_land() {
        const COMMITS: u64 = 400;
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            queue_capacity: 16,
            max_group_batches: 64,
            ..RedbOptions::default()
        };
        let store = Arc::new(RedbStore::open_with(dir.path(), options).unwrap());
        let commits: Vec<_> = (0..COMMITS)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut batch = WriteBatch::new();
                    batch.push(put("m", &format!("key-{i}"), i));
                    batch.push(Mutation::PutFencingToken {
                        lock: "shared".into(),
                        token: i,
                    });
                    store.commit(batch).await
                })
            })
            .collect();
        for commit in commits {
            commit.await.unwrap().unwrap();
        }

        let stats = store.stats();
        assert_eq!(stats.batches, COMMITS);
        assert!(
            stats.flushes < COMMITS,
            "no batches were grouped: {stats:?}"
        );
        match store.load_map("m").await.unwrap() {
            Some(MapSnapshot::Lww { records }) => {
                assert_eq!(records.len() as u64, COMMITS);
                assert_eq!(
                    records["key-7"].value,
                    Some(json!({"n": 7})).map(Into::into)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            store.load_fencing_tokens().await.unwrap(),
            BTreeMap::from([("shared".to_owned(), COMMITS - 1)])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejected_batch_does_not_spoil_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        store
            .commit(WriteBatch::from(vec![put("lww", "seed", 0)]))
            .await
            .unwrap();
        let commits: Vec<_> = (0..100u64)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut batch = WriteBatch::new();
                    batch.push(put("other", &i.to_string(), i));
                    if i % 2 == 1 {
                        batch.push(Mutation::AddOrTombstones {
                            map: "lww".into(),
                            tags: vec![i.to_string()],
                        });
                    }
                    (i, store.commit(batch).await)
                })
            })
            .collect();
        for commit in commits {
            let (i, result) = commit.await.unwrap();
            assert_eq!(result.is_ok(), i % 2 == 0, "batch {i}: {result:?}");
        }
        match store.load_map("other").await.unwrap() {
            Some(MapSnapshot::Lww { records }) => {
                assert_eq!(records.len(), 50);
                assert!(records.keys().all(|k| k.parse::<u64>().unwrap() % 2 == 0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    const CRASH_CHILD_DIR: &str = "TOPGUN_STORE_CRASH_CHILD_DIR";
    const CRASH_CHILD_EXIT: i32 = 73;
    const CRASH_COMMITS: u64 = 50;

    /// Runs `child` on a fresh store directory in a separate process (this test binary,
    /// running only the test named `test`), which exits with the store `child` returns still
    /// open and its writer alive (no `close`, no `Drop`), and returns that directory. Covers a
    /// process dying right after its acks, not power loss, which only the fsyncs guard.
    fn after_crashing_child(
        test: &str,
        child: impl AsyncFnOnce(&Path) -> Arc<RedbStore>,
    ) -> tempfile::TempDir {
        if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let _open = child(Path::new(&dir)).await;
                std::process::exit(CRASH_CHILD_EXIT);
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("store::redb::tests::{test}"),
                "--test-threads",
                "1",
            ])
            .env(CRASH_CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(CRASH_CHILD_EXIT));
        dir
    }

    #[test]
    fn acked_commits_survive_an_abrupt_process_exit() {
        let dir = after_crashing_child(
            "acked_commits_survive_an_abrupt_process_exit",
            async |dir| {
                let store = Arc::new(RedbStore::open(dir).unwrap());
                store.commit(every_kind_of_mutation()).await.unwrap();
                commit_puts_concurrently(&store, CRASH_COMMITS).await;
                store
            },
        );

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let records = match runtime.block_on(store.load_map("m")).unwrap() {
            Some(MapSnapshot::Lww { records }) => records,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(records.len() as u64, CRASH_COMMITS);
        runtime.block_on(assert_every_kind_present(&store));
    }

    fn never_by_time() -> RedbOptions {
        RedbOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..RedbOptions::default()
        }
    }

    /// Sequence numbers of the logged commits: values of equal length, so equal records.
    const LOGGED: std::ops::Range<u64> = 10..20;

    /// Commits one single-put batch per `LOGGED` number, in order, with no checkpoint.
    async fn commit_logged_batches(dir: &Path) -> Arc<RedbStore> {
        let store = RedbStore::open_with(dir, never_by_time()).unwrap();
        for i in LOGGED {
            store
                .commit(WriteBatch::from(vec![put("m", &format!("k{i}"), i)]))
                .await
                .unwrap();
        }
        let stats = store.stats();
        assert_eq!((stats.checkpoints, stats.flushes), (0, 10), "{stats:?}");
        Arc::new(store)
    }

    fn lww_keys(store: &RedbStore, map: &str) -> Vec<String> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        match runtime.block_on(store.load_map(map)).unwrap() {
            Some(MapSnapshot::Lww { records }) => records.into_keys().collect(),
            None => Vec::new(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn keys(range: std::ops::Range<u64>) -> Vec<String> {
        range.map(|i| format!("k{i}")).collect()
    }

    /// The log segments in `dir`, oldest first.
    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                let name = path.file_name().unwrap().to_str().unwrap();
                name.starts_with(wal::FILE_PREFIX)
            })
            .collect();
        paths.sort();
        paths
    }

    /// Bytes in all log segments.
    fn wal_len(dir: &Path) -> u64 {
        segments(dir)
            .iter()
            .map(|path| std::fs::metadata(path).unwrap().len())
            .sum()
    }

    /// The one segment holding records.
    fn written_segment(dir: &Path) -> PathBuf {
        let written: Vec<PathBuf> = segments(dir)
            .into_iter()
            .filter(|path| std::fs::metadata(path).unwrap().len() > 0)
            .collect();
        assert_eq!(written.len(), 1, "{written:?}");
        written.into_iter().next().unwrap()
    }

    #[test]
    fn acked_commits_are_replayed_from_the_log_when_no_checkpoint_ran() {
        let dir = after_crashing_child(
            "acked_commits_are_replayed_from_the_log_when_no_checkpoint_ran",
            async |dir| commit_logged_batches(dir).await,
        );
        // Nothing but the store's creation reached redb: everything is in the log.
        assert!(wal_len(dir.path()) > 0);

        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(lww_keys(&store, "m"), keys(LOGGED));
        assert_eq!(
            wal_len(dir.path()),
            0,
            "recovery checkpoints and empties the log"
        );
    }

    #[test]
    fn a_torn_last_log_record_loses_only_that_record() {
        let dir = after_crashing_child(
            "a_torn_last_log_record_loses_only_that_record",
            async |dir| commit_logged_batches(dir).await,
        );
        let log = written_segment(dir.path());
        let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        file.set_len(wal_len(dir.path()) - 5).unwrap();
        drop(file);

        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(lww_keys(&store, "m"), keys(10..19));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime
            .block_on(store.commit(WriteBatch::from(vec![put("m", "k19", 19)])))
            .unwrap();
        drop(store);
        let reopened = RedbStore::open(dir.path()).unwrap();
        assert_eq!(lww_keys(&reopened, "m"), keys(LOGGED));
    }

    #[test]
    fn a_corrupt_record_in_the_middle_stops_the_replay_there() {
        let dir = after_crashing_child(
            "a_corrupt_record_in_the_middle_stops_the_replay_there",
            async |dir| commit_logged_batches(dir).await,
        );
        let log = written_segment(dir.path());
        let mut bytes = std::fs::read(&log).unwrap();
        let record_len = bytes.len() / 10;
        assert_eq!(bytes.len() % 10, 0, "equal-sized records");
        bytes[5 * record_len + 20] ^= 0x40;
        std::fs::write(&log, &bytes).unwrap();

        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(lww_keys(&store, "m"), keys(10..15));
    }

    #[test]
    fn a_checkpoint_then_more_writes_then_a_crash_keeps_both_halves() {
        let dir = after_crashing_child(
            "a_checkpoint_then_more_writes_then_a_crash_keeps_both_halves",
            async |dir| {
                let store = RedbStore::open_with(dir, never_by_time()).unwrap();
                let mut first: Vec<_> = (0..5).map(|i| put("m", &format!("a{i}"), i)).collect();
                first.extend([
                    Mutation::AddOrTombstones {
                        map: "gone".into(),
                        tags: vec!["t".into()],
                    },
                    Mutation::AppendJournal {
                        sequence: 1,
                        event: b"one".as_slice().into(),
                    },
                    Mutation::AppendJournal {
                        sequence: 2,
                        event: b"two".as_slice().into(),
                    },
                ]);
                store.commit(WriteBatch::from(first)).await.unwrap();
                // A read checkpoints everything before it.
                assert_eq!(store.list_maps().await.unwrap().len(), 2);
                assert_eq!(store.stats().checkpoints, 1);

                let mut second: Vec<_> = (0..5).map(|i| put("m", &format!("b{i}"), i)).collect();
                second.extend([
                    Mutation::ClearMap { map: "gone".into() },
                    Mutation::TrimJournal { below: 2 },
                    Mutation::AppendJournal {
                        sequence: 3,
                        event: b"three".as_slice().into(),
                    },
                ]);
                store.commit(WriteBatch::from(second)).await.unwrap();
                store
                    .commit(WriteBatch::from(vec![put("m", "a0", 100)]))
                    .await
                    .unwrap();
                assert_eq!(store.stats().checkpoints, 1);
                Arc::new(store)
            },
        );

        let store = RedbStore::open(dir.path()).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let records = match runtime.block_on(store.load_map("m")).unwrap() {
            Some(MapSnapshot::Lww { records }) => records,
            other => panic!("unexpected {other:?}"),
        };
        let mut expected: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
        expected.extend((0..5).map(|i| format!("b{i}")));
        assert_eq!(records.keys().cloned().collect::<Vec<_>>(), expected);
        assert_eq!(records["a0"].value, Some(json!({"n": 100})).map(Into::into));
        assert_eq!(
            runtime.block_on(store.list_maps()).unwrap(),
            vec![("m".to_owned(), MapKind::Lww)]
        );
        assert_eq!(
            runtime.block_on(store.read_journal(0, 10)).unwrap(),
            vec![(2, b"two".to_vec()), (3, b"three".to_vec())]
        );
        assert_eq!(runtime.block_on(store.last_journal_sequence()).unwrap(), 3);
    }

    /// A crash between a checkpoint's commit and the log's truncation leaves records redb
    /// already holds; replaying them again would be wrong (here: a clear would wipe later
    /// puts), so replay starts after the checkpointed sequence.
    #[tokio::test]
    async fn replay_skips_records_the_checkpoint_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            store
                .commit(WriteBatch::from(vec![put("m", key, i as u64 + 1)]))
                .await
                .unwrap();
        }
        store.close().await.unwrap();
        assert_eq!(wal_len(dir.path()), 0);

        let mut log = Vec::new();
        let records = [
            (2, vec![Mutation::ClearMap { map: "m".into() }]),
            (3, vec![put("m", "a", 50)]),
            (4, vec![put("m", "d", 4)]),
        ];
        for (sequence, mutations) in records {
            wal::frame_record(&mut log, sequence, |out| encode_mutations(&mutations, out)).unwrap();
        }
        let segment = format!("{}{:016}", wal::FILE_PREFIX, 99);
        std::fs::write(dir.path().join(segment), &log).unwrap();

        let reopened = RedbStore::open(dir.path()).unwrap();
        match reopened.load_map("m").await.unwrap() {
            Some(MapSnapshot::Lww { records }) => {
                assert_eq!(records.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
                assert_eq!(records["a"].value, Some(json!({"n": 1})).map(Into::into));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Sequences continue after the replayed ones: a new commit survives another replay.
        reopened
            .commit(WriteBatch::from(vec![put("m", "e", 5)]))
            .await
            .unwrap();
        drop(reopened);
        let again = RedbStore::open(dir.path()).unwrap();
        assert_eq!(lww_keys_async(&again, "m").await, ["a", "b", "c", "d", "e"]);
    }

    async fn lww_keys_async(store: &RedbStore, map: &str) -> Vec<String> {
        match store.load_map(map).await.unwrap() {
            Some(MapSnapshot::Lww { records }) => records.into_keys().collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_overlay_bounds_force_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            max_overlay_rows: 8,
            ..never_by_time()
        };
        let store = RedbStore::open_with(dir.path(), options).unwrap();
        for i in 0..40 {
            store
                .commit(WriteBatch::from(vec![put("m", &format!("k{i:02}"), i)]))
                .await
                .unwrap();
        }
        // Nine changed rows exceed the bound: a checkpoint every nine commits (the background
        // one's rows are kept as cache up to the bound, and shed before they could force
        // one), then the read's.
        assert_eq!(lww_keys_async(&store, "m").await.len(), 40);
        assert_eq!(store.stats().checkpoints, 5);
        // The background checkpoints deleted the segments they covered (the read's deleted
        // the rest): only the segment being appended to is left.
        assert_eq!(segments(dir.path()).len(), 1, "{:?}", segments(dir.path()));

        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            max_log_bytes: 1,
            ..never_by_time()
        };
        let store = RedbStore::open_with(dir.path(), options).unwrap();
        for i in 0..5 {
            store
                .commit(WriteBatch::from(vec![put("m", &format!("k{i}"), i)]))
                .await
                .unwrap();
            // The writer checkpoints before it takes the read's job, so the read adds none.
            store.list_maps().await.unwrap();
            assert_eq!(
                store.stats().checkpoints,
                i + 1,
                "each flush exceeds the bound"
            );
            assert_eq!(wal_len(dir.path()), 0);
        }
    }

    #[tokio::test]
    async fn a_probe_checkpoints_nothing_but_a_read_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path(), never_by_time()).unwrap();
        store
            .commit(WriteBatch::from(vec![put("m", "k", 1)]))
            .await
            .unwrap();
        store.probe().await.unwrap();
        assert_eq!(
            store.stats().checkpoints,
            0,
            "a probe leaves the overlay alone"
        );
        store.get_meta("x").await.unwrap();
        assert_eq!(store.stats().checkpoints, 0, "a meta read needs none");
        store.list_maps().await.unwrap();
        assert_eq!(store.stats().checkpoints, 1);
        store.close().await.unwrap();
        assert!(matches!(store.probe().await, Err(StoreError::Closed)));
    }

    #[tokio::test]
    async fn meta_reads_answer_from_memory_or_redb_without_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            queued_sync_delay: Duration::from_secs(3600),
            ..never_by_time()
        };
        let store = RedbStore::open_with(dir.path(), options).unwrap();
        let put_meta = |value: &[u8]| {
            WriteBatch::from(vec![Mutation::PutMeta {
                key: "x".into(),
                value: value.to_vec(),
            }])
        };
        store.commit_queued(put_meta(b"1")).await.unwrap();
        let flushes = store.stats().flushes;
        assert_eq!(store.get_meta("x").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.stats().flushes,
            flushes + 1,
            "a value read from memory is made durable first"
        );
        assert_eq!(store.get_meta("y").await.unwrap(), None);
        store.list_maps().await.unwrap();
        assert_eq!(store.stats().checkpoints, 1);
        // Now only redb holds it; a newer value is in the overlay again.
        assert_eq!(store.get_meta("x").await.unwrap(), Some(b"1".to_vec()));
        store.commit(put_meta(b"2")).await.unwrap();
        assert_eq!(store.get_meta("x").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(
            store.stats().checkpoints,
            1,
            "meta reads checkpoint nothing"
        );
    }

    #[tokio::test]
    async fn journal_reads_checkpoint_only_when_they_reach_what_redb_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path(), never_by_time()).unwrap();
        let append = |sequences: std::ops::RangeInclusive<u64>| {
            WriteBatch::from(
                sequences
                    .map(|sequence| Mutation::AppendJournal {
                        sequence,
                        event: sequence.to_be_bytes().as_slice().into(),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let sequences =
            |rows: Vec<JournalRow>| rows.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        store.commit(append(1..=5)).await.unwrap();
        assert_eq!(
            sequences(store.read_journal(1, 3).await.unwrap()),
            [1, 2, 3]
        );
        assert_eq!(
            store.stats().checkpoints,
            1,
            "entries only in memory: checkpointed"
        );

        store.commit(append(6..=10)).await.unwrap();
        assert_eq!(
            sequences(store.read_journal(2, 4).await.unwrap()),
            [2, 3, 4, 5]
        );
        assert_eq!(
            store.stats().checkpoints,
            1,
            "answered below the unwritten 6..=10"
        );
        assert_eq!(
            sequences(store.read_journal(4, 4).await.unwrap()),
            [4, 5, 6, 7]
        );
        assert_eq!(store.stats().checkpoints, 2, "reaches 6: checkpointed");
        assert_eq!(store.read_journal(1, 100).await.unwrap().len(), 10);
        assert_eq!(
            store.stats().checkpoints,
            2,
            "nothing unwritten: redb answers all"
        );

        store
            .commit(WriteBatch::from(vec![Mutation::TrimJournal { below: 3 }]))
            .await
            .unwrap();
        assert_eq!(sequences(store.read_journal(1, 2).await.unwrap()), [3, 4]);
        assert_eq!(
            store.stats().checkpoints,
            3,
            "a pending trim is applied first"
        );
    }

    #[tokio::test]
    async fn journal_entries_are_bounded_by_the_log_not_the_row_bound() {
        /// Forty batches of one hot row and one journal entry each; returns the checkpoints
        /// they forced (the journal read afterwards adds one).
        async fn forty_entries(options: RedbOptions) -> u64 {
            let dir = tempfile::tempdir().unwrap();
            let store = RedbStore::open_with(dir.path(), options).unwrap();
            for sequence in 1..=40 {
                let batch = WriteBatch::from(vec![
                    put("m", "hot", sequence),
                    Mutation::AppendJournal {
                        sequence,
                        event: vec![7u8; 100].into(),
                    },
                ]);
                store.commit(batch).await.unwrap();
            }
            let forced = store.stats().checkpoints;
            assert_eq!(store.read_journal(1, 100).await.unwrap().len(), 40);
            forced
        }
        // Only the row counts against a bound of 8.
        let row_bound = RedbOptions {
            max_overlay_rows: 8,
            ..never_by_time()
        };
        assert_eq!(forty_entries(row_bound).await, 0);
        // The log's bound still forces checkpoints when nothing but entries pile up.
        let log_bound = RedbOptions {
            max_log_bytes: 1_000,
            ..never_by_time()
        };
        let forced = forty_entries(log_bound).await;
        assert!((3..40).contains(&forced), "{forced} checkpoints");
    }

    #[tokio::test]
    async fn an_idle_store_checkpoints_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            checkpoint_interval: Duration::from_millis(50),
            ..RedbOptions::default()
        };
        let store = RedbStore::open_with(dir.path(), options).unwrap();
        store
            .commit(WriteBatch::from(vec![put("m", "k", 1)]))
            .await
            .unwrap();
        assert!(wal_len(dir.path()) > 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.stats().checkpoints == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.stats().checkpoints, 1);
        assert_eq!(wal_len(dir.path()), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loading_a_map_checkpoints_only_when_that_map_has_unwritten_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path(), never_by_time()).unwrap();
        store
            .commit(WriteBatch::from(vec![put("hot", "k", 1)]))
            .await
            .unwrap();
        let before = store.stats().checkpoints;
        // A map nobody wrote since the last checkpoint loads straight from redb.
        assert_eq!(store.load_map("cold").await.unwrap(), None);
        assert_eq!(store.stats().checkpoints, before);
        // One with staged rows is checkpointed first, so the load sees them.
        store
            .commit_queued(WriteBatch::from(vec![put("hot", "k2", 2)]))
            .await
            .unwrap();
        assert_eq!(lww_keys_async(&store, "hot").await.len(), 2);
        assert_eq!(store.stats().checkpoints, before + 1);
        // Now clean again: no further checkpoint.
        assert_eq!(lww_keys_async(&store, "hot").await.len(), 2);
        assert_eq!(store.stats().checkpoints, before + 1);
    }

    /// Options under which only the tests' own triggers sync queued batches or checkpoint.
    fn queued_sync_after(delay: Duration) -> RedbOptions {
        RedbOptions {
            queued_sync_delay: delay,
            ..never_by_time()
        }
    }

    /// Queues one put per key `k00..`, `count` of them, pausing after each so the writer
    /// drains them one by one (each drained group used to cost a flush).
    async fn commit_queued_one_by_one(store: &RedbStore, count: u64) {
        for i in 0..count {
            store
                .commit_queued(WriteBatch::from(vec![put("m", &format!("k{i:02}"), i)]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_commits_share_one_flush_until_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            RedbStore::open_with(dir.path(), queued_sync_after(Duration::from_secs(3600))).unwrap();
        commit_queued_one_by_one(&store, CRASH_COMMITS).await;
        assert_eq!(store.stats().flushes, 0);
        assert_eq!(wal_len(dir.path()), 0, "nothing written before a sync");
        // A read makes them durable (and checkpoints them) before it is answered.
        assert_eq!(
            lww_keys_async(&store, "m").await.len() as u64,
            CRASH_COMMITS
        );
        let stats = store.stats();
        assert_eq!(
            (stats.batches, stats.flushes, stats.checkpoints),
            (CRASH_COMMITS, 1, 1)
        );

        // With the default delay a burst still shares flushes.
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path(), never_by_time()).unwrap();
        commit_queued_one_by_one(&store, CRASH_COMMITS).await;
        store
            .commit(WriteBatch::from(vec![put("m", "waited", 1)]))
            .await
            .unwrap();
        let stats = store.stats();
        assert_eq!(stats.batches, CRASH_COMMITS + 1);
        assert!(stats.flushes <= CRASH_COMMITS / 2, "{stats:?}");
    }

    #[test]
    fn a_waiting_commit_makes_the_queued_ones_before_it_durable() {
        let dir = after_crashing_child(
            "a_waiting_commit_makes_the_queued_ones_before_it_durable",
            async |dir| {
                let options = queued_sync_after(Duration::from_secs(3600));
                let store = RedbStore::open_with(dir, options).unwrap();
                commit_queued_one_by_one(&store, CRASH_COMMITS).await;
                store
                    .commit(WriteBatch::from(vec![put("m", "waited", 1)]))
                    .await
                    .unwrap();
                let stats = store.stats();
                assert_eq!((stats.batches, stats.flushes), (CRASH_COMMITS + 1, 1));
                Arc::new(store)
            },
        );

        let store = RedbStore::open(dir.path()).unwrap();
        let mut expected: Vec<String> = (0..CRASH_COMMITS).map(|i| format!("k{i:02}")).collect();
        expected.push("waited".into());
        assert_eq!(lww_keys(&store, "m"), expected);
    }

    /// Polls until the store has flushed its log once, or `deadline` passes.
    async fn wait_for_a_flush(store: &RedbStore, deadline: Instant) {
        while store.stats().flushes == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_idle_store_syncs_a_queued_commit_after_the_delay() {
        const DELAY: Duration = Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path(), queued_sync_after(DELAY)).unwrap();
        let started = Instant::now();
        store
            .commit_queued(WriteBatch::from(vec![put("m", "k", 1)]))
            .await
            .unwrap();
        assert_eq!(store.stats().flushes, 0);
        wait_for_a_flush(&store, started + DELAY + Duration::from_secs(5)).await;
        let synced_after = started.elapsed();
        assert_eq!(store.stats().flushes, 1);
        assert!(synced_after >= DELAY, "synced after {synced_after:?}");
        assert!(wal_len(dir.path()) > 0);
    }

    #[test]
    fn a_queued_commit_survives_a_crash_after_the_delay() {
        let dir = after_crashing_child(
            "a_queued_commit_survives_a_crash_after_the_delay",
            async |dir| {
                let options = queued_sync_after(Duration::from_millis(20));
                let store = RedbStore::open_with(dir, options).unwrap();
                store
                    .commit_queued(WriteBatch::from(vec![put("m", "k", 1)]))
                    .await
                    .unwrap();
                wait_for_a_flush(&store, Instant::now() + Duration::from_secs(5)).await;
                Arc::new(store)
            },
        );

        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(lww_keys(&store, "m"), ["k"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_queued_and_committed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path(), never_by_time()).unwrap();
        for i in 0..100 {
            let mut batch = WriteBatch::new();
            batch.push(put("m", &format!("k{i:03}"), i));
            batch.push(Mutation::AppendJournal {
                sequence: i + 1,
                event: vec![i as u8].into(),
            });
            store.commit_queued(batch).await.unwrap();
        }
        assert_eq!(lww_keys_async(&store, "m").await.len(), 100);
        assert_eq!(store.last_journal_sequence().await.unwrap(), 100);

        store
            .commit(WriteBatch::from(vec![
                Mutation::PutMeta {
                    key: "x".into(),
                    value: b"1".to_vec(),
                },
                Mutation::PutFencingToken {
                    lock: "l".into(),
                    token: 3,
                },
                Mutation::PutCounter {
                    name: "c".into(),
                    state: CounterSnapshot::default(),
                },
            ]))
            .await
            .unwrap();
        assert_eq!(store.get_meta("x").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.load_fencing_tokens().await.unwrap()["l"], 3);
        assert!(store.load_counters().await.unwrap().contains_key("c"));
        assert_eq!(store.read_journal(99, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn clear_map_then_puts_in_the_same_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path(), never_by_time()).unwrap();
        store
            .commit(WriteBatch::from(vec![
                put("m", "a", 1),
                put("m", "b", 1),
                put("n", "a", 1),
            ]))
            .await
            .unwrap();
        assert_eq!(lww_keys_async(&store, "m").await, ["a", "b"]);

        let or_record = OrMapRecord {
            value: json!("v"),
            timestamp: Timestamp::new(9, 0, "node"),
            tag: "9:0:node".into(),
            ttl_ms: None,
        };
        store
            .commit(WriteBatch::from(vec![
                put("m", "c", 2),
                Mutation::ClearMap { map: "m".into() },
                put("m", "d", 2),
            ]))
            .await
            .unwrap();
        store
            .commit(WriteBatch::from(vec![
                Mutation::ClearMap { map: "n".into() },
                Mutation::PutOrKey {
                    map: "n".into(),
                    key: "k".into(),
                    records: vec![or_record.clone()],
                },
            ]))
            .await
            .unwrap();
        // An older put than the cleared record still lands: the clear forgot it.
        store
            .commit(WriteBatch::from(vec![put("m", "a", 0)]))
            .await
            .unwrap();

        let expected_n = MapSnapshot::Or {
            records: BTreeMap::from([("k".to_owned(), vec![or_record])]),
            tombstones: BTreeSet::new(),
        };
        assert_eq!(lww_keys_async(&store, "m").await, ["a", "d"]);
        assert_eq!(store.load_map("n").await.unwrap(), Some(expected_n.clone()));
        drop(store);

        let reopened = RedbStore::open(dir.path()).unwrap();
        assert_eq!(lww_keys_async(&reopened, "m").await, ["a", "d"]);
        assert_eq!(reopened.load_map("n").await.unwrap(), Some(expected_n));
    }

    #[test]
    fn a_version_1_store_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        drop(RedbStore::open(dir.path()).unwrap());
        let path = dir.path().join(FILE_NAME);
        set_format_version(&path, 1);

        drop(RedbStore::open(dir.path()).unwrap());
        assert_eq!(format_version(&path), FORMAT_VERSION);
    }

    /// The row a checkpoint writes is the record exactly as rmp_serde names it, as every
    /// store before rows travelled encoded holds it.
    #[tokio::test]
    async fn checkpointed_lww_rows_keep_their_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let records = [
            LwwRecord {
                value: Some(json!({"v": [1, "x", null]}).into()),
                timestamp: Timestamp::new(1_795_698_229_131, 4, "node-ü"),
                ttl_ms: Some(70_000),
            },
            LwwRecord {
                value: None,
                timestamp: Timestamp::new(9, 0, "n"),
                ttl_ms: None,
            },
        ];
        let batch: Vec<Mutation> = ["live", "dead"]
            .iter()
            .zip(&records)
            .map(|(key, record)| Mutation::put_lww("m", *key, record).unwrap())
            .collect();
        store.commit(WriteBatch::from(batch)).await.unwrap();
        store.close().await.unwrap();
        drop(store);

        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(LWW).unwrap();
        for (key, record) in ["live", "dead"].iter().zip(&records) {
            let row = table.get(("m", *key)).unwrap().unwrap();
            assert_eq!(row.value(), rmp_serde::to_vec_named(record).unwrap());
        }
    }

    fn set_format_version(path: &Path, version: u32) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(FORMAT)
            .unwrap()
            .insert(FORMAT_KEY, version)
            .unwrap();
        txn.commit().unwrap();
    }

    fn format_version(path: &Path) -> u32 {
        let db = Database::create(path).unwrap();
        let txn = db.begin_read().unwrap();
        let format = txn.open_table(FORMAT).unwrap();
        format.get(FORMAT_KEY).unwrap().unwrap().value()
    }

    /// Format 2 kept one journal row per entry, format 3 runs of entries in rows (a store
    /// upgraded from 2 to 3 holds both): the upgrade moves them into block files, in order,
    /// and deletes their tables.
    #[tokio::test]
    async fn a_version_3_journal_moves_into_block_files() {
        let dir = tempfile::tempdir().unwrap();
        drop(RedbStore::open(dir.path()).unwrap());
        let path = dir.path().join(FILE_NAME);
        set_format_version(&path, 3);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut old = txn.open_table(JOURNAL).unwrap();
                for sequence in 1..=3u64 {
                    old.insert(sequence, format!("old-{sequence}").as_bytes())
                        .unwrap();
                }
                // A run: per entry its sequence, its length, then the entry.
                let mut run = Vec::new();
                for sequence in 4..=5u64 {
                    let entry = format!("old-{sequence}");
                    run.extend_from_slice(&sequence.to_le_bytes());
                    run.extend_from_slice(&(entry.len() as u32).to_le_bytes());
                    run.extend_from_slice(entry.as_bytes());
                }
                txn.open_table(JOURNAL_CHUNKS)
                    .unwrap()
                    .insert(4, run.as_slice())
                    .unwrap();
                txn.open_table(JOURNAL_HEAD)
                    .unwrap()
                    .insert(JOURNAL_HEAD_KEY, 5)
                    .unwrap();
            }
            txn.commit().unwrap();
        }

        let store = RedbStore::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for sequence in 6..=8u64 {
            batch.push(Mutation::AppendJournal {
                sequence,
                event: format!("new-{sequence}").into_bytes().into(),
            });
        }
        store.commit(batch).await.unwrap();
        let names = |rows: Vec<JournalRow>| -> Vec<String> {
            rows.into_iter()
                .map(|(sequence, event)| {
                    format!("{sequence}:{}", String::from_utf8(event).unwrap())
                })
                .collect()
        };
        assert_eq!(
            names(store.read_journal(4, 4).await.unwrap()),
            ["4:old-4", "5:old-5", "6:new-6", "7:new-7"]
        );
        store
            .commit(WriteBatch::from(vec![Mutation::TrimJournal { below: 7 }]))
            .await
            .unwrap();
        assert_eq!(
            names(store.read_journal(0, 10).await.unwrap()),
            ["7:new-7", "8:new-8"]
        );
        assert_eq!(store.last_journal_sequence().await.unwrap(), 8);
        store.close().await.unwrap();
        drop(store);
        assert_eq!(format_version(&path), FORMAT_VERSION);
        let db = Database::create(&path).unwrap();
        let tables: Vec<String> = db
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|table| ::redb::TableHandle::name(&table).to_owned())
            .collect();
        assert!(tables.contains(&"journal_blocks".to_owned()));
        assert!(!tables.contains(&"journal".to_owned()));
        assert!(!tables.contains(&"journal_chunks".to_owned()));
        drop(db);

        let reopened = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            names(reopened.read_journal(0, 10).await.unwrap()),
            ["7:new-7", "8:new-8"]
        );
    }

    /// Random batches against a store that checkpoints in the background all the time must
    /// leave exactly what the in-memory reference store holds, before and after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn constant_background_checkpoints_match_the_reference_store() {
        // A tiny row bound: the overlay starts empty after every checkpoint.
        let options = RedbOptions {
            max_overlay_rows: 6,
            max_log_bytes: 600,
            ..never_by_time()
        };
        check_against_reference(options, 7).await;
        // A tiny log bound: checkpointed rows come back as the next overlay's cache.
        let options = RedbOptions {
            max_log_bytes: 300,
            ..never_by_time()
        };
        check_against_reference(options, 8).await;
    }

    async fn check_against_reference(options: RedbOptions, seed: u64) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open_with(dir.path(), options).unwrap());
        let reference = MemoryStore::new();
        let maps = ["a", "b", "c"];
        let mut pending = Vec::new();
        for i in 0..600u64 {
            let mut batch = WriteBatch::new();
            for _ in 0..rng.random_range(1..4) {
                let map = maps[rng.random_range(0..maps.len())];
                let key = format!("k{}", rng.random_range(0..6));
                let millis = rng.random_range(0..50);
                let tag = format!("{millis}:{i}:n");
                batch.push(match rng.random_range(0..12) {
                    0..4 => put(map, &key, millis),
                    4 => Mutation::DeleteLww {
                        map: map.into(),
                        key,
                    },
                    5 => {
                        let tombstone = LwwRecord {
                            value: None,
                            timestamp: Timestamp::new(millis, 0, "node"),
                            ttl_ms: None,
                        };
                        Mutation::put_lww(map, key, &tombstone).unwrap()
                    }
                    6 => Mutation::PutOrKey {
                        map: map.into(),
                        key,
                        records: vec![OrMapRecord {
                            value: json!(i),
                            timestamp: Timestamp::new(millis, 0, "node"),
                            tag,
                            ttl_ms: None,
                        }],
                    },
                    7 => Mutation::AddOrTombstones {
                        map: map.into(),
                        tags: vec![format!("{millis}:{}:n", i.saturating_sub(3))],
                    },
                    8 => Mutation::ClearMap { map: map.into() },
                    9 => Mutation::AppendJournal {
                        sequence: i,
                        event: vec![1, i as u8].into(),
                    },
                    // A rewrite of (or a gap below) what is stored, and a trim.
                    10 => Mutation::AppendJournal {
                        sequence: rng.random_range(0..=i),
                        event: vec![2, i as u8].into(),
                    },
                    _ => Mutation::TrimJournal {
                        below: i.saturating_sub(rng.random_range(150..400)),
                    },
                });
            }
            let expected = reference.commit(batch.clone()).await.is_ok();
            let store = Arc::clone(&store);
            // Concurrent commits form groups, but their queue order is the commit order.
            let queued = store
                .enqueue(|reply| Job::Write {
                    batch,
                    reply: Some(reply),
                })
                .await;
            pending.push((i, expected, queued.unwrap()));
            if pending.len() == 16 {
                for (i, expected, outcome) in pending.drain(..) {
                    assert_eq!(outcome.await.unwrap().is_ok(), expected, "batch {i}");
                }
            }
        }
        for (i, expected, outcome) in pending.drain(..) {
            assert_eq!(outcome.await.unwrap().is_ok(), expected, "batch {i}");
        }
        assert!(store.stats().checkpoints > 20, "{:?}", store.stats());

        async fn assert_matches(store: &RedbStore, reference: &MemoryStore) {
            for map in ["a", "b", "c"] {
                assert_eq!(
                    store.load_map(map).await.unwrap(),
                    reference.load_map(map).await.unwrap(),
                    "map {map}"
                );
            }
            assert_eq!(
                store.read_journal(0, 1000).await.unwrap(),
                reference.read_journal(0, 1000).await.unwrap()
            );
        }
        let journal = reference.read_journal(0, 1000).await.unwrap();
        assert!(journal.len() > 10, "{} journal entries", journal.len());
        assert_matches(&store, &reference).await;
        store.close().await.unwrap();
        let reopened = RedbStore::open(dir.path()).unwrap();
        assert_matches(&reopened, &reference).await;
    }
}
