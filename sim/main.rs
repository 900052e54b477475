//! Deterministic simulations: the real server runs as a turmoil host over turmoil's network,
//! with virtual time, per-host skewable wall clocks and every random choice drawn from the
//! run's seed. Clients are [`client::SimClientHost`]s driven through a seeded workload while a
//! seeded fault schedule breaks things; properties are checked after everything heals.
//!
//! `TOPGUN_SIM_SEED` replays one seed; `TOPGUN_SIM_COUNT` and `TOPGUN_SIM_START` sweep more
//! (see `just sim`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod faults;
mod harness;
mod history;
mod properties;
mod real_client;
mod runner;
mod scenario;
mod scenarios;
mod topics;
mod workload;
