//! The key layout of the log tree: every record kind lives in one sled tree, told apart by the
//! key's first byte. Numbers are big-endian so that byte order is numeric order and sled's
//! ordered iteration walks a job's events, the global order and a job's checkpoints in order.
//!
//! | record | key | value |
//! |---|---|---|
//! | event | `e` job (16) seq (8) | rmp-serde (named) `EventEnvelope` |
//! | global index | `g` first position (8) | runs of job (16) first seq (8) count (8) |
//! | head | `h` job (16) | seq (8) hash of the last stored value (32) |
//! | checkpoint | `c` job (16) seq (8) | rmp-serde (named) checkpoint record |
//! | meta | `m` name | see [`META_FORMAT`], [`META_VERSION`], [`META_POSITION`] |
//!
//! The global index holds one record per append batch, not one per event: the record keyed by
//! position `p` lists the batch's requests as runs, `(job, s, n)` meaning positions `p..p+n`
//! are that job's seqs `s..s+n`, the next run continuing at `p+n`. sled's cost is per key
//! inserted (leaves split every 16 entries), so a key per event would double the cost of an
//! append for an index nobody reads one position at a time (see the crate header).

use understudy_core::{ChainHash, JobId, Position, Seq};

/// First byte of event keys.
pub(crate) const EVENT: u8 = b'e';
/// First byte of global index keys.
pub(crate) const GLOBAL: u8 = b'g';
/// First byte of head keys.
pub(crate) const HEAD: u8 = b'h';
/// First byte of checkpoint keys.
pub(crate) const CHECKPOINT: u8 = b'c';

/// The format marker: its value is [`FORMAT_NAME`]. A sled database without it is not ours.
pub(crate) const META_FORMAT: &[u8] = b"mformat";
/// The marker's value.
pub(crate) const FORMAT_NAME: &[u8] = b"understudy-event-log";
/// The on-disk format version, u32 big-endian. Bumped when the key layout changes.
pub(crate) const META_VERSION: &[u8] = b"mversion";
/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The last position assigned, u64 big-endian, written in every append batch.
pub(crate) const META_POSITION: &[u8] = b"mposition";

/// Length of an event or checkpoint key: kind, job, seq.
const JOB_SEQ_KEY_LEN: usize = 1 + 16 + 8;

fn job_seq_key(kind: u8, job: JobId, seq: Seq) -> [u8; JOB_SEQ_KEY_LEN] {
    let mut key = [0u8; JOB_SEQ_KEY_LEN];
    key[0] = kind;
    key[1..17].copy_from_slice(job.as_bytes());
    key[17..].copy_from_slice(&seq.0.to_be_bytes());
    key
}

fn job_key(kind: u8, job: JobId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = kind;
    key[1..].copy_from_slice(job.as_bytes());
    key
}

/// The key of a job's event.
pub(crate) fn event_key(job: JobId, seq: Seq) -> [u8; JOB_SEQ_KEY_LEN] {
    job_seq_key(EVENT, job, seq)
}

/// The sequence number in an event key, if the key has the event key's shape.
pub(crate) fn seq_of_event_key(key: &[u8]) -> Option<Seq> {
    if key.len() != JOB_SEQ_KEY_LEN || key[0] != EVENT {
        return None;
    }
    let seq: [u8; 8] = key[17..].try_into().ok()?;
    Some(Seq(u64::from_be_bytes(seq)))
}

/// The key of a job's checkpoint taken after `seq`.
pub(crate) fn checkpoint_key(job: JobId, seq: Seq) -> [u8; JOB_SEQ_KEY_LEN] {
    job_seq_key(CHECKPOINT, job, seq)
}

/// The sequence number in a checkpoint key.
pub(crate) fn seq_of_checkpoint_key(key: &[u8]) -> Option<Seq> {
    if key.len() != JOB_SEQ_KEY_LEN || key[0] != CHECKPOINT {
        return None;
    }
    let seq: [u8; 8] = key[17..].try_into().ok()?;
    Some(Seq(u64::from_be_bytes(seq)))
}

/// The key of a job's head record.
pub(crate) fn head_key(job: JobId) -> [u8; 17] {
    job_key(HEAD, job)
}

/// The job a head key belongs to.
pub(crate) fn job_of_head_key(key: &[u8]) -> Option<JobId> {
    if key.len() != 17 || key[0] != HEAD {
        return None;
    }
    let job: [u8; 16] = key[1..].try_into().ok()?;
    Some(JobId::from_bytes(job))
}

