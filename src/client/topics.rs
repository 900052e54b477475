//! Topic pub/sub on the client: subscriptions fanned out to application receivers, and the
//! offline publish queue (TOPGUN-REFERENCE.md §3.6, defects 25 and 26; PROTOCOL.md §3.7).
//!
//! - The first receiver of a topic sends `TOPIC_SUB` (when authenticated); once the last one
//!   is gone `TOPIC_UNSUB` is due. Every live topic is subscribed again after each
//!   authentication ([`TopicManager::resubscribe`]).
//! - Publishing while not authenticated queues the message, bounded by `max_size` and
//!   optionally by `max_age`. On overflow the policy applies: drop the oldest (reported as a
//!   [`TopicEvent::Dropped`]) or refuse with a typed [`TopicError::QueueFull`]. Expired
//!   messages are dropped, and reported, rather than published late.
//! - After authentication the engine flushes the queue in order: [`TopicManager::flush_front`]
//!   hands out the oldest message without removing it, and only
//!   [`TopicManager::flushed`] (after a successful send) removes it, so a send failure keeps
//!   every unsent message queued. While the queue is not empty, even an online publish joins
//!   its back, so messages never overtake older queued ones.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::protocol::{
    Message, TopicMessage, TopicPayload, TopicPub, TopicPubPayload, TopicSub, TopicUnsub,
};
use crate::server::topics::is_valid_topic_name;

/// How many messages one topic buffers for a receiver that has not read them yet; a slower
/// receiver sees `RecvError::Lagged` instead of holding memory.
pub const DELIVERY_CAPACITY: usize = 256;

/// What an offline publish does when the queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TopicOverflow {
    /// Drop the oldest queued message and queue the new one.
    #[default]
    DropOldest,
    /// Refuse the new message with [`TopicError::QueueFull`].
    Reject,
}

/// The offline publish queue's settings. Defaults: 100 messages, no age limit, drop-oldest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicQueueConfig {
    /// The most messages queued at once.
    pub max_size: usize,
    /// Queued messages older than this are dropped instead of published.
    pub max_age: Option<Duration>,
    /// What happens when the queue is full.
    pub overflow: TopicOverflow,
}

impl Default for TopicQueueConfig {
    fn default() -> Self {
        Self {
            max_size: 100,
            max_age: None,
            overflow: TopicOverflow::DropOldest,
        }
    }
}

/// Why a queued message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full.
    Overflow,
    /// It was queued longer than `max_age`.
    Expired,
}

/// Something the app should know about the offline queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicEvent {
    /// A queued message for `topic` will never be published.
    Dropped {
        /// Its topic.
        topic: String,
        /// Why.
        reason: DropReason,
    },
    /// The queue was emptied by a flush that published `count` messages.
    Flushed {
        /// Messages published by the flush.
        count: usize,
    },
}

/// Why a topic call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name breaks the topic grammar (1–256 characters of `[A-Za-z0-9_\-.:/]`).
    #[error("invalid topic name {0:?}: use 1-256 characters of letters, digits and _-.:/")]
    InvalidName(String),
    /// The offline queue is full and its policy is `Reject`.
    #[error("the offline topic queue is full ({max_size} messages)")]
    QueueFull {
        /// The queue's size.
        max_size: usize,
    },
}

/// One message delivered to a topic's receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicDelivery {
    /// The published data.
    pub data: Value,
    /// The publisher's server-side connection id, if the server sent one.
    pub publisher_id: Option<String>,
    /// When the server relayed it, in milliseconds since the epoch.
    pub timestamp: u64,
}

/// The identity of a queued message, so [`TopicManager::flushed`] removes exactly the one
/// that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedId(u64);

#[derive(Debug)]
struct Queued {
    id: QueuedId,
    topic: String,
    data: Value,
    queued_at_ms: u64,
}

/// Topic subscriptions and the offline publish queue.
#[derive(Debug)]
pub struct TopicManager {
    config: TopicQueueConfig,
    /// Topic → its receivers; an entry lives while it has receivers.
    subscriptions: BTreeMap<String, broadcast::Sender<TopicDelivery>>,
    queue: VecDeque<Queued>,
    next_queued: u64,
    /// Messages published by the flush in progress.
    flushed_count: usize,
}

