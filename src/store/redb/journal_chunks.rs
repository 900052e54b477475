//! Journal entries stored in runs: one redb row per run of up to [`MAX_CHUNK_ENTRIES`]
//! entries (or [`MAX_CHUNK_BYTES`]), keyed by the run's first sequence.
//!
//! One row per entry made the journal most of a checkpoint's B-tree inserts (a checkpoint of
//! 10k LWW rows and 100k entries took 226 ms, 129 ms with runs of 10). Entries written by
//! format 2, one row each in the `journal` table, stay where they are: they are all older than
//! any run, so readers read that table first and trimming empties it in due course.
//!
//! A run's bytes: per entry its sequence (u64), its length (u32), both little-endian, then the
//! entry. Sequences rise within a run and from one run to the next, but need not be
//! consecutive (a sequence whose entry could not be encoded is never used).
//!
//! The server only appends, but `AppendJournal` may also replace a stored entry (the client's
//! op log marks a dropped op that way): such an entry is written in place, into the format-2
//! row or the run that holds its sequence, so runs never overlap.

use std::collections::BTreeMap;

use ::redb::{ReadOnlyTable, ReadableTable, Table};

use super::backend;
use crate::store::{JournalRow, StoreError};

/// Most entries in one run. Runs of 64 made a checkpoint's journal inserts cost 0.9 µs per
/// journaled write under load; runs of 1,024 cost 0.5 (the page allocation and checksums
/// of redb's B-tree are per row), while a rewrite in place or a trim's straddling run still
/// copies at most one run (now up to 1,024 entries or 512 KiB; the client's op log rewrites
/// an entry in place only to mark an op dropped).
pub(super) const MAX_CHUNK_ENTRIES: usize = 1024;
/// A run is closed once its bytes pass this, so huge entries do not make huge rows.
pub(super) const MAX_CHUNK_BYTES: usize = 512 << 10;

/// Bytes before each entry: its sequence and its length.
const ENTRY_HEADER: usize = 12;

/// Stores `entries` (ascending): those at or below the highest stored sequence replace or
/// join what is stored in place, the rest are appended as new runs.
pub(super) fn write<'a>(
    single: &mut Table<'_, u64, &'static [u8]>,
    chunks: &mut Table<'_, u64, &'static [u8]>,
    entries: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(), StoreError> {
    let tails = Tails::read(single, chunks)?;
    let mut entries = entries.into_iter().peekable();
    while let Some((sequence, entry)) = entries.next_if(|(s, _)| *s <= tails.highest()) {
        write_in_place(single, chunks, &tails, sequence, entry)?;
    }
    append(chunks, entries)
}

/// The highest sequences stored: in the format-2 table, and in the runs (with the first
/// sequence of the lowest run).
struct Tails {
    single: u64,
    runs: u64,
    first_run: Option<u64>,
}

impl Tails {
    fn read(
        single: &Table<'_, u64, &'static [u8]>,
        chunks: &Table<'_, u64, &'static [u8]>,
    ) -> Result<Self, StoreError> {
        let failed = backend("read the journal's end");
        let single = single
            .last()
            .map_err(failed.clone())?
            .map_or(0, |(sequence, _)| sequence.value());
        let runs = match chunks.last().map_err(failed.clone())? {
            Some((first, bytes)) => entries(first.value(), bytes.value())?
                .last()
                .map_or(first.value(), |(sequence, _)| *sequence),
            None => 0,
        };
        let first_run = chunks
            .first()
            .map_err(failed)?
            .map(|(first, _)| first.value());
        Ok(Self {
            single,
            runs,
            first_run,
        })
    }

    fn highest(&self) -> u64 {
        self.single.max(self.runs)
    }
}

/// Stores one entry at or below the highest stored sequence without breaking the order:
/// into the format-2 table where it holds that sequence or the entry sorts before every run,
/// into the run whose range covers it, else as a run of its own in the gap between runs.
fn write_in_place(
    single: &mut Table<'_, u64, &'static [u8]>,
    chunks: &mut Table<'_, u64, &'static [u8]>,
    tails: &Tails,
    sequence: u64,
    entry: &[u8],
) -> Result<(), StoreError> {
    let failed = backend("rewrite a journal entry");
    let before_runs = tails.first_run.is_none_or(|first| sequence < first);
    if before_runs && sequence <= tails.single
        || single.get(sequence).map_err(failed.clone())?.is_some()
    {
        return single.insert(sequence, entry).map(drop).map_err(failed);
    }
    let covering = last_run_start(chunks, sequence)?
        .map(|first| -> Result<_, StoreError> {
            let mut run = owned_run(chunks, first)?;
            let last = run.last_key_value().map(|(s, _)| *s);
            run.insert(sequence, entry.to_vec());
            Ok((first, last, run))
        })
        .transpose()?;
    match covering {
        Some((first, Some(last), run)) if last >= sequence => {
            let mut bytes = Vec::new();
            for (s, e) in &run {
                push_entry(&mut bytes, *s, e)?;
            }
            chunks
                .insert(first, bytes.as_slice())
                .map(drop)
                .map_err(failed)
        }
        _ => append(chunks, [(sequence, entry)]),
    }
}

