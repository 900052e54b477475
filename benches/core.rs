//! Criterion benchmarks of the pure core (HLC, LWW and OR maps, Merkle tree) and of the
//! ingress path of `OP_BATCH` frames shaped like the TypeScript client's (every map a msgpack
//! map16, `millis` as float64): 100 small ops, and 10 ops with 100-byte values as
//! `topgun bench write` sends them. Figures are printed, never asserted; measurement
//! times are short so that `just bench` stays within a couple of minutes on a small machine.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

use topgun::clock::SystemClock;
use topgun::entropy::SeededEntropy;
use topgun::hlc::{Hlc, HlcConfig, Timestamp};
use topgun::merkle::MerkleTree;
use topgun::ormap::OrMap;
use topgun::protocol::codec::{Frame, Limits, decode, decode_typed, decode_value, encode_msgpack};
use topgun::protocol::validate;
use topgun::protocol::{ClientOp, Message, OpBatch, OpBatchPayload, OpType};
use topgun::record::{LwwRecord, OrMapRecord};
use topgun::replica::LwwReplica;
use topgun::security::Permissions;
use topgun::server::config::Limits as ServerLimits;
use topgun::server::journal::ChangeRef;
use topgun::server::{Server, ServerOptions};
use topgun::store::{EncodedLww, MemoryStore, Mutation, RedbOptions, RedbStore, Store, WriteBatch};

/// The same allocator as the `topgun` binary, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH_OPS: usize = 100;
/// The `topgun bench write` default: 10-op batches of 100-byte values.
const SMALL_BATCH_OPS: usize = 10;
const SMALL_BATCH_VALUE_BYTES: usize = 100;
const KEYS: usize = 1_000;
/// A current wall-clock time: above 2³², so the encoder writes it as float64.
const BASE_MILLIS: u64 = 1_795_698_229_131;

fn configure() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("todo-{i}")).collect()
}

fn bench_hlc(c: &mut Criterion) {
    let Ok(mut hlc) = Hlc::new("bench-node", Arc::new(SystemClock), HlcConfig::default()) else {
        return;
    };
    c.bench_function("hlc/now", |b| b.iter(|| black_box(hlc.now())));
}

fn bench_lww(c: &mut Criterion) {
    let keys = keys();
    let mut replica = LwwReplica::default();
    let mut counter = 0u32;
    c.bench_function("lww/replica_merge (map + merkle)", |b| {
        b.iter(|| {
            counter = counter.wrapping_add(1);
            let key = &keys[counter as usize % KEYS];
            let record = LwwRecord {
                value: Some(json!({"title": "write spec", "prio": 3}).into()),
                timestamp: Timestamp::new(BASE_MILLIS, counter, "client-b"),
                ttl_ms: None,
            };
            black_box(replica.merge(key, record))
        })
    });
}

fn or_record(millis: u64) -> OrMapRecord {
    let timestamp = Timestamp::new(millis, 0, "client-b");
    OrMapRecord {
        value: json!({"tag": "urgent"}),
        tag: timestamp.to_string(),
        timestamp,
        ttl_ms: None,
    }
}

fn bench_ormap(c: &mut Criterion) {
    let keys = keys();
    let mut map = OrMap::new();
    let mut millis = BASE_MILLIS;
    c.bench_function("ormap/add", |b| {
        b.iter(|| {
            millis += 1;
            let key = &keys[millis as usize % KEYS];
            let timestamp = Timestamp::new(millis, 0, "client-b");
            black_box(map.add(key, json!({"tag": "urgent"}), timestamp, None))
        })
    });

    let mut map = OrMap::new();
    let mut millis = BASE_MILLIS;
    c.bench_function("ormap/merge_key (2 records, 1 tombstone)", |b| {
        b.iter(|| {
            millis += 3;
            let key = &keys[millis as usize % KEYS];
            let removed = or_record(millis - 3).tag;
            let records = [or_record(millis), or_record(millis + 1)];
            black_box(map.merge_key(key, records, [removed]))
        })
    });
}

