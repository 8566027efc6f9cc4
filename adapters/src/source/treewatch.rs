//! The inotify watch behind change capture: one watch per folder of the source tree, kept in
//! step as folders come, go and move.
//!
//! A new watch holds nothing. The mirror that follows every capture start adds each folder's
//! watch just before it lists that folder ([`TreeWatch::watch_folder`]), so the tree is walked
//! once, not once to watch and once to mirror, and no change slips between the two: whatever
//! changes in a folder after its watch is in place is announced, whatever changed before is in
//! its listing. A walk that ends early is finished by [`TreeWatch::watch_tree`].
//!
//! Only events that change something are asked for: no `IN_OPEN`, no `IN_ACCESS`. A mirror
//! reading every file, or this watch's own walk opening every folder, would otherwise fill the
//! kernel's queue (16,384 events by default) and overflow it on any tree of more than a few
//! thousand folders, and an overflow costs a rescan. This is why capture does not use the
//! `notify` crate, whose inotify backend always asks for `IN_OPEN`.
//!
//! The descriptor is non-blocking and waited on with `poll`, so the capture thread can be
//! stopped without a wake-up descriptor.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use crate::fsops::RelPath;

/// What one inotify event says, as a path inside the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Something at this path was created, written, closed after writing, changed its
    /// attributes, or was removed.
    Touched(RelPath),
    /// Moved away from this path; a `MovedTo` with the same cookie is the other half.
    MovedFrom(RelPath, u32),
    /// Moved to this path; a `MovedFrom` with the same cookie is the other half.
    MovedTo(RelPath, u32),
    /// Changes were lost (the kernel's queue overflowed, or reading failed): rescan.
    Lost(String),
}

/// The events asked for on every folder.
fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DONT_FOLLOW
        | WatchFlags::ONLYDIR
        | WatchFlags::EXCL_UNLINK
}

/// A recursive watch of a folder tree, shared by change capture (which reads it) and the
/// mirror (which fills it as it walks).
pub struct TreeWatch {
    fd: OwnedFd,
    root: PathBuf,
    excluded: Box<dyn Fn(&RelPath) -> bool + Send + Sync>,
    /// Held while a watch is added and recorded, and while events are read and named: an
    /// event of a new watch cannot be read before its folder is known.
    state: Mutex<Watched>,
    /// Every folder of the tree has been watched once (a walk went through all of it).
    complete: AtomicBool,
}

struct Watched {
    /// Watch descriptor → the folder it watches.
    folders: HashMap<i32, RelPath>,
    buffer: Vec<MaybeUninit<u8>>,
}

impl std::fmt::Debug for TreeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatch")
            .field("root", &self.root)
            .field("folders", &self.folders())
            .finish_non_exhaustive()
    }
}

