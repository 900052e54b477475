//! Field types shared by several message families: write concerns, change kinds, raw bytes,
//! and the schema-only descriptions of constrained strings (map names, keys, ids, topics,
//! tokens) whose limits end up in the generated JSON Schemas (requirement SEC-03).
//!
//! Grammar of a map name (one rule for every message): 1–256 characters, none of them an
//! ASCII/C1 control character. Everything else (including `:` and `/`) is allowed, so that
//! names used by the TypeScript clients keep working; storage backends must escape names.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Regex (ECMA-262 and Rust `regex` compatible) rejecting control characters.
pub const NO_CONTROL_CHARS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// Regex of a topic name (PROTOCOL.md §3.7, JS `\w` is ASCII-only).
pub const TOPIC_PATTERN: &str = r"^[A-Za-z0-9_\-.:/]+$";
/// Regex of a Merkle path: up to three lowercase hex characters (PROTOCOL.md §3.4), or a
/// deep-sync request (`crate::merkle::DeepRequest`, README "Deep Merkle sync"): `+` or `=`
/// and 1 to 64 comma-separated hex prefixes of at most 8 digits (more than 3 after `=`).
pub const MERKLE_PATH_PATTERN: &str =
    "^([0-9a-f]{0,3}|\\+[0-9a-f]{1,8}(,[0-9a-f]{1,8}){0,63}|=[0-9a-f]{4,8}(,[0-9a-f]{4,8}){0,63})$";
/// Regex of a journal sequence number (decimal bigint as a string).
pub const SEQUENCE_PATTERN: &str = "^[0-9]{1,20}$";
/// Maximum number of ops in one `OP_BATCH`.
pub const MAX_BATCH_OPS: u32 = 10_000;
/// Maximum length of lists of keys, entries and results in one message.
pub const MAX_LIST_ITEMS: u32 = 10_000;
/// Maximum number of OR-map tombstone tags in one entry.
pub const MAX_TOMBSTONES: u32 = 100_000;

/// Schema of a map name: 1–256 characters, no control characters.
#[derive(JsonSchema)]
pub struct MapName(
    #[schemars(length(min = 1, max = 256), regex(pattern = NO_CONTROL_CHARS))] pub String,
);

/// Schema of a record key: at most 1024 characters.
#[derive(JsonSchema)]
pub struct Key(#[schemars(length(max = 1024))] pub String);

/// Schema of a request, query, subscription or op id: 1–256 characters.
#[derive(JsonSchema)]
pub struct Id(#[schemars(length(min = 1, max = 256))] pub String);

/// Schema of a short name (lock, counter, processor, resolver, node id, column): 1–256 chars,
/// no control characters.
#[derive(JsonSchema)]
pub struct Name(
    #[schemars(length(min = 1, max = 256), regex(pattern = NO_CONTROL_CHARS))] pub String,
);

/// Schema of a topic name: `^[\w\-.:/]+$`, 1–256 characters.
#[derive(JsonSchema)]
pub struct TopicName(
    #[schemars(length(min = 1, max = 256), regex(pattern = TOPIC_PATTERN))] pub String,
);

/// Schema of an auth token (JWT or device token): at most 16 KiB.
#[derive(JsonSchema)]
pub struct Token(#[schemars(length(max = 16384))] pub String);

/// Schema of an OR-map tag (`millis:counter:nodeId`): at most 512 characters.
#[derive(JsonSchema)]
pub struct Tag(#[schemars(length(max = 512))] pub String);

/// Schema of free text such as error messages and search queries: at most 64 KiB.
#[derive(JsonSchema)]
pub struct Text(#[schemars(length(max = 65536))] pub String);

/// Write concern of an op, ordered from weakest to strongest (PROTOCOL.md §3.2).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WriteConcern {
    FireAndForget,
    /// The default.
    #[default]
    Memory,
    Applied,
    Replicated,
    Persisted,
}

/// How a live result changed (2026-08 `changeType`, and 2026-01 `SEARCH_UPDATE.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeType {
    Enter,
    Update,
    Leave,
}

/// Raw bytes (BATCH data, vectors).
///
/// Encoded as msgpack `bin` (a JSON array of byte values in JSON). Decoded from `bin` (which the
/// inbound codec normalises to an array of byte values), from an array of byte values, or from
/// an object `{"0": b0, "1": b1, ...}` — the shape the 2026-08 client's `stripUndefined`
/// turns a `Uint8Array` into.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes, an array of byte values, or an object of index → byte value")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Bytes(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bytes, A::Error> {
        let mut pairs: Vec<(usize, u8)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((index, byte)) = map.next_entry::<String, u8>()? {
            let index = index
                .parse::<usize>()
                .map_err(|_| de::Error::custom(format!("byte index {index:?} is not a number")))?;
            pairs.push((index, byte));
        }
        pairs.sort_unstable_by_key(|(index, _)| *index);
        if pairs.iter().enumerate().any(|(i, (index, _))| i != *index) {
            return Err(de::Error::custom("byte indices must be exactly 0..n"));
        }
        Ok(Bytes(pairs.into_iter().map(|(_, b)| b).collect()))
    }
}

impl JsonSchema for Bytes {
    fn schema_name() -> Cow<'static, str> {
        "Bytes".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes: msgpack bin (normalised to an array of byte values), an array of byte values, or an object of index to byte value.",
            "anyOf": [
                {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
                {
                    "type": "object",
                    "propertyNames": {"pattern": "^[0-9]{1,10}$"},
                    "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 255}
                }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_concern_orders_weakest_first() {
        assert!(WriteConcern::FireAndForget < WriteConcern::Memory);
        assert!(WriteConcern::Memory < WriteConcern::Applied);
        assert!(WriteConcern::Applied < WriteConcern::Replicated);
        assert!(WriteConcern::Replicated < WriteConcern::Persisted);
        assert_eq!(
            serde_json::to_value(WriteConcern::FireAndForget).unwrap(),
            json!("FIRE_AND_FORGET")
        );
    }

    #[test]
    fn bytes_accept_array_and_index_object() {
        let from_array: Bytes = serde_json::from_value(json!([1, 2, 255])).unwrap();
        let from_object: Bytes = serde_json::from_value(json!({"1": 2, "0": 1, "2": 255})).unwrap();
        assert_eq!(from_array, Bytes(vec![1, 2, 255]));
        assert_eq!(from_object, from_array);
        assert!(serde_json::from_value::<Bytes>(json!({"0": 1, "2": 3})).is_err());
        assert!(serde_json::from_value::<Bytes>(json!([256])).is_err());
    }
}
