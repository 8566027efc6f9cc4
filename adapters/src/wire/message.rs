//! The messages exchanged between a source engine and a target engine.

use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use understudy_core::effect::{ScriptResult, ScriptStage};
use understudy_core::spec::{JobSpec, QueuePolicy, Script};
use understudy_core::{ConnectionId, Failure, JobId};

use crate::error::WireError;
use crate::fsops::{BlockHashes, Entry, Operation, RelPath};

/// One operation, already encoded (named MessagePack). The source queue holds operations in
/// this form, so a batch goes from the queue to the wire without decoding and re-encoding, and
/// shares the queue's buffer instead of copying it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncodedOp(#[serde(with = "crate::bytes_serde::shared")] pub Bytes);

impl EncodedOp {
    /// Encodes an operation.
    ///
    /// # Errors
    ///
    /// The operation cannot be encoded (it always can: its types are plain data).
    pub fn encode(op: &Operation) -> Result<EncodedOp, WireError> {
        // Sized up front: growing a buffer of file data would copy it again.
        let data = match op {
            Operation::Write { data, .. } => data.len(),
            _ => 0,
        };
        let mut bytes = Vec::with_capacity(data + 128);
        rmp_serde::encode::write_named(&mut bytes, op)
            .map_err(|e| WireError::Encode { kind: "Operation", reason: e.to_string() })?;
        Ok(EncodedOp(bytes.into()))
    }

    /// Encodes `Operation::Write { path, offset, data }` with `data` read by `fill` straight
    /// into the encoded buffer: the bytes [`EncodedOp::encode`] gives, without copying the data
    /// into place or zeroing room for it first. `fill` appends at most `len` bytes to the
    /// buffer it gets, whose spare capacity is exactly `len`, and returns how many (fewer only
    /// at the end of a file). Returns the operation and where its data lies in it.
    ///
    /// # Errors
    ///
    /// What `fill` returned.
    pub fn encode_write(
        path: &RelPath,
        offset: u64,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> std::io::Result<usize>,
    ) -> std::io::Result<(EncodedOp, Range<usize>)> {
        // The data is the last field: the encoding of the same write without data, less its
        // last two bytes (the empty `bin 8` header), then the header for the data's length.
        let empty = Operation::Write { path: path.clone(), offset, data: Bytes::new() };
        let mut prefix = Vec::with_capacity(path.as_bytes().len() + 48);
        rmp_serde::encode::write_named(&mut prefix, &empty)
            .map_err(|e| std::io::Error::other(format!("encoding a write: {e}")))?;
        debug_assert_eq!(prefix[prefix.len() - 2..], [0xc4, 0]);
        prefix.truncate(prefix.len() - 2);
        let head = |len: usize| {
            let mut header = [0u8; 5];
            let header = match (u8::try_from(len), u16::try_from(len), u32::try_from(len)) {
                (Ok(n), _, _) => {
                    header[..2].copy_from_slice(&[0xc4, n]);
                    &header[..2]
                }
                (_, Ok(n), _) => {
                    header[0] = 0xc5;
                    header[1..3].copy_from_slice(&n.to_be_bytes());
                    &header[..3]
                }
                (_, _, Ok(n)) => {
                    header[0] = 0xc6;
                    header[1..5].copy_from_slice(&n.to_be_bytes());
                    &header[..5]
                }
                _ => return Err(std::io::Error::other("a write of more than 4 GiB")),
            };
            // `with_capacity` gives exactly the capacity asked for: the spare room is `len`.
            let mut bytes = Vec::with_capacity(prefix.len() + header.len() + len);
            bytes.extend_from_slice(&prefix);
            bytes.extend_from_slice(header);
            Ok::<_, std::io::Error>(bytes)
        };
        let mut bytes = head(len)?;
        let start = bytes.len();
        let filled = if len == 0 { 0 } else { fill(&mut bytes)? };
        debug_assert_eq!(bytes.len(), start + filled);
        if filled < len {
            // Short (the file ended sooner): the length in the header changes, and so may the
            // header's size. Rare; copying the data once more is fine here.
            let mut short = head(filled)?;
            let data_start = short.len();
            short.extend_from_slice(&bytes[start..start + filled]);
            return Ok((EncodedOp(short.into()), data_start..data_start + filled));
        }
        Ok((EncodedOp(bytes.into()), start..start + len))
    }

