//! `understudy serve`: the engine service of a server.
//!
//! It owns the data directory: the event log (through the engine thread, its only writer), the
//! API token, the source queues, the target's per-job state and the logs. On start it replays
//! the log, re-issues the work every job had in flight, and tells each job the engine
//! restarted; then it accepts replication connections (it is the target engine of jobs that
//! point at it), serves the API, and runs every job's adapters. SIGTERM or Ctrl-C stops it
//! cleanly: queues flushed to disk, target sessions synced, the log flushed.

pub mod api;
pub mod engine;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use understudy_adapters::source::{SourceContext, SourceJob};
use understudy_adapters::target::{ReplicaJob, ReplicaNotice, TargetConfig, TargetService};
use understudy_adapters::wire::Secret;
use understudy_core::command::{Command, CommandEnvelope};
use understudy_core::effect::{Effect, EffectEnvelope};
use understudy_core::event::EventMetadata;
use understudy_core::spec::{JobRole, TargetEndpoint};
use understudy_core::{Engine, JobId};
use understudy_states::Job;

use crate::{UserError, datadir};
use engine::EngineHandle;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The replication listener.
    pub listen: SocketAddr,
    /// The API listener.
    pub api: SocketAddr,
    /// The shared secret file, if any.
    pub secret_file: Option<PathBuf>,
    /// TLS with mutual certificates, if configured.
    pub tls: Option<understudy_adapters::tls::TlsFiles>,
}

/// A running daemon (the in-process one of `understudy demo`, or `serve`'s).
pub struct Daemon {
    /// The engine.
    pub engine: EngineHandle,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where replication connections are accepted.
    pub listen_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    fatal: mpsc::UnboundedReceiver<String>,
    router: tokio::task::JoinHandle<()>,
    engine_thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts every part of the daemon; returns once it serves.
    ///
    /// # Errors
    ///
    /// The data directory cannot be used, a port is taken, the secret file is unreadable.
    pub async fn start(options: &ServeOptions) -> Result<Daemon> {
        let store = Arc::new(datadir::open_or_create(&options.data_dir)?);
        let token = datadir::token(&options.data_dir)?;
        let engine_id = datadir::engine_id(&options.data_dir)?;
        let secret = match &options.secret_file {
            Some(path) => Some(read_secret(path)?),
            None => None,
        };
        let tls = match &options.tls {
            Some(files) => Some(
                understudy_adapters::tls::Tls::load(files).map_err(|e| UserError(e.to_string()))?,
            ),
            None => None,
        };

        let listener = TcpListener::bind(options.listen).await.map_err(|e| {
            UserError(format!("cannot listen for replication on {}: {e} (is another daemon running? use --listen)", options.listen))
        })?;
        let listen_addr = listener.local_addr()?;
        let api_listener = TcpListener::bind(options.api).await.map_err(|e| {
            UserError(format!(
                "cannot serve the API on {}: {e} (is another daemon running? use --api)",
                options.api
            ))
        })?;
        let api_addr = api_listener.local_addr()?;

        let mut engine: Engine<Job> = Engine::new(engine::CHECKPOINT_EVERY);
        let resume = tokio::task::block_in_place(|| engine.recover(&*store))
            .context("replaying the event log")?;
        for id in engine.jobs().map(|(id, _)| id).collect::<Vec<_>>() {
            if let Some(why) = engine.quarantine(id) {
                tracing::error!(job = %id, why, "job quarantined: its history cannot be replayed");
            }
        }

        let (effects_tx, effects_rx) = mpsc::unbounded_channel();
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        let (handle, engine_thread) =
            engine::start(engine, Arc::clone(&store), effects_tx.clone(), fatal_tx);

        let (completions_tx, mut completions_rx) = mpsc::unbounded_channel();
        let forward = handle.clone();
        tokio::spawn(async move {
            while let Some(completion) = completions_rx.recv().await {
                forward.complete(completion);
            }
        });

        // Local jobs connect to our own listener: on loopback when it listens everywhere.
        let local_target = if listen_addr.ip().is_unspecified() {
            let loopback: std::net::IpAddr = if listen_addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(loopback, listen_addr.port()).to_string()
        } else {
            listen_addr.to_string()
        };
        let context = SourceContext::new(
            engine_id.clone(),
            secret.clone(),
            tls.as_ref().map(|t| Arc::clone(&t.client)),
            local_target,
            options.data_dir.join("queue"),
            options.data_dir.join("logs"),
            completions_tx,
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut target_config =
            TargetConfig::new(options.data_dir.join("target"), engine_id, secret);
        target_config.tls = tls.map(|t| t.server);
        let target =
            TargetService::new(target_config).context("creating the target's state folder")?;
        let (notices_tx, notices_rx) = mpsc::unbounded_channel();
        target.set_notices(notices_tx);
        tokio::spawn(record_replicas(handle.clone(), notices_rx));
        let router = tokio::spawn(route_effects(
            handle.clone(),
            context,
            Arc::clone(&target),
            effects_rx,
            shutdown_rx.clone(),
        ));
        tokio::spawn(Arc::clone(&target).serve(listener, shutdown_rx.clone()));
        tokio::spawn(api::serve(
            api_listener,
            handle.clone(),
            token.clone(),
            Arc::clone(&target),
            shutdown_rx,
        ));

        // Pick up what every job had in flight: first the work that needs no new event, then
        // the jobs themselves, which record the restart (ADR 8).
        for effect in resume {
            let _ = effects_tx.send(effect);
        }
        let recover: Vec<CommandEnvelope> = handle
            .jobs()
            .into_iter()
            .filter(|j| j.quarantine.is_none())
            .map(|j| CommandEnvelope {
                job: j.id,
                command: Command::Recover,
                metadata: EventMetadata::engine(),
            })
            .collect();
        if !recover.is_empty() {
            handle.execute(recover).await?;
        }
        tracing::info!(%listen_addr, %api_addr, data_dir = %options.data_dir.display(), "understudy serving");
        Ok(Daemon {
            engine: handle,
            api_addr,
            listen_addr,
            shutdown,
            fatal: fatal_rx,
            router,
            engine_thread: Some(engine_thread),
        })
    }

    /// Runs until SIGTERM, Ctrl-C or a fatal error, then stops cleanly.
    ///
    /// # Errors
    ///
    /// The event log failed (the daemon stopped to keep its promise of durability).
    pub async fn run_until_signal(mut self) -> Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let fatal = tokio::select! {
            _ = term.recv() => None,
            _ = tokio::signal::ctrl_c() => None,
            reason = self.fatal.recv() => reason,
        };
        tracing::info!("stopping");
        self.stop().await;
        match fatal {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        }
    }

