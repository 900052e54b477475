//! Direct MessagePack encoding of user values (`serde_json::Value`), HLC timestamps and the
//! records that carry them, appended to one buffer through `rmp::encode` primitives.
//!
//! The output is byte for byte what `rmp_serde::to_vec_named` produces for the same data
//! (smallest integer forms, float64 floats, named maps in the object's order, struct fields in
//! declaration order with skipped optionals left out), so anything rmp_serde wrote before
//! reads the same and rmp_serde still decodes it. It exists because the generic serde path
//! costs several times more on the write path, where every applied change is encoded for
//! the journal and the store.

use std::cell::RefCell;
use std::convert::Infallible;

use rmp::encode::{self, ByteBuf, ValueWriteError};
use serde_json::{Number, Value};

use crate::hash::decimal_digits;
use crate::hlc::Timestamp;
use crate::record::{LwwRecord, OrMapRecord};

/// Why a value could not be written: MessagePack lengths are at most `u32::MAX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {what} of length {len} exceeds the MessagePack limit of 4294967295")]
pub struct WriteError {
    /// `"string"`, `"array"` or `"map"`.
    pub what: &'static str,
    /// The length that did not fit.
    pub len: usize,
}

/// A writer reused as scratch keeps at most this much buffer between uses: one huge value must
/// not pin its memory on the thread that keeps the writer.
const MAX_KEPT_SCRATCH: usize = 64 << 10;

thread_local! {
    /// The thread's scratch writer ([`with_scratch`]).
    static SCRATCH: RefCell<MsgpackWriter> = RefCell::new(MsgpackWriter::default());
}

/// Runs `f` with an empty scratch writer, for encoding something that is then copied out at
/// its exact size (one allocation of the right size, without measuring the value first): the
/// thread's own, or a fresh one should the thread's be in use further up the stack. It is
/// emptied after use, so a huge value does not keep its memory until the next one.
pub fn with_scratch<T>(f: impl FnOnce(&mut MsgpackWriter) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let done = f(&mut scratch);
            scratch.reset_scratch();
            done
        }
        Err(_) => f(&mut MsgpackWriter::default()),
    })
}

/// Appends MessagePack to a growing buffer.
#[derive(Debug, Default)]
pub struct MsgpackWriter {
    buf: ByteBuf,
}

/// Writing to a `ByteBuf` cannot fail: its error type is uninhabited.
fn infallible<T>(result: Result<T, ValueWriteError<Infallible>>) -> T {
    match result {
        Ok(value) => value,
        Err(
            ValueWriteError::InvalidMarkerWrite(never) | ValueWriteError::InvalidDataWrite(never),
        ) => match never {},
    }
}

/// The fixstr marker; its low five bits are the length.
const FIXSTR: u8 = 0xa0;

/// `name` as a fixstr (marker and bytes), for field names written with
/// [`MsgpackWriter::raw`]. `N` is the name's length plus one; used in a `const`, a wrong `N`
/// or a name of 32 bytes or more fails to compile.
pub const fn fixstr<const N: usize>(name: &str) -> [u8; N] {
    let bytes = name.as_bytes();
    assert!(
        bytes.len() + 1 == N && bytes.len() < 32,
        "a fixstr needs N = length + 1 and fewer than 32 bytes"
    );
    let mut out = [0u8; N];
    out[0] = FIXSTR | bytes.len() as u8;
    let mut i = 0;
    while i < bytes.len() {
        out[i + 1] = bytes[i];
        i += 1;
    }
    out
}

/// The record and timestamp field names.
mod field {
    use super::fixstr;
    pub(super) const VALUE: [u8; 6] = fixstr("value");
    pub(super) const TIMESTAMP: [u8; 10] = fixstr("timestamp");
    pub(super) const TAG: [u8; 4] = fixstr("tag");
    pub(super) const TTL_MS: [u8; 6] = fixstr("ttlMs");
    pub(super) const MILLIS: [u8; 7] = fixstr("millis");
    pub(super) const COUNTER: [u8; 8] = fixstr("counter");
    pub(super) const NODE_ID: [u8; 7] = fixstr("nodeId");
}

fn checked_len(what: &'static str, len: usize) -> Result<u32, WriteError> {
    u32::try_from(len).map_err(|_| WriteError { what, len })
}

