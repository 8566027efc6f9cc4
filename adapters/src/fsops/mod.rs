//! File operations: the [`Operation`]s the source sends, the [`TargetRoot`] jail that applies
//! them on the target, and the source-side helpers the mirror and change capture read with.
//!
//! - [`path`]: [`RelPath`], a normalised path below a job root, as raw bytes;
//! - [`op`]: [`Operation`], [`Meta`], [`Entry`] (all serde, for the wire);
//! - [`target`]: [`TargetRoot`], which resolves every path relative to a handle of the root
//!   without following symlinks, applies operations, answers the mirror's queries and makes
//!   the result durable with [`TargetRoot::sync`];
//! - [`source`]: [`scan`], [`read_at`], [`append_at`], [`data_ranges`], [`block_hashes`], [`diff_blocks`],
//!   [`compare_attributes`].
//!
//! Everything here is synchronous file I/O: call it from a blocking thread
//! (`tokio::task::spawn_blocking`), not from an async task.

pub mod op;
pub mod path;
pub mod source;
pub mod target;

pub use op::{Applied, Entry, EntryKind, Meta, Operation, SpecialKind};
pub use path::RelPath;
pub use source::{
    AttrComparison, BLOCK_SIZE, BlockDiff, BlockHash, BlockHashes, Scan, append_at, block_hashes,
    block_hashes_range, compare_attributes, data_ranges, diff_blocks, diff_hashes, list_folder,
    read_at, scan,
};
pub use target::{PendingSync, Resolution, TargetRoot};
