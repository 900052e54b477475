//! `topgun bench write`, and the writer loop the other workloads reuse: a connection sends
//! `OP_BATCH`es shaped like the TypeScript client's (decimal op ids, `PUT` ops with LWW
//! records on the writer's own HLC) and matches each `OP_ACK` (`lastId` acks every op ≤ it)
//! to the batches in flight, recording send → ack latency.
//!
//! Under a rate limit each connection keeps its own fixed schedule, its first send offset so
//! the connections' sends spread evenly instead of arriving together, and latency counts from
//! when a batch was due rather than when it went out: a batch held back because the previous
//! ack was late has waited for the server too (coordinated omission).
//!
//! Batches are written straight to msgpack, byte for byte what `encode_msgpack` makes of the
//! same `OP_BATCH` (a test holds them equal), without building messages or JSON values per
//! op: the load generator shares the server's cores, so its CPU per op is kept small.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::clock::{Clock, SystemClock};
use crate::hash::decimal_digits;
use crate::protocol::codec::write_integer;
use crate::protocol::{Message, WriteConcern, parse_op_id};

use super::conn::Conn;
use super::measure::{Counters, Latencies, Percentiles, Progress, Window, cpu_seconds};
use super::report::{Rows, human_count, ms_pair, sent_received};
use super::{BenchError, Context, WriteArgs};

/// How long a batch may wait for its ack before it counts as lost.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a writer waits for outstanding acks after it stops sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers close authenticated connections without a `PING` for 20 s (TopGun: 20 s).
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// Which keys a writer writes.
pub enum KeyPlan {
    /// Uniformly random keys `0..space`, forever (until the window ends).
    Random { space: u64 },
    /// Exactly these keys, in order, then the writer stops.
    Listed(VecDeque<u64>),
}

/// What value a writer puts.
#[derive(Clone)]
pub enum ValuePlan {
    /// `{"v": <padding>}`.
    Padding(String),
    /// `{"w": writer, "s": sequence, "t": µs since epoch, "p": <padding>}`, so a subscriber
    /// can tell which write it received and when it was sent.
    Stamped {
        writer: u64,
        epoch: Instant,
        padding: String,
    },
}

/// Everything one writer needs.
pub struct WriterSpec {
    pub map: String,
    pub key_prefix: String,
    pub keys: KeyPlan,
    pub batch: usize,
    /// Batches in flight at most (1 = fire-and-wait).
    pub pipeline: usize,
    pub write_concern: Option<WriteConcern>,
    /// The send schedule under a rate limit.
    pub pace: Option<Pace>,
    pub value: ValuePlan,
    /// The writer's HLC node id (unique per connection).
    pub node_id: String,
    pub seed: u64,
}

/// One connection's share of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The pause between this connection's batches.
    pub every: Duration,
    /// When its first batch is due, after the writer starts.
    pub phase: Duration,
}

/// When a writer's next batch is due.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    next: Instant,
    pace: Option<Pace>,
}

impl Schedule {
    fn new(start: Instant, pace: Option<Pace>) -> Self {
        let next = start + pace.map_or(Duration::ZERO, |p| p.phase);
        Self { next, pace }
    }

    /// Notes a batch sent at `sent`; returns when it was due, which its latency counts from.
    /// Unpaced, a batch is due when it goes out and the next one at once. Paced, a late
    /// connection catches up rather than moving its schedule, so the offered rate stays the
    /// one asked for and the wait for a late ack is part of the next batch's latency.
    fn sent(&mut self, sent: Instant) -> Instant {
        match self.pace {
            None => {
                self.next = sent;
                sent
            }
            Some(pace) => {
                let due = self.next;
                self.next += pace.every;
                due
            }
        }
    }

    /// The batches due before `end` that were never sent, each with its due time and how long
    /// it had waited by `end` (none unpaced: an unpaced batch is due when it goes out).
    fn unsent_by(&self, end: Instant) -> Vec<(Instant, Duration)> {
        let Some(pace) = self.pace else {
            return Vec::new();
        };
        let mut unsent = Vec::new();
        let mut due = self.next;
        while due < end {
            unsent.push((due, end - due));
            due += pace.every;
        }
        unsent
    }
}

