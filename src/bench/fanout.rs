//! `topgun bench fanout`: W writers put stamped values into one map while S subscribers hold
//! a live query on it. Each value carries its writer, a per-writer sequence and its send time
//! (µs since the run's epoch, one process so one clock), so a subscriber measures write →
//! delivery latency on the first message that brings it, whether `SERVER_BATCH_EVENT`,
//! `SERVER_EVENT` or `QUERY_UPDATE` (servers differ in which they send).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::clock::{Clock, SystemClock};
use crate::protocol::{Message, QuerySub, QuerySubPayload};
use crate::query::Query;

use super::conn::Conn;
use super::measure::{Counters, Latencies, Percentiles, Progress, Window};
use super::report::{Rows, human_count, ms_pair, sent_received};
use super::write::{KeyPlan, PING_EVERY, Pace, ValuePlan, WriterSpec, padding, run_writer};
use super::{BenchError, Context, FanoutArgs};

/// How long subscribers keep listening after the writers stop, for deliveries in flight.
const DELIVERY_GRACE: Duration = Duration::from_secs(2);
/// How long a subscription may take to be answered.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One write as a subscriber sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    writer: u64,
    sequence: u64,
    sent_micros: u64,
}

/// Reads the stamp a fanout writer put into a value.
fn stamp(value: &Value) -> Option<Stamp> {
    Some(Stamp {
        writer: value.get("w")?.as_u64()?,
        sequence: value.get("s")?.as_u64()?,
        sent_micros: value.get("t")?.as_u64()?,
    })
}

/// The stamped values a message delivers.
fn delivered_values(message: &Message) -> Vec<&Value> {
    match message {
        Message::ServerBatchEvent(batch) => batch
            .payload
            .events
            .iter()
            .filter_map(|e| e.record.as_ref()?.value.as_deref())
            .collect(),
        Message::ServerEvent(event) => event
            .payload
            .record
            .as_ref()
            .and_then(|r| r.value.as_deref())
            .into_iter()
            .collect(),
        Message::QueryUpdate(update) => vec![&update.payload.value],
        _ => Vec::new(),
    }
}

/// One subscriber's view: the newest sequence seen per writer (a write arriving twice, as
/// event and as query update, counts once) and the delivery latencies.
struct Subscriber {
    epoch: Instant,
    window: Window,
    newest: HashMap<u64, u64>,
    latencies: Latencies,
    delivered: u64,
}

impl Subscriber {
    fn on_message(&mut self, message: &Message, received: Instant, counters: &Counters) {
        if matches!(message, Message::Error(_)) {
            counters.error();
        }
        for stamp in delivered_values(message).into_iter().filter_map(stamp) {
            let newest = self.newest.entry(stamp.writer).or_insert(0);
            if stamp.sequence <= *newest {
                continue;
            }
            *newest = stamp.sequence;
            counters.deliveries.fetch_add(1, Ordering::Relaxed);
            let sent = self.epoch + Duration::from_micros(stamp.sent_micros);
            counters.note_latency(received.saturating_duration_since(sent));
            if self.window.measures(sent) {
                self.delivered += 1;
                self.latencies
                    .record(received.saturating_duration_since(sent));
            }
        }
    }
}

