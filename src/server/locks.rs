//! Distributed locks on a single node (PROTOCOL.md §3.8): `LOCK_REQUEST`, `LOCK_RELEASE`,
//! `LOCK_GRANTED`, `LOCK_RELEASED`, lease expiry and release on disconnect.
//!
//! Semantics (the 2026-01 server's, minus its defects; TOPGUN-REFERENCE.md §2.8, defect 8):
//! - A free lock is granted at once; a busy one queues the request FIFO and sends **nothing**
//!   until it is granted (a `LOCK_RELEASED` reply to a request is misread as success by the
//!   2026-01 client). A connection waits at most once per lock: asking again while queued
//!   keeps its place and answers the newest request id.
//! - The lease is the requested `ttl` (absent or 0 → 10 s) clamped to [1 s, 5 min]. The holder
//!   asking again extends its lease and gets `LOCK_GRANTED` with the same token.
//! - Release needs the holder's connection and token; a lapsed lease is no longer held.
//! - Fencing tokens strictly increase per lock name for the life of the data: each token is
//!   committed (`Mutation::PutFencingToken`, awaited) before it is granted, and reserved in
//!   memory before the commit, so neither a crash nor a failed commit can reissue one. The
//!   last tokens are loaded from the store lazily, once, at the first use of any lock (so
//!   `Server::new` stays synchronous); a failed load is retried at the next use.
//! - A grant whose commit fails leaves the request at the head of the queue; the expiry scan
//!   (every second) retries it.
//!
//! Operations on one lock name are serialised by that name's async mutex, held across the
//! token commit; different names never wait for each other. Each name keeps a small entry
//! (its last token) for the life of the process, which is what keeps tokens monotonic.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OnceCell};

use crate::clock::SharedClock;
use crate::protocol::{
    LockGranted, LockGrantedPayload, LockReleasePayload, LockReleased, LockReleasedPayload,
    LockRequestPayload, Message,
};
use crate::security::Action;
use crate::store::{Mutation, Store, StoreError, WriteBatch};

use super::Shared;
use super::connections::ConnId;
use super::dispatch::Flow;
use super::session::{Session, send_to};

/// Lease used when a request names none (or 0).
pub const DEFAULT_LEASE_MS: u64 = 10_000;
/// Shortest lease granted.
pub const MIN_LEASE_MS: u64 = 1_000;
/// Longest lease granted.
pub const MAX_LEASE_MS: u64 = 300_000;
/// How often the server looks for lapsed leases.
pub const EXPIRY_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The lease a request gets for its `ttl`.
pub fn lease_ms(requested: Option<u64>) -> u64 {
    match requested {
        None | Some(0) => DEFAULT_LEASE_MS,
        Some(ms) => ms.clamp(MIN_LEASE_MS, MAX_LEASE_MS),
    }
}

/// Why a lock operation could not be served.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The last issued fencing tokens could not be read, so no new one can be issued safely.
    #[error("cannot load the last fencing tokens: {0}")]
    LoadTokens(#[source] StoreError),
}

/// A lock granted to a connection: what `LOCK_GRANTED` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The connection that now holds the lock.
    pub conn: ConnId,
    /// The request being answered.
    pub request_id: String,
    /// The lock name.
    pub name: String,
    /// The holder's fencing token.
    pub fencing_token: u64,
}

/// The outcome of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Whether the caller held the lock with that token (and now no longer does).
    pub released: bool,
    /// The waiter granted the lock in consequence, if any.
    pub granted: Vec<Grant>,
}

#[derive(Debug)]
struct Holder {
    conn: ConnId,
    token: u64,
    expires_at: u64,
}

#[derive(Debug)]
struct Waiter {
    conn: ConnId,
    request_id: String,
    lease_ms: u64,
}

/// One lock name: the last token ever issued for it, its holder and its queue.
#[derive(Debug)]
struct LockState {
    last_token: u64,
    holder: Option<Holder>,
    queue: VecDeque<Waiter>,
}

impl LockState {
    fn new(last_token: u64) -> Self {
        Self {
            last_token,
            holder: None,
            queue: VecDeque::new(),
        }
    }

