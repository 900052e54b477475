//! [`EncodedLww`]: an LWW record as the store keeps it, encoded once on the caller's thread.
//!
//! A `PutLww` used to carry a clone of the record (a `serde_json` value tree), which the store
//! writer encoded for the log, kept in its overlay, encoded again at every checkpoint, and
//! freed on its own thread. The row's bytes are now made once, where the record lives, in
//! exactly the form the store writes ([`MsgpackWriter::lww_record`]); the log and the
//! checkpoint copy them, and the overlay's newer-wins rule reads the timestamp kept beside
//! them. The only way to make one is from a record (or from stored bytes, which are decoded
//! to check them), so the bytes and the timestamp cannot disagree.

use std::fmt;

use crate::user_value::UserValue;

use super::StoreError;
use super::codec::{Stored, decode_lww};
use crate::hlc::Timestamp;
use crate::protocol::codec::msgpack_writer::with_scratch;
use crate::record::LwwRecord;

/// One LWW record encoded as a store row, with what the store's merge rules need.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedLww {
    /// The row exactly as stored: what [`MsgpackWriter::lww_record`] writes.
    bytes: Box<[u8]>,
    /// The timestamp's physical part.
    millis: u64,
    /// The timestamp's logical part.
    counter: u32,
    /// Where the timestamp's node id lies in `bytes`, so comparing timestamps needs no copy.
    node_id_start: usize,
    node_id_len: usize,
    /// The row decodes to a tombstone (`value` absent or null).
    tombstone: bool,
}

impl EncodedLww {
    /// Encodes `record` as a store row.
    pub fn new(record: &LwwRecord) -> Result<Self, StoreError> {
        with_scratch(|scratch| {
            record
                .write_stored(scratch)
                .map_err(|message| StoreError::Encode {
                    what: "LWW record",
                    message,
                })?;
            Self::with_bytes(scratch.as_mut_vec(), record).ok_or_else(|| StoreError::Encode {
                what: "LWW record",
                message: "the encoded row does not end with its node id".to_owned(),
            })
        })
    }

    /// A row read back from storage (a redb row or a log record); `key` names where it was
    /// stored, for the error message. The bytes are read once (the value scanned, not
    /// decoded) to check them and to learn the timestamp.
    pub(crate) fn from_stored(bytes: &[u8], key: impl fmt::Display) -> Result<Self, StoreError> {
        let record = decode_lww(key, bytes)?;
        match Self::with_bytes(bytes, &record) {
            Some(row) => Ok(row),
            // Not laid out the way this build writes rows: store the record as it writes it.
            None => Self::new(&record),
        }
    }

    /// The row for `bytes`, the encoding of `record`; `None` if the node id is not where this
    /// build's encoder puts it.
    fn with_bytes(bytes: &[u8], record: &LwwRecord) -> Option<Self> {
        let node_id = record.timestamp.node_id.as_bytes();
        let node_id_end = bytes.len().checked_sub(ttl_field_len(record.ttl_ms)?)?;
        let node_id_start = node_id_end.checked_sub(node_id.len())?;
        if bytes.get(node_id_start..node_id_end)? != node_id {
            return None;
        }
        Some(Self {
            bytes: Box::from(bytes),
            millis: record.timestamp.millis,
            counter: record.timestamp.counter,
            node_id_start,
            node_id_len: node_id.len(),
            tombstone: record.value.as_ref().is_none_or(UserValue::is_null),
        })
    }

    /// The record the row holds. A `null` value reads back as a tombstone.
    pub fn decode(&self) -> Result<LwwRecord, StoreError> {
        decode_lww("a PutLww mutation", &self.bytes)
    }

    /// The row as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp::new(
            self.millis,
            self.counter,
            String::from_utf8_lossy(self.node_id()),
        )
    }

    /// True when the row holds a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }

    /// Whether this row's timestamp is strictly newer than `other`'s: the store-side LWW rule
    /// (see [`super::lww_replaces`]), in the order [`Timestamp`] defines.
    pub(crate) fn is_newer_than(&self, other: &Self) -> bool {
        (self.millis, self.counter, self.node_id()) > (other.millis, other.counter, other.node_id())
    }

    /// Whether the row carries exactly `timestamp`.
    pub(crate) fn has_timestamp(&self, timestamp: &Timestamp) -> bool {
        (self.millis, self.counter, self.node_id())
            == (
                timestamp.millis,
                timestamp.counter,
                timestamp.node_id.as_bytes(),
            )
    }

    fn node_id(&self) -> &[u8] {
        // Always in range: `with_bytes` found the node id there.
        self.bytes
            .get(self.node_id_start..self.node_id_start + self.node_id_len)
            .unwrap_or_default()
    }
}

