//! `understudy simulate`: the deterministic simulation on a real sled history.

use anyhow::Result;
use std::path::Path;
use understudy_simulator::{SimOptions, SimStore, history_digest, run};
use understudy_store::SledEventStore;

use crate::{CheckFailed, UserError, datadir};

/// Runs one seed, writing its history to `data_dir/events`, and prints the report.
///
/// # Errors
///
/// A user error for a data directory that already holds a history; a failed check (exit 1)
/// when an invariant breaks, with the command that reproduces it.
pub fn simulate(options: &SimOptions, data_dir: &Path) -> Result<()> {
    let events = datadir::events_dir(data_dir);
    if events.exists() && std::fs::read_dir(&events)?.next().is_some() {
        return Err(UserError(format!(
            "{} already holds a history: give `simulate` an empty or new --data-dir so the seed alone decides what is written",
            data_dir.display()
        ))
        .into());
    }
    let first = datadir::open_or_create(data_dir)?;
    let mut first = Some(first);
    // A simulated crash drops the old handle (and sled's lock with it), then opens the store
    // again from disk.
    let mut open = |old: Option<Box<dyn SimStore>>| -> Box<dyn SimStore> {
        drop(old);
        match first.take() {
            Some(store) => Box::new(store),
            None => {
                Box::new(SledEventStore::open(&events).expect("the simulation's own store reopens"))
            }
        }
    };
    println!(
        "simulating seed {} with {} jobs, {} steps, into {}",
        options.seed,
        options.jobs,
        options.steps,
        data_dir.display()
    );
    let report = run(options, &mut open).map_err(|failure| CheckFailed(failure.to_string()))?;
    let store = SledEventStore::open(&events)?;
    println!(
        "ok: {} steps, {} commands ({} refused), {} events, {} crashes, {} store failures, {:.1} h simulated",
        report.steps,
        report.commands,
        report.rejections,
        report.events,
        report.crashes,
        report.store_failures,
        report.sim_time_ms as f64 / 3_600_000.0
    );
    let mut finals: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for state in report.final_states.values() {
        *finals.entry(state.to_string()).or_default() += 1;
    }
    println!(
        "final states: {}",
        finals.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ")
    );
    println!("history digest: {}", history_digest(&store)?);
    println!("audit it with: understudy replay --data-dir {}", data_dir.display());
    println!("{}", report.coverage_line());
    Ok(())
}
