//! [`TargetRoot`]: applies [`Operation`]s strictly inside a job's target root (the jail).
//!
//! # Resolution
//!
//! Every path is resolved relative to a directory handle of the root opened once, never as a
//! string joined onto the root's path, and never following a symlink:
//!
//! 1. Where the kernel has `openat2` (Linux 5.6+), a path's *parent directory* is opened in one
//!    call with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the kernel
//!    itself refuses any symlink met on the way (`ELOOP`) and any step out of the root
//!    (`EXDEV`), atomically with the lookup, so a symlink planted concurrently cannot win a race.
//! 2. Otherwise (old kernels, seccomp filters that answer `ENOSYS`/`EPERM`), the parent is
//!    reached component by component with `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)`, each
//!    result checked with `fstat` to be a real directory. Each step is relative to the previous
//!    handle, so a rename of an outer directory during the walk cannot redirect it either.
//!
//! The final component is then acted on through the parent handle with calls that do not
//! follow it (`O_NOFOLLOW` opens, `AT_SYMLINK_NOFOLLOW`, `unlinkat`, `renameat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`). An operation that would have to go through a symlink, in an
//! intermediate directory or as the final component of a write, is refused with
//! [`ApplyError::Escapes`] before anything is changed. `..`, absolute paths and NUL bytes never
//! get this far: [`RelPath`] cannot hold them, and decoding one from the wire fails.
//!
//! # Durability
//!
//! [`TargetRoot::apply`] does not sync anything: it is meant to be called for many operations
//! in a row. [`TargetRoot::sync`] makes everything applied so far durable (`syncfs` on the
//! root's file system); **the caller acknowledges a sequence number to the source only after a
//! `sync` that followed its `apply` returned `Ok`** ("acknowledgement means durable on the
//! target").

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FallocateFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps,
};
use rustix::io::Errno;

use super::op::split_ns;
use super::{Applied, Entry, Meta, Operation, RelPath};
use crate::error::ApplyError;

/// How paths are resolved below the root (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it, else
    /// [`Resolution::Walk`].
    Auto,
    /// Component by component with `O_NOFOLLOW | O_DIRECTORY` opens (for kernels without
    /// `openat2`; selectable so that tests cover it on every kernel).
    Walk,
}

/// A job's target root, opened as a directory handle, and everything applied below it.
#[derive(Debug)]
pub struct TargetRoot {
    path: PathBuf,
    root: OwnedFd,
    use_openat2: bool,
    /// Owners are applied only by root; other users cannot give files away.
    privileged: bool,
    /// What changed since the last sync, for the fsync fallback when `syncfs` is unavailable
    /// (kept only then: recording every path costs time on the hot path).
    touched: BTreeSet<RelPath>,
    /// Set (by whichever thread finishes a sync) once `syncfs` is found unavailable.
    syncfs_unavailable: Arc<AtomicBool>,
    /// The file the last write went to: a file arrives as a run of 64 KiB writes, and opening
    /// it (with the jail's checks) for each of them would cost more than the write.
    write_handle: Option<(RelPath, File)>,
}

/// A sync begun by [`TargetRoot::begin_sync`], to finish on any thread.
#[derive(Debug)]
pub struct PendingSync {
    what: ToSync,
    unavailable: Arc<AtomicBool>,
}

#[derive(Debug)]
enum ToSync {
    /// The root's file system, with `syncfs` on the root.
    FileSystem(OwnedFd),
    /// Without `syncfs`: every file and folder touched since the last sync.
    Each(Vec<(RelPath, OwnedFd)>),
}

impl PendingSync {
    /// Waits until what was applied before the sync began is durable.
    ///
    /// # Errors
    ///
    /// The file system reports a failure to write back (`EIO`, `ENOSPC`): some data may be
    /// lost, so nothing may be acknowledged.
    pub fn finish(self) -> Result<(), ApplyError> {
        let files = match &self.what {
            ToSync::FileSystem(root) => {
                return match rfs::syncfs(root) {
                    Ok(()) => Ok(()),
                    Err(Errno::NOSYS) | Err(Errno::PERM) => {
                        // No syncfs here (an old kernel, a sandbox): nothing was recorded to fsync
                        // one by one yet, so this once sync everything; from now on the root
                        // records what each round touches. The flag goes up before the sync, so
                        // whatever is applied meanwhile is either recorded or covered by it.
                        self.unavailable.store(true, Ordering::SeqCst);
                        rfs::sync();
                        Ok(())
                    }
                    Err(e) => Err(ApplyError::from_io("sync", &RelPath::root(), io_err(e))),
                };
            }
            ToSync::Each(files) => files,
        };
        for (path, fd) in files {
            rfs::fsync(fd).map_err(|e| ApplyError::from_io("fsync", path, io_err(e)))?;
        }
        Ok(())
    }
}