impl fmt::Debug for EncodedLww {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedLww")
            .field("timestamp", &self.timestamp().to_string())
            .field("tombstone", &self.tombstone)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Bytes the optional `ttlMs` field takes after the timestamp; `None` if it cannot be
/// measured (never, for a `u64`).
fn ttl_field_len(ttl_ms: Option<u64>) -> Option<usize> {
    let Some(ttl) = ttl_ms else {
        return Some(0);
    };
    /// `ttlMs` as a fixstr: its marker and five bytes.
    const NAME_LEN: usize = 6;
    let mut buf = [0u8; 9];
    let mut rest = &mut buf[..];
    rmp::encode::write_uint(&mut rest, ttl).ok()?;
    Some(NAME_LEN + 9 - rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::msgpack_writer::tests::json_value;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn record(value: Option<Value>, timestamp: Timestamp, ttl_ms: Option<u64>) -> LwwRecord {
        LwwRecord {
            value: value.map(Into::into),
            timestamp,
            ttl_ms,
        }
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        (0u64..4, 0u32..3, "[a-c]{0,3}")
            .prop_map(|(millis, counter, node)| Timestamp::new(millis, counter, node))
    }

    #[test]
    fn a_row_is_the_pinned_store_encoding() {
        let row =
            EncodedLww::new(&record(Some(json!(7)), Timestamp::new(1, 2, "n"), None)).unwrap();
        // {"value": 7, "timestamp": {"millis": 1, "counter": 2, "nodeId": "n"}}, as
        // codec.rs pins it.
        let hex: String = row.bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "82a576616c756507a974696d657374616d7083a66d696c6c697301a7636f756e74657202a66e6f64654964a16e"
        );
        assert_eq!(row.timestamp(), Timestamp::new(1, 2, "n"));
        assert!(!row.is_tombstone());
    }

    #[test]
    fn stored_bytes_laid_out_otherwise_are_kept_as_the_record_they_hold() {
        // Fields in another order (a foreign writer): readable, so re-encoded canonically.
        let foreign = rmp_serde::to_vec_named(&json!({
            "timestamp": {"nodeId": "n", "millis": 3, "counter": 1},
            "value": "v",
        }))
        .unwrap();
        let row = EncodedLww::from_stored(&foreign, "m/k").unwrap();
        let expected = record(Some(json!("v")), Timestamp::new(3, 1, "n"), None);
        assert_eq!(row, EncodedLww::new(&expected).unwrap());
        assert_eq!(row.decode().unwrap(), expected);

        let err = EncodedLww::from_stored(&[0xc1], "m/k").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { ref key, .. } if key == "m/k"));
    }

    proptest! {
        #[test]
        fn rows_round_trip_and_read_back_from_storage(
            value in proptest::option::of(json_value()),
            ttl in proptest::option::of(any::<u64>()),
            millis in any::<u64>(),
            counter in any::<u32>(),
            node in ".{0,40}",
        ) {
            let record = record(value, Timestamp::new(millis, counter, node), ttl);
            let row = EncodedLww::new(&record).unwrap();
            prop_assert_eq!(row.bytes(), &rmp_serde::to_vec_named(&record).unwrap()[..]);
            prop_assert_eq!(row.timestamp(), record.timestamp.clone());
            prop_assert!(row.has_timestamp(&record.timestamp));
            let value = record.value.clone().filter(|v| !v.is_null());
            prop_assert_eq!(row.is_tombstone(), value.is_none());
            prop_assert_eq!(row.decode().unwrap(), LwwRecord { value, ..record });
            prop_assert_eq!(EncodedLww::from_stored(row.bytes(), "k").unwrap(), row);
        }

        #[test]
        fn rows_order_like_their_timestamps(a in timestamp(), b in timestamp(), ttl in any::<u64>()) {
            let left = EncodedLww::new(&record(Some(json!(1)), a.clone(), Some(ttl))).unwrap();
            let right = EncodedLww::new(&record(None, b.clone(), None)).unwrap();
            prop_assert_eq!(left.is_newer_than(&right), a > b);
            prop_assert_eq!(right.is_newer_than(&left), b > a);
            prop_assert_eq!(left.has_timestamp(&b), a == b);
        }
    }
}