impl TopicManager {
    /// A manager whose offline queue follows `config`.
    pub fn new(config: TopicQueueConfig) -> Self {
        Self {
            config,
            subscriptions: BTreeMap::new(),
            queue: VecDeque::new(),
            next_queued: 0,
            flushed_count: 0,
        }
    }

    /// A receiver for `topic`, and the `TOPIC_SUB` to send when this is the topic's first
    /// receiver and the client is authenticated (otherwise [`resubscribe`](Self::resubscribe)
    /// sends it after the next authentication).
    pub fn subscribe(
        &mut self,
        topic: &str,
        online: bool,
    ) -> Result<(broadcast::Receiver<TopicDelivery>, Option<Message>), TopicError> {
        check_name(topic)?;
        if let Some(sender) = self.subscriptions.get(topic) {
            if sender.receiver_count() > 0 {
                return Ok((sender.subscribe(), None));
            }
        }
        let (sender, receiver) = broadcast::channel(DELIVERY_CAPACITY);
        self.subscriptions.insert(topic.to_owned(), sender);
        Ok((receiver, online.then(|| sub(topic))))
    }

    /// Forgets `topic` once its last receiver is dropped and returns the `TOPIC_UNSUB` to
    /// send (if authenticated; offline it can be dropped, since only live topics are
    /// subscribed again).
    pub fn unsubscribe_if_unused(&mut self, topic: &str) -> Option<Message> {
        let unused = self
            .subscriptions
            .get(topic)
            .is_some_and(|sender| sender.receiver_count() == 0);
        if !unused {
            return None;
        }
        self.subscriptions.remove(topic);
        Some(unsub(topic))
    }

    /// Publishes `data`: online with an empty queue, returns the `TOPIC_PUB` to send;
    /// otherwise queues it behind older messages, dropping expired ones and applying the
    /// overflow policy. Returns the events to report.
    pub fn publish(
        &mut self,
        topic: &str,
        data: Value,
        online: bool,
        now_ms: u64,
    ) -> Result<(Option<Message>, Vec<TopicEvent>), TopicError> {
        check_name(topic)?;
        let mut events = self.expire(now_ms);
        if online && self.queue.is_empty() {
            return Ok((Some(publication(topic, data)), events));
        }
        if self.queue.len() >= self.config.max_size {
            match self.config.overflow {
                TopicOverflow::Reject => {
                    return Err(TopicError::QueueFull {
                        max_size: self.config.max_size,
                    });
                }
                TopicOverflow::DropOldest => {
                    while self.queue.len() >= self.config.max_size {
                        let Some(oldest) = self.queue.pop_front() else {
                            break;
                        };
                        events.push(dropped(oldest.topic, DropReason::Overflow));
                    }
                }
            }
        }
        if self.queue.len() < self.config.max_size {
            self.enqueue(topic, data, now_ms);
        } else {
            // A zero-sized queue holds nothing: the new message itself is the oldest.
            events.push(dropped(topic.to_owned(), DropReason::Overflow));
        }
        Ok((None, events))
    }

    /// The next message of the flush: drops expired messages at the front (returned as
    /// events), then hands out the oldest queued message without removing it. `None` when the
    /// queue is empty.
    pub fn flush_front(&mut self, now_ms: u64) -> (Option<(QueuedId, Message)>, Vec<TopicEvent>) {
        let mut events = self.expire(now_ms);
        let next = self
            .queue
            .front()
            .map(|queued| (queued.id, publication(&queued.topic, queued.data.clone())));
        if next.is_none() {
            events.extend(self.finish_flush());
        }
        (next, events)
    }

    /// The message `id` from [`flush_front`](Self::flush_front) was sent: removes it. Returns
    /// `Flushed` when that emptied the queue.
    pub fn flushed(&mut self, id: QueuedId) -> Option<TopicEvent> {
        if self.queue.front().is_some_and(|queued| queued.id == id) {
            self.queue.pop_front();
            self.flushed_count += 1;
        }
        if self.queue.is_empty() {
            self.finish_flush()
        } else {
            None
        }
    }

