//! [`RealClient`]: the SDK's `TopGunClient` as a simulation client host, over turmoil's
//! network ([`TurmoilConnector`]), the host's skewable [`SimClock`](crate::harness::SimClock),
//! a per-client seeded entropy stream and a per-client `MemoryStore`.
//!
//! The client runs its own connection (reconnect with backoff, heartbeat), op log and Merkle
//! sync, so this host only observes it:
//! - a write runs as a spawned task (it resolves at the client's write concern, which may take
//!   a whole offline period); the ops it became are read from the client's op-log journal in
//!   its store as soon as the local commit lands, which gives their ids and stamped records;
//! - acks are the write futures resolving; final rejections are `ClientEvent::OpRejected`;
//! - the final sync forces a reconnect and waits for the post-auth sync round
//!   (`ClientEvent::Synced`), which walks every open map;
//! - the final state and its Merkle root are read from the client's store. The client does
//!   not expose the root the server advertised, so only the server-side root check applies.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use topgun::auth::mint_token;
use topgun::client::connection::BackoffConfig;
use topgun::client::{
    ClientEvent, ClientOptions, Connector, LockGuard, LwwMap, OrMap, Seams, TokenSource,
    TopGunClient, WriteOptions,
};
use topgun::entropy::SeededEntropy;
use topgun::protocol::{ClientOp, WriteConcern};
use topgun::store::{MemoryStore, Store};

use crate::client::{
    ClientContext, ClientError, FlushReport, MapKind, MapSpec, MapState, SimClientHost, Stamped,
    WriteRequest,
};
use crate::harness::{EPOCH_MS, SECRET, SERVER, SERVER_PORT, elapsed_ms};
use crate::history::{Change, Outcome};
use crate::scenario::{empty_state, snapshot_state};

/// Opens plain turmoil TCP streams to the simulated server, whatever the URL says.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    fn connect<'a>(
        &'a self,
        _url: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn topgun::net::Stream>>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((SERVER, SERVER_PORT)).await?;
            Ok(Box::new(stream) as Box<dyn topgun::net::Stream>)
        })
    }
}

/// An op row of the client's op-log journal, as the op log encodes it (named msgpack of its
/// `Entry` enum); other rows (dropped ops) do not decode as this and are skipped.
#[derive(Deserialize)]
enum JournalEntry {
    Op(Box<ClientOp>),
}

/// Server answers not yet reported: op id, outcome, simulated ms.
type Answers = Arc<Mutex<Vec<(u64, Outcome, u64)>>>;

/// Most journal rows read after one write (an OR remove of one value is one op).
const JOURNAL_PAGE: usize = 256;
/// Simulated milliseconds a write may take to commit locally before the host stops waiting.
const COMMIT_WAIT_MS: u64 = 5_000;

/// The real client as a simulation host (see the module doc).
pub struct RealClient {
    context: ClientContext,
    client: TopGunClient,
    store: Arc<MemoryStore>,
    lww: BTreeMap<String, Arc<LwwMap<Value>>>,
    or: BTreeMap<String, Arc<OrMap<Value>>>,
    /// The highest journal sequence already turned into [`Stamped`] ops.
    journal_seen: u64,
    answers: Answers,
    /// How many post-auth sync rounds have completed.
    sync_rounds: watch::Receiver<u64>,
    locks: BTreeMap<String, LockGuard>,
}

impl RealClient {
    pub(crate) fn options(context: &ClientContext) -> ClientOptions {
        // The token comes from an identity provider, so it carries true time, not our skew.
        let now_secs = (EPOCH_MS + elapsed_ms()) / 1_000;
        let token = mint_token(SECRET, &context.name, &["USER"], 24 * 3_600, now_secs)
            .map(TokenSource::Static)
            .unwrap_or_default();
        let mut options = ClientOptions::new(format!("ws://{SERVER}:{SERVER_PORT}/"), token);
        options.node_id = Some(format!("node-{}", context.name));
        options.write_concern = context.write_concern;
        // A write waits out any offline period; the run's end bounds it.
        options.write_timeout = Duration::from_secs(24 * 3_600);
        options.connection.connect_timeout = context.timeout * 2;
        options.connection.heartbeat_interval = context.timeout / 2;
        options.connection.heartbeat_timeout = context.timeout * 2;
        options.connection.backoff = BackoffConfig {
            initial: Duration::from_millis(200),
            multiplier: 2.0,
            max: Duration::from_secs(2),
            jitter: 0.2,
            max_retries: None,
        };
        options
    }