    /// Decodes the operation.
    ///
    /// # Errors
    ///
    /// The bytes are not an operation (a malformed frame from the peer).
    pub fn decode(&self) -> Result<Operation, WireError> {
        if let Some(write) = self.shared_write() {
            return Ok(write);
        }
        rmp_serde::from_slice(&self.0)
            .map_err(|e| WireError::Malformed { reason: format!("operation: {e}") })
    }

    /// A `Write` decoded with its data a slice of this operation's buffer, not a copy; `None`
    /// for anything else, or a write not in the form this crate encodes, which `decode` then
    /// decodes the usual way.
    fn shared_write(&self) -> Option<Operation> {
        /// `Operation::Write` with its data borrowed.
        #[derive(Deserialize)]
        enum WriteView<'a> {
            Write {
                path: RelPath,
                offset: u64,
                #[serde(borrow)]
                data: &'a [u8],
            },
        }
        // A one-entry map keyed "Write", as `rmp_serde` encodes the variant.
        if !self.0.starts_with(b"\x81\xa5Write") {
            return None;
        }
        let WriteView::Write { path, offset, data } = rmp_serde::from_slice(&self.0).ok()?;
        // The data is the last thing in the operation (nothing after it is ignored unseen).
        if data.as_ptr_range().end != self.0.as_ptr_range().end {
            return None;
        }
        Some(Operation::Write { path, offset, data: self.0.slice_ref(data) })
    }

    /// Encoded size.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether empty (never, for a real operation).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Which end of a replication connection an engine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Sends operations.
    Source,
    /// Applies them.
    Target,
}

/// Compression codecs for [`Message::Compressed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// Zstandard.
    Zstd,
}

