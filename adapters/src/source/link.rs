//! The source side of one replication connection: connect, authenticate, open the job's
//! session, then carry operations out and acknowledgements and answers back.
//!
//! A writer task owns the socket's write half (compressing `Ops` frames, pacing them through
//! the bandwidth limiter, sending heartbeats when idle); a reader task owns the read half
//! (acknowledgements to the pipeline, answers to whoever asked, a dead link detected by
//! silence). Either side failing closes the link and says why once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use understudy_core::{ConnectionId, Failure, JobId};

use super::bandwidth::Limiter;
use crate::error::WireError;
use crate::wire::{
    Compression, HandshakeConfig, Message, connect_handshake, read_message, write_message,
};

/// Silence after which a link is considered dead (heartbeats go out every few seconds).
pub const DEAD_AFTER: Duration = Duration::from_secs(20);
/// Heartbeat interval when nothing else is sent.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// How long connecting and opening a session may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What comes back from the target for the pipeline.
#[derive(Debug)]
pub enum Inbound {
    /// Everything up to `seq` is durable on the target.
    Ack(u64),
    /// Everything up to `seq` is applied on the target (durable later).
    Applied(u64),
    /// The target could not apply `seq` (the flag: because its volume is full).
    Nack(u64, Failure, bool),
    /// Hold mirror traffic.
    Pause,
    /// Mirror traffic may flow again.
    Resume,
}

/// Bytes that went out, before and after compression.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Encoded bytes before compression.
    pub raw_bytes: AtomicU64,
    /// Bytes on the wire.
    pub wire_bytes: AtomicU64,
}

/// An open link to a target engine for one job.
#[derive(Debug)]
pub struct Link {
    /// The connection's number.
    pub id: ConnectionId,
    /// The target's address as connected.
    pub peer: String,
    /// Whether the link is encrypted (TLS).
    pub encrypted: bool,
    /// The target's last durable sequence number when the session opened.
    pub last_applied: u64,
    /// The target's replica changed outside replication (an undone failover): remirror.
    pub target_diverged: bool,
    out: mpsc::UnboundedSender<Message>,
    pending: Mutex<BTreeMap<u64, oneshot::Sender<Message>>>,
    next_request: AtomicU64,
    closed: watch::Receiver<Option<String>>,
}

/// How a link sends.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// Compression of operation batches, shared by the jobs to this target and read for
    /// every batch, so a change reaches connections already open.
    pub compression: Arc<Mutex<Compression>>,
    /// The limiter shared by the jobs to this target.
    pub limiter: Arc<Limiter>,
    /// Where bytes sent are counted.
    pub stats: Arc<LinkStats>,
    /// Whether the stream is encrypted.
    pub encrypted: bool,
    /// TLS for TCP connections, when configured.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

fn timed_out(address: &str) -> WireError {
    WireError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("connecting to {address} timed out"),
    ))
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct LinkTarget {
    /// `host:port` of the target engine.
    pub address: String,
    /// The replica's root on the target.
    pub root: String,
    /// The job's spec, for the target engine's own record of the job.
    pub spec: Option<understudy_core::JobSpec>,
    /// This engine's replication address, which the target's failover monitor checks.
    pub source_address: Option<String>,
}

