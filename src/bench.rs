//! `understudy bench event-log`: the event log's figures, each against a peer measured in the
//! same run on the same disk.
//!
//! - durable appends per second, single and batched, against a plain file written and
//!   `fdatasync`ed the same number of times (the cost floor of durability on this disk);
//! - replay speed of one long job through the real job machine, against scanning and decoding
//!   the same events without folding them (the store alone);
//! - replay of the last 1,000 events with and without checkpoints.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, TimeZone, Utc};
use understudy_core::engine::{Folded, fold, fold_from};
use understudy_core::event::{
    ConnectionInfo, EventMetadata, JobEvent, MirrorKind, MirrorPlan, MirrorReason, NewEvent,
};
use understudy_core::ids::{ConnectionId, JobId, Seq};
use understudy_core::spec::{JobSpec, MirrorComparison, TargetEndpoint, TargetSpec};
use understudy_core::status::ReplicationCounters;
use understudy_core::store::{AppendRequest, Checkpoint, CheckpointStore, EventStore, Flow};
use understudy_core::{Applied, JobMachine};
use understudy_states::Job;
use understudy_store::SledEventStore;

const CHECKPOINT_EVERY: u64 = 1_000;

/// Runs the event-log benchmark.
///
/// # Errors
///
/// The scratch directory cannot be made or the store fails.
pub fn event_log(events: u64, dir: Option<PathBuf>) -> Result<()> {
    let scratch = match dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("understudy-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    println!("event-log benchmark in {} ({} events in the long job)", scratch.display(), events);

    let store = SledEventStore::open(&scratch.join("appends"))?;
    let single = 2_000u64;
    let (append_rate, append_peer) = single_appends(&store, single, &scratch)?;
    println!(
        "durable appends, one event each:      {:>10.0} /s   plain write+fdatasync: {:>10.0} /s   ratio {:.2}",
        append_rate,
        append_peer,
        append_rate / append_peer
    );
    let (batched_rate, batch_peer) = batched_appends(&store, 200_000, 1_000, &scratch)?;
    println!(
        "durable appends, batches of 1,000:    {:>10.0} /s   plain write+fdatasync per batch: {:>10.0} /s   ratio {:.2}",
        batched_rate,
        batch_peer,
        batched_rate / batch_peer
    );
    drop(store);

    let store = SledEventStore::open(&scratch.join("replay"))?;
    let job = JobId::from_parts(1_700_000_000_000, [9; 10]);
    let build = Instant::now();
    build_long_job(&store, job, events)?;
    println!(
        "built a {events}-event job in {:.1} s (with a checkpoint every {CHECKPOINT_EVERY})",
        build.elapsed().as_secs_f64()
    );

    // Once to warm sled's cache, so neither of the measured passes pays for a cold start.
    let scan = || -> Result<u64> {
        let mut scanned = 0u64;
        store.scan_job(job, Seq(1), &mut |_| {
            scanned += 1;
            Flow::Continue
        })?;
        Ok(scanned)
    };
    scan()?;
    let started = Instant::now();
    let scanned = scan()?;
    let scan_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let full: Folded<Job> = fold_from(&store, job, Job::new(job), Seq::ZERO, None, &mut |_, _| {})?;
    let replay_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        full.head == Seq(events) && full.problem.is_none(),
        "the replay did not reach the end: {:?}",
        full.problem
    );
    println!(
        "replay from event 1 (real machine):   {:>10.0} events/s   scan+decode+verify only: {:>10.0} events/s   ratio {:.2}",
        events as f64 / replay_secs,
        scanned as f64 / scan_secs,
        scan_secs / replay_secs
    );

    // The state just before the end: from the checkpoint 999 events back, or from event 1.
    let target = Seq(events - 1);
    let started = Instant::now();
    let with: Folded<Job> = fold(&store, job, Some(target), &mut |_, _| {})?;
    let with_checkpoint = started.elapsed();
    let started = Instant::now();
    let without: Folded<Job> =
        fold_from(&store, job, Job::new(job), Seq::ZERO, Some(target), &mut |_, _| {})?;
    let without_checkpoint = started.elapsed();
    anyhow::ensure!(with.machine == without.machine, "checkpointed and full replays disagree");
    println!(
        "state at seq {} (last {} events):  with checkpoints {:>8.2} ms   without {:>9.2} ms   ratio {:.0}x",
        target.0,
        target.0 - with.from_checkpoint.0,
        ms(with_checkpoint),
        ms(without_checkpoint),
        without_checkpoint.as_secs_f64() / with_checkpoint.as_secs_f64()
    );
    drop(store);
    std::fs::remove_dir_all(&scratch).ok();
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + second, 0).single().expect("a valid time")
}

