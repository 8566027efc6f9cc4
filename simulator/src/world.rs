//! The simulated adapters: a model of the world the effects act on, with latency and faults.
//!
//! Effects go in through [`World::dispatch`]; the world schedules what a real adapter would
//! report (connections made or refused, mirror progress and completion, replication progress,
//! scripts finishing …) on an agenda ordered by simulated time and insertion order, so a run is
//! a pure function of the seed. Faults (switched off in the liveness phase): refused and lost
//! connections, partitions, permanent failures, exhausted queues, a full target disk, the
//! failover monitor tripping, scripts failing, and reports of superseded work delivered late.

use std::collections::BTreeMap;

use understudy_core::effect::{
    Completion, Effect, EffectEnvelope, Failure, FaultKind, Report, ScriptResult, Timer,
};
use understudy_core::event::ConnectionInfo;
use understudy_core::ids::{ConnectionId, EffectId, JobId};
use understudy_core::spec::QueuePolicy;
use understudy_core::status::{MirrorCounters, ReplicationCounters, VerificationSummary};

use crate::rng::SimRng;

/// What the world has scheduled.
#[derive(Clone, Debug)]
enum Item {
    /// Deliver a report.
    Report(Completion),
    /// A connection attempt resolves.
    ConnectAttempt { job: JobId, effect: EffectId },
    /// The mirror moves on.
    MirrorTick { job: JobId, effect: EffectId },
    /// Replication moves on.
    CaptureTick { job: JobId, effect: EffectId },
    /// Replication has drained what queued during the mirror.
    CaughtUp { job: JobId, effect: EffectId },
}

#[derive(Clone, Debug, Default)]
struct SimJob {
    connecting: Option<EffectId>,
    connected: Option<EffectId>,
    capture: Option<EffectId>,
    queue_bytes: u64,
    bytes_sent: u64,
    mirror: Option<SimMirror>,
    transmit_paused: bool,
    monitor: Option<EffectId>,
    partitioned_until_ms: u64,
    faults: Vec<(FaultKind, EffectId)>,
}

#[derive(Clone, Debug)]
struct SimMirror {
    effect: EffectId,
    total_bytes: u64,
    done_bytes: u64,
    paused: bool,
}

/// The simulated world.
#[derive(Debug)]
pub struct World {
    rng: SimRng,
    jobs: BTreeMap<JobId, SimJob>,
    agenda: BTreeMap<(u64, u64), Item>,
    inserted: u64,
    next_connection: u64,
    /// Whether faults are injected (off in the liveness phase).
    pub faults: bool,
}

impl World {
    /// An empty world.
    pub fn new(rng: SimRng) -> Self {
        World {
            rng,
            jobs: BTreeMap::new(),
            agenda: BTreeMap::new(),
            inserted: 0,
            next_connection: 0,
            faults: true,
        }
    }

    /// Forgets everything in flight: what a crash of the daemon does to its adapters.
    pub fn crash(&mut self) {
        self.jobs.clear();
        self.agenda.clear();
    }

