//! User-code extensions the server decodes but does not execute: entry processors
//! (`ENTRY_PROCESS*`) and conflict resolvers (`*RESOLVER*`, `MERGE_REJECTED`)
//! (PROTOCOL.md §3.10, §3.12). All flat.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{Id, Key, MAX_LIST_ITEMS, MapName, Name, Text};
use crate::hlc::Timestamp;

/// An entry processor: the body of `function(value, key, args)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EntryProcessor {
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    #[schemars(length(min = 1, max = 10000))]
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
}

/// `ENTRY_PROCESS` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryProcess {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Key")]
    pub key: String,
    pub processor: EntryProcessor,
}

/// `ENTRY_PROCESS_BATCH` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryProcessBatch {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Vec<Key>", length(max = MAX_LIST_ITEMS))]
    pub keys: Vec<String>,
    pub processor: EntryProcessor,
}

/// Outcome of an entry processor on one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryProcessOutcome {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
}

/// `ENTRY_PROCESS_RESPONSE` (S→C, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryProcessResponse {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
}

/// `ENTRY_PROCESS_BATCH_RESPONSE` (S→C, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryProcessBatchResponse {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub results: IndexMap<String, EntryProcessOutcome>,
}

/// A conflict resolver definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolverDefinition {
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    #[schemars(length(max = 50000))]
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub key_pattern: Option<String>,
}

/// `REGISTER_RESOLVER` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResolver {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    pub resolver: ResolverDefinition,
}

/// `REGISTER_RESOLVER_RESPONSE` (S→C, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResolverResponse {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
}

/// `UNREGISTER_RESOLVER_RESPONSE` (S→C, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnregisterResolverResponse {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
}

/// `UNREGISTER_RESOLVER` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnregisterResolver {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Name")]
    pub resolver_name: String,
}

/// `LIST_RESOLVERS` (C→S, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResolvers {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<MapName>")]
    pub map_name: Option<String>,
}

/// One registered resolver in `LIST_RESOLVERS_RESPONSE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolverInfo {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Name")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pattern: Option<String>,
    /// 2026-01: the registering connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<String>,
}

/// `LIST_RESOLVERS_RESPONSE` (S→C, flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResolversResponse {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub resolvers: Vec<ResolverInfo>,
}

/// `MERGE_REJECTED` (S→C, flat): a resolver rejected a write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MergeRejected {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Key")]
    pub key: String,
    #[serde(default)]
    pub attempted_value: Value,
    #[schemars(with = "Text")]
    pub reason: String,
    pub timestamp: Timestamp,
}
