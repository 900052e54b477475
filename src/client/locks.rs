//! The client's distributed locks (PROTOCOL.md §3.8): `LOCK_REQUEST` / `LOCK_GRANTED`,
//! `LOCK_RELEASE` / `LOCK_RELEASED`, lock-related `ERROR`s, response timeouts and what happens
//! to held locks when the connection drops. Sans-I/O: the engine sends what this returns.
//!
//! Unlike both TS clients (TOPGUN-REFERENCE.md defects 7, 8):
//! - a grant exposes its **fencing token**; the manager also flags a server whose tokens for a
//!   name go backwards ([`LockEvent::TokenRegressed`]), which is what a server that restarts
//!   tokens at 1 does;
//! - only `LOCK_GRANTED` grants: a `LOCK_RELEASED {success:false}` in answer to a request (how
//!   a non-queueing server reports contention) fails the request with
//!   [`LockError::HeldElsewhere`].
//!
//! Safety scope: a lock is a lease held by this connection. The server releases every lock
//! of a closed connection, so on disconnect held grants are reported [`LockEvent::Lost`]; the
//! client's own expiry reckoning ([`LockGrant::expires_at_ms`]) starts when the grant is
//! received, i.e. slightly after the server's, so it is a notification, not a guarantee. The
//! fencing token is the guarantee: resources must reject writes carrying an older token.
//!
//! One connection can wait for a lock name only once (the server keeps one queue place per
//! connection and answers only the newest request), so a second request for a name this
//! client already holds or waits for is refused ([`LockError::AlreadyRequested`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;

use lru::LruCache;
use tokio::sync::oneshot;

use crate::protocol::{
    ErrorPayload, LockGrantedPayload, LockRelease, LockReleasePayload, LockReleasedPayload,
    LockRequest, LockRequestPayload, Message,
};
use crate::server::locks::lease_ms;

/// Most locks one client tracks at once (pending, held and being released together).
pub const MAX_LOCKS: usize = 1_024;
/// Shortest time to wait for an answer to a request; longer leases wait `ttl` longer.
pub const MIN_RESPONSE_TIMEOUT_MS: u64 = 5_000;
/// How long a release waits for its `LOCK_RELEASED`.
pub const RELEASE_TIMEOUT_MS: u64 = 5_000;
/// Longest lock name the server accepts, in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// A lock this client holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGrant {
    /// The lock name.
    pub name: String,
    /// Strictly increasing per name on a correct server; pass it to the guarded resource.
    pub fencing_token: u64,
    /// The request that was granted.
    pub request_id: String,
    /// When the lease lapses by the client's reckoning (grant received + lease).
    pub expires_at_ms: u64,
}

/// What a lock guard sends back to the engine to release its lock (or cancel its request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseCommand {
    /// The lock name.
    pub name: String,
    /// The token of the grant being released.
    pub fencing_token: u64,
    /// The request that was granted (or is still pending).
    pub request_id: String,
}

impl From<&LockGrant> for ReleaseCommand {
    fn from(grant: &LockGrant) -> Self {
        Self {
            name: grant.name.clone(),
            fencing_token: grant.fencing_token,
            request_id: grant.request_id.clone(),
        }
    }
}

/// Why a lock was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Locks live on the server; there is nothing to take offline.
    #[error("offline: a lock can only be taken from the server")]
    Offline,
    /// The server did not answer within the response timeout.
    #[error("the server did not answer the lock request in time")]
    Timeout,
    /// The server refused the request with an `ERROR`.
    #[error("lock request denied ({code}): {reason}")]
    Denied {
        /// The `ERROR` code (403 access denied, 503 lock service unavailable).
        code: u32,
        /// The server's message.
        reason: String,
    },
    /// The server answered `LOCK_RELEASED {success:false}`: it does not queue, and the lock
    /// is held by someone else.
    #[error("lock {name:?} is held by another client")]
    HeldElsewhere {
        /// The lock name.
        name: String,
    },
    /// The connection closed before the lock was granted.
    #[error("disconnected before the lock was granted")]
    Disconnected,
    /// The request was released (cancelled) before it was granted.
    #[error("the lock request was released before it was granted")]
    Released,
    /// This client already holds or waits for the lock.
    #[error("this client already holds or waits for lock {name:?}")]
    AlreadyRequested {
        /// The lock name.
        name: String,
    },
    /// The name would fail the server's schema (1–256 characters, no control characters).
    #[error("invalid lock name {name:?}: 1 to 256 characters without control characters")]
    InvalidName {
        /// The refused name.
        name: String,
    },
    /// Too many locks are pending, held or being released.
    #[error("too many locks in use: at most {limit}")]
    TooManyLocks {
        /// [`MAX_LOCKS`].
        limit: usize,
    },
}

