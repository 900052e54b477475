//! The wire protocol: every message of PROTOCOL.md §3 as a Rust type, the [`Message`] enum
//! dispatched on `type`, the msgpack/JSON codecs ([`codec`]), the generated JSON Schemas
//! ([`schema`]) and the ingress validator ([`validate`]).
//!
//! Envelope shapes (§1.3) are part of each type: payload-wrapped messages are structs with a
//! `payload` field (some also with a top-level `timestamp`), flat ones carry their fields next
//! to `type`, and `JOURNAL_EVENT` carries an `event`. User data is `serde_json::Value` (an
//! LWW record's value a [`crate::user_value::UserValue`], which may still be encoded);
//! everything else is typed.

pub mod auth;
pub mod cluster;
pub mod codec;
pub mod common;
pub mod counters;
pub mod journal;
pub mod locks;
pub mod misc;
pub mod ops;
pub mod processors;
pub mod pubsub;
pub mod query;
pub mod schema;
pub mod search;
pub mod sync;
pub mod validate;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use auth::*;
pub use cluster::*;
pub use codec::{
    DecodeError, EncodeError, Frame, Limits, decode, decode_batch_data, decode_typed, decode_value,
    decode_with, encode_batch, encode_json, encode_msgpack,
};
pub use common::{Bytes, ChangeType, WriteConcern};
pub use counters::*;
pub use journal::*;
pub use locks::*;
pub use misc::*;
pub use ops::*;
pub use processors::*;
pub use pubsub::*;
pub use query::*;
pub use search::*;
pub use sync::*;
pub use validate::{Violation, validate};

/// Declares [`Message`] and everything that must list every message type exactly once.
macro_rules! messages {
    ($($variant:ident($ty:ty) = $name:literal,)*) => {
        /// Every message of the protocol, tagged by its `type` string (PROTOCOL.md §3.19).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        #[allow(clippy::large_enum_variant)]
        pub enum Message {
            $(
                #[doc = concat!("`", $name, "`")]
                #[serde(rename = $name)]
                $variant($ty),
            )*
        }

        /// Every `type` string, in declaration order.
        pub const MESSAGE_TYPES: &[&str] = &[$($name),*];

        impl Message {
            /// The `type` string of this message.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Message::$variant(_) => $name,)*
                }
            }

            /// Deserializes the message of type `type_name` from `input` (a map that may
            /// still hold its `type` key); `None` when the type is unknown.
            pub(crate) fn from_deserializer_of_type<'de, D: serde::Deserializer<'de>>(
                type_name: &str,
                input: D,
            ) -> Option<Result<Message, D::Error>> {
                match type_name {
                    $($name => Some(<$ty as Deserialize>::deserialize(input).map(Message::$variant)),)*
                    _ => None,
                }
            }

            /// Deserializes the message of type `type_name` from `value` (which may still
            /// contain its `type` key); `None` when the type is unknown.
            pub(crate) fn from_value_of_type(
                type_name: &str,
                value: Value,
            ) -> Option<Result<Message, serde_json::Error>> {
                match type_name {
                    $($name => Some(serde_json::from_value::<$ty>(value).map(Message::$variant)),)*
                    _ => None,
                }
            }
        }

        $(
            impl From<$ty> for Message {
                fn from(message: $ty) -> Self {
                    Message::$variant(message)
                }
            }
        )*

        /// The schema of every message body (without its `type` key), one self-contained
        /// root schema per type.
        pub(crate) fn message_body_schemas(settings: &SchemaSettings) -> Vec<(&'static str, Schema)> {
            vec![$(($name, SchemaGenerator::new(settings.clone()).into_root_schema_for::<$ty>()),)*]
        }
    };
}