/// A directory handle: the root's own, or one opened below it.
enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
        }
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Flags for opening a regular file of the target for writing: never through a final symlink,
/// never blocking on a FIFO someone left there, never acquiring a controlling terminal.
fn write_flags() -> OFlags {
    OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
}

impl TargetRoot {
    /// Opens (creating it and its parents if missing) the directory `dir` as a target root,
    /// choosing the best resolution the kernel offers.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ApplyError> {
        Self::open_with(dir, Resolution::Auto)
    }

    /// [`TargetRoot::open`] with a chosen resolution strategy.
    pub fn open_with(dir: impl AsRef<Path>, resolution: Resolution) -> Result<Self, ApplyError> {
        let path = dir.as_ref().to_path_buf();
        let unavailable =
            |source: io::Error| ApplyError::RootUnavailable { root: path.clone(), source };
        std::fs::create_dir_all(&path).map_err(unavailable)?;
        // The root's own path may go through symlinks: the operator chose it. Below it, none.
        let root =
            rfs::open(&path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| unavailable(io_err(e)))?;
        let use_openat2 = resolution == Resolution::Auto && openat2_works(root.as_fd());
        tracing::debug!(root = %path.display(), use_openat2, "target root opened");
        Ok(TargetRoot {
            path,
            root,
            use_openat2,
            privileged: rustix::process::geteuid().is_root(),
            touched: BTreeSet::new(),
            syncfs_unavailable: Arc::new(AtomicBool::new(false)),
            write_handle: None,
        })
    }

    /// The root's local path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether paths are resolved with `openat2` (else component by component).
    pub fn uses_openat2(&self) -> bool {
        self.use_openat2
    }

    /// Applies one operation inside the root. See [`Operation`] for each one's semantics and
    /// the module documentation for resolution and durability: nothing is durable until
    /// [`TargetRoot::sync`].
    pub fn apply(&mut self, op: &Operation) -> Result<Applied, ApplyError> {
        // Any operation but a write to, or the attributes of, the cached file may change what
        // its path names.
        let keeps_handle = match op {
            Operation::Write { path, .. }
            | Operation::Truncate { path, .. }
            | Operation::PunchHole { path, .. }
            | Operation::SetMeta { path, .. } => {
                self.write_handle.as_ref().is_some_and(|(cached, _)| cached == path)
            }
            _ => false,
        };
        if !keeps_handle {
            self.write_handle = None;
        }
        let result = match op {
            Operation::MakeDir { path, meta } => self.make_dir(path, meta),
            Operation::CreateFile { path, meta } => self.create_file(path, meta),
            Operation::Write { path, offset, data } => self.write(path, *offset, data),
            Operation::Truncate { path, len } => self.truncate(path, *len),
            Operation::PunchHole { path, offset, len } => self.punch_hole(path, *offset, *len),
            Operation::SetMeta { path, meta } => self.set_meta(path, meta),
            Operation::Rename { from, to } => self.rename(from, to),
            Operation::Remove { path } => self.remove(path),
            Operation::Symlink { path, target } => self.symlink(path, target),
            Operation::HardLink { path, existing } => self.hard_link(path, existing),
        };
        if result.is_ok() && self.syncfs_unavailable.load(Ordering::SeqCst) {
            self.touch(op);
        }
        result
    }

    /// Makes everything applied so far durable: `syncfs` on the root's file system, falling
    /// back to `fsync` of each file and directory touched since the last sync where `syncfs`
    /// is unavailable.
    ///
    /// The caller acknowledges operations to the source only after this returns `Ok`. An
    /// error (`EIO`, `ENOSPC` from delayed allocation) means some of the data may be lost:
    /// acknowledge nothing and let the source resend.
    ///
    /// Limitation: `syncfs` covers the root's file system only; a different file system
    /// mounted inside the root is not synced by it.
    pub fn sync(&mut self) -> Result<(), ApplyError> {
        self.begin_sync()?.finish()
    }

    /// [`TargetRoot::sync`] in two halves: this one, cheap, on the applying thread (a handle
    /// on the root, or without `syncfs` handles on what was touched), and
    /// [`PendingSync::finish`], which waits for the disk and may run on another thread while
    /// applying goes on. What it makes durable is at least everything applied before this.
    ///
    /// # Errors
    ///
    /// A touched file or folder cannot be opened (the fallback only).
    pub fn begin_sync(&mut self) -> Result<PendingSync, ApplyError> {
        let unavailable = Arc::clone(&self.syncfs_unavailable);
        if !unavailable.load(Ordering::SeqCst) {
            let root = rustix::io::dup(&self.root)
                .map_err(|e| ApplyError::from_io("sync", &RelPath::root(), io_err(e)))?;
            return Ok(PendingSync { what: ToSync::FileSystem(root), unavailable });
        }
        let touched = std::mem::take(&mut self.touched);
        let mut files = Vec::with_capacity(touched.len());
        for path in &touched {
            let fd = if path.is_root() {
                rustix::io::dup(&self.root)
            } else {
                let Ok((parent, name)) = self.parent(path, false) else { continue };
                match rfs::openat(
                    &parent,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => Ok(fd),
                    // Renamed or removed since: its new place is in the set too.
                    Err(Errno::NOENT) | Err(Errno::LOOP) => continue,
                    Err(e) => Err(e),
                }
            };
            match fd {
                Ok(fd) => files.push((path.clone(), fd)),
                Err(e) => {
                    // Keep the set so a retry opens everything again.
                    let err = ApplyError::from_io("fsync", path, io_err(e));
                    self.touched = touched;
                    return Err(err);
                }
            }
        }
        Ok(PendingSync { what: ToSync::Each(files), unavailable })
    }

    fn touch(&mut self, op: &Operation) {
        let mut add = |p: &RelPath| {
            if let Some(parent) = p.parent() {
                self.touched.insert(parent);
            }
            self.touched.insert(p.clone());
        };
        match op {
            Operation::Rename { from, to } => {
                add(from);
                add(to);
            }
            Operation::HardLink { path, existing } => {
                add(path);
                add(existing);
            }
            other => add(other.path()),
        }
    }

    // ----- queries (for the target side of the mirror) -----

    /// The entry at `path`, or `None` if nothing is there. Symlinks are not followed; their
    /// target is read.
    pub fn stat(&self, path: &RelPath) -> Result<Option<Entry>, ApplyError> {
        if path.is_root() {
            let st =
                rfs::fstat(&self.root).map_err(|e| ApplyError::from_io("stat", path, io_err(e)))?;
            return Ok(Some(Entry::from_stat(path.clone(), &st, None)));
        }
        let (parent, name) = match self.parent(path, false) {
            Ok(p) => p,
            // A missing folder, or a file where a folder would be: nothing is at `path`.
            Err(ApplyError::Missing { .. } | ApplyError::Conflict { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        stat_entry(parent.as_fd(), name, path.clone())
    }

    /// The entries of the directory at `path`, sorted by name bytes (symlinks not followed).
    pub fn list_dir(&self, path: &RelPath) -> Result<Vec<Entry>, ApplyError> {
        let dir = self.open_dir(path)?;
        let mut reader =
            rfs::Dir::read_from(&dir).map_err(|e| ApplyError::from_io("list", path, io_err(e)))?;
        let mut names = Vec::new();
        while let Some(entry) = reader.read() {
            let entry = entry.map_err(|e| ApplyError::from_io("list", path, io_err(e)))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort_unstable();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let child = path
                .join(&name)
                .map_err(|e| ApplyError::Invalid { path: path.clone(), reason: e.to_string() })?;
            // An entry removed between listing and stat is simply not there any more.
            if let Some(entry) = stat_entry(dir.as_fd(), &name, child)? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Opens the regular file at `path` for reading (block hashes for checksum comparison).
    pub fn open_file(&self, path: &RelPath) -> Result<File, ApplyError> {
        let (parent, name) = self.parent(path, false)?;
        let fd = rfs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| final_err("open", path, e))?;
        ensure_regular(&fd, "open", path)?;
        Ok(File::from(fd))
    }

    // ----- resolution -----

    /// Opens the directory `dir` (the root allowed) below the root without following
    /// symlinks, creating missing components when `create` is set. `for_path` names the
    /// operation's path in errors.
    fn dir(
        &self,
        dir: &RelPath,
        create: bool,
        for_path: &RelPath,
    ) -> Result<DirFd<'_>, ApplyError> {
        if dir.is_root() {
            return Ok(DirFd::Root(self.root.as_fd()));
        }
        if self.use_openat2 {
            let how =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            // EAGAIN: a concurrent rename somewhere on the system made the kernel's lookup
            // unsure; it asks to retry. After a few, the walk below is just as safe.
            for _ in 0..4 {
                match rfs::openat2(&self.root, dir.as_bytes(), flags, Mode::empty(), how) {
                    Ok(fd) => return Ok(DirFd::Owned(fd)),
                    Err(Errno::AGAIN) => continue,
                    Err(Errno::LOOP) | Err(Errno::XDEV) => {
                        return Err(ApplyError::Escapes {
                            path: for_path.clone(),
                            reason: "a symlink is in the way of one of its directories",
                        });
                    }
                    // Missing components are created by the walk.
                    Err(Errno::NOENT) if create => break,
                    Err(e) => return Err(dir_err(for_path, e)),
                }
            }
        }
        self.walk(dir, create, for_path)
    }

    fn walk(
        &self,
        dir: &RelPath,
        create: bool,
        for_path: &RelPath,
    ) -> Result<DirFd<'_>, ApplyError> {
        let mut cur = DirFd::Root(self.root.as_fd());
        for comp in dir.components() {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut tries = 0;
            let next = loop {
                tries += 1;
                match rfs::openat(&cur, comp, flags, Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(Errno::NOENT) if create && tries < 3 => {
                        match rfs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                            // EEXIST: created concurrently; open it on the next turn.
                            Ok(()) | Err(Errno::EXIST) => continue,
                            Err(e) => return Err(dir_err(for_path, e)),
                        }
                    }
                    Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                        // Tell a symlink (an escape attempt) from a plain file in the way.
                        return match rfs::statat(&cur, comp, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                                Err(ApplyError::Escapes {
                                    path: for_path.clone(),
                                    reason: "a symlink is in the way of one of its directories",
                                })
                            }
                            _ => Err(dir_err(for_path, e)),
                        };
                    }
                    Err(e) => return Err(dir_err(for_path, e)),
                }
            };
            // With O_PATH | O_NOFOLLOW some kernels hand back the symlink itself instead of
            // ELOOP; make sure what was opened is a directory.
            let st = rfs::fstat(&next).map_err(|e| dir_err(for_path, e))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {}
                FileType::Symlink => {
                    return Err(ApplyError::Escapes {
                        path: for_path.clone(),
                        reason: "a symlink is in the way of one of its directories",
                    });
                }
                _ => return Err(dir_err(for_path, Errno::NOTDIR)),
            }
            cur = DirFd::Owned(next);
        }
        Ok(cur)
    }

    /// The parent directory handle and final name of a non-root path.
    fn parent<'p>(
        &self,
        path: &'p RelPath,
        create: bool,
    ) -> Result<(DirFd<'_>, &'p [u8]), ApplyError> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(ApplyError::Invalid {
                path: path.clone(),
                reason: "the job root itself cannot be the subject of this operation".into(),
            });
        };
        Ok((self.dir(&parent, create, path)?, name))
    }

    /// Opens the directory at `path` itself (root allowed) for reading.
    fn open_dir(&self, path: &RelPath) -> Result<DirFd<'_>, ApplyError> {
        if path.is_root() {
            return Ok(DirFd::Root(self.root.as_fd()));
        }
        let (parent, name) = self.parent(path, false)?;
        let fd = rfs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| final_err("open the folder", path, e))?;
        Ok(DirFd::Owned(fd))
    }

    fn tmp_name(&self, name: &[u8]) -> Vec<u8> {
        // Unique in the process (several roots may share a directory tree) and across
        // processes (the pid).
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp = format!(".understudy-{}-{n}-", std::process::id()).into_bytes();
        // Keep a recognisable tail of the final name, within NAME_MAX.
        let tail = &name[name.len().saturating_sub(64)..];
        tmp.extend_from_slice(tail);
        tmp
    }

    // ----- operations -----

    fn make_dir(&mut self, path: &RelPath, meta: &Meta) -> Result<Applied, ApplyError> {
        let mode = meta.mode | 0o700;
        if path.is_root() {
            self.apply_meta_fd(self.root.as_fd(), meta, mode, path)?;
            return Ok(Applied::Unchanged);
        }
        let (parent, name) = self.parent(path, true)?;
        let applied = match rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => Applied::Changed,
            Err(Errno::EXIST) => match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => Applied::Unchanged,
                    FileType::Symlink => return Err(final_symlink(path)),
                    _ => {
                        return Err(ApplyError::from_io(
                            "create the folder",
                            path,
                            io_err(Errno::EXIST),
                        ));
                    }
                },
                Err(e) => return Err(ApplyError::from_io("create the folder", path, io_err(e))),
            },
            Err(e) => return Err(ApplyError::from_io("create the folder", path, io_err(e))),
        };
        let fd = rfs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| final_err("create the folder", path, e))?;
        self.apply_meta_fd(fd.as_fd(), meta, mode, path)?;
        Ok(applied)
    }

    fn create_file(&mut self, path: &RelPath, meta: &Meta) -> Result<Applied, ApplyError> {
        const OP: &str = "create";
        let (parent, name) = self.parent(path, true)?;
        // Most creates are of a new name (a mirror into an empty folder): try that first, so
        // only a name already taken costs a look at what holds it. O_EXCL does not follow a
        // symlink; what it makes is a new regular file, this engine's, writable (0600): its
        // attributes come with the SetMeta after its data.
        match rfs::openat(
            &parent,
            name,
            write_flags() | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                self.write_handle = Some((path.clone(), File::from(fd)));
                return Ok(Applied::Changed);
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(final_err(OP, path, e)),
        }
        let existing = match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => return Err(final_symlink(path)),
                FileType::Directory => {
                    return Err(ApplyError::from_io(OP, path, io_err(Errno::ISDIR)));
                }
                // Truncating a file with other names would empty them too: give this name a
                // new inode instead.
                FileType::RegularFile if st.st_nlink > 1 => {
                    rfs::unlinkat(&parent, name, AtFlags::empty())
                        .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
                    false
                }
                FileType::RegularFile => true,
                _ => return Err(not_regular(OP, path)),
            },
            Err(Errno::NOENT) => false,
            Err(e) => return Err(ApplyError::from_io(OP, path, io_err(e))),
        };
        let fd = rfs::openat(
            &parent,
            name,
            write_flags() | OFlags::CREATE | OFlags::TRUNC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| final_err(OP, path, e))?;
        ensure_regular(&fd, OP, path)?;
        // An existing file gets its attributes now, with owner write for the writes (one
        // that vanished since the first try is new after all, as above).
        if existing {
            self.apply_meta_fd(fd.as_fd(), meta, meta.mode | 0o200, path)?;
        }
        // Its data comes next.
        self.write_handle = Some((path.clone(), File::from(fd)));
        Ok(Applied::Changed)
    }

    /// Opens an existing regular file for writing, never through a symlink.
    /// The file at `path`, opened for writing through the jail, or the one already open.
    fn open_for_write(&mut self, op: &'static str, path: &RelPath) -> Result<&File, ApplyError> {
        if self.write_handle.as_ref().is_none_or(|(cached, _)| cached != path) {
            let (parent, name) = self.parent(path, false)?;
            let fd = rfs::openat(&parent, name, write_flags(), Mode::empty())
                .map_err(|e| final_err(op, path, e))?;
            ensure_regular(&fd, op, path)?;
            self.write_handle = Some((path.clone(), File::from(fd)));
        }
        Ok(&self.write_handle.as_ref().expect("opened above").1)
    }

    fn write(&mut self, path: &RelPath, offset: u64, data: &[u8]) -> Result<Applied, ApplyError> {
        let file = self.open_for_write("write", path)?;
        file.write_all_at(data, offset).map_err(|e| ApplyError::from_io("write", path, e))?;
        Ok(Applied::Changed)
    }

    fn truncate(&mut self, path: &RelPath, len: u64) -> Result<Applied, ApplyError> {
        let file = self.open_for_write("truncate", path)?;
        file.set_len(len).map_err(|e| ApplyError::from_io("truncate", path, e))?;
        Ok(Applied::Changed)
    }

    fn punch_hole(&mut self, path: &RelPath, offset: u64, len: u64) -> Result<Applied, ApplyError> {
        const OP: &str = "punch a hole in";
        let file = self.open_for_write(OP, path)?;
        if len == 0 {
            return Ok(Applied::Unchanged);
        }
        match rfs::fallocate(
            file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(Applied::Changed),
            // File systems without hole punching: the range must still read as zeros, so
            // write them (within the file: punching never extends it).
            Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {
                let size = file.metadata().map_err(|e| ApplyError::from_io(OP, path, e))?.len();
                let end = offset.saturating_add(len).min(size);
                let zeros = vec![0_u8; 64 * 1024];
                let mut at = offset;
                while at < end {
                    let n = usize::try_from(end - at).unwrap_or(usize::MAX).min(zeros.len());
                    file.write_all_at(&zeros[..n], at)
                        .map_err(|e| ApplyError::from_io(OP, path, e))?;
                    at += n as u64;
                }
                Ok(Applied::Changed)
            }
            Err(e) => Err(ApplyError::from_io(OP, path, io_err(e))),
        }
    }

    fn set_meta(&mut self, path: &RelPath, meta: &Meta) -> Result<Applied, ApplyError> {
        const OP: &str = "set the attributes of";
        if path.is_root() {
            self.apply_meta_fd(self.root.as_fd(), meta, meta.mode, path)?;
            return Ok(Applied::Changed);
        }
        // A file's attributes come after its data: the handle its data went through is still
        // open (nothing else touched the path since) and names exactly this regular file.
        if let Some((_, file)) = self.write_handle.take() {
            self.apply_meta_fd(file.as_fd(), meta, meta.mode, path)?;
            return Ok(Applied::Changed);
        }
        let (parent, name) = self.parent(path, false)?;
        // An O_PATH handle names the object itself (a symlink too) without opening it: no
        // device side effects, no read permission needed.
        let fd = rfs::openat(
            &parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        let st = rfs::fstat(&fd).map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        let is_symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
        let (chown, chmod) = self.changes(&st, meta, meta.mode);
        if chown {
            let owner = (rfs::Uid::from_raw(meta.uid), rfs::Gid::from_raw(meta.gid));
            chown_tolerant(
                rfs::chownat(&fd, "", Some(owner.0), Some(owner.1), AtFlags::EMPTY_PATH),
                OP,
                path,
            )?;
        }
        if !is_symlink && chmod {
            // chmod through the handle's /proc magic link reaches exactly the inode opened,
            // even if the name is swapped for a symlink meanwhile (glibc's lchmod does the same).
            let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            match rfs::chmod(proc_path.as_str(), Mode::from_raw_mode(meta.mode)) {
                Ok(()) => {}
                Err(Errno::NOENT) => {
                    // No /proc: open the object itself (regular files and directories only).
                    let flags = OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::NONBLOCK
                        | OFlags::NOCTTY
                        | OFlags::CLOEXEC;
                    let real = rfs::openat(&parent, name, flags, Mode::empty())
                        .map_err(|e| final_err(OP, path, e))?;
                    rfs::fchmod(&real, Mode::from_raw_mode(meta.mode))
                        .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
                }
                Err(e) => return Err(ApplyError::from_io(OP, path, io_err(e))),
            }
        }
        // utimensat does not follow the final component with AT_SYMLINK_NOFOLLOW.
        rfs::utimensat(&parent, name, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        Ok(Applied::Changed)
    }

    fn rename(&mut self, from: &RelPath, to: &RelPath) -> Result<Applied, ApplyError> {
        const OP: &str = "rename";
        if from.is_root() || to.is_root() {
            return Err(ApplyError::Invalid {
                path: from.clone(),
                reason: "the job root cannot be renamed or replaced".into(),
            });
        }
        if from == to {
            return Ok(Applied::Unchanged);
        }
        if to.starts_with(from) {
            return Err(ApplyError::Invalid {
                path: from.clone(),
                reason: format!("cannot move it into itself ({to})"),
            });
        }
        let (from_dir, from_name) = self.parent(from, false)?;
        let (to_dir, to_name) = self.parent(to, true)?;
        match rfs::renameat(&from_dir, from_name, &to_dir, to_name) {
            Ok(()) => Ok(Applied::Changed),
            // Replayed after a reconnect: the rename was applied before the target's last
            // durable sequence was recorded. A real race leaves `to` stale, and the source's
            // attribute pass after a reconnect repairs it.
            Err(Errno::NOENT)
                if rfs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW).is_ok() =>
            {
                Ok(Applied::Unchanged)
            }
            Err(e) => Err(ApplyError::from_io(OP, from, io_err(e))),
        }
    }

    fn remove(&mut self, path: &RelPath) -> Result<Applied, ApplyError> {
        const OP: &str = "remove";
        if path.is_root() {
            return Err(ApplyError::Invalid {
                path: path.clone(),
                reason: "the job root itself is never removed".into(),
            });
        }
        let (parent, name) = match self.parent(path, false) {
            Ok(p) => p,
            // A missing folder, or a file where a folder would be: nothing to remove.
            Err(ApplyError::Missing { .. } | ApplyError::Conflict { .. }) => {
                return Ok(Applied::Unchanged);
            }
            Err(e) => return Err(e),
        };
        let st = match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Applied::Unchanged),
            Err(e) => return Err(ApplyError::from_io(OP, path, io_err(e))),
        };
        let result = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(parent.as_fd(), name)
        } else {
            rfs::unlinkat(&parent, name, AtFlags::empty())
        };
        match result {
            Ok(()) | Err(Errno::NOENT) => Ok(Applied::Changed),
            Err(e) => Err(ApplyError::from_io(OP, path, io_err(e))),
        }
    }

    fn symlink(&mut self, path: &RelPath, target: &[u8]) -> Result<Applied, ApplyError> {
        const OP: &str = "create the symlink";
        if target.is_empty() || target.contains(&0) {
            return Err(ApplyError::Invalid {
                path: path.clone(),
                reason: "a symlink target must be non-empty and hold no NUL byte".into(),
            });
        }
        let (parent, name) = self.parent(path, true)?;
        match rfs::symlinkat(target, &parent, name) {
            Ok(()) => return Ok(Applied::Changed),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(ApplyError::from_io(OP, path, io_err(e))),
        }
        let st = rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => return Err(ApplyError::from_io(OP, path, io_err(Errno::ISDIR))),
            FileType::Symlink
                if rfs::readlinkat(&parent, name, Vec::new())
                    .is_ok_and(|t| t.as_bytes() == target) =>
            {
                return Ok(Applied::Unchanged);
            }
            _ => {}
        }
        // Replace atomically: a new link under a temporary name, renamed over the old entry.
        let tmp = self.tmp_name(name);
        rfs::symlinkat(target, &parent, tmp.as_slice())
            .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        if let Err(e) = rfs::renameat(&parent, tmp.as_slice(), &parent, name) {
            let _ = rfs::unlinkat(&parent, tmp.as_slice(), AtFlags::empty());
            return Err(ApplyError::from_io(OP, path, io_err(e)));
        }
        Ok(Applied::Changed)
    }

    fn hard_link(&mut self, path: &RelPath, existing: &RelPath) -> Result<Applied, ApplyError> {
        const OP: &str = "create the hard link";
        if path.is_root() || existing.is_root() {
            return Err(ApplyError::Invalid {
                path: path.clone(),
                reason: "the job root cannot be hard-linked".into(),
            });
        }
        let (src_dir, src_name) = self.parent(existing, false)?;
        let (dst_dir, dst_name) = self.parent(path, true)?;
        // No AT_SYMLINK_FOLLOW: a symlink at `existing` is linked as itself, never followed.
        match rfs::linkat(&src_dir, src_name, &dst_dir, dst_name, AtFlags::empty()) {
            Ok(()) => return Ok(Applied::Changed),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(ApplyError::from_io(OP, path, io_err(e))),
        }
        let src = rfs::statat(&src_dir, src_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ApplyError::from_io(OP, existing, io_err(e)))?;
        let dst = rfs::statat(&dst_dir, dst_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        if (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino) {
            return Ok(Applied::Unchanged);
        }
        if FileType::from_raw_mode(dst.st_mode) == FileType::Directory {
            return Err(ApplyError::from_io(OP, path, io_err(Errno::ISDIR)));
        }
        let tmp = self.tmp_name(dst_name);
        rfs::linkat(&src_dir, src_name, &dst_dir, tmp.as_slice(), AtFlags::empty())
            .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        if let Err(e) = rfs::renameat(&dst_dir, tmp.as_slice(), &dst_dir, dst_name) {
            let _ = rfs::unlinkat(&dst_dir, tmp.as_slice(), AtFlags::empty());
            return Err(ApplyError::from_io(OP, path, io_err(e)));
        }
        Ok(Applied::Changed)
    }

    /// Whether an object with `st` needs a chown (only when privileged) and a chmod to get
    /// `meta`'s owner and `mode`. What is already right is left alone: each change is a
    /// journalled inode update, and a mirror sets the attributes of every file and folder it
    /// makes. A chown clears setuid/setgid, so the mode is set again after one.
    fn changes(&self, st: &rfs::Stat, meta: &Meta, mode: u32) -> (bool, bool) {
        let chown = self.privileged && (st.st_uid != meta.uid || st.st_gid != meta.gid);
        (chown, chown || st.st_mode & 0o7777 != mode)
    }

    /// Owner (when privileged), mode, then times on an open handle, each only if it differs
    /// ([`TargetRoot::changes`]): chown first because it clears setuid/setgid, times last
    /// because the others change ctime only.
    fn apply_meta_fd(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        mode: u32,
        path: &RelPath,
    ) -> Result<(), ApplyError> {
        const OP: &str = "set the attributes of";
        let st = rfs::fstat(fd).map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        let (chown, chmod) = self.changes(&st, meta, mode);
        if chown {
            chown_tolerant(
                rfs::fchown(
                    fd,
                    Some(rfs::Uid::from_raw(meta.uid)),
                    Some(rfs::Gid::from_raw(meta.gid)),
                ),
                OP,
                path,
            )?;
        }
        if chmod {
            rfs::fchmod(fd, Mode::from_raw_mode(mode))
                .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        }
        rfs::futimens(fd, &timestamps(meta))
            .map_err(|e| ApplyError::from_io(OP, path, io_err(e)))?;
        Ok(())
    }
}

