//! The crate's errors. Each says what was wrong and what to do, and each is classified for
//! retry ([`Retry`]) so the engine can turn it into a [`Failure`] without guessing.

use std::io;
use std::path::PathBuf;

use rustix::io::Errno;
use thiserror::Error;
use understudy_core::{Failure, Retry};

use crate::fsops::RelPath;

/// Why bytes are not a valid [`RelPath`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PathError {
    /// Empty path.
    #[error("the path is empty: name a file or directory below the job root")]
    Empty,
    /// Leading `/`.
    #[error("the path {path:?} is absolute: paths sent to a target are relative to the job root")]
    Absolute {
        /// The path, lossily.
        path: String,
    },
    /// A NUL byte.
    #[error("the path {path:?} contains a NUL byte, which no Unix file name can hold")]
    Nul {
        /// The path, lossily.
        path: String,
    },
    /// `a//b`, `a/`.
    #[error("the path {path:?} has an empty component (a doubled or trailing '/')")]
    EmptyComponent {
        /// The path, lossily.
        path: String,
    },
    /// `.` or `..`.
    #[error(
        "the path {path:?} has a '.' or '..' component: paths must be normalised and stay below \
         the job root"
    )]
    DotComponent {
        /// The path, lossily.
        path: String,
    },
    /// A single name holding `/`.
    #[error("{name:?} is not a single file name: it contains '/'")]
    NotAName {
        /// The name, lossily.
        name: String,
    },
}

impl PathError {
    /// Never retried: the same bytes are invalid forever.
    pub fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

/// Why an operation was not applied on the target.
///
/// Nothing is changed when an operation is refused ([`ApplyError::Escapes`],
/// [`ApplyError::Invalid`]); for the I/O classes the operation may have been partly applied (a
/// write cut short by a full disk) and applying it again from the start is always correct.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The path would leave the target root: through a symlink on the target (in an
    /// intermediate directory, or as the final component of an operation that would follow
    /// it), or a path that is not normalised.
    #[error(
        "refused {path}: {reason}, which could lead outside the target root; nothing was changed. \
         Remove the symlink on the target if it should not be there"
    )]
    Escapes {
        /// The operation's path.
        path: RelPath,
        /// What was found.
        reason: &'static str,
    },
    /// An operation that can never be applied (removing the root, an empty symlink target).
    #[error("invalid operation on {path}: {reason}")]
    Invalid {
        /// The operation's path.
        path: RelPath,
        /// Why.
        reason: String,
    },
    /// ENOSPC / EDQUOT.
    #[error(
        "the target volume is full ({source}) while trying to {op} {path}: free space or raise \
         the quota on the target; the operation is retried"
    )]
    DiskFull {
        /// What was being done.
        op: &'static str,
        /// The operation's path.
        path: RelPath,
        /// The OS error.
        source: io::Error,
    },
    /// EACCES / EPERM / EBUSY / ETXTBSY / EROFS: something on the target holds or forbids it.
    #[error(
        "cannot {op} {path} on the target ({source}): it is in use or not permitted; the \
         operation is retried every 3 s until it succeeds"
    )]
    Blocked {
        /// What was being done.
        op: &'static str,
        /// The operation's path.
        path: RelPath,
        /// The OS error.
        source: io::Error,
    },
    /// ENOENT: what the operation needs is not on the target, normally because the source
    /// changed it meanwhile (a file deleted or renamed between its change and its read).
    #[error(
        "cannot {op} {path}: it is missing on the target ({source}); the source probably changed \
         it meanwhile and should resend it"
    )]
    Missing {
        /// What was being done.
        op: &'static str,
        /// The operation's path.
        path: RelPath,
        /// The OS error.
        source: io::Error,
    },
    /// EEXIST / ENOTDIR / EISDIR / ENOTEMPTY: the target holds something of another kind
    /// where the operation expects its own.
    #[error(
        "cannot {op} {path}: something of another kind is in the way on the target ({source}); \
         a mirror of that folder repairs it"
    )]
    Conflict {
        /// What was being done.
        op: &'static str,
        /// The operation's path.
        path: RelPath,
        /// The OS error.
        source: io::Error,
    },
    /// The target root itself cannot be created or opened.
    #[error(
        "cannot open the target root {root}: {source}; check that the path is right and the \
         engine may write there"
    )]
    RootUnavailable {
        /// The root's local path.
        root: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Any other OS error.
    #[error("cannot {op} {path} on the target: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The operation's path.
        path: RelPath,
        /// The OS error.
        source: io::Error,
    },
}

