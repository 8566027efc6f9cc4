//! One replication connection on the target: handshake, `Open`, then the applier.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use understudy_core::Failure;
use understudy_core::effect::Retry;
use understudy_core::spec::QueuePolicy;

use super::{Fence, LiveSession, ReplicaNotice, TargetService};
use crate::error::{ApplyError, WireError};
use crate::fsops::{Operation, PendingSync, RelPath, TargetRoot, block_hashes_range};
use crate::script::run_script;
use crate::wire::{
    Compression, EncodedOp, HandshakeConfig, MAX_HASHES_PER_REPLY, Message, PROTOCOL_VERSION, Role,
    SYNC_SHARE_OF_WINDOW, UNSYNCED_WINDOW_BYTES, UNSYNCED_WINDOW_OPS, accept_handshake,
    read_message, write_message,
};

/// Messages buffered between the reader and the applier (frames of up to 16 MiB each, so this
/// bounds the target's memory per session at about 1 GiB in the worst case; typically a few).
const INBOX_FRAMES: usize = 64;

pub(super) async fn serve(
    service: Arc<TargetService>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WireError> {
    let config = &service.config;
    // This machine's own jobs reach us from our own address when we listen on another one.
    let same_host =
        peer.ip().is_loopback() || stream.local_addr().is_ok_and(|l| l.ip() == peer.ip());
    if config.secret.is_none() && config.tls.is_none() && !same_host {
        service.counters.refused.fetch_add(1, Ordering::Relaxed);
        let reason = "this engine has no shared secret and no TLS certificates, so it accepts only loopback peers: start both engines of the pair with --secret-file FILE (the same file), or with TLS (understudy certs init)".to_string();
        tracing::warn!(%peer, "refused a non-loopback peer: no shared secret or TLS is configured");
        let mut stream = stream;
        let refused =
            Message::Refused { reason: reason.clone(), protocol_version: PROTOCOL_VERSION };
        let _ = write_message(&mut stream, &refused, Compression::None).await;
        return Err(WireError::Refused { reason });
    }
    match &config.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(tls));
            let accepted =
                tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream)).await;
            match accepted {
                Ok(Ok(stream)) => session(service, stream, peer, shutdown).await,
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%peer, "a peer checked that this engine answers");
                    Ok(())
                }
                Ok(Err(error)) => {
                    service.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %error, "refused a replication peer: TLS failed (no or wrong certificate)");
                    Err(WireError::AuthFailed { reason: format!("TLS: {error}") })
                }
                Err(_) => {
                    service.counters.refused.fetch_add(1, Ordering::Relaxed);
                    Err(WireError::Refused {
                        reason: format!("{peer} did not finish the TLS handshake in time"),
                    })
                }
            }
        }
        None => session(service, stream, peer, shutdown).await,
    }
}

