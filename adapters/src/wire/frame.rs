//! Frames: a 4-byte big-endian length, then that many bytes of MessagePack (named).
//!
//! Limits are checked before anything is allocated: a length prefix over
//! [`MAX_FRAME_BYTES`] is refused as soon as its 4 bytes are seen, and a compressed frame's
//! announced `raw_len` is checked against the same limit before its output buffer exists.
//! Decoding uses rmp-serde with a small nesting limit (our messages nest a handful of levels)
//! and serde's cautious preallocation, so a hostile payload costs at most about its own size.

use std::io::Cursor;

use bytes::Bytes;
use serde::Deserialize;

use super::message::{Codec, EncodedOp, Message};
use super::{LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES};
use crate::error::WireError;

/// How frames are compressed by the sender (the receiver handles all of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Send frames as they are.
    #[default]
    None,
    /// zstd at `level` (1 fastest … 19 smallest; the job settings map onto it). A frame is sent
    /// compressed only if that makes it smaller.
    Zstd {
        /// The zstd level.
        level: i32,
    },
}

/// Payloads shorter than this are never compressed: the wrapper would cost more than zstd saves.
const MIN_COMPRESS_BYTES: usize = 128;

/// How deep a payload may nest (our messages use about 6 levels).
const MAX_DEPTH: usize = 32;

/// One encoded frame, with the sizes the statistics need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The bytes to send: the length prefix and the payload.
    pub bytes: Vec<u8>,
    /// The message's encoded size before compression ("bytes sent").
    pub raw_len: usize,
}

impl EncodedFrame {
    /// The frame's size on the wire ("bytes sent compressed").
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Encodes `message` into a frame, compressed when asked and worthwhile.
///
/// Fails with [`WireError::MessageTooLarge`] when the encoded message exceeds
/// [`MAX_FRAME_BYTES`] (compression is no way around the limit: the receiver bounds the
/// decompressed size by it too); the caller splits the batch.
pub fn encode_frame(
    message: &Message,
    compression: Compression,
) -> Result<EncodedFrame, WireError> {
    // The payload is written after room for its length prefix, so the frame is built in one
    // buffer: file data is copied into it once, not again to prepend the prefix.
    let mut frame = encode_prefixed(message)?;
    let raw_len = frame.len() - LENGTH_PREFIX_BYTES;
    if let Compression::Zstd { level } = compression
        && raw_len >= MIN_COMPRESS_BYTES
        && !matches!(message, Message::Compressed { .. })
    {
        let bytes = zstd::bulk::compress(&frame[LENGTH_PREFIX_BYTES..], level)
            .map_err(|e| WireError::Compression { reason: format!("zstd level {level}: {e}") })?;
        if bytes.len() + 16 < raw_len {
            let raw_len =
                u32::try_from(raw_len).expect("checked against MAX_FRAME_BYTES by encode_prefixed");
            frame = encode_prefixed(&Message::Compressed { codec: Codec::Zstd, raw_len, bytes })?;
        }
    }
    let len = u32::try_from(frame.len() - LENGTH_PREFIX_BYTES)
        .expect("checked against MAX_FRAME_BYTES by encode_prefixed");
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(EncodedFrame { bytes: frame, raw_len })
}

/// Encodes a message's payload after [`LENGTH_PREFIX_BYTES`] bytes of room for its length
/// prefix, checking the frame limit.
fn encode_prefixed(message: &Message) -> Result<Vec<u8>, WireError> {
    // Sized for the payload up front: growing a buffer of file data copies it again.
    let hint = match message {
        Message::Ops { ops, .. } => ops.iter().map(|op| op.0.len() + 8).sum::<usize>() + 64,
        Message::Compressed { bytes, .. } => bytes.len() + 32,
        _ => 256,
    };
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_BYTES + hint);
    frame.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    rmp_serde::encode::write_named(&mut frame, message)
        .map_err(|e| WireError::Encode { kind: message.kind(), reason: e.to_string() })?;
    let len = frame.len() - LENGTH_PREFIX_BYTES;
    if len > MAX_FRAME_BYTES as usize {
        return Err(WireError::MessageTooLarge {
            kind: message.kind(),
            len: len as u64,
            max: u64::from(MAX_FRAME_BYTES),
        });
    }
    Ok(frame)
}

/// Decodes one frame's payload (without its length prefix) into a message, unwrapping
/// compression. The whole payload must be one message: trailing bytes are an error.
pub fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    decode(payload, None)
}

/// [`decode_payload`] for a payload the caller hands over: the operations of an `Ops` message
/// share its buffer instead of being copied out of it.
pub fn decode_shared_payload(payload: Bytes) -> Result<Message, WireError> {
    decode(&payload, Some(&payload))
}

