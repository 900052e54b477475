//! [`UserValue`]: the value of an LWW record, kept as the MessagePack it arrived in.
//!
//! A write's value is user data the server mostly carries: it is stored, journaled and sent
//! on, and read only when a query, a search index or a field rule looks inside. Building a
//! `serde_json::Value` tree for every write, then encoding that tree for the store row and
//! again for the journal entry, was a fifth of the server's work per write. A value that
//! comes through the msgpack fast path, or is loaded from a stored row, is therefore kept as
//! its encoded bytes (in exactly the form [`MsgpackWriter::value`] writes), copied as bytes
//! wherever it is written, and decoded into a `Value` only the first time something reads it.
//! A value built in code or read from JSON holds the `Value` itself.
//!
//! Either way it is the same value: it serializes, compares and describes itself (as a JSON
//! Schema) exactly as the `Value` it stands for.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::protocol::codec::decode_user_value;
use crate::protocol::codec::msgpack_writer::{MsgpackWriter, WriteError};

/// The newtype name a deserializer that can hand out a value's MessagePack encoding (the
/// fast path's tape) recognises; any other deserializer sees an ordinary newtype and hands
/// the `Value` inside.
pub(crate) const MSGPACK_NEWTYPE: &str = "$topgun::UserValue";

thread_local! {
    /// Set while the tape hands a value's encoding to [`UserValueVisitor::visit_bytes`], so
    /// bytes from any other deserializer are taken for what they are: a byte string.
    static TAPE_HANDOFF: Cell<bool> = const { Cell::new(false) };
}

/// Runs `visit`, in which the tape hands the visitor a value's MessagePack as bytes.
pub(crate) fn hand_over_encoded<T>(visit: impl FnOnce() -> T) -> T {
    let outer = TAPE_HANDOFF.replace(true);
    let visited = visit();
    TAPE_HANDOFF.set(outer);
    visited
}

/// A user value: JSON data, possibly still in its MessagePack encoding (see the module docs).
///
/// An encoded value that has been read keeps its decoded form beside its bytes, as the price
/// of handing out `&Value`: a record that queries or the search index read costs both.
#[derive(Clone)]
pub struct UserValue(Repr);

/// Both forms are boxed: a `Value` is 80 bytes, and records (with their values) are moved
/// several times on the write path and kept per key.
#[derive(Clone)]
enum Repr {
    Decoded(Box<Value>),
    Encoded {
        /// What [`MsgpackWriter::value`] writes for the value.
        msgpack: Box<[u8]>,
        /// The value, once something read it.
        decoded: OnceLock<Box<Value>>,
    },
}

impl UserValue {
    /// The value of `msgpack`, which must be exactly what [`MsgpackWriter::value`] writes for
    /// it (the fast path's tape guarantees that; see `tape::TapeNode::write_msgpack`).
    pub(crate) fn from_msgpack(msgpack: &[u8]) -> Self {
        debug_assert!(
            decode_user_value(msgpack).is_ok(),
            "not a user value's encoding: {msgpack:02x?}"
        );
        Self(Repr::Encoded {
            msgpack: Box::from(msgpack),
            decoded: OnceLock::new(),
        })
    }

    /// The value, decoded on first use.
    pub fn value(&self) -> &Value {
        match &self.0 {
            Repr::Decoded(value) => value,
            Repr::Encoded { msgpack, decoded } => decoded.get_or_init(|| Box::new(decode(msgpack))),
        }
    }

    /// The value, owned.
    pub fn into_value(self) -> Value {
        match self.0 {
            Repr::Decoded(value) => *value,
            Repr::Encoded { msgpack, decoded } => decoded
                .into_inner()
                .map_or_else(|| decode(&msgpack), |value| *value),
        }
    }

    /// True for JSON `null` (which a record reads as a tombstone), without decoding.
    pub fn is_null(&self) -> bool {
        match &self.0 {
            Repr::Decoded(value) => value.is_null(),
            Repr::Encoded { msgpack, .. } => **msgpack == [NIL],
        }
    }

    /// True while the value is held as its encoding.
    #[cfg(test)]
    pub(crate) fn is_encoded(&self) -> bool {
        matches!(self.0, Repr::Encoded { .. })
    }

    /// Appends the value's MessagePack encoding: a copy of its bytes when it has them.
    pub fn write_msgpack(&self, out: &mut MsgpackWriter) -> Result<(), WriteError> {
        match &self.0 {
            Repr::Decoded(value) => out.value(value),
            Repr::Encoded { msgpack, .. } => {
                out.as_mut_vec().extend_from_slice(msgpack);
                Ok(())
            }
        }
    }
}

/// The MessagePack `nil` marker.
const NIL: u8 = 0xc0;

