//! Partition map for cluster-aware clients: `PARTITION_MAP_REQUEST`, `PARTITION_MAP`,
//! `PARTITION_MAP_DELTA` (PROTOCOL.md §3.15).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Name;

/// `PARTITION_MAP_REQUEST` (C→S); the payload may be absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PartitionMapRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PartitionMapRequestPayload>,
}

/// Payload of `PARTITION_MAP_REQUEST`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionMapRequestPayload {
    /// Reply only when the server's version is newer (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// `PARTITION_MAP` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PartitionMapMessage {
    pub payload: PartitionMap,
}

/// Which node owns which partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionMap {
    pub version: u64,
    /// Always 271.
    pub partition_count: u32,
    pub nodes: Vec<NodeInfo>,
    pub partitions: Vec<PartitionInfo>,
    /// Milliseconds since the epoch.
    pub generated_at: u64,
}

/// A cluster member as advertised to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    #[schemars(with = "Name")]
    pub node_id: String,
    pub endpoints: NodeEndpoints,
    pub status: NodeStatus,
}

/// Client-facing endpoints of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeEndpoints {
    pub websocket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// Membership state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    Active,
    Joining,
    Leaving,
    Suspected,
    Failed,
}

/// Owner and backups of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionInfo {
    pub partition_id: u32,
    #[schemars(with = "Name")]
    pub owner_node_id: String,
    pub backup_node_ids: Vec<String>,
}

/// `PARTITION_MAP_DELTA` (S→C): understood by clients, sent by no server so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PartitionMapDelta {
    pub payload: PartitionMapDeltaPayload,
}

/// Payload of `PARTITION_MAP_DELTA`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionMapDeltaPayload {
    pub version: u64,
    pub previous_version: u64,
    pub changes: Vec<PartitionChange>,
    /// Milliseconds since the epoch.
    pub timestamp: u64,
}

/// One ownership change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionChange {
    pub partition_id: u32,
    pub previous_owner: String,
    pub new_owner: String,
    pub reason: PartitionChangeReason,
}

/// Why a partition changed owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PartitionChangeReason {
    Rebalance,
    Failover,
    Join,
    Leave,
}