impl Pace {
    /// The schedule of connection `index` of `connections` that keeps their total at `rate`
    /// ops/s (`None` for no limit). Phases step by `every / connections`, so that the
    /// connections' batches arrive one by one rather than all at once every `every`.
    pub fn of(rate: u64, connections: usize, batch: usize, index: usize) -> Option<Self> {
        let connections = connections.max(1);
        let every =
            Duration::from_secs_f64((connections * batch.max(1)) as f64 / rate.max(1) as f64);
        let phase = every.mul_f64((index % connections) as f64 / connections as f64);
        (rate > 0).then_some(Self { every, phase })
    }
}

/// What one writer achieved within the measurement window.
#[derive(Debug)]
pub struct WriterOutcome {
    pub latencies: Latencies,
    /// Ops sent in the window and acknowledged.
    pub acked_ops: u64,
    /// Ops sent in the window that were never acknowledged.
    pub unacked_ops: u64,
    /// Ops of paced batches due in the window but never sent: the connection was still
    /// catching up on late acks when the window closed.
    pub unsent_ops: u64,
}

/// A batch on its way.
struct InFlight {
    last_id: u64,
    sent: Instant,
    /// Where its latency counts from, and what decides whether the window measures it: its
    /// due time under a rate limit (a late connection's catch-up sends are not extra load),
    /// else `sent`.
    due: Instant,
    ops: u64,
}

/// One writer's state: its key/value choices, op ids and HLC.
struct Writer {
    spec: WriterSpec,
    rng: ChaCha8Rng,
    next_id: u64,
    sequence: u64,
    counter: u32,
    last_millis: u64,
    /// The encoded `writeConcern` entry of every batch (empty without one).
    write_concern: Vec<u8>,
    /// The bytes of an op that never change, between the variable ones (see [`OpPieces`]).
    pieces: OpPieces,
    /// The size of the last batch, to allocate the next one at once.
    last_len: usize,
}

/// The constant stretches of an encoded `PUT` op, so that writing one costs copies and the
/// digits of its id, key and timestamp, not an encoder call per name.
struct OpPieces {
    /// The op map's header and the `id` name.
    head: Vec<u8>,
    /// `mapName` and its value, then the `key` name.
    map_then_key: Vec<u8>,
    /// `opType: PUT`, the `record` map's header and the `value` name.
    record_head: Vec<u8>,
    /// `{"v": padding}` of [`ValuePlan::Padding`], the same for every op.
    padding_value: Vec<u8>,
    /// `timestamp`, its map's header and the `millis` name.
    timestamp_head: Vec<u8>,
    /// The `counter` name.
    counter: Vec<u8>,
    /// `nodeId` and its value.
    node: Vec<u8>,
}

impl OpPieces {
    fn new(spec: &WriterSpec) -> Result<Self, BenchError> {
        let mut head = Vec::new();
        write_map_len(&mut head, 5)?;
        write_str(&mut head, "id")?;
        let mut map_then_key = Vec::new();
        write_str(&mut map_then_key, "mapName")?;
        write_str(&mut map_then_key, &spec.map)?;
        write_str(&mut map_then_key, "key")?;
        let mut record_head = Vec::new();
        write_str(&mut record_head, "opType")?;
        write_str(&mut record_head, "PUT")?;
        write_str(&mut record_head, "record")?;
        write_map_len(&mut record_head, 2)?;
        write_str(&mut record_head, "value")?;
        let mut padding_value = Vec::new();
        if let ValuePlan::Padding(padding) = &spec.value {
            write_map_len(&mut padding_value, 1)?;
            write_str(&mut padding_value, "v")?;
            write_str(&mut padding_value, padding)?;
        }
        let mut timestamp_head = Vec::new();
        write_str(&mut timestamp_head, "timestamp")?;
        write_map_len(&mut timestamp_head, 3)?;
        write_str(&mut timestamp_head, "millis")?;
        let mut counter = Vec::new();
        write_str(&mut counter, "counter")?;
        let mut node = Vec::new();
        write_str(&mut node, "nodeId")?;
        write_str(&mut node, &spec.node_id)?;
        Ok(Self {
            head,
            map_then_key,
            record_head,
            padding_value,
            timestamp_head,
            counter,
            node,
        })
    }
}

impl Writer {
    fn new(spec: WriterSpec) -> Result<Self, BenchError> {
        let rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let mut write_concern = Vec::new();
        if let Some(level) = spec.write_concern {
            write_str(&mut write_concern, "writeConcern")?;
            rmp_serde::encode::write_named(&mut write_concern, &level).map_err(encode_error)?;
        }
        let pieces = OpPieces::new(&spec)?;
        Ok(Self {
            spec,
            rng,
            next_id: 1,
            sequence: 0,
            counter: 0,
            last_millis: 0,
            write_concern,
            pieces,
            last_len: 0,
        })
    }

