//! The null target of the TDU: a target engine that speaks the whole protocol, holds nothing,
//! and acknowledges every operation as soon as it has decoded it. A diagnostics job runs
//! against it through the same link, pipe, mirror and capture as any job, so what it measures
//! is what a real job would do, minus the network and the target's disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::WireError;
use crate::wire::{
    Compression, HandshakeConfig, Message, Role, accept_handshake, read_message, write_message,
};

/// What the null target received.
#[derive(Debug, Default)]
pub struct NullCounters {
    /// Operations acknowledged.
    pub operations: AtomicU64,
    /// File data bytes received (after decompression).
    pub data_bytes: AtomicU64,
}

/// Serves one session on `stream` until the source closes it.
///
/// # Errors
///
/// A protocol error from the source (a bug: the source is in-process).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    counters: Arc<NullCounters>,
) -> Result<(), WireError> {
    let config =
        HandshakeConfig { engine_id: "null-target".into(), role: Role::Target, secret: None };
    accept_handshake(&mut stream, &config).await?;
    match read_message(&mut stream).await? {
        Message::Open { .. } => {}
        other => return Err(WireError::Unexpected { expected: "Open", got: other.kind() }),
    }
    write_message(
        &mut stream,
        &Message::Opened { last_applied_seq: 0, diverged: false },
        Compression::None,
    )
    .await?;
    loop {
        let reply = match read_message(&mut stream).await {
            Ok(Message::Ops { first_seq, ops }) => {
                let mut data = 0u64;
                for op in &ops {
                    if let crate::fsops::Operation::Write { data: bytes, .. } = op.decode()? {
                        data += bytes.len() as u64;
                    }
                }
                counters.operations.fetch_add(ops.len() as u64, Ordering::Relaxed);
                counters.data_bytes.fetch_add(data, Ordering::Relaxed);
                Message::Ack { seq: first_seq + ops.len() as u64 - 1 }
            }
            // An empty target: every folder is empty, so the mirror sends everything.
            Ok(Message::QueryListDir { query_id, .. }) => {
                Message::ListDir { query_id, entries: Vec::new() }
            }
            Ok(Message::QueryMeta { query_id, paths }) => {
                Message::MetaReply { query_id, entries: vec![None; paths.len()] }
            }
            Ok(Message::QueryBlockHashes { query_id, .. }) => Message::QueryFailed {
                query_id,
                error: understudy_core::Failure::permanent("the null target holds no data"),
            },
            Ok(Message::RunScript { request_id, .. }) => Message::ScriptFinished {
                request_id,
                result: understudy_core::effect::ScriptResult {
                    exit_code: Some(0),
                    ..Default::default()
                },
            },
            Ok(Message::Settle { .. }) => Message::Settled { operations: 0 },
            Ok(Message::Release) => Message::Released,
            Ok(Message::Skip { through_seq }) => Message::Ack { seq: through_seq },
            Ok(Message::Heartbeat { at_ms }) => Message::Heartbeat { at_ms },
            Ok(Message::Close { .. }) | Err(WireError::Closed) => return Ok(()),
            Ok(other) => {
                return Err(WireError::Unexpected {
                    expected: "a source message",
                    got: other.kind(),
                });
            }
            Err(error) => return Err(error),
        };
        write_message(&mut stream, &reply, Compression::None).await?;
    }
}