/// How an OS error on the target is classified (see [`classify_errno`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrnoClass {
    /// ENOSPC, EDQUOT.
    DiskFull,
    /// EACCES, EPERM, EBUSY, ETXTBSY, EROFS.
    Blocked,
    /// ENOENT.
    Missing,
    /// EEXIST, ENOTDIR, EISDIR, ENOTEMPTY.
    Conflict,
    /// ELOOP: a symlink was met where `O_NOFOLLOW` or `RESOLVE_NO_SYMLINKS` forbids one.
    Symlink,
    /// EINTR, EAGAIN: try again now.
    Interrupted,
    /// Anything else.
    Other,
}

/// Classifies an OS error met while applying an operation.
pub fn classify_errno(err: &io::Error) -> ErrnoClass {
    let Some(errno) = Errno::from_io_error(err) else {
        return ErrnoClass::Other;
    };
    match errno {
        Errno::NOSPC | Errno::DQUOT => ErrnoClass::DiskFull,
        Errno::ACCESS | Errno::PERM | Errno::BUSY | Errno::TXTBSY | Errno::ROFS => {
            ErrnoClass::Blocked
        }
        Errno::NOENT => ErrnoClass::Missing,
        Errno::EXIST | Errno::NOTDIR | Errno::ISDIR | Errno::NOTEMPTY => ErrnoClass::Conflict,
        Errno::LOOP => ErrnoClass::Symlink,
        Errno::INTR | Errno::AGAIN => ErrnoClass::Interrupted,
        _ => ErrnoClass::Other,
    }
}

impl ApplyError {
    /// Wraps an OS error met while doing `op` on `path`, in the variant its errno calls for.
    pub fn from_io(op: &'static str, path: &RelPath, source: io::Error) -> Self {
        let path = path.clone();
        match classify_errno(&source) {
            ErrnoClass::DiskFull => ApplyError::DiskFull { op, path, source },
            ErrnoClass::Blocked => ApplyError::Blocked { op, path, source },
            ErrnoClass::Missing => ApplyError::Missing { op, path, source },
            ErrnoClass::Conflict => ApplyError::Conflict { op, path, source },
            ErrnoClass::Symlink => ApplyError::Escapes { path, reason: "a symlink is in the way" },
            ErrnoClass::Interrupted | ErrnoClass::Other => ApplyError::Io { op, path, source },
        }
    }

    /// Whether and when retrying can help.
    ///
    /// - disk full, blocked, conflict: [`Retry::Persistent`] (the caller retries every 3 s and
    ///   tells the user; the world has to change);
    /// - missing: [`Retry::Temporary`] (a race with the source, which resends);
    /// - escapes, invalid: [`Retry::Permanent`];
    /// - other I/O: [`Retry::Temporary`] for EINTR/EAGAIN, else [`Retry::Persistent`].
    pub fn retry(&self) -> Retry {
        match self {
            ApplyError::Escapes { .. } | ApplyError::Invalid { .. } => Retry::Permanent,
            ApplyError::Missing { .. } => Retry::Temporary,
            ApplyError::DiskFull { .. }
            | ApplyError::Blocked { .. }
            | ApplyError::Conflict { .. }
            | ApplyError::RootUnavailable { .. } => Retry::Persistent,
            ApplyError::Io { source, .. } => match classify_errno(source) {
                ErrnoClass::Interrupted => Retry::Temporary,
                _ => Retry::Persistent,
            },
        }
    }

    /// The operation's path (none when the root itself is unavailable).
    pub fn path(&self) -> Option<&RelPath> {
        Some(match self {
            ApplyError::RootUnavailable { .. } => return None,
            ApplyError::Escapes { path, .. }
            | ApplyError::Invalid { path, .. }
            | ApplyError::DiskFull { path, .. }
            | ApplyError::Blocked { path, .. }
            | ApplyError::Missing { path, .. }
            | ApplyError::Conflict { path, .. }
            | ApplyError::Io { path, .. } => path,
        })
    }

    /// The classified failure, for a completion or a `Nack`.
    pub fn to_failure(&self) -> Failure {
        Failure { retry: self.retry(), message: self.to_string() }
    }
}

/// A failure reading the source tree.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The entry disappeared between being listed and being read.
    #[error(
        "{path} vanished from the source while {op}; change capture will report what became of it"
    )]
    Vanished {
        /// What was being done.
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Any other I/O error.
    #[error("cannot read {path} on the source while {op}: {source}; check its permissions")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The scan root is not a directory.
    #[error("the source root {path} is not a directory")]
    NotADirectory {
        /// The local path.
        path: PathBuf,
    },
}