/// Writes `entries` (ascending, above every stored sequence) as new runs.
fn append<'a>(
    chunks: &mut Table<'_, u64, &'static [u8]>,
    entries: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(), StoreError> {
    let mut run = Vec::new();
    let mut first = None;
    let mut count = 0;
    for (sequence, entry) in entries {
        push_entry(&mut run, sequence, entry)?;
        first.get_or_insert(sequence);
        count += 1;
        if count == MAX_CHUNK_ENTRIES || run.len() >= MAX_CHUNK_BYTES {
            insert(chunks, first.take(), &run)?;
            run.clear();
            count = 0;
        }
    }
    insert(chunks, first, &run)
}

fn insert(
    chunks: &mut Table<'_, u64, &'static [u8]>,
    first: Option<u64>,
    run: &[u8],
) -> Result<(), StoreError> {
    match first {
        Some(first) => chunks
            .insert(first, run)
            .map(drop)
            .map_err(backend("write journal entries")),
        None => Ok(()),
    }
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

/// The entries of one stored run, in order.
pub(super) fn entries(first: u64, run: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    let corrupt = |message: &str| StoreError::Corrupt {
        what: "journal run",
        key: first.to_string(),
        message: message.to_owned(),
    };
    let mut rest = run;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((header, tail)) = rest.split_first_chunk::<ENTRY_HEADER>() else {
            return Err(corrupt("truncated entry header"));
        };
        let (sequence, len) = header.split_at(8);
        let sequence = u64::from_le_bytes(sequence.try_into().map_err(|_| corrupt("sequence"))?);
        let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt("length"))?) as usize;
        if len > tail.len() {
            return Err(corrupt("entry longer than its run"));
        }
        let (entry, tail) = tail.split_at(len);
        out.push((sequence, entry));
        rest = tail;
    }
    Ok(out)
}

/// The first sequence of the last run that starts at or below `sequence` (the run may also
/// hold later sequences).
fn last_run_start(
    chunks: &impl ReadableTable<u64, &'static [u8]>,
    sequence: u64,
) -> Result<Option<u64>, StoreError> {
    let failed = backend("find a journal run");
    Ok(chunks
        .range(..=sequence)
        .map_err(failed.clone())?
        .next_back()
        .transpose()
        .map_err(failed)?
        .map(|(first, _)| first.value()))
}

/// The entries of the run stored under `first`, owned (the caller rewrites the run).
fn owned_run(
    chunks: &impl ReadableTable<u64, &'static [u8]>,
    first: u64,
) -> Result<BTreeMap<u64, Vec<u8>>, StoreError> {
    let bytes = chunks
        .get(first)
        .map_err(backend("read a journal run"))?
        .ok_or_else(|| StoreError::Corrupt {
            what: "journal run",
            key: first.to_string(),
            message: "vanished while being rewritten".to_owned(),
        })?;
    Ok(entries(first, bytes.value())?
        .into_iter()
        .map(|(sequence, entry)| (sequence, entry.to_vec()))
        .collect())
}

/// Up to `limit` entries from `from` on: format-2 rows first (they are all older), then runs.
pub(super) fn read(
    single: &ReadOnlyTable<u64, &'static [u8]>,
    chunks: &ReadOnlyTable<u64, &'static [u8]>,
    from: u64,
    limit: usize,
) -> Result<Vec<JournalRow>, StoreError> {
    let failed = backend("read the journal");
    let mut rows = Vec::new();
    for row in single.range(from..).map_err(failed.clone())?.take(limit) {
        let (sequence, entry) = row.map_err(failed.clone())?;
        rows.push((sequence.value(), entry.value().to_vec()));
    }
    // The run holding `from` starts at or below it; later runs start above it.
    let start = last_run_start(chunks, from)?.unwrap_or(from);
    for run in chunks.range(start..).map_err(failed.clone())? {
        if rows.len() >= limit {
            break;
        }
        let (first, bytes) = run.map_err(failed.clone())?;
        let wanted = limit - rows.len();
        rows.extend(
            entries(first.value(), bytes.value())?
                .into_iter()
                .filter(|(sequence, _)| *sequence >= from)
                .take(wanted)
                .map(|(sequence, entry)| (sequence, entry.to_vec())),
        );
    }
    Ok(rows)
}

