//! The client's Merkle sync walker (PROTOCOL.md §3.4, §3.5): one [`MapSync`] walks one map,
//! LWW or OR, after each (re)authentication. It is sans-I/O: the engine feeds it the server's
//! answers and sends what each [`Step`] returns.
//!
//! Unlike the TypeScript clients, the walk is two-way (REFERENCE §5 defects 24 and 28): a
//! record the server lacks or holds older is pushed back, so a local write whose op was lost
//! still reaches the server. LWW records go back as id-less `OP_BATCH` ops (no op-log entry
//! to acknowledge); OR records go back as `ORMAP_PUSH_DIFF` entries carrying only the
//! tombstones of tags the server still holds for that key. Where the server holds nothing
//! under an OR bucket, the walker first asks for those keys with `ORMAP_DIFF_REQUEST`, since
//! the answer carries the server's tombstones and a record the server already removed must
//! be dropped here rather than pushed back.
//!
//! Termination: every bucket path is requested at most once and only well-formed paths (at
//! most [`DEPTH`] lowercase hex digits) are requested, so one walk sends at most
//! 1 + 16 + 256 + 4096 bucket requests however the server answers; an empty answer simply
//! ends that branch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::hlc::Timestamp;
use crate::merkle::{Combine, DEPTH, MerkleTree};
use crate::protocol::common::MAX_LIST_ITEMS;
use crate::protocol::{
    BucketRequest, Buckets, ClientOp, LeafRecord, MerkleReqBucket, Message, OpBatch,
    OpBatchPayload, OpType, OrMapDiffRequest, OrMapDiffRequestPayload, OrMapEntry,
    OrMapMerkleReqBucket, OrMapPushDiff, OrMapPushDiffPayload, OrMapSyncInit, SyncInit,
};
use crate::record::{LwwRecord, OrMapRecord};
use crate::replica::{LwwReplica, MapKind, OrReplica, Replica};

/// How a walk talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// The combine function the server answers this client with. Our server defaults to
    /// [`Combine::Fmix`] (the 2026-08 scheme); a mismatch costs a full walk, not correctness.
    pub combine: Combine,
    /// Bucket and diff requests outstanding at once (0 counts as 1).
    pub max_requests_in_flight: usize,
    /// Ops per pushed `OP_BATCH`, entries per `ORMAP_PUSH_DIFF` and keys per
    /// `ORMAP_DIFF_REQUEST` (clamped to 1..=`MAX_LIST_ITEMS`), so no message outgrows the
    /// server's frame and list limits.
    pub max_items_per_message: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            combine: Combine::Fmix,
            max_requests_in_flight: 8,
            max_items_per_message: 500,
        }
    }
}

/// A server message the walk cannot use. The walk's state is unchanged by it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("map {map}: the walk is for an {expected:?} map but the replica is an {actual:?} map")]
    KindMismatch {
        map: String,
        expected: MapKind,
        actual: MapKind,
    },
    #[error("map {map}: {message_type} is not part of an {kind:?} map's sync")]
    Unexpected {
        map: String,
        message_type: &'static str,
        kind: MapKind,
    },
    #[error("map {map}: {message_type} is addressed to map {other}")]
    OtherMap {
        map: String,
        message_type: &'static str,
        other: String,
    },
    #[error("map {map}: the server root arrived twice")]
    DuplicateRoot { map: String },
    #[error("map {map}: {message_type} answers path {path:?}, which awaits no answer")]
    UnrequestedPath {
        map: String,
        message_type: &'static str,
        path: String,
    },
    #[error("map {map}: ORMAP_DIFF_RESPONSE without an outstanding ORMAP_DIFF_REQUEST")]
    UnrequestedDiff { map: String },
    #[error("map {map}: {message_type} arrived after the walk finished")]
    Finished {
        map: String,
        message_type: &'static str,
    },
}

