//! The on-disk value encoding shared by durable backends: MessagePack with named fields
//! (what `rmp_serde::to_vec_named` writes; the hot records are written by hand, [`Stored`];
//! LWW rows are read through the fast path's tape so their values stay encoded,
//! [`decode_lww`], everything else by rmp_serde), which stays readable when optional fields
//! such as `ttlMs` are skipped or new optional fields are added, plus the one-byte map-kind
//! codes, plus the compact
//! binary form of a batch's mutations that a write-ahead log record carries
//! ([`encode_mutations`] / [`decode_mutations`]).
//!
//! Changing anything here changes what existing stores contain: bump the backend's format
//! version instead of silently reinterpreting old bytes.

use std::fmt;

use serde::de::DeserializeOwned;

use super::{CounterSnapshot, EncodedLww, MapKind, Mutation, StoreError};
use crate::hlc::Timestamp;
use crate::protocol::codec::decode_encoded_map;
use crate::protocol::codec::msgpack_writer::{MsgpackWriter, WriteError};
use crate::record::{LwwRecord, OrMapRecord};

/// A value the store keeps. The records every write carries are written by hand
/// ([`MsgpackWriter`]), the rest through rmp_serde; either way the bytes are exactly what
/// `rmp_serde::to_vec_named` gives, so stores written before read the same.
pub(crate) trait Stored {
    /// Appends the value; the message says why it could not be written.
    fn write_stored(&self, out: &mut MsgpackWriter) -> Result<(), String>;
}

impl Stored for LwwRecord {
    fn write_stored(&self, out: &mut MsgpackWriter) -> Result<(), String> {
        out.lww_record(self).map_err(|e: WriteError| e.to_string())
    }
}

impl Stored for Vec<OrMapRecord> {
    fn write_stored(&self, out: &mut MsgpackWriter) -> Result<(), String> {
        out.or_records(self).map_err(|e| e.to_string())
    }
}

impl Stored for CounterSnapshot {
    fn write_stored(&self, out: &mut MsgpackWriter) -> Result<(), String> {
        rmp_serde::encode::write_named(out.as_mut_vec(), self).map_err(|e| e.to_string())
    }
}

/// Encodes a stored value.
pub(crate) fn encode<T: Stored>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    encode_into(&mut bytes, what, value)?;
    Ok(bytes)
}

/// Encodes a stored value into `out`, replacing what it held: a caller writing many rows
/// reuses one buffer.
pub(crate) fn encode_into<T: Stored>(
    out: &mut Vec<u8>,
    what: &'static str,
    value: &T,
) -> Result<(), StoreError> {
    out.clear();
    write_stored(out, what, value)
}

/// Appends a stored value to `out`.
fn write_stored<T: Stored>(
    out: &mut Vec<u8>,
    what: &'static str,
    value: &T,
) -> Result<(), StoreError> {
    let mut writer = MsgpackWriter::from_vec(std::mem::take(out));
    let written = value.write_stored(&mut writer);
    *out = writer.into_vec();
    written.map_err(|message| StoreError::Encode { what, message })
}

/// Decodes a stored value; `key` names where it was stored, for the error message.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    key: impl fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Decodes a stored LWW record, its value kept encoded; rows the fast path's tape declines
/// (written by older versions, say) are decoded by [`decode`] as before.
pub(crate) fn decode_lww(key: impl fmt::Display, bytes: &[u8]) -> Result<LwwRecord, StoreError> {
    match decode_encoded_map(bytes) {
        Some(record) => Ok(record),
        None => decode("LWW record", key, bytes),
    }
}

/// The stored code of a map kind.
pub(crate) fn kind_code(kind: MapKind) -> u8 {
    match kind {
        MapKind::Lww => 1,
        MapKind::Or => 2,
    }
}

