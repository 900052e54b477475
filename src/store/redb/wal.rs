//! The write-ahead log in front of the redb file: `<dir>/topgun.wal`, an append-only run of
//! records, each `[payload length: u32 LE][CRC-32C of sequence + payload: u32 LE]
//! [sequence: u64 LE][payload]`. Sequences strictly increase along the file.
//!
//! The writer frames a group's records in memory ([`frame_record`]), appends them with one
//! write and makes them durable with one `fdatasync` ([`Wal::append_durably`]). After a
//! checkpoint has copied everything the log holds into redb, the log is emptied
//! ([`Wal::reset`]). On open, the log is read up to the first record that is cut short, fails
//! its checksum or breaks the sequence order (what a crash mid-append leaves behind), and the
//! file is truncated there so later appends follow the last intact record.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::io_error;
use crate::store::StoreError;

/// The log file inside the store directory.
pub(super) const FILE_NAME: &str = "topgun.wal";
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

/// The open log file.
#[derive(Debug)]
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Wal {
    /// Opens (creating) the log in `dir` and returns it with every intact record, in order.
    /// A damaged tail is cut off so the next append follows the last intact record.
    pub(super) fn open(dir: &Path) -> Result<(Self, Vec<LogRecord>), StoreError> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_error("open the write-ahead log", &path, e))?;
        // A freshly created log must not vanish with its directory entry in a crash.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync the store directory", dir, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error("read the write-ahead log", &path, e))?;
        let (records, intact) = parse(&bytes);
        let len = intact as u64;
        if intact < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = intact,
                dropped_bytes = bytes.len() - intact,
                "write-ahead log ends in a torn or corrupt record; truncating it there"
            );
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error("truncate the write-ahead log", &path, e))?;
        }
        Ok((Self { file, path, len }, records))
    }

    /// Bytes in the log.
    pub(super) fn len(&self) -> u64 {
        self.len
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

    /// Empties the log once a checkpoint holds everything in it. Not synced: until the
    /// truncation is durable, replay skips the old records by their sequence, and the next
    /// `fdatasync` persists the new length with the new records.
    pub(super) fn reset(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .map_err(|e| io_error("truncate the write-ahead log", &self.path, e))?;
        self.len = 0;
        Ok(())
    }
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

/// The intact records at the start of `bytes`, and how many bytes they span.
fn parse(bytes: &[u8]) -> (Vec<LogRecord>, usize) {
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
        let in_order = records.last().is_none_or(|last| sequence > last.sequence);
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

/// CRC-32C (Castagnoli) lookup tables for slicing by eight bytes: `CRC_TABLES[0]` is the
/// classic byte-at-a-time table, `CRC_TABLES[k]` advances a byte through `k` more zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                0x82F6_3B78 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut byte = 0;
    while byte < 256 {
        let mut k = 1;
        while k < 8 {
            let previous = tables[k - 1][byte];
            tables[k][byte] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            k += 1;
        }
        byte += 1;
    }
    tables
}

/// The CRC-32C of `bytes`: catches torn writes and bit rot in a record. Eight bytes per
/// step: the log checksums every byte the writer appends.
fn crc32c(bytes: &[u8]) -> u32 {
    let [t0, t1, t2, t3, t4, t5, t6, t7] = &CRC_TABLES;
    let at = |table: &[u32; 256], word: u32, shift: u32| table[((word >> shift) & 0xff) as usize];
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    let mut crc = words.fold(!0u32, |crc, word| {
        let &[b0, b1, b2, b3, b4, b5, b6, b7] = word else {
            return crc;
        };
        let low = u32::from_le_bytes([b0, b1, b2, b3]) ^ crc;
        let high = u32::from_le_bytes([b4, b5, b6, b7]);
        at(t7, low, 0)
            ^ at(t6, low, 8)
            ^ at(t5, low, 16)
            ^ at(t4, low, 24)
            ^ at(t3, high, 0)
            ^ at(t2, high, 8)
            ^ at(t1, high, 16)
            ^ at(t0, high, 24)
    });
    for &byte in rest {
        crc = at(t0, crc ^ u32::from(byte), 0) ^ (crc >> 8);
    }
    !crc
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
        // Every length and alignment of the eight-byte path agrees with a bitwise CRC.
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
        assert_eq!(parse(&bytes), (vec![record(7, b"abc")], bytes.len()));
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
                parse(&bytes[..cut]),
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
        assert_eq!(parse(&bytes), (vec![record(1, b"one")], second));

        let backwards = framed(&[(5, b"a"), (4, b"b")]);
        assert_eq!(parse(&backwards), (vec![record(5, b"a")], HEADER_LEN + 1));
    }

    #[test]
    fn open_truncates_the_damage_and_appends_after_the_intact_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = framed(&[(1, b"one"), (2, b"two")]);
        bytes.extend_from_slice(&[9, 0, 0]);
        std::fs::write(&path, &bytes).unwrap();

        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records, vec![record(1, b"one"), record(2, b"two")]);
        assert_eq!(wal.len(), bytes.len() as u64 - 3);
        wal.append_durably(&framed(&[(3, b"three")])).unwrap();
        drop(wal);

        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2], record(3, b"three"));
        wal.reset().unwrap();
        assert_eq!(wal.len(), 0);
        drop(wal);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