    /// When the next scheduled item is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.agenda.keys().next().map(|(at, _)| *at)
    }

    fn schedule(&mut self, at_ms: u64, item: Item) {
        self.inserted += 1;
        self.agenda.insert((at_ms, self.inserted), item);
    }

    fn report(&mut self, at_ms: u64, effect: EffectId, report: Report) {
        self.schedule(at_ms, Item::Report(Completion { effect, report }));
    }

    fn latency(&mut self) -> u64 {
        // Mostly fast, sometimes slow: a heavy tail.
        if self.rng.chance(50) { self.rng.range(500..5_000) } else { self.rng.range(1..200) }
    }

    /// Takes an effect. The caller has checked its causing event is durable.
    pub fn dispatch(&mut self, now_ms: u64, envelope: &EffectEnvelope) {
        let job_id = envelope.id.job;
        let id = envelope.id;
        let lat = self.latency();
        let at = now_ms + lat;
        let job = self.jobs.entry(job_id).or_default();
        match &envelope.effect {
            Effect::Connect { .. } => {
                job.connecting = Some(id);
                job.connected = None;
                self.schedule(at, Item::ConnectAttempt { job: job_id, effect: id });
            }
            Effect::Disconnect => {
                // A stopped job starts over: nothing held from a pause survives it.
                job.connecting = None;
                job.connected = None;
                job.transmit_paused = false;
            }
            Effect::StartChangeCapture => {
                job.capture = Some(id);
                job.queue_bytes = 0;
                self.schedule(at, Item::CaptureTick { job: job_id, effect: id });
            }
            Effect::StopChangeCapture => {
                job.capture = None;
                job.queue_bytes = 0;
            }
            Effect::StartMirror { plan } => {
                let total_bytes = self.rng.range(1..50) * 1_000_000;
                let job = self.jobs.entry(job_id).or_default();
                job.mirror =
                    Some(SimMirror { effect: id, total_bytes, done_bytes: 0, paused: false });
                if plan.calculate_size {
                    self.report(
                        at,
                        id,
                        Report::MirrorSized { total_bytes, total_files: total_bytes / 100_000 },
                    );
                }
                self.schedule(at + 1, Item::MirrorTick { job: job_id, effect: id });
            }
            Effect::PauseMirror => {
                if let Some(m) = job.mirror.as_mut() {
                    m.paused = true;
                }
            }
            Effect::ResumeMirror => {
                if let Some(m) = job.mirror.as_mut() {
                    m.paused = false;
                    let effect = m.effect;
                    self.schedule(at, Item::MirrorTick { job: job_id, effect });
                }
            }
            Effect::StopMirror => {
                if let Some(old) = job.mirror.take()
                    && self.faults
                    && self.rng.chance(100)
                {
                    // The adapter had already finished when the stop arrived: a late report.
                    let counters = MirrorCounters {
                        bytes_mirrored: old.total_bytes,
                        ..MirrorCounters::default()
                    };
                    self.report(at, old.effect, Report::MirrorFinished { counters });
                }
            }
            Effect::PauseTransmission => job.transmit_paused = true,
            Effect::ResumeTransmission => {
                job.transmit_paused = false;
                if let Some(m) = &job.mirror {
                    let effect = m.effect;
                    self.schedule(at, Item::MirrorTick { job: job_id, effect });
                }
            }
            Effect::Verify { remirror, .. } => {
                let different = if self.faults { self.rng.range(0..3) } else { 0 };
                let summary = VerificationSummary {
                    files_compared: self.rng.range(1..1000),
                    files_different: different,
                    files_remirrored: if *remirror { different } else { 0 },
                    ..VerificationSummary::default()
                };
                let done = at + self.rng.range(100..5_000);
                self.report(done, id, Report::VerificationFinished { summary });
            }
            Effect::ProcessOrphans { delete } => {
                let found = self.rng.range(0..5);
                let deleted = if *delete { found } else { 0 };
                self.report(
                    at,
                    id,
                    Report::OrphansProcessed {
                        found,
                        deleted,
                        bytes: found * 4096,
                        log_path: None,
                    },
                );
            }
            Effect::RunScript { stage, .. } => {
                let result = if self.faults && self.rng.chance(150) {
                    if self.rng.chance(500) {
                        ScriptResult { timed_out: true, ..ScriptResult::default() }
                    } else {
                        ScriptResult {
                            exit_code: Some(1),
                            output: "script failed".into(),
                            ..ScriptResult::default()
                        }
                    }
                } else {
                    ScriptResult {
                        exit_code: Some(0),
                        output: "ok".into(),
                        ..ScriptResult::default()
                    }
                };
                self.report(at, id, Report::ScriptFinished { stage: *stage, result });
            }
            Effect::SettleTargetQueue { policy } => {
                let operations =
                    if *policy == QueuePolicy::Apply { self.rng.range(0..100) } else { 0 };
                self.report(at, id, Report::TargetQueueSettled { policy: *policy, operations });
            }
            Effect::ReleaseTarget => {
                job.connecting = None;
                job.connected = None;
                self.report(at, id, Report::TargetReleased);
            }
            Effect::ActivateReplica { .. } => self.report(at, id, Report::ReplicaActivated),
            Effect::DeactivateReplica | Effect::ReverseDirection | Effect::SetBandwidth { .. } => {}
            Effect::StartFailoverMonitor => {
                job.monitor = Some(id);
                if self.faults && self.rng.chance(300) {
                    let trip = now_ms + self.rng.range(1_000..120_000);
                    self.report(
                        trip,
                        id,
                        Report::SourceFailed {
                            reason: "the source did not answer 20 checks".into(),
                        },
                    );
                }
            }
            Effect::StopFailoverMonitor => job.monitor = None,
            Effect::StartTimer { timer, after_ms } => {
                let timer: Timer = *timer;
                self.report(now_ms + after_ms, id, Report::TimerFired { timer });
            }
            Effect::ReleaseJob => {
                self.jobs.remove(&job_id);
            }
        }
    }

    /// Pops the next due item and turns it into the report it causes, if any.
    pub fn step(&mut self) -> Option<(u64, Option<Completion>)> {
        let ((at, _), item) = self.agenda.pop_first()?;
        Some((at, self.resolve(at, item)))
    }

    fn resolve(&mut self, now_ms: u64, item: Item) -> Option<Completion> {
        match item {
            Item::Report(completion) => Some(completion),
            Item::ConnectAttempt { job, effect } => {
                let faults = self.faults;
                let permanent = faults && self.rng.chance(50);
                let refused = faults && self.rng.chance(150);
                let backoff = self.rng.range(1_000..10_000);
                let state = self.jobs.get_mut(&job)?;
                if state.connecting != Some(effect) {
                    return None; // superseded or cancelled
                }
                if permanent {
                    state.connecting = None;
                    return Some(Completion {
                        effect,
                        report: Report::ConnectFailed {
                            failure: Failure::permanent(
                                "the peer speaks understudy protocol 9, this engine speaks 1",
                            ),
                        },
                    });
                }
                if state.partitioned_until_ms > now_ms || refused {
                    self.schedule(now_ms + backoff, Item::ConnectAttempt { job, effect });
                    return Some(Completion {
                        effect,
                        report: Report::ConnectFailed {
                            failure: Failure::temporary("connection refused"),
                        },
                    });
                }
                state.connecting = None;
                state.connected = Some(effect);
                // A mirror that stalled without a connection carries on.
                if let Some(mirror) = &state.mirror {
                    let mirror_effect = mirror.effect;
                    self.schedule(now_ms + 1, Item::MirrorTick { job, effect: mirror_effect });
                }
                self.next_connection += 1;
                let connection = ConnectionInfo {
                    id: ConnectionId(self.next_connection),
                    peer: "sim-target:6320".into(),
                    encrypted: false,
                    target_diverged: false,
                };
                Some(Completion { effect, report: Report::Connected { connection } })
            }
            Item::MirrorTick { job, effect } => {
                let chunk = self.rng.range(1..10) * 1_000_000;
                let tick = self.rng.range(200..1_000);
                let state = self.jobs.get_mut(&job)?;
                let mirror = state.mirror.as_mut().filter(|m| m.effect == effect)?;
                if mirror.paused || state.transmit_paused || state.connected.is_none() {
                    return None; // resumes when told to
                }
                mirror.done_bytes = (mirror.done_bytes + chunk).min(mirror.total_bytes);
                state.bytes_sent += chunk;
                let counters = MirrorCounters {
                    total_bytes: Some(mirror.total_bytes),
                    bytes_mirrored: mirror.done_bytes,
                    files_mirrored: mirror.done_bytes / 100_000,
                    ..MirrorCounters::default()
                };
                if mirror.done_bytes >= mirror.total_bytes {
                    state.mirror = None;
                    if let Some(capture) = state.capture {
                        let delay = self.rng.range(100..3_000);
                        self.schedule(now_ms + delay, Item::CaughtUp { job, effect: capture });
                    }
                    Some(Completion { effect, report: Report::MirrorFinished { counters } })
                } else {
                    self.schedule(now_ms + tick, Item::MirrorTick { job, effect });
                    Some(Completion { effect, report: Report::MirrorProgress { counters } })
                }
            }
            Item::CaptureTick { job, effect } => {
                let faults = self.faults;
                let exhaust = faults && self.rng.chance(8);
                let alert = faults && self.rng.chance(10);
                let disk_full = faults && self.rng.chance(4);
                let clear = self.rng.chance(200) || !faults;
                let caught_up = self.rng.chance(300);
                let growth = self.rng.range(0..2_000_000);
                let tick = self.rng.range(500..2_000);
                let state = self.jobs.get_mut(&job)?;
                if state.capture != Some(effect) {
                    return None;
                }
                self.schedule(now_ms + tick, Item::CaptureTick { job, effect });
                let state = self.jobs.get_mut(&job)?;
                if let Some((kind, fault_effect)) = state.faults.first().copied()
                    && clear
                {
                    state.faults.remove(0);
                    return Some(Completion {
                        effect: fault_effect,
                        report: Report::FaultCleared { kind },
                    });
                }
                if disk_full && state.faults.is_empty() {
                    state.faults.push((FaultKind::TargetDiskFull, effect));
                    return Some(Completion {
                        effect,
                        report: Report::Fault {
                            kind: FaultKind::TargetDiskFull,
                            failure: Failure::persistent(
                                "no space left on the target: free space on the target volume",
                            ),
                        },
                    });
                }
                if exhaust {
                    state.queue_bytes = 0;
                    return Some(Completion { effect, report: Report::QueueExhausted });
                }
                if alert {
                    return Some(Completion { effect, report: Report::QueueAlert { percent: 50 } });
                }
                if caught_up
                    && state.connected.is_some()
                    && state.mirror.is_none()
                    && !state.transmit_paused
                {
                    state.bytes_sent += state.queue_bytes;
                    state.queue_bytes = 0;
                    return Some(Completion { effect, report: Report::ReplicationCaughtUp });
                }
                if state.connected.is_some() && !state.transmit_paused {
                    state.bytes_sent += state.queue_bytes;
                    state.queue_bytes = growth / 4;
                } else {
                    state.queue_bytes += growth;
                }
                let counters = ReplicationCounters {
                    queue_bytes: state.queue_bytes,
                    disk_queue_bytes: state.queue_bytes / 2,
                    bytes_sent: state.bytes_sent,
                    bytes_sent_compressed: state.bytes_sent / 2,
                    operations_applied: state.bytes_sent / 4096,
                    recovery_point_latency_ms: Some(tick),
                    held_by_schedule: false,
                    replication_data_bytes: state.bytes_sent,
                    replication_operations: state.bytes_sent / 4096,
                };
                Some(Completion { effect, report: Report::ReplicationProgress { counters } })
            }
            Item::CaughtUp { job, effect } => {
                let state = self.jobs.get(&job)?;
                if state.capture != Some(effect)
                    || state.connected.is_none()
                    || state.mirror.is_some()
                {
                    return None;
                }
                Some(Completion { effect, report: Report::ReplicationCaughtUp })
            }
        }
    }

    /// Makes the world report that an established connection broke.
    pub fn cut_connection(&mut self, job: JobId) -> Option<Completion> {
        let state = self.jobs.get_mut(&job)?;
        let effect = state.connected.take()?;
        Some(Completion {
            effect,
            report: Report::ConnectionLost { reason: "the network cut the connection".into() },
        })
    }

    /// Jobs whose failover monitor runs.
    pub fn monitored_jobs(&self) -> Vec<JobId> {
        self.jobs.iter().filter(|(_, j)| j.monitor.is_some()).map(|(id, _)| *id).collect()
    }

    /// Makes the failover monitor of a job report its source failed, if it runs.
    pub fn trip_monitor(&mut self, job: JobId) -> Option<Completion> {
        let effect = self.jobs.get(&job)?.monitor?;
        Some(Completion {
            effect,
            report: Report::SourceFailed { reason: "the source stopped answering".into() },
        })
    }

    /// Makes a job's replication fail for good (e.g. the source volume was removed).
    pub fn break_for_good(&mut self, job: JobId) -> Option<Completion> {
        let effect = self.jobs.get(&job)?.capture?;
        Some(Completion {
            effect,
            report: Report::Fault {
                kind: FaultKind::SourceUnreadable,
                failure: Failure::permanent(
                    "the source folder is gone: restore it, then start the job",
                ),
            },
        })
    }

    /// Cuts a job off from its target for a while.
    pub fn partition(&mut self, job: JobId, until_ms: u64) {
        if let Some(state) = self.jobs.get_mut(&job) {
            state.partitioned_until_ms = until_ms;
        }
    }

    /// Ends every fault, for the liveness phase: partitions heal, faults clear, and replication
    /// catches up where a mirror is done.
    pub fn heal(&mut self, now_ms: u64) -> Vec<Completion> {
        self.faults = false;
        let mut reports = Vec::new();
        let mut catch_ups = Vec::new();
        for (job, state) in &mut self.jobs {
            state.partitioned_until_ms = 0;
            for (kind, effect) in state.faults.drain(..) {
                reports.push(Completion { effect, report: Report::FaultCleared { kind } });
            }
            if let Some(capture) = state.capture
                && state.mirror.is_none()
            {
                catch_ups.push((*job, capture));
            }
        }
        for (job, effect) in catch_ups {
            self.schedule(now_ms + 10, Item::CaughtUp { job, effect });
        }
        reports
    }
}
