//! Clock skew and jumps. One client's clock runs 60 s ahead; every client's clock also jumps
//! forward and back by up to 3 s. With HLC strict mode on (max drift 5 s) the skewed client's
//! ops are rejected and reported and nothing stored is beyond the drift (property 5); with it
//! off, the skewed client wins conflicts against writes made after its own, which is why
//! strict mode exists.

use topgun::protocol::WriteConcern;

use crate::client::ModelClient;
use crate::client::{MapKind, MapSpec};
use crate::faults::FaultProfile;
use crate::harness::{ServerSpec, seeds};
use crate::properties;
use crate::real_client::RealClient;
use crate::runner::{Family, run_family};
use crate::scenario::{RunOutcome, Scenario};
use crate::workload::WorkloadProfile;

use super::{REAL_CLIENT_SEEDS, TEST_SEEDS, build, client, data_properties};

const SKEWED: &str = "skewed";
const SKEW_MS: i64 = 60_000;
const MAX_DRIFT_MS: u64 = 5_000;

fn scenario(seed: u64, hlc_strict: bool) -> Scenario {
    let mut skewed = client(SKEWED, WriteConcern::Applied);
    skewed.initial_skew_ms = SKEW_MS;
    build(
        seed,
        vec![client("honest", WriteConcern::Applied), skewed],
        ServerSpec {
            hlc_strict,
            max_drift_ms: MAX_DRIFT_MS,
        },
        &WorkloadProfile {
            ops_per_client: 40,
            keys: 4,
            maps: vec![MapSpec {
                name: "sim-lww".to_owned(),
                kind: MapKind::Lww,
            }],
            ..WorkloadProfile::default()
        },
        &FaultProfile {
            window_ms: 20_000,
            jumps: 4,
            skew_range_ms: 3_000,
            ..FaultProfile::default()
        },
    )
}

fn end_ms(scenario: &Scenario) -> u64 {
    scenario.window_ms + scenario.flush_ms + 60_000
}

pub const STRICT: Family = Family {
    name: "clock_strict",
    build: |seed| scenario(seed, true),
    check: |scenario, outcome| {
        let mut found = data_properties(outcome);
        found.extend(properties::clock_safety_strict(
            &outcome.history,
            &outcome.finals,
            scenario.server_skew_ms,
            MAX_DRIFT_MS,
            end_ms(scenario),
        ));
        found
    },
};

pub const LENIENT: Family = Family {
    name: "clock_lenient",
    build: |seed| scenario(seed, false),
    check: |_, outcome| data_properties(outcome),
};

fn skewed_wrote(outcome: &RunOutcome) -> bool {
    outcome.history.writes().iter().any(
        |(w, _, _)| matches!(w, crate::history::Event::Write { client, .. } if client == SKEWED),
    )
}

#[test]
fn strict_mode_rejects_and_reports_a_skewed_client() {
    for (scenario, outcome) in run_family::<ModelClient>(&STRICT, &seeds(TEST_SEEDS)) {
        let rejected = properties::rejections(&outcome.history, SKEWED);
        if skewed_wrote(&outcome) {
            assert!(
                rejected.get(&400).copied().unwrap_or(0) > 0,
                "seed {}: the skewed client's ops were not rejected: {rejected:?}",
                scenario.seed
            );
        }
        assert_eq!(
            properties::skewed_wins(&outcome.history, &outcome.finals, SKEWED),
            0,
            "seed {}: a skewed write won under strict mode",
            scenario.seed
        );
    }
}

#[test]
fn without_strict_mode_the_skewed_client_wins_later_conflicts() {
    let outcomes = run_family::<ModelClient>(&LENIENT, &seeds(TEST_SEEDS));
    let wins: usize = outcomes
        .iter()
        .map(|(_, o)| properties::skewed_wins(&o.history, &o.finals, SKEWED))
        .sum();
    println!("clock_lenient: the skewed client won {wins} conflicts against later writes");
    for (scenario, outcome) in &outcomes {
        assert!(
            properties::rejections(&outcome.history, SKEWED).is_empty(),
            "seed {}: nothing is rejected without strict mode",
            scenario.seed
        );
    }
    if outcomes.len() >= TEST_SEEDS as usize {
        assert!(
            wins > 0,
            "skew never decided a conflict: the scenario shows nothing"
        );
    }
}

#[test]
fn real_clients_under_clock_skew_strict_and_lenient() {
    // The client withdraws a write the server rejected and walks the map again, so the skewed
    // client converges too: STRICT's full convergence check applies unchanged.
    for (scenario, outcome) in run_family::<RealClient>(&STRICT, &seeds(REAL_CLIENT_SEEDS)) {
        assert_eq!(
            properties::skewed_wins(&outcome.history, &outcome.finals, SKEWED),
            0,
            "seed {}: a skewed write won under strict mode",
            scenario.seed
        );
    }
    run_family::<RealClient>(&LENIENT, &seeds(REAL_CLIENT_SEEDS));
}
