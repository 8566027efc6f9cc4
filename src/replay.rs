//! `understudy replay`: the audit. Rebuilds each job's state from its event log, prints its
//! timeline in the seeds' wording, and checks the hash chain.
//!
//! Works on a data directory with no daemon running (offline), and through the daemon's API
//! while one runs; both print the same thing because both call [`audit_job`] and [`render`].

use std::fmt::Write as _;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use understudy_core::engine::{Folded, fold, fold_from};
use understudy_core::event::EventEnvelope;
use understudy_core::ids::{JobId, Seq};
use understudy_core::status::{JobStatus, StateName};
use understudy_core::store::{CheckpointStore, EventStore};
use understudy_core::{JobEvent, JobMachine};
use understudy_states::{Job, JobSnapshot};

/// One job in the list of all jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job id.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its state at the end of its history (or where the history breaks).
    pub state: StateName,
    /// Its last good sequence number.
    pub seq: Seq,
    /// Set when the history is corrupt.
    pub corrupt: Option<String>,
}

/// One event of a timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// The stored envelope.
    pub envelope: EventEnvelope,
    /// The event's name.
    pub name: String,
    /// A one-line summary.
    pub summary: String,
    /// Who or what caused it.
    pub caused_by: String,
    /// Transition lines it produced, in the seeds' wording.
    pub transitions: Vec<String>,
}

/// A job's audited history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Audit {
    /// The job id.
    pub job: JobId,
    /// Its name.
    pub name: String,
    /// The timeline, up to `--at` or the end.
    pub timeline: Vec<TimelineEntry>,
    /// The state at the end of the timeline.
    pub state: StateName,
    /// The projections at the end of the timeline.
    pub status: JobStatus,
    /// Where the timeline ends.
    pub seq: Seq,
    /// The corruption found, if any, in the exact wording
    /// "history of job <id> is corrupt at seq <n>: <why>".
    pub corrupt: Option<String>,
}

/// Lists every job with its current state, checking each history.
///
/// # Errors
///
/// A store failure other than corruption.
pub fn list_jobs<S>(store: &S) -> Result<Vec<JobSummary>>
where
    S: EventStore + CheckpointStore<JobSnapshot> + ?Sized,
{
    let mut jobs = Vec::new();
    for id in store.jobs()? {
        // The state comes from the latest checkpoint; the chain is still checked from event 1
        // so a listing shows every corrupt history.
        let folded: Folded<Job> = fold(store, id, None, &mut |_, _| {})?;
        let verified: Folded<Job> =
            fold_from(store, id, Job::new(id), Seq::ZERO, None, &mut |_, _| {})?;
        let corrupt = verified.problem.or(folded.problem.clone());
        let (state, seq, name) = if corrupt.is_some() {
            (verified.machine.state(), verified.head, name_of(&verified.machine))
        } else {
            (folded.machine.state(), folded.head, name_of(&folded.machine))
        };
        jobs.push(JobSummary { id, name, state, seq, corrupt });
    }
    Ok(jobs)
}

fn name_of(job: &Job) -> String {
    job.spec().map(|s| s.name.clone()).unwrap_or_default()
}

