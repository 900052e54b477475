//! Live queries: `QUERY_SUB`, `QUERY_UNSUB`, `QUERY_RESP`, `QUERY_UPDATE`, `QUERY_SYNC_INIT`
//! and the never-served `HYBRID_QUERY_SUBSCRIBE` / `HYBRID_QUERY_UNSUBSCRIBE`
//! (PROTOCOL.md §3.6, §6.5).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{ChangeType, Id, Key, MapName, Name, Text};
use crate::query::{Query, SortSpec};

/// `QUERY_SUB` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuerySub {
    pub payload: QuerySubPayload,
}

/// Payload of `QUERY_SUB`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuerySubPayload {
    #[schemars(with = "Id")]
    pub query_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    pub query: Query,
    /// 2026-08 projection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<Name>>", length(max = 256))]
    pub fields: Option<Vec<String>>,
}

/// A payload holding only a query id (`QUERY_UNSUB`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryIdPayload {
    #[schemars(with = "Id")]
    pub query_id: String,
}

/// `QUERY_UNSUB` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryUnsub {
    pub payload: QueryIdPayload,
}

/// Pagination state reported with a query result (defined with the query engine).
pub use crate::query::CursorStatus;

/// One query result row. For OR maps `value` is the array of live values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryResultRow {
    #[schemars(with = "Key")]
    pub key: String,
    #[serde(default)]
    pub value: Value,
}

/// `QUERY_RESP` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryResp {
    pub payload: QueryRespPayload,
}

/// Payload of `QUERY_RESP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryRespPayload {
    #[schemars(with = "Id")]
    pub query_id: String,
    pub results: Vec<QueryResultRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_status: Option<CursorStatus>,
    /// 2026-08: root of the result set's Merkle tree, for `QUERY_SYNC_INIT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root_hash: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
}

/// The 2026-01 `QUERY_UPDATE.payload.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LegacyQueryChange {
    Update,
    Remove,
}

/// `QUERY_UPDATE` (S→C). Build it with [`QueryUpdate::enter`], [`QueryUpdate::update`] or
/// [`QueryUpdate::leave`], which fill both `type` (2026-01) and `changeType` (2026-08).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryUpdate {
    pub payload: QueryUpdatePayload,
}

/// Payload of `QUERY_UPDATE`. `value` is always sent; `nil` deletes the key in both clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryUpdatePayload {
    #[schemars(with = "Id")]
    pub query_id: String,
    #[schemars(with = "Key")]
    pub key: String,
    #[serde(default)]
    pub value: Value,
    /// Read by the 2026-01 client.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<LegacyQueryChange>,
    /// Read by the 2026-08 client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_type: Option<ChangeType>,
}

impl QueryUpdate {
    fn new(
        query_id: String,
        key: String,
        value: Value,
        legacy: LegacyQueryChange,
        change: ChangeType,
    ) -> Self {
        Self {
            payload: QueryUpdatePayload {
                query_id,
                key,
                value,
                legacy_type: Some(legacy),
                change_type: Some(change),
            },
        }
    }

    /// A key entered the result set.
    pub fn enter(query_id: impl Into<String>, key: impl Into<String>, value: Value) -> Self {
        let (q, k) = (query_id.into(), key.into());
        Self::new(q, k, value, LegacyQueryChange::Update, ChangeType::Enter)
    }

    /// A key in the result set changed.
    pub fn update(query_id: impl Into<String>, key: impl Into<String>, value: Value) -> Self {
        let (q, k) = (query_id.into(), key.into());
        Self::new(q, k, value, LegacyQueryChange::Update, ChangeType::Update)
    }

    /// A key left the result set (`value: nil`).
    pub fn leave(query_id: impl Into<String>, key: impl Into<String>) -> Self {
        let (q, k) = (query_id.into(), key.into());
        Self::new(
            q,
            k,
            Value::Null,
            LegacyQueryChange::Remove,
            ChangeType::Leave,
        )
    }

    /// The change, whichever generation's field was sent (`changeType` wins).
    pub fn change(&self) -> Option<ChangeType> {
        self.payload
            .change_type
            .or(self.payload.legacy_type.map(|legacy| match legacy {
                LegacyQueryChange::Update => ChangeType::Update,
                LegacyQueryChange::Remove => ChangeType::Leave,
            }))
    }
}

/// `QUERY_SYNC_INIT` (C→S, 2026-08): reconnect delta against a known `merkleRootHash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuerySyncInit {
    pub payload: QuerySyncInitPayload,
}

/// Payload of `QUERY_SYNC_INIT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuerySyncInitPayload {
    #[schemars(with = "Id")]
    pub query_id: String,
    pub root_hash: u32,
}

/// `HYBRID_QUERY_SUBSCRIBE` (C→S, 2026-01 client; no server implements it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HybridQuerySubscribe {
    pub payload: HybridQuerySubscribePayload,
}

/// Payload of `HYBRID_QUERY_SUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HybridQuerySubscribePayload {
    #[schemars(with = "Id")]
    pub subscription_id: String,
    #[schemars(with = "MapName")]
    pub map_name: String,
    /// A predicate tree that may contain client-only full-text operators (`match`,
    /// `matchPhrase`, `matchPrefix`) which [`crate::query::PredicateOp`] does not model, so it
    /// is kept as a raw value; the message is only ever answered with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<Value>,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<IndexMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `HYBRID_QUERY_UNSUBSCRIBE` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HybridQueryUnsubscribe {
    pub payload: SubscriptionIdPayload,
}

/// A payload holding only a subscription id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionIdPayload {
    #[schemars(with = "Id")]
    pub subscription_id: String,
}
