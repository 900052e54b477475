//! Deterministic simulations: the real server runs as a turmoil host over turmoil's network,
//! with virtual time, per-host skewed wall clocks and every random choice drawn from the
//! run's seed. `TOPGUN_SIM_SEED` replays one seed; `TOPGUN_SIM_COUNT` sweeps more seeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod scenarios;
