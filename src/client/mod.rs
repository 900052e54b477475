//! The Rust client SDK: an offline-first [`TopGunClient`] whose reads and writes never wait
//! for the network.
//!
//! A write commits to the local store (record and op-log entry in one transaction) and
//! resolves; the [`engine`] sends it when a connection is authenticated and synced, in
//! bounded chunks, and forgets it once the server acknowledges it. The engine is a small
//! coordinator over separately tested, sans-I/O parts:
//!
//! - [`connection`]: the WebSocketManager (handshake, heartbeat, reconnect with backoff, the
//!   observable state machine) behind the [`connection::Connector`] network seam.
//! - [`oplog`] and [`backpressure`]: the durable op log and the in-flight window.
//! - [`maps`]: which maps are loaded (LRU-bounded), [`sync`]: the Merkle walk per map.
//! - [`queries`], [`search`], [`topics`], [`locks`], [`counters`]: one manager each.
//! - [`auth_store`]: the Better-Auth-style storage adapter built on top of the client.

pub mod auth_store;
pub mod backpressure;
pub mod connection;
pub mod counters;
pub mod engine;
pub mod error;
pub mod events;
pub mod handles;
pub mod locks;
pub mod maps;
pub mod oplog;
pub mod queries;
pub mod search;
pub mod sync;
pub mod topics;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};

use crate::protocol::{SearchHit, SearchOptions};
use crate::query::Query;
use crate::replica::MapKind;

pub use self::connection::state::{ConnectionState, StateChange};
pub use self::connection::{Connector, TcpConnector, TokenProvider, TokenSource};
pub use self::engine::{ClientOptions, Seams};
pub use self::error::ClientError;
pub use self::events::ClientEvent;
pub use self::handles::{
    Counter, LockGuard, LwwMap, MapSubscription, OrMap, QueryHandle, SearchHandle, Topic,
    TopicSubscription, WriteOptions,
};

use self::engine::Engine;

/// An offline-first TopGun client. Cheap to clone; every clone is the same client.
#[derive(Clone)]
pub struct TopGunClient {
    engine: Arc<Engine>,
}

impl TopGunClient {
    /// Opens the local store, restores the previous run's op log, maps and counters, then
    /// starts connecting to `options.url` in the background.
    pub async fn start(options: ClientOptions, seams: Seams) -> Result<Self, ClientError> {
        Ok(Self {
            engine: Engine::start(options, seams).await?,
        })
    }

    /// This client's node id (persisted in the local store).
    pub fn node_id(&self) -> &str {
        &self.engine.node_id
    }

    /// A fresh random id (32 hex characters) from the client's entropy seam, for record ids.
    pub fn random_id(&self) -> String {
        self.engine.entropy.hex_id(16)
    }

    /// An LWW map, loaded from local storage before this resolves (`getMapAsync`).
    pub async fn get_map_async<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<LwwMap<T>, ClientError> {
        let mut core = self.engine.core.lock().await;
        core.maps.load(name, MapKind::Lww).await?;
        self.engine.opened(&mut core, name, MapKind::Lww).await;
        Ok(LwwMap {
            engine: self.engine.clone(),
            name: name.to_owned(),
            _values: PhantomData,
        })
    }

    /// An OR map, loaded from local storage before this resolves.
    pub async fn get_or_map_async<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<OrMap<T>, ClientError> {
        let mut core = self.engine.core.lock().await;
        core.maps.load(name, MapKind::Or).await?;
        self.engine.opened(&mut core, name, MapKind::Or).await;
        Ok(OrMap {
            engine: self.engine.clone(),
            name: name.to_owned(),
            _values: PhantomData,
        })
    }

    /// A live query over `map`; the first event is the local result, server results and
    /// every later change (local or remote) follow.
    pub async fn query(&self, map: &str, query: Query) -> Result<QueryHandle, ClientError> {
        self.engine.register_query(map, query).await
    }

    /// A one-shot full-text search of `map` on the server (fails offline).
    pub async fn search(
        &self,
        map: &str,
        query: &str,
        options: SearchOptions,
    ) -> Result<Vec<SearchHit>, ClientError> {
        let receiver = {
            let mut core = self.engine.core.lock().await;
            let online = Engine::is_online(&core);
            let now = self.engine.now_ms();
            let (message, receiver) = core.search.search(map, query, options, online, now)?;
            self.engine.send(&core, message);
            receiver
        };
        Ok(receiver.await.map_err(|_| ClientError::Closed)??)
    }

    /// A live full-text search; subscribes now if online, else after the next sync.
    pub async fn search_subscribe(
        &self,
        map: &str,
        query: &str,
        options: SearchOptions,
    ) -> Result<SearchHandle, ClientError> {
        let mut core = self.engine.core.lock().await;
        let online = Engine::is_online(&core);
        let live = core.search.subscribe(map, query, options, online)?;
        if let Some(message) = live.subscribe {
            self.engine.send(&core, message);
        }
        Ok(SearchHandle {
            id: live.id,
            results: live.results,
            commands: self.engine.commands.clone(),
        })
    }

    /// A pub/sub topic.
    pub fn topic(&self, name: &str) -> Topic {
        Topic {
            engine: self.engine.clone(),
            name: name.to_owned(),
        }
    }

    /// Takes the distributed lock `name` for `ttl`; resolves when granted.
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<LockGuard, ClientError> {
        let receiver = {
            let now = self.engine.now_ms();
            let mut core = self.engine.core.lock().await;
            let online = Engine::is_online(&core);
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let (message, receiver) = core.locks.request(name, ttl_ms, online, now)?;
            self.engine.send(&core, message);
            receiver
        };
        let grant = receiver.await.map_err(|_| ClientError::Closed)??;
        Ok(LockGuard {
            grant: Some(grant),
            engine: self.engine.clone(),
        })
    }

    /// A PN-counter.
    pub async fn counter(&self, name: &str) -> Result<Counter, ClientError> {
        let mut core = self.engine.core.lock().await;
        let online = Engine::is_online(&core);
        let (_, value, message) = core.counters.open(name, online)?;
        if let Some(message) = message {
            self.engine.send(&core, message);
        }
        Ok(Counter {
            engine: self.engine.clone(),
            name: name.to_owned(),
            value,
        })
    }

    /// Everything the app may want to react to: drops, evictions, rejections, state changes.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.engine.events.subscribe()
    }

    /// The connection state now.
    pub fn connection_state(&self) -> ConnectionState {
        self.engine.conn.state()
    }

    /// The connection state, observable.
    pub fn watch_connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.engine.conn.watch_state()
    }

    /// Resolves once a sync round with the server has completed since start.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ClientError> {
        self.engine.wait_synced(timeout).await
    }

    /// Resolves once `map` (opened with `get_map_async`/`get_or_map_async`) has completed a
    /// Merkle walk with the server in this run: its local state includes the server's.
    pub async fn wait_map_synced(&self, map: &str, timeout: Duration) -> Result<(), ClientError> {
        self.engine.wait_map_synced(map, timeout).await
    }

    /// Ops recorded locally and not yet acknowledged by the server.
    pub async fn pending_ops(&self) -> u64 {
        self.engine.core.lock().await.oplog.pending()
    }

    /// Replaces how the client authenticates (a new token is used at once).
    pub fn set_token(&self, tokens: TokenSource) {
        self.engine.conn.set_token(tokens);
    }

    /// Reconnects now, skipping any backoff wait.
    pub fn reconnect(&self) {
        self.engine.conn.force_reconnect();
    }

    /// Disconnects for good. Everything recorded stays in the local store.
    pub async fn close(&self) {
        self.engine.conn.close().await;
    }
}
