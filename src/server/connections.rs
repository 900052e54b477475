//! The connection registry: who is connected, how to reach them, and who goes first when
//! the server is full (requirement REF-13).
//!
//! Each connection owns an outbound queue drained by its writer task, bounded in frames and in
//! bytes (a peer that stops reading pins at most the byte bound). The registry is
//! an LRU over connection activity: admitting a connection past `max_connections` evicts the
//! least recently active one with a clear close code instead of refusing the newcomer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::{mpsc, watch};

/// A server-assigned connection id, unique for the life of the process.
pub type ConnId = u64;

/// Close code sent to a connection evicted because the registry is full.
pub const CLOSE_EVICTED: u16 = 4003;
/// Close reason sent with [`CLOSE_EVICTED`].
pub const EVICTED_REASON: &str = "Evicted: server connection limit reached";

/// What a connection's writer task sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// An encoded binary (msgpack) frame.
    Binary(Bytes),
    /// An encoded text (JSON) frame.
    Text(String),
    /// Close the socket with this code and reason, after everything queued before it.
    Close(u16, String),
}

impl Outbound {
    /// The bytes this frame holds while it waits in the queue.
    pub fn len(&self) -> usize {
        match self {
            Self::Binary(bytes) => bytes.len(),
            Self::Text(text) => text.len(),
            Self::Close(..) => 0,
        }
    }

    /// True for a frame that holds no bytes (a close, or an empty frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bytes queued for one connection and not yet taken by its writer task.
#[derive(Debug)]
pub struct QueuedBytes {
    queued: AtomicUsize,
    max: usize,
}

impl QueuedBytes {
    fn new(max: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            max,
        }
    }

    /// Counts `len` more bytes unless that passes the bound. A frame larger than the bound
    /// still goes into an empty queue: one big response must not kill a reading peer.
    fn reserve(&self, len: usize) -> bool {
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before.saturating_add(len) > self.max {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The writer task took a frame of `len` bytes off the queue.
    pub fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }

    /// Bytes queued now.
    pub fn get(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Why a message could not be queued for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("connection is gone")]
    Gone,
    #[error("connection's outbound queue is full")]
    Full,
}

/// The sending half of one connection's outbound queue, plus its kill switch.
///
/// Nothing here ever waits for room: a peer that does not read its frames fills its queue,
/// and a full queue kills the connection (the client reconnects and resyncs) instead of
/// silently dropping a frame or blocking the sender.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    tx: mpsc::Sender<Outbound>,
    queued: Arc<QueuedBytes>,
    kill: Arc<watch::Sender<bool>>,
}

impl ConnHandle {
    /// Queues a frame without waiting; a queue full in frames or bytes kills the connection.
    pub fn send(&self, frame: Outbound) -> Result<(), SendError> {
        let len = frame.len();
        if !self.queued.reserve(len) {
            tracing::warn!(
                conn = self.id,
                queued_bytes = self.queued.get(),
                "outbound bytes over the bound: closing the slow connection"
            );
            self.kill();
            return Err(SendError::Full);
        }
        self.tx.try_send(frame).map_err(|e| {
            self.queued.release(len);
            match e {
                mpsc::error::TrySendError::Full(_) => {
                    tracing::warn!(
                        conn = self.id,
                        "outbound queue full: closing the slow connection"
                    );
                    self.kill();
                    SendError::Full
                }
                mpsc::error::TrySendError::Closed(_) => SendError::Gone,
            }
        })
    }

    /// The byte count the connection's writer task releases as it takes frames.
    pub fn queued_bytes(&self) -> Arc<QueuedBytes> {
        Arc::clone(&self.queued)
    }

    /// Queues a close frame behind what is already queued and ends the connection's read
    /// loop. Never waits: when the queue is full the socket is simply dropped.
    pub async fn close(&self, code: u16, reason: &str) {
        // The receiver may already be gone, in which case the socket is closing anyway.
        let _ = self.tx.try_send(Outbound::Close(code, reason.to_owned()));
        self.kill();
    }

    /// Ends the connection: its read loop stops and its state is cleaned up.
    pub fn kill(&self) {
        self.kill.send_replace(true);
    }

    /// Resolves once the connection has been killed.
    pub async fn killed(&self) {
        let mut rx = self.kill.subscribe();
        // An error means the switch is gone, which only happens once every handle is
        // dropped; treat that as killed too.
        let _ = rx.wait_for(|killed| *killed).await;
    }
}

/// Creates a connection's outbound queue of `capacity` frames, unbounded in bytes (for
/// receivers that never release them; connections use [`bounded_outbound_queue`]).
pub fn outbound_queue(id: ConnId, capacity: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
    bounded_outbound_queue(id, capacity, usize::MAX)
}

/// Creates a connection's outbound queue of at most `capacity` frames and `max_bytes` bytes;
/// its reader must [`QueuedBytes::release`] each frame it takes.
pub fn bounded_outbound_queue(
    id: ConnId,
    capacity: usize,
    max_bytes: usize,
) -> (ConnHandle, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (kill, _) = watch::channel(false);
    (
        ConnHandle {
            id,
            tx,
            queued: Arc::new(QueuedBytes::new(max_bytes)),
            kill: Arc::new(kill),
        },
        rx,
    )
}