    /// Frees the lock if its lease has lapsed.
    fn drop_expired(&mut self, now: u64) {
        if self.holder.as_ref().is_some_and(|h| h.expires_at <= now) {
            self.holder = None;
        }
    }

    /// Queues a request, or refreshes the connection's existing place in the queue.
    fn enqueue(&mut self, waiter: Waiter) {
        match self.queue.iter_mut().find(|w| w.conn == waiter.conn) {
            Some(queued) => *queued = waiter,
            None => self.queue.push_back(waiter),
        }
    }

    /// Drops everything `conn` holds or waits for.
    fn forget(&mut self, conn: ConnId) {
        self.queue.retain(|w| w.conn != conn);
        if self.holder.as_ref().is_some_and(|h| h.conn == conn) {
            self.holder = None;
        }
    }
}

type Entry = Arc<AsyncMutex<LockState>>;

/// Every lock of this node.
pub struct LockManager {
    store: Arc<dyn Store>,
    clock: SharedClock,
    /// Tokens read from the store, handed to each name's entry when it is first created.
    persisted: OnceCell<Mutex<BTreeMap<String, u64>>>,
    locks: Mutex<HashMap<String, Entry>>,
    /// The names each connection has touched, so a disconnect visits only those.
    by_conn: Mutex<HashMap<ConnId, HashSet<String>>>,
}

impl LockManager {
    /// A lock manager persisting fencing tokens in `store`, with leases on `clock`.
    pub fn new(store: Arc<dyn Store>, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            persisted: OnceCell::new(),
            locks: Mutex::new(HashMap::new()),
            by_conn: Mutex::new(HashMap::new()),
        }
    }

    /// `conn` asks for `name`: granted now (or its lease extended), or queued silently.
    /// Returns the grants to deliver, which may include one to an earlier waiter.
    pub async fn request(
        &self,
        conn: ConnId,
        request_id: String,
        name: &str,
        ttl: Option<u64>,
    ) -> Result<Vec<Grant>, LockError> {
        let entry = self.entry(name).await?;
        lock_sync(&self.by_conn)
            .entry(conn)
            .or_default()
            .insert(name.to_owned());
        let mut state = entry.lock().await;
        let now = self.clock.now_millis();
        state.drop_expired(now);
        let lease = lease_ms(ttl);
        if let Some(holder) = state.holder.as_mut().filter(|h| h.conn == conn) {
            holder.expires_at = now.saturating_add(lease);
            return Ok(vec![Grant {
                conn,
                request_id,
                name: name.to_owned(),
                fencing_token: holder.token,
            }]);
        }
        state.enqueue(Waiter {
            conn,
            request_id,
            lease_ms: lease,
        });
        Ok(self.promote(name, &mut state).await.into_iter().collect())
    }

    /// `conn` releases `name` with `token`; succeeds only for the current holder's token.
    pub async fn release(&self, conn: ConnId, name: &str, token: u64) -> Release {
        let Some(entry) = self.existing(name) else {
            return Release {
                released: false,
                granted: Vec::new(),
            };
        };
        let mut state = entry.lock().await;
        state.drop_expired(self.clock.now_millis());
        let released = state
            .holder
            .as_ref()
            .is_some_and(|h| h.conn == conn && h.token == token);
        if released {
            state.holder = None;
        }
        let granted = self.promote(name, &mut state).await.into_iter().collect();
        Release { released, granted }
    }

    /// A connection closed: release its locks, drop its queued requests, grant the next.
    pub async fn disconnect(&self, conn: ConnId) -> Vec<Grant> {
        let names = lock_sync(&self.by_conn).remove(&conn).unwrap_or_default();
        let mut grants = Vec::new();
        for name in names {
            let Some(entry) = self.existing(&name) else {
                continue;
            };
            let mut state = entry.lock().await;
            state.forget(conn);
            grants.extend(self.promote(&name, &mut state).await);
        }
        grants
    }

    /// Frees lapsed leases and grants free locks to their next waiter (also retrying grants
    /// whose token commit failed earlier).
    pub async fn expire(&self) -> Vec<Grant> {
        let entries: Vec<(String, Entry)> = lock_sync(&self.locks)
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        let mut grants = Vec::new();
        for (name, entry) in entries {
            let mut state = entry.lock().await;
            state.drop_expired(self.clock.now_millis());
            grants.extend(self.promote(&name, &mut state).await);
        }
        grants
    }

    /// Grants a free lock to the head of its queue once the new token is durable.
    async fn promote(&self, name: &str, state: &mut LockState) -> Option<Grant> {
        if state.holder.is_some() || state.queue.is_empty() {
            return None;
        }
        let token = state.last_token.saturating_add(1);
        // Reserve first: a commit that fails may still have reached the disk.
        state.last_token = token;
        let batch = WriteBatch::from(vec![Mutation::PutFencingToken {
            lock: name.to_owned(),
            token,
        }]);
        if let Err(e) = self.store.commit(batch).await {
            tracing::error!(lock = name, error = %e, "fencing token not durable: grant deferred");
            return None;
        }
        let waiter = state.queue.pop_front()?;
        let expires_at = self.clock.now_millis().saturating_add(waiter.lease_ms);
        state.holder = Some(Holder {
            conn: waiter.conn,
            token,
            expires_at,
        });
        Some(Grant {
            conn: waiter.conn,
            request_id: waiter.request_id,
            name: name.to_owned(),
            fencing_token: token,
        })
    }

    /// The entry of `name`, created (with its persisted last token) on first use.
    async fn entry(&self, name: &str) -> Result<Entry, LockError> {
        if let Some(entry) = self.existing(name) {
            return Ok(entry);
        }
        let persisted = self
            .persisted
            .get_or_try_init(|| async {
                let tokens = self.store.load_fencing_tokens().await?;
                Ok::<_, StoreError>(Mutex::new(tokens))
            })
            .await
            .map_err(LockError::LoadTokens)?;
        let mut locks = lock_sync(&self.locks);
        let entry = locks.entry(name.to_owned()).or_insert_with(|| {
            let last = lock_sync(persisted).remove(name).unwrap_or(0);
            Arc::new(AsyncMutex::new(LockState::new(last)))
        });
        Ok(entry.clone())
    }

    fn existing(&self, name: &str) -> Option<Entry> {
        lock_sync(&self.locks).get(name).cloned()
    }
}

