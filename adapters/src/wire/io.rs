//! Async helpers: one message in, one message out, over any tokio stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{Compression, EncodedFrame, decode_shared_payload, encode_frame};
use super::message::Message;
use super::{LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES};
use crate::error::WireError;

/// Reads one frame and decodes it.
///
/// The length is checked against [`MAX_FRAME_BYTES`] before any buffer exists, and the
/// buffer then grows only with the bytes that actually arrive (a peer announcing 16 MiB and
/// sending 10 bytes costs 64 KiB, not 16 MiB).
///
/// A clean end of stream before a frame starts is [`WireError::Closed`]; one inside a frame
/// is an I/O error (`UnexpectedEof`). Not cancellation safe (a frame half read by a
/// cancelled call is lost, and the stream with it): in a `select!` loop, read into a
/// [`FrameDecoder`](super::FrameDecoder) instead.
pub async fn read_message<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
) -> Result<Message, WireError> {
    let mut prefix = [0_u8; LENGTH_PREFIX_BYTES];
    let mut got = 0;
    while got < prefix.len() {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                WireError::Closed
            } else {
                WireError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix);
    if len > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len: u64::from(len),
            max: u64::from(MAX_FRAME_BYTES),
        });
    }
    let mut payload = Vec::with_capacity((len as usize).min(64 * 1024));
    let read = reader.take(u64::from(len)).read_to_end(&mut payload).await?;
    if read != len as usize {
        return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    decode_shared_payload(payload.into())
}

/// Encodes, writes and flushes one message; returns the frame's sizes for the statistics.
pub async fn write_message<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    message: &Message,
    compression: Compression,
) -> Result<FrameStats, WireError> {
    let EncodedFrame { bytes, raw_len } = encode_frame(message, compression)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(FrameStats { raw_bytes: raw_len as u64, wire_bytes: bytes.len() as u64 })
}

/// Sizes of a written frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// The message's encoded size before compression.
    pub raw_bytes: u64,
    /// The frame's size on the wire (length prefix included).
    pub wire_bytes: u64,
}