impl SourceError {
    pub(crate) fn from_io(op: &'static str, path: PathBuf, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            SourceError::Vanished { op, path, source }
        } else {
            SourceError::Io { op, path, source }
        }
    }

    /// Vanished entries are [`Retry::Temporary`] (a race); others [`Retry::Persistent`].
    pub fn retry(&self) -> Retry {
        match self {
            SourceError::Vanished { .. } => Retry::Temporary,
            SourceError::Io { .. } | SourceError::NotADirectory { .. } => Retry::Persistent,
        }
    }
}

/// A failure of the wire protocol. Any of them closes the connection it happened on, and only
/// that one.
#[derive(Debug, Error)]
pub enum WireError {
    /// A length prefix over the maximum frame size (checked before anything is allocated).
    #[error(
        "the peer sent a frame of {len} bytes, over the {max}-byte limit; closing the \
         connection. If it repeats, the engines disagree about the protocol: upgrade the older one"
    )]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A message this engine would have to send is over the limit (the caller should split the
    /// batch).
    #[error("a {kind} message encodes to {len} bytes, over the {max}-byte frame limit: split it")]
    MessageTooLarge {
        /// The message kind.
        kind: &'static str,
        /// Its encoded length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The payload did not decode as a message.
    #[error(
        "the peer sent a frame that does not decode ({reason}); closing the connection. If it \
         repeats, check that both engines run compatible versions"
    )]
    Malformed {
        /// The decoder's complaint.
        reason: String,
    },
    /// Encoding failed (a bug: every message type encodes).
    #[error("cannot encode a {kind} message: {reason}")]
    Encode {
        /// The message kind.
        kind: &'static str,
        /// The encoder's complaint.
        reason: String,
    },
    /// Compression or decompression failed, or a compressed frame lied about its size.
    #[error("compressed frame rejected: {reason}; closing the connection")]
    Compression {
        /// Why.
        reason: String,
    },
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The engines speak different protocol versions.
    #[error(
        "peer speaks understudy protocol {peer}, this engine speaks {ours}: upgrade the older engine"
    )]
    VersionMismatch {
        /// This engine's version.
        ours: u32,
        /// The peer's version.
        peer: u32,
    },
    /// The peer refused the connection and said why.
    #[error("the peer refused the connection: {reason}")]
    Refused {
        /// The peer's reason.
        reason: String,
    },
    /// Authentication failed.
    #[error("authentication failed: {reason}")]
    AuthFailed {
        /// Why.
        reason: String,
    },
    /// A valid message arrived where the protocol does not allow it.
    #[error("protocol error: expected {expected}, got {got}")]
    Unexpected {
        /// What the protocol expected.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
}

impl WireError {
    /// - connection drops and I/O errors: [`Retry::Temporary`] (reconnect);
    /// - malformed or oversized frames, compression and sequencing errors:
    ///   [`Retry::Persistent`] (reconnecting may help after corruption; if it repeats the user
    ///   must look);
    /// - version mismatch, refusal, failed authentication, our own encoding bugs:
    ///   [`Retry::Permanent`].
    pub fn retry(&self) -> Retry {
        match self {
            WireError::Closed | WireError::Io(_) => Retry::Temporary,
            WireError::FrameTooLarge { .. }
            | WireError::Malformed { .. }
            | WireError::Compression { .. }
            | WireError::Unexpected { .. } => Retry::Persistent,
            WireError::MessageTooLarge { .. }
            | WireError::Encode { .. }
            | WireError::VersionMismatch { .. }
            | WireError::Refused { .. }
            | WireError::AuthFailed { .. } => Retry::Permanent,
        }
    }

    /// The classified failure.
    pub fn to_failure(&self) -> Failure {
        Failure { retry: self.retry(), message: self.to_string() }
    }
}

