//! Runs a scenario family over its seeds: prints each run's trace hash and the family's
//! seeds per second, and on a failure the seed, the command that replays it and a shrunken
//! fault schedule.

use std::time::Instant;

use crate::client::SimClientHost;
use crate::faults::FaultEvent;
use crate::history::Event;
use crate::properties::Violation;
use crate::scenario::{RunOutcome, Scenario, run};

/// A family of scenarios: how to build one from a seed and what must hold afterwards.
pub struct Family {
    pub name: &'static str,
    pub build: fn(u64) -> Scenario,
    pub check: fn(&Scenario, &RunOutcome) -> Vec<Violation>,
}

/// Most reruns the shrinker may spend on one failure.
const SHRINK_BUDGET: usize = 24;

/// Problems every run must be free of, whatever the family: a host failing, and clients that
/// could not flush their op log after the faults healed.
pub fn run_health(outcome: &RunOutcome) -> Vec<Violation> {
    let mut found: Vec<Violation> = outcome
        .sim_error
        .iter()
        .map(|e| Violation {
            property: "simulation",
            detail: e.clone(),
        })
        .collect();
    for event in &outcome.history.events {
        if let Event::Unflushed {
            client, pending, ..
        } = event
        {
            found.push(Violation {
                property: "quiescence",
                detail: format!("{client} still had {pending} unanswered ops"),
            });
        }
    }
    found
}

fn violations(family: &Family, scenario: &Scenario, outcome: &RunOutcome) -> Vec<Violation> {
    let mut found = run_health(outcome);
    found.extend((family.check)(scenario, outcome));
    found
}

/// Runs `family` on each seed with clients of type `C` and panics with a replayable report
/// on the first failing seed. Returns every outcome for family-wide assertions.
pub fn run_family<C: SimClientHost>(family: &Family, seeds: &[u64]) -> Vec<(Scenario, RunOutcome)> {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for &seed in seeds {
        let scenario = (family.build)(seed);
        let outcome = run::<C>(&scenario);
        println!(
            "{} seed {seed}: trace hash {:016x} ({} events)",
            family.name,
            outcome.trace_hash,
            outcome.history.events.len()
        );
        if std::env::var("TOPGUN_SIM_TRACE").is_ok_and(|v| !v.is_empty()) {
            for line in outcome.history.trace_lines() {
                println!("  {line}");
            }
        }
        let found = violations(family, &scenario, &outcome);
        if !found.is_empty() {
            let shrunk = shrink::<C>(family, &scenario);
            panic!(
                "{}",
                failure_report(family, seed, &found, &outcome, &shrunk)
            );
        }
        outcomes.push((scenario, outcome));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: {} seeds in {secs:.1} s ({:.2} seeds/s)",
        family.name,
        seeds.len(),
        seeds.len() as f64 / secs.max(f64::EPSILON)
    );
    outcomes
}

/// Drops faults one at a time, keeping each drop after which the run still fails, so the
/// report shows a schedule with no fault the failure does not need.
pub fn shrink<C: SimClientHost>(family: &Family, scenario: &Scenario) -> Vec<FaultEvent> {
    let mut faults = scenario.faults.clone();
    let mut budget = SHRINK_BUDGET;
    let mut index = faults.len();
    while index > 0 && budget > 0 {
        index -= 1;
        let mut candidate = scenario.clone();
        candidate.faults = faults.clone();
        candidate.faults.remove(index);
        budget -= 1;
        let outcome = run::<C>(&candidate);
        if !violations(family, &candidate, &outcome).is_empty() {
            faults = candidate.faults;
        }
    }
    faults
}

fn failure_report(
    family: &Family,
    seed: u64,
    found: &[Violation],
    outcome: &RunOutcome,
    shrunk: &[FaultEvent],
) -> String {
    let mut report = format!(
        "\n{} failed on seed {seed} (trace hash {:016x})\nreplay: just sim SEED={seed}\n",
        family.name, outcome.trace_hash
    );
    for v in found.iter().take(20) {
        report.push_str(&format!("  [{}] {}\n", v.property, v.detail));
    }
    report.push_str("shrunken fault schedule (still fails):\n");
    for event in shrunk {
        report.push_str(&format!("  {:>6} ms {:?}\n", event.at_ms, event.fault));
    }
    report.push_str("last history lines:\n");
    let lines = outcome.history.trace_lines();
    for line in lines.iter().skip(lines.len().saturating_sub(30)) {
        report.push_str(&format!("  {line}\n"));
    }
    report
}