    /// `TOPIC_SUB` for every topic that still has receivers, to send after each authentication.
    pub fn resubscribe(&self) -> Vec<Message> {
        self.subscriptions
            .iter()
            .filter(|(_, sender)| sender.receiver_count() > 0)
            .map(|(topic, _)| sub(topic))
            .collect()
    }

    /// Delivers a `TOPIC_MESSAGE` to the topic's receivers. Returns the `TOPIC_UNSUB` to send
    /// when nobody listens to that topic any more.
    pub fn on_message(&mut self, message: &TopicMessage) -> Option<Message> {
        let payload = &message.payload;
        let sender = self.subscriptions.get(&payload.topic)?;
        let delivery = TopicDelivery {
            data: payload.data.clone(),
            publisher_id: payload.publisher_id.clone(),
            timestamp: payload.timestamp,
        };
        if sender.send(delivery).is_err() {
            return self.unsubscribe_if_unused(&payload.topic);
        }
        None
    }

    /// `(queued messages, max_size)`.
    pub fn queue_status(&self) -> (usize, usize) {
        (self.queue.len(), self.config.max_size)
    }

    fn enqueue(&mut self, topic: &str, data: Value, now_ms: u64) {
        let id = QueuedId(self.next_queued);
        self.next_queued += 1;
        self.queue.push_back(Queued {
            id,
            topic: topic.to_owned(),
            data,
            queued_at_ms: now_ms,
        });
    }

    /// Drops messages older than `max_age` (the queue is in age order, so only its front).
    fn expire(&mut self, now_ms: u64) -> Vec<TopicEvent> {
        let Some(max_age) = self.config.max_age else {
            return Vec::new();
        };
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut events = Vec::new();
        while let Some(front) = self.queue.front() {
            if now_ms.saturating_sub(front.queued_at_ms) <= max_age_ms {
                break;
            }
            if let Some(expired) = self.queue.pop_front() {
                events.push(dropped(expired.topic, DropReason::Expired));
            }
        }
        events
    }

    /// Ends the flush in progress, reporting how many messages it published.
    fn finish_flush(&mut self) -> Option<TopicEvent> {
        let count = std::mem::take(&mut self.flushed_count);
        (count > 0).then_some(TopicEvent::Flushed { count })
    }
}

fn check_name(topic: &str) -> Result<(), TopicError> {
    if is_valid_topic_name(topic) {
        Ok(())
    } else {
        Err(TopicError::InvalidName(topic.to_owned()))
    }
}

fn dropped(topic: String, reason: DropReason) -> TopicEvent {
    TopicEvent::Dropped { topic, reason }
}

fn sub(topic: &str) -> Message {
    TopicSub {
        payload: TopicPayload {
            topic: topic.to_owned(),
        },
    }
    .into()
}

fn unsub(topic: &str) -> Message {
    TopicUnsub {
        payload: TopicPayload {
            topic: topic.to_owned(),
        },
    }
    .into()
}

