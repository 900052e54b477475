//! `topgun bench sync`: preloads R records through `OP_BATCH`, times a fresh client's full
//! Merkle sync, changes P% of the records, then times the delta sync of a client that
//! reconnects with what it synced, reporting the bytes on the wire against the bytes of the
//! changed records.
//!
//! The walk is the TypeScript client's (PROTOCOL.md §3.4): `SYNC_INIT`, then
//! `MERKLE_REQ_BUCKET` for every remote bucket whose hash differs from the local one, merging
//! each `SYNC_RESP_LEAF`; requests are pipelined (a bounded number in flight), as the client
//! sends one per differing bucket without waiting. When the server's root buckets advertise
//! the deep-sync extension ([`DeepRequest`], README "Deep Merkle sync"), differing nodes are
//! instead expanded and fetched in batches below the leaves, as the SDK's walker does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::merkle::{
    Combine, DEEP_SYNC_MARKER, DeepRequest, Descent, MAX_DEEP_PREFIXES, MerkleTree,
};
use crate::protocol::{BucketRequest, Buckets, LeafRecord, MerkleReqBucket, Message, SyncInit};
use crate::replica::LwwReplica;

use super::conn::Conn;
use super::measure::{Counters, Progress, Window};
use super::report::{Rows, human_bytes, human_count};
use super::write::{KeyPlan, ValuePlan, WriterSpec, padding, run_writer};
use super::{BenchError, Context, SyncArgs};

/// Bucket requests in flight at most during a walk.
const WALK_WINDOW: usize = 64;
/// How long one sync answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Batches each loader keeps in flight while preloading.
const LOADER_PIPELINE: usize = 4;
/// Long enough for any preload: listed-key writers stop when their keys run out.
const UNBOUNDED: Duration = Duration::from_secs(7 * 24 * 3_600);

/// What one Merkle sync walk cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WalkStats {
    pub secs: f64,
    pub requests: u64,
    pub leaves: u64,
    pub records: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Whether the local root equals the server's afterwards.
    pub converged: bool,
}

/// Child paths under `path` whose server hash differs from the local one (a zero server
/// hash means only we hold data there: nothing to fetch). `path` is a standard path or a
/// [`DeepRequest::Expand`], whose answer is keyed by whole child paths.
fn differing_children(
    local: &MerkleTree,
    path: &str,
    server: &Buckets,
    combine: Combine,
) -> Vec<String> {
    if let Some(DeepRequest::Expand(prefixes)) = DeepRequest::parse(path) {
        let mine: Buckets = prefixes
            .iter()
            .flat_map(|prefix| local.prefix_buckets(prefix, combine))
            .collect();
        return server
            .iter()
            .filter(|(child, hash)| **hash != 0 && mine.get(*child) != Some(*hash))
            .map(|(child, _)| child.clone())
            .collect();
    }
    local.differing_children(path, server, combine)
}

/// The bucket requests a walk still has to send.
#[derive(Debug, Default)]
struct Pending {
    /// Whether the server answers [`DeepRequest`]s (seen in its root buckets).
    deep: bool,
    standard: VecDeque<String>,
    expand: Vec<String>,
    fetch: Vec<String>,
}

impl Pending {
    /// Queues a differing node the way the server's extension support and `local` call for.
    fn add(&mut self, local: &MerkleTree, path: String) {
        let descent = if self.deep {
            local.descent(&path)
        } else {
            Descent::Standard
        };
        match descent {
            Descent::Standard => self.standard.push_back(path),
            Descent::Expand => self.expand.push(path),
            Descent::Fetch => self.fetch.push(path),
        }
    }

    /// The next path to request: standard ones first, then full deep batches, and partial
    /// batches only when `drain` (no answer outstanding could still add to them).
    fn next(&mut self, drain: bool) -> Option<String> {
        if let Some(path) = self.standard.pop_front() {
            return Some(path);
        }
        for (prefixes, expand) in [(&mut self.expand, true), (&mut self.fetch, false)] {
            if prefixes.len() >= MAX_DEEP_PREFIXES || (drain && !prefixes.is_empty()) {
                let batch: Vec<String> = prefixes
                    .drain(..prefixes.len().min(MAX_DEEP_PREFIXES))
                    .collect();
                let request = if expand {
                    DeepRequest::Expand(batch)
                } else {
                    DeepRequest::Fetch(batch)
                };
                return Some(request.path());
            }
        }
        None
    }
}

/// The combine function under which the local tree has the server's root: the server picks
/// one per client generation, and a walk with the wrong one would fetch everything.
fn matching_combine(local: &MerkleTree, server_root: u32) -> Combine {
    if local.root(Combine::Sum) == server_root && local.root(Combine::Fmix) != server_root {
        Combine::Sum
    } else {
        Combine::Fmix
    }
}