/// Drops every entry below `below`: format-2 rows and whole runs outright, and the older part
/// of the run that straddles the line (its newer part is stored again under its new first
/// sequence), so reads return exactly the entries kept.
pub(super) fn trim(
    single: &mut Table<'_, u64, &'static [u8]>,
    chunks: &mut Table<'_, u64, &'static [u8]>,
    below: u64,
) -> Result<(), StoreError> {
    let failed = backend("trim the journal");
    single
        .retain_in(..below, |_, _| false)
        .map_err(failed.clone())?;
    let straddling = match below.checked_sub(1) {
        Some(below_line) => last_run_start(chunks, below_line)?
            .map(|first| -> Result<_, StoreError> {
                let mut kept = owned_run(chunks, first)?;
                kept.retain(|sequence, _| *sequence >= below);
                Ok(kept)
            })
            .transpose()?,
        None => None,
    };
    chunks.retain_in(..below, |_, _| false).map_err(failed)?;
    match straddling {
        // Below every remaining run, and the format-2 table is empty below the line too.
        Some(kept) => append(chunks, kept.iter().map(|(s, e)| (*s, e.as_slice()))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use ::redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

    const SINGLE: TableDefinition<u64, &[u8]> = TableDefinition::new("single");
    const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");

    fn entry(sequence: u64) -> Vec<u8> {
        // Sizes vary, and one entry passes the run's byte bound on its own.
        let len = if sequence % 2503 == 0 {
            MAX_CHUNK_BYTES + 1
        } else {
            (sequence % 13) as usize
        };
        vec![(sequence % 251) as u8; len]
    }

    /// A store whose format-2 table holds `old` and whose runs hold `new`.
    fn database(old: std::ops::Range<u64>, new: &[u64]) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("j.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut single = txn.open_table(SINGLE).unwrap();
            for sequence in old {
                single.insert(sequence, entry(sequence).as_slice()).unwrap();
            }
            let mut chunks = txn.open_table(CHUNKS).unwrap();
            let entries: Vec<_> = new.iter().map(|&s| (s, entry(s))).collect();
            write(
                &mut single,
                &mut chunks,
                entries.iter().map(|(s, e)| (*s, e.as_slice())),
            )
            .unwrap();
        }
        txn.commit().unwrap();
        (dir, db)
    }

    fn read_all(db: &Database, from: u64, limit: usize) -> Vec<JournalRow> {
        let txn = db.begin_read().unwrap();
        let single = txn.open_table(SINGLE).unwrap();
        let chunks = txn.open_table(CHUNKS).unwrap();
        read(&single, &chunks, from, limit).unwrap()
    }

    fn expected(sequences: impl Iterator<Item = u64>, limit: usize) -> Vec<JournalRow> {
        sequences.take(limit).map(|s| (s, entry(s))).collect()
    }

    /// Odd sequences only, so runs have gaps inside them too: 2,400 entries, so runs end by
    /// their entry count (after 2247 and 4551) and by their bytes (after 2503).
    fn new_sequences() -> Vec<u64> {
        (200..5000).filter(|s| s % 2 == 1).collect()
    }

    #[test]
    fn reads_start_anywhere_and_stop_at_the_limit() {
        let new = new_sequences();
        let (_dir, db) = database(100..150, &new);
        let all = || (100..150).chain(new.iter().copied());
        for from in [
            0, 100, 149, 150, 200, 201, 202, 2247, 2248, 2249, 2503, 2504, 2505, 4999, 5000,
        ] {
            for limit in [0, 1, 5, 1024, 1025, 5000] {
                assert_eq!(
                    read_all(&db, from, limit),
                    expected(all().filter(|s| *s >= from), limit),
                    "from {from} limit {limit}"
                );
            }
        }
    }

    #[test]
    fn runs_are_bounded_by_entries_and_bytes() {
        let new = new_sequences();
        let (_dir, db) = database(0..0, &new);
        let txn = db.begin_read().unwrap();
        let chunks = txn.open_table(CHUNKS).unwrap();
        let mut seen = 0;
        let mut firsts = Vec::new();
        for run in chunks.range(0..).unwrap() {
            let (first, bytes) = run.unwrap();
            let entries = entries(first.value(), bytes.value()).unwrap();
            assert_eq!(entries[0].0, first.value());
            assert!(entries.len() <= MAX_CHUNK_ENTRIES);
            let last_len = entries.last().unwrap().1.len();
            assert!(bytes.value().len() - last_len - ENTRY_HEADER < MAX_CHUNK_BYTES);
            seen += entries.len();
            firsts.push(first.value());
        }
        assert_eq!(seen, new.len());
        // Full by count after 1,024 entries, closed by bytes after the big entry 2503.
        assert_eq!(firsts, [201, 2249, 2505, 4553]);
    }

    #[test]
    fn a_run_closes_once_its_entries_add_up_to_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("j.redb")).unwrap();
        // Six of these pass the bound together, five do not.
        let entry = vec![7u8; MAX_CHUNK_BYTES / 6 + 1];
        let txn = db.begin_write().unwrap();
        {
            let mut single = txn.open_table(SINGLE).unwrap();
            let mut chunks = txn.open_table(CHUNKS).unwrap();
            write(
                &mut single,
                &mut chunks,
                (1..=13).map(|s| (s, entry.as_slice())),
            )
            .unwrap();
        }
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let chunks = txn.open_table(CHUNKS).unwrap();
        let firsts: Vec<u64> = chunks
            .range(0..)
            .unwrap()
            .map(|run| run.unwrap().0.value())
            .collect();
        assert_eq!(firsts, [1, 7, 13]);
    }

    #[test]
    fn trimming_keeps_exactly_the_entries_at_or_above_the_line() {
        let new = new_sequences();
        for below in [0, 120, 150, 200, 2247, 2248, 2249, 2504, 4999, 5000, 9000] {
            let (_dir, db) = database(100..150, &new);
            let txn = db.begin_write().unwrap();
            {
                let mut single = txn.open_table(SINGLE).unwrap();
                let mut chunks = txn.open_table(CHUNKS).unwrap();
                trim(&mut single, &mut chunks, below).unwrap();
            }
            txn.commit().unwrap();
            let all = (100..150).chain(new.iter().copied());
            assert_eq!(
                read_all(&db, 0, usize::MAX),
                expected(all.filter(|s| *s >= below), usize::MAX),
                "below {below}"
            );
        }
    }

    /// Entries written over stored sequences (or into gaps among them) land in place: reads
    /// return what a plain sequence → entry map holds, in order, without duplicates.
    #[test]
    fn rewrites_and_gap_entries_keep_the_journal_a_plain_sorted_map() {
        let new = new_sequences();
        let (_dir, db) = database(100..150, &new);
        let mut model: BTreeMap<u64, Vec<u8>> = (100..150)
            .chain(new.iter().copied())
            .map(|s| (s, entry(s)))
            .collect();
        // A format-2 row, a gap before the runs, gaps and rows inside runs, the last row,
        // a gap below everything, and new entries past the end, in three checkpoints.
        let rounds: [&[u64]; 3] = [
            &[5, 120, 160, 201, 202, 2248, 2503, 3000],
            &[4999, 5000, 5050],
            &[1, 204, 5001],
        ];
        for (round, sequences) in rounds.iter().enumerate() {
            let txn = db.begin_write().unwrap();
            {
                let mut single = txn.open_table(SINGLE).unwrap();
                let mut chunks = txn.open_table(CHUNKS).unwrap();
                let written: Vec<(u64, Vec<u8>)> = sequences
                    .iter()
                    .map(|&s| (s, format!("round {round} seq {s}").into_bytes()))
                    .collect();
                write(
                    &mut single,
                    &mut chunks,
                    written.iter().map(|(s, e)| (*s, e.as_slice())),
                )
                .unwrap();
                model.extend(written);
            }
            txn.commit().unwrap();
            let expected: Vec<JournalRow> = model.clone().into_iter().collect();
            assert_eq!(read_all(&db, 0, usize::MAX), expected, "round {round}");
            let from_mid: Vec<JournalRow> = model
                .range(202..)
                .take(3)
                .map(|(s, e)| (*s, e.clone()))
                .collect();
            assert_eq!(read_all(&db, 202, 3), from_mid, "round {round}");
        }
    }

    #[test]
    fn a_damaged_run_is_reported_not_misread() {
        let mut run = Vec::new();
        push_entry(&mut run, 7, b"abc").unwrap();
        assert_eq!(entries(7, &run).unwrap(), vec![(7, &b"abc"[..])]);
        assert!(matches!(
            entries(7, &run[..run.len() - 1]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            entries(7, &run[..5]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
