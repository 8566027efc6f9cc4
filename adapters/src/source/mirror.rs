//! Mirrors and verifications: walk the source, compare each folder with the target's listing,
//! and send what differs (mirror), report it (verification), or remove what the source does
//! not have (orphans).
//!
//! The walk ([`super::walk`]) lists folders on a thread of its own, depth first in the scan's
//! order, a bounded number of entries ahead of the comparison (a tree of 200,000 files is
//! never in memory at once); with "calculate size" it also counts the files and bytes, and the
//! job shows Calculating until it reports.
//! Each folder's target listing is asked for ahead of time, a few folders at once, so a long
//! round trip costs little; a folder found missing on the target is not asked about at all. Comparison by the job's mirror option:
//! - send everything: every file is sent whole;
//! - attributes, whole file: files whose size or mtime differ are sent whole;
//! - attributes, differences: files whose size or mtime differ are diffed block by block
//!   against the target's block hashes and only differing blocks are sent;
//! - checksum: every file is diffed block by block, whatever its attributes.
//!
//! The mirror runs on a blocking thread and waits for the link through the runtime handle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use understudy_core::effect::SkippedFile;
use understudy_core::spec::{MirrorComparison, OrphanPolicy};
use understudy_core::status::{MirrorCounters, VerificationSummary};

use super::files::{FileSent, SendError, TargetFile, send_file};
use super::link::Link;
use super::pipe::{Pipe, Producer, Shadow};
use super::treewatch::TreeWatch;
use super::walk::{LOOKAHEAD_ENTRIES, Walk, Walked};
use crate::fsops::{
    BLOCK_SIZE, BlockHash, Entry, EntryKind, Operation, RelPath, compare_attributes,
};
use crate::wire::{MAX_HASHES_PER_REPLY, Message};

/// Mirror operations queued and not yet sent before the walk waits (the seeds'
/// "maximum pending mirror operations": 1000).
pub const PENDING_MIRROR_OPS: u64 = 1_000;
/// ... and their bytes: eight of the sender's batches ready, so it never waits for the walk,
/// without holding 1,000 blocks of 64 KiB (64 MiB) in memory.
pub const PENDING_MIRROR_BYTES: u64 = 8 * 1024 * 1024;
/// Folders whose target listing is asked for ahead of time: enough that the target answers
/// them back to back (16 left a remirror of 17,424 unchanged folders at 1.55 s; 64 and 256
/// both about 1.0 s).
const LISTING_PREFETCH: usize = 64;
/// The most skipped files named in one report.
const SKIPPED_PER_REPORT: usize = 100;

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Make the target equal to the source.
    Mirror,
    /// Compare and report; with `remirror`, also send what differs.
    Verify {
        /// Send what differs.
        remirror: bool,
    },
    /// Only find orphans (and delete them per policy).
    Orphans,
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What to do.
    pub mode: Mode,
    /// How to compare.
    pub comparison: MirrorComparison,
    /// Count the data first (reported as the mirror's size).
    pub calculate_size: bool,
    /// What to do with orphans.
    pub orphans: OrphanPolicy,
    /// Where logs go, and how they are named.
    pub logs: LogSettings,
}

/// The job's logs.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// Folder.
    pub dir: PathBuf,
    /// The job's name (in log headers).
    pub job_name: String,
    /// The file name prefix (the job id).
    pub prefix: String,
    /// The target as the log names it ("host : port").
    pub target: String,
    /// The connection's number.
    pub connection: u64,
}

/// Pause, resume and stop, from the job's effects.
#[derive(Debug, Default)]
pub struct Control {
    paused: AtomicBool,
    stopped: AtomicBool,
    wake: Notify,
}

impl Control {
    /// Holds the run at its next step (keeping its place).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }
    /// Lets it go on.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.wake.notify_waiters();
    }
    /// Ends it at its next step.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }
    /// Whether it was stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// What a run reports while it goes.