/// Something that happened to a lock outside a request's own answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEvent {
    /// The connection closed while the lock was held; the server releases a closed
    /// connection's locks, so another client may hold it now.
    Lost {
        /// The grant that is gone.
        grant: LockGrant,
    },
    /// The lease lapsed (by the client's reckoning) without a release.
    Expired {
        /// The grant that lapsed.
        grant: LockGrant,
    },
    /// The server refused a release: the lease had already lapsed there.
    ReleaseRejected {
        /// The lock name.
        name: String,
        /// The token that was no longer current.
        fencing_token: u64,
    },
    /// A grant's token is not greater than one this client saw earlier for the same name:
    /// the server does not keep tokens monotonic, so fencing gives no protection.
    TokenRegressed {
        /// The lock name.
        name: String,
        /// The highest token seen before.
        previous: u64,
        /// The token just granted.
        current: u64,
    },
}

/// What handling a server message produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LockOutput {
    /// Messages to send (releases of grants nobody waits for any more).
    pub send: Vec<Message>,
    /// Events to surface to the application.
    pub events: Vec<LockEvent>,
}

type GrantSender = oneshot::Sender<Result<LockGrant, LockError>>;
/// What [`LockManager::request`] hands back: the grant, or why there is none.
pub type GrantReceiver = oneshot::Receiver<Result<LockGrant, LockError>>;

#[derive(Debug)]
struct Pending {
    request_id: String,
    ttl_ms: u64,
    deadline_ms: u64,
    reply: GrantSender,
}

#[derive(Debug)]
struct Releasing {
    name: String,
    fencing_token: u64,
    deadline_ms: u64,
}

/// Every lock this client is asking for, holds, or is releasing.
#[derive(Debug)]
pub struct LockManager {
    next_request: u64,
    /// By lock name: at most one request per name is in flight.
    pending: HashMap<String, Pending>,
    /// By lock name.
    held: HashMap<String, LockGrant>,
    /// By the `requestId` the release was sent with.
    releasing: HashMap<String, Releasing>,
    /// The highest token seen per name, to detect a server whose tokens go backwards.
    last_tokens: LruCache<String, u64>,
}

impl Default for LockManager {
    fn default() -> Self {
        Self::new()
    }
}

impl LockManager {
    /// A manager with nothing pending or held.
    pub fn new() -> Self {
        Self {
            next_request: 0,
            pending: HashMap::new(),
            held: HashMap::new(),
            releasing: HashMap::new(),
            last_tokens: LruCache::new(NonZeroUsize::MIN.saturating_add(MAX_LOCKS - 1)),
        }
    }

    /// Asks for `name` with a lease of `ttl_ms` (0 = the server default). Returns the
    /// `LOCK_REQUEST` to send and a receiver for the grant, which fails with
    /// [`LockError::Timeout`] if no answer comes within max(ttl + 5 s, 5 s).
    pub fn request(
        &mut self,
        name: &str,
        ttl_ms: u64,
        online: bool,
        now_ms: u64,
    ) -> Result<(Message, GrantReceiver), LockError> {
        if !online {
            return Err(LockError::Offline);
        }
        if !valid_name(name) {
            return Err(LockError::InvalidName {
                name: name.to_owned(),
            });
        }
        if self.pending.contains_key(name) || self.held.contains_key(name) {
            return Err(LockError::AlreadyRequested {
                name: name.to_owned(),
            });
        }
        if self.len() >= MAX_LOCKS {
            return Err(LockError::TooManyLocks { limit: MAX_LOCKS });
        }
        self.next_request += 1;
        let request_id = format!("lock-{}", self.next_request);
        let (reply, receiver) = oneshot::channel();
        let timeout = ttl_ms
            .saturating_add(MIN_RESPONSE_TIMEOUT_MS)
            .max(MIN_RESPONSE_TIMEOUT_MS);
        self.pending.insert(
            name.to_owned(),
            Pending {
                request_id: request_id.clone(),
                ttl_ms,
                deadline_ms: now_ms.saturating_add(timeout),
                reply,
            },
        );
        let message = LockRequest {
            payload: LockRequestPayload {
                request_id,
                name: name.to_owned(),
                ttl: (ttl_ms > 0).then_some(ttl_ms),
            },
        };
        Ok((message.into(), receiver))
    }