messages! {
    AuthRequired(AuthRequired) = "AUTH_REQUIRED",
    Auth(Auth) = "AUTH",
    AuthAck(AuthAck) = "AUTH_ACK",
    AuthFail(AuthFail) = "AUTH_FAIL",
    DeviceHello(DeviceHello) = "DEVICE_HELLO",
    DeviceAck(DeviceAck) = "DEVICE_ACK",
    Ping(Ping) = "PING",
    Pong(Pong) = "PONG",
    Error(ErrorMessage) = "ERROR",
    Batch(Batch) = "BATCH",
    ShutdownPending(ShutdownPending) = "SHUTDOWN_PENDING",
    ClientApplyAck(ClientApplyAck) = "CLIENT_APPLY_ACK",
    GcPrune(GcPrune) = "GC_PRUNE",
    OpBatch(OpBatch) = "OP_BATCH",
    ClientOp(ClientOpMessage) = "CLIENT_OP",
    OpAck(OpAck) = "OP_ACK",
    OpRejected(OpRejected) = "OP_REJECTED",
    ServerEvent(ServerEvent) = "SERVER_EVENT",
    ServerBatchEvent(ServerBatchEvent) = "SERVER_BATCH_EVENT",
    SyncInit(SyncInit) = "SYNC_INIT",
    SyncRespRoot(SyncRespRoot) = "SYNC_RESP_ROOT",
    MerkleReqBucket(MerkleReqBucket) = "MERKLE_REQ_BUCKET",
    SyncRespBuckets(SyncRespBuckets) = "SYNC_RESP_BUCKETS",
    SyncRespLeaf(SyncRespLeaf) = "SYNC_RESP_LEAF",
    SyncResetRequired(SyncResetRequired) = "SYNC_RESET_REQUIRED",
    OrMapSyncInit(OrMapSyncInit) = "ORMAP_SYNC_INIT",
    OrMapSyncRespRoot(OrMapSyncRespRoot) = "ORMAP_SYNC_RESP_ROOT",
    OrMapMerkleReqBucket(OrMapMerkleReqBucket) = "ORMAP_MERKLE_REQ_BUCKET",
    OrMapSyncRespBuckets(OrMapSyncRespBuckets) = "ORMAP_SYNC_RESP_BUCKETS",
    OrMapSyncRespLeaf(OrMapSyncRespLeaf) = "ORMAP_SYNC_RESP_LEAF",
    OrMapDiffRequest(OrMapDiffRequest) = "ORMAP_DIFF_REQUEST",
    OrMapDiffResponse(OrMapDiffResponse) = "ORMAP_DIFF_RESPONSE",
    OrMapPushDiff(OrMapPushDiff) = "ORMAP_PUSH_DIFF",
    QuerySub(QuerySub) = "QUERY_SUB",
    QueryUnsub(QueryUnsub) = "QUERY_UNSUB",
    QueryResp(QueryResp) = "QUERY_RESP",
    QueryUpdate(QueryUpdate) = "QUERY_UPDATE",
    QuerySyncInit(QuerySyncInit) = "QUERY_SYNC_INIT",
    HybridQuerySubscribe(HybridQuerySubscribe) = "HYBRID_QUERY_SUBSCRIBE",
    HybridQueryUnsubscribe(HybridQueryUnsubscribe) = "HYBRID_QUERY_UNSUBSCRIBE",
    TopicSub(TopicSub) = "TOPIC_SUB",
    TopicUnsub(TopicUnsub) = "TOPIC_UNSUB",
    TopicPub(TopicPub) = "TOPIC_PUB",
    TopicMessage(TopicMessage) = "TOPIC_MESSAGE",
    LockRequest(LockRequest) = "LOCK_REQUEST",
    LockRelease(LockRelease) = "LOCK_RELEASE",
    LockGranted(LockGranted) = "LOCK_GRANTED",
    LockReleased(LockReleased) = "LOCK_RELEASED",
    CounterRequest(CounterRequest) = "COUNTER_REQUEST",
    CounterSync(CounterSync) = "COUNTER_SYNC",
    CounterResponse(CounterResponse) = "COUNTER_RESPONSE",
    CounterUpdate(CounterUpdate) = "COUNTER_UPDATE",
    EntryProcess(EntryProcess) = "ENTRY_PROCESS",
    EntryProcessBatch(EntryProcessBatch) = "ENTRY_PROCESS_BATCH",
    EntryProcessResponse(EntryProcessResponse) = "ENTRY_PROCESS_RESPONSE",
    EntryProcessBatchResponse(EntryProcessBatchResponse) = "ENTRY_PROCESS_BATCH_RESPONSE",
    JournalSubscribe(JournalSubscribe) = "JOURNAL_SUBSCRIBE",
    JournalUnsubscribe(JournalUnsubscribe) = "JOURNAL_UNSUBSCRIBE",
    JournalEvent(JournalEvent) = "JOURNAL_EVENT",
    JournalRead(JournalRead) = "JOURNAL_READ",
    JournalReadResponse(JournalReadResponse) = "JOURNAL_READ_RESPONSE",
    RegisterResolver(RegisterResolver) = "REGISTER_RESOLVER",
    RegisterResolverResponse(RegisterResolverResponse) = "REGISTER_RESOLVER_RESPONSE",
    UnregisterResolver(UnregisterResolver) = "UNREGISTER_RESOLVER",
    UnregisterResolverResponse(UnregisterResolverResponse) = "UNREGISTER_RESOLVER_RESPONSE",
    ListResolvers(ListResolvers) = "LIST_RESOLVERS",
    ListResolversResponse(ListResolversResponse) = "LIST_RESOLVERS_RESPONSE",
    MergeRejected(MergeRejected) = "MERGE_REJECTED",
    Search(Search) = "SEARCH",
    SearchResp(SearchResp) = "SEARCH_RESP",
    SearchSub(SearchSub) = "SEARCH_SUB",
    SearchUpdate(SearchUpdate) = "SEARCH_UPDATE",
    SearchUnsub(SearchUnsub) = "SEARCH_UNSUB",
    HybridSearch(HybridSearch) = "HYBRID_SEARCH",
    HybridSearchResp(HybridSearchResp) = "HYBRID_SEARCH_RESP",
    HybridSearchSub(HybridSearchSub) = "HYBRID_SEARCH_SUB",
    HybridSearchUpdate(HybridSearchUpdate) = "HYBRID_SEARCH_UPDATE",
    HybridSearchUnsub(HybridSearchUnsub) = "HYBRID_SEARCH_UNSUB",
    VectorSearch(VectorSearch) = "VECTOR_SEARCH",
    VectorSearchResp(VectorSearchResp) = "VECTOR_SEARCH_RESP",
    SqlQuery(SqlQuery) = "SQL_QUERY",
    SqlQueryResp(SqlQueryResp) = "SQL_QUERY_RESP",
    PartitionMapRequest(PartitionMapRequest) = "PARTITION_MAP_REQUEST",
    PartitionMap(PartitionMapMessage) = "PARTITION_MAP",
    PartitionMapDelta(PartitionMapDelta) = "PARTITION_MAP_DELTA",
}

#[cfg(test)]
mod tests;