/// How a walk ended (the engine turns it into a client event and, for `Synced`, persists the
/// watermark: REFERENCE §5 defect 22 — it advances only when a walk completes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Both sides now hold the same data (given the pushes arrive). `synced_at_millis` is the
    /// server time of the root answer: the next `lastSyncTimestamp`.
    Synced {
        map_name: String,
        synced_at_millis: u64,
    },
    /// The server asked for a reset: clear the map (memory and storage), then start a new walk
    /// with `last_sync_millis` 0.
    ResetRequired { map_name: String },
}

/// What one server message led to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Messages to send, in order: bucket or diff requests and pushes.
    pub send: Vec<Message>,
    /// Keys whose local records changed (sorted, unique): persist them, re-run queries and
    /// update the HLC from their timestamps.
    pub changed_keys: Vec<String>,
    /// The walk completed; see [`MapSync::outcome`].
    pub done: bool,
    /// The server demands a reset; the walk is over without syncing.
    pub reset: bool,
    /// The server's HLC time from the root answer, for the engine's clock.
    pub server_time: Option<Timestamp>,
}

/// One outstanding or queued request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Bucket(String),
    Diff(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingRoot,
    Walking,
    Synced,
    Reset,
}

/// One walk of one map.
#[derive(Debug, Clone)]
pub struct MapSync {
    map: String,
    kind: MapKind,
    config: SyncConfig,
    phase: Phase,
    server_time: Option<Timestamp>,
    queued: VecDeque<Request>,
    buckets_in_flight: BTreeSet<String>,
    diffs_in_flight: usize,
    /// Every bucket path ever queued: none is requested twice, which bounds the walk.
    requested: BTreeSet<String>,
}

impl MapSync {
    /// Starts the walk of an LWW map; `last_sync_millis` is the persisted watermark (0 on the
    /// first sync), which the server only uses for its reset check.
    pub fn lww(map: &str, last_sync_millis: u64, config: SyncConfig) -> (Self, Message) {
        let init = SyncInit {
            map_name: map.to_owned(),
            last_sync_timestamp: Some(last_sync_millis),
        };
        (Self::new(map, MapKind::Lww, config), init.into())
    }

    /// Starts the walk of an OR map. The init carries our root and top-level buckets: the
    /// server reads the combine function we use from them.
    pub fn or(
        map: &str,
        last_sync_millis: u64,
        replica: &OrReplica,
        config: SyncConfig,
    ) -> (Self, Message) {
        let tree = replica.merkle();
        let init = OrMapSyncInit {
            map_name: map.to_owned(),
            root_hash: tree.root(config.combine),
            bucket_hashes: wire_buckets(tree, "", config.combine),
            last_sync_timestamp: Some(last_sync_millis),
            claimed_epoch: None,
        };
        (Self::new(map, MapKind::Or, config), init.into())
    }

    fn new(map: &str, kind: MapKind, config: SyncConfig) -> Self {
        Self {
            map: map.to_owned(),
            kind,
            config,
            phase: Phase::AwaitingRoot,
            server_time: None,
            queued: VecDeque::new(),
            buckets_in_flight: BTreeSet::new(),
            diffs_in_flight: 0,
            requested: BTreeSet::new(),
        }
    }

    /// The map this walk syncs.
    pub fn map_name(&self) -> &str {
        &self.map
    }

    /// Which CRDT the map holds.
    pub fn kind(&self) -> MapKind {
        self.kind
    }

    /// How the walk ended, once it has.
    pub fn outcome(&self) -> Option<SyncOutcome> {
        let map_name = self.map.clone();
        match self.phase {
            Phase::AwaitingRoot | Phase::Walking => None,
            Phase::Synced => Some(SyncOutcome::Synced {
                map_name,
                synced_at_millis: self.server_time.as_ref().map_or(0, |t| t.millis),
            }),
            Phase::Reset => Some(SyncOutcome::ResetRequired { map_name }),
        }
    }

