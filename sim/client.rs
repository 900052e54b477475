//! The client side of a simulation: the [`SimClientHost`] trait a scenario drives, and
//! [`ModelClient`], an implementation over the raw protocol.
//!
//! `ModelClient` keeps a *confirmed* replica per map (what the server acknowledged or sent in
//! a Merkle walk) and an op log of stamped, unanswered writes that it sends again after every
//! reconnect. An op leaves the log when the server acknowledges it (it then merges into the
//! confirmed replica) or rejects it for good; so once the log is empty, the confirmed replica
//! is exactly what convergence compares with the server.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use topgun::auth::mint_token;
use topgun::hlc::{Hlc, HlcConfig};
use topgun::merkle::{Combine, leaf_path};
use topgun::protocol::codec::{Frame, decode, encode_msgpack};
use topgun::protocol::{
    Auth, BucketRequest, Buckets, ClientOp, LockRelease, LockReleasePayload, LockRequest,
    LockRequestPayload, MerkleReqBucket, Message, OpBatch, OpBatchPayload, OpType,
    OrMapDiffRequest, OrMapDiffRequestPayload, OrMapMerkleReqBucket, OrMapSyncInit, SyncInit,
    WriteConcern,
};
use topgun::record::{LwwRecord, OrMapRecord};
use topgun::replica::{LwwReplica, OrReplica};

use crate::harness::{EPOCH_MS, SECRET, SERVER, SERVER_PORT, SimClock, elapsed_ms};
use crate::history::{Change, Outcome};

/// The combine function the server uses for clients of unknown generation.
pub const COMBINE: Combine = Combine::Fmix;
/// Ops per `OP_BATCH`.
const BATCH_OPS: usize = 64;

/// Why a client operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not connected")]
    NotConnected,
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("client: {0}")]
    Client(#[from] topgun::client::ClientError),
}

/// The kind of a simulated map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MapKind {
    Lww,
    Or,
}

/// A map the scenario writes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MapSpec {
    pub name: String,
    pub kind: MapKind,
}

/// A write the workload asks for; the client stamps it.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRequest {
    Put {
        key: String,
        value: serde_json::Value,
    },
    Remove {
        key: String,
    },
    OrAdd {
        key: String,
        value: serde_json::Value,
    },
    /// Removes one tag of `key` the client knows (`pick` chooses which); nothing if none.
    OrRemove {
        key: String,
        pick: usize,
    },
}

/// A stamped write, as queued in the op log.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub op_id: u64,
    pub map: String,
    pub key: String,
    pub change: Change,
}

/// What a flush observed.
#[derive(Debug, Default, PartialEq)]
pub struct FlushReport {
    /// Ops sent again because an earlier send was never answered.
    pub resent: Vec<u64>,
    /// Each answered op, its outcome and when (simulated ms) the answer arrived.
    pub answers: Vec<(u64, Outcome, u64)>,
}

/// A map's state as one replica holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum MapState {
    Lww(BTreeMap<String, LwwRecord>),
    Or {
        records: BTreeMap<String, Vec<OrMapRecord>>,
        tombstones: BTreeSet<String>,
    },
}

impl MapState {
    pub fn from_lww(replica: &LwwReplica) -> Self {
        MapState::Lww(
            replica
                .map()
                .records()
                .map(|(k, r)| (k.to_owned(), r.clone()))
                .collect(),
        )
    }

    /// Whether a client holding `self` has converged to the server's `server`: the same
    /// records, and no tombstone the server lacks. A client may miss the tombstones of tags it
    /// never held: a key whose records were all removed leaves the server's Merkle tree, so no
    /// sync visits it, and nothing the client holds needs them (had it held such a tag, its
    /// records would differ, or its orphaned key would have fetched them).
    pub fn converged_to(&self, server: &Self) -> bool {
        match (self, server) {
            (
                MapState::Or {
                    records,
                    tombstones,
                },
                MapState::Or {
                    records: server_records,
                    tombstones: server_tombstones,
                },
            ) => records == server_records && tombstones.is_subset(server_tombstones),
            (mine, server) => mine == server,
        }
    }