fn publication(topic: &str, data: Value) -> Message {
    TopicPub {
        payload: TopicPubPayload {
            topic: topic.to_owned(),
            data,
        },
    }
    .into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::TopicMessagePayload;

    fn manager(config: TopicQueueConfig) -> TopicManager {
        TopicManager::new(config)
    }

    fn published(message: &Message) -> (String, Value) {
        let Message::TopicPub(publication) = message else {
            panic!("expected TOPIC_PUB, got {message:?}");
        };
        (
            publication.payload.topic.clone(),
            publication.payload.data.clone(),
        )
    }

    fn incoming(topic: &str, data: Value) -> TopicMessage {
        TopicMessage {
            payload: TopicMessagePayload {
                topic: topic.into(),
                data,
                publisher_id: Some("conn-1".into()),
                timestamp: 1_700_000_000_000,
            },
        }
    }

    /// Runs a whole flush, every send succeeding; returns what was sent and the events.
    fn flush_all(
        topics: &mut TopicManager,
        now_ms: u64,
    ) -> (Vec<(String, Value)>, Vec<TopicEvent>) {
        let mut sent = Vec::new();
        let mut events = Vec::new();
        loop {
            let (next, expired) = topics.flush_front(now_ms);
            events.extend(expired);
            let Some((id, message)) = next else { break };
            sent.push(published(&message));
            events.extend(topics.flushed(id));
        }
        (sent, events)
    }

    #[test]
    fn online_publishes_go_straight_out() {
        let mut topics = manager(TopicQueueConfig::default());
        let (message, events) = topics.publish("chat", json!("hi"), true, 0).unwrap();
        assert_eq!(published(&message.unwrap()), ("chat".into(), json!("hi")));
        assert!(events.is_empty());
        assert_eq!(topics.queue_status(), (0, 100));
    }

    #[test]
    fn offline_publishes_flush_in_order_after_auth() {
        let mut topics = manager(TopicQueueConfig::default());
        for i in 0..3 {
            let (message, _) = topics.publish("chat", json!(i), false, i).unwrap();
            assert!(message.is_none());
        }
        assert_eq!(topics.queue_status(), (3, 100));
        // A publish made online during the flush waits behind the queued ones.
        let (message, _) = topics.publish("chat", json!(3), true, 3).unwrap();
        assert!(message.is_none());
        let (sent, events) = flush_all(&mut topics, 10);
        let data: Vec<Value> = sent.into_iter().map(|(_, data)| data).collect();
        assert_eq!(data, vec![json!(0), json!(1), json!(2), json!(3)]);
        assert_eq!(events, vec![TopicEvent::Flushed { count: 4 }]);
        assert_eq!(topics.queue_status(), (0, 100));
        // Afterwards online publishes are direct again.
        assert!(
            topics
                .publish("chat", json!(4), true, 11)
                .unwrap()
                .0
                .is_some()
        );
    }

    #[test]
    fn a_send_failure_keeps_unsent_messages_queued() {
        let mut topics = manager(TopicQueueConfig::default());
        for i in 0..3 {
            topics.publish("chat", json!(i), false, 0).unwrap();
        }
        let (Some((first, _)), _) = topics.flush_front(0) else {
            panic!("queue is not empty");
        };
        assert_eq!(topics.flushed(first), None);
        // The second send fails: the connection drops before `flushed` is called.
        let (Some((_, message)), _) = topics.flush_front(0) else {
            panic!("queue is not empty");
        };
        assert_eq!(published(&message).1, json!(1));
        assert_eq!(topics.queue_status(), (2, 100));
        // The next session sends the rest, starting with the failed one.
        let (sent, events) = flush_all(&mut topics, 0);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].1, json!(1));
        assert_eq!(events, vec![TopicEvent::Flushed { count: 3 }]);
    }

    #[test]
    fn overflow_drops_the_oldest_and_reports_it() {
        let mut topics = manager(TopicQueueConfig {
            max_size: 2,
            ..TopicQueueConfig::default()
        });
        topics.publish("a", json!(1), false, 0).unwrap();
        topics.publish("b", json!(2), false, 0).unwrap();
        let (_, events) = topics.publish("c", json!(3), false, 0).unwrap();
        assert_eq!(
            events,
            vec![TopicEvent::Dropped {
                topic: "a".into(),
                reason: DropReason::Overflow
            }]
        );
        let (sent, _) = flush_all(&mut topics, 0);
        assert_eq!(sent, vec![("b".into(), json!(2)), ("c".into(), json!(3))]);
    }

    #[test]
    fn overflow_rejects_with_a_typed_error() {
        let mut topics = manager(TopicQueueConfig {
            max_size: 1,
            overflow: TopicOverflow::Reject,
            ..TopicQueueConfig::default()
        });
        topics.publish("a", json!(1), false, 0).unwrap();
        let error = topics.publish("a", json!(2), false, 0).unwrap_err();
        assert_eq!(error, TopicError::QueueFull { max_size: 1 });
        let (sent, _) = flush_all(&mut topics, 0);
        assert_eq!(sent, vec![("a".into(), json!(1))]);
    }

    #[test]
    fn a_zero_sized_queue_drops_every_offline_publish() {
        let mut topics = manager(TopicQueueConfig {
            max_size: 0,
            ..TopicQueueConfig::default()
        });
        let (message, events) = topics.publish("a", json!(1), false, 0).unwrap();
        assert!(message.is_none());
        assert_eq!(
            events,
            vec![TopicEvent::Dropped {
                topic: "a".into(),
                reason: DropReason::Overflow
            }]
        );
        assert_eq!(topics.queue_status(), (0, 0));
    }

    #[test]
    fn messages_older_than_max_age_expire_instead_of_publishing() {
        let mut topics = manager(TopicQueueConfig {
            max_age: Some(Duration::from_secs(10)),
            ..TopicQueueConfig::default()
        });
        topics.publish("old", json!(1), false, 0).unwrap();
        topics.publish("new", json!(2), false, 5_000).unwrap();
        // At exactly max_age a message is still fresh.
        let (_, events) = topics.publish("newer", json!(3), false, 10_000).unwrap();
        assert!(events.is_empty());
        let (sent, events) = flush_all(&mut topics, 10_001);
        assert_eq!(
            sent,
            vec![("new".into(), json!(2)), ("newer".into(), json!(3))]
        );
        assert_eq!(
            events,
            vec![
                TopicEvent::Dropped {
                    topic: "old".into(),
                    reason: DropReason::Expired
                },
                TopicEvent::Flushed { count: 2 }
            ]
        );
    }

    #[test]
    fn invalid_topic_names_are_refused_before_anything_is_sent() {
        let mut topics = manager(TopicQueueConfig::default());
        let error = topics.publish("no spaces", json!(1), true, 0).unwrap_err();
        assert_eq!(error, TopicError::InvalidName("no spaces".into()));
        assert!(topics.subscribe("", true).is_err());
        assert!(topics.subscribe(&"x".repeat(257), true).is_err());
    }

    #[test]
    fn subscriptions_send_sub_once_and_unsub_after_the_last_receiver() {
        let mut topics = manager(TopicQueueConfig::default());
        let (first, message) = topics.subscribe("chat", true).unwrap();
        assert_eq!(
            message,
            Some(Message::TopicSub(TopicSub {
                payload: TopicPayload {
                    topic: "chat".into()
                }
            }))
        );
        let (second, message) = topics.subscribe("chat", true).unwrap();
        assert!(message.is_none());
        drop(first);
        assert!(topics.unsubscribe_if_unused("chat").is_none());
        drop(second);
        assert_eq!(
            topics.unsubscribe_if_unused("chat"),
            Some(Message::TopicUnsub(TopicUnsub {
                payload: TopicPayload {
                    topic: "chat".into()
                }
            }))
        );
        assert!(topics.unsubscribe_if_unused("chat").is_none());
        assert!(topics.resubscribe().is_empty());
    }

    #[test]
    fn offline_subscriptions_are_sent_by_resubscribe() {
        let mut topics = manager(TopicQueueConfig::default());
        let (_b, message) = topics.subscribe("b", false).unwrap();
        assert!(message.is_none());
        let (_a, _) = topics.subscribe("a", true).unwrap();
        let (gone, _) = topics.subscribe("gone", true).unwrap();
        drop(gone);
        let topics_sent: Vec<String> = topics
            .resubscribe()
            .into_iter()
            .map(|message| match message {
                Message::TopicSub(sub) => sub.payload.topic,
                other => panic!("expected TOPIC_SUB, got {other:?}"),
            })
            .collect();
        assert_eq!(topics_sent, vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn messages_reach_every_receiver_of_their_topic() {
        let mut topics = manager(TopicQueueConfig::default());
        let (mut first, _) = topics.subscribe("chat", true).unwrap();
        let (mut second, _) = topics.subscribe("chat", true).unwrap();
        let (mut other, _) = topics.subscribe("other", true).unwrap();
        assert!(
            topics
                .on_message(&incoming("chat", json!({"text": "hi"})))
                .is_none()
        );
        let expected = TopicDelivery {
            data: json!({"text": "hi"}),
            publisher_id: Some("conn-1".into()),
            timestamp: 1_700_000_000_000,
        };
        assert_eq!(first.try_recv().unwrap(), expected);
        assert_eq!(second.try_recv().unwrap(), expected);
        assert!(other.try_recv().is_err());
        // Unknown topics are ignored; a topic nobody reads any more is unsubscribed.
        assert!(topics.on_message(&incoming("nobody", json!(1))).is_none());
        drop(other);
        assert!(matches!(
            topics.on_message(&incoming("other", json!(1))),
            Some(Message::TopicUnsub(_))
        ));
    }
}
