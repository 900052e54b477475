//! The write-ahead log in front of the redb file: segment files `<dir>/topgun.wal.<index>`,
//! each an append-only run of records `[payload length: u32 LE][CRC-32C of sequence + payload:
//! u32 LE][sequence: u64 LE][payload]`. Sequences strictly increase along the log.
//!
//! The writer frames a group's records in memory ([`frame_record`]), appends them to the
//! current segment with one write and makes them durable with one `fdatasync`
//! ([`Wal::append_durably`]). A checkpoint seals the current segment and starts a new one
//! ([`Wal::rotate`]); once redb holds everything the sealed segments hold, they are deleted
//! ([`Wal::remove_sealed`]), or a background checkpoint takes them ([`Wal::take_sealed`])
//! and deletes them itself. On open, the segments are read in order up to the first record
//! that is cut short, fails its checksum or breaks the sequence order (what a crash
//! mid-append leaves behind); every existing segment is sealed and appends go to a new one,
//! so a damaged tail is never appended to and disappears with the recovery checkpoint.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{create_durably, io_error};
use crate::store::StoreError;

/// Segment file names: this prefix, then the segment's index as 16 decimal digits.
pub(super) const FILE_PREFIX: &str = "topgun.wal.";
/// Length, checksum and sequence precede every payload.
const HEADER_LEN: usize = 16;

/// One intact record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LogRecord {
    /// The record's log sequence.
    pub(super) sequence: u64,
    /// What the writer framed: a batch's encoded mutations.
    pub(super) payload: Vec<u8>,
}

/// The log: the segment being appended to, and the sealed ones no checkpoint has taken yet
/// (a running background checkpoint holds those it covers).
#[derive(Debug)]
pub(super) struct Wal {
    dir: PathBuf,
    file: File,
    index: u64,
    path: PathBuf,
    len: u64,
    sealed: Vec<PathBuf>,
}

impl Wal {
    /// Opens the log in `dir`: returns every intact record of the existing segments, in
    /// order, with those segments sealed and a new, empty segment to append to.
    pub(super) fn open(dir: &Path) -> Result<(Self, Vec<LogRecord>), StoreError> {
        let mut segments = Vec::new();
        let listing = std::fs::read_dir(dir).map_err(|e| io_error("list", dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error("list", dir, e))?;
            let name = entry.file_name();
            let index = name
                .to_str()
                .and_then(|name| name.strip_prefix(FILE_PREFIX))
                .and_then(|digits| digits.parse::<u64>().ok());
            if let Some(index) = index {
                segments.push((index, entry.path()));
            }
        }
        segments.sort();
        let mut records: Vec<LogRecord> = Vec::new();
        for (_, path) in &segments {
            let bytes =
                std::fs::read(path).map_err(|e| io_error("read the write-ahead log", path, e))?;
            let after = records.last().map_or(0, |last| last.sequence);
            let (intact, intact_len) = parse(&bytes, after);
            records.extend(intact);
            if intact_len < bytes.len() {
                tracing::warn!(
                    path = %path.display(),
                    kept_bytes = intact_len,
                    dropped_bytes = bytes.len() - intact_len,
                    "write-ahead log ends in a torn or corrupt record; replaying up to it"
                );
                break;
            }
        }
        let next = segments.last().map_or(1, |(index, _)| index + 1);
        let (file, path) = create_segment(dir, next)?;
        let wal = Self {
            dir: dir.to_owned(),
            file,
            index: next,
            path,
            len: 0,
            sealed: segments.into_iter().map(|(_, path)| path).collect(),
        };
        Ok((wal, records))
    }

