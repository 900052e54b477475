//! Property 6, the offline topic queue: the publisher's side of a topic run (each publish,
//! whether the client was offline, what the queue did with it, each flush) and the
//! subscriber's receipts, and the checker over them.
//!
//! Topics are fire-and-forget, so only messages the client *queued* carry a promise: a publish
//! made while the publisher's connection state was `Backoff` or `Connecting` (the engine has
//! no session then) must, after the reconnect, reach a subscriber whose subscription stayed
//! live, in publish order, unless the queue's overflow policy dropped or refused it. A publish
//! made while `Connected` may vanish on a connection that is already dead but not yet known
//! to be (the heartbeat has not timed out), so it is only checked for order.

use topgun::client::topics::{TopicOverflow, TopicQueueConfig};

use crate::properties::Violation;

/// One publisher-side entry, in the order the publisher saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicEntry {
    Published {
        seq: u64,
        at_ms: u64,
        /// The client had no session, so the message went to the offline queue.
        offline: bool,
        /// `publish` returned `Ok` (false: `QueueFull`).
        accepted: bool,
        /// `TopicEvent::Dropped { reason: Overflow }` events this publish caused.
        drops: usize,
    },
    /// `TopicEvent::Flushed { count }`: the queue was emptied by a flush after a reconnect.
    Flushed { count: usize, at_ms: u64 },
}

/// A topic run's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicHistory {
    pub publisher: Vec<TopicEntry>,
    /// Sequence numbers in the order the subscriber received them.
    pub received: Vec<u64>,
}

impl TopicHistory {
    pub fn trace_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.publisher.iter().map(|e| format!("{e:?}")).collect();
        lines.push(format!("received {:?}", self.received));
        lines
    }

    /// Offline publishes, and how many of them the queue dropped or refused.
    pub fn offline_counts(&self) -> (usize, usize) {
        let mut offline = 0;
        let mut lost_to_policy = 0;
        for entry in &self.publisher {
            if let TopicEntry::Published {
                offline: true,
                accepted,
                drops,
                ..
            } = entry
            {
                offline += 1;
                lost_to_policy += drops + usize::from(!accepted);
            }
        }
        (offline, lost_to_policy)
    }
}

fn violation(detail: String) -> Violation {
    Violation {
        property: "offline topic queue",
        detail,
    }
}

/// Property 6 (see the module doc). Between two flushes the offline publishes form one queue
/// period; its expected survivors follow the policy: `DropOldest` keeps the newest `max_size`
/// (each drop reported by the publish that caused it), `Reject` accepts the first `max_size`
/// and refuses the rest. The survivors must all arrive, the flush must report their number,
/// and nothing the policy removed may arrive.
pub fn offline_topic_queue(history: &TopicHistory, config: &TopicQueueConfig) -> Vec<Violation> {
    let mut found = received_in_order(history);
    let mut period: Vec<(u64, bool, usize)> = Vec::new();
    for entry in &history.publisher {
        match entry {
            TopicEntry::Published {
                seq,
                offline: true,
                accepted,
                drops,
                ..
            } => period.push((*seq, *accepted, *drops)),
            TopicEntry::Published { .. } => {}
            TopicEntry::Flushed { count, at_ms } => {
                found.extend(check_period(
                    history,
                    config,
                    &std::mem::take(&mut period),
                    Some(*count),
                    *at_ms,
                ));
            }
        }
    }
    if !period.is_empty() {
        found.extend(check_period(history, config, &period, None, u64::MAX));
    }
    found
}

/// Every receipt was published and accepted, at most once, in publish order.
fn received_in_order(history: &TopicHistory) -> Vec<Violation> {
    let mut found = Vec::new();
    for pair in history.received.windows(2) {
        if pair[1] <= pair[0] {
            found.push(violation(format!(
                "message {} arrived after {} (duplicate or out of order)",
                pair[1], pair[0]
            )));
        }
    }
    for seq in &history.received {
        let accepted = history
            .publisher
            .iter()
            .any(|e| matches!(e, TopicEntry::Published { seq: s, accepted: true, .. } if s == seq));
        if !accepted {
            found.push(violation(format!(
                "message {seq} arrived but was never accepted"
            )));
        }
    }
    found
}

