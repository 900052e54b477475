//! The journal on disk: entries in runs ("blocks") appended to block files
//! `<store dir>/journal/<index>`, each block found through one row of redb's `journal_blocks`
//! table, keyed by the block's first sequence.
//!
//! Format 3 kept the runs' bytes in redb rows, and copying every journaled write into redb's
//! B-tree (pages allocated, checksummed and written for bytes nothing ever updates) cost a
//! checkpoint 0.5 µs per write under load, in bursts that held back every connection's acks.
//! Appending them to a file costs a copy and a share of one `fdatasync`; redb keeps only the
//! locators, about one row per 1,024 entries, so order, trims and the head stay in the same
//! transaction as the map rows they describe.
//!
//! A block's bytes: per entry its sequence (u64), its length (u32), both little-endian, then
//! the entry. Sequences rise within a block and from one block to the next, but need not be
//! consecutive. A locator names the file, offset and length, the bytes' CRC-32C, the entry
//! count and the last sequence.
//!
//! A checkpoint writes its blocks and makes them durable before it commits their locators, so
//! a locator never points at bytes a crash can take back; what a crashed checkpoint appended
//! stays unreferenced. A checkpoint extends the last block while that block ends its file, so a
//! quiet journal does not become one block per checkpoint; a block also ends with its file
//! (16 MiB). Entries written over stored sequences or into a gap (`AppendJournal` may replace
//! an entry: the client's op log marks dropped ops so) go into one copy of the block covering
//! them, appended; once such copies leave the files more than half garbage, a checkpoint moves
//! every block into new files. Trimming drops whole blocks and re-keys the one straddling the
//! line to its kept suffix without writing. Files no locator points into are deleted after the
//! commit that made them so; a reader whose file is gone retries on a newer snapshot.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ::redb::{Database, ReadableDatabase, ReadableTable, Table};

use super::{JOURNAL_BLOCKS, backend, create_durably, io_error};
use crate::store::{JournalRow, StoreError};

/// The directory of block files inside the store directory.
pub(super) const DIR_NAME: &str = "journal";
/// Most entries in one block: one locator row per 1,024 entries keeps the table small, while
/// a rewrite in place or a read from the middle of a block still handles one block only.
pub(super) const MAX_BLOCK_ENTRIES: u32 = 1024;
/// A block is closed once its bytes pass this, so huge entries do not make huge blocks.
pub(super) const MAX_BLOCK_BYTES: u64 = 512 << 10;
/// A block file is closed once it passes this: trimming frees disk space a file at a time.
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Appended bytes buffered before they are written to the file.
const MAX_PENDING_BYTES: usize = 1 << 20;
/// Bytes before each entry in a block: its sequence and its length.
const ENTRY_HEADER: usize = 12;
/// Readers that find a block file gone (trimmed since their snapshot) retry this often.
const READ_ATTEMPTS: usize = 3;

/// Where one block's bytes are, and what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Locator {
    file: u64,
    offset: u64,
    len: u64,
    crc: u32,
    count: u32,
    last: u64,
}

const LOCATOR_LEN: usize = 40;

