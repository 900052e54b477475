//! Turmoil adapters for the server's seams (clock, listener, store), the server host, seed
//! handling and the trace hash.
//!
//! Durable store across a crash: the server runs over a [`MemoryStore`] held in a
//! [`StoreSlot`] *outside* the turmoil host. A crash that keeps the store leaves the slot
//! alone, so the restarted server reloads what was committed; a crash that loses it puts a
//! fresh store in the slot. `MemoryStore` commits synchronously inside the host's runtime, so
//! a run stays deterministic; redb's file I/O and background threads would not be.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use topgun::clock::Clock;
use topgun::entropy::SeededEntropy;
use topgun::merkle::Combine;
use topgun::net::Listener;
use topgun::security::Permissions;
use topgun::server::config::Limits;
use topgun::server::{Server, ServerOptions};
use topgun::store::MemoryStore;

pub const SECRET: &str = "simulation-secret-simulation-secret";
pub const SERVER: &str = "server";
pub const SERVER_PORT: u16 = 8080;
/// Wall-clock reading at simulation start (2026-11-26).
pub const EPOCH_MS: u64 = 1_795_650_000_000;

/// A host's clock offset in milliseconds, shared between the host's [`SimClock`] and the fault
/// schedule that skews it or makes it jump.
#[derive(Debug, Clone, Default)]
pub struct SkewCell(Arc<AtomicI64>);

impl SkewCell {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn shift(&self, delta_ms: i64) {
        self.0.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

/// A host's wall clock: simulated elapsed time plus the host's current skew.
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    pub skew: SkewCell,
}

impl SimClock {
    /// The reading at `elapsed_ms` of simulated time (for checks made outside the hosts).
    pub fn reading_at(&self, elapsed_ms: u64) -> u64 {
        (EPOCH_MS + elapsed_ms).saturating_add_signed(self.skew.get())
    }
}

impl Clock for SimClock {
    fn now_millis(&self) -> u64 {
        self.reading_at(elapsed_ms())
    }
}

/// Milliseconds of simulated time on the current host (0 outside a simulation).
pub fn elapsed_ms() -> u64 {
    let elapsed = turmoil::sim_elapsed().unwrap_or_default();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// turmoil's listener behind the server's network seam.
pub struct SimListener(pub turmoil::net::TcpListener);

impl Listener for SimListener {
    type Conn = turmoil::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Conn, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The server's store, kept outside the host so it can outlive a crash (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct StoreSlot(Arc<Mutex<Arc<MemoryStore>>>);

impl StoreSlot {
    pub fn current(&self) -> Arc<MemoryStore> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loses every committed write: the next server incarnation starts empty.
    pub fn wipe(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(MemoryStore::new());
    }
}

/// Server settings a scenario chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSpec {
    /// HLC strict mode: ops too far ahead of the server clock are rejected.
    pub hlc_strict: bool,
    pub max_drift_ms: u64,
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            hlc_strict: false,
            max_drift_ms: 5_000,
        }
    }
}

/// Limits for a simulated server: nothing runs on the worker pool's blocking threads (they
/// would escape turmoil's scheduler and break determinism), no periodic GC pass, and a
/// heartbeat long enough that the model clients need not ping.
fn sim_limits(spec: ServerSpec) -> Limits {
    Limits {
        hlc_strict: spec.hlc_strict,
        max_drift_ms: spec.max_drift_ms,
        heartbeat_timeout_ms: 600_000,
        gc_interval_ms: 0,
        worker_threads: 1,
        pool_frame_bytes: usize::MAX,
        pool_batch_ops: usize::MAX,
        pool_load_keys: usize::MAX,
        pool_response_rows: usize::MAX,
        ..Limits::default()
    }
}

/// Runs the real server on the current turmoil host until the simulation ends.
pub async fn run_server(
    seed: u64,
    spec: ServerSpec,
    store: StoreSlot,
    clock: SimClock,
) -> Result<(), Box<dyn std::error::Error>> {
    let options = ServerOptions {
        node_id: "sim-server".to_owned(),
        jwt_secret: SECRET.to_owned(),
        permissions: Permissions::development_default(),
        limits: sim_limits(spec),
        max_connections: 10_000,
        debug: false,
        default_combine: Combine::Fmix,
        search: Default::default(),
    };
    let server = Server::new(
        options,
        store.current(),
        Arc::new(clock),
        Arc::new(SeededEntropy::new(seed)),
    )?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).await?;
    server.run(SimListener(listener)).await?;
    Ok(())
}

/// The seeds a test runs: `TOPGUN_SIM_SEED` alone if set; else `count` seeds (overridden by
/// `TOPGUN_SIM_COUNT`) from `TOPGUN_SIM_START`, which defaults to a fixed base so
/// `cargo test` is reproducible (the sweep passes a time-derived start).
pub fn seeds(count: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("TOPGUN_SIM_SEED") {
        return vec![seed];
    }
    let count = env_u64("TOPGUN_SIM_COUNT").unwrap_or(count);
    let start = env_u64("TOPGUN_SIM_START").unwrap_or(0x5eed_0000);
    (0..count).map(|i| start.wrapping_add(i)).collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .filter(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// A stable hash (FNV-1a, 64 bit) of a run's trace lines, printed so two runs can be compared
/// at a glance. Unlike `DefaultHasher` it does not depend on the toolchain.
pub fn trace_hash<S: AsRef<str>>(lines: &[S]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for byte in line.as_ref().bytes().chain(std::iter::once(b'\n')) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_hash_is_fnv1a_and_separates_lines() {
        const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
        let step = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        // The published FNV-1a 64 value of "a" pins the constants.
        assert_eq!(step(BASIS, b'a'), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(trace_hash::<&str>(&[]), BASIS);
        assert_eq!(trace_hash(&["a"]), step(step(BASIS, b'a'), b'\n'));
        assert_ne!(trace_hash(&["ab", "c"]), trace_hash(&["a", "bc"]));
    }

    #[test]
    fn skew_cell_is_shared_by_clones() {
        let clock = SimClock::default();
        let cell = clock.skew.clone();
        cell.set(1_500);
        cell.shift(-500);
        assert_eq!(clock.reading_at(10), EPOCH_MS + 10 + 1_000);
        cell.set(-(EPOCH_MS as i64) - 100);
        assert_eq!(clock.reading_at(0), 0, "saturates instead of wrapping");
    }
}