/// Guards are held only for map look-ups, never across an `.await`; a poisoned guard is
/// still consistent because no look-up leaves a half-done change.
fn lock_sync<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `LOCK_REQUEST`: needs `PUT` on the lock name; busy locks get no reply until granted.
pub async fn handle_lock_request(
    shared: &Arc<Shared>,
    session: &Session,
    request: LockRequestPayload,
) -> Flow {
    if !shared
        .permissions
        .check(session.principal(), &request.name, Action::Put)
    {
        session.send_error(
            shared,
            403,
            format!("Access Denied for lock {}", request.name),
        );
        return Flow::Continue;
    }
    match shared
        .locks
        .request(session.id, request.request_id, &request.name, request.ttl)
        .await
    {
        Ok(grants) => deliver(shared, grants),
        Err(e) => {
            tracing::error!(lock = %request.name, error = %e, "lock request not served");
            session.send_error(shared, 503, format!("Lock service unavailable: {e}"));
        }
    }
    Flow::Continue
}

/// `LOCK_RELEASE`: needs `PUT` on the lock name; answers `LOCK_RELEASED {success}` when the
/// client gave a `requestId` (without one nobody could match the reply).
pub async fn handle_lock_release(
    shared: &Arc<Shared>,
    session: &Session,
    release: LockReleasePayload,
) -> Flow {
    if !shared
        .permissions
        .check(session.principal(), &release.name, Action::Put)
    {
        session.send_error(
            shared,
            403,
            format!("Access Denied for lock {}", release.name),
        );
        return Flow::Continue;
    }
    let outcome = shared
        .locks
        .release(session.id, &release.name, release.fencing_token)
        .await;
    if let Some(request_id) = release.request_id {
        let _ = session.send(
            shared,
            LockReleased {
                payload: LockReleasedPayload {
                    request_id,
                    name: release.name,
                    success: outcome.released,
                },
            },
        );
    }
    deliver(shared, outcome.granted);
    Flow::Continue
}

