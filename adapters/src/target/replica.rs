//! The target engine's own record of a job that replicates here from another engine: the
//! replica job (ADR 9).
//!
//! The source engine drives the data; this side follows the job's session, runs the failover
//! monitor (it watches the source, so it must live where the source is not), and carries out a
//! failover started here: settle what the session received, fence the replica so the source
//! cannot overwrite it, run the scripts, and hand over the folder. Undoing the failover lifts
//! the fence and marks the replica diverged, so the source's next session remirrors.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use understudy_core::effect::{Completion, Effect, EffectEnvelope, Failure, Report};
use understudy_core::event::ConnectionInfo;
use understudy_core::spec::{FailureTrigger, JobRole, JobSpec};
use understudy_core::status::MirrorCounters;
use understudy_core::{EffectId, JobId};

use super::TargetService;

/// How often the replica looks at its session (presence, idleness).
const SESSION_POLL: Duration = Duration::from_millis(250);

/// How often a replica that is caught up says so.
const CATCH_UP_TICK: Duration = Duration::from_secs(1);

/// The longest one check of the source may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One replica job on the target engine.
pub struct ReplicaJob {
    job: JobId,
    spec: JobSpec,
    target: Arc<TargetService>,
    completions: mpsc::UnboundedSender<Completion>,
    connection: Option<JoinHandle<()>>,
    capture: Option<JoinHandle<()>>,
    monitor: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ReplicaJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaJob").field("job", &self.job).finish_non_exhaustive()
    }
}

impl Drop for ReplicaJob {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ReplicaJob {
    /// A replica job with nothing running yet.
    pub fn new(
        job: JobId,
        spec: JobSpec,
        target: Arc<TargetService>,
        completions: mpsc::UnboundedSender<Completion>,
    ) -> Self {
        ReplicaJob {
            job,
            spec,
            target,
            completions,
            connection: None,
            capture: None,
            monitor: None,
            tasks: Vec::new(),
        }
    }

    fn reporter(&self, effect: EffectId) -> impl Fn(Report) + Send + 'static {
        let completions = self.completions.clone();
        move |report| {
            let _ = completions.send(Completion { effect, report });
        }
    }