/// Decodes bytes the tape encoded (from a frame or a stored row). They are well-formed
/// MessagePack by construction, so this cannot fail; should it anyway, the failure is logged
/// and the value reads as `null` rather than taking the server down.
fn decode(msgpack: &[u8]) -> Value {
    decode_user_value(msgpack).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an encoded user value does not decode; reading it as null");
        Value::Null
    })
}

impl From<Value> for UserValue {
    fn from(value: Value) -> Self {
        Self(Repr::Decoded(Box::new(value)))
    }
}

impl From<UserValue> for Value {
    fn from(value: UserValue) -> Self {
        value.into_value()
    }
}

impl std::ops::Deref for UserValue {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl PartialEq for UserValue {
    fn eq(&self, other: &Self) -> bool {
        if let (Repr::Encoded { msgpack: a, .. }, Repr::Encoded { msgpack: b, .. }) =
            (&self.0, &other.0)
            && a == b
        {
            return true;
        }
        self.value() == other.value()
    }
}

impl PartialEq<Value> for UserValue {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl fmt::Debug for UserValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value().fmt(f)
    }
}

impl Serialize for UserValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UserValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(MSGPACK_NEWTYPE, UserValueVisitor)
    }
}

struct UserValueVisitor;

impl<'de> Visitor<'de> for UserValueVisitor {
    type Value = UserValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    /// Every deserializer but the tape: the value itself.
    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<UserValue, D::Error> {
        Value::deserialize(inner).map(UserValue::from)
    }

    /// The tape: the value's MessagePack encoding ([`hand_over_encoded`]). Bytes from any
    /// other deserializer are a byte string, which is JSON's array of byte values.
    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<UserValue, E> {
        if TAPE_HANDOFF.replace(false) {
            return Ok(UserValue::from_msgpack(bytes));
        }
        Ok(UserValue::from(Value::from(bytes.to_vec())))
    }
}

impl JsonSchema for UserValue {
    fn inline_schema() -> bool {
        Value::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        Value::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        Value::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encoded(value: &Value) -> UserValue {
        let mut out = MsgpackWriter::default();
        out.value(value).unwrap();
        UserValue::from_msgpack(&out.into_vec())
    }

    #[test]
    fn an_encoded_value_reads_writes_and_compares_as_its_value() {
        let value = json!({"v": "x".repeat(40), "n": [1, -2, 2.5, 2.0, null, true]});
        let user = encoded(&value);
        assert_eq!(user.value(), &value);
        assert!(user.value()["n"][3].is_f64(), "a float stays a float");
        assert_eq!(user, UserValue::from(value.clone()));
        assert_eq!(UserValue::from(value.clone()), user);
        assert_eq!(format!("{user:?}"), format!("{value:?}"));
        assert_eq!(serde_json::to_value(&user).unwrap(), value);
        assert_eq!(
            rmp_serde::to_vec_named(&user).unwrap(),
            rmp_serde::to_vec_named(&value).unwrap()
        );
        let mut out = MsgpackWriter::default();
        user.write_msgpack(&mut out).unwrap();
        let mut expected = MsgpackWriter::default();
        expected.value(&value).unwrap();
        assert_eq!(out.into_vec(), expected.into_vec());
        assert_eq!(user.into_value(), value);
    }

    #[test]
    fn null_is_known_without_decoding() {
        assert!(encoded(&Value::Null).is_null());
        assert!(UserValue::from(Value::Null).is_null());
        assert!(!encoded(&json!(0)).is_null());
        assert!(!encoded(&json!({})).is_null());
    }

    #[test]
    fn other_deserializers_hand_the_value() {
        let value = json!({"a": [1, "b"]});
        let from_json: UserValue = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(from_json.value(), &value);
        let bytes = rmp_serde::to_vec_named(&value).unwrap();
        let from_msgpack: UserValue = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(from_msgpack.value(), &value);
    }

    #[test]
    fn bytes_from_another_deserializer_are_a_byte_string() {
        let deserializer =
            serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(&[0x92, 0x01]);
        let value = UserValueVisitor.visit_bytes::<serde::de::value::Error>(&[0x92, 0x01]);
        assert_eq!(value.unwrap(), UserValue::from(json!([0x92, 0x01])));
        let handed = hand_over_encoded(|| {
            UserValueVisitor.visit_bytes::<serde::de::value::Error>(&[0x92, 0x01, 0xc0])
        });
        assert_eq!(handed.unwrap(), UserValue::from(json!([1, null])));
        // The hand-over covered one value only.
        let after = UserValue::deserialize(deserializer).unwrap();
        assert_eq!(after, UserValue::from(json!([0x92, 0x01])));
    }

    #[test]
    fn its_schema_is_the_schema_of_any_value() {
        assert_eq!(
            schemars::schema_for!(UserValue),
            schemars::schema_for!(Value)
        );
    }
}