    /// Releases a held lock (`LOCK_RELEASE` with its fencing token, to send), or cancels a
    /// request still pending (its receiver gets [`LockError::Released`]; a grant arriving
    /// later is released at once). `None` when there is nothing to send: the lock is not
    /// held any more (lost, expired or already released).
    pub fn release(&mut self, command: impl Into<ReleaseCommand>, now_ms: u64) -> Option<Message> {
        let command = command.into();
        if self
            .held
            .get(&command.name)
            .is_some_and(|g| g.fencing_token == command.fencing_token)
        {
            let grant = self.held.remove(&command.name)?;
            self.releasing.insert(
                grant.request_id.clone(),
                Releasing {
                    name: grant.name.clone(),
                    fencing_token: grant.fencing_token,
                    deadline_ms: now_ms.saturating_add(RELEASE_TIMEOUT_MS),
                },
            );
            return Some(release_message(
                Some(grant.request_id),
                grant.name,
                grant.fencing_token,
            ));
        }
        if self
            .pending
            .get(&command.name)
            .is_some_and(|p| p.request_id == command.request_id)
            && let Some(pending) = self.pending.remove(&command.name)
        {
            let _ = pending.reply.send(Err(LockError::Released));
        }
        None
    }

    /// Handles `LOCK_GRANTED`, `LOCK_RELEASED` and lock-related `ERROR`s; `None` when the
    /// message is none of these, so the engine routes it elsewhere.
    pub fn on_message(&mut self, message: &Message, now_ms: u64) -> Option<LockOutput> {
        match message {
            Message::LockGranted(granted) => Some(self.on_granted(&granted.payload, now_ms)),
            Message::LockReleased(released) => Some(self.on_released(&released.payload)),
            Message::Error(error) => self.on_error(&error.payload),
            _ => None,
        }
    }