/// One message. Encoded with `rmp_serde::to_vec_named` inside a length-prefixed frame
/// ([`super::encode_frame`]).
///
/// Compatibility: [`Message::Hello`], [`Message::Welcome`] and [`Message::Refused`] must decode
/// in every version (they carry the version check), so their fields are never renamed or
/// removed; new fields anywhere are added with `#[serde(default)]`.
///
/// Sequence numbers (`seq`) count operations on one job's replication session, from 1, and
/// survive reconnects: after `Open`, the target says what it last made durable and the source
/// resumes after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    // ----- handshake -----
    /// First message of the connecting engine.
    Hello {
        /// [`super::PROTOCOL_VERSION`] of the sender.
        protocol_version: u32,
        /// The sender's engine id (for logs and the job's connection info).
        engine_id: String,
        /// What the sender is on this connection.
        role: Role,
    },
    /// The accepting engine agrees: the connection is open.
    Welcome {
        /// The accepting engine's protocol version.
        protocol_version: u32,
        /// The accepting engine's id.
        engine_id: String,
    },
    /// The accepting (or, after `Welcome`, the connecting) engine refuses; the connection
    /// closes after it.
    Refused {
        /// Why, in words for the user.
        reason: String,
        /// The refusing engine's protocol version, so the other side can word a version
        /// mismatch from its own point of view.
        #[serde(default)]
        protocol_version: u32,
    },
    /// Authentication: prove knowledge of the shared secret by answering with a
    /// [`Message::Proof`] over this nonce (see [`super::auth`]).
    Challenge {
        /// 32 random bytes.
        #[serde(with = "crate::bytes_serde")]
        nonce: Vec<u8>,
    },
    /// Authentication: HMAC-SHA256 over the last challenge (see [`super::auth::proof`]).
    Proof {
        /// The MAC.
        #[serde(with = "crate::bytes_serde")]
        hmac: Vec<u8>,
    },

    // ----- session -----
    /// The source opens a job's replication session.
    Open {
        /// The job.
        job_id: JobId,
        /// The replica's root folder on the target (absolute).
        #[serde(default)]
        root: String,
        /// The connection number (incremented by the source at each (re)connection).
        session: ConnectionId,
        /// The first sequence number the source still holds (everything before it was
        /// acknowledged).
        resume_from_seq: u64,
        /// The job's spec, so the target engine keeps its own record of the job (for the
        /// failover monitor and failover on the target side).
        #[serde(default)]
        spec: Option<Box<JobSpec>>,
        /// The source engine's replication address, which the target's monitor checks.
        #[serde(default)]
        source_address: Option<String>,
    },
    /// The target answers `Open`: it has durably applied everything up to
    /// `last_applied_seq` (0: nothing), so the source resends from `last_applied_seq + 1`.
    Opened {
        /// The last durable sequence number.
        last_applied_seq: u64,
        /// The replica changed outside replication (a failover that was undone): the source
        /// must remirror.
        #[serde(default)]
        diverged: bool,
    },
    /// A batch of operations numbered `first_seq`, `first_seq + 1`, …: small files travel
    /// together in one frame.
    Ops {
        /// The first operation's sequence number.
        first_seq: u64,
        /// The operations, in order, each encoded on its own.
        ops: Vec<EncodedOp>,
    },
    /// The source dropped every operation up to and including `through_seq` that it has not
    /// sent (an exhausted or discarded queue, or one lost in a crash): the target counts them
    /// as done and applies what follows. A remirror repairs what they would have changed.
    /// Sequence numbers are never reused, so nothing sent after this can be mistaken for a
    /// resend.
    Skip {
        /// The last dropped sequence number.
        through_seq: u64,
    },
    /// Everything up to and including `seq` is durable on the target.
    Ack {
        /// The last durable sequence number.
        seq: u64,
    },
    /// Everything up to and including `seq` is applied on the target, not yet durable: the
    /// target holds none of it in memory any more, so the sender may send more; it keeps
    /// the operations for a resend until the `Ack` (ADR 18).
    Applied {
        /// The last applied sequence number.
        seq: u64,
    },
    /// The target could not apply `seq` (everything before it is applied); `error` says why
    /// and whether retrying helps.
    Nack {
        /// The failed sequence number.
        seq: u64,
        /// Why, classified for retry.
        error: Failure,
        /// The target's volume is full (the job shows target data state Mirror Required).
        #[serde(default)]
        disk_full: bool,
    },
    /// Liveness, either direction.
    Heartbeat {
        /// The sender's wall clock, in ms since the Unix epoch.
        at_ms: u64,
    },
    /// The target asks the source to hold mirror traffic (memory pressure).
    Pause,
    /// The target lets the source send mirror traffic again.
    Resume,

    // ----- target-side reads for the mirror -----
    /// Attributes of target paths (attribute comparison, orphan detection).
    QueryMeta {
        /// Matches the reply.
        query_id: u64,
        /// The paths.
        paths: Vec<RelPath>,
    },
    /// Answer to [`Message::QueryMeta`].
    MetaReply {
        /// The query answered.
        query_id: u64,
        /// One per queried path, in order; `None` where the target has nothing.
        entries: Vec<Option<Entry>>,
    },
    /// Block hashes of a target file (checksum comparison), for at most
    /// [`super::MAX_HASHES_PER_REPLY`] blocks from `first_block`.
    QueryBlockHashes {
        /// Matches the reply.
        query_id: u64,
        /// The file.
        path: RelPath,
        /// Bytes per block.
        block_size: u32,
        /// First block to hash.
        #[serde(default)]
        first_block: u64,
        /// How many blocks at most.
        #[serde(default)]
        max_blocks: u32,
    },
    /// Answer to [`Message::QueryBlockHashes`].
    BlockHashes {
        /// The query answered.
        query_id: u64,
        /// The hashes.
        hashes: BlockHashes,
    },
    /// A target directory's entries (orphan detection).
    QueryListDir {
        /// Matches the reply.
        query_id: u64,
        /// The directory.
        path: RelPath,
    },
    /// Answer to [`Message::QueryListDir`].
    ListDir {
        /// The query answered.
        query_id: u64,
        /// Its entries, sorted by name bytes.
        entries: Vec<Entry>,
    },
    /// A query could not be answered (the path escapes, is missing, is not a file).
    QueryFailed {
        /// The query.
        query_id: u64,
        /// Why.
        error: Failure,
    },

    // ----- cutover and failover, run by the target engine -----
    /// Run a script on the target (pre/post cutover, mirror scripts).
    RunScript {
        /// Matches the reply.
        request_id: u64,
        /// Which script.
        stage: ScriptStage,
        /// The script.
        script: Script,
    },
    /// Answer to [`Message::RunScript`].
    ScriptFinished {
        /// The request answered.
        request_id: u64,
        /// How it ended.
        result: ScriptResult,
    },
    /// Apply or discard what the target has received but not applied; answered once done.
    Settle {
        /// Apply or discard.
        policy: QueuePolicy,
    },
    /// Answer to [`Message::Settle`].
    Settled {
        /// Operations applied (or discarded) to settle.
        operations: u64,
    },
    /// Replication ends: the target releases the replica (unblocks it) for its new role.
    Release,
    /// Answer to [`Message::Release`].
    Released,

    // ----- end and framing -----
    /// Orderly close.
    Close {
        /// Why, for the other side's log.
        reason: String,
    },
    /// Another message, encoded then compressed. Made by [`super::encode_frame`] and removed
    /// by the decoders: callers never see it.
    Compressed {
        /// The codec.
        codec: Codec,
        /// The encoded message's length (at most [`super::MAX_FRAME_BYTES`]).
        raw_len: u32,
        /// The compressed encoded message.
        #[serde(with = "crate::bytes_serde")]
        bytes: Vec<u8>,
    },
}

