//! The vocabulary of the data plane: [`Operation`]s, [`Meta`]data, and what a directory
//! [`Entry`] is. All of it goes over the wire (rmp-serde, named fields).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::RelPath;

/// The attributes preserved on the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`); the file type
    /// is carried by the operation or [`EntryKind`], never here.
    pub mode: u32,
    /// Owner. Applied only when the target engine runs as root.
    pub uid: u32,
    /// Group. Applied only when the target engine runs as root.
    pub gid: u32,
    /// Last access, in nanoseconds since the Unix epoch (negative before 1970).
    pub atime_ns: i64,
    /// Last modification, in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Size in bytes (regular files; informational for other kinds, never applied by
    /// [`Operation::SetMeta`]: sizes change with [`Operation::Truncate`]).
    pub size_bytes: u64,
}

impl Meta {
    /// The attributes of `lstat`-style metadata.
    pub fn from_metadata(m: &fs::Metadata) -> Self {
        Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            atime_ns: join_ns(m.atime(), m.atime_nsec()),
            mtime_ns: join_ns(m.mtime(), m.mtime_nsec()),
            size_bytes: m.size(),
        }
    }

    pub(crate) fn from_stat(st: &rustix::fs::Stat) -> Self {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime_ns: join_ns(st.st_atime, i64::try_from(st.st_atime_nsec).unwrap_or(0)),
            mtime_ns: join_ns(st.st_mtime, i64::try_from(st.st_mtime_nsec).unwrap_or(0)),
            size_bytes: u64::try_from(st.st_size).unwrap_or(0),
        }
    }
}

/// Seconds and nanoseconds to nanoseconds, saturating (the i64 range reaches year 2262).
pub(crate) fn join_ns(secs: i64, nsecs: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

/// Nanoseconds to a timespec (`tv_nsec` always in `0..1e9`, also before 1970).
pub(crate) fn split_ns(ns: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    }
}

/// What kind of file an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket: reported, and skipped unless an option says otherwise.
    Special(SpecialKind),
}

/// The special file kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpecialKind {
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl EntryKind {
    /// The kind of `lstat`-style metadata.
    pub fn from_file_type(t: fs::FileType) -> Self {
        if t.is_symlink() {
            EntryKind::Symlink
        } else if t.is_dir() {
            EntryKind::Dir
        } else if t.is_file() {
            EntryKind::File
        } else if t.is_block_device() {
            EntryKind::Special(SpecialKind::BlockDevice)
        } else if t.is_char_device() {
            EntryKind::Special(SpecialKind::CharDevice)
        } else if t.is_fifo() {
            EntryKind::Special(SpecialKind::Fifo)
        } else {
            EntryKind::Special(SpecialKind::Socket)
        }
    }

    pub(crate) fn from_raw_mode(mode: u32) -> Self {
        use rustix::fs::FileType;
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            FileType::BlockDevice => EntryKind::Special(SpecialKind::BlockDevice),
            FileType::CharacterDevice => EntryKind::Special(SpecialKind::CharDevice),
            FileType::Fifo => EntryKind::Special(SpecialKind::Fifo),
            FileType::Socket | FileType::Unknown => EntryKind::Special(SpecialKind::Socket),
        }
    }
}

/// One file, directory, symlink or special file, with what the mirror needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where, relative to the root it was found under.
    pub path: RelPath,
    /// What it is.
    pub kind: EntryKind,
    /// Its attributes.
    pub meta: Meta,
    /// Inode number: with `dev`, identifies hard links (`nlink > 1`).
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// Number of hard links.
    pub nlink: u64,
    /// Allocated 512-byte blocks (`st_blocks`): less than the size for sparse files.
    pub blocks: u64,
    /// A symlink's target, as stored (never followed).
    #[serde(default, with = "crate::bytes_serde::option")]
    pub link_target: Option<Vec<u8>>,
}

impl Entry {
    /// Builds an entry from `lstat`-style metadata.
    pub fn from_metadata(path: RelPath, m: &fs::Metadata, link_target: Option<Vec<u8>>) -> Self {
        Entry {
            path,
            kind: EntryKind::from_file_type(m.file_type()),
            meta: Meta::from_metadata(m),
            ino: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
            blocks: m.blocks(),
            link_target,
        }
    }

    // `struct stat` field widths differ across architectures (nlink is u32 on aarch64): the
    // conversions are identities on some of them only.
    #[allow(clippy::useless_conversion)]
    pub(crate) fn from_stat(
        path: RelPath,
        st: &rustix::fs::Stat,
        link_target: Option<Vec<u8>>,
    ) -> Self {
        Entry {
            path,
            kind: EntryKind::from_raw_mode(st.st_mode),
            meta: Meta::from_stat(st),
            ino: u64::from(st.st_ino),
            dev: u64::from(st.st_dev),
            nlink: u64::from(st.st_nlink),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
            link_target,
        }
    }
}