impl Locator {
    fn encode(&self) -> [u8; LOCATOR_LEN] {
        let mut out = [0; LOCATOR_LEN];
        out[0..8].copy_from_slice(&self.file.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out[24..28].copy_from_slice(&self.crc.to_le_bytes());
        out[28..32].copy_from_slice(&self.count.to_le_bytes());
        out[32..40].copy_from_slice(&self.last.to_le_bytes());
        out
    }

    fn decode(first: u64, bytes: &[u8]) -> Result<Self, StoreError> {
        let Ok(bytes) = <&[u8; LOCATOR_LEN]>::try_from(bytes) else {
            return Err(corrupt(first, "locator of the wrong length"));
        };
        let u64_at = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let u32_at = |at: usize| {
            let mut word = [0; 4];
            word.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(word)
        };
        Ok(Self {
            file: u64_at(0),
            offset: u64_at(8),
            len: u64_at(16),
            crc: u32_at(24),
            count: u32_at(28),
            last: u64_at(32),
        })
    }

    fn is_full(&self) -> bool {
        self.count >= MAX_BLOCK_ENTRIES || self.len >= MAX_BLOCK_BYTES
    }
}

fn corrupt(first: u64, message: &str) -> StoreError {
    StoreError::Corrupt {
        what: "journal block",
        key: first.to_string(),
        message: message.to_owned(),
    }
}

/// The block files' writing end: the file blocks are appended to, and appended bytes not yet
/// written. Checkpoints use it, one at a time.
#[derive(Debug)]
pub(super) struct BlockFiles {
    dir: PathBuf,
    /// Every block file on disk and its size (the current one's is `len`); the highest is
    /// appended to.
    sizes: BTreeMap<u64, u64>,
    index: u64,
    current: File,
    /// Bytes in the current file, `pending` included.
    len: u64,
    pending: Vec<u8>,
    /// The current file has writes not yet synced.
    dirty: bool,
    /// Files below this index hold no block the last trim or compaction kept: deleted after
    /// its transaction commits. (A checkpoint that fails stops the store until it is reopened,
    /// so no later commit acts on a bound whose transaction never committed.)
    removable_below: u64,
    /// Size that closes a file ([`MAX_FILE_BYTES`]; tests use small files).
    max_file_bytes: u64,
    /// Garbage tolerated before a compaction ([`COMPACTION_SLACK_BYTES`]; tests use less).
    compaction_slack: u64,
}

impl BlockFiles {
    /// Opens the block files in `dir` (created if missing), appending to the highest.
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error("create the journal directory", dir, e))?;
        // The directory's own entry must be durable before locators point into it.
        let parent = dir.parent().unwrap_or(Path::new("."));
        File::open(parent)
            .and_then(|parent| parent.sync_all())
            .map_err(|e| io_error("sync the directory", parent, e))?;
        let mut sizes = BTreeMap::new();
        let listing = std::fs::read_dir(dir).map_err(|e| io_error("list", dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error("list", dir, e))?;
            if let Some(index) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                let size = entry
                    .metadata()
                    .map_err(|e| io_error("inspect a journal block file", &entry.path(), e))?
                    .len();
                sizes.insert(index, size);
            }
        }
        let index = match sizes.last_key_value() {
            Some((&index, _)) => index,
            None => {
                create_file(dir, 1)?;
                sizes.insert(1, 0);
                1
            }
        };
        let path = file_path(dir, index);
        let current = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_error("open a journal block file", &path, e))?;
        let len = current
            .metadata()
            .map_err(|e| io_error("inspect a journal block file", &path, e))?
            .len();
        Ok(Self {
            dir: dir.to_owned(),
            sizes,
            index,
            current,
            len,
            pending: Vec::new(),
            dirty: false,
            removable_below: 0,
            max_file_bytes: MAX_FILE_BYTES,
            compaction_slack: COMPACTION_SLACK_BYTES,
        })
    }

    /// The directory the block files live in.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes every block file and starts over with an empty one (before a migration fills
    /// them: files an interrupted migration left hold nothing any locator points at).
    fn discard_all(&mut self) -> Result<(), StoreError> {
        self.pending.clear();
        self.dirty = false;
        self.rotate()?;
        self.removable_below = self.index;
        self.remove_unreferenced()
    }

    /// Whether appending extends `locator`'s block: it ends the current file, which has room.
    fn extends(&self, locator: &Locator) -> bool {
        locator.file == self.index
            && locator.offset.checked_add(locator.len) == Some(self.len)
            && !self.is_full()
    }

    /// Whether the current file has reached its size: the block being written ends, and the
    /// next goes to a new file.
    fn is_full(&self) -> bool {
        self.len >= self.max_file_bytes
    }

    /// Moves on to a new file once the current one is full (only between blocks).
    fn rotate_if_full(&mut self) -> Result<(), StoreError> {
        if self.is_full() {
            self.rotate()?;
        }
        Ok(())
    }

    /// Syncs the current file and moves on to a new one.
    fn rotate(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        let next = self.index + 1;
        self.current = create_file(&self.dir, next)?;
        self.sizes.insert(self.index, self.len);
        self.sizes.insert(next, 0);
        self.index = next;
        self.len = 0;
        Ok(())
    }

    /// Bytes in all block files, garbage included.
    fn total_bytes(&self) -> u64 {
        let older: u64 = self.sizes.range(..self.index).map(|(_, size)| size).sum();
        older + self.len
    }

    /// Appends `bytes` to the current file (buffered).
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.pending.extend_from_slice(bytes);
        self.appended(bytes.len())
    }

    /// Appends one entry, framed straight into the buffer, and returns its framed length and
    /// `crc` extended over it.
    fn append_entry(
        &mut self,
        sequence: u64,
        entry: &[u8],
        crc: u32,
    ) -> Result<(u64, u32), StoreError> {
        let start = self.pending.len();
        push_entry(&mut self.pending, sequence, entry)?;
        let framed = self.pending.get(start..).unwrap_or_default();
        let extended = ::crc32c::crc32c_append(crc, framed);
        let framed_len = framed.len();
        self.appended(framed_len)?;
        Ok((framed_len as u64, extended))
    }

    /// Counts `len` bytes just buffered, writing the buffer out once it is large.
    fn appended(&mut self, len: usize) -> Result<(), StoreError> {
        self.len += len as u64;
        if self.pending.len() >= MAX_PENDING_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.current
            .write_all(&self.pending)
            .map_err(|e| io_error("append to", &file_path(&self.dir, self.index), e))?;
        self.pending.clear();
        self.dirty = true;
        Ok(())
    }

    /// Makes every appended byte durable: before the transaction whose locators point at them
    /// commits.
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        self.write_pending()?;
        if self.dirty {
            self.current
                .sync_data()
                .map_err(|e| io_error("sync", &file_path(&self.dir, self.index), e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// One block's bytes, checked against its locator (appended bytes are written first).
    fn read_block(&mut self, first: u64, locator: &Locator) -> Result<Vec<u8>, StoreError> {
        self.write_pending()?;
        let path = file_path(&self.dir, locator.file);
        let mut file =
            File::open(&path).map_err(|e| io_error("open a journal block file", &path, e))?;
        read_verified(&mut file, &path, first, locator)
    }

    /// Deletes the files the last committed trim or compaction left no block in. Not synced:
    /// a file that reappears after a crash holds nothing a locator points at, and goes when
    /// the store next opens ([`mark_files_without_blocks`]).
    pub(super) fn remove_unreferenced(&mut self) -> Result<(), StoreError> {
        let below = self.removable_below.min(self.index);
        let removable: Vec<u64> = self.sizes.range(..below).map(|(index, _)| *index).collect();
        for index in removable {
            remove_file(&self.dir, index)?;
            self.sizes.remove(&index);
        }
        Ok(())
    }
}

fn file_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016}"))
}

/// Creates block file `index`, its directory entry durable before any locator points into it.
fn create_file(dir: &Path, index: u64) -> Result<File, StoreError> {
    create_durably(&file_path(dir, index), "create a journal block file")
}

fn remove_file(dir: &Path, index: u64) -> Result<(), StoreError> {
    let path = file_path(dir, index);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("delete a journal block file", &path, e))
        }
        _ => Ok(()),
    }
}

