//! Two writers race on the same few keys of an LWW and an OR map while their links to the
//! server are partitioned, held and slowed. Properties 1, 2 and 3.

use topgun::protocol::WriteConcern;

use crate::client::ModelClient;
use crate::faults::FaultProfile;
use crate::harness::{ServerSpec, seeds};
use crate::real_client::RealClient;
use crate::runner::{Family, run_family};
use crate::scenario::Scenario;
use crate::workload::WorkloadProfile;

use super::{REAL_CLIENT_SEEDS, TEST_SEEDS, build, client, data_properties, replayed};

fn scenario(seed: u64) -> Scenario {
    build(
        seed,
        vec![
            client("alice", WriteConcern::Applied),
            client("bob", WriteConcern::Persisted),
        ],
        ServerSpec::default(),
        &WorkloadProfile::default(),
        &FaultProfile {
            window_ms: 20_000,
            partitions: 2,
            holds: 2,
            latency_changes: 2,
            ..FaultProfile::default()
        },
    )
}

pub const FAMILY: Family = Family {
    name: "race",
    build: scenario,
    check: |_, outcome| data_properties(outcome),
};

#[test]
fn two_writers_racing_through_partitions_converge_and_lose_nothing() {
    let outcomes = run_family::<ModelClient>(&FAMILY, &seeds(TEST_SEEDS));
    // Partitions cut connections mid-flush, so some seed must have replayed ops.
    if outcomes.len() >= TEST_SEEDS as usize {
        assert!(
            outcomes.iter().any(|(_, o)| replayed(o)),
            "no seed exercised a replay after reconnect"
        );
    }
}

#[test]
fn two_real_clients_racing_through_partitions_converge_and_lose_nothing() {
    run_family::<RealClient>(&FAMILY, &seeds(REAL_CLIENT_SEEDS));
}