    /// The store directory the segments live in.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the current segment.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Whether sealed segments wait for a checkpoint to take them.
    pub(super) fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Appends framed records and returns once they are on stable storage.
    pub(super) fn append_durably(&mut self, framed: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(framed)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error("append to the write-ahead log", &self.path, e))?;
        self.len += framed.len() as u64;
        Ok(())
    }

    /// Seals the current segment and continues in a new one: what a checkpoint will cover
    /// is then exactly the sealed segments.
    pub(super) fn rotate(&mut self) -> Result<(), StoreError> {
        let (file, path) = create_segment(&self.dir, self.index + 1)?;
        self.file = file;
        self.index += 1;
        self.sealed.push(std::mem::replace(&mut self.path, path));
        self.len = 0;
        Ok(())
    }

    /// Deletes the sealed segments once a checkpoint holds everything in them (see
    /// [`remove_segments`]).
    pub(super) fn remove_sealed(&mut self) -> Result<(), StoreError> {
        remove_segments(self.sealed.drain(..))
    }

    /// Hands over the sealed segments, for a background checkpoint to delete once it holds
    /// everything in them.
    pub(super) fn take_sealed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.sealed)
    }

    /// Empties the current segment once a checkpoint holds everything in it (unsynced, for
    /// the same reason as [`Self::remove_sealed`]; the next `fdatasync` persists the length).
    pub(super) fn truncate_current(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .map_err(|e| io_error("truncate the write-ahead log", &self.path, e))?;
        self.len = 0;
        Ok(())
    }
}

/// Deletes sealed segments that a checkpoint holds everything of. Not synced: a segment that
/// reappears after a crash is skipped on replay by its sequences.
pub(super) fn remove_segments(paths: impl IntoIterator<Item = PathBuf>) -> Result<(), StoreError> {
    for path in paths {
        std::fs::remove_file(&path)
            .map_err(|e| io_error("delete a write-ahead log segment", &path, e))?;
    }
    Ok(())
}

/// Creates segment `index`, its directory entry durable before any record is acked in it.
fn create_segment(dir: &Path, index: u64) -> Result<(File, PathBuf), StoreError> {
    let path = dir.join(format!("{FILE_PREFIX}{index:016}"));
    let file = create_durably(&path, "create a write-ahead log segment")?;
    Ok((file, path))
}