    /// Carries out one effect. Never blocks: waiting runs on tasks.
    pub fn handle(&mut self, envelope: &EffectEnvelope) {
        let id = envelope.id;
        let report = self.reporter(id);
        let (job, target) = (self.job, Arc::clone(&self.target));
        match &envelope.effect {
            Effect::Connect { .. } => {
                abort(self.connection.take());
                self.connection = Some(tokio::spawn(follow_session(job, target, report)));
            }
            Effect::Disconnect => abort(self.connection.take()),
            Effect::StartChangeCapture => {
                abort(self.capture.take());
                self.capture = Some(tokio::spawn(async move {
                    // Caught up whenever the session has applied and synced all it received
                    // (as the source's ticker, the job takes it in the states that wait for it).
                    loop {
                        if target.session_idle(job) {
                            report(Report::ReplicationCaughtUp);
                        }
                        tokio::time::sleep(CATCH_UP_TICK).await;
                    }
                }));
            }
            Effect::StopChangeCapture => abort(self.capture.take()),
            Effect::StartMirror { .. } => {
                // The source engine runs the mirror; here it is over when the session has
                // applied everything it was sent so far.
                self.tasks.push(tokio::spawn(async move {
                    while !target.session_idle(job) {
                        tokio::time::sleep(SESSION_POLL).await;
                    }
                    report(Report::MirrorFinished { counters: MirrorCounters::default() });
                }));
            }
            Effect::RunScript { stage, script } => {
                let (stage, script) = (*stage, script.clone());
                self.tasks.push(tokio::spawn(async move {
                    let result = crate::script::run_script(&script).await;
                    report(Report::ScriptFinished { stage, result });
                }));
            }
            Effect::SettleTargetQueue { policy } => {
                let policy = *policy;
                self.tasks.push(tokio::spawn(async move {
                    let operations = target.settle(job, policy).await;
                    report(Report::TargetQueueSettled { policy, operations });
                }));
            }
            Effect::ReleaseTarget => {
                abort(self.connection.take());
                abort(self.capture.take());
                match self.target.fence_failed_over(job) {
                    Ok(()) => report(Report::TargetReleased),
                    Err(error) => report(Report::Fault {
                        kind: understudy_core::effect::FaultKind::TargetApply,
                        failure: Failure::persistent(format!(
                            "cannot record the failover of the replica in the target's state folder: {error}"
                        )),
                    }),
                }
            }
            // The replica is the folder itself: once fenced it is live.
            Effect::ActivateReplica { .. } => report(Report::ReplicaActivated),
            Effect::DeactivateReplica => {
                if let Err(error) = self.target.unfence(job) {
                    tracing::error!(%job, %error, "could not lift the failover fence of the replica");
                }
            }
            Effect::StartFailoverMonitor => {
                abort(self.monitor.take());
                let JobRole::Replica { source_address } = &self.spec.role else {
                    return;
                };
                let monitor = self.spec.failover_monitor.clone();
                self.monitor = Some(tokio::spawn(watch_source(
                    source_address.clone(),
                    Duration::from_secs(monitor.interval_secs.max(1)),
                    monitor.trigger,
                    report,
                )));
            }
            Effect::StopFailoverMonitor => abort(self.monitor.take()),
            Effect::StartTimer { timer, after_ms } => {
                let (timer, after) = (*timer, Duration::from_millis(*after_ms));
                self.tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    report(Report::TimerFired { timer });
                }));
            }
            Effect::StopMirror | Effect::ReleaseJob => {}
            // Source-side work: the states refuse the commands that lead to it on a replica.
            Effect::PauseMirror
            | Effect::ResumeMirror
            | Effect::PauseTransmission
            | Effect::ResumeTransmission
            | Effect::Verify { .. }
            | Effect::ProcessOrphans { .. }
            | Effect::SetBandwidth { .. }
            | Effect::ReverseDirection => {
                tracing::debug!(job = %self.job, effect = envelope.effect.name(), "nothing to do on a replica");
            }
        }
        self.tasks.retain(|t| !t.is_finished());
    }

    /// Stops everything the job runs.
    pub fn shutdown(&mut self) {
        abort(self.connection.take());
        abort(self.capture.take());
        abort(self.monitor.take());
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

fn abort(task: Option<JoinHandle<()>>) {
    if let Some(task) = task {
        task.abort();
    }
}

/// "Connected" while the source has a session for the job: waits for one, reports it, and
/// reports its loss.
async fn follow_session(job: JobId, target: Arc<TargetService>, report: impl Fn(Report)) {
    let (connection, peer) = loop {
        if let Some(session) = target.session(job) {
            break session;
        }
        tokio::time::sleep(SESSION_POLL).await;
    };
    report(Report::Connected {
        connection: ConnectionInfo {
            id: connection,
            peer: peer.to_string(),
            encrypted: target.encrypted(),
            target_diverged: false,
        },
    });
    while target.session(job).is_some_and(|(current, _)| current == connection) {
        tokio::time::sleep(SESSION_POLL).await;
    }
    report(Report::ConnectionLost { reason: format!("the source's session from {peer} ended") });
}

/// The failover monitor: checks that the source engine answers on its replication address
/// every `interval` (measured after each answer, as the seeds do) and reports the source failed
/// when `trigger` says so. After a trip it reports again only once the source has answered in
/// between.
async fn watch_source(
    address: String,
    interval: Duration,
    trigger: FailureTrigger,
    report: impl Fn(Report),
) {
    let mut last_answer = tokio::time::Instant::now();
    let mut failures: u64 = 0;
    let mut armed = true;
    loop {
        let answered = matches!(
            tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(&address)).await,
            Ok(Ok(_))
        );
        if answered {
            last_answer = tokio::time::Instant::now();
            failures = 0;
            armed = true;
        } else {
            failures += 1;
            let silent = last_answer.elapsed();
            let tripped = match trigger {
                FailureTrigger::TotalTime { secs } => silent >= Duration::from_secs(secs),
                FailureTrigger::ConsecutiveFailures { count } => failures >= u64::from(count),
            };
            if tripped && armed {
                armed = false;
                report(Report::SourceFailed {
                    reason: format!(
                        "the source engine at {address} has not answered for {} s ({failures} checks in a row failed)",
                        silent.as_secs()
                    ),
                });
            }
        }
        tokio::time::sleep(interval).await;
    }
}