fn timestamps(meta: &Meta) -> Timestamps {
    Timestamps { last_access: split_ns(meta.atime_ns), last_modification: split_ns(meta.mtime_ns) }
}

/// Owners that the target cannot represent (an id outside a user namespace's map: EINVAL; a
/// root-squashing NFS export: EPERM) are logged and skipped rather than blocking replication.
fn chown_tolerant(
    r: rustix::io::Result<()>,
    op: &'static str,
    path: &RelPath,
) -> Result<(), ApplyError> {
    match r {
        Ok(()) => Ok(()),
        Err(e @ (Errno::INVAL | Errno::PERM)) => {
            tracing::warn!(%path, error = %e, "cannot set the owner on the target; keeping the default owner");
            Ok(())
        }
        Err(e) => Err(ApplyError::from_io(op, path, io_err(e))),
    }
}

/// Errors reaching a path's folder.
fn dir_err(for_path: &RelPath, e: Errno) -> ApplyError {
    ApplyError::from_io("reach the folder of", for_path, io_err(e))
}

/// Errors opening a path's final component: ELOOP means it is a symlink.
fn final_err(op: &'static str, path: &RelPath, e: Errno) -> ApplyError {
    match e {
        Errno::LOOP => final_symlink(path),
        e => ApplyError::from_io(op, path, io_err(e)),
    }
}