/// Reads a block's bytes from `file` and checks their length and checksum.
fn read_verified(
    file: &mut File,
    path: &Path,
    first: u64,
    locator: &Locator,
) -> Result<Vec<u8>, StoreError> {
    let size = file
        .metadata()
        .map_err(|e| io_error("inspect a journal block file", path, e))?
        .len();
    if locator
        .offset
        .checked_add(locator.len)
        .is_none_or(|end| end > size)
    {
        return Err(corrupt(first, "block past the end of its file"));
    }
    let len = usize::try_from(locator.len).map_err(|_| corrupt(first, "block too long"))?;
    let mut bytes = vec![0; len];
    file.seek(SeekFrom::Start(locator.offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| io_error("read a journal block", path, e))?;
    if ::crc32c::crc32c(&bytes) != locator.crc {
        return Err(corrupt(first, "checksum mismatch"));
    }
    Ok(bytes)
}

/// Stores `entries` (ascending): those at or below the highest stored sequence replace or
/// join what is stored, the rest are appended. Then, should copies have left the files more
/// than half garbage, moves every block into new files (see [`compact_if_wasteful`]).
pub(super) fn write<'a>(
    blocks: &mut Table<'_, u64, &'static [u8]>,
    files: &mut BlockFiles,
    entries: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(), StoreError> {
    let highest = last_block_at(blocks, u64::MAX)?.map_or(0, |(_, locator)| locator.last);
    let mut entries = entries.into_iter().peekable();
    let mut rewrote = false;
    while let Some((sequence, entry)) = entries.next_if(|(s, _)| *s <= highest) {
        // The entries after it in the same block join its copy: one copy per block.
        let covering = last_block_at(blocks, sequence)?.filter(|(_, l)| l.last >= sequence);
        let mut group = vec![(sequence, entry)];
        if let Some((_, locator)) = &covering {
            while let Some(next) = entries.next_if(|(s, _)| *s <= locator.last) {
                group.push(next);
            }
        }
        write_in_place(blocks, files, covering, group)?;
        rewrote = true;
    }
    append(blocks, files, entries)?;
    if rewrote {
        compact_if_wasteful(blocks, files)?;
    }
    Ok(())
}

/// Appends `entries` (ascending, above every stored sequence): into the last block while it
/// ends the current file and both have room, then into new blocks.
fn append<'a>(
    blocks: &mut Table<'_, u64, &'static [u8]>,
    files: &mut BlockFiles,
    entries: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(), StoreError> {
    let open = last_block_at(blocks, u64::MAX)?
        .filter(|(_, locator)| files.extends(locator) && !locator.is_full());
    write_blocks(blocks, files, open, entries)
}

/// Writes `entries` (ascending) into `open` (a block ending the current file) while it has
/// room, then into new blocks of at most [`MAX_BLOCK_ENTRIES`] / [`MAX_BLOCK_BYTES`]; a block
/// also ends with its file.
fn write_blocks<'a>(
    blocks: &mut Table<'_, u64, &'static [u8]>,
    files: &mut BlockFiles,
    mut open: Option<(u64, Locator)>,
    entries: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(), StoreError> {
    for (sequence, entry) in entries {
        let (first, mut locator) = match open.take() {
            Some(block) => block,
            None => {
                files.rotate_if_full()?;
                let start = Locator {
                    file: files.index,
                    offset: files.len,
                    len: 0,
                    crc: 0,
                    count: 0,
                    last: sequence,
                };
                (sequence, start)
            }
        };
        let (framed_len, crc) = files.append_entry(sequence, entry, locator.crc)?;
        locator.len += framed_len;
        locator.crc = crc;
        locator.count += 1;
        locator.last = sequence;
        if locator.is_full() || files.is_full() {
            insert(blocks, first, &locator)?;
        } else {
            open = Some((first, locator));
        }
    }
    match open {
        Some((first, locator)) => insert(blocks, first, &locator),
        None => Ok(()),
    }
}

/// Stores `group` (ascending, at or below the highest stored sequence) without breaking the
/// order: merged into a copy of the block `covering` them, else as blocks of their own in
/// the gap. The copy is split at the block bounds should the group have filled gaps.
fn write_in_place(
    blocks: &mut Table<'_, u64, &'static [u8]>,
    files: &mut BlockFiles,
    covering: Option<(u64, Locator)>,
    group: Vec<(u64, &[u8])>,
) -> Result<(), StoreError> {
    let Some((first, locator)) = covering else {
        return write_blocks(blocks, files, None, group);
    };
    let bytes = files.read_block(first, &locator)?;
    let mut run: BTreeMap<u64, &[u8]> = entries(first, &bytes)?.into_iter().collect();
    run.extend(group);
    blocks
        .remove(first)
        .map_err(backend("replace a journal block"))?;
    write_blocks(blocks, files, None, run)
}

/// Slack before [`compact_if_wasteful`] acts: small journals never bother.
const COMPACTION_SLACK_BYTES: u64 = 16 << 20;

/// Copies every block into new files once the block files hold more than twice the bytes
/// the blocks do (plus [`COMPACTION_SLACK_BYTES`]), so the old files can be deleted. Only
/// copies make garbage (a journal whose oldest entry stays while later ones are rewritten,
/// as the client's op log does while offline, would otherwise grow without bound); the
/// server's journal only appends and trims.
fn compact_if_wasteful(
    blocks: &mut Table<'_, u64, &'static [u8]>,
    files: &mut BlockFiles,
) -> Result<(), StoreError> {
    let failed = backend("compact the journal");
    let mut live = Vec::new();
    for row in blocks.iter().map_err(failed.clone())? {
        let (first, locator) = row.map_err(failed.clone())?;
        live.push((
            first.value(),
            Locator::decode(first.value(), locator.value())?,
        ));
    }
    let live_bytes: u64 = live.iter().map(|(_, locator)| locator.len).sum();
    if files.total_bytes() <= 2 * live_bytes + files.compaction_slack {
        return Ok(());
    }
    files.rotate()?;
    let fresh = files.index;
    for (first, locator) in live {
        let bytes = files.read_block(first, &locator)?;
        files.rotate_if_full()?;
        let moved = Locator {
            file: files.index,
            offset: files.len,
            ..locator
        };
        files.append(&bytes)?;
        insert(blocks, first, &moved)?;
    }
    files.removable_below = fresh;
    Ok(())
}

/// Drops every entry below `below`: whole blocks outright, and the older part of the block
/// straddling the line by re-keying it to its kept suffix. Files left without a block are
/// deleted by [`BlockFiles::remove_unreferenced`] once this commits.
pub(super) fn trim(
    blocks: &mut Table<'_, u64, &'static [u8]>,
    files: &mut BlockFiles,
    below: u64,
) -> Result<(), StoreError> {
    let Some(line) = below.checked_sub(1) else {
        return Ok(());
    };
    let Some((first, locator)) = last_block_at(blocks, line)? else {
        return Ok(());
    };
    let kept = if locator.last >= below {
        Some(suffix(files, first, &locator, below)?)
    } else {
        None
    };
    let failed = backend("trim the journal");
    blocks
        .retain_in(..below, |_, _| false)
        .map_err(failed.clone())?;
    if let Some((first, locator)) = kept {
        insert(blocks, first, &locator)?;
    }
    mark_files_without_blocks(blocks, files)
}

/// Marks for deletion the block files below the lowest one a block is in (all but the file
/// appended to when there are none): after a trim, and when the store opens, since deleting a
/// file is not synced and a crash after a trim can bring files back that hold nothing any
/// block uses.
pub(super) fn mark_files_without_blocks(
    blocks: &impl ReadableTable<u64, &'static [u8]>,
    files: &mut BlockFiles,
) -> Result<(), StoreError> {
    let failed = backend("list the journal blocks");
    let mut lowest = files.index;
    for row in blocks.iter().map_err(failed.clone())? {
        let (first, locator) = row.map_err(failed.clone())?;
        lowest = lowest.min(Locator::decode(first.value(), locator.value())?.file);
    }
    files.removable_below = lowest;
    Ok(())
}

/// The block's entries from `below` on, as a block of their own (the same bytes, from an
/// entry boundary on), under its first kept sequence.
fn suffix(
    files: &mut BlockFiles,
    first: u64,
    locator: &Locator,
    below: u64,
) -> Result<(u64, Locator), StoreError> {
    let bytes = files.read_block(first, locator)?;
    let mut skipped_bytes = 0;
    for (skipped, (sequence, entry)) in entries(first, &bytes)?.into_iter().enumerate() {
        if sequence >= below {
            let kept = bytes.get(skipped_bytes..).unwrap_or_default();
            let kept_locator = Locator {
                offset: locator.offset + skipped_bytes as u64,
                len: kept.len() as u64,
                crc: ::crc32c::crc32c(kept),
                count: locator
                    .count
                    .saturating_sub(u32::try_from(skipped).unwrap_or(u32::MAX)),
                ..*locator
            };
            return Ok((sequence, kept_locator));
        }
        skipped_bytes += ENTRY_HEADER + entry.len();
    }
    Err(corrupt(first, "its last sequence is missing from it"))
}

fn insert(
    blocks: &mut Table<'_, u64, &'static [u8]>,
    first: u64,
    locator: &Locator,
) -> Result<(), StoreError> {
    blocks
        .insert(first, locator.encode().as_slice())
        .map(drop)
        .map_err(backend("write a journal block locator"))
}

/// The block starting at or below `sequence` with the highest first sequence (it may also
/// hold later sequences).
fn last_block_at(
    blocks: &impl ReadableTable<u64, &'static [u8]>,
    sequence: u64,
) -> Result<Option<(u64, Locator)>, StoreError> {
    let failed = backend("find a journal block");
    let row = blocks
        .range(..=sequence)
        .map_err(failed.clone())?
        .next_back()
        .transpose()
        .map_err(failed)?;
    row.map(|(first, locator)| {
        let first = first.value();
        Locator::decode(first, locator.value()).map(|locator| (first, locator))
    })
    .transpose()
}

/// Up to `limit` entries from `from` on, read from a fresh snapshot (again, should a trim
/// delete a block file between the snapshot and the read).
pub(super) fn read(
    db: &Database,
    dir: &Path,
    from: u64,
    limit: usize,
) -> Result<Vec<JournalRow>, StoreError> {
    for _ in 0..READ_ATTEMPTS {
        let txn = db
            .begin_read()
            .map_err(backend("begin a read transaction"))?;
        let blocks = txn
            .open_table(JOURNAL_BLOCKS)
            .map_err(backend("open the journal"))?;
        if let Some(rows) = read_snapshot(&blocks, dir, from, limit)? {
            return Ok(rows);
        }
    }
    Err(StoreError::Corrupt {
        what: "journal block file",
        key: format!("from sequence {from}"),
        message: format!("missing from {}", dir.display()),
    })
}

/// [`read`] on one snapshot; `None` when a block file it points into is gone.
fn read_snapshot(
    blocks: &impl ReadableTable<u64, &'static [u8]>,
    dir: &Path,
    from: u64,
    limit: usize,
) -> Result<Option<Vec<JournalRow>>, StoreError> {
    let failed = backend("read the journal");
    let mut rows = Vec::new();
    // The block holding `from` starts at or below it; later blocks start above it.
    let start = last_block_at(blocks, from)?.map_or(from, |(first, _)| first);
    let mut open: Option<(u64, File)> = None;
    for row in blocks.range(start..).map_err(failed.clone())? {
        if rows.len() >= limit {
            break;
        }
        let (first, locator) = row.map_err(failed.clone())?;
        let first = first.value();
        let locator = Locator::decode(first, locator.value())?;
        if locator.last < from {
            continue;
        }
        let path = file_path(dir, locator.file);
        let file = match &mut open {
            Some((index, file)) if *index == locator.file => file,
            slot => match File::open(&path) {
                Ok(file) => &mut slot.insert((locator.file, file)).1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error("open a journal block file", &path, e)),
            },
        };
        let bytes = read_verified(file, &path, first, &locator)?;
        let wanted = limit - rows.len();
        rows.extend(
            entries(first, &bytes)?
                .into_iter()
                .filter(|(sequence, _)| *sequence >= from)
                .take(wanted)
                .map(|(sequence, entry)| (sequence, entry.to_vec())),
        );
    }
    Ok(Some(rows))
}

