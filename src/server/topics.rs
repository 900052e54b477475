//! Topics (pub/sub, PROTOCOL.md §3.7): `TOPIC_SUB` / `TOPIC_UNSUB` / `TOPIC_PUB` and the
//! registry of which connection listens to which topic.
//!
//! Fire-and-forget, as in TopGun: no acks, no history, no persistence. Subscriptions belong
//! to a connection, are bounded per connection and vanish when it closes. A publish is
//! encoded once and the same bytes are queued for every subscriber except the publisher; a
//! subscriber whose outbound queue is full misses the message rather than slowing the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::protocol::codec;
use crate::protocol::{Message, TopicMessage, TopicMessagePayload, TopicPayload, TopicPubPayload};
use crate::security::{Action, topic_resource};

use super::Shared;
use super::connections::{ConnHandle, ConnId, Outbound, SendError};
use super::dispatch::Flow;
use super::session::Session;

/// Default bound on the topics one connection may subscribe to (TopGun's `TopicManager`).
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 100;
/// Longest topic name, in characters.
pub const MAX_TOPIC_LEN: usize = 256;

/// Domain-separation label for deriving the publisher-id key from the server secret.
const PUBLISHER_ID_LABEL: &[u8] = b"topgun/topic-publisher-id/v1";
/// Bytes of the keyed hash kept in a publisher id (rendered as twice as many hex digits).
const PUBLISHER_ID_BYTES: usize = 16;

/// Why a topic request was refused. The messages are TopGun's, word for word, because the
/// 2026-08 client shows them to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("Invalid topic name")]
    InvalidName,
    #[error("Subscription limit reached")]
    LimitReached,
}

/// What became of one publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Subscribers the message was queued for.
    pub delivered: usize,
    /// Subscribers whose queue was full (they miss this message).
    pub skipped_full: usize,
}

