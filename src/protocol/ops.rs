//! Writes and their acknowledgements and fan-out: `OP_BATCH`, `CLIENT_OP`, `OP_ACK`,
//! `OP_REJECTED`, `SERVER_EVENT`, `SERVER_BATCH_EVENT` (PROTOCOL.md §3.2, §3.3).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use super::common::{Id, Key, MAX_BATCH_OPS, MAX_LIST_ITEMS, MapName, Tag, Text, WriteConcern};
use crate::hlc::Timestamp;
use crate::record::{LwwRecord, OrMapRecord};

/// The kind of a client op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OpType {
    Put,
    Remove,
    OrAdd,
    OrRemove,
}

/// One write (element of `OP_BATCH.payload.ops`, and `CLIENT_OP.payload`).
///
/// `record: null`, `orRecord: null`, `orTag: null` and their absence (or ext-0) all decode to
/// `None`. The 2026-01 client's extra `timestamp` and `synced` fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientOp {
    /// Client op-log id: a decimal string (see [`ClientOp::numeric_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Id>")]
    pub id: Option<String>,
    #[schemars(with = "MapName")]
    pub map_name: String,
    // Held inline when up to 23 bytes, as most keys are: no allocation per op.
    #[schemars(with = "Key")]
    pub key: SmolStr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_type: Option<OpType>,
    /// For `PUT` (value) and `REMOVE` (tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<LwwRecord>,
    /// For `OR_ADD`.
    // Boxed: an OR record is larger than the rest of the op, which is moved several times
    // between decoding and merging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_record: Option<Box<OrMapRecord>>,
    /// For `OR_REMOVE`: the removed tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Tag>")]
    pub or_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_concern: Option<WriteConcern>,
    /// Per-op ack timeout in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// Why an op id is not a decimal integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpIdError {
    #[error("op has no id")]
    Missing,
    #[error("op id {0:?} is not a decimal integer")]
    NotNumeric(String),
}

/// Parses a decimal op id (ids must be compared as numbers, never as strings).
pub fn parse_op_id(id: &str) -> Result<u64, OpIdError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OpIdError::NotNumeric(id.to_owned()));
    }
    id.parse().map_err(|_| OpIdError::NotNumeric(id.to_owned()))
}

impl ClientOp {
    /// The op id as a number.
    pub fn numeric_id(&self) -> Result<u64, OpIdError> {
        parse_op_id(self.id.as_deref().ok_or(OpIdError::Missing)?)
    }

    /// True for `OR_ADD` / `OR_REMOVE`; everything else is an LWW op (PROTOCOL.md §3.2).
    pub fn is_or_op(&self) -> bool {
        matches!(self.op_type, Some(OpType::OrAdd | OpType::OrRemove))
    }
}

/// `OP_BATCH` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpBatch {
    pub payload: OpBatchPayload,
}

/// Payload of `OP_BATCH`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpBatchPayload {
    #[schemars(length(max = MAX_BATCH_OPS))]
    pub ops: Vec<ClientOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_concern: Option<WriteConcern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `CLIENT_OP` (C→S): a single op (never sent by the TS clients over WebSocket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientOpMessage {
    pub payload: ClientOp,
}

/// `OP_ACK` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpAck {
    pub payload: OpAckPayload,
}

/// Payload of `OP_ACK`: every op with id ≤ `lastId` counts as synced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpAckPayload {
    #[schemars(with = "Id")]
    pub last_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_level: Option<WriteConcern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_BATCH_OPS))]
    pub results: Option<Vec<OpResult>>,
}

/// Outcome of one tracked op in `OP_ACK.payload.results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpResult {
    #[schemars(with = "Id")]
    pub op_id: String,
    pub success: bool,
    pub achieved_level: WriteConcern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
}

/// `OP_REJECTED` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpRejected {
    pub payload: OpRejectedPayload,
}

/// Payload of `OP_REJECTED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpRejectedPayload {
    #[schemars(with = "Id")]
    pub op_id: String,
    #[schemars(with = "Text")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
}

/// `eventType` of a live change event: 2026-08 names plus the 2026-01 `UPDATED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Put,
    Remove,
    OrAdd,
    OrRemove,
    /// 2026-01: any LWW change, the tombstone travelling in `record`.
    Updated,
}

/// One change to a map, as fanned out to query subscribers.
///
/// LWW deletions must carry the tombstone `record` (`value: nil`): both clients apply only
/// `record`, never `eventType`, to LWW maps (PROTOCOL.md §6.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerEventPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Key")]
    pub key: String,
    pub event_type: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<LwwRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_record: Option<OrMapRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Tag>")]
    pub or_tag: Option<String>,
    /// 2026-08 tombstone epoch (read by the 2026-08 client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// `SERVER_EVENT` (S→C), optionally with a top-level HLC `timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerEvent {
    pub payload: ServerEventPayload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// `SERVER_BATCH_EVENT` (S→C), optionally with a top-level HLC `timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerBatchEvent {
    pub payload: ServerBatchEventPayload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// Payload of `SERVER_BATCH_EVENT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerBatchEventPayload {
    #[schemars(length(max = MAX_LIST_ITEMS))]
    pub events: Vec<ServerEventPayload>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_parse_numerically_across_digit_boundaries() {
        assert_eq!(parse_op_id("9"), Ok(9));
        assert_eq!(parse_op_id("10"), Ok(10));
        assert!(parse_op_id("99").unwrap() < parse_op_id("100").unwrap());
        assert_eq!(
            parse_op_id("unknown"),
            Err(OpIdError::NotNumeric("unknown".into()))
        );
        assert!(parse_op_id("").is_err());
        assert!(parse_op_id("-1").is_err());
        assert!(parse_op_id("+1").is_err());
    }
}