/// Moves a format-2 or format-3 journal (entries in redb rows: one per entry in `single`,
/// runs in the block layout in `runs`, all of `single` older) into block files.
pub(super) fn migrate(
    single: &impl ReadableTable<u64, &'static [u8]>,
    runs: &impl ReadableTable<u64, &'static [u8]>,
    blocks: &mut Table<'_, u64, &'static [u8]>,
    files: &mut BlockFiles,
) -> Result<(), StoreError> {
    let failed = backend("move the journal into block files");
    files.discard_all()?;
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    for row in single.iter().map_err(failed.clone())? {
        let (sequence, entry) = row.map_err(failed.clone())?;
        batch.push((sequence.value(), entry.value().to_vec()));
        if batch.len() == MAX_BLOCK_ENTRIES as usize {
            append(blocks, files, batch.iter().map(|(s, e)| (*s, e.as_slice())))?;
            batch.clear();
        }
    }
    append(blocks, files, batch.iter().map(|(s, e)| (*s, e.as_slice())))?;
    for row in runs.iter().map_err(failed.clone())? {
        let (first, run) = row.map_err(failed.clone())?;
        append(blocks, files, entries(first.value(), run.value())?)?;
    }
    files.sync()
}

fn push_entry(run: &mut Vec<u8>, sequence: u64, entry: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(entry.len()).map_err(|_| StoreError::Encode {
        what: "journal entry",
        message: format!("{} bytes is more than a u32 length", entry.len()),
    })?;
    run.reserve(ENTRY_HEADER + entry.len());
    run.extend_from_slice(&sequence.to_le_bytes());
    run.extend_from_slice(&len.to_le_bytes());
    run.extend_from_slice(entry);
    Ok(())
}

