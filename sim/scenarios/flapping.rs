//! Connectivity flaps (partitions of 0.1–0.6 s) while clients run Merkle syncs in the middle
//! of their writes, so walks are cut off half-way. Properties 1, 2 and 3.

use topgun::protocol::WriteConcern;

use crate::client::ModelClient;
use crate::faults::FaultProfile;
use crate::harness::{ServerSpec, seeds};
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
        ],
        ServerSpec::default(),
        &WorkloadProfile {
            ops_per_client: 50,
            sync_permille: 400,
            keys: 64,
            ..WorkloadProfile::default()
        },
        &FaultProfile {
            window_ms: 20_000,
            flaps: 12,
            holds: 3,
            ..FaultProfile::default()
        },
    )
}

pub const FAMILY: Family = Family {
    name: "flapping",
    build: scenario,
    check: |_, outcome| data_properties(outcome),
};

#[test]
fn flapping_connectivity_during_merkle_sync_still_converges() {
    run_family::<ModelClient>(&FAMILY, &seeds(TEST_SEEDS));
}

#[test]
fn real_clients_converge_through_flapping_connectivity() {
    run_family::<RealClient>(&FAMILY, &seeds(REAL_CLIENT_SEEDS));
}