impl Link {
    /// Connects over TCP, authenticates and opens the job's session. Returns the link and the
    /// channel of acknowledgements.
    ///
    /// # Errors
    ///
    /// Connection, handshake or refusal, classified for retry.
    pub async fn connect(
        target: &LinkTarget,
        job: JobId,
        session: ConnectionId,
        resume_from: u64,
        handshake: &HandshakeConfig,
        options: LinkOptions,
    ) -> Result<(Arc<Link>, mpsc::UnboundedReceiver<Inbound>), WireError> {
        let connect = async {
            let stream = TcpStream::connect(&target.address).await?;
            let _ = stream.set_nodelay(true);
            Ok::<_, WireError>(stream)
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result?,
            Err(_) => return Err(timed_out(&target.address)),
        };
        let peer = stream.peer_addr().map_or_else(|_| target.address.clone(), |a| a.to_string());
        match options.tls.clone() {
            Some(tls) => {
                let name = crate::tls::server_name(&target.address)
                    .map_err(|e| WireError::AuthFailed { reason: e.to_string() })?;
                let connector = tokio_rustls::TlsConnector::from(tls);
                let stream = match tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    connector.connect(name, stream),
                )
                .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        return Err(WireError::AuthFailed {
                            reason: format!(
                                "TLS with {} failed: {error} (check both engines' certificates and the CA)",
                                target.address
                            ),
                        });
                    }
                    Err(_) => return Err(timed_out(&target.address)),
                };
                let options = LinkOptions { encrypted: true, ..options };
                Link::over(stream, peer, target, job, session, resume_from, handshake, options)
                    .await
            }
            None => {
                Link::over(stream, peer, target, job, session, resume_from, handshake, options)
                    .await
            }
        }
    }

    /// Authenticates and opens the job's session over an already connected stream (TCP, or an
    /// in-process pipe to the null target).
    ///
    /// # Errors
    ///
    /// Handshake or refusal, classified for retry.
    #[allow(clippy::too_many_arguments)] // each is a distinct part of one session's identity
    pub async fn over<S>(
        mut stream: S,
        peer: String,
        target: &LinkTarget,
        job: JobId,
        session: ConnectionId,
        resume_from: u64,
        handshake: &HandshakeConfig,
        options: LinkOptions,
    ) -> Result<(Arc<Link>, mpsc::UnboundedReceiver<Inbound>), WireError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let open = async {
            connect_handshake(&mut stream, handshake).await?;
            let open = Message::Open {
                job_id: job,
                root: target.root.clone(),
                session,
                resume_from_seq: resume_from,
                spec: target.spec.clone().map(Box::new),
                source_address: target.source_address.clone(),
            };
            write_message(&mut stream, &open, Compression::None).await?;
            match read_message(&mut stream).await? {
                Message::Opened { last_applied_seq, diverged } => Ok((last_applied_seq, diverged)),
                Message::Refused { reason, .. } => Err(WireError::Refused { reason }),
                other => Err(WireError::Unexpected { expected: "Opened", got: other.kind() }),
            }
        };
        let (last_applied, target_diverged) =
            match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
                Ok(result) => result?,
                Err(_) => return Err(timed_out(&target.address)),
            };
        let (reader, writer) = tokio::io::split(stream);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = watch::channel(None);
        let closed_tx = Arc::new(closed_tx);
        let link = Arc::new(Link {
            id: session,
            peer,
            encrypted: options.encrypted,
            last_applied,
            target_diverged,
            out: out_tx,
            pending: Mutex::new(BTreeMap::new()),
            next_request: AtomicU64::new(1),
            closed: closed_rx,
        });
        tokio::spawn(write_loop(writer, out_rx, options, Arc::clone(&closed_tx)));
        tokio::spawn(read_loop(reader, Arc::clone(&link), inbound_tx, closed_tx));
        Ok((link, inbound_rx))
    }

    /// Queues a message for the target; false when the link is closed.
    pub fn send(&self, message: Message) -> bool {
        self.out.send(message).is_ok()
    }

    /// Whether the link is closed, and why.
    pub fn closed_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// Waits until the link closes; returns why.
    pub async fn wait_closed(&self) -> String {
        let mut closed = self.closed.clone();
        loop {
            if let Some(reason) = closed.borrow_and_update().clone() {
                return reason;
            }
            if closed.changed().await.is_err() {
                return "the connection ended".into();
            }
        }
    }

    /// Closes the link (the tasks end; the target keeps what is durable).
    pub fn close(&self, reason: &str) {
        let _ = self.out.send(Message::Close { reason: reason.into() });
    }

    /// Sends a settle or release (one at a time) and waits for its answer.
    ///
    /// # Errors
    ///
    /// The link closed before the answer came.
    pub async fn call(&self, message: Message) -> Result<Message, String> {
        // Settle and Release carry no id: their answers come back under id 0.
        self.exchange(0, message).await
    }

    /// Sends a request built around a fresh id and waits for the answer carrying that id.
    ///
    /// # Errors
    ///
    /// The link closed before the answer came.
    pub async fn request(&self, build: impl FnOnce(u64) -> Message) -> Result<Message, String> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.exchange(id, build(id)).await
    }

    async fn exchange(&self, id: u64, message: Message) -> Result<Message, String> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, tx);
        if !self.send(message) {
            return Err(self.closed_reason().unwrap_or_else(|| "the connection is closed".into()));
        }
        let closed = self.wait_closed();
        tokio::select! {
            answer = rx => answer.map_err(|_| self.closed_reason().unwrap_or_else(|| "the connection closed".into())),
            reason = closed => Err(reason),
        }
    }

    fn answer(&self, id: u64, message: Message) {
        let waiter =
            self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(message);
        }
    }
}

fn close(closed: &watch::Sender<Option<String>>, reason: String) {
    closed.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(reason);
            true
        } else {
            false
        }
    });
}

