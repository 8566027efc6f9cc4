//! The target engine: accepts replication connections and applies each job's operations into
//! its target root, strictly in order, acknowledging only what is durable.
//!
//! One connection carries one job's session. After the handshake the source sends `Open`; the
//! target answers with the last sequence number it made durable for that job (kept in a small
//! file per job in its state directory), so a reconnecting source resends exactly what is
//! missing and a cleanly restarted target needs no remirror.
//!
//! Reading and applying are split: a reader task decodes frames into a channel; an applier on a
//! blocking thread applies operations, answers queries in order with them (a query sees every
//! operation sent before it), runs scripts, and syncs — when its input runs dry, each time it
//! has applied a quarter of the sender's window, or at least every
//! [`TargetConfig::sync_interval`] while busy — before acknowledging.
//!
//! Faults: a blocked file or a full disk is retried every [`TargetConfig::retry_delay`] (the
//! seeds' 3 s) and nothing after it is applied meanwhile; the source is told once with a
//! `Nack` and learns of the recovery from the acknowledgements that follow. An operation that
//! would escape the root is refused, logged, counted and skipped. A malformed frame closes
//! only its connection.

pub mod null;
mod replica;
mod session;

pub use replica::ReplicaJob;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use understudy_core::spec::{JobSpec, QueuePolicy};
use understudy_core::{ConnectionId, JobId};

use crate::wire::Secret;

