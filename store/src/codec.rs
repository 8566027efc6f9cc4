//! The codec: envelopes as rmp-serde *named* maps, one decoding entry point with an upcaster
//! per old schema version, the chain hash, and the checkpoint record.
//!
//! Named encoding (field names in the bytes) is what lets events grow: a reader ignores fields
//! it does not know and fills missing ones from `#[serde(default)]`. Positional encoding would
//! break on the first added field. Nothing here uses `deny_unknown_fields`, on purpose.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use understudy_core::event::SCHEMA_VERSION;
use understudy_core::{ChainHash, Checkpoint, EventEnvelope, Seq};

use crate::error::CodecError;

// When core bumps `SCHEMA_VERSION`, the values already stored keep the old version: add an arm
// for it in `decode_version` (decode the frozen old types, convert them), then move this check.
const _: () = assert!(
    SCHEMA_VERSION == 1,
    "SCHEMA_VERSION changed: add an upcaster arm for the previous version in store/src/codec.rs decode_version"
);

/// Encodes an envelope as it is stored: a MessagePack map with field names.
///
/// # Errors
///
/// Only if serde refuses a value, which the event types never make it do.
pub fn encode_envelope(envelope: &EventEnvelope) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(envelope)?)
}

/// Decodes a stored value into a current envelope, upcasting older schema versions.
///
/// The envelope keeps the `schema_version` it was written with, so a reader can tell an
/// upcast event from a native one.
///
/// # Errors
///
/// The bytes are not an envelope, or one of a schema version this build cannot read.
pub fn decode_envelope(bytes: &[u8]) -> Result<EventEnvelope, CodecError> {
    // Fast path: nearly every value is of the current version and decodes as it is. Only when
    // that fails, or names another version, is the version looked at on its own.
    match rmp_serde::from_slice::<EventEnvelope>(bytes) {
        Ok(envelope) if envelope.schema_version == SCHEMA_VERSION => Ok(envelope),
        Ok(envelope) => decode_version(envelope.schema_version, bytes),
        Err(error) => match peek_schema_version(bytes) {
            Some(version) if version != SCHEMA_VERSION => decode_version(version, bytes),
            _ => Err(error.into()),
        },
    }
}

/// Decodes the bytes of a given schema version: the one place upcasters are listed.
fn decode_version(version: u16, bytes: &[u8]) -> Result<EventEnvelope, CodecError> {
    match version {
        SCHEMA_VERSION => Ok(rmp_serde::from_slice(bytes)?),
        // Version 2 will add here: `1 => Ok(v1::Envelope::decode(bytes)?.upcast())`, with the
        // version-1 types frozen in a `v1` module.
        newer if newer > SCHEMA_VERSION => {
            Err(CodecError::TooNew { found: newer, current: SCHEMA_VERSION })
        }
        older => Err(CodecError::NoUpcaster { found: older }),
    }
}

/// The schema version of a stored value, read without the rest of it.
fn peek_schema_version(bytes: &[u8]) -> Option<u16> {
    #[derive(Deserialize)]
    struct VersionOnly {
        schema_version: u16,
    }
    rmp_serde::from_slice::<VersionOnly>(bytes).ok().map(|v| v.schema_version)
}

/// The chain hash of a stored value: BLAKE3 of its bytes exactly as stored.
///
/// Hashing the bytes rather than a re-encoding keeps the chain independent of the codec: an
/// upcast or re-encoded envelope would hash differently, the stored bytes never do.
pub fn chain_hash(bytes: &[u8]) -> ChainHash {
    ChainHash(*blake3::hash(bytes).as_bytes())
}

/// The version of the checkpoint record below. A record of another version is skipped.
const CHECKPOINT_FORMAT: u16 = 1;

/// How a checkpoint is stored: the state with the seq it folds up to and a format number.
#[derive(Serialize)]
struct CheckpointRecordRef<'a, S> {
    format: u16,
    seq: Seq,
    state: &'a S,
}

#[derive(Deserialize)]
struct CheckpointRecord<S> {
    format: u16,
    seq: Seq,
    state: S,
}

/// Encodes a checkpoint record.
pub(crate) fn encode_checkpoint<S: Serialize>(
    checkpoint: &Checkpoint<S>,
) -> Result<Vec<u8>, CodecError> {
    let record = CheckpointRecordRef {
        format: CHECKPOINT_FORMAT,
        seq: checkpoint.seq,
        state: &checkpoint.state,
    };
    Ok(rmp_serde::to_vec_named(&record)?)
}

/// Decodes a checkpoint record; `None` if it was written by an incompatible version (a
/// checkpoint is a cache: the caller replays from further back instead).
pub(crate) fn decode_checkpoint<S: DeserializeOwned>(bytes: &[u8]) -> Option<Checkpoint<S>> {
    let record: CheckpointRecord<S> = rmp_serde::from_slice(bytes).ok()?;
    (record.format == CHECKPOINT_FORMAT)
        .then_some(Checkpoint { seq: record.seq, state: record.state })
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use understudy_core::{EventMetadata, JobEvent, JobId, Position};

    use super::*;

    fn envelope(schema_version: u16) -> EventEnvelope {
        EventEnvelope {
            job_id: JobId::from_parts(1, [1; 10]),
            seq: Seq(1),
            position: Position(1),
            recorded_at: DateTime::UNIX_EPOCH,
            schema_version,
            metadata: EventMetadata::engine(),
            event: JobEvent::Initialized,
            prev_hash: ChainHash::GENESIS,
        }
    }

    #[test]
    fn current_version_round_trips() {
        let bytes = encode_envelope(&envelope(SCHEMA_VERSION)).unwrap();
        assert_eq!(decode_envelope(&bytes).unwrap(), envelope(SCHEMA_VERSION));
    }

    #[test]
    fn newer_and_unknown_old_versions_are_named_in_the_error() {
        let newer = encode_envelope(&envelope(SCHEMA_VERSION + 1)).unwrap();
        let error = decode_envelope(&newer).unwrap_err().to_string();
        assert!(error.contains("newer than this build"), "{error}");
        let older = encode_envelope(&envelope(0)).unwrap();
        let error = decode_envelope(&older).unwrap_err().to_string();
        assert!(error.contains("no upcaster"), "{error}");
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff", b"\x81\xa3job", &[0x80; 100]] {
            assert!(decode_envelope(bytes).unwrap_err().to_string().starts_with("cannot decode"));
        }
    }

    #[test]
    fn checkpoints_of_another_format_or_type_read_as_none() {
        let bytes = encode_checkpoint(&Checkpoint { seq: Seq(3), state: 42u64 }).unwrap();
        assert_eq!(decode_checkpoint::<u64>(&bytes), Some(Checkpoint { seq: Seq(3), state: 42 }));
        assert_eq!(decode_checkpoint::<String>(&bytes), None);
        let future =
            rmp_serde::to_vec_named(&CheckpointRecordRef { format: 2, seq: Seq(3), state: &42u64 })
                .unwrap();
        assert_eq!(decode_checkpoint::<u64>(&future), None);
    }
}
