//! The mirror's walk of the source, on a thread of its own ahead of the comparison.
//!
//! For each folder, depth first in the scan's order, the walk adds change capture's watch,
//! lists the folder (one stat per entry, relative to the open folder) and hands it over, so
//! the thread that compares, reads and sends files never waits for a listing. With "calculate
//! size" the same walk counts the files and bytes to mirror: one walk of the tree, not two.
//!
//! At most [`LOOKAHEAD_ENTRIES`] listed entries wait for the comparison. A walk that reaches
//! that limit before its end first counts the rest of the tree without keeping it (if the size
//! is wanted, so it is known early on any tree), then goes on listing as the comparison takes
//! folders: the memory it holds stays bounded whatever the tree's size.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use super::mirror::Control;
use super::pipe::Pipe;
use super::treewatch::TreeWatch;
use crate::fsops::{Entry, EntryKind, RelPath, list_folder};

/// Listed entries the walk may hold ahead of the comparison (a few hundred bytes each with
/// their folders): still seconds of the comparison's work on a tree of small files. 65,536
/// cost the daemon 30 MB of its peak on a 200,000-file tree (174 MB against 144 MB with
/// 4,096).
pub const LOOKAHEAD_ENTRIES: usize = 16_384;

/// What the walk hands over, in walk order.
#[derive(Debug)]
pub enum Walked {
    /// A folder and its entries (less the excluded ones), with what could not be read in it
    /// (each an error naming the entry).
    Folder { path: RelPath, children: Vec<Entry>, unreadable: Vec<String> },
    /// A folder that cannot be listed: skipped whole.
    Unlistable { path: RelPath, error: String },
    /// Change capture's watch cannot take more folders (the message says what to do).
    WatchFailed(String),
    /// The walk reached its end.
    Done,
}

/// The comparison's end of a walk.
pub struct Walk {
    walked: Receiver<Walked>,
    /// The files and bytes to mirror ("calculate size"): apart from the folders, so the size
    /// is known as soon as it is counted, not when the comparison reaches the walk's end.
    sized: Receiver<(u64, u64)>,
    /// Entries taken by the comparison; the walk keeps at most [`LOOKAHEAD_ENTRIES`] more.
    taken: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk").field("taken", &self.taken).finish_non_exhaustive()
    }
}

impl Walk {
    /// Starts walking `pipe.root`, filling `watch` (if given) folder by folder, counting the
    /// size if `count` is set, keeping at most `lookahead` entries (the mirror uses
    /// [`LOOKAHEAD_ENTRIES`]) waiting for [`Walk::next`].
    ///
    /// # Errors
    ///
    /// The thread cannot start.
    pub fn start(
        pipe: Arc<Pipe>,
        control: Arc<Control>,
        watch: Option<Arc<TreeWatch>>,
        count: bool,
        lookahead: usize,
    ) -> std::io::Result<Walk> {
        let (send, walked) = channel();
        let (size, sized) = channel();
        let taken = Arc::new(AtomicUsize::new(0));
        let walker = Walker {
            pipe,
            control,
            watch,
            send,
            told_size: size,
            taken: Arc::clone(&taken),
            lookahead,
            listed: 0,
            size: count.then_some((0, 0)),
        };
        std::thread::Builder::new().name("mirror-walk".into()).spawn(move || walker.run())?;
        Ok(Walk { walked, sized, taken })
    }

    /// The next thing the walk found; `None` if the walk ended without saying `Done` (it was
    /// stopped, or failed).
    pub fn next(&self) -> Option<Walked> {
        let walked = self.walked.recv().ok()?;
        if let Walked::Folder { children, .. } = &walked {
            self.taken.fetch_add(children.len().max(1), Ordering::SeqCst);
        }
        Some(walked)
    }

    /// The files and bytes to mirror, once counted (told once; always before `Done`).
    pub fn size(&self) -> Option<(u64, u64)> {
        self.sized.try_recv().ok()
    }
}