    /// Where `self` and `other` differ, for a failure report: the first few keys, and
    /// tombstones only one side holds.
    pub fn differences(&self, other: &Self) -> String {
        fn keys<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<String> {
            a.keys()
                .chain(b.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(String::clone)
                .collect()
        }
        match (self, other) {
            (MapState::Lww(a), MapState::Lww(b)) => format!("keys {:?}", keys(a, b)),
            (
                MapState::Or {
                    records: a,
                    tombstones: ta,
                },
                MapState::Or {
                    records: b,
                    tombstones: tb,
                },
            ) => format!(
                "keys {:?}; tombstones only here {:?}, only there {:?}",
                keys(a, b),
                ta.difference(tb).collect::<Vec<_>>(),
                tb.difference(ta).collect::<Vec<_>>()
            ),
            _ => "different kinds".to_owned(),
        }
    }

    pub fn from_or(replica: &OrReplica) -> Self {
        let map = replica.map();
        MapState::Or {
            records: map
                .keys()
                .map(|k| (k.to_owned(), map.records(k).cloned().collect()))
                .collect(),
            tombstones: map.tombstones().map(str::to_owned).collect(),
        }
    }
}

/// What a host learns about itself when it starts.
#[derive(Debug, Clone)]
pub struct ClientContext {
    pub name: String,
    pub clock: SimClock,
    pub maps: Vec<MapSpec>,
    pub write_concern: WriteConcern,
    /// How long any single wait for the server may take before the connection counts as lost.
    pub timeout: Duration,
    /// Seed of the client's own randomness (backoff jitter), derived from the run's seed.
    pub entropy_seed: u64,
}

/// A simulated client as a scenario drives it: [`ModelClient`] over the raw protocol, or
/// `RealClient` over the SDK's `TopGunClient`. Either keeps unanswered writes across
/// reconnects and reports every server answer by op id.
#[allow(async_fn_in_trait)]
pub trait SimClientHost: Sized + 'static {
    async fn create(context: ClientContext) -> Result<Self, ClientError>;
    /// Opens and authenticates a connection (replacing a lost one).
    async fn connect(&mut self) -> Result<(), ClientError>;
    fn disconnect(&mut self);
    fn is_connected(&self) -> bool;
    /// Stamps a write with the client's HLC and queues it: the ops it became (none for an
    /// OR remove with no known tag).
    async fn write(&mut self, map: &MapSpec, request: WriteRequest) -> Vec<Stamped>;
    /// Unanswered writes.
    async fn pending(&self) -> usize;
    /// Sends every unanswered write and waits for the server's answers.
    async fn flush(&mut self) -> Result<FlushReport, ClientError>;
    /// Asks for `lock` with a lease of `ttl_ms`; the fencing token once granted within `wait`.
    async fn lock(
        &mut self,
        lock: &str,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Option<u64>, ClientError>;
    /// Releases `lock`; whether the server confirmed it.
    async fn unlock(&mut self, lock: &str, token: u64) -> Result<bool, ClientError>;
    /// Merkle-syncs `map` from the server; returns the root the server advertised, if the
    /// client can observe it.
    async fn sync(&mut self, map: &MapSpec) -> Result<Option<u32>, ClientError>;
    /// The confirmed state of `map` and its Merkle root.
    async fn state(&self, map: &MapSpec) -> (MapState, u32);
}

type Socket = WebSocketStream<turmoil::net::TcpStream>;

/// A client over the raw protocol (see the module doc).
pub struct ModelClient {
    context: ClientContext,
    hlc: Hlc,
    ws: Option<Socket>,
    next_id: u64,
    next_request: u64,
    /// The op log: unanswered writes by op id.
    log: BTreeMap<u64, (ClientOp, Stamped)>,
    /// Ops sent on the current connection and not yet answered.
    sent: BTreeSet<u64>,
    /// Ops sent at least once, to tell a replay from a first send.
    ever_sent: BTreeSet<u64>,
    lww: BTreeMap<String, LwwReplica>,
    or: BTreeMap<String, OrReplica>,
    /// Server frames read while waiting for something else (e.g. a late lock grant).
    inbox: VecDeque<Message>,
    /// Answers not yet reported, stamped when they arrived; the next successful flush
    /// reports them (so a connection lost mid-flush loses no answer).
    answers: Vec<(u64, Outcome, u64)>,
}

impl ModelClient {
    async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        let bytes = encode_msgpack(&message).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let ws = self.ws.as_mut().ok_or(ClientError::NotConnected)?;
        ws.send(WsMessage::Binary(bytes.into())).await?;
        Ok(())
    }

