//! Rough throughput of the sled event log: single durable appends, batched appends, and a
//! verified scan of one long job. Not a test: it prints events per second.
//!
//! Run: `cargo run --release -p understudy-store --example bench [scale]` (scale 1 by default;
//! 0.1 for a quick look). The data directory is a fresh temporary one.

use std::time::Instant;

use chrono::DateTime;
use understudy_core::status::MirrorCounters;
use understudy_core::{
    AppendRequest, EventMetadata, EventStore, Flow, JobEvent, JobId, NewEvent, Position, Seq,
};
use understudy_store::SledEventStore;

fn event(i: u64) -> NewEvent {
    // A progress checkpoint: the most common event of a running job, and one of the larger.
    let counters = MirrorCounters {
        total_bytes: Some(10_000_000_000),
        total_files: Some(250_000),
        files_mirrored: i,
        bytes_mirrored: i * 65_536,
        ..MirrorCounters::default()
    };
    NewEvent {
        event: JobEvent::MirrorProgressed { counters },
        recorded_at: DateTime::from_timestamp(1_767_225_600 + i as i64, 0).expect("in range"),
        metadata: EventMetadata::engine(),
    }
}

fn rate(events: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    format!("{events} events in {secs:.2} s = {:.0} events/s", events as f64 / secs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scale: f64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let n = |count: f64| ((count * scale) as u64).max(1);
    let dir = tempfile::tempdir()?;
    // UNDERSTUDY_BENCH_DIR keeps the data directory, e.g. to look at its size afterwards.
    let path = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map_or_else(|| dir.path().to_path_buf(), Into::into);
    let store = SledEventStore::open(&path)?;
    let jobs: Vec<JobId> =
        (0..10u8).map(|j| JobId::from_parts(1_767_225_600_000 + u64::from(j), [j; 10])).collect();
    let mut heads = vec![0u64; jobs.len()];

    // 1. Single durable appends: one event, one transaction, one fsync each.
    let singles = n(2_000.0);
    let started = Instant::now();
    for i in 0..singles {
        let j = (i % jobs.len() as u64) as usize;
        let request =
            AppendRequest { job: jobs[j], expected: Seq(heads[j]), events: vec![event(i)] };
        store.append(&[request])?.map_err(|c| c.to_string())?;
        heads[j] += 1;
    }
    println!("single appends:  {}", rate(singles, started));

    // 2. Batches of 1,000 events over the ten jobs: one transaction and one fsync per batch.
    let batches = n(200.0);
    let per_job = 100;
    let started = Instant::now();
    for b in 0..batches {
        let batch: Vec<AppendRequest> = jobs
            .iter()
            .enumerate()
            .map(|(j, job)| AppendRequest {
                job: *job,
                expected: Seq(heads[j]),
                events: (0..per_job).map(|k| event(b * 1_000 + k)).collect(),
            })
            .collect();
        store.append(&batch)?.map_err(|c| c.to_string())?;
        heads.iter_mut().for_each(|h| *h += per_job);
    }
    println!(
        "batched appends: {} (batches of {})",
        rate(batches * per_job * jobs.len() as u64, started),
        per_job * 10
    );

    // 3. One long job, scanned from seq 1 with the chain verified.
    let long = JobId::from_parts(1_767_225_700_000, [0xee; 10]);
    let long_events = n(200_000.0);
    let mut head = 0;
    while head < long_events {
        let count = (long_events - head).min(1_000);
        let events = (0..count).map(|k| event(head + k)).collect();
        store
            .append(&[AppendRequest { job: long, expected: Seq(head), events }])?
            .map_err(|c| c.to_string())?;
        head += count;
    }
    let bytes = store.raw_event(long, Seq(1))?.map_or(0, |v| v.len());
    for round in 1..=2 {
        let started = Instant::now();
        let mut seen = 0u64;
        store.scan_job(long, Seq(1), &mut |_| {
            seen += 1;
            Flow::Continue
        })?;
        println!(
            "scan (round {round}):  {} ({bytes}-byte values, decoded and chain-checked)",
            rate(seen, started)
        );
    }

    let started = Instant::now();
    let mut after = Position(0);
    let mut read = 0u64;
    loop {
        let page = store.read_all(after, 10_000)?;
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len() as u64;
    }
    println!("read_all:        {}", rate(read, started));
    Ok(())
}