    /// The connection closed: pending requests fail with [`LockError::Disconnected`] and
    /// every held lock is reported [`LockEvent::Lost`], because the server releases a closed
    /// connection's locks (and queued requests) at once.
    pub fn disconnected(&mut self) -> Vec<LockEvent> {
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(LockError::Disconnected));
        }
        self.releasing.clear();
        let mut lost: Vec<LockEvent> = self
            .held
            .drain()
            .map(|(_, grant)| LockEvent::Lost { grant })
            .collect();
        lost.sort_by(|a, b| event_name(a).cmp(event_name(b)));
        lost
    }

    /// Fails requests unanswered past their deadline ([`LockError::Timeout`]), drops
    /// requests whose receiver is gone, forgets releases nobody confirmed, and reports
    /// leases that lapsed ([`LockEvent::Expired`]).
    pub fn expire(&mut self, now_ms: u64) -> Vec<LockEvent> {
        let overdue: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms || p.reply.is_closed())
            .map(|(name, _)| name.clone())
            .collect();
        for name in overdue {
            if let Some(pending) = self.pending.remove(&name) {
                let _ = pending.reply.send(Err(LockError::Timeout));
            }
        }
        self.releasing.retain(|_, r| r.deadline_ms > now_ms);
        let lapsed: Vec<String> = self
            .held
            .iter()
            .filter(|(_, g)| g.expires_at_ms <= now_ms)
            .map(|(name, _)| name.clone())
            .collect();
        let mut events: Vec<LockEvent> = lapsed
            .into_iter()
            .filter_map(|name| self.held.remove(&name))
            .map(|grant| LockEvent::Expired { grant })
            .collect();
        events.sort_by(|a, b| event_name(a).cmp(event_name(b)));
        events
    }

    /// Whether this client holds `name` with `fencing_token`.
    pub fn is_held(&self, name: &str, fencing_token: u64) -> bool {
        self.held
            .get(name)
            .is_some_and(|g| g.fencing_token == fencing_token)
    }

    /// Locks pending, held or being released.
    pub fn len(&self) -> usize {
        self.pending.len() + self.held.len() + self.releasing.len()
    }

    /// Whether nothing is pending, held or being released.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn on_granted(&mut self, granted: &LockGrantedPayload, now_ms: u64) -> LockOutput {
        let mut out = LockOutput::default();
        let answers_pending = self
            .pending
            .get(&granted.name)
            .is_some_and(|p| p.request_id == granted.request_id);
        let pending = if answers_pending {
            self.pending.remove(&granted.name)
        } else {
            None
        };
        let Some(pending) = pending else {
            // The server answers only our newest request per name, so a grant for a name we
            // still track is superseded by the answer to come (or a duplicate); a grant for
            // a name we do not track (its request timed out or was cancelled) would block
            // everybody else until its lease lapsed.
            if !self.pending.contains_key(&granted.name) && !self.held.contains_key(&granted.name) {
                out.send.push(release_message(
                    None,
                    granted.name.clone(),
                    granted.fencing_token,
                ));
            }
            return out;
        };
        out.events
            .extend(self.note_token(&granted.name, granted.fencing_token));
        let grant = LockGrant {
            name: granted.name.clone(),
            fencing_token: granted.fencing_token,
            request_id: granted.request_id.clone(),
            expires_at_ms: now_ms.saturating_add(lease_ms(Some(pending.ttl_ms))),
        };
        match pending.reply.send(Ok(grant.clone())) {
            Ok(()) => {
                self.held.insert(grant.name.clone(), grant);
            }
            // Nobody waits for the grant any more: hand the lock straight back.
            Err(_) => out
                .send
                .push(release_message(None, grant.name, grant.fencing_token)),
        }
        out
    }

    fn on_released(&mut self, released: &LockReleasedPayload) -> LockOutput {
        let mut out = LockOutput::default();
        if let Some(releasing) = self.releasing.remove(&released.request_id) {
            if !released.success {
                out.events.push(LockEvent::ReleaseRejected {
                    name: releasing.name,
                    fencing_token: releasing.fencing_token,
                });
            }
            return out;
        }
        let refuses_pending = self
            .pending
            .get(&released.name)
            .is_some_and(|p| p.request_id == released.request_id);
        if refuses_pending && let Some(pending) = self.pending.remove(&released.name) {
            let _ = pending.reply.send(Err(LockError::HeldElsewhere {
                name: released.name.clone(),
            }));
        }
        out
    }

    /// `ERROR`s carry no request id: a 403 names the lock, a lock-service 503 concerns
    /// every pending request.
    fn on_error(&mut self, error: &ErrorPayload) -> Option<LockOutput> {
        let names: Vec<String> = match error.code {
            403 => {
                let name = denied_lock_name(&error.message)?;
                self.pending
                    .contains_key(name)
                    .then(|| vec![name.to_owned()])?
            }
            503 if error.message.to_ascii_lowercase().contains("lock") => {
                self.pending.keys().cloned().collect()
            }
            _ => return None,
        };
        if names.is_empty() {
            return None;
        }
        for name in names {
            if let Some(pending) = self.pending.remove(&name) {
                let _ = pending.reply.send(Err(LockError::Denied {
                    code: error.code,
                    reason: error.message.clone(),
                }));
            }
        }
        Some(LockOutput::default())
    }

    fn note_token(&mut self, name: &str, token: u64) -> Option<LockEvent> {
        let previous = self.last_tokens.get(name).copied();
        self.last_tokens
            .put(name.to_owned(), previous.map_or(token, |p| p.max(token)));
        let previous = previous.filter(|&p| token <= p)?;
        tracing::warn!(
            lock = name,
            previous,
            current = token,
            "fencing token went backwards"
        );
        Some(LockEvent::TokenRegressed {
            name: name.to_owned(),
            previous,
            current: token,
        })
    }
}

/// The lock name of an "Access Denied for lock <name>" error.
fn denied_lock_name(message: &str) -> Option<&str> {
    const PREFIX: &str = "access denied for lock ";
    let head = message.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    message.get(PREFIX.len()..)
}

fn valid_name(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&chars) && !name.chars().any(char::is_control)
}

fn release_message(request_id: Option<String>, name: String, fencing_token: u64) -> Message {
    LockRelease {
        payload: LockReleasePayload {
            request_id,
            name,
            fencing_token,
        },
    }
    .into()
}