impl Message {
    /// The variant name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::Challenge { .. } => "Challenge",
            Message::Proof { .. } => "Proof",
            Message::Open { .. } => "Open",
            Message::Opened { .. } => "Opened",
            Message::Ops { .. } => "Ops",
            Message::Ack { .. } => "Ack",
            Message::Applied { .. } => "Applied",
            Message::Nack { .. } => "Nack",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::Pause => "Pause",
            Message::Resume => "Resume",
            Message::QueryMeta { .. } => "QueryMeta",
            Message::MetaReply { .. } => "MetaReply",
            Message::QueryBlockHashes { .. } => "QueryBlockHashes",
            Message::BlockHashes { .. } => "BlockHashes",
            Message::QueryListDir { .. } => "QueryListDir",
            Message::ListDir { .. } => "ListDir",
            Message::QueryFailed { .. } => "QueryFailed",
            Message::RunScript { .. } => "RunScript",
            Message::ScriptFinished { .. } => "ScriptFinished",
            Message::Settle { .. } => "Settle",
            Message::Settled { .. } => "Settled",
            Message::Release => "Release",
            Message::Skip { .. } => "Skip",
            Message::Released => "Released",
            Message::Close { .. } => "Close",
            Message::Compressed { .. } => "Compressed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place encoding is byte for byte the serde one, across every `bin` header size
    /// and when the data comes up short.
    #[test]
    fn a_write_encoded_in_place_is_the_same_bytes() {
        let path = RelPath::new("a folder/ünïcode.bin").unwrap();
        for (len, filled) in [
            (0, 0),
            (1, 1),
            (255, 255),
            (256, 256),
            (65_535, 65_535),
            (65_536, 65_536),
            (65_536, 300),
            (70_000, 255),
        ] {
            let data: Bytes = (0..filled).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
            let (op, range) = EncodedOp::encode_write(&path, 1 << 40, len, |buf| {
                assert_eq!(buf.capacity() - buf.len(), len, "room for exactly the data");
                buf.extend_from_slice(&data);
                Ok(filled)
            })
            .unwrap();
            let expected = EncodedOp::encode(&Operation::Write {
                path: path.clone(),
                offset: 1 << 40,
                data: data.clone(),
            })
            .unwrap();
            assert_eq!(op, expected, "len {len}, filled {filled}");
            assert_eq!(&op.0[range], &data[..]);
            assert_eq!(
                op.decode().unwrap(),
                Operation::Write { path: path.clone(), offset: 1 << 40, data }
            );
        }
    }
}
