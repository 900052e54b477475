//! A long-offline client with a large queue reconnects during a partition: alice is cut off
//! from the server for most of the window and writes a couple of thousand ops meanwhile (all
//! queued in her op log); her link comes back while bob is partitioned away, and then flaps,
//! so the upload of her queue and her Merkle walks are cut off half-way, more than once.
//! Properties 1, 2 and 3, with the real client (the model client would spend the whole
//! offline period timing out connection attempts, one per op).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use topgun::protocol::WriteConcern;

use crate::faults::{Fault, FaultEvent, FaultProfile};
use crate::harness::{SERVER, ServerSpec, seeds};
use crate::history::Event;
use crate::real_client::RealClient;
use crate::runner::{Family, run_family};
use crate::scenario::Scenario;
use crate::workload::{WorkItem, WorkloadProfile};

use super::{build, client, data_properties};

/// Ops alice writes while offline (`just sim` sweeps the same size).
pub const OFFLINE_OPS: usize = 3_000;
/// Alice's partition.
const OFFLINE_FROM_MS: u64 = 1_000;
const OFFLINE_UNTIL_MS: u64 = 14_000;
/// The fault window; the flapping after alice's return lasts until shortly before it.
const WINDOW_MS: u64 = 24_000;
/// Seeds under `cargo test`: each run replays thousands of ops, so few.
const SEEDS: u64 = 3;

fn partition(at_ms: u64, host: &str) -> FaultEvent {
    FaultEvent {
        at_ms,
        fault: Fault::Partition {
            a: host.to_owned(),
            b: SERVER.to_owned(),
        },
    }
}

fn repair(at_ms: u64, host: &str) -> FaultEvent {
    FaultEvent {
        at_ms,
        fault: Fault::Repair {
            a: host.to_owned(),
            b: SERVER.to_owned(),
        },
    }
}

/// Alice's long partition, bob's partition spanning her return, and alice's link flapping
/// (cuts of 0.1–0.6 s, 0.3–1.5 s apart) from just after her return until near the window's end.
fn faults(rng: &mut ChaCha8Rng) -> Vec<FaultEvent> {
    let bob_from = OFFLINE_UNTIL_MS - rng.random_range(500..3_000);
    let bob_until = OFFLINE_UNTIL_MS + rng.random_range(2_000..6_000);
    let mut events = vec![
        partition(OFFLINE_FROM_MS, "alice"),
        partition(bob_from, "bob"),
        repair(OFFLINE_UNTIL_MS, "alice"),
        repair(bob_until, "bob"),
    ];
    let mut at = OFFLINE_UNTIL_MS + rng.random_range(50..1_500);
    while at < WINDOW_MS - 1_500 {
        let cut = rng.random_range(100..600);
        events.push(partition(at, "alice"));
        events.push(repair(at + cut, "alice"));
        at += cut + rng.random_range(300..1_500);
    }
    events.sort_by_key(|e| e.at_ms);
    events
}

/// Alice's offline burst: writes only (a mid-run sync would wait out the partition), spread
/// over her partition on many keys, so her queue holds thousands of distinct ops.
fn burst(rng: &mut ChaCha8Rng) -> Vec<WorkItem> {
    let profile = WorkloadProfile {
        window_ms: OFFLINE_UNTIL_MS - OFFLINE_FROM_MS - 1_500,
        ops_per_client: OFFLINE_OPS,
        keys: 400,
        sync_permille: 0,
        ..WorkloadProfile::default()
    };
    let start = OFFLINE_FROM_MS + 500;
    profile
        .generate(rng, "alice")
        .into_iter()
        .map(|item| WorkItem {
            at_ms: start + item.at_ms,
            op: item.op,
        })
        .collect()
}

fn scenario(seed: u64) -> Scenario {
    let mut scenario = build(
        seed,
        vec![
            client("alice", WriteConcern::Applied),
            client("bob", WriteConcern::Persisted),
        ],
        ServerSpec::default(),
        &WorkloadProfile {
            window_ms: WINDOW_MS,
            ops_per_client: 40,
            keys: 400,
            ..WorkloadProfile::default()
        },
        &FaultProfile::default(),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10_0ff1_17e0);
    scenario.plans.insert("alice".to_owned(), burst(&mut rng));
    scenario.faults = faults(&mut rng);
    scenario.window_ms = WINDOW_MS;
    // Thousands of ops to upload through a flapping link.
    scenario.flush_ms = 30_000;
    scenario
}

/// How many ops alice stamped while she was cut off.
fn offline_writes(history: &crate::history::History) -> usize {
    history
        .events
        .iter()
        .filter(|e| {
            matches!(e, Event::Write { client, at_ms, .. }
                if client == "alice" && (OFFLINE_FROM_MS..OFFLINE_UNTIL_MS).contains(at_ms))
        })
        .count()
}

pub const FAMILY: Family = Family {
    name: "long_offline",
    build: scenario,
    check: |_, outcome| data_properties(outcome),
};

#[test]
fn a_long_offline_client_reconnecting_during_a_partition_loses_nothing() {
    for (scenario, outcome) in run_family::<RealClient>(&FAMILY, &seeds(SEEDS)) {
        let queued = offline_writes(&outcome.history);
        // An OR remove of a value alice never saw stamps no op, so a few fall short.
        assert!(
            queued >= OFFLINE_OPS * 9 / 10,
            "seed {}: only {queued} ops written offline",
            scenario.seed
        );
    }
}