fn final_symlink(path: &RelPath) -> ApplyError {
    ApplyError::Escapes {
        path: path.clone(),
        reason: "it is a symlink on the target, which is never followed",
    }
}

fn not_regular(op: &'static str, path: &RelPath) -> ApplyError {
    ApplyError::Conflict {
        op,
        path: path.clone(),
        source: io::Error::other("a device, FIFO or socket is in the way on the target"),
    }
}

fn ensure_regular(fd: &OwnedFd, op: &'static str, path: &RelPath) -> Result<(), ApplyError> {
    let st = rfs::fstat(fd).map_err(|e| ApplyError::from_io(op, path, io_err(e)))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(()),
        FileType::Directory => Err(ApplyError::from_io(op, path, io_err(Errno::ISDIR))),
        _ => Err(not_regular(op, path)),
    }
}

fn stat_entry(
    dir: BorrowedFd<'_>,
    name: &[u8],
    path: RelPath,
) -> Result<Option<Entry>, ApplyError> {
    let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(ApplyError::from_io("stat", &path, io_err(e))),
    };
    let link_target = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        match rfs::readlinkat(dir, name, Vec::new()) {
            Ok(t) => Some(t.into_bytes()),
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(ApplyError::from_io("read the symlink", &path, io_err(e))),
        }
    } else {
        None
    };
    Ok(Some(Entry::from_stat(path, &st, link_target)))
}