    fn has_more(&self) -> bool {
        match &self.spec.keys {
            KeyPlan::Random { .. } => true,
            KeyPlan::Listed(keys) => !keys.is_empty(),
        }
    }

    /// The next HLC `(millis, counter)` on the writer's node: wall-clock millis, the counter
    /// breaking ties.
    fn tick(&mut self) -> (u64, u32) {
        let now = SystemClock.now_millis();
        if now > self.last_millis {
            self.last_millis = now;
            self.counter = 0;
        } else {
            self.counter = self.counter.wrapping_add(1);
        }
        (self.last_millis, self.counter)
    }

    fn next_key(&mut self) -> Option<u64> {
        match &mut self.spec.keys {
            KeyPlan::Random { space } => Some(self.rng.random_range(0..(*space).max(1))),
            KeyPlan::Listed(keys) => keys.pop_front(),
        }
    }

    /// The next `OP_BATCH` (encoded), the id of its last op and its op count, or `None`
    /// when done.
    fn next_batch(&mut self) -> Result<Option<(Vec<u8>, u64, u64)>, BenchError> {
        let wanted = self.spec.batch.max(1);
        let mut keys = Vec::with_capacity(wanted);
        while keys.len() < wanted {
            let Some(key) = self.next_key() else { break };
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.last_len);
        write_map_len(&mut out, 2)?;
        write_str(&mut out, "type")?;
        write_str(&mut out, "OP_BATCH")?;
        write_str(&mut out, "payload")?;
        write_map_len(&mut out, if self.write_concern.is_empty() { 1 } else { 2 })?;
        write_str(&mut out, "ops")?;
        let count = u32::try_from(keys.len()).map_err(|e| BenchError::Encode(e.to_string()))?;
        rmp::encode::write_array_len(&mut out, count).map_err(encode_error)?;
        for key in keys {
            self.write_op(&mut out, key)?;
        }
        out.extend_from_slice(&self.write_concern);
        self.last_len = out.len();
        Ok(Some((out, self.next_id - 1, u64::from(count))))
    }

    /// One `PUT` op as `ClientOp` serializes it: `id`, `mapName`, `key`, `opType`, `record`.
    fn write_op(&mut self, out: &mut Vec<u8>, key: u64) -> Result<(), BenchError> {
        let id = self.next_id;
        self.next_id += 1;
        out.extend_from_slice(&self.pieces.head);
        write_decimal_str(out, "", id)?;
        out.extend_from_slice(&self.pieces.map_then_key);
        write_decimal_str(out, &self.spec.key_prefix, key)?;
        out.extend_from_slice(&self.pieces.record_head);
        self.write_value(out)?;
        let (millis, counter) = self.tick();
        out.extend_from_slice(&self.pieces.timestamp_head);
        write_number(out, millis)?;
        out.extend_from_slice(&self.pieces.counter);
        write_number(out, u64::from(counter))?;
        out.extend_from_slice(&self.pieces.node);
        Ok(())
    }

    /// The next op's value (see [`ValuePlan`]).
    fn write_value(&mut self, out: &mut Vec<u8>) -> Result<(), BenchError> {
        self.sequence += 1;
        match &self.spec.value {
            ValuePlan::Padding(_) => {
                out.extend_from_slice(&self.pieces.padding_value);
                Ok(())
            }
            ValuePlan::Stamped {
                writer,
                epoch,
                padding,
            } => {
                let sent = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                write_map_len(out, 4)?;
                for (name, number) in [("w", *writer), ("s", self.sequence), ("t", sent)] {
                    write_str(out, name)?;
                    write_number(out, number)?;
                }
                write_str(out, "p")?;
                write_str(out, padding)
            }
        }
    }
}

fn encode_error<E: std::fmt::Display>(error: E) -> BenchError {
    BenchError::Encode(error.to_string())
}

fn write_str(out: &mut Vec<u8>, text: &str) -> Result<(), BenchError> {
    rmp::encode::write_str(out, text).map_err(encode_error)
}

/// The string `prefix` followed by the decimal digits of `number`, without formatting
/// machinery (two per op).
fn write_decimal_str(out: &mut Vec<u8>, prefix: &str, number: u64) -> Result<(), BenchError> {
    let mut buf = [0u8; 20];
    let digits = decimal_digits(number, &mut buf);
    let len = u32::try_from(prefix.len() + digits.len()).map_err(encode_error)?;
    rmp::encode::write_str_len(out, len).map_err(encode_error)?;
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(digits);
    Ok(())
}

