//! Lock holders are partitioned away while their lease runs out: the server hands the lock on
//! after expiry, and no two clients may believe they hold it at once; fencing tokens grow
//! strictly. Property 4 (and 1–3 for the writes around it).

use topgun::protocol::WriteConcern;

use crate::client::ModelClient;
use crate::faults::FaultProfile;
use crate::harness::{ServerSpec, seeds};
use crate::history::Event;
use crate::properties;
use crate::real_client::RealClient;
use crate::runner::{Family, run_family};
use crate::scenario::Scenario;
use crate::workload::WorkloadProfile;

use super::{REAL_CLIENT_SEEDS, TEST_SEEDS, build, client, data_properties};

fn scenario(seed: u64) -> Scenario {
    build(
        seed,
        vec![
            client("alice", WriteConcern::Applied),
            client("bob", WriteConcern::Applied),
            client("carol", WriteConcern::Applied),
        ],
        ServerSpec::default(),
        &WorkloadProfile {
            ops_per_client: 25,
            lock_permille: 600,
            sync_permille: 0,
            lock_ttl_ms: 1_000..3_000,
            lock_hold_ms: 200..5_000,
            ..WorkloadProfile::default()
        },
        &FaultProfile {
            window_ms: 20_000,
            partitions: 3,
            holds: 2,
            ..FaultProfile::default()
        },
    )
}

pub const FAMILY: Family = Family {
    name: "locks",
    build: scenario,
    check: |_, outcome| {
        let mut found = properties::lock_safety(&outcome.history);
        found.extend(data_properties(outcome));
        found
    },
};

#[test]
fn partitioned_lock_holders_never_overlap_and_tokens_grow() {
    let outcomes = run_family::<ModelClient>(&FAMILY, &seeds(TEST_SEEDS));
    let holds = outcomes
        .iter()
        .flat_map(|(_, o)| &o.history.events)
        .filter(|e| matches!(e, Event::LockHeld { .. }))
        .count();
    if outcomes.len() >= TEST_SEEDS as usize {
        assert!(
            holds >= 10,
            "only {holds} lock holds: the scenario exercised nothing"
        );
    }
}

#[test]
fn real_lock_holders_never_overlap_and_tokens_grow() {
    run_family::<RealClient>(&FAMILY, &seeds(REAL_CLIENT_SEEDS));
}
