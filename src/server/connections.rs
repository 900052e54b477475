//! The connection registry: who is connected, how to reach them, and who goes first when
//! the server is full (requirement REF-13).
//!
//! Each connection owns a bounded outbound queue drained by its writer task. The registry is
//! an LRU over connection activity: admitting a connection past `max_connections` evicts the
//! least recently active one with a clear close code instead of refusing the newcomer.

use std::sync::atomic::{AtomicU64, Ordering};
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
    kill: Arc<watch::Sender<bool>>,
}

impl ConnHandle {
    /// Queues a frame without waiting; a full queue kills the connection.
    pub fn send(&self, frame: Outbound) -> Result<(), SendError> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                tracing::warn!(
                    conn = self.id,
                    "outbound queue full: closing the slow connection"
                );
                self.kill();
                SendError::Full
            }
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
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

/// Creates a connection's outbound queue.
pub fn outbound_queue(id: ConnId, capacity: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (kill, _) = watch::channel(false);
    (
        ConnHandle {
            id,
            tx,
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

    #[test]
    fn send_to_a_dropped_connection_says_gone() {
        let (h, rx) = outbound_queue(1, 1);
        drop(rx);
        assert_eq!(h.send(Outbound::Text("a".into())), Err(SendError::Gone));
    }
}
