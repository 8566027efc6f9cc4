//! Turning the source's files into operations: a whole file, or only the blocks that differ
//! from what the target holds. Each block is read and enqueued under the pipe's lock, so the
//! queue's order is the order the source was read in (see the `pipe` module).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use super::pipe::{Exhausted, Pipe, Producer, Shadow};
use crate::fsops::{BLOCK_SIZE, BlockHash, Meta, Operation, RelPath, append_at, data_ranges};
use crate::wire::EncodedOp;

/// Blocks of a file queued between two wake-ups of the sender (512 KiB).
const BLOCKS_PER_WAKE: u32 = 8;

/// What sending a file did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileSent {
    /// File data enqueued.
    pub bytes_sent: u64,
    /// File data found identical on the target and not sent.
    pub bytes_skipped: u64,
    /// Whether anything at all was enqueued (data or attributes).
    pub changed: bool,
}

/// Why a file could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It disappeared (or was replaced) while being read: skipped, capture will catch up.
    #[error("it vanished while being read")]
    Vanished,
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Unreadable(io::Error),
    /// The queue is exhausted.
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    /// The caller's pacing said stop (the mirror was stopped or lost its connection).
    #[error("interrupted")]
    Interrupted,
}

impl SendError {
    fn from_io(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::NotFound {
            SendError::Vanished
        } else {
            SendError::Unreadable(error)
        }
    }
}

/// What the target holds of a file, to diff against.
#[derive(Clone, Debug)]
pub struct TargetFile {
    /// Its size.
    pub len: u64,
    /// Its block hashes (64 KiB blocks) from block 0; shorter than the file if unknown at the end.
    pub hashes: Vec<BlockHash>,
}

/// Makes the target's `path` equal to the source file: the whole file when `target` is
/// `None`, else only the blocks whose hashes differ. Ends with the file's attributes and
/// records the shadow. `pace` runs before each block is queued: it may wait (a mirror holds
/// back so it never fills a bounded queue) or say stop.
///
/// # Errors
///
/// The file vanished or cannot be read (the caller skips and reports it), the queue is
/// exhausted, or `pace` said stop.
pub fn send_file(
    pipe: &Pipe,
    path: &RelPath,
    target: Option<&TargetFile>,
    producer: Producer,
    pace: &mut dyn FnMut() -> bool,
) -> Result<FileSent, SendError> {
    let local = path.to_local(&pipe.root);
    let file = File::open(&local).map_err(SendError::from_io)?;
    let metadata = file.metadata().map_err(SendError::from_io)?;
    if !metadata.is_file() {
        return Err(SendError::Vanished); // replaced by something else since it was listed
    }
    let meta = Meta::from_metadata(&metadata);
    let size = metadata.size();
    let mut sent = FileSent::default();
    let block = u64::from(BLOCK_SIZE);

    // Sparse files are sent as their data regions; their holes stay holes on the target.
    let sparse = metadata.blocks().saturating_mul(512) < size;
    let ranges = match (target, sparse) {
        (None, true) => data_ranges(&file).map_err(SendError::from_io)?,
        _ => std::iter::once(0..size).collect(),
    };
    let mut hashes: Vec<BlockHash> =
        Vec::with_capacity(usize::try_from(size / block + 1).unwrap_or(0));
    let mut hashes_complete = !sparse || target.is_some();
    let mut unannounced = 0;

    let mut first: Option<Operation> = match target {
        None => Some(Operation::CreateFile { path: path.clone(), meta }),
        Some(_) => None,
    };
    for range in ranges {
        let mut offset = range.start - range.start % block;
        while offset < range.end {
            let len = (range.end - offset).min(block);
            // Read straight into the encoded operation: the data is not copied again on its
            // way to the queue.
            let (write, data) =
                EncodedOp::encode_write(path, offset, usize::try_from(len).unwrap_or(0), |buf| {
                    append_at(&file, buf, offset)
                })
                .map_err(SendError::from_io)?;
            let data_len = data.len() as u64;
            if data_len == 0 {
                break; // the file shrank while we read it: capture will send the rest
            }
            let hash = BlockHash::of(&write.0[data]);
            let index = usize::try_from(offset / block).unwrap_or(usize::MAX);
            if hashes.len() == index {
                hashes.push(hash);
            } else {
                hashes_complete = false;
            }
            let unchanged = target
                .is_some_and(|t| offset + data_len <= t.len && t.hashes.get(index) == Some(&hash));
            if unchanged {
                sent.bytes_skipped += data_len;
            } else {
                if !pace() {
                    return Err(SendError::Interrupted);
                }
                pipe.lock().enqueue_write(first.take(), write, data_len, producer)?;
                // The sender is woken for every few blocks and at the end of the file, not
                // for each block: a wake-up per 64 KiB costs more than the block.
                unannounced += 1;
                if unannounced == BLOCKS_PER_WAKE {
                    pipe.notify();
                    unannounced = 0;
                }
                sent.bytes_sent += data_len;
                sent.changed = true;
            }
            offset += len;
        }
    }
    let mut state = pipe.lock();
    let mut tail: Vec<Operation> = first.take().into_iter().collect();
    match target {
        // A hole at the end of a sparse file, or a file that shrank: set the exact length.
        None if sparse => tail.push(Operation::Truncate { path: path.clone(), len: size }),
        Some(t) if t.len != size => {
            tail.push(Operation::Truncate { path: path.clone(), len: size })
        }
        _ => {}
    }
    tail.push(Operation::SetMeta { path: path.clone(), meta });
    sent.changed |= tail.len() > 1 || target.is_none();
    state.enqueue(tail, producer)?;
    let shadow =
        Shadow::File { size, mtime_ns: meta.mtime_ns, hashes: hashes_complete.then_some(hashes) };
    state.shadow.insert(path.clone(), shadow);
    drop(state);
    pipe.notify();
    Ok(sent)
}

/// The target's view of a file according to the shadow, if it is complete enough to diff.
pub fn shadow_target(pipe: &Pipe, path: &RelPath) -> Option<TargetFile> {
    match pipe.lock().shadow.get(path) {
        Some(Shadow::File { size, hashes: Some(hashes), .. }) => {
            Some(TargetFile { len: *size, hashes: hashes.clone() })
        }
        _ => None,
    }
}