/// Sends `QUERY_SUB` for the whole map and waits for its `QUERY_RESP`.
async fn subscribe(conn: &mut Conn, query_id: String, map: &str) -> Result<(), BenchError> {
    conn.send(&Message::QuerySub(QuerySub {
        payload: QuerySubPayload {
            query_id: query_id.clone(),
            map_name: map.to_owned(),
            query: Query::default(),
            fields: None,
        },
    }))
    .await?;
    let answered = async {
        loop {
            match conn.recv().await? {
                Message::QueryResp(resp) if resp.payload.query_id == query_id => {
                    return match resp.payload.error {
                        Some(error) => Err(BenchError::Refused(error)),
                        None => Ok(()),
                    };
                }
                Message::Error(e) => return Err(BenchError::Refused(e.payload.message)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(SUBSCRIBE_TIMEOUT, answered)
        .await
        .map_err(|_| BenchError::Refused("no QUERY_RESP in time".to_owned()))?
}

/// Listens until the window (plus a grace period) ends.
async fn listen(
    conn: &mut Conn,
    mut subscriber: Subscriber,
    counters: &Counters,
) -> Result<Subscriber, BenchError> {
    let until = subscriber.window.end + DELIVERY_GRACE;
    let mut next_ping = Instant::now() + PING_EVERY;
    loop {
        tokio::select! {
            message = conn.recv() => {
                let message = message?;
                subscriber.on_message(&message, Instant::now(), counters);
            }
            _ = sleep_until(next_ping) => {
                conn.ping(SystemClock.now_millis()).await?;
                next_ping = Instant::now() + PING_EVERY;
            }
            _ = sleep_until(until) => return Ok(subscriber),
        }
    }
}

/// The `fanout` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanoutReport {
    pub writers: usize,
    pub subscribers: usize,
    pub subscribed: usize,
    pub measured_secs: f64,
    pub acked_writes: u64,
    pub writes_per_sec: f64,
    /// Writes acked in the window times subscribers: what should have been delivered.
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// Writer send → subscriber receipt.
    pub delivery_latency: Percentiles,
    /// Writer send → `OP_ACK`.
    pub write_latency: Percentiles,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub errors: u64,
}

impl FanoutReport {
    /// The table rows.
    pub fn rows(&self) -> Rows {
        vec![
            (
                "writers / subscribers".into(),
                format!(
                    "{} / {} of {}",
                    self.writers, self.subscribed, self.subscribers
                ),
            ),
            ("measured".into(), format!("{:.1} s", self.measured_secs)),
            (
                "writes".into(),
                format!(
                    "{} ({}/s)",
                    human_count(self.acked_writes as f64),
                    human_count(self.writes_per_sec)
                ),
            ),
            (
                "deliveries".into(),
                format!(
                    "{} of {} expected ({}/s)",
                    human_count(self.deliveries as f64),
                    human_count(self.expected_deliveries as f64),
                    human_count(self.deliveries_per_sec)
                ),
            ),
            (
                "delivery latency p50 / p99".into(),
                ms_pair(self.delivery_latency.p50_ms, self.delivery_latency.p99_ms),
            ),
            (
                "delivery latency p99.9 / max".into(),
                ms_pair(self.delivery_latency.p999_ms, self.delivery_latency.max_ms),
            ),
            (
                "write ack latency p50 / p99".into(),
                ms_pair(self.write_latency.p50_ms, self.write_latency.p99_ms),
            ),
            (
                "sent / received".into(),
                sent_received(self.sent_bytes, self.received_bytes),
            ),
            ("errors".into(), self.errors.to_string()),
        ]
    }
}

/// Runs `topgun bench fanout`.
pub async fn run(ctx: &Context, args: &FanoutArgs) -> Result<FanoutReport, BenchError> {
    let mut subscribers = Vec::new();
    for (index, mut conn) in ctx.open_many(args.subscribers).await {
        match subscribe(&mut conn, format!("{}-sub-{index}", ctx.run_id), &args.map).await {
            Ok(()) => subscribers.push(conn),
            Err(_) => ctx.counters.error(),
        }
    }
    let writers = ctx.open_many_from(args.subscribers, args.writers).await;
    if writers.is_empty() {
        return Err(BenchError::NoConnections);
    }
    let subscribed = subscribers.len();
    let _progress = Progress::start("fanout", ctx.counters.clone());
    let epoch = Instant::now();
    let window = Window::starting_now(ctx.warmup, ctx.duration);

    let mut listening = JoinSet::new();
    for mut conn in subscribers {
        let subscriber = Subscriber {
            epoch,
            window,
            newest: HashMap::new(),
            latencies: Latencies::new()?,
            delivered: 0,
        };
        let counters = ctx.counters.clone();
        listening.spawn(async move {
            let outcome = listen(&mut conn, subscriber, &counters).await;
            conn.close().await;
            outcome
        });
    }
    let writer_count = writers.len();
    let mut writing = JoinSet::new();
    for (position, (index, mut conn)) in writers.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ index as u64);
        let spec = WriterSpec {
            map: args.map.clone(),
            key_prefix: format!("w{index}-"),
            keys: KeyPlan::Random { space: args.keys },
            batch: args.batch,
            pipeline: 1,
            write_concern: None,
            pace: Pace::of(args.rate, writer_count, args.batch, position),
            value: ValuePlan::Stamped {
                writer: index as u64,
                epoch,
                padding: padding(&mut rng, args.value_bytes),
            },
            node_id: ctx.node_id(index),
            seed: rng.next_u64(),
        };
        let counters = ctx.counters.clone();
        writing.spawn(async move {
            let outcome = run_writer(&mut conn, spec, window, &counters).await;
            conn.close().await;
            outcome
        });
    }
    let traffic = window.measure(&ctx.counters).await;

    let mut write_latency = Latencies::new()?;
    let mut acked_writes = 0;
    while let Some(joined) = writing.join_next().await {
        match joined {
            Ok(Ok(outcome)) => {
                write_latency.add(&outcome.latencies);
                acked_writes += outcome.acked_ops;
            }
            Ok(Err(_)) | Err(_) => ctx.counters.error(),
        }
    }
    let mut delivery_latency = Latencies::new()?;
    let mut deliveries = 0;
    while let Some(joined) = listening.join_next().await {
        match joined {
            Ok(Ok(subscriber)) => {
                delivery_latency.add(&subscriber.latencies);
                deliveries += subscriber.delivered;
            }
            Ok(Err(_)) | Err(_) => ctx.counters.error(),
        }
    }
    let measured_secs = window.measured().as_secs_f64().max(f64::EPSILON);
    Ok(FanoutReport {
        writers: args.writers,
        subscribers: args.subscribers,
        subscribed,
        measured_secs,
        acked_writes,
        writes_per_sec: acked_writes as f64 / measured_secs,
        expected_deliveries: acked_writes * subscribed as u64,
        deliveries,
        deliveries_per_sec: deliveries as f64 / measured_secs,
        delivery_latency: delivery_latency.percentiles(),
        write_latency: write_latency.percentiles(),
        sent_bytes: traffic.sent_bytes,
        received_bytes: traffic.received_bytes,
        errors: ctx.counters.snapshot().errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(value: Value) -> Message {
        serde_json::from_value(value).unwrap()
    }

    fn subscriber() -> Subscriber {
        let epoch = Instant::now();
        Subscriber {
            epoch,
            window: Window {
                start: epoch,
                measure_from: epoch,
                end: epoch + Duration::from_secs(60),
            },
            newest: HashMap::new(),
            latencies: Latencies::new().unwrap(),
            delivered: 0,
        }
    }

    fn batch_event(values: &[Value]) -> Message {
        let events: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({
                    "mapName": "m", "key": format!("k{i}"), "eventType": "PUT",
                    "record": {"value": v, "timestamp": {"millis": 1, "counter": 0, "nodeId": "n"}}
                })
            })
            .collect();
        message(json!({"type": "SERVER_BATCH_EVENT", "payload": {"events": events}}))
    }

    #[test]
    fn reads_stamps_from_events_and_query_updates() {
        let v = json!({"w": 1, "s": 2, "t": 3, "p": "x"});
        let expected = Some(Stamp {
            writer: 1,
            sequence: 2,
            sent_micros: 3,
        });
        assert_eq!(
            stamp(delivered_values(&batch_event(std::slice::from_ref(&v)))[0]),
            expected
        );
        let update = message(json!({"type": "QUERY_UPDATE", "payload": {
            "queryId": "q", "key": "k", "value": v, "changeType": "UPDATE"}}));
        assert_eq!(stamp(delivered_values(&update)[0]), expected);
        assert_eq!(stamp(&json!({"v": "plain"})), None);
    }

    #[test]
    fn a_write_delivered_twice_counts_once() {
        let counters = Counters::default();
        let mut s = subscriber();
        let v = json!({"w": 0, "s": 1, "t": 10});
        let received = s.epoch + Duration::from_millis(5);
        s.on_message(&batch_event(std::slice::from_ref(&v)), received, &counters);
        let update = message(json!({"type": "QUERY_UPDATE", "payload": {
            "queryId": "q", "key": "k0", "value": v, "changeType": "ENTER"}}));
        s.on_message(&update, received, &counters);
        assert_eq!(s.delivered, 1);
        assert_eq!(counters.snapshot().deliveries, 1);
        let p = s.latencies.percentiles();
        assert!((p.max_ms - 4.99).abs() < 0.05, "{p:?}");
    }

    #[test]
    fn each_writer_is_tracked_separately() {
        let counters = Counters::default();
        let mut s = subscriber();
        let values = [
            json!({"w": 0, "s": 1, "t": 0}),
            json!({"w": 1, "s": 1, "t": 0}),
            json!({"w": 0, "s": 2, "t": 0}),
        ];
        s.on_message(&batch_event(&values), s.epoch, &counters);
        assert_eq!(s.delivered, 3);
    }
}
