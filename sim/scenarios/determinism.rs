//! Determinism: the same seed produces the same history (and so the same trace hash), and a
//! different seed a different one.

use crate::client::ModelClient;
use crate::harness::seeds;
use crate::real_client::RealClient;
use crate::scenario::run;

use super::race::FAMILY;

#[test]
fn a_seed_replays_to_the_same_history() {
    let seed = seeds(1)[0];
    let scenario = (FAMILY.build)(seed);
    let first = run::<ModelClient>(&scenario);
    let second = run::<ModelClient>(&scenario);
    println!("seed {seed}: trace hash {:016x}", first.trace_hash);
    assert_eq!(
        first.history, second.history,
        "seed {seed} is not deterministic"
    );
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.finals, second.finals);
    let other = run::<ModelClient>(&(FAMILY.build)(seed.wrapping_add(1)));
    assert_ne!(first.trace_hash, other.trace_hash, "the seed must matter");
}

#[test]
fn a_seed_replays_to_the_same_history_with_the_real_client() {
    let seed = seeds(1)[0];
    let scenario = (FAMILY.build)(seed);
    let first = run::<RealClient>(&scenario);
    let second = run::<RealClient>(&scenario);
    println!(
        "seed {seed}: real client trace hash {:016x}",
        first.trace_hash
    );
    assert_eq!(
        first.history, second.history,
        "seed {seed} is not deterministic with the real client"
    );
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.finals, second.finals);
}