#[derive(Debug)]
pub enum Progress {
    /// The size is known.
    Sized {
        /// Bytes.
        total_bytes: u64,
        /// Files.
        total_files: u64,
    },
    /// Counters so far.
    Counters(MirrorCounters),
    /// Files skipped.
    Skipped(Vec<SkippedFile>),
    /// Change capture could not watch the rest of the tree (the message says why and what to
    /// do); the mirror goes on.
    WatchFailed(String),
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Mirror counters.
    pub counters: MirrorCounters,
    /// Verification counters (for verifications).
    pub verification: VerificationSummary,
    /// Orphans found, deleted, and their bytes; the orphan log.
    pub orphans: (u64, u64, u64, Option<String>),
}

/// Why a run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It was stopped.
    #[error("stopped")]
    Stopped,
    /// The connection broke.
    #[error("the connection was lost: {0}")]
    LinkLost(String),
    /// The queue is exhausted.
    #[error(transparent)]
    Exhausted(#[from] super::pipe::Exhausted),
    /// The source root cannot be read at all.
    #[error("the source cannot be read: {0}")]
    Source(String),
}

struct Run<'a> {
    rt: Handle,
    pipe: Arc<Pipe>,
    link: Arc<Link>,
    settings: &'a Settings,
    control: Arc<Control>,
    progress: &'a mut dyn FnMut(Progress),
    counters: MirrorCounters,
    verification: VerificationSummary,
    skipped: Vec<SkippedFile>,
    last_report: Instant,
    hard_links: BTreeMap<(u64, u64), RelPath>,
    orphans: (u64, u64, u64),
    orphan_lines: String,
    verify_lines: String,
    /// Folders found missing on the target and not compared yet: nothing can be in them, so
    /// their listing is not asked for (an initial mirror makes no round trip per folder). An
    /// entry goes when its folder is compared.
    missing_on_target: BTreeSet<RelPath>,
    /// Folders whose attributes on the target equalled the source's when their parent was
    /// compared, and in which this run has changed nothing: no need to set them again.
    folders_in_step: BTreeSet<RelPath>,
    /// The walk, listing folders ahead.
    walk: Walk,
    /// Change capture's watch while the walk is still filling it (marked complete at the
    /// walk's end).
    watch: Option<Arc<TreeWatch>>,
}

/// Runs a mirror, verification or orphan pass to its end (everything sent acknowledged).
/// `watch` is change capture's watch when it does not yet hold the whole tree: the walk fills
/// it, and marks it complete if the walk reaches its end.
///
/// # Errors
///
/// Stopped, the link lost, the queue exhausted, or the source root unreadable.
pub fn run(
    rt: Handle,
    pipe: Arc<Pipe>,
    link: Arc<Link>,
    settings: &Settings,
    control: Arc<Control>,
    watch: Option<Arc<TreeWatch>>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, RunError> {
    let started_at = Utc::now();
    let started = Instant::now();
    let watch = watch.filter(|watch| !watch.is_complete());
    let count = settings.calculate_size && settings.mode == Mode::Mirror;
    let walk = Walk::start(
        Arc::clone(&pipe),
        Arc::clone(&control),
        watch.clone(),
        count,
        LOOKAHEAD_ENTRIES,
    )
    .map_err(|e| RunError::Source(format!("cannot start the walk: {e}")))?;
    let mut run = Run {
        rt,
        pipe,
        link,
        settings,
        control,
        progress,
        counters: MirrorCounters::default(),
        verification: VerificationSummary::default(),
        skipped: Vec::new(),
        last_report: Instant::now(),
        hard_links: BTreeMap::new(),
        orphans: (0, 0, 0),
        orphan_lines: String::new(),
        verify_lines: String::new(),
        missing_on_target: BTreeSet::new(),
        folders_in_step: BTreeSet::new(),
        walk,
        watch,
    };
    let folders = run.compare_all()?;
    if let Some(watch) = run.watch.take() {
        watch.set_complete();
    }
    run.finish_folders(&folders)?;
    // Done only when the target has made all of it durable.
    let last = run.pipe.lock().last_enqueued();
    run.wait(|r| {
        r.rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), r.pipe.wait_acked(last)).await.is_ok()
        })
    })?;
    run.flush_skipped();
    let log_path = run.write_logs(started_at, started.elapsed())?;
    let counters = run.counters.clone();
    (run.progress)(Progress::Counters(counters.clone()));
    let mut verification = run.verification.clone();
    verification.log_path = log_path.0;
    Ok(Outcome {
        counters,
        verification,
        orphans: (run.orphans.0, run.orphans.1, run.orphans.2, log_path.1),
    })
}