    /// Feeds a server message for this map: merges what it carries into `replica` and says
    /// what changed, what to send next and whether the walk is over. On error nothing changed.
    pub fn on_message(
        &mut self,
        message: &Message,
        replica: &mut Replica,
    ) -> Result<Step, SyncError> {
        let message_type = message.type_name();
        let (map, answer) = classify(self.kind, message).ok_or_else(|| SyncError::Unexpected {
            map: self.map.clone(),
            message_type,
            kind: self.kind,
        })?;
        if map != self.map {
            return Err(SyncError::OtherMap {
                map: self.map.clone(),
                message_type,
                other: map.to_owned(),
            });
        }
        if matches!(self.phase, Phase::Synced | Phase::Reset) {
            return Err(SyncError::Finished {
                map: self.map.clone(),
                message_type,
            });
        }
        let mut target = match replica {
            Replica::Lww(r) if self.kind == MapKind::Lww => Target::Lww(r),
            Replica::Or(r) if self.kind == MapKind::Or => Target::Or(r),
            other => {
                return Err(SyncError::KindMismatch {
                    map: self.map.clone(),
                    expected: self.kind,
                    actual: other.kind(),
                });
            }
        };
        let mut step = Step::default();
        let mut out = Outbox::default();
        match answer {
            Answer::Reset => {
                self.phase = Phase::Reset;
                self.queued.clear();
                self.buckets_in_flight.clear();
                self.diffs_in_flight = 0;
                step.reset = true;
                return Ok(step);
            }
            Answer::Root {
                root_hash,
                timestamp,
            } => {
                if self.phase != Phase::AwaitingRoot {
                    return Err(SyncError::DuplicateRoot {
                        map: self.map.clone(),
                    });
                }
                self.phase = Phase::Walking;
                self.server_time = Some(timestamp.clone());
                step.server_time = Some(timestamp.clone());
                self.on_root(&target, root_hash, &mut out);
            }
            Answer::Buckets { path, buckets } => {
                self.take_bucket(message_type, path)?;
                self.on_buckets(&target, path, buckets, &mut out);
            }
            Answer::LwwLeaf { path, records } => {
                self.take_bucket(message_type, path)?;
                if let Target::Lww(r) = &mut target {
                    exchange_lww(&self.map, r, path, records, &mut out);
                }
            }
            Answer::OrLeaf { path, entries } => {
                self.take_bucket(message_type, path)?;
                if let Target::Or(r) = &mut target {
                    let local: Vec<String> =
                        r.merkle().keys_under(path).into_iter().map(str::to_owned).collect();
                    exchange_or(r, entries, local, &mut out);
                }
            }
            Answer::OrDiff { entries } => {
                if self.diffs_in_flight == 0 {
                    return Err(SyncError::UnrequestedDiff {
                        map: self.map.clone(),
                    });
                }
                self.diffs_in_flight -= 1;
                if let Target::Or(r) = &mut target {
                    exchange_or(r, entries, Vec::new(), &mut out);
                }
            }
        }
        step.send = out.messages(&self.map, self.chunk_size());
        self.pump(&mut step.send);
        if self.phase == Phase::Walking && self.is_idle() {
            self.phase = Phase::Synced;
            step.done = true;
        }
        step.changed_keys = out.changed.into_iter().collect();
        Ok(step)
    }

    fn on_root(&mut self, target: &Target<'_>, root_hash: u32, out: &mut Outbox) {
        if root_hash == target.merkle().root(self.config.combine) {
            return;
        }
        if root_hash == 0 {
            self.cover(target, "", out);
        } else {
            self.queue_bucket(String::new());
        }
    }