impl MsgpackWriter {
    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: ByteBuf::with_capacity(capacity),
        }
    }

    /// A writer appending to `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self {
            buf: ByteBuf::from_vec(bytes),
        }
    }

    /// Everything written, after whatever the buffer held before.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf.into_vec()
    }

    /// Empties the writer for its next use as a scratch buffer, giving back memory a huge value
    /// made it grow to.
    pub fn reset_scratch(&mut self) {
        let buffer = self.as_mut_vec();
        buffer.clear();
        if buffer.capacity() > MAX_KEPT_SCRATCH {
            buffer.shrink_to(MAX_KEPT_SCRATCH);
        }
    }

    /// The buffer itself, for the few stored types still written through serde.
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        self.buf.as_mut_vec()
    }

    pub fn nil(&mut self) {
        match encode::write_nil(&mut self.buf) {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }

    pub fn bool(&mut self, value: bool) {
        match encode::write_bool(&mut self.buf, value) {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }

    /// In its smallest unsigned form.
    pub fn uint(&mut self, value: u64) {
        infallible(encode::write_uint(&mut self.buf, value));
    }

    /// In its smallest form (unsigned for non-negative values).
    pub fn sint(&mut self, value: i64) {
        infallible(encode::write_sint(&mut self.buf, value));
    }

    /// Always as float64.
    pub fn f64(&mut self, value: f64) {
        infallible(encode::write_f64(&mut self.buf, value));
    }

    pub fn str(&mut self, text: &str) -> Result<(), WriteError> {
        let bytes = text.as_bytes();
        let out = self.buf.as_mut_vec();
        // Most strings are short: one reservation, a fixstr marker and the bytes.
        if bytes.len() < 32 {
            out.reserve(1 + bytes.len());
            out.push(FIXSTR | bytes.len() as u8);
            out.extend_from_slice(bytes);
            return Ok(());
        }
        let len = checked_len("string", bytes.len())?;
        infallible(encode::write_str_len(&mut self.buf, len));
        self.buf.as_mut_vec().extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes that already are MessagePack, such as a [`fixstr`] field name.
    pub fn raw<const N: usize>(&mut self, encoded: &[u8; N]) {
        self.buf.as_mut_vec().extend_from_slice(encoded);
    }

    /// `value` in decimal as a string (journal sequences), without a temporary `String`.
    pub fn decimal_str(&mut self, value: u64) {
        let mut buf = [0u8; 20];
        let digits = decimal_digits(value, &mut buf);
        // At most 20 digits: always a fixstr.
        infallible(encode::write_str_len(&mut self.buf, digits.len() as u32));
        self.buf.as_mut_vec().extend_from_slice(digits);
    }

    /// The header of an array of `len` items; the items follow.
    pub fn array_len(&mut self, len: usize) -> Result<(), WriteError> {
        let len = checked_len("array", len)?;
        infallible(encode::write_array_len(&mut self.buf, len));
        Ok(())
    }

    /// The header of a map of `len` entries; keys and values follow, alternating.
    pub fn map_len(&mut self, len: usize) -> Result<(), WriteError> {
        let len = checked_len("map", len)?;
        infallible(encode::write_map_len(&mut self.buf, len));
        Ok(())
    }

    /// A user value, as `rmp_serde` writes it.
    pub fn value(&mut self, value: &Value) -> Result<(), WriteError> {
        match value {
            Value::Null => self.nil(),
            Value::Bool(b) => self.bool(*b),
            Value::Number(n) => self.number(n),
            Value::String(s) => self.str(s)?,
            Value::Array(items) => {
                self.array_len(items.len())?;
                for item in items {
                    self.value(item)?;
                }
            }
            Value::Object(map) => {
                self.map_len(map.len())?;
                for (key, item) in map {
                    self.str(key)?;
                    self.value(item)?;
                }
            }
        }
        Ok(())
    }

    /// The way `serde_json` hands numbers to a serializer: u64, else i64, else f64.
    pub fn number(&mut self, n: &Number) {
        if let Some(u) = n.as_u64() {
            self.uint(u);
        } else if let Some(i) = n.as_i64() {
            self.sint(i);
        } else if let Some(f) = n.as_f64() {
            self.f64(f);
        }
    }

    /// `{millis, counter, nodeId}`.
    pub fn timestamp(&mut self, timestamp: &Timestamp) -> Result<(), WriteError> {
        self.map_len(3)?;
        self.raw(&field::MILLIS);
        self.uint(timestamp.millis);
        self.raw(&field::COUNTER);
        self.uint(u64::from(timestamp.counter));
        self.raw(&field::NODE_ID);
        self.str(&timestamp.node_id)
    }

    /// `{value, timestamp, ttlMs?}`; a tombstone's value is `nil`.
    pub fn lww_record(&mut self, record: &LwwRecord) -> Result<(), WriteError> {
        self.map_len(2 + usize::from(record.ttl_ms.is_some()))?;
        self.raw(&field::VALUE);
        match &record.value {
            Some(value) => value.write_msgpack(self)?,
            None => self.nil(),
        }
        self.raw(&field::TIMESTAMP);
        self.timestamp(&record.timestamp)?;
        self.ttl_ms(record.ttl_ms)
    }

    /// `{value, timestamp, tag, ttlMs?}`.
    pub fn or_record(&mut self, record: &OrMapRecord) -> Result<(), WriteError> {
        self.map_len(3 + usize::from(record.ttl_ms.is_some()))?;
        self.raw(&field::VALUE);
        self.value(&record.value)?;
        self.raw(&field::TIMESTAMP);
        self.timestamp(&record.timestamp)?;
        self.raw(&field::TAG);
        self.str(&record.tag)?;
        self.ttl_ms(record.ttl_ms)
    }

    /// An array of OR records.
    pub fn or_records(&mut self, records: &[OrMapRecord]) -> Result<(), WriteError> {
        self.array_len(records.len())?;
        records.iter().try_for_each(|record| self.or_record(record))
    }

    fn ttl_ms(&mut self, ttl_ms: Option<u64>) -> Result<(), WriteError> {
        if let Some(ttl) = ttl_ms {
            self.raw(&field::TTL_MS);
            self.uint(ttl);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn written(value: &Value) -> Vec<u8> {
        let mut writer = MsgpackWriter::default();
        writer.value(value).unwrap();
        writer.into_vec()
    }

    fn assert_like_rmp_serde(value: &Value) {
        let bytes = written(value);
        assert_eq!(bytes, rmp_serde::to_vec_named(value).unwrap(), "{value}");
    }

    #[test]
    fn fixed_vectors() {
        let cases: [(Value, &str); 10] = [
            (json!(null), "c0"),
            (json!(true), "c3"),
            (json!(127), "7f"),
            (json!(128), "cc80"),
            (json!(-33), "d0df"),
            (json!(u64::MAX), "cfffffffffffffffff"),
            (json!(i64::MIN), "d38000000000000000"),
            (json!(1.5), "cb3ff8000000000000"),
            (json!("é"), "a2c3a9"),
            (json!({"b": [1, null], "a": {}}), "82a16292 01c0a16180"),
        ];
        for (value, hex) in cases {
            let hex: String = hex.split_whitespace().collect();
            let expected: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(written(&value), expected, "{value}");
            assert_like_rmp_serde(&value);
        }
    }

    #[test]
    fn every_width_boundary_matches_rmp_serde() {
        let unsigned = [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            u64::MAX,
        ];
        for u in unsigned {
            assert_like_rmp_serde(&json!(u));
        }
        let signed = [
            -1i64,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            -2_147_483_648,
            -2_147_483_649,
            i64::MIN,
        ];
        for i in signed {
            assert_like_rmp_serde(&json!(i));
        }
        for len in [0, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
            assert_like_rmp_serde(&json!("x".repeat(len)));
            assert_like_rmp_serde(&Value::Array(vec![json!(0); len.min(65_537)]));
        }
        for len in [15, 16, 65_535, 65_536] {
            let map = (0..len).map(|i| (i.to_string(), json!(i))).collect();
            assert_like_rmp_serde(&Value::Object(map));
        }
    }

    #[test]
    fn records_and_timestamps_match_rmp_serde() {
        let timestamp = Timestamp::new(1_795_698_229_131, 70_000, "node-ü");
        let mut writer = MsgpackWriter::default();
        writer.timestamp(&timestamp).unwrap();
        assert_eq!(
            writer.into_vec(),
            rmp_serde::to_vec_named(&timestamp).unwrap()
        );
        for (value, ttl_ms) in [
            (Some(json!({"n": 1})), None),
            (None, Some(5)),
            (Some(json!(null)), Some(1 << 40)),
        ] {
            let record = LwwRecord {
                value: value.map(Into::into),
                timestamp: timestamp.clone(),
                ttl_ms,
            };
            let mut writer = MsgpackWriter::default();
            writer.lww_record(&record).unwrap();
            assert_eq!(writer.into_vec(), rmp_serde::to_vec_named(&record).unwrap());
        }
    }

    #[test]
    fn fixstr_field_names_are_strings() {
        const NAME: [u8; 8] = fixstr("counter");
        let mut writer = MsgpackWriter::default();
        writer.raw(&NAME);
        writer.raw(&fixstr::<1>(""));
        assert_eq!(
            writer.into_vec(),
            rmp_serde::to_vec_named(&("counter", "")).unwrap()[1..]
        );
    }

    #[test]
    fn decimal_strings_match_rmp_serde() {
        for n in [0, 9, 10, 42, 1_000_000, u64::MAX] {
            let mut writer = MsgpackWriter::default();
            writer.decimal_str(n);
            assert_eq!(
                writer.into_vec(),
                rmp_serde::to_vec_named(&n.to_string()).unwrap()
            );
        }
    }

    #[test]
    fn writing_appends_to_what_the_buffer_held() {
        let mut writer = MsgpackWriter::from_vec(vec![0xaa]);
        writer.str("k").unwrap();
        writer.as_mut_vec().push(0xbb);
        assert_eq!(writer.into_vec(), vec![0xaa, 0xa1, b'k', 0xbb]);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => ".{0,40}",
            1 => (any::<char>(), 0usize..70_000).prop_map(|(c, n)| c.to_string().repeat(n / c.len_utf8())),
        ]
    }

    /// Arbitrary JSON values, with integer extremes, any finite float and long non-ASCII
    /// strings (also used by the store codec's tests).
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64)].prop_map(Value::from),
            Just(Value::from(u64::MAX)),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 20, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..20).prop_map(Value::from),
                prop::collection::vec((".{0,12}", inner), 0..20)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_value_encodes_exactly_like_rmp_serde(value in json_value()) {
            let bytes = written(&value);
            prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&value).unwrap());
        }
    }
}
