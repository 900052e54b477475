//! [`ClientEvent`]: what the engine tells the app through `TopGunClient::events()` — every
//! drop, eviction, rejection and connection change, so nothing is lost silently.

use super::backpressure::BackpressureEvent;
use super::connection::state::StateChange;
use super::locks::LockEvent;
use super::maps::MapsEvent;
use super::queries::QueryManagerEvent;
use super::topics::TopicEvent;

/// One thing the app may want to react to.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// The connection state changed.
    Connection(StateChange),
    /// A sync round after (re)authentication finished: local maps now match the server.
    Synced {
        /// Maps synced in this round.
        maps: usize,
    },
    /// No token is available; set one with `set_token` or a provider.
    AuthRequired,
    /// The server refused the token.
    AuthFailed {
        /// The server's reason.
        reason: String,
    },
    /// Reconnecting stopped after the configured number of attempts (state `Error`).
    ReconnectExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// Backpressure on unacknowledged ops.
    Backpressure(BackpressureEvent),
    /// The offline topic queue dropped or flushed messages.
    Topic(TopicEvent),
    /// A held lock was lost, lapsed, or its release was refused.
    Lock(LockEvent),
    /// A map was unloaded from memory (its data stays in the local store).
    Maps(MapsEvent),
    /// A live query was evicted and unsubscribed.
    Query(QueryManagerEvent),
    /// The server rejected a write.
    OpRejected {
        /// The op's id.
        op_id: u64,
        /// The server's code.
        code: Option<u32>,
        /// The server's reason.
        reason: String,
    },
    /// The server sent an `ERROR`.
    ServerError {
        /// Its code.
        code: u32,
        /// Its message.
        message: String,
    },
}