    /// The next server message, or `Timeout`; any failure drops the connection.
    async fn recv(&mut self) -> Result<Message, ClientError> {
        let outcome = self.recv_inner().await;
        if outcome.is_err() {
            self.ws = None;
        }
        outcome
    }

    async fn recv_inner(&mut self) -> Result<Message, ClientError> {
        let timeout = self.context.timeout;
        let ws = self.ws.as_mut().ok_or(ClientError::NotConnected)?;
        loop {
            let frame = tokio::time::timeout(timeout, ws.next())
                .await
                .map_err(|_| ClientError::Timeout)?
                .ok_or(ClientError::Closed)??;
            match frame {
                WsMessage::Binary(bytes) => {
                    return decode(Frame::Binary(&bytes))
                        .map_err(|e| ClientError::Protocol(e.to_string()));
                }
                WsMessage::Close(_) => return Err(ClientError::Closed),
                _ => {}
            }
        }
    }

    fn client_op(&self, op_id: u64, map: &MapSpec, key: &str, change: &Change) -> ClientOp {
        let mut op = ClientOp {
            id: Some(op_id.to_string()),
            map_name: map.name.clone(),
            key: key.into(),
            op_type: None,
            record: None,
            or_record: None,
            or_tag: None,
            write_concern: Some(self.context.write_concern),
            timeout: None,
        };
        match change {
            Change::Lww(record) => {
                op.op_type = Some(if record.value.is_some() {
                    OpType::Put
                } else {
                    OpType::Remove
                });
                op.record = Some(record.clone());
            }
            Change::OrAdd(record) => {
                op.op_type = Some(OpType::OrAdd);
                op.or_record = Some(Box::new(record.clone()));
            }
            Change::OrRemove { tag } => {
                op.op_type = Some(OpType::OrRemove);
                op.or_tag = Some(tag.clone());
            }
        }
        op
    }

    /// Merges an acknowledged write into the confirmed replica.
    fn confirm(&mut self, stamped: &Stamped) {
        match &stamped.change {
            Change::Lww(record) => {
                self.lww
                    .entry(stamped.map.clone())
                    .or_default()
                    .merge(&stamped.key, record.clone());
            }
            Change::OrAdd(record) => {
                self.or
                    .entry(stamped.map.clone())
                    .or_default()
                    .apply(&stamped.key, record.clone());
            }
            Change::OrRemove { tag } => {
                self.or
                    .entry(stamped.map.clone())
                    .or_default()
                    .apply_tombstone(tag);
            }
        }
    }

    /// Applies one server answer to the op log; anything else goes to the inbox.
    fn settle(&mut self, message: Message) {
        let at_ms = elapsed_ms();
        match message {
            Message::OpAck(ack) => {
                let Ok(last) = ack.payload.last_id.parse::<u64>() else {
                    return;
                };
                let level = ack.payload.achieved_level.unwrap_or(WriteConcern::Applied);
                let done: Vec<u64> = self.sent.range(..=last).copied().collect();
                for id in done {
                    self.sent.remove(&id);
                    if let Some((_, stamped)) = self.log.remove(&id) {
                        self.confirm(&stamped);
                        self.answers.push((id, Outcome::Acked(level), at_ms));
                    }
                }
            }
            Message::OpRejected(rejected) => {
                let Ok(id) = rejected.payload.op_id.parse::<u64>() else {
                    return;
                };
                let code = rejected.payload.code.unwrap_or(400);
                self.sent.remove(&id);
                // 503 is transient: the op stays in the log and goes out again.
                if code != 503 && self.log.remove(&id).is_some() {
                    self.answers.push((id, Outcome::Rejected(code), at_ms));
                }
            }
            other => self.inbox.push_back(other),
        }
    }