/// One queue period: `(seq, accepted, drops)` of each offline publish, and the count of the
/// flush that ended it (`None`: no flush ever came).
fn check_period(
    history: &TopicHistory,
    config: &TopicQueueConfig,
    period: &[(u64, bool, usize)],
    flushed: Option<usize>,
    flushed_at_ms: u64,
) -> Vec<Violation> {
    let mut found = Vec::new();
    let max = config.max_size;
    let accepted: Vec<u64> = period.iter().filter(|p| p.1).map(|p| p.0).collect();
    let drops: usize = period.iter().map(|p| p.2).sum();
    let (survivors, removed): (Vec<u64>, Vec<u64>) = match config.overflow {
        TopicOverflow::DropOldest => {
            if accepted.len() != period.len() {
                found.push(violation(format!(
                    "a drop-oldest queue refused a publish in period ending {flushed_at_ms} ms"
                )));
            }
            let keep = accepted.len().min(max);
            let cut = accepted.len() - keep;
            if drops != cut {
                found.push(violation(format!(
                    "{} queued past a bound of {max}, but {drops} drops were reported",
                    accepted.len()
                )));
            }
            (accepted[cut..].to_vec(), accepted[..cut].to_vec())
        }
        TopicOverflow::Reject => {
            let first: Vec<u64> = period.iter().take(max).map(|p| p.0).collect();
            if accepted != first {
                found.push(violation(format!(
                    "a reject queue of {max} accepted {accepted:?}, expected the first {max}: {first:?}"
                )));
            }
            if drops != 0 {
                found.push(violation(format!("a reject queue reported {drops} drops")));
            }
            let refused = period.iter().filter(|p| !p.1).map(|p| p.0).collect();
            (accepted, refused)
        }
    };
    match flushed {
        Some(count) if count != survivors.len() => found.push(violation(format!(
            "flush at {flushed_at_ms} ms published {count}, the queue held {}",
            survivors.len()
        ))),
        None if !survivors.is_empty() => found.push(violation(format!(
            "{} queued messages were never flushed",
            survivors.len()
        ))),
        _ => {}
    }
    for seq in &survivors {
        if !history.received.contains(seq) {
            found.push(violation(format!(
                "queued message {seq} never reached the subscriber"
            )));
        }
    }
    for seq in &removed {
        if history.received.contains(seq) {
            found.push(violation(format!(
                "message {seq} arrived although the queue dropped or refused it"
            )));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_size: usize, overflow: TopicOverflow) -> TopicQueueConfig {
        TopicQueueConfig {
            max_size,
            max_age: None,
            overflow,
        }
    }

    fn publish(seq: u64, offline: bool, accepted: bool, drops: usize) -> TopicEntry {
        TopicEntry::Published {
            seq,
            at_ms: seq * 10,
            offline,
            accepted,
            drops,
        }
    }

    fn flushed(count: usize) -> TopicEntry {
        TopicEntry::Flushed { count, at_ms: 999 }
    }

    /// Online 0; offline 1..=4 into a queue of 2 (drop-oldest: 1 and 2 dropped); flush of 2;
    /// online 5.
    fn drop_oldest_run() -> TopicHistory {
        TopicHistory {
            publisher: vec![
                publish(0, false, true, 0),
                publish(1, true, true, 0),
                publish(2, true, true, 0),
                publish(3, true, true, 1),
                publish(4, true, true, 1),
                flushed(2),
                publish(5, false, true, 0),
            ],
            received: vec![0, 3, 4, 5],
        }
    }

    #[test]
    fn a_drop_oldest_run_that_keeps_the_newest_passes() {
        let found = offline_topic_queue(&drop_oldest_run(), &config(2, TopicOverflow::DropOldest));
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(drop_oldest_run().offline_counts(), (4, 2));
    }

    #[test]
    fn a_lost_online_message_is_allowed_but_a_lost_queued_one_is_not() {
        let mut history = drop_oldest_run();
        history.received = vec![3, 4, 5];
        let cfg = config(2, TopicOverflow::DropOldest);
        assert!(offline_topic_queue(&history, &cfg).is_empty());
        history.received = vec![0, 4, 5];
        let found = offline_topic_queue(&history, &cfg);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("queued message 3 never reached"));
    }

    #[test]
    fn reordered_duplicated_or_unpublished_receipts_fail() {
        let cfg = config(2, TopicOverflow::DropOldest);
        for received in [vec![0, 4, 3, 5], vec![0, 3, 3, 4, 5], vec![0, 3, 4, 5, 9]] {
            let mut history = drop_oldest_run();
            history.received = received.clone();
            assert!(
                !offline_topic_queue(&history, &cfg).is_empty(),
                "{received:?} must fail"
            );
        }
    }

    #[test]
    fn drop_oldest_must_drop_the_oldest_report_each_drop_and_flush_the_rest() {
        let cfg = config(2, TopicOverflow::DropOldest);
        // The oldest dropped message arrived (the newest were dropped instead).
        let mut history = drop_oldest_run();
        history.received = vec![0, 1, 2, 5];
        assert!(!offline_topic_queue(&history, &cfg).is_empty());
        // A drop went unreported.
        let mut history = drop_oldest_run();
        history.publisher[4] = publish(4, true, true, 0);
        assert!(!offline_topic_queue(&history, &cfg).is_empty());
        // The flush published more than the bound allows.
        let mut history = drop_oldest_run();
        history.publisher[5] = flushed(4);
        assert!(!offline_topic_queue(&history, &cfg).is_empty());
        // No flush ever came.
        let mut history = drop_oldest_run();
        history.publisher.remove(5);
        let found = offline_topic_queue(&history, &cfg);
        assert!(found.iter().any(|v| v.detail.contains("never flushed")));
    }

    #[test]
    fn reject_must_accept_the_first_max_size_and_deliver_them() {
        let cfg = config(2, TopicOverflow::Reject);
        let good = TopicHistory {
            publisher: vec![
                publish(1, true, true, 0),
                publish(2, true, true, 0),
                publish(3, true, false, 0),
                flushed(2),
            ],
            received: vec![1, 2],
        };
        assert!(offline_topic_queue(&good, &cfg).is_empty());
        let mut refused_too_early = good.clone();
        refused_too_early.publisher[1] = publish(2, true, false, 0);
        refused_too_early.publisher[2] = publish(3, true, true, 0);
        refused_too_early.received = vec![1, 3];
        assert!(!offline_topic_queue(&refused_too_early, &cfg).is_empty());
        let mut refused_arrived = good.clone();
        refused_arrived.received = vec![1, 2, 3];
        assert!(!offline_topic_queue(&refused_arrived, &cfg).is_empty());
        let mut accepted_lost = good;
        accepted_lost.received = vec![2];
        assert!(!offline_topic_queue(&accepted_lost, &cfg).is_empty());
    }
}