/// True when `topic` follows TopGun's grammar: 1–256 characters of `[A-Za-z0-9_\-.:/]`
/// (JavaScript's `\w` is ASCII-only).
pub fn is_valid_topic_name(topic: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

/// Every topic subscription, by topic and by connection.
#[derive(Debug)]
pub struct TopicRegistry {
    max_per_connection: usize,
    publisher_key: Vec<u8>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ordered by connection id so fan-out order is reproducible.
    by_topic: HashMap<String, BTreeMap<ConnId, ConnHandle>>,
    by_conn: HashMap<ConnId, HashSet<String>>,
}

impl TopicRegistry {
    /// A registry allowing `max_per_connection` topics per connection, whose publisher ids
    /// are keyed by `server_secret`.
    ///
    /// The key is derived from an existing per-process secret (with its own label) rather
    /// than drawn from the entropy seam, so adding topics does not shift the random stream
    /// other features see in seeded runs.
    pub fn new(max_per_connection: usize, server_secret: &[u8]) -> Self {
        let publisher_key = Sha256::new()
            .chain_update(PUBLISHER_ID_LABEL)
            .chain_update(server_secret)
            .finalize()
            .to_vec();
        Self {
            max_per_connection,
            publisher_key,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Subscribes `conn` to `topic`. Subscribing again to a topic already held is a no-op
    /// and does not count against the limit.
    pub fn subscribe(&self, topic: &str, conn: &ConnHandle) -> Result<(), TopicError> {
        if !is_valid_topic_name(topic) {
            return Err(TopicError::InvalidName);
        }
        let mut inner = self.lock();
        let held = inner.by_conn.entry(conn.id).or_default();
        if held.contains(topic) {
            return Ok(());
        }
        if held.len() >= self.max_per_connection {
            if held.is_empty() {
                inner.by_conn.remove(&conn.id);
            }
            return Err(TopicError::LimitReached);
        }
        held.insert(topic.to_owned());
        inner
            .by_topic
            .entry(topic.to_owned())
            .or_default()
            .insert(conn.id, conn.clone());
        Ok(())
    }

    /// Drops `conn`'s subscription to `topic`; false when it had none.
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> bool {
        let mut inner = self.lock();
        let Some(held) = inner.by_conn.get_mut(&conn) else {
            return false;
        };
        if !held.remove(topic) {
            return false;
        }
        if held.is_empty() {
            inner.by_conn.remove(&conn);
        }
        remove_listener(&mut inner, topic, conn);
        true
    }

    /// Drops every subscription of a closed connection.
    pub fn remove_connection(&self, conn: ConnId) {
        let mut inner = self.lock();
        for topic in inner.by_conn.remove(&conn).unwrap_or_default() {
            remove_listener(&mut inner, &topic, conn);
        }
    }

    /// The connections subscribed to `topic`, in connection-id order.
    pub fn subscribers(&self, topic: &str) -> Vec<ConnHandle> {
        self.lock()
            .by_topic
            .get(topic)
            .map(|listeners| listeners.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many topics `conn` is subscribed to.
    pub fn subscription_count(&self, conn: ConnId) -> usize {
        self.lock().by_conn.get(&conn).map_or(0, HashSet::len)
    }

    /// How many topics have at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.lock().by_topic.len()
    }

    /// The id subscribers see as `publisherId` for messages from `conn`: stable for the
    /// connection's life, different per connection, and opaque — it reveals neither the
    /// user nor how many connections the server has seen (TopGun sends a per-connection
    /// UUID, never the client's node id).
    pub fn publisher_id(&self, conn: ConnId) -> String {
        Sha256::new()
            .chain_update(&self.publisher_key)
            .chain_update(conn.to_be_bytes())
            .finalize()
            .iter()
            .take(PUBLISHER_ID_BYTES)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn remove_listener(inner: &mut Inner, topic: &str, conn: ConnId) {
    if let Some(listeners) = inner.by_topic.get_mut(topic) {
        listeners.remove(&conn);
        if listeners.is_empty() {
            inner.by_topic.remove(topic);
        }
    }
}

/// Queues the already-encoded `frame` for every subscriber but `publisher`, never waiting:
/// a full queue costs that subscriber this message only.
pub fn deliver(frame: &Bytes, subscribers: &[ConnHandle], publisher: ConnId) -> Delivery {
    let mut outcome = Delivery::default();
    for conn in subscribers.iter().filter(|c| c.id != publisher) {
        match conn.send(Outbound::Binary(frame.clone())) {
            Ok(()) => outcome.delivered += 1,
            Err(SendError::Full) => {
                outcome.skipped_full += 1;
                tracing::warn!(
                    conn = conn.id,
                    "topic subscriber's outbound queue is full: message skipped"
                );
            }
            // The connection is closing; its subscriptions are about to be removed.
            Err(SendError::Gone) => {}
        }
    }
    outcome
}

/// `TOPIC_SUB`: needs READ on `topic:<name>`; silent on success, as in TopGun.
pub fn handle_topic_sub(shared: &Shared, session: &mut Session, sub: TopicPayload) -> Flow {
    if !is_valid_topic_name(&sub.topic) {
        session.send_error(shared, 400, TopicError::InvalidName.to_string());
        return Flow::Continue;
    }
    if !may(shared, session, &sub.topic, Action::Read) {
        return Flow::Continue;
    }
    if let Err(e) = shared.topics.subscribe(&sub.topic, session.handle()) {
        session.send_error(shared, 400, e.to_string());
    }
    Flow::Continue
}

/// `TOPIC_UNSUB`: silent whether or not the subscription existed.
pub fn handle_topic_unsub(shared: &Shared, session: &mut Session, unsub: TopicPayload) -> Flow {
    shared.topics.unsubscribe(&unsub.topic, session.id);
    Flow::Continue
}

/// `TOPIC_PUB`: needs PUT on `topic:<name>`; delivers `TOPIC_MESSAGE` to every other
/// subscriber. A publisher's messages reach each subscriber in publish order because its
/// frames are handled one at a time and each subscriber's queue is FIFO.
pub fn handle_topic_pub(shared: &Shared, session: &mut Session, publish: TopicPubPayload) -> Flow {
    if !is_valid_topic_name(&publish.topic) {
        session.send_error(shared, 400, TopicError::InvalidName.to_string());
        return Flow::Continue;
    }
    if !may(shared, session, &publish.topic, Action::Put) {
        return Flow::Continue;
    }
    let subscribers = shared.topics.subscribers(&publish.topic);
    if subscribers.iter().all(|c| c.id == session.id) {
        return Flow::Continue;
    }
    let message = Message::from(TopicMessage {
        payload: TopicMessagePayload {
            topic: publish.topic,
            data: publish.data,
            publisher_id: Some(shared.topics.publisher_id(session.id)),
            timestamp: shared.now_millis(),
        },
    });
    let frame = match codec::encode_msgpack(&message) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            // Only user data is variable here, and it arrived as valid msgpack: a bug.
            tracing::error!(conn = session.id, error = %e, "TOPIC_MESSAGE encode failed");
            return Flow::Continue;
        }
    };
    let outcome = deliver(&frame, &subscribers, session.id);
    shared.metrics.frames_out.fetch_add(
        outcome.delivered as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    Flow::Continue
}

/// Checks `action` on `topic:<topic>`, answering `ERROR 403` when denied.
fn may(shared: &Shared, session: &Session, topic: &str, action: Action) -> bool {
    let resource = topic_resource(topic);
    let allowed = shared
        .permissions
        .check(session.principal(), &resource, action);
    if !allowed {
        session.send_error(shared, 403, format!("Access Denied for {resource}"));
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::super::connections::outbound_queue;
    use super::*;
    use proptest::prelude::*;
    use tokio::sync::mpsc::Receiver;

    fn conn(id: ConnId, capacity: usize) -> (ConnHandle, Receiver<Outbound>) {
        outbound_queue(id, capacity)
    }

    fn registry(limit: usize) -> TopicRegistry {
        TopicRegistry::new(limit, b"test-secret")
    }

    fn ids(handles: &[ConnHandle]) -> Vec<ConnId> {
        handles.iter().map(|h| h.id).collect()
    }

    #[test]
    fn topic_names_follow_the_topgun_grammar() {
        for good in ["a", "chat/room-1:a.b_c", "Z9", &"x".repeat(MAX_TOPIC_LEN)] {
            assert!(is_valid_topic_name(good), "{good:?} should be valid");
        }
        for bad in [
            "",
            "a b",
            "é",
            "a*",
            "a\n",
            "tab\t",
            &"x".repeat(MAX_TOPIC_LEN + 1),
        ] {
            assert!(!is_valid_topic_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn subscribers_are_listed_per_topic_in_connection_order() {
        let reg = registry(10);
        let (c3, _r3) = conn(3, 4);
        let (c1, _r1) = conn(1, 4);
        let (c2, _r2) = conn(2, 4);
        reg.subscribe("news", &c3).unwrap();
        reg.subscribe("news", &c1).unwrap();
        reg.subscribe("chat", &c2).unwrap();
        assert_eq!(ids(&reg.subscribers("news")), [1, 3]);
        assert_eq!(ids(&reg.subscribers("chat")), [2]);
        assert!(reg.subscribers("other").is_empty());
        assert_eq!(reg.topic_count(), 2);
    }

    #[test]
    fn invalid_names_are_refused_and_not_registered() {
        let reg = registry(10);
        let (c, _r) = conn(1, 4);
        assert_eq!(reg.subscribe("bad name", &c), Err(TopicError::InvalidName));
        assert_eq!(reg.subscription_count(1), 0);
        assert_eq!(reg.topic_count(), 0);
        assert_eq!(TopicError::InvalidName.to_string(), "Invalid topic name");
    }

    #[test]
    fn the_limit_is_per_connection_and_resubscribing_is_free() {
        let reg = registry(2);
        let (a, _ra) = conn(1, 4);
        let (b, _rb) = conn(2, 4);
        reg.subscribe("t1", &a).unwrap();
        reg.subscribe("t2", &a).unwrap();
        assert_eq!(
            reg.subscribe("t2", &a),
            Ok(()),
            "already held: not a new slot"
        );
        assert_eq!(reg.subscribe("t3", &a), Err(TopicError::LimitReached));
        assert_eq!(
            TopicError::LimitReached.to_string(),
            "Subscription limit reached"
        );
        assert_eq!(reg.subscription_count(1), 2);
        assert!(reg.subscribers("t3").is_empty());
        reg.subscribe("t3", &b).unwrap();
        assert!(reg.unsubscribe("t1", 1));
        reg.subscribe("t3", &a).unwrap();
        assert_eq!(ids(&reg.subscribers("t3")), [1, 2]);
    }

    #[test]
    fn a_zero_limit_refuses_everything_without_leaving_state() {
        let reg = registry(0);
        let (a, _ra) = conn(1, 4);
        assert_eq!(reg.subscribe("t", &a), Err(TopicError::LimitReached));
        assert_eq!(reg.subscription_count(1), 0);
        assert_eq!(reg.topic_count(), 0);
    }

    #[test]
    fn unsubscribe_removes_one_topic_and_empty_topics_disappear() {
        let reg = registry(10);
        let (a, _ra) = conn(1, 4);
        let (b, _rb) = conn(2, 4);
        reg.subscribe("t", &a).unwrap();
        reg.subscribe("t", &b).unwrap();
        reg.subscribe("u", &a).unwrap();
        assert!(reg.unsubscribe("t", 1));
        assert!(!reg.unsubscribe("t", 1), "second unsubscribe finds nothing");
        assert!(!reg.unsubscribe("never", 2));
        assert_eq!(ids(&reg.subscribers("t")), [2]);
        assert!(reg.unsubscribe("t", 2));
        assert_eq!(reg.topic_count(), 1);
        assert_eq!(reg.subscription_count(1), 1);
    }

    #[test]
    fn closing_a_connection_drops_all_its_subscriptions() {
        let reg = registry(10);
        let (a, _ra) = conn(1, 4);
        let (b, _rb) = conn(2, 4);
        for topic in ["t1", "t2", "t3"] {
            reg.subscribe(topic, &a).unwrap();
        }
        reg.subscribe("t2", &b).unwrap();
        reg.remove_connection(1);
        assert_eq!(reg.subscription_count(1), 0);
        assert_eq!(reg.topic_count(), 1);
        assert_eq!(ids(&reg.subscribers("t2")), [2]);
        reg.remove_connection(1); // idempotent
        assert_eq!(reg.topic_count(), 1);
    }

    #[test]
    fn publisher_ids_are_stable_distinct_opaque_and_keyed() {
        let reg = registry(10);
        let id = reg.publisher_id(1);
        assert_eq!(id, reg.publisher_id(1));
        assert_ne!(id, reg.publisher_id(2));
        assert_eq!(id.len(), PUBLISHER_ID_BYTES * 2);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, "1");
        let other_server = TopicRegistry::new(10, b"another-secret");
        assert_ne!(id, other_server.publisher_id(1));
    }

    #[test]
    fn delivery_skips_the_publisher_and_full_queues_and_shares_the_bytes() {
        let (publisher, mut rp) = conn(1, 4);
        let (full, mut rf) = conn(2, 1);
        let (ok, mut ro) = conn(3, 4);
        let (gone, rg) = conn(4, 4);
        drop(rg);
        full.send(Outbound::Text("already queued".into())).unwrap();
        let frame = Bytes::from_static(b"\x81\xa4type");
        let outcome = deliver(&frame, &[publisher, full, ok, gone], 1);
        assert_eq!(
            outcome,
            Delivery {
                delivered: 1,
                skipped_full: 1
            }
        );
        assert!(rp.try_recv().is_err(), "publisher hears nothing");
        assert_eq!(
            rf.try_recv().unwrap(),
            Outbound::Text("already queued".into())
        );
        assert!(rf.try_recv().is_err(), "full subscriber skipped");
        match ro.try_recv().unwrap() {
            Outbound::Binary(bytes) => {
                assert_eq!(bytes, frame);
                assert_eq!(
                    bytes.as_ptr(),
                    frame.as_ptr(),
                    "same buffer, not a re-encode"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn deliveries_keep_publish_order() {
        let (sub, mut rx) = conn(2, 200);
        for n in 0..100u8 {
            deliver(&Bytes::from(vec![n]), std::slice::from_ref(&sub), 1);
        }
        let received: Vec<u8> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|o| match o {
                Outbound::Binary(b) => b[0],
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(received, (0..100u8).collect::<Vec<_>>());
    }

    proptest! {
        /// Whatever the sequence of subscribes, unsubscribes and disconnects, the two indexes
        /// agree, no connection exceeds the limit, and no empty topic lingers.
        #[test]
        fn registry_indexes_stay_consistent(
            ops in proptest::collection::vec((0u8..3, 1u64..4, 0u8..5), 0..80)
        ) {
            let limit = 3;
            let reg = registry(limit);
            let handles: Vec<(ConnHandle, Receiver<Outbound>)> =
                (1..4).map(|id| conn(id, 1)).collect();
            for (kind, id, topic) in ops {
                let topic = format!("t{topic}");
                let handle = &handles[(id - 1) as usize].0;
                match kind {
                    0 => { let _ = reg.subscribe(&topic, handle); }
                    1 => { reg.unsubscribe(&topic, id); }
                    _ => reg.remove_connection(id),
                }
            }
            let inner = reg.lock();
            for (conn_id, topics) in &inner.by_conn {
                prop_assert!(!topics.is_empty() && topics.len() <= limit);
                for topic in topics {
                    prop_assert!(inner.by_topic[topic].contains_key(conn_id));
                }
            }
            for (topic, listeners) in &inner.by_topic {
                prop_assert!(!listeners.is_empty());
                for conn_id in listeners.keys() {
                    prop_assert!(inner.by_conn[conn_id].contains(topic));
                }
            }
        }
    }
}
