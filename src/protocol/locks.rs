//! Distributed locks: `LOCK_REQUEST`, `LOCK_RELEASE`, `LOCK_GRANTED`, `LOCK_RELEASED`
//! (PROTOCOL.md §3.8).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Id, Name};

/// `LOCK_REQUEST` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LockRequest {
    pub payload: LockRequestPayload,
}

/// Payload of `LOCK_REQUEST`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockRequestPayload {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "Name")]
    pub name: String,
    /// Lease in milliseconds; absent or 0 means the server default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// `LOCK_RELEASE` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LockRelease {
    pub payload: LockReleasePayload,
}

/// Payload of `LOCK_RELEASE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockReleasePayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Id>")]
    pub request_id: Option<String>,
    #[schemars(with = "Name")]
    pub name: String,
    pub fencing_token: u64,
}

/// `LOCK_GRANTED` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LockGranted {
    pub payload: LockGrantedPayload,
}

/// Payload of `LOCK_GRANTED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockGrantedPayload {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "Name")]
    pub name: String,
    pub fencing_token: u64,
}

/// `LOCK_RELEASED` (S→C): only ever in reply to `LOCK_RELEASE`, never to `LOCK_REQUEST`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LockReleased {
    pub payload: LockReleasedPayload,
}

/// Payload of `LOCK_RELEASED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockReleasedPayload {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "Name")]
    pub name: String,
    pub success: bool,
}
