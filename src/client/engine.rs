//! The SyncEngine: a small coordinator over the client's parts.
//!
//! It owns the one task that reads connection events and routes each server message to the
//! part that handles it (one hop: see [`Engine::on_message`]), runs the post-authentication
//! sequence — Merkle sync of every local map, then pending ops, then queued topic messages,
//! then re-subscriptions — and keeps the op-log window full. App calls (in `mod.rs`) lock the
//! same [`Core`] briefly; a local write commits to the store *outside* the lock so concurrent
//! writes share group commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, broadcast, mpsc, oneshot, watch};

use crate::clock::SharedClock;
use crate::entropy::SharedEntropy;
use crate::hlc::{Hlc, HlcConfig, Timestamp};
use crate::protocol::{
    ClientOp, Message, OpBatch, OpBatchPayload, ServerEventPayload, WriteConcern,
};
use crate::replica::{MapKind, Replica};
use crate::store::{Mutation, Store, WriteBatch};

use super::ClientError;
use super::backpressure::{Admission, BackpressureConfig, BackpressureController};
use super::connection::{
    ConnectionConfig, ConnectionEvent, Connector, SessionId, TokenSource, WebSocketManager,
};
use super::counters::CounterManager;
use super::events::ClientEvent;
use super::locks::LockManager;
use super::maps::{LocalMaps, MapsConfig, lww_mutation, or_mutations};
use super::oplog::{OpLog, Rejection};
use super::queries::{QueryConfig, QueryManager};
use super::search::{SearchConfig, SearchManager};
use super::sync::{MapSync, SyncConfig};
use super::topics::{TopicManager, TopicQueueConfig};

/// The meta key under which the client's node id is persisted (generated once).
const NODE_ID_META: &str = "client.node_id";
/// How often timeouts (searches, locks, writes, topic ages) are checked.
const TICK: Duration = Duration::from_millis(250);
/// How many app events a slow listener may fall behind before it skips some.
const EVENT_CAPACITY: usize = 1_024;

/// Everything configurable about a client.
#[derive(Clone)]
pub struct ClientOptions {
    /// The server, e.g. `ws://127.0.0.1:8080/`.
    pub url: String,
    /// Node id for HLC timestamps; `None` = the persisted one, generated on first start.
    pub node_id: Option<String>,
    /// How the client authenticates.
    pub tokens: TokenSource,
    /// Heartbeat, timeouts and reconnect backoff (its `url` is overwritten by `url`).
    pub connection: ConnectionConfig,
    /// The in-flight window and its overflow strategy.
    pub backpressure: BackpressureConfig,
    /// The offline topic queue.
    pub topics: TopicQueueConfig,
    /// How many maps stay loaded.
    pub maps: MapsConfig,
    /// How many live queries may exist.
    pub queries: QueryConfig,
    /// Drift policy of the client's HLC.
    pub hlc: HlcConfig,
    /// Level a plain `set`/`add`/`remove` waits for. `Memory` (the default) means the local
    /// durable commit; `Applied` and above also wait for the server's ack.
    pub write_concern: WriteConcern,
    /// How long a write waits for a server level before it reports a timeout (it stays queued).
    pub write_timeout: Duration,
    /// Most ops in one `OP_BATCH`.
    pub chunk_ops: usize,
    /// Most encoded bytes of ops in one `OP_BATCH`.
    pub chunk_bytes: usize,
}

impl ClientOptions {
    /// Defaults for a client of the server at `url`, authenticating with `tokens`.
    pub fn new(url: impl Into<String>, tokens: TokenSource) -> Self {
        let url = url.into();
        Self {
            connection: ConnectionConfig::new(url.clone()),
            url,
            node_id: None,
            tokens,
            backpressure: BackpressureConfig::default(),
            topics: TopicQueueConfig::default(),
            maps: MapsConfig::default(),
            queries: QueryConfig::default(),
            hlc: HlcConfig::default(),
            write_concern: WriteConcern::Memory,
            write_timeout: Duration::from_secs(5),
            chunk_ops: 500,
            chunk_bytes: 512 * 1024,
        }
    }
}

/// The seams through which the client meets the world.
#[derive(Clone)]
pub struct Seams {
    /// The local store: records, the op log, counters, the node id.
    pub store: Arc<dyn Store>,
    /// How connections are opened.
    pub connector: Arc<dyn Connector>,
    /// The wall clock.
    pub clock: SharedClock,
    /// Randomness (node id, backoff jitter).
    pub entropy: SharedEntropy,
}

/// Requests from handles that must not block (sent from `Drop`).
#[derive(Debug)]
pub(crate) enum Command {
    /// A query handle was dropped.
    Unsubscribe(String),
    /// A search handle was dropped.
    SearchUnsubscribe(String),
    /// A topic subscription was dropped.
    TopicUnsubscribe(String),
    /// A lock guard was dropped while held.
    ReleaseLock(super::locks::LockGrant),
}