/// A folder and its source entries.
struct Folder {
    path: RelPath,
    children: Vec<Entry>,
    /// Known to be missing on the target (its parent's listing did not have it).
    missing_on_target: bool,
}

impl Run<'_> {
    fn check(&self) -> Result<(), RunError> {
        if self.control.is_stopped() {
            return Err(RunError::Stopped);
        }
        if let Some(reason) = self.link.closed_reason() {
            return Err(RunError::LinkLost(reason));
        }
        Ok(())
    }

    /// Waits (while paused, or until `ready` says so), checking for stop and link loss.
    fn wait(&mut self, mut ready: impl FnMut(&mut Self) -> bool) -> Result<(), RunError> {
        loop {
            self.check()?;
            let paused = self.control.paused.load(Ordering::SeqCst)
                || self.pipe.paused.load(Ordering::SeqCst);
            if !paused && ready(self) {
                return Ok(());
            }
            if paused {
                let control = Arc::clone(&self.control);
                self.rt.block_on(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), control.wake.notified())
                            .await;
                });
            }
        }
    }

    /// Takes the walk's count of the files and bytes to mirror, once it is there.
    fn take_size(&mut self) {
        if let Some((total_bytes, total_files)) = self.walk.size() {
            self.counters.total_bytes = Some(total_bytes);
            self.counters.total_files = Some(total_files);
            (self.progress)(Progress::Sized { total_bytes, total_files });
        }
    }

    /// The next folder of the walk with its entries, or `None` at the end.
    fn next_folder(&mut self) -> Result<Option<Folder>, RunError> {
        loop {
            self.check()?;
            self.take_size();
            let Some(walked) = self.walk.next() else {
                self.check()?;
                return Err(RunError::Source("the walk of the source stopped".into()));
            };
            match walked {
                Walked::Folder { path, children, unreadable } => {
                    for error in unreadable {
                        self.skip(error, "cannot be read");
                    }
                    let missing_on_target = self.missing_on_target.contains(&path);
                    return Ok(Some(Folder { path, children, missing_on_target }));
                }
                Walked::Unlistable { path, error } if path.is_root() => {
                    return Err(RunError::Source(error));
                }
                // Skipped whole: compared as empty, its copy on the target would look orphaned.
                Walked::Unlistable { path, error } => {
                    self.missing_on_target.remove(&path);
                    self.skip(error, "cannot be read");
                }
                Walked::WatchFailed(message) => {
                    self.watch = None;
                    (self.progress)(Progress::WatchFailed(message));
                }
                Walked::Done => {
                    self.take_size(); // told before Done
                    return Ok(None);
                }
            }
        }
    }

    fn listing(&self, path: &RelPath) -> JoinHandle<Result<Message, String>> {
        let link = Arc::clone(&self.link);
        let path = path.clone();
        self.rt.spawn(async move {
            link.request(|query_id| Message::QueryListDir { query_id, path }).await
        })
    }

    /// Compares every folder of the walk; returns the folders' paths in walk order.
    fn compare_all(&mut self) -> Result<Vec<RelPath>, RunError> {
        type Listing = Option<JoinHandle<Result<Message, String>>>;
        let mut ahead: VecDeque<(Folder, Listing)> = VecDeque::new();
        let mut visited = Vec::new();
        let mut walked_all = false;
        loop {
            while !walked_all && ahead.len() < LISTING_PREFETCH {
                let Some(mut folder) = self.next_folder()? else {
                    walked_all = true;
                    break;
                };
                // Inside a folder known missing on the target, so missing too (the walk
                // lists a folder before what is in it).
                let parent = folder.path.parent();
                folder.missing_on_target |= ahead.iter().rev().any(|(waiting, _)| {
                    Some(&waiting.path) == parent.as_ref()
                        && (waiting.missing_on_target
                            || self.missing_on_target.contains(&waiting.path))
                });
                let listing = (!folder.missing_on_target).then(|| self.listing(&folder.path));
                ahead.push_back((folder, listing));
            }
            let Some((folder, listing)) = ahead.pop_front() else { break };
            // Its parent, compared before it, may have found it missing after it was listed:
            // then the answer is known (empty) and not waited for, which in an initial mirror
            // would hold the walk until the target has applied everything sent before it.
            let missing = self.missing_on_target.remove(&folder.path);
            let listing = listing.filter(|_| !missing);
            let target = match listing.map(|listing| self.rt.block_on(listing)) {
                // Missing on the target, so empty there.
                None => Vec::new(),
                Some(Ok(Ok(Message::ListDir { entries, .. }))) => entries,
                Some(Ok(Ok(Message::QueryFailed { error, .. }))) => {
                    // The folder is not a folder on the target (or cannot be listed): treat it
                    // as empty; sending its contents repairs it.
                    tracing::debug!(folder = %folder.path, %error, "target listing failed");
                    Vec::new()
                }
                Some(Ok(Ok(other))) => {
                    return Err(RunError::LinkLost(format!(
                        "unexpected {} from the target",
                        other.kind()
                    )));
                }
                Some(Ok(Err(reason))) => return Err(RunError::LinkLost(reason)),
                Some(Err(join)) => {
                    return Err(RunError::LinkLost(format!("the listing task failed: {join}")));
                }
            };
            self.compare_folder(&folder, target)?;
            self.counters.directories_mirrored += 1;
            self.verification.directories_compared += 1;
            visited.push(folder.path);
        }
        Ok(visited)
    }

    fn sends(&self) -> bool {
        matches!(self.settings.mode, Mode::Mirror | Mode::Verify { remirror: true })
    }

    fn compare_folder(&mut self, folder: &Folder, target: Vec<Entry>) -> Result<(), RunError> {
        let mut target: BTreeMap<Vec<u8>, Entry> =
            target.into_iter().filter_map(|e| Some((e.path.file_name()?.to_vec(), e))).collect();
        let mut seen = BTreeSet::new();
        for source in &folder.children {
            let name = source.path.file_name().unwrap_or_default().to_vec();
            seen.insert(name.clone());
            let existing = target.remove(&name);
            if source.kind == EntryKind::Dir {
                match &existing {
                    Some(t) if t.kind == EntryKind::Dir => {
                        let same = compare_attributes(&source.meta, &t.meta);
                        if !(same.mtime_differs || same.mode_differs || same.owner_differs) {
                            self.folders_in_step.insert(source.path.clone());
                        }
                    }
                    _ => {
                        self.missing_on_target.insert(source.path.clone());
                    }
                }
            }
            self.compare_entry(source, existing.as_ref())?;
            self.report_progress();
        }
        for (name, orphan) in target {
            if seen.contains(&name) || self.pipe.excluded(&orphan.path) {
                continue;
            }
            self.orphan(&orphan)?;
        }
        Ok(())
    }

    fn compare_entry(&mut self, source: &Entry, target: Option<&Entry>) -> Result<(), RunError> {
        let target = target.filter(|t| t.kind == source.kind);
        if self.settings.mode == Mode::Orphans {
            return Ok(());
        }
        match source.kind {
            EntryKind::Dir => {
                if target.is_none() {
                    self.verification.directories_missing +=
                        u64::from(matches!(self.settings.mode, Mode::Verify { .. }));
                    if self.sends() {
                        self.enqueue(vec![Operation::MakeDir {
                            path: source.path.clone(),
                            meta: source.meta,
                        }])?;
                        if matches!(self.settings.mode, Mode::Verify { .. }) {
                            self.verification.directories_remirrored += 1;
                        }
                    }
                }
                self.pipe.lock().shadow.insert(source.path.clone(), Shadow::Dir);
            }
            EntryKind::Symlink => {
                let link_target = source.link_target.clone().unwrap_or_default();
                let same =
                    target.is_some_and(|t| t.link_target.as_deref() == Some(&link_target[..]));
                if !same && self.sends() {
                    self.enqueue(vec![
                        Operation::Symlink {
                            path: source.path.clone(),
                            target: link_target.clone(),
                        },
                        Operation::SetMeta { path: source.path.clone(), meta: source.meta },
                    ])?;
                }
                self.pipe.lock().shadow.insert(source.path.clone(), Shadow::Symlink(link_target));
            }
            EntryKind::Special(kind) => {
                self.skip(source.path.to_string(), &format!("{kind:?} files are not replicated"));
            }
            EntryKind::File => self.compare_file(source, target)?,
        }
        Ok(())
    }

    fn compare_file(&mut self, source: &Entry, target: Option<&Entry>) -> Result<(), RunError> {
        let verifying = matches!(self.settings.mode, Mode::Verify { .. });
        self.verification.files_compared += 1;
        // Hard links: the second name of an inode is a link on the target too.
        if source.nlink > 1 {
            let key = (source.dev, source.ino);
            if let Some(first) = self.hard_links.get(&key).cloned() {
                if self.sends() && target.is_none_or(|t| t.ino == 0 || t.nlink < 2) {
                    self.enqueue(vec![Operation::HardLink {
                        path: source.path.clone(),
                        existing: first,
                    }])?;
                }
                return Ok(());
            }
            self.hard_links.insert(key, source.path.clone());
        }
        let size = source.meta.size_bytes;
        let Some(target) = target else {
            self.verification.files_missing += 1;
            self.verification.bytes_missing += size;
            if verifying {
                self.note_verify(source, None, size);
            }
            if self.sends() {
                self.send(source, None, verifying)?;
            }
            return Ok(());
        };
        let attrs = compare_attributes(&source.meta, &target.meta);
        let comparison = self.settings.comparison;
        let need_data = match comparison {
            MirrorComparison::SendEverything => true,
            MirrorComparison::ChecksumSendDifferences => true,
            MirrorComparison::AttributesSendWhole | MirrorComparison::AttributesSendDifferences => {
                attrs.data_may_differ()
            }
        };
        if !need_data {
            self.counters.bytes_skipped += size;
            if !attrs.identical() && self.sends() {
                self.enqueue(vec![Operation::SetMeta {
                    path: source.path.clone(),
                    meta: source.meta,
                }])?;
            }
            if verifying && !attrs.identical() {
                self.verification.files_different += 1;
                self.note_verify(source, Some(target), 0);
            }
            self.verification.bytes_compared += size;
            self.pipe.lock().shadow.insert(
                source.path.clone(),
                Shadow::File { size, mtime_ns: source.meta.mtime_ns, hashes: None },
            );
            return Ok(());
        }
        let whole = matches!(
            comparison,
            MirrorComparison::SendEverything | MirrorComparison::AttributesSendWhole
        );
        if whole && !verifying {
            self.send(source, None, false)?;
            return Ok(());
        }
        // Block by block against the target's hashes.
        self.counters.files_checksummed += 1;
        let target_file = self.target_hashes(&source.path, target.meta.size_bytes)?;
        if verifying {
            let differing = differing_bytes(&self.pipe, &source.path, &target_file);
            self.verification.bytes_compared += size;
            match differing {
                Some(0) if attrs.identical() => {}
                Some(bytes) => {
                    self.verification.files_different += 1;
                    self.verification.bytes_different += bytes;
                    self.note_verify(source, Some(target), bytes);
                    if self.sends() && (bytes > 0 || !attrs.identical()) {
                        let sent = self.send(source, Some(&target_file), true)?;
                        let _ = sent;
                    }
                }
                None => {
                    self.verification.bytes_skipped += size;
                    self.skip(source.path.to_string(), "could not be read");
                }
            }
            return Ok(());
        }
        self.send(source, Some(&target_file), false)?;
        Ok(())
    }

    fn target_hashes(&self, path: &RelPath, len: u64) -> Result<TargetFile, RunError> {
        let mut hashes: Vec<BlockHash> = Vec::new();
        loop {
            let first_block = hashes.len() as u64;
            let link = Arc::clone(&self.link);
            let path = path.clone();
            let answer = self.rt.block_on(async move {
                link.request(|query_id| Message::QueryBlockHashes {
                    query_id,
                    path,
                    block_size: BLOCK_SIZE,
                    first_block,
                    max_blocks: MAX_HASHES_PER_REPLY,
                })
                .await
            });
            match answer {
                Ok(Message::BlockHashes { hashes: reply, .. }) => {
                    let done = reply.covers_end() || reply.hashes.is_empty();
                    hashes.extend(reply.hashes);
                    if done {
                        return Ok(TargetFile { len, hashes });
                    }
                }
                // Unreadable on the target: send it whole.
                Ok(Message::QueryFailed { .. }) => {
                    return Ok(TargetFile { len: 0, hashes: Vec::new() });
                }
                Ok(other) => {
                    return Err(RunError::LinkLost(format!(
                        "unexpected {} from the target",
                        other.kind()
                    )));
                }
                Err(reason) => return Err(RunError::LinkLost(reason)),
            }
        }
    }

    fn send(
        &mut self,
        source: &Entry,
        target: Option<&TargetFile>,
        remirror: bool,
    ) -> Result<FileSent, RunError> {
        self.changing(&source.path);
        let pipe = Arc::clone(&self.pipe);
        let mut interrupted = None;
        let mut pace = || match self.backpressure() {
            Ok(()) => true,
            Err(error) => {
                interrupted = Some(error);
                false
            }
        };
        let result = send_file(&pipe, &source.path, target, Producer::Mirror, &mut pace);
        if let Some(error) = interrupted {
            return Err(error);
        }
        match result {
            Ok(sent) => {
                self.counters.files_mirrored += 1;
                self.counters.bytes_mirrored += sent.bytes_sent;
                self.counters.bytes_skipped += sent.bytes_skipped;
                if remirror {
                    self.verification.files_remirrored += 1;
                    self.verification.bytes_remirrored += sent.bytes_sent;
                }
                Ok(sent)
            }
            Err(SendError::Vanished) => {
                self.skip(source.path.to_string(), "vanished during the mirror");
                Ok(FileSent::default())
            }
            Err(SendError::Unreadable(error)) => {
                self.skip(source.path.to_string(), &error.to_string());
                Ok(FileSent::default())
            }
            Err(SendError::Exhausted(e)) => Err(RunError::Exhausted(e)),
            Err(SendError::Interrupted) => unreachable!("only `pace` interrupts, and it said why"),
        }
    }

    fn enqueue(&mut self, ops: Vec<Operation>) -> Result<(), RunError> {
        for op in &ops {
            self.changing(op.path());
        }
        self.backpressure()?;
        self.pipe.lock().enqueue(ops, Producer::Mirror)?;
        self.pipe.notify();
        Ok(())
    }

    /// Holds the walk while too many mirror operations wait for the target.
    fn backpressure(&mut self) -> Result<(), RunError> {
        self.wait(|r| {
            if !r.pipe.lock().mirror_should_wait(PENDING_MIRROR_OPS, PENDING_MIRROR_BYTES) {
                return true;
            }
            let pipe = Arc::clone(&r.pipe);
            r.rt.block_on(async move {
                let changed = pipe.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable(); // a change after this look is not missed
                if !pipe.lock().mirror_should_wait(PENDING_MIRROR_OPS, PENDING_MIRROR_BYTES) {
                    return true;
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
                false
            })
        })
    }

    fn orphan(&mut self, orphan: &Entry) -> Result<(), RunError> {
        // The source may have gained the path since the walk: then it is no orphan.
        let local = orphan.path.to_local(&self.pipe.root);
        let mut state = self.pipe.lock();
        if std::fs::symlink_metadata(&local).is_ok() {
            return Ok(());
        }
        self.orphans.0 += 1;
        self.orphans.2 += orphan.meta.size_bytes;
        self.counters.orphans_found += 1;
        // A mirror deletes orphans when the job says so; "delete orphans" always does; a
        // verification only counts them.
        let delete = match self.settings.mode {
            Mode::Mirror => self.settings.orphans == OrphanPolicy::Delete,
            Mode::Orphans => true,
            Mode::Verify { .. } => false,
        };
        if self.settings.orphans != OrphanPolicy::Off || self.settings.mode == Mode::Orphans {
            let action = if delete { "deleted" } else { "reported" };
            let _ = writeln!(
                self.orphan_lines,
                "{}  {}  {} bytes  {action}",
                Utc::now().to_rfc3339(),
                orphan.path,
                orphan.meta.size_bytes
            );
        }
        if delete {
            // Its folder's mtime changes on the target (`changing`, on a field of its own).
            if let Some(parent) = orphan.path.parent() {
                self.folders_in_step.remove(&parent);
            }
            state
                .enqueue(vec![Operation::Remove { path: orphan.path.clone() }], Producer::Mirror)?;
            state.shadow.remove(&orphan.path);
            self.orphans.1 += 1;
            self.counters.orphans_deleted += 1;
        }
        drop(state);
        self.pipe.notify();
        Ok(())
    }

    /// Something at `path` is about to be sent: its folder's mtime may change on the target,
    /// so the folder's attributes are set again at the end.
    fn changing(&mut self, path: &RelPath) {
        if let Some(parent) = path.parent() {
            self.folders_in_step.remove(&parent);
        }
    }

    /// Folders' attributes go last: creating their contents changed their mtimes. A folder
    /// whose attributes were already right and in which nothing was sent is left alone (a
    /// remirror that finds nothing to do sends nothing).
    fn finish_folders(&mut self, folders: &[RelPath]) -> Result<(), RunError> {
        if !self.sends() {
            return Ok(());
        }
        for folder in folders.iter().rev() {
            if self.folders_in_step.contains(folder) {
                continue;
            }
            let local = folder.to_local(&self.pipe.root);
            let Ok(metadata) = std::fs::symlink_metadata(&local) else { continue };
            if folder.is_root() || metadata.is_dir() {
                let meta = crate::fsops::Meta::from_metadata(&metadata);
                self.enqueue(vec![Operation::SetMeta { path: folder.clone(), meta }])?;
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: String, reason: &str) {
        self.counters.files_skipped += 1;
        self.skipped.push(SkippedFile { path, reason: reason.to_string() });
        if self.skipped.len() >= SKIPPED_PER_REPORT {
            self.flush_skipped();
        }
    }

    fn flush_skipped(&mut self) {
        if !self.skipped.is_empty() {
            (self.progress)(Progress::Skipped(std::mem::take(&mut self.skipped)));
        }
    }

    fn report_progress(&mut self) {
        self.take_size();
        if self.last_report.elapsed() >= Duration::from_millis(500) {
            self.last_report = Instant::now();
            (self.progress)(Progress::Counters(self.counters.clone()));
        }
    }

    fn note_verify(&mut self, source: &Entry, target: Option<&Entry>, bytes_out_of_sync: u64) {
        let status = if target.is_some() { "DIFFERENT ON TARGET" } else { "MISSING ON TARGET" };
        let _ = writeln!(self.verify_lines, "File:      {} {status}", source.path);
        let _ = writeln!(
            self.verify_lines,
            "  Source Attributes: Timestamp = {} Size = {} Mask = [0x{:x}]",
            seeds_time_ns(source.meta.mtime_ns),
            source.meta.size_bytes,
            source.meta.mode
        );
        if let Some(target) = target {
            let _ = writeln!(
                self.verify_lines,
                "  Target Attributes: Timestamp = {} Size = {} Mask = [0x{:x}]",
                seeds_time_ns(target.meta.mtime_ns),
                target.meta.size_bytes,
                target.meta.mode
            );
            if (source.meta.mode, source.meta.uid, source.meta.gid)
                != (target.meta.mode, target.meta.uid, target.meta.gid)
            {
                let _ = writeln!(self.verify_lines, "Security descriptors are different.");
            }
        }
        let _ = writeln!(self.verify_lines, "  {bytes_out_of_sync} BYTES OUT OF SYNC");
    }

    /// Writes the verification log (seeds' format) and the orphan log; returns their paths.
    fn write_logs(
        &mut self,
        started_at: DateTime<Utc>,
        elapsed: Duration,
    ) -> Result<(Option<String>, Option<String>), RunError> {
        let logs = &self.settings.logs;
        let mut verify_path = None;
        if let Mode::Verify { .. } = self.settings.mode {
            let v = &self.verification;
            let header = format!("{} --> {}", logs.job_name, logs.target);
            let checksum =
                if self.settings.comparison.compares_data() { "ENABLED" } else { "DISABLED" };
            let mut text = String::new();
            let _ = writeln!(
                text,
                "--- VERIFICATION OF CONNECTION {}, CHECKSUM {checksum} ({header}) ---",
                logs.connection
            );
            let _ = writeln!(
                text,
                "Start Time: {} for connection {} ({header})",
                seeds_time(started_at),
                logs.connection
            );
            text.push_str(&self.verify_lines);
            let _ = writeln!(
                text,
                "Completion Time: {} for connection {} ({header})",
                seeds_time(Utc::now()),
                logs.connection
            );
            let _ = writeln!(text, "Elapsed Time (seconds): {:.6}", elapsed.as_secs_f64());
            for (name, value) in [
                ("Directories Compared", v.directories_compared),
                ("Directories Missing", v.directories_missing),
                ("Directories Remirrored", v.directories_remirrored),
                ("Files Compared", v.files_compared),
                ("Files Missing", v.files_missing),
                ("Files Different", v.files_different),
                ("Files Encrypted", v.files_encrypted),
                ("Files Remirrored", v.files_remirrored),
                ("Bytes Skipped", v.bytes_skipped),
                ("Bytes Compared", v.bytes_compared),
                ("Bytes Missing", v.bytes_missing),
                ("Bytes Different", v.bytes_different),
                ("Bytes Remirrored", v.bytes_remirrored),
            ] {
                let _ = writeln!(text, "Total {name}: {value}");
            }
            text.push_str("Related links and directory attributes have been adjusted.\n");
            text.push_str("----- END OF VERIFICATION -----\n");
            let path = logs.dir.join(format!("{} verify.log", logs.prefix));
            append_log(&path, &text, 1024 * 1024)
                .map_err(|e| RunError::Source(format!("cannot write {}: {e}", path.display())))?;
            verify_path = Some(path.display().to_string());
        }
        let mut orphan_path = None;
        if !self.orphan_lines.is_empty() {
            let path = logs.dir.join(format!("{} orphans.log", logs.prefix));
            append_log(&path, &self.orphan_lines, 50 * 1024 * 1024)
                .map_err(|e| RunError::Source(format!("cannot write {}: {e}", path.display())))?;
            orphan_path = Some(path.display().to_string());
        }
        Ok((verify_path, orphan_path))
    }
}

/// Bytes of the source file in blocks that differ from the target's (None: unreadable).
fn differing_bytes(pipe: &Pipe, path: &RelPath, target: &TargetFile) -> Option<u64> {
    let file = std::fs::File::open(path.to_local(&pipe.root)).ok()?;
    let hashes = crate::fsops::block_hashes(&file, BLOCK_SIZE).ok()?;
    let block = u64::from(BLOCK_SIZE);
    let mut different = 0u64;
    for (index, hash) in hashes.hashes.iter().enumerate() {
        let start = index as u64 * block;
        let len = (hashes.len - start).min(block);
        if target.hashes.get(index) != Some(hash) || start + len > target.len {
            different += len;
        }
    }
    if target.len > hashes.len {
        different += target.len - hashes.len;
    }
    Some(different)
}

/// Appends to a log, starting it over (keeping one old copy) once it passes `max_bytes`.
fn append_log(path: &Path, text: &str, max_bytes: u64) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() + text.len() as u64 > max_bytes) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// The seeds' timestamp format: "1/24/2018 12:15:20 PM" (UTC here).
fn seeds_time(at: DateTime<Utc>) -> String {
    at.format("%-m/%-d/%Y %-I:%M:%S %p").to_string()
}

fn seeds_time_ns(ns: i64) -> String {
    DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        u32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    )
    .map_or_else(|| ns.to_string(), seeds_time)
}