/// Waits for the next message, failing on `ERROR`, a reset or silence.
async fn answer(conn: &mut Conn) -> Result<Message, BenchError> {
    let message = tokio::time::timeout(ANSWER_TIMEOUT, conn.recv())
        .await
        .map_err(|_| BenchError::Refused("no sync answer in time".to_owned()))??;
    match message {
        Message::Error(e) => Err(BenchError::Refused(e.payload.message)),
        Message::SyncResetRequired(_) => Err(BenchError::Refused(
            "the server asked for a sync reset".to_owned(),
        )),
        other => Ok(other),
    }
}

/// One Merkle sync of `map` into `local`; `counters` are the syncing connection's own.
async fn walk(
    conn: &mut Conn,
    map: &str,
    local: &mut LwwReplica,
    combine: &mut Combine,
    counters: &Counters,
) -> Result<WalkStats, BenchError> {
    let started = Instant::now();
    let before = counters.snapshot();
    conn.send(&Message::SyncInit(SyncInit {
        map_name: map.to_owned(),
        last_sync_timestamp: Some(0),
    }))
    .await?;
    let server_root = loop {
        if let Message::SyncRespRoot(root) = answer(conn).await? {
            if root.payload.map_name == map {
                break root.payload.root_hash;
            }
        }
    };
    let mut stats = WalkStats::default();
    let mut pending = Pending::default();
    if server_root != local.merkle().root(*combine) {
        pending.standard.push_back(String::new());
    }
    let mut outstanding = 0usize;
    loop {
        while outstanding < WALK_WINDOW {
            let Some(path) = pending.next(outstanding == 0) else {
                break;
            };
            conn.send(&Message::MerkleReqBucket(MerkleReqBucket {
                payload: BucketRequest {
                    map_name: map.to_owned(),
                    path,
                },
            }))
            .await?;
            outstanding += 1;
            stats.requests += 1;
        }
        if outstanding == 0 {
            break;
        }
        match answer(conn).await? {
            Message::SyncRespBuckets(b) if b.payload.map_name == map => {
                outstanding -= 1;
                let path = &b.payload.path;
                if path.is_empty() && b.payload.buckets.contains_key(DEEP_SYNC_MARKER) {
                    pending.deep = true;
                }
                let children =
                    differing_children(local.merkle(), path, &b.payload.buckets, *combine);
                for child in children {
                    pending.add(local.merkle(), child);
                }
            }
            Message::SyncRespLeaf(leaf) if leaf.payload.map_name == map => {
                outstanding -= 1;
                stats.leaves += 1;
                stats.records += leaf.payload.records.len() as u64;
                for r in leaf.payload.records {
                    local.merge(&r.key, r.record);
                }
            }
            _ => {}
        }
    }
    *combine = matching_combine(local.merkle(), server_root);
    let traffic = counters.snapshot().since(&before);
    stats.secs = started.elapsed().as_secs_f64();
    stats.sent_bytes = traffic.sent_bytes;
    stats.received_bytes = traffic.received_bytes;
    stats.converged = local.merkle().root(*combine) == server_root;
    Ok(stats)
}