fn bench_merkle(c: &mut Criterion) {
    let keys = keys();
    let mut tree = MerkleTree::new();
    let mut hash = 0u32;
    c.bench_function("merkle/update", |b| {
        b.iter(|| {
            hash = hash.wrapping_add(0x9e37_79b9);
            tree.update(&keys[hash as usize % KEYS], hash);
        })
    });
}

/// An `OP_BATCH` of `ops` LWW puts with the values `value(i)`, as the client sends it.
fn op_batch(ops: usize, value: impl Fn(usize) -> serde_json::Value) -> Message {
    let ops = (0..ops)
        .map(|i| ClientOp {
            id: Some((i + 1).to_string()),
            map_name: "todos".to_owned(),
            key: format!("todo-{i}").into(),
            op_type: Some(OpType::Put),
            record: Some(LwwRecord {
                value: Some(value(i).into()),
                timestamp: Timestamp::new(BASE_MILLIS + i as u64, 0, "wire-client-b"),
                ttl_ms: None,
            }),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        })
        .collect();
    Message::OpBatch(OpBatch {
        payload: OpBatchPayload {
            ops,
            write_concern: None,
            timeout: None,
        },
    })
}

/// Re-encodes `value` with every map as map16, as msgpackr writes objects.
fn write_with_map16(out: &mut Vec<u8>, value: &rmpv::Value) -> Result<(), String> {
    match value {
        rmpv::Value::Map(entries) => {
            let len = u16::try_from(entries.len()).map_err(|e| e.to_string())?;
            out.push(0xde);
            out.extend_from_slice(&len.to_be_bytes());
            for (key, item) in entries {
                write_with_map16(out, key)?;
                write_with_map16(out, item)?;
            }
        }
        rmpv::Value::Array(items) => {
            let len = u32::try_from(items.len()).map_err(|e| e.to_string())?;
            rmp::encode::write_array_len(out, len).map_err(|e| e.to_string())?;
            for item in items {
                write_with_map16(out, item)?;
            }
        }
        other => rmpv::encode::write_value(out, other).map_err(|e| e.to_string())?,
    }
    Ok(())
}

fn client_frame(message: &Message) -> Result<Vec<u8>, String> {
    let packed = encode_msgpack(message).map_err(|e| e.to_string())?;
    let tree = rmpv::decode::read_value(&mut packed.as_slice()).map_err(|e| e.to_string())?;
    let mut frame = Vec::with_capacity(packed.len() + 256);
    write_with_map16(&mut frame, &tree)?;
    Ok(frame)
}

fn bench_ingress(c: &mut Criterion) {
    let todos = op_batch(
        BATCH_OPS,
        |i| json!({"title": format!("task {i}"), "prio": i % 5, "done": false}),
    );
    bench_ingress_of(
        c,
        &format!("ingress/op_batch_{BATCH_OPS}"),
        BATCH_OPS,
        &todos,
    );
    let padded = op_batch(
        SMALL_BATCH_OPS,
        |i| json!({"v": format!("{i:0>width$}", width = SMALL_BATCH_VALUE_BYTES)}),
    );
    let name = format!("ingress/op_batch_{SMALL_BATCH_OPS}x{SMALL_BATCH_VALUE_BYTES}B");
    bench_ingress_of(c, &name, SMALL_BATCH_OPS, &padded);
}