/// The map kind a stored code stands for.
pub(crate) fn kind_from_code(map: &str, code: u8) -> Result<MapKind, StoreError> {
    match code {
        1 => Ok(MapKind::Lww),
        2 => Ok(MapKind::Or),
        other => Err(StoreError::Corrupt {
            what: "map kind",
            key: map.to_owned(),
            message: format!("unknown kind code {other}"),
        }),
    }
}

/// One-byte tags of the mutation variants in a log record. Never renumber: logs on disk use them.
mod tag {
    pub(super) const SET_MAP_KIND: u8 = 0;
    pub(super) const PUT_LWW: u8 = 1;
    pub(super) const DELETE_LWW: u8 = 2;
    pub(super) const FORGET_LWW: u8 = 3;
    pub(super) const PUT_OR_KEY: u8 = 4;
    pub(super) const ADD_OR_TOMBSTONES: u8 = 5;
    pub(super) const REMOVE_OR_TOMBSTONES: u8 = 6;
    pub(super) const PUT_COUNTER: u8 = 7;
    pub(super) const PUT_FENCING_TOKEN: u8 = 8;
    pub(super) const PUT_META: u8 = 9;
    pub(super) const CLEAR_MAP: u8 = 10;
    pub(super) const APPEND_JOURNAL: u8 = 11;
    pub(super) const TRIM_JOURNAL: u8 = 12;
}