impl TreeWatch {
    /// A watch of the tree under `root` that will skip what `excluded` excludes. It watches
    /// nothing yet: see [`TreeWatch::watch_folder`] and [`TreeWatch::watch_tree`].
    ///
    /// # Errors
    ///
    /// inotify is unavailable.
    pub fn new(
        root: &Path,
        excluded: Box<dyn Fn(&RelPath) -> bool + Send + Sync>,
    ) -> Result<TreeWatch, String> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| format!("cannot watch {} for changes: {e}", root.display()))?;
        Ok(TreeWatch {
            fd,
            root: root.to_path_buf(),
            excluded,
            state: Mutex::new(Watched {
                folders: HashMap::new(),
                buffer: vec![MaybeUninit::uninit(); 64 * 1024],
            }),
            complete: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, Watched> {
        // The map stays consistent under a panic (inserts and removes are single steps).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many folders are watched.
    pub fn folders(&self) -> usize {
        self.state().folders.len()
    }

    /// Whether a walk has watched every folder of the tree.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// Records that a walk has watched every folder of the tree.
    pub fn set_complete(&self) {
        self.complete.store(true, Ordering::SeqCst);
    }

    /// Watches `folder` (not what is under it); list it only after this returns. Watching a
    /// folder already watched (a folder moved inside the tree) keeps its descriptor and
    /// records its new path. A folder that is excluded, gone or unreadable is left alone: a
    /// later event or the mirror sees it as it is.
    ///
    /// # Errors
    ///
    /// The kernel's watch limit is reached (the message says what to do).
    pub fn watch_folder(&self, folder: &RelPath) -> Result<(), String> {
        if !folder.is_root() && (self.excluded)(folder) {
            return Ok(());
        }
        let local = folder.to_local(&self.root);
        let mut state = self.state();
        match inotify::add_watch(&self.fd, &local, mask()) {
            Ok(wd) => {
                state.folders.insert(wd, folder.clone());
                Ok(())
            }
            Err(Errno::NOSPC) => Err(format!(
                "cannot watch {} for changes: the kernel's inotify watch limit is reached (one watch per folder, {} so far); raise fs.inotify.max_user_watches (sysctl) and start the job again",
                self.root.display(),
                state.folders.len()
            )),
            Err(_) => Ok(()),
        }
    }

    /// Watches `top` and every folder under it, each before it is listed, so a folder created
    /// meanwhile is either listed here or announced by an event.
    ///
    /// # Errors
    ///
    /// The kernel's watch limit is reached (the message says what to do).
    pub fn watch_tree(&self, top: &RelPath) -> Result<(), String> {
        let mut stack = vec![top.clone()];
        while let Some(folder) = stack.pop() {
            if !folder.is_root() && (self.excluded)(&folder) {
                continue;
            }
            self.watch_folder(&folder)?;
            let Ok(entries) = std::fs::read_dir(folder.to_local(&self.root)) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name =
                        std::os::unix::ffi::OsStrExt::as_bytes(entry.file_name().as_os_str())
                            .to_vec();
                    if let Ok(child) = folder.join(&name) {
                        stack.push(child);
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops watching `top` and every folder under it (moved out of the tree).
    pub fn forget(&self, top: &RelPath) {
        let mut state = self.state();
        let gone: Vec<i32> = state
            .folders
            .iter()
            .filter(|(_, folder)| folder.starts_with(top))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            // The kernel answers with IN_IGNORED, which removes nothing more.
            let _ = inotify::remove_watch(&self.fd, wd);
            state.folders.remove(&wd);
        }
    }

    /// Waits up to `timeout` for events; whether there are some.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(ready) => ready > 0,
            // Interrupted: the caller waits again.
            Err(_) => false,
        }
    }

    /// Reads every event waiting, appending what they say to `out`.
    pub fn read(&self, out: &mut Vec<Change>) {
        let mut raw: Vec<(i32, ReadFlags, u32, Option<Vec<u8>>)> = Vec::new();
        {
            let mut state = self.state();
            let mut reader = inotify::Reader::new(&self.fd, &mut state.buffer);
            loop {
                match reader.next() {
                    Ok(event) => raw.push((
                        event.wd(),
                        event.events(),
                        event.cookie(),
                        event.file_name().map(|name| name.to_bytes().to_vec()),
                    )),
                    Err(Errno::AGAIN | Errno::INTR) => break,
                    Err(error) => {
                        out.push(Change::Lost(format!(
                            "reading change notifications failed: {error}"
                        )));
                        break;
                    }
                }
            }
        }
        for (wd, flags, cookie, name) in raw {
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                out.push(Change::Lost("the kernel's change queue overflowed".into()));
                continue;
            }
            let folder = {
                let mut state = self.state();
                if flags.contains(ReadFlags::IGNORED) {
                    state.folders.remove(&wd);
                    continue;
                }
                let Some(folder) = state.folders.get(&wd) else { continue };
                folder.clone()
            };
            let path = match &name {
                Some(name) => match folder.join(name) {
                    Ok(path) => path,
                    Err(_) => continue,
                },
                None => folder,
            };
            // Watched at once, so the events that follow in this batch name the new place.
            if flags.contains(ReadFlags::ISDIR)
                && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
                && let Err(message) = self.watch_tree(&path)
            {
                out.push(Change::Lost(message));
            }
            out.push(if flags.contains(ReadFlags::MOVED_FROM) {
                Change::MovedFrom(path, cookie)
            } else if flags.contains(ReadFlags::MOVED_TO) {
                Change::MovedTo(path, cookie)
            } else {
                Change::Touched(path)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn changes(watch: &TreeWatch) -> Vec<Change> {
        let mut out = Vec::new();
        while watch.wait(Duration::from_millis(50)) {
            watch.read(&mut out);
        }
        out
    }

    #[test]
    fn a_walk_fills_the_watch_folder_by_folder_and_the_rest_is_finished_later() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        for folder in ["a/inner", "b"] {
            std::fs::create_dir_all(root.join(folder)).unwrap_or_else(|e| panic!("{e}"));
        }
        let watch =
            TreeWatch::new(root, Box::new(|_: &RelPath| false)).unwrap_or_else(|e| panic!("{e}"));
        // A walk that watched the root and `a`, then stopped.
        watch.watch_folder(&RelPath::root()).unwrap_or_else(|e| panic!("{e}"));
        watch.watch_folder(&p("a")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(watch.folders(), 2, "a folder's watch does not reach into its subfolders");
        std::fs::write(root.join("a/f"), b"1").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("b/unwatched"), b"1").unwrap_or_else(|e| panic!("{e}"));
        let seen = changes(&watch);
        assert!(seen.contains(&Change::Touched(p("a/f"))), "{seen:?}");
        assert!(
            !seen
                .iter()
                .any(|c| matches!(c, Change::Touched(path) if path.starts_with(&p("b/unwatched")))),
            "{seen:?}"
        );
        assert!(!watch.is_complete());

        // Finishing the walk watches the rest once (folders already watched keep their watch).
        watch.watch_tree(&RelPath::root()).unwrap_or_else(|e| panic!("{e}"));
        watch.set_complete();
        assert_eq!(watch.folders(), 4, "the root, a, a/inner and b");
        std::fs::write(root.join("a/inner/g"), b"2").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("b/h"), b"2").unwrap_or_else(|e| panic!("{e}"));
        let seen = changes(&watch);
        for path in ["a/inner/g", "b/h"] {
            assert!(seen.contains(&Change::Touched(p(path))), "{path}: {seen:?}");
        }
        assert!(watch.is_complete());
    }

    #[test]
    fn reading_the_tree_makes_no_events_and_changes_do() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        for i in 0..50 {
            std::fs::create_dir_all(root.join(format!("d{i}/e"))).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(root.join(format!("d{i}/e/f")), b"x").unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::create_dir_all(root.join("skip/inner")).unwrap_or_else(|e| panic!("{e}"));
        let skip = p("skip");
        let watch = TreeWatch::new(root, Box::new(move |path: &RelPath| path.starts_with(&skip)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(watch.folders(), 0, "a new watch holds nothing");
        watch.watch_tree(&RelPath::root()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(watch.folders(), 101, "the root and 100 folders, not the excluded ones");

        // Reading every file and listing every folder: nothing to report.
        for i in 0..50 {
            let _ = std::fs::read(root.join(format!("d{i}/e/f")));
            let _ = std::fs::read_dir(root.join(format!("d{i}")));
        }
        assert_eq!(changes(&watch), vec![]);

        std::fs::write(root.join("d1/e/f"), b"changed").unwrap_or_else(|e| panic!("{e}"));
        let seen = changes(&watch);
        assert!(seen.contains(&Change::Touched(p("d1/e/f"))), "{seen:?}");

        // A folder moved inside the tree keeps its watch under its new name.
        std::fs::rename(root.join("d2"), root.join("moved")).unwrap_or_else(|e| panic!("{e}"));
        let seen = changes(&watch);
        assert!(
            matches!(&seen[..], [Change::MovedFrom(f, a), Change::MovedTo(t, b)]
                if *f == p("d2") && *t == p("moved") && a == b),
            "{seen:?}"
        );
        std::fs::write(root.join("moved/e/new"), b"n").unwrap_or_else(|e| panic!("{e}"));
        let seen = changes(&watch);
        assert!(seen.contains(&Change::Touched(p("moved/e/new"))), "{seen:?}");

        // A new folder is watched at once, with what it holds.
        std::fs::create_dir_all(root.join("fresh/a/b")).unwrap_or_else(|e| panic!("{e}"));
        let _ = changes(&watch);
        std::fs::write(root.join("fresh/a/b/g"), b"g").unwrap_or_else(|e| panic!("{e}"));
        let seen = changes(&watch);
        assert!(seen.contains(&Change::Touched(p("fresh/a/b/g"))), "{seen:?}");

        // Nothing from the excluded part; forgotten folders go quiet.
        std::fs::write(root.join("skip/inner/h"), b"h").unwrap_or_else(|e| panic!("{e}"));
        watch.forget(&p("d3"));
        std::fs::write(root.join("d3/e/f"), b"quiet").unwrap_or_else(|e| panic!("{e}"));
        let seen = changes(&watch);
        assert!(
            seen.iter().all(|c| !matches!(c, Change::Touched(path) if path.starts_with(&p("skip")) || path.starts_with(&p("d3/e")))),
            "{seen:?}"
        );
    }
}
