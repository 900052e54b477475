//! Merkle delta sync for LWW maps (`SYNC_INIT`, `SYNC_RESP_*`, `MERKLE_REQ_BUCKET`,
//! `SYNC_RESET_REQUIRED`) and OR maps (`ORMAP_*`) (PROTOCOL.md §3.4, §3.5).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Key, MAX_LIST_ITEMS, MAX_TOMBSTONES, MERKLE_PATH_PATTERN, MapName, Tag, Text};
use crate::hlc::Timestamp;
use crate::record::{LwwRecord, OrMapRecord};

/// Child hashes keyed by the single next hex character of the path.
pub type Buckets = BTreeMap<String, u32>;

/// `SYNC_INIT` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncInit {
    #[schemars(with = "MapName")]
    pub map_name: String,
    /// Milliseconds; 0 on the first sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_timestamp: Option<u64>,
}

/// `SYNC_RESP_ROOT` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncRespRoot {
    pub payload: SyncRespRootPayload,
}

/// Payload of `SYNC_RESP_ROOT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncRespRootPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    pub root_hash: u32,
    pub timestamp: Timestamp,
}

/// A map name plus a Merkle path: the payload of `MERKLE_REQ_BUCKET` and
/// `ORMAP_MERKLE_REQ_BUCKET`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketRequest {
    #[schemars(with = "MapName")]
    pub map_name: String,
    /// Lowercase hex, `""` = root, at most 3 characters.
    #[schemars(regex(pattern = MERKLE_PATH_PATTERN))]
    pub path: String,
}

/// `MERKLE_REQ_BUCKET` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MerkleReqBucket {
    pub payload: BucketRequest,
}

/// Bucket hashes under a path: the payload of `SYNC_RESP_BUCKETS` and
/// `ORMAP_SYNC_RESP_BUCKETS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketsPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(regex(pattern = MERKLE_PATH_PATTERN))]
    pub path: String,
    pub buckets: Buckets,
}

/// `SYNC_RESP_BUCKETS` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncRespBuckets {
    pub payload: BucketsPayload,
}

/// `SYNC_RESP_LEAF` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncRespLeaf {
    pub payload: SyncRespLeafPayload,
}

/// Payload of `SYNC_RESP_LEAF`: every record of the leaf, tombstones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncRespLeafPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(regex(pattern = MERKLE_PATH_PATTERN))]
    pub path: String,
    pub records: Vec<LeafRecord>,
}

/// One key and its record in a leaf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LeafRecord {
    #[schemars(with = "Key")]
    pub key: String,
    pub record: LwwRecord,
}

/// `SYNC_RESET_REQUIRED` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncResetRequired {
    pub payload: SyncResetRequiredPayload,
}

/// Payload of `SYNC_RESET_REQUIRED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncResetRequiredPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    /// 2026-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub reason: Option<String>,
}

/// `ORMAP_SYNC_INIT` (C→S, flat). The client's hashes are informational.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrMapSyncInit {
    #[schemars(with = "MapName")]
    pub map_name: String,
    pub root_hash: u32,
    #[serde(default)]
    pub bucket_hashes: Buckets,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_timestamp: Option<u64>,
    /// 2026-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_epoch: Option<u64>,
}

/// `ORMAP_SYNC_RESP_ROOT` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapSyncRespRoot {
    pub payload: OrMapSyncRespRootPayload,
}

/// Payload of `ORMAP_SYNC_RESP_ROOT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrMapSyncRespRootPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    pub root_hash: u32,
    pub timestamp: Timestamp,
    /// 2026-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covering_epoch: Option<u64>,
    /// 2026-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_resync: Option<bool>,
}

/// `ORMAP_MERKLE_REQ_BUCKET` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapMerkleReqBucket {
    pub payload: BucketRequest,
}

/// `ORMAP_SYNC_RESP_BUCKETS` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapSyncRespBuckets {
    pub payload: BucketsPayload,
}

/// All records and tombstone tags of one OR-map key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapEntry {
    #[schemars(with = "Key")]
    pub key: String,
    #[schemars(length(max = MAX_LIST_ITEMS))]
    pub records: Vec<OrMapRecord>,
    #[serde(default)]
    #[schemars(with = "Vec<Tag>", length(max = MAX_TOMBSTONES))]
    pub tombstones: Vec<String>,
}

/// `ORMAP_SYNC_RESP_LEAF` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapSyncRespLeaf {
    pub payload: OrMapSyncRespLeafPayload,
}

/// Payload of `ORMAP_SYNC_RESP_LEAF`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrMapSyncRespLeafPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(regex(pattern = MERKLE_PATH_PATTERN))]
    pub path: String,
    pub entries: Vec<OrMapEntry>,
    /// 2026-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covering_epoch: Option<u64>,
}

/// `ORMAP_DIFF_REQUEST` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapDiffRequest {
    pub payload: OrMapDiffRequestPayload,
}

/// Payload of `ORMAP_DIFF_REQUEST`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrMapDiffRequestPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Vec<Key>", length(max = MAX_LIST_ITEMS))]
    pub keys: Vec<String>,
}

/// `ORMAP_DIFF_RESPONSE` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapDiffResponse {
    pub payload: OrMapDiffResponsePayload,
}

/// Payload of `ORMAP_DIFF_RESPONSE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrMapDiffResponsePayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    pub entries: Vec<OrMapEntry>,
    /// 2026-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covering_epoch: Option<u64>,
}

/// `ORMAP_PUSH_DIFF` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrMapPushDiff {
    pub payload: OrMapPushDiffPayload,
}

/// Payload of `ORMAP_PUSH_DIFF`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrMapPushDiffPayload {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(length(max = MAX_LIST_ITEMS))]
    pub entries: Vec<OrMapEntry>,
}