/// The engine's state, guarded by one async mutex.
pub(crate) struct Core {
    pub hlc: Hlc,
    pub maps: LocalMaps,
    pub oplog: OpLog,
    pub queries: QueryManager,
    pub search: SearchManager,
    pub topics: TopicManager,
    pub locks: LockManager,
    pub counters: CounterManager,
    session: Option<Session>,
    waiters: BTreeMap<u64, Waiter>,
    /// Maps whose Merkle walk has completed at least once in this run.
    synced_maps: HashSet<String>,
    /// The map of each live query (a query pins its map in memory).
    pub query_maps: HashMap<String, String>,
}

impl Core {
    /// Tells map subscribers and live queries that `keys` of `map` changed.
    fn changed(&mut self, map: &str, keys: &[String], now: u64) {
        let Some(open) = self.maps.get_mut(map) else {
            return;
        };
        for key in keys {
            open.notify(key, now);
            let value = current_value(&open.replica, key, now);
            self.queries.on_change(map, key, value.as_ref());
        }
    }
}

/// An authenticated connection and where its post-auth sequence stands.
struct Session {
    id: SessionId,
    /// Walks still running.
    walks: BTreeMap<String, MapSync>,
    /// Maps walked (or being walked) in this session.
    walked: BTreeSet<String>,
    live: bool,
}

/// A write waiting for a server level.
struct Waiter {
    concern: WriteConcern,
    deadline_ms: u64,
    reply: oneshot::Sender<Result<WriteConcern, ClientError>>,
}

/// The shared engine behind a `TopGunClient` and its handles.
pub(crate) struct Engine {
    pub core: Mutex<Core>,
    pub conn: WebSocketManager,
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub entropy: SharedEntropy,
    pub events: broadcast::Sender<ClientEvent>,
    pub backpressure: BackpressureController,
    pub commands: mpsc::UnboundedSender<Command>,
    pub node_id: String,
    pub options: ClientOptions,
    synced: watch::Sender<bool>,
    /// Bumped whenever a map's walk completes.
    walks_done: watch::Sender<u64>,
    pump: Notify,
}

impl Engine {
    /// Opens the local store (op log, maps, counters, node id) and only then connects
    /// (defect 14: never connect before the previous run's state is loaded).
    pub async fn start(options: ClientOptions, seams: Seams) -> Result<Arc<Self>, ClientError> {
        let store = seams.store.clone();
        let node_id = match &options.node_id {
            Some(id) => id.clone(),
            None => persisted_node_id(&store, &seams.entropy).await?,
        };
        let hlc = Hlc::new(node_id.clone(), seams.clock.clone(), options.hlc)
            .map_err(|e| ClientError::NodeId(e.to_string()))?;
        let oplog = OpLog::open(store.clone()).await?;
        let events = broadcast::channel(EVENT_CAPACITY).0;
        let evictions = events.clone();
        let maps = LocalMaps::open(
            store.clone(),
            options.maps,
            Arc::new(move |event| {
                let _ = evictions.send(ClientEvent::Maps(event));
            }),
        )
        .await?;
        let counters = CounterManager::new(node_id.clone(), store.load_counters().await?);
        let core = Core {
            hlc,
            maps,
            oplog,
            queries: QueryManager::new(options.queries.clone()),
            search: SearchManager::new(SearchConfig::default()),
            topics: TopicManager::new(options.topics.clone()),
            locks: LockManager::new(),
            counters,
            session: None,
            waiters: BTreeMap::new(),
            synced_maps: HashSet::new(),
            query_maps: HashMap::new(),
        };
        let mut connection = options.connection.clone();
        connection.url = options.url.clone();
        let (conn, conn_events) = WebSocketManager::start(
            connection,
            seams.connector.clone(),
            options.tokens.clone(),
            seams.clock.clone(),
            seams.entropy.clone(),
        );
        let (commands, command_rx) = mpsc::unbounded_channel();
        let engine = Arc::new(Self {
            core: Mutex::new(core),
            conn,
            store,
            clock: seams.clock,
            entropy: seams.entropy,
            events,
            backpressure: BackpressureController::new(options.backpressure.clone()),
            commands,
            node_id,
            options,
            synced: watch::channel(false).0,
            walks_done: watch::channel(0).0,
            pump: Notify::new(),
        });
        tokio::spawn(Arc::clone(&engine).run(conn_events, command_rx));
        Ok(engine)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_millis()
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// Resolves once a sync round has completed since the client started.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut synced = self.synced.subscribe();
        tokio::time::timeout(timeout, synced.wait_for(|s| *s))
            .await
            .map_err(|_| ClientError::SyncTimeout(timeout))?
            .map_err(|_| ClientError::Closed)?;
        Ok(())
    }