/// The ingress steps, one by one and in full, on `message` encoded as the client would.
fn bench_ingress_of(c: &mut Criterion, name: &str, ops: usize, message: &Message) {
    let frame = match client_frame(message) {
        Ok(frame) => frame,
        Err(error) => {
            eprintln!("cannot build the OP_BATCH frame: {error}");
            return;
        }
    };
    let limits = Limits::default();
    let Ok(value) = decode_value(Frame::Binary(&frame), &limits) else {
        eprintln!("the OP_BATCH frame does not decode");
        return;
    };
    if validate("OP_BATCH", &value).is_err() || decode(Frame::Binary(&frame)).is_err() {
        eprintln!("the OP_BATCH frame does not validate");
        return;
    }

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(ops as u64));
    group.bench_function("decode_value", |b| {
        b.iter(|| black_box(decode_value(Frame::Binary(black_box(&frame)), &limits)))
    });
    group.bench_function("validate", |b| {
        b.iter(|| black_box(validate("OP_BATCH", black_box(&value))))
    });
    group.bench_function("decode_typed", |b| {
        b.iter_batched(
            || value.clone(),
            |value| black_box(decode_typed(value)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("general path (the three steps)", |b| {
        b.iter(|| {
            let value = decode_value(Frame::Binary(black_box(&frame)), &limits).ok()?;
            validate("OP_BATCH", &value).ok()?;
            decode_typed(value).ok()
        })
    });
    group.bench_function("decode (full, msgpack fast path)", |b| {
        b.iter(|| black_box(decode(Frame::Binary(black_box(&frame)))))
    });
    group.finish();
}

/// Rows of each kind in one `store_writer` batch, as the server commits an `OP_BATCH` of 10
/// LWW puts: each put plus its journal entry.
const STORE_BATCH_ROWS: usize = 10;
/// Keys the `store_writer` puts cycle through, as `topgun bench write` does.
const STORE_KEYS: u64 = 10_000;

/// One write batch: [`STORE_BATCH_ROWS`] LWW puts of 100-byte values and as many journal
/// appends, numbered from `first`.
fn store_batch(first: u64) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for i in first..first + STORE_BATCH_ROWS as u64 {
        let value = format!("{i:0>width$}", width = SMALL_BATCH_VALUE_BYTES);
        let record = LwwRecord {
            value: Some(json!({ "v": value }).into()),
            timestamp: Timestamp::new(BASE_MILLIS + i, 0, "bench-node"),
            ttl_ms: None,
        };
        match Mutation::put_lww("bench", format!("key-{}", i % STORE_KEYS), &record) {
            Ok(put) => batch.push(put),
            Err(error) => {
                eprintln!("cannot encode the bench record: {error}");
                continue;
            }
        };
        batch.push(Mutation::AppendJournal {
            sequence: i + 1,
            event: Arc::from([0xa5; 160].as_slice()),
        });
    }
    batch
}

/// The store writer's cost per batch of APPLIED writes: `iters` queued commits (as the server
/// makes for APPLIED / FIRE_AND_FORGET writes), then one waited commit, so the time covers the
/// writer staging, logging and syncing every batch (background checkpoints run meanwhile).
/// Once with the default sync delay, once syncing every drained group (delay zero).
fn bench_store_writer(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_writer");
    group.throughput(Throughput::Elements(1));
    let default = RedbOptions::default();
    for (name, options) in [
        ("queued_batch_10_puts_10_journal", default),
        (
            "queued_batch_10_puts_10_journal (sync every group)",
            RedbOptions {
                queued_sync_delay: Duration::ZERO,
                ..default
            },
        ),
    ] {
        let (Ok(runtime), Ok(dir)) = (tokio::runtime::Runtime::new(), tempfile::tempdir()) else {
            eprintln!("cannot set up the store_writer bench");
            return;
        };
        let store = match RedbStore::open_with(dir.path(), options) {
            Ok(store) => store,
            Err(error) => {
                eprintln!("cannot open the store: {error}");
                return;
            }
        };
        let mut next = 0u64;
        // CPU of every thread while batches are built and committed (not while criterion
        // analyses), and how many batches that covered.
        let (mut process_cpu, mut timed_batches) = (0.0, 0u64);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let cpu_before = process_cpu_seconds();
                timed_batches += iters + 1;
                runtime.block_on(async {
                    let started = std::time::Instant::now();
                    for _ in 0..iters {
                        if let Err(error) = store.commit_queued(store_batch(next)).await {
                            eprintln!("queued commit failed: {error}");
                        }
                        next += STORE_BATCH_ROWS as u64;
                    }
                    if let Err(error) = store.commit(store_batch(next)).await {
                        eprintln!("commit failed: {error}");
                    }
                    next += STORE_BATCH_ROWS as u64;
                    if let (Some(before), Some(after)) = (cpu_before, process_cpu_seconds()) {
                        process_cpu += after - before;
                    }
                    started.elapsed()
                })
            })
        });
        let stats = store.stats();
        let cpu = writer_cpu_seconds().map_or_else(
            || "unknown".to_owned(),
            |seconds| format!("{:.1} us", seconds * 1e6 / stats.batches.max(1) as f64),
        );
        eprintln!(
            "store_writer ({name}): {} batches, {} log flushes, {} checkpoints; \
             writer thread CPU per batch: {cpu}; all threads' CPU per timed batch: {:.1} us",
            stats.batches,
            stats.flushes,
            stats.checkpoints,
            process_cpu * 1e6 / timed_batches.max(1) as f64
        );
    }
    group.finish();
}

