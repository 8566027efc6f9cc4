//! The source engine's side of a job: effects in, work done, completions out.
//!
//! [`SourceJob::handle`] takes each effect the job's machine emits and starts or stops the
//! work it names: the connection (with retries and backoff), change capture, mirrors,
//! verifications, orphan passes, scripts on the target, the cutover steps. Everything long runs
//! on its own task; every outcome goes back as a [`Completion`] carrying the effect's id.
//!
//! - `pipe`: the ordered queue every producer feeds, and the shadow of the target;
//! - `link`: one connection to a target engine (or the null target);
//! - `files`: a source file to operations, whole or by differing blocks;
//! - `mirror`: mirrors, verifications (with the seeds' log) and orphan passes;
//! - `walk`: the mirror's walk of the source, listing ahead on a thread of its own;
//! - `capture`: change capture with inotify;
//! - `bandwidth`: the limiter shared by the jobs to one target.

pub mod bandwidth;
pub mod capture;
pub mod files;
pub mod link;
pub mod mirror;
pub mod pipe;
pub mod treewatch;
mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use understudy_core::effect::{
    Completion, Effect, EffectEnvelope, FaultKind, Report, ScriptResult,
};
use understudy_core::event::ConnectionInfo;
use understudy_core::spec::{
    BandwidthLimit, CompressionLevel, DiskQueue, JobSpec, QueuePolicy, TargetEndpoint,
};
use understudy_core::status::ReplicationCounters;
use understudy_core::{ConnectionId, EffectId, Failure, JobId, Retry};

use self::bandwidth::Limiter;
use self::link::{Inbound, Link, LinkOptions, LinkTarget};
use self::mirror::{Control, LogSettings, Mode, Progress, RunError, Settings};
use self::pipe::Pipe;
use crate::fsops::RelPath;
use crate::queue::{DiskLimit, QueueLimits};
use crate::target::null::{NullCounters, serve as serve_null};
use crate::wire::{
    Compression, EncodedOp, HandshakeConfig, Message, Role, SEND_WINDOW_BYTES, SEND_WINDOW_OPS,
    Secret, UNSYNCED_WINDOW_BYTES, UNSYNCED_WINDOW_OPS,
};

/// How often replication progress is reported (the machine records it at most every 2 s).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Encoded operations per batch sent (about one frame).
const BATCH_BYTES: usize = 1024 * 1024;
/// How long the sender, woken from idle, waits for more operations to batch with the first.
const COALESCE: Duration = Duration::from_millis(1);

/// The zstd level behind each of the seeds' compression levels.
pub fn zstd_level(level: CompressionLevel) -> Compression {
    match level {
        CompressionLevel::None => Compression::None,
        CompressionLevel::Minimum => Compression::Zstd { level: 1 },
        CompressionLevel::Medium => Compression::Zstd { level: 3 },
        CompressionLevel::Maximum => Compression::Zstd { level: 9 },
    }
}

/// What every source job of a daemon shares.
pub struct SourceContext {
    /// This engine's id.
    pub engine_id: String,
    /// The shared secret for connections to targets.
    pub secret: Option<Secret>,
    /// This daemon's own replication listener, for jobs whose target is local.
    pub local_target: String,
    /// Where job queues live (one folder per job).
    pub queue_dir: PathBuf,
    /// Where verification and orphan logs go.
    pub log_dir: PathBuf,
    /// Where reports go.
    pub completions: mpsc::UnboundedSender<Completion>,
    /// TLS for connections to targets, when configured.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    connections: AtomicU64,
    /// Connection ids up to here are reserved on disk, so a restart never reuses one.
    connections_reserved: Mutex<u64>,
    limiters: Mutex<BTreeMap<String, Arc<Limiter>>>,
    compressions: Mutex<BTreeMap<String, Arc<Mutex<Compression>>>>,
}

/// The file (in the queue folder) where connection ids are reserved.
const CONNECTION_IDS: &str = "connection-ids";

/// Connection ids reserved at a time.
const CONNECTION_ID_BLOCK: u64 = 1_000;

impl std::fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceContext").field("engine_id", &self.engine_id).finish_non_exhaustive()
    }
}

impl SourceContext {
    /// A context.
    pub fn new(
        engine_id: String,
        secret: Option<Secret>,
        tls: Option<Arc<rustls::ClientConfig>>,
        local_target: String,
        queue_dir: PathBuf,
        log_dir: PathBuf,
        completions: mpsc::UnboundedSender<Completion>,
    ) -> Arc<Self> {
        let reserved = std::fs::read_to_string(queue_dir.join(CONNECTION_IDS))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Arc::new(SourceContext {
            engine_id,
            secret,
            tls,
            local_target,
            queue_dir,
            log_dir,
            completions,
            connections: AtomicU64::new(reserved),
            connections_reserved: Mutex::new(reserved),
            limiters: Mutex::new(BTreeMap::new()),
            compressions: Mutex::new(BTreeMap::new()),
        })
    }

