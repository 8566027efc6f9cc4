//! The fixed seeds CI runs, plus every seed that ever failed (kept forever in `seeds.txt`).
//!
//! Method: each seed runs a full simulation (safety then liveness phase) on the in-memory
//! store; a failure prints the command that reproduces it on the sled store.

use std::sync::Arc;

use understudy_core::MemEventStore;
use understudy_simulator::{SimOptions, SimStore, history_digest, run};

fn seeds() -> Vec<u64> {
    include_str!("../seeds.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap_or_else(|_| panic!("seeds.txt: {l:?} is not a number")))
        .collect()
}

fn simulate(seed: u64, steps: u64) -> (understudy_simulator::SimReport, String) {
    let store = Arc::new(MemEventStore::new());
    let options = SimOptions { seed, steps, ..SimOptions::default() };
    let mut open =
        |_old: Option<Box<dyn SimStore>>| -> Box<dyn SimStore> { Box::new(store.clone()) };
    let report = run(&options, &mut open).unwrap_or_else(|failure| panic!("{failure}"));
    let digest = history_digest(&store).expect("the in-memory store reads");
    (report, digest)
}

#[test]
fn every_kept_seed_passes() {
    for seed in seeds() {
        simulate(seed, SimOptions::default().steps);
    }
}

#[test]
fn the_default_run_visits_every_state() {
    let (report, _) = simulate(1, SimOptions::default().steps);
    let line = report.coverage_line();
    assert!(line.starts_with("coverage: 19/19 states"), "{line}");
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let (a, digest_a) = simulate(42, 1_500);
    let (b, digest_b) = simulate(42, 1_500);
    assert_eq!(digest_a, digest_b);
    assert_eq!(a.events, b.events);
    let (_, other) = simulate(43, 1_500);
    assert_ne!(digest_a, other);
}
