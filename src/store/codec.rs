//! The on-disk value encoding shared by durable backends: MessagePack with named fields
//! (`rmp_serde::to_vec_named`), which stays readable when optional fields such as `ttlMs` are
//! skipped or new optional fields are added, plus the one-byte map-kind codes.
//!
//! Changing anything here changes what existing stores contain: bump the backend's format
//! version instead of silently reinterpreting old bytes.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{MapKind, StoreError};

/// Encodes a stored value.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::Encode {
        what,
        message: e.to_string(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::{LwwRecord, OrMapRecord};
    use crate::store::CounterSnapshot;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn lww_record_encoding_is_pinned() {
        let record = LwwRecord {
            value: Some(json!(7)),
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

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::vec((".*", inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
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
            prop_assert_eq!(decode::<CounterSnapshot>("counter", "c", &bytes).unwrap(), state);
        }
    }
}
