//! The dispatcher: one match from message type to the module that handles it.
//!
//! Only `PING`, `AUTH` and `DEVICE_HELLO` are allowed before authentication; anything else
//! closes the connection with 4001 (PROTOCOL.md §2.4). Messages only a server sends are
//! answered with `ERROR 400`, features not built yet with `ERROR 501` naming the feature —
//! nothing is dropped silently.

use std::sync::Arc;

use crate::protocol::{Message, Pong};

use super::Shared;
use super::auth;
use super::counters;
use super::journal;
use super::locks;
use super::operations;
use super::queries;
use super::search;
use super::session::{CLOSE_UNAUTHORIZED, Session};
use super::sync;
use super::topics;
use super::unsupported;

/// Whether the connection goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Closed,
}

/// Routes one validated message to its handler.
pub async fn dispatch(shared: &Arc<Shared>, session: &mut Session, message: Message) -> Flow {
    match message {
        Message::Ping(_) => {
            session.heartbeat();
            // No `timestamp` echo: a numeric top-level timestamp poisons the 2026-01 client's
            // HLC with NaN (PROTOCOL.md §1.9).
            let _ = session.send(shared, Pong::new(shared.now_millis()));
            Flow::Continue
        }
        Message::Auth(auth_message) => auth::handle_auth(shared, session, auth_message).await,
        Message::DeviceHello(_) if !session.is_authenticated() => {
            // This server always requires a token; the 2026-08 client falls back to waiting
            // for AUTH_REQUIRED, which it already has.
            Flow::Continue
        }
        _ if !session.is_authenticated() => {
            tracing::debug!(conn = session.id, "message before authentication: closing");
            session.close(CLOSE_UNAUTHORIZED, "Auth required").await;
            Flow::Closed
        }
        Message::OpBatch(batch) => {
            operations::handle_op_batch(shared, session, batch.payload).await
        }
        Message::ClientOp(op) => operations::handle_client_op(shared, session, op.payload).await,
        Message::SyncInit(m) => sync::handle_sync_init(shared, session, m).await,
        Message::MerkleReqBucket(m) => {
            sync::handle_bucket_request(shared, session, m.payload).await
        }
        Message::OrMapSyncInit(m) => sync::handle_ormap_sync_init(shared, session, m).await,
        Message::OrMapMerkleReqBucket(m) => {
            sync::handle_ormap_bucket_request(shared, session, m.payload).await
        }
        Message::OrMapDiffRequest(m) => {
            sync::handle_ormap_diff_request(shared, session, m.payload).await
        }
        Message::OrMapPushDiff(m) => sync::handle_ormap_push_diff(shared, session, m.payload).await,
        Message::QuerySub(m) => queries::handle_query_sub(shared, session, m.payload).await,
        Message::QueryUnsub(m) => queries::handle_query_unsub(shared, session, m.payload),
        Message::TopicSub(m) => topics::handle_topic_sub(shared, session, m.payload),
        Message::TopicUnsub(m) => topics::handle_topic_unsub(shared, session, m.payload),
        Message::TopicPub(m) => topics::handle_topic_pub(shared, session, m.payload),
        Message::LockRequest(m) => locks::handle_lock_request(shared, session, m.payload).await,
        Message::LockRelease(m) => locks::handle_lock_release(shared, session, m.payload).await,
        Message::QuerySyncInit(m) => queries::handle_query_sync_init(shared, session, m),
        Message::Search(m) => search::handle_search(shared, session, m.payload).await,
        Message::SearchSub(m) => search::handle_search_sub(shared, session, m.payload).await,
        Message::SearchUnsub(m) => search::handle_search_unsub(shared, session, m.payload),
        Message::CounterRequest(m) => {
            counters::handle_counter_request(shared, session, m.payload).await
        }
        Message::CounterSync(m) => counters::handle_counter_sync(shared, session, m.payload).await,
        Message::JournalSubscribe(m) => journal::handle_journal_subscribe(shared, session, m).await,
        Message::JournalUnsubscribe(m) => journal::handle_journal_unsubscribe(shared, session, m),
        Message::JournalRead(m) => journal::handle_journal_read(shared, session, m).await,
        Message::DeviceHello(_) | Message::ClientApplyAck(_) => Flow::Continue,
        m @ (Message::EntryProcess(_)
        | Message::EntryProcessBatch(_)
        | Message::RegisterResolver(_)
        | Message::UnregisterResolver(_)
        | Message::ListResolvers(_)
        | Message::SqlQuery(_)
        | Message::VectorSearch(_)
        | Message::HybridSearch(_)
        | Message::HybridSearchSub(_)
        | Message::HybridQuerySubscribe(_)
        | Message::PartitionMapRequest(_)) => unsupported::answer(shared, session, m),
        other => answer_unhandled(shared, session, &other),
    }
}

/// Messages this server does not serve (yet) are answered, never dropped.
fn answer_unhandled(shared: &Shared, session: &Session, message: &Message) -> Flow {
    let type_name = message.type_name();
    if is_server_to_client(message) {
        session.send_error(
            shared,
            400,
            format!("{type_name} is a server-to-client message and cannot be sent to the server"),
        );
    } else {
        session.send_error(
            shared,
            501,
            format!("{type_name} is not implemented by this server yet"),
        );
    }
    Flow::Continue
}

fn is_server_to_client(message: &Message) -> bool {
    matches!(
        message,
        Message::AuthRequired(_)
            | Message::AuthAck(_)
            | Message::AuthFail(_)
            | Message::DeviceAck(_)
            | Message::Pong(_)
            | Message::Error(_)
            | Message::Batch(_)
            | Message::ShutdownPending(_)
            | Message::GcPrune(_)
            | Message::OpAck(_)
            | Message::OpRejected(_)
            | Message::ServerEvent(_)
            | Message::ServerBatchEvent(_)
            | Message::SyncRespRoot(_)
            | Message::SyncRespBuckets(_)
            | Message::SyncRespLeaf(_)
            | Message::SyncResetRequired(_)
            | Message::OrMapSyncRespRoot(_)
            | Message::OrMapSyncRespBuckets(_)
            | Message::OrMapSyncRespLeaf(_)
            | Message::OrMapDiffResponse(_)
            | Message::QueryResp(_)
            | Message::QueryUpdate(_)
            | Message::TopicMessage(_)
            | Message::LockGranted(_)
            | Message::LockReleased(_)
            | Message::CounterResponse(_)
            | Message::CounterUpdate(_)
            | Message::EntryProcessResponse(_)
            | Message::EntryProcessBatchResponse(_)
            | Message::JournalEvent(_)
            | Message::JournalReadResponse(_)
            | Message::RegisterResolverResponse(_)
            | Message::UnregisterResolverResponse(_)
            | Message::ListResolversResponse(_)
            | Message::MergeRejected(_)
            | Message::SearchResp(_)
            | Message::SearchUpdate(_)
            | Message::HybridSearchResp(_)
            | Message::HybridSearchUpdate(_)
            | Message::VectorSearchResp(_)
            | Message::SqlQueryResp(_)
            | Message::PartitionMap(_)
            | Message::PartitionMapDelta(_)
    )
}
