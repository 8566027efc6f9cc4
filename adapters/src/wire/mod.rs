//! The wire protocol between a source engine and a target engine.
//!
//! A connection carries frames: a 4-byte big-endian length, then that many bytes of one
//! [`Message`] encoded with `rmp_serde::to_vec_named` (field names, so fields can be added).
//! A frame is at most [`MAX_FRAME_BYTES`]: room for [`MAX_BATCH_DATA_BYTES`] of file data in
//! one `Ops` batch plus the encoding's overhead. Frames may be compressed with zstd
//! ([`Compression`]); the receiver bounds the decompressed size by the same limit.
//!
//! Any protocol error (an oversized or undecodable frame, a message out of place) closes the
//! connection it happened on and only that one; the job reconnects and resumes from the last
//! acknowledged sequence number.
//!
//! - [`message`]: [`Message`] and its parts;
//! - [`frame`]: [`encode_frame`], [`decode_payload`], the incremental [`FrameDecoder`];
//! - [`io`]: async [`read_message`] / [`write_message`] over tokio streams;
//! - [`auth`]: the versioned handshake and HMAC challenge-response authentication.

pub mod auth;
pub mod frame;
pub mod io;
pub mod message;

pub use auth::{HandshakeConfig, Peer, Secret, accept_handshake, connect_handshake};
pub use frame::{
    Compression, EncodedFrame, FrameDecoder, decode_payload, decode_shared_payload, encode_frame,
};
pub use io::{FrameStats, read_message, write_message};
pub use message::{Codec, EncodedOp, Message, Role};

/// The protocol version this engine speaks. Engines of different versions refuse each other
/// with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 2;

/// The default replication port.
pub const DEFAULT_PORT: u16 = 6320;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The most file data a sender puts in one `Ops` batch (16 MiB).
pub const MAX_BATCH_DATA_BYTES: usize = 16 * 1024 * 1024;

/// Operations a sender has sent and the target has not yet applied (`Applied`) before it
/// waits: they sit in the target's memory, in frames. Enough to keep a 50 ms round trip at
/// 1 Gbit/s busy (about 6 MiB).
pub const SEND_WINDOW_BYTES: u64 = 16 * 1024 * 1024;
/// ... and at most this many operations (on a tree of small files the count bounds it: each
/// operation has its overhead).
pub const SEND_WINDOW_OPS: u64 = 8192;
/// Operations a sender has sent and the target has not yet made durable (`Ack`) before it
/// waits: the source holds them in its queue for a resend, so this is the source's memory,
/// and it is how far the target's syncs may fall behind its applying. Applying and writing
/// back then overlap, and the mirror costs the longer of the two, not their sum: with one
/// bound for both (16 MiB) a loopback mirror spent a third of its time waiting for syncs
/// (ADRs 17, 18).
pub const UNSYNCED_WINDOW_BYTES: u64 = 64 * 1024 * 1024;
/// ... and at most this many operations.
pub const UNSYNCED_WINDOW_OPS: u64 = 4 * SEND_WINDOW_OPS;
/// The share (1 / this) of the unsynced window after which a target starts making what it
/// applied durable: the acknowledgement then arrives while the sender sends the rest.
pub const SYNC_SHARE_OF_WINDOW: u64 = 4;

/// The largest frame payload accepted or sent: 16 MiB of data plus 1 MiB for paths, field
/// names and other encoding overhead. Checked before any allocation.
pub const MAX_FRAME_BYTES: u32 = 17 * 1024 * 1024;

/// The most block hashes one `BlockHashes` reply carries (8 MiB of hashes, about 9 MiB
/// encoded; with 64 KiB blocks, 32 GiB of file per query).
pub const MAX_HASHES_PER_REPLY: u32 = 512 * 1024;