/// CPU time (user + system) of the live store writer thread so far, from `/proc` (Linux):
/// unlike the wall time above, other load on the machine does not inflate it.
fn writer_cpu_seconds() -> Option<f64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim() != "topgun-store-wr" {
            continue;
        }
        return stat_cpu_seconds(&task.path().join("stat"));
    }
    None
}

/// The journal sequence the `journal` bench starts above: a server that has run a while.
const JOURNAL_HEAD: u64 = 1_000_000;

/// A server over a memory store whose journal already holds `JOURNAL_HEAD` and has sequences
/// reserved for the whole run, so numbering never waits for a reservation.
fn journal_server(runtime: &tokio::runtime::Runtime) -> Result<Server, String> {
    let store = Arc::new(MemoryStore::new());
    let head = WriteBatch::from(vec![Mutation::AppendJournal {
        sequence: JOURNAL_HEAD,
        event: vec![0x80].into(),
    }]);
    runtime
        .block_on(store.commit(head))
        .map_err(|e| e.to_string())?;
    let options = ServerOptions {
        node_id: "server-1".into(),
        jwt_secret: "bench-secret-0123456789abcdef0123456789".into(),
        permissions: Permissions::development_default(),
        limits: ServerLimits::default(),
        max_connections: 10,
        debug: false,
        default_combine: topgun::merkle::Combine::Fmix,
        search: Default::default(),
    };
    let server = Server::new(
        options,
        store,
        Arc::new(SystemClock),
        Arc::new(SeededEntropy::new(1)),
    )
    .map_err(|e| e.to_string())?;
    let shared = server.shared();
    runtime
        .block_on(shared.journal.prepare(shared, 1 << 40))
        .map_err(|e| e.to_string())?;
    Ok(server)
}

/// `Journal::number` as the write path calls it for one `topgun bench write` OP_BATCH: 10 LWW
/// updates of 100-byte values numbered into one store batch, through a journal whose ring is
/// full (every entry evicts one). The batch is dropped in the loop, so the time includes
/// freeing what the store writer would free.
fn bench_journal(c: &mut Criterion) {
    let server = match tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|runtime| journal_server(&runtime))
    {
        Ok(server) => server,
        Err(error) => {
            eprintln!("cannot set up the journal bench: {error}");
            return;
        }
    };
    let shared = server.shared();
    let record = |i: u64| LwwRecord {
        value: Some(
            json!({
                "n": i,
                "pad": format!("{i:0>width$}", width = SMALL_BATCH_VALUE_BYTES),
            })
            .into(),
        ),
        timestamp: Timestamp::new(BASE_MILLIS + i, 0, "bench-node"),
        ttl_ms: None,
    };
    let keys: Vec<String> = (0..SMALL_BATCH_OPS).map(|i| format!("key-{i}")).collect();
    let previous: Vec<LwwRecord> = (0..SMALL_BATCH_OPS as u64).map(record).collect();
    let current: Vec<LwwRecord> = (0..SMALL_BATCH_OPS as u64).map(|i| record(i + 1)).collect();
    let number_batch = || {
        let mut batch = WriteBatch::new();
        for ((key, record), previous) in keys.iter().zip(&current).zip(&previous) {
            let change = ChangeRef::lww("bench", key, record, Some(previous));
            black_box(shared.journal.number(shared, change, &mut batch));
        }
        batch
    };
    // Fill the ring, so that every entry the bench numbers evicts one.
    for _ in 0..ServerLimits::default().journal_capacity / SMALL_BATCH_OPS {
        drop(number_batch());
    }
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(SMALL_BATCH_OPS as u64));
    group.bench_function("number_10_updates_into_a_batch", |b| {
        b.iter(|| black_box(number_batch()))
    });
    group.finish();
}