    /// Compares the server's child hashes under `path` with ours: differing children the
    /// server holds data in are walked, those it holds nothing in are covered.
    fn on_buckets(&mut self, target: &Target<'_>, path: &str, theirs: &Buckets, out: &mut Outbox) {
        // A leaf answered with buckets is one the server holds no key in.
        if path.len() >= DEPTH {
            self.cover(target, path, out);
            return;
        }
        let ours = target.merkle().buckets(path, self.config.combine);
        let theirs: BTreeMap<char, u32> = theirs
            .iter()
            .filter_map(|(digit, hash)| hex_digit(digit).map(|d| (d, *hash)))
            .collect();
        let digits: BTreeSet<char> = ours.keys().chain(theirs.keys()).copied().collect();
        for digit in digits {
            let mine = ours.get(&digit).copied().unwrap_or(0);
            let their = theirs.get(&digit).copied().unwrap_or(0);
            if mine == their {
                continue;
            }
            let child = format!("{path}{digit}");
            if their == 0 {
                self.cover(target, &child, out);
            } else {
                self.queue_bucket(child);
            }
        }
    }

    /// Handles a subtree the server holds nothing in: LWW records are pushed outright; OR keys
    /// are asked for first (see the module docs).
    fn cover(&mut self, target: &Target<'_>, path: &str, out: &mut Outbox) {
        match target {
            Target::Lww(r) => {
                for key in r.merkle().keys_under(path) {
                    if let Some(record) = r.map().record(key) {
                        out.ops.push(push_op(&self.map, key, record));
                    }
                }
            }
            Target::Or(r) => {
                let keys = r.merkle().keys_under(path);
                for chunk in keys.chunks(self.chunk_size()) {
                    let keys = chunk.iter().map(|k| (*k).to_owned()).collect();
                    self.queued.push_back(Request::Diff(keys));
                }
            }
        }
    }

    fn queue_bucket(&mut self, path: String) {
        if path.len() <= DEPTH && self.requested.insert(path.clone()) {
            self.queued.push_back(Request::Bucket(path));
        }
    }

    fn take_bucket(&mut self, message_type: &'static str, path: &str) -> Result<(), SyncError> {
        if self.buckets_in_flight.remove(path) {
            Ok(())
        } else {
            Err(SyncError::UnrequestedPath {
                map: self.map.clone(),
                message_type,
                path: path.to_owned(),
            })
        }
    }

    /// Sends queued requests while the in-flight window has room.
    fn pump(&mut self, send: &mut Vec<Message>) {
        let window = self.config.max_requests_in_flight.max(1);
        while self.buckets_in_flight.len() + self.diffs_in_flight < window {
            let Some(request) = self.queued.pop_front() else {
                break;
            };
            match request {
                Request::Bucket(path) => {
                    send.push(self.bucket_request(&path));
                    self.buckets_in_flight.insert(path);
                }
                Request::Diff(keys) => {
                    send.push(
                        OrMapDiffRequest {
                            payload: OrMapDiffRequestPayload {
                                map_name: self.map.clone(),
                                keys,
                            },
                        }
                        .into(),
                    );
                    self.diffs_in_flight += 1;
                }
            }
        }
    }

    fn bucket_request(&self, path: &str) -> Message {
        let payload = BucketRequest {
            map_name: self.map.clone(),
            path: path.to_owned(),
        };
        match self.kind {
            MapKind::Lww => MerkleReqBucket { payload }.into(),
            MapKind::Or => OrMapMerkleReqBucket { payload }.into(),
        }
    }

    fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.buckets_in_flight.is_empty() && self.diffs_in_flight == 0
    }

    fn chunk_size(&self) -> usize {
        let max = usize::try_from(MAX_LIST_ITEMS).unwrap_or(usize::MAX);
        self.config.max_items_per_message.clamp(1, max)
    }
}

/// The replica a walk works on, checked against the walk's kind.
enum Target<'r> {
    Lww(&'r mut LwwReplica),
    Or(&'r mut OrReplica),
}

impl Target<'_> {
    fn merkle(&self) -> &MerkleTree {
        match self {
            Self::Lww(r) => r.merkle(),
            Self::Or(r) => r.merkle(),
        }
    }
}