async fn session<S>(
    service: Arc<TargetService>,
    mut stream: S,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WireError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = &service.config;
    let handshake = HandshakeConfig {
        engine_id: config.engine_id.clone(),
        role: Role::Target,
        secret: config.secret.clone(),
    };
    let peer_info = match tokio::time::timeout(
        config.handshake_timeout,
        accept_handshake(&mut stream, &handshake),
    )
    .await
    {
        Ok(Ok(info)) => info,
        // Connected and closed without a byte: a failover monitor checking that we answer.
        Ok(Err(WireError::Closed)) => {
            tracing::debug!(%peer, "a peer checked that this engine answers");
            return Ok(());
        }
        Ok(Err(error)) => {
            service.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, %error, "refused a replication peer during the handshake");
            return Err(error);
        }
        Err(_) => {
            service.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(WireError::Refused {
                reason: format!("{peer} did not finish the handshake in time"),
            });
        }
    };
    let (job, root, resume_from, session_id, spec, source_address) =
        match read_message(&mut stream).await? {
            Message::Open { job_id, root, resume_from_seq, session, spec, source_address } => {
                (job_id, root, resume_from_seq, session, spec, source_address)
            }
            other => {
                service.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return Err(WireError::Unexpected { expected: "Open", got: other.kind() });
            }
        };
    let fence = service.fence(job);
    if fence == Some(Fence::FailedOver) {
        let reason = format!(
            "the replica of job {job} was failed over on the target engine: undo the failover there (understudy job undo-failover {job}) before protecting again"
        );
        let refused =
            Message::Refused { reason: reason.clone(), protocol_version: PROTOCOL_VERSION };
        let _ = write_message(&mut stream, &refused, Compression::None).await;
        return Err(WireError::Refused { reason });
    }
    let state_path = config.state_dir.join(job.to_string());
    let opened = open_session(&root, &state_path);
    let (target, mut state) = match opened {
        Ok(opened) => opened,
        Err(reason) => {
            let refused =
                Message::Refused { reason: reason.clone(), protocol_version: PROTOCOL_VERSION };
            let _ = write_message(&mut stream, &refused, Compression::None).await;
            return Err(WireError::Refused { reason });
        }
    };
    let last_applied = state.last_applied;
    tracing::info!(%peer, engine = %peer_info.engine_id, %job, root, last_applied, resume_from, "replication session opened");
    let diverged = fence == Some(Fence::Diverged);
    write_message(
        &mut stream,
        &Message::Opened { last_applied_seq: last_applied, diverged },
        Compression::None,
    )
    .await?;
    if diverged && let Err(error) = service.write_fence(job, None) {
        tracing::warn!(%job, %error, "could not clear the replica's divergence mark");
    }
    service.counters.sessions.fetch_add(1, Ordering::Relaxed);
    let live = service.claim(job, session_id, peer);
    // Another engine's job: the daemon keeps its own record of it (monitor, failover here).
    if let (Some(spec), Some(source_address)) = (spec, source_address)
        && peer_info.engine_id != service.config.engine_id
    {
        let source_address = match source_address.parse::<SocketAddr>() {
            // The source names its listener as it binds it (often loopback or unspecified):
            // reach it at the address its connection came from.
            Ok(addr) if addr.ip().is_unspecified() || addr.ip().is_loopback() => {
                SocketAddr::new(peer.ip(), addr.port()).to_string()
            }
            _ => source_address,
        };
        service.notice(ReplicaNotice::Opened { job, spec, source_address });
    }

    let (reader, writer) = tokio::io::split(stream);
    let (inbox_tx, inbox_rx) = mpsc::channel::<Message>(INBOX_FRAMES);
    let (outbox_tx, mut outbox_rx) = mpsc::unbounded_channel::<Message>();

    let writer_task = tokio::spawn(async move {
        let mut writer = BufWriter::new(writer);
        while let Some(message) = outbox_rx.recv().await {
            if write_message(&mut writer, &message, Compression::None).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let applier_service = Arc::clone(&service);
    let applier_outbox = outbox_tx.clone();
    let applier_live = Arc::clone(&live);
    let handle = tokio::runtime::Handle::current();
    let syncer_outbox = outbox_tx.clone();
    let applier = tokio::task::spawn_blocking(move || {
        let state_file = state.file.try_clone().map_err(|e| e.to_string())?;
        let syncer = Syncer::start(state_file, last_applied, syncer_outbox)
            .map_err(|e| format!("cannot start the target's sync thread: {e}"))?;
        let mut applier = Applier {
            service: applier_service,
            job,
            target,
            state: &mut state,
            outbox: applier_outbox,
            live: applier_live,
            runtime: handle,
            dirty: false,
            unsynced: Unsynced::default(),
            syncer,
            last_sync: Instant::now(),
        };
        applier.run(inbox_rx)
    });

    // Buffered: a frame's length prefix and payload come in one read instead of several.
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
    let read_result = loop {
        tokio::select! {
            message = read_message(&mut reader) => match message {
                Ok(Message::Compressed { .. }) => unreachable!("the decoder removes compression"),
                // Answered here, not behind the operations: a target waiting on a blocked
                // file (disk full) is alive, and the source must not take it for gone.
                Ok(Message::Heartbeat { at_ms }) => {
                    let _ = outbox_tx.send(Message::Heartbeat { at_ms });
                }
                Ok(message) => {
                    if inbox_tx.send(message).await.is_err() {
                        break Ok(()); // the applier ended the session
                    }
                }
                Err(WireError::Closed) => break Ok(()),
                Err(error) => {
                    if matches!(error, WireError::FrameTooLarge { .. } | WireError::Malformed { .. } | WireError::Compression { .. }) {
                        service.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    break Err(error);
                }
            },
            _ = shutdown.changed() => break Ok(()),
        }
        if live.stop.load(Ordering::SeqCst) {
            break Ok(());
        }
    };
    drop(inbox_tx);
    drop(outbox_tx);
    let applied = applier.await.unwrap_or_else(|e| Err(format!("the applier panicked: {e}")));
    let _ = writer_task.await;
    service.release(job, &live);
    if let Err(reason) = applied {
        service.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %job, reason, "replication session ended on an error");
    }
    read_result
}

/// The target's durable record of a job: the last sequence number made durable.
struct SessionState {
    file: File,
    /// Applied (durable once the syncer says so).
    last_applied: u64,
}

/// Makes what the applier applied durable and acknowledges it, on a thread of its own: the
/// applier goes on applying while the disk catches up (a group commit), so a mirror costs
/// the longer of applying and writing back, not their sum. One sync at a time is in flight.
struct Syncer {
    requests: Option<std::sync::mpsc::Sender<(u64, PendingSync)>>,
    synced: Arc<(Mutex<Synced>, Condvar)>,
    /// Told each time a sync ends, for an applier waiting on input and the sync at once.
    finished: Arc<tokio::sync::Notify>,
    worker: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Synced {
    /// The last sequence number made durable and acknowledged.
    durable: u64,
    /// A sync is in flight.
    busy: bool,
    /// A sync failed: nothing after `durable` may be acknowledged; the session ends.
    failed: Option<String>,
}

impl Syncer {
    /// Starts the worker; `state` records the sequence number made durable, `outbox` takes
    /// the acknowledgements.
    fn start(
        state: File,
        durable: u64,
        outbox: mpsc::UnboundedSender<Message>,
    ) -> std::io::Result<Syncer> {
        let (requests, incoming) = std::sync::mpsc::channel::<(u64, PendingSync)>();
        let synced =
            Arc::new((Mutex::new(Synced { durable, ..Synced::default() }), Condvar::new()));
        let told = Arc::clone(&synced);
        let finished = Arc::new(tokio::sync::Notify::new());
        let tell = Arc::clone(&finished);
        let worker = std::thread::Builder::new().name("target-sync".into()).spawn(move || {
            for (seq, pending) in incoming {
                let record = |seq: u64| {
                    state.write_all_at(&seq.to_be_bytes(), 0)?;
                    state.sync_data()
                };
                let result = pending
                    .finish()
                    .map_err(|e| format!("syncing the target failed: {e}"))
                    .and_then(|()| {
                        record(seq).map_err(|e| format!("recording progress failed: {e}"))
                    });
                let (lock, changed) = &*told;
                let mut synced = lock.lock().unwrap_or_else(PoisonError::into_inner);
                synced.busy = false;
                match result {
                    Ok(()) if seq > synced.durable => {
                        synced.durable = seq;
                        let _ = outbox.send(Message::Ack { seq });
                    }
                    Ok(()) => {}
                    Err(error) => synced.failed = Some(error),
                }
                changed.notify_all();
                drop(synced);
                tell.notify_one();
            }
        })?;
        Ok(Syncer { requests: Some(requests), synced, finished, worker: Some(worker) })
    }

    fn lock(&self) -> MutexGuard<'_, Synced> {
        self.synced.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the sync in flight, if any; its failure, if it failed.
    fn wait(&self) -> Result<(), String> {
        let mut synced = self.lock();
        while synced.busy {
            synced = self.synced.1.wait(synced).unwrap_or_else(PoisonError::into_inner);
        }
        synced.failed.clone().map_or(Ok(()), Err)
    }

    /// Whether a sync is in flight; a failure of the last one.
    fn busy(&self) -> Result<bool, String> {
        let synced = self.lock();
        synced.failed.clone().map_or(Ok(synced.busy), Err)
    }

    /// Hands `pending` (everything applied through `seq`) to the worker.
    fn request(&self, seq: u64, pending: PendingSync) -> Result<(), String> {
        self.lock().busy = true;
        let sent = self.requests.as_ref().is_some_and(|r| r.send((seq, pending)).is_ok());
        if sent {
            Ok(())
        } else {
            self.lock().busy = false;
            Err("the target's sync thread is gone".into())
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn open_session(root: &str, state_path: &Path) -> Result<(TargetRoot, SessionState), String> {
    let root_path = PathBuf::from(root);
    if !root_path.is_absolute() {
        return Err(format!("the target root {root:?} is not an absolute path"));
    }
    std::fs::create_dir_all(&root_path)
        .map_err(|e| format!("cannot create the target root {root}: {e}"))?;
    let target = TargetRoot::open(&root_path).map_err(|e| e.to_string())?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(state_path)
        .map_err(|e| format!("cannot open the target's state {}: {e}", state_path.display()))?;
    let mut bytes = [0u8; 8];
    let last_applied = match file.read_exact_at(&mut bytes, 0) {
        Ok(()) => u64::from_be_bytes(bytes),
        Err(_) => {
            file.write_all(&0u64.to_be_bytes()).map_err(|e| e.to_string())?;
            0
        }
    };
    Ok((target, SessionState { file, last_applied }))
}

struct Applier<'a> {
    service: Arc<TargetService>,
    job: understudy_core::JobId,
    target: TargetRoot,
    state: &'a mut SessionState,
    outbox: mpsc::UnboundedSender<Message>,
    live: Arc<LiveSession>,
    runtime: tokio::runtime::Handle,
    /// Operations applied since the last sync began.
    dirty: bool,
    /// How much, to start the next sync before the sender's window runs out.
    unsynced: Unsynced,
    syncer: Syncer,
    last_sync: Instant,
}

/// What was applied since the last sync began.
#[derive(Default)]
struct Unsynced {
    bytes: u64,
    ops: u64,
}

impl Unsynced {
    /// Whether it is a share of the sender's unsynced window worth syncing now: the sender
    /// has sent the rest of that window meanwhile, and the acknowledgement arrives while
    /// that is applied. Waiting for the input to run dry (or the sync interval) left the
    /// sender waiting on every window (ADR 17).
    fn worth_a_sync(&self) -> bool {
        self.bytes >= UNSYNCED_WINDOW_BYTES / SYNC_SHARE_OF_WINDOW
            || self.ops >= UNSYNCED_WINDOW_OPS / SYNC_SHARE_OF_WINDOW
    }
}

impl Applier<'_> {
    fn send(&self, message: Message) {
        let _ = self.outbox.send(message);
    }

    fn run(&mut self, mut inbox: mpsc::Receiver<Message>) -> Result<(), String> {
        loop {
            let message = match inbox.try_recv() {
                Ok(message) => message,
                Err(mpsc::error::TryRecvError::Empty) => match self.wait_for_input(&mut inbox)? {
                    Some(message) => message,
                    None => break,
                },
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            if self.dirty
                && (self.unsynced.worth_a_sync()
                    || self.last_sync.elapsed() >= self.service.config.sync_interval)
            {
                self.sync_in_background()?;
            }
            if self.live.stop.load(Ordering::SeqCst) {
                break;
            }
            match message {
                Message::Ops { first_seq, ops } => {
                    self.apply_batch(first_seq, &ops)?;
                    // The frame is released: the sender may send more (durable comes later).
                    drop(ops);
                    self.send(Message::Applied { seq: self.state.last_applied });
                }
                Message::Skip { through_seq } => self.skip(through_seq),
                Message::QueryMeta { query_id, paths } => {
                    let entries: Result<Vec<_>, _> =
                        paths.iter().map(|p| self.target.stat(p)).collect();
                    self.send(match entries {
                        Ok(entries) => Message::MetaReply { query_id, entries },
                        Err(e) => Message::QueryFailed { query_id, error: e.to_failure() },
                    });
                }
                Message::QueryListDir { query_id, path } => {
                    self.send(match self.target.list_dir(&path) {
                        Ok(entries) => Message::ListDir { query_id, entries },
                        Err(ApplyError::Missing { .. }) => {
                            Message::ListDir { query_id, entries: Vec::new() }
                        }
                        Err(e) => Message::QueryFailed { query_id, error: e.to_failure() },
                    })
                }
                Message::QueryBlockHashes {
                    query_id,
                    path,
                    block_size,
                    first_block,
                    max_blocks,
                } => {
                    self.send(self.block_hashes(
                        query_id,
                        &path,
                        block_size,
                        first_block,
                        max_blocks,
                    ));
                }
                Message::RunScript { request_id, stage, script } => {
                    self.sync_and_ack()?;
                    tracing::info!(?stage, script = script.path, "running a script for the source");
                    let result = self.runtime.block_on(run_script(&script));
                    self.send(Message::ScriptFinished { request_id, result });
                }
                Message::Settle { policy } => {
                    let operations = match policy {
                        // Everything received is applied in order already: make it durable.
                        QueuePolicy::Apply => 0,
                        QueuePolicy::Discard => self.discard(&mut inbox)?,
                    };
                    self.sync_and_ack()?;
                    self.send(Message::Settled { operations });
                }
                Message::Release => {
                    self.sync_and_ack()?;
                    self.service.notice(ReplicaNotice::Released { job: self.job });
                    self.send(Message::Released);
                }
                Message::Heartbeat { at_ms } => self.send(Message::Heartbeat { at_ms }),
                Message::Close { .. } => break,
                other => return Err(format!("unexpected {} from the source", other.kind())),
            }
        }
        self.sync_and_ack()
    }

    /// Input ran dry: makes what was applied durable while waiting for more (`None`: the
    /// reader is gone). A sync in flight is not waited for, since the next message may come
    /// first (during a mirror the input runs dry for moments, and waiting out a write-back
    /// each time stalled the applier: ADR 15); when it ends with more applied since it began,
    /// the next starts at once. `idle` shows only while everything applied is durable.
    fn wait_for_input(
        &mut self,
        inbox: &mut mpsc::Receiver<Message>,
    ) -> Result<Option<Message>, String> {
        loop {
            if self.dirty {
                self.sync_in_background()?;
            }
            if !self.dirty && !self.syncer.busy()? {
                self.live.idle.store(true, Ordering::SeqCst);
                let next = inbox.blocking_recv();
                self.live.idle.store(false, Ordering::SeqCst);
                return Ok(next);
            }
            // A sync is in flight: take the next message, or look again when the sync ends.
            let finished = Arc::clone(&self.syncer.finished);
            let next = self.runtime.block_on(async {
                tokio::select! {
                    message = inbox.recv() => Some(message),
                    () = finished.notified() => None,
                }
            });
            if let Some(message) = next {
                return Ok(message);
            }
        }
    }

    /// Makes everything applied so far durable and acknowledged before returning.
    fn sync_and_ack(&mut self) -> Result<(), String> {
        self.syncer.wait()?;
        if self.dirty {
            self.begin_sync()?;
            self.syncer.wait()?;
        }
        Ok(())
    }

    /// Starts making everything applied so far durable, unless a sync is still in flight
    /// (the next one then covers this too), and goes on at once.
    fn sync_in_background(&mut self) -> Result<(), String> {
        if !self.syncer.busy()? {
            self.begin_sync()?;
        }
        Ok(())
    }

    fn begin_sync(&mut self) -> Result<(), String> {
        let pending =
            self.target.begin_sync().map_err(|e| format!("syncing the target failed: {e}"))?;
        self.syncer.request(self.state.last_applied, pending)?;
        self.dirty = false;
        self.unsynced = Unsynced::default();
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The source dropped operations up to `through_seq`: count them as done (made durable
    /// and acknowledged with what follows).
    fn skip(&mut self, through_seq: u64) {
        if through_seq > self.state.last_applied {
            tracing::info!(job = %self.job, from = self.state.last_applied + 1, through_seq, "the source dropped operations; a remirror repairs them");
            self.state.last_applied = through_seq;
            self.dirty = true;
        }
    }

    fn apply_batch(&mut self, first_seq: u64, ops: &[EncodedOp]) -> Result<(), String> {
        for (i, encoded) in ops.iter().enumerate() {
            let seq = first_seq + i as u64;
            if seq <= self.state.last_applied {
                continue; // a resend of something already durable
            }
            if seq != self.state.last_applied + 1 {
                return Err(format!(
                    "operation {seq} arrived after {}: a gap in the stream",
                    self.state.last_applied
                ));
            }
            let op = encoded.decode().map_err(|e| e.to_string())?;
            self.apply_one(seq, &op)?;
            self.state.last_applied = seq;
            self.dirty = true;
            self.unsynced.bytes += encoded.len() as u64;
            self.unsynced.ops += 1;
        }
        Ok(())
    }

    /// Applies one operation, retrying a blocked one until it goes through or the session ends.
    fn apply_one(&mut self, seq: u64, op: &Operation) -> Result<(), String> {
        let mut told = false;
        loop {
            match self.target.apply(op) {
                Ok(_) => {
                    self.service.counters.operations_applied.fetch_add(1, Ordering::Relaxed);
                    if let Operation::Write { data, .. } = op {
                        self.service
                            .counters
                            .bytes_written
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                Err(error) => match error.retry() {
                    Retry::Persistent if !matches!(error, ApplyError::Conflict { .. }) => {
                        if !told {
                            tracing::warn!(seq, %error, "operation blocked on the target; retrying");
                            let disk_full = matches!(error, ApplyError::DiskFull { .. });
                            self.send(Message::Nack { seq, error: error.to_failure(), disk_full });
                            told = true;
                        }
                        // Make what came before durable while we wait, and say so.
                        self.sync_and_ack()?;
                        std::thread::sleep(self.service.config.retry_delay);
                        if self.live.stop.load(Ordering::SeqCst) || self.outbox.is_closed() {
                            return Err("the session ended while an operation was blocked".into());
                        }
                    }
                    _ => {
                        // Refused (escapes the root, invalid) or out of step with the source:
                        // skip it, say so, and let the source's next mirror repair the file.
                        if error.retry() == Retry::Permanent {
                            self.service
                                .counters
                                .operations_refused
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::warn!(seq, op = op.name(), %error, "operation not applied");
                        let failure = Failure { retry: error.retry(), message: error.to_string() };
                        self.send(Message::Nack { seq, error: failure, disk_full: false });
                        return Ok(());
                    }
                },
            }
        }
    }

    /// Drops every operation received but not applied; returns how many.
    fn discard(&mut self, inbox: &mut mpsc::Receiver<Message>) -> Result<u64, String> {
        let mut discarded = 0u64;
        while let Ok(message) = inbox.try_recv() {
            match message {
                Message::Ops { first_seq, ops } => {
                    discarded += ops.len() as u64;
                    let last = first_seq + ops.len() as u64 - 1;
                    // The source will not resend them: the target is past them.
                    self.state.last_applied = self.state.last_applied.max(last);
                    self.dirty = true;
                }
                Message::Skip { through_seq } => self.skip(through_seq),
                Message::Heartbeat { at_ms } => self.send(Message::Heartbeat { at_ms }),
                other => return Err(format!("unexpected {} while discarding", other.kind())),
            }
        }
        Ok(discarded)
    }

    fn block_hashes(
        &self,
        query_id: u64,
        path: &RelPath,
        block_size: u32,
        first_block: u64,
        max_blocks: u32,
    ) -> Message {
        let max_blocks = if max_blocks == 0 {
            MAX_HASHES_PER_REPLY
        } else {
            max_blocks.min(MAX_HASHES_PER_REPLY)
        };
        let hashes = self.target.open_file(path).and_then(|file| {
            block_hashes_range(&file, block_size, first_block, u64::from(max_blocks))
                .map_err(|e| ApplyError::from_io("hash", path, e))
        });
        match hashes {
            Ok(hashes) => Message::BlockHashes { query_id, hashes },
            Err(e) => Message::QueryFailed { query_id, error: e.to_failure() },
        }
    }
}