/// Every open connection, in order of recent activity.
#[derive(Debug)]
pub struct Registry {
    max: usize,
    next_id: AtomicU64,
    conns: Mutex<LruCache<ConnId, ConnHandle>>,
}

impl Registry {
    /// A registry that holds at most `max` connections (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next_id: AtomicU64::new(1),
            conns: Mutex::new(LruCache::unbounded()),
        }
    }

    /// A fresh connection id.
    pub fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Admits a connection; returns the connection evicted to make room, if any.
    pub fn admit(&self, handle: ConnHandle) -> Option<ConnHandle> {
        let mut conns = self.lock();
        let evicted = if conns.len() >= self.max {
            conns.pop_lru().map(|(_, h)| h)
        } else {
            None
        };
        conns.push(handle.id, handle);
        evicted
    }

    /// Marks a connection as just active.
    pub fn touch(&self, id: ConnId) {
        self.lock().promote(&id);
    }

    /// Forgets a connection.
    pub fn remove(&self, id: ConnId) {
        self.lock().pop(&id);
    }

    /// The handle of a connection, if it is still registered.
    pub fn get(&self, id: ConnId) -> Option<ConnHandle> {
        self.lock().peek(&id).cloned()
    }

    /// Handles of every open connection.
    pub fn all(&self) -> Vec<ConnHandle> {
        self.lock().iter().map(|(_, h)| h.clone()).collect()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<ConnId, ConnHandle>> {
        // A panic while holding this lock cannot leave the LRU inconsistent in a way that
        // matters more than losing the server, so recover the guard.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_registry_evicts_the_least_recently_active() {
        let registry = Registry::new(2);
        let mut queues = Vec::new();
        for _ in 0..2 {
            let (h, rx) = outbound_queue(registry.next_id(), 4);
            queues.push(rx);
            assert!(registry.admit(h).is_none());
        }
        registry.touch(1); // connection 2 is now the idlest
        let (h3, _rx3) = outbound_queue(registry.next_id(), 4);
        let evicted = registry.admit(h3).expect("one is evicted");
        assert_eq!(evicted.id, 2);
        assert_eq!(registry.len(), 2);
        assert!(registry.get(2).is_none());
        assert!(registry.get(1).is_some() && registry.get(3).is_some());
    }

    #[tokio::test]
    async fn full_outbound_queue_kills_the_connection() {
        let (h, _rx) = outbound_queue(1, 1);
        assert_eq!(h.send(Outbound::Text("a".into())), Ok(()));
        assert_eq!(h.send(Outbound::Text("b".into())), Err(SendError::Full));
        tokio::time::timeout(std::time::Duration::from_secs(1), h.killed())
            .await
            .expect("a full queue kills the connection");
    }

    #[tokio::test]
    async fn close_never_waits_for_room() {
        let (h, _rx) = outbound_queue(1, 1);
        h.send(Outbound::Text("a".into())).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), h.close(4003, "bye"))
            .await
            .expect("close returns although the queue is full");
        h.killed().await;
    }

    #[tokio::test]
    async fn queued_bytes_over_the_bound_kill_the_connection() {
        let (h, mut rx) = bounded_outbound_queue(1, 100, 10);
        let frame = |n: usize| Outbound::Binary(Bytes::from(vec![0u8; n]));
        // One frame larger than the bound still fits an empty queue.
        assert_eq!(h.send(frame(25)), Ok(()));
        let taken = rx.recv().await.unwrap();
        h.queued_bytes().release(taken.len());
        assert_eq!(h.send(frame(6)), Ok(()));
        assert_eq!(h.send(frame(4)), Ok(()));
        assert_eq!(h.queued_bytes().get(), 10);
        assert_eq!(h.send(frame(1)), Err(SendError::Full));
        assert_eq!(h.queued_bytes().get(), 10, "a refused frame is not counted");
        tokio::time::timeout(std::time::Duration::from_secs(1), h.killed())
            .await
            .expect("too many queued bytes kill the connection");
    }

    #[tokio::test]
    async fn released_bytes_make_room_again() {
        let (h, mut rx) = bounded_outbound_queue(1, 100, 10);
        for _ in 0..5 {
            assert_eq!(h.send(Outbound::Text("12345678".into())), Ok(()));
            let taken = rx.recv().await.unwrap();
            h.queued_bytes().release(taken.len());
        }
        assert_eq!(h.queued_bytes().get(), 0);
        assert_eq!(Outbound::Close(1000, "x".into()).len(), 0);
    }

    #[test]
    fn send_to_a_dropped_connection_says_gone() {
        let (h, rx) = outbound_queue(1, 1);
        drop(rx);
        assert_eq!(h.send(Outbound::Text("a".into())), Err(SendError::Gone));
    }
}