/// Finds a job by id or unique name.
///
/// # Errors
///
/// No such job, or a name several jobs share.
pub fn resolve_job(jobs: &[JobSummary], wanted: &str) -> Result<JobId, crate::UserError> {
    if let Ok(id) = wanted.parse::<JobId>()
        && jobs.iter().any(|j| j.id == id)
    {
        return Ok(id);
    }
    let by_name: Vec<&JobSummary> = jobs.iter().filter(|j| j.name == wanted).collect();
    match by_name.as_slice() {
        [one] => Ok(one.id),
        [] => Err(crate::UserError(format!(
            "no job {wanted:?}: list jobs with `understudy replay --data-dir DIR`"
        ))),
        _ => Err(crate::UserError(format!(
            "{} jobs are named {wanted:?}: give the job id instead ({})",
            by_name.len(),
            by_name.iter().map(|j| j.id.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Audits one job: replays its whole history from event 1 (checking the chain), recording the
/// timeline up to `at` (or the end).
///
/// # Errors
///
/// A store failure other than corruption.
pub fn audit_job<S>(store: &S, job: JobId, at: Option<Seq>) -> Result<Audit>
where
    S: EventStore + ?Sized,
{
    let mut timeline = Vec::new();
    let folded: Folded<Job> =
        fold_from(store, job, Job::new(job), Seq::ZERO, at, &mut |envelope, applied| {
            timeline.push(TimelineEntry {
                envelope: envelope.clone(),
                name: envelope.event.name().to_string(),
                summary: envelope.event.summary(),
                caused_by: envelope.metadata.actor.to_string(),
                transitions: applied.transitions.clone(),
            });
        })?;
    if let Some(at) = at
        && folded.problem.is_none()
        && folded.head < at
    {
        return Err(crate::UserError(format!(
            "job {job} has {} events: --at {} is past its end (give a seq from 1 to {})",
            folded.head.0, at.0, folded.head.0
        ))
        .into());
    }
    let mut corrupt = folded.problem.clone();
    if at.is_some() && corrupt.is_none() {
        // The timeline stops at --at, but the audit still checks the rest of the chain.
        let rest: Folded<Job> =
            fold_from(store, job, folded.machine.clone(), folded.head, None, &mut |_, _| {})?;
        corrupt = rest.problem;
    }
    Ok(Audit {
        job,
        name: name_of(&folded.machine),
        state: folded.machine.state(),
        status: folded.machine.status(),
        seq: folded.head,
        timeline,
        corrupt,
    })
}

/// Renders the job list for people.
pub fn render_list(jobs: &[JobSummary]) -> String {
    let mut out = String::new();
    if jobs.is_empty() {
        out.push_str("no jobs\n");
        return out;
    }
    let _ = writeln!(out, "{:<36}  {:<24}  {:<20}  {:>8}", "JOB", "NAME", "STATE", "EVENTS");
    for job in jobs {
        let _ = write!(
            out,
            "{:<36}  {:<24}  {:<20}  {:>8}",
            job.id,
            truncate(&job.name, 24),
            job.state,
            job.seq.0
        );
        if let Some(why) = &job.corrupt {
            let _ = write!(out, "  CORRUPT: {why}");
        }
        out.push('\n');
    }
    out
}

/// Renders a job's audit for people: the timeline, then the state and projections at its end.
pub fn render(audit: &Audit) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job {} ({})", audit.job, audit.name);
    for entry in &audit.timeline {
        let e = &entry.envelope;
        let _ = write!(
            out,
            "{}  seq {:<6} {:<24} by {}",
            e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3fZ"),
            e.seq.0,
            entry.name,
            entry.caused_by
        );
        if !entry.summary.is_empty() {
            let _ = write!(out, ": {}", entry.summary);
        }
        out.push('\n');
        for line in &entry.transitions {
            let _ = writeln!(out, "{:>38}{line}", "");
        }
    }
    let _ = writeln!(out, "\nstate at seq {}: {}", audit.seq.0, audit.state);
    out.push_str(&render_status(&audit.status));
    out
}

/// The projections, one per line.
pub fn render_status(status: &JobStatus) -> String {
    let mut out = String::new();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<(&str, String)> = vec![
        ("health", status.health.to_string()),
        ("activity", status.activity.clone()),
        ("mirror status", status.mirror_status.to_string()),
        ("replication status", status.replication_status.to_string()),
        ("transmit mode", status.transmit_mode.to_string()),
        ("target data state", status.target_data_state.to_string()),
        ("connection id", opt(status.connection_id.map(|c| c.to_string()))),
        ("connected since", opt(status.connected_since.map(|t| t.to_rfc3339()))),
        ("mirror percent", opt(status.mirror_percent.map(|p| format!("{p}%")))),
        ("mirror remaining", opt(status.mirror_remaining_bytes.map(|b| format!("{b} bytes")))),
        ("mirror skipped", format!("{} bytes", status.mirror_skipped_bytes)),
        ("replication queue", format!("{} bytes", status.replication_queue_bytes)),
        ("disk queue", format!("{} bytes", status.disk_queue_bytes)),
        ("bytes sent", status.bytes_sent.to_string()),
        ("bytes sent compressed", status.bytes_sent_compressed.to_string()),
        (
            "recovery point latency",
            opt(status.recovery_point_latency_ms.map(|l| format!("{l} ms"))),
        ),
        ("mirror start time", opt(status.mirror_started_at.map(|t| t.to_rfc3339()))),
        ("mirror end time", opt(status.mirror_ended_at.map(|t| t.to_rfc3339()))),
        ("last mirror duration", opt(status.last_mirror_duration_ms.map(|d| format!("{d} ms")))),
        (
            "last verification",
            opt(status.last_verification.as_ref().map(|v| {
                format!(
                    "{} files compared, {} different, {} missing",
                    v.files_compared, v.files_different, v.files_missing
                )
            })),
        ),
        ("fault", opt(status.fault.clone())),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "  {name:<24}{value}");
    }
    out
}

/// The transition lines of a job's history: what `understudy job log` prints.
pub fn render_log(audit: &Audit) -> String {
    let mut out = String::new();
    for entry in &audit.timeline {
        let at = entry.envelope.recorded_at.format("%Y-%m-%d %H:%M:%S%.3fZ");
        if entry.transitions.is_empty()
            && !matches!(entry.envelope.event, JobEvent::ReplicationProgressed { .. })
        {
            let summary = if entry.summary.is_empty() {
                String::new()
            } else {
                format!(": {}", entry.summary)
            };
            let _ = writeln!(out, "{at}\t{}{summary}", entry.name);
        }
        if let JobEvent::ScriptCompleted { result, .. } = &entry.envelope.event {
            // The script's own words belong in the job log.
            for line in result.output.lines() {
                let _ = writeln!(out, "{at}\t  | {line}");
            }
        }
        for line in &entry.transitions {
            let _ = writeln!(out, "{at}\t{line}");
        }
    }
    out
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(width - 1).collect();
        short.push('…');
        short
    }
}