/// One change to apply on the target. Every path is relative to the job's target root.
///
/// Operations are idempotent where the target can tell (creating a directory that exists,
/// removing what is absent, linking what is already linked): after a reconnect the source
/// resends everything the target had not acknowledged, some of which may already be applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Create a directory (and any missing parents) or, if it exists, set its attributes.
    ///
    /// The mode is applied with owner `rwx` added so that contents can be created in it; send
    /// [`Operation::SetMeta`] after its contents for the exact mode and times (as tar does:
    /// creating children changes a directory's mtime anyway).
    MakeDir {
        /// Where.
        path: RelPath,
        /// Its attributes.
        meta: Meta,
    },
    /// Create a regular file (and any missing parents) or truncate an existing one to zero.
    ///
    /// An existing file with other hard links is unlinked first rather than truncated, so the
    /// other names keep their data. A new file is created owned by the target engine with
    /// mode 0600; an existing one gets `meta` with owner write added, so the writes that
    /// follow can open it. Either way, send [`Operation::SetMeta`] after the file's last
    /// write: that sets its attributes.
    CreateFile {
        /// Where.
        path: RelPath,
        /// Its attributes.
        meta: Meta,
    },
    /// Write bytes at an offset of an existing regular file (extending it if needed).
    Write {
        /// Which file.
        path: RelPath,
        /// Byte offset.
        offset: u64,
        /// The bytes (decoded from an [`EncodedOp`](crate::wire::EncodedOp), a slice of it).
        #[serde(with = "crate::bytes_serde::shared")]
        data: Bytes,
    },
    /// Set a regular file's length (extending makes a hole).
    Truncate {
        /// Which file.
        path: RelPath,
        /// New length in bytes.
        len: u64,
    },
    /// Deallocate a range of a regular file, keeping its size: the range reads as zeros.
    PunchHole {
        /// Which file.
        path: RelPath,
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Set mode, owner and times exactly, without following a symlink (a symlink's own
    /// owner and times are set; Linux has no symlink modes).
    SetMeta {
        /// What (the root is allowed).
        path: RelPath,
        /// The attributes (`size_bytes` is ignored).
        meta: Meta,
    },
    /// Rename a file, symlink or directory (a whole subtree in one step), replacing what is at
    /// `to` as `rename(2)` does. Missing parents of `to` are created.
    Rename {
        /// Old path.
        from: RelPath,
        /// New path.
        to: RelPath,
    },
    /// Remove a file, a symlink (not what it points to), or a directory with everything in it.
    /// Removing what is absent succeeds.
    Remove {
        /// What.
        path: RelPath,
    },
    /// Create a symlink whose target is stored as-is and never followed on the target. An
    /// existing non-directory at `path` is replaced.
    Symlink {
        /// Where the link goes.
        path: RelPath,
        /// What it points to (any bytes but NUL; relative or absolute).
        #[serde(with = "crate::bytes_serde")]
        target: Vec<u8>,
    },
    /// Make `path` another name of the file at `existing` (same inode). An existing
    /// non-directory at `path` is replaced.
    HardLink {
        /// The new name.
        path: RelPath,
        /// The existing name.
        existing: RelPath,
    },
}

impl Operation {
    /// The variant name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::MakeDir { .. } => "MakeDir",
            Operation::CreateFile { .. } => "CreateFile",
            Operation::Write { .. } => "Write",
            Operation::Truncate { .. } => "Truncate",
            Operation::PunchHole { .. } => "PunchHole",
            Operation::SetMeta { .. } => "SetMeta",
            Operation::Rename { .. } => "Rename",
            Operation::Remove { .. } => "Remove",
            Operation::Symlink { .. } => "Symlink",
            Operation::HardLink { .. } => "HardLink",
        }
    }

    /// The path the operation changes (`to` for a rename, the new name for a hard link).
    pub fn path(&self) -> &RelPath {
        match self {
            Operation::MakeDir { path, .. }
            | Operation::CreateFile { path, .. }
            | Operation::Write { path, .. }
            | Operation::Truncate { path, .. }
            | Operation::PunchHole { path, .. }
            | Operation::SetMeta { path, .. }
            | Operation::Remove { path }
            | Operation::Symlink { path, .. }
            | Operation::HardLink { path, .. } => path,
            Operation::Rename { to, .. } => to,
        }
    }

    /// An upper bound of the operation's encoded size, for batching operations into frames
    /// without encoding them twice. Generous: paths and data plus 128 bytes of overhead.
    pub fn encoded_len_bound(&self) -> usize {
        let payload = match self {
            Operation::Write { path, data, .. } => path.as_bytes().len() + data.len(),
            Operation::Symlink { path, target } => path.as_bytes().len() + target.len(),
            Operation::Rename { from, to } => from.as_bytes().len() + to.as_bytes().len(),
            Operation::HardLink { path, existing } => {
                path.as_bytes().len() + existing.as_bytes().len()
            }
            other => other.path().as_bytes().len(),
        };
        payload + 128
    }
}

/// What applying an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The target changed.
    Changed,
    /// The target already matched (a replayed operation after a reconnect, removing what is
    /// absent); nothing was written.
    Unchanged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_split_and_join_round_trip_before_and_after_1970() {
        for ns in
            [0_i64, 1, 999_999_999, 1_000_000_000, -1, -1_500_000_000, 1_700_000_000_123_456_789]
        {
            let ts = split_ns(ns);
            assert!((0..1_000_000_000).contains(&ts.tv_nsec));
            assert_eq!(join_ns(ts.tv_sec, ts.tv_nsec), ns);
        }
    }

    #[test]
    fn encoded_len_bound_holds() {
        let path = RelPath::new("a/b/c").unwrap();
        let ops = [
            Operation::Write { path: path.clone(), offset: u64::MAX, data: vec![7; 1000].into() },
            Operation::SetMeta {
                path: path.clone(),
                meta: Meta {
                    mode: 0o7777,
                    uid: u32::MAX,
                    gid: u32::MAX,
                    atime_ns: i64::MIN,
                    mtime_ns: i64::MAX,
                    size_bytes: u64::MAX,
                },
            },
            Operation::Rename { from: path.clone(), to: path.clone() },
            Operation::PunchHole { path, offset: u64::MAX, len: u64::MAX },
        ];
        for op in ops {
            let len = rmp_serde::to_vec_named(&op).unwrap().len();
            assert!(
                len <= op.encoded_len_bound(),
                "{}: {len} > {}",
                op.name(),
                op.encoded_len_bound()
            );
        }
    }
}