    /// Stops cleanly: adapters flush their queues, target sessions sync, the log is flushed.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.router).await;
        self.engine.stop();
        if let Some(thread) = self.engine_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// A job's adapters on this engine: it is the job's source, or the record of a replica.
enum JobAdapters {
    Source(SourceJob),
    Replica(ReplicaJob),
}

impl JobAdapters {
    fn handle(&mut self, effect: &EffectEnvelope) {
        match self {
            JobAdapters::Source(job) => job.handle(effect),
            JobAdapters::Replica(job) => job.handle(effect),
        }
    }

    fn shutdown(&mut self) {
        match self {
            JobAdapters::Source(job) => job.shutdown(),
            JobAdapters::Replica(job) => job.shutdown(),
        }
    }
}

/// Routes each effect to its job's adapters, creating them on a job's first effect.
async fn route_effects(
    engine: EngineHandle,
    context: Arc<SourceContext>,
    target: Arc<TargetService>,
    mut effects: mpsc::UnboundedReceiver<EffectEnvelope>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut jobs: BTreeMap<JobId, JobAdapters> = BTreeMap::new();
    loop {
        let effect = tokio::select! {
            effect = effects.recv() => effect,
            _ = shutdown.changed() => None,
        };
        let Some(effect) = effect else { break };
        let id = effect.id.job;
        let job = match jobs.entry(id) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let Some(spec) = engine.job(id).and_then(|v| v.spec) else {
                    tracing::warn!(job = %id, effect = effect.effect.name(), "effect for a job without a spec");
                    continue;
                };
                entry.insert(if spec.is_replica() {
                    let completions = context.completions.clone();
                    JobAdapters::Replica(ReplicaJob::new(
                        id,
                        spec,
                        Arc::clone(&target),
                        completions,
                    ))
                } else {
                    JobAdapters::Source(SourceJob::new(id, spec, Arc::clone(&context)))
                })
            }
        };
        tracing::debug!(job = %id, effect = effect.effect.name(), "effect");
        job.handle(&effect);
        if matches!(effect.effect, Effect::ReleaseJob) {
            jobs.remove(&id);
        }
    }
    for job in jobs.values_mut() {
        job.shutdown();
    }
}

/// Keeps this engine's record of the jobs other engines replicate here (ADR 9): created and
/// started when a job's first session opens, deleted when its source hands the target over.
async fn record_replicas(
    engine: EngineHandle,
    mut notices: mpsc::UnboundedReceiver<ReplicaNotice>,
) {
    while let Some(notice) = notices.recv().await {
        let (job, command) = match notice {
            ReplicaNotice::Opened { job, spec, source_address } => {
                if engine.job(job).is_some() {
                    continue;
                }
                let mut spec = *spec;
                spec.role = JobRole::Replica { source_address };
                spec.target.endpoint = TargetEndpoint::Local;
                tracing::info!(%job, name = spec.name, "recording a job that replicates here");
                let create = CommandEnvelope {
                    job,
                    command: Command::Create { spec: Box::new(spec) },
                    metadata: EventMetadata::engine(),
                };
                match engine.execute(vec![create]).await {
                    Ok(outcomes) if outcomes.iter().all(Result::is_ok) => {}
                    Ok(outcomes) => {
                        for error in outcomes.into_iter().filter_map(Result::err) {
                            tracing::warn!(%job, %error, "could not record the replica job");
                        }
                        continue;
                    }
                    Err(_) => break,
                }
                (job, Command::Start)
            }
            ReplicaNotice::Released { job } => {
                if !engine.job(job).and_then(|v| v.spec).is_some_and(|s| s.is_replica()) {
                    continue;
                }
                tracing::info!(%job, "the source handed the target over: the replica's record ends");
                (job, Command::Delete)
            }
        };
        let envelope = CommandEnvelope { job, command, metadata: EventMetadata::engine() };
        match engine.execute(vec![envelope]).await {
            Ok(outcomes) => {
                for error in outcomes.into_iter().filter_map(Result::err) {
                    tracing::warn!(%job, %error, "the replica job did not take the command");
                }
            }
            Err(_) => break,
        }
    }
}

fn read_secret(path: &Path) -> Result<Secret> {
    let bytes = std::fs::read(path)
        .map_err(|e| UserError(format!("cannot read the secret file {}: {e}", path.display())))?;
    let trimmed: Vec<u8> = bytes.trim_ascii().to_vec();
    if trimmed.len() < 16 {
        return Err(UserError(format!(
            "the secret in {} is shorter than 16 bytes: put a long random string in it (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
            path.display()
        ))
        .into());
    }
    Ok(Secret::new(trimmed))
}
