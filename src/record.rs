//! The records stored in maps and carried on the wire (PROTOCOL.md §3.2, §4.2, §4.3).
//!
//! Values are user data and therefore `serde_json::Value` (an LWW record's kept as a
//! [`UserValue`], which may still be in its wire encoding); everything around them is typed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hlc::Timestamp;
use crate::user_value::UserValue;

/// A last-writer-wins record. `value: None` is a tombstone and is always written as an
/// explicit `value: null` (the clients treat only `null` as deleted, PROTOCOL.md §1.4).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LwwRecord {
    /// The value, or `None` for a tombstone.
    #[serde(default)]
    pub value: Option<UserValue>,
    /// The HLC timestamp of the write.
    pub timestamp: Timestamp,
    /// Time to live in milliseconds after `timestamp.millis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttl_ms: Option<u64>,
}

/// Field by field, the value last: records that differ mostly differ in their timestamps, and
/// comparing values may mean decoding them.
impl PartialEq for LwwRecord {
    fn eq(&self, other: &Self) -> bool {
        self.timestamp == other.timestamp
            && self.ttl_ms == other.ttl_ms
            && self.value == other.value
    }
}

impl LwwRecord {
    /// True for a deletion marker.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// True when the record has a TTL that ran out strictly before `now_millis`.
    pub fn is_expired(&self, now_millis: u64) -> bool {
        self.ttl_ms
            .is_some_and(|ttl| self.timestamp.millis.saturating_add(ttl) < now_millis)
    }
}

/// One observed-remove record: a value under a unique tag (`millis:counter:nodeId`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrMapRecord {
    /// The value (user data; may itself be `null`).
    #[serde(default)]
    pub value: Value,
    /// The HLC timestamp of the add.
    pub timestamp: Timestamp,
    /// The unique tag of this add, normally `timestamp` in string form.
    pub tag: String,
    /// Time to live in milliseconds after `timestamp.millis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttl_ms: Option<u64>,
}

impl OrMapRecord {
    /// True when the record has a TTL that ran out strictly before `now_millis`.
    pub fn is_expired(&self, now_millis: u64) -> bool {
        self.ttl_ms
            .is_some_and(|ttl| self.timestamp.millis.saturating_add(ttl) < now_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tombstone_serializes_explicit_null_value() {
        let r = LwwRecord {
            value: None,
            timestamp: Timestamp::new(5, 0, "n"),
            ttl_ms: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"value": null, "timestamp": {"millis": 5, "counter": 0, "nodeId": "n"}})
        );
        assert!(r.is_tombstone());
    }

    #[test]
    fn expiry_is_strictly_after_ttl() {
        let r = LwwRecord {
            value: Some(json!(1).into()),
            timestamp: Timestamp::new(100, 0, "n"),
            ttl_ms: Some(10),
        };
        assert!(!r.is_expired(110));
        assert!(r.is_expired(111));
    }
}