    /// The walk of PROTOCOL.md §3.4/§3.5: descend only into buckets whose hash differs.
    async fn walk(&mut self, map: &MapSpec) -> Result<(), ClientError> {
        let mut queue = VecDeque::from([String::new()]);
        while let Some(path) = queue.pop_front() {
            let request = BucketRequest {
                map_name: map.name.clone(),
                path: path.clone(),
            };
            let message: Message = match map.kind {
                MapKind::Lww => MerkleReqBucket { payload: request }.into(),
                MapKind::Or => OrMapMerkleReqBucket { payload: request }.into(),
            };
            self.send(message).await?;
            loop {
                match self.recv().await? {
                    Message::SyncRespBuckets(b) if b.payload.path == path => {
                        let local = self.lww.entry(map.name.clone()).or_default().merkle();
                        queue.extend(local.differing_children(&path, &b.payload.buckets, COMBINE));
                        break;
                    }
                    Message::OrMapSyncRespBuckets(b) if b.payload.path == path => {
                        let replica = self.or.entry(map.name.clone()).or_default();
                        queue.extend(replica.merkle().differing_children(
                            &path,
                            &b.payload.buckets,
                            COMBINE,
                        ));
                        let orphans = orphaned_keys(replica, &path, &b.payload.buckets);
                        if !orphans.is_empty() {
                            self.or_diff(map, orphans).await?;
                        }
                        break;
                    }
                    Message::SyncRespLeaf(leaf) if leaf.payload.path == path => {
                        let replica = self.lww.entry(map.name.clone()).or_default();
                        for r in leaf.payload.records {
                            replica.merge(&r.key, r.record);
                        }
                        break;
                    }
                    Message::OrMapSyncRespLeaf(leaf) if leaf.payload.path == path => {
                        let replica = self.or.entry(map.name.clone()).or_default();
                        for entry in leaf.payload.entries {
                            replica.merge_key(&entry.key, entry.records, entry.tombstones);
                        }
                        break;
                    }
                    other => self.settle(other),
                }
            }
        }
        Ok(())
    }
}

impl ModelClient {
    /// Asks for the server's entries of `keys` and merges them: an OR key whose records were
    /// all removed is gone from the server's tree, and only its entry's tombstones tell us.
    async fn or_diff(&mut self, map: &MapSpec, keys: Vec<String>) -> Result<(), ClientError> {
        self.send(
            OrMapDiffRequest {
                payload: OrMapDiffRequestPayload {
                    map_name: map.name.clone(),
                    keys,
                },
            }
            .into(),
        )
        .await?;
        loop {
            match self.recv().await? {
                Message::OrMapDiffResponse(diff) if diff.payload.map_name == map.name => {
                    let replica = self.or.entry(map.name.clone()).or_default();
                    for entry in diff.payload.entries {
                        replica.merge_key(&entry.key, entry.records, entry.tombstones);
                    }
                    return Ok(());
                }
                other => self.settle(other),
            }
        }
    }
}

/// Local OR keys under child buckets of `path` that the server reports empty (hash 0 or
/// absent) while we hold data there.
fn orphaned_keys(replica: &OrReplica, path: &str, server: &Buckets) -> Vec<String> {
    let mine = replica.merkle().buckets(path, COMBINE);
    let empty: Vec<String> = mine
        .iter()
        .filter(|(digit, hash)| {
            **hash != 0 && server.get(&digit.to_string()).copied().unwrap_or(0) == 0
        })
        .map(|(digit, _)| format!("{path}{digit}"))
        .collect();
    replica
        .map()
        .keys()
        .filter(|key| {
            let leaf = leaf_path(key);
            empty.iter().any(|prefix| leaf.starts_with(prefix.as_str()))
        })
        .map(str::to_owned)
        .collect()
}