fn decode(payload: &[u8], shared: Option<&Bytes>) -> Result<Message, WireError> {
    match decode_one(payload, shared)? {
        Message::Compressed { codec: Codec::Zstd, raw_len, bytes } => {
            if raw_len > MAX_FRAME_BYTES {
                return Err(WireError::Compression {
                    reason: format!(
                        "it announces {raw_len} bytes, over the {MAX_FRAME_BYTES}-byte limit"
                    ),
                });
            }
            // The output buffer is bounded by the checked raw_len; zstd fails rather than
            // grow it, so a decompression bomb costs at most the frame limit.
            let raw = zstd::bulk::decompress(&bytes, raw_len as usize)
                .map_err(|e| WireError::Compression { reason: format!("zstd: {e}") })?;
            if raw.len() != raw_len as usize {
                return Err(WireError::Compression {
                    reason: format!("it announced {raw_len} bytes and held {}", raw.len()),
                });
            }
            let raw = Bytes::from(raw);
            match decode_one(&raw, Some(&raw))? {
                Message::Compressed { .. } => Err(WireError::Compression {
                    reason: "a compressed frame inside a compressed frame".into(),
                }),
                message => Ok(message),
            }
        }
        message => Ok(message),
    }
}

/// One message, in place when it is `Ops` and the payload is `shared`.
fn decode_one(payload: &[u8], shared: Option<&Bytes>) -> Result<Message, WireError> {
    match shared.and_then(shared_ops) {
        Some(ops) => Ok(ops),
        None => decode_exact(payload),
    }
}

/// An `Ops` message decoded with each operation a slice of `payload`, or `None` when the
/// payload is not one in the form this crate encodes (the caller then decodes it the strict
/// way, which also says what is wrong with it).
fn shared_ops(payload: &Bytes) -> Option<Message> {
    /// `Message::Ops` with its operations borrowed.
    #[derive(Deserialize)]
    enum OpsView<'a> {
        Ops {
            first_seq: u64,
            #[serde(borrow)]
            ops: Vec<&'a [u8]>,
        },
    }
    // A one-entry map keyed "Ops", as `rmp_serde` encodes the variant.
    if !payload.starts_with(b"\x81\xa3Ops") {
        return None;
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(&payload[..]);
    de.set_max_depth(MAX_DEPTH);
    let OpsView::Ops { first_seq, ops } = OpsView::deserialize(&mut de).ok()?;
    // Nothing may follow the last operation: no trailing bytes, no fields after it.
    if ops.last()?.as_ptr_range().end != payload.as_ptr_range().end {
        return None;
    }
    let ops = ops.into_iter().map(|op| EncodedOp(payload.slice_ref(op))).collect();
    Some(Message::Ops { first_seq, ops })
}

fn decode_exact(payload: &[u8]) -> Result<Message, WireError> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(payload));
    de.set_max_depth(MAX_DEPTH);
    let message = Message::deserialize(&mut de)
        .map_err(|e| WireError::Malformed { reason: e.to_string() })?;
    let used = de.position();
    if used != payload.len() as u64 {
        return Err(WireError::Malformed {
            reason: format!("{} bytes left over after the message", payload.len() as u64 - used),
        });
    }
    Ok(message)
}

/// An incremental frame decoder: feed it bytes as they arrive, in pieces of any size, and
/// take complete messages out.
///
/// It never panics on any input, and never allocates from a length it has not checked: its
/// buffer grows only with bytes actually given to it, and a length prefix over
/// [`MAX_FRAME_BYTES`] is an error as soon as its 4 bytes are in. After an error the decoder
/// stays failed (the stream has lost its framing): close the connection.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the undecoded bytes in `buf` (consumed bytes are dropped in batches).
    start: usize,
    failed: bool,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Feeds bytes and returns every message they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Message>, WireError> {
        self.extend(bytes);
        let mut out = Vec::new();
        while let Some(message) = self.next_message()? {
            out.push(message);
        }
        Ok(out)
    }

    /// Feeds bytes without decoding (see [`FrameDecoder::next_message`]).
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            // Drop consumed bytes once they are at least half the buffer: amortised O(1).
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, or `None` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if self.failed {
            return Err(WireError::Malformed {
                reason: "the stream already failed to decode".into(),
            });
        }
        let pending = &self.buf[self.start..];
        let Some(prefix) = pending.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len > MAX_FRAME_BYTES {
            self.failed = true;
            return Err(WireError::FrameTooLarge {
                len: u64::from(len),
                max: u64::from(MAX_FRAME_BYTES),
            });
        }
        let end = LENGTH_PREFIX_BYTES + len as usize;
        if pending.len() < end {
            return Ok(None);
        }
        let result = decode_payload(&pending[LENGTH_PREFIX_BYTES..end]);
        self.start += end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        match result {
            Ok(message) => Ok(Some(message)),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Bytes received but not yet decoded (at most one frame plus what was fed after it).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Memory the decoder holds for its buffer (its capacity), for monitoring.
    pub fn memory_bytes(&self) -> usize {
        self.buf.capacity()
    }
}