/// Session cleanup hook: the connection `conn` is gone.
pub async fn on_disconnect(shared: &Shared, conn: ConnId) {
    let grants = shared.locks.disconnect(conn).await;
    deliver(shared, grants);
}

/// Starts the per-server task that expires leases every `every`; it ends when the server
/// shuts down or is dropped.
pub fn spawn_expiry(shared: &Arc<Shared>, every: Duration) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(shared);
    let stop = shared.shutdown_signal();
    tokio::spawn(run_expiry(weak, stop, every))
}

async fn run_expiry(
    shared: Weak<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let grants = shared.locks.expire().await;
        deliver(&shared, grants);
    }
}

/// Sends each grant to its connection. A connection that has gone meanwhile is released by
/// its own disconnect cleanup, which waits for this lock's mutex and so runs after the grant.
fn deliver(shared: &Shared, grants: Vec<Grant>) {
    for grant in grants {
        let Some(conn) = shared.connections.get(grant.conn) else {
            continue;
        };
        let message = Message::from(LockGranted {
            payload: LockGrantedPayload {
                request_id: grant.request_id,
                name: grant.name,
                fencing_token: grant.fencing_token,
            },
        });
        if let Err(e) = send_to(shared, &conn, &message) {
            tracing::warn!(conn = grant.conn, error = %e, "LOCK_GRANTED not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::MemoryStore;
    use std::sync::atomic::Ordering;

    const NOW: u64 = 1_790_000_000_000;

    fn manager() -> (LockManager, ManualClock) {
        let clock = ManualClock::new(NOW);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        (LockManager::new(store, Arc::new(clock.clone())), clock)
    }

    fn grant(conn: ConnId, request_id: &str, name: &str, token: u64) -> Grant {
        Grant {
            conn,
            request_id: request_id.to_owned(),
            name: name.to_owned(),
            fencing_token: token,
        }
    }

    async fn ask(m: &LockManager, conn: ConnId, id: &str, ttl: Option<u64>) -> Vec<Grant> {
        m.request(conn, id.to_owned(), "L", ttl).await.unwrap()
    }

    #[test]
    fn lease_defaults_to_ten_seconds_and_is_clamped() {
        assert_eq!(lease_ms(None), 10_000);
        assert_eq!(lease_ms(Some(0)), 10_000);
        assert_eq!(lease_ms(Some(1)), 1_000);
        assert_eq!(lease_ms(Some(999)), 1_000);
        assert_eq!(lease_ms(Some(5_000)), 5_000);
        assert_eq!(lease_ms(Some(300_001)), 300_000);
        assert_eq!(lease_ms(Some(u64::MAX)), 300_000);
    }

    #[tokio::test]
    async fn busy_lock_queues_silently_and_grants_in_fifo_order() {
        let (m, _) = manager();
        assert_eq!(ask(&m, 1, "r1", None).await, [grant(1, "r1", "L", 1)]);
        assert!(ask(&m, 2, "r2", None).await.is_empty());
        assert!(ask(&m, 3, "r3", None).await.is_empty());

        let first = m.release(1, "L", 1).await;
        assert!(first.released);
        assert_eq!(first.granted, [grant(2, "r2", "L", 2)]);
        let second = m.release(2, "L", 2).await;
        assert!(second.released);
        assert_eq!(second.granted, [grant(3, "r3", "L", 3)]);
    }

    #[tokio::test]
    async fn asking_again_while_queued_keeps_the_place_and_answers_the_newest_id() {
        let (m, _) = manager();
        ask(&m, 1, "r1", None).await;
        assert!(ask(&m, 2, "r2", None).await.is_empty());
        assert!(ask(&m, 3, "r3", None).await.is_empty());
        assert!(ask(&m, 2, "r2-retry", None).await.is_empty());
        assert_eq!(
            m.release(1, "L", 1).await.granted,
            [grant(2, "r2-retry", "L", 2)]
        );
    }

    #[tokio::test]
    async fn holder_asking_again_extends_its_lease_with_the_same_token() {
        let (m, clock) = manager();
        ask(&m, 1, "r1", Some(1_000)).await;
        assert!(ask(&m, 2, "r2", None).await.is_empty());
        clock.advance(900);
        assert_eq!(
            ask(&m, 1, "r1b", Some(5_000)).await,
            [grant(1, "r1b", "L", 1)]
        );
        // Past the first lease, inside the extended one: still held.
        clock.advance(4_000);
        assert!(m.expire().await.is_empty());
        clock.advance(1_000);
        assert_eq!(m.expire().await, [grant(2, "r2", "L", 2)]);
    }

    #[tokio::test]
    async fn release_needs_the_holder_and_its_token() {
        let (m, _) = manager();
        ask(&m, 1, "r1", None).await;
        assert!(ask(&m, 2, "r2", None).await.is_empty());
        let wrong_token = m.release(1, "L", 7).await;
        assert!(!wrong_token.released);
        assert!(wrong_token.granted.is_empty());
        let not_holder = m.release(2, "L", 1).await;
        assert!(!not_holder.released);
        assert!(!m.release(1, "unknown", 1).await.released);
        // The holder still holds: its real release succeeds and hands over.
        let real = m.release(1, "L", 1).await;
        assert!(real.released);
        assert_eq!(real.granted, [grant(2, "r2", "L", 2)]);
    }

    #[tokio::test]
    async fn expiry_frees_the_lock_and_grants_the_next_waiter() {
        let (m, clock) = manager();
        ask(&m, 1, "r1", Some(1_000)).await;
        assert!(ask(&m, 2, "r2", Some(2_000)).await.is_empty());
        clock.advance(999);
        assert!(m.expire().await.is_empty());
        clock.advance(1);
        assert_eq!(m.expire().await, [grant(2, "r2", "L", 2)]);
        // The lapsed holder's token no longer releases anything.
        assert!(!m.release(1, "L", 1).await.released);
        clock.advance(2_000);
        assert!(m.expire().await.is_empty());
        assert_eq!(ask(&m, 1, "r1b", None).await, [grant(1, "r1b", "L", 3)]);
    }

    #[tokio::test]
    async fn a_request_for_a_lapsed_lock_is_granted_without_waiting_for_the_scan() {
        let (m, clock) = manager();
        ask(&m, 1, "r1", Some(1_000)).await;
        clock.advance(1_000);
        assert_eq!(ask(&m, 2, "r2", None).await, [grant(2, "r2", "L", 2)]);
    }

    #[tokio::test]
    async fn disconnect_releases_held_locks_and_drops_queued_requests() {
        let (m, _) = manager();
        ask(&m, 1, "r1", None).await;
        m.request(1, "o1".to_owned(), "other", None).await.unwrap();
        assert!(ask(&m, 2, "r2", None).await.is_empty());
        assert!(ask(&m, 3, "r3", None).await.is_empty());
        assert!(m.disconnect(2).await.is_empty());
        let mut grants = m.disconnect(1).await;
        grants.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(grants, [grant(3, "r3", "L", 2)]);
        // "other" is free again: the next asker gets it with a fresh, higher token.
        assert_eq!(
            m.request(4, "o4".to_owned(), "other", None).await.unwrap(),
            [grant(4, "o4", "other", 2)]
        );
    }

    #[tokio::test]
    async fn tokens_keep_increasing_after_the_lock_falls_idle() {
        let (m, _) = manager();
        for token in 1..=3 {
            let id = format!("r{token}");
            assert_eq!(ask(&m, 1, &id, None).await, [grant(1, &id, "L", token)]);
            assert!(m.release(1, "L", token).await.released);
        }
    }

    #[tokio::test]
    async fn tokens_continue_from_the_store_after_a_restart() {
        let clock: SharedClock = Arc::new(ManualClock::new(NOW));
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut seed = WriteBatch::new();
        seed.push(Mutation::PutFencingToken {
            lock: "seeded".to_owned(),
            token: 41,
        });
        store.commit(seed).await.unwrap();

        let before = LockManager::new(store.clone(), clock.clone());
        assert_eq!(
            before.request(1, "a".into(), "L", None).await.unwrap(),
            [grant(1, "a", "L", 1)]
        );
        assert_eq!(
            before.request(1, "b".into(), "seeded", None).await.unwrap(),
            [grant(1, "b", "seeded", 42)]
        );

        let after = LockManager::new(store.clone(), clock);
        assert_eq!(
            after.request(7, "c".into(), "L", None).await.unwrap(),
            [grant(7, "c", "L", 2)]
        );
        assert_eq!(
            store.load_fencing_tokens().await.unwrap(),
            BTreeMap::from([("L".to_owned(), 2), ("seeded".to_owned(), 42)])
        );
    }

    #[tokio::test]
    async fn a_failed_token_commit_defers_the_grant_and_never_reuses_the_token() {
        let store = Arc::new(crate::store::faulty::FaultyStore::default());
        let m = LockManager::new(store.clone(), Arc::new(ManualClock::new(NOW)));
        store.failing_commits.store(true, Ordering::SeqCst);
        assert!(ask(&m, 1, "r1", None).await.is_empty());
        assert!(m.expire().await.is_empty());
        store.failing_commits.store(false, Ordering::SeqCst);
        // Tokens 1 and 2 went to failed commits of unknown fate; the retry uses 3.
        assert_eq!(m.expire().await, [grant(1, "r1", "L", 3)]);
        assert_eq!(
            store.load_fencing_tokens().await.unwrap(),
            BTreeMap::from([("L".to_owned(), 3)])
        );
    }

    #[tokio::test]
    async fn the_expiry_task_delivers_lock_granted_to_the_next_waiter() {
        use crate::entropy::SeededEntropy;
        use crate::merkle::Combine;
        use crate::protocol::codec::{Frame, decode};
        use crate::security::Permissions;
        use crate::server::config::Limits;
        use crate::server::connections::{Outbound, outbound_queue};
        use crate::server::{Server, ServerOptions};

        let clock = ManualClock::new(NOW);
        let server = Server::new(
            ServerOptions {
                node_id: "server-test".to_owned(),
                jwt_secret: "unit-test-secret-0123456789abcdef0123".to_owned(),
                permissions: Permissions::development_default(),
                limits: Limits::default(),
                max_connections: 10,
                debug: false,
                default_combine: Combine::Fmix,
                search: Default::default(),
            },
            Arc::new(MemoryStore::new()),
            Arc::new(clock.clone()),
            Arc::new(SeededEntropy::new(1)),
        )
        .unwrap();
        let shared = server.shared().clone();
        let (holder, _holder_rx) = outbound_queue(1, 8);
        let (waiter, mut waiter_rx) = outbound_queue(2, 8);
        shared.connections.admit(holder);
        shared.connections.admit(waiter);
        shared
            .locks
            .request(1, "r1".into(), "L", Some(1_000))
            .await
            .unwrap();
        assert!(
            shared
                .locks
                .request(2, "r2".into(), "L", None)
                .await
                .unwrap()
                .is_empty()
        );

        let task = spawn_expiry(&shared, Duration::from_millis(10));
        clock.advance(1_000);
        let frame = tokio::time::timeout(Duration::from_secs(5), waiter_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let Outbound::Binary(bytes) = frame else {
            panic!("expected a binary frame, got {frame:?}")
        };
        let Message::LockGranted(granted) = decode(Frame::Binary(&bytes)).unwrap() else {
            panic!("expected LOCK_GRANTED")
        };
        assert_eq!(granted.payload.request_id, "r2");
        assert_eq!(granted.payload.name, "L");
        assert_eq!(granted.payload.fencing_token, 2);

        server.shutdown(Duration::from_millis(10)).await;
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