/// A head record: the job's last seq and the hash of the value stored under it.
pub(crate) fn head_value(seq: Seq, hash: ChainHash) -> [u8; 40] {
    let mut value = [0u8; 40];
    value[..8].copy_from_slice(&seq.0.to_be_bytes());
    value[8..].copy_from_slice(&hash.0);
    value
}

/// Parses a head record.
pub(crate) fn parse_head_value(value: &[u8]) -> Option<(Seq, ChainHash)> {
    if value.len() != 40 {
        return None;
    }
    let seq: [u8; 8] = value[..8].try_into().ok()?;
    let hash: [u8; 32] = value[8..].try_into().ok()?;
    Some((Seq(u64::from_be_bytes(seq)), ChainHash(hash)))
}

/// The global index key of a position.
pub(crate) fn global_key(position: Position) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = GLOBAL;
    key[1..].copy_from_slice(&position.0.to_be_bytes());
    key
}

/// The position in a global index key.
pub(crate) fn position_of_global_key(key: &[u8]) -> Option<Position> {
    if key.len() != 9 || key[0] != GLOBAL {
        return None;
    }
    let position: [u8; 8] = key[1..].try_into().ok()?;
    Some(Position(u64::from_be_bytes(position)))
}

/// One run of a global index record: `count` consecutive events of `job` from `first_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) job: JobId,
    pub(crate) first_seq: Seq,
    pub(crate) count: u64,
}

/// Length of one run in a global index record.
const RUN_LEN: usize = 16 + 8 + 8;

/// Encodes a global index record.
pub(crate) fn global_value(runs: &[Run]) -> Vec<u8> {
    let mut value = Vec::with_capacity(runs.len() * RUN_LEN);
    for run in runs {
        value.extend_from_slice(run.job.as_bytes());
        value.extend_from_slice(&run.first_seq.0.to_be_bytes());
        value.extend_from_slice(&run.count.to_be_bytes());
    }
    value
}

/// Parses a global index record; `None` if it is damaged (wrong length, an empty run).
pub(crate) fn parse_global_value(value: &[u8]) -> Option<Vec<Run>> {
    if value.is_empty() || !value.len().is_multiple_of(RUN_LEN) {
        return None;
    }
    value
        .chunks_exact(RUN_LEN)
        .map(|chunk| {
            let job: [u8; 16] = chunk[..16].try_into().ok()?;
            let first_seq = parse_u64(&chunk[16..24])?;
            let count = parse_u64(&chunk[24..])?;
            (count > 0).then_some(Run {
                job: JobId::from_bytes(job),
                first_seq: Seq(first_seq),
                count,
            })
        })
        .collect()
}

/// The number of positions a global index record covers (saturating: a damaged record must
/// not overflow).
pub(crate) fn positions_in(runs: &[Run]) -> u64 {
    runs.iter().fold(0u64, |sum, r| sum.saturating_add(r.count))
}

/// Parses a big-endian u64 meta value.
pub(crate) fn parse_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// Parses a big-endian u32 meta value.
pub(crate) fn parse_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_numeric_order() {
        let job = JobId::from_parts(1, [3; 10]);
        let keys: Vec<_> =
            [1u64, 2, 255, 256, 65_536, u64::MAX].iter().map(|s| event_key(job, Seq(*s))).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let positions: Vec<_> =
            [1u64, 255, 256, 1 << 40].iter().map(|p| global_key(Position(*p))).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn keys_and_values_round_trip() {
        let job = JobId::from_parts(7, [9; 10]);
        assert_eq!(seq_of_event_key(&event_key(job, Seq(300))), Some(Seq(300)));
        assert_eq!(seq_of_checkpoint_key(&checkpoint_key(job, Seq(4))), Some(Seq(4)));
        assert_eq!(seq_of_event_key(&checkpoint_key(job, Seq(4))), None);
        assert_eq!(job_of_head_key(&head_key(job)), Some(job));
        assert_eq!(position_of_global_key(&global_key(Position(12))), Some(Position(12)));
        let runs = [
            Run { job, first_seq: Seq(5), count: 3 },
            Run { job: JobId::from_parts(8, [1; 10]), first_seq: Seq(1), count: 1 },
        ];
        assert_eq!(parse_global_value(&global_value(&runs)).as_deref(), Some(&runs[..]));
        assert_eq!(positions_in(&runs), 4);
        assert_eq!(parse_global_value(&[]), None);
        assert_eq!(
            parse_global_value(&global_value(&[Run { job, first_seq: Seq(1), count: 0 }])),
            None
        );
        let hash = ChainHash([4; 32]);
        assert_eq!(parse_head_value(&head_value(Seq(8), hash)), Some((Seq(8), hash)));
        assert_eq!(parse_head_value(&[1, 2, 3]), None);
    }
}