/// A sync answer, borrowed from the message.
enum Answer<'a> {
    Root {
        root_hash: u32,
        timestamp: &'a Timestamp,
    },
    Buckets {
        path: &'a str,
        buckets: &'a Buckets,
    },
    LwwLeaf {
        path: &'a str,
        records: &'a [LeafRecord],
    },
    OrLeaf {
        path: &'a str,
        entries: &'a [OrMapEntry],
    },
    OrDiff {
        entries: &'a [OrMapEntry],
    },
    Reset,
}

/// The map a message is for and what it answers, if it belongs to a walk of `kind`.
fn classify(kind: MapKind, message: &Message) -> Option<(&str, Answer<'_>)> {
    let classified = match (kind, message) {
        (_, Message::SyncResetRequired(m)) => (&m.payload.map_name, Answer::Reset),
        (MapKind::Lww, Message::SyncRespRoot(m)) => (
            &m.payload.map_name,
            Answer::Root {
                root_hash: m.payload.root_hash,
                timestamp: &m.payload.timestamp,
            },
        ),
        (MapKind::Lww, Message::SyncRespBuckets(m)) => (
            &m.payload.map_name,
            Answer::Buckets {
                path: &m.payload.path,
                buckets: &m.payload.buckets,
            },
        ),
        (MapKind::Lww, Message::SyncRespLeaf(m)) => (
            &m.payload.map_name,
            Answer::LwwLeaf {
                path: &m.payload.path,
                records: &m.payload.records,
            },
        ),
        (MapKind::Or, Message::OrMapSyncRespRoot(m)) => (
            &m.payload.map_name,
            Answer::Root {
                root_hash: m.payload.root_hash,
                timestamp: &m.payload.timestamp,
            },
        ),
        (MapKind::Or, Message::OrMapSyncRespBuckets(m)) => (
            &m.payload.map_name,
            Answer::Buckets {
                path: &m.payload.path,
                buckets: &m.payload.buckets,
            },
        ),
        (MapKind::Or, Message::OrMapSyncRespLeaf(m)) => (
            &m.payload.map_name,
            Answer::OrLeaf {
                path: &m.payload.path,
                entries: &m.payload.entries,
            },
        ),
        (MapKind::Or, Message::OrMapDiffResponse(m)) => (
            &m.payload.map_name,
            Answer::OrDiff {
                entries: &m.payload.entries,
            },
        ),
        _ => return None,
    };
    Some((classified.0.as_str(), classified.1))
}

/// What a step changed locally and must push.
#[derive(Default)]
struct Outbox {
    changed: BTreeSet<String>,
    ops: Vec<ClientOp>,
    entries: Vec<OrMapEntry>,
}

impl Outbox {
    fn messages(&mut self, map: &str, chunk: usize) -> Vec<Message> {
        let batches = chunks(std::mem::take(&mut self.ops), chunk)
            .into_iter()
            .map(|ops| {
                Message::from(OpBatch {
                    payload: OpBatchPayload {
                        ops,
                        write_concern: None,
                        timeout: None,
                    },
                })
            });
        let diffs = chunks(std::mem::take(&mut self.entries), chunk)
            .into_iter()
            .map(|entries| {
                Message::from(OrMapPushDiff {
                    payload: OrMapPushDiffPayload {
                        map_name: map.to_owned(),
                        entries,
                    },
                })
            });
        batches.chain(diffs).collect()
    }
}

fn chunks<T>(mut items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while items.len() > size {
        let rest = items.split_off(size);
        out.push(std::mem::replace(&mut items, rest));
    }
    if !items.is_empty() {
        out.push(items);
    }
    out
}

