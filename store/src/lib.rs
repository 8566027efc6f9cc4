//! understudy's event log on sled: the embedded [`EventStore`](understudy_core::EventStore) and
//! [`CheckpointStore`](understudy_core::CheckpointStore) behind the daemon.
//!
//! It behaves exactly like core's `MemEventStore` (the model it is property-tested against),
//! except that it survives restarts and crashes and computes real hashes.
//!
//! # Layout
//!
//! One sled database per data directory, every record in its default tree, the kind told by the
//! key's first byte (details and encodings in `src/keys.rs`); numbers are big-endian so byte
//! order is numeric order:
//!
//! ```text
//! e ++ job (16) ++ seq (8)  -> envelope (rmp-serde, named)     the history, the source of truth
//! g ++ first position (8)   -> runs of (job, first seq, count)  the global order, one per append
//! h ++ job                  -> seq ++ BLAKE3 of the last value  the job's head
//! c ++ job ++ seq           -> checkpoint record                a cache of folded state
//! m ++ format|version|position                                  marker, position counter
//! ```
//!
//! # Invariants
//!
//! - A job's events sit at seqs `1..=head`, contiguous; `h` names the last one and its hash.
//! - Each envelope's `prev_hash` is BLAKE3 of the exact bytes stored for the job's previous
//!   event (genesis, all zeros, for seq 1): the chain covers the stored bytes, not a
//!   re-encoding, so codec changes and upcasters never disturb it.
//! - Positions are assigned one per event, in commit order, from 1 without gaps. The `g` record
//!   keyed by position `p` covers the positions from `p` up to the next record's key: its runs
//!   list, in order, which job's seqs they are. Events, their `g` record, the heads and the
//!   counter only ever change together.
//! - A directory is a store only if it carries the format marker (`m format` =
//!   `understudy-event-log`, `m version` = 1); anything else is refused, never written to.
//!
//! # Write path
//!
//! 1. [`EventStore::append`](understudy_core::EventStore::append) takes the store's writer
//!    lock, reads each job's head, checks the request's `expected` (several requests for one
//!    job chain their expectations, as in `MemEventStore`), builds the envelopes (seq,
//!    position, `prev_hash`), encodes them, hashes the bytes, and puts every event, the batch's
//!    `g` record, the heads and the counter into one `sled::Batch`. A failed expectation drops
//!    the unapplied batch and returns `Ok(Err(Conflict))`: nothing is written.
//! 2. `Tree::apply_batch` applies it under sled's global write lock and seals it as one batch
//!    in sled's log: readers never see part of it, and recovery replays all of it or none.
//! 3. The writer lock is released and `flush()` fsyncs the log (sled alone only syncs every
//!    500 ms). Only then does `append` return, and only then does the durable position move,
//!    wake `wait_for` and become visible to `read_all` and `last_position`: a subscriber never
//!    sees an event a crash could take back. Flushing outside the writer lock lets concurrent
//!    appenders build their batch meanwhile and share fsyncs (group commit). (`head` and
//!    `scan_job` read sled directly, so another thread can see a batch in the instant between
//!    its apply and its flush; the engine, which appends and then reads, never does.)
//!
//! The writer lock makes this handle the only writer: another handle on the same directory,
//! in this process or another, cannot exist, because sled's `flock` on `<dir>/db` refuses it
//! ([`StoreError::Locked`](understudy_core::StoreError::Locked)). An `Io` error from `append`
//! leaves the batch's fate unknown (as with any database whose fsync fails): the daemon stops.
//! sled's I/O threads release the lock a moment after a handle is dropped, so reopening a
//! directory this process just closed waits for that (up to 3 s) instead of reporting it locked.
//!
//! Checkpoints are written without a flush: a lost checkpoint only costs replay time. They are
//! flushed on a clean drop.
//!
//! ## Why not a sled transaction, nor a CAS per event, nor an index key per event
//!
//! Measured on the 2-core development machine (`understudy bench event-log` and earlier
//! probes, 1,000-event batches over ten jobs, 400-byte envelopes), sled's cost is almost all
//! per key inserted: its leaves split every 16 entries, and each insert logs a delta.
//!
//! - A multi-key transaction buys nothing here: sled 0.34 runs a transaction's closure under
//!   the same global write lock as `apply_batch` (`concurrency_control::write`), and its
//!   `TransactionalTree::insert` also reads the old value of every key it writes. A
//!   process-level writer lock around an `apply_batch` gives the same serializability for less.
//! - DESIGN.md §5 sketches a compare-and-swap on the empty `job ++ seq` slot. That guards one
//!   event of one job; a batch spans jobs and must move heads, the index and the counter with
//!   its events, all or nothing.
//! - One `g` key per event (position -> job, seq) measured 36-56k events/s, typically 45-50k;
//!   one `g` record per batch (runs of consecutive seqs) 53-86k, typically 75-85k, with less
//!   disk. `read_all` finds the record holding its first position with one reverse seek and
//!   walks on from there.
//! - sled's `segment_size` of 4 MiB instead of 512 KiB would add about a third again, but
//!   doubles the disk used and becomes part of the on-disk format (sled refuses another value
//!   on reopen); the default is kept.
//!
//! # Recovery
//!
//! Opening replays sled's log. A crash leaves each append batch whole or absent, never partial:
//! every acknowledged append is present (it was flushed), an unacknowledged one may or may not
//! be, and the log is always a clean prefix of contiguous seqs with a consistent chain. No
//! repair step runs, because the derived records (`g`, `h`, the counter) are written in the
//! same atomic batch as the events they describe. (`tests/crash.rs` kills a writer with SIGKILL
//! mid-append and checks exactly this.)
//!
//! # Reading and checking the chain
//!
//! [`EventStore::scan_job`](understudy_core::EventStore::scan_job) walks `e ++ job` keys from
//! the requested seq, checks each record (no gap, nothing beyond the head, it decodes, it names
//! the job and seq it is stored under), checks each link (`prev_hash` against BLAKE3 of the
//! previous stored value, read first when the scan starts past seq 1), and at the end checks the
//! head record against the last value, which catches an edited or removed last event. An
//! envelope is delivered only once the next link (or the head) vouches for it, so an edited
//! event is reported, not delivered; on the first violation the scan returns
//! [`StoreError::Corrupt`](understudy_core::StoreError::Corrupt) with the seq and a plain-words
//! `why`, after every good envelope before it. Other jobs are unaffected.
//! A long scan (4,096 events or more) is a three-stage pipeline: one helper thread reads and
//! hashes, a second decodes and checks each record, the calling thread checks the links and
//! visits, in order. A replay through the job machine measured 620-910k events/s this way,
//! against 560-660k with decoding on the calling thread and 440-530k on one thread. `read_all` decodes through the global index and checks that each
//! event is the one indexed (job, seq and position); it does not check the chain (an audit
//! does that per job).
//!
//! # Codec
//!
//! `src/codec.rs`: rmp-serde *named* encoding; every value goes through [`decode_envelope`],
//! the one place upcasters for old schema versions live. Unknown fields are ignored, never
//! refused. The golden bytes of every event variant are in `tests/golden/`.
//!
//! # Forensic helpers
//!
//! [`SledEventStore::raw_event`], [`SledEventStore::raw_put_event`] and
//! [`SledEventStore::raw_remove_event`] read and change stored bytes behind the chain's back.
//! They exist for tests and tamper-detection drills; nothing in the product writes with them.

mod codec;
mod error;
mod keys;
mod scan;
mod store;

pub use codec::{chain_hash, decode_envelope, encode_envelope};
pub use error::CodecError;
pub use store::SledEventStore;

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::SledEventStore>();
    }
}
