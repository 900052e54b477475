//! Event journal (CDC): `JOURNAL_SUBSCRIBE`, `JOURNAL_UNSUBSCRIBE`, `JOURNAL_EVENT`,
//! `JOURNAL_READ`, `JOURNAL_READ_RESPONSE` (PROTOCOL.md §3.11). All flat except
//! `JOURNAL_EVENT`, which is event-keyed.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{Id, Key, MAX_LIST_ITEMS, MapName, Name, SEQUENCE_PATTERN};
use crate::hlc::Timestamp;

/// Kind of a journal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JournalEventType {
    Put,
    Update,
    Delete,
}

/// `JOURNAL_SUBSCRIBE` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalSubscribe {
    #[schemars(with = "Id")]
    pub request_id: String,
    /// Decimal sequence number to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SEQUENCE_PATTERN))]
    pub from_sequence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<MapName>")]
    pub map_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 3))]
    pub types: Option<Vec<JournalEventType>>,
}

/// `JOURNAL_UNSUBSCRIBE` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalUnsubscribe {
    /// The subscribe `requestId`.
    #[schemars(with = "Id")]
    pub subscription_id: String,
}

// The server stores entries as arrays of these fields in this order
// (`server::journal::encode_entry`), read back by position: reordering them would misread
// stored journals. (A plain comment: a doc comment would go into the JSON Schema.)
/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    /// Decimal sequence number.
    #[schemars(regex(pattern = SEQUENCE_PATTERN))]
    pub sequence: String,
    #[serde(rename = "type")]
    pub event_type: JournalEventType,
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Key")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_value: Option<Value>,
    pub timestamp: Timestamp,
    #[schemars(with = "Name")]
    pub node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<IndexMap<String, Value>>,
}

/// `JOURNAL_EVENT` (S→C, event-keyed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JournalEvent {
    pub event: JournalEntry,
}

/// `JOURNAL_READ` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalRead {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(regex(pattern = SEQUENCE_PATTERN))]
    pub from_sequence: String,
    /// Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_LIST_ITEMS))]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<MapName>")]
    pub map_name: Option<String>,
}

/// `JOURNAL_READ_RESPONSE` (S→C, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalReadResponse {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub events: Vec<JournalEntry>,
    pub has_more: bool,
}