struct Walker {
    pipe: Arc<Pipe>,
    control: Arc<Control>,
    watch: Option<Arc<TreeWatch>>,
    send: Sender<Walked>,
    /// Where the size goes, once counted.
    told_size: Sender<(u64, u64)>,
    taken: Arc<AtomicUsize>,
    lookahead: usize,
    /// Entries handed over so far.
    listed: usize,
    /// Files' bytes and count so far, while the size is wanted and not yet told.
    size: Option<(u64, u64)>,
}

impl Walker {
    fn run(mut self) {
        let mut pending = vec![RelPath::root()];
        while let Some(path) = pending.pop() {
            if !self.room(&path, &pending) {
                return;
            }
            self.watch_folder(&path);
            let walked = match self.list(&path) {
                Ok((children, unreadable)) => {
                    let subfolders: Vec<RelPath> = children
                        .iter()
                        .filter(|e| e.kind == EntryKind::Dir)
                        .map(|e| e.path.clone())
                        .collect();
                    // Sorted by name, so the smallest is visited next: the scan's order.
                    pending.extend(subfolders.into_iter().rev());
                    if let Some((bytes, files)) = &mut self.size {
                        for file in children.iter().filter(|e| e.kind == EntryKind::File) {
                            *bytes += file.meta.size_bytes;
                            *files += 1;
                        }
                    }
                    self.listed += children.len().max(1);
                    Walked::Folder { path, children, unreadable }
                }
                Err(error) => Walked::Unlistable { path, error },
            };
            if !self.tell(walked) {
                return;
            }
        }
        if let Some(total) = self.size.take() {
            let _ = self.told_size.send(total);
        }
        self.tell(Walked::Done);
    }

    /// Hands `walked` over; false if the comparison is gone or the mirror stopped.
    fn tell(&self, walked: Walked) -> bool {
        !self.control.is_stopped() && self.send.send(walked).is_ok()
    }