/// Merges a server leaf into `replica`, then queues a push of every local record under `path`
/// that the server lacks or holds older.
fn exchange_lww(
    map: &str,
    replica: &mut LwwReplica,
    path: &str,
    records: &[LeafRecord],
    out: &mut Outbox,
) {
    let mut theirs: BTreeMap<&str, &Timestamp> = BTreeMap::new();
    for leaf in records {
        if replica.merge(&leaf.key, leaf.record.clone()).is_applied() {
            out.changed.insert(leaf.key.clone());
        }
        let newest = theirs.entry(&leaf.key).or_insert(&leaf.record.timestamp);
        if *newest < &leaf.record.timestamp {
            *newest = &leaf.record.timestamp;
        }
    }
    for key in replica.merkle().keys_under(path) {
        let Some(mine) = replica.map().record(key) else {
            continue;
        };
        if theirs.get(key).is_none_or(|t| **t < mine.timestamp) {
            out.ops.push(push_op(map, key, mine));
        }
    }
}

/// An id-less repair op: the op log never held it, so nothing awaits its acknowledgement.
fn push_op(map: &str, key: &str, record: &LwwRecord) -> ClientOp {
    let op_type = if record.is_tombstone() {
        OpType::Remove
    } else {
        OpType::Put
    };
    ClientOp {
        id: None,
        map_name: map.to_owned(),
        key: key.to_owned(),
        op_type: Some(op_type),
        record: Some(record.clone()),
        or_record: None,
        or_tag: None,
        write_concern: None,
        timeout: None,
    }
}

/// Merges server OR entries into `replica`, then queues a push for every key among them and
/// `local_keys` where we hold records the server lacks (or holds older) or tombstones of tags
/// the server still holds.
fn exchange_or(
    replica: &mut OrReplica,
    entries: &[OrMapEntry],
    local_keys: Vec<String>,
    out: &mut Outbox,
) {
    for entry in entries {
        // The server repeats its whole tombstone set in every entry; skip the ones we know.
        let fresh: Vec<String> = entry
            .tombstones
            .iter()
            .filter(|tag| !replica.map().is_tombstoned(tag))
            .cloned()
            .collect();
        let outcome = replica.merge_key(&entry.key, entry.records.iter().cloned(), fresh);
        out.changed.extend(outcome.touched_keys(&entry.key));
    }
    let mut theirs: BTreeMap<&str, BTreeMap<&str, &Timestamp>> = BTreeMap::new();
    for entry in entries {
        let tags = theirs.entry(&entry.key).or_default();
        for record in &entry.records {
            tags.insert(&record.tag, &record.timestamp);
        }
    }
    let keys: BTreeSet<&str> = theirs
        .keys()
        .copied()
        .chain(local_keys.iter().map(String::as_str))
        .collect();
    let none = BTreeMap::new();
    for key in keys {
        let their_tags = theirs.get(key).unwrap_or(&none);
        if let Some(entry) = or_push_entry(replica, key, their_tags) {
            out.entries.push(entry);
        }
    }
}

fn or_push_entry(
    replica: &OrReplica,
    key: &str,
    theirs: &BTreeMap<&str, &Timestamp>,
) -> Option<OrMapEntry> {
    let records: Vec<OrMapRecord> = replica
        .map()
        .records(key)
        .filter(|mine| {
            theirs
                .get(mine.tag.as_str())
                .is_none_or(|t| **t < mine.timestamp)
        })
        .cloned()
        .collect();
    let tombstones: Vec<String> = theirs
        .keys()
        .filter(|tag| replica.map().is_tombstoned(tag))
        .map(|tag| (*tag).to_owned())
        .collect();
    (!records.is_empty() || !tombstones.is_empty()).then(|| OrMapEntry {
        key: key.to_owned(),
        records,
        tombstones,
    })
}

fn wire_buckets(tree: &MerkleTree, path: &str, combine: Combine) -> Buckets {
    tree.buckets(path, combine)
        .into_iter()
        .map(|(digit, hash)| (digit.to_string(), hash))
        .collect()
}

/// A bucket key as the protocol sends it: one lowercase hex digit.
fn hex_digit(key: &str) -> Option<char> {
    let mut chars = key.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_digit() || ('a'..='f').contains(&c) => Some(c),
        _ => None,
    }
}