async fn write_loop<S: AsyncWrite>(
    writer: WriteHalf<S>,
    mut out: mpsc::UnboundedReceiver<Message>,
    options: LinkOptions,
    closed: Arc<watch::Sender<Option<String>>>,
) {
    let LinkOptions { compression, limiter, stats, .. } = options;
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    let mut closed_rx = closed.subscribe();
    loop {
        let message = tokio::select! {
            message = out.recv() => message,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => Some(Message::Heartbeat { at_ms: now_ms() }),
            _ = closed_rx.changed() => None,
        };
        let Some(message) = message else { break };
        let is_close = matches!(message, Message::Close { .. });
        let frame_compression = if matches!(message, Message::Ops { .. }) {
            *compression.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        } else {
            Compression::None
        };
        let encoded = match crate::wire::encode_frame(&message, frame_compression) {
            Ok(encoded) => encoded,
            Err(error) => {
                close(&closed, format!("cannot send {}: {error}", message.kind()));
                break;
            }
        };
        while let Some(wait) = limiter.try_take(encoded.bytes.len() as u64) {
            // Held back by the limit: what the buffer holds leaves now, not when the backlog
            // ends (at a low limit a full buffer is seconds of sending).
            if !writer.buffer().is_empty()
                && let Err(error) = tokio::io::AsyncWriteExt::flush(&mut writer).await
            {
                close(&closed, format!("the connection broke while sending: {error}"));
                return;
            }
            tokio::time::sleep(wait).await;
        }
        if let Err(error) = tokio::io::AsyncWriteExt::write_all(&mut writer, &encoded.bytes).await {
            close(&closed, format!("the connection broke while sending: {error}"));
            break;
        }
        // Flush when nothing else is waiting, so small replication batches leave at once.
        if out.is_empty()
            && let Err(error) = tokio::io::AsyncWriteExt::flush(&mut writer).await
        {
            close(&closed, format!("the connection broke while sending: {error}"));
            break;
        }
        stats.raw_bytes.fetch_add(encoded.raw_len as u64, Ordering::Relaxed);
        stats.wire_bytes.fetch_add(encoded.bytes.len() as u64, Ordering::Relaxed);
        if is_close {
            close(&closed, "closed by this engine".into());
            break;
        }
    }
    let _ = tokio::io::AsyncWriteExt::flush(&mut writer).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
}

async fn read_loop<S: AsyncRead>(
    reader: ReadHalf<S>,
    link: Arc<Link>,
    inbound: mpsc::UnboundedSender<Inbound>,
    closed: Arc<watch::Sender<Option<String>>>,
) {
    let mut closed_rx = closed.subscribe();
    // Buffered: a frame's length prefix and payload come in one read instead of several.
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
    let reason = loop {
        let message = tokio::select! {
            message = tokio::time::timeout(DEAD_AFTER, read_message(&mut reader)) => message,
            _ = closed_rx.changed() => break None,
        };
        let message = match message {
            Err(_) => {
                break Some(format!(
                    "the target has been silent for {} s: the link is down",
                    DEAD_AFTER.as_secs()
                ));
            }
            Ok(Err(WireError::Closed)) => break Some("the target closed the connection".into()),
            Ok(Err(error)) => break Some(format!("the connection broke: {error}")),
            Ok(Ok(message)) => message,
        };
        match message {
            Message::Ack { seq } => {
                let _ = inbound.send(Inbound::Ack(seq));
            }
            Message::Applied { seq } => {
                let _ = inbound.send(Inbound::Applied(seq));
            }
            Message::Nack { seq, error, disk_full } => {
                let _ = inbound.send(Inbound::Nack(seq, error, disk_full));
            }
            Message::Pause => {
                let _ = inbound.send(Inbound::Pause);
            }
            Message::Resume => {
                let _ = inbound.send(Inbound::Resume);
            }
            Message::Heartbeat { .. } => {}
            Message::MetaReply { query_id, .. }
            | Message::ListDir { query_id, .. }
            | Message::BlockHashes { query_id, .. }
            | Message::QueryFailed { query_id, .. } => link.answer(query_id, message),
            Message::ScriptFinished { request_id, .. } => link.answer(request_id, message),
            // Settle and Release have one outstanding request at a time: id 0.
            Message::Settled { .. } | Message::Released => link.answer(0, message),
            Message::Refused { reason, .. } => break Some(format!("the target refused: {reason}")),
            Message::Close { reason } => {
                break Some(format!("the target closed the connection: {reason}"));
            }
            other => break Some(format!("the target sent an unexpected {}", other.kind())),
        }
    };
    if let Some(reason) = reason {
        close(&closed, reason);
    }
    // Whoever still waits for an answer learns the link is gone.
    link.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