    /// Waits until the comparison has room for more; false if it is gone or the mirror
    /// stopped. The first time it has to wait, it counts the rest of the tree (`next` and
    /// what is under it, then `pending` and what is under them) if the size is wanted.
    fn room(&mut self, next: &RelPath, pending: &[RelPath]) -> bool {
        loop {
            // The `Walk` holds the other count of `taken`: alone, the comparison is gone.
            if self.control.is_stopped() || Arc::strong_count(&self.taken) == 1 {
                return false;
            }
            let waiting = self.listed.saturating_sub(self.taken.load(Ordering::SeqCst));
            if waiting < self.lookahead {
                return true;
            }
            if let Some((bytes, files)) = self.size.take() {
                let mut rest = pending.to_vec();
                rest.push(next.clone());
                let Some((more_bytes, more_files)) = self.count(rest) else { return false };
                let _ = self.told_size.send((bytes + more_bytes, files + more_files));
                continue;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Counts the files and bytes in and under `folders`, keeping nothing; `None` if the
    /// mirror stopped meanwhile.
    fn count(&self, mut folders: Vec<RelPath>) -> Option<(u64, u64)> {
        let (mut bytes, mut files) = (0, 0);
        while let Some(path) = folders.pop() {
            if self.control.is_stopped() {
                return None;
            }
            // What cannot be read is reported when it is listed for the comparison.
            let Ok((children, _)) = self.list(&path) else { continue };
            for entry in children {
                match entry.kind {
                    EntryKind::Dir => folders.push(entry.path),
                    EntryKind::File => {
                        bytes += entry.meta.size_bytes;
                        files += 1;
                    }
                    _ => {}
                }
            }
        }
        Some((bytes, files))
    }

    /// The entries of `path` that are not excluded, and what could not be read in it.
    fn list(&self, path: &RelPath) -> Result<(Vec<Entry>, Vec<String>), String> {
        let listing = list_folder(&self.pipe.root, path.clone()).map_err(|e| e.to_string())?;
        let mut children = Vec::new();
        let mut unreadable = Vec::new();
        for item in listing {
            match item {
                Ok(entry) if self.pipe.excluded(&entry.path) => {}
                Ok(entry) => children.push(entry),
                Err(error) => unreadable.push(error.to_string()),
            }
        }
        Ok((children, unreadable))
    }

    /// Adds `path` to change capture's watch before it is listed, so no change in it slips
    /// between the listing and the watch. At the watch limit, capture is told once and the
    /// walk goes on without watching more.
    fn watch_folder(&mut self, path: &RelPath) {
        if let Some(watch) = &self.watch
            && let Err(message) = watch.watch_folder(path)
        {
            self.watch = None;
            let _ = self.send.send(Walked::WatchFailed(message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueLimits;
    use understudy_core::JobId;

    /// 12 folders (`dNN`, each with a subfolder `sub`) of 3 files each, and `skip/` excluded.
    fn tree(root: &std::path::Path) -> (u64, u64) {
        let (mut bytes, mut files) = (0, 0);
        for d in 0..6 {
            for folder in [format!("d{d:02}"), format!("d{d:02}/sub")] {
                std::fs::create_dir_all(root.join(&folder)).unwrap();
                for f in 0..3 {
                    let data = vec![b'x'; d * 10 + f];
                    std::fs::write(root.join(format!("{folder}/f{f}")), &data).unwrap();
                    bytes += data.len() as u64;
                    files += 1;
                }
            }
        }
        std::fs::create_dir_all(root.join("skip")).unwrap();
        std::fs::write(root.join("skip/ignored"), b"123456").unwrap();
        (bytes, files)
    }

    fn walk(root: &std::path::Path, queue: &std::path::Path, lookahead: usize) -> Walk {
        let job = JobId::from_parts(1_700_000_000_000, [7; 10]);
        let skip = RelPath::new("skip").unwrap();
        let pipe =
            Pipe::open(job, root.to_path_buf(), vec![skip], queue, QueueLimits::default()).unwrap();
        Walk::start(pipe, Arc::new(Control::default()), None, true, lookahead).unwrap()
    }

    /// The folders in the order given, the size told and when (after how many folders).
    fn drain(walk: &Walk, slowly: bool) -> (Vec<String>, (u64, u64), usize) {
        let (mut folders, mut sized) = (Vec::new(), None);
        loop {
            if sized.is_none() {
                sized = walk.size().map(|size| (size, folders.len()));
            }
            match walk.next().expect("the walk ends with Done") {
                Walked::Folder { path, .. } => folders.push(path.to_string()),
                Walked::Done => break,
                other => panic!("unexpected {other:?}"),
            }
            if slowly {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (size, after) = sized
            .or_else(|| walk.size().map(|size| (size, folders.len())))
            .expect("the size is told");
        (folders, size, after)
    }

    #[test]
    fn a_walk_hands_over_every_folder_in_scan_order_and_counts_once() {
        let (dir, queues) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let expected = tree(dir.path());
        // When the size is seen is not checked here: on its own channel it can be there
        // before the first folder is taken, if the walk finished first (it did in CI).
        let (folders, size, _) = drain(&walk(dir.path(), queues.path(), 1_000), false);
        assert_eq!(size, expected, "excluded files are not counted");
        let mut order = vec![".".to_string()];
        for d in 0..6 {
            order.push(format!("d{d:02}"));
            order.push(format!("d{d:02}/sub"));
        }
        assert_eq!(folders, order, "depth first, by name, without the excluded folder");
    }

    #[test]
    fn a_walk_at_its_look_ahead_counts_the_rest_first_and_then_lists_on() {
        let (dir, queues) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let expected = tree(dir.path());
        let (all, _, _) = drain(&walk(dir.path(), &queues.path().join("a"), 1_000), false);
        // Room for about two folders: the size comes long before the last folder. A queue of
        // its own: the first walk's thread may still hold its pipe (and the queue's lock) for
        // a moment after it handed over `Done`.
        let (folders, size, after) = drain(&walk(dir.path(), &queues.path().join("b"), 6), true);
        assert_eq!(size, expected);
        assert!(after < 5, "the size was told after {after} folders of {}", folders.len());
        assert_eq!(folders, all, "the same folders in the same order");
    }
}
