//! Connection and control messages: `PING`, `PONG`, `ERROR`, `BATCH`, `SHUTDOWN_PENDING`,
//! `CLIENT_APPLY_ACK`, `GC_PRUNE` (PROTOCOL.md §1.6, §1.8, §1.9, §2.8, §3.1, §3.14).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Bytes, Text};
use crate::hlc::Timestamp;

/// `PING` (C→S, flat): the client's `Date.now()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    pub timestamp: u64,
}

/// `PONG` (S→C, flat).
///
/// A numeric top-level `timestamp` poisons the 2026-01 client's HLC (§1.9), so [`Pong::new`]
/// leaves it out; it is optional only so that PONGs of other servers decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pong {
    pub server_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

impl Pong {
    /// A PONG safe for both client generations: `serverTime` only.
    pub fn new(server_time: u64) -> Self {
        Self {
            server_time,
            timestamp: None,
        }
    }
}

/// `ERROR` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorMessage {
    pub payload: ErrorPayload,
}

/// Payload of `ERROR`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPayload {
    /// HTTP-like status: 400 invalid message, 403 denied, 429 overloaded, 500, 501, 503.
    pub code: u32,
    #[schemars(with = "Text")]
    pub message: String,
    /// Schema violations (for 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<ErrorDetail>>,
}

/// One schema violation reported in `ERROR.payload.details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// JSON pointer into the offending message.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl ErrorMessage {
    /// An error without details.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            payload: ErrorPayload {
                code,
                message: message.into(),
                details: None,
            },
        }
    }
}

/// `BATCH` (S→C, flat): several encoded messages in one frame (§1.6). See
/// [`super::codec::encode_batch`] / [`super::codec::decode_batch_data`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Batch {
    /// Number of inner messages (clients use the count inside `data`).
    pub count: u32,
    /// `u32 LE count`, then per message `u32 LE length` + msgpack bytes.
    pub data: Bytes,
}

/// `SHUTDOWN_PENDING` (S→C, flat, 2026-01): sent before close 1001.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownPending {
    /// Milliseconds until the client should reconnect.
    pub retry_after: u64,
}

/// `CLIENT_APPLY_ACK` (C→S, flat, 2026-08): every tombstone epoch ≤ `cursor` is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientApplyAck {
    pub cursor: u64,
}

/// `GC_PRUNE` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GcPrune {
    pub payload: GcPrunePayload,
}

/// Payload of `GC_PRUNE`: tombstones older than `olderThan` may be dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcPrunePayload {
    pub older_than: Timestamp,
}