impl ModelClient {
    fn stamp(&mut self, map: &MapSpec, request: WriteRequest) -> Option<Stamped> {
        let (key, change) = match request {
            WriteRequest::Put { key, value } => (
                key,
                Change::Lww(LwwRecord {
                    value: Some(value.into()),
                    timestamp: self.hlc.now(),
                    ttl_ms: None,
                }),
            ),
            WriteRequest::Remove { key } => (
                key,
                Change::Lww(LwwRecord {
                    value: None,
                    timestamp: self.hlc.now(),
                    ttl_ms: None,
                }),
            ),
            WriteRequest::OrAdd { key, value } => {
                let timestamp = self.hlc.now();
                let record = OrMapRecord {
                    value,
                    tag: timestamp.to_string(),
                    timestamp,
                    ttl_ms: None,
                };
                (key, Change::OrAdd(record))
            }
            WriteRequest::OrRemove { key, pick } => {
                let tags: Vec<String> = self
                    .or
                    .get(&map.name)
                    .map(|r| r.map().records(&key).map(|rec| rec.tag.clone()).collect())
                    .unwrap_or_default();
                let tag = tags.get(pick % tags.len().max(1))?.clone();
                (key, Change::OrRemove { tag })
            }
        };
        let op_id = self.next_id;
        self.next_id += 1;
        let stamped = Stamped {
            op_id,
            map: map.name.clone(),
            key: key.clone(),
            change,
        };
        let op = self.client_op(op_id, map, &key, &stamped.change);
        self.log.insert(op_id, (op, stamped.clone()));
        Some(stamped)
    }

    async fn flush_log(&mut self) -> Result<FlushReport, ClientError> {
        let mut report = FlushReport::default();
        let unsent: Vec<u64> = self
            .log
            .keys()
            .filter(|id| !self.sent.contains(id))
            .copied()
            .collect();
        for chunk in unsent.chunks(BATCH_OPS) {
            let ops = chunk
                .iter()
                .filter_map(|id| self.log.get(id).map(|(op, _)| op.clone()))
                .collect();
            self.send(
                OpBatch {
                    payload: OpBatchPayload {
                        ops,
                        write_concern: Some(self.context.write_concern),
                        timeout: None,
                    },
                }
                .into(),
            )
            .await?;
            self.sent.extend(chunk.iter().copied());
        }
        report.resent = unsent
            .iter()
            .filter(|id| !self.ever_sent.insert(**id))
            .copied()
            .collect();
        while !self.sent.is_empty() {
            let message = self.recv().await?;
            self.settle(message);
        }
        report.answers = std::mem::take(&mut self.answers);
        Ok(report)
    }
}

