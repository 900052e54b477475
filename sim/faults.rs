//! Fault schedules: what can go wrong, when, generated from the run's seed, and how each
//! fault is applied to the turmoil simulation.
//!
//! Every fault is self-contained enough to be dropped by the shrinker: a `Repair` without its
//! `Partition` is harmless, a `RestartServer` of a running server does nothing, and when the
//! fault window closes the harness heals everything that is still broken.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, RngExt};

use crate::harness::{SERVER, SkewCell, StoreSlot};
use crate::history::{Event, Recorder};

/// One thing that goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Drop every message between two hosts (an open TCP stream stalls for good).
    Partition {
        a: String,
        b: String,
    },
    Repair {
        a: String,
        b: String,
    },
    /// Hold messages between two hosts until `Release` (streams survive).
    Hold {
        a: String,
        b: String,
    },
    Release {
        a: String,
        b: String,
    },
    /// A fixed one-way latency on a link.
    Latency {
        a: String,
        b: String,
        ms: u64,
    },
    /// Kill the server host; its durable store survives only if `keep_store`.
    CrashServer {
        keep_store: bool,
    },
    /// Start the server again (nothing if it is running).
    RestartServer,
    /// Set a host's clock offset.
    Skew {
        host: String,
        ms: i64,
    },
    /// Move a host's clock by `delta_ms` (forward or back).
    Jump {
        host: String,
        delta_ms: i64,
    },
}

/// A fault and when it happens (simulated milliseconds from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultEvent {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Which faults a scenario draws, inside `[0, window_ms)`.
#[derive(Debug, Clone, Default)]
pub struct FaultProfile {
    pub window_ms: u64,
    /// Client ↔ server partitions, each repaired after 0.5–8 s.
    pub partitions: u32,
    /// Client ↔ server holds, each released after 0.2–3 s.
    pub holds: u32,
    /// Latency changes on client ↔ server links (1–400 ms).
    pub latency_changes: u32,
    /// Server crashes, each restarted after 0.5–5 s; `Some(keep_store)`.
    pub crashes: u32,
    pub keep_store: bool,
    /// Rapid partition/repair cycles (100–600 ms each) on client links.
    pub flaps: u32,
    /// Clock skews set on clients, within ±`skew_range_ms`.
    pub skews: u32,
    pub skew_range_ms: i64,
    /// Clock jumps on clients, within ±`skew_range_ms`.
    pub jumps: u32,
}

impl FaultProfile {
    /// Draws a schedule for `clients` from `rng`, sorted by time.
    pub fn generate(&self, rng: &mut impl Rng, clients: &[String]) -> Vec<FaultEvent> {
        let mut events = Vec::new();
        if clients.is_empty() || self.window_ms == 0 {
            return events;
        }
        for _ in 0..self.partitions {
            let host = clients[rng.random_range(0..clients.len())].clone();
            self.pair(
                rng,
                &mut events,
                500..8_000,
                Fault::Partition {
                    a: host.clone(),
                    b: SERVER.to_owned(),
                },
                Fault::Repair {
                    a: host,
                    b: SERVER.to_owned(),
                },
            );
        }
        for _ in 0..self.holds {
            let host = clients[rng.random_range(0..clients.len())].clone();
            self.pair(
                rng,
                &mut events,
                200..3_000,
                Fault::Hold {
                    a: host.clone(),
                    b: SERVER.to_owned(),
                },
                Fault::Release {
                    a: host,
                    b: SERVER.to_owned(),
                },
            );
        }
        for _ in 0..self.flaps {
            let host = clients[rng.random_range(0..clients.len())].clone();
            self.pair(
                rng,
                &mut events,
                100..600,
                Fault::Partition {
                    a: host.clone(),
                    b: SERVER.to_owned(),
                },
                Fault::Repair {
                    a: host,
                    b: SERVER.to_owned(),
                },
            );
        }
        for _ in 0..self.latency_changes {
            let host = clients[rng.random_range(0..clients.len())].clone();
            events.push(FaultEvent {
                at_ms: rng.random_range(0..self.window_ms),
                fault: Fault::Latency {
                    a: host,
                    b: SERVER.to_owned(),
                    ms: rng.random_range(1..400),
                },
            });
        }
        for _ in 0..self.crashes {
            self.pair(
                rng,
                &mut events,
                500..5_000,
                Fault::CrashServer {
                    keep_store: self.keep_store,
                },
                Fault::RestartServer,
            );
        }
        for _ in 0..self.skews {
            let host = clients[rng.random_range(0..clients.len())].clone();
            events.push(FaultEvent {
                at_ms: rng.random_range(0..self.window_ms),
                fault: Fault::Skew {
                    host,
                    ms: rng.random_range(-self.skew_range_ms..=self.skew_range_ms),
                },
            });
        }
        for _ in 0..self.jumps {
            let host = clients[rng.random_range(0..clients.len())].clone();
            events.push(FaultEvent {
                at_ms: rng.random_range(0..self.window_ms),
                fault: Fault::Jump {
                    host,
                    delta_ms: rng.random_range(-self.skew_range_ms..=self.skew_range_ms),
                },
            });
        }
        // Stable: events drawn at the same millisecond keep their draw order.
        events.sort_by_key(|e| e.at_ms);
        events
    }

    /// A fault at a random time and its undoing `duration_ms` later (capped at the window).
    fn pair(
        &self,
        rng: &mut impl Rng,
        events: &mut Vec<FaultEvent>,
        duration_ms: std::ops::Range<u64>,
        start: Fault,
        end: Fault,
    ) {
        let at_ms = rng.random_range(0..self.window_ms);
        let until = (at_ms + rng.random_range(duration_ms)).min(self.window_ms);
        events.push(FaultEvent {
            at_ms,
            fault: start,
        });
        events.push(FaultEvent {
            at_ms: until,
            fault: end,
        });
    }
}

