//! [`ClientError`]: every way a client call can fail, each part's own error wrapped so the
//! app can match on the cause.

use crate::protocol::WriteConcern;

use super::backpressure::BackpressureError;
use super::counters::CounterError;
use super::locks::LockError;
use super::maps::MapError;
use super::oplog::OpLogError;
use super::queries::QueryError;
use super::search::SearchError;
use super::topics::TopicError;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The map could not be used (wrong kind, bad name, local store failure).
    #[error(transparent)]
    Map(#[from] MapError),
    /// The local store failed; the write was not recorded.
    #[error("local store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The op log failed; the write was not recorded.
    #[error(transparent)]
    OpLog(#[from] OpLogError),
    /// Too many ops are awaiting the server's ack (strategy `throw`).
    #[error(transparent)]
    Backpressure(#[from] BackpressureError),
    /// A live query could not be registered.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A search failed.
    #[error(transparent)]
    Search(#[from] SearchError),
    /// A topic publish was refused (offline queue full, strategy `reject`).
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A lock could not be taken or released.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A counter could not be opened or changed.
    #[error(transparent)]
    Counter(#[from] CounterError),
    /// A value could not be converted to or from the app's type.
    #[error("value does not match the expected type: {0}")]
    Serde(String),
    /// The server rejected the write for good; an LWW write is withdrawn locally and the map
    /// walked again, so local state returns to the server's.
    #[error("the server rejected op {op_id} ({code:?}): {reason}")]
    Rejected {
        /// The op's id.
        op_id: u64,
        /// The server's code (403 permission, 400 clock drift, ...).
        code: Option<u32>,
        /// The server's reason.
        reason: String,
    },
    /// The write is recorded locally and will still be sent, but the requested level was not
    /// confirmed in time.
    #[error("write {op_id} did not reach {concern:?} in time; it stays queued and will be retried")]
    WriteTimeout {
        /// The op's id.
        op_id: u64,
        /// The level that was asked for.
        concern: WriteConcern,
    },
    /// The first sync with the server did not complete in time.
    #[error("the first sync with the server did not complete within {0:?}")]
    SyncTimeout(std::time::Duration),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The node id is not usable for HLC timestamps.
    #[error("invalid node id: {0}")]
    NodeId(String),
}

impl From<serde_json::Error> for ClientError {
    fn from(e: serde_json::Error) -> Self {
        Self::Serde(e.to_string())
    }
}