fn write_map_len(out: &mut Vec<u8>, len: u32) -> Result<(), BenchError> {
    rmp::encode::write_map_len(out, len)
        .map(|_| ())
        .map_err(encode_error)
}

/// A number as `encode_msgpack` writes it (float64 from 2³² on, as the JS client expects).
fn write_number(out: &mut Vec<u8>, number: u64) -> Result<(), BenchError> {
    write_integer(out, i128::from(number)).map_err(encode_error)
}

/// Runs one writer on `conn` until the window ends (or its keys run out), then waits for
/// the acks still outstanding.
pub async fn run_writer(
    conn: &mut Conn,
    spec: WriterSpec,
    window: Window,
    counters: &Counters,
) -> Result<WriterOutcome, BenchError> {
    let pipeline = spec.pipeline.max(1);
    let mut schedule = Schedule::new(Instant::now(), spec.pace);
    let mut writer = Writer::new(spec)?;
    let mut outcome = WriterOutcome {
        latencies: Latencies::new()?,
        acked_ops: 0,
        unacked_ops: 0,
        unsent_ops: 0,
    };
    let batch_ops = writer.spec.batch.max(1) as u64;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let sending = Instant::now() < window.end && writer.has_more();
        if !sending {
            if in_flight.is_empty() {
                break;
            }
            drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
        }
        let can_send = sending && in_flight.len() < pipeline;
        let oldest = in_flight.front().map(|f| f.sent + ACK_TIMEOUT);
        tokio::select! {
            biased;
            message = conn.recv() => {
                let message = message?;
                on_message(&message, &mut in_flight, &window, &mut outcome, counters);
            }
            _ = sleep_until(schedule.next), if can_send => {
                // Unpaced, every free slot of the pipeline is filled at once, in one write:
                // a write per batch was a third of the generator's CPU, on shared cores.
                let free = if schedule.pace.is_some() { 1 } else { pipeline - in_flight.len() };
                for _ in 0..free {
                    let Some((bytes, last_id, ops)) = writer.next_batch()? else { break };
                    let sent = Instant::now();
                    let due = schedule.sent(sent);
                    conn.feed_bytes(bytes).await?;
                    in_flight.push_back(InFlight { last_id, sent, due, ops });
                }
                conn.flush().await?;
            }
            _ = sleep_until(window.end), if sending => {}
            _ = sleep_until(oldest.unwrap_or(window.end)), if oldest.is_some() => {
                if let Some(lost) = in_flight.pop_front() {
                    counters.error();
                    if window.measures(lost.due) {
                        outcome.unacked_ops += lost.ops;
                    }
                }
            }
            _ = sleep_until(drain_deadline.unwrap_or(window.end)), if drain_deadline.is_some() => {
                for lost in in_flight.drain(..).filter(|f| window.measures(f.due)) {
                    outcome.unacked_ops += lost.ops;
                }
                break;
            }
            _ = sleep_until(next_ping) => {
                conn.ping(SystemClock.now_millis()).await?;
                next_ping = Instant::now() + PING_EVERY;
            }
        }
    }
    // A batch that never went out has waited at least until the window closed: leaving it
    // out would flatter the latency exactly when the server falls behind.
    for (due, waited) in schedule.unsent_by(window.end) {
        if window.measures(due) {
            outcome.unsent_ops += batch_ops;
            outcome.latencies.record(waited);
        }
    }
    Ok(outcome)
}

/// Matches an `OP_ACK` to the batches it acknowledges; counts `ERROR`s and rejections.
fn on_message(
    message: &Message,
    in_flight: &mut VecDeque<InFlight>,
    window: &Window,
    outcome: &mut WriterOutcome,
    counters: &Counters,
) {
    match message {
        Message::OpAck(ack) => {
            let failed = ack
                .payload
                .results
                .iter()
                .flatten()
                .filter(|r| !r.success)
                .count();
            for _ in 0..failed {
                counters.error();
            }
            let Ok(last_id) = parse_op_id(&ack.payload.last_id) else {
                counters.error();
                return;
            };
            let now = Instant::now();
            while in_flight.front().is_some_and(|f| f.last_id <= last_id) {
                let Some(done) = in_flight.pop_front() else {
                    break;
                };
                counters.acked_ops.fetch_add(done.ops, Ordering::Relaxed);
                counters.note_latency(now - done.due);
                if window.measures(done.due) {
                    outcome.acked_ops += done.ops;
                    outcome.latencies.record(now - done.due);
                }
            }
        }
        Message::Error(_) | Message::OpRejected(_) => counters.error(),
        _ => {}
    }
}

