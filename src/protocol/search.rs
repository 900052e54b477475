//! Search: full-text `SEARCH*` (2026-01) and the 2026-08 hybrid, vector and SQL requests the
//! server decodes so it can answer them with a clear error (PROTOCOL.md §3.13).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{Bytes, ChangeType, Id, Key, MAX_LIST_ITEMS, MapName, Name, Text};
use crate::query::PredicateNode;

/// Options of a full-text search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_LIST_ITEMS))]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    /// Per-field score multipliers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boost: Option<IndexMap<String, f64>>,
}

/// `SEARCH` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Search {
    pub payload: SearchPayload,
}

/// Payload of `SEARCH`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchPayload {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Text")]
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<SearchOptions>,
}

/// One full-text hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchHit {
    #[schemars(with = "Key")]
    pub key: String,
    #[serde(default)]
    pub value: Value,
    pub score: f64,
    #[serde(default)]
    pub matched_terms: Vec<String>,
}

/// `SEARCH_RESP` (S→C); also the initial snapshot of a `SEARCH_SUB` (then `requestId` is the
/// subscription id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchResp {
    pub payload: SearchRespPayload,
}

/// Payload of `SEARCH_RESP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchRespPayload {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub results: Vec<SearchHit>,
    pub total_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `SEARCH_SUB` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchSub {
    pub payload: SearchSubPayload,
}

/// Payload of `SEARCH_SUB`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchSubPayload {
    #[schemars(with = "Id")]
    pub subscription_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Text")]
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<SearchOptions>,
}

/// `SEARCH_UPDATE` (S→C). Build it with [`SearchUpdate::new`], which fills both `type`
/// (2026-01) and `changeType` (2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchUpdate {
    pub payload: SearchUpdatePayload,
}

/// Payload of `SEARCH_UPDATE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchUpdatePayload {
    #[schemars(with = "Id")]
    pub subscription_id: String,
    #[schemars(with = "Key")]
    pub key: String,
    #[serde(default)]
    pub value: Value,
    pub score: f64,
    #[serde(default)]
    pub matched_terms: Vec<String>,
    /// Read by the 2026-01 client.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<ChangeType>,
    /// Read by the 2026-08 client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_type: Option<ChangeType>,
}

impl SearchUpdate {
    /// A search delta carrying `change` under both field names.
    pub fn new(subscription_id: impl Into<String>, hit: SearchHit, change: ChangeType) -> Self {
        Self {
            payload: SearchUpdatePayload {
                subscription_id: subscription_id.into(),
                key: hit.key,
                value: hit.value,
                score: hit.score,
                matched_terms: hit.matched_terms,
                legacy_type: Some(change),
                change_type: Some(change),
            },
        }
    }

    /// The change, whichever generation's field was sent (`changeType` wins).
    pub fn change(&self) -> Option<ChangeType> {
        self.payload.change_type.or(self.payload.legacy_type)
    }
}

/// `SEARCH_UNSUB` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchUnsub {
    pub payload: super::query::SubscriptionIdPayload,
}

/// A retrieval method of a hybrid search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SearchMethod {
    Exact,
    FullText,
    Semantic,
}

/// `HYBRID_SEARCH` (C→S, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HybridSearch {
    pub payload: HybridSearchPayload,
}

/// Payload of `HYBRID_SEARCH`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HybridSearchPayload {
    #[schemars(with = "Id")]
    pub request_id: String,
    #[serde(flatten)]
    pub request: HybridSearchRequest,
}

/// The search part shared by `HYBRID_SEARCH` and `HYBRID_SEARCH_SUB`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HybridSearchRequest {
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[schemars(with = "Text")]
    pub query_text: String,
    #[schemars(length(max = 3))]
    pub methods: Vec<SearchMethod>,
    #[schemars(range(max = MAX_LIST_ITEMS))]
    pub k: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_vector: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<PredicateNode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_value: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
}

/// One hybrid-search hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HybridSearchHit {
    #[schemars(with = "Key")]
    pub key: String,
    pub score: f64,
    #[serde(default)]
    pub method_scores: IndexMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// `HYBRID_SEARCH_RESP` (S→C, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HybridSearchResp {
    pub payload: HybridSearchRespPayload,
}

/// Payload of `HYBRID_SEARCH_RESP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HybridSearchRespPayload {
    #[schemars(with = "Id")]
    pub request_id: String,
    pub results: Vec<HybridSearchHit>,
    pub search_time_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
}

/// `HYBRID_SEARCH_SUB` (C→S, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HybridSearchSub {
    pub payload: HybridSearchSubPayload,
}

/// Payload of `HYBRID_SEARCH_SUB`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HybridSearchSubPayload {
    #[schemars(with = "Id")]
    pub subscription_id: String,
    #[serde(flatten)]
    pub request: HybridSearchRequest,
}

/// `HYBRID_SEARCH_UPDATE` (S→C, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HybridSearchUpdate {
    pub payload: HybridSearchUpdatePayload,
}

/// Payload of `HYBRID_SEARCH_UPDATE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HybridSearchUpdatePayload {
    #[schemars(with = "Id")]
    pub subscription_id: String,
    #[schemars(with = "Key")]
    pub key: String,
    pub score: f64,
    #[serde(default)]
    pub method_scores: IndexMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    pub change_type: ChangeType,
}

/// `HYBRID_SEARCH_UNSUB` (C→S, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HybridSearchUnsub {
    pub payload: super::query::SubscriptionIdPayload,
}

/// `VECTOR_SEARCH` (C→S, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VectorSearch {
    pub payload: VectorSearchPayload,
}

/// Payload of `VECTOR_SEARCH`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorSearchPayload {
    #[schemars(with = "Id")]
    pub id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Name>")]
    pub index_name: Option<String>,
    /// Little-endian f32 components.
    pub query_vector: Bytes,
    #[schemars(range(max = MAX_LIST_ITEMS))]
    pub k: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_search: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<VectorSearchOptions>,
}

/// Options of a vector search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorSearchOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_value: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_vectors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<PredicateNode>,
}

/// One vector-search hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VectorSearchHit {
    #[schemars(with = "Key")]
    pub key: String,
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Bytes>,
}

/// `VECTOR_SEARCH_RESP` (S→C, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VectorSearchResp {
    pub payload: VectorSearchRespPayload,
}

/// Payload of `VECTOR_SEARCH_RESP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorSearchRespPayload {
    #[schemars(with = "Id")]
    pub id: String,
    pub results: Vec<VectorSearchHit>,
    pub total_candidates: u64,
    pub search_time_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
}

/// `SQL_QUERY` (C→S, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SqlQuery {
    pub payload: SqlQueryPayload,
}

/// Payload of `SQL_QUERY`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqlQueryPayload {
    #[schemars(with = "Text")]
    pub sql: String,
    #[schemars(with = "Id")]
    pub query_id: String,
}

/// `SQL_QUERY_RESP` (S→C, 2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SqlQueryResp {
    pub payload: SqlQueryRespPayload,
}

/// Payload of `SQL_QUERY_RESP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqlQueryRespPayload {
    #[schemars(with = "Id")]
    pub query_id: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
    /// A symbolic error code such as `FEATURE_DISABLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}