/// How a target engine behaves.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// Where the last durable sequence number of each job is kept.
    pub state_dir: PathBuf,
    /// This engine's id (in the handshake and the peer's logs).
    pub engine_id: String,
    /// The shared secret; without one only loopback peers are accepted.
    pub secret: Option<Secret>,
    /// How long a blocked operation waits before it is tried again.
    pub retry_delay: Duration,
    /// The longest a busy session goes without syncing and acknowledging.
    pub sync_interval: Duration,
    /// How long a peer has to finish the handshake.
    pub handshake_timeout: Duration,
    /// TLS with mutual certificates, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl TargetConfig {
    /// The seeds' defaults: retry every 3 s; sync at least every 100 ms while busy.
    pub fn new(state_dir: PathBuf, engine_id: String, secret: Option<Secret>) -> Self {
        TargetConfig {
            state_dir,
            engine_id,
            secret,
            retry_delay: Duration::from_secs(3),
            sync_interval: Duration::from_millis(100),
            handshake_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// What the target has seen, for `job show`, the API and the logs.
#[derive(Debug, Default)]
pub struct TargetCounters {
    /// Connections accepted past the handshake.
    pub sessions: AtomicU64,
    /// Connections refused: wrong or missing authentication, non-loopback without a secret.
    pub refused: AtomicU64,
    /// Connections closed for a protocol error (malformed or oversized frame, out of order).
    pub protocol_errors: AtomicU64,
    /// Operations applied.
    pub operations_applied: AtomicU64,
    /// Operations refused because they would leave the target root (or can never apply).
    pub operations_refused: AtomicU64,
    /// File bytes written.
    pub bytes_written: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // the fields mirror `TargetCounters`
pub struct TargetCountersSnapshot {
    pub sessions: u64,
    pub refused: u64,
    pub protocol_errors: u64,
    pub operations_applied: u64,
    pub operations_refused: u64,
    pub bytes_written: u64,
}

impl TargetCounters {
    /// A copy of the counters.
    pub fn snapshot(&self) -> TargetCountersSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TargetCountersSnapshot {
            sessions: get(&self.sessions),
            refused: get(&self.refused),
            protocol_errors: get(&self.protocol_errors),
            operations_applied: get(&self.operations_applied),
            operations_refused: get(&self.operations_refused),
            bytes_written: get(&self.bytes_written),
        }
    }
}

/// The target engine of a daemon.
#[derive(Debug)]
pub struct TargetService {
    config: TargetConfig,
    counters: TargetCounters,
    /// The live session of each job: a newer `Open` for the job ends the older session.
    sessions: Mutex<BTreeMap<JobId, Arc<LiveSession>>>,
    /// Where the daemon hears about jobs replicating here (to keep its own record of them).
    notices: Mutex<Option<mpsc::UnboundedSender<ReplicaNotice>>>,
}

/// A job's session while it runs.
#[derive(Debug)]
pub(crate) struct LiveSession {
    pub(crate) stop: AtomicBool,
    /// The applier is waiting for input: everything received is applied and durable.
    pub(crate) idle: AtomicBool,
    pub(crate) connection: ConnectionId,
    pub(crate) peer: SocketAddr,
}

/// What the target engine tells its daemon about jobs replicating to it.
#[derive(Clone, Debug)]
pub enum ReplicaNotice {
    /// Another engine opened a session for a job.
    Opened {
        /// The job.
        job: JobId,
        /// Its spec, as the source sent it.
        spec: Box<JobSpec>,
        /// The source engine's replication address.
        source_address: String,
    },
    /// The source engine cut over or failed over the job: this side is live now.
    Released {
        /// The job.
        job: JobId,
    },
}

/// A replica that must not simply take replication again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fence {
    /// Failed over on this side: sessions are refused until the failover is undone.
    FailedOver,
    /// The failover was undone: the next session is told the replica diverged.
    Diverged,
}

impl TargetService {
    /// A target engine with this configuration.
    ///
    /// # Errors
    ///
    /// The state directory cannot be created.
    pub fn new(config: TargetConfig) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.state_dir)?;
        Ok(Arc::new(TargetService {
            config,
            counters: TargetCounters::default(),
            sessions: Mutex::new(BTreeMap::new()),
            notices: Mutex::new(None),
        }))
    }

    /// Where to tell the daemon about jobs replicating here.
    pub fn set_notices(&self, notices: mpsc::UnboundedSender<ReplicaNotice>) {
        *self.notices.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(notices);
    }

    fn notice(&self, notice: ReplicaNotice) {
        if let Some(notices) =
            self.notices.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref()
        {
            let _ = notices.send(notice);
        }
    }

    /// This engine's id.
    pub fn engine_id(&self) -> &str {
        &self.config.engine_id
    }

    /// The job's live session: its connection number and the source's address.
    pub fn session(&self, job: JobId) -> Option<(ConnectionId, SocketAddr)> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&job)
            .map(|s| (s.connection, s.peer))
    }

    /// Whether the job's session has applied and synced everything it received (false
    /// without a session).
    pub fn session_idle(&self, job: JobId) -> bool {
        self.live(job).is_some_and(|live| live.idle.load(Ordering::SeqCst))
    }

    /// Whether sessions are encrypted (TLS).
    pub fn encrypted(&self) -> bool {
        self.config.tls.is_some()
    }

    fn live(&self, job: JobId) -> Option<Arc<LiveSession>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&job).cloned()
    }

    fn fence_path(&self, job: JobId) -> PathBuf {
        self.config.state_dir.join(format!("{job}.fence"))
    }

    fn fence(&self, job: JobId) -> Option<Fence> {
        match std::fs::read_to_string(self.fence_path(job)).ok()?.trim() {
            "failed-over" => Some(Fence::FailedOver),
            "diverged" => Some(Fence::Diverged),
            _ => None,
        }
    }

    fn write_fence(&self, job: JobId, fence: Option<Fence>) -> std::io::Result<()> {
        let path = self.fence_path(job);
        match fence {
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(fence) => {
                let text = if fence == Fence::FailedOver { "failed-over" } else { "diverged" };
                let tmp = path.with_extension("fence.tmp");
                std::fs::write(&tmp, text)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)
            }
        }
    }

    /// Failover on this side: ends the job's session and refuses new ones, durably, until the
    /// failover is undone — a source coming back must not overwrite the live replica.
    ///
    /// # Errors
    ///
    /// The fence cannot be recorded.
    pub fn fence_failed_over(&self, job: JobId) -> std::io::Result<()> {
        self.write_fence(job, Some(Fence::FailedOver))?;
        if let Some(live) = self.live(job) {
            live.stop.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Undo of a failover: sessions are accepted again, and the next one is told the replica
    /// diverged so the source remirrors.
    ///
    /// # Errors
    ///
    /// The fence cannot be recorded.
    pub fn unfence(&self, job: JobId) -> std::io::Result<()> {
        self.write_fence(job, Some(Fence::Diverged))
    }

    /// Settles what the job's session received but has not applied: apply waits until the
    /// applier is idle (everything applied and durable); discard ends the session, dropping
    /// what it held. Returns the operations applied meanwhile.
    pub async fn settle(&self, job: JobId, policy: QueuePolicy) -> u64 {
        let before = self.counters.operations_applied.load(Ordering::Relaxed);
        if let Some(live) = self.live(job) {
            match policy {
                QueuePolicy::Apply => {
                    let started = tokio::time::Instant::now();
                    while !live.idle.load(Ordering::SeqCst)
                        && started.elapsed() < Duration::from_secs(600)
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                QueuePolicy::Discard => live.stop.store(true, Ordering::SeqCst),
            }
        }
        self.counters.operations_applied.load(Ordering::Relaxed) - before
    }

    /// The counters.
    pub fn counters(&self) -> TargetCountersSnapshot {
        self.counters.snapshot()
    }

    /// Accepts connections until `shutdown` turns true. Each connection is served on its own
    /// task, so a slow, half-open or hostile peer holds up nobody else.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let service = Arc::clone(&self);
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move { service.connection(stream, peer, shutdown).await });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accepting a replication connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        if let Err(error) = session::serve(Arc::clone(&self), stream, peer, shutdown).await {
            tracing::warn!(%peer, %error, "replication connection closed");
        }
    }

    /// Registers a new session for `job`, ending the previous one.
    fn claim(&self, job: JobId, connection: ConnectionId, peer: SocketAddr) -> Arc<LiveSession> {
        let live = Arc::new(LiveSession {
            stop: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            connection,
            peer,
        });
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = sessions.insert(job, Arc::clone(&live)) {
            old.stop.store(true, Ordering::SeqCst);
        }
        live
    }

    fn release(&self, job: JobId, live: &Arc<LiveSession>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions.get(&job).is_some_and(|s| Arc::ptr_eq(s, live)) {
            sessions.remove(&job);
        }
    }
}