/// Writes each listed key once through `loaders` connections; returns the seconds taken.
async fn write_keys(
    ctx: &Context,
    args: &SyncArgs,
    map: &str,
    keys: Vec<u64>,
    first_index: usize,
) -> Result<f64, BenchError> {
    let started = Instant::now();
    let loaders = args.loaders.max(1);
    let mut shares = vec![VecDeque::new(); loaders];
    for (i, key) in keys.into_iter().enumerate() {
        shares[i % loaders].push_back(key);
    }
    let conns = ctx.open_many_from(first_index, loaders).await;
    if conns.len() < loaders {
        return Err(BenchError::NoConnections);
    }
    let window = Window {
        start: started,
        measure_from: started,
        end: started + UNBOUNDED,
    };
    let mut tasks = JoinSet::new();
    for ((index, mut conn), share) in conns.into_iter().zip(shares) {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ index as u64);
        let spec = WriterSpec {
            map: map.to_owned(),
            key_prefix: "r".to_owned(),
            keys: KeyPlan::Listed(share),
            batch: args.batch,
            pipeline: LOADER_PIPELINE,
            write_concern: None,
            pace: None,
            value: ValuePlan::Padding(padding(&mut rng, args.value_bytes)),
            node_id: ctx.node_id(index),
            seed: ctx.seed ^ index as u64,
        };
        let counters = ctx.counters.clone();
        tasks.spawn(async move {
            let outcome = run_writer(&mut conn, spec, window, &counters).await;
            conn.close().await;
            outcome
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(|e| BenchError::Task(e.to_string()))??;
        if outcome.unacked_ops > 0 {
            return Err(BenchError::Refused(format!(
                "{} writes were not acknowledged",
                outcome.unacked_ops
            )));
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// How many of `records` a change of `percent`% touches (at least one, at most all).
pub fn changed_count(records: u64, percent: f64) -> u64 {
    let wanted = (records as f64 * percent / 100.0).ceil();
    (wanted.max(1.0) as u64).min(records)
}

/// The msgpack size of the synced records of `keys`, as a leaf carries them.
fn record_bytes(local: &LwwReplica, keys: &[u64]) -> Result<u64, BenchError> {
    let mut total = 0;
    for index in keys {
        let key = format!("r{index}");
        if let Some(record) = local.map().record(&key) {
            let leaf = LeafRecord {
                key,
                record: record.clone(),
            };
            let bytes =
                rmp_serde::to_vec_named(&leaf).map_err(|e| BenchError::Encode(e.to_string()))?;
            total += bytes.len() as u64;
        }
    }
    Ok(total)
}

/// The `sync` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    pub map: String,
    pub records: u64,
    pub preload_secs: f64,
    pub preload_ops_per_sec: f64,
    pub full: WalkStats,
    pub changed_records: u64,
    /// msgpack size of the changed records (key + record, as a leaf carries them).
    pub changed_bytes: u64,
    pub delta: WalkStats,
    /// Delta-sync bytes on the wire (both ways) per byte of changed records.
    pub delta_overhead: f64,
    pub errors: u64,
}

impl SyncReport {
    /// The table rows.
    pub fn rows(&self) -> Rows {
        let walk = |w: &WalkStats| {
            format!(
                "{:.2} s, {} requests, {} records, {} sent / {} received{}",
                w.secs,
                w.requests,
                human_count(w.records as f64),
                human_bytes(w.sent_bytes as f64),
                human_bytes(w.received_bytes as f64),
                if w.converged { "" } else { ", NOT converged" }
            )
        };
        vec![
            ("map".into(), self.map.clone()),
            (
                "preload".into(),
                format!(
                    "{} records in {:.1} s ({}/s)",
                    human_count(self.records as f64),
                    self.preload_secs,
                    human_count(self.preload_ops_per_sec)
                ),
            ),
            ("full sync".into(), walk(&self.full)),
            (
                "changed".into(),
                format!(
                    "{} records, {}",
                    human_count(self.changed_records as f64),
                    human_bytes(self.changed_bytes as f64)
                ),
            ),
            ("delta sync".into(), walk(&self.delta)),
            (
                "delta wire bytes / changed bytes".into(),
                format!("{:.2}", self.delta_overhead),
            ),
            ("errors".into(), self.errors.to_string()),
        ]
    }
}

/// Runs `topgun bench sync`.
pub async fn run(ctx: &Context, args: &SyncArgs) -> Result<SyncReport, BenchError> {
    let map = args
        .map
        .clone()
        .unwrap_or_else(|| format!("bench-sync-{}", ctx.run_id));
    let _progress = Progress::start("sync", ctx.counters.clone());
    let loaders = args.loaders.max(1);
    let preload_secs = write_keys(ctx, args, &map, (0..args.records).collect(), 0).await?;

    let client_counters = Arc::new(Counters::default());
    let mut local = LwwReplica::default();
    let mut combine = Combine::Fmix;
    let mut client = ctx.open_counted(loaders, client_counters.clone()).await?;
    let full = walk(
        &mut client,
        &map,
        &mut local,
        &mut combine,
        &client_counters,
    )
    .await?;
    client.close().await;

    let changed_records = changed_count(args.records, args.change_percent);
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
    let mut changed: Vec<u64> = rand::seq::index::sample(
        &mut rng,
        usize::try_from(args.records).unwrap_or(usize::MAX),
        usize::try_from(changed_records).unwrap_or(usize::MAX),
    )
    .into_iter()
    .map(|i| i as u64)
    .collect();
    changed.sort_unstable();
    write_keys(ctx, args, &map, changed.clone(), loaders + 1).await?;

    let mut client = ctx
        .open_counted(2 * loaders + 1, client_counters.clone())
        .await?;
    let delta = walk(
        &mut client,
        &map,
        &mut local,
        &mut combine,
        &client_counters,
    )
    .await?;
    client.close().await;
    let changed_bytes = record_bytes(&local, &changed)?;
    let delta_wire = (delta.sent_bytes + delta.received_bytes) as f64;
    Ok(SyncReport {
        map,
        records: args.records,
        preload_secs,
        preload_ops_per_sec: args.records as f64 / preload_secs.max(f64::EPSILON),
        full,
        changed_records,
        changed_bytes,
        delta,
        delta_overhead: delta_wire / (changed_bytes.max(1) as f64),
        errors: ctx.counters.snapshot().errors + client_counters.snapshot().errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::LwwRecord;

    fn record(millis: u64) -> LwwRecord {
        LwwRecord {
            value: Some(serde_json::json!({"v": "x"}).into()),
            timestamp: Timestamp::new(millis, 0, "n"),
            ttl_ms: None,
        }
    }

    #[test]
    fn changed_count_rounds_up_and_stays_in_range() {
        assert_eq!(changed_count(1_000_000, 1.0), 10_000);
        assert_eq!(changed_count(10, 1.0), 1);
        assert_eq!(changed_count(10, 0.0), 1);
        assert_eq!(changed_count(10, 500.0), 10);
    }

    #[test]
    fn only_buckets_that_differ_and_exist_remotely_are_requested() {
        let mut local = LwwReplica::default();
        local.merge("a", record(1));
        let mine = local.merkle().buckets("", Combine::Fmix);
        let (&digit, &hash) = mine.iter().next().unwrap();
        let other = if digit == '0' { '1' } else { '0' };
        let server: Buckets = [
            (digit.to_string(), hash),
            (other.to_string(), 7),
            ("f".to_string(), 0),
        ]
        .into_iter()
        .collect();
        let wanted = differing_children(local.merkle(), "", &server, Combine::Fmix);
        assert_eq!(wanted, vec![other.to_string()]);
    }

    #[test]
    fn expand_answers_are_compared_by_whole_child_path() {
        let mut local = LwwReplica::default();
        for i in 0..50 {
            local.merge(&format!("k{i}"), record(1));
        }
        let prefix = crate::merkle::leaf_path("k0");
        let mine = local.merkle().prefix_buckets(&prefix, Combine::Fmix);
        let (same, &hash) = mine.iter().next().unwrap();
        let mut server: Buckets = [(same.clone(), hash)].into_iter().collect();
        let changed = format!("{prefix}x");
        server.insert(changed.clone(), 0);
        let new_child = (0..16)
            .map(|d| format!("{prefix}{d:x}"))
            .find(|c| !mine.contains_key(c))
            .unwrap_or_else(|| same.clone());
        server.insert(new_child.clone(), hash.wrapping_add(1));
        let path = DeepRequest::Expand(vec![prefix]).path();
        let wanted = differing_children(local.merkle(), &path, &server, Combine::Fmix);
        assert_eq!(
            wanted,
            vec![new_child],
            "zero hashes and equal ones are skipped"
        );
    }

    #[test]
    fn deep_batches_fill_up_unless_drained() {
        let mut pending = Pending {
            deep: true,
            ..Pending::default()
        };
        let local = MerkleTree::new();
        pending.add(&local, "0a".to_owned());
        pending.add(&local, "0a1".to_owned());
        assert_eq!(pending.next(false), Some("0a1".to_owned()), "an empty leaf");
        assert_eq!(pending.next(false), None, "a partial batch waits");
        assert_eq!(pending.next(true), Some("+0a".to_owned()));
        for i in 0..MAX_DEEP_PREFIXES + 1 {
            pending.add(&local, format!("{:05x}", i));
        }
        let full = pending.next(false).unwrap();
        assert!(full.starts_with('=') && full.matches(',').count() == MAX_DEEP_PREFIXES - 1);
        assert_eq!(pending.next(false), None);
        assert_eq!(
            pending.next(true),
            Some(format!("={:05x}", MAX_DEEP_PREFIXES))
        );
        let mut standard = Pending::default();
        standard.add(&local, "0a".to_owned());
        assert_eq!(
            standard.next(false),
            Some("0a".to_owned()),
            "no marker, no batching"
        );
    }

    #[test]
    fn the_combine_is_detected_from_the_server_root() {
        let mut local = LwwReplica::default();
        local.merge("a", record(1));
        local.merge("b", record(2));
        let tree = local.merkle();
        assert_eq!(
            matching_combine(tree, tree.root(Combine::Sum)),
            Combine::Sum
        );
        assert_eq!(
            matching_combine(tree, tree.root(Combine::Fmix)),
            Combine::Fmix
        );
    }

    #[test]
    fn record_bytes_counts_only_synced_keys() {
        let mut local = LwwReplica::default();
        local.merge("r1", record(1));
        let one = record_bytes(&local, &[1]).unwrap();
        assert!(one > 10);
        assert_eq!(record_bytes(&local, &[1, 2]).unwrap(), one);
    }
}