    fn report(&self, effect: EffectId, report: Report) {
        let _ = self.completions.send(Completion { effect, report });
    }

    fn next_connection(&self) -> ConnectionId {
        let id = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let mut reserved =
            self.connections_reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if id > *reserved {
            let next = id + CONNECTION_ID_BLOCK;
            let path = self.queue_dir.join(CONNECTION_IDS);
            let tmp = path.with_extension("tmp");
            let written = std::fs::create_dir_all(&self.queue_dir)
                .and_then(|()| std::fs::write(&tmp, next.to_string()))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path));
            match written {
                Ok(()) => *reserved = next,
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "cannot reserve connection ids; they may repeat after a restart")
                }
            }
        }
        ConnectionId(id)
    }

    /// The limiter of the jobs to `address` (the seeds share bandwidth per source → target).
    fn limiter(&self, address: &str, limit: &BandwidthLimit) -> Arc<Limiter> {
        let limiter = per_target(&self.limiters, address, || Limiter::new(limit.clone()));
        limiter.set(limit.clone());
        limiter
    }

    /// The compression of the jobs to `address`, set to `level` (the seeds share it per
    /// source → target, as bandwidth: the job that connected or changed it last sets it).
    fn compression(&self, address: &str, level: Compression) -> Arc<Mutex<Compression>> {
        let compression = per_target(&self.compressions, address, || Mutex::new(level));
        *compression.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = level;
        compression
    }
}

/// The setting the jobs to `address` share, made by `make` for the first of them.
fn per_target<T>(
    shared: &Mutex<BTreeMap<String, Arc<T>>>,
    address: &str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut shared = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(shared.entry(address.to_string()).or_insert_with(|| Arc::new(make())))
}

/// Change capture cannot watch (all or part of) the tree: replication misses changes there
/// until the job starts again, so the job's health says so.
fn report_capture_failure(ctx: &SourceContext, effect: EffectId, message: String) {
    ctx.report(
        effect,
        Report::Fault { kind: FaultKind::ChangeCapture, failure: Failure::persistent(message) },
    );
}

/// The queue limits of a spec.
pub fn queue_limits(spec: &JobSpec) -> QueueLimits {
    QueueLimits {
        memory_bytes: spec.queue.memory_bytes,
        disk: match spec.queue.disk {
            DiskQueue::Disabled => DiskLimit::Disabled,
            DiskQueue::Unlimited => DiskLimit::Unlimited,
            DiskQueue::Limited { bytes } => DiskLimit::Limited(bytes),
        },
        min_free_bytes: spec.queue.min_free_bytes,
        alert_percent: spec.queue.alert_percent,
        ..QueueLimits::default()
    }
}

/// One job on the source engine.
pub struct SourceJob {
    job: JobId,
    spec: JobSpec,
    ctx: Arc<SourceContext>,
    pipe: Option<Arc<Pipe>>,
    link: watch::Sender<Option<Arc<Link>>>,
    connection: Option<JoinHandle<()>>,
    capture: Option<capture::Capture>,
    capture_id: Option<EffectId>,
    ticker: Option<JoinHandle<()>>,
    /// Wakes the ticker before its next tick: a mirror just finished, and the job may be
    /// caught up now rather than up to a tick later.
    tick_now: Arc<tokio::sync::Notify>,
    mirror: Option<(Arc<Control>, JoinHandle<()>)>,
    mirror_running: Arc<AtomicBool>,
    transmit_paused: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    reversed: bool,
    null: Arc<NullCounters>,
}

impl std::fmt::Debug for SourceJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceJob").field("job", &self.job).finish_non_exhaustive()
    }
}

impl Drop for SourceJob {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl SourceJob {
    /// A job with nothing running yet.
    pub fn new(job: JobId, spec: JobSpec, ctx: Arc<SourceContext>) -> Self {
        let (link, _) = watch::channel(None);
        SourceJob {
            job,
            spec,
            ctx,
            pipe: None,
            link,
            connection: None,
            capture: None,
            capture_id: None,
            ticker: None,
            tick_now: Arc::new(tokio::sync::Notify::new()),
            mirror: None,
            mirror_running: Arc::new(AtomicBool::new(false)),
            transmit_paused: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
            reversed: false,
            null: Arc::new(NullCounters::default()),
        }
    }

    /// What the null target received (diagnostics jobs).
    pub fn null_counters(&self) -> Arc<NullCounters> {
        Arc::clone(&self.null)
    }

    /// The job's pipe, if it has one (for statistics).
    pub fn pipe(&self) -> Option<Arc<Pipe>> {
        self.pipe.clone()
    }

    fn source_root(&self) -> PathBuf {
        PathBuf::from(if self.reversed { &self.spec.target.path } else { &self.spec.source })
    }

    fn target_root(&self) -> String {
        if self.reversed { self.spec.source.clone() } else { self.spec.target.path.clone() }
    }

