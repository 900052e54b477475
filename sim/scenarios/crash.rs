//! The server crashes and restarts mid-batch while clients write at `PERSISTED`, with its
//! durable store kept or lost.
//!
//! Kept: properties 1, 2 and 3 hold. Lost: every write acknowledged *before* the crash is
//! gone from the server while clients still hold it, and the protocol has no way to push
//! LWW state back (clients only replay unacknowledged ops), so the run cannot converge; the
//! family checks what still must hold (2 for acks after the last crash, 3) and asserts that
//! the loss is visible, which is why `PERSISTED` needs a durable store.

use topgun::protocol::WriteConcern;

use crate::client::ModelClient;
use crate::faults::FaultProfile;
use crate::harness::{ServerSpec, seeds};
use crate::history::Event;
use crate::properties;
use crate::real_client::RealClient;
use crate::runner::{Family, run_family};
use crate::scenario::{RunOutcome, Scenario};
use crate::workload::WorkloadProfile;

use super::{REAL_CLIENT_SEEDS, TEST_SEEDS, build, client, data_properties};

fn scenario(seed: u64, keep_store: bool) -> Scenario {
    build(
        seed,
        vec![
            client("alice", WriteConcern::Persisted),
            client("bob", WriteConcern::Persisted),
        ],
        ServerSpec::default(),
        &WorkloadProfile {
            ops_per_client: 60,
            ..WorkloadProfile::default()
        },
        &FaultProfile {
            window_ms: 20_000,
            crashes: 2,
            keep_store,
            latency_changes: 1,
            ..FaultProfile::default()
        },
    )
}

fn crashed(outcome: &RunOutcome) -> bool {
    !outcome.history.crashes().is_empty()
}

pub const KEPT: Family = Family {
    name: "crash_store_kept",
    build: |seed| scenario(seed, true),
    check: |_, outcome| data_properties(outcome),
};

pub const LOST: Family = Family {
    name: "crash_store_lost",
    build: |seed| scenario(seed, false),
    check: |_, outcome| {
        let mut found = properties::no_lost_acked_writes(&outcome.history, &outcome.finals);
        found.extend(properties::idempotence(&outcome.history, &outcome.finals));
        found
    },
};

#[test]
fn server_crash_with_the_store_kept_loses_no_persisted_write() {
    let outcomes = run_family::<ModelClient>(&KEPT, &seeds(TEST_SEEDS));
    assert!(
        outcomes.iter().any(|(_, o)| crashed(o)),
        "no seed crashed the server"
    );
}

#[test]
fn server_crash_with_the_store_lost_keeps_later_writes_and_shows_the_loss() {
    let outcomes = run_family::<ModelClient>(&LOST, &seeds(TEST_SEEDS));
    // Judge the same histories as if the store had survived: the writes acknowledged before
    // a crash that nobody superseded are what losing the store cost.
    let cost: usize = outcomes
        .iter()
        .map(|(_, outcome)| {
            let mut as_if_kept = outcome.history.clone();
            for event in &mut as_if_kept.events {
                if let Event::ServerCrash { store_kept, .. } = event {
                    *store_kept = true;
                }
            }
            properties::no_lost_acked_writes(&as_if_kept, &outcome.finals).len()
        })
        .sum();
    println!("crash_store_lost: {cost} acknowledged writes lost with the store");
    if outcomes.len() >= TEST_SEEDS as usize && outcomes.iter().any(|(_, o)| crashed(o)) {
        assert!(
            cost > 0,
            "losing the store lost nothing: the check cannot see the loss"
        );
    }
}

#[test]
fn real_clients_through_server_crashes_with_and_without_the_store() {
    run_family::<RealClient>(&KEPT, &seeds(REAL_CLIENT_SEEDS));
    run_family::<RealClient>(&LOST, &seeds(REAL_CLIENT_SEEDS));
}
