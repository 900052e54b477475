//! The TopGun server.
//!
//! One module per concern, reached in one hop from [`dispatch`]:
//! - [`http`] — the front door (WebSocket upgrade or the plain endpoints);
//! - [`session`] — one connection's read loop, writer and per-connection state;
//! - [`auth`] — the handshake;
//! - [`connections`] — the registry and LRU eviction;
//! - [`operations`] — the write path;
//! - [`sync`] — Merkle sync;
//! - [`queries`] and [`live`] — query subscriptions and their incremental result windows;
//! - [`search`] — full-text search and live search subscriptions;
//! - [`topics`] — pub/sub;
//! - [`locks`] — distributed locks with fencing tokens;
//! - [`counters`] — PN-counters;
//! - [`journal`] — the event journal (CDC);
//! - [`gc`] — TTL expiry and tombstone garbage collection;
//! - [`unsupported`] — honest answers for features not built yet;
//! - [`storage`] — lazy map loading and persistence;
//! - [`partitions`] — the ownership seam;
//! - [`workers`] — the bounded pool for CPU-heavy work;
//! - [`limits`] and [`metrics`].
//!
//! Time, randomness, the network and storage come in through seams ([`crate::clock`],
//! [`crate::entropy`], [`crate::net`], [`crate::store`]) so tests and simulations run the
//! same server.

pub mod auth;
pub mod config;
pub mod connections;
pub mod counters;
pub mod dispatch;
pub mod gc;
pub mod http;
pub mod journal;
pub mod limits;
pub mod live;
pub mod locks;
pub mod metrics;
pub mod operations;
pub mod partitions;
pub mod queries;
pub mod search;
pub mod session;
pub mod storage;
pub mod sync;
pub mod topics;
pub mod unsupported;
pub mod workers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::auth::{JwtOptions, JwtVerifier};
use crate::clock::SharedClock;
use crate::entropy::SharedEntropy;
use crate::hlc::{Hlc, HlcConfig, Timestamp};
use crate::merkle::Combine;
use crate::net::Listener;
use crate::search::SearchConfig;
use crate::security::Permissions;
use crate::store::Store;

use self::config::Limits;
use self::connections::Registry;
use self::counters::CounterRegistry;
use self::journal::Journal;
use self::locks::LockManager;
use self::metrics::Metrics;
use self::partitions::{Ownership, SingleNode};
use self::queries::QueryRegistry;
use self::search::{SearchService, SearchSetupError};
use self::storage::MapRegistry;
use self::topics::TopicRegistry;
use self::workers::WorkerPool;