/// Appends the binary form of `mutations` to `out`: a `u32` count, then per mutation a tag
/// byte and its fields (integers little-endian, strings and byte strings `u32`-length-prefixed,
/// records as stored-value MessagePack). Nothing is appended if encoding fails.
pub(crate) fn encode_mutations(
    mutations: &[Mutation],
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let start = out.len();
    let written = write_mutations(mutations, out);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn write_mutations(mutations: &[Mutation], out: &mut Vec<u8>) -> Result<(), StoreError> {
    write_len(out, mutations.len())?;
    for mutation in mutations {
        match mutation {
            Mutation::SetMapKind { map, kind } => {
                out.push(tag::SET_MAP_KIND);
                write_str(out, map)?;
                out.push(kind_code(*kind));
            }
            Mutation::PutLww { map, key, record } => {
                // The row's bytes behind their length: what `write_value` wrote for the record.
                out.push(tag::PUT_LWW);
                write_str(out, map)?;
                write_str(out, key)?;
                write_bytes(out, record.bytes())?;
            }
            Mutation::DeleteLww { map, key } => {
                out.push(tag::DELETE_LWW);
                write_str(out, map)?;
                write_str(out, key)?;
            }
            Mutation::ForgetLww {
                map,
                key,
                timestamp,
            } => {
                out.push(tag::FORGET_LWW);
                write_str(out, map)?;
                write_str(out, key)?;
                out.extend_from_slice(&timestamp.millis.to_le_bytes());
                out.extend_from_slice(&timestamp.counter.to_le_bytes());
                write_str(out, &timestamp.node_id)?;
            }
            Mutation::PutOrKey { map, key, records } => {
                out.push(tag::PUT_OR_KEY);
                write_str(out, map)?;
                write_str(out, key)?;
                write_value(out, "OR records", records)?;
            }
            Mutation::AddOrTombstones { map, tags } => {
                out.push(tag::ADD_OR_TOMBSTONES);
                write_str(out, map)?;
                write_strs(out, tags)?;
            }
            Mutation::RemoveOrTombstones { map, tags } => {
                out.push(tag::REMOVE_OR_TOMBSTONES);
                write_str(out, map)?;
                write_strs(out, tags)?;
            }
            Mutation::PutCounter { name, state } => {
                out.push(tag::PUT_COUNTER);
                write_str(out, name)?;
                write_value(out, "counter", state)?;
            }
            Mutation::PutFencingToken { lock, token } => {
                out.push(tag::PUT_FENCING_TOKEN);
                write_str(out, lock)?;
                out.extend_from_slice(&token.to_le_bytes());
            }
            Mutation::PutMeta { key, value } => {
                out.push(tag::PUT_META);
                write_str(out, key)?;
                write_bytes(out, value)?;
            }
            Mutation::ClearMap { map } => {
                out.push(tag::CLEAR_MAP);
                write_str(out, map)?;
            }
            Mutation::AppendJournal { sequence, event } => {
                out.push(tag::APPEND_JOURNAL);
                out.extend_from_slice(&sequence.to_le_bytes());
                write_bytes(out, event)?;
            }
            Mutation::TrimJournal { below } => {
                out.push(tag::TRIM_JOURNAL);
                out.extend_from_slice(&below.to_le_bytes());
            }
        }
    }
    Ok(())
}

fn write_len(out: &mut Vec<u8>, len: usize) -> Result<(), StoreError> {
    let len = u32::try_from(len).map_err(|_| StoreError::Encode {
        what: "log record",
        message: format!("a field of {len} bytes or items exceeds the 4 GiB limit"),
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Writes a stored value's MessagePack in place behind its length, sparing a temporary buffer.
fn write_value<T: Stored>(
    out: &mut Vec<u8>,
    what: &'static str,
    value: &T,
) -> Result<(), StoreError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    write_stored(out, what, value)?;
    let len = out.len() - start - 4;
    let len = u32::try_from(len).map_err(|_| StoreError::Encode {
        what,
        message: format!("{len} bytes exceed the 4 GiB limit"),
    })?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    write_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn write_str(out: &mut Vec<u8>, text: &str) -> Result<(), StoreError> {
    write_bytes(out, text.as_bytes())
}

fn write_strs(out: &mut Vec<u8>, texts: &[String]) -> Result<(), StoreError> {
    write_len(out, texts.len())?;
    texts.iter().try_for_each(|text| write_str(out, text))
}

/// Decodes what [`encode_mutations`] wrote; `record` names the log record for error messages.
pub(crate) fn decode_mutations(
    record: impl fmt::Display,
    bytes: &[u8],
) -> Result<Vec<Mutation>, StoreError> {
    let mut reader = Reader { bytes };
    let decoded = reader.mutations();
    match decoded {
        Ok(mutations) if reader.bytes.is_empty() => Ok(mutations),
        Ok(_) => Err("trailing bytes after the last mutation".to_owned()),
        Err(message) => Err(message),
    }
    .map_err(|message| StoreError::Corrupt {
        what: "log record",
        key: record.to_string(),
        message,
    })
}

/// A cursor over a log record's bytes; errors are messages for [`StoreError::Corrupt`].
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn mutations(&mut self) -> Result<Vec<Mutation>, String> {
        let count = self.len()?;
        // Each mutation takes at least five bytes, so a garbled count cannot over-allocate.
        let mut mutations = Vec::with_capacity(count.min(self.bytes.len() / 5));
        for _ in 0..count {
            mutations.push(self.mutation()?);
        }
        Ok(mutations)
    }

    fn mutation(&mut self) -> Result<Mutation, String> {
        let [tag] = self.take::<1>()?;
        Ok(match tag {
            tag::SET_MAP_KIND => {
                let map = self.string()?;
                let [code] = self.take::<1>()?;
                let kind = kind_from_code(&map, code).map_err(|e| e.to_string())?;
                Mutation::SetMapKind { map, kind }
            }
            tag::PUT_LWW => {
                let map = self.string()?;
                let key = self.string()?;
                let record = EncodedLww::from_stored(self.bytes()?, format_args!("{map}/{key}"))
                    .map_err(|e| e.to_string())?;
                Mutation::PutLww {
                    map,
                    key: key.into(),
                    record,
                }
            }
            tag::DELETE_LWW => Mutation::DeleteLww {
                map: self.string()?,
                key: self.string()?,
            },
            tag::FORGET_LWW => {
                let map = self.string()?;
                let key = self.string()?;
                let millis = u64::from_le_bytes(self.take()?);
                let counter = u32::from_le_bytes(self.take()?);
                let node_id = self.string()?;
                Mutation::ForgetLww {
                    map,
                    key,
                    timestamp: Timestamp::new(millis, counter, node_id),
                }
            }
            tag::PUT_OR_KEY => Mutation::PutOrKey {
                map: self.string()?,
                key: self.string()?,
                records: self.value("OR records")?,
            },
            tag::ADD_OR_TOMBSTONES => Mutation::AddOrTombstones {
                map: self.string()?,
                tags: self.strings()?,
            },
            tag::REMOVE_OR_TOMBSTONES => Mutation::RemoveOrTombstones {
                map: self.string()?,
                tags: self.strings()?,
            },
            tag::PUT_COUNTER => Mutation::PutCounter {
                name: self.string()?,
                state: self.value("counter")?,
            },
            tag::PUT_FENCING_TOKEN => Mutation::PutFencingToken {
                lock: self.string()?,
                token: u64::from_le_bytes(self.take()?),
            },
            tag::PUT_META => Mutation::PutMeta {
                key: self.string()?,
                value: self.bytes()?.to_vec(),
            },
            tag::CLEAR_MAP => Mutation::ClearMap {
                map: self.string()?,
            },
            tag::APPEND_JOURNAL => Mutation::AppendJournal {
                sequence: u64::from_le_bytes(self.take()?),
                event: self.bytes()?.into(),
            },
            tag::TRIM_JOURNAL => Mutation::TrimJournal {
                below: u64::from_le_bytes(self.take()?),
            },
            other => return Err(format!("unknown mutation tag {other}")),
        })
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| format!("record ends inside a {N}-byte field"))?;
        self.bytes = rest;
        Ok(*head)
    }

    fn len(&mut self) -> Result<usize, String> {
        let len = u32::from_le_bytes(self.take()?);
        usize::try_from(len).map_err(|_| format!("length {len} does not fit in memory"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.len()?;
        if len > self.bytes.len() {
            return Err(format!("a {len}-byte field overruns the record"));
        }
        let (field, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(field)
    }

    fn string(&mut self) -> Result<String, String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
    }

    fn strings(&mut self) -> Result<Vec<String>, String> {
        let count = self.len()?;
        let mut strings = Vec::with_capacity(count.min(self.bytes.len() / 4));
        for _ in 0..count {
            strings.push(self.string()?);
        }
        Ok(strings)
    }

    fn value<T: DeserializeOwned>(&mut self, what: &'static str) -> Result<T, String> {
        let bytes = self.bytes()?;
        rmp_serde::from_slice(bytes).map_err(|e| format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::{LwwRecord, OrMapRecord};
    use crate::store::CounterSnapshot;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::protocol::codec::msgpack_writer::tests::json_value;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rows_the_fast_path_declines_still_load() {
        // Nested past the ingress depth limit, which the tape enforces and rmp_serde does not.
        let mut deep = json!("leaf");
        for _ in 0..80 {
            deep = json!([deep]);
        }
        let record = LwwRecord {
            value: Some(deep.into()),
            timestamp: Timestamp::new(1, 2, "n"),
            ttl_ms: None,
        };
        let bytes = encode("record", &record).unwrap();
        assert!(decode_encoded_map::<LwwRecord>(&bytes).is_none());
        assert_eq!(decode_lww("k", &bytes).unwrap(), record);
        assert!(matches!(
            decode_lww("m/k", &bytes[..bytes.len() - 1]),
            Err(StoreError::Corrupt { what: "LWW record", ref key, .. }) if key == "m/k"
        ));
    }

    #[test]
    fn lww_record_encoding_is_pinned() {
        let record = LwwRecord {
            value: Some(json!(7).into()),
            timestamp: Timestamp::new(1, 2, "n"),
            ttl_ms: None,
        };
        let bytes = encode("record", &record).unwrap();
        // {"value": 7, "timestamp": {"millis": 1, "counter": 2, "nodeId": "n"}}
        assert_eq!(
            hex(&bytes),
            "82a576616c756507a974696d657374616d7083a66d696c6c697301a7636f756e74657202a66e6f64654964a16e"
        );
        assert_eq!(decode::<LwwRecord>("record", "k", &bytes).unwrap(), record);
    }

    #[test]
    fn tombstones_and_ttls_round_trip() {
        let record = LwwRecord {
            value: None,
            timestamp: Timestamp::new(u64::MAX, u32::MAX, "node-1"),
            ttl_ms: Some(1),
        };
        let bytes = encode("record", &record).unwrap();
        assert_eq!(decode::<LwwRecord>("record", "k", &bytes).unwrap(), record);
    }

    #[test]
    fn corrupt_bytes_name_their_location() {
        let err = decode::<CounterSnapshot>("counter", "hits", &[0xc1]).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { what: "counter", ref key, .. } if key == "hits")
        );
        assert!(kind_from_code("m", 9).is_err());
        for kind in [MapKind::Lww, MapKind::Or] {
            assert_eq!(kind_from_code("m", kind_code(kind)).unwrap(), kind);
        }
    }

    fn one_of_each_mutation() -> Vec<Mutation> {
        let record = OrMapRecord {
            value: json!({"a": [1, 2]}),
            timestamp: Timestamp::new(5, 1, "n"),
            tag: "5:1:n".into(),
            ttl_ms: Some(9),
        };
        vec![
            Mutation::SetMapKind {
                map: "m".into(),
                kind: MapKind::Or,
            },
            Mutation::put_lww(
                "m/ü",
                "",
                &LwwRecord {
                    value: None,
                    timestamp: Timestamp::new(u64::MAX, 3, "x"),
                    ttl_ms: Some(1),
                },
            )
            .unwrap(),
            Mutation::DeleteLww {
                map: "m".into(),
                key: "k".into(),
            },
            Mutation::ForgetLww {
                map: "m".into(),
                key: "k".into(),
                timestamp: Timestamp::new(7, u32::MAX, "node"),
            },
            Mutation::PutOrKey {
                map: "o".into(),
                key: "k".into(),
                records: vec![record],
            },
            Mutation::AddOrTombstones {
                map: "o".into(),
                tags: vec!["a".into(), "b".into()],
            },
            Mutation::RemoveOrTombstones {
                map: "o".into(),
                tags: vec![],
            },
            Mutation::PutCounter {
                name: "c".into(),
                state: CounterSnapshot {
                    p: [("n".to_owned(), 1.5)].into(),
                    n: [("m".to_owned(), 2.0)].into(),
                },
            },
            Mutation::PutFencingToken {
                lock: "l".into(),
                token: 42,
            },
            Mutation::PutMeta {
                key: "k".into(),
                value: vec![0, 255, 7],
            },
            Mutation::ClearMap { map: "m".into() },
            Mutation::AppendJournal {
                sequence: 9,
                event: b"e".as_slice().into(),
            },
            Mutation::TrimJournal { below: 3 },
        ]
    }

    #[test]
    fn every_mutation_round_trips_through_the_log_encoding() {
        let mutations = one_of_each_mutation();
        let mut bytes = vec![0xaa];
        encode_mutations(&mutations, &mut bytes).unwrap();
        assert_eq!(bytes[0], 0xaa, "encoding appends");
        assert_eq!(&bytes[1..5], &13u32.to_le_bytes());
        assert_eq!(decode_mutations("r", &bytes[1..]).unwrap(), mutations);
    }

    #[test]
    fn a_truncated_or_garbled_log_record_is_corrupt_not_a_panic() {
        let mut bytes = Vec::new();
        encode_mutations(&one_of_each_mutation(), &mut bytes).unwrap();
        for cut in 0..bytes.len() {
            let err = decode_mutations("seq 4", &bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, StoreError::Corrupt { what: "log record", ref key, .. } if key == "seq 4"),
                "cut at {cut}: {err:?}"
            );
        }
        let mut unknown_tag = 1u32.to_le_bytes().to_vec();
        unknown_tag.push(200);
        assert!(decode_mutations("r", &unknown_tag).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_mutations("r", &trailing).is_err());
        let huge_count = u32::MAX.to_le_bytes();
        assert!(decode_mutations("r", &huge_count).is_err());
    }

    proptest! {
        #[test]
        fn lww_records_encode_exactly_like_rmp_serde(
            value in proptest::option::of(json_value()),
            ttl in proptest::option::of(any::<u64>()),
            millis in any::<u64>(),
            counter in any::<u32>(),
            node in ".{0,300}",
        ) {
            let record = LwwRecord { value: value.map(Into::into), timestamp: Timestamp::new(millis, counter, node), ttl_ms: ttl };
            let bytes = encode("record", &record).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&record).unwrap());
            let mut logged = vec![0xaa];
            write_value(&mut logged, "record", &record).unwrap();
            prop_assert_eq!(&logged[1..5], &(bytes.len() as u32).to_le_bytes());
            prop_assert_eq!(&logged[5..], &bytes[..]);
            // A PutLww carries exactly these bytes, and logs them as the record was logged
            // before it travelled encoded: count, tag, map, key, then the record by length.
            let put = Mutation::put_lww("m", "k", &record).unwrap();
            let Mutation::PutLww { record: row, .. } = &put else { unreachable!() };
            prop_assert_eq!(row.bytes(), &bytes[..]);
            let mut log = Vec::new();
            encode_mutations(std::slice::from_ref(&put), &mut log).unwrap();
            let mut expected = vec![1, 0, 0, 0, tag::PUT_LWW, 1, 0, 0, 0, b'm', 1, 0, 0, 0, b'k'];
            expected.extend_from_slice(&logged[1..]);
            prop_assert_eq!(&log, &expected);
            prop_assert_eq!(decode_mutations("r", &log).unwrap(), vec![put]);
            // A null value and a tombstone are the same bytes.
            let value = record.value.clone().filter(|v| !v.is_null());
            prop_assert_eq!(decode::<LwwRecord>("record", "k", &bytes).unwrap(), LwwRecord { value: value.clone(), ..record.clone() });
            // Loading keeps the value encoded: the same record, written back as the same bytes.
            let loaded = decode_lww("k", &bytes).unwrap();
            prop_assert!(loaded.value.as_ref().is_none_or(|v| v.is_encoded()));
            prop_assert_eq!(&loaded, &LwwRecord { value, ..record });
            prop_assert_eq!(encode("record", &loaded).unwrap(), bytes);
        }

        #[test]
        fn or_records_encode_exactly_like_rmp_serde(
            values in prop::collection::vec(json_value(), 0..5),
            ttl in proptest::option::of(any::<u64>()),
            tag in ".{0,300}",
        ) {
            let records: Vec<OrMapRecord> = values
                .into_iter()
                .map(|value| OrMapRecord { value, timestamp: Timestamp::new(u64::MAX, u32::MAX, "n"), tag: tag.clone(), ttl_ms: ttl })
                .collect();
            let bytes = encode("records", &records).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&records).unwrap());
        }

        #[test]
        fn or_records_round_trip_any_json(value in json_value(), ttl in proptest::option::of(1u64..)) {
            let records = vec![OrMapRecord {
                value,
                timestamp: Timestamp::new(5, 1, "n"),
                tag: "5:1:n".into(),
                ttl_ms: ttl,
            }];
            let bytes = encode("records", &records).unwrap();
            prop_assert_eq!(decode::<Vec<OrMapRecord>>("records", "k", &bytes).unwrap(), records);
        }

        #[test]
        fn counters_round_trip(p in prop::collection::btree_map(".*", -1e12f64..1e12, 0..5),
                               n in prop::collection::btree_map(".*", 0f64..1e12, 0..5)) {
            let state = CounterSnapshot { p, n };
            let bytes = encode("counter", &state).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&state).unwrap());
            prop_assert_eq!(decode::<CounterSnapshot>("counter", "c", &bytes).unwrap(), state);
        }
    }
}