/// The entries of one block (or format-3 run), in order.
fn entries(first: u64, run: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    let mut rest = run;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((header, tail)) = rest.split_first_chunk::<ENTRY_HEADER>() else {
            return Err(corrupt(first, "truncated entry header"));
        };
        let (sequence, len) = header.split_at(8);
        let sequence = u64::from_le_bytes(
            sequence
                .try_into()
                .map_err(|_| corrupt(first, "sequence"))?,
        );
        let len =
            u32::from_le_bytes(len.try_into().map_err(|_| corrupt(first, "length"))?) as usize;
        if len > tail.len() {
            return Err(corrupt(first, "entry longer than its block"));
        }
        let (entry, tail) = tail.split_at(len);
        out.push((sequence, entry));
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ::redb::TableDefinition;

    use super::*;

    const OLD_SINGLE: TableDefinition<u64, &[u8]> = TableDefinition::new("old_single");
    const OLD_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("old_runs");

    fn entry(sequence: u64) -> Vec<u8> {
        // Sizes vary, and one entry passes the block's byte bound on its own.
        let len = if sequence % 2503 == 0 {
            MAX_BLOCK_BYTES as usize + 1
        } else {
            (sequence % 13) as usize
        };
        vec![(sequence % 251) as u8; len]
    }

    /// A redb database with the blocks table, and its block files.
    struct Journal {
        dir: tempfile::TempDir,
        db: Database,
        files: BlockFiles,
    }

    impl Journal {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("j.redb")).unwrap();
            let files = BlockFiles::open(&dir.path().join(DIR_NAME)).unwrap();
            let mut journal = Self { dir, db, files };
            journal.commit(|_, _| Ok(()));
            journal
        }

        /// A journal holding `sequences`, written in one checkpoint.
        fn with(sequences: &[u64]) -> Self {
            let mut journal = Self::new();
            journal.write(sequences.iter().map(|&s| (s, entry(s))));
            journal
        }

        /// Runs `change` in one transaction and commits it as a checkpoint does.
        fn commit(
            &mut self,
            change: impl FnOnce(
                &mut Table<'_, u64, &'static [u8]>,
                &mut BlockFiles,
            ) -> Result<(), StoreError>,
        ) {
            let txn = self.db.begin_write().unwrap();
            {
                let mut blocks = txn.open_table(JOURNAL_BLOCKS).unwrap();
                change(&mut blocks, &mut self.files).unwrap();
            }
            self.files.sync().unwrap();
            txn.commit().unwrap();
            self.files.remove_unreferenced().unwrap();
        }

        fn write(&mut self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) {
            let entries: Vec<(u64, Vec<u8>)> = entries.into_iter().collect();
            self.commit(|blocks, files| {
                write(
                    blocks,
                    files,
                    entries.iter().map(|(s, e)| (*s, e.as_slice())),
                )
            });
        }

        fn trim(&mut self, below: u64) {
            self.commit(|blocks, files| trim(blocks, files, below));
        }

        /// A journal in 2 KiB files holding [`big_entry`] `1..=last`, five per checkpoint.
        fn in_small_files(last: u64) -> Self {
            let mut journal = Self::new();
            journal.files.max_file_bytes = 2 << 10;
            for start in (1..=last).step_by(5) {
                journal.write((start..(start + 5).min(last + 1)).map(big_entry));
            }
            journal
        }

        /// Reopens the block files and deletes those no block is in, as opening the store
        /// does.
        fn reopen(&mut self) {
            self.files = BlockFiles::open(self.files.dir()).unwrap();
            let txn = self.db.begin_read().unwrap();
            let blocks = txn.open_table(JOURNAL_BLOCKS).unwrap();
            mark_files_without_blocks(&blocks, &mut self.files).unwrap();
            self.files.remove_unreferenced().unwrap();
        }

        fn read(&self, from: u64, limit: usize) -> Vec<JournalRow> {
            read(&self.db, self.files.dir(), from, limit).unwrap()
        }

        /// Every block as (first sequence, locator), in order.
        fn blocks(&self) -> Vec<(u64, Locator)> {
            let txn = self.db.begin_read().unwrap();
            let blocks = txn.open_table(JOURNAL_BLOCKS).unwrap();
            blocks
                .iter()
                .unwrap()
                .map(|row| {
                    let (first, locator) = row.unwrap();
                    let locator = Locator::decode(first.value(), locator.value()).unwrap();
                    (first.value(), locator)
                })
                .collect()
        }

        fn file_names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.files.dir())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        }
    }

    /// Entry `sequence` of 300 bytes, so a few fill a small file.
    fn big_entry(sequence: u64) -> (u64, Vec<u8>) {
        (sequence, vec![(sequence % 251) as u8; 300])
    }

    fn expected(sequences: impl Iterator<Item = u64>, limit: usize) -> Vec<JournalRow> {
        sequences.take(limit).map(|s| (s, entry(s))).collect()
    }

    /// Odd sequences only, so blocks have gaps inside them too: 2,400 entries, so blocks end
    /// by their entry count (after 2247 and 4551) and by their bytes (after 2503).
    fn new_sequences() -> Vec<u64> {
        (200..5000).filter(|s| s % 2 == 1).collect()
    }

    #[test]
    fn reads_start_anywhere_and_stop_at_the_limit() {
        let sequences = new_sequences();
        let journal = Journal::with(&sequences);
        for from in [
            0, 200, 201, 202, 2247, 2248, 2249, 2503, 2504, 2505, 4999, 5000,
        ] {
            for limit in [0, 1, 5, 1024, 1025, 5000] {
                assert_eq!(
                    journal.read(from, limit),
                    expected(sequences.iter().copied().filter(|s| *s >= from), limit),
                    "from {from} limit {limit}"
                );
            }
        }
    }

    #[test]
    fn blocks_are_bounded_by_entries_and_bytes() {
        let sequences = new_sequences();
        let journal = Journal::with(&sequences);
        let blocks = journal.blocks();
        for (first, locator) in &blocks {
            assert!(locator.count <= MAX_BLOCK_ENTRIES);
            let last_len = entry(locator.last).len() as u64;
            assert!(locator.len - last_len - (ENTRY_HEADER as u64) < MAX_BLOCK_BYTES);
            assert!(first <= &locator.last);
        }
        let count: u32 = blocks.iter().map(|(_, l)| l.count).sum();
        assert_eq!(count as usize, sequences.len());
        // Full by count after 1,024 entries, closed by bytes after the big entry 2503.
        let firsts: Vec<u64> = blocks.iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, [201, 2249, 2505, 4553]);
    }

    #[test]
    fn a_block_closes_once_its_entries_add_up_to_the_byte_bound() {
        let mut journal = Journal::new();
        // Six of these pass the bound together, five do not.
        let entry = vec![7u8; MAX_BLOCK_BYTES as usize / 6 + 1];
        journal.write((1..=13).map(|s| (s, entry.clone())));
        let firsts: Vec<u64> = journal.blocks().iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, [1, 7, 13]);
    }

    /// One checkpoint after another appends to the same block while it ends its file, so a
    /// quiet journal is not one block per checkpoint (a rewritten copy of the block ends the
    /// file too); a block written behind it ends that.
    #[test]
    fn checkpoints_extend_the_last_block_while_it_ends_the_file() {
        let mut journal = Journal::new();
        for sequence in 2..=10 {
            journal.write([(sequence, entry(sequence))]);
        }
        journal.write([(5, b"rewritten".to_vec())]);
        journal.write([(11, entry(11))]);
        assert_eq!(journal.blocks().len(), 1);
        journal.write([(1, entry(1))]);
        journal.write([(12, entry(12))]);
        let firsts: Vec<u64> = journal.blocks().iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, [1, 2, 12]);
        let mut expected = expected(1..=12, 100);
        expected[4].1 = b"rewritten".to_vec();
        assert_eq!(journal.read(0, 100), expected);
    }

    #[test]
    fn trimming_keeps_exactly_the_entries_at_or_above_the_line() {
        let sequences = new_sequences();
        for below in [0, 120, 200, 2247, 2248, 2249, 2504, 4999, 5000, 9000] {
            let mut journal = Journal::with(&sequences);
            journal.trim(below);
            let kept = sequences.iter().copied().filter(|s| *s >= below);
            assert_eq!(
                journal.read(0, usize::MAX),
                expected(kept, usize::MAX),
                "below {below}"
            );
            // The straddling block is re-keyed to its first kept entry, not copied.
            let blocks = journal.blocks();
            if let Some((first, _)) = blocks.first() {
                assert!(*first >= below.min(201), "below {below}");
            }
            assert_eq!(journal.file_names().len(), 1, "below {below}");
        }
    }

    /// Entries written over stored sequences (or into gaps among them) land in place: reads
    /// return what a plain sequence → entry map holds, in order, without duplicates.
    #[test]
    fn rewrites_and_gap_entries_keep_the_journal_a_plain_sorted_map() {
        let sequences = new_sequences();
        let mut journal = Journal::with(&sequences);
        let mut model: BTreeMap<u64, Vec<u8>> = sequences.iter().map(|&s| (s, entry(s))).collect();
        // A gap below everything, gaps and rows inside blocks, the last row, and new entries
        // past the end, in three checkpoints, then a trim through a rewritten block.
        let rounds: [&[u64]; 3] = [
            &[5, 160, 201, 202, 2248, 2503, 3000],
            &[4999, 5000, 5050],
            &[1, 204, 5001],
        ];
        for (round, sequences) in rounds.iter().enumerate() {
            let written: Vec<(u64, Vec<u8>)> = sequences
                .iter()
                .map(|&s| (s, format!("round {round} seq {s}").into_bytes()))
                .collect();
            journal.write(written.clone());
            model.extend(written);
            let expected: Vec<JournalRow> = model.clone().into_iter().collect();
            assert_eq!(journal.read(0, usize::MAX), expected, "round {round}");
            let from_mid: Vec<JournalRow> = model
                .range(202..)
                .take(3)
                .map(|(s, e)| (*s, e.clone()))
                .collect();
            assert_eq!(journal.read(202, 3), from_mid, "round {round}");
        }
        journal.trim(203);
        model = model.split_off(&203);
        let expected: Vec<JournalRow> = model.into_iter().collect();
        assert_eq!(journal.read(0, usize::MAX), expected);
    }

    /// Trimming frees disk a file at a time: a file goes once no block is in it, which a
    /// block copied into a later file does not delay.
    #[test]
    fn trimming_deletes_files_left_without_blocks() {
        let mut journal = Journal::in_small_files(60);
        let files = journal.file_names().len();
        assert!(files >= 5, "{files} files");
        // A rewrite of entry 58 copies its block into the newest file.
        journal.write([(58, b"rewritten".to_vec())]);
        journal.trim(31);
        let lowest_file = journal.blocks().iter().map(|(_, l)| l.file).min().unwrap();
        let names = journal.file_names();
        assert_eq!(names[0], format!("{lowest_file:016}"));
        assert!(names.len() < files);
        let rows = journal.read(0, 100);
        assert_eq!(rows.first().map(|(s, _)| *s), Some(31));
        assert_eq!(rows.len(), 30);
        assert_eq!(rows[27].1, b"rewritten");

        journal.trim(1000);
        assert!(journal.blocks().is_empty());
        assert_eq!(journal.file_names().len(), 1, "the current file stays");
        assert!(journal.read(0, 100).is_empty());
    }

    /// Files a crash brought back after their trim deleted them (the deletion is not synced)
    /// go when the store opens; the files blocks are in stay.
    #[test]
    fn files_back_after_a_crash_are_deleted_on_open() {
        let mut journal = Journal::in_small_files(40);
        let before = journal.file_names();
        journal.trim(21);
        let after = journal.file_names();
        assert!(after.len() < before.len(), "{before:?} then {after:?}");
        let gone: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
        for name in &gone {
            std::fs::write(journal.files.dir().join(name), b"back from the dead").unwrap();
        }
        assert_eq!(journal.file_names(), before);

        journal.reopen();
        assert_eq!(journal.file_names(), after);
        assert!(journal.read(0, 100) == (21..=40).map(big_entry).collect::<Vec<_>>());

        // With no block left, only the file appended to stays.
        journal.trim(1000);
        std::fs::write(journal.files.dir().join(gone[0]), b"again").unwrap();
        journal.reopen();
        assert_eq!(journal.file_names().len(), 1);
        journal.write([(1001, entry(1001))]);
        assert_eq!(journal.read(0, 10), expected(1001..=1001, 10));
    }

    /// What a checkpoint appended but never committed (a crash before the commit) is never
    /// read, and the next checkpoint starts a block after it.
    #[test]
    fn bytes_of_an_uncommitted_checkpoint_stay_unreferenced() {
        let mut journal = Journal::with(&[1, 2, 3]);
        {
            let txn = journal.db.begin_write().unwrap();
            let mut blocks = txn.open_table(JOURNAL_BLOCKS).unwrap();
            let lost = entry(4);
            write(&mut blocks, &mut journal.files, [(4, lost.as_slice())]).unwrap();
            journal.files.sync().unwrap();
            // Dropped without a commit.
        }
        journal.files = BlockFiles::open(journal.files.dir()).unwrap();
        assert_eq!(journal.read(0, 10), expected(1..=3, 10));
        journal.write([(5, entry(5))]);
        assert_eq!(journal.read(0, 10), expected([1, 2, 3, 5].into_iter(), 10));
        assert_eq!(journal.blocks().len(), 2);
    }

    /// Rewrites of many entries of one block in one checkpoint make one copy of it, and gap
    /// entries merged into a block split it at the bounds.
    #[test]
    fn rewrites_copy_a_block_once_and_keep_the_bounds() {
        let mut journal = Journal::new();
        journal.write((1..=2000).step_by(2).map(|s| (s, vec![1u8; 100])));
        let before = journal.files.total_bytes();
        journal.write((1..=1000).step_by(2).map(|s| (s, vec![2u8; 100])));
        let copied = journal.files.total_bytes() - before;
        assert!(
            copied < 2 * before,
            "{copied} bytes copied for {before} stored"
        );
        journal.write((2..=2000).step_by(2).map(|s| (s, vec![3u8; 100])));
        let blocks = journal.blocks();
        assert!(blocks.iter().all(|(_, l)| l.count <= MAX_BLOCK_ENTRIES));
        assert_eq!(blocks.iter().map(|(_, l)| l.count).sum::<u32>(), 2000);
        let rows = journal.read(0, usize::MAX);
        assert_eq!(rows.len(), 2000);
        assert!(rows.iter().enumerate().all(|(i, (s, e))| {
            let expected = if s % 2 == 0 {
                3
            } else if *s < 1000 {
                2
            } else {
                1
            };
            *s == i as u64 + 1 && e == &vec![expected; 100]
        }));
    }

    /// A journal whose oldest entry stays while later ones are rewritten (the client's op log
    /// while offline) is compacted: its files stay within twice its blocks plus the slack.
    #[test]
    fn copies_are_compacted_away() {
        let mut journal = Journal::new();
        journal.files.max_file_bytes = 4 << 10;
        journal.files.compaction_slack = 16 << 10;
        journal.write((1..=300).map(|s| (s, entry(s))));
        for round in 0..200u64 {
            let sequence = 2 + round % 299;
            journal.write([(sequence, format!("dropped {round}").into_bytes())]);
            let live: u64 = journal.blocks().iter().map(|(_, l)| l.len).sum();
            let on_disk: u64 = std::fs::read_dir(journal.files.dir())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert!(
                on_disk <= 2 * live + (16 << 10) + (4 << 10),
                "round {round}: {on_disk}"
            );
        }
        let rows = journal.read(0, usize::MAX);
        assert_eq!(rows.len(), 300);
        assert_eq!(rows[0], (1, entry(1)));
        assert_eq!(rows[200].1, b"dropped 199");
    }

    /// A reader on a snapshot from before a trim deleted its file gets `None` and retries.
    #[test]
    fn a_reader_behind_a_trim_retries_on_a_new_snapshot() {
        let mut journal = Journal::new();
        journal.files.max_file_bytes = 1 << 10;
        journal.write((0..100).map(|s| (s, vec![7u8; 100])));
        let old = journal.db.begin_read().unwrap();
        journal.trim(90);
        let blocks = old.open_table(JOURNAL_BLOCKS).unwrap();
        assert_eq!(
            read_snapshot(&blocks, journal.files.dir(), 0, 5).unwrap(),
            None
        );
        let rows = journal.read(0, 5);
        assert_eq!(rows.first().map(|(s, _)| *s), Some(90));
        journal.trim(1);
        assert_eq!(journal.read(0, 100).len(), 10);
    }

    #[test]
    fn sequence_zero_is_an_entry_like_any_other() {
        let mut journal = Journal::with(&[0, 1, 2]);
        journal.write([(0, b"again".to_vec())]);
        assert_eq!(journal.read(0, 1), vec![(0, b"again".to_vec())]);
        journal.trim(1);
        assert_eq!(journal.read(0, 10), expected(1..=2, 10));
        journal.write([(3, entry(3))]);
        assert_eq!(journal.read(0, 10), expected(1..=3, 10));
    }

    #[test]
    fn damaged_blocks_are_reported_not_misread() {
        let mut run = Vec::new();
        push_entry(&mut run, 7, b"abc").unwrap();
        assert_eq!(entries(7, &run).unwrap(), vec![(7, &b"abc"[..])]);
        for cut in [run.len() - 1, 5] {
            assert!(matches!(
                entries(7, &run[..cut]),
                Err(StoreError::Corrupt { .. })
            ));
        }

        let journal = Journal::with(&[1, 2, 3]);
        let path = file_path(journal.files.dir(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[ENTRY_HEADER] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(&journal.db, journal.files.dir(), 0, 10),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read(&journal.db, journal.files.dir(), 0, 10),
            Err(StoreError::Corrupt { .. })
        ));
        drop(journal.dir);
    }

    /// Formats 2 and 3 kept entries in redb rows; the upgrade moves them into blocks in
    /// order, dropping whatever an interrupted earlier attempt left in the files.
    #[test]
    fn a_migration_moves_rows_and_runs_into_blocks() {
        let mut journal = Journal::new();
        std::fs::write(file_path(journal.files.dir(), 1), b"left by a crash").unwrap();
        let txn = journal.db.begin_write().unwrap();
        {
            let mut single = txn.open_table(OLD_SINGLE).unwrap();
            for sequence in 1..=1500 {
                single.insert(sequence, entry(sequence).as_slice()).unwrap();
            }
            let mut runs = txn.open_table(OLD_RUNS).unwrap();
            for first in [2000, 3000] {
                let mut run = Vec::new();
                for sequence in first..first + 700 {
                    push_entry(&mut run, sequence, &entry(sequence)).unwrap();
                }
                runs.insert(first, run.as_slice()).unwrap();
            }
            let mut blocks = txn.open_table(JOURNAL_BLOCKS).unwrap();
            migrate(&single, &runs, &mut blocks, &mut journal.files).unwrap();
        }
        txn.commit().unwrap();
        let all = (1..=1500).chain(2000..2700).chain(3000..3700);
        assert_eq!(journal.read(0, usize::MAX), expected(all, usize::MAX));
        assert_eq!(journal.file_names(), [format!("{:016}", 2)]);
    }
}