/// Applies faults to a running simulation and heals everything when the window closes.
pub struct FaultInjector {
    schedule: Vec<FaultEvent>,
    next: usize,
    skews: BTreeMap<String, SkewCell>,
    store: StoreSlot,
    recorder: Recorder,
    /// Links touched by a fault, healed at the end of the window.
    links: Vec<(String, String)>,
}

impl FaultInjector {
    pub fn new(
        schedule: Vec<FaultEvent>,
        skews: BTreeMap<String, SkewCell>,
        store: StoreSlot,
        recorder: Recorder,
    ) -> Self {
        Self {
            schedule,
            next: 0,
            skews,
            store,
            recorder,
            links: Vec::new(),
        }
    }

    /// Applies every fault due at `now_ms`.
    pub fn apply_due(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64) {
        while let Some(event) = self.schedule.get(self.next) {
            if event.at_ms > now_ms {
                break;
            }
            let fault = event.fault.clone();
            self.next += 1;
            self.apply(sim, now_ms, &fault);
        }
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64, fault: &Fault) {
        self.recorder.push(Event::Fault {
            at_ms: now_ms,
            description: format!("{fault:?}"),
        });
        match fault {
            Fault::Partition { a, b } => {
                self.links.push((a.clone(), b.clone()));
                sim.partition(a.as_str(), b.as_str());
            }
            Fault::Repair { a, b } => sim.repair(a.as_str(), b.as_str()),
            Fault::Hold { a, b } => {
                self.links.push((a.clone(), b.clone()));
                sim.hold(a.as_str(), b.as_str());
            }
            Fault::Release { a, b } => sim.release(a.as_str(), b.as_str()),
            Fault::Latency { a, b, ms } => {
                self.links.push((a.clone(), b.clone()));
                sim.set_link_latency(a.as_str(), b.as_str(), Duration::from_millis(*ms));
            }
            Fault::CrashServer { keep_store } => {
                if sim.is_host_running(SERVER) {
                    sim.crash(SERVER);
                    if !keep_store {
                        self.store.wipe();
                    }
                    self.recorder.push(Event::ServerCrash {
                        at_ms: now_ms,
                        store_kept: *keep_store,
                    });
                }
            }
            Fault::RestartServer => {
                if !sim.is_host_running(SERVER) {
                    sim.bounce(SERVER);
                }
            }
            Fault::Skew { host, ms } => {
                if let Some(cell) = self.skews.get(host) {
                    cell.set(*ms);
                }
            }
            Fault::Jump { host, delta_ms } => {
                if let Some(cell) = self.skews.get(host) {
                    cell.shift(*delta_ms);
                }
            }
        }
    }

    /// Ends the fault window: repairs and releases every link a fault touched, restores the
    /// base latency and restarts a crashed server. Clock skews stay (they are state, not
    /// faults to heal).
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64, base_latency: Duration) {
        self.next = self.schedule.len();
        for (a, b) in std::mem::take(&mut self.links) {
            sim.repair(a.as_str(), b.as_str());
            sim.release(a.as_str(), b.as_str());
            sim.set_link_latency(a.as_str(), b.as_str(), base_latency);
        }
        if !sim.is_host_running(SERVER) {
            sim.bounce(SERVER);
        }
        self.recorder.push(Event::Fault {
            at_ms: now_ms,
            description: "heal".to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn profile() -> FaultProfile {
        FaultProfile {
            window_ms: 30_000,
            partitions: 3,
            holds: 2,
            latency_changes: 2,
            crashes: 1,
            keep_store: true,
            flaps: 4,
            skews: 2,
            skew_range_ms: 10_000,
            jumps: 2,
        }
    }

    fn clients() -> Vec<String> {
        vec!["alice".to_owned(), "bob".to_owned()]
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let a = profile().generate(&mut ChaCha8Rng::seed_from_u64(7), &clients());
        let b = profile().generate(&mut ChaCha8Rng::seed_from_u64(7), &clients());
        let c = profile().generate(&mut ChaCha8Rng::seed_from_u64(8), &clients());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn schedules_are_sorted_inside_the_window_and_every_break_is_undone() {
        let events = profile().generate(&mut ChaCha8Rng::seed_from_u64(1), &clients());
        // 3 partitions + 2 holds + 4 flaps + 1 crash come in pairs; the rest are single.
        assert_eq!(events.len(), 2 * (3 + 2 + 4 + 1) + 2 + 2 + 2);
        assert!(events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(events.iter().all(|e| e.at_ms <= 30_000));
        let count = |f: fn(&Fault) -> bool| events.iter().filter(|e| f(&e.fault)).count();
        assert_eq!(
            count(|f| matches!(f, Fault::Partition { .. })),
            count(|f| matches!(f, Fault::Repair { .. }))
        );
        assert_eq!(
            count(|f| matches!(f, Fault::CrashServer { keep_store: true })),
            1
        );
        assert_eq!(count(|f| matches!(f, Fault::RestartServer)), 1);
        for event in &events {
            if let Fault::Skew { ms, .. } = event.fault {
                assert!(ms.abs() <= 10_000);
            }
        }
    }

    #[test]
    fn an_empty_profile_draws_nothing() {
        let events =
            FaultProfile::default().generate(&mut ChaCha8Rng::seed_from_u64(1), &clients());
        assert!(events.is_empty());
    }
}