/// Whether `openat2` with the resolve flags works here (kernels before 5.6 answer ENOSYS;
/// seccomp filters may answer EPERM or ENOSYS).
fn openat2_works(root: BorrowedFd<'_>) -> bool {
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rfs::openat2(root, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), how)
        .is_ok()
}

/// Removes the directory `name` in `parent` with everything below it, never following a
/// symlink (each level is opened with `O_NOFOLLOW` relative to the one above, and symlinks
/// inside are unlinked as entries). Iterative, so depth costs one open handle per level, not
/// stack.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    let open = |dir: BorrowedFd<'_>, name: &[u8]| {
        rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut stack: Vec<(OwnedFd, Vec<u8>)> = vec![(open(parent, name)?, name.to_vec())];
    loop {
        // Unlink the non-directories of the deepest open directory, stopping at its first
        // subdirectory, which is descended into; an empty directory is removed from its parent.
        let next = {
            let Some((dir, _)) = stack.last() else { break };
            let mut descend = None;
            let mut reader = rfs::Dir::read_from(dir)?;
            while let Some(entry) = reader.read() {
                let entry = entry?;
                let child = entry.file_name().to_bytes();
                if child == b"." || child == b".." {
                    continue;
                }
                let is_dir = match entry.file_type() {
                    FileType::Directory => true,
                    FileType::Unknown => match rfs::statat(dir, child, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(e),
                    },
                    _ => false,
                };
                if is_dir {
                    descend = Some(child.to_vec());
                    break;
                }
                match rfs::unlinkat(dir, child, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            match descend {
                Some(child) => Some((open(dir.as_fd(), &child)?, child)),
                None => None,
            }
        };
        match next {
            Some(level) => stack.push(level),
            None => {
                let (dir, name) =
                    stack.pop().expect("the loop body runs only while the stack is non-empty");
                drop(dir);
                let above = stack.last().map_or(parent, |(fd, _)| fd.as_fd());
                match rfs::unlinkat(above, name.as_slice(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}
