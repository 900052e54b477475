//! Scenario families, one file each, plus what they share: building a scenario from a seed
//! and the standard data properties (1–3).

mod clock;
mod crash;
mod determinism;
mod flapping;
mod locks;
mod long_offline;
mod race;
mod topics;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use topgun::protocol::WriteConcern;

use crate::faults::FaultProfile;
use crate::harness::ServerSpec;
use crate::properties::{self, Violation};
use crate::scenario::{ClientSpec, RunOutcome, Scenario};
use crate::workload::WorkloadProfile;

/// Seeds each family runs under `cargo test` (the sweep runs more).
pub const TEST_SEEDS: u64 = 12;
/// Seeds each family runs with the real client under `cargo test` (it is slower per seed).
pub const REAL_CLIENT_SEEDS: u64 = 4;

/// Builds a scenario: one RNG stream from `seed` draws every client's plan, then the faults.
pub fn build(
    seed: u64,
    clients: Vec<ClientSpec>,
    server: ServerSpec,
    workload: &WorkloadProfile,
    faults: &FaultProfile,
) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let names: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
    let plans: BTreeMap<_, _> = names
        .iter()
        .map(|name| (name.clone(), workload.generate(&mut rng, name)))
        .collect();
    Scenario {
        seed,
        server,
        server_skew_ms: 0,
        clients,
        maps: workload.maps.clone(),
        plans,
        faults: faults.generate(&mut rng, &names),
        window_ms: workload.window_ms.max(faults.window_ms),
        flush_ms: 15_000,
        latency_ms: (1, 25),
        timeout: Duration::from_secs(2),
    }
}

pub fn client(name: &str, write_concern: WriteConcern) -> ClientSpec {
    ClientSpec {
        name: name.to_owned(),
        initial_skew_ms: 0,
        write_concern,
    }
}

/// Properties 1–3: convergence, no lost acknowledged writes, idempotence.
pub fn data_properties(outcome: &RunOutcome) -> Vec<Violation> {
    let mut found = properties::convergence(&outcome.finals);
    found.extend(properties::no_lost_acked_writes(
        &outcome.history,
        &outcome.finals,
    ));
    found.extend(properties::idempotence(&outcome.history, &outcome.finals));
    found
}

/// True when some op was sent again after a reconnect (so idempotence was exercised).
pub fn replayed(outcome: &RunOutcome) -> bool {
    outcome
        .history
        .events
        .iter()
        .any(|e| matches!(e, crate::history::Event::Resent { .. }))
}