/// Appends one framed record to `out`: a header, then whatever `payload` writes. If `payload`
/// fails, `out` is left as it was.
pub(super) fn frame_record(
    out: &mut Vec<u8>,
    sequence: u64,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out[start + 8..start + HEADER_LEN].copy_from_slice(&sequence.to_le_bytes());
    let framed = payload(out).and_then(|()| {
        let payload_len = out.len() - start - HEADER_LEN;
        u32::try_from(payload_len).map_err(|_| StoreError::Encode {
            what: "log record",
            message: format!("a {payload_len}-byte batch exceeds the 4 GiB record limit"),
        })
    });
    match framed {
        Ok(payload_len) => {
            let checksum = crc32c(&out[start + 8..]);
            out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
            out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

/// The intact records at the start of `bytes` (sequences above `after` and increasing), and
/// how many bytes they span.
fn parse(bytes: &[u8], after: u64) -> (Vec<LogRecord>, usize) {
    let mut records: Vec<LogRecord> = Vec::new();
    let mut offset = 0;
    while let Some(header) = bytes.get(offset..offset + HEADER_LEN) {
        let [
            l0,
            l1,
            l2,
            l3,
            c0,
            c1,
            c2,
            c3,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
        ] = *header
        else {
            break;
        };
        let payload_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let checksum = u32::from_le_bytes([c0, c1, c2, c3]);
        let sequence = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let end = offset + HEADER_LEN + payload_len;
        let Some(covered) = bytes.get(offset + 8..end) else {
            break;
        };
        let in_order = sequence > records.last().map_or(after, |last| last.sequence);
        if crc32c(covered) != checksum || !in_order {
            break;
        }
        records.push(LogRecord {
            sequence,
            payload: covered[8..].to_vec(),
        });
        offset = end;
    }
    (records, offset)
}

/// The CRC-32C (Castagnoli) of `bytes`: catches torn writes and bit rot in a record. The log
/// checksums every byte the writer appends, so this uses the CPU's CRC instruction (SSE 4.2 /
/// ARMv8) where there is one.
fn crc32c(bytes: &[u8]) -> u32 {
    ::crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (sequence, payload) in records {
            frame_record(&mut out, *sequence, |out| {
                out.extend_from_slice(payload);
                Ok(())
            })
            .unwrap();
        }
        out
    }

    fn record(sequence: u64, payload: &[u8]) -> LogRecord {
        LogRecord {
            sequence,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xff; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        // A framed record's checksum as written by earlier builds (software tables).
        let framed = framed(&[(7, b"abc")]);
        assert_eq!(&framed[4..8], &0x169F_7661u32.to_le_bytes());
        // Every length and alignment (hardware paths work in 8-byte words) agrees with a
        // bitwise CRC.
        let bytes: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        for start in 0..9 {
            for end in start..bytes.len() {
                assert_eq!(
                    crc32c(&bytes[start..end]),
                    bitwise_crc32c(&bytes[start..end])
                );
            }
        }
    }

    fn bitwise_crc32c(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    0x82F6_3B78 ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_record_is_header_then_payload() {
        let bytes = framed(&[(7, b"abc")]);
        assert_eq!(bytes.len(), HEADER_LEN + 3);
        assert_eq!(&bytes[0..4], &3u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &7u64.to_le_bytes());
        assert_eq!(&bytes[4..8], &crc32c(&bytes[8..]).to_le_bytes());
        assert_eq!(parse(&bytes, 0), (vec![record(7, b"abc")], bytes.len()));
    }

    #[test]
    fn a_failed_payload_leaves_the_buffer_unchanged() {
        let mut out = framed(&[(1, b"x")]);
        let before = out.clone();
        let failed = frame_record(&mut out, 2, |out| {
            out.extend_from_slice(b"partial");
            Err(StoreError::Closed)
        });
        assert!(failed.is_err());
        assert_eq!(out, before);
    }

    #[test]
    fn parsing_stops_at_a_torn_tail() {
        let bytes = framed(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        let two_records = 2 * HEADER_LEN + 6;
        for cut in two_records..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut], 0),
                (vec![record(1, b"one"), record(2, b"two")], two_records),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn parsing_stops_at_a_bad_checksum_or_a_sequence_going_back() {
        let mut bytes = framed(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        let second = HEADER_LEN + 3;
        bytes[second + HEADER_LEN] ^= 0x01;
        assert_eq!(parse(&bytes, 0), (vec![record(1, b"one")], second));

        let backwards = framed(&[(5, b"a"), (4, b"b")]);
        assert_eq!(
            parse(&backwards, 0),
            (vec![record(5, b"a")], HEADER_LEN + 1)
        );
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn open_replays_segments_in_order_up_to_the_damage_and_appends_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("topgun.wal.0000000000000002"),
            framed(&[(3, b"three")]),
        )
        .unwrap();
        let mut first = framed(&[(1, b"one"), (2, b"two")]);
        first.extend_from_slice(&[9, 0, 0]);
        std::fs::write(dir.path().join("topgun.wal.0000000000000001"), &first).unwrap();
        std::fs::write(dir.path().join("unrelated"), b"x").unwrap();

        // The torn tail of segment 1 ends the log: segment 2 is not replayed.
        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records, vec![record(1, b"one"), record(2, b"two")]);
        assert!(wal.has_sealed());
        assert_eq!(wal.len(), 0);
        wal.append_durably(&framed(&[(3, b"new")])).unwrap();
        assert_eq!(wal.len(), HEADER_LEN as u64 + 3);
        wal.remove_sealed().unwrap();
        assert_eq!(
            segments(dir.path()),
            ["topgun.wal.0000000000000003", "unrelated"]
        );
        wal.rotate().unwrap();
        wal.append_durably(&framed(&[(4, b"four")])).unwrap();
        drop(wal);

        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records, vec![record(3, b"new"), record(4, b"four")]);
        wal.remove_sealed().unwrap();
        wal.truncate_current().unwrap();
        assert_eq!(
            segments(dir.path()),
            ["topgun.wal.0000000000000005", "unrelated"]
        );
    }
}
