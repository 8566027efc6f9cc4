//! Change capture: watch the source tree and queue every change, reading the changed file
//! when the change is seen and sending only the blocks that differ from what the target holds.
//!
//! The watch ([`super::treewatch`]: inotify, one watch per folder) is a hint, never the source of
//! truth: each notification marks a path dirty, and the path is then looked at as it is now.
//! Bursts on one file coalesce within a few milliseconds. A move inside the tree becomes one
//! `Rename` (a folder moves with its whole subtree); a move out of it is a removal, into it a
//! creation. When the kernel's event queue overflows, the tree is rescanned against the shadow
//! (attributes only: local and cheap), not remirrored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::files::{SendError, send_file, shadow_target};
use super::pipe::{Pipe, Producer, Shadow};
use super::treewatch::{Change, TreeWatch};
use crate::fsops::{EntryKind, Meta, Operation, RelPath, scan};

/// How long a burst of notifications is gathered before it is acted on.
pub const COALESCE: Duration = Duration::from_millis(5);

/// What capture tells the job.
#[derive(Debug)]
pub enum CaptureEvent {
    /// The queue is exhausted: the job must auto-disconnect.
    Exhausted(String),
    /// The watch failed or overflowed (with what was done about it).
    Trouble(String),
}

/// A running capture; dropping it stops the watch and the worker.
pub struct Capture {
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    watch: Arc<TreeWatch>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Capture {
    /// The watch, for the mirror to fill as it walks (see [`TreeWatch::watch_folder`]).
    pub fn watch(&self) -> Arc<TreeWatch> {
        Arc::clone(&self.watch)
    }
}

/// Starts capturing changes of `pipe.root`. The watch is empty when this returns: the mirror
/// that follows every start watches each folder before it lists it.
///
/// # Errors
///
/// inotify is unavailable, or the capture thread cannot start.
pub fn start(
    pipe: Arc<Pipe>,
    tell: Arc<dyn Fn(CaptureEvent) + Send + Sync>,
) -> Result<Capture, String> {
    let excluded_by = Arc::clone(&pipe);
    let watch = Arc::new(TreeWatch::new(
        &pipe.root,
        Box::new(move |path: &RelPath| excluded_by.excluded(path)),
    )?);
    let worker_watch = Arc::clone(&watch);
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = Arc::clone(&stop);
    let worker = std::thread::Builder::new()
        .name(format!("capture-{}", pipe.job.short()))
        .spawn(move || {
            Worker {
                pipe,
                tell,
                watch: worker_watch,
                pending_from: BTreeMap::new(),
                told_exhausted: false,
            }
            .run(&worker_stop)
        })
        .map_err(|e| format!("cannot start the change capture thread: {e}"))?;
    Ok(Capture { stop, worker: Some(worker), watch })
}

struct Worker {
    pipe: Arc<Pipe>,
    tell: Arc<dyn Fn(CaptureEvent) + Send + Sync>,
    watch: Arc<TreeWatch>,
    /// Moves out of a place, waiting (two rounds) for their other half: rounds and cookie.
    pending_from: BTreeMap<RelPath, (u8, u32)>,
    told_exhausted: bool,
}

impl Worker {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            if !self.watch.wait(Duration::from_millis(100)) {
                if !self.pending_from.is_empty() {
                    self.handle(Vec::new());
                }
                continue;
            }
            let mut batch = Vec::new();
            self.watch.read(&mut batch);
            let deadline = Instant::now() + COALESCE;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if !self.watch.wait(left) {
                    break;
                }
                self.watch.read(&mut batch);
            }
            self.handle(batch);
        }
    }

    fn handle(&mut self, batch: Vec<Change>) {
        if self.pipe.exhausted() {
            // Waiting for the auto-disconnect; the remirror after it catches up.
            return;
        }
        self.told_exhausted = false;
        let mut dirty: BTreeSet<RelPath> = BTreeSet::new();
        let mut renames: Vec<(RelPath, RelPath)> = Vec::new();
        let mut lost: Option<String> = None;
        for change in batch {
            match change {
                Change::Lost(why) => lost = Some(why),
                Change::Touched(path) => {
                    if !self.pipe.excluded(&path) {
                        dirty.insert(path);
                    }
                }
                Change::MovedFrom(path, cookie) => {
                    if !self.pipe.excluded(&path) {
                        self.pending_from.insert(path, (0, cookie));
                    }
                }
                Change::MovedTo(to, cookie) => {
                    let from = self
                        .pending_from
                        .iter()
                        .find(|(_, (_, c))| *c == cookie)
                        .map(|(from, _)| from.clone());
                    if let Some(from) = &from {
                        self.pending_from.remove(from);
                    }
                    match (from, self.pipe.excluded(&to)) {
                        (Some(from), false) => renames.push((from, to)),
                        // Into the excluded part: a removal.
                        (Some(from), true) => {
                            dirty.insert(from);
                        }
                        // From outside the tree or its excluded part: a creation.
                        (None, false) => {
                            dirty.insert(to);
                        }
                        (None, true) => {}
                    }
                }
            }
        }
        // A move out whose other half did not come within a round is a removal.
        let mut expired = Vec::new();
        for (path, (rounds, _)) in &mut self.pending_from {
            *rounds += 1;
            if *rounds > 2 {
                expired.push(path.clone());
            }
        }
        for path in expired {
            self.pending_from.remove(&path);
            // Moved out of the tree: its folders' watches would report under the old name.
            self.watch.forget(&path);
            dirty.insert(path);
        }
        if let Some(why) = lost {
            (self.tell)(CaptureEvent::Trouble(format!(
                "{why}: rescanning the source against what was sent"
            )));
            dirty.extend(self.rescan());
        }
        let result = self.apply(renames, dirty);
        if let Err(SendError::Exhausted(e)) = result
            && !self.told_exhausted
        {
            self.told_exhausted = true;
            (self.tell)(CaptureEvent::Exhausted(e.0));
        }
    }

    fn apply(
        &mut self,
        renames: Vec<(RelPath, RelPath)>,
        dirty: BTreeSet<RelPath>,
    ) -> Result<(), SendError> {
        for (from, to) in renames {
            let mut state = self.pipe.lock();
            if state.shadow.contains_key(&from) {
                state.enqueue(
                    vec![Operation::Rename { from: from.clone(), to: to.clone() }],
                    Producer::Replication,
                )?;
                // The shadow moves with the subtree.
                let moved: Vec<(RelPath, Shadow)> = state
                    .shadow
                    .range(from.clone()..)
                    .take_while(|(p, _)| p.starts_with(&from))
                    .map(|(p, s)| (p.clone(), s.clone()))
                    .collect();
                for (old, shadow) in moved {
                    state.shadow.remove(&old);
                    let rest = &old.as_bytes()[from.as_bytes().len()..];
                    let mut new = to.as_bytes().to_vec();
                    new.extend_from_slice(rest);
                    if let Ok(new) = RelPath::new(new) {
                        state.shadow.insert(new, shadow);
                    }
                }
                drop(state);
                self.pipe.notify();
                // Changes made after the move are caught by looking at the new place.
                self.look_at(&to)?;
            } else {
                drop(state);
                self.look_at(&from)?;
                self.look_at(&to)?;
            }
            self.touch_parent(&from)?;
            self.touch_parent(&to)?;
        }
        let mut parents = BTreeSet::new();
        for path in &dirty {
            self.look_at(path)?;
            if let Some(parent) = path.parent() {
                parents.insert(parent);
            }
        }
        // A folder's entries changed, and with them its mtime: send its attributes after.
        for parent in parents.into_iter().rev() {
            if !dirty.contains(&parent) {
                self.touch_parent_dir(&parent)?;
            }
        }
        Ok(())
    }

    fn touch_parent(&self, path: &RelPath) -> Result<(), SendError> {
        match path.parent() {
            Some(parent) => self.touch_parent_dir(&parent),
            None => Ok(()),
        }
    }

    fn touch_parent_dir(&self, dir: &RelPath) -> Result<(), SendError> {
        let local = dir.to_local(&self.pipe.root);
        let Ok(metadata) = std::fs::symlink_metadata(&local) else { return Ok(()) };
        if metadata.is_dir() {
            let mut state = self.pipe.lock();
            state.enqueue(
                vec![Operation::SetMeta {
                    path: dir.clone(),
                    meta: Meta::from_metadata(&metadata),
                }],
                Producer::Replication,
            )?;
            drop(state);
            self.pipe.notify();
        }
        Ok(())
    }

    /// Makes the target's `path` what the source's is now.
    fn look_at(&self, path: &RelPath) -> Result<(), SendError> {
        if path.is_root() {
            return self.touch_parent_dir(path);
        }
        let local = path.to_local(&self.pipe.root);
        let metadata = match std::fs::symlink_metadata(&local) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut state = self.pipe.lock();
                state.enqueue(
                    vec![Operation::Remove { path: path.clone() }],
                    Producer::Replication,
                )?;
                let gone: Vec<RelPath> = state
                    .shadow
                    .range(path.clone()..)
                    .take_while(|(p, _)| p.starts_with(path))
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in gone {
                    state.shadow.remove(&p);
                }
                drop(state);
                self.pipe.notify();
                return Ok(());
            }
            Err(_) => return Ok(()), // unreadable now; a later change or verification catches it
        };
        let meta = Meta::from_metadata(&metadata);
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            let known = matches!(self.pipe.lock().shadow.get(path), Some(Shadow::Dir));
            if known {
                let mut state = self.pipe.lock();
                state.enqueue(
                    vec![Operation::SetMeta { path: path.clone(), meta }],
                    Producer::Replication,
                )?;
                drop(state);
                self.pipe.notify();
                return Ok(());
            }
            // A new folder: its contents may have been created before its watch was added.
            let mut state = self.pipe.lock();
            state.enqueue(
                vec![Operation::MakeDir { path: path.clone(), meta }],
                Producer::Replication,
            )?;
            state.shadow.insert(path.clone(), Shadow::Dir);
            drop(state);
            self.pipe.notify();
            let mut entries: Vec<RelPath> = scan(&local)
                .filter_map(Result::ok)
                .filter(|e| !e.path.is_root())
                .filter_map(|e| {
                    let mut full = path.as_bytes().to_vec();
                    full.push(b'/');
                    full.extend_from_slice(e.path.as_bytes());
                    RelPath::new(full).ok()
                })
                .collect();
            entries.sort();
            for entry in &entries {
                if !self.pipe.excluded(entry) {
                    self.look_at(entry)?;
                }
            }
            return self.touch_parent_dir(path);
        }
        if file_type.is_symlink() {
            let Ok(target) = std::fs::read_link(&local) else { return Ok(()) };
            let target = std::os::unix::ffi::OsStringExt::into_vec(target.into_os_string());
            let mut state = self.pipe.lock();
            if state.shadow.get(path) != Some(&Shadow::Symlink(target.clone())) {
                state.enqueue(
                    vec![
                        Operation::Symlink { path: path.clone(), target: target.clone() },
                        Operation::SetMeta { path: path.clone(), meta },
                    ],
                    Producer::Replication,
                )?;
                state.shadow.insert(path.clone(), Shadow::Symlink(target));
                drop(state);
                self.pipe.notify();
            }
            return Ok(());
        }
        if file_type.is_file() {
            let target = shadow_target(&self.pipe, path);
            return match send_file(
                &self.pipe,
                path,
                target.as_ref(),
                Producer::Replication,
                &mut || true,
            ) {
                Ok(_) | Err(SendError::Vanished | SendError::Unreadable(_)) => Ok(()),
                Err(e @ (SendError::Exhausted(_) | SendError::Interrupted)) => Err(e),
            };
        }
        Ok(()) // devices, FIFOs and sockets are not replicated
    }

    /// After an overflow: every path whose kind, size or mtime differs from the shadow, and
    /// every shadow path the source no longer has.
    fn rescan(&self) -> BTreeSet<RelPath> {
        let mut dirty = BTreeSet::new();
        let mut present = BTreeSet::new();
        let mut walker = scan(&self.pipe.root);
        while let Some(item) = walker.next() {
            let Ok(entry) = item else { continue };
            if entry.path.is_root() {
                continue;
            }
            if self.pipe.excluded(&entry.path) {
                if entry.kind == EntryKind::Dir {
                    walker.skip_dir();
                }
                continue;
            }
            present.insert(entry.path.clone());
            let state = self.pipe.lock();
            let same = match (state.shadow.get(&entry.path), entry.kind) {
                (Some(Shadow::File { size, mtime_ns, .. }), EntryKind::File) => {
                    *size == entry.meta.size_bytes && *mtime_ns == entry.meta.mtime_ns
                }
                (Some(Shadow::Dir), EntryKind::Dir) => true,
                (Some(Shadow::Symlink(t)), EntryKind::Symlink) => {
                    entry.link_target.as_deref() == Some(&t[..])
                }
                _ => false,
            };
            if !same {
                dirty.insert(entry.path.clone());
            }
        }
        let state = self.pipe.lock();
        for path in state.shadow.keys() {
            if !present.contains(path) {
                dirty.insert(path.clone());
            }
        }
        dirty
    }
}