    /// Turns the app events the harness needs into answers and a sync-round count.
    fn watch_events(
        mut events: broadcast::Receiver<ClientEvent>,
        answers: Answers,
    ) -> watch::Receiver<u64> {
        let (rounds, receiver) = watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ClientEvent::Synced { .. }) => rounds.send_modify(|n| *n += 1),
                    Ok(ClientEvent::OpRejected { op_id, code, .. }) => {
                        let outcome = Outcome::Rejected(code.unwrap_or(400));
                        lock(&answers).push((op_id, outcome, elapsed_ms()));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        receiver
    }

    /// Waits (bounded) until the write task's local commit shows in the journal, or the
    /// write finished without journaling anything (an OR remove of a key with no values).
    async fn await_commit(&self, performed: &AtomicBool) {
        let deadline = elapsed_ms() + COMMIT_WAIT_MS;
        let mut spins = 0u32;
        while !performed.load(Ordering::Acquire) && elapsed_ms() < deadline {
            let last = self.store.last_journal_sequence().await.unwrap_or_default();
            if last > self.journal_seen {
                return;
            }
            // Yield first so no simulated time passes; sleep if the commit waits on the
            // network (backpressure).
            if spins < 64 {
                spins += 1;
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    /// The ops journaled since the last call, as stamped writes.
    async fn new_ops(&mut self) -> Vec<Stamped> {
        let rows = self
            .store
            .read_journal(self.journal_seen + 1, JOURNAL_PAGE)
            .await
            .unwrap_or_default();
        let mut stamped = Vec::new();
        for (sequence, bytes) in rows {
            self.journal_seen = self.journal_seen.max(sequence);
            if let Ok(JournalEntry::Op(op)) = rmp_serde::from_slice(&bytes) {
                stamped.extend(stamp_of(*op, sequence));
            }
        }
        stamped
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The history's view of a journaled op.
fn stamp_of(op: ClientOp, sequence: u64) -> Option<Stamped> {
    let change = if let Some(record) = op.or_record {
        Change::OrAdd(*record)
    } else if let Some(tag) = op.or_tag {
        Change::OrRemove { tag }
    } else {
        Change::Lww(op.record?)
    };
    Some(Stamped {
        op_id: sequence,
        map: op.map_name,
        key: op.key.into(),
        change,
    })
}

/// Performs one write through the SDK; `Ok` once it reached the client's write concern.
async fn perform(
    lww: Option<Arc<LwwMap<Value>>>,
    or: Option<Arc<OrMap<Value>>>,
    request: WriteRequest,
    concern: WriteConcern,
) -> Result<(), topgun::client::ClientError> {
    let options = WriteOptions {
        concern,
        ttl_ms: None,
    };
    match (request, lww, or) {
        (WriteRequest::Put { key, value }, Some(map), _) => {
            map.set_with(&key, &value, options).await.map(drop)
        }
        (WriteRequest::Remove { key }, Some(map), _) => map.remove(&key).await.map(drop),
        (WriteRequest::OrAdd { key, value }, _, Some(map)) => map.add(&key, &value).await.map(drop),
        (WriteRequest::OrRemove { key, pick }, _, Some(map)) => {
            let values = map.values(&key).await?;
            match values.get(pick % values.len().max(1)) {
                Some(value) => map.remove(&key, value).await.map(drop),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

impl SimClientHost for RealClient {
    async fn create(context: ClientContext) -> Result<Self, ClientError> {
        let store = Arc::new(MemoryStore::new());
        let seams = Seams {
            store: store.clone(),
            connector: Arc::new(TurmoilConnector),
            clock: Arc::new(context.clock.clone()),
            entropy: Arc::new(SeededEntropy::new(context.entropy_seed)),
        };
        let client = TopGunClient::start(Self::options(&context), seams).await?;
        let answers = Answers::default();
        let sync_rounds = Self::watch_events(client.events(), answers.clone());
        let mut lww = BTreeMap::new();
        let mut or = BTreeMap::new();
        // Opened before the first connection, so the first sync round walks them.
        for map in &context.maps {
            match map.kind {
                MapKind::Lww => {
                    lww.insert(
                        map.name.clone(),
                        Arc::new(client.get_map_async(&map.name).await?),
                    );
                }
                MapKind::Or => {
                    or.insert(
                        map.name.clone(),
                        Arc::new(client.get_or_map_async(&map.name).await?),
                    );
                }
            }
        }
        Ok(Self {
            context,
            client,
            store,
            lww,
            or,
            journal_seen: 0,
            answers,
            sync_rounds,
            locks: BTreeMap::new(),
        })
    }

    /// The client reconnects by itself; nothing to do.
    async fn connect(&mut self) -> Result<(), ClientError> {
        Ok(())
    }

    /// A failed wait does not mean the client's connection is gone; it finds out itself.
    fn disconnect(&mut self) {}

    /// Writes, locks and syncs work (or queue) whatever the connection does.
    fn is_connected(&self) -> bool {
        true
    }

    async fn write(&mut self, map: &MapSpec, request: WriteRequest) -> Vec<Stamped> {
        let (ids_tx, ids_rx) = oneshot::channel::<Vec<u64>>();
        let concern = self.context.write_concern;
        let lww = self.lww.get(&map.name).cloned();
        let or = self.or.get(&map.name).cloned();
        let answers = self.answers.clone();
        // Set once the write resolved, so the wait below does not outlast a write that
        // journaled nothing (the task itself still waits for the ids).
        let performed = Arc::new(AtomicBool::new(false));
        let done = performed.clone();
        tokio::spawn(async move {
            let result = perform(lww, or, request, concern).await;
            done.store(true, Ordering::Release);
            let ids = ids_rx.await.unwrap_or_default();
            if result.is_ok() && concern >= WriteConcern::Applied {
                let at_ms = elapsed_ms();
                let mut answers = lock(&answers);
                answers.extend(
                    ids.into_iter()
                        .map(|id| (id, Outcome::Acked(concern), at_ms)),
                );
            }
        });
        self.await_commit(&performed).await;
        let stamped = self.new_ops().await;
        let _ = ids_tx.send(stamped.iter().map(|s| s.op_id).collect());
        stamped
    }

    async fn pending(&self) -> usize {
        usize::try_from(self.client.pending_ops().await).unwrap_or(usize::MAX)
    }

    /// The client sends by itself; a flush reports the answers that arrived since the last.
    async fn flush(&mut self) -> Result<FlushReport, ClientError> {
        let mut answers = std::mem::take(&mut *lock(&self.answers));
        answers.sort_by_key(|(id, _, at)| (*at, *id));
        Ok(FlushReport {
            resent: Vec::new(),
            answers,
        })
    }

    async fn lock(
        &mut self,
        name: &str,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Option<u64>, ClientError> {
        let asked = self.client.lock(name, Duration::from_millis(ttl_ms));
        match tokio::time::timeout(wait, asked).await {
            Ok(Ok(guard)) => {
                let token = guard.fencing_token();
                self.locks.insert(name.to_owned(), guard);
                Ok(Some(token))
            }
            Ok(Err(_)) | Err(_) => Ok(None),
        }
    }

    async fn unlock(&mut self, name: &str, _token: u64) -> Result<bool, ClientError> {
        match self.locks.remove(name) {
            Some(guard) => {
                guard.release().await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A fresh session walks every open map: force one and wait for its sync round.
    async fn sync(&mut self, _map: &MapSpec) -> Result<Option<u32>, ClientError> {
        let before = *self.sync_rounds.borrow();
        self.client.reconnect();
        let round = self.sync_rounds.wait_for(|n| *n > before);
        match tokio::time::timeout(self.context.timeout * 2, round).await {
            Ok(Ok(_)) => Ok(None),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn state(&self, map: &MapSpec) -> (MapState, u32) {
        match self.store.load_map(&map.name).await {
            Ok(Some(snapshot)) => snapshot_state(snapshot),
            _ => empty_state(map.kind),
        }
    }
}