/// CPU time (user + system) of the whole process so far, every thread included.
fn process_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(std::path::Path::new("/proc/self/stat"))
}

/// The user + system time a `/proc` `stat` file reports.
fn stat_cpu_seconds(path: &std::path::Path) -> Option<f64> {
    /// Linux reports times in USER_HZ ticks, 100 per second.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised name start at field 3 (state); utime and stime are
    // fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// A leaderboard: `rows` players, a live window over all of them sorted by score.
fn leaderboard(
    rows: usize,
) -> Result<
    (
        topgun::query::CompiledQuery,
        topgun::server::live::LiveWindow,
    ),
    String,
> {
    use topgun::query::{CompiledQuery, CursorContext, Query, QueryLimits};
    use topgun::server::live::LiveWindow;

    let query: Query =
        serde_json::from_value(json!({"sort": [{"field": "score", "direction": "desc"}]}))
            .map_err(|e| e.to_string())?;
    let query =
        CompiledQuery::compile(&query, &QueryLimits::default()).map_err(|e| e.to_string())?;
    let players: Vec<(String, serde_json::Value)> = (0..rows)
        .map(|i| (player(i), json!({"score": (i * 7919) % 1000, "name": "p"})))
        .collect();
    let page = query
        .execute(
            players.iter().map(|(k, v)| (k.as_str(), v)),
            &CursorContext::new(b"bench-secret", 0),
        )
        .map_err(|e| e.to_string())?;
    let window = LiveWindow::from_page(&query, &page);
    Ok((query, window))
}

fn player(i: usize) -> String {
    format!("player-{i:06}")
}

/// One change applied to a live window sorted by a field: the changed player is in the
/// window, and its new score keeps it in place or moves it. Per window size.
fn bench_live_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("live_window_sorted_update");
    for rows in [20usize, 100, 10_000] {
        let (query, mut window) = match leaderboard(rows) {
            Ok(set_up) => set_up,
            Err(error) => {
                eprintln!("cannot set up the live window bench: {error}");
                return;
            }
        };
        let mut i = 0usize;
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{rows}_rows"), |b| {
            b.iter(|| {
                i = (i + 7_777) % rows;
                let value = json!({"score": (i * 31 + 17) % 1000, "name": "p"});
                black_box(window.apply(&query, &player(i), Some(&value)))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = configure();
    targets = bench_hlc, bench_lww, bench_ormap, bench_merkle, bench_ingress, bench_store_writer,
        bench_journal, bench_live_window
}
criterion_main!(benches, encode_benches);

/// Journal entries and LWW records as the write path encodes them, through rmp_serde (the
/// encoding before issue 7) and through the direct writer, for a `topgun bench write` value
/// (`{"n", "pad"}` with 100 bytes of padding) and a nested one.
fn bench_encode(c: &mut Criterion) {
    use topgun::protocol::codec::msgpack_writer::MsgpackWriter;
    use topgun::protocol::journal::{JournalEntry, JournalEventType};
    use topgun::server::journal::{ChangeRef, encode_entry};

    let values = [
        (
            "padded",
            json!({"n": 123, "pad": "x".repeat(SMALL_BATCH_VALUE_BYTES)}),
        ),
        (
            "nested",
            json!({"title": "write spec", "prio": 3, "tags": ["a", "b"], "done": false,
                   "owner": {"id": 42, "name": "Ana", "scores": [1.5, -2, 1e9]}}),
        ),
    ];
    let timestamp = Timestamp::new(BASE_MILLIS, 7, "client-b");
    let sequence = 1_234_567u64;
    let mut group = c.benchmark_group("encode");
    for (name, value) in &values {
        let previous = json!({"n": 122, "pad": "y".repeat(SMALL_BATCH_VALUE_BYTES)});
        let entry = JournalEntry {
            sequence: sequence.to_string(),
            event_type: JournalEventType::Update,
            map_name: "bench".to_owned(),
            key: "todo-42".to_owned(),
            value: Some(value.clone()),
            previous_value: Some(previous.clone()),
            timestamp: timestamp.clone(),
            node_id: "server-1".to_owned(),
            metadata: None,
        };
        group.bench_function(format!("journal_entry/{name}/rmp_serde"), |b| {
            b.iter(|| {
                // The sequence was formatted per entry before, too.
                black_box(black_box(sequence).to_string());
                black_box(rmp_serde::to_vec_named(black_box(&entry)))
            })
        });
        let (value, previous) = (
            topgun::user_value::UserValue::from(value.clone()),
            topgun::user_value::UserValue::from(previous),
        );
        let change = ChangeRef {
            map_name: "bench",
            key: "todo-42",
            event_type: JournalEventType::Update,
            value: Some(&value),
            previous_value: Some(&previous),
            timestamp: Some(&timestamp),
        };
        group.bench_function(format!("journal_entry/{name}/writer"), |b| {
            b.iter(|| {
                black_box(encode_entry(
                    black_box(sequence),
                    &change,
                    &timestamp,
                    "server-1",
                ))
            })
        });

        let record = LwwRecord {
            value: Some(value.clone()),
            timestamp: timestamp.clone(),
            ttl_ms: None,
        };
        group.bench_function(format!("lww_record/{name}/rmp_serde"), |b| {
            b.iter(|| black_box(rmp_serde::to_vec_named(black_box(&record))))
        });
        group.bench_function(format!("lww_record/{name}/writer"), |b| {
            b.iter(|| {
                let mut writer = MsgpackWriter::default();
                black_box(
                    writer
                        .lww_record(black_box(&record))
                        .map(|()| writer.into_vec()),
                )
            })
        });
        // What `apply_lww` hands the store per put: a clone of the record before rows
        // travelled encoded, the encoded row now (through a reused scratch buffer), and the
        // alternative of encoding into a fresh buffer shrunk to size.
        group.bench_function(format!("lww_row/{name}/clone_record"), |b| {
            b.iter(|| black_box(black_box(&record).clone()))
        });
        group.bench_function(format!("lww_row/{name}/encoded_lww"), |b| {
            b.iter(|| black_box(EncodedLww::new(black_box(&record))))
        });
        group.bench_function(format!("lww_row/{name}/fresh_buffer_shrunk"), |b| {
            b.iter(|| {
                let mut writer = MsgpackWriter::default();
                black_box(
                    writer
                        .lww_record(black_box(&record))
                        .map(|()| writer.into_vec().into_boxed_slice()),
                )
            })
        });
        // The write-ahead log appends records to one reused buffer.
        let mut log = Vec::with_capacity(4096);
        group.bench_function(format!("lww_record_into_log/{name}/rmp_serde"), |b| {
            b.iter(|| {
                log.clear();
                black_box(rmp_serde::encode::write_named(&mut log, black_box(&record)))
            })
        });
        group.bench_function(format!("lww_record_into_log/{name}/writer"), |b| {
            b.iter(|| {
                log.clear();
                let mut writer = MsgpackWriter::from_vec(std::mem::take(&mut log));
                let written = writer.lww_record(black_box(&record));
                log = writer.into_vec();
                black_box(written)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = encode_benches;
    config = configure();
    targets = bench_encode
}
