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
//! Deep sync: when the server's root buckets carry [`DEEP_SYNC_MARKER`], an LWW walk narrows
//! a differing leaf down below the leaf level instead of downloading it whole: differing
//! nodes are expanded ([`DeepRequest::Expand`]) until they hold at most [`FETCH_MAX_KEYS`]
//! local keys, then fetched ([`DeepRequest::Fetch`]), both in batches of up to
//! [`MAX_DEEP_PREFIXES`] nodes. Without the marker (a TypeScript-era server) the walk is the
//! standard one. OR walks always are.
//!
//! Termination: every node is requested at most once and only well-formed paths are
//! requested, so one walk sends at most 1 + 16 + 256 + 4096 standard bucket requests however
//! the server answers; an empty answer simply ends that branch. Deep requests are bounded by
//! our own data too: only nodes holding more than [`FETCH_MAX_KEYS`] of our keys (or above
//! the leaves) are expanded, and each expansion yields at most 16 nodes to fetch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::hlc::Timestamp;
use crate::merkle::{
    Combine, DEEP_SYNC_MARKER, DEPTH, DeepRequest, Descent, MAX_DEEP_PREFIXES, MAX_PREFIX,
    MerkleTree,
};
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
    /// OR tags this step tombstoned locally (OR maps only). Persist these; the tombstones
    /// held before were persisted when they arrived, and the server repeats its whole set in
    /// every entry.
    pub new_tombstones: Vec<String>,
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
    /// Every bucket path or deep node ever queued: none is requested twice, which bounds the
    /// walk.
    requested: BTreeSet<String>,
    /// Whether the server answers deep requests (its root buckets said so).
    deep: bool,
    /// Nodes waiting to be batched into deep requests.
    to_expand: Vec<String>,
    to_fetch: Vec<String>,
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
            deep: false,
            to_expand: Vec::new(),
            to_fetch: Vec::new(),
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
                self.to_expand.clear();
                self.to_fetch.clear();
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
                if path.is_empty() && self.kind == MapKind::Lww {
                    self.deep = buckets.contains_key(DEEP_SYNC_MARKER);
                }
                match DeepRequest::parse(path) {
                    Some(DeepRequest::Expand(prefixes)) => {
                        self.on_expanded(&target, &prefixes, buckets, &mut out);
                    }
                    // Buckets for a fetch: the server holds nothing under those nodes.
                    Some(DeepRequest::Fetch(prefixes)) => {
                        for prefix in &prefixes {
                            self.cover(&target, prefix, &mut out);
                        }
                    }
                    None => self.on_buckets(&target, path, buckets, &mut out),
                }
            }
            Answer::LwwLeaf { path, records } => {
                self.take_bucket(message_type, path)?;
                if let Target::Lww(r) = &mut target {
                    let nodes = DeepRequest::parse(path)
                        .map_or_else(|| vec![path.to_owned()], |d| d.prefixes().to_vec());
                    exchange_lww(&self.map, r, &nodes, records, &mut out);
                }
            }
            Answer::OrLeaf { path, entries } => {
                self.take_bucket(message_type, path)?;
                if let Target::Or(r) = &mut target {
                    let local: Vec<String> = r
                        .merkle()
                        .prefix_keys(path)
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
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
        step.new_tombstones = out.tombstoned;
        // One entry may name a tag twice.
        step.new_tombstones.sort_unstable();
        step.new_tombstones.dedup();
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
                self.descend(target, child);
            }
        }
    }

    /// Compares the server's hashes of the children of the expanded `prefixes` (keyed by whole
    /// child paths) with ours, as [`MapSync::on_buckets`] does for one standard node. Keys
    /// that are not children of an expanded node are ignored.
    fn on_expanded(
        &mut self,
        target: &Target<'_>,
        prefixes: &[String],
        theirs: &Buckets,
        out: &mut Outbox,
    ) {
        let expanded: BTreeSet<&str> = prefixes.iter().map(String::as_str).collect();
        let theirs: BTreeMap<&str, u32> = theirs
            .iter()
            .filter(|(child, _)| is_child_of_any(child, &expanded))
            .map(|(child, hash)| (child.as_str(), *hash))
            .collect();
        let mut ours: BTreeMap<String, u32> = BTreeMap::new();
        for prefix in prefixes {
            ours.extend(target.merkle().prefix_buckets(prefix, self.config.combine));
        }
        let children: BTreeSet<&str> = ours
            .keys()
            .map(String::as_str)
            .chain(theirs.keys().copied())
            .collect();
        for child in children {
            let mine = ours.get(child).copied().unwrap_or(0);
            let their = theirs.get(child).copied().unwrap_or(0);
            if mine == their {
                continue;
            }
            if their == 0 {
                self.cover(target, child, out);
            } else {
                self.descend(target, child.to_owned());
            }
        }
    }

    /// Queues a differing node the server holds data in: a standard request, or a deep one
    /// when the server takes them (see the module docs).
    fn descend(&mut self, target: &Target<'_>, path: String) {
        let descent = if self.deep {
            target.merkle().descent(&path)
        } else {
            Descent::Standard
        };
        match descent {
            Descent::Standard => self.queue_bucket(path),
            Descent::Expand | Descent::Fetch if !self.requested.insert(path.clone()) => {}
            Descent::Expand => self.to_expand.push(path),
            Descent::Fetch => self.to_fetch.push(path),
        }
    }

    /// Handles a subtree the server holds nothing in: LWW records are pushed outright; OR keys
    /// are asked for first (see the module docs).
    fn cover(&mut self, target: &Target<'_>, path: &str, out: &mut Outbox) {
        match target {
            Target::Lww(r) => {
                for key in r.merkle().prefix_keys(path) {
                    if let Some(record) = r.map().record(key) {
                        out.ops.push(push_op(&self.map, key, record));
                    }
                }
            }
            Target::Or(r) => {
                let keys = r.merkle().prefix_keys(path);
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
            let Some(request) = self.queued.pop_front().or_else(|| self.deep_batch()) else {
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

    /// The next deep request: a full batch at any time, a partial one only once no answer is
    /// outstanding that could still add to it.
    fn deep_batch(&mut self) -> Option<Request> {
        let drain = self.buckets_in_flight.is_empty() && self.diffs_in_flight == 0;
        let ready =
            |nodes: &Vec<String>| nodes.len() >= MAX_DEEP_PREFIXES || (drain && !nodes.is_empty());
        let request = if ready(&self.to_expand) {
            DeepRequest::Expand(take_batch(&mut self.to_expand))
        } else if ready(&self.to_fetch) {
            DeepRequest::Fetch(take_batch(&mut self.to_fetch))
        } else {
            return None;
        };
        Some(Request::Bucket(request.path()))
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
        self.queued.is_empty()
            && self.to_expand.is_empty()
            && self.to_fetch.is_empty()
            && self.buckets_in_flight.is_empty()
            && self.diffs_in_flight == 0
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
/// The map a server sync message is about, so the engine can route it to that map's walk
/// in one hop; `None` for every other message.
pub fn sync_map_name(message: &Message) -> Option<&str> {
    let map = match message {
        Message::SyncResetRequired(m) => &m.payload.map_name,
        Message::SyncRespRoot(m) => &m.payload.map_name,
        Message::SyncRespBuckets(m) => &m.payload.map_name,
        Message::SyncRespLeaf(m) => &m.payload.map_name,
        Message::OrMapSyncRespRoot(m) => &m.payload.map_name,
        Message::OrMapSyncRespBuckets(m) => &m.payload.map_name,
        Message::OrMapSyncRespLeaf(m) => &m.payload.map_name,
        Message::OrMapDiffResponse(m) => &m.payload.map_name,
        _ => return None,
    };
    Some(map)
}

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
    /// OR tags tombstoned here that were not before.
    tombstoned: Vec<String>,
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

/// `items` in order, `size` (at least 1) per chunk. Each chunk is its own right-sized
/// allocation: splitting the tail off instead left every chunk holding the capacity of all
/// that followed it — quadratic memory, 4 GB for a 100k-record push.
fn chunks<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let size = size.max(1);
    let mut out = Vec::with_capacity(items.len().div_ceil(size));
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(size).collect();
        if chunk.is_empty() {
            return out;
        }
        out.push(chunk);
    }
}

/// Merges a server leaf into `replica`, then queues a push of every local record under the
/// leaf's `nodes` that the server lacks or holds older.
fn exchange_lww(
    map: &str,
    replica: &mut LwwReplica,
    nodes: &[String],
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
    let local = nodes
        .iter()
        .flat_map(|node| replica.merkle().prefix_keys(node));
    for key in local {
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
        key: key.into(),
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
        out.tombstoned.extend(fresh.iter().cloned());
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

/// Up to [`MAX_DEEP_PREFIXES`] nodes off the front of `nodes`.
fn take_batch(nodes: &mut Vec<String>) -> Vec<String> {
    nodes.drain(..nodes.len().min(MAX_DEEP_PREFIXES)).collect()
}

/// Whether `child` is one hex digit longer than one of the `expanded` nodes and starts with
/// it, within the extended trie's depth.
fn is_child_of_any(child: &str, expanded: &BTreeSet<&str>) -> bool {
    let Some(split) = child.len().checked_sub(1) else {
        return false;
    };
    child.len() <= MAX_PREFIX
        && child.is_char_boundary(split)
        && hex_digit(&child[split..]).is_some()
        && expanded.contains(&child[..split])
}

/// A bucket key as the protocol sends it: one lowercase hex digit.
fn hex_digit(key: &str) -> Option<char> {
    let mut chars = key.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_digit() || ('a'..='f').contains(&c) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{FETCH_MAX_KEYS, leaf_path};
    use crate::protocol::{
        BucketsPayload, OrMapDiffResponse, OrMapDiffResponsePayload, OrMapSyncRespBuckets,
        OrMapSyncRespLeaf, OrMapSyncRespLeafPayload, OrMapSyncRespRoot, OrMapSyncRespRootPayload,
        SyncResetRequired, SyncResetRequiredPayload, SyncRespBuckets, SyncRespLeaf,
        SyncRespLeafPayload, SyncRespRoot, SyncRespRootPayload,
    };
    use crate::server::sync::{LwwAnswer, lww_answer};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::collections::VecDeque;

    /// The keys of every op a walk pushed, sorted.
    fn pushed_keys(run: &Run) -> Vec<String> {
        let mut keys: Vec<String> = run
            .sent
            .iter()
            .filter_map(|m| match m {
                Message::OpBatch(b) => Some(b.payload.ops.iter().map(|op| op.key.to_string())),
                _ => None,
            })
            .flatten()
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn chunks_keep_order_and_hold_only_their_own_items() {
        let items: Vec<u32> = (0..10_007).collect();
        let out = chunks(items.clone(), 100);
        assert_eq!(out.len(), 101);
        assert!(out.iter().all(|chunk| chunk.len() <= 100));
        // The memory bound: no chunk keeps the capacity of the items after it.
        assert!(out.iter().all(|chunk| chunk.capacity() <= 100));
        assert_eq!(out.concat(), items);
        assert!(chunks(Vec::<u32>::new(), 10).is_empty());
        assert_eq!(chunks(vec![1, 2, 3], 0), vec![vec![1], vec![2], vec![3]]);
    }

    const MAP: &str = "notes";
    const SERVER_MILLIS: u64 = 9_000;

    fn server_time() -> Timestamp {
        Timestamp::new(SERVER_MILLIS, 0, "server")
    }

    /// Answers like `src/server/sync.rs` (LWW bucket requests through its own
    /// [`lww_answer`]): every request gets an answer (unknown paths get empty buckets), leaves
    /// carry full records and, for OR maps, the whole tombstone set in every entry; pushes are
    /// merged without a reply. Unless `deep`, it plays a TypeScript-era server that does not
    /// advertise the deep-sync extension.
    struct FakeServer {
        replica: Replica,
        combine: Combine,
        deep: bool,
    }

    impl FakeServer {
        fn new(replica: Replica) -> Self {
            Self {
                replica,
                combine: Combine::Fmix,
                deep: false,
            }
        }

        fn deep(replica: Replica) -> Self {
            Self {
                deep: true,
                ..Self::new(replica)
            }
        }

        fn answer(&mut self, message: &Message) -> Option<Message> {
            let combine = self.combine;
            match (message, &mut self.replica) {
                (Message::SyncInit(m), Replica::Lww(r)) => Some(
                    SyncRespRoot {
                        payload: SyncRespRootPayload {
                            map_name: m.map_name.clone(),
                            root_hash: r.merkle().root(combine),
                            timestamp: server_time(),
                        },
                    }
                    .into(),
                ),
                (Message::MerkleReqBucket(m), Replica::Lww(r)) => {
                    let BucketRequest { map_name, path } = m.payload.clone();
                    assert!(
                        self.deep || path.len() <= DEPTH,
                        "deep path {path:?} sent to a server that did not advertise it"
                    );
                    Some(match lww_answer(r.merkle(), &path, combine) {
                        LwwAnswer::Leaf(keys) => SyncRespLeaf {
                            payload: SyncRespLeafPayload {
                                records: keys
                                    .into_iter()
                                    .filter_map(|key| {
                                        r.map().record(key).map(|record| LeafRecord {
                                            key: key.to_owned(),
                                            record: record.clone(),
                                        })
                                    })
                                    .collect(),
                                map_name,
                                path,
                            },
                        }
                        .into(),
                        LwwAnswer::Buckets(mut buckets) => {
                            if !self.deep {
                                buckets.remove(DEEP_SYNC_MARKER);
                            }
                            SyncRespBuckets {
                                payload: BucketsPayload {
                                    buckets,
                                    map_name,
                                    path,
                                },
                            }
                            .into()
                        }
                    })
                }
                (Message::OpBatch(batch), Replica::Lww(r)) => {
                    for op in &batch.payload.ops {
                        assert_eq!(op.id, None, "repairs carry no op id");
                        assert_eq!(op.map_name, MAP);
                        r.merge(&op.key, op.record.clone().expect("a record"));
                    }
                    None
                }
                (Message::OrMapSyncInit(m), Replica::Or(r)) => Some(
                    OrMapSyncRespRoot {
                        payload: OrMapSyncRespRootPayload {
                            map_name: m.map_name.clone(),
                            root_hash: r.merkle().root(combine),
                            timestamp: server_time(),
                            covering_epoch: None,
                            full_resync: None,
                        },
                    }
                    .into(),
                ),
                (Message::OrMapMerkleReqBucket(m), Replica::Or(r)) => {
                    let BucketRequest { map_name, path } = m.payload.clone();
                    let keys: Option<Vec<String>> = r
                        .merkle()
                        .leaf_keys(&path)
                        .map(|keys| keys.map(str::to_owned).collect());
                    Some(match keys {
                        Some(keys) => OrMapSyncRespLeaf {
                            payload: OrMapSyncRespLeafPayload {
                                entries: server_entries(r, &keys),
                                map_name,
                                path,
                                covering_epoch: None,
                            },
                        }
                        .into(),
                        None => OrMapSyncRespBuckets {
                            payload: BucketsPayload {
                                buckets: wire_buckets(r.merkle(), &path, combine),
                                map_name,
                                path,
                            },
                        }
                        .into(),
                    })
                }
                (Message::OrMapDiffRequest(m), Replica::Or(r)) => Some(
                    OrMapDiffResponse {
                        payload: OrMapDiffResponsePayload {
                            map_name: m.payload.map_name.clone(),
                            entries: server_entries(r, &m.payload.keys),
                            covering_epoch: None,
                        },
                    }
                    .into(),
                ),
                (Message::OrMapPushDiff(push), Replica::Or(r)) => {
                    for e in &push.payload.entries {
                        r.merge_key(&e.key, e.records.clone(), e.tombstones.clone());
                    }
                    None
                }
                (other, _) => panic!("the fake server cannot answer {other:?}"),
            }
        }
    }

    fn server_entries(r: &OrReplica, keys: &[String]) -> Vec<OrMapEntry> {
        let tombstones: Vec<String> = r.map().tombstones().map(str::to_owned).collect();
        keys.iter()
            .map(|key| OrMapEntry {
                key: key.clone(),
                records: r.map().records(key).cloned().collect(),
                tombstones: tombstones.clone(),
            })
            .collect()
    }

    /// Everything one walk did.
    struct Run {
        sync: MapSync,
        sent: Vec<Message>,
        changed: BTreeSet<String>,
        steps: Vec<Step>,
        max_outstanding: usize,
    }

    impl Run {
        fn sent_types(&self) -> Vec<&'static str> {
            self.sent.iter().map(Message::type_name).collect()
        }

        fn count(&self, message_type: &str) -> usize {
            self.sent_types()
                .iter()
                .filter(|t| **t == message_type)
                .count()
        }
    }

    fn is_request(m: &Message) -> bool {
        matches!(
            m,
            Message::MerkleReqBucket(_)
                | Message::OrMapMerkleReqBucket(_)
                | Message::OrMapDiffRequest(_)
        )
    }

    fn is_request_answer(m: &Message) -> bool {
        matches!(
            m,
            Message::SyncRespBuckets(_)
                | Message::SyncRespLeaf(_)
                | Message::OrMapSyncRespBuckets(_)
                | Message::OrMapSyncRespLeaf(_)
                | Message::OrMapDiffResponse(_)
        )
    }

    /// Runs a whole walk over an in-order network, `answer` playing the server.
    fn drive(
        client: &mut Replica,
        config: SyncConfig,
        mut answer: impl FnMut(&Message) -> Option<Message>,
    ) -> Run {
        let (sync, init) = match &*client {
            Replica::Lww(_) => MapSync::lww(MAP, 0, config),
            Replica::Or(r) => MapSync::or(MAP, 0, r, config),
        };
        let mut run = Run {
            sync,
            sent: Vec::new(),
            changed: BTreeSet::new(),
            steps: Vec::new(),
            max_outstanding: 0,
        };
        let mut to_server = VecDeque::from([init]);
        let mut to_client = VecDeque::new();
        let mut outstanding = 0usize;
        for _ in 0..100_000 {
            while let Some(m) = to_server.pop_front() {
                if is_request(&m) {
                    outstanding += 1;
                }
                to_client.extend(answer(&m));
                run.sent.push(m);
            }
            run.max_outstanding = run.max_outstanding.max(outstanding);
            let Some(reply) = to_client.pop_front() else {
                return run;
            };
            if is_request_answer(&reply) {
                outstanding -= 1;
            }
            let step = run.sync.on_message(&reply, client).expect("a valid answer");
            run.changed.extend(step.changed_keys.iter().cloned());
            to_server.extend(step.send.iter().cloned());
            run.steps.push(step);
        }
        panic!("the walk did not terminate");
    }

    fn walk(client: &mut Replica, server: &mut FakeServer, config: SyncConfig) -> Run {
        let run = drive(client, config, |m| server.answer(m));
        assert_eq!(
            run.sync.outcome(),
            Some(SyncOutcome::Synced {
                map_name: MAP.to_owned(),
                synced_at_millis: SERVER_MILLIS,
            })
        );
        assert!(run.steps.last().is_some_and(|s| s.done));
        assert_eq!(
            run.steps.iter().filter(|s| s.done).count(),
            1,
            "done is reported once"
        );
        run
    }

    fn assert_same_roots(a: &Replica, b: &Replica) {
        for combine in [Combine::Sum, Combine::Fmix] {
            assert_eq!(a.merkle().root(combine), b.merkle().root(combine));
        }
    }

    fn lww_record(value: Option<Value>, millis: u64, node: &str) -> LwwRecord {
        LwwRecord {
            value: value.map(Into::into),
            timestamp: Timestamp::new(millis, 0, node),
            ttl_ms: None,
        }
    }

    fn lww(items: &[(&str, Option<Value>, u64, &str)]) -> Replica {
        Replica::Lww(LwwReplica::from_records(items.iter().map(
            |(key, value, millis, node)| {
                ((*key).to_owned(), lww_record(value.clone(), *millis, node))
            },
        )))
    }

    fn lww_value(replica: &Replica, key: &str) -> Option<LwwRecord> {
        match replica {
            Replica::Lww(r) => r.map().record(key).cloned(),
            Replica::Or(_) => None,
        }
    }

    fn or_record(value: Value, millis: u64, node: &str) -> OrMapRecord {
        let timestamp = Timestamp::new(millis, 0, node);
        OrMapRecord {
            value,
            tag: timestamp.to_string(),
            timestamp,
            ttl_ms: None,
        }
    }

    fn or(records: &[(&str, &OrMapRecord)], tombstones: &[&OrMapRecord]) -> Replica {
        let mut grouped: BTreeMap<String, Vec<OrMapRecord>> = BTreeMap::new();
        for (key, record) in records {
            grouped
                .entry((*key).to_owned())
                .or_default()
                .push((*record).clone());
        }
        Replica::Or(OrReplica::from_parts(
            grouped,
            tombstones.iter().map(|r| r.tag.clone()),
        ))
    }

    fn or_tags(replica: &Replica, key: &str) -> Vec<String> {
        match replica {
            Replica::Or(r) => r.map().records(key).map(|r| r.tag.clone()).collect(),
            Replica::Lww(_) => Vec::new(),
        }
    }

    /// `count` keys that all route to the leaf of `anchor`.
    fn same_leaf_keys(anchor: &str, count: usize) -> Vec<String> {
        let path = leaf_path(anchor);
        (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| leaf_path(k) == path)
            .take(count)
            .collect()
    }

    #[test]
    fn equal_lww_states_exchange_only_init_and_root() {
        let items = [("a", Some(json!(1)), 10, "c"), ("b", None, 11, "c")];
        let mut client = lww(&items);
        let mut server = FakeServer::new(lww(&items));
        let run = walk(&mut client, &mut server, SyncConfig::default());
        assert_eq!(run.sent_types(), ["SYNC_INIT"]);
        assert_eq!(run.steps.len(), 1);
        assert_eq!(run.steps[0].server_time, Some(server_time()));
        assert!(run.changed.is_empty());
    }

    #[test]
    fn equal_or_states_exchange_only_init_and_root() {
        let a = or_record(json!("x"), 10, "c");
        let mut client = or(&[("k", &a)], &[]);
        let mut server = FakeServer::new(client.clone());
        let run = walk(&mut client, &mut server, SyncConfig::default());
        assert_eq!(run.sent_types(), ["ORMAP_SYNC_INIT"]);
        let Message::OrMapSyncInit(init) = &run.sent[0] else {
            unreachable!()
        };
        assert_eq!(init.root_hash, client.merkle().root(Combine::Fmix));
        assert_eq!(init.last_sync_timestamp, Some(0));
        assert_eq!(init.bucket_hashes.len(), 1);
    }

    #[test]
    fn server_only_lww_records_are_pulled() {
        let mut client = lww(&[]);
        let mut server = FakeServer::new(lww(&[
            ("a", Some(json!("A")), 10, "s"),
            ("b", None, 12, "s"),
            ("c", Some(json!({"n": 3})), 13, "s"),
        ]));
        let run = walk(&mut client, &mut server, SyncConfig::default());
        assert_eq!(
            run.changed,
            BTreeSet::from(["a", "b", "c"].map(String::from))
        );
        assert_eq!(run.count("OP_BATCH"), 0, "nothing to push");
        assert_eq!(
            lww_value(&client, "c"),
            Some(lww_record(Some(json!({"n": 3})), 13, "s"))
        );
        assert_eq!(lww_value(&client, "b"), Some(lww_record(None, 12, "s")));
        assert_same_roots(&client, &server.replica);
        assert_eq!(run.sent[1].type_name(), "MERKLE_REQ_BUCKET");
    }

    #[test]
    fn client_only_lww_records_are_pushed_as_idless_ops() {
        let mut client = lww(&[("a", Some(json!(1)), 10, "c"), ("gone", None, 11, "c")]);
        let mut server = FakeServer::new(lww(&[]));
        let run = walk(&mut client, &mut server, SyncConfig::default());
        // An empty server root covers the whole tree: no bucket requests at all.
        assert_eq!(run.sent_types(), ["SYNC_INIT", "OP_BATCH"]);
        let Message::OpBatch(batch) = &run.sent[1] else {
            unreachable!()
        };
        let mut ops: Vec<_> = batch
            .payload
            .ops
            .iter()
            .map(|op| (op.key.as_str(), op.op_type, op.id.clone()))
            .collect();
        ops.sort_by_key(|(key, _, _)| *key);
        assert_eq!(
            ops,
            [
                ("a", Some(OpType::Put), None),
                ("gone", Some(OpType::Remove), None)
            ]
        );
        assert!(run.changed.is_empty());
        assert_same_roots(&client, &server.replica);
    }

    #[test]
    fn lww_pushes_inside_shared_leaves_and_empty_buckets() {
        let keys = same_leaf_keys("anchor", 3);
        let shared = ("anchor", Some(json!(0)), 5, "s");
        let mut client = lww(&[
            shared.clone(),
            (keys[0].as_str(), Some(json!("same leaf")), 20, "c"),
        ]);
        let mut server = FakeServer::new(lww(&[
            shared,
            (keys[1].as_str(), Some(json!("theirs")), 21, "s"),
        ]));
        // A key in a top-level bucket the server holds nothing in.
        let elsewhere = (0..)
            .map(|i| format!("x{i}"))
            .find(|k| leaf_path(k)[..1] != leaf_path("anchor")[..1])
            .expect("a key elsewhere");
        if let Replica::Lww(r) = &mut client {
            r.merge(&elsewhere, lww_record(Some(json!("far")), 30, "c"));
        }
        let run = walk(&mut client, &mut server, SyncConfig::default());
        let pushed = pushed_keys(&run);
        let mut expected = vec![keys[0].clone(), elsewhere];
        expected.sort();
        assert_eq!(pushed, expected);
        assert_eq!(run.changed, BTreeSet::from([keys[1].clone()]));
        assert_same_roots(&client, &server.replica);
    }

    #[test]
    fn lww_conflicts_resolve_by_timestamp_both_ways() {
        let mut client = lww(&[
            ("mine-newer", Some(json!("client")), 50, "c"),
            ("theirs-newer", Some(json!("client")), 10, "c"),
        ]);
        let mut server = FakeServer::new(lww(&[
            ("mine-newer", Some(json!("server")), 40, "s"),
            ("theirs-newer", None, 60, "s"),
        ]));
        let run = walk(&mut client, &mut server, SyncConfig::default());
        assert_eq!(run.changed, BTreeSet::from(["theirs-newer".to_owned()]));
        let winner = Some(lww_record(Some(json!("client")), 50, "c"));
        assert_eq!(lww_value(&client, "mine-newer"), winner);
        assert_eq!(lww_value(&server.replica, "mine-newer"), winner);
        let tombstone = Some(lww_record(None, 60, "s"));
        assert_eq!(lww_value(&client, "theirs-newer"), tombstone);
        assert_eq!(lww_value(&server.replica, "theirs-newer"), tombstone);
        assert_same_roots(&client, &server.replica);
    }

    #[test]
    fn or_adds_and_removes_flow_both_ways_with_only_relevant_tombstones() {
        let shared = or_record(json!("both"), 1, "s");
        let removed_here = or_record(json!("removed by client"), 2, "s");
        let removed_there = or_record(json!("removed by server"), 3, "c");
        let added_here = or_record(json!("client add"), 4, "c");
        let added_there = or_record(json!("server add"), 5, "s");
        let unrelated = or_record(json!("long gone"), 6, "c");
        let mut client = or(
            &[("k", &shared), ("k", &removed_there), ("k", &added_here)],
            &[&removed_here, &unrelated],
        );
        let mut server = FakeServer::new(or(
            &[("k", &shared), ("k", &removed_here), ("k", &added_there)],
            &[&removed_there],
        ));
        let run = walk(&mut client, &mut server, SyncConfig::default());
        let pushes: Vec<&OrMapEntry> = run
            .sent
            .iter()
            .filter_map(|m| match m {
                Message::OrMapPushDiff(p) => Some(&p.payload.entries),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(
            pushes,
            [&OrMapEntry {
                key: "k".into(),
                records: vec![added_here.clone()],
                tombstones: vec![removed_here.tag.clone()],
            }]
        );
        let mut expected = vec![shared.tag, added_here.tag, added_there.tag];
        expected.sort();
        assert_eq!(or_tags(&client, "k"), expected);
        assert_eq!(or_tags(&server.replica, "k"), expected);
        assert_eq!(run.changed, BTreeSet::from(["k".to_owned()]));
        // Only the tag new here is reported for persisting, not the server's whole set.
        let tombstoned: Vec<&String> = run.steps.iter().flat_map(|s| &s.new_tombstones).collect();
        assert_eq!(tombstoned, [&removed_there.tag]);
        assert_same_roots(&client, &server.replica);
    }

    #[test]
    fn or_keys_the_server_lacks_are_diffed_before_pushing() {
        let kept = or_record(json!("keep"), 1, "c");
        let lost = or_record(json!("server removed it"), 2, "c");
        let mut client = or(&[("a", &kept), ("b", &lost)], &[]);
        let mut server = FakeServer::new(or(&[], &[&lost]));
        let run = walk(&mut client, &mut server, SyncConfig::default());
        assert_eq!(
            run.sent_types(),
            ["ORMAP_SYNC_INIT", "ORMAP_DIFF_REQUEST", "ORMAP_PUSH_DIFF"]
        );
        let Message::OrMapPushDiff(push) = &run.sent[2] else {
            unreachable!()
        };
        assert_eq!(
            push.payload.entries,
            [OrMapEntry {
                key: "a".into(),
                records: vec![kept],
                tombstones: vec![],
            }]
        );
        assert_eq!(run.changed, BTreeSet::from(["b".to_owned()]));
        assert!(or_tags(&client, "b").is_empty());
        assert_same_roots(&client, &server.replica);
    }

    #[test]
    fn reset_required_ends_the_walk() {
        let mut client = lww(&[("a", Some(json!(1)), 10, "c")]);
        let (mut sync, _) = MapSync::lww(MAP, 1, SyncConfig::default());
        let reset: Message = SyncResetRequired {
            payload: SyncResetRequiredPayload {
                map_name: MAP.into(),
                reason: None,
            },
        }
        .into();
        let step = sync.on_message(&reset, &mut client).unwrap();
        assert!(step.reset && !step.done && step.send.is_empty());
        assert_eq!(
            sync.outcome(),
            Some(SyncOutcome::ResetRequired {
                map_name: MAP.into()
            })
        );
        assert!(matches!(
            sync.on_message(&reset, &mut client),
            Err(SyncError::Finished { .. })
        ));
        // OR walks take the same (shared) reset message.
        let (mut sync, _) = MapSync::or(MAP, 1, &OrReplica::default(), SyncConfig::default());
        let mut client = Replica::Or(OrReplica::default());
        assert!(sync.on_message(&reset, &mut client).unwrap().reset);
    }

    #[test]
    fn stray_messages_are_errors_that_change_nothing() {
        let mut client = lww(&[("a", Some(json!(1)), 10, "c")]);
        let (mut sync, _) = MapSync::lww(MAP, 0, SyncConfig::default());
        let root = |map: &str, root_hash: u32| -> Message {
            SyncRespRoot {
                payload: SyncRespRootPayload {
                    map_name: map.into(),
                    root_hash,
                    timestamp: server_time(),
                },
            }
            .into()
        };
        let buckets = |path: &str| -> Message {
            SyncRespBuckets {
                payload: BucketsPayload {
                    map_name: MAP.into(),
                    path: path.into(),
                    buckets: Buckets::new(),
                },
            }
            .into()
        };
        assert!(matches!(
            sync.on_message(&root("other", 1), &mut client),
            Err(SyncError::OtherMap { .. })
        ));
        assert!(matches!(
            sync.on_message(&buckets(""), &mut client),
            Err(SyncError::UnrequestedPath { .. })
        ));
        let mut wrong_kind = Replica::Or(OrReplica::default());
        assert!(matches!(
            sync.on_message(&root(MAP, 1), &mut wrong_kind),
            Err(SyncError::KindMismatch { .. })
        ));
        let or_root: Message = OrMapSyncRespRoot {
            payload: OrMapSyncRespRootPayload {
                map_name: MAP.into(),
                root_hash: 1,
                timestamp: server_time(),
                covering_epoch: None,
                full_resync: None,
            },
        }
        .into();
        assert!(matches!(
            sync.on_message(&or_root, &mut client),
            Err(SyncError::Unexpected { .. })
        ));
        // None of that moved the walk: the real root still starts it.
        let step = sync.on_message(&root(MAP, 1), &mut client).unwrap();
        assert_eq!(step.send.len(), 1);
        assert!(matches!(
            sync.on_message(&root(MAP, 1), &mut client),
            Err(SyncError::DuplicateRoot { .. })
        ));
        assert!(matches!(
            sync.on_message(&buckets("f"), &mut client),
            Err(SyncError::UnrequestedPath { .. })
        ));
        let step = sync.on_message(&buckets(""), &mut client).unwrap();
        assert!(step.done, "an empty answer ends the walk");
        assert_eq!(step.send.len(), 1, "and pushes what only we hold");

        let (mut or_sync, _) = MapSync::or(MAP, 0, &OrReplica::default(), SyncConfig::default());
        let diff: Message = OrMapDiffResponse {
            payload: OrMapDiffResponsePayload {
                map_name: MAP.into(),
                entries: vec![],
                covering_epoch: None,
            },
        }
        .into();
        assert!(matches!(
            or_sync.on_message(&diff, &mut wrong_kind),
            Err(SyncError::UnrequestedDiff { .. })
        ));
    }

    #[test]
    fn walk_respects_the_request_window() {
        let server_items: Vec<(String, Option<Value>, u64, &str)> = (0..300)
            .map(|i| (format!("key-{i}"), Some(json!(i)), 10, "s"))
            .collect();
        let borrowed: Vec<_> = server_items
            .iter()
            .map(|(k, v, m, n)| (k.as_str(), v.clone(), *m, *n))
            .collect();
        for window in [1, 3, 16] {
            let mut client = lww(&[]);
            let mut server = FakeServer::new(lww(&borrowed));
            let config = SyncConfig {
                max_requests_in_flight: window,
                ..SyncConfig::default()
            };
            let run = walk(&mut client, &mut server, config);
            assert_eq!(
                run.max_outstanding, window,
                "the window is used, never exceeded"
            );
            assert_eq!(run.changed.len(), 300);
            assert_same_roots(&client, &server.replica);
        }
    }

    #[test]
    fn a_server_claiming_data_everywhere_cannot_prolong_the_walk() {
        let mut client = lww(&[("a", Some(json!(1)), 10, "c")]);
        let mut requests = 0;
        let run = drive(&mut client, SyncConfig::default(), |m| match m {
            Message::SyncInit(_) => Some(
                SyncRespRoot {
                    payload: SyncRespRootPayload {
                        map_name: MAP.into(),
                        root_hash: 7,
                        timestamp: server_time(),
                    },
                }
                .into(),
            ),
            Message::MerkleReqBucket(req) => {
                requests += 1;
                let path = req.payload.path.clone();
                // Every digit claims data, plus keys that are not single lowercase digits.
                let mut buckets: Buckets =
                    HEX_FOR_TESTS.chars().map(|d| (d.to_string(), 1)).collect();
                buckets.extend(["A", "g", "ab", ""].map(|k| (k.to_owned(), 1)));
                if path.len() >= DEPTH {
                    buckets.clear();
                }
                Some(
                    SyncRespBuckets {
                        payload: BucketsPayload {
                            map_name: MAP.into(),
                            path,
                            buckets,
                        },
                    }
                    .into(),
                )
            }
            Message::OpBatch(_) => None,
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(requests, 1 + 16 + 256 + 4096);
        assert!(run.steps.last().is_some_and(|s| s.done));
        let pushes = run.count("OP_BATCH");
        assert_eq!(pushes, 1, "our one record, from its empty leaf");
    }

    const HEX_FOR_TESTS: &str = "0123456789abcdef";

    /// A client and a deep server sharing `count` keys of one leaf, the server then changing
    /// `changed` of them and adding `added` keys to the same leaf.
    fn one_busy_leaf(
        count: usize,
        changed: usize,
        added: usize,
    ) -> (Replica, Replica, Vec<String>) {
        let keys = same_leaf_keys("anchor", count + added);
        let items: Vec<(&str, Option<Value>, u64, &str)> = keys[..count]
            .iter()
            .map(|k| (k.as_str(), Some(json!(k)), 10, "c"))
            .collect();
        let client = lww(&items);
        let mut server = client.clone();
        if let Replica::Lww(r) = &mut server {
            for key in keys[..changed].iter().chain(&keys[count..]) {
                r.merge(key, lww_record(Some(json!("new")), 20, "s"));
            }
        }
        let mut moved = keys[..changed].to_vec();
        moved.extend_from_slice(&keys[count..]);
        moved.sort();
        (client, server, moved)
    }

    fn leaf_records_received(answers: &[Message]) -> usize {
        answers
            .iter()
            .map(|m| match m {
                Message::SyncRespLeaf(l) => l.payload.records.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn a_deep_walk_fetches_only_the_changed_keys_of_a_busy_leaf() {
        let (mut client, server, moved) = one_busy_leaf(300, 2, 1);
        let mut server = FakeServer::deep(server);
        let mut answers = Vec::new();
        let run = drive(&mut client, SyncConfig::default(), |m| {
            let reply = server.answer(m);
            answers.extend(reply.clone());
            reply
        });
        assert_eq!(run.changed, moved.iter().cloned().collect::<BTreeSet<_>>());
        assert_same_roots(&client, &server.replica);
        let records = leaf_records_received(&answers);
        assert!(
            (moved.len()..=moved.len() * (FETCH_MAX_KEYS + 1)).contains(&records),
            "{records} records for {} changes, not the whole leaf of 301",
            moved.len()
        );
        let paths: Vec<String> = run
            .sent
            .iter()
            .filter_map(|m| match m {
                Message::MerkleReqBucket(r) => Some(r.payload.path.clone()),
                _ => None,
            })
            .collect();
        assert!(paths.iter().any(|p| p.starts_with('+')), "{paths:?}");
        assert!(paths.iter().any(|p| p.starts_with('=')), "{paths:?}");
        assert!(
            !paths.contains(&leaf_path("anchor")),
            "the leaf is never sent whole"
        );
        assert_eq!(run.count("OP_BATCH"), 0, "nothing to push");
    }

    #[test]
    fn a_server_without_the_marker_gets_the_standard_walk() {
        let (mut client, server, moved) = one_busy_leaf(300, 2, 1);
        // FakeServer::new asserts that no deep path reaches it.
        let mut server = FakeServer::new(server);
        let mut answers = Vec::new();
        let run = drive(&mut client, SyncConfig::default(), |m| {
            let reply = server.answer(m);
            answers.extend(reply.clone());
            reply
        });
        assert_eq!(run.changed, moved.into_iter().collect::<BTreeSet<_>>());
        assert_same_roots(&client, &server.replica);
        assert_eq!(leaf_records_received(&answers), 301, "the whole leaf");
    }

    #[test]
    fn a_deep_walk_pushes_what_only_we_hold_below_a_leaf() {
        let (server, mut client, moved) = one_busy_leaf(300, 3, 2);
        let mut server = FakeServer::deep(server);
        let run = walk(&mut client, &mut server, SyncConfig::default());
        let pushed = pushed_keys(&run);
        assert_eq!(pushed, moved);
        assert!(run.changed.is_empty());
        assert_same_roots(&client, &server.replica);
    }

    #[test]
    fn deep_requests_are_batched() {
        // Many busy leaves, one change in each: the expansions and fetches share requests.
        let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
        let items: Vec<(&str, Option<Value>, u64, &str)> = keys
            .iter()
            .map(|k| (k.as_str(), Some(json!(1)), 10, "c"))
            .collect();
        let mut client = lww(&items);
        let mut server = client.clone();
        if let Replica::Lww(r) = &mut server {
            for key in keys.iter().step_by(100) {
                r.merge(key, lww_record(Some(json!(2)), 20, "s"));
            }
        }
        let mut server = FakeServer::deep(server);
        let run = walk(&mut client, &mut server, SyncConfig::default());
        assert_eq!(run.changed.len(), 200);
        assert_same_roots(&client, &server.replica);
        let requests = run.count("MERKLE_REQ_BUCKET");
        assert!(requests < 40, "{requests} requests for 200 changes");
    }

    #[test]
    fn a_combine_mismatch_costs_a_full_walk_but_converges() {
        let mut client = lww(&[
            ("a", Some(json!(1)), 10, "c"),
            ("b", Some(json!(2)), 10, "c"),
        ]);
        let mut server = FakeServer::new(client.clone());
        server.combine = Combine::Sum;
        let run = walk(&mut client, &mut server, SyncConfig::default());
        assert!(
            run.count("MERKLE_REQ_BUCKET") >= 4,
            "root, two levels, leaves"
        );
        assert_eq!(run.count("OP_BATCH"), 0, "equal data pushes nothing");
        assert!(run.changed.is_empty());
    }

    #[test]
    fn pushes_are_chunked() {
        let items: Vec<(String, Option<Value>, u64, &str)> = (0..5)
            .map(|i| (format!("key-{i}"), Some(json!(i)), 10, "c"))
            .collect();
        let borrowed: Vec<_> = items
            .iter()
            .map(|(k, v, m, n)| (k.as_str(), v.clone(), *m, *n))
            .collect();
        let mut client = lww(&borrowed);
        let mut server = FakeServer::new(lww(&[]));
        let config = SyncConfig {
            max_items_per_message: 2,
            ..SyncConfig::default()
        };
        let run = walk(&mut client, &mut server, config);
        let sizes: Vec<usize> = run
            .sent
            .iter()
            .filter_map(|m| match m {
                Message::OpBatch(b) => Some(b.payload.ops.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert_same_roots(&client, &server.replica);
    }

    fn lww_items() -> impl Strategy<Value = Vec<(String, LwwRecord)>> {
        proptest::collection::vec(
            (0u16..400, 0u64..6, 0u8..2, proptest::option::of(0i64..5)),
            0..120,
        )
        .prop_map(|items| {
            items
                .into_iter()
                .map(|(key, millis, node, value)| {
                    (
                        format!("k{key}"),
                        lww_record(value.map(|v| json!(v)), millis, &format!("n{node}")),
                    )
                })
                .collect()
        })
    }

    /// A pool of OR records (unique tags) and, per side, which it holds and which it removed.
    fn or_sides() -> impl Strategy<Value = (Replica, Replica)> {
        proptest::collection::vec((0u16..60, 0i64..4, 0u8..4, 0u8..4), 0..80).prop_map(|pool| {
            let mut sides = [OrReplica::default(), OrReplica::default()];
            for (i, (key, value, client_has, server_has)) in pool.into_iter().enumerate() {
                let record = or_record(json!(value), i as u64, "n");
                let key = format!("k{key}");
                // 0: absent, 1: live, 2: added then removed, 3: only the removal seen.
                for (side, has) in sides.iter_mut().zip([client_has, server_has]) {
                    if has == 1 || has == 2 {
                        side.apply(&key, record.clone());
                    }
                    if has >= 2 {
                        side.apply_tombstone(&record.tag);
                    }
                }
            }
            let [client, server] = sides;
            (Replica::Or(client), Replica::Or(server))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// After one walk and the server applying the pushes, both replicas have equal roots,
        /// and a second walk is just the init and the root.
        #[test]
        fn lww_walks_converge(
            shared in lww_items(),
            client_only in lww_items(),
            server_only in lww_items(),
            window in 1usize..6,
            deep in any::<bool>(),
        ) {
            let mut client = LwwReplica::from_records(shared.clone());
            let mut server = LwwReplica::from_records(shared);
            for (k, r) in client_only { client.merge(&k, r); }
            for (k, r) in server_only { server.merge(&k, r); }
            let mut client = Replica::Lww(client);
            let mut server = FakeServer::new(Replica::Lww(server));
            server.deep = deep;
            let config = SyncConfig { max_requests_in_flight: window, ..SyncConfig::default() };
            walk(&mut client, &mut server, config);
            for combine in [Combine::Sum, Combine::Fmix] {
                prop_assert_eq!(client.merkle().root(combine), server.replica.merkle().root(combine));
            }
            let again = walk(&mut client, &mut server, config);
            prop_assert_eq!(again.sent_types(), ["SYNC_INIT"]);
        }

        #[test]
        fn or_walks_converge((client, server) in or_sides(), window in 1usize..6) {
            let mut client = client;
            let mut server = FakeServer::new(server);
            let config = SyncConfig { max_requests_in_flight: window, ..SyncConfig::default() };
            walk(&mut client, &mut server, config);
            for combine in [Combine::Sum, Combine::Fmix] {
                prop_assert_eq!(client.merkle().root(combine), server.replica.merkle().root(combine));
            }
            let again = walk(&mut client, &mut server, config);
            prop_assert_eq!(again.sent_types(), ["ORMAP_SYNC_INIT"]);
        }
    }
}