fn progress_event(i: u64) -> JobEvent {
    JobEvent::ReplicationProgressed {
        counters: ReplicationCounters {
            queue_bytes: i % 4096,
            bytes_sent: i * 4096,
            bytes_sent_compressed: i * 2048,
            operations_applied: i,
            recovery_point_latency_ms: Some(i % 50),
            ..ReplicationCounters::default()
        },
    }
}

fn new_event(event: JobEvent, i: u64) -> NewEvent {
    NewEvent {
        event,
        recorded_at: at(i64::try_from(i).unwrap_or(i64::MAX)),
        metadata: EventMetadata::engine(),
    }
}

fn single_appends(
    store: &SledEventStore,
    count: u64,
    scratch: &std::path::Path,
) -> Result<(f64, f64)> {
    let job = JobId::from_parts(1, [1; 10]);
    let started = Instant::now();
    for i in 0..count {
        let request =
            AppendRequest { job, expected: Seq(i), events: vec![new_event(progress_event(i), i)] };
        store.append(&[request])??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let peer = plain_durable_writes(scratch, count, 1)?;
    Ok((rate, peer))
}

fn batched_appends(
    store: &SledEventStore,
    total: u64,
    batch: u64,
    scratch: &std::path::Path,
) -> Result<(f64, f64)> {
    let jobs: Vec<JobId> = (0..10u8).map(|i| JobId::from_parts(2, [i; 10])).collect();
    let mut heads = vec![Seq::ZERO; jobs.len()];
    let started = Instant::now();
    let mut written = 0u64;
    while written < total {
        let mut requests = Vec::new();
        let per_job = batch / jobs.len() as u64;
        for (j, job) in jobs.iter().enumerate() {
            let events: Vec<NewEvent> =
                (0..per_job).map(|k| new_event(progress_event(written + k), written + k)).collect();
            requests.push(AppendRequest { job: *job, expected: heads[j], events });
            heads[j] = Seq(heads[j].0 + per_job);
        }
        store.append(&requests)??;
        written += per_job * jobs.len() as u64;
    }
    let rate = written as f64 / started.elapsed().as_secs_f64();
    let peer = plain_durable_writes(scratch, written / batch, batch)? * batch as f64;
    Ok((rate, peer))
}

/// Writes `syncs` times `per_sync` records of the size of one stored event to a plain file,
/// `fdatasync`ing after each group; returns syncs per second.
fn plain_durable_writes(scratch: &std::path::Path, syncs: u64, per_sync: u64) -> Result<f64> {
    let path = scratch.join("plain.log");
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let record = vec![0x5au8; 260];
    let started = Instant::now();
    for _ in 0..syncs {
        for _ in 0..per_sync {
            file.write_all(&record)?;
        }
        file.sync_data()?;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).ok();
    Ok(rate)
}

/// A job that protects for a long time: created, started, mirrored, then `events` minus a few
/// replication checkpoints. Checkpoints are written as the engine writes them.
fn build_long_job(store: &SledEventStore, job: JobId, events: u64) -> Result<()> {
    let spec = JobSpec {
        name: "long-running".into(),
        source: "/srv/source".into(),
        target: TargetSpec { endpoint: TargetEndpoint::Local, path: "/srv/replica".into() },
        ..JobSpec::default()
    };
    let mirror = MirrorPlan {
        kind: MirrorKind::Full,
        comparison: MirrorComparison::AttributesSendDifferences,
        calculate_size: true,
        reason: MirrorReason::Initial,
    };
    let opening = vec![
        JobEvent::Created { spec: Box::new(spec) },
        JobEvent::Initialized,
        JobEvent::StartRequested { mirror: mirror.clone() },
        JobEvent::StartSucceeded {
            connection: ConnectionInfo {
                id: ConnectionId(1),
                peer: "127.0.0.1:6320".into(),
                encrypted: false,
                target_diverged: false,
            },
        },
        JobEvent::MirrorStarted { mirror },
        JobEvent::MirrorCompleted { counters: Default::default() },
        JobEvent::ReplicationCaughtUp,
    ];
    let mut machine = Job::new(job);
    let mut head = Seq::ZERO;
    let mut i = 0u64;
    let mut opening = opening.into_iter();
    while head.0 < events {
        let n = (events - head.0).min(10_000);
        let batch: Vec<NewEvent> = (0..n)
            .map(|_| {
                i += 1;
                new_event(opening.next().unwrap_or_else(|| progress_event(i)), i)
            })
            .collect();
        let stored = store.append(&[AppendRequest { job, expected: head, events: batch }])??;
        for envelope in &stored {
            let mut out = Applied::new(job, envelope.seq);
            machine
                .apply(envelope, &mut out)
                .map_err(|e| anyhow::anyhow!("building the job: {e}"))?;
            if envelope.seq.0 % CHECKPOINT_EVERY == 0 {
                store.save_checkpoint(
                    job,
                    &Checkpoint { seq: envelope.seq, state: machine.snapshot() },
                )?;
            }
        }
        head = Seq(head.0 + n);
    }
    Ok(())
}