/// Why the source queue cannot take an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// Memory is full and the disk queue is disabled.
    MemoryFullDiskDisabled {
        /// The memory limit.
        memory_limit_bytes: u64,
    },
    /// Memory is full and the disk queue is at its limit.
    DiskLimit {
        /// The disk limit.
        disk_limit_bytes: u64,
    },
    /// Spilling would leave less than the minimum free space on the queue's volume.
    MinFree {
        /// Free space now.
        free_bytes: u64,
        /// The configured minimum.
        min_free_bytes: u64,
    },
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::MemoryFullDiskDisabled { memory_limit_bytes } => write!(
                f,
                "the memory queue is full ({memory_limit_bytes} bytes) and the disk queue is disabled"
            ),
            FullReason::DiskLimit { disk_limit_bytes } => {
                write!(f, "the disk queue reached its limit of {disk_limit_bytes} bytes")
            }
            FullReason::MinFree { free_bytes, min_free_bytes } => write!(
                f,
                "the queue's volume has {free_bytes} bytes free and must keep {min_free_bytes}"
            ),
        }
    }
}

/// A failure of the source queue.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The queue is exhausted: the caller disconnects (and later remirrors what changed).
    #[error(
        "the source queue is exhausted: {reason}. The job disconnects and remirrors what changed; \
         raise the queue limits or free space on the queue's volume"
    )]
    Full {
        /// Which limit was hit.
        reason: FullReason,
    },
    /// Items must be pushed with increasing sequence numbers (a bug in the caller).
    #[error("queue item {seq} pushed after {last}: sequence numbers must increase")]
    OutOfOrder {
        /// The pushed sequence number.
        seq: u64,
        /// The last one pushed.
        last: u64,
    },
    /// The queue label is unusable as a file name prefix.
    #[error("invalid queue label {label:?}: use letters, digits, '-', '_' and '.' only")]
    InvalidLabel {
        /// The label.
        label: String,
    },
    /// `flush_to_disk` with the disk queue disabled.
    #[error("the disk queue is disabled, so the memory queue cannot be flushed to disk")]
    DiskDisabled,
    /// A segment file is damaged.
    #[error("queue segment {path} is damaged: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error on a segment or the queue directory.
    #[error("queue I/O error while {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl QueueError {
    /// Full and I/O: [`Retry::Persistent`]; the rest [`Retry::Permanent`].
    pub fn retry(&self) -> Retry {
        match self {
            QueueError::Full { .. } | QueueError::Io { .. } | QueueError::Corrupt { .. } => {
                Retry::Persistent
            }
            QueueError::OutOfOrder { .. }
            | QueueError::InvalidLabel { .. }
            | QueueError::DiskDisabled => Retry::Permanent,
        }
    }

    /// The classified failure.
    pub fn to_failure(&self) -> Failure {
        Failure { retry: self.retry(), message: self.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.raw_os_error())
    }

    #[test]
    fn errno_classes_follow_the_design() {
        let p = RelPath::new("f").unwrap();
        for (e, retry) in [
            (Errno::NOSPC, Retry::Persistent),
            (Errno::DQUOT, Retry::Persistent),
            (Errno::ACCESS, Retry::Persistent),
            (Errno::PERM, Retry::Persistent),
            (Errno::BUSY, Retry::Persistent),
            (Errno::TXTBSY, Retry::Persistent),
            (Errno::NOENT, Retry::Temporary),
            (Errno::LOOP, Retry::Permanent),
            (Errno::INTR, Retry::Temporary),
            (Errno::IO, Retry::Persistent),
        ] {
            let err = ApplyError::from_io("write", &p, errno(e));
            assert_eq!(err.retry(), retry, "{e:?}: {err}");
        }
        assert!(matches!(
            ApplyError::from_io("w", &p, errno(Errno::NOSPC)),
            ApplyError::DiskFull { .. }
        ));
        assert!(matches!(
            ApplyError::from_io("w", &p, errno(Errno::DQUOT)),
            ApplyError::DiskFull { .. }
        ));
        assert!(matches!(
            ApplyError::from_io("w", &p, errno(Errno::TXTBSY)),
            ApplyError::Blocked { .. }
        ));
        assert!(matches!(
            ApplyError::from_io("w", &p, errno(Errno::NOENT)),
            ApplyError::Missing { .. }
        ));
        assert!(matches!(
            ApplyError::from_io("w", &p, errno(Errno::LOOP)),
            ApplyError::Escapes { .. }
        ));
        // A non-OS error is "other".
        assert_eq!(classify_errno(&io::Error::other("x")), ErrnoClass::Other);
    }

    #[test]
    fn version_mismatch_says_what_to_do() {
        let e = WireError::VersionMismatch { ours: 1, peer: 2 };
        assert_eq!(
            e.to_string(),
            "peer speaks understudy protocol 2, this engine speaks 1: upgrade the older engine"
        );
        assert_eq!(e.retry(), Retry::Permanent);
    }
}