/// A printable padding of `bytes` random alphanumeric characters.
pub fn padding(rng: &mut impl Rng, bytes: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..bytes)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The `write` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteReport {
    pub connections: usize,
    pub connected: usize,
    pub batch_ops: usize,
    pub keys: u64,
    pub value_bytes: usize,
    /// `"fire-and-wait"` or `"pipeline N"`.
    pub mode: String,
    /// The `--rate` offered, in ops/s (none: as fast as acks allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_ops_per_sec: Option<u64>,
    pub write_concern: Option<WriteConcern>,
    pub measured_secs: f64,
    pub acked_ops: u64,
    pub acked_ops_per_sec: f64,
    pub unacked_ops: u64,
    /// Under `--rate`: ops due in the window that a lagging connection never sent (their
    /// wait until the window closed is in `batch_latency`).
    #[serde(default)]
    pub unsent_ops: u64,
    /// Send → `OP_ACK` of each batch; under `--rate`, from when the batch was due.
    pub batch_latency: Percentiles,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub errors: u64,
    /// CPU the server process (`--server-pid`) spent per acked op while measured, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_op: Option<f64>,
    /// Cores the server process kept busy on average while measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cores: Option<f64>,
    /// CPU this load generator spent per acked op while measured, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator_cpu_us_per_op: Option<f64>,
}

impl WriteReport {
    /// The table rows.
    pub fn rows(&self) -> Rows {
        let mut rows: Rows = vec![
            (
                "connections".into(),
                format!("{} of {}", self.connected, self.connections),
            ),
            (
                "mode".into(),
                match self.offered_ops_per_sec {
                    Some(rate) => format!("{}, offered {}/s", self.mode, human_count(rate as f64)),
                    None => self.mode.clone(),
                },
            ),
            (
                "write concern".into(),
                self.write_concern
                    .map_or_else(|| "default".to_owned(), |wc| format!("{wc:?}")),
            ),
            (
                "batch / keys / value".into(),
                format!(
                    "{} ops / {} keys / {} B",
                    self.batch_ops, self.keys, self.value_bytes
                ),
            ),
            ("measured".into(), format!("{:.1} s", self.measured_secs)),
            (
                "acked ops".into(),
                format!(
                    "{} ({}/s)",
                    human_count(self.acked_ops as f64),
                    human_count(self.acked_ops_per_sec)
                ),
            ),
            ("unacked ops".into(), self.unacked_ops.to_string()),
        ];
        if self.offered_ops_per_sec.is_some() {
            // The other ops the rate asked for that were not acked.
            rows.push(("unsent ops (late)".into(), self.unsent_ops.to_string()));
        }
        rows.extend([
            (
                "ack latency p50 / p99".into(),
                ms_pair(self.batch_latency.p50_ms, self.batch_latency.p99_ms),
            ),
            (
                "ack latency p99.9 / max".into(),
                ms_pair(self.batch_latency.p999_ms, self.batch_latency.max_ms),
            ),
            (
                "sent / received".into(),
                sent_received(self.sent_bytes, self.received_bytes),
            ),
            ("errors".into(), self.errors.to_string()),
        ]);
        if let (Some(per_op), Some(cores)) = (self.server_cpu_us_per_op, self.server_cores) {
            rows.push((
                "server CPU / acked op".into(),
                format!("{per_op:.1} µs ({cores:.2} cores)"),
            ));
        }
        if let Some(per_op) = self.generator_cpu_us_per_op {
            rows.push(("generator CPU / acked op".into(), format!("{per_op:.1} µs")));
        }
        rows
    }
}