    fn target_address(&self) -> String {
        match &self.spec.target.endpoint {
            TargetEndpoint::Local => self.ctx.local_target.clone(),
            TargetEndpoint::Remote { host, port } => format!("{host}:{port}"),
            TargetEndpoint::Null => "null".into(),
        }
    }

    fn pipe_or_open(&mut self, effect: EffectId) -> Option<Arc<Pipe>> {
        if let Some(pipe) = &self.pipe {
            return Some(Arc::clone(pipe));
        }
        let excludes = self
            .spec
            .excludes
            .iter()
            .filter_map(|e| RelPath::new(e.as_bytes().to_vec()).ok())
            .collect();
        let dir = self.ctx.queue_dir.join(self.job.to_string());
        match Pipe::open(self.job, self.source_root(), excludes, &dir, queue_limits(&self.spec)) {
            Ok(pipe) => {
                self.pipe = Some(Arc::clone(&pipe));
                Some(pipe)
            }
            Err(error) => {
                self.ctx.report(
                    effect,
                    Report::Fault { kind: FaultKind::Queue, failure: error.to_failure() },
                );
                None
            }
        }
    }

    /// Carries out one effect. Never blocks: long work runs on tasks.
    pub fn handle(&mut self, envelope: &EffectEnvelope) {
        let id = envelope.id;
        match &envelope.effect {
            Effect::Connect { .. } => self.connect(id),
            Effect::Disconnect => self.disconnect(),
            Effect::StartChangeCapture => self.start_capture(id),
            Effect::StopChangeCapture => self.stop_capture(),
            Effect::StartMirror { plan } => {
                let settings = self.settings(Mode::Mirror, plan.comparison, plan.calculate_size);
                self.start_run(id, settings);
            }
            Effect::PauseMirror => {
                if let Some((control, _)) = &self.mirror {
                    control.pause();
                }
            }
            Effect::ResumeMirror => {
                if let Some((control, _)) = &self.mirror {
                    control.resume();
                }
            }
            Effect::StopMirror => {
                if let Some((control, _)) = self.mirror.take() {
                    control.stop();
                }
            }
            Effect::PauseTransmission => self.transmit_paused.store(true, Ordering::SeqCst),
            Effect::ResumeTransmission => {
                self.transmit_paused.store(false, Ordering::SeqCst);
                if let Some(pipe) = &self.pipe {
                    pipe.notify();
                }
            }
            Effect::Verify { comparison, remirror } => {
                let settings =
                    self.settings(Mode::Verify { remirror: *remirror }, *comparison, false);
                self.start_side_run(id, settings);
            }
            Effect::ProcessOrphans { .. } => {
                let settings = self.settings(Mode::Orphans, self.spec.mirror.comparison, false);
                self.start_side_run(id, settings);
            }
            Effect::SetBandwidth { limit } => {
                self.spec.bandwidth = limit.clone();
                let _ = self.ctx.limiter(&self.target_address(), limit);
            }
            Effect::RunScript { stage, script } => {
                let link = self.link.subscribe();
                let local = self.spec.target.endpoint == TargetEndpoint::Local;
                let ctx = Arc::clone(&self.ctx);
                let (stage, script) = (*stage, script.clone());
                self.tasks.push(tokio::spawn(async move {
                    let current = link.borrow().clone();
                    let result = match current {
                        Some(link) => match link
                            .request(|request_id| Message::RunScript {
                                request_id,
                                stage,
                                script: script.clone(),
                            })
                            .await
                        {
                            Ok(Message::ScriptFinished { result, .. }) => result,
                            Ok(other) => ScriptResult {
                                failed_to_start: true,
                                output: format!("unexpected {} from the target", other.kind()),
                                ..Default::default()
                            },
                            Err(reason) if local => {
                                tracing::info!(
                                    reason,
                                    "running the script here: the local target's connection is gone"
                                );
                                crate::script::run_script(&script).await
                            }
                            Err(reason) => ScriptResult {
                                failed_to_start: true,
                                output: format!("the target is not reachable: {reason}"),
                                ..Default::default()
                            },
                        },
                        // A local target is this machine: run it here.
                        None if local => crate::script::run_script(&script).await,
                        None => ScriptResult {
                            failed_to_start: true,
                            output: "the target is not connected".into(),
                            ..Default::default()
                        },
                    };
                    ctx.report(id, Report::ScriptFinished { stage, result });
                }));
            }
            Effect::SettleTargetQueue { policy } => self.settle(id, *policy),
            Effect::ReleaseTarget => self.release(id),
            Effect::ActivateReplica { .. } => {
                // A files job's replica is the released target folder: already live.
                self.ctx.report(id, Report::ReplicaActivated);
            }
            Effect::DeactivateReplica => {}
            Effect::ReverseDirection => {
                self.stop_all();
                self.pipe = None;
                self.reversed = !self.reversed;
            }
            Effect::StartFailoverMonitor | Effect::StopFailoverMonitor => {
                // The monitor runs on the target engine watching the source; a source engine
                // has nothing to do for it.
            }
            Effect::StartTimer { timer, after_ms } => {
                let ctx = Arc::clone(&self.ctx);
                let (timer, after) = (*timer, Duration::from_millis(*after_ms));
                self.tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    ctx.report(id, Report::TimerFired { timer });
                }));
            }
            Effect::ReleaseJob => {
                self.stop_all();
                self.pipe = None;
                let _ = std::fs::remove_dir_all(self.ctx.queue_dir.join(self.job.to_string()));
            }
        }
        self.tasks.retain(|t| !t.is_finished());
    }

    fn settings(
        &self,
        mode: Mode,
        comparison: understudy_core::spec::MirrorComparison,
        calculate_size: bool,
    ) -> Settings {
        let logs = LogSettings {
            dir: self.ctx.log_dir.clone(),
            job_name: self.spec.name.clone(),
            prefix: self.job.to_string(),
            target: self.target_address().replace(':', " : "),
            connection: self.link.borrow().as_ref().map_or(0, |l| l.id.0),
        };
        Settings { mode, comparison, calculate_size, orphans: self.spec.orphans, logs }
    }

    fn connect(&mut self, id: EffectId) {
        if let Some(old) = self.connection.take() {
            old.abort();
        }
        if let Some(link) = self.link.borrow().as_ref() {
            link.close("reconnecting");
        }
        self.link.send_replace(None);
        let Some(pipe) = self.pipe_or_open(id) else { return };
        let ctx = Arc::clone(&self.ctx);
        // The target engine keeps its own record of a job from another engine (its failover
        // monitor runs there); a reversed job's target is the original source, which has one.
        let remote = matches!(self.spec.target.endpoint, TargetEndpoint::Remote { .. });
        let target = LinkTarget {
            address: self.target_address(),
            root: self.target_root(),
            spec: (remote && !self.reversed).then(|| self.spec.clone()),
            source_address: Some(self.ctx.local_target.clone()),
        };
        let null = self.spec.target.endpoint == TargetEndpoint::Null;
        let link_tx = self.link.clone();
        let options = LinkOptions {
            compression: ctx.compression(&target.address, zstd_level(self.spec.compression)),
            limiter: ctx.limiter(&target.address, &self.spec.bandwidth),
            stats: Arc::clone(&pipe.stats),
            encrypted: false,
            tls: if null { None } else { ctx.tls.clone() },
        };
        let delays =
            (self.spec.recovery.reconnect_delay_ms, self.spec.recovery.reconnect_delay_max_ms);
        let transmit_paused = Arc::clone(&self.transmit_paused);
        let null_counters = Arc::clone(&self.null);
        let job = self.job;
        self.connection = Some(tokio::spawn(async move {
            let handshake = HandshakeConfig {
                engine_id: ctx.engine_id.clone(),
                role: Role::Source,
                secret: ctx.secret.clone(),
            };
            let mut delay = Duration::from_millis(delays.0);
            loop {
                let session = ctx.next_connection();
                let opened = if null {
                    let (ours, theirs) = tokio::io::duplex(4 * 1024 * 1024);
                    let counters = Arc::clone(&null_counters);
                    tokio::spawn(async move {
                        if let Err(error) = serve_null(theirs, counters).await {
                            tracing::warn!(%error, "the null target ended");
                        }
                    });
                    Link::over(
                        ours,
                        "null target".into(),
                        &target,
                        job,
                        session,
                        pipe.resume_from(),
                        &handshake,
                        options.clone(),
                    )
                    .await
                } else {
                    Link::connect(
                        &target,
                        job,
                        session,
                        pipe.resume_from(),
                        &handshake,
                        options.clone(),
                    )
                    .await
                };
                match opened {
                    Ok((link, inbound)) => {
                        if let Err(error) = pipe.connected(link.last_applied) {
                            ctx.report(
                                id,
                                Report::Fault {
                                    kind: FaultKind::Queue,
                                    failure: error.to_failure(),
                                },
                            );
                        }
                        link_tx.send_replace(Some(Arc::clone(&link)));
                        let connection = ConnectionInfo {
                            id: link.id,
                            peer: link.peer.clone(),
                            encrypted: link.encrypted,
                            target_diverged: link.target_diverged,
                        };
                        ctx.report(id, Report::Connected { connection });
                        let reason = pump(&ctx, id, &pipe, &link, inbound, &transmit_paused).await;
                        link_tx.send_replace(None);
                        ctx.report(id, Report::ConnectionLost { reason });
                        return;
                    }
                    Err(error) => {
                        let failure = error.to_failure();
                        let permanent = failure.retry == Retry::Permanent;
                        ctx.report(id, Report::ConnectFailed { failure });
                        if permanent {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(delays.1));
                    }
                }
            }
        }));
    }

    fn disconnect(&mut self) {
        if let Some(task) = self.connection.take() {
            task.abort();
        }
        if let Some(link) = self.link.send_replace(None) {
            link.close("the job stopped or auto-disconnected");
        }
        if let Some(pipe) = &self.pipe
            && pipe.exhausted()
            && let Err(error) = pipe.reset()
        {
            tracing::warn!(job = %self.job, %error, "could not empty the exhausted queue");
        }
        self.transmit_paused.store(false, Ordering::SeqCst);
    }

    fn start_capture(&mut self, id: EffectId) {
        let Some(pipe) = self.pipe_or_open(id) else { return };
        self.stop_capture_only();
        self.capture_id = Some(id);
        let ctx = Arc::clone(&self.ctx);
        let tell_ctx = Arc::clone(&ctx);
        let tell: Arc<dyn Fn(capture::CaptureEvent) + Send + Sync> =
            Arc::new(move |event| match event {
                capture::CaptureEvent::Exhausted(_) => tell_ctx.report(id, Report::QueueExhausted),
                capture::CaptureEvent::Trouble(message) => {
                    tracing::warn!(message, "change capture");
                }
            });
        match capture::start(Arc::clone(&pipe), tell) {
            Ok(capture) => self.capture = Some(capture),
            Err(message) => report_capture_failure(&ctx, id, message),
        }
        // Progress, the queue alert, and "caught up" for the machine.
        let link = self.link.subscribe();
        let mirror_running = Arc::clone(&self.mirror_running);
        let transmit_paused = Arc::clone(&self.transmit_paused);
        let limiter = ctx.limiter(&self.target_address(), &self.spec.bandwidth);
        let tick_now = Arc::clone(&self.tick_now);
        self.ticker = Some(tokio::spawn(async move {
            let mut alerted = false;
            let mut was_exhausted = false;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(PROGRESS_EVERY) => {}
                    () = tick_now.notified() => {}
                }
                let usage = match pipe.usage() {
                    Ok(usage) => usage,
                    Err(error) => {
                        ctx.report(
                            id,
                            Report::Fault { kind: FaultKind::Queue, failure: error.to_failure() },
                        );
                        continue;
                    }
                };
                let exhausted = pipe.exhausted();
                if exhausted && !was_exhausted {
                    ctx.report(id, Report::QueueExhausted);
                }
                was_exhausted = exhausted;
                if usage.alert && !alerted {
                    ctx.report(id, Report::QueueAlert { percent: usage.disk_percent });
                }
                alerted = usage.alert;
                let counters = ReplicationCounters {
                    queue_bytes: usage.memory_bytes + usage.disk_bytes,
                    disk_queue_bytes: usage.disk_bytes,
                    bytes_sent: pipe.stats.raw_bytes.load(Ordering::Relaxed),
                    bytes_sent_compressed: pipe.stats.wire_bytes.load(Ordering::Relaxed),
                    operations_applied: pipe.acked.load(Ordering::Relaxed),
                    recovery_point_latency_ms: pipe.recovery_point_latency_ms(),
                    held_by_schedule: limiter.held_by_schedule(),
                    replication_data_bytes: pipe.replication_totals().0,
                    replication_operations: pipe.replication_totals().1,
                };
                ctx.report(id, Report::ReplicationProgress { counters });
                let connected = link.borrow().is_some();
                if connected
                    && !exhausted
                    && pipe.drained()
                    && !mirror_running.load(Ordering::SeqCst)
                    && !transmit_paused.load(Ordering::SeqCst)
                {
                    ctx.report(id, Report::ReplicationCaughtUp);
                }
            }
        }));
    }

    fn stop_capture_only(&mut self) {
        self.capture = None;
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }

    fn stop_capture(&mut self) {
        self.stop_capture_only();
        // Stop does not queue: a remirror follows the next start.
        if let Some(pipe) = &self.pipe
            && let Err(error) = pipe.reset()
        {
            tracing::warn!(job = %self.job, %error, "could not empty the queue");
        }
    }

    /// A mirror (replacing any running one).
    fn start_run(&mut self, id: EffectId, settings: Settings) {
        if let Some((control, _)) = self.mirror.take() {
            control.stop();
        }
        let control = Arc::new(Control::default());
        let task = self.spawn_run(id, settings, Arc::clone(&control));
        self.mirror = Some((control, task));
    }

    /// A verification or orphan pass, alongside replication.
    fn start_side_run(&mut self, id: EffectId, settings: Settings) {
        let control = Arc::new(Control::default());
        let task = self.spawn_run(id, settings, control);
        self.tasks.push(task);
    }

    fn spawn_run(
        &mut self,
        id: EffectId,
        settings: Settings,
        control: Arc<Control>,
    ) -> JoinHandle<()> {
        let Some(pipe) = self.pipe_or_open(id) else { return tokio::spawn(async {}) };
        if pipe.exhausted() {
            let _ = pipe.reset();
        }
        let ctx = Arc::clone(&self.ctx);
        let mut link_rx = self.link.subscribe();
        let mirror_running = Arc::clone(&self.mirror_running);
        let tick_now = Arc::clone(&self.tick_now);
        let is_mirror = settings.mode == Mode::Mirror;
        let capture_id = self.capture_id;
        // A mirror fills change capture's watch as it walks; if it stops before its end, the
        // rest is watched in the background, so replication covers the whole tree again.
        let watch = self.capture.as_ref().filter(|_| is_mirror).map(capture::Capture::watch);
        let unfinished_watch = watch.clone();
        tokio::spawn(async move {
            // Wait for the connection (a start connects and mirrors at once).
            let link = loop {
                if let Some(link) = link_rx.borrow_and_update().clone() {
                    break link;
                }
                if control.is_stopped() || link_rx.changed().await.is_err() {
                    return;
                }
            };
            if is_mirror {
                mirror_running.store(true, Ordering::SeqCst);
            }
            let rt = tokio::runtime::Handle::current();
            let run_ctx = Arc::clone(&ctx);
            let mode = settings.mode;
            let run_control = Arc::clone(&control);
            let result = tokio::task::spawn_blocking(move || {
                let mut progress = |p: Progress| match p {
                    Progress::Sized { total_bytes, total_files } => {
                        run_ctx.report(id, Report::MirrorSized { total_bytes, total_files });
                    }
                    Progress::Counters(counters) if mode == Mode::Mirror => {
                        run_ctx.report(id, Report::MirrorProgress { counters })
                    }
                    Progress::Counters(_) => {}
                    Progress::Skipped(files) if mode == Mode::Mirror => {
                        run_ctx.report(id, Report::MirrorFilesSkipped { files })
                    }
                    Progress::Skipped(files) => {
                        tracing::warn!(count = files.len(), "files skipped by a verification")
                    }
                    Progress::WatchFailed(message) => {
                        report_capture_failure(&run_ctx, capture_id.unwrap_or(id), message)
                    }
                };
                mirror::run(rt, pipe, link, &settings, run_control, watch, &mut progress)
            })
            .await;
            if is_mirror {
                mirror_running.store(false, Ordering::SeqCst);
            }
            if let Some(watch) = unfinished_watch.filter(|watch| !watch.is_complete()) {
                let ctx = Arc::clone(&ctx);
                tokio::task::spawn_blocking(move || match watch.watch_tree(&RelPath::root()) {
                    Ok(()) => watch.set_complete(),
                    Err(message) => report_capture_failure(&ctx, capture_id.unwrap_or(id), message),
                });
            }
            match result {
                Ok(Ok(outcome)) => match mode {
                    Mode::Mirror => {
                        let (found, deleted, bytes, log_path) = outcome.orphans.clone();
                        if found > 0 || log_path.is_some() {
                            ctx.report(
                                id,
                                Report::OrphansProcessed { found, deleted, bytes, log_path },
                            );
                        }
                        ctx.report(id, Report::MirrorFinished { counters: outcome.counters });
                        // Everything it sent is durable: "caught up" need not wait for a tick.
                        tick_now.notify_one();
                    }
                    Mode::Verify { .. } => ctx
                        .report(id, Report::VerificationFinished { summary: outcome.verification }),
                    Mode::Orphans => {
                        let (found, deleted, bytes, log_path) = outcome.orphans;
                        ctx.report(
                            id,
                            Report::OrphansProcessed { found, deleted, bytes, log_path },
                        );
                    }
                },
                Ok(Err(RunError::Stopped | RunError::LinkLost(_))) => {} // the connection reports its loss
                Ok(Err(RunError::Exhausted(_))) => {
                    if let Some(capture) = capture_id {
                        ctx.report(capture, Report::QueueExhausted);
                    }
                }
                Ok(Err(RunError::Source(message))) => ctx.report(
                    id,
                    Report::Fault {
                        kind: FaultKind::SourceUnreadable,
                        failure: Failure::permanent(format!(
                            "{message}: restore the source folder, then start the job"
                        )),
                    },
                ),
                Err(join) => tracing::error!(%join, "a mirror task failed"),
            }
        })
    }

    fn settle(&mut self, id: EffectId, policy: QueuePolicy) {
        let pipe = self.pipe.clone();
        let mut link_rx = self.link.subscribe();
        let ctx = Arc::clone(&self.ctx);
        self.stop_capture_only();
        self.tasks.push(tokio::spawn(async move {
            let link = link_rx.borrow_and_update().clone();
            let mut operations = 0;
            if let Some(pipe) = &pipe {
                match policy {
                    QueuePolicy::Apply => {
                        // Everything the source still holds goes to the target first.
                        let last = pipe.lock().last_enqueued();
                        operations = pipe.lock().queued();
                        if link.is_some() {
                            pipe.wait_acked(last).await;
                        }
                    }
                    QueuePolicy::Discard => {
                        operations = pipe.lock().queued();
                        let _ = pipe.reset();
                    }
                }
            }
            if let Some(link) = link
                && let Ok(Message::Settled { operations: on_target }) =
                    link.call(Message::Settle { policy }).await
            {
                operations += on_target;
            }
            ctx.report(id, Report::TargetQueueSettled { policy, operations });
        }));
    }

    fn release(&mut self, id: EffectId) {
        self.stop_capture_only();
        if let Some((control, _)) = self.mirror.take() {
            control.stop();
        }
        let link = self.link.send_replace(None);
        if let Some(task) = self.connection.take() {
            task.abort();
        }
        let ctx = Arc::clone(&self.ctx);
        self.tasks.push(tokio::spawn(async move {
            if let Some(link) = link {
                let _ = link.call(Message::Release).await;
                link.close("released for cutover");
            }
            ctx.report(id, Report::TargetReleased);
        }));
    }

    fn stop_all(&mut self) {
        self.stop_capture_only();
        if let Some((control, _)) = self.mirror.take() {
            control.stop();
        }
        if let Some(task) = self.connection.take() {
            task.abort();
        }
        if let Some(link) = self.link.send_replace(None) {
            link.close("the job ended");
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    /// A clean shutdown: what is queued is flushed to disk, the target keeps what it made
    /// durable, and the connection closes in order.
    pub fn shutdown(&mut self) {
        if let Some(pipe) = &self.pipe
            && let Err(error) = pipe.flush_to_disk()
        {
            tracing::warn!(job = %self.job, %error, "could not flush the queue to disk");
        }
        self.stop_all();
    }
}

/// Sends the pipe's operations over the link and takes its acknowledgements, until the link
/// closes; returns why it closed.
async fn pump(
    ctx: &SourceContext,
    effect: EffectId,
    pipe: &Arc<Pipe>,
    link: &Arc<Link>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    transmit_paused: &AtomicBool,
) -> String {
    let mut window = Window::default();
    let mut was_idle = false;
    let mut skip_sent = None;
    loop {
        if let Some(reason) = link.closed_reason() {
            return reason;
        }
        while let Ok(message) = inbound.try_recv() {
            window.take(ctx, effect, pipe, message);
        }
        // Dropped operations are announced before anything numbered after them.
        let owed = pipe.owed_skip();
        if owed.is_some() && owed != skip_sent {
            let through_seq = owed.unwrap_or_default();
            if !link.send(Message::Skip { through_seq }) {
                return link.closed_reason().unwrap_or_else(|| "the connection closed".into());
            }
            skip_sent = owed;
        }
        let can_send = !transmit_paused.load(Ordering::SeqCst) && window.has_room();
        if can_send && was_idle {
            // Woken from idle by the first new operation: give its neighbours a moment to
            // join it, so a burst of small files leaves as one frame, not one frame each.
            was_idle = false;
            tokio::time::sleep(COALESCE).await;
        }
        let batch = if can_send {
            match pipe.next_batch(BATCH_BYTES, 4096) {
                Ok(batch) => batch,
                Err(error) => {
                    ctx.report(
                        effect,
                        Report::Fault { kind: FaultKind::Queue, failure: error.to_failure() },
                    );
                    None
                }
            }
        } else {
            None
        };
        if let Some((first_seq, ops)) = batch {
            window.sent(first_seq, &ops);
            if !link.send(Message::Ops { first_seq, ops }) {
                return link.closed_reason().unwrap_or_else(|| "the connection closed".into());
            }
            continue;
        }
        let enqueued = pipe.enqueued.notified();
        tokio::select! {
            message = inbound.recv() => match message {
                Some(message) => window.take(ctx, effect, pipe, message),
                None => return link.wait_closed().await,
            },
            () = enqueued => was_idle = true,
            reason = link.wait_closed() => return reason,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Batches sent, bounded twice: by what the target has not applied yet (its memory) and by
/// what it has not made durable yet (this source's queue, for a resend).
#[derive(Default)]
struct Window {
    unapplied: Ledger,
    unsynced: Ledger,
    /// The operation the target reported it could not apply, while that fault stands.
    blocked_at: Option<u64>,
}

/// Batches sent and not yet past some point on the target.
#[derive(Default)]
struct Ledger {
    /// Last sequence number of each batch → its bytes and operations.
    batches: BTreeMap<u64, (u64, u64)>,
    bytes: u64,
    ops: u64,
}

impl Ledger {
    fn add(&mut self, last_seq: u64, bytes: u64, ops: u64) {
        self.batches.insert(last_seq, (bytes, ops));
        self.bytes += bytes;
        self.ops += ops;
    }

    /// Forgets every batch that ends at or before `seq`.
    fn through(&mut self, seq: u64) {
        let kept = self.batches.split_off(&seq.saturating_add(1));
        for (bytes, ops) in std::mem::replace(&mut self.batches, kept).into_values() {
            self.bytes -= bytes;
            self.ops -= ops;
        }
    }

    fn below(&self, max_bytes: u64, max_ops: u64) -> bool {
        self.bytes < max_bytes && self.ops < max_ops
    }
}

impl Window {
    fn has_room(&self) -> bool {
        self.unapplied.below(SEND_WINDOW_BYTES, SEND_WINDOW_OPS)
            && self.unsynced.below(UNSYNCED_WINDOW_BYTES, UNSYNCED_WINDOW_OPS)
    }

    fn sent(&mut self, first_seq: u64, ops: &[EncodedOp]) {
        let bytes: u64 = ops.iter().map(|o| o.len() as u64).sum();
        let last_seq = first_seq + ops.len() as u64 - 1;
        self.unapplied.add(last_seq, bytes, ops.len() as u64);
        self.unsynced.add(last_seq, bytes, ops.len() as u64);
    }

    fn applied(&mut self, seq: u64) {
        self.unapplied.through(seq);
    }

    /// Durable is applied too (a target may acknowledge without saying `Applied`).
    fn durable(&mut self, seq: u64) {
        self.unapplied.through(seq);
        self.unsynced.through(seq);
    }

    fn take(&mut self, ctx: &SourceContext, effect: EffectId, pipe: &Pipe, message: Inbound) {
        match message {
            Inbound::Applied(seq) => self.applied(seq),
            Inbound::Ack(seq) => {
                if let Err(error) = pipe.ack(seq) {
                    ctx.report(
                        effect,
                        Report::Fault { kind: FaultKind::Queue, failure: error.to_failure() },
                    );
                }
                self.durable(seq);
                if self.blocked_at.is_some_and(|blocked| seq >= blocked) {
                    // The operation that was blocked is durable now: whatever blocked it is
                    // gone. (Acknowledgements of what came before it say nothing.)
                    self.blocked_at = None;
                    ctx.report(effect, Report::FaultCleared { kind: FaultKind::TargetDiskFull });
                    ctx.report(effect, Report::FaultCleared { kind: FaultKind::TargetApply });
                }
            }
            Inbound::Nack(seq, failure, disk_full) => {
                tracing::warn!(seq, %failure, "the target could not apply an operation");
                let kind =
                    if disk_full { FaultKind::TargetDiskFull } else { FaultKind::TargetApply };
                ctx.report(effect, Report::Fault { kind, failure });
                self.blocked_at = Some(self.blocked_at.map_or(seq, |b| b.min(seq)));
            }
            Inbound::Pause => pipe.paused.store(true, Ordering::SeqCst),
            Inbound::Resume => pipe.paused.store(false, Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the target applied makes room for more; what it has not made durable yet stays
    /// bounded, since this source keeps it for a resend.
    #[test]
    fn applied_frees_the_targets_window_and_durable_frees_the_resend_window() {
        let mut window = Window::default();
        let mut seq = 0;
        let mut send = |window: &mut Window| {
            seq += 1;
            window.sent(seq, &[EncodedOp(vec![0u8; 1024 * 1024].into())]);
            seq
        };
        let mut first_window = 0;
        while window.has_room() {
            first_window = send(&mut window);
        }
        assert_eq!(window.unapplied.bytes, SEND_WINDOW_BYTES, "the target's window bounds");
        window.applied(first_window);
        assert!(window.has_room(), "applied, the target holds none of it");
        while window.has_room() {
            let seq = send(&mut window);
            window.applied(seq);
        }
        assert_eq!(window.unsynced.bytes, UNSYNCED_WINDOW_BYTES, "then the resend window bounds");
        window.durable(first_window);
        assert!(window.has_room());
        assert_eq!(window.unsynced.bytes, UNSYNCED_WINDOW_BYTES - SEND_WINDOW_BYTES);
        window.durable(u64::MAX - 1);
        assert_eq!((window.unapplied.ops, window.unsynced.ops), (0, 0));
    }

    #[test]
    fn jobs_to_one_target_share_bandwidth_and_compression() {
        let scratch = std::env::temp_dir().join(format!("understudy-ctx-{}", std::process::id()));
        let (completions, _) = mpsc::unbounded_channel();
        let ctx = SourceContext::new(
            "engine".into(),
            None,
            None,
            "127.0.0.1:6320".into(),
            scratch.join("queue"),
            scratch.join("logs"),
            completions,
        );
        let none = ctx.compression("target-a:6320", Compression::None);
        let medium = Compression::Zstd { level: 3 };
        let other = ctx.compression("target-b:6320", medium);
        // A second job to target-a connects with another level: both of target-a's use it.
        let _ = ctx.compression("target-a:6320", Compression::Zstd { level: 19 });
        assert_eq!(
            *none.lock().unwrap_or_else(|e| e.into_inner()),
            Compression::Zstd { level: 19 }
        );
        assert_eq!(*other.lock().unwrap_or_else(|e| e.into_inner()), medium);

        let fixed = BandwidthLimit::Fixed { bytes_per_second: 10_000 };
        let first = ctx.limiter("target-a:6320", &BandwidthLimit::Unlimited);
        let _ = ctx.limiter("target-a:6320", &fixed);
        assert_eq!(first.limit(), fixed);
        assert_eq!(
            ctx.limiter("target-b:6320", &BandwidthLimit::Unlimited).limit(),
            BandwidthLimit::Unlimited
        );
        std::fs::remove_dir_all(&scratch).ok();
    }
}