/// Everything needed to build a server, already validated.
pub struct ServerOptions {
    /// The node id used in server HLC timestamps.
    pub node_id: String,
    /// The JWT secret (HS256) or PEM public key (RS256).
    pub jwt_secret: String,
    /// Permission policies.
    pub permissions: Permissions,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Most simultaneous connections before LRU eviction.
    pub max_connections: usize,
    /// Per-access debug logging.
    pub debug: bool,
    /// Merkle combine function for clients whose generation is not yet known.
    pub default_combine: Combine,
    /// Full-text search: map name → indexed fields and BM25 parameters.
    pub search: BTreeMap<String, SearchConfig>,
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Secret(#[from] crate::auth::ConfigError),
    #[error(transparent)]
    Hlc(#[from] crate::hlc::HlcError),
    #[error(transparent)]
    Search(#[from] SearchSetupError),
}

/// State shared by every connection.
pub struct Shared {
    pub limits: Limits,
    pub default_combine: Combine,
    pub clock: SharedClock,
    pub entropy: SharedEntropy,
    pub store: Arc<dyn Store>,
    pub maps: MapRegistry,
    pub connections: Registry,
    pub queries: QueryRegistry,
    pub topics: TopicRegistry,
    pub locks: LockManager,
    pub search: SearchService,
    pub counters: CounterRegistry,
    pub journal: Journal,
    pub verifier: JwtVerifier,
    pub permissions: Permissions,
    pub ownership: Box<dyn Ownership>,
    pub metrics: Metrics,
    /// The bounded pool CPU-heavy work runs on.
    pub workers: WorkerPool,
    /// Key that signs query cursors (tamper detection); fresh per process.
    pub cursor_secret: [u8; 32],
    /// Authenticated connections, the recipients of `GC_PRUNE`.
    pub gc_audience: gc::Audience,
    /// The address [`Server::run`] accepts on, advertised in `PARTITION_MAP`.
    pub bound_addr: std::sync::OnceLock<std::net::SocketAddr>,
    hlc: Mutex<Hlc>,
    shutdown: watch::Sender<bool>,
    /// Benchmarking only (`serve --unsafe-skip-validation`): inbound messages skip their
    /// JSON Schema check. Off unless [`Server::unsafe_skip_validation_for_benchmarks`].
    skip_validation: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The server HLC. Held only for a clock step, never across an `.await`.
    pub fn hlc(&self) -> MutexGuard<'_, Hlc> {
        self.hlc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anything on this server needs `map`'s change events (a live query or a search
    /// index); writes to other maps skip building them.
    pub fn listens_to(&self, map: &str) -> bool {
        self.queries.has_live_on(map) || self.search.tracks(map)
    }

    /// A fresh server timestamp.
    pub fn now_timestamp(&self) -> Timestamp {
        self.hlc().now()
    }

    /// Wall-clock milliseconds from the clock seam.
    pub fn now_millis(&self) -> u64 {
        self.clock.now_millis()
    }

    /// A receiver that flips to `true` when the server begins shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Whether inbound messages are checked against their JSON Schema (always, unless a
    /// benchmark turned it off).
    pub fn validates_messages(&self) -> bool {
        !self
            .skip_validation
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A running server's handle.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

#[cfg(test)]
impl Server {
    /// A unit tests' server: node `server-1`, development permissions, `limits`, over
    /// `store`, on a manual clock at `now_ms` and seeded entropy.
    pub(crate) fn for_tests(store: Arc<dyn Store>, now_ms: u64, limits: Limits) -> Self {
        let options = ServerOptions {
            node_id: "server-1".into(),
            jwt_secret: "unit-test-secret-0123456789abcdef0123".into(),
            permissions: Permissions::development_default(),
            limits,
            max_connections: 10,
            debug: false,
            default_combine: Combine::Fmix,
            search: Default::default(),
        };
        let clock = Arc::new(crate::clock::ManualClock::new(now_ms));
        let entropy = Arc::new(crate::entropy::SeededEntropy::new(1));
        Self::new(options, store, clock, entropy).unwrap()
    }
}

impl Server {
    /// Builds a server over `store`, using the given clock and entropy seams.
    pub fn new(
        options: ServerOptions,
        store: Arc<dyn Store>,
        clock: SharedClock,
        entropy: SharedEntropy,
    ) -> Result<Self, ServerError> {
        let verifier = JwtVerifier::new(
            &options.jwt_secret,
            JwtOptions {
                leeway_secs: options.limits.jwt_leeway_secs,
            },
        )?;
        let hlc = Hlc::new(
            options.node_id,
            clock.clone(),
            HlcConfig {
                strict: options.limits.hlc_strict,
                max_drift_ms: options.limits.max_drift_ms,
            },
        )?;
        let (shutdown, _) = watch::channel(false);
        let mut cursor_secret = [0u8; 32];
        entropy.fill(&mut cursor_secret);
        let workers = WorkerPool::new(options.limits.worker_threads);
        let shared = Shared {
            maps: MapRegistry::new(store.clone(), options.debug)
                .offload_loads(workers.clone(), options.limits.pool_load_keys),
            workers,
            connections: Registry::new(options.max_connections),
            queries: QueryRegistry::default(),
            topics: TopicRegistry::new(options.limits.max_topic_subscriptions, &cursor_secret),
            locks: LockManager::new(store.clone(), clock.clone()),
            search: SearchService::new(options.search)?,
            counters: CounterRegistry::default(),
            journal: Journal::new(&options.limits, hlc.node_id()),
            limits: options.limits,
            default_combine: options.default_combine,
            clock,
            entropy,
            store,
            verifier,
            permissions: options.permissions,
            ownership: Box::new(SingleNode),
            metrics: Metrics::default(),
            cursor_secret,
            gc_audience: gc::Audience::default(),
            bound_addr: std::sync::OnceLock::new(),
            hlc: Mutex::new(hlc),
            shutdown,
            skip_validation: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// FOR BENCHMARKING ONLY: stops checking inbound messages against their JSON Schema, so
    /// a benchmark can measure what validation costs. Typed decoding still rejects what does
    /// not fit a message type, but the schemas' limits and patterns no longer apply.
    pub fn unsafe_skip_validation_for_benchmarks(&self) {
        tracing::warn!("schema validation of inbound messages is OFF (benchmarking only)");
        self.shared
            .skip_validation
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The shared state (for tests and embedding).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Accepts connections from `listener` until [`Server::shutdown`] is called.
    pub async fn run<L: Listener>(&self, mut listener: L) -> std::io::Result<()> {
        let mut stop = self.shared.shutdown_signal();
        let _expiry = locks::spawn_expiry(&self.shared, locks::EXPIRY_SCAN_INTERVAL);
        if let Ok(addr) = listener.local_addr() {
            let _ = self.shared.bound_addr.set(addr);
        }
        tokio::spawn(gc::run(self.shared.clone()));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    match accepted {
                        Ok((stream, peer)) => {
                            let shared = self.shared.clone();
                            tokio::spawn(session::serve(shared, stream, peer));
                        }
                        // Accept errors (e.g. out of file descriptors) are transient: log and
                        // keep serving the connections we have.
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Begins a graceful shutdown: connections get `SHUTDOWN_PENDING` and close 1001, and the
    /// store is flushed. Resolves when every connection has closed (or after `grace`).
    pub async fn shutdown(&self, grace: std::time::Duration) {
        let _ = self.shared.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.shared.connections.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Err(e) = self.shared.store.close().await {
            tracing::error!(error = %e, "store did not close cleanly");
        }
    }
}