    /// Resolves once `map` has completed a Merkle walk with the server in this run.
    pub async fn wait_map_synced(&self, map: &str, timeout: Duration) -> Result<(), ClientError> {
        let mut done = self.walks_done.subscribe();
        let wait = async {
            loop {
                if self.core.lock().await.synced_maps.contains(map) {
                    return Ok(());
                }
                if done.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::SyncTimeout(timeout))?
    }

    /// Whether the current session is authenticated (writes, subscriptions go out at once).
    pub fn is_online(core: &Core) -> bool {
        core.session.is_some()
    }

    /// Sends on the current session; `false` when offline or the session is closing (every
    /// caller re-sends its state after the next authentication, or queues instead).
    pub fn send(&self, core: &Core, message: Message) -> bool {
        let Some(session) = core.session.as_ref() else {
            return false;
        };
        match self.conn.send(session.id, message) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "send on a closing session dropped");
                false
            }
        }
    }

    fn send_all(&self, core: &Core, messages: impl IntoIterator<Item = Message>) {
        for message in messages {
            self.send(core, message);
        }
    }

    /// Registers a live query over `map` (local result first, then the server's).
    pub async fn register_query(
        &self,
        map: &str,
        query: crate::query::Query,
    ) -> Result<super::handles::QueryHandle, ClientError> {
        let now = self.now_ms();
        let mut core = self.core.lock().await;
        let kind = core.maps.kind_of(map).unwrap_or(MapKind::Lww);
        let local = core.maps.load(map, kind).await?.entries(now);
        let online = Self::is_online(&core);
        let registered = core
            .queries
            .register(map, query, local.into_iter(), online)?;
        core.maps.query_ref(map, true);
        core.query_maps
            .insert(registered.id.clone(), map.to_owned());
        if let Some(message) = registered.subscribe {
            self.send(&core, message);
        }
        if let Some(eviction) = registered.eviction {
            let super::queries::QueryManagerEvent::Evicted { query_id, map_name } = &eviction.event;
            if core.query_maps.remove(query_id).is_some() {
                core.maps.query_ref(map_name, false);
            }
            if let Some(message) = eviction.unsubscribe {
                self.send(&core, message);
            }
            self.emit(ClientEvent::Query(eviction.event));
        }
        Ok(super::handles::QueryHandle {
            id: registered.id,
            events: registered.events,
            commands: self.commands.clone(),
        })
    }

    // ---- the task ---------------------------------------------------------------------

    async fn run(
        self: Arc<Self>,
        mut conn_events: mpsc::UnboundedReceiver<ConnectionEvent>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        let mut states = self.conn.watch_state();
        loop {
            tokio::select! {
                event = conn_events.recv() => match event {
                    Some(event) => self.on_connection_event(event).await,
                    None => break,
                },
                Some(command) = commands.recv() => self.on_command(command).await,
                () = self.pump.notified() => self.pump_ops().await,
                _ = tick.tick() => self.expire().await,
                changed = states.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(change) = self.conn.history().last().cloned() {
                        self.emit(ClientEvent::Connection(change));
                    }
                }
            }
        }
        tracing::debug!("client engine stopped");
    }

    async fn on_connection_event(&self, event: ConnectionEvent) {
        match event {
            ConnectionEvent::Authenticated { session } => self.on_authenticated(session).await,
            ConnectionEvent::Message { session, message } => {
                let current = self.core.lock().await.session.as_ref().map(|s| s.id);
                if current == Some(session) {
                    self.on_message(message).await;
                }
            }
            ConnectionEvent::Lost { reason, .. } => self.on_lost(&reason).await,
            ConnectionEvent::AuthRequired => self.emit(ClientEvent::AuthRequired),
            ConnectionEvent::AuthFailed { reason } => self.emit(ClientEvent::AuthFailed { reason }),
            ConnectionEvent::ReconnectExhausted { attempts } => {
                self.emit(ClientEvent::ReconnectExhausted { attempts })
            }
        }
    }

    /// Step one of the post-auth sequence: a Merkle walk of every local map.
    async fn on_authenticated(&self, id: SessionId) {
        let mut core = self.core.lock().await;
        let mut session = Session {
            id,
            walks: BTreeMap::new(),
            walked: BTreeSet::new(),
            live: false,
        };
        let mut inits = Vec::new();
        for (map, kind) in core.maps.known() {
            session.walked.insert(map.clone());
            match self.start_walk(&mut core, &map, kind).await {
                Some((walk, init)) => {
                    session.walks.insert(map, walk);
                    inits.push(init);
                }
                None => tracing::warn!(map, "cannot load a map to sync it; skipped this session"),
            }
        }
        core.session = Some(session);
        self.send_all(&core, inits);
        if core.session.as_ref().is_some_and(|s| s.walks.is_empty()) {
            self.go_live(&mut core);
        }
    }

    /// A map opened by the app: if this session has not walked it yet (a map new to this
    /// client), walk it now so the server's data arrives without a reconnect.
    pub async fn opened(&self, core: &mut Core, map: &str, kind: MapKind) {
        let fresh = core
            .session
            .as_mut()
            .is_some_and(|session| session.walked.insert(map.to_owned()));
        if !fresh {
            return;
        }
        if let Some((walk, init)) = self.start_walk(core, map, kind).await {
            if let Some(session) = core.session.as_mut() {
                session.walks.insert(map.to_owned(), walk);
            }
            self.send(core, init);
        }
    }

    /// A walk of `map` from its persisted watermark (an OR init carries our tree).
    async fn start_walk(
        &self,
        core: &mut Core,
        map: &str,
        kind: MapKind,
    ) -> Option<(MapSync, Message)> {
        let watermark = match self.store.get_meta(&watermark_key(map)).await {
            Ok(Some(bytes)) => bytes
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes),
            _ => 0,
        };
        let config = SyncConfig::default();
        match kind {
            MapKind::Lww => Some(MapSync::lww(map, watermark, config)),
            MapKind::Or => {
                let open = core.maps.load(map, MapKind::Or).await.ok()?;
                match &open.replica {
                    Replica::Or(replica) => Some(MapSync::or(map, watermark, replica, config)),
                    Replica::Lww(_) => None,
                }
            }
        }
    }

    /// The rest of the sequence once every walk is done: pending ops, queued topic
    /// messages, then re-subscriptions.
    fn go_live(&self, core: &mut Core) {
        let Some(session) = core.session.as_mut() else {
            return;
        };
        session.live = true;
        let id = session.id;
        let maps = core.maps.known().len();
        self.pump.notify_one();
        self.flush_topics(core);
        let resubscribe: Vec<Message> = core
            .topics
            .resubscribe()
            .into_iter()
            .chain(core.queries.resubscribe())
            .chain(core.search.resubscribe())
            .chain(core.counters.after_auth())
            .collect();
        self.send_all(core, resubscribe);
        self.conn.mark_synced(id);
        self.synced.send_replace(true);
        self.emit(ClientEvent::Synced { maps });
    }

    fn flush_topics(&self, core: &mut Core) {
        let now = self.now_ms();
        let Some(session) = core.session.as_ref().map(|s| s.id) else {
            return;
        };
        let mut sent = 0;
        loop {
            let (next, events) = core.topics.flush_front(now);
            for event in events {
                self.emit(ClientEvent::Topic(event));
            }
            let Some((queued, message)) = next else {
                break;
            };
            if self.conn.send(session, message).is_err() {
                break;
            }
            if let Some(event) = core.topics.flushed(queued) {
                self.emit(ClientEvent::Topic(event));
            }
            sent += 1;
        }
        if sent > 0 {
            tracing::debug!(sent, "flushed the offline topic queue");
        }
    }

    async fn on_lost(&self, reason: &str) {
        let mut core = self.core.lock().await;
        if core.session.take().is_some() {
            tracing::info!(reason, "connection lost; working offline");
        }
        core.oplog.disconnected();
        core.search.disconnected();
        core.queries.disconnected();
        for event in core.locks.disconnected() {
            self.emit(ClientEvent::Lock(event));
        }
        for event in self.backpressure.set_in_flight(0) {
            self.emit(ClientEvent::Backpressure(event));
        }
    }

    async fn on_command(&self, command: Command) {
        let mut core = self.core.lock().await;
        let online = Self::is_online(&core);
        let message = match command {
            Command::Unsubscribe(id) => {
                if let Some(map) = core.query_maps.remove(&id) {
                    core.maps.query_ref(&map, false);
                }
                core.queries.unregister(&id, online)
            }
            Command::SearchUnsubscribe(id) => core.search.unsubscribe(&id, online),
            Command::TopicUnsubscribe(topic) => core.topics.unsubscribe_if_unused(&topic),
            Command::ReleaseLock(grant) => core.locks.release(&grant, self.now_ms()),
        };
        if let Some(message) = message {
            self.send(&core, message);
        }
    }

    async fn expire(&self) {
        let now = self.now_ms();
        let mut core = self.core.lock().await;
        core.search.expire(now);
        for event in core.locks.expire(now) {
            self.emit(ClientEvent::Lock(event));
        }
        let expired: Vec<u64> = core
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for op_id in expired {
            if let Some(waiter) = core.waiters.remove(&op_id) {
                let _ = waiter.reply.send(Err(ClientError::WriteTimeout {
                    op_id,
                    concern: waiter.concern,
                }));
            }
        }
    }

    // ---- the op-log window --------------------------------------------------------------

    /// Sends committed pending ops in bounded chunks while the in-flight window has room.
    async fn pump_ops(&self) {
        let mut core = self.core.lock().await;
        loop {
            if !core.session.as_ref().is_some_and(|s| s.live) {
                return;
            }
            let max = self.options.backpressure.max_in_flight;
            let room = max.saturating_sub(core.oplog.in_flight());
            if room == 0 {
                return;
            }
            let limit = usize::try_from(room)
                .unwrap_or(usize::MAX)
                .min(self.options.chunk_ops);
            let ops = match core.oplog.next_chunk(limit, self.options.chunk_bytes).await {
                Ok(ops) => ops,
                Err(e) => {
                    tracing::warn!(error = %e, "reading pending ops failed; retrying on the next tick");
                    return;
                }
            };
            if ops.is_empty() {
                return;
            }
            let batch = OpBatch {
                payload: OpBatchPayload {
                    ops,
                    write_concern: None,
                    timeout: None,
                },
            };
            self.send(&core, batch.into());
            for event in self.backpressure.set_in_flight(core.oplog.in_flight()) {
                self.emit(ClientEvent::Backpressure(event));
            }
        }
    }

    // ---- local writes -------------------------------------------------------------------

    /// Applies the backpressure strategy before a write is recorded.
    pub async fn admit(&self) -> Result<(), ClientError> {
        loop {
            let (admission, event) = self.backpressure.admit();
            if let Some(event) = event {
                self.emit(ClientEvent::Backpressure(event));
            }
            match admission {
                Admission::Proceed => return Ok(()),
                Admission::Wait => self.backpressure.released().await,
                Admission::Fail(e) => return Err(e.into()),
                Admission::DropOldest => {
                    let mut core = self.core.lock().await;
                    if let Some((op, batch)) = core.oplog.drop_oldest().await? {
                        drop(core);
                        self.store.commit(batch).await?;
                        let op_id = op.numeric_id().unwrap_or_default();
                        self.emit(ClientEvent::Backpressure(
                            super::backpressure::BackpressureEvent::dropped(&op, op_id),
                        ));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Records `ops` durably with `local` record mutations in one atomic commit, then applies
    /// `apply` to the loaded replica. Resolves at `concern`.
    pub async fn record(
        &self,
        map: &str,
        kind: MapKind,
        ops: Vec<ClientOp>,
        local: Vec<Mutation>,
        apply: impl FnOnce(&mut Replica) -> Vec<String>,
        concern: WriteConcern,
    ) -> Result<u64, ClientError> {
        self.admit().await?;
        let server_level = concern >= WriteConcern::Applied;
        let (ids, batch, waiter) = {
            let mut core = self.core.lock().await;
            core.maps.load(map, kind).await?;
            let mut batch: Vec<Mutation> = local;
            let mut ids = Vec::with_capacity(ops.len());
            for mut op in ops {
                if server_level {
                    op.write_concern = Some(concern);
                }
                let (id, op_batch) = core.oplog.append(op, std::mem::take(&mut batch))?;
                batch = op_batch.mutations().to_vec();
                ids.push(id);
            }
            let last = ids.last().copied().unwrap_or_default();
            core.maps.op_pending(map, last);
            let waiter = server_level.then(|| {
                let (reply, rx) = oneshot::channel();
                let deadline_ms = self.now_ms().saturating_add(
                    u64::try_from(self.options.write_timeout.as_millis()).unwrap_or(u64::MAX),
                );
                core.waiters.insert(
                    last,
                    Waiter {
                        concern,
                        deadline_ms,
                        reply,
                    },
                );
                rx
            });
            (ids, WriteBatch::from(batch), waiter)
        };
        let commit = self.store.commit(batch).await;
        let last = ids.last().copied().unwrap_or_default();
        {
            let mut core = self.core.lock().await;
            for id in &ids {
                if commit.is_ok() {
                    core.oplog.committed(*id);
                } else {
                    core.oplog.commit_failed(*id);
                    core.waiters.remove(id);
                }
            }
            commit?;
            let now = self.now_ms();
            if let Some(open) = core.maps.get_mut(map) {
                let changed = apply(&mut open.replica);
                core.changed(map, &changed, now);
            }
        }
        self.pump.notify_one();
        if let Some(rx) = waiter {
            rx.await.map_err(|_| ClientError::Closed)??;
        }
        Ok(last)
    }

    // ---- inbound messages ---------------------------------------------------------------

    /// The dispatcher: every server message goes to exactly one handler.
    async fn on_message(&self, message: Message) {
        match message {
            Message::OpAck(ack) => self.on_ack(&ack.payload).await,
            Message::OpRejected(rejected) => self.on_rejected(rejected.payload).await,
            Message::ServerEvent(event) => {
                self.on_server_events(vec![event.payload], event.timestamp)
                    .await
            }
            Message::ServerBatchEvent(batch) => {
                self.on_server_events(batch.payload.events, batch.timestamp)
                    .await
            }
            Message::Error(error) => self.emit(ClientEvent::ServerError {
                code: error.payload.code,
                message: error.payload.message,
            }),
            other => self.route(other).await,
        }
    }

    /// Messages owned by one part: sync walks, queries, search, topics, locks, counters.
    async fn route(&self, message: Message) {
        let mut core = self.core.lock().await;
        if let Some(map) = super::sync::sync_map_name(&message) {
            let map = map.to_owned();
            self.on_sync_message(&mut core, &map, &message).await;
            return;
        }
        if core.queries.on_message(&message) || core.search.on_message(&message) {
            return;
        }
        if let Some(output) = core.locks.on_message(&message, self.now_ms()) {
            self.send_all(&core, output.send);
            for event in output.events {
                self.emit(ClientEvent::Lock(event));
            }
            return;
        }
        if let Some(outcome) = core.counters.on_message(&message) {
            self.send_all(&core, outcome.send);
            drop(core);
            if let Some(mutation) = outcome.persist {
                if let Err(e) = self.store.commit(vec![mutation].into()).await {
                    tracing::warn!(error = %e, "persisting a counter failed");
                }
            }
            return;
        }
        match &message {
            Message::TopicMessage(m) => {
                if let Some(unsubscribe) = core.topics.on_message(m) {
                    self.send(&core, unsubscribe);
                }
            }
            other => tracing::debug!(kind = other.type_name(), "client ignored a message"),
        }
    }

    async fn on_ack(&self, ack: &crate::protocol::OpAckPayload) {
        let Ok(last_id) = crate::protocol::parse_op_id(&ack.last_id) else {
            tracing::warn!(last_id = %ack.last_id, "OP_ACK with a non-numeric id ignored");
            return;
        };
        let level = ack.achieved_level.unwrap_or(WriteConcern::Applied);
        let mut core = self.core.lock().await;
        let (trim, acked) = core.oplog.ack(last_id);
        if core.oplog.in_flight() == 0 {
            core.maps.ops_settled(last_id);
        }
        for id in acked {
            if let Some(waiter) = core.waiters.remove(&id) {
                let _ = waiter.reply.send(Ok(level));
            }
        }
        for event in self.backpressure.set_in_flight(core.oplog.in_flight()) {
            self.emit(ClientEvent::Backpressure(event));
        }
        drop(core);
        if !trim.is_empty() {
            if let Err(e) = self.store.commit(trim).await {
                // The acked ops stay in the log and are re-sent after a restart; the server
                // applies them idempotently.
                tracing::warn!(error = %e, "trimming acked ops failed");
            }
        }
        self.pump.notify_one();
    }

    async fn on_rejected(&self, rejected: crate::protocol::OpRejectedPayload) {
        let Ok(op_id) = crate::protocol::parse_op_id(&rejected.op_id) else {
            return;
        };
        let mut core = self.core.lock().await;
        let (trim, outcome) = core.oplog.rejected(op_id, rejected.code);
        let mut undo: Vec<Mutation> = Vec::new();
        let mut rewalk: Option<String> = None;
        match outcome {
            Rejection::Retry => {
                // Transient (overload, store trouble): the op stays queued and goes out again
                // with the next chunk.
                tracing::debug!(op_id, code = ?rejected.code, "server deferred a write; it will be resent");
                self.pump.notify_one();
            }
            Rejection::Stale => {}
            Rejection::Final => {
                match core.oplog.read(op_id).await {
                    Ok(Some(op)) => {
                        undo.extend(self.withdraw(&mut core, &op));
                        rewalk = Some(op.map_name);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(op_id, error = %e, "cannot read a rejected op"),
                }
                if let Some(waiter) = core.waiters.remove(&op_id) {
                    let _ = waiter.reply.send(Err(ClientError::Rejected {
                        op_id,
                        code: rejected.code,
                        reason: rejected.reason.clone(),
                    }));
                }
                tracing::warn!(op_id, code = ?rejected.code, reason = %rejected.reason, "server rejected a write");
                self.emit(ClientEvent::OpRejected {
                    op_id,
                    code: rejected.code,
                    reason: rejected.reason,
                });
            }
        }
        let mut batch: Vec<Mutation> = undo;
        batch.extend(trim.mutations().iter().cloned());
        if !batch.is_empty() {
            if let Err(e) = self.store.commit(batch.into()).await {
                tracing::warn!(error = %e, "removing a rejected op failed");
            }
        }
        if let Some(op) = rewalk {
            self.opened(&mut core, &op, MapKind::Lww).await;
        }
    }

    /// Takes back a rejected LWW write (defect 17: a rejected write must not keep winning
    /// locally): the record goes if it is still the rejected one, and the map is walked again
    /// so the server's record for the key returns. OR ops stay (an add the server refused is
    /// a tag no one else holds; a refused remove is repaired by the next walk's pull).
    fn withdraw(&self, core: &mut Core, op: &ClientOp) -> Option<Mutation> {
        let record = op.record.as_ref().filter(|_| !op.is_or_op())?;
        let map = op.map_name.as_str();
        let forgotten = match core.maps.get_mut(map).map(|open| &mut open.replica) {
            Some(Replica::Lww(replica)) => replica.forget(&op.key, &record.timestamp),
            _ => false,
        };
        if forgotten {
            core.changed(map, &[op.key.to_string()], self.now_ms());
        }
        if let Some(session) = core.session.as_mut() {
            if !session.walks.contains_key(map) {
                session.walked.remove(map);
            }
        }
        Some(Mutation::ForgetLww {
            map: op.map_name.clone(),
            key: op.key.to_string(),
            timestamp: record.timestamp.clone(),
        })
    }

    /// Changes other clients made: merged into loaded maps and always into the store (which
    /// merges by the same CRDT rules, so an unloaded map needs no loading).
    async fn on_server_events(
        &self,
        events: Vec<ServerEventPayload>,
        timestamp: Option<Timestamp>,
    ) {
        let now = self.now_ms();
        let mut core = self.core.lock().await;
        if let Some(ts) = &timestamp {
            if let Err(e) = core.hlc.update(ts) {
                tracing::warn!(error = %e, "server timestamp refused by the local HLC");
            }
        }
        let mut mutations = Vec::new();
        for event in events {
            let map = event.map_name.clone();
            let key = event.key.clone();
            if let Some(record) = event.record {
                if core.maps.kind_of(&map) == Some(MapKind::Or) {
                    continue;
                }
                match lww_mutation(&map, &key, &record) {
                    Ok(put) => mutations.push(put),
                    Err(e) => {
                        tracing::warn!(map, key, error = %e, "server record not storable: skipped");
                        continue;
                    }
                }
                let applied = match core.maps.get_mut(&map).map(|open| &mut open.replica) {
                    Some(Replica::Lww(r)) => r.merge(&key, record).is_applied(),
                    _ => false,
                };
                if applied {
                    core.changed(&map, std::slice::from_ref(&key), now);
                }
            } else if event.or_record.is_some() || event.or_tag.is_some() {
                if core.maps.kind_of(&map) == Some(MapKind::Lww) {
                    continue;
                }
                let records: Vec<_> = event.or_record.into_iter().collect();
                let tags: Vec<_> = event.or_tag.into_iter().collect();
                mutations.extend(or_mutations(&map, &key, records.clone(), tags.clone()));
                let touched = match core.maps.get_mut(&map).map(|open| &mut open.replica) {
                    Some(Replica::Or(r)) => r.merge_key(&key, records, tags).touched_keys(&key),
                    _ => Vec::new(),
                };
                core.changed(&map, &touched, now);
            }
        }
        drop(core);
        if !mutations.is_empty() {
            if let Err(e) = self.store.commit(mutations.into()).await {
                tracing::warn!(error = %e, "persisting server changes failed; they stay in memory, and the first sync after a restart fetches them again");
            }
        }
    }

    /// Feeds a sync message to its map's walk; persists what the walk merged.
    async fn on_sync_message(&self, core: &mut Core, map: &str, message: &Message) {
        let now = self.now_ms();
        let Some(kind) = core.maps.kind_of(map) else {
            return;
        };
        let Some(mut walk) = core.session.as_mut().and_then(|s| s.walks.remove(map)) else {
            tracing::debug!(map, "sync message without a running walk ignored");
            return;
        };
        let step = match core.maps.load(map, kind).await {
            Ok(open) => walk.on_message(message, &mut open.replica),
            Err(e) => {
                tracing::warn!(map, error = %e, "cannot load a map to sync it");
                return;
            }
        };
        let step = match step {
            Ok(step) => {
                if let Some(ts) = &step.server_time {
                    if let Err(e) = core.hlc.update(ts) {
                        tracing::warn!(error = %e, "server timestamp refused by the local HLC");
                    }
                }
                step
            }
            Err(e) => {
                tracing::warn!(map, error = %e, "sync walk failed; it restarts on the next connection");
                self.finish_walk(core);
                return;
            }
        };
        self.send_all(core, step.send);
        if step.reset {
            self.reset_map(core, map, kind).await;
            return;
        }
        let mut mutations: Vec<Mutation> = Vec::new();
        if !step.new_tombstones.is_empty() {
            mutations.push(Mutation::AddOrTombstones {
                map: map.to_owned(),
                tags: step.new_tombstones,
            });
        }
        if let Some(open) = core.maps.peek(map) {
            mutations.extend(
                step.changed_keys
                    .iter()
                    .flat_map(|key| persisted_state(map, &open.replica, key)),
            );
        }
        core.changed(map, &step.changed_keys, now);
        if !mutations.is_empty() {
            if let Err(e) = self.store.commit(mutations.into()).await {
                tracing::warn!(map, error = %e, "persisting synced records failed");
            }
        }
        if step.done {
            if let Some(super::sync::SyncOutcome::Synced {
                synced_at_millis, ..
            }) = walk.outcome()
            {
                let mark = Mutation::PutMeta {
                    key: watermark_key(map),
                    value: synced_at_millis.to_le_bytes().to_vec(),
                };
                if let Err(e) = self.store.commit(vec![mark].into()).await {
                    tracing::warn!(map, error = %e, "persisting the sync watermark failed");
                }
            }
            core.synced_maps.insert(map.to_owned());
            self.walks_done.send_modify(|n| *n += 1);
        } else if let Some(session) = core.session.as_mut() {
            session.walks.insert(map.to_owned(), walk);
        }
        self.finish_walk(core);
    }

    /// The server pruned history this map's last sync predates: drop the local copy and
    /// walk again from nothing (pending ops stay in the op log and are still sent).
    async fn reset_map(&self, core: &mut Core, map: &str, kind: MapKind) {
        tracing::info!(
            map,
            "server asked for a full resync; clearing the local copy"
        );
        let clear = vec![
            Mutation::ClearMap {
                map: map.to_owned(),
            },
            Mutation::PutMeta {
                key: watermark_key(map),
                value: 0u64.to_le_bytes().to_vec(),
            },
        ];
        if let Err(e) = self.store.commit(clear.into()).await {
            tracing::warn!(map, error = %e, "clearing a reset map failed");
        }
        core.maps.forget(map);
        if let Err(e) = core.maps.load(map, kind).await {
            tracing::warn!(map, error = %e, "reloading a reset map failed");
            self.finish_walk(core);
            return;
        }
        match self.start_walk(core, map, kind).await {
            Some((walk, init)) => {
                if let Some(session) = core.session.as_mut() {
                    session.walks.insert(map.to_owned(), walk);
                }
                self.send(core, init);
            }
            None => self.finish_walk(core),
        }
    }

    fn finish_walk(&self, core: &mut Core) {
        let done = core
            .session
            .as_ref()
            .is_some_and(|s| !s.live && s.walks.is_empty());
        if done {
            self.go_live(core);
        }
    }
}

/// The value queries see for `key`: the LWW value, or the OR values as an array.
pub(crate) fn current_value(
    replica: &Replica,
    key: &str,
    now_ms: u64,
) -> Option<serde_json::Value> {
    match replica {
        Replica::Lww(r) => r.map().get(key, now_ms).cloned(),
        Replica::Or(r) => {
            let values = r.map().get(key, now_ms);
            (!values.is_empty())
                .then(|| serde_json::Value::Array(values.into_iter().cloned().collect()))
        }
    }
}

/// The mutations that make the store hold what the replica holds for `key`.
fn persisted_state(map: &str, replica: &Replica, key: &str) -> Vec<Mutation> {
    match replica {
        Replica::Lww(r) => r
            .map()
            .record(key)
            .and_then(|record| {
                lww_mutation(map, key, record)
                    .inspect_err(|e| tracing::warn!(map, key, error = %e, "record not storable"))
                    .ok()
            })
            .into_iter()
            .collect(),
        // The step's new tombstones are persisted once, beside these.
        Replica::Or(r) => {
            let records: Vec<_> = r.map().records(key).cloned().collect();
            or_mutations(map, key, records, Vec::new())
        }
    }
}

/// The meta key of a map's sync watermark (server time of its last completed walk).
fn watermark_key(map: &str) -> String {
    format!("client.synced_at.{map}")
}

/// The node id: the persisted one, or a new random one persisted before first use
/// (defect 10: a fresh id per run makes counter slot maps grow forever).
async fn persisted_node_id(
    store: &Arc<dyn Store>,
    entropy: &SharedEntropy,
) -> Result<String, ClientError> {
    if let Some(bytes) = store.get_meta(NODE_ID_META).await? {
        if let Ok(id) = String::from_utf8(bytes) {
            return Ok(id);
        }
    }
    let id = format!("client-{:016x}", entropy.next_u64());
    store
        .commit(
            vec![Mutation::PutMeta {
                key: NODE_ID_META.to_owned(),
                value: id.clone().into_bytes(),
            }]
            .into(),
        )
        .await?;
    Ok(id)
}
