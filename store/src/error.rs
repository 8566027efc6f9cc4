//! The crate's own error (the codec's) and the mapping of sled's errors to core's
//! [`StoreError`], which is what every public method returns.

use std::path::Path;

use understudy_core::StoreError;

/// A stored value that cannot be turned into an envelope, or an envelope that cannot be stored.
///
/// Handling: the store reports it as [`understudy_core::Corruption`] (reading) or
/// [`StoreError::Io`] (writing); its text is the `why` an operator reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The envelope could not be encoded (a bug: every event type is encodable).
    #[error("cannot encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not a MessagePack envelope of a schema this build knows.
    #[error("cannot decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// Written by a newer understudy.
    #[error(
        "cannot decode: written with schema version {found}, newer than this build reads ({current}): upgrade understudy"
    )]
    TooNew {
        /// The version in the stored value.
        found: u16,
        /// The version this build writes.
        current: u16,
    },
    /// Written with an old schema version that no upcaster handles.
    #[error(
        "cannot decode: written with schema version {found}, which this build has no upcaster for"
    )]
    NoUpcaster {
        /// The version in the stored value.
        found: u16,
    },
}

/// A sled failure while doing `what`.
pub(crate) fn io(what: &str, error: &sled::Error) -> StoreError {
    StoreError::Io(format!("{what}: {error}"))
}

/// The error for a data directory another process (or another handle) holds.
pub(crate) fn locked(dir: &Path) -> StoreError {
    StoreError::Locked(format!(
        "data directory {} is in use by another understudy process (is a daemon running?): stop it, or ask \
         the daemon through its API",
        dir.display()
    ))
}

/// Whether sled's open failed because another handle holds the database's file lock.
///
/// sled 0.34.7 (`config.rs`, `try_lock`) takes `flock(LOCK_EX | LOCK_NB)` on `<dir>/db` and on
/// failure returns `Error::Io` of kind `Other` whose text starts "could not acquire lock on" and
/// embeds the OS error (`WouldBlock`) only as text. Matching the text is the only way to tell;
/// the version is pinned (`=0.34.7`) and `tests/open.rs` checks it against a second process.
pub(crate) fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}