impl SimClientHost for ModelClient {
    async fn create(context: ClientContext) -> Result<Self, ClientError> {
        let hlc = Hlc::new(
            format!("node-{}", context.name),
            Arc::new(context.clock.clone()),
            HlcConfig::default(),
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self {
            context,
            hlc,
            ws: None,
            next_id: 1,
            next_request: 1,
            log: BTreeMap::new(),
            sent: BTreeSet::new(),
            ever_sent: BTreeSet::new(),
            lww: BTreeMap::new(),
            or: BTreeMap::new(),
            inbox: VecDeque::new(),
            answers: Vec::new(),
        })
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        self.ws = None;
        let timeout = self.context.timeout;
        let stream = tokio::time::timeout(
            timeout,
            turmoil::net::TcpStream::connect((SERVER, SERVER_PORT)),
        )
        .await
        .map_err(|_| ClientError::Timeout)??;
        let url = format!("ws://{SERVER}:{SERVER_PORT}/");
        let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::client_async(url, stream))
            .await
            .map_err(|_| ClientError::Timeout)??;
        self.ws = Some(ws);
        // The token comes from an identity provider, so it carries true time, not our skew.
        let now_secs = (EPOCH_MS + elapsed_ms()) / 1_000;
        let token = mint_token(SECRET, &self.context.name, &["USER"], 3_600, now_secs)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match self.recv().await? {
            Message::AuthRequired(_) => {}
            other => return Err(unexpected(&other)),
        }
        self.send(
            Auth {
                token,
                protocol_version: None,
                device_token: None,
            }
            .into(),
        )
        .await?;
        match self.recv().await? {
            Message::AuthAck(_) => {}
            other => return Err(unexpected(&other)),
        }
        // Whatever was in flight on the old connection is unanswered: send it again.
        self.sent.clear();
        self.inbox.clear();
        Ok(())
    }

    fn disconnect(&mut self) {
        self.ws = None;
    }

    fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    async fn write(&mut self, map: &MapSpec, request: WriteRequest) -> Vec<Stamped> {
        self.stamp(map, request).into_iter().collect()
    }

    async fn pending(&self) -> usize {
        self.log.len()
    }

    async fn flush(&mut self) -> Result<FlushReport, ClientError> {
        self.flush_log().await
    }

    async fn lock(
        &mut self,
        lock: &str,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Option<u64>, ClientError> {
        let request_id = format!("r{}", self.next_request);
        self.next_request += 1;
        self.send(
            LockRequest {
                payload: LockRequestPayload {
                    request_id: request_id.clone(),
                    name: lock.to_owned(),
                    ttl: Some(ttl_ms),
                },
            }
            .into(),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(message) = tokio::time::timeout(left, self.recv()).await else {
                return Ok(None);
            };
            match message? {
                Message::LockGranted(g) if g.payload.request_id == request_id => {
                    return Ok(Some(g.payload.fencing_token));
                }
                other => self.settle(other),
            }
        }
    }

    async fn unlock(&mut self, lock: &str, token: u64) -> Result<bool, ClientError> {
        let request_id = format!("r{}", self.next_request);
        self.next_request += 1;
        self.send(
            LockRelease {
                payload: LockReleasePayload {
                    request_id: Some(request_id.clone()),
                    name: lock.to_owned(),
                    fencing_token: token,
                },
            }
            .into(),
        )
        .await?;
        loop {
            match self.recv().await? {
                Message::LockReleased(r) if r.payload.request_id == request_id => {
                    return Ok(r.payload.success);
                }
                other => self.settle(other),
            }
        }
    }

    async fn sync(&mut self, map: &MapSpec) -> Result<Option<u32>, ClientError> {
        let init: Message = match map.kind {
            MapKind::Lww => SyncInit {
                map_name: map.name.clone(),
                last_sync_timestamp: Some(0),
            }
            .into(),
            MapKind::Or => OrMapSyncInit {
                map_name: map.name.clone(),
                root_hash: self.state_now(map).1,
                bucket_hashes: Buckets::new(),
                last_sync_timestamp: None,
                claimed_epoch: None,
            }
            .into(),
        };
        self.send(init).await?;
        let server_root = loop {
            match self.recv().await? {
                Message::SyncRespRoot(root) if root.payload.map_name == map.name => {
                    break root.payload.root_hash;
                }
                Message::OrMapSyncRespRoot(root) if root.payload.map_name == map.name => {
                    break root.payload.root_hash;
                }
                other => self.settle(other),
            }
        };
        if server_root != self.state_now(map).1 {
            self.walk(map).await?;
        }
        Ok(Some(server_root))
    }

    async fn state(&self, map: &MapSpec) -> (MapState, u32) {
        self.state_now(map)
    }
}

impl ModelClient {
    fn state_now(&self, map: &MapSpec) -> (MapState, u32) {
        match map.kind {
            MapKind::Lww => {
                let replica = self.lww.get(&map.name).cloned().unwrap_or_default();
                (MapState::from_lww(&replica), replica.merkle().root(COMBINE))
            }
            MapKind::Or => {
                let replica = self.or.get(&map.name).cloned().unwrap_or_default();
                (MapState::from_or(&replica), replica.merkle().root(COMBINE))
            }
        }
    }
}

fn unexpected(message: &Message) -> ClientError {
    ClientError::Protocol(format!("unexpected {}", message.type_name()))
}