fn event_name(event: &LockEvent) -> &str {
    match event {
        LockEvent::Lost { grant } | LockEvent::Expired { grant } => &grant.name,
        LockEvent::ReleaseRejected { name, .. } | LockEvent::TokenRegressed { name, .. } => name,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::json;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;
    use crate::clock::ManualClock;
    use crate::protocol::{ErrorMessage, LockGranted, LockReleased};
    use crate::server::locks::LockManager as ServerLocks;
    use crate::store::{MemoryStore, Store};

    const NOW: u64 = 1_790_000_000_000;

    fn granted(request_id: &str, name: &str, fencing_token: u64) -> Message {
        LockGranted {
            payload: LockGrantedPayload {
                request_id: request_id.into(),
                name: name.into(),
                fencing_token,
            },
        }
        .into()
    }

    fn released(request_id: &str, name: &str, success: bool) -> Message {
        LockReleased {
            payload: LockReleasedPayload {
                request_id: request_id.into(),
                name: name.into(),
                success,
            },
        }
        .into()
    }

    fn request_id(message: &Message) -> String {
        match message {
            Message::LockRequest(r) => r.payload.request_id.clone(),
            other => panic!("not a LOCK_REQUEST: {other:?}"),
        }
    }

    fn release_payload(message: &Message) -> LockReleasePayload {
        match message {
            Message::LockRelease(r) => r.payload.clone(),
            other => panic!("not a LOCK_RELEASE: {other:?}"),
        }
    }

    /// Requests `name` and answers with `token`; returns the grant.
    fn acquire(locks: &mut LockManager, name: &str, ttl: u64, token: u64) -> LockGrant {
        let (req, mut rx) = locks.request(name, ttl, true, NOW).unwrap();
        let out = locks
            .on_message(&granted(&request_id(&req), name, token), NOW)
            .unwrap();
        assert!(out.send.is_empty() && out.events.is_empty());
        rx.try_recv().unwrap().unwrap()
    }

    #[test]
    fn request_is_a_lock_request_on_the_wire() {
        let mut locks = LockManager::new();
        let (req, _rx) = locks.request("jobs", 2_000, true, NOW).unwrap();
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"type": "LOCK_REQUEST", "payload": {"requestId": "lock-1", "name": "jobs", "ttl": 2000}})
        );
        let (req, _rx) = locks.request("other", 0, true, NOW).unwrap();
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"type": "LOCK_REQUEST", "payload": {"requestId": "lock-2", "name": "other"}})
        );
    }

    #[test]
    fn refuses_offline_invalid_names_and_second_requests() {
        let mut locks = LockManager::new();
        assert_eq!(
            locks.request("a", 0, false, NOW).unwrap_err(),
            LockError::Offline
        );
        for bad in ["", "a\nb", &"x".repeat(257)] {
            assert!(matches!(
                locks.request(bad, 0, true, NOW),
                Err(LockError::InvalidName { .. })
            ));
        }
        assert!(locks.request(&"é".repeat(256), 0, true, NOW).is_ok());
        let _pending = locks.request("a", 0, true, NOW).unwrap();
        assert_eq!(
            locks.request("a", 0, true, NOW).unwrap_err(),
            LockError::AlreadyRequested { name: "a".into() }
        );
        assert_eq!(locks.len(), 2);
    }

    #[test]
    fn grant_exposes_token_and_release_sends_it() {
        let mut locks = LockManager::new();
        let grant = acquire(&mut locks, "jobs", 3_000, 7);
        assert_eq!(
            grant,
            LockGrant {
                name: "jobs".into(),
                fencing_token: 7,
                request_id: "lock-1".into(),
                expires_at_ms: NOW + 3_000,
            }
        );
        assert!(locks.is_held("jobs", 7));
        assert!(!locks.is_held("jobs", 6));
        assert_eq!(
            locks.request("jobs", 0, true, NOW).unwrap_err(),
            LockError::AlreadyRequested {
                name: "jobs".into()
            }
        );

        let release = locks.release(&grant, NOW).unwrap();
        assert_eq!(
            release_payload(&release),
            LockReleasePayload {
                request_id: Some("lock-1".into()),
                name: "jobs".into(),
                fencing_token: 7
            }
        );
        assert!(!locks.is_held("jobs", 7));
        assert_eq!(locks.release(&grant, NOW), None, "released only once");
        let out = locks
            .on_message(&released("lock-1", "jobs", true), NOW)
            .unwrap();
        assert!(out.events.is_empty() && out.send.is_empty());
        assert!(locks.is_empty());
    }

    #[test]
    fn lease_follows_the_server_clamp() {
        let mut locks = LockManager::new();
        assert_eq!(acquire(&mut locks, "a", 0, 1).expires_at_ms, NOW + 10_000);
        assert_eq!(acquire(&mut locks, "b", 10, 1).expires_at_ms, NOW + 1_000);
        assert_eq!(
            acquire(&mut locks, "c", 900_000, 1).expires_at_ms,
            NOW + 300_000
        );
    }

    #[test]
    fn lock_released_in_answer_to_a_request_is_not_a_grant() {
        let mut locks = LockManager::new();
        let (req, mut rx) = locks.request("a", 0, true, NOW).unwrap();
        locks
            .on_message(&released(&request_id(&req), "a", false), NOW)
            .unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(LockError::HeldElsewhere { name: "a".into() })
        );
        assert!(locks.is_empty());
    }

    #[test]
    fn unanswered_requests_time_out_and_late_grants_are_handed_back() {
        let mut locks = LockManager::new();
        let (short, mut short_rx) = locks.request("short", 0, true, NOW).unwrap();
        let (_long, mut long_rx) = locks.request("long", 20_000, true, NOW).unwrap();
        assert!(locks.expire(NOW + 4_999).is_empty());
        assert_eq!(short_rx.try_recv(), Err(TryRecvError::Empty));
        locks.expire(NOW + 5_000);
        assert_eq!(short_rx.try_recv().unwrap(), Err(LockError::Timeout));
        locks.expire(NOW + 24_999);
        assert_eq!(long_rx.try_recv(), Err(TryRecvError::Empty));
        locks.expire(NOW + 25_000);
        assert_eq!(long_rx.try_recv().unwrap(), Err(LockError::Timeout));
        assert!(locks.is_empty(), "no leaked entries");

        let out = locks
            .on_message(&granted(&request_id(&short), "short", 4), NOW + 26_000)
            .unwrap();
        assert_eq!(
            release_payload(&out.send[0]),
            LockReleasePayload {
                request_id: None,
                name: "short".into(),
                fencing_token: 4
            }
        );
        assert!(locks.is_empty());
    }

    #[test]
    fn a_grant_nobody_waits_for_is_released_at_once() {
        let mut locks = LockManager::new();
        let (req, rx) = locks.request("a", 0, true, NOW).unwrap();
        drop(rx);
        let out = locks
            .on_message(&granted(&request_id(&req), "a", 2), NOW)
            .unwrap();
        assert_eq!(release_payload(&out.send[0]).fencing_token, 2);
        assert!(locks.is_empty());

        let (_req, rx) = locks.request("b", 0, true, NOW).unwrap();
        drop(rx);
        locks.expire(NOW);
        assert!(locks.is_empty(), "abandoned requests are swept");
    }

    #[test]
    fn releasing_a_pending_request_cancels_it() {
        let mut locks = LockManager::new();
        let (req, mut rx) = locks.request("a", 0, true, NOW).unwrap();
        let command = ReleaseCommand {
            name: "a".into(),
            fencing_token: 0,
            request_id: request_id(&req),
        };
        assert_eq!(locks.release(command, NOW), None);
        assert_eq!(rx.try_recv().unwrap(), Err(LockError::Released));
        let out = locks
            .on_message(&granted(&request_id(&req), "a", 1), NOW)
            .unwrap();
        assert_eq!(release_payload(&out.send[0]).fencing_token, 1);
    }

    #[test]
    fn a_stale_grant_for_a_name_still_requested_is_ignored() {
        let mut locks = LockManager::new();
        let (_req, mut rx) = locks.request("a", 0, true, NOW).unwrap();
        let out = locks.on_message(&granted("lock-99", "a", 1), NOW).unwrap();
        assert!(
            out.send.is_empty(),
            "the answer to the live request will follow"
        );
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn disconnect_fails_pending_and_reports_held_as_lost() {
        let mut locks = LockManager::new();
        let held = acquire(&mut locks, "held", 0, 3);
        let releasing = acquire(&mut locks, "releasing", 0, 5);
        locks.release(&releasing, NOW).unwrap();
        let (_req, mut rx) = locks.request("pending", 0, true, NOW).unwrap();
        assert_eq!(
            locks.disconnected(),
            vec![LockEvent::Lost {
                grant: held.clone()
            }]
        );
        assert_eq!(rx.try_recv().unwrap(), Err(LockError::Disconnected));
        assert!(locks.is_empty());
        assert_eq!(locks.release(&held, NOW), None);
    }

    #[test]
    fn lapsed_leases_are_reported_expired() {
        let mut locks = LockManager::new();
        let grant = acquire(&mut locks, "a", 2_000, 1);
        assert!(locks.expire(NOW + 1_999).is_empty());
        assert_eq!(
            locks.expire(NOW + 2_000),
            vec![LockEvent::Expired {
                grant: grant.clone()
            }]
        );
        assert_eq!(locks.release(&grant, NOW + 2_001), None);
        assert!(locks.is_empty());
    }

    #[test]
    fn rejected_release_is_reported_and_unconfirmed_ones_are_forgotten() {
        let mut locks = LockManager::new();
        let a = acquire(&mut locks, "a", 0, 1);
        let b = acquire(&mut locks, "b", 0, 2);
        locks.release(&a, NOW).unwrap();
        locks.release(&b, NOW).unwrap();
        let out = locks
            .on_message(&released(&a.request_id, "a", false), NOW)
            .unwrap();
        assert_eq!(
            out.events,
            vec![LockEvent::ReleaseRejected {
                name: "a".into(),
                fencing_token: 1
            }]
        );
        assert_eq!(locks.len(), 1);
        locks.expire(NOW + RELEASE_TIMEOUT_MS);
        assert!(locks.is_empty());
    }

    #[test]
    fn errors_fail_the_requests_they_concern() {
        let mut locks = LockManager::new();
        let (_a, mut a_rx) = locks.request("a", 0, true, NOW).unwrap();
        let (_b, mut b_rx) = locks.request("b", 0, true, NOW).unwrap();
        let (_c, mut c_rx) = locks.request("c", 0, true, NOW).unwrap();
        let denied: Message = ErrorMessage::new(403, "Access Denied for lock a").into();
        assert!(locks.on_message(&denied, NOW).is_some());
        assert_eq!(
            a_rx.try_recv().unwrap(),
            Err(LockError::Denied {
                code: 403,
                reason: "Access Denied for lock a".into()
            })
        );
        assert_eq!(b_rx.try_recv(), Err(TryRecvError::Empty));

        let other: Message = ErrorMessage::new(403, "Access Denied for map a").into();
        assert!(locks.on_message(&other, NOW).is_none());
        let unrelated: Message = ErrorMessage::new(503, "Event journal not enabled").into();
        assert!(locks.on_message(&unrelated, NOW).is_none());
        assert!(
            locks
                .on_message(&Message::from(crate::protocol::Pong::new(1)), NOW)
                .is_none()
        );

        let down: Message = ErrorMessage::new(503, "Lock service unavailable: disk on fire").into();
        assert!(locks.on_message(&down, NOW).is_some());
        assert!(matches!(
            b_rx.try_recv().unwrap(),
            Err(LockError::Denied { code: 503, .. })
        ));
        assert!(matches!(
            c_rx.try_recv().unwrap(),
            Err(LockError::Denied { code: 503, .. })
        ));
        assert!(locks.is_empty());
    }

    #[test]
    fn a_token_going_backwards_is_flagged() {
        let mut locks = LockManager::new();
        let first = acquire(&mut locks, "a", 0, 5);
        locks.release(&first, NOW).unwrap();
        let (req, _rx) = locks.request("a", 0, true, NOW).unwrap();
        let out = locks
            .on_message(&granted(&request_id(&req), "a", 1), NOW)
            .unwrap();
        assert_eq!(
            out.events,
            vec![LockEvent::TokenRegressed {
                name: "a".into(),
                previous: 5,
                current: 1
            }]
        );
        assert!(locks.is_held("a", 1), "still granted: the server decides");
    }

    #[test]
    fn tracked_locks_are_bounded() {
        let mut locks = LockManager::new();
        let mut receivers = Vec::new();
        for i in 0..MAX_LOCKS {
            receivers.push(locks.request(&format!("l{i}"), 0, true, NOW).unwrap());
        }
        assert_eq!(
            locks.request("one-more", 0, true, NOW).unwrap_err(),
            LockError::TooManyLocks { limit: MAX_LOCKS }
        );
    }

    /// Two clients against the real server lock manager: the second waits, then gets a
    /// larger token once the first releases.
    #[tokio::test]
    async fn two_clients_through_the_server_get_increasing_tokens() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let server = ServerLocks::new(store, Arc::new(ManualClock::new(NOW)));
        let mut alice = LockManager::new();
        let mut bob = LockManager::new();

        let (a_req, mut a_rx) = alice.request("job", 0, true, NOW).unwrap();
        let grants = server
            .request(1, request_id(&a_req), "job", None)
            .await
            .unwrap();
        assert_eq!(grants.len(), 1);
        alice.on_message(&grant_message(&grants[0]), NOW).unwrap();
        let a_grant = a_rx.try_recv().unwrap().unwrap();

        let (b_req, mut b_rx) = bob.request("job", 0, true, NOW).unwrap();
        let queued = server
            .request(2, request_id(&b_req), "job", None)
            .await
            .unwrap();
        assert!(queued.is_empty(), "busy: the server stays silent");

        let release = release_payload(&alice.release(&a_grant, NOW).unwrap());
        let outcome = server
            .release(1, &release.name, release.fencing_token)
            .await;
        assert!(outcome.released);
        bob.on_message(&grant_message(&outcome.granted[0]), NOW)
            .unwrap();
        let b_grant = b_rx.try_recv().unwrap().unwrap();
        assert!(b_grant.fencing_token > a_grant.fencing_token);
    }

    fn grant_message(grant: &crate::server::locks::Grant) -> Message {
        granted(&grant.request_id, &grant.name, grant.fencing_token)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request(u8, u64),
        Grant(u8, u64),
        Refuse(u8),
        Release(u8),
        Expire(u64),
        Disconnect,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u64..20_000).prop_map(|(n, ttl)| Op::Request(n, ttl)),
            (0u8..4, 1u64..100).prop_map(|(n, t)| Op::Grant(n, t)),
            (0u8..4).prop_map(Op::Refuse),
            (0u8..4).prop_map(Op::Release),
            (0u64..30_000).prop_map(Op::Expire),
            Just(Op::Disconnect),
        ]
    }

    proptest! {
        /// Whatever the server says and whenever time passes, every request is answered at
        /// most once, a grant is delivered only for the request it answers, and after a
        /// disconnect nothing is left behind.
        #[test]
        fn every_request_ends_and_nothing_leaks(ops in prop::collection::vec(op(), 0..60)) {
            let mut locks = LockManager::new();
            let mut now = NOW;
            let mut last_ids: HashMap<u8, String> = HashMap::new();
            let mut receivers: Vec<(String, GrantReceiver)> = Vec::new();
            let mut grants: Vec<LockGrant> = Vec::new();
            for op in ops {
                match op {
                    Op::Request(n, ttl) => {
                        if let Ok((req, rx)) = locks.request(&format!("l{n}"), ttl, true, now) {
                            last_ids.insert(n, request_id(&req));
                            receivers.push((request_id(&req), rx));
                        }
                    }
                    Op::Grant(n, token) => {
                        let id = last_ids.get(&n).cloned().unwrap_or_else(|| "none".into());
                        locks.on_message(&granted(&id, &format!("l{n}"), token), now);
                    }
                    Op::Refuse(n) => {
                        let id = last_ids.get(&n).cloned().unwrap_or_else(|| "none".into());
                        locks.on_message(&released(&id, &format!("l{n}"), false), now);
                    }
                    Op::Release(n) => {
                        if let Some(g) = grants.iter().find(|g| g.name == format!("l{n}")) {
                            locks.release(g, now);
                        }
                    }
                    Op::Expire(dt) => {
                        now += dt;
                        locks.expire(now);
                    }
                    Op::Disconnect => {
                        locks.disconnected();
                    }
                }
                for (id, rx) in &mut receivers {
                    if let Ok(Ok(grant)) = rx.try_recv() {
                        prop_assert_eq!(&grant.request_id, id);
                        grants.push(grant);
                    }
                }
            }
            locks.disconnected();
            prop_assert!(locks.is_empty());
            for (_, mut rx) in receivers {
                prop_assert!(!matches!(rx.try_recv(), Err(TryRecvError::Empty)));
            }
        }
    }
}