/// Runs `topgun bench write`.
pub async fn run(ctx: &Context, args: &WriteArgs) -> Result<WriteReport, BenchError> {
    let pipeline = if args.wait { 1 } else { args.pipeline.max(1) };
    let conns = ctx.open_many(args.connections).await;
    let connected = conns.len();
    if connected == 0 {
        return Err(BenchError::NoConnections);
    }
    let _progress = Progress::start("write", ctx.counters.clone());
    let window = Window::starting_now(ctx.warmup, ctx.duration);
    let mut tasks = JoinSet::new();
    // The rate is shared by the connections that opened, whichever failed.
    for (position, (index, mut conn)) in conns.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ index as u64);
        let spec = WriterSpec {
            map: args.map.clone(),
            key_prefix: "k".to_owned(),
            keys: KeyPlan::Random { space: args.keys },
            batch: args.batch,
            pipeline,
            write_concern: args.write_concern,
            pace: Pace::of(args.rate, connected, args.batch, position),
            value: ValuePlan::Padding(padding(&mut rng, args.value_bytes)),
            node_id: ctx.node_id(index),
            seed: rng.next_u64(),
        };
        let counters = ctx.counters.clone();
        tasks.spawn(async move {
            let outcome = run_writer(&mut conn, spec, window, &counters).await;
            conn.close().await;
            outcome
        });
    }
    let server_pid = args.server_pid;
    let (traffic, cpu_before, cpu_after) = window
        .measure_with(&ctx.counters, || {
            (
                server_pid.and_then(cpu_seconds),
                cpu_seconds(std::process::id()),
            )
        })
        .await;
    let mut latencies = Latencies::new()?;
    let (mut acked_ops, mut unacked_ops, mut unsent_ops) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(outcome)) => {
                latencies.add(&outcome.latencies);
                acked_ops += outcome.acked_ops;
                unacked_ops += outcome.unacked_ops;
                unsent_ops += outcome.unsent_ops;
            }
            Ok(Err(_)) | Err(_) => ctx.counters.error(),
        }
    }
    let measured_secs = window.measured().as_secs_f64();
    let spent = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    let per_op = |seconds: f64| seconds * 1e6 / acked_ops.max(1) as f64;
    let server_cpu = spent(cpu_before.0, cpu_after.0);
    Ok(WriteReport {
        connections: args.connections,
        connected,
        batch_ops: args.batch,
        keys: args.keys,
        value_bytes: args.value_bytes,
        mode: if pipeline == 1 {
            "fire-and-wait".to_owned()
        } else {
            format!("pipeline {pipeline}")
        },
        offered_ops_per_sec: (args.rate > 0).then_some(args.rate),
        write_concern: args.write_concern,
        measured_secs,
        acked_ops,
        acked_ops_per_sec: acked_ops as f64 / measured_secs.max(f64::EPSILON),
        unacked_ops,
        unsent_ops,
        batch_latency: latencies.percentiles(),
        sent_bytes: traffic.sent_bytes,
        received_bytes: traffic.received_bytes,
        errors: ctx.counters.snapshot().errors,
        server_cpu_us_per_op: server_cpu.map(per_op),
        server_cores: server_cpu.map(|seconds| seconds / measured_secs.max(f64::EPSILON)),
        generator_cpu_us_per_op: spent(cpu_before.1, cpu_after.1).map(per_op),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::{OpBatchPayload, OpType, encode_msgpack};

    fn spec(keys: KeyPlan, batch: usize) -> WriterSpec {
        WriterSpec {
            map: "m".to_owned(),
            key_prefix: "k".to_owned(),
            keys,
            batch,
            pipeline: 1,
            write_concern: None,
            pace: None,
            value: ValuePlan::Padding("xx".to_owned()),
            node_id: "bench-1".to_owned(),
            seed: 3,
        }
    }

    impl Writer {
        fn new_ok(spec: WriterSpec) -> Self {
            Writer::new(spec).unwrap()
        }
    }

    fn decode_batch(bytes: &[u8]) -> OpBatchPayload {
        match crate::protocol::decode(crate::protocol::Frame::Binary(bytes)) {
            Ok(Message::OpBatch(b)) => b.payload,
            other => panic!("not an OP_BATCH: {other:?}"),
        }
    }

    #[test]
    fn batches_number_ops_consecutively_and_name_the_last() {
        let mut w = Writer::new_ok(spec(KeyPlan::Random { space: 10 }, 3));
        let (bytes, last, count) = w.next_batch().unwrap().unwrap();
        assert_eq!((last, count), (3, 3));
        let payload = decode_batch(&bytes);
        let ids: Vec<_> = payload.ops.iter().map(|o| o.id.clone().unwrap()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert!(payload.ops.iter().all(|o| o.op_type == Some(OpType::Put)));
        let (_, last, _) = w.next_batch().unwrap().unwrap();
        assert_eq!(last, 6);
    }

    /// The batch re-encoded from its decoded message: the encoder's own bytes.
    fn reencoded(bytes: &[u8]) -> Vec<u8> {
        let message = crate::protocol::decode(crate::protocol::Frame::Binary(bytes)).unwrap();
        encode_msgpack(&message).unwrap()
    }

    #[test]
    fn batches_are_byte_for_byte_what_the_encoder_writes() {
        let levels = [
            None,
            Some(WriteConcern::FireAndForget),
            Some(WriteConcern::Persisted),
        ];
        for (index, write_concern) in levels.into_iter().enumerate() {
            let mut s = spec(KeyPlan::Random { space: 100_000 }, 3 + index * 7);
            s.write_concern = write_concern;
            s.node_id = format!("bench-node-{index}");
            s.key_prefix = "key-".to_owned();
            s.value = ValuePlan::Padding("p".repeat(40 * index));
            let mut w = Writer::new_ok(s);
            for _ in 0..3 {
                let (bytes, _, _) = w.next_batch().unwrap().unwrap();
                assert_eq!(reencoded(&bytes), bytes);
            }
        }
        let mut s = spec(KeyPlan::Listed(VecDeque::from([1, 2, 3])), 2);
        s.value = ValuePlan::Stamped {
            writer: 70_000,
            epoch: Instant::now(),
            padding: "q".repeat(300),
        };
        let mut w = Writer::new_ok(s);
        while let Some((bytes, _, _)) = w.next_batch().unwrap() {
            assert_eq!(reencoded(&bytes), bytes);
        }
    }

    #[test]
    fn a_batch_carries_the_ops_spelled_out() {
        let mut s = spec(KeyPlan::Listed(VecDeque::from([42])), 5);
        s.write_concern = Some(WriteConcern::Applied);
        let mut w = Writer::new_ok(s);
        let (bytes, _, _) = w.next_batch().unwrap().unwrap();
        let payload = decode_batch(&bytes);
        assert_eq!(payload.write_concern, Some(WriteConcern::Applied));
        let op = &payload.ops[0];
        assert_eq!((op.map_name.as_str(), op.key.as_str()), ("m", "k42"));
        let record = op.record.as_ref().unwrap();
        assert_eq!(record.value, Some(json!({"v": "xx"})).map(Into::into));
        assert_eq!(record.timestamp.node_id, "bench-1");
        assert_eq!(
            (record.timestamp.millis, record.timestamp.counter),
            (w.last_millis, w.counter)
        );
    }

    #[test]
    fn timestamps_strictly_increase_within_a_writer() {
        let mut w = Writer::new_ok(spec(KeyPlan::Random { space: 10 }, 1));
        let stamps: Vec<_> = (0..100).map(|_| w.tick()).collect();
        assert!(stamps.windows(2).all(|p| p[0] < p[1]));
    }

    #[test]
    fn listed_keys_are_written_once_then_the_writer_stops() {
        let mut w = Writer::new_ok(spec(KeyPlan::Listed(VecDeque::from([4, 7, 9])), 2));
        let (first, _, _) = w.next_batch().unwrap().unwrap();
        let (second, _, count) = w.next_batch().unwrap().unwrap();
        assert_eq!(count, 1);
        assert!(w.next_batch().unwrap().is_none());
        assert!(!w.has_more());
        let keys: Vec<_> = decode_batch(&first)
            .ops
            .into_iter()
            .chain(decode_batch(&second).ops)
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["k4", "k7", "k9"]);
    }

    #[test]
    fn stamped_values_carry_writer_and_sequence() {
        let mut s = spec(KeyPlan::Random { space: 1 }, 2);
        s.value = ValuePlan::Stamped {
            writer: 5,
            epoch: Instant::now(),
            padding: "p".to_owned(),
        };
        let mut w = Writer::new_ok(s);
        let (bytes, _, _) = w.next_batch().unwrap().unwrap();
        let ops = decode_batch(&bytes).ops;
        let value = ops[1].record.as_ref().unwrap().value.clone().unwrap();
        assert_eq!(value["w"], 5);
        assert_eq!(value["s"], 2);
        assert!(value["t"].is_u64());
    }

    #[test]
    fn rate_limit_spreads_over_connections() {
        assert_eq!(Pace::of(0, 10, 10, 0), None);
        let paces: Vec<_> = (0..10).filter_map(|i| Pace::of(1_000, 10, 10, i)).collect();
        assert!(paces.iter().all(|p| p.every == Duration::from_millis(100)));
        let phases: Vec<_> = paces.iter().map(|p| p.phase.as_millis()).collect();
        assert_eq!(phases, (0..10).map(|i| i * 10).collect::<Vec<_>>());
    }

    #[test]
    fn a_late_paced_batch_keeps_its_due_time_and_the_schedule() {
        let start = Instant::now();
        let every = Duration::from_millis(10);
        let pace = Pace {
            every,
            phase: Duration::from_millis(3),
        };
        let mut schedule = Schedule::new(start, Some(pace));
        let first_due = start + Duration::from_millis(3);
        assert_eq!(schedule.next, first_due);
        // Sent 25 ms late (its ack held it back): latency counts from when it was due, and
        // the next batches stay on the original grid, so they go out at once to catch up.
        assert_eq!(
            schedule.sent(first_due + Duration::from_millis(25)),
            first_due
        );
        assert_eq!(schedule.next, first_due + every);
        assert_eq!(
            schedule.sent(first_due + Duration::from_millis(26)),
            first_due + every
        );
        assert_eq!(schedule.next, first_due + 2 * every);

        // When the window closes at +40 ms, the batches due at +23 and +33 were never sent;
        // each has waited until then.
        let end = start + Duration::from_millis(40);
        assert_eq!(
            schedule.unsent_by(end),
            vec![
                (first_due + 2 * every, Duration::from_millis(17)),
                (first_due + 3 * every, Duration::from_millis(7)),
            ]
        );

        let mut unpaced = Schedule::new(start, None);
        let later = start + Duration::from_millis(7);
        assert_eq!(unpaced.sent(later), later);
        assert_eq!(unpaced.next, later);
        assert!(unpaced.unsent_by(end).is_empty());
    }

    #[test]
    fn padding_has_the_requested_length() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = padding(&mut rng, 37);
        assert_eq!(p.len(), 37);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[tokio::test]
    async fn an_ack_settles_every_batch_up_to_its_id() {
        let counters = Counters::default();
        let window = Window::starting_now(Duration::ZERO, Duration::from_secs(60));
        let mut outcome = WriterOutcome {
            latencies: Latencies::new().unwrap(),
            acked_ops: 0,
            unacked_ops: 0,
            unsent_ops: 0,
        };
        let sent = Instant::now();
        let mut in_flight: VecDeque<InFlight> = [(10, 10), (20, 10), (30, 10)]
            .into_iter()
            .map(|(last_id, ops)| InFlight {
                last_id,
                sent,
                due: sent,
                ops,
            })
            .collect();
        let ack: Message = serde_json::from_value(json!({
            "type": "OP_ACK", "payload": {"lastId": "20"}
        }))
        .unwrap();
        on_message(&ack, &mut in_flight, &window, &mut outcome, &counters);
        assert_eq!(in_flight.len(), 1);
        assert_eq!(outcome.acked_ops, 20);
        assert_eq!(outcome.latencies.count(), 2);
        assert_eq!(counters.snapshot().acked_ops, 20);
    }

    #[tokio::test]
    async fn a_paced_ack_counts_from_the_due_time_in_the_window_it_was_due() {
        let counters = Counters::default();
        let now = Instant::now();
        let window = Window {
            start: now - Duration::from_millis(600),
            measure_from: now - Duration::from_millis(100),
            end: now + Duration::from_secs(60),
        };
        let mut outcome = WriterOutcome {
            latencies: Latencies::new().unwrap(),
            acked_ops: 0,
            unacked_ops: 0,
            unsent_ops: 0,
        };
        let sent = now - Duration::from_millis(50);
        let in_flight = |due| InFlight {
            last_id: 1,
            sent,
            due,
            ops: 10,
        };
        let ack: Message = serde_json::from_value(json!({
            "type": "OP_ACK", "payload": {"lastId": "1"}
        }))
        .unwrap();
        // Due in the warm-up, sent after it: a catch-up send, not measured load.
        let mut queue = VecDeque::from([in_flight(window.start)]);
        on_message(&ack, &mut queue, &window, &mut outcome, &counters);
        assert_eq!((outcome.acked_ops, outcome.latencies.count()), (0, 0));
        // Due 40 ms before it went out: its latency counts those 40 ms too.
        let mut queue = VecDeque::from([in_flight(now - Duration::from_millis(90))]);
        on_message(&ack, &mut queue, &window, &mut outcome, &counters);
        assert_eq!(outcome.acked_ops, 10);
        assert!(outcome.latencies.percentiles().max_ms >= 90.0);
    }
}
